"""A `--vllm-src` tree whose git config names programs: no task runs them, dry runs included.

The tree sets every kind of program git can take from a repository's config (core.fsmonitor, hooks,
diff.external, textconv / external diff / merge / filter drivers through .gitattributes, pagers, ssh and
gpg programs, credential helpers), some of them through an included file, and has a modified file so
that `git status` and `git diff` do real work. Each program appends its name to a marker file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vllm_forge.build import build_wheel
from vllm_forge.core import git_safe
from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.source import checkout, context_git, patches, vllm_tree

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MINI = REPO / "tests" / "fixtures" / "minivllm"
PLAIN_GIT = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=PLAIN_GIT).stdout


def make_hostile_tree(root: Path) -> tuple[Path, Path]:
    """(tree, marker): a git checkout of the miniature whose config runs `echo NAME >> marker` everywhere."""
    import shutil

    tree, marker = root / "tree", root / "PWNED"
    shutil.copytree(MINI, tree, ignore=shutil.ignore_patterns("__pycache__", "build", "dist", "*.egg-info"))
    (tree / ".gitattributes").write_text("* filter=evil diff=evil merge=evil\n")
    git("init", "-q", "-b", "main", cwd=tree)
    git("add", "-A", cwd=tree)
    git("-c", "user.email=a@b", "-c", "user.name=n", "commit", "-qm", "v0.1.0", cwd=tree)
    git("tag", "v0.1.0", cwd=tree)

    def program(name: str) -> str:
        return f"sh -c 'echo {name} >> {marker}; cat' --"

    hooks = root / "evil-hooks"
    hooks.mkdir()
    for hook in ("post-checkout", "post-index-change", "reference-transaction", "pre-commit", "post-merge",
                 "pre-auto-gc", "fsmonitor-watchman", "post-rewrite", "pre-push"):
        (hooks / hook).write_text(f"#!/bin/sh\necho hook-{hook} >> {marker}\n")
        (hooks / hook).chmod(0o755)
    settings = {
        "core.hooksPath": str(hooks),
        "diff.external": program("diff.external"),
        "filter.evil.clean": program("filter.clean"),
        "filter.evil.smudge": program("filter.smudge"),
        "filter.evil.process": program("filter.process"),
        "filter.evil.required": "true",
        "diff.evil.textconv": program("textconv"),
        "diff.evil.command": program("diff.command"),
        "merge.evil.driver": program("merge.driver"),
        "core.pager": program("core.pager"),
        "pager.status": program("pager.status"),
        "pager.diff": program("pager.diff"),
        "core.sshCommand": program("sshCommand"),
        "core.askPass": program("askPass"),
        "credential.helper": f"!{program('credential.helper')}",
        "gpg.program": program("gpg.program"),
        "log.showSignature": "true",
        "core.editor": program("editor"),
        "protocol.ext.allow": "always",
    }
    for key, value in settings.items():
        git("config", key, value, cwd=tree)
    # The first program of all, and the one the issue found, comes through an include.
    (root / "included.cfg").write_text(f"[core]\n\tfsmonitor = \"echo fsmonitor >> {marker}; false\"\n")
    git("config", "include.path", str(root / "included.cfg"), cwd=tree)
    with open(tree / "setup.py", "a") as handle:  # a modified file: status and diff read it through the drivers
        handle.write("# local change\n")
    return tree, marker


def ran(marker: Path) -> list[str]:
    return sorted(set(marker.read_text().split())) if marker.exists() else []


@pytest.fixture
def hostile(tmp_path):
    tree, marker = make_hostile_tree(tmp_path)
    # The trap works: plain git runs the tree's programs.
    subprocess.run(["git", "status", "--porcelain"], cwd=tree, capture_output=True, env=PLAIN_GIT)
    assert {"fsmonitor", "filter.process"} <= set(ran(marker))
    marker.unlink()
    return tree, marker


def test_no_function_that_reads_a_tree_runs_its_programs(hostile, tmp_path):
    tree, marker = hostile
    state = checkout.inspect_checkout(tree)
    assert state.is_repo and state.dirty_files == ["setup.py"] and len(state.head) == 40
    facts = checkout.read_checkout(tree, managed=False)
    assert facts.dirty and facts.commit == state.head
    assert build_wheel.has_git_tags(tree)
    assert build_wheel.variant_version(tree, None, CudaRelease(12, 8), parse_arch_list("12.0")).startswith("0.1.0+")
    assert vllm_tree.detect_version(tree) == ("0.1.0", "git tag v0.1.0")
    patches.applied_patches(tree)
    context_git.sanitize_git_dir(tree, tmp_path / "git-copy")
    proc = git_safe.run_git(["diff", "HEAD"], tree)
    assert proc.returncode == 0 and "+# local change" in proc.stdout
    proc = git_safe.run_git(["log", "-1", "--format=%H"], tree)
    assert proc.stdout.strip() == state.head
    assert ran(marker) == []


@pytest.mark.parametrize("task", [
    ["plan"], ["build-wheel", "--dry-run"], ["wheel", "--dry-run"], ["image", "--dry-run"], ["bake", "--dry-run"],
    ["inspect-tree"], ["fetch-deps", "--dry-run"],
])
def test_no_task_runs_the_trees_programs(hostile, task):
    tree, marker = hostile
    proc = subprocess.run([sys.executable, "-m", "invoke", *task, "--vllm-src", str(tree)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "300"}, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert ran(marker) == [], proc.stdout[-2000:] + proc.stderr[-2000:]


def test_a_remote_program_the_command_line_cannot_override_is_refused(hostile, tmp_path):
    """remote.<name>.uploadpack: git keeps the first value it reads, so `-c` cannot outrank the tree's."""
    tree, marker = hostile
    git("config", "remote.origin.url", str(tmp_path / "elsewhere"), cwd=tree)
    git("config", "remote.origin.uploadpack", f"sh -c 'echo uploadpack >> {marker}'", cwd=tree)
    with pytest.raises(ForgeError, match=r"sets remote\.origin\.uploadpack .* Fix: remove it"):
        git_safe.run_git(["fetch", "origin"], tree, extra_config=[("protocol.file.allow", "always")])
    assert git_safe.run_git(["status", "--porcelain"], tree).returncode == 0  # looking at the tree still works
    assert ran(marker) == []


