"""Fetch the git dependencies vLLM's CMake would download, once, so the build needs no network.

vLLM's CMake clones CUTLASS, vllm-flash-attention, FlashMLA, DeepGEMM, QuTLASS, triton_kernels...
from GitHub at configure time, which fails on a server behind a firewall. Each of those CMake files
also honours an environment variable pointing at a local copy (VLLM_CUTLASS_SRC_DIR,
VLLM_FLASH_ATTN_SRC_DIR, FLASH_MLA_SRC_DIR, ...). ``fetch_deps`` clones every dependency the
checkout declares, at the pinned revision, into a shared cache
(``<cache_dir>/deps/<name>@<rev>``), through a GitHub proxy when one is given, and returns those
variables for ``build-wheel`` and ``bake``. A dependency already in the cache is never fetched again.

Each cache entry has one record, its marker ``<name>@<rev>.forge-dep.json`` next to it, written last
(an entry without one is unfinished and counts as missing). Its fields:

- ``name``, ``repository``, ``tag``: the pin as the checkout's CMake declares it (an entry counts only
  for the same repository and GIT_TAG);
- ``format``: 2 (markers of older vllm-forge versions, and hand-written ones, have none);
- ``status``: ``pinned``, ``unverified`` or ``substitute``, as the writer established it; ``detail``: the
  one line that says why (``dep_state`` re-checks ``pinned`` against the entry's .git HEAD on every read);
- ``commit``: the git commit checked out, null without git data;
- ``source``: ``fetch``, ``tar``, ``git-bundle``, ``git-dir``, ``directory`` or ``forge-bundle``;
  ``fetched_from`` (a fetch: the URL, without credentials) or ``imported_from`` (an import: the file or
  directory) and ``sha256`` (of the imported file, or of a directory's tree);
- ``submodules``: ``{"taken": [...], "skipped": {path: why}, "missing": [...]}`` (paths inside the
  entry; ``missing``: taken by the policy but absent from what was imported).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.core.credentials import mask_urls, strip_credentials
from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.git_safe import run_git, url_credentials
from vllm_forge.core.nofollow import remove, write_file
from vllm_forge.core.validate import is_git_ref, normalise_url
from vllm_forge.source.context_git import git_dirs
from vllm_forge.source.vllm_tree import GitDep, VllmTree, inspect_tree

GITHUB = "https://github.com/"
MARKER_SUFFIX = ".forge-dep.json"  # written next to a finished clone: <name>@<rev>.forge-dep.json
MARKER_FORMAT = 2
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


def read_marker(path: Path) -> dict | None:
    """The marker of the cache entry at ``path`` (None: absent or unreadable)."""
    try:
        info = json.loads(_marker(path).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def install_entry(tmp: Path, final: Path, marker: dict) -> None:
    """Put a finished entry in place: the old marker goes first and the new one comes last, so an
    interruption leaves an entry without marker (missing), never a marker over other content."""
    remove(_marker(final))
    remove(final)  # an unfinished earlier copy, or a link planted there: replaced, never followed
    os.replace(tmp, final)
    write_file(_marker(final), json.dumps({"format": MARKER_FORMAT, **marker}, indent=2) + "\n")


# --- what a cache entry is: its provenance ------------------------------------------------------------

_OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_REF = re.compile(r"refs/[A-Za-z0-9._/-]+")


def pin_is_commit(dep: GitDep) -> bool:
    """GIT_TAG names a commit (7 to 64 hex digits), not a tag or a branch."""
    return re.fullmatch(r"[0-9a-fA-F]{7,64}", dep.tag) is not None


def is_the_pin(commit: str, dep: GitDep) -> bool:
    """``commit`` is the commit pin of ``dep`` (a pin of 7+ hex digits is a prefix)."""
    return pin_is_commit(dep) and commit.lower().startswith(dep.tag.lower())


def short(rev: str) -> str:
    """A commit shown as 12 hex digits; a tag or branch as is."""
    return rev[:12] if re.fullmatch(r"[0-9a-fA-F]{13,64}", rev) else rev


def _head_of(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of a file of a .git someone else may have made (a ref could be a link to
    /dev/zero, or a FIFO)."""
    if not path.is_file():
        raise FileNotFoundError(path)
    with open(path, "rb") as handle:
        return handle.read(limit)


