"""Collect the facts `invoke doctor` needs from inside a Python environment or image, as JSON.

Self-contained on purpose: stdlib plus (optionally) torch, no ``scripts`` imports, so it runs as
``docker run --rm -i --entrypoint python3 IMAGE - < scripts/doctor_inside.py`` or as
``python scripts/doctor.py --inside``. It never raises: whatever fails is reported under "errors".
"""

import ctypes
import ctypes.util
import glob
import json
import os
import platform
import re
import sys

ENV_NAMES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "TORCH_CUDA_ARCH_LIST", "VLLM_NCCL_SO_PATH",
             "LD_LIBRARY_PATH", "CUDA_HOME")


def _version_from_code(code):
    # ncclGetVersion: major*10000 + minor*100 + patch since 2.9 (major*1000 + minor*100 + patch before)
    if code >= 10000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def _package_version(name):
    try:
        from importlib import metadata
    except ImportError:
        return ""
    try:
        return metadata.version(name)
    except Exception:
        return ""


def _nccl_candidates():
    paths = []
    if os.environ.get("VLLM_NCCL_SO_PATH"):
        paths.append(os.environ["VLLM_NCCL_SO_PATH"])
    for base in sys.path:
        paths.extend(sorted(glob.glob(os.path.join(base, "nvidia", "nccl", "lib", "libnccl.so*"))))
    found = ctypes.util.find_library("nccl")
    if found:
        paths.append(found)
    paths.append("libnccl.so.2")
    seen, out = set(), []
    for path in paths:
        if path not in seen:
            seen.add(path)
            out.append(path)
    return out


def collect_nccl(errors):
    info = {"library": "", "version": "", "packages": {}}
    for name in ("nvidia-nccl-cu12", "nvidia-nccl-cu13", "nvidia-nccl-cu11"):
        version = _package_version(name)
        if version:
            info["packages"][name] = version
    for path in _nccl_candidates():
        try:
            lib = ctypes.CDLL(path)
            code = ctypes.c_int(0)
            if lib.ncclGetVersion(ctypes.byref(code)) == 0:
                info["library"], info["version"] = path, _version_from_code(code.value)
                break
        except (OSError, AttributeError) as err:
            if path == "libnccl.so.2":
                errors.append(f"libnccl.so.2: {err}")
    return info


def collect_cuda_runtime():
    out = {"toolkit": "", "nvcc": ""}
    for path in ("/usr/local/cuda/version.json", "/usr/local/cuda/version.txt"):
        try:
            with open(path) as handle:
                text = handle.read()
        except OSError:
            continue
        m = re.search(r'"cuda"\s*:\s*\{[^}]*"version"\s*:\s*"([\d.]+)"', text) or re.search(r"CUDA Version ([\d.]+)",
                                                                                            text)
        if m:
            out["toolkit"] = m.group(1)
            break
    return out


def collect_torch(errors):
    out = {"installed": False}
    try:
        import torch
    except Exception as err:  # ImportError, or a broken install's OSError
        out["error"] = f"{type(err).__name__}: {err}"
        return out
    out.update(installed=True, version=torch.__version__, cuda=getattr(torch.version, "cuda", None) or "",
               path=os.path.dirname(torch.__file__))
    try:
        out["arch_list"] = list(torch.cuda.get_arch_list())
    except Exception as err:
        out["arch_list"] = []
        errors.append(f"torch.cuda.get_arch_list: {err}")
    try:
        out["nccl"] = ".".join(str(p) for p in torch.cuda.nccl.version())
    except Exception as err:
        out["nccl"] = ""
        errors.append(f"torch.cuda.nccl.version: {err}")
    devices = []
    try:
        out["cuda_available"] = bool(torch.cuda.is_available())
        if out["cuda_available"]:
            for index in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(index)
                devices.append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                                "memory_mib": props.total_memory // (1 << 20)})
    except Exception as err:
        out["cuda_available"] = False
        errors.append(f"torch.cuda: {err}")
    out["devices"] = devices
    return out


def collect_vllm():
    try:
        import importlib.util

        spec = importlib.util.find_spec("vllm")
    except Exception:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return {"installed": False}
    path = list(spec.submodule_search_locations)[0]
    return {"installed": True, "version": _package_version("vllm"), "path": path,
            "extensions": sorted(os.path.relpath(p, path) for p in glob.glob(os.path.join(path, "**", "*.so"),
                                                                                recursive=True))[:200]}


def collect():
    errors = []
    facts = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": collect_torch(errors),
        "nccl": collect_nccl(errors),
        "cuda": collect_cuda_runtime(),
        "vllm": collect_vllm(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("NCCL_") or k in ENV_NAMES},
    }
    facts["errors"] = errors
    return facts


if __name__ == "__main__":
    print(json.dumps(collect(), indent=2, sort_keys=True))
