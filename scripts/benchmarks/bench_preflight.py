"""How long the checks before a build take on a real vLLM tree (issue 26: under a second).

    python -m scripts.benchmarks.bench_preflight --tree ~/src/vllm-0.26.0 [--runs 7]

Times, in this process, each run after one warm-up: ``inspect_tree`` (what the checkout asks), ``run_preflight``
(vllm_forge/build/preflight.py: the build Python probed in a child, build requirements compared, torch, host compiler
against nvcc's own limits, CMake, version source, git dependencies) and the whole ``plan_build`` (the two above,
nvcc found, the kernel key hashed over csrc/ and cmake/). So that every check runs to its end on any machine,
the git dependencies get placeholder cache entries and, where no torch is installed, a stand-in torch
(``version.py`` only) is put on the build Python's path; unmet build requirements are counted, not refused.
Prints the median and the slowest run of each, in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from vllm_forge.build.build_wheel import BuildRequest, plan_build
from vllm_forge.build.preflight import run_preflight
from vllm_forge.deps import fetch_deps
from vllm_forge.gpu.cuda_arch import CudaArch
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.gpu.toolchain import find_cuda_toolchain
from vllm_forge.source.vllm_tree import inspect_tree


def _placeholders(tree, cache: Path) -> None:
    for dep in tree.git_deps:
        path = fetch_deps.dep_dir(cache, dep)
        path.mkdir(parents=True, exist_ok=True)
        path.with_name(path.name + fetch_deps.MARKER_SUFFIX).write_text(
            json.dumps({"name": dep.name, "repository": dep.repository, "tag": dep.tag}))


def _stand_in_torch(site: Path, pin: str | None, cuda: CudaRelease) -> None:
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("")
    (site / "torch" / "version.py").write_text(f"__version__ = '{pin or '2.11.0'}+{cuda.tag}'\n"
                                               f"cuda = '{cuda}'\nhip = None\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[2] / "tests/fixtures/minivllm",
                        help="a vLLM source tree (default: the miniature)")
    parser.add_argument("--runs", type=int, default=7, help="timed runs after one warm-up")
    args = parser.parse_args(argv)
    timings: dict[str, list[float]] = {"inspect_tree": [], "run_preflight": [], "plan_build": []}
    with tempfile.TemporaryDirectory(prefix="bench-preflight-") as tmp:
        tmp = Path(tmp)
        tree = inspect_tree(args.tree)
        toolchain = find_cuda_toolchain()
        _placeholders(tree, tmp / "cache")
        try:
            import importlib.util
            has_torch = importlib.util.find_spec("torch") is not None
        except ValueError:
            has_torch = False
        if not has_torch:
            _stand_in_torch(tmp / "site", tree.torch_pin, toolchain.version)
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp / "site"), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, **toolchain.env}
        request = BuildRequest(src=args.tree, dist_dir=tmp / "dist", archs=[CudaArch(9, 0)], cache_dir=tmp / "cache",
                               install_build_deps=True, compile_cache="none")
        for run in range(args.runs + 1):
            started = time.perf_counter()
            tree = inspect_tree(args.tree)
            inspected = time.perf_counter()
            checked = run_preflight(tree, python=sys.executable, toolchain=toolchain, env=env, cache_dir=tmp / "cache",
                                    needs_torch=True, install_requirements=True)
            preflighted = time.perf_counter()
            plan_build(request, check_tools=False, preflight=True)
            planned = time.perf_counter()
            if run:  # the first run warms the file cache and the imports
                timings["inspect_tree"].append(inspected - started)
                timings["run_preflight"].append(preflighted - inspected)
                timings["plan_build"].append(planned - preflighted)
    label = f"vLLM {tree.version}" if tree.kind == "vllm" else tree.kind
    print(f"{label} at {args.tree}: {args.runs} runs"
          + ("" if has_torch else " (a stand-in torch version.py on the path: no torch installed here)"))
    print(f"  build requirements to install: {len(checked.unmet)}; notes: {len(checked.notes)}")
    for name, values in timings.items():
        print(f"  {name:14} median {statistics.median(values):.3f} s   slowest {max(values):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
