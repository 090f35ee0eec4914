"""Replays tests/fixtures/gpu_real_build_0_26_0_forge (README there): vLLM 0.26.0 through this repository's own
`fetch-deps --from` and `build-wheel --targets _C --install-build-deps` on an offline H200 host, interrupted and
resumed. What the run printed must be what the code says it does."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from vllm_forge.build import ninja_log
from vllm_forge.build.build_progress import duration

pytestmark = pytest.mark.gpu

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gpu_real_build_0_26_0_forge"


def text(name: str) -> str:
    return (FIXTURE / name).read_text()


def test_the_tarballs_were_imported_with_their_provenance():
    statuses = dict(re.findall(r"^  (\S+) @ \S+: (unverified|substitute|pinned)", text("setup.txt"), re.M))
    assert statuses == {"cutlass": "unverified", "triton_kernels": "unverified", "deepgemm": "unverified",
                        "fmha_sm100": "unverified", "flashmla": "substitute", "qutlass": "unverified",
                        "tml_fa4": "unverified", "vllm-flash-attn": "unverified"}
    assert "csrc/composable_kernel skipped (ROCm only" in text("setup.txt")
    [refusal] = [line for line in text("setup.txt").splitlines() if line.startswith("error:")]
    assert "flashmla in the cache is not the pin" in refusal
    assert "_flashmla_C, _flashmla_extension_C would be built from it" in refusal and "Fix:" in refusal


def test_the_build_requirements_were_installed_from_the_wheelhouse_and_torch_held():
    first = text("build1.txt")
    assert "# setuptools-scm>=8.0: missing" in first and "# setuptools-rust>=1.9.0: missing" in first
    assert "# setuptools 81.0.0 (needs <81.0.0,>=77.0.3): too new" in first
    assert "torch==2.11.0, torchaudio==2.11.0, torchvision==0.26.0" in first  # the constraints pip got
    assert "installed setuptools-scm>=8.0, setuptools-rust>=1.9.0, setuptools<81.0.0,>=77.0.3" in first
    # ... and build-wheel, planned again after it, found everything met
    assert "# build requirements: 11 of 11 met in /opt/torch/.venv/bin/python3" in first
    assert "# built against torch 2.11.0+cu130 (the tree pinned 2.11.0, the same release)" in first
    assert "# host compiler gcc 13.3.0 at /opt/gcc/bin/g++ (nvcc 13.0 accepts up to 15)" in first
    assert "# CUDA 13.0: nvcc 13.0.88" in first
    assert "setup_targets.py --targets _C_stable_libtorch" in first


def test_the_first_run_was_interrupted_and_said_where_its_time_went():
    entries = ninja_log.parse_ninja_log(text("ninja_log_run1.txt"))
    [timing] = ninja_log.by_target(entries).values()
    assert (timing.target, timing.objects) == ("_C_stable_libtorch", 44)
    first = text("build1.txt")
    assert f"this build compiled 44 objects, {timing.cpu_seconds:,.0f} CPU-seconds" in first
    assert "interrupted: child processes were stopped" in first
    assert re.search(r"^build-wheel: compiling \[\d+/79\]", first, re.M)  # progress, plain lines in a pipe


def test_the_second_run_resumed_instead_of_starting_over():
    second = text("build2.txt")
    assert "# resuming: build/temp.linux-x86_64-cpython-312/ holds 44 objects an earlier build compiled" in second
    assert "build-wheel: compiling [3/35]" in second  # ninja's own count: only what was left
    assert "44 were kept from an earlier build" in second
    first = ninja_log.parse_ninja_log(text("ninja_log_run1.txt"))
    both = ninja_log.parse_ninja_log(text("ninja_log_run2.txt"))
    # every object of the first run is still there, not compiled again: the second run only appended
    assert [(e.output, e.start_ms, e.end_ms) for e in both[:len(first)]] == [
        (e.output, e.start_ms, e.end_ms) for e in first]
    assert len(ninja_log.latest(both)) == 59 and len(ninja_log.session_wall_seconds(both)) == 2
    [timing] = ninja_log.by_target(both).values()
    assert f"{timing.cpu_seconds:,.1f} s  _C_stable_libtorch  (59 objects" in second


def test_the_full_log_is_the_build_the_output_describes():
    log = gzip.decompress((FIXTURE / "build-wheel-run1.log.gz").read_bytes()).decode(errors="replace")
    assert "Overriding VLLM version with 0.26.0+cu130.sm90 from VLLM_VERSION_OVERRIDE" in log
    assert "VLLM_CUTLASS_SRC_DIR is set" in log


# --- session 2 (README, "Session 2"): 77 of 78 objects of _C in 6m33s; a resume that sat silent for 477 s -------

PROGRESS_LINE = re.compile(r"^build-wheel: compiling \[(\d+)/(\d+)\] (\d+)%, (\S+) elapsed, ETA ~?\S+"
                           r"(?:; slowest so far: (?:\d+s \S+ \(_C_stable_libtorch\)(?:, |$))+)?$")


def session2_build_dir(root: Path) -> Path:
    """The tree as the two calls left it: the session's .ninja_log, and a build.ninja with the compile units
    per target the recorded build.ninja declares (../gpu_real_build_0_26_0/objects_per_target.txt; reconstructed:
    only the counts are recorded, not the edges)."""
    build_dir = root / "build" / "temp.linux-x86_64-cpython-312"
    build_dir.mkdir(parents=True)
    (build_dir / ".ninja_log").write_text(text("ninja_log_session2.txt"))
    counts = (FIXTURE.parent / "gpu_real_build_0_26_0" / "objects_per_target.txt").read_text()
    edges = []
    for line in counts.splitlines():
        count, target = line.split()
        edges += [f"build {target}/u{i}.cu.o: CUDA_COMPILER__x\n" for i in range(int(count))]
    (build_dir / "build.ninja").write_text("".join(edges))
    from vllm_forge.build.cmake_build_dir import record_settings

    record_settings(root, {"python": "3.12"})  # build-wheel recorded the first call's settings: the same now
    return build_dir


def test_session2_progress_lines_are_what_render_plain_writes():
    lines = [line for line in text("session2-build.txt").splitlines() if line.startswith("build-wheel: compiling [")]
    assert len(lines) == 11
    for line in lines:
        match = PROGRESS_LINE.match(line)
        assert match, line
        done, total, percent = int(match.group(1)), int(match.group(2)), int(match.group(3))
        assert total == 79 and percent == round(100 * done / total)
    assert "build-wheel: compiling [75/79] 95%, 6m15s elapsed" in lines[-1]


def test_session2_report_figures_come_from_its_ninja_log():
    from vllm_forge.build.build_times import recorded

    entries = ninja_log.parse_ninja_log(text("ninja_log_session2.txt"))
    times = recorded(entries)
    objects = times.objects
    assert len(objects) == 77 and {e.target for e in objects} == {"_C_stable_libtorch"}
    head = (f"this build compiled {len(objects)} objects, {times.cpu_seconds(objects):,.0f} CPU-seconds in "
            f"{duration(times.wall_seconds)} of ninja")
    assert head == "this build compiled 77 objects, 4,252 CPU-seconds in 6m33s of ninja"
    assert head in text("session2-build.txt")
    assert f"{times.cpu_seconds(objects):,.1f} s  _C_stable_libtorch  (77 objects" in text("session2-resume.txt")


def test_session2_resume_kept_the_77_and_its_plan_said_so(tmp_path):
    from vllm_forge.build.cmake_build_dir import resume_note

    session2_build_dir(tmp_path)
    note = resume_note(tmp_path, {"python": "3.12"})
    assert note.startswith("resuming: build/temp.linux-x86_64-cpython-312/ holds 77 objects an earlier build")
    assert f"# {note}" in text("session2-resume.txt")
    assert "this build compiled no object; 77 were kept from an earlier build" in text("session2-resume.txt")


def test_session2_resume_estimate_names_the_untimed_object_instead_of_a_mean(tmp_path):
    from vllm_forge.build import build_estimate as be
    from vllm_forge.build import cmake_build_dir as cbd
    from vllm_forge.gpu.archs import parse_arch_list

    session2_build_dir(tmp_path)
    earlier = cbd.earlier_build(tmp_path, {"python": "3.12"})
    tree = SimpleNamespace(root=tmp_path, kind="vllm", version="0.26.0")
    line = be.estimate_note(tree, {"python": "3.12"}, archs=parse_arch_list("9.0"), cores=16, jobs=16, nvcc_threads=1,
                            targets=["_C_stable_libtorch"], earlier=earlier)
    # what the GPU host printed: a mean (55 s) for the one unit that then ran > 477 s, and 134 objects of every target
    assert "77 of 134 objects timed on this machine; 55 CPU-seconds for 1 objects left" in text("session2-resume.txt")
    assert line == ("estimate: none for the 1 object left: the record has not timed it; ~55s left if it takes the "
                    "mean of the timed objects (up to 55 s): a guess (from this tree's own "
                    "build/temp.linux-x86_64-cpython-312/.ninja_log; 77 of 78 objects of the targets built timed on "
                    "this machine; not timed: _C_stable_libtorch (1 of 78); this record times only what an earlier "
                    "build finished)")


def test_session2_resume_would_no_longer_be_silent(tmp_path):
    """The resume's lines fed on a clock: ninja starts at 23 s, then no line for 477 s. The plain lines now come
    1, 2 and 4 minutes into the silence (the display's timer asks between output lines)."""
    from vllm_forge.build.build_progress import BuildProgress

    clock = SimpleNamespace(now=0.0)
    progress = BuildProgress(tmp_path / "vllm", clock=lambda: clock.now, proc_root=tmp_path / "no-proc")
    printed = []
    for line, at in (("Overriding VLLM version with 0.26.0+cu130.sm90 from VLLM_VERSION_OVERRIDE", 4),
                     ("-- Build type: Release", 5),
                     ("-- Build files have been written to: /tmp/vb/vllm-0.26.0/build/temp.linux-x86_64-cpython-312",
                      23)):
        clock.now = at
        progress.feed(line)
        printed.append(progress.plain_line())
    assert [f"build-wheel: {p}" for p in printed] == [line for line in text("session2-resume.txt").splitlines()
                                                      if line.startswith("build-wheel: ")]
    quiet = {}
    for second in range(23, 500, 5):
        clock.now = second
        line = progress.plain_line()
        if line:
            quiet[second] = line
    assert quiet == {83: "compiling, 1m23s elapsed: ninja starts, nothing finished for 1m00s",
                     203: "compiling, 3m23s elapsed: ninja starts, nothing finished for 3m00s",
                     443: "compiling, 7m23s elapsed: ninja starts, nothing finished for 7m00s"}
