"""The compile units running now in a build dir, read from ``/proc`` (Linux): ninja names a unit only when it
finishes, so a unit that compiles for ten minutes is invisible in its output. The processes ninja starts run with
the build dir as their working directory and name their object (``-o CMakeFiles/<target>.dir/<path>.o``); nvcc's
children (cicc, ptxas, ...) and a compiler wrapper share that directory, and the ones that name the object are
counted once, aged from the oldest. Where there is no ``/proc`` (macOS) or a process vanishes mid-read, the
answer is simply shorter: this never raises.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vllm_forge.build import ninja_log

MAX_PROCESSES = 20_000  # /proc entries looked at per call: the work stays bounded on a crowded host
# `-o CMakeFiles/_C.dir/csrc/x.cu.o` or `-oCMakeFiles/...`, alone or inside a `/bin/sh -c "..."` argument
_OUTPUT = re.compile(r"(?:^|\s)-o\s*(\S*CMakeFiles/[^/\s]+\.dir/\S+?\.(?:o|obj))(?=\s|$)")


@dataclass(frozen=True)
class RunningUnit:
    output: str  # the object, as the command names it (``CMakeFiles/_C.dir/csrc/x.cu.o``)
    seconds: float  # how long its oldest process has been running

    @property
    def target(self) -> str:
        return ninja_log.target_of(self.output)

    @property
    def source(self) -> str:
        return ninja_log.source_of(self.output)


def running_units(build_dir: Path | str | None, proc_root: Path | str = "/proc") -> list[RunningUnit]:
    """The units compiling in ``build_dir`` now, longest-running first; [] without /proc."""
    if build_dir is None:
        return []
    proc = Path(proc_root)
    try:
        wanted = os.path.realpath(build_dir)
        now = _uptime(proc)
        names = os.listdir(proc)
    except (OSError, ValueError):
        return []
    ticks = _clock_ticks()
    oldest: dict[str, float] = {}
    for name in names[:MAX_PROCESSES]:
        if not name.isdigit():
            continue
        found = _unit_of(proc / name, wanted)
        if found is None:
            continue
        started = _start_seconds(proc / name, ticks)
        if started is None:
            continue
        output, age = found, max(0.0, now - started)
        oldest[output] = max(age, oldest.get(output, 0.0))
    return sorted((RunningUnit(o, s) for o, s in oldest.items()), key=lambda u: (-u.seconds, u.output))


def _unit_of(pid_dir: Path, build_dir: str) -> str | None:
    """The object a process in ``build_dir`` compiles, or None (another dir, no object, gone, not ours to read)."""
    try:
        if os.path.realpath(os.readlink(pid_dir / "cwd")) != build_dir:
            return None
        argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    match = _OUTPUT.search(" ".join(a.decode("utf-8", errors="replace") for a in argv))
    return match.group(1) if match else None


def _start_seconds(pid_dir: Path, ticks: int) -> float | None:
    """When the process started, in seconds since boot (/proc/PID/stat's 22nd field)."""
    try:
        stat = (pid_dir / "stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # the name in (...) may hold spaces and parentheses
        return int(fields[19]) / ticks
    except (OSError, ValueError, IndexError):
        return None


def _uptime(proc: Path) -> float:
    return float((proc / "uptime").read_text().split()[0])


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK") or 100
    except (ValueError, OSError, AttributeError):
        return 100
