"""The first real error in a command's output, found while it streams: what a failed command is reported with.

A build's last line is the least useful one (setup.py's ``CalledProcessError``, a cut-off CMake command
line). What names the cause comes first, in this order of trust:

1. ninja's ``FAILED: <output>`` edge, and the first ``error:`` / ``#error`` / ``fatal error:`` line of its
   output (gcc, clang and nvcc formats; a linker's ``undefined reference``);
2. ``CMake Error at <file>:<line>`` with its message (the lines CMake wrapped it into, joined);
3. a compiler error line outside ninja (a plain ``make`` or setuptools compile);
4. the exception line of a Python traceback (the first traceback: chained exceptions print the root
   cause first);
5. a tool's own ``fatal:`` / ``error:`` line (git);
else the last line. Only a few short strings are kept, whatever the length of the output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_LIMIT = 300  # characters kept of any one line
_FAILED = re.compile(r"^FAILED: (?:\[code=\d+\] )?(.+?)\s*$")
_PROGRESS = re.compile(r"^\s*\[\d+/\d+\]\s")
# gcc/clang `x.cpp:3:2: error: ...`, `fatal error: ...`; nvcc `x.cu(12): error: ...`, `error #20014-D: ...`;
# `nvcc fatal   : Unsupported gpu architecture`; ld's `undefined reference to`
_COMPILER_ERROR = re.compile(
    r"(?:^|[\s:)])(?:fatal error|error)(?:\s*#\d+(?:-D)?)?\s*:\s|"
    r"\bnvcc fatal\s*:|\bundefined reference to\b|\bld(?:\.\w+)?: cannot find\b|collect2: error:"
)
_COMPILER_LOCATION = re.compile(r"^\S.*?(?::\d+(?::\d+)?|\(\d+\)):\s*(?:fatal error|error)\b")
_CMAKE_ERROR = re.compile(r"^CMake Error\b(.*)$")
_TOOL_ERROR = re.compile(r"^(?:fatal|error):\s")
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Failure|Interrupt)\b(?::|$)")
_TARGET_OBJECT = re.compile(r"(?:^|/)CMakeFiles/([^/]+)\.dir/(.+?)\.(?:o|obj)$")


def _short(line: str) -> str:
    return line.strip()[:_LIMIT]


@dataclass(frozen=True)
class FoundError:
    kind: str  # "compile", "cmake", "python", "tool", "last-line"
    where: str  # what failed: "csrc/api/api.cpp (_flashmla_C)", "CMakeLists.txt:12"; "" when unknown
    message: str  # the error line itself

    def describe(self) -> str:
        if self.kind == "last-line":
            return f"its last line: {self.message}"
        if self.where:
            return f"first error, in {self.where}: {self.message}"
        return f"first error: {self.message}"


def _edge_name(output: str) -> str:
    """``CMakeFiles/_C.dir/csrc/x.cu.o`` -> ``csrc/x.cu (_C)``; any other output as it is."""
    output = output.strip().strip("'\"")
    match = _TARGET_OBJECT.search(output)
    return f"{match.group(2)} ({match.group(1)})" if match else output


class FirstErrorScanner:
    """Fed a command's output line by line; ``found()`` is the best error seen (see the module doc)."""

    def __init__(self) -> None:
        self.ninja = False  # a ninja build printed [k/N] or FAILED: lines (resuming it is possible)
        self._edge: str | None = None  # inside a FAILED edge's output
        self._edge_lines = 0
        self._compile: FoundError | None = None
        self._failed_edge: str | None = None  # a FAILED edge whose output had no error line
        self._cmake: FoundError | None = None
        self._cmake_open: str | None = None  # `CMake Error at x:1 (message):` waiting for its message
        self._cmake_message: list[str] = []
        self._loose: FoundError | None = None
        self._python: FoundError | None = None
        self._in_traceback = False
        self._tool: FoundError | None = None
        self._last = ""

    def feed(self, line: str) -> None:
        line = line.rstrip("\n")
        if line.strip():
            self._last = line
        if _PROGRESS.match(line):
            self.ninja = True
            self._edge = None
            return
        if line.startswith("ninja: "):  # `ninja: build stopped: subcommand failed.`: no edge's output
            self._edge = None
            return
        failed = _FAILED.match(line)
        if failed:
            self.ninja = True
            self._edge, self._edge_lines = _edge_name(failed.group(1)), 0
            if self._failed_edge is None:
                self._failed_edge = self._edge
            return
        if self._edge is not None:
            self._edge_lines += 1
            if self._compile is None and self._edge_lines > 1 and _COMPILER_ERROR.search(line):
                # line 1 of an edge's output is its command line, which may well hold `-Werror=...: ` text
                self._compile = FoundError("compile", self._edge, _short(line))
            return
        self._scan_cmake(line)
        self._scan_traceback(line)
        if self._loose is None and _COMPILER_LOCATION.match(line.strip()):
            self._loose = FoundError("compile", "", _short(line))
        if self._tool is None and _TOOL_ERROR.match(line.strip()):
            self._tool = FoundError("tool", "", _short(line))

    def _scan_cmake(self, line: str) -> None:
        if self._cmake is not None:
            return
        if self._cmake_open is not None:  # the message: indented lines CMake wrapped, up to a blank line
            if line.strip() and (line.startswith(" ") or not self._cmake_message):
                self._cmake_message.append(line.strip())
                if len(" ".join(self._cmake_message)) < _LIMIT:
                    return
            if self._cmake_message:
                self._cmake = FoundError("cmake", self._cmake_open, _short(" ".join(self._cmake_message)))
            return
        match = _CMAKE_ERROR.match(line)
        if not match:
            return
        rest = match.group(1).strip()
        at = re.match(r"^at (\S+?:\d+)", rest)
        if at:
            self._cmake_open = at.group(1)
        elif rest.lstrip(":").strip():
            self._cmake = FoundError("cmake", "", _short("CMake Error" + rest))
        else:
            self._cmake_open = ""

    def _scan_traceback(self, line: str) -> None:
        if self._python is not None:
            return
        if line.startswith("Traceback (most recent call last)"):
            self._in_traceback = True
            return
        if not self._in_traceback or not line.strip() or line.startswith((" ", "\t")):
            return
        if EXCEPTION_LINE.match(line):
            self._python = FoundError("python", "", _short(line))
        self._in_traceback = False  # a traceback that ends in something else (a bare raise of a non-error)

    def found(self) -> FoundError | None:
        if self._cmake is None and self._cmake_message:  # the output ended inside the message
            self._cmake = FoundError("cmake", self._cmake_open or "", _short(" ".join(self._cmake_message)))
        if self._compile:
            return self._compile
        if self._failed_edge:
            return FoundError("compile", self._failed_edge, "ninja reported it FAILED (no error line in its output)")
        for candidate in (self._cmake, self._loose, self._python, self._tool):
            if candidate:
                return candidate
        return FoundError("last-line", "", _short(self._last)) if self._last else None


def first_error(lines: Iterable[str]) -> FoundError | None:
    scanner = FirstErrorScanner()
    for line in lines:
        scanner.feed(line)
    return scanner.found()


def python_exception(lines: Iterable[str]) -> str:
    """The exception line of the first Python traceback in ``lines`` ('' when there is none)."""
    scanner = FirstErrorScanner()
    for line in lines:
        scanner._scan_traceback(line.rstrip("\n"))
        if scanner._python:
            return scanner._python.message
    return ""
