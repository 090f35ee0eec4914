"""Build a vLLM wheel for exactly the GPUs asked for, and publish it only when it is right.

The plan (environment + commands) is computed first and printed as is by ``--dry-run``; the real
run executes that same plan. The wheel is built into a private directory next to the output dir
and moved in with one rename after the arch audit passed, so an interrupted or failed build never
leaves a partial wheel in dist/ and never touches older wheels.

Kernel reuse (docs/build-speed.md): every wheel records a kernel key in its .dist-info; a build
whose key matches a wheel in dist/ rebuilds only the Python part and carries that wheel's compiled
files over byte for byte, then is audited like any other.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.build import build_times
from vllm_forge.build.build_estimate import estimate_note
from vllm_forge.build.build_times import CompileTimes, TimingWatch
from vllm_forge.build.cmake_build_dir import (
    compile_settings,
    earlier_build,
    python_suffix,
    record_settings,
    resume_note,
)
from vllm_forge.build.compile_cache import (  # noqa: F401  (cache_stats: re-exported for tasks.py)
    CacheReport,
    CacheSession,
    SharedCache,
    cache_stats,
    compile_cache_env,
    plan_notes,
    resolve_compile_cache,
)
from vllm_forge.build.farm import (
    DistPlan,
    DistSettings,
    cache_for_dist,
    client_config,
    jobs_with_farm,
    plan_dist,
    settings_from_secret,
)
from vllm_forge.build.preflight import Preflight, check_substitutes, run_preflight
from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.git_safe import run_git
from vllm_forge.core.package import python_path
from vllm_forge.core.plan import Command, run_command
from vllm_forge.deps.fetch_deps import deps_env
from vllm_forge.gpu import archs as archs_mod
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_arch import CudaArch
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.gpu.parallelism import Parallelism, choose_parallelism, cpu_count
from vllm_forge.gpu.toolchain import CudaToolchain, find_cuda_toolchain
from vllm_forge.source.setup_reader import ExtensionTarget, resolve_targets
from vllm_forge.source.vllm_tree import VllmTree, inspect_tree


@dataclass
class BuildRequest:
    """What to build, in the terms of BuildConfig but free of invoke (the Docker build uses it)."""

    src: Path
    dist_dir: Path
    archs: list[CudaArch]  # what to build for (archs.parse_arch_list of --arch)
    cuda: CudaRelease | None = None  # None: whatever the local nvcc is; else it must match it
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
    reuse: bool = True  # reuse the kernels of a wheel in dist_dir built from the same kernel inputs
    patches: list[Path] = field(default_factory=list)  # applied before the build (recorded, keyed)
    targets: list[str] = field(default_factory=list)  # CMake extension targets to build (empty: all of them)
    install_build_deps: bool = False  # unmet build requirements are installed (a step before) instead of refused
    cmake_args: str = ""  # extra CMake arguments (setup.py reads CMAKE_ARGS); "": the environment's, if any
    dist: DistSettings = field(default_factory=DistSettings)  # a sccache-dist farm to compile on (build/farm.py)


@dataclass
class BuildPlan:
    request: BuildRequest
    archs: list[CudaArch]
    toolchain: CudaToolchain
    parallelism: Parallelism
    compile_cache: str  # resolved: none | ccache | sccache
    env: dict[str, str]
    command: Command
    staging: Path
    notes: list[str] = field(default_factory=list)
    cache_report: CacheReport | None = None  # this build's hits and misses, set by run_build
    tree: VllmTree | None = None  # what this checkout's vLLM version reads and accepts
    reuse: ReuseDecision | None = None  # kernel reuse: which path this build takes, and why
    build_info: dict | None = None  # what run_build wrote into the wheel (set by run_build)
    preflight: Preflight | None = None  # what the checks before any compile found
    targets: list[ExtensionTarget] = field(default_factory=list)  # --targets, resolved (empty: every target)
    left_out: list[str] = field(default_factory=list)  # targets of a CUDA build that --targets leaves out
    targets_record: Path | None = None  # where the setup.py wrapper writes what it built and left out
    # where the run's compile time went (set by run_build, also when it failed): what `timing` and `build_times` read
    compile_times: CompileTimes | None = None
    dist: DistPlan | None = None  # distributed compiles: the farm's state and sccache's client config
    local_parallelism: Parallelism | None = None  # MAX_JOBS for this machine alone (the farm may raise it)

    @property
    def commands(self) -> list[Command]:
        return [self.command]

    @property
    def timing(self) -> CompileTimes | None:
        """The run's compile times when it compiled kernels in a CMake build dir: the end-of-build report and the
        wheel's build info; None otherwise (kernels reused, nothing configured)."""
        times = self.compile_times
        return times if times is not None and times.timed and times.build_dir is not None else None

    @property
    def build_times(self) -> dict | None:
        """The run's ``build-times`` record (run records, the build figure, bench); None before a run."""
        return self.compile_times.record() if self.compile_times is not None else None


def tree_needs_torch(src: Path) -> bool:
    setup = src / "setup.py"
    if not setup.is_file():
        return False
    return re.search(r"^\s*(import torch|from torch)", setup.read_text(errors="replace"), re.M) is not None


def variant_version(src: Path, tree_version: str | None, cuda: CudaRelease, archs: list[CudaArch]) -> str:
    """The wheel's version with the build's variant as a PEP 440 local version, as vLLM's own variant wheels
    carry one (``0.11.0+cu130.sm90a.sm120ptx``): the tag the checkout is at (``.devN+g<commit>`` past it), or
    the tree's own version when it has no tags."""
    base, local = tree_version or "0.0.0", []
    if has_git_tags(src):
        proc = run_git(["describe", "--tags", "--long", "--abbrev=12", "--match", "v[0-9]*"], src)
        found = re.match(r"^v?(?P<tag>.+)-(?P<distance>\d+)-g(?P<sha>[0-9a-f]+)$", proc.stdout.strip())
        if found:
            base = found["tag"]
            if int(found["distance"]):
                base += f".dev{found['distance']}"
                local.append(f"g{found['sha'][:12]}")
    base = base.split("+", 1)[0]
    local.append(cuda.tag)
    local += [f"sm{arch.number}{'ptx' if arch.has_ptx else ''}" for arch in archs]
    return f"{base}+{'.'.join(local)}"


