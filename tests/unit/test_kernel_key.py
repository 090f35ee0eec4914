"""The kernel-reuse key: what changes it and what does not; the wheel repack that carries kernels over."""

from __future__ import annotations

import base64
import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from vllm_forge.build import build_wheel as bw
from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.gpu.toolchain import CudaToolchain
from vllm_forge.source.vllm_tree import inspect_tree

ENV = {"TORCH_CUDA_ARCH_LIST": "12.0", "VLLM_FA_CMAKE_GPU_ARCHES": "120-real", "CMAKE_BUILD_TYPE": "Release",
       "VLLM_TARGET_DEVICE": "cuda", "MAX_JOBS": "2", "NVCC_THREADS": "1"}
TOOLCHAIN = CudaToolchain(nvcc=Path("/usr/local/cuda/bin/nvcc"), version=CudaRelease(13, 0), full_version="13.0.88",
                          root=Path("/usr/local/cuda"), from_pypi=False)


@pytest.fixture
def mini(tmp_path, repo_root):
    src = tmp_path / "vllm"
    shutil.copytree(repo_root / "tests" / "fixtures" / "minivllm", src)
    return src


def _key(src, env=ENV, nvcc="13.0.88", patches=None):
    return bw.kernel_key(src, inspect_tree(src), dict(env), nvcc_version=nvcc, patches=patches)


def test_python_changes_and_parallelism_keep_the_key(mini, monkeypatch):
    for name in ("CMAKE_ARGS", "MINIVLLM_BENCH_WORK", "MINIVLLM_FETCH_DEPS", "VLLM_USE_PRECOMPILED"):
        monkeypatch.delenv(name, raising=False)
    first = _key(mini)
    assert first == _key(mini)  # deterministic
    (mini / "vllm" / "__init__.py").write_text("# a scheduler fix\n")
    (mini / "requirements" / "cuda.txt").write_text("")  # what use-existing-torch edits
    other = {**ENV, "MAX_JOBS": "64", "NVCC_THREADS": "4", "SETUPTOOLS_SCM_PRETEND_VERSION": "9.9",
             "CMAKE_CUDA_COMPILER_LAUNCHER": "sccache", "CCACHE_DIR": "/elsewhere",
             "VLLM_USE_PRECOMPILED": "1", "VLLM_PRECOMPILED_WHEEL_LOCATION": "/x.whl"}
    assert _key(mini, other).key == first.key


@pytest.mark.parametrize("change, expect", [
    (lambda src, env: (src / "csrc" / "add_one.cu").write_text("// changed\n"), "tree_sha256"),
    (lambda src, env: (src / "csrc" / "new.cuh").write_text("#pragma once\n"), "tree_sha256"),
    (lambda src, env: (src / "CMakeLists.txt").write_text((src / "CMakeLists.txt").read_text() + "\n# x\n"),
     "tree_sha256"),
    (lambda src, env: (src / "setup.py").write_text((src / "setup.py").read_text() + "\n# x\n"), "tree_sha256"),
    (lambda src, env: env.update(TORCH_CUDA_ARCH_LIST="9.0a;12.0"), "archs"),
    (lambda src, env: env.update(CMAKE_BUILD_TYPE="Debug"), "build_type"),
    (lambda src, env: env.update(MINIVLLM_BENCH_WORK="160"), "env"),  # read by its CMakeLists.txt
    (lambda src, env: env.update(CMAKE_ARGS="-DVLLM_GPU_LANG=CUDA"), "env"),
])
def test_kernel_inputs_change_the_key(mini, monkeypatch, change, expect):
    for name in ("CMAKE_ARGS", "MINIVLLM_BENCH_WORK"):
        monkeypatch.delenv(name, raising=False)
    before = _key(mini)
    env = dict(ENV)
    change(mini, env)
    after = _key(mini, env)
    assert after.key != before.key
    assert expect in after.differences(before.inputs)


def test_local_dependency_copies_are_keyed_by_commit_not_path(mini, tmp_path, monkeypatch):
    import subprocess

    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    git_env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    dep = tmp_path / "minidep"
    (dep / "include").mkdir(parents=True)
    (dep / "include" / "minidep.h").write_text("#define MINIDEP 1\n")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "v1"]):
        subprocess.run(["git", *args], cwd=dep, check=True, capture_output=True, env=git_env)
    copy = tmp_path / "elsewhere" / "minidep"
    subprocess.run(["git", "clone", "-q", str(dep), str(copy)], check=True, capture_output=True, env=git_env)
    at_dep = _key(mini, {**ENV, "MINIDEP_SRC_DIR": str(dep)})
    via_cmake_args = _key(mini, {**ENV, "CMAKE_ARGS": f"-DFETCHCONTENT_SOURCE_DIR_MINIDEP={copy}"})
    assert at_dep.key == via_cmake_args.key  # same commit, another path, another way of naming it
    (copy / "include" / "minidep.h").write_text("#define MINIDEP 2\n")  # an uncommitted edit counts
    assert _key(mini, {**ENV, "MINIDEP_SRC_DIR": str(copy)}).differences(at_dep.inputs) == ["git_deps"]


