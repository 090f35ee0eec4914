"""build/farm.py without sccache-dist: tokens, URLs, configs, the probe against a stand-in scheduler, MAX_JOBS
with a farm, the scheduler's log, and sccache's distributed counters (the real engine:
tests/integration/test_farm_builds.py)."""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.unit.test_image import checkout  # noqa: F401  (the fixture: a vLLM-like git checkout)
from vllm_forge.build import compile_cache as cc
from vllm_forge.build import farm
from vllm_forge.cli._invoke import config_layers
from vllm_forge.core.config import resolve_config
from vllm_forge.core.errors import ForgeError

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else None

TOKEN = "Zm9yZ2UtdGVzdC10b2tlbi1ub3QtYS1yZWFsLW9uZQ"


# ---- tokens ----

def token_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "client.token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_token_comes_from_the_first_line_of_its_file(tmp_path):
    source = farm.DistSettings("http://farm:10600", token_file=str(token_file(tmp_path, f"{TOKEN}\nignored\n"))).token
    assert source.read(environ={farm.CLIENT_TOKEN_ENV: "not-this-one"}) == TOKEN
    assert source.describe() == f"file {tmp_path / 'client.token'}"


def test_without_a_file_the_token_comes_from_the_variable_named(tmp_path):
    source = farm.DistSettings("http://farm:10600", token_env="TEAM_FARM_TOKEN").token
    assert source.read(environ={"TEAM_FARM_TOKEN": f" {TOKEN}\n"}) == TOKEN
    assert source.describe() == "$TEAM_FARM_TOKEN"


def test_a_missing_token_names_where_it_was_looked_for():
    with pytest.raises(ForgeError) as err:
        farm.DistSettings("http://farm:10600").token.read(environ={})
    assert str(err.value).startswith("no client token: $VLLM_FORGE_DIST_TOKEN is not set. Fix: export "
                                     "VLLM_FORGE_DIST_TOKEN=TOKEN or point dist_token_file")


def test_a_token_file_others_can_read_is_refused_without_showing_the_token(tmp_path):
    path = token_file(tmp_path, TOKEN, 0o644)
    with pytest.raises(ForgeError) as err:
        farm.DistSettings("http://farm:10600", token_file=str(path)).token.read()
    assert str(err.value) == (f"the client token file {path} can be read by other users (mode 644). "
                              f"Fix: chmod 600 {path}.")


@pytest.mark.parametrize("bad", ['tok"en', "tok en", "tok\\en", "tökén"])
def test_a_token_an_http_header_cannot_carry_is_refused(tmp_path, bad):
    with pytest.raises(ForgeError, match="holds characters an HTTP header cannot carry") as err:
        farm.DistSettings("http://farm:10600", token_file=str(token_file(tmp_path, bad))).token.read()
    assert bad not in str(err.value)


def test_the_token_variable_must_be_a_name():
    with pytest.raises(ForgeError, match="dist_token_env 'my token' is not an environment variable name"):
        resolve_config(None, {"dist_scheduler": "http://farm:10600", "dist_token_env": "my token"})


# ---- configuration ----

@pytest.mark.parametrize("url", ["http://u:secret@farm:10600", "http://farm:10600/?token=secret",
                                 "ftp://farm:10600", "farm:10600", "http://farm:10600/api", "http://farm:port"])
def test_a_scheduler_url_with_more_than_host_and_port_is_refused(url):
    with pytest.raises(ForgeError) as err:
        resolve_config(None, {"dist_scheduler": url})
    assert "is not a scheduler URL" in str(err.value) and "secret" not in str(err.value)
    assert "Fix: write it as http://HOST:10600" in str(err.value)


def test_the_dist_keys_come_from_every_layer(tmp_path, monkeypatch):
    from invoke.config import Config

    from vllm_forge.core.config import DEFAULTS

    (tmp_path / "invoke.yaml").write_text("forge:\n  dist_scheduler: http://farm.lan:10600\n"
                                          "  dist_toolchains: [/usr/bin/gcc=/srv/gcc.tar.gz]\n")
    monkeypatch.setenv("INVOKE_FORGE_DIST_TOKEN_FILE", "/etc/forge/client.token")
    config = Config(project_location=str(tmp_path))
    config.load_collection({"forge": dict(DEFAULTS)})
    config.load_project()
    config.load_shell_env()
    rc = resolve_config(config_layers(config), {})
    settings = farm.DistSettings.from_config(rc.config)
    assert settings == farm.DistSettings("http://farm.lan:10600", "/etc/forge/client.token", "VLLM_FORGE_DIST_TOKEN",
                                         "/usr/bin/gcc=/srv/gcc.tar.gz")
    assert rc.source("dist_scheduler") == "invoke.yaml" and rc.source("dist_token_file").startswith("environment")
    # --dist-scheduler '' turns it off for one command line
    assert resolve_config(config_layers(config), {"dist_scheduler": ""}).config.dist_scheduler == ""


