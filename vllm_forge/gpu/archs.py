"""Turn what users type for a GPU arch into the exact build variables.

Accepted: ``12.0``, ``sm_120``, ``120``, ``12.0+PTX``, ``9.0a``, ``sm_100f``, ``compute_120``
(PTX only), GPU names (``rtx5090``, ``"RTX 5090 D"``, ``h100``) and ``auto`` (the GPUs of this
machine), several separated by ``;``, ``,`` or spaces.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_arch import CudaArch
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.gpu.runs_on import SASS, runs_on

_ARCH_RE = re.compile(
    r"""^(?:
        (?P<prefix>sm|compute)_(?P<num>\d{2,3})(?P<v1>[af]?)          # sm_120, compute_90a
      | (?P<maj>\d{1,2})\.(?P<min>\d)(?P<v2>[af]?)                    # 12.0, 9.0a
      | (?P<bare>\d{2,3})(?P<v3>[af]?)(?:-(?P<kind>real|virtual))?    # 120, 90a, 120-real
    )(?P<ptx>\+ptx)?$""",
    re.IGNORECASE | re.VERBOSE,
)


def _split_number(num: str) -> tuple[int, int]:
    return int(num[:-1]), int(num[-1])


def parse_arch_token(token: str) -> CudaArch | None:
    """One arch token, or None when ``token`` is not an arch spelling (it may be a GPU name)."""
    m = _ARCH_RE.match(token.strip())
    if not m:
        return None
    ptx = bool(m.group("ptx"))
    if m.group("prefix"):
        major, minor = _split_number(m.group("num"))
        variant = m.group("v1").lower()
        if m.group("prefix").lower() == "compute":
            return CudaArch(major, minor, variant, ptx=True, sass=False)
    elif m.group("maj"):
        major, minor, variant = int(m.group("maj")), int(m.group("min")), m.group("v2").lower()
    else:
        major, minor = _split_number(m.group("bare"))
        variant = m.group("v3").lower()
        if (m.group("kind") or "").lower() == "virtual":
            return CudaArch(major, minor, variant, ptx=True, sass=False)
    if major < 3:
        return None
    return CudaArch(major, minor, variant, ptx=ptx)


def detect_local_archs(runner=subprocess.run) -> list[CudaArch]:
    """The compute capabilities of this machine's GPUs, from nvidia-smi (NVML as a fallback)."""
    caps: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            out = runner(
                ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20, check=False,
            )
            if out.returncode == 0:
                caps = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            caps = []
    if not caps:
        caps = _nvml_capabilities()
    archs = [parse_arch_token(cap) for cap in caps]
    found = sorted({a for a in archs if a is not None})
    if not found:
        raise ForgeError(
            "--arch auto found no NVIDIA GPU on this machine (nvidia-smi and NVML saw none)",
            "name the target instead, e.g. --arch 12.0 or --arch rtx5090",
        )
    return found


def _nvml_capabilities() -> list[str]:
    try:
        import pynvml  # nvidia-ml-py, optional
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # NVML raises its own error types when no driver is loaded
        return []
    try:
        caps = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(index))
            caps.append(f"{major}.{minor}")
        return caps
    finally:
        pynvml.nvmlShutdown()


def parse_arch_list(spec: str, *, detect=detect_local_archs) -> list[CudaArch]:
    """Every arch named by ``spec``, sorted and de-duplicated. Raises ForgeError on unknown words."""
    if spec is None or not str(spec).strip():
        raise ForgeError("no GPU arch was given", "pass --arch, e.g. --arch 12.0 or --arch rtx5090")
    archs: list[CudaArch] = []
    for chunk in re.split(r"[;,]", str(spec)):
        words = chunk.split()
        i = 0
        while i < len(words):
            # Longest run of words that names a GPU ("RTX 5090 D"), else one arch token.
            for j in range(len(words), i, -1):
                phrase = " ".join(words[i:j])
                if phrase.lower() == "auto" and j == i + 1:
                    archs.extend(detect())
                    break
                model = compat.lookup_gpu(phrase)
                if model is not None and not _ARCH_RE.match(phrase):
                    archs.append(model.arch)
                    break
            else:
                arch = parse_arch_token(words[i])
                if arch is None:
                    raise ForgeError(
                        f"'{words[i]}' is neither a CUDA arch nor a GPU name this tool knows",
                        "use a compute capability such as 12.0, sm_120, 9.0a or 12.0+PTX, or a GPU "
                        "name such as rtx5090 (`invoke archs` lists them)",
                    )
                archs.append(arch)
                j = i + 1
            i = j
    if not archs:  # only separators: ";" or " , "
        raise ForgeError("no GPU arch was given", "pass --arch, e.g. --arch 12.0 or --arch rtx5090")
    return _merge(archs)


