"""git in a tree the tool did not create, with nothing in that tree able to run code.

A checkout's own ``.git/config`` (with the files it includes, and the ``.gitattributes`` its files
carry) can name programs git runs: ``core.fsmonitor`` on every ``git status``, hooks,
``diff.external``, textconv, external diff, merge and filter drivers, ``core.sshCommand``,
credential helpers, ``remote.<name>.uploadpack`` for a local remote. Every git call the tool makes
(in a checkout, a fork, a mirror or a dependency copy, dry runs included) goes through this module:

- ``git_argv`` puts fixed overrides (``SAFE_CONFIG``) on the command line, where they outrank every
  config file, then reads the tree's own config with ``git config --list -z --show-scope`` (reading
  config runs nothing) and overrides each setting from the tree (``local``/``worktree`` scope, and
  what those files include) that names a program, whatever its section or subsection is called:
  back to your own (global or system) value where you have one, else to a value that runs nothing.
- Settings git takes from the *first* file that sets them (``remote.<name>.uploadpack`` and
  ``receivepack``, ``core.gitProxy``) cannot be outranked: a command that talks to a remote is refused
  while the tree sets them.
- ``protocol.allow=never`` plus https and ssh (and what the caller names in ``extra_config``): a URL
  in the tree cannot use ``ext::``, ``fd::`` or a local path.
- ``safe.directory`` is never widened: a tree owned by another user stays refused by git, and
  ``run_git`` turns that refusal into one line naming the tree and the fix.
- Credentials never reach argv: ``url_credentials`` splits a URL into the URL without them and an
  ``http.<url>.extraHeader`` that travels in the environment (``GIT_CONFIG_COUNT``/``_KEY_n``/``_VALUE_n``).
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote

from vllm_forge.core.errors import ForgeError

# Fixed overrides: each names a setting a hostile config could use to run a program.
SAFE_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", os.devnull),
    ("diff.external", ""),
    ("core.pager", "cat"),
    ("core.editor", "true"),
    ("core.askPass", ""),
    ("protocol.allow", "never"),
    ("protocol.https.allow", "always"),
    ("protocol.ssh.allow", "always"),
)

# The environment every such git runs with: no prompt, no pager, no editor, protocols only from config.
SAFE_ENV: dict[str, str] = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "true",
    "GIT_PAGER": "cat",
    "GIT_EDITOR": "true",
    "GIT_PROTOCOL_FROM_USER": "0",
    "GIT_OPTIONAL_LOCKS": "0",
}
# Variables that would point git at another repository than the tree it is run in.
_REPO_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
             "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_EXTERNAL_DIFF")

# Settings that name a program (or open a path git would write), matched on the lower-case key with
# any section and subsection: what each is set to when the tree sets it and you do not.
_NEUTRAL: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(pattern), value) for pattern, value in (
    (r"core\.fsmonitor", "false"),
    (r"core\.hookspath", os.devnull),
    (r"core\.sshcommand", "ssh"),
    (r"core\.askpass", ""),
    (r"core\.(editor|pager)", "true"),
    (r"core\.alternaterefscommand", ""),
    (r"sequence\.editor", "true"),
    (r"pager\..+", "false"),
    (r"diff\.external", ""),
    (r"diff\..+\.(command|textconv)", ""),
    (r"merge\..+\.driver", ""),
    (r"filter\..+\.(clean|smudge|process)", ""),
    (r"filter\..+\.required", "false"),
    (r"gpg\.(.+\.)?program", ""),
    (r"gpg\.ssh\.defaultkeycommand", ""),
    (r"trailer\..+\.(command|cmd)", ""),
    (r"protocol\.(.+\.)?allow", "never"),
    (r"http\.(.+\.)?(proxy|cookiefile)", ""),
    (r"http\.(.+\.)?savecookies", "false"),
    (r"http\.(.+\.)?sslverify", "true"),
    (r"remote\..+\.proxy", ""),
))
_HELPER = re.compile(r"credential\.(.+\.)?helper")
_SUBMODULE_UPDATE = re.compile(r"submodule\..+\.update")
# git keeps the first value it reads for these, so the command line cannot outrank the tree's.
_FIRST_WINS = re.compile(r"remote\..+\.(uploadpack|receivepack)|core\.gitproxy")
# Subcommands that talk to a remote (and so would run uploadpack, receivepack or gitProxy).
_REMOTE_SUBCOMMANDS = {"fetch", "pull", "push", "ls-remote", "clone", "remote", "submodule", "archive"}
_TREE_SCOPES = {"local", "worktree"}  # what a tree can write; system, global and command are yours


def _key_of(entry: str) -> tuple[str, str]:
    key, _, value = entry.partition("\n")
    return key, value


def tree_config(tree: Path | str, env: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(scope, key, value) of every setting git reads in ``tree``, in the order git reads them
    (``env``: added to the environment, as for the command it is read for)."""
    argv = _with_config(SAFE_CONFIG) + ["config", "--list", "-z", "--show-scope"]
    try:
        proc = subprocess.run(argv, cwd=tree, capture_output=True, timeout=60, env=git_env(env))
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []
    fields = proc.stdout.decode("utf-8", "surrogateescape").split("\0")
    out = []
    for scope, entry in zip(fields[0::2], fields[1::2], strict=False):
        key, value = _key_of(entry)
        if key:
            out.append((scope, key, value))
    return out


