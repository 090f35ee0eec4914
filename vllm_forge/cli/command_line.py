"""The command line, judged before invoke runs it: a broken invoke.yaml, a mistyped task or flag, a missing
argument, invoke's -R/--dry, and a task's --help (with what each flag takes) end here in one line or the help.

The parse itself is vllm_forge/cli/_invoke.py's (``parse_command_line``): invoke's public parser, run once more.
"""

from __future__ import annotations

import difflib
import inspect
import re
import shlex
import sys
from pathlib import Path

from vllm_forge.cli import _invoke
from vllm_forge.cli.flags import task_options
from vllm_forge.core.errors import ForgeError, quiet_broken_pipe

# A required positional argument's example, for "serve needs MODEL".
EXAMPLES = {"serve": "invoke serve Qwen/Qwen3-0.6B --image vllm-forge/vllm:TAG",
            "inspect": "invoke inspect vllm-forge/vllm:TAG"}


def _render():
    from vllm_forge.cli import render  # rich loads only when there is an error to print (not for `audit --json`)

    return render


def check_project_config(path: Path) -> None:
    """invoke reads invoke.yaml after importing tasks.py and dies with a YAML traceback on a typo; read it first
    so a broken file costs one line instead."""
    if not path.exists():
        return
    try:
        data = _invoke.project_yaml(path)
    except _invoke.yaml_error() as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        _render().err_console.print(f"[bold red]error:[/] {path} is not valid YAML{where}: {problem}. "
                          "Fix: correct that line, or move the file away.", soft_wrap=True)
        sys.exit(2)
    if data is not None and not isinstance(data, dict) or not isinstance((data or {}).get("forge", {}), dict):
        _render().err_console.print(f"[bold red]error:[/] {path} must be a mapping with a `forge:` section. "
                          "Fix: see the README's configuration example.", soft_wrap=True)
        sys.exit(2)


def help_rows(made) -> list[tuple[str, str]]:
    """invoke's (flags, help) rows for a task, each value-taking flag showing what it takes (``--arch=ARCHS``)
    instead of invoke's STRING or INT."""
    values = {o.param: o.value for o in task_options(made.name) if o.value}
    rows = []
    for spec, text in _invoke.help_tuples(made):
        param = spec.split(",")[-1].strip().lstrip("-").split("=")[0].split("[")[0].replace("-", "_")
        value = values.get(param) or values.get(param + "_")
        if value:  # a repeatable flag (invoke's list kind) shows none: it takes one value each time
            spec = ", ".join(re.sub(r"(=(STRING|INT)\b|$)", "=" + value, name, count=1) if name.startswith("--")
                             else name for name in spec.split(", "))
        rows.append((spec, text))
    return rows


def print_task_help(made) -> None:
    """A task's help as invoke prints it (``Program.print_task_help``), with what each flag takes."""
    from invoke import Program

    rows = help_rows(made)
    program = Program(binary="inv[oke]")
    print(f"Usage: {program.binary} [--core-opts] {made.name} {'[--options] ' if rows else ''}[other tasks here ...]")
    print("\nDocstring:")
    for line in (inspect.getdoc(made) or "none").splitlines():
        print(program.leading_indent + line if line.strip() else "")
    print("\nOptions:")
    program.print_columns(rows)


def check_command_line(namespace) -> None:
    """A mistyped task or flag ends in one line with the closest match and exit 2, instead of invoke's bare
    "No idea what 'build-weel' is!"; `invoke TASK --help` prints the task's help with what its flags take. What
    the parse accepts, invoke then runs as usual."""
    line = _invoke.parse_command_line(namespace)
    if line is None:
        return
    if line.parsed is not None:
        _answer_help(namespace, line)
        _refuse_core_dry(line)
        return
    _render().print_error(_parse_problem(line))
    sys.exit(2)


def _answer_help(namespace, line: _invoke.CommandLine) -> None:
    asked = line.core_value("help")
    tasks = [name for name, _values, _flags in line.tasks_given()]
    name = asked if isinstance(asked, str) and asked in line.task_names else (tasks[-1] if asked and tasks else None)
    if name:
        try:
            print_task_help(namespace[name])
        except BrokenPipeError:  # `invoke build-wheel --help | head`: the reader has all it wanted
            sys.exit(quiet_broken_pipe())
        sys.exit(0)


def _parse_problem(line: _invoke.CommandLine) -> str:
    """invoke's parse error as one line with the closest match."""
    message, tasks = line.error, line.task_names
    current = next((word for word in reversed(line.argv) if word in tasks), None)
    word = re.search(r"No idea what '(.+)' is", message)
    if word:
        unknown = word.group(1)
        if unknown.startswith("-") and current:
            close = difflib.get_close_matches(unknown, line.task_flags.get(current, []), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}?" if close else f"`invoke {current} --help` lists its flags"
            return f"{current} has no flag {unknown}. Fix: {hint}"
        close = difflib.get_close_matches(unknown, tasks, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}?" if close else "`invoke --list` lists the tasks"
        problem = f"there is no task or flag {unknown!r}" if current is None else \
            f"{current} takes no argument {unknown!r} (or there is no such task)"
        return f"{problem}. Fix: {hint}"
    missing = re.search(r"'(.+)' did not receive required positional arguments: (.+)$", message)
    if missing:
        name, what = missing.group(1), missing.group(2).replace("'", "")
        return f"{name} needs {what.upper()}. Fix: e.g. {EXAMPLES.get(name, f'invoke {name} --help')}"
    return f"{message.rstrip('!.')}. Fix: see `invoke {current or ''} --help`".replace("  ", " ")


def _refuse_core_dry(line: _invoke.CommandLine) -> None:
    """invoke's own -R/--dry only echoes what ``ctx.run`` would run; these tasks run their commands through
    vllm_forge/ instead, so under it a build would really run. Refused, naming each task's own --dry-run."""
    if not line.core_value("dry"):
        return
    given = line.tasks_given()
    tasks_given = [name for name, _values, _flags in given]
    without = [name for name, _values, flags in given if "--dry-run" not in flags]
    if without or not tasks_given:
        fix = (f"drop it: {', '.join(without)} {'has' if len(without) == 1 else 'have'} no dry run"
               if without else "drop it, and pass a task")
    else:
        words = [word for word in line.argv if word not in ("-R", "--dry")]
        for name in reversed(tasks_given):  # --dry-run after the last word of each task's own flags
            at = max(i for i, word in enumerate(words) if word == name)
            end = next((i for i in range(at + 1, len(words)) if words[i] in tasks_given), len(words))
            words.insert(end, "--dry-run")
        fix = f"use the task's own flag: invoke {shlex.join(words)}"
    _render().print_error(str(ForgeError(
        f"invoke's -R/--dry only affects ctx.run, which vllm-forge's tasks do not use, so "
        f"{' '.join(tasks_given) or 'the task'} would really run", fix)))
    sys.exit(2)
