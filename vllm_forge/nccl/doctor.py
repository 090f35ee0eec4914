"""Name what will break vLLM on this host's GPUs (or the ones you name), and the fix.

    python -m vllm_forge.nccl.doctor [--image TAG] [--arch rtx5090] [--json]
    python -m vllm_forge.nccl.doctor --inside                # only the in-Python facts, as JSON
    python -m vllm_forge.nccl.doctor --host-file host.txt    # judge recorded nvidia-smi outputs instead

Checks, each pass / warn / fail with the fix: the GPUs (nvidia-smi, else NVML); the driver against
the CUDA of the image or Python; PyTorch's arch list against each GPU's compute capability (predicts
"sm_120 is not compatible with the current PyTorch installation"); the audit of vLLM's extensions
(``vllm_forge/audit/audit.py`` when present); the NCCL version against the oldest that works on these GPUs;
the topology (``nvidia-smi topo -m``, ``topo -p2p r``); NCCL settings in the environment.
Without a GPU it says so and still checks the Python or image against ``--arch``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.package import module_path
from vllm_forge.core.validate import check_image_ref
from vllm_forge.gpu import compat
from vllm_forge.gpu.archs import parse_arch_token
from vllm_forge.gpu.cuda_arch import ComputeCapability
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.gpu.runs_on import SASS, runs_on
from vllm_forge.nccl import nccl_logs
from vllm_forge.nccl.nccl_logs import Finding, parse_version

INSIDE_SCRIPT = module_path("vllm_forge.gpu.doctor_inside")  # piped into an image's python3 as a file of its own
SMI_QUERY = "index,name,compute_cap,driver_version,memory.total,pci.bus_id,pcie.link.gen.max,pcie.link.width.max"


@dataclass
class Gpu:
    index: int
    name: str
    capability: str
    driver: str = ""
    memory_mib: int | None = None
    bus_id: str = ""
    pcie_gen: int | None = None
    pcie_width: int | None = None


@dataclass
class HostFacts:
    gpus: list[Gpu] = field(default_factory=list)
    driver: str = ""
    driver_cuda: str = ""  # the newest CUDA the driver supports ("CUDA Version" of nvidia-smi)
    topo: nccl_logs.TopoMatrix | None = None
    p2p: nccl_logs.TopoMatrix | None = None
    source: str = ""  # "nvidia-smi", "nvml", "file", "" (none)
    env: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Host facts
# ---------------------------------------------------------------------------------------------------
def _int(text: str) -> int | None:
    m = re.match(r"\s*(\d+)", text or "")
    return int(m.group(1)) if m else None


def gpus_from_csv(rows: list[dict]) -> list[Gpu]:
    gpus = []
    for row in rows:
        gpus.append(Gpu(index=_int(row.get("index", "")) or len(gpus), name=row.get("name", ""),
                        capability=row.get("compute_cap", ""), driver=row.get("driver_version", ""),
                        memory_mib=_int(row.get("memory.total", "")), bus_id=row.get("pci.bus_id", ""),
                        pcie_gen=_int(row.get("pcie.link.gen.max", "")),
                        pcie_width=_int(row.get("pcie.link.width.max", ""))))
    return gpus


def host_from_text(text: str) -> HostFacts:
    """A recorded bundle (``== query`` / ``== topo`` / ``== topo -p2p r`` / ``== nvidia-smi`` sections)."""
    facts = HostFacts(source="file")
    for _name, body in nccl_logs.split_sections(text):
        kind = nccl_logs.detect_kind(body)
        if kind == "smi-csv":
            facts.gpus = gpus_from_csv(nccl_logs.parse_smi_csv(body))
        elif kind in ("topo", "p2p"):
            matrix = nccl_logs.parse_topo_matrix(body)
            if matrix is not None and matrix.kind == "p2p":
                facts.p2p = matrix
            else:
                facts.topo = matrix
        if m := re.search(r"CUDA Version:\s*([\d.]+)", body):
            facts.driver_cuda = m.group(1)
        if m := re.search(r"Driver Version:\s*([\d.]+)", body):
            facts.driver = m.group(1)
    if facts.gpus and not facts.driver:
        facts.driver = facts.gpus[0].driver
    return facts


def collect_host(runner=subprocess.run) -> HostFacts:
    """GPUs, driver and topology of this machine: nvidia-smi, else NVML (nvidia-ml-py), else none."""
    facts = HostFacts(env={k: v for k, v in os.environ.items() if k.startswith("NCCL_")})
    smi = shutil.which("nvidia-smi")

    def smi_run(*args: str) -> str:
        try:
            result = runner([smi, *args], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError) as err:
            facts.errors.append(f"nvidia-smi {' '.join(args)}: {err}")
            return ""
        if result.returncode != 0:
            facts.errors.append(f"nvidia-smi {' '.join(args)}: {(result.stderr or result.stdout).strip()[:200]}")
            return ""
        return result.stdout

    if smi:
        csv = smi_run(f"--query-gpu={SMI_QUERY}", "--format=csv")
        facts.gpus = gpus_from_csv(nccl_logs.parse_smi_csv(csv))
        if facts.gpus:
            facts.source = "nvidia-smi"
            facts.driver = facts.gpus[0].driver
            if m := re.search(r"CUDA Version:\s*([\d.]+)", smi_run()):
                facts.driver_cuda = m.group(1)
            if len(facts.gpus) > 1:
                facts.topo = nccl_logs.parse_topo_matrix(smi_run("topo", "-m"))
                facts.p2p = nccl_logs.parse_topo_matrix(smi_run("topo", "-p2p", "r"))
    if not facts.gpus:
        _collect_nvml(facts)
    return facts


def _collect_nvml(facts: HostFacts) -> None:
    try:
        import pynvml  # nvidia-ml-py, optional
    except ImportError:
        return
    try:
        pynvml.nvmlInit()
    except Exception as err:  # NVML raises its own types when no driver is loaded
        facts.errors.append(f"NVML: {err}")
        return
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        facts.driver = driver.decode() if isinstance(driver, bytes) else driver
        code = pynvml.nvmlSystemGetCudaDriverVersion()
        facts.driver_cuda = f"{code // 1000}.{code % 1000 // 10}"
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total // (1 << 20)
            facts.gpus.append(Gpu(index, name.decode() if isinstance(name, bytes) else name, f"{major}.{minor}",
                                  facts.driver, memory))
        facts.source = "nvml" if facts.gpus else ""
    except Exception as err:
        facts.errors.append(f"NVML: {err}")
    finally:
        pynvml.nvmlShutdown()


# ---------------------------------------------------------------------------------------------------
# In-Python / in-image facts
# ---------------------------------------------------------------------------------------------------
def collect_inside_local() -> dict:
    from vllm_forge.gpu import doctor_inside

    return doctor_inside.collect()


def inside_command(image: str, docker: str = "docker", gpus: bool = False) -> list[str]:
    argv = [docker, "run", "--rm", "-i"]
    if gpus:
        argv += ["--gpus", "all"]
    return argv + ["--entrypoint", "python3", image, "-"]


def collect_inside_image(image: str, *, docker: str = "docker", gpus: bool = False, runner=subprocess.run) -> dict:
    argv = inside_command(image, docker, gpus)
    try:
        result = runner(argv, input=INSIDE_SCRIPT.read_text(), capture_output=True, text=True, timeout=300,
                        check=False)
    except FileNotFoundError:
        raise ForgeError(f"{docker} is not installed", "install Docker, or run doctor without --image") from None
    except subprocess.TimeoutExpired:
        raise ForgeError(f"`{' '.join(argv)}` took over 300 s", "check the Docker engine (docker info)") from None
    if result.returncode != 0:
        text = (result.stderr or result.stdout).strip()
        if "No such image" in text or "Unable to find image" in text or "pull access denied" in text:
            raise ForgeError(f"image {image} is not available locally", "bake it (invoke bake) or docker pull it")
        if "executable file not found" in text:
            raise ForgeError(f"image {image} has no python3", "doctor's in-image checks need python3 in the image")
        if gpus and ("could not select device driver" in text or "nvidia-container" in text):
            return collect_inside_image(image, docker=docker, gpus=False, runner=runner)
        raise ForgeError(f"`{' '.join(argv)}` failed: {text.splitlines()[-1] if text else result.returncode}",
                         "check that the Docker engine runs (docker info)")
    try:
        facts = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise ForgeError(f"the in-image check printed no JSON: {result.stdout[-300:]!r}",
                         "run the image with `python3 -c 'import json'` to see what is wrong") from None
    facts["image"] = image
    return facts


def inside_from_text(text: str) -> dict:
    """Facts recorded as a bundle's ``== torch`` line: ``VERSION CUDA [ARCHS] (MAJ, MIN) (N, C, C) COUNT``."""
    facts: dict = {}
    for name, body in nccl_logs.split_sections(text):
        if name != "torch":
            continue
        m = re.search(r"^(\S+)\s+(\S+)\s+(\[[^\]]*\])\s+\((\d+),\s*(\d+)\)\s+\((\d+),\s*(\d+),\s*(\d+)\)\s+(\d+)",
                      body.strip())
        if not m:
            continue
        archs = re.findall(r"'([^']+)'", m.group(3))
        facts["torch"] = {"installed": True, "version": m.group(1), "cuda": m.group(2), "arch_list": archs,
                          "nccl": f"{m.group(6)}.{m.group(7)}.{m.group(8)}", "cuda_available": True,
                          "devices": [{"index": i, "name": "", "capability": f"{m.group(4)}.{m.group(5)}"}
                                      for i in range(int(m.group(9)))]}
        facts["nccl"] = {"version": facts["torch"]["nccl"], "library": "", "packages": {}}
    return facts


