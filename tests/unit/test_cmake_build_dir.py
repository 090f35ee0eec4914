"""Resuming a build: what the tree's CMake build dir holds and whether the settings changed (on the recorded
vLLM 0.26.0 .ninja_log), the timing report of a build, and the private copy of the miniature keeping build/."""

from __future__ import annotations

import shutil
from pathlib import Path

from vllm_forge.build import build_times
from vllm_forge.build import cmake_build_dir as cbd
from vllm_forge.core.config import DEFAULTS, BuildConfig, ResolvedConfig
from vllm_forge.pipeline import _private_copy_if_ours

RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "gpu_real_build_0_26_0"
KERNEL_INPUTS = {"archs": "9.0", "fa_archs": None, "build_type": "Release", "nvcc": "13.0.88",
                 "host_compiler": "g++ 12", "torch": "2.11.0+cu130", "python": "3.12", "tree_sha256": "abc", "env": {}}
INPUTS = cbd.compile_settings(KERNEL_INPUTS, "none")


def recorded_tree(tmp_path: Path) -> Path:
    """A vLLM tree whose build dir holds the recorded .ninja_log (both sessions of the real build)."""
    build_dir = tmp_path / "vllm" / "build" / "temp.linux-x86_64-cpython-312"
    build_dir.mkdir(parents=True)
    (build_dir / "build.ninja").write_text("")
    shutil.copy(RECORD / "ninja_log.txt", build_dir / ".ninja_log")
    return tmp_path / "vllm"


def test_a_first_build_compiles_everything(tmp_path):
    assert cbd.earlier_build(tmp_path) is None
    assert cbd.resume_note(tmp_path, INPUTS) == (f"resume: no CMake build dir under {tmp_path / 'build'} yet: "
                                                 "ninja compiles everything")


def test_the_recorded_build_is_resumed_with_the_same_settings(tmp_path):
    tree = recorded_tree(tmp_path)
    cbd.record_settings(tree, INPUTS)
    assert cbd.read_settings(tree) == INPUTS
    assert "tree_sha256" not in INPUTS  # an edited source changes only its objects: not a compile setting
    assert cbd.resume_note(tree, cbd.compile_settings({**KERNEL_INPUTS, "tree_sha256": "edited"}, "none")) == (
        "resuming: build/temp.linux-x86_64-cpython-312/ holds 109 objects an earlier build compiled (its "
        ".ninja_log); ninja rebuilds only what changed")


def test_other_archs_or_nvcc_are_a_full_rebuild_and_say_which(tmp_path):
    tree = recorded_tree(tmp_path)
    cbd.record_settings(tree, INPUTS)
    note = cbd.resume_note(tree, {**INPUTS, "archs": "9.0a;12.0", "nvcc": "12.8.93"})
    assert note.startswith("no resume: build/temp.linux-x86_64-cpython-312/ holds 109 objects an earlier build "
                           "compiled with TORCH_CUDA_ARCH_LIST 9.0 (now 9.0a;12.0), nvcc 13.0.88 (now 12.8.93)")
    assert note.endswith("(a full rebuild)")
    assert "CMAKE_BUILD_TYPE Release (now Debug)" in cbd.resume_note(tree, {**INPUTS, "build_type": "Debug"})
    # ccache's launcher goes in front of every compile command: ninja runs them all again (ccache may hit)
    assert "compile cache none (now ccache)" in cbd.resume_note(tree, cbd.compile_settings(KERNEL_INPUTS, "ccache"))


def test_settings_not_recorded_are_said_to_be_unknown(tmp_path):
    tree = recorded_tree(tmp_path)
    note = cbd.resume_note(tree, INPUTS)
    assert note.startswith("resuming: build/temp.linux-x86_64-cpython-312/ holds 109 objects")
    assert "were not recorded" in note
    older = {k: v for k, v in INPUTS.items() if k != "compile_cache"}  # a record without a setting: not compared
    cbd.record_settings(tree, older)
    assert cbd.resume_note(tree, INPUTS).startswith("resuming: ")


def test_the_timing_report_of_the_resumed_recorded_build(tmp_path):
    tree = recorded_tree(tmp_path)
    log = tree / "build" / "temp.linux-x86_64-cpython-312" / ".ninja_log"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:96]))  # the first run's 95 objects
    watch = build_times.TimingWatch(tree, cbd.python_suffix(INPUTS))
    log.write_text("".join(lines))  # the second run appends its 14
    timing = watch.finish()
    assert len(timing.compiled_objects) == 14 and len(timing.objects) == 109
    report = timing.lines()
    assert report[0].startswith("compile times (build/temp.linux-x86_64-cpython-312/.ninja_log): this build compiled "
                                "14 objects, 1,847 CPU-seconds in 3m45s of ninja; 95 were kept from an earlier build")
    assert report[1] == "slowest compile units (of 109):"
    assert report[2] == ("    225.2 s  _C_stable_libtorch  "
                         "csrc/libtorch_stable/quantization/cutlass_w4a8/w4a8_mm_entry.cu")  # the second run's
    assert report[3].endswith("scaled_mm_sm90_fp8.cu  (earlier build)")
    assert "CPU-seconds per CMake target:" in report
    assert "    5,161.1 s  _C_stable_libtorch  (77 objects, longest 225.2 s)" in report
    summary = timing.build_info()
    assert {k: summary[k] for k in ("objects", "cpu_seconds", "compiled_by_this_build", "wall_seconds")} == {
        "objects": 109, "cpu_seconds": 7448.9, "compiled_by_this_build": 14, "wall_seconds": 225.2}
    assert len(summary["slowest"]) == 5 and summary["slowest"][0]["seconds"] == 225.2


def test_no_build_dir_no_timing(tmp_path):
    times = build_times.TimingWatch(tmp_path).finish()
    assert times.build_dir is None and times.lines() == []


def test_the_private_copy_of_the_miniature_keeps_its_build_dir(tmp_path):
    repo = tmp_path / "repo"
    src = repo / "tests" / "fixtures" / "minivllm"
    (src / "csrc").mkdir(parents=True)
    (src / "csrc" / "k.cu").write_text("// kernel\n")
    rc = ResolvedConfig(BuildConfig(**{**DEFAULTS, "vllm_src": str(src)}), {})
    copy = Path(_private_copy_if_ours(rc, repo, writes=True).config.vllm_src)
    assert copy == repo / "build" / "private-src" / "tests--fixtures--minivllm"
    made = copy / "build" / "temp.linux-x86_64-cpython-312"
    made.mkdir(parents=True)
    (made / ".ninja_log").write_text("# ninja log v7\n")
    mtime = (copy / "csrc" / "k.cu").stat().st_mtime_ns
    (copy / "stray.txt").write_text("not in the source")
    _private_copy_if_ours(rc, repo, writes=True)  # the second build-wheel
    assert (made / ".ninja_log").read_text() == "# ninja log v7\n"  # the CMake build dir survives
    assert (copy / "csrc" / "k.cu").stat().st_mtime_ns == mtime  # an unchanged source is not rewritten
    assert not (copy / "stray.txt").exists()  # the rest is still an exact copy
