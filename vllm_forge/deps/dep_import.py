"""Dependencies from what a lab has: tarballs, directories and git bundles imported into the fetch-deps
cache with their provenance, and the one-file bundle a connected machine writes for a firewalled one.

``plan_imports`` matches each path given to ``invoke fetch-deps --from`` to one declared dependency by
its name (the dependency's name or its repository's, case and ``-``/``_`` folded, the longest match
winning; ``NAME=PATH`` names it outright). ``run_imports`` brings each into ``<cache>/deps/<name>@<rev>``
through a private temporary directory renamed into place, marker last (``fetch_deps.install_entry``):

- git data (a directory or tarball with ``.git``, a git bundle, a vllm-forge bundle) is fetched at the
  pin into a fresh repository, with the submodules the policy takes from the source's own submodule
  checkouts: ``pinned`` when the source has the pin, else ``substitute`` (a git bundle without the pin is
  refused, as is a vllm-forge bundle entry that is not its pin);
- without git data the tree is unpacked or copied as it is (``safe_unpack``): ``substitute`` when the
  import's own name (the file's, its top directory's, or a ``git archive`` pax header) names another
  revision, else ``unverified``, recorded with the file and its sha256.

``write_bundle`` writes every pinned cache entry, git data included, plus a manifest into one tar that
``--from`` on the other machine verifies and imports as ``pinned``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vllm_forge.core.errors import ForgeError
from vllm_forge.core.git_safe import run_git
from vllm_forge.deps.fetch_deps import (
    dep_dir,
    dep_state,
    install_entry,
    is_the_pin,
    pin_is_commit,
    plan_submodules,
    read_head,
    read_marker,
    short,
)
from vllm_forge.deps.safe_unpack import (
    DEFAULT_MAX_SIZE,
    budget_for,
    copy_tree,
    file_sha256,
    peek_tar,
    read_tar_member,
    tree_sha256,
    unpack_tar,
)
from vllm_forge.source.vllm_tree import GitDep, VllmTree

ARCHIVE_SUFFIXES = (".tar.gz", ".tar.xz", ".tar.bz2", ".tgz", ".txz", ".tbz2", ".tar", ".bundle")
BUNDLE_ROOT = "vllm-forge-deps"  # the one top directory of a bundle `fetch-deps --bundle` writes
BUNDLE_MANIFEST = "vllm-forge-deps.json"  # its first file: what the bundle holds
BUNDLE_FORMAT = "vllm-forge-deps/1"
GIT_TIMEOUT_S = 900
# A local path named on the command line is the one place file:// git may read from.
_FILE_GIT = (("protocol.file.allow", "always"), ("advice.detachedHead", "false"))
KIND_WORDS = {"tar": "tarball", "git-bundle": "git bundle", "git-dir": "git checkout", "directory": "directory",
              "forge-bundle": "vllm-forge bundle"}


# --- matching a file to a dependency ---------------------------------------------------------------------

def _fold(text: str) -> str:
    """Case and ``-``/``_`` folded, one character for one (positions stay those of ``text``)."""
    return "".join("-" if c in "_ " else c.lower() if c.isascii() else c for c in text)


def _stem(name: str) -> str:
    lower = name.lower()
    return next((name[:-len(s)] for s in ARCHIVE_SUFFIXES if lower.endswith(s) and len(name) > len(s)), name)


def dep_aliases(dep: GitDep) -> set[str]:
    """The names a file of ``dep`` may carry: the dependency's own and its repository's (folded)."""
    repo = re.sub(r"\.git$", "", dep.repository.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1])
    return {_fold(name) for name in (dep.name, repo) if name}


def match_name(name: str, deps: Iterable[GitDep]) -> tuple[list[GitDep], str]:
    """The dependencies ``name`` (a file or directory name) is named after, the longest name winning
    (several: it is ambiguous), and the rest of the name after that name."""
    stem = _stem(name)
    folded = _fold(stem)
    best, found = 0, []
    for dep in deps:
        for alias in dep_aliases(dep):
            if folded == alias or (folded.startswith(alias) and folded[len(alias)] in "-@."):
                if len(alias) > best:
                    best, found = len(alias), [dep]
                elif len(alias) == best and dep not in found:
                    found.append(dep)
    return found, stem[best + 1:] if found else ""


_VERSION = re.compile(r"v?\d+(\.\d+)+([.-]?(rc|post|dev|a|b)\d*)?", re.IGNORECASE)
_HEX = re.compile(r"[0-9a-fA-F]{7,64}")


def _same_revision(token: str, pin: str) -> bool:
    if token == pin:
        return True
    if _HEX.fullmatch(token) and _HEX.fullmatch(pin):  # a 7+ hex prefix of a commit names it
        return token.lower().startswith(pin.lower()) or pin.lower().startswith(token.lower())
    if _VERSION.fullmatch(token) and _VERSION.fullmatch(pin):  # v4.4.2 and 4.4.2 (GitHub's archive names)
        return token.lower().lstrip("v") == pin.lower().lstrip("v")
    return False


def revision_named(dep: GitDep, rest: str) -> tuple[str, str]:
    """What ``rest`` (a name after the dependency's) says of the revision: ("agrees" | "other" | "silent",
    the token that says it). "other" only when the token is of the pin's kind (a commit for a commit pin,
    a version for a version tag): a commit in the name of a tag pin cannot be checked."""
    tokens = [rest, *re.split(r"[-_@+]+", rest)] if rest else []
    for token in tokens:
        if token and _same_revision(token, dep.tag):
            return "agrees", token
    commit_pin = pin_is_commit(dep)
    for token in tokens:
        if (commit_pin and _HEX.fullmatch(token)) or (
                not commit_pin and _VERSION.fullmatch(token) and _VERSION.fullmatch(dep.tag)):
            return "other", token
    return "silent", ""


# --- what to import from where -------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """One import: a path and the dependency it is for."""

    path: Path
    kind: str  # tar | git-bundle | git-dir | directory | forge-bundle
    dep: GitDep
    verdict: str = "silent"  # what its name says of the revision: agrees | other | silent
    token: str = ""  # the part of the name that says it
    explicit: bool = False  # given as NAME=PATH
    entry: str = ""  # forge-bundle: the entry's directory in the bundle
    commit: str = ""  # forge-bundle: the commit its manifest records

    def describe(self) -> str:
        said = {"agrees": f", its name says {self.token}", "other": f", its name says {self.token}, NOT the pin",
                "silent": ""}[self.verdict]
        inside = f" (entry {self.entry}, commit {short(self.commit)})" if self.entry else ""
        return f"{KIND_WORDS[self.kind]} {self.path}{inside}{said}"


@dataclass(frozen=True)
class Passed:
    """Something given to --from that is not imported, and why; ``refused``: the run fails for it."""

    path: Path
    why: str
    refused: bool
    fix: str = ""


@dataclass(frozen=True)
class ImportPlan:
    sources: tuple[Source, ...]
    passed: tuple[Passed, ...]


def classify(path: Path) -> str | None:
    """What ``path`` is as an import (None: none of the kinds)."""
    if path.is_dir():
        if (path / BUNDLE_MANIFEST).is_file():
            return "forge-bundle"
        return "git-dir" if (path / ".git").exists() else "directory"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    if head.startswith((b"# v2 git bundle", b"# v3 git bundle")):
        return "git-bundle"
    names = peek_tar(path)
    if names is None:
        return None
    return "forge-bundle" if f"{BUNDLE_ROOT}/{BUNDLE_MANIFEST}" in [n.lstrip("./") for n in names] else "tar"


def read_manifest(path: Path) -> dict:
    """The manifest of a vllm-forge bundle (a tar, or a directory it was unpacked into)."""
    if path.is_dir():
        data = (path / BUNDLE_MANIFEST).read_bytes()
    else:
        data = read_tar_member(path, f"{BUNDLE_ROOT}/{BUNDLE_MANIFEST}")
    try:
        manifest = json.loads(data or b"")
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT or \
            not isinstance(manifest.get("deps"), list):
        raise ForgeError(f"{path} has no readable {BUNDLE_MANIFEST} of format {BUNDLE_FORMAT}",
                         "write the bundle again with `invoke fetch-deps --bundle FILE` of this vllm-forge")
    return manifest


def _bundle_sources(path: Path, tree: VllmTree, passed: list[Passed]) -> list[Source]:
    try:
        manifest = read_manifest(path)
    except ForgeError as err:
        passed.append(Passed(path, err.problem.replace(f"{path} ", "", 1), True, err.fix))
        return []
    sources = []
    for item in manifest["deps"]:
        if not isinstance(item, dict):
            continue
        dep = next((d for d in tree.git_deps if d.name == item.get("name")), None)
        if dep is None:
            passed.append(Passed(path, f"its {item.get('name')} is not a dependency of vLLM {tree.version}", False))
        elif (item.get("repository"), item.get("pin")) != (dep.repository, dep.tag):
            passed.append(Passed(path, f"its {dep.name} is {item.get('repository')} @ {item.get('pin')}; vLLM "
                                       f"{tree.version} pins {dep.repository} @ {dep.tag}", False))
        elif not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", str(item.get("commit"))) or \
                not re.fullmatch(r"[A-Za-z0-9._-]+@[A-Za-z0-9._-]+", str(item.get("entry"))):
            passed.append(Passed(path, f"its manifest entry for {dep.name} is malformed", True,
                                 "write the bundle again with `invoke fetch-deps --bundle FILE`"))
        else:
            sources.append(Source(path, "forge-bundle", dep, "agrees", short(item["commit"]),
                                  entry=item["entry"], commit=item["commit"]))
    return sources


def _split_named(item: str, deps: list[GitDep]) -> tuple[GitDep | None, str, str]:
    """(the dependency NAME=PATH names, the path, the name given) for ``item``; (None, item, "") otherwise."""
    name, sep, path = item.partition("=")
    if not sep or Path(item).expanduser().exists() or "/" in name:
        return None, item, ""
    dep = next((d for d in deps if _fold(d.name) == _fold(name)), None) or next(
        (d for d in deps if _fold(name) in dep_aliases(d)), None)
    return dep, path, name


def _source(path: Path, kind: str, dep: GitDep, rest: str, explicit: bool = False) -> Source:
    verdict, token = revision_named(dep, rest)
    return Source(path, kind, dep, verdict, token, explicit)


def plan_imports(tree: VllmTree, items: Iterable[str]) -> ImportPlan:
    """What ``--from ITEM...`` imports: one source per dependency, and what is passed over (and why)."""
    deps = list(tree.git_deps)
    names = ", ".join(d.name for d in deps)
    found: list[Source] = []
    passed: list[Passed] = []

    def by_name(path: Path, kind: str, holder: bool) -> None:
        matched, rest = match_name(path.name, deps)
        if len(matched) == 1:
            found.append(_source(path, kind, matched[0], rest))
        elif matched:
            passed.append(Passed(path, f"could be any of {', '.join(d.name for d in matched)}", True,
                                 f"say which with {matched[0].name}={path}"))
        else:
            passed.append(Passed(path, f"names no dependency of vLLM {tree.version} ({names})", not holder,
                                 f"say which it holds with NAME={path}"))

    for item in items:
        dep, text, given = _split_named(str(item), deps)
        path = Path(text).expanduser().absolute()
        if given and dep is None:
            passed.append(Passed(path, f"is given for {given}, which is not a dependency of vLLM {tree.version}",
                                 True, f"use one of {names}"))
            continue
        kind = classify(path)
        if kind is None:
            if not os.path.lexists(path):
                passed.append(Passed(path, "does not exist", True, "check the path"))
            else:
                passed.append(Passed(path, "is not a tarball, a git bundle or a directory", True,
                                     "give a .tar, .tar.gz or .tar.xz file, a git bundle or a directory"))
        elif dep is not None:
            if kind == "forge-bundle":
                passed.append(Passed(path, "is a vllm-forge bundle, which holds several dependencies", True,
                                     f"give it without {given}="))
            else:
                matched, rest = match_name(path.name, [dep])
                found.append(_source(path, kind, dep, rest if matched else _stem(path.name), explicit=True))
        elif kind == "forge-bundle":
            found.extend(_bundle_sources(path, tree, passed))
        elif kind == "directory" and not match_name(path.name, deps)[0]:  # a folder of imports
            for child in sorted(path.iterdir()):
                if child.name.startswith("."):
                    continue
                child_kind = classify(child)
                if child_kind is None:
                    passed.append(Passed(child, "is not a tarball, a git bundle or a directory", False))
                elif child_kind == "forge-bundle":
                    found.extend(_bundle_sources(child, tree, passed))
                else:
                    by_name(child, child_kind, holder=True)
        else:
            by_name(path, kind, holder=False)
    return _choose(found, passed)


def _rank(source: Source) -> tuple:
    return source.explicit, source.kind == "forge-bundle", {"agrees": 2, "silent": 1, "other": 0}[source.verdict]


def _choose(found: list[Source], passed: list[Passed]) -> ImportPlan:
    """One source per dependency: the one named with NAME=PATH, else a vllm-forge bundle's, else the one
    whose name agrees with the pin; a tie is refused, never guessed."""
    groups: dict[GitDep, list[Source]] = {}
    for source in found:
        group = groups.setdefault(source.dep, [])
        if all(s.path != source.path for s in group):
            group.append(source)
    chosen = []
    for dep, group in groups.items():
        best = max(_rank(s) for s in group)
        tops = [s for s in group if _rank(s) == best]
        if len(tops) > 1:
            others = " and ".join(str(s.path) for s in tops[1:])
            passed.append(Passed(tops[0].path, f"and {others} could both be {dep.name}", True,
                                 f"keep one of them, or say which with {dep.name}=PATH"))
            continue
        chosen.append(tops[0])
        for other in group:
            if other is not tops[0]:
                passed.append(Passed(other.path, f"not used: {tops[0].path.name} is imported for {dep.name}", False))
    return ImportPlan(tuple(chosen), tuple(passed))


# --- importing -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What happened to one import: ``result`` is imported, unchanged or refused."""

    dep: GitDep | None
    path: Path
    result: str
    line: str
    error: ForgeError | None = None


def _git(args: list[str], cwd: Path, what: str) -> str:
    """Run git (git_safe: nothing in the source can run code); its stdout, or a ForgeError naming ``what``."""
    proc = run_git(args, cwd, timeout=GIT_TIMEOUT_S, extra_config=_FILE_GIT)
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        said = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[-1] if lines else "")
        raise ForgeError(f"{what} failed: {said or f'git exited with {proc.returncode}'}",
                         "check that the source is a complete git repository, or import a tarball of it")
    return proc.stdout


def resolve_pin(repo: Path, dep: GitDep, refs: Iterable[str] = ()) -> str | None:
    """The commit of ``dep``'s pin in the repository ``repo`` (a commit, or a tag or branch it has)."""
    if pin_is_commit(dep):
        candidates = [dep.tag]
    else:
        candidates = [f"refs/tags/{dep.tag}", f"refs/remotes/origin/{dep.tag}", f"refs/heads/{dep.tag}", *refs]
    for candidate in candidates:
        proc = run_git(["rev-parse", "--verify", "--quiet", "--end-of-options", f"{candidate}^{{commit}}"], repo)
        commit = proc.stdout.strip()
        if proc.returncode == 0 and (not pin_is_commit(dep) or is_the_pin(commit, dep)):
            return commit
    return None


def _fetch_commit(src: Path, dest: Path, commit: str, tag: str = "") -> None:
    """A new repository at ``dest`` with ``commit`` of the repository ``src`` checked out (and the tag
    ``tag`` when given), nothing else of ``src``: its config, hooks and alternates stay behind."""
    dest.mkdir(parents=True, exist_ok=True)
    _git(["init", "--quiet"], dest, f"git init in {dest}")
    wanted = [f"+refs/tags/{tag}:refs/tags/{tag}"] if tag else [commit]
    _git(["fetch", "--quiet", "--depth", "1", "--end-of-options", str(src), *wanted], dest, f"fetching {src}")
    _git(["checkout", "--quiet", "--detach", commit], dest, f"checking out {commit[:12]} of {src}")


def _take_submodules(src: Path, dest: Path, dep: GitDep | None, prefix: str = "", level: int = 0,
                     top: Path | None = None):
    """Check out the submodules the policy takes in ``dest`` from ``src``'s own submodule checkouts, at
    the commits ``dest`` records; one that ``src`` does not hold is "missing". ``top``: the source repository
    (a submodule checkout keeps its git data in the top one's .git/modules)."""
    top = top or src
    plan = plan_submodules(dest, dep, prefix)
    for path in [p[len(prefix):] for p in plan.taken]:
        line = run_git(["ls-tree", "HEAD", "--end-of-options", path], dest).stdout.split()
        commit = line[2] if len(line) >= 3 and line[1] == "commit" else ""
        source = src / path
        if commit and level < 8 and read_head(source, within=top) is not None and \
                run_git(["cat-file", "-e", f"{commit}^{{commit}}"], source).returncode == 0:
            _fetch_commit(source, dest / path, commit)
            nested = _take_submodules(source, dest / path, None, f"{prefix}{path}/", level + 1, top)
            plan.taken += nested.taken
            plan.skipped.update(nested.skipped)
            plan.missing += nested.missing
        else:
            plan.taken.remove(prefix + path)
            plan.missing.append(prefix + path)
    return plan


