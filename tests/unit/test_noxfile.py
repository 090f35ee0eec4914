"""noxfile.py and vllm_forge/matrix/matrix.py: session list, matrix JSON, skips, argument hand-over to the tasks."""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import nox.registry
import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.image import mirrors
from vllm_forge.matrix import matrix

cu = CudaRelease.parse


def run_nox(repo_root, *args, env=None):
    return subprocess.run([sys.executable, "-m", "nox", *args], cwd=repo_root, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.fixture(scope="module")
def listing(repo_root):
    proc = run_nox(repo_root, "-l")
    assert proc.returncode == 0, proc.stderr
    sessions = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^[*-] (.+?) -> (.+)$", line)
        if m:
            sessions[m.group(1)] = m.group(2)
    return sessions


def test_nox_lists_every_session_with_a_description(listing):
    expected = {"tests", "lint", "matrix"} | {matrix.image_session_name(c) for c in matrix.image_cudas()}
    assert expected <= set(listing)
    assert {"image-cu126", "image-cu128", "image-cu129", "image-cu130"} <= set(listing)
    wheels = {name for name in listing if name.startswith("wheel")}
    assert wheels == {f"wheel(cuda='{cuda}', arch='{arch}')" for cuda, arch in matrix.local_wheel_pairs()}
    for cuda in compat.known_cudas():
        assert f"compilers(cuda='{cuda}')" in listing
    assert all(description.strip() and "\n" not in description for description in listing.values())
    assert compat.default_ngc_tag(cu("12.8")).image in listing["image-cu128"]


def test_default_sessions_are_lint_and_tests(repo_root):
    proc = run_nox(repo_root, "-l")
    selected = [line[2:].split(" -> ")[0] for line in proc.stdout.splitlines() if line.startswith("* ")]
    assert selected == ["tests", "lint"]


def test_image_sessions_follow_the_tables(repo_root, monkeypatch):
    """A new CUDA row in compat gives a new image session without touching noxfile.py."""
    monkeypatch.setitem(compat.CUDA_ARCHS, "13.1", compat.CUDA_ARCHS["13.0"])
    monkeypatch.setitem(compat.DEFAULT_ARCH_LIST, "13.1", "8.0 9.0 12.0")
    monkeypatch.setitem(compat.CUDA_RUNTIME_IMAGES, "13.1", "nvcr.io/nvidia/cuda:13.1.0-runtime-ubuntu24.04")
    monkeypatch.setitem(compat.PYTORCH_WHEEL_INDEX, "13.1", "https://download.pytorch.org/whl/cu131")
    monkeypatch.setattr(compat, "NGC_PYTORCH_TAGS",
                        [*compat.NGC_PYTORCH_TAGS, compat.NgcPytorchTag("26.01-py3", cu("13.1.0"), "2.10.0a0", "3.12")])
    assert matrix.image_cudas()[-1] == cu("13.1")
    monkeypatch.setattr(nox.registry, "_REGISTRY", {})
    runpy.run_path(str(repo_root / "noxfile.py"))
    sessions = nox.registry.get()
    assert "image-cu131" in sessions and "nvcr.io/nvidia/pytorch:26.01-py3" in sessions["image-cu131"].__doc__
    assert any(name.startswith("wheel") for name in sessions)


def test_matrix_json_is_ci_ready_and_skips_impossible_combos(repo_root):
    proc = run_nox(repo_root, "-s", "matrix", "--", "--json")
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(proc.stdout)
    assert entries and all(set(e) == {"session", "cuda", "arch", "mirror", "base_image"} for e in entries)
    pairs = {(e["cuda"], e["arch"]) for e in entries if e["session"].startswith("wheel")}
    assert ("12.6", "12.0") not in pairs and ("12.8", "12.1") not in pairs
    assert {("12.8", "12.0"), ("12.9", "12.1"), ("13.0", "12.1"), ("12.6", "9.0")} <= pairs
    assert {e["mirror"] for e in entries} == set(mirrors.known_mirror_names())
    for e in entries:
        upstream = compat.default_ngc_tag(cu(e["cuda"])).image
        expected = mirrors.rewrite_image(upstream, mirrors.load_mirror(e["mirror"]))
        assert e["base_image"] == expected
    images = [e for e in entries if e["session"] == "image-cu130" and e["mirror"] == "global"]
    assert images == [{"session": "image-cu130", "cuda": "13.0", "arch": compat.DEFAULT_ARCH_LIST["13.0"],
                       "mirror": "global", "base_image": compat.default_ngc_tag(cu("13.0")).image}]


def test_matrix_filters(repo_root):
    proc = run_nox(repo_root, "-s", "matrix", "--", "--json", "--mirror", "cn", "--arch", "12.0", "--kind", "image")
    entries = json.loads(proc.stdout)
    assert [e["session"] for e in entries] == ["image-cu128", "image-cu129", "image-cu130"]
    assert all(e["base_image"].startswith("m.daocloud.io/nvcr.io/") for e in entries)
    text = run_nox(repo_root, "-s", "matrix", "--", "--mirror", "global", "--arch", "12.0", "--kind", "image")
    assert "skip image-cu126 (mirror global): CUDA 12.6 cannot compile sm_120 (needs CUDA 12.8 or newer)" in text.stdout
    bad = run_nox(repo_root, "-s", "matrix", "--", "--mirror", "moon")
    assert bad.returncode != 0 and "mirror profile 'moon' is not defined" in bad.stderr + bad.stdout


def test_impossible_combinations_fail_in_one_line_naming_the_session_that_can(repo_root):
    """An image session asked for archs its CUDA cannot compile did nothing: it fails (not a skip with exit 0),
    naming the session that can."""
    proc = run_nox(repo_root, "-s", "image-cu126", "--", "--arch", "12.0", "--dry-run")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("aborted: CUDA 12.6 cannot compile sm_120 (needs CUDA 12.8 or newer). Fix: run nox -s image-cu130 -- "
            "--arch 12.0.\n") in out
    assert "invoke image" not in out


def test_wheel_sessions_are_the_local_nvccs_and_only_what_it_compiles():
    """A wheel builds with this machine's nvcc: only its CUDA's sessions exist, and none it cannot compile."""
    assert matrix.local_wheel_pairs(cu("12.8")) == [("12.8", arch) for arch in ("8.0", "8.9", "9.0", "10.0", "12.0")]
    assert ("13.0", "12.1") in matrix.local_wheel_pairs(cu("13.0"))
    assert ("12.4", "12.0") not in matrix.local_wheel_pairs(cu("12.4"))
    assert matrix.local_wheel_pairs(cu("11.2")) == []


def test_without_nvcc_the_wheel_session_is_listed_as_impossible(repo_root, monkeypatch):
    monkeypatch.setattr(matrix, "local_wheel_pairs", lambda cuda=None: [])
    monkeypatch.setattr(nox.registry, "_REGISTRY", {})
    runpy.run_path(str(repo_root / "noxfile.py"))
    sessions = nox.registry.get()
    assert not [name for name in sessions if name.startswith("wheel(")]
    assert sessions["wheel"].__doc__.startswith("CANNOT RUN HERE: a wheel builds with this machine's nvcc")


def test_an_image_session_with_standin_runs_only_for_the_standins_cuda(repo_root):
    proc = run_nox(repo_root, "-s", "image-cu128", "--", "--standin", "--dry-run")
    assert proc.returncode != 0 and "invoke image" not in proc.stderr
    assert ("aborted: the TEST-ONLY stand-in bases have CUDA 13.0, not 12.8. Fix: run nox -s image-cu130 -- "
            "--standin --dry-run.\n") in proc.stderr
    proc = run_nox(repo_root, "-s", "image-cu130", "--", "--standin", "--vllm-src", "tests/fixtures/minivllm",
                   "--arch", "12.0", "--dry-run")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "build base vllm-forge-standin/build:cu130, runtime base vllm-forge-standin/runtime:py3" in proc.stdout


def test_user_errors_end_the_session_with_one_line(repo_root):
    proc = run_nox(repo_root, "-s", "image-cu128", "--", "--arch", "rtx9999", "--dry-run")
    assert proc.returncode != 0 and "'rtx9999' is neither a CUDA arch nor a GPU name" in proc.stderr
    assert "Traceback" not in proc.stderr and "invoke image" not in proc.stderr
    proc = run_nox(repo_root, "-s", "image-cu128", "--", "--cuda", "12.6")
    assert proc.returncode != 0 and "--cuda is fixed by the session name" in proc.stderr
    proc = run_nox(repo_root, "-s", "image-cu128", "--", "--mirror", "moon", "--dry-run")
    assert proc.returncode != 0 and "use one of cn, cn-aliyun, global" in proc.stdout + proc.stderr


def test_parse_session_args_keeps_the_rest_for_the_task():
    args = matrix.parse_session_args(["--arch", "12.0", "--mirror", "cn", "--dry-run", "--ref", "v0.11.0",
                                      "--base-image", "nvcr.io/nvidia/pytorch:25.03-py3"])
    assert args.arch == "12.0"  # the session's own (it skips what its CUDA cannot build); the rest is the task's
    assert args.rest == ["--mirror", "cn", "--dry-run", "--ref", "v0.11.0",
                         "--base-image", "nvcr.io/nvidia/pytorch:25.03-py3"]
    with pytest.raises(ForgeError):
        matrix.parse_session_args(["--cuda", "12.8"])


def test_sessions_run_the_whole_chain_task():
    argv = matrix.image_argv(cu("12.8"), matrix.parse_session_args(["--mirror", "cn", "--dry-run"]))
    assert argv == ["invoke", "image", "--cuda", "12.8", "--arch", compat.DEFAULT_ARCH_LIST["12.8"],
                    "--mirror", "cn", "--dry-run"]  # the mirror is resolved once, by the task
    plain = matrix.image_argv(cu("13.0"), matrix.parse_session_args(["--arch", "12.0"]))
    assert plain == ["invoke", "image", "--cuda", "13.0", "--arch", "12.0"]
    assert matrix.wheel_argv(cu("12.9"), "12.1", matrix.parse_session_args(["--dry-run"])) == [
        "invoke", "wheel", "--cuda", "12.9", "--arch", "12.1", "--dry-run"]


def test_arch_verdict():
    assert matrix.arch_verdict(cu("12.8"), "12.0") is None
    assert matrix.arch_verdict(cu("13.0"), "7.0") == (
        "CUDA 13.0 can no longer compile sm_70; the last CUDA that can is 12.9")
    with pytest.raises(ForgeError):
        matrix.arch_verdict(cu("12.8"), "not-an-arch")
    for cuda in matrix.image_cudas():  # every default list builds with its own CUDA
        assert matrix.arch_verdict(cuda, compat.DEFAULT_ARCH_LIST[cuda.minor_str]) is None


def test_mirror_comes_from_invoke_yaml_when_not_given(tmp_path):
    (tmp_path / "invoke.yaml").write_text(
        "forge:\n  mirror: lab\n  mirrors:\n    lab:\n      extends: cn\n      pypi_index: https://pypi.lab/simple\n")
    config = matrix.project_invoke_config(tmp_path)
    profile = matrix.select_mirror(None, config)
    assert (profile.name, profile.pypi_index, profile.apt_mirror) == ("lab", "https://pypi.lab/simple",
                                                                      mirrors.load_mirror("cn").apt_mirror)
    assert matrix.select_mirror("global", config).name == "global"
    assert [p.name for p in matrix.matrix_profiles(None, config)] == ["cn", "cn-aliyun", "global", "lab"]


def test_nox_clean_removes_the_one_cache_and_the_tests_temporary_dirs(repo_root, tmp_path):
    """`nox -s clean` lists each part of the vllm-forge cache with its size and removes it, and pytest's
    temporary dirs of this user; `-- --dry-run` removes nothing; `--all` adds .nox/ and build/ (listed here)."""
    import getpass

    cache, temp = tmp_path / "cache", tmp_path / "tmp"
    (cache / "wheels").mkdir(parents=True)
    (cache / "wheels" / "vllm-0.26.0-cp38-abi3-manylinux_2_31_x86_64.whl").write_bytes(b"x" * 2_500_000)
    (cache / "something-new").mkdir()
    (cache / "something-new" / "f").write_bytes(b"y" * 1000)
    pytest_dir = temp / f"pytest-of-{getpass.getuser()}" / "pytest-7"
    pytest_dir.mkdir(parents=True)
    (pytest_dir / "leftover").write_bytes(b"z" * 4000)
    env = {"VLLM_FORGE_CACHE": str(cache), "TMPDIR": str(temp)}

    dry = run_nox(repo_root, "-s", "clean", "--", "--dry-run", "--all", env=env)
    assert dry.returncode == 0, dry.stderr
    assert re.search(rf"2\.5 MB  {re.escape(str(cache / 'wheels'))} +vLLM wheels the tests download from PyPI",
                     dry.stdout), dry.stdout
    assert re.search(rf"1\.0 KB  {re.escape(str(cache / 'something-new'))}\n", dry.stdout)
    assert re.search(rf"4\.0 KB  {re.escape(str(pytest_dir.parent))} +pytest's temporary directories", dry.stdout)
    for name in (".nox", "build"):  # --all: this checkout's venvs and build outputs, where there are some
        assert (str(repo_root / name) in dry.stdout) == (repo_root / name).is_dir()
    kept = [name for name in (".nox", "build") if (repo_root / name).is_dir()]
    assert "would remove" in dry.stdout and (cache / "wheels").is_dir() and pytest_dir.is_dir()

    done = run_nox(repo_root, "-s", "clean", env=env)
    assert done.returncode == 0, done.stderr
    assert "removed 2.5 MB" in done.stdout
    assert not any(cache.iterdir()) and not pytest_dir.parent.exists()
    assert all((repo_root / name).is_dir() for name in kept)  # not without --all


def test_the_tasks_cache_dir_is_the_same_one_cache(monkeypatch, tmp_path):
    from vllm_forge.core import config, forge_cache
    from vllm_forge.image import standin_images

    assert config.DEFAULTS["cache_dir"] == config.default_cache_root()  # as this run's environment set it
    monkeypatch.setenv("VLLM_FORGE_CACHE", str(tmp_path / "c"))
    assert forge_cache.root() == tmp_path / "c" and standin_images.default_cache_dir() == tmp_path / "c" / "standin"
    assert config.default_cache_root() == str(tmp_path / "c")
    monkeypatch.delenv("VLLM_FORGE_CACHE")
    assert forge_cache.root() == Path("~/.cache/vllm-forge").expanduser()


def test_mutants_take_a_module_by_any_of_its_names(repo_root, monkeypatch):
    monkeypatch.setattr(nox.registry, "_REGISTRY", {})  # the sessions it registers again
    noxfile = runpy.run_path(str(repo_root / "noxfile.py"))

    class Session:
        def error(self, message):
            raise SystemExit(message)

    paths = noxfile["_mutation_paths"](Session(), ["archs", "gpu/compat", "vllm_forge.audit.fatbin",
                                                   "vllm_forge/core/config.py"])
    assert paths == ["vllm_forge/gpu/archs.py", "vllm_forge/gpu/compat.py", "vllm_forge/audit/fatbin.py",
                     "vllm_forge/core/config.py"]
    assert all((repo_root / p).is_file() for p in noxfile["_mutation_paths"](Session(), []))  # the core set
    with pytest.raises(SystemExit, match="no module vllm_forge/nope.py"):
        noxfile["_mutation_paths"](Session(), ["nope"])
