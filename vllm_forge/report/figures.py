"""Draw the figure data of ``vllm_forge/report/figure_data.py`` with matplotlib, to PNG, SVG, or SVG text for a page.

matplotlib (requirements.txt) is imported inside the functions that draw, never at module import, so a
task without ``--plot`` (and ``invoke --list``) does not pay for it; it draws through its Agg and SVG
canvases (``matplotlib.figure.Figure``, no pyplot, no GUI backend, no global state). Colours are the
Okabe-Ito palette (distinguishable with the common colour-vision deficiencies); every series also has its
own marker and line style, and every bar part or map category its own hatch, so a greyscale print reads the
same. Each figure carries its title, axis labels with units, a legend and a source line.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

from vllm_forge.core.errors import ForgeError
from vllm_forge.report.figure_data import (
    AUDIT_CATEGORIES,
    GB,
    AuditFigure,
    BuildFigure,
    NcclFigure,
    SizeFigure,
    size_text,
)

FORMATS = (".png", ".svg")
DPI = 100
# Okabe & Ito, "Color Universal Design" (2002): black, orange, sky blue, bluish green, yellow, blue,
# vermillion, reddish purple.
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
SERIES_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
# The per-arch bars: colours the target bars beside them do not use.
ARCH_COLOURS = ("#009E73", "#CC79A7", "#56B4E9", "#F0E442", "#E69F00", "#0072B2", "#D55E00")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)))
HATCHES = ("", "//", "..", "xx", "\\\\", "oo", "++", "--")
CATEGORY_STYLE = {  # colour, hatch, text colour
    "native": ("#009E73", "", "#000000"),
    "gated": ("#56B4E9", "..", "#000000"),
    "ptx-jit": ("#F0E442", "//", "#000000"),
    "optional": ("#D9D9D9", "oo", "#000000"),
    "partial": ("#E69F00", "\\\\", "#000000"),
    "none": ("#D55E00", "XX", "#000000"),
    "unreadable": ("#000000", "", "#FFFFFF"),
}


def check_plot_path(path: str | Path) -> Path:
    """``--plot PATH`` checked before any work: a .png or .svg name, and matplotlib importable."""
    import importlib.util

    target = Path(path).expanduser()
    if target.suffix.lower() not in FORMATS:
        raise ForgeError(f"--plot {path}: cannot tell the format from {target.suffix or 'a name without suffix'}",
                         "name a .png or .svg file, e.g. --plot build/busbw.svg")
    if target.is_dir():
        raise ForgeError(f"--plot {path} is a directory", "name a file in it, e.g. --plot build/figure.png")
    if importlib.util.find_spec("matplotlib") is None:
        raise ForgeError("--plot needs matplotlib, which this Python does not have",
                         "python3 -m pip install -r requirements.txt")
    return target


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _wrap(text: str, width: int, lines: int = 3) -> str:
    return "\n".join(textwrap.wrap(text, width, max_lines=lines, placeholder=" ...")) or " "


def _frame(fig, title: str, source: str, notes: tuple[str, ...] = ()) -> None:
    """Title on top, the source line (and notes) at the bottom: each figure stands alone."""
    chars = int(fig.get_figwidth() * 13)
    fig.suptitle(_wrap(title, int(chars * 0.85)), fontsize=11, fontweight="bold", x=0.01, ha="left")
    footer = _wrap(source + (" | " + "; ".join(notes) if notes else ""), int(chars * 1.05), 4)
    # suptitle and supxlabel: constrained layout keeps the axes clear of both.
    fig.supxlabel(footer, fontsize=7, color="#333333", x=0.01, ha="left", va="bottom")


def _human_size(size: float) -> str:
    from vllm_forge.nccl.nccl_test import human_size

    return human_size(int(size)) if size >= 1 else f"{size:g}"


def draw_nccl(data: NcclFigure):
    fig = _figure(11, 6.5)
    ax = fig.add_subplot()
    if data.band:
        low, high = data.band
        ax.axhspan(low, high, facecolor="#009E73", alpha=0.12, hatch="..", edgecolor="#009E73", linewidth=0,
                   label=f"healthy band: {low:g}-{high:g} GB/s (>= {low / high:.0%} of the link model)")
    for index, ref in enumerate(data.references):
        ax.axhline(ref.value, color="#000000", linestyle=("--", "-.", ":")[index % 3], linewidth=1.5,
                   label=_wrap(f"{ref.label}; source: {ref.source}", 90, 2))
    if data.poor:
        ax.axhline(data.poor, color="#D55E00", linestyle=":", linewidth=1.2,
                   label=f"fail below {data.poor:g} GB/s ({data.poor / data.references[0].value:.0%} of the "
                         "link model)")
    for index, curve in enumerate(data.curves):
        style = index % len(SERIES_COLOURS)
        ax.plot(curve.sizes, curve.busbw, color=SERIES_COLOURS[style], marker=MARKERS[style],
                linestyle=LINESTYLES[style], linewidth=1.8, markersize=5, label=_wrap(curve.label, 90, 2))
        ax.annotate(f"{curve.busbw[-1]:g} GB/s", (curve.sizes[-1], curve.busbw[-1]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8, color=SERIES_COLOURS[style])
    ax.set_xscale("log", base=2)
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.xaxis.set_major_locator(LogLocator(base=2, numticks=40))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: _human_size(value)))
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    ax.set_xlabel("message size (bytes; K, M, G = 2^10, 2^20, 2^30; log scale)")
    ax.set_ylabel("bus bandwidth, busbw (GB/s)")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="major", color="#DDDDDD", linewidth=0.6)
    if not data.curves:
        ax.text(0.5, 0.5, "no multi-rank result rows to draw", transform=ax.transAxes, ha="center")
    ax.legend(loc="upper left", bbox_to_anchor=(0, -0.16), fontsize=7.5, frameon=False, ncols=2)
    _frame(fig, data.title, data.source, data.notes)
    return fig


def _stack(ax, x: int, bar, parts: list[str], label_from: float) -> None:
    """One bar: its segments bottom up, each part with its colour and hatch, sizes written on the larger ones."""
    bottom = 0.0
    for name, size in bar.segments:
        if not size:
            continue  # an empty part: in the table beside the figure, not in the legend
        if bar.reference:
            colour, hatch, label = "#BBBBBB", "\\\\", "reference (a whole image)"
        else:
            index = parts.index(name)
            colour, hatch, label = OKABE_ITO[(index + 1) % len(OKABE_ITO)], HATCHES[index % len(HATCHES)], name
        ax.bar(x, size / GB, bottom=bottom / GB, color=colour, hatch=hatch, edgecolor="#333333", linewidth=0.6,
               width=0.6, label=label)
        if size >= label_from and not bar.reference:
            ax.text(x, (bottom + size / 2) / GB, size_text(size), ha="center", va="center", fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0, "pad": 1})
        bottom += size
    ax.text(x, bar.total / GB, size_text(bar.total), ha="center", va="bottom", fontsize=9, fontweight="bold")


def draw_size(data: SizeFigure):
    """Left: the image alone, on its own scale (its parts stay readable however small it is); right: the image
    beside the reference images, on one scale."""
    fig = _figure(max(9.0, 2.0 * len(data.bars) + 5), 6.5)
    own, together = fig.subplots(1, 2, width_ratios=(1, max(2, len(data.bars))))
    parts = [name for name, _ in data.bars[0].segments]
    image = data.bars[0]
    _stack(own, 0, image, parts, 0.04 * image.total)
    own.set_xticks([0], [_wrap(image.label, 22, 3)], fontsize=8)
    own.set_xlim(-0.6, 0.6)
    own.set_ylim(0, image.total / GB * 1.12)
    own.set_ylabel("image size (GB, SI units as docker reports them)")
    own.set_title("where the bytes are", fontsize=10)
    tallest = max(b.total for b in data.bars)
    for x, bar in enumerate(data.bars):
        _stack(together, x, bar, parts, 0.04 * tallest)
    if data.budget:
        for ax in (own, together):
            ax.axhline(data.budget / GB, color="#D55E00", linestyle="--", label=f"budget {data.budget / GB:g} GB")
    together.set_xticks(range(len(data.bars)), [_wrap(bar.label, 22, 3) for bar in data.bars], fontsize=8)
    together.set_ylim(0, tallest / GB * 1.12)
    together.set_ylabel("GB (same scale for every bar)")
    together.set_title("against the reference images", fontsize=10)
    for ax in (own, together):
        ax.grid(True, axis="y", color="#DDDDDD", linewidth=0.6)
    handles, labels = together.get_legend_handles_labels()
    unique = dict(reversed(list(zip(labels, handles, strict=True))))  # top of the legend = top of the stack
    together.legend(unique.values(), unique.keys(), loc="upper right", fontsize=8, framealpha=0.92)
    _frame(fig, data.title, data.source, data.notes)
    return fig


def _short(path: str, width: int = 58) -> str:
    return path if len(path) <= width else "..." + path[-(width - 3):]


def draw_build(data: BuildFigure):
    fig = _figure(13 if data.archs else 10, max(4.5, 1.6 + 0.32 * len(data.units)))
    grid = fig.add_gridspec(1, 2, width_ratios=(3, 1.2)) if data.archs else fig.add_gridspec(1, 1)
    ax = fig.add_subplot(grid[0, 0])
    targets = sorted({target for _, target, _ in data.units})
    labels = [f"{_short(source)} [{target}]" for source, target, _ in data.units]
    for index, (_, target, seconds) in enumerate(data.units):
        style = targets.index(target)
        ax.barh(index, seconds, color=SERIES_COLOURS[style % len(SERIES_COLOURS)], hatch=HATCHES[style % 8],
                edgecolor="#333333", linewidth=0.5, label=f"CMake target {target}")
        ax.text(seconds, index, f" {seconds:,.1f} s", va="center", fontsize=7.5)
    ax.set_yticks(range(len(labels)), labels, fontsize=7.5)
    ax.invert_yaxis()
    ax.set_xlabel("compile time of the unit (s, wall clock of one job)")
    ax.set_title(f"slowest {len(data.units)} compile units (.ninja_log)", fontsize=10, loc="left")
    if data.units:
        ax.set_xlim(0, max(s for _, _, s in data.units) * 1.18)
        handles, names = ax.get_legend_handles_labels()
        unique = dict(zip(names, handles, strict=True))
        ax.legend(unique.values(), unique.keys(), loc="lower right", bbox_to_anchor=(1, 1), fontsize=7.5,
                  frameon=False, ncols=min(3, len(unique)), borderaxespad=0.2)
    else:
        ax.text(0.5, 0.5, "nothing compiled", transform=ax.transAxes, ha="center")
    if data.archs:
        # Horizontal, like the units: seven archs (the bench's) still read, each with its own colour and hatch.
        side = fig.add_subplot(grid[0, 1])
        names = [arch for arch, _ in data.archs] + ["shared (host,\nonce per unit)"]
        values = [seconds for _, seconds in data.archs] + [data.shared_seconds]
        for index, value in enumerate(values):
            shared = index == len(values) - 1
            side.barh(index, value, color="#BBBBBB" if shared else ARCH_COLOURS[index % len(ARCH_COLOURS)],
                      hatch="\\\\" if shared else HATCHES[(index + 2) % len(HATCHES)], edgecolor="#333333",
                      linewidth=0.5)
            side.text(value, index, f" {value:,.1f} s", va="center", fontsize=8)
        side.set_yticks(range(len(names)), names, fontsize=8)
        side.invert_yaxis()
        side.set_xlabel("device compile time\n(CPU-s, all units; nvcc --time)")
        side.set_title("device compile time per arch", fontsize=10)
        side.set_xlim(0, max(values) * 1.3 or 1)
    _frame(fig, data.title, data.source, data.notes)
    return fig


def draw_audit(data: AuditFigure):
    from matplotlib.patches import Patch, Rectangle

    rows, cols = len(data.files), len(data.targets)
    fig = _figure(max(8.5, 4.5 + 2.2 * cols), 2.6 + 0.34 * max(rows, 1))
    ax = fig.add_subplot()
    for r, cells in enumerate(data.cells):
        for c, cell in enumerate(cells):
            colour, hatch, ink = CATEGORY_STYLE[cell.category]
            # the hatch takes the edge colour: dark, so it shows on the light categories and in greyscale
            ax.add_patch(Rectangle((c + 0.02, r + 0.04), 0.96, 0.92, facecolor=colour, hatch=hatch,
                                   edgecolor="#555555", linewidth=0.6))
            ax.text(c + 0.5, r + 0.5, f"{cell.category}  {cell.text}", ha="center", va="center", fontsize=8,
                    color=ink, bbox={"facecolor": "white", "alpha": 0.75, "linewidth": 0, "pad": 1}
                    if ink == "#000000" else None)
    ax.set_xlim(0, max(cols, 1))
    ax.set_ylim(max(rows, 1), 0)
    ax.set_xticks([c + 0.5 for c in range(cols)], data.targets, fontsize=8.5)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    labels = [f[len(data.prefix) + 1:] if data.prefix else f for f in data.files]
    ax.set_yticks([r + 0.5 for r in range(rows)], [_short(label, 60) for label in labels], fontsize=8)
    ax.set_xlabel("target GPU (compute capability)")
    ax.set_ylabel("file with device code")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    used = {cell.category for cells in data.cells for cell in cells}
    handles = [Patch(facecolor=CATEGORY_STYLE[k][0], hatch=CATEGORY_STYLE[k][1], edgecolor="#333333",
                     label=f"{k}: {AUDIT_CATEGORIES[k]}") for k in AUDIT_CATEGORIES if k in used]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, 0), ncols=2, fontsize=7.5, frameon=False)
    if not rows:
        ax.text(0.5, 0.5, "no file with device code", transform=ax.transAxes, ha="center")
    _frame(fig, data.title, data.source, data.notes)
    return fig


DRAW = {"nccl": draw_nccl, "image-size": draw_size, "build-times": draw_build, "audit": draw_audit}


def render(data) -> object:
    """The matplotlib Figure for any figure data (``data.kind`` picks the drawing)."""
    return DRAW[data.kind](data)


def save(data, path: str | Path) -> Path:
    """Draw ``data`` into ``path`` (.png or .svg, checked as --plot is); parent directories are made."""
    target = check_plot_path(path)
    fig = render(data)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "vllm-forge", "svg.fonttype": "path"}):
        fig.savefig(partial, format=target.suffix[1:].lower(), dpi=DPI,
                    metadata={"Software": "vllm-forge (matplotlib)"} if target.suffix.lower() == ".png"
                    else {"Date": None, "Creator": "vllm-forge (matplotlib)"})
    partial.replace(target)
    return target


def svg_text(data, salt: str) -> str:
    """The figure as an ``<svg>`` element to inline in a page: text kept as text, ids salted per figure so
    several figures in one page never share a clip-path id."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "none"}):
        render(data).savefig(buffer, format="svg", metadata={"Date": None, "Creator": "vllm-forge (matplotlib)"})
    text = buffer.getvalue()
    return text[text.index("<svg"):]
