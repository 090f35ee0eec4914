"""The rule `nox -s mutants` uses to leave message-only mutants out of the score (tests/mutation_score.py)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tests import mutation_score

ORIGINAL = '''
def check(x, jobs):
    if x < 0:
        raise ForgeError(f"x is {x}", f"pass --jobs {max(1, jobs)}", exit_code=3)
    parser.add_argument("--x", help="the x")
    return "ok: " + str(x)
'''


def func(source: str) -> ast.FunctionDef:
    return ast.parse(source).body[0]


@pytest.mark.parametrize("old, new", [
    ('f"x is {x}"', '"XXx isXX"'),
    ('f"pass --jobs {max(1, jobs)}"', "None"),
    ('f"pass --jobs {max(1, jobs)}"', 'f"pass --jobs {max(2, jobs)}"'),
    ('f"x is {x}", f"pass --jobs {max(1, jobs)}", ', 'f"x is {x}", '),
    ('help="the x"', 'help="XXthe xXX"'),
    (', help="the x"', ""),
])
def test_text_of_an_exception_or_help_is_message_only(old, new):
    assert old in ORIGINAL
    assert mutation_score.is_message_only(func(ORIGINAL), func(ORIGINAL.replace(old, new)))


@pytest.mark.parametrize("old, new", [
    ("x < 0", "x <= 0"),
    ("exit_code=3", "exit_code=4"),
    ('"ok: "', '"XXok: XX"'),   # a returned string is a result, not a message
    ('"--x"', '"XX--xXX"'),     # the option name is behaviour; only its help is text
])
def test_anything_else_counts(old, new):
    assert old in ORIGINAL
    assert not mutation_score.is_message_only(func(ORIGINAL), func(ORIGINAL.replace(old, new)))


def test_score_leaves_out_message_only_and_equivalent(tmp_path, monkeypatch):
    mutated = tmp_path / "mutants" / "scripts" / "m.py"
    mutated.parent.mkdir(parents=True)
    variants = {"orig": ORIGINAL, "1": ORIGINAL.replace("x < 0", "x <= 0"),
                "2": ORIGINAL.replace('help="the x"', 'help=None'), "3": ORIGINAL.replace("< 0", "< 1"),
                "4": ORIGINAL.replace('"ok: "', '"OK: "')}
    mutated.write_text("\n".join(src.replace("def check", f"def x_check__mutmut_{n}") for n, src in variants.items()))
    codes = {"1": 1, "2": 0, "3": 0, "4": 33}
    Path(f"{mutated}.meta").write_text(json.dumps(
        {"exit_code_by_key": {f"scripts.m.x_check__mutmut_{n}": code for n, code in codes.items()}}))
    monkeypatch.setattr(mutation_score, "EQUIVALENT", {"scripts.m.x_check__mutmut_3": ("if x < 1:", "test")})
    stale: list[str] = []
    score = mutation_score.score_module(tmp_path, "scripts/m.py", stale)
    assert (score.total, score.message_only, score.equivalent, score.counted, score.counted_killed) == (4, 1, 1, 2, 1)
    assert score.score == 50.0 and score.survivors == ["scripts.m.x_check__mutmut_4"] and stale == []
    monkeypatch.setattr(mutation_score, "EQUIVALENT", {"scripts.m.x_check__mutmut_3": ("if x > 7:", "test")})
    score = mutation_score.score_module(tmp_path, "scripts/m.py", stale)
    assert score.equivalent == 0 and stale == ["scripts.m.x_check__mutmut_3"]
    # a mutant listed as equivalent that a test kills was not equivalent: it counts
    monkeypatch.setattr(mutation_score, "EQUIVALENT", {"scripts.m.x_check__mutmut_1": ("if x <= 0:", "test")})
    stale.clear()
    score = mutation_score.score_module(tmp_path, "scripts/m.py", stale)
    assert score.equivalent == 0 and score.counted_killed == 1 and stale == ["scripts.m.x_check__mutmut_1"]
