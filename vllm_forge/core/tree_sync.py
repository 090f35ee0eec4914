"""Copy a source tree into another, only what changed, build outputs left out, never through a link.

``sync_tree`` keeps a build context's copy of a checkout (and a private copy of one) in step with it: copies
keep their source's mtime, so a build in the copy sees an unchanged file as unchanged; what is gone from the
source goes from the copy. ``is_build_output`` is what no copy needs (``build/``, ``dist/``, ``__pycache__``,
``*.so``, ...). Every write and deletion goes through core/nofollow.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from vllm_forge.core.errors import ForgeError
from vllm_forge.core.nofollow import copy_file, is_inside, real_dir, remove

_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".venv", "venv", ".deps"}
_SKIP_TOP = {"build", "dist", ".deps", ".venv", "wheel-export"}
_SKIP_SUFFIX = (".pyc", ".pyo", ".so", ".egg-info")


def is_build_output(rel: Path, is_dir: bool) -> bool:
    """Build outputs and caches, which no build context needs (``build/``, ``dist/``, ``__pycache__``, ``*.so``...)."""
    parts = rel.parts
    if not parts:
        return False
    if len(parts) == 1 and parts[0] in _SKIP_TOP and is_dir:
        return True
    if is_dir and parts[-1] in _SKIP_DIRS:
        return True
    return parts[-1].endswith(_SKIP_SUFFIX)


def _link_inside(source: Path, root: Path) -> bool:
    """Whether the symlink ``source`` resolves inside ``root``, as the kernel resolves it (every link on the
    way followed: ``d -> .`` makes ``d/d/../../x`` climb out, whatever the text says)."""
    return not os.path.isabs(os.readlink(source)) and is_inside(source, root)


def sync_tree(src: Path, dest: Path, *, skip: Callable[[Path, bool], bool] = is_build_output,
              keep: tuple[str, ...] = ()) -> int:
    """Make ``dest`` a copy of ``src`` (minus skipped paths), copying only changed files; returns how many.
    Copies keep their source's mtime, so a build in ``dest`` sees an unchanged file as unchanged.

    ``keep``: top-level names in ``dest`` that are its own and stay as they are (a private copy's ``build``
    dir, where its CMake build resumes from). Nothing is ever written through a symlink already in ``dest``
    (one planted there, or left by an earlier tree): it is replaced. Symlinks in ``src`` are copied as
    symlinks when they resolve inside ``src``; one that resolves outside is refused.
    """
    src, dest = Path(os.path.normpath(Path(src).absolute())), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    real_dir(dest)
    copied = 0
    wanted: set[Path] = set()
    for root, dirs, files in os.walk(src):
        rel_root = Path(root).relative_to(src)
        dirs[:] = [d for d in dirs if not skip(rel_root / d, True)]
        links = [d for d in dirs if (Path(root) / d).is_symlink()]  # os.walk does not follow them: copy the link
        dirs[:] = [d for d in dirs if d not in links]
        for name in dirs:
            wanted.add(rel_root / name)
            real_dir(dest / rel_root / name)
        for name in links + files:
            rel = rel_root / name
            if skip(rel, False):
                continue
            wanted.add(rel)
            source, target = src / rel, dest / rel
            if source.is_symlink():
                if not _link_inside(source, src):
                    raise ForgeError(
                        f"{source} is a symlink to {os.readlink(source)}, which resolves outside {src}: the build "
                        "context would not hold what it points at",
                        "replace the link with the file it points at, or remove it from the tree",
                    )
                link = os.readlink(source)
                if not (target.is_symlink() and os.readlink(target) == link):
                    remove(target)
                    os.symlink(link, target)
                    copied += 1
                continue
            st = source.lstat()
            try:
                tt = target.lstat()  # a symlink at the target is never "the same file"
                same = (not target.is_symlink() and tt.st_size == st.st_size and int(tt.st_mtime) == int(st.st_mtime)
                        and tt.st_mode == st.st_mode)
            except FileNotFoundError:
                same = False
            if not same:
                copy_file(source, target)
                copied += 1
    for root, dirs, files in os.walk(dest):
        rel_root = Path(root).relative_to(dest)
        kept = [d for d in dirs if rel_root == Path(".") and d in keep and not (Path(root) / d).is_symlink()]
        for name in [d for d in dirs if d not in kept] + files:
            rel = rel_root / name
            if rel not in wanted:
                remove(dest / rel)
        dirs[:] = [d for d in dirs if d not in kept and (rel_root / d) in wanted]  # never walk what is kept
    return copied
