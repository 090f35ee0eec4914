"""How fast `invoke audit` reads real wheels, against unzip + cuobjdump and against the inflate limit.

    python -m scripts.benchmarks.bench_audit /root/.cache/wheels/torch-2.8.0-cp311-cp311-manylinux_2_28_x86_64.whl \\
        /root/.cache/wheels/vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl --repeat 2
    python -m scripts.benchmarks.bench_audit vllm-0.34.0-*.whl --cache cold --repeat 5 --inflaters isal

Per wheel, side by side in one run, rounds interleaved (medians of --repeat rounds, the fastest in
brackets; the machine may be shared, so compare the ratios, not the seconds: the ratio to unzip +
cuobjdump is also taken round by round, each audit against the baseline run next to it; CPU seconds are
printed too, which other users' load does not inflate the way it inflates wall time):

- audit: wall time of ``invoke audit WHEEL --arch 12.0 --json`` (a fresh process: invoke's start,
  the torch probe, the scan, and for a vLLM wheel the analysis of which extensions it imports at start),
  once per inflater (ISA-L, zlib, zlib-ng when installed, chosen with $VLLM_FORGE_INFLATER); its CPU
  seconds from wait4 (the analysis's child process included). The JSON of every inflater must be
  identical. Its peak memory is sampled in an untimed run: the resident sets of the audit and of the
  child that analyses a vLLM wheel's Python, added up every 5 ms (pages they share counted twice).
  Python runs with its bytecode cached in the checkout's __pycache__ folders, written by an untimed run
  first, as an installed package has it (PYTHONDONTWRITEBYTECODE, set on this project's build machine,
  would make every run compile vllm_forge anew: about 0.08 s of an audit).
  ``--cache`` says what that analysis finds in its cache (vllm_forge/audit/vllm_extensions.py): ``warm``
  (the default) an entry, written by an untimed audit first; ``cold`` nothing, a new empty
  $VLLM_FORGE_CACHE for every run (a user's first audit of that wheel, and every build-wheel's audit of
  its own output). The report says which.
- invoke start: ``invoke --list`` (Python, invoke and tasks.py starting), the part of the audit's
  wall time that is not the audit.
- bound: the physical limit of any reader of the wheel: only inflating the members the audit must
  read (every ``*.so``: their section headers are at the end), on as many threads as the audit uses,
  bytes thrown away; once per inflater.
- baseline: ``unzip WHEEL '*.so'`` to a temp dir, then ``cuobjdump --list-elf --list-ptx`` on each
  file; the per-file arch sets must equal the audit's (cuobjdump names a family cubin without its
  ``f``: see vllm_forge/audit/fatbin.py).

Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vllm_forge.audit import audit
from vllm_forge.gpu.toolchain import find_cuda_tool

REPO = Path(__file__).resolve().parents[2]
CHUNK = audit.STREAM_CHUNK


def available_inflaters() -> list[str]:
    found = []
    for name in ("isal", "zlib", "zlib-ng"):
        try:
            audit.raw_inflater(name)
        except audit.ForgeError:
            continue
        found.append(name)
    return found


def candidate_members(wheel: Path) -> list[zipfile.ZipInfo]:
    with zipfile.ZipFile(wheel) as zf:
        return [i for i in zf.infolist() if not i.is_dir() and audit.is_candidate(i.filename)]


def inflate_only(wheel: Path, members: list[zipfile.ZipInfo], inflater: str) -> int:
    """Inflate every member the audit reads, as the audit does (same threads, same chunks), keeping nothing."""
    def one(info: zipfile.ZipInfo) -> int:
        total = 0
        with open(wheel, "rb") as fp:
            fp.seek(info.header_offset)
            local = fp.read(30)
            name_len, extra_len = struct.unpack_from("<HH", local, 26)
            fp.seek(info.header_offset + 30 + name_len + extra_len)
            remaining = info.compress_size
            if info.compress_type == zipfile.ZIP_STORED:
                while remaining > 0 and (block := fp.read(min(CHUNK, remaining))):
                    remaining -= len(block)
                    total += len(block)
                return total
            inflate = audit.raw_inflater(inflater)
            while remaining > 0 and (block := fp.read(min(CHUNK, remaining))):
                remaining -= len(block)
                total += len(inflate.decompress(block, CHUNK))
                while inflate.unconsumed_tail:
                    total += len(inflate.decompress(inflate.unconsumed_tail, CHUNK))
        return total

    ordered = sorted(members, key=lambda i: -i.file_size)
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(one, ordered))


def cpu_seconds() -> float:
    """CPU time of this process so far, all threads (a measure that load on a shared machine does not inflate)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def python_env(**extra: str) -> dict[str, str]:
    """This environment, with Python's bytecode written and read (see the module's docstring)."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}, **extra}


def run_audit(wheel: Path, arch: str, inflater: str, cache: str | None = None,
              sample: bool = False) -> tuple[float, int, dict, float]:
    """(seconds, peak memory bytes, JSON, CPU seconds) of `invoke audit WHEEL --arch ARCH --json` in a fresh process;
    ``cache``: the $VLLM_FORGE_CACHE it runs with (None: this environment's). ``sample``: the peak memory is the
    largest sum of the resident sets of the process and its children, sampled every 5 ms (which costs CPU: use
    it in untimed runs); else 0."""
    env = python_env(VLLM_FORGE_INFLATER=inflater)
    if cache is not None:
        env["VLLM_FORGE_CACHE"] = cache
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "invoke", "audit", str(wheel), "--arch", arch, "--json"],
                                cwd=REPO, env=env, stdout=out, stderr=err)
        peak = 0
        while sample and proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.005)
        _pid, status, usage = os.wait4(proc.pid, 0) if not sample else (proc.pid, proc.returncode << 8, None)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        code = os.waitstatus_to_exitcode(status)
        text = out.read().decode()
        if code not in (0, 1):
            raise SystemExit(f"invoke audit failed ({code}): {err.read().decode()[-800:]}")
    return seconds, peak, json.loads(text), (usage.ru_utime + usage.ru_stime) if usage else 0.0


def tree_rss(pid: int) -> int:
    """The resident set of ``pid`` plus those of its children (bytes; 0 for what has gone)."""
    total = 0
    try:
        children = [int(c) for t in os.listdir(f"/proc/{pid}/task")
                    for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    except OSError:
        children = []
    for one in [pid, *children]:
        try:
            status = Path(f"/proc/{one}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total += int(found.group(1)) * 1024 if found else 0
    return total


def cuobjdump_sets(cuobjdump: Path, path: Path) -> tuple[list[str], list[str]]:
    done = subprocess.run([str(cuobjdump), "--list-elf", "--list-ptx", str(path)], capture_output=True, text=True)
    text = done.stdout + done.stderr
    return (re.findall(r"^ELF file\s+\d+: .*\.(sm_\w+)\.cubin$", text, re.M),
            re.findall(r"^PTX file\s+\d+: .*\.(sm_\w+)\.ptx$", text, re.M))


def baseline(wheel: Path, unzip: str, cuobjdump: Path, out: Path) -> dict[str, tuple[list[str], list[str]]]:
    shutil.rmtree(out, ignore_errors=True)
    done = subprocess.run([unzip, "-o", "-q", str(wheel), "*.so", "*.so.*", "-d", str(out)])
    if done.returncode not in (0, 11):  # 11: one of the patterns matched nothing
        raise SystemExit(f"unzip failed ({done.returncode})")
    return {p.relative_to(out).as_posix(): cuobjdump_sets(cuobjdump, p)
            for p in sorted(out.rglob("*")) if p.is_file() and audit.is_candidate(p.name)}


def same_sets(files: list[dict], listed: dict[str, tuple[list[str], list[str]]]) -> list[str]:
    """Paths whose arch sets differ between the audit's JSON and cuobjdump's listing."""
    bad = []
    for f in files:
        elf, ptx = listed.get(f["path"], ([], []))
        sass = {s[:-1] if s.endswith("f") else s for s in f["sass"]}
        if sass != set(elf) or {p.replace("compute_", "sm_") for p in f["ptx"]} != set(ptx):
            bad.append(f["path"])
    return bad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", type=Path, nargs="+", help="the wheels to audit (paths)")
    parser.add_argument("--repeat", type=int, default=2, help="rounds, a number (medians are reported)")
    parser.add_argument("--arch", default="12.0", help="the --arch the audit is given (default %(default)s)")
    parser.add_argument("--baseline-repeat", type=int, default=None,
                        help="rounds that also run the (slow) unzip + cuobjdump, a number (default: every round)")
    parser.add_argument("--cache", choices=["warm", "cold"], default="warm",
                        help="what the audit finds in the vLLM import-analysis cache: warm (an entry, written by an "
                             "untimed audit first) or cold (an empty cache every run, a user's first audit)")
    parser.add_argument("--inflaters", default="", metavar="NAMES",
                        help="comma-separated inflaters to time the audit with (default: every one installed)")
    args = parser.parse_args(argv)
    baseline_rounds = args.repeat if args.baseline_repeat is None else args.baseline_repeat
    cuobjdump = find_cuda_tool("cuobjdump")
    unzip = shutil.which("unzip")
    if not cuobjdump or not unzip:
        print("needs cuobjdump and unzip on this machine", file=sys.stderr)
        return 2
    inflaters = available_inflaters()
    if args.inflaters:
        asked = [name.strip() for name in args.inflaters.split(",") if name.strip()]
        missing = [name for name in asked if name not in inflaters]
        if missing or audit.INFLATER not in asked:
            print(f"--inflaters: {', '.join(missing) or 'the default'} not usable here (installed: "
                  f"{', '.join(inflaters)}; the list must hold the audit's default, {audit.INFLATER})", file=sys.stderr)
            return 2
        inflaters = asked
    print(f"inflaters: {', '.join(inflaters)} (the audit's default: {audit.INFLATER}); "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print("bytecode: cached, written by an untimed run first (as an installed package has it)")
    print(f"cache: {args.cache} (" + ("an empty $VLLM_FORGE_CACHE for every audit run: a first audit"
                                      if args.cache == "cold" else
                                      "the vLLM import analysis cached by an untimed audit first") + ")")
    failed = False
    for wheel in args.wheels:
        members = candidate_members(wheel)
        inflated = sum(i.file_size for i in members)
        print(f"\n== {wheel.name}: {wheel.stat().st_size / 1e6:.0f} MB, {len(members)} libraries, "
              f"{inflated / 1e6:.0f} MB inflated")
        times: dict[str, list[float]] = {}
        cpu_times: dict[str, list[float]] = {}
        peaks: dict[str, int] = {}
        outputs: dict[str, dict] = {}
        listed = None
        paired: list[float] = []  # baseline / audit, round by round
        with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
            warm = str(Path(tmp) / "cache")
            # untimed: writes the bytecode, fills the cache for --cache warm, and samples the peak memory
            for name in inflaters:
                cache = warm if args.cache == "warm" else tempfile.mkdtemp(prefix="cache-", dir=tmp)
                peaks[name] = run_audit(wheel, args.arch, name, cache, sample=True)[1]
                if cache != warm:
                    shutil.rmtree(cache)
            for round_ in range(args.repeat):
                for name in inflaters:
                    start, cpu = time.perf_counter(), cpu_seconds()
                    assert inflate_only(wheel, members, name) == inflated
                    times.setdefault(f"bound/{name}", []).append(time.perf_counter() - start)
                    cpu_times.setdefault(f"bound/{name}", []).append(cpu_seconds() - cpu)
                    cache = warm if args.cache == "warm" else tempfile.mkdtemp(prefix="cache-", dir=tmp)
                    seconds, _peak, data, cpu = run_audit(wheel, args.arch, name, cache)
                    if cache != warm:
                        shutil.rmtree(cache)
                    times.setdefault(f"audit/{name}", []).append(seconds)
                    cpu_times.setdefault(f"audit/{name}", []).append(cpu)
                    outputs[name] = data
                start = time.perf_counter()
                proc = subprocess.Popen([sys.executable, "-m", "invoke", "--list"], cwd=REPO,
                                        stdout=subprocess.DEVNULL, env=python_env())
                _pid, _status, usage = os.wait4(proc.pid, 0)
                times.setdefault("invoke start", []).append(time.perf_counter() - start)
                cpu_times.setdefault("invoke start", []).append(usage.ru_utime + usage.ru_stime)
                if round_ < baseline_rounds:
                    start = time.perf_counter()
                    listed = baseline(wheel, unzip, cuobjdump, Path(tmp) / "unzipped")
                    times.setdefault("baseline", []).append(time.perf_counter() - start)
                    paired.append(times["baseline"][-1] / times[f"audit/{audit.INFLATER}"][-1])
        best = {k: statistics.median(v) for k, v in times.items()}
        fastest = {k: min(v) for k, v in times.items()}
        default = audit.INFLATER
        reference = outputs[default]
        identical = all(json.dumps(d, sort_keys=True) == json.dumps(reference, sort_keys=True)
                        for d in outputs.values())
        mismatches = same_sets(reference["files"], listed or {})
        devices = [f for f in reference["files"] if f["sass"] or f["ptx"]]
        groups = sum(f["groups"][next(iter(f["groups"]))]["count"] for f in devices if f["groups"])
        print(f"{len(devices)} libraries with device code, {groups} kernel groups")
        best_cpu = {k: statistics.median(v) for k, v in cpu_times.items()}
        print(f"  medians of {args.repeat} rounds (fastest in brackets), cache {args.cache}:")
        for key in sorted(best):
            cpu = f"   CPU {best_cpu[key]:7.2f} s" if key in best_cpu else ""
            print(f"  {key:16} {best[key]:7.2f} s [{fastest[key]:5.2f}]{cpu}")
        audit_s, bound_s = best[f"audit/{default}"], best[f"bound/{default}"]
        print(f"  audit ({default}, {args.cache} cache) vs unzip + cuobjdump: {best['baseline'] / audit_s:5.1f}x "
              "faster "
              f"(round by round: median {statistics.median(paired):.1f}x, {min(paired):.1f}x to {max(paired):.1f}x; "
              "need >= 5x)")
        print(f"  audit ({default}, {args.cache} cache) vs its inflate bound:  {audit_s / bound_s:5.2f}x the bound "
              f"({'need <= 1.5x' if args.cache == 'warm' else 'a first audit also reads the Python'}); "
              f"without invoke's own start ({best['invoke start']:.2f} s): "
              f"{(audit_s - best['invoke start']) / bound_s:.2f}x")
        audit_cpu, bound_cpu = best_cpu[f"audit/{default}"], best_cpu[f"bound/{default}"]
        print(f"  in CPU time (what load does not inflate): audit {audit_cpu / bound_cpu:.2f}x the bound, "
              f"{(audit_cpu - best_cpu['invoke start']) / bound_cpu:.2f}x without invoke's own start")
        for name in inflaters:
            if name != "zlib" and "bound/zlib" in best:
                print(f"  inflate {name} vs zlib: {best['bound/zlib'] / best[f'bound/{name}']:.2f}x faster; "
                      f"audit {best['audit/zlib'] / best[f'audit/{name}']:.2f}x faster")
        print("  peak memory of the audit (its resident set and its analysis child's, added up; sampled in an "
              "untimed run): " + ", ".join(f"{n} {p / 2**20:.0f} MiB" for n, p in peaks.items()))
        print("  JSON identical for every inflater" if identical else "  JSON DIFFERS between inflaters")
        print("  arch sets identical to cuobjdump for every file" if not mismatches
              else f"  MISMATCH with cuobjdump in {', '.join(mismatches)}")
        failed |= bool(mismatches) or not identical
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
