"""Prove a wheel, a directory, a .so or a Docker image will run on the target GPU before it ships.

For every extension file (``*.so``, ``*.so.N``) it lists the SASS and PTX archs of each of its fat
binaries (``vllm_forge/audit/fatbin.py``: no CUDA toolkit, nothing run). A fat binary is one translation
unit's kernels (a *kernel group*); per target GPU each group is:

- ``sass``: a cubin the GPU runs natively: same major, and minor >= the cubin's (``sm_80`` runs
  on 8.6); an arch-specific ``a`` cubin only on its own arch (``sm_90a``: 9.0 only); a family
  ``f`` cubin within its family (``sm_100f``: 10.0 and 10.3; ``sm_120f``: 12.0 and 12.1).
- ``ptx``: no such cubin, but PTX the driver JIT-compiles on first load: PTX of an older or equal
  virtual arch (any major), except ``a`` PTX (its own arch only) and ``f`` PTX (its family only).
- ``none``: no kernel: the seed's ``no kernel image is available for execution on the device``.

and the file is the worst of its groups: ``native``, ``ptx-jit``, ``partial`` (some groups cannot
run), ``none``, or ``no-device-code``. A file that cannot run names that error and its fix, which
depends on whose file it is (torch, vLLM, another package).

For an image it also runs ``python3 -c 'import torch ...'`` inside it, because torch's own arch
list failing the GPU is the same failure one layer down (``sm_120 is not compatible with the
current PyTorch installation``).

Standalone (stdlib + pyelftools): ``python -m vllm_forge.audit.audit PATH --arch sm_120 [--json]``,
``python -m vllm_forge.audit.audit --image IMAGE --arch 12.0``. Exit code 0 only when every required file
can run on every target.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from vllm_forge.audit.fatbin import (
    STREAM_CHUNK,
    BinaryFormatError,
    DeviceCode,
    FatBinary,
    NotDeviceBinary,
    list_device_code,
    looks_like_binary,
    scan_stream,
)
from vllm_forge.audit.zip_directory import read_members
from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.validate import check_image_ref
from vllm_forge.gpu.archs import parse_arch_token
from vllm_forge.gpu.cuda_arch import ComputeCapability, CudaArch
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.gpu.runs_on import NONE, PTX, SASS, runs_on

# One kernel group on one GPU (``decide``): SASS, PTX or NONE, as vllm_forge/gpu/runs_on.py says.
# One file on one GPU: the worst over its kernel groups (``judge``). NONE is shared.
NATIVE = "native"
PTX_JIT = "ptx-jit"
PARTIAL = "partial"
# vLLM's own extension, built for this GPU (native groups), whose other groups carry code only for other GPUs:
# vLLM's CMake builds some kernels for chosen archs only and its dispatch picks kernels by compute capability
# (the stock 0.26.0 wheel has 14 such groups in _C and serves on an H200). Runs; reported, never silent.
GATED = "gated"
NO_DEVICE_CODE = "no-device-code"
RUNS = (NATIVE, PTX_JIT, GATED)
NO_KERNEL_IMAGE = "CUDA error: no kernel image is available for execution on the device"
JIT_NOTE = ("PTX JIT: the driver compiles the PTX on the first load of each process (seconds to minutes "
            "for a large library; cached in ~/.nv/ComputeCache, size set by CUDA_CACHE_MAXSIZE)")


# ---- targets and compatibility ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A GPU to run on: its compute capability as an sm name (``sm_120``), and how the user named it."""

    name: str
    major: int
    minor: int
    gpu: str = ""  # the GPU's name when the user gave one ("RTX 5090"), else ""
    spec: str = ""  # what to pass to `--arch` to build for it ("rtx5090", "12.0")

    @property
    def label(self) -> str:
        """``RTX 5090 (sm_120)`` when a GPU was named, else ``sm_120``."""
        return f"{self.gpu} ({self.name})" if self.gpu else self.name

    @property
    def cc(self) -> ComputeCapability:
        return ComputeCapability(self.major, self.minor)

    @property
    def build_arch(self) -> str:
        return self.spec or f"{self.major}.{self.minor}{self.name[-1] if self.name[-1] in 'af' else ''}"


def _check_known(arch, spelled: str) -> None:
    from vllm_forge.gpu import compat

    if arch.gpu in compat.known_capabilities():
        return
    near = ", ".join(f"{cc.sm} ({cc})" for cc in compat.nearest_capabilities(arch.gpu))
    raise ForgeError(f"'{spelled}' ({arch.sm}) is not the arch of any NVIDIA GPU this tool knows; the nearest known "
                     f"are {near}", "pass one of those, or add the new GPU to vllm_forge/gpu/compat.py")


def resolve_targets(specs: Iterable[str]) -> list[Target]:
    """``["sm_120"]``, ``["12.0", "9.0a"]``, ``["9.0a;12.0+PTX"]``, ``["rtx5090"]`` -> targets.

    An arch no known GPU has (``13.0``, ``sm_130``) is refused, naming the nearest known ones.
    """
    from vllm_forge.gpu import compat
    from vllm_forge.gpu.archs import parse_arch_list

    targets: dict[str, Target] = {}
    for spec in specs:
        for chunk in re.split(r"[;,]", str(spec)):
            if not chunk.strip():
                continue
            model = compat.lookup_gpu(chunk.strip())
            resolved = parse_arch_list(chunk)
            for arch in resolved:
                _check_known(arch, chunk.strip())
                gpu = model.name if model and len(resolved) == 1 else ""
                spec_text = chunk.strip().replace(" ", "").lower() if gpu else ""
                targets.setdefault(arch.sm, Target(arch.sm, arch.major, arch.minor, gpu, spec_text))
    if not targets:
        raise ForgeError("no target GPU arch was given", "pass --arch, e.g. --arch 12.0 or --arch rtx5090")
    return list(targets.values())


def parse_code_arch(name: str) -> CudaArch:
    """A fat binary's code name as the value vllm_forge/gpu/runs_on.py judges: ``sm_90a`` (SASS of 9.0a),
    ``compute_100f`` (PTX of 10.0f)."""
    code = parse_arch_token(name)
    if code is None or not name.startswith(("sm_", "compute_")):
        raise ValueError(f"{name!r} is not a fat-binary code name")
    return code


def decide(sass: Iterable[str], ptx: Iterable[str], target: Target) -> tuple[str, str]:
    """One kernel group's (verdict, deciding arch): ("sass", "sm_120"), ("ptx", "compute_90"), ("none", ""):
    NVIDIA's rule, vllm_forge/gpu/runs_on.py."""
    fit = runs_on([parse_code_arch(name) for name in (*sass, *ptx)], target.cc)
    return fit.kind, fit.name


def _arch_key(name: str) -> tuple[int, int, str]:
    code = parse_code_arch(name)
    return code.major, code.minor, code.variant


def sort_archs(names: Iterable[str]) -> list[str]:
    """Natural order: sm_75 before sm_100; for one arch, SASS before PTX (sm_75, compute_75)."""
    return sorted(names, key=lambda name: (*_arch_key(name), name.startswith("compute_")))


