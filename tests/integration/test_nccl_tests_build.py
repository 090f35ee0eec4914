"""The nccl-tests build command with the real `make` (and, given a checkout, the real build)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vllm_forge.nccl import nccl_test

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")
def test_build_command_runs_make(tmp_path):
    """The real `make` with the planned variables, on a Makefile that records what it was given."""
    src = tmp_path / "nccl-tests"
    (src / "src").mkdir(parents=True)
    (src / "src" / "Makefile").write_text(
        "all:\n\tmkdir -p $(BUILDDIR) && echo \"MPI=$(MPI) NCCL_HOME=$(NCCL_HOME) GENCODE=$(NVCC_GENCODE)\" "
        "> $(BUILDDIR)/all_reduce_perf\n")
    home = tmp_path / "nccl"
    (home / "lib").mkdir(parents=True)
    (home / "lib" / "libnccl.so.2").write_text("")
    commands = nccl_test.plan_nccl_tests_build(src, home, capabilities=["12.0"], jobs=1)
    built = nccl_test.build_nccl_tests(commands)
    assert built == src / "build" / "all_reduce_perf"
    assert built.read_text().strip() == (f"MPI=0 NCCL_HOME={home} GENCODE=-gencode=arch=compute_120,code=sm_120 "
                                         "-gencode=arch=compute_120,code=compute_120")
    assert os.path.islink(home / "lib" / "libnccl.so")


@pytest.mark.nvcc
def test_real_nccl_tests_build(tmp_path):
    """NVIDIA/nccl-tests is on GitHub, which this build machine cannot reach: point NCCL_TESTS_SRC at a
    checkout (and have pip's nvidia-nccl-cu12/cu13 importable, or NCCL_HOME set) to run it."""
    src = os.environ.get("NCCL_TESTS_SRC")
    if not src:
        pytest.skip("NCCL_TESTS_SRC is not set (no nccl-tests checkout: GitHub is unreachable here)")
    home = Path(os.environ["NCCL_HOME"]) if os.environ.get("NCCL_HOME") else nccl_test.find_nccl_home()
    if home is None:
        pytest.skip("no NCCL with headers (pip nvidia-nccl-cu13 or NCCL_HOME)")
    commands = nccl_test.plan_nccl_tests_build(Path(src), home, capabilities=["9.0"], build_dir=tmp_path / "b")
    commands[-1].argv.append(str(tmp_path / "b" / "all_reduce_perf"))  # one binary is enough to prove it
    built = nccl_test.build_nccl_tests(commands)
    assert built.is_file() and os.access(built, os.X_OK)
