"""Which modules a Python module may import, read from its bytes without parsing it.

Parsing every start-up module of a vLLM with `ast` took most of a first audit of its wheel (935 modules,
seconds). `ImportScan` reads a module's bytes for its import statements and `import_module("...")` calls
only: `run` finds every package module an import statement may load (a SUPERSET of what parsing finds, so
a module that imports nothing it lists imports nothing), and then, per statement, answers only what it is
sure of: `at_top` (a plain import at column 0: unconditional), `in_function` (inside a def: lazy),
`in_branch` (in the first block of a top-level if/while: guarded), `in_string` (inside a triple-quoted
string: no statement), and `top_level` (the bytes of the top-level statement holding it, for `ast` to parse
alone when none of those applies). Where it cannot promise a superset (tab indentation, a continued line,
an argument it cannot read) `run` raises `Unsure` and the caller parses the whole module.

The module asked about and every name in ``wanted`` belong to one top-level package (``vllm``); what
counts as a guard or a lazy import is vllm_forge/audit/vllm_extensions.py's walker's. Stdlib only.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata

_IDENT_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_WORD_BYTE = bytes(c in _IDENT_BYTES or c >= 0x80 for c in range(256))  # 1: the byte can be part of a name
# `from .x import` / `; from x import` / `: from . import`: what precedes `import` on its line
_FROM_PART = re.compile(rb"(?:\A|[;:])[ \f]*from(?![\w\x80-\xff])[ \t]*((?:\.[ \t]*)*)([^;:]*?)[ \t]*\Z")
# import_module( "literal" , | ) ; or a first argument that is no literal (a name, a call: never a module)
_IMPORT_MODULE = re.compile(
    rb"""import_module\s*\(\s*(?:[rRuU]?(['"])([^'"\\\r\n]*)\1\s*([,)])|[A-Za-z_]\w*\s*[^\w\s'"]"""
    rb"""|(?:[fF][rR]?|[rR][fFbB]|[bB][rR]?)['"])""")  # the last: an f-string or bytes, never a module name
_SECOND_ARG = re.compile(rb"""\s*(?:[rRuU]?(['"])([^'"\\\r\n]*)\1\s*[,)]|\)|[A-Za-z_][\w.]*\s*(?:=[^=]|[,)]))""")
_TAB_INDENT = re.compile(rb"(?:\A|\n)[ \f]*\t")
_F_STRING = re.compile(rb"(?<![\w\x80-\xff])(?:[fF][rR]?|[rR][fF])['\"]")
_DEF_WORD = re.compile(rb"def[ \t]")
_HEADER_CHARS = re.compile(rb"[()\[\]{}'\"#:\n\\]")
_CLEAN_PREFIX = re.compile(rb"""(?:[^'"#\\\n]|\\.|'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")*""")
_LOWER_LINE: dict[int, re.Pattern] = {}
_CODE_AT_COLUMN_0 = re.compile(rb"\n[^ \t\r\n#\f)\]}]")  # a line that starts a statement, or continues one
_CLAUSE = re.compile(rb"(?:else|elif|except|finally)(?![\w\x80-\xff])")
_BRANCH = re.compile(rb"(?:if|while)(?![\w\x80-\xff])")


class Unsure(Exception):
    """The scan cannot promise a superset for this module: parse it."""


def _lower_line(indent: int) -> re.Pattern:
    """A line (not blank, not a comment) indented ``indent`` columns or less."""
    if indent not in _LOWER_LINE:
        _LOWER_LINE[indent] = re.compile(rb"\n[ ]{0,%d}[^ \n#]" % indent)
    return _LOWER_LINE[indent]


@functools.lru_cache(maxsize=1 << 14)  # a vLLM names a few thousand modules, each in many import statements
def _prefixes(dotted: str) -> tuple[str, ...]:
    parts = dotted.split(".")
    return tuple(".".join(parts[: i + 1]) for i in range(len(parts)))


class ImportScan:
    """One module's import statements, from its bytes (see above). ``run`` finds them (``found``: byte offset and
    names of each); the other methods answer for one of them, each from only as much of the module as it needs."""

    def __init__(self, data: bytes, module: str, is_package: bool):
        self.data, self.module, self.is_package = data, module, is_package
        self.found: list[tuple[int, list[str]]] = []  # (byte offset, names asked about) of each import
        self._defs: list[tuple[int, int]] | None = None  # (line start, indent) of each `def` line
        self._bodies: dict[int, int | None] = {}  # def line start -> the newline its indented body follows
        self._lines = 1  # how many lines the statement being read spans
        self._kept = True  # whether what it names depends on its line alone (then `run` keeps it for the next)
        self._spans: list[tuple[int, int]] = []  # triple-quoted strings found so far, in order
        self._next_quote: list[int] | None = None  # the next ''' and """ past the last span (found when asked)
        self._strings_known_to = 0  # strings are known before this offset
        self._strings_unknown = len(data) + 1  # from this offset on they cannot be told (a quote in a comment...)

    def run(self, wanted, packages, memo: dict | None = None) -> set[str]:
        """Every name in ``wanted`` (the package's modules, all under PACKAGE) an import statement may load.
        ``packages``: the names in ``wanted`` that have submodules (only their ``from`` lists are read).
        ``memo``: shared by the modules of one package (``from vllm.logger import init_logger`` is in 971)."""
        self._packages = packages
        memo = {} if memo is None else memo
        data, package, size = self.data, self.module.partition(".")[0].encode(), len(self.data)
        if b"\t" in data and _TAB_INDENT.search(data):
            raise Unsure("tab indentation")
        if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
            raise Unsure("a line that ends in a bare carriage return")
        loaded: set[str] = set()
        find, rfind, word, found = data.find, data.rfind, _WORD_BYTE, self.found
        pos = 0
        while (at := find(b"import", pos)) >= 0:  # the loop every module's every `import` goes through: kept lean
            pos = at + 6
            if at and word[data[at - 1]]:
                continue
            call = pos < size and word[data[pos]]
            if call and not data.startswith(b"_module", pos):
                continue  # importlib, imports, ...
            start = rfind(b"\n", 0, at) + 1
            if start > 1 and (data[start - 2] == 92 or (data[start - 2] == 13 and data[start - 3] == 92)):
                raise Unsure(f"a continued line before byte {at}")
            end = find(b"\n", pos)
            end = size if end < 0 else end
            key = (data[start:end], at - start)  # the same line means the same names, in any module of the package
            names = memo.get(key)
            if names is None:
                self._lines, self._kept = 1, not call
                names = self._occurrence(at, start, end, call, package, wanted)
                if self._kept and self._lines == 1:
                    memo[key] = names
            if names:
                found.append((at, names))
                loaded.update(names)
        return loaded

    def _occurrence(self, at: int, start: int, end: int, call: bool, package: bytes, wanted) -> list[str]:
        """The names in ``wanted`` that the occurrence of ``import`` at ``at`` (its line: ``start``..``end``)
        may load; clears ``_kept`` when that depends on more than the line (a relative import, a call)."""
        data = self.data
        before = data[start:at]
        head = before.lstrip(b" ")
        if not call and (not head or (head[:5] == b"from " and head[5:6] not in b". \t" and b";" not in head
                                      and b":" not in head)):
            # an absolute import starting its line: it names the package on that line, or nothing of it
            if data[end - 1] == 92 or (data[end - 1] == 13 and data[end - 2] == 92):
                self._kept = False  # continued: its next line may name the package
            elif data.find(package, start, end) < 0:
                return []
        elif not call and b"." in before:
            self._kept = False  # maybe relative: what it names depends on the module
        if b'"""' not in before and b"\'\'\'" not in before and _CLEAN_PREFIX.fullmatch(before) is None:
            if _F_STRING.search(before):  # Python 3.12 f-strings may nest their own quotes: no telling
                raise Unsure(f"an f-string before byte {at}")
            return []  # in a comment or a one-line string
        return [n for n in (self._import_module(at) if call else self._statement(at, before)) if n in wanted]

    # -- what an occurrence of `import` loads

    def _statement(self, at: int, before: bytes) -> list[str]:
        cut = max(before.rfind(b";"), before.rfind(b":"))
        if not before[cut + 1:].strip(b" \f"):  # import a.b, c as d
            return [p for name in _names(self._logical_rest(at + 6)) for p in _prefixes(name)]
        found = _FROM_PART.search(before)
        if not found:
            return []  # `import` after other words: inside a string or a comment, no statement starts here
        target = "".join(_text(found.group(2)).split()) or None
        base = resolve(self.module, self.is_package, found.group(1).count(b"."), target)
        package = self.module.partition(".")[0]
        if base != package and not base.startswith(package + "."):
            return []
        rest = at + 6
        while rest < len(self.data) and self.data[rest] in b" \t":
            rest += 1
        if base not in self._packages:
            return list(_prefixes(base))  # `from vllm.x import a, b`: a and b cannot be modules
        listed = self._parenthesized(rest) if self.data[rest:rest + 1] == b"(" else self._logical_rest(at + 6)
        return [*_prefixes(base), *(f"{base}.{name}" for name in _names(listed))]

    def _import_module(self, at: int) -> list[str]:
        """``import_module("x")`` (the walker's: a literal first argument, and a literal package for a
        relative name); a call on anything else loads nothing it can know."""
        found = _IMPORT_MODULE.match(self.data, at)
        if not found:
            rest = self.data[at + 13:at + 64].lstrip()
            if rest[:1] == b"(" and self.in_string(at) is not True:
                raise Unsure(f"an import_module() call it cannot read at byte {at}")
            return []  # the name itself (a def, an import of it, an attribute)
        if found.group(2) is None:
            return []
        name = _text(found.group(2))
        if not name.startswith("."):
            return [name]
        if found.group(3) == b")":
            return []
        second = _SECOND_ARG.match(self.data, found.end())
        if not second:
            if self.in_string(at) is True:
                return []
            raise Unsure(f"an import_module() package it cannot read at byte {at}")
        if second.group(2) is None:
            return []
        level = len(name) - len(name.lstrip("."))
        return [resolve(_text(second.group(2)), True, level, name.lstrip(".") or None)]

    def _continued(self, start: int) -> bool:
        """Whether the line starting at ``start`` continues the one before (a trailing backslash)."""
        data = self.data
        if start < 2:
            return False
        return data[start - 2] == 92 or (data[start - 2] == 13 and start >= 3 and data[start - 3] == 92)

    def _logical_rest(self, at: int) -> bytes:
        """From ``at`` to the end of its statement: the line (and the lines a backslash continues), up to a
        ``;`` or a comment."""
        data, out = self.data, []
        while True:
            end = data.find(b"\n", at)
            end = len(data) if end < 0 else end
            line = data[at:end]
            stop = min([i for i in (line.find(b";"), line.find(b"#")) if i >= 0], default=-1)
            if stop >= 0:
                out.append(line[:stop])
                return b" ".join(out)
            body = line.rstrip(b"\r")
            if not body.endswith(b"\\"):
                out.append(body)
                return b" ".join(out)
            out.append(body[:-1])
            at = end + 1
            self._lines += 1
            if at >= len(data):
                raise Unsure("a backslash at the end of the file")

    def _parenthesized(self, at: int) -> bytes:
        """The names of ``from x import ( ... )``, comments dropped."""
        data, out = self.data, []
        at += 1
        while at < len(data):
            end = data.find(b"\n", at)
            end = len(data) if end < 0 else end
            line = data[at:end].split(b"#", 1)[0]
            close = line.find(b")")
            if close >= 0:
                out.append(line[:close])
                return b" ".join(out)
            out.append(line)
            at = end + 1
            self._lines += 1
        raise Unsure("an unclosed from-import")

    # -- the top-level statement holding an import (parsed alone, it reads as it does in the module)

    def at_top(self, at: int) -> bool:
        """Whether the import at ``at`` is a plain ``import``/``from`` statement that starts a line at column 0
        (the walker's unconditional, module-level import), known to be code (not in a string)."""
        data = self.data
        start = data.rfind(b"\n", 0, at) + 1
        before = data[start:at]
        if before and not (before.startswith(b"from") and _FROM_PART.fullmatch(before)):
            return False
        return data[start:start + 1] not in b" \f" and not self._continued(start) and self.in_string(start) is False

    def top_level(self, at: int) -> tuple[int, int] | None:
        """(start, end) bytes of the top-level statement holding ``at``, with its ``else``/``except``/... clauses;
        None when they cannot be told. A boundary is a code line at column 0 that no backslash continues and
        no triple-quoted string holds; one inside brackets gives a snippet that does not parse, and the caller
        parses the whole module instead (a ``)`` line, ruff's end of a long import, is no boundary)."""
        data = self.data
        found = self._top_start(at)
        if found is None:
            return None
        start, end = found[0], at
        while (found := _CODE_AT_COLUMN_0.search(data, end)) is not None:
            end = found.start() + 1
            kind = self._top_line(end)
            if kind == "unknown":
                return None
            if kind == "statement":
                return start, end
        return start, len(data)

    def _top_start(self, at: int) -> tuple[int, bool] | None:
        """(the start of the top-level statement holding ``at``, whether ``at`` is past one of its clauses)."""
        data, clause = self.data, False
        start = data.rfind(b"\n", 0, at) + 1
        while (kind := self._top_line(start)) != "statement":
            if kind == "unknown" or start == 0:
                return None
            clause = clause or kind == "clause"
            start = data.rfind(b"\n", 0, start - 1) + 1
        return start, clause

    def in_branch(self, at: int) -> bool:
        """Whether ``at`` is in the first block of a top-level ``if`` or ``while`` (before any ``elif``/``else``):
        the walker's guard, or, under ``if TYPE_CHECKING:``, nothing it reads. Only ever yes when certain."""
        found = self._top_start(at)
        return found is not None and not found[1] and _BRANCH.match(self.data, found[0]) is not None

    def _top_line(self, start: int) -> str:
        """What the line at ``start`` is at the top level: a "statement", a "clause" (else, except...) of one,
        "no" top-level line, or "unknown"."""
        first = self.data[start:start + 1]
        if not first or first in b" \t\r\n#\f)]}" or self._continued(start):
            return "no"
        inside = self.in_string(start)
        if inside is None:
            return "unknown"
        if inside:
            return "no"
        return "clause" if _CLAUSE.match(self.data, start) else "statement"

    # -- whether it is inside a function body (only ever answered yes when certain)

    def in_function(self, at: int) -> bool:
        data = self.data
        start = data.rfind(b"\n", 0, at) + 1
        line = data[start:at]
        indent = len(line) - len(line.lstrip(b" "))
        head = line[indent:]
        if head.startswith(b"async"):
            head = head[5:].lstrip(b" ")
        if _DEF_WORD.match(head):  # `def f(): import x`, all on one line
            return self.in_string(start) is False
        if not indent:
            return False
        defs = self._def_lines()
        index = bisect.bisect_left(defs, (start, -1)) - 1
        floor = indent  # only a def indented less than this can hold the line
        while index >= 0 and floor > 0:
            def_start, def_indent = defs[index]
            index -= 1
            if def_indent >= floor:
                continue
            body = self._body_after(def_start)
            if body is None or body >= start:
                continue
            if _lower_line(def_indent).search(data, body, start):
                floor = def_indent  # that def's body ended before this line, and so did every deeper one's
                continue
            if self.in_string(def_start) is False:
                return True
        return False

    def _def_lines(self) -> list[tuple[int, int]]:
        if self._defs is None:
            data, found = self.data, []
            for match in _DEF_WORD.finditer(data):
                start = data.rfind(b"\n", 0, match.start()) + 1
                head = data[start:match.start()]
                stripped = head.lstrip(b" ")
                if stripped.startswith(b"async"):
                    stripped = stripped[5:].lstrip(b" ") if stripped[5:6] == b" " else b"?"
                if not stripped and not self._continued(start):
                    found.append((start, len(head) - len(head.lstrip(b" "))))
            self._defs = found
        return self._defs

    def _body_after(self, start: int) -> int | None:
        """The newline after a def's header (its body is the indented lines below), or None when the body is
        on the header's own line or the header cannot be read."""
        if start not in self._bodies:
            self._bodies[start] = self._header_end(start)
        return self._bodies[start]

    def _header_end(self, start: int) -> int | None:
        data, depth = self.data, 0
        at = data.find(b"def", start)
        while (found := _HEADER_CHARS.search(data, at)) is not None:
            char, at = data[found.start()], found.end()
            if char in b"([{":
                depth += 1
            elif char in b")]}":
                depth -= 1
            elif char == 35:  # "#"
                at = data.find(b"\n", at)
                if at < 0:
                    return None
            elif char in b"'\"":
                if data.startswith(bytes([char]) * 3, found.start()):
                    return None
                begin = at
                while True:
                    end = data.find(bytes([char]), at)
                    newline = data.find(b"\n", at)
                    if end < 0 or 0 <= newline < end:
                        return None
                    at = end + 1
                    if _escapes(data, end, begin) % 2 == 0:
                        break
            elif char == 92:  # a backslash: the next character is not special
                at += 1
            elif char == 58 and depth == 0:  # ":" ends the header
                newline = data.find(b"\n", at)
                newline = len(data) if newline < 0 else newline
                if data[at:newline].split(b"#", 1)[0].strip():
                    return None  # `def f(): return 1`: no indented body
                return newline
            elif char == 10 and depth == 0:
                return None
        return None

    def in_string(self, at: int) -> bool | None:
        """Whether ``at`` is inside a triple-quoted string; None when the strings before it cannot be told
        apart (a quote in a comment, in another string): each caller takes its own safe side. Strings are
        found from the start of the module up to ``at`` only, as far as asked."""
        data = self.data
        if self._next_quote is None:
            self._next_quote = [data.find(b'"""'), data.find(b"\'\'\'")]
        while self._strings_known_to <= at < self._strings_unknown:
            double, single = self._next_quote
            if double < 0 and single < 0:
                self._strings_known_to = len(data) + 1
                break
            opening = double if single < 0 or 0 <= double < single else single
            if opening > at:
                self._strings_known_to = opening
                break
            previous = self._spans[-1][1] if self._spans else 0
            start = max(data.rfind(b"\n", 0, opening) + 1, previous)
            if _CLEAN_PREFIX.fullmatch(data, start, opening) is None or (start > previous and self._continued(start)):
                self._strings_unknown = opening  # a quote in a comment or in another string
                break
            quote, end = data[opening:opening + 3], opening + 3
            while (close := data.find(quote, end)) >= 0 and _escapes(data, close, opening + 3) % 2:
                end = close + 1
            if close < 0:
                self._strings_unknown = opening
                break
            self._spans.append((opening, close + 3))
            self._strings_known_to = close + 3
            self._next_quote = [q if q < 0 or q >= close + 3 else data.find(k, close + 3)
                                for q, k in zip(self._next_quote, (b'"""', b"\'\'\'"), strict=True)]
        if at >= self._strings_unknown:
            return None
        index = bisect.bisect_right(self._spans, (at, len(data))) - 1
        return index >= 0 and self._spans[index][0] < at < self._spans[index][1]


def _escapes(data: bytes, at: int, floor: int) -> int:
    """How many backslashes stand right before ``at`` (not before ``floor``): odd escapes the quote at ``at``."""
    count = 0
    while at - count > floor and data[at - count - 1] == 92:
        count += 1
    return count


def _text(raw: bytes) -> str:
    """Source bytes as Python reads an identifier: UTF-8, NFKC-normalized."""
    return raw.decode() if raw.isascii() else unicodedata.normalize("NFKC", raw.decode("utf-8", "replace"))


def _names(listed: bytes) -> list[str]:
    """The dotted names of an import's comma-separated list (``a . b as c`` -> ``a.b``); text that is no
    name list gives words no module has."""
    out = []
    for item in _text(listed).split(","):
        words = item.split()
        if len(words) >= 3 and words[-2] == "as":
            words = words[:-2]
        if words:
            out.append("".join(words))
    return out


def resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))