@dataclass
class GroupCounts:
    """How a file's kernel groups (fat binaries) fare on one GPU."""

    count: int = 0
    native: int = 0
    ptx_jit: int = 0
    none: int = 0
    kernel_less: int = 0  # fat binaries known to hold no kernel: not counted above, never fail
    # Groups built only as arch-specific code (sm_90a, sm_100f, ...) for other GPUs: those instructions exist
    # only there, so such a kernel is compiled for its GPU on purpose and launched behind a capability check
    # (vLLM's sm90 CUTLASS/FA3/Machete units in a `9.0a;12.0` build). Not counted above, never fail; reported.
    arch_specific: int = 0
    arch_specific_archs: list[str] = field(default_factory=list)
    missing_kernels: list[str] = field(default_factory=list)  # kernels of the groups that cannot run (first 20)

    def to_dict(self) -> dict:
        return {"count": self.count, "native": self.native, "ptx_jit": self.ptx_jit, "none": self.none,
                "kernel_less": self.kernel_less, "arch_specific": self.arch_specific,
                "arch_specific_archs": list(self.arch_specific_archs), "missing_kernels": list(self.missing_kernels)}


def judge(groups: list[FatBinary], target: Target) -> tuple[str, GroupCounts, list[str]]:
    """A file's verdict on ``target``: the worst over its kernel groups, the counts, the deciding archs."""
    counts = GroupCounts()
    via: set[str] = set()
    arch_specific_kernels: list[str] = []
    for group in groups:
        if not group.images:
            continue
        if group.kernel_less:
            counts.kernel_less += 1
            continue
        kind, arch = decide(group.sass, group.ptx, target)
        codes = [*group.sass, *group.ptx]
        if kind == NONE and codes and all(parse_code_arch(code).variant in ("a", "f") for code in codes):
            counts.arch_specific += 1
            counts.arch_specific_archs = sort_archs(set(counts.arch_specific_archs) | set(group.sass))
            arch_specific_kernels.extend(group.kernels or ())
            continue
        counts.count += 1
        if kind == SASS:
            counts.native += 1
        elif kind == PTX:
            counts.ptx_jit += 1
        else:
            counts.none += 1
            for name in group.kernels or ():
                if len(counts.missing_kernels) < 20:
                    counts.missing_kernels.append(name)
        if arch:
            via.add(arch)
    if counts.count == 0 and counts.arch_specific:  # nothing else in the file: it has no code for this GPU at all
        counts.count = counts.none = counts.arch_specific
        counts.arch_specific, counts.arch_specific_archs = 0, []
        counts.missing_kernels = arch_specific_kernels[:20]
    if counts.count == 0:
        verdict = NO_DEVICE_CODE
    elif counts.none == counts.count:
        verdict = NONE
    elif counts.none:
        verdict = PARTIAL
    elif counts.ptx_jit:
        verdict = PTX_JIT
    else:
        verdict = NATIVE
    return verdict, counts, sort_archs(via)


# ---- whose file it is, and what fixes it -----------------------------------------------------------

TORCH_PACKAGES = {"torch", "functorch", "torchgen", "torchvision", "torchaudio"}
VLLM_PACKAGES = {"vllm", "vllm_flash_attn"}
_VARIANT_RE = re.compile(r"^(?P<stem>.+?)_cuda(?P<cuda>\d{2,3})(?P<rest>(?:_[A-Za-z0-9]+)*)\.so$")


def owner_of(path: str, member: bool = True) -> str:
    """The Python package a file belongs to (``torch``, ``vllm``, ``bitsandbytes``), or "" when unknown.

    Installed files sit under ``site-packages/PKG`` or ``dist-packages/PKG``; a wheel inside a
    directory is ``NAME.whl/PKG/...``; a wheel member (or a file under an audited directory,
    ``member``) starts with its package. A file named on the command line has no package.
    """
    parts = PurePosixPath(path).parts
    for i, part in enumerate(parts):
        if part in ("site-packages", "dist-packages") or part.endswith(".whl"):
            return parts[i + 1] if i + 1 < len(parts) - 1 else ""
    if member and len(parts) > 1 and not path.startswith("/") and parts[0] not in ("lib", "lib64", "build"):
        return parts[0]
    # A build tree or a copied package: the innermost directory named like torch's or vLLM's package.
    return next((p for p in reversed(parts[:-1]) if p in TORCH_PACKAGES | VLLM_PACKAGES), "")


def owner_kind(package: str) -> str:
    if package in TORCH_PACKAGES:
        return "torch"
    if package in VLLM_PACKAGES:
        return "vllm"
    return "other" if package else "unknown"


def fix_for(kind: str, package: str, targets: list[Target]) -> str:
    """What the user does about a file of ``package`` that cannot run on ``targets``."""
    from vllm_forge.gpu import compat

    names = ", ".join(t.label for t in targets)
    needs = [compat.min_cuda_for(t.name) or compat.min_cuda_for(f"sm_{t.major}{t.minor}") for t in targets]
    known = [n for n in needs if n]
    need = max(known) if known else None
    if kind == "torch":
        if not need:
            return f"no CUDA toolkit this tool knows compiles for {names}; wait for a torch built for it"
        index = compat.PYTORCH_WHEEL_INDEX.get(need.minor_str, "")
        ngc = compat.default_ngc_tag(need)
        text = (f"install a torch built for CUDA {need} or newer, which knows {names} (e.g. "
                f"`pip install torch --index-url {index}`)" if index else
                f"install a torch built for CUDA {need} or newer, which knows {names}")
        if ngc:
            text += f", or build on a base image whose torch has it (e.g. {ngc.image}) with `invoke use-existing-torch`"
        return text
    if kind == "vllm":
        return f"rebuild vLLM for it: `invoke build-wheel --arch {','.join(t.build_arch for t in targets)}`"
    cuda = f" (CUDA {need} or newer)" if need else ""
    if kind == "other":
        return f"install {package}'s build for a CUDA that knows {names}{cuda}, or rebuild {package} for it"
    flags = " ".join(f"-gencode arch=compute_{t.name[3:]},code=sm_{t.name[3:]}" for t in targets)
    return f"rebuild it for {names}{cuda}: nvcc {flags}"


def variant_cuda(path: str) -> tuple[str, CudaRelease] | None:
    """``.../libbitsandbytes_cuda121.so`` -> (family key, 12.1); None for other files."""
    m = _VARIANT_RE.match(PurePosixPath(path).name)
    if not m:
        return None
    digits = m.group("cuda")
    family = str(PurePosixPath(path).parent / f"{m.group('stem')}_cuda*{m.group('rest')}.so")
    return family, CudaRelease(int(digits[:-1]), int(digits[-1]))


# ---- report ------------------------------------------------------------------------------------------


