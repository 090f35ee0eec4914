"""The build-time estimate against numbers computed by hand from the recorded vLLM 0.26.0 build, the shipped
profile derived again from that record, and where `plan`'s estimate line comes from in each case."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from vllm_forge.build import build_estimate as be
from vllm_forge.build import cmake_build_dir as cbd
from vllm_forge.gpu.archs import parse_arch_list

RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "gpu_real_build_0_26_0"
SHIPPED = Path(be.__file__).resolve().parent / "build_profiles" / "vllm-0.26.0.json"

# By hand, from ninja_log.txt and objects_per_target.txt (seconds). Only what the record timed counts; the rest is
# named, never filled in with a mean (the one untimed unit of _C_stable_libtorch ran > 477 s, the mean is 67 s):
C_STABLE = 5161.062  # 77 of 78 timed
MOE = 2137.374  # 26 of 26
FLASHMLA = 148.753  # 3 of 23
UNTIMED = 1 + 20 + 4 + 79 + 194  # _C_stable_libtorch, _flashmla_C, _flashmla_extension_C, _vllm_fa2_C, _vllm_fa3_C
SMALL = 0.831 + 0.534 + 0.343  # cumem_allocator, fs_io_C, spinloop
ALL = C_STABLE + MOE + FLASHMLA + SMALL  # 7,449 CPU-seconds for 109 objects
CONFIGURE = 26.8


@pytest.fixture
def profile():
    return be.shipped_profile("0.26.0")


def test_the_shipped_profile_is_the_record_derived_again():
    shipped = json.loads(SHIPPED.read_text())
    again = be.derive_profile((RECORD / "ninja_log.txt").read_text(), (RECORD / "objects_per_target.txt").read_text(),
                              shipped["source"])
    assert again == shipped
    source = shipped["source"]
    assert (source["cores"], source["max_jobs"], source["nvcc_threads"], source["archs"], source["date"]) == (
        16, 16, 1, ["sm_90"], "2026-12")
    assert shipped["targets"]["_vllm_fa3_C"] == {"objects": 194, "recorded": 0, "cpu_seconds": 0.0,
                                                 "longest_seconds": 0.0}


def test_the_recorded_settings_16_jobs_one_arch(profile):
    found = be.estimate(profile, codes=1, cores=16, jobs=16, nvcc_threads=1)
    assert found.cpu_seconds == pytest.approx(ALL, abs=0.01)
    assert (found.objects, found.untimed) == (109, UNTIMED)
    assert found.wall_seconds == pytest.approx(ALL / 16 + CONFIGURE, abs=0.01)  # 492.4 s
    assert found.note(16) == (
        "estimate: at least ~8 min on 16 jobs, plus 298 objects the record has not timed; ~29 min if they take the "
        "mean of the timed objects (up to 68 s): a guess (from a recorded vLLM "
        "0.26.0 build: 16-core H100 host, sm_90, 2026-12; 109 of 407 objects of every target timed; not timed: "
        "_vllm_fa3_C (all 194), _vllm_fa2_C (all 79), _flashmla_C (20 of 23), _flashmla_extension_C (all 4), "
        "_C_stable_libtorch (1 of 78); 7,449 CPU-seconds for the 109 timed objects; CPU-seconds x 1 for 1 arch "
        "code(s) per object (the record: 1); wall = max(CPU-seconds / 16 parallel compiles, the longest unit 225 s) "
        "+ 27 s of CMake configure; the same per-core speed as the recording host; a lower bound: an untimed unit "
        "may take longer than any timed one)")


def test_two_arch_codes_double_the_cpu_seconds_and_nvcc_threads_use_them(profile):
    codes = be.arch_codes(parse_arch_list("9.0;12.0"))
    assert codes == 2 and be.arch_codes(parse_arch_list("12.0+PTX")) == 2
    assert be.arch_codes(parse_arch_list("9.0a")) == 1
    found = be.estimate(profile, codes=codes, cores=16, jobs=8, nvcc_threads=2)
    assert found.cpu_seconds == pytest.approx(2 * ALL, abs=0.01)
    assert found.wall_seconds == pytest.approx(2 * ALL / min(16, 8 * 2) + CONFIGURE, abs=0.01)
    one_thread = be.estimate(profile, codes=codes, cores=16, jobs=8, nvcc_threads=1)
    assert one_thread.wall_seconds == pytest.approx(2 * ALL / 8 + CONFIGURE, abs=0.01)  # nvcc threads idle: 8 jobs
    assert "CPU-seconds x 2 for 2 arch code(s) per object (the record: 1)" in found.source


def test_this_2_core_machine(profile):
    found = be.estimate(profile, codes=1, cores=2, jobs=2, nvcc_threads=1)
    assert found.wall_seconds == pytest.approx(ALL / 2 + CONFIGURE, abs=0.01)
    assert found.note(2).startswith("estimate: at least ~63 min on 2 jobs, plus 298 objects the record has not timed")


def test_targets_limit_the_estimate_and_the_longest_unit_can_bound_it(profile):
    stable = be.estimate(profile, codes=1, cores=16, jobs=16, nvcc_threads=1, targets=["_C_stable_libtorch"])
    assert stable.wall_seconds == pytest.approx(C_STABLE / 16 + CONFIGURE, abs=0.01)  # 349.4 s > 225 s
    assert (stable.objects, stable.untimed) == (77, 1) and "not in the record" not in stable.source
    # the targets built are what is counted: not the 407 objects of every target
    assert stable.note(16).startswith("estimate: at least ~6 min on 16 jobs, plus 1 object the record has not timed; "
                                      "~6 min if it takes the mean of the timed objects (up to 67 s): a guess "
                                      "(from a recorded vLLM 0.26.0 build: 16-core H100 host, sm_90, 2026-12; 77 of "
                                      "78 objects of the targets built timed; not timed: _C_stable_libtorch (1 of "
                                      "78); 5,161 CPU-seconds for the 77 timed objects; ")
    moe = be.estimate(profile, codes=1, cores=16, jobs=16, nvcc_threads=1, targets=["_moe_C_stable_libtorch"])
    assert moe.note(16).startswith("estimate: ~4 min on 16 jobs (") and "lower bound" not in moe.note(16)
    flashmla = be.estimate(profile, codes=1, cores=16, jobs=16, nvcc_threads=1, targets=["_flashmla_C"])
    assert FLASHMLA / 16 < 123.168
    assert flashmla.wall_seconds == pytest.approx(123.168 + CONFIGURE, abs=0.01)  # its slowest unit, not / 16
    typo = be.estimate(profile, codes=1, cores=16, jobs=16, nvcc_threads=1, targets=["_C_stable_libtorch", "_nope"])
    assert typo.cpu_seconds == pytest.approx(stable.cpu_seconds)
    assert "_nope not in the record: not counted" in typo.source


def tree(root: Path, kind: str = "vllm", version: str | None = "0.26.0"):
    return SimpleNamespace(root=root, kind=kind, version=version)


INPUTS = cbd.compile_settings({"archs": "9.0", "fa_archs": None, "build_type": "Release", "nvcc": "13.0.88",
                               "host_compiler": "g++", "torch": "2.11.0", "python": "3.12"}, "none")


def note(root: Path, vllm_tree=None, inputs=INPUTS, arch="9.0") -> str:
    return be.estimate_note(vllm_tree or tree(root), inputs, archs=parse_arch_list(arch), cores=16, jobs=16,
                            nvcc_threads=1, earlier=cbd.earlier_build(root, inputs))


def test_a_first_build_of_0_26_0_uses_the_shipped_profile(tmp_path):
    assert note(tmp_path).startswith("estimate: at least ~8 min on 16 jobs, plus 298 objects the record has not "
                                     "timed; ~29 min if they take the mean of the timed objects (up to 68 s): a guess "
                                     "(from a recorded vLLM 0.26.0 build: ")


def test_no_record_says_so(tmp_path):
    assert note(tmp_path, tree(tmp_path, version="0.27.1")) == (
        "estimate: none (no recorded build of vLLM 0.27.1: recorded are 0.26.0; this build's .ninja_log will be "
        "one for the next build of this tree)")
    assert note(tmp_path, tree(tmp_path, kind="minivllm", version="0.1.0")) == (
        "estimate: none (minivllm is not vLLM and has no recorded build yet; this build records one)")


def own_record(tmp_path: Path) -> Path:
    """The tree after the recorded first run: 95 objects in .ninja_log, build.ninja's 407 compile units."""
    build_dir = tmp_path / "build" / "temp.linux-x86_64-cpython-312"
    build_dir.mkdir(parents=True)
    lines = (RECORD / "ninja_log.txt").read_text().splitlines(keepends=True)
    (build_dir / ".ninja_log").write_text("".join(lines[:96]))
    edges = []
    for line in (RECORD / "objects_per_target.txt").read_text().splitlines():
        count, target = line.split()
        edges += [f"build {target}/u{i}.cu.o: CUDA_COMPILER__x\n" for i in range(int(count))]
    (build_dir / "build.ninja").write_text("".join(edges))
    return build_dir


