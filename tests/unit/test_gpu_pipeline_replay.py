"""Replays tests/fixtures/gpu/pipeline_gpu.txt: `invoke build-wheel` + `invoke audit --arch auto` + a real
kernel launch of the built extension, recorded on an H100 (sm_90) by scripts/gpu/pipeline_on_gpu.sh."""

import json
import re
from pathlib import Path

import pytest

RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "gpu" / "pipeline_gpu.txt"

pytestmark = pytest.mark.gpu


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^== (.+)$", text, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


@pytest.fixture(scope="module")
def record():
    if not RECORD.exists():
        pytest.skip("tests/fixtures/gpu/pipeline_gpu.txt is not recorded yet (run scripts/gpu/pipeline_on_gpu.sh)")
    return sections(RECORD.read_text())


def audit_json(body: str) -> dict:
    return json.loads(body[body.index("{"): body.rindex("}") + 1])


def test_recorded_on_an_sm90_gpu():
    assert re.search(r"^host: NVIDIA H(100|200).*, 9\.0, ", RECORD.read_text(), re.M)


@pytest.mark.parametrize("arch, verdict, ran", [("12.0", "none", False), ("9.0", "sass", True)])
def test_audit_prediction_matches_the_real_launch(record, arch, verdict, ran):
    report = audit_json(record[f"invoke audit ({arch} wheel) --arch auto --json"])
    assert report["target"] == ["sm_90"]  # --arch auto read the GPU
    assert {f["verdict"]["sm_90"] for f in report["files"]} == {verdict}
    assert report["ok"] is ran
    launch = record[f"run the {arch} wheel"]
    assert f"built_archs: {arch}" in launch
    if ran:
        assert "add_one -> 256" in launch and "reduce_sum -> 523776" in launch and "run_exit: 0" in launch
    else:
        assert "no kernel image is available for execution on the device" in launch and "run_exit: 1" in launch


def test_the_built_wheels_carry_exactly_the_requested_sass(record):
    for arch, sm in (("12.0", "sm_120"), ("9.0", "sm_90")):
        report = audit_json(record[f"invoke audit ({arch} wheel) --arch auto --json"])
        assert {s for f in report["files"] for s in f["sass"]} == {sm}
        assert len(report["files"]) == 2  # vllm/_C and the flash-attn stand-in