@dataclass
class FileAudit:
    path: str
    sass: list[str]
    ptx: list[str]
    verdict: dict[str, str]
    required: bool = False
    error: str = ""
    via: dict[str, list[str]] = field(default_factory=dict)  # target -> the archs that decide the verdict
    groups: dict[str, GroupCounts] = field(default_factory=dict)
    package: str = ""  # the Python package it belongs to ("torch", "vllm", "bitsandbytes"), "" if unknown
    variant: dict | None = None  # {"family", "cuda", "role": "selected"|"alternative"} for per-CUDA builds
    fix: str = ""
    optional: str = ""  # why the package runs without it (vllm_forge/audit/vllm_extensions.py), when it does

    @property
    def has_device_code(self) -> bool:
        return bool(self.sass or self.ptx)

    @property
    def owner(self) -> str:
        return owner_kind(self.package)

    def runs_on(self, target: str) -> bool:
        return not self.error and self.verdict.get(target) in RUNS

    @property
    def ok(self) -> bool:
        return not self.required or all(self.runs_on(t) for t in self.verdict)

    def failing_targets(self) -> list[str]:
        return [t for t in self.verdict if not self.runs_on(t)]

    def predicted_error(self, target: str) -> str | None:
        """The error the user will see on ``target`` (None when every kernel has code for it)."""
        verdict = self.verdict.get(target)
        if self.error or verdict in RUNS or verdict is None:
            return None
        if verdict == NO_DEVICE_CODE:
            return None if not self.required else f"{NO_KERNEL_IMAGE} (it carries no device code at all)"
        counts = self.groups.get(target)
        if verdict == PARTIAL and counts:
            return (f"{NO_KERNEL_IMAGE} when a kernel of one of the {counts.none} kernel groups without code for "
                    f"{target} is launched")
        return f"{NO_KERNEL_IMAGE} on the first kernel launch"

    def to_dict(self) -> dict:
        return {"path": self.path, "sass": sort_archs(self.sass), "ptx": sort_archs(self.ptx),
                "verdict": dict(self.verdict), "required": self.required, "error": self.error or None,
                "optional": self.optional or None, "groups": {t: c.to_dict() for t, c in self.groups.items()},
                "predicted_error": {t: self.predicted_error(t) for t in self.verdict},
                "package": self.package or None, "variant": self.variant, "fix": self.fix or None}


@dataclass
class TorchArchs:
    """torch's own compiled arch list, from the Python that would import it (an image's or this one)."""

    where: str  # "image IMAGE" or "this Python"
    version: str = ""
    cuda: str = ""
    arch_list: list[str] = field(default_factory=list)
    error: str = ""  # why there is no list (no python3, no torch, a CPU-only build)
    verdict: dict[str, str] = field(default_factory=dict)
    counts: bool = False  # whether it decides ``ok`` (it does for an image: that torch is what ships)

    @property
    def ok(self) -> bool:
        return not self.counts or not self.version or all(v in RUNS for v in self.verdict.values())

    def to_dict(self) -> dict:
        return {"where": self.where, "version": self.version or None, "cuda": self.cuda or None,
                "arch_list": self.arch_list, "verdict": dict(self.verdict), "counts": self.counts,
                "error": self.error or None}


@dataclass
class AuditReport:
    source: str
    targets: list[Target]
    files: list[FileAudit]
    torch: TorchArchs | None = None
    missing: list[str] = field(default_factory=list)  # --require globs that matched no file
    # per-CUDA variant families judged as alternatives (torch's CUDA unknown) where no variant runs
    variant_failures: list[str] = field(default_factory=list)
    torch_cuda: CudaRelease | None = None  # the CUDA of the torch that loads these files, when known

    @property
    def ok(self) -> bool:
        return (all(f.ok for f in self.files) and not self.missing and not self.variant_failures
                and (self.torch is None or self.torch.ok))

    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    def label(self, name: str) -> str:
        return next((t.label for t in self.targets if t.name == name), name)

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target_names,
                "gpu": {t.name: t.gpu or None for t in self.targets},
                "files": [f.to_dict() for f in self.files], "ok": self.ok,
                "missing": list(self.missing), "variant_failures": list(self.variant_failures),
                "torch": self.torch.to_dict() if self.torch else None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def summary(self) -> str:
        """One line: per target, how many required files run natively, via JIT, partly, or not at all."""
        device = [f for f in self.files if f.has_device_code]
        required = [f for f in self.files if f.required]
        parts = []
        for target in self.targets:
            counts = {NATIVE: 0, PTX_JIT: 0, GATED: 0, PARTIAL: 0, NONE: 0, NO_DEVICE_CODE: 0}
            for f in required:
                counts[NONE if f.error else f.verdict.get(target.name, NONE)] += 1
            part = f"{target.label}: {counts[NATIVE]} native"
            if counts[PTX_JIT]:
                part += f", {counts[PTX_JIT]} via PTX JIT"
            if counts[GATED]:
                part += f", {counts[GATED]} native with kernels for other GPUs picked by vLLM's dispatch"
            if counts[PARTIAL]:
                part += f", {counts[PARTIAL]} PARTIAL (some kernels have no code)"
            if counts[NONE] + counts[NO_DEVICE_CODE]:
                part += f", {counts[NONE] + counts[NO_DEVICE_CODE]} with NO kernel"
            others = sum(1 for f in device if not f.required and not f.runs_on(target.name)
                         and f.verdict.get(target.name) != NO_DEVICE_CODE)
            if others:
                part += f" (and {others} not required without one)"
            parts.append(part)
        errors = sum(1 for f in self.files if f.error)
        line = (f"{'OK' if self.ok else 'FAIL'}: {len(required)} required, {len(device)} of "
                f"{len(self.files)} files carry device code; " + "; ".join(parts))
        if errors:
            line += f"; {errors} unreadable"
        if self.missing:
            line += f"; --require matched nothing: {', '.join(self.missing)}"
        if self.variant_failures:
            line += f"; no variant runs: {', '.join(self.variant_failures)}"
        if self.torch and self.torch.version:
            bad = [self.label(t) for t, v in self.torch.verdict.items() if v not in RUNS]
            line += (f"; torch {self.torch.version} ({self.torch.where}): "
                     + (f"no kernels for {', '.join(bad)}" if bad else "ok"))
        return line

    def notes(self) -> list[str]:
        """Sentences worth printing under the table: JIT cost, what will fail and how to fix it."""
        out = []
        if any(v == PTX_JIT for f in self.files for v in f.verdict.values()):
            out.append(JIT_NOTE)
        failing = [f for f in self.files if not f.ok]
        for f in failing[:10]:
            if f.error:
                out.append(f"{f.path}: {f.error}")
                continue
            bad = f.failing_targets()
            what = []
            for t in bad:
                c = f.groups.get(t)
                if f.verdict[t] == PARTIAL and c:
                    what.append(f"{c.none} of {c.count} kernel groups have no code for {self.label(t)}")
                elif f.verdict[t] == NO_DEVICE_CODE:
                    what.append(f"it carries no device code for {self.label(t)}")
                else:
                    what.append(f"no kernel group has code for {self.label(t)}")
            have = ", ".join(sort_archs(f.sass) + sort_archs(f.ptx)) or "no device code"
            kernels = next((f.groups[t].missing_kernels for t in bad if t in f.groups and f.groups[t].missing_kernels),
                           [])
            sample = f"; e.g. kernel {kernels[0]}" if kernels else ""
            out.append(f"{f.path}: {'; '.join(what)} (it carries {have}{sample}); expect `{NO_KERNEL_IMAGE}`. "
                       f"Fix: {f.fix}")
        if len(failing) > 10:
            out.append(f"... and {len(failing) - 10} more files that cannot run (--json lists them)")
        for family in self.variant_failures:
            out.append(f"{family}: none of its per-CUDA variants runs on {', '.join(t.label for t in self.targets)}")
        alternatives = sorted({f.variant["family"] for f in self.files
                               if f.variant and f.variant["role"] == "alternative"})
        if alternatives and not self.torch_cuda:
            out.append(f"{', '.join(alternatives)}: one variant per CUDA, only the one matching torch's CUDA is "
                       "loaded; torch's CUDA is unknown here, so they are judged as alternatives (one must run)")
        if self.torch and self.torch.version and not self.torch.ok:
            bad = [t for t, v in self.torch.verdict.items() if v not in RUNS]
            first = bad[0] if bad else "sm_XX"
            out.append(f"torch {self.torch.version} in {self.torch.where} was built for "
                       f"{' '.join(self.torch.arch_list) or 'no CUDA arch'}: expect `{first} is not "
                       f"compatible with the current PyTorch installation` and `{NO_KERNEL_IMAGE}`. Fix: "
                       + fix_for("torch", "torch", [t for t in self.targets if t.name in bad] or self.targets))
        return out + optional_notes(self)


