"""The one exception type for mistakes a user can make and fix."""

from __future__ import annotations


class ForgeError(Exception):
    """A user-fixable problem: one sentence saying what is wrong, one saying the fix.

    Tasks and standalone entry points print ``str(err)`` and exit non-zero without a traceback.
    """

    exit_code = 2

    def __init__(self, problem: str, fix: str = "", *, exit_code: int | None = None):
        self.problem = problem.rstrip(".")
        self.fix = fix.rstrip(".")
        if exit_code is not None:
            self.exit_code = exit_code
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.fix:
            return f"{self.problem}. Fix: {self.fix}."
        return f"{self.problem}."


# What a shell reports for a program a closed pipe stopped (128 + SIGPIPE), e.g. `yes | head -1`.
BROKEN_PIPE_EXIT = 141


def quiet_broken_pipe() -> int:
    """The reader of stdout went away (`... | head -1`): point stdout at /dev/null so the interpreter's
    final flush cannot raise again, and return the exit code to end with, quietly."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (a test's capture): nothing left to flush
        pass
    return BROKEN_PIPE_EXIT


def run_main(main, argv=None) -> int:
    """Run a standalone ``main(argv)`` the way tasks do: user errors become one line and exit 2; a closed
    pipe on stdout ends it quietly (exit 141, as a shell reports a program SIGPIPE stopped)."""
    import os
    import sys

    try:
        return main(argv) or 0
    except BrokenPipeError:
        return quiet_broken_pipe()
    except ForgeError as err:
        if os.environ.get("VLLM_FORGE_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
