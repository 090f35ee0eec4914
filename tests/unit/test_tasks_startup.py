"""`invoke --list` imports tasks.py: it must not load the scripts/ modules the tasks use (startup < 0.5 s)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_tasks_loads_no_task_module(repo_root):
    code = ("import sys, tasks; print(sorted(m for m in sys.modules if m.startswith('scripts.') "
            "and type(sys.modules[m]).__name__ == 'module'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)  # a printed list of names
    assert set(loaded) <= {"scripts.config", "scripts.errors", "scripts.plan"}, loaded


def test_every_task_is_collected(repo_root):
    out = subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=repo_root, capture_output=True, text=True,
                         check=True).stdout
    for name in ("clone", "use-existing-torch", "build-wheel", "wheel", "check-size", "bake", "image", "inspect",
                 "serve", "stop", "plan", "audit", "doctor", "nccl-test", "nccl-diagnose", "inspect-tree",
                 "fetch-deps", "archs", "demo"):
        assert f"  {name} " in out, name
