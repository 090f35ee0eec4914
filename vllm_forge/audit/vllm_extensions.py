"""Which compiled extensions a vLLM really needs, read from that vLLM's own Python files.

A vLLM wheel ships a dozen compiled extensions, and not every one is needed everywhere:
``vllm/platforms/cuda.py`` imports ``vllm._C_stable_libtorch`` unconditionally (no kernels for the
GPU: vLLM cannot start), but ``vllm._qutlass_C`` inside ``contextlib.suppress(ImportError)``, FA3
inside ``try/except ImportError`` and FlashMLA only behind ``current_platform.is_cuda()`` and a
try. The audit must not fail an install that serves fine because an optional extension carries
kernels only for another GPU family.

How each extension is judged, with ``ast`` only (nothing is imported or run):

- its import sites: ``import vllm.X``, ``from vllm import X``, ``from . import X``,
  ``importlib.import_module("vllm.X")``, and, for a library loaded by file name
  (``torch.ops.load_library(glob('_C_extension*.so'))``), the imports of the module that names it;
- each site's guard: none (unconditional), ``try/except ImportError`` (or a broader except that does
  not re-raise), ``contextlib.suppress(ImportError)``, an ``if`` (arch/platform checks), or a lazy
  import inside a function;
- start-up: the modules a CUDA server imports at start (``STARTUP_ROOTS``) and, transitively, what
  they import unconditionally at module level.

An extension is **required** when a start-up module imports it (or its loader) unconditionally;
otherwise it is **optional**, with the guard that makes it so and what the user loses where the
code says it (comments and docstrings at the site, the flag the except sets, the message it logs,
the functions that call its ``torch.ops`` namespace). An extension with no import site found is
judged required: nothing proves vLLM runs without it.

Reading as little as that answer needs (a first audit of a wheel must not cost more than its kernel scan):
one pass over every module's bytes (vllm_forge/audit/import_scan.py: its import statements, unparsed) finds which
modules may import an extension and what each module may import at start; `ast` then parses only the
top-level statements that pass cannot classify (a ``try``, a ``class``, an ``else``...), and a whole module
only where a statement cannot be cut out. A plain top-level import is unconditional, one provably inside a
function is lazy, one in the first block of a top-level ``if`` is guarded; the answer is the one parsing
every module gives (tests/unit/test_vllm_extensions_scan.py holds it to that). A module this Python cannot
parse as a whole is read statement by statement.

    python -m vllm_forge.audit.vllm_extensions vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl [--json]
    python -m vllm_forge.audit.vllm_extensions /path/to/site-packages/vllm
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import gc
import hashlib
import io
import json
import mmap
import os
import pickle
import re
import struct
import sys
import threading
import tokenize
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from vllm_forge.audit.import_scan import ImportScan, Unsure, resolve
from vllm_forge.audit.zip_directory import read_members
from vllm_forge.core.errors import ForgeError, run_main

try:  # ISA-L inflates about twice as fast as zlib (python-isal, in requirements.txt); the in-image audit has zlib
    from isal.isal_zlib import decompress as _inflate
    from isal.isal_zlib import error as _InflateError
except ImportError:  # pragma: no cover - depends on the environment
    from zlib import decompress as _inflate
    from zlib import error as _InflateError

PACKAGE = "vllm"
# What `vllm serve` / the OpenAI server imports on a CUDA host before it answers /health. The platform
# and the worker are loaded by name (strings), which no import statement shows, hence listed here.
STARTUP_ROOTS = (
    "vllm",
    "vllm.platforms",
    "vllm.platforms.cuda",
    "vllm.entrypoints.openai.api_server",
    "vllm.v1.engine.core",
    "vllm.v1.worker.gpu_worker",
    "vllm.v1.worker.gpu_model_runner",
)
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException", "OSError"}
_EXT_SUFFIX = re.compile(r"(\.abi3|\.cpython-[^.]+|\.cp\d+[^.]*)?\.so$")


@dataclass
class ImportSite:
    module: str  # the importing module, vllm.platforms.cuda
    path: str  # vllm/platforms/cuda.py
    line: int
    guard: str = ""  # "" = unconditional; else what makes it optional
    lazy: str = ""  # the enclosing function, for an import inside one
    says: list[str] = field(default_factory=list)  # what the code says at the site (comments, flags, logs)
    via: str = ""  # the loader module, for a library loaded by file name

    @property
    def unconditional(self) -> bool:
        return not self.guard and not self.lazy

    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def describe(self) -> str:
        how = []
        if self.via:
            how.append(f"loaded by {self.via}")
        if self.lazy:
            how.append(f"lazy, in {self.lazy}()")
        if self.guard:
            how.append(self.guard)
        return f"{self.where()} ({', '.join(how) or 'unconditional'})"


@dataclass
class Extension:
    module: str  # vllm._qutlass_C
    path: str  # vllm/_qutlass_C.abi3.so (in the wheel / under the directory holding vllm/)
    required: bool
    reason: str  # one line: why required / why optional
    sites: list[ImportSite] = field(default_factory=list)
    loses: list[str] = field(default_factory=list)  # what the user loses without it, where the code says

    def to_dict(self) -> dict:
        return {"module": self.module, "path": self.path, "required": self.required, "reason": self.reason,
                "loses": list(self.loses), "sites": [asdict(s) for s in self.sites]}


@dataclass
class PackageReport:
    source: str
    version: str
    extensions: list[Extension]

    def by_path(self) -> dict[str, Extension]:
        return {e.path: e for e in self.extensions}

    def to_dict(self) -> dict:
        return {"source": self.source, "version": self.version, "extensions": [e.to_dict() for e in self.extensions]}


# ---- reading a package: a wheel (only its .py members are inflated) or a directory ------------------


class _Sources:
    """The package's file names and, on demand, its Python files: ``data`` (bytes, not kept) for the one pass
    over every module, ``text`` (decoded, kept) for the few that are parsed."""

    def __init__(self, names: list[str], read, universal_newlines: bool = False):
        self.names = names
        self._read = read  # name -> bytes
        self._universal = universal_newlines  # decode as a file opened in text mode would
        self._texts: dict[str, str] = {}
        self.py = {n for n in names if n.endswith(".py")}

    def data(self, name: str) -> bytes:
        return self._read(name)

    def text(self, name: str) -> str:
        if name not in self._texts:
            text = self.data(name).decode("utf-8", errors="replace")
            self._texts[name] = text.replace("\r\n", "\n").replace("\r", "\n") if self._universal else text
        return self._texts[name]

    def each(self, modules: dict[str, str]):
        """(module, name, bytes) for each of ``modules`` ({module: name}), in the order reading is cheapest."""
        for module, name in modules.items():
            yield module, name, self.data(name)

    def close(self) -> None:
        pass


_WHEEL_SUFFIXES = (b".py", b".so", b".dist-info/METADATA")  # what the analysis reads or names, nothing else
_WHEEL_NAME_SUFFIXES = tuple(suffix.decode() for suffix in _WHEEL_SUFFIXES)


def _read_from_wheel(name: str) -> bool:
    return name.endswith(_WHEEL_NAME_SUFFIXES)


class _WheelSources(_Sources):
    """A wheel's members, each inflated straight from the archive (one open file, read in archive order)."""

    def __init__(self, path: Path):
        self._path = path
        self._zip: zipfile.ZipFile | None = None  # zipfile's own reader: an unusual archive, an unusual member
        try:
            members = read_members(path, _read_from_wheel, quick=lambda raw: raw.endswith(_WHEEL_SUFFIXES))
            if members is None:
                members = [i for i in self._zipfile().infolist() if not i.is_dir() and _read_from_wheel(i.filename)]
            self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
            # members read as slices of a map of the file: thousands of small reads, no seek and read calls each
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except (zipfile.BadZipFile, OSError, ValueError, struct.error, UnicodeDecodeError) as err:
            self.close()
            raise ForgeError(f"{path} is not a readable wheel ({err})", "re-download or rebuild it") from None
        self._infos = {i.filename: i for i in members}
        super().__init__(list(self._infos), self._member)

    def _zipfile(self) -> zipfile.ZipFile:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self._path)
        return self._zip

    def _member(self, name: str) -> bytes:
        info = self._infos[name]
        try:
            if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                return self._zipfile().read(info)  # encrypted or another method: zipfile's reader (and its errors)
            at = info.header_offset
            header = self._map[at:at + 30]
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile(f"no local header for {name}")
            at += 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
            raw = self._map[at:at + info.compress_size]
            if len(raw) < info.compress_size:
                raise zipfile.BadZipFile(f"{name} is cut short")
            return raw if info.compress_type == zipfile.ZIP_STORED else _inflate(raw, -15)
        except (zipfile.BadZipFile, zlib.error, _InflateError, OSError, NotImplementedError, RuntimeError) as err:
            raise ForgeError(f"{self._path} is not a readable wheel ({name}: {err})",
                             "re-download or rebuild it") from None

    def each(self, modules: dict[str, str]):
        for module, name in sorted(modules.items(), key=lambda item: self._infos[item[1]].header_offset):
            yield module, name, self.data(name)

    def version(self) -> str:
        meta = [n for n in self.names if n.endswith(".dist-info/METADATA")]
        if meta:
            found = re.search(r"^Version:\s*(\S+)", self.data(meta[0]).decode(errors="replace"), re.M)
            return found.group(1) if found else ""
        return ""

    def close(self) -> None:
        for handle in (getattr(self, "_map", None), getattr(self, "_file", None), self._zip):
            if handle is not None:
                handle.close()


