"""The miniature's stand-in OpenAI server (what `invoke demo` and the image tests serve): API keys are
compared in constant time, and a request body over the limit is refused (413) without being read."""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def standin(**env):
    """The stand-in server on 127.0.0.1 (``env``: its MINIVLLM_* limits); yields (port, url, pid)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
                             "--port", str(port)], env={**os.environ, "PYTHONPATH": str(MINI), "VLLM_API_KEY": KEY,
                                                        "MINIVLLM_MAX_BODY_BYTES": "65536", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        yield port, url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def server():
    with standin() as (port, url, _pid):
        yield port, url


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


# --- a read timeout and a connection cap: 300 half-sent requests used to hold 301 threads -------------------


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closes ``sock`` (it reads b"" or a reset), None if still open after ``seconds``."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - started


HALF_SENT = [b"POST /v1/chat/comp", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le",
             f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
             f"Content-Length: 100\r\n\r\n{{\"model\"".encode()]


@pytest.mark.parametrize("sent", HALF_SENT, ids=["request-line", "headers", "body"])
def test_a_client_that_stops_sending_is_dropped(sent):
    with standin(MINIVLLM_READ_TIMEOUT_S="1") as (port, url, _pid):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(sent)
            took = closed_within(sock, 10)
        assert took is not None and took < 9, "the server kept a silent half-sent request open"
        assert requests.get(f"{url}/health", timeout=5).status_code == 200


def test_a_client_that_drips_is_dropped_at_the_request_deadline():
    """One byte at a time, each within the read timeout: only the whole request's deadline stops it."""
    with standin(MINIVLLM_READ_TIMEOUT_S="5", MINIVLLM_REQUEST_DEADLINE_S="2") as (port, _url, _pid):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            closed = False
            for byte in b"GET /health HTTP/1.1\r\nX-Drip: " + b"a" * 200:  # bounded: 40 s of dripping at most
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                if closed_within(sock, 0.2) is not None:
                    closed = True
                    break
            assert closed and time.monotonic() - started < 15


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_connections_beyond_the_cap_get_503_and_no_thread():
    cap, tried = 8, 40
    with standin(MINIVLLM_MAX_CONNECTIONS=str(cap), MINIVLLM_READ_TIMEOUT_S="30") as (port, url, pid):
        idle = _threads(pid)
        held, refused = [], 0
        try:
            for _ in range(tried):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and then nothing
                held.append(sock)
            time.sleep(0.5)  # let the server take them all in
            assert _threads(pid) <= idle + cap, f"{_threads(pid)} threads for {tried} half-sent requests"
            for sock in held:
                sock.settimeout(0.05)
                try:
                    if sock.recv(200).startswith(b"HTTP/1.0 503"):
                        refused += 1
                except (TimeoutError, OSError):
                    pass
            assert refused == tried - cap
        finally:
            for sock in held:
                sock.close()
        for _ in range(50):  # the slots come back as the held connections close
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                break
            time.sleep(0.1)
        assert requests.get(f"{url}/health", timeout=5).status_code == 200