# ---------------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------------
def _cuda_of(inside: dict) -> str:
    torch = inside.get("torch") or {}
    return torch.get("cuda") or (inside.get("cuda") or {}).get("toolkit") or ""


def _vkey(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text or "")[:3]) or (0,)


def check_driver(host: HostFacts, inside: dict) -> list[Finding]:
    cuda = _cuda_of(inside)
    if not host.driver:
        return []
    if not cuda:
        return [Finding("info", "driver", f"driver {host.driver} (supports CUDA {host.driver_cuda or '?'}); no CUDA "
                        "found in the Python/image to compare with")]
    release = CudaRelease.parse_or_none(cuda)
    minor = release.minor_str if release else cuda
    need = compat.MIN_DRIVER.get(minor)
    if need is None:
        return [Finding("info", "driver", f"driver {host.driver}; CUDA {cuda} is not in the driver table",
                        "tell the maintainers which driver CUDA {minor} needs")]
    have = _vkey(host.driver)
    if have >= _vkey(need.full):
        return [Finding("pass", "driver", f"driver {host.driver} >= {need.full}, the minimum for CUDA {minor}")]
    if have >= _vkey(need.minor_compat) and have[0] >= _vkey(need.minor_compat)[0]:
        return [Finding("warn", "driver", f"driver {host.driver} is below {need.full} (CUDA {minor}) but runs it "
                        f"through minor-version compatibility (>= {need.minor_compat}): PTX newer than the driver "
                        "cannot be JIT-compiled", f"upgrade the driver to {need.full} or newer")]
    return [Finding("fail", "driver", f"driver {host.driver} is too old for CUDA {minor} (needs {need.full}; "
                    f"the driver supports CUDA {host.driver_cuda or '?'}): expect `CUDA driver version is "
                    "insufficient for CUDA runtime version`",
                    f"upgrade the driver to {need.full} or newer, or use an image built for CUDA "
                    f"{host.driver_cuda or 'the driver supports'}")]