def test_nvcc_version_and_kernel_patches_change_the_key(mini):
    base = _key(mini)
    assert "nvcc" in _key(mini, nvcc="12.8.93").differences(base.inputs)
    patched = _key(mini, patches=[{"name": "fix.patch", "sha256": "ab" * 32}])
    assert patched.differences(base.inputs) == ["kernel_patches"]


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_reuse_kernels_carries_compiled_files_byte_for_byte(tmp_path):
    di = "vllm-0.1.0.dist-info"
    new = _zip(tmp_path / "new.whl", {"vllm/__init__.py": b"new python", "vllm/_C.abi3.so": b"rebuilt?",
                                      f"{di}/METADATA": b"Name: vllm", f"{di}/RECORD": b"stale"})
    source = _zip(tmp_path / "old.whl", {"vllm/__init__.py": b"old python", "vllm/_C.abi3.so": b"KERNELS",
                                         "vllm/vllm_flash_attn/_fa2_C.abi3.so": b"FA", "vllm/vllm_flash_attn/iface.py":
                                         b"installed by the kernel build", f"{di}/METADATA": b"Name: vllm"})
    checkout = tmp_path / "src"
    (checkout / "vllm").mkdir(parents=True)
    (checkout / "vllm" / "__init__.py").write_text("new python")
    info = {"kernel_key": "k" * 64, "patches": []}
    carried = bw.reuse_kernels(new, source, info, checkout)
    assert sorted(carried) == ["vllm/_C.abi3.so", "vllm/vllm_flash_attn/_fa2_C.abi3.so",
                               "vllm/vllm_flash_attn/iface.py"]
    with zipfile.ZipFile(new) as zf:
        assert zf.read("vllm/_C.abi3.so") == b"KERNELS"
        assert zf.read("vllm/__init__.py") == b"new python"  # the Python part is the new build's
        record = zf.read(f"{di}/RECORD").decode().splitlines()
        for line in record:
            name, digest, size = line.rsplit(",", 2)
            if name.endswith("RECORD"):
                assert digest == size == ""
                continue
            data = zf.read(name)
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert int(size) == len(data)
        assert sorted(n for n in zf.namelist()) == sorted(line.split(",")[0] for line in record)
    assert bw.read_build_info(new) == info
    assert bw.compiled_digests(new) == bw.compiled_digests(source)


def test_find_reusable_wheel_says_what_differs(tmp_path, mini):
    key = _key(mini)
    dist = tmp_path / "dist"
    dist.mkdir()
    assert bw.find_reusable_wheel(dist, key)[0] is None
    other = bw.KernelKey("0" * 64, {**key.inputs, "archs": "9.0"})
    w = _zip(dist / "vllm-0.1.0-cp38-abi3-linux_x86_64.whl", {"vllm-0.1.0.dist-info/METADATA": b""})
    bw.reuse_kernels(w, None, {"kernel_key": other.key, "kernel_inputs": other.inputs})
    found, why = bw.find_reusable_wheel(dist, key)
    assert found is None and why.endswith(": archs")
    bw.reuse_kernels(w, None, {"kernel_key": key.key, "kernel_inputs": key.inputs})
    found, why = bw.find_reusable_wheel(dist, key)
    assert found == w and "same kernel key" in why


def test_decide_reuse_paths(tmp_path, mini):
    tree = inspect_tree(mini)
    request = bw.BuildRequest(src=mini, dist_dir=tmp_path / "dist", archs=parse_arch_list("12.0"))
    off = bw.BuildRequest(src=mini, dist_dir=tmp_path, archs=parse_arch_list("12.0"), reuse=False)
    assert bw.decide_reuse(off, tree, ENV, TOOLCHAIN).reason == "off (--no-reuse)"
    first = bw.decide_reuse(request, tree, ENV, TOOLCHAIN)
    assert first.source is None and "a first build" in first.note()
    # what the plan says matches the compile cache the build uses
    assert first.note("none").endswith("kernels are compiled (every unit: no compile cache)")
    assert first.note("ccache").endswith("kernels are compiled (through ccache)")
    assert "compile cache" not in first.note("sccache")
    # A checkout whose setup.py cannot take kernels from a wheel compiles, and the plan says why.
    tree.env_vars_read.discard("VLLM_PRECOMPILED_WHEEL_LOCATION")
    decision = bw.decide_reuse(request, tree, ENV, TOOLCHAIN)
    assert decision.source is None and "does not read VLLM_PRECOMPILED_WHEEL_LOCATION" in decision.reason


def test_build_info_labels():
    labels = bw.build_info_labels({"kernel_key": "abc", "patches": [{"name": "a.patch", "sha256": "11"}],
                                   "kernels_from": {"wheel": "vllm-1.whl"}})
    assert labels == {"org.vllm-forge.patches": "a.patch@sha256:11", "org.vllm-forge.kernel-key": "abc",
                      "org.vllm-forge.kernels-from": "vllm-1.whl"}
    assert bw.build_info_labels(None)["org.vllm-forge.patches"] == ""


