"""What a baked image says about itself: the checkout it was built from (repo without credentials, the ref
``clone`` recorded or ``local``, commit, dirty), its sources' date, who it runs as, the torch it is built
against, and the default tag.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from vllm_forge import __version__ as forge_version
from vllm_forge.core.credentials import strip_credentials
from vllm_forge.core.tree_sync import is_build_output
from vllm_forge.gpu import archs as archs_mod
from vllm_forge.gpu.cuda_arch import CudaArch
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.image.dockerfile import NON_ROOT_STAGES

if TYPE_CHECKING:
    from vllm_forge.image.jit import JitToolchain
    from vllm_forge.image.recipe import Recipe
    from vllm_forge.source.checkout import CheckoutFacts


LABEL_PREFIX = "org.vllm-forge"
DEFAULT_REPOSITORY = "vllm-forge/vllm"


def _safe_tag_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip(".-")[:60] or "dev"


def default_tag(identity: dict[str, str], cuda: CudaRelease, archs: list[CudaArch], target: str) -> str:
    """``vllm-forge/vllm:v0.11.0-cu128-sm120``: the ref built (a local checkout: ``local-<commit>``,
    ``-dirty`` when it has changes of its own), the CUDA, the archs."""
    ref = identity["ref"]
    if ref == "local" and identity["commit"] not in ("", "unknown", PENDING):
        ref = f"local-{identity['commit'][:12]}"
    if identity.get("dirty") == "true":
        ref += "-dirty"
    sms = "-".join(a.sm.replace("_", "") for a in archs)
    suffix = "-build" if target == "build" else ""
    return f"{DEFAULT_REPOSITORY}:{_safe_tag_part(ref)}-{cuda.tag}-{sms}{suffix}"


PENDING = "(after clone)"


def source_identity(facts: CheckoutFacts, planned_repo: str = "", planned_ref: str = "") -> dict[str, str]:
    """Repo URL (no credentials), ref (the one cloned, or ``local``), commit and dirty flag of the checkout
    that is built; for a checkout still to be cloned, the planned repo and ref."""
    if not facts.exists:
        return {"repo": strip_credentials(planned_repo), "ref": planned_ref or "local", "commit": PENDING,
                "dirty": PENDING}
    repo = facts.repo or str(facts.path)
    return {"repo": strip_credentials(repo), "ref": facts.ref or "local", "commit": facts.commit or "unknown",
            "dirty": "true" if facts.dirty else "false"}


def source_date(src: Path, facts: CheckoutFacts) -> _dt.datetime:
    """When the sources baked were last changed, for the image's ``created`` label: ``$SOURCE_DATE_EPOCH``
    when set (the reproducible-builds convention), else the commit's time, or for a tree with changes (or
    without git, like the miniature's private copy) its newest file outside build outputs. A re-bake of
    unchanged sources gets the same label, so the same image ID, and leaves no dangling image behind."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch.isdigit():
        return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
    seconds = 0.0
    if facts.exists and facts.commit:
        from vllm_forge.core.git_safe import run_git

        out = run_git(["log", "-1", "--format=%ct", "HEAD"], cwd=src)
        seconds = float(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else 0.0
    if not seconds or facts.dirty:
        for root, dirs, files in os.walk(src):
            rel = Path(root).relative_to(src)
            dirs[:] = [d for d in dirs if d != ".git" and not is_build_output(rel / d, True)]
            for name in files:
                if not is_build_output(rel / name, False):
                    seconds = max(seconds, (Path(root) / name).lstat().st_mtime)
    if not seconds:
        return _dt.datetime.now(_dt.timezone.utc)
    return _dt.datetime.fromtimestamp(int(seconds), _dt.timezone.utc)


def runtime_user(recipe: str, target_stage: str, declared: dict[str, str | None]) -> str:
    """Who the image's processes run as, for the org.vllm-forge.user label (`invoke inspect`)."""
    if target_stage == NON_ROOT_STAGES["forge"] and recipe == "forge":
        return f"vllm (uid {declared.get('VLLM_UID') or '?'}, gid 0)"
    if target_stage == NON_ROOT_STAGES["upstream"]:
        return f"non-root ({target_stage}'s USER)"
    return "root"


def torch_label(recipe: Recipe) -> str:
    """The torch the image is built against: the pinned one installed from the PyTorch index, or the base's."""
    if recipe.torch_requirement:
        return f"{recipe.torch_requirement} ({recipe.torch_index_suffix})"
    return f"the base's own{' (' + recipe.base_torch + ')' if recipe.base_torch else ''}"


def image_labels(identity: dict[str, str], created: str, archs: list[CudaArch], cuda: CudaRelease, *, recipe: str,
                 build_args: dict[str, str], declared: dict[str, str | None], runtime: str, torch: Recipe | None,
                 mirror: str, jit: JitToolchain | None, user: str) -> dict[str, str]:
    """The image's labels: OCI's, then vllm-forge's (what was built, for which GPUs, on what, by whom).
    ``torch``: the forge recipe's choice of torch; ``jit``: its runtime's JIT toolchain (None: other recipes)."""
    return {
        "org.opencontainers.image.title": "vllm",
        "org.opencontainers.image.source": identity["repo"],
        "org.opencontainers.image.revision": identity["commit"],
        "org.opencontainers.image.version": identity["ref"],
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.base.name": runtime
        if "FINAL_BASE_IMAGE" in build_args
        else (declared.get("FINAL_BASE_IMAGE") or ""),
        f"{LABEL_PREFIX}.vllm.repo": identity["repo"],
        f"{LABEL_PREFIX}.vllm.ref": identity["ref"],
        f"{LABEL_PREFIX}.vllm.commit": identity["commit"],
        f"{LABEL_PREFIX}.vllm.dirty": identity["dirty"],
        f"{LABEL_PREFIX}.arch-list": archs_mod.torch_cuda_arch_list(archs),
        f"{LABEL_PREFIX}.sm": ",".join(a.sm for a in archs),
        f"{LABEL_PREFIX}.cuda": cuda.minor_str,
        f"{LABEL_PREFIX}.build-base": build_args.get("BUILD_BASE_IMAGE") or declared.get("BUILD_BASE_IMAGE") or "",
        f"{LABEL_PREFIX}.runtime-base": build_args.get("FINAL_BASE_IMAGE") or declared.get("FINAL_BASE_IMAGE") or "",
        f"{LABEL_PREFIX}.recipe": recipe,
        **({f"{LABEL_PREFIX}.torch": torch_label(torch)} if torch is not None else {}),
        f"{LABEL_PREFIX}.mirror": mirror,
        **({f"{LABEL_PREFIX}.jit": jit.label} if jit is not None else {}),
        f"{LABEL_PREFIX}.user": user,
        f"{LABEL_PREFIX}.version": forge_version,
    }
