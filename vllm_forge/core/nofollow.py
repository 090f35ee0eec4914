"""File operations that never follow a symlink, for what vllm-forge writes or deletes under its own
directories (``build/``, ``dist/``, caches) and its logs.

A link planted inside one of those (``build/bake/git/vllm -> ~``, ``build/bake/.bake.lock -> ~/.bashrc``,
a command log in ``/tmp`` made a link by another user) must not turn a write, a truncation or a
clean-up into one on the link's target. So: a file is opened with ``O_NOFOLLOW`` or made next to its
place and renamed over it (a rename replaces a link, never writes through it); a directory that must
be real replaces whatever link or file is in its place; removal unlinks a link itself. The directories
you name (``--context-dir``, ``--dist-dir``, the cache root) may themselves be links: you chose them;
what is inside them is never followed. Containment is judged on resolved paths (``realpath``).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

from vllm_forge.core.errors import ForgeError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def link_refused(path: Path | str, what: str = "") -> ForgeError:
    return ForgeError(
        f"{what or path} is a symlink (to {os.readlink(path) if os.path.islink(path) else '?'}): vllm-forge never "
        "writes through one, since a link planted there would send the write elsewhere",
        f"remove the link ({path}); it is made again as a regular file",
    )


def open_nofollow(path: Path | str, flags: int, mode: int = 0o644, what: str = "") -> int:
    """``os.open`` that refuses (ForgeError) to open a symlink at ``path``."""
    try:
        return os.open(path, flags | _NOFOLLOW, mode)
    except OSError as err:
        if err.errno == errno.ELOOP or (err.errno == errno.EEXIST and os.path.islink(path)):
            raise link_refused(path, what) from None
        raise


def append_text(path: Path | str, text: str, *, what: str = "", mode: int = 0o600) -> None:
    """Append ``text`` to ``path`` (created with ``mode``), never through a link."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode, what)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(text)


def open_append(path: Path | str, *, what: str = "", mode: int = 0o644):
    """A text file object appending to ``path``, never through a link."""
    fd = open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode, what)
    return os.fdopen(fd, "a", encoding="utf-8")


def write_file(path: Path | str, data: bytes | str, *, mode: int = 0o644) -> None:
    """Make ``path`` hold ``data``: written to a new file next to it, then renamed over whatever is there
    (a link at ``path`` is replaced, never written through)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.forge-partial")
    remove(partial)
    fd = open_nofollow(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        os.replace(partial, path)
    except BaseException:
        remove(partial)
        raise


def copy_file(source: Path | str, target: Path | str) -> None:
    """Copy the regular file ``source`` (a link there is refused) to ``target`` by write-and-rename,
    keeping its mode and times."""
    source, target = Path(source), Path(target)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    partial = target.with_name(f".{target.name}.forge-partial")
    remove(partial)
    src_fd = open_nofollow(source, os.O_RDONLY)
    try:
        info = os.fstat(src_fd)
        if not stat.S_ISREG(info.st_mode):
            raise ForgeError(f"{source} is not a regular file", "remove it, or replace it with the file it stands for")
        dst_fd = open_nofollow(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IMODE(info.st_mode) | 0o200)
        with os.fdopen(dst_fd, "wb") as out, os.fdopen(os.dup(src_fd), "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        os.chmod(partial, stat.S_IMODE(info.st_mode))
        os.utime(partial, ns=(info.st_atime_ns, info.st_mtime_ns))
        os.replace(partial, target)
    except BaseException:
        remove(partial)
        raise
    finally:
        os.close(src_fd)


def remove(path: Path | str) -> None:
    """Remove ``path``: a link itself (never its target), a file, or a directory tree (links inside it unfollowed)."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def real_dir(path: Path | str) -> Path:
    """``path`` as a real directory: a link (or file) in its place is removed first, never followed."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(exist_ok=True)
    return path


def real_dirs(root: Path | str, rel: Path | str) -> Path:
    """``root/rel`` with ``root`` made as given (it may be a link you chose) and every directory below it
    real (``real_dir``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root
    for part in Path(rel).parts:
        path = real_dir(path / part)
    return path


def is_inside(path: Path | str, root: Path | str) -> bool:
    """Whether ``path`` resolves (every link followed, as the kernel would) to ``root`` or below it."""
    resolved, base = os.path.realpath(path), os.path.realpath(root)
    return resolved == base or resolved.startswith(base.rstrip(os.sep) + os.sep)
