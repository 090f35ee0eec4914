"""Where a build's compile time went, one record (``CompileTimes``) that every reader takes: the report printed
at the end of a build (``lines``), the wheel's build info (``build_info``), and the ``build-times`` run record
(report/run_records.py) and the build figure (``record``). It holds what ninja wrote to the CMake build dir's
``.ninja_log`` (that dir found once, by ninja_log.find_build_dir) and the device compile time of each arch
(nvcc's own ``--time`` report). ``TimingWatch``, started right before a build, makes it at the end.

nvcc writes one CSV line per compilation phase when given ``--time FILE``; the build passes it through
``NVCC_APPEND_FLAGS``, which nvcc reads itself, so no build file changes and neither vLLM's CMake nor the
kernel key sees it. The per-arch phases (device preprocessing, cicc, ptxas, nvlink) name their arch
(``compute_90``, ``sm_90``); the rest (host preprocessing, cudafe++, the host compile, fatbinary) is one cost
per unit whatever the archs. ccache does not hash the variable (a hit compiles nothing and adds no line);
sccache does not cache an nvcc call while it is set, so a build through sccache gets no per-arch times.
Stdlib only.
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.build import ninja_log
from vllm_forge.build.build_progress import duration
from vllm_forge.build.cmake_build_dir import shown_dir

NVCC_FLAGS_ENV = "NVCC_APPEND_FLAGS"
# In the checkout's CMake build dir (build/, which vLLM's .gitignore has and the build lock lives in), at a
# path that stays the same from build to build.
NVCC_TIME_NAME = "vllm-forge-nvcc-time.csv"
TOP_UNITS = 15
_DEVICE_PHASE = re.compile(r"^(cicc|ptxas|nvlink)\b|preprocessing 1\)")
_ARCH = re.compile(r"^(?:sm|compute|lto)_(\d+[af]?)$")
# CMake's configure-time probes (compiler id and ABI, try_compile): not the build's units.
_CMAKE_PROBE = re.compile(r"(^|/)CMake[^/]*\.cu$|/CMakeScratch/|/CMakeTmp/")


def nvcc_time_path(src: Path) -> Path:
    return Path(src).expanduser().resolve() / "build" / NVCC_TIME_NAME


def nvcc_time_env(src: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """``NVCC_APPEND_FLAGS`` with ``--time`` added to what the caller's environment already appends; {} when
    the path has a space (nvcc splits the variable on whitespace, with no quoting)."""
    path = nvcc_time_path(src)
    if re.search(r"\s", str(path)):
        return {}
    base = os.environ if base is None else base
    return {NVCC_FLAGS_ENV: f"{base.get(NVCC_FLAGS_ENV, '')} --time {path}".strip()}


@dataclass(frozen=True)
class NvccPhase:
    source: str
    phase: str
    arch: str  # "sm_90a" for every per-arch phase of that arch; "" for a host or shared phase
    seconds: float


def parse_nvcc_time(text: str) -> list[NvccPhase]:
    """nvcc ``--time`` CSV (several nvcc processes append to one file: a header line each time it was new,
    lines in any order). Malformed lines and CMake's configure-time probes are skipped."""
    phases = []
    for row in csv.reader(io.StringIO(text)):
        cells = [cell.strip() for cell in row]
        if len(cells) < 8 or cells[0] == "source file name":
            continue
        try:
            value = float(cells[6])
        except ValueError:
            continue
        scale = {"ms": 1e-3, "s": 1.0, "us": 1e-6}.get(cells[7])
        if scale is None or value < 0:
            continue
        if _CMAKE_PROBE.search(cells[0]):
            continue
        arch = _ARCH.match(cells[4])
        per_arch = bool(arch) and bool(_DEVICE_PHASE.search(cells[1]))
        phases.append(NvccPhase(cells[0], cells[1], f"sm_{arch.group(1)}" if per_arch else "", value * scale))
    return phases


def arch_seconds(phases: list[NvccPhase]) -> tuple[dict[str, float], float]:
    """Device-compile seconds per arch (every unit, summed), and the seconds of the shared phases."""
    per_arch: dict[str, float] = {}
    shared = 0.0
    for phase in phases:
        if phase.arch:
            per_arch[phase.arch] = per_arch.get(phase.arch, 0.0) + phase.seconds
        else:
            shared += phase.seconds
    return per_arch, shared


