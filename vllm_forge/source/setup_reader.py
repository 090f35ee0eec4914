"""Which CMake extension targets a CUDA build of a vLLM checkout builds, read from its setup.py (never run).

vLLM's setup.py appends ``CMakeExtension(name="vllm._C_stable_libtorch")`` and the like to ``ext_modules``
under conditions such as ``if _is_cuda():`` or ``if CUDA_HOME and get_nvcc_cuda_version() >= Version("12.3"):``,
and builds each as the CMake target ``name`` minus ``vllm.`` and ``vllm_flash_attn.`` (its ``target_name``).
``cuda_extension_targets`` walks the module-level statements with ``ast`` and decides those conditions
for a CUDA build from source with a given nvcc and Python; a condition it cannot decide keeps the
extension and says which condition it was.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from vllm_forge.gpu.cuda_release import CudaRelease

# setup.py's platform helpers, as they answer for a CUDA build from source.
_CUDA_BUILD_ANSWERS = {
    "_is_cuda": True, "_build_custom_ops": True, "_is_hip": False, "_is_cpu": False, "_is_tpu": False,
    "_is_xpu": False, "_no_device": False, "_is_neuron": False, "_is_openvino": False,
}
# Names that are constants for a build from source: nothing is taken from a precompiled wheel.
_CUDA_BUILD_NAMES = {"USE_PRECOMPILED_EXTENSIONS": False, "VLLM_USE_PRECOMPILED": False, "CUDA_HOME": True}


@dataclass(frozen=True)
class ExtensionTarget:
    module: str  # vllm.vllm_flash_attn._vllm_fa3_C
    optional: bool  # CMakeExtension(..., optional=True): setup.py goes on when it builds nothing
    condition: str = ""  # the setup.py condition this reader could not decide ("" when none)

    @property
    def target(self) -> str:
        """The CMake target setup.py builds for it (vLLM's ``target_name``)."""
        return self.module.removeprefix("vllm.").removeprefix("vllm_flash_attn.")


def _version(text: str) -> tuple[int, ...] | None:
    match = re.match(r"\s*(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


class _Evaluator:
    """Three-valued evaluation of setup.py's ``if`` tests: True, False, or None (undecided)."""

    def __init__(self, python: tuple[int, int], nvcc: CudaRelease | None):
        self.python = python
        self.nvcc = (nvcc.major, nvcc.minor) if nvcc is not None else None

    def value(self, node: ast.AST):
        """A comparable value for the operands setup.py uses, or None."""
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Tuple):
            items = [self.value(e) for e in node.elts]
            return None if any(i is None for i in items) else tuple(items)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "sys" and node.attr == "version_info":
            return self.python
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "get_nvcc_cuda_version" and not node.args:
                return self.nvcc
            if node.func.id in ("Version", "parse") and len(node.args) == 1 and isinstance(node.args[0], ast.Constant):
                return _version(str(node.args[0].value))
        return None

    def truth(self, node: ast.AST) -> bool | None:
        if isinstance(node, ast.BoolOp):
            results = [self.truth(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return False if False in results else (None if None in results else True)
            return True if True in results else (None if None in results else False)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self.truth(node.operand)
            return None if inner is None else not inner
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
            return _CUDA_BUILD_ANSWERS.get(node.func.id)
        if isinstance(node, ast.Name):
            return _CUDA_BUILD_NAMES.get(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "envs":
            return _CUDA_BUILD_NAMES.get(node.attr)
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, right = self.value(node.left), self.value(node.comparators[0])
            if left is None or right is None:
                return None
            op = node.ops[0]
            try:
                if isinstance(op, ast.GtE):
                    return left >= right
                if isinstance(op, ast.Gt):
                    return left > right
                if isinstance(op, ast.LtE):
                    return left <= right
                if isinstance(op, ast.Lt):
                    return left < right
                if isinstance(op, ast.Eq):
                    return left == right
                if isinstance(op, ast.NotEq):
                    return left != right
            except TypeError:
                return None
        return None


def _extension(ext: ast.AST) -> tuple[str, bool] | None:
    """``CMakeExtension(name="...", optional=...)`` -> (module, optional)."""
    if not (isinstance(ext, ast.Call) and isinstance(ext.func, ast.Name) and ext.func.id.endswith("Extension")):
        return None
    name = ext.args[0] if ext.args else next((k.value for k in ext.keywords if k.arg == "name"), None)
    if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
        return None
    optional = any(k.arg == "optional" and isinstance(k.value, ast.Constant) and k.value.value is True
                   for k in ext.keywords)
    return name.value, optional


def _appended(node: ast.AST) -> tuple[str, bool] | None:
    """``ext_modules.append(CMakeExtension(...))`` -> (module, optional)."""
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
        return None
    call = node.value
    if not (isinstance(call.func, ast.Attribute) and call.func.attr == "append"
            and isinstance(call.func.value, ast.Name) and call.func.value.id == "ext_modules" and call.args):
        return None
    return _extension(call.args[0])


def _listed(node: ast.AST) -> list[tuple[str, bool]]:
    """``ext_modules = [...]`` or ``setup(..., ext_modules=[...])``: the extensions listed there."""
    value = None
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ext_modules" for t in node.targets):
        value = node.value
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
            and isinstance(node.value.func, ast.Name) and node.value.func.id == "setup":
        value = next((k.value for k in node.value.keywords if k.arg == "ext_modules"), None)
    if not isinstance(value, ast.List):
        return []
    return [e for e in (_extension(item) for item in value.elts) if e]


def cuda_extension_targets(setup_text: str, *, python: tuple[int, int] = (3, 12),
                           nvcc: CudaRelease | None = None) -> tuple[ExtensionTarget, ...]:
    """The extensions a CUDA build from source builds, in setup.py's order (empty when it cannot be read)."""
    try:
        tree = ast.parse(setup_text)
    except (SyntaxError, ValueError):
        return ()
    evaluator = _Evaluator(python, nvcc)
    found: list[ExtensionTarget] = []

    def walk(body: list[ast.stmt], undecided: str) -> None:
        for node in body:
            if isinstance(node, ast.If):
                taken = evaluator.truth(node.test)
                test = ast.unparse(node.test)
                if taken is not False:
                    walk(node.body, undecided or ("" if taken else test))
                if taken is not True:
                    walk(node.orelse, undecided or ("" if taken is False else f"not ({test})"))
                continue
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ext_modules"
                                                    for t in node.targets) and not undecided:
                found.clear()  # `ext_modules = []` (or a new list) where it surely runs
            listed = _listed(node)
            appended = _appended(node)
            for module, optional in [*listed, *([appended] if appended else [])]:
                found.append(ExtensionTarget(module, optional, undecided))

    walk(tree.body, "")
    seen: set[str] = set()
    return tuple(t for t in found if not (t.module in seen or seen.add(t.module)))


def resolve_targets(wanted: list[str], available: tuple[ExtensionTarget, ...]) -> list[ExtensionTarget]:
    """``--targets`` words -> the extensions they name: an exact target or module name, else the one target
    that starts with the word (``_C`` -> ``_C_stable_libtorch``). Raises ValueError naming the problem."""
    chosen: list[ExtensionTarget] = []
    for word in wanted:
        word = word.strip()
        if not word:
            continue
        exact = [t for t in available if word in (t.target, t.module)]
        matches = exact or [t for t in available if t.target.startswith(word)]
        if len(matches) != 1:
            names = ", ".join(t.target for t in (matches or available))
            what = "matches several targets" if matches else "is not a target of this build"
            raise ValueError(f"{word!r} {what} ({names})")
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen
