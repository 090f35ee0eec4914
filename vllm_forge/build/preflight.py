"""What a real vLLM build needs from this machine, checked before any compile, in well under a second.

Each check reads facts, never builds anything: the Python that will run setup.py (one child process
that imports nothing heavy: torch's version and CUDA come from its ``version.py``), the host compiler's
and CMake's ``--version``, the limits nvcc's own ``crt/host_config.h`` enforces, and the checkout's build
requirements, version source and git dependencies. A failure is one ``ForgeError`` line naming what is
wrong and the fix; everything that passes becomes a plan note, so ``invoke plan`` shows what was found.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu.cuda_release import CudaRelease

TORCH_FAMILY = ("torch", "torchvision", "torchaudio")  # the torch check owns these, use-existing-torch strips them

# The oldest GCC the torch headers compile with, by torch release (newest row that is not newer applies).
# Sources: vLLM 0.26.0 docker/Dockerfile ("GCC >= 11.3 is now required because PyTorch's C++20 headers
# (pytorch/pytorch#167929) are not compatible with GCC < 11.3", for the torch 2.11 it pins); PyTorch's
# README for the C++17 releases ("GCC 9.4.0 or newer").
TORCH_MIN_GCC: dict[tuple[int, int], tuple[int, int]] = {(2, 0): (9, 4), (2, 11): (11, 3)}

# What a child of the build's Python prints: its version, marker environment, the installed versions of
# the names it is given, and torch's version/CUDA read from torch/version.py (torch is never imported).
_PROBE = r"""
import importlib.metadata as md, importlib.util, json, os, platform, re, sys
def version(name):
    for candidate in dict.fromkeys((name, name.replace("-", "_"), name.replace("_", "-"))):
        try:
            return md.version(candidate)
        except md.PackageNotFoundError:
            pass
    return None
info = sys.implementation
markers = {
    "implementation_name": info.name, "os_name": os.name, "platform_machine": platform.machine(),
    "platform_python_implementation": platform.python_implementation(), "platform_release": platform.release(),
    "platform_system": platform.system(), "platform_version": platform.version(),
    "python_full_version": platform.python_version(), "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
    "implementation_version": "%d.%d.%d" % info.version[:3],
}
torch = {}
spec = importlib.util.find_spec("torch")
if spec is not None and spec.origin:
    torch["path"] = os.path.dirname(spec.origin)
    try:
        text = open(os.path.join(torch["path"], "version.py")).read()
    except OSError:
        text = ""
    for key in ("__version__", "cuda", "hip"):
        m = re.search(r"^" + key + r"\s*(?::[^=\n]*)?=\s*(?:'([^']*)'|\"([^\"]*)\"|None)", text, re.M)
        torch[key] = (m.group(1) or m.group(2)) if m and (m.group(1) or m.group(2)) else None
print(json.dumps({"executable": sys.executable, "version": list(sys.version_info[:3]), "markers": markers,
                  "dists": {n: version(n) for n in sys.argv[1:]}, "torch": torch}))
