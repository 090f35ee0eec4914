"""Planted faults on a vLLM-shaped tree, through the real `invoke build-wheel` (issue 26): each is refused in
one line before anything runs (the command log stays empty: not even use-existing-torch ran). And
`--install-build-deps` really installs an unmet build requirement, from a local wheelhouse, into the Python
that builds, then builds the miniature."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require_tool

pytestmark = [pytest.mark.integration]

CMAKE = """cmake_minimum_required(VERSION 3.26)
project(vllm_extensions LANGUAGES CXX)
set(TORCH_SUPPORTED_VERSION_CUDA "2.11.0")
"""
BUILD_TXT = "cmake>=3.26.1\nninja\nsetuptools>=61\nwheel\ntorch==2.11.0\n"


def vllm_like_tree(root: Path, *, build_txt: str = BUILD_TXT, cmake: str = CMAKE, pkg_info: bool = True) -> Path:
    (root / "vllm").mkdir(parents=True)
    (root / "requirements" / "build").mkdir(parents=True)
    (root / "setup.py").write_text("import torch\nfrom setuptools import setup\nsetup(name='vllm')\n")
    (root / "CMakeLists.txt").write_text(cmake)
    (root / "requirements" / "build" / "cuda.txt").write_text(build_txt)
    (root / "use_existing_torch.py").write_text("print('use_existing_torch ran')\n")
    if pkg_info:
        (root / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.26.0\n")
    return root


def fake_torch(site: Path, version: str, cuda: str | None) -> Path:
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("")
    (site / "torch" / "version.py").write_text(
        f"__version__ = '{version}'\ncuda: Optional[str] = {repr(cuda)}\nhip = None\n")
    meta = site / "torch-2.11.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    return site


def fake_gxx(path: Path, version: str) -> Path:
    path.write_text(f"#!/bin/sh\necho 'g++ (GCC) {version}'\n"
                    "echo 'Copyright (C) 2020 Free Software Foundation, Inc.'\n")
    path.chmod(0o755)
    return path


def build_wheel(tree: Path, tmp_path: Path, env: dict | None = None, *extra: str) -> tuple[subprocess.CompletedProcess,
                                                                                           list]:
    log = tmp_path / "commands.jsonl"
    full = {**os.environ, "VLLM_FORGE_COMMAND_LOG": str(log), "INVOKE_FORGE_CACHE_DIR": str(tmp_path / "cache"),
            "COLUMNS": "200", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "invoke", "build-wheel", "--vllm-src", str(tree), "--arch", "9.0",
                           "--dist-dir", str(tmp_path / "dist"), *extra], cwd=REPO_ROOT, capture_output=True,
                          text=True, env=full, timeout=300)
    ran = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, ran


def assert_refused(proc, ran, *words):
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Fix:" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert ran == [], f"commands ran before the refusal: {ran}"


@pytest.fixture
def cuda_torch(tmp_path):
    return fake_torch(tmp_path / "torch-cu130", "2.11.0+cu130", "13.0")


def test_a_missing_build_requirement(tmp_path, nvcc_toolchain, cuda_torch):
    tree = vllm_like_tree(tmp_path / "vllm", build_txt=BUILD_TXT + "setuptools-rust>=99\n")
    proc, ran = build_wheel(tree, tmp_path, {"PYTHONPATH": str(cuda_torch)})
    assert_refused(proc, ran, "build requirements", "setuptools-rust", "--install-build-deps")


def test_a_cpu_torch(tmp_path, nvcc_toolchain):
    site = fake_torch(tmp_path / "torch-cpu", "2.11.0+cpu", None)
    proc, ran = build_wheel(vllm_like_tree(tmp_path / "vllm"), tmp_path, {"PYTHONPATH": str(site)})
    assert_refused(proc, ran, "torch 2.11.0+cpu", "no CUDA", "Unsupported platform")


def test_a_torch_for_cuda_12_8_with_nvcc_13(tmp_path, nvcc_toolchain):
    if nvcc_toolchain.version.major != 13:
        pytest.skip(f"this machine's nvcc is {nvcc_toolchain.version}, not 13.x")
    site = fake_torch(tmp_path / "torch-cu128", "2.11.0+cu128", "12.8")
    proc, ran = build_wheel(vllm_like_tree(tmp_path / "vllm"), tmp_path, {"PYTHONPATH": str(site)})
    assert_refused(proc, ran, "built with CUDA 12.8", "CUDA 13.0", "libcudart.so.13")


def test_missing_pins(tmp_path, nvcc_toolchain, cuda_torch):
    cmake = CMAKE + ("include(FetchContent)\n"
                     "FetchContent_Declare(cutlass GIT_REPOSITORY https://git.invalid/nvidia/cutlass.git "
                     "GIT_TAG v4.4.2)\n"
                     "FetchContent_Declare(flashmla GIT_REPOSITORY https://git.invalid/FlashMLA GIT_TAG a8f794d1)\n")
    proc, ran = build_wheel(vllm_like_tree(tmp_path / "vllm", cmake=cmake), tmp_path, {"PYTHONPATH": str(cuda_torch)})
    assert_refused(proc, ran, "2 git dependencies", "cutlass v4.4.2", "flashmla a8f794d1", "fetch-deps --from")


def test_an_old_gcc(tmp_path, nvcc_toolchain, cuda_torch):
    gxx = fake_gxx(tmp_path / "g++-9", "9.4.0")
    proc, ran = build_wheel(vllm_like_tree(tmp_path / "vllm"), tmp_path,
                            {"PYTHONPATH": str(cuda_torch), "CXX": str(gxx), "CUDAHOSTCXX": str(gxx)})
    assert_refused(proc, ran, "gcc 9.4.0", "torch 2.11.0+cu130's headers need gcc 11.3")


def test_no_git_and_no_version(tmp_path, nvcc_toolchain, cuda_torch):
    env = {"PYTHONPATH": str(cuda_torch), "SETUPTOOLS_SCM_PRETEND_VERSION": ""}
    proc, ran = build_wheel(vllm_like_tree(tmp_path / "vllm", pkg_info=False), tmp_path, env)
    assert_refused(proc, ran, "no .git, no PKG-INFO", "SETUPTOOLS_SCM_PRETEND_VERSION")


def test_targets_that_this_build_does_not_have(tmp_path, nvcc_toolchain, cuda_torch):
    tree = vllm_like_tree(tmp_path / "vllm")
    (tree / "setup.py").write_text("import torch\nfrom setuptools import setup\next_modules = []\n"
                                   "ext_modules.append(CMakeExtension(name='vllm._C_stable_libtorch'))\n"
                                   "ext_modules.append(CMakeExtension(name='vllm._moe_C_stable_libtorch'))\n"
                                   "setup(ext_modules=ext_modules)\n")
    proc, ran = build_wheel(tree, tmp_path, {"PYTHONPATH": str(cuda_torch)}, "--targets", "_flash")
    assert_refused(proc, ran, "--targets '_flash' is not a target of this build", "_moe_C_stable_libtorch")
    proc, _ = build_wheel(tree, tmp_path, {"PYTHONPATH": str(cuda_torch)}, "--targets", "_C", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "-m vllm_forge.build.setup_targets --targets _C_stable_libtorch --record" in proc.stdout
    assert f"PYTHONPATH={REPO_ROOT}:\"$PYTHONPATH\"" in proc.stdout  # the package, and the tree's own path
    assert "left out: _moe_C_stable_libtorch" in proc.stdout
    assert "built against torch 2.11.0+cu130 (the tree pinned 2.11.0, the same release)" in proc.stdout


# --- --install-build-deps, for real ------------------------------------------------------------------------------

def tiny_wheel(wheelhouse: Path, name: str, version: str) -> Path:
    """A pure-Python wheel made here, so pip installs it with no index at all."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    files = {f"{module}.py": b"VALUE = 1\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    path = wheelhouse / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, data in files.items():
            zf.writestr(arcname, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={digest},{len(data)}")
        record.append(f"{dist}/RECORD,,")
        zf.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return path


@pytest.mark.nvcc
def test_install_build_deps_installs_the_unmet_requirement_then_builds(tmp_path, nvcc_toolchain, cuobjdump):
    require_tool("git", shutil.which("git") is not None)
    from vllm_forge.source import checkout
    from vllm_forge.source.minivllm import publish_minivllm

    src = tmp_path / "vllm"
    checkout.clone(publish_minivllm(tmp_path / "remote"), "v0.1.0", src)
    with (src / "requirements" / "build.txt").open("a") as handle:
        handle.write("forge-probe-req>=1.0\n")
    tiny_wheel(tmp_path / "wheelhouse", "forge-probe-req", "1.2.0")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True,
                   capture_output=True)
    python = venv / "bin" / "python"
    log = tmp_path / "commands.jsonl"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "wheelhouse"),
           "VLLM_FORGE_COMMAND_LOG": str(log), "INVOKE_FORGE_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "200"}
    argv = [str(python), "-m", "invoke", "build-wheel", "--vllm-src", str(src), "--arch", "12.0", "--dist-dir",
            str(tmp_path / "dist"), "--compile-cache", "none"]
    refused = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert refused.returncode == 2 and "missing forge-probe-req>=1.0" in refused.stderr
    done = subprocess.run([*argv, "--install-build-deps"], cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "installed forge-probe-req>=1.0" in done.stdout
    pips = [c["shell"] for c in map(json.loads, log.read_text().splitlines()) if " -m pip install " in c["shell"]]
    assert len(pips) == 1 and pips[0].startswith(f"{python} -m pip install") and "'forge-probe-req>=1.0'" in pips[0]
    found = subprocess.run([str(python), "-c", "import forge_probe_req, sys; print(forge_probe_req.__file__)"],
                           capture_output=True, text=True)
    assert str(venv) in found.stdout  # into the venv that builds, not the Python the tests run in
    assert list((tmp_path / "dist").glob("vllm-*.whl"))
