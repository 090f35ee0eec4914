"""What a checkout's copy in a build context leaves out, and why.

Three rules, in this order:

- build outputs and caches (``build/``, ``dist/``, ``__pycache__``, ``*.so``, ...: core/tree_sync.py) and git
  dirs (the top one goes in sanitized by source/context_git.py; a nested repository is not source);
- the checkout's own ``.dockerignore``, with Docker's rules (patterns anchored at the root, ``*`` and ``?``
  within one path element, ``**`` across them, ``!`` to take a path back, a pattern that names a
  directory names what is in it), matched by RE2 like Docker's own Go matcher, so a hostile pattern
  cannot make staging take hours;
- files that hold logins, wherever they are in the tree and whatever .dockerignore says (``DENIED``):
  dotenv files, ``.pypirc``, netrc, git credentials, Docker / AWS / gcloud / Kubernetes configs, ssh keys.
  A working checkout is where people keep these, git-ignored, next to the code.

Everything left out by the last two rules is recorded (``left_out``) so that bake can say so.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.core.errors import ForgeError
from vllm_forge.core.nofollow import is_inside
from vllm_forge.core.tree_sync import is_build_output

# Files that hold logins, as .dockerignore patterns (``**/`` : at any depth). Templates of dotenv files
# (.env.example, ...) carry no secret and often are needed: the ``!`` lines take them back.
DENIED = (
    "**/.env", "**/.env.*", "!**/.env.example", "!**/.env.sample", "!**/.env.template", "!**/.env.dist",
    "**/.envrc", "**/.pypirc", "**/.netrc", "**/_netrc", "**/.git-credentials", "**/.gitconfig",
    "**/.docker/config.json", "**/.dockercfg", "**/.aws/credentials", "**/.aws/config", "**/.config/gcloud",
    "**/application_default_credentials.json", "**/.kube/config", "**/kubeconfig", "**/.ssh",
    "**/id_rsa", "**/id_dsa", "**/id_ecdsa", "**/id_ed25519", "**/id_ecdsa_sk", "**/id_ed25519_sk",
)
# What a checkout's copy leaves out besides build outputs, in words (with source/context_git.py's part).
LEFT_OUT = ("what its .dockerignore names, files that hold logins (.env, .pypirc, netrc, Docker/AWS/gcloud/"
            "Kubernetes configs, ssh keys) and git credentials")
MAX_DOCKERIGNORE = 1 << 20  # bytes of .dockerignore read
MAX_PATTERNS = 10_000


def _to_regex(pattern: str) -> str:
    """A cleaned .dockerignore pattern as the regular expression Docker builds from it (moby/patternmatcher)."""
    out, i, n = ["^"], 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 1
                if i + 1 < n and pattern[i + 1] == "/":
                    i += 1
                out.append(".*" if i + 1 >= n else "(.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i + 1 < n:
                i += 1
                out.append("\\" + pattern[i])
            else:
                out.append("\\\\")
        elif ch in ".+()|{}$^":
            out.append("\\" + ch)
        else:
            out.append(ch)  # [ and ] keep their meaning: a character class
        i += 1
    out.append("$")
    return "".join(out)


@dataclass(frozen=True)
class _Pattern:
    text: str
    exclusion: bool
    depth: int  # path elements in the pattern
    regex: object  # a compiled RE2 pattern


def parse_patterns(lines: list[str], where: str) -> list[_Pattern]:
    """.dockerignore lines as Docker reads them: comments and blanks dropped, ``!`` exceptions, paths cleaned."""
    from vllm_forge.core.linear_re import compile_linear

    patterns = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        line = line[1:].strip() if exclusion else line
        if not line:
            continue
        cleaned = posixpath.normpath(line)
        if len(cleaned) > 1 and cleaned.startswith("/"):
            cleaned = cleaned.lstrip("/") or "/"
        regex = compile_linear(_to_regex(cleaned))
        if regex is None:
            raise ForgeError(f"{where}:{number} {raw.strip()[:80]!r} is not a pattern Docker can match",
                             "fix or remove that line (Docker's syntax: *, ?, ** and [a-z], no regular expressions)")
        patterns.append(_Pattern(cleaned, exclusion, len(cleaned.split("/")), regex))
        if len(patterns) > MAX_PATTERNS:
            raise ForgeError(f"{where} has more than {MAX_PATTERNS} patterns", "shorten it")
    return patterns


def matches(patterns: list[_Pattern], rel: str) -> bool:
    """Docker's MatchesOrParentMatches: the last pattern that matches ``rel`` or one of its parents decides."""
    parents = rel.split("/")[:-1]
    matched = False
    for pattern in patterns:
        if pattern.exclusion != matched:  # an inclusion already matched, or an exception with nothing to undo
            continue
        hit = pattern.regex.fullmatch(rel) is not None
        if not hit and parents:
            hit = any(pattern.regex.fullmatch("/".join(parents[:i + 1])) is not None
                      for i in range(min(len(parents), pattern.depth)))
        if hit:
            matched = not pattern.exclusion
    return matched


@dataclass
class ContextFilter:
    """The skip rule a checkout's copy is made with (``__call__(rel, is_dir)``), recording what it leaves out."""

    src: Path
    left_out: dict[str, list[str]] = field(default_factory=lambda: {"logins": [], "dockerignore": []})

    def __post_init__(self) -> None:
        self.denied = parse_patterns(list(DENIED), "the deny list")
        self.ignored: list[_Pattern] = []
        ignore_file = Path(self.src) / ".dockerignore"
        # A link that leads out of the tree (or to a FIFO) is not read: the tree names what it leaves out.
        if ignore_file.is_file() and is_inside(ignore_file, self.src):
            with open(ignore_file, encoding="utf-8", errors="replace") as handle:
                text = handle.read(MAX_DOCKERIGNORE + 1)
            if len(text) > MAX_DOCKERIGNORE:
                raise ForgeError(f"{ignore_file} is over {MAX_DOCKERIGNORE >> 20} MiB", "shorten it")
            self.ignored = parse_patterns(text.splitlines(), str(ignore_file))
        # Without exceptions a directory that matches is skipped whole; with them, its files are looked at.
        self._prunes = not any(p.exclusion for p in self.ignored)

    def __call__(self, rel: Path, is_dir: bool) -> bool:
        if not rel.parts:
            return False
        if rel.name == ".git" and (is_dir or len(rel.parts) == 1):
            return True  # the top one goes in sanitized; a nested repository is not source (a gitlink file is)
        if is_build_output(rel, is_dir):
            return True
        path = rel.as_posix()
        if matches(self.denied, path):
            self.left_out["logins"].append(path + ("/" if is_dir else ""))
            return True
        if self.ignored and (not is_dir or self._prunes) and matches(self.ignored, path):
            self.left_out["dockerignore"].append(path + ("/" if is_dir else ""))
            return True
        return False

    def summary(self) -> str:
        """One line for bake's output: what was left out and why ("" when nothing was)."""
        logins, ignored = self.left_out["logins"], self.left_out["dockerignore"]
        parts = []
        if logins:
            shown = ", ".join(logins[:6]) + (" ..." if len(logins) > 6 else "")
            parts.append(f"{len(logins)} that hold logins ({shown})")
        if ignored:
            parts.append(f"{len(ignored)} that its .dockerignore names")
        return f"left out of the build context, of {self.src}: " + "; ".join(parts) if parts else ""
