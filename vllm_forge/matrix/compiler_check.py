"""Check compat.CUDA_ARCHS against a real compiler: what ptxas of that CUDA accepts and refuses.

For one CUDA version, with that version's ``ptxas`` (NVIDIA's PyPI packages: ``nvidia-cuda-nvcc-cu12``
for 12.x, ``cuda-toolkit[nvcc,...]`` for 13.x; ``nox -s compilers`` installs each into its own venv):

1. ``ptxas --version`` must be that CUDA release;
2. the ``sm_*`` values ``ptxas --help`` lists for ``--gpu-name`` must equal the compat row;
3. a small PTX kernel must assemble for every arch of the row (``.target sm_XY``, ``-arch=sm_XY``);
4. every arch some other compat row lists but this one does not must be refused.

Run: ``python -m vllm_forge.matrix.compiler_check --cuda 12.8 [--ptxas PATH] [--json]``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_release import CudaRelease

# The PyPI packages that give a CUDA version's ptxas. 13.x: the cuda-toolkit meta-package pinned as
# one release (a lone nvidia-cuda-nvcc pulls the newest nvvm, and ptxas then fails with
# "Unsupported .version"); 12.x / 11.x: nvidia-cuda-nvcc-cuNN, which ships bin/ptxas.
CUDA_TOOLKIT_PINS = {"13.0": "13.0.2"}


def compiler_packages(cuda: CudaRelease) -> list[str]:
    minor = cuda.minor_str
    if cuda.major >= 13:
        pin = CUDA_TOOLKIT_PINS.get(minor, f"{minor}.*")
        return [f"cuda-toolkit[nvcc,crt,nvvm,cudart]=={pin}"]
    return [f"nvidia-cuda-nvcc-cu{cuda.major}=={minor}.*"]


def find_ptxas(cuda: CudaRelease, prefixes: list[str] | None = None) -> Path | None:
    """ptxas of the ``nvidia`` PyPI packages importable here (``nvidia/cuNN/bin`` for 13.x,
    ``nvidia/cuda_nvcc/bin`` before)."""
    major = cuda.major
    if prefixes is None:
        try:
            import nvidia  # namespace package of NVIDIA's wheels
        except ImportError:
            return None
        prefixes = list(getattr(nvidia, "__path__", []))
    for root in prefixes:
        for sub in (f"cu{major}/bin/ptxas", "cuda_nvcc/bin/ptxas"):
            path = Path(root) / sub
            if path.is_file():
                return path
    return None


@dataclass
class CompilerCheck:
    cuda: CudaRelease
    ptxas: str
    release: CudaRelease | None = None  # 12.8.93: what ptxas --version says
    ptx_isa: str = ""  # newest PTX ISA this ptxas reads, e.g. "8.7"
    help_archs: list[str] = field(default_factory=list)  # sm_* that --help lists
    table_archs: list[str] = field(default_factory=list)  # compat.CUDA_ARCHS row
    compiled: list[str] = field(default_factory=list)  # listed archs that assembled
    failed: dict[str, str] = field(default_factory=dict)  # listed arch -> ptxas error
    refused: list[str] = field(default_factory=list)  # unlisted archs ptxas refused, naming the arch
    accepted_unlisted: list[str] = field(default_factory=list)  # unlisted archs ptxas accepted
    refused_otherwise: dict[str, str] = field(default_factory=dict)  # unlisted, failed for another reason

    @property
    def missing_from_table(self) -> list[str]:
        return sorted(set(self.help_archs) - set(self.table_archs), key=sm_key)

    @property
    def missing_from_ptxas(self) -> list[str]:
        return sorted(set(self.table_archs) - set(self.help_archs), key=sm_key)

    @property
    def ok(self) -> bool:
        return (not self.failed and not self.accepted_unlisted and not self.refused_otherwise
                and not self.missing_from_table
                and not self.missing_from_ptxas and self._release_matches)

    @property
    def _release_matches(self) -> bool:
        return self.release is not None and self.release.same_minor(self.cuda)

    def as_dict(self) -> dict:
        data = asdict(self)
        data.update(cuda=str(self.cuda), release=str(self.release or ""), ok=self.ok,
                    missing_from_table=self.missing_from_table,
                    missing_from_ptxas=self.missing_from_ptxas)
        return data

    def summary(self) -> str:
        head = (f"CUDA {self.cuda}: ptxas {self.release} (PTX ISA {self.ptx_isa}): "
                f"{len(self.compiled)}/{len(self.table_archs)} listed archs assembled, "
                f"{len(self.refused)} unlisted refused")
        problems = []
        if not self._release_matches:
            problems.append(f"this ptxas is release {self.release}, not {self.cuda}")
        if self.failed:
            problems.append("listed but failed: " + ", ".join(self.failed))
        if self.refused_otherwise:
            problems.append("not listed, failed for another reason: " + ", ".join(self.refused_otherwise))
        if self.accepted_unlisted:
            problems.append("not listed but accepted: " + ", ".join(self.accepted_unlisted))
        if self.missing_from_table:
            problems.append("ptxas --help lists, compat.CUDA_ARCHS lacks: " + ", ".join(self.missing_from_table))
        if self.missing_from_ptxas:
            problems.append("compat.CUDA_ARCHS lists, ptxas --help lacks: " + ", ".join(self.missing_from_ptxas))
        return head + (" -- MISMATCH: " + "; ".join(problems) if problems else " -- table matches")


def sm_key(sm: str) -> tuple[int, str]:
    m = re.match(r"sm_(\d+)([a-z]?)$", sm)
    return (int(m.group(1)), m.group(2)) if m else (0, sm)


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def ptxas_release(ptxas: Path) -> CudaRelease:
    out = _run([str(ptxas), "--version"]).stdout
    m = re.search(r"release \d+\.\d+, V(\d+\.\d+\.\d+)", out)
    if not m:
        raise ForgeError(f"{ptxas} --version printed no CUDA release", "check the ptxas path (--ptxas)")
    return CudaRelease.parse(m.group(1))


def help_archs(help_text: str) -> list[str]:
    """The ``sm_*`` values of ``--gpu-name`` in ``ptxas --help``."""
    start = help_text.find("--gpu-name")
    section = help_text[start:]
    m = re.search(r"Allowed values for this option:(.*?)(?:Default value|\n\s*\n)", section, re.S)
    if start < 0 or not m:
        raise ForgeError("ptxas --help has no list of --gpu-name values", "check the ptxas path (--ptxas)")
    return sorted(set(re.findall(r"'(sm_\d+[a-z]?)'", m.group(1))), key=sm_key)


def _ptx(version: str, sm: str) -> str:
    return (f".version {version}\n.target {sm}\n.address_size 64\n\n"
            ".visible .entry forge_probe(.param .u64 out)\n{\n"
            "\t.reg .b64 %rd<2>;\n\t.reg .b32 %r<2>;\n"
            "\tld.param.u64 %rd1, [out];\n\tmov.u32 %r1, %tid.x;\n"
            "\tst.global.u32 [%rd1], %r1;\n\tret;\n}\n")


def newest_ptx_isa(ptxas: Path, workdir: Path, probe_sm: str) -> str:
    """The PTX ISA version this ptxas reads, from its own "current version is 'X.Y'" message."""
    path = workdir / "probe.ptx"
    path.write_text(_ptx("99.9", probe_sm))
    proc = _run([str(ptxas), f"-arch={probe_sm}", str(path), "-o", str(workdir / "probe.cubin")])
    m = re.search(r"current version is '(\d+\.\d+)'", proc.stderr + proc.stdout)
    if not m:
        raise ForgeError(f"{ptxas} did not say which PTX ISA it reads", "check the ptxas path (--ptxas)")
    return m.group(1)


def assemble(ptxas: Path, sm: str, isa: str, workdir: Path) -> tuple[bool, str]:
    """Assemble the probe kernel for ``sm``; (accepted, ptxas's error text)."""
    src = workdir / f"{sm}.ptx"
    src.write_text(_ptx(isa, sm))
    proc = _run([str(ptxas), f"-arch={sm}", str(src), "-o", str(workdir / f"{sm}.cubin")])
    ok = proc.returncode == 0 and (workdir / f"{sm}.cubin").is_file()
    return ok, (proc.stderr or proc.stdout).strip().splitlines()[0] if not ok else ""


def refuses_arch(error: str, sm: str) -> bool:
    """ptxas's own words for an arch it does not know (not some other failure)."""
    return (f"Value '{sm}' is not defined for option 'gpu-name'" in error
            or f"Unsupported .target '{sm}'" in error)


def check_compiler(cuda: CudaRelease, ptxas: Path) -> CompilerCheck:
    if cuda.minor_str not in compat.CUDA_ARCHS:
        raise ForgeError(f"CUDA {cuda} has no row in compat.CUDA_ARCHS",
                         f"use one of {', '.join(str(known) for known in compat.known_cudas())}")
    table = sorted(compat.CUDA_ARCHS[cuda.minor_str], key=sm_key)
    every = set().union(*compat.CUDA_ARCHS.values())
    result = CompilerCheck(cuda=cuda.minor_release, ptxas=str(ptxas), table_archs=table)
    result.release = ptxas_release(ptxas)
    result.help_archs = help_archs(_run([str(ptxas), "--help"]).stdout)
    with tempfile.TemporaryDirectory(prefix="forge-ptxas-") as tmp:
        work = Path(tmp)
        # Probe with an arch this ptxas itself lists, so a wrong table row cannot spoil the probe.
        result.ptx_isa = newest_ptx_isa(ptxas, work, (result.help_archs or table)[0])
        for sm in table:
            ok, err = assemble(ptxas, sm, result.ptx_isa, work)
            if ok:
                result.compiled.append(sm)
            else:
                result.failed[sm] = err
        for sm in sorted(every - set(table), key=sm_key):
            ok, err = assemble(ptxas, sm, result.ptx_isa, work)
            if ok:
                result.accepted_unlisted.append(sm)
            elif refuses_arch(err, sm):
                result.refused.append(sm)
            else:
                result.refused_otherwise[sm] = err
    return result


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Check compat.CUDA_ARCHS[cuda] against that CUDA's real ptxas.")
    parser.add_argument("--cuda", required=True, type=CudaRelease.parse,
                        help="CUDA: the release whose row to check, e.g. 12.8")
    parser.add_argument("--ptxas", help="ptxas to use (default: the one of NVIDIA's PyPI packages installed here)")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("--out", help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    ptxas = Path(args.ptxas) if args.ptxas else find_ptxas(args.cuda)
    if ptxas is None or not ptxas.is_file():
        raise ForgeError(f"no ptxas for CUDA {args.cuda} is installed in this Python",
                         f"pip install {' '.join(repr(p) for p in compiler_packages(args.cuda))}, or pass --ptxas")
    if not os.access(ptxas, os.X_OK):
        raise ForgeError(f"{ptxas} is not executable", f"chmod +x {ptxas}")
    result = check_compiler(args.cuda, ptxas)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.summary())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
