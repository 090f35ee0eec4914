"""Stand-in vLLM installs for the tests: Python files as given, ``.so`` files carrying given archs."""

from __future__ import annotations

import zipfile
from pathlib import Path

from tests.unit.test_fatbin import elf, entry, fatbin
from vllm_forge.audit.fatbin import FLAG_ARCH_SPECIFIC, FLAG_FAMILY, KIND_ELF, KIND_PTX


def device_so(archs: list[str]) -> bytes:
    """An ELF whose .nv_fatbin carries ``archs`` (``sm_90a``, ``sm_100f``, ``compute_80``); [] = none."""
    if not archs:
        return elf([(".text", b"\x90" * 16)])
    entries = []
    for arch in archs:
        kind, number = arch.split("_", 1)
        flags = 0x11
        if number.endswith("a"):
            flags |= FLAG_ARCH_SPECIFIC
        elif number.endswith("f"):
            flags |= FLAG_FAMILY
        digits = int(number.rstrip("af"))
        if kind == "sm":
            entries.append(entry(KIND_ELF, digits, flags))
        else:
            entries.append(entry(KIND_PTX, digits, flags, header_size=80))
    return elf([(".nv_fatbin", fatbin(*entries))])


def write_install(root: Path, python: dict[str, str], extensions: dict[str, list[str]]) -> Path:
    """``root/vllm/...``: the Python files (path -> text) and extension files (path -> archs)."""
    for name, text in python.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for name, archs in extensions.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(device_so(archs))
    return root


def write_wheel(path: Path, python: dict[str, str], extensions: dict[str, list[str]], version: str = "0.0.1") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in python.items():
            zf.writestr(name, text)
        for name, archs in extensions.items():
            zf.writestr(name, device_so(archs))
        zf.writestr(f"vllm-{version}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    return path
