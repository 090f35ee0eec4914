"""Replay what scripts/gpu/doctor_on_gpu.sh recorded on a real GPU host (tests/fixtures/gpu/).

Each test skips only while its file has not been recorded yet; once the files are there, they must
parse and judge a healthy host as healthy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vllm_forge.nccl import doctor, nccl_logs

pytestmark = pytest.mark.gpu
GPU = Path(__file__).resolve().parents[1] / "fixtures" / "gpu"


def recorded(name: str) -> str:
    path = GPU / name
    if not path.is_file():
        pytest.skip(f"{path} is not recorded yet (run scripts/gpu/doctor_on_gpu.sh on a GPU host)")
    return path.read_text(errors="replace")


def test_host_bundle():
    host = doctor.host_from_text(recorded("host.txt"))
    assert host.gpus and all(g.capability for g in host.gpus)
    assert host.driver and host.driver_cuda
    if len(host.gpus) > 1:
        assert host.topo is not None and len(host.topo.gpus()) == len(host.gpus)
        assert host.p2p is not None and host.p2p.kind == "p2p"


def test_doctor_report():
    data = json.loads(recorded("doctor.json"))
    assert data["host"]["gpus"], "doctor saw no GPU on the GPU host"
    assert data["inside"]["torch"]["installed"] and data["inside"]["torch"]["nccl"]
    checks = {f["check"]: f["level"] for f in data["findings"]}
    assert checks["torch-archs"] == "pass" and checks["nccl"] == "pass" and checks["driver"] in ("pass", "warn")
    assert data["level"] != "fail", [f for f in data["findings"] if f["level"] == "fail"]


def test_one_gpu_allreduce_and_its_nccl_log():
    run = nccl_logs.parse_nccl_tests(recorded("allreduce_1gpu.txt"))
    assert run.runner == "torch.distributed" and run.ranks == 1
    assert run.failures == [] and run.rows and run.rows[-1].size == 128 << 20
    assert all(r.in_place.busbw == 0 for r in run.rows)  # one rank: nothing crosses a link
    log = nccl_logs.parse_nccl_log(recorded("nccl_debug_1gpu.log"))
    assert log.version and log.version >= (2, 28) and log.init_complete >= 1
    assert nccl_logs.worst_level(nccl_logs.diagnose_nccl_log(log)) != "fail"


def test_all_gpus_allreduce_judged_against_the_link():
    text = recorded("allreduce_Ngpu.txt")
    reports = nccl_logs.diagnose_texts([("allreduce_Ngpu.txt", text), ("host.txt", recorded("host.txt")),
                                        ("nccl_debug_Ngpu.log", recorded("nccl_debug_Ngpu.log"))])
    run = nccl_logs.parse_nccl_tests(text)
    assert run.ranks >= 2 and run.peak_busbw() > 0
    busbw = next(f for f in reports[0].findings if f.check == "busbw")
    assert busbw.level in ("pass", "warn"), busbw.message
    assert reports[2].level != "fail"


def test_nccl_tests_binary_run():
    sections = dict(nccl_logs.split_sections(recorded("nccl_tests.txt")))
    run = nccl_logs.parse_nccl_tests(sections["all_reduce_perf"])
    assert run.failures == [] and run.rows and run.nccl_version.startswith("2.")


def test_recorded_diagnosis_has_no_failure():
    data = json.loads(recorded("diagnose.json"))
    assert data["level"] != "fail", [f for r in data["files"] for f in r["findings"] if f["level"] == "fail"]