def has_git_tags(src: Path) -> bool:
    if not (Path(src) / ".git").exists():  # a copy inside another repository must not take that one's tags
        return False
    return run_git(["describe", "--tags", "--abbrev=0"], src).returncode == 0


def plan_build(request: BuildRequest, *, check_tools: bool = True, preflight: bool | None = None) -> BuildPlan:
    """Everything checked and decided before any compile: fails in well under a second.

    ``check_tools``: the output dir is checked (a real run). ``preflight`` (default: ``check_tools``): what
    the build needs from this machine (vllm_forge/build/preflight.py) is checked too; ``invoke plan`` and
    ``--dry-run`` check it without building anything."""
    preflight = check_tools if preflight is None else preflight
    src = Path(request.src).expanduser()
    archs = list(request.archs)
    if request.cuda is not None:
        archs_mod.check_archs_for_cuda(archs, request.cuda)
    parallelism = choose_parallelism(
        max_jobs=request.max_jobs, nvcc_threads=request.nvcc_threads, n_archs=len(archs),
        mem_per_job_gb=request.mem_per_job_gb,
    )
    cache = resolve_compile_cache(cache_for_dist(request.compile_cache, request.dist), request.shared_cache)
    if not src.exists():
        raise ForgeError(f"{src} is not a vLLM checkout (it does not exist)",
                         "run `invoke clone` first, or pass --vllm-src PATH to an existing checkout")
    tree = inspect_tree(src)
    toolchain = _toolchain_for(request, archs, tree)
    deps_cache = Path(request.deps_cache or request.cache_dir).expanduser()
    checked = None
    if preflight:
        checked = run_preflight(tree, python=request.python, toolchain=toolchain,
                                env={**os.environ, **toolchain.env, **request.extra_env}, cache_dir=deps_cache,
                                needs_torch=tree_needs_torch(src), install_requirements=request.install_build_deps)
    notes = [
        tree.summary(),
        f"CUDA {toolchain.version}: nvcc {toolchain.full_version} at {toolchain.nvcc} "
        f"({'PyPI' if toolchain.from_pypi else 'system'} toolkit){_driver_note(toolchain.version)}",
        parallelism.reason,
        *(checked.notes if checked else []),
    ]
    python_version = checked.facts.version[:2] if checked and checked.facts else sys.version_info[:2]
    chosen, left_out = _choose_targets(tree, request.targets, toolchain.version, python_version)
    building = [t.target for t in chosen] or [t.target for t in tree.cuda_targets(toolchain.version, python_version)]
    notes += check_substitutes(tree, checked, building, {t.target for t in chosen})
    if chosen:
        notes.append(f"targets: {', '.join(t.target for t in chosen)} (--targets); left out: "
                     f"{', '.join(left_out) or 'none'}: the wheel holds only what was built")
    dist = plan_dist(request.dist, Path(request.cache_dir).expanduser() / "sccache-dist")
    env = _build_env(request, tree, toolchain, archs, parallelism, cache, deps_cache, dist, notes)
    dist_dir = Path(request.dist_dir).expanduser().resolve()
    if check_tools:  # a read-only or full output dir fails here, before the checkout is touched
        _prepare_dist(dist_dir, need_mb=tree.wheel_limit_mb())
    staging, command, record = _setup_command(request, src, dist_dir, env, chosen)
    plan = BuildPlan(request, archs, toolchain, parallelism, cache, env, command, staging, notes, tree=tree,
                     preflight=checked, targets=chosen, left_out=left_out, targets_record=record,
                     local_parallelism=parallelism)
    if dist:
        apply_dist(plan, dist)
        notes += dist.notes()
        if plan.parallelism is not parallelism:
            notes.append(plan.parallelism.reason)
    _plan_reuse_and_resume(plan)
    return plan


def _toolchain_for(request: BuildRequest, archs: list[CudaArch], tree: VllmTree) -> CudaToolchain:
    """The nvcc that builds (the one CUDA of a local build), checked against --cuda, the archs and this vLLM's
    CMake arch gate (what it would silently drop)."""
    toolchain = find_cuda_toolchain()
    if request.cuda is not None and not request.cuda.same_minor(toolchain.version):
        raise ForgeError(
            f"--cuda {request.cuda} was asked for but the nvcc found ({toolchain.nvcc}) is CUDA {toolchain.version}",
            f"put CUDA {request.cuda}'s nvcc first (CUDA_HOME or PATH), drop --cuda, or bake in Docker "
            f"(`invoke bake --cuda {request.cuda}`)",
        )
    archs_mod.check_archs_for_cuda(archs, toolchain.version)
    tree.check_archs(archs, toolchain.version)
    return toolchain


