"""vllm_forge as a package: where it lives, how a child Python runs one of its modules, what a module imports.

A module that also runs as a program runs as ``python -m vllm_forge.<wing>.<module>``, with the directory
that holds ``vllm_forge/`` on PYTHONPATH (``-m`` then puts the child's working directory first on
``sys.path``, which is what ``setup_targets`` needs in a vLLM checkout). ``imported_modules`` reads the
``vllm_forge`` modules one module uses from its source: its imports, module level and inside functions
alike, and a module's name as a whole string (``importlib.import_module("vllm_forge.x.y")``, or a module it
runs as a program). The bake stages what its build stage runs by following them, and
tests/unit/test_layering.py holds them to the wing order of ``vllm_forge.LAYERS``. Stdlib only.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = PACKAGE_DIR.parent  # what goes on PYTHONPATH (the repository's root)


def python_path(root: Path | str = PACKAGE_ROOT, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{"PYTHONPATH": root}`` in front of what ``environ`` (default: this process) already has there."""
    environ = os.environ if environ is None else environ
    current = environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join([str(root), current]) if current else str(root)}


def module_path(module: str, package_dir: Path = PACKAGE_DIR) -> Path:
    """The file of a dotted module of the package at ``package_dir``: its ``.py``, or a package's
    ``__init__.py``."""
    parts = module.split(".")[1:]
    base = package_dir.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _resolve(module: str, names: Iterable[str], package_dir: Path) -> list[str]:
    """``from module import a, b``: each name that is a submodule, else ``module`` itself."""
    found = []
    for name in names:
        sub = f"{module}.{name}"
        found.append(sub if module_path(sub, package_dir).is_file() else module)
    return found


def module_references(path: Path, package_dir: Path = PACKAGE_DIR) -> list[tuple[str, int]]:
    """``(module, line)`` for each module of the package at ``package_dir`` that the source file ``path``
    imports anywhere in it, or names as a whole string (dotted names, the package's own name first)."""
    package = package_dir.name
    whole = re.compile(rf"{re.escape(package)}(\.[A-Za-z_]\w*)+")
    tree = ast.parse(Path(path).read_text(), str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == package or node.module.startswith(package + ".")):
            found += [(name, node.lineno)
                      for name in _resolve(node.module, (alias.name for alias in node.names), package_dir)]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == package]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and whole.fullmatch(node.value):
            found.append((node.value, node.lineno))  # import_module("vllm_forge.x.y"), or a program run as python -m
    return sorted({(name, line) for name, line in found if module_path(name, package_dir).is_file()},
                  key=lambda item: (item[1], item[0]))


def imported_modules(path: Path, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """The modules of the package at ``package_dir`` that the source file ``path`` uses (``module_references``)."""
    return {name for name, _line in module_references(path, package_dir)}


def module_closure(entries: Iterable[str], package_dir: Path = PACKAGE_DIR) -> set[str]:
    """``entries`` (dotted modules) and every ``vllm_forge`` module they import, transitively, with the
    ``__init__`` of each package on the way (what ``python -m`` of one of them needs on disk)."""
    needed: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # the packages it sits in
        todo += sorted(imported_modules(module_path(name, package_dir), package_dir) - needed)
    return needed
