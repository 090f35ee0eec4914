"""One resolved ``Settings`` per command line, and one ``Pipeline`` of steps built from it.

Every entry point (each invoke task, ``invoke plan``, ``--dry-run``, the nox sessions through the
tasks) asks ``build_pipeline`` for the steps it needs. A ``Step`` holds the exact commands it will run
and, in ``notes``, what it does besides them; printing a step and running it read the same object
(as pyinvoke/invocations' release tasks compute their actions once, then display and execute them).

A step that needs a checkout which an earlier step of the same pipeline makes (``clone``) is planned
from the configuration alone and marked ``pending``; it is planned again from the real checkout right
before it runs, and what then runs is what is printed.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vllm_forge.core.config import ConfigLayers, ResolvedConfig, resolve_config
from vllm_forge.core.errors import ForgeError
from vllm_forge.core.plan import Command, mask_urls
from vllm_forge.gpu import archs as archs_mod
from vllm_forge.gpu.cuda_arch import CudaArch
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.image import mirrors
from vllm_forge.image.recipe import DEFAULT_IMAGE_CUDA, Recipe, choose_recipe
from vllm_forge.source import checkout as checkouts

# The steps there are: ``REGISTRY`` at the end of this module (one entry each: plan, report; ``STEPS`` is its order).
WHEEL_CHAIN = ("clone", "use-existing-torch", "build-wheel", "check-size")
IMAGE_CHAIN = ("clone", "use-existing-torch", "bake", "check-size-image", "inspect")


# --- settings: resolved once per command line -------------------------------------------------------------


@dataclass
class Settings:
    """Config layers + the applied mirror profile + the checkout's own facts, resolved once."""

    rc: ResolvedConfig
    mirror: mirrors.AppliedMirror
    checkout: checkouts.CheckoutFacts
    repo_root: Path
    profile: mirrors.MirrorProfile | None = None
    recipe: Recipe | None = None  # what a bake builds with (None: recipe_error says why not)
    recipe_error: ForgeError | None = None
    cuda: CudaRelease | None = None  # --cuda as asked for (None: not set): a local build's must match its nvcc
    parsed_archs: list[CudaArch] | None = None  # --arch, parsed once (None: arch_error says why not)
    arch_error: ForgeError | None = None

    @property
    def archs(self) -> list[CudaArch]:
        """The archs to build for; the one-line refusal of --arch for the tasks that build (a task that builds
        nothing, such as serve, never asks)."""
        if self.parsed_archs is None:
            raise self.arch_error
        return self.parsed_archs

    @property
    def config(self):
        return self.rc.config

    @property
    def src(self) -> Path:
        return Path(self.config.source_dir)

    def reread_checkout(self) -> None:
        self.checkout = checkouts.read_checkout(self.src, managed=self.checkout.managed)
        self.recipe, self.recipe_error, self.mirror = _recipe_and_mirror(self.rc, self.profile, self.checkout,
                                                                         self.cuda)

    def image_recipe(self, dockerfile: str = "forge") -> Recipe | None:
        """The bake's recipe, or the one-line refusal of it. Another Dockerfile (upstream, a path) keeps its own
        bases and torch: a recipe that cannot be made is no error there (None)."""
        if self.recipe is None and dockerfile == "forge":
            raise self.recipe_error
        return self.recipe

    def image_cuda(self, dockerfile: str = "forge") -> CudaRelease:
        """The CUDA a bake builds with: the recipe's, else (another Dockerfile) --cuda or the default."""
        recipe = self.image_recipe(dockerfile)
        return recipe.cuda if recipe else (self.cuda or DEFAULT_IMAGE_CUDA).minor_release


def resolve_settings(layers: ConfigLayers | None, flags: dict[str, Any], *, repo_root: Path,
                     writes: bool = False) -> Settings:
    """flags > INVOKE_FORGE_* > invoke.yaml > defaults, then the mirror profile applied to that result.

    ``writes``: this command will run steps on the checkout (not a dry run, plan or inspection); it then
    holds the miniature's private copy, when that is the checkout, until the task ends (core/checkout_lock.py).
    ``layers``: what invoke's configuration layers hold (vllm_forge/cli/_invoke.py ``config_layers``)."""
    rc = _anchor_project_paths(resolve_config(layers, flags), repo_root)
    if rc.config.vllm_src:
        rc = _private_copy_if_ours(rc, repo_root, writes=writes)
    if rc.config.standin:
        rc = _on_standins(rc)
    profile = mirrors.load_mirror(rc.config.mirror, mirrors.user_mirrors_from(layers))
    facts = checkouts.read_checkout(Path(rc.config.source_dir), managed=not rc.config.vllm_src)
    cuda = asked_cuda(rc)
    recipe, error, applied = _recipe_and_mirror(rc, profile, facts, cuda)
    archs, arch_error = _parse_archs(rc.config.arch)
    return Settings(rc, applied, facts, repo_root, profile, recipe, error, cuda=cuda, parsed_archs=archs,
                    arch_error=arch_error)


def asked_cuda(rc: ResolvedConfig) -> CudaRelease | None:
    """--cuda (or its config/env layer) as a release; None when not set. A value no CUDA has fails here."""
    return None if rc.is_default("cuda") or not rc.config.cuda else CudaRelease.parse(rc.config.cuda)


def _parse_archs(spec: str) -> tuple[list[CudaArch] | None, ForgeError | None]:
    """--arch parsed once; an arch that cannot be parsed is kept as its error, for the tasks that build."""
    try:
        return archs_mod.parse_arch_list(spec), None
    except ForgeError as err:
        return None, err