def _read_ref(common: Path, ref: str) -> str | None:
    """The object id ``ref`` holds, from the loose ref file or packed-refs; with the peeled commit
    packed-refs records for an annotated tag (``^<oid>``) when there is one."""
    if not _REF.fullmatch(ref) or ".." in ref:
        return None
    try:
        value = _head_of(common / ref, 256).decode(errors="replace").strip()
        if _OID.fullmatch(value):
            return value
    except OSError:
        pass
    try:
        lines = _head_of(common / "packed-refs", 64 << 20).decode(errors="replace").splitlines()
    except OSError:
        return None
    for number, line in enumerate(lines):
        oid, _, name = line.partition(" ")
        if name == ref and _OID.fullmatch(oid):
            following = lines[number + 1] if number + 1 < len(lines) else ""
            peeled = following[1:] if following.startswith("^") else ""
            return peeled if _OID.fullmatch(peeled) else oid
    return None


def _peel(common: Path, oid: str, depth: int = 0) -> str | None:
    """The commit ``oid`` is or points to (an annotated tag), read from a loose object; None when the
    object is packed or is neither (a tag's commit then stays unknown)."""
    path = common / "objects" / oid[:2] / oid[2:]
    try:
        data = zlib.decompressobj().decompress(_head_of(path, 1 << 16), 4096)
    except (OSError, zlib.error):
        return None
    kind = data.split(b" ", 1)[0]
    if kind == b"commit":
        return oid
    match = re.search(rb"\x00object ([0-9a-f]{40,64})\ntype (\w+)\n", data)
    if kind == b"tag" and match and depth < 4:
        target = match.group(1).decode()
        return target if match.group(2) == b"commit" else _peel(common, target, depth + 1)
    return None


def _own_git_dirs(repo: Path, within: Path | None = None):
    """``repo``'s git dirs when they lie inside it (or inside ``within``, the repository a submodule checkout
    belongs to); None without git data, or with git data kept elsewhere (a `gitdir:` pointer out of the entry
    proves nothing about the files in it)."""
    try:
        return git_dirs(Path(repo), within)
    except ForgeError:
        return None


def read_head(repo: Path, within: Path | None = None) -> str | None:
    """The commit checked out in ``repo``, read from its .git files (nothing of the entry is run);
    None without git data of its own (``within``: see _own_git_dirs)."""
    dirs = _own_git_dirs(repo, within)
    if dirs is None:
        return None
    git_dir, common = dirs
    try:
        head = _head_of(git_dir / "HEAD", 4096).decode(errors="replace").strip()
    except OSError:
        return None
    if _OID.fullmatch(head):
        return head
    match = re.fullmatch(r"ref:\s*(refs/\S+)", head)
    return _read_ref(common, match.group(1)) if match else None


def _tag_commit(repo: Path, tag: str) -> str | None:
    """The commit refs/tags/<tag> names in ``repo``'s .git files (None when it cannot be told)."""
    dirs = _own_git_dirs(repo)
    if dirs is None:
        return None
    oid = _read_ref(dirs[1], f"refs/tags/{tag}")
    # A packed object cannot be read here: its id is returned as is, which equals a commit only when it
    # is one (a lightweight tag); an annotated tag's own id never does.
    return (_peel(dirs[1], oid) or oid) if oid else None


@dataclass(frozen=True)
class DepState:
    """What the cache holds for one dependency, and how sure that is."""

    dep: GitDep
    path: Path  # dep_dir(cache_dir, dep)
    status: str  # "missing" | "pinned" | "unverified" | "substitute"
    detail: str  # one line for plan/preflight/fetch-deps output


STATUSES = ("missing", "pinned", "unverified", "substitute")
WITHOUT_PROVENANCE = "marker without provenance (written by hand or an older vllm-forge)"


def _origin(info: dict) -> str:
    """Where a marker says the entry came from, in words."""
    if info.get("imported_from"):
        return f"imported from {info['imported_from']}"
    if info.get("fetched_from"):
        return f"fetched from {info['fetched_from']}"
    return "origin not recorded"


