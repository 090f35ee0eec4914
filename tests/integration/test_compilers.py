"""compat.CUDA_ARCHS against the real CUDA 13.0 ptxas this repo's build requirements install.

`nox -s compilers` runs the same check for every CUDA version with that version's ptxas from PyPI.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import require_tool
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.matrix import compiler_check

pytestmark = [pytest.mark.integration, pytest.mark.nvcc]


@pytest.fixture(scope="module")
def ptxas13():
    path = compiler_check.find_ptxas(CudaRelease.parse("13.0"))
    require_tool("CUDA 13.0 ptxas (cuda-toolkit[nvcc]==13.0.2 from requirements-build.txt)", path is not None)
    return path


def test_cuda_13_row_matches_its_ptxas(ptxas13):
    result = compiler_check.check_compiler(CudaRelease.parse("13.0"), ptxas13)
    assert str(result.release).startswith("13.0.")
    assert result.ok, result.summary()
    assert "sm_120" in result.compiled and "sm_121f" in result.compiled and "sm_110a" in result.compiled
    assert {"sm_70", "sm_101", "sm_35"} <= set(result.refused)  # dropped or renamed in 13.0
    assert result.help_archs == result.table_archs


def test_a_wrong_row_is_caught(ptxas13, monkeypatch):
    """The check can fail: a row claiming sm_70 and missing sm_120 is refuted on both counts."""
    row = (compat.CUDA_ARCHS["13.0"] | {"sm_70"}) - {"sm_120"}
    monkeypatch.setitem(compat.CUDA_ARCHS, "13.0", row)
    result = compiler_check.check_compiler(CudaRelease.parse("13.0"), ptxas13)
    assert not result.ok
    assert "sm_70" in result.failed and "not defined" in result.failed["sm_70"]
    assert result.accepted_unlisted == ["sm_120"]
    assert result.missing_from_table == ["sm_120"] and result.missing_from_ptxas == ["sm_70"]
    assert "MISMATCH" in result.summary()


def test_a_ptxas_of_another_release_is_not_taken_for_this_cuda(ptxas13):
    result = compiler_check.check_compiler(CudaRelease.parse("12.9"), ptxas13)
    assert not result.ok and "not 12.9" in result.summary()


def test_standalone_cli(repo_root, ptxas13, tmp_path):
    out = tmp_path / "cu130.json"
    proc = subprocess.run([sys.executable, "-m", "vllm_forge.matrix.compiler_check", "--cuda", "13.0",
                           "--ptxas", str(ptxas13), "--out", str(out)], cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "table matches" in proc.stdout and '"ok": true' in out.read_text()
