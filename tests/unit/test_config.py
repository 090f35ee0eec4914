import os
import subprocess
import sys
from pathlib import Path

import pytest
from invoke.config import Config

from scripts.config import DEFAULTS, check_git_ref, check_repo_url, resolve_config
from scripts.errors import ForgeError


def make_invoke_config(tmp_path, project=None, env=None, monkeypatch=None):
    if project is not None:
        (tmp_path / "invoke.yaml").write_text(project)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    config = Config(project_location=str(tmp_path))
    config.load_collection({"forge": dict(DEFAULTS)})
    config.load_project()
    config.load_shell_env()
    return config


def test_defaults_only():
    rc = resolve_config(None, {})
    assert rc.config.arch == "12.0" and rc.source("arch") == "default"


def test_layers_in_order(tmp_path, monkeypatch):
    config = make_invoke_config(
        tmp_path,
        project="forge:\n  arch: '9.0'\n  cuda: '12.6'\n  max_jobs: 3\n",
        env={"INVOKE_FORGE_CUDA": "12.9"},
        monkeypatch=monkeypatch,
    )
    rc = resolve_config(config, {"max_jobs": 5, "nvcc_threads": None})
    assert rc.config.arch == "9.0" and rc.source("arch") == "invoke.yaml"
    assert rc.config.cuda == "12.9" and rc.source("cuda").startswith("environment")
    assert rc.config.max_jobs == 5 and rc.source("max_jobs") == "command line"
    assert rc.config.nvcc_threads == 0 and rc.source("nvcc_threads") == "default"


def test_unknown_key_in_invoke_yaml_is_refused(tmp_path, monkeypatch):
    config = make_invoke_config(tmp_path, project="forge:\n  ach: '9.0'\n", monkeypatch=monkeypatch)
    with pytest.raises(ForgeError, match="unknown forge key"):
        resolve_config(config, {})


@pytest.mark.parametrize("flags, words", [
    ({"max_jobs": "many"}, "must be a number"),
    ({"max_jobs": -1}, "cannot be negative"),
    ({"build_type": "Fast"}, "build type"),
    ({"compile_cache": "distcc"}, "compile cache"),
    ({"vllm_ref": "bad..ref"}, "not a valid git ref"),
    ({"vllm_repo": "not a url"}, "not a git repository URL"),
])
def test_bad_values_are_refused_with_a_fix(flags, words):
    with pytest.raises(ForgeError) as err:
        resolve_config(None, flags)
    assert words in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize("ref", ["main", "v0.11.0", "releases/v0.10", "abc1234", "refs/tags/v1"])
def test_good_refs(ref):
    check_git_ref(ref)


@pytest.mark.parametrize("ref", ["", "a..b", "-x", "a b", "x~1", "a:b", "end/", "x.lock", "@"])
def test_bad_refs(ref):
    with pytest.raises(ForgeError):
        check_git_ref(ref)


@pytest.mark.parametrize("url", ["https://github.com/vllm-project/vllm.git", "git@github.com:vllm-project/vllm.git",
                                 "file:///tmp/x.git", "/srv/git/vllm", "ssh://git@host/vllm"])
def test_good_repo_urls(url):
    check_repo_url(url)


def test_invoke_yaml_and_env_reach_the_real_cli(tmp_path, repo_root):
    """The real `invoke plan` shows each layer's value and names the layer."""
    for name in ("tasks.py", "scripts"):
        os.symlink(repo_root / name, tmp_path / name)
    (tmp_path / "invoke.yaml").write_text("forge:\n  arch: '9.0'\n")
    env = {**os.environ, "INVOKE_FORGE_MAX_JOBS": "1", "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "invoke", "plan", "--nvcc-threads", "1"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") >= 3}
    assert "invoke.yaml" in lines["arch"] and "9.0" in lines["arch"]
    assert "environment" in lines["max_jobs"]
    assert "command line" in lines["nvcc_threads"]
    assert "default" in lines["cuda"]
    assert Path(tmp_path / "tasks.py").resolve() == repo_root / "tasks.py"