def dep_state(cache_dir: Path | str, dep: GitDep) -> DepState:
    """Whether the cache holds ``dep`` and whether git data proves it is the pin.

    ``pinned`` only when git data proves it: a fetched or imported clone whose HEAD (read from its .git
    files) is the pin, or the commit verified against the pin when the entry was written (a tag);
    ``substitute`` when the entry's own evidence names another revision (git data at another commit, or
    an import whose name names another one); ``unverified`` otherwise (no git data: imported from a
    tarball or directory, or a marker that records no provenance).
    """
    path = dep_dir(cache_dir, dep)
    info = read_marker(path) if path.is_dir() else None
    if info is None or info.get("repository") != dep.repository or info.get("tag") != dep.tag:
        return DepState(dep, path, "missing", f"missing: not in {path.parent}")
    state = _state(path, dep, info)
    record = info.get("submodules")
    lacking = record.get("missing") if isinstance(record, dict) else None
    if lacking and isinstance(lacking, list):
        return DepState(dep, path, state.status, f"{state.detail}; submodule {', '.join(map(str, lacking))} missing")
    return state


def _state(path: Path, dep: GitDep, info: dict) -> DepState:
    head = read_head(path)
    status = info.get("status")
    if status in STATUSES[1:]:
        recorded = info.get("commit") if isinstance(info.get("commit"), str) else None
        if head is not None and (head != recorded or (
                status == "pinned" and pin_is_commit(dep) and not is_the_pin(head, dep))):
            changed = f"the entry was changed after it was {_origin(info)}" if head != recorded else \
                "its marker says pinned"
            if is_the_pin(head, dep):
                return DepState(dep, path, "pinned", f"pinned: git commit {short(head)} ({changed})")
            return DepState(dep, path, "substitute", f"substitute: git commit {short(head)} is checked out, not "
                            f"the pin {short(dep.tag)} ({changed})")
        if status == "pinned":
            if head is None:
                return DepState(dep, path, "unverified",
                                f"unverified: {_origin(info)}, but its git data is gone")
            return DepState(dep, path, "pinned", f"pinned: git commit {short(head)} ({_origin(info)})")
        return DepState(dep, path, status, str(info.get("detail") or f"{status}: {_origin(info)}"))
    # A marker of an older vllm-forge, or one written by hand: only the entry's git data counts.
    if head is not None:
        if is_the_pin(head, dep) or (not pin_is_commit(dep) and head in (
                _tag_commit(path, dep.tag), info.get("commit") if info.get("fetched_from") else None)):
            return DepState(dep, path, "pinned", f"pinned: git commit {short(head)} (HEAD is the pin; "
                            f"{WITHOUT_PROVENANCE})")
        if pin_is_commit(dep):
            return DepState(dep, path, "substitute", f"substitute: git commit {short(head)} is checked out, not "
                            f"the pin {short(dep.tag)} ({WITHOUT_PROVENANCE})")
    return DepState(dep, path, "unverified", f"unverified: {WITHOUT_PROVENANCE}")


def is_cached(cache_dir: Path | str, dep: GitDep) -> bool:
    """The cache holds something for ``dep`` (pinned, unverified or substitute: see ``dep_state``)."""
    return dep_state(cache_dir, dep).status != "missing"


# --- submodules: what a CUDA build uses ----------------------------------------------------------------

# Per dependency, submodule path -> (taken, why). Consulted only when the checkout's CMake names no
# GIT_SUBMODULES for the dependency (FetchContent would then clone every submodule, recursively); a
# GIT_SUBMODULES list is the checkout's own choice and is followed as is. A submodule not in the table
# follows SUBMODULE_RULE.
SUBMODULE_POLICY: dict[str, dict[str, tuple[bool, str]]] = {
    # vllm-project/flash-attention's .gitmodules at vLLM's pins (0.8.4, 0.10.0: cutlass, composable_kernel;
    # 0.26.0 adds aiter). Its CMakeLists.txt adds csrc/cutlass/include and stops a HIP build with "ROCm build
    # is not currently supported for vllm-flash-attn": the two ROCm projects are never compiled from here.
    "vllm-flash-attn": {
        "csrc/cutlass": (True, "its CUDA kernels include CUTLASS from there"),
        "csrc/composable_kernel": (False, "ROCm only: AMD's Composable Kernel, which vLLM's flash-attn never builds"),
        "third_party/aiter": (False, "ROCm only: AMD's aiter kernels, which vLLM's flash-attn never builds"),
    },
    # flashmla.cmake adds csrc/cutlass/include and csrc/cutlass/tools/util/include.
    "flashmla": {"csrc/cutlass": (True, "flashmla.cmake includes its headers")},
    # qutlass.cmake takes vLLM's own CUTLASS when CUTLASS_INCLUDE_DIR is set, else this copy.
    "qutlass": {"third_party/cutlass": (True, "qutlass.cmake falls back to it without vLLM's CUTLASS")},
}
_ROCM_ONLY = re.compile(r"(^|[/_.:-])(rocm|rocmsoftwareplatform|hip|amd|composable_kernel|aiter)([/_.-]|$)",
                        re.IGNORECASE)
