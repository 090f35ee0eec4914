"""Check a wheel against a size limit, as vLLM's CI does, and say what makes it big."""

from __future__ import annotations

import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from vllm_forge.core.errors import ForgeError, run_main

# vLLM's own default (.buildkite/check-wheel-size.py, VLLM_MAX_SIZE_MB) before the tree says otherwise.
DEFAULT_LIMIT_MB = 400
MB = 1024 * 1024


@dataclass
class WheelSizeReport:
    wheel: Path
    size_mb: float
    limit_mb: float
    largest: list[tuple[str, float, float]]  # (member, compressed MB, uncompressed MB)

    @property
    def ok(self) -> bool:
        return self.size_mb <= self.limit_mb

    def to_dict(self) -> dict:
        return {"wheel": str(self.wheel), "size_mb": self.size_mb, "limit_mb": self.limit_mb, "ok": self.ok,
                "largest": [{"member": name, "compressed_mb": packed, "mb": size}
                            for name, packed, size in self.largest]}


def find_wheel(path: Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    wheels = sorted(path.glob("*.whl"), key=lambda p: p.stat().st_mtime) if path.is_dir() else []
    if not wheels:
        raise ForgeError(f"no wheel found at {path}", "build one with `invoke build-wheel`, or pass the .whl path")
    return wheels[-1]


def check_wheel_size(path: Path, limit_mb: float = DEFAULT_LIMIT_MB, top: int = 10) -> WheelSizeReport:
    wheel = find_wheel(path)
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [(i.filename, i.compress_size / MB, i.file_size / MB) for i in archive.infolist()]
    except (zipfile.BadZipFile, OSError) as err:
        raise ForgeError(f"{wheel} is not a readable wheel ({err})", "rebuild it; it may be truncated") from None
    members.sort(key=lambda m: m[1], reverse=True)
    return WheelSizeReport(wheel, wheel.stat().st_size / MB, float(limit_mb), members[:top])


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Check a wheel against a size limit.")
    parser.add_argument("path", type=Path, help="a .whl, or a directory holding wheels (the newest is checked)")
    parser.add_argument("--limit-mb", type=float, default=DEFAULT_LIMIT_MB)
    args = parser.parse_args(argv)
    report = check_wheel_size(args.path, args.limit_mb)
    verdict = "ok" if report.ok else "OVER THE LIMIT"
    print(f"{report.wheel.name}: {report.size_mb:.1f} MB (limit {report.limit_mb:g} MB): {verdict}")
    if not report.ok:
        print("largest members (compressed MB, uncompressed MB):")
        for name, packed, size in report.largest:
            print(f"  {packed:9.1f} {size:9.1f}  {name}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
