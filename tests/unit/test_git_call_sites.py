"""Every git the tool runs goes through vllm_forge/core/git_safe.py: an AST scan of vllm_forge/ and tasks.py finds
any other way of starting git (a ``["git", ...]`` argv, ``Command(["git", ...])``, ``subprocess.run("git ...")``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "vllm_forge").rglob("*.py"), ROOT / "tasks.py"])
HELPER = ROOT / "vllm_forge" / "core" / "git_safe.py"
SPAWNERS = {"run", "Popen", "call", "check_call", "check_output", "Command", "run_command", "system", "popen",
            "execv", "execvp", "execvpe", "execl", "execlp", "spawnv", "spawnvp", "create_subprocess_exec",
            "create_subprocess_shell"}


def _is_git(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and (
        node.value == "git" or node.value.startswith("git ") or node.value.endswith("/git"))


def git_invocations(source: str) -> list[int]:
    """Line numbers where ``source`` builds a git command line or starts git itself."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts and _is_git(node.elts[0]):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in SPAWNERS and node.args and _is_git(node.args[0]):
                lines.append(node.lineno)
    return sorted(set(lines))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_git_is_started_only_by_git_safe(path):
    if path == HELPER:
        return
    found = git_invocations(path.read_text())
    assert not found, (f"{path.relative_to(ROOT)} starts git itself at line(s) {found}: use vllm_forge.core.git_safe "
                       "(run_git, git_command or git_argv), which switches off what the tree's config could run")


@pytest.mark.parametrize("snippet", [
    'subprocess.run(["git", "status"], cwd=src)',
    'Command(["git", "-C", str(dest), "fetch", "origin"], why="x")',
    'argv = ("git", "describe")',
    'subprocess.check_output("git rev-parse HEAD", shell=True)',
    'os.execvp("git", ["git", "status"])',
])
def test_the_scan_finds_each_way_of_starting_git(snippet):
    assert git_invocations(snippet) == [1]


def test_the_scan_leaves_other_strings_alone():
    assert git_invocations('packages = ["python3-dev", "git"]\npath = root / "git" / "vllm"\n'
                           'shutil.which("git")\nrun_git(["status"], src)') == []
