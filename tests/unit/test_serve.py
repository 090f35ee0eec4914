"""vllm_forge/serve/serve.py without Docker: request checks, the docker run command, compose, smoke-test logic."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.serve import serve


def req(**kw) -> serve.ServeRequest:
    kw.setdefault("model", "Qwen/Qwen2.5-0.5B-Instruct")
    kw.setdefault("image", "vllm-forge/vllm:test")
    kw.setdefault("env", {})
    return serve.ServeRequest(**kw)


def test_public_bind_needs_api_key_or_insecure():
    with pytest.raises(ForgeError, match="--api-key"):
        serve.check_request(req(host="0.0.0.0"))
    serve.check_request(req(host="0.0.0.0", api_key="k"))
    serve.check_request(req(host="0.0.0.0", insecure=True))
    serve.check_request(req())  # 127.0.0.1 by default


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"image": ""}, "--image"),
        ({"tp": 0}, "--tp"),
        ({"port": 70000}, "port"),
        ({"gpus": "first"}, "--gpus"),
        ({"gpus": "0", "tp": 2}, "needs 2 GPUs"),
    ],
)
def test_bad_requests_fail_with_a_fix(bad, match):
    with pytest.raises(ForgeError, match=match):
        serve.check_request(req(**bad))


def test_docker_run_command():
    env = {
        "NCCL_DEBUG": "INFO",
        "NCCL_P2P_DISABLE": "1",
        "HF_TOKEN": "hf_secret",
        "HOME": "/root",
        "VLLM_FORGE_DOCKER": "/usr/bin/docker",
    }
    r = req(tp=2, port=8100, api_key="key-123", env=env)
    argv = serve.plan_serve(r, "/usr/bin/docker").argv
    assert argv[:4] == ["/usr/bin/docker", "run", "-d", "--name"]
    assert argv[argv.index("--gpus") + 1] == "all" and "--ipc=host" in argv
    assert argv[argv.index("-p") + 1] == "127.0.0.1:8100:8000"
    assert argv[argv.index("-v") + 1].endswith(".cache/huggingface:/root/.cache/huggingface")
    passed = [argv[i + 1] for i, a in enumerate(argv) if a == "-e"]
    assert passed == ["HF_TOKEN", "NCCL_DEBUG", "NCCL_P2P_DISABLE", "VLLM_API_KEY"]  # by name only
    assert "hf_secret" not in " ".join(argv) and "INFO" not in argv
    assert "key-123" not in " ".join(argv) and "--api-key" not in argv  # the key goes by environment
    tail = argv[argv.index("vllm-forge/vllm:test") + 1 :]
    assert tail[:8] == ["--host", "0.0.0.0", "--port", "8000", "--model", r.model, "--tensor-parallel-size", "2"]
    line = serve.shell_line(serve.plan_serve(r, "/usr/bin/docker"), r)
    assert "key-123" not in line and "****" in line


def test_gpu_selection_and_shm():
    argv = serve.plan_serve(req(gpus="none", shm_size="16g")).argv
    assert "--gpus" not in argv and "--ipc=host" not in argv and argv[argv.index("--shm-size") + 1] == "16g"
    argv = serve.plan_serve(req(gpus="0,1", tp=2)).argv
    assert argv[argv.index("--gpus") + 1] == '"device=0,1"'


def test_local_mode_runs_this_python():
    import sys

    argv = serve.plan_serve(req(image="", local=True, port=8123)).argv
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and "8123" in argv


def test_compose_file_is_the_same_service():
    yaml = pytest.importorskip("yaml")
    text = serve.compose_file(req(gpus="0,1", tp=2, port=8200, env={"NCCL_DEBUG": "WARN"}))
    service = yaml.safe_load(text)["services"]["vllm-forge-serve"]
    assert service["image"] == "vllm-forge/vllm:test" and service["ipc"] == "host"
    assert service["ports"] == ["127.0.0.1:8200:8000"]
    assert service["command"][-2:] == ["--tensor-parallel-size", "2"]
    assert service["environment"] == ["NCCL_DEBUG"]
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["0", "1"]
    cpu = yaml.safe_load(serve.compose_file(req(gpus="none")))["services"]["vllm-forge-serve"]
    assert "deploy" not in cpu
    with pytest.raises(ForgeError):
        serve.compose_file(req(image="", local=True))


def fake_http(responses):
    calls = []

    def http(method, url, *, api_key="", body=None, timeout=10):
        calls.append((method, url.rsplit("/", 2)[-2:], api_key, body))
        status, payload = responses[url.split(":8000", 1)[1]]
        return SimpleNamespace(status_code=status, json=lambda: payload, text=str(payload))

    return http, calls


def test_smoke_test_checks_models_and_a_chat(monkeypatch):
    http, calls = fake_http(
        {
            "/v1/models": (200, {"data": [{"id": "m"}]}),
            "/v1/chat/completions": (200, {"choices": [{"message": {"content": "hi"}}]}),
        }
    )
    monkeypatch.setattr(serve, "_http", http)
    result = serve.smoke_test("http://h:8000", model="m", api_key="k")
    assert result.models == ["m"] and result.reply == "hi"
    assert calls[1][0] == "POST" and calls[1][2] == "k" and calls[1][3]["model"] == "m"


@pytest.mark.parametrize(
    "responses,match",
    [
        ({"/v1/models": (401, {"error": "no"})}, "401"),
        ({"/v1/models": (200, {"data": []})}, "no model"),
        ({"/v1/models": (200, {"data": [{"id": "m"}]}), "/v1/chat/completions": (200, {"choices": []})}, "no message"),
    ],
)
def test_smoke_test_failures(monkeypatch, responses, match):
    monkeypatch.setattr(serve, "_http", fake_http(responses)[0])
    with pytest.raises(ForgeError, match=match):
        serve.smoke_test("http://h:8000")


def test_wait_healthy_fails_fast_when_the_server_exits(monkeypatch):
    import requests

    def refuse(*a, **k):
        raise requests.ConnectionError("refused")

    monkeypatch.setattr(serve, "_http", refuse)
    monkeypatch.setattr(serve, "is_running", lambda started, docker="docker": False)
    monkeypatch.setattr(serve, "logs", lambda started, docker="docker", tail=40: "Traceback: CUDA error")
    started = serve.Started("container", "abc", "n", "http://127.0.0.1:1")
    with pytest.raises(ForgeError, match="CUDA error"):
        serve.wait_healthy(started, timeout_s=30, interval_s=0)


def test_serve_removes_what_it_started_on_failure(monkeypatch):
    stopped = []
    monkeypatch.setattr(serve, "start", lambda r, d, c=None: serve.Started("container", "abc", r.name, "http://x:1"))

    def unhealthy(*a, **k):
        raise ForgeError("the server exited before it became healthy; its last lines:\nboom", "fix")

    monkeypatch.setattr(serve, "wait_healthy", unhealthy)
    monkeypatch.setattr(serve, "stop", lambda name, docker="docker": stopped.append(name))
    with pytest.raises(ForgeError, match="boom"):
        serve.serve(req(name="n1"))
    assert stopped == ["n1"]


def _time_wait_port() -> int:
    """A port whose last server closed its connection first and stopped: the server's end of that connection
    is in TIME_WAIT (as after `invoke serve; invoke stop`), nothing listens. Like uvicorn and docker-proxy,
    the server set SO_REUSEADDR."""
    import socket

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server closes first, as an HTTP server does after its answer
    client.recv(1)
    client.close()
    server.close()
    return port


def test_a_port_in_time_wait_after_a_stopped_server_is_free():
    import socket

    port = _time_wait_port()
    with socket.socket() as plain, pytest.raises(OSError):  # what the old bind() check tripped on
        plain.bind(("127.0.0.1", port))
    serve.check_port_free("127.0.0.1", port)


def test_a_port_something_listens_on_is_refused():
    import socket

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(ForgeError, match=f"port {port} on 127.0.0.1 is already in use .*Fix: pass another --port"):
            serve.check_port_free("127.0.0.1", port)
        with pytest.raises(ForgeError, match="already in use"):  # published on every address
            serve.check_port_free("0.0.0.0", port)
