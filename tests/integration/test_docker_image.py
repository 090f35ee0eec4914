"""Bake, serve and inspect on a real Docker engine, with the TEST-ONLY stand-in base images.

No registry is reachable in CI, so the bases are `vllm_forge/image/standin_images.py`'s debootstrapped Debian
images (build: nvcc 13 from PyPI; runtime: python only). The recipe is the real docker/Dockerfile.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.gpu.cuda_release import CudaRelease

pytestmark = [pytest.mark.integration, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_FIXTURE = REPO / "tests" / "fixtures" / "upstream_dockerfile" / "Dockerfile"


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, minivllm_repo) -> Path:
    dest = tmp_path_factory.mktemp("bake") / "vllm"
    subprocess.run(["git", "clone", "-q", minivllm_repo, str(dest)], check=True)
    return dest


@pytest.fixture(scope="module")
def ca_bundle():
    from vllm_forge.image.request import default_ca_bundle

    return default_ca_bundle()[0]


def bake_request(checkout, standins, tmp_path, ca_bundle, **kw):
    from vllm_forge.image.request import BakeRequest

    return BakeRequest(
        src=checkout,
        archs=parse_arch_list("12.0"),
        cuda=CudaRelease(13, 0),
        base_image=standins["build"],
        runtime_image=standins["runtime"],
        ca_bundle=ca_bundle,
        context_dir=tmp_path / "bake",
        dist_dir=tmp_path / "dist",
        **kw,
    )


def docker_out(client, *args) -> str:
    return subprocess.run([client.path, *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def baked(client, standins, checkout, tmp_path_factory, ca_bundle):
    """One cold-ish bake of the miniature (the layer cache may be warm from earlier runs)."""
    from vllm_forge.image.bake import run_bake
    from vllm_forge.image.bake_plan import plan_bake

    tmp = tmp_path_factory.mktemp("baked")
    tag = f"vllm-forge-test/mini:{uuid.uuid4().hex[:8]}"
    plan = plan_bake(bake_request(checkout, standins, tmp, ca_bundle, tag=tag), client)
    result = run_bake(plan)
    yield plan, result, tmp
    subprocess.run([client.path, "rmi", "-f", tag], capture_output=True)


def test_image_has_labels_and_no_build_leftovers(client, baked, standins):
    from vllm_forge.image.inspection import inspect_image

    plan, result, _ = baked
    labels = inspect_image(client.path, plan.image)["labels"]
    assert labels["org.vllm-forge.arch-list"] == "12.0" and labels["org.vllm-forge.cuda"] == "13.0"
    assert labels["org.vllm-forge.build-base"] == standins["build"]
    assert labels["org.opencontainers.image.base.name"] == standins["runtime"]
    assert len(labels["org.vllm-forge.vllm.commit"]) == 40 and labels["org.vllm-forge.version"]
    assert labels["org.vllm-forge.jit"].startswith("nvcc 13.0 (pip:cuda-toolkit[")
    # No build leftovers; the JIT toolchain (nvcc from NVIDIA's CUDA 13 wheels, a host compiler) is there.
    probe = (
        "test ! -e /workspace && test ! -e /opt/vllm-forge/vllm_forge && test ! -e /opt/vllm-forge/late "
        '&& test -z "$(find /root/.cache -type f)" && test -z "$(find /var/cache/apt -name "*.deb")" '
        "&& nvcc --version | grep -q 'release 13.0' && command -v c++ >/dev/null "
        "&& python3 -c 'import vllm, os; print(os.path.dirname(vllm.__file__))'"
    )
    out = subprocess.run(
        [client.path, "run", "--rm", "--entrypoint", "sh", plan.image, "-c", probe], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "/opt/venv/" in out.stdout  # installed from the wheel, into the venv


def test_image_size_over_runtime_base_is_the_jit_toolchain_and_the_wheel(client, baked):
    from vllm_forge.image.inspection import SIZE_PARTS, image_size_breakdown, image_size_report

    plan, _, _ = baked
    report = image_size_report(client.path, plan.image, budget_gb=5)
    assert report.ok and report.base_size is not None
    assert any(layer.instruction.startswith("RUN ") and "pip install" in layer.instruction for layer in report.layers)
    assert not image_size_report(client.path, plan.image, budget_gb=0.01).ok
    split = image_size_breakdown(client.path, plan.image)
    jit, torch, vllm, rest = (split.parts[name] for name in SIZE_PARTS)
    assert 150e6 < jit < 900e6, split.parts  # nvcc/nvvm/crt/cudart wheels and g++
    assert torch == 0 and 0 < vllm < 10e6, split.parts  # no torch in the miniature; its wheel is ~2 MB
    assert abs(sum(split.parts.values()) - split.over_base) < 5e6 and rest < 50e6, split.parts
    assert any(key.startswith("nvidia-cuda-nvcc==13.0") for key in split.dists)


def test_runtime_without_jit_toolchain_fails_the_bake_and_no_jit_passes(client, standins, checkout, tmp_path,
                                                                        ca_bundle):
    from vllm_forge.core.errors import ForgeError
    from vllm_forge.image.bake import run_bake
    from vllm_forge.image.bake_plan import plan_bake
    from vllm_forge.image.inspection import inspect_image

    tag = f"vllm-forge-test/nojit:{uuid.uuid4().hex[:8]}"
    try:
        no_toolchain = bake_request(checkout, standins, tmp_path, ca_bundle, tag=tag,
                                    build_args={"JIT_TOOLCHAIN": "none"})
        with pytest.raises(ForgeError) as failed:
            run_bake(plan_bake(no_toolchain, client))
        message = str(failed.value)
        assert "\n" not in message and "cannot JIT-compile kernels: no nvcc" in message and "sm_120" in message
        assert "--no-jit" in message
        assert subprocess.run([client.path, "image", "inspect", tag], capture_output=True).returncode != 0
        plan = plan_bake(bake_request(checkout, standins, tmp_path, ca_bundle, tag=tag, jit=False), client)
        assert plan.build_args["JIT_TOOLCHAIN"] == "none" and plan.build_args["JIT_CHECK"] == "false"
        run_bake(plan)
        assert inspect_image(client.path, tag)["labels"]["org.vllm-forge.jit"] == "none (--no-jit)"
        probe = subprocess.run([client.path, "run", "--rm", "--entrypoint", "sh", tag, "-c", "command -v nvcc"],
                               capture_output=True, text=True)
        assert probe.returncode != 0
    finally:
        subprocess.run([client.path, "rmi", "-f", tag], capture_output=True)


def test_rebake_is_cached_and_final_stage_change_does_not_recompile(client, baked, standins, checkout, ca_bundle):
    from vllm_forge.image.bake import run_bake
    from vllm_forge.image.bake_plan import plan_bake

    plan, first, tmp = baked
    dangling = docker_out(client, "images", "-q", "--no-trunc", "--filter", "dangling=true").split()
    again = run_bake(plan_bake(bake_request(checkout, standins, tmp, ca_bundle, tag=plan.image), client))
    assert again.executed == [] and again.seconds < 30, again.executed
    # nothing changed, so nothing new: the same image (its `created` label is the sources' date), no dangling one
    assert again.image_id == first.image_id
    assert first.image_id not in docker_out(client, "images", "-q", "--no-trunc", "--filter", "dangling=true").split()
    assert len(docker_out(client, "images", "-q", "--no-trunc", "--filter", "dangling=true").split()) <= len(dangling)
    changed = run_bake(
        plan_bake(
            bake_request(
                checkout,
                standins,
                tmp,
                ca_bundle,
                tag=plan.image,
                pytorch_index_base_url="https://pytorch-mirror.invalid/whl",
            ),
            client,
        )
    )
    assert changed.executed and all(step.startswith("[runtime") for step in changed.executed), changed.executed


def test_serve_smoke_and_stop(client, baked):
    from vllm_forge.serve import serve

    plan, _, _ = baked
    name = f"vllm-forge-test-{uuid.uuid4().hex[:6]}"
    request = serve.ServeRequest(
        model="minivllm/echo", image=plan.image, gpus="none", port=18931, name=name, api_key="test-key", env={}
    )
    started, healthy, result = serve.serve(request, docker=client.path, timeout_s=60)
    try:
        assert result.models == ["minivllm/echo"] and "Say hello" in result.reply
        ports = docker_out(client, "port", name)
        assert "127.0.0.1:18931" in ports and "0.0.0.0" not in ports
        import requests

        assert requests.get(f"{started.url}/v1/models", timeout=5).status_code == 401  # the key is required
    finally:
        assert "removed" in serve.stop(name, client.path)
    assert subprocess.run([client.path, "container", "inspect", name], capture_output=True).returncode != 0


def test_serve_failure_shows_logs_and_cleans_up(client, standins):
    from vllm_forge.core.errors import ForgeError
    from vllm_forge.serve import serve

    # The server's entrypoint on the runtime stand-in, which has no vLLM: it starts, then dies.
    broken = "vllm-forge-test/broken:latest"
    dockerfile = f'FROM {standins["runtime"]}\nENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]\n'
    subprocess.run(
        client.build_argv + ["-q", "-t", broken, "-"],
        input=dockerfile,
        text=True,
        check=True,
        capture_output=True,
        env={**os.environ, **client.build_env},
    )
    name = f"vllm-forge-test-{uuid.uuid4().hex[:6]}"
    request = serve.ServeRequest(model="x", image=broken, gpus="none", port=18932, name=name, env={})
    try:
        with pytest.raises(ForgeError, match="No module named 'vllm'"):  # the container's own last log lines
            serve.serve(request, docker=client.path, timeout_s=30)
    finally:
        subprocess.run([client.path, "rmi", "-f", broken], capture_output=True)
    assert subprocess.run([client.path, "container", "inspect", name], capture_output=True).returncode != 0


def test_wheel_target_exports_only_the_wheel(client, standins, checkout, tmp_path, ca_bundle):
    from vllm_forge.image.bake import run_bake
    from vllm_forge.image.bake_plan import plan_bake

    result = run_bake(plan_bake(bake_request(checkout, standins, tmp_path, ca_bundle, target="wheel"), client))
    assert [p.name for p in (tmp_path / "dist").iterdir()] == [result.wheels[0].name]
    assert result.wheels[0].name.endswith("-cp38-abi3-linux_x86_64.whl")


def test_upstream_recipe_from_the_same_config(client, standins, checkout, tmp_path, ca_bundle):
    from vllm_forge.image.bake import run_bake
    from vllm_forge.image.bake_plan import plan_bake
    from vllm_forge.image.inspection import image_size_report

    up = tmp_path / "up"
    shutil.copytree(checkout, up, symlinks=True)
    (up / "docker").mkdir()
    shutil.copy(UPSTREAM_FIXTURE, up / "docker" / "Dockerfile")
    tag = f"vllm-forge-test/upstream:{uuid.uuid4().hex[:8]}"
    try:
        wheel = run_bake(
            plan_bake(
                bake_request(
                    up,
                    standins,
                    tmp_path,
                    ca_bundle,
                    dockerfile="upstream",
                    target="wheel",
                    tag=tag,
                    max_jobs=2,
                    nvcc_threads=1,
                ),
                client,
            )
        )
        received = (tmp_path / "dist" / "received-args.txt").read_text()
        assert "torch_cuda_arch_list=12.0\n" in received and "vllm_fa_cmake_gpu_arches=120-real\n" in received
        assert "max_jobs=2\n" in received and wheel.wheels
        served = plan_bake(bake_request(up, standins, tmp_path, ca_bundle, dockerfile="upstream", tag=tag), client)
        run_bake(served)
        assert image_size_report(client.path, tag).over_base is not None
        out = docker_out(client, "run", "--rm", "--entrypoint", "python3", tag, "-c", "import vllm; print('ok')")
        assert out.strip() == "ok"
    finally:
        subprocess.run([client.path, "rmi", "-f", tag, f"{tag}-build"], capture_output=True)


def test_secrets_appear_nowhere_in_the_image(client, standins, checkout, tmp_path, ca_bundle):
    """CA bundle, netrc and an index URL with credentials go in as BuildKit secrets: none of their
    values may show up in `docker history`, `docker inspect` or any layer of the image."""
    from vllm_forge.image.bake import run_bake
    from vllm_forge.image.bake_plan import plan_bake

    if ca_bundle is None:
        pytest.skip("no CA bundle on this host to extend")
    marker = f"forge-secret-{uuid.uuid4().hex}"
    bundle = tmp_path / "ca.pem"
    bundle.write_text(Path(ca_bundle).read_text() + f"\n# {marker}-ca\n")
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine private-index.invalid login forge password {marker}-netrc\n")
    index = f"https://forge:{marker}-index@pypi.org/simple"
    tag = f"vllm-forge-test/secrets:{uuid.uuid4().hex[:8]}"
    try:
        request = bake_request(
            checkout, standins, tmp_path, bundle, tag=tag, no_cache=True, netrc=netrc, index_url=index
        )
        plan = plan_bake(request, client)
        assert marker not in "\n".join(plan.lines())
        run_bake(plan)  # pip reached PyPI through the secret CA bundle, with the secret index URL
        build_tag = f"{tag}-build"
        run_bake(
            plan_bake(
                bake_request(
                    checkout, standins, tmp_path, bundle, tag=build_tag, target="build", netrc=netrc, index_url=index
                ),
                client,
            )
        )
        assert not (tmp_path / "bake" / "secrets" / "pip_index_url").exists()  # removed after the run
        for ref in (tag, build_tag):
            history = docker_out(client, "history", "--no-trunc", ref)
            inspect = docker_out(client, "inspect", ref)
            assert marker not in history and marker not in inspect
            archive = tmp_path / "image.tar"
            subprocess.run([client.path, "save", "-o", str(archive), ref], check=True)
            scanned = 0
            with tarfile.open(archive) as outer:
                manifest = json.load(outer.extractfile("manifest.json"))
                for layer in manifest[0]["Layers"]:
                    with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
                        for member in inner:
                            if member.isfile():
                                data = inner.extractfile(member).read()
                                assert marker.encode() not in data, f"{ref}: {member.name} holds a secret"
                                scanned += 1
                config = outer.extractfile(manifest[0]["Config"]).read()
                assert marker.encode() not in config
            assert scanned > 100  # the layers were really read
            archive.unlink()
    finally:
        subprocess.run([client.path, "rmi", "-f", tag, f"{tag}-build"], capture_output=True)


def test_cli_bake_dry_run_names_the_client(client, checkout):
    env = {**os.environ, "VLLM_FORGE_DOCKER": client.path}
    out = subprocess.run(
        ["invoke", "bake", "--vllm-src", str(checkout), "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert f"# docker client: {client.path}" in out.stdout and "--target runtime" in out.stdout
