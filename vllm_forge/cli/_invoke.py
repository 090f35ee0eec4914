"""Every place vllm-forge bends invoke, and why. No other module uses a private name of invoke.

invoke is pinned (requirements.txt). Each bend below names the invoke behaviour it works around, and
tests/unit/test_invoke_bends.py holds that behaviour: an invoke upgrade that changes it fails there, and so does a
private invoke name anywhere else in the product.

1. ``allow_optional_positionals``: a positional argument the task may do without (``invoke audit --image IMG``
   has no PATH). invoke refuses a missing positional before the task could say what is needed, and a
   positional with a default is never filled: ``ParseMachine.complete_context`` (private) is wrapped.
2. ``config_layers``: which layer set a value, for ``plan``. invoke's Config merges its layers and offers no
   way to ask where a key came from: its private layer attributes (``_runtime``, ``_env``, ...) are read.
3. ``project_yaml``: invoke.yaml is read before invoke reads it, so a YAML typo costs one line instead of
   invoke's traceback; with the YAML module invoke itself loads it with (``invoke.util.yaml``).
4. ``FilesTask``: one positional argument that takes every file on the command line (a shell glob). invoke
   gives a task a fixed number of positionals: ``get_arguments`` reads argv to declare as many as there are.
5. ``parse_command_line``: the command line is parsed once more, at import, with invoke's public parser
   (vllm_forge/cli/command_line.py judges the result): invoke has no hook between parsing and its own bare
   "No idea what 'x' is!", and none to print a task's help with what its flags take (``help_tuples`` gives its
   rows; invoke shows every value as STRING or INT, a repeatable flag's as nothing).
6. ``HelpKeepingTask``: ``Task.arg_opts`` pops each help text it hands out, so a second ``get_arguments``
   (the parse of 5, then invoke's own) would show every option without its help.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invoke import Argument, Task

from vllm_forge.core.config import ConfigLayers

# ---- 1. optional positional arguments --------------------------------------------------------------------

_OPTIONAL_POSITIONALS: dict[str, set[str]] = {}


def allow_optional_positionals(optional: Mapping[str, Iterable[str]]) -> None:
    """Let each task of ``optional`` run without the positional arguments named there (the body gets "")."""
    from invoke.parser.parser import ParseMachine

    for task, names in optional.items():
        _OPTIONAL_POSITIONALS.setdefault(task, set()).update(names)
    complete = ParseMachine.complete_context
    if getattr(complete, "forge_wrapped", False):
        return

    def complete_context(self, _complete=complete):
        for arg in (self.context.positional_args if self.context else []):
            if arg.value is None and arg.name in _OPTIONAL_POSITIONALS.get(self.context.name, ()):
                arg.set_value("", cast=False)
        return _complete(self)

    complete_context.forge_wrapped = True
    ParseMachine.complete_context = complete_context


# ---- 2. which layer set a value ----------------------------------------------------------------------------

# invoke's layers as its Config keeps them, highest precedence first, with the name `plan` shows.
CONFIG_LAYERS = (
    ("_runtime", "runtime file (-f)"),
    ("_env", "environment (INVOKE_FORGE_*)"),
    ("_project", "invoke.yaml"),
    ("_user", "user invoke file"),
    ("_system", "system invoke file"),
)


def _forge_section(invoke_config: Any, attr: str) -> Mapping[str, Any]:
    layer = getattr(invoke_config, attr, None) or {}
    forge = layer.get("forge") if isinstance(layer, Mapping) else None
    return forge if isinstance(forge, Mapping) else {}


def config_layers(invoke_config: Any) -> ConfigLayers:
    """What a task's ``ctx.config`` holds in its ``forge:`` section, and which layer set each key."""
    if invoke_config is None:
        return ConfigLayers()
    merged = invoke_config.get("forge", {}) if hasattr(invoke_config, "get") else {}
    sources: dict[str, str] = {}
    for attr, label in reversed(CONFIG_LAYERS):  # lowest first: a higher layer names the key last
        for name in _forge_section(invoke_config, attr):
            sources[name] = label
    return ConfigLayers(merged if hasattr(merged, "keys") else {}, sources,
                        frozenset(_forge_section(invoke_config, "_project")))


# ---- 3. invoke.yaml, read first --------------------------------------------------------------------------