def test_a_tree_protocol_setting_is_switched_off(hostile, tmp_path):
    tree, marker = hostile
    git("config", "remote.evil.url", f"ext::sh -c 'echo ext >> {marker}'", cwd=tree)
    proc = git_safe.run_git(["fetch", "evil"], tree)
    assert proc.returncode != 0 and "not allowed" in proc.stderr
    assert ran(marker) == []


def test_your_own_settings_are_kept(tmp_path):
    """Only what the tree sets is overridden: your global ssh command (a key for work) still applies."""
    tree = tmp_path / "tree"
    tree.mkdir()
    git("init", "-q", cwd=tree)
    git("config", "core.sshCommand", "evil", cwd=tree)
    global_config = tmp_path / "gitconfig"
    global_config.write_text("[core]\n\tsshCommand = ssh -i ~/.ssh/work\n")
    argv = git_safe.git_argv(["status"], cwd=tree, env={"GIT_CONFIG_GLOBAL": str(global_config)})
    assert argv[-1] == "status" and "core.sshcommand=ssh -i ~/.ssh/work" in [a.lower() for a in argv]


def test_a_tree_owned_by_another_user_is_refused_in_one_line(hostile, monkeypatch):
    tree, marker = hostile
    monkeypatch.setenv("GIT_TEST_ASSUME_DIFFERENT_OWNER", "1")  # git's own switch for this check
    with pytest.raises(ForgeError, match=r"git refuses to read .*tree: it belongs to .* Fix: work on a copy"):
        checkout.inspect_checkout(tree)
    assert ran(marker) == []


