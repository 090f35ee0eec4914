"""Run a built vLLM's own custom ops on the GPU against a torch reference: the kernels not only exist for the
GPU (the audit), they load with this torch and compute the right numbers.

    python -m vllm_forge.audit.op_check dist/vllm-0.26.0+cu130.sm90-...whl [--json]

The wheel's ``_C`` extension (``_C_stable_libtorch.abi3.so`` from vLLM 0.2x, ``_C.abi3.so`` before) is
extracted next to nothing else and loaded with ``torch.ops.load_library``; then ``torch.ops._C.rms_norm`` and
``torch.ops._C.silu_and_mul`` run on the GPU in bf16 and are compared with the same maths in float32 torch.
Needs torch with CUDA and a GPU: it is what the GPU host runs (scripts/gpu/real_build_on_gpu.sh); elsewhere it says
why it cannot run, in one line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

# Which library registers torch.ops._C, newest layout first.
C_LIBRARIES = ("vllm/_C_stable_libtorch.abi3.so", "vllm/_C.abi3.so")


@dataclass
class OpResult:
    op: str
    shape: list[int]
    max_abs_error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= self.tolerance


def extract_c_library(wheel: Path, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        member = next((m for m in C_LIBRARIES if m in names), None)
        if member is None:
            raise SystemExit(f"error: {wheel.name} holds none of {', '.join(C_LIBRARIES)}: nothing registers "
                             "torch.ops._C. Fix: build the _C target (--targets _C).")
        target = into / Path(member).name
        target.write_bytes(zf.read(member))
    return target


def check_ops(library: Path, *, seed: int = 0) -> list[OpResult]:
    import torch

    torch.ops.load_library(str(library))
    torch.manual_seed(seed)
    device, dtype, tokens, hidden = "cuda", torch.bfloat16, 64, 4096
    results = []

    x = torch.randn(tokens, hidden, device=device, dtype=dtype)
    weight = torch.randn(hidden, device=device, dtype=dtype)
    out = torch.empty_like(x)
    torch.ops._C.rms_norm(out, x, weight, 1e-6)
    xf = x.float()
    ref = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * weight.float()).to(dtype)
    # bf16 keeps 8 bits of mantissa: one rounding step of the largest output is the tolerance
    results.append(OpResult("rms_norm", [tokens, hidden], (out.float() - ref.float()).abs().max().item(),
                            ref.float().abs().max().item() * 2 ** -7))

    gate_up = torch.randn(tokens, 2 * hidden, device=device, dtype=dtype)
    out = torch.empty(tokens, hidden, device=device, dtype=dtype)
    torch.ops._C.silu_and_mul(out, gate_up)
    g, u = gate_up.float().chunk(2, dim=-1)
    ref = (torch.nn.functional.silu(g) * u).to(dtype)
    results.append(OpResult("silu_and_mul", [tokens, 2 * hidden], (out.float() - ref.float()).abs().max().item(),
                            ref.float().abs().max().item() * 2 ** -7))
    torch.cuda.synchronize()
    return results


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Run a built vLLM's rms_norm and silu_and_mul on the GPU "
                                                 "against a torch reference.")
    parser.add_argument("wheel", type=Path, help="a vLLM wheel (built by build-wheel)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("error: torch is not installed here. Fix: run this where the wheel's torch is.", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to torch. Fix: run this on the GPU host.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vllm-forge-ops-") as tmp:
        library = extract_c_library(args.wheel, Path(tmp))
        results = check_ops(library)
    facts = {"wheel": args.wheel.name, "library": library.name, "torch": torch.__version__,
             "torch_cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0),
             "capability": list(torch.cuda.get_device_capability(0)),
             "results": [asdict(r) | {"ok": r.ok} for r in results]}
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        sm = "".join(map(str, facts["capability"]))
        print(f"{facts['library']} from {facts['wheel']} on {facts['gpu']} (sm_{sm}),"
              f" torch {facts['torch']} (CUDA {facts['torch_cuda']})")
        for r in results:
            print(f"torch.ops._C.{r.op} {r.shape}: max abs error {r.max_abs_error:.3g} vs torch "
                  f"(tolerance {r.tolerance:.3g}): {'ok' if r.ok else 'WRONG'}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