def _build_env(request: BuildRequest, tree: VllmTree, toolchain: CudaToolchain, archs: list[CudaArch],
               parallelism: Parallelism, cache: str, deps_cache: Path, dist: DistPlan | None,
               notes: list[str]) -> dict[str, str]:
    """The environment vLLM's setup.py builds in: the archs, parallelism, the wheel's version, the cached git
    dependencies, the compile cache, nvcc --time, the toolchain's and the mirror's; notes what each adds."""
    src = Path(request.src).expanduser()
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
    version = variant_version(src, tree.version, toolchain.version, archs)
    variable = tree.version_env or "SETUPTOOLS_SCM_PRETEND_VERSION"
    env[variable] = version
    notes.append(f"version {version} ({variable}): the CUDA and archs are in the wheel's name, so wheels for "
                 "other GPUs or CUDA versions in the same dist/ never replace each other")
    if request.cmake_args:
        env["CMAKE_ARGS"] = request.cmake_args
    deps = deps_env(tree, deps_cache, cmake_args=env.get("CMAKE_ARGS"))
    if deps:
        env.update(deps)
        notes.append(f"{sum(1 for k in deps if k.endswith('_SRC_DIR'))} git dependencies from the local cache "
                     "(`invoke fetch-deps`): the build needs no network for them")
    env.update(compile_cache_env(cache, Path(request.cache_dir).expanduser(), shared=request.shared_cache,
                                 base_dir=src, dist_config=dist.config_path if dist else None))
    notes += plan_notes(cache, request.shared_cache, env)
    timing = build_times.nvcc_time_env(src) if cache != "sccache" else {}
    env.update(timing)
    notes.append(f"nvcc --time writes each unit's compile phases, per arch, to {build_times.nvcc_time_path(src)} "
                 f"({build_times.NVCC_FLAGS_ENV}; not a kernel input)" if timing else
                 "no per-arch compile times: " + ("sccache does not cache an nvcc call while "
                                                  f"{build_times.NVCC_FLAGS_ENV} is set" if cache == "sccache"
                                                  else "the checkout's path has a space, which nvcc's "
                                                  f"{build_times.NVCC_FLAGS_ENV} cannot carry"))
    env.update(toolchain.env)
    env.update(request.extra_env)
    return env


def _setup_command(request: BuildRequest, src: Path, dist_dir: Path, env: dict[str, str],
                   chosen: list[ExtensionTarget]) -> tuple[Path, Command, Path | None]:
    """(staging dir, the setup.py command, where --targets' wrapper records what it built): a private staging
    dir per run, so two builds into one dist/ never mix files."""
    from vllm_forge.audit.audit import STAGING_PREFIX

    staging = dist_dir / f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    setup_args = ["bdist_wheel", f"--dist-dir={staging}", "--py-limited-api=cp38"]
    record = None
    if chosen:
        # vLLM's setup.py builds every extension it declares: a wrapper hands it only the named ones.
        record = staging / "targets.json"  # staging is made right before the build runs
        argv = [request.python, "-m", "vllm_forge.build.setup_targets", "--targets",
                ",".join(t.target for t in chosen), "--record", str(record), "--", *setup_args]
        command_env = {**env, **python_path()}  # -m puts the checkout (the cwd) first on sys.path, as setup.py runs
    else:
        argv, command_env = [request.python, "setup.py", *setup_args], env
    command = Command(argv, cwd=str(src.resolve()), env=command_env, why="build the wheel (vLLM's own recipe)")
    return staging, command, record


def _plan_reuse_and_resume(plan: BuildPlan) -> None:
    """Kernel reuse (a wheel with the same kernel key), and for a build that compiles: what its CMake build dir
    resumes from and how long it should take; each said in the plan's notes."""
    from vllm_forge.source import patches as patch_mod

    request, tree, notes = plan.request, plan.tree, plan.notes
    pending = [patch_mod.read_patch(p) for p in request.patches]  # a missing or non-diff file fails here
    chosen = [t.target for t in plan.targets]
    decision = decide_reuse(request, tree, plan.env, plan.toolchain, pending_patches=pending, targets=chosen)
    apply_reuse(plan, decision)
    notes.append(decision.note(plan.compile_cache))
    if not decision.source and decision.key:  # CMake and ninja run: what they start from, how long they take
        src = Path(request.src).expanduser()
        settings = compile_settings(decision.key.inputs, plan.compile_cache)
        earlier = earlier_build(src, settings)
        notes.append(resume_note(src, settings, earlier))
        local = plan.local_parallelism or plan.parallelism
        notes.append(estimate_note(tree, settings, archs=plan.archs, cores=cpu_count(), jobs=local.max_jobs,
                                   nvcc_threads=local.nvcc_threads, targets=chosen, earlier=earlier))


def _driver_note(cuda: CudaRelease) -> str:
    need = compat.MIN_DRIVER.get(cuda.minor_str)
    return f"; the wheel needs an NVIDIA driver >= {need.full}" if need else ""


def _choose_targets(tree: VllmTree, wanted: list[str], nvcc: CudaRelease,
                    python: tuple[int, int]) -> tuple[list[ExtensionTarget], list[str]]:
    """``--targets`` resolved against what a CUDA build of this checkout builds, and what it leaves out."""
    if not wanted:
        return [], []
    available = tree.cuda_targets(nvcc, python)
    if not available:
        raise ForgeError(f"--targets needs the extensions {tree.root}/setup.py declares, and none could be read there",
                         "drop --targets (everything is built)")
    try:
        chosen = resolve_targets(wanted, available)
    except ValueError as err:
        raise ForgeError(f"--targets {err}", f"name CMake extension targets of this vLLM: "
                         f"{', '.join(t.target for t in available)}") from None
    return chosen, [t.target for t in available if t not in chosen]