def _recipe_and_mirror(rc: ResolvedConfig, profile: mirrors.MirrorProfile, facts: checkouts.CheckoutFacts,
                       cuda: CudaRelease | None):
    """The bake's recipe from what the checkout pins (vllm_forge/image/recipe.py), and the mirror profile applied to its
    images; a recipe that must be refused is kept as its error, for the tasks that bake."""
    cfg = rc.config
    tree = None
    if facts.exists:
        from vllm_forge.source.vllm_tree import inspect_tree

        try:
            tree = inspect_tree(Path(cfg.source_dir))
        except ForgeError:
            tree = None
    recipe, error = None, None
    try:
        recipe = choose_recipe(
            torch_pin=tree.torch_pin if tree else None, pin_source=tree.torch_pin_source if tree else "",
            tree_cuda=tree.cuda_pin if tree else None, version=tree.version if tree else None,
            cuda=cuda, base=cfg.base, base_image=cfg.base_image,
            runtime_image=cfg.runtime_image, standin=cfg.standin)
    except ForgeError as err:
        error = err
    applied = mirrors.apply_mirror(profile, cfg, recipe, cuda=cuda)
    if cfg.standin:  # local images: no registry mirror applies to them
        applied = replace(applied, base_image=cfg.base_image, runtime_image=cfg.runtime_image)
    return recipe, error, applied


# Directories a setting names. A relative one typed on the command line or in the environment is the user's,
# relative to where they are; one from the defaults or invoke.yaml is the project's, relative to tasks.py.
PATH_SETTINGS = ("dist_dir", "checkout_dir", "vllm_src")
PROJECT_SOURCES = ("default", "invoke.yaml", "user invoke file", "system invoke file")


def _anchor_project_paths(rc: ResolvedConfig, repo_root: Path) -> ResolvedConfig:
    """``invoke check-size`` from docs/ reads this project's dist/, not docs/dist."""
    anchored = {}
    for name in PATH_SETTINGS:
        value = getattr(rc.config, name)
        source = rc.source(name)
        if value and not Path(value).expanduser().is_absolute() and source in PROJECT_SOURCES:
            anchored[name] = str(repo_root / value)
    return ResolvedConfig(replace(rc.config, **anchored), rc.sources) if anchored else rc


def _private_copy_if_ours(rc: ResolvedConfig, repo_root: Path, *, writes: bool) -> ResolvedConfig:
    """A --vllm-src inside this repository (the embedded miniature) is worked on as a private copy under
    build/, so use-existing-torch and the build never edit this repository's tracked files. The copy's own
    build/ (its CMake build dir) is kept from one run to the next, so a second build resumes the first. The copy
    is refreshed only by a writer holding it, or by a reader while no writer does (vllm_forge/core/checkout_lock.py)."""
    src = Path(rc.config.vllm_src).expanduser().resolve()
    root = repo_root.resolve()
    if root not in src.parents or (root / "build") in (src, *src.parents):
        return rc
    from vllm_forge.core import checkout_lock
    from vllm_forge.core.tree_sync import sync_tree

    copy = root / "build" / "private-src" / src.relative_to(root).as_posix().replace("/", "--")
    stale = checkout_lock.refresh_copy(src, copy, functools.partial(sync_tree, keep=("build",)), writes=writes)
    sources = {**rc.sources,
               "vllm_src": f"private copy of {src.relative_to(root)}" + (f" ({stale})" if stale else "")}
    return ResolvedConfig(replace(rc.config, vllm_src=str(copy)), sources)


def _on_standins(rc: ResolvedConfig) -> ResolvedConfig:
    """``standin``: the bases become the TEST-ONLY stand-ins and CUDA the one their compiler has."""
    from vllm_forge.image.standin_images import BUILD_STANDIN, RUNTIME_STANDIN, STANDIN_CUDA

    cfg = rc.config
    for name in ("base_image", "runtime_image"):
        if getattr(cfg, name) and not rc.is_default(name):
            raise ForgeError(f"--standin and {name} ({getattr(cfg, name)}) both name the bases",
                             f"drop one of them (the stand-ins are {BUILD_STANDIN} and {RUNTIME_STANDIN})")
    asked = asked_cuda(rc)
    if asked is not None and not asked.same_minor(STANDIN_CUDA):
        raise ForgeError(f"the stand-in bases build with CUDA {STANDIN_CUDA}, not {cfg.cuda}",
                         f"drop --cuda (or pass --cuda {STANDIN_CUDA}) with --standin")
    config = replace(cfg, base_image=BUILD_STANDIN, runtime_image=RUNTIME_STANDIN, cuda=str(STANDIN_CUDA))
    sources = {**rc.sources, "base_image": "standin", "runtime_image": "standin", "cuda": "standin"}
    return ResolvedConfig(config, sources)


# --- options a task adds to the configuration -------------------------------------------------------------


@dataclass
class BakeOptions:
    target: str = "runtime"
    tag: str = ""
    dockerfile: str = "forge"
    docker: str | None = None
    ca_bundle: Path | None = None  # None: this host's pip CA bundle, when it has one
    netrc: Path | None = None
    index_url: str = ""  # "": the mirror profile's
    extra_index_url: str = ""
    pytorch_index: str = ""  # "": the mirror profile's
    platform: str = ""
    push: bool = False
    builder: str = ""  # "": the configured one (forge.builder)
    cache_from: list[str] = field(default_factory=list)
    cache_to: list[str] = field(default_factory=list)
    no_cache: bool = False
    build_args: dict[str, str] = field(default_factory=dict)
    limit_mb: float = 0.0
    audit: bool = True
    jit: bool = True  # False: --no-jit
    context_dir: Path | None = None  # None: build/bake of this repo


