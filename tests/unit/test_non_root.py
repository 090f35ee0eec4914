"""`bake --non-root` without a Docker engine: the stage it targets, its label and tag, the config key,
and how `serve` runs such an image (HF cache where the image keeps it; the caller's uid in group 0)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from invoke.config import Config

from vllm_forge.cli._invoke import config_layers
from vllm_forge.core.config import DEFAULTS, resolve_config
from vllm_forge.core.errors import ForgeError
from vllm_forge.image import bake_plan, docker_client
from vllm_forge.image import dockerfile as dockerfile_mod
from vllm_forge.image import request as request_mod
from vllm_forge.serve import serve

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_FIXTURE = REPO / "tests" / "fixtures" / "upstream_dockerfile" / "Dockerfile"
BUILDKIT = docker_client.DockerClient("/usr/bin/docker", "buildkit", "20.10.24")


@pytest.fixture
def checkout(tmp_path) -> Path:
    src = tmp_path / "vllm"
    (src / "requirements").mkdir(parents=True)
    (src / "setup.py").write_text("print('setup')\n")
    (src / "requirements" / "build.txt").write_text("cmake\n")
    (src / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.26)\n")
    (src / "vllm").mkdir()
    (src / "vllm" / "__init__.py").write_text("")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(src)]
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    subprocess.run(git + ["tag", "v1.2.3"], check=True)
    return src


def plan(src, tmp_path, **kw) -> bake_plan.BakePlan:
    request = request_mod.BakeRequest(src=src, context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist", **kw)
    return bake_plan.plan_bake(request, BUILDKIT)


def flag(argv, name):
    return [argv[i + 1] for i, a in enumerate(argv) if a == name]


def test_forge_non_root_targets_the_nonroot_stage_with_its_own_tag_and_label(checkout, tmp_path):
    root = plan(checkout, tmp_path)
    non_root = plan(checkout, tmp_path, non_root=True)
    assert flag(non_root.commands[0].argv, "--target") == ["runtime-nonroot"]
    assert "runtime-nonroot" in dockerfile_mod.dockerfile_stages(dockerfile_mod.FORGE_DOCKERFILE)
    assert non_root.image == root.image + "-nonroot"  # never overwrites the root image's tag
    assert non_root.labels["org.vllm-forge.user"] == "vllm (uid 2000, gid 0)"
    assert root.labels["org.vllm-forge.user"] == "root"
    forge = dockerfile_mod.FORGE_DOCKERFILE
    assert dockerfile_mod.dockerfile_args(forge)["VLLM_UID"] == "2000"  # the label reads it from here


def test_non_root_stage_has_a_numeric_user_and_writable_caches():
    text = dockerfile_mod.FORGE_DOCKERFILE.read_text()
    stage = text[text.index("AS runtime-nonroot"):]
    assert "USER ${VLLM_UID}:0" in stage  # numeric: Kubernetes runAsNonRoot can verify it
    for env in ("HOME=/home/vllm", "HF_HOME=", "VLLM_CACHE_ROOT=", "TORCHINDUCTOR_CACHE_DIR=", "TRITON_CACHE_DIR="):
        assert env in stage
    assert "chmod -R g=u" in stage  # an arbitrary uid in group 0 can write too


def test_non_root_is_about_the_runtime_target(checkout, tmp_path):
    with pytest.raises(ForgeError, match="--non-root"):
        plan(checkout, tmp_path, non_root=True, target="build")


def test_upstream_non_root_needs_vllms_nonroot_stage(checkout, tmp_path):
    (checkout / "docker").mkdir()
    dockerfile = checkout / "docker" / "Dockerfile"
    dockerfile.write_text(UPSTREAM_FIXTURE.read_text())
    with pytest.raises(ForgeError, match="vllm-openai-nonroot"):
        plan(checkout, tmp_path, dockerfile="upstream", non_root=True)
    dockerfile.write_text(UPSTREAM_FIXTURE.read_text() + "FROM vllm-openai AS vllm-openai-nonroot\nUSER vllm\n")
    up = plan(checkout, tmp_path, dockerfile="upstream", non_root=True)
    assert flag(up.commands[0].argv, "--target") == ["vllm-openai-nonroot"]
    assert up.labels["org.vllm-forge.user"].startswith("non-root")


def test_invoke_yaml_key(tmp_path):
    (tmp_path / "invoke.yaml").write_text("forge:\n  non_root: true\n")
    config = Config(project_location=str(tmp_path))
    config.load_collection({"forge": dict(DEFAULTS)})
    config.load_project()
    assert resolve_config(config_layers(config), {}).config.non_root is True
    assert resolve_config(None, {}).config.non_root is False


def test_serve_mounts_the_hf_cache_where_the_image_keeps_it(monkeypatch):
    monkeypatch.setattr(serve, "image_runtime", lambda docker, image: ("2000:0", "/home/vllm/.cache/huggingface"))
    monkeypatch.setattr(serve.os, "getuid", lambda: 1000)
    request = serve.ServeRequest(model="m", image="vllm-forge/vllm:x-nonroot", env={})
    argv = serve.plan_serve(request).argv
    assert flag(argv, "-v")[0].endswith(".cache/huggingface:/home/vllm/.cache/huggingface")
    assert flag(argv, "--user") == ["1000:0"]  # files in the host's HF cache belong to the caller
    service = yaml.safe_load(serve.compose_file(request))["services"]["vllm-forge-serve"]
    assert service["volumes"][0].endswith(":/home/vllm/.cache/huggingface") and service["user"] == "1000:0"


def test_run_as():
    assert serve.run_as("2000:0", uid=1000) == ["--user", "1000:0"]
    assert serve.run_as("2000:0", uid=0) == []  # a root caller keeps the image's own user
    for root_image in ("", "root", "0", "0:0"):
        assert serve.run_as(root_image, uid=1000) == []


def test_image_runtime_of_an_image_that_is_not_here():
    assert serve.image_runtime("/nonexistent/docker", "x") == ("", serve.ROOT_HF_CACHE)
