"""Shared test set-up: where the repo is, and how a missing tool is treated.

Locally a test whose tool (nvcc, docker, ...) is missing is skipped with the reason; in CI
(CI=true) the same test fails, because .ci/run installs every tool and a skip would hide a gap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(what: str, available: bool) -> None:
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is missing in CI: .ci/run must install it")
    pytest.skip(f"{what} is not available on this machine")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def nvcc_toolchain():
    from scripts.errors import ForgeError
    from scripts.toolchain import find_cuda_toolchain

    try:
        return find_cuda_toolchain()
    except ForgeError:
        require_tool("nvcc", False)


@pytest.fixture(scope="session")
def cuobjdump():
    from scripts.toolchain import find_cuda_tool

    tool = find_cuda_tool("cuobjdump")
    require_tool("cuobjdump", tool is not None)
    return tool


def docker_available() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    return subprocess.run([docker, "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def minivllm_repo(tmp_path_factory) -> str:
    """file:// URL of a bare git repo of the embedded miniature vLLM."""
    from scripts.minivllm import publish_minivllm

    return publish_minivllm(tmp_path_factory.mktemp("minivllm-remote"))
