"""Read ninja's own record of a build: ``.ninja_log`` (what was compiled, how long each unit took) and
the ``[k/N]`` status lines ninja prints.

``.ninja_log`` (format v5 to v7) has one tab-separated line per finished edge: start and end in ms since
that build started, the output's mtime, the output path, a command hash. Lines are appended as edges
finish, so a resumed build appends a second session whose times start again near zero; the last line
for an output is the one that counts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_HEADER = re.compile(r"^# ninja log v(\d+)\s*$")
_TARGET = re.compile(r"(?:^|/)CMakeFiles/([^/]+)\.dir/(.+)$")
_PROGRESS = re.compile(r"^\s*\[(\d+)/(\d+)\]\s*(.*)$")
# `build CMakeFiles/_C.dir/csrc/x.cu.o: CUDA_COMPILER__...`: one compile edge of build.ninja ($-escapes kept)
_COMPILE_EDGE = re.compile(r"^build (CMakeFiles/(?:\$.|[^:$ ])+\.dir/(?:\$.|[^:$])+?\.(?:o|obj))\s*: *\S*COMPILER")


@dataclass(frozen=True)
class NinjaEntry:
    start_ms: int
    end_ms: int
    output: str
    session: int  # 0 for the first build recorded, 1 for the build that resumed it, ...
    mtime: int = 0  # the output's mtime as ninja recorded it (ns in v6+, s in v5)

    @property
    def seconds(self) -> float:
        return max(0, self.end_ms - self.start_ms) / 1000

    @property
    def target(self) -> str:
        return target_of(self.output)

    @property
    def source(self) -> str:
        return source_of(self.output)


def target_of(output: str) -> str:
    """The CMake target an output belongs to (``_C_stable_libtorch``); "" for links and the like."""
    match = _TARGET.search(output)
    return match.group(1) if match else ""


def source_of(output: str) -> str:
    """The compiled file, as the object's path names it (``csrc/.../x.cu``); else the output."""
    match = _TARGET.search(output)
    if not match:
        return output
    return re.sub(r"\.(o|obj)$", "", match.group(2))


def parse_ninja_log(text: str) -> list[NinjaEntry]:
    """Every entry, in file order. Lines that are not entries (the header, torn last line) are skipped.

    Sessions are told apart by end times going back; a resumed build whose first unit ends later (in its own
    clock) than the interrupted build's last one did is counted in the same session. ``LogTail`` reads one
    build's lines exactly."""
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
        mtime = int(fields[2]) if fields[2].isdigit() else 0
        if last_end >= 0 and end < last_end:
            session += 1  # edges are logged as they finish: times going back mean a new build started
        last_end = end
        entries.append(NinjaEntry(start, end, fields[3], session, mtime))
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


# --- the CMake build dir of a tree ---------------------------------------------------------------------------


def find_build_dir(tree: Path | str, prefer_suffix: str = "") -> Path | None:
    """The CMake build dir setup.py uses in ``tree``: the dir holding build.ninja under ``tree/build``
    (vLLM and the miniature: ``build/temp.linux-x86_64-cpython-3XY``). FetchContent's sub-builds hold
    build.ninja files too, deeper down: the shallowest wins, then one whose name ends in ``prefer_suffix``
    (``cpython-312``: the Python that builds), then the newest."""
    root = Path(tree) / "build"
    if not root.is_dir():
        return None
    found: list[tuple[int, bool, float, Path]] = []
    for current, dirs, files in os.walk(root):
        depth = len(Path(current).relative_to(root).parts)
        if "build.ninja" in files:
            path = Path(current)
            mtime = (path / "build.ninja").stat().st_mtime
            found.append((depth, not (prefer_suffix and path.name.endswith(prefer_suffix)), -mtime, path))
            dirs[:] = []  # a sub-build below a build dir is not another candidate
        elif depth >= 3:
            dirs[:] = []  # setup.py's build dirs are near the top; do not walk a whole tree of outputs
    return min(found)[3] if found else None


def objects_per_target(build_ninja: Path | str) -> dict[str, int]:
    """Compile units per CMake target, as build.ninja declares them (what a complete build compiles)."""
    counts: dict[str, int] = {}
    try:
        with open(build_ninja, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.startswith("build CMakeFiles/"):
                    continue
                match = _COMPILE_EDGE.match(line)
                if match:
                    target = _TARGET.search(match.group(1).replace("$ ", " ").replace("$:", ":"))
                    if target:
                        counts[target.group(1)] = counts.get(target.group(1), 0) + 1
    except OSError:
        return {}
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


class LogTail:
    """The entries ninja appends to a build dir's ``.ninja_log`` from now on: this build's, whatever earlier
    builds left in the file. ``path`` may not exist yet (a first build: ninja creates it)."""

    def __init__(self, path: Path | str | None):
        self.path = Path(path) if path else None
        self._offset = self._size()
        self._partial = ""
        self._since_ns = _now_ns()
        self.entries: list[NinjaEntry] = []

    def _size(self) -> int:
        try:
            return self.path.stat().st_size if self.path else 0
        except OSError:
            return 0

    def attach(self, path: Path | str) -> None:
        """Follow ``path`` (found once the build dir exists); a log made during this build is read whole."""
        if self.path is None or Path(path) != self.path:
            self.path, self._offset, self._partial = Path(path), 0, ""

    def read(self) -> list[NinjaEntry]:
        """Read what was appended since the last call; returns every entry of this build so far."""
        if self.path is None:
            return self.entries
        size = self._size()
        if size < self._offset:  # ninja rewrote (recompacted) the log: keep the entries written since we began
            self._offset, self._partial = 0, ""
            text = self._chunk()
            self.entries = [e for e in parse_ninja_log(text) if _mtime_ns(e) >= self._since_ns]
            return self.entries
        if size > self._offset:
            text = self._partial + self._chunk()
            body, _, self._partial = text.rpartition("\n")  # a line still being written waits for its end
            fresh = parse_ninja_log(body)
            self.entries += fresh
        return self.entries

    def _chunk(self) -> str:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except OSError:
            return ""
        self._offset += len(data)
        return data.decode("utf-8", errors="replace")


def _now_ns() -> int:
    import time

    return time.time_ns()


def _mtime_ns(entry: NinjaEntry) -> int:
    # v5 logs store seconds, later ones nanoseconds: scale by magnitude
    mtime = entry.mtime
    return mtime if mtime > 10**17 else mtime * 10**9
