"""vllm_forge/nccl/nccl_logs.py's parsing and diagnosis half, checked exactly (issue 22): every fact each parser
records, every signature and the rules that suppress one in favour of another, each threshold on both sides,
how files are recognised and bundled, and every branch of the root cause with its exact text and figures.
Small hand-written NCCL lines (`host:pid:tid [dev] NCCL INFO ...`) for the branches; the recorded 2x H200
runs for end-to-end results."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_forge.gpu import compat
from vllm_forge.nccl import nccl_logs
from vllm_forge.nccl.nccl_logs import (
    CollRow,
    Context,
    Finding,
    LogLine,
    Measure,
    NcclLog,
    NcclTestsRun,
    TopoMatrix,
    diagnose_nccl_log,
    diagnose_nccl_tests,
    diagnose_texts,
    find_root_cause,
    parse_nccl_log,
    parse_nccl_tests,
)
from vllm_forge.nccl.nccl_logs import TestDevice as Device  # aliased: pytest would collect a Test* name

FIX = Path(__file__).resolve().parents[1] / "fixtures"
H200 = FIX / "h200x2"
LIVE = FIX / "h200x2_live"
FAULT = FIX / "h200x2_live_fault"
SIGS = FIX / "nccl_signatures"
NOGPU = FIX / "nccl_tests_nogpu"


def read(path: Path) -> str:
    return path.read_text()


def levels(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.level, f.check) for f in findings]


def info(msg: str, rank: int = 0, host: str = "h") -> str:
    return f"{host}:10:10 [{rank}] NCCL INFO {msg}"


def warn(msg: str, src: str = "", rank: int = 0) -> str:
    return f"h:10:10 [{rank}] {src + ' ' if src else ''}NCCL WARN {msg}"


def log_of(*lines: str) -> NcclLog:
    return parse_nccl_log("\n".join(lines) + "\n")


# ---- text helpers -----------------------------------------------------------------------------------------
def test_strip_ansi_drops_escape_codes_and_carriage_returns():
    assert nccl_logs.strip_ansi("\x1b[4mGPU0\x1b[0m\tGPU1\r\n") == "GPU0\tGPU1\n"
    assert nccl_logs.strip_ansi("a\x1b[1;31mb\x1b[?25lc\x1b[2Kd\x1b[10Ze") == "abcde"
    assert nccl_logs.strip_ansi("\x1b[4 x") == "\x1b[4 x"  # no final letter: not a code
    assert nccl_logs.strip_ansi("plain") == "plain"


def test_lines_are_ansi_free_and_cut_at_max_line():
    assert nccl_logs.MAX_LINE == 2048
    text = "\x1b[4m" + "a" * 2049 + "\x1b[0m\r\nb\n\n" + "c" * 2048
    assert nccl_logs._lines(text) == ["a" * 2048, "b", "", "c" * 2048]
    assert nccl_logs._lines("") == []


@pytest.mark.parametrize("text, version", [
    ("2.25.1", (2, 25, 1)), ("12.8", (12, 8)), ("v2.28.9+cuda13.0", (2, 28, 9)), ("nccl 10.0.12a", (10, 0, 12)),
    ("10", None), ("", None), (None, None), ("a.b", None),
])
def test_parse_version(text, version):
    assert nccl_logs.parse_version(text) == version


def test_version_str():
    assert nccl_logs.version_str((2, 28, 9)) == "2.28.9"
    assert nccl_logs.version_str((12, 8)) == "12.8"
    assert nccl_logs.version_str(None) == "?"
    assert nccl_logs.version_str(()) == "?"


# ---- nccl-tests tables ------------------------------------------------------------------------------------
@pytest.mark.parametrize("token, value", [
    ("1", 1.0), ("-1", -1.0), ("20.50", 20.5), ("1e3", 1000.0), ("1.5E-2", 0.015), ("2e+1", 20.0),
    ("N/A", None), ("1.", None), ("+1", None), ("1e", None), (".5", None), ("1,5", None), ("", None),
])
def test_num_takes_plain_numbers_only(token, value):
    assert nccl_logs._num(token) == value


def test_measure_reads_time_algbw_busbw_wrong():
    assert nccl_logs._measure(["20.00", "52.43", "52.43", "0", "19.00"]) == Measure(20.0, 52.43, 52.43, 0)
    assert nccl_logs._measure(["N/A", "N/A", "N/A", "N/A"]) is None
    assert nccl_logs._measure(["1", "2", "3"]) is None  # fewer than four columns
    assert nccl_logs._measure(["1", "N/A", "N/A", "N/A"]) == Measure(1.0, None, None, None)
    assert nccl_logs._measure(["N/A", "2", "N/A", "3"]) == Measure(None, 2.0, None, 3)
    assert nccl_logs._measure(["N/A", "N/A", "4", "N/A"]) == Measure(None, None, 4.0, None)
    wrong = nccl_logs._measure(["1", "2", "3", "7"]).wrong
    assert wrong == 7 and isinstance(wrong, int)


@pytest.mark.parametrize("line, header", [
    ("#       size         count      type   redop    root     time", True),
    ("#size count type", True), ("## size count type", True),
    ("#  count  size  type", False), ("#  size  type  count", False), ("#  size  count", False), ("# nothing", False),
])
def test_is_table_header_wants_size_count_type_in_order(line, header):
    assert nccl_logs._is_table_header(line) is header


def test_parse_row_both_layouts_and_what_is_not_a_row():
    row = nccl_logs._parse_row("1024 256 float sum -1 5.0 0.2 0.3 0 6.0 0.4 0.5 2", 4)
    assert row == CollRow(1024, 256, "float", "sum", -1, Measure(5.0, 0.2, 0.3, 0), Measure(6.0, 0.4, 0.5, 2))
    # nine tokens: the out-of-place columns only
    assert nccl_logs._parse_row("1024 256 float sum 0 5.0 0.2 0.3 0", 4) == CollRow(
        1024, 256, "float", "sum", 0, Measure(5.0, 0.2, 0.3, 0), None)
    # the per-iteration layout: in-place starts 8 columns later
    wide = "8 2 half max 3 1 2 3 0 9 9 9 9 4 5 6 1"
    assert nccl_logs._parse_row(wide, 8) == CollRow(8, 2, "half", "max", 3, Measure(1.0, 2.0, 3.0, 0),
                                                    Measure(4.0, 5.0, 6.0, 1))
    assert nccl_logs._parse_row(wide, 4).in_place == Measure(9.0, 9.0, 9.0, 9)
    assert nccl_logs._parse_row("8 2 half max 3 1 2 3 0 9 9 9", 8).in_place is None
    oop_missing = nccl_logs._parse_row("8 2 float sum -1 N/A N/A N/A N/A 4 5 6 0", 4)
    assert oop_missing.out_of_place is None and oop_missing.in_place == Measure(4.0, 5.0, 6.0, 0)
    for line in ("1024 256 float sum -1 5.0 0.2 0.3",  # eight tokens
                 "x1024 256 float sum -1 5.0 0.2 0.3 0", "1024 2x6 float sum -1 5.0 0.2 0.3 0",
                 "1024 256 float sum r 5.0 0.2 0.3 0", "1024 256 float sum 1.5 5.0 0.2 0.3 0",
                 "1024 256 7 sum -1 5.0 0.2 0.3 0",  # a number where the type goes
                 "1024 256 float sum -1 N/A N/A N/A N/A N/A N/A N/A N/A"):
        assert nccl_logs._parse_row(line, 4) is None, line


def test_coll_row_best_busbw_and_wrong():
    both = CollRow(8, 2, "float", "sum", -1, Measure(1, 1, 3.0, 2), Measure(1, 1, 5.0, 3))
    assert both.best_busbw() == 5.0 and both.wrong() == 5
    oop_best = CollRow(8, 2, "float", "sum", -1, Measure(1, 1, 7.0, None), Measure(1, 1, None, 4))
    assert oop_best.best_busbw() == 7.0 and oop_best.wrong() == 4
    assert CollRow(8, 2, "float", "sum", -1, None, Measure(1, 1, 2.0, 0)).best_busbw() == 2.0
    none = CollRow(8, 2, "float", "sum", -1, None, None)
    assert none.best_busbw() is None and none.wrong() == 0
    assert CollRow(8, 2, "float", "sum", -1, Measure(1, 1, None, 0), None).best_busbw() is None


def test_the_recorded_fault_table_field_by_field():
    run = parse_nccl_tests(read(FAULT / "all_reduce.txt"))
    assert (run.nthreads, run.ngpus, run.min_bytes, run.max_bytes) == (1, 2, 1048576, 536870912)
    assert run.devices == [Device(0, 1705, "vm", 0, "0000:00:06", "NVIDIA H200"),
                           Device(1, 1706, "vm", 1, "0000:00:07", "NVIDIA H200")]
    assert run.nranks == 2 and run.ranks == 2
    assert run.runner == "torch.distributed" and run.nccl_version == "2.28.9"
    assert run.avg_busbw == 3.23133 and run.out_of_bounds == 0 and run.failures == []
    assert [r.size for r in run.rows] == [1048576 << i for i in range(10)]
    first, last = run.rows[0], run.rows[-1]
    assert first == CollRow(1048576, 262144, "float", "sum", -1, None, Measure(458.78, 2.29, 2.29, 0))
    assert last.in_place == Measure(140521.0, 3.82, 3.82, 0) and last.out_of_place is None
    assert [r.size for r in run.large_rows()] == [67108864, 134217728, 268435456, 536870912]
    assert run.peak_busbw() == 3.82


def test_the_per_iteration_layout_switches_back_for_an_old_header():
    new = read(NOGPU / "per_iteration_layout.txt")
    old = ("#       size         count      type   redop    root     time   algbw   busbw  #wrong     time   algbw\n"
           "     2048      512     float     sum      -1    1.00   2.00   3.00       0    4.00   5.00   6.00       0\n")
    run = parse_nccl_tests(new + old)
    assert [r.in_place for r in run.rows] == [Measure(21.0, 49.93, 49.93, None), Measure(4.0, 5.0, 6.0, 0)]
    assert run.devices[0] == Device(0, 100, "host", 0, "0000:06:00", "NVIDIA H200")


ROW = "     1024        256     float     sum      -1    5.0   0.2   0.2  {w}    5.0   0.2   0.2  0"
HEADER = "# nThread 1 nGpus 2 minBytes 8 maxBytes 1024 step: 2(factor) warmup iters: 5 iters: 20"


def test_failures_in_line_order_then_wrong_elements():
    text = "\n".join([
        HEADER,
        "#  Rank  0 Group  0 Pid 1 on h device  0 [0000:01:00] NVIDIA A100-SXM4-80GB  ",
        "#  Rank  0 Group  0 Pid 1 on h device  0 [0000:01:00] NVIDIA A100-SXM4-80GB",  # printed again: once
        "#  Rank  1 Group  0 Pid 2 on h device  1 [0000:02:00] NVIDIA A100-SXM4-80GB",
        ROW.format(w=3),
        "h: Test NCCL failure common.cu:409 'unhandled cuda error (run with NCCL_DEBUG=INFO for details)'",
        "h: Test CUDA failure common.cu:1 'out of memory'",
        " .. h pid 1: Test failure common.cu:607 and more",
        "Invalid number of GPUs: 2 requested but only 1 found",
        "Incompatible NCCL versions between ranks",
        "Test timeout: the all-reduce did not finish",
        "# Out of bounds values : 3 FAILED",
        "# Avg bus bandwidth    : 0.2 FAILED",
    ])
    run = parse_nccl_tests(text)
    assert run.failures == [
        "Test NCCL failure common.cu:409 'unhandled cuda error (run with NCCL_DEBUG=INFO for details)'",
        "Test CUDA failure common.cu:1 'out of memory'",
        "Test failure common.cu:607",
        "Invalid number of GPUs: 2 requested but only 1 found",
        "Incompatible NCCL versions between ranks",
        "Test timeout: the all-reduce did not finish",
        "Out of bounds values : 3 FAILED",
        "Avg bus bandwidth    : 0.2 FAILED",
        "3 wrong elements at size 1024 (data corruption)",
    ]
    assert run.out_of_bounds == 3 and run.avg_busbw == 0.2
    assert [(d.rank, d.pid, d.name) for d in run.devices] == [(0, 1, "NVIDIA A100-SXM4-80GB"),
                                                              (1, 2, "NVIDIA A100-SXM4-80GB")]
    assert run.nranks == 2


def test_clean_summary_lines_are_no_failures():
    run = parse_nccl_tests(f"{ROW.format(w=0)}\n# Out of bounds values : 0 OK\n# Avg bus bandwidth    : N/A\n")
    assert run.failures == [] and run.out_of_bounds == 0 and run.avg_busbw is None


def test_a_table_printed_twice_counts_once_but_two_tables_both_count():
    table = f"{HEADER}\n{ROW.format(w=0)}\n"
    assert len(parse_nccl_tests(table + "noise\n" + table).rows) == 1
    other = table.replace("maxBytes 1024", "maxBytes 2048")
    assert len(parse_nccl_tests(table + other).rows) == 2
    assert len(parse_nccl_tests(f"{HEADER}\n{table}").rows) == 1  # the header twice before any row: no copy
    assert len(parse_nccl_tests(table + other + table).rows) == 3  # the copy must follow its original


@pytest.mark.parametrize("line, version", [
    ("# nccl-tests version 2.19.6 nccl-headers=22809 nccl-library=22809", "2.28.9"),
    ("# nccl-tests version 2.13.8 nccl-headers=21203 nccl-library=21903", "2.19.3"),
    ("# nccl-tests version 2.0 nccl-headers=1 nccl-library=10000", "1.0.0"),
    ("# nccl-tests version 2.0 nccl-headers=1 nccl-library=9999", "9999"),
    ("#  NCCL version : 2.21.5+cuda12.4", "2.21.5+cuda12.4"),
])
def test_nccl_version_of_a_run(line, version):
    assert parse_nccl_tests(line).nccl_version == version


def test_runner_line_and_defaults():
    assert parse_nccl_tests("# runner :  torch.distributed  \n").runner == "torch.distributed"
    assert parse_nccl_tests("").runner == "nccl-tests"
    empty = parse_nccl_tests("")
    assert (empty.nranks, empty.rows, empty.devices, empty.avg_busbw, empty.out_of_bounds) == (None, [], [], None,
                                                                                              None)


def test_ranks_come_from_the_bandwidths_when_no_device_is_listed():
    rows = "\n".join(f"  {s}  {s // 4}  float  sum  -1  1.0  4.0  {b}  0  1.0  4.0  {b}  0"
                     for s, b in ((1024, 6.0), (2048, 7.0)))
    run = parse_nccl_tests(rows)
    assert run.devices == [] and run.nranks == 8 and run.ranks == 8  # the last row: 7/4 = 2*(8-1)/8


def test_ranks_from_bandwidths():
    def row(algbw, busbw, oop=None):
        return CollRow(8, 2, "float", "sum", -1, oop, Measure(1.0, algbw, busbw, 0))

    rfb = nccl_logs.ranks_from_bandwidths
    assert rfb([row(10, 10)]) == 2 and rfb([row(10, 15)]) == 4 and rfb([row(10, 17.5)]) == 8
    assert rfb([row(10, 0)]) == 1 and rfb([row(2, -100)]) == 1
    assert rfb([row(100, 199)]) is None  # ratio 1.99: no rank count tells
    assert rfb([row(100, 198)]) == 100
    assert rfb([row(1, 1)]) is None and rfb([row(1.01, 1.01)]) == 2  # algbw must exceed 1
    assert rfb([row(0, 0)]) is None and rfb([row(10, None)]) is None and rfb([]) is None
    assert rfb([row(10, 15), row(10, 10)]) == 2  # the last row decides
    assert rfb([row(1, 1), row(10, 15)]) == 4  # ... unless it cannot
    assert rfb([row(10, 10, Measure(1.0, 10.0, 15.0, 0))]) == 2  # in-place before out-of-place
    assert rfb([CollRow(8, 2, "float", "sum", -1, Measure(1.0, 10.0, 15.0, 0), None)]) == 4


def test_parse_allreduce_kv_rows_failures_and_ranks():
    run = nccl_logs.parse_allreduce_kv(read(H200 / "allreduce.txt"))
    assert run.runner == "torch.distributed (key=value)"
    assert run.rows[0] == CollRow(1048576, 262144, "float", "sum", -1, None, Measure(42.2, 24.8, 24.8, 0))
    assert run.failures == [] and run.nranks == 2
    text = ("x size=64 time_us=1.5 algbw=4.0 busbw=6.0 ok=False\nsize=128 time_us=2 algbw=4 busbw=6\n"
            "size=256 time_us=2 algbw=4 busbw=6 ok=TRUE\n  exit=0\n  exit=1\nexit=3\n")
    run = nccl_logs.parse_allreduce_kv(text)
    assert [(r.size, r.count, r.in_place) for r in run.rows] == [
        (64, 16, Measure(1.5, 4.0, 6.0, 1)), (128, 32, Measure(2.0, 4.0, 6.0, 0)), (256, 64, Measure(2.0, 4.0, 6.0, 0))]
    assert run.failures == ["wrong result at size 64", "the all-reduce exited with status 1",
                            "the all-reduce exited with status 3"]
    assert run.nranks == 4
    assert nccl_logs.parse_allreduce_kv("exit=0\n").nranks is None


def run_of(*rows: tuple[int, float | None], **kw) -> NcclTestsRun:
    return NcclTestsRun(rows=[CollRow(s, s // 4, "float", "sum", -1, None, Measure(1.0, b, b, 0)) for s, b in rows],
                        **kw)


def test_run_ranks_fall_back_from_nranks_to_devices_to_gpus_times_threads():
    dev = Device(0, 1, "h", 0, "b", "GPU")
    assert NcclTestsRun(nranks=3, devices=[dev]).ranks == 3
    assert NcclTestsRun(devices=[dev, dev]).ranks == 2
    assert NcclTestsRun(ngpus=2).ranks == 2
    assert NcclTestsRun(ngpus=2, nthreads=3).ranks == 6
    assert NcclTestsRun(nthreads=3).ranks == 0
    assert NcclTestsRun().ranks == 0


def test_large_rows_start_at_exactly_64_mib():
    assert 64 << 20 == 67108864
    run = run_of((67108863, 9.0), (67108864, 5.0), (1 << 27, 6.0))
    assert [r.size for r in run.large_rows()] == [67108864, 1 << 27]
    assert run.peak_busbw() == 6.0  # the 9.0 of the smaller row does not count
    small = run_of((1024, 9.0), (67108863, 4.0))
    assert [r.size for r in small.large_rows()] == [67108863] and small.peak_busbw() == 4.0
    assert [r.size for r in run.large_rows(1 << 27)] == [1 << 27]
    assert NcclTestsRun().large_rows() == [] and NcclTestsRun().peak_busbw() is None
    assert run_of((1 << 27, None)).peak_busbw() is None
    assert run_of((1 << 27, None), (1 << 28, 2.0)).peak_busbw() == 2.0


def test_run_to_dict_adds_the_peak_and_each_rows_busbw():
    data = run_of((1 << 27, 6.0), nranks=2).to_dict()
    assert data["peak_busbw"] == 6.0 and data["nranks"] == 2 and data["runner"] == "nccl-tests"
    assert data["rows"] == [{"size": 1 << 27, "count": 1 << 25, "dtype": "float", "redop": "sum", "root": -1,
                             "out_of_place": None,
                             "in_place": {"time_us": 1.0, "algbw": 6.0, "busbw": 6.0, "wrong": 0}, "busbw": 6.0}]
    assert NcclTestsRun().to_dict()["peak_busbw"] is None
    # the row's busbw is the better of out-of-place and in-place (what the verdict reads), None without either
    both = NcclTestsRun(rows=[CollRow(8, 2, "float", "sum", -1, Measure(1.0, 1.0, 2.5, 0), Measure(1.0, 1.0, 3.5, 0)),
                              CollRow(16, 4, "float", "sum", -1, None, None)]).to_dict()
    assert [row["busbw"] for row in both["rows"]] == [3.5, None]


# ---- nvidia-smi topo -m / topo -p2p r ---------------------------------------------------------------------
def test_recorded_topology_and_p2p_matrices_exactly():
    topo = nccl_logs.parse_topo_matrix(read(FAULT / "topo.txt"))
    assert topo.to_dict() == {
        "kind": "topo", "devices": ["GPU0", "GPU1"],
        "cells": {"GPU0": {"GPU0": "X", "GPU1": "NV18"}, "GPU1": {"GPU0": "NV18", "GPU1": "X"}},
        "cpu_affinity": {"GPU0": "0-31", "GPU1": "0-31"}, "numa_affinity": {"GPU0": "0", "GPU1": "0"}}
    p2p = nccl_logs.parse_topo_matrix(read(FAULT / "topo_p2p.txt"))
    assert (p2p.kind, p2p.gpu_pairs(), p2p.cpu_affinity, p2p.numa_affinity) == (
        "p2p", [("GPU0", "GPU1", "OK")], {}, {})


def test_topology_pasted_without_leading_whitespace_with_nics():
    text = ("GPU0\tGPU1\tGPU2\tNIC0\tmlx5_1\tCPU Affinity\tNUMA Affinity\n"
            "GPU0\t X \tNV4\tPHB\tPIX\tSYS\t0-15\t0\n"
            "GPU1\tNV4\t X \tSYS\tPIX\tSYS\t0-15\n"
            "GPU2\tPHB\tSYS\t X \tSYS\tPIX\n"
            "NIC0\tPIX\tPIX\tSYS\t X \tSYS\n"
            "mlx5_1\tSYS\tSYS\tPIX\tSYS\t X \n"
            "\nLegend:\n")
    matrix = nccl_logs.parse_topo_matrix(text)
    assert matrix.kind == "topo" and matrix.devices == ["GPU0", "GPU1", "GPU2", "NIC0", "mlx5_1"]
    assert matrix.gpus() == ["GPU0", "GPU1", "GPU2"]
    assert matrix.gpu_pairs() == [("GPU0", "GPU1", "NV4"), ("GPU0", "GPU2", "PHB"), ("GPU1", "GPU2", "SYS")]
    assert matrix.cpu_affinity == {"GPU0": "0-15", "GPU1": "0-15"}
    assert matrix.numa_affinity == {"GPU0": "0"}
    assert matrix.cells["mlx5_1"]["GPU2"] == "PIX"


def test_topology_header_forms():
    one = nccl_logs.parse_topo_matrix("GPU0\tCPU Affinity\nGPU0\t X \t0-7\n")
    assert (one.kind, one.devices, one.gpu_pairs(), one.cpu_affinity) == ("topo", ["GPU0"], [], {"GPU0": "0-7"})
    bare = nccl_logs.parse_topo_matrix("GPU0\nGPU0 X\n")
    assert bare.devices == ["GPU0"] and bare.cells == {"GPU0": {"GPU0": "X"}}
    # indented, the header may name anything after GPU0; unindented, only devices or "CPU"
    assert nccl_logs.parse_topo_matrix("\tGPU0\tNUMA Affinity\nGPU0\tX\t0\n").cells == {"GPU0": {"GPU0": "X"}}
    assert nccl_logs.parse_topo_matrix(" GPU0 NUMA Affinity\nGPU0 X 0\n").numa_affinity == {}
    assert nccl_logs.parse_topo_matrix("GPU0 NUMA Affinity\nGPU0 X 0\n") is None
    # a row is not a header: "GPU0 X NV18" names no device after GPU0
    assert nccl_logs.parse_topo_matrix("GPU0 X NV18\nGPU1 NV18 X\n") is None
    assert nccl_logs.parse_topo_matrix("GPU0 GPU1\n") is None  # a header with no rows
    assert nccl_logs.parse_topo_matrix("no matrix here\n") is None
    assert nccl_logs.parse_topo_matrix("") is None


def test_topology_rows_skip_noise_before_and_stop_after():
    text = ("\tGPU0\tGPU1\nsomething else\n\nGPU0\tX\tNV2\nGPU1\tNV2\n"  # GPU1's row is short: skipped
            "GPU1\tNV2\tX\nLegend\nGPU0\tX\tSYS\n")
    matrix = nccl_logs.parse_topo_matrix(text)
    assert matrix.cells == {"GPU0": {"GPU0": "X", "GPU1": "NV2"}, "GPU1": {"GPU0": "NV2", "GPU1": "X"}}
    stop_at_blank = nccl_logs.parse_topo_matrix("\tGPU0\tGPU1\nGPU0\tX\tPIX\n\nGPU1\tPIX\tX\n")
    assert list(stop_at_blank.cells) == ["GPU0"]
    assert nccl_logs.parse_topo_matrix("\tGPU0\tGPU1\nGPU1\tPIX\tX\n").gpu_pairs() == [("GPU0", "GPU1", "?")]


@pytest.mark.parametrize("code", ["OK", "CNS", "GNS", "TNS", "NS", "U"])
def test_a_matrix_of_p2p_codes_is_a_p2p_matrix(code):
    matrix = nccl_logs.parse_topo_matrix(f" \tGPU0\tGPU1\n GPU0\tX\t{code}\n GPU1\t{code}\tX\n")
    assert matrix.kind == "p2p" and matrix.gpu_pairs() == [("GPU0", "GPU1", code)]


def test_p2p_kind_needs_only_codes_or_the_legend():
    every = " \tGPU0\tGPU1\tGPU2\tGPU3\n GPU0\tX\tOK\tCNS\tGNS\n GPU1\tOK\tX\tTNS\tNS\n GPU2\tCNS\tTNS\tX\tU\n" \
            " GPU3\tGNS\tNS\tU\tX\n"
    assert nccl_logs.parse_topo_matrix(every).kind == "p2p"  # all six codes at once
    assert nccl_logs.parse_topo_matrix(" \tGPU0\tGPU1\n GPU0\tX\tOK\n GPU1\tNV1\tX\n").kind == "topo"
    assert nccl_logs.parse_topo_matrix(" \tGPU0\n GPU0\tX\n").kind == "topo"
    legend = " \tGPU0\n GPU0\tX\n\nLegend:\n  CNS  = Chipset not supported\n"
    assert nccl_logs.parse_topo_matrix(legend).kind == "p2p"
    assert nccl_logs.P2P_CODES == {"OK": "supported", "CNS": "chipset not supported", "GNS": "GPU not supported",
                                   "TNS": "topology not supported", "NS": "not supported", "U": "unknown"}


@pytest.mark.parametrize("link, words", [
    ("NV18", "18 bonded NVLinks"), ("NV4", "4 bonded NVLinks"), ("PIX", "at most one PCIe bridge"),
    ("PXB", "several PCIe bridges, no host bridge"), ("PHB", "through a PCIe host bridge (the CPU)"),
    ("NODE", "between PCIe host bridges of one NUMA node"), ("SYS", "across NUMA nodes (QPI/UPI/Infinity Fabric)"),
    ("NV", "NV"), ("NV18x", "NV18x"), ("XYZ", "XYZ"),
])
def test_describe_link(link, words):
    assert nccl_logs.describe_link(link) == words


# ---- nvidia-smi -q ----------------------------------------------------------------------------------------
SMI_Q = """Product Name : before any GPU
Driver Version                  : 570.86.15
CUDA Version                    : 12.8
GPU 0:
GPU 00000000:01:00.0
    Product Name                : NVIDIA GeForce RTX 5090
    Product Architecture        : Blackwell
    Clocks
        Max                     : 3090
    GPU Link Info
        PCIe Generation
            Max                 : 5
            Current             : 1
            Device Max          : 4
        Link Width
            Max                 : 16x
            Current             : 8x
