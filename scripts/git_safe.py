"""git in a tree the tool did not create, with nothing in that tree able to run code.

A checkout's own ``.git/config`` (and the ``.gitattributes`` its files carry) can name programs git
runs: ``core.fsmonitor`` on every ``git status``, hooks, ``diff.external``, textconv and filter
drivers, ``core.sshCommand``, credential helpers. Every git call the tool makes in a checkout, a
fork, a mirror or a dependency copy goes through ``git_argv`` / ``run_git``, which turn those off
from the command line (``-c`` outranks every config file).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

# Fixed overrides: each names a setting a hostile config could use to run a program.
SAFE_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", os.devnull),
    ("diff.external", ""),
    ("core.sshCommand", "ssh"),
    ("core.pager", "cat"),
    ("core.editor", "true"),
    ("credential.helper", ""),
    ("protocol.allow", "never"),
    ("protocol.https.allow", "always"),
    ("protocol.ssh.allow", "always"),
)

# The environment every such git runs with: no prompt, no system config, protocols only from -c.
SAFE_ENV: dict[str, str] = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "true",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_PROTOCOL_FROM_USER": "0",
    "GIT_OPTIONAL_LOCKS": "0",
}


def git_argv(args: Sequence[str], *, extra_config: Sequence[tuple[str, str]] = ()) -> list[str]:
    """``git -c ... ARGS`` with every code-running setting switched off."""
    argv = ["git"]
    for key, value in (*SAFE_CONFIG, *extra_config):
        argv += ["-c", f"{key}={value}"]
    return [*argv, *args]


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **SAFE_ENV, **(extra or {})}


def run_git(args: Sequence[str], cwd: Path | str | None = None, *, timeout: float = 60,
            extra_config: Sequence[tuple[str, str]] = (), env: Mapping[str, str] | None = None,
            text: bool = True) -> subprocess.CompletedProcess:
    """Run git safely; a missing git or a timeout comes back as a failed CompletedProcess, never raised."""
    argv = git_argv(args, extra_config=extra_config)
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=text, timeout=timeout, env=git_env(env))
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "" if text else b"", f"timed out after {timeout:g} s")
    except OSError as err:
        return subprocess.CompletedProcess(argv, 127, "" if text else b"", str(err))
