"""Get a vLLM checkout at a ref, and make it build against the torch already installed.

``clone`` never loses work: a checkout with local changes is refused unless ``force`` is given,
and then the changes are stashed, never discarded. The one exception is the edit our own
``use-existing-torch`` step makes (torch pins removed), which is reverted and redone.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.core.credentials import strip_credentials
from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.git_safe import git_command, protocol_config, run_git, url_credentials
from vllm_forge.core.plan import Command, run_plan
from vllm_forge.core.validate import check_clone_url, check_git_ref
from vllm_forge.source.vllm_tree import inspect_tree

TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "torchcodec")
# A requirement line (or a quoted pyproject entry) naming a torch-family package.
_TORCH_LINE = re.compile(r"^\s*[\"']?(torch|torchvision|torchaudio|torchcodec)\b(?![-_.\w])", re.IGNORECASE)
# A pin of torch itself (torch, torchvision, torchaudio: the packages built against one torch ABI):
# a version specifier or a direct URL. An unpinned name takes whatever is installed.
_TORCH_PIN = re.compile(
    r"^\s*[\"']?(torch|torchvision|torchaudio)\s*(\[[^\]]*\])?\s*(===|==|>=|<=|~=|!=|<|>|@)",
    re.IGNORECASE,
)


class RemoteUnreachable(ForgeError):
    """The remote could not be asked (network, URL): a dry run can still show what would run."""


@dataclass
class CheckoutState:
    exists: bool
    is_repo: bool = False
    origin: str = ""
    head: str = ""
    dirty_files: list[str] = field(default_factory=list)
    torch_edit_only: bool = False  # the only changes are use-existing-torch's removed pins


def _git(args: list[str], cwd: Path | str | None = None, check: bool = True, strip: bool = True) -> str:
    # --no-optional-locks: looking (status, diff) never rewrites the checkout's index behind its owner.
    proc = run_git(["--no-optional-locks", *args], cwd)
    if check and proc.returncode != 0:
        raise ForgeError(f"git {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}",
                         "check the repository URL, the ref and the network")
    return proc.stdout.strip() if strip else proc.stdout


def inspect_checkout(dest: Path) -> CheckoutState:
    if not dest.exists():
        return CheckoutState(exists=False)
    if not (dest / ".git").exists():
        return CheckoutState(exists=True, is_repo=False)
    origin = _git(["config", "--get", "remote.origin.url"], dest, check=False)
    head = _git(["rev-parse", "HEAD"], dest, check=False)
    status = _git(["status", "--porcelain", "--untracked-files=all"], dest, check=False, strip=False)
    dirty = [line[3:] for line in status.splitlines() if line.strip()]
    torch_only = bool(dirty) and all(line.startswith(" M ") for line in status.splitlines() if line.strip())
    if torch_only:
        diff = _git(["diff", "--unified=0", "--no-color"], dest, check=False)
        torch_only = _only_torch_pins_removed(diff)
    return CheckoutState(True, True, origin, head, dirty, torch_only)


def _only_torch_pins_removed(diff: str) -> bool:
    changed = [line for line in diff.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return bool(changed) and all(line.startswith("-") and _TORCH_LINE.match(line[1:]) for line in changed)


def plan_clone(repo: str, ref: str, dest: Path, *, force: bool = False, target: str | None = None) -> list[Command]:
    """The git commands that bring ``dest`` to ``ref`` of ``repo``, decided from its current state.

    ``target``: what ``git checkout`` is given (default: the remote is asked, see ``checkout_target``)."""
    check_clone_url(repo, "--repo")  # both may come from a shared invoke.yaml: never options for git
    check_git_ref(ref, "--ref")
    state = inspect_checkout(dest)
    target = target or checkout_target(repo, ref)
    if state.exists and not state.is_repo:
        if any(dest.iterdir()):
            raise ForgeError(f"{dest} exists and is not a git checkout",
                             "move it away, or point --checkout-dir (or --vllm-src) elsewhere")
        state = CheckoutState(exists=False)
        dest.rmdir()
    public, login = url_credentials(repo)  # a token goes to git by environment, never on its command line
    remote = {"extra_config": protocol_config(repo), "secret_config": login}
    if not state.exists:
        tmp = dest.with_name(f".{dest.name}.partial")
        # Clone next to the destination and rename at the end: an interrupted clone leaves no
        # half-made checkout where the next run would take it for a real one.
        return [
            Command(["rm", "-rf", str(tmp)], why="clear a clone an earlier run left unfinished"),
            git_command(["clone", "--filter=blob:none", "--no-checkout", "--", public, str(tmp)], **remote,
                        why="partial clone: history without old file contents"),
            git_command(["-C", str(tmp), "checkout", "--detach", "--quiet", target], why=f"check out {ref}"),
            _record_ref(tmp, ref),
            Command(["mv", "-T", str(tmp), str(dest)], why="publish the finished checkout"),
        ]
    commands: list[Command] = []
    if state.origin and not same_repo(state.origin, repo):
        raise ForgeError(
            f"{dest} is a checkout of {state.origin}, not of {repo}",
            "pass --checkout-dir for a separate checkout, or --repo to match it",
        )
    if state.dirty_files:
        if state.torch_edit_only:
            commands.append(git_command(["-C", str(dest), "checkout", "--", *state.dirty_files],
                                        why="revert use-existing-torch's pin removal (redone after checkout)"))
        elif force:
            commands.append(git_command(
                ["-C", str(dest), "stash", "push", "--include-untracked",
                 "-m", f"vllm-forge: local changes before checking out {ref}"],
                why="--force: keep your changes in `git stash list`, never discard them"))
        else:
            shown = ", ".join(state.dirty_files[:5]) + (" ..." if len(state.dirty_files) > 5 else "")
            raise ForgeError(
                f"{dest} has local changes ({shown})",
                "commit or stash them, or pass --force to stash them automatically",
            )
    commands += [
        git_command(["-C", str(dest), "fetch", "--tags", "--force", "origin"], **remote, why="update refs and tags"),
        git_command(["-C", str(dest), "checkout", "--detach", "--quiet", target], why=f"check out {ref}"),
        _record_ref(dest, ref),
    ]
    return commands


REF_KEY = "vllm-forge.ref"  # in the checkout's own .git/config: the ref `clone` checked out


def _record_ref(dest: Path, ref: str) -> Command:
    return git_command(["-C", str(dest), "config", REF_KEY, ref],
                       why="remember the ref, so labels and tags name what was built")


@dataclass
class CheckoutFacts:
    """What a checkout is, read from git: the labels and the default tag of an image describe it."""

    path: Path
    exists: bool
    managed: bool  # cloned by `invoke clone` (False: --vllm-src, used as is)
    repo: str = ""  # origin URL as configured (may carry credentials: mask before showing)
    ref: str = ""  # the ref `clone` checked out, or "local"
    commit: str = ""
    dirty: bool = False  # changes beyond use-existing-torch's pin removal

    @property
    def short(self) -> str:
        return self.commit[:12] if self.commit else "unknown"


def read_checkout(path: Path, *, managed: bool) -> CheckoutFacts:
    path = Path(path).expanduser()
    state = inspect_checkout(path)
    if not state.is_repo:
        return CheckoutFacts(path, state.exists, managed)
    ref = _git(["config", "--get", REF_KEY], path, check=False) if managed else ""
    dirty = bool(state.dirty_files) and not state.torch_edit_only
    return CheckoutFacts(path, True, managed, state.origin, ref or "local", state.head, dirty)


def _normalise_url(url: str) -> str:
    return strip_credentials(url).rstrip("/").removesuffix(".git")


def same_repo(a: str, b: str) -> bool:
    return _normalise_url(a) == _normalise_url(b)


_SHA = re.compile(r"^[0-9a-f]{7,40}$")


def _first_git_error(stderr: str) -> str:
    """git's first `fatal:` line (the cause; its last line is often advice such as "and the repository exists.")."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = next((line for line in lines if line.startswith("fatal:")), None)
    return (fatal or (lines[-1] if lines else "git ls-remote failed")).removeprefix("fatal: ")


