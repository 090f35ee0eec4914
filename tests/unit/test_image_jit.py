"""The runtime stage's JIT toolchain, its in-bake check, base-image checks and the size split (no engine)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

# doctor_inside is self-contained on purpose: it runs inside images on its own.
from vllm_forge.gpu import archs, compat, doctor_inside
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.image import bake_plan, bases, docker_client, dockerfile, inspection, jit, request

REPO = Path(__file__).resolve().parents[2]
BUILDKIT = docker_client.DockerClient("/usr/bin/docker", "buildkit", "20.10.24")


@pytest.fixture
def checkout(tmp_path) -> Path:
    src = tmp_path / "vllm"
    (src / "requirements").mkdir(parents=True)
    (src / "setup.py").write_text("print('setup')\n")
    (src / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.26)\n")
    (src / "vllm").mkdir()
    (src / "vllm" / "__init__.py").write_text("")
    (src / "requirements" / "build.txt").write_text("cmake\n")
    (src / "requirements" / "cuda.txt").write_text("torch==2.8.0\n")
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    return src


def req(src, tmp_path, arch="12.0", cuda="12.8", **kw) -> request.BakeRequest:
    """A request as the resolved settings make it: ``arch``/``cuda`` as typed on a command line, parsed once."""
    return request.BakeRequest(src=src, archs=archs.parse_arch_list(arch), cuda=CudaRelease.parse(cuda),
                               context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist", **kw)


def jit_for(src, tmp_path, cuda, arch="12.0", **kw):
    bake = req(src, tmp_path, cuda=cuda, arch=arch, **kw)
    return jit.plan_jit_toolchain(bake, bake.archs)


def test_toolchain_follows_the_build_cuda(checkout, tmp_path):
    assert jit_for(checkout, tmp_path, "12.8").spec == compat.JIT_TOOLCHAINS["12.8"]
    assert jit_for(checkout, tmp_path, "12.8").spec.startswith("apt:cuda-nvcc-12-8 ")
    assert jit_for(checkout, tmp_path, "13.0").spec == "pip:cuda-toolkit[nvcc,nvvm,crt,cudart]==13.0.2"
    assert jit_for(checkout, tmp_path, "13.0", jit=False).spec == "none"
    assert jit_for(checkout, tmp_path, "13.0", jit=False).label == "none (--no-jit)"


def test_flashinfer_on_sm12x_raises_the_toolchain_to_12_9(checkout, tmp_path):
    (checkout / "requirements" / "cuda.txt").write_text("torch==2.8.0\nflashinfer-python==0.3.1\n")
    assert jit.checkout_needs_flashinfer(checkout)
    raised = jit_for(checkout, tmp_path, "12.8", "12.0")
    assert str(raised.cuda) == "12.9" and raised.spec == compat.JIT_TOOLCHAINS["12.9"] and "FlashInfer" in raised.why
    assert jit_for(checkout, tmp_path, "12.8", "9.0").cuda == CudaRelease(12, 8)  # Hopper only: the build's CUDA
    assert jit_for(checkout, tmp_path, "13.0", "12.0").cuda == CudaRelease(13, 0)


def test_every_runtime_cuda_has_a_toolchain_and_a_base_image():
    assert set(compat.CUDA_RUNTIME_IMAGES) <= set(compat.JIT_TOOLCHAINS)
    assert all("-base-" in tag for tag in compat.CUDA_RUNTIME_IMAGES.values())
    for cuda, spec in compat.JIT_TOOLCHAINS.items():
        assert spec.startswith(("apt:", "pip:"))
        if cuda.startswith("12."):  # NVIDIA's CUDA 12 wheels ship no nvcc driver: apt, as vLLM does
            assert spec.startswith("apt:cuda-nvcc-" + cuda.replace(".", "-"))


def test_dockerfile_defaults_are_the_default_bake():
    declared = dockerfile.dockerfile_args(dockerfile.FORGE_DOCKERFILE)
    assert declared["FINAL_BASE_IMAGE"] == compat.CUDA_RUNTIME_IMAGES["12.8"]
    # default bake: CUDA 12.8, sm_120, vLLM with FlashInfer -> the 12.9 toolchain
    assert declared["JIT_TOOLCHAIN"] == compat.JIT_TOOLCHAINS["12.9"] and declared["JIT_CHECK"] == "true"


def test_plan_passes_toolchain_check_and_label(checkout, tmp_path):
    plan = bake_plan.plan_bake(req(checkout, tmp_path, cuda="13.0", tag="t:1"), BUILDKIT)
    assert plan.build_args["JIT_TOOLCHAIN"] == compat.JIT_TOOLCHAINS["13.0"] and plan.build_args["JIT_CHECK"] == "true"
    assert plan.labels["org.vllm-forge.jit"] == f"nvcc 13.0 ({compat.JIT_TOOLCHAINS['13.0']})"
    off = bake_plan.plan_bake(req(checkout, tmp_path, cuda="13.0", tag="t:1", jit=False), BUILDKIT)
    assert off.build_args["JIT_TOOLCHAIN"] == "none" and off.build_args["JIT_CHECK"] == "false"
    assert "--label org.vllm-forge.jit=none (--no-jit)" in " ".join(off.commands[0].argv)


def fake_runner(local: set[str], remote: set[str]):
    def run(argv, **_kw):
        image_name = argv[-1]
        ok = image_name in local if argv[1] == "image" else image_name in remote
        return SimpleNamespace(returncode=0 if ok else 1, stdout="", stderr="")
    return run


def test_check_base_images_local_or_resolvable():
    run = fake_runner(local={"a:1"}, remote={"nvcr.io/x:1"})
    assert bases.check_base_images("docker", "a:1", "nvcr.io/x:1", runner=run) == []
    assert bases.check_base_images("docker", "nvcr.io/p:1", "b:1", runner=run) == ["nvcr.io/p:1", "b:1"]
    assert bases.check_base_images("docker", "b:1", "b:1", runner=run) == ["b:1"]  # asked once


def test_missing_bases_error_is_one_line_with_the_real_fixes():
    err = bases.missing_bases_error(["nvcr.io/nvidia/pytorch:25.02-py3"])
    text = str(err)
    assert "\n" not in text and "nvcr.io/nvidia/pytorch:25.02-py3 is not present locally" in text
    assert "--mirror cn" in text and "--base-image/--runtime-image" in text and "--standin" in text
    local_only = str(bases.missing_bases_error(["registry.example.com/own:tag"]))
    assert "--mirror cn" not in local_only  # the mirror does not serve it
    assert "--mirror cn" not in str(bases.missing_bases_error(["nvcr.io/a:1"], mirror="cn"))


def test_classify_sizes_splits_over_base():
    base = {"pip==23.0": 10}
    dists = {"pip==23.0": 10, "torch==2.8.0": 900, "nvidia-cublas-cu12==12.8.4.1": 600, "triton==3.4.0": 300,
             "vllm==0.11.0": 400, "fastapi==0.1": 5, "nvidia-cuda-nvcc==13.0.88": 116, "nvidia-nvvm==13.0.88": 140}
    parts, new = inspection.classify_sizes(dists, base, jit_layer=0, over_base=2600)
    assert parts == {"JIT toolchain": 256, "torch and its CUDA wheels": 1800, "vLLM and its other requirements": 405,
                     "the rest": 139}
    assert "pip==23.0" not in new
    parts, _ = inspection.classify_sizes(dists, base, jit_layer=700, over_base=3100)  # apt toolchain: its layer
    assert parts["JIT toolchain"] == 700 and sum(parts.values()) == 3100
    no_torch = {"nvidia-cuda-runtime==13.0.96": 7, "nvidia-cuda-nvcc==13.0.88": 116, "vllm==0.1.0": 2}
    parts, _ = inspection.classify_sizes(no_torch, {}, jit_layer=0, over_base=None)
    assert parts["JIT toolchain"] == 123 and parts["torch and its CUDA wheels"] == 0 and parts["the rest"] == 0


@pytest.mark.parametrize("text, expected", [
    ("12.0", ["sm_120"]), ("9.0a;12.0+PTX", ["sm_90a", "sm_120"]), ("7.5 8.0 8.9", ["sm_75", "sm_80", "sm_89"]),
    ("sm_120a", ["sm_120a"]), ("10.0f 10.0f", ["sm_100f"]), ("", []),
])
def test_parse_arch_list(text, expected):
    assert doctor_inside.parse_arch_list(text) == expected


FACTS = {"nvcc": "/x/nvcc", "nvcc_version": "12.8.93", "archs": ["sm_80", "sm_90", "sm_120"], "host_compiler": "/c++",
         "cuda_home": "/x", "cuda_headers": True, "nvrtc": "", "flashinfer": {"installed": False}}


@pytest.mark.parametrize("change, arch, words", [
    ({"nvcc": ""}, "12.0", "no nvcc"),
    ({}, "10.0", "nvcc 12.8.93 cannot target sm_100"),
    ({"host_compiler": ""}, "12.0", "no host C++ compiler"),
    ({"flashinfer": {"installed": True}}, "9.0 12.0", "FlashInfer JIT for sm_120 needs CUDA >= 12.9"),
])
def test_jit_check_names_what_is_missing(change, arch, words):
    ok, line = doctor_inside.jit_check(arch, {**FACTS, **change})
    assert not ok and words in line and "\n" not in line


@pytest.mark.skipif(not (doctor_inside.find_nvcc() and shutil.which("c++")), reason="needs nvcc and a host compiler")
def test_jit_check_compiles_with_the_real_nvcc():
    facts = doctor_inside.collect_jit()
    assert facts["nvcc_version"] and "sm_120" in facts["archs"]
    ok, line = doctor_inside.jit_check("9.0 12.0", facts)
    assert ok, line
    assert "compiled a kernel for sm_90, sm_120" in line
    broken = {**facts, "archs": []}  # nvcc that lists nothing: the compile itself must fail for a bogus arch
    ok, line = doctor_inside.jit_check("sm_99", broken)
    assert not ok and "failed to compile for sm_99" in line


def test_flashinfer_as_a_setup_extra_counts(checkout, tmp_path):
    (checkout / "setup.py").write_text('extras_require={"flashinfer": ["flashinfer-python==0.3.1"]}\n')
    assert jit.checkout_needs_flashinfer(checkout)  # vLLM 0.11's layout
    assert jit_for(checkout, tmp_path, "12.8").cuda == CudaRelease(12, 9)


def test_doctor_reports_jit_readiness():
    from vllm_forge.nccl import doctor

    inside = {"vllm": {"installed": True}, "jit": {**FACTS, "flashinfer": {"installed": True, "packages": {
        "flashinfer-python": "0.5.3"}, "cubins": 12}}}
    [finding] = doctor.check_jit([("GPU0 RTX 5090", "12.0")], inside)
    assert finding.level == "pass" and "nvcc 12.8.93" in finding.message and "sm_120" in finding.message
    assert "flashinfer-python 0.5.3; 12 precompiled kernels" in finding.message
    [finding] = doctor.check_jit([("B200", "10.0")], inside)
    assert finding.level == "warn" and "cannot target sm_100" in finding.message
    [finding] = doctor.check_jit([], {"vllm": {"installed": True}, "jit": {**FACTS, "nvcc": ""}})
    assert finding.level == "warn" and "no JIT toolchain" in finding.message and finding.fix
    assert doctor.check_jit([], {"vllm": {"installed": False}, "jit": FACTS}) == []


def test_a_bake_plan_plans_its_jit_toolchain_once(checkout, tmp_path, monkeypatch):
    """The build arg and the label read one decision (planning it twice could read the checkout twice)."""
    made = []

    class Counted(jit.JitToolchain):
        def __init__(self, *args, **kwargs):
            made.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(jit, "JitToolchain", Counted)
    plan = bake_plan.plan_bake(req(checkout, tmp_path, arch="12.0", cuda="13.0"), BUILDKIT)
    assert len(made) == 1
    assert plan.build_args["JIT_TOOLCHAIN"] == made[0][1] and plan.labels["org.vllm-forge.jit"].endswith(
        f"({made[0][1]})")
