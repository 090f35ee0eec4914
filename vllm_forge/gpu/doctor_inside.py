"""Collect the facts `invoke doctor` needs from inside a Python environment or image, as JSON.

Self-contained on purpose: stdlib plus (optionally) torch, no ``scripts`` imports, so it runs as
``docker run --rm -i --entrypoint python3 IMAGE - < vllm_forge/gpu/doctor_inside.py`` or as
``python -m vllm_forge.nccl.doctor --inside``. It never raises: whatever fails is reported under "errors".

JIT readiness (``collect_jit``, ``jit_check``): vLLM's FlashInfer/DeepGEMM kernels compile at run time with
nvcc, so the serving image needs nvcc, CUDA headers and a host C++ compiler for its target archs.
``--jit-check ARCHS`` (run by docker/Dockerfile's runtime stage) compiles a tiny kernel for each arch and
prints one line; ``--jit`` prints only the JIT facts as JSON.
"""

import ctypes
import ctypes.util
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

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


def locate_nvcc(env=None, which=None, cuda_root="/usr/local/cuda"):
    """(path, where it was found) of the nvcc a build or a run-time kernel compile uses, in torch's order
    (torch.utils.cpp_extension): $CUDA_HOME (or $CUDA_PATH), then PATH, then /usr/local/cuda."""
    env = os.environ if env is None else env
    for name in ("CUDA_HOME", "CUDA_PATH"):
        if env.get(name):
            path = os.path.join(env[name], "bin", "nvcc")
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path, name
    found = (which or shutil.which)("nvcc", path=env.get("PATH", os.defpath))
    if found:
        return found, "PATH"
    path = os.path.join(cuda_root, "bin", "nvcc")
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path, cuda_root
    return "", ""


def nvcc_version(text):
    """``release 13.0, V13.0.88`` -> ``13.0.88`` (``13.0`` when only the release is printed)."""
    m = re.search(r"\bV(\d+\.\d+(?:\.\d+)?)", text) or re.search(r"release (\d+\.\d+)", text)
    return m.group(1) if m else ""


def collect_cuda_runtime(errors=None, env=None, cuda_root="/usr/local/cuda"):
    out = {"toolkit": "", "nvcc": "", "nvcc_version": "", "nvcc_found_by": ""}
    env = os.environ if env is None else env
    roots = [env[n] for n in ("CUDA_HOME", "CUDA_PATH") if env.get(n)] + [cuda_root]
    for path in [os.path.join(r, n) for r in roots for n in ("version.json", "version.txt")]:
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
    nvcc, found_by = locate_nvcc(env, cuda_root=cuda_root)
    if nvcc:
        out["nvcc"], out["nvcc_found_by"] = nvcc, found_by
        try:
            run = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
            out["nvcc_version"] = nvcc_version(run.stdout + run.stderr)
            if not out["nvcc_version"] and errors is not None:
                errors.append(f"{nvcc} --version printed no version: {(run.stdout + run.stderr).strip()[-200:]}")
        except (OSError, subprocess.SubprocessError) as err:
            if errors is not None:
                errors.append(f"{nvcc} --version: {err}")
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


JIT_MARKER = "forge-jit-check"
# FlashInfer's JIT on sm_12x needs CUDA >= 12.9 (flashinfer#1781, #1919).
FLASHINFER_MIN_CUDA_SM12X = (12, 9)
_JIT_PROBE = "__global__ void forge_jit_probe(float *x) { x[threadIdx.x] += 1.0f; }\n"


def _run_text(argv, timeout=120):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as err:
        return 127, str(err)
    return proc.returncode, (proc.stdout + proc.stderr)


def find_nvcc():
    """nvcc as a JIT compiler finds it ($CUDA_HOME/bin, PATH, /usr/local/cuda/bin): ``locate_nvcc``'s path."""
    return locate_nvcc()[0]


def _version_tuple(text):
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2]) if text else ()


def parse_arch_list(text):
    """TORCH_CUDA_ARCH_LIST ("12.0", "9.0a;12.0+PTX", "sm_120") -> ["sm_120", ...] (PTX adds nothing here)."""
    out = []
    for item in re.split(r"[;,\s]+", text or ""):
        item = item.strip().replace("+PTX", "")
        if not item:
            continue
        m = re.fullmatch(r"(?:sm_)?(\d+)\.?(\d)?([af]?)", item)
        if not m:
            continue
        sm = "sm_" + (m.group(1) + (m.group(2) or "") if m.group(2) is not None else m.group(1)) + m.group(3)
        if sm not in out:
            out.append(sm)
    return out


def _flashinfer():
    names = ("flashinfer-python", "flashinfer", "flashinfer-cubin", "flashinfer-jit-cache")
    out = {name: _package_version(name) for name in names}
    out = {name: version for name, version in out.items() if version}
    cubins = os.environ.get("FLASHINFER_CUBIN_DIR") or ""
    dirs = [cubins] if cubins else []
    try:
        import importlib.util

        spec = importlib.util.find_spec("flashinfer_cubin")
        if spec and spec.submodule_search_locations:
            dirs += list(spec.submodule_search_locations)
    except Exception:
        pass
    dirs.append(os.path.expanduser("~/.cache/flashinfer/cubins"))
    kernels = 0
    for root in dirs:
        for _, _, files in os.walk(root):
            kernels += sum(1 for f in files if f.endswith(".cubin"))
    return {"packages": out, "installed": bool(out.get("flashinfer-python") or out.get("flashinfer")),
            "cubins": kernels}


