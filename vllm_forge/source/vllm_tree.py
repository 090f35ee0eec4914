"""What a vLLM checkout's own version needs from a build, read from its files (never run).

vLLM's build moves under its users' feet: ``use_existing_torch.py`` went from the root to ``tools/``
and gained ``--prefix``; ``requirements/build.txt`` became ``requirements/build/cuda.txt``;
``VLLM_FA_CMAKE_GPU_ARCHES`` stopped being set after 0.10.0; the CUDA arch gate in CMakeLists.txt
depends on the nvcc version; the wheel limit went 400 -> 450 -> 500 MB. ``inspect_tree`` reads a
checkout (regexes and a small CMake reader: nothing of vLLM is imported or executed) and says what
that version does, so the other tasks adapt instead of following a recipe for another release.
docs/vllm-versions.md has the table of what changed, release by release.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.linear_re import compile_linear
from vllm_forge.gpu import compat
from vllm_forge.gpu.archs import parse_arch_token
from vllm_forge.gpu.cuda_arch import CudaArch
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.gpu.runs_on import SASS, runs_on

MIN_VERSION = "0.8"  # the oldest vLLM this tool builds: first release with requirements/ and docker/

# The build knobs the other tasks may set; `inspect_tree` says which of them this checkout reads.
BUILD_KNOBS = (
    "TORCH_CUDA_ARCH_LIST", "VLLM_FA_CMAKE_GPU_ARCHES", "MAX_JOBS", "NVCC_THREADS", "CMAKE_BUILD_TYPE",
    "VLLM_TARGET_DEVICE", "VLLM_VERSION_OVERRIDE", "SETUPTOOLS_SCM_PRETEND_VERSION", "VERBOSE",
    "CMAKE_ARGS", "FETCHCONTENT_BASE_DIR", "VLLM_USE_PRECOMPILED", "VLLM_MAIN_CUDA_VERSION",
    "VLLM_DISABLE_SCCACHE", "USE_SCCACHE", "SCCACHE_DIR", "CCACHE_DIR",
    "CMAKE_C_COMPILER_LAUNCHER", "CMAKE_CXX_COMPILER_LAUNCHER", "CMAKE_CUDA_COMPILER_LAUNCHER",
)

# Every CMake >= 3.17 reads these from the environment when a project enables the language.
_CMAKE_ENV = ("CMAKE_C_COMPILER_LAUNCHER", "CMAKE_CXX_COMPILER_LAUNCHER", "CMAKE_CUDA_COMPILER_LAUNCHER",
              "CMAKE_BUILD_PARALLEL_LEVEL", "CUDACXX", "CUDAHOSTCXX")


# --- a small CMake reader ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CMakeArg:
    value: str
    quoted: bool = False


@dataclass(frozen=True)
class CMakeCommand:
    name: str  # lower case
    args: tuple[CMakeArg, ...]
    line: int


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BRACKET_COMMENT = re.compile(r"#\[(=*)\[")
_BRACKET_OPEN = re.compile(r"\[(=*)\[")


def parse_cmake(text: str) -> list[CMakeCommand]:
    """The command invocations of a CMake file, in order (comments dropped, quotes resolved)."""
    commands: list[CMakeCommand] = []
    i, n, line = 0, len(text), 1
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch.isspace():
            i += 1
        elif ch == "#":
            bracket = _BRACKET_COMMENT.match(text, i)  # at i: never a copy of the rest of the file
            if bracket:
                end = text.find(f"]{bracket.group(1)}]", i)
                end = n if end < 0 else end + len(bracket.group(1)) + 2
            else:
                end = text.find("\n", i)
                end = n if end < 0 else end
            line += text.count("\n", i, end)
            i = end
        else:
            m = _IDENT.match(text, i)
            if not m:
                i += 1
                continue
            name, j = m.group(0), m.end()
            while j < n and text[j] in " \t":
                j += 1
            if j >= n or text[j] != "(":
                i = j
                continue
            start_line = line
            args, i, line = _parse_args(text, j + 1, line)
            commands.append(CMakeCommand(name.lower(), tuple(args), start_line))
    return commands


def _parse_args(text: str, i: int, line: int) -> tuple[list[CMakeArg], int, int]:
    args: list[CMakeArg] = []
    depth, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch.isspace():
            i += 1
        elif ch == "#":
            bracket = _BRACKET_COMMENT.match(text, i)
            end = text.find(f"]{bracket.group(1)}]", i) if bracket else text.find("\n", i)
            end = n if end < 0 else end + (len(bracket.group(1)) + 2 if bracket else 0)
            line += text.count("\n", i, end)
            i = end
        elif ch == "(":
            depth += 1
            args.append(CMakeArg("("))
            i += 1
        elif ch == ")":
            if depth == 0:
                return args, i + 1, line
            depth -= 1
            args.append(CMakeArg(")"))
            i += 1
        elif ch == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    if nxt == "\n":  # line continuation
                        line += 1
                    else:
                        escaped = {"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt)
                        buf.append(escaped if nxt in 'ntr"\\;$ ' else "\\" + nxt)
                    j += 2
                    continue
                if text[j] == "\n":
                    line += 1
                buf.append(text[j])
                j += 1
            args.append(CMakeArg("".join(buf), quoted=True))
            i = j + 1
        elif text.startswith("[", i) and _BRACKET_OPEN.match(text, i):
            eq = _BRACKET_OPEN.match(text, i).group(1)
            end = text.find(f"]{eq}]", i)
            end = n if end < 0 else end
            body = text[i + len(eq) + 2:end]
            line += body.count("\n")
            args.append(CMakeArg(body, quoted=True))
            i = end + len(eq) + 2
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in '()#"':
                if text[j] == "\\" and j + 1 < n:
                    j += 2
                    continue
                if text[j] == "$" and j + 1 < n and text[j + 1] == "{" or text.startswith("$ENV{", j):
                    close = text.find("}", j)
                    j = n if close < 0 else close + 1
                    continue
                j += 1
            args.append(CMakeArg(text[i:j]))
            i = j
    return args, i, line


_TRUE_CONSTANTS = {"1", "ON", "YES", "TRUE", "Y"}
_FALSE_CONSTANTS = {"0", "OFF", "NO", "FALSE", "N", "IGNORE", "NOTFOUND", ""}
_VAR_REF = re.compile(r"\$(ENV)?\{([A-Za-z0-9_.+\-/]+)\}")
# A value longer than this is "unknown": forty `set(X "${X}${X}")` lines would otherwise need 2^40 bytes.
MAX_VALUE = 64 << 10


class CMakeScope:
    """Variable values known while reading a file: ``None`` means "set, value unknown"."""

    def __init__(self, variables: dict[str, str | None] | None = None):
        self.vars: dict[str, str | None] = dict(variables or {})

    def expand(self, text: str) -> str | None:
        """``text`` with ``${VAR}`` / ``$ENV{VAR}`` substituted; None when a value is unknown."""
        unknown = False

        def sub(m: re.Match) -> str:
            nonlocal unknown
            if m.group(1):  # $ENV{X}: the tasks read checkouts for an environment without overrides
                return ""
            name = m.group(2)
            if name in self.vars:
                value = self.vars[name]
                if value is None:
                    unknown = True
                    return ""
                return value
            if _assumed_unset(name):
                return ""
            unknown = True
            return ""

        for _ in range(5):  # nested references: ${${X}}
            new = _VAR_REF.sub(sub, text)
            if new == text:
                break
            text = new
            if len(text) > MAX_VALUE:
                return None
        return None if unknown or len(text) > MAX_VALUE else text

    def is_defined(self, name: str) -> bool | None:
        if name in self.vars:
            return True
        return False if _assumed_unset(name) else None


def _assumed_unset(name: str) -> bool:
    # The local-source overrides (VLLM_CUTLASS_SRC_DIR, FLASH_MLA_SRC_DIR...) and cache paths are
    # what a plain build leaves unset; the branch that fetches from git is the one to read.
    return name.endswith(("_SRC_DIR", "_SOURCE_DIR", "_POPULATED")) or name.startswith("FETCHCONTENT_")


_UNARY = {"EXISTS", "COMMAND", "DEFINED", "IS_DIRECTORY", "IS_ABSOLUTE", "IS_SYMLINK", "POLICY", "TARGET", "TEST"}
_BINARY = {
    "STREQUAL", "STRLESS", "STRGREATER", "STRLESS_EQUAL", "STRGREATER_EQUAL",
    "EQUAL", "LESS", "GREATER", "LESS_EQUAL", "GREATER_EQUAL",
    "VERSION_EQUAL", "VERSION_LESS", "VERSION_GREATER", "VERSION_LESS_EQUAL", "VERSION_GREATER_EQUAL",
    "MATCHES", "IN_LIST", "PATH_EQUAL", "IS_NEWER_THAN",
}


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return True


def _or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    if a is None or b is None:
        return None
    return False


def _not(a: bool | None) -> bool | None:
    return None if a is None else not a


def _operand_value(tok: CMakeArg, scope: CMakeScope) -> str | None:
    """An operand of a comparison as a string: a variable's value when it names one, else the text itself."""
    text = scope.expand(tok.value)
    if text is None:
        return None
    if not tok.quoted and _IDENT.fullmatch(text) and text == tok.value:
        if text in scope.vars:
            return scope.vars[text]
        if text.upper() in _TRUE_CONSTANTS | _FALSE_CONSTANTS or re.fullmatch(r"[\d.]+", text):
            return text
        return "" if _assumed_unset(text) else None
    return text


