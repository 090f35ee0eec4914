"""Fetch the git dependencies vLLM's CMake would download, once, so the build needs no network.

vLLM's CMake clones CUTLASS, vllm-flash-attention, FlashMLA, DeepGEMM, QuTLASS, triton_kernels...
from GitHub at configure time, which fails on a server behind a firewall. Each of those CMake files
also honours an environment variable pointing at a local copy (VLLM_CUTLASS_SRC_DIR,
VLLM_FLASH_ATTN_SRC_DIR, FLASH_MLA_SRC_DIR, ...). ``fetch_deps`` clones every dependency the
checkout declares, at the pinned revision, into a shared cache
(``<cache_dir>/deps/<name>@<rev>``), through a GitHub proxy when one is given, and returns those
variables for ``build-wheel`` and ``bake``. A dependency already in the cache is never fetched again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as `python scripts/fetch_deps.py`: make the `scripts` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.credentials import mask_urls, strip_credentials
from scripts.errors import ForgeError, run_main
from scripts.git_safe import run_git, url_credentials
from scripts.nofollow import remove, write_file
from scripts.validate import is_git_ref, normalise_url
from scripts.vllm_tree import GitDep, VllmTree, inspect_tree

GITHUB = "https://github.com/"
MARKER_SUFFIX = ".forge-dep.json"  # written next to a finished clone: <name>@<rev>.forge-dep.json
GIT_TIMEOUT_S = 900


def find_git_deps(tree: VllmTree | Path | str) -> list[GitDep]:
    """The git repositories (with pinned revision and override variable) the checkout's CMake fetches."""
    if not isinstance(tree, VllmTree):
        tree = inspect_tree(tree)
    return list(tree.git_deps)


def url_rewrites(github_proxy: str | None = None, url_map: Mapping[str, str] | None = None) -> dict[str, str]:
    """Original URL prefix -> replacement, as git ``url.<new>.insteadOf=<old>`` applies them.

    ``github_proxy`` is a prefix put in front of the whole GitHub URL, the convention of GitHub
    proxies (``https://ghproxy.example/`` turns ``https://github.com/nvidia/cutlass.git`` into
    ``https://ghproxy.example/https://github.com/nvidia/cutlass.git``). ``url_map`` replaces
    prefixes outright (``{"https://github.com/": "https://mirror.example/github/"}``).
    """
    rewrites: dict[str, str] = {}
    if github_proxy:
        proxy = github_proxy if github_proxy.endswith("/") else github_proxy + "/"
        if not re.match(r"^(https?|file|ssh|git)://", proxy):
            raise ForgeError(f"--github-proxy {github_proxy!r} is not a URL",
                             "give a URL prefix such as https://ghproxy.example.com/")
        rewrites[GITHUB] = proxy + GITHUB
    for old, new in (url_map or {}).items():
        rewrites[old] = new
    return rewrites


def rewrite_url(url: str, rewrites: Mapping[str, str]) -> str:
    """The URL git will really fetch (longest matching prefix wins, as with insteadOf)."""
    best = max((old for old in rewrites if url.startswith(old)), key=len, default=None)
    return url if best is None else rewrites[best] + url[len(best):]


_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:(?!/)[^\s]+$")  # git@github.com:org/repo.git (ssh)
BUILTIN_PROTOCOLS = ("https", "ssh")  # what a checkout's own URLs may use; anything else only via a URL you name


def check_ref(dep: GitDep) -> None:
    """ForgeError unless ``dep.tag`` is a plain tag, branch or commit name (never an option for git)."""
    tag = dep.tag
    if not is_git_ref(tag):  # GIT_TAG as CMake passes it to git: never an option or a revision expression
        where = f" ({dep.file}:{dep.line})" if dep.file else ""
        raise ForgeError(
            f"the checkout pins {dep.name}{where} to GIT_TAG {tag!r}, which is not a git tag, branch or commit name",
            "check where this checkout comes from: a GIT_TAG never starts with - or holds spaces, .., ~, ^ or :; "
            "fix it, or set the dependency's *_SRC_DIR to a copy you trust",
        )


def user_targets(rewrites: Mapping[str, str]) -> list[str]:
    """The URL prefixes the user named (--github-proxy, --url-map): the only place a local or plain
    http/git URL may come from."""
    return [new for new in rewrites.values() if new]


