"""Where a build's compile time went: the slowest compile units (ninja's ``.ninja_log``) and the device
compile time of each arch (nvcc's own ``--time`` report).

nvcc writes one CSV line per compilation phase when given ``--time FILE``; the build passes it through
``NVCC_APPEND_FLAGS``, which nvcc reads itself, so no build file changes and neither vLLM's CMake nor the
kernel key sees it. The per-arch phases (device preprocessing, cicc, ptxas, nvlink) name their arch
(``compute_90``, ``sm_90``); the rest (host preprocessing, cudafe++, the host compile, fatbinary) is one cost
per unit whatever the archs. ccache does not hash the variable (a hit compiles nothing and adds no line);
sccache does not cache an nvcc call while it is set, so a build through sccache gets no per-arch times.

The summary is the ``build-times`` record (report/run_records.py) and what the build figure draws. Stdlib only.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vllm_forge.build import ninja_log

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


def find_ninja_log(src: Path) -> Path | None:
    """The ``.ninja_log`` of the checkout's CMake build (the directory under build/ holding build.ninja
    that changed last: setup.py's build/temp.<platform>-<python>/)."""
    root = Path(src).expanduser() / "build"
    if not root.is_dir():
        return None
    found = [p.parent / ".ninja_log" for p in root.glob("**/build.ninja") if (p.parent / ".ninja_log").is_file()]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def _arch_key(name: str) -> tuple[int, str]:
    digits = re.match(r"sm_(\d+)(.*)$", name)
    return (int(digits.group(1)), digits.group(2)) if digits else (0, name)


def summarize(entries: list[ninja_log.NinjaEntry], phases: list[NvccPhase], *, top: int = TOP_UNITS) -> dict:
    """The ``build-times`` report: compile units and CPU-seconds per CMake target (each object's newest entry
    over every session of the log), the ``top`` slowest units, and device-compile seconds per arch."""
    units = [e for e in ninja_log.latest(entries) if e.target]
    per_arch, shared = arch_seconds(phases)
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
        "nvcc_units": len({p.source for p in phases if p.source}),
    }


def forget(src: Path) -> None:
    """Drop the last build's nvcc times before a build starts (nvcc appends to the file)."""
    nvcc_time_path(src).unlink(missing_ok=True)


def collect(src: Path, *, since: float | None = None, top: int = TOP_UNITS) -> dict:
    """The summary of the build of ``src`` that started at ``since`` (time.time()): a ``.ninja_log`` last
    written before then belongs to an earlier build and is left out (nothing was compiled this time)."""
    log = find_ninja_log(src)
    notes = []
    entries: list[ninja_log.NinjaEntry] = []
    if log is None:
        notes.append("no .ninja_log under the checkout's build/ (no CMake/ninja build ran)")
    elif since is not None and log.stat().st_mtime < since:
        notes.append(f"{log} was last written before this build: nothing was compiled (kernels reused or "
                     "up to date)")
    else:
        entries = ninja_log.read_ninja_log(log)
    times = nvcc_time_path(src)
    text = times.read_text(errors="replace") if times.is_file() else ""
    phases = parse_nvcc_time(text)
    summary = summarize(entries, phases, top=top)
    if not phases and entries:
        notes.append("no nvcc --time lines: the build ran through sccache, which does not cache nvcc calls "
                     f"while {NVCC_FLAGS_ENV} is set, or every CUDA unit came from the compile cache"
                     if text == "" else "nvcc --time wrote nothing readable")
    summary.update({"ninja_log": str(log) if log else None, "nvcc_time": str(times) if text else None,
                    "notes": notes})
    return summary
