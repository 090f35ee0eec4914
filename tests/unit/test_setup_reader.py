"""source/setup_reader.py and build/setup_targets.py: which extensions a CUDA build builds, and --targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.source import setup_reader
from vllm_forge.source.setup_reader import ExtensionTarget

SETUP = '''
import sys
ext_modules = []
if _is_cuda() or _is_hip():
    ext_modules.append(CMakeExtension(name="vllm.cumem_allocator"))
if sys.version_info >= (3, 11):
    ext_modules.append(CMakeExtension(name="vllm.fs_io_C"))
if _is_hip():
    ext_modules.append(CMakeExtension(name="vllm._rocm_C"))
if _is_cuda():
    ext_modules.append(CMakeExtension(name="vllm.vllm_flash_attn._vllm_fa2_C"))
    if USE_PRECOMPILED_EXTENSIONS or (CUDA_HOME and get_nvcc_cuda_version() >= Version("12.3")):
        ext_modules.append(CMakeExtension(name="vllm.vllm_flash_attn._vllm_fa3_C"))
    if platform.machine() == "x86_64":
        ext_modules.append(CMakeExtension(name="vllm._flashmla_C", optional=True))
if _is_cpu():
    ext_modules.append(CMakeExtension(name="vllm._C"))
if _build_custom_ops():
    ext_modules.append(CMakeExtension(name="vllm._C_stable_libtorch"))
    ext_modules.append(CMakeExtension(name="vllm._moe_C_stable_libtorch"))
if _no_device():
    ext_modules = []
setup(ext_modules=ext_modules)
'''


def targets(**kw):
    return [(t.target, t.optional, bool(t.condition)) for t in setup_reader.cuda_extension_targets(SETUP, **kw)]


def test_a_cuda_build_with_a_new_nvcc_and_python():
    assert targets(python=(3, 12), nvcc=CudaRelease.parse("13.0")) == [
        ("cumem_allocator", False, False), ("fs_io_C", False, False), ("_vllm_fa2_C", False, False),
        ("_vllm_fa3_C", False, False), ("_flashmla_C", True, True), ("_C_stable_libtorch", False, False),
        ("_moe_C_stable_libtorch", False, False)]


def test_conditions_on_nvcc_and_python_are_decided_and_unknown_ones_are_kept_with_their_text():
    names = [t for t, _, _ in targets(python=(3, 10), nvcc=CudaRelease.parse("12.2"))]
    assert "fs_io_C" not in names and "_vllm_fa3_C" not in names
    found = setup_reader.cuda_extension_targets(SETUP, nvcc=CudaRelease.parse("13.0"))
    [flashmla] = [t for t in found if t.target == "_flashmla_C"]
    assert flashmla.condition == "platform.machine() == 'x86_64'"
    undecided = {t.target: t.condition for t in setup_reader.cuda_extension_targets(SETUP, nvcc=None)}
    assert "get_nvcc_cuda_version()" in undecided["_vllm_fa3_C"]


def test_a_setup_py_that_lists_its_extensions_in_the_setup_call():
    text = 'setup(name="vllm", ext_modules=[CMakeExtension("vllm._C"), Extension("vllm.x", sources=[])])'
    assert [t.target for t in setup_reader.cuda_extension_targets(text)] == ["_C", "x"]
    assert setup_reader.cuda_extension_targets("def broken(:\n") == ()


def test_resolve_takes_exact_names_then_an_unambiguous_start():
    available = setup_reader.cuda_extension_targets(SETUP, nvcc=CudaRelease.parse("13.0"))
    assert [t.target for t in setup_reader.resolve_targets(["_C", "_moe", "vllm.cumem_allocator", "_C"], available)] \
        == ["_C_stable_libtorch", "_moe_C_stable_libtorch", "cumem_allocator"]
    with pytest.raises(ValueError, match="'_vllm' matches several targets"):
        setup_reader.resolve_targets(["_vllm"], available)
    with pytest.raises(ValueError, match="'_rocm_C' is not a target of this build"):
        setup_reader.resolve_targets(["_rocm_C"], available)


def test_target_names_follow_vllms_rule():
    assert ExtensionTarget("vllm.vllm_flash_attn._vllm_fa3_C", False).target == "_vllm_fa3_C"
    assert ExtensionTarget("vllm._C", False).target == "_C"


WRAPPED_SETUP = '''
import json, os, sys
from setuptools import Extension, setup
exts = [Extension("vllm._C_stable_libtorch", sources=[]), Extension("vllm._moe_C_stable_libtorch", sources=[]),
        Extension("vllm.vllm_flash_attn._vllm_fa3_C", sources=[])]
import setuptools
setuptools_setup = setup
def record(**kw):
    print(json.dumps({"ext": [e.name for e in kw["ext_modules"]], "argv": sys.argv, "path0": sys.path[0]}))
import setuptools.dist
setup(name="x", ext_modules=exts, script_args=["--name"])
'''


def test_the_wrapper_hands_setup_only_the_named_targets_and_records_what_it_left_out(tmp_path, repo_root):
    # Like vLLM's setup.py, it imports a module that sits next to it: the checkout is first on sys.path.
    (tmp_path / "setup.py").write_text("import checkout_helper\n" + WRAPPED_SETUP)
    (tmp_path / "checkout_helper.py").write_text("")
    record = tmp_path / "targets.json"
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    proc = subprocess.run([sys.executable, "-m", "vllm_forge.build.setup_targets", "--targets",
                           "_moe_C_stable_libtorch", "--record", str(record), "--", "--name"],
                          cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(record.read_text()) == {"requested": ["_moe_C_stable_libtorch"],
                                              "built": ["_moe_C_stable_libtorch"],
                                              "left_out": ["_C_stable_libtorch", "_vllm_fa3_C"]}
    proc = subprocess.run([sys.executable, "-m", "vllm_forge.build.setup_targets", "--targets", "nope",
                           "--", "--name"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "declares no extension for nope" in proc.stderr