def _import_git(source: Source, src: Path, tmp: Path, sha256: str | None) -> dict:
    """The marker of an import from the git repository ``src`` (fetched at the pin into ``tmp``)."""
    dep = source.dep
    changed = _git(["status", "--porcelain", "--untracked-files=no"], src, f"reading {src}")
    if changed.strip():
        files = [line[3:] for line in changed.splitlines()][:3]
        raise ForgeError(f"{src} has uncommitted changes to tracked files ({', '.join(files)}), which an import "
                         "would leave out", "commit them (that commit is then imported as a substitute) or stash "
                                            "them, and import again")
    head = _git(["rev-parse", "--verify", "HEAD^{commit}"], src, f"reading HEAD of {src}").strip()
    pinned = resolve_pin(src, dep)
    commit = pinned or head
    if source.kind == "forge-bundle" and commit != source.commit:
        raise ForgeError(f"{source.path}'s {source.entry} holds {short(commit)}, not the {short(source.commit)} its "
                         f"manifest records for {dep.name}", "write the bundle again on the connected machine")
    # A tag pin comes with its tag (an annotated one with its tag object): a bundle of this entry names it too.
    tag = dep.tag if pinned and not pin_is_commit(dep) and run_git(
        ["rev-parse", "--verify", "--quiet", f"refs/tags/{dep.tag}"], src).returncode == 0 else ""
    _fetch_commit(src, tmp, commit, tag)
    submodules = _take_submodules(src, tmp, dep)
    if pinned:
        status, detail = "pinned", f"pinned: git commit {short(commit)} (imported from {source.path})"
    else:
        has = f"which has no {dep.tag}" if not pin_is_commit(dep) else f"not the pin {short(dep.tag)}"
        status, detail = "substitute", f"substitute: imported from {source.path}, git commit {short(head)}, {has}"
    return {"commit": commit, "status": status, "detail": detail, "sha256": sha256,
            "submodules": submodules.record()}


