"""The units compiling now, read from the real /proc: a long-running process named like a compiler, started in a
build dir with ``-o CMakeFiles/t.dir/x.cpp.o`` in its argv (as ninja starts one), is named with its age, and the
build's plain line says it runs while no step finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vllm_forge.build.build_progress import BuildProgress
from vllm_forge.build.inflight import running_units

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="no /proc (not Linux)")]


@pytest.fixture
def compiling(tmp_path):
    """A `c++` (a shell script that sleeps) compiling CMakeFiles/t.dir/x.cpp.o in the tree's build dir."""
    build_dir = tmp_path / "vllm" / "build" / "temp.linux-x86_64-cpython-312"
    build_dir.mkdir(parents=True)
    (build_dir / "build.ninja").write_text("")
    compiler = tmp_path / "bin" / "c++"
    compiler.parent.mkdir()
    compiler.write_text("#!/bin/sh\nsleep 60\n")  # the sh stays, with its argv: a child, not exec
    compiler.chmod(0o755)
    child = subprocess.Popen([str(compiler), "-O2", "-o", "CMakeFiles/t.dir/x.cpp.o", "-c", "../../x.cpp"],
                             cwd=build_dir, start_new_session=True)  # its own group: the sleep goes too
    started = time.monotonic()
    try:
        yield build_dir, started
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)


def test_a_running_compiler_is_named_with_a_plausible_age(compiling):
    build_dir, started = compiling
    time.sleep(1.5)  # /proc's start time has clock-tick resolution: let the age be clearly above zero
    [unit] = running_units(build_dir)
    assert (unit.output, unit.target, unit.source) == ("CMakeFiles/t.dir/x.cpp.o", "t", "x.cpp")
    assert 1.0 <= unit.seconds <= time.monotonic() - started + 1.0  # +1: a loaded machine rounds ticks
    assert running_units(build_dir.parent) == []  # another dir: nothing


def test_the_progress_names_it_before_ninja_printed_a_step(compiling):
    build_dir, _ = compiling
    progress = BuildProgress(build_dir.parents[1])
    progress.feed(f"-- Build files have been written to: {build_dir}")
    line = progress.plain_line()
    assert line.startswith("compiling, 0s elapsed: ninja starts; running: x.cpp (t) "), line
