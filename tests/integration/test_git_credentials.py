"""A login in a repository URL reaches git through the environment, never through any command line.

`invoke clone --repo https://oauth2:TOKEN@host/...` (and a --url-map URL with a login) used to put the
token in the argv of `git ls-remote`, `git clone` and `git remote-https`, where every user of the host
reads it (`ps`). Here a git server over HTTP that demands the login serves the clone; every git started
from PATH records its command line, and /proc is watched for the token while git runs.
"""

from __future__ import annotations

import base64
import functools
import http.server
import os
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
from test_fetch_deps_bare_repos import github  # noqa: F401 (a fixture)

from vllm_forge.core.plan import recording
from vllm_forge.source import checkout

pytestmark = pytest.mark.integration


class ArgvWatch:
    """Every command line on this host that holds ``secret``, seen while the block runs (/proc, polled)."""

    def __init__(self, secret: str):
        self.secret = secret.encode()
        self.seen: list[str] = []
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    try:
                        with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                            cmdline = handle.read()
                    except OSError:
                        continue
                    if self.secret in cmdline:
                        self.seen.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
            self._stop.wait(0.002)

    def __enter__(self):
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def serve_with_login(root: Path, user: str, password: str):
    """A dumb-HTTP git server for ``root`` that answers 401 to any request without the login."""
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    seen: list[bool] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.headers.get("Authorization") == expected)
            if not seen[-1]:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.fixture
def recorded_git(tmp_path, monkeypatch):
    """A `git` first on PATH that appends its command line to a log, then runs the real git."""
    real = shutil.which("git")
    bin_dir, log = tmp_path / "bin", tmp_path / "git-argv.log"
    bin_dir.mkdir()
    (bin_dir / "git").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {real} "$@"\n')
    (bin_dir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


@pytest.fixture
def served_repo(tmp_path, minivllm_repo):
    bare = tmp_path / "srv" / "minivllm.git"
    shutil.copytree(Path(minivllm_repo.removeprefix("file://")), bare)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True)
    token = f"tok{uuid.uuid4().hex}"
    server, seen = serve_with_login(bare.parent, "oauth2", token)
    yield f"http://oauth2:{token}@127.0.0.1:{server.server_address[1]}/minivllm.git", token, seen
    server.shutdown()
    server.server_close()


def test_a_repo_token_is_in_no_command_line(tmp_path, served_repo, recorded_git):
    url, token, seen = served_repo
    dest = tmp_path / "vllm"
    with ArgvWatch(token) as watch, recording() as ran:
        checkout.clone(url, "v0.1.0", dest)  # ls-remote, clone, checkout
        checkout.clone(url, "main", dest)  # an update: fetch origin
    logged = recorded_git.read_text()
    assert "ls-remote" in logged and " clone " in logged and " fetch " in logged
    assert token not in logged, "a git command line held the token"
    assert watch.seen == [], watch.seen
    assert (dest / "CHANGELOG.md").exists()  # main's commit: both the clone and the update got through
    assert seen and all(seen)  # every request carried the login (an extraHeader: no 401 first)
    assert token not in (dest / ".git" / "config").read_text()  # the checkout does not keep it either
    assert all(token not in command.shell() for command in ran)


def test_a_login_with_quotes_in_its_password_still_works(tmp_path, minivllm_repo, recorded_git):
    bare = tmp_path / "srv" / "minivllm.git"
    shutil.copytree(Path(minivllm_repo.removeprefix("file://")), bare)
    subprocess.run(["git", "update-server-info"], cwd=bare, check=True)
    password = f"pa'ss\"<{uuid.uuid4().hex[:8]}"
    server, seen = serve_with_login(bare.parent, "user", password)
    try:
        quoted = password.replace("'", "%27").replace('"', "%22").replace("<", "%3C")
        url = f"http://user:{quoted}@127.0.0.1:{server.server_address[1]}/minivllm.git"
        checkout.clone(url, "v0.1.0", tmp_path / "vllm")
        assert any(seen) and (tmp_path / "vllm" / "setup.py").exists()
        assert password not in recorded_git.read_text() and quoted not in recorded_git.read_text()
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_map_login_is_in_no_command_line(tmp_path, github, recorded_git):  # noqa: F811
    """The same for fetch-deps --url-map: the dependency and its submodule come through a server that
    demands the login, and no git (clone, fetch, submodule update) had it on its command line."""
    from test_fetch_deps_bare_repos import make_tree

    from vllm_forge.deps import fetch_deps as fd

    for repo in (github["root"] / "https:" / "github.com" / "org").iterdir():
        subprocess.run(["git", "update-server-info"], cwd=repo, check=True)
    token = f"tok{uuid.uuid4().hex}"
    server, seen = serve_with_login(github["root"], "forge", token)
    try:
        target = f"http://forge:{token}@127.0.0.1:{server.server_address[1]}/https:/github.com/"
        cache = tmp_path / "cache"
        with ArgvWatch(token) as watch:
            fd.fetch_deps(make_tree(tmp_path / "src", "v1.0"), cache, url_map={"https://github.com/": target})
        assert (cache / "deps" / "kernels@v1.0" / "third" / "sub" / "sub.txt").read_text() == "submodule\n"
        assert " fetch " in recorded_git.read_text() and token not in recorded_git.read_text()
        assert watch.seen == [], watch.seen
        assert seen and all(seen)
    finally:
        server.shutdown()
        server.server_close()
