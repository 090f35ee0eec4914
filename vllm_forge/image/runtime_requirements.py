"""The serving stage's torch pins, printed inside the build stage after the compile (docker/Dockerfile).

    python3 -m vllm_forge.image.runtime_requirements > /workspace/meta/runtime-requirements.txt

use-existing-torch removed the torch pins from the wheel's requirements; the runtime stage installs the
torch family at the major.minor the wheel was built against. Standard library only, and imports nothing of
vllm_forge: it is staged apart from what the compile runs, so a change here does not invalidate the compile.
"""

from __future__ import annotations

import re
import sys


def runtime_requirements() -> list[str]:
    """Pins for the serving stage: torch (and friends) at the major.minor the wheel was built against."""
    import importlib.metadata as metadata

    pins = []
    for name in ("torch", "torchvision", "torchaudio"):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        major_minor = ".".join(re.split(r"[.+]", version)[:2])
        pins.append(f"{name}=={major_minor}.*")
    return pins


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Print the serving stage's torch pins (docker/Dockerfile runs it).")
    parser.parse_args(argv)
    for pin in runtime_requirements():
        print(pin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
