"""Score a mutmut run per module, leaving out mutants that only change message text.

    python tests/mutation_score.py WORKDIR vllm_forge/gpu/archs.py vllm_forge/gpu/compat.py ...

WORKDIR is where `mutmut run` ran (it holds mutants/). `nox -s mutants` calls this after mutmut; the
rules are in docs/testing.md:

- message-only: the mutant differs from the original function only inside the text arguments of an
  exception constructor (``ForgeError(problem, fix)``, ``ValueError(...)``: any call whose name ends in
  Error/Exception/Warning; its ``exit_code=`` keyword is behaviour and still counts) or inside an
  argparse ``help=``/``description=``/``epilog=`` keyword. Found by comparing the two functions' ASTs
  with those arguments blanked, so a removed argument or an ``"XX"`` around a literal both count.
- equivalent: listed in ``EQUIVALENT`` below with the line only the mutant has and why no test can
  tell it apart; an entry whose line no longer matches its mutant, or whose mutant a test killed after
  all, is reported and counted.
- killed: mutmut's killed and timeout (a mutant that hangs is caught); survived and "no tests" (no unit
  test calls the function) are not killed.

Score = killed / (mutants - message-only - equivalent).
"""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Equivalent mutants: mutant name -> (a line only the mutant has, why no test can tell it from the original).
# The line keeps an entry honest: once the function changes and mutmut renumbers, the entry stops matching
# and the mutant is counted again (and reported as stale).
EQUIVALENT: dict[str, tuple[str, str]] = {
    "vllm_forge.gpu.archs.x_check_archs_for_cuda__mutmut_28": (
        "_version_key(minor) >= _version_key(last):",
        "minor == last means this CUDA is the newest that accepts the arch, so the arch was accepted and "
        "skipped above; no CUDA row drops an arch and takes it back"),
    "vllm_forge.gpu.archs.x_detect_local_archs__mutmut_1": (
        "caps: list[str] = None",
        "caps is only read as `not caps` until it is reassigned; None and [] are both falsy"),
    "vllm_forge.gpu.archs.x_detect_local_archs__mutmut_29": (
        "caps = None", "as above: the except branch's value is only read as `not caps`"),
    "vllm_forge.gpu.archs.x_parse_arch_list__mutmut_4": (
        "not str(None).strip()",
        "an empty spec then has no words, and the no-arch check after the loop raises the same error"),
    "vllm_forge.gpu.compat.x__sm__mutmut_1": (
        "return frozenset(None)",
        "_sm only builds the module's tables at import, before mutmut switches a mutant on; a mutant that broke "
        "them would fail every import, not one test"),
    "vllm_forge.gpu.compat.x_nccl_min_for_capability__mutmut_17": (
        "k_minor >= best[0]",
        "the rows are distinct capabilities, so within one major k_minor never equals best[0]"),
    "vllm_forge.gpu.archs.x_parse_arch_token__mutmut_72": (
        'or "XXXX").lower() == "virtual"', 'the default only has to differ from "virtual"; "xxxx" does'),
}
MESSAGE_KEYWORDS = ("help", "description", "epilog")
KEPT_EXCEPTION_KEYWORDS = ("exit_code",)
KILLED_CODES = {1, 3, 36, 24, -24, 152, 255}  # killed, pytest internal error, timeouts (mutmut's stats.py)
SURVIVED_CODES = {0, 5, 33}  # survived, no tests collected, no test covers the function


def _call_name(node: ast.Call) -> str:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return ""


class _BlankMessages(ast.NodeTransformer):
    def visit_Call(self, node: ast.Call) -> ast.AST:
        if _call_name(node).endswith(("Error", "Exception", "Warning")):
            node.args = [ast.Constant("<message>")]
            node.keywords = [k for k in node.keywords if k.arg in KEPT_EXCEPTION_KEYWORDS]
        node.keywords = [k for k in node.keywords if k.arg not in MESSAGE_KEYWORDS]  # set, changed or dropped
        self.generic_visit(node)
        return node


