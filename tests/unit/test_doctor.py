"""doctor: host facts (recorded, faked nvidia-smi), in-image facts, and each verdict with its fix."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.nccl import doctor
from vllm_forge.nccl.doctor import Gpu, HostFacts, arch_support, diagnose

FIX = Path(__file__).resolve().parents[1] / "fixtures"
H200_HOST = (FIX / "h200x2" / "host.txt").read_text()
SEED_TOPO = (FIX / "seed_5090" / "topo_m.txt").read_text()

# The field report's image: NGC 25.02-style torch without sm_120 (the arch list its error message
# printed), NCCL 2.25.1, CUDA 12.8; two RTX 5090 D over a PCIe host bridge.
FIELD_INSIDE = {
    "torch": {"installed": True, "version": "2.6.0+cu124", "cuda": "12.8", "nccl": "2.25.1",
              "arch_list": ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"], "devices": []},
    "nccl": {"version": "2.25.1", "library": "/usr/lib/x86_64-linux-gnu/libnccl.so.2", "packages": {}},
    "vllm": {"installed": False},
    "env": {"NCCL_CUMEM_ENABLE": "0"},
}


def field_host() -> HostFacts:
    text = ("== query\nindex, name, compute_cap, driver_version, memory.total [MiB], pci.bus_id\n"
            "0, NVIDIA GeForce RTX 5090 D, 12.0, 570.124.04, 32607 MiB, 00000000:01:00.0\n"
            "1, NVIDIA GeForce RTX 5090 D, 12.0, 570.124.04, 32607 MiB, 00000000:07:00.0\n"
            "== topo\n" + SEED_TOPO)
    return doctor.host_from_text(text)


def by_check(report, check):
    return [f for f in report.findings if f.check == check]


def test_h200_recording_passes():
    report = doctor.run_doctor(host_text=H200_HOST)
    assert report.level == "pass"
    assert [g.name for g in report.host.gpus] == ["NVIDIA H200"] * 2
    assert report.host.driver == "580.159.04" and report.host.driver_cuda == "13.0"
    assert report.inside["torch"]["arch_list"][-1] == "sm_120" and report.inside["nccl"]["version"] == "2.28.9"
    levels = {f.check: f.level for f in report.findings}
    assert levels["driver"] == levels["torch-archs"] == levels["nccl"] == levels["topo"] == levels["p2p"] == "pass"


def test_field_report_is_predicted():
    report = diagnose(field_host(), FIELD_INSIDE)
    assert report.level == "fail"
    [arch0, arch1] = by_check(report, "torch-archs")
    assert arch0.level == "fail"
    assert ("NVIDIA GeForce RTX 5090 D with CUDA capability sm_120 is not compatible with the current PyTorch "
            "installation") in arch0.message
    assert "CUDA 12.8" in arch0.fix and "cu128" in arch0.fix
    [nccl] = by_check(report, "nccl")
    assert nccl.level == "fail" and "2.25.1 is older than 2.26.2" in nccl.message and "2.26.2" in nccl.fix
    [topo] = by_check(report, "topo")
    assert topo.level == "warn" and "PHB" in topo.message
    assert by_check(report, "driver")[0].level == "pass"  # 570.124 >= 570.26 for CUDA 12.8
    assert by_check(report, "audit")[0].message.startswith(("audit unavailable", "no vLLM"))


def test_fixed_image_on_field_host_passes_but_topology_warns():
    inside = json.loads(json.dumps(FIELD_INSIDE))
    inside["torch"].update(version="2.7.0+cu128", arch_list=["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"],
                           nccl="2.26.2")
    inside["nccl"]["version"] = "2.26.2"
    report = diagnose(field_host(), inside)
    assert report.level == "warn"
    assert {f.check for f in report.findings if f.level == "warn"} == {"topo"}


def test_no_gpu_still_checks_the_image_for_named_gpus():
    report = diagnose(HostFacts(), FIELD_INSIDE, arch="rtx5090")
    assert by_check(report, "gpus")[0].level == "warn"
    assert report.targets == [("--arch sm_120", "12.0")]
    assert by_check(report, "torch-archs")[0].level == "fail"
    assert by_check(report, "nccl")[0].level == "fail"


def test_no_gpu_no_arch_says_what_to_pass():
    report = diagnose(HostFacts(), FIELD_INSIDE)
    assert "--arch" in by_check(report, "gpus")[0].message
    assert by_check(report, "torch-archs")[0].level == "info"


@pytest.mark.parametrize("cap,archs,expected", [
    ("12.0", ["sm_90", "sm_120"], ("sass", "sm_120")),
    ("12.1", ["sm_90", "sm_120"], ("sass-compatible", "sm_120")),
    ("8.9", ["sm_80", "sm_86"], ("sass-compatible", "sm_86")),
    ("12.0", ["sm_90", "compute_90"], ("ptx", "compute_90")),
    ("12.0", ["sm_50", "sm_90"], ("none", "")),
    ("9.0", ["sm_90a"], ("sass", "sm_90a")),
    ("10.3", ["sm_100a"], ("none", "")),  # an arch-specific `a` cubin runs on that exact GPU only
])
def test_arch_support(cap, archs, expected):
    assert arch_support(cap, archs) == expected


@pytest.mark.parametrize("driver,cuda,level", [
    ("580.159.04", "13.0", "pass"), ("570.26", "12.8", "pass"), ("550.54.14", "12.8", "warn"),
    ("470.82.01", "12.8", "fail"), ("575.57.08", "13.0", "fail"),
])
def test_driver_against_image_cuda(driver, cuda, level):
    [finding] = doctor.check_driver(HostFacts(driver=driver, driver_cuda="12.9"), {"torch": {"cuda": cuda}})
    assert finding.level == level


def test_env_overrides_are_reported():
    host = HostFacts(gpus=[Gpu(0, "NVIDIA H200", "9.0")], env={"NCCL_P2P_DISABLE": "1"})
    report = diagnose(host, {**FIELD_INSIDE, "env": {"NCCL_SHM_DISABLE": "1"}})
    messages = [f.message for f in report.findings if f.check == "env"]
    assert any("NCCL_P2P_DISABLE=1 in the host environment" in m for m in messages)
    assert any("NCCL_SHM_DISABLE=1 in this Python" in m for m in messages)


def test_audit_adapter_uses_the_audit_verdict():
    class FakeReport:
        ok = False

        def summary(self):
            return "FAIL: 1 of 1 files carry device code; sm_120: 0 native, 1 with NO kernel"

    seen = {}

    def fake_audit(path, targets):
        seen.update(path=path, targets=targets)
        return FakeReport()

    [finding] = doctor.check_audit("/site/vllm", [("GPU0", "12.0"), ("GPU1", "12.0")], fake_audit)
    assert seen == {"path": "/site/vllm", "targets": ["sm_120"]}
    assert finding.level == "fail" and "NO kernel" in finding.message and "--arch sm_120" in finding.fix
    assert doctor.check_audit("/x", [("g", "9.0")], None)[0].message.startswith("audit unavailable")


def test_collect_host_from_faked_nvidia_smi(monkeypatch):
    from vllm_forge.nccl.nccl_logs import split_sections

    sections = dict(split_sections(H200_HOST))
    calls = []

    def runner(argv, **kwargs):
        calls.append(argv[1:])
        args = argv[1:]
        if not args:
            out = sections["nvidia-smi"]
        elif args[0].startswith("--query-gpu="):
            assert args[0] == f"--query-gpu={doctor.SMI_QUERY}"
            out = ("index, name, compute_cap, driver_version, memory.total [MiB], pci.bus_id, pcie.link.gen.max, "
                   "pcie.link.width.max\n0, NVIDIA H200, 9.0, 580.159.04, 143771 MiB, 00000000:00:06.0, 5, 16\n"
                   "1, NVIDIA H200, 9.0, 580.159.04, 143771 MiB, 00000000:00:07.0, 5, 16\n")
        elif args == ["topo", "-m"]:
            out = sections["topo"]
        else:
            out = sections["topo -p2p r"]
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr(doctor.shutil, "which", lambda name: "/usr/bin/" + name)
    facts = doctor.collect_host(runner)
    assert facts.source == "nvidia-smi" and facts.driver_cuda == "13.0"
    assert [(g.pcie_gen, g.pcie_width, g.memory_mib) for g in facts.gpus] == [(5, 16, 143771)] * 2
    assert facts.topo.gpu_pairs() == [("GPU0", "GPU1", "NV18")]
    assert facts.p2p.kind == "p2p"


def test_inside_image_command_and_parse():
    seen = {}

    def runner(argv, **kwargs):
        seen["argv"], seen["input"] = argv, kwargs["input"]
        return subprocess.CompletedProcess(argv, 0, json.dumps(FIELD_INSIDE), "")

    facts = doctor.collect_inside_image("lab/vllm:5090", runner=runner)
    assert seen["argv"] == ["docker", "run", "--rm", "-i", "--entrypoint", "python3", "lab/vllm:5090", "-"]
    assert "def collect()" in seen["input"] and not re.search(r"^\s*(from|import) vllm_forge", seen["input"], re.M)
    assert facts["image"] == "lab/vllm:5090" and facts["nccl"]["version"] == "2.25.1"


def test_inside_image_errors_are_one_line():
    def missing(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 125, "", "Unable to find image 'x:1' locally\n")

    with pytest.raises(ForgeError, match="not available locally"):
        doctor.collect_inside_image("x:1", runner=missing)


def test_inside_collector_runs_standalone():
    out = subprocess.run(["python3", str(doctor.INSIDE_SCRIPT)], capture_output=True, text=True, check=True)
    facts = json.loads(out.stdout)
    assert set(facts) >= {"torch", "nccl", "vllm", "env", "python", "errors"}
    piped = subprocess.run(["python3", "-"], input=doctor.INSIDE_SCRIPT.read_text(), capture_output=True,
                           text=True, check=True)
    assert json.loads(piped.stdout)["python"] == facts["python"]


def test_cli_json_from_recording(tmp_path, capsys):
    host = tmp_path / "host.txt"
    host.write_text(H200_HOST)
    assert doctor.main(["--host-file", str(host), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["level"] == "pass" and data["host"]["topo"]["cells"]["GPU0"]["GPU1"] == "NV18"


def test_no_torch_fix_depends_on_where_it_was_looked_for():
    """A user who passed the serving image is not told to "point --image at the serving image"."""
    from vllm_forge.nccl.doctor import check_torch_archs

    inside = {"torch": {"installed": False, "error": "No module named 'torch'"}}
    image = check_torch_archs([], inside, "image vllm-forge/vllm:x")[0]
    host = check_torch_archs([], inside)[0]
    assert "image vllm-forge/vllm:x" in image.message and "invoke bake" in image.fix and "--image" not in image.fix
    assert "this Python" in host.message and "pip install torch" in host.fix
