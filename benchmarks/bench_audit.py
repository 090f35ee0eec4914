"""How fast `audit` reads a real wheel, against unzip + cuobjdump over the same .so files.

    python benchmarks/bench_audit.py /work/cache/vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl --repeat 3

Both sides are timed end to end, best of --repeat:

- audit: ``audit_path(wheel, [...])`` in this process: every ``*.so`` member inflated from the zip
  in memory and scanned as it streams (nothing written to disk).
- baseline: ``unzip -o -q WHEEL '*.so' -d TMP`` then ``cuobjdump --list-elf --list-ptx`` on each file.

It then checks that both found the same arch sets for every file (cuobjdump names family cubins
without their ``f``: see scripts/fatbin.py), and prints the figures. It also times the scanner on the
unpacked files (seeks only, for a .so on disk) against cuobjdump alone.
Not a test: timings depend on the machine.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.audit import audit_path  # noqa: E402
from scripts.fatbin import list_device_code  # noqa: E402
from scripts.toolchain import find_cuda_tool  # noqa: E402


def cuobjdump_sets(cuobjdump: Path, path: Path) -> tuple[list[str], list[str]]:
    done = subprocess.run([str(cuobjdump), "--list-elf", "--list-ptx", str(path)], capture_output=True, text=True)
    text = done.stdout + done.stderr
    return (re.findall(r"^ELF file\s+\d+: .*\.(sm_\w+)\.cubin$", text, re.M),
            re.findall(r"^PTX file\s+\d+: .*\.(sm_\w+)\.ptx$", text, re.M))


def best(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    cuobjdump = find_cuda_tool("cuobjdump")
    unzip = shutil.which("unzip")
    if not cuobjdump or not unzip:
        print("needs cuobjdump and unzip on this machine", file=sys.stderr)
        return 2
    print(f"wheel: {args.wheel.name} ({args.wheel.stat().st_size / 1e6:.0f} MB)")

    audit_s, report = best(lambda: audit_path(args.wheel, ["sm_120"]), args.repeat)

    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        out = Path(tmp) / "unzipped"

        def baseline():
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run([unzip, "-o", "-q", str(args.wheel), "*.so", "-d", str(out)], check=True)
            return {p.relative_to(out).as_posix(): cuobjdump_sets(cuobjdump, p) for p in sorted(out.rglob("*.so"))}

        base_s, listed = best(baseline, args.repeat)
        files = sorted(out.rglob("*.so"))
        disk_s, on_disk = best(lambda: {p.relative_to(out).as_posix(): list_device_code(p) for p in files}, args.repeat)
        cuobj_s, _ = best(lambda: [cuobjdump_sets(cuobjdump, p) for p in files], args.repeat)
        unpacked_mb = sum(p.stat().st_size for p in files) / 1e6

    mismatches = []
    for f in report.files:
        elf, ptx = listed[f.path]
        ours = on_disk[f.path]
        if (sorted({s.removesuffix("f") if s[-1] == "f" else s for s in f.sass}) != sorted(set(elf))
                or sorted({p.replace("compute_", "sm_") for p in f.ptx}) != sorted(set(ptx))
                or ours.cuobjdump_listing() != (elf, ptx)):
            mismatches.append(f.path)
    print(f"{len(report.files)} .so files, {unpacked_mb:.0f} MB unpacked, "
          f"{sum(len(v[0]) + len(v[1]) for v in listed.values())} device images")
    print(f"audit (wheel, streamed)      : {audit_s:6.2f} s")
    print(f"unzip + cuobjdump            : {base_s:6.2f} s   -> audit is {base_s / audit_s:.1f}x faster")
    print(f"scanner on the unpacked .so  : {disk_s:6.3f} s")
    print(f"cuobjdump on the unpacked .so: {cuobj_s:6.2f} s   -> scanner is {cuobj_s / disk_s:.0f}x faster")
    print("arch sets identical to cuobjdump for every file" if not mismatches
          else f"MISMATCH in {', '.join(mismatches)}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
