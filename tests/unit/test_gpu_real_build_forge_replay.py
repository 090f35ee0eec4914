"""Replays tests/fixtures/gpu_real_build_0_26_0_forge (README there): vLLM 0.26.0 through this repository's own
`fetch-deps --from` and `build-wheel --targets _C --install-build-deps` on an offline H200 host, interrupted and
resumed. What the run printed must be what the code says it does."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from vllm_forge.build import ninja_log

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
