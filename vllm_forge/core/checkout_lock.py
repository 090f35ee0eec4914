"""One writer per checkout at a time; readers never touch a running writer's files.

A writer is a command that changes a checkout: the steps in ``WRITER_STEPS`` (clone, patch,
use-existing-torch, build-wheel), and any real run that refreshes the embedded miniature's private copy
under ``build/private-src/`` (``pipeline.resolve_settings``). It holds an exclusive ``flock`` on a file
next to the checkout, ``<parent>/.<name>.vllm-forge.lock`` (next to it, not in it: a clone does not exist
yet, and a private copy is replaced file by file), and writes its pid and command line there, so a second
writer is refused at once, in one line that names the running one. The kernel drops a lock with its
process, so a killed run never leaves a stale one.

Readers (``plan``, ``inspect-tree``, dry runs) take nothing. For the private copy, which only a refresh
writes, a reader refreshes it only when no writer holds it, and otherwise reads it as it is: the second
file, ``.<name>.vllm-forge.sync``, is held (briefly, blocking) by whoever refreshes or checks, so a writer
that starts during a reader's refresh waits for it instead of being refused.

A process's locks are re-entrant (a task's pipeline and the build it runs take the same lock) and are
released by ``release_all`` when the task ends (``forge_task`` in tasks.py), which removes the lock files
(nothing is left next to the checkout), or when the process exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from vllm_forge.core.errors import ForgeError
from vllm_forge.core.nofollow import open_nofollow, remove

# The steps that change the checkout they run on.
WRITER_STEPS = ("clone", "patch", "use-existing-torch", "build-wheel")
LOCK_SUFFIX = ".vllm-forge.lock"
SYNC_SUFFIX = ".vllm-forge.sync"

_held: dict[Path, IO[str]] = {}  # this process's writer locks, by lock file


def lock_path(checkout: Path, suffix: str = LOCK_SUFFIX) -> Path:
    """The lock file of ``checkout``: next to it, named after it (the same file for every spelling of
    the path, symlinked parents included); inside it when its parent is not writable (a mounted checkout)."""
    checkout = Path(checkout).expanduser().absolute()
    parent = checkout.parent.resolve()
    if parent.is_dir() and not os.access(parent, os.W_OK) and checkout.is_dir():
        return checkout.resolve() / f".{suffix.lstrip('.')}"
    return parent / f".{checkout.name}{suffix}"


def this_command() -> str:
    """This process's command line as the user typed it (``invoke build-wheel ...``), credentials masked."""
    from vllm_forge.core.plan import mask_urls

    argv = list(sys.argv) or ["?"]
    first = Path(argv[0])
    name = "invoke" if first.name in ("invoke", "inv") or first.parent.name == "invoke" else first.name
    return mask_urls(shlex.join([name, *argv[1:]]))


def holder(checkout: Path) -> str:
    """Who holds ``checkout``'s writer lock, as written in its lock file (``pid N: invoke ...``)."""
    try:
        record = json.loads(lock_path(checkout).read_text() or "{}")
    except (OSError, ValueError):
        record = {}
    pid = record.get("pid", "?")
    return f"pid {pid}: {record['command']}" if record.get("command") else f"pid {pid}"


def held_by_me(checkout: Path) -> bool:
    return lock_path(checkout) in _held


def hold(checkout: Path) -> bool:
    """Take ``checkout``'s writer lock for this process (until ``release``/``release_all``); True when this
    call took it, False when this process already held it. Another writer's lock: one line naming it."""
    taken = _acquire(checkout)
    if taken is None:
        raise ForgeError(f"{checkout} is in use by another vllm-forge run ({holder(checkout)})",
                         "wait for it to finish (or stop it), or work on a separate checkout "
                         "(--vllm-src PATH or --checkout-dir DIR)")
    return taken


def _acquire(checkout: Path) -> bool | None:
    """True: taken now; False: this process holds it already; None: another process holds it."""
    path = lock_path(checkout)
    if path in _held:
        return False
    handle = _lock(path, wait=False)
    if handle is None:
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "command": this_command()}))
    handle.flush()
    _held[path] = handle
    return True


def _lock(path: Path, *, wait: bool) -> IO[str] | None:
    """An exclusive flock on the file ``path`` (made when missing); None when another process holds it and
    not ``wait``. A holder removes the file when it lets go (nothing is left next to a user's checkout), so
    a lock taken on a file that is no longer the one at ``path`` is let go and taken again."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():  # one planted there: truncating "the lock" would truncate its target
            remove(path)
        handle = os.fdopen(open_nofollow(path, os.O_RDWR | os.O_CREAT), "r+")  # closed by _unlock()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            return None
        try:
            current = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return handle
        handle.close()


def _unlock(path: Path, handle: IO[str]) -> None:
    path.unlink(missing_ok=True)  # while still holding it: see _lock
    handle.close()


def release(checkout: Path) -> None:
    path = lock_path(checkout)
    handle = _held.pop(path, None)
    if handle is not None:
        _unlock(path, handle)


def release_all() -> None:
    for path in list(_held):
        _unlock(path, _held.pop(path))


@contextlib.contextmanager
def holding(checkout: Path) -> Iterator[None]:
    """The writer lock of ``checkout`` for the ``with`` block (kept when this process held it already)."""
    taken = hold(checkout)
    try:
        yield
    finally:
        if taken:
            release(checkout)


@contextlib.contextmanager
def refreshing(checkout: Path) -> Iterator[None]:
    """The short lock every refresh of ``checkout`` (and every check of whether one may happen) holds."""
    path = lock_path(checkout, SYNC_SUFFIX)
    handle = _lock(path, wait=True)  # a refresh takes well under a second; Ctrl-C still interrupts
    try:
        yield
    finally:
        _unlock(path, handle)


def refresh_copy(source: Path, copy: Path, sync: Callable[[Path, Path], object], *, writes: bool) -> str:
    """Make ``copy`` a fresh copy of ``source`` with ``sync`` unless a writer works in it. A writer keeps the
    copy's lock until its task ends; a reader takes it only for the refresh. Returns "", or, for a reader that
    found a writer there, what it reads instead (the copy as that writer left it)."""
    with refreshing(copy):
        if writes:
            hold(copy)
            sync(source, copy)
            return ""
        taken = _acquire(copy)
        if taken is None:
            return f"in use by {holder(copy)}: read as that run left it, not refreshed"
        try:
            sync(source, copy)
        finally:
            if taken:
                release(copy)
        return ""
