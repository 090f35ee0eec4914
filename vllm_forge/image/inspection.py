"""Looking at a baked image: its labels and who it runs as (``invoke inspect``), its size over its runtime
base split into the JIT toolchain, torch and its CUDA wheels, vLLM and the rest, and its largest layers
(``invoke check-size --image``).

    python -m vllm_forge.image.inspection inspect IMAGE
    python -m vllm_forge.image.inspection check-size IMAGE [--budget-gb N]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.validate import check_image_ref

GB = 1000**3  # docker reports sizes in SI units


def _docker_json(docker: str, *args: str) -> object:
    proc = subprocess.run([docker, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ForgeError(
            f"`docker {' '.join(args[:3])}` failed: {proc.stderr.strip()[-300:]}",
            "check the image name (`docker images`) and that the Docker engine runs",
        )
    return json.loads(proc.stdout or "null")


def inspect_image(docker: str, image: str) -> dict:
    """The image's labels, size, creation time, entrypoint and id."""
    check_image_ref(image, "the image")
    data = _docker_json(docker, "image", "inspect", image)
    if not data:
        raise ForgeError(f"no image {image}", "bake one with `invoke bake`, or check `docker images`")
    info = data[0]
    config = info.get("Config") or {}
    return {
        "id": info.get("Id", ""),
        "tags": info.get("RepoTags") or [],
        "created": info.get("Created", ""),
        "size": int(info.get("Size") or 0),
        "labels": config.get("Labels") or {},
        "entrypoint": config.get("Entrypoint") or [],
        "env": config.get("Env") or [],
        "user": config.get("User") or "",  # "" : root
    }


@dataclass
class LayerInfo:
    size: int
    instruction: str


@dataclass
class ImageSizeReport:
    image: str
    size: int
    base: str
    base_size: int | None
    budget_gb: float
    layers: list[LayerInfo]  # largest first

    @property
    def over_base(self) -> int | None:
        return None if self.base_size is None else self.size - self.base_size

    @property
    def ok(self) -> bool:
        return not self.budget_gb or self.size <= self.budget_gb * GB


def clean_instruction(created_by: str) -> str:
    """A history entry as the Dockerfile line that made it: ``/bin/sh -c #(nop)  ENV A=1`` -> ``ENV A=1``,
    ``RUN |2 X=1 Y=2 /bin/sh -c cmd # buildkit`` -> ``RUN cmd``; an empty entry is the base image's."""
    text = created_by.strip()
    if text.endswith("# buildkit"):
        text = text[: -len("# buildkit")].rstrip()
    if not text:
        return "(a layer of the base image)"
    nop = text.find("/bin/sh -c #(nop)")
    if nop >= 0:
        return text[nop + len("/bin/sh -c #(nop)") :].strip()
    shell = text.find("/bin/sh -c ")
    if shell >= 0 and (text.startswith(("RUN ", "|", "/bin/sh"))):
        return "RUN " + text[shell + len("/bin/sh -c ") :].strip()
    return text


def image_history(docker: str, image: str) -> list[LayerInfo]:
    check_image_ref(image, "the image")
    proc = subprocess.run(
        [docker, "history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}", image],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ForgeError(
            f"cannot read the history of {image}: {proc.stderr.strip()[-200:]}",
            "check the image name (`docker images`)",
        )
    layers = []
    for line in proc.stdout.splitlines():
        size, _, created_by = line.partition("\t")
        try:
            layers.append(LayerInfo(int(size), clean_instruction(created_by)))
        except ValueError:
            continue
    return layers


def image_size_report(
    docker: str, image: str, budget_gb: float = 0, *, base: str = "", top: int = 8
) -> ImageSizeReport:
    """Size of ``image``, its size over the runtime base (the label, or ``base``), largest layers."""
    info = inspect_image(docker, image)
    base = base or info["labels"].get("org.opencontainers.image.base.name", "")
    base_size = None
    try:  # the label is the image's own word: never a docker option
        check_image_ref(base, "the base image")
    except ForgeError:
        base = ""
    if base:
        proc = subprocess.run(
            [docker, "image", "inspect", "--format", "{{.Size}}", base], capture_output=True, text=True
        )
        if proc.returncode == 0 and proc.stdout.strip().isdigit():
            base_size = int(proc.stdout.strip())
    layers = sorted(image_history(docker, image), key=lambda layer: layer.size, reverse=True)
    biggest = [layer for layer in layers if layer.size][:top]
    return ImageSizeReport(image, info["size"], base, base_size, budget_gb, biggest)


# Python distributions that are the JIT toolchain (the pip route of JIT_TOOLCHAINS) and those that are torch
# and its CUDA wheels; every other distribution new over the base is vLLM and its other requirements.
JIT_DISTS = re.compile(r"^(cuda-toolkit|nvidia-cuda-nvcc(-cu\d+)?|nvidia-nvvm|nvidia-cuda-crt|nvidia-cuda-cuobjdump"
                       r"(-cu\d+)?)$")
TORCH_DISTS = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch-triton|nvidia-.*|cuda-bindings|cuda-python"
                         r"|cuda-pathfinder)$")
SIZE_PARTS = ("JIT toolchain", "torch and its CUDA wheels", "vLLM and its other requirements", "the rest")
# Run inside an image with its python3: every installed distribution with the bytes of its files.
_DIST_PROBE = """
import json, os
from importlib import metadata
out = {}
for dist in metadata.distributions():
    name = (dist.metadata.get("Name") or "").lower().replace("_", "-")
    size = 0
    for f in dist.files or []:
        try:
            size += os.lstat(dist.locate_file(f)).st_size
        except OSError:
            pass
    out[name + "==" + (dist.version or "")] = size
print(json.dumps(out))
"""


