"""Dependencies from what a lab has, with real git: `fetch-deps --bundle` on the connected side and
`--from` on the firewalled one, git checkouts and bundles at the pin or not, the submodule policy, the
real vLLM 0.26.0 tarballs, and pins that are neither cached nor reachable. Local repositories only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import require_tool
from test_fetch_deps_bare_repos import git, github, make_tree  # noqa: F401 (github is a fixture)

from vllm_forge.core.errors import ForgeError
from vllm_forge.deps import dep_import as di
from vllm_forge.deps import fetch_deps as fd
from vllm_forge.source.minivllm import MINIDEP_GITHUB_PREFIX, publish_minidep
from vllm_forge.source.vllm_tree import inspect_tree

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHARED_DEPS = Path("/work/shared/vllm_0_26_0_deps")
VLLM_0_26_0 = Path("/work/dl/vllm-0.26.0")


def imported(tree, items, cache, **kw):
    plan = di.plan_imports(tree, [str(i) for i in items])
    outcomes = di.run_imports(plan, cache, **kw)
    return {o.dep.name if o.dep else o.path.name: o for o in outcomes}


def test_bundle_round_trip_is_pinned_on_the_other_side(tmp_path, github):  # noqa: F811
    """Connected machine: fetch (tag pin, submodule) and --bundle. Firewalled one: --from the bundle alone."""
    tree = inspect_tree(make_tree(tmp_path / "src", "v1.0"))
    connected = tmp_path / "connected"
    fd.fetch_deps(tree, connected, github_proxy=github["proxy"])
    manifest = di.write_bundle(tree, connected, tmp_path / "usb" / "deps.tar")
    shutil.rmtree(github["root"])  # nothing of "GitHub" is left on the firewalled side
    assert [(d["name"], d["pin"], d["commit"]) for d in manifest["deps"]] == [("kernels", "v1.0", github["pinned"])]
    assert manifest["deps"][0]["submodules"] == {"taken": ["third/sub"], "skipped": {}, "missing": []}
    firewalled = tmp_path / "firewalled"
    outcomes = imported(tree, [tmp_path / "usb" / "deps.tar"], firewalled)
    assert outcomes["kernels"].result == "imported", outcomes["kernels"].line
    state = fd.dep_state(firewalled, tree.git_deps[0])
    assert (state.status, state.detail) == (
        "pinned", f"pinned: git commit {github['pinned'][:12]} (imported from {tmp_path / 'usb' / 'deps.tar'})")
    path = state.path
    assert git("rev-parse", "HEAD", cwd=path) == github["pinned"]
    assert git("rev-parse", "v1.0^{commit}", cwd=path) == github["pinned"]  # the tag came along
    assert (path / "kernel.cu").read_text() == "// v1\n" and (path / "third" / "sub" / "sub.txt").is_file()
    assert git("status", "--porcelain", cwd=path) == ""
    assert fd.fetch_deps(tree, firewalled, offline=True) == {"KERNELS_SRC_DIR": str(path)}
    again = imported(tree, [tmp_path / "usb" / "deps.tar"], firewalled)["kernels"]
    assert again.result == "unchanged" and f"already holds git commit {github['pinned'][:12]}" in again.line
    assert not [p for p in (firewalled / "deps").iterdir() if p.name.startswith(".")]  # no scratch left


def test_bundle_of_the_miniatures_dependency_then_build_env_offline(tmp_path):
    require_tool("git", shutil.which("git") is not None)
    remote = tmp_path / "remote"
    publish_minidep(remote)
    tree = inspect_tree(REPO / "tests/fixtures/minivllm")
    connected = tmp_path / "connected"
    fd.fetch_deps(tree, connected, url_map={MINIDEP_GITHUB_PREFIX: remote.as_uri() + "/"})
    di.write_bundle(tree, connected, tmp_path / "deps.tar.gz")  # compressed by its name
    shutil.rmtree(remote)
    with pytest.raises(ForgeError, match=r"minidep @ v1\.0\.0 \(https://github\.com/vllm-forge/minidep\.git\)"):
        fd.fetch_deps(tree, tmp_path / "offline", offline=True)
    imported(tree, [tmp_path / "deps.tar.gz"], tmp_path / "offline")
    env = fd.fetch_deps(tree, tmp_path / "offline", offline=True)
    assert Path(env["MINIDEP_SRC_DIR"], "include", "minidep.h").is_file()
    assert fd.dep_state(tmp_path / "offline", tree.git_deps[0]).status == "pinned"


def test_bundle_needs_every_entry_pinned(tmp_path, github):  # noqa: F811
    tree = inspect_tree(make_tree(tmp_path / "src", "v1.0"))
    cache = tmp_path / "cache"
    archive = tmp_path / "kernels-v1.0.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(REPO / "tests/fixtures/minidep/include", arcname="include")
    imported(tree, [archive], cache)
    with pytest.raises(ForgeError, match=r"a bundle carries pins only, and the cache holds kernels \(unverified: "):
        di.write_bundle(tree, cache, tmp_path / "deps.tar")
    assert not (tmp_path / "deps.tar").exists() and not list(tmp_path.glob(".deps.tar*"))
    fd.fetch_deps(tree, cache, github_proxy=github["proxy"], force=True)  # the pin over the unverified import
    assert fd.dep_state(cache, tree.git_deps[0]).status == "pinned"
    di.write_bundle(tree, cache, tmp_path / "deps.tar")


def clone_at(tmp_path: Path, github: dict, name: str, commit: str) -> Path:  # noqa: F811
    """A lab's clone of org/kernels (its submodule checked out), at ``commit``."""
    dest = tmp_path / name
    hub = github["root"] / "https:" / "github.com" / "org"
    git("clone", "-q", str(hub / "kernels.git"), str(dest), cwd=tmp_path)
    git("-c", f"url.{hub.as_uri()}/.insteadOf=https://github.com/org/", "submodule", "update", "-q", "--init",
        cwd=dest)
    git("checkout", "-q", commit, cwd=dest)
    return dest


