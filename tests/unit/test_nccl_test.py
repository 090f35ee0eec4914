"""nccl_test: sizes, runner choice, the commands (nccl-tests build, docker, torch), and a run whose
tool is faked with the field report's real outputs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.nccl import nccl_allreduce, nccl_logs, nccl_test

FIX = Path(__file__).resolve().parents[1] / "fixtures"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_local_nccl_tests_build(tmp_path, monkeypatch):
    """A developer's build/nccl-tests must not change which runner these tests see."""
    monkeypatch.setattr(nccl_test, "DEFAULT_BUILD_DIR", tmp_path / "no-nccl-tests")


@pytest.mark.parametrize("spec,expected", [
    ("8:128M", (8, 128 << 20)), ("1K:1G", (1024, 1 << 30)), ("64m", (64 << 20, 64 << 20)), ("8:8", (8, 8)),
])
def test_parse_sizes(spec, expected):
    assert nccl_test.parse_sizes(spec) == expected


@pytest.mark.parametrize("spec", ["128M:8", "a:b", "1:2:3", ""])
def test_bad_sizes_are_user_errors(spec):
    with pytest.raises(ForgeError):
        nccl_test.parse_sizes(spec)


def test_allreduce_script_sizes_agree():
    assert nccl_allreduce.parse_size("128M") == nccl_test.parse_size("128M")
    assert nccl_allreduce.sizes_between(8, 64, 2, 4) == [8, 16, 32, 64]
    assert nccl_allreduce.sizes_between(1, 16, 2, 4) == [4, 8, 16]


def test_torch_runner_when_no_all_reduce_perf(tmp_path):
    plan = nccl_test.plan_run(gpus=2, sizes="8:128M", out_dir=tmp_path, env={"PATH": str(tmp_path)})
    assert plan.runner == "torch"
    argv = plan.command.argv
    assert argv[1:3] == ["-m", "vllm_forge.nccl.nccl_allreduce"]
    assert argv[3:] == ["--nproc", "2", "-b", "8", "-e", str(128 << 20), "-f", "2", "-n", "20"]
    assert plan.command.env == {"NCCL_DEBUG": "INFO", "NCCL_DEBUG_FILE": f"{tmp_path}/nccl_debug.%h.%p.log",
                                "NCCL_NVLS_ENABLE": "0", "PYTHONPATH": str(REPO)}  # the package, from anywhere
    assert plan.notes and "all_reduce_perf not found" in plan.notes[0]


def test_nccl_tests_runner_when_found(tmp_path):
    binary = tmp_path / "all_reduce_perf"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    plan = nccl_test.plan_run(gpus=4, sizes="1M:1G", out_dir=tmp_path / "out",
                              env={"PATH": str(tmp_path), "NCCL_NVLS_ENABLE": "1"})
    assert plan.runner == "nccl-tests"
    assert plan.command.argv == [str(binary), "-b", str(1 << 20), "-e", str(1 << 30), "-f", "2", "-n", "20",
                                 "-g", "4"]
    assert "NCCL_NVLS_ENABLE" not in plan.command.env  # the caller's own setting wins
    with pytest.raises(ForgeError, match="all_reduce_perf was not found"):
        nccl_test.plan_run(gpus=1, out_dir=tmp_path, runner="nccl-tests", env={"PATH": "/nonexistent"})


def test_image_runner_mounts_the_script_and_the_output(tmp_path):
    plan = nccl_test.plan_run(gpus=2, out_dir=tmp_path, image="lab/vllm:5090", env={})
    argv = plan.command.argv
    assert argv[:8] == ["docker", "run", "--rm", "--gpus", "all", "--ipc=host", "--ulimit", "memlock=-1"]
    assert f"{tmp_path}:/forge-out" in argv
    assert "NCCL_DEBUG_FILE=/forge-out/nccl_debug.%h.%p.log" in argv and "NCCL_NVLS_ENABLE=0" in argv
    assert argv[argv.index("--entrypoint") + 1:][:3] == ["python3", "lab/vllm:5090", "/forge-scripts/nccl_allreduce.py"]
    plan = nccl_test.plan_run(gpus=2, out_dir=tmp_path, image="img", runner="nccl-tests",
                              binary="/opt/nccl-tests/build/all_reduce_perf", env={})
    assert plan.command.argv[-12:-10] == ["/opt/nccl-tests/build/all_reduce_perf", "img"]
    assert plan.command.argv[-2:] == ["-g", "2"]


