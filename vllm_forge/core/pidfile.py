"""Pid records for the processes vllm-forge starts detached (`serve --local`, the farm's sccache-dist
daemons): the pid, its start time and its executable, so a later `stop` signals only that very
process, never one that reused its pid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vllm_forge.core.nofollow import write_file


def process_identity(pid: int) -> tuple[str, str] | None:
    """(start time in clock ticks since boot, executable) of a live process; None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": the name may hold spaces
    if fields[0] == "Z":  # a zombie has exited; only its parent's wait is missing
        return None
    return fields[19], exe  # field 22 of proc(5): starttime


def write_pid_record(path: Path, pid: int, **extra: Any) -> None:
    """Record a started process: pid, start time and executable (plus ``extra`` facts for status)."""
    identity = process_identity(pid)
    record = {"pid": pid, "start_time": identity[0] if identity else "", "exe": identity[1] if identity else "",
              **extra}
    write_file(path, json.dumps(record) + "\n")  # a link planted at ``path`` is replaced, never written through


def read_pid_record(path: Path) -> dict | None:
    """The record in ``path`` as written by ``write_pid_record``; None when it is not one."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def recorded_process(path: Path, what: str = "server") -> tuple[int | None, str]:
    """The pid in ``path`` when that very process still runs (same start time and executable), else
    (None, why). An empty, bogus or stale record never names a process to signal."""
    record = read_pid_record(path)
    try:
        pid = record["pid"]
        start_time, exe = str(record["start_time"]), str(record["exe"])
    except (KeyError, TypeError):
        return None, f"{path} is not a record vllm-forge wrote: nothing was signalled"
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or pid == os.getpid():
        return None, f"{path} names pid {pid!r}, which is no {what} vllm-forge started: nothing was signalled"
    identity = process_identity(pid)
    if identity is None:
        return None, f"nothing to stop: the local {what} (pid {pid}) had already exited"
    if not start_time or identity != (start_time, exe):
        return None, f"pid {pid} is now another process (not the {what} started at that time): nothing was signalled"
    return pid, ""