def apply_dist(plan: BuildPlan, dist: DistPlan) -> None:
    """Point the plan at the farm's state: sccache's client config (its own sccache server) when the farm
    compiles, none when it does not, and MAX_JOBS for this machine plus the farm's cores when automatic."""
    request = plan.request
    cache_env = compile_cache_env(plan.compile_cache, Path(request.cache_dir).expanduser(),
                                  shared=request.shared_cache, base_dir=Path(request.src).expanduser(),
                                  dist_config=dist.config_path if dist.probe.on else None)
    local = plan.local_parallelism or plan.parallelism
    parallelism = local
    if dist.probe.on and not request.max_jobs and dist.probe.status:
        from vllm_forge.gpu.parallelism import available_memory_gb

        jobs, reason = jobs_with_farm(local.max_jobs, dist.probe.status.cores, available_memory_gb())
        parallelism = Parallelism(jobs, local.nvcc_threads, reason)
    for env in {id(plan.env): plan.env, id(plan.command.env): plan.command.env}.values():
        env.pop("SCCACHE_CONF", None)
        env.update(cache_env)
        env["MAX_JOBS"] = str(parallelism.max_jobs)
    plan.parallelism = parallelism
    plan.dist = dist



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
    from vllm_forge.audit.audit import STAGING_PREFIX

    mine = f"{STAGING_PREFIX}{socket.gethostname()}-"
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


def run_build(plan: BuildPlan, *, on_line=None, audit: bool = True) -> Path:
    """Run the plan; returns the published wheel's path."""
    from vllm_forge.core import checkout_lock

    dist_dir = Path(plan.request.dist_dir).expanduser().resolve()
    # Two builds of one checkout would share its CMake build dir: the second is refused at once.
    with checkout_lock.holding(Path(plan.request.src).expanduser()):
        return _run_locked(plan, dist_dir, on_line=on_line, audit=audit)


