"""vllm-forge tasks: build vLLM for the GPU you name, bake a slim image, prove it runs.

Every task is thin: parse flags, resolve the BuildConfig, call a module of vllm_forge/, print with rich.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from invoke import Collection, Task, task
from invoke.exceptions import Exit
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from vllm_forge.core.errors import ForgeError, quiet_broken_pipe


def _lazy(name: str):
    """The module ``name``, loaded on first use (importlib's LazyLoader): `invoke --list` imports this file,
    and no task needs every module of vllm_forge/."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class _Console(Console):
    """Output a user copies from: rich never breaks a line (soft_wrap: the terminal wraps what is too long for
    it, and a copy gets the line whole), and a table is laid out at least as wide as its longest word, so a
    path, command or image name in a cell is never folded or cut (the terminal wraps the wider lines)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(soft_wrap=True, **kwargs)

    def print(self, *objects, **kwargs) -> None:
        for table in (item for item in objects if isinstance(item, Table)):
            self._keep_words_whole(table)
        super().print(*objects, **kwargs)

    def _keep_words_whole(self, table: Table) -> None:
        """No column (and no title) narrower than its longest word: rich then wraps cells at spaces only, and a
        table that cannot fit the terminal that way is printed wider than it (rich's own layout would fold a
        path or end it in "…")."""
        unbounded = self.options.update(max_width=1 << 16)

        def longest_word(renderable) -> int:
            return Measurement.get(self, unbounded, renderable).minimum if renderable else 0

        for column in table.columns:
            word = max(longest_word(cell) for cell in [column.header, *column.cells])
            column.min_width = max(column.min_width or 0, word)
        if table.title:
            table.min_width = max(table.min_width or 0, longest_word(table.title))

    def on_broken_pipe(self) -> None:
        """rich's own answer (exit 1) would say a closed pipe failed the task: the task wrapper ends it as
        a shell reports a program SIGPIPE stopped (``forge_task``)."""
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


console = _Console(highlight=False)
err_console = _Console(stderr=True, highlight=False)


def _print_copyable(line: str) -> None:
    """A line to copy and run (a command, a path, an image name): printed as is, never wrapped or styled."""
    console.print(escape(line))


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


def _number(flag: str, value, kind=int, default=0):
    """A numeric flag: invoke would cast it with a bare int() (a traceback on `--port abc`), so numeric
    flags are declared without a typed default and read here."""
    if value in (None, ""):
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise ForgeError(f"--{flag} needs {what}, got {value!r}", f"pass e.g. --{flag} {default or 1}") from None


def _optional_positionals() -> None:
    """`invoke audit --image IMG` has no PATH, `invoke nccl-diagnose` may get its files from a directory
    flag: invoke refuses a missing positional argument before the task could say which one is needed, and it
    has no public way to declare one optional (a positional with a default is never filled). This wraps the
    one method that refuses, ParseMachine.complete_context: invoke is pinned to the version this was checked
    against (requirements.txt), and tests/unit/test_invoke_pin.py fails when that method changes."""
    from invoke.parser.parser import ParseMachine

    complete = ParseMachine.complete_context
    if getattr(complete, "forge_wrapped", False):
        return

    def complete_context(self, _complete=complete):
        for arg in (self.context.positional_args if self.context else []):
            if arg.value is None and arg.name in OPTIONAL_POSITIONAL.get(self.context.name, ()):
                arg.set_value("", cast=False)
        return _complete(self)

    complete_context.forge_wrapped = True
    ParseMachine.complete_context = complete_context


OPTIONAL_POSITIONAL = {"audit": ("path",), "nccl-diagnose": ("files",)}
_optional_positionals()


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
    from vllm_forge.core.plan import mask_urls  # a repo URL with a token in it never reaches the terminal

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


def _print_task_help(name: str, made: Task) -> None:
    """invoke's own task help, printed the way `Program.print_task_help` does (for tasks whose positional
    argument invoke hands `--help` to, so every task's help reads the same)."""
    import inspect

    from invoke import Program
    from invoke.parser import ParserContext

    tuples = ParserContext(name=name, args=made.get_arguments()).help_tuples()
    program = Program(binary="inv[oke]")
    print(f"Usage: {program.binary} [--core-opts] {name} {'[--options] ' if tuples else ''}[other tasks here ...]")
    print("\nDocstring:")
    for line in (inspect.getdoc(made) or "none").splitlines():
        print(program.leading_indent + line if line.strip() else "")
    print("\nOptions:")
    program.print_columns(tuples)


def forge_task(*task_args, **task_kwargs):
    """``@task`` whose user errors end as one line with the fix, and Ctrl-C as exit code 130."""

    task_kwargs.setdefault("auto_shortflags", False)  # `-h` stays help, never a task's flag

    def decorate(body):
        import inspect

        made: list[Task] = []
        params = list(inspect.signature(body).parameters.values())[1:]
        positional = task_kwargs.get("positional") or [
            p.name for p in params if p.default is inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD]

        @functools.wraps(body)
        def run(ctx, *args, **kwargs):
            if any(value in ("-h", "--help") for value in (*args, *(kwargs.get(name) for name in positional))):
                # invoke hands `--help` after a task to its positional argument: answer it here.
                _print_task_help(made[0].name, made[0])
                return None
            previous = _interrupt_on_termination()
            try:
                return body(ctx, *args, **kwargs)
            except ForgeError as err:
                if _debugging():
                    raise
                _print_error(str(err))
                raise Exit(code=err.exit_code) from None
            except BrokenPipeError:  # `invoke audit X --json | head -1`: the reader has all it wanted
                raise Exit(code=quiet_broken_pipe()) from None
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
                if "vllm_forge.core.checkout_lock" in sys.modules:  # the checkouts this task wrote to are free again
                    sys.modules["vllm_forge.core.checkout_lock"].release_all()

        made.append(task(*task_args, **task_kwargs)(run))
        return made[0]

    return decorate


# ---- core pipeline (config, clone, use-existing-torch, build-wheel, check-size, plan, demo) ----
arch_tables = _lazy("vllm_forge.gpu.archs")
compat = _lazy("vllm_forge.gpu.compat")
releases = _lazy("vllm_forge.gpu.cuda_release")  # a task's --cuda string becomes a CudaRelease here, once
pipelines = _lazy("vllm_forge.pipeline")
# --plot and `report`: figure data from the reports' JSON, drawn with matplotlib (imported only when drawing)
_figure_data = _lazy("vllm_forge.report.figure_data")
_figures = _lazy("vllm_forge.report.figures")
from vllm_forge.core.config import invoke_defaults, resolve_config  # noqa: E402
from vllm_forge.core.plan import mask_urls  # noqa: E402

FLAG_HELP = {
    "repo": "vLLM git repository URL (https, ssh, file:// or a local path)",
    "ref": "tag, branch or commit to check out, e.g. v0.11.0",
    "vllm_src": "use this existing vLLM checkout as is (no clone)",
    "checkout_dir": "where `clone` keeps its checkout (default build/vllm)",
    "arch": "target GPUs: 12.0, sm_120, 9.0a, 12.0+PTX, rtx5090, 'RTX 5090 D', h100, auto; several with ; or ,",
    "cuda": "CUDA release, e.g. 13.0: a local build must use that nvcc (default: the nvcc found); a bake builds "
            "the image with it (default: what the checkout's Dockerfile pins, else 12.8)",
    "base": "bake's build base: auto (what the checkout pins), cuda (NVIDIA's CUDA -devel image + the pinned torch "
            "from the PyTorch index) or ngc (NGC's PyTorch image and its own torch)",
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
    "patch": "apply this unified diff to the checkout before use-existing-torch (repeatable; see forge.patches)",
    "no_reuse": "compile the kernels even when a wheel in dist/ was built from the same kernel inputs",
    "targets": "TARGET[,TARGET...]: build only these CMake extension targets of the checkout's setup.py, e.g. "
               "_C_stable_libtorch,_moe_C_stable_libtorch (an unambiguous start such as _C will do; repeatable)",
    "install_build_deps": "pip-install the checkout's unmet build requirements (pyproject [build-system], "
                          "requirements/build*) into the building Python first; torch is never replaced",
    "plot": "also draw the slowest compile units (.ninja_log) and the compile time per arch into this .png or .svg",
    "dist_scheduler": "sccache-dist scheduler URL to compile on, e.g. http://farm.lan:10600 ('' turns a configured "
                      "one off; see docs/farm.md)",
    "dist_token_file": "file whose first line is the farm's client token (default: $VLLM_FORGE_DIST_TOKEN)",
}


def _help(*names: str) -> dict[str, str]:
    return {name: FLAG_HELP[name] for name in names}


def _settings(ctx, writes: bool = False, **flags) -> pipelines.Settings:
    """Config layers + mirror profile + the checkout's facts, resolved once for this command line; ``writes``:
    the task will run steps on the checkout (vllm_forge/core/checkout_lock.py: never true for a dry run)."""
    return pipelines.resolve_settings(ctx.config, flags, repo_root=REPO_ROOT, writes=writes)


def _print_step(step: pipelines.Step) -> None:
    console.rule(f"[bold]{escape(step.title)}[/]", align="left")
    for line in step.lines():
        console.print(f"  [dim]{escape(line)}[/]" if line.startswith("#") else f"  {escape(line)}", soft_wrap=True)
    if step.error is not None:
        console.print(f"  [yellow]not ready:[/] {escape(mask_urls(str(step.error)))}", soft_wrap=True)


def _print_result(step: pipelines.Step, result, seconds: float) -> None:
    """One line (or table) per finished step, from what the step returned."""
    if step.name == "clone" and result:
        console.print(f"[green]checked out[/] {escape(result[:12])} [dim]({seconds:.1f}s)[/]")
    elif step.name == "use-existing-torch":
        console.print("[green]no torch pins left[/]")
    elif step.name == "install-build-deps":
        console.print(f"[green]installed[/] {escape(', '.join(result)) if result else 'nothing (all met)'}")
    elif step.name == "build-wheel":
        from vllm_forge.build.compile_cache import cache_stats

        stats = cache_stats(step.plan.compile_cache)
        console.print(f"[green]built[/] {result} [dim]({seconds:.1f}s{', ' + escape(stats) if stats else ''})[/]")
        for what, line in pipelines.dist_rows(step.plan):
            if what == "farm":  # the compiles split is in the stats line already
                console.print(f"  [yellow]{escape(line)}[/]", soft_wrap=True)
        if step.plan.reuse:
            console.print(f"  {escape(step.plan.reuse.line())}", soft_wrap=True)
        if step.plan.timing is not None:
            _print_timing(step.plan.timing)
    elif step.name == "patch":
        console.print(f"[green]patches[/]: {', '.join(f'{r.patch.name} {r.status}' for r in result) or 'none'}")
    elif step.name == "check-size":
        _print_wheel_size(result)
    elif step.name == "bake":
        cached = f", {result.cached_steps}/{result.total_steps} steps cached" if result.total_steps else ""
        if result.image:
            console.print(f"[green]baked[/] {result.image} ({result.image_id[7:19]}) "
                          f"[dim]({seconds:.1f}s{cached}; log {result.log_path})[/]")
        for wheel in result.wheels:
            console.print(f"[green]wheel[/] {wheel}")
        for line in result.farm:  # the build stage's own words about the farm (vllm_forge/build/farm.py)
            console.print(f"  {escape(line)}", soft_wrap=True)
    elif step.name == "check-size-image":
        _print_image_size(result)
    elif step.name == "inspect":
        _print_labels(result)
    elif step.name == "serve":
        started, healthy, smoke = result
        console.print(f"[green]healthy[/] after {healthy:.1f}s: {started.url}")
        if smoke:
            console.print(f"  /v1/models: {', '.join(smoke.models)}; chat: {escape(smoke.reply[:80])!s}")


class _StepDisplay:
    """What the terminal shows while a pipeline runs: a spinner with the step's latest output line, or, for
    build-wheel, the build's progress (phase; ninja's objects done/total, a bar, elapsed, ETA; the slowest
    units so far). Without a terminal (CI, a pipe) a build prints plain lines now and then instead, and
    nothing else is drawn. Each line still goes to the step's full log as before."""

    def __init__(self, out: Console):
        from rich.live import Live
        from rich.spinner import Spinner

        self.out = out
        self.title, self.last, self.progress = "starting", "", None
        self.started = time.monotonic()
        self.spinner = Spinner("dots")
        self.live = (Live(console=out, transient=True, refresh_per_second=4, get_renderable=self._render)
                     if out.is_terminal and not out.is_dumb_terminal else None)

    def __enter__(self):
        if self.live:
            self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.stop()  # on Ctrl-C too: the live lines are erased, the terminal left clean

    def start(self, step: pipelines.Step) -> None:
        from vllm_forge.build.build_progress import BuildProgress

        self.title, self.last = step.title, ""
        plan = step.plan if step.name == "build-wheel" else None
        self.progress = BuildProgress(plan.request.src) if plan is not None else None

    def feed(self, line: str) -> None:
        if self.progress is None:
            self.last = line
            return
        self.progress.feed(line)
        if self.live is None:
            plain = self.progress.plain_line()
            if plain:
                self.out.print(f"{escape(self.title)}: {escape(plain)}", soft_wrap=True)

    def _render(self):
        from rich.text import Text

        width = max(40, self.out.width)
        if self.progress is None:
            head = Text.assemble(f" {self.title} ", (f"{time.monotonic() - self.started:5.0f}s ", "dim"),
                                 self.last.strip()[-200:])
            head.truncate(width - 3, overflow="ellipsis")
            return self._spin(head)
        return _render_build(self.title, self.progress.view(), width, self._spin)

    def _spin(self, text):
        from rich.table import Table

        grid = Table.grid(padding=0)
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        grid.add_row(self.spinner, text)
        return grid


def _render_build(title: str, view, width: int, spin):
    """The live lines of a build: one status line, then the slowest units so far (paths cut between their
    components to fit the width, never wrapped)."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    from vllm_forge.build.build_progress import duration, eta_text, shorten_path

    if view.phase != "compiling" or not view.total:
        text = Text.assemble(f" {title} ", (view.phase, "bold"), (f" {duration(view.elapsed)} ", "dim"),
                             view.detail.strip())
        text.truncate(width - 3, overflow="ellipsis")
        return spin(text)
    grid = Table.grid(padding=(0, 1))
    for _ in range(4):
        grid.add_column(no_wrap=True)
    figures = (f"{view.done}/{view.total} {view.fraction:4.0%}  {duration(view.elapsed)} elapsed  "
               f"{eta_text(view)}")
    bar_width = max(10, min(40, width - len(title) - len(figures) - 16))
    grid.add_row(spin(Text(f" {title}")), Text("compiling", style="bold"),
                 ProgressBar(total=view.total, completed=view.done, width=bar_width), Text(figures))
    lines = [grid]
    for index, entry in enumerate(view.slowest):
        label = "  slowest so far: " if index == 0 else " " * 18
        head = f"{label}{entry.seconds:5.0f}s  {entry.target}  "
        lines.append(Text(head + shorten_path(entry.source, max(12, width - len(head) - 1)), style="dim",
                          no_wrap=True, overflow="ellipsis"))
    return Group(*lines)


def _print_timing(timing) -> None:
    """ninja's compile times of a build, once, at its end (success, failure or Ctrl-C)."""
    lines = timing.lines()
    console.print(escape(lines[0]), soft_wrap=True)
    for line in lines[1:]:
        console.print(f"[dim]{escape(line)}[/]" if line.startswith(" ") else escape(line), soft_wrap=True)


def _run(pipeline: pipelines.Pipeline) -> pipelines.RunState:
    """Print each step as it is about to run (the very commands it runs), run it, say what it made."""
    if pipeline.options.dry_run:
        for step in pipeline.steps:
            _print_step(step)
        if not pipeline.ready:
            raise Exit(code=1)
        return pipelines.RunState()
    current: list[pipelines.Step] = []
    display = _StepDisplay(console)
    state = pipelines.RunState()

    def on_step(step):
        current[:] = [step]
        _print_step(step)
        display.start(step)

    try:
        with display:
            return pipeline.run(on_step=on_step, on_line=display.feed, on_done=_print_result, state=state)
    except BaseException:  # a failed or interrupted build still says where its compile time went
        timing = current[0].plan.timing if current and current[0].name == "build-wheel" else None
        if timing is not None:
            _print_timing(timing)
        raise
    finally:  # recorded under build/reports for `invoke report`, whatever the outcome
        for kind, data in pipelines.run_records(pipeline, state, sys.exc_info()[1]):
            _record(kind, data)


def _record(kind: str, data: dict) -> None:
    from vllm_forge.report.run_records import try_save

    _path, problem = try_save(kind, data)
    if problem:
        err_console.print(f"[yellow]note:[/] {escape(problem)}", soft_wrap=True)


def _plot(data, path, *, json: bool = False) -> None:
    """Draw figure data (vllm_forge/report/figure_data.py) into ``path`` (checked first by figures.check_plot_path); the
    line saying so goes to stderr when stdout carries JSON."""
    from vllm_forge.report import figures

    (err_console if json else console).print(f"[green]plot[/] {figures.save(data, path)}")


def _run_streaming(label: str, fn, *args, **kwargs):
    """Run a step with a live spinner showing its latest output line and the elapsed time."""
    start = time.monotonic()
    with console.status(f"{label}...") as status:
        def on_line(line: str) -> None:
            elapsed = time.monotonic() - start
            status.update(f"{label} [dim]{elapsed:5.0f}s[/] {escape(line[-100:])}")

        result = fn(*args, on_line=on_line, **kwargs)
    return result, time.monotonic() - start


def _summary(pipeline: pipelines.Pipeline, state: pipelines.RunState) -> None:
    table = Table("", "", title="summary", show_header=False)
    for what, value in pipelines.summary_rows(pipeline, state):
        table.add_row(what, escape(value))
    console.print(table)


def _print_wheel_size(report) -> None:
    colour = "green" if report.ok else "red"
    console.print(f"[{colour}]{report.wheel.name}: {report.size_mb:.1f} MB[/] (limit {report.limit_mb:g} MB)")
    if not report.ok:
        table = Table("member", "compressed MB", "MB", title="largest members")
        for name, packed, size in report.largest:
            table.add_row(name, f"{packed:.1f}", f"{size:.1f}")
        console.print(table)


_CLONE_FLAGS = ("repo", "ref", "vllm_src", "checkout_dir", "mirror")


@forge_task(help=_help(*_CLONE_FLAGS, "force", "dry_run"))
def clone(ctx, repo=None, ref=None, vllm_src=None, checkout_dir=None, force=False, dry_run=False, mirror=None):
    """Clone or update a vLLM checkout at a ref (partial clone; local changes are never lost)."""
    settings = _settings(ctx, writes=not dry_run, vllm_repo=repo, vllm_ref=ref, vllm_src=vllm_src,
                         checkout_dir=checkout_dir, mirror=mirror)
    _run(pipelines.build_pipeline(settings, ["clone"], pipelines.Options(dry_run=dry_run, force=force)))


@forge_task(name="use-existing-torch", help=_help("vllm_src", "checkout_dir", "dry_run"))
def use_existing_torch(ctx, vllm_src=None, checkout_dir=None, dry_run=False):
    """Run the checkout's own use_existing_torch.py and verify no torch pin is left."""
    settings = _settings(ctx, writes=not dry_run, vllm_src=vllm_src, checkout_dir=checkout_dir)
    _run(pipelines.build_pipeline(settings, ["use-existing-torch"], pipelines.Options(dry_run=dry_run)))


_BUILD_FLAGS = ("arch", "cuda", "vllm_src", "checkout_dir", "dist_dir", "max_jobs", "nvcc_threads",
                "mem_per_job_gb", "build_type", "compile_cache", "mirror", "dry_run", "no_audit", "patch", "no_reuse",
                "targets", "install_build_deps", "plot", "dist_scheduler", "dist_token_file")


def _patch_files(settings, patch) -> list[Path]:
    """forge.patches (paths relative to invoke.yaml's directory) first, then each --patch, in order."""
    from vllm_forge.source import patches

    return [REPO_ROOT / p for p in patches.patches_from_config(settings.config.patches)] + [
        Path(p) for p in patch or []]


def _run_wheel_chain(ctx, names: list[str], *, dry_run: bool, no_audit: bool, force: bool = False, patch=None,
                     no_reuse: bool = False, targets=None, install_build_deps: bool = False, plot=None,
                     **flags) -> None:
    if plot:
        _figures.check_plot_path(plot)  # before anything runs
    settings = _settings(ctx, writes=not dry_run, **flags)
    chain = "check-size" in names
    options = pipelines.Options(dry_run=dry_run, force=force, audit=not no_audit, reuse_checkout=chain,
                                reuse=not no_reuse, patches=_patch_files(settings, patch),
                                targets=[t.strip() for word in targets or [] for t in word.split(",") if t.strip()],
                                install_build_deps=install_build_deps)
    names = pipelines.with_patches(names, options)
    if install_build_deps:
        names.insert(names.index("build-wheel"), "install-build-deps")
    # Planned whole before anything runs: a wrong arch/CUDA/jobs value fails here, nothing touched.
    pipeline = pipelines.build_pipeline(settings, names, options)
    state = _run(pipeline)
    build = next((step for step in pipeline.steps if step.name == "build-wheel"), None)
    if plot and not dry_run and build is not None and build.plan.build_times is not None:
        _plot(_figure_data.build_figure(build.plan.build_times, state.wheel.name if state.wheel else ""), plot)
    if chain and not dry_run:
        _summary(pipeline, state)
        if not state.results["check-size"].ok:
            raise Exit(code=1)


@forge_task(name="build-wheel", help=_help(*_BUILD_FLAGS, "skip_torch"), iterable=["patch", "targets"])
def build_wheel(ctx, arch=None, cuda=None, vllm_src=None, checkout_dir=None, dist_dir=None, max_jobs=None,
                nvcc_threads=None, mem_per_job_gb=None, build_type=None, compile_cache=None, mirror=None,
                dry_run=False, no_audit=False, skip_torch=False, patch=None, no_reuse=False, targets=None,
                install_build_deps=False, plot=None, dist_scheduler=None, dist_token_file=None):
    """Build the vLLM wheel for exactly the archs asked for; publish it to dist/ only if it audits clean."""
    _run_wheel_chain(ctx, [*([] if skip_torch else ["use-existing-torch"]), "build-wheel"], dry_run=dry_run,
                     no_audit=no_audit, patch=patch, no_reuse=no_reuse, targets=targets,
                     install_build_deps=install_build_deps, plot=plot, arch=arch, cuda=cuda, vllm_src=vllm_src,
                     checkout_dir=checkout_dir,
                     dist_dir=dist_dir, max_jobs=max_jobs, nvcc_threads=nvcc_threads, mem_per_job_gb=mem_per_job_gb,
                     build_type=build_type, compile_cache=compile_cache, mirror=mirror, dist_scheduler=dist_scheduler,
                     dist_token_file=dist_token_file)


@forge_task(name="wheel", help=_help(*_BUILD_FLAGS, "repo", "ref", "force", "limit_mb"),
            iterable=["patch", "targets"])
def wheel(ctx, arch=None, cuda=None, vllm_src=None, checkout_dir=None, dist_dir=None, max_jobs=None,
          nvcc_threads=None, mem_per_job_gb=None, build_type=None, compile_cache=None, mirror=None, dry_run=False,
          no_audit=False, repo=None, ref=None, force=False, limit_mb=None, patch=None, no_reuse=False, targets=None,
          install_build_deps=False, plot=None, dist_scheduler=None, dist_token_file=None):
    """The wheel chain: clone (or reuse) → patch → use-existing-torch → build-wheel → check-size, with a summary."""
    _run_wheel_chain(ctx, list(pipelines.WHEEL_CHAIN), dry_run=dry_run, no_audit=no_audit, force=force,
                     patch=patch, no_reuse=no_reuse, targets=targets, install_build_deps=install_build_deps, plot=plot,
                     arch=arch, cuda=cuda, vllm_src=vllm_src, checkout_dir=checkout_dir, dist_dir=dist_dir,
                     max_jobs=max_jobs, nvcc_threads=nvcc_threads, mem_per_job_gb=mem_per_job_gb,
                     build_type=build_type, compile_cache=compile_cache, mirror=mirror, vllm_repo=repo,
                     vllm_ref=ref, wheel_limit_mb=_number("limit-mb", limit_mb, float) or None,
                     dist_scheduler=dist_scheduler, dist_token_file=dist_token_file)


@forge_task(name="check-size", help={**_help("dist_dir", "limit_mb"),
                                     "wheel": "the wheel to check (default: the newest in dist/)",
                                     "image": "check this image instead: total, size over its runtime base, "
                                              "largest layers",
                                     "budget": "with --image: fail when the image is larger than this many GB",
                                     "docker": "with --image: the docker client to use",
                                     "dry_run": FLAG_HELP["dry_run"],
                                     "plot": "with --image: also draw the image as a stacked bar (base and each part) "
                                             "beside reference bars into this .png or .svg",
                                     "reference": "with --plot: a reference bar LABEL=GB (repeatable; default: the "
                                                  "field report's 40 GB single-stage and 28.4 GB multi-stage images)"},
            iterable=["reference"])
def check_size(ctx, wheel=None, dist_dir=None, limit_mb=None, image=None, budget=None, docker=None, dry_run=False,
               plot=None, reference=None):
    """Check the wheel against its size limit (vLLM's own, 400 MB by default), or an image with --image."""
    if (plot or reference) and not image:
        raise ForgeError("--plot and --reference draw an image's size: they need --image",
                         "pass --image TAG, or drop --plot/--reference")
    references = [_figure_data.parse_reference(text) for text in reference or []]
    if plot:
        _figures.check_plot_path(plot)
    settings = _settings(ctx, dist_dir=dist_dir)
    options = pipelines.Options(wheel=Path(wheel) if wheel else None, limit_mb=_number("limit-mb", limit_mb, float),
                                image=image or "", budget_gb=_number("budget", budget, float), dry_run=dry_run)
    options.bake.docker = docker
    state = _run(pipelines.build_pipeline(settings, ["check-size-image" if image else "check-size"], options))
    result = next(iter(state.results.values()), None)
    if plot and result is not None:
        _plot(_figure_data.size_figure(result.to_dict(), references), plot)
    if not dry_run and not result.ok:
        raise Exit(code=1)


_PLAN_FLAGS = ("repo", "ref", "vllm_src", "checkout_dir", "arch", "cuda", "base", "max_jobs", "nvcc_threads",
               "mem_per_job_gb", "build_type", "compile_cache", "dist_dir", "mirror", "dist_scheduler",
               "dist_token_file")


@forge_task(help=_help(*_PLAN_FLAGS))
def plan(ctx, repo=None, ref=None, vllm_src=None, checkout_dir=None, arch=None, cuda=None, base=None, max_jobs=None,
         nvcc_threads=None, mem_per_job_gb=None, build_type=None, compile_cache=None, dist_dir=None, mirror=None,
         dist_scheduler=None, dist_token_file=None):
    """Show the resolved configuration (and where each value came from) and every step's exact commands."""
    settings = _settings(ctx, vllm_repo=repo, vllm_ref=ref, vllm_src=vllm_src, checkout_dir=checkout_dir, arch=arch,
                         cuda=cuda, base=base, max_jobs=max_jobs, nvcc_threads=nvcc_threads,
                         mem_per_job_gb=mem_per_job_gb, build_type=build_type, compile_cache=compile_cache,
                         dist_dir=dist_dir, mirror=mirror, dist_scheduler=dist_scheduler,
                         dist_token_file=dist_token_file)
    table = Table("setting", "value", "from", title="Resolved configuration")
    for name, value in settings.config.as_dict().items():
        table.add_row(name, escape(mask_urls(str(value))), settings.rc.source(name))
    console.print(table)
    recipe = settings.recipe
    console.print(f"image: {f'CUDA {recipe.cuda} ({recipe.cuda_source})' if recipe else 'not ready (see bake)'}; "
                  "a local build: the CUDA of the nvcc found (see build-wheel)", soft_wrap=True)
    applied = settings.mirror
    rows = [row for row in applied.rows() if row[1] != row[2]]
    console.print(f"mirror {applied.profile.name}: {escape(applied.profile.description)}"
                  + ("" if rows else ", nothing rewritten"), soft_wrap=True)
    for what, old, new in rows:
        console.print(f"  {what}: {escape(mask_urls(old))} [dim]->[/] {escape(mask_urls(new))}", soft_wrap=True)
    _print_farm(settings.config)
    names = ("clone", "use-existing-torch", "build-wheel", "check-size", "bake", "check-size-image", "inspect")
    pipeline = pipelines.build_pipeline(settings, names, pipelines.Options(dry_run=True, reuse_checkout=True),
                                        lenient=True)
    for step in pipeline.steps:
        _print_step(step)
    if not pipeline.ready:
        blocked = [step.title for step in pipeline.steps if step.error is not None]
        raise ForgeError(f"{len(blocked)} step(s) cannot run as configured: {', '.join(blocked)} (see above)",
                         "fix what each `not ready` line says")


def _print_farm(cfg) -> None:
    """`plan`: the farm builds would compile on (scheduler, servers it reports, toolchains), or why none."""
    from vllm_forge.build import farm

    dist = farm.DistSettings.from_config(cfg)
    if not dist.on:
        console.print("farm: none (dist_scheduler is empty): compiles run on this machine")
        return
    try:
        found = farm.plan_dist(dist, Path(cfg.cache_dir).expanduser() / "sccache-dist")
    except ForgeError as err:
        console.print(f"farm {escape(dist.scheduler)}: [yellow]not ready:[/] {escape(str(err))}", soft_wrap=True)
        return
    for note in found.notes():
        console.print(f"farm: {escape(note)}", soft_wrap=True)


@forge_task(help={"cuda": "show which archs this CUDA version can build"})
def archs(ctx, cuda=None):
    """List the GPU names this tool knows, their arch, and the CUDA versions that can build them."""
    release = releases.cuda_release(cuda)
    if release is not None:
        arch_tables.check_archs_for_cuda([], release)  # an unknown CUDA version: one line, not an empty table
    table = Table("GPU", "arch", "oldest CUDA", "newest CUDA", title="GPU names accepted by --arch")
    seen = set()
    for model in compat.GPU_MODELS.values():
        if model.name in seen:
            continue
        seen.add(model.name)
        sm = model.arch.sm
        if release is not None and not compat.compiles(release, sm):
            continue
        table.add_row(model.name, sm, str(compat.min_cuda_for(sm) or "-"), str(compat.max_cuda_for(sm) or "-"))
    console.print(table)


@forge_task(help={"no_docker": "skip the image steps (bake, serve, smoke test); without it, a demo that cannot run "
                               "them here says why and exits 1",
                  "arch": FLAG_HELP["arch"], "dist_dir": FLAG_HELP["dist_dir"]})
def demo(ctx, arch="12.0", dist_dir=None, no_docker=False):
    """The whole pipeline on the embedded miniature vLLM: clone, build, audit, check-size, then bake/serve/smoke."""
    from vllm_forge.source.minivllm import RELEASE_TAG, publish_minivllm

    started = time.monotonic()
    arch_tables.parse_arch_list(arch)  # a typo fails now, not after the clone
    cache = Path(resolve_config(ctx.config, {"dist_dir": dist_dir}).config.cache_dir).expanduser()
    repo_url = publish_minivllm(cache)
    console.print(f"embedded default project published at {repo_url}")
    # Next to the published repo: a checkout always belongs to the repo in the same cache.
    flags = dict(vllm_repo=repo_url, vllm_ref=RELEASE_TAG, vllm_src="", checkout_dir=str(cache / "demo" / "vllm"),
                 arch=arch, dist_dir=dist_dir)
    settings = _settings(ctx, **flags)
    pipeline = pipelines.build_pipeline(settings, pipelines.WHEEL_CHAIN, pipelines.Options(reuse_checkout=True))
    state = _run(pipeline)
    wheel = state.wheel
    from vllm_forge.audit.audit import audit_path

    # The archs column is what the wheel's kernels really are (its audit), not what was asked for.
    report = audit_path(wheel, [arch])
    sass = sorted({sm for f in report.files for sm in f.sass})
    verdicts = ", ".join(f"{name}: {'runs' if report.ok else 'NO KERNEL'}" for name in report.target_names)
    summary = Table("wheel", "MB", "SASS in the wheel", "verdict", "seconds", title="demo")
    summary.add_row(wheel.name, f"{wheel.stat().st_size / 2**20:.2f}", ", ".join(sass), verdicts,
                    f"{time.monotonic() - started:.1f}")
    console.print(summary)
    image, skipped = demo_image(ctx, flags) if not no_docker else ("", None)
    # What to do next, each working as printed: the demo's checkout is named, so the everyday tasks find it.
    where = f"--vllm-src {shlex.quote(str(settings.src))}"
    nexts = [f"invoke plan {where} --arch rtx5090", f"invoke audit {shlex.quote(str(wheel))} --arch rtx5090"]
    if image:
        nexts.append(serving.serve_line(image, miniature=True, gpus_here=0, port=18000))
    else:
        ptx_dist = shlex.quote(str(Path(settings.config.dist_dir) / "ptx"))
        nexts.append(f"invoke build-wheel {where} --arch 12.0+PTX --dist-dir {ptx_dist}")
    for line in nexts:
        _print_copyable(f"next: {line}")
    if not state.results["check-size"].ok:
        raise Exit(code=1)
    if skipped:  # less than the README promises without --no-docker: say which steps and why, exit non-zero
        raise skipped
# ---- end core pipeline ----

# ---- audit (issue 3) ----
import contextlib  # noqa: E402

kernel_audit = _lazy("vllm_forge.audit.audit")

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
    "plot": "also draw a file x GPU map of the verdicts, with kernel-group counts, into this .png or .svg",
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
          no_torch=False, max_inflate="8G", torch_cuda="", plot=None):
    """Prove every CUDA extension runs on the target GPU: SASS, PTX JIT or no kernel, per file."""
    if bool(path) == bool(image):
        raise ForgeError("give either PATH or --image IMAGE", "e.g. invoke audit dist/ --arch 12.0")
    if plot:
        _figures.check_plot_path(plot)
    archs = list(arch or [])
    if not archs:
        archs = [resolve_config(ctx.config, {}).config.arch]
    torch_cuda = releases.cuda_release(torch_cuda)
    # --json is read by programs: no spinner thread next to the scan.
    with contextlib.nullcontext() if json else console.status("reading device code..."):
        if image:
            report = kernel_audit.audit_image(image, archs, require=require or [], docker=docker, via=via,
                                              torch=not no_torch, torch_cuda=torch_cuda)
        else:
            report = kernel_audit.audit_path(path, archs, require=require or [], torch=not no_torch,
                                             max_inflate=max_inflate, torch_cuda=torch_cuda)
    _record("audit", report.to_dict())
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
    if plot:
        _plot(_figure_data.audit_figure(report.to_dict()), plot, json=json)
    if not report.ok:
        raise Exit(code=1)


