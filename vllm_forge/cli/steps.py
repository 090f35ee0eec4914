"""A task's settings and its pipeline run: each step printed right before it runs (the very commands it runs),
the live display while it runs, what it says when done; the run recorded for `invoke report`."""

from __future__ import annotations

import sys

from invoke.exceptions import Exit

from vllm_forge.cli import _invoke
from vllm_forge.cli.task import lazy
from vllm_forge.core.package import PACKAGE_ROOT

# loaded on first use: `record` (every audit ends with one) needs neither, and `audit --json` never prints with rich
pipelines = lazy("vllm_forge.pipeline")
render = lazy("vllm_forge.cli.render")

REPO_ROOT = PACKAGE_ROOT  # where tasks.py is: relative project paths (build/, dist/) are anchored here


def layers(ctx):
    """What invoke's configuration layers hold for this task (``ConfigLayers``)."""
    return _invoke.config_layers(getattr(ctx, "config", None))


def settings(ctx, given=None, *, writes: bool = False, **more) -> pipelines.Settings:
    """Config layers + mirror profile + the checkout's facts, resolved once for this command line, with the
    settings ``given`` (the task's flags) and ``more`` set; ``writes``: the task will run steps on the checkout
    (vllm_forge/core/checkout_lock.py: never true for a dry run)."""
    flags = given.settings(**more) if given is not None else more
    return pipelines.resolve_settings(layers(ctx), flags, repo_root=REPO_ROOT, writes=writes)


def config(ctx, **flags):
    """The resolved BuildConfig alone (no mirror, no checkout): for tasks that need a setting or two."""
    from vllm_forge.core.config import resolve_config

    return resolve_config(layers(ctx), flags).config


def run(pipeline: pipelines.Pipeline) -> pipelines.RunState:
    """Print each step as it is about to run, run it, say what it made; a dry run prints every step only."""
    if pipeline.options.dry_run:
        for step in pipeline.steps:
            render.print_step(step)
        if not pipeline.ready:
            raise Exit(code=1)
        return pipelines.RunState()
    current: list[pipelines.Step] = []
    display = render.StepDisplay(render.console)
    state = pipelines.RunState()

    def on_step(step):
        current[:] = [step]
        render.print_step(step)
        display.start(step)

    def on_done(step, result, seconds):
        render.print_said(pipelines.step_said(step, result, seconds))

    try:
        with display:
            return pipeline.run(on_step=on_step, on_line=display.feed, on_done=on_done, state=state)
    except BaseException:  # a failed or interrupted build still says where its compile time went
        timing = current[0].plan.timing if current and current[0].name == "build-wheel" else None
        if timing is not None:
            render.print_said(pipelines.timing_said(timing))
        raise
    finally:  # recorded under build/reports for `invoke report`, whatever the outcome
        for kind, data in pipelines.run_records(pipeline, state, sys.exc_info()[1]):
            record(kind, data)


def record(kind: str, data: dict) -> None:
    from vllm_forge.report.run_records import try_save

    _path, problem = try_save(kind, data)
    if problem:
        render.print_note(problem, render.err_console)


def check_plot(path) -> None:
    """A --plot path that cannot be written fails before anything runs."""
    if path:
        from vllm_forge.report import figures

        figures.check_plot_path(path)


def plot(data, path, *, json: bool = False) -> None:
    """Draw figure data (vllm_forge/report/figure_data.py) into ``path``; the line saying so goes to stderr when
    stdout carries JSON."""
    from vllm_forge.report import figures

    (render.err_console if json else render.console).print(f"[green]plot[/] {figures.save(data, path)}")


def summary(pipeline: pipelines.Pipeline, state: pipelines.RunState) -> None:
    render.print_rows("summary", pipelines.summary_rows(pipeline, state))


__all__ = ["REPO_ROOT", "check_plot", "config", "layers", "plot", "record", "run", "settings", "summary"]