def unreachable_fix(repo: str) -> str:
    """What to do when the repository cannot be read: a GitHub proxy only where the URL is GitHub's (no
    built-in mirror profile has one: it is set in invoke.yaml), and always a checkout already on disk."""
    proxy = ("; behind a firewall, give a mirror profile a github_proxy in invoke.yaml (forge.mirrors.NAME."
             "github_proxy: https://proxy.example/) and pass --mirror NAME" if "github.com" in repo.lower() else "")
    return f"check the URL and your network{proxy}; or build a checkout you already have with --vllm-src PATH"


def checkout_target(repo: str, ref: str) -> str:
    """What `git checkout --detach` is given for ``ref``, asking the remote what the ref is.

    A branch becomes ``origin/<branch>`` (an update then never needs a merge); a tag becomes
    ``tags/<tag>``; a hex string is taken as a commit. Anything else is refused before any clone.
    """
    public, login = url_credentials(repo)
    proc = run_git(["ls-remote", "--end-of-options", public], timeout=120, extra_config=protocol_config(repo),
                   secret_config=login)
    if proc.returncode == 124:
        raise RemoteUnreachable(f"{repo} did not answer within 120 s", unreachable_fix(repo))
    if proc.returncode != 0:
        raise RemoteUnreachable(f"cannot read {repo}: {_first_git_error(proc.stderr)}", unreachable_fix(repo))
    refs = {line.split("\t", 1)[1] for line in proc.stdout.splitlines() if "\t" in line}
    if f"refs/heads/{ref}" in refs:
        return f"origin/{ref}"
    if f"refs/tags/{ref}" in refs:
        return f"tags/{ref}"
    if _SHA.match(ref):
        return ref
    raise ForgeError(f"'{ref}' is neither a branch nor a tag of {repo}",
                     f"check the spelling, or list them with `git ls-remote {repo}`")


