"""Local patches to a vLLM checkout: a backported PR, a one-line fix from an issue thread.

``apply_patches`` applies unified diffs (``git diff`` / ``git format-patch`` output, or any ``diff
-u``) in order, each checked with ``git apply --check`` before ``git apply``. A patch that does not
apply is refused in one line and every patch this call applied is taken back, so the checkout is
left as it was. A patch already in the checkout (its reverse applies) is not applied twice, so the
same ``--patch`` can be given to every build.

What is applied is recorded next to the checkout's git metadata (``<git dir>/vllm-forge/patches``:
a copy of each patch and ``applied.json``), never in the work tree: ``applied_patches`` lists the
ones still in the checkout (a re-clone or reset drops them), for the wheel's build info, the image
labels (``patch_labels``) and the kernel-reuse key (``kernel_patches``: those touching kernel inputs).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.git_safe import run_git

# The checkout paths whose content decides the compiled extensions (files, or directories by prefix).
# setup.py is among them: it decides how CMake is called.
KERNEL_INPUT_FILES = ("CMakeLists.txt", "setup.py")
KERNEL_INPUT_DIRS = ("csrc/", "cmake/")
LABEL_KEY = "org.vllm-forge.patches"


@dataclass(frozen=True)
class Patch:
    """One patch file: its name, sha256 of its bytes and the checkout paths it changes."""

    name: str
    sha256: str
    files: tuple[str, ...]
    path: str = ""  # where it was read from (not part of its identity)

    @property
    def touches_kernels(self) -> bool:
        return any(is_kernel_input(f) for f in self.files)

    def record(self) -> dict:
        return {"name": self.name, "sha256": self.sha256, "files": list(self.files),
                "touches_kernels": self.touches_kernels}


def is_kernel_input(path: str) -> bool:
    path = path.removeprefix("./")
    return path in KERNEL_INPUT_FILES or path.startswith(KERNEL_INPUT_DIRS)


_DIFF_GIT = re.compile(r"^diff --git a/(\S+) b/(\S+)$", re.M)
_PLUS_MINUS = re.compile(r"^(?:\+\+\+|---) (\S+)", re.M)


def patched_files(text: str) -> tuple[str, ...]:
    """The checkout paths a unified diff changes (both sides of a rename), in order."""
    found: list[str] = []
    for a, b in _DIFF_GIT.findall(text):
        found += [a, b]
    for name in _PLUS_MINUS.findall(text):
        if name == "/dev/null":
            continue
        found.append(name[2:] if name[:2] in ("a/", "b/") else name)
    return tuple(dict.fromkeys(found))


def read_patch(path: Path | str) -> Patch:
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ForgeError(f"patch {path} does not exist", "pass the path of a unified diff (git diff > fix.patch)") \
            from None
    except OSError as err:
        raise ForgeError(f"cannot read patch {path} ({err.strerror})", "check the path and its permissions") from None
    files = patched_files(data.decode("utf-8", errors="replace"))
    if not files:
        raise ForgeError(f"{path} is not a unified diff (no ---/+++ or diff --git lines)",
                         "make it with `git diff > fix.patch` or `git format-patch`")
    return Patch(path.name, hashlib.sha256(data).hexdigest(), files, str(path))


def patches_from_config(value) -> list[str]:
    """invoke.yaml's ``patches`` (a list, or one string with paths separated by commas)."""
    if not value:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    raise ForgeError(f"forge.patches must be a list of patch files, got {value!r}",
                     "write it as a YAML list: patches: [fixes/a.patch, fixes/b.patch]")


def _git_apply(src: Path, patch_path: str, *extra: str) -> subprocess.CompletedProcess:
    # --recount: hand-edited patches often have wrong hunk line counts; git fixes them up.
    return run_git(["apply", "--recount", *extra, patch_path], src, env={"GIT_CONFIG_NOSYSTEM": "1"})


def _is_applied(src: Path, patch_path: str) -> bool:
    return _git_apply(src, patch_path, "--check", "--reverse").returncode == 0


def _state_dir(src: Path) -> Path:
    proc = run_git(["rev-parse", "--absolute-git-dir", "--show-toplevel"], src)  # no git at all: code 127
    lines = proc.stdout.split("\n") if proc.returncode == 0 else []
    if len(lines) >= 2 and Path(lines[1].strip()).resolve() == src.resolve():
        return Path(lines[0].strip()) / "vllm-forge" / "patches"
    return src / ".vllm-forge" / "patches"  # not a git checkout of its own (an unpacked sdist)


