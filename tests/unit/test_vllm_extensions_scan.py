"""The fast import analysis of vllm_forge/audit/vllm_extensions.py answers what parsing every module answers.

`ImportScan` (vllm_forge/audit/import_scan.py) reads a module's bytes for its import statements (a superset of what
`ast` finds), and the analysis parses only the top-level statements it cannot classify. Random packages,
built from the Python constructs that decide a guard (def, class, if/elif/else, `if TYPE_CHECKING`,
try/except with and without a re-raise, `with suppress`, loops) and from the text that fools a line reader
(docstrings holding `import` and `def` lines at column 0, quotes in comments and in one-line strings,
continued lines, bracket continuations at column 0), are analysed both ways and must give the same report,
and each module's scan must cover every import its full parse finds.
"""

from __future__ import annotations

import ast
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_forge.audit import import_scan
from vllm_forge.audit import vllm_extensions as ext

MODULES = ["vllm", "vllm.a", "vllm.b", "vllm.pkg", "vllm.pkg.c"]
EXTENSIONS = ["vllm._x_C", "vllm.pkg._y_C"]
FILES = {"vllm": "vllm/__init__.py", "vllm.a": "vllm/a.py", "vllm.b": "vllm/b.py", "vllm.pkg": "vllm/pkg/__init__.py",
         "vllm.pkg.c": "vllm/pkg/c.py"}
SO_FILES = ["vllm/_x_C.abi3.so", "vllm/pkg/_y_C.abi3.so"]


def _package_of(module: str) -> str:
    return module if FILES[module].endswith("__init__.py") else module.rpartition(".")[0]


@st.composite
def imports(draw, module: str) -> list[str]:
    """One import (lines without indentation) of a package module or an extension."""
    target = draw(st.sampled_from(MODULES[1:] + EXTENSIONS))
    parent, _, leaf = target.rpartition(".")
    forms = [
        [f"import {target}"],
        [f"import {target} as alias"],
        [f"import os, {target}"],
        [f"from {parent} import {leaf}"],
        [f"from {parent} import (", "    os,  # a (comment) with quotes: don't", f"    {leaf},", ")"],
        [f"mod = importlib.import_module({target!r})"],
        [f'importlib.import_module(f"{target}")'],  # an f-string: no import the walker reads
        ["import os, \\", f"    {target}"],
        [f"x = 1; import {target}"],
    ]
    if parent == _package_of(module):
        forms += [[f"from . import {leaf}"], [f"importlib.import_module('.{leaf}', {parent!r})"]]
    return draw(st.sampled_from(forms))


COLUMN_0 = "\0"  # a line that stays at column 0 wherever its statement is (inside a string, brackets)
TRAPS = [
    ['"""A docstring:', COLUMN_0 + "import vllm.a", COLUMN_0 + "def f():", COLUMN_0 + '"""'],  # in a string
    ["s = '# \"\"\" not a string start'"],  # a triple quote inside a one-line string
    ["# don't import vllm.b here", "pass"],
    ["y = (", COLUMN_0 + "1)"],  # a bracket continuation at column 0
    ["z = 'from vllm import a'"],
    ["pass"],
]