def collect_jit(errors=None):
    """What a run-time kernel compile would find: nvcc (version, the SM targets it lists), a host C++
    compiler, CUDA headers, NVRTC, and FlashInfer with its precompiled kernels."""
    errors = [] if errors is None else errors
    out = {"nvcc": find_nvcc(), "nvcc_version": "", "archs": [], "host_compiler": "", "cuda_home": "",
           "cuda_headers": False, "nvrtc": "", "flashinfer": _flashinfer()}
    nvcc = out["nvcc"]
    if nvcc:
        out["cuda_home"] = os.environ.get("CUDA_HOME") or os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        code, text = _run_text([nvcc, "--version"])
        m = re.search(r"release (\d+\.\d+), V([\d.]+)", text)
        out["nvcc_version"] = m.group(2) if m else ""
        if code != 0 or not m:
            errors.append(f"nvcc --version: {text.strip()[-200:]}")
        code, text = _run_text([nvcc, "--list-gpu-code"])
        out["archs"] = sorted(set(re.findall(r"\bsm_\d+[af]?\b", text)) if code == 0 else [],
                              key=lambda s: (int(re.sub(r"\D", "", s)), s))
        for base in {out["cuda_home"], "/usr/local/cuda"}:
            if os.path.isfile(os.path.join(base, "include", "cuda_runtime.h")):
                out["cuda_headers"] = True
    out["host_compiler"] = shutil.which(os.environ.get("CXX") or "c++") or shutil.which("g++") or ""
    home = out["cuda_home"]
    libdirs = [os.path.join(home, "lib64"), os.path.join(home, "lib")] if home else []
    libdirs += [os.path.join(base, "nvidia", sub, "lib") for base in sys.path for sub in ("cuda_nvrtc", "cu13", "cu12")]
    for directory in libdirs + ["/usr/local/cuda/lib64"]:
        found = sorted(glob.glob(os.path.join(directory, "libnvrtc.so*")))
        if found:
            out["nvrtc"] = found[0]
            break
    return out


def jit_check(arch_list, facts=None):
    """(ok, one line): can this environment JIT-compile kernels for every arch of ``arch_list``?"""
    facts = facts or collect_jit()
    targets = parse_arch_list(arch_list)
    if not targets:
        return False, f"no CUDA arch in {arch_list!r} to check"
    if not facts["nvcc"]:
        return False, ("no nvcc (looked in $CUDA_HOME/bin, PATH, /usr/local/cuda/bin): the runtime image has no "
                       "JIT toolchain for " + ", ".join(targets))
    version = facts["nvcc_version"] or "?"
    missing = [sm for sm in targets if facts["archs"] and sm.rstrip("af") not in facts["archs"]]
    if missing:
        return False, f"nvcc {version} cannot target {', '.join(missing)} (it lists {' '.join(facts['archs'])})"
    if not facts["host_compiler"]:
        return False, f"no host C++ compiler (c++/g++) for nvcc {version}: JIT builds compile host code too"
    if facts["flashinfer"]["installed"] and _version_tuple(version) < FLASHINFER_MIN_CUDA_SM12X:
        sm12 = [sm for sm in targets if sm.startswith("sm_12")]
        if sm12:
            return False, (f"FlashInfer JIT for {', '.join(sm12)} needs CUDA >= 12.9, the JIT toolchain is nvcc "
                           f"{version}")
    with tempfile.TemporaryDirectory(prefix="forge-jit-") as tmp:
        source = os.path.join(tmp, "probe.cu")
        with open(source, "w") as handle:
            handle.write(_JIT_PROBE)
        for sm in targets:
            digits = sm[len("sm_"):]
            code, text = _run_text([facts["nvcc"], "-c", source, "-o", os.path.join(tmp, f"{sm}.o"),
                                    "-gencode", f"arch=compute_{digits},code={sm}"], timeout=300)
            if code != 0:
                if "cuda_runtime.h" in text:
                    return False, f"nvcc {version} finds no CUDA headers (cuda_runtime.h) to compile for {sm}"
                said = [line for line in text.strip().splitlines() if line.strip()]
                return False, f"nvcc {version} failed to compile for {sm}: {said[-1][-200:] if said else code}"
    return True, f"nvcc {version} compiled a kernel for {', '.join(targets)} (host compiler {facts['host_compiler']})"


def collect():
    errors = []
    facts = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": collect_torch(errors),
        "nccl": collect_nccl(errors),
        "cuda": collect_cuda_runtime(errors),
        "vllm": collect_vllm(),
        "jit": collect_jit(errors),
        "env": {k: v for k, v in os.environ.items() if k.startswith("NCCL_") or k in ENV_NAMES},
    }
    facts["errors"] = errors
    return facts


def main(argv):
    if len(argv) >= 2 and argv[0] == "--jit-check":
        ok, line = jit_check(argv[1])
        print(f"{JIT_MARKER}: {'ok' if ok else 'FAIL'}: {line}", flush=True)
        return 0 if ok else 1
    if argv[:1] == ["--jit"]:
        print(json.dumps(collect_jit(), indent=2, sort_keys=True))
        return 0
    print(json.dumps(collect(), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
