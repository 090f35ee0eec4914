"""Build a vLLM wheel for exactly the GPUs asked for, and publish it only when it is right.

The plan (environment + commands) is computed first and printed as is by ``--dry-run``; the real
run executes that same plan. The wheel is built into a private directory next to the output dir
and moved in with one rename after the arch audit passed, so an interrupted or failed build never
leaves a partial wheel in dist/ and never touches older wheels.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/build_wheel.py`: make `scripts` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import archs as archs_mod
from scripts.compile_cache import (  # noqa: F401  (cache_stats: re-exported for tasks.py)
    CacheReport,
    CacheSession,
    SharedCache,
    cache_stats,
    compile_cache_env,
    plan_notes,
    resolve_compile_cache,
)
from scripts.errors import ForgeError, run_main
from scripts.fetch_deps import deps_env
from scripts.parallelism import Parallelism, choose_parallelism
from scripts.plan import Command, run_command
from scripts.toolchain import CudaToolchain, find_cuda_toolchain
from scripts.vllm_tree import VllmTree, inspect_tree


@dataclass
class BuildRequest:
    """What to build, in the terms of BuildConfig but free of invoke (the Docker build uses it)."""

    src: Path
    dist_dir: Path
    arch: str
    cuda: str | None = None  # None: whatever the local nvcc is; else it must match it
    max_jobs: int = 0
    nvcc_threads: int = 0
    mem_per_job_gb: float = 4.0
    build_type: str = "Release"
    compile_cache: str = "auto"
    cache_dir: Path = Path("~/.cache/vllm-forge")
    log_dir: Path | None = None
    python: str = sys.executable
    extra_env: dict[str, str] = field(default_factory=dict)
    deps_cache: Path | None = None  # where `fetch-deps` left <root>/deps (default: cache_dir)
    shared_cache: SharedCache = field(default_factory=SharedCache)  # a team's sccache/ccache remote


@dataclass
class BuildPlan:
    request: BuildRequest
    archs: list[archs_mod.CudaArch]
    toolchain: CudaToolchain
    parallelism: Parallelism
    compile_cache: str  # resolved: none | ccache | sccache
    env: dict[str, str]
    command: Command
    staging: Path
    notes: list[str] = field(default_factory=list)
    cache_report: CacheReport | None = None  # this build's hits and misses, set by run_build
    tree: VllmTree | None = None  # what this checkout's vLLM version reads and accepts

    @property
    def commands(self) -> list[Command]:
        return [self.command]


def tree_needs_torch(src: Path) -> bool:
    setup = src / "setup.py"
    if not setup.is_file():
        return False
    return re.search(r"^\s*(import torch|from torch)", setup.read_text(errors="replace"), re.M) is not None


def has_git_tags(src: Path) -> bool:
    if not (Path(src) / ".git").exists():  # a copy inside another repository must not take that one's tags
        return False
    proc = subprocess.run(["git", "describe", "--tags", "--abbrev=0"], cwd=src, capture_output=True, text=True)
    return proc.returncode == 0


def plan_build(request: BuildRequest, *, check_tools: bool = True) -> BuildPlan:
    """Everything checked and decided before any compile: fails in well under a second."""
    src = Path(request.src).expanduser()
    archs = archs_mod.parse_arch_list(request.arch)
    if request.cuda:
        archs_mod.check_archs_for_cuda(archs, request.cuda)
    parallelism = choose_parallelism(
        max_jobs=request.max_jobs, nvcc_threads=request.nvcc_threads, n_archs=len(archs),
        mem_per_job_gb=request.mem_per_job_gb,
    )
    cache = resolve_compile_cache(request.compile_cache, request.shared_cache)
    if not src.exists():
        raise ForgeError(f"{src} is not a vLLM checkout (it does not exist)",
                         "run `invoke clone` first, or pass --vllm-src PATH to an existing checkout")
    tree = inspect_tree(src)
    toolchain = find_cuda_toolchain()
    if request.cuda and archs_mod.compat.cuda_minor(request.cuda) != toolchain.version:
        raise ForgeError(
            f"--cuda {request.cuda} was asked for but the nvcc found ({toolchain.nvcc}) is CUDA {toolchain.version}",
            f"put CUDA {request.cuda}'s nvcc first (CUDA_HOME or PATH), drop --cuda, or bake in Docker "
            f"(`invoke bake --cuda {request.cuda}`)",
        )
    archs_mod.check_archs_for_cuda(archs, toolchain.version)
    tree.check_archs(archs, toolchain.version)  # what this vLLM's CMake gate would silently drop
    if check_tools and tree_needs_torch(src) and importlib.util.find_spec("torch") is None:
        raise ForgeError("this vLLM checkout builds against torch, and torch is not installed in this Python",
                         "install the torch you want vLLM built against (pip install torch), or bake in Docker")
    cache_dir = Path(request.cache_dir).expanduser()
    notes = [
        tree.summary(),
        f"nvcc {toolchain.full_version} at {toolchain.nvcc} ({'PyPI' if toolchain.from_pypi else 'system'} toolkit)",
        parallelism.reason,
    ]
    env = {
        "TORCH_CUDA_ARCH_LIST": archs_mod.torch_cuda_arch_list(archs),
        "MAX_JOBS": str(parallelism.max_jobs),
        "NVCC_THREADS": str(parallelism.nvcc_threads),
        "CMAKE_BUILD_TYPE": request.build_type,
        "VLLM_TARGET_DEVICE": "cuda",
    }
    if tree.reads("VLLM_FA_CMAKE_GPU_ARCHES"):
        env["VLLM_FA_CMAKE_GPU_ARCHES"] = archs_mod.fa_cmake_gpu_arches(archs)
    else:
        notes.append("VLLM_FA_CMAKE_GPU_ARCHES not set: this checkout's build does not read it")
    if not has_git_tags(src):
        version = tree.version or "0.0.0"
        variable = tree.version_env or "SETUPTOOLS_SCM_PRETEND_VERSION"
        env[variable] = version
        notes.append(f"checkout has no git tags: version pinned with {variable}={version}")
    deps = deps_env(tree, Path(request.deps_cache or request.cache_dir).expanduser())
    if deps:
        env.update(deps)
        notes.append(f"{sum(1 for k in deps if k.endswith('_SRC_DIR'))} git dependencies from the local cache "
                     "(`invoke fetch-deps`): the build needs no network for them")
    env.update(compile_cache_env(cache, cache_dir, shared=request.shared_cache, base_dir=src))
    notes += plan_notes(cache, request.shared_cache, env)
    env.update(toolchain.env)
    env.update(request.extra_env)
    dist_dir = Path(request.dist_dir).expanduser().resolve()
    if check_tools:  # a read-only or full output dir fails here, before the checkout is touched
        _prepare_dist(dist_dir, need_mb=tree.wheel_limit_mb())
    # A private staging dir per run, so two builds into one dist/ never mix files.
    staging = dist_dir / f"{_STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    command = Command(
        [request.python, "setup.py", "bdist_wheel", f"--dist-dir={staging}", "--py-limited-api=cp38"],
        cwd=str(src.resolve()), env=env, why="build the wheel (vLLM's own recipe)",
    )
    return BuildPlan(request, archs, toolchain, parallelism, cache, env, command, staging, notes, tree=tree)


_STAGING_PREFIX = ".staging-"


def _prepare_dist(dist_dir: Path, need_mb: float = 0) -> None:
    """The output dir exists, is writable and has room for a wheel of up to ``need_mb`` MB;
    staging dirs that killed (SIGKILL) runs on this host left behind are removed."""
    try:
        dist_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=dist_dir, prefix=".forge-write-probe-")
        probe.close()
    except OSError as err:
        raise ForgeError(f"cannot write to the output dir {dist_dir} ({err.strerror})",
                         "pass --dist-dir to a writable directory with free space") from None
    _remove_dead_staging(dist_dir)
    free_mb = shutil.disk_usage(dist_dir).free / 2**20
    if free_mb < need_mb:
        raise ForgeError(
            f"the output dir {dist_dir} has {free_mb:.0f} MB free, and this vLLM's wheel may take up to {need_mb:g} MB",
            "free space there, or pass --dist-dir on a disk with room",
        )


def _remove_dead_staging(dist_dir: Path) -> None:
    mine = f"{_STAGING_PREFIX}{socket.gethostname()}-"
    for path in dist_dir.glob(f"{mine}*"):
        pid = path.name[len(mine):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_checkout(src: Path):
    """An exclusive lock on ``src`` for one build at a time: two builds in one checkout would share its
    CMake build dir (``build/``, where the lock file lives; vLLM's .gitignore has it), so another build
    of it fails at once instead of corrupting this one."""
    import fcntl

    build_dir = Path(src).expanduser() / "build"
    build_dir.mkdir(exist_ok=True)
    handle = open(build_dir / ".vllm-forge-build.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise ForgeError(f"another build-wheel (pid {holder}) is building {src} right now",
                         "wait for it to finish, or build from a separate checkout (--vllm-src)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def run_build(plan: BuildPlan, *, on_line=None, audit: bool = True) -> Path:
    """Run the plan; returns the published wheel's path."""
    dist_dir = Path(plan.request.dist_dir).expanduser().resolve()
    lock = _lock_checkout(plan.request.src)
    try:
        return _run_locked(plan, dist_dir, on_line=on_line, audit=audit)
    finally:
        lock.close()


def _run_locked(plan: BuildPlan, dist_dir: Path, *, on_line=None, audit: bool = True) -> Path:
    _prepare_dist(dist_dir)
    staging = plan.staging
    log_path = None
    if plan.request.log_dir:
        log_dir = Path(plan.request.log_dir).expanduser()
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"build-wheel-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    staging.mkdir()
    cache_session = CacheSession(plan.compile_cache, plan.env)
    try:
        cache_session.start()  # counters before, so the figures are this build's
        try:
            run_command(plan.command, on_line=on_line, log_path=log_path)
        finally:
            plan.cache_report = cache_session.finish()
        wheels = sorted(staging.glob("*.whl"))
        if len(wheels) != 1:
            raise ForgeError(f"the build made {len(wheels)} wheels instead of one", "read the build log", exit_code=1)
        wheel = wheels[0]
        if audit:
            audit_built_wheel(wheel, plan.archs)
        final = dist_dir / wheel.name
        os.replace(wheel, final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def audit_built_wheel(wheel: Path, archs: list[archs_mod.CudaArch]) -> None:
    """Refuse a wheel whose extensions cannot run on one of the archs it was built for."""
    from scripts.audit import audit_path

    report = audit_path(wheel, [a.sm for a in archs])
    if not report.ok:
        bad = [f.path for f in report.files if not f.ok]
        raise ForgeError(
            f"the built wheel has no kernels for {', '.join(a.sm for a in archs)} in: {', '.join(bad[:5])}",
            "check that this vLLM version's CMake accepts those archs for this CUDA (see `invoke plan`); "
            "the wheel was not published",
            exit_code=1,
        )


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Build a vLLM wheel for the named GPU archs.")
    parser.add_argument("src", type=Path, help="the vLLM checkout")
    parser.add_argument("--dist-dir", type=Path, default=Path("dist"))
    parser.add_argument("--arch", required=True, help="e.g. 12.0, rtx5090, '9.0a;12.0+PTX'")
    parser.add_argument("--cuda", help="the CUDA version the local nvcc must be")
    parser.add_argument("--max-jobs", type=int, default=0)
    parser.add_argument("--nvcc-threads", type=int, default=0)
    parser.add_argument("--mem-per-job-gb", type=float, default=4.0)
    parser.add_argument("--build-type", default="Release")
    parser.add_argument("--compile-cache", default="auto", choices=["auto", "none", "ccache", "sccache"])
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/vllm-forge"))
    parser.add_argument("--deps-cache", type=Path,
                        help="root of a `fetch-deps` cache (<root>/deps); default --cache-dir")
    parser.add_argument("--no-audit", action="store_true", help="skip the arch audit of the built wheel")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, build nothing")
    args = parser.parse_args(argv)
    plan = plan_build(BuildRequest(
        src=args.src, dist_dir=args.dist_dir, arch=args.arch, cuda=args.cuda, max_jobs=args.max_jobs,
        nvcc_threads=args.nvcc_threads, mem_per_job_gb=args.mem_per_job_gb, build_type=args.build_type,
        compile_cache=args.compile_cache, cache_dir=args.cache_dir, deps_cache=args.deps_cache,
    ), check_tools=not args.dry_run)
    for note in plan.notes:
        print(f"# {note}")
    print(plan.command.shell())
    if args.dry_run:
        return 0
    wheel = run_build(plan, on_line=print, audit=not args.no_audit)
    if plan.cache_report:
        print(plan.cache_report.line())
    print(f"built {wheel}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
