"""--plot and `invoke report` for real: the tasks run as a user runs them (a real nvcc build of the miniature, an
audit, an NCCL diagnosis of the recorded H200 runs, check-size --image on a real image), then the report page is
opened in headless Chromium: no console message, the figures' numbers equal the recorded JSON, a screenshot."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, require_tool
from vllm_forge.gpu import compat
from vllm_forge.report import figure_data
from vllm_forge.source import checkout

pytestmark = pytest.mark.integration

FIXTURES = REPO_ROOT / "tests" / "fixtures"
FAULT = FIXTURES / "h200x2_live_fault"
HEALTHY = FIXTURES / "h200x2_live" / "nccl_tests.txt"


def invoke(*args: str, records: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLLM_FORGE_RECORD_DIR": str(records), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def record(records: Path, kind: str, task: str = "") -> dict:
    """The one record of ``kind`` (that ``invoke TASK`` made)."""
    found = [json.loads(p.read_text()) for p in sorted(records.glob(f"{kind}-*.json"))]
    found = [body for body in found if not task or body["argv"][1] == task]
    assert len(found) == 1, (kind, task, found)
    return found[0]["data"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def made(tmp_path_factory, minivllm_repo, nvcc_toolchain, client, standins):
    """Every kind of record, made by the tasks themselves, and the figures they drew."""
    work = tmp_path_factory.mktemp("figures")
    records = work / "records"
    src = work / "vllm"
    checkout.clone(minivllm_repo, "v0.1.0", src)
    out = {"work": work, "records": records}
    # no compile cache: every unit is compiled, so nvcc reports every arch's time
    out["build"] = invoke("build-wheel", "--vllm-src", str(src), "--arch", "9.0;12.0", "--compile-cache", "none",
                          "--dist-dir", str(work / "dist"), "--plot", str(work / "build.png"), records=records)
    out["audit"] = invoke("audit", str(work / "dist"), "--arch", "9.0", "--arch", "rtx5090", "--arch", "8.0",
                          "--json", "--plot", str(work / "audit.svg"), records=records)
    out["nccl"] = invoke("nccl-diagnose", str(FAULT), "--plot", str(work / "nccl.png"), "--overlay",
                         f"{HEALTHY},{FAULT / 'topo.txt'}", records=records)
    out["size"] = invoke("check-size", "--image", standins["runtime"], "--plot", str(work / "size.svg"),
                         "--reference", "field report, multi-stage=28.4", records=records)
    return out


def test_build_wheel_plots_its_slowest_units_and_the_time_of_each_arch(made):
    assert made["build"].returncode == 0, made["build"].stderr[-2000:]
    times = record(made["records"], "build-times")
    assert [a["arch"] for a in times["archs"]] == ["sm_90", "sm_120"] and all(a["seconds"] > 0 for a in times["archs"])
    assert times["archs_asked"] == ["sm_90", "sm_120"] and times["wheel"].endswith(".whl")
    assert {u["source"] for u in times["slowest"]} >= {"csrc/add_one.cu", "csrc/scale.cu", "csrc/reduce.cu"}
    assert times["objects"] == len(times["slowest"]) and times["nvcc_units"] >= 4
    run = record(made["records"], "run", "build-wheel")
    assert [(s["name"], s["status"]) for s in run["steps"]] == [("use-existing-torch", "done"),
                                                                 ("build-wheel", "done")]
    assert any("NVCC_APPEND_FLAGS='--time " in line for line in run["steps"][1]["lines"])  # printed is run
    fig = figure_data.build_figure(times)
    width, height = png_size(made["work"] / "build.png")
    assert (width, height) == (1300, round(max(4.5, 1.6 + 0.32 * len(fig.units)) * 100))
    assert f"plot {made['work'] / 'build.png'}" in made["build"].stdout


def test_audit_plots_its_map_and_keeps_stdout_json(made):
    assert made["audit"].returncode == 1, made["audit"].stderr[-2000:]  # built for sm_90 and sm_120, not sm_80
    printed = json.loads(made["audit"].stdout)  # the plot's line went to stderr
    assert printed == record(made["records"], "audit") and "plot " in made["audit"].stderr
    root = ET.parse(made["work"] / "audit.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_nccl_diagnose_lays_the_healthy_run_over_the_fault(made):
    assert made["nccl"].returncode == 1  # the fault run fails, as the text report says
    data = record(made["records"], "nccl")
    assert data["root_cause"]["level"] == "fail" and len(data["overlays"]) == 1
    name, healthy = data["overlays"][0]
    assert name == "h200x2_live/nccl_tests.txt +1" and healthy["root_cause"]["level"] == "pass"
    assert png_size(made["work"] / "nccl.png") == (1100, 650)


def test_check_size_plots_the_image_beside_the_references_named(made):
    assert made["size"].returncode == 0, made["size"].stderr[-2000:]
    data = record(made["records"], "image-size")
    figure = figure_data.size_figure(data, [figure_data.parse_reference("field report, multi-stage=28.4")])
    assert figure.bars[0].total == data["size"] and [b.label for b in figure.bars[1:]] == ["field report, multi-stage"]
    assert ET.parse(made["work"] / "size.svg").getroot().tag == "{http://www.w3.org/2000/svg}svg"


@pytest.mark.parametrize("args, words", [
    (["nccl-diagnose", str(FAULT), "--plot", "busbw.jpg"], "error: --plot busbw.jpg: cannot tell the format from .jpg"),
    (["nccl-diagnose", str(FAULT), "--overlay", str(FAULT)], "error: --overlay lays runs over the --plot figure"),
    (["check-size", "--plot", "size.svg"], "error: --plot and --reference draw an image's size: they need --image"),
    (["check-size", "--image", "x:y", "--plot", "s.svg", "--reference", "40"],
     "error: --reference '40' is not LABEL=GB"),
    (["build-wheel", "--vllm-src", "/nonexistent", "--plot", "b.gif"], "error: --plot b.gif: cannot tell the format"),
])
def test_a_bad_plot_flag_fails_first_in_one_line_and_records_nothing(tmp_path, args, words):
    proc = invoke(*args, records=tmp_path / "records")
    assert proc.returncode == 2 and proc.stderr.startswith(words) and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "records").exists()


# ---- the report page in a real browser ---------------------------------------------------------------------------


class Tables(HTMLParser):
    """The data-* attributes of every row of the figures' tables, by the table's data-figure."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[dict]] = {}
        self.current: list[str] = []
        self.attrs: list[dict] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.current.append(attrs.get("data-figure", ""))
        elif tag == "tr" and self.current and self.current[-1]:
            self.rows.setdefault(self.current[-1], []).append(attrs)
        elif tag == "td" and self.current and self.current[-1] == "audit" and "data-target" in attrs:
            self.rows["audit"][-1].setdefault("cells", []).append(attrs)
        if any(k.startswith("data-band") or k == "data-outcome" for k in attrs):
            self.attrs.append(attrs)

    def handle_endtag(self, tag):
        if tag == "table" and self.current:
            self.current.pop()


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    require_tool("chromium (Debian's chromium package)", found is not None)
    return found


