"""The audit's arch rules, pinned where mutation testing found them unchecked (issue 22).

Kept apart from test_audit.py so they hold across rewrites of vllm_forge/audit/audit.py: they call only
``Target``, ``sass_runs_on``, ``ptx_runs_on`` and ``decide``.
"""

from __future__ import annotations

import pytest

from vllm_forge.audit.audit import Target, decide, parse_code_arch
from vllm_forge.gpu import runs_on as rule


def gpu(capability: str) -> Target:
    major, minor = (int(p) for p in capability.split("."))
    return Target(f"sm_{major}{minor}", major, minor)


def sass_runs_on(name: str, target: Target) -> bool:
    """The one rule (vllm_forge/gpu/runs_on.py) on a fat binary's code name, as the audit asks it."""
    return rule.sass_runs_on(parse_code_arch(name), target.cc)


def ptx_runs_on(name: str, target: Target) -> bool:
    return rule.ptx_runs_on(parse_code_arch(name), target.cc)


@pytest.mark.parametrize("ptx, capability, runs", [
    ("compute_100f", "10.0", True),   # family PTX runs on the first member of its family
    ("compute_100f", "10.3", True),
    ("compute_100f", "9.0", False),
    ("compute_100f", "12.0", False),  # a family is one major
    ("compute_103f", "10.0", False),  # nor on an older member
    ("compute_90a", "9.0", True),     # arch-specific PTX: that arch only
    ("compute_90a", "10.0", False),
    ("compute_100a", "10.3", False),
    ("compute_80", "8.0", True),      # plain PTX: JIT-compiled on anything as new or newer
    ("compute_80", "8.6", True),
    ("compute_80", "12.0", True),
    ("compute_86", "8.0", False),
    ("compute_90", "8.9", False),
])
def test_ptx_runs_on(ptx, capability, runs):
    assert ptx_runs_on(ptx, gpu(capability)) is runs


@pytest.mark.parametrize("sass, capability, runs", [
    ("sm_80", "8.0", True),
    ("sm_80", "8.6", True),      # SASS of X.y runs on X.z, z >= y
    ("sm_86", "8.0", False),
    ("sm_80", "9.0", False),     # never across a major
    ("sm_90a", "9.0", True),
    ("sm_100a", "10.3", False),  # arch-specific: that arch only
    ("sm_100f", "10.0", True),
    ("sm_100f", "10.3", True),
    ("sm_100f", "11.0", False),
    ("sm_120", "12.1", True),
    ("sm_121", "12.0", False),
])
def test_sass_runs_on(sass, capability, runs):
    assert sass_runs_on(sass, gpu(capability)) is runs


@pytest.mark.parametrize("sass", [["sm_80", "sm_86"], ["sm_86", "sm_80"]])
def test_decide_names_the_newest_sass_that_runs(sass):
    """On an 8.6 GPU both sm_80 and sm_86 run; the loader picks sm_86, and so does the verdict."""
    assert decide(sass + ["sm_89", "sm_90"], [], gpu("8.6")) == ("sass", "sm_86")


@pytest.mark.parametrize("ptx", [["compute_80", "compute_120"], ["compute_120", "compute_80"]])
def test_decide_names_the_newest_ptx_that_runs(ptx):
    assert decide(["sm_80", "sm_90"], ptx, gpu("12.0")) == ("ptx", "compute_120")


def test_decide_prefers_sass_to_ptx():
    assert decide(["sm_120"], ["compute_120"], gpu("12.0")) == ("sass", "sm_120")
    assert decide(["sm_80"], ["compute_90"], gpu("9.0")) == ("ptx", "compute_90")


def test_decide_with_nothing_that_runs():
    assert decide(["sm_90a", "sm_100"], ["compute_120"], gpu("9.0")) == ("sass", "sm_90a")
    assert decide(["sm_90a", "sm_100"], ["compute_120"], gpu("10.3")) == ("sass", "sm_100")
    assert decide(["sm_90a"], ["compute_100"], gpu("8.9")) == ("none", "")
    assert decide([], [], gpu("12.0")) == ("none", "")
