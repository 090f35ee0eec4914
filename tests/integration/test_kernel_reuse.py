"""Kernel reuse for real (nvcc): a Python-only change rebuilds without nvcc and carries the .so files
over byte for byte; a csrc change (here through a patch) compiles again. Every nvcc call goes through
a launcher that logs it, so "no nvcc ran" is counted, not inferred."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vllm_forge.build.build_wheel import (
    BuildPlan,
    BuildRequest,
    compiled_digests,
    plan_build,
    read_build_info,
    run_build,
)
from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.source import checkout, patches

pytestmark = [pytest.mark.integration, pytest.mark.nvcc]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def minivllm_url(tmp_path_factory):
    from vllm_forge.source.minivllm import publish_minivllm

    return publish_minivllm(tmp_path_factory.mktemp("remote"))


@pytest.fixture
def src(minivllm_url, tmp_path):
    dest = tmp_path / "vllm"
    checkout.clone(minivllm_url, "v0.1.0", dest)
    checkout.use_existing_torch(dest)
    return dest


@pytest.fixture
def nvcc_log(tmp_path):
    log = tmp_path / "nvcc-calls.log"
    launcher = tmp_path / "log-launcher.sh"
    launcher.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec "$@"\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IEXEC)
    return launcher, log


def build(src: Path, dist: Path, launcher: Path, *, reuse: bool = True):
    # a clean checkout each time: no CMake build dir and no .so left from the build before
    shutil.rmtree(src / "build", ignore_errors=True)
    for so in (src / "vllm").rglob("*.so"):
        so.unlink()
    plan = plan_build(BuildRequest(src=src, dist_dir=dist, archs=parse_arch_list("12.0"), compile_cache="none",
                                   max_jobs=2,
                                   reuse=reuse, extra_env={"CMAKE_CUDA_COMPILER_LAUNCHER": str(launcher)}))
    wheel = run_build(plan, audit=True, on_line=lambda _line: None)
    return plan, wheel


def nvcc_calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def write_patch(tmp_path: Path, src: Path, rel: str, old: str, new: str) -> Path:
    """A real `git diff` of one edit, the checkout restored afterwards."""
    path = src / rel
    original = path.read_text()
    path.write_text(original.replace(old, new, 1))
    diff = subprocess.run(["git", "diff", "--", rel], cwd=src, capture_output=True, text=True, check=True).stdout
    path.write_text(original)
    out = tmp_path / (Path(rel).stem + ".patch")
    out.write_text(diff)
    return out


def test_python_only_change_reuses_kernels_and_csrc_change_recompiles(src, tmp_path, nvcc_toolchain, nvcc_log):
    launcher, log = nvcc_log
    dist = tmp_path / "dist"
    first_plan, first = build(src, dist, launcher)
    compiled_first = nvcc_calls(log)
    assert compiled_first >= 4  # add_one, scale, reduce, flash_attn_stub
    assert first_plan.reuse.source is None and "a first build" in first_plan.reuse.reason
    kernels = compiled_digests(first)
    assert set(kernels) == {"vllm/_C.abi3.so", "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so"}
    info = read_build_info(first)
    assert info["kernel_key"] == first_plan.reuse.key.key and info["kernels_from"] is None
    first_copy = tmp_path / "first.whl"
    shutil.copy(first, first_copy)

    # A Python-only fix, as a patch: the key is the same, nothing is compiled, the .so bytes are carried.
    fix = write_patch(tmp_path, src, "vllm/__init__.py", '"0.0.0.dev0"', '"0.0.0.dev0+fixed"')
    patches.apply_patches(src, [fix])
    dry = plan_build(BuildRequest(src=src, dist_dir=dist, archs=parse_arch_list("12.0"), compile_cache="none",
                                  max_jobs=2, extra_env={"CMAKE_CUDA_COMPILER_LAUNCHER": str(launcher)}),
                     check_tools=False)
    assert dry.reuse.source == first.resolve()
    assert any(n.startswith("kernel reuse") and "Python-only rebuild" in n for n in dry.notes)
    assert dry.command.env["VLLM_PRECOMPILED_WHEEL_LOCATION"] == str(first.resolve())
    second_plan, second = build(src, dist, launcher)
    assert nvcc_calls(log) == compiled_first  # no nvcc ran
    assert not list((src / "build").rglob("CMakeCache.txt"))  # and CMake never configured
    assert second_plan.reuse.source == first.resolve()
    assert "kernels reused from " + first.name in second_plan.reuse.line()
    assert compiled_digests(second) == kernels  # byte-identical kernels
    with zipfile.ZipFile(second) as zf:
        assert "+fixed" in zf.read("vllm/__init__.py").decode()  # ... and the new Python
    info = read_build_info(second)
    assert info["kernels_from"]["wheel"] == first.name
    assert info["kernels_from"]["sha256"] == hashlib.sha256(first_copy.read_bytes()).hexdigest()
    assert [p["name"] for p in info["patches"]] == ["__init__.patch"]
    assert info["patches"][0]["touches_kernels"] is False

    # --no-reuse compiles even with a matching wheel there.
    third_plan, _ = build(src, dist, launcher, reuse=False)
    assert third_plan.reuse.reason == "off (--no-reuse)" and nvcc_calls(log) >= 2 * compiled_first
    compiled = nvcc_calls(log)

    # A kernel change (a patch to csrc/): the key changes, kernels compile again.
    kernel_fix = write_patch(tmp_path, src, "csrc/add_one.cu", "a[i] += minidep_one();", "a[i] += 2 * minidep_one();")
    patches.apply_patches(src, [kernel_fix])
    fourth_plan, fourth = build(src, dist, launcher)
    assert fourth_plan.reuse.source is None
    assert "tree_sha256" in fourth_plan.reuse.reason and "kernel_patches" in fourth_plan.reuse.reason
    assert nvcc_calls(log) > compiled
    assert compiled_digests(fourth)["vllm/_C.abi3.so"] != kernels["vllm/_C.abi3.so"]
    info = read_build_info(fourth)
    assert info["kernel_inputs"]["kernel_patches"] == [{"name": "add_one.patch", "sha256": patches.read_patch(
        kernel_fix).sha256}]
    json.dumps(info)  # the record is plain JSON


def test_cli_prints_where_the_kernels_came_from(src, tmp_path, nvcc_toolchain, nvcc_log):
    launcher, log = nvcc_log
    dist = tmp_path / "dist"
    build(src, dist, launcher)
    (src / "vllm" / "entrypoints" / "__init__.py").write_text("# edited\n")
    out = subprocess.run([sys.executable, "-m", "vllm_forge.build.build_wheel", str(src), "--dist-dir", str(dist),
                          "--arch", "12.0", "--compile-cache", "none"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "CMAKE_CUDA_COMPILER_LAUNCHER": str(launcher)})
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(dist.glob("*.whl"))
    assert f"kernels reused from {wheel.name} (kernel key " in out.stdout
    assert "Extracting and including vllm/_C.abi3.so" in out.stdout  # the checkout's own precompiled path


def test_cli_refuses_a_patch_that_does_not_apply_in_one_line(src, tmp_path, nvcc_toolchain):
    good = write_patch(tmp_path, src, "vllm/__init__.py", '"0.0.0.dev0"', '"0.0.0.dev0+good"')
    bad = tmp_path / "bad.patch"
    bad.write_text(good.read_text().replace('"0.0.0.dev0"', '"not in the file"', 1).replace("+good", "+bad"))
    before = subprocess.run(["git", "status", "--porcelain"], cwd=src, capture_output=True, text=True).stdout
    argv = [sys.executable, "-m", "invoke", "build-wheel", "--arch", "12.0", "--vllm-src", str(src), "--dist-dir",
            str(tmp_path / "dist"), "--patch", str(good), "--patch", str(bad)]
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"})
    assert out.returncode == 2, out.stdout[-1000:] + out.stderr[-1000:]
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "bad.patch does not apply" in errors[0] and "Fix:" in errors[0], out.stderr
    assert subprocess.run(["git", "status", "--porcelain"], cwd=src, capture_output=True, text=True).stdout == before
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").glob("*.whl"))
    dry = subprocess.run(argv[:-2] + ["--dry-run"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "300"})
    assert dry.returncode == 0, dry.stderr
    assert f"git apply --check && git apply {good}" in dry.stdout and "Python only" in dry.stdout
    assert "# kernel reuse (key " in dry.stdout


def test_a_resumed_build_after_a_reuse_packages_its_own_kernels(src, tmp_path, nvcc_toolchain, nvcc_log):
    """12.0 → 9.0;12.0 → 12.0 again (kernels reused from its first wheel) → 9.0;12.0 again in a new dist/: the last
    build resumes the CMake build dir of the second, and its wheel must carry 9.0;12.0 kernels, not the 12.0-only
    ones the reuse run extracted into build/lib (newer than ninja's link outputs, so taken as up to date)."""
    launcher, _log = nvcc_log

    def build_in_place(archs: str, dist: Path) -> BuildPlan:
        plan = plan_build(BuildRequest(src=src, dist_dir=dist, archs=parse_arch_list(archs), compile_cache="none",
                                       max_jobs=2, extra_env={"CMAKE_CUDA_COMPILER_LAUNCHER": str(launcher)}))
        run_build(plan, audit=True, on_line=lambda _line: None)  # audit=True: a wheel without sm_90 is refused
        return plan

    build_in_place("12.0", tmp_path / "dist-a")
    build_in_place("9.0;12.0", tmp_path / "dist-b")
    assert build_in_place("12.0", tmp_path / "dist-a").reuse.source is not None  # the reuse run
    last = build_in_place("9.0;12.0", tmp_path / "dist-c")
    assert last.reuse.source is None