def _truth(tok: CMakeArg, scope: CMakeScope) -> bool | None:
    """A lone word's truth: a constant's, else the variable it names (``if(FOO)``)."""
    text = scope.expand(tok.value)
    if text is None:
        return None
    upper = text.upper()
    if upper in _TRUE_CONSTANTS or re.fullmatch(r"-?\d+(\.\d+)*", text) and float(text.split(".")[0] or 0) != 0:
        return True
    if upper in _FALSE_CONSTANTS or upper.endswith("-NOTFOUND") or re.fullmatch(r"-?0+(\.0+)*", text):
        return False
    if tok.quoted:
        return False  # a quoted string that is no true constant is false (CMP0054)
    if text in scope.vars:
        value = scope.vars[text]
        if value is None:
            return None
        value_upper = value.upper()
        return not (value_upper in _FALSE_CONSTANTS or value_upper.endswith("-NOTFOUND"))
    return False if _assumed_unset(text) else None


def _compare_versions(op: str, left: str, right: str) -> bool | None:
    a, b = _version_tuple(left), _version_tuple(right)
    if a is None or b is None:
        return None
    width = max(len(a), len(b))
    a, b = a + (0,) * (width - len(a)), b + (0,) * (width - len(b))
    return {"VERSION_EQUAL": a == b, "VERSION_LESS": a < b, "VERSION_GREATER": a > b,
            "VERSION_LESS_EQUAL": a <= b, "VERSION_GREATER_EQUAL": a >= b}[op]


def _compare(op: str, left: str | None, right: str | None) -> bool | None:
    """A binary test of ``if()`` on two operand values; None when one is unknown or the test is not read."""
    if left is None or right is None:
        return None
    if op == "STREQUAL":
        return left == right
    if op == "MATCHES":  # the tree's own regex: RE2, linear time; one RE2 does not take is undecided
        regex = compile_linear(right)
        return None if regex is None else regex.search(left) is not None
    if op == "IN_LIST":
        return None
    if op.startswith("VERSION_"):
        return _compare_versions(op, left, right)
    if op in ("EQUAL", "LESS", "GREATER", "LESS_EQUAL", "GREATER_EQUAL"):
        try:
            x, y = float(left), float(right)
        except ValueError:
            return False
        return {"EQUAL": x == y, "LESS": x < y, "GREATER": x > y, "LESS_EQUAL": x <= y,
                "GREATER_EQUAL": x >= y}[op]
    if op.startswith("STR"):
        return {"STRLESS": left < right, "STRGREATER": left > right, "STRLESS_EQUAL": left <= right,
                "STRGREATER_EQUAL": left >= right}[op]
    return None


class _Condition:
    """A recursive-descent reader of one ``if()`` condition, CMake's precedence: parentheses, unary tests,
    binary tests, NOT, AND, OR."""

    def __init__(self, tokens: list[CMakeArg], scope: CMakeScope):
        self.tokens, self.scope = tokens, scope
        self.pos = 0
        self.depth = 0  # of parentheses: past MAX_DEPTH the condition is undecided (and Python's stack is safe)
        self.too_deep = False

    def peek(self) -> CMakeArg | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> CMakeArg:
        self.pos += 1
        return self.tokens[self.pos - 1]

    def at(self, words) -> bool:
        tok = self.peek()
        return tok is not None and not tok.quoted and tok.value in words

    def parenthesised(self) -> bool | None:
        self.take()
        if self.depth >= MAX_DEPTH:
            self.too_deep = True
            return None
        self.depth += 1
        value = self.or_expr()
        self.depth -= 1
        if self.at({")"}):
            self.take()
        return value

    def unary(self) -> bool | None:
        op = self.take().value
        target = self.take() if self.peek() is not None else CMakeArg("")
        if op == "DEFINED":
            if re.fullmatch(r"ENV\{(\w+)\}", target.value):
                return False
            cache = re.fullmatch(r"CACHE\{(\w+)\}", target.value)
            return self.scope.is_defined(cache.group(1) if cache else target.value)
        if op == "POLICY":
            return True
        return None

    def primary(self) -> bool | None:
        if self.peek() is None:
            return None
        if self.at({"("}):
            return self.parenthesised()
        if self.at(_UNARY):
            return self.unary()
        left_tok = self.take()
        if not self.at(_BINARY):
            return _truth(left_tok, self.scope)
        op = self.take().value
        right_tok = self.take() if self.peek() is not None else CMakeArg("")
        if op == "IN_LIST":
            return None
        right = right_tok.value if op == "MATCHES" and not right_tok.quoted else None
        right = right if right is not None else _operand_value(right_tok, self.scope)
        return _compare(op, _operand_value(left_tok, self.scope), right)

    def not_expr(self) -> bool | None:
        negate = False
        while self.at({"NOT"}):  # a loop: a thousand NOTs are no thousand stack frames
            self.take()
            negate = not negate
        value = self.primary()
        return _not(value) if negate else value

    def and_expr(self) -> bool | None:
        value = self.not_expr()
        while self.at({"AND"}):
            self.take()
            value = _and(value, self.not_expr())
        return value

    def or_expr(self) -> bool | None:
        value = self.and_expr()
        while self.at({"OR"}):
            self.take()
            value = _or(value, self.and_expr())
        return value


