"""inspect_tree on small synthetic checkouts in the shapes of vLLM 0.8, 0.10 and 0.33.

The trees are written here, in the constructs the real releases use (see docs/vllm-versions.md);
no vLLM file is copied. tests/integration/test_vllm_releases.py checks the same facts on the real
sdists from PyPI.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.source import vllm_tree
from vllm_forge.source.vllm_tree import (
    CMakeArg,
    CMakeScope,
    cuda_context,
    evaluate_condition,
    inspect_tree,
    parse_cmake,
)

cu = CudaRelease.parse


def arch(text: str):
    """One ``--arch`` value, parsed as the settings parse it."""
    (parsed,) = parse_arch_list(text)
    return parsed


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


SETUP_COMMON = """
    import os
    from shutil import which
    from setuptools_scm import get_version

    envs = load_module_from_path("envs", "vllm/envs.py")

    def sccache():
        return which("sccache") is not None

    def ccache():
        return which("ccache") is not None

    jobs = envs.MAX_JOBS
    threads = envs.NVCC_THREADS
    cfg = envs.CMAKE_BUILD_TYPE or "Release"
    device = envs.VLLM_TARGET_DEVICE
    base = os.environ.get("FETCHCONTENT_BASE_DIR", "deps")
"""

CUTLASS_BLOCK = """
    if(VLLM_GPU_LANG STREQUAL "CUDA")
      set(CUTLASS_REVISION "{tag}" CACHE STRING "revision")
      if (DEFINED ENV{{VLLM_CUTLASS_SRC_DIR}})
        set(VLLM_CUTLASS_SRC_DIR $ENV{{VLLM_CUTLASS_SRC_DIR}})
      endif()
      if(VLLM_CUTLASS_SRC_DIR)
        FetchContent_Declare(cutlass SOURCE_DIR ${{VLLM_CUTLASS_SRC_DIR}})
      else()
        FetchContent_Declare(
            cutlass
            GIT_REPOSITORY https://github.com/nvidia/cutlass.git
            # keep in sync with the revision above
            GIT_TAG ${{CUTLASS_REVISION}}
            GIT_SHALLOW TRUE
        )
      endif()
      FetchContent_MakeAvailable(cutlass)
    endif()
"""

FA_CMAKE = """
    if (DEFINED ENV{VLLM_FLASH_ATTN_SRC_DIR})
      set(VLLM_FLASH_ATTN_SRC_DIR $ENV{VLLM_FLASH_ATTN_SRC_DIR})
    endif()
    if(VLLM_FLASH_ATTN_SRC_DIR)
      FetchContent_Declare(vllm-flash-attn SOURCE_DIR ${VLLM_FLASH_ATTN_SRC_DIR})
    else()
      FetchContent_Declare(
              vllm-flash-attn
              GIT_REPOSITORY https://github.com/vllm-project/flash-attention.git
              GIT_TAG 0123456789abcdef0123456789abcdef01234567
              GIT_PROGRESS TRUE
      )
    endif()