def _import_bundle(source: Source, tmp: Path, sha256: str) -> dict:
    """The marker of an import from the git bundle ``source.path`` (verified, then fetched into ``tmp``)."""
    dep = source.dep
    tmp.mkdir()
    _git(["init", "--quiet"], tmp, f"git init in {tmp}")
    _git(["bundle", "verify", "--quiet", str(source.path)], tmp, f"verifying the git bundle {source.path}")
    heads = []
    for line in _git(["bundle", "list-heads", str(source.path)], tmp, f"reading {source.path}").splitlines():
        oid, _, ref = line.partition(" ")
        if re.fullmatch(r"[0-9a-f]{40,64}", oid) and (ref == "HEAD" or re.fullmatch(r"refs/[A-Za-z0-9._/-]+", ref)) \
                and ".." not in ref:
            heads.append((oid, ref))
    specs = [f"+{ref}:{ref if ref.startswith('refs/tags/') else 'refs/bundle/' + ref}" for _, ref in heads]
    if specs:
        _git(["fetch", "--quiet", "--end-of-options", str(source.path), *specs], tmp,
             f"reading the git bundle {source.path}")
    commit = resolve_pin(tmp, dep, [f"refs/bundle/refs/heads/{dep.tag}"])
    if commit is None:
        oid, ref = next(((o, r) for o, r in heads if r == "HEAD"), heads[0] if heads else ("", "nothing"))
        raise ForgeError(f"the git bundle {source.path} holds {dep.name} at {short(oid) or 'no commit'} ({ref}) but "
                         f"not the pin {dep.tag}", "make the bundle from a clone that has the pin (`git bundle create "
                                                   "FILE --all` there), or write one with `invoke fetch-deps --bundle`")
    _git(["checkout", "--quiet", "--detach", commit], tmp, f"checking out {short(commit)}")
    for _, ref in heads:
        if not ref.startswith("refs/tags/"):
            run_git(["update-ref", "-d", f"refs/bundle/{ref}"], tmp)
    submodules = plan_submodules(tmp, dep)
    submodules.missing, submodules.taken = submodules.taken, []  # a git bundle carries no submodule
    return {"commit": commit, "status": "pinned", "detail": f"pinned: git commit {short(commit)} (imported from "
            f"{source.path})", "sha256": sha256, "submodules": submodules.record()}


