"""The runtime stage's JIT toolchain: which one a bake installs (the build's CUDA, raised for FlashInfer on
sm_12x), and whether a baked image can JIT-compile kernels (gpu/doctor_inside.py's facts, collected inside
the image, and the one line they read as).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vllm_forge.core.errors import ForgeError
from vllm_forge.core.package import module_path
from vllm_forge.core.validate import check_image_ref
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_arch import CudaArch
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.image.request import BakeRequest

JIT_FAIL_LINE = r"forge-jit-check: FAIL: (.+)$"  # what vllm_forge/gpu/doctor_inside.py --jit-check prints
JIT_FIX = (
    "bake with a JIT toolchain for these archs (the default; --runtime-image with nvcc also works), "
    "or pass --no-jit if your models need no run-time kernel compile"
)


@dataclass(frozen=True)
class JitToolchain:
    cuda: CudaRelease | None  # the toolchain's CUDA release (None when none)
    spec: str  # the JIT_TOOLCHAIN build arg: pip:<reqs> | apt:<packages> | none
    why: str

    @property
    def label(self) -> str:
        return "none (--no-jit)" if self.spec == "none" else f"nvcc {self.cuda} ({self.spec})"


def checkout_needs_flashinfer(src: Path) -> bool:
    """Whether the checkout's wheel asks for FlashInfer: its requirements files, or setup.py's extras
    (vLLM 0.11 has `flashinfer-python` as the `flashinfer` extra, which vLLM's own image installs)."""
    root = Path(src).expanduser()
    for path in list((root / "requirements").rglob("*.txt")) + [root / "requirements-cuda.txt", root / "setup.py"]:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if re.search(r"^\s*flashinfer" if path.suffix == ".txt" else r"[\"']flashinfer-python", text,
                     re.IGNORECASE | re.MULTILINE):
            return True
    return False


def plan_jit_toolchain(request: BakeRequest, archs: list[CudaArch]) -> JitToolchain:
    """The JIT toolchain the runtime stage gets: the build's CUDA, raised to 12.9 when an sm_12x arch is
    targeted and the checkout ships FlashInfer; ``none`` with --no-jit."""
    if not request.jit:
        return JitToolchain(None, "none", "--no-jit: no run-time kernel compile")
    cuda = request.cuda.minor_release
    why = f"the build's CUDA {cuda}"
    if any(a.major == 12 for a in archs) and cuda < compat.FLASHINFER_SM12X_MIN_CUDA:
        if checkout_needs_flashinfer(request.src):
            cuda = compat.FLASHINFER_SM12X_MIN_CUDA
            why = f"FlashInfer JIT on sm_12x needs CUDA >= {cuda}"
    spec = compat.JIT_TOOLCHAINS.get(cuda.minor_str)
    if not spec:
        raise ForgeError(
            f"no JIT toolchain is known for CUDA {cuda}",
            f"use --cuda {' or '.join(sorted(compat.JIT_TOOLCHAINS))}, or pass --no-jit",
        )
    return JitToolchain(cuda, spec, why)


def image_jit_facts(docker: str, image: str) -> dict:
    """vllm_forge/gpu/doctor_inside.py's JIT facts, collected inside ``image`` (no GPU, no network)."""
    check_image_ref(image, "the image")
    script = module_path("vllm_forge.gpu.doctor_inside").read_text()  # run as a file of its own
    try:
        proc = subprocess.run([docker, "run", "--rm", "-i", "--network", "none", "--entrypoint", "python3", image, "-",
                               "--jit"], input=script, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as err:
        return {"error": str(err)}
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": said[-1] if said else f"exit {proc.returncode}"}
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {"error": f"no JSON from the in-image probe: {proc.stdout[-200:]!r}"}


def jit_summary(facts: dict, targets: Iterable[str] = ()) -> tuple[bool, str]:
    """(ready, one line): nvcc version, the SM targets it can compile (those asked for first), FlashInfer."""
    if facts.get("error"):
        return False, f"JIT readiness unknown: {facts['error']}"
    flashinfer = facts.get("flashinfer") or {}
    packages = flashinfer.get("packages") or {}
    fi = ("FlashInfer " + ", ".join(f"{k} {v}" for k, v in sorted(packages.items()))
          + f"; {flashinfer.get('cubins', 0)} precompiled kernels (cubins)") if packages else "FlashInfer not installed"
    if not facts.get("nvcc"):
        return False, f"no JIT toolchain (no nvcc); {fi}"
    listed = facts.get("archs") or []
    wanted = [sm for sm in targets if sm]
    missing = [sm for sm in wanted if sm.rstrip("af") not in listed]
    host = facts.get("host_compiler") or "no host C++ compiler"
    ready = not missing and bool(facts.get("host_compiler"))
    archs = " ".join(listed) or "?"
    return ready, (f"nvcc {facts.get('nvcc_version') or '?'} ({facts['nvcc']}), targets {archs}"
                   + (f"; cannot target {', '.join(missing)}" if missing else "") + f"; {host}; {fi}")