def gpu_of(capability: str) -> ComputeCapability | None:
    """A GPU's compute capability as nvidia-smi, torch or --arch gave it ("12.0"); None for anything else."""
    try:
        return ComputeCapability.parse(capability)
    except ForgeError:
        return None


def arch_support(capability: str, arch_list: list[str]) -> tuple[str, str]:
    """("sass"|"sass-compatible"|"ptx"|"none", the entry that serves it) for a GPU capability: NVIDIA's rule,
    vllm_forge/gpu/runs_on.py, over torch.cuda.get_arch_list() (``sm_90``, ``compute_90``)."""
    gpu = gpu_of(capability)
    if gpu is None:
        return "none", ""
    codes = [parse_arch_token(entry) for entry in arch_list if entry.strip().startswith(("sm_", "compute_"))]
    fit = runs_on([code for code in codes if code is not None], gpu)
    if fit.kind == SASS:
        return ("sass" if fit.code.gpu == gpu else "sass-compatible"), fit.name
    return fit.kind, fit.name


def check_torch_archs(caps: list[tuple[str, str]], inside: dict, where: str = "this Python") -> list[Finding]:
    torch = inside.get("torch") or {}
    if not torch.get("installed"):
        fix = ("this image has no usable torch: bake the serving image with `invoke bake` (its runtime stage "
               "installs the torch the wheel was built against)" if where.startswith("image ") else
               "install the torch vLLM runs against (pip install torch), or check an image with --image TAG")
        return [Finding("warn", "torch", f"PyTorch is not importable in {where} "
                        f"({torch.get('error', 'not installed')})", fix)]
    archs = torch.get("arch_list") or []
    if not caps:
        return [Finding("info", "torch-archs", f"torch {torch.get('version')} (CUDA {torch.get('cuda') or 'none'}) "
                        f"has kernels for {' '.join(archs) or 'no GPU'}; no GPU to compare with (pass --arch)")]
    if not archs:
        return [Finding("fail", "torch-archs", f"torch {torch.get('version')} is a CPU-only build",
                        "install a CUDA build: pip install torch --index-url https://download.pytorch.org/whl/cu128")]
    findings = []
    for name, cap in caps:
        support, entry = arch_support(cap, archs)
        sm = "sm_" + cap.replace(".", "")
        if support in ("sass", "sass-compatible"):
            findings.append(Finding("pass", "torch-archs", f"{name} ({sm}): torch {torch.get('version')} has {entry} "
                                    "kernels"))
        elif support == "ptx":
            findings.append(Finding("warn", "torch-archs", f"{name} ({sm}): torch has only {entry} PTX, JIT-compiled "
                                    "at first use (slow start, and kernels other libraries ship may still be missing)",
                                    _torch_fix(sm)))
        else:
            supported = " ".join(a for a in archs if a.startswith("sm_"))
            findings.append(Finding(
                "fail", "torch-archs",
                f"{name} with CUDA capability {sm} is not compatible with the current PyTorch installation "
                f"(torch {torch.get('version')} supports {supported}); expect `no kernel image is available for "
                "execution on the device`", _torch_fix(sm)))
    return findings