def _dir_sources(root: Path) -> _Sources:
    """``root`` holds ``vllm/``; names are relative to it, as in a wheel."""
    base = root / PACKAGE
    names = [p.relative_to(root).as_posix() for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return _Sources(names, lambda n: (root / n).read_bytes(), universal_newlines=True)


def package_root(path: Path) -> tuple[Path, str] | None:
    """(directory holding vllm/, the prefix audit paths under ``path`` carry) for a vLLM install, else None."""
    if (path / PACKAGE / "__init__.py").is_file():
        return path, f"{PACKAGE}/"
    if path.name == PACKAGE and (path / "__init__.py").is_file():
        return path.parent, ""
    return None


def _dir_version(root: Path) -> str:
    for meta in sorted(root.glob(f"{PACKAGE}-*.dist-info/METADATA")):
        found = re.search(r"^Version:\s*(\S+)", meta.read_text(errors="replace"), re.M)
        if found:
            return found.group(1)
    version_file = root / PACKAGE / "_version.py"
    if version_file.is_file():
        found = re.search(r"""(?:__version__|version)\s*(?::\s*str\s*)?=\s*['"]([^'"]+)""", version_file.read_text())
        if found:
            return found.group(1)
    return ""


# ---- module names and import statements --------------------------------------------------------------


def module_of(name: str) -> str:
    """``vllm/platforms/cuda.py`` -> ``vllm.platforms.cuda``; ``vllm/_C.abi3.so`` -> ``vllm._C``."""
    parts = name.split("/")
    if "" in parts or "." in parts:  # what PurePosixPath drops (a plain member name splits the same, faster)
        parts = list(PurePosixPath(name).parts)
    last = parts[-1]
    if last == "__init__.py":
        parts = parts[:-1]
    elif last.endswith(".py"):
        parts[-1] = last[:-3]
    else:
        parts[-1] = _EXT_SUFFIX.sub("", last)
    return ".".join(parts)


def is_extension(name: str) -> bool:
    return name.startswith(f"{PACKAGE}/") and bool(_EXT_SUFFIX.search(name))


def _imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Every module an import statement (or ``importlib.import_module("literal")``) may load."""
    out: list[str] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            parts = alias.name.split(".")
            out += [".".join(parts[: i + 1]) for i in range(len(parts))]
    elif isinstance(node, ast.ImportFrom):
        base = resolve(module, is_package, node.level, node.module)
        parts = base.split(".")
        out += [".".join(parts[: i + 1]) for i in range(len(parts))]
        out += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    elif isinstance(node, ast.Call) and _call_name(node.func) in ("importlib.import_module", "import_module"):
        if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            name = node.args[0].value
            if name.startswith(".") and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                level = len(name) - len(name.lstrip("."))
                name = resolve(str(node.args[1].value), True, level, name.lstrip(".") or None)
            out.append(name)
    return out


def _call_name(func: ast.AST) -> str:
    try:
        return ast.unparse(func)
    except Exception:  # ast.unparse of odd nodes; the name is only compared
        return ""


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(_call_name(k).split(".")[-1] in _IMPORT_ERRORS for k in kinds)


def _reraises(handler: ast.ExceptHandler) -> bool:
    return any(isinstance(n, ast.Raise) for n in ast.walk(handler))


def _suppresses_import_error(item: ast.withitem) -> bool:
    call = item.context_expr
    return (isinstance(call, ast.Call) and _call_name(call.func).split(".")[-1] == "suppress"
            and any(_call_name(a).split(".")[-1] in _IMPORT_ERRORS for a in call.args))


# ---- walking one module ------------------------------------------------------------------------------


@dataclass
class _Found:
    names: list[str]
    line: int
    guard: str
    lazy: str
    says: list[str]
    guard_lines: tuple[int, ...]  # the try/with/if statements that guard it, for the comments above them


class _ModuleWalker:
    """Import statements of one module, each with its guard (try/suppress/if) and enclosing function."""

    def __init__(self, tree: ast.Module, module: str, is_package: bool, calls: bool = True):
        self.module, self.is_package = module, is_package
        self.calls = calls  # whether an expression may call import_module (else only statements are read)
        self.found: list[_Found] = []
        self.tree = tree

    def run(self) -> list[_Found]:
        self._body(self.tree.body, [], "", [], ())
        return self.found

    def _body(self, body: list[ast.stmt], guard: list[str], lazy: str, says: list[str], at: tuple[int, ...]) -> None:
        for stmt in body:
            self._stmt(stmt, guard, lazy, says, at)

    def _stmt(self, stmt: ast.stmt, guard: list[str], lazy: str, says: list[str], at: tuple[int, ...]) -> None:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(stmt)
            said = [f"{stmt.name}(): {doc.strip().splitlines()[0]}"] if doc else []
            self._body(stmt.body, guard, lazy or stmt.name, says + said, at)
        elif isinstance(stmt, ast.ClassDef):  # a class body runs at import, like the module's
            self._body(stmt.body, guard, lazy, says, at)
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            catching = [h for h in stmt.handlers if _catches_import_error(h) and not _reraises(h)]
            if catching:
                kinds = ", ".join(_call_name(h.type) if h.type else "everything" for h in catching)
                said = [s for h in catching for s in _handler_says(h)]
                self._body(stmt.body, guard + [f"try/except {kinds}"], lazy, says + said, at + (stmt.lineno,))
            else:
                self._body(stmt.body, guard, lazy, says, at)
            for handler in stmt.handlers:
                self._body(handler.body, guard + ["in an except branch"], lazy, says, at)
            self._body(stmt.orelse, guard, lazy, says, at)
            self._body(stmt.finalbody, guard, lazy, says, at)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            if any(_suppresses_import_error(i) for i in stmt.items):
                self._body(stmt.body, guard + [_call_name(stmt.items[0].context_expr)], lazy, says, at + (stmt.lineno,))
            else:
                self._body(stmt.body, guard, lazy, says, at)
        elif isinstance(stmt, ast.If):
            test = _call_name(stmt.test)
            if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                self._body(stmt.orelse, guard, lazy, says, at)  # the body never runs, the else always does
                return
            self._body(stmt.body, guard + [f"if {_short(test)}"], lazy, says, at + (stmt.lineno,))
            self._body(stmt.orelse, guard + [f"if not ({_short(test)})"], lazy, says, at + (stmt.lineno,))
        elif isinstance(stmt, (ast.For, ast.AsyncFor, ast.While)):
            self._body(stmt.body, guard + ["in a loop"] if isinstance(stmt, ast.While) else guard, lazy, says, at)
            self._body(stmt.orelse, guard, lazy, says, at)
        elif isinstance(stmt, getattr(ast, "Match", ())):
            for case in stmt.cases:
                self._body(case.body, guard + ["in a match case"], lazy, says, at)
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            self._found(_imported_names(stmt, self.module, self.is_package), stmt.lineno, guard, lazy, says, at)
        elif self.calls:
            for node in ast.walk(stmt):  # importlib.import_module("vllm.X") in any expression
                if isinstance(node, ast.Call):
                    names = _imported_names(node, self.module, self.is_package)
                    if names:
                        self._found(names, node.lineno, guard, lazy, says, at)

    def _found(self, names, line, guard, lazy, says, at) -> None:
        self.found.append(_Found(names, line, "; ".join(guard), lazy, list(says), at))


def _may_call_import_module(source: str) -> bool:
    """False only when no expression of ``source`` can be an ``import_module`` call: the name is not in it (an
    identifier is NFKC-normalized, so non-ASCII text may spell it otherwise)."""
    return "import_module" in source or not source.isascii()


def _comments_at(source: str, line: int, guard_lines: tuple[int, ...]) -> list[str]:
    """The comment blocks right above each guard of the import, and the comment on its own line (above an
    unguarded import a comment is a section header more often than not)."""
    lines = source.splitlines()
    out = []
    for guard_line in guard_lines:
        index = guard_line - 2
        block: list[str] = []
        while index >= 0 and len(block) < 4 and lines[index].strip().startswith("#"):
            block.insert(0, _clean_comment(lines[index]))
            index -= 1
        if any(block):
            out.append(" ".join(b for b in block if b))
    trailing = _comment_of(lines[line - 1]) if 0 < line <= len(lines) else ""
    if _clean_comment(trailing):
        out.append(_clean_comment(trailing))
    return out


def _comment_of(line: str) -> str:
    """The comment on one source line (tokenized alone: a '#' inside a string is no comment)."""
    if "#" not in line:
        return ""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(line.strip() + "\n").readline):
            if tok.type == tokenize.COMMENT:
                return tok.string
    except (tokenize.TokenError, IndentationError, SyntaxError):  # an unclosed bracket: read the tail
        return "#" + line.rsplit("#", 1)[1]
    return ""


_PRAGMA = re.compile(r"\b(noqa|type:\s*ignore|pyright:\s*ignore|isort:\s*\w+)(\[[^\]]*\])?"
                     r"(:\s*[A-Z]+\d+(,\s*[A-Z]+\d+)*)?")


def _clean_comment(text: str) -> str:
    text = text.strip().lstrip("#").strip()
    text = _PRAGMA.sub("", text)
    text = text.strip(" ;,#").strip()
    return text if len(text) > 3 and not text.lower().startswith(("fmt:", "pylint:")) else ""


def _handler_says(handler: ast.ExceptHandler) -> list[str]:
    """What an except branch tells: the flag it sets to False/None, the message it logs or warns."""
    out = []
    flags: dict[str, list[str]] = {}
    for node in ast.walk(handler):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value in (False, None):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    flags.setdefault(str(node.value.value), []).append(target.id)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr.startswith(
                ("warning", "info", "debug", "warn", "error")):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                out.append(f"logs {node.args[0].value.strip()!r}")
    return [f"sets {', '.join(names)} = {value}" for value, names in flags.items()] + out


def _short(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dedupe(items: list[str]) -> list[str]:
    seen, out = set(), []
    for item in items:
        if item and item not in seen:
            seen.add(item)
            out.append(item)
    return out


# ---- the analysis ------------------------------------------------------------------------------------


class _Package:
    """One vLLM's Python, read as little as the answer needs: one pass over every module's bytes (`_index`: its
    import statements, which ``torch.ops`` namespaces it names), then `ast` only for the top-level statements
    that import an extension or call its ops, and those of start-up modules the scan cannot classify."""

    def __init__(self, sources: _Sources):
        self.sources = sources
        self.modules = {module_of(n): n for n in sources.py if n.startswith(f"{PACKAGE}/")}
        self.extension_files = sorted(n for n in sources.names if is_extension(n))
        self.extensions = {module_of(n) for n in self.extension_files}
        self._unsure: list[str] = []  # modules the scan could not read: parsed whenever asked about
        self._walked: dict[str, list[_Found]] = {}
        self._sites: dict[str, list[ImportSite]] = {}
        self._indexed = False
        self._imports: dict[str, list[tuple[int, list[str]]] | None] = {}  # module -> its scan (None: unsure)
        self._importers: dict[str, set[str]] = {}  # name -> modules whose imports may load it
        self._ops: dict[str, set[str]] = {}  # "torch.ops.ns." -> modules that name it
        self._startup: set[str] = set()
        self._edge_sets: dict[str, set[str]] = {}

    def tree(self, module: str) -> ast.Module | None:
        try:
            return ast.parse(self.sources.text(self.modules[module]))
        except (SyntaxError, ValueError):  # a file this Python cannot parse imports nothing we can see
            return None

    def walk(self, module: str) -> list[_Found]:
        if module not in self._walked:
            tree = self.tree(module)
            is_package = self.modules[module].endswith("__init__.py")
            calls = _may_call_import_module(self.sources.text(self.modules[module]))
            self._walked[module] = _ModuleWalker(tree, module, is_package, calls).run() if tree else []
        return self._walked[module]

    def _index(self) -> None:
        """Every module's import statements (a superset, `ImportScan`) and ``torch.ops`` needles, one read each:
        the start-up modules first, breadth first from STARTUP_ROOTS (their edges are taken while their bytes are
        at hand), then the others in archive order."""
        if self._indexed:
            return
        self._indexed = True
        wanted = set(self.modules) | self.extensions
        self._wanted = (wanted, {n.rpartition(".")[0] for n in wanted}, {})  # names, packages, memo
        self._namespaces = {ns for ext in self.extensions for ns in _op_namespaces(ext)}
        # what `importers` is asked about: the extensions, and the modules in a folder with one (a loader by
        # file name, `sites_of`; the folder's own __init__ included)
        folders = {n.rpartition("/")[0] for n in self.extension_files}
        self._asked = self.extensions | {m for m, name in self.modules.items() if name.rpartition("/")[0] in folders}
        startup = {m for m in STARTUP_ROOTS if m in self.modules}
        todo = collections.deque(sorted(startup))
        while todo:
            module = todo.popleft()
            name = self.modules[module]
            data = self.sources.data(name)
            self._read(module, name, data)
            for imported in self._edges(module, self._scan_of(module, name, data)):
                if imported not in startup:
                    startup.add(imported)
                    todo.append(imported)
        self._startup = startup
        for module, name, data in self.sources.each({m: n for m, n in self.modules.items() if m not in startup}):
            self._read(module, name, data)

    def _read(self, module: str, name: str, data: bytes) -> None:
        """Index one module: the ``torch.ops`` namespaces it names, its import statements, whom it may load."""
        if b"torch.ops." in data:
            for namespace in _ops_named(data, self._namespaces):
                self._ops.setdefault(f"torch.ops.{namespace}.", set()).add(module)
        wanted, packages, memo = self._wanted
        scan = ImportScan(data, module, name.endswith("__init__.py"))
        try:
            loaded = scan.run(wanted, packages, memo)
        except Unsure:
            self._imports[module] = None
            self._unsure.append(module)
            return
        self._imports[module] = scan.found
        for imported in loaded & self._asked:
            self._importers.setdefault(imported, set()).add(module)

    def importers(self, module: str) -> list[str]:
        """The modules whose import statements may load ``module`` (a superset: the walker decides), sorted;
        ``module`` is an extension or a module beside one."""
        self._index()
        return sorted(self._importers.get(module, set()).union(self._unsure))

    def _scan(self, module: str) -> ImportScan | None:
        """The module's scan (its statements from the index, its bytes read again), None when unsure."""
        self._index()
        name = self.modules[module]
        return self._scan_of(module, name, self.sources.data(name)) if self._imports.get(module) is not None else None

    def _scan_of(self, module: str, name: str, data: bytes) -> ImportScan | None:
        found = self._imports.get(module)
        if found is None:
            return None
        scan = ImportScan(data, module, name.endswith("__init__.py"))
        scan.found = found
        return scan

    def finds(self, module: str, scan: ImportScan | None, offsets: list[int]) -> list[_Found]:
        """The walker's finds in the top-level statements holding ``offsets``, each statement parsed alone (its
        line numbers kept); the whole module's when a statement cannot be cut out or does not parse alone."""
        if scan is None or module in self._walked:
            return self.walk(module)
        spans = []
        for at in offsets:
            span = scan.top_level(at)
            if span is None:
                return self.walk(module)
            if span not in spans:
                spans.append(span)
        out: list[_Found] = []
        for start, end in sorted(spans):
            text = scan.data[start:end].decode("utf-8", errors="replace")
            try:  # blank lines first: the statement's line numbers are the module's
                tree = ast.parse("\n" * scan.data.count(b"\n", 0, start) + text)
            except (SyntaxError, ValueError):
                return self.walk(module)
            out += _ModuleWalker(tree, module, scan.is_package, _may_call_import_module(text)).run()
        return out

    def edges(self, module: str) -> set[str]:
        self._index()
        return self._edges(module, None if module in self._edge_sets else self._scan(module))

    def _edges(self, module: str, scan: ImportScan | None) -> set[str]:
        """The package modules ``module`` imports unconditionally at module level (the walker's answer): a plain
        top-level import as the scan found it, one provably inside a function never, any other from its
        statement parsed alone. Kept: `_index` asks for every start-up module's."""
        if module not in self._edge_sets:
            self._edge_sets[module] = self._edges_now(module, scan)
        return self._edge_sets[module]

    def _edges_now(self, module: str, scan: ImportScan | None) -> set[str]:
        if scan is None:
            names = {n for f in self.walk(module) if not f.guard and not f.lazy for n in f.names}
        else:
            names, parse = set(), []
            for at, imported in scan.found:
                if scan.at_top(at):
                    names.update(imported)
                elif not scan.in_function(at) and not scan.in_branch(at) and scan.in_string(at) is not True:
                    parse.append(at)  # (an import in a docstring's example is no statement)
            if parse:
                names.update(n for f in self.finds(module, scan, parse) if not f.guard and not f.lazy for n in f.names)
        return names & self.modules.keys()

    def at_startup(self, module: str) -> bool:
        """Whether a CUDA server loads ``module`` at start: the roots and, transitively, what they import
        unconditionally at module level (found by `_index`)."""
        self._index()
        return module in self._startup

    def sites_of(self, ext_module: str, ext_file: str) -> list[ImportSite]:
        """Where ``ext_module`` is imported; for a library loaded by file name, where its loader is."""
        sites = self._direct_sites(ext_module)
        if sites:
            return sites
        stem = _EXT_SUFFIX.sub("", PurePosixPath(ext_file).name)
        folder = str(PurePosixPath(ext_file).parent)
        for name in sorted(self.sources.py):  # a loader beside it that names the file: torch.ops.load_library
            if str(PurePosixPath(name).parent) == folder and stem in self.sources.text(name):
                loader = module_of(name)
                if loader == ext_module:
                    continue
                for site in self._direct_sites(loader):
                    site.via = loader
                    sites.append(site)
                if sites:
                    return sites
        return sites

    def _direct_sites(self, ext_module: str) -> list[ImportSite]:
        if ext_module in self._sites:
            return [dataclasses.replace(s) for s in self._sites[ext_module]]
        parent, _, short = ext_module.rpartition(".")
        word = re.compile(rf"\b{re.escape(short)}\b")
        parent_dir = parent.replace(".", "/") + "/"
        out = []
        for module in self.importers(ext_module):
            if module == ext_module:
                continue
            name = self.modules[module]
            text = self.sources.text(name)
            # substring tests first (fast); `_C` alone is in every file that says torch._C
            if short not in text or (parent != PACKAGE and not name.startswith(parent_dir) and parent not in text):
                continue
            if not word.search(text):
                continue
            scan = self._scan(module)
            offsets = [at for at, names in scan.found if ext_module in names] if scan else []
            for found in self.finds(module, scan, offsets):
                if ext_module in found.names:
                    says = found.says + _comments_at(text, found.line, found.guard_lines)
                    out.append(ImportSite(module, name, found.line, found.guard, found.lazy, _dedupe(says)))
        self._sites[ext_module] = out
        return [dataclasses.replace(s) for s in out]

    def _tree_around(self, module: str, text: str, lines: set[int]) -> ast.Module | None:
        """A module of only the top-level statements holding ``lines`` (``ast.walk`` meets their nodes in the
        whole module's order), or the whole module's tree when they cannot be cut out."""
        scan = self._scan(module)
        if scan is None or any(c in text for c in _OTHER_LINE_BREAKS):  # str.splitlines counts other breaks
            return self.tree(module)
        data = scan.data
        starts = [0] + [found.end() for found in re.finditer(b"\n", data)]
        spans = []
        for line in sorted(lines):
            span = scan.top_level(starts[line - 1]) if line <= len(starts) else None
            if span is None:
                return self.tree(module)
            if span not in spans:
                spans.append(span)
        body: list[ast.stmt] = []
        for start, end in spans:
            try:
                body += ast.parse("\n" * data.count(b"\n", 0, start) + data[start:end].decode("utf-8", "replace")).body
            except (SyntaxError, ValueError):
                return self.tree(module)
        return ast.Module(body=body, type_ignores=[])

    def users_of_ops(self, namespace: str, limit: int = 6) -> list[str]:
        """``path: f, g`` for the functions that call ``torch.ops.<namespace>.*`` (what needs the kernels)."""
        needle = f"torch.ops.{namespace}."
        out = []
        self._index()
        for module in sorted(self._ops.get(needle, ())):
            name = self.modules[module]
            text = self.sources.text(name)
            if needle not in text:
                continue
            hits = {i for i, line in enumerate(text.splitlines(), 1) if needle in line}
            tree = self._tree_around(module, text, hits)
            if tree is None:
                continue
            funcs = _dedupe([f.name for f in _function_defs(tree)
                             if any(f.lineno <= h <= (f.end_lineno or f.lineno) for h in hits)])
            public = [f for f in funcs if not f.startswith("_")] or funcs
            shown = ", ".join(public[:limit]) + (f" and {len(public) - limit} more" if len(public) > limit else "")
            out.append(f"{name}: {shown or 'module level'}")
            if len(out) >= 3:
                break
        return out


_OTHER_LINE_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_OPS = re.compile(rb"torch\.ops\.")
_OPS_NAMESPACE = re.compile(rb"(\w+)\.")


def _ops_named(data: bytes, namespaces: set[str]) -> set[str]:
    """Those of ``namespaces`` whose ``torch.ops.<namespace>.`` is in ``data`` (one pass over its ``torch.ops.``)."""
    found = {m.group(1).decode() for at in _OPS.finditer(data) if (m := _OPS_NAMESPACE.match(data, at.end()))}
    odd = {ns for ns in namespaces if not ns.isascii() or not ns.isidentifier()}  # \w cannot tell: look it up
    return (found & namespaces) | {ns for ns in odd if f"torch.ops.{ns}.".encode() in data}


def _function_defs(tree: ast.AST):
    """The function definitions of ``tree`` in ``ast.walk``'s order (breadth first), visiting statements only: an
    expression holds no ``def`` (a lambda is no FunctionDef), and leaving it out keeps the order of the rest."""
    queue = collections.deque([tree])
    while queue:
        node = queue.popleft()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, list):
                queue.extend(v for v in value if isinstance(v, (ast.stmt, ast.excepthandler, ast.match_case)))


