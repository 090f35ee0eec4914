"""One writer per checkout, and readers that never touch a running writer's files (vllm_forge/core/checkout_lock.py).

The other writer is a real second process: flock locks are per process, so only one can show a refusal."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from vllm_forge.core import checkout_lock
from vllm_forge.core.errors import ForgeError

REPO = Path(__file__).resolve().parents[2]

HOLDER = """
import sys, time
sys.argv = ["/usr/local/bin/invoke", "build-wheel", "--vllm-src", "x", "--repo", "https://u:secret@host/v.git"]
from vllm_forge.core import checkout_lock
checkout_lock.hold({checkout!r})
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def other_writer(tmp_path):
    """Start a process that holds the writer lock of tmp_path/co; yields (checkout, process)."""
    checkout = tmp_path / "co"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(checkout=str(checkout))],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield checkout, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_is_refused_in_one_line_naming_the_first(other_writer):
    checkout, proc = other_writer
    with pytest.raises(ForgeError) as err:
        checkout_lock.hold(checkout)
    assert str(err.value) == (
        f"{checkout} is in use by another vllm-forge run (pid {proc.pid}: invoke build-wheel --vllm-src x --repo "
        "https://u:****@host/v.git). Fix: wait for it to finish (or stop it), or work on a separate checkout "
        "(--vllm-src PATH or --checkout-dir DIR).")
    assert not checkout_lock.held_by_me(checkout)


def test_the_lock_goes_with_its_process(other_writer):
    checkout, proc = other_writer
    proc.kill()
    proc.wait()
    try:
        assert checkout_lock.hold(checkout) is True
        assert checkout_lock.hold(checkout) is False  # re-entrant within a process
        assert checkout_lock.holder(checkout).startswith(f"pid {checkout_lock.os.getpid()}: ")
    finally:
        checkout_lock.release_all()


def test_the_lock_file_sits_next_to_the_checkout_for_every_spelling(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert checkout_lock.lock_path(tmp_path / "real" / "vllm") == tmp_path / "real" / ".vllm.vllm-forge.lock"
    assert checkout_lock.lock_path(tmp_path / "link" / "vllm") == tmp_path / "real" / ".vllm.vllm-forge.lock"


def test_a_checkout_in_a_read_only_parent_keeps_its_lock_inside(tmp_path, monkeypatch):
    """A checkout on a mount whose parent this user cannot write (root can write anywhere: simulated)."""
    (tmp_path / "mnt" / "vllm").mkdir(parents=True)
    monkeypatch.setattr(checkout_lock.os, "access", lambda path, mode: Path(path) != tmp_path / "mnt")
    assert checkout_lock.lock_path(tmp_path / "mnt" / "vllm") == tmp_path / "mnt" / "vllm" / ".vllm-forge.lock"
    assert checkout_lock.lock_path(tmp_path / "mnt" / "new") == tmp_path / "mnt" / ".new.vllm-forge.lock"  # a clone


def _sync_marking(calls: list):
    def sync(source: Path, copy: Path) -> None:
        calls.append((source, copy))
        copy.mkdir(parents=True, exist_ok=True)
        (copy / "synced").write_text(str(time.time()))

    return sync


def test_a_reader_leaves_a_copy_a_writer_holds_as_it_is(other_writer, tmp_path):
    checkout, proc = other_writer
    calls: list = []
    note = checkout_lock.refresh_copy(tmp_path / "src", checkout, _sync_marking(calls), writes=False)
    assert calls == [] and note == (f"in use by pid {proc.pid}: invoke build-wheel --vllm-src x --repo "
                                    "https://u:****@host/v.git: read as that run left it, not refreshed")
    with pytest.raises(ForgeError, match="is in use by another vllm-forge run"):
        checkout_lock.refresh_copy(tmp_path / "src", checkout, _sync_marking(calls), writes=True)
    assert calls == []


def test_a_reader_refreshes_a_free_copy_and_keeps_no_lock(tmp_path):
    calls: list = []
    copy = tmp_path / "copy"
    assert checkout_lock.refresh_copy(tmp_path / "src", copy, _sync_marking(calls), writes=False) == ""
    assert calls == [(tmp_path / "src", copy)] and not checkout_lock.held_by_me(copy)
    try:
        assert checkout_lock.refresh_copy(tmp_path / "src", copy, _sync_marking(calls), writes=True) == ""
        assert checkout_lock.held_by_me(copy)  # a writer keeps it until its task ends
    finally:
        checkout_lock.release_all()
    assert not checkout_lock.held_by_me(copy)


def test_nothing_is_left_next_to_the_checkout(tmp_path):
    """The lock files go with the run that made them: a user's directory keeps only their checkout."""
    checkout = tmp_path / "vllm"
    checkout.mkdir()
    checkout_lock.refresh_copy(tmp_path / "src", checkout, lambda source, copy: None, writes=True)
    assert checkout_lock.lock_path(checkout).is_file()
    checkout_lock.release_all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vllm"]


def test_a_lock_on_a_file_its_holder_removed_is_taken_again(tmp_path, monkeypatch):
    """Between opening the lock file and locking it, its holder may let go and remove it: the lock then taken
    is on a file nobody else will look at, so it is taken again on the file now at that path."""
    path = tmp_path / ".vllm.vllm-forge.lock"
    opened = []
    real_open = checkout_lock.open_nofollow

    def open_then_lose_it(file, *args, **kwargs):
        fd = real_open(file, *args, **kwargs)
        if not opened:  # the first time: the holder removes the file right after we opened it
            Path(file).unlink()
        opened.append(file)
        return fd

    monkeypatch.setattr(checkout_lock, "open_nofollow", open_then_lose_it)
    handle = checkout_lock._lock(path, wait=False)
    try:
        assert len(opened) == 2 and path.is_file()
        assert checkout_lock.os.fstat(handle.fileno()).st_ino == path.stat().st_ino
    finally:
        checkout_lock._unlock(path, handle)
