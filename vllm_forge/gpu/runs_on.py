"""Does this build run on GPU X: NVIDIA's rule, in one place. The audit (each kernel group of a binary, torch's
arch list), the doctor (torch's arch list against the GPUs it sees) and the preflight of plan, build-wheel and
bake (which arch a CUDA that cannot compile the GPU's own could build instead) all ask ``runs_on``.

A build is a set of codes (``CudaArch``): SASS (a cubin, loaded as is) and/or PTX (compiled by the driver).

- SASS ``sm_XY`` runs on a GPU X.Z with Z >= Y: the same major only, never across one (``sm_80`` runs on
  8.6, not on 9.0). An arch-specific ``sm_XYa`` runs on X.Y alone (``sm_90a``: 9.0; ``sm_100a`` not on 10.3).
  A family ``sm_XYf`` runs on the later members of its family, X.Z with Z >= Y (``sm_100f``: 10.0 and 10.3;
  ``sm_120f``: 12.0 and 12.1; ``sm_103f`` not on 10.0).
- PTX ``compute_XY`` is JIT-compiled for any GPU as new or newer, across majors too (``compute_80`` on 12.0);
  ``compute_XYa`` only for X.Y; ``compute_XYf`` only within its family, as its SASS.

Sources: CUDA C++ Programming Guide, "Binary Compatibility" and "PTX Compatibility"; NVIDIA's "Blackwell and
CUDA 12.9 introduce family-specific architecture features" (the ``a`` and ``f`` targets). Checked against what
really ran on an H200 and an H100 (tests/fixtures/h200x2/arch.txt, tests/fixtures/gpu/audit_gpu.txt,
tests/fixtures/gpu_tu_partial/): tests/unit/test_runs_on.py.

When several codes run, the newest is the one named: the newest SASS that runs, else the newest PTX.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vllm_forge.gpu.cuda_arch import ComputeCapability, CudaArch

SASS = "sass"  # a cubin of the build runs as is
PTX = "ptx"  # no cubin runs, but PTX the driver compiles on first load does
NONE = "none"  # nothing runs: `no kernel image is available for execution on the device`


def sass_runs_on(code: CudaArch, gpu: ComputeCapability) -> bool:
    """Whether SASS of ``code``'s arch runs on ``gpu``."""
    if code.variant == "a":
        return (gpu.major, gpu.minor) == (code.major, code.minor)
    return gpu.major == code.major and gpu.minor >= code.minor  # plain, and a family's later members


def ptx_runs_on(code: CudaArch, gpu: ComputeCapability) -> bool:
    """Whether PTX of ``code``'s arch can be JIT-compiled for ``gpu``."""
    if code.variant:  # `a` and `f` PTX stay where their SASS would run
        return sass_runs_on(code, gpu)
    return (gpu.major, gpu.minor) >= (code.major, code.minor)


@dataclass(frozen=True)
class Fit:
    """How a build runs on one GPU: ``kind`` SASS, PTX or NONE, and the code the driver loads."""

    kind: str
    code: CudaArch | None = None

    @property
    def runs(self) -> bool:
        return self.kind != NONE

    @property
    def name(self) -> str:
        """``sm_90a`` (SASS), ``compute_89`` (PTX) or "" (none)."""
        if self.code is None:
            return ""
        return self.code.sm if self.kind == SASS else self.code.compute


def _newest(code: CudaArch) -> tuple[int, int, str]:
    return code.major, code.minor, code.variant


def runs_on(build: Iterable[CudaArch], gpu: ComputeCapability) -> Fit:
    """The one answer to "does this build run on ``gpu``": the newest SASS of ``build`` that runs, else its
    newest PTX that can be JIT-compiled, else NONE. ``build``: its codes, each SASS and/or PTX
    (``CudaArch.sass``, ``CudaArch.has_ptx``)."""
    codes = list(build)
    native = [code for code in codes if code.sass and sass_runs_on(code, gpu)]
    if native:
        return Fit(SASS, max(native, key=_newest))
    jit = [code for code in codes if code.has_ptx and ptx_runs_on(code, gpu)]
    if jit:
        return Fit(PTX, max(jit, key=_newest))
    return Fit(NONE)
