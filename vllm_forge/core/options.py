"""One declaration per option: what it is called, what it takes, its default, its help, which tasks take it.

Modelled on nox's ``_option_set.py``: an option is declared once, and everything about it is derived from that
declaration. A *setting* (``core/config.py`` ``SETTINGS``) is a key of ``BuildConfig``: invoke.yaml's
``forge.<key>``, the environment's ``INVOKE_FORGE_<KEY>``, and, for the tasks it names, a flag; ``DEFAULTS``,
``BuildConfig``, ``plan``'s provenance table and the README's configuration table come from it. A *task flag*
(``cli/flags.py`` ``FLAGS``) belongs to its tasks only (``--dry-run``, ``--json``, serve's ``--port``), or gives
a setting another spelling for some tasks (the farm's ``--scheduler`` is ``dist_scheduler``). The invoke task
signatures and their ``help=`` are made from both (``cli/task.py``).

Stdlib only: ``core/config.py`` imports this, and the image's build stage may stage config.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

REQUIRED = object()  # the default of a positional argument the task cannot run without


@dataclass(frozen=True)
class Option:
    """One option, declared once.

    ``name`` is the Python name: the task parameter (``--max-jobs`` is ``max_jobs``, ``--from`` is ``from_``)
    and, for a setting, its config key. ``kind``: str, int, float, bool, or list (repeatable). ``value``: what a
    value-taking flag takes, as help shows it (``--arch=ARCHS``). ``help`` may name ``{default}``.
    """

    name: str
    help: str
    default: Any = None
    kind: type = str
    value: str = ""
    tasks: tuple[str, ...] = ()
    flag: str = ""  # the flag's Python name when it differs from ``name`` (setting vllm_repo is --repo)
    setting: str = ""  # the BuildConfig key a task flag sets ("": the flag is its tasks' own)
    positional: bool = False
    example: str = ""  # a good value, for the fix of a value that is not a number (default: the default, else 1)
    shown_default: str = ""  # the default as documentation shows it, where the value depends on this machine

    def __post_init__(self) -> None:
        if self.tasks and self.kind is not bool and not self.value:
            raise ValueError(f"option {self.name} takes a value: declare what it takes (value='...')")
        if self.kind is bool and self.value:
            raise ValueError(f"option {self.name} is a switch: it takes no value")

    @property
    def param(self) -> str:
        """The task parameter (and so the flag) this option is."""
        return self.flag or self.name

    @property
    def spelling(self) -> str:
        """The flag as typed: ``--max-jobs``, ``--from``."""
        return "--" + self.param.strip("_").replace("_", "-")

    @property
    def env(self) -> str:
        """The environment variable invoke reads a setting from."""
        return f"INVOKE_FORGE_{self.name.upper()}"

    @property
    def numeric(self) -> bool:
        return self.kind in (int, float)

    def help_text(self) -> str:
        """The help line, with ``{default}`` filled in."""
        return self.help.replace("{default}", self.shown_default or str(self.default))

    def fix_example(self) -> str:
        return self.example or str(self.default or 1)


def for_task(options: Iterable[Option], task: str) -> list[Option]:
    """The options ``task`` takes, in declaration order (positional ones first, as invoke wants them)."""
    taken = [option for option in options if task in option.tasks]
    return [o for o in taken if o.positional] + [o for o in taken if not o.positional]


def duplicates(options: Iterable[Option]) -> list[str]:
    """``task --flag`` for each flag a task would get from two declarations (a declaration error)."""
    seen: set[tuple[str, str]] = set()
    twice = []
    for option in options:
        for task in option.tasks:
            if (task, option.param) in seen:
                twice.append(f"{task} {option.spelling}")
            seen.add((task, option.param))
    return twice


def markdown_table(settings: Iterable[Option], flags: Iterable[Option] = ()) -> str:
    """The README's configuration table: every setting, its environment variable, default and flags."""
    spellings: dict[str, list[str]] = {}
    for option in settings:
        if option.tasks:
            spellings.setdefault(option.name, []).append(f"`{option.spelling}`")
    for option in flags:
        if option.setting:
            spellings.setdefault(option.setting, []).append(f"`{option.spelling}`")
    lines = ["| key | environment | default | flag | meaning |", "| --- | --- | --- | --- | --- |"]
    for option in settings:
        if option.shown_default:
            default = option.shown_default
        else:
            default = f"`{option.default}`" if option.default not in ("", None) else "(empty)"
        flag = ", ".join(dict.fromkeys(spellings.get(option.name, []))) or "-"
        meaning = option.help_text().replace("|", "\\|")
        lines.append(f"| `{option.name}` | `{option.env}` | {default} | {flag} | {meaning} |")
    return "\n".join(lines) + "\n"