def _torch_fix(sm: str) -> str:
    cuda = compat.min_cuda_for(sm)
    if not cuda:
        return f"install a PyTorch build that lists {sm} in torch.cuda.get_arch_list()"
    index = compat.PYTORCH_WHEEL_INDEX.get(cuda.minor_str)
    return (f"install a PyTorch built with CUDA {cuda} or newer"
            + (f" (pip install torch --index-url {index})" if index else "")
            + f", then rebuild vLLM with --arch {sm}")


def check_nccl(caps: list[tuple[str, str]], inside: dict) -> list[Finding]:
    nccl = inside.get("nccl") or {}
    torch = inside.get("torch") or {}
    version = nccl.get("version") or torch.get("nccl") or ""
    if not version:
        return [Finding("warn", "nccl", "no NCCL found (torch.cuda.nccl and libnccl.so.2 both missing)",
                        "install nvidia-nccl-cu12/cu13 (torch's CUDA wheels pull it in)")]
    where = nccl.get("library") or "torch"
    findings = []
    if torch.get("nccl") and nccl.get("version") and torch["nccl"] != nccl["version"]:
        findings.append(Finding("info", "nccl", f"torch reports NCCL {torch['nccl']} but {where} is {nccl['version']}"
                                " (vLLM loads the library one; VLLM_NCCL_SO_PATH overrides)"))
    if not caps:
        findings.append(Finding("info", "nccl", f"NCCL {version} ({where}); no GPU to compare with (pass --arch)"))
        return findings
    worst = None
    for name, cap in caps:
        row = nccl_logs.nccl_floor(cap)
        if row and parse_version(version) < parse_version(row[0]):
            worst = (name, cap, row)
            break
    if worst:
        name, cap, (minimum, why) = worst
        findings.append(Finding(
            "fail", "nccl", f"NCCL {version} is older than {minimum}, the first that works on {name} "
            f"({cap}): {why}; multi-GPU start-up will fail (`Cuda failure 1 'invalid argument'`)",
            nccl_logs.VLLM_NCCL_HINT.format(v=minimum)))
    else:
        mins = {nccl_logs.nccl_floor(cap)[0] for _, cap in caps if nccl_logs.nccl_floor(cap)}
        findings.append(Finding("pass", "nccl", f"NCCL {version} ({where})" + (
            f" >= {max(mins, key=parse_version)} needed by these GPUs" if mins else "")))
    return findings


