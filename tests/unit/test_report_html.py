"""report/report_html.py: the page is built from the newest records, self-contained, and says what is missing."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from test_figure_data import FAULT, diagnosis

from vllm_forge.core.errors import ForgeError
from vllm_forge.report import report_html, run_records


def run_data(seconds: float, outcome: str = "ok") -> dict:
    return {"steps_asked": ["build-wheel"], "outcome": outcome, "total_seconds": seconds, "wheel": None,
            "image": None, "config": [{"name": "arch", "value": "12.0", "source": "default"}],
            "steps": [{"name": "build-wheel", "title": "build-wheel", "lines": ["# build", "python setup.py x"],
                       "status": "done" if outcome == "ok" else "failed", "seconds": seconds}]}


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(page: str) -> list[tuple[str, dict]]:
    collect = Collect()
    collect.feed(page)
    return collect.tags


def test_no_record_at_all_is_an_error_with_the_fix(tmp_path):
    with pytest.raises(ForgeError, match="no runs are recorded under") as err:
        report_html.write_report(tmp_path / "none", tmp_path / "out")
    assert "run a task first" in str(err.value) and not (tmp_path / "out").exists()


def test_the_page_is_self_contained_and_names_what_is_not_recorded(tmp_path):
    records = tmp_path / "records"
    run_records.save("nccl", diagnosis(FAULT), directory=records, argv=["invoke", "nccl-diagnose", "x"])
    page = report_html.write_report(records, tmp_path / "out")
    assert page == tmp_path / "out" / "index.html" and not list((tmp_path / "out").glob(".*"))
    text = page.read_text()
    tags = parse(text)
    assert ("meta", {"http-equiv": "Content-Security-Policy", "content": report_html.CSP}) in tags
    assert "default-src 'none'" in report_html.CSP and not any(tag == "script" for tag, _ in tags)
    fetched = [a.get("src") or a.get("href") for _, a in tags if a.get("src") or a.get("href")]
    assert fetched and all(link.startswith("#") for link in fetched)  # only the page's own anchors and ids
    assert text.count("<svg") == 1 and 'data-figure="nccl"' in text
    for how in ("invoke build-wheel, invoke wheel, invoke image or invoke demo", "invoke build-wheel",
                "invoke audit dist/ --arch ...", "invoke check-size --image TAG"):
        assert f"recorded yet: run <code>{how}</code>" in text


def test_the_last_runs_newest_first_the_newest_open(tmp_path):
    records = tmp_path / "records"
    for seconds in (1.5, 2.5, 3.5):
        run_records.save("run", run_data(seconds), directory=records, argv=["invoke", "build-wheel", str(seconds)])
    run_records.save("run", run_data(0.0, "failed: no. Fix: yes."), directory=records, argv=["invoke", "wheel"])
    text = report_html.render_page(records)
    tags = parse(text)
    runs = [a["data-run"] for t, a in tags if t == "tr" and "data-run" in a]
    assert len(runs) == 4 and runs[0].startswith("run-")
    commands = re.findall(r'<tr data-run="[^"]+"><td class="when">[^<]+</td><td><code>([^<]+)</code>', text)
    assert commands == ["invoke wheel", "invoke build-wheel 3.5", "invoke build-wheel 2.5", "invoke build-wheel 1.5"]
    opened = [a for t, a in tags if t == "details" and "data-run" in a]
    assert ["open" in a for a in opened] == [True, False, False, False]
    steps = [a for t, a in tags if t == "span" and a.get("class") == "step"]
    assert [s["data-seconds"] for s in steps] == ["0.0", "3.5", "2.5", "1.5"]  # 0 s is a time, not a blank
    assert 'data-outcome="failed: no. Fix: yes."' in text


def test_record_values_are_escaped(tmp_path):
    records = tmp_path / "records"
    data = run_data(1.0)
    data["steps"][0]["lines"] = ["echo '<script>alert(1)</script>'"]
    run_records.save("run", data, directory=records, argv=["invoke", "x\"><b>"])
    text = report_html.render_page(records)
    assert "<script>" not in text and "&lt;script&gt;" in text and 'x"><b>' not in text
