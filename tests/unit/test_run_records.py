"""report/run_records.py: what each run leaves under build/reports; pipeline.run_records: what a run records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vllm_forge import pipeline
from vllm_forge.core.errors import ForgeError
from vllm_forge.report import run_records


def test_a_record_holds_the_report_and_who_made_it(tmp_path):
    path = run_records.save("audit", {"ok": True, "files": []}, directory=tmp_path, argv=["invoke", "audit", "x"])
    assert path.parent == tmp_path and path.name.startswith("audit-") and path.suffix == ".json"
    body = json.loads(path.read_text())
    assert body["format"] == run_records.RECORD_FORMAT and body["kind"] == "audit" and body["run"] == \
        run_records.RUN_ID
    assert body["data"] == {"ok": True, "files": []} and body["argv"] == ["invoke", "audit", "x"]
    record = run_records.load(path)
    assert (record.kind, record.data, record.command) == ("audit", {"ok": True, "files": []}, "invoke audit x")
    assert not list(tmp_path.glob(".*"))  # no partial file left


def test_newest_first_and_only_the_last_few_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(run_records, "KEEP", 3)
    for index in range(5):
        run_records.save("nccl", {"index": index}, directory=tmp_path)
    run_records.save("audit", {"index": 99}, directory=tmp_path)
    assert [r.data["index"] for r in run_records.records_of("nccl", tmp_path)] == [4, 3, 2]
    assert len(list(tmp_path.glob("nccl-*.json"))) == 3
    assert run_records.latest("audit", tmp_path).data == {"index": 99}
    assert run_records.latest("run", tmp_path) is None and run_records.records_of("run", tmp_path / "none") == []


def test_foreign_torn_and_newer_files_are_not_records(tmp_path):
    good = run_records.save("nccl", {"a": 1}, directory=tmp_path)
    (tmp_path / "nccl-torn.json").write_text('{"format": 1, "kind": "nccl", "da')
    (tmp_path / "nccl-newer.json").write_text(json.dumps({"format": 2, "kind": "nccl", "data": {}}))
    (tmp_path / "nccl-list.json").write_text("[]")
    (tmp_path / "nccl-wrongkind.json").write_text(json.dumps({"format": 1, "kind": "audit", "data": {}}))
    assert [r.path for r in run_records.records_of("nccl", tmp_path)] == [good]


def test_the_directory_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(run_records.RECORD_DIR_ENV, raising=False)
    assert run_records.record_dir() == run_records.REPO_ROOT / "build" / "reports"
    monkeypatch.setenv(run_records.RECORD_DIR_ENV, str(tmp_path / "r"))
    assert run_records.save("run", {}).parent == tmp_path / "r"


def test_an_unwritable_directory_is_reported_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    path, problem = run_records.try_save("run", {}, directory=blocker / "reports")
    assert path is None and problem.startswith(f"not recorded under {blocker / 'reports'}: ")
    with pytest.raises(KeyError):
        run_records.save("nonsense", {}, directory=tmp_path)


# ---- what a pipeline run records -----------------------------------------------------------------------------


class FakeSize:
    ok = True

    def to_dict(self):
        return {"image": "img", "size": 3}


def fake_pipeline(tmp_path, names, build_times=None):
    settings = pipeline.resolve_settings(None, {"checkout_dir": str(tmp_path / "vllm"),
                                                "vllm_repo": "https://user:tok3n@example.com/vllm.git"},
                                         repo_root=tmp_path)
    steps = []
    for name in names:
        plan = None
        if name == "build-wheel":
            plan = type("Plan", (), {"build_times": build_times, "archs": [type("A", (), {"sm": "sm_120"})()]})()
        steps.append(pipeline.Step(name, notes=[f"does {name}"], plan=plan))
    return pipeline.Pipeline(settings, pipeline.Options(), tuple(names), steps)


def test_a_run_records_its_configuration_steps_times_and_reports(tmp_path):
    run = fake_pipeline(tmp_path, ["build-wheel", "check-size-image"], build_times={"objects": 2})
    state = pipeline.RunState(wheel=Path("dist/w.whl"), results={"build-wheel": "w", "check-size-image": FakeSize()},
                              seconds={"build-wheel": 12.5, "check-size-image": 0.25})
    kinds = dict(pipeline.run_records(run, state))
    assert list(kinds) == ["run", "build-times", "image-size"]
    record = kinds["run"]
    assert record["outcome"] == "ok" and record["total_seconds"] == 12.75 and record["wheel"] == "dist/w.whl"
    assert [(s["name"], s["status"], s["seconds"]) for s in record["steps"]] == [
        ("build-wheel", "done", 12.5), ("check-size-image", "done", 0.25)]
    assert record["steps"][1]["title"] == "check-size --image" and record["steps"][0]["lines"] == ["# does build-wheel"]
    config = {c["name"]: c for c in record["config"]}
    assert config["vllm_repo"]["source"] == "command line" and "tok3n" not in json.dumps(record)
    assert kinds["build-times"] == {"objects": 2, "archs_asked": ["sm_120"], "wheel": "dist/w.whl"}
    assert kinds["image-size"] == {"image": "img", "size": 3}


def test_a_failed_run_says_which_step_failed_and_what_was_not_run(tmp_path):
    run = fake_pipeline(tmp_path, ["clone", "build-wheel", "check-size"])
    state = pipeline.RunState(results={"clone": "abc"}, seconds={"clone": 1.0})
    kinds = dict(pipeline.run_records(run, state, ForgeError("the build failed", "read error X")))
    assert kinds["run"]["outcome"] == "failed: the build failed. Fix: read error X."
    assert [s["status"] for s in kinds["run"]["steps"]] == ["done", "failed", "not run"]
    assert list(kinds) == ["run"]  # no build times were collected, no size was checked
    interrupted = dict(pipeline.run_records(run, state, KeyboardInterrupt()))["run"]
    assert interrupted["outcome"] == "interrupted" and interrupted["steps"][1]["status"] == "interrupted"


def test_run_fills_the_callers_state_up_to_the_failing_step(tmp_path):
    def boom(state, on_line):
        raise ForgeError("no")

    run = fake_pipeline(tmp_path, ["clone", "use-existing-torch"])
    run.steps[0].execute = lambda state, on_line: "abc"
    run.steps[1].execute = boom
    state = pipeline.RunState()
    with pytest.raises(ForgeError):
        run.run(state=state)
    assert state.results == {"clone": "abc"} and set(state.seconds) == {"clone"}