def _op_namespaces(ext_module: str) -> list[str]:
    """The ``torch.ops`` namespaces an extension registers, as far as its name tells (top-level ones only:
    ``vllm.third_party.deep_gemm._C`` registers ``deep_gemm``, not vLLM's ``_C``)."""
    parent, _, short = ext_module.rpartition(".")
    if parent != PACKAGE and short == "_C":
        return []
    names = [short]
    if short.endswith("_stable_libtorch"):
        names.append(short[: -len("_stable_libtorch")])
    return names


def analyze_sources(sources: _Sources, source: str, version: str = "") -> PackageReport:
    package = _Package(sources)
    extensions = []
    for name in package.extension_files:
        ext_module = module_of(name)
        sites = package.sites_of(ext_module, name)
        at_start = [s for s in sites if s.unconditional and package.at_startup(s.module)]
        if not sites:
            required, reason = True, "no import of it found in the package's Python: judged required"
        elif at_start:
            site = at_start[0]
            required = True
            reason = f"imported unconditionally at start-up ({site.where()}" + (
                f", via {site.via}" if site.via else "") + ")"
        else:
            required = False
            # an unconditional site first, then one in a start-up module (asked in order: each answer may parse)
            shown = next((s for s in sites if s.unconditional), None) or next(
                (s for s in sites if package.at_startup(s.module)), sites[0])
            if shown.unconditional:
                loaded = f", loaded by {shown.via}" if shown.via else ""
                reason = (f"only imported by {shown.module} ({shown.where()}{loaded}), which start-up does not "
                          "import unconditionally")
            else:
                reason = "guarded: " + shown.describe()
        loses: list[str] = []
        if not required:
            for site in sites:
                loses += site.says
            for namespace in _op_namespaces(ext_module):
                loses += [f"kernels used by {u}" for u in package.users_of_ops(namespace)]
        extensions.append(Extension(ext_module, name, required, reason, sites, _dedupe(loses)[:8]))
    return PackageReport(source, version, extensions)