@pytest.mark.parametrize("value, expected", [
    ("/usr/bin/gcc=/srv/gcc.tar.gz", [farm.Toolchain("/usr/bin/gcc", "/srv/gcc.tar.gz", "/usr/bin/gcc")]),
    ("/opt/cuda/bin/ptxas=/srv/cuda.tgz=/cuda/bin/ptxas, /usr/bin/cc=/srv/cc.tgz",
     [farm.Toolchain("/opt/cuda/bin/ptxas", "/srv/cuda.tgz", "/cuda/bin/ptxas"),
      farm.Toolchain("/usr/bin/cc", "/srv/cc.tgz", "/usr/bin/cc")]),
])
def test_toolchain_archives_parse(value, expected):
    assert farm.parse_toolchains(value) == expected


@pytest.mark.parametrize("value", ["gcc=/srv/gcc.tar.gz", "/usr/bin/gcc", "/usr/bin/gcc=", "/a=/b=c", "/a=/b=/c=/d"])
def test_a_toolchain_entry_of_another_shape_is_refused(value):
    with pytest.raises(ForgeError, match="is not COMPILER=ARCHIVE"):
        farm.parse_toolchains(value)


def test_the_client_config_is_the_toml_sccache_reads(tmp_path):
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    chains = farm.parse_toolchains("/usr/bin/gcc=/srv/gcc.tar.gz=/x/gcc")
    text = farm.client_config_text("http://farm:10600", TOKEN, tmp_path / "tc", chains)
    assert tomllib.loads(text) == {"dist": {
        "scheduler_url": "http://farm:10600", "cache_dir": str(tmp_path / "tc"),
        "toolchains": [{"type": "path_override", "compiler_executable": "/usr/bin/gcc",
                        "archive": "/srv/gcc.tar.gz", "archive_compiler_executable": "/x/gcc"}],
        "auth": {"type": "token", "token": TOKEN}}}
    assert tomllib.loads(farm.client_config_text("http://f:1", TOKEN, tmp_path, []))["dist"]["toolchains"] == []