def browse(page: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``page``, console messages on stderr, a profile of its own."""
    command = [chromium(), "--headless", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
               f"--user-data-dir={work / 'profile'}", *args, page.as_uri()]
    if os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Content Security Policy" in line]


def test_console_messages_are_seen(tmp_path):
    """The check below can fail: a page that fetches from the network logs a CSP refusal to the console."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><head><meta http-equiv=\"Content-Security-Policy\" content=\"default-src "
                    "'none'\"></head><body><img src=\"https://example.invalid/x.png\"></body></html>")
    assert console_messages(browse(page, tmp_path, "--dump-dom").stderr)


def test_the_report_page_in_chromium(made, tmp_path):
    records = made["records"]
    proc = invoke("report", "--out", str(tmp_path / "reports"), records=records)
    assert proc.returncode == 0, proc.stderr
    page = tmp_path / "reports" / "index.html"
    assert proc.stdout.strip() == f"wrote {page}"
    text = page.read_text()
    assert "<script" not in text and not any(f'{attr}="http' in text for attr in ("src", "href"))

    dom = browse(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0 and console_messages(dom.stderr) == []
    tables = Tables()
    tables.feed(dom.stdout)
    rows = tables.rows

    run = record(records, "run", "check-size")  # the newest run, shown in full
    assert [(r["data-step"], float(r["data-seconds"])) for r in rows["steps"][1:]] == [
        (s["name"], s["seconds"]) for s in run["steps"]]

    times = record(records, "build-times")
    assert [(r["data-source"], float(r["data-seconds"])) for r in rows["build-times"][1:]] == [
        (u["source"], u["seconds"]) for u in times["slowest"]]
    assert [(r["data-arch"], float(r["data-seconds"])) for r in rows["build-archs"][1:]] == [
        (a["arch"], a["seconds"]) for a in times["archs"]] + [("shared", times["shared_seconds"])]

    audit = record(records, "audit")
    by_path = {f["path"]: f for f in audit["files"]}
    shown = rows["audit"][1:]
    assert {r["data-file"] for r in shown} == {p for p, f in by_path.items() if f["sass"] or f["ptx"]}
    for row in shown:
        judged = by_path[row["data-file"]]
        for cell in row["cells"]:
            groups, verdict = judged["groups"][cell["data-target"]], judged["verdict"][cell["data-target"]]
            optional = judged["optional"] and verdict in ("none", "partial")
            assert cell["data-category"] == ("optional" if optional else verdict)
            assert (int(cell["data-groups"]), int(cell["data-runnable"])) == (groups["count"],
                                                                              groups["count"] - groups["none"])

    size = record(records, "image-size")
    parts = [(r["data-part"], int(r["data-bytes"])) for r in rows["image-size"][1:] if r["data-reference"] == "false"]
    assert parts[1:] == list(size["parts"].items()) and sum(b for _, b in parts) == size["size"]
    assert [int(r["data-bytes"]) for r in rows["image-size"][1:] if r["data-reference"] == "true"] == [
        40 * 1000**3, int(28.4 * 1000**3)]  # the field report's bars: the page names no references of its own

    nccl = record(records, "nccl")
    expected = nccl["root_cause"]["expected"]
    assert [float(r["data-reference"]) for r in rows["nccl-references"][1:]] == [expected]
    band = next(a for a in tables.attrs if "data-band-low" in a)
    assert (float(band["data-band-low"]), float(band["data-band-high"])) == (
        compat.BUSBW_SHARE["good"] * expected, expected)
    table = next(f["facts"] for f in nccl["files"] if f["kind"] == "nccl-tests")
    healthy = next(f["facts"]["all_reduce.txt"] for f in nccl["overlays"][0][1]["files"] if f["kind"] == "bundle")
    points = [(int(r["data-size"]), float(r["data-busbw"])) for r in rows["nccl"] if "data-size" in r]
    assert points == [(row["size"], row["busbw"]) for row in table["rows"] + healthy["rows"]]

    shot = Path(os.environ.get("VLLM_FORGE_SCREENSHOT_DIR") or tmp_path) / "report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    taken = browse(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,7000")
    assert taken.returncode == 0 and console_messages(taken.stderr) == []
    assert png_size(shot) == (1280, 7000)
    print(f"screenshot: {shot}")