def analyze(path: Path | str, *, cache: bool = True) -> PackageReport:
    """The extensions of a vLLM wheel, a vLLM package directory, or a directory that holds ``vllm/``.

    The answer is also kept in the vllm-forge cache (``$VLLM_FORGE_CACHE``, default ~/.cache/vllm-forge,
    under vllm-extensions/), keyed by the files' names, sizes and times and by this module's own source.
    One that `analyze_ahead` started for ``path`` is waited for and used.
    """
    path = Path(path)
    with _AHEAD_LOCK:
        ahead = _AHEAD.pop(_ahead_key(path), None) if cache else None
    if ahead is not None:
        thread, outcome = ahead
        thread.join()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return dataclasses.replace(outcome[0], source=str(path))
    return _analyze(path, cache)


def _analyze(path: Path, cache: bool) -> PackageReport:
    if not path.exists():
        raise ForgeError(f"{path} does not exist", "pass a vLLM wheel or the directory of an installed vllm")
    if path.is_file():
        key = _wheel_key(path)
        root = None
    else:
        found = package_root(path)
        if found is None:
            raise ForgeError(f"{path} is not a vLLM install (no vllm/__init__.py in or under it)",
                             "pass site-packages/vllm, the directory holding it, or a vLLM wheel")
        root = found[0]
        key = "\n".join(f"{p}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in sorted((root / PACKAGE).rglob("*"))
                        if p.suffix in (".py", ".so") and p.is_file())
    cached = _cache_file(key) if cache else None
    found_cached = _read_cache(cached, str(path)) if cached else None
    if found_cached is not None:
        return found_cached
    if root is None:
        sources = _WheelSources(path)
        try:
            if not any(n.startswith(f"{PACKAGE}/") for n in sources.names):
                raise ForgeError(f"{path} holds no {PACKAGE}/ package", "pass a vLLM wheel")
            report = analyze_sources(sources, str(path), sources.version())
        finally:
            sources.close()
    else:
        report = analyze_sources(_dir_sources(root), str(path), _dir_version(root))
    if cached:
        _write_cache(cached, report)
    return report


