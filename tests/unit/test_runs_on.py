"""The one rule for "does this build run on GPU X" (vllm_forge/gpu/runs_on.py), checked against NVIDIA's
documented compatibility and against what really ran on an H200 (tests/fixtures/h200x2/arch.txt), and the
former call sites that now ask it: the audit's verdicts, the doctor's torch-arch check, the arch preflight
of plan/build/bake, the CMake gate reading and compat's NCCL floor per GPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu import compat
from vllm_forge.gpu.archs import check_archs_for_cuda, parse_arch_list, parse_arch_token, runs_instead
from vllm_forge.gpu.cuda_arch import ComputeCapability, CudaArch
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.gpu.runs_on import NONE, PTX, SASS, runs_on

H200_RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "h200x2"


def build(*names: str) -> list[CudaArch]:
    """Fat-binary code names (``sm_90a``, ``compute_80``) as a build."""
    return [parse_arch_token(name) for name in names]


def gpu(text: str) -> ComputeCapability:
    return ComputeCapability.parse(text)


# (what was built, the GPU) -> what the driver loads. NVIDIA: CUDA C++ Programming Guide, "Binary
# Compatibility" / "PTX Compatibility"; "family-specific architecture features" for `f`.
@pytest.mark.parametrize("built, on, kind, code", [
    (("sm_90",), "9.0", SASS, "sm_90"),
    (("sm_80",), "8.6", SASS, "sm_80"),                      # SASS of X.y runs on X.z, z >= y
    (("sm_86",), "8.0", NONE, ""),                           # never on an older minor
    (("sm_80",), "9.0", NONE, ""),                           # never across a major
    (("sm_90a",), "9.0", SASS, "sm_90a"),
    (("sm_90a",), "10.0", NONE, ""),                         # `a`: that arch only, never forward
    (("sm_100a",), "10.3", NONE, ""),
    (("sm_100f",), "10.3", SASS, "sm_100f"),                 # `f`: the later members of its family
    (("sm_103f",), "10.0", NONE, ""),
    (("sm_120f",), "12.1", SASS, "sm_120f"),
    (("sm_120",), "12.1", SASS, "sm_120"),
    (("compute_80",), "12.0", PTX, "compute_80"),           # plain PTX: JIT to anything as new or newer
    (("compute_90",), "8.9", NONE, ""),
    (("compute_100f",), "10.3", PTX, "compute_100f"),       # family PTX stays in its family
    (("compute_100f",), "12.0", NONE, ""),
    (("compute_90a",), "10.0", NONE, ""),
    (("sm_80", "compute_80"), "9.0", PTX, "compute_80"),    # no cubin runs: the PTX is compiled
    (("sm_80", "sm_86", "compute_80"), "8.9", SASS, "sm_86"),  # the newest cubin that runs wins over PTX
])
def test_the_rule(built, on, kind, code):
    fit = runs_on(build(*built), gpu(on))
    assert (fit.kind, fit.name) == (kind, code)
    assert fit.runs is (kind != NONE)


def _h200_runs() -> list[tuple[str, list[CudaArch], bool]]:
    """(binary, its codes from the -gencode flags, whether its kernel launched on the H200) per recorded build."""
    text = (H200_RECORD / "arch.txt").read_text()
    found = []
    for name, flags, body in re.findall(r"^== build (\S+) \((.*?)\)\n(.*?)(?=^== build|\Z)", text, re.M | re.S):
        codes = []
        for targets in re.findall(r"arch=compute_\w+,code=\[?([\w,]+)\]?", flags):
            for target in targets.split(","):
                codes.append(parse_arch_token(target))
        found.append((name, codes, "exit=0" in body))
    return found


def test_the_rule_says_what_ran_on_an_h200():
    """tests/fixtures/h200x2: five binaries launched on an H200 (9.0); the rule predicts each outcome."""
    h200 = gpu(re.search(r"NVIDIA H200, (\d+\.\d+),", (H200_RECORD / "host.txt").read_text()).group(1))
    runs = _h200_runs()
    assert len(runs) == 5
    for name, codes, ran in runs:
        assert runs_on(codes, h200).runs is ran, name


def test_audit_verdicts_ask_the_rule():
    from vllm_forge.audit.audit import Target, decide

    h200 = Target("sm_90", 9, 0)
    assert decide(["sm_80", "sm_90a"], ["compute_80"], h200) == ("sass", "sm_90a")
    assert decide(["sm_100"], ["compute_100f"], Target("sm_103", 10, 3)) == ("sass", "sm_100")
    assert decide([], ["compute_100f"], Target("sm_103", 10, 3)) == ("ptx", "compute_100f")


def test_doctor_agrees_with_the_audit_on_family_ptx():
    """The doctor used to refuse family PTX the audit (and the driver) accept; both ask the rule now."""
    from vllm_forge.audit.audit import Target, decide
    from vllm_forge.nccl.doctor import arch_support

    assert arch_support("10.3", ["compute_100f"]) == ("ptx", "compute_100f")
    assert decide([], ["compute_100f"], Target("sm_103", 10, 3))[0] == "ptx"
    assert arch_support("9.0", ["sm_90a"]) == ("sass", "sm_90a")
    assert arch_support("8.9", ["sm_80", "sm_86"]) == ("sass-compatible", "sm_86")
    assert arch_support("10.0", ["sm_90a", "compute_90a"]) == ("none", "")
    assert arch_support("nonsense", ["sm_90"]) == ("none", "")


def test_preflight_names_an_arch_whose_kernels_run_there():
    """`--arch 12.1 --cuda 12.8`: 12.8 cannot compile sm_121, but sm_120 SASS runs on a 12.1 GPU."""
    cuda = CudaRelease(12, 8)
    assert runs_instead(CudaArch(12, 1), cuda) == CudaArch(12, 0)
    assert runs_instead(CudaArch(12, 1, "a"), cuda) is None  # asked for on purpose: no substitute
    with pytest.raises(ForgeError) as err:
        check_archs_for_cuda(parse_arch_list("12.1"), cuda)
    assert "--arch 12.0" in err.value.fix and "12.9" in err.value.fix
    check_archs_for_cuda(parse_arch_list("12.1"), CudaRelease(12, 9))


def test_nccl_floor_of_a_gpu_is_that_of_the_arch_whose_kernels_run_on_it():
    assert compat.nccl_min_for_capability(gpu("12.0")) == compat.NCCL_MIN_FOR_ARCH["12.0"]
    assert compat.nccl_min_for_capability(gpu("12.1")) == compat.NCCL_MIN_FOR_ARCH["12.0"]
    assert compat.nccl_min_for_capability(gpu("6.1")) is None  # no row of its major
