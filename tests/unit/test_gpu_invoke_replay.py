"""Replays tests/fixtures/gpu_h200_invoke/: doctor, nccl-test and nccl-diagnose run through `invoke` on a
real H200 (scripts/gpu/two_gpu.sh); re-reading the recorded outputs must give the same verdicts."""

import json
from pathlib import Path

import pytest

from vllm_forge.nccl import nccl_logs

RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "gpu_h200_invoke"

pytestmark = pytest.mark.gpu


def test_doctor_passed_on_the_h200():
    report = json.loads((RECORD / "doctor.json").read_text())
    assert report["level"] == "pass"
    checks = {f["check"]: f["level"] for f in report["findings"]}
    assert checks["driver"] == checks["torch-archs"] == checks["nccl"] == "pass"
    assert "invoke doctor: exit 0" in (RECORD / "doctor.txt").read_text()


def test_each_nccl_test_runner_exited_zero():
    assert "--runner torch: exit 0" in (RECORD / "nccl_test_torch.txt").read_text()
    assert "--runner nccl-tests: exit 0" in (RECORD / "nccl_tests.txt").read_text()
    assert "invoke nccl-diagnose: exit 0" in (RECORD / "diagnose.txt").read_text()


def test_recorded_outputs_diagnose_as_healthy_again():
    reports = nccl_logs.diagnose_files([RECORD / "nccl_debug_torch.log", RECORD / "host.txt"], nccl_logs.Context())
    assert [r.level for r in reports] and all(r.level != "fail" for r in reports)


def test_nccl_tests_table_parses():
    text = (RECORD / "nccl_tests.txt").read_text()
    table = text[text.index("== all_reduce.txt"):text.index("== nccl debug")]
    run = nccl_logs.parse_nccl_tests(table)
    assert len(run.rows) == 27 and all(row.wrong() == 0 for row in run.rows)
    assert run.rows[-1].size == 512 << 20 and run.rows[-1].out_of_place.algbw > 1000  # GB/s, one rank