def check_topology(host: HostFacts) -> list[Finding]:
    findings = []
    if host.topo is not None:
        findings += nccl_logs.diagnose_topo(host.topo)
    if host.p2p is not None:
        findings += nccl_logs.diagnose_topo(host.p2p)
    if len(host.gpus) > 1 and host.topo is None:
        findings.append(Finding("info", "topo", "topology not read (nvidia-smi topo -m unavailable)"))
    return findings


def check_env(env: dict[str, str], where: str, host: HostFacts | None = None) -> list[Finding]:
    """NCCL_* settings judged against the topology: one that keeps NCCL off a link the GPUs have fails."""
    findings = []
    ctx = nccl_logs.Context(links=[link for _, _, link in host.topo.gpu_pairs()] if host and host.topo else [],
                            p2p=[status for _, _, status in host.p2p.gpu_pairs()] if host and host.p2p else [])
    links = nccl_logs.p2p_expected(ctx)
    p2p_off = next((f"{name}={env[name]}" for name in ("NCCL_P2P_DISABLE", "NCCL_P2P_LEVEL")
                    if name in env and nccl_logs.SETTINGS[name].harmful(env[name])), "")
    shm_off = nccl_logs.SETTINGS["NCCL_SHM_DISABLE"].harmful(env.get("NCCL_SHM_DISABLE", "0"))
    if p2p_off:
        via = "TCP sockets (NCCL_SHM_DISABLE is set too)" if shm_off else "host memory (SHM)"
        if links:
            findings.append(Finding("fail", "env", f"{p2p_off} in {where}: the GPUs are {', '.join(links)}-connected "
                                    f"but NCCL will send the traffic through {via}, a fraction of the link",
                                    "unset NCCL_P2P_DISABLE / NCCL_P2P_LEVEL" + (" and NCCL_SHM_DISABLE" if shm_off
                                                                                  else ""),
                                    evidence=[f"{where}: {k}={env[k]}" for k in ("NCCL_P2P_DISABLE", "NCCL_P2P_LEVEL",
                                                                                  "NCCL_SHM_DISABLE") if k in env]))
        else:
            findings.append(Finding("warn", "env", f"{p2p_off} in {where}: NCCL avoids NVLink/PCIe P2P",
                                    "unset it unless P2P is known broken on this host"))
    elif shm_off:
        findings.append(Finding("warn", "env", f"NCCL_SHM_DISABLE=1 in {where}: where P2P is unavailable NCCL falls "
                                "back to TCP sockets", "unset it"))
    for weight, setting, why in nccl_logs.weigh_settings(env):
        if setting.split("=")[0] not in ("NCCL_P2P_DISABLE", "NCCL_P2P_LEVEL", "NCCL_SHM_DISABLE"):
            findings.append(Finding("warn" if weight >= 2 else "info", "env", f"{why} (in {where})",
                                    f"unset {setting.split('=')[0]} unless you measured that it helps"))
    if env.get("NCCL_IB_DISABLE", "0") not in ("0", ""):
        findings.append(Finding("info", "env", f"NCCL_IB_DISABLE=1 in {where}: no InfiniBand between nodes"))
    return findings


def check_jit(caps: list[tuple[str, str]], inside: dict) -> list[Finding]:
    """JIT readiness (doctor_inside.collect_jit): can vLLM compile FlashInfer/DeepGEMM kernels at run time?"""
    facts = inside.get("jit")
    if not facts or not (inside.get("vllm") or {}).get("installed"):
        return []
    from vllm_forge.image.jit import jit_summary

    targets = [gpu.sm for gpu in (gpu_of(cap) for _, cap in caps) if gpu is not None]
    ready, line = jit_summary(facts, targets)
    if ready:
        return [Finding("pass", "jit", line)]
    return [Finding("warn", "jit", line + ": kernels compiled at run time (FlashInfer, DeepGEMM) will fail",
                    "bake with the JIT toolchain (the default of `invoke bake`), or install CUDA's nvcc and g++")]


