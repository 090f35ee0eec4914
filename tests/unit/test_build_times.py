"""build/build_times.py: nvcc --time per arch, the .ninja_log of the last build, and the build-times summary."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vllm_forge.build import build_times, ninja_log
from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.gpu.cuda_release import CudaRelease

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REAL_BUILD = FIXTURES / "gpu_real_build_0_26_0" / "ninja_log.txt"

# Lines nvcc 13.0 wrote with `NVCC_APPEND_FLAGS="--time t.csv" nvcc -c k.cu -gencode arch=compute_90,code=sm_90
# -gencode arch=compute_120,code=[sm_120,compute_120]` (tmp paths shortened), then a second process's header and
# lines (nvcc appends; the header comes again only when the file was new), CMake's compiler-id probe, and junk.
NVCC_CSV = """\
source file name , phase name , phase input files , phase output file , arch , tool, metric , unit
k.cu , gcc (preprocessing 4) , k.cu  , /tmp/x-5_k.cpp4.ii ,  , nvcc , 111.7710 , ms
k.cu , cudafe++ , /tmp/x-5_k.cpp4.ii  , /tmp/x-6_k.compute_120.cudafe1.cpp , compute_120 , nvcc , 289.2930 , ms
k.cu , gcc (preprocessing 1) , k.cu  , /tmp/x-8_k.compute_90.cpp1.ii , compute_90 , nvcc , 82.4670 , ms
k.cu , cicc ,  /tmp/x-8_k.compute_90.cpp1.ii  , /tmp/x-7_k.compute_90.ptx , compute_90 , nvcc , 219.9540 , ms
k.cu , ptxas , /tmp/x-7_k.compute_90.ptx  , /tmp/x-9_k.compute_90.cubin , sm_90 , nvcc , 17.0240 , ms
k.cu , gcc (preprocessing 1) , k.cu  , /tmp/x-10_k.compute_120.cpp1.ii , compute_120 , nvcc , 89.9780 , ms
k.cu , cicc ,  /tmp/x-10_k.compute_120.cpp1.ii  , /tmp/x-6_k.compute_120.ptx , compute_120 , nvcc , 218.2140 , ms
k.cu , ptxas , /tmp/x-6_k.compute_120.ptx  , /tmp/x-11_k.compute_120.sm_120.cubin , sm_120 , nvcc , 16.5010 , ms
k.cu , fatbinary , /tmp/x-9_k.compute_90.cubin /tmp/x-11_k.sm_120.cubin , /tmp/x-3_k.fatbin ,  , nvcc , 3.8050 , ms
k.cu , gcc (compiling) ,   , k.o , compute_120 , nvcc , 215.1340 , ms
 , nvcc (driver) ,  , k.o ,  , nvcc , 0.5541 , ms