"""


def make_v08(root: Path, version: str = "0.8.4") -> Path:
    write(root, "PKG-INFO", f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    write(root, "vllm/__init__.py", "")
    write(root, "setup.py", SETUP_COMMON)
    write(root, "use_existing_torch.py", """
        import glob
        for name in glob.glob("requirements/*.txt"):
            pass  # drops every line that mentions torch
    """)
    write(root, "requirements/build.txt", "cmake>=3.26\ntorch==2.6.0\n")
    write(root, "CMakeLists.txt", """
        cmake_minimum_required(VERSION 3.26)
        project(vllm_extensions LANGUAGES CXX)
        find_package(Torch REQUIRED)
        if(VLLM_GPU_LANG STREQUAL "CUDA")
          clear_cuda_arches(CUDA_ARCH_FLAGS)
          extract_unique_cuda_archs_ascending(CUDA_ARCHS "${CUDA_ARCH_FLAGS}")
        endif()
        # Supported NVIDIA architectures.
        set(CUDA_SUPPORTED_ARCHS "7.0;7.5;8.0;8.6;8.9;9.0;10.0;12.0")
    """ + CUTLASS_BLOCK.format(tag="v3.8.0") + """
        if(VLLM_GPU_LANG STREQUAL "CUDA")
          include(${CMAKE_CURRENT_LIST_DIR}/cmake/external_projects/vllm_flash_attn.cmake)
        endif()
    """)
    write(root, "cmake/external_projects/vllm_flash_attn.cmake", FA_CMAKE)
    write(root, "docker/Dockerfile", """
        ARG CUDA_VERSION=12.4.1
        FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS base
        ARG torch_cuda_arch_list='7.0 7.5 8.0 8.6 8.9 9.0+PTX'
        ENV TORCH_CUDA_ARCH_LIST=${torch_cuda_arch_list}
        ARG vllm_fa_cmake_gpu_arches='80-real;90-real'
        ENV VLLM_FA_CMAKE_GPU_ARCHES=${vllm_fa_cmake_gpu_arches}
        ARG max_jobs=2
        ARG USE_SCCACHE
        ARG SCCACHE_BUCKET_NAME=vllm-build-sccache
        ARG VLLM_MAX_SIZE_MB=400
    """)
    write(root, ".buildkite/check-wheel-size.py", """
        import os
        VLLM_MAX_SIZE_MB = int(os.environ.get('VLLM_MAX_SIZE_MB', 400))
    """)
    return root


def make_v010(root: Path) -> Path:
    make_v08(root, "0.10.0")
    write(root, "CMakeLists.txt", """
        cmake_minimum_required(VERSION 3.26)
        project(vllm_extensions LANGUAGES CXX)
        find_package(Torch REQUIRED)
        if(DEFINED CMAKE_CUDA_COMPILER_VERSION AND
           CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.8)
          set(CUDA_SUPPORTED_ARCHS "7.0;7.5;8.0;8.6;8.9;9.0;10.0;12.0")
        else()
          set(CUDA_SUPPORTED_ARCHS "7.0;7.5;8.0;8.6;8.9;9.0")
        endif()
    """ + CUTLASS_BLOCK.format(tag="v4.0.0") + """
        include(cmake/external_projects/vllm_flash_attn.cmake)
    """)
    return root


def make_v033(root: Path) -> Path:
    write(root, "PKG-INFO", "Metadata-Version: 2.1\nName: vllm\nVersion: 0.33.0\n")
    write(root, "vllm/__init__.py", "")
    write(root, "setup.py", SETUP_COMMON + """
    def version():
        if env_version := os.getenv("VLLM_VERSION_OVERRIDE"):
            os.environ["SETUPTOOLS_SCM_PRETEND_VERSION"] = env_version
        return get_version()

    extra = os.environ.get("CMAKE_ARGS")
    disable = int(os.getenv("VLLM_DISABLE_SCCACHE", "0"))
    """)
    write(root, "tools/use_existing_torch.py", """
        import argparse
        import glob
        parser = argparse.ArgumentParser()
        parser.add_argument("--prefix", action="store_true")
        files = [*glob.glob("requirements/**/*.txt", recursive=True), *glob.glob("pyproject.toml")]
    """)
    write(root, "requirements/build/cuda.txt", "cmake>=3.26\ntorch==2.11.0\n")
    write(root, "CMakeLists.txt", """
        cmake_minimum_required(VERSION 3.26)
        project(vllm_extensions LANGUAGES CXX)
        find_package(Torch REQUIRED)
        if(DEFINED CMAKE_CUDA_COMPILER_VERSION AND
           CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 13.4)
          set(CUDA_SUPPORTED_ARCHS "7.5;8.0;8.6;8.7;8.9;9.0;10.0;10.7;11.0;12.0")
        elseif(DEFINED CMAKE_CUDA_COMPILER_VERSION AND
           CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 13.0)
          set(CUDA_SUPPORTED_ARCHS "7.5;8.0;8.6;8.7;8.9;9.0;10.0;11.0;12.0")
        elseif(DEFINED CMAKE_CUDA_COMPILER_VERSION AND
           CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.8)
          set(CUDA_SUPPORTED_ARCHS "7.5;8.0;8.6;8.7;8.9;9.0;10.0;10.1;10.3;12.0;12.1")
        else()
          set(CUDA_SUPPORTED_ARCHS "7.0;7.5;8.0;8.6;8.7;8.9;9.0")
        endif()
        if(VLLM_GPU_LANG STREQUAL "CUDA")
          clear_cuda_gencode_flags(CUDA_ARCH_FLAGS)
          warn_if_ptx_arch_requested("${CUDA_ARCH_FLAGS}")
          extract_unique_cuda_archs_ascending(CUDA_ARCHS "${CUDA_ARCH_FLAGS}")
        endif()
    """ + CUTLASS_BLOCK.format(tag="v4.7.1") + """
        include(cmake/external_projects/triton_kernels.cmake)
        include(cmake/external_projects/deepgemm.cmake)
        include(cmake/external_projects/vllm_flash_attn.cmake)
    """)
    write(root, "cmake/external_projects/vllm_flash_attn.cmake", FA_CMAKE.replace(
        "0123456789abcdef0123456789abcdef01234567", "89abcdef0123456789abcdef0123456789abcdef"))
    write(root, "cmake/external_projects/triton_kernels.cmake", """
        if (DEFINED ENV{TRITON_KERNELS_SRC_DIR})
          FetchContent_Declare(triton_kernels SOURCE_DIR $ENV{TRITON_KERNELS_SRC_DIR})
        else()
          if (VLLM_TARGET_DEVICE STREQUAL "rocm")
            set(TRITON_GIT "https://github.com/ROCm/triton.git")
            set(TRITON_KERNELS_TAG "rocm-pin")
          else()
            set(TRITON_GIT "https://github.com/triton-lang/triton.git")
            set(TRITON_KERNELS_TAG "v3.5.1")
          endif()
          FetchContent_Declare(
                  triton_kernels
                  GIT_REPOSITORY ${TRITON_GIT}
                  GIT_TAG ${TRITON_KERNELS_TAG}
                  SOURCE_SUBDIR python/triton_kernels/triton_kernels
          )
        endif()
        FetchContent_MakeAvailable(triton_kernels)
        if (DEFINED ENV{TRITON_KERNELS_SRC_DIR})
          set(TRITON_KERNELS_PYTHON_DIR "${triton_kernels_SOURCE_DIR}/")
        else()
          set(TRITON_KERNELS_PYTHON_DIR "${triton_kernels_SOURCE_DIR}/python/triton_kernels/triton_kernels/")
        endif()
    """)
    write(root, "cmake/external_projects/deepgemm.cmake", """
        if (DEFINED ENV{DEEPGEMM_SRC_DIR})
          set(DEEPGEMM_SRC_DIR $ENV{DEEPGEMM_SRC_DIR})
        endif()
        if(DEEPGEMM_SRC_DIR)
          set(deepgemm_SOURCE_DIR "${DEEPGEMM_SRC_DIR}")
        else()
          set(_UPSTREAM_REPO "https://github.com/vllm-project/DeepGEMM.git")
          set(_UPSTREAM_TAG "fedcba9876543210fedcba9876543210fedcba98")
          FetchContent_Populate(
            deepgemm
            SOURCE_DIR "${CMAKE_BINARY_DIR}/_deps/deepgemm-src"
            GIT_REPOSITORY "${_UPSTREAM_REPO}"
            GIT_TAG "${_UPSTREAM_TAG}"
            GIT_SUBMODULES "third-party/cutlass" "third-party/fmt"
          )
        endif()
    """)
    write(root, "docker/Dockerfile", """
        ARG CUDA_VERSION=12.9.1
        FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS base
        ARG torch_cuda_arch_list='7.0 7.5 8.0 8.9 9.0 10.0 12.0'
        ENV TORCH_CUDA_ARCH_LIST=${torch_cuda_arch_list}
        ARG max_jobs=2
        ARG nvcc_threads=8
        ARG USE_SCCACHE
        ARG VLLM_MAX_SIZE_MB=500
        ENV VLLM_MAX_SIZE_MB=$VLLM_MAX_SIZE_MB
    """)
    write(root, ".buildkite/check-wheel-size.py", """
        import os
        VLLM_MAX_SIZE_MB = int(os.environ.get("VLLM_MAX_SIZE_MB", 500))
    """)
    return root


# --- the CMake reader --------------------------------------------------------------------------

def test_parse_cmake_handles_comments_quotes_brackets_and_lines():
    commands = parse_cmake(textwrap.dedent("""
        # a comment with set(NOT_THIS 1)
        #[[ a bracket comment
            set(NOR_THIS 1) ]]
        set(A "x;y # not a comment" [=[bracket ) arg]=])
        if((A AND B) OR NOT C)
        endif()
        Foo_Bar(
          one
          "two three"
        )
    """))
    names = [c.name for c in commands]
    assert names == ["set", "if", "endif", "foo_bar"]
    assert [a.value for a in commands[0].args] == ["A", "x;y # not a comment", "bracket ) arg"]
    assert [a.value for a in commands[1].args] == ["(", "A", "AND", "B", ")", "OR", "NOT", "C"]
    assert commands[3].line == 8
    assert commands[3].args[1] == CMakeArg("two three", quoted=True)


@pytest.mark.parametrize(("condition", "cuda", "expected"), [
    ("DEFINED CMAKE_CUDA_COMPILER_VERSION AND CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.8", "12.8", True),
    ("DEFINED CMAKE_CUDA_COMPILER_VERSION AND CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.8", "12.6", False),
    ("DEFINED CMAKE_CUDA_COMPILER_VERSION AND CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.8", None, None),
    ("${CMAKE_CUDA_COMPILER_VERSION} VERSION_GREATER 12.3", "12.4", True),
    ("CMAKE_CUDA_COMPILER_VERSION VERSION_LESS 13.0", "12.9", True),
    ('VLLM_GPU_LANG STREQUAL "CUDA"', None, True),
    ('VLLM_TARGET_DEVICE STREQUAL "rocm"', None, False),
    ("NOT (VLLM_GPU_LANG STREQUAL \"HIP\")", None, True),
    ("DEFINED ENV{VLLM_CUTLASS_SRC_DIR}", None, False),
    ("VLLM_CUTLASS_SRC_DIR", None, False),
    ("SOME_ARCHS", "12.8", None),  # set by a function this reader does not run: undecided
    ("SOME_ARCHS OR VLLM_GPU_LANG STREQUAL \"CUDA\"", None, True),
    ("SOME_ARCHS AND VLLM_GPU_LANG STREQUAL \"HIP\"", None, False),
])
def test_evaluate_condition_three_valued(condition, cuda, expected):
    args = [a for c in parse_cmake(f"if({condition})\n") for a in c.args]
    assert evaluate_condition(args, CMakeScope(cuda_context(cu(cuda) if cuda else None))) is expected


# --- the three release shapes ---------------------------------------------------------------------

def test_v08_shape(tmp_path):
    tree = inspect_tree(make_v08(tmp_path))
    assert tree.version == "0.8.4" and tree.version_source == "PKG-INFO" and tree.kind == "vllm"
    assert (tree.use_existing_torch, tree.takes_prefix) == ("use_existing_torch.py", False)
    assert tree.torch_pin_globs == ("requirements/*.txt",)
    assert tree.build_requirements == "requirements/build.txt"
    for knob in ("TORCH_CUDA_ARCH_LIST", "VLLM_FA_CMAKE_GPU_ARCHES", "MAX_JOBS", "NVCC_THREADS", "CMAKE_BUILD_TYPE",
                 "VLLM_TARGET_DEVICE", "SETUPTOOLS_SCM_PRETEND_VERSION", "FETCHCONTENT_BASE_DIR"):
        assert tree.reads(knob), knob
    assert not tree.reads("VLLM_VERSION_OVERRIDE") and not tree.reads("CMAKE_ARGS")
    assert tree.version_env == "SETUPTOOLS_SCM_PRETEND_VERSION"
    assert "docker/Dockerfile" in tree.env_var_sources["VLLM_FA_CMAKE_GPU_ARCHES"][0]
    # one unconditional gate: the same list whatever the nvcc
    assert tree.cuda_supported_archs(cu("12.6")) == tree.cuda_supported_archs(cu("13.0")) == \
        ["7.0", "7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0"]
    assert tree.wheel_size_limit_mb == 400
    assert tree.dockerfile == "docker/Dockerfile"
    assert tree.dockerfile_args["torch_cuda_arch_list"] == "7.0 7.5 8.0 8.6 8.9 9.0+PTX"
    assert tree.dockerfile_args["USE_SCCACHE"] is None
    assert tree.global_ptx_ignored and not tree.ptx_warning
    assert tree.compile_cache_tools == ("sccache", "ccache")
    deps = {d.name: d for d in tree.git_deps}
    assert set(deps) == {"cutlass", "vllm-flash-attn"}
    assert (deps["cutlass"].repository, deps["cutlass"].tag) == ("https://github.com/nvidia/cutlass.git", "v3.8.0")
    assert deps["cutlass"].src_dir_env == "VLLM_CUTLASS_SRC_DIR" and deps["cutlass"].shallow
    assert deps["vllm-flash-attn"].src_dir_env == "VLLM_FLASH_ATTN_SRC_DIR"
    assert deps["vllm-flash-attn"].file == "cmake/external_projects/vllm_flash_attn.cmake"
    assert deps["vllm-flash-attn"].submodules is None  # FetchContent's default: every submodule


def test_v010_shape_gate_depends_on_nvcc(tmp_path):
    tree = inspect_tree(make_v010(tmp_path))
    assert tree.cuda_supported_archs(cu("12.6")) == ["7.0", "7.5", "8.0", "8.6", "8.9", "9.0"]
    assert tree.cuda_supported_archs(cu("12.8")) == ["7.0", "7.5", "8.0", "8.6", "8.9", "9.0", "10.0", "12.0"]
    assert tree.cuda_supported_archs(cu("13.0")) == tree.cuda_supported_archs(cu("12.8"))
    assert {d.name: d.tag for d in tree.git_deps}["cutlass"] == "v4.0.0"
    assert tree.reads("VLLM_FA_CMAKE_GPU_ARCHES")


def test_v010_preflight_refuses_what_cmake_would_drop(tmp_path):
    tree = inspect_tree(make_v010(tmp_path))
    assert tree.dropped_archs(parse_arch_list("12.0 9.0"), cu("12.6")) == ["12.0"]
    with pytest.raises(ForgeError) as err:
        tree.check_archs(parse_arch_list("12.0"), cu("12.6"))
    text = str(err.value)
    assert "vLLM 0.10.0" in text and "12.0" in text and "CUDA 12.6" in text
    assert "7.0;7.5;8.0;8.6;8.9;9.0" in text and "--cuda 12.8" in text
    tree.check_archs(parse_arch_list("12.0 9.0"), cu("12.8"))  # no error


def test_v033_shape(tmp_path):
    tree = inspect_tree(make_v033(tmp_path))
    assert tree.version == "0.33.0"
    assert (tree.use_existing_torch, tree.takes_prefix) == ("tools/use_existing_torch.py", True)
    assert tree.torch_pin_globs == ("requirements/**/*.txt", "pyproject.toml")
    assert tree.build_requirements == "requirements/build/cuda.txt"
    assert not tree.reads("VLLM_FA_CMAKE_GPU_ARCHES")
    assert tree.reads("VLLM_VERSION_OVERRIDE") and tree.version_env == "VLLM_VERSION_OVERRIDE"
    assert tree.reads("CMAKE_ARGS") and tree.reads("VLLM_DISABLE_SCCACHE")
    assert tree.global_ptx_ignored and tree.ptx_warning
    assert tree.wheel_size_limit_mb == 500
    assert "USE_SCCACHE" in tree.dockerfile_args and "vllm_fa_cmake_gpu_arches" not in tree.dockerfile_args
    assert tree.cuda_supported_archs(cu("12.6")) == ["7.0", "7.5", "8.0", "8.6", "8.7", "8.9", "9.0"]
    assert tree.cuda_supported_archs(cu("12.9"))[-2:] == ["12.0", "12.1"]
    assert tree.cuda_supported_archs(cu("13.0")) == ["7.5", "8.0", "8.6", "8.7", "8.9", "9.0", "10.0", "11.0", "12.0"]
    assert "10.7" in tree.cuda_supported_archs(cu("13.4"))
    summary = tree.summary()
    assert summary.startswith("vLLM 0.33.0: tools/use_existing_torch.py --prefix, requirements/build/cuda.txt")


def test_v033_arch_mapping_follows_the_loose_intersection(tmp_path):
    tree = inspect_tree(make_v033(tmp_path))
    assert tree.gate_arch_for(arch("12.1"), cu("12.8")) == "12.1"
    assert tree.gate_arch_for(arch("12.1"), cu("13.0")) == "12.0"  # family code for the whole SM12x
    assert tree.gate_arch_for(arch("10.3"), cu("13.0")) == "10.0"
    assert tree.gate_arch_for(arch("9.0a"), cu("13.0")) == "9.0a"
    assert tree.gate_arch_for(arch("sm_120"), cu("12.8")) == "12.0"
    assert tree.gate_arch_for(arch("7.0"), cu("13.0")) is None  # Volta left the list with CUDA 13
    assert tree.gate_arch_for(arch("12.0"), cu("12.6")) is None
    with pytest.raises(ForgeError):  # parsed once, where it is typed
        arch("nonsense")


def test_v033_git_deps_resolve_variables_branches_and_overrides(tmp_path):
    tree = inspect_tree(make_v033(tmp_path))
    deps = {d.name: d for d in tree.git_deps}
    assert set(deps) == {"cutlass", "triton_kernels", "deepgemm", "vllm-flash-attn"}
    triton = deps["triton_kernels"]
    assert (triton.repository, triton.tag) == ("https://github.com/triton-lang/triton.git", "v3.5.1")  # not ROCm's
    assert triton.src_dir_env == "TRITON_KERNELS_SRC_DIR"
    assert triton.source_subdir == "python/triton_kernels/triton_kernels"
    deepgemm = deps["deepgemm"]
    assert (deepgemm.repository, deepgemm.tag) == ("https://github.com/vllm-project/DeepGEMM.git",
                                                   "fedcba9876543210fedcba9876543210fedcba98")
    assert deepgemm.submodules == ("third-party/cutlass", "third-party/fmt")
    assert deepgemm.src_dir_env == "DEEPGEMM_SRC_DIR" and deepgemm.declared_by == "fetchcontent_populate"
    assert deps["cutlass"].tag == "v4.7.1"
    assert deps["cutlass"].cmake_source_dir_var == "FETCHCONTENT_SOURCE_DIR_CUTLASS"


def test_conventional_name_src_dir_without_if_chain(tmp_path):
    """The shape the miniature project can take: one Declare honouring <NAME>_SRC_DIR."""
    make_v08(tmp_path)
    write(tmp_path, "CMakeLists.txt", """
        project(mini LANGUAGES CXX)
        include(FetchContent)
        if(DEFINED ENV{TINYLIB_SRC_DIR})
          message(STATUS "using $ENV{TINYLIB_SRC_DIR}")
        endif()
        FetchContent_Declare(tinylib GIT_REPOSITORY https://github.com/example/tinylib.git GIT_TAG v1.2.3)
    """)
    tree = inspect_tree(tmp_path)
    [dep] = tree.git_deps
    assert (dep.name, dep.tag, dep.src_dir_env) == ("tinylib", "v1.2.3", "TINYLIB_SRC_DIR")


def test_unresolvable_tag_is_a_clear_error(tmp_path):
    make_v08(tmp_path)
    write(tmp_path, "CMakeLists.txt", """
        project(x)
        FetchContent_Declare(lib GIT_REPOSITORY https://github.com/example/lib.git GIT_TAG ${FROM_A_FUNCTION})
    """)
    with pytest.raises(ForgeError, match="declares 'lib'"):
        inspect_tree(tmp_path)


def test_wheel_limit_falls_back_to_the_check_script(tmp_path):
    make_v08(tmp_path)
    (tmp_path / "docker" / "Dockerfile").write_text("FROM scratch\n")
    tree = inspect_tree(tmp_path)
    assert (tree.wheel_size_limit_mb, tree.wheel_size_source) == (400, ".buildkite/check-wheel-size.py")
    (tmp_path / ".buildkite" / "check-wheel-size.py").unlink()
    tree = inspect_tree(tmp_path)
    assert tree.wheel_size_limit_mb is None and tree.wheel_limit_mb() == 400


# --- refusals ---------------------------------------------------------------------------------------

def test_not_a_vllm_tree(tmp_path):
    write(tmp_path, "setup.py", "from setuptools import setup\nsetup()\n")
    with pytest.raises(ForgeError, match="not a vLLM source tree .*CMakeLists.txt, vllm/"):
        inspect_tree(tmp_path)


def test_missing_path(tmp_path):
    with pytest.raises(ForgeError, match="does not exist"):
        inspect_tree(tmp_path / "nope")


def test_too_old_by_version(tmp_path):
    make_v08(tmp_path, version="0.7.3")
    with pytest.raises(ForgeError, match=r"vLLM 0\.7\.3 .*supports vLLM 0\.8 and newer"):
        inspect_tree(tmp_path)


def test_too_old_by_layout_when_version_unknown(tmp_path):
    make_v08(tmp_path)
    (tmp_path / "PKG-INFO").unlink()
    for path in sorted((tmp_path / "requirements").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tmp_path / "requirements").rmdir()
    write(tmp_path, "requirements-build.txt", "cmake\n")
    with pytest.raises(ForgeError, match="pre-0.8 layout"):
        inspect_tree(tmp_path)


def test_unknown_version_is_allowed_with_a_note(tmp_path):
    make_v033(tmp_path)
    (tmp_path / "PKG-INFO").unlink()
    tree = inspect_tree(tmp_path)
    assert tree.version is None and tree.version_source == "unknown"
    assert any("version unknown" in note for note in tree.notes)


def test_version_from_generated_version_file(tmp_path):
    make_v033(tmp_path)
    (tmp_path / "PKG-INFO").unlink()
    write(tmp_path, "vllm/_version.py", "__version__ = version = '0.12.1.dev5+gabc'\n")
    tree = inspect_tree(tmp_path)
    assert (tree.version, tree.version_source) == ("0.12.1.dev5+gabc", "vllm/_version.py")


def test_embedded_miniature_project_is_accepted(repo_root):
    tree = inspect_tree(repo_root / "tests" / "fixtures" / "minivllm")
    assert tree.kind == "minivllm"
    assert tree.use_existing_torch == "use_existing_torch.py" and not tree.takes_prefix
    assert tree.reads("VLLM_FA_CMAKE_GPU_ARCHES") and tree.reads("TORCH_CUDA_ARCH_LIST")
    assert tree.reads("VLLM_VERSION_OVERRIDE") and tree.reads("MAX_JOBS")
    assert tree.cuda_supported_archs(cu("12.8")) is None  # no gate: every arch nvcc accepts
    assert tree.gate_arch_for(arch("12.0"), cu("12.8")) == "12.0"


# --- output -------------------------------------------------------------------------------------------

def test_json_cli(tmp_path, capsys):
    make_v033(tmp_path)
    assert vllm_tree.main([str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["version"] == "0.33.0"
    assert data["arch_gate"]["13.0"][-1] == "12.0"
    assert "VLLM_FA_CMAKE_GPU_ARCHES" not in data["build_knobs_read"]
    assert {d["name"] for d in data["git_deps"]} >= {"cutlass", "deepgemm"}


def test_text_cli_and_error_exit(tmp_path, capsys):
    make_v010(tmp_path)
    assert vllm_tree.main([str(tmp_path), "--cuda", "12.6"]) == 0
    out = capsys.readouterr().out
    assert "vLLM 0.10.0:" in out and "CUDA 12.6: 7.0;7.5;8.0;8.6;8.9;9.0" in out
    from vllm_forge.core.errors import run_main
    assert run_main(vllm_tree.main, [str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
