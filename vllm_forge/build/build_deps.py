"""``--install-build-deps``: the checkout's unmet build requirements, installed with pip into the Python that
builds, never touching torch.

What to install comes from the preflight (vllm_forge/build/preflight.py): each requirement that is missing, too old or
newer than the checkout allows, exactly as the checkout writes it (its own pins hold). A constraints file
holds torch, torchvision and torchaudio at the versions installed, so no requirement can make pip replace
them, and vllm-forge's own ``==`` pins when pip installs into vllm-forge's own Python. The index is the
mirror profile's (``--mirror``), else pip's own configuration (``PIP_INDEX_URL``, ``pip.conf``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.core.errors import ForgeError
from vllm_forge.core.plan import Command, run_command

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class BuildDepsInstall:
    command: Command
    constraints: Path
    constraint_lines: list[str]
    requirements: list[str]  # as pip is given them: "setuptools-rust>=1.9.0"
    notes: list[str] = field(default_factory=list)


def _own_pins(python: str) -> list[str]:
    """vllm-forge's own exact pins (requirements.txt), when pip installs into the Python that runs vllm-forge."""
    if Path(python).resolve() != Path(sys.executable).resolve():
        return []
    try:
        lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    except OSError:
        return []
    return [line.split("#", 1)[0].strip() for line in lines if "==" in line.split("#", 1)[0]]


def plan_install(preflight, *, python: str, index_url: str, constraints: Path,
                 env: dict[str, str] | None = None) -> BuildDepsInstall | None:
    """The pip command for the preflight's unmet requirements; None when there is nothing to install."""
    if preflight is None or not preflight.unmet:
        return None
    facts = preflight.facts
    held = [f"{name}=={version}" for name, version in sorted(facts.dists.items())
            if name in ("torch", "torchvision", "torchaudio") and version]
    lines = held + _own_pins(python)
    argv = [python, "-m", "pip", "install", "--disable-pip-version-check", "-c", str(constraints)]
    if index_url:
        argv += ["--index-url", index_url]
    requirements = [f"{s.requirement.name}{s.requirement.specifier}" for s in preflight.unmet]
    argv += requirements
    notes = [f"{s.describe()}: {s.state.replace('-', ' ')}" for s in preflight.unmet]
    notes.append(f"constraints {constraints}: {', '.join(lines) or 'none'} (pip may not replace these)")
    return BuildDepsInstall(Command(argv, env=dict(env or {}), why="install the build requirements this vLLM needs"),
                            constraints, lines, requirements, notes)


def run_install(install: BuildDepsInstall, *, on_line=None) -> list[str]:
    install.constraints.parent.mkdir(parents=True, exist_ok=True)
    install.constraints.write_text("".join(f"{line}\n" for line in install.constraint_lines))
    try:
        run_command(install.command, on_line=on_line)
    except ForgeError as err:
        raise ForgeError(f"pip could not install the build requirements: {err.problem}",
                         "check the index (--mirror, PIP_INDEX_URL) or install them yourself", exit_code=1) from None
    return install.requirements