# ---- an analysis started early ------------------------------------------------------------------------
# The audit reads a wheel's kernels first (threads that inflate outside the GIL, while its main thread parses
# the fat binaries) and asks which extensions are optional afterwards. `analyze_ahead` starts the analysis
# beside that read; `analyze` waits for it and takes its answer, or its error, as its own.
#
# Where it can, the analysis runs in a forked child process: it is pure Python, and in a thread it holds the
# GIL against the kernel scan's own Python, so each waited for the other (a first audit of vLLM 0.34.0 took
# about its CPU seconds on two cores). The child sends its report back pickled through a pipe; a child that
# fails for any reason (its error included, so that the error raised is exactly the one an analysis here
# raises) sends nothing, and the analysis then runs again in this process. A thread reads the pipe and reaps
# the child, so none outlives the read.

_AHEAD: dict[str, tuple[threading.Thread, list]] = {}  # resolved path -> (thread, [report or error])
_AHEAD_LOCK = threading.Lock()
_CHILDREN: set[int] = set()  # pids of analysing children not reaped yet
CHILDREN_DONE = threading.Event()  # set while no analysing child runs (the audit's inflating threads wait on it)
CHILDREN_DONE.set()


def _ahead_key(path: Path) -> str:
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return str(path)


def analyze_ahead(path: Path | str) -> None:
    """Start `analyze` for the vLLM wheel or install at ``path`` (and each ``vllm-*.whl`` directly in a
    directory ``path``) in the background (a child process, or a thread where forking is unsafe); a later
    ``analyze`` of it waits for that one. Never raises: whatever goes wrong is raised by that ``analyze``."""
    path = Path(path)
    try:
        if path.is_file():
            targets = [path] if path.suffix == ".whl" else []
        elif path.is_dir():
            targets = ([path] if package_root(path) else []) + sorted(path.glob(f"{PACKAGE}-*.whl"))
        else:
            targets = []
    except OSError:
        return
    fork = may_fork()  # asked once, before this starts any thread of its own
    started = []
    for target in targets:
        key = _ahead_key(target)
        with _AHEAD_LOCK:
            if key in _AHEAD or any(key == k for k, _, _ in started):
                continue
        if _cached_wheel(target):
            continue  # `analyze` reads the same entry in a few milliseconds: nothing to start
        outcome: list = []
        thread = (_forked(target, outcome) if fork else None) or threading.Thread(
            target=_analyze_into, args=(target, outcome), daemon=True, name=f"vllm-extensions {target.name}")
        started.append((key, thread, outcome))
    for key, thread, outcome in started:  # after every fork: a fork copies no thread, nor a lock one holds
        thread.start()
        with _AHEAD_LOCK:
            _AHEAD[key] = (thread, outcome)