def _evidence(source: Source, top: str = "", archive_commit: str = "") -> tuple[str, str]:
    """(status, detail) of an import without git data, from what its name, its top directory and a
    `git archive` pax header say of the revision."""
    dep = source.dep
    said = [(source.verdict, source.token, f"which names {source.token}")]
    if top:
        matched, rest = match_name(top, [dep])
        verdict, token = revision_named(dep, rest if matched else top)
        said.append((verdict, token, f"whose directory {top} names {token}"))
    if archive_commit and pin_is_commit(dep):
        said.append(("agrees" if is_the_pin(archive_commit, dep) else "other", archive_commit,
                     f"a `git archive` of {short(archive_commit)} (its pax header)"))
    for verdict, _token, words in said:
        if verdict == "other":
            return "substitute", f"substitute: imported from {source.path}, {words}, not the pin {short(dep.tag)}"
    return "unverified", ""


# What sits at the root of a source tree, never one level down in a tarball of it: a single top directory
# holding one of these is the wrapper `tar -czf x.tgz dir/` adds.
_ROOT_FILES = re.compile(r"\.git|\.gitmodules|CMakeLists\.txt|(LICENSE|LICENCE|COPYING|README)(\.\w+)?", re.IGNORECASE)


def _is_wrapper(top: Path, source: Source) -> bool:
    """Whether the single top directory of ``source``'s tarball wraps the tree (and is stripped): it is named
    after the dependency or the file (GitHub's ``<repo>-<rev>/``, ``git archive --prefix``), or holds a file
    of a tree's root. fmha_sm100's ``python/`` or tml_fa4's ``flash_attn/`` alone at the top are the tree."""
    if match_name(top.name, [source.dep])[0] or _fold(top.name) == _fold(_stem(source.path.name)):
        return True
    return any(_ROOT_FILES.fullmatch(child.name) for child in top.iterdir())


def _missing_submodules(tree: Path, dep: GitDep) -> dict:
    """Taken, skipped and missing (taken by the policy, but empty here) submodules of an imported tree."""
    plan = plan_submodules(tree, dep)
    for path in list(plan.taken):
        here = tree / path
        if not here.is_dir() or not any(here.iterdir()):
            plan.taken.remove(path)
            plan.missing.append(path)
    return plan.record()


def _import_plain(source: Source, tree: Path, sha256: str, top: str = "", archive_commit: str = "") -> dict:
    status, detail = _evidence(source, top, archive_commit)
    what = "no git data" if source.kind == "tar" else "a directory without git data"
    detail = detail or f"unverified: imported from {source.path} ({what}), sha256 {sha256[:12]}"
    return {"commit": None, "status": status, "detail": detail, "sha256": sha256,
            "submodules": _missing_submodules(tree, source.dep)}


def _unchanged(source: Source, final: Path, sha256: str | None, commit: str | None) -> str:
    """Why importing ``source`` over the entry at ``final`` would change nothing ("" when it would)."""
    info = read_marker(final) or {}
    if sha256 and info.get("sha256") == sha256 and info.get("source") == source.kind and \
            (source.kind != "forge-bundle" or read_head(final) == source.commit):
        return f"already imported from {info.get('imported_from')} (same sha256 {sha256[:12]})"
    if commit and info.get("status") == "pinned" and read_head(final) == commit:
        return f"already holds git commit {short(commit)}"
    return ""


