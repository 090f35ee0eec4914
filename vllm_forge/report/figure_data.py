"""What each figure shows, taken from the JSON the text reports are printed from (one source).

One function per report turns its JSON (``--json``, or the record under build/reports/) into plain data:
the series, reference values and labels a figure draws. ``vllm_forge/report/figures.py`` draws that data with
matplotlib, and ``vllm_forge/report/report_html.py`` prints the same data in a table beside each figure; the tests
compare it with the report JSON. Stdlib only (reads ``vllm_forge.gpu.compat`` for the verdict thresholds).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from vllm_forge.gpu import compat

GB = 1000**3  # docker's unit for image sizes (SI)


# ---- NCCL: bus bandwidth against message size ----------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    label: str
    value: float  # GB/s for bandwidth, bytes for sizes
    source: str = ""


@dataclass(frozen=True)
class Curve:
    label: str
    sizes: tuple[int, ...]  # bytes
    busbw: tuple[float, ...]  # GB/s: the better of out-of-place and in-place, as the verdict reads it
    level: str  # pass / warn / fail: the verdict of the diagnosis the run belongs to
    peak: float | None  # the run's busbw at large sizes (>= 64 MiB), the figure the verdict compared


@dataclass(frozen=True)
class NcclFigure:
    title: str  # the verdict and the root cause
    curves: tuple[Curve, ...]
    references: tuple[Reference, ...]  # the link model's expected busbw, one per distinct link
    band: tuple[float, float] | None  # GB/s: at or above the first is healthy (compat.BUSBW_SHARE), to expected
    poor: float | None  # GB/s: below it the verdict is fail
    source: str
    notes: tuple[str, ...] = ()

    kind = "nccl"


def _files(report: dict) -> list[dict]:
    """nccl-diagnose --json has ``files``; nccl-test --json has ``reports`` (the same per-file dictionaries)."""
    return list(report.get("files") or report.get("reports") or [])


def _tables(file: dict) -> list[tuple[str, dict]]:
    """(name, parsed nccl-tests table) of one file: the file itself, or each table section of a bundle."""
    facts = file.get("facts") or {}
    if file.get("kind") in ("nccl-tests", "allreduce-kv"):
        return [("", facts)]
    if file.get("kind") == "bundle":
        return [(name, section) for name, section in facts.items()
                if isinstance(section, dict) and section.get("kind") in ("nccl-tests", "allreduce-kv")]
    return []


def _row_busbw(row: dict) -> float | None:
    if "busbw" in row:
        return row["busbw"]
    # JSON written before rows carried their busbw: the same rule (NcclTestsRun.to_dict's CollRow.best_busbw)
    values = [m["busbw"] for m in (row.get("out_of_place"), row.get("in_place")) if m and m.get("busbw") is not None]
    return max(values) if values else None


def _ranks(table: dict) -> int:
    return table.get("nranks") or len(table.get("devices") or []) or (table.get("ngpus") or 0) * (
        table.get("nthreads") or 1)


def nccl_curves(report: dict, name: str = "") -> tuple[list[Curve], list[str]]:
    """One curve per nccl-tests table of a diagnosis (one per run or rank set), and what was left out."""
    level = (report.get("root_cause") or {}).get("level") or report.get("level") or "pass"
    curves, notes = [], []
    for file in _files(report):
        for section, table in _tables(file):
            where = Path(file.get("path", "")).name + (f" [{section}]" if section else "")
            points = [(row["size"], _row_busbw(row)) for row in table.get("rows") or []]
            points = [(size, bw) for size, bw in points if bw is not None]
            ranks = _ranks(table)
            if ranks <= 1:
                notes.append(f"{where}: one rank, bus bandwidth is 0 by definition (not drawn)")
                continue
            if not points:
                notes.append(f"{where}: no result rows (not drawn)")
                continue
            gpus = sorted({d.get("name", "") for d in table.get("devices") or [] if d.get("name")})
            label = (f"{name + ': ' if name else ''}{where} ({table.get('runner') or 'nccl-tests'}, {ranks} ranks"
                     f"{' on ' + ', '.join(gpus) if gpus else ''}) {level.upper()}")
            curves.append(Curve(label, tuple(s for s, _ in points), tuple(b for _, b in points), level,
                                table.get("peak_busbw")))
    return curves, notes


def overlay_name(spec: str) -> str:
    """A short legend name for ``--overlay SPEC``: the first file's directory and name, and how many more."""
    words = spec.replace(",", " ").split()
    if not words:
        return spec
    first = Path(words[0])
    name = f"{first.parent.name}/{first.name}" if first.parent.name else first.name
    return name + (f" +{len(words) - 1}" if len(words) > 1 else "")


