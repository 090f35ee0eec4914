"""vllm-forge tasks: build vLLM for the GPU you name, bake a slim image, prove it runs.

Every task is thin: parse flags, resolve the BuildConfig, call a module in scripts/, print with rich.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from invoke import Collection, task
from invoke.exceptions import Exit
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scripts.errors import ForgeError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
REPO_ROOT = Path(__file__).resolve().parent


def _check_project_config() -> None:
    """invoke reads invoke.yaml after importing this file and dies with a YAML traceback on a
    typo; read it first so a broken file costs one line instead."""
    from invoke.vendor import yaml

    path = Path(__file__).parent / "invoke.yaml"  # where invoke looks: next to tasks.py as found
    if not path.exists():
        return
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        err_console.print(f"[bold red]error:[/] {path} is not valid YAML{where}: {problem}. "
                          "Fix: correct that line, or move the file away.", soft_wrap=True)
        sys.exit(2)
    if data is not None and not isinstance(data, dict) or not isinstance((data or {}).get("forge", {}), dict):
        err_console.print(f"[bold red]error:[/] {path} must be a mapping with a `forge:` section. "
                          "Fix: see the README's configuration example.", soft_wrap=True)
        sys.exit(2)


_check_project_config()


def _one_line_flag_errors() -> None:
    """invoke casts a flag to its default's type and lets a ValueError (`--port abc`) escape as a
    traceback; turn it into invoke's own ParseError, which it prints as one line and exits 1."""
    from invoke.exceptions import ParseError
    from invoke.parser import Argument

    original = Argument.set_value
    if getattr(original, "forge_wrapped", False):
        return

    def set_value(self, value, cast=True, _set=original):
        try:
            return _set(self, value, cast=cast)
        except ValueError:
            kind = {int: "a whole number", float: "a number"}.get(self.kind, getattr(self.kind, "__name__", "?"))
            flag = "--" + self.name.replace("_", "-")
            raise ParseError(f"error: {flag} needs {kind}, got {value!r}. Fix: pass e.g. {flag} "
                             f"{self.default if self.default not in (None, '') else 1}.") from None

    set_value.forge_wrapped = True
    Argument.set_value = set_value

    # `invoke audit --image IMG` has no PATH: invoke would refuse it for the missing positional
    # argument before the task could say "give either PATH or --image". Such a task gets "" instead.
    from invoke.parser.parser import ParseMachine

    complete = ParseMachine.complete_context

    def complete_context(self, _complete=complete):
        for arg in (self.context.positional_args if self.context else []):
            if arg.value is None and arg.name in _OPTIONAL_POSITIONAL.get(self.context.name, ()):
                arg.set_value("", cast=False)
        return _complete(self)

    ParseMachine.complete_context = complete_context

    # INVOKE_FORGE_MAX_JOBS=lots: invoke casts it to the default's type and raises a bare ValueError.
    from invoke.env import Environment
    from invoke.exceptions import Exit as InvokeExit

    path_set = Environment._path_set

    def env_path_set(self, key_path, value, _set=path_set):
        try:
            return _set(self, key_path, value)
        except ValueError:
            name = "_".join([self._prefix.rstrip("_"), *key_path]).upper()
            raise InvokeExit(f"error: {name} must be a number, got {value!r}. Fix: set it to a number "
                             f"(0 means automatic), or unset it.", code=2) from None

    Environment._path_set = env_path_set


_OPTIONAL_POSITIONAL = {"audit": ("path",), "nccl-diagnose": ("files",)}


_one_line_flag_errors()


_DISK_ERRORS = {
    errno.ENOSPC: "free space there, or point the output (--dist-dir, --checkout-dir) at a disk with room",
    errno.EDQUOT: "free space within your quota, or point the output at another disk",
    errno.EROFS: "point the output (--dist-dir, --checkout-dir) at a writable disk",
    errno.EACCES: "fix the permissions, or point the output (--dist-dir, --checkout-dir) at a directory you own",
    errno.ENOTDIR: "a part of that path is a file: point the output at a directory path",
    errno.EEXIST: "a file is in the way: point the output at a directory path, or move the file",
}


