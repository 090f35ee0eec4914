"""report/figures.py: every figure is a valid PNG or SVG of the size it declares, and matplotlib loads only to draw."""

from __future__ import annotations

import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_figure_data import BREAKDOWN, FAULT, FIXTURES, HEALTHY, diagnosis

from vllm_forge.build import build_times, ninja_log
from vllm_forge.core.errors import ForgeError
from vllm_forge.report import figure_data, figures

REPO = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def svg_root(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    return root


def every_figure():
    phases = build_times.parse_nvcc_time("u.cu , cicc , a , b , compute_90 , nvcc , 3 , s\n"
                                         "u.cu , cicc , a , b , compute_120 , nvcc , 4 , s\n")
    log = ninja_log.read_ninja_log(FIXTURES / "gpu_real_build_0_26_0" / "ninja_log.txt")
    times = build_times.recorded(log, phases).record()
    audit = {"target": ["sm_90", "sm_120"], "gpu": {"sm_120": "RTX 5090"}, "ok": False, "source": "dist/x.whl",
             "files": [{"path": f"vllm/_{n}_C.abi3.so", "verdict": {"sm_90": v, "sm_120": w}, "required": True,
                        "error": None, "optional": None, "sass": ["sm_90"], "ptx": [],
                        "groups": {t: {"count": 4, "none": 0 if t == "sm_90" else 4, "ptx_jit": 0}
                                   for t in ("sm_90", "sm_120")}}
                       for n, v, w in (("a", "native", "none"), ("b", "native", "ptx-jit"), ("c", "gated", "partial"))]}
    return {
        "nccl": figure_data.nccl_figure(diagnosis(FAULT), [("healthy", diagnosis(HEALTHY / "nccl_tests.txt",
                                                                                FAULT / "topo.txt"))]),
        "size": figure_data.size_figure(BREAKDOWN),
        "build": figure_data.build_figure({**times, "ninja_log": "ninja_log.txt"}),
        "audit": figure_data.audit_figure(audit),
    }


@pytest.fixture(scope="module")
def drawn():
    return every_figure()


@pytest.mark.parametrize("name", ["nccl", "size", "build", "audit"])
def test_png_and_svg_have_the_figures_size(drawn, name, tmp_path):
    data = drawn[name]
    width, height = figures.render(data).get_size_inches()
    png = figures.save(data, tmp_path / "sub" / f"{name}.png")  # parent directories are made
    assert png_size(png) == (round(width * figures.DPI), round(height * figures.DPI))
    svg = svg_root(figures.save(data, tmp_path / f"{name}.svg"))
    assert (svg.get("width"), svg.get("height")) == (f"{width * 72:g}pt", f"{height * 72:g}pt")
    assert not list(tmp_path.glob(".*partial"))


def test_each_figure_carries_its_title_source_and_axis_units(drawn):
    for name, data in drawn.items():
        fig = figures.render(data)
        texts = [t.get_text() for t in fig.findobj(match=lambda a: hasattr(a, "get_text"))]
        joined = " ".join(t.replace("\n", " ") for t in texts)
        assert data.title[:40] in joined and data.source[:40] in joined, name
        labels = [ax.get_xlabel() + " " + ax.get_ylabel() for ax in fig.axes]
        assert any(word in " ".join(labels) for word in ("GB/s", "GB", "(s", "CPU-s", "GPU")), name
        assert any(ax.get_legend() for ax in fig.axes) or fig.legends, name


def test_series_differ_in_marker_and_line_not_only_colour(drawn):
    axes = figures.render(drawn["nccl"]).axes[0]
    lines = [line for line in axes.get_lines() if len(line.get_xdata()) > 2]
    assert len(lines) == 2
    assert len({line.get_marker() for line in lines}) == 2 and len({str(line.get_linestyle()) for line in lines}) == 2
    assert all(line.get_color() in figures.SERIES_COLOURS for line in lines)


def test_the_drawn_series_are_the_figure_data(drawn):
    axes = figures.render(drawn["nccl"]).axes[0]
    lines = [line for line in axes.get_lines() if len(line.get_xdata()) > 2]
    for line, curve in zip(lines, drawn["nccl"].curves, strict=True):
        assert list(line.get_xdata()) == list(curve.sizes) and list(line.get_ydata()) == list(curve.busbw)
    segments = [size for _, size in drawn["size"].bars[0].segments]
    for axes in figures.render(drawn["size"]).axes:  # the image alone, then beside the references
        stack = axes.patches[:5]
        assert [round(p.get_height() * figure_data.GB) for p in stack] == segments
        assert [round(p.get_y() * figure_data.GB) for p in stack] == [sum(segments[:i]) for i in range(5)]


def test_svg_for_a_page_is_one_svg_element_with_its_own_ids(drawn):
    one, two = figures.svg_text(drawn["size"], "a"), figures.svg_text(drawn["size"], "b")
    assert one.startswith("<svg") and one.rstrip().endswith("</svg>") and "<?xml" not in one
    def clip_ids(svg: str) -> set[str]:
        return {e.get("id") for e in ET.fromstring(svg).iter() if e.tag == f"{SVG}clipPath"}

    assert clip_ids(one) and not clip_ids(one) & clip_ids(two)  # two figures in one page never share a clip path


@pytest.mark.parametrize("name, words", [("x.jpg", "cannot tell the format from .jpg"),
                                         ("noext", "cannot tell the format from a name without suffix")])
def test_a_plot_path_that_is_not_png_or_svg_is_refused(name, words):
    with pytest.raises(ForgeError, match=words) as err:
        figures.check_plot_path(name)
    assert "Fix: name a .png or .svg file" in str(err.value)


def test_a_directory_or_a_python_without_matplotlib_is_refused(tmp_path, monkeypatch):
    (tmp_path / "d.svg").mkdir()
    with pytest.raises(ForgeError, match="is a directory"):
        figures.check_plot_path(tmp_path / "d.svg")
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ForgeError, match="needs matplotlib") as err:
        figures.check_plot_path(tmp_path / "x.png")
    assert "pip install -r requirements.txt" in str(err.value)


def test_matplotlib_is_imported_only_to_draw():
    code = ("import sys; import vllm_forge.report.figures, vllm_forge.report.figure_data, "
            "vllm_forge.report.report_html, vllm_forge.report.run_records; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'numpy', 'PIL')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