def _torch_runs_everywhere(torch: kernel_audit.TorchArchs) -> bool:
    return all(v in kernel_audit.RUNS for v in torch.verdict.values())
# ---- end audit ----

# ---- doctor / nccl (issue 5) ----
from invoke import Argument  # noqa: E402

_LEVEL_STYLE = {"pass": "green", "info": "dim", "warn": "yellow", "fail": "bold red"}


def _print_findings(title: str, findings) -> None:
    # long fixes and messages fold inside their column at any terminal width instead of ending in "…"
    table = Table(title=escape(title), show_lines=False)
    table.add_column("", no_wrap=True)
    table.add_column("check", overflow="fold")
    table.add_column("finding", overflow="fold", ratio=3)
    table.add_column("fix", overflow="fold", ratio=3)
    for f in findings:
        style = _LEVEL_STYLE.get(f.level, "")
        fix = escape(f.fix) if f.level in ("warn", "fail") else ""
        if f.source and f.level in ("warn", "fail"):
            fix += f" [dim](see {escape(f.source)})[/]"
        table.add_row(f"[{style}]{f.level.upper()}[/]", f.check, escape(f.message), fix)
    console.print(table)


def _print_root_cause(cause) -> None:
    """The one headline that goes before the per-file tables: cause, evidence, fix, bandwidth."""
    style = _LEVEL_STYLE.get(cause.level, "")
    console.print(f"[{style}]ROOT CAUSE {cause.level.upper()}[/]: {escape(cause.cause)}")
    if line := cause.bandwidth_line():
        console.print(f"  [bold]bandwidth[/]: {escape(line)}")
    for evidence in cause.evidence:
        console.print(f"  [bold]evidence[/]: {escape(evidence)}")
    if cause.fix:
        console.print(f"  [bold]fix[/]: {escape(cause.fix)}")