@st.composite
def block(draw, module: str, depth: int) -> list[str]:
    """One statement (its lines, indented relative to column 0) inside some body."""
    kind = draw(st.sampled_from(["import", "import", "trap", "def", "class", "if", "typing", "try", "with", "loop"]
                                if depth < 3 else ["import", "trap"]))
    if kind == "import":
        return draw(imports(module))
    if kind == "trap":
        return draw(st.sampled_from(TRAPS))

    def body() -> list[str]:
        lines = [line for _ in range(draw(st.integers(1, 3))) for line in draw(block(module, depth + 1))]
        return [line if line.startswith(COLUMN_0) else "    " + line for line in lines]

    if kind == "def":
        header = draw(st.sampled_from([["def f(a, b=1):"], ["async def g():"], ["def h(", "    a,", ") -> None:"]]))
        doc = draw(st.sampled_from([[], ['    """Import the kernels (optional)."""']]))
        if draw(st.booleans()):
            return [f"def one(): {draw(imports(module).filter(lambda lines: len(lines) == 1))[0]}"]
        return header + doc + body()
    if kind == "class":
        return ["class C:"] + body()
    if kind == "if":
        out = [draw(st.sampled_from(["if cond:", "if current_platform.is_cuda():"]))] + body()
        if draw(st.booleans()):
            out += ["elif other:"] + body()
        if draw(st.booleans()):
            out += ["else:"] + body()
        return out
    if kind == "typing":
        out = [draw(st.sampled_from(["if TYPE_CHECKING:", "if typing.TYPE_CHECKING:"]))] + body()
        return out + (["else:"] + body() if draw(st.booleans()) else [])
    if kind == "try":
        out = ["try:"] + body()
        for _ in range(draw(st.integers(1, 2))):
            out.append(draw(st.sampled_from(["except ImportError:", "except (ImportError, OSError) as e:", "except:",
                                             "except ValueError:", "except Exception:"])))
            out += draw(st.sampled_from([["    pass"], ["    FLAG = False"], ["    raise"],
                                         ["    if strict:", "        raise RuntimeError('rebuild') from None"],
                                         ["    logger.warning('none')", COLUMN_0 + "# at column 0", "    raise"]]))
        if draw(st.booleans()):
            out += ["finally:"] + body()
        return out
    if kind == "with":
        return [draw(st.sampled_from(["with contextlib.suppress(ImportError):", "with suppress(AttributeError):",
                                      "with open('f') as handle:"]))] + body()
    return [draw(st.sampled_from(["for i in range(2):", "while cond:"]))] + body()


@st.composite
def packages(draw) -> dict[str, str]:
    out = {}
    for module, name in FILES.items():
        lines = [line for _ in range(draw(st.integers(0, 4))) for line in draw(block(module, 0))]
        out[name] = "\n".join(line.lstrip(COLUMN_0) for line in lines) + "\n"
    return out


def sources_of(files: dict[str, str]) -> ext._Sources:
    data = {name: text.encode() for name, text in files.items()}
    data.update({name: b"" for name in SO_FILES})
    return ext._Sources(list(data), data.__getitem__)


def full_parse_report(files: dict[str, str]) -> dict:
    """The analysis as it was before the scan: every module it asks about parsed whole."""
    with mock.patch.object(import_scan.ImportScan, "run", side_effect=import_scan.Unsure("off")):
        return ext.analyze_sources(sources_of(files), "pkg").to_dict()


def full_walk_edges(package: ext._Package, module: str) -> set[str]:
    found = package.walk(module)
    return {n for f in found if not f.guard and not f.lazy for n in f.names} & package.modules.keys()


@given(packages())
def test_the_scan_answers_what_parsing_everything_answers(files):
    for text in files.values():
        tree = ast.parse(text)  # the generator writes valid Python only
        assert list(ext._function_defs(tree)) == [f for f in ast.walk(tree)
                                                  if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))]
    package = ext._Package(sources_of(files))
    package._index()
    wanted = set(package.modules) | package.extensions
    for module, name in package.modules.items():
        found = package.walk(module)
        if package._imports[module] is None:
            continue  # unsure: parsed whole, as before
        scanned = {n for _, names in package._imports[module] for n in names}
        assert {n for f in found for n in f.names if n in wanted} <= scanned, files[name]
        assert ext._Package(sources_of(files)).edges(module) == full_walk_edges(package, module), files[name]
    assert ext.analyze_sources(sources_of(files), "pkg").to_dict() == full_parse_report(files)


