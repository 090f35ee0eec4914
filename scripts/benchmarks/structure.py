"""The product's structure in numbers: modules, lines, long functions, sys.path edits, import arrows.

    python -m scripts.benchmarks.structure                                  # this checkout
    python -m scripts.benchmarks.structure --json
    python -m scripts.benchmarks.structure --root /tmp/old --package scripts  # a tree from before the move

Reads source only (nothing is imported from the tree measured). For each module of the package: its lines;
every function (methods and nested ones too) longer than 80 lines, from ``def`` to its last line; the
``sys.path`` edits in the whole tree (product, tasks.py, noxfile, benchmarks and tests, code in strings too);
the import arrows between the package's modules (module level and inside functions, and a module's name as a
whole string: ``import_module``, a program run with ``python -m``), their cycles, the arrows between wings,
and the arrows that run upward against ``vllm_forge.LAYERS``. In a flat package (``scripts/`` before issue
28) a module's wing is the one where this checkout's ``vllm_forge/`` keeps a module of that name (a module
that was split: the wing named like it).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter
from pathlib import Path

from vllm_forge import LAYERS
from vllm_forge.core.package import PACKAGE_DIR, PACKAGE_ROOT, module_references

LONG = 80
SKIP_TOP = {".git", ".nox", "build", "dist", "mutants", ".venv", "reports"}  # outputs at the tree's root
SKIP_ANY = {"__pycache__", "fixtures"}


def _sources(root: Path) -> list[Path]:
    def kept(path: Path) -> bool:
        parts = path.relative_to(root).parts
        return parts[0] not in SKIP_TOP and not SKIP_ANY & set(parts)

    return sorted(p for p in root.rglob("*.py") if kept(p))


def _module_name(path: Path, package_dir: Path) -> str:
    rel = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def wing_of(module: str, flat: bool, new_modules: dict[str, str]) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return ""  # the package itself
    if not flat:
        return parts[1]
    return new_modules.get(parts[1], parts[1])


def long_functions(tree: ast.AST) -> list[tuple[str, int]]:
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if length > LONG:
                        found.append((name, length))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def sys_path_edits(path: Path) -> list[int]:
    """Lines that change sys.path: calls on it, assignments to it, and the same inside code kept in strings."""
    text = path.read_text()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    lines = []
    for node in ast.walk(tree):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
            if node.func.attr not in ("insert", "append", "extend", "remove", "pop", "clear"):
                target = None
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                target = t.value if isinstance(t, ast.Subscript) else t
        if isinstance(target, ast.Attribute) and target.attr == "path" and getattr(target.value, "id", "") == "sys":
            lines.append(node.lineno)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "\n" in node.value and any(
                s in node.value for s in ("sys.path.insert(", "sys.path.append(", "sys.path[0] =")):  # code
            lines.append(node.lineno)
    return sorted(set(lines))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def parse_layers(text: str) -> tuple[tuple[str, ...], ...]:
    """``core<gpu<source,deps<...``: the layers lowest first, the wings of one layer separated by commas."""
    return tuple(tuple(w.strip() for w in layer.split(",") if w.strip()) for layer in text.split("<"))


def measure(root: Path, package: str, layers: tuple[tuple[str, ...], ...] = LAYERS) -> dict:
    package_dir = root / package
    flat = not any(p.is_dir() and (p / "__init__.py").is_file() for p in package_dir.iterdir())
    new_modules = {p.stem: _module_name(p, PACKAGE_DIR).split(".")[1] for p in PACKAGE_DIR.rglob("*.py")
                   if p.stem != "__init__" and p.parent != PACKAGE_DIR}
    layer = {wing: i for i, wings in enumerate(layers) for wing in wings}
    files = [p for p in _sources(root) if p.is_relative_to(package_dir)]
    modules, functions, graph, upward = {}, [], {}, []
    arrows: set[tuple[str, str, str, str]] = set()  # (module, wing, imported module, its wing)
    for path in files:
        name = _module_name(path, package_dir)
        if path.name != "__init__.py":
            modules[name] = len(path.read_text().splitlines())
        functions += [(f"{name}.{fn}", n) for fn, n in long_functions(ast.parse(path.read_text()))]
        refs = module_references(path, package_dir)
        graph[name] = {target for target, _ in refs if target != name}
        for target, line in refs:
            a, b = wing_of(name, flat, new_modules), wing_of(target, flat, new_modules)
            if target == name or not a or not b:
                continue
            arrows.add((name, a, target, b))
            if a != b and layer.get(b, -1) > layer.get(a, -1):
                upward.append(f"{name}:{line} -> {target}  ({a} -> {b})")
    tasks = root / "tasks.py"
    if tasks.is_file():
        functions += [(f"tasks.{fn}", n) for fn, n in long_functions(ast.parse(tasks.read_text()))]
    edits = {str(p.relative_to(root)): e for p in _sources(root) if (e := sys_path_edits(p))}
    return {
        "package": package, "layers": [list(w) for w in layers], "modules": len(modules),
        "packages": sum(1 for p in files if p.name == "__init__.py"),
        "lines": sum(modules.values()),
        "lines_per_module": dict(sorted(modules.items(), key=lambda kv: -kv[1])),
        "functions_over_80": dict(sorted(functions, key=lambda kv: -kv[1])),
        "sys_path_edits": edits, "sys_path_edit_count": sum(len(v) for v in edits.values()),
        "import_arrows": sum(len(v) for v in graph.values()),
        "wing_arrows": {f"{a} -> {b}": n for (a, b), n in sorted(Counter((a, b) for _, a, _, b in arrows
                                                                         if a != b).items())},
        "cycles": cycles(graph), "upward": sorted(set(upward)),
    }


def render(data: dict) -> list[str]:
    lines = [f"package {data['package']}/: {data['modules']} modules (besides {data['packages']} __init__.py), "
             f"{data['lines']} lines",
             f"layers, lowest first: {' < '.join('/'.join(wings) for wings in data['layers'])}", "",
             "lines per module:"]
    lines += [f"  {n:6}  {name}" for name, n in data["lines_per_module"].items()]
    lines += ["", f"functions over {LONG} lines: {len(data['functions_over_80'])}"]
    lines += [f"  {n:6}  {name}" for name, n in data["functions_over_80"].items()]
    lines += ["", f"sys.path edits: {data['sys_path_edit_count']} in {len(data['sys_path_edits'])} files"]
    lines += [f"  {path}: line {', '.join(map(str, found))}" for path, found in data["sys_path_edits"].items()]
    lines += ["", f"import arrows between modules: {data['import_arrows']}; of them between wings (module pairs):"]
    lines += [f"  {n:4}  {arrow}" for arrow, n in data["wing_arrows"].items()]
    lines += ["", f"import cycles: {len(data['cycles'])}"] + [f"  {' <-> '.join(c)}" for c in data["cycles"]]
    lines += ["", f"imports that run upward: {len(data['upward'])}"] + [f"  {u}" for u in data["upward"]]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the structure of the product: modules, lines, long "
                                                 "functions, sys.path edits, import arrows, cycles, upward imports.")
    parser.add_argument("--root", type=Path, default=PACKAGE_ROOT,
                        help="DIR: the repository to measure (default: this checkout)")
    parser.add_argument("--package", default=PACKAGE_DIR.name,
                        help="NAME: its package directory (default vllm_forge; scripts for a tree before issue 28)")
    parser.add_argument("--layers", type=parse_layers, default=LAYERS,
                        help="WING<WING,WING<...: another wing order to judge the imports by (default: "
                             "vllm_forge.LAYERS)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    data = measure(args.root.resolve(), args.package, args.layers)
    print(json.dumps(data, indent=2) if args.json else "\n".join(render(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