@forge_task(help={"image": "check this image's Python, torch, NCCL and vLLM (docker run) instead of this Python",
                  "arch": "GPUs to judge for when none is visible: rtx5090, 12.0, h100 ...",
                  "json": "print the report as JSON",
                  "host_file": "judge a recorded host bundle (== query / == topo sections) instead of this machine"})
def doctor(ctx, image="", arch="", json=False, host_file=""):
    """Name what will break vLLM on these GPUs (driver, torch archs, audit, NCCL, topology) and the fix."""
    import json as json_mod

    from vllm_forge.nccl import doctor as doctor_mod

    if host_file and not Path(host_file).is_file():
        raise ForgeError(f"--host-file {host_file} is not a file",
                         "pass a host bundle written on the GPU host (see docs/nccl.md)")
    host_text = Path(host_file).read_text(errors="replace") if host_file else None
    docker = _engine_docker() if image else _plain_docker()  # a down engine: one line, not "no image"
    report = doctor_mod.run_doctor(image=image, arch=arch, host_text=host_text, docker=docker)
    if json:
        print(json_mod.dumps(report.to_dict(), indent=2, default=str))
    else:
        _print_root_cause(doctor_mod.root_cause(report))
        _print_findings(f"doctor{' ' + image if image else ''}: {report.level.upper()}", report.findings)
    if report.level == "fail":
        raise Exit(code=1)


