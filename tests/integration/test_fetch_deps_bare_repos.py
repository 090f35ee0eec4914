"""fetch_deps with real git against local bare repositories standing in for GitHub.

The bare repos live under ``<tmp>/proxy/https:/github.com/<org>/<name>.git``, so a ``file://``
GitHub proxy prefix (``file://<tmp>/proxy/``) maps ``https://github.com/<org>/<name>.git`` onto them
exactly the way a real proxy prefix would. Nothing here reaches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import require_tool

from vllm_forge.core.errors import ForgeError
from vllm_forge.deps import fetch_deps as fd
from vllm_forge.source.vllm_tree import inspect_tree

pytestmark = pytest.mark.integration

GIT_ENV = {"GIT_AUTHOR_NAME": "forge", "GIT_AUTHOR_EMAIL": "forge@example.com",
           "GIT_COMMITTER_NAME": "forge", "GIT_COMMITTER_EMAIL": "forge@example.com",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(*args: str, cwd: Path) -> str:
    proc = subprocess.run(["git", "-c", "protocol.file.allow=always", "-c", "init.defaultBranch=main", *args],
                          cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def github(tmp_path):
    """Fake GitHub: bare repos org/sub (a submodule) and org/kernels (tag v1.0, a later commit)."""
    require_tool("git", shutil.which("git") is not None)
    proxy_root = tmp_path / "proxy"
    hub = proxy_root / "https:" / "github.com" / "org"
    hub.mkdir(parents=True)
    proxy = proxy_root.as_uri() + "/"
    work = tmp_path / "work"

    sub = work / "sub"
    sub.mkdir(parents=True)
    (sub / "sub.txt").write_text("submodule\n")
    git("init", "-q", cwd=sub)
    git("add", ".", cwd=sub)
    git("commit", "-qm", "sub", cwd=sub)
    git("clone", "-q", "--bare", str(sub), str(hub / "sub.git"), cwd=tmp_path)

    kernels = work / "kernels"
    kernels.mkdir()
    (kernels / "kernel.cu").write_text("// v1\n")
    (kernels / "python" / "pkg").mkdir(parents=True)
    (kernels / "python" / "pkg" / "__init__.py").write_text("")
    git("init", "-q", cwd=kernels)
    git("-c", f"url.{proxy}https://github.com/.insteadOf=https://github.com/",
        "submodule", "add", "-q", "https://github.com/org/sub.git", "third/sub", cwd=kernels)
    git("add", ".", cwd=kernels)
    git("commit", "-qm", "v1", cwd=kernels)
    git("tag", "v1.0", cwd=kernels)
    pinned = git("rev-parse", "HEAD", cwd=kernels)
    (kernels / "kernel.cu").write_text("// v2\n")
    git("commit", "-qam", "v2", cwd=kernels)
    git("clone", "-q", "--bare", str(kernels), str(hub / "kernels.git"), cwd=tmp_path)
    return {"proxy": proxy, "root": proxy_root, "pinned": pinned}


def make_tree(root: Path, tag: str, extra: str = "") -> Path:
    (root / "vllm").mkdir(parents=True)
    (root / "setup.py").write_text("")
    (root / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.30.0\n")
    (root / "CMakeLists.txt").write_text(textwrap.dedent(f"""
        project(x)
        if(DEFINED ENV{{KERNELS_SRC_DIR}})
          set(KERNELS_SRC_DIR $ENV{{KERNELS_SRC_DIR}})
        endif()
        if(KERNELS_SRC_DIR)
          FetchContent_Declare(kernels SOURCE_DIR ${{KERNELS_SRC_DIR}})
        else()
          FetchContent_Declare(kernels GIT_REPOSITORY https://github.com/org/kernels.git GIT_TAG {tag})
        endif()
    """) + textwrap.dedent(extra))
    return root


def test_clone_into_cache_through_a_proxy_prefix(tmp_path, github):
    tree = inspect_tree(make_tree(tmp_path / "src", github["pinned"]))
    cache = tmp_path / "cache"
    lines: list[str] = []
    env = fd.fetch_deps(tree, cache, github_proxy=github["proxy"], on_line=lines.append)
    path = cache / "deps" / f"kernels@{github['pinned']}"
    assert env == {"KERNELS_SRC_DIR": str(path)}
    assert git("rev-parse", "HEAD", cwd=path) == github["pinned"]
    assert (path / "kernel.cu").read_text() == "// v1\n"  # the pin, not the branch tip
    assert (path / "third" / "sub" / "sub.txt").read_text() == "submodule\n"  # submodule through the proxy too
    marker = json.loads((path.parent / (path.name + fd.MARKER_SUFFIX)).read_text())
    assert marker["commit"] == github["pinned"]
    assert marker["fetched_from"] == github["proxy"] + "https://github.com/org/kernels.git"
    assert any("fetching kernels" in line for line in lines)
    assert not list((cache / "deps").glob(".*partial*"))


def test_second_run_uses_the_cache_without_network(tmp_path, github):
    tree = inspect_tree(make_tree(tmp_path / "src", "v1.0"))
    cache = tmp_path / "cache"
    first = fd.fetch_deps(tree, cache, github_proxy=github["proxy"])
    shutil.rmtree(github["root"])  # "GitHub" is gone now
    lines: list[str] = []
    assert fd.fetch_deps(tree, cache, github_proxy=github["proxy"], on_line=lines.append) == first
    assert fd.fetch_deps(tree, cache, offline=True) == first
    assert lines == []
    assert (Path(first["KERNELS_SRC_DIR"]) / "kernel.cu").read_text() == "// v1\n"


def test_url_map_and_no_submodules(tmp_path, github):
    hub = github["root"] / "https:" / "github.com"
    src = make_tree(tmp_path / "src", "v1.0")
    cmake = src / "CMakeLists.txt"
    cmake.write_text(cmake.read_text().replace("GIT_TAG v1.0", 'GIT_TAG v1.0 GIT_SUBMODULES ""'))
    tree = inspect_tree(src)
    env = fd.fetch_deps(tree, tmp_path / "cache", url_map={"https://github.com/": hub.as_uri() + "/"})
    path = Path(env["KERNELS_SRC_DIR"])
    assert (path / "kernel.cu").exists()
    assert not (path / "third" / "sub" / "sub.txt").exists()  # GIT_SUBMODULES "" : none, as CMake would


def test_unreachable_and_uncached_is_a_clear_error(tmp_path, github):
    tree = inspect_tree(make_tree(tmp_path / "src", "v1.0"))
    cache = tmp_path / "cache"
    with pytest.raises(ForgeError) as err:
        fd.fetch_deps(tree, cache, url_map={"https://github.com/": (tmp_path / "nowhere").as_uri() + "/"})
    text = str(err.value)
    assert "dependency kernels (https://github.com/org/kernels.git @ v1.0) is not in the cache" in text
    assert "--github-proxy" in text and "KERNELS_SRC_DIR" in text
    assert not (cache / "deps" / "kernels@v1.0").exists()
    assert not list((cache / "deps").glob(".*partial*"))  # nothing half-made left behind


def test_pinned_commit_the_remote_lacks_is_a_clear_error(tmp_path, github):
    tree = inspect_tree(make_tree(tmp_path / "src", "0" * 40))
    with pytest.raises(ForgeError, match="dependency kernels .* is not in the cache"):
        fd.fetch_deps(tree, tmp_path / "cache", github_proxy=github["proxy"])
    assert not (tmp_path / "cache" / "deps" / f"kernels@{'0' * 40}").exists()


def test_cli_prints_the_environment(tmp_path, github, capsys):
    src = make_tree(tmp_path / "src", "v1.0")
    assert fd.main([str(src), "--cache-dir", str(tmp_path / "cache"), "--github-proxy", github["proxy"],
                    "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["KERNELS_SRC_DIR"].endswith("deps/kernels@v1.0")
