"""Replay of real vLLM 0.26.0 on an H200 (tests/fixtures/gpu_real_vllm, recorded through this project):
the audit and doctor that said FAIL for an install that served, the serve command it ran, and doctor's
nvcc. The install is rebuilt from the recording: vLLM's own import sites (tests/fixtures/
vllm_0_26_0_sources, unmodified from the wheel) beside stand-in .so files that carry exactly the archs
the audit listed (audit_fullwheel.txt, the same files as audit.txt's installed copy)."""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import pytest
from fake_vllm import device_so

from vllm_forge.audit import audit
from vllm_forge.gpu.doctor_inside import collect_cuda_runtime, find_nvcc, locate_nvcc, nvcc_version
from vllm_forge.nccl import doctor
from vllm_forge.nccl.doctor import HostFacts, gpus_from_csv
from vllm_forge.serve import serve

pytestmark = pytest.mark.gpu

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RECORD = FIXTURES / "gpu_real_vllm"
SOURCES = FIXTURES / "vllm_0_26_0_sources"


def recorded_device_code() -> dict[str, list[str]]:
    """audit_fullwheel.txt's rows: member -> SASS + PTX archs."""
    rows = {}
    for line in (RECORD / "audit_fullwheel.txt").read_text().splitlines():
        if line.startswith("vllm/"):
            cells = re.split(r"\s{2,}", line.strip())
            rows[cells[0]] = [a for cell in cells[1:3] if cell != "-" for a in cell.split()]
    return rows


def recorded_doctor_json() -> dict:
    text = (RECORD / "doctor.txt").read_text()
    body = text.split("$ python3 -m invoke doctor --json\n", 1)[1]
    return json.loads(body[: body.rindex("}") + 1])


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_FORGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def site(tmp_path) -> Path:
    """/tmp/site of the GPU host: the installed files audit.txt lists (FA2 and four deep_gemm builds were
    left out there, README.md says), with the recorded device code."""
    installed = set(recorded_doctor_json()["inside"]["vllm"]["extensions"])
    root = tmp_path / "site"
    shutil.copytree(SOURCES / "vllm", root / "vllm")
    for member, archs in recorded_device_code().items():
        if member.removeprefix("vllm/") in installed:
            (root / member).parent.mkdir(parents=True, exist_ok=True)
            (root / member).write_bytes(device_so(archs))
    return root


def test_the_recorded_audit_failed_on_an_optional_extension():
    text = (RECORD / "audit.txt").read_text()
    assert "FAIL: 6 required, 6 of 11 files carry device code; sm_90: 5 native, 1 with NO kernel" in text
    assert recorded_device_code()["vllm/_qutlass_C.abi3.so"] == ["sm_100f"]


def test_audit_of_the_h200_install_is_ok_and_names_what_is_optional(site):
    report = audit.audit_path(site / "vllm", ["9.0"])
    assert len(report.files) == 11 and sum(f.has_device_code for f in report.files) == 6
    assert report.ok, audit.format_text(report)
    files = {f.path: f for f in report.files}
    assert [p for p, f in files.items() if f.required] == ["_C_stable_libtorch.abi3.so"]
    qutlass = files["_qutlass_C.abi3.so"]
    assert audit.verdict_text(qutlass, "sm_90") == "optional, not usable on this GPU"
    assert "vllm/platforms/cuda.py:26 (contextlib.suppress(ImportError))" in qutlass.optional
    note = next(n for n in report.notes() if n.startswith("_qutlass_C.abi3.so"))
    assert "it carries sm_100f" in note and "rebuild" not in note
    assert report.summary().startswith("OK: 1 required, 6 of 11 files carry device code; sm_90: 1 native")
    # FA3 and FlashMLA are optional too, and native on Hopper
    assert files["vllm_flash_attn/_vllm_fa3_C.abi3.so"].optional and files["_flashmla_C.abi3.so"].optional
    # what the user insists on still decides
    assert not audit.audit_path(site / "vllm", ["9.0"], require=["*_qutlass_C*"]).ok


def test_the_same_install_on_an_rtx_5090_loses_fa3_and_flashmla_but_runs(site):
    report = audit.audit_path(site / "vllm", ["12.0"])
    assert report.ok, audit.format_text(report)
    unusable = sorted(f.path for f in report.files if audit.verdict_text(f, "sm_120") == audit.NOT_USABLE)
    assert unusable == ["_flashmla_C.abi3.so", "_flashmla_extension_C.abi3.so", "_qutlass_C.abi3.so",
                        "vllm_flash_attn/_vllm_fa3_C.abi3.so"]


