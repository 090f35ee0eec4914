"""NCCL diagnosis rules pinned where mutation testing found them unchecked (issue 22).

Kept apart from test_nccl_logs.py so they hold across rewrites of vllm_forge/nccl/nccl_logs.py: they feed
plain log text to ``parse_nccl_log`` / ``diagnose_nccl_log`` and read each finding's check and level.
"""

from __future__ import annotations

import pytest

from vllm_forge.nccl.nccl_logs import Context, diagnose_nccl_log, parse_nccl_log


def findings_for(version: str, caps: list[str], extra: str = ""):
    text = f"host:100:100 [0] NCCL INFO NCCL version {version}+cuda12.8\n{extra}"
    return {(f.check, f.level) for f in diagnose_nccl_log(parse_nccl_log(text), Context(gpu_caps=caps))}


@pytest.mark.parametrize("version, too_old", [
    ("2.25.1", True), ("2.26.1", True), ("2.26.2", False), ("2.26.3", False), ("2.27.5", False),
])
def test_the_fixed_release_is_not_too_old_on_sm120(version, too_old):
    """2.26.2 is the release that fixed RTX 50xx; it and anything newer pass, anything older fails."""
    assert (("nccl-too-old", "fail") in findings_for(version, ["12.0"])) is too_old


@pytest.mark.parametrize("version, too_old", [("2.15.0", True), ("2.15.1", False)])
def test_the_first_hopper_release_is_enough_on_sm90(version, too_old):
    assert (("nccl-too-old", "fail") in findings_for(version, ["9.0"])) is too_old


def test_the_too_old_message_names_the_minimum():
    log = parse_nccl_log("h:1:1 [0] NCCL INFO NCCL version 2.26.1+cuda12.8\n")
    (finding,) = [f for f in diagnose_nccl_log(log, Context(gpu_caps=["12.0"])) if f.check == "nccl-too-old"]
    assert "2.26.1 is older than 2.26.2" in finding.message and "2.26.2" in finding.fix


@pytest.mark.parametrize("version, warned", [("2.26.1", True), ("2.26.2", False)])
def test_shared_memory_warning_stops_at_the_fixed_release(version, warned):
    smem = "h:1:1 [0] NCCL INFO ncclMaxSharedMem 82240 exceeds device/fn maxSharedMem 79856\n"
    assert (("nccl-shared-memory", "warn") in findings_for(version, [], smem)) is warned


def test_an_error_no_signature_explains_is_a_failure():
    """An error line matching no signature is a failure, never "no verdict"."""
    log = parse_nccl_log("Test NCCL failure common.cu:892 'internal error - please report this issue'\n")
    findings = diagnose_nccl_log(log)
    assert [(f.level, f.check) for f in findings] == [("fail", "unrecognised-error")]
    assert "internal error" in findings[0].message and findings[0].evidence == log.errors[:5]


def test_a_log_with_nothing_in_it_has_no_verdict():
    findings = diagnose_nccl_log(parse_nccl_log("hello\n"))
    assert [(f.level, f.check) for f in findings] == [("info", "no-verdict")]
