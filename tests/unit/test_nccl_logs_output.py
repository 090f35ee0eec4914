"""vllm_forge/nccl/nccl_logs.py's inputs and outputs, checked exactly: which files a spec names, which NCCL_* values
are harmful at their thresholds, the text and JSON a diagnosis prints, and the CLI's exit code
(issue 22: these were run by the tests but their results were only searched for a word).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.nccl import nccl_logs
from vllm_forge.nccl.nccl_logs import FileReport, Finding, RootCause

LIVE = Path(__file__).resolve().parents[1] / "fixtures" / "h200x2_live"


# ---- which files ------------------------------------------------------------------------------------------


def test_input_paths_words_commas_globs_and_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("a.log", "b.log", "c.txt"):
        Path(name).write_text("x\n")
    logs = Path("logs")
    logs.mkdir()
    (logs / "z.log").write_text("text\n")
    (logs / "bin").write_bytes(b"\x7fELF" + b"\0" * 10)
    (logs / "late-nul").write_bytes(b"x" * 4096 + b"\0")  # a NUL past the first 4 KiB: still text
    (logs / "sub").mkdir()
    paths, in_dirs = nccl_logs.input_paths("a.log,c.txt  *.log logs")
    assert paths == [Path("a.log"), Path("c.txt"), Path("a.log"), Path("b.log"), Path("logs/late-nul"),
                     Path("logs/z.log")]
    assert in_dirs == {"logs/late-nul", "logs/z.log"}
    assert nccl_logs.input_paths("missing.log") == ([Path("missing.log")], set())  # read later, refused there
    assert nccl_logs.input_paths("b.lo?") == ([Path("b.log")], set())
    assert nccl_logs.input_paths("[ab].log") == ([Path("a.log"), Path("b.log")], set())


def test_input_paths_that_name_nothing_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec in ("", " , "):  # `invoke nccl-diagnose` with nothing after it
        with pytest.raises(ForgeError, match=r"^nccl-diagnose needs the files to read\. Fix: name them, e\.g\. "
                                             r"invoke nccl-diagnose logs/\*\.log topo\.txt"):
            nccl_logs.input_paths(spec)
    with pytest.raises(ForgeError, match=re.escape("no files in '*.nothing'")):
        nccl_logs.input_paths("*.nothing")
    Path("empty").mkdir()
    with pytest.raises(ForgeError):
        nccl_logs.input_paths("empty")


# ---- which NCCL_* values are harmful ----------------------------------------------------------------------


@pytest.mark.parametrize("value, harmful", [
    ("Simple", False), ("LL,LL128,Simple", False), ("ll, simple", False), ("^LL", False), ("^LL,LL128", False),
    ("LL", True), ("LL,LL128", True), ("^Simple", True), ("^LL,simple", True),
])
def test_proto_harm(value, harmful):
    why = nccl_logs._proto_harm(value)
    if harmful:
        assert why == (f"NCCL_PROTO={value} leaves out the Simple protocol, the only one that reaches full "
                       "bandwidth on large messages (LL moves 4 data bytes per 8, LL128 120 per 128)")
    else:
        assert why == ""


@pytest.mark.parametrize("value, why", [
    ("15", "NCCL_MAX_NCHANNELS=15 is below the default 16: fewer channels than the link needs"),
    ("16", ""), ("32", ""), ("0", "NCCL_MAX_NCHANNELS=0 is below the default 16: fewer channels than the link needs"),
    ("many", ""), ("", ""),
])
def test_small_int_harm_at_its_default(value, why):
    assert nccl_logs.SETTINGS["NCCL_MAX_NCHANNELS"].harmful(value) == why


def test_p2p_level_and_switches():
    harm = nccl_logs.SETTINGS
    assert harm["NCCL_P2P_LEVEL"].harmful("loc") == "NCCL_P2P_LEVEL=LOC forbids P2P between any two GPUs"
    assert harm["NCCL_P2P_LEVEL"].harmful("0") == "NCCL_P2P_LEVEL=LOC forbids P2P between any two GPUs"
    assert harm["NCCL_P2P_LEVEL"].harmful("NVL") == ""
    for value, on in (("1", True), ("0", False), ("", False), ("false", False), ("False", False), (" 0 ", False),
                      ("yes", True)):
        assert bool(harm["NCCL_P2P_DISABLE"].harmful(value)) is on, value
        assert bool(harm["NCCL_SHM_DISABLE"].harmful(value)) is on, value


def test_weigh_settings_heaviest_first_and_only_harmful_values():
    env = {"NCCL_ALGO": "Ring", "NCCL_NVLS_ENABLE": "0", "NCCL_BUFFSIZE": "1048576", "NCCL_P2P_DISABLE": "1",
           "NCCL_PROTO": "Simple", "NCCL_DEBUG": "INFO", "NCCL_NTHREADS": "512", "NCCL_SHM_DISABLE": "1"}
    weighed = nccl_logs.weigh_settings(env)
    assert [(w, name) for w, name, _ in weighed] == [
        (3, "NCCL_P2P_DISABLE=1"), (3, "NCCL_SHM_DISABLE=1"), (2, "NCCL_BUFFSIZE=1048576"), (1, "NCCL_ALGO=Ring")]
    assert weighed[2][2] == "NCCL_BUFFSIZE=1048576 is below the default 4194304: fewer bytes in flight per step"
    assert weighed[3][2] == "NCCL_ALGO=Ring forces the algorithm NCCL's tuner would otherwise choose per size"
    assert nccl_logs.weigh_settings({}) == []


# ---- nvidia-smi CSV ---------------------------------------------------------------------------------------


def test_parse_smi_csv_keeps_whole_rows_under_the_header_names():
    text = ("index, name, compute_cap, memory.total [MiB]\n"
            "0, NVIDIA H200, 9.0, 143771 MiB\n\n"
            "1, NVIDIA H200, 9.0\n"
            "2, NVIDIA H200, 9.0, 143771 MiB\r\n")
    assert nccl_logs.parse_smi_csv(text) == [
        {"index": "0", "name": "NVIDIA H200", "compute_cap": "9.0", "memory.total": "143771 MiB"},
        {"index": "2", "name": "NVIDIA H200", "compute_cap": "9.0", "memory.total": "143771 MiB"}]
    assert nccl_logs.parse_smi_csv("") == [] and nccl_logs.parse_smi_csv("\n \n") == []
    assert nccl_logs.parse_smi_csv("index, name\n") == []


# ---- what is printed --------------------------------------------------------------------------------------


def test_bandwidth_line_and_share():
    cause = RootCause("fail", "sockets", measured=3.82, expected=450.0, expected_how="NV18 x 25 GB/s",
                      expected_source="NVIDIA H200 datasheet")
    assert cause.share == pytest.approx(3.82 / 450)
    assert cause.bandwidth_line() == ("measured 3.82 GB/s busbw = 1% of expected 450 GB/s (NV18 x 25 GB/s; "
                                      "source: NVIDIA H200 datasheet)")
    assert RootCause("pass", "ok", measured=314.25).bandwidth_line() == (
        "measured 314.25 GB/s busbw (no link model figure to compare with)")
    assert RootCause("pass", "ok", measured=314.25).share is None
    assert RootCause("pass", "ok", expected=450.0).bandwidth_line() == "" and RootCause("pass", "ok").share is None
    assert RootCause("pass", "ok", measured=0.0, expected=450.0).share == 0.0
    assert RootCause("pass", "ok", measured=5.0, expected=0.0).share is None


def test_root_cause_to_dict():
    cause = RootCause("warn", "slow", "fix it", ["a.log:3: x"], 100.0, 400.0, "how", "src", ["NCCL_ALGO=Ring"])
    assert cause.to_dict() == {"level": "warn", "cause": "slow", "fix": "fix it", "evidence": ["a.log:3: x"],
                               "measured": 100.0, "expected": 400.0, "expected_how": "how", "expected_source": "src",
                               "weighed": ["NCCL_ALGO=Ring"], "share": 0.25}


def test_render_text_exactly():
    cause = RootCause("fail", "sockets carried the traffic", "unset NCCL_P2P_DISABLE", ["x.log:1: NET/Socket"],
                      3.82, 450.0, "NV18", "datasheet")
    reports = [
        FileReport("x.log", "nccl-log", [
            Finding("fail", "transport", "NET/Socket between GPUs", "unset it", "NCCL docs",
                    ["line one", "line two", "line three"]),
            Finding("info", "nccl-version", "NCCL 2.28.9", "ignored fix", "ignored source", ["x" * 250]),
            Finding("warn", "slow", "below the link", "", "", []),
        ]),
        FileReport("y.txt", "topo", [Finding("pass", "topo", "NV18")]),
    ]
    assert nccl_logs.render_text(reports, cause).splitlines() == [
        "ROOT CAUSE [FAIL]: sockets carried the traffic",
        "  bandwidth: measured 3.82 GB/s busbw = 1% of expected 450 GB/s (NV18; source: datasheet)",
        "  evidence: x.log:1: NET/Socket",
        "  fix: unset NCCL_P2P_DISABLE",
        "",
        "x.log [nccl-log]: FAIL",
        "  FAIL transport: NET/Socket between GPUs",
        "       fix: unset it",
        "       see: NCCL docs",
        "       > line one",
        "       > line two",
        "  INFO nccl-version: NCCL 2.28.9",
        "       > " + "x" * 200,
        "  WARN slow: below the link",
        "y.txt [topo]: PASS",
        "  PASS topo: NV18",
    ]
    assert nccl_logs.render_text(reports[1:]) == "y.txt [topo]: PASS\n  PASS topo: NV18"
    assert nccl_logs.render_root_cause(RootCause("pass", "no failure found")) == [
        "ROOT CAUSE [PASS]: no failure found"]


def test_worst_level_orders_fail_over_warn_over_pass_and_info():
    levels = lambda *names: nccl_logs.worst_level([Finding(n, "c", "m") for n in names])  # noqa: E731
    assert levels() == "pass" and levels("info") == "pass" and levels("pass", "info") == "pass"
    assert levels("info", "warn", "pass") == "warn" and levels("warn", "fail", "warn") == "fail"
    assert levels("fail", "warn") == "fail" and levels("odd") == "pass"


def test_report_dict_and_file_report():
    report = FileReport("a.log", "nccl-log", [Finding("warn", "w", "m", evidence=["e"])], facts={"version": "2.28"})
    cause = RootCause("warn", "slow")
    assert nccl_logs.report_dict([report], cause) == {
        "level": "warn", "root_cause": cause.to_dict(),
        "files": [{"path": "a.log", "kind": "nccl-log", "level": "warn", "facts": {"version": "2.28"},
                   "findings": [{"level": "warn", "check": "w", "message": "m", "fix": "", "source": "",
                                 "evidence": ["e"]}]}]}


# ---- the CLI ----------------------------------------------------------------------------------------------


def test_main_diagnoses_files_and_exits_by_the_worst_level(capsys):
    healthy = str(LIVE / "nccl_tests.txt")
    assert nccl_logs.main(["diagnose", healthy]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROOT CAUSE [PASS]: ") and f"{healthy} [bundle]: PASS" in out
    assert nccl_logs.main(["diagnose", healthy, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["level"] == "pass" and [f["path"] for f in data["files"]] == [healthy]
    assert data["root_cause"]["level"] == "pass"


def test_main_fails_on_a_failing_file_and_passes_the_gpu_cap(tmp_path, capsys, monkeypatch):
    log = tmp_path / "nccl.log"
    log.write_text("host:1:1 [0] NCCL INFO NCCL version 2.21.5+cuda12.4\n"
                   "host:1:1 [0] misc/strongstream.cc:53 NCCL WARN Cuda failure 1 'invalid argument'\n")
    assert nccl_logs.main(["diagnose", str(log), "--gpu-cap", "12.0"]) == 1
    out = capsys.readouterr().out
    assert f"{log} [nccl-log]: FAIL" in out and "2.26.2" in out
    seen = []
    real = nccl_logs.diagnose_files
    monkeypatch.setattr(nccl_logs, "diagnose_files", lambda files, ctx: seen.append((files, ctx.gpu_caps))
                        or real(files, ctx))
    nccl_logs.main(["diagnose", str(log), str(log)])
    nccl_logs.main(["diagnose", str(log), "--gpu-cap", "9.0"])
    assert seen == [([str(log), str(log)], []), ([str(log)], ["9.0"])]


def test_a_bundle_names_its_sections_and_not_the_text_before_the_first(capsys):
    healthy = str(LIVE / "nccl_tests.txt")  # a run's output, then `== all_reduce.txt` and other sections
    nccl_logs.main(["diagnose", healthy])
    findings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  PASS nccl-tests-ran:")]
    assert [line.split(": ", 1)[1][:26] for line in findings] == ["nccl-tests: 2 rank(s) on N",
                                                                   "[all_reduce.txt] nccl-test"]


# ---- the link model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, expected", [
    (("NV18", "9.0"), (450.0, "18 NVLinks x 25 GB/s (compute capability 9.0)",
                       "H100/H200 SXM datasheet: 900 GB/s over 18 NVLink4 links")),
    (("NV4", "8.6"), (56.25, "4 NVLinks x 14.0625 GB/s (compute capability 8.6)", ("nvlink", "sm_86"))),
    (("NV4", "8.7"), (100.0, "4 NVLinks x 25 GB/s (compute capability 8.7)",
                      "A100 SXM datasheet: 600 GB/s over 12 NVLink3 links")),  # no sm_87 row: sm_80's
    (("NV18", "10.0"), (900.0, "18 NVLinks x 50 GB/s (compute capability 10.0)", ("nvlink", "sm_100"))),
    (("NV12", None), (None, "12 NVLinks of an unknown generation (no capability known)", "")),
    (("NV12", "6.0"), (None, "12 NVLinks of an unknown generation (no capability known)", "")),
    (("NV18x", "9.0"), (None, "unknown link 'NV18x'", "")),
    (("PIX", None, 4), (24.0, "PCIe gen4 x16 (PIX): 24 GB/s", ("pcie", "gen4"))),
    (("PXB", None, 5, 8), (24.0, "PCIe gen5 x8 (PXB): 24 GB/s", ("pcie", "gen5"))),
    (("PCIe", None, 6, 0), (96.0, "PCIe gen6 x16 (PCIe): 96 GB/s", ("pcie", "gen6"))),
    (("SYS", None, 3, None), (12.0, "SHM through host memory over PCIe gen3 x16 (SYS): 12 GB/s", ("shm+pcie", "gen3"))),
    (("PIX", None, None), (None, "PCIe (PIX) of unknown generation", "")),
    (("NODE", None, 7), (None, "PCIe (NODE) of unknown generation", "")),
    (("XYZ",), (None, "unknown link 'XYZ'", "")),
    ((None,), (None, "unknown link None", "")),
])
def test_link_peak_gbps(args, expected):
    peak, how, source = nccl_logs.link_peak_gbps(*args)
    assert (peak, how) == expected[:2]
    if isinstance(expected[2], tuple):  # a row of the link model: its source, as written there
        from vllm_forge.gpu import compat

        kind, key = expected[2]
        row = compat.link_model(kind.split("+")[-1], key).source
        assert source == (f"{compat.link_model('shm', 'PHB').source}; {row}" if "+" in kind else row)
    else:
        assert source == expected[2]


def test_shm_over_the_host_bridge_scales_the_pcie_figure(monkeypatch):
    from vllm_forge.gpu import compat

    rows = [r if r.kind != "shm" else type(r)(**{**r.__dict__, "gbps": 0.5}) for r in compat.LINK_MODEL]
    monkeypatch.setattr(compat, "LINK_MODEL", rows)
    peak, how, source = nccl_logs.link_peak_gbps("PHB", None, 4, 16)
    assert (peak, how) == (12.0, "SHM through host memory over PCIe gen4 x16 (PHB): 12 GB/s")
    assert source.startswith("SHM through host memory") and source.endswith("x16 = 24")
    assert nccl_logs.link_peak_gbps("PIX", None, 4, 16)[0] == 24.0  # only paths through the host are SHM


# ---- evidence and files -----------------------------------------------------------------------------------


def test_evidence_gives_file_line_and_text_up_to_the_limit():
    report = FileReport("a.log", "nccl-log", lines=["first", "  NET/Socket here  ", "x", "NET/Socket " + "y" * 300])
    assert nccl_logs._evidence(report, "NET/Socket") == ["a.log:2: NET/Socket here"]
    both = nccl_logs._evidence(report, "NET/Socket", limit=2)
    assert both == ["a.log:2: NET/Socket here", "a.log:4: NET/Socket " + "y" * 229]
    assert nccl_logs._evidence(report, re.compile(r"^fir")) == ["a.log:1: first"]
    assert nccl_logs._evidence(report, "absent") == []


def test_diagnose_files_reads_each_file_and_refuses_what_is_not_one(tmp_path):
    log = tmp_path / "a.log"
    log.write_bytes(b"host:1:1 [0] NCCL INFO NCCL version 2.28.9+cuda13.0\n\xff\xfe\n")
    (report,) = nccl_logs.diagnose_files([log])
    assert report.path == str(log) and report.kind == "nccl-log" and report.lines[1] == "\ufffd\ufffd"
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    reports = nccl_logs.diagnose_files([str(log), other], optional={other})
    assert [(r.path, r.kind) for r in reports] == [(str(log), "nccl-log"), (str(other), "unknown")]
    assert [f.check for f in reports[1].findings] == ["unrecognised-file"]
    assert [f.level for f in nccl_logs.diagnose_files([other])[0].findings] == ["fail"]
    with pytest.raises(ForgeError, match=f"{re.escape(str(tmp_path))} is not a file"):
        nccl_logs.diagnose_files([tmp_path])
    with pytest.raises(ForgeError, match="is not a file"):
        nccl_logs.diagnose_files([tmp_path / "missing.log"])
