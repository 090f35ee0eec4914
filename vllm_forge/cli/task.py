"""``forge_task``: an invoke task made from the declared options, whose user errors end as one line.

The task's invoke signature and ``help=`` come from the declarations (core/config.py ``SETTINGS``, cli/flags.py
``FLAGS``): the body is ``body(ctx, given)`` and reads ``given.<flag>`` (numbers already parsed) and
``given.settings()`` (the settings the command line gave, None for those it did not). invoke reads a task's
parameters with ``inspect.signature``, which honours a function's ``__signature__``: the generated signature is
what invoke's public ``@task`` sees.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from invoke import task
from invoke.exceptions import Exit

from vllm_forge.cli import _invoke
from vllm_forge.cli.flags import is_setting, task_options
from vllm_forge.core.errors import ForgeError, quiet_broken_pipe
from vllm_forge.core.options import REQUIRED, Option

DISK_ERRORS = {
    errno.ENOSPC: "free space there, or point the output (--dist-dir, --checkout-dir) at a disk with room",
    errno.EDQUOT: "free space within your quota, or point the output at another disk",
    errno.EROFS: "point the output (--dist-dir, --checkout-dir) at a writable disk",
    errno.EACCES: "fix the permissions, or point the output (--dist-dir, --checkout-dir) at a directory you own",
    errno.ENOTDIR: "a part of that path is a file: point the output at a directory path",
    errno.EEXIST: "a file is in the way: point the output at a directory path, or move the file",
}


def number(flag: str, value: Any, kind: type = int, default: Any = 0, example: str = "") -> Any:
    """A numeric flag's value: invoke would cast it with a bare int() (a traceback on `--port abc`), so numeric
    flags are declared without a typed default and read here."""
    if value in (None, ""):
        return default
    try:
        return kind(value)
    except (TypeError, ValueError):
        what = "a whole number" if kind is int else "a number"
        raise ForgeError(f"--{flag} needs {what}, got {value!r}",
                         f"pass e.g. --{flag} {example or default or 1}") from None


class Given:
    """A task's command-line values by parameter name (``given.dry_run``), numbers parsed."""

    def __init__(self, options: list[Option], values: dict[str, Any]):
        self._options = options
        self._values = dict(values)
        for option in options:
            if option.numeric and not is_setting(option):
                self._values[option.param] = number(option.spelling[2:], values.get(option.param), option.kind,
                                                    option.default, option.example)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def extra(self, prefix: str) -> list[Any]:
        """Values of arguments the task class added beyond the declarations (FilesTask's ``files_2``...)."""
        names = sorted((k for k in self._values if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))
        return [self._values[k] for k in names]

    def settings(self, **more: Any) -> dict[str, Any]:
        """The settings this command line sets, by config key; None where the flag was not given (a switch that
        is off is not given), so the configuration layers decide. ``more`` adds or overrides."""
        out: dict[str, Any] = {}
        for option in self._options:
            key = option.name if is_setting(option) else option.setting
            if key:
                value = self._values.get(option.param)
                out[key] = None if value is False else value
        return {**out, **more}


def signature(options: list[Option]) -> inspect.Signature:
    """The task's signature as invoke should read it: a setting is None when not given, a number is None (read
    by ``number``), a switch is False, a positional the task needs has no default, one it may do without None."""
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for option in options:
        if option.default is REQUIRED:
            default = inspect.Parameter.empty
        elif option.kind is bool:
            default = False
        elif is_setting(option) or option.numeric or option.kind is list or option.positional:
            default = None  # (invoke fills a positional only while its value is None)
        else:
            default = option.default
        params.append(inspect.Parameter(option.param, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))
    return inspect.Signature(params)


def lazy(name: str):
    """The module ``name``, loaded on first use (importlib's LazyLoader): `invoke --list` imports tasks.py, and
    no task needs every module of vllm_forge/."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# rich loads only when a task has something to say with it: not for `audit --json`, nor a task that succeeds quietly
render = lazy("vllm_forge.cli.render")


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


def guarded(body: Callable[[], Any]) -> Any:
    """Run ``body``: a ForgeError is one line with its fix, Ctrl-C exit 130, a closed pipe quiet, a full disk one
    line; the checkouts the task locked are free again afterwards (rich loads only to say what went wrong)."""
    previous = _interrupt_on_termination()
    try:
        return body()
    except ForgeError as err:
        if _debugging():
            raise
        render.print_error(str(err))
        raise Exit(code=err.exit_code) from None
    except BrokenPipeError:  # `invoke audit X --json | head -1`: the reader has all it wanted
        raise Exit(code=quiet_broken_pipe()) from None
    except OSError as err:  # a full or read-only disk anywhere: one line, not a traceback
        if _debugging() or err.errno not in DISK_ERRORS:
            raise
        where = f": {err.filename}" if err.filename else ""
        render.print_error(f"{err.strerror}{where}. Fix: {DISK_ERRORS[err.errno]}.")
        raise Exit(code=1) from None
    except KeyboardInterrupt:
        render.err_console.print("[yellow]interrupted[/]: child processes were stopped; outputs were left as they were")
        raise Exit(code=130) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if "vllm_forge.core.checkout_lock" in sys.modules:  # the checkouts this task wrote to are free again
            sys.modules["vllm_forge.core.checkout_lock"].release_all()


def forge_task(name: str, klass: type = _invoke.HelpKeepingTask):
    """``@task`` named ``name`` with the declared options of that name as its flags (see the module's doc)."""

    def decorate(body: Callable[[Any, Given], Any]):
        options = task_options(name)
        positional = [o.param for o in options if o.positional]
        _invoke.allow_optional_positionals({name: [o.param for o in options
                                                   if o.positional and o.default is not REQUIRED]})

        @functools.wraps(body)
        def run(ctx, *args, **kwargs):
            kwargs.update(zip(positional, args, strict=False))
            if any(kwargs.get(p) in ("-h", "--help") for p in positional):
                # invoke hands `--help` after a task to its positional argument: answer it here.
                from vllm_forge.cli.command_line import print_task_help

                print_task_help(made)
                return None
            return guarded(lambda: body(ctx, Given(options, kwargs)))

        del run.__wrapped__  # invoke must read the generated signature, not the body's
        run.__signature__ = signature(options)
        made = task(name=name, klass=klass, auto_shortflags=False, positional=positional,
                    iterable=[o.param for o in options if o.kind is list],
                    help={o.param: o.help_text() for o in options})(run)
        return made

    return decorate