GPU 0002:02:00.0:
    Product Name                : NVIDIA H200
    PCIe Generation
        Max                     : N/A
        Current                 : 4
    Link Width
        Max                     : N/A
        Current                 : 4x
"""


def test_parse_smi_query_exactly():
    assert nccl_logs.parse_smi_query(SMI_Q) == {"driver": "570.86.15", "cuda": "12.8", "gpus": [
        {"name": "NVIDIA GeForce RTX 5090", "bus_id": "00000000:01:00.0", "architecture": "Blackwell",
         "pcie_gen_max": 5, "pcie_gen_current": 1, "pcie_width_max": 16, "pcie_width_current": 8},
        {"name": "NVIDIA H200", "bus_id": "0002:02:00.0", "architecture": "", "pcie_gen_max": None,
         "pcie_gen_current": 4, "pcie_width_max": None, "pcie_width_current": 4}]}
    assert nccl_logs.parse_smi_query("") == {"driver": "", "cuda": "", "gpus": []}


def test_recorded_smi_query_second_gpu():
    facts = nccl_logs.parse_smi_query(read(H200 / "smi_q.txt"))
    assert facts["gpus"][1] == {"name": "NVIDIA H200", "bus_id": "00000000:00:07.0", "architecture": "Hopper",
                                "pcie_gen_max": 5, "pcie_gen_current": 5, "pcie_width_max": 16,
                                "pcie_width_current": 16}


# ---- NCCL debug lines -------------------------------------------------------------------------------------
@pytest.mark.parametrize("line, parts", [
    ("h:1:2 [3] src/a.cc:12 NCCL WARN  boom  ", ("h", "1", "src/a.cc:12", "WARN", "boom")),
    ("node-1.x:10:11 [0] NCCL INFO hi", ("node-1.x", "10", "", "INFO", "hi")),
    ("misc/socket.cc:50 NCCL WARN x", ("", "", "misc/socket.cc:50", "WARN", "x")),
    ("pre h:1:2 [3] NCCL ABORT y", ("h", "1", "", "ABORT", "y")),
    ("h:1:2 [3] NCCL TRACE y z", ("h", "1", "", "TRACE", "y z")),
    ("[2024] x NCCL INFO hi", ("", "", "", "INFO", "hi")),
    ("NCCL INFO", ("", "", "", "INFO", "")),
    ("h:1:2 [3] a.cu:1 NCCL WARN e", ("h", "1", "a.cu:1", "WARN", "e")),
    ("h:1:2 [3] a.h:1 NCCL WARN e", ("h", "1", "a.h:1", "WARN", "e")),
    ("h:1:2 [3] a.c:1 NCCL WARN e", ("h", "1", "a.c:1", "WARN", "e")),
    ("h:1:2 [3] a.cpp:1 NCCL WARN e", ("h", "1", "a.cpp:1", "WARN", "e")),
    ("h:1:2 [3] a.py:1 NCCL WARN e", ("", "", "", "WARN", "e")),
])
def test_split_nccl_line(line, parts):
    parsed = nccl_logs.split_nccl_line(line)
    assert (parsed.host, parsed.pid, parsed.src, parsed.level, parsed.msg) == parts


def test_split_nccl_line_needs_the_mark_and_reads_200_characters_before_it():
    for line in ("NCCL INFOx", "NCCL DEBUG x", "nccl INFO x", "plain"):
        assert nccl_logs.split_nccl_line(line) is None
    long_host = "a" * 250 + ":1:2 [3] NCCL INFO x"
    assert nccl_logs.split_nccl_line(long_host).host == "a" * (200 - len(":1:2 [3] "))


# ---- NCCL debug logs --------------------------------------------------------------------------------------
def test_parse_nccl_log_records_every_fact():
    text = "\n".join([
        "INFO 05-01 vLLM is using nccl==2.21.5",                                                    # 1
        info("NCCL version 2.25.1+cuda12.8"),                                                      # 2
        info("NCCL version 2.25.1+cuda12.8", rank=1),                                              # 3
        "other:11:11 [1] NCCL INFO NCCL version 2.26.2,",                                           # 4
        "",                                                                                         # 5
        info("cudaDriverVersion 12040"),                                                           # 6
        info("NCCL_P2P_DISABLE set by environment to 1."),                                         # 7
        info("NCCL_SOCKET_IFNAME set by environment to eth0.100."),                                # 8
        info("NCCL_DEBUG_FILE set by environment to /tmp/nccl.%h.%p.log"),                        # 9
        info("NCCL_P2P_DISABLE set by environment to 0."),                                         # 10
        info("ncclCommInitRank comm 0x1 rank 0 nranks 4 cudaDev 2 nvmlDev 2 busId 1000 - Init START"),  # 11
        info("ncclCommInitRank comm 0x1 rank 1 nranks 4 cudaDev 3 busId 2000 - Init START"),       # 12
        info("ncclCommInitRank comm 0x1 rank 0 nranks 9 cudaDev 7 busId 9 - Init START"),         # 13
        info("Channel 00/02 : 0[2] -> 1[3] via P2P/CUMEM"),                                        # 14
        info("Channel 01/02 : 0[2] -> 1[3] [send] via P2P/CUMEM"),                                 # 15
        info("Channel 00 : 1[3] -> 0[2] via SHM/direct/direct"),                                   # 16
        info("ncclMaxSharedMem 82240 exceeds device/fn maxSharedMem 79856"),                       # 17
        info("NET/IB : No device found."),                                                         # 18
        info("Using network Socket"),                                                              # 19
        info("comm 0x1 rank 0 nRanks 4 nNodes 2 localRanks 2 localRank 0 MNNVL 0"),                # 20
        info("24 coll channels, 24 collnet channels, 0 nvls channels"),                            # 21
        warn("Cuda failure 1 'invalid argument'", "enqueue.cc:1500"),                              # 22
        "h:10:10 [0] init.cc:1 NCCL ABORT fatal",                                                  # 23
        info("P2P is disabled between connected GPUs 1 and 0. You can repress this message"),     # 24
        info("ncclCommInitRank comm 0x1 rank 0 nranks 4 cudaDev 2 busId 1000 - Init COMPLETE"),    # 25
        info("ncclCommInitRank comm 0x1 rank 1 nranks 4 cudaDev 3 busId 2000 - Init COMPLETE"),    # 26
        "RuntimeError: NCCL error in: x.cpp:1, unhandled cuda error",                              # 27
    ])
    log = parse_nccl_log(text)
    assert log.versions == ["2.21.5", "2.25.1+cuda12.8", "2.26.2"]
    assert log.version == (2, 21, 5) and log.built_cuda == "12.8" and log.driver_cuda == "12.4"
    assert log.hosts == {"h", "other"} and log.pids == {"10", "11"}
    assert log.env == {"NCCL_P2P_DISABLE": "0", "NCCL_SOCKET_IFNAME": "eth0.100",
                       "NCCL_DEBUG_FILE": "/tmp/nccl.%h.%p.log"}
    assert log.ranks == {0: {"nranks": 4, "cudaDev": 2, "busId": "1000"},
                         1: {"nranks": 4, "cudaDev": 3, "busId": "2000"}}
    assert (log.init_started, log.init_complete) == (3, 2)
    assert log.transports == {"P2P/CUMEM": 2, "SHM/direct/direct": 1}
    assert log.smem == (82240, 79856) and log.no_ib is True and log.net == "Socket"
    assert (log.nranks, log.nnodes, log.local_ranks, log.coll_channels) == (4, 2, 2, 24)
    assert log.warns == [LogLine(22, "WARN", "enqueue.cc:1500", "Cuda failure 1 'invalid argument'",
                                 warn("Cuda failure 1 'invalid argument'", "enqueue.cc:1500")),
                         LogLine(23, "ABORT", "init.cc:1", "fatal", "h:10:10 [0] init.cc:1 NCCL ABORT fatal")]
    assert log.notes == [LogLine(24, "INFO", "", "P2P is disabled between connected GPUs 1 and 0. You can "
                                 "repress this message", info("P2P is disabled between connected GPUs 1 and 0. "
                                                              "You can repress this message"))]
    assert log.errors == ["NCCL error in: x.cpp:1, unhandled cuda error"]
    assert log.where == {"env:NCCL_P2P_DISABLE": 7, "env:NCCL_SOCKET_IFNAME": 8, "env:NCCL_DEBUG_FILE": 9,
                         "init:0": 11, "init:1": 12, "transport:P2P/CUMEM": 14, "transport:SHM/direct/direct": 16,
                         "error:NCCL error in: x.cpp:1, unhandled cuda error": 27}
    assert log.lines == 27 and log.gpu_names == []


def test_nccl_log_smaller_facts():
    log = log_of(info("nNodes 3 something"), info("cudaDriverVersion 13000"), info("NCCL version 2.28.9"),
                 info("Using network IB"), info("x 5 coll channels"), info("NCCL_X set by environment to ."))
    assert (log.nnodes, log.driver_cuda, log.net, log.coll_channels) == (3, "13.0", "IB", None)
    assert log.env == {"NCCL_X": ""}
    names = log_of(info(f"NCCL_{'A' * 64} set by environment to 1."), info(f"NCCL_{'B' * 65} set by environment to 1."))
    assert names.env == {f"NCCL_{'A' * 64}": "1"}  # names are bounded (linear-time parsing)
    assert log.built_cuda == "" and log.version == (2, 28, 9)
    local = log_of(info("comm 0x1 rank 0 nRanks 8 nNodes 2 localRanks 4 localRank 0"))
    assert (local.nranks, local.nnodes, local.local_ranks) == (8, 2, 4)
    assert log_of(info("cudaDriverVersion 11020")).driver_cuda == "11.2"
    assert log_of(info("cudaDriverVersion 12345")).driver_cuda == "12.34"
    assert NcclLog().version is None and NcclLog().built_cuda == ""
    assert log_of(info("NCCL version 2.18.1,"), info("NCCL version 2.18.1")).versions == ["2.18.1"]
    assert log_of(info("NCCL version 2.18.1,"), info("NCCL version 2.18.1,")).versions == ["2.18.1"]
    assert log_of("vLLM is using nccl==2.21.5", "vLLM is using nccl==2.21.5").versions == ["2.21.5"]
    # the first version naming its CUDA gives the built CUDA
    assert log_of(info("NCCL version 2.1.1"), info("NCCL version 2.2.2+cuda11.0")).built_cuda == "11.0"


def test_info_lines_that_report_errors_and_nvlink_notes():
    log = log_of(info("NET/Socket : ncclSystemError: socket call failed"),
                 info("P2P is disabled between NVLINK connected GPUs 1 and 0."),
                 warn("NCCL error: internal"),
                 warn("P2P is disabled between NVLINK connected GPUs 0 and 1."))
    assert log.errors == ["ncclSystemError: socket call failed"]  # WARN lines are warns, not errors
    assert log.where == {}
    assert [n.message for n in log.notes] == ["P2P is disabled between NVLINK connected GPUs 1 and 0."]
    assert [w.message for w in log.warns] == ["NCCL error: internal",
                                              "P2P is disabled between NVLINK connected GPUs 0 and 1."]
    assert log.hosts == {"h"} and log_of("NCCL INFO x").hosts == set() and log_of("NCCL INFO x").pids == set()


@pytest.mark.parametrize("line, error", [
    ("foo unhandled cuda error (run with NCCL_DEBUG=INFO)", "unhandled cuda error (run with NCCL_DEBUG=INFO)"),
    ("E: UNHANDLED CUDA ERROR here", "UNHANDLED CUDA ERROR here"),
    ("x ncclUnhandledCudaError: Call to CUDA function failed.",
     "ncclUnhandledCudaError: Call to CUDA function failed."),
    ("RuntimeError: NCCL error: invalid usage", "NCCL error: invalid usage"),
    ("torch.distributed.DistBackendError: boom", "DistBackendError: boom"),
    ("RuntimeError: CUDA error: no kernel image is available for execution on the device!",
     "no kernel image is available for execution on the device"),
    ("NVIDIA GeForce RTX 5090 with CUDA capability sm_120 is not compatible with the current PyTorch installation.",
     "with CUDA capability sm_120 is not compatible with the current PyTorch installation"),
    ("x: CUDA driver version is insufficient for CUDA runtime version!",
     "CUDA driver version is insufficient for CUDA runtime version"),
    ("ERROR MultiprocExecutor got fatal signal from worker processes", "MultiprocExecutor got fatal signal from "
     "worker processes"),
    ("ERROR Got fatal signal from worker processes, shutting down", "Got fatal signal from worker processes, "
     "shutting down"),
    ("x Cuda failure 2 'out of memory' y", "Cuda failure 2 'out of memory'"),
    ("h: Test CUDA failure common.cu:1 'x' more", "Test CUDA failure common.cu:1 'x' more"),
    ("h: Test NCCL failure common.cu:2 'y'", "Test NCCL failure common.cu:2 'y'"),
    ("./a: error while loading shared libraries: libnccl.so.2: cannot open",
     "error while loading shared libraries: libnccl.so.2: cannot open"),
    ("Failed: Cuda error custom_all_reduce.cuh:368 'invalid argument' x",
     "custom_all_reduce.cuh:368 'invalid argument'"),
    ("x peer access is not supported between these two devices y", "peer access is not supported between these two "
     "devices"),
    ("RuntimeError: Insufficient space in /dev/shm to create x", "Insufficient space in /dev/shm to create x"),
    ("Fatal Python error: Bus error", "Fatal Python error: Bus error"),
    ("Bus error (core dumped)", "Bus error (core dumped)"),
    ("x ncclSystemError: System call failed", "ncclSystemError: System call failed"),
    ("gpu617 Bootstrap : no socket interface found", "Bootstrap : no socket interface found"),
    ("Test timeout after 60 s", "Test timeout after 60 s"),
    ("Watchdog caught collective operation timeout: WorkNCCL(x)", "Watchdog caught collective operation timeout: "
     "WorkNCCL(x)"),
    ("AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x0]", "IO_PAGE_FAULT domain=0x0]"),
    ("DMAR: [DMA Write] Request device", "DMAR: [DMA Write] Request device"),
])
def test_application_error_lines(line, error):
    log = log_of("first line", line)
    assert log.errors == [error] and log.where == {"error:" + error: 2}


@pytest.mark.parametrize("line", ["Bus errors are rare", "a NCCL version string", "DMAR: [DMA Read NO_PASID]"])
def test_lines_that_are_no_error(line):
    assert log_of(line).errors == []


def test_nccl_log_to_dict_sorts_sets_and_caps_lines_at_20():
    log = log_of(*[warn(f"w{i}") for i in range(21)], *[info(f"P2P is disabled between connected GPUs {i}")
                                                       for i in range(21)],
                 info("NCCL version 2.28.9+cuda13.0"), "z:2:2 [0] NCCL INFO a", "a:1:1 [0] NCCL INFO b")
    data = log.to_dict()
    assert data["hosts"] == ["a", "h", "z"] and data["pids"] == ["1", "10", "2"]
    assert len(data["warns"]) == 20 and data["warns"][19]["message"] == "w19"
    assert data["warns"][0] == {"number": 1, "level": "WARN", "source": "", "message": "w0", "text": warn("w0")}
    assert len(data["notes"]) == 20 and data["notes"][0]["number"] == 22
    assert data["version"] == "2.28.9" and data["versions"] == ["2.28.9+cuda13.0"]
    assert NcclLog().to_dict()["version"] == ""


# ---- signatures: each regex alternative, and the exact finding it makes -----------------------------------
SIGNATURE_TEXT = {  # id: (cause, fix, source), exactly as a finding carries them
    'nccl-too-old-for-blackwell': (
        "NCCL older than 2.26.2 sizes its kernels' shared memory for data-centre GPUs; on RTX 50xx / RTX PRO "
        "Blackwell (sm_120) the first collective after a successful init fails with `Cuda failure 1 'invalid "
        "argument'` (one GPU passes, two fail with `unhandled cuda error`)",
        "install a newer NCCL into the image: pip install -U 'nvidia-nccl-cu12>=2.26.2' (CUDA 12.x) or "
        "'nvidia-nccl-cu13>=2.26.2' (CUDA 13); vLLM loads torch's libnccl.so.2, or the one named by "
        'VLLM_NCCL_SO_PATH',
        "NVIDIA/nccl-tests#287, NVIDIA/nccl-tests#291; fixed in NCCL 2.26.2-1 (2025-03-12, 'Fix shared memory "
        "usage on recent Blackwell GPUs', NVIDIA/nccl#1637)",
    ),
    'nvls-invalid-argument': (
        'NVLink SHARP (NVLS, multicast) set-up failed in transport/nvls.cc: typically nv-fabricmanager was '
        'restarted without resetting the GPUs, or the container/driver does not expose multicast',
        'set NCCL_NVLS_ENABLE=0 to run without NVLS now (a little all-reduce bandwidth on NVSwitch systems); to '
        'fix the host, stop GPU processes, reset the GPUs (or reboot) and start nv-fabricmanager after',
        'NVIDIA/nccl#976, NVIDIA/nccl#1338, NVIDIA/nccl#1672',
    ),
    'shm-segment': (
        "NCCL could not create its shared-memory segment in /dev/shm: the container's /dev/shm is too small "
        '(Docker gives 64 MB) or is not shared between the ranks',
        'run the container with --ipc=host, or give it --shm-size=16g (or more); outside containers free '
        '/dev/shm (df -h /dev/shm)',
        "NVIDIA/nccl#1518; NCCL troubleshooting guide, 'Shared memory'",
    ),
    'vllm-shm-space': (
        "vLLM's shared-memory message queue (tensor parallelism >= 2) does not fit in /dev/shm",
        'run the container with --ipc=host, or --shm-size at least what the message asks for',
        'vllm-project/vllm#48879',
    ),
    'bus-error': (
        'a process was killed by SIGBUS: it touched shared memory past what /dev/shm (tmpfs) holds; '
        'shared-memory allocations succeed lazily and fail only when written',
        'run the container with --ipc=host or --shm-size=16g; check df -h /dev/shm',
        'vllm-project/vllm#1771, pytorch/pytorch#5247',
    ),
    'vllm-custom-allreduce-peer': (
        "vLLM's custom all-reduce needs CUDA peer access between every GPU pair and these GPUs have none "
        '(consumer GPUs, PHB/SYS paths, P2P blocked by ACS/IOMMU or a VM)',
        'start vLLM with --disable-custom-all-reduce (NCCL then does the all-reduce)',
        'vllm-project/vllm#5613, NVIDIA/TensorRT-LLM#1499',
    ),
    'vllm-custom-allreduce-invalid': (
        "vLLM's custom all-reduce could not open the other GPUs' IPC buffers (no P2P between the pair, a "
        'container without --ipc=host, or a driver that refuses the IPC handle)',
        'start vLLM with --disable-custom-all-reduce (or --enforce-eager); run containers with --ipc=host',
        'vllm-project/vllm#5613, vllm-project/vllm#9046',
    ),
    'p2p-disabled-nvlink': (
        'NCCL sees NVLink between these GPUs but the driver reports P2P unavailable: a hardware or driver fault '
        '(an NVLink down, nv-fabricmanager not running on an NVSwitch host, a GPU that needs a reset), unlike '
        "the harmless 'P2P is disabled between connected GPUs' notice on PCIe",
        'check `nvidia-smi nvlink -s` and `nvidia-smi topo -p2p r`; reset the GPUs or reboot, start '
        'nv-fabricmanager on NVSwitch hosts; NCCL_IGNORE_DISABLED_P2P=1 only lets the job run, slowly',
        'NCCL src/graph/paths.cc (this WARN); NVIDIA/nccl#2329',
    ),
    'ib-completion-error-12': (
        'InfiniBand/RoCE transport retry timeout (IBV_WC_RETRY_EXC_ERR = 12): the two NICs cannot reach each '
        'other (port down, wrong RoCE GID or routing) or the fabric drops packets long enough to time out',
        'check both ports (ibstat: State Active), the RoCE GID index (NCCL_IB_GID_INDEX) and routing; run '
        'ib_write_bw between the nodes; raise NCCL_IB_TIMEOUT only when the link is merely congested',
        'NVIDIA/nccl#902',
    ),
    'socket-system-error': (
        "NCCL's socket bootstrap failed: NCCL_SOCKET_IFNAME names an interface this host lacks, or NCCL picked "
        'one (docker0, a VPN, IPv6 link-local) the other ranks cannot reach',
        'set NCCL_SOCKET_IFNAME to the interface that connects the ranks (`ip -br addr`; e.g. eth0, or '
        '^docker,lo to exclude some) and check the value for typos',
        'NVIDIA/nccl#697, NVIDIA/nccl#1837',
    ),
    'iommu-fault': (
        "the IOMMU blocked a GPU's peer-to-peer DMA: with ACS or the IOMMU on, PCIe P2P is redirected through "
        'the root complex and hangs or crawls',
        'disable ACS on the PCIe switches (setpci) or run the IOMMU in passthrough (iommu=pt, or VT-d/AMD-Vi '
        'off in the BIOS); confirm with `nvidia-smi topo -p2p r` and cuda-samples p2pBandwidthLatencyTest; '
        'NCCL_P2P_DISABLE=1 is the slow workaround',
        "NCCL troubleshooting guide, 'PCI Access Control Services (ACS)'; NVIDIA/nccl#631",
    ),
    'cuda-invalid-argument': (
        'a CUDA call inside NCCL was rejected; the source file in the WARN line says which step (enqueue.cc: '
        'kernel launch; nvls.cc: multicast; transport/p2p.cc: peer memory)',
        'upgrade NCCL to the newest release for this CUDA; if the WARN names nvls.cc set NCCL_NVLS_ENABLE=0; if '
        'it names p2p set NCCL_P2P_DISABLE=1 to confirm',
        'NVIDIA/nccl#1410',
    ),
    'cuda-out-of-memory': (
        'NCCL could not allocate its buffers: the GPU is full (another process, or gpu_memory_utilization too '
        'high)',
        "free the GPU (nvidia-smi shows who holds it) or lower vLLM's --gpu-memory-utilization",
        '',
    ),
    'no-kernel-image': (
        "the installed PyTorch (or an extension) has no kernels for this GPU's compute capability",
        'run `invoke doctor` to see which arch is missing; install a torch built for it (cu128+ wheels for '
        'sm_120) and rebuild vLLM with --arch naming the GPU',
        '',
    ),
    'driver-too-old': (
        'the NVIDIA driver is older than the CUDA runtime needs, or no driver is loaded at all (no GPU, or a '
        'container started without --gpus)',
        'run nvidia-smi: if it fails, install the driver / add --gpus all; else upgrade the driver (`invoke '
        'doctor` names the minimum) or use an image built for an older CUDA',
        '',
    ),
    'remote-peer-closed': (
        'another rank died first; this rank only saw its socket close',
        'read the log of the rank that failed first (its WARN lines come earlier)',
        '',
    ),
    'missing-library': (
        'the program could not load a shared library (libnccl.so.2 / libcudart.so.*) at start',
        "put the library's directory on LD_LIBRARY_PATH (pip wheels keep them in site-packages/nvidia/*/lib) or "
        "install it (libnccl2 from NVIDIA's apt repository)",
        '',
    ),
    'vllm-worker-died': (
        'a vLLM worker process died during start-up; vLLM only reports that it went away',
        'rerun with NCCL_DEBUG=INFO NCCL_DEBUG_FILE=/tmp/nccl.%h.%p.log and diagnose those logs; run `invoke '
        'doctor` for NCCL-versus-GPU and arch mismatches',
        '',
    ),
    'unhandled-cuda-error': (
        "NCCL saw a CUDA call fail; the real error is the `Cuda failure N '...'` WARN line in the "
        'NCCL_DEBUG=INFO log of the failing rank',
        'rerun with NCCL_DEBUG=INFO NCCL_DEBUG_FILE=/tmp/nccl.%h.%p.log and run `invoke nccl-diagnose` on those '
        'files',
        'NVIDIA/nccl-tests#287',
    ),
    'torch-missing': (
        'the torch.distributed runner found no PyTorch in this Python (or image)',
        "install torch there, or use NCCL's own benchmark: --runner nccl-tests --binary PATH/TO/all_reduce_perf "
        '(build it with --build-nccl-tests PATH/TO/nccl-tests)',
        '',
    ),
    'no-gpu-visible': (
        'no NVIDIA GPU is visible to this run (no driver on the host, an empty CUDA_VISIBLE_DEVICES, or a '
        'container started without --gpus)',
        'run it where `nvidia-smi` lists the GPUs; in a container pass --gpus all (`invoke nccl-test --image` '
        'does); check CUDA_VISIBLE_DEVICES',
        '',
    ),
    'collective-timeout': (
        'a collective never finished: a rank never joined or hung (its log is missing or stops before Init '
        'COMPLETE), or P2P over PCIe hangs behind ACS/IOMMU',
        'read the logs of the ranks that never reached Init COMPLETE; check every rank started (same world '
        'size, reachable MASTER_ADDR/MASTER_PORT, all GPUs visible); `nvidia-smi topo -p2p r` for PCIe hosts',
        '',
    ),
}


def test_signature_table_in_order():
    assert [(s.id, s.level) for s in nccl_logs.SIGNATURES] == [(name, "fail") for name in SIGNATURE_TEXT]
    assert nccl_logs.BLACKWELL_NCCL_FIX == "2.26.2"
    assert nccl_logs._SHM_FAILURES == {"shm-segment", "bus-error", "vllm-shm-space"}


@pytest.mark.parametrize("check, src, message", [
    ('nvls-invalid-argument', 'transport/nvls.cc:158', "Cuda failure 1 'invalid argument'"),
    ('nvls-invalid-argument', '', "nvls.cc:12 x Cuda failure 'invalid argument'"),
    ('nvls-invalid-argument', '', "Cuda failure 'invalid argument' during NVLS set-up"),
    ("shm-segment", "misc/shmutils.cc:112", "Error while creating shared memory segment /dev/shm/nccl-abc (size 5)"),
    ("shm-segment", "", "Error while attaching to shared memory segment /dev/shm/nccl-abc"),
    ("shm-segment", "", "Error: failed to extend /dev/shm/nccl-abc to 5 bytes"),
    ("vllm-shm-space", "", "Insufficient space in /dev/shm to create the queue"),
    ("bus-error", "", "Fatal Python error: Bus error"),
    ('vllm-custom-allreduce-peer', '', "Cuda error custom_all_reduce.cuh:307 'peer access is not supported between "
     "these two devices'"),
    ("vllm-custom-allreduce-peer", "", "peer access is not supported between these two devices"),
    ('vllm-custom-allreduce-invalid', '', "Failed: Cuda error custom_all_reduce.cuh:368 'invalid argument'"),
    ("p2p-disabled-nvlink", "", "P2P is disabled between NVLINK connected GPUs 1 and 0."),
    ("ib-completion-error-12", "", "NET/IB : Got completion with error 12, opcode 0, len 0, vendor err 129"),
    ("ib-completion-error-12", "", "NET/IB : Got completion from peer 10.1.1.1<59806> with error 12, opcode 0"),
    ("ib-completion-error-12", "", "NET/IB : Got completion with status=12 opcode=0"),
    ("socket-system-error", "bootstrap.cc:37", "Bootstrap : no socket interface found"),
    ("socket-system-error", "", "NET/Socket : no interface found"),
    ("socket-system-error", "", "ncclSystemError: System call (e.g. socket, malloc) or external library call failed"),
    ("socket-system-error", "", "Call to connect failed : Connection refused"),
    ("iommu-fault", "", "AMD-Vi: Event logged [IO_PAGE_FAULT domain=0x0000]"),
    ("iommu-fault", "", "DMAR: [DMA Read] Request device [3b:00.0]"),
    ("iommu-fault", "", "DMAR: [DMA Write] Request device [3b:00.0]"),
    ('cuda-invalid-argument', 'enqueue.cc:1500', "Cuda failure 1 'invalid argument'"),
    ('cuda-out-of-memory', '', "Cuda failure 2 'out of memory'"),
    ("cuda-out-of-memory", "", "RuntimeError: CUDA error: out of memory"),
    ("no-kernel-image", "", "CUDA error: no kernel image is available for execution on the device"),
    ("no-kernel-image", "", "GPU with CUDA capability sm_120 is not compatible with the current PyTorch installation."),
    ("driver-too-old", "", "CUDA driver version is insufficient for CUDA runtime version"),
    ("driver-too-old", "", "cudaErrorInsufficientDriver"),
    ("remote-peer-closed", "", "Connection closed by remote peer 10.0.0.2<4242>"),
    ("remote-peer-closed", "", "remote process exited or there was a network error"),
    ("remote-peer-closed", "misc/socket.cc:50", "socketProgress: Connection reset by peer"),
    ("missing-library", "", "all_reduce_perf: error while loading shared libraries: libnccl.so.2"),
    ("missing-library", "", "libnccl.so.2: cannot open shared object file"),
    ("vllm-worker-died", "", "ERROR MultiprocExecutor got fatal signal from worker processes"),
    ("vllm-worker-died", "", "ERROR Got fatal signal from worker processes, shutting down"),
    ("unhandled-cuda-error", "", "NCCL error in: ProcessGroupNCCL.cpp:1, unhandled cuda error"),
    ("unhandled-cuda-error", "", "ncclUnhandledCudaError: Call to CUDA function failed."),
    ("torch-missing", "", "PyTorch is not installed"),
    ('torch-missing', '', "ModuleNotFoundError: No module named 'torch'"),
    ("no-gpu-visible", "", "box: Test CUDA failure torch.cuda 'no CUDA GPU is visible'"),
    ("no-gpu-visible", "", "CUDA error: no CUDA-capable device is detected"),
    ("no-gpu-visible", "", "cudaErrorNoDevice"),
    ("no-gpu-visible", "", "RuntimeError: Found no NVIDIA driver on your system."),
    ("no-gpu-visible", "", "CUDA driver initialization failed, you might not have a CUDA gpu."),
    ("collective-timeout", "", "Test timeout after 60 s"),
    ("collective-timeout", "", "Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1)"),
])
def test_each_signature_alternative_makes_its_finding(check, src, message):
    findings = diagnose_nccl_log(log_of(warn(message, src)))
    cause, fix, source = SIGNATURE_TEXT[check]
    assert findings == [Finding("fail", check, cause, fix, source, [f"{src} {message}" if src else message])]


@pytest.mark.parametrize("message", [
    "NET/IB : Got completion with error 120", "Bus errors are counted", "DMAR: [DMA Fault] x",
    "Cuda failure 10 'invalid argument'", "Connection closed", "shared memory segment /dev/shm/other",
])
def test_near_misses_match_no_signature(message):
    assert levels(diagnose_nccl_log(log_of(warn(message)))) == [("warn", "unrecognised-warn")]


def test_first_match_is_case_insensitive_and_returns_the_first_text():
    assert nccl_logs._first_match("bus error", ["x", "A BUS ERROR", "bus error"]) == "A BUS ERROR"
    assert nccl_logs._first_match("bus error", ["x"]) is None
    assert nccl_logs._first_match("x", []) is None


# ---- diagnose_nccl_log: the rules between findings --------------------------------------------------------
HINT_2262 = ("install a newer NCCL into the image: pip install -U 'nvidia-nccl-cu12>=2.26.2' (CUDA 12.x) or "
             "'nvidia-nccl-cu13>=2.26.2' (CUDA 13); vLLM loads torch's libnccl.so.2, or the one named by "
             "VLLM_NCCL_SO_PATH")
ROW_120 = ("NCCL 2.26.2 fixed shared memory sizing on RTX 50xx / RTX PRO (sm_120): NVIDIA/nccl-tests#287, "
           "NVIDIA/nccl-tests#291, NVIDIA/nccl#1637")
INVALID = warn("Cuda failure 1 'invalid argument'", "enqueue.cc:1500")
INVALID_HIT = "enqueue.cc:1500 Cuda failure 1 'invalid argument'"


def sig(check: str, hit: str, message: str | None = None) -> Finding:
    cause, fix, source = SIGNATURE_TEXT[check]
    return Finding("fail", check, cause if message is None else message, fix, source, [hit])


def version_info(version: str, text: str) -> Finding:
    return Finding("info", "nccl-version", text, evidence=[version])


def test_version_finding_names_the_built_and_driver_cuda():
    assert diagnose_nccl_log(log_of(info("NCCL version 2.28.9+cuda13.0"), info("cudaDriverVersion 13000")))[0] == \
        version_info("2.28.9+cuda13.0", "NCCL 2.28.9 built for CUDA 13.0; the driver supports CUDA 13.0")
    assert diagnose_nccl_log(log_of(info("NCCL version 2.28.9")))[0] == version_info("2.28.9", "NCCL 2.28.9")
    assert diagnose_nccl_log(log_of(info("NCCL version 2.28.9"), info("cudaDriverVersion 12040")))[0] == \
        version_info("2.28.9", "NCCL 2.28.9; the driver supports CUDA 12.4")
    three = log_of("vLLM is using nccl==2.21.5", info("NCCL version 2.25.1"), info("NCCL version 2.26.2"))
    assert diagnose_nccl_log(three)[0].evidence == ["2.21.5", "2.25.1"]
    assert diagnose_nccl_log(log_of(info("cudaDriverVersion 12040"))) == [
        Finding("info", "no-verdict", "no NCCL init, warning or error in this log")]


@pytest.mark.parametrize("driver, cuda, older", [
    ("12040", "12.4", True), ("12020", "12.2", True), ("11080", "11.8", True), ("12080", "12.8", False),
    ("12090", "12.9", False), ("13000", "13.0", False),
])
def test_driver_older_than_the_cuda_nccl_was_built_for(driver, cuda, older):
    findings = diagnose_nccl_log(log_of(info(f"cudaDriverVersion {driver}"), info("NCCL version 2.26.2+cuda12.8")))
    assert findings[0].message == f"NCCL 2.26.2 built for CUDA 12.8; the driver supports CUDA {cuda}"
    expected = [Finding("fail", "driver-older-than-nccl-cuda",
                        f"NCCL was built for CUDA 12.8 but the driver only supports CUDA {cuda}",
                        "upgrade the NVIDIA driver, or use an image whose CUDA is not newer than the driver's")]
    assert findings[1:] == (expected if older else [])


def test_no_driver_or_no_built_cuda_compares_nothing():
    assert [f.check for f in diagnose_nccl_log(log_of(info("NCCL version 2.26.2+cuda12.8")))] == ["nccl-version"]
    assert [f.check for f in diagnose_nccl_log(log_of(info("NCCL version 2.26.2"), info("cudaDriverVersion 11000")))
            ] == ["nccl-version"]


def too_old(version: str, cap: str, minimum: str, why: str) -> Finding:
    return Finding("fail", "nccl-too-old", f"NCCL {version} is older than {minimum}, the first release that works "
                   f"on compute capability {cap}: {why}", HINT_2262.replace("2.26.2", minimum),
                   evidence=[f"{version}+cuda12.8"])


def test_nccl_too_old_names_the_first_capability_that_needs_more():
    old = log_of(info("NCCL version 2.26.1+cuda12.8"))
    assert diagnose_nccl_log(old, Context(gpu_caps=["12.0"]))[1:] == [too_old("2.26.1", "12.0", "2.26.2", ROW_120)]
    hopper = log_of(info("NCCL version 2.15.0+cuda12.8"))
    assert diagnose_nccl_log(hopper, Context(gpu_caps=["9.0", "12.0"]))[1:] == [
        too_old("2.15.0", "9.0", "2.15.1", "NCCL 2.15.1 added H100/H200 (sm_90)")]  # one finding, the first cap
    mid = log_of(info("NCCL version 2.20.0+cuda12.8"))
    assert diagnose_nccl_log(mid, Context(gpu_caps=["9.0", "12.0"]))[1:] == [too_old("2.20.0", "12.0", "2.26.2",
                                                                                      ROW_120)]
    assert diagnose_nccl_log(old, Context(gpu_caps=["5.0"]))[1:] == []  # no row for this capability
    volta = diagnose_nccl_log(log_of(info("NCCL version 2.4.5+cuda12.8")), Context(gpu_caps=["7.0"]))
    assert volta[1:] == [too_old("2.4.5", "7.0", "2.4.8", "NCCL 2.4 is the oldest release these diagnostics know")]
    two = diagnose_nccl_log(log_of(info("NCCL version 2.26.1+cuda12.8"), info("NCCL version 2.27.1")),
                            Context(gpu_caps=["12.0"]))
    assert two[1] == too_old("2.26.1", "12.0", "2.26.2", ROW_120)  # the first version only
    no_version = diagnose_nccl_log(log_of(info("cudaDriverVersion 12080")), Context(gpu_caps=["12.0"]))
    assert [f.check for f in no_version] == ["no-verdict"]


def blackwell_bug(version: str) -> Finding:
    cause = SIGNATURE_TEXT["nccl-too-old-for-blackwell"][0]
    return sig("nccl-too-old-for-blackwell", INVALID_HIT, f"NCCL {version} is too old for these GPUs: {cause}")


def test_invalid_argument_on_blackwell_with_old_nccl_is_the_nccl_bug():
    findings = diagnose_nccl_log(log_of(info("NCCL version 2.26.1+cuda12.8"), INVALID), Context(gpu_caps=["12.0"]))
    assert findings == [version_info("2.26.1+cuda12.8", "NCCL 2.26.1 built for CUDA 12.8"),
                        too_old("2.26.1", "12.0", "2.26.2", ROW_120), blackwell_bug("2.26.1")]


@pytest.mark.parametrize("version, ctx, gpu_names, smem, bug", [
    ("2.26.1", Context(gpu_caps=["12.1"]), [], False, True),
    ("2.26.1", Context(), ["NVIDIA GeForce RTX 5090"], False, True),
    ("2.26.1", Context(), [], True, True),
    ("2.26.2", Context(gpu_caps=["12.0"]), [], True, False),  # the fixed release: a plain CUDA failure
    ("2.26.1", Context(gpu_caps=["9.0"]), [], False, False),
    ("2.26.1", Context(gpu_caps=["8.0"]), ["NVIDIA H200"], False, False),
    ("", Context(gpu_caps=["12.0"]), [], True, False),  # no version: not known to be too old
])
def test_which_invalid_argument_it_is(version, ctx, gpu_names, smem, bug):
    lines = [info(f"NCCL version {version}")] if version else []
    if smem:
        lines.append(info("ncclMaxSharedMem 82240 exceeds device/fn maxSharedMem 79856"))
    log = log_of(*lines, INVALID)
    log.gpu_names = gpu_names
    failed = [f for f in diagnose_nccl_log(log, ctx) if f.check != "nccl-too-old" and f.level != "info"]
    assert failed == ([blackwell_bug(version)] if bug else [sig("cuda-invalid-argument", INVALID_HIT)])


def test_blackwell_consumer():
    log = NcclLog()
    assert nccl_logs._blackwell_consumer(Context(gpu_caps=["9.0", "12.0"]), log)
    assert not nccl_logs._blackwell_consumer(Context(gpu_caps=["10.0", "1.2"]), log)
    assert nccl_logs._blackwell_consumer(Context(), NcclLog(gpu_names=["NVIDIA H200", "NVIDIA GeForce RTX 5090"]))
    assert not nccl_logs._blackwell_consumer(Context(), NcclLog(gpu_names=["NVIDIA H200", "no such GPU"]))
    assert nccl_logs._blackwell_consumer(Context(), NcclLog(smem=(2, 1)))
    assert not nccl_logs._blackwell_consumer(Context(), log)


def test_nvls_and_the_blackwell_bug_exclude_each_other():
    nvls = warn("Cuda failure 1 'invalid argument'", "transport/nvls.cc:158")
    nvls_hit = "transport/nvls.cc:158 Cuda failure 1 'invalid argument'"
    ctx = Context(gpu_caps=["12.0"])
    # the NVLS failure alone is never the shared-memory bug, and the generic CUDA failure is not repeated
    only = [f for f in diagnose_nccl_log(log_of(info("NCCL version 2.26.1"), nvls), ctx) if f.level == "fail"]
    assert [f.check for f in only] == ["nccl-too-old", "nvls-invalid-argument"]
    assert only[1] == sig("nvls-invalid-argument", nvls_hit)
    # the bug named first: the NVLS line is not blamed on NVLS
    both = diagnose_nccl_log(log_of(info("NCCL version 2.26.1"), INVALID, nvls), ctx)
    assert [f.check for f in both] == ["nccl-version", "nccl-too-old", "nccl-too-old-for-blackwell"]
    upper = diagnose_nccl_log(log_of(info("NCCL version 2.26.1"), warn("Cuda failure 1 'invalid argument' in NVLS")),
                              ctx)
    assert [f.check for f in upper] == ["nccl-version", "nccl-too-old", "nvls-invalid-argument"]
    # new NCCL: NVLS named, the generic CUDA failure left out
    new = diagnose_nccl_log(log_of(info("NCCL version 2.28.9"), INVALID, nvls), ctx)
    assert [f.check for f in new] == ["nccl-version", "nvls-invalid-argument"]
    assert new[1].evidence == [nvls_hit]


GENERIC = ["RuntimeError: NCCL error: unhandled cuda error", "ERROR MultiprocExecutor got fatal signal from worker "
           "processes", "Test timeout after 60 s"]


def test_a_specific_cause_silences_the_generic_signatures():
    shm = warn("Error while creating shared memory segment /dev/shm/nccl-x (size 1)")
    findings = diagnose_nccl_log(log_of(shm, *GENERIC))
    assert findings == [sig("shm-segment", "Error while creating shared memory segment /dev/shm/nccl-x (size 1)")]


@pytest.mark.parametrize("line, check, hit", [
    (GENERIC[0], "unhandled-cuda-error", "NCCL error: unhandled cuda error"),
    (GENERIC[1], "vllm-worker-died", "MultiprocExecutor got fatal signal from worker processes"),
    (GENERIC[2], "collective-timeout", "Test timeout after 60 s"),
])
def test_nccl_too_old_does_not_silence_a_generic_signature(line, check, hit):
    findings = diagnose_nccl_log(log_of(info("NCCL version 2.30.0"), line), Context(gpu_caps=["99.0"]))
    assert findings[1:] == [sig(check, hit)]
    old = diagnose_nccl_log(log_of(info("NCCL version 2.15.0"), line), Context(gpu_caps=["9.0"]))
    assert [f.check for f in old] == ["nccl-version", "nccl-too-old", check]
    assert old[2] == sig(check, hit)  # no RTX 50xx: the message is the signature's own


def test_worker_death_with_old_nccl_on_rtx_50xx_names_the_likely_cause():
    findings = diagnose_nccl_log(log_of(info("NCCL version 2.25.1+cuda12.8"), GENERIC[1]), Context(gpu_caps=["12.0"]))
    assert findings[2] == sig("vllm-worker-died", "MultiprocExecutor got fatal signal from worker processes",
                              "a vLLM worker process died during start-up; vLLM only reports that it went away; "
                              "with NCCL 2.25.1 on RTX 50xx the likely cause is NCCL older than 2.26.2")
    fixed = diagnose_nccl_log(log_of(info("NCCL version 2.26.2"), GENERIC[1]), Context(gpu_caps=["12.0"]))
    assert fixed[1] == sig("vllm-worker-died", "MultiprocExecutor got fatal signal from worker processes")


@pytest.mark.parametrize("shm, check", [
    (warn("Error: failed to extend /dev/shm/nccl-x to 5 bytes"), "shm-segment"),
    ("RuntimeError: Insufficient space in /dev/shm to create x", "vllm-shm-space"),
    ("Fatal Python error: Bus error", "bus-error"),
])
def test_a_shm_failure_is_not_blamed_on_sockets(shm, check):
    system = "torch.distributed.DistBackendError: ncclSystemError: System call (e.g. socket, malloc) failed"
    assert [f.check for f in diagnose_nccl_log(log_of(shm, system))] == [check]
    assert [f.check for f in diagnose_nccl_log(log_of(system))] == ["socket-system-error"]


def test_shared_memory_warning_exactly_and_only_before_the_fix():
    smem = info("ncclMaxSharedMem 82240 exceeds device/fn maxSharedMem 79856")
    findings = diagnose_nccl_log(log_of(info("NCCL version 2.26.1"), smem))
    assert findings[1:] == [Finding(
        "warn", "nccl-shared-memory", "NCCL 2.26.1 wants 82240 bytes of shared memory but this GPU allows 79856: "
        "its first collective will fail with `Cuda failure 1 'invalid argument'`", HINT_2262,
        SIGNATURE_TEXT["nccl-too-old-for-blackwell"][2])]
    assert [f.check for f in diagnose_nccl_log(log_of(info("NCCL version 2.26.2"), smem))] == ["nccl-version"]
    assert [f.check for f in diagnose_nccl_log(log_of(smem))] == ["no-verdict"]


def test_env_findings_exactly():
    env = {"NCCL_P2P_DISABLE": "1", "NCCL_CUMEM_ENABLE": "0", "NCCL_SHM_DISABLE": "yes", "NCCL_ALGO": "Ring",
           "NCCL_DEBUG": "INFO"}
    assert nccl_logs._env_findings(env) == [
        Finding("info", "env", "NCCL_ALGO=Ring set by environment: the algorithms allowed (Ring, Tree, NVLS, CollNet)"),
        Finding("info", "env-cumem", "NCCL_CUMEM_ENABLE=0 set by environment (vLLM sets it itself); NCCL uses "
                "legacy cudaMalloc buffers and IPC handles instead of cuMem"),
        Finding("warn", "env-p2p-disable", "NCCL_P2P_DISABLE=1 is set: GPUs exchange data through host memory (SHM) "
                "even where NVLink or PCIe P2P works", "unset NCCL_P2P_DISABLE unless P2P is known broken on this "
                "host (ACS/IOMMU on PCIe switches)"),
        Finding("warn", "env-shm-disable", "NCCL_SHM_DISABLE=1: without P2P, traffic goes through sockets",
                "unset NCCL_SHM_DISABLE")]
    off = {"NCCL_P2P_DISABLE": "0", "NCCL_CUMEM_ENABLE": "1", "NCCL_SHM_DISABLE": "false"}
    assert nccl_logs._env_findings(off) == [
        Finding("info", "env", "NCCL_CUMEM_ENABLE=1 set by environment: cuMem buffers instead of cudaMalloc + IPC "
                "(no bandwidth effect)"),
        Finding("info", "env", "NCCL_P2P_DISABLE=0 set by environment: no P2P (NVLink/PCIe) between GPUs: SHM or "
                "sockets instead"),
        Finding("info", "env", "NCCL_SHM_DISABLE=false set by environment: no shared-memory transport: without "
                "P2P, TCP sockets carry the traffic")]
    assert nccl_logs._env_findings({"NCCL_DEBUG": "INFO"}) == []
    assert diagnose_nccl_log(log_of(info("NCCL_CUMEM_ENABLE set by environment to 0."))) == [
        nccl_logs._env_findings({"NCCL_CUMEM_ENABLE": "0"})[0]]


def test_no_infiniband_matters_only_between_nodes():
    one = diagnose_nccl_log(log_of(info("NET/IB : No device found.")))
    assert one == [Finding("info", "no-ib", "no InfiniBand/RoCE device (one node: nothing needs it)")]
    two = diagnose_nccl_log(log_of(info("NET/IB : No device found."), "b:1:1 [1] NCCL INFO x"))
    assert two == [Finding("warn", "no-ib", "no InfiniBand/RoCE device: NCCL uses TCP sockets between nodes",
                           "install the RDMA stack (rdma-core, the HCA driver) or pass the devices into the container "
                           "(--device /dev/infiniband, --cap-add IPC_LOCK)")]


def test_pcie_p2p_notice_is_an_info_with_the_first_line():
    first = info("P2P is disabled between connected GPUs 1 and 0. You can repress this message.")
    findings = diagnose_nccl_log(log_of(first, info("P2P is disabled between connected GPUs 2 and 3.")))
    assert findings == [Finding("info", "p2p-disabled-notice", "NCCL notes 'P2P is disabled between connected GPUs': "
                                "the driver offers no P2P on this PCIe path, so NCCL uses SHM (expected on consumer "
                                "GPUs; harmless)", evidence=[first])]
    nvlink = info("P2P is disabled between NVLINK connected GPUs 1 and 0.")
    assert diagnose_nccl_log(log_of(nvlink)) == [sig("p2p-disabled-nvlink", "P2P is disabled between NVLINK "
                                                     "connected GPUs 1 and 0.")]


def test_graph_search_fallback_is_normal_unless_something_failed():
    fallback = warn("Could not find a path for pattern 4, falling back to simple order", "graph/search.cc:1135")
    findings = diagnose_nccl_log(log_of(warn("Could not find a path for pattern 1"), fallback, fallback))
    assert findings == [Finding("info", "graph-search-fallback", "NCCL found no fast ring/tree path and fell back to "
                                "a simple order (normal on PCIe-only hosts)", evidence=[fallback])]
    failed = diagnose_nccl_log(log_of(fallback, "Test timeout"))
    assert [f.check for f in failed] == ["collective-timeout"]
    assert diagnose_nccl_log(log_of(warn("Could not find a path for pattern 1"))) == []  # a known WARN, no verdict


def test_warns_no_signature_explains():
    lines = [warn(f"odd {i}", "misc/x.cc:1") for i in range(6)]
    findings = diagnose_nccl_log(log_of(INVALID, *lines, info("NCCL version 2.28.9")))
    unknown = Finding("warn", "unrecognised-warn", "6 WARN line(s) no signature explains; the first: odd 0",
                      "read these lines (they name the source file and the failing call); rerun with NCCL_DEBUG=INFO "
                      "NCCL_DEBUG_SUBSYS=INIT,ENV,GRAPH for more", evidence=lines[:5])
    assert findings == [version_info("2.28.9", "NCCL 2.28.9"), sig("cuda-invalid-argument", INVALID_HIT), unknown]
    abort = diagnose_nccl_log(log_of("h:1:1 [0] NCCL ABORT odd"))
    assert [(f.level, f.message) for f in abort] == [
        ("fail", "1 WARN line(s) no signature explains; the first: odd")]
    with_error = diagnose_nccl_log(log_of(warn("odd"), "Bus error"))
    assert levels(with_error) == [("fail", "bus-error"), ("fail", "unrecognised-warn")]
    assert levels(diagnose_nccl_log(log_of(warn("odd")))) == [("warn", "unrecognised-warn")]
    assert levels(diagnose_nccl_log(log_of(warn("FATAL BUS ERROR")))) == [("fail", "bus-error")]  # any case


def test_errors_no_signature_explains():
    errors = [f"h: Test NCCL failure common.cu:{i} 'internal error'" for i in range(6)]
    findings = diagnose_nccl_log(log_of(*errors))
    texts = [e[3:] for e in errors]
    assert findings == [Finding("fail", "unrecognised-error", f"the log reports an error no signature explains: "
                                f"{texts[0]}", "rerun with NCCL_DEBUG=INFO NCCL_DEBUG_FILE=... and diagnose those "
                                "files", evidence=texts[:5])]
    assert levels(diagnose_nccl_log(log_of(errors[0], warn("odd")))) == [("fail", "unrecognised-warn")]
    assert levels(diagnose_nccl_log(log_of(errors[0], "Bus error"))) == [("fail", "bus-error")]


def test_a_clean_init_passes_with_the_rank_count_and_transports():
    lines = [info("NCCL version 2.28.9"), info("ncclCommInitRank comm 0x1 rank 0 nranks 3 cudaDev 0 busId 1 - Init "
                                               "COMPLETE"),
             info("ncclCommInitRank comm 0x1 rank 1 nranks 4 cudaDev 0 busId 1 - Init COMPLETE"),
             info("Channel 00 : 0[0] -> 1[1] via SHM/direct/direct"), info("Channel 00 : 0[0] -> 1[1] via P2P/IPC")]
    findings = diagnose_nccl_log(log_of(*lines))
    assert findings[-1] == Finding("pass", "init", "communicator initialised (4 ranks; P2P/IPC, SHM/direct/direct)")
    assert diagnose_nccl_log(NcclLog(init_complete=3)) == [
        Finding("pass", "init", "communicator initialised (3 ranks; no channels logged)")]
    warned = diagnose_nccl_log(log_of(*lines, info("NCCL_P2P_DISABLE set by environment to 1")))
    assert "init" not in [f.check for f in warned]
    assert diagnose_nccl_log(NcclLog()) == [Finding("info", "no-verdict", "no NCCL init, warning or error in this "
                                                                          "log")]


# ---- transports against the topology ---------------------------------------------------------------------
def test_is_single_node():
    single = nccl_logs.is_single_node
    assert single(None, Context()) and single(None, Context(hosts={"a"}))
    assert not single(None, Context(hosts={"a", "b"}))
    assert not single(NcclLog(hosts={"b"}), Context(hosts={"a"}))
    assert single(NcclLog(hosts={"a"}, nnodes=1), Context(hosts={"a"}))
    # NCCL counts two nodes: believed unless every rank's log is here and all name one host
    two = NcclLog(hosts={"vm"}, nnodes=2, ranks={1: {}})
    assert single(two, Context(ranks_seen={0}, nranks=2))
    assert single(two, Context(ranks_seen={0, 2}, nranks=2))
    assert not single(two, Context(ranks_seen={1}, nranks=2))
    assert not single(two, Context(ranks_seen={0}, nranks=3))
    assert not single(two, Context(ranks_seen={0}))  # the communicator's size unknown
    assert not single(NcclLog(nnodes=2, ranks={0: {}, 1: {}}), Context(nranks=2))  # no host named


def test_p2p_expected():
    expected = nccl_logs.p2p_expected
    assert expected(Context(links=["SYS", "NV18", "PXB", "PHB", "PIX", "NV18", "NODE"])) == ["NV18", "PIX", "PXB"]
    assert expected(Context(links=["PHB"], p2p=["OK", "OK"])) == ["P2P OK"]
    assert expected(Context(p2p=["OK", "CNS"])) == []
    assert expected(Context(links=["NV4"], p2p=["OK"])) == ["NV4"]
    assert expected(Context(links=["SYS"])) == [] and expected(Context()) == []


GENERIC_WHY = ("no NCCL setting disables P2P: typically the ranks run in a container without --ipc=host (CUDA IPC "
               "and /dev/shm not shared), or ACS/IOMMU blocks peer access, or the driver does not support P2P here")
GENERIC_FIX = ("run the container with --ipc=host (one container for all ranks); check `nvidia-smi topo -p2p r` and "
               "cuda-samples p2pBandwidthLatencyTest")
ACS_FIX = ("disable ACS on the PCIe switches or run the IOMMU in passthrough (iommu=pt); check with cuda-samples "
           "p2pBandwidthLatencyTest")


def test_transport_reasons():
    reasons = nccl_logs.transport_reasons
    env = {"NCCL_P2P_DISABLE": "1", "NCCL_P2P_LEVEL": "LOC", "NCCL_SHM_DISABLE": "1"}
    assert reasons(env, Context(p2p=["CNS"]), True) == [
        ("NCCL_P2P_DISABLE=1 is set", "unset NCCL_P2P_DISABLE"),
        ("NCCL_P2P_LEVEL=LOC forbids P2P between any two GPUs", "unset NCCL_P2P_LEVEL (or set it to SYS)"),
        ("NCCL_SHM_DISABLE=1 is set", "unset NCCL_SHM_DISABLE")]
    assert reasons(env, Context(), False) == reasons(env, Context(), True)[:2]  # SHM off matters only for sockets
    assert reasons({"NCCL_SHM_DISABLE": "1"}, Context(), False) == [(GENERIC_WHY, GENERIC_FIX)]
    assert reasons({"NCCL_P2P_DISABLE": "0", "NCCL_P2P_LEVEL": "NVL"}, Context(p2p=["OK", "NS", "CNS", "NS", "ZZ"]),
                   False) == [("the driver reports P2P CNS (chipset not supported), NS (not supported), ZZ (ZZ) "
                               "(`nvidia-smi topo -p2p r`): P2P unsupported by the driver/chipset, or blocked by "
                               "ACS/IOMMU", ACS_FIX)]
    assert reasons({}, Context(p2p=["OK"]), True) == [(GENERIC_WHY, GENERIC_FIX)]


def transport_log(*transports: str, env: dict | None = None, hosts: set | None = None) -> NcclLog:
    counts: dict[str, int] = {}
    for name in transports:
        counts[name] = counts.get(name, 0) + 1
    return NcclLog(transports=counts, env=env or {}, hosts=hosts if hosts is not None else {"vm"})


def test_no_channels_no_transport_finding():
    assert nccl_logs._transport_findings(NcclLog(), Context(links=["NV18"])) == []


def test_sockets_where_nvlink_is_fail_with_every_reason():
    log = transport_log(*["NET/Socket/0"] * 4, env={"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1"})
    assert nccl_logs._transport_findings(log, Context(links=["NV18"])) == [Finding(
        "fail", "transport", "transport NET/Socket/0 (4 channels): traffic goes through TCP sockets (NET) on one "
        "host, though the topology shows NV18 between the GPUs, so P2P should carry it; why: NCCL_P2P_DISABLE=1 is "
        "set; NCCL_SHM_DISABLE=1 is set", "unset NCCL_P2P_DISABLE; unset NCCL_SHM_DISABLE",
        evidence=["NET/Socket/0 (4 channels)"])]


def test_shm_where_p2p_ok_fails_with_no_setting_to_blame():
    log = transport_log("SHM/direct/direct", "SHM/direct/direct")
    assert nccl_logs._transport_findings(log, Context(p2p=["OK"])) == [Finding(
        "fail", "transport", "transport SHM/direct/direct (2 channels): traffic goes through host memory (SHM) on one "
        f"host, though the topology shows P2P OK between the GPUs, so P2P should carry it; why: {GENERIC_WHY}",
        GENERIC_FIX, evidence=["SHM/direct/direct (2 channels)"])]


def test_the_environment_of_the_log_overrides_the_callers():
    log = transport_log("SHM/direct/direct", env={"NCCL_P2P_DISABLE": "0"})
    [finding] = nccl_logs._transport_findings(log, Context(links=["PIX"], env={"NCCL_P2P_DISABLE": "1"}))
    assert finding.message.endswith(f"why: {GENERIC_WHY}")
    [caller] = nccl_logs._transport_findings(transport_log("SHM/direct/direct"),
                                             Context(links=["PIX"], env={"NCCL_P2P_DISABLE": "1"}))
    assert caller.message.endswith("why: NCCL_P2P_DISABLE=1 is set") and caller.fix == "unset NCCL_P2P_DISABLE"


def test_sockets_on_one_host_without_a_topology():
    disabled = transport_log("NET/Socket/0", "SHM/x", env={"NCCL_SHM_DISABLE": "1"})
    assert nccl_logs._transport_findings(disabled, Context()) == [Finding(
        "fail", "transport", "transport NET/Socket/0 (1 channels), SHM/x (1 channels): traffic goes through TCP "
        "sockets (NET) on one host, though all ranks are on one host, so P2P or at least SHM should carry it; why: "
        "NCCL_SHM_DISABLE=1 is set", "unset NCCL_SHM_DISABLE", evidence=["NET/Socket/0 (1 channels), SHM/x (1 "
                                                                         "channels)"])]
    [plain] = nccl_logs._transport_findings(transport_log("NET/Socket/0"), Context())
    assert (plain.level, plain.fix) == ("warn", GENERIC_FIX)
    [p2p_bad] = nccl_logs._transport_findings(transport_log("NET/Socket/0"), Context(p2p=["CNS"]))
    assert p2p_bad.level == "warn" and p2p_bad.message.endswith("why: the driver reports P2P CNS (chipset not "
                                                                "supported) (`nvidia-smi topo -p2p r`): P2P "
                                                                "unsupported by the driver/chipset, or blocked by "
                                                                "ACS/IOMMU")


def test_shm_is_informational_when_nothing_says_p2p_should_work():
    no_topology = nccl_logs._transport_findings(transport_log("SHM/direct/direct"), Context())
    assert no_topology == [Finding("info", "transport", "transport via SHM (host memory): SHM/direct/direct (1 "
                                   "channels); no topology given to judge it against (pass `nvidia-smi topo -m` "
                                   "output too)")]
    expected_shm = Finding("info", "transport", "transport via SHM (host memory): SHM/direct/direct (1 channels); "
                           "expected when P2P is not supported (consumer GPUs, PHB/SYS paths); bandwidth is bounded "
                           "by PCIe and host memory")
    assert nccl_logs._transport_findings(transport_log("SHM/direct/direct"), Context(links=["PHB"])) == [expected_shm]
    two_hosts = transport_log("SHM/direct/direct", hosts={"a", "b"})
    assert nccl_logs._transport_findings(two_hosts, Context(links=["NV18"])) == [expected_shm]


def test_p2p_or_mixed_transports_pass():
    mixed = transport_log("P2P/CUMEM", "P2P/CUMEM", "SHM/direct/direct")
    assert nccl_logs._transport_findings(mixed, Context(links=["NV18"])) == [
        Finding("pass", "transport", "transport: P2P/CUMEM (2 channels), SHM/direct/direct (1 channels)")]
    net = transport_log("NET/IB/0", hosts={"a", "b"})
    assert nccl_logs._transport_findings(net, Context(links=["NV18"])) == [
        Finding("pass", "transport", "transport: NET/IB/0 (1 channels)")]


# ---- bus bandwidth, nccl-tests verdicts, topology verdicts -------------------------------------------------
NV18_HOW = "18 NVLinks x 25 GB/s (compute capability 9.0)"
NV18_SOURCE = "H100/H200 SXM datasheet: 900 GB/s over 18 NVLink4 links"
BUSBW_FIX = ("check `nvidia-smi topo -p2p r` (P2P OK?), NCCL_P2P_DISABLE/NCCL_SHM_DISABLE, the PCIe link running "
             "below its max generation/width (nvidia-smi -q, GPU Link Info), and other jobs on the GPUs")


def test_busbw_share_thresholds():
    assert compat.BUSBW_SHARE == {"good": 0.6, "poor": 0.25}


@pytest.mark.parametrize("busbw, level, share", [
    (450.0, "pass", "100%"), (270.0, "pass", "60%"), (269.9, "warn", "60%"), (112.5, "warn", "25%"),
    (112.4, "fail", "25%"), (3.82, "fail", "1%"),
])
def test_judge_busbw_at_the_share_boundaries(busbw, level, share):
    finding = nccl_logs.judge_busbw(run_of((1 << 29, busbw), nranks=2), "NV18", "9.0")
    text = f"{busbw:g} GB/s bus bandwidth at large sizes = {share} of {NV18_HOW}"
    if level == "pass":
        assert finding == Finding("pass", "busbw", text, source=NV18_SOURCE)
    else:
        assert finding == Finding(level, "busbw", text + " (expected >= 60%)", BUSBW_FIX, NV18_SOURCE)


def test_judge_busbw_when_it_cannot_judge():
    judge = nccl_logs.judge_busbw
    assert judge(run_of((1 << 29, 300.0), nranks=1), "NV18", "9.0") == Finding(
        "info", "busbw", "one rank: bus bandwidth is 0 by definition; this only proves NCCL runs on the GPU")
    assert judge(run_of(nranks=2), "NV18", "9.0") == Finding("info", "busbw", "no result rows to judge")
    assert judge(run_of((1 << 29, 312.5), nranks=2), None) == Finding(
        "info", "busbw", "312.5 GB/s bus bandwidth at large sizes (no topology given to judge it against; pass "
        "`nvidia-smi topo -m` output too)")
    assert judge(run_of((1 << 29, 312.5), nranks=2), "NV18") == Finding(
        "info", "busbw", "312.5 GB/s bus bandwidth; link peak unknown: 18 NVLinks of an unknown generation (no "
        "capability known)")
    pcie = judge(run_of((1 << 29, 12.0), nranks=2), "PIX", None, 5, 8)
    assert (pcie.level, pcie.message) == ("warn", "12 GB/s bus bandwidth at large sizes = 50% of PCIe gen5 x8 (PIX): "
                                                  "24 GB/s (expected >= 60%)")


def test_nccl_tests_verdict_names_the_runner_ranks_and_gpus():
    run = parse_nccl_tests(read(FAULT / "all_reduce.txt"))
    findings = diagnose_nccl_tests(run, Context(links=["NV18"]))
    assert findings == [
        Finding("pass", "nccl-tests-ran", "torch.distributed: 2 rank(s) on NVIDIA H200: 10 sizes 1048576..536870912 B, "
                "no wrong elements, avg busbw 3.23133 GB/s"),
        Finding("fail", "busbw", f"3.82 GB/s bus bandwidth at large sizes = 1% of {NV18_HOW} (expected >= 60%)",
                BUSBW_FIX, NV18_SOURCE)]
    bare = diagnose_nccl_tests(run_of((8, 1.0)))
    assert bare == [Finding("pass", "nccl-tests-ran", "nccl-tests: ? rank(s): 1 sizes 8..8 B, no wrong elements"),
                    Finding("info", "busbw", "one rank: bus bandwidth is 0 by definition; this only proves NCCL runs "
                            "on the GPU")]


def test_nccl_tests_capability_from_the_context_then_the_first_known_gpu():
    devices = [Device(0, 1, "h", 0, "b", "zz unknown GPU"), Device(1, 1, "h", 1, "b", "NVIDIA H200"),
               Device(2, 1, "h", 2, "b", "NVIDIA B200")]
    run = run_of((1 << 29, 300.0), devices=devices, nranks=3)
    assert diagnose_nccl_tests(run, Context(links=["NV18"]))[1].message.endswith(
        "= 33% of 18 NVLinks x 50 GB/s (compute capability 10.0) (expected >= 60%)")  # B200 sorts first
    assert diagnose_nccl_tests(run, Context(links=["NV18"], gpu_caps=["9.0", "10.0"]))[1].message == (
        f"300 GB/s bus bandwidth at large sizes = 67% of {NV18_HOW}")
    assert diagnose_nccl_tests(run, Context(links=["NV18"]))[0].message.startswith(
        "nccl-tests: 3 rank(s) on NVIDIA B200, NVIDIA H200, zz unknown GPU: ")
    pcie = diagnose_nccl_tests(run_of((1 << 29, 20.0), nranks=2), Context(links=["PXB"], pcie_gen=5, pcie_width=8))
    assert pcie[1].message == "20 GB/s bus bandwidth at large sizes = 83% of PCIe gen5 x8 (PXB): 24 GB/s"


def test_nccl_tests_with_no_rows_stopped_early():
    assert diagnose_nccl_tests(NcclTestsRun(ngpus=2)) == [Finding(
        "fail", "nccl-tests-empty", "nccl-tests: 2 rank(s): no result rows (the run stopped early)",
        "read the output's last lines; rerun with NCCL_DEBUG=INFO and diagnose the NCCL log")]


def test_failed_nccl_tests_take_the_signatures_fix():
    failures = ["Test failure common.cu:607"] + [f"Test NCCL failure common.cu:{i} 'unhandled cuda error'"
                                                 for i in range(6)]
    run = NcclTestsRun(nranks=2, failures=failures, devices=[Device(0, 1, "h", 0, "b", "NVIDIA H200")])
    cause, fix, source = SIGNATURE_TEXT["unhandled-cuda-error"]
    assert diagnose_nccl_tests(run) == [Finding("fail", "nccl-tests-failed", "nccl-tests: 2 rank(s) on NVIDIA H200: "
                                                "Test failure common.cu:607", fix, source, failures[:6])]
    unknown = NcclTestsRun(ngpus=1, failures=["Out of bounds values : 3 FAILED"])
    assert diagnose_nccl_tests(unknown) == [Finding(
        "fail", "nccl-tests-failed", "nccl-tests: 1 rank(s): Out of bounds values : 3 FAILED",
        "rerun with NCCL_DEBUG=INFO and diagnose the NCCL log", "", ["Out of bounds values : 3 FAILED"])]


def test_unhandled_cuda_error_on_two_rtx_50xx_is_the_nccl_bug():
    failure = "Test NCCL failure common.cu:409 'unhandled cuda error (run with NCCL_DEBUG=INFO for details)'"
    rtx = [Device(0, 1, "h", 0, "b", "NVIDIA GeForce RTX 5090"), Device(1, 1, "h", 1, "b", "NVIDIA GeForce RTX 5090")]
    run = NcclTestsRun(nranks=2, devices=rtx, failures=[failure])
    assert diagnose_nccl_tests(run) == [Finding(
        "fail", "nccl-tests-failed", f"nccl-tests: 2 rank(s) on NVIDIA GeForce RTX 5090: {failure}. On RTX 50xx this "
        "is the signature of NCCL older than 2.26.2 (one GPU passes, two fail); the NCCL_DEBUG=INFO log shows "
        "`Cuda failure 1 'invalid argument'`", HINT_2262, SIGNATURE_TEXT["nccl-too-old-for-blackwell"][2], [failure])]
    one = diagnose_nccl_tests(NcclTestsRun(nranks=1, devices=rtx[:1], failures=[failure]))
    assert one[0].message == f"nccl-tests: 1 rank(s) on NVIDIA GeForce RTX 5090: {failure}"
    h200 = diagnose_nccl_tests(NcclTestsRun(nranks=2, devices=[Device(0, 1, "h", 0, "b", "NVIDIA H200")],
                                            failures=[failure]))
    assert h200[0].fix == SIGNATURE_TEXT["unhandled-cuda-error"][1]
    other = diagnose_nccl_tests(NcclTestsRun(nranks=2, devices=rtx, failures=["Test timeout x"]))
    assert other[0].fix == SIGNATURE_TEXT["collective-timeout"][1] and other[0].source == ""


@pytest.mark.parametrize("links, slowest", [
    ([], None), (["NV18", "SYS", "PIX"], "SYS"), (["PIX", "NODE", "PHB"], "NODE"), (["PXB", "PHB"], "PHB"),
    (["PIX", "PXB"], "PXB"), (["NV4", "PIX"], "PIX"), (["NV18", "NV4", "NV12"], "NV4"), (["NV18", "NV"], "NV"),
    (["X1", "Y2"], "X1"), (["NV2", "X1"], "NV2"), (["NV1", "NV"], "NV"),
])
def test_slowest_link(links, slowest):
    assert nccl_logs._slowest_link(links) == slowest


def matrix(kind: str, *pairs: tuple[str, str, str], gpus: int = 2) -> TopoMatrix:
    names = [f"GPU{i}" for i in range(gpus)]
    cells = {a: {b: "X" for b in names} for a in names}
    for a, b, link in pairs:
        cells[a][b] = cells[b][a] = link
    return TopoMatrix(kind, names, cells)


def test_diagnose_topo_groups_pairs_by_link():
    topo = matrix("topo", ("GPU0", "GPU1", "NV4"), ("GPU0", "GPU2", "PIX"), ("GPU0", "GPU3", "PXB"),
                  ("GPU1", "GPU2", "PHB"), ("GPU1", "GPU3", "NODE"), ("GPU2", "GPU3", "SYS"), gpus=4)
    host_fix = ("for tensor parallelism prefer GPUs behind one PCIe switch or NVLink; otherwise expect PCIe-bound "
                "all-reduce")
    bridge = ("; P2P crosses the CPU's host bridge: consumer GPUs usually get no P2P here and NCCL falls back to SHM "
              "through host memory (slow, but it works)")
    assert nccl_logs.diagnose_topo(topo) == [
        Finding("warn", "topo", "GPU1-GPU3: NODE (between PCIe host bridges of one NUMA node)" + bridge, host_fix),
        Finding("pass", "topo", "GPU0-GPU1: NV4 (4 bonded NVLinks)"),
        Finding("warn", "topo", "GPU1-GPU2: PHB (through a PCIe host bridge (the CPU))" + bridge, host_fix),
        Finding("pass", "topo", "GPU0-GPU2: PIX (at most one PCIe bridge); PCIe P2P normally works here"),
        Finding("pass", "topo", "GPU0-GPU3: PXB (several PCIe bridges, no host bridge); PCIe P2P normally works here"),
        Finding("warn", "topo", "GPU2-GPU3: SYS (across NUMA nodes (QPI/UPI/Infinity Fabric)); traffic crosses the "
                "CPU interconnect between sockets", "keep tensor-parallel groups on GPUs of one NUMA node "
                "(CUDA_VISIBLE_DEVICES)")]
    odd = matrix("topo", ("GPU0", "GPU1", "NV8"), ("GPU0", "GPU2", "NV8"), ("GPU1", "GPU2", "??"), gpus=3)
    assert nccl_logs.diagnose_topo(odd) == [Finding("info", "topo", "GPU1-GPU2: ?? (??)"),
                                            Finding("pass", "topo", "GPU0-GPU1, GPU0-GPU2: NV8 (8 bonded NVLinks)")]
    assert nccl_logs.diagnose_topo(matrix("topo", gpus=1)) == [Finding("info", "topo", "1 GPU: nothing to connect")]
    assert nccl_logs.diagnose_topo(matrix("p2p", gpus=0)) == [Finding("info", "topo", "0 GPU: nothing to connect")]


def test_diagnose_p2p_matrix():
    ok = matrix("p2p", ("GPU0", "GPU1", "OK"), ("GPU0", "GPU2", "OK"), ("GPU1", "GPU2", "OK"), gpus=3)
    assert nccl_logs.diagnose_topo(ok) == [Finding("pass", "p2p", "P2P OK between all 3 GPU pair(s)")]
    bad = matrix("p2p", ("GPU0", "GPU1", "CNS"), ("GPU0", "GPU2", "OK"), ("GPU1", "GPU2", "QQ"), gpus=3)
    assert nccl_logs.diagnose_topo(bad) == [Finding(
        "warn", "p2p", "P2P unavailable: GPU0-GPU1 CNS (chipset not supported), GPU1-GPU2 QQ (QQ); NCCL moves data "
        "through host memory (SHM)", "expected on GeForce cards and across host bridges; for full speed use GPUs "
        "under one PCIe switch (PIX/PXB) or NVLink; check BIOS ACS/IOMMU settings when P2P should work")]


# ---- recognising files and diagnosing them together -------------------------------------------------------
def test_split_sections():
    split = nccl_logs.split_sections
    assert split("plain\ntext") == [("", "plain\ntext")]
    assert split("== only\nx\n") == [("", "== only\nx\n")]  # one named section is no bundle
    assert split("pre\nmore\n== a\nx\n==b\n== \n== b\ny\n") == [("", "pre\nmore"), ("a", "x\n==b\n== "),
                                                                  ("b", "y")]
    assert split("== a\n== b\n  \n== c\nz") == [("c", "z")]  # empty sections are dropped
    assert split("== a\n== b\n") == [("", "== a\n== b\n")]
    assert split("==  spaced name  \n1\n== b\n2") == [("spaced name", "1"), ("b", "2")]
    long = "== " + "n" * 3000 + "\n1\n== b\n2"
    assert split(long)[0] == ("n" * (2048 - 3), "1")


@pytest.mark.parametrize("text, kind", [
    ("", "empty"), (" \n\t\n", "empty"), ("\x1b[0m\n", "empty"),
    ("== a\nx\n== b\ny\n", "bundle"),
    ("# nThread 1 nGpus 2 minBytes 8 maxBytes 8\n", "nccl-tests"), ("#  size  count  type\n", "nccl-tests"),
    ("h: Test NCCL failure x\n", "nccl-tests"), ("# Avg bus bandwidth : 1\n", "nccl-tests"),
    ("size=8 time_us=1.0 algbw=2.0 busbw=2.0\n", "allreduce-kv"),
    ("==============NVSMI LOG==============\n", "smi-query"),
    ("GPU 1\n    Product Name   : NVIDIA H200\n", "smi-query"),
    ("\tGPU0\tGPU1\nGPU0\tX\tNV18\nGPU1\tNV18\tX\n", "topo"), (" \tGPU0\tGPU1\n GPU0\tX\tOK\n GPU1\tOK\tX\n", "p2p"),
    ("h:1:1 [0] NCCL INFO x\n", "nccl-log"), ("h:1:1 [0] NCCL WARN x\n", "nccl-log"),
    ("h:1:1 [0] NCCL TRACE x\n", "nccl-log"), ("h:1:1 [0] NCCL ABORT x\n", "nccl-log"),
    ("vLLM is using nccl==2.21.5\n", "nccl-log"), ("RuntimeError: NCCL error x\n", "nccl-log"),
    ("ncclUnhandledCudaError\n", "nccl-log"), ("unhandled cuda error\n", "nccl-log"),
    ("a: error while loading shared libraries: libx.so\n", "nccl-log"), ("Bus error (core dumped)\n", "nccl-log"),
    ("index, name, compute_cap\n0, NVIDIA H200, 9.0\n", "smi-csv"), ("| NVIDIA-SMI 580.159.04 |\n", "smi"),
    ("hello\n", "unknown"), ("== a\nx\n", "unknown"),
])
def test_detect_kind(text, kind):
    assert nccl_logs.detect_kind(text) == kind


def test_detect_kind_order():
    assert nccl_logs.detect_kind("h:1:1 [0] NCCL INFO x\n# nThread 1 nGpus 2 minBytes 8 maxBytes 8\n") == "nccl-tests"
    assert nccl_logs.detect_kind("NVIDIA-SMI\nindex, name, compute_cap\n") == "smi-csv"
    assert nccl_logs.detect_kind("NVIDIA-SMI\nh:1:1 [0] NCCL INFO x\n") == "nccl-log"
    assert nccl_logs.detect_kind("size=8 time_us=1 algbw=2 busbw=2\n    Product Name : x\n") == "allreduce-kv"


def test_parsed_sections_parse_each_kind():
    text = "\n".join(["== t", read(FAULT / "all_reduce.txt"), "== kv", "size=8 time_us=1 algbw=2 busbw=2",
                      "== topo", read(FAULT / "topo.txt"), "== p2p", read(FAULT / "topo_p2p.txt"),
                      "== q", "    Product Name : NVIDIA H200", "== csv", "index, name, compute_cap", "0, A, 9.0",
                      "== log", info("x"), "== smi", "NVIDIA-SMI", "== other", "hello"])
    sections = nccl_logs._parsed_sections(text)
    assert [(name, kind) for name, kind, _ in sections] == [
        ("t", "nccl-tests"), ("kv", "allreduce-kv"), ("topo", "topo"), ("p2p", "p2p"), ("q", "smi-query"),
        ("csv", "smi-csv"), ("log", "nccl-log"), ("smi", "smi"), ("other", "unknown")]
    parsed = [p for _, _, p in sections]
    assert parsed[0] == parse_nccl_tests(read(FAULT / "all_reduce.txt") + "\n")
    assert parsed[1].runner == "torch.distributed (key=value)"
    assert parsed[2].kind == "topo" and parsed[3].kind == "p2p"
    assert parsed[4] == {"driver": "", "cuda": "", "gpus": []}
    assert parsed[5] == [{"index": "0", "name": "A", "compute_cap": "9.0"}]
    assert isinstance(parsed[6], NcclLog) and parsed[6].hosts == {"h"}
    assert parsed[7:] == [None, None]
    assert nccl_logs._parsed_sections("") == [("", "empty", None)]


def test_learn_from_each_kind():
    ctx = Context()
    learn = nccl_logs._learn
    learn(ctx, "topo", matrix("topo", ("GPU0", "GPU1", "NV18")))
    learn(ctx, "p2p", matrix("p2p", ("GPU0", "GPU1", "OK")))
    learn(ctx, "topo", None)
    learn(ctx, "p2p", [1])
    assert (ctx.links, ctx.p2p) == (["NV18"], ["OK"])
    learn(ctx, "smi-csv", [{"compute_cap": "9.0", "pcie.link.gen.max": "5", "pcie.link.width.max": "x"},
                           {"compute_cap": "9.0", "pcie.link.gen.max": "4", "pcie.link.width.max": "8"},
                           {"compute_cap": "N/A"}, {"compute_cap": "12.0"}, {"compute_cap": "12.0b"}])
    assert (ctx.gpu_caps, ctx.pcie_gen, ctx.pcie_width) == (["9.0", "12.0"], 5, 16)
    csv = Context()
    learn(csv, "smi-csv", [{"compute_cap": "8.0", "pcie.link.gen.max": "N/A"},
                           {"pcie.link.gen.max": "4", "pcie.link.width.max": "8"}])
    assert (csv.gpu_caps, csv.pcie_gen, csv.pcie_width) == (["8.0"], 4, 8)
    query = Context(gpu_caps=["9.0"])
    learn(query, "smi-query", {"gpus": [{"name": "NVIDIA H200", "pcie_gen_max": None},
                                        {"name": "NVIDIA GeForce RTX 5090", "pcie_gen_max": 5, "pcie_width_max": None},
                                        {"name": "nothing known", "pcie_gen_max": 3, "pcie_width_max": 4}]})
    assert (query.gpu_caps, query.pcie_gen, query.pcie_width) == (["9.0", "12.0"], 5, 16)
    learn(query, "smi-query", {"gpus": [{"name": "x", "pcie_gen_max": 4, "pcie_width_max": 8}]})
    assert (query.pcie_gen, query.pcie_width) == (5, 16)  # the first GPU with a generation decides
    learn(query, "smi-query", {})
    logs = Context()
    learn(logs, "nccl-log", NcclLog(hosts={"a"}, ranks={0: {}}, nranks=2))
    learn(logs, "nccl-log", NcclLog(hosts={"b"}, ranks={3: {}}, nranks=None))
    assert (logs.hosts, logs.ranks_seen, logs.nranks) == ({"a", "b"}, {0, 3}, 2)
    learn(logs, "nccl-log", NcclLog(nranks=4))
    learn(logs, "nccl-log", NcclLog(nranks=3))
    assert logs.nranks == 4  # the largest communicator
    none = Context()
    learn(none, "nccl-log", NcclLog())
    assert none.nranks is None
    tests = Context(gpu_caps=["9.0"])
    run = NcclTestsRun(devices=[Device(0, 1, "x", 0, "b", "NVIDIA H200"), Device(1, 1, "y", 1, "b", "NVIDIA B200"),
                                Device(2, 1, "y", 2, "b", "unknown")])
    learn(tests, "nccl-tests", run)
    learn(tests, "allreduce-kv", NcclTestsRun(devices=[Device(0, 1, "z", 0, "b", "NVIDIA GeForce RTX 5090")]))
    assert (tests.hosts, tests.gpu_caps) == ({"x", "y", "z"}, ["9.0", "10.0", "12.0"])
    other = NcclTestsRun(devices=[Device(0, 1, "w", 0, "b", "NVIDIA H100")])
    learn(tests, "nccl-log", other)  # a parse of the wrong type teaches nothing
    learn(tests, "nccl-tests", None)
    learn(tests, "smi-csv", {"compute_cap": "7.0"})
    learn(tests, "smi-query", [{"name": "NVIDIA H100"}])
    assert (tests.hosts, tests.gpu_caps, tests.ranks_seen) == ({"x", "y", "z"}, ["9.0", "10.0", "12.0"], set())


SMI_PARSED = {"driver": "570.1", "cuda": "12.8", "gpus": [
    {"name": "A", "bus_id": "1", "pcie_gen_current": 1, "pcie_gen_max": 5, "pcie_width_current": 8,
     "pcie_width_max": 16},
    {"name": "B", "bus_id": "2", "pcie_gen_current": 1, "pcie_gen_max": 5, "pcie_width_current": 16,
     "pcie_width_max": 16},
    {"name": "C", "bus_id": "3", "pcie_gen_current": 5, "pcie_gen_max": 5, "pcie_width_current": None,
     "pcie_width_max": 16},
    {"name": "D", "bus_id": "4", "pcie_gen_current": None, "pcie_gen_max": 5, "pcie_width_current": 4,
     "pcie_width_max": None}]}


def test_judge_smi_query_reports_narrow_links_then_slow_ones():
    findings, facts = nccl_logs._judge("smi-query", SMI_PARSED, Context())
    assert facts is SMI_PARSED
    assert findings == [
        Finding("info", "smi", "4 GPU(s), driver 570.1, CUDA 12.8"),
        Finding("warn", "pcie-width", "A 1: PCIe link x8 of x16", "reseat the card or move it to a full-width slot"),
        Finding("info", "pcie-gen", "B 2: PCIe gen1 now, gen5 max (idle GPUs drop their link speed; check under "
                "load)")]
    assert nccl_logs._judge("smi-query", {}, Context())[0] == [Finding("info", "smi", "0 GPU(s), driver ?, CUDA ?")]


def test_judge_the_other_kinds():
    judge = nccl_logs._judge
    rows = [{"name": "NVIDIA H200", "compute_cap": "9.0"}, {"index": "1"}]
    assert judge("smi-csv", rows, Context()) == (
        [Finding("info", "gpus", "2 GPU(s): NVIDIA H200 (9.0), ? (?)")], {"gpus": rows})
    assert judge("smi", None, Context()) == ([Finding("info", "smi", "nvidia-smi summary table (nothing to judge)")],
                                             {})
    assert judge("empty", None, Context()) == ([Finding(
        "info", "empty", "empty file (NCCL writes its debug file only when NCCL_DEBUG is set and a communicator "
        "starts)")], {})
    unrecognised = ([Finding("fail", "unrecognised-file", "not recognised: not an NCCL log, nccl-tests output or "
                             "nvidia-smi output", "pass NCCL_DEBUG=INFO logs (NCCL_DEBUG_FILE), all_reduce_perf "
                             "output, or `nvidia-smi topo -m` / `topo -p2p r` output")], {})
    assert judge("unknown", None, Context()) == unrecognised
    assert judge("nccl-tests", None, Context()) == unrecognised  # nothing parsed: nothing to judge
    assert judge("smi-query", [], Context()) == unrecognised and judge("smi-csv", {}, Context()) == unrecognised
    assert judge("topo", NcclLog(), Context()) == unrecognised and judge("nccl-log", [], Context()) == unrecognised
    run = run_of((8, 1.0))
    assert judge("allreduce-kv", run, Context()) == (diagnose_nccl_tests(run), run.to_dict())
    topo = matrix("p2p", ("GPU0", "GPU1", "OK"))
    assert judge("p2p", topo, Context()) == ([Finding("pass", "p2p", "P2P OK between all 1 GPU pair(s)")],
                                             topo.to_dict())
    log = log_of(info("NCCL version 2.28.9"))
    assert judge("nccl-log", log, Context()) == (diagnose_nccl_log(log), log.to_dict())


def test_a_bundle_prefixes_its_findings_and_keys_its_facts():
    text = "\n".join(["preamble", "== topo", read(FAULT / "topo.txt"), "== pip", "nvidia-nccl-cu12 2.28.9",
                      "== smi", "NVIDIA-SMI 580", "== table", read(FAULT / "all_reduce.txt")])
    [report] = diagnose_texts([("bundle.txt", text)])
    assert report.kind == "bundle" and report.path == "bundle.txt"
    assert levels(report.findings) == [("pass", "topo"), ("pass", "nccl-tests-ran"), ("fail", "busbw")]
    assert report.findings[0].message == "[topo] GPU0-GPU1: NV18 (18 bonded NVLinks)"
    assert report.findings[2].message.startswith("[table] 3.82 GB/s bus bandwidth at large sizes = 1% of 18 NVLinks "
                                                 "x 25 GB/s (compute capability 9.0)")
    assert list(report.facts) == ["topo", "pip", "smi", "table"]
    assert report.facts["topo"]["kind"] == "topo" and report.facts["topo"]["cells"]["GPU0"]["GPU1"] == "NV18"
    assert report.facts["pip"] == {"kind": "unknown"} and report.facts["smi"] == {"kind": "smi"}
    assert report.facts["table"]["peak_busbw"] == 3.82
    csv = diagnose_texts([("b.txt", "== q\nindex, name, compute_cap\n0, A, 9.0\n== x\nhello\n")])[0]
    assert csv.facts["q"] == {"kind": "smi-csv", "gpus": [{"index": "0", "name": "A", "compute_cap": "9.0"}]}
    assert [f.message for f in csv.findings] == ["[q] 1 GPU(s): A (9.0)"]
    assert report.lines == nccl_logs._lines(text)


def test_a_plain_file_keeps_its_facts_unprefixed():
    [report] = diagnose_texts([("topo.txt", read(FAULT / "topo.txt"))])
    assert report.kind == "topo" and report.facts == nccl_logs.parse_topo_matrix(read(FAULT / "topo.txt")).to_dict()
    assert report.findings == [Finding("pass", "topo", "GPU0-GPU1: NV18 (18 bonded NVLinks)")]
    [csv] = diagnose_texts([("q.csv", "index, name, compute_cap\n0, A, 9.0\n")])
    assert csv.facts == {"gpus": [{"index": "0", "name": "A", "compute_cap": "9.0"}]}
    assert len(csv.sections) == 1 and csv.sections[0][:2] == ("", "smi-csv")


def test_unrecognised_optional_and_empty_verdicts():
    reports = diagnose_texts([("a.txt", "hello\n"), ("b.txt", "hello\n"), ("c.txt", "== x\nhi\n== y\nho\n"),
                              ("d.txt", "")], optional={"b.txt", "c.txt"})
    assert [(r.path, r.kind) for r in reports] == [("a.txt", "unknown"), ("b.txt", "unknown"), ("c.txt", "bundle"),
                                                   ("d.txt", "empty")]
    assert levels(reports[0].findings) == [("fail", "unrecognised-file")]
    assert reports[1].findings == [Finding("info", "unrecognised-file", "not recognised (found in a directory; "
                                           "skipped)")]
    assert reports[1].lines == ["hello"] and reports[1].facts == {}
    assert reports[2].findings == [Finding("info", "no-verdict", "nothing to judge in this file")]
    assert levels(reports[3].findings) == [("info", "empty")]
    assert reports[2].lines == ["== x", "hi", "== y", "ho"]


def test_files_inform_each_other_through_the_context():
    ctx = Context()
    logs = [(name, read(FAULT / name)) for name in ("nccl_debug.vm.1705.log", "nccl_debug.vm.1706.log")]
    reports = diagnose_texts([*logs, ("topo", read(FAULT / "topo.txt"))], ctx)
    assert ctx.links == ["NV18"] and ctx.hosts == {"vm"} and ctx.ranks_seen == {0, 1} and ctx.nranks == 2
    transport = [f for f in reports[0].findings if f.check == "transport"]
    assert [f.level for f in transport] == ["fail"]  # the topology, read second, informs the log's verdict


def test_parsed_lists_every_section_of_the_kinds_asked():
    reports = diagnose_texts([("a", "== t\n" + read(FAULT / "topo.txt") + "== l\n" + info("x") + "\n"),
                              ("b", info("y")), ("c", "hello")])
    found = nccl_logs._parsed(reports, ("nccl-log",))
    assert [(r.path, type(p).__name__) for r, p in found] == [("a", "NcclLog"), ("b", "NcclLog")]
    assert [r.path for r, _ in nccl_logs._parsed(reports, ("topo", "unknown"))] == ["a"]  # no parse: left out


# ---- find_root_cause: every branch ------------------------------------------------------------------------
TOPO = read(FAULT / "topo.txt")
TOPO_LINE = "topo.txt:2: GPU0\t X \tNV18\t0-31\t0\t\tN/A"
P2P = read(FAULT / "topo_p2p.txt")
NOT_JOINED_FIX = ("start every rank (same world size, reachable MASTER_ADDR/MASTER_PORT, every GPU visible: "
                  "CUDA_VISIBLE_DEVICES) and read the missing rank's own output")


def table(busbw: float, size: int = 536870912, ranks: int = 2) -> str:
    lines = [f"# nThread 1 nGpus {ranks} minBytes 8 maxBytes {size}"]
    lines += [f"#  Rank  {r} Group  0 Pid {r + 1} on vm device  {r} [0000:00:0{r}] NVIDIA H200" for r in range(ranks)]
    lines.append(f"  1048576  262144  float  sum  -1  10.0  {busbw * 2}  {busbw * 2}  0  10.0  1.0  1.0  0")
    lines.append(f"  {size}  {size // 4}  float  sum  -1  100.0  {busbw}  {busbw}  0  100.0  {busbw}  {busbw}  0")
    return "\n".join(lines) + "\n"


def init(rank: int, nranks: int, end: str) -> str:
    return f"vm:{10 + rank}:{10 + rank} [{rank}] NCCL INFO ncclCommInitRank comm 0x1 rank {rank} nranks {nranks} " \
           f"cudaDev {rank} busId 1 - Init {end}"


def vm(msg: str, rank: int = 0) -> str:
    return f"vm:{10 + rank}:{10 + rank} [{rank}] NCCL INFO {msg}"


def healthy_log(*extra: str, via: str = "P2P/CUMEM") -> str:
    return "\n".join([vm("NCCL version 2.28.9+cuda13.0"), *extra, init(0, 2, "START"), init(1, 2, "START"),
                      vm(f"Channel 00/0 : 0[0] -> 1[1] via {via}"), init(0, 2, "COMPLETE"), init(1, 2, "COMPLETE")])


def root(*files: tuple[str, str], ctx: Context | None = None) -> nccl_logs.RootCause:
    ctx = ctx or Context()
    return find_root_cause(diagnose_texts(list(files), ctx), ctx)


NV18 = {"expected": 450.0, "expected_how": NV18_HOW, "expected_source": NV18_SOURCE}


def test_root_cause_healthy_pair_measured_against_nvlink():
    cause = root(("log", healthy_log()), ("t.txt", table(300.0)), ("topo.txt", TOPO))
    assert cause == nccl_logs.RootCause("pass", "healthy: NV18 carried P2P/CUMEM; 2 ranks reach 67% of the link model",
                                        measured=300.0, **NV18)
    no_log = root(("t.txt", table(300.0, ranks=3)), ("topo.txt", TOPO))
    assert no_log.cause == "healthy: 3 ranks reach 67% of the link model"


def test_root_cause_learns_the_context_from_the_reports_when_none_is_given():
    reports = diagnose_texts([("t.txt", table(300.0)), ("topo.txt", TOPO)])
    assert find_root_cause(reports) == nccl_logs.RootCause(
        "pass", "healthy: 2 ranks reach 67% of the link model", measured=300.0, **NV18)


def test_root_cause_measures_the_best_multi_rank_run():
    cause = root(("a.txt", table(280.0)), ("b.txt", table(310.0)), ("c.txt", table(500.0, ranks=1)),
                 ("topo.txt", TOPO))
    assert (cause.level, cause.measured, cause.cause) == ("pass", 310.0, "healthy: 2 ranks reach 69% of the link "
                                                                         "model")


@pytest.mark.parametrize("busbw, level", [(270.0, "pass"), (269.9, "warn"), (112.5, "warn"), (112.4, "fail")])
def test_root_cause_bandwidth_share_boundaries(busbw, level):
    cause = root(("t.txt", table(busbw)), ("topo.txt", TOPO))
    assert (cause.level, cause.measured) == (level, busbw)
    if level != "pass":
        assert cause.cause == "bus bandwidth fell short of the link and no NCCL setting explains it"
        assert cause.fix == ("check the PCIe link under load (nvidia-smi -q: GPU Link Info, generation and width), "
                             "other jobs on the GPUs, and `nvidia-smi topo -p2p r`")
        assert cause.evidence == [f"t.txt:5: 536870912  134217728  float  sum  -1  100.0  {busbw}  {busbw}  0  "
                                  f"100.0  {busbw}  {busbw}  0"]


def test_root_cause_names_the_heaviest_setting_and_its_line():
    log = healthy_log(vm("NCCL_ALGO set by environment to Tree."), vm("NCCL_PROTO set by environment to LL."),
                      vm("NCCL_DEBUG set by environment to INFO."))
    cause = root(("log", log), ("t.txt", table(150.0)), ("topo.txt", TOPO))
    assert cause == nccl_logs.RootCause(
        "warn", "NCCL_PROTO=LL leaves out the Simple protocol, the only one that reaches full bandwidth on large "
        "messages (LL moves 4 data bytes per 8, LL128 120 per 128): bus bandwidth fell short of the link",
        "unset NCCL_PROTO", ["log:3: " + vm("NCCL_PROTO set by environment to LL."),
                             "t.txt:5: 536870912  134217728  float  sum  -1  100.0  150.0  150.0  0  100.0  150.0  "
                             "150.0  0"],
        measured=150.0, **NV18, weighed=[
            "NCCL_ALGO=Tree: the algorithms allowed (Ring, Tree, NVLS, CollNet)",
            "NCCL_PROTO=LL: the protocols allowed (LL, LL128, Simple)"])
    caller = root(("t.txt", table(50.0)), ("topo.txt", TOPO), ctx=Context(env={"NCCL_BUFFSIZE": "65536"}))
    assert (caller.level, caller.fix, len(caller.evidence)) == ("fail", "unset NCCL_BUFFSIZE", 1)
    assert caller.cause == ("NCCL_BUFFSIZE=65536 is below the default 4194304: fewer bytes in flight per step: bus "
                            "bandwidth fell short of the link")
    assert caller.weighed == ["NCCL_BUFFSIZE=65536: the staging buffer per channel and peer (default 4 MiB)"]


@pytest.mark.parametrize("link", ["PIX", "PXB"])
def test_root_cause_slow_p2p_behind_a_switch_points_at_acs(link):
    topo = TOPO.replace("NV18", link)
    cause = root(("t.txt", table(10.0)), ("topo.txt", topo), ctx=Context(pcie_gen=5))
    assert cause.level == "fail" and (cause.measured, cause.expected) == (10.0, 48.0)
    assert cause.cause == ("P2P over the PCIe switch runs far below the PCIe model and no NCCL setting explains it: "
                           "ACS or the IOMMU redirects peer traffic through the root complex")
    assert cause.fix == ("check `nvidia-smi topo -p2p r` and cuda-samples p2pBandwidthLatencyTest; disable ACS on the "
                         "switches (setpci) or run the IOMMU in passthrough (iommu=pt)")
    assert cause.expected_how == f"PCIe gen5 x16 ({link}): 48 GB/s"
    assert len(cause.evidence) == 1 and cause.evidence[0].startswith("t.txt:5: 536870912 ")


def test_root_cause_signature_with_its_line_and_source():
    log = "\n".join([info("NCCL version 2.28.9"), warn("Cuda failure 1 'invalid argument'", "transport/nvls.cc:158")])
    cause, fix, source = SIGNATURE_TEXT["nvls-invalid-argument"]
    assert root(("a.log", log)) == nccl_logs.RootCause(
        "fail", cause, f"{fix} (see {source})",
        ["a.log:2: h:10:10 [0] transport/nvls.cc:158 NCCL WARN Cuda failure 1 'invalid argument'"])
    oom = root(("b.log", "hello\nx: Cuda failure 2 'out of memory'\n"), ("t.txt", table(300.0)),
               ("topo.txt", TOPO))
    assert oom == nccl_logs.RootCause("fail", SIGNATURE_TEXT["cuda-out-of-memory"][0],
                                      SIGNATURE_TEXT["cuda-out-of-memory"][1],
                                      ["b.log:2: x: Cuda failure 2 'out of memory'"], measured=300.0, **NV18)


def test_root_cause_takes_the_first_failure_of_the_first_file():
    first = root(("a.log", "Bus error\n"), ("b.log", "Cuda failure 2 'out of memory'\n"))
    assert first.cause == SIGNATURE_TEXT["bus-error"][0] and first.evidence == ["a.log:1: Bus error"]


def report_with(*findings: Finding, path: str = "x.log", lines: list[str] | None = None) -> nccl_logs.FileReport:
    return nccl_logs.FileReport(path, "nccl-log", list(findings), lines=lines or [])


def test_root_cause_evidence_falls_back_to_the_finding():
    finding = Finding("fail", "custom", "broke", "mend it", "", ["src.cc:1 not in the file", "second"])
    assert find_root_cause([report_with(finding, lines=["other"])]) == nccl_logs.RootCause(
        "fail", "broke", "mend it", ["x.log: src.cc:1 not in the file"])
    in_file = find_root_cause([report_with(finding, lines=["a", "text: not in the file here"])])
    assert in_file.evidence == ["x.log:2: text: not in the file here"]  # the message without the source
    bare = find_root_cause([report_with(Finding("fail", "custom", "broke", "mend it", "s"), lines=["x"])])
    assert (bare.fix, bare.evidence) == ("mend it (see s)", [])


@pytest.mark.parametrize("check", sorted(nccl_logs._NOT_CAUSES))
def test_root_cause_skips_verdicts_that_are_no_cause(check):
    assert nccl_logs._NOT_CAUSES == {"busbw", "transport", "nccl-tests-failed", "exit-status", "unrecognised-file",
                                     "nccl-tests-empty", "unrecognised-warn", "unrecognised-error"}
    reports = [report_with(Finding("info", "x", "fine")),
               report_with(Finding("fail", check, "bad", "mend", "src", ["e1", "e2"]), path="y.log")]
    assert find_root_cause(reports) == nccl_logs.RootCause("fail", "y.log: bad", "mend", ["y.log: e1"])


def test_root_cause_a_warning_when_nothing_failed():
    cause = root(("topo.txt", TOPO.replace("NV18", "PHB")))
    assert cause == nccl_logs.RootCause(
        "warn", "topo.txt: GPU0-GPU1: PHB (through a PCIe host bridge (the CPU)); P2P crosses the CPU's host bridge: "
        "consumer GPUs usually get no P2P here and NCCL falls back to SHM through host memory (slow, but it works)",
        "for tensor parallelism prefer GPUs behind one PCIe switch or NVLink; otherwise expect PCIe-bound all-reduce",
        [], expected_how="PCIe (PHB) of unknown generation")
    reports = [report_with(Finding("info", "a", "x"), Finding("warn", "w", "first", "f1", evidence=["ev"])),
               report_with(Finding("fail", "busbw", "second"))]
    assert find_root_cause(reports) == nccl_logs.RootCause("warn", "x.log: first", "f1", ["x.log: ev"])


def test_root_cause_one_rank_and_nothing_found():
    one = root(("t.txt", table(500.0, ranks=1)), ("topo.txt", TOPO))
    assert one == nccl_logs.RootCause("pass", "one rank: NCCL initialised and ran on the GPU; bus bandwidth needs two "
                                      "or more GPUs (nothing crosses a link)", **NV18)
    mixed = root(("a.txt", table(500.0, ranks=1)), ("b.txt", table(300.0)))
    assert mixed == nccl_logs.RootCause("pass", "no failure found", measured=300.0)
    assert find_root_cause([]) == nccl_logs.RootCause("pass", "no failure found")
    env = find_root_cause([], Context(env={"NCCL_DEBUG": "INFO", "NCCL_NVLS_ENABLE": "0", "NCCL_ALGO": "Ring"}))
    assert env.weighed == ["NCCL_ALGO=Ring: the algorithms allowed (Ring, Tree, NVLS, CollNet)",
                           "NCCL_NVLS_ENABLE=0: NVLink SHARP (multicast) on NVSwitch systems"]


def test_root_cause_ranks_that_never_joined():
    log = "\n".join([vm("NCCL version 2.28.9"), init(0, 4, "START"), init(2, 4, "START")])
    assert root(("a.log", log), ("b.log", init(2, 4, "START"))) == nccl_logs.RootCause(
        "fail", "rank(s) 1, 3 of 4 never joined the communicator: rank(s) 0, 2 started it (Init START) and waited",
        NOT_JOINED_FIX, [f"a.log:2: {init(0, 4, 'START')}", f"b.log:1: {init(2, 4, 'START')}"])
    started = root(("a.log", init(0, 4, "START")), ("b.log", init(1, 4, "START")), ("c.log", init(2, 4, "START")))
    assert started.evidence == [f"a.log:1: {init(0, 4, 'START')}", f"b.log:1: {init(1, 4, 'START')}"]
    assert started.cause.startswith("rank(s) 3 of 4 never joined the communicator: rank(s) 0, 1, 2 started it")
    assert root(("a.log", init(0, 2, "START")), ("b.log", init(1, 2, "START"))).cause == "no failure found"


def test_root_cause_a_rank_missing_after_a_timeout_though_init_completed():
    log = "\n".join([init(0, 2, "START"), init(0, 2, "COMPLETE")])
    hung = table(3.0).replace("  536870912", "Test timeout: the all-reduce did not finish\n  536870912")
    cause = root(("a.log", log), ("t.txt", hung))
    assert cause == nccl_logs.RootCause(
        "fail", "rank(s) 1 of 2 never joined the communicator: rank(s) 0 started it (Init START) and waited",
        NOT_JOINED_FIX, [f"a.log:1: {init(0, 2, 'START')}", "t.txt:5: Test timeout: the all-reduce did not finish"],
        measured=3.0)
    assert root(("a.log", log)).cause == "no failure found"  # completed and nothing timed out


def test_root_cause_timeouts_are_failures_that_say_timeout_or_did_not_finish():
    log = diagnose_texts([("a.log", "\n".join([init(0, 2, "START"), init(0, 2, "COMPLETE")]))])
    stuck = report_with(Finding("fail", "exit-status", "the run did not finish"), path="r.txt", lines=["x"])
    assert find_root_cause([*log, stuck]).evidence == [f"a.log:1: {init(0, 2, 'START')}"]
    assert find_root_cause([*log, stuck]).cause.startswith("rank(s) 1 of 2 never joined")
    by_evidence = report_with(Finding("fail", "exit-status", "exit 1", evidence=["Timeout at 5 s"]),
                              lines=["TIMEOUT at 5 s"])
    assert find_root_cause([*log, by_evidence]).evidence == [f"a.log:1: {init(0, 2, 'START')}",
                                                             "x.log:1: TIMEOUT at 5 s"]
    second = report_with(Finding("fail", "exit-status", "timeout"), path="y.log", lines=["timeout again"])
    assert find_root_cause([*log, by_evidence, second]).evidence == [f"a.log:1: {init(0, 2, 'START')}",
                                                                     "x.log:1: TIMEOUT at 5 s"]  # one timeout line
    warned = report_with(Finding("warn", "x", "timeout seen"))
    assert find_root_cause([*log, warned]).cause == "x.log: timeout seen"


def test_root_cause_shm_instead_of_nvlink_because_of_one_setting():
    log = healthy_log(vm("NCCL_P2P_DISABLE set by environment to 1."), via="SHM/direct/direct")
    cause = root(("a.log", log), ("t.txt", table(40.0)), ("topo.txt", TOPO), ("p2p.txt", P2P))
    assert cause == nccl_logs.RootCause(
        "fail", "the GPUs are NV18-connected but NCCL sent the traffic through host memory (SHM) because "
        "NCCL_P2P_DISABLE is set", "unset NCCL_P2P_DISABLE",
        ["a.log:2: " + vm("NCCL_P2P_DISABLE set by environment to 1."),
         "a.log:5: " + vm("Channel 00/0 : 0[0] -> 1[1] via SHM/direct/direct"), TOPO_LINE, "p2p.txt:2: GPU0\tX\tOK"],
        measured=40.0, **NV18, weighed=["NCCL_P2P_DISABLE=1: no P2P (NVLink/PCIe) between GPUs: SHM or sockets "
                                        "instead"])


def test_root_cause_p2p_level_and_the_callers_environment_are_named():
    log = healthy_log(vm("NCCL_P2P_LEVEL set by environment to LOC."), via="NET/Socket/0")
    cause = root(("a.log", log), ("topo.txt", TOPO), ctx=Context(env={"NCCL_SHM_DISABLE": "1"}))
    assert cause.cause == ("the GPUs are NV18-connected but NCCL sent the traffic through TCP sockets because "
                           "NCCL_SHM_DISABLE and NCCL_P2P_LEVEL are set")
    assert cause.fix == "unset NCCL_P2P_LEVEL (or set it to SYS); unset NCCL_SHM_DISABLE"
    assert cause.evidence == ["a.log:2: " + vm("NCCL_P2P_LEVEL set by environment to LOC."),
                              "a.log:5: " + vm("Channel 00/0 : 0[0] -> 1[1] via NET/Socket/0"), TOPO_LINE]


def test_root_cause_sockets_on_one_host_with_no_setting_to_blame():
    log = healthy_log(vm("NCCL_P2P_DISABLE set by environment to 0."), via="NET/Socket/0")
    cause = root(("a.log", log))
    assert cause == nccl_logs.RootCause(
        "warn", f"the ranks share one host but NCCL sent the traffic through TCP sockets: {GENERIC_WHY}", GENERIC_FIX,
        ["a.log:2: " + vm("NCCL_P2P_DISABLE set by environment to 0."),
         "a.log:5: " + vm("Channel 00/0 : 0[0] -> 1[1] via NET/Socket/0")],
        weighed=["NCCL_P2P_DISABLE=0: no P2P (NVLink/PCIe) between GPUs: SHM or sockets instead"])


def test_root_cause_replays_the_recorded_fault_run():
    files = [(p.name, read(p)) for p in sorted(FAULT.iterdir()) if p.suffix in (".txt", ".log")]
    cause = root(*files)
    assert cause.evidence == [
        "nccl_debug.vm.1705.log:19: vm:1705:1705 [0] NCCL INFO NCCL_P2P_DISABLE set by environment to 1.",
        "nccl_debug.vm.1705.log:20: vm:1705:1705 [0] NCCL INFO NCCL_SHM_DISABLE set by environment to 1.",
        "nccl_debug.vm.1705.log:37: vm:1705:1705 [0] NCCL INFO Channel 00/0 : 1[1] -> 0[0] [receive] via "
        "NET/Socket/0",
        TOPO_LINE, "topo_p2p.txt:2: GPU0\tX\tOK"]
    assert (cause.level, cause.measured, cause.expected) == ("fail", 3.82, 450.0)
    assert cause.weighed == ["NCCL_NVLS_ENABLE=0: NVLink SHARP (multicast) on NVSwitch systems",
                             "NCCL_P2P_DISABLE=1: no P2P (NVLink/PCIe) between GPUs: SHM or sockets instead",
                             "NCCL_SHM_DISABLE=1: no shared-memory transport: without P2P, TCP sockets carry the "
                             "traffic"]


# ---- found while writing these tests, fixed in vllm_forge/nccl/nccl_logs.py --------------------------------------


def test_a_shortfall_beside_an_nccl_tests_run_without_rows_is_still_diagnosed():
    """The evidence row came from every run's last large row: a run with no rows raised IndexError."""
    failed = "# nThread 1 nGpus 2 minBytes 8 maxBytes 1024\nTest NCCL failure common.cu:1000 'unhandled cuda error'\n"
    cause = root(("t.txt", table(100.0)), ("failed.txt", failed), ("topo.txt", TOPO))
    assert (cause.level, cause.cause, cause.measured) == (
        "fail", "bus bandwidth fell short of the link and no NCCL setting explains it", 100.0)
    assert cause.evidence == ["t.txt:5: 536870912  134217728  float  sum  -1  100.0  100.0  100.0  0  100.0  100.0  "
                              "100.0  0"]


