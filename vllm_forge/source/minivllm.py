"""The embedded default project: tests/fixtures/minivllm published as a git repo to clone from.

`invoke demo` and the tests clone it by a file:// URL, so the whole pipeline runs with no GitHub.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vllm_forge.core.errors import run_main
from vllm_forge.core.git_safe import run_git

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "minivllm"
RELEASE_TAG = "v0.1.0"
# Its one git dependency, which the miniature's CMake fetches from GitHub (opt-in, see its CMakeLists).
MINIDEP_DIR = FIXTURE_DIR.parent / "minidep"
MINIDEP_TAG = "v1.0.0"
MINIDEP_GITHUB_PREFIX = "https://github.com/vllm-forge/"
# Fixed identity and dates: the same fixture always gives the same commit hashes.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "vllm-forge", "GIT_AUTHOR_EMAIL": "forge@localhost",
    "GIT_COMMITTER_NAME": "vllm-forge", "GIT_COMMITTER_EMAIL": "forge@localhost",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}


def fixture_digest(root: Path = FIXTURE_DIR) -> str:
    digest = hashlib.sha256()
    skip = {"__pycache__", "build", "dist"}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not skip & set(p.relative_to(root).parts)):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _git(args, cwd):
    # protocol.file: the bare repo is cloned from a local path.
    proc = run_git(args, cwd, env=_GIT_ENV, extra_config=[("protocol.file.allow", "always")])
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)


def publish_minivllm(dest_dir: Path, *, source: Path = FIXTURE_DIR) -> str:
    """A bare repo of the fixture at ``dest_dir/minivllm.git`` (rebuilt when the fixture changed):
    a release commit tagged v0.1.0 and one commit after it on ``main``. Returns its file:// URL."""
    return _publish(source, Path(dest_dir), "minivllm", RELEASE_TAG, after_release={
        "CHANGELOG.md": "# Unreleased\n\n- development after 0.1.0\n"})


def publish_minidep(dest_dir: Path, *, source: Path = MINIDEP_DIR) -> str:
    """A bare repo of the miniature's git dependency at ``dest_dir/minidep.git``, tagged v1.0.0."""
    return _publish(source, Path(dest_dir), "minidep", MINIDEP_TAG)


def _publish(source: Path, dest_dir: Path, name: str, tag: str, after_release: dict[str, str] | None = None) -> str:
    dest_dir = dest_dir.expanduser().resolve()
    bare = dest_dir / f"{name}.git"
    stamp = bare / "forge-fixture-digest"
    digest = fixture_digest(source)
    if stamp.exists() and stamp.read_text().strip() == digest:
        return bare.as_uri()
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(source, work, ignore=shutil.ignore_patterns("__pycache__", "build", "dist", "*.egg-info"))
        _git(["init", "--quiet", "--initial-branch=main"], work)
        _git(["add", "--all"], work)
        _git(["commit", "--quiet", "-m", f"{name} {tag.lstrip('v')}"], work)
        _git(["tag", "-a", tag, "-m", f"{name} {tag.lstrip('v')}"], work)
        for path, text in (after_release or {}).items():
            (work / path).write_text(text)
            _git(["add", path], work)
        if after_release:
            _git(["commit", "--quiet", "-m", "Start the next development cycle"], work)
        staged = Path(tmp) / f"{name}.git"
        _git(["clone", "--quiet", "--bare", str(work), str(staged)], tmp)
        (staged / "forge-fixture-digest").write_text(digest + "\n")
        if bare.exists():
            shutil.rmtree(bare)
        staged.rename(bare)
    return bare.as_uri()


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Publish the miniature vLLM as a bare git repo.")
    parser.add_argument("dest_dir", type=Path, nargs="?", default=Path("~/.cache/vllm-forge"))
    args = parser.parse_args(argv)
    print(publish_minivllm(args.dest_dir))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
