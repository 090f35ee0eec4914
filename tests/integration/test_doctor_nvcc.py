"""doctor finds the real nvcc of this machine where a GPU host keeps it: on PATH, through CUDA_HOME, and
in /usr/local/cuda when neither names it (the H200 host of tests/fixtures/gpu_real_vllm had it there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.nvcc]
DEFAULT = Path("/usr/local/cuda/bin/nvcc")


def inside(env: dict) -> dict:
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "doctor.py"), "--inside"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["cuda"]


def real_version() -> str:
    out = subprocess.run([str(DEFAULT), "--version"], capture_output=True, text=True, timeout=60).stdout
    return out.rsplit(", V", 1)[1].split()[0]


@pytest.fixture(scope="module")
def version() -> str:
    require_tool("nvcc in /usr/local/cuda", DEFAULT.is_file())
    return real_version()


def test_found_in_usr_local_cuda_without_path_or_cuda_home(version, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env["PATH"] = str(tmp_path)  # no nvcc here
    cuda = inside(env)
    assert (cuda["nvcc"], cuda["nvcc_found_by"], cuda["nvcc_version"]) == (str(DEFAULT), "/usr/local/cuda", version)


def test_found_through_cuda_home_and_on_path(version, tmp_path):
    home = DEFAULT.resolve().parent.parent
    env = {**os.environ, "PATH": str(tmp_path), "CUDA_HOME": str(home)}
    assert inside(env)["nvcc_found_by"] == "CUDA_HOME"
    env = {**os.environ, "PATH": f"{home / 'bin'}:{os.environ.get('PATH', '')}"}
    cuda = inside(env)
    assert cuda["nvcc_found_by"] == "PATH" and cuda["nvcc_version"] == version