def load_audit(name: str = "audit_path"):
    """``vllm_forge.audit.audit.audit_path`` (or ``audit_image``) when that module exists, else None."""
    try:
        module = importlib.import_module("vllm_forge.audit.audit")
    except ImportError:
        return None
    return getattr(module, name, None)


def _audit_level(result) -> tuple[str, str]:
    if isinstance(result, dict):
        ok, text = result.get("ok"), result.get("summary") or result.get("verdict") or ""
    else:
        ok = getattr(result, "ok", None)
        text = getattr(result, "summary", None) or getattr(result, "verdict", None) or ""
        if callable(text):
            text = text()
    if ok is None and isinstance(text, str) and text:
        ok = not re.search(r"\b(fail|missing|no kernel)\b", text, re.IGNORECASE)
    return ("pass" if ok else "fail") if ok is not None else "info", str(text or result)[:400]


def check_audit(path: str | None, caps: list[tuple[str, str]], audit=None) -> list[Finding]:
    """Audit vLLM's extensions at ``path`` for the GPUs (``audit(path_or_image, ["sm_120", ...])``)."""
    if audit is None:
        return [Finding("info", "audit", "audit unavailable (vllm_forge/audit/audit.py is not installed)")]
    if not path:
        return [Finding("info", "audit", "no vLLM installed here: no extensions to audit")]
    if not caps:
        return [Finding("info", "audit", "no GPU to audit the extensions for (pass --arch)")]
    targets = sorted({"sm_" + cap.replace(".", "") for _, cap in caps}, key=lambda t: int(t[3:]))
    try:
        result = audit(path, targets)
    except ForgeError as err:
        return [Finding("warn", "audit", f"audit of {path} could not run: {err}")]
    level, text = _audit_level(result)
    # The audit judges each kernel group and names, per failing file, the fix for whose file it is.
    failing = [f for f in getattr(result, "files", None) or [] if not f.ok]
    details = [note.split(" Fix: ")[0] for note in getattr(result, "notes", lambda: [])()
               if any(note.startswith(f"{f.path}:") for f in failing)][:3]
    if details:
        text = f"{text}; " + "; ".join(details)
    fixes = list(dict.fromkeys(f.fix for f in failing if getattr(f, "fix", "")))
    return [Finding(level, "audit", f"vLLM extensions in {path} for {', '.join(targets)}: {text}",
                    "" if level != "fail" else "; ".join(fixes) or f"rebuild vLLM for these GPUs: invoke build-wheel "
                    f"--arch {','.join(targets)}")] + optional_findings(result)


def optional_findings(result) -> list[Finding]:
    """An optional extension (vLLM imports it guarded) without kernels for these GPUs: said, never a
    reason to rebuild; the message names what vLLM does without it, where its code says so."""
    out = []
    for f in getattr(result, "files", None) or []:
        bad = [t for t, v in (getattr(f, "verdict", None) or {}).items() if v in ("none", "partial")]
        if getattr(f, "optional", "") and bad and not getattr(f, "required", False):
            out.append(Finding("info", "audit", f"{f.path}: optional, not usable on this GPU ({', '.join(bad)}); "
                               f"vLLM runs without it: {f.optional}"))
    return out