def _run_locked(plan: BuildPlan, dist_dir: Path, *, on_line=None, audit: bool = True) -> Path:
    _prepare_dist(dist_dir)
    staging = plan.staging
    log_path = None
    if plan.request.log_dir:
        log_dir = Path(plan.request.log_dir).expanduser()
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"build-wheel-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    staging.mkdir()
    # Decided again now: patches and use-existing-torch ran since the plan, and dist/ may have changed.
    decision = decide_reuse(plan.request, plan.tree or inspect_tree(plan.request.src), plan.command.env,
                            plan.toolchain, targets=[t.target for t in plan.targets])
    apply_reuse(plan, decision)
    if plan.dist and not decision.source:  # the farm asked again now: it may have gone (or come back) since
        apply_dist(plan, plan_dist(plan.request.dist, Path(plan.request.cache_dir).expanduser() / "sccache-dist"))
        if on_line:
            on_line(plan.dist.probe.line())
    cache_session = CacheSession(plan.compile_cache, plan.env, distributed=plan.dist is not None)
    src = Path(plan.request.src).expanduser()
    compiles = bool(not decision.source and decision.key)  # kernels compile: ninja's record of this build
    settings = compile_settings(decision.key.inputs, plan.compile_cache) if compiles else {}
    if compiles:
        record_settings(src, settings)
    watch = TimingWatch(src, python_suffix(settings), timed=compiles)
    clear_staged_binaries(src)
    try:
        with client_config(plan.dist if not decision.source else None):
            cache_session.start()  # counters before, so the figures are this build's
            watch.start()  # under the checkout's lock: never another build's times
            try:
                run_command(plan.command, on_line=on_line, log_path=log_path)
            finally:
                plan.cache_report = cache_session.finish()
                plan.compile_times = watch.finish()  # a failed or interrupted build is timed too
        wheels = sorted(staging.glob("*.whl"))
        if len(wheels) != 1:
            raise ForgeError(f"the build made {len(wheels)} wheels instead of one", "read the build log", exit_code=1)
        wheel = wheels[0]
        source = decision.source
        plan.build_info = build_info_for(plan, _sha256_file(source) if source else None)
        reuse_kernels(wheel, source, plan.build_info, Path(plan.request.src).expanduser())
        if source:
            want, got = compiled_digests(source), compiled_digests(wheel)
            changed = sorted(n for n in want if got.get(n) != want[n])
            if changed:  # cannot happen unless the wheel was rewritten under us: refuse, never guess
                raise ForgeError(f"the kernels carried over from {source.name} differ in {', '.join(changed[:3])}",
                                 "rebuild with --no-reuse", exit_code=1)
        if audit:
            audit_built_wheel(wheel, plan.archs)
        final = dist_dir / wheel.name
        os.replace(wheel, final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def audit_built_wheel(wheel: Path, archs: list[CudaArch]) -> None:
    """Refuse a wheel whose extensions cannot run on one of the archs it was built for."""
    from vllm_forge.audit.audit import audit_path

    report = audit_path(wheel, [a.sm for a in archs])
    if not report.ok:
        bad = [f.path for f in report.files if not f.ok]
        raise ForgeError(
            f"the built wheel has no kernels for {', '.join(a.sm for a in archs)} in: {', '.join(bad[:5])}",
            "check that this vLLM version's CMake accepts those archs for this CUDA (see `invoke plan`); "
            "the wheel was not published",
            exit_code=1,
        )


# ---- kernel reuse: a Python-only change rebuilds in seconds -------------------------------------
#
# Every published wheel carries <name>.dist-info/vllm_forge.json: the kernel key (a sha256 of
# everything that decides the compiled extensions), its inputs, the applied patches and where its
# kernels came from. A build whose key matches a wheel in dist_dir takes the checkout's own
# precompiled path (VLLM_USE_PRECOMPILED=1, VLLM_PRECOMPILED_WHEEL_LOCATION=that wheel: vLLM's
# setup.py then copies the .so files out of it instead of running CMake), and the compiled members
# of the result are made byte-identical to the source wheel's before it is audited and published.

BUILD_INFO_NAME = "vllm_forge.json"  # inside the wheel's .dist-info directory
BUILD_INFO_FORMAT = 1
KERNEL_INPUT_PATHS = ("csrc", "cmake", "CMakeLists.txt", "setup.py")  # hashed, content and names
# What a checkout reads that does not change the compiled code: parallelism, the version string,
# the compile cache, tool paths (their versions are keyed instead) and the reuse switches themselves.
NOT_KERNEL_ENV = frozenset({
    "MAX_JOBS", "NVCC_THREADS", "VERBOSE", "CMAKE_BUILD_PARALLEL_LEVEL", "VLLM_VERSION_OVERRIDE",
    "SETUPTOOLS_SCM_PRETEND_VERSION", "VLLM_MAIN_CUDA_VERSION", "VLLM_USE_PRECOMPILED",
    "VLLM_PRECOMPILED_WHEEL_LOCATION", "VLLM_PRECOMPILED_WHEEL_COMMIT", "VLLM_SKIP_PRECOMPILED_VERSION_SUFFIX",
    "VLLM_DISABLE_SCCACHE", "USE_SCCACHE",
    "SCCACHE_DIR", "CCACHE_DIR", "CMAKE_C_COMPILER_LAUNCHER", "CMAKE_CXX_COMPILER_LAUNCHER",
    "CMAKE_CUDA_COMPILER_LAUNCHER", "FETCHCONTENT_BASE_DIR", "CUDACXX", "CUDAHOSTCXX", "CUDA_HOME", "CUDA_PATH",
})
PRECOMPILED_ENV = ("VLLM_USE_PRECOMPILED", "VLLM_PRECOMPILED_WHEEL_LOCATION")
# Newer vLLM appends "+precompiled" to the version of such a build unless this is set.
SKIP_SUFFIX_ENV = "VLLM_SKIP_PRECOMPILED_VERSION_SUFFIX"
_FETCHCONTENT_ARG = re.compile(r"^-DFETCHCONTENT_SOURCE_DIR_\w+=")


@dataclass(frozen=True)
class KernelKey:
    key: str  # sha256 hex of the canonical JSON of ``inputs``
    inputs: dict

    @property
    def short(self) -> str:
        return self.key[:16]

    def differences(self, other_inputs: dict) -> list[str]:
        """The input names whose values differ from ``other_inputs`` (a wheel's recorded inputs)."""
        names = sorted(set(self.inputs) | set(other_inputs))
        return [n for n in names if self.inputs.get(n) != other_inputs.get(n)]


def kernel_input_files(src: Path, paths: tuple[str, ...] = KERNEL_INPUT_PATHS) -> list[Path]:
    """The files under ``paths`` that the checkout itself holds, sorted: what its .gitignore leaves out is a
    build's output, not an input (vLLM's CMake writes CUTLASS/machete kernels into csrc/**/generated/ at
    configure time, which would give every build after the first another key). A git checkout is asked
    (tracked files and untracked ones it does not ignore); a tree without .git (an unpacked sdist) applies its
    own .gitignore with pathspec, or takes every file when pathspec is not installed."""
    src = Path(src)
    listed = None
    if (src / ".git").exists():
        proc = run_git(["ls-files", "-z", "-c", "-o", "--exclude-standard", "--", *paths], src, timeout=120)
        if proc.returncode == 0:
            listed = [src / name for name in proc.stdout.split("\0") if name]
    if listed is None:
        listed = []
        for rel in paths:
            top = src / rel
            listed += [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() \
                else []
        ignored = _gitignore(src)
        if ignored is not None:
            listed = [p for p in listed if not ignored.match_file(p.relative_to(src).as_posix())]
    files = []
    for path in sorted(set(listed)):
        parts = path.relative_to(src).parts
        if "__pycache__" in parts or path.suffix in (".pyc", ".so", ".o") or not path.is_file():
            continue
        files.append(path)
    return files


def _gitignore(src: Path):
    try:
        import pathspec
    except ImportError:
        return None
    try:
        lines = (src / ".gitignore").read_text(errors="replace").splitlines()
    except OSError:
        return None
    return pathspec.GitIgnoreSpec.from_lines(lines)


def tree_digest(src: Path, paths: tuple[str, ...] = KERNEL_INPUT_PATHS) -> str:
    """sha256 over the names and bytes of the kernel-input files of a checkout (build outputs and
    caches left out), as they are on disk: uncommitted edits and applied patches count."""
    digest = hashlib.sha256()
    src = Path(src)
    for path in kernel_input_files(src, paths):
        digest.update("/".join(path.relative_to(src).parts).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _first_line(argv: list[str], cwd: Path | None = None) -> str | None:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else None


def _python_facts(python: str) -> dict:
    """The build Python's version and the torch it has (metadata only: importing torch takes seconds)."""
    code = ("import importlib.metadata as m, json, sys\n"
            "try: t = m.version('torch')\nexcept m.PackageNotFoundError: t = None\n"
            "print(json.dumps({'python': '%d.%d' % sys.version_info[:2], 'torch': t}))")
    if Path(python).resolve() == Path(sys.executable).resolve():
        import importlib.metadata as md
        try:
            torch = md.version("torch")
        except md.PackageNotFoundError:
            torch = None
        return {"python": f"{sys.version_info[0]}.{sys.version_info[1]}", "torch": torch}
    line = _first_line([python, "-c", code])
    try:
        return json.loads(line) if line else {"python": None, "torch": None}
    except ValueError:
        return {"python": None, "torch": None}


def _dep_pins(tree: VllmTree, env: dict[str, str]) -> list[dict]:
    """Each git dependency the CMake fetches: its pin, and the commit of the local copy the build is
    pointed at (fetch-deps cache or a developer's clone; a dirty copy adds a hash of its diff)."""
    from vllm_forge.deps.fetch_deps import override_for

    cmake_args = shlex.split(env.get("CMAKE_ARGS", ""))
    pins = []
    for dep in tree.git_deps:
        local = env.get(dep.src_dir_env) if dep.src_dir_env else None
        if not local:
            prefix = f"-D{dep.cmake_source_dir_var}="
            local = next((a[len(prefix):] for a in cmake_args if a.startswith(prefix)), None)
        pin = {"name": dep.name, "repository": dep.repository, "tag": dep.tag, "override": override_for(tree, dep)}
        if local:
            path = Path(local)
            head = run_git(["-C", str(path), "rev-parse", "HEAD"])
            pin["commit"] = (head.stdout.strip().splitlines() or [""])[0] if head.returncode == 0 else ""
            pin["commit"] = pin["commit"] or "not a git checkout"
            diff = run_git(["-C", str(path), "diff", "HEAD"], text=False)
            if diff.returncode == 0 and diff.stdout:
                pin["local_diff_sha256"] = hashlib.sha256(diff.stdout).hexdigest()
        pins.append(pin)
    return pins


def kernel_inputs(src: Path, tree: VllmTree, env: dict[str, str], *, nvcc_version: str, python: str,
                  patches: list[dict] | None = None, targets: list[str] | None = None) -> dict:
    """Everything that decides the compiled extensions of a build of ``src`` with ``env`` (the
    plan's environment over this process's)."""
    effective = {**os.environ, **env}
    dep_vars = {d.src_dir_env for d in tree.git_deps if d.src_dir_env}
    read_env = {}
    for name in sorted(tree.env_vars_read):
        if name in NOT_KERNEL_ENV or name in dep_vars or name.endswith("_SRC_DIR"):
            continue
        value = effective.get(name)
        if name == "CMAKE_ARGS" and value:  # local dependency copies are keyed by commit, not path
            value = " ".join(a for a in shlex.split(value) if not _FETCHCONTENT_ARG.match(a)) or None
        read_env[name] = value
    host = effective.get("CUDAHOSTCXX") or effective.get("CXX") or "c++"
    facts = _python_facts(python)
    inputs = {
        "tree_sha256": tree_digest(src),
        "archs": effective.get("TORCH_CUDA_ARCH_LIST"),
        "fa_archs": effective.get("VLLM_FA_CMAKE_GPU_ARCHES"),
        "build_type": effective.get("CMAKE_BUILD_TYPE", "Release"),
        "target_device": effective.get("VLLM_TARGET_DEVICE", "cuda"),
        "nvcc": nvcc_version,
        "host_compiler": _first_line([host, "--version"]),
        "python": facts["python"],
        "torch": facts["torch"],
        "git_deps": _dep_pins(tree, effective),
        "env": read_env,
        "kernel_patches": list(patches or []),
    }
    if targets:  # a --targets build holds only those extensions: never a stand-in for a whole one
        inputs["targets"] = sorted(targets)
    return inputs


def kernel_key(src: Path, tree: VllmTree, env: dict[str, str], *, nvcc_version: str, python: str = sys.executable,
               patches: list[dict] | None = None, targets: list[str] | None = None) -> KernelKey:
    inputs = kernel_inputs(src, tree, env, nvcc_version=nvcc_version, python=python, patches=patches,
                           targets=targets)
    return KernelKey(hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest(), inputs)


def read_build_info(wheel: Path) -> dict | None:
    """The vllm-forge build info inside a wheel, or None (not ours, unreadable)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            name = next((n for n in zf.namelist()
                         if n.count("/") == 1 and n.split("/")[0].endswith(".dist-info")
                         and n.endswith("/" + BUILD_INFO_NAME)), None)
            info = json.loads(zf.read(name)) if name else None
    except (OSError, zipfile.BadZipFile, ValueError, KeyError):
        return None
    return info if isinstance(info, dict) else None


def find_reusable_wheel(dist_dir: Path, key: KernelKey) -> tuple[Path | None, str]:
    """The newest wheel in ``dist_dir`` whose kernel key is ``key``; else None and why not (which
    inputs differ from the newest wheel that has a key)."""
    dist_dir = Path(dist_dir).expanduser()
    wheels = sorted(dist_dir.glob("*.whl"), key=lambda p: p.stat().st_mtime, reverse=True) if dist_dir.is_dir() else []
    newest: tuple[Path, dict] | None = None
    for wheel in wheels:
        info = read_build_info(wheel)
        if not info or "kernel_key" not in info:
            continue
        if info["kernel_key"] == key.key:
            return wheel, f"{wheel.name} has the same kernel key"
        newest = newest or (wheel, info)
    if newest is None:
        return None, f"no wheel in {dist_dir} records a kernel key (a first build)"
    changed = key.differences(newest[1].get("kernel_inputs", {}))
    return None, f"kernel inputs differ from {newest[0].name}: {', '.join(changed) or 'key format'}"


@dataclass
class ReuseDecision:
    key: KernelKey | None
    source: Path | None  # the wheel whose kernels this build carries over; None: compile
    reason: str
    pending: bool = False  # a patch touching kernel inputs is still to be applied: decided after it

    def note(self, compile_cache: str = "none") -> str:
        """The plan's line; ``compile_cache`` is the resolved tool (``none``, ``ccache``, ``sccache``)."""
        key = f" (key {self.key.short})" if self.key else ""
        if self.source:
            return (f"kernel reuse{key}: {self.reason}: Python-only rebuild, its compiled files carried over "
                    f"(VLLM_USE_PRECOMPILED=1 VLLM_PRECOMPILED_WHEEL_LOCATION={self.source})")
        how = "" if self.pending else (" (every unit: no compile cache)" if compile_cache == "none"
                                       else f" (through {compile_cache})")
        return f"kernel reuse{key}: {self.reason}: kernels are compiled{how}"

    def line(self) -> str:
        """What the build prints once done."""
        if self.source:
            return f"kernels reused from {self.source.name} (kernel key {self.key.short}): no nvcc ran"
        return f"kernels compiled (kernel key {self.key.short if self.key else '?'}): {self.reason}"


def precompiled_support(tree: VllmTree) -> str | None:
    """None when the checkout's setup.py can take its kernels from a local wheel; else why not."""
    missing = [name for name in PRECOMPILED_ENV if not tree.reads(name)]
    if missing:
        return (f"this checkout's setup.py does not read {' or '.join(missing)}, so it cannot take "
                "its kernels from a wheel")
    return None


def decide_reuse(request: BuildRequest, tree: VllmTree, env: dict[str, str], toolchain: CudaToolchain,
                 *, pending_patches: list | None = None, targets: list[str] | None = None) -> ReuseDecision:
    """Which path a build takes: compile, or carry the kernels of a wheel with the same key over."""
    from vllm_forge.source import patches as patch_mod

    src = Path(request.src).expanduser()
    applied = patch_mod.applied_patches(src)
    key = kernel_key(src, tree, env, nvcc_version=toolchain.full_version, python=request.python,
                     patches=patch_mod.kernel_patches(applied), targets=targets)
    if not request.reuse:
        return ReuseDecision(key, None, "off (--no-reuse)")
    unsupported = precompiled_support(tree)
    if unsupported:
        return ReuseDecision(key, None, unsupported)
    applied_shas = {p.sha256 for p in applied}
    kernel_pending = [p for p in pending_patches or [] if p.touches_kernels and p.sha256 not in applied_shas]
    if kernel_pending:
        return ReuseDecision(key, None, f"{', '.join(p.name for p in kernel_pending)} change kernel inputs and are "
                             "not applied yet: decided after they are", pending=True)
    source, why = find_reusable_wheel(request.dist_dir, key)
    return ReuseDecision(key, source.resolve() if source else None, why)


def apply_reuse(plan: BuildPlan, decision: ReuseDecision) -> None:
    """Point the plan's command at the decision's path (the precompiled env set, or removed)."""
    if decision.source:
        switch = {"VLLM_USE_PRECOMPILED": "1", "VLLM_PRECOMPILED_WHEEL_LOCATION": str(decision.source)}
        if plan.tree is not None and plan.tree.reads(SKIP_SUFFIX_ENV):
            switch[SKIP_SUFFIX_ENV] = "1"  # the same version (and wheel name) as a compiled build
    else:  # one left in the user's shell would make setup.py fetch upstream's kernels: switch it off
        switch = {name: "" for name in PRECOMPILED_ENV if os.environ.get(name)}
    for env in {id(plan.env): plan.env, id(plan.command.env): plan.command.env}.values():
        for name in (*PRECOMPILED_ENV, SKIP_SUFFIX_ENV):
            env.pop(name, None)
        env.update(switch)
    plan.command.why = ("rebuild the Python part, kernels from " + decision.source.name if decision.source
                        else "build the wheel (vLLM's own recipe)")
    plan.reuse = decision


def clear_staged_binaries(src: Path) -> list[Path]:
    """Remove the compiled files under the tree's ``build/lib.*`` (setuptools' staging of the package) before
    setup.py runs; returns them. Every run makes them again: a compiling build links or installs them (vLLM's
    setup.py points CMake's library output there), a kernel-reuse run extracts them from the wheel it reuses. One a
    reuse run left there is newer than what ninja linked earlier, so ninja and an install step both take it
    as up to date, and a resumed build for other archs would package the reused wheel's kernels."""
    build = Path(src) / "build"
    if build.is_symlink() or not build.is_dir():
        return []
    removed = []
    for staged in build.glob("lib.*"):
        if staged.is_symlink() or not staged.is_dir():
            continue
        for parent, _dirs, files in os.walk(staged):  # links to directories are not followed
            for name in files:
                path = Path(parent) / name
                if not path.is_symlink() and _is_compiled(name):
                    path.unlink()
                    removed.append(path)
    return removed


def _is_compiled(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return ".dist-info/" not in name and (base.endswith(".so") or ".so." in base)


def _record_hash(data_sha: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(data_sha).rstrip(b"=").decode()


def reuse_kernels(wheel: Path, source_wheel: Path | None, build_info: dict, src: Path | None = None) -> list[str]:
    """Rewrite ``wheel`` in place: the compiled members of ``source_wheel`` (every .so, and the files
    its kernel build installed next to them that the checkout does not have, such as the
    vllm_flash_attn Python files) replace or join the new build's, byte for byte; the build info is
    added; RECORD is rewritten. Returns the members taken from ``source_wheel``.

    Done here with zipfile (the wheel format is a zip with a RECORD of sha256s) because this runs
    inside the Docker build too, where only the standard library is sure to be present."""
    wheel = Path(wheel)
    carried: list[str] = []
    tmp = wheel.with_name(wheel.name + ".repack")
    with contextlib.ExitStack() as stack:
        new = stack.enter_context(zipfile.ZipFile(wheel))
        old = stack.enter_context(zipfile.ZipFile(source_wheel)) if source_wheel else None
        new_names = new.namelist()
        dist_info = next((n.split("/")[0] for n in new_names if n.split("/")[0].endswith(".dist-info")), None)
        if dist_info is None:
            raise ForgeError(f"{wheel.name} has no .dist-info directory", "read the build log", exit_code=1)
        take: dict[str, zipfile.ZipFile] = {n: new for n in new_names if n != f"{dist_info}/RECORD"}
        if old is not None:
            old_names = [n for n in old.namelist() if ".dist-info/" not in n]
            compiled_dirs = {n.rsplit("/", 1)[0] for n in old_names if _is_compiled(n)}
            for name in old_names:
                build_output = (name not in take and name.rsplit("/", 1)[0] in compiled_dirs
                                and not (src and (Path(src) / name).exists()))
                if _is_compiled(name) or build_output:
                    take[name] = old
                    carried.append(name)
        info_name = f"{dist_info}/{BUILD_INFO_NAME}"
        take.pop(info_name, None)
        records = []
        out = stack.enter_context(zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED))
        # .dist-info last, as the wheel spec recommends (carried members were added after it)
        for name, origin in sorted(take.items(), key=lambda item: item[0].startswith(f"{dist_info}/")):
            zinfo = origin.getinfo(name)
            digest = hashlib.sha256()
            with origin.open(zinfo) as reader, out.open(zinfo, "w") as writer:
                while chunk := reader.read(1 << 20):
                    digest.update(chunk)
                    writer.write(chunk)
            records.append(f"{name},{_record_hash(digest.digest())},{zinfo.file_size}")
        info_bytes = (json.dumps(build_info, indent=2, sort_keys=True) + "\n").encode()
        out.writestr(info_name, info_bytes)
        records.append(f"{info_name},{_record_hash(hashlib.sha256(info_bytes).digest())},{len(info_bytes)}")
        records.append(f"{dist_info}/RECORD,,")
        out.writestr(f"{dist_info}/RECORD", "\n".join(records) + "\n")
    os.replace(tmp, wheel)
    return carried


def compiled_digests(wheel: Path) -> dict[str, str]:
    """sha256 of every compiled member of a wheel (what reuse promises to carry over unchanged)."""
    with zipfile.ZipFile(wheel) as zf:
        return {n: hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist() if _is_compiled(n)}


def build_info_for(plan: BuildPlan, wheel_sha_source: str | None = None) -> dict:
    """What a wheel records about its build: kernel key and inputs, patches, kernels' origin."""
    from vllm_forge import __version__ as forge_version
    from vllm_forge.source import patches as patch_mod

    decision = plan.reuse
    applied = patch_mod.applied_patches(plan.request.src)
    info = {
        "format": BUILD_INFO_FORMAT,
        "vllm_forge": forge_version,
        "archs": [a.sm for a in plan.archs],
        "kernel_key": decision.key.key if decision and decision.key else None,
        "kernel_inputs": decision.key.inputs if decision and decision.key else None,
        "patches": [p.record() for p in applied],
        "kernels_from": None,
        "cuda": plan.toolchain.version.minor_str,
        "torch": plan.preflight.torch if plan.preflight else None,
        "targets": _targets_built(plan),
    }
    if decision and decision.source:
        info["kernels_from"] = {"wheel": decision.source.name, "sha256": wheel_sha_source}
    if plan.timing is not None:
        info["compile_times"] = plan.timing.build_info()
    return info


def _targets_built(plan: BuildPlan) -> dict:
    """What --targets built and left out, as the setup.py wrapper saw setup.py declare them; every target
    setup.py declared when the build had no --targets."""
    if not plan.targets:
        return {"requested": "all", "built": "all", "left_out": []}
    try:
        return json.loads(Path(plan.targets_record).read_text())
    except (OSError, ValueError, TypeError):
        return {"requested": [t.target for t in plan.targets], "built": None, "left_out": plan.left_out}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build_info_labels(info: dict | None) -> dict[str, str]:
    """Image labels from a wheel's build info (the lead wires these into `bake`): the patches (file
    name and sha256), the kernel key, and the wheel the kernels came from when they were reused."""
    from vllm_forge.source import patches as patch_mod

    info = info or {}
    labels = patch_mod.patch_labels(info.get("patches") or [])
    labels["org.vllm-forge.kernel-key"] = info.get("kernel_key") or ""
    labels["org.vllm-forge.kernels-from"] = (info.get("kernels_from") or {}).get("wheel", "")
    return labels


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
    parser.add_argument("--no-reuse", action="store_true",
                        help="compile the kernels even when a wheel in --dist-dir has the same kernel key")
    parser.add_argument("--patch", action="append", type=Path, default=[],
                        help="apply this unified diff to the checkout first (repeatable; recorded in the wheel)")
    parser.add_argument("--dist-scheduler", default=None,
                        help="sccache-dist scheduler URL to compile on (default: the forge-dist BuildKit secret of a "
                             "bake, else none)")
    parser.add_argument("--dist-token-file", default="",
                        help="file whose first line is the farm's client token (default: $VLLM_FORGE_DIST_TOKEN)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, build nothing")
    args = parser.parse_args(argv)
    dist = (DistSettings(args.dist_scheduler, args.dist_token_file) if args.dist_scheduler is not None
            else settings_from_secret())
    dist.check()
    plan = plan_build(BuildRequest(
        src=args.src, dist_dir=args.dist_dir, archs=archs_mod.parse_arch_list(args.arch),
        cuda=CudaRelease.parse(args.cuda) if args.cuda else None, max_jobs=args.max_jobs,
        nvcc_threads=args.nvcc_threads, mem_per_job_gb=args.mem_per_job_gb, build_type=args.build_type,
        compile_cache=args.compile_cache, cache_dir=args.cache_dir, deps_cache=args.deps_cache,
        reuse=not args.no_reuse, patches=args.patch, dist=dist,
    ), check_tools=not args.dry_run)
    for note in plan.notes:
        print(f"# {note}")
    print(plan.command.shell())
    if args.dry_run:
        return 0
    if args.patch:
        from vllm_forge.source.patches import apply_patches

        apply_patches(args.src, args.patch, on_line=print)
    try:
        wheel = run_build(plan, on_line=print, audit=not args.no_audit)
    finally:
        for line in plan.timing.lines() if plan.timing else []:
            print(line)
    if plan.reuse:
        print(plan.reuse.line())
    if plan.cache_report:
        print(plan.cache_report.line())
    print(f"built {wheel}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