def test_a_client_config_is_private_and_named_by_its_content(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    one = farm.client_config_path(farm.client_config_text("http://f:1", TOKEN, tmp_path, []))
    other = farm.client_config_path(farm.client_config_text("http://f:1", TOKEN + "x", tmp_path, []))
    assert one != other and one.parent == other.parent and TOKEN not in one.name
    written = farm.write_private(one, "secret\n")
    assert written.stat().st_mode & 0o777 == 0o600 and (one.parent.stat().st_mode & 0o777) == 0o700


def test_daemon_configs_print_with_their_tokens_masked(tmp_path, monkeypatch):
    monkeypatch.setattr(farm, "_sccache_dist", lambda: "/usr/bin/sccache-dist")
    monkeypatch.setattr(farm, "_bwrap", lambda: "/usr/bin/bwrap")
    scheduler = farm.plan_scheduler(tmp_path, "0.0.0.0:10600", TOKEN, TOKEN[::-1])
    server = farm.plan_server(tmp_path, name="server-a", scheduler="http://10.0.0.1:10600", listen="10.0.0.2:10501",
                              server_token=TOKEN[::-1], cache_size_gb=2, cores=1)
    for plan in (scheduler, server):
        printed = "\n".join(plan.lines())
        assert TOKEN not in printed and TOKEN[::-1] not in printed and 'token = "****"' in printed
        assert TOKEN[::-1] in plan.config_text
    if tomllib is not None:
        config = tomllib.loads(server.config_text)
        assert config["toolchain_cache_size"] == 2 * 2**30 and config["public_addr"] == "10.0.0.2:10501"
        assert config["builder"] == {"type": "overlay", "build_dir": str((tmp_path / "server-a" / "builds").resolve()),
                                     "bwrap_path": "/usr/bin/bwrap"}
        assert tomllib.loads(scheduler.config_text)["client_auth"] == {"type": "token", "token": TOKEN}
    assert server.command.argv == ["/usr/bin/sccache-dist", "server", "--config", str(tmp_path / "server-a" /
                                                                                       "server.toml")]


@pytest.mark.parametrize("flags, words", [
    ({"listen": "10.0.0.2"}, "--listen '10.0.0.2' is not HOST:PORT"),
    ({"listen": "10.0.0.2:99999"}, "is not HOST:PORT"),
    ({"scheduler": "http://x:1/path"}, "--scheduler 'http://x:1/path' is not a scheduler URL"),
    ({"name": "../etc"}, "is not a build server name"),
    ({"name": "scheduler"}, "is not a build server name"),
    ({"builder": "pot"}, "--builder 'pot' is not one sccache-dist has on Linux"),
    ({"cores": 4096}, "--cores 4096 is not between 1 and"),
    ({"cache_size_gb": 0}, "--cache-size must be positive"),
])
def test_server_settings_are_checked_before_anything_starts(tmp_path, monkeypatch, flags, words):
    monkeypatch.setattr(farm, "_sccache_dist", lambda: "/usr/bin/sccache-dist")
    args = {"name": "a", "scheduler": "http://10.0.0.1:10600", "listen": "10.0.0.2:10501", "server_token": TOKEN,
            **flags}
    with pytest.raises(ForgeError, match=words.replace("(", r"\(").replace(")", r"\)")):
        farm.plan_server(tmp_path, **args)


# ---- the probe, against a stand-in for the scheduler's HTTP API ----

class Scheduler(BaseHTTPRequestHandler):
    """Answers as sccache-dist's scheduler does: status as JSON, alloc_job 401 on a wrong token, else 400."""

    token = TOKEN
    asked: list[str] = []

    def do_GET(self):  # noqa: N802
        self.asked.append(f"GET {self.path} {self.headers.get('Accept')}")
        body = json.dumps({"num_servers": 3, "num_cpus": 48, "in_progress": 5}).encode()
        self.send_response(200 if self.path == "/api/v1/scheduler/status" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        self.asked.append(f"POST {self.path}")
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ok = self.headers.get("Authorization") == f"Bearer {self.token}"
        body = b"" if ok else b"Fixed token mismatch"
        self.send_response(400 if ok else 401)
        if not ok:
            self.send_header("WWW-Authenticate", 'Bearer error="bearer_auth_failed"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def scheduler_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scheduler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Scheduler.asked = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_farm_that_answers_and_takes_the_token_is_used(scheduler_url):
    found = farm.probe(farm.DistSettings(scheduler_url), TOKEN)
    assert found.on and found.status == farm.SchedulerStatus(3, 48, 5)
    assert found.line() == f"distributed compiles on: scheduler {scheduler_url} reports 3 servers, 48 cores, " \
                           "5 jobs in flight"
    assert Scheduler.asked == ["GET /api/v1/scheduler/status application/json", "POST /api/v1/scheduler/alloc_job"]


def test_a_refused_token_turns_the_farm_off_in_one_line(scheduler_url):
    found = farm.probe(farm.DistSettings(scheduler_url, token_env="T"), "wrong")
    assert not found.on
    assert found.line() == (f"distributed compiles off, building on this machine only: the scheduler {scheduler_url} "
                            "refused the client token from $T (401 Fixed token mismatch); fix: use the token its "
                            "client_auth holds")


def test_an_absent_scheduler_turns_the_farm_off_in_one_line():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        found = farm.probe(farm.DistSettings(url), TOKEN, timeout=2)
    assert found.line() == f"distributed compiles off, building on this machine only: the scheduler {url} does " \
                           "not answer (connection refused)"


def test_plan_dist_writes_the_client_config_only_when_the_farm_is_on(scheduler_url, tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_T", TOKEN)
    plan = farm.plan_dist(farm.DistSettings(scheduler_url, token_env="FARM_T"), tmp_path / "tc")
    assert plan.probe.on and TOKEN in plan.config_text and not plan.config_path.exists()
    assert all(TOKEN not in note for note in plan.notes())
    with farm.client_config(plan) as path:
        assert path.read_text() == plan.config_text
    assert not path.exists()
    monkeypatch.setenv("FARM_T", "wrong")
    off = farm.plan_dist(farm.DistSettings(scheduler_url, token_env="FARM_T"), tmp_path / "tc")
    assert not off.probe.on and off.config_path is None and off.notes() == [off.probe.line()]
    assert farm.plan_dist(farm.DistSettings(), tmp_path) is None


def test_a_missing_toolchain_archive_is_a_mistake_not_a_fallback(scheduler_url, tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_T", TOKEN)
    settings = farm.DistSettings(scheduler_url, token_env="FARM_T", toolchains=f"/usr/bin/gcc={tmp_path}/no.tgz")
    with pytest.raises(ForgeError, match=r"the toolchain archive .*no.tgz \(dist_toolchains\) does not exist"):
        farm.plan_dist(settings, tmp_path)


# ---- MAX_JOBS with a farm ----

@pytest.mark.parametrize("local, cores, gb, jobs", [
    (2, 16, 64.0, 18),   # this machine's 2 + the farm's 16
    (2, 48, 20.0, 20),   # held here per remote job: 20 GiB bounds it at 20 in all
    (4, 0, 64.0, 4),     # a farm without servers adds nothing
    (8, 16, 4.0, 8),     # never below this machine's own
])
def test_max_jobs_with_a_farm(local, cores, gb, jobs):
    assert farm.jobs_with_farm(local, cores, gb)[0] == jobs


def test_max_jobs_says_why():
    assert farm.jobs_with_farm(2, 16, 64.0)[1] == ("MAX_JOBS=18 = 2 for this machine + 16 for the farm's 16 cores; "
                                                   "--max-jobs sets it by hand")
    assert "bounded by memory (20.0 GiB available" in farm.jobs_with_farm(2, 48, 20.0)[1]


# ---- what sccache and the scheduler report ----

STATS = {"stats": {"compilations": 29, "cache_hits": {"adv_counts": {}}, "non_cacheable_compilations": 5,
                   "cache_misses": {"adv_counts": {"ptx [cicc]": 5, "cubin [ptxas]": 5, "c [gcc]": 3}},
                   "dist_compiles": {"127.0.0.1:18512": 14, "127.0.0.1:18511": 7}, "dist_errors": 2}}


def test_sccache_counts_remote_and_local_compiles():
    counts = cc.parse_sccache_stats(json.dumps(STATS))
    assert counts.remote == {"127.0.0.1:18511": 7, "127.0.0.1:18512": 14}
    assert (counts.remote_compiles, counts.local_compiles, counts.dist_errors) == (21, 8, 2)
    before = cc.CacheCounts(compilations=4, remote={"127.0.0.1:18511": 1})
    report = cc.CacheReport("sccache", counts - before, distributed=True)
    assert report.split_line() == ("compiles: 20 remote (127.0.0.1:18511 6, 127.0.0.1:18512 14), 5 on this machine, "
                                   "0 from the cache; 2 failed on the farm and were compiled here instead")
    assert report.line().endswith(report.split_line())
    assert report.as_dict()["remote_by_server"] == {"127.0.0.1:18511": 6, "127.0.0.1:18512": 14}
    assert "compiles:" not in cc.CacheReport("sccache", counts).line()  # no farm configured: no split


SCHEDULER_LOG = """\
[2026-12-06T18:29:10Z INFO  sccache::dist::http::server] Scheduler listening for clients on 127.0.0.1:18610
[2026-12-06T18:29:11Z INFO  sccache_dist] Registered new server ServerId(127.0.0.1:18511)
[2026-12-06T18:29:12Z INFO  sccache_dist] Registered new server ServerId(127.0.0.1:18512)
[2026-12-06T18:30:01Z INFO  sccache_dist] Job 1 created and will be assigned to server ServerId(127.0.0.1:18511)
[2026-12-06T18:30:01Z INFO  sccache_dist] Job 1 updated state to Ready
[2026-12-06T18:30:01Z INFO  sccache_dist] Job 2 created and will be assigned to server ServerId(127.0.0.1:18512)
[2026-12-06T18:30:02Z INFO  sccache_dist] Job 1 updated state to Started
[2026-12-06T18:30:03Z INFO  sccache_dist] Job 1 updated state to Complete
[2026-12-06T18:30:03Z INFO  sccache_dist] Job 3 created and will be assigned to server ServerId(127.0.0.1:18511)
"""


def test_the_schedulers_log_gives_jobs_per_server(tmp_path):
    log = tmp_path / "log"
    log.write_text(SCHEDULER_LOG)
    assert farm.servers_seen(log) == [farm.ServerSeen("127.0.0.1:18511", 2, 1),
                                      farm.ServerSeen("127.0.0.1:18512", 1, 1)]
    assert farm.servers_seen(tmp_path / "none") == []


# ---- bake: the build stage compiles on the farm ----

@pytest.fixture
def tree(request) -> Path:
    return request.getfixturevalue("checkout")  # test_image's vLLM-like git checkout


def bake_plan(src: Path, tmp_path: Path, **kw):
    from vllm_forge.image import bake_plan as bake_plan_mod
    from vllm_forge.image import docker_client
    from vllm_forge.image import request as request_mod

    request = request_mod.BakeRequest(src=src, context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist", **kw)
    return bake_plan_mod.plan_bake(request, docker_client.DockerClient("/usr/bin/docker", "buildkit", "20.10.24"))


def test_a_bake_hands_the_farm_to_its_build_stage_as_a_secret(scheduler_url, tree, tmp_path, monkeypatch):
    monkeypatch.setenv(farm.CLIENT_TOKEN_ENV, TOKEN)
    plan = bake_plan(tree, tmp_path, dist=farm.DistSettings(scheduler_url))
    argv = plan.commands[0].argv
    assert plan.secret_values[farm.SECRET_ID] == f"VLLM_FORGE_DIST_SCHEDULER={scheduler_url}\n" \
                                                 f"VLLM_FORGE_DIST_TOKEN={TOKEN}\n"
    assert f"id={farm.SECRET_ID},src={plan.secrets[farm.SECRET_ID]}" in argv
    assert plan.build_args["COMPILE_CACHE"] == "sccache" and plan.build_args["USE_SCCACHE"] == "1"
    assert argv[argv.index("--network") + 1] == "host"  # a scheduler on loopback: the build shares this network
    printed = "\n".join(plan.lines())
    assert TOKEN not in printed and f"distributed compiles on: scheduler {scheduler_url} reports 3 servers" in printed
    # what the build stage does with it: the token into its own environment only
    secret = tmp_path / "forge-dist"
    secret.write_text(plan.secret_values[farm.SECRET_ID])
    environ: dict[str, str] = {}
    assert farm.settings_from_secret(secret, environ) == farm.DistSettings(scheduler_url)
    assert environ == {farm.CLIENT_TOKEN_ENV: TOKEN}
    assert farm.settings_from_secret(tmp_path / "absent", environ) == farm.DistSettings()


def test_a_bake_with_the_farm_refusing_the_token_builds_without_it(scheduler_url, tree, tmp_path, monkeypatch):
    monkeypatch.setenv(farm.CLIENT_TOKEN_ENV, "wrong")
    plan = bake_plan(tree, tmp_path, dist=farm.DistSettings(scheduler_url))
    assert farm.SECRET_ID not in plan.secrets and "--network" not in plan.commands[0].argv
    assert any(note.startswith("distributed compiles off, building on this machine only: the scheduler")
               for note in plan.notes)


def test_a_bake_with_the_farm_and_ccache_is_a_contradiction(scheduler_url, tree, tmp_path, monkeypatch):
    monkeypatch.setenv(farm.CLIENT_TOKEN_ENV, TOKEN)
    with pytest.raises(ForgeError, match="run through sccache, and the compile cache is ccache"):
        bake_plan(tree, tmp_path, dist=farm.DistSettings(scheduler_url), compile_cache="ccache")


@pytest.mark.parametrize("url, loopback", [("http://127.0.0.1:1", True), ("http://localhost:1", True),
                                           ("http://[::1]:1", True), ("http://10.0.0.1:1", False),
                                           ("http://farm.lan:1", False)])
def test_loopback_schedulers(url, loopback):
    assert farm.is_loopback(url) is loopback


def test_servers_of_one_farm_dir_split_the_cpus(tmp_path, monkeypatch):
    import os

    from vllm_forge.core.pidfile import write_pid_record

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(farm, "recorded_process", lambda path, what="": (os.getpid(), ""))
    assert farm.pick_cpus(tmp_path, 2) == [0, 1]
    write_pid_record(tmp_path / "server-a.pid", os.getpid(), role="server", cpus=[0, 1])
    assert farm.pick_cpus(tmp_path, 2) == [2, 3]
    write_pid_record(tmp_path / "server-b.pid", os.getpid(), role="server", cpus=[2, 3])
    assert farm.pick_cpus(tmp_path, 1) == [0]  # every CPU taken: shared, from the first
    write_pid_record(tmp_path / "server-c.pid", os.getpid(), role="server", cpus=[0, 1, 2, 3])  # unpinned
    assert farm.pick_cpus(tmp_path, 1) == [0]


def test_two_builds_share_one_client_config_and_the_last_removes_it(scheduler_url, tmp_path, monkeypatch):
    monkeypatch.setenv("FARM_T", TOKEN)
    plan = farm.plan_dist(farm.DistSettings(scheduler_url, token_env="FARM_T"), tmp_path / "tc")
    first, second = farm.client_config(plan), farm.client_config(plan)
    path = first.__enter__()
    assert second.__enter__() == path
    first.__exit__(None, None, None)
    assert path.read_text() == plan.config_text  # the second build still runs on it
    second.__exit__(None, None, None)
    assert not path.exists() and not path.with_name(path.name + ".lock").exists()