def test_plan_nccl_tests_build(tmp_path):
    src = tmp_path / "nccl-tests"
    (src / "src").mkdir(parents=True)
    (src / "src" / "Makefile").write_text("all:\n")
    home = tmp_path / "nvidia" / "nccl"
    (home / "lib").mkdir(parents=True)
    (home / "lib" / "libnccl.so.2").write_text("")
    commands = nccl_test.plan_nccl_tests_build(src, home, cuda_home="/usr/local/cuda-12.8",
                                               capabilities=["12.0", "9.0"], jobs=4)
    assert commands[0].argv == ["ln", "-sf", "libnccl.so.2", str(home / "lib" / "libnccl.so")]
    assert commands[1].argv == [
        "make", "-C", str(src / "src"), "-j4", "MPI=0", f"NCCL_HOME={home}", f"BUILDDIR={src / 'build'}",
        "CUDA_HOME=/usr/local/cuda-12.8",
        "NVCC_GENCODE=-gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_120,code=sm_120 "
        "-gencode=arch=compute_120,code=compute_120"]
    with pytest.raises(ForgeError, match="not an nccl-tests checkout"):
        nccl_test.plan_nccl_tests_build(tmp_path, home)
    with pytest.raises(ForgeError, match="--nccl-home"):
        nccl_test.plan_nccl_tests_build(src, None)


def test_dockerfile_snippet_builds_against_torchs_nccl():
    snippet = nccl_test.NCCL_TESTS_DOCKERFILE_SNIPPET
    assert "make -C /opt/nccl-tests/src" in snippet and "MPI=0" in snippet and 'NCCL_HOME="$NCCL_HOME"' in snippet
    assert "import nvidia.nccl" in snippet and "<<" not in snippet


def _fake_run(output_file: Path, debug_files: dict[str, Path], code: int):
    """A runner that behaves like all_reduce_perf: table on stdout, NCCL log where NCCL_DEBUG_FILE says."""

    def runner(argv, env=None, **kwargs):
        pattern = env["NCCL_DEBUG_FILE"]
        for pid, source in debug_files.items():
            Path(pattern.replace("%h", "host").replace("%p", pid)).write_text(source.read_text())
        return subprocess.CompletedProcess(argv, code, output_file.read_text(), "")

    return runner


def test_run_reproduces_the_field_report(tmp_path):
    plan = nccl_test.plan_run(gpus=2, out_dir=tmp_path, env={"PATH": "/nonexistent"}, has_torch=True)
    runner = _fake_run(FIX / "seed_5090" / "all_reduce_perf_2gpu.txt",
                       {"188": FIX / "seed_5090" / "nccl_debug.log"}, code=1)
    outcome = nccl_test.run_plan(plan, runner=runner)
    assert outcome.returncode == 1 and outcome.level == "fail"
    assert (tmp_path / "all_reduce.txt").read_text().startswith("# nThread 1 nGpus 2")
    assert (tmp_path / "nccl_debug.host.188.log").is_file()
    checks = {f.check for r in outcome.reports for f in r.findings if f.level == "fail"}
    assert {"nccl-tests-failed", "nccl-too-old-for-blackwell"} <= checks
    assert outcome.to_dict()["result"]["failures"][0].startswith("Test NCCL failure common.cu:409")
    assert outcome.root_cause.level == "fail" and "2.26.2" in outcome.root_cause.fix
    assert outcome.to_dict()["root_cause"]["cause"] == outcome.root_cause.cause


def test_run_environment_is_weighed_in_the_root_cause(tmp_path, monkeypatch):
    monkeypatch.setenv("NCCL_PROTO", "LL")
    plan = nccl_test.plan_run(gpus=2, out_dir=tmp_path, env={"PATH": "/nonexistent"}, has_torch=True)
    # the live H200 pair's torch-runner table (device lines name the GPUs), busbw scaled to ~150 GB/s
    slow = re.sub(r"(\d+\.\d\d)\s+(\d+\.\d\d)(?=\s+0\s*$)",
                  lambda m: f"{float(m.group(1)) * 40:8.2f}{float(m.group(2)) * 40:8.2f}",
                  (FIX / "h200x2_live_fault" / "all_reduce.txt").read_text(), flags=re.M)
    (tmp_path / "slow.txt").write_text(slow)
    (tmp_path / "topo.txt").write_text((FIX / "h200x2_live_fault" / "topo.txt").read_text())  # as saved on a host
    runner = _fake_run(tmp_path / "slow.txt", {"889": FIX / "h200x2" / "nccl_debug_rank0.log",
                                               "890": FIX / "h200x2" / "nccl_debug_rank1.log"}, 0)
    outcome = nccl_test.run_plan(plan, runner=runner)
    assert nccl_test.run_env(plan)["NCCL_PROTO"] == "LL" and "NCCL_DEBUG" not in nccl_test.run_env(plan)
    assert outcome.root_cause.cause.startswith("NCCL_PROTO=LL"), outcome.root_cause


