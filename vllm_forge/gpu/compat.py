"""What works with what: the one place the CUDA / arch / GPU / container / driver facts live.

Every other module reads these tables; nothing else hard-codes an arch list, an image tag or a
driver version. Each row names its source. The CUDA -> arch rows are also checked against real
compilers by ``nox -s compilers`` (ptxas ``--help`` lists the targets it accepts).
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu.cuda_arch import ComputeCapability, CudaArch
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.gpu.runs_on import sass_runs_on

# The tables below are keyed by a CUDA release's minor as text ("12.8", as NVIDIA's release notes name them):
# look them up with ``CudaRelease.minor_str``.


def _sm(*names: str) -> frozenset[str]:
    return frozenset(names)


# --- CUDA toolkit version -> SM targets nvcc/ptxas accept ----------------------------------------
# Source: each release's `ptxas --help` ("Allowed values for this option") and the CUDA Toolkit
# release notes ("CUDA Compiler" / "Deprecated or Dropped Architectures").
_SM_LEGACY = _sm("sm_50", "sm_52", "sm_53", "sm_60", "sm_61", "sm_62", "sm_70", "sm_72")
_SM_TURING_HOPPER = _sm("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_90a")

CUDA_ARCHS: dict[str, frozenset[str]] = {
    # CUDA 11.8 release notes: adds sm_89 (Ada) and sm_90 (Hopper); sm_90a does not exist yet.
    "11.8": _sm("sm_35", "sm_37") | _SM_LEGACY | (_SM_TURING_HOPPER - {"sm_90a"}),
    # CUDA 12.0 release notes: drops Kepler (sm_35/37), adds arch-specific sm_90a.
    "12.1": _SM_LEGACY | _SM_TURING_HOPPER,
    "12.4": _SM_LEGACY | _SM_TURING_HOPPER,
    "12.6": _SM_LEGACY | _SM_TURING_HOPPER,
    # CUDA 12.8 release notes: first toolkit with Blackwell, sm_100 (B200), sm_101 (Thor),
    # sm_120 (RTX 50xx / RTX PRO 6000), each with its `a` variant.
    "12.8": _SM_LEGACY | _SM_TURING_HOPPER
    | _sm("sm_100", "sm_100a", "sm_101", "sm_101a", "sm_120", "sm_120a"),
    # CUDA 12.9 release notes: adds sm_103 (B300) and sm_121 (DGX Spark GB10), and the
    # family-specific `f` targets.
    "12.9": _SM_LEGACY | _SM_TURING_HOPPER
    | _sm("sm_100", "sm_100a", "sm_100f", "sm_101", "sm_101a", "sm_101f",
          "sm_103", "sm_103a", "sm_103f",
          "sm_120", "sm_120a", "sm_120f", "sm_121", "sm_121a", "sm_121f"),
    # CUDA 13.0 release notes: drops everything below Turing (sm_75), renames Thor sm_101 -> sm_110,
    # adds sm_88. Checked against nvcc 13.0.88 `ptxas --help` on this project's build machine.
    "13.0": _SM_TURING_HOPPER | _sm("sm_88")
    | _sm("sm_100", "sm_100a", "sm_100f", "sm_103", "sm_103a", "sm_103f",
          "sm_110", "sm_110a", "sm_110f",
          "sm_120", "sm_120a", "sm_120f", "sm_121", "sm_121a", "sm_121f"),
}

# vLLM-style default arch list per CUDA, used when a matrix session is given no --arch.
# Source: vLLM docker/Dockerfile `torch_cuda_arch_list` defaults for the matching CUDA, restricted
# to what that CUDA can compile.
DEFAULT_ARCH_LIST: dict[str, str] = {
    "11.8": "7.0 7.5 8.0 8.6 8.9 9.0",
    "12.1": "7.0 7.5 8.0 8.6 8.9 9.0",
    "12.4": "7.0 7.5 8.0 8.6 8.9 9.0",
    "12.6": "7.0 7.5 8.0 8.6 8.9 9.0",
    "12.8": "7.0 7.5 8.0 8.9 9.0 10.0 12.0",
    "12.9": "7.0 7.5 8.0 8.9 9.0 10.0 12.0",
    "13.0": "7.5 8.0 8.9 9.0 10.0 11.0 12.0",
}


# The CUDA releases vLLM's own images build with, from 0.8 on (docker/Dockerfile ARG CUDA_VERSION of each
# release, and the cu1xx wheel variants it publishes): `inspect-tree` shows a checkout's arch gate for each.
VLLM_CUDAS: tuple[CudaRelease, ...] = (CudaRelease(12, 6), CudaRelease(12, 8), CudaRelease(12, 9), CudaRelease(13, 0))


# --- Minimum NVIDIA driver per CUDA toolkit ---------------------------------------------------------
# Source: CUDA Toolkit release notes, Table 3 "CUDA Toolkit and Corresponding Driver Versions"
# (Linux x86_64, GA releases), and the "minor version compatibility" minimums of the same page.
@dataclass(frozen=True)
class DriverRequirement:
    full: str  # driver that runs everything the toolkit builds, PTX JIT included
    minor_compat: str  # oldest driver of the same major that still runs it (no PTX JIT of newer PTX)


MIN_DRIVER: dict[str, DriverRequirement] = {
    "11.8": DriverRequirement(full="520.61.05", minor_compat="450.80.02"),
    "12.1": DriverRequirement(full="530.30.02", minor_compat="525.60.13"),
    "12.4": DriverRequirement(full="550.54.14", minor_compat="525.60.13"),
    "12.6": DriverRequirement(full="560.28.03", minor_compat="525.60.13"),
    "12.8": DriverRequirement(full="570.26", minor_compat="525.60.13"),
    "12.9": DriverRequirement(full="575.51.03", minor_compat="525.60.13"),
    "13.0": DriverRequirement(full="580.65.06", minor_compat="580.65.06"),
}


# --- GPU marketing names -> compute capability ---------------------------------------------------------
# Source: https://developer.nvidia.com/cuda-gpus (NVIDIA's compute capability table) and, for
# Blackwell parts, the CUDA 12.8/12.9/13.0 release notes naming sm_100/sm_103/sm_110/sm_120/sm_121.
# Keys are normalised by `normalize_gpu_name` (lower case, no spaces, dashes, "nvidia"/"geforce").
@dataclass(frozen=True)
class GpuModel:
    name: str
    cc: ComputeCapability

    @property
    def capability(self) -> str:
        """``"12.0"``, as nvidia-smi's ``compute_cap`` says it."""
        return str(self.cc)

    @property
    def arch(self) -> CudaArch:
        """What ``--arch`` with this GPU's name builds: its own arch, SASS."""
        return CudaArch(self.cc.major, self.cc.minor)


