"""One root cause from all the evidence: the live 2x H200 NVLink records (healthy pair and the
NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 fault run), fault cases built from those recorded logs, the
failure signatures (real message text), the link model, input handling and linear-time parsing."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu import compat
from vllm_forge.nccl import doctor, nccl_logs, nccl_test
from vllm_forge.nccl.nccl_logs import Context, diagnose_files, diagnose_nccl_log, diagnose_texts, find_root_cause

FIX = Path(__file__).resolve().parents[1] / "fixtures"
LIVE = FIX / "h200x2_live"
FAULT = FIX / "h200x2_live_fault"
SIGS = FIX / "nccl_signatures"


def healthy_files() -> list[Path]:
    return [LIVE / "nccl_debug_torch.log", LIVE / "nccl_test_torch.txt", LIVE / "nccl_tests.txt", LIVE / "host.txt"]


# ---- replays of the live records ---------------------------------------------------------------------
def test_healthy_pair_replays_as_pass_against_the_nvlink_model():
    reports = diagnose_files(healthy_files())
    cause = find_root_cause(reports)
    assert cause.level == "pass", cause
    assert all(r.level != "fail" for r in reports)
    assert cause.measured == pytest.approx(314.25) and cause.expected == 450.0
    assert 0.69 < cause.share < 0.71
    assert "18 NVLinks x 25 GB/s" in cause.expected_how and "H200" in cause.expected_source
    assert "NV18 carried P2P/CUMEM" in cause.cause
    torch_run = nccl_logs.parse_nccl_tests((LIVE / "nccl_test_torch.txt").read_text())
    assert torch_run.ranks == 2 and len(torch_run.rows) == 10  # the table printed twice counts once


def test_fault_run_replays_as_one_root_cause_naming_the_variables():
    reports = diagnose_files(sorted(FAULT.glob("*.txt")) + sorted(FAULT.glob("*.log")))
    cause = find_root_cause(reports)
    assert cause.level == "fail"
    assert cause.cause == ("the GPUs are NV18-connected but NCCL sent the traffic through TCP sockets because "
                           "NCCL_P2P_DISABLE and NCCL_SHM_DISABLE are set")
    assert cause.fix == "unset NCCL_P2P_DISABLE; unset NCCL_SHM_DISABLE"
    assert cause.measured == pytest.approx(3.82) and cause.share < 0.01
    evidence = "\n".join(cause.evidence)
    assert "nccl_debug.vm.1705.log:19: " in evidence and "NCCL_P2P_DISABLE set by environment to 1" in evidence
    assert "via NET/Socket/0" in evidence and re.search(r"topo\.txt:2: GPU0\s+X\s+NV18", evidence)
    # the per-file verdicts agree: transport FAILs against NV18, and no multi-node advice on one host
    for report in reports:
        for finding in report.findings:
            if finding.check == "transport":
                assert finding.level == "fail" and "NV18" in finding.message
            assert "RDMA" not in finding.fix and "infiniband" not in finding.fix.lower()
    recorded = (LIVE / "fault.txt").read_text()
    assert "│ PASS │ transport" in recorded and "install the RDMA stack" in recorded  # what was wrong before


def test_one_node_is_told_by_host_names_not_by_nccls_node_count():
    fault = [nccl_logs.parse_nccl_log((FAULT / name).read_text())
             for name in ("nccl_debug.vm.1705.log", "nccl_debug.vm.1706.log")]
    assert all(log.nnodes == 2 and log.hosts == {"vm"} for log in fault)  # NCCL: two "nodes" on one host
    both = Context(hosts={"vm"}, ranks_seen={0, 1}, nranks=2)
    assert nccl_logs.is_single_node(fault[0], both)
    # the logs of one node of a real two-node job: NCCL's count decides
    assert not nccl_logs.is_single_node(fault[0], Context(hosts={"vm"}, ranks_seen={0}, nranks=2))
    no_ib = [f for f in diagnose_nccl_log(fault[0], both) if f.check == "no-ib"]
    assert [f.level for f in no_ib] == ["info"]


def test_fault_report_json_has_the_root_cause_first(capsys):
    files = [str(p) for p in sorted(FAULT.iterdir())]
    assert nccl_logs.main(["diagnose", "--json", *files]) == 1
    data = json.loads(capsys.readouterr().out)
    assert list(data)[:2] == ["level", "root_cause"] and data["root_cause"]["level"] == "fail"
    assert nccl_logs.main(["diagnose", *files]) == 1
    out = capsys.readouterr().out
    assert out.startswith("ROOT CAUSE [FAIL]: the GPUs are NV18-connected")
    assert "of expected 450 GB/s" in out and "source: H100/H200 SXM datasheet" in out


# ---- fault cases built from the recorded healthy logs (no 2-GPU machine was lent) -----------------------
HEALTHY_LOG = (LIVE / "nccl_debug_torch.log").read_text()
HEALTHY_TABLE = (FAULT / "all_reduce.txt").read_text()  # the torch runner's table (busbw rescaled below)
TOPO = (FAULT / "topo.txt").read_text()


def with_env(log: str, **env: str) -> str:
    lines = [f"vm:1528:1528 [0] NCCL INFO {name} set by environment to {value}." for name, value in env.items()]
    return "\n".join(lines) + "\n" + log


def table_at(busbw: float) -> str:
    """The recorded table with every in-place busbw/algbw scaled so the 512 MiB row reads ``busbw``."""
    scale = busbw / 3.82

    def fix(m: re.Match) -> str:
        return f"{float(m.group(1)) * scale:8.2f}{float(m.group(2)) * scale:8.2f}"

    return re.sub(r"(\d+\.\d\d)\s+(\d+\.\d\d)(?=\s+0\s*$)", fix, HEALTHY_TABLE, flags=re.M)


def diagnose(log: str, table: str, topo: str = TOPO, env: dict | None = None):
    ctx = Context(env=env or {})
    reports = diagnose_texts([("nccl_debug.log", log), ("all_reduce.txt", table), ("topo.txt", topo)], ctx)
    return reports, find_root_cause(reports, ctx)


def test_table_rescaling_helper():
    assert nccl_logs.parse_nccl_tests(table_at(300)).peak_busbw() == pytest.approx(300, rel=0.01)


def test_p2p_disabled_only_goes_through_shm_and_is_named():
    log = with_env(HEALTHY_LOG, NCCL_P2P_DISABLE="1").replace("via P2P/CUMEM", "via SHM/direct/direct")
    _, cause = diagnose(log, table_at(40))
    assert cause.level == "fail"
    assert "through host memory (SHM) because NCCL_P2P_DISABLE is set" in cause.cause
    assert any("NCCL_P2P_DISABLE set by environment" in e for e in cause.evidence)


def test_forced_protocol_is_the_named_cause():
    log = with_env(HEALTHY_LOG, NCCL_PROTO="LL", NCCL_ALGO="Tree", NCCL_CUMEM_ENABLE="0")
    _, cause = diagnose(log, table_at(150))
    assert cause.level == "warn"  # 33%: short, not broken
    assert cause.cause.startswith("NCCL_PROTO=LL leaves out the Simple protocol")
    assert cause.fix == "unset NCCL_PROTO"
    weighed = " ".join(cause.weighed)
    assert "NCCL_ALGO=Tree" in weighed and "NCCL_CUMEM_ENABLE=0" in weighed  # weighed, not named


def test_tiny_buffsize_is_the_named_cause():
    _, cause = diagnose(with_env(HEALTHY_LOG, NCCL_BUFFSIZE="65536"), table_at(90))
    assert cause.level == "fail" and "NCCL_BUFFSIZE=65536 is below the default" in cause.cause


def test_environment_of_the_run_counts_as_evidence_too():
    _, cause = diagnose(HEALTHY_LOG, table_at(90), env={"NCCL_MAX_NCHANNELS": "2"})
    assert "NCCL_MAX_NCHANNELS=2 is below the default" in cause.cause


def test_nvls_off_is_weighed_but_never_blamed():
    _, cause = diagnose(HEALTHY_LOG, table_at(90))  # the log sets NCCL_NVLS_ENABLE=0
    assert "no NCCL setting explains it" in cause.cause
    assert any(w.startswith("NCCL_NVLS_ENABLE=0") for w in cause.weighed)


def test_a_rank_that_never_joins_is_named():
    rank0 = "\n".join(line for line in HEALTHY_LOG.splitlines() if line.startswith("vm:1528:")
                      and "Init COMPLETE" not in line and "via P2P" not in line)
    rank0 = rank0.split("RAS client")[0]
    table = HEALTHY_TABLE.split("#  Rank  1")[0] + "Test timeout: the all-reduce did not finish in 1800 s (hung?)\n"
    reports, cause = diagnose(rank0, table)
    assert cause.level == "fail"
    assert cause.cause.startswith("rank(s) 1 of 2 never joined the communicator")
    assert any("Init START" in e for e in cause.evidence)


def test_slow_p2p_behind_a_pcie_switch_points_at_acs_iommu():
    topo = TOPO.replace("NV18", "PIX")
    ctx = Context(links=["PIX"], pcie_gen=5)
    reports = diagnose_texts([("nccl_debug.log", HEALTHY_LOG), ("all_reduce.txt", table_at(3)),
                              ("topo.txt", topo)], ctx)
    cause = find_root_cause(reports, ctx)
    assert "ACS or the IOMMU" in cause.cause and "p2pBandwidthLatencyTest" in cause.fix
    assert cause.expected == 48.0 and "width*speed/80" in cause.expected_source


def test_one_rank_says_what_it_proves():
    seed = FIX / "seed_5090"
    cause = find_root_cause(diagnose_files([seed / "all_reduce_perf_1gpu.txt"]))
    assert cause.level == "pass" and cause.cause.startswith("one rank:")


def test_shm_on_phb_is_judged_against_the_pcie_path_not_nvlink():
    seed = FIX / "seed_5090"
    ctx = Context(pcie_gen=5, pcie_width=16)
    reports = diagnose_files([seed / "topo_m.txt", seed / "nccl_debug.log"], ctx)
    transport = [f for r in reports for f in r.findings if f.check == "transport"]
    assert transport and all(f.level == "info" for f in transport)  # SHM is what PHB gives consumer GPUs
    peak, how, source = nccl_logs.link_peak_gbps("PHB", None, 5, 16)
    assert peak == 48.0 and how.startswith("SHM through host memory") and "paths.cc" in source


# ---- signatures: real message text -> cause and fix ------------------------------------------------------
@pytest.mark.parametrize("name,check,fix_words", [
    ("nvls_fabric_manager.log", "nvls-invalid-argument", ["NCCL_NVLS_ENABLE=0", "fabricmanager"]),
    ("shm_segment.log", "shm-segment", ["--ipc=host", "--shm-size"]),
    ("vllm_shm_space.log", "vllm-shm-space", ["--ipc=host", "--shm-size"]),
    ("vllm_bus_error.log", "bus-error", ["--shm-size"]),
    ("vllm_custom_allreduce_peer.log", "vllm-custom-allreduce-peer", ["--disable-custom-all-reduce"]),
    ("vllm_custom_allreduce_invalid.log", "vllm-custom-allreduce-invalid", ["--disable-custom-all-reduce"]),
    ("p2p_disabled_nvlink.log", "p2p-disabled-nvlink", ["nvidia-smi nvlink -s", "reset"]),
    ("ib_completion_error12.log", "ib-completion-error-12", ["ibstat", "NCCL_IB_GID_INDEX"]),
    ("socket_no_interface.log", "socket-system-error", ["NCCL_SOCKET_IFNAME"]),
    ("iommu_page_fault.log", "iommu-fault", ["iommu=pt", "p2pBandwidthLatencyTest", "topo -p2p r"]),
])
def test_signature(name, check, fix_words):
    [report] = diagnose_files([SIGS / name])
    assert report.kind == "nccl-log"
    hits = [f for f in report.findings if f.check == check]
    assert hits and hits[0].level == "fail", report.findings
    assert all(word in hits[0].fix for word in fix_words), hits[0].fix
    cause = find_root_cause([report])
    assert cause.level == "fail" and cause.cause == hits[0].message
    assert cause.evidence and re.match(rf"{re.escape(str(SIGS / name))}:\d+: ", cause.evidence[0]), cause.evidence


def test_shm_failure_is_not_blamed_on_sockets():
    [report] = diagnose_files([SIGS / "shm_segment.log"])
    assert "socket-system-error" not in {f.check for f in report.findings}


def test_pcie_p2p_notice_is_harmless():
    [report] = diagnose_files([SIGS / "p2p_disabled_pcie_notice.log"])
    assert report.level != "fail"
    assert [f.level for f in report.findings if f.check == "p2p-disabled-notice"] == ["info"]


def test_nvls_failure_on_hopper_is_not_the_blackwell_bug():
    [report] = diagnose_files([SIGS / "nvls_fabric_manager.log"], Context(gpu_caps=["9.0"]))
    checks = {f.check for f in report.findings if f.level == "fail"}
    assert "nvls-invalid-argument" in checks and "nccl-too-old-for-blackwell" not in checks


# ---- input handling ------------------------------------------------------------------------------------
def test_unrecognised_file_fails(capsys):
    assert nccl_logs.main(["diagnose", str(SIGS / "not_a_log.txt")]) == 1
    assert "not recognised" in capsys.readouterr().out


def test_unrecognised_file_found_in_a_directory_is_skipped():
    path = str(SIGS / "not_a_log.txt")
    [report] = diagnose_files([path], optional={path})
    assert report.level != "fail" and "skipped" in report.findings[0].message


def test_files_that_are_no_evidence_at_all_fail_instead_of_passing(tmp_path):
    """A directory holding only passwd and hostname is no NCCL run: "no failure found" would be a false PASS."""
    for name, text in (("passwd", "root:x:0:0:root:/root:/bin/bash\n"), ("hostname", "box\n"), ("rank0.log", "")):
        (tmp_path / name).write_text(text)
    paths, in_dirs = nccl_logs.input_paths(str(tmp_path))
    reports = diagnose_files(paths, optional=in_dirs)
    assert [r.level for r in reports] == ["pass", "pass", "pass"]  # each only an info line: no failure
    with pytest.raises(ForgeError, match=r"^none of the 3 file\(s\) read is an NCCL log, an nccl-tests output or an "
                                         r"nvidia-smi output: hostname \(not recognised\), passwd \(not recognised\), "
                                         r"rank0\.log \(empty\); nothing was diagnosed; an empty NCCL_DEBUG_FILE means "
                                         r"no communicator started\. Fix: pass NCCL_DEBUG=INFO logs") as err:
        nccl_logs.check_evidence(reports)
    assert err.value.exit_code == 1
    nccl_logs.check_evidence(diagnose_files([SIGS / "not_a_log.txt"]))  # named: its own FAIL finding says it
    nccl_logs.check_evidence(reports + diagnose_files([SIGS / "shm_segment.log"]))


# ---- link model ----------------------------------------------------------------------------------------
def test_link_model_rows_name_their_source_and_follow_nccl_for_pcie():
    assert all(row.source for row in compat.LINK_MODEL)
    assert {g: compat.PCIE_X16_GBPS[g] for g in (3, 4, 5)} == {3: 12.0, 4: 24.0, 5: 48.0}
    assert {k: compat.NVLINK_GBPS_PER_LINK[k] for k in ("8.0", "9.0", "10.0")} == {"8.0": 25.0, "9.0": 25.0,
                                                                                  "10.0": 50.0}
    assert compat.link_model("shm", "PHB") is not None


# ---- doctor and nccl-test ------------------------------------------------------------------------------
def test_doctor_fails_p2p_disabled_on_an_nvlink_host():
    host = doctor.host_from_text((LIVE / "host.txt").read_text())
    host.env = {"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1", "NCCL_PROTO": "LL"}
    report = doctor.diagnose(host, {"torch": {"installed": True, "version": "2.11.0", "cuda": "13.0",
                                              "arch_list": ["sm_90"], "nccl": "2.28.9"}})
    env = [f for f in report.findings if f.check == "env"]
    assert env[0].level == "fail" and "NV18-connected" in env[0].message and "TCP sockets" in env[0].message
    assert any(f.level == "warn" and "NCCL_PROTO=LL" in f.message for f in env)
    cause = doctor.root_cause(report)
    assert cause.level == "fail" and "NCCL_P2P_DISABLE=1" in cause.cause
    assert doctor.render_text(report).startswith("ROOT CAUSE [FAIL]")


def test_torch_missing_in_an_image_says_how_to_get_a_runner():
    text = "host: Test NCCL failure import 'PyTorch is not installed'\n"
    [report] = diagnose_texts([("all_reduce.txt", "# nThread 1 nGpus 2 minBytes 8 maxBytes 8\n" + text)])
    [failed] = [f for f in report.findings if f.level == "fail"]
    assert "install torch" in failed.fix and "--binary" in failed.fix


def test_nccl_test_without_torch_or_binary_says_how_to_get_either(tmp_path):
    plan = nccl_test.plan_run(gpus=2, out_dir=tmp_path, env={"PATH": "/nonexistent"}, has_torch=False)
    assert plan.blocker and any("install torch" in note and "--binary" in note for note in plan.notes)
    with pytest.raises(ForgeError) as err:
        nccl_test.run_plan(plan, runner=lambda *a, **k: pytest.fail("must not run"))
    assert "install torch" in str(err.value) and "--binary" in str(err.value)
    assert not nccl_test.plan_run(gpus=2, out_dir=tmp_path, env={"PATH": "/nonexistent"}, has_torch=True).blocker


# ---- hostile input (issue 21): the parsers are linear-time --------------------------------------------
@pytest.mark.parametrize("line", [
    "# " + "size " * 20000,  # the old `\bsize\b.*\bcount\b.*\btype\b` header test: over 60 s at 16.5 KB
    "a" * 100_000,
    "a.b-c" * 20_000,
    "NCCL_" * 20_000,
    "ncclCommInitRank comm x rank 1 nranks 2 cudaDev 0 busId 1 " * 1_700,
    "#  Rank  0 Group  0 Pid 1 on h device 0 [" + " " * 100_000,
    "== " + " " * 100_000 + "x",
    "\n".join(["a.b-c" * 400] * 50),  # many long lines
])
def test_pathological_100kb_input_is_parsed_in_under_two_seconds(line):
    start = time.monotonic()
    for prefix in ("", "vm:1:1 [0] NCCL INFO ", "# nThread 1 nGpus 2 minBytes 8 maxBytes 8\n"):
        text = prefix + line
        diagnose_texts([("hostile.log", text)])
        nccl_logs.parse_nccl_log(text)
        nccl_logs.parse_nccl_tests(text)
    assert time.monotonic() - start < 2.0
