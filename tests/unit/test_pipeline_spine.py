"""vllm_forge/pipeline.py: settings resolved once, steps planned once, preflight before anything is asked."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vllm_forge import pipeline
from vllm_forge.core.errors import ForgeError
from vllm_forge.core.plan import Command, recording, run_command
from vllm_forge.image import docker_client, labels
from vllm_forge.image import request as request_mod

BUILDKIT = docker_client.DockerClient("/usr/bin/docker", "buildkit", "20.10.24")
UNREACHABLE = "https://127.0.0.1:9/vllm.git"  # nothing listens: a test that asks it fails loudly


@pytest.fixture(autouse=True)
def no_docker_probe(monkeypatch):
    monkeypatch.setattr(docker_client, "find_docker", lambda *a, **k: BUILDKIT)
    monkeypatch.setattr(request_mod, "default_ca_bundle", lambda *a, **k: (None, ""))


def settings(tmp_path: Path, **flags) -> pipeline.Settings:
    flags.setdefault("checkout_dir", str(tmp_path / "vllm"))
    return pipeline.resolve_settings(None, flags, repo_root=tmp_path)


def test_preflight_refuses_before_the_remote_is_asked(tmp_path):
    with pytest.raises(ForgeError, match="needs CUDA 12.8"):
        pipeline.build_pipeline(settings(tmp_path, vllm_repo=UNREACHABLE, arch="12.0", cuda="12.6"),
                                pipeline.IMAGE_CHAIN)
    with pytest.raises(ForgeError, match="needs CUDA 12.8"):
        pipeline.build_pipeline(settings(tmp_path, vllm_repo=UNREACHABLE, arch="12.0", cuda="12.6"),
                                pipeline.WHEEL_CHAIN)


def test_no_checkout_without_a_clone_step_is_one_line(tmp_path):
    with pytest.raises(ForgeError, match="run `invoke clone` first"):
        pipeline.build_pipeline(settings(tmp_path), ["use-existing-torch", "build-wheel"])


def test_steps_after_a_clone_are_pending_and_the_bake_is_planned_from_the_config(tmp_path):
    chain = pipeline.build_pipeline(settings(tmp_path, vllm_repo=UNREACHABLE, vllm_ref="v0.11.0", arch="12.0"),
                                    pipeline.IMAGE_CHAIN, pipeline.Options(dry_run=True))
    by_name = {step.name: step for step in chain.steps}
    assert "could not be asked" in " ".join(by_name["clone"].notes)  # shown, with how the real run decides
    assert by_name["use-existing-torch"].pending.startswith("planned after clone")
    bake = by_name["bake"]
    assert bake.plan.labels["org.vllm-forge.vllm.ref"] == "v0.11.0"
    assert bake.plan.labels["org.vllm-forge.vllm.commit"] == labels.PENDING
    assert bake.plan.image == "vllm-forge/vllm:v0.11.0-cu128-sm120"
    [note] = by_name["inspect"].notes
    assert note.startswith("read vllm-forge/vllm:v0.11.0-cu128-sm120's labels (") and note.endswith(" image inspect)")


def test_plan_is_lenient_and_names_what_cannot_run(tmp_path):
    chain = pipeline.build_pipeline(settings(tmp_path, builder="gpu-builders"), ["bake"], lenient=True)
    assert not chain.ready and "buildx" in str(chain.steps[0].error)


def test_standin_settings(tmp_path):
    s = settings(tmp_path, standin=True, mirror="cn")
    from vllm_forge.image.standin_images import BUILD_STANDIN, RUNTIME_STANDIN

    assert (s.config.cuda, s.mirror.base_image, s.mirror.runtime_image) == ("13.0", BUILD_STANDIN, RUNTIME_STANDIN)
    assert s.rc.source("base_image") == "standin"  # local images: never rewritten through a registry mirror
    with pytest.raises(ForgeError, match="both name the bases"):
        settings(tmp_path, standin=True, base_image="my.reg/pytorch:1")
    with pytest.raises(ForgeError, match="CUDA 13.0"):
        settings(tmp_path, standin=True, cuda="12.8")


def test_mirror_is_applied_once_to_every_step(tmp_path):
    s = settings(tmp_path, mirror="cn", vllm_src=str(tmp_path / "src"))
    src = tmp_path / "src"
    (src / "vllm").mkdir(parents=True)
    (src / "setup.py").write_text("")
    (src / "CMakeLists.txt").write_text("")
    s.reread_checkout()
    request = pipeline.bake_request(s, pipeline.Options())
    assert request.base_image.startswith("m.daocloud.io/") and request.index_url == s.mirror.pypi_index
    assert pipeline._build_request(s).extra_env["PIP_INDEX_URL"] == s.mirror.pypi_index
    assert request.mirror == "cn"


def test_step_lines_mask_credentials():
    step = pipeline.Step("clone", [Command(["git", "clone", "https://user:tok@example.com/x.git"], why="w")],
                         ["clone https://user:tok@example.com/x.git"])
    assert not any("tok" in line for line in step.lines())


def test_recording_sees_what_run_command_runs():
    with recording() as ran:
        run_command(Command(["true"]))
    assert [c.argv for c in ran] == [["true"]]


def test_read_checkout_records_ref_and_dirty(tmp_path):
    from vllm_forge.source.checkout import read_checkout

    src = tmp_path / "c"
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    (src / "a").write_text("1")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(src)]
    subprocess.run(git + ["add", "a"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    assert read_checkout(src, managed=True).ref == "local"  # cloned by someone else: no recorded ref
    subprocess.run(git + ["config", "vllm-forge.ref", "v1"], check=True)
    facts = read_checkout(src, managed=True)
    assert (facts.ref, facts.dirty, len(facts.commit)) == ("v1", False, 40)
    assert read_checkout(src, managed=False).ref == "local"  # --vllm-src: used as is
    (src / "a").write_text("2")
    assert read_checkout(src, managed=True).dirty


def test_project_paths_are_the_projects_wherever_the_task_runs(tmp_path, monkeypatch):
    """`cd docs; invoke check-size` reads the project's dist/: defaults and invoke.yaml paths are relative to
    tasks.py; a relative path typed on the command line is relative to where the user is."""
    monkeypatch.chdir(tmp_path)
    project = tmp_path / "project"
    resolved = pipeline.resolve_settings(None, {}, repo_root=project).config
    assert (resolved.dist_dir, resolved.checkout_dir) == (str(project / "dist"), str(project / "build" / "vllm"))
    typed = pipeline.resolve_settings(None, {"dist_dir": "out", "checkout_dir": "/abs/vllm"}, repo_root=project).config
    assert (typed.dist_dir, typed.checkout_dir) == ("out", "/abs/vllm")


def test_check_size_from_a_subdirectory_reads_the_projects_dist(repo_root):
    import os
    import sys

    out = subprocess.run([sys.executable, "-m", "invoke", "check-size"], cwd=repo_root / "docs", capture_output=True,
                         text=True, env={**os.environ, "COLUMNS": "300"}, timeout=120)
    assert str(repo_root / "dist") in out.stdout + out.stderr and "found at dist." not in out.stderr, out.stderr