def allowed_protocols(rewrites: Mapping[str, str]) -> list[str]:
    """https and ssh, plus each protocol a URL the user named uses (file only that way)."""
    protocols = list(BUILTIN_PROTOCOLS)
    for target in user_targets(rewrites):
        scheme = target.split("://", 1)[0].lower() if "://" in target else ""
        if scheme in ("http", "git", "file") and scheme not in protocols:
            protocols.append(scheme)
    return protocols


def check_fetch_url(url: str, rewrites: Mapping[str, str], what: str) -> str:
    """The URL git will fetch for ``url`` (a repository or submodule URL from a checkout), refused
    unless it is https/ssh or lies under a prefix the user named. Both sides are compared normalised,
    and a URL with a ``..`` segment is refused."""
    final = normalise_url(rewrite_url(url, rewrites), what)
    if not final.startswith("-") and not any(c in final for c in "\n\r\0"):
        if any(final.startswith(normalise_url(target, "--url-map")) for target in user_targets(rewrites)):
            return final
        scheme = final.split("://", 1)[0].lower() if "://" in final else ""
        if (scheme in BUILTIN_PROTOCOLS and re.match(r"^[a-z]+://[A-Za-z0-9\[]", final, re.IGNORECASE)) \
                or _SCP_LIKE.match(final):
            return final
    raise ForgeError(
        f"{what} {mask_urls(url)!r} would be fetched from {mask_urls(final)!r}, which is neither https:// nor ssh "
        "nor under a --github-proxy / --url-map prefix you named",
        "check where this checkout comes from; to fetch from a local or plain-http mirror, name it with "
        "--url-map OLD=NEW",
    )