"""


@dataclass(frozen=True)
class PythonFacts:
    """The Python that runs setup.py, as it reports itself."""

    executable: str
    version: tuple[int, int, int]
    markers: dict[str, str]
    dists: dict[str, str | None]  # requirement name -> installed version (None: not installed)
    torch_version: str | None = None  # "2.11.0+cu130"
    torch_cuda: CudaRelease | None = None  # 13.0; None for a CPU (or ROCm) build of torch
    torch_hip: str | None = None
    torch_path: str = ""


def probe_python(python: str, names: Iterable[str], *, env: Mapping[str, str] | None = None) -> PythonFacts:
    try:
        proc = subprocess.run([python, "-c", _PROBE, *sorted(set(names))], capture_output=True, text=True, cwd="/",
                              timeout=60, env={**os.environ, **(env or {})})
        data = json.loads(proc.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        raise ForgeError(f"the Python that builds ({python}) does not run",
                         "point the build at a working Python 3.10+ (the one torch is installed in)") from None
    torch = data.get("torch") or {}
    return PythonFacts(data["executable"], tuple(data["version"]), data["markers"], data["dists"],
                       torch.get("__version__"), CudaRelease.parse_or_none(torch.get("cuda")), torch.get("hip"),
                       torch.get("path", ""))


# --- the checkout's build requirements -----------------------------------------------------------------------

def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class BuildRequirement:
    name: str  # as the file spells it
    specifier: str  # ">=77.0.3,<81.0.0", "" for any version
    marker: str  # "" when none
    source: str  # the file it came from

    def __str__(self) -> str:
        return f"{self.name}{self.specifier}" + (f"; {self.marker}" if self.marker else "")


def _pyproject_requires(text: str) -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: the [build-system] requires array read by hand
        block = re.search(r"^\[build-system\](.*?)(?=^\[|\Z)", text, re.M | re.S)
        array = re.search(r"requires\s*=\s*\[(.*?)\]", block.group(1), re.S) if block else None
        return re.findall(r"""["']([^"']+)["']""", array.group(1)) if array else []
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return []
    requires = (data.get("build-system") or {}).get("requires") or []
    return [r for r in requires if isinstance(r, str)]


def _requirement_lines(root: Path, rel: str, seen: set[str]) -> list[tuple[str, str]]:
    """(line, file) of a requirements file, following ``-r`` includes that stay inside the checkout."""
    if rel in seen or len(seen) > 32:
        return []
    seen.add(rel)
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        return []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    lines = []
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        include = re.match(r"^(?:-r|--requirement)\s*=?\s*(\S+)", line)
        if include:
            lines += _requirement_lines(root, str(Path(rel).parent / include.group(1)), seen)
        elif not line.startswith("-"):
            lines.append((line, rel))
    return lines


def read_build_requirements(tree) -> list[BuildRequirement]:
    """pyproject.toml's [build-system] requires and the build requirements file this version has, as written
    (torch's family left to the torch check; a requirement both name is kept once per file)."""
    from packaging.requirements import InvalidRequirement, Requirement

    root = Path(tree.root)
    found: list[tuple[str, str]] = []
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        found += [(line, "pyproject.toml [build-system]") for line in
                  _pyproject_requires(pyproject.read_text(errors="replace"))]
    if tree.build_requirements:
        found += _requirement_lines(root, tree.build_requirements, set())
    out: list[BuildRequirement] = []
    for line, source in found:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if _canonical(req.name) in TORCH_FAMILY or req.url:
            continue
        out.append(BuildRequirement(req.name, str(req.specifier), str(req.marker or ""), source))
    return out


@dataclass(frozen=True)
class RequirementState:
    requirement: BuildRequirement
    installed: str | None
    state: str  # ok | missing | too-old | too-new

    def describe(self) -> str:
        req = self.requirement
        if self.state == "missing":
            return f"{req.name}{req.specifier}"
        return f"{req.name} {self.installed} (needs {req.specifier})"


def compare_requirements(requirements: list[BuildRequirement], facts: PythonFacts) -> list[RequirementState]:
    """Each applicable requirement against what the build's Python has, once per name (the strictest
    verdict of the files that name it)."""
    from packaging.markers import Marker
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    order = {"missing": 3, "too-old": 2, "too-new": 1, "ok": 0}
    states: dict[str, RequirementState] = {}
    for req in requirements:
        if req.marker:
            try:
                if not Marker(req.marker).evaluate(facts.markers):
                    continue
            except Exception:  # a marker this packaging cannot read: judge the requirement anyway
                pass
        installed = facts.dists.get(req.name)
        state = "ok"
        if installed is None:
            state = "missing"
        elif req.specifier:
            try:
                version = Version(installed)
                spec = SpecifierSet(req.specifier)
                if not spec.contains(version, prereleases=True):
                    low = [s for s in spec if s.operator in (">=", ">", "~=", "==", "===")
                           and not s.contains(version, prereleases=True) and version < Version(s.version.rstrip(".*"))]
                    state = "too-old" if low else "too-new"
            except InvalidVersion:
                state = "ok"
        key = _canonical(req.name)
        if key not in states or order[state] > order[states[key].state]:
            states[key] = RequirementState(req, installed, state)
    return list(states.values())


def unmet_requirements_error(tree, facts: PythonFacts, unmet: list[RequirementState]) -> ForgeError:
    missing = [s.describe() for s in unmet if s.state == "missing"]
    old = [s.describe() for s in unmet if s.state == "too-old"]
    sources = sorted({s.requirement.source for s in unmet})
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"too old: {', '.join(old)}"] if old else [])
    return ForgeError(
        f"vLLM {tree.version or ''}'s build requirements ({', '.join(sources)}) are not met in {facts.executable}: "
        + "; ".join(parts),
        "pass --install-build-deps (pip installs exactly these into that Python; torch stays as it is), or install "
        "them yourself",
    )