def check_nvcc(inside: dict) -> list[Finding]:
    """nvcc ($CUDA_HOME, PATH, /usr/local/cuda: doctor_inside.locate_nvcc) and its version against torch's CUDA:
    building vLLM needs both to share a major version (torch.utils.cpp_extension refuses a mismatch)."""
    cuda = inside.get("cuda") or {}
    nvcc, version = cuda.get("nvcc") or "", cuda.get("nvcc_version") or ""
    if not nvcc:
        return [Finding("info", "nvcc", "no nvcc in $CUDA_HOME, on PATH or in /usr/local/cuda: serving needs none; "
                        "building vLLM (invoke build-wheel) does", "install the CUDA toolkit, or set CUDA_HOME")]
    found_by = cuda.get("nvcc_found_by") or ""
    where = f"{nvcc}" + (f" (via {found_by}" + ("; not on PATH)" if found_by != "PATH" else ")") if found_by else "")
    torch_cuda = (inside.get("torch") or {}).get("cuda") or ""
    if version and torch_cuda and _vkey(version)[:1] != _vkey(torch_cuda)[:1]:
        return [Finding("warn", "nvcc", f"nvcc {version} at {where}, but torch is built with CUDA {torch_cuda}: "
                        "building vLLM against this torch fails (CUDA major versions differ)",
                        f"use a CUDA {torch_cuda.split('.')[0]}.x toolkit (CUDA_HOME=...), or a torch built for "
                        f"CUDA {version.split('.')[0]}")]
    return [Finding("pass" if version else "info", "nvcc", f"nvcc {version or '(version unknown)'} at {where}"
                    + (f"; torch CUDA {torch_cuda}" if torch_cuda else ""))]


@dataclass
class DoctorReport:
    host: HostFacts
    inside: dict
    findings: list[Finding]
    targets: list[tuple[str, str]]

    @property
    def level(self) -> str:
        return nccl_logs.worst_level(self.findings)

    def to_dict(self) -> dict:
        host = {"source": self.host.source, "driver": self.host.driver, "driver_cuda": self.host.driver_cuda,
                "gpus": [g.__dict__ for g in self.host.gpus], "errors": self.host.errors,
                "topo": self.host.topo.to_dict() if self.host.topo else None,
                "p2p": self.host.p2p.to_dict() if self.host.p2p else None}
        return {"level": self.level, "root_cause": root_cause(self).to_dict(),
                "targets": [{"name": n, "capability": c} for n, c in self.targets],
                "host": host, "inside": self.inside, "findings": [f.to_dict() for f in self.findings]}


def targets_for(host: HostFacts, inside: dict, arch: str = "") -> list[tuple[str, str]]:
    """(name, capability) of the GPUs to judge for: the host's, else the image's view, else --arch."""
    if host.gpus:
        return [(f"GPU{g.index} {g.name}", g.capability) for g in host.gpus if g.capability]
    devices = (inside.get("torch") or {}).get("devices") or []
    if devices:
        return [(f"GPU{d['index']} {d.get('name', '')}".strip(), d["capability"]) for d in devices]
    if arch:
        from vllm_forge.gpu import archs as arch_mod

        return [(f"--arch {a.sm}", a.capability) for a in arch_mod.parse_arch_list(arch)]
    return []


def diagnose(host: HostFacts, inside: dict, *, arch: str = "", audit=None, audit_path: str | None = None,
             where: str = "this Python") -> DoctorReport:
    targets = targets_for(host, inside, arch)
    findings: list[Finding] = []
    if host.gpus:
        names = "; ".join(f"GPU{g.index} {g.name} ({g.capability}" + (f", {g.memory_mib} MiB" if g.memory_mib else "")
                          + ")" for g in host.gpus)
        findings.append(Finding("pass", "gpus", f"{len(host.gpus)} GPU(s) via {host.source}: {names}; driver "
                                f"{host.driver or '?'}"))
    else:
        extra = f"; judging for {', '.join(c for _, c in targets)} instead" if targets else \
            "; pass --arch (e.g. rtx5090) to check the Python/image for the GPUs you will deploy on"
        findings.append(Finding("warn", "gpus", "no NVIDIA GPU visible (nvidia-smi and NVML found none)" + extra,
                                "on a GPU host install the NVIDIA driver; in a container add --gpus all"))
    findings += check_driver(host, inside)
    findings += check_torch_archs(targets, inside, where)
    findings += check_nvcc(inside)
    findings += check_audit(audit_path if audit_path is not None else (inside.get("vllm") or {}).get("path"),
                            targets, audit)
    findings += check_nccl(targets, inside)
    findings += check_jit(targets, inside)
    findings += check_topology(host)
    findings += check_env(host.env, "the host environment", host)
    findings += check_env(inside.get("env") or {}, where, host)
    return DoctorReport(host, inside, findings, targets)


