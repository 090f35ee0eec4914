"""Every task's `--help` and `-h` print help in one layout and exit 0 (no task turns `-h` into its flag)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def tasks(repo_root) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=repo_root, capture_output=True, text=True,
                         check=True).stdout
    return re.findall(r"^  ([a-z][a-z-]*)\s", out, re.M)


def test_every_task_prints_help_and_exits_0(repo_root):
    names = tasks(repo_root)
    assert len(names) >= 19
    for name in names:
        for flag in ("--help", "-h"):
            proc = subprocess.run([sys.executable, "-m", "invoke", name, flag], cwd=repo_root, capture_output=True,
                                  text=True, timeout=60)
            assert proc.returncode == 0, (name, flag, proc.stderr[-500:])
            lines = proc.stdout.splitlines()
            assert lines[0].startswith(f"Usage: inv[oke] [--core-opts] {name} "), (name, flag, lines[:2])
            assert "Docstring:" in lines and "Options:" in lines, (name, flag)
            assert not re.search(r"^\s+--(=|\s)", proc.stdout, re.M), (name, "a flag named --")