# --- torch ---------------------------------------------------------------------------------------------------

def _release(version: str | None) -> tuple[int, ...]:
    match = re.match(r"(\d+(?:\.\d+)*)", version or "")
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def torch_line(facts: PythonFacts, tree) -> str:
    """"built against torch 2.14.1+cu130 (the tree pinned 2.11.0)": for the plan, the summary, the build info."""
    pinned = f"the tree pinned {tree.torch_pin}" if tree.torch_pin else "the tree pins no torch version"
    if not facts.torch_version:
        return f"torch is not installed ({pinned})"
    same = tree.torch_pin and _release(facts.torch_version)[:3] == _release(tree.torch_pin)[:3]
    return f"built against torch {facts.torch_version} ({pinned}{', the same release' if same else ''})"


def check_torch(facts: PythonFacts, tree, nvcc_version: CudaRelease) -> list[str]:
    """ForgeError for a torch the build cannot use; notes for what it should know about the one it has."""
    index = f"https://download.pytorch.org/whl/{nvcc_version.tag}"
    pin = tree.torch_pin or ""
    install = f"pip install torch{'==' + pin if pin else ''} --index-url {index}"
    if not facts.torch_version:
        raise ForgeError(
            f"this vLLM checkout builds against torch, and torch is not installed in {facts.executable}",
            f"install the torch to build against ({install}), or bake in Docker (`invoke bake`)")
    if not facts.torch_cuda:
        kind = f"ROCm {facts.torch_hip}" if facts.torch_hip else "no CUDA (a CPU-only build)"
        raise ForgeError(
            f"torch {facts.torch_version} in {facts.torch_path} is built with {kind}: vLLM's CMake stops with "
            "'Unsupported platform' and no kernel is compiled",
            f"install a CUDA build of torch for CUDA {nvcc_version} ({install}), or bake in Docker")
    torch_cuda, nvcc = facts.torch_cuda, nvcc_version
    notes = [torch_line(facts, tree)]
    if torch_cuda.major != nvcc.major:
        raise ForgeError(
            f"torch {facts.torch_version} is built with CUDA {facts.torch_cuda} but the nvcc found is CUDA "
            f"{nvcc_version}: the extensions would link CUDA {nvcc.major}'s runtime while torch loads CUDA "
            f"{torch_cuda.major}'s, and `import vllm` fails on the missing libcudart.so.{nvcc.major}",
            f"install torch for CUDA {nvcc_version} ({install}), or put CUDA {facts.torch_cuda}'s nvcc first "
            "(CUDA_HOME or PATH)")
    if not torch_cuda.same_minor(nvcc):
        notes.append(f"torch's CUDA {facts.torch_cuda} and nvcc's {nvcc_version} differ in the minor version: "
                     "CUDA's minor-version compatibility covers it; the wheel needs a driver for the newer one")
    if pin and _release(facts.torch_version)[:2] != _release(pin)[:2]:
        notes.append(f"torch {facts.torch_version} is not the {pin} this vLLM pins (use-existing-torch removed the "
                     "pin): the wheel is built against the installed one's ABI and runs only with it")
    return notes


# --- host compiler, CMake ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostCompiler:
    path: str
    family: str  # gcc | clang | other
    version: tuple[int, ...]
    text: str  # the first line of its --version