_GPU_ROWS: list[tuple[str, str, tuple[str, ...]]] = [
    # (display name, capability, extra aliases)
    ("RTX 5090", "12.0", ()),
    ("RTX 5090 D", "12.0", ("rtx5090d",)),
    ("RTX 5080", "12.0", ()),
    ("RTX 5070 Ti", "12.0", ()),
    ("RTX 5070", "12.0", ()),
    ("RTX PRO 6000 Blackwell", "12.0", ("rtxpro6000", "rtxpro6000blackwellserver")),
    ("DGX Spark", "12.1", ("gb10",)),
    ("B200", "10.0", ("hgxb200", "dgxb200")),
    ("GB200", "10.0", ()),
    ("B300", "10.3", ("hgxb300", "blackwellultra")),
    ("GB300", "10.3", ()),
    ("Jetson Thor", "11.0", ("thor",)),
    ("H100", "9.0", ("h100sxm", "h100pcie", "h100nvl")),
    ("H200", "9.0", ("h200nvl",)),
    ("H800", "9.0", ()),
    ("H20", "9.0", ()),
    ("GH200", "9.0", ()),
    ("L40S", "8.9", ()),
    ("L40", "8.9", ()),
    ("L4", "8.9", ()),
    ("RTX 4090", "8.9", ()),
    ("RTX 4090 D", "8.9", ("rtx4090d",)),
    ("RTX 4080", "8.9", ()),
    ("RTX 6000 Ada", "8.9", ("rtx6000adageneration",)),
    ("A100", "8.0", ("a100sxm4", "a100pcie")),
    ("A800", "8.0", ()),
    ("A30", "8.0", ()),
    ("A10", "8.6", ()),
    ("A10G", "8.6", ()),  # AWS g5 instances (nvidia-smi: "NVIDIA A10G"): GA102, as the A10
    ("A40", "8.6", ()),
    ("RTX A6000", "8.6", ("a6000",)),
    ("RTX 3090", "8.6", ()),
    ("RTX 3090 Ti", "8.6", ()),
    ("RTX 3080", "8.6", ()),
    ("Jetson AGX Orin", "8.7", ("orin", "jetsonorin")),
    ("T4", "7.5", ("teslat4",)),
    ("RTX 2080 Ti", "7.5", ()),
    ("V100", "7.0", ("teslav100", "v100sxm2")),
    ("P100", "6.0", ("teslap100",)),
]


