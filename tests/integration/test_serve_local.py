"""`invoke serve` / `invoke stop` for real, as a user runs them: help, vLLM flags through --local (the
miniature vLLM prints the flags it was given), invoke.yaml's forge.serve through `-f`, compose, a server
that dies with the recorded H200 failure, and stop on a host without Docker."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.integration

MINIVLLM = REPO_ROOT / "tests" / "fixtures" / "minivllm"
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "gpu_real_vllm"
STATE = REPO_ROOT / "build" / "serve"


def invoke(*args, env=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400", **(env or {})}, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def name(request):
    unique = f"forge-test-{os.getpid()}-{request.node.name[:20]}".replace("[", "-").replace("]", "")
    yield unique
    pid_file = STATE / f"{unique}.pid"
    if pid_file.exists():  # a failed test leaves nothing running
        try:
            os.killpg(int(json.loads(pid_file.read_text())["pid"]), signal.SIGKILL)
        except (ProcessLookupError, ValueError, KeyError, TypeError):
            pass
        pid_file.unlink()
    (STATE / f"{unique}.log").unlink(missing_ok=True)


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "tiny"
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


def test_serve_help_exits_0():
    proc = invoke("serve", "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--max-model-len", "--gpu-memory-utilization", "--served-model-name", "--vllm-args"):
        assert flag in proc.stdout
    assert "error" not in proc.stderr


def test_dry_run_shows_every_flag_in_order(tmp_path, model):
    config = tmp_path / "forge.yaml"
    config.write_text("forge:\n  serve:\n    max_model_len: 4096\n    vllm_args: --dtype half\n")
    proc = invoke("-f", str(config), "serve", "--local", "--model", str(model), "--gpu-memory-utilization", "0.2",
                  "--vllm-args", "--chat-template '{{ x }}'", "--dry-run", "--", "--enforce-eager")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip().splitlines()[-1]
    assert line.endswith(f"--model {model} --tensor-parallel-size 1 --max-model-len 4096 "
                         "--gpu-memory-utilization 0.2 --dtype half --chat-template '{{ x }}' --enforce-eager")
    flag_wins = invoke("-f", str(config), "serve", "--local", "--model", str(model), "--max-model-len", "512",
                       "--dry-run")
    assert "--max-model-len 512" in flag_wins.stdout and "4096" not in flag_wins.stdout


def test_invoke_yaml_may_hold_a_serve_section(tmp_path):
    from invoke import Config

    from vllm_forge.cli._invoke import config_layers
    from vllm_forge.core.config import resolve_config

    (tmp_path / "invoke.yaml").write_text("forge:\n  serve:\n    max_model_len: 4096\n")
    config = Config(project_location=str(tmp_path))
    config.load_project()
    assert resolve_config(config_layers(config)).config.arch  # not refused as an unknown forge key


def test_compose_file_carries_the_flags(tmp_path, model):
    out = tmp_path / "compose.yaml"
    proc = invoke("serve", "--image", "vllm-forge/vllm:test", "--model", str(model), "--max-model-len", "512",
                  "--vllm-args", "--enforce-eager", "--compose", "--compose-file", str(out))
    assert proc.returncode == 0, proc.stderr
    yaml = pytest.importorskip("yaml")
    (service,) = yaml.safe_load(out.read_text())["services"].values()
    assert service["command"][-3:] == ["--max-model-len", "512", "--enforce-eager"]


def test_local_server_gets_the_flags_and_stop_ends_it(name, model):
    port = free_port()
    env = {"PYTHONPATH": str(MINIVLLM)}
    proc = invoke("serve", "--local", "--model", str(model), "--port", str(port), "--name", name, "--timeout", "60",
                  "--max-model-len", "512", "--gpu-memory-utilization", "0.2", "--", "--enforce-eager", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "healthy after" in proc.stdout
    log = (STATE / f"{name}.log").read_text()
    assert "ignoring flags --max-model-len 512 --gpu-memory-utilization 0.2 --enforce-eager" in log
    pid = json.loads((STATE / f"{name}.pid").read_text())["pid"]  # with its start time: stop checks both
    stopped = invoke("stop", "--name", name)
    assert stopped.returncode == 0 and f"stopped local server (pid {pid}" in stopped.stdout
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the server's process group outlived invoke stop")


def test_a_dying_server_names_its_first_error(name, model, tmp_path):
    """The recorded H200 failure (device run 8): the engine's cause, then vLLM's own last words."""
    attempts = (FIXTURE / "attempts.txt").read_text()
    cause = re.search(r"^  (\(EngineCore pid=\d+\) ERROR .*flashinfer.*)$", attempts, re.M).group(1)
    last = re.search(r"last line: (\(APIServer pid=\d+\) RuntimeError: .*?); full log", attempts).group(1)
    head = cause.split("] ", 1)[0] + "] "
    log = (FIXTURE / "serverlog.txt").read_text().splitlines()[:14] + [
        head + "EngineCore failed to start.", head + "Traceback (most recent call last):",
        head + '  File "/tmp/site/vllm/v1/engine/core.py", line 1320, in run_engine_core', head + "    raise",
        cause, "(APIServer pid=1900) Traceback (most recent call last):",
        '(APIServer pid=1900)   File "/tmp/site/vllm/v1/engine/utils.py", line 1, in wait', last]
    fake = tmp_path / "fake"
    server = fake / "vllm" / "entrypoints" / "openai"
    server.mkdir(parents=True)
    for package in (fake / "vllm", fake / "vllm" / "entrypoints", server):
        (package / "__init__.py").write_text("")
    (tmp_path / "replay.log").write_text("\n".join(log) + "\n")
    (server / "api_server.py").write_text(
        f"import sys, time\nsys.stdout.write(open({str(tmp_path / 'replay.log')!r}).read())\n"
        "sys.stdout.flush()\ntime.sleep(0.5)\nsys.exit(1)\n")
    proc = invoke("serve", "--local", "--model", str(model), "--port", str(free_port()), "--name", name,
                  "--timeout", "60", env={"PYTHONPATH": str(fake)})
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "first error: ModuleNotFoundError: No module named 'flashinfer'" in lines[0]
    assert f"full log: {STATE / (name + '.log')}" in lines[0]
    assert "Fix: install what provides the module flashinfer" in lines[0]


def test_stop_with_nothing_running_and_no_docker(name, tmp_path):
    bare = {"PATH": str(Path(sys.executable).parent)}  # a PATH with python3 and no docker
    proc = invoke("stop", "--name", name, "--docker", "docker-nowhere", env=bare)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to stop" in proc.stdout and "no docker client" in proc.stdout


@pytest.mark.parametrize("flag, value, words", [
    ("--max-model-len", "abc", "--max-model-len needs a whole number, got 'abc'. Fix: pass e.g. --max-model-len 4096"),
    ("--gpu-memory-utilization", "x", "needs a number, got 'x'. Fix: pass e.g. --gpu-memory-utilization 0.5"),
    ("--gpu-memory-utilization", "1.5", "is not a fraction of the GPU's memory"),
    ("--vllm-args", "--port 9", "--port, which invoke serve manages"),
])
def test_bad_vllm_flag_values_are_one_line(model, flag, value, words):
    proc = invoke("serve", "--local", "--model", str(model), flag, value, "--dry-run")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and words in lines[0], proc.stderr
