"""fetch_deps without git: URL rewriting, cache layout, the environment it hands the build, refusals."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.deps import fetch_deps as fd
from vllm_forge.source.vllm_tree import GitDep, inspect_tree


def make_tree(root: Path, cmake: str, setup: str = "", version: str = "0.20.0") -> Path:
    (root / "vllm").mkdir(parents=True, exist_ok=True)
    (root / "PKG-INFO").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    (root / "setup.py").write_text(textwrap.dedent(setup))
    (root / "CMakeLists.txt").write_text(textwrap.dedent(cmake))
    return root


WITH_OVERRIDE = """
    project(x)
    if(DEFINED ENV{VLLM_CUTLASS_SRC_DIR})
      set(VLLM_CUTLASS_SRC_DIR $ENV{VLLM_CUTLASS_SRC_DIR})
    endif()
    if(VLLM_CUTLASS_SRC_DIR)
      FetchContent_Declare(cutlass SOURCE_DIR ${VLLM_CUTLASS_SRC_DIR})
    else()
      FetchContent_Declare(cutlass GIT_REPOSITORY https://github.com/nvidia/cutlass.git GIT_TAG v4.0.0)
    endif()
"""

NO_OVERRIDE = """
    project(x)
    FetchContent_Declare(plainlib GIT_REPOSITORY https://github.com/example/plainlib.git GIT_TAG v1.0)
"""


def mark_cached(cache: Path, dep: GitDep) -> Path:
    path = fd.dep_dir(cache, dep)
    path.mkdir(parents=True)
    (path.parent / (path.name + fd.MARKER_SUFFIX)).write_text(json.dumps(
        {"name": dep.name, "repository": dep.repository, "tag": dep.tag}))
    return path


def test_github_proxy_prefixes_the_whole_url():
    rewrites = fd.url_rewrites("https://ghproxy.example.com")
    assert fd.rewrite_url("https://github.com/nvidia/cutlass.git", rewrites) == \
        "https://ghproxy.example.com/https://github.com/nvidia/cutlass.git"
    assert fd.rewrite_url("https://gitlab.com/x/y.git", rewrites) == "https://gitlab.com/x/y.git"


def test_url_map_longest_prefix_wins():
    rewrites = fd.url_rewrites(url_map={"https://github.com/": "file:///srv/all/",
                                        "https://github.com/nvidia/": "file:///srv/nvidia/"})
    assert fd.rewrite_url("https://github.com/nvidia/cutlass.git", rewrites) == "file:///srv/nvidia/cutlass.git"
    assert fd.rewrite_url("https://github.com/org/x.git", rewrites) == "file:///srv/all/org/x.git"


def test_git_config_carries_the_rewrites():
    config, secret = fd._git_config(fd.url_rewrites("https://p.example/"))
    assert ("url.https://p.example/https://github.com/.insteadOf", "https://github.com/") in config and not secret


def test_bad_proxy_is_refused():
    with pytest.raises(ForgeError, match="not a URL"):
        fd.url_rewrites("ghproxy.example.com")


def test_cache_layout_is_name_at_rev(tmp_path):
    dep = GitDep("vllm-flash-attn", "https://github.com/vllm-project/flash-attention.git", "abc123", None)
    assert fd.dep_dir(tmp_path, dep) == tmp_path / "deps" / "vllm-flash-attn@abc123"
    odd = GitDep("x", "https://github.com/a/x.git", "release/1.0", None)
    assert fd.dep_dir(tmp_path, odd).name == "x@release_1.0"


def test_is_cached_needs_the_marker_of_the_same_pin(tmp_path):
    dep = GitDep("cutlass", "https://github.com/nvidia/cutlass.git", "v4.0.0", "VLLM_CUTLASS_SRC_DIR")
    path = fd.dep_dir(tmp_path, dep)
    path.mkdir(parents=True)
    assert not fd.is_cached(tmp_path, dep)  # a clone without marker was interrupted
    (path.parent / (path.name + fd.MARKER_SUFFIX)).write_text(json.dumps(
        {"repository": "https://github.com/someone-else/cutlass.git", "tag": "v4.0.0"}))
    assert not fd.is_cached(tmp_path, dep)
    (path.parent / (path.name + fd.MARKER_SUFFIX)).write_text("not json")
    assert not fd.is_cached(tmp_path, dep)
    (path.parent / (path.name + fd.MARKER_SUFFIX)).write_text(json.dumps(
        {"repository": dep.repository, "tag": dep.tag}))
    assert fd.is_cached(tmp_path, dep)


def test_env_names_each_cached_dep_by_its_override(tmp_path):
    tree = inspect_tree(make_tree(tmp_path / "src", WITH_OVERRIDE))
    cache = tmp_path / "cache"
    [dep] = tree.git_deps
    path = mark_cached(cache, dep)
    assert fd.fetch_deps(tree, cache, offline=True) == {"VLLM_CUTLASS_SRC_DIR": str(path)}


def test_env_for_a_build_that_sees_the_cache_elsewhere(tmp_path):
    tree = inspect_tree(make_tree(tmp_path / "src", WITH_OVERRIDE))
    [dep] = tree.git_deps
    mark_cached(tmp_path / "cache", dep)
    assert fd.deps_env(tree, tmp_path / "cache", at="/forge-cache") == \
        {"VLLM_CUTLASS_SRC_DIR": "/forge-cache/deps/cutlass@v4.0.0"}
    assert fd.deps_env(tree, tmp_path / "elsewhere", at="/forge-cache") == {}  # only what is cached


def test_env_points_into_the_subdir_the_override_expects(tmp_path):
    tree = inspect_tree(make_tree(tmp_path / "src", """
        project(x)
        if (DEFINED ENV{TRITON_KERNELS_SRC_DIR})
          FetchContent_Declare(triton_kernels SOURCE_DIR $ENV{TRITON_KERNELS_SRC_DIR})
        else()
          FetchContent_Declare(triton_kernels GIT_REPOSITORY https://github.com/triton-lang/triton.git
                               GIT_TAG v3.5.1 SOURCE_SUBDIR python/triton_kernels/triton_kernels)
        endif()
        if (DEFINED ENV{TRITON_KERNELS_SRC_DIR})
          set(PYDIR "${triton_kernels_SOURCE_DIR}/")
        else()
          set(PYDIR "${triton_kernels_SOURCE_DIR}/python/triton_kernels/triton_kernels/")
        endif()
    """))
    [dep] = tree.git_deps
    path = mark_cached(tmp_path / "cache", dep)
    env = fd.deps_env(tree, tmp_path / "cache")
    assert env == {"TRITON_KERNELS_SRC_DIR": str(path / "python/triton_kernels/triton_kernels")}


def test_cmake_args_fallback_when_setup_forwards_them(tmp_path):
    tree = inspect_tree(make_tree(tmp_path / "src", NO_OVERRIDE,
                                  setup='import os\nextra = os.environ.get("CMAKE_ARGS")\n'))
    [dep] = tree.git_deps
    assert fd.override_for(tree, dep) == "CMAKE_ARGS=-DFETCHCONTENT_SOURCE_DIR_PLAINLIB"
    path = mark_cached(tmp_path / "cache", dep)
    env = fd.deps_env(tree, tmp_path / "cache", cmake_args="-DFOO=1")
    assert env == {"CMAKE_ARGS": f"-DFOO=1 -DFETCHCONTENT_SOURCE_DIR_PLAINLIB={path}"}


def test_no_way_to_redirect_is_refused_before_any_download(tmp_path):
    tree = inspect_tree(make_tree(tmp_path / "src", NO_OVERRIDE))
    with pytest.raises(ForgeError, match=r"no way to use a local copy of plainlib \(CMakeLists.txt:3\)"):
        fd.fetch_deps(tree, tmp_path / "cache", url_map={"https://github.com/": "file:///nonexistent/"})
    assert not (tmp_path / "cache").exists()


def test_offline_with_missing_deps_names_every_pin_its_url_and_the_fix(tmp_path):
    tree = inspect_tree(make_tree(tmp_path / "src", WITH_OVERRIDE + """
        FetchContent_Declare(flashmla GIT_REPOSITORY https://github.com/vllm-project/FlashMLA
                             GIT_TAG a8f794d1251cbfd88a5011445dd5582289c727e4)
    """, setup='import os\nos.environ.get("CMAKE_ARGS")\n'))
    with pytest.raises(ForgeError) as err:
        fd.fetch_deps(tree, tmp_path / "cache", url_map={"https://github.com/": "https://git.lab.example/gh/"},
                      offline=True)
    text = str(err.value)
    assert text.startswith("2 git dependencies of vLLM 0.20.0 are not in ")
    assert "cutlass @ v4.0.0 (https://git.lab.example/gh/nvidia/cutlass.git), flashmla @ " \
           "a8f794d1251cbfd88a5011445dd5582289c727e4 (https://git.lab.example/gh/vllm-project/FlashMLA). Fix: " in text
    assert "`invoke fetch-deps --bundle deps.tar`" in text and "`invoke fetch-deps --from DIR`" in text
    assert "--github-proxy" in text and "\n" not in text


def test_plan_fetch_reports_cached_and_urls(tmp_path):
    tree = inspect_tree(make_tree(tmp_path / "src", WITH_OVERRIDE))
    [status] = fd.plan_fetch(tree, tmp_path / "cache", github_proxy="https://p.example/")
    assert not status.cached and status.url == "https://p.example/https://github.com/nvidia/cutlass.git"
    mark_cached(tmp_path / "cache", status.dep)
    [status] = fd.plan_fetch(tree, tmp_path / "cache")
    assert status.cached


def test_cli_dry_run_and_url_map_errors(tmp_path, capsys):
    src = make_tree(tmp_path / "src", WITH_OVERRIDE)
    assert fd.main([str(src), "--cache-dir", str(tmp_path / "cache"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cutlass @ v4.0.0: fetch from https://github.com/nvidia/cutlass.git" in out
    assert "VLLM_CUTLASS_SRC_DIR" in out
    with pytest.raises(ForgeError, match="OLD=NEW"):
        fd.main([str(src), "--url-map", "nonsense"])


def test_git_failure_is_reported_by_its_fatal_line_not_the_tail_of_a_sentence():
    import subprocess

    from vllm_forge.deps.fetch_deps import _last_line

    proc = subprocess.CompletedProcess([], 128, "", "fatal: '/srv/nothing' does not appear to be a git repository\n"
                                                    "fatal: Could not read from remote repository.\n\n"
                                                    "Please make sure you have the correct access rights\n"
                                                    "and the repository exists.\n")
    assert _last_line(proc) == "fatal: '/srv/nothing' does not appear to be a git repository"
    assert _last_line(subprocess.CompletedProcess([], 1, "", "")) == "git exited with 1"