NCCL_PLOT_HELP = ("also draw busbw against message size (the link model's expected busbw and the healthy band "
                  "beside it) into this .png or .svg")
NCCL_OVERLAY_HELP = ("with --plot: lay another run over it: its JSON (--json, or its record under build/reports) or "
                     "its NCCL outputs (files, a directory), diagnosed on their own (repeatable)")


def _nccl_overlays(plot, overlay) -> list[tuple[str, dict]]:
    """--overlay's diagnoses, read before the run (a typo fails first)."""
    from vllm_forge.nccl import nccl_logs

    if overlay and not plot:
        raise ForgeError("--overlay lays runs over the --plot figure, and no --plot was given",
                         "add --plot busbw.svg, or drop --overlay")
    if plot:
        _figures.check_plot_path(plot)
    return [(_figure_data.overlay_name(spec), nccl_logs.diagnosis_for(spec)) for spec in overlay or []]


@forge_task(name="nccl-test", help={
    "image": "run inside this image (docker run --gpus all --ipc=host)",
    "gpus": "GPUs (ranks) to use; default (or 0): all that nvidia-smi lists",
    "sizes": "MIN:MAX message sizes, doubling (default 8:128M)",
    "out": "directory for the output table and NCCL_DEBUG_FILE logs (default build/nccl-test)",
    "runner": "auto (all_reduce_perf when found, else torch.distributed), nccl-tests or torch",
    "binary": "the all_reduce_perf to run",
    "build_nccl_tests": "build nccl-tests (make MPI=0 NCCL_HOME=...) from this NVIDIA/nccl-tests checkout first",
    "nccl_home": "NCCL to build nccl-tests against (default: pip's nvidia-nccl, else /usr)",
    "gpu_cap": "compute capabilities to build nccl-tests for, e.g. 9.0,12.0 (default: nvcc's defaults)",
    "dry_run": "print the commands only",
    "json": "print the parsed result and verdicts as JSON",
    "plot": NCCL_PLOT_HELP, "overlay": NCCL_OVERLAY_HELP}, iterable=["overlay"])
def nccl_test(ctx, image="", gpus=None, sizes="8:128M", out="build/nccl-test", runner="auto", binary="",
              build_nccl_tests="", nccl_home="", gpu_cap="", dry_run=False, json=False, plot=None, overlay=None):
    """All-reduce across the GPUs with NCCL_DEBUG=INFO captured, parsed and judged against the link."""
    import json as json_mod

    from vllm_forge.nccl import nccl_logs
    from vllm_forge.nccl import nccl_test as nccl_test_mod

    overlays = _nccl_overlays(plot, overlay)
    if build_nccl_tests:
        home = Path(nccl_home) if nccl_home else nccl_test_mod.find_nccl_home()
        caps = [c for c in gpu_cap.replace(",", " ").split() if c]
        commands = nccl_test_mod.plan_nccl_tests_build(Path(build_nccl_tests), home, capabilities=caps or None)
        for command in commands:
            console.print(f"  [dim]# {escape(command.why)}[/]\n  {escape(command.shell())}", soft_wrap=True)
        if not dry_run:
            binary = str(nccl_test_mod.build_nccl_tests(commands))
            console.print(f"[green]built[/] {binary}")
    count = _number("gpus", gpus) or nccl_test_mod.count_gpus() or 1
    plan = nccl_test_mod.plan_run(gpus=count, sizes=sizes, out_dir=Path(out), runner=runner,
                                  binary=binary or None, image=image)
    for note in plan.notes:
        console.print(f"[dim]# {escape(note)}[/]", soft_wrap=True)
    console.print(f"[bold]{plan.runner}[/]: {escape(plan.command.shell())}", soft_wrap=True)
    if dry_run:
        return
    outcome, seconds = _run_streaming(f"all-reduce on {count} GPU(s)", lambda on_line: nccl_test_mod.run_plan(
        plan, on_line=on_line))
    result = json_mod.loads(json_mod.dumps(outcome.to_dict(), default=str))
    _record("nccl", {**result, "overlays": overlays} if overlays else result)
    if json:
        print(json_mod.dumps(result, indent=2))
    else:
        console.print(escape(plan.output_file.read_text(errors="replace")), soft_wrap=True, highlight=False)
        _print_root_cause(outcome.root_cause)
        for report in outcome.reports:
            _print_findings(f"{report.path} [{report.kind}]", report.findings)
        console.print(f"outputs in {plan.out_dir} [dim]({seconds:.1f}s)[/]")
    if plot:
        _plot(_figure_data.nccl_figure(result, overlays), plot, json=json)
    if nccl_logs.worst_level([f for r in outcome.reports for f in r.findings]) == "fail":
        raise Exit(code=1)


