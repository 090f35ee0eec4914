"""Unpack a tarball, or copy a directory, that someone else made, without letting it write outside the
destination, plant a device or fill the disk.

Both go through one writer that checks every entry before it writes it: no absolute names and no
``..``; nothing written through a symlink (a name whose directory is a symlink unpacked earlier is
refused); symlinks only relative, with ``..`` only at their start and never above the tree's root;
hard links only to files unpacked before them; no devices, FIFOs or sockets; no name twice. The bytes
written are charged to a ``Budget`` from each entry's declared size before its data is read, and a
file never gets more than it declared. Modes keep only the executable bit (0644 / 0755); owners are
never set. A refusal raises ForgeError naming the entry; the destination is always a new private
directory, which the caller removes.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vllm_forge.core.errors import ForgeError

DEFAULT_MAX_SIZE = 8 << 30  # per imported file: ~6x what vLLM 0.26.0's eight dependencies take with git data
MAX_ENTRIES = 1_000_000  # a tarball of empty files compresses to nothing but costs an inode each
FREE_RESERVE = 512 << 20  # left free on the destination's disk, whatever the budget says
_CHUNK = 1 << 20


def format_size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


@dataclass
class Budget:
    """What one import may write: ``limit`` bytes and MAX_ENTRIES entries."""

    limit: int
    why: str  # where the limit comes from, for the refusal: "--max-size 8.0 GiB"
    fix: str
    used: int = 0
    entries: int = 0

    def take(self, size: int, what: str) -> None:
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise ForgeError(f"{what} holds more than {MAX_ENTRIES:,} entries, more than an import takes (a tar bomb, "
                             "or not a source tree)", "check where it comes from; import the source tree alone")
        if self.used + size > self.limit:
            raise ForgeError(f"{what} would unpack more than {self.why} (a tar bomb, or a very large archive)",
                             self.fix)
        self.used += size


def budget_for(dest_parent: Path, max_size: int) -> Budget:
    """The budget of one import into ``dest_parent``: ``max_size``, or the disk's free space (less a
    reserve) when that is smaller."""
    free = shutil.disk_usage(dest_parent).free - FREE_RESERVE
    if free < max_size:
        return Budget(max(free, 0), f"the {format_size(max(free, 0))} free on {dest_parent} (keeping "
                      f"{format_size(FREE_RESERVE)})", "free space there, or point --cache-dir at a disk with room")
    return Budget(max_size, f"--max-size {format_size(max_size)}",
                  f"if you trust it, pass --max-size {-(-max_size * 2 // (1 << 30))}G")


@dataclass(frozen=True)
class Unpacked:
    root: Path  # the tree: the destination, or its single top-level directory when that was stripped
    top: str  # the name of the stripped top-level directory ("" when none was)
    commit: str  # the commit a `git archive` tarball names in its pax header ("" when none)
    entries: int
    size: int


def _parts(name: str) -> list[str] | str:
    """The path components of an entry name, or why it is refused."""
    if "\0" in name:
        return "holds a NUL byte"
    if name.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", name):
        return "is an absolute path"
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        return "climbs out of the tree (..)"
    return parts


def _link_escape(parts: list[str], target: str) -> str:
    """Why the symlink at ``parts`` pointing at ``target`` is refused ("" when it is not)."""
    if not target or "\0" in target:
        return "is a symlink to nothing"
    if target.startswith("/"):
        return f"is a symlink to the absolute path {target}"
    steps = [step for step in target.split("/") if step not in ("", ".")]
    ups = 0
    while ups < len(steps) and steps[ups] == "..":
        ups += 1
    if ".." in steps[ups:]:  # a later .. could step out of a directory that is itself a symlink
        return f"is a symlink ({target}) with .. after a name"
    if ups > len(parts) - 1:
        return f"is a symlink ({target}) that points outside the tree"
    return ""


class _Writer:
    """Writes checked entries under ``dest`` (which it creates, and which must not exist)."""

    def __init__(self, dest: Path, budget: Budget, what: str):
        self.dest = dest
        self.budget = budget
        self.what = what
        self.files: set[str] = set()
        self.links: list[tuple[list[str], str]] = []
        self.dirs: set[str] = set()  # checked to be real directories
        dest.mkdir()

    def refuse(self, name: str, why: str) -> ForgeError:
        return ForgeError(f"{self.what}: {name!r} {why}",
                          "do not import it: ask for a plain source tree (`git archive`, or `tar -C DIR -cf FILE .`)")

    def _place(self, name: str) -> tuple[list[str], Path] | None:
        parts = _parts(name)
        if isinstance(parts, str):
            raise self.refuse(name, parts)
        if not parts:
            return None  # the root itself
        here = self.dest
        for depth, part in enumerate(parts[:-1]):
            here = here / part
            known = "/".join(parts[:depth + 1])
            if known in self.dirs:  # a real directory stays one: nothing may replace it (no name twice)
                continue
            if here.is_symlink():
                raise self.refuse(name, f"would be written through the symlink {here.relative_to(self.dest)}")
            if not here.exists():
                here.mkdir()
            elif not here.is_dir():
                raise self.refuse(name, f"would be written under the file {here.relative_to(self.dest)}")
            self.dirs.add(known)
        return parts, here / parts[-1]

    def add(self, name: str, kind: str, *, size: int = 0, mode: int = 0o644, mtime: float | None = None,
            link: str = "", read: Callable[[int], bytes] | None = None) -> None:
        """One entry: ``kind`` is "dir", "file", "symlink", "hardlink" or what else it is (refused)."""
        if kind not in ("dir", "file", "symlink", "hardlink"):
            raise self.refuse(name, f"is {kind}, which a source tree never holds")
        self.budget.take(size if kind == "file" else 0, self.what)
        placed = self._place(name)
        if placed is None:
            return
        parts, target = placed
        if os.path.lexists(target):
            if kind == "dir" and target.is_dir() and not target.is_symlink():
                return
            raise self.refuse(name, "appears twice")
        if kind == "dir":
            target.mkdir(mode=0o755)
        elif kind == "file":
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                         0o755 if mode & 0o111 else 0o644)
            with os.fdopen(fd, "wb") as out:
                left = size
                while left > 0 and read is not None:
                    chunk = read(min(left, _CHUNK))
                    if not chunk:
                        break
                    out.write(chunk)
                    left -= len(chunk)
            self.files.add("/".join(parts))
        elif kind == "symlink":
            why = _link_escape(parts, link)
            if why:
                raise self.refuse(name, why)
            os.symlink(link, target)
            self.links.append((parts, link))
        else:
            linked = _parts(link)
            if isinstance(linked, str) or "/".join(linked) not in self.files:
                raise self.refuse(name, f"is a hard link to {link!r}, which is not a file unpacked before it")
            os.link(self.dest.joinpath(*linked), target, follow_symlinks=False)
        if mtime is not None and kind == "file":
            os.utime(target, (mtime, mtime), follow_symlinks=False)

    def finish(self, commit: str = "", strip: Callable[[Path], bool] = lambda top: False) -> Unpacked:
        children = list(self.dest.iterdir())
        single = len(children) == 1 and children[0].is_dir() and not children[0].is_symlink() \
            and strip(children[0])
        for parts, link in self.links if single else ():  # the tree will be the top directory alone
            why = _link_escape(parts[1:], link)
            if why:
                raise self.refuse("/".join(parts), why.replace("the tree", "its top directory"))
        return Unpacked(children[0] if single else self.dest, children[0].name if single else "", commit,
                        self.budget.entries, self.budget.used)


_TAR_KINDS = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device", tarfile.FIFOTYPE: "a FIFO"}


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.isfile():
        return "file"
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    return _TAR_KINDS.get(member.type, f"an entry of tar type {member.type!r}")


def peek_tar(archive: Path, count: int = 3) -> list[str] | None:
    """The names of the first ``count`` entries of ``archive`` (any compression), None if it is not a tar."""
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            names = []
            for member in tar:
                names.append(member.name)
                if len(names) >= count:
                    break
            return names
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return None


def read_tar_member(archive: Path, wanted: str, limit: int = 1 << 20) -> bytes | None:
    """The content of regular file ``wanted`` if it is among the first entries of ``archive``."""
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for number, member in enumerate(tar):
                if member.name.lstrip("./") == wanted.lstrip("./") and member.isfile() and member.size <= limit:
                    handle = tar.extractfile(member)
                    return handle.read() if handle else None
                if number > 8:
                    return None
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return None
    return None


def unpack_tar(archive: Path, dest: Path, budget: Budget,
               strip: Callable[[Path], bool] = lambda top: True) -> Unpacked:
    """Unpack ``archive`` (.tar, .tar.gz, .tgz, .tar.xz, .tar.bz2) into the new directory ``dest``, in one
    streaming pass. When everything is inside one top-level directory and ``strip(it)`` says so, the
    tree is that directory (``python/`` alone in a tarball may be the tree's own first level)."""
    writer = _Writer(dest, budget, str(archive))
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                handle = tar.extractfile(member) if member.isfile() else None
                writer.add(member.name, _tar_kind(member), size=member.size if member.isfile() else 0,
                           mode=member.mode, mtime=member.mtime, link=member.linkname,
                           read=handle.read if handle else None)
            comment = str(tar.pax_headers.get("comment", ""))
    except (tarfile.TarError, EOFError, OSError, ValueError, lzma.LZMAError, zlib.error) as err:
        if isinstance(err, OSError) and err.errno is not None:
            raise  # a full or read-only disk: the task's disk-error line
        raise ForgeError(f"{archive} is not a readable tar file ({err or type(err).__name__})",
                         "check the file (it may be truncated); tarballs (.tar, .tar.gz, .tar.xz), git bundles and "
                         "directories can be imported") from None
    return writer.finish(comment if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", comment) else "", strip)


def _walk(root: Path, rel: str = "") -> Iterator[tuple[str, os.DirEntry]]:
    with os.scandir(root / rel if rel else root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            name = f"{rel}/{entry.name}" if rel else entry.name
            yield name, entry
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(root, name)


def _dir_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a FIFO or socket" if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else "an unknown kind of file"


def copy_tree(src: Path, dest: Path, budget: Budget) -> Unpacked:
    """Copy the directory ``src`` into the new directory ``dest`` by the same rules as a tarball."""
    writer = _Writer(dest, budget, str(src))
    for name, entry in _walk(src):
        info = entry.stat(follow_symlinks=False)
        kind = _dir_kind(info.st_mode)
        if kind == "file":
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as handle:
                writer.add(name, kind, size=info.st_size, mode=info.st_mode, mtime=info.st_mtime, read=handle.read)
        else:
            writer.add(name, kind, link=os.readlink(entry.path) if kind == "symlink" else "")
    return Unpacked(dest, "", "", budget.entries, budget.used)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(root: Path) -> str:
    """One digest of a directory tree: each entry's name, kind, executable bit, and content or link target."""
    digest = hashlib.sha256()
    for name, entry in _walk(root):
        info = entry.stat(follow_symlinks=False)
        kind = _dir_kind(info.st_mode)
        digest.update(f"{name}\0{kind}\0{int(bool(info.st_mode & 0o111))}\0".encode())
        if kind == "file":
            digest.update(bytes.fromhex(file_sha256(Path(entry.path))))
        elif kind == "symlink":
            digest.update(os.readlink(entry.path).encode())
    return digest.hexdigest()
