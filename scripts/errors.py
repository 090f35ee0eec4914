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


def run_main(main, argv=None) -> int:
    """Run a standalone ``main(argv)`` the way tasks do: user errors become one line and exit 2."""
    import os
    import sys

    try:
        return main(argv) or 0
    except ForgeError as err:
        if os.environ.get("VLLM_FORGE_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