# ---- what to scan ----------------------------------------------------------------------------------

# Inflating the wheel's libraries is most of an audit's time. ISA-L's inflate (python-isal, in
# requirements.txt) is about twice as fast as zlib's with the same bytes out; the audit falls back to
# zlib where it is not installed (the in-image audit of the Docker build: stdlib only).
_INFLATER_MODULES = {"isal": ("isal.isal_zlib", "isal"), "zlib-ng": ("zlib_ng.zlib_ng", "zlib-ng")}
try:
    import isal.isal_zlib  # noqa: F401

    INFLATER = "isal"
except ImportError:  # pragma: no cover - depends on the environment
    INFLATER = "zlib"


def raw_inflater(name: str | None = None):
    """A raw-deflate decompressobj: ISA-L's when installed, else zlib's. ``name`` (or
    $VLLM_FORGE_INFLATER: zlib, isal, zlib-ng) picks one; scripts/benchmarks/bench_audit.py compares them."""
    import importlib

    name = name or os.environ.get("VLLM_FORGE_INFLATER") or INFLATER
    if name == "zlib":
        return zlib.decompressobj(-15)
    if name not in _INFLATER_MODULES:
        raise ForgeError(f"VLLM_FORGE_INFLATER={name} is not an inflater this tool knows",
                         "use zlib, isal or zlib-ng, or unset it")
    module_name, package = _INFLATER_MODULES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ForgeError(f"the {name} inflater is not installed", f"pip install {package}") from None
    return _Inflater(module)


class _Inflater:
    """Another module's decompressobj, its errors raised as zlib.error (what the callers catch)."""

    def __init__(self, module):
        self._module = module
        self._obj = module.decompressobj(-15)

    @property
    def eof(self) -> bool:
        return self._obj.eof

    @property
    def unconsumed_tail(self) -> bytes:
        return self._obj.unconsumed_tail

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        try:
            return self._obj.decompress(data, max_length)
        except self._module.error as err:
            raise zlib.error(str(err)) from None


# What one audit may inflate from wheels: 5x torch 2.8's CUDA wheel (1.6 GB of libraries), far below
# what a zip bomb claims (a 10 MB member can inflate to 10 GB). --max-inflate raises it.
DEFAULT_MAX_INFLATE = 8 << 30
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text) -> int:
    """``8G``, ``500M``, ``12GiB``, ``1073741824`` -> bytes (binary units)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ForgeError(f"'{text}' is not a size", "write it like 8G, 500M or 12GiB")
    return int(float(m.group(1)) * (1 << (10 * " kmgt".index(m.group(2).lower() or " "))))


def format_size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


class InflateBudget:
    """The cap on bytes inflated from archives in one audit; checked against each wheel's declared
    member sizes before anything is inflated (a member is never read past its declared size)."""

    def __init__(self, limit: int = DEFAULT_MAX_INFLATE):
        self.limit = limit
        self.used = 0

    def take(self, n: int, what: str) -> None:
        if self.used + n > self.limit:
            need = self.used + n
            raise ForgeError(f"{what} would inflate {format_size(need)} of libraries, more than the audit's cap of "
                             f"{format_size(self.limit)} (a zip bomb, or a very large archive)",
                             f"if you trust it, pass --max-inflate {-(-need // (1 << 30))}G")
        self.used += n



def is_candidate(name: str) -> bool:
    """Extension files and shared libraries: ``x.so``, ``libx.so.12``, and ``.fatbin`` blobs."""
    base = name.rsplit("/", 1)[-1]
    return (base.endswith(".so") or ".so." in base or base.endswith(".fatbin")) and not base.startswith(".wh.")


@dataclass
class _Scanned:
    path: str
    code: DeviceCode | None
    error: str = ""
    member: bool = True  # a member of a wheel, image or directory (False: the file named on the command line)
    location: str = ""  # where a file of an audited directory really is (its package may be in the path)


def _scan_file(path: Path, shown: str) -> _Scanned | None:
    """A file on disk; None when it is not a binary at all (a linker script named libc.so)."""
    try:
        return _Scanned(shown, list_device_code(path, where=shown))
    except NotDeviceBinary:
        return None
    except BinaryFormatError as err:
        return _Scanned(shown, None, err.problem)
    except ForgeError as err:
        return _Scanned(shown, None, err.problem)


def _scan_chunks(chunks: Iterator[bytes], size: int, shown: str) -> _Scanned | None:
    try:
        return _Scanned(shown, scan_stream(chunks, size, shown))
    except NotDeviceBinary:
        return None
    except BinaryFormatError as err:
        return _Scanned(shown, None, err.problem)
    except (zlib.error, OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as err:
        return _Scanned(shown, None, f"{shown} could not be read: {err}")


@dataclass(frozen=True)
class Held:
    """Cores another process of ours holds for a while (the forked import analysis): ``cores`` of the inflating
    threads wait until ``free`` is set (or until nothing is left for them) before they take a member."""

    cores: int = 0
    free: threading.Event | None = None


NOTHING_HELD = Held()


# Where build-wheel and bake put what they are still writing (dist/.staging-<host>-<pid>-...), moved out by one
# rename once whole: an audit of the directory never reads a half-written wheel of a running build.
STAGING_PREFIX = ".staging-"


def scan_directory(root: Path, prefix: str = "", budget: InflateBudget | None = None,
                   held: Held = NOTHING_HELD) -> list[_Scanned]:
    found: list[_Scanned] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(name for name in dirnames if not name.startswith(STAGING_PREFIX))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            rel = prefix + path.relative_to(root).as_posix()
            if name.endswith(".whl"):
                found += scan_wheel(path, prefix=rel + "/", budget=budget, held=held)
            elif is_candidate(name):
                scanned = _scan_file(path, rel)
                if scanned:
                    scanned.location = str(path.resolve())
                    found.append(scanned)
    return found


def _zip_member_chunks(archive: Path, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The member's bytes, inflated in bounded chunks (no CRC pass, no temp file)."""
    with open(archive, "rb") as fp:
        fp.seek(info.header_offset)
        local = fp.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header for {info.filename}")
        name_len, extra_len = struct.unpack_from("<HH", local, 26)
        fp.seek(info.header_offset + 30 + name_len + extra_len)
        remaining = info.compress_size
        if info.compress_type == zipfile.ZIP_STORED:
            while remaining > 0:
                block = fp.read(min(STREAM_CHUNK, remaining))
                if not block:
                    return
                remaining -= len(block)
                yield block
            return
        inflate = raw_inflater()
        while remaining > 0 and not inflate.eof:
            block = fp.read(min(STREAM_CHUNK, remaining))
            if not block:
                return
            remaining -= len(block)
            data = inflate.decompress(block, STREAM_CHUNK)
            while True:
                if data:
                    yield data
                # A full chunk may leave output pending with no input left over: ISA-L takes in all the input
                # at once, so only asking again (with no input) gets the rest.
                if inflate.eof or (not inflate.unconsumed_tail and len(data) < STREAM_CHUNK):
                    break
                data = inflate.decompress(inflate.unconsumed_tail, STREAM_CHUNK)


