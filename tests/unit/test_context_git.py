"""vllm_forge/source/context_git.py with real git: the staged copy of a checkout keeps history and loses credentials."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.image import staging
from vllm_forge.source import context_git

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
    staging.stage_checkout(src, dest, tmp_path / "git-mirror")
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
    assert staging.stage_checkout(src, dest, tmp_path / "git-mirror") == 0
    (src / "new.py").write_text("x = 1\n")
    git(src, "add", "-A")
    git(src, "commit", "-qm", "third")
    copied = staging.stage_checkout(src, dest, tmp_path / "git-mirror")
    assert 0 < copied < 10
    assert git(dest, "log", "-1", "--format=%s").strip() == "third"


def test_a_linked_worktree_is_refused_in_one_line(tmp_path):
    """Its .git file points into the main repository, outside the checkout: the copy would take from there."""
    main = make_repo(tmp_path / "main")
    wt = tmp_path / "wt"
    git(main, "worktree", "add", "-q", "-b", "feature", str(wt))
    with pytest.raises(ForgeError, match=r"wt/\.git points at .*main/\.git/worktrees/wt, outside .*wt: .* Fix: bake "
                                         r"from the main checkout"):
        stage(wt, tmp_path)
    assert not (tmp_path / "git-mirror" / "objects").exists()


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


@pytest.fixture
def host_secret(tmp_path) -> Path:
    """A file of the host's that no build context may hold (a private key, /etc/shadow)."""
    secrets = tmp_path / "home" / ".ssh"
    secrets.mkdir(parents=True)
    (secrets / "id_ed25519").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{TOKEN}\n")
    return secrets / "id_ed25519"


def test_alternates_naming_a_host_directory_are_refused(tmp_path, host_secret):
    """The finding: `echo ~/.ssh > .git/objects/info/alternates` copied the key into context/vllm/.git."""
    src = make_repo(tmp_path / "src")
    (src / ".git" / "objects" / "info" / "alternates").write_text(f"{host_secret.parent}\n")
    with pytest.raises(ForgeError, match=r"objects/info/alternates borrows objects from another repository.* "
                                         r"Fix: make the checkout self-contained"):
        stage(src, tmp_path)
    assert not any(TOKEN.encode() in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p != host_secret)


def test_borrowed_objects_of_a_real_clone_are_refused_too(tmp_path):
    origin = make_repo(tmp_path / "origin")
    shared = tmp_path / "shared"
    subprocess.run(["git", "clone", "-q", "--shared", str(origin), str(shared)], check=True, env=GIT_ENV)
    with pytest.raises(ForgeError, match="borrows objects"):
        stage(shared, tmp_path)
    git(shared, "repack", "-a", "-d", "-q")  # the fix the message gives
    (shared / ".git" / "objects" / "info" / "alternates").unlink()
    dest = stage(shared, tmp_path)
    assert git(dest, "log", "--format=%s").split() == ["second", "first"]


@pytest.mark.parametrize("name", ["packed-refs", "HEAD", "index", "shallow", "config", "refs/tags/v9",
                                  "objects/pack/pack-x.pack", "refs"])
def test_a_symlinked_git_file_is_refused_naming_it(tmp_path, host_secret, name):
    src = make_repo(tmp_path / "src")
    git(src, "pack-refs", "--all")
    target = src / ".git" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    target.symlink_to(host_secret.parent if name == "refs" else host_secret)
    with pytest.raises(ForgeError, match=rf"\.git/{name} is a symlink to .*: its build context would take files "
                                         r"from outside the checkout\. Fix: replace the link"):
        stage(src, tmp_path)
    assert not any(TOKEN.encode() in p.read_bytes() for p in (tmp_path / "git-mirror").rglob("*") if p.is_file())


@pytest.mark.parametrize("pointer", ["gitdir", "commondir"])
def test_a_pointer_out_of_the_checkout_is_refused(tmp_path, pointer):
    other = make_repo(tmp_path / "other-private")  # someone's private repository on this host
    src = make_repo(tmp_path / "src")
    if pointer == "gitdir":
        import shutil

        shutil.rmtree(src / ".git")
        (src / ".git").write_text(f"gitdir: {other / '.git'}\n")
        where = r"src/\.git"
    else:
        (src / ".git" / "commondir").write_text(f"{other / '.git'}\n")
        where = r"src/\.git/commondir"
    with pytest.raises(ForgeError, match=rf"{where} points at .*other-private/\.git, outside .*src"):
        stage(src, tmp_path)


def test_a_fifo_in_the_git_dir_is_refused_not_read(tmp_path):
    src = make_repo(tmp_path / "src")
    os.mkfifo(src / ".git" / "objects" / "pack" / "trap")
    with pytest.raises(ForgeError, match=r"objects/pack/trap is not a regular file"):
        stage(src, tmp_path)


def test_a_link_planted_at_the_git_mirror_is_replaced_not_followed(tmp_path):
    """The finding: a symlink at build/bake/git/vllm was followed, and the clean-up of stale entries then
    deleted every other file in its target."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("mine\n")
    (victim / "objects").mkdir()
    (victim / "objects" / "keep.txt").write_text("mine too\n")
    mirror = tmp_path / "git-mirror"
    mirror.symlink_to(victim, target_is_directory=True)
    src = make_repo(tmp_path / "src")
    stage(src, tmp_path)
    assert (victim / "notes.txt").read_text() == "mine\n" and (victim / "objects" / "keep.txt").exists()
    assert sorted(p.name for p in victim.iterdir()) == ["notes.txt", "objects"]
    assert mirror.is_dir() and not mirror.is_symlink() and (mirror / "HEAD").is_file()


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


def test_checkout_copy_skips_logins_and_nested_repositories(tmp_path):
    from vllm_forge.image.context_filter import ContextFilter

    skip = ContextFilter(tmp_path)
    assert skip(Path(".git"), True) and skip(Path(".git"), False)  # the top one is staged sanitized
    assert skip(Path("third_party/x/.git"), True)  # a nested repository: not source
    assert not skip(Path("third_party/x/.git"), False)  # a submodule's gitlink
    for name in (".netrc", "_netrc", ".git-credentials", ".gitconfig"):
        assert skip(Path("deep/dir") / name, False)
    assert not skip(Path("vllm/__init__.py"), False)
