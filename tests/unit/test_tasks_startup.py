"""`invoke --list` imports tasks.py: it must not load the vllm_forge modules the tasks use (startup < 0.5 s)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_tasks_loads_no_task_module(repo_root):
    # Loaded modules of the package; its wings' __init__ (a docstring each) load with any module they hold.
    code = ("import sys, tasks; print(sorted(m for m in sys.modules if m.startswith('vllm_forge.') "
            "and type(sys.modules[m]).__name__ == 'module' and sys.modules[m].__spec__.submodule_search_locations "
            "is None))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)  # a printed list of names
    # The declarations, the task decorator, the command-line check and the consoles; no task's module.
    framework = {"vllm_forge.core.config", "vllm_forge.core.errors", "vllm_forge.core.plan", "vllm_forge.core.options",
                 "vllm_forge.cli._invoke", "vllm_forge.cli.command_line", "vllm_forge.cli.flags",
                 "vllm_forge.cli.render", "vllm_forge.cli.task"}
    assert set(loaded) <= framework, loaded


def test_every_task_is_collected(repo_root):
    out = subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=repo_root, capture_output=True, text=True,
                         check=True).stdout
    for name in ("clone", "use-existing-torch", "build-wheel", "wheel", "check-size", "bake", "image", "inspect",
                 "serve", "stop", "plan", "audit", "doctor", "nccl-test", "nccl-diagnose", "inspect-tree",
                 "fetch-deps", "archs", "demo"):
        assert f"  {name} " in out, name