def clone(repo: str, ref: str, dest: Path, *, force: bool = False, on_line=None) -> str:
    """Bring ``dest`` to ``ref``; returns the commit checked out."""
    return run_clone(plan_clone(repo, ref, Path(dest), force=force), Path(dest), on_line=on_line)


def run_clone(commands: list[Command], dest: Path, *, on_line=None) -> str:
    """Run the commands ``plan_clone`` decided (no second look at the remote); returns the commit."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_plan(commands, on_line=on_line)
    except BaseException:
        shutil.rmtree(dest.with_name(f".{dest.name}.partial"), ignore_errors=True)
        raise
    return _git(["rev-parse", "HEAD"], dest)


# --- use-existing-torch -------------------------------------------------------------------------

def plan_use_existing_torch(src: Path, python: str = sys.executable) -> list[Command]:
    """The checkout's own use_existing_torch.py, where its vLLM version keeps it, with --prefix
    where it takes it (then only torch-family pins are stripped, not every line naming torch)."""
    tree = inspect_tree(src)
    if not tree.use_existing_torch:
        raise ForgeError(f"{src} has no use_existing_torch.py (looked in tools/ and the root)",
                         "point --vllm-src at a vLLM checkout (0.8 or newer)")
    argv = [python, tree.use_existing_torch] + (["--prefix"] if tree.takes_prefix else [])
    return [Command(argv, cwd=str(src), why="remove the checkout's torch pins; build against the installed torch")]


def remaining_torch_pins(src: Path, globs: tuple[str, ...] | None = None) -> list[str]:
    """``file:line: text`` for every torch pin (a version or URL) left in the files that this vLLM
    version's use_existing_torch.py cleans (``globs``; default: every requirements file)."""
    if globs is None:
        globs = ("requirements/**/*.txt", "requirements/**/*.in", "requirements*.txt", "pyproject.toml")
    files = sorted({path for pattern in globs for path in src.glob(pattern) if path.is_file()},
                   key=lambda path: (path.name == "pyproject.toml", str(path)))
    left = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if _TORCH_PIN.match(line):
                left.append(f"{path.relative_to(src)}:{number}: {line.strip()}")
    return left


def use_existing_torch(src: Path, *, python: str = sys.executable, on_line=None) -> None:
    run_use_existing_torch(plan_use_existing_torch(src, python), src, on_line=on_line)


def run_use_existing_torch(commands: list[Command], src: Path, *, on_line=None) -> None:
    """Run the planned script, then check that no torch pin is left."""
    run_plan(commands, on_line=on_line)
    left = remaining_torch_pins(src, inspect_tree(src).torch_pin_globs)
    if left:
        raise ForgeError(
            f"torch pins are still in the checkout after use_existing_torch: {'; '.join(left[:3])}",
            "remove those lines by hand or report the vLLM version to vllm-forge",
        )


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Clone vLLM or neutralise its torch pins.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_clone = sub.add_parser("clone", help="clone or update a checkout at a ref")
    p_clone.add_argument("repo")
    p_clone.add_argument("ref")
    p_clone.add_argument("dest", type=Path)
    p_clone.add_argument("--force", action="store_true", help="stash local changes instead of refusing")
    p_clone.add_argument("--dry-run", action="store_true")
    p_torch = sub.add_parser("use-existing-torch", help="run the checkout's use_existing_torch.py and verify")
    p_torch.add_argument("src", type=Path)
    p_torch.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if args.cmd == "clone":
        if args.dry_run:
            for command in plan_clone(args.repo, args.ref, args.dest, force=args.force):
                print(command.shell())
            return 0
        print(clone(args.repo, args.ref, args.dest, force=args.force, on_line=print))
    else:
        if args.dry_run:
            for command in plan_use_existing_torch(args.src):
                print(command.shell())
            return 0
        use_existing_torch(args.src, on_line=print)
        print(f"no torch pins left in {args.src}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