class _Imports:
    """Runs the imports of one plan into one cache."""

    def __init__(self, cache_dir: Path | str, force: bool, max_size: int, on_line: Callable[[str], None] | None):
        self.cache = Path(cache_dir).expanduser()
        self.deps = self.cache / "deps"
        self.force = force
        self.max_size = max_size
        self.on_line = on_line or (lambda line: None)
        self.sha: dict[Path, str] = {}

    def sha256(self, path: Path) -> str:
        if path not in self.sha:
            self.sha[path] = tree_sha256(path) if path.is_dir() else file_sha256(path)
        return self.sha[path]

    def scratch(self, name: str) -> Path:
        path = self.deps / f".{name}.import-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        return path

    def one(self, source: Source, unpacked: Path | None = None) -> Outcome:
        dep = source.dep
        final = dep_dir(self.cache, dep)
        tmp, stage = self.scratch(final.name), self.scratch(final.name + ".stage")
        try:
            state = dep_state(self.cache, dep)
            sha = None if source.kind == "git-dir" else self.sha256(source.path)
            commit = source.commit or (resolve_pin(source.path, dep) if source.kind == "git-dir" else None)
            if state.status != "missing":
                same = _unchanged(source, final, sha, commit)
                if same:
                    return Outcome(dep, source.path, "unchanged", f"unchanged {dep.name}: {same}")
                if not self.force:
                    raise ForgeError(f"the cache already holds {dep.name} @ {short(dep.tag)} ({state.detail}), and "
                                     f"{source.path} is different", "pass --force to replace it with this import")
            self.on_line(f"importing {dep.name} from {source.path}")
            marker = self.build(source, tmp, stage, sha, unpacked)
            install_entry(tmp, final, {"name": dep.name, "repository": dep.repository, "tag": dep.tag,
                                       "source": source.kind, "imported_from": str(source.path), **marker})
            return Outcome(dep, source.path, "imported", f"imported {dep.name} from {source.describe()}")
        except ForgeError as err:
            return Outcome(dep, source.path, "refused", f"refused {source.path} for {dep.name}: {err}", err)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(stage, ignore_errors=True)

    def build(self, source: Source, tmp: Path, stage: Path, sha: str | None, unpacked: Path | None) -> dict:
        """Make the entry in ``tmp``; its marker's fields."""
        if source.kind == "forge-bundle":
            entry = (unpacked or source.path) / source.entry
            if read_head(entry) is None:
                raise ForgeError(f"{source.path}'s {source.entry} has no git data", "write the bundle again with "
                                                                                   "`invoke fetch-deps --bundle`")
            marker = _import_git(source, entry, tmp, sha)
            if marker["status"] != "pinned":
                raise ForgeError(f"{source.path}'s {source.entry} does not hold the pin of {source.dep.name}",
                                 "write the bundle again with `invoke fetch-deps --bundle`")
            return marker
        if source.kind == "git-dir":
            return _import_git(source, source.path, tmp, None)
        if source.kind == "git-bundle":
            return _import_bundle(source, tmp, sha)
        budget = budget_for(self.deps, self.max_size)
        if source.kind == "directory":
            copy_tree(source.path, tmp, budget)
            return _import_plain(source, tmp, sha)
        unpacked_tar = unpack_tar(source.path, stage, budget, strip=lambda top: _is_wrapper(top, source))
        if (unpacked_tar.root / ".git").exists():
            return _import_git(source, unpacked_tar.root, tmp, sha)
        os.replace(unpacked_tar.root, tmp)
        return _import_plain(source, tmp, sha, unpacked_tar.top, unpacked_tar.commit)

    def bundle(self, path: Path, sources: list[Source]) -> list[Outcome]:
        """Every entry of one vllm-forge bundle, unpacked once (when any of them is not already here)."""
        todo = []
        outcomes = []
        for source in sources:
            final = dep_dir(self.cache, source.dep)
            same = _unchanged(source, final, None, source.commit) \
                if dep_state(self.cache, source.dep).status == "pinned" else ""
            if same:
                outcomes.append(Outcome(source.dep, path, "unchanged", f"unchanged {source.dep.name}: {same}"))
            else:
                todo.append(source)
        if not todo:
            return outcomes
        if path.is_dir():
            return outcomes + [self.one(source) for source in todo]
        stage = self.scratch("bundle")
        try:
            self.on_line(f"unpacking {path}")
            unpacked = unpack_tar(path, stage, budget_for(self.deps, self.max_size),
                                  strip=lambda top: top.name == BUNDLE_ROOT)
            return outcomes + [self.one(source, unpacked.root) for source in todo]
        except ForgeError as err:
            return outcomes + [Outcome(s.dep, path, "refused", f"refused {path} for {s.dep.name}: {err}", err)
                               for s in todo]
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def run_imports(plan: ImportPlan, cache_dir: Path | str, *, force: bool = False, max_size: int = DEFAULT_MAX_SIZE,
                on_line: Callable[[str], None] | None = None) -> list[Outcome]:
    """Import every source of ``plan`` into the cache; one Outcome per source and per refused input."""
    imports = _Imports(cache_dir, force, max_size, on_line)
    imports.deps.mkdir(parents=True, exist_ok=True)
    outcomes = [Outcome(None, p.path, "refused", f"refused {p.path}: {p.why}", ForgeError(f"{p.path} {p.why}", p.fix))
                for p in plan.passed if p.refused]
    bundles: dict[Path, list[Source]] = {}
    for source in plan.sources:
        if source.kind == "forge-bundle":
            bundles.setdefault(source.path, []).append(source)
        else:
            outcomes.append(imports.one(source))
    for path, sources in bundles.items():
        outcomes += imports.bundle(path, sources)
    return outcomes


