"""doctor finds the real nvcc of this machine (the system toolkit, or NVIDIA's from PyPI as in CI) on PATH,
through CUDA_HOME, and in the default toolkit root when neither names it (the H200 host of
tests/fixtures/gpu_real_vllm had it in /usr/local/cuda/bin, not on PATH), with its real version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from vllm_forge.gpu.doctor_inside import collect_cuda_runtime

pytestmark = [pytest.mark.integration, pytest.mark.nvcc]


def inside(env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-m", "vllm_forge.nccl.doctor", "--inside"], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["cuda"]


def clean_env(path: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    return {**env, "PATH": path, **extra}


def test_on_path(nvcc_toolchain, tmp_path):
    cuda = inside(clean_env(f"{nvcc_toolchain.nvcc.parent}{os.pathsep}{os.environ.get('PATH', '')}"))
    assert cuda["nvcc_found_by"] == "PATH" and cuda["nvcc_version"] == nvcc_toolchain.full_version


def test_through_cuda_home(nvcc_toolchain, tmp_path):
    home = nvcc_toolchain.nvcc.parent.parent
    cuda = inside(clean_env(str(tmp_path), CUDA_HOME=str(home)))  # tmp_path: a PATH without nvcc
    assert (cuda["nvcc"], cuda["nvcc_found_by"]) == (str(home / "bin" / "nvcc"), "CUDA_HOME")
    assert cuda["nvcc_version"] == nvcc_toolchain.full_version


def test_in_the_default_root_when_nothing_names_it(nvcc_toolchain, tmp_path):
    root = nvcc_toolchain.nvcc.parent.parent
    cuda = collect_cuda_runtime([], env={"PATH": str(tmp_path)}, cuda_root=str(root))
    assert (cuda["nvcc_found_by"], cuda["nvcc_version"]) == (str(root), nvcc_toolchain.full_version)


def test_usr_local_cuda_itself(tmp_path):
    nvcc = Path("/usr/local/cuda/bin/nvcc")
    if not nvcc.is_file():
        pytest.skip("no /usr/local/cuda here (CI's nvcc comes from PyPI; the default root is tested above)")
    cuda = inside(clean_env(str(tmp_path)))
    assert (cuda["nvcc"], cuda["nvcc_found_by"]) == (str(nvcc), "/usr/local/cuda") and cuda["nvcc_version"]