def test_the_evidence_row_is_the_cited_tables_own():
    """The best run stops at 256 MiB: its own last row is the evidence, not a size only another run reached."""
    cause = root(("big.txt", table(200.0)), ("small.txt", table(250.0, size=268435456)), ("topo.txt", TOPO))
    assert (cause.level, cause.measured) == ("warn", 250.0)
    assert cause.evidence == ["small.txt:5: 268435456  67108864  float  sum  -1  100.0  250.0  250.0  0  100.0  "
                              "250.0  250.0  0"]


def test_a_second_table_after_a_repeated_one_is_read():
    table_a = f"{HEADER}\n{ROW.format(w=0)}\n"
    table_b = table_a.replace("maxBytes 1024", "maxBytes 2048").replace("     1024  ", "     2048  ")
    rows = parse_nccl_tests(table_a + table_a + table_b).rows
    assert [r.size for r in rows] == [1024, 2048]


@pytest.mark.parametrize("link", ["PHB", "NODE", "SYS"])
def test_sockets_on_one_host_are_wrong_whatever_the_pcie_path(link):
    topo = f"\tGPU0\tGPU1\tCPU Affinity\nGPU0\t X \t{link}\t0-31\nGPU1\t{link}\t X \t0-31\n"
    log = healthy_log(vm("NCCL_SHM_DISABLE set by environment to 1."), via="NET/Socket/0")
    reports = diagnose_texts([("a.log", log), ("topo.txt", topo)])
    (transport,) = [f for f in reports[0].findings if f.check == "transport"]
    assert transport.level == "fail"
    assert "traffic goes through TCP sockets (NET) on one host, though all ranks are on one host" in transport.message
    assert "NCCL_SHM_DISABLE=1 is set" in transport.message and transport.fix == "unset NCCL_SHM_DISABLE"
    shm = healthy_log(via="SHM/direct/direct")
    (transport,) = [f for f in diagnose_texts([("a.log", shm), ("topo.txt", topo)])[0].findings
                    if f.check == "transport"]
    assert transport.level == "info"  # SHM across the host bridge is what NCCL should do there
