"""Time and peak memory against input size, for the three parsers a hostile file reaches.

    python -m scripts.benchmarks.bench_parsers                 # from the repo root; every case, up to 100x
    python -m scripts.benchmarks.bench_parsers --max-factor 10 --case nccl-blank-lines

Each case is an input found to blow up (issue 27), grown from the size that was "today's worst case" to
100 times it: linear time shows as a constant time per unit, in the last column. Every measurement runs
in a fresh process (its peak RSS comes from the kernel through wait4), so one case's memory never
inflates another's. The machine may be shared: compare a case's rows with each other, not with another
day's run.

- nccl-blank-lines: `nccl-diagnose` on a file of newlines and one word (`^\\s*Product Name` with re.M made
  it quadratic: 250 KB took 92 s, 500 KB 245 s).
- cmake-matches: `plan`'s CMake reader on `if("aaaa...!" MATCHES "^(a+)+$")` (exponential in Python's re:
  24 characters took 7 s). cmake-doubling: N lines of `set(X "${X}${X}")` (forty exhausted memory).
  cmake-elseif / cmake-nesting: N elseif branches / N nested ifs, each with a set() (guards were
  copied whole into every command).
- image-tar-whiteouts: the image audit on a `docker save` tar whose first layer has N library files and
  whose second has N whiteouts (every whiteout scanned every file: 16k entries took 33 s). The tar is
  generated as it is read, so its size costs no memory here.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# --- the hostile inputs (tests/unit/test_hostile_parsers.py uses these too) ---------------------------------


def nccl_blank_lines(size: int) -> str:
    return "\n" * size + "x"


def cmake_matches(size: int) -> str:
    return f'if("{"a" * size}!" MATCHES "^(a+)+$")\n  set(MATCHED 1)\nendif()\n'


def cmake_doubling(size: int) -> str:
    return 'set(X "ab")\n' + 'set(X "${X}${X}")\n' * size


def cmake_elseif(size: int) -> str:
    return "if(A)\n" + "".join(f"elseif(B{i})\n  set(X {i})\n" for i in range(size)) + "endif()\n"


def cmake_nesting(size: int) -> str:
    return "".join(f"if(A{i})\n  set(X {i})\n" for i in range(size)) + "endif()\n" * size


def vllm_tree_with(root: Path, cmake: str) -> Path:
    """A minimal tree `inspect_tree` takes, with ``cmake`` as its CMakeLists.txt."""
    (root / "vllm").mkdir(parents=True, exist_ok=True)
    (root / "setup.py").write_text("")
    (root / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.26.0\n")
    (root / "CMakeLists.txt").write_text(cmake)
    return root


ELF_STUB = b"\x7fELF\x02\x01\x01" + b"\0" * 57  # an ELF header cut short: scanned, and reported unreadable


def _tar_entry(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)


def _layer_chunks(entries: Iterator[tuple[str, bytes]]) -> Iterator[bytes]:
    for name, data in entries:
        yield _tar_entry(name, data)
    yield b"\0" * 1024


def _layer_size(entries: Iterator[tuple[str, bytes]]) -> int:
    return sum(512 + len(data) + (-len(data) % 512) for _, data in entries) + 1024


def whiteout_image_chunks(size: int) -> Iterator[bytes]:
    """A `docker save` tar, as chunks: layer 1 has ``size`` .so files, layer 2 ``size`` whiteouts."""
    files = lambda: ((f"opt/lib/f{i}.so", ELF_STUB) for i in range(size))  # noqa: E731
    whiteouts = lambda: ((f"opt/other/.wh.g{i}.so", b"") for i in range(size))  # noqa: E731
    for name, entries in (("l1/layer.tar", files), ("l2/layer.tar", whiteouts)):
        info = tarfile.TarInfo(name)
        info.size = _layer_size(entries())
        yield info.tobuf(tarfile.USTAR_FORMAT)
        yield from _layer_chunks(entries())
        yield b"\0" * (-info.size % 512)
    yield _tar_entry("manifest.json", json.dumps([{"Layers": ["l1/layer.tar", "l2/layer.tar"]}]).encode())
    yield b"\0" * 1024


class ChunkStream(io.RawIOBase):
    """A read-only stream over generated chunks (the tar is never held whole)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks, self._buffer = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(target), len(self._buffer))
        target[:n], self._buffer = self._buffer[:n], self._buffer[n:]
        return n