def test_doctor_replay_passes_and_never_advises_a_rebuild_for_optional_extensions(site):
    recorded = recorded_doctor_json()
    assert recorded["level"] == "fail"
    inside = dict(recorded["inside"])
    inside["vllm"] = {**inside["vllm"], "path": str(site / "vllm")}
    host = HostFacts(gpus=gpus_from_csv([{k: str(v) for k, v in g.items()} | {"compute_cap": g["capability"],
                                                                             "driver_version": g["driver"],
                                                                             "memory.total": str(g["memory_mib"])}
                                        for g in recorded["host"]["gpus"]]),
                     driver=recorded["host"]["driver"], driver_cuda=recorded["host"]["driver_cuda"],
                     source="nvidia-smi")
    report = doctor.diagnose(host, inside, audit=doctor.load_audit())
    assert report.level != "fail", doctor.render_text(report)
    audits = [f for f in report.findings if f.check == "audit"]
    assert audits[0].level == "pass" and audits[0].message.endswith("sm_90: 1 native (and 1 not required without one)")
    assert any(f.level == "info" and "_qutlass_C.abi3.so: optional, not usable on this GPU (sm_90)" in f.message
               for f in audits)
    assert not any("rebuild" in f.fix for f in report.findings)
    # the recorded facts had no nvcc (doctor did not look): said as info, no failure
    assert next(f for f in report.findings if f.check == "nvcc").level == "info"


def test_the_recorded_serve_command_is_what_plan_serve_still_builds_and_the_flags_come_after(tmp_path):
    recorded = next(line.strip() for line in (RECORD / "serve.txt").read_text().splitlines()
                    if "vllm.entrypoints.openai.api_server" in line)
    model = tmp_path / "tiny"
    model.mkdir()
    request = serve.ServeRequest(model=str(model), local=True, port=8011)
    argv = serve.plan_serve(request).argv[1:]
    assert " ".join(argv) == recorded.split(" ", 1)[1].replace("/tmp/tiny", str(model))
    request.gpu_memory_utilization, request.max_model_len = 0.2, 512
    assert serve.plan_serve(request).argv[-4:] == ["--max-model-len", "512", "--gpu-memory-utilization", "0.2"]


def test_the_recorded_log_of_the_served_run_has_no_error():
    assert serve.first_error((RECORD / "serverlog.txt").read_text()) == ""


# ---- doctor's nvcc: PATH, CUDA_HOME, /usr/local/cuda (env.txt: /usr/local/cuda/bin/nvcc on the GPU host) ----


def fake_nvcc(root: Path, release: str = "13.0", build: str = "13.0.88") -> Path:
    nvcc = root / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                    f"echo 'Cuda compilation tools, release {release}, V{build}'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return nvcc


def test_nvcc_is_found_in_cuda_home_then_on_path_then_in_usr_local_cuda(tmp_path, monkeypatch):
    """torch's order (a build and a run-time compile use that nvcc); the GPU host had only /usr/local/cuda."""
    assert "/usr/local/cuda/bin/nvcc" in (RECORD / "env.txt").read_text()
    on_path = fake_nvcc(tmp_path / "path-cuda", "12.8", "12.8.93")
    home = fake_nvcc(tmp_path / "home-cuda", "12.9", "12.9.41")
    default = fake_nvcc(tmp_path / "usr-local-cuda")
    root = str(tmp_path / "usr-local-cuda")
    empty = str(tmp_path / "empty")
    assert locate_nvcc({"PATH": str(on_path.parent), "CUDA_HOME": str(home.parent.parent)}, cuda_root=root) == (
        str(home), "CUDA_HOME")
    assert locate_nvcc({"PATH": str(on_path.parent), "CUDA_PATH": str(home.parent.parent)}, cuda_root=root) == (
        str(home), "CUDA_PATH")
    assert locate_nvcc({"PATH": str(on_path.parent), "CUDA_HOME": empty}, cuda_root=root) == (str(on_path), "PATH")
    assert locate_nvcc({"PATH": empty}, cuda_root=root) == (str(default), root)
    assert locate_nvcc({"PATH": empty}, cuda_root=empty) == ("", "")
    facts = collect_cuda_runtime([], env={"PATH": empty}, cuda_root=root)
    assert facts["nvcc"] == str(default) and facts["nvcc_version"] == "13.0.88"
    monkeypatch.setenv("CUDA_HOME", str(home.parent.parent))
    assert find_nvcc() == str(home)  # the JIT check searches the same way


def test_nvcc_findings(tmp_path):
    assert nvcc_version("Cuda compilation tools, release 12.8, V12.8.93") == "12.8.93"
    same = doctor.check_nvcc({"cuda": {"nvcc": "/usr/local/cuda/bin/nvcc", "nvcc_version": "13.0.88",
                                       "nvcc_found_by": "/usr/local/cuda"}, "torch": {"cuda": "13.0"}})
    assert same[0].level == "pass" and "not on PATH" in same[0].message
    other = doctor.check_nvcc({"cuda": {"nvcc": "/usr/bin/nvcc", "nvcc_version": "12.8.93", "nvcc_found_by": "PATH"},
                               "torch": {"cuda": "13.0"}})
    assert other[0].level == "warn" and "CUDA major versions differ" in other[0].message
    assert doctor.check_nvcc({"cuda": {}})[0].level == "info"
