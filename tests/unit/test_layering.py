"""The wings of vllm_forge/ in their order (vllm_forge.LAYERS): no module uses a higher wing, not even inside a
function, and no modules use each other in a circle.

An AST scan of the source: core/package.py's ``module_references`` finds every import (module level or lazy)
and a module's name as a whole string (``importlib.import_module``, a program run with ``python -m``)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from scripts.benchmarks.structure import cycles
from vllm_forge import LAYERS
from vllm_forge.core.package import PACKAGE_DIR, module_references

LAYER = {wing: i for i, wings in enumerate(LAYERS) for wing in wings}


def _modules(package_dir: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _wing(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def upward_imports(package_dir: Path, layers: dict[str, int]) -> list[str]:
    """``module:line -> module (wing -> wing)`` for each use of a module of a higher layer."""
    found = []
    for name, path in _modules(package_dir).items():
        for target, line in module_references(path, package_dir):
            low, high = _wing(name), _wing(target)
            if low and high and layers[high] > layers[low]:
                found.append(f"{name}:{line} -> {target} ({low} -> {high})")
    return found


def wing_cycles(package_dir: Path) -> list[list[str]]:
    arrows: dict[str, set[str]] = {}
    for name, path in _modules(package_dir).items():
        for target, _line in module_references(path, package_dir):
            if _wing(name) and _wing(target) and _wing(name) != _wing(target):
                arrows.setdefault(_wing(name), set()).add(_wing(target))
    return cycles(arrows)


def module_cycles(package_dir: Path) -> list[list[str]]:
    return cycles({name: {t for t, _ in module_references(path, package_dir)} - {name}
                   for name, path in _modules(package_dir).items()})


def test_every_wing_has_its_layer():
    wings = {p.name for p in PACKAGE_DIR.iterdir() if (p / "__init__.py").is_file()}
    wings |= {p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__"}  # pipeline.py: a wing of one
    assert wings - set(LAYER) == set(), "add the new wing to vllm_forge.LAYERS"


def test_no_module_imports_a_higher_wing():
    assert upward_imports(PACKAGE_DIR, LAYER) == []


def test_no_import_cycles():
    assert module_cycles(PACKAGE_DIR) == []
    assert wing_cycles(PACKAGE_DIR) == []  # wings of one layer may use each other one way only


@pytest.fixture
def package(tmp_path) -> Path:
    """A package laid out like vllm_forge, each kind of use of a higher wing once, and a cycle."""
    root = tmp_path / "vllm_forge"
    files = {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/a.py": "import os\n\n\ndef late():\n    from vllm_forge.image import b  # lazy, still a use\n",
        "core/c.py": 'PROGRAM = "vllm_forge.image.b"  # run as python -m\n',
        "core/d.py": 'import importlib\nmod = importlib.import_module("vllm_forge.build.e")\n',
        "core/f.py": "import vllm_forge.core.g\n",
        "core/g.py": "from vllm_forge.core import f\n",
        "build/__init__.py": "",
        "build/e.py": "from vllm_forge.core.a import late\n",
        "image/__init__.py": "",
        "image/b.py": "from vllm_forge.build.e import late  # downward: fine\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def test_the_scan_finds_each_kind_of_upward_use(package):
    found = upward_imports(package, {"core": 0, "build": 1, "image": 2})
    assert [line.split(" ", 1)[0] for line in found] == ["vllm_forge.core.a:5", "vllm_forge.core.c:1",
                                                          "vllm_forge.core.d:2"]


def test_the_scan_finds_cycles(package):
    assert module_cycles(package) == [["vllm_forge.build.e", "vllm_forge.core.a", "vllm_forge.image.b"],
                                      ["vllm_forge.core.f", "vllm_forge.core.g"]]
    assert wing_cycles(package) == [["build", "core", "image"]]