def refusal(outcomes: list[Outcome]) -> ForgeError | None:
    """One error for every refused import (None when none was)."""
    refused = [o for o in outcomes if o.result == "refused"]
    if not refused:
        return None
    if len(refused) == 1:
        return refused[0].error
    return ForgeError(f"{len(refused)} imports were refused: " + "; ".join(
        f"{o.error.problem}" for o in refused), "; ".join(dict.fromkeys(o.error.fix for o in refused)))


# --- the bundle a connected machine writes -------------------------------------------------------------------

def _no_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """A bundle names no user or group of the machine that wrote it."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_bundle(tree: VllmTree, cache_dir: Path | str, out: Path | str,
                 on_line: Callable[[str], None] | None = None) -> dict:
    """Write every dependency of ``tree`` (pinned in the cache) with its git data into the tar ``out``
    (``.tar``; ``.tar.gz``/``.tgz`` or ``.tar.xz`` compress it), plus the manifest; the manifest."""
    states = [dep_state(cache_dir, dep) for dep in tree.git_deps]
    unpinned = [s for s in states if s.status != "pinned"]
    if unpinned:
        raise ForgeError("a bundle carries pins only, and the cache holds " + "; ".join(
            f"{s.dep.name} ({s.detail})" for s in unpinned), "pass --force to fetch the pins over them on this machine")
    entries = []
    for state in states:
        dep, commit = state.dep, read_head(state.path)
        if not pin_is_commit(dep) and resolve_pin(state.path, dep) != commit:
            # An entry fetched before vllm-forge recorded the tag: name it, so the other side can check it.
            run_git(["update-ref", f"refs/tags/{dep.tag}", commit], state.path)
        entries.append({"name": dep.name, "repository": dep.repository, "pin": dep.tag, "commit": commit,
                        "entry": state.path.name, "submodules": (read_marker(state.path) or {}).get("submodules")})
    manifest = {"format": BUNDLE_FORMAT, "vllm": tree.version,
                "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "deps": entries}
    out = Path(out).expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    lower = out.name.lower()
    mode = "w:gz" if lower.endswith((".tar.gz", ".tgz")) else "w:xz" if lower.endswith((".tar.xz", ".txz")) else "w"
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    try:
        with tarfile.open(partial, mode, format=tarfile.PAX_FORMAT) as tar:
            root = tarfile.TarInfo(BUNDLE_ROOT)
            root.type, root.mode, root.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            tar.addfile(root)
            data = (json.dumps(manifest, indent=2) + "\n").encode()
            info = tarfile.TarInfo(f"{BUNDLE_ROOT}/{BUNDLE_MANIFEST}")
            info.size, info.mode, info.mtime = len(data), 0o644, root.mtime
            tar.addfile(info, io.BytesIO(data))
            for state in states:
                if on_line:
                    on_line(f"adding {state.path.name}")
                tar.add(state.path, arcname=f"{BUNDLE_ROOT}/{state.path.name}", filter=_no_owner)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return manifest