def _arch_key(name: str) -> tuple[int, str]:
    digits = re.match(r"sm_(\d+)(.*)$", name)
    return (int(digits.group(1)), digits.group(2)) if digits else (0, name)


def forget(src: Path) -> None:
    """Drop the last build's nvcc times before a build starts (nvcc appends to the file)."""
    nvcc_time_path(src).unlink(missing_ok=True)


@dataclass(frozen=True)
class CompileTimes:
    """Where one build's compile time went. ``entries``: every line of the build dir's ``.ninja_log`` (earlier
    builds' too); ``compiled``: the lines this build appended; ``fresh``: this build wrote the log (a log last
    written before it belongs to an earlier build: the run record then counts nothing); ``timed``: the build
    compiled kernels (no kernel reuse), so the end-of-build report and the build info say what it compiled."""

    tree: Path
    build_dir: Path | None  # None: no CMake build dir (nothing was configured or compiled)
    entries: list[ninja_log.NinjaEntry] = field(default_factory=list)
    compiled: list[ninja_log.NinjaEntry] = field(default_factory=list)
    fresh: bool = False
    timed: bool = False
    phases: list[NvccPhase] = field(default_factory=list)
    nvcc_time: Path | None = None  # nvcc's --time file, when it holds anything
    notes: list[str] = field(default_factory=list)

    @property
    def log(self) -> Path | None:
        log = self.build_dir / ".ninja_log" if self.build_dir else None
        return log if log is not None and log.is_file() else None

    @property
    def objects(self) -> list[ninja_log.NinjaEntry]:
        """Every compiled object of the build dir, the newest line of each (earlier builds' included)."""
        return [e for e in ninja_log.latest(self.entries) if e.target]

    @property
    def compiled_objects(self) -> list[ninja_log.NinjaEntry]:
        return [e for e in self.compiled if e.target]

    @property
    def wall_seconds(self) -> float:
        """How long this build's ninja compiled (its first start to its last end, in ninja's own clock)."""
        return sum(ninja_log.session_wall_seconds(self.compiled))

    @staticmethod
    def cpu_seconds(entries: list[ninja_log.NinjaEntry]) -> float:
        return sum(e.seconds for e in entries if e.target)

    # -- what each reader gets --

    def lines(self, count: int = 10) -> list[str]:
        """The report printed once at the end of a build: the slowest units, then CPU-seconds per target."""
        if self.build_dir is None:
            return []
        objects = self.objects
        now = {e.output for e in self.compiled}
        kept = len(objects) - len([e for e in objects if e.output in now])
        where = shown_dir(self.build_dir, self.tree) + ".ninja_log"
        compiled = self.compiled_objects
        if compiled:
            made = f"{len(compiled)} object{'' if len(compiled) == 1 else 's'}"
            head = (f"compile times ({where}): this build compiled {made}, {self.cpu_seconds(compiled):,.0f} "
                    f"CPU-seconds in {duration(self.wall_seconds)} of ninja")
        else:
            head = f"compile times ({where}): this build compiled no object"
        if kept:
            head += f"; {kept} {'was' if kept == 1 else 'were'} kept from an earlier build"
        out = [head]
        slowest = ninja_log.slowest(objects, count)
        if slowest:
            out.append(f"slowest compile units (of {len(objects)}):")
            out += [f"  {e.seconds:7.1f} s  {e.target}  {e.source}" + ("" if e.output in now else "  (earlier build)")
                    for e in slowest]
            out.append("CPU-seconds per CMake target:")
            out += [f"  {t.cpu_seconds:9,.1f} s  {t.target}  ({t.objects} objects, longest {t.longest_seconds:.1f} s)"
                    for t in ninja_log.by_target(objects).values()]
        return out

    def build_info(self, count: int = 5) -> dict:
        """What the wheel's build info records: every object's compile time summed, this build's part, the top."""
        objects = self.objects
        return {
            "objects": len(objects),
            "cpu_seconds": round(self.cpu_seconds(objects), 1),
            "compiled_by_this_build": len(self.compiled_objects),
            "wall_seconds": round(self.wall_seconds, 1),
            "slowest": [{"seconds": round(e.seconds, 1), "target": e.target, "file": e.source}
                        for e in ninja_log.slowest(objects, count)],
        }

    def record(self, *, top: int = TOP_UNITS) -> dict:
        """The ``build-times`` record: compile units and CPU-seconds per CMake target (each object's newest entry
        over every session of the log this build wrote), the ``top`` slowest units, and device-compile seconds
        per arch."""
        entries = self.entries if self.fresh else []
        units = [e for e in ninja_log.latest(entries) if e.target]
        per_arch, shared = arch_seconds(self.phases)
        log = self.log
        return {
            "objects": len(units),
            "cpu_seconds": round(sum(e.seconds for e in units), 3),
            "sessions": len(ninja_log.session_wall_seconds(entries)),
            "wall_seconds": [round(s, 3) for s in ninja_log.session_wall_seconds(entries)],
            "slowest": [{"target": e.target, "source": e.source, "seconds": e.seconds, "output": e.output}
                        for e in ninja_log.slowest(units, top)],
            "targets": [{"target": t.target, "objects": t.objects, "cpu_seconds": round(t.cpu_seconds, 3),
                         "longest_seconds": t.longest_seconds} for t in ninja_log.by_target(units).values()],
            "archs": [{"arch": arch, "seconds": round(per_arch[arch], 3)} for arch in sorted(per_arch, key=_arch_key)],
            "shared_seconds": round(shared, 3),
            "nvcc_units": len({p.source for p in self.phases if p.source}),
            "ninja_log": str(log) if log else None,
            "nvcc_time": str(self.nvcc_time) if self.nvcc_time else None,
            "notes": list(self.notes),
        }


