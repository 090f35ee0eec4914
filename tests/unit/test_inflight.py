"""The units compiling now, read from a fake /proc tree: processes in the build dir that name an object, nvcc and
its children counted once (aged from the oldest), other dirs, other outputs and vanished processes left out."""

from __future__ import annotations

import os
from pathlib import Path

from vllm_forge.build.inflight import RunningUnit, running_units

TICKS = os.sysconf("SC_CLK_TCK")
UPTIME = 10_000.0
OBJ = "CMakeFiles/_C_stable_libtorch.dir/csrc/libtorch_stable/quantization/w8a8/cutlass/scaled_mm_c2x.cu.o"


def process(proc: Path, pid: int, cwd: Path, argv: list[str], age: float, name: str = "nvcc") -> None:
    folder = proc / str(pid)
    folder.mkdir(parents=True)
    (folder / "cwd").symlink_to(cwd)
    (folder / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    start = int((UPTIME - age) * TICKS)
    fields = ["S", "1"] + ["0"] * 17 + [str(start), "0", "0"]  # state ... starttime is the 22nd field
    (folder / "stat").write_text(f"{pid} ({name}) {' '.join(fields)}\n")


def fake_proc(tmp_path: Path) -> tuple[Path, Path]:
    proc, build = tmp_path / "proc", tmp_path / "build" / "temp.linux-x86_64-cpython-312"
    build.mkdir(parents=True)
    proc.mkdir()
    (proc / "uptime").write_text(f"{UPTIME} 123.0\n")
    (proc / "self").mkdir()  # not a process entry
    return proc, build


def test_a_unit_and_its_children_count_once_aged_from_the_oldest(tmp_path):
    proc, build = fake_proc(tmp_path)
    # ninja's shell, nvcc, and cicc with the object in its argv: one unit, as old as the shell
    process(proc, 10, build, ["/bin/sh", "-c", f"/usr/local/cuda/bin/nvcc -O3 -o {OBJ} -c /src/scaled_mm_c2x.cu"],
            252.4, "sh")
    process(proc, 11, build, ["/usr/local/cuda/bin/nvcc", "-O3", "-o", OBJ, "-c", "/src/scaled_mm_c2x.cu"], 252.0)
    process(proc, 12, build, ["cicc", "--orig_src_path_name", "/src/x.cu", "-o", "/tmp/tmpxft_1.ptx"], 200.0, "cicc")
    process(proc, 20, build, ["/usr/bin/c++", "-oCMakeFiles/_C.dir/csrc/a.cpp.o", "-c", "/src/a.cpp"], 12.0, "c++")
    process(proc, 30, tmp_path, ["nvcc", "-o", "CMakeFiles/_C.dir/elsewhere.cu.o"], 999.0)  # another dir
    process(proc, 40, build, ["ninja", "-j16"], 400.0, "ninja")  # names no object
    units = running_units(build, proc)
    assert [(u.output, round(u.seconds, 1)) for u in units] == [(OBJ, 252.4), ("CMakeFiles/_C.dir/csrc/a.cpp.o", 12.0)]
    assert (units[0].target, units[0].source.rsplit("/", 1)[-1]) == ("_C_stable_libtorch", "scaled_mm_c2x.cu")


def test_the_build_dir_is_matched_through_symlinks(tmp_path):
    proc, build = fake_proc(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(build)
    process(proc, 11, build, ["nvcc", "-o", OBJ], 5.0)
    assert running_units(link, proc) == [RunningUnit(OBJ, 5.0)]


def test_vanished_unreadable_or_torn_entries_are_skipped_never_raised(tmp_path):
    proc, build = fake_proc(tmp_path)
    process(proc, 11, build, ["nvcc", "-o", OBJ], 5.0)
    (proc / "12").mkdir()  # gone between listdir and readlink: no cwd
    process(proc, 13, build, ["nvcc", "-o", "CMakeFiles/_C.dir/b.cu.o"], 5.0)
    (proc / "13" / "stat").write_text("13 (nvcc")  # torn
    process(proc, 14, build, ["nvcc", "-o", "CMakeFiles/_C.dir/c.cu.o"], 5.0, name="we (ird) name")
    assert {u.output for u in running_units(build, proc)} == {OBJ, "CMakeFiles/_C.dir/c.cu.o"}


def test_no_proc_no_build_dir_nothing(tmp_path):
    assert running_units(tmp_path, tmp_path / "no-proc") == []  # macOS
    assert running_units(None) == []
