"""The live progress of a build, fed the recorded vLLM 0.26.0 log's lines on a hand-driven clock: phases, [k/N],
the ETA and when it is rough, the slowest units so far from a growing .ninja_log, the plain lines written
without a terminal (never one per object), and paths cut to fit without breaking a component."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_forge.build.build_progress import BuildProgress, duration, eta_settled, eta_text, render_plain, shorten_path

RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "gpu_real_build_0_26_0"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def progress_at(tmp_path, clock) -> BuildProgress:
    return BuildProgress(tmp_path / "vllm", clock=clock)


def test_phases_before_ninja_then_compiling_then_packaging(tmp_path):
    clock = Clock()
    progress = progress_at(tmp_path, clock)
    assert progress.view().phase == "starting"
    excerpt = (RECORD / "build-wheel-part2-excerpt.log").read_text().splitlines()
    progress.feed(excerpt[3])  # running bdist_wheel
    assert (progress.view().phase, progress.view().detail) == ("setup.py", "running bdist_wheel")
    progress.feed("-- Build type: Release")
    assert (progress.view().phase, progress.view().detail) == ("CMake configure", "Build type: Release")
    progress.feed("-- Build files have been written to: /tmp/vb/vllm-0.26.0/build/temp.linux-x86_64-cpython-312")
    assert (progress.view().phase, progress.view().detail) == ("compiling", "ninja starts")
    progress.feed("Using MAX_JOBS=16 as the number of jobs.")
    progress.feed("[1/2] Building CXX object CMakeFiles/_C.dir/csrc/a.cpp.o")
    progress.feed("[2/2] Linking CXX shared module _C.abi3.so")
    progress.feed("running install_lib")
    assert (progress.view().phase, progress.view().detail) == ("packaging", "running install_lib")


def test_eta_from_the_rate_so_far_rough_until_a_tenth_finished(tmp_path):
    clock = Clock()
    progress = progress_at(tmp_path, clock)
    progress.feed("Using NVCC_THREADS=1 as the number of nvcc threads.")  # ninja starts now
    clock.now += 10
    progress.feed("[1/100] Building CXX object CMakeFiles/_C.dir/csrc/a.cpp.o")
    assert progress.view().eta is None and eta_text(progress.view()) == "ETA ~"  # one step says nothing
    clock.now += 10
    progress.feed("[2/100] Building CUDA object CMakeFiles/_C.dir/csrc/b.cu.o")
    view = progress.view()
    assert view.eta == pytest.approx(98 * 10) and not view.eta_settled  # 20 s for 2 steps: 10 s a step
    assert eta_text(view) == "ETA ~16m20s"
    clock.now += 30  # no new line: the ETA counts down instead of freezing
    assert progress.view().eta == pytest.approx(98 * 10 - 30)
    for k in range(3, 11):
        clock.now += 10
        progress.feed(f"[{k}/100] Building CUDA object CMakeFiles/_C.dir/csrc/k{k}.cu.o")
    view = progress.view()
    assert view.eta_settled and eta_text(view) == f"ETA {duration(view.eta)}" and view.fraction == 0.1


def test_settling_needs_a_tenth_of_the_steps_and_at_least_five():
    assert [eta_settled(d, 417) for d in (40, 41)] == [False, True]
    assert [eta_settled(d, 20) for d in (4, 5)] == [False, True]
    assert eta_settled(3, 3)


def test_a_second_ninja_run_restarts_the_rate(tmp_path):
    clock = Clock()
    progress = progress_at(tmp_path, clock)
    for k in range(1, 6):
        clock.now += 100
        progress.feed(f"[{k}/5] Building CUDA object x{k}.o")
    clock.now += 1
    progress.feed("-- Install configuration: Release")
    clock.now += 1
    progress.feed("[1/50] Building CUDA object y.o")
    clock.now += 1
    progress.feed("[2/50] Building CUDA object z.o")
    assert progress.view().eta == pytest.approx(1 * 48)  # the new run's 1 s a step, not the old 100 s


def test_slowest_so_far_come_from_this_builds_ninja_log_lines(tmp_path):
    clock = Clock()
    build_dir = tmp_path / "vllm" / "build" / "temp.linux-x86_64-cpython-312"
    build_dir.mkdir(parents=True)
    (build_dir / "build.ninja").write_text("")
    log = build_dir / ".ninja_log"
    recorded = (RECORD / "ninja_log.txt").read_text().splitlines(keepends=True)
    log.write_text("".join(recorded[:96]))  # an earlier build's 95 objects, its slow ones included
    progress = progress_at(tmp_path, clock)
    progress.feed("[1/322] Building CUDA object CMakeFiles/_moe_C_stable_libtorch.dir/x.cu.o")
    assert progress.view().slowest == []
    with open(log, "a") as handle:
        handle.write("".join(recorded[96:]))  # what ninja appends as this build's units finish
    clock.now += 1
    assert progress.view().slowest == []  # read again only every 2 s
    clock.now += 2
    slowest = progress.view().slowest
    assert [round(e.seconds) for e in slowest] == [225, 223, 190]  # the second run's 14, not the first's
    assert slowest[0].source.endswith("cutlass_w4a8/w4a8_mm_entry.cu")
    assert "slowest so far: 225s w4a8_mm_entry.cu (_C_stable_libtorch)" in render_plain(progress.view())


def test_a_first_build_finds_its_log_once_cmake_named_the_build_dir(tmp_path):
    clock = Clock()
    progress = progress_at(tmp_path, clock)
    build_dir = tmp_path / "elsewhere"
    progress.feed(f"-- Build files have been written to: {build_dir}")
    build_dir.mkdir()
    (build_dir / ".ninja_log").write_text("# ninja log v7\n0\t4000\t1\tCMakeFiles/_C.dir/csrc/a.cu.o\th\n")
    progress.feed("[1/3] Building CUDA object CMakeFiles/_C.dir/csrc/a.cu.o")
    clock.now += 3
    assert [e.source for e in progress.view().slowest] == ["csrc/a.cu"]


def test_plain_lines_come_per_phase_per_tenth_or_per_minute_never_per_object(tmp_path):
    clock = Clock()
    progress = progress_at(tmp_path, clock)
    printed = []

    def feed(line: str, seconds: float = 1.0) -> None:
        clock.now += seconds
        progress.feed(line)
        plain = progress.plain_line()
        if plain:
            printed.append(plain)

    feed("running bdist_wheel")
    feed("copying vllm/x.py -> build/lib/vllm")
    feed("-- The CUDA compiler identification is NVIDIA 13.0.88")
    feed("-- Configuring done (26.8s)")
    for k in range(1, 418):
        feed(f"[{k}/417] Building CUDA object CMakeFiles/_C.dir/k{k}.cu.o", seconds=1)
    assert printed[0] == "setup.py, 1s elapsed: running bdist_wheel"
    assert printed[1] == "CMake configure, 3s elapsed: The CUDA compiler identification is NVIDIA 13.0.88"
    compiling = [line for line in printed if line.startswith("compiling")]
    assert compiling[0].startswith("compiling [1/417] 0%, 5s elapsed, ETA ~")
    assert 10 <= len(compiling) <= 12  # a tenth at a time (and the last), out of 417 objects
    assert compiling[-1].startswith("compiling [417/417] 100%")


def test_plain_lines_a_minute_apart_on_a_slow_build(tmp_path):
    clock = Clock()
    progress = progress_at(tmp_path, clock)
    lines = []
    for k in range(1, 31):
        clock.now += 30  # 30 s an object: a tenth of 1000 objects takes 50 minutes
        progress.feed(f"[{k}/1000] Building CUDA object x{k}.o")
        lines.append(progress.plain_line())
    shown = [line for line in lines if line]
    assert len(shown) == 15  # the first, then one each minute (every second object)


def test_paths_are_cut_between_components():
    path = "csrc/libtorch_stable/quantization/cutlass_w4a8/w4a8_mm_entry.cu"
    assert shorten_path(path, 100) == path
    assert shorten_path(path, 40) == "…/cutlass_w4a8/w4a8_mm_entry.cu"
    assert shorten_path(path, 20) == "…/w4a8_mm_entry.cu"
    assert shorten_path(path, 10) == "…_entry.cu"
    for width in range(5, 70):
        assert len(shorten_path(path, width)) <= width


def test_durations():
    assert [duration(s) for s in (0, 59.4, 60, 485, 3600, 5000)] == ["0s", "59s", "1m00s", "8m05s", "1h00m", "1h23m"]


def fake_proc_with(tmp_path, build_dir, output: str, age: float):
    """A /proc holding one nvcc in ``build_dir`` compiling ``output`` for ``age`` seconds (uptime 10,000 s)."""
    import os

    proc = tmp_path / "proc"
    (proc / "77").mkdir(parents=True)
    (proc / "uptime").write_text("10000.0 1.0\n")
    (proc / "77" / "cwd").symlink_to(build_dir)
    (proc / "77" / "cmdline").write_bytes(b"nvcc\0-o\0" + output.encode() + b"\0")
    start = int((10_000 - age) * os.sysconf("SC_CLK_TCK"))
    (proc / "77" / "stat").write_text(f"77 (nvcc) S {' '.join(['1'] + ['0'] * 17)} {start} 0\n")
    return proc


def test_a_silent_build_still_prints_at_growing_intervals_and_names_what_runs(tmp_path):
    """Session 2's resume: ninja starts, one unit compiles for minutes, no [k/N] line comes. plain_line, asked every
    5 s by the display's timer, prints after 1 min of nothing, then 2, 4, 8, then every 10."""
    clock = Clock()
    build_dir = tmp_path / "vllm" / "build" / "temp.linux-x86_64-cpython-312"
    build_dir.mkdir(parents=True)
    (build_dir / "build.ninja").write_text("")
    obj = "CMakeFiles/_C_stable_libtorch.dir/csrc/libtorch_stable/quantization/w8a8/cutlass/scaled_mm_c2x.cu.o"
    progress = BuildProgress(tmp_path / "vllm", clock=clock, proc_root=fake_proc_with(tmp_path, build_dir, obj, 3))
    progress.feed(f"-- Build files have been written to: {build_dir}")
    printed = {}
    for second in range(0, 40 * 60, 5):
        clock.now = 1000.0 + second
        line = progress.plain_line()
        if line:
            printed[second] = line
    assert list(printed) == [0, 60, 180, 420, 900, 1500, 2100]  # gaps 1, 2, 4, 8, then 10 minutes
    assert printed[0] == ("compiling, 0s elapsed: ninja starts; running: scaled_mm_c2x.cu (_C_stable_libtorch) 3s")
    # the unit's age is read from /proc (here frozen at 3 s): the line says what runs and for how long nothing ended
    assert printed[420] == ("compiling, 7m00s elapsed: ninja starts, nothing finished for 7m00s; running: "
                            "scaled_mm_c2x.cu (_C_stable_libtorch) 3s")