def _git_config(rewrites: Mapping[str, str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(config for the command line, config that carries credentials and goes by environment).

    Both reach every git process a command starts (submodule clones too). git_safe puts
    protocol.allow=never first: ext::, fd:: and anything unnamed stay off. A --url-map / --github-proxy
    URL with a login is rewritten to without it, and the login travels as that URL's extraHeader."""
    config = [("advice.detachedHead", "false"), ("http.lowSpeedLimit", "1000"), ("http.lowSpeedTime", "60")]
    config += [(f"protocol.{protocol}.allow", "always") for protocol in allowed_protocols(rewrites)]
    secret: list[tuple[str, str]] = []
    for old, new in rewrites.items():
        public, login = url_credentials(new)
        config.append((f"url.{public}.insteadOf", old))
        secret += login
    return config, secret


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def dep_dir(cache_dir: Path | str, dep: GitDep) -> Path:
    """Where ``dep`` lives in the cache: ``<cache_dir>/deps/<name>@<rev>``."""
    return Path(cache_dir).expanduser() / "deps" / f"{_safe(dep.name)}@{_safe(dep.tag)}"


def _marker(path: Path) -> Path:
    return path.with_name(path.name + MARKER_SUFFIX)


def is_cached(cache_dir: Path | str, dep: GitDep) -> bool:
    path = dep_dir(cache_dir, dep)
    marker = _marker(path)
    if not (path.is_dir() and marker.is_file()):
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("repository") == dep.repository and info.get("tag") == dep.tag


def dep_env_value(cache_dir: Path | str, dep: GitDep) -> str:
    path = dep_dir(cache_dir, dep)
    return str(path / dep.source_subdir) if dep.source_subdir else str(path)


@dataclass
class DepStatus:
    dep: GitDep
    path: Path
    cached: bool
    url: str  # what is (or would be) fetched, after the proxy / URL map; credentials masked


def plan_fetch(tree: VllmTree | Path | str, cache_dir: Path | str, github_proxy: str | None = None,
               url_map: Mapping[str, str] | None = None) -> list[DepStatus]:
    """What ``fetch_deps`` would do: each dependency, its cache path, and whether it is there."""
    rewrites = url_rewrites(github_proxy, url_map)
    statuses = []
    for dep in find_git_deps(tree):
        cached = is_cached(cache_dir, dep)
        if not cached:  # what a real run would refuse, the dry run refuses too
            check_ref(dep)
            check_fetch_url(dep.repository, rewrites, f"the repository of {dep.name}")
        shown = mask_urls(rewrite_url(dep.repository, rewrites))  # for showing; fetch_one uses the real URL
        statuses.append(DepStatus(dep, dep_dir(cache_dir, dep), cached, shown))
    return statuses


def _run_git(args: list[str], cwd: Path | None, rewrites: Mapping[str, str],
             on_line=None) -> subprocess.CompletedProcess:
    config, secret = _git_config(rewrites)
    if on_line:
        on_line(mask_urls("git " + " ".join(args)))  # progress: the command, without git_safe's -c overrides
    return run_git(args, cwd, timeout=GIT_TIMEOUT_S, extra_config=config, secret_config=secret)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    """git's own words: its first `fatal:`/`error:` line (the last line is often the tail of a sentence,
    "and the repository exists."), else its last line."""
    lines = [line.strip() for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
    said = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[-1] if lines else "")
    return mask_urls(said) if said else f"git exited with {proc.returncode}"


def _submodule_urls(repo: Path, rewrites: Mapping[str, str]) -> dict[str, str]:
    """submodule name -> URL, as `git submodule init` resolved them (relative URLs made absolute)."""
    proc = _run_git(["config", "-z", "--get-regexp", r"^submodule\..*\.url$"], repo, rewrites)
    urls = {}
    for entry in proc.stdout.split("\0"):
        key, _, url = entry.partition("\n")
        if key:
            urls[key[len("submodule."):-len(".url")]] = url
    return urls


def _gitlinks(repo: Path, rewrites: Mapping[str, str]) -> list[str]:
    proc = _run_git(["ls-files", "-z", "--stage"], repo, rewrites)
    return [entry.split("\t", 1)[1] for entry in proc.stdout.split("\0") if entry.startswith("160000 ")]


def update_submodules(repo: Path, rewrites: Mapping[str, str], only: tuple[str, ...] | None = None, *,
                      on_line=None, level: int = 0) -> subprocess.CompletedProcess | None:
    """Fetch ``repo``'s submodules (``only`` those paths; None: all), one level at a time, each URL
    checked by ``check_fetch_url`` before git sees it. Returns the failed git call, or None."""
    if not (repo / ".gitmodules").is_file() or level > 8:
        return None
    paths = list(only) if only else []
    proc = _run_git(["submodule", "init", "--", *paths], repo, rewrites)
    if proc.returncode != 0:
        return proc
    for name, url in _submodule_urls(repo, rewrites).items():
        check_fetch_url(url, rewrites, f"submodule {name} of {repo.name}")
    args = ["submodule", "update", "--depth", "1", "--", *paths]
    proc = _run_git(args, repo, rewrites, on_line)
    if proc.returncode != 0:  # a server that cannot serve the pinned commit shallowly
        proc = _run_git([a for a in args if a not in ("--depth", "1")], repo, rewrites, on_line)
        if proc.returncode != 0:
            return proc
    for path in _gitlinks(repo, rewrites):
        if (not only or path in only) and (repo / path / ".git").exists():
            failed = update_submodules(repo / path, rewrites, on_line=on_line, level=level + 1)
            if failed is not None:
                return failed
    return None


def fetch_one(dep: GitDep, cache_dir: Path | str, rewrites: Mapping[str, str], *, on_line=None) -> Path:
    """Clone ``dep`` at its pinned revision (with the submodules its CMake would fetch) into the cache."""
    final = dep_dir(cache_dir, dep)
    final.parent.mkdir(parents=True, exist_ok=True)
    check_ref(dep)
    url = check_fetch_url(dep.repository, rewrites, f"the repository of {dep.name}")
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)

    def fail(proc: subprocess.CompletedProcess, what: str) -> ForgeError:
        shutil.rmtree(tmp, ignore_errors=True)
        return ForgeError(
            f"dependency {dep.name} ({mask_urls(dep.repository)} @ {dep.tag}) is not in the cache ({final}) and "
            f"{what} from {mask_urls(url)} failed: {_last_line(proc)}",
            "run `invoke fetch-deps` where GitHub is reachable (or pass --github-proxy URL) and copy "
            f"{final.parent} to this machine; or set {dep.src_dir_env or dep.cmake_source_dir_var} to a local copy",
        )

    tmp.mkdir(parents=True)
    try:
        # --end-of-options before every value from the checkout: git never reads one as an option.
        for args in (["init", "--quiet"], ["remote", "add", "--end-of-options", "origin", dep.repository]):
            proc = _run_git(args, tmp, rewrites)
            if proc.returncode != 0:
                raise fail(proc, "setting up the clone")
        # One revision, no history: what FetchContent itself needs. A server that refuses to serve a
        # bare commit (not a ref) gets a full fetch instead.
        proc = _run_git(["fetch", "--quiet", "--depth", "1", "--end-of-options", "origin", dep.tag], tmp, rewrites,
                        on_line)
        target = "FETCH_HEAD"
        if proc.returncode != 0:
            proc = _run_git(["fetch", "--quiet", "--tags", "--end-of-options", "origin",
                             "+refs/heads/*:refs/remotes/origin/*"], tmp, rewrites, on_line)
            if proc.returncode != 0:
                raise fail(proc, "fetching")
            target = dep.tag
            if _run_git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{dep.tag}^{{commit}}"], tmp,
                        rewrites).returncode != 0:
                target = f"origin/{dep.tag}"
        # checkout takes no --end-of-options: give it the commit id, which cannot look like an option.
        resolved = _run_git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{target}^{{commit}}"], tmp,
                            rewrites)
        proc = resolved if resolved.returncode != 0 else \
            _run_git(["checkout", "--quiet", "--detach", resolved.stdout.strip()], tmp, rewrites)
        if proc.returncode != 0:
            raise fail(proc, f"checking out {dep.tag}")
        if dep.submodules is None or dep.submodules:
            failed = update_submodules(tmp, rewrites, dep.submodules or None, on_line=on_line)
            if failed is not None:
                raise fail(failed, "fetching its submodules")
        commit = _run_git(["rev-parse", "HEAD"], tmp, rewrites).stdout.strip()
        if re.fullmatch(r"[0-9a-f]{40}", dep.tag) and commit != dep.tag:
            raise ForgeError(f"{url} gave commit {commit} for {dep.name}, not the pinned {dep.tag}",
                             "check the GitHub proxy / mirror: it serves a different repository")
        remove(final)  # an unfinished earlier copy (no marker), or a link planted there: replaced, never followed
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_file(_marker(final), json.dumps({
        # Never a credential of a --url-map / --github-proxy URL: bake copies this file into its context.
        "name": dep.name, "repository": dep.repository, "tag": dep.tag, "commit": commit,
        "fetched_from": strip_credentials(url),
        "submodules": list(dep.submodules) if dep.submodules is not None else "all",
    }, indent=2) + "\n")
    return final