def _positional_count(argv: list[str], names: set[str], value_flags: set[str]) -> int:
    """How many positional words follow the task name in ``argv`` (flags and their values left out; a
    ``--`` ends the task's words, as it ends invoke's parsing)."""
    start = next((i for i, token in enumerate(argv) if token in names), None)
    if start is None:
        return 0
    count, skip = 0, False
    for token in argv[start + 1:]:
        if skip:
            skip = False
        elif token == "--":
            break
        elif token.startswith("-"):
            skip = "=" not in token and token in value_flags
        else:
            count += 1
    return count


class FilesTask(Task):
    """A task whose first positional argument takes every file on the command line.

    invoke gives a task a fixed number of positional arguments, so `invoke nccl-diagnose a.log b.log`
    (what a shell glob expands to) would stop at b.log with "No idea what 'b.log' is!". Through invoke's
    public Task API (``@task(klass=...)``, ``get_arguments``) this task declares one more positional
    argument per extra word the command line holds; the body receives them as ``files_2``, ``files_3``...
    Words after a standalone ``--`` reach the body as ``ctx.remainder`` (invoke's documented remainder)."""

    def get_arguments(self, ignore_unknown_help=None):
        args = [a for a in super().get_arguments(ignore_unknown_help) if a.name != "more_files"]
        argv = sys.argv if Path(sys.argv[0]).name in ("invoke", "inv") or Path(sys.argv[0]).parent.name == "invoke" \
            else []
        names = {self.name, *self.aliases}
        flags = {("--" if len(n) > 1 else "-") + n for a in args if a.takes_value and not a.positional for n in a.names}
        extra = max(0, _positional_count(argv, names, flags) - 1)
        positional = [a for a in args if a.positional]
        more = [Argument(name=f"files_{i}", positional=True) for i in range(2, extra + 2)]
        return positional + more + [a for a in args if not a.positional]


@forge_task(name="nccl-diagnose", positional=["files"], klass=FilesTask, help={
    "files": "NCCL debug logs, nccl-tests outputs, nvidia-smi outputs, or directories: several as separate "
             "arguments (logs/*.log), quoted and separated by spaces or commas, or after --",
    "json": "print the root cause and the reports as JSON",
    "gpu_cap": "compute capability of the GPUs when the files do not say (e.g. 12.0)",
    "plot": NCCL_PLOT_HELP, "overlay": NCCL_OVERLAY_HELP}, iterable=["overlay"])
def nccl_diagnose(ctx, files=None, json=False, gpu_cap="", plot=None, overlay=None, **more_files):
    """Read NCCL logs / nccl-tests outputs / topo files: one root cause first, then each file's findings."""
    import json as json_mod

    from vllm_forge.nccl import nccl_logs

    overlays = _nccl_overlays(plot, overlay)
    words = [files or ""] + [more_files[k] for k in sorted(more_files, key=lambda k: int(k.split("_")[1]))]
    words.append(getattr(ctx, "remainder", "") or "")
    paths, in_dirs = nccl_logs.input_paths(" ".join(w for w in words if w))
    # the files may come from another host: only their own "set by environment" lines count, not this shell's
    context = nccl_logs.Context(gpu_caps=[gpu_cap] if gpu_cap else [])
    reports = nccl_logs.diagnose_files(paths, context, optional=in_dirs)
    nccl_logs.check_evidence(reports)
    cause = nccl_logs.find_root_cause(reports, context)
    diagnosis = json_mod.loads(json_mod.dumps(nccl_logs.report_dict(reports, cause), default=str))
    _record("nccl", {**diagnosis, "overlays": overlays} if overlays else diagnosis)
    if json:
        print(json_mod.dumps(diagnosis, indent=2))
    else:
        _print_root_cause(cause)
        for report in reports:
            _print_findings(f"{report.path} [{report.kind}]: {report.level.upper()}", report.findings)
    if plot:
        _plot(_figure_data.nccl_figure(diagnosis, overlays), plot, json=json)
    if any(r.level == "fail" for r in reports):
        raise Exit(code=1)
# ---- end doctor / nccl ----

# ---- image (issue 9: bake, inspect, check-size --image, serve, stop) ----

bake_requests = _lazy("vllm_forge.image.request")
docker_clients = _lazy("vllm_forge.image.docker_client")
image_facts = _lazy("vllm_forge.image.inspection")
image_jit = _lazy("vllm_forge.image.jit")
serving = _lazy("vllm_forge.serve.serve")

IMAGE_HELP = {
    "docker": "docker client (default: $VLLM_FORGE_DOCKER, else one with buildx, else one with built-in BuildKit)",
    "base_image": "build base image, used as is with its own torch (default: the one --base picks)",
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
    "non_root": "runtime image runs vLLM as an unprivileged user, uid 2000 (invoke.yaml: non_root: true)",
}


def _plain_docker(docker=None) -> str:
    """For non-build commands any client talks to the engine; prefer the one bake would use."""
    return docker or os.environ.get("VLLM_FORGE_DOCKER") or "docker"


def _engine_docker(docker=None) -> str:
    """``_plain_docker``, after checking that it exists and its engine answers (one clear line if not)."""
    path = _plain_docker(docker)
    docker_clients.check_engine(path)
    return path


def _bake_task(chain: bool, doc: str):
    """`bake` (clone first when there is no checkout) and `image` (the whole chain) share one flag set."""

    def body(ctx, arch=None, cuda=None, vllm_src=None, checkout_dir=None, base=None, base_image=None,
             runtime_image=None,
             target="runtime", tag="", dockerfile="forge", docker=None, max_jobs=None, nvcc_threads=None,
             build_type=None, compile_cache=None, dist_dir=None, ca_bundle=None, netrc=None, index_url="",
             extra_index_url="", pytorch_index="", platform="", push=False, builder="", cache_from=None,
             cache_to=None, no_cache=False, build_arg=None, limit_mb=None, no_audit=False, dry_run=False,
             mirror=None, repo=None, ref=None, force=False, budget=None, standin=False, no_jit=False,
             non_root=False, dist_scheduler=None, dist_token_file=None):
        settings = _settings(ctx, writes=not dry_run, arch=arch, cuda=cuda, vllm_src=vllm_src,
                             checkout_dir=checkout_dir, base=base,
                             base_image=base_image, runtime_image=runtime_image, max_jobs=max_jobs,
                             nvcc_threads=nvcc_threads, build_type=build_type, compile_cache=compile_cache,
                             dist_dir=dist_dir, mirror=mirror, vllm_repo=repo, vllm_ref=ref,
                             standin=True if standin else None, non_root=non_root or None,
                             dist_scheduler=dist_scheduler, dist_token_file=dist_token_file)
        bake_options = pipelines.BakeOptions(
            target=target, tag=tag, dockerfile=dockerfile, docker=docker,
            ca_bundle=Path(ca_bundle) if ca_bundle else None, netrc=Path(netrc) if netrc else None,
            index_url=index_url, extra_index_url=extra_index_url, pytorch_index=pytorch_index, platform=platform,
            push=push, builder=builder, cache_from=list(cache_from or []), cache_to=list(cache_to or []),
            no_cache=no_cache, build_args=bake_requests.parse_build_args(build_arg or []),
            limit_mb=_number("limit-mb", limit_mb, float), audit=not no_audit, jit=not no_jit)
        options = pipelines.Options(dry_run=dry_run, force=force, reuse_checkout=chain, bake=bake_options,
                                    budget_gb=_number("budget", budget, float))
        if chain:
            names = pipelines.IMAGE_CHAIN if target == "runtime" else ("clone", "use-existing-torch", "bake")
        else:
            names = ("clone", "bake") if pipelines.needs_clone(settings) else ("bake",)
        pipeline = pipelines.build_pipeline(settings, names, options)
        state = _run(pipeline)
        if dry_run:
            return
        if chain:
            _summary(pipeline, state)
            size = state.results.get("check-size-image")
            if size is not None and not size.ok:
                raise Exit(code=1)
        elif state.image and target == "runtime":
            _print_next_after_bake(state.image, miniature=_on_standins(settings))

    body.__doc__ = doc
    return body


def _on_standins(settings) -> bool:
    from vllm_forge.image.standin_images import RUNTIME_STANDIN

    return settings.config.runtime_image == RUNTIME_STANDIN


def _print_next_after_bake(image: str, *, miniature: bool) -> None:
    """What to run next, each line as it works here (a real image's serve line only where a GPU is)."""
    from vllm_forge.nccl.nccl_test import count_gpus

    quoted = shlex.quote(image)
    nexts = [f"invoke check-size --image {quoted}", f"invoke inspect {quoted}"]
    serve_line = serving.serve_line(image, miniature=miniature, gpus_here=count_gpus())
    for line in nexts + ([serve_line] if serve_line else []):
        _print_copyable(f"next: {line}")
    if not serve_line:
        _print_copyable(f"on a GPU host: invoke serve {serving.SMALL_MODEL} --image {quoted}")


_BAKE_HELP = {**_help("arch", "cuda", "base", "vllm_src", "checkout_dir", "max_jobs", "nvcc_threads", "build_type",
                      "compile_cache", "dist_dir", "dry_run", "limit_mb", "no_audit", "mirror", "force",
                      "dist_scheduler", "dist_token_file"),
              "repo": FLAG_HELP["repo"] + " (cloned first when there is no checkout)",
              "ref": FLAG_HELP["ref"] + " (cloned first when there is no checkout)",
              "budget": "image chain: fail when the image is larger than this many GB",
              "no_jit": "no JIT toolchain (nvcc, g++) in the runtime image and no JIT check: only for models "
                        "that need no run-time kernel compile (the label org.vllm-forge.jit records it)",
              "standin": "bake on the TEST-ONLY stand-in bases (built locally when missing; CUDA 13.0): for "
                         "iterating on the Dockerfile without NGC, not for serving real models", **IMAGE_HELP}
bake = forge_task(name="bake", help=_BAKE_HELP, iterable=["build_arg", "cache_from", "cache_to"],
                  auto_shortflags=False)(_bake_task(
    False, "Bake vLLM into an image: multi-stage, layer- and compile-cached, checked and audited inside the build."))
image = forge_task(name="image", help=_BAKE_HELP, iterable=["build_arg", "cache_from", "cache_to"],
                   auto_shortflags=False)(_bake_task(
    True, "The image chain: clone (or reuse) → use-existing-torch → bake → check-size --image → inspect, "
          "with a summary."))


@forge_task(help={"image": "image tag or id", "docker": IMAGE_HELP["docker"]}, auto_shortflags=False)
def inspect(ctx, image, docker=None):
    """Show an image's build labels (vLLM ref/commit, archs, CUDA, bases, date, vllm-forge version) and size."""
    _print_labels(image_facts.inspect_image(_engine_docker(docker), image))