def test_apply_reuse_sets_and_clears_the_precompiled_switches(mini, tmp_path, monkeypatch):
    import types

    from vllm_forge.core.plan import Command

    for name in (*bw.PRECOMPILED_ENV, bw.SKIP_SUFFIX_ENV):
        monkeypatch.delenv(name, raising=False)
    tree = inspect_tree(mini)
    tree.env_vars_read.add(bw.SKIP_SUFFIX_ENV)  # as vLLM releases that have the knob
    env = dict(ENV)
    plan = types.SimpleNamespace(env=env, command=Command(["python", "setup.py"], env=env), tree=tree, reuse=None)
    key = bw.KernelKey("a" * 64, {})
    wheel = tmp_path / "vllm-0.1.0-cp38-abi3-linux_x86_64.whl"
    bw.apply_reuse(plan, bw.ReuseDecision(key, wheel, "same key"))
    assert env == {**ENV, "VLLM_USE_PRECOMPILED": "1", "VLLM_PRECOMPILED_WHEEL_LOCATION": str(wheel),
                   bw.SKIP_SUFFIX_ENV: "1"}
    assert "VLLM_PRECOMPILED_WHEEL_LOCATION=" in plan.command.shell()
    bw.apply_reuse(plan, bw.ReuseDecision(key, None, "inputs differ"))
    assert env == ENV
    monkeypatch.setenv("VLLM_USE_PRECOMPILED", "1")  # left in the user's shell: switched off for a compile
    bw.apply_reuse(plan, bw.ReuseDecision(key, None, "inputs differ"))
    assert env == {**ENV, "VLLM_USE_PRECOMPILED": ""}


def _generating_tree(root: Path) -> Path:
    (root / "csrc" / "moe").mkdir(parents=True)
    (root / "csrc" / "moe" / "a.cu").write_text("__global__ void a() {}\n")
    (root / "CMakeLists.txt").write_text("project(x)\n")
    (root / ".gitignore").write_text("# generated files\n**/generated/**\ncsrc/moe/kernel_*\n")
    return root


def _generate(root: Path) -> None:
    """What vLLM's CMake does at configure time: kernels written into the source tree, which it ignores."""
    (root / "csrc" / "quant" / "generated").mkdir(parents=True)
    (root / "csrc" / "quant" / "generated" / "machete_mm_impl_part1.cu").write_text("// generated\n")
    (root / "csrc" / "moe" / "kernel_bf16.cu").write_text("// generated\n")


def test_files_the_checkout_ignores_are_no_kernel_input_in_a_git_checkout(tmp_path):
    import subprocess

    root = _generating_tree(tmp_path / "vllm")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": __import__("os").environ["PATH"]}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, env=env)
    before = bw.tree_digest(root)
    _generate(root)
    assert bw.tree_digest(root) == before
    (root / "csrc" / "moe" / "b.cu").write_text("// new, not ignored: an input\n")
    assert bw.tree_digest(root) != before


def test_files_the_checkout_ignores_are_no_kernel_input_in_an_unpacked_sdist(tmp_path):
    pytest.importorskip("pathspec")
    root = _generating_tree(tmp_path / "vllm")
    before = bw.tree_digest(root)
    _generate(root)
    assert [p.name for p in bw.kernel_input_files(root)] == ["CMakeLists.txt", "a.cu"]
    assert bw.tree_digest(root) == before
    (root / "csrc" / "moe" / "a.cu").write_text("__global__ void a() { /* edited */ }\n")
    assert bw.tree_digest(root) != before


def test_staged_binaries_are_cleared_and_nothing_else(tmp_path):
    from vllm_forge.build.build_wheel import clear_staged_binaries

    staged = tmp_path / "build" / "lib.linux-x86_64-cpython-312" / "vllm"
    (staged / "vllm_flash_attn").mkdir(parents=True)
    for name in ("_C.abi3.so", "vllm_flash_attn/_vllm_fa2_C.abi3.so", "libx.so.1", "__init__.py"):
        (staged / name).write_text("x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.so").write_text("x")
    (staged / "linked").symlink_to(elsewhere)  # a planted link: its target is not ours to clear
    (tmp_path / "build" / "temp.linux-x86_64-cpython-312").mkdir()
    (tmp_path / "build" / "temp.linux-x86_64-cpython-312" / "_C.abi3.so").write_text("ninja's")
    removed = clear_staged_binaries(tmp_path)
    assert sorted(p.name for p in removed) == ["_C.abi3.so", "_vllm_fa2_C.abi3.so", "libx.so.1"]
    assert (staged / "__init__.py").exists() and (elsewhere / "keep.so").exists()
    assert (tmp_path / "build" / "temp.linux-x86_64-cpython-312" / "_C.abi3.so").exists()
    assert clear_staged_binaries(tmp_path / "no-tree") == []
