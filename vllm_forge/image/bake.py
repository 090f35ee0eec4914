"""Run a planned bake: stage the context, write the secrets (0600, removed afterwards), run the plan's
commands, publish an exported wheel into dist/ one rename at a time, and say what BuildKit took from its
cache. Bakes that share a context directory take turns.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.core.errors import ForgeError
from vllm_forge.core.nofollow import open_nofollow, real_dir, remove, write_file
from vllm_forge.core.plan import run_command
from vllm_forge.image.bake_plan import BakePlan
from vllm_forge.image.jit import JIT_FAIL_LINE, JIT_FIX
from vllm_forge.image.staging import stage_context


@dataclass
class BakeResult:
    image: str
    image_id: str
    seconds: float
    wheels: list[Path]
    cached_steps: int
    total_steps: int
    executed: list[str] = field(default_factory=list)  # titles of the steps that ran (not cached)
    log_path: Path | None = None
    farm: list[str] = field(default_factory=list)  # what the build stage said about the farm and its compiles


def run_bake(
    plan: BakePlan, *, on_line: Callable[[str], None] | None = None, log_path: Path | None = None
) -> BakeResult:
    # Bakes from one vllm-forge share its staged context and secrets dir (build/bake): one at a time.
    # A second waits here instead of re-staging the context under the first one's running build.
    with _context_lock(Path(plan.request.context_dir), on_line):
        return _run_bake(plan, on_line=on_line, log_path=log_path)


@contextlib.contextmanager
def _context_lock(context_dir: Path, on_line: Callable[[str], None] | None = None):
    import fcntl

    context_dir.mkdir(parents=True, exist_ok=True)
    lock = context_dir / ".bake.lock"
    if lock.is_symlink():  # planted: truncating "the lock" would truncate its target
        remove(lock)
    with os.fdopen(open_nofollow(lock, os.O_RDWR | os.O_CREAT), "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            if on_line:
                on_line(f"waiting for another bake (pid {handle.read().strip() or '?'}) that uses {context_dir}")
            fcntl.flock(handle, fcntl.LOCK_EX)  # Ctrl-C while waiting still interrupts
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def _run_bake(
    plan: BakePlan, *, on_line: Callable[[str], None] | None = None, log_path: Path | None = None
) -> BakeResult:
    started = time.monotonic()
    if plan.stage_context:
        left_out: list[str] = []
        stage_context(plan, left_out=left_out)
        for line in left_out:
            if on_line:
                on_line(line)
    written: list[Path] = []
    steps: dict[str, str] = {}  # BuildKit step number -> its title
    cached: set[str] = set()
    jit_failure: list[str] = []
    farm_lines: list[str] = []

    def watch(line: str) -> None:
        failed = re.search(JIT_FAIL_LINE, line)
        if failed:
            jit_failure.append(failed.group(1).strip())
        said = re.search(r"(?<!# )(distributed compiles o(?:n|ff).*|compiles: \d+ remote.*)$", line)
        if said:  # build_wheel.py in the build stage: the farm's state, then where the compiles ran
            farm_lines.append(said.group(1).strip())
        match = re.match(r"^#(\d+) (CACHED|\[(?!internal\])(?!.*\] FROM ).*)", line)
        if match:
            if match.group(2) == "CACHED":
                cached.add(match.group(1))
            else:
                steps.setdefault(match.group(1), match.group(2))
        if on_line:
            on_line(line)

    try:
        for secret_id, value in plan.secret_values.items():
            path = Path(plan.secrets[secret_id])
            path.parent.parent.mkdir(parents=True, exist_ok=True)
            real_dir(path.parent)
            write_file(path, value, mode=0o600)  # made next to it and renamed: never through a planted link
            written.append(path)
        if log_path:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        if plan.export_dir:
            plan.export_dir.mkdir(parents=True)
        for command in plan.commands:
            try:
                run_command(command, on_line=watch, log_path=log_path)
            except ForgeError:
                if jit_failure:
                    raise ForgeError(f"the runtime image cannot JIT-compile kernels: {jit_failure[-1]}",
                                     JIT_FIX) from None
                raise
        exported = _publish_export(plan.export_dir) if plan.export_dir else []
    finally:
        for path in written:
            path.unlink(missing_ok=True)
        for argv in plan.cleanup:
            subprocess.run(argv, capture_output=True)
        if plan.export_dir:
            shutil.rmtree(plan.export_dir, ignore_errors=True)
    image_id = ""
    if plan.image:
        proc = subprocess.run(
            [plan.client.path, "image", "inspect", "--format", "{{.Id}}", plan.image], capture_output=True, text=True
        )
        image_id = proc.stdout.strip()
    wheels = [path for path in exported if path.suffix == ".whl"]
    return BakeResult(plan.image, image_id, time.monotonic() - started, wheels, len(cached & set(steps)), len(steps),
        [title for number, title in steps.items() if number not in cached], farm=farm_lines,
    )


def _publish_export(export_dir: Path) -> list[Path]:
    """Move what the export wrote into dist/ (its parent), one rename per file; returns the new paths."""
    published = []
    for path in sorted(export_dir.iterdir()):
        if path.is_file():
            final = export_dir.parent / path.name
            os.replace(path, final)
            published.append(final)
    return published
