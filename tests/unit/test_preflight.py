"""vllm_forge/build/preflight.py: each check a real vLLM build needs, on planted trees and planted tools."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from vllm_forge.build import preflight
from vllm_forge.build.preflight import BuildRequirement, PythonFacts
from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.source.vllm_tree import inspect_tree

CUDA_TXT = """# Should be mirrored in pyproject.toml
cmake>=3.26.1
ninja
setuptools>=77.0.3,<81.0.0
setuptools-rust>=1.9.0
torch==2.11.0
-r common.txt
"""
PYPROJECT = """[build-system]
requires = ["cmake>=3.26.1", "setuptools>=77.0.3,<81.0.0", "setuptools-scm>=8.0", "torch == 2.11.0", "wheel"]
build-backend = "setuptools.build_meta"
"""


def make_tree(root: Path, *, cmake_minimum="3.26", dockerfile_cuda="13.0.2", version="0.26.0") -> Path:
    (root / "vllm").mkdir(parents=True)
    (root / "requirements" / "build").mkdir(parents=True)
    (root / "setup.py").write_text("import torch\nfrom setuptools import setup\nsetup()\n")
    (root / "CMakeLists.txt").write_text(
        f"cmake_minimum_required(VERSION {cmake_minimum})\nproject(vllm_extensions LANGUAGES CXX)\n"
        'set(TORCH_SUPPORTED_VERSION_CUDA "2.11.0")\n')
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "requirements" / "build" / "cuda.txt").write_text(CUDA_TXT)
    (root / "requirements" / "build" / "common.txt").write_text("jinja2>=3.1.6\nregex; sys_platform == 'win32'\n")
    if version:
        (root / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    if dockerfile_cuda:
        (root / "docker").mkdir()
        (root / "docker" / "Dockerfile").write_text(f"ARG CUDA_VERSION={dockerfile_cuda}\nFROM scratch\n")
    return root


def facts(dists=None, torch="2.11.0+cu130", cuda="13.0", **kw) -> PythonFacts:
    markers = {"sys_platform": "linux", "python_version": "3.12", "platform_machine": "x86_64",
               "implementation_name": "cpython", "os_name": "posix", "platform_system": "Linux",
               "python_full_version": "3.12.3", "platform_python_implementation": "CPython",
               "platform_release": "6", "platform_version": "1", "implementation_version": "3.12.3"}
    return PythonFacts("/venv/bin/python3", (3, 12, 3), markers, dists or {}, torch, CudaRelease.parse_or_none(cuda),
                       kw.get("hip"),
                       "/venv/lib/torch")


# --- build requirements -----------------------------------------------------------------------------------------

def test_build_requirements_are_read_from_pyproject_and_the_requirements_file_with_its_includes(tmp_path):
    tree = inspect_tree(make_tree(tmp_path / "vllm"))
    reqs = preflight.read_build_requirements(tree)
    by_source = {(r.name, r.source) for r in reqs}
    assert ("setuptools-scm", "pyproject.toml [build-system]") in by_source
    assert ("setuptools-rust", "requirements/build/cuda.txt") in by_source
    assert ("jinja2", "requirements/build/common.txt") in by_source  # followed through -r
    assert not any(r.name == "torch" for r in reqs)  # the torch check owns torch
    assert next(r for r in reqs if r.name == "setuptools").specifier == "<81.0.0,>=77.0.3"


def test_an_include_that_leaves_the_checkout_is_not_followed(tmp_path):
    root = make_tree(tmp_path / "vllm")
    (tmp_path / "outside.txt").write_text("evil-package\n")
    (root / "requirements" / "build" / "cuda.txt").write_text("ninja\n-r ../../../outside.txt\n")
    names = {r.name for r in preflight.read_build_requirements(inspect_tree(root))}
    assert "evil-package" not in names and "ninja" in names


def test_compare_names_missing_too_old_and_too_new_and_skips_what_a_marker_excludes():
    reqs = [BuildRequirement("setuptools-rust", ">=1.9.0", "", "a"), BuildRequirement("setuptools", ">=77.0.3,<81",
                                                                                       "", "a"),
            BuildRequirement("cmake", ">=3.26.1", "", "a"), BuildRequirement("ninja", "", "", "a"),
            BuildRequirement("pywin32", "", "sys_platform == 'win32'", "a"),
            BuildRequirement("wheel", ">=0.40", "", "b"), BuildRequirement("wheel", ">=0.43", "", "c")]
    states = {s.requirement.name: s.state for s in preflight.compare_requirements(
        reqs, facts({"setuptools-rust": None, "setuptools": "81.0.0", "cmake": "3.22.1", "ninja": "1.11",
                     "pywin32": None, "wheel": "0.42"}))}
    assert states == {"setuptools-rust": "missing", "setuptools": "too-new", "cmake": "too-old", "ninja": "ok",
                      "wheel": "too-old"}


def test_unmet_requirements_are_refused_in_one_line_naming_each_and_the_flag(tmp_path):
    tree = inspect_tree(make_tree(tmp_path / "vllm"))
    unmet = [s for s in preflight.compare_requirements(preflight.read_build_requirements(tree),
                                                       facts({"cmake": "3.20"})) if s.state != "ok"]
    err = preflight.unmet_requirements_error(tree, facts(), unmet)
    text = str(err)
    assert "\n" not in text and "setuptools-rust>=1.9.0" in text and "too old: cmake 3.20 (needs >=3.26.1)" in text
    assert "--install-build-deps" in text and err.exit_code == 2


def test_the_probe_reads_the_build_python_and_torch_without_importing_it(tmp_path):
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("raise SystemExit('torch was imported')\n")
    (site / "torch" / "version.py").write_text("__version__ = '2.11.0+cpu'\ncuda: Optional[str] = None\nhip = None\n")
    dist = site / "setuptools_rust-1.13.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: setuptools-rust\nVersion: 1.13.0\n")
    found = preflight.probe_python(sys.executable, ["setuptools-rust", "no-such-dist"],
                                   env={"PYTHONPATH": str(site)})
    assert (found.torch_version, found.torch_cuda) == ("2.11.0+cpu", None)
    assert found.dists == {"setuptools-rust": "1.13.0", "no-such-dist": None}
    assert found.version[:2] == sys.version_info[:2] and found.markers["sys_platform"] == sys.platform


def test_a_python_that_does_not_run_is_one_line(tmp_path):
    with pytest.raises(ForgeError, match="does not run"):
        preflight.probe_python(str(tmp_path / "nope"), [])


# --- torch ------------------------------------------------------------------------------------------------------

def tree_with_pin(tmp_path):
    return inspect_tree(make_tree(tmp_path / "vllm"))


def test_a_cpu_torch_is_refused_before_cmake_says_unsupported_platform(tmp_path):
    with pytest.raises(ForgeError, match=r"built with no CUDA .*Unsupported platform.*cu130"):
        preflight.check_torch(facts(torch="2.11.0+cpu", cuda=None), tree_with_pin(tmp_path), CudaRelease.parse("13.0"))


def test_a_torch_for_another_cuda_major_is_refused_naming_what_breaks(tmp_path):
    with pytest.raises(ForgeError) as err:
        preflight.check_torch(facts(torch="2.11.0+cu128", cuda="12.8"), tree_with_pin(tmp_path),
                              CudaRelease.parse("13.0"))
    assert "CUDA 12.8 but the nvcc found is CUDA 13.0" in str(err.value)
    assert "libcudart.so.13" in str(err.value)
    assert "--index-url https://download.pytorch.org/whl/cu130" in str(err.value)


def test_a_minor_cuda_difference_and_another_torch_release_are_notes(tmp_path):
    notes = preflight.check_torch(facts(torch="2.14.1+cu130", cuda="13.0"), tree_with_pin(tmp_path),
                                  CudaRelease.parse("13.1"))
    assert notes[0] == "built against torch 2.14.1+cu130 (the tree pinned 2.11.0)"
    assert any("minor version" in n for n in notes)
    assert any("not the 2.11.0 this vLLM pins" in n for n in notes)


def test_the_pin_is_still_known_after_use_existing_torch_removed_it(tmp_path):
    root = make_tree(tmp_path / "vllm")
    (root / "requirements" / "build" / "cuda.txt").write_text("cmake>=3.26.1\n")
    (root / "pyproject.toml").write_text(PYPROJECT.replace('"torch == 2.11.0", ', ""))
    tree = inspect_tree(root)
    assert (tree.torch_pin, tree.torch_pin_source) == ("2.11.0", "CMakeLists.txt TORCH_SUPPORTED_VERSION_CUDA")
    assert preflight.torch_line(facts(), tree) == \
        "built against torch 2.11.0+cu130 (the tree pinned 2.11.0, the same release)"


def test_no_torch_at_all_is_refused(tmp_path):
    with pytest.raises(ForgeError, match="torch is not installed"):
        preflight.check_torch(facts(torch=None, cuda=None), tree_with_pin(tmp_path), CudaRelease.parse("13.0"))


# --- host compiler, nvcc's limits, CMake -------------------------------------------------------------------------

def fake_tool(path: Path, output: str) -> Path:
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_nvcc_limits_come_from_its_own_host_config(tmp_path):
    crt = tmp_path / "include" / "crt"
    crt.mkdir(parents=True)
    (crt / "host_config.h").write_text("#if defined(__GNUC__)\n#if __GNUC__ > 14\n#error -- unsupported GNU version!\n"
                                       "#endif\n#if (__clang_major__ >= 20) || (__clang_major__ < 3)\n"
                                       "#error x\n#endif\n")
    assert preflight.nvcc_host_limits(tmp_path) == {"gcc": 14, "clang": 19}
    assert preflight.nvcc_host_limits(tmp_path / "missing") == {}


def test_a_gcc_newer_than_nvcc_accepts_is_refused(tmp_path):
    gxx = fake_tool(tmp_path / "g++-15", "g++ (GCC) 15.1.0\nCopyright (C) 2025 Free Software Foundation, Inc.")
    compiler = preflight.find_host_compiler({"CXX": str(gxx), "PATH": os.environ["PATH"]})
    assert (compiler.family, compiler.version) == ("gcc", (15, 1, 0))
    with pytest.raises(ForgeError,
                       match=r"gcc 15.1.0, and nvcc 12.8 accepts gcc up to 14.*CUDAHOSTCXX=/usr/bin/g\+\+-14"):
        preflight.check_host_compiler(compiler, {"gcc": 14}, "12.8", "2.11.0")


def test_a_gcc_older_than_the_torch_headers_need_is_refused(tmp_path):
    gxx = fake_tool(tmp_path / "c++", "c++ (Ubuntu 9.4.0-1ubuntu1~20.04.2) 9.4.0\nCopyright (C) 2019 Free Software "
                                      "Foundation, Inc.")
    compiler = preflight.find_host_compiler({"CUDAHOSTCXX": str(gxx), "CXX": "/nope", "PATH": ""})
    assert compiler.family == "gcc" and compiler.version == (9, 4, 0)
    with pytest.raises(ForgeError, match="torch 2.11.0's headers need gcc 11.3 or newer"):
        preflight.check_host_compiler(compiler, {"gcc": 15}, "13.0", "2.11.0")
    # torch 2.6 needs only C++17: gcc 9.4 is enough
    assert "gcc 9.4.0" in preflight.check_host_compiler(compiler, {"gcc": 15}, "12.6", "2.6.0")


def test_no_compiler_is_refused():
    with pytest.raises(ForgeError, match="no C\\+\\+ compiler"):
        preflight.check_host_compiler(None, {}, "13.0", None)


def test_cmake_older_than_the_checkout_asks_is_refused(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir / "cmake", "cmake version 3.22.1\n\nCMake suite maintained and supported by Kitware")
    tree = tree_with_pin(tmp_path)
    with pytest.raises(ForgeError, match="CMake 3.22.1, and this checkout's CMakeLists.txt asks for .* 3.26"):
        preflight.check_cmake(tree, {"PATH": str(bin_dir)})
    fake_tool(bin_dir / "cmake", "cmake version 3.31.6")
    assert preflight.check_cmake(tree, {"PATH": str(bin_dir)}).startswith("CMake 3.31.6")
    with pytest.raises(ForgeError, match="no cmake on PATH"):
        preflight.check_cmake(tree, {"PATH": str(tmp_path / "empty")})


# --- version source ---------------------------------------------------------------------------------------------

def test_a_tree_with_no_version_source_is_refused_unless_pretend_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("SETUPTOOLS_SCM_PRETEND_VERSION", raising=False)
    tree = inspect_tree(make_tree(tmp_path / "vllm", version=""))
    assert tree.version is None
    with pytest.raises(ForgeError, match="no .git, no PKG-INFO, no vllm/_version.py.*git tag vX.Y.Z"):
        preflight.check_version_source(tree, {})
    assert preflight.check_version_source(tree, {"SETUPTOOLS_SCM_PRETEND_VERSION": "0.26.0"}).endswith(
        "from SETUPTOOLS_SCM_PRETEND_VERSION")


# --- git dependencies -------------------------------------------------------------------------------------------

DEPS_CMAKE = """cmake_minimum_required(VERSION 3.26)
project(vllm_extensions)
include(FetchContent)
FetchContent_Declare(cutlass GIT_REPOSITORY https://github.com/nvidia/cutlass.git GIT_TAG v4.4.2)
FetchContent_Declare(flashmla GIT_REPOSITORY https://github.com/vllm-project/FlashMLA
  GIT_TAG a8f794d1251cbfd88a5011445dd5582289c727e4)
if(WITH_EXTRA)
  FetchContent_Declare(extra GIT_REPOSITORY https://git.example.com/extra.git GIT_TAG v1)
endif()
"""


def tree_with_deps(tmp_path):
    root = make_tree(tmp_path / "vllm")
    (root / "CMakeLists.txt").write_text(DEPS_CMAKE)
    return inspect_tree(root)


def test_every_missing_pin_is_named_when_nothing_serves_them(tmp_path):
    tree = tree_with_deps(tmp_path)
    asked = []
    with pytest.raises(ForgeError) as err:
        preflight.check_git_deps(tree, tmp_path / "cache", {}, reachable=lambda h, p, t: asked.append(h) or False)
    text = str(err.value)
    assert "2 git dependencies of vLLM 0.26.0 are neither cached nor reachable" in text
    assert "cutlass v4.4.2 (https://github.com/nvidia/cutlass.git)" in text and "flashmla a8f794d1" in text
    assert "extra" not in text  # fetched only under a build option: reported, not refused
    assert "fetch-deps --from DIR" in text and "--bundle" in text
    assert sorted(set(asked)) == ["git.example.com", "github.com"]  # one look per host, in parallel


def test_a_reachable_host_or_a_local_copy_lets_the_build_fetch(tmp_path):
    tree = tree_with_deps(tmp_path)
    checks = preflight.check_git_deps(tree, tmp_path / "cache", {}, reachable=lambda h, p, t: h == "github.com")
    assert {c.dep.name: c.how for c in checks} == {"cutlass": "network", "flashmla": "network", "extra": "missing"}
    root = tree.root
    (root / "cmake").mkdir()
    (root / "CMakeLists.txt").write_text(
        "project(x)\ninclude(FetchContent)\nif(DEFINED ENV{VLLM_CUTLASS_SRC_DIR})\n"
        "  set(VLLM_CUTLASS_SRC_DIR $ENV{VLLM_CUTLASS_SRC_DIR})\nendif()\nif(VLLM_CUTLASS_SRC_DIR)\n"
        "  FetchContent_Declare(cutlass SOURCE_DIR ${VLLM_CUTLASS_SRC_DIR})\nelse()\n"
        "  FetchContent_Declare(cutlass GIT_REPOSITORY https://github.com/nvidia/cutlass.git GIT_TAG v4.4.2)\n"
        "endif()\n")
    tree = inspect_tree(root)
    with pytest.raises(ForgeError, match="VLLM_CUTLASS_SRC_DIR=.* does not exist"):
        preflight.check_git_deps(tree, tmp_path / "cache", {"VLLM_CUTLASS_SRC_DIR": str(tmp_path / "gone")},
                                 reachable=lambda h, p, t: False)
    (tmp_path / "cutlass").mkdir()
    [check] = preflight.check_git_deps(tree, tmp_path / "cache", {"VLLM_CUTLASS_SRC_DIR": str(tmp_path / "cutlass")},
                                       reachable=lambda h, p, t: pytest.fail("no network look for a local copy"))
    assert check.how == "local copy"


@pytest.mark.parametrize("url,endpoint", [("https://github.com/nvidia/cutlass.git", ("github.com", 443)),
                                          ("http://mirror:8080/x.git", ("mirror", 8080)),
                                          ("git@github.com:org/repo.git", ("github.com", 22)),
                                          ("ssh://git@host/x", ("host", 22)), ("file:///srv/x", None),
                                          ("https://host:notaport/x", None)])
def test_endpoints(url, endpoint):
    assert preflight._endpoint(url) == endpoint


# --- a target built from a dependency that is not its pin ---------------------------------------------------------

def test_a_target_built_from_a_substitute_is_refused_unless_named(tmp_path):
    tree = tree_with_deps(tmp_path)
    tree.dep_targets.update({"flashmla": frozenset({"_flashmla_C", "_flashmla_extension_C"}),
                             "cutlass": frozenset({"_C_stable_libtorch"})})
    flashmla = next(d for d in tree.git_deps if d.name == "flashmla")
    cutlass = next(d for d in tree.git_deps if d.name == "cutlass")
    checked = preflight.Preflight(deps=[
        preflight.DepCheck(flashmla, "cache", "substitute: imported from flashmla-SUBSTITUTE-2bc126e03c79.tar.xz",
                           "substitute"),
        preflight.DepCheck(cutlass, "cache", "unverified: imported from cutlass-v4.4.2.tar.xz", "unverified")])
    everything = ["_C_stable_libtorch", "_flashmla_C", "_flashmla_extension_C"]
    with pytest.raises(ForgeError) as err:
        preflight.check_substitutes(tree, checked, everything, set())
    text = str(err.value)
    assert "flashmla in the cache is not the pin (substitute: imported from flashmla-SUBSTITUTE" in text
    assert "_flashmla_C, _flashmla_extension_C would be built from it" in text
    assert "--targets _C_stable_libtorch" in text
    assert preflight.check_substitutes(tree, checked, ["_C_stable_libtorch"], {"_C_stable_libtorch"}) == [
        "flashmla is not the pin, and no target of this build needs it"]
    assert preflight.check_substitutes(tree, checked, ["_flashmla_C"], {"_flashmla_C"}) == [
        "_flashmla_C: built from flashmla, which is not the pin (named in --targets)"]
    with pytest.raises(ForgeError, match="_flashmla_extension_C would be built"):
        preflight.check_substitutes(tree, checked, ["_flashmla_C", "_flashmla_extension_C"], {"_flashmla_C"})
