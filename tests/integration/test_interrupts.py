"""Ctrl-C (SIGINT to the `invoke` process group, as a terminal sends it) and SIGTERM during clone,
build-wheel, bake and serve: exit 130, every child process and container it started is gone, and the
output dir and the checkout are as they were (no `.partial` checkout, no staging dir in dist/)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def start_invoke(*args, env=None) -> subprocess.Popen:
    """`python -m invoke ...` as the leader of its own process group, like a shell job in a terminal."""
    return subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=REPO, start_new_session=True,
                            env={**os.environ, "COLUMNS": "200", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"invoke ended (rc {proc.returncode}) before {what}: {out[-1500:]}{err[-1500:]}")
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"timed out waiting for {what}")


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[int, str]:
    os.killpg(proc.pid, sig)  # the whole foreground group, as the terminal does
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("invoke did not stop within 60 s of the interrupt")
    return proc.returncode, err


def processes_matching(pattern: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def gone_within(pattern: str, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := processes_matching(pattern)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def git(*args, cwd) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


# --- clone ------------------------------------------------------------------------------------------------


def slow_ssh(tmp_path: Path, dest: Path) -> tuple[str, dict[str, str]]:
    """An ssh stand-in serving the local bare repo: quick for `git ls-remote`, hanging for the clone or
    fetch into ``dest`` (git runs it in that directory, or after creating the `.partial` one)."""
    marker = f"forge-slow-ssh-{uuid.uuid4().hex[:8]}"
    ssh = tmp_path / marker
    partial = dest.with_name(f".{dest.name}.partial")
    ssh.write_text(f"""#!/bin/sh
for last; do :; done
if [ -d {partial} ] || [ "$PWD" = {dest} ]; then sleep 120; fi
exec sh -c "$last"
""")
    ssh.chmod(0o755)
    return marker, {"GIT_SSH_COMMAND": str(ssh), "GIT_SSH_VARIANT": "simple"}


def test_ctrl_c_during_clone_leaves_no_partial_checkout(minivllm_repo, tmp_path):
    """The clone's transfer hangs (an ssh stand-in that sleeps on the second connection); Ctrl-C then."""
    bare = minivllm_repo.removeprefix("file://")
    dest = tmp_path / "co"
    marker, env = slow_ssh(tmp_path, dest)
    proc = start_invoke("clone", "--repo", f"ssh://fakehost{bare}", "--ref", "v0.1.0", "--checkout-dir", str(dest),
                        env=env)
    partial = tmp_path / ".co.partial"
    wait_for(lambda: partial.exists() and len(processes_matching(marker)) > 0, proc, 60, "the clone's transfer")
    code, err = interrupt(proc)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not partial.exists() and not dest.exists()
    assert gone_within(marker, 5) == []


def test_ctrl_c_during_update_keeps_the_checkout(minivllm_repo, tmp_path):
    """An existing checkout being updated (fetch hangs): interrupted, it is still the old commit, clean."""
    bare = minivllm_repo.removeprefix("file://")
    dest = tmp_path / "co"
    subprocess.run(["git", "clone", "-q", "--branch", "v0.1.0", f"file://{bare}", str(dest)], check=True)
    git("remote", "set-url", "origin", f"ssh://fakehost{bare}", cwd=dest)
    head = git("rev-parse", "HEAD", cwd=dest)
    marker, env = slow_ssh(tmp_path, dest)
    proc = start_invoke("clone", "--repo", f"ssh://fakehost{bare}", "--ref", "main", "--checkout-dir", str(dest),
                        env=env)
    wait_for(lambda: len(processes_matching(marker)) > 0, proc, 60, "the fetch")
    code, err = interrupt(proc)
    assert code == 130, err
    assert git("rev-parse", "HEAD", cwd=dest) == head
    assert git("status", "--porcelain", cwd=dest) == ""
    assert gone_within(marker, 5) == []


# --- build-wheel --------------------------------------------------------------------------------------------


@pytest.fixture
def checkout_copy(minivllm_repo, tmp_path) -> Path:
    dest = tmp_path / "co"
    subprocess.run(["git", "clone", "-q", "--branch", "v0.1.0", minivllm_repo, str(dest)], check=True,
                   capture_output=True)
    return dest


