"""Stage a bake's build context: a copy of the checkout without build outputs, logins or git credentials
(context_filter, source/context_git), the cached git dependencies it builds from, and for the forge recipe
the vllm_forge modules its build stage runs, found by following their imports: up to the compile in
``forge/vllm_forge/``, after it in ``forge/late/vllm_forge/`` (docker/Dockerfile puts each on PYTHONPATH).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from vllm_forge.core.nofollow import copy_file, real_dir, real_dirs, remove, write_file
from vllm_forge.core.package import PACKAGE_DIR, PACKAGE_ROOT, module_closure, module_path
from vllm_forge.core.tree_sync import is_build_output, sync_tree
from vllm_forge.deps.fetch_deps import dep_dir
from vllm_forge.image.bake_plan import BakePlan
from vllm_forge.image.context_filter import ContextFilter
from vllm_forge.image.request import cached_git_deps
from vllm_forge.source import context_git

# What docker/Dockerfile runs (`python3 -m`) in the build stage up to the compile: these modules and what they
# import are staged (forge/vllm_forge/, the image's PYTHONPATH), so a change elsewhere in vllm-forge does not
# invalidate the compile layer.
BUILD_STAGE_MODULES = ("vllm_forge.source.checkout", "vllm_forge.build.build_wheel", "vllm_forge.build.wheel_size",
                       "vllm_forge.audit.audit")
BUILD_STAGE_DATA = ("build/build_profiles",)  # what they read besides modules (build_estimate's recorded builds)
# Run after the compile (the runtime stage's torch pins) and in the runtime stage (the JIT check): staged apart
# (forge/late/vllm_forge/) and bind-mounted where they run, so a change to them reruns only those steps.
LATE_MODULES = ("vllm_forge.image.runtime_requirements", "vllm_forge.gpu.doctor_inside")


def staged_modules(entries: Iterable[str] = BUILD_STAGE_MODULES) -> set[str]:
    """The ``vllm_forge`` modules ``entries`` need (they and what they import, also lazily), with their packages."""
    return module_closure(entries)


def _only(modules: Iterable[str], data: Iterable[str] = ()) -> Callable[[Path, bool], bool]:
    """A ``sync_tree`` skip over vllm_forge/ that keeps the files of ``modules``, the packages they sit in, and
    the directories ``data`` (paths under vllm_forge/) whole."""
    files = {module_path(name).relative_to(PACKAGE_DIR) for name in modules}
    dirs = {parent for path in files for parent in path.parents}
    kept = tuple(Path(d) for d in data)

    def skip(rel: Path, is_dir: bool) -> bool:
        if any(rel == d or d in rel.parents for d in kept):
            return is_build_output(rel, is_dir)
        if any(rel in d.parents for d in kept):
            return False  # a package on the way to a data directory
        return rel not in (dirs if is_dir else files)

    return skip


def stage_checkout(src: Path, dest: Path, git_mirror: Path, *, left_out: list[str] | None = None) -> int:
    """Copy a checkout to ``dest`` with its git metadata made credential-free: kept incrementally in
    ``git_mirror`` (outside any context) and linked in as ``dest/.git``. What the copy leaves out besides
    build outputs (vllm_forge/image/context_filter.py: files that hold logins, the checkout's .dockerignore) is
    added to ``left_out`` as one line."""
    keep_out = ContextFilter(Path(src))
    copied = sync_tree(src, dest, skip=keep_out)
    copied += context_git.sanitize_git_dir(src, git_mirror)
    if git_mirror.is_dir():
        context_git.link_tree(git_mirror, dest / ".git")
    if left_out is not None and keep_out.summary():
        left_out.append(keep_out.summary())
    return copied


def stage_git_deps(plan: BakePlan, dest: Path, *, left_out: list[str] | None = None) -> int:
    """Copy the cached dependencies (and their markers) to the context's deps/, bind-mounted into the
    wheel build as a fetch-deps cache; an empty deps/ when there are none. A dependency's clone and
    marker go in without credentials (a --github-proxy or --url-map URL may carry them)."""
    real_dir(dest)
    copied = 0
    wanted = set()
    for dep in cached_git_deps(plan.request, plan.tree):
        source = dep_dir(plan.request.deps_cache, dep)
        wanted |= {source.name, source.name + ".forge-dep.json"}
        mirror = real_dirs(Path(plan.request.context_dir), "git/deps") / source.name
        copied += stage_checkout(source, dest / source.name, mirror, left_out=left_out)
        marker = json.loads(source.with_name(source.name + ".forge-dep.json").read_text())
        # `repository` is the checkout's own CMake string (in the context anyway; is_cached compares it).
        marker["fetched_from"] = context_git.public_url(str(marker.get("fetched_from", "")))
        text = json.dumps(marker, indent=2) + "\n"
        target = dest / (source.name + ".forge-dep.json")
        if target.is_symlink() or not target.is_file() or target.read_text() != text:
            write_file(target, text)  # never written through a planted link
    for stale in dest.iterdir():
        if stale.name not in wanted:
            remove(stale)
    return copied


def stage_context(plan: BakePlan, *, left_out: list[str] | None = None) -> int:
    """Lay out the build context: for the forge recipe vllm/ (the checkout) and forge/ (the vllm_forge
    modules the build runs up to the compile, and in late/ those it runs after it); for the others a copy of
    the checkout. No credentials either way; what a copy of a checkout leaves out besides build outputs is
    added to ``left_out`` (one line per checkout)."""
    context = plan.context
    context.parent.mkdir(parents=True, exist_ok=True)
    real_dir(context)  # never a planted symlink
    src = Path(plan.request.src).expanduser().resolve()
    git_mirror = real_dirs(Path(plan.request.context_dir), "git") / "vllm"  # kept outside the context, made real
    if plan.recipe != "forge":
        return stage_checkout(src, context, git_mirror, left_out=left_out)
    for part in (context / "forge", context / "forge" / "docker"):
        real_dir(part)
    copied = stage_checkout(src, context / "vllm", git_mirror, left_out=left_out)
    copied += sync_tree(PACKAGE_DIR, context / "forge" / "vllm_forge", skip=_only(staged_modules(), BUILD_STAGE_DATA))
    copied += sync_tree(PACKAGE_DIR, real_dir(context / "forge" / "late") / "vllm_forge",
                        skip=_only(staged_modules(LATE_MODULES)))
    copied += stage_git_deps(plan, context / "deps", left_out=left_out)
    for helper in ("forge-env.sh", "forge-apt.sh"):
        copy_file(PACKAGE_ROOT / "docker" / helper, real_dir(context / "forge" / "docker") / helper)
    return copied
