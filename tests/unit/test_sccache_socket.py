"""The sccache socket lives in a per-user 0700 directory whose owner is checked: another local user
cannot bind it first (the sccache client sends its whole environment to whatever listens there)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vllm_forge.build import compile_cache as cc
from vllm_forge.core.errors import ForgeError


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    return tmp_path


def test_the_socket_is_in_a_private_directory(tmpdir_env):
    socket = Path(cc.compile_cache_env("sccache", tmpdir_env / "cache")["SCCACHE_SERVER_UDS"])
    private = tmpdir_env / f"vllm-forge-{os.getuid()}"
    assert socket.parent == private
    info = os.lstat(private)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    assert len(str(socket)) < 108  # sun_path


def test_a_predictable_path_in_tmp_is_gone(tmpdir_env):
    socket = cc.compile_cache_env("sccache", tmpdir_env / "cache")["SCCACHE_SERVER_UDS"]
    assert Path(socket).parent != tmpdir_env  # not straight in the shared tmp, where anyone can bind first


def test_a_planted_symlink_is_refused(tmpdir_env):
    elsewhere = tmpdir_env / "attacker"
    elsewhere.mkdir(mode=0o700)
    (tmpdir_env / f"vllm-forge-{os.getuid()}").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ForgeError, match="is a symlink"):
        cc.compile_cache_env("sccache", tmpdir_env / "cache")


def test_a_directory_others_can_enter_is_refused(tmpdir_env):
    (tmpdir_env / f"vllm-forge-{os.getuid()}").mkdir(mode=0o777)
    os.chmod(tmpdir_env / f"vllm-forge-{os.getuid()}", 0o777)
    with pytest.raises(ForgeError, match="open to other users"):
        cc.compile_cache_env("sccache", tmpdir_env / "cache")


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory owned by another user needs root")
def test_a_directory_made_by_another_user_is_refused(tmpdir_env):
    planted = tmpdir_env / f"vllm-forge-{os.getuid()}"
    planted.mkdir(mode=0o700)
    os.chown(planted, 65534, 65534)
    with pytest.raises(ForgeError, match="belongs to uid 65534"):
        cc.compile_cache_env("sccache", tmpdir_env / "cache")