@dataclass
class Options:
    dry_run: bool = False
    force: bool = False  # clone: stash local changes
    reuse_checkout: bool = False  # clone: a checkout already at the ref is used as is (no fetch)
    audit: bool = True  # build-wheel
    reuse: bool = True  # build-wheel: reuse the kernels of a wheel with the same kernel key (--no-reuse: off)
    targets: list[str] = field(default_factory=list)  # build-wheel --targets: CMake extension targets (empty: all)
    install_build_deps: bool = False  # build-wheel --install-build-deps: the install-build-deps step runs first
    patches: list[Path] = field(default_factory=list)  # the patch step: forge.patches, then each --patch
    wheel: Path | None = None  # check-size: this wheel (default: what build-wheel published, else dist/)
    limit_mb: float = 0.0  # check-size
    image: str = ""  # check-size-image / inspect: this image (default: what bake made)
    budget_gb: float = 0.0
    bake: BakeOptions = field(default_factory=BakeOptions)
    serve: Any = None  # a serve.ServeRequest
    serve_timeout_s: float = 600.0
    smoke: bool = True


# --- steps ----------------------------------------------------------------------------------------------


@dataclass
class RunState:
    """What earlier steps made, for the later ones; and each step's time."""

    commit: str = ""
    wheel: Path | None = None
    image: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Step:
    name: str
    commands: list[Command] = field(default_factory=list)  # the external commands, exactly as they run
    notes: list[str] = field(default_factory=list)  # what the step does besides them
    execute: Callable[[RunState, Callable[[str], None] | None], Any] | None = None
    pending: str = ""  # planned from the configuration only: planned again before it runs
    error: ForgeError | None = None  # it cannot run as things stand (plan shows it, a run stops on it)
    replan: bool = False  # planned now, and again right before it runs (an earlier step changes its inputs)
    plan: Any = None  # the module-level plan object (BuildPlan, BakePlan, ...)

    @property
    def title(self) -> str:
        return title_of(self.name)

    def lines(self) -> list[str]:
        """The step as printed: `# ` comment lines, then each exact command (secrets masked)."""
        out = [f"# {self.pending}"] if self.pending else []
        out += [f"# {note}" for note in self.notes]
        for command in self.commands:
            if command.why:
                out.append(f"# {command.why}")
            out.append(command.shell())
        return [mask_urls(line) for line in out]


class StepPending(Exception):
    """Planning needs the checkout, which an earlier step of this pipeline makes."""


def _needs_checkout(settings: Settings, what: str) -> None:
    if not settings.checkout.exists:
        raise StepPending(f"planned after clone: {what} is read from {settings.src} once it exists")


def _plan_clone(settings: Settings, options: Options) -> Step:
    cfg = settings.config
    if cfg.vllm_src:
        src = settings.src
        if not src.is_dir():
            raise ForgeError(f"--vllm-src {src} does not exist", "pass the path of an existing vLLM checkout")
        return Step("clone", notes=[f"use the existing checkout {src} as is (--vllm-src): nothing cloned"],
                    execute=lambda state, on_line: None)
    dest = settings.src
    url = settings.mirror.clone_url
    facts = settings.checkout
    if (options.reuse_checkout and facts.exists and facts.ref == cfg.vllm_ref
            and checkouts.same_repo(facts.repo, url)):
        return Step("clone", notes=[f"{dest} is already a checkout of {cfg.vllm_ref} ({facts.short}): reused"],
                    execute=lambda state, on_line: None)
    notes = [f"clone {url} @ {cfg.vllm_ref} into {dest}"]
    if url != cfg.vllm_repo:
        notes.append(f"through mirror {settings.mirror.profile.name}'s GitHub proxy (from {cfg.vllm_repo})")
    try:
        commands = checkouts.plan_clone(url, cfg.vllm_ref, dest, force=options.force)
    except checkouts.RemoteUnreachable as err:
        if not options.dry_run:
            raise
        # The real run asks the remote what the ref is (branch, tag or commit) before it clones.
        notes.append(f"the remote could not be asked now ({err.problem}); when this runs, `git ls-remote` "
                     f"decides whether {cfg.vllm_ref} is a branch (origin/REF), a tag (tags/REF) or a commit")
        commands = checkouts.plan_clone(url, cfg.vllm_ref, dest, force=options.force, target=cfg.vllm_ref)

    def execute(state: RunState, on_line) -> str:
        state.commit = checkouts.run_clone(commands, dest, on_line=on_line)
        settings.reread_checkout()
        return state.commit

    return Step("clone", commands, notes, execute)


def _plan_patch(settings: Settings, options: Options) -> Step:
    from vllm_forge.source import patches

    src = settings.src
    # Read and classified now (a missing or non-diff file fails before anything runs); applied all or nothing.
    notes = [*patches.plan_lines(src, options.patches),
             "all or nothing: a patch that does not apply leaves the checkout as it was"]
    return Step("patch", [], notes, lambda state, on_line: patches.apply_patches(src, options.patches,
                                                                                on_line=on_line))


def with_patches(names: list[str], options: Options) -> list[str]:
    """The patch step, after the clone and before use-existing-torch, when there are patches to apply."""
    if not options.patches or "patch" in names:
        return names
    at = names.index("clone") + 1 if "clone" in names else 0
    return [*names[:at], "patch", *names[at:]]


def _plan_use_existing_torch(settings: Settings, options: Options) -> Step:
    _needs_checkout(settings, "where this vLLM version keeps use_existing_torch.py")
    src = settings.src
    commands = checkouts.plan_use_existing_torch(src)
    notes = ["then check that no torch pin is left in the files that script cleans"]
    return Step("use-existing-torch", commands, notes,
                lambda state, on_line: checkouts.run_use_existing_torch(commands, src, on_line=on_line))


