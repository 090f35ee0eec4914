"""vllm-forge's one cache on this machine, what is in it, and how to remove it (and what the tests leave).

The cache is ``$VLLM_FORGE_CACHE``, else ``~/.cache/vllm-forge`` (the tasks' ``cache_dir`` defaults to the same
directory). Everything vllm-forge keeps between runs lives in a subdirectory of it: compile caches, the
dependencies ``fetch-deps`` cloned, the stand-in images' root filesystems, the demo's checkout, and the vLLM
wheels and sdists the tests download from PyPI. ``clean`` also removes pytest's temporary directories of
this user (the suite removes its own when it passes; a failed run keeps its latest).

    python -m vllm_forge.core.forge_cache                 # each part of the cache with its size
    python -m vllm_forge.core.forge_cache clean           # remove the cache and the tests' temporary directories
    python -m vllm_forge.core.forge_cache clean --dry-run # what clean would remove, and how much
    python -m vllm_forge.core.forge_cache clean --all     # also this checkout's .nox/ venvs and build/ outputs

``nox -s clean`` runs ``clean`` with the words after ``--``.
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vllm_forge.core.config import CACHE_ENV, default_cache_root
from vllm_forge.core.errors import run_main

REPO_ROOT = Path(__file__).resolve().parents[2]

# What each part of the cache is, for the listing (a part not named here is listed with its size too).
PARTS = {
    "ccache": "compile cache of local builds (ccache)",
    "sccache": "compile cache of local builds (sccache)",
    "deps": "git dependencies `invoke fetch-deps` cloned (CUTLASS, flash-attention, ...)",
    "demo": "the checkout `invoke demo` builds",
    "minivllm.git": "the embedded miniature, published as a git repository for `invoke demo`",
    "standin": "root filesystems of the TEST-ONLY stand-in base images (re-imported in seconds when pruned)",
    "vllm-extensions": "which extensions a vLLM wheel imports at start-up, per wheel",
    "wheels": "vLLM wheels the tests download from PyPI",
    "sdists": "vLLM source releases the tests download from PyPI",
}


def root() -> Path:
    return Path(default_cache_root()).expanduser()


def pytest_temp_root() -> Path:
    """Where pytest keeps this user's temporary directories (its ``tmp_path_factory`` base)."""
    return Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"


def size_of(path: Path) -> int:
    """Bytes under ``path`` (files and links themselves, never followed)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(dirpath) / name).lstat().st_size
            except OSError:
                pass
    return total


def human(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


@dataclass
class Entry:
    path: Path
    size: int
    what: str


def entries(*, everything: bool = False) -> list[Entry]:
    """What ``clean`` removes: each part of the cache, pytest's temporary directories, and with ``everything``
    this checkout's .nox/ and build/."""
    found = []
    cache = root()
    if cache.is_dir():
        for part in sorted(cache.iterdir()):
            found.append(Entry(part, size_of(part), PARTS.get(part.name, "")))
    temp = pytest_temp_root()
    if temp.is_dir():
        found.append(Entry(temp, size_of(temp), "pytest's temporary directories of this user"))
    if everything:
        for name, what in ((".nox", "nox's venvs (tests, lint, compilers)"),
                           ("build", "this checkout's build outputs: clones, private copies, logs, bake context")):
            if (REPO_ROOT / name).is_dir():
                found.append(Entry(REPO_ROOT / name, size_of(REPO_ROOT / name), what))
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="forge_cache.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=("list", "clean"), default="list",
                        help="list (default): each part and its size; clean: remove them")
    parser.add_argument("--dry-run", action="store_true", help="with clean: say what it would remove, remove nothing")
    parser.add_argument("--all", action="store_true", help="also this checkout's .nox/ venvs and build/ outputs")
    args = parser.parse_args(argv)
    found = entries(everything=args.all)
    removing = args.action == "clean" and not args.dry_run
    print(f"vllm-forge cache {root()} (${CACHE_ENV} sets it)")
    width = max((len(str(e.path)) for e in found), default=0)
    for entry in found:
        print(f"  {human(entry.size):>9}  {str(entry.path):<{width}}  {entry.what}".rstrip())
        if removing:
            _remove(entry.path)
    total = human(sum(e.size for e in found))
    print(f"removed {total}" if removing else f"would remove {total}" if args.action == "clean"
          else f"{total} in all (`nox -s clean` removes it)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