def test_counted_steps_then_a_long_unit_the_line_says_so_and_drops_a_run_down_eta(tmp_path):
    clock = Clock()
    progress = progress_at(tmp_path, clock)
    progress.feed("Using MAX_JOBS=16 as the number of jobs.")
    printed = []
    for k in range(1, 78):
        clock.now += 5
        progress.feed(f"[{k}/79] Building CUDA object CMakeFiles/_C.dir/k{k}.cu.o")
        printed.append(progress.plain_line())
    regular = len([p for p in printed if p])
    for _ in range(12 * 10):  # 10 minutes of nothing
        clock.now += 5
        printed.append(progress.plain_line())
    quiet = [p for p in printed if p][regular:]
    # [77/79] came at 6m25s; the last line, [71/79], at 5m55s: a minute later the regular line, its ETA run down;
    # then lines because nothing happened, 1, 2 and 4 minutes apart, the ETA left out
    assert quiet == ["compiling [77/79] 97%, 6m55s elapsed, ETA 0s",
                     "compiling [77/79] 97%, 7m55s elapsed, nothing finished for 1m30s",
                     "compiling [77/79] 97%, 9m55s elapsed, nothing finished for 3m30s",
                     "compiling [77/79] 97%, 13m55s elapsed, nothing finished for 7m30s"]
    clock.now += 5
    progress.feed("[78/79] Building CUDA object CMakeFiles/_C.dir/k78.cu.o")
    # a step finished, a minute after the last line: the regular line, then quiet lines from 1 minute again
    assert progress.plain_line() == "compiling [78/79] 99%, 16m30s elapsed, ETA 13s"
    clock.now += 55
    assert progress.plain_line() is None
    clock.now += 5
    assert progress.plain_line() == "compiling [78/79] 99%, 17m30s elapsed, nothing finished for 1m00s"