def _print_labels(info: dict) -> None:
    size = info["size"] / image_facts.GB
    title = f"{', '.join(info['tags']) or info['id'][7:19]} ({size:.2f} GB, {info['id'][7:19]})"
    table = Table("label", "value", title=escape(title))
    for name, value in sorted(info["labels"].items()):
        table.add_row(name, escape(value))
    console.print(table)
    console.print(f"runs as: {escape(info['user'] or 'root')} (image USER)")
    if not info["labels"]:
        console.print("[yellow]no labels: not an image baked by vllm-forge[/]")
    # JIT readiness, collected inside the image (image/jit.py image_jit_facts, doctor_inside.collect_jit).
    ready, line = image_jit.jit_summary(image_jit.image_jit_facts(docker_clients.default_docker(), info["id"]),
                                        info["labels"].get("org.vllm-forge.sm", "").split(","))
    console.print(f"[{'green' if ready else 'yellow'}]JIT[/] {escape(line)}")


def _print_image_size(report) -> None:
    colour = "green" if report.ok else "red"
    over = (f", {report.over_base / image_facts.GB:.2f} GB over its base {report.base}" if report.over_base is not None
            else (f" (base {report.base} is not present locally)" if report.base else ""))
    budget = f" (budget {report.budget_gb:g} GB)" if report.budget_gb else ""
    console.print(f"[{colour}]{report.image}: {report.size / image_facts.GB:.2f} GB[/]{over}{budget}")
    parts = Table("MB", "part", title=f"over the base {report.base or '(unknown)'}")
    for name, size in report.parts.items():
        parts.add_row(f"{size / 1e6:.1f}", name)
    console.print(parts)
    table = Table("MB", "instruction", title="largest layers")
    for layer in report.layers:
        table.add_row(f"{layer.size / 1e6:.1f}", escape(layer.instruction[:140]))
    console.print(table)


SERVE_NAME = "vllm-forge-serve"  # vllm_forge/serve/serve.py DEFAULT_NAME (kept literal: signatures load no module)
SERVE_HELP = {
    "image": "image to serve (e.g. the tag `invoke bake` printed)",
    "local": "serve the vLLM installed in this Python instead of a container",
    "model": "model to serve (a Hugging Face id or a path)",
    "tp": "tensor-parallel size (GPUs per replica; default 1)",
    "port": "port published on the host (default 8000)",
    "host": "host address to publish on (default 127.0.0.1; 0.0.0.0 needs an API key or --insecure)",
    "gpus": "all, none (CPU-only stand-ins) or indexes like 0,1",
    "api_key": "refused: a key on the command line is visible in ps; use $VLLM_API_KEY or --api-key-file",
    "api_key_file": "file whose first line is the API key the server requires (default: $VLLM_API_KEY)",
    "insecure": "allow --host 0.0.0.0 without an API key",
    "name": "container name (default vllm-forge-serve)",
    "timeout": "seconds to wait for /health (default 600)",
    "shm_size": "use --shm-size SIZE instead of --ipc=host",
    "max_model_len": "vLLM --max-model-len: context length in tokens (default: the model's own; less KV cache)",
    "gpu_memory_utilization": "vLLM --gpu-memory-utilization: fraction of each GPU's memory vLLM takes, weights "
                              "and KV cache (vLLM's default 0.92 takes nearly the whole GPU, whatever the model)",
    "served_model_name": "vLLM --served-model-name: the model name clients send (default: --model)",
    "vllm_args": "more vLLM server flags, one quoted string: --vllm-args \"--enforce-eager --dtype bfloat16\" "
                 "(also: words after `--`, and invoke.yaml forge.serve.vllm_args)",
    "compose": "write the equivalent docker compose file instead of starting anything",
    "compose_file": "where --compose writes (default build/serve/compose.yaml)",
    "no_smoke": "do not call /v1/models and a chat completion after /health",
    "docker": "docker client (default: $VLLM_FORGE_DOCKER or docker)",
    "dry_run": "print the docker run command, start nothing",
}


def _serve_request(ctx, model, image, local, tp, port, host, gpus, api_key, insecure, name, shm_size,
                   max_model_len, gpu_memory_utilization, served_model_name, vllm_args) -> serving.ServeRequest:
    """Flags over invoke.yaml's forge.serve over vLLM's defaults; pass-through flags: invoke.yaml's,
    then --vllm-args, then the words after `--` (vLLM takes the last of a repeated flag)."""
    settings = serving.serve_settings(ctx.config)
    remainder = serving.split_vllm_args(getattr(ctx, "remainder", "") or "", "the words after --")

    def pick(flag, key, kind, default):  # the command line, else invoke.yaml, else vLLM's own default
        try:
            return _number(key.replace("_", "-"), flag if flag not in (None, "") else settings.get(key), kind, default)
        except ForgeError as err:
            raise ForgeError(err.problem, f"pass e.g. --{key.replace('_', '-')} "
                             f"{4096 if kind is int else 0.5}") from None

    return serving.ServeRequest(
        model=model, image=image, local=local, tp=_number("tp", tp, default=1),
        port=_number("port", port, default=8000), host=host, gpus=gpus,
        api_key=api_key, insecure=insecure,
        name=name, shm_size=shm_size, max_model_len=pick(max_model_len, "max_model_len", int, 0),
        gpu_memory_utilization=pick(gpu_memory_utilization, "gpu_memory_utilization", float, 0.0),
        served_model_name=served_model_name or settings.get("served_model_name") or "",
        extra_args=settings.get("vllm_args", []) + serving.split_vllm_args(vllm_args) + remainder)


@forge_task(help=SERVE_HELP, positional=["model"], auto_shortflags=False)
def serve(ctx, model, image="", local=False, tp=None, port=None, host="127.0.0.1", gpus="all", api_key=None,
          api_key_file=None, insecure=False, name=SERVE_NAME, timeout=None, shm_size="", max_model_len=None,
          gpu_memory_utilization=None, served_model_name=None, vllm_args="", compose=False,
          compose_file="build/serve/compose.yaml", no_smoke=False, docker=None, dry_run=False):
    """Start the OpenAI server (container or --local) with vLLM's flags, wait for /health, smoke-test it."""
    if api_key is not None:
        raise serving.refuse_key_on_command_line()
    request = _serve_request(ctx, model, image, local, tp, port, host, gpus, serving.read_api_key(api_key_file),
                             insecure, name, shm_size, max_model_len, gpu_memory_utilization, served_model_name,
                             vllm_args)
    docker_path = _plain_docker(docker)
    if compose:
        path = serving.write_compose_file(request, REPO_ROOT / compose_file)
        key = "export VLLM_API_KEY=...; " if request.api_key else ""  # the file names it, never holds it
        console.print(f"[green]wrote[/] {path}: {key}docker compose -f {path} up -d")
        return
    options = pipelines.Options(dry_run=dry_run, serve=request, smoke=not no_smoke,
                                serve_timeout_s=_number("timeout", timeout, float, 600.0))
    options.bake.docker = docker_path
    _run(pipelines.build_pipeline(_settings(ctx), ["serve"], options))
    if dry_run:
        return
    console.print(f"stop it with: invoke stop{'' if name == SERVE_NAME else ' --name ' + name}")


@forge_task(help={"name": SERVE_HELP["name"], "docker": SERVE_HELP["docker"]}, auto_shortflags=False)
def stop(ctx, name=SERVE_NAME, docker=None):
    """Stop and remove what `invoke serve` started (a --local server, else the container)."""
    if (serving.LOCAL_STATE_DIR / f"{serving.check_name(name)}.pid").exists():  # a --local server: no Docker
        console.print(serving.stop(name, _plain_docker(docker)))
        return
    import shutil

    client = _plain_docker(docker)
    if not shutil.which(client):  # no Docker here: nothing of ours can be running in it
        console.print(f"nothing to stop: no local server named {name} ({serving.LOCAL_STATE_DIR / (name + '.pid')} "
                      f"does not exist) and no docker client ({client}) on this host")
        return
    console.print(serving.stop(name, _engine_docker(docker)))


def demo_image(ctx, flags: dict) -> tuple[str, ForgeError | None]:
    """`invoke demo`'s image steps: bake the checkout, serve it, smoke-test it, tear it down. Returns the image's
    tag, or "" and why the steps could not run here (the demo then ends non-zero saying so)."""
    from vllm_forge.image.standin_images import BUILD_STANDIN, RUNTIME_STANDIN

    docker = docker_clients.default_docker()
    skipped = "the demo did not bake, serve or smoke-test an image (its image steps)"
    if not docker_clients.engine_reachable(docker):
        return "", ForgeError(f"{skipped}: no Docker engine answers `{docker} info`",
                              "start one (the README's Docker section says how) and rerun, or pass --no-docker "
                              "to stop after the wheel", exit_code=1)
    settings = _settings(ctx, writes=True, **flags)
    recipe = settings.image_recipe()
    base, runtime = recipe.base_image, recipe.runtime_image
    if not (docker_clients.image_present(docker, base) and docker_clients.image_present(docker, runtime)):
        if not (docker_clients.image_present(docker, BUILD_STANDIN)
                and docker_clients.image_present(docker, RUNTIME_STANDIN)):
            return "", ForgeError(
                f"{skipped}: neither its bases ({base}, {runtime}) nor the TEST-ONLY stand-ins are in this engine",
                "build the stand-ins once, as root (`python3 -m vllm_forge.image.standin_images`: debootstrap, about 4 "
                f"minutes), or pull {base} and {runtime}, then rerun; or pass --no-docker", exit_code=1)
        console.print(f"[yellow]{base} / {runtime} are not here: baking on the TEST-ONLY stand-in images[/]",
                      soft_wrap=True)
        settings = _settings(ctx, writes=True, **flags, standin=True)
    name = "vllm-forge-demo"
    options = pipelines.Options(serve=serving.ServeRequest(model=serving.STANDIN_MODEL, port=18000, gpus="none",
                                                           name=name),
                                serve_timeout_s=120)
    serving.stop(name, docker)  # a container left by an interrupted demo
    try:
        return _run(pipelines.build_pipeline(settings, ("bake", "serve"), options)).image, None
    finally:
        serving.stop(name, docker)
# ---- end image ----

# ---- vLLM tree / offline deps (issue 10) ----
dep_fetcher = _lazy("vllm_forge.deps.fetch_deps")
dep_importer = _lazy("vllm_forge.deps.dep_import")
vllm_tree = _lazy("vllm_forge.source.vllm_tree")

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
    "from_": "PATH or NAME=PATH: import dependencies from a directory of them, a .tar/.tar.gz/.tar.xz, a git bundle, "
             "a dependency's directory, or a file --bundle wrote; never fetches (repeatable)",
    "bundle": "FILE (.tar, .tar.gz, .tar.xz): after fetching, write every dependency with its git data into it, "
              "for --from on a machine without GitHub",
    "force": "replace cache entries: an import over a different entry, a fetch over one that is not pinned",
    "max_size": "SIZE (8G, 500M): the most one import may unpack or copy (default 8G; never more than the free disk)",
}