def tree_overrides(tree: Path | str, *, talks_to_remote: bool = False,
                   env: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """``-c`` pairs that switch off every program-naming setting ``tree``'s own config files set."""
    entries = tree_config(tree, env)
    yours: dict[str, str] = {}
    helpers: list[tuple[str, str]] = []
    for scope, key, value in entries:
        if scope not in _TREE_SCOPES:
            yours[key.lower()] = value
            if _HELPER.fullmatch(key.lower()):
                helpers.append((key, value))
    overrides: list[tuple[str, str]] = []
    reset_helpers = False
    for scope, key, value in entries:
        if scope not in _TREE_SCOPES:
            continue
        lower = key.lower()
        if _FIRST_WINS.fullmatch(lower):
            if talks_to_remote:
                raise ForgeError(
                    f"the git config of {tree} sets {key} = {value!r}, a program git would run when it talks "
                    "to a remote, and a setting the command line cannot override",
                    f"remove it (git -C {tree} config --unset-all {key}) if you did not set it, or use a fresh clone",
                )
            continue
        if _HELPER.fullmatch(lower):
            reset_helpers = True
            continue
        if _SUBMODULE_UPDATE.fullmatch(lower):
            if value.startswith("!"):
                overrides.append((key, "checkout"))
            continue
        for pattern, neutral in _NEUTRAL:
            if pattern.fullmatch(lower):
                overrides.append((key, yours.get(lower, neutral)))
                break
    if reset_helpers:  # an empty value empties the helper list; then yours again, in their order
        overrides += [("credential.helper", ""), *helpers]
    return overrides


def _with_config(pairs: Sequence[tuple[str, str]]) -> list[str]:
    argv = ["git"]
    for key, value in pairs:
        argv += ["-c", f"{key}={value}"]
    return argv


def _tree_of(args: Sequence[str], cwd: Path | str | None) -> tuple[Path, int]:
    """The directory git will run in (``cwd`` and leading ``-C`` options) and the subcommand's index."""
    tree = Path(cwd) if cwd is not None else Path.cwd()
    i = 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] in ("-C", "-c") and i + 1 < len(args):
            if args[i] == "-C":
                tree = tree / args[i + 1]
            i += 2
        else:
            i += 1
    return tree, i


def git_argv(args: Sequence[str], *, extra_config: Sequence[tuple[str, str]] = (),
             cwd: Path | str | None = None, tree: Path | str | None = None,
             env: Mapping[str, str] | None = None) -> list[str]:
    """``git -c ... ARGS`` with every code-running setting switched off, those of the tree it runs in
    (``tree``; default: ``cwd`` and a leading ``-C``) included. ``extra_config`` comes last and wins."""
    args = list(args)
    where, at = _tree_of(args, cwd)
    where = Path(tree) if tree is not None else where
    subcommand = args[at] if at < len(args) else ""
    # clone and init read no repository's config but the one they write.
    reads_tree = where.is_dir() and subcommand not in ("clone", "init")
    overrides = tree_overrides(where, talks_to_remote=subcommand in _REMOTE_SUBCOMMANDS, env=env) if reads_tree else []
    argv = _with_config((*SAFE_CONFIG, *overrides, *extra_config))
    if subcommand in ("diff", "log", "show"):  # no external diff and no textconv, whatever the attributes say
        args[at + 1:at + 1] = ["--no-ext-diff", "--no-textconv"]
    return [*argv, *args]


def secret_config_env(pairs: Sequence[tuple[str, str]], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` for ``pairs``, after any the
    environment already holds: config that must not be on a command line."""
    base = os.environ if base is None else base
    env: dict[str, str] = {}
    if not pairs:
        return env
    try:
        start = int(base.get("GIT_CONFIG_COUNT", "0") or 0)
    except ValueError:
        start = 0
    for i, (key, value) in enumerate(pairs, start):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    env["GIT_CONFIG_COUNT"] = str(start + len(pairs))
    return env


_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)([^/?#]*)@", re.IGNORECASE)


def url_credentials(url: str) -> tuple[str, list[tuple[str, str]]]:
    """(``url`` without its user-info, config that gives git that login without a command line).

    For http(s) the login becomes ``http.<url>.extraHeader = Authorization: Basic ...`` scoped to that
    URL (sent to that server only); an ssh URL keeps its user name and loses a password (ssh never
    takes one from a URL). Anything else is returned as it is."""
    match = _USERINFO.match(url or "")
    if not match:
        return url, []
    scheme, userinfo = match.group(1), match.group(2)
    public = scheme + url[match.end():]
    if scheme.lower() in ("http://", "https://"):
        user, _, password = userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
        return public, [(f"http.{public}.extraHeader", f"Authorization: Basic {token}")]
    if "ssh" in scheme.lower():
        return scheme + userinfo.split(":", 1)[0] + "@" + url[match.end():], []
    return url, []


def url_protocol(url: str) -> str:
    """The git transport ``url`` uses: ``https``, ``ssh`` (also ``user@host:path``), ``file`` (also a local path)..."""
    match = re.match(r"^([a-z][a-z0-9+.-]*)://", url or "", re.IGNORECASE)
    if match:
        scheme = match.group(1).lower()
        return "ssh" if "ssh" in scheme else scheme
    if re.match(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:", url or ""):
        return "ssh"
    return "file"


def protocol_config(*urls: str) -> list[tuple[str, str]]:
    """``protocol.<name>.allow=always`` for the transports of URLs you named (https and ssh are always on)."""
    names = dict.fromkeys(url_protocol(url) for url in urls if url)
    return [(f"protocol.{name}.allow", "always") for name in names if name in ("http", "git", "file")]


def git_env(extra: Mapping[str, str] | None = None, *, secret_config: Sequence[tuple[str, str]] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _REPO_ENV}
    env.update(SAFE_ENV)
    env.update(extra or {})
    env.update(secret_config_env(secret_config, env))
    return env


def _ownership_error(tree: Path, stderr: str) -> ForgeError | None:
    if "dubious ownership" not in stderr:
        return None
    try:
        owner = f"uid {os.stat(tree).st_uid}"
    except OSError:
        owner = "another user"
    return ForgeError(
        f"git refuses to read {tree}: it belongs to {owner}, not to you, and its git config could run programs "
        "as you (safe.directory)",
        f"work on a copy you own (cp -a), or, if you trust its owner, git config --global --add safe.directory {tree}",
    )


def run_git(args: Sequence[str], cwd: Path | str | None = None, *, timeout: float = 60,
            extra_config: Sequence[tuple[str, str]] = (), env: Mapping[str, str] | None = None,
            text: bool = True, secret_config: Sequence[tuple[str, str]] = ()) -> subprocess.CompletedProcess:
    """Run git safely; a missing git or a timeout comes back as a failed CompletedProcess, never raised.
    A tree owned by another user is a ForgeError. ``secret_config`` travels in the environment."""
    argv = git_argv(args, extra_config=extra_config, cwd=cwd, env=env)
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=text, timeout=timeout,
                              env=git_env(env, secret_config=secret_config))
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "" if text else b"", f"timed out after {timeout:g} s")
    except OSError as err:
        return subprocess.CompletedProcess(argv, 127, "" if text else b"", str(err))
    if proc.returncode != 0:
        stderr = proc.stderr if text else proc.stderr.decode(errors="replace")
        refused = _ownership_error(_tree_of(list(args), cwd)[0], stderr)
        if refused:
            raise refused
    return proc


def git_command(args: Sequence[str], *, cwd: str | None = None, tree: Path | str | None = None,
                extra_config: Sequence[tuple[str, str]] = (), secret_config: Sequence[tuple[str, str]] = (),
                why: str = ""):
    """A ``vllm_forge.core.plan.Command`` running git safely (what ``run_command`` prints and runs)."""
    from vllm_forge.core.plan import Command

    # What the -c overrides cannot say: no prompt (a build never waits on a terminal), protocols only from config.
    env = {"GIT_TERMINAL_PROMPT": "0", "GIT_PROTOCOL_FROM_USER": "0", **secret_config_env(secret_config)}
    return Command(git_argv(args, extra_config=extra_config, cwd=cwd, tree=tree), cwd=cwd, env=env, why=why)