def override_for(tree: VllmTree, dep: GitDep) -> str | None:
    """How the build can be pointed at a local copy of ``dep``: its own environment variable, or
    CMake's FETCHCONTENT_SOURCE_DIR_<NAME> through CMAKE_ARGS; None when this version offers neither."""
    if dep.src_dir_env:
        return dep.src_dir_env
    if dep.declared_by == "fetchcontent_declare" and tree.reads("CMAKE_ARGS"):
        return f"CMAKE_ARGS=-D{dep.cmake_source_dir_var}"
    return None


def check_overridable(tree: VllmTree) -> None:
    """Refuse, before any download, a dependency the build could not take from the cache."""
    stuck = [dep for dep in tree.git_deps if override_for(tree, dep) is None]
    if stuck:
        where = "; ".join(f"{d.name} ({d.file}:{d.line})" for d in stuck)
        raise ForgeError(
            f"vLLM {tree.version or '(unknown version)'}'s CMake offers no way to use a local copy of {where}: "
            "no *_SRC_DIR variable, and setup.py does not forward CMAKE_ARGS to CMake",
            "build where GitHub is reachable, or use a vLLM release whose CMake honours *_SRC_DIR",
        )


def deps_env(tree: VllmTree, cache_dir: Path | str, deps: list[GitDep] | None = None,
             cmake_args: str | None = None, *, at: str | None = None) -> dict[str, str]:
    """The environment that points the build at the cached copies (only cached deps are named).

    Each dependency's own override variable where its CMake has one; otherwise CMake's
    ``-DFETCHCONTENT_SOURCE_DIR_<NAME>`` through ``CMAKE_ARGS`` (appended to ``cmake_args``, default
    the current CMAKE_ARGS) when setup.py forwards CMAKE_ARGS. ``at``: the path the cache root has
    where the build runs (a Docker build that mounts or copies it elsewhere), default ``cache_dir``.
    """
    env: dict[str, str] = {}
    extra: list[str] = []
    for dep in deps if deps is not None else tree.git_deps:
        if not is_cached(cache_dir, dep):
            continue
        value = dep_env_value(at if at is not None else cache_dir, dep)
        how = override_for(tree, dep)
        if how is None:
            check_overridable(tree)
        elif how.startswith("CMAKE_ARGS="):
            extra.append(f"-D{dep.cmake_source_dir_var}={value}")
        else:
            env[how] = value
    if extra:
        base = cmake_args if cmake_args is not None else os.environ.get("CMAKE_ARGS", "")
        env["CMAKE_ARGS"] = " ".join(filter(None, [base, *extra]))
    return env


