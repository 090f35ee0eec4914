"""Find the CUDA compiler and tools: a system toolkit, or the one NVIDIA ships on PyPI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.gpu.cuda_release import CudaRelease


@dataclass
class CudaToolchain:
    nvcc: Path
    version: CudaRelease  # 13.0: the release this nvcc belongs to (the CUDA a local build builds with)
    full_version: str  # "13.0.88": nvcc's own build number, for display
    root: Path
    from_pypi: bool
    env: dict[str, str] = field(default_factory=dict)  # what a build needs to use this nvcc


# Where a system toolkit lives when nothing names it (NGC images and NVIDIA's installers).
SYSTEM_CUDA_ROOTS = (Path("/usr/local/cuda"),)


def _pypi_cuda_roots() -> list[Path]:
    roots = []
    for base in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        nvidia = Path(base) / "nvidia"
        for name in ("cu13", "cu12", "cuda_nvcc"):
            if (nvidia / name / "bin" / "nvcc").exists():
                roots.append(nvidia / name)
    return roots


def _candidates() -> list[tuple[Path, bool]]:
    found: list[tuple[Path, bool]] = []
    if os.environ.get("CUDACXX"):
        found.append((Path(os.environ["CUDACXX"]), False))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            found.append((Path(os.environ[var]) / "bin" / "nvcc", False))
    on_path = shutil.which("nvcc")
    if on_path:
        found.append((Path(on_path), False))
    found += [(root / "bin" / "nvcc", False) for root in SYSTEM_CUDA_ROOTS]
    found += [(root / "bin" / "nvcc", True) for root in _pypi_cuda_roots()]
    return found


_RELEASE = re.compile(r"release (\d+\.\d+), V(\d+\.\d+\.\d+)")


def nvcc_version(nvcc: Path) -> tuple[CudaRelease, str]:
    try:
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise ForgeError(f"{nvcc} does not run ({err})", "reinstall the CUDA toolkit") from None
    match = _RELEASE.search(out)
    if not match:
        raise ForgeError(f"{nvcc} printed no CUDA release", "check that it is NVIDIA's nvcc")
    return CudaRelease.parse(match.group(1)), match.group(2)


def toolkit_root(nvcc: Path) -> Path:
    """The toolkit directory nvcc itself uses (its TOP), seeing through wrapper scripts."""
    try:
        out = subprocess.run(
            [str(nvcc), "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
            capture_output=True, text=True, timeout=30,
        ).stderr
    except (OSError, subprocess.SubprocessError):
        out = ""
    match = re.search(r"^#\$ TOP=(.+)$", out, re.MULTILINE)
    return Path(match.group(1).strip()).resolve() if match else nvcc.resolve().parent.parent


def find_cuda_toolchain() -> CudaToolchain:
    """The first working nvcc, with the environment a CMake build needs to use it."""
    for nvcc, from_pypi in _candidates():
        if not (nvcc.exists() and os.access(nvcc, os.X_OK)):
            continue
        version, full = nvcc_version(nvcc)
        root = toolkit_root(nvcc)
        env = {"CUDACXX": str(nvcc), "CUDA_HOME": str(root)}
        if from_pypi:
            # The PyPI layout keeps libcudart_static.a in <root>/lib, where nvcc.profile's
            # targets/<arch>/lib path doesn't look; the host linker finds it through LIBRARY_PATH.
            env["LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(root / "lib"), os.environ.get("LIBRARY_PATH")]))
        env["PATH"] = os.pathsep.join([str(nvcc.parent), os.environ.get("PATH", "")])
        return CudaToolchain(nvcc, version, full, root, from_pypi, env)
    raise ForgeError(
        "no CUDA compiler (nvcc) was found: not in CUDACXX, CUDA_HOME, PATH, /usr/local/cuda or pip's nvidia packages",
        "install a CUDA toolkit, or `python3 -m pip install -r requirements-build.txt` for NVIDIA's nvcc from PyPI",
    )


def find_cuda_tool(name: str) -> Path | None:
    """cuobjdump, ptxas, ...: next to nvcc, on PATH, or from pip's nvidia packages."""
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    for nvcc, _ in _candidates():
        tool = nvcc.parent / name
        if tool.exists():
            return tool
    return None


def main(argv=None) -> int:
    chain = find_cuda_toolchain()
    print(f"nvcc {chain.full_version} at {chain.nvcc} ({'PyPI' if chain.from_pypi else 'system'} toolkit)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
