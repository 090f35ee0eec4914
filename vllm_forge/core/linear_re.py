"""Regular expressions written by someone else (a checkout's CMake ``MATCHES``, its ``.dockerignore``),
matched in time linear in the text and in bounded memory.

Python's ``re`` backtracks: ``^(a+)+$`` against 24 ``a`` and a ``!`` takes seconds, against 40 longer
than anyone waits, and ``*a*a*a*a*b`` as a .dockerignore pattern does the same to a long file name.
RE2 (the ``google-re2`` package; also the engine behind Go's ``regexp``, which Docker itself matches
.dockerignore with) never backtracks and caps the memory a pattern may take (``MAX_MEM``). A pattern
RE2 does not take (a backreference, a lookaround, a repetition over 1000) is None: the caller decides
what "cannot tell" means. Without RE2 installed (the minimal build image) every pattern is None.
"""

from __future__ import annotations

from functools import lru_cache

MAX_MEM = 8 << 20  # bytes a compiled pattern may use (RE2's own default)
MAX_PATTERN = 4096  # characters


@lru_cache(maxsize=4096)
def compile_linear(pattern: str):
    """``pattern`` compiled by RE2 (``.search``, ``.fullmatch`` like ``re``), or None when RE2 cannot take it."""
    try:
        import re2
    except ImportError:
        return None
    if len(pattern) > MAX_PATTERN:
        return None
    options = re2.Options()
    options.log_errors = False  # a refused pattern is an answer here, not a line on stderr
    options.max_mem = MAX_MEM
    try:
        return re2.compile(pattern, options)
    except re2.error:
        return None