def _build_request(settings: Settings, options: Options | None = None):
    from vllm_forge.build import build_wheel

    cfg = settings.config
    return build_wheel.BuildRequest(
        src=settings.src, dist_dir=Path(cfg.dist_dir), archs=settings.archs,
        # An explicit --cuda must match the local nvcc; the default one only names a bake target.
        cuda=settings.cuda,
        max_jobs=cfg.max_jobs, nvcc_threads=cfg.nvcc_threads, mem_per_job_gb=cfg.mem_per_job_gb,
        build_type=cfg.build_type, cmake_args=cfg.cmake_args, compile_cache=cfg.compile_cache,
        cache_dir=Path(cfg.cache_dir),
        log_dir=settings.repo_root / "build" / "logs", shared_cache=build_wheel.SharedCache.from_config(cfg),
        extra_env=settings.mirror.env, reuse=options.reuse if options else True,
        patches=list(options.patches) if options else [],
        targets=list(options.targets) if options else [],
        install_build_deps=options.install_build_deps if options else False,
        dist=build_wheel.DistSettings.from_config(cfg),
    )


def _plan_build_wheel(settings: Settings, options: Options) -> Step:
    from vllm_forge.build import build_wheel

    cfg = settings.config
    archs = settings.archs
    if not settings.checkout.exists:
        raise StepPending(f"planned after clone: the build of {', '.join(a.sm for a in archs)} "
                          f"(TORCH_CUDA_ARCH_LIST={archs_mod.torch_cuda_arch_list(archs)}) reads its knobs and "
                          f"version from {settings.src} once it exists")
    plan = build_wheel.plan_build(_build_request(settings, options), check_tools=not options.dry_run, preflight=True)
    notes = [f"archs {', '.join(a.sm for a in plan.archs)}, compile cache {plan.compile_cache}", *plan.notes,
             f"build into the private directory {plan.staging}, "
             + ("audit the wheel's kernels for those archs, " if options.audit else "")
             + f"then publish it to {Path(cfg.dist_dir)} with one rename"]

    def execute(state: RunState, on_line) -> Path:
        state.wheel = build_wheel.run_build(plan, on_line=on_line, audit=options.audit)
        return state.wheel

    step = Step("build-wheel", plan.commands, notes, execute, plan=plan)
    if options.install_build_deps and plan.preflight and plan.preflight.unmet:
        step.replan = True
        notes.insert(0, "planned again after install-build-deps, with the requirements it installed")
    return step


def _plan_install_build_deps(settings: Settings, options: Options) -> Step:
    """pip installs the checkout's unmet build requirements into the Python that builds (torch never)."""
    from vllm_forge.build import build_deps, build_wheel

    _needs_checkout(settings, "the build requirements of this vLLM version")
    plan = build_wheel.plan_build(_build_request(settings, options), check_tools=False, preflight=True)
    install = build_deps.plan_install(plan.preflight, python=plan.request.python, index_url=settings.mirror.pypi_index,
                                      constraints=settings.repo_root / "build" / "build-deps-constraints.txt",
                                      env=settings.mirror.env)
    if install is None:
        return Step("install-build-deps", notes=["every build requirement is met: nothing to install"],
                    execute=lambda state, on_line: [])
    return Step("install-build-deps", [install.command], install.notes,
                lambda state, on_line: build_deps.run_install(install, on_line=on_line), plan=install)


def wheel_limit(settings: Settings, limit_mb: float = 0.0) -> float:
    """The flag's limit, else the configured one, else the checkout's vLLM's own, else vLLM's 400 MB."""
    from vllm_forge.build.wheel_size import DEFAULT_LIMIT_MB

    if limit_mb:
        return limit_mb
    if settings.config.wheel_limit_mb:
        return settings.config.wheel_limit_mb
    if not settings.checkout.exists:
        return DEFAULT_LIMIT_MB
    from vllm_forge.source.vllm_tree import inspect_tree

    try:
        return inspect_tree(settings.src).wheel_limit_mb(DEFAULT_LIMIT_MB)
    except ForgeError:
        return DEFAULT_LIMIT_MB


def _plan_check_size(settings: Settings, options: Options, names: tuple[str, ...]) -> Step:
    from vllm_forge.build.wheel_size import check_wheel_size

    limit = wheel_limit(settings, options.limit_mb)
    which = (str(options.wheel) if options.wheel else "the wheel build-wheel publishes" if "build-wheel" in names
             else f"the newest wheel in {settings.config.dist_dir}")
    notes = [f"read {which}: its size against {limit:g} MB, the largest members when over"]

    def execute(state: RunState, on_line):
        path = options.wheel or state.wheel or Path(settings.config.dist_dir)
        return check_wheel_size(Path(path), limit)

    return Step("check-size", [], notes, execute)


def bake_request(settings: Settings, options: Options):
    """The BakeRequest of this command line: config, mirror and checkout facts, once."""
    from vllm_forge.core.farm_settings import DistSettings
    from vllm_forge.image.request import BakeRequest

    cfg, bake, applied = settings.config, options.bake, settings.mirror
    recipe = settings.image_recipe(bake.dockerfile)
    return BakeRequest(
        src=settings.src, archs=settings.archs, cuda=settings.image_cuda(bake.dockerfile),
        cuda_explicit=not settings.rc.is_default("cuda"),
        base_image=applied.base_image, runtime_image=applied.runtime_image, target=bake.target, tag=bake.tag,
        recipe=recipe,
        dockerfile=bake.dockerfile, max_jobs=cfg.max_jobs, nvcc_threads=cfg.nvcc_threads,
        build_type=cfg.build_type, cmake_args=cfg.cmake_args, compile_cache=cfg.compile_cache,
        wheel_limit_mb=bake.limit_mb or cfg.wheel_limit_mb, audit=bake.audit,
        index_url=bake.index_url or applied.pypi_index, extra_index_url=bake.extra_index_url,
        pytorch_index_base_url=bake.pytorch_index or applied.pytorch_index,
        ca_bundle=bake.ca_bundle, netrc=bake.netrc, dist_dir=Path(cfg.dist_dir),
        context_dir=bake.context_dir or settings.repo_root / "build" / "bake",
        checkout=settings.checkout, planned_repo=applied.clone_url if not cfg.vllm_src else "",
        planned_ref=cfg.vllm_ref if not cfg.vllm_src else "local", mirror=applied.profile.name,
        registry_cache=cfg.registry_cache, platform=bake.platform, push=bake.push,
        builder=bake.builder or cfg.builder, cache_from=list(bake.cache_from), cache_to=list(bake.cache_to),
        no_cache=bake.no_cache, build_args=dict(bake.build_args), apt_mirror=applied.apt_mirror,
        deps_cache=Path(cfg.cache_dir).expanduser(), jit=bake.jit, non_root=cfg.non_root,
        dist=DistSettings.from_config(cfg),
    )


