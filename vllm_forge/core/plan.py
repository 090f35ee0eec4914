"""Commands as data: what `--dry-run` prints is the very list that a real run executes."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.core.errors import ForgeError

SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET", "API_KEY", "ACCESS_KEY", "CREDENTIAL")


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in SECRET_WORDS)


def mask_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with secrets as ****: by the variable's name, and git config a login travels in (core/git_safe.py)."""
    from vllm_forge.core import credentials  # late: `invoke --list` imports this module, and loads no other

    return {k: ("****" if (is_secret_name(k) or credentials.is_secret_config(env, k)) and v else v)
            for k, v in env.items()}


def mask_urls(text: str) -> str:
    """``text`` with every URL's credentials masked as **** (one rule: vllm_forge/core/credentials.py)."""
    from vllm_forge.core import credentials  # late: `invoke --list` imports this module, and loads no other

    return credentials.mask_urls(text)


@dataclass
class Command:
    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to (or replacing in) os.environ
    why: str = ""

    def shell(self) -> str:
        """The command as one copy-pasteable shell line (secrets masked)."""
        parts = []
        if self.cwd:
            parts.append(f"cd {shlex.quote(str(self.cwd))} &&")
        parts += [f"{k}={_shell_value(k, v)}" for k, v in mask_env(self.env).items()]
        parts.append(shlex.join(self.argv))
        return mask_urls(" ".join(parts))  # a repo or index URL with credentials in it

    def full_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        return env


def _shell_value(name: str, value: str) -> str:
    # PATH-like values that extend the current one are shown as `new:"$PATH"`, which is what
    # they are, instead of spelling out this machine's whole PATH.
    current = os.environ.get(name)
    if current and value.endswith(os.pathsep + current):
        return shlex.quote(value[: -len(current)]) + f'"${name}"'
    return shlex.quote(value)


COMMAND_LOG_ENV = "VLLM_FORGE_COMMAND_LOG"  # a file: every command run is appended to it as one JSON line
_recorders: list[Callable[[Command], None]] = []


def record_command(command: Command) -> None:
    """Tell the recorders (tests, ``$VLLM_FORGE_COMMAND_LOG``) that ``command`` is about to run.

    Every external command a task runs goes through here, so a test can hold what ran against what
    ``--dry-run`` printed.
    """
    for recorder in _recorders:
        recorder(command)
    log = os.environ.get(COMMAND_LOG_ENV)
    if log:
        import json

        from vllm_forge.core.nofollow import append_text  # never through a link (a log in /tmp is anyone's to plant)

        line = json.dumps({"shell": command.shell(), "cwd": command.cwd}) + "\n"
        append_text(log, line, what=f"{COMMAND_LOG_ENV} {log}")


class recording:  # noqa: N801  (used as a context manager: `with recording() as ran:`)
    """Collect every command run inside the block: ``with recording() as ran: ...; ran[0].shell()``."""

    def __enter__(self) -> list[Command]:
        self.ran: list[Command] = []
        _recorders.append(self.ran.append)
        return self.ran

    def __exit__(self, *exc) -> None:
        _recorders.remove(self.ran.append)


def run_command(
    command: Command,
    *,
    on_line: Callable[[str], None] | None = None,
    log_path: Path | None = None,
    check: bool = True,
) -> int:
    """Run one command; stream its output line by line to ``on_line`` and ``log_path``.

    On Ctrl-C the child's process group is terminated before the interrupt propagates, so no
    compiler keeps running behind the user's back. A command that fails is reported with the first real
    error of its output (vllm_forge/core/first_error.py: a ninja edge's compiler error, a CMake Error, a Python
    exception, a tool's own error line) and the log's path.
    """
    record_command(command)
    stream = on_line is not None or log_path is not None
    if log_path:
        from vllm_forge.core.nofollow import open_append

        log = open_append(log_path)
    else:
        log = None
    try:
        proc = subprocess.Popen(
            command.argv,
            cwd=command.cwd,
            env=command.full_env(),
            stdout=subprocess.PIPE if stream else None,
            stderr=subprocess.STDOUT if stream else None,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except FileNotFoundError:
        if log:
            log.close()
        raise ForgeError(
            f"'{command.argv[0]}' was not found on this machine",
            "install it or put it on PATH, then run again",
        ) from None
    from vllm_forge.core.first_error import FirstErrorScanner

    errors = FirstErrorScanner()  # the child's first real error, for the one-line report when it fails
    try:
        if stream:
            assert proc.stdout is not None
            for line in proc.stdout:
                errors.feed(line)
                if log:
                    log.write(line)
                if on_line:
                    on_line(line.rstrip("\n"))
        code = proc.wait()
    except BaseException:  # Ctrl-C, or this side failing (a full disk under the log): stop the child too
        _terminate(proc)
        raise
    finally:
        if log:
            log.close()
    if check and code != 0:
        raise failure(command, code, errors if stream else None, log_path)  # unstreamed: on the terminal already
    return code


_FIXES = {
    "compile": "fix that compile error (in the source, a patch, or the dependency it names)",
    "cmake": "fix what CMake names (an option, a missing tool or dependency)",
    "python": "fix what the command raised",
}


def failure(command: Command, code: int, errors, log_path: Path | None = None) -> ForgeError:
    """The one-line error for a failed command: its first real error (``errors``, a FirstErrorScanner fed its
    output; None when the output went to the terminal) and where the full output is."""
    found = errors.found() if errors else None
    said = f"; {found.describe()}" if found else "; it printed nothing" if errors else ""
    where = f" (full log: {log_path})" if log_path else ""
    fix = _FIXES.get(found.kind if found else "", "fix what it says")
    if errors and errors.ninja:
        fix += ", then run the same command again: ninja compiles only what is not built yet"
    else:
        fix += ", then run the same command again"
    return ForgeError(
        f"`{shlex.join(command.argv[:4])}{' ...' if len(command.argv) > 4 else ''}` "
        f"failed with exit code {code}{said}{where}",
        fix,
        exit_code=1,
    )


def _terminate(proc: subprocess.Popen) -> None:
    import signal

    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_plan(commands: Iterable[Command], **kwargs) -> None:
    for command in commands:
        run_command(command, **kwargs)
