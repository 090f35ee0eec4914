"""vllm_tree and the core tasks on real vLLM source trees: 0.8.4, 0.10.0, 0.33.0 and the newest release.

The sdists come from PyPI (``pip download`` cannot fetch them: it tries to build their metadata), by
the ``.tar.gz`` URL in the index's JSON listing, sha256-checked, into a cache kept between runs: the
vllm-forge cache (``~/.cache/vllm-forge/sdists``, under ``$VLLM_FORGE_CACHE`` when set; ``nox -s clean``
removes it). Each is unpacked, made a git repo tagged ``v<version>``, and run through clone,
use-existing-torch and build-wheel's dry run for real.
The facts expected of each version are in tests/fixtures/vllm_releases.json (extracted values only).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require_tool

from vllm_forge.build.build_wheel import BuildRequest, plan_build
from vllm_forge.core import forge_cache
from vllm_forge.core.errors import ForgeError
from vllm_forge.core.plan import run_plan
from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.source import checkout
from vllm_forge.source.vllm_tree import BUILD_KNOBS, inspect_tree

pytestmark = [pytest.mark.integration, pytest.mark.network]

INDEX_URL = "https://pypi.org/simple/vllm/"
FIXTURE = json.loads((REPO_ROOT / "tests" / "fixtures" / "vllm_releases.json").read_text())["releases"]
PINNED = ("0.8.4", "0.10.0", "0.33.0")
GIT_ENV = {"GIT_AUTHOR_NAME": "forge", "GIT_AUTHOR_EMAIL": "forge@example.com",
           "GIT_COMMITTER_NAME": "forge", "GIT_COMMITTER_EMAIL": "forge@example.com"}


def sdist_cache() -> Path:
    return forge_cache.root() / "sdists"


@pytest.fixture(scope="session")
def pypi_index() -> dict:
    request = urllib.request.Request(INDEX_URL, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except OSError as err:
        require_tool(f"PyPI ({INDEX_URL}: {err})", False)


def _version_key(version: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:4])


@pytest.fixture(scope="session")
def newest_version(pypi_index) -> str:
    sdists = {f["filename"] for f in pypi_index["files"] if f["filename"].endswith(".tar.gz") and not f.get("yanked")}
    finals = [v for v in pypi_index["versions"] if re.fullmatch(r"\d+\.\d+\.\d+(\.post\d+)?", v)
              and f"vllm-{v}.tar.gz" in sdists]
    return max(finals, key=_version_key)


def fetch_sdist(index: dict, version: str) -> Path:
    name = f"vllm-{version}.tar.gz"
    [entry] = [f for f in index["files"] if f["filename"] == name]
    want = entry["hashes"]["sha256"]
    path = sdist_cache() / name
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == want:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(name + ".partial")
    with urllib.request.urlopen(entry["url"], timeout=600) as response, partial.open("wb") as out:
        shutil.copyfileobj(response, out)
    got = hashlib.sha256(partial.read_bytes()).hexdigest()
    assert got == want, f"{name}: sha256 {got} is not PyPI's {want}"
    os.replace(partial, path)
    return path


@pytest.fixture(scope="session")
def release_repo(pypi_index, tmp_path_factory):
    """version -> a local git repo of that sdist, committed and tagged v<version> (made once)."""
    require_tool("git", shutil.which("git") is not None)
    made: dict[str, Path] = {}

    def make(version: str) -> Path:
        if version not in made:
            base = tmp_path_factory.mktemp(f"vllm-{version}")
            with tarfile.open(fetch_sdist(pypi_index, version)) as tar:
                tar.extractall(base, filter="data")
            [root] = [p for p in base.iterdir() if p.is_dir()]
            env = {**os.environ, **GIT_ENV}
            for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", f"vLLM {version} sdist"],
                         ["tag", f"v{version}"]):
                subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=root, check=True,
                               capture_output=True, env=env)
            made[version] = root
        return made[version]

    return make


cu = CudaRelease.parse


def facts(tree) -> dict:
    """The fixture's view of a tree."""
    return {
        "use_existing_torch": tree.use_existing_torch,
        "takes_prefix": tree.takes_prefix,
        "torch_pin_globs": list(tree.torch_pin_globs),
        "build_requirements": tree.build_requirements,
        "build_knobs_read": sorted(k for k in BUILD_KNOBS if tree.reads(k)),
        "version_env": tree.version_env,
        "global_ptx_ignored": tree.global_ptx_ignored,
        "ptx_warning": tree.ptx_warning,
        "arch_gate": {c: tree.cuda_supported_archs(cu(c)) for c in ("12.6", "12.8", "12.9", "13.0")},
        "wheel_size_limit_mb": tree.wheel_size_limit_mb,
        "dockerfile": tree.dockerfile,
        "dockerfile_args": sorted(tree.dockerfile_args),
        "git_deps": [{"name": d.name, "repository": d.repository, "tag": d.tag, "src_dir_env": d.src_dir_env,
                      "source_subdir": d.source_subdir,
                      "submodules": list(d.submodules) if d.submodules is not None else None}
                     for d in tree.git_deps],
    }