def nccl_figure(report: dict, overlays: list[tuple[str, dict]] = ()) -> NcclFigure:
    """busbw against message size for a diagnosis (``report``) and the runs laid over it (each a name and a
    diagnosis of its own): the link model's expectation as a reference line, the healthy band, the verdict."""
    cause = report.get("root_cause") or {}
    curves, notes = nccl_curves(report, "this run" if overlays else "")
    for name, other in overlays:
        more, more_notes = nccl_curves(other, name)
        curves += more
        notes += more_notes
    references: list[Reference] = []
    for diagnosis in [report, *(other for _, other in overlays)]:
        root = diagnosis.get("root_cause") or {}
        if root.get("expected") and all(r.value != root["expected"] for r in references):
            references.append(Reference(f"link model: {root['expected']:g} GB/s ({root.get('expected_how', '')})",
                                        root["expected"], root.get("expected_source", "")))
    expected = references[0].value if references else None
    band = (compat.BUSBW_SHARE["good"] * expected, expected) if expected else None
    poor = compat.BUSBW_SHARE["poor"] * expected if expected else None
    title = f"{(cause.get('level') or 'pass').upper()}: {cause.get('cause') or 'no diagnosis'}"
    names = sorted({Path(f.get("path", "")).name for d in [report, *(o for _, o in overlays)] for f in _files(d)
                    if f.get("kind") not in ("unknown", "empty")})
    source = (f"Source: vllm-forge NCCL diagnosis of {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
              + (f"; link model: {references[0].source}" if references and references[0].source else
                 "; no topology given, so no link model figure"))
    if not references:
        notes.append("no link model figure: pass `nvidia-smi topo -m` output (and the GPUs' PCIe generation) too")
    return NcclFigure(title, tuple(curves), tuple(references), band, poor, source, tuple(notes))


# ---- check-size --image: where the bytes are -------------------------------------------------------------------

# The field report's two images (docs/field-report.md): the single-stage build on the NGC PyTorch image,
# "close to 40 GB", and the multi-stage rewrite, 28.4 GB in `docker images`.
FIELD_REPORT_SIZES = (
    Reference("field report: single stage", 40 * GB, "docs/field-report.md: about 40 GB"),
    Reference("field report: multi-stage", 28.4 * GB, "docs/field-report.md: 28.4GB in docker images"),
)


@dataclass(frozen=True)
class Bar:
    label: str
    segments: tuple[tuple[str, int], ...]  # (part, bytes), bottom first
    total: int  # bytes
    reference: bool = False  # a size to compare with, not this image


@dataclass(frozen=True)
class SizeFigure:
    title: str
    bars: tuple[Bar, ...]
    budget: int | None  # bytes
    source: str
    notes: tuple[str, ...] = ()

    kind = "image-size"


def size_text(size: float) -> str:
    """Bytes as docker writes them (SI): GB from one GB up, MB below."""
    return f"{size / GB:.2f} GB" if size >= GB else f"{size / 1e6:.1f} MB"


def parse_reference(text: str) -> Reference:
    """``LABEL=GB`` (``--reference "before=40"``)."""
    from vllm_forge.core.errors import ForgeError

    label, sep, value = text.rpartition("=")
    try:
        size = float(value)
    except ValueError:
        size = -1.0
    if not sep or not label.strip() or size <= 0:
        raise ForgeError(f"--reference {text!r} is not LABEL=GB", 'e.g. --reference "last release=31.5"')
    return Reference(label.strip(), size * GB, "named on the command line")


def size_figure(breakdown: dict, references: list[Reference] | None = None) -> SizeFigure:
    """A stacked bar of the image (its base, then each part over the base) beside reference bars: those given,
    else the field report's two images."""
    parts = breakdown.get("parts") or {}
    size = int(breakdown["size"])
    base_size = breakdown.get("base_size")
    notes = []
    if base_size is not None:
        segments = [(f"base {breakdown.get('base') or ''}".strip(), int(base_size))]
    else:
        rest = max(0, size - sum(parts.values()))
        segments = [("base and unclassified (base not present locally)", rest)]
        notes.append(f"the base {breakdown.get('base') or '(unknown)'} is not present locally: the parts are what "
                     "the image adds over no base")
    segments += [(name, int(value)) for name, value in parts.items()]
    bars = [Bar(breakdown.get("image", "image"), tuple(segments), size)]
    refs = list(references) if references else list(FIELD_REPORT_SIZES)
    bars += [Bar(r.label, ((r.label, int(r.value)),), int(r.value), reference=True) for r in refs]
    over = breakdown.get("over_base")
    budget = breakdown.get("budget_gb") or 0
    title = (f"{breakdown.get('image')}: {size / GB:.2f} GB"
             + (f", {over / GB:.2f} GB over its base" if over is not None else "")
             + (f" ({'within' if breakdown.get('ok', True) else 'OVER'} the {budget:g} GB budget)" if budget else ""))
    source = ("Source: vllm-forge check-size --image (docker image inspect, docker history, the Python "
              "distributions in the image and its base); references: "
              + "; ".join(r.source for r in refs if r.source))
    return SizeFigure(title, tuple(bars), int(budget * GB) if budget else None, source, tuple(notes))


# ---- build-wheel: where the compile time went ------------------------------------------------------------------


@dataclass(frozen=True)
class BuildFigure:
    title: str
    units: tuple[tuple[str, str, float], ...]  # (compiled file, CMake target, seconds), slowest first
    archs: tuple[tuple[str, float], ...]  # (sm_XX, device-compile seconds): drawn when there are two or more
    shared_seconds: float  # nvcc's phases that do not depend on the arch (host compile, cudafe++, fatbinary)
    source: str
    notes: tuple[str, ...] = ()

    kind = "build-times"


