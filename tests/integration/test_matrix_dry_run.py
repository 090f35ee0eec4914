"""The whole image matrix as dry runs: nox -> invoke bake -> the exact docker build per CUDA.

Needs a docker client (`bake` picks one and prints its command line), no engine, no registry, no GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from scripts import archs, compat, matrix, mirrors
from tests.conftest import require_tool

pytestmark = pytest.mark.integration


def dry_run(repo_root, *posargs):
    require_tool("docker client", bool(os.environ.get("VLLM_FORGE_DOCKER") or shutil.which("docker")))
    sessions = [matrix.image_session_name(cuda) for cuda in matrix.image_cudas()]
    proc = subprocess.run([sys.executable, "-m", "nox", "-s", *sessions, "--", "--dry-run",
                           "--vllm-src", "tests/fixtures/minivllm", *posargs],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    builds = [line for line in proc.stdout.splitlines() if re.search(r"docker build .*-f \S+Dockerfile", line)]
    assert len(builds) == len(sessions)
    return dict(zip(matrix.image_cudas(), builds, strict=True))


def build_arg(line: str, name: str) -> str:
    m = re.search(rf"--build-arg '?{name}=([^' ]*)'?", line)
    return m.group(1) if m else ""


def test_every_cuda_bakes_on_its_own_bases_and_default_archs(repo_root):
    for cuda, line in dry_run(repo_root).items():
        assert build_arg(line, "BUILD_BASE_IMAGE") == compat.default_ngc_tag(cuda).image
        assert build_arg(line, "FINAL_BASE_IMAGE") == compat.CUDA_RUNTIME_IMAGES[cuda]
        expected = archs.torch_cuda_arch_list(archs.parse_arch_list(compat.DEFAULT_ARCH_LIST[cuda]))
        assert build_arg(line, "torch_cuda_arch_list") == expected
        assert build_arg(line, "CUDA_VERSION") == cuda
        assert "PIP_INDEX_URL" not in line  # global: the tools' own defaults


def test_the_cn_mirror_rewrites_bases_and_indexes(repo_root):
    cn = mirrors.load_mirror("cn")
    for cuda, line in dry_run(repo_root, "--mirror", "cn").items():
        assert build_arg(line, "BUILD_BASE_IMAGE") == "m.daocloud.io/" + compat.default_ngc_tag(cuda).image
        assert build_arg(line, "FINAL_BASE_IMAGE") == "m.daocloud.io/" + compat.CUDA_RUNTIME_IMAGES[cuda]
        assert build_arg(line, "PIP_INDEX_URL") == cn.pypi_index
        assert build_arg(line, "UV_DEFAULT_INDEX") == cn.pypi_index
        assert build_arg(line, "PYTORCH_CUDA_INDEX_BASE_URL") == cn.pytorch_index
        assert build_arg(line, "APT_MIRROR") == cn.apt_mirror