@dataclass
class SizeBreakdown(ImageSizeReport):
    """The size report with the size over the base split into its parts."""

    parts: dict[str, int] = field(default_factory=dict)  # SIZE_PARTS -> bytes over the base
    dists: dict[str, int] = field(default_factory=dict)  # name==version -> bytes, new over the base

    def to_dict(self) -> dict:
        """The `image-size` record and the size figure's input: bytes (SI, as docker reports them)."""
        return {"image": self.image, "size": self.size, "base": self.base, "base_size": self.base_size,
                "over_base": self.over_base, "parts": dict(self.parts), "budget_gb": self.budget_gb, "ok": self.ok,
                "layers": [{"size": layer.size, "instruction": layer.instruction} for layer in self.layers],
                "dists": dict(sorted(self.dists.items(), key=lambda item: -item[1]))}


def _dist_sizes(docker: str, image: str) -> dict[str, int]:
    proc = subprocess.run([docker, "run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c",
                           _DIST_PROBE], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return {}  # no python3 (a CUDA -base image): nothing of the base counts as a distribution
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}


def jit_layer_bytes(docker: str, image: str) -> int:
    """Bytes of the runtime stage's JIT toolchain layer (the RUN that reads JIT_TOOLCHAIN)."""
    proc = subprocess.run([docker, "history", "--no-trunc", "--human=false", "--format", "{{.Size}}\t{{.CreatedBy}}",
                           image], capture_output=True, text=True)
    total = 0
    for line in proc.stdout.splitlines():
        size, _, created_by = line.partition("\t")
        if 'case "$JIT_TOOLCHAIN"' in created_by and size.isdigit():  # the RUN that reads it, not its ARG
            total += int(size)
    return total


def classify_sizes(image_dists: dict[str, int], base_dists: dict[str, int], jit_layer: int,
                   over_base: int | None) -> tuple[dict[str, int], dict[str, int]]:
    """(parts, new distributions): the size over the base split into SIZE_PARTS. The JIT toolchain is its
    layer (apt packages and g++ included) or, without one, its distributions; "the rest" is what is left
    (python itself when the base has none, the venv, metadata)."""
    new = {key: size for key, size in image_dists.items() if key not in base_dists}
    has_torch = any(key.split("==")[0] == "torch" for key in new)
    jit_dists = torch = vllm = 0
    for key, size in new.items():
        name = key.split("==")[0]
        # Without torch, NVIDIA's CUDA wheels (the cudart headers of cuda-toolkit[cudart]) are the toolchain's.
        if JIT_DISTS.match(name) or (not has_torch and name.startswith("nvidia-")):
            jit_dists += size
        elif TORCH_DISTS.match(name):
            torch += size
        else:
            vllm += size
    jit = jit_layer or jit_dists
    parts = {SIZE_PARTS[0]: jit, SIZE_PARTS[1]: torch, SIZE_PARTS[2]: vllm}
    parts[SIZE_PARTS[3]] = max(0, (over_base or 0) - sum(parts.values())) if over_base is not None else 0
    return parts, new


def image_size_breakdown(docker: str, image: str, *, base: str = "", top: int = 8,
                         budget_gb: float = 0.0) -> SizeBreakdown:
    """`check-size --image`: the image over its runtime base, split into the JIT toolchain, torch and its
    CUDA wheels, vLLM and its other requirements, and the rest, with the largest layers."""
    check_image_ref(image, "the image")
    report = image_size_report(docker, image, budget_gb, base=base, top=top)
    base_dists = _dist_sizes(docker, report.base) if report.base and report.base_size is not None else {}
    parts, new = classify_sizes(_dist_sizes(docker, image), base_dists, jit_layer_bytes(docker, image),
                                report.over_base)
    return SizeBreakdown(image, report.size, report.base, report.base_size, budget_gb, report.layers, parts=parts,
                         dists=new)


def format_size_breakdown(result: SizeBreakdown) -> list[str]:
    over = result.over_base
    lines = [f"{result.image}: {result.size / GB:.2f} GB"
             + (f", {over / GB:.2f} GB over its base {result.base}" if over is not None
                else (f" (base {result.base} is not present locally: parts are what the image adds)" if result.base
                      else ""))]
    for name, size in result.parts.items():
        share = f" ({100 * size / over:.0f}%)" if over else ""
        lines.append(f"  {size / 1e6:10.1f} MB  {name}{share}")
    lines.append("largest layers:")
    lines += [f"  {layer.size / 1e6:10.1f} MB  {layer.instruction[:120]}" for layer in result.layers]
    return lines


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Look at a baked image: its labels, or its size and largest layers.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_inspect = sub.add_parser("inspect", help="show an image's labels")
    p_inspect.add_argument("image")
    p_inspect.add_argument("--docker", default="docker", help="PATH: the docker client")
    p_size = sub.add_parser("check-size", help="image size, size over its base, largest layers")
    p_size.add_argument("image")
    p_size.add_argument("--budget-gb", type=float, default=0, help="GB: fail over this size (0: no budget)")
    p_size.add_argument("--docker", default="docker", help="PATH: the docker client")
    args = parser.parse_args(argv)
    if args.cmd == "inspect":
        info = inspect_image(args.docker, args.image)
        print(json.dumps(info["labels"], indent=2, sort_keys=True))
        print(f"runs as: {info['user'] or 'root'} (image USER)")
        return 0
    report = image_size_report(args.docker, args.image, args.budget_gb)
    print("\n".join(format_size_breakdown(image_size_breakdown(args.docker, args.image))))
    if not report.ok:
        print(f"over the budget of {report.budget_gb:g} GB")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