def _shape(func: ast.AST, *, blank_messages: bool) -> str:
    func = ast.parse(ast.unparse(func))  # a copy, and no line numbers in the dump
    if blank_messages:
        func = _BlankMessages().visit(func)
    body = func.body[0]
    body.name = "f"
    return ast.dump(body)


def is_message_only(original: ast.AST, mutant: ast.AST) -> bool:
    """True when the mutant changes nothing but exception or help text."""
    if _shape(original, blank_messages=False) == _shape(mutant, blank_messages=False):
        return False  # identical code (should not happen): let the test result speak
    return _shape(original, blank_messages=True) == _shape(mutant, blank_messages=True)


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "__mutmut_" in node.name:
            found[node.name] = node
    return found


@dataclass
class ModuleScore:
    path: str
    total: int = 0
    killed: int = 0
    message_only: int = 0
    message_only_killed: int = 0
    equivalent: int = 0
    not_run: int = 0
    survivors: list[str] = field(default_factory=list)

    @property
    def counted(self) -> int:
        return self.total - self.message_only - self.equivalent

    @property
    def counted_killed(self) -> int:
        return self.killed - self.message_only_killed

    @property
    def score(self) -> float:
        return 100.0 * self.counted_killed / self.counted if self.counted else 100.0


def score_module(workdir: Path, path: str, stale: list[str]) -> ModuleScore:
    mutated = workdir / "mutants" / path
    meta = json.loads(Path(f"{mutated}.meta").read_text())
    text = mutated.read_text()
    functions = _functions(ast.parse(text))
    module = path.removesuffix(".py").replace("/", ".")
    result = ModuleScore(path)
    for key, code in sorted(meta["exit_code_by_key"].items()):
        name = key.removeprefix(module + ".")
        mutant = functions[name]
        original = functions[name.rsplit("__mutmut_", 1)[0] + "__mutmut_orig"]
        result.total += 1
        killed = code in KILLED_CODES
        if code not in KILLED_CODES | SURVIVED_CODES:
            result.not_run += 1  # not checked, suspicious, segfault: neither counted as killed nor hidden
        entry = EQUIVALENT.get(key)
        if entry is not None:
            line = entry[0].strip()
            source, original_source = ast.get_source_segment(text, mutant), ast.get_source_segment(text, original)
            matches = line in source and line not in original_source
            if matches and not killed:
                result.equivalent += 1
                continue
            stale.append(key)  # renumbered, or killed: then it was not equivalent in this version
        if is_message_only(original, mutant):
            result.message_only += 1
            result.message_only_killed += killed
            result.killed += killed
            continue
        result.killed += killed
        if not killed:
            result.survivors.append(key)
    return result


def main(argv: list[str]) -> int:
    workdir, paths = Path(argv[0]), argv[1:]
    stale: list[str] = []
    scores = [score_module(workdir, path, stale) for path in paths]
    print(f"{'module':28} {'mutants':>7} {'killed':>7} {'all %':>6} {'message':>7} {'equiv':>5} "
          f"{'counted':>7} {'killed':>7} {'score %':>7}")
    for s in scores:
        overall = 100.0 * s.killed / s.total if s.total else 100.0
        print(f"{s.path:28} {s.total:7} {s.killed:7} {overall:6.1f} {s.message_only:7} {s.equivalent:5} "
              f"{s.counted:7} {s.counted_killed:7} {s.score:7.1f}")
    for s in scores:
        if s.not_run:
            print(f"warning: {s.not_run} mutant(s) of {s.path} were not run to a verdict (see `mutmut results`)")
    for key in stale:
        print(f"warning: EQUIVALENT entry {key} does not match its mutant or was killed; it was counted")
    survivors = [key for s in scores for key in s.survivors]
    if survivors:
        print(f"{len(survivors)} counted survivor(s); `mutmut show NAME` in {workdir} prints one:")
        for key in survivors:
            print(f"  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
