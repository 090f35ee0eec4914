"""`invoke nccl-diagnose` / `nccl-test` as a user types them: several files as separate arguments (what a
shell glob gives), a quoted list, a directory, words after `--`; unrecognised files; 80-column tables."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FAULT = REPO / "tests" / "fixtures" / "h200x2_live_fault"
SIGS = REPO / "tests" / "fixtures" / "nccl_signatures"
HEADLINE = "the GPUs are NV18-connected but NCCL sent the traffic through TCP sockets"


def invoke(*args, columns=300, env=None):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": str(columns), **(env or {})}, timeout=120)


def fault_files() -> list[str]:
    return [str(p.relative_to(REPO)) for p in sorted(FAULT.iterdir())]


def test_files_as_separate_arguments():
    out = invoke("nccl-diagnose", *fault_files())
    assert out.returncode == 1, out.stderr
    assert "No idea what" not in out.stderr
    assert out.stdout.index("ROOT CAUSE FAIL") < out.stdout.index("[nccl-tests]")  # headline before the tables
    assert HEADLINE in " ".join(out.stdout.split())
    for name in ("all_reduce.txt", "nccl_debug.vm.1706.log", "topo_p2p.txt"):
        assert name in out.stdout


def test_flags_between_and_after_the_files():
    files = fault_files()
    out = invoke("nccl-diagnose", files[0], "--gpu-cap", "9.0", *files[1:], "--json")
    assert out.returncode == 1, out.stderr
    assert '"root_cause"' in out.stdout and out.stdout.count('"path"') == len(files)


@pytest.mark.parametrize("form", ["quoted", "directory", "remainder"])
def test_quoted_list_directory_and_remainder(form):
    files = fault_files()
    args = {"quoted": [" ".join(files)], "directory": [str(FAULT.relative_to(REPO))],
            "remainder": ["--", *files]}[form]
    out = invoke("nccl-diagnose", *args)
    assert out.returncode == 1, out.stderr
    assert HEADLINE in " ".join(out.stdout.split())


def test_unrecognised_file_is_named_and_fails():
    out = invoke("nccl-diagnose", str(SIGS / "not_a_log.txt"))
    assert out.returncode == 1 and "not recognised" in out.stdout
    assert "Traceback" not in out.stderr


def test_fix_column_wraps_at_spaces_only_at_80_columns():
    """Long fixes wrap inside their column at 80 columns, but never through a word: a setting, path or command
    in them stays whole, to copy (and nothing is cut with "…")."""
    out = invoke("nccl-diagnose", *fault_files(), columns=80)
    assert "…" not in out.stdout
    assert "NCCL_P2P_DISABLE/NCCL_SHM_DISABLE" in out.stdout
    table = [line for line in out.stdout.splitlines() if line.startswith(("│", "┃", "┏", "└"))]
    # prose still wraps in its column (one of these fixes alone is over 200 characters): only as wide as the
    # longest word needs (a file:line evidence path here), which is a little over 80
    assert table and max(len(line) for line in table) < 100


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None or shutil.which("all_reduce_perf") is not None,
                    reason="this host can run an all-reduce")
def test_nccl_test_without_torch_or_binary_says_how_to_get_either(tmp_path):
    out = invoke("nccl-test", "--gpus", "2", "--out", str(tmp_path / "out"))
    assert out.returncode != 0
    assert "install torch" in out.stderr and "--binary" in out.stderr
    assert "NCCL_DEBUG=INFO" not in out.stderr and "Traceback" not in out.stderr