def normalize_gpu_name(name: str) -> str:
    text = name.lower()
    for noise in ("nvidia", "geforce", "tesla "):
        text = text.replace(noise, "")
    return "".join(ch for ch in text if ch.isalnum())


GPU_MODELS: dict[str, GpuModel] = {}
for _display, _cap, _aliases in _GPU_ROWS:
    _model = GpuModel(_display, ComputeCapability.parse(_cap))
    for _key in (normalize_gpu_name(_display), *_aliases):
        GPU_MODELS[_key] = _model


def lookup_gpu(name: str) -> GpuModel | None:
    """The model for a marketing name as users type it ("rtx5090", "RTX 5090 D", "h100")."""
    return GPU_MODELS.get(normalize_gpu_name(name))


# --- NGC PyTorch container tags -> CUDA and torch -----------------------------------------------
# Source: NVIDIA "PyTorch Release Notes" (docs.nvidia.com/deeplearning/frameworks/pytorch-release-notes),
# the per-release "Container Version / CUDA / PyTorch" rows.
@dataclass(frozen=True)
class NgcPytorchTag:
    tag: str
    cuda: CudaRelease  # the full toolkit release in the container
    torch: str
    python: str

    @property
    def image(self) -> str:
        return f"{NGC_PYTORCH_REPO}:{self.tag}"


NGC_PYTORCH_REPO = "nvcr.io/nvidia/pytorch"

NGC_PYTORCH_TAGS: list[NgcPytorchTag] = [
    NgcPytorchTag("24.04-py3", CudaRelease.parse("12.4.1"), "2.3.0a0", "3.10"),
    NgcPytorchTag("24.10-py3", CudaRelease.parse("12.6.2"), "2.5.0a0", "3.10"),
    NgcPytorchTag("24.12-py3", CudaRelease.parse("12.6.3"), "2.6.0a0", "3.12"),
    NgcPytorchTag("25.01-py3", CudaRelease.parse("12.8.0"), "2.6.0a0", "3.12"),
    NgcPytorchTag("25.02-py3", CudaRelease.parse("12.8.0"), "2.7.0a0", "3.12"),
    NgcPytorchTag("25.03-py3", CudaRelease.parse("12.8.1"), "2.7.0a0", "3.12"),
    NgcPytorchTag("25.04-py3", CudaRelease.parse("12.9.0"), "2.7.0a0", "3.12"),
    NgcPytorchTag("25.06-py3", CudaRelease.parse("12.9.1"), "2.8.0a0", "3.12"),
    NgcPytorchTag("25.08-py3", CudaRelease.parse("13.0.0"), "2.8.0a0", "3.12"),
    NgcPytorchTag("25.10-py3", CudaRelease.parse("13.0.2"), "2.9.0a0", "3.12"),
]

# The tag `bake` uses for a CUDA when none is given: the field report's 25.02 for 12.8 (the first
# tag whose torch builds sm_120 kernels), otherwise the newest tag of that CUDA minor.
DEFAULT_NGC_TAG: dict[str, str] = {"12.8": "25.02-py3"}

