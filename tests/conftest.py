"""Shared test set-up: where the repo is, and how a missing tool is treated.

Locally a test whose tool (nvcc, docker, ...) is missing is skipped with the reason; in CI
(CI=true) the same test fails, because .ci/run installs every tool and a skip would hide a gap.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings as _hypothesis_settings

REPO_ROOT = Path(__file__).resolve().parents[1]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# A test run started as a background job of a non-interactive shell (`nox -s tests &` in a script) has SIGINT ignored,
# and so has every process it starts: the tests that press Ctrl-C on a task would wait for an interrupt that is never
# delivered. A terminal's job has the default; so have the tasks these tests start (a handled signal resets on exec).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Property tests draw 300 examples; `nox -s mutants` asks for 20 (VLLM_FORGE_HYPOTHESIS_PROFILE=mutation): every
# mutant reruns the tests that call its function, and a wrong answer shows in the first few examples or not at all.
_hypothesis_settings.register_profile("full", max_examples=300, deadline=None)
_hypothesis_settings.register_profile("mutation", max_examples=20, deadline=None)
_hypothesis_settings.load_profile(os.environ.get("VLLM_FORGE_HYPOTHESIS_PROFILE") or "full")


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
    from vllm_forge.core.errors import ForgeError
    from vllm_forge.gpu.toolchain import find_cuda_toolchain

    try:
        return find_cuda_toolchain()
    except ForgeError:
        require_tool("nvcc", False)


@pytest.fixture(scope="session")
def cuobjdump():
    from vllm_forge.gpu.toolchain import find_cuda_tool

    tool = find_cuda_tool("cuobjdump")
    require_tool("cuobjdump", tool is not None)
    return tool


def docker_available() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    return subprocess.run([docker, "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def client():
    """The docker client bakes use, its engine answering (a skip locally, a failure in CI, when not)."""
    from vllm_forge.core.errors import ForgeError
    from vllm_forge.image import docker_client

    try:
        found = docker_client.find_docker()
        docker_client.check_engine(found.path)
    except ForgeError as err:
        require_tool(f"a Docker engine with BuildKit ({err})", False)
    return found


@pytest.fixture(scope="session")
def standins(client):
    """The TEST-ONLY stand-in base images (vllm_forge/image/standin_images.py), built once when missing."""
    from vllm_forge.core.errors import ForgeError
    from vllm_forge.image.standin_images import ensure_standin_images

    try:
        return ensure_standin_images(client.path, log=lambda line: None)
    except ForgeError as err:
        if IN_CI:
            raise
        pytest.skip(f"stand-in base images cannot be built here: {err}")


@pytest.fixture(scope="session")
def minivllm_repo(tmp_path_factory) -> str:
    """file:// URL of a bare git repo of the embedded miniature vLLM."""
    from vllm_forge.source.minivllm import publish_minivllm

    return publish_minivllm(tmp_path_factory.mktemp("minivllm-remote"))


# --- the run leaves nothing behind ---------------------------------------------------------------------------
# Whatever the tests started (compile-cache servers, containers, images) and did not remove is removed at the
# end of the session, then checked: anything still there fails the run (`nox -s tests` exits non-zero).

_LEFTOVER_PROCESSES = ("sccache", "sccache-dist", "redis-server")
_baseline: dict[str, set[str]] = {}
# What the tasks the tests run record (report/run_records.py) goes to this session's own directory, removed at
# the end, never to the repository's build/reports.
_RECORDS = "" if os.environ.get("VLLM_FORGE_RECORD_DIR") else tempfile.mkdtemp(prefix="vllm-forge-records-")
if _RECORDS:
    os.environ["VLLM_FORGE_RECORD_DIR"] = _RECORDS


def _docker_ids(*args: str) -> set[str]:
    docker = os.environ.get("VLLM_FORGE_DOCKER") or shutil.which("docker")
    if not docker:
        return set()
    try:
        proc = subprocess.run([docker, *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return set()
    return set(proc.stdout.split()) if proc.returncode == 0 else set()


def _running(pid: str) -> bool:
    """Not a zombie: one that has exited and waits for its parent (init, for a daemon whose starter has
    exited) to reap it holds nothing, and reaping it is not ours to do."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def _snapshot() -> dict[str, set[str]]:
    pids = set()
    for name in _LEFTOVER_PROCESSES:
        out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
        pids |= {pid for pid in out.stdout.split() if _running(pid)}
    return {
        "pids": pids,
        "containers": _docker_ids("ps", "-aq", "--no-trunc"),
        "dangling": _docker_ids("images", "-q", "--no-trunc", "--filter", "dangling=true"),
    }


def pytest_sessionstart(session):
    if os.environ.get("VLLM_FORGE_TEST_KEEP_LEFTOVERS"):  # other work shares this engine: touch nothing
        return
    _baseline.update(_snapshot())


def pytest_sessionfinish(session, exitstatus):
    if _RECORDS:
        shutil.rmtree(_RECORDS, ignore_errors=True)
    if not _baseline:
        return
    import signal

    docker = os.environ.get("VLLM_FORGE_DOCKER") or shutil.which("docker")
    now = _snapshot()
    if all(now[kind] <= _baseline[kind] for kind in now):
        return  # nothing new: no second look (a pytest run per mutant would otherwise pay for it)
    for pid in now["pids"] - _baseline["pids"]:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
    if docker:
        for container in now["containers"] - _baseline["containers"]:
            subprocess.run([docker, "rm", "-f", container], capture_output=True)
        for image in now["dangling"] - _baseline["dangling"]:
            subprocess.run([docker, "rmi", "-f", image], capture_output=True)
    import time

    time.sleep(1)  # a terminated server takes a moment to go
    after = _snapshot()
    left = {kind: sorted(after[kind] - _baseline[kind]) for kind in after}
    left = {kind: ids for kind, ids in left.items() if ids}
    if left:
        print(f"\nthe tests left these behind, even after cleanup: {left}")
        session.exitstatus = 1
