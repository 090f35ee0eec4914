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

Only regular files that physically lie inside the checkout's own git directory are taken. A tree is
someone else's: ``objects/info/alternates`` naming ``~/.ssh`` (or another, private repository), a
``.git`` file or ``commondir`` pointing out of the checkout, and a symlinked ``packed-refs``, ``HEAD``,
``index`` or object would carry host files into the image; each is refused in one line naming it.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from vllm_forge.core.errors import ForgeError
from vllm_forge.core.git_safe import run_git
from vllm_forge.core.nofollow import copy_file, is_inside, open_nofollow, real_dir, real_dirs, remove

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


def strip_userinfo(url: str) -> str:
    """``https://user:pw@host/x`` (any letter case) -> ``https://host/x``, secret query parameters dropped
    too: the one rule of vllm_forge/core/credentials.py."""
    from vllm_forge.core.credentials import strip_credentials

    return strip_credentials(url)


def public_url(url: str) -> str:
    """A remote URL as it may appear in a build context: no user info; for http(s) no query or
    fragment either (``?private_token=...``). scp-like ``git@host:org/repo`` keeps its login name,
    which is not a secret (the key is)."""
    url = strip_userinfo(url)
    if re.match(r"^https?://", url, re.IGNORECASE):
        url = re.split(r"[?#]", url, maxsplit=1)[0]
    return url


def _refuse(path: Path, what: str, fix: str) -> ForgeError:
    return ForgeError(f"{path} {what}: its build context would take files from outside the checkout", fix)


_LINK_FIX = "replace the link with the file it stands for, or clone the checkout afresh (git clone)"