def evaluate_condition(args: Iterable[CMakeArg], scope: CMakeScope) -> bool | None:
    """CMake ``if()`` semantics in three values: True, False, or None when it depends on the unknown."""
    tokens = list(args)
    if not tokens:
        return False
    condition = _Condition(tokens, scope)
    value = condition.or_expr()
    return None if condition.too_deep else value


def _version_tuple(text: str) -> tuple[int, ...] | None:
    m = re.match(r"^\s*(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


# A guard is the conditions of every enclosing if/elseif/else: (condition, must_be) pairs.
Guard = tuple[tuple[tuple[CMakeArg, ...], bool], ...]
# Conditions a guard keeps (nesting plus the elseif branches before it); past that one undecided entry
# stands for the rest, so a thousand elseifs cost a thousand guards of MAX_GUARD entries, not a million.
MAX_GUARD = 16  # vLLM 0.26.0 nests five deep at most
MAX_DEPTH = 64  # parentheses in one condition, and include() files one inside another
UNDECIDED = ((CMakeArg(f"(more than {MAX_GUARD} enclosing conditions: not read)"),), True)


def _guarded(outer: Guard, *more: tuple[tuple[CMakeArg, ...], bool]) -> Guard:
    """``outer`` with ``more`` conditions, at most MAX_GUARD of them (then UNDECIDED ends it)."""
    if outer and outer[-1] is UNDECIDED:
        return outer
    room = MAX_GUARD - len(outer)
    return outer + tuple(more) if len(more) <= room else outer + tuple(more[:room]) + (UNDECIDED,)


def evaluate_guard(guard: Guard, scope: CMakeScope) -> bool | None:
    value: bool | None = True
    for entry in guard:
        condition, expected = entry
        result = None if entry is UNDECIDED else evaluate_condition(condition, scope)
        value = _and(value, result if expected else _not(result))
        if value is False:
            return False
    return value


@dataclass(frozen=True)
class GuardedCommand:
    command: CMakeCommand
    guard: Guard
    file: str  # relative to the tree root


def walk_cmake(root: Path, entry: str = "CMakeLists.txt", scope: CMakeScope | None = None,
               extra_files: Iterable[str] = ()) -> tuple[list[GuardedCommand], CMakeScope]:
    """Every command reachable from ``entry`` (following include()s) with its guard.

    ``set()`` commands update ``scope`` when their guard holds in it, so later conditions and
    ``${VAR}`` references resolve as CMake would for that configuration; a set under an undecidable
    guard makes the variable unknown. Function and macro bodies are skipped.
    """
    scope = scope or CMakeScope()
    out: list[GuardedCommand] = []
    visited: set[str] = set()

    def walk(rel: str, guard: Guard, depth: int = 0) -> None:
        if rel in visited or depth > MAX_DEPTH:
            return
        visited.add(rel)
        path = root / rel
        try:
            commands = parse_cmake(path.read_text(errors="replace"))
        except OSError:
            return
        stack: list[tuple[list[tuple[CMakeArg, ...]], Guard]] = []  # (conditions seen, current guard)
        current: Guard = guard
        skip_depth = 0
        list_dir = str(Path(rel).parent).replace("\\", "/")
        for cmd in commands:
            if cmd.name in ("function", "macro"):
                skip_depth += 1
                continue
            if cmd.name in ("endfunction", "endmacro"):
                skip_depth = max(0, skip_depth - 1)
                continue
            if skip_depth:
                continue
            if cmd.name == "if":
                stack.append(([cmd.args], current))
                current = _guarded(current, (cmd.args, True))
                continue
            if cmd.name in ("elseif", "else") and stack:
                seen, outer = stack[-1]
                before = [(c, False) for c in seen[:MAX_GUARD + 1]]  # what _guarded keeps, never more
                current = _guarded(outer, *before, *([(cmd.args, True)] if cmd.name == "elseif" else []))
                if cmd.name == "elseif":
                    seen.append(cmd.args)
                continue
            if cmd.name == "endif" and stack:
                _, current = stack.pop()
                continue
            out.append(GuardedCommand(cmd, current, rel))
            if cmd.name == "set" and cmd.args:
                _apply_set(cmd, current, scope)
            elif cmd.name == "include" and cmd.args:
                target = _resolve_include(cmd.args[0].value, root, list_dir, scope)
                if target is not None and evaluate_guard(current, scope) is not False:
                    walk(target, current, depth + 1)

    walk(entry, ())
    for rel in extra_files:
        walk(rel, ())
    return out, scope


def _apply_set(cmd: CMakeCommand, guard: Guard, scope: CMakeScope) -> None:
    name = cmd.args[0].value
    if not _IDENT.fullmatch(name):
        return
    taken = evaluate_guard(guard, scope)
    if taken is False:
        return
    values = [a for a in cmd.args[1:]]
    if "CACHE" in [a.value for a in values if not a.quoted]:
        values = values[:[a.value for a in values].index("CACHE")]
        if name in scope.vars:  # a cache set does not replace a normal variable
            return
    if values and not values[-1].quoted and values[-1].value == "PARENT_SCOPE":
        return
    expanded = [scope.expand(a.value) for a in values]
    value = None if any(v is None for v in expanded) else ";".join(expanded)
    if taken is None and scope.vars.get(name) != value:
        value = None  # set on a path this reader cannot decide: the value may or may not be this
    scope.vars[name] = value


def _resolve_include(spec: str, root: Path, list_dir: str, scope: CMakeScope) -> str | None:
    local = CMakeScope({**scope.vars, "CMAKE_CURRENT_LIST_DIR": str(root / list_dir),
                        "CMAKE_CURRENT_SOURCE_DIR": str(root), "CMAKE_SOURCE_DIR": str(root)})
    text = local.expand(spec)
    if not text or "/" not in text and not text.endswith(".cmake"):
        return None  # a module name such as FetchContent or CheckLanguage
    path = Path(text)
    if not path.is_absolute():
        path = root / list_dir / path
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    return str(rel).replace("\\", "/") if (root / rel).is_file() else None


# --- git dependencies (FetchContent) ------------------------------------------------------------------

_FETCH_KEYWORDS = {
    "GIT_REPOSITORY", "GIT_TAG", "GIT_SHALLOW", "GIT_PROGRESS", "GIT_SUBMODULES", "GIT_SUBMODULES_RECURSE",
    "GIT_REMOTE_UPDATE_STRATEGY", "GIT_CONFIG", "GIT_REMOTE_NAME", "SOURCE_DIR", "BINARY_DIR", "SUBBUILD_DIR",
    "SOURCE_SUBDIR", "CONFIGURE_COMMAND", "BUILD_COMMAND", "INSTALL_COMMAND", "TEST_COMMAND", "PATCH_COMMAND",
    "UPDATE_COMMAND", "UPDATE_DISCONNECTED", "URL", "URL_HASH", "URL_MD5", "QUIET", "OVERRIDE_FIND_PACKAGE",
    "FIND_PACKAGE_ARGS", "EXCLUDE_FROM_ALL", "SYSTEM", "DOWNLOAD_EXTRACT_TIMESTAMP", "LOG_DOWNLOAD",
}


@dataclass(frozen=True)
class GitDep:
    """One git repository the checkout's CMake fetches at configure time."""

    name: str  # the FetchContent name: cutlass, vllm-flash-attn, flashmla, deepgemm, ...
    repository: str
    tag: str  # GIT_TAG: a tag, branch or commit
    src_dir_env: str | None  # the environment variable that points the build at a local copy
    source_subdir: str = ""  # where in the clone that variable must point ("" = the clone itself)
    submodules: tuple[str, ...] | None = None  # GIT_SUBMODULES; None: all of them, recursively
    shallow: bool = False
    file: str = ""  # the CMake file that declares it, relative to the tree
    line: int = 0
    declared_by: str = "fetchcontent_declare"  # or fetchcontent_populate (direct: CMake's -D override does not apply)
    condition: str = ""  # the CMake condition it is fetched under, when this reader cannot decide it ("": always)

    @property
    def cmake_source_dir_var(self) -> str:
        """CMake's own override (-D) for a FetchContent_Declare'd dependency."""
        return "FETCHCONTENT_SOURCE_DIR_" + re.sub(r"[^A-Z0-9_]", "_", self.name.upper())


def find_cmake_git_deps(root: Path, commands: list[GuardedCommand], scope: CMakeScope) -> list[GitDep]:
    """The git dependencies declared by FetchContent_Declare / FetchContent_Populate."""
    deps: list[GitDep] = []
    seen: set[tuple[str, str, str]] = set()
    # Per-file view of the commands, to find each dependency's override variable (read once per file:
    # a file declaring thousands of dependencies must not be rescanned for each).
    by_file: dict[str, list[GuardedCommand]] = {}
    for gc in commands:
        by_file.setdefault(gc.file, []).append(gc)
    env_facts: dict[str, tuple[dict[str, str], frozenset[str], str | None]] = {}
    texts: dict[str, str] = {}
    replay = CMakeScope(dict(_initial_vars(scope)))
    for gc in commands:
        cmd = gc.command
        if cmd.name == "set" and cmd.args:
            _apply_set(cmd, gc.guard, replay)
            continue
        if cmd.name not in ("fetchcontent_declare", "fetchcontent_populate") or not cmd.args:
            continue
        taken = evaluate_guard(gc.guard, replay)
        if taken is False:
            continue
        options = _keyword_args(cmd.args[1:])
        if "GIT_REPOSITORY" not in options:
            continue
        name = replay.expand(cmd.args[0].value) or cmd.args[0].value
        repository = replay.expand(options["GIT_REPOSITORY"][0].value) if options["GIT_REPOSITORY"] else None
        tag_args = options.get("GIT_TAG") or [CMakeArg("")]
        tag = replay.expand(tag_args[0].value)
        if not repository or tag is None:
            raise ForgeError(
                f"{gc.file}:{cmd.line} declares '{name}' with a repository or tag this tool cannot resolve",
                "report this vLLM version to vllm-forge; meanwhile set the dependency's *_SRC_DIR by hand",
            )
        key = (name, repository, tag)
        if key in seen:
            continue
        seen.add(key)
        submodules = None
        if "GIT_SUBMODULES" in options:
            submodules = tuple(v for a in options["GIT_SUBMODULES"]
                               for v in (replay.expand(a.value) or "").split(";") if v)
        shallow = bool(options.get("GIT_SHALLOW")) and (options["GIT_SHALLOW"][0].value.upper() in _TRUE_CONSTANTS)
        if gc.file not in env_facts:
            env_facts[gc.file] = _env_facts(by_file.get(gc.file, []))
        env = _override_env(name, gc.guard, *env_facts[gc.file])
        subdir = ""
        if options.get("SOURCE_SUBDIR"):
            if gc.file not in texts:
                texts[gc.file] = _read(root / gc.file)
            subdir = _subdir_for_override(name, replay.expand(options["SOURCE_SUBDIR"][0].value) or "",
                                          texts[gc.file])
        deps.append(GitDep(name=name, repository=repository, tag=tag, src_dir_env=env, source_subdir=subdir,
                           submodules=submodules, shallow=shallow, file=gc.file, line=cmd.line,
                           declared_by=cmd.name, condition="" if taken else _option_terms(gc.guard, replay)))
    return deps


def _initial_vars(scope: CMakeScope) -> dict[str, str | None]:
    return {k: v for k, v in scope.vars.items() if k in _CONTEXT_NAMES}


def _keyword_args(args: Iterable[CMakeArg]) -> dict[str, list[CMakeArg]]:
    options: dict[str, list[CMakeArg]] = {}
    key = None
    for arg in args:
        if not arg.quoted and arg.value in _FETCH_KEYWORDS:
            key = arg.value
            options.setdefault(key, [])
        elif key is not None:
            options[key].append(arg)
    return options


def _env_facts(file_commands: list[GuardedCommand]) -> tuple[dict[str, str], frozenset[str], str | None]:
    """(CMake variable -> environment variable it is set from, every $ENV{X} the file reads, the one
    *_SRC_DIR among them or None) of one file."""
    from_env: dict[str, str] = {}
    env_reads: list[str] = []
    for gc in file_commands:
        cmd = gc.command
        for arg in cmd.args:
            env_reads += re.findall(r"\$ENV\{(\w+)\}", arg.value)
        if cmd.name == "set" and len(cmd.args) >= 2:
            m = re.fullmatch(r"\$ENV\{(\w+)\}", cmd.args[1].value)
            if m:
                from_env[cmd.args[0].value] = m.group(1)
    src_dirs = {e for e in env_reads if e.endswith("_SRC_DIR")}
    return from_env, frozenset(env_reads), next(iter(src_dirs)) if len(src_dirs) == 1 else None


def _override_env(name: str, guard: Guard, from_env: dict[str, str], env_reads: frozenset[str],
                  only_src_dir: str | None) -> str | None:
    """The environment variable that makes this file use a local copy instead of ``name``'s git
    (the other arguments: the file's ``_env_facts``)."""
    # 1. The branch that fetches is the else of `if(X_SRC_DIR)` / `if(DEFINED ENV{X_SRC_DIR})`.
    for condition, expected in reversed(guard):
        if expected:
            continue
        for arg in condition:
            env = re.fullmatch(r"ENV\{(\w+)\}", arg.value)
            if env:
                return env.group(1)
            if arg.value in from_env:
                return from_env[arg.value]
            if arg.value.endswith("_SRC_DIR") and arg.value in env_reads:
                return arg.value
    # 2. A file that reads exactly one *_SRC_DIR from the environment, or <NAME>_SRC_DIR.
    conventional = re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_SRC_DIR"
    for env in sorted({conventional, "VLLM_" + conventional} & env_reads):
        return env
    return only_src_dir


def _subdir_for_override(name: str, subdir: str, text: str) -> str:
    """Where the override must point when the file (``text``) uses ``${name_SOURCE_DIR}`` as is for a local
    copy but ``${name_SOURCE_DIR}/<SOURCE_SUBDIR>`` for the git clone (triton_kernels does)."""
    subdir = subdir.strip("/")
    if not subdir or not text:
        return ""
    ref = "${" + name + "_SOURCE_DIR}"
    uses_subdir = f"{ref}/{subdir}" in text
    uses_bare = re.search(re.escape(ref) + r'/?["\s)]', text) is not None
    return subdir if uses_subdir and uses_bare else ""


# --- the CUDA arch gate --------------------------------------------------------------------------------

def _option_terms(guard: Guard, scope: CMakeScope) -> str:
    """The terms of an undecided guard that depend on a build option (``MINIVLLM_FETCH_DEPS``), as text.
    Terms that test for files (``EXISTS``, ``IS_DIRECTORY``: a copy an earlier configure left) are left
    out: whether they hold or not, the dependency is still fetched when none is there."""
    undecided = [(c, e) for c, e in guard if evaluate_condition(c, scope) is None
                 and not (c and not c[0].quoted and c[0].value in ("EXISTS", "IS_DIRECTORY"))]
    return _describe_guard(tuple(undecided))


def _describe_guard(guard: Guard) -> str:
    parts = []
    for condition, expected in guard:
        text = " ".join(f'"{a.value}"' if a.quoted else a.value for a in condition)
        parts.append(text if expected else f"NOT ({text})")
    return " AND ".join(parts)


@dataclass(frozen=True)
class GateBranch:
    archs: tuple[str, ...]
    guard: Guard
    line: int

    def describe(self) -> str:
        return _describe_guard(self.guard) or "always"


_CONTEXT_NAMES = ("VLLM_TARGET_DEVICE", "VLLM_GPU_LANG", "CUDA_FOUND", "CMAKE_CUDA_COMPILER_VERSION",
                  "CUDA_VERSION", "CMAKE_CUDA_COMPILER_ID", "HIP_FOUND", "PYTORCH_FOUND_HIP")


def cuda_context(cuda: CudaRelease | None) -> dict[str, str | None]:
    """The variables a CUDA build of vLLM has when CMakeLists.txt reaches its arch gate."""
    context: dict[str, str | None] = {
        "VLLM_TARGET_DEVICE": "cuda", "VLLM_GPU_LANG": "CUDA", "CUDA_FOUND": "TRUE", "CMAKE_CUDA_COMPILER_ID": "NVIDIA",
        "HIP_FOUND": "FALSE", "PYTORCH_FOUND_HIP": "FALSE",
    }
    if cuda is not None:
        context["CMAKE_CUDA_COMPILER_VERSION"] = str(cuda)
        context["CUDA_VERSION"] = str(cuda)
    return context


# --- the tree ------------------------------------------------------------------------------------------

@dataclass
class VllmTree:
    root: Path
    version: str | None  # "0.10.0"; None when neither PKG-INFO, a git tag nor _version.py says
    version_source: str  # "PKG-INFO", "git tag v0.10.0", "vllm/_version.py", "unknown"
    kind: str  # "vllm", or "minivllm" for vllm-forge's embedded miniature project
    use_existing_torch: str | None  # relative path, e.g. "tools/use_existing_torch.py"
    takes_prefix: bool  # use_existing_torch.py takes --prefix (strips only torch-family pins)
    torch_pin_globs: tuple[str, ...]  # the files use_existing_torch.py cleans: ("requirements/*.txt", "pyproject.toml")
    build_requirements: str | None  # "requirements/build/cuda.txt", "requirements/build.txt"
    env_vars_read: set[str]
    env_var_sources: dict[str, list[str]]  # variable -> where it is read ("setup.py", "CMakeLists.txt", ...)
    version_env: str | None  # what pins the wheel's version: VLLM_VERSION_OVERRIDE or SETUPTOOLS_SCM_PRETEND_VERSION
    arch_gate: tuple[GateBranch, ...]  # set(CUDA_SUPPORTED_ARCHS ...) branches, in file order
    global_ptx_ignored: bool  # kernels take only arch numbers from TORCH_CUDA_ARCH_LIST: a top-level +PTX is lost
    ptx_warning: bool  # ... and CMake says so (warn_if_ptx_arch_requested, 0.28+)
    wheel_size_limit_mb: int | None
    wheel_size_source: str
    dockerfile: str | None
    dockerfile_args: dict[str, str | None]  # ARG name -> default (None: no default)
    git_deps: list[GitDep]
    compile_cache_tools: tuple[str, ...]  # launchers setup.py picks up by itself when on PATH
    notes: list[str] = field(default_factory=list)
    cmake_minimum: str | None = None  # cmake_minimum_required(VERSION x) of CMakeLists.txt
    torch_pin: str | None = None  # the torch version the checkout builds against: "2.11.0"
    torch_pin_source: str = ""  # where that was read ("requirements/build/cuda.txt", "CMakeLists.txt ...")
    # dependency name -> the CMake extension targets that need it (those its declaring file defines or installs)
    dep_targets: dict[str, frozenset[str]] = field(default_factory=dict)

    # -- questions the other tasks ask --

    def reads(self, variable: str) -> bool:
        """Whether this version's build reads ``variable`` (setup.py, its CMake, or a fetched
        dependency that vLLM's own Dockerfile sets it for)."""
        return variable in self.env_vars_read

    def cuda_supported_archs(self, cuda: CudaRelease) -> list[str] | None:
        """CUDA_SUPPORTED_ARCHS as this CMakeLists sets it for nvcc of ``cuda``
        (["7.5", "8.0", ..., "12.0"]); None when the checkout has no such gate."""
        if not self.arch_gate:
            return None
        scope = CMakeScope(cuda_context(cuda))
        chosen: tuple[str, ...] | None = None
        for branch in self.arch_gate:
            taken = evaluate_guard(branch.guard, scope)
            if taken is True:
                chosen = branch.archs
            elif taken is None and chosen is None:
                chosen = branch.archs
        return list(chosen) if chosen is not None else None

    def gate_arch_for(self, arch: CudaArch, cuda: CudaRelease) -> str | None:
        """What the gate compiles a requested arch as: CMake's loose intersection takes the newest listed arch
        whose SASS runs on the GPU asked for (vllm_forge/gpu/runs_on.py): "12.1" -> "12.0" where only 12.0 is
        listed; None when this vLLM drops the arch. Any gate-less tree keeps every arch."""
        supported = self.cuda_supported_archs(cuda)
        if supported is None:
            return f"{arch.capability}{arch.variant}"
        listed = [parse_arch_token(entry) for entry in supported]
        fit = runs_on([CudaArch(a.major, a.minor) for a in listed if a is not None], arch.gpu)
        if fit.kind != SASS:
            return None
        variant = arch.variant if fit.code.gpu == arch.gpu else ""
        return f"{fit.code.capability}{variant}"

    def dropped_archs(self, archs: Iterable[CudaArch], cuda: CudaRelease) -> list[str]:
        """The requested archs' capabilities this vLLM's CMake would silently drop."""
        return [arch.capability for arch in archs if self.gate_arch_for(arch, cuda) is None]

    def check_archs(self, archs: Iterable[CudaArch], cuda: CudaRelease) -> None:
        """Preflight: refuse archs this vLLM version would drop with this CUDA (ForgeError)."""
        archs = list(archs)
        dropped = self.dropped_archs(archs, cuda)
        if not dropped:
            return
        supported = self.cuda_supported_archs(cuda) or []
        lost = [arch for arch in archs if arch.capability in dropped]
        newer = [c for c in compat.known_cudas() if c > cuda.minor_release
                 and all(self.gate_arch_for(arch, c) is not None for arch in lost)]
        hint = f"build with CUDA {newer[0]} or newer (--cuda {newer[0]})" if newer else \
            "use a newer vLLM release, or drop those archs"
        raise ForgeError(
            f"vLLM {self.version or '(unknown version)'} compiles no kernels for {', '.join(dropped)} with CUDA "
            f"{cuda}: its CMakeLists.txt accepts only {';'.join(supported)}",
            hint,
        )

    @property
    def cuda_pin(self) -> CudaRelease | None:
        """The CUDA release the checkout's own Dockerfile builds with (ARG CUDA_VERSION), e.g. 13.0.2."""
        value = self.dockerfile_args.get("CUDA_VERSION")
        return CudaRelease.parse(value) if value and re.fullmatch(r"\d+\.\d+(\.\d+)?", value) else None

    def cuda_targets(self, nvcc: CudaRelease | None, python: tuple[int, int]):
        """The CMake extension targets a CUDA build of this checkout builds with that nvcc and Python
        (vllm_forge/source/setup_reader.py reads setup.py)."""
        from vllm_forge.source.setup_reader import cuda_extension_targets

        return cuda_extension_targets(_read(self.root / "setup.py"), python=python, nvcc=nvcc)

    def deps_of_target(self, target: str) -> list[GitDep]:
        return [d for d in self.git_deps if target in self.dep_targets.get(d.name, frozenset())]

    def wheel_limit_mb(self, default: int = 400) -> int:
        return self.wheel_size_limit_mb or default

    def summary(self) -> str:
        """One line for `invoke plan`: what was detected."""
        parts = []
        if self.use_existing_torch:
            parts.append(self.use_existing_torch + (" --prefix" if self.takes_prefix else ""))
        if self.build_requirements:
            parts.append(self.build_requirements)
        parts.append("VLLM_FA_CMAKE_GPU_ARCHES read" if self.reads("VLLM_FA_CMAKE_GPU_ARCHES")
                     else "no VLLM_FA_CMAKE_GPU_ARCHES")
        if self.version_env:
            parts.append(f"version via {self.version_env}")
        if self.wheel_size_limit_mb:
            parts.append(f"wheel limit {self.wheel_size_limit_mb} MB")
        if self.arch_gate:
            parts.append(f"{len(self.arch_gate)}-branch CUDA arch gate")
        if self.global_ptx_ignored:
            parts.append("top-level +PTX ignored" + (" (warns)" if self.ptx_warning else ""))
        if self.git_deps:
            parts.append(f"{len(self.git_deps)} git deps ({', '.join(d.name for d in self.git_deps)})")
        label = "vLLM" if self.kind == "vllm" else self.kind
        return f"{label} {self.version or '(version unknown)'}: " + ", ".join(parts)

    def as_dict(self, cudas: Iterable[CudaRelease] = compat.VLLM_CUDAS) -> dict:
        data = {
            "root": str(self.root),
            "version": self.version,
            "version_source": self.version_source,
            "kind": self.kind,
            "use_existing_torch": self.use_existing_torch,
            "takes_prefix": self.takes_prefix,
            "torch_pin_globs": list(self.torch_pin_globs),
            "build_requirements": self.build_requirements,
            "env_vars_read": sorted(self.env_vars_read),
            "build_knobs_read": sorted(v for v in BUILD_KNOBS if v in self.env_vars_read),
            "env_var_sources": {k: self.env_var_sources[k] for k in sorted(self.env_var_sources)},
            "version_env": self.version_env,
            "arch_gate": {str(c): self.cuda_supported_archs(c) for c in cudas},
            "arch_gate_branches": [{"archs": list(b.archs), "when": b.describe(), "line": b.line}
                                   for b in self.arch_gate],
            "global_ptx_ignored": self.global_ptx_ignored,
            "ptx_warning": self.ptx_warning,
            "wheel_size_limit_mb": self.wheel_size_limit_mb,
            "wheel_size_source": self.wheel_size_source,
            "dockerfile": self.dockerfile,
            "dockerfile_args": self.dockerfile_args,
            "git_deps": [asdict(d) | {"submodules": list(d.submodules) if d.submodules is not None else None}
                         for d in self.git_deps],
            "compile_cache_tools": list(self.compile_cache_tools),
            "notes": self.notes,
        }
        return data


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def detect_version(root: Path) -> tuple[str | None, str]:
    """The checkout's vLLM version and where it came from."""
    pkg_info = root / "PKG-INFO"
    m = re.search(r"^Version:\s*(\S+)", _read(pkg_info), re.M)
    if m:
        return m.group(1), "PKG-INFO"
    if (root / ".git").exists():
        from vllm_forge.core.git_safe import run_git

        proc = run_git(["describe", "--tags", "--match", "v[0-9]*", "--abbrev=0"], root, timeout=30)
        if proc.returncode == 0 and proc.stdout.strip():
            tag = proc.stdout.strip()
            return tag.lstrip("v"), f"git tag {tag}"
    for rel in ("vllm/_version.py", "vllm/version.py"):
        m = re.search(r"""(?:__version__|version)\s*(?::\s*str\s*)?=\s*['"]([0-9][^'"]*)['"]""", _read(root / rel))
        if m:
            return m.group(1), rel
    return None, "unknown"


def _version_key(version: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not m:
        return ()
    return tuple(int(g or 0) for g in m.groups())


def _find_use_existing_torch(root: Path) -> tuple[str | None, bool]:
    for rel in ("tools/use_existing_torch.py", "use_existing_torch.py"):
        text = _read(root / rel)
        if text:
            return rel, re.search(r"""add_argument\(\s*['"]--prefix['"]""", text) is not None
    return None, False


def _use_existing_torch_globs(text: str) -> tuple[str, ...]:
    """The file patterns a use_existing_torch.py cleans (quoted globs and file names it lists)."""
    found = re.findall(r"""glob\.glob\(\s*['"]([^'"]+)['"]""", text)
    found += [name for name in re.findall(r"""['"]([\w./-]+\.(?:toml|txt|in))['"]""", text) if name not in found]
    return tuple(dict.fromkeys(found))


def _find_build_requirements(root: Path) -> str | None:
    for rel in ("requirements/build/cuda.txt", "requirements/build.txt", "requirements-build.txt"):
        if (root / rel).is_file():
            return rel
    return None


_PY_ENV_PATTERNS = (
    re.compile(r"""os\.environ\.get\(\s*['"]([A-Z][A-Z0-9_]*)['"]"""),
    re.compile(r"""os\.getenv\(\s*['"]([A-Z][A-Z0-9_]*)['"]"""),
    re.compile(r"""os\.environ\[\s*['"]([A-Z][A-Z0-9_]*)['"]\s*\]"""),
    re.compile(r"""['"]([A-Z][A-Z0-9_]*)['"]\s+(?:not\s+)?in\s+os\.environ"""),
    re.compile(r"""os\.environ\.setdefault\(\s*['"]([A-Z][A-Z0-9_]*)['"]"""),
    re.compile(r"""\benvs\.is_set\(\s*['"]([A-Z][A-Z0-9_]*)['"]"""),
    re.compile(r"""\benvs\.([A-Z][A-Z0-9_]*)\b"""),
)


def _env_reads(root: Path, cmake_files: list[str]) -> dict[str, list[str]]:
    sources: dict[str, list[str]] = {}

    def add(name: str, where: str) -> None:
        sources.setdefault(name, [])
        if where not in sources[name]:
            sources[name].append(where)

    setup = _read(root / "setup.py")
    for pattern in _PY_ENV_PATTERNS:
        for name in pattern.findall(setup):
            add(name, "setup.py")
    # Knob names setup.py spells out in quotes but reads in a loop or a helper.
    for knob in BUILD_KNOBS:
        if re.search(rf"""['"]{knob}['"]""", setup) and knob not in sources:
            add(knob, "setup.py")
    if "setuptools_scm" in setup or "setuptools_scm" in _read(root / "pyproject.toml"):
        add("SETUPTOOLS_SCM_PRETEND_VERSION", "setuptools_scm (setup.py / pyproject.toml)")
    for rel in cmake_files:
        for name in re.findall(r"\$ENV\{(\w+)\}", _read(root / rel)):
            add(name, rel)
    cmake_text = _read(root / "CMakeLists.txt")
    if re.search(r"find_package\(\s*Torch\b", cmake_text):
        add("TORCH_CUDA_ARCH_LIST", "torch's CMake (find_package(Torch) in CMakeLists.txt)")
    if re.search(r"\bproject\s*\(", cmake_text):
        for name in _CMAKE_ENV:
            add(name, "CMake itself")
    # A knob vLLM's own Dockerfile sets for the wheel build without vLLM reading it is read by a
    # dependency or tool the build runs: VLLM_FA_CMAKE_GPU_ARCHES by the fetched vllm-flash-attn
    # (set up to 0.10.0, gone by 0.10.2), CCACHE_DIR by ccache.
    dockerfile = _read(root / "docker" / "Dockerfile") or _read(root / "Dockerfile")
    for name in re.findall(r"^\s*ENV\s+([A-Z][A-Z0-9_]*)[= ]", dockerfile, re.M):
        if name in BUILD_KNOBS and name not in sources:
            add(name, "docker/Dockerfile ENV (read by a dependency or tool of the build)")
    return sources


_TORCH_REQ = re.compile(r"""^\s*["']?torch\s*==\s*([0-9][0-9A-Za-z.+]*)""", re.M)


def _torch_pin(root: Path, build_requirements: str | None, cmake_text: str) -> tuple[str | None, str]:
    """The torch version the checkout pins, and where it says so. The requirement files come first; once
    use-existing-torch has removed those pins, CMakeLists.txt's TORCH_SUPPORTED_VERSION_CUDA still says it."""
    for rel in filter(None, (build_requirements, "requirements/cuda.txt", "pyproject.toml")):
        match = _TORCH_REQ.search(_read(root / rel))
        if match:
            return match.group(1), rel
    match = re.search(r"""set\(\s*TORCH_SUPPORTED_VERSION_CUDA\s+"?([0-9][0-9.]*)"?\s*\)""", cmake_text)
    if match:
        return match.group(1), "CMakeLists.txt TORCH_SUPPORTED_VERSION_CUDA"
    return None, ""


_TARGET_DEFINERS = ("define_extension_target", "define_gpu_extension_target", "add_custom_target", "add_library",
                    "target_include_directories", "target_link_libraries")


def _dep_targets(root: Path, deps: list[GitDep], commands: list[GuardedCommand]) -> dict[str, frozenset[str]]:
    """Which targets need each dependency. A dependency declared in its own cmake/external_projects file
    is needed by every target that file names (FA2/FA3 are defined in the fetched tree; the file installs
    them). One declared in CMakeLists.txt (CUTLASS) is needed by the targets whose definition there names
    it (``INCLUDE_DIRECTORIES ${CUTLASS_INCLUDE_DIR}``)."""
    found: dict[str, frozenset[str]] = {}
    for dep in deps:
        if dep.file != "CMakeLists.txt":
            words = set(_IDENT.findall(_read(root / dep.file)))
            found[dep.name] = frozenset(w for w in words if not w.isupper())
            continue
        key = re.sub(r"[^A-Z0-9]", "_", dep.name.upper())
        found[dep.name] = frozenset(
            gc.command.args[0].value for gc in commands
            if gc.file == dep.file and gc.command.name in _TARGET_DEFINERS and gc.command.args
            and any(key in a.value.upper() for a in gc.command.args[1:]))
    return found


def _dockerfile_args(text: str) -> dict[str, str | None]:
    args: dict[str, str | None] = {}
    for m in re.finditer(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$", text, re.M):
        name, default = m.group(1), m.group(2)
        if default is not None:
            default = default.strip()
            if len(default) >= 2 and default[0] == default[-1] and default[0] in "'\"":
                default = default[1:-1]
        if name not in args or args[name] is None:
            args[name] = default
    return args


def _wheel_limit(root: Path, dockerfile_text: str) -> tuple[int | None, str]:
    docker = re.search(r"^\s*ARG\s+VLLM_MAX_SIZE_MB=(\d+)", dockerfile_text, re.M)
    script_rel = None
    script_value = None
    candidates = [".buildkite/check-wheel-size.py", "tools/check-wheel-size.py", "tools/check_wheel_size.py"]
    candidates += sorted(str(p.relative_to(root)) for p in (root / "tools").rglob("*wheel*size*.py")) \
        if (root / "tools").is_dir() else []
    for rel in candidates:
        m = re.search(r"""VLLM_MAX_SIZE_MB['"]\s*,\s*(\d+)""", _read(root / rel))
        if m:
            script_rel, script_value = rel, int(m.group(1))
            break
    if docker:
        source = "docker/Dockerfile ARG VLLM_MAX_SIZE_MB"
        if script_value is not None and script_value != int(docker.group(1)):
            source += f" (note: {script_rel} defaults to {script_value})"
        return int(docker.group(1)), source
    if script_value is not None:
        return script_value, script_rel
    return None, "not found"


def _source_tree(path: Path | str) -> Path:
    """``path`` resolved, refused unless it holds a vLLM-shaped source tree."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ForgeError(f"{root} does not exist or is not a directory",
                         "pass the path of a vLLM checkout (invoke clone makes one)")
    root = root.resolve()
    missing = [rel for rel in ("setup.py", "CMakeLists.txt") if not (root / rel).is_file()]
    if not (root / "vllm").is_dir():
        missing.append("vllm/")
    if missing:
        raise ForgeError(
            f"{root} is not a vLLM source tree (no {', '.join(missing)})",
            "point --vllm-src at a vLLM checkout, or run `invoke clone` first",
        )
    return root


def _supported_version(root: Path, is_mini: bool, min_version: str) -> tuple[str | None, str, list[str]]:
    """The tree's version and where it was read, refusing a release older than ``min_version``; notes."""
    version, version_source = detect_version(root)
    notes: list[str] = []
    if is_mini:
        return version, version_source, notes
    if version is not None and _version_key(version) and _version_key(version) < _version_key(min_version):
        raise ForgeError(
            f"{root} is vLLM {version} ({version_source}); vllm-forge supports vLLM {min_version} and newer",
            f"check out v{min_version}.0 or a newer release (--ref v0.11.0)",
        )
    if version is None:
        if not (root / "requirements").is_dir() and (root / "requirements-build.txt").is_file():
            raise ForgeError(
                f"{root} has the pre-0.8 layout (requirements-build.txt at the root, no requirements/)",
                f"check out v{min_version}.0 or a newer release",
            )
        notes.append("version unknown (no PKG-INFO, git tag or vllm/_version.py): "
                     "pin one with SETUPTOOLS_SCM_PRETEND_VERSION")
    return version, version_source, notes


def _cmake_files(root: Path, cmake_text: str) -> tuple[list[str], list[str]]:
    """The external-project files CMakeLists.txt names (in an include() this reader could not resolve: read
    too, unguarded; files nothing names are never fetched and are left out), and every CMake file."""
    cmake_dir = root / "cmake"
    external = sorted(str(p.relative_to(root)) for p in (cmake_dir / "external_projects").glob("*.cmake")
                      if p.name in cmake_text) if (cmake_dir / "external_projects").is_dir() else []
    cmake_files = ["CMakeLists.txt"] + sorted(
        str(p.relative_to(root)) for p in cmake_dir.rglob("*.cmake")) if cmake_dir.is_dir() else ["CMakeLists.txt"]
    return external, cmake_files


def _arch_gate(commands) -> tuple[GateBranch, ...]:
    """Each ``set(CUDA_SUPPORTED_ARCHS ...)`` of CMakeLists.txt, with the guard it sits under."""
    return tuple(
        GateBranch(tuple(a for a in ";".join(x.value for x in gc.command.args[1:]).split(";") if a),
                   gc.guard, gc.command.line)
        for gc in commands
        if gc.file == "CMakeLists.txt" and gc.command.name == "set" and gc.command.args
        and gc.command.args[0].value == "CUDA_SUPPORTED_ARCHS"
    )


def _version_env(sources) -> str | None:
    """The variable that overrides the version this build stamps."""
    for name in ("VLLM_VERSION_OVERRIDE", "SETUPTOOLS_SCM_PRETEND_VERSION"):
        if name in sources:
            return name
    return None


def inspect_tree(path: Path | str, *, min_version: str = MIN_VERSION) -> VllmTree:
    """Read a vLLM checkout (or unpacked sdist) and say what its version's build needs."""
    root = _source_tree(path)
    cmake_text = _read(root / "CMakeLists.txt")
    is_mini = re.search(r"\bproject\s*\(\s*minivllm\b", cmake_text, re.I) is not None
    version, version_source, notes = _supported_version(root, is_mini, min_version)
    uet, takes_prefix = _find_use_existing_torch(root)
    torch_globs = _use_existing_torch_globs(_read(root / uet)) if uet else ()
    build_req = _find_build_requirements(root)

    external, cmake_files = _cmake_files(root, cmake_text)
    commands, scope = walk_cmake(root, scope=CMakeScope(cuda_context(None)), extra_files=external)
    gate = _arch_gate(commands)
    if not gate and not is_mini:
        notes.append("no CUDA_SUPPORTED_ARCHS gate found in CMakeLists.txt: archs are not filtered by vLLM")
    git_deps = find_cmake_git_deps(root, commands, scope)

    sources = _env_reads(root, cmake_files)
    setup_text = _read(root / "setup.py")
    cache_tools = tuple(t for t in ("sccache", "ccache") if re.search(rf"""which\(\s*['"]{t}['"]""", setup_text))
    # CMakeLists turns torch's gencode flags into bare arch numbers for its per-kernel lists
    # (every release examined): a +PTX in TORCH_CUDA_ARCH_LIST never reaches vLLM's kernels.
    ptx_ignored = re.search(r"\bextract_unique_cuda_archs_ascending\s*\(", cmake_text) is not None
    ptx_warning = re.search(r"\bwarn_if_ptx_arch_requested\s*\(", cmake_text) is not None

    dockerfile_rel = next((rel for rel in ("docker/Dockerfile", "Dockerfile") if (root / rel).is_file()), None)
    dockerfile_text = _read(root / dockerfile_rel) if dockerfile_rel else ""
    limit, limit_source = _wheel_limit(root, dockerfile_text)

    torch_pin, torch_pin_source = _torch_pin(root, build_req, cmake_text)
    minimum = re.search(r"cmake_minimum_required\s*\(\s*VERSION\s+([0-9][0-9.]*)", cmake_text, re.I)
    return VllmTree(
        cmake_minimum=minimum.group(1) if minimum else None, torch_pin=torch_pin, torch_pin_source=torch_pin_source,
        dep_targets=_dep_targets(root, git_deps, commands),
        root=root, version=version, version_source=version_source, kind="minivllm" if is_mini else "vllm",
        use_existing_torch=uet, takes_prefix=takes_prefix, torch_pin_globs=torch_globs, build_requirements=build_req,
        env_vars_read=set(sources), env_var_sources=sources, version_env=_version_env(sources),
        arch_gate=gate, global_ptx_ignored=ptx_ignored, ptx_warning=ptx_warning,
        wheel_size_limit_mb=limit, wheel_size_source=limit_source,
        dockerfile=dockerfile_rel, dockerfile_args=_dockerfile_args(dockerfile_text), git_deps=git_deps,
        compile_cache_tools=cache_tools, notes=notes,
    )


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Say what a vLLM checkout's version needs from a build.")
    parser.add_argument("path", type=Path, help="a vLLM checkout or unpacked sdist")
    parser.add_argument("--json", action="store_true", help="print every detected fact as JSON")
    parser.add_argument("--cuda", action="append", help="CUDA version(s) to show the arch gate for")
    args = parser.parse_args(argv)
    tree = inspect_tree(args.path)
    cudas = [CudaRelease.parse(c) for c in args.cuda] if args.cuda else list(compat.VLLM_CUDAS)
    if args.json:
        print(json.dumps(tree.as_dict(cudas), indent=2))
        return 0
    print(tree.summary())
    print(f"  version from {tree.version_source}; Dockerfile {tree.dockerfile or '-'} "
          f"({len(tree.dockerfile_args)} ARGs); wheel limit from {tree.wheel_size_source}")
    print(f"  build knobs read: {', '.join(v for v in BUILD_KNOBS if v in tree.env_vars_read)}")
    for cuda in cudas:
        archs = tree.cuda_supported_archs(cuda)
        print(f"  CUDA {cuda}: {';'.join(archs) if archs is not None else 'no gate (every arch nvcc accepts)'}")
    for dep in tree.git_deps:
        print(f"  dep {dep.name}: {dep.repository} @ {dep.tag}  (local copy: {dep.src_dir_env or '-'}"
              f"{'/' + dep.source_subdir if dep.source_subdir else ''})")
    for note in tree.notes:
        print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