SUBMODULE_RULE = "a submodule not in the table is taken, unless its name, path or URL says ROCm/HIP-only"


def submodule_choice(dep_name: str, path: str, name: str = "", url: str = "") -> tuple[bool, str]:
    """Whether a CUDA build takes submodule ``path`` of ``dep_name``, and why."""
    known = SUBMODULE_POLICY.get(dep_name, {}).get(path)
    if known is not None:
        return known
    if any(_ROCM_ONLY.search(text) for text in (path, name, url) if text):
        return False, "ROCm only (by its name or URL): a CUDA build does not use it"
    return True, "a CUDA build may use it"


def gitmodules(repo: Path) -> list[tuple[str, str, str]]:
    """(name, path, url) of each submodule ``repo``'s .gitmodules declares (no git repository needed)."""
    if not (Path(repo) / ".gitmodules").is_file():
        return []
    proc = run_git(["config", "--file", ".gitmodules", "--no-includes", "-z", "--get-regexp",
                    r"^submodule\..*\.(path|url)$"], repo)
    found: dict[str, dict[str, str]] = {}
    for entry in proc.stdout.split("\0"):
        key, _, value = entry.partition("\n")
        name, _, attribute = key[len("submodule."):].rpartition(".")
        if key.startswith("submodule.") and name:
            found.setdefault(name, {})[attribute] = value
    return [(name, v["path"].strip("/"), v.get("url", "")) for name, v in found.items() if v.get("path")]


@dataclass
class SubmodulePlan:
    """Which of a repository's submodules are taken, which skipped and why (paths inside the entry)."""

    taken: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {"taken": self.taken, "skipped": self.skipped, "missing": self.missing}


def plan_submodules(repo: Path, dep: GitDep | None, prefix: str = "") -> SubmodulePlan:
    """The submodules of ``repo`` to take: the checkout's GIT_SUBMODULES for ``dep`` when it names them,
    else SUBMODULE_POLICY and SUBMODULE_RULE (``dep`` None: a nested repository, the rule alone)."""
    plan = SubmodulePlan()
    for name, path, url in gitmodules(repo):
        if dep is not None and dep.submodules is not None:
            taken, why = path in dep.submodules, "not in the checkout's GIT_SUBMODULES"
        else:
            taken, why = submodule_choice(dep.name if dep else "", path, name, url)
        if taken:
            plan.taken.append(prefix + path)
        else:
            plan.skipped[prefix + path] = why
    return plan


def submodules_planned(dep: GitDep) -> str:
    """What a fetch of ``dep`` will take, in words (before its .gitmodules is known)."""
    if dep.submodules is not None:
        return (f"submodules: only {', '.join(dep.submodules)} (the checkout's GIT_SUBMODULES)" if dep.submodules
                else 'submodules: none (GIT_SUBMODULES "")')
    table = SUBMODULE_POLICY.get(dep.name, {})
    taken = [path for path, (take, _) in table.items() if take]
    skipped = [f"{path} ({why.split(':')[0]})" for path, (take, why) in table.items() if not take]
    parts = ([f"{', '.join(taken)} taken"] if taken else []) + ([f"{', '.join(skipped)} skipped"] if skipped else [])
    return "submodules: " + "; ".join(parts + [SUBMODULE_RULE.replace("a submodule not in the table", "any other")
                                               if table else "all, unless ROCm/HIP-only by name or URL"])


