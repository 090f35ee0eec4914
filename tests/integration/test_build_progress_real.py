"""Real builds of the miniature (CMake + ninja + nvcc, as vLLM's setup.py drives them): an interrupted build
that the next build-wheel resumes (ninja compiles only what the first did not; read from .ninja_log), the
progress lines and the timing report it prints without a terminal, and a failing build whose one-line
error names the planted `#error`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_forge.build import ninja_log
from vllm_forge.build.build_wheel import BuildRequest, plan_build, read_build_info, run_build
from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.source import checkout

pytestmark = [pytest.mark.integration, pytest.mark.nvcc]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def src(minivllm_repo, tmp_path):
    """A checkout of the miniature at v0.1.0, its torch pins removed (as build-wheel's first step leaves it)."""
    dest = tmp_path / "vllm"
    checkout.clone(minivllm_repo, "v0.1.0", dest)
    checkout.use_existing_torch(dest)
    return dest


def invoke_build_wheel(src: Path, dist: Path) -> subprocess.CompletedProcess:
    """`invoke build-wheel` with its output in a pipe (no terminal), as CI runs it."""
    return subprocess.run([sys.executable, "-m", "invoke", "build-wheel", "--vllm-src", str(src), "--arch", "12.0",
                           "--dist-dir", str(dist), "--compile-cache", "none", "--max-jobs", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "300"})


def objects_of(entries) -> set[str]:
    return {e.output for e in entries if e.target}


def test_an_interrupted_build_is_resumed_by_the_next_build_wheel_with_progress_without_a_terminal(
        src, tmp_path, nvcc_toolchain):
    dist = tmp_path / "dist"
    plan = plan_build(BuildRequest(src=src, dist_dir=dist, archs=parse_arch_list("12.0"), compile_cache="none",
                                   max_jobs=2))
    assert any(n.startswith("resume: no CMake build dir under") for n in plan.notes)
    assert "estimate: none (minivllm is not vLLM and has no recorded build yet; this build records one)" in plan.notes

    def stop_after_two_steps(line: str) -> None:
        progress = ninja_log.parse_progress(line)
        if progress and progress[0] >= 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the task while the build streams

    with pytest.raises(KeyboardInterrupt):
        run_build(plan, on_line=stop_after_two_steps)
    first = objects_of(plan.timing.compiled)
    assert 1 <= len(first) < 6  # the miniature has 6 compile units: the build stopped part-way
    assert not list(dist.glob("*.whl"))
    build_dir = ninja_log.find_build_dir(src)
    # ninja's own clock restarts with each run, but a resumed run's first unit can end "later" than the
    # interrupted run's last: the log is split where this build's lines end, not by times going back
    first_lines = len(ninja_log.read_ninja_log(build_dir / ".ninja_log"))

    out = invoke_build_wheel(src, dist)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    shown = f"{build_dir.relative_to(src)}/"
    assert (f"# resuming: {shown} holds {len(first)} objects an earlier build compiled (its .ninja_log); ninja "
            "rebuilds only what changed") in out.stdout  # use-existing-torch, run again, invalidated nothing
    left = 6 - len(first)  # the tree's own record timed what is done, nothing that is left: no figure is made up
    assert (f"# estimate: none for the {left} object{'' if left == 1 else 's'} left: the record has not timed "
            f"{'it' if left == 1 else 'them'}; ~") in out.stdout
    assert ("a guess (from this tree's own "
            f"{shown}.ninja_log; {len(first)} of 6 objects of "
            ) in out.stdout
    second = objects_of(ninja_log.read_ninja_log(build_dir / ".ninja_log")[first_lines:])
    assert second and not (second & first)  # ninja compiled only what the first build had not
    assert len(first | second) == 6

    # what a pipe (CI) shows: a line per phase and per tenth of ninja's steps, no escape codes; then the report
    assert "\x1b[" not in out.stdout
    lines = out.stdout.splitlines()
    progress = [line for line in lines if line.startswith("build-wheel: ")]
    assert any(line.startswith("build-wheel: CMake configure, ") for line in progress)
    compiling = [line for line in progress if line.startswith("build-wheel: compiling [")]
    assert compiling and " 100%, " in compiling[-1]
    assert len(progress) <= 15  # not the build's ~150 lines
    report = lines.index(next(line for line in lines if line.startswith("compile times (build/temp.")))
    assert f"this build compiled {len(second)} objects" in lines[report]
    assert lines[report].endswith(f"; {len(first)} {'was' if len(first) == 1 else 'were'} kept from an earlier build")
    assert lines[report + 1] == "slowest compile units (of 6):"
    assert "CPU-seconds per CMake target:" in lines[report:]
    # ... and the wheel keeps the summary: every object's time, this build's part, the slowest five
    times = read_build_info(next(dist.glob("*.whl")))["compile_times"]
    assert (times["objects"], times["compiled_by_this_build"], len(times["slowest"])) == (6, len(second), 5)
    assert times["cpu_seconds"] > 0 and times["wall_seconds"] > 0


def in_a_terminal(argv: list[str], columns: int) -> tuple[int, str, str]:
    """Run ``argv`` with its stdout on a pseudo-terminal ``columns`` wide (what a user's terminal is) and its
    stderr in a pipe; returns the exit code, what the terminal got (escape codes removed) and stderr."""
    import fcntl
    import pty
    import struct
    import termios

    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(argv, cwd=REPO, stdout=terminal, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": str(columns), "TERM": "xterm"})
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 65536)
        except OSError:  # the child side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(controller)
    err = proc.stderr.read()
    proc.wait(timeout=600)
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    return proc.returncode, shown, err


def test_a_failing_build_names_its_first_error_and_its_progress_fits_the_terminal(src, tmp_path, nvcc_toolchain):
    kernel = src / "csrc" / "scale.cu"
    kernel.write_text('#error "planted by test_build_progress"\n' + kernel.read_text())
    code, shown, err = in_a_terminal(
        [sys.executable, "-m", "invoke", "build-wheel", "--vllm-src", str(src), "--arch", "12.0", "--dist-dir",
         str(tmp_path / "dist"), "--compile-cache", "none", "--max-jobs", "2"], columns=72)
    assert code == 1
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ")
    assert (f'first error, in csrc/scale.cu (_C): {kernel}:1:2: error: #error "planted by test_build_progress"'
            in errors[0])
    assert "(full log: " in errors[0] and "read the log" not in errors[0]
    assert "Fix: fix that compile error" in errors[0]
    assert "compile times (build/temp." in shown  # a failed build still says where the time went
    # the live lines: drawn in place (no plain progress lines on a terminal), each within the width
    frames = [line for line in re.split(r"[\r\n]", shown)
              if re.match(r"^\S build-wheel ", line) or "slowest so far" in line or "━" in line]
    assert any("━" in line and "compiling" in line for line in frames), shown[-3000:]
    assert all(len(line) <= 72 for line in frames), [line for line in frames if len(line) > 72]
    assert "build-wheel: compiling [" not in shown
