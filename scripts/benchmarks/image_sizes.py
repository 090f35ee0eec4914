"""Measured package sizes behind docs/image.md "Where the size goes": what pip would install, per part.

    python -m scripts.benchmarks.image_sizes 'vllm==0.11.0' --jit 'cuda-toolkit[nvcc,nvvm,crt,cudart]==13.0.2'

For each requirement set, pip resolves it (``pip install --dry-run --ignore-installed --report``, as for
this machine's Python) and, for every wheel of the resolution, this reads the wheel's zip central
directory from PyPI with HTTP range requests (a few KB per wheel, no full download): download size is
the wheel's byte length, installed size the sum of its members' uncompressed sizes. Wheels are then
split like `invoke check-size --image` splits an image (vllm_forge/image/inspection.py JIT_DISTS / TORCH_DISTS).
Not a test: PyPI's current files decide the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from vllm_forge.image.inspection import JIT_DISTS, TORCH_DISTS


class RangeFile(io.RawIOBase):
    """A read-only, seekable view of a remote file that fetches only the byte ranges zipfile reads."""

    def __init__(self, url: str):
        self.url = url
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=60) as response:
            self.length = int(response.headers["Content-Length"])
        self.pos = 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.length + offset}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, size: int = -1) -> bytes:
        end = self.length if size is None or size < 0 else min(self.length, self.pos + size)
        if end <= self.pos:
            return b""
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={self.pos}-{end - 1}"})
        with urllib.request.urlopen(request, timeout=120) as response:
            data = response.read()
        self.pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def wheel_sizes(url: str) -> tuple[int, int]:
    """(download bytes, installed bytes) of a wheel, from its central directory only."""
    if url.startswith("file://"):  # a local mirror of PyPI's files
        path = urllib.request.url2pathname(url[len("file://"):])
        with zipfile.ZipFile(path) as archive:
            return os.path.getsize(path), sum(info.file_size for info in archive.infolist())
    remote = RangeFile(url)
    with zipfile.ZipFile(remote) as archive:
        return remote.length, sum(info.file_size for info in archive.infolist())


def resolve(requirements: list[str], *, deps: bool = True) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        env = {**os.environ, "PIP_CONSTRAINT": "", "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": ""}
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--only-binary=:all:", "--report", str(report), *([] if deps else ["--no-deps"]),
                        *requirements], check=True, env=env)
        return json.loads(report.read_text())["install"]


def part_of(name: str, jit_names: set[str]) -> str:
    if name in jit_names or JIT_DISTS.match(name):
        return "JIT toolchain"
    if TORCH_DISTS.match(name):
        return "torch and its CUDA wheels"
    return "vLLM and its other requirements"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requirements", nargs="+", help="what the runtime stage installs (e.g. vllm==0.11.0)")
    parser.add_argument("--jit", action="append", default=[], help="the JIT toolchain's pip requirements")
    parser.add_argument("--no-deps", action="store_true", help="only the named wheels")
    parser.add_argument("--json", type=Path, help="also write every wheel's figures here")
    args = parser.parse_args(argv)
    items = resolve(args.requirements + args.jit, deps=not args.no_deps)
    jit_names = {i["metadata"]["name"].lower() for i in resolve(args.jit)} if args.jit else set()
    rows, totals = [], {}
    for item in items:
        name = item["metadata"]["name"].lower().replace("_", "-")
        download, installed = wheel_sizes(item["download_info"]["url"])
        part = part_of(name, jit_names)
        rows.append({"name": name, "version": item["metadata"]["version"], "part": part, "download": download,
                     "installed": installed})
        total = totals.setdefault(part, [0, 0])
        total[0] += download
        total[1] += installed
    for row in sorted(rows, key=lambda r: -r["installed"])[:25]:
        print(f"{row['installed'] / 1e6:9.1f} MB installed {row['download'] / 1e6:8.1f} MB wheel  "
              f"{row['name']}=={row['version']}  [{row['part']}]")
    print()
    for part, (download, installed) in totals.items():
        print(f"{installed / 1e6:9.1f} MB installed {download / 1e6:8.1f} MB wheels  {part}")
    print(f"{sum(t[1] for t in totals.values()) / 1e6:9.1f} MB installed "
          f"{sum(t[0] for t in totals.values()) / 1e6:8.1f} MB wheels  all {len(rows)} wheels")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