def test_a_clone_with_the_pin_in_its_history_imports_the_pin(tmp_path, github):  # noqa: F811
    tree = inspect_tree(make_tree(tmp_path / "src", github["pinned"]))
    lab = clone_at(tmp_path, github, "kernels", "main")  # at v2: the pin is one commit back
    (lab / "build").mkdir()
    (lab / "build" / "junk.o").write_text("untracked build output\n")
    pwned = tmp_path / "pwned"  # the lab's clone is someone else's: its git config must run nothing
    git("config", "core.fsmonitor", f"touch {pwned}; echo", cwd=lab)
    (lab / ".git" / "hooks" / "post-checkout").write_text(f"#!/bin/sh\ntouch {pwned}\n")
    (lab / ".git" / "hooks" / "post-checkout").chmod(0o755)
    outcome = imported(tree, [lab], tmp_path / "cache")["kernels"]
    assert not pwned.exists()
    assert outcome.result == "imported", outcome.line
    state = fd.dep_state(tmp_path / "cache", tree.git_deps[0])
    assert state.status == "pinned"
    assert (state.path / "kernel.cu").read_text() == "// v1\n" and not (state.path / "build").exists()
    assert (state.path / "third" / "sub" / "sub.txt").is_file()  # taken from the lab's own submodule checkout
    config = (state.path / ".git" / "config").read_text()
    assert str(lab) not in config and "hooksPath" not in config  # nothing of the source's git setup came along


def test_a_clone_at_another_commit_is_a_substitute_and_local_changes_are_refused(tmp_path, github):  # noqa: F811
    work = tmp_path / "work" / "kernels"
    later = git("rev-parse", "HEAD", cwd=work)
    orphan = "1" * 40  # a pin the lab's clone does not have
    tree = inspect_tree(make_tree(tmp_path / "src", orphan))
    lab = clone_at(tmp_path, github, "kernels", later)
    outcome = imported(tree, [lab], tmp_path / "cache")["kernels"]
    state = fd.dep_state(tmp_path / "cache", tree.git_deps[0])
    assert outcome.result == "imported" and state.status == "substitute"
    assert state.detail == f"substitute: imported from {lab}, git commit {later[:12]}, not the pin {orphan[:12]}"
    assert git("rev-parse", "HEAD", cwd=state.path) == later
    (lab / "kernel.cu").write_text("// my fix\n")
    outcome = imported(tree, [lab], tmp_path / "cache2")["kernels"]
    assert outcome.result == "refused" and "uncommitted changes to tracked files (kernel.cu)" in outcome.line
    assert not (tmp_path / "cache2" / "deps" / f"kernels@{orphan}").exists()