# Slim serving base per CUDA: NVIDIA's CUDA `-base` images (cudart and the apt repo only, as vLLM's
# own final stage uses), on which the runtime stage installs the JIT toolchain (JIT_TOOLCHAINS), torch
# with its own nvidia-* wheels, and the built vLLM wheel: no CUDA library is shipped twice.
# Source: hub.docker.com/r/nvidia/cuda tags / nvcr.io/nvidia/cuda.
CUDA_RUNTIME_IMAGES: dict[str, str] = {
    "12.4": "nvcr.io/nvidia/cuda:12.4.1-base-ubuntu22.04",
    "12.6": "nvcr.io/nvidia/cuda:12.6.3-base-ubuntu24.04",
    "12.8": "nvcr.io/nvidia/cuda:12.8.1-base-ubuntu24.04",
    "12.9": "nvcr.io/nvidia/cuda:12.9.1-base-ubuntu24.04",
    "13.0": "nvcr.io/nvidia/cuda:13.0.2-base-ubuntu24.04",
}

# What the runtime stage installs so vLLM can compile kernels at run time (FlashInfer, DeepGEMM), per
# CUDA minor of the JIT toolchain: "pip:<requirements>" or "apt:<packages>". Chosen by size
# (docs/image.md "JIT toolchain"): NVIDIA's CUDA 13 wheels carry nvcc, cicc and ptxas (nvidia-cuda-nvcc,
# nvidia-nvvm, nvidia-cuda-crt), pinned as one release through the cuda-toolkit meta package; the CUDA
# 12 wheels (nvidia-cuda-nvcc-cu12) carry only ptxas and libnvvm, no nvcc driver, so CUDA 12 takes
# NVIDIA's apt packages, the set vLLM's own final stage installs. nvrtc and the cudart library are not
# listed for pip: torch's own nvidia-* wheels bring them at torch's pins.
JIT_TOOLCHAINS: dict[str, str] = {
    "12.4": "apt:cuda-nvcc-12-4 cuda-cudart-dev-12-4 cuda-nvrtc-dev-12-4 cuda-cuobjdump-12-4 "
            "libcurand-dev-12-4 libcublas-dev-12-4",
    "12.6": "apt:cuda-nvcc-12-6 cuda-cudart-dev-12-6 cuda-nvrtc-dev-12-6 cuda-cuobjdump-12-6 "
            "libcurand-dev-12-6 libcublas-dev-12-6",
    "12.8": "apt:cuda-nvcc-12-8 cuda-cudart-dev-12-8 cuda-nvrtc-dev-12-8 cuda-cuobjdump-12-8 "
            "libcurand-dev-12-8 libcublas-dev-12-8",
    "12.9": "apt:cuda-nvcc-12-9 cuda-cudart-dev-12-9 cuda-nvrtc-dev-12-9 cuda-cuobjdump-12-9 "
            "libcurand-dev-12-9 libcublas-dev-12-9",
    "13.0": "pip:cuda-toolkit[nvcc,nvvm,crt,cudart]==13.0.2",
}

# FlashInfer JIT-compiles its sm_12x kernels only with CUDA >= 12.9 (flashinfer#1781, #1919): the JIT
# toolchain of an image that targets sm_12x and ships FlashInfer is at least this CUDA.
FLASHINFER_SM12X_MIN_CUDA = CudaRelease(12, 9)


# PyTorch's wheel index per CUDA (download.pytorch.org/whl/cuXYZ); the runtime stage installs torch
# from it. Source: pytorch.org "Start Locally" selector.
PYTORCH_WHEEL_INDEX: dict[str, str] = {
    "11.8": "https://download.pytorch.org/whl/cu118",
    "12.4": "https://download.pytorch.org/whl/cu124",
    "12.6": "https://download.pytorch.org/whl/cu126",
    "12.8": "https://download.pytorch.org/whl/cu128",
    "12.9": "https://download.pytorch.org/whl/cu129",
    "13.0": "https://download.pytorch.org/whl/cu130",
}