@forge_task(name="inspect-tree", help={k: TREE_FLAG_HELP[k] for k in ("vllm_src", "checkout_dir", "cuda", "arch",
                                                                      "json")},
            iterable=["cuda"])
def inspect_tree(ctx, vllm_src=None, checkout_dir=None, cuda=None, arch=None, json=False):
    """Say what the checkout's vLLM version needs: script paths, env knobs, CUDA arch gate, wheel limit, git deps."""
    import json as json_mod

    tree = vllm_tree.inspect_tree(_settings(ctx, vllm_src=vllm_src, checkout_dir=checkout_dir).src)
    cudas = [releases.CudaRelease.parse(c) for c in cuda] if cuda else list(compat.VLLM_CUDAS)
    if json:
        print(json_mod.dumps(tree.as_dict(cudas), indent=2))
    else:
        console.print(f"[bold]{escape(tree.summary())}[/]", soft_wrap=True)
        limit = (f"wheel limit {tree.wheel_size_limit_mb} MB from {escape(tree.wheel_size_source)}"
                 if tree.wheel_size_limit_mb else f"no wheel limit in the checkout (vLLM's {tree.wheel_limit_mb()} MB "
                                                   "applies)")
        console.print(f"  version from {escape(tree.version_source)}; {limit}; Dockerfile {tree.dockerfile or '-'} "
                      f"({len(tree.dockerfile_args)} ARGs)", soft_wrap=True)
        console.print("  build knobs read: " + ", ".join(k for k in vllm_tree.BUILD_KNOBS if tree.reads(k)),
                      soft_wrap=True)
        table = Table("CUDA", "CUDA_SUPPORTED_ARCHS", title="arch gate (CMakeLists.txt)")
        for version in cudas:
            archs = tree.cuda_supported_archs(version)
            table.add_row(str(version), ";".join(archs) if archs is not None else "no gate")
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
                      f"{', '.join(str(c) for c in cudas)}[/]")


@forge_task(name="fetch-deps", help={**{k: TREE_FLAG_HELP[k] for k in (
    "vllm_src", "checkout_dir", "cache_dir", "github_proxy", "url_map", "mirror", "from_", "bundle", "force",
    "max_size")},
    "offline": "use the cache only, never the network; fail naming every missing pin with its URL",
    "dry_run": "list the dependencies, their pins, what the cache holds and what would be fetched or imported "
               "(submodules too); change nothing",
    "json": "print the environment that points the build at the cache, as JSON"}, iterable=["url_map", "from_"])
def fetch_deps(ctx, vllm_src=None, checkout_dir=None, cache_dir=None, github_proxy=None, url_map=None,
               offline=False, dry_run=False, json=False, mirror=None, from_=None, bundle=None, force=False,
               max_size=None):
    """Bring the git deps vLLM's CMake fetches (CUTLASS, flash-attention, ...) into the cache, for offline builds:
    fetched (git), imported from tarballs, directories or bundles (--from), or written to one bundle (--bundle)."""
    import json as json_mod

    from vllm_forge.audit.audit import parse_size

    settings = _settings(ctx, vllm_src=vllm_src, checkout_dir=checkout_dir, cache_dir=cache_dir, mirror=mirror)
    proxy = github_proxy or settings.mirror.github_proxy or None
    mapping = {}
    for item in url_map or []:
        if "=" not in item:
            raise ForgeError(f"--url-map {item!r} is not OLD=NEW",
                             "e.g. --url-map https://github.com/=https://git.example.com/github/")
        old, new = item.split("=", 1)
        mapping[old] = new
    imports = list(from_ or [])
    if imports and bundle:
        raise ForgeError("--from imports on the machine without GitHub, --bundle writes on the one with it",
                         "run `invoke fetch-deps --bundle FILE` where GitHub is reachable, then --from FILE here")
    limit = parse_size(max_size) if max_size not in (None, "") else dep_importer.DEFAULT_MAX_SIZE
    tree = vllm_tree.inspect_tree(settings.src)
    cache = Path(settings.config.cache_dir).expanduser()
    rewrites = dep_fetcher.url_rewrites(proxy, mapping)
    heading = (f"[bold]{escape(tree.summary().split(':')[0])}: {len(tree.git_deps)} git "
               f"dependenc{'y' if len(tree.git_deps) == 1 else 'ies'}[/] (cache {cache / 'deps'})")
    if imports:
        plan = dep_importer.plan_imports(tree, imports)
        if dry_run:
            console.print(heading)
            for source in plan.sources:
                console.print(f"  {source.dep.name} @ {dep_fetcher.short(source.dep.tag)}: would import "
                              f"{escape(source.describe())}", soft_wrap=True)
            _print_passed(plan.passed)
            _print_dep_states(tree, cache, rewrites, imported={s.dep for s in plan.sources})
            refused = [p for p in plan.passed if p.refused]
            if refused:
                raise dep_importer.refusal([dep_importer.Outcome(None, p.path, "refused", "", ForgeError(
                    f"{p.path} {p.why}", p.fix)) for p in refused])
            return
        outcomes, seconds = _run_streaming("importing dependencies", dep_importer.run_imports, plan, cache,
                                           force=force, max_size=limit)
        if not json:  # --json: stdout is the JSON alone, as for a fetch
            _print_passed([p for p in plan.passed if not p.refused])
            for outcome in outcomes:
                colour = {"imported": "green", "unchanged": "dim", "refused": "red"}[outcome.result]
                console.print(f"[{colour}]{escape(outcome.line)}[/]", soft_wrap=True)
            console.print(heading + f" [dim]({seconds:.1f}s)[/]")
            _print_dep_states(tree, cache, rewrites)
        failed = dep_importer.refusal(outcomes)
        if failed is not None:
            raise failed
        if offline:  # the one-line refusal naming every pin still missing
            dep_fetcher.fetch_deps(tree, cache, proxy, url_map=mapping, offline=True)
        if json:
            print(json_mod.dumps(dep_fetcher.deps_env(tree, cache), indent=2))
        return
    if dry_run:
        console.print(heading)
        for status in dep_fetcher.plan_fetch(tree, cache, proxy, mapping, force=force):
            state = (f"fetch from {escape(status.url)}" + (f" over {status.state.status}" if status.cached else "")
                     if status.fetch else escape(status.state.detail))
            how = dep_fetcher.override_for(tree, status.dep) or "[red]no local-copy override[/]"
            submodules = dep_fetcher.submodules_planned(status.dep) if status.fetch else \
                dep_fetcher.submodules_recorded(cache, status.dep)
            console.print(f"  {status.dep.name} @ {status.dep.tag}: {state} -> {status.path.name}  [dim]{how}[/]",
                          soft_wrap=True)
            if submodules:
                console.print(f"    [dim]{escape(submodules)}[/]", soft_wrap=True)
        if bundle:
            console.print(f"  then write every dependency, with its git data, to {Path(bundle).expanduser()}")
        return
    env, seconds = _run_streaming("fetching dependencies", dep_fetcher.fetch_deps, tree, cache, proxy,
                                  url_map=mapping, offline=offline, force=force)
    if bundle:
        manifest, written = _run_streaming("writing the bundle", dep_importer.write_bundle, tree, cache, bundle)
        out = Path(bundle).expanduser().absolute()
        said = (f"[green]wrote {out}[/] ({out.stat().st_size / (1 << 20):.0f} MiB, {len(manifest['deps'])} "
                f"dependencies with their git data) [dim]({written:.1f}s)[/]: take it to the machine without GitHub "
                f"and run `invoke fetch-deps --from {out.name}` there")
        (err_console if json else console).print(said, soft_wrap=True)  # --json: stdout is the JSON alone
    if json:
        print(json_mod.dumps(env, indent=2))
        return
    console.print(heading + f" [dim]({seconds:.1f}s)[/]")
    _print_dep_states(tree, cache, rewrites)
    console.print("the build reads them from:")
    for name, value in env.items():
        console.print(f"  {name}={escape(value)}", soft_wrap=True)


def _print_passed(passed) -> None:
    for item in passed:
        colour = "red" if item.refused else "dim"
        console.print(f"[{colour}]{'refused' if item.refused else 'not imported'}: {escape(str(item.path))} "
                      f"{escape(item.why)}{'; ' + escape(item.fix) if item.fix else ''}[/]", soft_wrap=True)


def _print_dep_states(tree, cache: Path, rewrites, imported=()) -> list:
    """One line per dependency (its status and why) and what it took of its submodules, then the pins still
    missing with their URL; the missing dependencies. Those in ``imported`` (a dry run's) are left out."""
    colours = {"pinned": "green", "unverified": "yellow", "substitute": "red", "missing": "red"}
    missing = []
    for dep in tree.git_deps:
        if dep in imported:
            continue
        state = dep_fetcher.dep_state(cache, dep)
        colour = colours[state.status]
        console.print(f"  {dep.name} @ {dep_fetcher.short(dep.tag)}: [{colour}]{escape(state.detail)}[/]",
                      soft_wrap=True)
        submodules = dep_fetcher.submodules_recorded(cache, dep) if state.status != "missing" else ""
        if submodules:
            console.print(f"    [dim]{escape(submodules)}[/]", soft_wrap=True)
        if state.status == "missing":
            missing.append(dep)
    if missing:
        pins = dep_fetcher.missing_pins(missing, rewrites)
        console.print(f"[yellow]still missing ({len(missing)}):[/] {escape(pins)}. To bring them: "
                      f"{escape(dep_fetcher.BRING_THEM)}", soft_wrap=True)
    return missing


# ---- end vLLM tree ----

# ---- report (issue 30) ----
@forge_task(help={"out": "directory the page goes to, as index.html (default reports/)",
                  "records": "directory of recorded runs to read (default build/reports, or $VLLM_FORGE_RECORD_DIR)"})
def report(ctx, out="reports", records=""):
    """One self-contained HTML page of the last recorded runs: plan, steps and times, build time, audit map,
    image size, NCCL curve."""
    from vllm_forge.report import report_html

    console.print(f"[green]wrote[/] {report_html.write_report(Path(records) if records else None, Path(out))}")
# ---- end report ----

# ---- build farm: sccache-dist (issue 31) ----
farms = _lazy("vllm_forge.build.farm")