def _plan_bake(settings: Settings, options: Options) -> Step:
    from vllm_forge.image import remote_build
    from vllm_forge.image.bake import run_bake
    from vllm_forge.image.bake_plan import plan_bake
    from vllm_forge.image.bases import STANDIN_NOTE, check_base_images, missing_bases_error
    from vllm_forge.image.docker_client import check_engine, find_docker
    from vllm_forge.image.labels import LABEL_PREFIX
    from vllm_forge.image.request import default_ca_bundle

    if options.bake.dockerfile != "forge":
        _needs_checkout(settings, f"the Dockerfile ({options.bake.dockerfile})")
    request = bake_request(settings, options)
    notes = []
    if request.ca_bundle is None:
        ca_path, origin = default_ca_bundle()
        if ca_path:
            request.ca_bundle = ca_path
            notes.append(f"CA bundle {ca_path} (from {origin}) goes in as BuildKit secret ca_bundle")
    client = find_docker(options.bake.docker, dry_run=options.dry_run)
    plan = plan_bake(request, client)
    if request.registry_cache:
        notes += remote_build.plan_lines(request.builder, request.registry_cache)[1:]
    facts = settings.checkout
    cfg = settings.config
    if facts.exists and facts.managed and facts.ref not in ("local", cfg.vllm_ref) and not settings.rc.is_default(
            "vllm_ref"):
        notes.append(f"{settings.src} is at {facts.ref}, not {cfg.vllm_ref}: baked as it is "
                     f"(`invoke clone --ref {cfg.vllm_ref}` moves it)")
    lines = plan.lines()
    notes += [line[2:] for line in lines if line.startswith("# ")]
    standin = settings.config.standin
    if standin:
        notes.insert(0, STANDIN_NOTE + " (built by `python -m vllm_forge.image.standin_images` when missing)")
    bases = [b for b in (plan.labels.get(f"{LABEL_PREFIX}.build-base", ""),
                         plan.labels.get(f"{LABEL_PREFIX}.runtime-base", "")) if b and "$" not in b]
    if bases and not standin:
        notes.append(f"first check that {' and '.join(bases)} are here or in their registry")

    def execute(state: RunState, on_line):
        check_engine(client.path)
        if standin:
            from vllm_forge.image.standin_images import ensure_standins

            ensure_standins(client.path, log=on_line or (lambda line: None))
        else:
            missing = check_base_images(client.path, *(bases + ["", ""])[:2])
            if missing:
                raise missing_bases_error(missing, mirror=settings.mirror.profile.name)
        log_path = settings.repo_root / "build" / "logs" / f"bake-{time.strftime('%Y%m%d-%H%M%S')}.log"
        result = run_bake(plan, on_line=on_line, log_path=log_path)
        result.log_path = log_path
        state.image = result.image
        state.wheel = next(iter(result.wheels), state.wheel)
        return result

    return Step("bake", plan.commands, notes, execute, plan=plan)


def _image_for(options: Options, steps: list[Step]) -> str:
    if options.image:
        return options.image
    bake = next((s for s in steps if s.name == "bake" and s.plan is not None), None)
    return bake.plan.image if bake else ""


def _plan_check_size_image(settings: Settings, options: Options, steps: list[Step]) -> Step:
    from vllm_forge.image.docker_client import check_engine, default_docker
    from vllm_forge.image.inspection import image_size_breakdown

    image = _image_for(options, steps)
    if not image:
        raise ForgeError("check-size --image needs an image", "pass --image TAG, or bake one in the same chain")
    docker = options.bake.docker or default_docker()
    budget = f", against the budget of {options.budget_gb:g} GB" if options.budget_gb else ""
    notes = [f"read {image}'s size, its runtime base's size and its largest layers "
             f"({docker} image inspect, {docker} history){budget}",
             "split the size over the base into the JIT toolchain, torch and its CUDA wheels, vLLM and its other "
             f"requirements, and the rest (the Python distributions of both: {docker} run --network none ... python3)"]

    def execute(state: RunState, on_line):
        check_engine(docker)
        return image_size_breakdown(docker, state.image or image, budget_gb=options.budget_gb)

    return Step("check-size-image", [], notes, execute)


def _plan_inspect(settings: Settings, options: Options, steps: list[Step]) -> Step:
    from vllm_forge.image.docker_client import default_docker
    from vllm_forge.image.inspection import inspect_image

    image = _image_for(options, steps)
    if not image:
        raise ForgeError("inspect needs an image", "pass the image tag, or bake one in the same chain")
    docker = options.bake.docker or default_docker()
    return Step("inspect", [], [f"read {image}'s labels ({docker} image inspect)"],
                lambda state, on_line: inspect_image(docker, state.image or image))