def test_a_resumed_build_estimates_what_is_left_from_the_trees_own_record(tmp_path):
    own_record(tmp_path)
    cbd.record_settings(tmp_path, INPUTS)
    line = note(tmp_path)
    # 95 of the 407 units timed: the tree's own record timed exactly what is done, so none of the 312 left; the
    # mean of what it timed is said beside, as a guess
    assert line == ("estimate: none for the 312 objects left: the record has not timed them; ~19 min left if they "
                    "take the mean of the timed objects (up to 63 s): a guess (from this tree's own "
                    "build/temp.linux-x86_64-cpython-312/.ninja_log; 95 of 407 objects of every target timed on this "
                    "machine; not timed: _vllm_fa3_C (all 194), _vllm_fa2_C (all 79), _flashmla_C (all 23), "
                    "_moe_C_stable_libtorch (9 of 26), _flashmla_extension_C (all 4), _C_stable_libtorch (3 of 78); "
                    "this record times only what an earlier build finished)")


def test_other_settings_estimate_a_full_rebuild_from_the_trees_own_record(tmp_path):
    own_record(tmp_path)
    cbd.record_settings(tmp_path, INPUTS)
    line = note(tmp_path, inputs={**INPUTS, "archs": "9.0;12.0"}, arch="9.0;12.0")
    assert " left " not in line and "11,203 CPU-seconds for the 95 timed objects" in line  # x 2 arch codes
    assert line.startswith("estimate: at least ~") and "plus 312 objects the record has not timed" in line
    assert "CPU-seconds x 2 for 2 arch code(s) per object (the record: 1)" in line