def find_host_compiler(env: Mapping[str, str]) -> HostCompiler | None:
    """The C++ compiler nvcc will use: CUDAHOSTCXX, else CXX, else c++ / g++ on PATH."""
    path_var = env.get("PATH", os.environ.get("PATH", ""))
    for candidate in (env.get("CUDAHOSTCXX"), env.get("CXX"), "c++", "g++", "clang++"):
        if not candidate:
            continue
        path = shutil.which(candidate, path=path_var)
        if not path:
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        first = out.splitlines()[0] if out else ""
        family = ("clang" if "clang" in first.lower() else
                  "gcc" if re.search(r"gcc|g\+\+|GCC", first) or "Free Software Foundation" in out else "other")
        version = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", first.split(")")[-1] if ")" in first else first) \
            or re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", first)
        numbers = tuple(int(g) for g in version.groups() if g is not None) if version else ()
        return HostCompiler(path, family, numbers, first.strip())
    return None


def nvcc_host_limits(cuda_root: Path) -> dict[str, int]:
    """The newest GCC and clang major versions this nvcc accepts, read from its own crt/host_config.h
    (``#if __GNUC__ > 15 #error -- unsupported GNU version!``)."""
    for header in (cuda_root / "include" / "crt" / "host_config.h",
                   *cuda_root.glob("targets/*/include/crt/host_config.h")):
        try:
            text = header.read_text(errors="replace")
        except OSError:
            continue
        limits: dict[str, int] = {}
        gcc = re.search(r"#if\s+__GNUC__\s*>\s*(\d+)", text)
        if gcc:
            limits["gcc"] = int(gcc.group(1))
        clang = re.search(r"\(__clang_major__\s*>=\s*(\d+)\)", text)
        if clang:
            limits["clang"] = int(clang.group(1)) - 1
        return limits
    return {}


def check_host_compiler(compiler: HostCompiler | None, limits: dict[str, int], nvcc_version: CudaRelease,
                        torch_version: str | None) -> str:
    if compiler is None:
        raise ForgeError("no C++ compiler was found (CUDAHOSTCXX, CXX, c++, g++)",
                         "install g++ (apt-get install g++) or point CXX at one")
    shown = ".".join(str(p) for p in compiler.version) or "?"
    newest = limits.get(compiler.family)
    if newest is not None and compiler.version and compiler.version[0] > newest:
        raise ForgeError(
            f"{compiler.path} is {compiler.family} {shown}, and nvcc {nvcc_version} accepts {compiler.family} up to "
            f"{newest} (its crt/host_config.h stops with 'unsupported GNU version')",
            f"install g++-{newest} (or older) and set CUDAHOSTCXX to it, e.g. CUDAHOSTCXX=/usr/bin/g++-{newest}")
    if compiler.family == "gcc" and compiler.version:
        torch_release = _release(torch_version)[:2]
        rows = [key for key in TORCH_MIN_GCC if key <= torch_release] if torch_release else []
        need = TORCH_MIN_GCC[max(rows)] if rows else None
        if need and compiler.version[:2] < need:
            wanted = ".".join(map(str, need))
            raise ForgeError(
                f"{compiler.path} is gcc {shown}, and torch {torch_version}'s headers need gcc {wanted} or newer",
                f"install g++ {wanted} or newer (e.g. g++-{need[0] + 1}) and set CXX and CUDAHOSTCXX to it")
    limit = f" (nvcc {nvcc_version} accepts up to {newest})" if newest is not None else ""
    return f"host compiler {compiler.family} {shown} at {compiler.path}{limit}"


def check_cmake(tree, env: Mapping[str, str]) -> str:
    path_var = env.get("PATH", os.environ.get("PATH", ""))
    cmake = shutil.which("cmake", path=path_var)
    need = tree.cmake_minimum
    if not cmake:
        raise ForgeError(f"no cmake on PATH, and {tree.root.name}'s CMakeLists.txt needs CMake {need or '3.x'}",
                         "pass --install-build-deps (the build requirements name cmake), or pip install cmake")
    try:
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    match = re.search(r"cmake version (\d+(?:\.\d+)*)", out)
    have = match.group(1) if match else "?"
    if need and match and _release(have) < _release(need):
        raise ForgeError(
            f"{cmake} is CMake {have}, and this checkout's CMakeLists.txt asks for cmake_minimum_required {need}",
            f"pip install 'cmake>={need}' (or --install-build-deps), and make it the cmake on PATH")
    return f"CMake {have} at {cmake}" + (f" (needs {need})" if need else "")


