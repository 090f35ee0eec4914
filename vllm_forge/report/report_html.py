"""`invoke report`: one self-contained HTML page of the last runs recorded under build/reports.

The page reads the newest record of each kind (vllm_forge/report/run_records.py): the last pipeline run (its
configuration, each step's commands, times and outcome), the last build's compile times, the last audit,
check-size --image and NCCL diagnosis. Each figure is drawn from the same figure data (vllm_forge/report/figure_data.py)
as ``--plot`` draws, inlined as SVG, with a table of the same numbers beside it (``data-*`` attributes hold
the exact values). No script, no network: a Content-Security-Policy forbids every fetch, CSS is inline.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

from vllm_forge.core.errors import ForgeError
from vllm_forge.report import figure_data, run_records

PAGE_NAME = "index.html"
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
:root { --ink: #1a1a1a; --muted: #555; --line: #d0d0d0; --band: #f4f6f8; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); margin: 0; }
header, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; border-bottom: 1px solid var(--line); }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 6px; }
nav a { margin-right: 14px; } .meta { color: var(--muted); font-size: 12.5px; margin: 2px 0 10px; }
.meta code { font-size: 12px; }
section { border-bottom: 1px solid var(--line); padding-bottom: 14px; }
figure { margin: 8px 0; } figure svg { max-width: 100%; height: auto; display: block; }
table { border-collapse: collapse; margin: 8px 0; font-size: 12.5px; }
th, td { border: 1px solid var(--line); padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: var(--band); } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.when { white-space: nowrap; }
pre { background: var(--band); padding: 8px; overflow-x: auto; font-size: 12px; white-space: pre-wrap; }
details summary { cursor: pointer; color: var(--muted); margin: 6px 0; }
.status-done, .ok { color: #00603f; } .status-failed, .status-interrupted, .fail { color: #a03000; font-weight: 600; }
.status-not-run { color: var(--muted); }
.bar { display: inline-block; height: 10px; background: #0072B2; vertical-align: middle; }
.step { white-space: nowrap; margin-right: 10px; display: inline-block; }
.missing { color: var(--muted); font-style: italic; }
.cat-native { background: #cdeee3; } .cat-gated { background: #d8ecf8; } .cat-ptx-jit { background: #fbf6c4; }
.cat-optional { background: #eeeeee; } .cat-partial { background: #f8dfb0; } .cat-none { background: #f4c8ad; }
.cat-unreadable { background: #333; color: #fff; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def _meta(record: run_records.Record) -> str:
    return (f'<p class="meta">recorded {_e(record.created)} by <code>{_e(record.command)}</code> '
            f'(<code>{_e(record.path.name)}</code>)</p>')


def _figure(data, salt: str) -> str:
    from vllm_forge.report import figures

    return f'<figure data-figure="{_e(data.kind)}">{figures.svg_text(data, salt)}</figure>'


def _value(value) -> str:
    """A number for a data-* attribute, exactly as recorded ("" for none)."""
    return "" if value is None else _e(value)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{_num(value, 1)} s"


def _bar(value: float | None, longest: float, width: int) -> str:
    """A bar as long as ``value`` is against ``longest`` (CSS only)."""
    size = 0 if value is None else max(1, round(width * value / longest))
    return f'<span class="bar" style="width:{size}px"></span>'


def _missing(what: str, how: str) -> str:
    return f'<p class="missing">No {_e(what)} recorded yet: run <code>{_e(how)}</code>.</p>'


RUNS_SHOWN = 8


def runs_section(records: list[run_records.Record]) -> str:
    """The last runs at a glance (each step's time), then each one in full: the newest open, the others folded."""
    if not records:
        return _missing("pipeline run", "invoke build-wheel, invoke wheel, invoke image or invoke demo")
    shown = records[:RUNS_SHOWN]
    longest = max([s["seconds"] or 0 for r in shown for s in r.data["steps"]] + [1e-9])
    rows = []
    for record in shown:
        data = record.data
        steps = " ".join(f'<span class="step" data-step="{_e(s["name"])}" data-seconds="{_value(s["seconds"])}">'
                         f'{_e(s["title"])} {_bar(s["seconds"], longest, 160)} {_seconds(s["seconds"])}</span>'
                         for s in data["steps"])
        rows.append(f'<tr data-run="{_e(record.path.name)}"><td class="when">{_e(record.created)}</td><td><code>'
                    f'{_e(record.command)}</code></td><td class="{"ok" if data["outcome"] == "ok" else "fail"}">'
                    f'{_e(data["outcome"])}</td><td>{steps}</td><td class="num">{_num(data["total_seconds"], 1)} s</td>'
                    "</tr>")
    details = "".join(f'<details{" open" if index == 0 else ""} data-run="{_e(r.path.name)}"><summary>{_e(r.created)}: '
                      f"<code>{_e(r.command)}</code></summary>"
                      f'{run_section(r, "steps" if index == 0 else "steps-earlier")}</details>'
                      for index, r in enumerate(shown))
    return ('<table class="figure-data" data-figure="runs"><tr><th>when (UTC)</th><th>command</th><th>outcome</th>'
            f'<th>steps and their times</th><th>total</th></tr>{"".join(rows)}</table>{details}')


def run_section(record: run_records.Record, figure: str = "steps") -> str:
    data = record.data
    longest = max([s["seconds"] or 0 for s in data["steps"]] + [1e-9])
    rows = []
    for step in data["steps"]:
        seconds = step["seconds"]
        rows.append(
            f'<tr data-step="{_e(step["name"])}" data-status="{_e(step["status"])}" '
            f'data-seconds="{_value(seconds)}"><td>{_e(step["title"])}</td>'
            f'<td class="status-{_e(step["status"].replace(" ", "-"))}">{_e(step["status"])}</td>'
            f'<td class="num">{_seconds(seconds)}</td><td>{_bar(seconds, longest, 260)}</td></tr>')
    outcome = data["outcome"]
    config = "".join(f'<tr><td>{_e(c["name"])}</td><td>{_e(c["value"])}</td><td>{_e(c["source"])}</td></tr>'
                     for c in data["config"])
    commands = "".join(f'<h3>{_e(s["title"])}</h3><pre>{_e(chr(10).join(s["lines"]) or "(no command)")}</pre>'
                       for s in data["steps"])
    made = "".join(f"<li>{_e(k)}: <code>{_e(v)}</code></li>" for k, v in (("wheel", data.get("wheel")),
                                                                           ("image", data.get("image"))) if v)
    return (_meta(record)
            + f'<p>outcome: <span class="{"ok" if outcome == "ok" else "fail"}" data-outcome="{_e(outcome)}">'
              f'{_e(outcome)}</span>; total {_num(data["total_seconds"], 1)} s</p>'
            + (f"<ul>{made}</ul>" if made else "")
            + f'<table class="figure-data" data-figure="{figure}"><tr><th>step</th><th>status</th><th>time</th>'
              f'<th></th></tr>{"".join(rows)}</table>'
            + f'<details><summary>resolved configuration (and where each value came from)</summary><table>'
              f'<tr><th>setting</th><th>value</th><th>from</th></tr>{config}</table></details>'
            + f"<details><summary>each step's commands, as printed and run</summary>{commands}</details>")


def build_section(record: run_records.Record | None) -> str:
    if record is None:
        return _missing("build", "invoke build-wheel")
    data = figure_data.build_figure(record.data, Path(record.data.get("wheel") or "").name)
    units = "".join(f'<tr data-source="{_e(src)}" data-target="{_e(target)}" data-seconds="{_e(seconds)}">'
                    f'<td class="num">{_num(seconds, 1)} s</td><td>{_e(target)}</td><td>{_e(src)}</td></tr>'
                    for src, target, seconds in data.units)
    archs = "".join(f'<tr data-arch="{_e(arch)}" data-seconds="{_e(seconds)}"><td>{_e(arch)}</td>'
                    f'<td class="num">{_num(seconds, 1)} s</td></tr>' for arch, seconds in data.archs)
    if archs:
        archs += (f'<tr data-arch="shared" data-seconds="{_e(data.shared_seconds)}"><td>shared (host)</td>'
                  f'<td class="num">{_num(data.shared_seconds, 1)} s</td></tr>')
    notes = "".join(f"<li>{_e(n)}</li>" for n in data.notes)
    return (_meta(record) + _figure(data, "build")
            + '<table class="figure-data" data-figure="build-times"><tr><th>seconds</th><th>CMake target</th>'
              f'<th>compile unit</th></tr>{units}</table>'
            + (f'<table class="figure-data" data-figure="build-archs"><tr><th>arch</th><th>device compile (CPU-s)'
               f'</th></tr>{archs}</table>' if archs else "")
            + (f"<ul>{notes}</ul>" if notes else ""))


def audit_section(record: run_records.Record | None) -> str:
    if record is None:
        return _missing("audit", "invoke audit dist/ --arch ...")
    data = figure_data.audit_figure(record.data)
    targets = record.data.get("target") or []
    head = "".join(f"<th>{_e(label)}</th>" for label in data.targets)
    rows = []
    for path, cells in zip(data.files, data.cells, strict=True):
        tds = "".join(f'<td class="cat-{_e(c.category)}" data-target="{_e(t)}" data-category="{_e(c.category)}" '
                      f'data-groups="{c.groups}" data-runnable="{c.runnable}">{_e(c.category)} {_e(c.text)}</td>'
                      for t, c in zip(targets, cells, strict=True))
        rows.append(f'<tr data-file="{_e(path)}"><td>{_e(path)}</td>{tds}</tr>')
    return (_meta(record) + _figure(data, "audit")
            + f'<table class="figure-data" data-figure="audit"><tr><th>file</th>{head}</tr>{"".join(rows)}</table>')


def size_section(record: run_records.Record | None) -> str:
    if record is None:
        return _missing("image size", "invoke check-size --image TAG")
    data = figure_data.size_figure(record.data)
    rows = []
    for bar in data.bars:
        for part, size in bar.segments:
            rows.append(f'<tr data-bar="{_e(bar.label)}" data-part="{_e(part)}" data-bytes="{size}" '
                        f'data-reference="{str(bar.reference).lower()}"><td>{_e(bar.label)}</td><td>{_e(part)}</td>'
                        f'<td class="num">{_e(figure_data.size_text(size))}</td></tr>')
    return (_meta(record) + _figure(data, "size")
            + '<table class="figure-data" data-figure="image-size"><tr><th>bar</th><th>part</th><th>size</th></tr>'
              f'{"".join(rows)}</table>')


def nccl_section(record: run_records.Record | None) -> str:
    if record is None:
        return _missing("NCCL diagnosis", "invoke nccl-diagnose LOGS... or invoke nccl-test")
    data = figure_data.nccl_figure(record.data, [tuple(pair) for pair in record.data.get("overlays") or []])
    refs = "".join(f'<tr data-reference="{_e(r.value)}"><td class="num">{_num(r.value, 1)} GB/s</td>'
                   f'<td>{_e(r.label)}</td><td>{_e(r.source)}</td></tr>' for r in data.references)
    band = (f'<p data-band-low="{_e(data.band[0])}" data-band-high="{_e(data.band[1])}">healthy band '
            f'{_num(data.band[0], 1)}-{_num(data.band[1], 1)} GB/s; fail below {_num(data.poor, 1)} GB/s</p>'
            if data.band else "")
    curves = []
    for curve in data.curves:
        points = "".join(f'<tr data-size="{size}" data-busbw="{_e(bw)}"><td class="num">{size}</td>'
                         f'<td class="num">{bw:g}</td></tr>' for size, bw in zip(curve.sizes, curve.busbw, strict=True))
        curves.append(f'<details data-curve="{_e(curve.label)}" data-peak="{_e(curve.peak)}"><summary>'
                      f'{_e(curve.label)}: peak {curve.peak} GB/s at large sizes</summary>'
                      f'<table class="figure-data" data-figure="nccl"><tr><th>size (B)</th><th>busbw (GB/s)</th>'
                      f'</tr>{points}</table></details>')
    return (_meta(record) + f'<p class="{"ok" if data.title.startswith("PASS") else "fail"}">{_e(data.title)}</p>'
            + _figure(data, "nccl") + band
            + ('<table class="figure-data" data-figure="nccl-references"><tr><th>expected busbw</th><th>link model'
               f'</th><th>source</th></tr>{refs}</table>' if refs else "")
            + "".join(curves))


SECTIONS = (  # id, heading, record kind, renderer of the newest records of that kind
    ("run", "Plan, steps and times of the last runs", "run", runs_section),
    ("build", "Build time", "build-times", build_section),
    ("audit", "Kernels per file and GPU (audit)", "audit", audit_section),
    ("size", "Image size (check-size --image)", "image-size", size_section),
    ("nccl", "NCCL bus bandwidth", "nccl", nccl_section),
)


def render_page(directory: Path | None = None) -> str:
    directory = Path(directory) if directory else run_records.record_dir()
    newest = {kind: run_records.records_of(kind, directory) for _, _, kind, _ in SECTIONS}
    latest = {kind: found[0] if found else None for kind, found in newest.items()}
    latest["run"] = newest["run"]
    if not any(newest.values()):
        raise ForgeError(f"no runs are recorded under {directory}",
                         "run a task first (e.g. invoke demo --no-docker, invoke audit, invoke nccl-diagnose), or "
                         "pass --records DIR")
    nav = "".join(f'<a href="#{sid}">{_e(title)}</a>' for sid, title, _, _ in SECTIONS)
    body = "".join(f'<section id="{sid}" data-kind="{kind}"><h2>{_e(title)}</h2>{render(latest[kind])}</section>'
                   for sid, title, kind, render in SECTIONS)
    made = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>vllm-forge report</title><style>{STYLE}</style></head><body>"
            f'<header><h1>vllm-forge report</h1><p class="meta">made {made} from the newest records in '
            f"<code>{_e(directory)}</code></p><nav>{nav}</nav></header><main>{body}</main>"
            '<footer><p class="meta">Figures drawn with matplotlib from the same JSON the text reports print; '
            "each table holds the figure's numbers.</p></footer></body></html>\n")


def write_report(directory: Path | None, out_dir: Path) -> Path:
    page = render_page(directory)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / PAGE_NAME
    partial = out_dir / f".{PAGE_NAME}.partial"
    partial.write_text(page, encoding="utf-8")
    partial.replace(target)
    return target
