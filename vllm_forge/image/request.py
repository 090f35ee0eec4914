"""What to bake, in BuildConfig's terms: ``BakeRequest`` (the pipeline fills it from the resolved settings),
and the request's inputs read from this machine (the CA bundle pip uses, the git dependencies fetch-deps
cached for the checkout).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vllm_forge.core.errors import ForgeError
from vllm_forge.core.farm_settings import DistSettings
from vllm_forge.core.package import PACKAGE_ROOT
from vllm_forge.gpu.cuda_arch import CudaArch
from vllm_forge.gpu.cuda_release import CudaRelease

if TYPE_CHECKING:
    from vllm_forge.image.recipe import Recipe
    from vllm_forge.source.checkout import CheckoutFacts
    from vllm_forge.source.vllm_tree import VllmTree


SECRET_IDS = ("ca_bundle", "pip_index_url", "netrc")


def parse_build_args(items: Iterable[str]) -> dict[str, str]:
    """``--build-arg NAME=VALUE`` flags as a mapping (one line for one without ``=``)."""
    extra = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq:
            raise ForgeError(f"--build-arg {item} is not NAME=VALUE", "pass --build-arg NAME=VALUE")
        extra[name] = value
    return extra


def default_ca_bundle(env: dict[str, str] | None = None) -> tuple[Path | None, str]:
    """The CA bundle this host's pip uses (PIP_CERT, pip's `cert` setting, REQUESTS_CA_BUNDLE), and
    where it came from: builds behind a TLS-intercepting proxy need the same one inside."""
    env = os.environ if env is None else env
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = env.get(name, "")
        if value and Path(value).is_file():
            return Path(value), name
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.cert"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None, ""
    value = proc.stdout.strip()
    if proc.returncode == 0 and value and Path(value).is_file():
        return Path(value), "pip config global.cert"
    return None, ""


@dataclass
class BakeRequest:
    """What to bake, in BuildConfig's terms (``tasks.py`` fills it from the resolved config)."""

    src: Path
    archs: list[CudaArch] = field(default_factory=lambda: [CudaArch(12, 0)])  # what to build for, parsed once
    cuda: CudaRelease = CudaRelease(12, 8)  # the image's CUDA release (the recipe's)
    cuda_explicit: bool = False  # --cuda given: upstream mode then passes CUDA_VERSION too
    base_image: str = ""  # "" : the NGC PyTorch image for `cuda` (vllm_forge/gpu/compat.py)
    runtime_image: str = ""  # "" : the CUDA runtime image for `cuda`
    target: str = "runtime"
    tag: str = ""
    dockerfile: str = "forge"  # forge | upstream | a path to a Dockerfile
    max_jobs: int = 0
    nvcc_threads: int = 0
    build_type: str = "Release"
    cmake_args: str = ""  # extra CMake arguments: the Dockerfile's ARG CMAKE_ARGS, which setup.py reads
    compile_cache: str = "auto"
    wheel_limit_mb: float = 0  # 0: the recipe's own default
    wheel_check: bool = True
    audit: bool = True
    index_url: str = ""  # may carry credentials: then it travels as a secret, never as an ARG
    extra_index_url: str = ""
    pytorch_index_base_url: str = ""
    ca_bundle: Path | None = None
    netrc: Path | None = None
    dist_dir: Path = Path("dist")
    context_dir: Path = PACKAGE_ROOT / "build" / "bake"
    # What the checkout is (labels, default tag); None: read from ``src`` as a local checkout. A checkout
    # that does not exist yet (the pipeline clones it first) is planned from ``planned_repo``/``_ref``.
    checkout: CheckoutFacts | None = None
    planned_repo: str = ""
    planned_ref: str = ""
    mirror: str = "global"  # the applied mirror profile's name (a label)
    registry_cache: str = ""  # image ref of a registry layer cache (buildx only)
    platform: str = ""
    push: bool = False
    builder: str = ""
    cache_from: list[str] = field(default_factory=list)
    cache_to: list[str] = field(default_factory=list)
    no_cache: bool = False
    build_args: dict[str, str] = field(default_factory=dict)  # raw extra --build-arg NAME=VALUE
    apt_mirror: str = ""  # scheme://host put in place of the Ubuntu/Debian apt hosts (mirror profile)
    deps_cache: Path | None = None  # a `fetch-deps` cache root: its deps this checkout uses go into the build
    jit: bool = True  # False (--no-jit): no JIT toolchain in the runtime stage, no JIT check
    non_root: bool = False  # runtime target: serve as an unprivileged user (NON_ROOT_STAGES)
    recipe: Recipe | None = None  # CUDA, bases and torch chosen from the checkout's pins (vllm_forge/image/recipe.py)
    dist: DistSettings = field(default_factory=DistSettings)  # a sccache-dist farm for the build stage


def cached_git_deps(request: BakeRequest, tree: VllmTree | None = None) -> list:
    """The checkout's git dependencies that `fetch-deps` has cached (the build then needs no network)."""
    if not request.deps_cache:
        return []
    from vllm_forge.deps.fetch_deps import is_cached
    from vllm_forge.source.vllm_tree import inspect_tree

    tree = tree or inspect_tree(Path(request.src).expanduser())
    return [dep for dep in tree.git_deps if is_cached(request.deps_cache, dep)]
