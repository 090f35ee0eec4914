"""The parsers a hostile file reaches stay linear in time and bounded in memory (issue 27).

Each case is an input that blew up: time is compared between two sizes of the same input (8x apart), best
of three, so a loaded machine slows both alike; linear growth is about 8x, the quadratic and exponential
ones were 64x and more. scripts/benchmarks/bench_parsers.py prints the same cases up to 100x the size that was
the worst case.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.benchmarks.bench_parsers import (
    ChunkStream,
    cmake_elseif,
    cmake_matches,
    cmake_nesting,
    nccl_blank_lines,
    vllm_tree_with,
    whiteout_image_chunks,
)
from vllm_forge.audit import audit
from vllm_forge.nccl import nccl_logs
from vllm_forge.source import vllm_tree

REPO = Path(__file__).resolve().parents[2]
GROWTH = 8  # the larger input is this many times the smaller
SLACK = 3  # linear growth may look this much worse on a busy machine; quadratic is GROWTH times worse


def best_of(run, size: int, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run(size)
        times.append(time.perf_counter() - started)
    return min(times)


def assert_linear(run, small: int) -> None:
    run(small)  # warm: imports, caches
    ratio = best_of(run, small * GROWTH) / max(best_of(run, small), 1e-4)
    assert ratio < GROWTH * SLACK, f"{GROWTH}x the input took {ratio:.0f}x the time"


def test_nccl_blank_lines_are_linear():
    """The finding: `^\\s*Product Name` with re.M ran across every blank line from every line start."""
    assert_linear(lambda n: nccl_logs.find_root_cause(nccl_logs.diagnose_texts([("x.log", nccl_blank_lines(n))])),
                  20_000)


def test_image_tar_whiteouts_are_linear():
    """The finding: every whiteout scanned every file of the layers below."""
    def scan(n: int) -> None:
        found = audit.scan_image_tar(io.BufferedReader(ChunkStream(whiteout_image_chunks(n)), 1 << 16), "x.tar")
        assert len(found) == n

    assert_linear(scan, 1_000)


@pytest.mark.parametrize("make, small", [(cmake_elseif, 100), (cmake_nesting, 100)], ids=["elseif", "nesting"])
def test_cmake_guards_are_linear(tmp_path, make, small):
    """Every command used to carry a copy of all its enclosing conditions (n elseifs: n^2 of them)."""
    def read(n: int) -> None:
        vllm_tree.inspect_tree(vllm_tree_with(tmp_path / str(n), make(n)))

    assert_linear(read, small)


def test_a_catastrophic_matches_is_linear_and_still_answered(tmp_path):
    """The finding: `if("aaaa...!" MATCHES "^(a+)+$")` doubles Python's re's time with each character."""
    scope = vllm_tree.CMakeScope()
    condition = vllm_tree.parse_cmake(cmake_matches(30))[0].args
    started = time.perf_counter()
    assert vllm_tree.evaluate_condition(condition, scope) is False  # RE2 answers it: no match
    assert time.perf_counter() - started < 5  # seconds; Python's re: about 2^30 steps
    good = vllm_tree.parse_cmake('if("12.8" MATCHES "^1[0-9]\\\\.([0-9]+)$")\nendif()')[0].args
    assert vllm_tree.evaluate_condition(good, scope) is True
    for tree_size in (24, 24 * GROWTH):  # and inside a whole tree
        vllm_tree.inspect_tree(vllm_tree_with(tmp_path / str(tree_size), cmake_matches(tree_size)))


def test_a_regex_re2_does_not_take_is_undecided():
    backref = vllm_tree.parse_cmake('if("aa" MATCHES "(a)\\\\1")\nendif()')[0].args
    assert vllm_tree.evaluate_condition(backref, vllm_tree.CMakeScope()) is None


DOUBLING_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from pathlib import Path
from scripts.benchmarks.bench_parsers import cmake_doubling, vllm_tree_with
from vllm_forge.source import vllm_tree
commands, scope = vllm_tree.walk_cmake(vllm_tree_with(Path(sys.argv[1]), cmake_doubling(60)))
print(json.dumps({"X": scope.vars.get("X")}))
"""


def test_doubling_a_variable_sixty_times_stays_in_memory(tmp_path):
    """The finding: forty `set(X "${X}${X}")` lines exhausted memory. In a child capped at 1 GiB: 2^61 bytes
    would be needed; past MAX_VALUE the value is unknown instead."""
    proc = subprocess.run([sys.executable, "-c", DOUBLING_CHILD, str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {"X": None}


@pytest.mark.parametrize("condition", ["(" * 5000 + "A" + ")" * 5000, "NOT " * 5000 + "A"], ids=["parens", "nots"])
def test_a_deep_condition_is_undecided_or_answered_never_a_crash(condition):
    args = vllm_tree.parse_cmake(f"if({condition})\nendif()")[0].args
    assert vllm_tree.evaluate_condition(args, vllm_tree.CMakeScope({"A": "1"})) in (None, True)
    assert vllm_tree.evaluate_condition(vllm_tree.parse_cmake("if(NOT NOT A)\nendif()")[0].args,
                                        vllm_tree.CMakeScope({"A": "1"})) is True


def test_comments_are_read_without_copying_the_rest_of_the_file():
    assert_linear(lambda n: vllm_tree.parse_cmake("#[[x]]\n#c\n" * n + "set(X 1)\n"), 5_000)