def test_a_git_bundle_is_verified_and_refused_without_the_pin(tmp_path, github):  # noqa: F811
    lab = clone_at(tmp_path, github, "lab", "main")
    git("bundle", "create", "-q", str(tmp_path / "kernels.bundle"), "--all", cwd=lab)
    tree = inspect_tree(make_tree(tmp_path / "src", "v1.0"))
    outcome = imported(tree, [tmp_path / "kernels.bundle"], tmp_path / "cache")["kernels"]
    state = fd.dep_state(tmp_path / "cache", tree.git_deps[0])
    assert outcome.result == "imported" and state.status == "pinned"
    assert git("rev-parse", "HEAD", cwd=state.path) == github["pinned"]
    assert "submodule third/sub missing" in state.detail  # a git bundle carries none
    tree = inspect_tree(make_tree(tmp_path / "src2", "2" * 40))
    outcome = imported(tree, [tmp_path / "kernels.bundle"], tmp_path / "cache")["kernels"]
    head = git("rev-parse", "HEAD", cwd=lab)
    assert outcome.result == "refused"
    assert f"holds kernels at {head[:12]} (HEAD) but not the pin {'2' * 40}" in outcome.line
    truncated = tmp_path / "kernels-cut.bundle"
    truncated.write_bytes((tmp_path / "kernels.bundle").read_bytes()[:300])
    outcome = imported(tree, [f"kernels={truncated}"], tmp_path / "cache3")["kernels"]
    assert outcome.result == "refused" and "the git bundle" in outcome.line and "fatal: " in outcome.line


def test_a_tarball_with_git_data_is_verified_like_a_clone(tmp_path, github):  # noqa: F811
    lab = clone_at(tmp_path, github, "kernels-v1.0", github["pinned"])
    archive = tmp_path / "kernels-v1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(lab, arcname="kernels-v1.0")
    tree = inspect_tree(make_tree(tmp_path / "src", "v1.0"))
    outcome = imported(tree, [archive], tmp_path / "cache")["kernels"]
    state = fd.dep_state(tmp_path / "cache", tree.git_deps[0])
    assert outcome.result == "imported" and state.status == "pinned", state.detail


def test_rocm_only_submodules_are_not_fetched_for_a_cuda_build(tmp_path, github):  # noqa: F811
    """flash-attention's layout: CUTLASS taken, ROCm's composable_kernel and aiter skipped. The ROCm
    repositories do not even exist on this "GitHub": a fetch that tried them would fail."""
    hub = github["root"] / "https:" / "github.com" / "org"
    work = tmp_path / "fa-work"
    work.mkdir()
    (work / "flash.cu").write_text("// fa\n")
    git("init", "-q", cwd=work)
    git("-c", f"url.{github['proxy']}https://github.com/.insteadOf=https://github.com/", "submodule", "add", "-q",
        "https://github.com/org/sub.git", "csrc/cutlass", cwd=work)
    (work / ".gitmodules").write_text((work / ".gitmodules").read_text() + (
        '[submodule "csrc/composable_kernel"]\n\tpath = csrc/composable_kernel\n'
        "\turl = https://github.com/ROCm/composable_kernel.git\n"
        '[submodule "third_party/aiter"]\n\tpath = third_party/aiter\n\turl = https://github.com/ROCm/aiter.git\n'))
    sub_commit = git("rev-parse", "HEAD", cwd=work / "csrc" / "cutlass")
    for path in ("csrc/composable_kernel", "third_party/aiter"):
        git("update-index", "--add", "--cacheinfo", f"160000,{sub_commit},{path}", cwd=work)
    git("add", ".gitmodules", cwd=work)
    git("commit", "-qm", "fa", cwd=work)
    git("clone", "-q", "--bare", str(work), str(hub / "flash-attention.git"), cwd=tmp_path)
    src = make_tree(tmp_path / "src", "main")
    cmake = src / "CMakeLists.txt"
    cmake.write_text(cmake.read_text().replace("kernels", "vllm-flash-attn").replace(
        "org/vllm-flash-attn.git", "org/flash-attention.git").replace("KERNELS_SRC_DIR", "VLLM_FLASH_ATTN_SRC_DIR"))
    tree = inspect_tree(src)
    fd.fetch_deps(tree, tmp_path / "cache", github_proxy=github["proxy"])
    [dep] = tree.git_deps
    path = fd.dep_dir(tmp_path / "cache", dep)
    assert (path / "csrc" / "cutlass" / "sub.txt").is_file()
    assert not any((path / "third_party" / "aiter").iterdir()) and not any((path / "csrc/composable_kernel").iterdir())
    said = fd.submodules_recorded(tmp_path / "cache", dep)
    assert said.startswith("submodules: csrc/cutlass taken; csrc/composable_kernel skipped (ROCm only")
    assert "third_party/aiter skipped (ROCm only" in said