def _plain_file(path: Path) -> bool:
    """Whether ``path`` is a regular file (False: absent); a link or a device, fifo or socket is refused."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(path, f"is a symlink to {os.readlink(path)}", _LINK_FIX)
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(path, "is not a regular file", "remove it from the checkout's git directory")
    return True


def _pointer(path: Path, pattern: str, checkout: Path) -> Path:
    """The directory a ``gitdir:`` / ``commondir`` file names, which must lie inside ``checkout``."""
    text = path.read_text(errors="replace").strip()
    match = re.match(pattern, text)
    target = (path.parent / (match.group(1).strip() if match else text)).resolve()
    if not is_inside(target, checkout):
        raise _refuse(path, f"points at {target}, outside {checkout}",
                      "bake from the main checkout, or from a clone of its own (git clone); a linked worktree or "
                      "a submodule checkout keeps its history outside itself")
    if not target.is_dir():
        raise ForgeError(f"{path} points at {target}, which is not a directory",
                         "fix or remove the pointer, or clone the checkout afresh")
    return target


def git_dirs(checkout: Path, within: Path | None = None) -> tuple[Path, Path] | None:
    """(git dir, common dir) of a checkout; None without git. Both must lie inside the checkout (or inside
    ``within``, the repository a submodule checkout belongs to: its git dir is that one's .git/modules/...):
    a ``.git`` link, or a ``gitdir:`` / ``commondir`` pointer out of it (a linked worktree), is refused."""
    checkout = Path(checkout).resolve()
    root = Path(within).resolve() if within is not None else checkout
    dot_git = checkout / ".git"
    if dot_git.is_symlink():
        raise _refuse(dot_git, f"is a symlink to {os.readlink(dot_git)}", _LINK_FIX)
    if dot_git.is_dir():
        git_dir = dot_git
    elif _plain_file(dot_git):
        git_dir = _pointer(dot_git, r"gitdir:\s*(.+)", root)
    else:
        return None
    common = git_dir
    if _plain_file(git_dir / "commondir"):  # a worktree layout: objects and refs live in the common dir
        common = _pointer(git_dir / "commondir", r"(.+)", root)
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
    real_dir(path.parent)
    partial = path.with_name(path.name + ".partial")
    remove(partial)
    os.close(open_nofollow(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    for key, value in entries:
        proc = run_git(["config", "--file", str(partial), "--add", key, value])
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    if path.is_file() and not path.is_symlink() and path.read_bytes() == partial.read_bytes():
        partial.unlink()  # unchanged: keep its mtime, so the context does not look changed
        return
    os.replace(partial, path)


_SMALL = 1 << 20  # git rewrites refs, HEAD, index, commit-graph in place, often at the same size


def _copy_file(source: Path, target: Path) -> int:
    """Copy one regular file unless ``target`` already is a copy of it; 1 if copied. Size and mtime to the
    nanosecond decide, and the bytes too for small files: a ref moved within the same second keeps
    its size. The copy is a new inode renamed into place (never written through a link at ``target``;
    a context hard-linked to the old one stays as it was)."""
    try:
        st, tt = source.lstat(), target.lstat()
        if stat.S_ISREG(tt.st_mode) and st.st_size == tt.st_size and st.st_mtime_ns == tt.st_mtime_ns and (
            st.st_size > _SMALL or source.read_bytes() == target.read_bytes()
        ):
            return 0
    except FileNotFoundError:
        pass
    copy_file(source, target)
    return 1


def _sync_dir(src: Path, dest: Path, skip: Callable[[Path], bool] = lambda rel: False) -> int:
    """Make ``dest`` a copy of the git-internal tree ``src``: regular files only, every one of them inside
    ``src`` itself (a symlink anywhere, file or directory, is refused by name)."""
    if src.is_symlink():
        raise _refuse(src, f"is a symlink to {os.readlink(src)}", _LINK_FIX)
    real_dir(dest)
    copied = 0
    wanted: set[Path] = set()
    for root, dirs, files in os.walk(src):
        rel_root = Path(root).relative_to(src)
        for name in dirs:  # os.walk lists a directory link here and does not enter it
            if (Path(root) / name).is_symlink():
                raise _refuse(Path(root) / name, f"is a symlink to {os.readlink(Path(root) / name)}", _LINK_FIX)
            real_dir(dest / rel_root / name)
        for name in files:
            rel = rel_root / name
            if not skip(rel) and _plain_file(Path(root) / name):
                wanted.add(rel)
                copied += _copy_file(src / rel, dest / rel)
    for root, dirs, files in os.walk(dest, topdown=False):
        rel_root = Path(root).relative_to(dest)
        for name in files:
            if rel_root / name not in wanted:
                (Path(root) / name).unlink()
        for name in dirs:
            path = Path(root) / name
            if path.is_symlink():
                path.unlink()
            elif not any(path.iterdir()):
                path.rmdir()
    return copied


_ALTERNATES = ("info/alternates", "info/http-alternates")


def sanitize_git_dir(checkout: Path, dest: Path) -> int:
    """Make ``dest`` a credential-free git dir for ``checkout`` (see the module docstring),
    incrementally; returns how many files were copied. ``dest`` is made a real directory (a link
    planted there is removed, never followed)."""
    found = git_dirs(checkout)
    if found is None:
        remove(dest)
        return 0
    git_dir, common = found
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    return _sanitize(git_dir, common, real_dir(Path(dest)))


def _sanitize(git_dir: Path, common: Path, dest: Path, extra_config: list[tuple[str, str]] | None = None) -> int:
    for rel in _ALTERNATES:
        borrowed = common / "objects" / rel
        if _plain_file(borrowed) and any(line.strip() and not line.startswith("#")
                                         for line in borrowed.read_text(errors="replace").splitlines()):
            raise _refuse(borrowed, "borrows objects from another repository (git clone --reference / --shared)",
                          f"make the checkout self-contained: git --git-dir {common} repack -a -d, then remove "
                          "objects/info/alternates (or clone it again with --dissociate)")
    copied = 0
    kept = {"objects", "refs", "config", "HEAD"}
    copied += _sync_dir(common / "objects", dest / "objects", skip=lambda rel: rel.as_posix() in _ALTERNATES)
    copied += _sync_dir(common / "refs", dest / "refs")  # an empty refs/ too: git wants it
    if (common / "reftable").is_dir() or (common / "reftable").is_symlink():
        copied += _sync_dir(common / "reftable", dest / "reftable")
        kept.add("reftable")
    for name, base in (("packed-refs", common), ("shallow", common), ("HEAD", git_dir), ("index", git_dir)):
        if _plain_file(base / name):
            copied += _copy_file(base / name, dest / name)
            kept.add(name)
    for shared in git_dir.glob("sharedindex.*"):  # a split index keeps its entries here
        if _plain_file(shared):
            copied += _copy_file(shared, dest / shared.name)
            kept.add(shared.name)
    entries = filtered_config(common / "config") if _plain_file(common / "config") else []
    if git_dir != common:  # a worktree layout's copy is a plain repository of its own
        entries = [(k, v) for k, v in entries if k.lower() != "core.bare"]
    write_config(dest / "config", entries + (extra_config or []))
    modules = common / "modules"
    if modules.is_dir() or modules.is_symlink():
        kept.add("modules")
        real_dir(dest / "modules")
        done: list[Path] = []
        for module in _module_dirs(modules):  # a submodule's git dir: modules/<name>, name may hold '/'
            rel = module.relative_to(modules)
            if any(rel.is_relative_to(d) for d in done):
                continue  # a nested module its parent's copy covers
            done.append(rel)
            worktree = _module_worktree(module)
            copied += _sanitize(module, module, real_dirs(dest / "modules", rel),
                                [("core.worktree", worktree)] if worktree else [])
        for entry in (dest / "modules").iterdir():  # submodules an earlier copy had
            if not any(rel.parts[0] == entry.name for rel in done):
                remove(entry)
    for entry in dest.iterdir():  # anything an earlier copy left that is no longer wanted
        if entry.name not in kept:
            remove(entry)
    return copied


def _module_dirs(modules: Path) -> list[Path]:
    """The git dirs under ``modules/`` (a directory with HEAD and objects/), links refused by name."""
    if modules.is_symlink():
        raise _refuse(modules, f"is a symlink to {os.readlink(modules)}", _LINK_FIX)
    found = []
    for root, dirs, _files in os.walk(modules):
        for name in dirs:
            if (Path(root) / name).is_symlink():
                raise _refuse(Path(root) / name, f"is a symlink to {os.readlink(Path(root) / name)}", _LINK_FIX)
        if Path(root) != modules and (Path(root) / "HEAD").is_file() and (Path(root) / "objects").is_dir():
            found.append(Path(root))
            dirs[:] = [d for d in dirs if d == "modules"]  # a nested submodule's git dir lives in modules/
    return sorted(found)


def _module_worktree(module: Path) -> str:
    """A submodule git dir's core.worktree, when relative (an absolute one points outside the context)."""
    proc = run_git(["config", "--file", str(module / "config"), "core.worktree"])
    value = proc.stdout.strip()
    return value if value and not os.path.isabs(value) else ""


def link_tree(src: Path, dest: Path) -> int:
    """Make ``dest`` a copy of ``src`` by hard links (a copy across file systems); returns the file count.
    ``dest`` is replaced as a whole: it is a view of ``src``, which carries the incremental state."""
    src, dest = Path(src), Path(dest)
    remove(dest)
    count = 0
    for root, _dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        real_dir(dest / rel)
        for name in files:
            source, target = Path(root) / name, dest / rel / name
            try:
                os.link(source, target, follow_symlinks=False)
            except OSError:
                copy_file(source, target)
            count += 1
    return count