def _cached_wheel(path: Path) -> bool:
    """Whether the cache answers for the wheel at ``path`` (a directory's key stats all its files: not asked)."""
    try:
        return path.is_file() and _read_cache(_cache_file(_wheel_key(path)), str(path)) is not None
    except (OSError, ValueError):
        return False


def analyses_in_children() -> int:
    """How many analyses started ahead are running in child processes now (each keeps a core busy)."""
    with _AHEAD_LOCK:
        return len(_CHILDREN)


def may_fork() -> bool:
    """Whether the analysis may run in a forked child: on Linux, with no other thread running (a fork copies
    the locks other threads hold, and Python warns of it)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and threading.active_count() == 1


def _forked(path: Path, outcome: list) -> threading.Thread | None:
    """Fork a child that analyses ``path``; the (unstarted) thread that collects its answer into ``outcome``.
    None where no child could be made."""
    try:
        read_fd, write_fd = os.pipe()
    except OSError:
        return None
    try:
        pid = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        return None
    if pid == 0:  # pragma: no cover - the child (its work is measured by the tests of its answer)
        _child(path, read_fd, write_fd)
    os.close(write_fd)
    with _AHEAD_LOCK:
        _CHILDREN.add(pid)
        CHILDREN_DONE.clear()
    return threading.Thread(target=_collect, args=(path, pid, read_fd, outcome), daemon=True,
                            name=f"vllm-extensions {path.name}")


def _child(path: Path, read_fd: int, write_fd: int) -> None:  # pragma: no cover - runs in the child
    """Analyse, write the pickled report (nothing when it failed), and leave without the parent's exit
    handlers or its buffered output."""
    status = 1
    try:
        os.close(read_fd)
        gc.disable()  # a short-lived process: collecting would only copy the parent's pages it shares (COW)
        try:
            payload = pickle.dumps(_analyze(path, True))
        except BaseException:  # the parent analyses again and raises this very error itself
            payload = b""
        with open(write_fd, "wb") as pipe:
            pipe.write(payload)
        status = 0
    finally:
        os._exit(status)


def _collect(path: Path, pid: int, read_fd: int, outcome: list) -> None:
    try:
        with open(read_fd, "rb") as pipe:
            payload = pipe.read()
    except OSError:
        payload = b""
    finally:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # reaped already (a SIGCHLD handler of the embedding program)
            pass
        with _AHEAD_LOCK:
            _CHILDREN.discard(pid)
            if not _CHILDREN:
                CHILDREN_DONE.set()
    try:
        report = pickle.loads(payload) if payload else None
    except Exception:  # noqa: BLE001 - a torn answer: analyse here instead
        report = None
    if isinstance(report, PackageReport):
        outcome.append(report)
    else:
        _analyze_into(path, outcome)


def _analyze_into(path: Path, outcome: list) -> None:
    try:
        outcome.append(_analyze(path, True))
    except BaseException as err:  # handed to the `analyze` that waits for it
        outcome.append(err)


# ---- the cache: a speed-up only -----------------------------------------------------------------------
# One JSON file per analysed wheel, install or image under $VLLM_FORGE_CACHE/vllm-extensions/ (default
# ~/.cache/vllm-forge), named by a digest of what it answers for and of this module's own source. An entry
# carries that digest and a checksum of its report: a torn, edited or misplaced entry is ignored and the
# analysis runs again, and a directory that cannot be written costs time only. The least recently used
# entries go once the directory holds more than CACHE_LIMIT bytes; `cache_usage` and `clear_cache` are for
# cleaning commands.

CACHE_LIMIT = 8 << 20  # bytes; an entry is 5-30 kB
CACHE_DIR = "vllm-extensions"


@dataclass(frozen=True)
class CacheUsage:
    path: Path
    entries: int
    bytes: int
    limit: int = CACHE_LIMIT

    def describe(self) -> str:
        size = f"{self.bytes / 2**20:.1f} MiB" if self.bytes >= 2**20 else f"{self.bytes / 1024:.0f} kB"
        return f"{self.path}: {self.entries} vLLM import analyses, {size} (kept under {self.limit >> 20} MiB)"


def cache_dir() -> Path:
    return Path(os.environ.get("VLLM_FORGE_CACHE", "~/.cache/vllm-forge")).expanduser() / CACHE_DIR


def _cache_files(directory: Path) -> list[tuple[float, int, Path]]:
    """(mtime, size, path) of every file this cache wrote there: entries and any torn writes."""
    out = []
    try:
        for entry in os.scandir(directory):
            if entry.is_file(follow_symlinks=False) and (entry.name.endswith(".json") or ".json." in entry.name):
                stat = entry.stat(follow_symlinks=False)
                out.append((stat.st_mtime, stat.st_size, Path(entry.path)))
    except OSError:
        return []
    return sorted(out)


def cache_usage() -> CacheUsage:
    """Where the import analyses are kept, how many and how many bytes (for `nox -s clean` and the like)."""
    files = _cache_files(cache_dir())
    return CacheUsage(cache_dir(), sum(1 for *_, p in files if p.name.endswith(".json")),
                      sum(size for _, size, _ in files))


def clear_cache() -> int:
    """Remove every entry (and torn write) of this cache; the bytes freed."""
    freed = 0
    for _, size, path in _cache_files(cache_dir()):
        try:
            path.unlink()
            freed += size
        except OSError:
            pass
    return freed


def _cache_file(key: str) -> Path:
    digest = hashlib.sha256(Path(__file__).read_bytes() + b"\0" + key.encode()).hexdigest()[:32]
    return cache_dir() / f"{digest}.json"


def _checksum(report: dict) -> str:
    return hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()


def _read_cache(cached: Path, source: str) -> PackageReport | None:
    """The report in ``cached`` when it is whole and is the one its name promises, else None."""
    try:
        entry = json.loads(cached.read_text())
        report = entry["report"]
        if entry["entry"] != cached.stem or entry["sha256"] != _checksum(report):
            return None
        found = _report_from_dict(report, source)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return None  # torn, edited, from another version: analyse again
    try:
        os.utime(cached)  # recently used: the last to go
    except OSError:
        pass
    return found


def _write_cache(cached: Path, report: PackageReport) -> None:
    body = report.to_dict()
    entry = {"entry": cached.stem, "sha256": _checksum(body), "report": body}
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.{threading.get_ident()}")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(entry))
        os.replace(partial, cached)
    except OSError:  # a read-only cache costs time, not correctness
        try:
            partial.unlink()
        except OSError:
            pass
        return
    _prune(cached.parent, keep=cached)


def _prune(directory: Path, keep: Path) -> None:
    """Drop the least recently used entries while the directory holds more than CACHE_LIMIT bytes."""
    files = _cache_files(directory)
    total = sum(size for _, size, _ in files)
    for _, size, path in files:
        if total <= CACHE_LIMIT:
            break
        if path == keep:
            continue
        try:
            path.unlink()
            total -= size
        except OSError:
            pass


def _wheel_key(path: Path) -> str:
    """A wheel's size and a digest of its central directory (every member's name, CRC and sizes): the same
    wherever the wheel lies (build-wheel audits it in its staging directory, then moves it into dist/).
    A file whose directory cannot be found is keyed by its path, size and time instead."""
    try:
        with open(path, "rb") as fp:
            size = fp.seek(0, os.SEEK_END)
            tail = min(size, 65536 + 22)
            fp.seek(size - tail)
            end = fp.read(tail)
            at = end.rfind(b"PK\x05\x06")
            if at >= 0 and len(end) - at >= 22:
                length, offset = struct.unpack_from("<II", end, at + 12)
                if 0xFFFFFFFF in (length, offset) and at >= 20 and end[at - 20:at - 16] == b"PK\x06\x07":
                    fp.seek(struct.unpack_from("<Q", end, at - 12)[0])  # the ZIP64 end record
                    record = fp.read(56)
                    if record[:4] == b"PK\x06\x06" and len(record) == 56:
                        length, offset = struct.unpack_from("<QQ", record, 40)
                if length <= size and offset <= size:
                    fp.seek(offset)
                    directory = fp.read(length)
                    if len(directory) == length and directory[:4] in (b"PK\x01\x02", b""):
                        return f"wheel|{size}|{hashlib.sha256(directory).hexdigest()}"
        stat = path.stat()
    except OSError:
        return f"{path}"
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _report_from_dict(data: dict, source: str) -> PackageReport:
    extensions = [Extension(e["module"], e["path"], e["required"], e["reason"],
                            [ImportSite(**s) for s in e["sites"]], list(e["loses"])) for e in data["extensions"]]
    return PackageReport(source, data.get("version", ""), extensions)


def optional_extensions(path: Path | str, audit_paths: list[str]) -> dict[str, Extension]:
    """For the audit: ``{audit path: Extension}`` for each audited file this vLLM can run without.

    ``audit_paths`` are the paths ``vllm_forge/audit/audit.py`` shows for ``path``: relative to a directory
    (``_qutlass_C.abi3.so`` under site-packages/vllm, ``vllm/_qutlass_C.abi3.so`` under
    site-packages), wheel members (``vllm/...``), or ``NAME.whl/vllm/...`` for wheels in a directory.
    Anything that is not a vLLM install or wheel gives ``{}``.
    """
    path = Path(path)
    reports: dict[str, PackageReport] = {}  # audit prefix -> report
    if path.is_file() and path.suffix == ".whl":
        reports[""] = analyze(path)
    elif path.is_dir():
        found = package_root(path)
        if found is not None:
            reports[found[1]] = analyze(path)
        for wheel in {p.split(".whl/", 1)[0] + ".whl" for p in audit_paths if ".whl/" in p}:
            if (path / wheel).is_file() and PurePosixPath(wheel).name.startswith(f"{PACKAGE}-"):
                reports[wheel + "/"] = analyze(path / wheel)
    out: dict[str, Extension] = {}
    for audit_path in audit_paths:
        for prefix, report in reports.items():
            if prefix.endswith(".whl/"):
                if not audit_path.startswith(prefix):
                    continue
                member = audit_path[len(prefix):]
            elif prefix == f"{PACKAGE}/" or prefix == "":
                member = audit_path if path.is_file() or prefix else f"{PACKAGE}/{audit_path}"
            else:
                continue
            ext = report.by_path().get(member)
            if ext is not None and not ext.required:
                out[audit_path] = ext
    return out


# ---- a vLLM inside a Docker image -------------------------------------------------------------------


def image_roots(audit_paths: list[str]) -> list[str]:
    """The directories holding ``vllm/`` in an image, from the audit's absolute paths of its files."""
    roots = {p.split(f"/{PACKAGE}/", 1)[0] for p in audit_paths if p.startswith("/") and f"/{PACKAGE}/" in p}
    return sorted(roots)