@pytest.mark.parametrize("text, why", [
    ('"""Example:\n\ndef f():\n        """\nclass A:\n    import {T}\n', "a def line inside a docstring"),
    ('try:\n    x = """\ndef f():\n    """\n    import {T}\nexcept ValueError:\n    pass\n', "a def line in a string"),
    ("try:\n    import {T}\nexcept ImportError:\n    x = 1\n# note\n    raise\n", "a comment line in a handler"),
    ("try:\n    import {T}\nexcept ImportError:\n    y = (\n1)\n    raise\n", "a bracket line in a handler"),
    ("if TYPE_CHECKING:\n    pass\nelse:\n    import {T}\n", "the else of TYPE_CHECKING runs"),
    ("class A:\n    def f(self): return 1\n    import {T}\n", "after a one-line def"),
    ("def f():\n    pass\nclass A:\n    import {T}\n", "in a class after a function"),
    ("for i in range(1):\n    def f():\n        pass\n    class A:\n        import {T}\n", "deeper"),
    ("def f(\n    a,\n) -> None:\n    pass\nimport {T}\n", "after a multi-line def header"),
    ("x = 1; import {T}\n", "after a semicolon"),
    ("s = '\"\"\"'\nimport {T}\n", "a triple quote in a one-line string"),
    ("from {P} \\\n    import {L}\n", "a continued from-import"),
    ("import os, \\\n    {T}\n", "a continued import"),
    ("from {P} import (\n    os,  # the ) in a comment\n    {L},\n)\n", "a comment in a parenthesized import"),
    ("mod = importlib.import_module(\n    '{T}')\n", "import_module over two lines"),
])
@pytest.mark.parametrize("how", ["directly", "through vllm.a"])
def test_an_unconditional_import_the_scan_might_misread_stays_required(text, why, how):
    files = {name: "" for name in FILES.values()}
    target = "vllm._x_C" if how == "directly" else "vllm.a"
    files["vllm/__init__.py"] = text.format(T=target, P=target.rpartition(".")[0], L=target.rpartition(".")[2])
    if how != "directly":
        files["vllm/a.py"] = "import vllm._x_C\n"
    report = ext.analyze_sources(sources_of(files), "pkg").to_dict()
    assert report == full_parse_report(files), why
    assert {e["module"]: e["required"] for e in report["extensions"]}["vllm._x_C"], why


def test_only_unclassified_statements_are_parsed():
    """A plain top-level import, one inside a function and one under `if` need no parse; a try does."""
    files = {name: "" for name in FILES.values()}
    files["vllm/__init__.py"] = ("import vllm.a\nfrom vllm import b\n"
                                 "def f():\n    import vllm.pkg\n"
                                 "if TYPE_CHECKING:\n    import vllm.pkg.c\n"
                                 "try:\n    import vllm._x_C\nexcept ImportError:\n    pass\n")
    parsed = []
    real_parse = ast.parse
    with mock.patch.object(ext.ast, "parse", side_effect=lambda text, *a, **k: parsed.append(text) or real_parse(text)):
        package = ext._Package(sources_of(files))
        assert package.edges("vllm") == {"vllm", "vllm.a", "vllm.b"}
    assert [text.strip() for text in parsed] == ["try:\n    import vllm._x_C\nexcept ImportError:\n    pass"]


def test_the_same_line_under_another_package_names_other_modules():
    """The scan keeps what one line names for the next module that has the same line: the whole line."""
    memo: dict = {}
    wanted = {"vllm", "vllm.b", "vllm.pkg", "vllm.pkg.c"}
    packages = {"vllm", "vllm.pkg"}
    first = import_scan.ImportScan(b"from vllm.pkg import c\n", "vllm.a", False).run(wanted, packages, memo)
    second = import_scan.ImportScan(b"    from vllm.b import c\n", "vllm.a", False).run(wanted, packages, memo)
    again = import_scan.ImportScan(b"from vllm.pkg import c\n", "vllm.b", False).run(wanted, packages, memo)
    assert (first, second, again) == ({"vllm", "vllm.pkg", "vllm.pkg.c"}, {"vllm", "vllm.b"}, first)


def test_a_line_the_scan_cannot_read_makes_it_unsure():
    """Where it cannot promise a superset it says so, and the analysis parses that module whole."""
    wanted, packages = {"vllm", "vllm.a"}, {"vllm"}
    for text in (b"x = 1\n\timport vllm.a\n",  # tab indentation
                 b"x = f\"{'\"'}\"; import vllm.a\n",  # a Python 3.12 f-string nesting its own quote
                 b"mod = importlib.import_module(('vllm.a'))\n"):  # an argument it cannot read
        with pytest.raises(import_scan.Unsure):
            import_scan.ImportScan(text, "vllm.b", False).run(wanted, packages)
    assert import_scan.ImportScan(b"# don't import vllm.a\n", "vllm.b", False).run(wanted, packages) == set()