@pytest.mark.skipif(not (SHARED_DEPS.is_dir() and VLLM_0_26_0.is_dir()),
                    reason="the vLLM 0.26.0 tarballs and sdist of /work/shared are not on this machine (CI)")
def test_the_real_0_26_0_tarballs_seven_unverified_and_flashmla_a_substitute(tmp_path):
    tree = inspect_tree(VLLM_0_26_0)
    cache = tmp_path / "cache"
    outcomes = imported(tree, [SHARED_DEPS], cache)
    assert sorted(o.result for o in outcomes.values()) == ["imported"] * 8
    states = {dep.name: fd.dep_state(cache, dep) for dep in tree.git_deps}
    assert {name: s.status for name, s in states.items() if s.status != "unverified"} == {"flashmla": "substitute"}
    assert states["flashmla"].detail == (
        f"substitute: imported from {SHARED_DEPS / 'flashmla-SUBSTITUTE-2bc126e03c79.tar.xz'}, which names "
        "2bc126e03c79, not the pin a8f794d1251c")
    env = fd.fetch_deps(tree, cache, offline=True)
    assert len(env) == 8 and Path(env["TRITON_KERNELS_SRC_DIR"], "__init__.py").is_file()
    assert Path(env["TML_FA4_SRC_DIR"], "flash_attn", "cute", "__init__.py").is_file()  # flash_attn/ is no wrapper
    assert "third_party/aiter skipped (ROCm only" in fd.submodules_recorded(cache, states["vllm-flash-attn"].dep)