# CUDA builds of each torch release on the PyTorch wheel index (download.pytorch.org/whl/cuXYZ), by torch
# major.minor. Source: pytorch.org "Previous PyTorch Versions" (the pip lines of each release). 2.10 and 2.11
# are assumed to keep 2.9's set; 2.11.0+cu130 is what this project's GPU hosts run.
PYTORCH_CUDA_BUILDS: dict[str, tuple[str, ...]] = {
    "2.3": ("11.8", "12.1"),
    "2.4": ("11.8", "12.1", "12.4"),
    "2.5": ("11.8", "12.1", "12.4"),
    "2.6": ("11.8", "12.4", "12.6"),
    "2.7": ("11.8", "12.6", "12.8"),
    "2.8": ("12.6", "12.8", "12.9"),
    "2.9": ("12.6", "12.8", "13.0"),
    "2.10": ("12.6", "12.8", "13.0"),
    "2.11": ("12.6", "12.8", "13.0"),
}


def torch_release(version: str) -> str:
    """"2.11.0+cu130" / "2.7.0a0" -> "2.11" / "2.7": the release series a pin and an image's torch share."""
    parts = version.strip().split(".")
    return ".".join(parts[:2])


def cuda_devel_image(cuda: CudaRelease) -> str:
    """NVIDIA's CUDA -devel image of a release (nvcc, headers, no Python, no torch), on the same Ubuntu as
    CUDA_RUNTIME_IMAGES: the build base of a checkout that pins a torch from the PyTorch index, as vLLM's own
    Dockerfile builds (nvidia/cuda:${CUDA_VERSION}-devel). Source: nvcr.io/nvidia/cuda tags."""
    runtime = CUDA_RUNTIME_IMAGES.get(cuda.minor_str, "")
    ubuntu = runtime.rsplit("-", 1)[-1] if runtime else "ubuntu24.04"
    return f"nvcr.io/nvidia/cuda:{cuda}-devel-{ubuntu}"


def runtime_image_release(cuda: CudaRelease) -> CudaRelease | None:
    """The release with its update that compat's CUDA runtime image of ``cuda``'s minor carries (12.8 -> 12.8.1),
    as vLLM's CUDA_VERSION and NVIDIA's -devel tags want it; None when there is no such image."""
    image = CUDA_RUNTIME_IMAGES.get(cuda.minor_str, "")
    tag = image.split(":", 1)[-1].split("-", 1)[0] if image else ""
    try:
        release = CudaRelease.parse(tag) if tag else None
    except ForgeError:
        return None
    return release if release is not None and release.patch is not None else None


def known_cudas() -> list[CudaRelease]:
    """Every CUDA release CUDA_ARCHS has a row for, oldest first."""
    return sorted(CudaRelease.parse(minor) for minor in CUDA_ARCHS)


def compiles(cuda: CudaRelease, sm: str) -> bool:
    """Whether CUDA ``cuda``'s compiler accepts ``sm`` (``sm_120``, ``sm_90a``); False for a CUDA it has no row for."""
    return sm in CUDA_ARCHS.get(cuda.minor_str, ())


def ngc_tags_for(cuda: CudaRelease) -> list[NgcPytorchTag]:
    return [row for row in NGC_PYTORCH_TAGS if row.cuda.same_minor(cuda)]


def default_ngc_tag(cuda: CudaRelease) -> NgcPytorchTag | None:
    rows = ngc_tags_for(cuda)
    wanted = DEFAULT_NGC_TAG.get(cuda.minor_str)
    for row in rows:
        if row.tag == wanted:
            return row
    return rows[-1] if rows else None


def ngc_cudas() -> list[CudaRelease]:
    """The CUDA releases some NGC PyTorch image carries, oldest first."""
    return sorted({row.cuda.minor_release for row in NGC_PYTORCH_TAGS})


def min_cuda_for(sm: str) -> CudaRelease | None:
    """The oldest known CUDA toolkit whose compiler accepts ``sm`` (e.g. "sm_120" -> 12.8)."""
    return next((cuda for cuda in known_cudas() if compiles(cuda, sm)), None)


def max_cuda_for(sm: str) -> CudaRelease | None:
    """The newest known CUDA toolkit that still accepts ``sm`` (e.g. "sm_70" -> 12.9)."""
    return next((cuda for cuda in reversed(known_cudas()) if compiles(cuda, sm)), None)


# =====================================================================================================
# NCCL and interconnect tables (added by the doctor / NCCL diagnostics, issue 5)
# =====================================================================================================