def recorded(entries: list[ninja_log.NinjaEntry], phases: list[NvccPhase] | None = None) -> CompileTimes:
    """The record of a ``.ninja_log`` and nvcc ``--time`` phases read elsewhere (a build recorded on a GPU host),
    all of it one build's."""
    return CompileTimes(Path("."), None, list(entries), list(entries), fresh=True, phases=list(phases or []))


class TimingWatch:
    """Made right before a build, ``start``ed when its compile starts: ``finish`` reads what ninja appended to the
    CMake build dir's .ninja_log (``settings``: cmake_build_dir.compile_settings, whose Python picks that dir)
    and what nvcc's --time wrote. ``timed``: the build compiles kernels (no kernel reuse)."""

    def __init__(self, tree: Path | str, python_suffix: str = "", *, timed: bool = True):
        self.tree = Path(tree).expanduser()
        self.timed = timed
        self._suffix = python_suffix
        found = ninja_log.find_build_dir(self.tree, self._suffix)
        self._tail = ninja_log.LogTail(found / ".ninja_log" if found else None)
        self._started: float | None = None

    def start(self) -> None:
        """Drop the last build's nvcc times (nvcc appends to the file) and note when this build started. Under
        the checkout's lock: never another build's times."""
        forget(self.tree)
        self._started = time.time()

    def finish(self) -> CompileTimes:
        build_dir = ninja_log.find_build_dir(self.tree, self._suffix)
        log = build_dir / ".ninja_log" if build_dir else None
        notes: list[str] = []
        compiled: list[ninja_log.NinjaEntry] = []
        entries: list[ninja_log.NinjaEntry] = []
        fresh = False
        if log is None or not log.is_file():
            notes.append("no .ninja_log under the checkout's build/ (no CMake/ninja build ran)")
        else:
            if self._tail.path is None or self._tail.path.parent != build_dir:
                self._tail.attach(log)  # made during this build
            compiled = list(self._tail.read())
            entries = ninja_log.read_ninja_log(log)
            fresh = self._started is None or log.stat().st_mtime >= self._started
            if not fresh:
                notes.append(f"{log} was last written before this build: nothing was compiled (kernels reused or "
                             "up to date)")
        times = nvcc_time_path(self.tree)
        text = times.read_text(errors="replace") if times.is_file() else ""
        phases = parse_nvcc_time(text)
        if not phases and fresh and entries:
            notes.append("no nvcc --time lines: the build ran through sccache, which does not cache nvcc calls "
                         f"while {NVCC_FLAGS_ENV} is set, or every CUDA unit came from the compile cache"
                         if text == "" else "nvcc --time wrote nothing readable")
        return CompileTimes(self.tree, build_dir, entries, compiled, fresh, self.timed, phases,
                            times if text else None, notes)
