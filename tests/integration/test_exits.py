"""Exit codes that match what a command did, and output a pipe or a narrow terminal can take."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FIXTURE_SO = REPO / "tests" / "fixtures" / "h200x2" / "k_sm_120"
NCCL_LOG = REPO / "tests" / "fixtures" / "gpu" / "nccl_debug_1gpu.log"


def invoke(*args, cwd=REPO, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "300", **(env or {})}, timeout=timeout)


@pytest.mark.parametrize("argv", [
    [sys.executable, "-m", "invoke", "audit", str(FIXTURE_SO), "--arch", "12.0", "--json", "--no-torch"],
    [sys.executable, "-m", "invoke", "audit", str(FIXTURE_SO), "--arch", "12.0", "--no-torch"],
    [sys.executable, "-m", "invoke", "nccl-diagnose", str(NCCL_LOG), "--json"],
    [sys.executable, "-m", "invoke", "archs"],
    [sys.executable, "-m", "invoke", "build-wheel", "--help"],
    [sys.executable, "-m", "vllm_forge.nccl.nccl_logs", "diagnose", str(NCCL_LOG)],
    [sys.executable, "-m", "vllm_forge.audit.audit", str(FIXTURE_SO), "--arch", "12.0", "--json", "--no-torch"],
], ids=["audit --json", "audit", "nccl-diagnose --json", "archs", "build-wheel --help", "nccl_logs.py", "audit.py"])
def test_a_closed_pipe_ends_quietly(argv):
    """`... | head -1`: the reader went away. The command stops without a traceback, with a shell's SIGPIPE
    status (141), whatever it was printing (a pipe whose reader has already closed: the first write fails)."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(argv, cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "COLUMNS": "300"})
    finally:
        os.close(write)
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
    assert proc.returncode == 141, proc.stderr


@pytest.mark.parametrize("args, fix", [
    (["--dry", "build-wheel", "--arch", "12.0", "--vllm-src", "/nonexistent/vllm"],
     "Fix: use the task's own flag: invoke build-wheel --arch 12.0 --vllm-src /nonexistent/vllm --dry-run."),
    (["-R", "clone", "--ref", "v0.11.0", "check-size"],
     "Fix: use the task's own flag: invoke clone --ref v0.11.0 --dry-run check-size --dry-run."),
    (["-R", "archs"], "Fix: drop it: archs has no dry run."),
])
def test_invoke_own_dry_flag_is_refused(args, fix):
    """invoke's core -R/--dry only echoes ctx.run; under it a build would really run."""
    out = invoke(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invoke's -R/--dry only affects ctx.run"), out.stderr
    assert lines[0].endswith(fix), lines[0]
    assert out.stdout == ""


def test_nccl_diagnose_of_a_directory_without_nccl_files_fails(tmp_path):
    for name in ("passwd", "hostname"):
        (tmp_path / name).write_text(Path("/etc", name).read_text() if Path("/etc", name).is_file() else "x\n")
    out = invoke("nccl-diagnose", str(tmp_path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "PASS" not in out.stdout and out.stderr.startswith("error: none of the 2 file(s) read is an NCCL log")
    out = invoke("nccl-diagnose")
    assert out.returncode == 2 and out.stderr.startswith("error: nccl-diagnose needs the files to read. Fix: name them")


def narrow(*args, cwd=REPO, env=None, timeout=300):
    """`invoke ARGS` on a 40-column terminal."""
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "40", **(env or {})}, timeout=timeout)


def assert_whole(output: str, tokens: list[str]) -> None:
    """Each token (a path, a command word, an image name) is on one line, whole; nothing ends cut with "…"."""
    lines = output.splitlines()
    for token in tokens:
        assert any(token in line for line in lines), f"{token!r} is split or cut in:\n{output}"
    assert not [line for line in lines if line.rstrip().endswith("…")], output


def test_paths_and_commands_are_never_split_on_a_narrow_terminal(tmp_path):
    import shutil
    import zipfile

    deep = tmp_path / "a-rather-long-directory-name-for-the-wheels" / "dist"
    deep.mkdir(parents=True)
    wheel = deep / "vllm-0.11.0+cu128.sm120-cp38-abi3-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(FIXTURE_SO, "vllm/_C_with_a_long_extension_name.abi3.so")
    shutil.copy(FIXTURE_SO, deep / "libsomething_with_a_long_name_sm120.so")
    logs = tmp_path / "logs-from-the-cluster-node-a"
    logs.mkdir()
    shutil.copy(REPO / "tests" / "fixtures" / "nccl_tests_nogpu" / "all_reduce_perf_no_driver.txt",
                logs / "all_reduce_perf_no_driver_on_node_a.txt")

    out = narrow("check-size", "--wheel", str(wheel))
    assert out.returncode == 0, out.stderr
    assert_whole(out.stdout, [wheel.name])
    out = narrow("audit", str(deep), "--arch", "12.0", "--no-torch")
    assert out.returncode == 0, out.stdout + out.stderr
    assert_whole(out.stdout, [str(deep), "libsomething_with_a_long_name_sm120.so",
                              f"{wheel.name}/vllm/_C_with_a_long_extension_name.abi3.so"])
    out = narrow("nccl-diagnose", str(logs))
    assert out.returncode == 1, out.stdout + out.stderr
    assert_whole(out.stdout, [str(logs / "all_reduce_perf_no_driver_on_node_a.txt")])
    out = narrow("plan", "--vllm-src", "tests/fixtures/minivllm", "--arch", "12.0", "--dist-dir", str(deep))
    assert out.returncode in (0, 2), out.stderr  # 2: a step not ready here (no nvcc, no engine): still printed
    copy = REPO / "build" / "private-src" / "tests--fixtures--minivllm"
    assert_whole(out.stdout, [str(copy), "https://github.com/vllm-project/vllm.git", "--py-limited-api=cp38",
                              f"--dist-dir={deep}/.staging-"])
