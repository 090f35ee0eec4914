"""scripts/context_git.py with real git: the staged copy of a checkout keeps history and loses credentials."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from scripts import context_git, image

TOKEN = f"forge-token-{uuid.uuid4().hex}"
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=GIT_ENV).stdout


def make_repo(path: Path, *extra_init: str) -> Path:
    subprocess.run(["git", "init", "-q", *extra_init, str(path)], check=True, env=GIT_ENV)
    (path / "setup.py").write_text("print('setup')\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "first")
    git(path, "tag", "v1.0.0")
    (path / "README").write_text("more\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "second")
    return path


def plant(repo: Path) -> None:
    git(repo, "remote", "add", "origin", f"https://forgeuser:{TOKEN}@example.com/vllm.git?private_token={TOKEN}")
    git(repo, "config", "remote.origin.pushurl", f"https://forgeuser:{TOKEN}-push@example.com/vllm.git")
    git(repo, "config", "http.extraHeader", f"Authorization: Bearer {TOKEN}")
    git(repo, "config", "http.https://example.com/.extraHeader", f"Authorization: Bearer {TOKEN}")
    git(repo, "config", f"url.https://u:{TOKEN}@example.com/.insteadOf", "https://example.com/")
    git(repo, "config", "credential.helper", f"store --file=/tmp/{TOKEN}")
    git(repo, "config", "include.path", f"/tmp/{TOKEN}.inc")
    git(repo, "config", "core.sshCommand", f"ssh -i /tmp/{TOKEN}")
    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "update-ref", "-m", f"clone: from https://forgeuser:{TOKEN}@example.com/vllm.git", "HEAD", head)
    git_dir = Path(git(repo, "rev-parse", "--absolute-git-dir").strip())
    (git_dir / "FETCH_HEAD").write_text(f"{head}\t\tbranch 'main' of https://u:{TOKEN}@example.com/vllm\n")
    (git_dir / "hooks" / "pre-push").write_text(f"#!/bin/sh\necho {TOKEN}\n")
    (repo / ".netrc").write_text(f"machine example.com login u password {TOKEN}\n")
    (repo / "sub").mkdir(exist_ok=True)
    (repo / "sub" / ".git-credentials").write_text(f"https://u:{TOKEN}@example.com\n")


def assert_clean(root: Path) -> int:
    count = 0
    for path in root.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
            count += 1
    return count


def stage(src: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "context" / "vllm"
    image.stage_checkout(src, dest, tmp_path / "git-mirror")
    return dest


def test_staged_checkout_keeps_history_and_drops_every_credential(tmp_path):
    src = make_repo(tmp_path / "src")
    plant(src)
    assert TOKEN in (src / ".git" / "config").read_text()  # the control
    dest = stage(src, tmp_path)
    assert assert_clean(tmp_path / "context") > 5 and assert_clean(tmp_path / "git-mirror") > 5
    assert not (dest / ".netrc").exists() and not (dest / "sub" / ".git-credentials").exists()
    assert git(dest, "describe", "--tags", "--dirty").startswith("v1.0.0-1-g")  # tags came; not dirty
    assert git(dest, "status", "--porcelain", "--untracked-files=no") == ""  # the index came
    assert git(dest, "log", "--format=%s").split() == ["second", "first"]
    assert git(dest, "remote", "get-url", "origin").strip() == "https://example.com/vllm.git"
    config = git(dest, "config", "--local", "--list")
    for gone in ("extraheader", "insteadof", "credential", "include", "sshcommand", "pushurl"):
        assert gone not in config.lower()
    assert sorted(p.name for p in (dest / ".git").iterdir()) == ["HEAD", "config", "index", "objects", "refs"]


def test_restaging_copies_only_what_changed(tmp_path):
    src = make_repo(tmp_path / "src")
    dest = stage(src, tmp_path)
    assert image.stage_checkout(src, dest, tmp_path / "git-mirror") == 0
    (src / "new.py").write_text("x = 1\n")
    git(src, "add", "-A")
    git(src, "commit", "-qm", "third")
    copied = image.stage_checkout(src, dest, tmp_path / "git-mirror")
    assert 0 < copied < 10
    assert git(dest, "log", "-1", "--format=%s").strip() == "third"


def test_a_linked_worktree_becomes_a_repository_of_its_own(tmp_path):
    main = make_repo(tmp_path / "main")
    plant(main)
    wt = tmp_path / "wt"
    git(main, "worktree", "add", "-q", "-b", "feature", str(wt))
    assert (wt / ".git").is_file()
    dest = stage(wt, tmp_path)
    assert (dest / ".git").is_dir() and assert_clean(tmp_path / "context") > 3
    assert git(dest, "rev-parse", "--abbrev-ref", "HEAD").strip() == "feature"
    assert git(dest, "describe", "--tags", "--dirty").startswith("v1.0.0-1-g")


def test_submodule_git_dirs_are_sanitized_too(tmp_path):
    sub_origin = make_repo(tmp_path / "suborigin")
    top = make_repo(tmp_path / "top")
    git(top, "-c", "protocol.file.allow=always", "submodule", "add", "-q", sub_origin.as_uri(), "third_party/sub")
    git(top, "commit", "-qm", "add sub")
    module = top / ".git" / "modules" / "third_party" / "sub"
    git(module, "config", "remote.origin.url", f"https://u:{TOKEN}@example.com/sub.git")
    git(module, "config", "http.extraHeader", f"Authorization: Bearer {TOKEN}")
    dest = stage(top, tmp_path)
    assert_clean(tmp_path / "context")
    assert (dest / "third_party" / "sub" / ".git").is_file()  # the gitlink: a relative path, kept
    assert git(dest / "third_party" / "sub", "describe", "--tags").startswith("v1.0.0")
    assert git(dest / "third_party" / "sub", "remote", "get-url", "origin").strip() == "https://example.com/sub.git"


def test_borrowed_objects_come_along(tmp_path):
    origin = make_repo(tmp_path / "origin")
    shared = tmp_path / "shared"
    subprocess.run(["git", "clone", "-q", "--shared", str(origin), str(shared)], check=True, env=GIT_ENV)
    assert (shared / ".git" / "objects" / "info" / "alternates").is_file()
    dest = stage(shared, tmp_path)
    origin.rename(tmp_path / "gone")  # the staged copy must not need the other repository
    assert git(dest, "log", "--format=%s").split() == ["second", "first"]
    assert git(dest, "fsck", "--connectivity-only") == ""


def test_sha256_repository_keeps_its_object_format(tmp_path):
    src = make_repo(tmp_path / "src", "--object-format=sha256")
    dest = stage(src, tmp_path)
    assert len(git(dest, "rev-parse", "HEAD").strip()) == 64


def test_no_git_no_git_dir(tmp_path):
    src = tmp_path / "plain"
    src.mkdir()
    (src / "setup.py").write_text("")
    dest = stage(src, tmp_path)
    assert (dest / "setup.py").is_file() and not (dest / ".git").exists()


@pytest.mark.parametrize("url, public", [
    ("https://user:tok@host/org/vllm.git", "https://host/org/vllm.git"),
    ("https://tok@host/org/vllm.git?private_token=x#y", "https://host/org/vllm.git"),
    ("git@github.com:org/vllm.git", "git@github.com:org/vllm.git"),
    ("ssh://git@host/org/vllm.git", "ssh://host/org/vllm.git"),
    ("file:///srv/git/vllm.git", "file:///srv/git/vllm.git"),
])
def test_public_url(url, public):
    assert context_git.public_url(url) == public


def test_checkout_copy_skips_logins_and_nested_repositories():
    skip = image._checkout_skip
    assert skip(Path(".git"), True) and skip(Path(".git"), False)  # the top one is staged sanitized
    assert skip(Path("third_party/x/.git"), True)  # a nested repository: not source
    assert not skip(Path("third_party/x/.git"), False)  # a submodule's gitlink
    for name in (".netrc", "_netrc", ".git-credentials", ".gitconfig"):
        assert skip(Path("deep/dir") / name, False)
    assert not skip(Path("vllm/__init__.py"), False)
