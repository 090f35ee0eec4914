"""The bases an image builds on and serves from: compat's defaults for a CUDA release when the recipe names
none, whether they can be had (local, or the registry answers), and the one-line error when they cannot.
"""

from __future__ import annotations

import subprocess

from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_release import CudaRelease


def resolve_base_images(cuda: CudaRelease, base_image: str = "", runtime_image: str = "") -> tuple[str, str]:
    """(build base, runtime base): the explicit ones, else compat's NGC PyTorch / CUDA runtime rows."""
    if not base_image:
        row = compat.default_ngc_tag(cuda)
        if row is None:
            raise ForgeError(
                f"no NGC PyTorch image is known for CUDA {cuda}",
                "pass --base-image, or use one of CUDA " + ", ".join(str(c) for c in compat.ngc_cudas()),
            )
        base_image = row.image
    if not runtime_image:
        runtime_image = compat.CUDA_RUNTIME_IMAGES.get(cuda.minor_str, "")
        if not runtime_image:
            raise ForgeError(
                f"no CUDA runtime image is known for CUDA {cuda}",
                f"pass --runtime-image, or use one of CUDA {', '.join(sorted(compat.CUDA_RUNTIME_IMAGES))}",
            )
    return base_image, runtime_image


def full_cuda_version(cuda: CudaRelease) -> CudaRelease:
    """12.8 -> 12.8.1 (the version in the CUDA runtime image tag), as vLLM's CUDA_VERSION wants."""
    if cuda.patch is not None:
        return cuda
    return compat.runtime_image_release(cuda) or cuda


STANDIN_NOTE = "TEST-ONLY stand-in bases: this image is for iterating on the Dockerfile, not for serving real models"


def base_image_available(docker: str, image: str, *, timeout_s: int = 20, runner=subprocess.run) -> bool:
    """True when ``image`` is present locally or its registry answers for it (``docker manifest inspect``)."""
    try:
        local = runner([docker, "image", "inspect", "--format", "{{.Id}}", image], capture_output=True, text=True,
                       timeout=60)
        if local.returncode == 0:
            return True
        remote = runner([docker, "manifest", "inspect", image], capture_output=True, text=True, timeout=timeout_s)
        return remote.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def check_base_images(docker: str, base: str, runtime: str, *, runner=subprocess.run) -> list[str]:
    """The base images of a bake that are neither local nor resolvable (empty: all can be used)."""
    missing = []
    for image in dict.fromkeys(i for i in (base, runtime) if i):
        if not base_image_available(docker, image, runner=runner):
            missing.append(image)
    return missing


def missing_bases_error(missing: list[str], *, mirror: str = "") -> ForgeError:
    """The one-line error for bases that cannot be had, with the fixes that apply to them."""
    from vllm_forge.image import mirrors

    fixes = []
    through_cn = [i for i in missing if mirrors.rewrite_image(i, mirrors.BUILTIN_MIRRORS["cn"]) != i]
    if through_cn and mirror != "cn":
        fixes.append("--mirror cn (pulls " + ", ".join(sorted({mirrors.split_image(i)[0] for i in through_cn}))
                     + " through m.daocloud.io)")
    fixes.append("--base-image/--runtime-image with images you have (`docker images`)")
    fixes.append("--standin to iterate on the Dockerfile with local TEST-ONLY bases (not for serving real models)")
    return ForgeError(
        f"base image{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
        f"{'are' if len(missing) > 1 else 'is'} not present locally and the registry cannot be reached",
        "pass " + ", or ".join(fixes),
    )
