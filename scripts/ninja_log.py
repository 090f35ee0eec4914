"""Read ninja's own record of a build: ``.ninja_log`` (what was compiled, how long each unit took) and
the ``[k/N]`` status lines ninja prints.

``.ninja_log`` (format v5 to v7) has one tab-separated line per finished edge: start and end in ms since
that build started, the output's mtime, the output path, a command hash. Lines are appended as edges
finish, so a resumed build appends a second session whose times start again near zero; the last line
for an output is the one that counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_HEADER = re.compile(r"^# ninja log v(\d+)\s*$")
_TARGET = re.compile(r"(?:^|/)CMakeFiles/([^/]+)\.dir/(.+)$")
_PROGRESS = re.compile(r"^\s*\[(\d+)/(\d+)\]\s*(.*)$")


@dataclass(frozen=True)
class NinjaEntry:
    start_ms: int
    end_ms: int
    output: str
    session: int  # 0 for the first build recorded, 1 for the build that resumed it, ...

    @property
    def seconds(self) -> float:
        return max(0, self.end_ms - self.start_ms) / 1000

    @property
    def target(self) -> str:
        """The CMake target the output belongs to (``_C_stable_libtorch``); "" for links and the like."""
        match = _TARGET.search(self.output)
        return match.group(1) if match else ""

    @property
    def source(self) -> str:
        """The compiled file, as the object's path names it (``csrc/.../x.cu``); else the output."""
        match = _TARGET.search(self.output)
        if not match:
            return self.output
        return re.sub(r"\.(o|obj)$", "", match.group(2))


def parse_ninja_log(text: str) -> list[NinjaEntry]:
    """Every entry, in file order. Lines that are not entries (the header, torn last line) are skipped."""
    entries: list[NinjaEntry] = []
    session, last_end = 0, -1
    for line in text.splitlines():
        if not line or line.startswith("#"):
            if _HEADER.match(line) and entries:
                session += 1  # ninja rewrote the log (recompaction) and went on: a new session
                last_end = -1
            continue
        fields = line.split("\t")
        if len(fields) < 4 or not fields[0].isdigit() or not fields[1].isdigit():
            continue
        start, end = int(fields[0]), int(fields[1])
        if last_end >= 0 and end < last_end:
            session += 1  # edges are logged as they finish: times going back mean a new build started
        last_end = end
        entries.append(NinjaEntry(start, end, fields[3], session))
    return entries


def read_ninja_log(path: Path | str) -> list[NinjaEntry]:
    try:
        return parse_ninja_log(Path(path).read_text(errors="replace"))
    except OSError:
        return []


def latest(entries: list[NinjaEntry]) -> list[NinjaEntry]:
    """The last entry per output (a rebuilt object counts once, with its newest time)."""
    last: dict[str, NinjaEntry] = {}
    for entry in entries:
        last.pop(entry.output, None)
        last[entry.output] = entry
    return list(last.values())


def slowest(entries: list[NinjaEntry], count: int = 10) -> list[NinjaEntry]:
    return sorted(latest(entries), key=lambda e: (-e.seconds, e.output))[:count]


@dataclass(frozen=True)
class TargetTime:
    target: str
    objects: int
    cpu_seconds: float
    longest_seconds: float


def by_target(entries: list[NinjaEntry]) -> dict[str, TargetTime]:
    """Compile units and CPU-seconds per CMake target, largest first."""
    groups: dict[str, list[NinjaEntry]] = {}
    for entry in latest(entries):
        if entry.target:
            groups.setdefault(entry.target, []).append(entry)
    times = [TargetTime(name, len(items), sum(e.seconds for e in items), max(e.seconds for e in items))
             for name, items in groups.items()]
    return {t.target: t for t in sorted(times, key=lambda t: (-t.cpu_seconds, t.target))}


def session_wall_seconds(entries: list[NinjaEntry]) -> list[float]:
    """Wall time each recorded build session spent compiling (its last end minus its first start)."""
    spans: dict[int, tuple[int, int]] = {}
    for entry in entries:
        low, high = spans.get(entry.session, (entry.start_ms, entry.end_ms))
        spans[entry.session] = (min(low, entry.start_ms), max(high, entry.end_ms))
    return [(high - low) / 1000 for _, (low, high) in sorted(spans.items())]


def parse_progress(line: str) -> tuple[int, int, str] | None:
    """``[k/N] description`` as ninja prints it: (k, N, description); None for any other line."""
    match = _PROGRESS.match(line)
    if not match:
        return None
    done, total = int(match.group(1)), int(match.group(2))
    if total <= 0 or done > total:
        return None
    return done, total, match.group(3)