def _zip_chunks_any(archive: Path, info: zipfile.ZipInfo) -> Iterator[bytes]:
    if info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        yield from _zip_member_chunks(archive, info)
        return
    with zipfile.ZipFile(archive) as zf, zf.open(info) as member:  # bzip2/lzma: rare in wheels, zipfile's reader
        while block := member.read(STREAM_CHUNK):
            yield block


def _zip_candidates(path: Path) -> list[zipfile.ZipInfo] | None:
    """The candidate members of a zip (`is_candidate`), from its central directory: a ZipInfo is made only for
    them (torch's wheel has 12,000 members and 13 libraries). None for an unusual archive: zipfile decides."""
    return read_members(path, is_candidate, quick=lambda raw: b".so" in raw or raw.endswith(b".fatbin"))


def scan_wheel(path: Path, prefix: str = "", workers: int | None = None,
               budget: InflateBudget | None = None, held: Held = NOTHING_HELD) -> list[_Scanned]:
    """Every candidate member of a wheel (a zip), read from the archive without unpacking it."""
    budget = budget if budget is not None else InflateBudget()
    try:
        members = _zip_candidates(path)
        if members is None:
            with zipfile.ZipFile(path) as zf:
                members = [i for i in zf.infolist() if not i.is_dir() and is_candidate(i.filename)]
    except (zipfile.BadZipFile, OSError, struct.error, UnicodeDecodeError) as err:
        raise ForgeError(f"{path} is not a readable wheel ({err})", "re-download or rebuild it") from None
    budget.take(sum(i.file_size for i in members), str(path))

    def one(info: zipfile.ZipInfo) -> _Scanned | None:
        return _scan_chunks(_zip_chunks_any(path, info), info.file_size, prefix + info.filename)

    # zlib and ISA-L let go of the GIL while they inflate: big members inflate side by side, the biggest first.
    workers = workers or min(4, os.cpu_count() or 1)
    members.sort(key=lambda i: -i.file_size)
    if workers > 1 and len(members) > 1:
        results = side_by_side(members, one, workers, held)
    else:
        results = [one(i) for i in members]
    return [r for r in results if r]