def check_version_source(tree, env: Mapping[str, str]) -> str:
    pretend = env.get("SETUPTOOLS_SCM_PRETEND_VERSION") or os.environ.get("SETUPTOOLS_SCM_PRETEND_VERSION")
    if tree.version:
        return f"version {tree.version} from {tree.version_source}"
    if pretend:
        return f"version {pretend} from SETUPTOOLS_SCM_PRETEND_VERSION"
    has_git = (Path(tree.root) / ".git").exists()
    raise ForgeError(
        f"{tree.root} has no version to build: "
        + ("its .git has no v<version> tag" if has_git else "no .git, no PKG-INFO, no vllm/_version.py")
        + ", so setuptools-scm stops before anything compiles",
        "tag the checkout with its release (git tag vX.Y.Z), or set SETUPTOOLS_SCM_PRETEND_VERSION=X.Y.Z")


# --- git dependencies ------------------------------------------------------------------------------------------

def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _endpoint(url: str) -> tuple[str, int] | None:
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ssh", "git") and parts.hostname:
            default = {"http": 80, "https": 443, "ssh": 22, "git": 9418}[parts.scheme]
            try:
                return parts.hostname, parts.port or default
            except ValueError:
                return None
        return None
    scp = re.match(r"^[\w.-]+@([\w.-]+):", url)
    return (scp.group(1), 22) if scp else None


@dataclass
class DepCheck:
    dep: object  # vllm_tree.GitDep
    how: str  # "local copy" | "cache" | "network" | "missing"
    detail: str
    status: str = ""  # a cache entry's provenance: pinned | unverified | substitute (vllm_forge/deps/fetch_deps.py)


def check_git_deps(tree, cache_dir: Path, env: Mapping[str, str], *, timeout: float = 2.0,
                   reachable=_reachable) -> list[DepCheck]:
    """Each git dependency the build fetches: a *_SRC_DIR the build is pointed at, a cache entry, or a host that
    answers now. Refuses naming every dependency that has none of them (a dependency fetched only under a
    build option this reader cannot decide is reported, not refused)."""
    from vllm_forge.deps import fetch_deps

    checks: list[DepCheck] = []
    unknown: list[tuple[DepCheck, tuple[str, int] | None]] = []
    for dep in tree.git_deps:
        variable = dep.src_dir_env
        local = (env.get(variable) or os.environ.get(variable)) if variable else None
        if local:
            if not Path(local).is_dir():
                raise ForgeError(f"{variable}={local} does not exist, and the build takes {dep.name} from it",
                                 f"point {variable} at a copy of {dep.repository} @ {dep.tag}, or unset it")
            checks.append(DepCheck(dep, "local copy", f"{variable}={local}"))
            continue
        state = fetch_deps.dep_state(cache_dir, dep)
        if state.status != "missing":
            checks.append(DepCheck(dep, "cache", state.detail, state.status))
            continue
        check = DepCheck(dep, "missing", f"{dep.repository} @ {dep.tag}")
        checks.append(check)
        unknown.append((check, _endpoint(dep.repository)))
    hosts = sorted({endpoint for _, endpoint in unknown if endpoint})
    if hosts:
        with ThreadPoolExecutor(max_workers=min(8, len(hosts))) as pool:
            answers = dict(zip(hosts, pool.map(lambda e: reachable(e[0], e[1], timeout), hosts), strict=True))
    else:
        answers = {}
    stuck = []
    for check, endpoint in unknown:
        if endpoint and answers.get(endpoint):
            check.how, check.detail = "network", f"CMake fetches it from {check.dep.repository} @ {check.dep.tag}"
        elif check.dep.condition:
            check.detail += f" (fetched only when {check.dep.condition}: not cached, and its host does not answer)"
        else:
            stuck.append(check)
    if stuck:
        stuck_hosts = {_endpoint(c.dep.repository) for c in stuck}
        down = sorted({f"{h}:{p}" for (h, p) in hosts if (h, p) in stuck_hosts and not answers.get((h, p))})
        names = "; ".join(f"{c.dep.name} {c.dep.tag} ({c.dep.repository})" for c in stuck)
        raise ForgeError(
            f"{len(stuck)} git dependenc{'y' if len(stuck) == 1 else 'ies'} of vLLM {tree.version or ''} "
            f"{'is' if len(stuck) == 1 else 'are'} neither cached nor reachable"
            + (f" ({', '.join(down)} could not be reached within {timeout:g} s)" if down else "") + f": {names}",
            "import them with `invoke fetch-deps --from DIR` (tarballs, directories or git bundles), or write "
            "them with `invoke fetch-deps --bundle deps.tar` on a connected machine and import that; "
            "or point their *_SRC_DIR at local copies")
    return checks


