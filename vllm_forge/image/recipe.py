"""Which CUDA, which bases and which torch a bake builds with, chosen from what the checkout pins.

vLLM pins its torch (``torch==2.11.0`` in requirements/build/cuda.txt and pyproject.toml) and, from 0.20 on,
the CUDA release its own Dockerfile builds with (``ARG CUDA_VERSION=13.0.2``). Upstream builds such a tree on
NVIDIA's public CUDA -devel image with that torch from the PyTorch index for its CUDA; an NGC PyTorch image
instead carries NGC's own pre-release torch. The recipe follows the checkout:

- ``--base auto`` (default): the pinned torch from the PyTorch index on the CUDA -devel image, when that torch
  is published for the CUDA; else the NGC PyTorch image of the CUDA, with its own torch. That is refused,
  naming both, when NGC's torch is another release and the checkout pins its CUDA release too (its torch and
  CUDA are a pair, vLLM 0.20 on); a checkout that pins no CUDA release (older vLLM, which builds against the
  base's torch through use-existing-torch) gets it with a note. A checkout that pins no torch builds on NGC.
- ``--base cuda`` / ``--base ngc``: that kind, refused when it cannot give the pinned torch.
- ``--base-image IMAGE``: that image, on purpose: its own torch is used (use-existing-torch), whatever the pin.

The CUDA is ``--cuda`` when given, else the checkout's own Dockerfile pin, else DEFAULT_IMAGE_CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_forge.core.config import BASES
from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_release import CudaRelease

DEFAULT_IMAGE_CUDA = CudaRelease(12, 8)  # a checkout that pins no CUDA: the field report's (NGC 25.02, RTX 5090)


@dataclass(frozen=True)
class Recipe:
    cuda: CudaRelease  # 13.0: the image's CUDA release, what labels, tags and the JIT toolchain say
    cuda_full: CudaRelease  # 13.0.2: the release with its update, the -devel image's tag
    cuda_source: str  # "--cuda", "vLLM 0.26.0's docker/Dockerfile ARG CUDA_VERSION", "default"
    base_image: str  # "" when the caller names it (standin) and it is passed through as is
    runtime_image: str
    base_kind: str  # cuda | ngc | image (named with --base-image) | standin
    torch_requirement: str  # "torch==2.11.0": installed from the PyTorch index; "": the base's own torch
    base_torch: str = ""  # the torch an NGC base carries ("2.9.0a0"), when known
    notes: list[str] = field(default_factory=list)

    @property
    def torch_index_suffix(self) -> str:
        """The PyTorch index directory for this CUDA: cu130."""
        return self.cuda.tag


def _full(cuda: CudaRelease, pin: CudaRelease | None) -> CudaRelease:
    """The release with its update: the asked one's, else the checkout's pin of the same minor, else the one
    compat's CUDA runtime image carries."""
    if cuda.patch is not None:
        return cuda
    if pin is not None and pin.patch is not None and pin.same_minor(cuda):
        return pin
    return compat.runtime_image_release(cuda) or cuda


def _ngc_row(image: str) -> compat.NgcPytorchTag | None:
    return next((row for row in compat.NGC_PYTORCH_TAGS if row.image == image), None)


def _asked_cuda(cuda: CudaRelease | None, tree_cuda: CudaRelease | None, torch_pin: str | None,
                label: str) -> tuple[CudaRelease, str]:
    """The image's CUDA and where it came from: --cuda, else the checkout's Dockerfile (when it pins torch too,
    the two a pair), else the default."""
    if cuda is not None:
        return cuda, "--cuda"
    if tree_cuda is not None and torch_pin:
        return tree_cuda, f"{label}'s docker/Dockerfile ARG CUDA_VERSION={tree_cuda}"
    return DEFAULT_IMAGE_CUDA, f"default ({label} pins no CUDA release)"


def _given_image_recipe(base_image: str, torch_pin: str | None, pinned_by: str, minor: CudaRelease,
                        full: CudaRelease, source: str, runtime: str) -> Recipe:
    """``--base-image``: built against that image's own torch, whatever the checkout pins (said in a note)."""
    row = _ngc_row(base_image)
    notes = [f"--base-image {base_image}: built against that image's own torch"
             + (f" {row.torch}" if row else "") + " (use-existing-torch removes the checkout's pins)"]
    if row and torch_pin and compat.torch_release(row.torch) != compat.torch_release(torch_pin):
        notes.append(f"{base_image} carries torch {row.torch}, not the {torch_pin} {pinned_by}: "
                     "chosen on purpose with --base-image")
    return Recipe(minor, full, source, base_image, runtime, "image", "", row.torch if row else "", notes)


