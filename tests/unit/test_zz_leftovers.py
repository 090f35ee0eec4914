"""The session's cleanup (tests/conftest.py) sees what a test leaves: a process started and not stopped."""

from __future__ import annotations

import os
import signal
import subprocess

from tests import conftest


def test_snapshot_sees_a_new_process(tmp_path):
    sccache = tmp_path / "sccache"  # a process named like a compile-cache server
    sccache.write_text("#!/bin/sh\nsleep 30\n")
    sccache.chmod(0o755)
    before = conftest._snapshot()["pids"]
    proc = subprocess.Popen([str(sccache)], start_new_session=True)
    try:
        import time

        time.sleep(0.3)
        assert str(proc.pid) in conftest._snapshot()["pids"] - before
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the shell and its sleep
        proc.wait()


def test_snapshot_leaves_out_a_process_that_has_exited(tmp_path):
    """A zombie (a farm daemon killed after its starter exited waits for init to reap it) holds nothing."""
    import shutil

    sccache = tmp_path / "sccache-dist"  # `sleep` under a farm daemon's name
    shutil.copy(shutil.which("sleep"), sccache)
    proc = subprocess.Popen([str(sccache), "30"])
    try:
        import time

        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)  # not waited for yet: a zombie until proc.wait()
        for _ in range(50):
            if open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.05)
        assert str(proc.pid) not in conftest._snapshot()["pids"]
    finally:
        proc.wait()