@pytest.mark.nvcc
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_build_wheel_leaves_dist_and_checkout_as_they_were(checkout_copy, tmp_path, nvcc_toolchain, sig):
    dist = tmp_path / "dist"
    dist.mkdir()
    yesterday = dist / "vllm-0.0.9-cp38-abi3-linux_x86_64.whl"
    yesterday.write_bytes(b"yesterday's wheel")
    proc = start_invoke("build-wheel", "--arch", "12.0", "--vllm-src", str(checkout_copy), "--dist-dir", str(dist),
                        "--skip-torch", "--compile-cache", "none", "--max-jobs", "1")
    # setup.py bdist_wheel has started (its --dist-dir is this run's staging dir), and CMake with it
    wait_for(lambda: len(processes_matching(str(dist / ".staging-"))) > 0, proc, 120, "the build")
    time.sleep(1.0)
    code, err = interrupt(proc, sig)
    assert code == 130, err
    assert sorted(p.name for p in dist.iterdir()) == [yesterday.name]  # no staging dir, no new wheel
    assert yesterday.read_bytes() == b"yesterday's wheel"
    assert gone_within(str(checkout_copy), 10) == [] and gone_within(str(dist), 1) == []
    assert git("status", "--porcelain", cwd=checkout_copy) == ""  # build outputs are ignored files only
    # the checkout's writer lock went with the process: the next build may take it (and a dry run still plans)
    from vllm_forge.core import checkout_lock

    assert checkout_lock.hold(checkout_copy) is True
    checkout_lock.release_all()
    again = subprocess.run([sys.executable, "-m", "invoke", "build-wheel", "--arch", "12.0", "--vllm-src",
                            str(checkout_copy), "--dist-dir", str(dist), "--skip-torch", "--dry-run"], cwd=REPO,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr


# --- bake and serve (Docker) ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_client():
    from vllm_forge.core.errors import ForgeError
    from vllm_forge.image import docker_client as docker_client_mod
    from vllm_forge.image.standin_images import RUNTIME_STANDIN

    try:
        client = docker_client_mod.find_docker()
        docker_client_mod.check_engine(client.path)
    except ForgeError as err:
        require_tool(f"a Docker engine with BuildKit ({err})", False)
    present = subprocess.run([client.path, "image", "inspect", RUNTIME_STANDIN], capture_output=True)
    if present.returncode != 0:
        from vllm_forge.image.standin_images import ensure_standin_images

        ensure_standin_images(client.path, log=lambda line: None)
    return client


@pytest.mark.docker
def test_ctrl_c_during_bake_stops_the_buildkit_build(docker_client, checkout_copy):
    from vllm_forge.image.standin_images import RUNTIME_STANDIN

    seconds = f"97.{uuid.uuid4().int % 10**6:06d}"  # a unique `sleep` to find the build step by
    dockerfile = checkout_copy / "Dockerfile.slow"
    dockerfile.write_text(f"FROM {RUNTIME_STANDIN} AS vllm-openai\nRUN sleep {seconds}\n")
    tag = f"vllm-forge-test/interrupted:{uuid.uuid4().hex[:8]}"
    proc = start_invoke("bake", "--vllm-src", str(checkout_copy), "--dockerfile", str(dockerfile), "--tag", tag,
                        "--no-cache", env={"VLLM_FORGE_DOCKER": docker_client.path})
    wait_for(lambda: len(processes_matching(f"sleep {seconds}")) > 0, proc, 120, "the RUN step")
    code, err = interrupt(proc)
    assert code == 130, err
    assert gone_within(f"sleep {seconds}", 20) == [], "BuildKit kept running the interrupted build"
    assert subprocess.run([docker_client.path, "image", "inspect", tag], capture_output=True).returncode != 0


@pytest.fixture(scope="module")
def hanging_image(docker_client):
    """A server image whose server never answers /health."""
    from vllm_forge.image.standin_images import RUNTIME_STANDIN

    tag = "vllm-forge-test/never-healthy:latest"
    dockerfile = f'FROM {RUNTIME_STANDIN}\nENTRYPOINT ["python3", "-c", "import time; time.sleep(600)"]\n'
    subprocess.run(docker_client.build_argv + ["-q", "-t", tag, "-"], input=dockerfile, text=True, check=True,
                   capture_output=True, env={**os.environ, **docker_client.build_env})
    yield tag
    subprocess.run([docker_client.path, "rmi", "-f", tag], capture_output=True)


def free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.mark.docker
def test_ctrl_c_while_waiting_for_health_removes_the_container(docker_client, hanging_image):
    name = f"vllm-forge-test-{uuid.uuid4().hex[:6]}"
    proc = start_invoke("serve", "--image", hanging_image, "--model", "m", "--gpus", "none", "--port", free_port(),
                        "--name", name, "--timeout", "120", env={"VLLM_FORGE_DOCKER": docker_client.path})

    def running() -> bool:
        out = subprocess.run([docker_client.path, "inspect", "-f", "{{.State.Running}}", name],
                             capture_output=True, text=True)
        return out.stdout.strip() == "true"

    wait_for(running, proc, 60, "the container")
    code, err = interrupt(proc)
    assert code == 130, err
    assert subprocess.run([docker_client.path, "container", "inspect", name], capture_output=True).returncode != 0


def test_ctrl_c_while_waiting_for_a_local_server_stops_it(tmp_path):
    server = tmp_path / "fakevllm" / "vllm" / "entrypoints" / "openai"
    server.mkdir(parents=True)
    for init in (server.parents[1], server.parent, server):
        (init / "__init__.py").write_text("")
    (server / "api_server.py").write_text("import time\ntime.sleep(120)\n")
    model = tmp_path / "model"
    model.mkdir()
    name = f"forge-interrupt-{uuid.uuid4().hex[:6]}"
    proc = start_invoke("serve", "--local", "--model", str(model), "--port", free_port(), "--name", name,
                        "--timeout", "120", env={"PYTHONPATH": str(tmp_path / "fakevllm")})
    server_pattern = f"openai.api_server .*{model}"  # the server, not invoke (whose --model names it too)
    wait_for(lambda: len(processes_matching(server_pattern)) > 0, proc, 60, "the local server")
    code, err = interrupt(proc)
    assert code == 130, err
    assert gone_within(str(model), 10) == []
    assert not (REPO / "build" / "serve" / f"{name}.pid").exists()
    shutil.rmtree(tmp_path / "fakevllm")
