"""The miniature's stand-in server, spoken to by the official `openai` client as a real user would.

It must behave like vLLM's OpenAI server for the smoke test and real clients: /v1/completions,
/v1/chat/completions (also streamed: server-sent events ending in `data: [DONE]`), /v1/models, /health,
and 401 without the API key when one is set.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration

openai = pytest.importorskip("openai")

MINIVLLM = Path(__file__).resolve().parents[1] / "fixtures" / "minivllm"
MODEL = "minivllm/echo"
KEY = "test-key-123"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(MINIVLLM)}
    env.pop("VLLM_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1", "--port", str(port),
         "--model", MODEL, "--api-key", KEY],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail("the stand-in server did not answer /health")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=10)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert requests.get(f"{server}/health", timeout=5).status_code == 200  # no key needed, as in vLLM


def test_key_is_required(server):
    wrong = openai.OpenAI(base_url=f"{server}/v1", api_key="not-the-key", max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert requests.post(f"{server}/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=5).status_code == 401


def test_completion(client):
    out = client.completions.create(model=MODEL, prompt="Say hello", max_tokens=16)
    assert out.object == "text_completion" and out.choices[0].text == "echo: Say hello"
    assert out.choices[0].finish_reason == "stop" and out.usage.total_tokens == 5
    cut = client.completions.create(model=MODEL, prompt="one two three four", max_tokens=2)
    assert cut.choices[0].text == "echo: one" and cut.choices[0].finish_reason == "length"


def test_chat(client):
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello"}])
    assert out.choices[0].message.role == "assistant" and out.choices[0].message.content == "echo: Say hello"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no/such-model", messages=[{"role": "user", "content": "x"}])


def test_chat_streaming(client):
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello there"}], stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: Say hello there"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 4  # one chunk per word
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 4


def test_completion_streaming(client):
    pieces = [c.choices[0].text for c in client.completions.create(model=MODEL, prompt="a b", stream=True)]
    assert "".join(pieces) == "echo: a b" and len(pieces) == 3


def test_stream_is_server_sent_events_ending_in_done(server):
    response = requests.post(
        f"{server}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=10, stream=True,
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True},
    )
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]" and events.count("data: [DONE]") == 1
