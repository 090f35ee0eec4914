"""A credential-free copy of a checkout's git metadata, for Docker build contexts.

A build context ends up in image layers and in BuildKit's cache (and, with ``--cache-to
type=registry,mode=max``, in a registry). A checkout cloned as ``https://user:TOKEN@host/org/vllm.git``
keeps that token in ``.git/config``, in the ``clone: from ...`` line of ``.git/logs/HEAD`` and in
``FETCH_HEAD``; ``.git/config`` may also hold ``http.extraHeader`` (a bearer token),
``url.<with-token>.insteadOf`` and credential helpers (``credential.helper=store --file ...``).

``sanitize_git_dir`` therefore copies only what git needs to read history, which is what
setuptools-scm and ``git describe`` need: objects, refs, packed-refs, shallow, HEAD and the index
(without it every tracked file looks deleted and the version gets a dirty suffix), and writes a
config built from an allow-list: repository format and extensions, core settings that only change
how files are read, remotes' fetch refspecs and their URLs without user info, query or fragment.
Everything else (config includes, ``http.*``, ``url.*``, ``credential.*``, hooks, reflogs,
FETCH_HEAD, ``info/``, lfs/, worktrees/) stays out. Submodules' git dirs (``modules/``) get the same
treatment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from scripts.git_safe import run_git

# Files git, curl and pip read logins from (netrc; `credential.helper store`'s default files) and git
# configs that may carry them: never part of a build context, wherever they sit in a tree.
CREDENTIAL_FILE_NAMES = frozenset({".netrc", "_netrc", ".git-credentials", ".gitconfig"})

# Config keys a history reader needs (``*`` stands for one subsection name, e.g. a remote's name).
_CONFIG_ALLOWED = (
    r"core\.repositoryformatversion",
    r"core\.bare",
    r"core\.filemode",
    r"core\.symlinks",
    r"core\.ignorecase",
    r"core\.precomposeunicode",
    r"core\.logallrefupdates",
    r"core\.autocrlf",
    r"core\.eol",
    r"core\.abbrev",
    r"extensions\.objectformat",
    r"extensions\.refstorage",
    r"extensions\.partialclone",
    r"extensions\.preciousobjects",
    r"remote\.[^\n]+\.url",
    r"remote\.[^\n]+\.fetch",
    r"remote\.[^\n]+\.tagopt",
    r"remote\.[^\n]+\.promisor",
    r"remote\.[^\n]+\.partialclonefilter",
    r"branch\.[^\n]+\.remote",
    r"branch\.[^\n]+\.merge",
    r"submodule\.[^\n]+\.active",
)
_CONFIG_ALLOWED_RE = re.compile(r"^(?:" + "|".join(_CONFIG_ALLOWED) + r")$", re.IGNORECASE)


def is_credential_file(name: str) -> bool:
    return name in CREDENTIAL_FILE_NAMES


def strip_userinfo(url: str) -> str:
    """``https://user:pw@host/x`` (any letter case) -> ``https://host/x``, secret query parameters dropped
    too: the one rule of scripts/credentials.py."""
    from scripts.credentials import strip_credentials

    return strip_credentials(url)


def public_url(url: str) -> str:
    """A remote URL as it may appear in a build context: no user info; for http(s) no query or
    fragment either (``?private_token=...``). scp-like ``git@host:org/repo`` keeps its login name,
    which is not a secret (the key is)."""
    url = strip_userinfo(url)
    if re.match(r"^https?://", url, re.IGNORECASE):
        url = re.split(r"[?#]", url, maxsplit=1)[0]
    return url


def git_dirs(checkout: Path) -> tuple[Path, Path] | None:
    """(git dir, common dir) of a checkout, a linked worktree or a submodule; None without git."""
    dot_git = Path(checkout) / ".git"
    if dot_git.is_dir():
        git_dir = dot_git
    elif dot_git.is_file():
        match = re.match(r"gitdir:\s*(.+)", dot_git.read_text(errors="replace").strip())
        if not match:
            return None
        git_dir = (Path(checkout) / match.group(1).strip()).resolve()
        if not git_dir.is_dir():
            return None
    else:
        return None
    common = git_dir
    commondir = git_dir / "commondir"
    if commondir.is_file():  # a linked worktree: objects and refs live in the main repository
        common = (git_dir / commondir.read_text().strip()).resolve()
    return git_dir, common


def filtered_config(config_file: Path) -> list[tuple[str, str]]:
    """(key, value) of ``config_file`` that a credential-free copy keeps (remote URLs made public)."""
    if not config_file.is_file():
        return []
    proc = run_git(["config", "--file", str(config_file), "--no-includes", "--list", "-z"],
                   env={"GIT_CONFIG_NOSYSTEM": "1"})
    kept = []
    for entry in proc.stdout.split("\0"):
        key, _, value = entry.partition("\n")
        if not key or not _CONFIG_ALLOWED_RE.match(key):
            continue
        if key.lower().endswith(".url") and key.lower().startswith("remote."):
            value = public_url(value)
        kept.append((key, value))
    return kept


def write_config(path: Path, entries: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("")
    for key, value in entries:
        proc = run_git(["config", "--file", str(partial), "--add", key, value])
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    if path.is_file() and path.read_bytes() == partial.read_bytes():
        partial.unlink()  # unchanged: keep its mtime, so the context does not look changed
        return
    os.replace(partial, path)


_SMALL = 1 << 20  # git rewrites refs, HEAD, index, commit-graph in place, often at the same size


def _copy_file(source: Path, target: Path) -> int:
    """Copy one file unless ``target`` already is a copy of it; 1 if copied. Size and mtime to the
    nanosecond decide, and the bytes too for small files: a ref moved within the same second keeps
    its size."""
    try:
        st, tt = source.stat(), target.stat()
        if st.st_size == tt.st_size and st.st_mtime_ns == tt.st_mtime_ns and (
            st.st_size > _SMALL or source.read_bytes() == target.read_bytes()
        ):
            return 0
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    target.unlink(missing_ok=True)  # a new inode: a context hard-linked to the old one stays as it was
    shutil.copy2(source, target)
    return 1


def _sync_dir(src: Path, dest: Path, skip: Callable[[Path], bool] = lambda rel: False) -> int:
    """Make ``dest`` a copy of the git-internal tree ``src`` (files only, no links to follow)."""
    copied = 0
    wanted: set[Path] = set()
    for root, _dirs, files in os.walk(src):
        rel_root = Path(root).relative_to(src)
        for name in files:
            rel = rel_root / name
            if not skip(rel) and not (Path(root) / name).is_symlink():
                wanted.add(rel)
                copied += _copy_file(src / rel, dest / rel)
    for root, dirs, files in os.walk(dest, topdown=False):
        rel_root = Path(root).relative_to(dest)
        for name in files:
            if rel_root / name not in wanted:
                (Path(root) / name).unlink()
        for name in dirs:
            path = Path(root) / name
            if not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()
    dest.mkdir(parents=True, exist_ok=True)
    return copied


def sanitize_git_dir(checkout: Path, dest: Path) -> int:
    """Make ``dest`` a credential-free git dir for ``checkout`` (see the module docstring),
    incrementally; returns how many files were copied."""
    found = git_dirs(checkout)
    if found is None:
        shutil.rmtree(dest, ignore_errors=True)
        return 0
    git_dir, common = found
    return _sanitize(git_dir, common, Path(dest))


def _sanitize(git_dir: Path, common: Path, dest: Path, extra_config: list[tuple[str, str]] | None = None) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    copied = 0
    kept = {"objects", "refs", "config", "HEAD"}
    copied += _sync_dir(common / "objects", dest / "objects", skip=lambda rel: rel.as_posix() == "info/alternates")
    copied += _sync_dir(common / "refs", dest / "refs")  # an empty refs/ too: git wants it
    if (common / "reftable").is_dir():
        copied += _sync_dir(common / "reftable", dest / "reftable")
        kept.add("reftable")
    # Objects borrowed from another repository (clone --reference / --shared): copied in, since the
    # other repository is not in the context.
    alternates = common / "objects" / "info" / "alternates"
    lines = []
    if alternates.is_file():
        for i, line in enumerate(x.strip() for x in alternates.read_text().splitlines()):
            source = (common / "objects" / line).resolve()
            if line and not line.startswith("#") and source.is_dir():
                copied += _sync_dir(source, dest / "alternates" / str(i))
                lines.append(f"../alternates/{i}")
        kept.add("alternates")
    if lines:
        (dest / "objects" / "info").mkdir(parents=True, exist_ok=True)
        (dest / "objects" / "info" / "alternates").write_text("\n".join(lines) + "\n")
    for name, base in (("packed-refs", common), ("shallow", common), ("HEAD", git_dir), ("index", git_dir)):
        if (base / name).is_file():
            copied += _copy_file(base / name, dest / name)
            kept.add(name)
    for shared in git_dir.glob("sharedindex.*"):  # a split index keeps its entries here
        copied += _copy_file(shared, dest / shared.name)
        kept.add(shared.name)
    entries = filtered_config(common / "config")
    if git_dir != common:  # a linked worktree's copy is a plain repository of its own
        entries = [(k, v) for k, v in entries if k.lower() != "core.bare"]
    write_config(dest / "config", entries + (extra_config or []))
    modules = common / "modules"
    if modules.is_dir():
        kept.add("modules")
        (dest / "modules").mkdir(exist_ok=True)
        done: list[Path] = []
        for head in sorted(modules.rglob("HEAD")):  # a submodule's git dir: modules/<name>, name may hold '/'
            module = head.parent
            rel = module.relative_to(modules)
            if not (module / "objects").is_dir() or any(rel.is_relative_to(d) for d in done):
                continue  # not a git dir (refs/.../HEAD), or a nested module its parent's copy covers
            done.append(rel)
            worktree = _module_worktree(module)
            copied += _sanitize(module, module, dest / "modules" / rel,
                                [("core.worktree", worktree)] if worktree else [])
        for entry in (dest / "modules").iterdir():  # submodules an earlier copy had
            if not any(rel.parts[0] == entry.name for rel in done):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for entry in dest.iterdir():  # anything an earlier copy left that is no longer wanted
        if entry.name not in kept:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return copied


def _module_worktree(module: Path) -> str:
    """A submodule git dir's core.worktree, when relative (an absolute one points outside the context)."""
    proc = run_git(["config", "--file", str(module / "config"), "core.worktree"])
    value = proc.stdout.strip()
    return value if value and not os.path.isabs(value) else ""


def link_tree(src: Path, dest: Path) -> int:
    """Make ``dest`` a copy of ``src`` by hard links (a copy across file systems); returns the file count.
    ``dest`` is replaced as a whole: it is a view of ``src``, which carries the incremental state."""
    src, dest = Path(src), Path(dest)
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.exists():
        shutil.rmtree(dest)
    count = 0
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            source, target = Path(root) / name, dest / rel / name
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
            count += 1
    return count
