"""vllm_forge/audit/audit.py: verdicts (NVIDIA's compatibility rules), wheels/directories/image tars, the report,
the CLI; and the replay of the audit's prediction against a real GPU run (tests/fixtures/gpu)."""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from vllm_forge.audit import audit
from vllm_forge.audit.audit import Target, decide, parse_code_arch, resolve_targets
from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.gpu import runs_on as rule

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
H200 = FIXTURES / "h200x2"
GPU_RECORD = FIXTURES / "gpu" / "audit_gpu.txt"


def cc(text: str) -> Target:
    major, minor = text.split(".")
    return Target(f"sm_{major}{minor}", int(major), int(minor))


def sass_runs_on(name: str, target: Target) -> bool:
    """The one rule (vllm_forge/gpu/runs_on.py) on a fat binary's code name, as the audit asks it."""
    return rule.sass_runs_on(parse_code_arch(name), target.cc)


def ptx_runs_on(name: str, target: Target) -> bool:
    return rule.ptx_runs_on(parse_code_arch(name), target.cc)


# ---- NVIDIA's rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sass, device, runs", [
    ("sm_90", "9.0", True), ("sm_80", "8.6", True), ("sm_86", "8.0", False), ("sm_80", "9.0", False),
    ("sm_120", "12.1", True), ("sm_121", "12.0", False), ("sm_100", "10.3", True), ("sm_100", "12.0", False),
    ("sm_90a", "9.0", True), ("sm_90a", "10.0", False), ("sm_120a", "12.1", False), ("sm_100a", "10.3", False),
    ("sm_100f", "10.0", True), ("sm_100f", "10.3", True), ("sm_100f", "12.0", False), ("sm_103f", "10.0", False),
    ("sm_120f", "12.0", True), ("sm_120f", "12.1", True), ("sm_120f", "11.0", False), ("sm_110f", "11.0", True),
])
def test_sass_rules(sass, device, runs):
    assert sass_runs_on(sass, cc(device)) is runs


@pytest.mark.parametrize("ptx, device, runs", [
    ("compute_80", "9.0", True), ("compute_80", "12.0", True), ("compute_90", "8.9", False),
    ("compute_120", "12.0", True), ("compute_120", "10.0", False),
    ("compute_90a", "9.0", True), ("compute_90a", "10.0", False),
    ("compute_100f", "10.3", True), ("compute_100f", "12.0", False), ("compute_120f", "12.1", True),
])
def test_ptx_rules(ptx, device, runs):
    assert ptx_runs_on(ptx, cc(device)) is runs


def test_decide_prefers_sass_then_the_newest_ptx():
    assert decide(["sm_80", "sm_90a"], ["compute_80"], cc("9.0")) == ("sass", "sm_90a")
    assert decide(["sm_90a"], ["compute_75", "compute_89"], cc("12.0")) == ("ptx", "compute_89")
    assert decide(["sm_90a", "sm_100f"], [], cc("12.0")) == ("none", "")


def test_targets_accept_sm_names_capabilities_and_gpu_names():
    assert [t.name for t in resolve_targets(["sm_120"])] == ["sm_120"]
    assert [(t.name, t.major, t.minor) for t in resolve_targets(["9.0a;12.0+PTX"])] == [
        ("sm_90a", 9, 0), ("sm_120", 12, 0)]
    assert [t.name for t in resolve_targets(["120", "rtx5090", "12.0"])] == ["sm_120"]
    with pytest.raises(ForgeError):
        resolve_targets(["not-a-gpu"])


# ---- the recorded H200 runs: what the audit predicts is what happened ---------------------------------


def recorded_runs() -> dict[str, bool]:
    """binary -> whether it ran on the H200 (sm_90), from arch.txt."""
    runs, current = {}, None
    for line in (H200 / "arch.txt").read_text().splitlines():
        m = re.match(r"== build (\S+)", line)
        if m:
            current = "k_" + m.group(1)
        m = re.match(r"exit=(\d+)", line)
        if m and current:
            runs[current] = m.group(1) == "0"
    return runs


def test_prediction_matches_the_h200_runs():
    runs = recorded_runs()
    assert set(runs) == {"k_sm_120", "k_sm_90", "k_ptx80", "k_sm_90a", "k_sm_100_120_ptx120"}
    for name, ran in runs.items():
        report = audit.audit_path(H200 / name, ["sm_90"])
        (file,) = report.files
        assert (file.verdict["sm_90"] != "none") is ran, name
        assert report.ok is ran
    assert audit.audit_path(H200 / "k_ptx80", ["9.0"]).files[0].verdict == {"sm_90": "ptx-jit"}
    assert audit.audit_path(H200 / "k_sm_90a", ["9.0"]).files[0].verdict == {"sm_90": "native"}


