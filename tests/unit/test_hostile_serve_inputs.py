"""Hostile inputs to serve/stop: a pid file that is empty, bogus or stale, a container name that is YAML
or a path, an API key on a command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from scripts import serve
from scripts.errors import ForgeError

REAL_KILL = os.kill  # the fixture below replaces os.kill (serve.os is the os module)


def req(**kw) -> serve.ServeRequest:
    kw.setdefault("model", "Qwen/Qwen2.5-0.5B-Instruct")
    kw.setdefault("image", "vllm-forge/vllm:test")
    kw.setdefault("env", {})
    return serve.ServeRequest(**kw)


@pytest.fixture
def signals(monkeypatch, tmp_path):
    """Every signal stop() sends, recorded instead of sent; build/serve/ is a temporary directory."""
    sent = []
    monkeypatch.setattr(serve, "LOCAL_STATE_DIR", tmp_path)
    monkeypatch.setattr(serve.os, "killpg", lambda pid, sig: sent.append(("killpg", pid, sig)))
    monkeypatch.setattr(serve.os, "kill", lambda pid, sig: sent.append(("kill", pid, sig)))
    return sent


@pytest.mark.parametrize("content", [
    "", "\n", "0", "1", "-1", "abc", str(os.getpid()), "[]", "{}", '{"pid": 0, "start_time": "1", "exe": "x"}',
    '{"pid": 1, "start_time": "1", "exe": "/sbin/init"}', '{"pid": true, "start_time": "1", "exe": "x"}',
    json.dumps({"pid": os.getpid(), "start_time": "1", "exe": sys.executable}),
])
def test_a_bogus_pid_file_signals_nothing(signals, tmp_path, content):
    (tmp_path / "srv.pid").write_text(content)
    said = serve.stop("srv")
    assert signals == [] and "nothing was signalled" in said
    assert not (tmp_path / "srv.pid").exists()


def test_a_reused_pid_is_not_signalled(signals, tmp_path):
    """The pid now belongs to another process (started at another time): it is left alone."""
    other = subprocess.Popen(["sleep", "30"])
    try:
        identity = serve._process_identity(other.pid)
        record = {"pid": other.pid, "start_time": str(int(identity[0]) - 100), "exe": identity[1]}
        (tmp_path / "srv.pid").write_text(json.dumps(record))
        assert "nothing was signalled" in serve.stop("srv") and signals == []
    finally:
        REAL_KILL(other.pid, signal.SIGKILL)
        other.wait()


def test_the_recorded_server_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "LOCAL_STATE_DIR", tmp_path)
    server = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        serve.write_pid_record(tmp_path / "srv.pid", server.pid)
        assert serve.stop("srv") == f"stopped local server (pid {server.pid}, its whole process group)"
        assert server.wait(timeout=10) == -signal.SIGTERM
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.parametrize("name", ["x\n    privileged: true", "../../etc/cron.d/x", "--privileged", "-x", "a b",
                                  "a:b", "", "ünïcode", "a" * 200])
def test_a_container_name_that_is_not_dockers_is_refused(name, tmp_path, monkeypatch):
    monkeypatch.setattr(serve, "LOCAL_STATE_DIR", tmp_path)
    with pytest.raises(ForgeError, match="is not a container name"):
        serve.plan_serve(req(name=name))
    with pytest.raises(ForgeError, match="is not a container name"):
        serve.compose_file(req(name=name))
    with pytest.raises(ForgeError, match="is not a container name"):
        serve.stop(name)


def test_the_compose_file_is_a_yaml_dump_no_value_adds_a_key(monkeypatch):
    yaml = pytest.importorskip("yaml")
    monkeypatch.setattr(serve, "check_name", lambda name: name)  # past the name check: the dump itself holds
    evil = "x\n    privileged: true\n    volumes: ['/:/host']"
    text = serve.compose_file(req(name=evil, served_model_name=evil, model=evil))
    services = yaml.safe_load(text)["services"]
    (service,) = services.values()
    assert list(services) == [evil] and service["container_name"] == evil
    assert "privileged" not in service and service["command"][-1] == evil
    assert service["volumes"] == [os.path.expanduser("~/.cache/huggingface") + ":/root/.cache/huggingface"]


@pytest.mark.parametrize("field,value", [("image", "--privileged"), ("image", "x y"), ("shm_size", "1g --privileged")])
def test_values_docker_would_read_as_options_are_refused(field, value):
    with pytest.raises(ForgeError, match="is not a"):
        serve.plan_serve(req(**{field: value}))


def test_the_api_key_comes_from_a_file_or_the_environment(tmp_path):
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    assert serve.read_api_key(key, {}) == "s3cret"
    assert serve.read_api_key(None, {"VLLM_API_KEY": "from-env"}) == "from-env"
    assert serve.read_api_key(None, {}) == ""
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ForgeError, match="is empty"):
        serve.read_api_key(tmp_path / "empty", {})
    with pytest.raises(ForgeError, match="cannot be read"):
        serve.read_api_key(tmp_path / "missing", {})


def test_the_standalone_cli_refuses_a_key_on_its_command_line(capsys):
    from scripts.errors import run_main

    assert run_main(serve.main, ["run", "--image", "x", "--model", "m", "--api-key", "s3cret-flag",
                                 "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--api-key-file" in err and "s3cret-flag" not in err
