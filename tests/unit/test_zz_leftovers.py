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