# --- Oldest NCCL release that works on a GPU generation -------------------------------------------
# Key: compute capability; a GPU uses the row of its own capability, else the highest row of the
# same major that is not above it (SASS of X.y runs on X.z, z >= y). Value: (version, why).
# Sources: NVIDIA/nccl release commits ("NCCL x.y.z-1" messages) and makefiles/common.mk gencodes.
NCCL_MIN_FOR_ARCH: dict[str, tuple[str, str]] = {
    # 2.7.3-1 (2020-05-12): "Add support for A100 GPU and related platforms"; first sm_80 gencode.
    "8.0": ("2.7.3", "NCCL 2.7.3 added A100 (sm_80); older releases carry no sm_80 kernels"),
    # Volta sm_70 is compiled by every NCCL 2.x release still in use; 2.4.x is the oldest we consider.
    "7.0": ("2.4.8", "NCCL 2.4 is the oldest release these diagnostics know"),
    # 2.15.1-1 (2022-09-27): "Add support for H100 (sm90)".
    "9.0": ("2.15.1", "NCCL 2.15.1 added H100/H200 (sm_90)"),
    # 2.25.1-1 (2025-01-27): "Add Blackwell/SM100 support" (sm_100 gencode).
    "10.0": ("2.25.1", "NCCL 2.25.1 added Blackwell sm_100 (B200/GB200)"),
    # 2.27.5-1: first release whose makefile builds sm_110 (Thor, CUDA 13).
    "11.0": ("2.27.5", "NCCL 2.27.5 is the first release built for sm_110 (CUDA 13)"),
    # 2.25.1 compiled sm_120 but its kernels asked for more shared memory than RTX 50xx parts have:
    # `ncclMaxSharedMem 82240 exceeds device/fn maxSharedMem 79856`, then the first collective fails
    # with `enqueue.cc:1500 NCCL WARN Cuda failure 1 'invalid argument'`. Fixed in 2.26.2-1
    # (2025-03-12): "Fix shared memory usage on recent Blackwell GPUs" (NVIDIA/nccl-tests#287,
    # NVIDIA/nccl-tests#291, NVIDIA/nccl#1637).
    "12.0": ("2.26.2", "NCCL 2.26.2 fixed shared memory sizing on RTX 50xx / RTX PRO (sm_120): "
                       "NVIDIA/nccl-tests#287, NVIDIA/nccl-tests#291, NVIDIA/nccl#1637"),
}


def nccl_min_for_capability(gpu: ComputeCapability) -> tuple[str, str] | None:
    """The (oldest NCCL version, reason) row for a GPU: its own row, else that of the newest arch whose
    kernels (SASS) run on it (vllm_forge/gpu/runs_on.py); None when no row's do."""
    rows = [(ComputeCapability.parse(key), row) for key, row in NCCL_MIN_FOR_ARCH.items()]
    running = [(cc, row) for cc, row in rows if sass_runs_on(CudaArch(cc.major, cc.minor), gpu)]
    return max(running)[1] if running else None


# --- Link model: what one GPU pair's path can carry, GB/s one direction --------------------------
# The one table the bus-bandwidth verdicts are judged against; every row names its source. NVLink
# rows are per link (the NV# of `nvidia-smi topo -m` is the link count) and per generation, from
# NVIDIA's datasheets (bidirectional totals halved). PCIe rows follow NCCL's own topology model:
# NCCL sizes a PCIe link as width * per-lane-speed / 80 (src/graph/topo.cc, speeds from the
# kvDictPciGen table of src/graph/xml.h: 60/120/240/480 for 8/16/32/64 GT/s; src/graph/topo.h
# `PCI_BW 12.0 // PCI Gen3 x16`), so x16 is 12/24/48/96 GB/s for Gen3/4/5/6: lower than PCI-SIG's
# raw 15.75/31.5/63 because it is what NCCL itself plans with. SHM across a host bridge (PHB, or
# NODE/SYS) copies through host memory: each GPU's PCIe link carries the data once per direction,
# and NCCL's path model gives a path the bandwidth of its narrowest link (src/graph/paths.cc), so
# the SHM path is judged against the GPUs' PCIe figure.
@dataclass(frozen=True)
class LinkModelRow:
    kind: str  # "nvlink" (per link), "pcie" (x16), "shm" (path through host memory)
    generation: str  # "sm_90", "gen4", "PHB"
    gbps: float
    source: str