def _plan_serve(settings: Settings, options: Options, steps: list[Step]) -> Step:
    from vllm_forge.image.docker_client import check_engine, default_docker
    from vllm_forge.serve import serve as serving

    request = options.serve
    if request is None:
        raise ForgeError("serve needs a model", "pass --model MODEL")
    if not request.image and not request.local:
        request = replace(request, image=_image_for(options, steps))
    docker = options.bake.docker or default_docker()
    command = serving.plan_serve(request, docker)
    if not options.dry_run:  # refused before anything is printed as if it would run
        serving.check_port_free(request.host, request.port)
    notes = [f"then wait up to {options.serve_timeout_s:g} s for {serving.base_url(request)}/health"
             + (", and smoke-test /v1/models and a chat completion" if options.smoke else "")]

    def execute(state: RunState, on_line):
        if not request.local:
            check_engine(docker)
        return serving.serve(request, docker=docker, timeout_s=options.serve_timeout_s, smoke=options.smoke,
                             command=command)

    return Step("serve", [command], notes, execute)


def plan_step(name: str, settings: Settings, options: Options, names: tuple[str, ...], done: list[Step]) -> Step:
    return REGISTRY[name].plan(settings, options, names, done)


# --- the pipeline -------------------------------------------------------------------------------------------


@dataclass
class Pipeline:
    settings: Settings
    options: Options
    names: tuple[str, ...]
    steps: list[Step]

    @property
    def ready(self) -> bool:
        return all(step.error is None for step in self.steps)

    def run(self, *, on_step: Callable[[Step], None] | None = None,
            on_line: Callable[[str], None] | None = None,
            on_done: Callable[[Step, Any, float], None] | None = None, state: RunState | None = None) -> RunState:
        """Run the steps in order; a pending step is planned again (now from the real checkout) first. A
        pipeline that changes its checkout holds that checkout's writer lock while it runs. ``state``: the
        caller's, which then holds what the finished steps made even when a later one fails."""
        from vllm_forge.core import checkout_lock

        writes = any(name in checkout_lock.WRITER_STEPS for name in self.names)
        with checkout_lock.holding(self.settings.src) if writes else contextlib.nullcontext():
            return self._run(on_step, on_line, on_done, state if state is not None else RunState())

    def _run(self, on_step, on_line, on_done, state: RunState) -> RunState:
        for index, name in enumerate(self.names):
            step = self.steps[index]
            if step.pending or step.replan:  # an earlier step (clone, install-build-deps) changed what it reads
                step = self.steps[index] = plan_step(name, self.settings, self.options, self.names,
                                                     self.steps[:index])
            if step.error is not None:
                raise step.error
            if on_step:
                on_step(step)
            started = time.monotonic()
            result = step.execute(state, on_line) if step.execute else None
            state.seconds[name] = time.monotonic() - started
            state.results[name] = result
            if on_done:
                on_done(step, result, state.seconds[name])
        return state


def run_records(pipeline: Pipeline, state: RunState, error: BaseException | None = None) -> list[tuple[str, dict]]:
    """What a run leaves under build/reports (report/run_records.py), as (kind, data): the ``run`` itself (the
    resolved configuration and where each value came from, each step as printed, its time and outcome) and
    the reports its steps made (``build-times``, ``wheel-size``, ``image-size``)."""
    settings = pipeline.settings
    failed = False
    steps = []
    for step in pipeline.steps:
        if step.name in state.results:
            status = "done"
        elif error is not None and not failed:
            status, failed = ("interrupted" if isinstance(error, KeyboardInterrupt) else "failed"), True
        else:
            status = "not run"
        steps.append({"name": step.name, "title": step.title, "lines": step.lines(), "status": status,
                      "seconds": round(state.seconds[step.name], 3) if step.name in state.seconds else None})
    outcome = "ok" if error is None else ("interrupted" if isinstance(error, KeyboardInterrupt)
                                          else f"failed: {mask_urls(str(error))}")
    config = [{"name": name, "value": mask_urls(str(value)), "source": settings.rc.source(name)}
              for name, value in settings.config.as_dict().items()]
    run = {"steps_asked": list(pipeline.names), "outcome": outcome, "config": config, "steps": steps,
           "total_seconds": round(sum(state.seconds.values()), 3), "wheel": str(state.wheel) if state.wheel else None,
           "image": state.image or None}
    records: list[tuple[str, dict]] = [("run", run)]
    build = next((s for s in pipeline.steps if s.name == "build-wheel" and s.plan is not None), None)
    if build is not None and getattr(build.plan, "build_times", None):
        records.append(("build-times", {**build.plan.build_times, "archs_asked": [a.sm for a in build.plan.archs],
                                        "wheel": str(state.wheel) if state.wheel else None}))
    if state.results.get("check-size") is not None:
        records.append(("wheel-size", state.results["check-size"].to_dict()))
    if state.results.get("check-size-image") is not None:
        records.append(("image-size", state.results["check-size-image"].to_dict()))
    return records


def preflight(settings: Settings, names: tuple[str, ...], options: Options) -> None:
    """What the configuration alone can refuse, before any step asks a remote or reads a checkout: the arch
    list against the CUDA that builds it, and compile jobs that cannot fit in memory."""
    cfg = settings.config
    if "bake" in names:
        archs_mod.check_archs_for_cuda(settings.archs, settings.image_cuda(options.bake.dockerfile))  # the image's
    if "build-wheel" in names:
        archs = settings.archs
        if settings.cuda is not None:
            archs_mod.check_archs_for_cuda(archs, settings.cuda)
        from vllm_forge.gpu.parallelism import choose_parallelism

        choose_parallelism(max_jobs=cfg.max_jobs, nvcc_threads=cfg.nvcc_threads, n_archs=len(archs),
                           mem_per_job_gb=cfg.mem_per_job_gb)


