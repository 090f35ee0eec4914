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


@pytest.mark.parametrize(("argv", "words"), [
    (["build-weel"], "there is no task or flag 'build-weel'. Fix: did you mean build-wheel?"),
    (["build-wheel", "--archs", "12.0"], "build-wheel has no flag --archs. Fix: did you mean --arch?"),
    (["serve"], "serve needs MODEL. Fix: e.g. invoke serve Qwen/Qwen3-0.6B --image vllm-forge/vllm:TAG"),
    (["clone", "--dry-run", "v0.11.0"], "clone takes no argument 'v0.11.0'"),
])
def test_typos_and_missing_arguments_are_one_line_with_the_closest_match(repo_root, argv, words):
    proc = subprocess.run([sys.executable, "-m", "invoke", *argv], cwd=repo_root, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"error: {words}" if words.endswith("?") or "Fix" in words
                                                else proc.stderr.strip()]
    assert words in proc.stderr and "Traceback" not in proc.stderr