def fetch_deps(tree: VllmTree | Path | str, cache_dir: Path | str, github_proxy: str | None = None, *,
               url_map: Mapping[str, str] | None = None, offline: bool = False,
               on_line: Callable[[str], None] | None = None) -> dict[str, str]:
    """Make sure every git dependency of the checkout is in the cache; return the build environment.

    ``cache_dir`` is vllm-forge's cache root (``~/.cache/vllm-forge``); clones go under ``deps/``.
    ``offline``: never touch the network; a dependency missing from the cache is an error.
    """
    if not isinstance(tree, VllmTree):
        tree = inspect_tree(tree)
    rewrites = url_rewrites(github_proxy, url_map)
    check_overridable(tree)
    missing = [dep for dep in tree.git_deps if not is_cached(cache_dir, dep)]
    for dep in missing:  # every refusal before the first download
        check_ref(dep)
        check_fetch_url(dep.repository, rewrites, f"the repository of {dep.name}")
    if offline and missing:
        names = ", ".join(f"{d.name}@{d.tag}" for d in missing)
        raise ForgeError(
            f"{len(missing)} git dependenc{'y' if len(missing) == 1 else 'ies'} of vLLM {tree.version} "
            f"{'is' if len(missing) == 1 else 'are'} not in {Path(cache_dir).expanduser() / 'deps'}: {names}",
            "run `invoke fetch-deps` where GitHub (or a GitHub proxy, --github-proxy) is reachable and copy "
            "the deps/ folder here",
        )
    for dep in missing:
        if on_line:
            on_line(f"fetching {dep.name} @ {dep.tag} from {mask_urls(rewrite_url(dep.repository, rewrites))}")
        fetch_one(dep, cache_dir, rewrites, on_line=on_line)
    return deps_env(tree, cache_dir)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Clone a vLLM checkout's CMake git dependencies into a cache.")
    parser.add_argument("src", type=Path, help="the vLLM checkout")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/vllm-forge"),
                        help="vllm-forge cache root; clones go to <cache-dir>/deps/<name>@<rev>")
    parser.add_argument("--github-proxy", help="URL prefix put before https://github.com/... URLs")
    parser.add_argument("--url-map", action="append", default=[], metavar="OLD=NEW",
                        help="replace a URL prefix (repeatable)")
    parser.add_argument("--offline", action="store_true", help="use the cache only; fail if anything is missing")
    parser.add_argument("--dry-run", action="store_true", help="list the dependencies and what is cached")
    parser.add_argument("--json", action="store_true", help="print the environment as JSON")
    args = parser.parse_args(argv)
    url_map = {}
    for item in args.url_map:
        if "=" not in item:
            raise ForgeError(f"--url-map {item!r} is not OLD=NEW", "e.g. --url-map https://github.com/=file:///srv/git/")
        old, new = item.split("=", 1)
        url_map[old] = new
    tree = inspect_tree(args.src)
    if args.dry_run:
        for status in plan_fetch(tree, args.cache_dir, args.github_proxy, url_map):
            state = "cached" if status.cached else f"fetch from {status.url}"
            print(f"{status.dep.name} @ {status.dep.tag}: {mask_urls(state)} -> {status.path} "
                  f"({override_for(tree, status.dep) or 'no local-copy override'})")
        return 0
    env = fetch_deps(tree, args.cache_dir, args.github_proxy, url_map=url_map, offline=args.offline,
                     on_line=lambda line: print(line, file=sys.stderr))
    if args.json:
        print(json.dumps(env, indent=2))
    else:
        for name, value in env.items():
            print(f"{name}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