def project_yaml(path: Path) -> Any:
    """``path`` parsed as invoke will parse it; raises ``yaml_error()`` where invoke would die with a traceback."""
    from invoke.util import yaml

    return yaml.safe_load(path.read_text())


def yaml_error() -> type[Exception]:
    from invoke.util import yaml

    return yaml.YAMLError


# ---- 4. every file on the command line -------------------------------------------------------------------


def invoked_as_invoke() -> bool:
    """This process is the invoke program (``invoke``, ``inv``, ``python -m invoke``), so argv is its command line."""
    program = Path(sys.argv[0])
    return program.name in ("invoke", "inv") or (program.name == "__main__.py" and program.parent.name == "invoke")


def positional_count(argv: list[str], names: set[str], value_flags: set[str]) -> int:
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


def help_tuples(made: Task) -> list[tuple[str, str]]:
    """invoke's own (flag spec, help) rows of a task, as ``Program.print_task_help`` makes them."""
    from invoke.parser import ParserContext

    return ParserContext(name=made.name, args=made.get_arguments()).help_tuples()


# ---- 6. help kept for a second parse ---------------------------------------------------------------------


class HelpKeepingTask(Task):
    """A Task whose option help survives more than one ``get_arguments`` (invoke's ``arg_opts`` pops it)."""

    def get_arguments(self, ignore_unknown_help=None):
        kept = dict(self.help)
        try:
            return super().get_arguments(ignore_unknown_help)
        finally:
            self.help = kept


class FilesTask(HelpKeepingTask):
    """A task whose first positional argument takes every file on the command line.

    `invoke nccl-diagnose a.log b.log` (what a shell glob expands to) would stop at b.log with "No idea what
    'b.log' is!". Through invoke's public Task API (``@task(klass=...)``, ``get_arguments``) this task declares one
    more positional argument per extra word the command line holds; the body receives them as ``files_2``,
    ``files_3``... Words after a standalone ``--`` reach the body as ``ctx.remainder`` (invoke's documented
    remainder)."""

    def get_arguments(self, ignore_unknown_help=None):
        args = [a for a in super().get_arguments(ignore_unknown_help) if a.name != "more_files"]
        argv = sys.argv if invoked_as_invoke() else []
        names = {self.name, *self.aliases}
        flags = {("--" if len(n) > 1 else "-") + n for a in args if a.takes_value and not a.positional for n in a.names}
        extra = max(0, positional_count(argv, names, flags) - 1)
        positional = [a for a in args if a.positional]
        more = [Argument(name=f"files_{i}", positional=True) for i in range(2, extra + 2)]
        return positional + more + [a for a in args if not a.positional]


# ---- 5. the command line, parsed at import ---------------------------------------------------------------


@dataclass
class CommandLine:
    """The command line as invoke's parser reads it against this namespace: ``parsed`` (core context first,
    then one per task), or invoke's ``error`` message."""

    argv: list[str]
    task_names: list[str]
    task_flags: dict[str, list[str]]
    parsed: list | None
    error: str = ""

    def core_value(self, name: str) -> Any:
        """A core flag's value (``help``, ``dry``), None when not given."""
        core = self.parsed[0].args if self.parsed else {}
        return core[name].value if name in core else None

    def tasks_given(self) -> list[tuple[str, dict[str, Any], list[str]]]:
        """(task, its arguments' values by name, the flags it has) for each task on the command line."""
        return [(c.name, {name: arg.value for name, arg in c.args.items()}, list(c.flags))
                for c in (self.parsed or [])[1:]]


def parse_command_line(namespace) -> CommandLine | None:
    """The command line parsed as invoke will parse it; None when this process is not the invoke program."""
    from invoke import Program
    from invoke.exceptions import ParseError
    from invoke.parser import Parser, ParserContext

    argv = sys.argv[1:]
    if not invoked_as_invoke() or not argv:
        return None
    program = Program()
    contexts = namespace.to_contexts()
    names = sorted(c.name for c in contexts)
    flags = {c.name: sorted(c.flags) for c in contexts}
    core = ParserContext(args=program.core_args() + program.task_args())
    try:
        parsed = Parser(initial=core, contexts=contexts).parse_argv(argv)
    except ParseError as err:
        return CommandLine(argv, names, flags, None, str(err))
    return CommandLine(argv, names, flags, list(parsed))
