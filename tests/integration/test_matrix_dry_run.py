"""The whole image matrix as dry runs: nox -> invoke bake -> the exact docker build per CUDA.

Needs a docker client (`bake` picks one and prints its command line), no engine, no registry, no GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import require_tool
from vllm_forge.gpu import archs, compat
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.image import mirrors
from vllm_forge.matrix import matrix

pytestmark = pytest.mark.integration


def dry_run(repo_root, *posargs):
    require_tool("docker client", bool(os.environ.get("VLLM_FORGE_DOCKER") or shutil.which("docker")))
    sessions = [matrix.image_session_name(cuda) for cuda in matrix.image_cudas()]
    proc = subprocess.run([sys.executable, "-m", "nox", "-s", *sessions, "--", "--dry-run",
                           "--vllm-src", "tests/fixtures/minivllm", *posargs],
                          cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    builds = [line for line in proc.stdout.splitlines() if re.search(r"docker build .*-f \S+Dockerfile", line)]
    assert len(builds) == len(sessions)
    # keyed "12.8": the key of compat's tables and what the build args say
    return dict(zip((cuda.minor_str for cuda in matrix.image_cudas()), builds, strict=True))


def build_arg(line: str, name: str) -> str:
    m = re.search(rf"--build-arg '?{name}=([^' ]*)'?", line)
    return m.group(1) if m else ""


def expected_base(cuda: str) -> str:
    """The miniature pins torch 2.6.0 and no CUDA release (vllm_forge/image/recipe.py): where the PyTorch index has a
    2.6.0 build for the CUDA, NVIDIA's CUDA -devel image gets it; elsewhere NGC's image, with its own torch."""
    if cuda in compat.PYTORCH_CUDA_BUILDS["2.6"]:
        runtime = compat.CUDA_RUNTIME_IMAGES[cuda]
        return runtime.replace("-base-", "-devel-")
    return compat.default_ngc_tag(CudaRelease.parse(cuda)).image


def test_every_cuda_bakes_on_its_own_bases_and_default_archs(repo_root):
    for cuda, line in dry_run(repo_root).items():
        assert build_arg(line, "BUILD_BASE_IMAGE") == expected_base(cuda)
        assert build_arg(line, "TORCH_REQUIREMENT") == ("torch==2.6.0" if "-devel-" in expected_base(cuda) else "")
        assert build_arg(line, "FINAL_BASE_IMAGE") == compat.CUDA_RUNTIME_IMAGES[cuda]
        expected = archs.torch_cuda_arch_list(archs.parse_arch_list(compat.DEFAULT_ARCH_LIST[cuda]))
        assert build_arg(line, "torch_cuda_arch_list") == expected
        assert build_arg(line, "CUDA_VERSION") == cuda
        assert "PIP_INDEX_URL" not in line  # global: the tools' own defaults


def test_the_cn_mirror_rewrites_bases_and_indexes(repo_root):
    cn = mirrors.load_mirror("cn")
    for cuda, line in dry_run(repo_root, "--mirror", "cn").items():
        assert build_arg(line, "BUILD_BASE_IMAGE") == "m.daocloud.io/" + expected_base(cuda)
        assert build_arg(line, "FINAL_BASE_IMAGE") == "m.daocloud.io/" + compat.CUDA_RUNTIME_IMAGES[cuda]
        assert build_arg(line, "PIP_INDEX_URL") == cn.pypi_index
        assert build_arg(line, "UV_DEFAULT_INDEX") == cn.pypi_index
        assert build_arg(line, "PYTORCH_CUDA_INDEX_BASE_URL") == cn.pytorch_index
        assert build_arg(line, "APT_MIRROR") == cn.apt_mirror


def project_copy(repo_root, dest):
    """This repo's tasks, sessions and package without any checkout, cache or build output: a fresh clone."""
    for name in ("tasks.py", "noxfile.py", "pyproject.toml", "requirements.txt"):
        shutil.copy2(repo_root / name, dest / name)
    for name in ("vllm_forge", "docker"):
        shutil.copytree(repo_root / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def offline_env(tmp_path):
    """No network (every proxy at a closed port), no Docker engine (a socket nobody listens on)."""
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "COLUMNS": "400"}
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"):
        env[name] = "http://127.0.0.1:9"
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    return env


def test_fresh_clone_dry_run_prints_the_whole_chain_offline(repo_root, tmp_path):
    """`nox -s image-cu128 -- --arch 12.0 --dry-run` with no checkout, no engine and no network."""
    (tmp_path / "project").mkdir()
    project = project_copy(repo_root, tmp_path / "project")
    proc = subprocess.run([sys.executable, "-m", "nox", "-s", "image-cu128", "--", "--arch", "12.0", "--dry-run"],
                          cwd=project, capture_output=True, text=True, timeout=300, env=offline_env(tmp_path))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for step in ("clone", "use-existing-torch", "bake", "check-size --image", "inspect"):
        assert re.search(rf"^{re.escape(step)} ─+$", out, re.M), step
    # git runs with the tree's code-running settings switched off (scripts/git_safe.py): `git -c ... clone`
    assert re.search(r"\bgit( -c \S+)* clone --filter=blob:none", out) and "planned after clone" in out
    assert re.search(r"docker build .*--build-arg torch_cuda_arch_list=12\.0 .*-t vllm-forge/vllm:main-cu128-sm120",
                     out)
    assert not (project / "build" / "vllm").exists()


def test_mirror_precedence_through_nox(repo_root, tmp_path):
    """invoke.yaml says cn; `-- --mirror global` on the nox line wins (flag > env > invoke.yaml > default)."""
    (tmp_path / "project").mkdir()
    project = project_copy(repo_root, tmp_path / "project")
    (project / "invoke.yaml").write_text("forge:\n  mirror: cn\n")
    run = [sys.executable, "-m", "nox", "-s", "image-cu128", "--", "--arch", "12.0", "--dry-run"]
    env = offline_env(tmp_path)
    from_yaml = subprocess.run(run, cwd=project, capture_output=True, text=True, timeout=300, env=env)
    flag = subprocess.run([*run, "--mirror", "global"], cwd=project, capture_output=True, text=True, timeout=300,
                          env=env)
    env_var = subprocess.run(run, cwd=project, capture_output=True, text=True, timeout=300,
                             env={**env, "INVOKE_FORGE_MIRROR": "global"})
    cn = mirrors.load_mirror("cn")
    assert from_yaml.returncode == flag.returncode == env_var.returncode == 0, from_yaml.stderr + flag.stderr
    assert "m.daocloud.io/nvcr.io" in from_yaml.stdout and cn.pypi_index in from_yaml.stdout
    assert "org.vllm-forge.mirror=cn" in from_yaml.stdout
    for proc in (flag, env_var):
        assert "daocloud" not in proc.stdout and cn.pypi_index not in proc.stdout
        assert "org.vllm-forge.mirror=global" in proc.stdout