def _load_state(state: Path) -> list[dict]:
    try:
        data = json.loads((state / "applied.json").read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def _save_state(state: Path, records: list[dict], copies: dict[str, bytes]) -> None:
    state.mkdir(parents=True, exist_ok=True)
    for sha, data in copies.items():
        (state / f"{sha}.patch").write_bytes(data)
    tmp = state / f".applied.{os.getpid()}.json"
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    os.replace(tmp, state / "applied.json")


@dataclass
class PatchResult:
    patch: Patch
    status: str  # "applied" or "already applied"


def apply_patches(src: Path | str, paths: Iterable[Path | str], *,
                  on_line: Callable[[str], None] | None = None) -> list[PatchResult]:
    """Apply each patch in order (``git apply --check``, then ``git apply``); all or nothing."""
    src = Path(src).expanduser()
    patches = [read_patch(p) for p in paths]  # every file readable and a diff before anything changes
    if not patches:
        return []
    if not src.is_dir():
        raise ForgeError(f"{src} is not a vLLM checkout (it does not exist)", "run `invoke clone` first")
    done: list[PatchResult] = []
    try:
        for patch in patches:
            if _is_applied(src, patch.path):
                done.append(PatchResult(patch, "already applied"))
            else:
                check = _git_apply(src, patch.path, "--check")
                if check.returncode != 0:
                    why = next((line for line in check.stderr.splitlines() if line.startswith("error:")),
                               check.stderr.strip().splitlines()[-1] if check.stderr.strip() else "git apply failed")
                    raise ForgeError(
                        f"patch {patch.name} does not apply to {src} ({why.removeprefix('error: ').strip()}); "
                        "the checkout was left as it was",
                        "rebase the patch on this ref (or pick the ref it was made for), or drop --patch",
                    )
                applied = _git_apply(src, patch.path)
                if applied.returncode != 0:  # --check passed: only a race or a full disk gets here
                    raise ForgeError(f"git apply {patch.name} failed: {applied.stderr.strip()[-300:]}",
                                     "read the message above; the checkout was left as it was")
                done.append(PatchResult(patch, "applied"))
            if on_line:
                on_line(f"{done[-1].status}: {patch.name} (sha256 {patch.sha256[:12]}, {len(patch.files)} files)")
    except BaseException:
        for result in reversed(done):  # leave the checkout as it was, Ctrl-C included
            if result.status == "applied":
                _git_apply(src, result.patch.path, "--reverse")
        raise
    state = _state_dir(src)
    records = [r for r in _load_state(state) if r.get("sha256") not in {p.sha256 for p in patches}]
    records += [p.record() for p in patches]
    _save_state(state, records, {p.sha256: Path(p.path).read_bytes() for p in patches})
    return done


def applied_patches(src: Path | str) -> list[Patch]:
    """The patches vllm-forge applied to this checkout that are still in it, in the order applied."""
    src = Path(src).expanduser()
    if not src.is_dir():
        return []
    state = _state_dir(src)
    found = []
    records = _load_state(state)
    if records and shutil.which("git") is None:
        raise ForgeError(f"{src} has patches recorded by vllm-forge, and git is not installed to check them",
                         "install git")
    for record in records:
        copy = state / f"{record.get('sha256')}.patch"
        if copy.is_file() and _is_applied(src, str(copy)):
            found.append(Patch(record["name"], record["sha256"], tuple(record.get("files", ())), str(copy)))
    return found


def kernel_patches(patches: Iterable[Patch]) -> list[dict]:
    """The patches that change kernel inputs, as they enter the kernel-reuse key (name, sha256)."""
    return [{"name": p.name, "sha256": p.sha256} for p in patches if p.touches_kernels]


def patch_labels(patches: Iterable[Patch | dict]) -> dict[str, str]:
    """Image labels for the applied patches: ``org.vllm-forge.patches`` = ``a.patch@sha256:...,...``
    (empty string when none, so an image says it was built unpatched)."""
    items = [p if isinstance(p, dict) else asdict(p) for p in patches]
    return {LABEL_KEY: ",".join(f"{p['name']}@sha256:{p['sha256']}" for p in items)}


def plan_lines(src: Path | str, paths: Iterable[Path | str]) -> list[str]:
    """What `plan` / --dry-run say about the patches (read and classified, nothing applied)."""
    lines = []
    for patch in (read_patch(p) for p in paths):
        kind = "touches kernel inputs: part of the kernel-reuse key" if patch.touches_kernels else "Python only"
        lines.append(f"git apply --check && git apply {patch.path}  # sha256 {patch.sha256[:12]}, "
                     f"{len(patch.files)} file(s), {kind}")
    return lines


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Apply patches to a vLLM checkout, or list the applied ones.")
    parser.add_argument("src", type=Path, help="the checkout")
    parser.add_argument("patches", nargs="*", type=Path, help="unified diffs, applied in order")
    args = parser.parse_args(argv)
    apply_patches(args.src, args.patches, on_line=print)
    for patch in applied_patches(args.src):
        print(f"{patch.name} sha256:{patch.sha256}{' (kernel inputs)' if patch.touches_kernels else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
