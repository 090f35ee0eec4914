"""NCCL log / nccl-tests / topology parsers and signatures, on the field report's and an H200 host's
real outputs, plus hypothesis fuzzing of every parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_forge.nccl import nccl_logs
from vllm_forge.nccl.nccl_logs import (
    Context,
    detect_kind,
    diagnose_files,
    diagnose_nccl_log,
    diagnose_texts,
    judge_busbw,
    parse_allreduce_kv,
    parse_nccl_log,
    parse_nccl_tests,
    parse_smi_query,
    parse_topo_matrix,
    split_sections,
)

FIX = Path(__file__).resolve().parents[1] / "fixtures"
SEED = FIX / "seed_5090"
H200 = FIX / "h200x2"


def read(path: Path) -> str:
    return path.read_text()


def checks(findings, level=None):
    return {f.check for f in findings if level is None or f.level == level}


# ---- the field report (RTX 5090 D x2, PHB, NCCL 2.25.1) -----------------------------------------------
def test_seed_debug_log_facts():
    log = parse_nccl_log(read(SEED / "nccl_debug.log"))
    assert log.version == (2, 25, 1)
    assert log.built_cuda == "12.8" and log.driver_cuda == "12.8"
    assert log.smem == (82240, 79856)
    assert log.env == {"NCCL_CUMEM_ENABLE": "0"}
    assert log.transports == {"SHM/direct/direct": 2}
    assert log.no_ib and log.net == "Socket"
    assert log.init_complete == 1
    sources = [w.source for w in log.warns]
    assert "enqueue.cc:1500" in sources and "graph/search.cc:1135" in sources
    # the bare line two ranks wrote over each other is still read as a WARN
    assert sum("Cuda failure 1 'invalid argument'" in w.message for w in log.warns) == 2


def test_seed_debug_log_names_the_nccl_bug_and_fix():
    findings = diagnose_nccl_log(parse_nccl_log(read(SEED / "nccl_debug.log")))
    failed = [f for f in findings if f.level == "fail"]
    assert [f.check for f in failed] == ["nccl-too-old-for-blackwell"]
    bug = failed[0]
    assert "2.25.1" in bug.message and "2.26.2" in bug.fix
    assert "NVIDIA/nccl-tests#287" in bug.source and "2.26.2" in bug.source
    assert "enqueue.cc:1500" in bug.evidence[0]
    # SHM on a PHB pair with no topology given is expected, not a warning
    assert "shm-instead-of-p2p" not in checks(findings)
    assert "env-cumem" in checks(findings, "info")


def test_invalid_argument_on_datacenter_gpu_is_not_blamed_on_blackwell():
    text = read(SEED / "nccl_debug.log").replace("ncclMaxSharedMem", "ncclMaxSharedMemX")
    findings = diagnose_nccl_log(parse_nccl_log(text), Context(gpu_caps=["9.0"]))
    assert "nccl-too-old-for-blackwell" not in checks(findings)
    assert "cuda-invalid-argument" in checks(findings, "fail")


def test_fixed_nccl_on_blackwell_is_not_flagged():
    text = read(SEED / "nccl_debug.log").replace("2.25.1", "2.26.2")
    findings = diagnose_nccl_log(parse_nccl_log(text))
    assert "nccl-too-old-for-blackwell" not in checks(findings)
    assert "nccl-shared-memory" not in checks(findings)


def test_nvls_failure_gets_the_nvls_fix():
    line = "h:1:1 [0] transport/nvls.cc:157 NCCL WARN Cuda failure 1 'invalid argument'\n"
    findings = diagnose_nccl_log(parse_nccl_log("h:1:1 [0] NCCL INFO NCCL version 2.21.5+cuda12.4\n" + line))
    fail = [f for f in findings if f.level == "fail"]
    assert [f.check for f in fail] == ["nvls-invalid-argument"]
    assert "NCCL_NVLS_ENABLE=0" in fail[0].fix


def test_seed_vllm_log_with_gpu_capability():
    log = parse_nccl_log(read(SEED / "vllm_workers.log"))
    assert log.version == (2, 25, 1)
    bare = diagnose_nccl_log(log)
    assert "vllm-worker-died" in checks(bare, "fail")
    known = diagnose_nccl_log(log, Context(gpu_caps=["12.0"]))
    assert {"nccl-too-old", "vllm-worker-died"} <= checks(known, "fail")


def test_seed_nccl_tests_one_gpu_passes():
    run = parse_nccl_tests(read(SEED / "all_reduce_perf_1gpu.txt"))
    assert (run.ngpus, run.nthreads, run.min_bytes, run.max_bytes) == (1, 1, 8, 134217728)
    assert [d.name for d in run.devices] == ["NVIDIA GeForce RTX 5090 D"]
    assert run.devices[0].bus == "0000:01:00"
    assert len(run.rows) == 25 and run.rows[0].size == 8 and run.rows[-1].size == 134217728
    last = run.rows[-1]
    assert (last.out_of_place.time_us, last.out_of_place.algbw, last.out_of_place.busbw) == (211.6, 634.22, 0.0)
    assert last.in_place.algbw == 2390342.44 and last.wrong() == 0
    assert run.avg_busbw == 0 and run.out_of_bounds == 0 and run.failures == []
    findings = nccl_logs.diagnose_nccl_tests(run)
    assert checks(findings, "pass") == {"nccl-tests-ran"}
    assert "one rank" in next(f.message for f in findings if f.check == "busbw")


def test_seed_nccl_tests_two_gpus_fail_with_cause():
    run = parse_nccl_tests(read(SEED / "all_reduce_perf_2gpu.txt"))
    assert run.rows == [] and run.ranks == 2
    assert run.failures[0].startswith("Test NCCL failure common.cu:409 'unhandled cuda error")
    assert "Test failure common.cu:607" in run.failures
    findings = nccl_logs.diagnose_nccl_tests(run)
    assert findings[0].level == "fail" and "2.26.2" in findings[0].message
    assert "NVIDIA/nccl-tests#287" in findings[0].source


def test_seed_topology_is_phb():
    matrix = parse_topo_matrix(read(SEED / "topo_m.txt"))
    assert matrix.kind == "topo" and matrix.gpus() == ["GPU0", "GPU1"]
    assert matrix.gpu_pairs() == [("GPU0", "GPU1", "PHB")]
    assert matrix.cpu_affinity == {"GPU0": "0-31", "GPU1": "0-31"}
    [finding] = nccl_logs.diagnose_topo(matrix)
    assert finding.level == "warn" and "host bridge" in finding.message


def test_seed_directory_diagnosis_exits_nonzero(capsys):
    files = sorted(p for p in SEED.iterdir() if p.suffix in (".log", ".txt"))
    assert nccl_logs.main(["diagnose", *map(str, files)]) == 1
    out = capsys.readouterr().out
    assert "nccl-too-old-for-blackwell" in out and "fix:" in out
    kinds = {Path(r.path).name: r.kind for r in diagnose_files(files)}
    assert kinds == {"all_reduce_perf_1gpu.txt": "nccl-tests", "all_reduce_perf_2gpu.txt": "nccl-tests",
                     "nccl_debug.log": "nccl-log", "topo_m.txt": "topo", "vllm_workers.log": "nccl-log",
                     "nvcc_version.txt": "unknown"}


# ---- the healthy H200 pair (NV18, NCCL 2.28.9) -----------------------------------------------------------
def test_h200_host_bundle_with_ansi_underlines():
    text = read(H200 / "host.txt")
    assert "\x1b[4m" in text
    sections = dict(split_sections(text))
    assert set(sections) >= {"nvidia-smi", "query", "topo", "topo -p2p r", "torch"}
    topo = parse_topo_matrix(sections["topo"])
    assert topo.kind == "topo" and topo.gpu_pairs() == [("GPU0", "GPU1", "NV18")]
    assert topo.numa_affinity == {"GPU0": "0", "GPU1": "0"}
    p2p = parse_topo_matrix(sections["topo -p2p r"])
    assert p2p.kind == "p2p" and p2p.gpu_pairs() == [("GPU0", "GPU1", "OK")]
    assert detect_kind(text) == "bundle"


def test_h200_debug_logs_pass():
    for name in ("nccl_debug_rank0.log", "nccl_debug_rank1.log"):
        log = parse_nccl_log(read(H200 / name))
        assert log.version == (2, 28, 9) and log.built_cuda == "13.0" and log.driver_cuda == "13.0"
        assert log.transports == {"P2P/CUMEM": 24}
        assert log.env == {"NCCL_NVLS_ENABLE": "0"}
        assert log.warns == [] and log.init_complete == 1
        findings = diagnose_nccl_log(log)
        assert nccl_logs.worst_level(findings) == "pass"
        assert "init" in checks(findings, "pass")


def test_h200_allreduce_judged_against_nv18():
    run = parse_allreduce_kv(read(H200 / "allreduce.txt"))
    assert [r.size for r in run.rows] == [1 << 20, 16 << 20, 128 << 20, 512 << 20]
    assert run.ranks == 2  # from busbw == algbw
    assert run.peak_busbw() == 312.0
    reports = diagnose_texts([(str(H200 / "allreduce.txt"), read(H200 / "allreduce.txt")),
                              (str(H200 / "host.txt"), read(H200 / "host.txt"))])
    busbw = next(f for f in reports[0].findings if f.check == "busbw")
    assert busbw.level == "pass" and "69% of 18 NVLinks x 25 GB/s" in busbw.message


def test_h200_smi_query():
    facts = parse_smi_query(read(H200 / "smi_q.txt"))
    assert facts["driver"] == "580.159.04" and facts["cuda"] == "13.0"
    assert [g["name"] for g in facts["gpus"]] == ["NVIDIA H200", "NVIDIA H200"]
    assert facts["gpus"][0]["pcie_gen_max"] == 5 and facts["gpus"][0]["pcie_width_max"] == 16
    assert facts["gpus"][1]["bus_id"] == "00000000:00:07.0"


def test_h200_all_files_pass_and_json(capsys):
    files = [H200 / n for n in ("host.txt", "smi_q.txt", "allreduce.txt", "nccl_debug_rank0.log",
                                "nccl_debug_rank1.log")]
    assert nccl_logs.main(["diagnose", "--json", *map(str, files)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["level"] == "pass"
    assert [f["kind"] for f in data["files"]] == ["bundle", "smi-query", "allreduce-kv", "nccl-log", "nccl-log"]


# ---- judgments that need no file ---------------------------------------------------------------------------
def test_shm_where_nvlink_exists_fails_naming_why():
    log = parse_nccl_log(read(H200 / "nccl_debug_rank0.log").replace("via P2P/CUMEM", "via SHM/direct/direct"))
    [transport] = [f for f in diagnose_nccl_log(log, Context(links=["NV18"])) if f.check == "transport"]
    assert transport.level == "fail" and "NV18" in transport.message
    assert "--ipc=host" in transport.message and "ACS/IOMMU" in transport.message  # no variable explains it


def test_p2p_disable_from_environment_warns():
    text = "h:1:1 [0] NCCL INFO NCCL_P2P_DISABLE set by environment to 1.\n"
    assert "env-p2p-disable" in checks(diagnose_nccl_log(parse_nccl_log(text)), "warn")


def test_unknown_warn_is_summarised_not_silent():
    text = ("h:1:1 [0] NCCL INFO NCCL version 2.28.9+cuda13.0\n"
            "h:1:1 [0] misc/socket.cc:50 NCCL WARN Net : Something new went wrong: code 42\n")
    findings = diagnose_nccl_log(parse_nccl_log(text))
    [unknown] = [f for f in findings if f.check == "unrecognised-warn"]
    assert unknown.level == "warn" and "Something new went wrong" in unknown.message
    assert "misc/socket.cc:50" in unknown.evidence[0]


def test_unknown_error_line_fails():
    text = "h:1:1 [0] NCCL INFO NCCL version 2.28.9\nRuntimeError: NCCL error: remote process exited or network\n"
    findings = diagnose_nccl_log(parse_nccl_log(text))
    assert nccl_logs.worst_level(findings) == "fail"


def test_driver_older_than_nccl_cuda():
    text = "h:1:1 [0] NCCL INFO cudaDriverVersion 12020\nh:1:1 [0] NCCL INFO NCCL version 2.26.2+cuda12.8\n"
    assert "driver-older-than-nccl-cuda" in checks(diagnose_nccl_log(parse_nccl_log(text)), "fail")


@pytest.mark.parametrize("link,cap,gen,peak", [
    ("NV18", "9.0", None, 450.0), ("NV12", "8.0", None, 300.0), ("NV18", "10.0", None, 900.0),
    ("NV4", "8.6", None, 56.25), ("PHB", None, 5, 48.0), ("PIX", None, 4, 24.0), ("SYS", None, 3, 12.0),
])
def test_link_peaks(link, cap, gen, peak):
    assert nccl_logs.link_peak_gbps(link, cap, gen)[0] == pytest.approx(peak)


def test_busbw_levels():
    def run_with(busbw):
        row = nccl_logs.CollRow(1 << 28, 1 << 26, "float", "sum", -1, None,
                                nccl_logs.Measure(1.0, busbw, busbw, 0))
        return nccl_logs.NcclTestsRun(nranks=2, rows=[row])

    assert judge_busbw(run_with(300), "NV18", "9.0").level == "pass"
    assert judge_busbw(run_with(200), "NV18", "9.0").level == "warn"
    assert judge_busbw(run_with(50), "NV18", "9.0").level == "fail"
    assert judge_busbw(run_with(50), None).level == "info"
    assert judge_busbw(run_with(40), "PHB", None, 5).level == "pass"


def test_new_nccl_tests_layout_with_per_iteration_columns():
    text = (FIX / "nccl_tests_nogpu" / "per_iteration_layout.txt").read_text()
    run = parse_nccl_tests(text)
    assert run.nccl_version == "2.28.9" and run.ranks == 2
    [row] = run.rows
    assert row.out_of_place == nccl_logs.Measure(20.0, 52.43, 52.43, 0)
    assert row.in_place == nccl_logs.Measure(21.0, 49.93, 49.93, None)
    assert run.avg_busbw == 51.18 and run.failures == []


def test_nccl_tests_wrong_elements_and_failed_checks():
    text = ("#  Rank  0 Group  0 Pid 1 on h device  0 [0000:01:00] NVIDIA A100-SXM4-80GB\n"
            "     1024   256   float   sum   -1   5.0  0.2  0.2  3   5.0  0.2  0.2  0\n"
            "# Out of bounds values : 3 FAILED\n# Avg bus bandwidth    : 0.2 FAILED\n")
    run = parse_nccl_tests(text)
    assert run.rows[0].wrong() == 3
    assert any("wrong elements" in f for f in run.failures) and any("FAILED" in f for f in run.failures)


# ---- fuzzing ----------------------------------------------------------------------------------------------
line_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
noisy = st.lists(st.one_of(line_text, st.sampled_from(
    (SEED / "nccl_debug.log").read_text().splitlines() + (SEED / "all_reduce_perf_1gpu.txt").read_text().splitlines()
    + (H200 / "host.txt").read_text().splitlines())), max_size=40).map("\n".join)


@given(noisy)
def test_parsers_never_raise_on_noise(text):
    parse_nccl_log(text)
    parse_nccl_tests(text)
    parse_allreduce_kv(text)
    parse_topo_matrix(text)
    parse_smi_query(text)
    kind = detect_kind(text)
    reports = diagnose_texts([("fuzz", text)])
    assert reports[0].kind in {kind, "bundle"} or len(split_sections(text)) > 1
    json.dumps([r.to_dict() for r in reports], default=str)


@given(st.lists(st.tuples(st.integers(0, 1 << 34), st.floats(0, 1e7, allow_nan=False),
                          st.floats(0, 1e6, allow_nan=False), st.floats(0, 1e6, allow_nan=False),
                          st.integers(0, 10 ** 6), st.sampled_from(["float", "half", "bfloat16", "int8"])),
                min_size=1, max_size=20))
def test_nccl_tests_rows_round_trip(rows):
    lines = [f"{size:12d}  {size // 4:12d}  {dtype:>8}  {'sum':>6}  {-1:6d}  {t:7.2f}  {a:6.2f}  {b:6.2f}  {w:6d}"
             f"  {t:7.2f}  {a:6.2f}  {b:6.2f}  {w:6d}" for size, t, a, b, w, dtype in rows]
    run = parse_nccl_tests("\n".join(lines))
    assert len(run.rows) == len(rows)
    for parsed, (size, t, a, b, w, dtype) in zip(run.rows, rows, strict=True):
        assert (parsed.size, parsed.dtype, parsed.root) == (size, dtype, -1)
        assert parsed.out_of_place.time_us == pytest.approx(round(t, 2))
        assert parsed.out_of_place.algbw == pytest.approx(round(a, 2))
        assert parsed.in_place.busbw == pytest.approx(round(b, 2)) and parsed.in_place.wrong == w


@given(st.integers(2, 8), st.data())
def test_topo_matrix_round_trip(n, data):
    codes = st.sampled_from(["PIX", "PXB", "PHB", "NODE", "SYS", "NV4", "NV12", "NV18"])
    cells = {(i, j): data.draw(codes) for i in range(n) for j in range(i + 1, n)}
    underline = data.draw(st.booleans())
    names = [f"GPU{i}" for i in range(n)]
    head = "\t" + "\t".join(names) + "\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID"
    lines = [("\x1b[4m" + head + "\x1b[0m") if underline else head]
    for i in range(n):
        row = [" X " if i == j else cells[(min(i, j), max(i, j))] for j in range(n)]
        lines.append(f"GPU{i}\t" + "\t".join(row) + "\t0-31\t0\t\tN/A")
    matrix = parse_topo_matrix("\n".join(lines) + "\n\nLegend:\n\n  X    = Self\n")
    assert matrix is not None and matrix.kind == "topo"
    assert {(a, b): link for a, b, link in matrix.gpu_pairs()} == {
        (f"GPU{i}", f"GPU{j}"): link for (i, j), link in cells.items()}


@given(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99), st.integers(9000, 13090),
       st.sampled_from(["P2P/CUMEM", "SHM/direct/direct", "NET/Socket/0", "P2P/IPC"]))
def test_nccl_log_facts_round_trip(major, minor, patch, driver, transport):
    text = (f"host-a:12:12 [0] NCCL INFO cudaDriverVersion {driver}\n"
            f"host-a:12:12 [0] NCCL INFO NCCL version {major}.{minor}.{patch}+cuda12.8\n"
            f"host-a:12:12 [0] NCCL INFO Channel 00/0 : 0[0] -> 1[1] via {transport}\n")
    log = parse_nccl_log(text)
    assert log.version == (major, minor, patch)
    assert log.driver_cuda == f"{driver // 1000}.{driver % 1000 // 10}"
    assert log.transports == {transport: 1} and log.hosts == {"host-a"}


def test_loader_error_in_a_bundle_fails():
    text = ("== all_reduce_perf\n/opt/all_reduce_perf: error while loading shared libraries: libnccl.so.2: cannot open "
            "shared object file: No such file or directory\n== nccl debug\ncat: nothing\n")
    [report] = diagnose_texts([("nccl_tests.txt", text)])
    assert report.level == "fail"
    assert "missing-library" in checks(report.findings, "fail")


def test_no_driver_run_of_real_nccl_tests():
    run = parse_nccl_tests(read(FIX / "nccl_tests_nogpu" / "all_reduce_perf_no_driver.txt"))
    assert run.nccl_version == "2.32.3" and run.ngpus == 1 and run.rows == []
    [finding] = nccl_logs.diagnose_nccl_tests(run)
    assert finding.level == "fail" and "CUDA driver version is insufficient" in finding.message
    assert "--gpus all" in finding.fix
