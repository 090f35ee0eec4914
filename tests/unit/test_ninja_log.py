"""ninja's own record of a build, read from the recorded vLLM 0.26.0 build and from hand-made build dirs:
.ninja_log entries and sessions, build.ninja's compile units, the build dir setup.py uses, and the tail a
running build appends."""

from __future__ import annotations

import os
from pathlib import Path

from vllm_forge.build import ninja_log

RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "gpu_real_build_0_26_0"


def recorded():
    return ninja_log.read_ninja_log(RECORD / "ninja_log.txt")


def test_the_recorded_log_two_sessions_109_objects_7449_cpu_seconds():
    entries = recorded()
    assert len(entries) == 109 and [e.session for e in entries].count(1) == 14
    assert round(sum(e.seconds for e in ninja_log.latest(entries))) == 7449
    times = ninja_log.by_target(entries)
    assert (times["_C_stable_libtorch"].objects, round(times["_C_stable_libtorch"].cpu_seconds)) == (77, 5161)
    assert (times["_moe_C_stable_libtorch"].objects, round(times["_moe_C_stable_libtorch"].cpu_seconds)) == (26, 2137)
    top = ninja_log.slowest(entries, 1)[0]
    assert (top.seconds, top.target, top.source) == (
        225.189, "_C_stable_libtorch", "csrc/libtorch_stable/quantization/cutlass_w4a8/w4a8_mm_entry.cu")
    assert entries[0].mtime == 1796578089823522865  # kept for LogTail's recompaction fallback


def build_dir(tree: Path, name: str = "temp.linux-x86_64-cpython-312", log: str = "") -> Path:
    path = tree / "build" / name
    path.mkdir(parents=True)
    (path / "build.ninja").write_text(
        "build CMakeFiles/_C.dir/csrc/a.cu.o: CUDA_COMPILER___C_unscanned_Release /t/csrc/a.cu || x\n"
        "build CMakeFiles/_C.dir/csrc/b$ c.cu.o: CUDA_COMPILER___C_unscanned_Release /t/csrc/b$ c.cu\n"
        "build CMakeFiles/_vllm_fa3_C.dir/tmp/deps/fa@1/hopper/x.cu.o: CUDA_COMPILER___vllm_fa3_C_Release y\n"
        "build /t/build/lib/vllm/_C.abi3.so: CUDA_MODULE_LIBRARY_LINKER___C_Release CMakeFiles/_C.dir/csrc/a.cu.o\n"
        "build CMakeFiles/edit_cache.util: CUSTOM_COMMAND\n")
    if log:
        (path / ".ninja_log").write_text(log)
    return path


def test_objects_per_target_counts_compile_edges_only(tmp_path):
    path = build_dir(tmp_path)
    assert ninja_log.objects_per_target(path / "build.ninja") == {"_C": 2, "_vllm_fa3_C": 1}
    assert ninja_log.objects_per_target(tmp_path / "missing.ninja") == {}


def test_find_build_dir_skips_sub_builds_and_prefers_the_python_that_builds(tmp_path):
    assert ninja_log.find_build_dir(tmp_path) is None
    older = build_dir(tmp_path, "temp.linux-x86_64-cpython-311")
    os.utime(older / "build.ninja", (1, 1))
    newer = build_dir(tmp_path)
    sub = newer / "_deps" / "cutlass-subbuild"
    sub.mkdir(parents=True)
    (sub / "build.ninja").write_text("")
    assert ninja_log.find_build_dir(tmp_path) == newer  # shallowest, then newest
    assert ninja_log.find_build_dir(tmp_path, "cpython-311") == older


LINE = "{0}\t{1}\t{2}\tCMakeFiles/_C.dir/csrc/{3}.cu.o\tabc\n"


def test_log_tail_reads_only_what_this_build_appends(tmp_path):
    path = build_dir(tmp_path, log="# ninja log v7\n" + LINE.format(0, 9000, 5, "old"))
    tail = ninja_log.LogTail(path / ".ninja_log")
    assert tail.read() == []
    with open(path / ".ninja_log", "a") as handle:
        handle.write(LINE.format(0, 1500, 6, "a") + LINE.format(0, 2500, 6, "b")[:20])  # b still being written
    assert [e.source for e in tail.read()] == ["csrc/a.cu"]
    with open(path / ".ninja_log", "a") as handle:
        handle.write(LINE.format(0, 2500, 6, "b")[20:])
    assert [e.source for e in tail.read()] == ["csrc/a.cu", "csrc/b.cu"]


def test_log_tail_of_a_log_made_during_the_build_and_of_a_recompacted_one(tmp_path):
    tail = ninja_log.LogTail(None)
    assert tail.read() == []
    path = build_dir(tmp_path, log="# ninja log v7\n" + LINE.format(0, 100, 5, "a"))
    tail.attach(path / ".ninja_log")
    assert [e.source for e in tail.read()] == ["csrc/a.cu"]  # ninja created it in this build: all of it is ours

    old = "# ninja log v7\n" + "".join(LINE.format(0, 100 + i, 5, f"old{i}") for i in range(20))
    (path / ".ninja_log").write_text(old)
    tail = ninja_log.LogTail(path / ".ninja_log")
    now_ns = tail._since_ns + 10**9
    # ninja rewrote the log shorter (recompaction) and appended one object of this build
    rewritten = "# ninja log v7\n" + LINE.format(0, 100, 5, "old0") + LINE.format(0, 50, now_ns, "new")
    (path / ".ninja_log").write_text(rewritten)
    assert [e.source for e in tail.read()] == ["csrc/new.cu"]


def test_progress_lines():
    assert ninja_log.parse_progress("[96/417] Building CUDA object x.o") == (96, 417, "Building CUDA object x.o")
    assert ninja_log.parse_progress("[5/3] nonsense") is None
    assert ninja_log.parse_progress("-- Configuring done") is None