def _image_sources(image: str, root: str, docker: str) -> _Sources:
    """``root/vllm``'s Python files, out of a created, never started container (``docker cp`` streams a tar;
    only the .py members are kept)."""
    import subprocess
    import tarfile

    created = subprocess.run([docker, "create", image, "true"], capture_output=True, text=True, timeout=120)
    if created.returncode != 0:
        raise ForgeError(f"`docker create {image}` failed: {created.stderr.strip()[:300]}", "check the image")
    container = created.stdout.strip()
    texts: dict[str, bytes] = {}
    names: list[str] = []
    try:
        proc = subprocess.Popen([docker, "cp", f"{container}:{root}/{PACKAGE}", "-"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    names.append(member.name)
                    if member.name.endswith(".py"):
                        handle = tar.extractfile(member)
                        texts[member.name] = handle.read() if handle else b""
        except tarfile.TarError as err:
            raise ForgeError(f"`docker cp {root}/{PACKAGE}` out of {image} gave no readable tar ({err})",
                             "check the image") from None
        finally:
            proc.stdout.close()
            proc.wait()
    finally:
        subprocess.run([docker, "rm", "-f", container], capture_output=True, timeout=120)
    return _Sources(names, lambda n: texts.get(n, b""))


def analyze_image(image: str, root: str, *, docker: str = "docker", cache: bool = True) -> PackageReport:
    """As ``analyze``, for the vLLM at ``root/vllm`` inside a local Docker image (cached by image id)."""
    import subprocess

    ident = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", image], capture_output=True,
                           text=True, timeout=60).stdout.strip()
    cached = _cache_file(f"image|{ident}|{root}") if cache and ident else None
    found_cached = _read_cache(cached, f"{image}:{root}/{PACKAGE}") if cached else None
    if found_cached is not None:
        return found_cached
    report = analyze_sources(_image_sources(image, root, docker), f"{image}:{root}/{PACKAGE}")
    if cached:
        _write_cache(cached, report)
    return report


def optional_extensions_in_image(image: str, audit_paths: list[str], docker: str = "docker") -> dict[str, Extension]:
    """``optional_extensions`` for ``audit_image``'s absolute paths."""
    out: dict[str, Extension] = {}
    for root in image_roots(audit_paths):
        found = analyze_image(image, root, docker=docker).by_path()
        for audit_path in audit_paths:
            if audit_path.startswith(root + "/"):
                ext = found.get(audit_path[len(root) + 1:])
                if ext is not None and not ext.required:
                    out[audit_path] = ext
    return out


def format_text(report: PackageReport) -> str:
    lines = [f"{report.source}" + (f" (vLLM {report.version})" if report.version else "")]
    for ext in report.extensions:
        lines.append(f"  {'REQUIRED' if ext.required else 'optional'}  {ext.module}  ({ext.path})")
        lines.append(f"      {ext.reason}")
        for lost in ext.loses:
            lines.append(f"      without it: {lost}")
    required = sum(1 for e in report.extensions if e.required)
    lines.append(f"{required} required, {len(report.extensions) - required} optional of {len(report.extensions)} "
                 "compiled extensions")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Which compiled extensions a vLLM wheel or install needs at start.")
    parser.add_argument("path", help="a vLLM wheel, site-packages/vllm, or the directory holding vllm/")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = analyze(args.path)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_text(report))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
