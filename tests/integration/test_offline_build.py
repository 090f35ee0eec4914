"""The miniature's FetchContent dependency: the build fails when its GitHub URL can't be reached, and
succeeds with the network path still unreachable once `fetch-deps` cached it (MINIDEP_SRC_DIR)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vllm_forge.build.build_wheel import BuildRequest, plan_build, run_build
from vllm_forge.core.errors import ForgeError
from vllm_forge.deps.fetch_deps import fetch_deps
from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.source import checkout
from vllm_forge.source.minivllm import MINIDEP_GITHUB_PREFIX, publish_minidep, publish_minivllm
from vllm_forge.source.vllm_tree import inspect_tree

pytestmark = [pytest.mark.integration, pytest.mark.nvcc]

REPO = Path(__file__).resolve().parents[2]
# Whatever network this machine has, nothing answers on port 9: the GitHub path is unreachable.
NO_NETWORK = {"MINIVLLM_FETCH_DEPS": "1", "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
              "http_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "GIT_TERMINAL_PROMPT": "0"}


@pytest.fixture
def offline_src(tmp_path, nvcc_toolchain):
    remote = tmp_path / "remote"
    src = tmp_path / "vllm"
    checkout.clone(publish_minivllm(remote), "v0.1.0", src)
    checkout.use_existing_torch(src)
    publish_minidep(remote)
    return src, remote


def request(src, tmp_path, cache) -> BuildRequest:
    return BuildRequest(src=src, dist_dir=tmp_path / "dist", archs=parse_arch_list("12.0"), compile_cache="none",
                        cache_dir=cache, extra_env=dict(NO_NETWORK))


def test_tree_names_the_dependency_and_its_override():
    (dep,) = inspect_tree(REPO / "tests/fixtures/minivllm").git_deps
    assert (dep.name, dep.repository, dep.tag, dep.src_dir_env) == (
        "minidep", MINIDEP_GITHUB_PREFIX + "minidep.git", "v1.0.0", "MINIDEP_SRC_DIR")


def test_without_the_cache_the_build_needs_the_network(offline_src, tmp_path):
    src, _remote = offline_src
    plan = plan_build(request(src, tmp_path, tmp_path / "empty-cache"))
    assert "MINIDEP_SRC_DIR" not in plan.env
    with pytest.raises(ForgeError, match="failed with exit code"):
        run_build(plan, audit=False)
    assert not list((tmp_path / "dist").glob("*.whl"))


def test_fetch_deps_then_build_offline(offline_src, tmp_path, cuobjdump):
    src, remote = offline_src
    cache = tmp_path / "cache"
    env = fetch_deps(inspect_tree(src), cache, url_map={MINIDEP_GITHUB_PREFIX: remote.as_uri() + "/"})
    assert Path(env["MINIDEP_SRC_DIR"], "include", "minidep.h").is_file()
    plan = plan_build(request(src, tmp_path, cache))
    assert plan.env["MINIDEP_SRC_DIR"] == env["MINIDEP_SRC_DIR"]
    assert any("git dependencies from the local cache" in note for note in plan.notes)
    wheel = run_build(plan, audit=False)
    with zipfile.ZipFile(wheel) as archive:
        archive.extract("vllm/_C.abi3.so", tmp_path)
    out = subprocess.run([str(cuobjdump), "--list-elf", str(tmp_path / "vllm/_C.abi3.so")],
                         capture_output=True, text=True).stdout
    assert "sm_120" in out


def test_the_cli_does_the_same(offline_src, tmp_path):
    src, remote = offline_src
    env = {**os.environ, **NO_NETWORK, "INVOKE_FORGE_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    invoke = [sys.executable, "-m", "invoke"]
    fetched = subprocess.run([*invoke, "fetch-deps", "--vllm-src", str(src), "--url-map",
                              f"{MINIDEP_GITHUB_PREFIX}={remote.as_uri()}/"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    built = subprocess.run([*invoke, "build-wheel", "--vllm-src", str(src), "--arch", "12.0", "--compile-cache", "none",
                            "--dist-dir", str(tmp_path / "dist")], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert "1 git dependencies from the local cache" in built.stdout


@pytest.mark.docker
def test_bake_takes_the_cached_dependency_into_the_build(offline_src, tmp_path):
    """Inside the Docker build GitHub is unreachable too: the bake succeeds only with the staged cache."""
    from conftest import docker_available, require_tool

    from vllm_forge.image import bake as bake_mod
    from vllm_forge.image import bake_plan, docker_client, standin_images
    from vllm_forge.image import request as request_mod

    require_tool("docker engine", docker_available())
    client = docker_client.find_docker()
    standins = {kind: spec.image for kind, spec in standin_images.STANDINS.items()}
    require_tool("stand-in base images (python -m vllm_forge.image.standin_images)",
                 all(standin_images.image_exists(client.path, name) for name in standins.values()))
    src, remote = offline_src
    cache = tmp_path / "cache"
    fetch_deps(inspect_tree(src), cache, url_map={MINIDEP_GITHUB_PREFIX: remote.as_uri() + "/"})
    ca_bundle, _ = request_mod.default_ca_bundle()

    def bake(deps_cache):
        request = request_mod.BakeRequest(
            src=src, archs=parse_arch_list("12.0"), cuda=CudaRelease(13, 0), base_image=standins["build"],
            runtime_image=standins["runtime"],
            target="wheel", context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist", ca_bundle=ca_bundle,
            deps_cache=deps_cache, compile_cache="none", build_args={"CMAKE_ARGS": "-DMINIVLLM_FETCH_DEPS=ON"})
        plan = bake_plan.plan_bake(request, client)
        return plan, bake_mod.run_bake(plan, log_path=tmp_path / "bake.log")

    with pytest.raises(ForgeError):
        bake(None)  # no cache staged: CMake tries GitHub from inside the build and fails
    plan, result = bake(cache)
    assert any("cached git dependencies (minidep)" in note for note in plan.notes)
    assert [w.name for w in result.wheels] == ["vllm-0.1.0+cu130.sm120-cp38-abi3-linux_x86_64.whl"]