# --- all of it -------------------------------------------------------------------------------------------------

@dataclass
class Preflight:
    notes: list[str] = field(default_factory=list)
    torch: str = ""  # the "built against torch ..." line
    unmet: list[RequirementState] = field(default_factory=list)  # build requirements to install
    facts: PythonFacts | None = None
    deps: list[DepCheck] = field(default_factory=list)

    def substitutes(self) -> list[DepCheck]:
        """Cache entries whose own evidence names another revision than the pin."""
        return [c for c in self.deps if c.status == "substitute"]


def run_preflight(tree, *, python: str, toolchain, env: Mapping[str, str], cache_dir: Path,
                  needs_torch: bool, install_requirements: bool = False) -> Preflight:
    """Every check, in the order a user would fix them. ``install_requirements``: unmet build requirements are
    returned (for --install-build-deps) instead of refused."""
    result = Preflight()
    result.notes.append(check_version_source(tree, env))
    requirements = read_build_requirements(tree)
    facts = probe_python(python, [r.name for r in requirements] + list(TORCH_FAMILY))
    result.facts = facts
    states = compare_requirements(requirements, facts)
    unmet = [s for s in states if s.state in ("missing", "too-old")]
    newer = [s for s in states if s.state == "too-new"]
    if unmet and not install_requirements:
        raise unmet_requirements_error(tree, facts, unmet)
    result.unmet = unmet + newer if install_requirements else []
    if states:
        result.notes.append(f"build requirements: {len(states) - len(unmet) - len(newer)} of {len(states)} met in "
                            f"{facts.executable}" + (f"; {len(unmet)} to install" if unmet else ""))
    for state in newer:
        result.notes.append(f"{state.describe()}: newer than this vLLM allows; builds usually work "
                            "(--install-build-deps installs a matching one)")
    if needs_torch:
        notes = check_torch(facts, tree, toolchain.version)
        result.torch = notes[0]
        result.notes += notes
    else:
        result.torch = "torch is not used by this build (its setup.py does not import it)"
    compiler = find_host_compiler(env)
    result.notes.append(check_host_compiler(compiler, nvcc_host_limits(toolchain.root), toolchain.version,
                                            facts.torch_version or tree.torch_pin))
    if any(_canonical(s.requirement.name) == "cmake" for s in result.unmet):
        result.notes.append("cmake: checked after install-build-deps installs it")
    else:
        result.notes.append(check_cmake(tree, env))
    result.deps = check_git_deps(tree, cache_dir, env)
    for check in result.deps:
        result.notes.append(f"git dependency {check.dep.name}: {check.detail}")
    return result


def check_substitutes(tree, checked: Preflight | None, targets: list[str], named: set[str]) -> list[str]:
    """A target built from a dependency that is not its pin is refused unless ``--targets`` names it; notes
    for the ones it names. ``targets``: what this build builds; ``named``: what --targets spelled out."""
    notes = []
    for check in checked.substitutes() if checked else []:
        users = sorted(t for t in targets if t in tree.dep_targets.get(check.dep.name, ()))
        if not users:
            notes.append(f"{check.dep.name} is not the pin, and no target of this build needs it")
            continue
        unnamed = [t for t in users if t not in named]
        if unnamed:
            others = [t for t in targets if t not in users]
            raise ForgeError(
                f"{check.dep.name} in the cache is not the pin ({check.detail}), and "
                f"{', '.join(unnamed)} would be built from it",
                f"build without them (--targets {','.join(others) or '...'}), name them in --targets to build "
                f"them anyway, or import the pinned commit (invoke fetch-deps --from FILE --force)")
        notes.append(f"{', '.join(users)}: built from {check.dep.name}, which is not the pin (named in --targets)")
    return notes