# --- one measurement, in this process -----------------------------------------------------------------------


def run_case(case: str, size: int) -> float:
    """Seconds the parser takes on the case's input of ``size``."""
    if case == "nccl-blank-lines":
        from vllm_forge.nccl import nccl_logs

        text = nccl_blank_lines(size)
        started = time.perf_counter()
        nccl_logs.find_root_cause(nccl_logs.diagnose_texts([("hostile.log", text)]))
        return time.perf_counter() - started
    if case.startswith("cmake-"):
        from vllm_forge.source.vllm_tree import inspect_tree

        make = {"cmake-matches": cmake_matches, "cmake-doubling": cmake_doubling, "cmake-elseif": cmake_elseif,
                "cmake-nesting": cmake_nesting}[case]
        with tempfile.TemporaryDirectory() as tmp:
            root = vllm_tree_with(Path(tmp), make(size))
            started = time.perf_counter()
            inspect_tree(root)
            return time.perf_counter() - started
    if case == "image-tar-whiteouts":
        from vllm_forge.audit import audit

        stream = io.BufferedReader(ChunkStream(whiteout_image_chunks(size)), 1 << 20)
        started = time.perf_counter()
        found = audit.scan_image_tar(stream, "hostile.tar")
        assert len(found) == size
        return time.perf_counter() - started
    raise SystemExit(f"unknown case {case}")


# Today's worst case of each (the size the issue measured), and the unit the last column is per.
CASES = {
    "nccl-blank-lines": (500_000, "MB", 1e6),
    "cmake-matches": (24, "1k chars", 1e3),
    "cmake-doubling": (40, "1k lines", 1e3),
    "cmake-elseif": (1_000, "1k lines", 1e3),
    "cmake-nesting": (1_000, "1k lines", 1e3),
    "image-tar-whiteouts": (16_000, "10k entries", 1e4),
}


def measure(case: str, size: int, timeout: float) -> tuple[float | None, int]:
    """(seconds, peak RSS in KiB) of one fresh process running the case; seconds None past ``timeout``."""
    proc = subprocess.Popen([sys.executable, "-m", "scripts.benchmarks.bench_parsers", "--child", case, str(size)],
                            stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            return None, usage.ru_maxrss
        time.sleep(0.01)
    out = proc.stdout.read().decode()
    proc.stdout.close()
    return (json.loads(out)["seconds"] if os.waitstatus_to_exitcode(status) == 0 else None), usage.ru_maxrss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="only this case (repeatable)")
    parser.add_argument("--max-factor", type=float, default=100, help="largest input, times today's worst case")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one measurement may take")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps({"seconds": run_case(args.child[0], int(args.child[1]))}))
        return 0
    print(f"{'case':22} {'factor':>7} {'size':>12} {'seconds':>9} {'peak MiB':>9}  seconds per unit")
    for case in args.case or list(CASES):
        worst, unit, per = CASES[case]
        for factor in [f for f in (1, 3, 10, 30, 100, 300, 1000) if f <= args.max_factor]:
            size = int(worst * factor)
            seconds, peak_kib = measure(case, size, args.timeout)
            shown = f"{seconds:9.3f}" if seconds is not None else f"{'>' + format(args.timeout, 'g'):>9}"
            rate = f"{seconds / (size / per):.4f} s per {unit}" if seconds is not None else "-"
            print(f"{case:22} {factor:6g}x {size:12,} {shown} {peak_kib / 1024:9.1f}  {rate}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