@pytest.mark.parametrize("version", PINNED)
def test_detected_facts(release_repo, version):
    tree = inspect_tree(release_repo(version))
    assert tree.version == version and tree.kind == "vllm"
    assert facts(tree) == FIXTURE[version]


def test_what_changed_between_releases(release_repo):
    old, mid, new = (inspect_tree(release_repo(v)) for v in PINNED)
    assert (old.use_existing_torch, old.takes_prefix) == ("use_existing_torch.py", False)
    assert (new.use_existing_torch, new.takes_prefix) == ("tools/use_existing_torch.py", True)
    assert old.build_requirements == "requirements/build.txt"
    assert new.build_requirements == "requirements/build/cuda.txt"
    assert old.reads("VLLM_FA_CMAKE_GPU_ARCHES") and mid.reads("VLLM_FA_CMAKE_GPU_ARCHES")
    assert not new.reads("VLLM_FA_CMAKE_GPU_ARCHES")
    assert (old.wheel_size_limit_mb, mid.wheel_size_limit_mb, new.wheel_size_limit_mb) == (400, 400, 500)
    # 0.8.4 lists Blackwell whatever the nvcc; 0.10.0 only from CUDA 12.8; 0.33.0 drops 12.1 under CUDA 13
    assert "12.0" in old.cuda_supported_archs(cu("12.6")) and "12.0" not in mid.cuda_supported_archs(cu("12.6"))
    (sm121,) = parse_arch_list("12.1")
    assert new.gate_arch_for(sm121, cu("12.9")) == "12.1" and new.gate_arch_for(sm121, cu("13.0")) == "12.0"
    with pytest.raises(ForgeError, match="--cuda 12.8"):
        mid.check_archs(parse_arch_list("12.0"), cu("12.6"))
    assert old.global_ptx_ignored and new.global_ptx_ignored  # +PTX never reached vLLM's own kernels
    assert new.ptx_warning and not old.ptx_warning  # ... and from 0.28 CMake says so


def test_newest_release_is_understood(release_repo, newest_version):
    tree = inspect_tree(release_repo(newest_version))
    assert tree.version == newest_version
    assert tree.use_existing_torch and (tree.root / tree.use_existing_torch).is_file()
    assert tree.build_requirements and (tree.root / tree.build_requirements).is_file()
    assert tree.reads("TORCH_CUDA_ARCH_LIST") and tree.reads("MAX_JOBS") and tree.version_env
    assert "12.0" in tree.cuda_supported_archs(cu("12.8"))
    assert (tree.wheel_size_limit_mb or 0) >= 500
    deps = {d.name: d for d in tree.git_deps}
    assert "cutlass" in deps and "vllm-flash-attn" in deps
    assert all(d.src_dir_env for d in tree.git_deps), "every git dep needs a local-copy override for offline builds"
    if newest_version in FIXTURE:
        assert facts(tree) == FIXTURE[newest_version]


def _clone(release_repo, version: str, tmp_path: Path):
    repo = release_repo(version)
    dest = tmp_path / "vllm"
    sha = checkout.clone(repo.as_uri(), f"v{version}", dest)
    assert len(sha) == 40
    tree = inspect_tree(dest)
    assert tree.version == version and tree.version_source == "PKG-INFO"
    return tree, dest


def _dry_run(dest: Path, tmp_path: Path):
    return plan_build(BuildRequest(src=dest, dist_dir=tmp_path / "dist", archs=parse_arch_list("12.0"),
                                   cache_dir=tmp_path / "cache"),
                      check_tools=False)


@pytest.mark.parametrize("version", ["0.8.4", "0.10.0", "newest"])
def test_clone_use_existing_torch_and_dry_run(release_repo, newest_version, nvcc_toolchain, tmp_path, version):
    version = newest_version if version == "newest" else version
    tree, dest = _clone(release_repo, version, tmp_path)
    [command] = checkout.plan_use_existing_torch(dest)
    assert command.argv[1] == tree.use_existing_torch
    assert ("--prefix" in command.argv) == tree.takes_prefix
    checkout.use_existing_torch(dest)
    assert checkout.remaining_torch_pins(dest, tree.torch_pin_globs) == []
    plan = _dry_run(dest, tmp_path)
    assert plan.env["TORCH_CUDA_ARCH_LIST"] == "12.0"
    assert plan.command.argv[1] == "setup.py" and plan.command.cwd == str(dest.resolve())
    # the tag's version with the build's variant as its local version (the variable that vLLM version reads)
    variable = tree.version_env or "SETUPTOOLS_SCM_PRETEND_VERSION"
    assert plan.env[variable].startswith(f"{version}+cu") and plan.env[variable].endswith(".sm120")