def submodules_recorded(cache_dir: Path | str, dep: GitDep) -> str:
    """What the cache entry of ``dep`` took and skipped, from its marker ("" when it records nothing)."""
    info = read_marker(dep_dir(cache_dir, dep)) or {}
    record = info.get("submodules")
    if not isinstance(record, dict):
        return ""
    parts = []
    if record.get("taken"):
        parts.append(f"{', '.join(record['taken'])} taken")
    if record.get("skipped"):
        parts.append(f"{', '.join(f'{p} skipped ({w})' for p, w in record['skipped'].items())}")
    if record.get("missing"):
        parts.append(f"{', '.join(record['missing'])} missing (taken, but not in what was imported)")
    return "submodules: " + "; ".join(parts) if parts else ""


def dep_env_value(cache_dir: Path | str, dep: GitDep) -> str:
    path = dep_dir(cache_dir, dep)
    return str(path / dep.source_subdir) if dep.source_subdir else str(path)


@dataclass
class DepStatus:
    dep: GitDep
    path: Path
    cached: bool  # the cache holds something for it (state.status != "missing")
    url: str  # what is (or would be) fetched, after the proxy / URL map; credentials masked
    state: DepState | None = None
    fetch: bool = False  # a real run fetches it: missing, or (--force) not pinned


def needs_fetch(state: DepState, force: bool = False) -> bool:
    """A fetch brings ``state``'s dependency: it is missing, or ``force`` and the cache holds no pin."""
    return state.status == "missing" or (force and state.status != "pinned")


def plan_fetch(tree: VllmTree | Path | str, cache_dir: Path | str, github_proxy: str | None = None,
               url_map: Mapping[str, str] | None = None, *, force: bool = False) -> list[DepStatus]:
    """What ``fetch_deps`` would do: each dependency, its cache path, its state, and whether it is fetched."""
    rewrites = url_rewrites(github_proxy, url_map)
    statuses = []
    for dep in find_git_deps(tree):
        state = dep_state(cache_dir, dep)
        fetch = needs_fetch(state, force)
        if fetch:  # what a real run would refuse, the dry run refuses too
            check_ref(dep)
            check_fetch_url(dep.repository, rewrites, f"the repository of {dep.name}")
        shown = mask_urls(rewrite_url(dep.repository, rewrites))  # for showing; fetch_one uses the real URL
        statuses.append(DepStatus(dep, state.path, state.status != "missing", shown, state, fetch))
    return statuses


def missing_pins(deps: list[GitDep], rewrites: Mapping[str, str]) -> str:
    """``name @ pin (URL)`` of each of ``deps``, the URL as it is fetched (proxy, URL map), masked."""
    return ", ".join(f"{d.name} @ {d.tag} ({mask_urls(rewrite_url(d.repository, rewrites))})" for d in deps)


BRING_THEM = ("run `invoke fetch-deps --bundle deps.tar` where GitHub (or a proxy, --github-proxy) is reachable and "
              "`invoke fetch-deps --from deps.tar` here, or import the tarballs or clones you have with "
              "`invoke fetch-deps --from DIR`")


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
                      on_line=None, level: int = 0,
                      record: SubmodulePlan | None = None, prefix: str = "") -> subprocess.CompletedProcess | None:
    """Fetch ``repo``'s submodules (``only`` those paths; None: all), one level at a time, each URL
    checked by ``check_fetch_url`` before git sees it; nested ones by SUBMODULE_RULE, into ``record``
    (paths from the entry's root). Returns the failed git call, or None."""
    if not (repo / ".gitmodules").is_file() or level > 8 or only == ():
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
            nested = plan_submodules(repo / path, None, f"{prefix}{path}/")
            if record is not None:
                record.taken += nested.taken
                record.skipped.update(nested.skipped)
            inside = tuple(p[len(prefix) + len(path) + 1:] for p in nested.taken)
            failed = update_submodules(repo / path, rewrites, inside, on_line=on_line, level=level + 1,
                                       record=record, prefix=f"{prefix}{path}/")
            if failed is not None:
                return failed
    return None


def _record_fetched_ref(tmp: Path, dep: GitDep) -> None:
    """Name the fetched tag (or branch) in the clone, as git names it on the server: a bundle made from
    this entry then carries the tag, and an import checks the pin against it."""
    try:
        line = (tmp / ".git" / "FETCH_HEAD").read_text().splitlines()[0]
    except (OSError, IndexError):
        return
    match = re.match(r"([0-9a-f]{40,64})\t[^\t]*\t(tag|branch) '(.*)' of ", line)
    if match and match.group(3) == dep.tag:
        ref = f"refs/tags/{dep.tag}" if match.group(2) == "tag" else f"refs/remotes/origin/{dep.tag}"
        run_git(["update-ref", ref, match.group(1)], tmp)