def run_cli(*args, cache: Path, cwd: Path = REPO):
    env = {**os.environ, "INVOKE_FORGE_CACHE_DIR": str(cache), "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def two_deps_tree(root: Path) -> Path:
    src = make_tree(root, "v1.0", extra="""
        if(DEFINED ENV{EXTRA_SRC_DIR})
          FetchContent_Declare(extra SOURCE_DIR $ENV{EXTRA_SRC_DIR})
        else()
          FetchContent_Declare(extra GIT_REPOSITORY https://github.com/org/extra.git
                               GIT_TAG 0123456789abcdef0123456789abcdef01234567)
        endif()
    """)
    return src


def test_planted_fault_pins_neither_cached_nor_reachable_are_one_line_naming_all(tmp_path, github):  # noqa: F811
    src = two_deps_tree(tmp_path / "src")
    nowhere = (tmp_path / "nowhere").as_uri() + "/"
    for extra in (["--offline"], ["--url-map", f"https://github.com/={nowhere}"]):
        proc = run_cli("fetch-deps", "--vllm-src", str(src), *extra, cache=tmp_path / "cache")
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith("error: ") and "Fix:" in lines[0]
        assert "kernels @ v1.0 (" in lines[0] and "extra @ 0123456789abcdef0123456789abcdef01234567 (" in lines[0]
        assert "--from" in lines[0] and "--bundle" in lines[0]
        if extra[0] == "--url-map":
            assert f"{nowhere}org/extra.git" in lines[0]  # the URL really tried, after the map
    assert not (tmp_path / "cache" / "deps").exists() or not any((tmp_path / "cache" / "deps").iterdir())


def test_cli_from_dry_run_real_run_and_refusal(tmp_path, github):  # noqa: F811
    src = two_deps_tree(tmp_path / "src")
    usb = tmp_path / "usb"
    usb.mkdir()
    with tarfile.open(usb / "extra-0123456.tar.gz", "w:gz") as tar:
        tar.add(REPO / "tests/fixtures/minidep/include", arcname="extra/include")
    (usb / "notes.txt").write_text("from the lab next door\n")
    cache = tmp_path / "cache"
    dry = run_cli("fetch-deps", "--vllm-src", str(src), "--from", str(usb), "--dry-run", cache=cache)
    assert dry.returncode == 0, dry.stderr
    assert f"extra @ 0123456789ab: would import tarball {usb / 'extra-0123456.tar.gz'}, its name says 0123456" \
        in dry.stdout
    assert "kernels @ v1.0: missing" in dry.stdout and not cache.exists()
    real = run_cli("fetch-deps", "--vllm-src", str(src), "--from", str(usb), cache=cache)
    assert real.returncode == 0, real.stderr
    assert "extra @ 0123456789ab: unverified: imported from" in real.stdout
    assert "still missing (1): kernels @ v1.0 (https://github.com/org/kernels.git)" in real.stdout
    offline = run_cli("fetch-deps", "--vllm-src", str(src), "--from", str(usb), "--offline", cache=cache)
    assert offline.returncode == 2 and "kernels @ v1.0" in offline.stderr and "unchanged extra" in offline.stdout
    bad = tmp_path / "extra-0123456.tar"
    with tarfile.open(bad, "w") as tar:
        info = tarfile.TarInfo("../../escape.h")
        tar.addfile(info)
    refused = run_cli("fetch-deps", "--vllm-src", str(src), "--from", str(bad), "--force", cache=cache)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1 and "'../../escape.h' climbs out of the tree (..)" in lines[0]
    assert not (tmp_path / "escape.h").exists() and "unverified: imported from" in refused.stdout


def test_cli_bundle_on_one_machine_from_on_the_other(tmp_path, github):  # noqa: F811
    src = make_tree(tmp_path / "src", "v1.0")
    out = tmp_path / "usb" / "deps.tar.xz"
    dry = run_cli("fetch-deps", "--vllm-src", str(src), "--github-proxy", github["proxy"], "--bundle", str(out),
                  "--dry-run", cache=tmp_path / "connected")
    assert dry.returncode == 0 and f"then write every dependency, with its git data, to {out}" in dry.stdout
    assert "submodules: all, unless ROCm/HIP-only by name or URL" in dry.stdout and not out.exists()
    written = run_cli("fetch-deps", "--vllm-src", str(src), "--github-proxy", github["proxy"], "--bundle", str(out),
                      cache=tmp_path / "connected")
    assert written.returncode == 0, written.stderr
    assert f"wrote {out}" in written.stdout and "`invoke fetch-deps --from deps.tar.xz` there" in written.stdout
    assert "kernels @ v1.0: pinned: git commit" in written.stdout and "submodules: third/sub taken" in written.stdout
    shutil.rmtree(github["root"])
    taken = run_cli("fetch-deps", "--vllm-src", str(src), "--from", str(out), "--offline",
                    cache=tmp_path / "firewalled")
    assert taken.returncode == 0, taken.stderr
    assert f"kernels @ v1.0: pinned: git commit {github['pinned'][:12]} (imported from {out})" in taken.stdout
    again = run_cli("fetch-deps", "--vllm-src", str(src), "--from", str(out), "--offline", "--json",
                    cache=tmp_path / "firewalled")
    assert again.returncode == 0 and json.loads(again.stdout) == {
        "KERNELS_SRC_DIR": str(tmp_path / "firewalled" / "deps" / "kernels@v1.0")}