../../csrc/a.cu , cicc , a.ii , a.ptx , compute_90a , nvcc , 2.5 , s
../../csrc/a.cu , ptxas , a.ptx , a.cubin , sm_90a , nvcc , 500 , ms
CMakeCUDACompilerId.cu , cicc , x.ii , x.ptx , compute_75 , nvcc , 150.0 , ms
/usr/share/cmake/Modules/CMakeCUDACompilerABI.cu , ptxas , x.ptx , x.cubin , sm_75 , nvcc , 40.0 , ms
k.cu , cicc , a , b , compute_90 , nvcc , twelve , ms
k.cu , cicc , a , b , compute_90 , nvcc , 12 , fortnights
torn line
"""


def test_nvcc_time_is_split_per_arch_and_cmake_probes_are_left_out():
    phases = build_times.parse_nvcc_time(NVCC_CSV)
    assert len(phases) == 13  # 11 of k.cu, 2 of a.cu; probes, junk and headers skipped
    assert not any("CMake" in p.source for p in phases)
    per_arch, shared = build_times.arch_seconds(phases)
    assert per_arch == pytest.approx({"sm_90": 0.082467 + 0.219954 + 0.017024,
                                      "sm_120": 0.089978 + 0.218214 + 0.016501, "sm_90a": 3.0})
    # host preprocessing, cudafe++ and the host compile (nvcc labels both with the last arch), fatbinary, driver
    assert shared == pytest.approx(0.111771 + 0.289293 + 0.003805 + 0.215134 + 0.0005541)
    assert {p.arch for p in phases if p.phase == "cudafe++"} == {""}


def test_time_flag_joins_the_callers_nvcc_flags(tmp_path):
    src = tmp_path / "vllm"
    path = build_times.nvcc_time_path(src)
    assert path == src.resolve() / "build" / "vllm-forge-nvcc-time.csv"
    assert build_times.nvcc_time_env(src, {}) == {"NVCC_APPEND_FLAGS": f"--time {path}"}
    assert build_times.nvcc_time_env(src, {"NVCC_APPEND_FLAGS": "-lineinfo"}) == {
        "NVCC_APPEND_FLAGS": f"-lineinfo --time {path}"}
    assert build_times.nvcc_time_env(tmp_path / "my vllm", {}) == {}  # nvcc cannot take a path with a space


def test_the_real_build_summary_matches_its_record():
    """The recorded vLLM 0.26.0 build (its README: 109 objects, 7,449 CPU-seconds, two sessions; _C_stable_libtorch
    77 objects, 5,161 s; _moe_C_stable_libtorch 26, 2,137 s; slowest units 200-225 s)."""
    summary = build_times.recorded(ninja_log.read_ninja_log(REAL_BUILD), []).record()
    assert summary["objects"] == 109 and round(summary["cpu_seconds"]) == 7449 and summary["sessions"] == 2
    targets = {t["target"]: t for t in summary["targets"]}
    assert (targets["_C_stable_libtorch"]["objects"], round(targets["_C_stable_libtorch"]["cpu_seconds"])) == (77, 5161)
    assert (targets["_moe_C_stable_libtorch"]["objects"], round(targets["_moe_C_stable_libtorch"]["cpu_seconds"])) \
        == (26, 2137)
    slowest = summary["slowest"]
    assert len(slowest) == build_times.TOP_UNITS and slowest[0]["seconds"] == 225.189
    assert slowest[0]["source"] == "csrc/libtorch_stable/quantization/cutlass_w4a8/w4a8_mm_entry.cu"
    assert [u["seconds"] for u in slowest] == sorted((u["seconds"] for u in slowest), reverse=True)
    assert summary["archs"] == [] and summary["nvcc_units"] == 0


def test_summary_orders_archs_by_number(tmp_path):
    rows = "\n".join(f"u.cu , cicc , a , b , compute_{arch} , nvcc , 1 , s" for arch in ("120", "90a", "80", "100f"))
    summary = build_times.recorded([], build_times.parse_nvcc_time(rows)).record()
    assert [a["arch"] for a in summary["archs"]] == ["sm_80", "sm_90a", "sm_100f", "sm_120"]


def _build_dir(src: Path, name: str, log: str) -> Path:
    where = src / "build" / name
    where.mkdir(parents=True)
    (where / "build.ninja").write_text("")
    (where / ".ninja_log").write_text(log)
    return where / ".ninja_log"


LOG = "# ninja log v7\n0\t1500\t0\tCMakeFiles/_C.dir/csrc/a.cu.o\tabc\n10\t400\t0\tCMakeFiles/_C.dir/csrc/m.c.o\tdef\n"


def finished(src: Path, name: str = "temp.x", python_suffix: str = "") -> build_times.CompileTimes:
    """The record of a build of ``src`` that wrote ``LOG`` into build/``name`` (``name`` None: wrote nothing)."""
    watch = build_times.TimingWatch(src, python_suffix)
    watch.start()
    if name:
        log = _build_dir(src, name, LOG)
        later = time.time() + 1  # written after the start, whatever the file system's timestamp resolution
        os.utime(log, (later, later))
    return watch.finish()


def test_the_record_reads_the_build_dir_of_the_building_python_and_this_builds_nvcc_times(tmp_path):
    src = tmp_path / "vllm"
    _build_dir(src, "temp.linux-x86_64-cpython-310", "# ninja log v7\n0\t9000\t0\tCMakeFiles/_C.dir/old.cu.o\tabc\n")
    watch = build_times.TimingWatch(src, "cpython-311")
    watch.start()
    log = _build_dir(src, "temp.linux-x86_64-cpython-311", LOG)  # made by this build
    later = time.time() + 1
    os.utime(log, (later, later))
    build_times.nvcc_time_path(src).write_text(NVCC_CSV)  # nvcc writes during the build
    summary = watch.finish().record()
    assert summary["ninja_log"].endswith("temp.linux-x86_64-cpython-311/.ninja_log")
    assert [(u["source"], u["seconds"]) for u in summary["slowest"]] == [("csrc/a.cu", 1.5), ("csrc/m.c", 0.39)]
    assert [a["arch"] for a in summary["archs"]] == ["sm_90", "sm_90a", "sm_120"] and summary["notes"] == []
    watch.start()  # the next build forgets this one's nvcc times
    assert not build_times.nvcc_time_path(src).exists()
    build_times.forget(src)  # nothing to forget: no error


def test_the_record_leaves_out_a_log_no_compile_of_this_build_wrote(tmp_path):
    src = tmp_path / "vllm"
    log = _build_dir(src, "temp.x", LOG)
    os.utime(log, (time.time() - 100, time.time() - 100))
    times = finished(src, name=None)
    summary = times.record()
    assert summary["objects"] == 0 and summary["slowest"] == []
    assert "last written before this build" in summary["notes"][0]
    assert len(times.objects) == 2 and times.compiled == []  # what the end-of-build report says was kept
    assert finished(tmp_path / "elsewhere", name=None).record()["notes"] == [
        "no .ninja_log under the checkout's build/ (no CMake/ninja build ran)"]


def test_the_record_says_why_a_build_has_no_per_arch_times(tmp_path):
    summary = finished(tmp_path / "vllm").record()
    assert summary["objects"] == 2 and summary["archs"] == [] and summary["nvcc_time"] is None
    assert "no nvcc --time lines" in summary["notes"][0]


def test_the_report_the_build_info_and_the_record_read_one_record(tmp_path):
    """One .ninja_log, one finder: the end-of-build lines, the wheel's compile_times and the build-times record
    count the same objects and the same slowest unit."""
    times = finished(tmp_path / "vllm")
    info, record, lines = times.build_info(), times.record(), times.lines()
    assert info["objects"] == record["objects"] == 2 and record["ninja_log"].endswith("temp.x/.ninja_log")
    assert info["slowest"][0]["file"] == record["slowest"][0]["source"] == "csrc/a.cu"
    assert lines[0].startswith("compile times (build/temp.x/.ninja_log): this build compiled 2 objects")


def test_plan_build_times_nvcc_except_through_sccache(tmp_path, monkeypatch):
    from vllm_forge.build import build_wheel
    from vllm_forge.build import compile_cache as cc

    src = tmp_path / "vllm"
    (src / "vllm").mkdir(parents=True)
    (src / "setup.py").write_text("print('x')\n")
    (src / "CMakeLists.txt").write_text("project(x)\n")
    monkeypatch.setattr(cc.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    fake = build_wheel.CudaToolchain(Path("/usr/local/cuda/bin/nvcc"), CudaRelease(13, 0), "13.0.88",
                                     Path("/usr/local/cuda"), False, {})
    monkeypatch.setattr(build_wheel, "find_cuda_toolchain", lambda: fake)
    monkeypatch.setattr(build_wheel, "has_git_tags", lambda _src: True)
    monkeypatch.delenv("NVCC_APPEND_FLAGS", raising=False)

    def plan(cache):
        return build_wheel.plan_build(build_wheel.BuildRequest(
            src=src, dist_dir=tmp_path / "dist", archs=parse_arch_list("9.0;12.0"), compile_cache=cache,
            cache_dir=tmp_path / "c", max_jobs=1), check_tools=False)

    for cache in ("ccache", "none"):
        timed = plan(cache)
        assert timed.env["NVCC_APPEND_FLAGS"] == f"--time {build_times.nvcc_time_path(src)}"
        assert f"NVCC_APPEND_FLAGS='--time {build_times.nvcc_time_path(src)}'" in timed.command.shell()
        assert any(n.startswith("nvcc --time writes each unit's compile phases") for n in timed.notes)
    untimed = plan("sccache")
    assert "NVCC_APPEND_FLAGS" not in untimed.env
    assert "no per-arch compile times: sccache does not cache an nvcc call while NVCC_APPEND_FLAGS is set" \
        in untimed.notes