def side_by_side(items: list, work: Callable, workers: int, held: Held = NOTHING_HELD) -> list:
    """``work(item)`` for every item on ``workers`` threads, each taking the next item when it is done; the
    results in the items' order, the first error raised. ``held.cores`` of the threads (never all) start only
    once ``held.free`` is set, or end once nothing is left to take."""
    results: list = [None] * len(items)
    todo = iter(enumerate(items))
    lock = threading.Lock()
    errors: list[BaseException] = []
    left = [len(items)]

    def run(waits: bool) -> None:
        while waits and not held.free.wait(0.02):
            with lock:
                if left[0] == 0:
                    return
        while not errors:
            with lock:
                taken = next(todo, None)
                if taken is not None:
                    left[0] -= 1
            if taken is None:
                return
            index, item = taken
            try:
                results[index] = work(item)
            except BaseException as err:  # noqa: BLE001 - raised below, in the caller's thread
                errors.append(err)

    waiting = min(held.cores, workers - 1) if held.free is not None else 0
    threads = [threading.Thread(target=run, args=(k >= workers - waiting,), daemon=True) for k in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


# ---- images ----------------------------------------------------------------------------------------


def _tar_member_chunks(fileobj) -> Iterator[bytes]:
    while block := fileobj.read(STREAM_CHUNK):
        yield block


def _absolute(name: str) -> str:
    """A tar member name as an absolute path in the image: ``./usr/lib/x.so`` -> ``/usr/lib/x.so``."""
    while name.startswith("./"):
        name = name[2:]
    return "/" + name.lstrip("/")


def _scan_filesystem_tar(tf: tarfile.TarFile, on_member: Callable | None = None) -> tuple[dict, set, set]:
    """(path -> _Scanned, whiteouts, opaque dirs) of one filesystem tar (a layer or an export), streamed."""
    results: dict[str, _Scanned] = {}
    whiteouts: set[str] = set()
    opaque: set[str] = set()
    for member in tf:
        name = _absolute(member.name)
        base = PurePosixPath(name).name
        if base == ".wh..wh..opq":
            opaque.add(str(PurePosixPath(name).parent))
            continue
        if base.startswith(".wh."):
            whiteouts.add(str(PurePosixPath(name).parent / base[4:]))
            continue
        if not member.isfile() or not is_candidate(name):
            continue
        fileobj = tf.extractfile(member)
        if fileobj is None:
            continue
        scanned = _scan_chunks(_tar_member_chunks(fileobj), member.size, name)
        if scanned:
            results[name] = scanned
        if on_member:
            on_member(name)
    return results, whiteouts, opaque


class _Peeked:
    """A read-only stream with its first bytes already read (to tell a tar from JSON or gzip)."""

    def __init__(self, raw, head: bytes):
        self._raw, self._head = raw, head

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n is None or n < 0:
                data, self._head = self._head + self._raw.read(), b""
                return data
            data, self._head = self._head[:n], self._head[n:]
            if len(data) < n:
                data += self._raw.read(n - len(data))
            return data
        return self._raw.read(n)


class _Node:
    """A directory (or file) of the merged image filesystem: its file, if one was scanned there, and below it."""

    __slots__ = ("children", "file")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.file: tuple[str, _Scanned] | None = None  # (its path, what the scan found)


def _parts(path: str) -> list[str]:
    return [part for part in path.split("/") if part]


def _merge_layers(layers: list[tuple[dict, set, set]]) -> list[_Scanned]:
    """The final filesystem's files: later layers replace earlier ones, whiteouts delete.

    A tree of path components: a whiteout or an opaque directory removes a subtree in one step, so the
    merge costs the total length of the paths, however many whiteouts meet however many files (a
    crafted tar of 16k entries took 33 s with a scan of every file per whiteout)."""
    root = _Node()
    for results, whiteouts, opaque in layers:
        for gone in whiteouts:  # the path and everything below it
            parts = _parts(gone)
            if not parts:
                root = _Node()
                continue
            node: _Node | None = root
            for part in parts[:-1]:
                node = node.children.get(part)
                if node is None:
                    break
            if node is not None:
                node.children.pop(parts[-1], None)
        for directory in opaque:  # what is below it, not the directory itself
            node = root
            for part in _parts(directory):
                node = node.children.get(part)
                if node is None:
                    break
            if node is not None:
                node.children = {}
        for path, scanned in results.items():
            node = root
            for part in _parts(path):
                node = node.children.setdefault(part, _Node())
            node.file = (path, scanned)
    found: list[tuple[str, _Scanned]] = []
    todo = [root]
    while todo:  # no recursion: a path of ten thousand directories is no ten thousand stack frames
        node = todo.pop()
        if node.file is not None:
            found.append(node.file)
        todo.extend(node.children.values())
    return [scanned for _, scanned in sorted(found, key=lambda item: item[0])]


def scan_image_tar(stream, what: str) -> list[_Scanned]:
    """A ``docker save`` tar (legacy ``<id>/layer.tar`` or OCI ``blobs/sha256/...``) or a ``docker export``
    tar, read as a stream: layers are scanned as they pass, then stacked in manifest order."""
    layers: dict[str, tuple[dict, set, set]] = {}
    flat_results: dict[str, _Scanned] = {}
    manifest = None
    try:
        with tarfile.open(fileobj=stream, mode="r|") as outer:
            for member in outer:
                if not member.isfile():
                    continue
                name = _absolute(member.name)[1:]
                if name == "manifest.json":
                    fileobj = outer.extractfile(member)
                    manifest = json.loads(fileobj.read(min(member.size, 16 << 20)) or b"null")
                    continue
                fileobj = outer.extractfile(member)
                if fileobj is None:
                    continue
                if name.endswith("/layer.tar") or name.startswith("blobs/"):
                    head = fileobj.read(512)
                    is_tar = len(head) >= 262 and head[257:262] == b"ustar"
                    is_gzip = head[:2] == b"\x1f\x8b"
                    if is_tar or is_gzip:
                        with tarfile.open(fileobj=_Peeked(fileobj, head), mode="r|*") as layer:
                            layers[name] = _scan_filesystem_tar(layer)
                        continue
                    if name.startswith("blobs/"):
                        continue
                # a `docker export` tar: the filesystem itself
                path = "/" + name
                if is_candidate(path):
                    scanned = _scan_chunks(_tar_member_chunks(fileobj), member.size, path)
                    if scanned:
                        flat_results[path] = scanned
    except (tarfile.TarError, OSError, EOFError, zlib.error, ValueError) as err:
        raise ForgeError(f"{what} is not a readable image tar ({err})",
                         "pass an image name with --image, or a `docker save` / `docker export` tar") from None
    if not layers:
        return [flat_results[p] for p in sorted(flat_results)]
    order = list(layers)
    if isinstance(manifest, list) and manifest and isinstance(manifest[0], dict):
        listed = [_absolute(str(x))[1:] for x in manifest[0].get("Layers") or []]
        if listed and all(x in layers for x in listed):  # a manifest naming no layer orders nothing
            order = listed
    return _merge_layers([layers[name] for name in order])


def _docker(docker: str | None) -> str:
    docker = docker or os.environ.get("VLLM_FORGE_DOCKER") or "docker"
    found = shutil.which(docker)
    if not found:
        raise ForgeError(f"`{docker}` is not installed", "install Docker, or audit a wheel or directory instead")
    return found


def _check_image(docker: str, image: str) -> None:
    try:
        info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        raise ForgeError("the Docker engine does not answer (`docker info` timed out)", "start dockerd") from None
    if info.returncode != 0:
        raise ForgeError("no Docker engine answers (`docker info` failed)", "start dockerd, or check DOCKER_HOST")
    inspect = subprocess.run([docker, "image", "inspect", image], capture_output=True, text=True, timeout=60)
    if inspect.returncode != 0:
        raise ForgeError(f"image {image} is not present locally", f"`docker pull {image}` or build it first")


def scan_image(image: str, *, docker: str | None = None, via: str = "save") -> list[_Scanned]:
    """Stream ``docker save IMAGE`` (layers, whiteouts applied) or ``docker export`` of a created,
    never started container, and scan every candidate file on the way. Nothing is written to disk."""
    check_image_ref(image, "--image")  # docker reads it after its options: never one itself
    docker = _docker(docker)
    _check_image(docker, image)
    container = None
    if via == "export":
        created = subprocess.run([docker, "create", image, "true"], capture_output=True, text=True, timeout=120)
        if created.returncode != 0:
            raise ForgeError(f"`docker create {image}` failed: {created.stderr.strip()[:300]}",
                             "use --via save")
        container = created.stdout.strip()
        command = [docker, "export", container]
    elif via == "save":
        command = [docker, "save", image]
    else:
        raise ForgeError(f"--via {via!r} is not a way to read an image", "use --via save or --via export")
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        unreadable = None
        try:
            found = scan_image_tar(proc.stdout, f"`{' '.join(command[1:])}`")
        except ForgeError as err:  # Docker's own error, when it failed, says more than "not a tar"
            unreadable, found = err, []
        finally:
            proc.stdout.close()
            stderr = proc.stderr.read().decode(errors="replace")
            proc.stderr.close()
            code = proc.wait()
        if code != 0:
            raise ForgeError(f"`docker {' '.join(command[1:])}` failed: {stderr.strip()[:300]}",
                             "check the image name and the Docker engine")
        if unreadable:
            raise unreadable
        return found
    finally:
        if container:
            subprocess.run([docker, "rm", "-f", container], capture_output=True, timeout=120)


# ---- torch's own arch list ---------------------------------------------------------------------------

# torch.cuda.get_arch_list() answers [] where no GPU is visible (a build host, `docker run` without
# --gpus); torch._C._cuda_getArchFlags() is the compiled list itself, GPU or not.
TORCH_PROBE = r"""
import json
try:
    import torch
except Exception as err:
    print(json.dumps({"error": "torch is not importable: %s: %s" % (type(err).__name__, err)}))
    raise SystemExit(0)
flags = ""
try:
    flags = torch._C._cuda_getArchFlags() or ""
except Exception:
    pass
archs = flags.split() if flags else []
if not archs:
    try:
        archs = list(torch.cuda.get_arch_list())
    except Exception:
        archs = []
print(json.dumps({"version": torch.__version__, "cuda": torch.version.cuda or "", "arch_list": archs}))
"""


def parse_torch_probe(where: str, returncode: int, stdout: str, stderr: str) -> TorchArchs:
    result = TorchArchs(where=where)
    line = next((ln for ln in reversed(stdout.strip().splitlines()) if ln.startswith("{")), "")
    if returncode != 0 or not line:
        text = (stderr or stdout).strip()
        if "executable file not found" in text or "No such file" in text or returncode in (126, 127):
            result.error = "no python3 in it, so no torch to check"
        else:
            result.error = f"python3 failed (exit {returncode}): {text.splitlines()[-1][:200] if text else ''}"
        return result
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        result.error = f"unexpected output from python3: {line[:200]}"
        return result
    if data.get("error"):
        result.error = str(data["error"])
        return result
    result.version = str(data.get("version", ""))
    result.cuda = str(data.get("cuda") or "")
    result.arch_list = [str(a) for a in data.get("arch_list") or []]
    if not result.cuda:
        result.error = f"torch {result.version} is a CPU-only build: it runs no CUDA kernel at all"
    elif not result.arch_list:
        result.error = f"torch {result.version} reported no compiled CUDA archs"
    return result


def probe_torch(where: str, command: list[str], *, timeout: float = 300, runner=subprocess.run) -> TorchArchs:
    try:
        done = runner(command + [TORCH_PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return TorchArchs(where=where, error=f"python3 did not answer within {timeout:.0f}s")
    except OSError as err:
        return TorchArchs(where=where, error=f"python3 could not be started ({err.strerror})")
    return parse_torch_probe(where, done.returncode, done.stdout, done.stderr)


def torch_of_image(image: str, docker: str | None = None, runner=subprocess.run) -> TorchArchs:
    docker = _docker(docker) if runner is subprocess.run else (docker or "docker")
    command = [docker, "run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c"]
    found = probe_torch(f"image {image}", command, runner=runner)
    found.counts = True
    return found


def torch_of_this_python() -> TorchArchs | None:
    """This Python's torch, when it has one (informational: the deployed torch may differ)."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    return probe_torch("this Python", [sys.executable, "-c"])


def _torch_verdicts(torch: TorchArchs, targets: list[Target]) -> None:
    sass = [a for a in torch.arch_list if a.startswith("sm_")]
    ptx = [a for a in torch.arch_list if a.startswith("compute_")]
    as_file = {SASS: NATIVE, PTX: PTX_JIT, NONE: NONE}
    for target in targets:
        torch.verdict[target.name] = as_file[decide(sass, ptx, target)[0]] if torch.version and torch.cuda else NONE


# ---- the audit -------------------------------------------------------------------------------------


def _classify(path: Path) -> str:
    try:
        with open(path, "rb") as fp:
            head = fp.read(512)
    except OSError as err:
        raise ForgeError(f"cannot read {path} ({err.strerror})", "check the path and its permissions") from None
    if looks_like_binary(head):
        return "binary"
    if head[:4] == b"PK\x03\x04":
        return "wheel"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise ForgeError(f"{path} is not an ELF file, a wheel or an image tar",
                     "name a .so, an executable, a wheel, a directory, a `docker save` tar, or use --image")


def scan(path: Path | str, max_inflate: int = DEFAULT_MAX_INFLATE, held: Held = NOTHING_HELD) -> list[_Scanned]:
    """Every file with device code under ``path``; ``held``: cores another process holds for a while (a wheel's
    members inflate on the others until they are free)."""
    path = Path(path)
    if not path.exists():
        raise ForgeError(f"{path} does not exist", "check the path")
    budget = InflateBudget(max_inflate)
    if path.is_dir():
        return scan_directory(path, budget=budget, held=held)
    kind = _classify(path)
    if kind == "binary":
        return [_Scanned(str(path), list_device_code(path), member=False)]
    if kind == "wheel":
        return scan_wheel(path, budget=budget, held=held)
    with open(path, "rb") as fp:
        return scan_image_tar(fp, str(path))


def build_report(source: str, scanned: list[_Scanned], targets: list[Target], *, require: Iterable[str] = (),
                 torch: TorchArchs | None = None, torch_cuda: CudaRelease | None = None) -> AuditReport:
    """Judge every scanned file on every target. ``torch_cuda``: the CUDA of the torch that will load
    these files (12.8), to pick the one per-CUDA variant that is loaded (else torch's own probe)."""
    require = list(require or [])
    files: list[FileAudit] = []
    matched: set[str] = set()
    for item in sorted(scanned, key=lambda s: s.path):
        groups = item.code.groups if item.code else []
        sass = sort_archs(item.code.sass) if item.code else []
        ptx = sort_archs(item.code.ptx) if item.code else []
        f = FileAudit(item.path, sass, ptx, {}, error=item.error,
                      package=owner_of(item.location, False) or owner_of(item.path, item.member))
        for target in targets:
            verdict, counts, via = judge(groups, target)
            if verdict == PARTIAL and f.owner == "vllm" and counts.native:
                verdict = GATED
            f.verdict[target.name], f.groups[target.name], f.via[target.name] = verdict, counts, via
        name = PurePosixPath(item.path).name
        hits = [g for g in require if fnmatch.fnmatch(item.path, g) or fnmatch.fnmatch(name, g)]
        matched.update(hits)
        has_kernels = any(v != NO_DEVICE_CODE for v in f.verdict.values())
        f.required = bool(hits) if require else (has_kernels or bool(item.error))
        bad = [t for t in targets if t.name in f.failing_targets()]
        if bad and not f.error and (has_kernels or f.required):  # a file without kernels needs no fix unless named
            f.fix = fix_for(f.owner, f.package, bad)
        files.append(f)
    if torch is not None:
        _torch_verdicts(torch, targets)
    if torch_cuda is None and torch is not None and torch.cuda:
        torch_cuda = CudaRelease.parse_or_none(torch.cuda)
    torch_cuda = torch_cuda.minor_release if torch_cuda is not None else None  # per-CUDA variants name the minor
    report = AuditReport(source=source, targets=targets, files=files, torch=torch,
                         missing=[g for g in require if g not in matched], torch_cuda=torch_cuda)
    _judge_variants(report)
    return report


def _judge_variants(report: AuditReport) -> None:
    """Per-CUDA builds of one library (``libbitsandbytes_cuda121.so`` ... ``_cuda130.so``): only the one
    matching torch's CUDA is loaded. With torch's CUDA known that one decides and the rest are
    alternatives; without it, all are alternatives and one of them must run."""
    families: dict[str, list[tuple[FileAudit, str]]] = {}
    for f in report.files:
        found = variant_cuda(f.path)
        if found and f.required:
            families.setdefault(found[0], []).append((f, found[1]))
    for family, members in families.items():
        if len(members) < 2:
            continue
        selected = [f for f, cuda in members if report.torch_cuda is not None and cuda.same_minor(report.torch_cuda)]
        for f, cuda in members:
            role = "selected" if f in selected else "alternative"
            f.variant = {"family": family, "cuda": cuda.minor_str, "role": role}
            if role == "alternative":
                f.required = False
        if not selected and not any(f.ok and all(f.runs_on(t) for t in f.verdict)
                                    for f, _ in members if not f.error):
            report.variant_failures.append(family)


def audit_path(path, targets: list[str], *, require: Iterable[str] = (), torch: bool = False,
               max_inflate: int | str = DEFAULT_MAX_INFLATE, torch_cuda: CudaRelease | None = None) -> AuditReport:
    """Audit a .so, an executable, a directory (wheels in it included), a wheel or an image tar.

    ``targets`` are arch names or specs (``"sm_120"``, ``"sm_90a"``, ``"12.0"``, ``"rtx5090"``).
    ``torch=True`` adds this Python's torch arch list (informational: it does not decide ``ok``).
    ``max_inflate`` caps the bytes inflated from wheels; ``torch_cuda`` picks per-CUDA variants.
    """
    resolved = resolve_targets(targets)
    held = NOTHING_HELD
    if not require:  # which extensions vLLM runs without: its Python is read beside the kernel scan (mark_optional)
        from vllm_forge.audit import vllm_extensions

        vllm_extensions.analyze_ahead(path)
        # each analysing child keeps a core busy: inflating on it as well would only slow that child down
        held = Held(vllm_extensions.analyses_in_children(), vllm_extensions.CHILDREN_DONE)
    found = scan(path, parse_size(max_inflate), held)
    report = build_report(str(path), found, resolved, require=require,
                          torch=torch_of_this_python() if torch else None, torch_cuda=torch_cuda)
    return report if require else mark_optional(report, path)


# ---- optional extensions (issue 19): what a vLLM's own Python says it runs without --------------------
NOT_USABLE = "optional, not usable on this GPU"


def mark_optional(report: AuditReport, path, docker: str = "") -> AuditReport:
    """Judge only the extensions vLLM imports unconditionally at start-up as required (``--require``
    overrides): one it imports guarded or lazily (``vllm_forge/audit/vllm_extensions.py``) is never a failure.
    ``docker``: ``path`` is an image."""
    try:
        from vllm_forge.audit import vllm_extensions

        paths = [f.path for f in report.files if f.has_device_code]
        optional = (vllm_extensions.optional_extensions_in_image(path, paths, docker) if docker
                    else vllm_extensions.optional_extensions(path, paths))
    except (ImportError, ForgeError, OSError, RecursionError):  # unreadable: every file stays required
        return report
    for f in report.files:
        ext = optional.get(f.path)
        if ext is not None and not f.error:
            f.required = False
            lost = "; ".join(item.rstrip(".") for item in ext.loses[:3])
            f.optional = ext.reason + (f"; without it: {lost}" if lost else "")
    return report


def optional_notes(report: AuditReport) -> list[str]:
    out = []
    for f in report.files:
        bad = [t for t, v in f.verdict.items() if v in (NONE, PARTIAL)]
        partial = [f"{f.groups[t].none} of {f.groups[t].count} kernel groups without code for {t}" for t in bad
                   if f.verdict[t] == PARTIAL and t in f.groups]
        what = f"optional, partly usable on this GPU ({'; '.join(partial)})" if partial else NOT_USABLE
        if f.optional and bad and f.has_device_code:
            out.append(f"{f.path}: {what} ({', '.join(bad)}; it carries "
                       f"{', '.join(sort_archs(f.sass) + sort_archs(f.ptx))}); vLLM runs without it: {f.optional}")
    return out


def audit_image(image: str, targets: list[str], *, require: Iterable[str] = (), docker: str | None = None,
                via: str = "save", torch: bool = True, torch_cuda: CudaRelease | None = None) -> AuditReport:
    """Audit every extension file in a local Docker image, and the torch inside it."""
    resolved = resolve_targets(targets)
    found = scan_image(image, docker=docker, via=via)
    torch_found = torch_of_image(image, docker) if torch else None
    report = build_report(f"image {image}", found, resolved, require=require, torch=torch_found,
                          torch_cuda=torch_cuda)
    return report if require else mark_optional(report, image, docker=_docker(docker))


# ---- plain-text output (the rich table lives in tasks.py) ---------------------------------------------

TABLE_LIMIT_NO_CODE = 20


def _via(f: FileAudit, target: str) -> str:
    archs = f.via.get(target) or []
    return ", ".join(archs[:2]) + (", ..." if len(archs) > 2 else "")


def verdict_text(f: FileAudit, target: str) -> str:
    verdict = f.verdict.get(target, NONE)
    if f.error:
        return "unreadable"
    suffix = " (alternative)" if f.variant and f.variant["role"] == "alternative" else ""
    if verdict == NO_DEVICE_CODE:
        return ("no device code" if not f.required else "NO KERNEL") + suffix
    counts = f.groups.get(target)
    if counts and counts.arch_specific:
        suffix += (f"; {counts.arch_specific} more group(s) only for {', '.join(counts.arch_specific_archs)}, "
                   "not launched on this GPU")
    if f.optional and verdict == NONE:
        return NOT_USABLE
    if f.optional and verdict == PARTIAL and counts:
        return f"optional, partial: {counts.none} of {counts.count} groups have no code"
    if verdict == NATIVE:
        return f"native ({_via(f, target)})" + suffix
    if verdict == GATED and counts:
        return (f"native ({_via(f, target)}); {counts.none} of {counts.count} groups only for other GPUs, "
                "picked by vLLM's capability dispatch" + suffix)
    if verdict == PTX_JIT:
        return f"PTX JIT ({_via(f, target)})" + suffix
    if verdict == PARTIAL and counts:
        return f"PARTIAL: {counts.none} of {counts.count} groups have no code" + suffix
    return "NO KERNEL" + suffix


def rows(report: AuditReport, show_all: bool = False) -> tuple[list[list[str]], int]:
    """Table rows (file, SASS, PTX, one verdict per target) and how many no-device-code files were folded."""
    out, hidden = [], 0
    quiet = [f for f in report.files if all(v == NO_DEVICE_CODE for v in f.verdict.values())
             and not f.required and not f.error]
    fold = not show_all and len(quiet) > TABLE_LIMIT_NO_CODE
    for f in report.files:
        if fold and f in quiet:
            hidden += 1
            continue
        out.append([f.path, " ".join(sort_archs(f.sass)) or "-", " ".join(sort_archs(f.ptx)) or "-"]
                   + [verdict_text(f, t) for t in report.target_names])
    return out, hidden


def format_text(report: AuditReport, show_all: bool = False) -> str:
    header = ["file", "SASS", "PTX"] + [f"on {t.label}" for t in report.targets]
    body, hidden = rows(report, show_all)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header] + body]
    if hidden:
        lines.append(f"... and {hidden} more files without device code (--all lists them)")
    if report.torch:
        t = report.torch
        lines.append(f"torch ({t.where}): " + (t.error or f"{t.version} (CUDA {t.cuda}) built for "
                                                 f"{' '.join(t.arch_list)}; " + ", ".join(
                                                     f"{k}: {v}" for k, v in t.verdict.items())))
    lines += [f"note: {n}" for n in report.notes()]
    lines.append(report.summary())
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Check that every CUDA extension can run on the target GPU(s).")
    parser.add_argument("path", nargs="?", help="a .so, executable, directory, wheel, or `docker save`/`export` tar")
    parser.add_argument("--image", help="a local Docker image to audit instead of PATH")
    parser.add_argument("--arch", action="append", required=True,
                        help="target GPU(s): sm_120, 12.0, 9.0a, '9.0a;12.0+PTX', rtx5090 (repeatable)")
    parser.add_argument("--require", action="append", default=[], metavar="GLOB",
                        help="files that must run (default: every file that carries device code)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--all", action="store_true", help="list every file without device code too")
    parser.add_argument("--via", default="save", choices=["save", "export"], help="how to read --image")
    parser.add_argument("--docker", help="docker client (default: $VLLM_FORGE_DOCKER or docker)")
    parser.add_argument("--no-torch", action="store_true", help="do not check torch's own arch list")
    parser.add_argument("--max-inflate", default=str(DEFAULT_MAX_INFLATE >> 30) + "G", metavar="SIZE",
                        help="cap on the bytes inflated from wheels (default %(default)s; e.g. 16G)")
    parser.add_argument("--torch-cuda", type=CudaRelease.parse, default=None, metavar="X.Y",
                        help="CUDA of the torch that loads these files (picks per-CUDA library variants)")
    args = parser.parse_args(argv)
    if bool(args.path) == bool(args.image):
        raise ForgeError("give either a PATH or --image IMAGE",
                         "e.g. python -m vllm_forge.audit.audit dist/ --arch 12.0")
    if args.image:
        report = audit_image(args.image, args.arch, require=args.require, docker=args.docker, via=args.via,
                             torch=not args.no_torch, torch_cuda=args.torch_cuda)
    else:
        report = audit_path(args.path, args.arch, require=args.require, torch=not args.no_torch,
                            max_inflate=args.max_inflate, torch_cuda=args.torch_cuda)
    print(report.to_json() if args.json else format_text(report, show_all=args.all))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
