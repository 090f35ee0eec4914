import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from invoke.config import Config

from vllm_forge.cli._invoke import config_layers
from vllm_forge.core.config import DEFAULTS, check_git_ref, check_repo_url, resolve_config
from vllm_forge.core.errors import ForgeError


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
    rc = resolve_config(config_layers(config), {"max_jobs": 5, "nvcc_threads": None})
    assert rc.config.arch == "9.0" and rc.source("arch") == "invoke.yaml"
    assert rc.config.cuda == "12.9" and rc.source("cuda").startswith("environment")
    assert rc.config.max_jobs == 5 and rc.source("max_jobs") == "command line"
    assert rc.config.nvcc_threads == 0 and rc.source("nvcc_threads") == "default"


def test_unknown_key_in_invoke_yaml_is_refused(tmp_path, monkeypatch):
    config = make_invoke_config(tmp_path, project="forge:\n  ach: '9.0'\n", monkeypatch=monkeypatch)
    with pytest.raises(ForgeError, match="unknown forge key"):
        resolve_config(config_layers(config), {})


@pytest.mark.parametrize("flags, words", [
    ({"max_jobs": "many"}, "--max-jobs must be a whole number"),
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


GOOD_REFS = ["main", "v0.11.0", "releases/v0.10", "abc1234", "refs/tags/v1", "a@b", "a-b", "x/y/z", "v1.lock.d"]
BAD_REFS = ["", "a..b", "-x", "a b", "x~1", "a:b", "end/", "x.lock", "@", "a@{b", "@{-1}", "a^b", "a?b", "a*b",
            "a[b", "a\\b", "a//b", "/a", "a.", ".a", "a/.b", "a.lock/b", "a/b.lock", "a\tb", "a\x7fb"]


def accepts_ref(ref: str) -> bool:
    try:
        check_git_ref(ref)
    except ForgeError as err:
        assert str(err).startswith(f"'{ref}' is not a valid git ref") and "Fix:" in str(err)
        return False
    return True


def test_good_refs():
    assert [ref for ref in GOOD_REFS if not accepts_ref(ref)] == []


def test_bad_refs():
    assert [ref for ref in BAD_REFS if accepts_ref(ref)] == []


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_refs_are_judged_as_git_judges_them():
    """`git check-ref-format --allow-onelevel` is the rule; every listed ref gets git's own verdict."""
    for ref in GOOD_REFS + BAD_REFS:
        by_git = subprocess.run(["git", "check-ref-format", "--allow-onelevel", ref], capture_output=True).returncode
        assert accepts_ref(ref) == (by_git == 0), ref


def accepts_url(url: str) -> bool:
    try:
        check_repo_url(url)
    except ForgeError as err:
        assert str(err).startswith(f"'{url}' is not a git repository URL") and "Fix:" in str(err)
        return False
    return True


def test_good_repo_urls():
    good = ["https://github.com/vllm-project/vllm.git", "http://mirror.local/vllm.git", "git://host/vllm",
            "git@github.com:vllm-project/vllm.git", "file:///tmp/x.git", "ssh://git@host/vllm", "/srv/git/vllm",
            "./vllm", "../vllm", "~/src/vllm", "deploy.bot@git.corp-1.example:team/vllm.git"]
    assert [url for url in good if not accepts_url(url)] == []


def test_bad_repo_urls():
    """A bare name or a host without a scheme is not a URL git can clone (nor a local path we accept)."""
    bad = ["vllm", "github.com/vllm-project/vllm", "vllm-project/vllm", "", " ", "ftp://host/vllm", "https://",
           "https://host/a b", "/srv/my vllm", "./my vllm", "git@host", "git@host:", "git@host:a b",
           "https://host/x\n", "\t/srv/vllm"]
    assert [url for url in bad if accepts_url(url)] == []


def test_invoke_yaml_and_env_reach_the_real_cli(tmp_path, repo_root):
    """The real `invoke plan` shows each layer's value and names the layer."""
    for name in ("tasks.py", "vllm_forge"):
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


# ---- values: types, ranges, layers --------------------------------------------------------------------


@pytest.mark.parametrize("mem", [0, -1, "0"])
def test_mem_per_job_must_be_positive(mem):
    with pytest.raises(ForgeError, match="mem_per_job_gb must be positive"):
        resolve_config(None, {"mem_per_job_gb": mem})


@pytest.mark.parametrize("name", ["max_jobs", "nvcc_threads", "wheel_limit_mb"])
def test_counts_may_be_zero_not_negative(name):
    assert getattr(resolve_config(None, {name: 0}).config, name) == 0
    with pytest.raises(ForgeError, match=f"--{name.replace('_', '-')} cannot be negative"):
        resolve_config(None, {name: -1})


def test_values_are_coerced_to_the_default_types():
    config = resolve_config(None, {"max_jobs": "3", "mem_per_job_gb": "2.5", "cuda": 13.0, "arch": 12}).config
    assert config.max_jobs == 3 and type(config.max_jobs) is int
    assert config.mem_per_job_gb == 2.5 and type(config.mem_per_job_gb) is float
    assert config.cuda == "13.0" and config.arch == "12"
    assert resolve_config(None, {"mem_per_job_gb": 3}).config.mem_per_job_gb == 3.0


@pytest.mark.parametrize("flags", [{"mem_per_job_gb": "lots"}, {"wheel_limit_mb": [1]}, {"nvcc_threads": "2.5"}])
def test_non_numbers_are_refused(flags):
    (name,) = flags
    with pytest.raises(ForgeError, match=f"--{name.replace('_', '-')} must be a (whole )?number"):
        resolve_config(None, flags)


def test_a_bad_number_is_named_as_the_user_wrote_it(tmp_path, monkeypatch):
    """The flag on the command line, the variable in the environment, the key in invoke.yaml: never the
    internal key name for a flag the user typed."""
    with pytest.raises(ForgeError) as err:
        resolve_config(None, {"max_jobs": "lots"})
    assert str(err.value) == ("--max-jobs must be a whole number, got 'lots'. Fix: pass --max-jobs a whole number "
                              "(0 means automatic).")
    with pytest.raises(ForgeError, match=r"^--mem-per-job-gb must be a number, got 'x'\. Fix: pass --mem-per-job-gb "
                                         r"a number, e\.g\. 4\.0\.$"):
        resolve_config(None, {"mem_per_job_gb": "x"})
    config = make_invoke_config(tmp_path, project="forge:\n  max_jobs: lots\n", monkeypatch=monkeypatch)
    with pytest.raises(ForgeError, match=r"^max_jobs in invoke\.yaml must be a whole number, got 'lots'\. Fix: "
                                         r"set max_jobs in invoke\.yaml to a whole number \(0 means automatic\)"):
        resolve_config(config_layers(config), {})


def test_coerce_keeps_empty_strings_empty():
    from vllm_forge.core.config import _coerce

    assert _coerce("base_image", None) == "" and _coerce("base_image", "x") == "x"


@pytest.mark.parametrize("build_type", ["Release", "RelWithDebInfo", "Debug", "MinSizeRel"])
def test_every_cmake_build_type_is_accepted(build_type):
    assert resolve_config(None, {"build_type": build_type}).config.build_type == build_type


@pytest.mark.parametrize("cache", ["auto", "none", "ccache", "sccache"])
def test_every_compile_cache_is_accepted(cache):
    assert resolve_config(None, {"compile_cache": cache}).config.compile_cache == cache


def test_an_unknown_flag_is_a_programming_error():
    with pytest.raises(KeyError):
        resolve_config(None, {"no_such_knob": 1})


def test_flags_given_as_none_keep_the_default_and_its_source():
    rc = resolve_config(None, {"arch": None, "cuda": "12.9"})
    assert rc.config.arch == DEFAULTS["arch"] and rc.is_default("arch")
    assert rc.config.cuda == "12.9" and not rc.is_default("cuda") and rc.source("cuda") == "command line"
    assert rc.source("not a field") == "default"


def test_defaults_are_the_whole_config():
    rc = resolve_config(None, None)
    assert rc.config.as_dict() == {**DEFAULTS, "mem_per_job_gb": 4.0}
    assert all(rc.is_default(name) for name in DEFAULTS)


def test_mirrors_key_in_invoke_yaml_is_not_unknown(tmp_path, monkeypatch):
    config = make_invoke_config(tmp_path, project="forge:\n  mirrors: {}\n  arch: '8.0'\n", monkeypatch=monkeypatch)
    assert resolve_config(config_layers(config), {}).config.arch == "8.0"


def test_unknown_keys_are_all_named(tmp_path, monkeypatch):
    config = make_invoke_config(tmp_path, project="forge:\n  zeta: 1\n  ach: '9.0'\n", monkeypatch=monkeypatch)
    with pytest.raises(ForgeError, match="unknown forge key.s.: ach, zeta"):
        resolve_config(config_layers(config), {})


class Layers(dict):
    """What resolve_config reads of an invoke Config: the merged view and each layer."""

    def __init__(self, merged, **layers):
        super().__init__(forge=merged)
        for name, values in layers.items():
            setattr(self, name, {"forge": values})


def test_highest_layer_names_the_source():
    config = Layers({"arch": "8.0", "cuda": "12.9", "build_type": "Debug", "dist_dir": "d", "cache_dir": "c"},
                    _runtime={"arch": "8.0"}, _env={"arch": "7.0", "cuda": "12.9"}, _project={"cuda": "12.6"},
                    _user={"build_type": "Debug", "dist_dir": "x"}, _system={"dist_dir": "d", "cache_dir": "c"})
    rc = resolve_config(config_layers(config), {})
    assert rc.config.arch == "8.0" and rc.source("arch") == "runtime file (-f)"
    assert rc.config.cuda == "12.9" and rc.source("cuda") == "environment (INVOKE_FORGE_*)"
    assert rc.source("build_type") == "user invoke file" and rc.config.build_type == "Debug"
    assert rc.source("dist_dir") == "user invoke file" and rc.config.dist_dir == "d"
    assert rc.source("cache_dir") == "system invoke file"
    assert rc.source("mirror") == "default"


def test_layers_that_are_not_mappings_are_ignored():
    config = Layers({"arch": "8.0"})
    config._project = None
    config._env = {"forge": "not a mapping"}
    config._user = ["not", "a", "mapping"]
    rc = resolve_config(config_layers(config), {})
    assert rc.config.arch == "8.0" and rc.source("arch") == "default"


def test_source_dir_is_the_given_checkout_else_the_clone(monkeypatch):
    monkeypatch.setenv("HOME", "/home/u")
    assert resolve_config(None, {"checkout_dir": "build/v"}).config.source_dir == "build/v"
    assert resolve_config(None, {"vllm_src": "~/vllm", "checkout_dir": "build/v"}).config.source_dir == "/home/u/vllm"
    assert resolve_config(None, {"checkout_dir": "~/c"}).config.source_dir == "/home/u/c"


def test_any_object_without_layers_gives_the_defaults():
    from types import SimpleNamespace

    assert resolve_config(config_layers(SimpleNamespace()), {}).config == resolve_config(None, {}).config
    no_forge_key = config_layers(Layers.__new__(Layers))
    assert resolve_config(no_forge_key, {}).config.arch == DEFAULTS["arch"]


def test_small_jobs_are_fine():
    assert resolve_config(None, {"mem_per_job_gb": 0.5}).config.mem_per_job_gb == 0.5