# ---- wheels, directories, image tars ---------------------------------------------------------------


@pytest.fixture
def wheel(tmp_path) -> Path:
    path = tmp_path / "vllm-0.0.0-cp38-abi3-linux_x86_64.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(H200 / "k_sm_120", "vllm/_C.abi3.so")
        zf.write(H200 / "k_sm_90a", "vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so")
        zf.write(H200 / "k_ptx80", "vllm/_moe_C.abi3.so", compress_type=zipfile.ZIP_STORED)
        zf.writestr("vllm/libdummy.so.1", b"\x7fELF" + b"\x02\x01\x01" + b"\0" * 57)  # ELF without sections
        zf.writestr("vllm/libc.so", "GROUP ( libc.so.6 )\n")  # a linker script: not a binary, skipped
        zf.writestr("vllm/__init__.py", "")
    return path


def test_wheel_is_read_without_unpacking(wheel, tmp_path):
    report = audit.audit_path(wheel, ["sm_120"])
    by_path = {f.path: f for f in report.files}
    assert set(by_path) == {"vllm/_C.abi3.so", "vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so", "vllm/_moe_C.abi3.so",
                            "vllm/libdummy.so.1"}
    assert by_path["vllm/_C.abi3.so"].verdict == {"sm_120": "native"}
    assert by_path["vllm/_moe_C.abi3.so"].verdict == {"sm_120": "ptx-jit"}
    assert by_path["vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so"].verdict == {"sm_120": "none"}
    dummy = by_path["vllm/libdummy.so.1"]
    assert not dummy.has_device_code and not dummy.required and dummy.ok  # listed, not failed
    assert not report.ok
    assert sorted(p.name for p in tmp_path.iterdir()) == [wheel.name]  # nothing unpacked next to it


def test_require_globs_decide_what_must_run(wheel):
    report = audit.audit_path(wheel, ["sm_120"], require=["*/_C.abi3.so", "*_moe_C*"])
    assert report.ok
    assert "1 not required without one" in report.summary()
    missing = audit.audit_path(wheel, ["sm_120"], require=["*/_C.abi3.so", "*/nothing*.so"])
    assert not missing.ok and missing.missing == ["*/nothing*.so"]


def test_json_schema_is_stable(wheel):
    data = json.loads(audit.audit_path(wheel, ["12.0", "sm_90a"]).to_json())
    assert data["target"] == ["sm_120", "sm_90a"]
    assert data["ok"] is False
    first = data["files"][0]
    assert list(first) == ["path", "sass", "ptx", "verdict", "required", "error", "optional", "groups",
                           "predicted_error", "package", "variant", "fix"]
    assert [f["path"] for f in data["files"]] == sorted(f["path"] for f in data["files"])
    fa3 = next(f for f in data["files"] if f["path"].endswith("_fa3_C.abi3.so"))
    assert {k: fa3[k] for k in ("path", "sass", "ptx", "verdict", "required", "error", "optional", "package")} == {
        "path": "vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so", "sass": ["sm_90a"], "ptx": [],
        "verdict": {"sm_120": "none", "sm_90a": "native"}, "required": True, "error": None,
        "optional": None, "package": "vllm"}  # the wheel has no Python saying FA3 is optional: judged required
    # nvlink's device-link fat binary holds no kernel: it is counted apart and never fails a GPU.
    assert fa3["groups"]["sm_120"] == {"count": 1, "native": 0, "ptx_jit": 0, "none": 1, "kernel_less": 1,
                                       "arch_specific": 0, "arch_specific_archs": [],
                                       "missing_kernels": ["_Z3addPf"]}
    assert fa3["predicted_error"] == {
        "sm_120": "CUDA error: no kernel image is available for execution on the device on the first kernel launch",
        "sm_90a": None}
    assert fa3["fix"] == "rebuild vLLM for it: `invoke build-wheel --arch 12.0`"


