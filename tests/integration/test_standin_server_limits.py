"""The miniature's stand-in OpenAI server (what `invoke demo` and the image tests serve): API keys are
compared in constant time, and a request body over the limit is refused (413) without being read."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration

MINI = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "minivllm"
KEY = "stand-in-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
                             "--port", str(port)], env={**os.environ, "PYTHONPATH": str(MINI), "VLLM_API_KEY": KEY,
                                                        "MINIVLLM_MAX_BODY_BYTES": "65536"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        yield port, url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def raw_post(port: int, content_length: str, body: bytes = b"") -> str:
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + body)
        return sock.recv(65536).decode(errors="replace")  # times out (5 s) if the server waits for the body


def test_a_huge_content_length_is_refused_without_reading(server):
    port, url = server
    started = time.monotonic()
    reply = raw_post(port, str(10**12))
    assert reply.startswith("HTTP/1.0 413") or reply.startswith("HTTP/1.1 413"), reply[:200]
    assert time.monotonic() - started < 3
    assert raw_post(port, "-5").split(" ", 2)[1] == "400"
    assert raw_post(port, "many").split(" ", 2)[1] == "400"
    auth = {"Authorization": f"Bearer {KEY}"}
    big = {"model": "minivllm/echo", "messages": [{"role": "user", "content": "x" * 100_000}]}
    assert requests.post(f"{url}/v1/chat/completions", json=big, headers=auth, timeout=10).status_code == 413
    small = {"model": "minivllm/echo", "messages": [{"role": "user", "content": "hi"}]}
    answer = requests.post(f"{url}/v1/chat/completions", json=small, headers=auth, timeout=10)
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "echo: hi"


def test_keys_are_checked(server):
    _, url = server
    assert requests.get(f"{url}/v1/models", timeout=5).status_code == 401
    assert requests.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    assert requests.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}x"}, timeout=5).status_code == 401
    assert requests.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).status_code == 200


def test_the_key_is_compared_with_compare_digest():
    """Run the handler in a child with hmac.compare_digest wrapped: every key check goes through it."""
    script = textwrap.dedent(f"""
        import hmac, threading, urllib.request, urllib.error
        calls = []
        real = hmac.compare_digest
        hmac.compare_digest = lambda a, b: calls.append((a, b)) or real(a, b)
        from http.server import ThreadingHTTPServer
        from vllm.entrypoints.openai import api_server
        args = api_server.parse_args(["--api-key", {KEY!r}])
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), api_server.make_handler(args))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{{httpd.server_address[1]}}/v1/models"
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers={{"Authorization": "Bearer nope"}}))
        except urllib.error.HTTPError as err:
            assert err.code == 401
        good = urllib.request.Request(url, headers={{"Authorization": "Bearer {KEY}"}})
        assert urllib.request.urlopen(good).status == 200
        httpd.shutdown()
        print(len(calls))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(MINI)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "2"