def _print_error(message: str) -> None:
    """One line on stderr, always: a multi-line message (a log tail) is folded into it."""
    from scripts.plan import mask_urls  # a repo URL with a token in it never reaches the terminal

    line = mask_urls(" | ".join(part.strip() for part in message.splitlines() if part.strip()))
    err_console.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _interrupt_on_termination() -> dict:
    """SIGTERM/SIGHUP (a closed terminal, a job scheduler) clean up like Ctrl-C: children started
    in their own sessions would otherwise outlive this process."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}


def _debugging() -> bool:
    # `invoke --debug` turns on root DEBUG logging; VLLM_FORGE_DEBUG=1 works for nox and CI too.
    return bool(os.environ.get("VLLM_FORGE_DEBUG")) or logging.getLogger().isEnabledFor(logging.DEBUG)


def _print_task_help(name: str, body, flag_help: dict, positional: list[str]) -> None:
    args = " ".join(p.upper() for p in positional)
    console.print(f"Usage: invoke {name} [--options] {args}\n\n  {escape(body.__doc__ or '')}\n\nOptions:")
    for flag, text in flag_help.items():
        shown = flag.upper() if flag in positional else "--" + flag.replace("_", "-")
        console.print(f"  {shown:<24} {escape(text)}", soft_wrap=True)


def forge_task(*task_args, **task_kwargs):
    """``@task`` whose user errors end as one line with the fix, and Ctrl-C as exit code 130."""

    def decorate(body):
        @functools.wraps(body)
        def run(ctx, *args, **kwargs):
            positional = task_kwargs.get("positional") or []
            if any(kwargs.get(name) in ("-h", "--help") for name in positional):
                # invoke hands `--help` after a task to its positional argument: answer it here.
                _print_task_help(task_kwargs.get("name") or body.__name__.replace("_", "-"), body,
                                 task_kwargs.get("help") or {}, positional)
                return None
            previous = _interrupt_on_termination()
            try:
                return body(ctx, *args, **kwargs)
            except ForgeError as err:
                if _debugging():
                    raise
                _print_error(str(err))
                raise Exit(code=err.exit_code) from None
            except OSError as err:  # a full or read-only disk anywhere: one line, not a traceback
                if _debugging() or err.errno not in _DISK_ERRORS:
                    raise
                where = f": {err.filename}" if err.filename else ""
                _print_error(f"{err.strerror}{where}. Fix: {_DISK_ERRORS[err.errno]}.")
                raise Exit(code=1) from None
            except KeyboardInterrupt:
                err_console.print("[yellow]interrupted[/]: child processes were stopped; "
                                  "outputs were left as they were")
                raise Exit(code=130) from None
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        return task(*task_args, **task_kwargs)(run)

    return decorate


# ---- core pipeline (config, clone, use-existing-torch, build-wheel, check-size, plan, demo) ----
from scripts import archs as arch_tables  # noqa: E402
from scripts import build_wheel as wheel_builder  # noqa: E402
from scripts import checkout as checkouts  # noqa: E402
from scripts import compat, mirrors  # noqa: E402
from scripts.config import DEFAULTS, ResolvedConfig, resolve_config  # noqa: E402
from scripts.plan import mask_urls  # noqa: E402
from scripts.wheel_size import DEFAULT_LIMIT_MB, check_wheel_size  # noqa: E402

FLAG_HELP = {
    "repo": "vLLM git repository URL (https, ssh, file:// or a local path)",
    "ref": "tag, branch or commit to check out, e.g. v0.11.0",
    "vllm_src": "use this existing vLLM checkout as is (no clone)",
    "checkout_dir": "where `clone` keeps its checkout (default build/vllm)",
    "arch": "target GPUs: 12.0, sm_120, 9.0a, 12.0+PTX, rtx5090, 'RTX 5090 D', h100, auto; several with ; or ,",
    "cuda": "CUDA toolkit version to build with, e.g. 12.8",
    "max_jobs": "parallel compile jobs (0: from cores and free memory)",
    "nvcc_threads": "nvcc --threads per job (0: automatic)",
    "mem_per_job_gb": "GiB one compile job may use, for the automatic MAX_JOBS",
    "build_type": "CMAKE_BUILD_TYPE: Release, RelWithDebInfo, Debug, MinSizeRel",
    "compile_cache": "auto, none, ccache or sccache",
    "dist_dir": "where wheels are published (default dist/)",
    "mirror": "mirror profile: global, cn, or one defined in invoke.yaml",
    "force": "stash local changes in the checkout instead of refusing",
    "dry_run": "print the exact commands and environment, run nothing",
    "limit_mb": "wheel size limit in MB (0: the checkout's vLLM limit, 400 when unknown)",
    "no_audit": "do not audit the built wheel's kernels for the requested archs",
    "skip_torch": "do not run use-existing-torch before building",
}


def _help(*names: str) -> dict[str, str]:
    return {name: FLAG_HELP[name] for name in names}


def _config(ctx, **flags) -> ResolvedConfig:
    return resolve_config(ctx.config, flags)


def _print_commands(title: str, commands) -> None:
    console.print(f"[bold]{title}[/]")
    for command in commands:
        if command.why:
            console.print(f"  [dim]# {escape(command.why)}[/]")
        console.print(f"  {escape(command.shell())}", soft_wrap=True)


def _mirror_profile(ctx, rc: ResolvedConfig) -> mirrors.MirrorProfile:
    """The mirror profile --mirror / forge.mirror names (built in, or from invoke.yaml's forge.mirrors)."""
    return mirrors.load_mirror(rc.config.mirror, mirrors.user_mirrors_from(ctx.config))


def _source_dir(rc: ResolvedConfig) -> Path:
    return Path(rc.config.source_dir)


def _build_request(rc: ResolvedConfig, src: Path) -> wheel_builder.BuildRequest:
    cfg = rc.config
    return wheel_builder.BuildRequest(
        src=src, dist_dir=Path(cfg.dist_dir), arch=cfg.arch,
        # An explicit --cuda must match the local nvcc; the default one only names a bake target.
        cuda=None if rc.is_default("cuda") else cfg.cuda,
        max_jobs=cfg.max_jobs, nvcc_threads=cfg.nvcc_threads, mem_per_job_gb=cfg.mem_per_job_gb,
        build_type=cfg.build_type, compile_cache=cfg.compile_cache, cache_dir=Path(cfg.cache_dir),
        log_dir=REPO_ROOT / "build" / "logs", shared_cache=wheel_builder.SharedCache.from_config(cfg),
    )


def _run_streaming(label: str, fn, *args, **kwargs):
    """Run a step with a live spinner showing its latest output line and the elapsed time."""
    start = time.monotonic()
    with console.status(f"{label}...") as status:
        def on_line(line: str) -> None:
            elapsed = time.monotonic() - start
            status.update(f"{label} [dim]{elapsed:5.0f}s[/] {escape(line[-100:])}")

        result = fn(*args, on_line=on_line, **kwargs)
    return result, time.monotonic() - start


def step_clone(rc: ResolvedConfig, *, force: bool, dry_run: bool,
               profile: mirrors.MirrorProfile | None = None) -> Path:
    cfg = rc.config
    repo = mirrors.rewrite_git_url(cfg.vllm_repo, profile) if profile else cfg.vllm_repo
    if cfg.vllm_src:
        src = Path(cfg.source_dir)
        if not src.is_dir():
            raise ForgeError(f"--vllm-src {src} does not exist", "pass the path of an existing vLLM checkout")
        console.print(f"using the existing checkout {src} as is")
        return src
    dest = Path(cfg.checkout_dir).expanduser()
    commands = checkouts.plan_clone(repo, cfg.vllm_ref, dest, force=force)
    if dry_run:
        _print_commands(f"clone {mask_urls(repo)} @ {cfg.vllm_ref}", commands)
        return dest
    sha, seconds = _run_streaming(f"cloning {cfg.vllm_ref}", checkouts.clone, repo, cfg.vllm_ref,
                                  dest, force=force)
    console.print(f"[green]checked out[/] {cfg.vllm_ref} ({sha[:12]}) in {dest} [dim]({seconds:.1f}s)[/]")
    return dest


def step_use_existing_torch(src: Path, *, dry_run: bool) -> None:
    commands = checkouts.plan_use_existing_torch(src)
    if dry_run:
        _print_commands("use-existing-torch", commands)
        return
    checkouts.use_existing_torch(src, on_line=lambda line: console.print(f"  [dim]{escape(line)}[/]", soft_wrap=True))
    console.print(f"[green]no torch pins left[/] in {src}")


def step_build_wheel(rc: ResolvedConfig, src: Path, *, dry_run: bool, audit: bool = True,
                     plan: wheel_builder.BuildPlan | None = None) -> Path | None:
    plan = plan or wheel_builder.plan_build(_build_request(rc, src), check_tools=not dry_run)
    archs = ", ".join(a.sm for a in plan.archs)
    console.print(f"build for [bold]{archs}[/], compile cache: {plan.compile_cache}")
    for note in plan.notes:
        console.print(f"  [dim]# {escape(note)}[/]", soft_wrap=True)
    if dry_run:
        _print_commands("build-wheel", plan.commands)
        return None
    wheel, seconds = _run_streaming("building the wheel", wheel_builder.run_build, plan, audit=audit)
    stats = wheel_builder.cache_stats(plan.compile_cache)
    console.print(f"[green]built[/] {wheel} [dim]({seconds:.1f}s{', ' + stats if stats else ''})[/]")
    return wheel


def _wheel_limit(rc: ResolvedConfig) -> float:
    """The configured limit, else the one the checkout's vLLM version enforces, else vLLM's 400 MB."""
    if rc.config.wheel_limit_mb:
        return rc.config.wheel_limit_mb
    from scripts.vllm_tree import inspect_tree

    try:
        return inspect_tree(_source_dir(rc)).wheel_limit_mb(DEFAULT_LIMIT_MB)
    except ForgeError:
        return DEFAULT_LIMIT_MB


def step_check_size(path: Path, limit_mb: float) -> bool:
    report = check_wheel_size(path, limit_mb)
    colour = "green" if report.ok else "red"
    console.print(f"[{colour}]{report.wheel.name}: {report.size_mb:.1f} MB[/] (limit {report.limit_mb:g} MB)")
    if not report.ok:
        table = Table("member", "compressed MB", "MB", title="largest members")
        for name, packed, size in report.largest:
            table.add_row(name, f"{packed:.1f}", f"{size:.1f}")
        console.print(table)
    return report.ok


@forge_task(help=_help("repo", "ref", "vllm_src", "checkout_dir", "force", "dry_run", "mirror"))
def clone(ctx, repo=None, ref=None, vllm_src=None, checkout_dir=None, force=False, dry_run=False, mirror=None):
    """Clone or update a vLLM checkout at a ref (partial clone; local changes are never lost)."""
    rc = _config(ctx, vllm_repo=repo, vllm_ref=ref, vllm_src=vllm_src, checkout_dir=checkout_dir, mirror=mirror)
    step_clone(rc, force=force, dry_run=dry_run, profile=_mirror_profile(ctx, rc))


@forge_task(name="use-existing-torch", help=_help("vllm_src", "checkout_dir", "dry_run"))
def use_existing_torch(ctx, vllm_src=None, checkout_dir=None, dry_run=False):
    """Run the checkout's own use_existing_torch.py and verify no torch pin is left."""
    rc = _config(ctx, vllm_src=vllm_src, checkout_dir=checkout_dir)
    step_use_existing_torch(_source_dir(rc), dry_run=dry_run)


_BUILD_FLAGS = ("arch", "cuda", "vllm_src", "checkout_dir", "dist_dir", "max_jobs", "nvcc_threads",
                "mem_per_job_gb", "build_type", "compile_cache", "dry_run", "no_audit", "skip_torch")


@forge_task(name="build-wheel", help=_help(*_BUILD_FLAGS))
def build_wheel(ctx, arch=None, cuda=None, vllm_src=None, checkout_dir=None, dist_dir=None, max_jobs=None,
                nvcc_threads=None, mem_per_job_gb=None, build_type=None, compile_cache=None, dry_run=False,
                no_audit=False, skip_torch=False):
    """Build the vLLM wheel for exactly the archs asked for; publish it to dist/ only if it audits clean."""
    rc = _config(ctx, arch=arch, cuda=cuda, vllm_src=vllm_src, checkout_dir=checkout_dir, dist_dir=dist_dir,
                 max_jobs=max_jobs, nvcc_threads=nvcc_threads, mem_per_job_gb=mem_per_job_gb,
                 build_type=build_type, compile_cache=compile_cache)
    src = _source_dir(rc)
    # Preflight first: a wrong arch/CUDA/jobs value fails here, before any file is touched. The same
    # plan then runs (use-existing-torch changes only pins, nothing the plan read).
    plan = wheel_builder.plan_build(_build_request(rc, src), check_tools=not dry_run)
    if not skip_torch:
        step_use_existing_torch(src, dry_run=dry_run)
    step_build_wheel(rc, src, dry_run=dry_run, audit=not no_audit, plan=plan)


@forge_task(name="check-size", help={**_help("dist_dir", "limit_mb"),
                                     "wheel": "the wheel to check (default: the newest in dist/)",
                                     "image": "check this image instead: total, size over its runtime base, "
                                              "largest layers",
                                     "budget": "with --image: fail when the image is larger than this many GB",
                                     "docker": "with --image: the docker client to use"})
def check_size(ctx, wheel=None, dist_dir=None, limit_mb=0.0, image=None, budget=0.0, docker=None):
    """Check the wheel against its size limit (vLLM's own, 400 MB by default), or an image with --image."""
    if image:
        if not image_check_size(image, budget, docker):
            raise Exit(code=1)
        return
    rc = _config(ctx, dist_dir=dist_dir)
    limit = limit_mb or _wheel_limit(rc)
    if not step_check_size(Path(wheel) if wheel else Path(rc.config.dist_dir), limit):
        raise Exit(code=1)


@forge_task(help=_help("repo", "ref", "vllm_src", "checkout_dir", "arch", "cuda", "max_jobs", "nvcc_threads",
                       "mem_per_job_gb", "build_type", "compile_cache", "dist_dir", "mirror"))
def plan(ctx, repo=None, ref=None, vllm_src=None, checkout_dir=None, arch=None, cuda=None, max_jobs=None,
         nvcc_threads=None, mem_per_job_gb=None, build_type=None, compile_cache=None, dist_dir=None, mirror=None):
    """Show the resolved configuration (and where each value came from) and every step's exact commands."""
    rc = _config(ctx, vllm_repo=repo, vllm_ref=ref, vllm_src=vllm_src, checkout_dir=checkout_dir, arch=arch,
                 cuda=cuda, max_jobs=max_jobs, nvcc_threads=nvcc_threads, mem_per_job_gb=mem_per_job_gb,
                 build_type=build_type, compile_cache=compile_cache, dist_dir=dist_dir, mirror=mirror)
    table = Table("setting", "value", "from", title="Resolved configuration")
    for name, value in rc.config.as_dict().items():
        table.add_row(name, escape(mask_urls(str(value))), rc.source(name))
    console.print(table)
    archs = arch_tables.resolve_arch(rc.config.arch, rc.config.cuda)
    console.print(f"archs: {', '.join(a.sm for a in archs)}  TORCH_CUDA_ARCH_LIST="
                  f"{arch_tables.torch_cuda_arch_list(archs)}  VLLM_FA_CMAKE_GPU_ARCHES="
                  f"{arch_tables.fa_cmake_gpu_arches(archs)}")
    ngc = compat.default_ngc_tag(rc.config.cuda)
    console.print(f"CUDA {rc.config.cuda}: build base {rc.config.base_image or (ngc.image if ngc else '?')}, "
                  f"minimum driver {compat.MIN_DRIVER[compat.cuda_minor(rc.config.cuda)].full}")
    profile = _mirror_profile(ctx, rc)
    rows = [row for row in mirrors.describe_mirror(profile, rc.config) if row[1] != row[2]]
    console.print(f"mirror {profile.name}: {escape(profile.description)}" + ("" if rows else ", nothing rewritten"),
                  soft_wrap=True)
    for what, old, new in rows:
        console.print(f"  {what}: {escape(old)} [dim]->[/] {escape(new)}", soft_wrap=True)
    from scripts import remote_build

    for line in remote_build.plan_lines(rc.config.builder, rc.config.registry_cache):
        console.print(f"[dim]# {escape(line)}[/]", soft_wrap=True)
    for title, make in (
        ("clone", lambda: step_clone(rc, force=False, dry_run=True, profile=profile)),
        ("use-existing-torch", lambda: step_use_existing_torch(_source_dir(rc), dry_run=True)),
        ("build-wheel", lambda: step_build_wheel(rc, _source_dir(rc), dry_run=True)),
    ):
        console.rule(title)
        try:
            make()
        except ForgeError as err:
            console.print(f"[yellow]not ready:[/] {escape(mask_urls(str(err)))}")


@forge_task(help={"cuda": "show which archs this CUDA version can build"})
def archs(ctx, cuda=None):
    """List the GPU names this tool knows, their arch, and the CUDA versions that can build them."""
    if cuda:
        arch_tables.check_archs_for_cuda([], cuda)  # an unknown CUDA version: one line, not an empty table
    table = Table("GPU", "arch", "oldest CUDA", "newest CUDA", title="GPU names accepted by --arch")
    seen = set()
    for model in compat.GPU_MODELS.values():
        if model.name in seen:
            continue
        seen.add(model.name)
        sm = arch_tables.parse_arch_token(model.capability).sm
        if cuda and sm not in compat.CUDA_ARCHS.get(compat.cuda_minor(cuda), ()):
            continue
        table.add_row(model.name, sm, compat.min_cuda_for(sm) or "-", compat.max_cuda_for(sm) or "-")
    console.print(table)


@forge_task(help={"no_docker": "skip the image steps (bake, serve, smoke test)",
                  "arch": FLAG_HELP["arch"], "dist_dir": FLAG_HELP["dist_dir"]})
def demo(ctx, arch="12.0", dist_dir=None, no_docker=False):
    """The whole pipeline on the embedded miniature vLLM: clone, build, audit, check-size, then bake/serve/smoke."""
    from scripts.minivllm import RELEASE_TAG, publish_minivllm

    started = time.monotonic()
    arch_tables.parse_arch_list(arch)  # a typo fails now, not after the clone
    base = resolve_config(ctx.config, {"dist_dir": dist_dir})
    repo_url = publish_minivllm(Path(base.config.cache_dir).expanduser())
    console.print(f"embedded default project published at {repo_url}")
    rc = resolve_config(ctx.config, {
        "vllm_repo": repo_url, "vllm_ref": RELEASE_TAG, "vllm_src": "",
        # Next to the published repo: a checkout always belongs to the repo in the same cache.
        "checkout_dir": str(Path(base.config.cache_dir).expanduser() / "demo" / "vllm"), "arch": arch,
        "dist_dir": dist_dir,
    })
    src = step_clone(rc, force=False, dry_run=False)
    step_use_existing_torch(src, dry_run=False)
    wheel = step_build_wheel(rc, src, dry_run=False)
    ok = step_check_size(wheel, _wheel_limit(rc))
    from scripts.audit import audit_path

    # The archs column is what the wheel's kernels really are (its audit), not what was asked for.
    report = audit_path(wheel, [arch])
    sass = sorted({sm for f in report.files for sm in f.sass})
    verdicts = ", ".join(f"{name}: {'runs' if report.ok else 'NO KERNEL'}" for name in report.target_names)
    summary = Table("wheel", "MB", "SASS in the wheel", "verdict", "seconds", title="demo")
    summary.add_row(wheel.name, f"{wheel.stat().st_size / 2**20:.2f}", ", ".join(sass), verdicts,
                    f"{time.monotonic() - started:.1f}")
    console.print(summary)
    if not no_docker:
        _demo_image_steps(ctx, rc, src, wheel)
    if not ok:
        raise Exit(code=1)


def _demo_image_steps(ctx, rc, src, wheel) -> None:
    """Bake, serve and smoke-test the image when a Docker engine is reachable (image section)."""
    demo_image(ctx, rc, src, wheel)
# ---- end core pipeline ----

# ---- audit (issue 3) ----
import contextlib  # noqa: E402

from scripts import audit as kernel_audit  # noqa: E402

AUDIT_HELP = {
    "path": "a .so, executable, directory (wheels in it too), wheel, or `docker save`/`docker export` tar",
    "image": "a local Docker image to audit instead of PATH (its torch is checked too)",
    "arch": "target GPUs: 12.0, sm_120, 9.0a, rtx5090, h100, auto; several with , or ; (repeatable)",
    "require": "glob of files that must run, e.g. '*/_C*.so' (repeatable; default: every file with device code)",
    "json": "print the report as JSON (stable schema, see docs/audit.md)",
    "all": "list every file without device code too",
    "via": "how to read --image: save (layers, no container) or export (a created, never started container)",
    "docker": "docker client (default: $VLLM_FORGE_DOCKER or docker)",
    "no_torch": "do not check torch's own arch list (the image's, or this Python's)",
    "max_inflate": "cap on the bytes inflated from wheels, e.g. 16G (default 8G: refuses zip bombs in one line)",
    "torch_cuda": "CUDA of the torch that loads these files, e.g. 12.8 (picks per-CUDA library variants)",
}


def _audit_table(report: kernel_audit.AuditReport, show_all: bool) -> Table:
    table = Table(title=f"device code in {escape(report.source)}")
    for column in ("file", "SASS", "PTX", *[f"on {t.label}" for t in report.targets]):
        table.add_column(column, overflow="fold")
    body, hidden = kernel_audit.rows(report, show_all)
    colours = {"native": "green", "PTX JIT": "yellow", "PARTIAL": "bold red", "NO KERNEL": "bold red",
               "unreadable": "bold red"}
    for row in body:
        cells = [escape(c) for c in row[:3]]
        for cell in row[3:]:
            colour = next((c for word, c in colours.items() if cell.startswith(word)), "dim")
            cells.append(f"[{colour}]{escape(cell)}[/]")
        table.add_row(*cells)
    if hidden:
        table.add_row(f"[dim]... {hidden} more files without device code (--all lists them)[/]", "", "",
                      *[""] * len(report.target_names))
    return table


@forge_task(help=AUDIT_HELP, iterable=["arch", "require"], positional=["path"], auto_shortflags=False)
def audit(ctx, path=None, image=None, arch=None, require=None, json=False, all=False, via="save", docker=None,
          no_torch=False, max_inflate="8G", torch_cuda=""):
    """Prove every CUDA extension runs on the target GPU: SASS, PTX JIT or no kernel, per file."""
    if bool(path) == bool(image):
        raise ForgeError("give either PATH or --image IMAGE", "e.g. invoke audit dist/ --arch 12.0")
    archs = list(arch or [])
    if not archs:
        archs = [resolve_config(ctx.config, {}).config.arch]
    # --json is read by programs: no spinner thread next to the scan.
    with contextlib.nullcontext() if json else console.status("reading device code..."):
        if image:
            report = kernel_audit.audit_image(image, archs, require=require or [], docker=docker, via=via,
                                              torch=not no_torch, torch_cuda=torch_cuda)
        else:
            report = kernel_audit.audit_path(path, archs, require=require or [], torch=not no_torch,
                                             max_inflate=max_inflate, torch_cuda=torch_cuda)
    if json:
        print(report.to_json())
    else:
        console.print(_audit_table(report, all))
        torch = report.torch
        if torch:
            if torch.error:
                console.print(f"torch ({escape(torch.where)}): [dim]{escape(torch.error)}[/]", soft_wrap=True)
            else:
                verdicts = ", ".join(f"{report.label(t)}: {v}" for t, v in torch.verdict.items())
                colour = "green" if _torch_runs_everywhere(torch) else "red"
                console.print(f"torch {escape(torch.version)} (CUDA {torch.cuda}, {escape(torch.where)}) built for "
                              f"{' '.join(torch.arch_list)}: [{colour}]{verdicts}[/]", soft_wrap=True)
        for note in report.notes():
            console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
        colour = "green" if report.ok else "bold red"
        console.print(f"[{colour}]{escape(report.summary())}[/]", soft_wrap=True)
    if not report.ok:
        raise Exit(code=1)


def _torch_runs_everywhere(torch: kernel_audit.TorchArchs) -> bool:
    return all(v in kernel_audit.RUNS for v in torch.verdict.values())
# ---- end audit ----

# ---- doctor / nccl (issue 5) ----
_LEVEL_STYLE = {"pass": "green", "info": "dim", "warn": "yellow", "fail": "bold red"}


def _print_findings(title: str, findings) -> None:
    table = Table("", "check", "finding", "fix", title=escape(title), show_lines=False)
    for f in findings:
        style = _LEVEL_STYLE.get(f.level, "")
        fix = f.fix if f.level in ("warn", "fail") else ""
        if f.source and f.level in ("warn", "fail"):
            fix += f" [dim](see {escape(f.source)})[/]"
        table.add_row(f"[{style}]{f.level.upper()}[/]", f.check, escape(f.message), fix if not fix else
                      (escape(f.fix) + fix[len(f.fix):]))
    console.print(table)


def _diagnose_paths(spec: str) -> list[Path]:
    paths: list[Path] = []
    for word in spec.replace(",", " ").split():
        found = sorted(Path().glob(word)) if any(ch in word for ch in "*?[") else [Path(word)]
        for path in found:
            if path.is_dir():  # every text file in it (binaries beside the logs are skipped)
                paths.extend(p for p in sorted(path.iterdir()) if p.is_file() and b"\0" not in p.read_bytes()[:4096])
            else:
                paths.append(path)
    if not paths:
        raise ForgeError(f"no files in {spec!r}", "name NCCL logs, nccl-tests outputs or topo files (or a directory)")
    return paths


@forge_task(help={"image": "check this image's Python, torch, NCCL and vLLM (docker run) instead of this Python",
                  "arch": "GPUs to judge for when none is visible: rtx5090, 12.0, h100 ...",
                  "json": "print the report as JSON",
                  "host_file": "judge a recorded host bundle (== query / == topo sections) instead of this machine"})
def doctor(ctx, image="", arch="", json=False, host_file=""):
    """Name what will break vLLM on these GPUs (driver, torch archs, audit, NCCL, topology) and the fix."""
    import json as json_mod

    from scripts import doctor as doctor_mod

    if host_file and not Path(host_file).is_file():
        raise ForgeError(f"--host-file {host_file} is not a file",
                         "pass a host bundle written on the GPU host (see docs/nccl.md)")
    host_text = Path(host_file).read_text(errors="replace") if host_file else None
    docker = _engine_docker() if image else _plain_docker()  # a down engine: one line, not "no image"
    report = doctor_mod.run_doctor(image=image, arch=arch, host_text=host_text, docker=docker)
    if json:
        print(json_mod.dumps(report.to_dict(), indent=2, default=str))
    else:
        _print_findings(f"doctor{' ' + image if image else ''}: {report.level.upper()}", report.findings)
    if report.level == "fail":
        raise Exit(code=1)


@forge_task(name="nccl-test", help={
    "image": "run inside this image (docker run --gpus all --ipc=host)",
    "gpus": "GPUs (ranks) to use; 0: all that nvidia-smi lists",
    "sizes": "MIN:MAX message sizes, doubling (default 8:128M)",
    "out": "directory for the output table and NCCL_DEBUG_FILE logs (default build/nccl-test)",
    "runner": "auto (all_reduce_perf when found, else torch.distributed), nccl-tests or torch",
    "binary": "the all_reduce_perf to run",
    "build_nccl_tests": "build nccl-tests (make MPI=0 NCCL_HOME=...) from this NVIDIA/nccl-tests checkout first",
    "nccl_home": "NCCL to build nccl-tests against (default: pip's nvidia-nccl, else /usr)",
    "gpu_cap": "compute capabilities to build nccl-tests for, e.g. 9.0,12.0 (default: nvcc's defaults)",
    "dry_run": "print the commands only",
    "json": "print the parsed result and verdicts as JSON"})
def nccl_test(ctx, image="", gpus=0, sizes="8:128M", out="build/nccl-test", runner="auto", binary="",
              build_nccl_tests="", nccl_home="", gpu_cap="", dry_run=False, json=False):
    """All-reduce across the GPUs with NCCL_DEBUG=INFO captured, parsed and judged against the link."""
    import json as json_mod

    from scripts import nccl_logs
    from scripts import nccl_test as nccl_test_mod

    if build_nccl_tests:
        home = Path(nccl_home) if nccl_home else nccl_test_mod.find_nccl_home()
        caps = [c for c in gpu_cap.replace(",", " ").split() if c]
        commands = nccl_test_mod.plan_nccl_tests_build(Path(build_nccl_tests), home, capabilities=caps or None)
        for command in commands:
            console.print(f"  [dim]# {escape(command.why)}[/]\n  {escape(command.shell())}", soft_wrap=True)
        if not dry_run:
            binary = str(nccl_test_mod.build_nccl_tests(commands))
            console.print(f"[green]built[/] {binary}")
    count = gpus or nccl_test_mod.count_gpus() or 1
    plan = nccl_test_mod.plan_run(gpus=count, sizes=sizes, out_dir=Path(out), runner=runner,
                                  binary=binary or None, image=image)
    for note in plan.notes:
        console.print(f"[dim]# {escape(note)}[/]", soft_wrap=True)
    console.print(f"[bold]{plan.runner}[/]: {escape(plan.command.shell())}", soft_wrap=True)
    if dry_run:
        return
    outcome, seconds = _run_streaming(f"all-reduce on {count} GPU(s)", lambda on_line: nccl_test_mod.run_plan(
        plan, on_line=on_line))
    if json:
        print(json_mod.dumps(outcome.to_dict(), indent=2, default=str))
    else:
        console.print(escape(plan.output_file.read_text(errors="replace")), soft_wrap=True, highlight=False)
        for report in outcome.reports:
            _print_findings(f"{report.path} [{report.kind}]", report.findings)
        console.print(f"outputs in {plan.out_dir} [dim]({seconds:.1f}s)[/]")
    if nccl_logs.worst_level([f for r in outcome.reports for f in r.findings]) == "fail":
        raise Exit(code=1)


@forge_task(name="nccl-diagnose", positional=["files"], help={
    "files": "NCCL debug logs, nccl-tests outputs, nvidia-smi topo outputs, or directories (several: quote them, "
             "separated by spaces or commas; globs work)",
    "json": "print the reports as JSON",
    "gpu_cap": "compute capability of the GPUs when the files do not say (e.g. 12.0)"})
def nccl_diagnose(ctx, files=None, json=False, gpu_cap=""):
    """Read NCCL logs / nccl-tests outputs / topo files, name each failure with its cause and fix."""
    import json as json_mod

    from scripts import nccl_logs

    paths = _diagnose_paths(files or "")
    reports = nccl_logs.diagnose_files(paths, nccl_logs.Context(gpu_caps=[gpu_cap] if gpu_cap else []))
    if json:
        print(json_mod.dumps({"level": nccl_logs.worst_level([f for r in reports for f in r.findings]),
                              "files": [r.to_dict() for r in reports]}, indent=2, default=str))
    else:
        for report in reports:
            _print_findings(f"{report.path} [{report.kind}]: {report.level.upper()}", report.findings)
    if any(r.level == "fail" for r in reports):
        raise Exit(code=1)
# ---- end doctor / nccl ----

# ---- image (issue 9: bake, inspect, check-size --image, serve, stop) ----
import subprocess  # noqa: E402

from scripts import image as images  # noqa: E402
from scripts import serve as serving  # noqa: E402

IMAGE_HELP = {
    "docker": "docker client (default: $VLLM_FORGE_DOCKER, else one with buildx, else one with built-in BuildKit)",
    "base_image": "build base (default: the NGC PyTorch image for --cuda)",
    "runtime_image": "serving base (default: the CUDA runtime image for --cuda)",
    "target": "build (builder with sources), wheel (export the wheel to --dist-dir) or runtime (the serving image)",
    "tag": "image tag (default: vllm-forge/vllm:REF-cuXY-smNN)",
    "dockerfile": "forge (this repo's slim recipe), upstream (the checkout's own docker/Dockerfile) or a path",
    "ca_bundle": "PEM bundle for pip/git inside the build (BuildKit secret; default: this host's pip cert)",
    "netrc": "netrc file with private index logins (BuildKit secret, mounted as /root/.netrc)",
    "index_url": "pip/uv index URL; one with credentials goes in as a secret, never as a build arg",
    "extra_index_url": "extra pip/uv index URL (no credentials: use --netrc)",
    "pytorch_index": "PyTorch wheel index base (PYTORCH_CUDA_INDEX_BASE_URL), default download.pytorch.org/whl",
    "platform": "target platform, e.g. linux/amd64",
    "push": "push the image (buildx --push, else docker push after the build)",
    "builder": "buildx builder name",
    "cache_from": "--cache-from source (buildx or registry inline cache)",
    "cache_to": "--cache-to destination (buildx only)",
    "no_cache": "build without the layer cache",
    "build_arg": "extra build arg NAME=VALUE (may repeat)",
}


def _docker_client(docker=None) -> images.DockerClient:
    client = images.find_docker(docker)
    images.check_engine(client.path)
    return client


def _plain_docker(docker=None) -> str:
    """For non-build commands any client talks to the engine; prefer the one bake would use."""
    return docker or os.environ.get("VLLM_FORGE_DOCKER") or "docker"


def _engine_docker(docker=None) -> str:
    """``_plain_docker``, after checking that it exists and its engine answers (one clear line if not)."""
    path = _plain_docker(docker)
    images.check_engine(path)
    return path


@forge_task(help={**_help("arch", "cuda", "vllm_src", "checkout_dir", "max_jobs", "nvcc_threads", "build_type",
                          "compile_cache", "dist_dir", "dry_run", "limit_mb", "no_audit", "mirror"), **IMAGE_HELP},
            iterable=["build_arg", "cache_from", "cache_to"], auto_shortflags=False)
def bake(ctx, arch=None, cuda=None, vllm_src=None, checkout_dir=None, base_image=None, runtime_image=None,
         target="runtime", tag="", dockerfile="forge", docker=None, max_jobs=None, nvcc_threads=None,
         build_type=None, compile_cache=None, dist_dir=None, ca_bundle=None, netrc=None, index_url="",
         extra_index_url="", pytorch_index="", platform="", push=False, builder="", cache_from=None,
         cache_to=None, no_cache=False, build_arg=None, limit_mb=0.0, no_audit=False, dry_run=False, mirror=None):
    """Bake vLLM into an image: multi-stage, layer- and compile-cached, checked and audited inside the build."""
    rc = _config(ctx, arch=arch, cuda=cuda, vllm_src=vllm_src, checkout_dir=checkout_dir, base_image=base_image,
                 runtime_image=runtime_image, max_jobs=max_jobs, nvcc_threads=nvcc_threads, build_type=build_type,
                 compile_cache=compile_cache, dist_dir=dist_dir, mirror=mirror)
    cfg = rc.config
    profile = _mirror_profile(ctx, rc)
    base_image, runtime_image = (images.resolve_base_images(cfg.cuda, cfg.base_image, cfg.runtime_image)
                                 if profile.name != "global" else (cfg.base_image, cfg.runtime_image))
    base_image, runtime_image = (mirrors.rewrite_image(base_image, profile) if base_image else "",
                                 mirrors.rewrite_image(runtime_image, profile) if runtime_image else "")
    index_url = index_url or profile.pypi_index
    pytorch_index = pytorch_index or profile.pytorch_index.rstrip("/")
    client = images.find_docker(docker)
    ca_path = Path(ca_bundle) if ca_bundle else None
    if ca_path is None:
        ca_path, origin = images.default_ca_bundle()
        if ca_path:
            console.print(f"[dim]# CA bundle {ca_path} (from {origin}) goes in as BuildKit secret ca_bundle[/]")
    extra = {}
    for item in build_arg or []:
        name, eq, value = item.partition("=")
        if not eq:
            raise ForgeError(f"--build-arg {item} is not NAME=VALUE", "pass --build-arg NAME=VALUE")
        extra[name] = value
    request = images.BakeRequest(
        src=Path(cfg.source_dir), arch=cfg.arch, cuda=cfg.cuda, cuda_explicit=not rc.is_default("cuda"),
        base_image=base_image, runtime_image=runtime_image, target=target, tag=tag, dockerfile=dockerfile,
        max_jobs=cfg.max_jobs, nvcc_threads=cfg.nvcc_threads, build_type=cfg.build_type,
        compile_cache=cfg.compile_cache, wheel_limit_mb=limit_mb or cfg.wheel_limit_mb, audit=not no_audit,
        index_url=index_url, extra_index_url=extra_index_url, pytorch_index_base_url=pytorch_index,
        ca_bundle=ca_path, netrc=Path(netrc) if netrc else None, dist_dir=Path(cfg.dist_dir),
        context_dir=REPO_ROOT / "build" / "bake", vllm_repo="" if cfg.vllm_src else cfg.vllm_repo,
        vllm_ref="" if cfg.vllm_src else cfg.vllm_ref, platform=platform, push=push, builder=builder,
        cache_from=list(cache_from or []), cache_to=list(cache_to or []), no_cache=no_cache, build_args=extra,
        apt_mirror=profile.apt_mirror.rstrip("/"), deps_cache=Path(cfg.cache_dir).expanduser(),
    )
    plan = images.plan_bake(request, client)
    console.print("[bold]bake[/]")
    for line in plan.lines():
        console.print(f"  [dim]{escape(line)}[/]" if line.startswith("#") else f"  {escape(line)}", soft_wrap=True)
    if dry_run:
        return
    images.check_engine(client.path)
    log_path = REPO_ROOT / "build" / "logs" / f"bake-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    result, seconds = _run_streaming(f"baking {target}", images.run_bake, plan, log_path=log_path)
    cached = f", {result.cached_steps}/{result.total_steps} steps cached" if result.total_steps else ""
    if result.image:
        console.print(f"[green]baked[/] {result.image} ({result.image_id[7:19]}) "
                      f"[dim]({seconds:.1f}s{cached}; log {log_path})[/]")
        if target == "runtime":
            console.print(f"next: invoke check-size --image {result.image}; "
                          f"invoke serve --image {result.image} --model MODEL")
    for wheel in result.wheels:
        console.print(f"[green]wheel[/] {wheel}")


@forge_task(help={"image": "image tag or id", "docker": IMAGE_HELP["docker"]}, auto_shortflags=False)
def inspect(ctx, image, docker=None):
    """Show an image's build labels (vLLM ref/commit, archs, CUDA, bases, date, vllm-forge version) and size."""
    info = images.inspect_image(_engine_docker(docker), image)
    table = Table("label", "value", title=f"{image} ({info['size'] / images.GB:.2f} GB, {info['id'][7:19]})")
    for name, value in sorted(info["labels"].items()):
        table.add_row(name, escape(value))
    console.print(table)
    if not info["labels"]:
        console.print("[yellow]no labels: not an image baked by vllm-forge[/]")


def image_check_size(image: str, budget_gb: float = 0.0, docker: str | None = None, base: str = "") -> bool:
    """`invoke check-size --image TAG [--budget GB]`: size, size over the runtime base, largest layers."""
    report = images.image_size_report(_engine_docker(docker), image, budget_gb, base=base)
    colour = "green" if report.ok else "red"
    over = (f", {report.over_base / images.GB:.2f} GB over its base {report.base}" if report.over_base is not None
            else (f" (base {report.base} is not present locally)" if report.base else ""))
    budget = f" (budget {budget_gb:g} GB)" if budget_gb else ""
    console.print(f"[{colour}]{image}: {report.size / images.GB:.2f} GB[/]{over}{budget}")
    table = Table("MB", "instruction", title="largest layers")
    for layer in report.layers:
        table.add_row(f"{layer.size / 1e6:.1f}", escape(layer.instruction[:140]))
    console.print(table)
    return report.ok


SERVE_HELP = {
    "image": "image to serve (e.g. the tag `invoke bake` printed)",
    "local": "serve the vLLM installed in this Python instead of a container",
    "model": "model to serve (a Hugging Face id or a path)",
    "tp": "tensor-parallel size (GPUs per replica)",
    "port": "port published on the host",
    "host": "host address to publish on (default 127.0.0.1; 0.0.0.0 needs --api-key or --insecure)",
    "gpus": "all, none (CPU-only stand-ins) or indexes like 0,1",
    "api_key": "API key the server requires (default: $VLLM_API_KEY)",
    "insecure": "allow --host 0.0.0.0 without an API key",
    "name": "container name (default vllm-forge-serve)",
    "timeout": "seconds to wait for /health",
    "shm_size": "use --shm-size SIZE instead of --ipc=host",
    "compose": "write the equivalent docker compose file instead of starting anything",
    "compose_file": "where --compose writes (default build/serve/compose.yaml)",
    "no_smoke": "do not call /v1/models and a chat completion after /health",
    "docker": "docker client (default: $VLLM_FORGE_DOCKER or docker)",
    "dry_run": "print the docker run command, start nothing",
}


@forge_task(help=SERVE_HELP, auto_shortflags=False)
def serve(ctx, model, image="", local=False, tp=1, port=8000, host="127.0.0.1", gpus="all", api_key=None,
          insecure=False, name=serving.DEFAULT_NAME, timeout=600.0, shm_size="", compose=False,
          compose_file="build/serve/compose.yaml", no_smoke=False, docker=None, dry_run=False):
    """Start the OpenAI server (container or --local), wait for /health, smoke-test it, print the URL."""
    request = serving.ServeRequest(model=model, image=image, local=local, tp=int(tp), port=int(port), host=host,
                                   gpus=gpus,
                                   api_key=api_key if api_key is not None else os.environ.get("VLLM_API_KEY", ""),
                                   insecure=insecure, name=name, shm_size=shm_size)
    docker_path = _plain_docker(docker)
    if compose:
        path = REPO_ROOT / compose_file if not Path(compose_file).is_absolute() else Path(compose_file)
        text = serving.compose_file(request)  # checked first: a refused request writes nothing
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            partial.write_text(text)
            os.replace(partial, path)  # whole or not at all
        finally:
            partial.unlink(missing_ok=True)
        key = "export VLLM_API_KEY=...; " if request.api_key else ""  # the file names it, never holds it
        console.print(f"[green]wrote[/] {path}: {key}docker compose -f {path} up -d")
        return
    command = serving.plan_serve(request, docker_path)
    console.print(f"  {escape(serving.shell_line(command, request))}", soft_wrap=True)
    if dry_run:
        return
    if not local:
        images.check_engine(docker_path)
    started_at = time.monotonic()
    with console.status("starting the server...") as status:
        def tick(elapsed: float) -> None:
            status.update(f"waiting for {request.name} /health [dim]{elapsed:4.0f}s[/]")

        started, healthy, result = serving.serve(request, docker=docker_path, timeout_s=float(timeout),
                                                 on_tick=tick, smoke=not no_smoke)
    total = time.monotonic() - started_at
    console.print(f"[green]healthy[/] after {healthy:.1f}s: {started.url} [dim]({total:.1f}s)[/]")
    if result:
        console.print(f"  /v1/models: {', '.join(result.models)}; chat: {escape(result.reply[:80])!s}")
    console.print(f"stop it with: invoke stop{'' if name == serving.DEFAULT_NAME else ' --name ' + name}")


@forge_task(help={"name": SERVE_HELP["name"], "docker": SERVE_HELP["docker"]}, auto_shortflags=False)
def stop(ctx, name=serving.DEFAULT_NAME, docker=None):
    """Stop and remove what `invoke serve` started."""
    if (serving.LOCAL_STATE_DIR / f"{name}.pid").exists():  # a --local server: no Docker needed
        console.print(serving.stop(name, _plain_docker(docker)))
        return
    console.print(serving.stop(name, _engine_docker(docker)))


def demo_image(ctx, rc, src, wheel) -> None:
    """`invoke demo`'s image steps: bake the checkout, serve it, smoke-test it, tear it down."""
    from scripts.standin_images import BUILD_STANDIN, RUNTIME_STANDIN

    docker = _plain_docker()
    if not images.engine_reachable(docker):
        console.print("[dim]image steps skipped: no Docker engine answers (`docker info`)[/]")
        return
    cfg = rc.config
    base, runtime = images.resolve_base_images(cfg.cuda, cfg.base_image, cfg.runtime_image)
    present = lambda ref: subprocess.run([docker, "image", "inspect", ref], capture_output=True).returncode == 0  # noqa: E731
    if not (present(base) and present(runtime)):
        if present(BUILD_STANDIN) and present(RUNTIME_STANDIN):
            console.print(f"[yellow]{base} / {runtime} are not here: baking on the TEST-ONLY stand-in images[/]")
            base, runtime = BUILD_STANDIN, RUNTIME_STANDIN
        else:
            console.print(f"[dim]image steps skipped: pull {base} and {runtime} first, or build the test-only "
                          "stand-ins with `python scripts/standin_images.py`[/]")
            return
    cuda = cfg.cuda if base != BUILD_STANDIN else "13.0"
    result, seconds = _run_streaming(
        "bake, serve, smoke-test", serving.bake_serve_smoke, src, arch=cfg.arch, cuda=cuda, base_image=base,
        runtime_image=runtime, vllm_repo=cfg.vllm_repo, vllm_ref=cfg.vllm_ref)
    console.print(f"[green]image[/] {result.image}: {result.image_size / images.GB:.2f} GB, baked in "
                  f"{result.bake_seconds:.1f}s, healthy in {result.healthy_seconds:.1f}s, "
                  f"chat replied {escape(result.smoke.reply[:60])!r}")
# ---- end image ----

# ---- vLLM tree / offline deps (issue 10) ----
from scripts import fetch_deps as dep_fetcher  # noqa: E402
from scripts import vllm_tree  # noqa: E402

TREE_FLAG_HELP = {
    "vllm_src": "the vLLM checkout to read (default: the clone in --checkout-dir)",
    "checkout_dir": "where `clone` keeps its checkout (default build/vllm)",
    "cuda": "CUDA version(s) to show the checkout's arch gate for (default 12.6, 12.8, 12.9, 13.0)",
    "arch": "also check these archs against the gate of --cuda (preflight)",
    "json": "print every detected fact as JSON",
    "cache_dir": "vllm-forge cache root; dependencies go to <cache-dir>/deps/<name>@<rev>",
    "github_proxy": "URL prefix put before https://github.com/... (default: the mirror profile's github_proxy)",
    "url_map": "OLD=NEW: fetch URLs starting with OLD from NEW instead (repeatable)",
    "offline": "use the cache only; fail naming what is missing",
    "dry_run": "list the dependencies, their pins and what is cached; fetch nothing",
    "mirror": "mirror profile whose github_proxy to use (forge.mirrors.<name>.github_proxy in invoke.yaml)",
}


def _mirror_github_proxy(ctx, rc: ResolvedConfig) -> str | None:
    """The github_proxy of the selected mirror profile in invoke.yaml (forge.mirrors.<profile>)."""
    return _mirror_profile(ctx, rc).github_proxy or None


@forge_task(name="inspect-tree", help={k: TREE_FLAG_HELP[k] for k in ("vllm_src", "checkout_dir", "cuda", "arch",
                                                                      "json")},
            iterable=["cuda"])
def inspect_tree(ctx, vllm_src=None, checkout_dir=None, cuda=None, arch=None, json=False):
    """Say what the checkout's vLLM version needs: script paths, env knobs, CUDA arch gate, wheel limit, git deps."""
    import json as json_mod

    rc = _config(ctx, vllm_src=vllm_src, checkout_dir=checkout_dir)
    tree = vllm_tree.inspect_tree(_source_dir(rc))
    cudas = list(cuda) or ["12.6", "12.8", "12.9", "13.0"]
    if json:
        print(json_mod.dumps(tree.as_dict(cudas), indent=2))
    else:
        console.print(f"[bold]{escape(tree.summary())}[/]", soft_wrap=True)
        console.print(f"  version from {escape(tree.version_source)}; wheel limit from "
                      f"{escape(tree.wheel_size_source)}; Dockerfile {tree.dockerfile or '-'} "
                      f"({len(tree.dockerfile_args)} ARGs)", soft_wrap=True)
        console.print("  build knobs read: " + ", ".join(k for k in vllm_tree.BUILD_KNOBS if tree.reads(k)),
                      soft_wrap=True)
        table = Table("CUDA", "CUDA_SUPPORTED_ARCHS", title="arch gate (CMakeLists.txt)")
        for version in cudas:
            archs = tree.cuda_supported_archs(version)
            table.add_row(version, ";".join(archs) if archs is not None else "no gate")
        console.print(table)
        console.print("[bold]git dependencies its CMake fetches[/] (name: repository @ pin, local-copy variable)")
        for dep in tree.git_deps:
            local = (dep.src_dir_env or "none") + (f" -> <clone>/{dep.source_subdir}" if dep.source_subdir else "")
            console.print(f"  {dep.name}: {dep.repository} @ {dep.tag}  [dim]{local}[/]", soft_wrap=True)
        for note in tree.notes:
            console.print(f"  [yellow]note:[/] {escape(note)}", soft_wrap=True)
    if arch:
        archs = arch_tables.parse_arch_list(arch)
        for version in cudas:
            tree.check_archs(archs, version)
        console.print(f"[green]{', '.join(a.sm for a in archs)} kept by this vLLM's gate for CUDA "
                      f"{', '.join(cudas)}[/]")


@forge_task(name="fetch-deps", help={k: TREE_FLAG_HELP[k] for k in (
    "vllm_src", "checkout_dir", "cache_dir", "github_proxy", "url_map", "offline", "dry_run", "json", "mirror")},
            iterable=["url_map"])
def fetch_deps(ctx, vllm_src=None, checkout_dir=None, cache_dir=None, github_proxy=None, url_map=None,
               offline=False, dry_run=False, json=False, mirror=None):
    """Clone the git deps vLLM's CMake fetches (CUTLASS, flash-attention, ...) into the cache, for offline builds."""
    import json as json_mod

    rc = _config(ctx, vllm_src=vllm_src, checkout_dir=checkout_dir, cache_dir=cache_dir, mirror=mirror)
    proxy = github_proxy or _mirror_github_proxy(ctx, rc)
    mapping = {}
    for item in url_map or []:
        if "=" not in item:
            raise ForgeError(f"--url-map {item!r} is not OLD=NEW",
                             "e.g. --url-map https://github.com/=https://git.example.com/github/")
        old, new = item.split("=", 1)
        mapping[old] = new
    tree = vllm_tree.inspect_tree(_source_dir(rc))
    cache = Path(rc.config.cache_dir).expanduser()
    if dry_run:
        console.print(f"[bold]{escape(tree.summary().split(':')[0])}: {len(tree.git_deps)} git "
                      f"dependenc{'y' if len(tree.git_deps) == 1 else 'ies'}[/] (cache {cache / 'deps'})")
        for status in dep_fetcher.plan_fetch(tree, cache, proxy, mapping):
            state = "[green]cached[/]" if status.cached else f"fetch from {escape(status.url)}"
            how = dep_fetcher.override_for(tree, status.dep) or "[red]no local-copy override[/]"
            console.print(f"  {status.dep.name} @ {status.dep.tag}: {state} -> {status.path.name}  [dim]{how}[/]",
                          soft_wrap=True)
        return
    env, seconds = _run_streaming("fetching dependencies", dep_fetcher.fetch_deps, tree, cache, proxy,
                                  url_map=mapping, offline=offline)
    if json:
        print(json_mod.dumps(env, indent=2))
        return
    count = len(tree.git_deps)
    console.print(f"[green]{count} dependenc{'y' if count == 1 else 'ies'} in {cache / 'deps'}[/] "
                  f"[dim]({seconds:.1f}s)[/]; the build reads them from:")
    for name, value in env.items():
        console.print(f"  {name}={escape(value)}", soft_wrap=True)
# ---- end vLLM tree ----

# ---- namespace ----
ns = Collection.from_module(sys.modules[__name__])
ns.configure({"forge": DEFAULTS})