def _merge(archs: list[CudaArch]) -> list[CudaArch]:
    """One entry per (major, minor, variant): SASS and PTX requests for the same arch combine."""
    merged: dict[tuple[int, int, str], CudaArch] = {}
    for arch in archs:
        key = (arch.major, arch.minor, arch.variant)
        if key in merged:
            old = merged[key]
            arch = CudaArch(arch.major, arch.minor, arch.variant,
                            ptx=old.ptx or arch.ptx, sass=old.sass or arch.sass)
        merged[key] = arch
    return sorted(merged.values())


def check_archs_for_cuda(archs: list[CudaArch], cuda: CudaRelease) -> None:
    """Refuse, naming the minimum CUDA, any arch that CUDA's compiler cannot build; where an arch it can build
    runs on that GPU too (runs_on: sm_120 on a 12.1 GPU), the fix names it."""
    if cuda.minor_str not in compat.CUDA_ARCHS:
        raise ForgeError(
            f"CUDA {cuda} is not a version this tool knows",
            f"use one of {', '.join(str(known) for known in compat.known_cudas())}",
        )
    minor = cuda.minor_str
    for arch in archs:
        if compat.compiles(cuda, arch.sm):
            continue
        need = compat.min_cuda_for(arch.sm)
        last = compat.max_cuda_for(arch.sm)
        if need is None:
            raise ForgeError(
                f"{arch.sm} is not an arch any known CUDA toolkit can compile",
                "check the arch (`invoke archs` lists GPUs and their archs)",
            )
        if last is not None and cuda.minor_release > last:
            raise ForgeError(
                f"CUDA {minor} can no longer compile {arch.sm}; the last CUDA that can is {last}",
                f"pass --cuda {last}, or drop {arch.capability} from --arch",
            )
        instead = runs_instead(arch, cuda)
        raise ForgeError(
            f"CUDA {minor} cannot compile {arch.sm} (needs CUDA {need} or newer)",
            f"pass --cuda {need} (or newer), or "
            + (f"--arch {instead.capability} (its {instead.sm} kernels run on {arch.capability} GPUs too)"
               if instead else f"pick an arch CUDA {minor} supports"),
        )


def runs_instead(arch: CudaArch, cuda: CudaRelease) -> CudaArch | None:
    """The newest arch of a known GPU that CUDA ``cuda`` compiles and whose SASS runs on the GPU ``arch`` names
    (``12.1`` on CUDA 12.8: ``12.0``); None when there is none, and for ``a``/``f`` archs, asked for on purpose."""
    if arch.variant:
        return None
    gpus = {model.arch for model in compat.GPU_MODELS.values()}
    fit = runs_on([code for code in gpus if compat.compiles(cuda, code.sm)], arch.gpu)
    return fit.code if fit.kind == SASS else None


def resolve_arch(spec: str, cuda: CudaRelease | None = None, *, detect=detect_local_archs) -> list[CudaArch]:
    """Parse ``spec`` and, when ``cuda`` is given, check every arch compiles with it."""
    archs = parse_arch_list(spec, detect=detect)
    if cuda is not None:
        check_archs_for_cuda(archs, cuda)
    return archs


def torch_cuda_arch_list(archs: list[CudaArch]) -> str:
    """TORCH_CUDA_ARCH_LIST as vLLM's setup.py/CMake read it: ``"9.0a;12.0+PTX"``."""
    return ";".join(arch.torch_token for arch in archs)


def fa_cmake_gpu_arches(archs: list[CudaArch]) -> str:
    """VLLM_FA_CMAKE_GPU_ARCHES (CMake CUDA_ARCHITECTURES syntax): ``"90a-real;120-real"``."""
    return ";".join(token for arch in archs for token in arch.cmake_tokens)


def main(argv=None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Resolve a GPU arch spec into build variables.")
    parser.add_argument("spec", help="e.g. '12.0', 'rtx5090', '9.0a;12.0+PTX', 'auto'")
    parser.add_argument("--cuda", help="check the archs against this CUDA toolkit version")
    args = parser.parse_args(argv)
    archs = resolve_arch(args.spec, CudaRelease.parse(args.cuda) if args.cuda else None)
    print(json.dumps({
        "sm": [a.sm for a in archs],
        "TORCH_CUDA_ARCH_LIST": torch_cuda_arch_list(archs),
        "VLLM_FA_CMAKE_GPU_ARCHES": fa_cmake_gpu_arches(archs),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