def build_pipeline(settings: Settings, names: tuple[str, ...] | list[str], options: Options | None = None, *,
                   lenient: bool = False) -> Pipeline:
    """Plan every step of ``names`` now. A step whose planning fails stops everything (a preflight: nothing
    has run yet), unless ``lenient`` (``invoke plan``), which keeps the error on the step to show it."""
    options = options or Options()
    names = tuple(names)
    unknown = [name for name in names if name not in STEPS]
    if unknown:
        raise KeyError(unknown)  # a programming error in a task, not a user error
    if not lenient:
        preflight(settings, names, options)
    steps: list[Step] = []
    for name in names:
        earlier = names[: names.index(name)]
        try:
            step = plan_step(name, settings, options, names, steps)
        except StepPending as pending:
            if "clone" not in earlier:
                if lenient:
                    step = Step(name, error=ForgeError(f"{settings.src} is not a checkout yet",
                                                       "run `invoke clone` first"))
                    steps.append(step)
                    continue
                raise ForgeError(f"{settings.src} is not a vLLM checkout (it does not exist)",
                                 "run `invoke clone` first, or pass --vllm-src PATH to an existing checkout") from None
            step = Step(name, pending=str(pending))
        except ForgeError as err:
            if not lenient:
                raise
            step = Step(name, error=err)
        steps.append(step)
    return Pipeline(settings, options, names, steps)


def needs_clone(settings: Settings) -> bool:
    """A task that builds, on a machine without the checkout, clones it first (`--vllm-src` never is)."""
    return not settings.checkout.exists and not settings.config.vllm_src


# --- the summary a chain ends with ----------------------------------------------------------------------------


def _built_cuda(pipeline: Pipeline) -> str:
    """The CUDA that built: the nvcc of a local build, the image's for a bake."""
    step = next((s for s in pipeline.steps if s.name in ("build-wheel", "bake") and s.plan is not None), None)
    if step is not None and step.name == "build-wheel":
        return str(step.plan.toolchain.version)
    if step is not None:
        return step.plan.request.cuda.minor_str
    return str(pipeline.settings.recipe.cuda) if pipeline.settings.recipe else "?"


def _built_torch(pipeline: Pipeline) -> str:
    step = next((s for s in pipeline.steps if s.name in ("build-wheel", "bake") and s.plan is not None), None)
    if step is None:
        return ""
    if step.name == "build-wheel":
        return step.plan.preflight.torch if step.plan.preflight else ""
    recipe = step.plan.request.recipe
    return (f"built against {recipe.torch_requirement} from the PyTorch index ({recipe.torch_index_suffix})"
            if recipe and recipe.torch_requirement else "built against the base image's own torch")


def dist_rows(plan) -> list[tuple[str, str]]:
    """(what, value) rows for a build with a farm configured: where its compiles ran (sccache's own counters),
    and why the farm was not used when it was not; none for a build without one."""
    if plan is None or getattr(plan, "dist", None) is None:
        return []
    rows = [] if plan.dist.probe.on else [("farm", plan.dist.probe.line())]
    report = plan.cache_report
    if report is not None and report.distributed:
        rows.append(("compiles", report.split_line()))
    return rows


def summary_rows(pipeline: Pipeline, state: RunState) -> list[tuple[str, str]]:
    """(what, value) rows: image, size over base, archs, vLLM ref and commit, time per step."""
    settings = pipeline.settings
    facts = settings.checkout
    archs = settings.archs
    rows = []
    if state.image:
        rows.append(("image", state.image))
    size = state.results.get("check-size-image")
    if size is not None:
        over = (f", {size.over_base / 1e9:.2f} GB over its base {size.base}" if size.over_base is not None else "")
        rows.append(("size", f"{size.size / 1e9:.2f} GB{over}"))
    if state.wheel:
        rows.append(("wheel", str(state.wheel)))
    rows.append(("archs", ", ".join(a.sm for a in archs) + f" (CUDA {_built_cuda(pipeline)})"))
    torch = _built_torch(pipeline)
    if torch:
        rows.append(("torch", torch))
    rows.append(("vLLM", f"{mask_urls(facts.repo or str(settings.src))} @ {facts.ref or '-'} ({facts.short}"
                         f"{', dirty' if facts.dirty else ''})"))
    rows.append(("mirror", settings.mirror.profile.name))
    rows += dist_rows(next((step.plan for step in pipeline.steps if step.name == "build-wheel"), None))
    for name, seconds in state.seconds.items():
        rows.append((f"time: {title_of(name)}", f"{seconds:.1f} s"))
    rows.append(("time: total", f"{sum(state.seconds.values()):.1f} s"))
    return rows


# --- what a finished step says ------------------------------------------------------------------------------
# Plain data (text and a style word per part, tables as rows): vllm_forge/cli/render.py draws it with rich.

Part = str | tuple[str, str]  # text, or (text, style): "green", "dim", "yellow", "red", "bold red"


@dataclass(frozen=True)
class Said:
    """One line a step (or a task) says: its parts, each plain or styled."""

    parts: tuple[Part, ...]

    def text(self) -> str:
        return "".join(part if isinstance(part, str) else part[0] for part in self.parts)


@dataclass(frozen=True)
class Grid:
    """A table a step says: title, column headers, rows of plain cells."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def said(*parts: Part) -> Said:
    return Said(tuple(parts))


def timing_said(timing) -> list[Said]:
    """ninja's compile times of a build (said once, at its end: success, failure or Ctrl-C)."""
    lines = timing.lines()
    return [said(lines[0]), *(said((line, "dim") if line.startswith(" ") else line) for line in lines[1:])]


def _said_clone(step: Step, result, seconds: float) -> list:
    return [said(("checked out", "green"), f" {result[:12]} ", (f"({seconds:.1f}s)", "dim"))] if result else []


def _said_build_wheel(step: Step, result, seconds: float) -> list:
    from vllm_forge.build.compile_cache import cache_stats

    stats = cache_stats(step.plan.compile_cache)
    out: list = [said(("built", "green"), f" {result} ", (f"({seconds:.1f}s{', ' + stats if stats else ''})", "dim"))]
    out += [said(("  " + line, "yellow")) for what, line in dist_rows(step.plan) if what == "farm"]
    if step.plan.reuse:
        out.append(said(f"  {step.plan.reuse.line()}"))
    return out + (timing_said(step.plan.timing) if step.plan.timing is not None else [])


