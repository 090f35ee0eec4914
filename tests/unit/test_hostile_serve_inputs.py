"""Hostile inputs to serve/stop: a pid file that is empty, bogus or stale, a container name that is YAML
or a path, an API key on a command line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.serve import serve

REPO = Path(__file__).resolve().parents[2]
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
    from vllm_forge.core.errors import run_main

    assert run_main(serve.main, ["run", "--image", "x", "--model", "m", "--api-key", "s3cret-flag",
                                 "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--api-key-file" in err and "s3cret-flag" not in err


# --- abbreviations of the flags serve manages -------------------------------------------------------------------
# vLLM's argparse takes any unambiguous prefix of a flag: `--hos 0.0.0.0` is `--host 0.0.0.0`, past the
# "needs a key" check; `--api-k KEY` puts the key on the server's command line.


def _prefixes(flag: str) -> list[str]:
    dashes = 2 if flag.startswith("--") else 1
    return [flag[:n] for n in range(dashes + 1, len(flag) + 1)]


MANAGED_PREFIXES = [(flag, word) for flag in serve.MANAGED_FLAGS for word in _prefixes(flag)]


@pytest.mark.parametrize("flag, word", MANAGED_PREFIXES)
@pytest.mark.parametrize("form", ["{w} v", "{w}=v", "{u} v"])
def test_every_prefix_of_a_managed_flag_is_refused(flag, word, form):
    words = form.format(w=word, u=word[:2] + word[2:].replace("-", "_")).split()
    for extra in (words, ["--enforce-eager", *words]):
        with pytest.raises(ForgeError, match=rf"set {re.escape(words[0].split('=')[0].replace('_', '-'))}"
                                             rf".*which invoke serve manages"):
            serve.plan_serve(req(host="127.0.0.1", extra_args=extra))


@pytest.mark.parametrize("flag, word", MANAGED_PREFIXES)
def test_every_prefix_from_invoke_yaml_is_refused(flag, word):
    settings = serve.serve_settings({"forge": {"serve": {"vllm_args": f"--dtype half {word} 1"}}})
    with pytest.raises(ForgeError, match="which invoke serve manages"):
        serve.plan_serve(req(extra_args=settings["vllm_args"]))


@pytest.mark.parametrize("extra", [["--hostname-x"], ["--pipe", "2"], ["--max-num-seqs", "4"], ["--", "x"],
                                   ["--enforce-eager"], ["-O3"], ["--api-server-count", "2"]])
def test_flags_that_are_no_prefix_of_a_managed_one_pass(extra):
    assert serve.plan_serve(req(extra_args=extra)).argv[-len(extra):] == extra


@pytest.mark.parametrize("word", ["--max-model", "--max_model_l", "--gpu-mem", "--served-model"])
def test_a_prefix_of_a_first_class_flag_counts_as_giving_it(word):
    with pytest.raises(ForgeError, match="is given twice"):
        serve.plan_serve(req(max_model_len=512, gpu_memory_utilization=0.3, served_model_name="m",
                             extra_args=[word, "1"]))


@pytest.mark.parametrize("args", [["--vllm-args", "--hos 0.0.0.0"], ["--vllm-args", "--api-k SECRETKEY"],
                                  ["--", "--po", "9"]])
def test_the_cli_refuses_an_abbreviated_managed_flag(args, tmp_path):
    """The finding itself, end to end: one line, exit 2, nothing started, the key in no output."""
    out = subprocess.run([sys.executable, "-m", "invoke", "serve", "m", "--image", "vllm-forge/vllm:x", "--dry-run",
                          *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 2 and "which invoke serve manages" in out.stderr, out.stdout + out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "docker run" not in out.stdout
    assert "SECRETKEY" not in out.stdout


def test_invoke_yaml_with_an_abbreviated_managed_flag_is_refused_by_the_cli(tmp_path):
    (tmp_path / "invoke.yaml").write_text("forge:\n  serve:\n    vllm_args: --hos 0.0.0.0\n")
    out = subprocess.run([sys.executable, "-m", "invoke", "-f", str(tmp_path / "invoke.yaml"), "serve", "m",
                          "--image", "vllm-forge/vllm:x", "--dry-run"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 2 and "set --hos (a prefix of --host" in out.stderr, out.stdout + out.stderr