LINK_MODEL: list[LinkModelRow] = [
    LinkModelRow("nvlink", "sm_70", 25.0, "V100 SXM2 datasheet: 300 GB/s over 6 NVLink2 links"),
    LinkModelRow("nvlink", "sm_80", 25.0, "A100 SXM datasheet: 600 GB/s over 12 NVLink3 links"),
    LinkModelRow("nvlink", "sm_86", 14.0625, "A40 / RTX 3090 NVLink bridge: 112.5 GB/s over 4 links"),
    LinkModelRow("nvlink", "sm_90", 25.0, "H100/H200 SXM datasheet: 900 GB/s over 18 NVLink4 links"),
    LinkModelRow("nvlink", "sm_100", 50.0, "B200 datasheet: 1.8 TB/s over 18 NVLink5 links"),
    LinkModelRow("nvlink", "sm_103", 50.0, "B300 datasheet: 1.8 TB/s over 18 NVLink5 links"),
    LinkModelRow("pcie", "gen3", 12.0, "NCCL src/graph/topo.h PCI_BW 12.0 (Gen3 x16); topo.cc width*speed/80"),
    LinkModelRow("pcie", "gen4", 24.0, "NCCL topo.cc width*speed/80 with xml.h 16 GT/s = 120: x16 = 24"),
    LinkModelRow("pcie", "gen5", 48.0, "NCCL topo.cc width*speed/80 with xml.h 32 GT/s = 240: x16 = 48"),
    LinkModelRow("pcie", "gen6", 96.0, "NCCL topo.cc width*speed/80 with xml.h 64 GT/s = 480: x16 = 96"),
    LinkModelRow("shm", "PHB", 1.0, "SHM through host memory across the PCIe host bridge: NCCL's path model "
                 "(src/graph/paths.cc) bounds it by the GPUs' PCIe link; gbps is a factor of that figure"),
]


def link_model(kind: str, generation: str) -> LinkModelRow | None:
    return next((r for r in LINK_MODEL if r.kind == kind and r.generation == generation), None)


# Derived views (the link model above is the source): NVLink GB/s per link by compute capability,
# PCIe x16 GB/s by generation.
NVLINK_GBPS_PER_LINK: dict[str, float] = {
    f"{int(r.generation[3:]) // 10}.{int(r.generation[3:]) % 10}": r.gbps for r in LINK_MODEL if r.kind == "nvlink"}
PCIE_X16_GBPS: dict[int, float] = {int(r.generation[3:]): r.gbps for r in LINK_MODEL if r.kind == "pcie"}

# Share of the link peak a healthy NCCL all-reduce reaches at large sizes (busbw >= 64 MiB):
# at or above `good` passes, below `poor` fails, in between warns. Source: this project's H200 NV18
# pair (312 GB/s of 450 at 512 MiB through torch.distributed, tests/fixtures/h200x2/allreduce.txt)
# and nccl-tests' doc/PERFORMANCE.md (busbw is meant to be compared with the hardware peak).
BUSBW_SHARE = {"good": 0.6, "poor": 0.25}


# --- Which compute capabilities exist at all (for refusing `--arch 13.0` before a GPU ships) -------
def known_capabilities() -> list[ComputeCapability]:
    """Every compute capability a known CUDA toolkit compiles for or a known GPU has, sorted."""
    found: set[ComputeCapability] = set()
    for archs in CUDA_ARCHS.values():
        for sm in archs:
            digits = sm.removeprefix("sm_").rstrip("af")
            found.add(ComputeCapability(int(digits[:-1]), int(digits[-1])))
    found.update(model.cc for model in GPU_MODELS.values())
    return sorted(found)


def nearest_capabilities(gpu: ComputeCapability, count: int = 3) -> list[ComputeCapability]:
    """The ``count`` known capabilities closest to ``gpu`` (by arch number: 13.0 -> 12.1, 12.0, 11.0)."""
    wanted = gpu.major * 10 + gpu.minor
    return sorted(known_capabilities(), key=lambda c: (abs(c.major * 10 + c.minor - wanted),
                                                       -(c.major * 10 + c.minor)))[:count]