def fetch_one(dep: GitDep, cache_dir: Path | str, rewrites: Mapping[str, str], *, on_line=None) -> Path:
    """Clone ``dep`` at its pinned revision (with the submodules a CUDA build uses) into the cache."""
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
            f"{BRING_THEM}; or set {dep.src_dir_env or dep.cmake_source_dir_var} to a local copy",
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
        elif not pin_is_commit(dep):
            _record_fetched_ref(tmp, dep)
        # checkout takes no --end-of-options: give it the commit id, which cannot look like an option.
        resolved = _run_git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{target}^{{commit}}"], tmp,
                            rewrites)
        proc = resolved if resolved.returncode != 0 else \
            _run_git(["checkout", "--quiet", "--detach", resolved.stdout.strip()], tmp, rewrites)
        if proc.returncode != 0:
            raise fail(proc, f"checking out {dep.tag}")
        submodules = plan_submodules(tmp, dep)
        failed = update_submodules(tmp, rewrites, tuple(submodules.taken), on_line=on_line, record=submodules)
        if failed is not None:
            raise fail(failed, "fetching its submodules")
        commit = _run_git(["rev-parse", "HEAD"], tmp, rewrites).stdout.strip()
        if re.fullmatch(r"[0-9a-f]{40}", dep.tag) and commit != dep.tag:
            raise ForgeError(f"{url} gave commit {commit} for {dep.name}, not the pinned {dep.tag}",
                             "check the GitHub proxy / mirror: it serves a different repository")
        # Never a credential of a --url-map / --github-proxy URL: bake copies the marker into its context.
        fetched_from = strip_credentials(url)
        install_entry(tmp, final, {
            "name": dep.name, "repository": dep.repository, "tag": dep.tag, "commit": commit,
            "status": "pinned", "detail": f"pinned: git commit {short(commit)} (fetched from {fetched_from})",
            "source": "fetch", "fetched_from": fetched_from, "submodules": submodules.record(),
        })
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
               url_map: Mapping[str, str] | None = None, offline: bool = False, force: bool = False,
               on_line: Callable[[str], None] | None = None) -> dict[str, str]:
    """Make sure every git dependency of the checkout is in the cache; return the build environment.

    ``cache_dir`` is vllm-forge's cache root (``~/.cache/vllm-forge``); clones go under ``deps/``.
    ``offline``: never touch the network; a dependency missing from the cache is an error naming every
    missing pin. ``force``: fetch the pin over an entry that is not pinned (unverified, substitute).
    """
    if not isinstance(tree, VllmTree):
        tree = inspect_tree(tree)
    rewrites = url_rewrites(github_proxy, url_map)
    check_overridable(tree)
    todo = [dep for dep in tree.git_deps if needs_fetch(dep_state(cache_dir, dep), force and not offline)]
    for dep in todo:  # every refusal before the first download
        check_ref(dep)
        check_fetch_url(dep.repository, rewrites, f"the repository of {dep.name}")
    if offline and todo:
        raise ForgeError(
            f"{len(todo)} git dependenc{'y' if len(todo) == 1 else 'ies'} of vLLM {tree.version} "
            f"{'is' if len(todo) == 1 else 'are'} not in {Path(cache_dir).expanduser() / 'deps'}: "
            f"{missing_pins(todo, rewrites)}", BRING_THEM)
    for number, dep in enumerate(todo):
        if on_line:
            on_line(f"fetching {dep.name} @ {dep.tag} from {mask_urls(rewrite_url(dep.repository, rewrites))}")
        try:
            fetch_one(dep, cache_dir, rewrites, on_line=on_line)
        except ForgeError as err:  # the network is likely down for the rest too: say all that is missing
            rest = [d for d in todo[number:] if dep_state(cache_dir, d).status == "missing"]
            if len(rest) > 1:
                raise ForgeError(f"{err.problem}; {len(rest)} pins are missing in all: {missing_pins(rest, rewrites)}",
                                 err.fix) from None
            raise
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