@pytest.mark.parametrize("version", ["0.8.4", "0.10.0", "newest"])
def test_use_existing_torch_strips_the_build_pins(release_repo, newest_version, tmp_path, version):
    """What the build reads (the files the checkout's own script cleans) has no torch pin left."""
    version = newest_version if version == "newest" else version
    tree, dest = _clone(release_repo, version, tmp_path)
    run_plan(checkout.plan_use_existing_torch(dest))
    cleaned = {path for pattern in tree.torch_pin_globs for path in dest.glob(pattern)}
    assert dest / tree.build_requirements in cleaned
    left = [pin for pin in checkout.remaining_torch_pins(dest) if dest / pin.split(":", 1)[0] in cleaned]
    assert left == []
    build_reqs = (dest / tree.build_requirements).read_text()
    assert not re.search(r"^torch\s*==", build_reqs, re.M)


@pytest.mark.parametrize("version", ["0.8.4", "0.10.0", "newest"])
def test_dry_run_sets_fa_arches_only_where_read(release_repo, newest_version, nvcc_toolchain, tmp_path, version):
    version = newest_version if version == "newest" else version
    tree, dest = _clone(release_repo, version, tmp_path)
    plan = _dry_run(dest, tmp_path)
    assert ("VLLM_FA_CMAKE_GPU_ARCHES" in plan.env) == tree.reads("VLLM_FA_CMAKE_GPU_ARCHES")


def test_version_from_git_tag_when_no_pkg_info(tmp_path):
    """A git checkout (no PKG-INFO) takes its version from the v<version> tag."""
    require_tool("git", shutil.which("git") is not None)
    root = tmp_path / "vllm"
    (root / "vllm").mkdir(parents=True)
    (root / "setup.py").write_text("")
    (root / "CMakeLists.txt").write_text("project(x)\n")
    env = {**os.environ, **GIT_ENV}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"], ["tag", "v0.7.2"]):
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, env=env)
    with pytest.raises(ForgeError, match="vLLM 0.7.2 .*git tag v0.7.2"):
        inspect_tree(root)
    subprocess.run(["git", "tag", "v0.12.0"], cwd=root, check=True, capture_output=True, env=env)
    subprocess.run(["git", "tag", "-d", "v0.7.2"], cwd=root, check=True, capture_output=True, env=env)
    tree = inspect_tree(root)
    assert (tree.version, tree.version_source) == ("0.12.0", "git tag v0.12.0")


# --- issue 26: what a real tree asks of a build, read before anything compiles ---------------------------------

REAL_PREFLIGHT = {  # version: (torch pin, where, Dockerfile CUDA, the library behind `--targets _C`)
    "0.8.4": ("2.6.0", "requirements/build.txt", "12.4.1", "_C"),
    "0.26.0": ("2.11.0", "requirements/build/cuda.txt", "13.0.2", "_C_stable_libtorch"),
}


@pytest.mark.parametrize("version", ["0.8.4", "0.26.0", "newest"])
def test_real_trees_name_their_build_needs(release_repo, newest_version, version):
    from vllm_forge.build import preflight
    from vllm_forge.image.recipe import choose_recipe
    from vllm_forge.source.setup_reader import resolve_targets

    version = newest_version if version == "newest" else version
    tree = inspect_tree(release_repo(version))
    names = {r.name for r in preflight.read_build_requirements(tree)}
    assert {"cmake", "ninja", "setuptools", "setuptools-scm", "wheel"} <= names and "torch" not in names
    assert tree.cmake_minimum and tree.torch_pin and tree.cuda_pin
    if version in REAL_PREFLIGHT:
        pin, where, cuda, c_library = REAL_PREFLIGHT[version]
        assert (tree.torch_pin, tree.torch_pin_source, tree.cuda_pin) == (pin, where, cu(cuda))
    else:
        c_library = "_C_stable_libtorch"
        assert "setuptools-rust" in names  # the newest releases build a Rust frontend too
    targets = tree.cuda_targets(cu("13.0"), (3, 12))
    [chosen] = resolve_targets(["_C"], targets)
    assert chosen.target == c_library
    assert any(c_library in tree.dep_targets.get(d.name, ()) for d in tree.git_deps if d.name == "cutlass")
    recipe = choose_recipe(torch_pin=tree.torch_pin, pin_source=tree.torch_pin_source, tree_cuda=tree.cuda_pin,
                           version=tree.version)
    assert (recipe.base_kind, recipe.torch_requirement, recipe.cuda_full) == ("cuda", f"torch=={tree.torch_pin}",
                                                                           tree.cuda_pin)


def test_a_real_tree_is_refused_in_one_line_before_anything_runs(release_repo, nvcc_toolchain, tmp_path):
    """Whatever this machine lacks for vLLM 0.26.0 (its build requirements, a CUDA torch, its eight git
    dependencies), `invoke build-wheel` says it in one line, and nothing has run: not even use-existing-torch."""
    tree = release_repo("0.26.0")
    log = tmp_path / "commands.jsonl"
    env = {**os.environ, "VLLM_FORGE_COMMAND_LOG": str(log), "INVOKE_FORGE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "invoke", "build-wheel", "--vllm-src", str(tree), "--arch", "9.0",
                           "--dist-dir", str(tmp_path / "dist")], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=env, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: ") and "Fix:" in errors[0]
    assert re.search(r"build requirements|torch|git dependenc", errors[0]), errors[0]
    assert not log.exists()