def copy_from_image(image: str, path: str, dest: Path, docker: str = "docker", runner=subprocess.run) -> Path:
    """``docker create`` + ``docker cp`` one directory out of an image (for the audit)."""
    created = runner([docker, "create", image], capture_output=True, text=True, check=False)
    if created.returncode != 0:
        raise ForgeError(f"docker create {image} failed: {created.stderr.strip()[:200]}", "check the image tag")
    container = created.stdout.strip()
    try:
        copied = runner([docker, "cp", f"{container}:{path}", str(dest)], capture_output=True, text=True, check=False)
        if copied.returncode != 0:
            raise ForgeError(f"docker cp {path} failed: {copied.stderr.strip()[:200]}", "check the image")
    finally:
        runner([docker, "rm", "-f", container], capture_output=True, text=True, check=False)
    return dest


def run_doctor(*, image: str = "", arch: str = "", docker: str = "docker", host_text: str | None = None,
               inside: dict | None = None, runner=subprocess.run) -> DoctorReport:
    if image:
        check_image_ref(image, "--image")  # docker reads it after its options: never one itself
    host = host_from_text(host_text) if host_text is not None else collect_host(runner)
    if inside is None and host_text is not None:
        inside = inside_from_text(host_text)
    where = f"image {image}" if image else "this Python"
    if inside is None:
        inside = collect_inside_image(image, docker=docker, gpus=bool(host.gpus), runner=runner) if image \
            else collect_inside_local()
    audit = load_audit()
    vllm_path = (inside.get("vllm") or {}).get("path")
    if image and audit is not None and vllm_path and targets_for(host, inside, arch):
        image_audit = load_audit("audit_image")
        if image_audit is not None:  # the audit module reads the image itself
            def audit_in_image(_path, targets):
                return image_audit(image, targets, docker=docker, torch=False)

            return diagnose(host, inside, arch=arch, audit=audit_in_image, audit_path=f"{image}:{vllm_path}",
                            where=where)
        with tempfile.TemporaryDirectory(prefix="forge-doctor-") as tmp:
            local = copy_from_image(image, vllm_path, Path(tmp) / "vllm", docker, runner)
            return diagnose(host, inside, arch=arch, audit=audit, audit_path=str(local), where=where)
    return diagnose(host, inside, arch=arch, audit=audit, where=where)


def root_cause(report: DoctorReport) -> nccl_logs.RootCause:
    """The doctor's headline: its worst finding (failures before warnings), with its evidence and fix."""
    for level in ("fail", "warn"):
        for f in report.findings:
            if f.level == level:
                return nccl_logs.RootCause(level, f.message, f.fix + (f" (see {f.source})" if f.source else ""),
                                           f.evidence[:3] or [f"doctor {f.check}: {f.message[:200]}"])
    gpus = len(report.host.gpus)
    return nccl_logs.RootCause("pass", f"nothing found that breaks vLLM here ({gpus} GPU(s) checked)")


def render_text(report: DoctorReport) -> str:
    lines = [*nccl_logs.render_root_cause(root_cause(report)), f"doctor: {report.level.upper()}"]
    for f in report.findings:
        lines.append(f"  {f.level.upper():4} {f.check}: {f.message}")
        if f.fix and f.level in ("warn", "fail"):
            lines.append(f"       fix: {f.fix}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="doctor.py", description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="", help="check this image's Python (docker run) instead of this one")
    parser.add_argument("--arch", default="", help="GPUs to judge for when none is visible (rtx5090, 12.0, h100)")
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    parser.add_argument("--inside", action="store_true", help="print only the in-Python facts as JSON")
    parser.add_argument("--host-file", default="", help="judge a recorded host bundle instead of this machine")
    parser.add_argument("--inside-file", default="", help="in-Python facts recorded by --inside")
    parser.add_argument("--docker", default="docker")
    args = parser.parse_args(argv)
    if args.inside:
        print(json.dumps(collect_inside_local(), indent=2, sort_keys=True))
        return 0
    host_text = Path(args.host_file).read_text(errors="replace") if args.host_file else None
    inside = json.loads(Path(args.inside_file).read_text()) if args.inside_file else None
    report = run_doctor(image=args.image, arch=args.arch, docker=args.docker, host_text=host_text, inside=inside)
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else render_text(report))
    return 1 if report.level == "fail" else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
