"""Every knob of a bake under each name a vLLM-style Dockerfile may call it (``--build-arg``): the arch list,
jobs, caches, bases, torch and its index, package indexes, the apt mirror, the JIT toolchain. A Dockerfile
gets the ones it declares; credentials are never one (they travel as secrets).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from vllm_forge.core.credentials import has_credentials
from vllm_forge.core.errors import ForgeError
from vllm_forge.core.package import module_path
from vllm_forge.core.plan import mask_urls
from vllm_forge.gpu import archs as archs_mod
from vllm_forge.image.bases import full_cuda_version
from vllm_forge.image.request import BakeRequest

if TYPE_CHECKING:
    from vllm_forge.image.jit import JitToolchain
    from vllm_forge.source.vllm_tree import VllmTree


DEFAULT_PYTORCH_INDEX = "https://download.pytorch.org/whl"  # docker/Dockerfile's PYTORCH_CUDA_INDEX_BASE_URL
AUDIT_MODULE = "vllm_forge.audit.audit"  # the build stage's kernel audit


def knob_values(request: BakeRequest, archs, base: str, runtime: str, recipe: str,
                 tree: VllmTree | None, jit: JitToolchain | None = None) -> dict[str, str]:
    """Every knob under each name a vLLM-style Dockerfile may call it; filtered by what it declares. ``jit``: the
    forge recipe's runtime JIT toolchain (jit.plan_jit_toolchain)."""
    arch_list = archs_mod.torch_cuda_arch_list(archs)
    values: dict[str, str] = {
        "torch_cuda_arch_list": arch_list,
        "TORCH_CUDA_ARCH_LIST": arch_list,
        "vllm_fa_cmake_gpu_arches": archs_mod.fa_cmake_gpu_arches(archs),
        "CMAKE_BUILD_TYPE": request.build_type,
        "RUN_WHEEL_CHECK": "true" if request.wheel_check else "false",
        "RUN_WHEEL_AUDIT": "true" if request.audit and module_path(AUDIT_MODULE).is_file() else "false",
    }
    jobs, threads = request.max_jobs, request.nvcc_threads
    if recipe != "forge" and not (jobs and threads):
        # vLLM's Dockerfile has no "automatic": choose for this host (where the engine runs).
        from vllm_forge.gpu.parallelism import choose_parallelism

        auto = choose_parallelism(max_jobs=jobs, nvcc_threads=threads, n_archs=len(archs))
        jobs, threads = auto.max_jobs, auto.nvcc_threads
    values["max_jobs"] = str(jobs)
    values["nvcc_threads"] = str(threads)
    if request.cmake_args:
        values["CMAKE_ARGS"] = request.cmake_args
    if request.compile_cache == "sccache":
        values["USE_SCCACHE"] = "1"
    if recipe == "forge":
        values["COMPILE_CACHE"] = request.compile_cache
    if recipe == "forge" and tree is not None:
        # What this checkout's vLLM version builds with and enforces (vllm_forge/source/vllm_tree.py).
        if tree.build_requirements:
            values["BUILD_REQUIREMENTS"] = tree.build_requirements
        if not request.wheel_limit_mb:
            values["VLLM_MAX_SIZE_MB"] = str(tree.wheel_limit_mb())
    if request.wheel_limit_mb:
        values["VLLM_MAX_SIZE_MB"] = f"{request.wheel_limit_mb:g}"
    if request.apt_mirror:
        values["APT_MIRROR"] = check_apt_mirror(request.apt_mirror)
    if recipe == "forge" and jit is not None:
        values["JIT_TOOLCHAIN"] = jit.spec
        values["JIT_CHECK"] = "true" if request.jit else "false"
    if recipe == "forge" or request.base_image:
        values["BUILD_BASE_IMAGE"] = base
    if recipe == "forge" or request.runtime_image:
        values["FINAL_BASE_IMAGE"] = runtime
    if recipe == "forge":
        values["CUDA_VERSION"] = request.cuda.minor_str
        if request.recipe is not None:
            values["TORCH_REQUIREMENT"] = request.recipe.torch_requirement
            index = (request.pytorch_index_base_url or DEFAULT_PYTORCH_INDEX).rstrip("/")
            values["TORCH_INDEX_URL"] = f"{index}/{request.recipe.torch_index_suffix}" \
                if request.recipe.torch_requirement else ""
    elif request.cuda_explicit:
        values["CUDA_VERSION"] = str(full_cuda_version(request.cuda))
    if request.index_url and not has_credentials(request.index_url):
        for name in ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_DEFAULT_INDEX"):
            values[name] = request.index_url
    if request.extra_index_url:
        if has_credentials(request.extra_index_url):
            raise ForgeError(
                "--extra-index-url carries credentials, and build args are kept in the image history",
                "pass the credentials with --netrc FILE (machine HOST login USER password TOKEN) instead",
            )
        for name in ("PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL"):
            values[name] = request.extra_index_url
    if request.pytorch_index_base_url:
        if has_credentials(request.pytorch_index_base_url):
            raise ForgeError(
                "the PyTorch index (--pytorch-index, or the mirror profile's pytorch_index) carries credentials, "
                "and build args are kept in the image history",
                "give the index URL without them and pass the login with --netrc FILE (machine HOST login USER "
                "password TOKEN)",
            )
        values["PYTORCH_CUDA_INDEX_BASE_URL"] = request.pytorch_index_base_url.rstrip("/")
    return values


# scheme://host[:port] and nothing else: the Dockerfile puts it into a sed replacement, where `#`, `;`,
# `&`, a quote or a space would change the script (and a user-info part would land in the image).
_APT_MIRROR = re.compile(r"^https?://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?$")


def check_apt_mirror(value: str, where: str = "the mirror profile's apt_mirror") -> str:
    """``value`` without a trailing slash, when it is a plain http(s)://host[:port]; ForgeError otherwise."""
    value = (value or "").strip().rstrip("/")
    if not _APT_MIRROR.match(value):
        raise ForgeError(
            f"{where} {mask_urls(value)!r} is not scheme://host[:port]",
            "give the apt mirror as http(s)://host or http(s)://host:port, with no path, user, `#`, `;`, quotes or "
            "spaces",
        )
    return value