def wheel_size_said(report) -> list:
    out: list = [said((f"{report.wheel.name}: {report.size_mb:.1f} MB", "green" if report.ok else "red"),
                      f" (limit {report.limit_mb:g} MB)")]
    if not report.ok:
        out.append(Grid("largest members", ("member", "compressed MB", "MB"),
                        tuple((name, f"{packed:.1f}", f"{size:.1f}") for name, packed, size in report.largest)))
    return out


def _said_bake(step: Step, result, seconds: float) -> list:
    cached = f", {result.cached_steps}/{result.total_steps} steps cached" if result.total_steps else ""
    out: list = []
    if result.image:
        out.append(said(("baked", "green"), f" {result.image} ({result.image_id[7:19]}) ",
                        (f"({seconds:.1f}s{cached}; log {result.log_path})", "dim")))
    out += [said(("wheel", "green"), f" {wheel}") for wheel in result.wheels]
    return out + [said(f"  {line}") for line in result.farm]  # the build stage's own words about the farm


def image_size_said(report) -> list:
    from vllm_forge.image.inspection import GB

    over = (f", {report.over_base / GB:.2f} GB over its base {report.base}" if report.over_base is not None
            else (f" (base {report.base} is not present locally)" if report.base else ""))
    budget = f" (budget {report.budget_gb:g} GB)" if report.budget_gb else ""
    return [said((f"{report.image}: {report.size / GB:.2f} GB", "green" if report.ok else "red"), over + budget),
            Grid(f"over the base {report.base or '(unknown)'}", ("MB", "part"),
                 tuple((f"{size / 1e6:.1f}", name) for name, size in report.parts.items())),
            Grid("largest layers", ("MB", "instruction"),
                 tuple((f"{layer.size / 1e6:.1f}", layer.instruction[:140]) for layer in report.layers))]


def labels_said(info: dict) -> list:
    """An image's labels, who it runs as and its JIT readiness (collected inside the image: image/jit.py)."""
    from vllm_forge.image import jit
    from vllm_forge.image.docker_client import default_docker
    from vllm_forge.image.inspection import GB

    title = f"{', '.join(info['tags']) or info['id'][7:19]} ({info['size'] / GB:.2f} GB, {info['id'][7:19]})"
    out: list = [Grid(title, ("label", "value"), tuple(sorted(info["labels"].items()))),
                 said(f"runs as: {info['user'] or 'root'} (image USER)")]
    if not info["labels"]:
        out.append(said(("no labels: not an image baked by vllm-forge", "yellow")))
    ready, line = jit.jit_summary(jit.image_jit_facts(default_docker(), info["id"]),
                                  info["labels"].get("org.vllm-forge.sm", "").split(","))
    return out + [said(("JIT", "green" if ready else "yellow"), f" {line}")]


def _said_serve(step: Step, result, seconds: float) -> list:
    started, healthy, smoke = result
    out: list = [said(("healthy", "green"), f" after {healthy:.1f}s: {started.url}")]
    if smoke:
        out.append(said(f"  /v1/models: {', '.join(smoke.models)}; chat: {smoke.reply[:80]}"))
    return out


@dataclass(frozen=True)
class StepKind:
    """One step there is: how it is planned (the Step holds its commands and ``execute``), what it says when
    done, its title where that is not its name. Adding a step is one entry in ``REGISTRY``."""

    name: str
    plan: Callable[[Settings, Options, tuple[str, ...], list[Step]], Step]
    report: Callable[[Step, Any, float], list] = lambda step, result, seconds: []
    title: str = ""


# Every step there is, in pipeline order. A task or nox session selects the ones it needs.
REGISTRY: dict[str, StepKind] = {kind.name: kind for kind in (
    StepKind("clone", lambda s, o, names, done: _plan_clone(s, o), _said_clone),
    StepKind("patch", lambda s, o, names, done: _plan_patch(s, o), lambda step, result, seconds: [said(
        ("patches", "green"), ": " + (", ".join(f"{r.patch.name} {r.status}" for r in result) or "none"))]),
    StepKind("use-existing-torch", lambda s, o, names, done: _plan_use_existing_torch(s, o),
             lambda step, result, seconds: [said(("no torch pins left", "green"))]),
    StepKind("install-build-deps", lambda s, o, names, done: _plan_install_build_deps(s, o),
             lambda step, result, seconds: [said(("installed", "green"),
                                                 " " + (", ".join(result) if result else "nothing (all met)"))]),
    StepKind("build-wheel", lambda s, o, names, done: _plan_build_wheel(s, o), _said_build_wheel),
    StepKind("check-size", lambda s, o, names, done: _plan_check_size(s, o, names),
             lambda step, result, seconds: wheel_size_said(result)),
    StepKind("bake", lambda s, o, names, done: _plan_bake(s, o), _said_bake),
    StepKind("check-size-image", lambda s, o, names, done: _plan_check_size_image(s, o, done),
             lambda step, result, seconds: image_size_said(result), title="check-size --image"),
    StepKind("inspect", lambda s, o, names, done: _plan_inspect(s, o, done),
             lambda step, result, seconds: labels_said(result)),
    StepKind("serve", lambda s, o, names, done: _plan_serve(s, o, done), _said_serve),
)}
STEPS = tuple(REGISTRY)


def title_of(name: str) -> str:
    return REGISTRY[name].title or name if name in REGISTRY else name


def step_said(step: Step, result, seconds: float) -> list:
    """What a finished step says (``REGISTRY``'s report for it)."""
    return REGISTRY[step.name].report(step, result, seconds)