def build_figure(times: dict, what: str = "") -> BuildFigure:
    """The slowest compile units of a build (``build-times`` record), and device-compile time per arch when
    several archs were built."""
    units = tuple((u["source"], u["target"], float(u["seconds"])) for u in times.get("slowest") or [])
    archs = tuple((a["arch"], float(a["seconds"])) for a in times.get("archs") or [])
    notes = list(times.get("notes") or [])
    if len(archs) == 1:
        notes.append(f"one arch built ({archs[0][0]}): no per-arch comparison")
    cpu = float(times.get("cpu_seconds") or 0)
    sessions = times.get("sessions") or 0
    title = (f"{what + ': ' if what else ''}{times.get('objects', 0)} compile units, {cpu:,.0f} CPU-seconds"
             + (f" over {sessions} ninja sessions (a resumed build)" if sessions > 1 else ""))
    source = ("Source: " + (f"{times['ninja_log']} (ninja)" if times.get("ninja_log") else "no .ninja_log")
              + ("; nvcc --time per phase and arch" if times.get("nvcc_time") else ""))
    return BuildFigure(title, units, archs if len(archs) >= 2 else (), float(times.get("shared_seconds") or 0),
                       source, tuple(notes))


# ---- audit: which kernel groups have code for which GPU ---------------------------------------------------------

# Cell categories, best first; the audit's own verdicts (vllm_forge/audit/audit.py) mapped onto them.
AUDIT_CATEGORIES = {
    "native": "native SASS",
    "gated": "native; other groups only for other GPUs (vLLM's capability dispatch)",
    "ptx-jit": "PTX JIT (compiled by the driver on first load)",
    "optional": "no code, optional (vLLM runs without it)",
    "partial": "PARTIAL: some kernel groups have no code",
    "none": "NO KERNEL for this GPU",
    "unreadable": "unreadable file",
}


@dataclass(frozen=True)
class AuditCell:
    category: str  # a key of AUDIT_CATEGORIES
    text: str  # "12/14": kernel groups with code for the GPU / kernel groups (JIT ones named)
    groups: int
    runnable: int


@dataclass(frozen=True)
class AuditFigure:
    title: str
    files: tuple[str, ...]  # as the audit names them
    prefix: str  # the directory every file shares (a wheel's name): left out of the figure's row labels
    targets: tuple[str, ...]  # labels: "RTX 5090 (sm_120)"
    cells: tuple[tuple[AuditCell, ...], ...]  # [file][target]
    source: str
    notes: tuple[str, ...] = ()

    kind = "audit"


def _audit_cell(file: dict, target: str) -> AuditCell | None:
    verdict = (file.get("verdict") or {}).get(target)
    counts = (file.get("groups") or {}).get(target) or {}
    groups, none, jit = counts.get("count", 0), counts.get("none", 0), counts.get("ptx_jit", 0)
    runnable = groups - none
    if file.get("error"):
        return AuditCell("unreadable", "?", 0, 0)
    if verdict == "no-device-code":
        return AuditCell("none", "0/0", 0, 0) if file.get("required") else None
    category = {"native": "native", "gated": "gated", "ptx-jit": "ptx-jit", "partial": "partial",
                "none": "none"}.get(verdict or "none", "none")
    if category in ("partial", "none") and file.get("optional"):
        category = "optional"
    text = f"{runnable}/{groups}" + (f" ({jit} JIT)" if jit else "")
    return AuditCell(category, text, groups, runnable)


def audit_figure(audit: dict) -> AuditFigure:
    """A file x GPU map of verdicts (audit --json), with the kernel-group counts in each cell. Files without
    device code that nothing requires are left out (as the text table folds them)."""
    targets = list(audit.get("target") or [])
    gpus = audit.get("gpu") or {}
    labels = tuple(f"{gpus[t]} ({t})" if gpus.get(t) else t for t in targets)
    files, rows = [], []
    for file in audit.get("files") or []:
        cells = [_audit_cell(file, t) for t in targets]
        if all(c is None for c in cells):
            continue
        files.append(file["path"])
        rows.append(tuple(c or AuditCell("none", "-", 0, 0) for c in cells))
    hidden = len(audit.get("files") or []) - len(files)
    notes = [f"{hidden} file(s) without device code left out"] if hidden else []
    prefix = posixpath.commonpath(files) if len(files) > 1 else ""
    prefix = prefix if prefix and all(f.startswith(prefix + "/") for f in files) else ""
    where = audit.get("source", "") + (f", {prefix}/" if prefix else "")
    title = f"{'OK' if audit.get('ok') else 'FAIL'}: kernels per file and GPU in {where}"
    source = ("Source: vllm-forge audit (each file's CUDA fat binaries read from its ELF; n/m = kernel groups with "
              "code for the GPU / kernel groups)")
    return AuditFigure(title, tuple(files), prefix, labels, tuple(rows), source, tuple(notes))