def test_run_healthy_h200(tmp_path):
    plan = nccl_test.plan_run(gpus=2, out_dir=tmp_path, env={"PATH": "/nonexistent"}, has_torch=True)
    runner = _fake_run(FIX / "h200x2" / "allreduce.txt", {"889": FIX / "h200x2" / "nccl_debug_rank0.log",
                                                          "890": FIX / "h200x2" / "nccl_debug_rank1.log"}, 0)
    outcome = nccl_test.run_plan(plan, runner=runner)
    assert outcome.level == "pass", nccl_logs.render_text(outcome.reports)
    assert len(outcome.reports) == 3
    assert outcome.root_cause.level == "pass"


def test_hung_run_is_a_failure(tmp_path):
    def runner(argv, **kwargs):
        raise subprocess.TimeoutExpired(argv, 5, output=b"# nThread 1 nGpus 2\n")

    plan = nccl_test.plan_run(gpus=2, out_dir=tmp_path, env={"PATH": "/nonexistent"}, has_torch=True)
    outcome = nccl_test.run_plan(plan, runner=runner, timeout=5)
    assert outcome.returncode == 124 and outcome.level == "fail"
    assert any("Test timeout" in f for f in outcome.result.failures)


def test_allreduce_script_without_torch_reports_like_nccl_tests():
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed here; this checks the no-torch path")
    except ImportError:
        pass
    out = subprocess.run(["python3", str(nccl_test.ALLREDUCE_SCRIPT), "--nproc", "1"], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 1
    run = nccl_logs.parse_nccl_tests(out.stdout)
    assert run.failures and "PyTorch is not installed" in run.failures[0]


def test_topology_capability_and_pcie_are_recorded_for_the_link_model(tmp_path, monkeypatch):
    live = FIX / "h200x2_live_fault"
    csv = ("index, name, compute_cap, pcie.link.gen.max, pcie.link.width.max\n"
           "0, NVIDIA H200, 9.0, 5, 16\n1, NVIDIA H200, 9.0, 5, 16\n")
    answers = {"-m": (live / "topo.txt").read_text(), "r": (live / "topo_p2p.txt").read_text(), "--format=csv": csv}

    def runner(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 0, answers[argv[-1]], "")

    monkeypatch.setattr(nccl_test.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    saved = nccl_test.record_topology(tmp_path, runner=runner)
    assert [p.name for p in saved] == ["topo.txt", "topo_p2p.txt", "gpus.csv"]
    ctx = nccl_logs.Context()
    nccl_logs.diagnose_files(saved, ctx)
    assert (ctx.links, ctx.p2p, ctx.gpu_caps, ctx.pcie_gen, ctx.pcie_width) == (["NV18"], ["OK"], ["9.0"], 5, 16)


@pytest.mark.parametrize("output, cause", [
    # what vllm_forge/nccl/nccl_allreduce.py prints where torch is installed but no GPU is visible
    ("box: Test CUDA failure torch.cuda 'no CUDA GPU is visible'\n", "no NVIDIA GPU is visible to this run"),
    ("# nThread 1 nGpus 1\nbox: Test failure odd.cu:12 'something new'\n", "odd.cu:12"),
])
def test_a_failed_run_never_asks_for_the_nccl_debug_it_already_set(tmp_path, output, cause):
    """nccl-test runs with NCCL_DEBUG=INFO: its fixes point at the logs it wrote, never "rerun with NCCL_DEBUG"."""
    plan = nccl_test.plan_run(gpus=1, out_dir=tmp_path, env={"PATH": "/nonexistent"}, has_torch=True)
    assert plan.command.env["NCCL_DEBUG"] == "INFO"

    def runner(argv, env=None, **kwargs):
        return subprocess.CompletedProcess(argv, 1, output, "")

    outcome = nccl_test.run_plan(plan, runner=runner)
    assert outcome.level == "fail" and cause in outcome.root_cause.cause + " ".join(
        f.message for r in outcome.reports for f in r.findings)
    fixes = [outcome.root_cause.fix] + [f.fix for r in outcome.reports for f in r.findings]
    assert not [fix for fix in fixes if "rerun with NCCL_DEBUG" in fix], fixes