def choose_recipe(*, torch_pin: str | None, pin_source: str = "", tree_cuda: CudaRelease | None = None,
                  version: str | None = None, cuda: CudaRelease | None = None, base: str = "auto", base_image: str = "",
                  runtime_image: str = "", standin: bool = False) -> Recipe:
    """The recipe for a checkout that pins ``torch_pin`` (read from ``pin_source``) and whose Dockerfile pins
    ``tree_cuda``; ``cuda``/``base``/``base_image``/``runtime_image`` as the user set them (None/"" = not set)."""
    if base not in BASES:
        raise ForgeError(f"--base {base!r} is not one of {', '.join(BASES)}",
                         "pass --base auto (what the checkout pins), cuda (NVIDIA's CUDA image + the pinned torch) "
                         "or ngc (NGC's PyTorch image and its torch)")
    label = f"vLLM {version}" if version else "the checkout"
    asked, source = _asked_cuda(cuda, tree_cuda, torch_pin, label)
    minor, full = asked.minor_release, _full(asked, tree_cuda)
    runtime = runtime_image or compat.CUDA_RUNTIME_IMAGES.get(minor.minor_str, "")
    pinned = f"torch=={torch_pin}" if torch_pin else ""
    where = f" ({pin_source})" if pin_source else ""
    published = compat.PYTORCH_CUDA_BUILDS.get(compat.torch_release(torch_pin)) if torch_pin else None
    # a torch release this table does not know: trust the pin
    index_ok = published is None or minor.minor_str in published

    if standin:
        return Recipe(minor, full, source, base_image, runtime_image, "standin", "",
                      notes=["TEST-ONLY stand-in bases: the build stage uses whatever torch they have"])
    if base_image:
        return _given_image_recipe(base_image, torch_pin, f"{label} pins{where}", minor, full, source, runtime)

    ngc = compat.default_ngc_tag(minor)
    ngc_matches = bool(ngc and torch_pin and compat.torch_release(ngc.torch) == compat.torch_release(torch_pin))
    cuda_kind = Recipe(minor, full, source, compat.cuda_devel_image(full), runtime, "cuda", pinned,
                       notes=[f"build base: NVIDIA's CUDA {full} -devel image with {pinned or 'torch'} from the "
                              f"PyTorch index ({minor.tag}), as {label}'s own Dockerfile builds"])

    def ngc_kind() -> Recipe:
        return Recipe(minor, full, source, ngc.image, runtime, "ngc", "", ngc.torch,
                      [f"build base: NGC {ngc.tag} (CUDA {ngc.cuda}, its own torch {ngc.torch})"])

    def no_torch_build() -> ForgeError:
        return ForgeError(
            f"{label} pins torch {torch_pin}{where}, which the PyTorch index publishes for CUDA "
            f"{', '.join(published or ())}, not {minor}"
            + (f"; NGC {ngc.tag} carries torch {ngc.torch} instead" if ngc else ""),
            f"pass --cuda {(published or ('13.0',))[-1]}, or --base-image IMAGE to build against that image's "
            "torch on purpose")

    if base == "cuda":
        if torch_pin and not index_ok:
            raise no_torch_build()
        return cuda_kind
    if base == "ngc":
        if ngc is None:
            raise ForgeError(f"no NGC PyTorch image is known for CUDA {minor}",
                             "use one of CUDA " + ", ".join(str(c) for c in compat.ngc_cudas()))
        if torch_pin and not ngc_matches:
            raise ForgeError(
                f"NGC {ngc.tag} carries torch {ngc.torch} (CUDA {ngc.cuda}), but {label} pins torch {torch_pin}{where}",
                f"drop --base ngc (NVIDIA's CUDA image + torch {torch_pin} from the PyTorch index), or pass "
                f"--base-image {ngc.image} to build against its torch on purpose")
        return ngc_kind()
    # auto
    if not torch_pin:
        if ngc is None:
            raise ForgeError(f"no NGC PyTorch image is known for CUDA {minor}, and {label} pins no torch to install",
                             "pass --cuda with an NGC CUDA release, or --base-image IMAGE")
        return ngc_kind()
    if index_ok:
        return cuda_kind
    if ngc_matches:
        return ngc_kind()
    if ngc is None or tree_cuda:
        raise no_torch_build()
    fallback = ngc_kind()
    fallback.notes.append(f"torch {torch_pin} ({pin_source or 'the pin'}) has no CUDA {minor} build on the PyTorch "
                          f"index: NGC's torch {ngc.torch} replaces it (use-existing-torch); {label} pins no CUDA "
                          "release, so its torch pin is not tied to one (--base cuda refuses instead)")
    return fallback