FARM_HELP = {
    "scheduler": "the farm's scheduler URL, http://HOST:10600 (default: dist_scheduler)",
    "listen_scheduler": "HOST:PORT the scheduler serves on, which servers and builds reach (default "
                        "127.0.0.1:10600; 0.0.0.0:10600 for every interface)",
    "listen_server": "HOST:PORT this server serves on and the scheduler and builds reach it at: its LAN address "
                     "(default 127.0.0.1:10501)",
    "name": "this server's name in the farm dir (default server-PORT); farm-stop and farm-status use it",
    "builder": "overlay (bubblewrap + overlayfs, needs root) or docker (needs the image aidanhs/busybox)",
    "cache_size": "GB of client toolchains the server keeps (default 10)",
    "cores": "CPUs the server runs jobs on and reports to the scheduler (default 0: all)",
    "trace_jobs": "log each job's compiler command and environment in the server log (the environment comes from "
                  "the client's build)",
    "token_file": "file whose first line is the client token builds send (default: $VLLM_FORGE_DIST_TOKEN)",
    "server_token_file": "file whose first line is the server token (default: $VLLM_FORGE_FARM_TOKEN)",
    "farm_dir": "where daemon configs, logs, pid records and toolchains live (default build/farm)",
    "dry_run": "print the config (tokens masked) and the command, start nothing",
    "json": "print the status as JSON",
}


def _farm_settings(ctx, **flags):
    """The farm's settings (config layers and flags) and its directory, relative paths next to tasks.py."""
    cfg = resolve_config(ctx.config, flags).config
    farm_dir = Path(cfg.farm_dir).expanduser()
    return cfg, farm_dir if farm_dir.is_absolute() else REPO_ROOT / farm_dir


def _start_daemon(plan, dry_run: bool) -> None:
    for line in plan.lines():
        console.print(f"  [dim]{escape(line)}[/]" if line.startswith("#") else f"  {escape(line)}", soft_wrap=True)
    if dry_run:
        return
    with console.status(f"starting the farm {plan.role} {plan.name}..."):
        started = farms.start(plan)
    console.print(f"[green]farm {plan.role} {plan.name} up[/] on {plan.address} (pid {started.pid}, "
                  f"{started.seconds:.1f}s); stop it with: invoke farm-stop --name {plan.name}", soft_wrap=True)
    if started.note:
        console.print(f"[yellow]note:[/] {escape(started.note)}", soft_wrap=True)


@forge_task(name="farm-scheduler", help={"listen": FARM_HELP["listen_scheduler"], **{
    k: FARM_HELP[k] for k in ("token_file", "server_token_file", "farm_dir", "dry_run")}})
def farm_scheduler(ctx, listen="127.0.0.1:10600", token_file=None, server_token_file=None, farm_dir=None,
                   dry_run=False):
    """Start the build farm's sccache-dist scheduler, detached (builds: --dist-scheduler http://HOST:PORT)."""
    cfg, where = _farm_settings(ctx, dist_token_file=token_file, farm_server_token_file=server_token_file,
                                farm_dir=farm_dir)
    plan = farms.plan_scheduler(where, listen, farms.DistSettings.from_config(cfg).token.read(),
                                farms.farm_server_token(cfg).read())
    _start_daemon(plan, dry_run)


@forge_task(name="farm-server", help={"listen": FARM_HELP["listen_server"], **{
    k: FARM_HELP[k] for k in ("scheduler", "name", "builder", "cache_size", "cores", "trace_jobs", "server_token_file",
                              "farm_dir", "dry_run")}})
def farm_server(ctx, scheduler=None, listen="127.0.0.1:10501", name="", builder="overlay", cache_size=None,
                cores=None, trace_jobs=False, server_token_file=None, farm_dir=None, dry_run=False):
    """Start a sccache-dist build server of the farm, detached: it runs other machines' compile jobs sandboxed."""
    cfg, where = _farm_settings(ctx, dist_scheduler=scheduler, farm_server_token_file=server_token_file,
                                farm_dir=farm_dir)
    if not cfg.dist_scheduler:
        raise ForgeError("farm-server needs the scheduler's URL", "pass --scheduler http://HOST:10600 (or set "
                                                                 "dist_scheduler in invoke.yaml)")
    plan = farms.plan_server(where, name=name or f"server-{listen.rpartition(':')[2]}", scheduler=cfg.dist_scheduler,
                             listen=listen, server_token=farms.farm_server_token(cfg).read(), builder=builder,
                             cache_size_gb=_number("cache-size", cache_size, float, 10.0),
                             cores=_number("cores", cores), trace_jobs=trace_jobs)
    _start_daemon(plan, dry_run)


@forge_task(name="farm-stop", help={"name": "stop only this daemon (scheduler, or a server's name); default: all",
                                    "farm_dir": FARM_HELP["farm_dir"]})
def farm_stop(ctx, name="", farm_dir=None):
    """Stop the farm daemons this machine started (the scheduler and build servers with pid records)."""
    _cfg, where = _farm_settings(ctx, farm_dir=farm_dir)
    for line in farms.stop(where, name):
        console.print(escape(line))


@forge_task(name="farm-status", help={k: FARM_HELP[k] for k in ("scheduler", "farm_dir", "json")})
def farm_status(ctx, scheduler=None, farm_dir=None, json=False):
    """The farm as its scheduler reports it (servers, cores, jobs in flight), and the daemons running here."""
    import json as json_mod

    cfg, where = _farm_settings(ctx, farm_dir=farm_dir)
    found = farms.farm_status(where, scheduler or cfg.dist_scheduler)
    if json:
        print(json_mod.dumps(found.as_dict(), indent=2))
    else:
        if found.status:
            console.print(f"[green]scheduler {found.scheduler}[/]: {found.status.line()}")
        else:
            console.print(f"[red]scheduler {found.scheduler}[/]: {escape(found.problem)}", soft_wrap=True)
        if found.seen:
            table = Table("server", "jobs given", "in flight", title="build servers, from the scheduler's log here")
            for server in found.seen:
                table.add_row(server.address, str(server.jobs_assigned), str(server.jobs_in_flight))
            console.print(table)
        if found.local:
            table = Table("name", "address", "pid", "state", "cores", "jobs done", "running",
                          title=f"daemons started here ({where})")
            for daemon in found.local:
                server = daemon.role == "server"
                state = "running" if daemon.running and not daemon.problem else "[red]" + (
                    "in trouble" if daemon.running else "exited") + "[/]"
                table.add_row(daemon.name, daemon.address, str(daemon.pid or "-"), state,
                              str(daemon.cores) if server else "-", str(daemon.jobs_done) if server else "-",
                              str(daemon.jobs_running) if server else "-")
            console.print(table)
            for daemon in found.local:
                if daemon.problem:
                    console.print(f"[red]{daemon.name}[/]: {escape(daemon.problem)} (log {daemon.log})", soft_wrap=True)
    if not found.status or any(d.problem for d in found.local):
        raise Exit(code=1)
# ---- end build farm ----

# ---- namespace ----
# Collected by type, not with Collection.from_module: its isinstance() test would load every lazy module.
ns = Collection(*(value for value in list(globals().values()) if issubclass(type(value), Task)))
ns.configure({"forge": invoke_defaults()})


def _refuse_core_dry(argv: list[str], parsed) -> None:
    """invoke's own -R/--dry only echoes what ``ctx.run`` would run; these tasks run their commands through
    vllm_forge/ instead, so under it a build would really run. Refused, naming each task's own --dry-run."""
    core = parsed[0].args
    if not (core["dry"].value if "dry" in core else False):
        return
    tasks_given = [context.name for context in parsed[1:]]
    without = [name for name, context in zip(tasks_given, parsed[1:], strict=True)
               if "--dry-run" not in context.flags]
    if without or not tasks_given:
        fix = (f"drop it: {', '.join(without)} {'has' if len(without) == 1 else 'have'} no dry run"
               if without else "drop it, and pass a task")
    else:
        words = [word for word in argv if word not in ("-R", "--dry")]
        for name in reversed(tasks_given):  # --dry-run after the last word of each task's own flags
            at = max(i for i, word in enumerate(words) if word == name)
            end = next((i for i in range(at + 1, len(words)) if words[i] in tasks_given), len(words))
            words.insert(end, "--dry-run")
        fix = f"use the task's own flag: invoke {shlex.join(words)}"
    _print_error(str(ForgeError(f"invoke's -R/--dry only affects ctx.run, which vllm-forge's tasks do not use, so "
                                f"{' '.join(tasks_given) or 'the task'} would really run", fix)))
    sys.exit(2)


def _check_command_line(namespace: Collection) -> None:
    """A mistyped task or flag ends in one line with the closest match and exit 2, instead of invoke's bare
    "No idea what 'build-weel' is!": the command line is parsed here first with invoke's public parser (the
    same contexts invoke builds from this namespace); what it accepts, invoke then runs as usual."""
    import difflib

    from invoke import Program
    from invoke.exceptions import ParseError
    from invoke.parser import Parser, ParserContext

    argv = sys.argv[1:]
    if Path(sys.argv[0]).name not in ("invoke", "inv", "__main__.py") or not argv:
        return
    program = Program()
    contexts = namespace.to_contexts()
    core = ParserContext(args=program.core_args() + program.task_args())
    try:
        parsed = Parser(initial=core, contexts=contexts).parse_argv(argv)
    except ParseError as err:
        message = str(err)
    else:
        _refuse_core_dry(argv, parsed)
        return
    tasks = sorted(c.name for c in contexts)
    current = next((word for word in reversed(argv) if word in tasks), None)
    word = re.search(r"No idea what '(.+)' is", message)
    if word:
        unknown = word.group(1)
        if unknown.startswith("-") and current:
            flags = sorted({name for c in contexts if c.name == current for name in c.flags})
            close = difflib.get_close_matches(unknown, flags, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}?" if close else f"`invoke {current} --help` lists its flags"
            problem = f"{current} has no flag {unknown}"
        else:
            close = difflib.get_close_matches(unknown, tasks, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}?" if close else "`invoke --list` lists the tasks"
            problem = f"there is no task or flag {unknown!r}" if current is None else \
                f"{current} takes no argument {unknown!r} (or there is no such task)"
        _print_error(f"{problem}. Fix: {hint}")
        sys.exit(2)
    missing = re.search(r"'(.+)' did not receive required positional arguments: (.+)$", message)
    if missing:
        name, what = missing.group(1), missing.group(2).replace("'", "")
        example = {"serve": "invoke serve Qwen/Qwen3-0.6B --image vllm-forge/vllm:TAG",
                   "inspect": "invoke inspect vllm-forge/vllm:TAG"}.get(name, f"invoke {name} --help")
        _print_error(f"{name} needs {what.upper()}. Fix: e.g. {example}")
        sys.exit(2)
    _print_error(f"{message.rstrip('!.')}. Fix: see `invoke {current or ''} --help`".replace("  ", " "))
    sys.exit(2)


_check_command_line(ns)