def test_directory_with_a_wheel_in_it(wheel, tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libk.so").write_bytes((H200 / "k_sm_100_120_ptx120").read_bytes())
    report = audit.audit_path(tmp_path, ["sm_120"])
    paths = [f.path for f in report.files]
    assert "lib/libk.so" in paths and f"{wheel.name}/vllm/_C.abi3.so" in paths


def test_damaged_member_is_reported_not_raised(tmp_path):
    data = (H200 / "k_sm_120").read_bytes()
    path = tmp_path / "broken.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pkg/_ok.so", data)
        zf.writestr("pkg/_cut.so", data[: len(data) // 2])
    report = audit.audit_path(path, ["sm_120"])
    cut = next(f for f in report.files if f.path == "pkg/_cut.so")
    assert cut.error and cut.required and not report.ok
    assert "unreadable" in report.summary()


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_docker_save_layers_are_stacked_with_whiteouts(tmp_path):
    sm90, sm120 = (H200 / "k_sm_90").read_bytes(), (H200 / "k_sm_120").read_bytes()
    base = _tar({"usr/lib/libold.so": sm90, "opt/app/_C.so": sm90, "opt/gone/libx.so": sm90})
    top = _tar({"opt/app/_C.so": sm120, "opt/.wh.gone": b"", "usr/lib/.wh.libold.so": b""})
    manifest = json.dumps([{"Config": "c.json", "Layers": ["aaa/layer.tar", "bbb/layer.tar"]}]).encode()
    # the top layer comes first in the stream: the manifest (last) decides the order
    saved = _tar({"bbb/layer.tar": top, "aaa/layer.tar": base, "c.json": b"{}", "manifest.json": manifest})
    path = tmp_path / "image.tar"
    path.write_bytes(saved)
    report = audit.audit_path(path, ["sm_120"])
    assert [(f.path, f.sass) for f in report.files] == [("/opt/app/_C.so", ["sm_120"])]
    assert report.ok


def test_oci_layout_and_export_tars(tmp_path):
    sm120 = (H200 / "k_sm_120").read_bytes()
    layer = _tar({"./usr/local/lib/python3/site-packages/vllm/_C.so": sm120})
    oci = _tar({"blobs/sha256/aaa": layer, "blobs/sha256/cfg": b"{}", "index.json": b"{}",
                "manifest.json": json.dumps([{"Layers": ["blobs/sha256/aaa"]}]).encode()})
    (tmp_path / "oci.tar").write_bytes(oci)
    assert [f.path for f in audit.audit_path(tmp_path / "oci.tar", ["sm_120"]).files] == [
        "/usr/local/lib/python3/site-packages/vllm/_C.so"]
    (tmp_path / "export.tar").write_bytes(_tar({"opt/lib/libk.so": sm120, "etc/passwd": b"root:x:0:0\n"}))
    assert [f.path for f in audit.audit_path(tmp_path / "export.tar", ["sm_120"]).files] == ["/opt/lib/libk.so"]


# ---- torch's own arch list -------------------------------------------------------------------------


def test_torch_probe_results():
    archs = ["sm_80", "sm_90", "sm_100", "sm_120", "compute_120"]
    ok = audit.parse_torch_probe("image x", 0, json.dumps({"version": "2.9.0", "cuda": "12.8", "arch_list": archs}), "")
    old = audit.parse_torch_probe("image x", 0, json.dumps(
        {"version": "2.5.1+cu124", "cuda": "12.4", "arch_list": ["sm_80", "sm_86", "sm_90"]}), "")
    missing = audit.parse_torch_probe("image x", 127, "", 'exec: "python3": executable file not found in $PATH')
    cpu = audit.parse_torch_probe("image x", 0, json.dumps({"version": "2.9.0+cpu", "cuda": "", "arch_list": []}), "")
    absent = audit.parse_torch_probe("image x", 0, json.dumps({"error": "torch is not importable: ImportError"}), "")
    assert "no python3" in missing.error and not missing.version
    assert "CPU-only" in cpu.error and "not importable" in absent.error
    targets = resolve_targets(["sm_120"])
    for found in (ok, old, missing, cpu, absent):
        found.counts = True
        report = audit.build_report("image x", [], targets, torch=found)
        assert report.ok is (found is not old and found is not cpu), found  # a CPU-only torch runs no kernel
    assert "torch 2.5.1+cu124 (image x): no kernels for sm_120" in audit.build_report(
        "image x", [], targets, torch=old).summary()


def test_torch_of_image_runs_python3_in_it():
    calls = []

    def runner(command, **kwargs):
        calls.append(command)

        class Done:
            stdout = json.dumps({"version": "2.9.0", "cuda": "12.8", "arch_list": ["sm_120"]})
            returncode, stderr = 0, ""
        return Done()

    found = audit.torch_of_image("img:1", docker="docker", runner=runner)
    assert calls[0][:8] == ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3", "img:1"]
    assert "_cuda_getArchFlags" in calls[0][-1]  # the compiled list, which needs no GPU
    assert found.counts and found.arch_list == ["sm_120"]


# ---- the CLI ----------------------------------------------------------------------------------------


def test_cli_exit_codes_and_json(wheel, capsys):
    assert run_main(audit.main, [str(wheel), "--arch", "sm_120", "--no-torch"]) == 1
    out = capsys.readouterr().out
    assert "NO KERNEL" in out and out.strip().splitlines()[-1].startswith("FAIL:")
    assert run_main(audit.main, [str(wheel), "--arch", "sm_120", "--require", "*/_C.abi3.so", "--json",
                                 "--no-torch"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    text = tmp_path / "README"
    text.write_text("not a binary\n")
    assert run_main(audit.main, [str(text), "--arch", "sm_120"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "not an ELF file, a wheel" in err
    assert run_main(audit.main, [str(tmp_path / "nope.whl"), "--arch", "sm_120"]) == 2
    assert "does not exist" in capsys.readouterr().err
    truncated = tmp_path / "cut.so"
    truncated.write_bytes((H200 / "k_sm_120").read_bytes()[:5000])
    assert run_main(audit.main, [str(truncated), "--arch", "sm_120"]) == 2
    assert "truncated" in capsys.readouterr().err


# ---- the GPU replay (scripts/gpu/audit_on_gpu.sh writes the record on a real H100/H200) -------------------------


def parse_gpu_record(text: str) -> dict[str, dict]:
    """Sections ``== <name>`` with ``audit_json: {...}`` and ``run_exit: N`` / the run's output."""
    found: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"== (\S+)", line)
        if m:
            current = found.setdefault(m.group(1), {"run": ""})
            continue
        if current is None:
            continue
        if line.startswith("audit_json: "):
            current["audit"] = json.loads(line[len("audit_json: "):])
        elif line.startswith("run_exit: "):
            current["exit"] = int(line.split()[1])
        else:
            current["run"] += line + "\n"
    return found


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_RECORD.exists(), reason="tests/fixtures/gpu/audit_gpu.txt is not recorded yet "
                    "(run scripts/gpu/audit_on_gpu.sh on an H100/H200 host)")
def test_gpu_record_matches_the_audit():
    record = parse_gpu_record(GPU_RECORD.read_text())
    assert {"k12", "k90"} <= set(record)
    for name, expected in (("k12", "none"), ("k90", "sass")):
        entry = record[name]
        (file,) = entry["audit"]["files"]
        assert file["verdict"]["sm_90"] == expected
        assert entry["audit"]["ok"] is (expected != "none")
        # The recorded program read the launch error with cudaGetLastError() and so exited 0 either
        # way (fixed in scripts/gpu/audit_on_gpu.sh since): what ran is what the launch and sync lines say.
        ran = "launch: no error" in entry["run"] and "last: no error" in entry["run"]
        assert ran is (expected != "none"), entry["run"]
    assert "no kernel image is available" in record["k12"]["run"]


def test_gpu_record_parser_reads_the_script_format():
    sample = "\n".join([
        "# audit_on_gpu.sh 2026-01-01T00:00:00Z", "host: NVIDIA H200, 9.0, 580.159.04",
        "== k12", "flags: -gencode arch=compute_120,code=sm_120", "audit_exit: 1",
        'audit_json: {"target": ["sm_90"], "files": [{"path": "k12", "sass": ["sm_120"], "ptx": [], '
        '"verdict": {"sm_90": "none"}}], "ok": false}',
        "launch: no error", "last: no kernel image is available for execution on the device", "run_exit: 1",
        "== k90", 'audit_json: {"target": ["sm_90"], "files": [{"verdict": {"sm_90": "sass"}}], "ok": true}',
        "launch: no error", "last: no error", "run_exit: 0"])
    record = parse_gpu_record(sample)
    assert record["k12"]["exit"] == 1 and record["k90"]["exit"] == 0
    assert record["k12"]["audit"]["files"][0]["verdict"] == {"sm_90": "none"}
    assert "no kernel image is available" in record["k12"]["run"]


def test_a_directory_audit_skips_what_a_running_build_is_still_writing(tmp_path):
    """dist/.staging-<host>-<pid>-*: build-wheel and bake write there and publish by rename; a half-written
    wheel there is not a file of the directory yet."""
    import shutil

    shutil.copy(H200 / "k_sm_120", tmp_path / "_C.so")
    staging = tmp_path / f"{audit.STAGING_PREFIX}vm-123-abcd"
    staging.mkdir()
    (staging / "vllm-0.1.0-cp38-abi3-linux_x86_64.whl").write_bytes(b"PK\x03\x04 half written")
    report = audit.audit_path(tmp_path, ["12.0"], torch=False)
    assert [f.path for f in report.files] == ["_C.so"] and report.ok