def test_the_live_display_names_the_running_units(tmp_path):
    from rich.console import Console

    from vllm_forge.build import inflight
    from vllm_forge.build.build_progress import ProgressView
    from vllm_forge.cli.render import render_build

    running = [inflight.RunningUnit("CMakeFiles/_C.dir/csrc/quantization/w8a8/cutlass/scaled_mm_c2x.cu.o", 252)]
    console = Console(width=100, record=True, file=open(tmp_path / "out", "w"))
    for view in (ProgressView("compiling", "ninja starts", 300, running=running),
                 ProgressView("compiling", "", 300, 77, 79, running=running)):
        console.print(render_build("build-wheel", view, 100, lambda text: text))
    shown = console.export_text()
    assert shown.count("  running:         4m12s  _C  csrc/quantization/w8a8/cutlass/scaled_mm_c2x.cu") == 2


def test_without_a_terminal_a_timer_prints_while_the_build_prints_nothing(tmp_path, monkeypatch):
    """The display asks for a plain line between output lines too: a build whose ninja is silent still shows."""
    import io
    import time
    from types import SimpleNamespace

    from rich.console import Console

    from vllm_forge.build import build_progress
    from vllm_forge.cli.render import StepDisplay

    monkeypatch.setattr(build_progress, "PLAIN_EVERY_SECONDS", 0.2)  # a "minute" of nothing
    out = io.StringIO()
    display = StepDisplay(Console(file=out, width=200))
    display.TICK_SECONDS = 0.05
    step = SimpleNamespace(name="build-wheel", title="build-wheel",
                           plan=SimpleNamespace(request=SimpleNamespace(src=tmp_path / "vllm")))
    with display:
        display.start(step)
        display.feed("-- Build files have been written to: /nowhere/build")
        deadline = time.monotonic() + 30
        while "nothing finished for" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.05)
    lines = out.getvalue().splitlines()
    assert lines[0] == "build-wheel: compiling, 0s elapsed: ninja starts"
    assert lines[1].startswith("build-wheel: compiling, 0s elapsed: ninja starts, nothing finished for 0s")
    assert display._ticker is None  # stopped with the display
