"""What a task prints is what it runs: every task's `--dry-run` against the same task run for real.

The real run records every command it executes (vllm_forge/core/plan.py `record_command`, here through
$VLLM_FORGE_COMMAND_LOG); the dry run's printed command lines must be exactly those, in order. `invoke
plan` prints the same steps too. Only values that differ between two runs by design are normalised: the
private staging directory's name (host, pid, random) and the image's creation time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import docker_available, require_tool

pytestmark = pytest.mark.integration

NORMALISE = [
    (re.compile(r"\.staging-[^/ ']+"), ".staging-X"),
    (re.compile(r"org\.opencontainers\.image\.created=[^ ']+"), "org.opencontainers.image.created=X"),
]


def normal(line: str) -> str:
    for pattern, repl in NORMALISE:
        line = pattern.sub(repl, line)
    return line


def invoke(repo_root: Path, *args: str, log: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "400"}
    env.pop("VLLM_FORGE_COMMAND_LOG", None)
    if log is not None:
        env["VLLM_FORGE_COMMAND_LOG"] = str(log)
    proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=repo_root, capture_output=True, text=True,
                          env=env, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def printed_commands(stdout: str, steps: tuple[str, ...] | None = None) -> list[str]:
    """The command lines of each step block (a rule with the step's title, then indented lines)."""
    out, current = [], None
    for line in stdout.splitlines():
        rule = re.match(r"^(\S[^─]*?) ─+$", line)
        if rule:
            current = rule.group(1).strip()
            continue
        if current is None or not line.startswith("  "):
            current = None if not line.startswith("  ") else current
            continue
        text = line.strip()
        if text.startswith("#") or text.startswith("not ready:"):
            continue
        if steps is None or current in steps:
            out.append(normal(text))
    return out


def executed(log: Path) -> list[str]:
    if not log.exists():
        return []
    return [normal(json.loads(line)["shell"]) for line in log.read_text().splitlines()]


def dry_then_real(repo_root: Path, tmp_path: Path, *args: str) -> tuple[list[str], list[str]]:
    dry = invoke(repo_root, *args, "--dry-run")
    log = tmp_path / f"commands-{uuid.uuid4().hex[:6]}.jsonl"
    invoke(repo_root, *args, log=log)
    return printed_commands(dry.stdout), executed(log)


@pytest.fixture
def workdir(tmp_path, minivllm_repo):
    return {"repo": minivllm_repo, "checkout": tmp_path / "vllm", "dist": tmp_path / "dist"}


def test_core_tasks_print_what_they_run(repo_root, tmp_path, workdir, nvcc_toolchain):
    where = ["--checkout-dir", str(workdir["checkout"])]
    printed, ran = dry_then_real(repo_root, tmp_path, "clone", "--repo", workdir["repo"], "--ref", "v0.1.0", *where)
    assert printed == ran and any(" clone --filter=blob:none " in line for line in ran)

    printed, ran = dry_then_real(repo_root, tmp_path, "use-existing-torch", *where)
    assert printed == ran and len(ran) == 1 and "use_existing_torch.py" in ran[0]

    build = ("build-wheel", "--arch", "12.0", "--dist-dir", str(workdir["dist"]), *where)
    printed, ran = dry_then_real(repo_root, tmp_path, *build)
    assert printed == ran and any("setup.py bdist_wheel" in line for line in ran)
    assert "TORCH_CUDA_ARCH_LIST=12.0" in ran[-1]

    # `invoke plan` prints the very steps: its use-existing-torch/build-wheel blocks equal build-wheel's dry run
    # in the same state (now with a wheel of the same kernel key in dist/: both say the kernels are reused)
    again = printed_commands(invoke(repo_root, *build, "--dry-run").stdout)
    plan = invoke(repo_root, "plan", "--repo", workdir["repo"], "--ref", "v0.1.0", "--arch", "12.0", "--dist-dir",
                  str(workdir["dist"]), *where, check=False)
    assert printed_commands(plan.stdout, ("use-existing-torch", "build-wheel")) == again
    assert "VLLM_USE_PRECOMPILED=1" in again[-1]

    # the wheel chain on the existing checkout (reused): clone -> use-existing-torch -> build-wheel -> check-size
    chain = ("wheel", "--repo", workdir["repo"], "--ref", "v0.1.0", "--arch", "12.0", "--dist-dir",
             str(workdir["dist"]), *where)
    printed, ran = dry_then_real(repo_root, tmp_path, *chain)
    assert printed == ran and any("setup.py bdist_wheel" in line for line in ran)

    printed, ran = dry_then_real(repo_root, tmp_path, "check-size", "--dist-dir", str(workdir["dist"]))
    assert printed == ran == []  # it reads the wheel, runs nothing


def test_a_fresh_checkout_is_cloned_first_by_the_chain(repo_root, tmp_path, workdir, nvcc_toolchain):
    """No checkout yet: the dry run shows the clone and marks the later steps as planned after it; the real
    run plans them again from the checkout and prints, before each step, exactly what it then runs."""
    chain = ("wheel", "--repo", workdir["repo"], "--ref", "v0.1.0", "--arch", "12.0", "--dist-dir",
             str(workdir["dist"]), "--checkout-dir", str(workdir["checkout"]))
    dry = invoke(repo_root, *chain, "--dry-run")
    assert "planned after clone" in dry.stdout and not workdir["checkout"].exists()
    log = tmp_path / "commands.jsonl"
    real = invoke(repo_root, *chain, log=log)
    assert printed_commands(real.stdout) == executed(log)
    assert printed_commands(dry.stdout) == executed(log)[: len(printed_commands(dry.stdout))]  # the clone
    assert "summary" in real.stdout and "v0.1.0" in real.stdout


@pytest.fixture(scope="module")
def standins():
    require_tool("a Docker engine", docker_available())
    from vllm_forge.image import docker_client
    from vllm_forge.image.standin_images import ensure_standin_images

    client = docker_client.find_docker()
    return ensure_standin_images(client.path, log=lambda line: None)


@pytest.mark.docker
def test_image_tasks_print_what_they_run(repo_root, tmp_path, workdir, standins):
    subprocess.run(["git", "clone", "-q", "--branch", "v0.1.0", workdir["repo"], str(workdir["checkout"])],
                   check=True, capture_output=True)
    tag = f"vllm-forge-test/printed:{uuid.uuid4().hex[:8]}"
    name = f"vllm-forge-printed-{uuid.uuid4().hex[:6]}"
    docker = os.environ.get("VLLM_FORGE_DOCKER") or shutil.which("docker")
    bake = ("--checkout-dir", str(workdir["checkout"]), "--arch", "12.0", "--cuda", "13.0",
            "--base-image", standins["build"], "--runtime-image", standins["runtime"], "--tag", tag)
    try:
        printed, ran = dry_then_real(repo_root, tmp_path, "bake", *bake)
        assert printed == ran and len(ran) == 1 and " build " in ran[0]
        printed, ran = dry_then_real(repo_root, tmp_path, "image", "--repo", workdir["repo"], *bake)
        assert printed == ran and any(" build " in line for line in ran)
        serve = ("serve", "minivllm/echo", "--image", tag, "--gpus", "none", "--port", "18731", "--name", name,
                 "--timeout", "120")
        printed, ran = dry_then_real(repo_root, tmp_path, *serve)
        assert printed == ran and len(ran) == 1 and ran[0].split()[1:3] == ["run", "-d"]
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True)
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True)
