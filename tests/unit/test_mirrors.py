"""Mirror profiles: built-ins, invoke.yaml profiles with extends, image / git / index rewrites."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.image import mirrors
from vllm_forge.image.mirrors import load_mirror, rewrite_git_url, rewrite_image

CN = load_mirror("cn")
GLOBAL = load_mirror("global")


@pytest.mark.parametrize(("image", "expected"), [
    ("nvcr.io/nvidia/pytorch:25.02-py3", "m.daocloud.io/nvcr.io/nvidia/pytorch:25.02-py3"),
    ("nvcr.io/nvidia/cuda:12.8.1-runtime-ubuntu24.04", "m.daocloud.io/nvcr.io/nvidia/cuda:12.8.1-runtime-ubuntu24.04"),
    ("docker.io/library/ubuntu:24.04", "docker.m.daocloud.io/library/ubuntu:24.04"),
    ("ubuntu:24.04", "docker.m.daocloud.io/library/ubuntu:24.04"),  # implicit Docker Hub official image
    ("ubuntu", "docker.m.daocloud.io/library/ubuntu"),
    ("vllm/vllm-openai:v0.11.0", "docker.m.daocloud.io/vllm/vllm-openai:v0.11.0"),  # implicit Docker Hub user image
    ("index.docker.io/library/debian:12", "docker.m.daocloud.io/library/debian:12"),
    ("ghcr.io/org/img@sha256:abc", "m.daocloud.io/ghcr.io/org/img@sha256:abc"),
    ("registry.example.com:5000/team/vllm:1", "registry.example.com:5000/team/vllm:1"),  # not mirrored
    ("localhost/vllm:dev", "localhost/vllm:dev"),
    ("m.daocloud.io/nvcr.io/nvidia/pytorch:25.02-py3", "m.daocloud.io/nvcr.io/nvidia/pytorch:25.02-py3"),  # idempotent
    ("${BUILD_BASE_IMAGE}", "${BUILD_BASE_IMAGE}"),
    ("", ""),
])
def test_rewrite_image_cn(image, expected):
    assert rewrite_image(image, CN) == expected


def test_global_rewrites_nothing():
    assert not GLOBAL.rewrites_anything
    for image in ("nvcr.io/nvidia/pytorch:25.02-py3", "ubuntu:24.04"):
        assert rewrite_image(image, GLOBAL) == image
    assert mirrors.mirror_env(GLOBAL) == {}


def test_split_image_follows_docker_reference_rules():
    assert mirrors.split_image("pytorch:1") == ("docker.io", "library/pytorch:1")
    assert mirrors.split_image("a/b") == ("docker.io", "a/b")
    assert mirrors.split_image("my.reg/a/b:c") == ("my.reg", "a/b:c")
    assert mirrors.split_image("REGISTRY-1.DOCKER.IO/a/b") == ("docker.io", "a/b")


def test_mirror_env_names_every_variable_pip_uv_and_the_dockerfile_read():
    env = mirrors.mirror_env(CN)
    assert env["PIP_INDEX_URL"] == env["UV_DEFAULT_INDEX"] == env["UV_INDEX_URL"] == CN.pypi_index
    assert env["PIP_INDEX_URL"].startswith("https://") and env["PIP_INDEX_URL"].endswith("/simple")
    assert env["PYTORCH_CUDA_INDEX_BASE_URL"] == CN.pytorch_index
    assert env["APT_MIRROR"] == CN.apt_mirror and "://" in env["APT_MIRROR"]


def test_pytorch_index_keeps_the_cuda_suffix():
    assert mirrors.pytorch_index_base() == "https://download.pytorch.org/whl"
    assert mirrors.pytorch_index_url(CudaRelease.parse("12.8"), GLOBAL) == compat.PYTORCH_WHEEL_INDEX["12.8"]
    assert mirrors.pytorch_index_url(CudaRelease.parse("13.0.2"), CN) == CN.pytorch_index + "/cu130"


def test_rewrite_git_url_uses_the_fetch_deps_proxy_convention():
    proxied = load_mirror("lab", {"lab": {"extends": "cn", "github_proxy": "https://ghproxy.example"}})
    url = "https://github.com/vllm-project/vllm.git"
    assert rewrite_git_url(url, proxied) == "https://ghproxy.example/https://github.com/vllm-project/vllm.git"
    assert rewrite_git_url("http://github.com/a/b", proxied) == "https://ghproxy.example/https://github.com/a/b"
    assert rewrite_git_url("https://gitlab.com/a/b.git", proxied) == "https://gitlab.com/a/b.git"
    assert rewrite_git_url("git@github.com:a/b.git", proxied) == "git@github.com:a/b.git"  # ssh: no proxy
    assert rewrite_git_url(url, CN) == url  # no public proxy built in


def test_unknown_profile_is_a_forge_error_listing_known_ones():
    with pytest.raises(ForgeError) as info:
        load_mirror("moon", {"lab": {}})
    message = str(info.value)
    assert "'moon'" in message and "cn" in message and "global" in message and "lab" in message
    assert "forge.mirrors.moon" in message


def test_user_profile_extends_and_overrides():
    user = {"lab": {"extends": "cn", "pypi_index": "https://pypi.lab.example/simple",
                    "registries": {"nvcr.io": "harbor.lab.example/nvcr", "quay.io": ""}}}
    lab = load_mirror("lab", user)
    assert lab.extends == "cn"
    assert lab.pypi_index == "https://pypi.lab.example/simple"
    assert lab.apt_mirror == CN.apt_mirror  # inherited
    assert rewrite_image("nvcr.io/nvidia/pytorch:25.02-py3", lab) == "harbor.lab.example/nvcr/nvidia/pytorch:25.02-py3"
    assert rewrite_image("ubuntu:24.04", lab) == "docker.m.daocloud.io/library/ubuntu:24.04"
    assert rewrite_image("quay.io/a/b", lab) == "quay.io/a/b"  # "" removes an inherited registry
    assert load_mirror("cn").registries["nvcr.io"] == "m.daocloud.io/nvcr.io"  # built-in left untouched


def test_user_profile_chain_and_builtin_override():
    user = {"a": {"extends": "b", "apt_mirror": "http://apt.a"}, "b": {"pypi_index": "https://b/simple"},
            "cn": {"apt_mirror": "https://mirrors.ustc.edu.cn"}}
    a = load_mirror("a", user)
    assert (a.apt_mirror, a.pypi_index, a.registries) == ("http://apt.a", "https://b/simple", {})
    cn = load_mirror("cn", user)
    assert cn.apt_mirror == "https://mirrors.ustc.edu.cn" and cn.pypi_index == CN.pypi_index


@pytest.mark.parametrize(("user", "words"), [
    ({"x": {"extends": "y"}, "y": {"extends": "x"}}, "loop"),
    ({"x": {"extends": "nope"}}, "'nope' (extended by x)"),
    ({"x": {"pypi_url": "https://a"}}, "unknown key"),
    ({"x": {"pypi_index": "pypi.lab/simple"}}, "not a URL"),
    ({"x": {"registries": {"nvcr.io": "https://harbor/nvcr"}}}, "not a registry prefix"),
    ({"x": {"registries": ["nvcr.io"]}}, "must map registry hosts"),
    ({"x": "cn"}, "must be a mapping"),
])
def test_bad_user_profiles_are_forge_errors(user, words):
    with pytest.raises(ForgeError) as info:
        load_mirror("x", user)
    assert words in str(info.value)


def test_user_mirrors_from_invoke_config():
    assert mirrors.user_mirrors_from(None) == {}
    assert mirrors.user_mirrors_from({"forge": {"mirror": "cn"}}) == {}
    assert mirrors.user_mirrors_from({"forge": {"mirrors": {"lab": {}}}}) == {"lab": {}}


def test_apply_mirror_rewrites_default_and_explicit_bases():
    config = SimpleNamespace(cuda="13.0", base_image="", runtime_image="",
                             vllm_repo="https://github.com/vllm-project/vllm.git")
    applied = mirrors.apply_mirror(CN, config, cuda=CudaRelease(13, 0))
    ngc = compat.default_ngc_tag(CudaRelease.parse("13.0")).image
    assert applied.base_image == "m.daocloud.io/" + ngc
    assert applied.runtime_image == "m.daocloud.io/" + compat.CUDA_RUNTIME_IMAGES["13.0"]
    assert applied.pypi_index == CN.pypi_index and applied.pytorch_index == CN.pytorch_index
    assert applied.apt_mirror == CN.apt_mirror and applied.env["PIP_INDEX_URL"] == CN.pypi_index
    # global: nothing named, so a recipe keeps its own default base; an explicit one is kept as given
    assert mirrors.apply_mirror(GLOBAL, config, cuda=CudaRelease(13, 0)).base_image == ""
    explicit = mirrors.apply_mirror(GLOBAL, SimpleNamespace(cuda="12.8", base_image="my.reg/pytorch:1",
                                                            runtime_image="", vllm_repo="x"))
    assert (explicit.base_image, explicit.runtime_image, explicit.env) == ("my.reg/pytorch:1", "", {})


def test_describe_mirror_rows():
    config = SimpleNamespace(cuda="12.8", base_image="", runtime_image="",
                             vllm_repo="https://github.com/vllm-project/vllm.git")
    rows = {what: (old, new) for what, old, new in mirrors.describe_mirror(CN, config)}
    assert all(old == new for _, old, new in mirrors.describe_mirror(GLOBAL, config))
    assert set(rows) == {"build base image", "runtime base image", "PyPI index (pip, uv)", "PyTorch wheel index",
                         "vLLM clone URL", "apt sources (image)"}
    assert rows["build base image"] == ("nvcr.io/nvidia/pytorch:25.02-py3",
                                        "m.daocloud.io/nvcr.io/nvidia/pytorch:25.02-py3")
    assert rows["PyTorch wheel index"][1].endswith("/cu128")
    assert rows["vLLM clone URL"][0] == rows["vLLM clone URL"][1]
    odd = SimpleNamespace(cuda="11.8", base_image="", runtime_image="", vllm_repo="x")
    originals = {what: old for what, old, _ in mirrors.describe_mirror(CN, odd, CudaRelease(11, 8))}
    assert "none known for CUDA 11.8" in originals["build base image"]


def test_standalone_cli(repo_root):
    out = subprocess.run([sys.executable, "-m", "vllm_forge.image.mirrors", "cn", "--cuda", "12.9",
                          "--image", "ubuntu:24.04"], cwd=repo_root, capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    assert data["env"]["PIP_INDEX_URL"] == CN.pypi_index
    assert data["rewrites"][-1]["rewritten"] == "docker.m.daocloud.io/library/ubuntu:24.04"
    bad = subprocess.run([sys.executable, "-m", "vllm_forge.image.mirrors", "nope"], cwd=repo_root, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "not defined" in bad.stderr


def test_invoke_plan_shows_what_the_profile_rewrites(repo_root, tmp_path):
    runtime = tmp_path / "lab.yaml"
    runtime.write_text("forge:\n  mirrors:\n    lab:\n      extends: cn\n"
                       "      registries: {nvcr.io: harbor.lab.example/nvcr}\n"
                       "      github_proxy: https://ghproxy.lab.example/\n")
    proc = subprocess.run([sys.executable, "-m", "invoke", "-f", str(runtime), "plan", "--mirror", "lab",
                           "--cuda", "13.0", "--arch", "12.0"], cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "mirror lab: lab from invoke.yaml, extends cn" in proc.stdout
    assert ("build base image: nvcr.io/nvidia/pytorch:25.10-py3 -> harbor.lab.example/nvcr/nvidia/pytorch:25.10-py3"
            in proc.stdout)
    torch_row = f"PyTorch wheel index: https://download.pytorch.org/whl/cu130 -> {CN.pytorch_index}/cu130"
    assert torch_row in proc.stdout
    assert "-> https://ghproxy.lab.example/https://github.com/vllm-project/vllm.git" in proc.stdout
    plain = subprocess.run([sys.executable, "-m", "invoke", "plan"], cwd=repo_root, capture_output=True, text=True)
    assert "mirror global: upstream registries and indexes, nothing rewritten" in plain.stdout
    bad = subprocess.run([sys.executable, "-m", "invoke", "plan", "--mirror", "moon"], cwd=repo_root,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "mirror profile 'moon' is not defined" in bad.stderr
    assert "Traceback" not in bad.stderr
