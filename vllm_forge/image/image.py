"""Bake vLLM into a slim serving image: pick the docker client, resolve Dockerfile ARGs, build, inspect.

``plan_bake`` decides everything first (which docker client and mode, which Dockerfile, every
build-arg, secret and label) and returns the exact commands; ``--dry-run`` prints them and
``run_bake`` runs that same list. Two recipes share one resolved configuration:

- ``forge`` (default): ``docker/Dockerfile`` of this repo, NGC PyTorch build base, CUDA runtime base.
  Its build context is staged under ``build/bake/context`` (``vllm/`` = the checkout, ``forge/`` =
  this repo's scripts), because the build stage runs vllm-forge's own scripts.
- ``upstream``: the checkout's own ``docker/Dockerfile`` with a staged copy of the checkout as
  context (``build/bake/checkout``), given the same knobs under vLLM's ARG names (only the ARGs that
  Dockerfile declares).

Either way the checkout's git metadata goes in through ``scripts/context_git.py``: history and
tags, no credentials (a context lands in layers and in BuildKit's cache).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vllm_forge.build import farm as farms
from vllm_forge.core import credentials
from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.package import PACKAGE_DIR, module_closure, module_path
from vllm_forge.core.plan import Command, mask_urls, run_command
from vllm_forge.core.tree_sync import is_build_output, sync_tree
from vllm_forge.core.validate import check_image_ref
from vllm_forge.gpu import archs as archs_mod
from vllm_forge.gpu import compat

if TYPE_CHECKING:  # image.py also runs inside the build stage, where only its own imports are staged
    from vllm_forge.image.recipe import Recipe
    from vllm_forge.source.checkout import CheckoutFacts
    from vllm_forge.source.vllm_tree import VllmTree

REPO_ROOT = Path(__file__).resolve().parents[2]
FORGE_DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
TARGETS = ("build", "wheel", "runtime")
# Our target name -> the stage of vLLM's own Dockerfile that plays that part.
UPSTREAM_TARGETS = {"build": "build", "wheel": "build", "runtime": "vllm-openai"}
# --non-root: the runtime target's unprivileged variant (vLLM's own is vllm-openai-nonroot).
NON_ROOT_STAGES = {"forge": "runtime-nonroot", "upstream": "vllm-openai-nonroot"}
UPSTREAM_DIST_DIR = "/workspace/dist"  # where vLLM's build stage leaves its wheel
LABEL_PREFIX = "org.vllm-forge"
DEFAULT_PYTORCH_INDEX = "https://download.pytorch.org/whl"  # docker/Dockerfile's PYTORCH_CUDA_INDEX_BASE_URL
DEFAULT_REPOSITORY = "vllm-forge/vllm"
SECRET_IDS = ("ca_bundle", "pip_index_url", "netrc")
AUDIT_MODULE = "vllm_forge.audit.audit"  # the build stage's kernel audit
GB = 1000**3  # docker reports sizes in SI units

# Files of a checkout that never go into the build context (build outputs, caches, venvs).


# --- which docker -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DockerClient:
    path: str
    mode: str  # "buildx" (docker buildx build) | "buildkit" (DOCKER_BUILDKIT=1 docker build)
    version: str = ""
    why: str = ""

    @property
    def build_argv(self) -> list[str]:
        return [self.path, "buildx", "build"] if self.mode == "buildx" else [self.path, "build"]

    @property
    def build_env(self) -> dict[str, str]:
        return {} if self.mode == "buildx" else {"DOCKER_BUILDKIT": "1"}

    def describe(self) -> str:
        how = "docker buildx build" if self.mode == "buildx" else "built-in BuildKit (DOCKER_BUILDKIT=1 docker build)"
        return f"{self.path} {self.version} ({how}){': ' + self.why if self.why else ''}"


def _candidate_clients(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    seen: dict[str, str] = {}
    for directory in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]:
        path = Path(directory or ".") / "docker"
        if path.is_file() and os.access(path, os.X_OK):
            seen.setdefault(str(path.resolve()), str(path))
    return list(seen.values())


def _client_version(path: str, runner) -> str:
    proc = runner([path, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True)
    return proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else "?"


def _has_buildx(path: str, runner) -> bool:
    proc = runner([path, "buildx", "version"], capture_output=True, text=True)
    return proc.returncode == 0


def _has_builtin_buildkit(path: str, runner) -> bool:
    """A one-line build to a throwaway local output: works only where the client has BuildKit."""
    with tempfile.TemporaryDirectory(prefix="forge-buildkit-probe-") as tmp:
        proc = runner(
            [path, "build", "-q", "-o", f"type=local,dest={tmp}", "-"],
            input="FROM scratch\nLABEL probe=1\n",
            capture_output=True,
            text=True,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
        )
    return proc.returncode == 0


def find_docker(explicit: str | None = None, *, runner=subprocess.run, dry_run: bool = False) -> DockerClient:
    """The docker client to bake with: ``explicit`` (--docker / VLLM_FORGE_DOCKER), else the first
    with a working ``buildx``, else the first whose built-in BuildKit builds.

    ``dry_run``: nothing will be built, so no engine is needed; where none answers, a client without buildx
    is taken as built-in BuildKit without the test build (the real run probes it)."""
    explicit = explicit or os.environ.get("VLLM_FORGE_DOCKER") or None
    candidates = _candidate_clients(explicit)
    if not candidates and dry_run:
        return DockerClient(explicit or "docker", "buildkit", "", "no docker client found here: install Docker "
                            "before running this for real")
    if not candidates:
        raise ForgeError(
            "no docker client was found on PATH", "install Docker (docker.io or docker-ce), or pass --docker PATH"
        )
    try:
        for path in candidates:
            if _has_buildx(path, runner):
                why = "as asked" if explicit else "buildx plugin present"
                return DockerClient(path, "buildx", _client_version(path, runner), why)
        if dry_run and not engine_reachable(candidates[0]):
            return DockerClient(candidates[0], "buildkit", _client_version(candidates[0], runner),
                                "no buildx, no engine answers: built-in BuildKit assumed for this dry run "
                                "(probed when it runs)")
        for path in candidates:
            if _has_builtin_buildkit(path, runner):
                why = "as asked" if explicit else "no buildx; its built-in BuildKit works"
                return DockerClient(path, "buildkit", _client_version(path, runner), why)
    except FileNotFoundError:
        raise ForgeError(
            f"docker client {candidates[0]} does not exist", "pass --docker PATH to a docker client"
        ) from None
    check_engine(candidates[0], runner=runner)
    raise ForgeError(
        f"none of the docker clients here can build with BuildKit ({', '.join(candidates)})",
        "install the buildx plugin (docker-buildx-plugin), or use a Docker 20.10-23 client with built-in BuildKit, "
        "e.g. --docker /usr/bin/docker",
    )


def check_engine(docker: str, *, runner=subprocess.run) -> None:
    """ForgeError unless ``docker`` exists and its engine answers (a down daemon costs one line)."""
    try:
        proc = runner([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                      timeout=60)
    except FileNotFoundError:
        raise ForgeError(
            f"docker client {docker} does not exist", "install Docker, or pass --docker PATH (or VLLM_FORGE_DOCKER)"
        ) from None
    except subprocess.TimeoutExpired:
        raise ForgeError(f"the Docker engine did not answer `{docker} info` within 60 s",
                         "check that dockerd is healthy (`sudo systemctl status docker`), or set DOCKER_HOST") from None
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise ForgeError(
            f"no Docker engine answers `{docker} info` ({said[-1].rstrip('.') if said else 'no output'})",
            "start it (`sudo systemctl start docker`, or `dockerd &` in a container), or set DOCKER_HOST",
        )


def default_docker() -> str:
    """The client for commands other than builds: $VLLM_FORGE_DOCKER, else ``docker`` on PATH."""
    return os.environ.get("VLLM_FORGE_DOCKER") or "docker"


def image_present(docker: str, ref: str) -> bool:
    return subprocess.run([docker, "image", "inspect", ref], capture_output=True).returncode == 0


def parse_build_args(items: Iterable[str]) -> dict[str, str]:
    """``--build-arg NAME=VALUE`` flags as a mapping (one line for one without ``=``)."""
    extra = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq:
            raise ForgeError(f"--build-arg {item} is not NAME=VALUE", "pass --build-arg NAME=VALUE")
        extra[name] = value
    return extra


def engine_reachable(docker: str = "docker") -> bool:
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# --- Dockerfile ARGs ------------------------------------------------------------------------------


_ARG_LINE = re.compile(r"^\s*ARG\s+(.+)$", re.IGNORECASE)
_FROM_LINE = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE)


def _logical_lines(text: str) -> Iterable[str]:
    current = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not current and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        yield current + line
        current = ""
    if current:
        yield current


def dockerfile_args(path: Path) -> dict[str, str | None]:
    """Every ARG a Dockerfile declares, with its first default (None: declared without one)."""
    args: dict[str, str | None] = {}
    for line in _logical_lines(Path(path).read_text()):
        match = _ARG_LINE.match(line)
        if not match:
            continue
        for token in shlex.split(match.group(1), posix=True):  # `ARG A B=1` declares two
            name, eq, value = token.partition("=")
            if name and (name not in args or args[name] is None):
                args[name] = value if eq else args.get(name)
    return args


def dockerfile_stages(path: Path) -> list[str]:
    return [
        m.group(2) for line in _logical_lines(Path(path).read_text()) if (m := _FROM_LINE.match(line)) and m.group(2)
    ]


def dockerfile_secret_ids(path: Path) -> set[str]:
    return set(re.findall(r"type=secret,(?:[^\s]*,)?id=([\w.-]+)", Path(path).read_text()))


def find_upstream_dockerfile(src: Path) -> Path:
    for candidate in (src / "docker" / "Dockerfile", src / "Dockerfile"):
        if candidate.is_file():
            return candidate
    raise ForgeError(
        f"the checkout {src} has no Dockerfile of its own (docker/Dockerfile)",
        "use this repo's recipe (--dockerfile forge), or a vLLM version that ships docker/Dockerfile",
    )


def default_ca_bundle(env: dict[str, str] | None = None) -> tuple[Path | None, str]:
    """The CA bundle this host's pip uses (PIP_CERT, pip's `cert` setting, REQUESTS_CA_BUNDLE), and
    where it came from: builds behind a TLS-intercepting proxy need the same one inside."""
    env = os.environ if env is None else env
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        value = env.get(name, "")
        if value and Path(value).is_file():
            return Path(value), name
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.cert"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None, ""
    value = proc.stdout.strip()
    if proc.returncode == 0 and value and Path(value).is_file():
        return Path(value), "pip config global.cert"
    return None, ""


# --- the request and its plan ---------------------------------------------------------------------


@dataclass
class BakeRequest:
    """What to bake, in BuildConfig's terms (``tasks.py`` fills it from the resolved config)."""

    src: Path
    arch: str = "12.0"
    cuda: str = "12.8"
    cuda_explicit: bool = False  # --cuda given: upstream mode then passes CUDA_VERSION too
    base_image: str = ""  # "" : the NGC PyTorch image for `cuda` (scripts/compat.py)
    runtime_image: str = ""  # "" : the CUDA runtime image for `cuda`
    target: str = "runtime"
    tag: str = ""
    dockerfile: str = "forge"  # forge | upstream | a path to a Dockerfile
    max_jobs: int = 0
    nvcc_threads: int = 0
    build_type: str = "Release"
    compile_cache: str = "auto"
    wheel_limit_mb: float = 0  # 0: the recipe's own default
    wheel_check: bool = True
    audit: bool = True
    index_url: str = ""  # may carry credentials: then it travels as a secret, never as an ARG
    extra_index_url: str = ""
    pytorch_index_base_url: str = ""
    ca_bundle: Path | None = None
    netrc: Path | None = None
    dist_dir: Path = Path("dist")
    context_dir: Path = REPO_ROOT / "build" / "bake"
    # What the checkout is (labels, default tag); None: read from ``src`` as a local checkout. A checkout
    # that does not exist yet (the pipeline clones it first) is planned from ``planned_repo``/``_ref``.
    checkout: CheckoutFacts | None = None
    planned_repo: str = ""
    planned_ref: str = ""
    mirror: str = "global"  # the applied mirror profile's name (a label)
    registry_cache: str = ""  # image ref of a registry layer cache (buildx only)
    platform: str = ""
    push: bool = False
    builder: str = ""
    cache_from: list[str] = field(default_factory=list)
    cache_to: list[str] = field(default_factory=list)
    no_cache: bool = False
    build_args: dict[str, str] = field(default_factory=dict)  # raw extra --build-arg NAME=VALUE
    apt_mirror: str = ""  # scheme://host put in place of the Ubuntu/Debian apt hosts (mirror profile)
    deps_cache: Path | None = None  # a `fetch-deps` cache root: its deps this checkout uses go into the build
    jit: bool = True  # False (--no-jit): no JIT toolchain in the runtime stage, no JIT check
    non_root: bool = False  # runtime target: serve as an unprivileged user (NON_ROOT_STAGES)
    recipe: Recipe | None = None  # CUDA, bases and torch chosen from the checkout's pins (scripts/recipe.py)
    dist: farms.DistSettings = field(default_factory=farms.DistSettings)  # a sccache-dist farm for the build stage


# What staging leaves out of a checkout's copy besides build outputs (scripts/context_filter.py, context_git.py).
_LEFT_OUT = ("what its .dockerignore names, files that hold logins (.env, .pypirc, netrc, Docker/AWS/gcloud/"
             "Kubernetes configs, ssh keys) and git credentials")


@dataclass
class BakePlan:
    request: BakeRequest
    client: DockerClient
    recipe: str  # forge | upstream | custom
    dockerfile: Path
    context: Path
    target_stage: str
    image: str  # the tag the image gets ("" for a wheel export)
    build_args: dict[str, str]
    secrets: dict[str, str]  # id -> file
    labels: dict[str, str]
    commands: list[Command]
    stage_context: bool  # sync the checkout (forge: + scripts) into `context` first
    secret_values: dict[str, str] = field(default_factory=dict)  # id -> value written at run time
    notes: list[str] = field(default_factory=list)
    # A wheel export lands here first (private to this run, inside dist/), then moves into dist/ file
    # by file with a rename: an interrupted or concurrent export never leaves half a wheel in dist/.
    export_dir: Path | None = None
    cleanup: list[list[str]] = field(default_factory=list)  # run (errors ignored) however the bake ends
    tree: VllmTree | None = None  # what the checkout's vLLM version reads (None: not cloned yet)
    identity: dict[str, str] = field(default_factory=dict)  # the checkout built: repo, ref, commit, dirty

    def lines(self) -> list[str]:
        """The plan as printable lines: comments, then each exact command."""
        out = [f"# docker client: {self.client.describe()}"]
        out += [f"# {note}" for note in self.notes]
        if self.stage_context and self.recipe == "forge":
            out.append(
                f"# stage the build context {self.context}: vllm/ <- {self.request.src} "
                f"(without build outputs, {_LEFT_OUT}), "
                f"forge/ <- the modules of {PACKAGE_DIR} the build runs, docker/forge-env.sh and docker/forge-apt.sh"
            )
        elif self.stage_context:
            out.append(
                f"# stage the build context {self.context} <- {self.request.src} "
                f"(without build outputs, {_LEFT_OUT})"
            )
        for secret_id in self.secret_values:
            out.append(f"# write secret {secret_id} to {self.secrets[secret_id]} (mode 0600, removed afterwards)")
        out += [command.shell() for command in self.commands]
        return out


def _safe_tag_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip(".-")[:60] or "dev"


def default_tag(identity: dict[str, str], cuda: str, archs: list[archs_mod.CudaArch], target: str) -> str:
    """``vllm-forge/vllm:v0.11.0-cu128-sm120``: the ref built (a local checkout: ``local-<commit>``,
    ``-dirty`` when it has changes of its own), the CUDA, the archs."""
    ref = identity["ref"]
    if ref == "local" and identity["commit"] not in ("", "unknown", PENDING):
        ref = f"local-{identity['commit'][:12]}"
    if identity.get("dirty") == "true":
        ref += "-dirty"
    sms = "-".join(a.sm.replace("_", "") for a in archs)
    suffix = "-build" if target == "build" else ""
    return f"{DEFAULT_REPOSITORY}:{_safe_tag_part(ref)}-cu{compat.cuda_minor(cuda).replace('.', '')}-{sms}{suffix}"


def strip_credentials(url: str) -> str:
    """``https://user:pw@host/x?token=t`` -> ``https://host/x`` (labels and plans never carry a credential)."""
    return credentials.strip_credentials(url)


def has_credentials(url: str) -> bool:
    return credentials.has_credentials(url)


def _git_out(src: Path, *args: str) -> str:
    from vllm_forge.core.git_safe import run_git

    proc = run_git(["-C", str(src), *args], timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 else ""


PENDING = "(after clone)"


def source_identity(facts: CheckoutFacts, planned_repo: str = "", planned_ref: str = "") -> dict[str, str]:
    """Repo URL (no credentials), ref (the one cloned, or ``local``), commit and dirty flag of the checkout
    that is built; for a checkout still to be cloned, the planned repo and ref."""
    if not facts.exists:
        return {"repo": strip_credentials(planned_repo), "ref": planned_ref or "local", "commit": PENDING,
                "dirty": PENDING}
    repo = facts.repo or str(facts.path)
    return {"repo": strip_credentials(repo), "ref": facts.ref or "local", "commit": facts.commit or "unknown",
            "dirty": "true" if facts.dirty else "false"}


def source_date(src: Path, facts: CheckoutFacts) -> _dt.datetime:
    """When the sources baked were last changed, for the image's ``created`` label: ``$SOURCE_DATE_EPOCH``
    when set (the reproducible-builds convention), else the commit's time, or for a tree with changes (or
    without git, like the miniature's private copy) its newest file outside build outputs. A re-bake of
    unchanged sources gets the same label, so the same image ID, and leaves no dangling image behind."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch.isdigit():
        return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
    seconds = 0.0
    if facts.exists and facts.commit:
        from vllm_forge.core.git_safe import run_git

        out = run_git(["log", "-1", "--format=%ct", "HEAD"], cwd=src)
        seconds = float(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else 0.0
    if not seconds or facts.dirty:
        for root, dirs, files in os.walk(src):
            rel = Path(root).relative_to(src)
            dirs[:] = [d for d in dirs if d != ".git" and not is_build_output(rel / d, True)]
            for name in files:
                if not is_build_output(rel / name, False):
                    seconds = max(seconds, (Path(root) / name).lstat().st_mtime)
    if not seconds:
        return _dt.datetime.now(_dt.timezone.utc)
    return _dt.datetime.fromtimestamp(int(seconds), _dt.timezone.utc)


def resolve_base_images(cuda: str, base_image: str = "", runtime_image: str = "") -> tuple[str, str]:
    """(build base, runtime base): the explicit ones, else compat's NGC PyTorch / CUDA runtime rows."""
    minor = compat.cuda_minor(cuda)
    if not base_image:
        row = compat.default_ngc_tag(minor)
        if row is None:
            raise ForgeError(
                f"no NGC PyTorch image is known for CUDA {cuda}",
                "pass --base-image, or use one of CUDA "
                + ", ".join(sorted({compat.cuda_minor(r.cuda) for r in compat.NGC_PYTORCH_TAGS})),
            )
        base_image = row.image
    if not runtime_image:
        runtime_image = compat.CUDA_RUNTIME_IMAGES.get(minor, "")
        if not runtime_image:
            raise ForgeError(
                f"no CUDA runtime image is known for CUDA {cuda}",
                f"pass --runtime-image, or use one of CUDA {', '.join(sorted(compat.CUDA_RUNTIME_IMAGES))}",
            )
    return base_image, runtime_image


def full_cuda_version(cuda: str) -> str:
    """ "12.8" -> "12.8.1" (the version in the CUDA runtime image tag), as vLLM's CUDA_VERSION wants."""
    if cuda.count(".") >= 2:
        return cuda
    image = compat.CUDA_RUNTIME_IMAGES.get(compat.cuda_minor(cuda), "")
    match = re.search(r":(\d+\.\d+\.\d+)-", image)
    return match.group(1) if match else cuda


# --- the JIT toolchain of the runtime stage ---------------------------------------------------------------

JIT_FAIL_LINE = r"forge-jit-check: FAIL: (.+)$"  # what scripts/doctor_inside.py --jit-check prints
JIT_FIX = (
    "bake with a JIT toolchain for these archs (the default; --runtime-image with nvcc also works), "
    "or pass --no-jit if your models need no run-time kernel compile"
)


@dataclass(frozen=True)
class JitToolchain:
    cuda: str  # CUDA minor of the toolchain ("" when none)
    spec: str  # the JIT_TOOLCHAIN build arg: pip:<reqs> | apt:<packages> | none
    why: str

    @property
    def label(self) -> str:
        return "none (--no-jit)" if self.spec == "none" else f"nvcc {self.cuda} ({self.spec})"


def checkout_needs_flashinfer(src: Path) -> bool:
    """Whether the checkout's wheel asks for FlashInfer: its requirements files, or setup.py's extras
    (vLLM 0.11 has `flashinfer-python` as the `flashinfer` extra, which vLLM's own image installs)."""
    root = Path(src).expanduser()
    for path in list((root / "requirements").rglob("*.txt")) + [root / "requirements-cuda.txt", root / "setup.py"]:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if re.search(r"^\s*flashinfer" if path.suffix == ".txt" else r"[\"']flashinfer-python", text,
                     re.IGNORECASE | re.MULTILINE):
            return True
    return False


def _cuda_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in compat.cuda_minor(version).split("."))


def plan_jit_toolchain(request: BakeRequest, archs) -> JitToolchain:
    """The JIT toolchain the runtime stage gets: the build's CUDA, raised to 12.9 when an sm_12x arch is
    targeted and the checkout ships FlashInfer; ``none`` with --no-jit."""
    if not request.jit:
        return JitToolchain("", "none", "--no-jit: no run-time kernel compile")
    cuda = compat.cuda_minor(request.cuda)
    why = f"the build's CUDA {cuda}"
    if any(a.sm.startswith("sm_12") for a in archs) and _cuda_key(cuda) < _cuda_key(compat.FLASHINFER_SM12X_MIN_CUDA):
        if checkout_needs_flashinfer(request.src):
            cuda = compat.FLASHINFER_SM12X_MIN_CUDA
            why = f"FlashInfer JIT on sm_12x needs CUDA >= {cuda}"
    spec = compat.JIT_TOOLCHAINS.get(cuda)
    if not spec:
        raise ForgeError(
            f"no JIT toolchain is known for CUDA {cuda}",
            f"use --cuda {' or '.join(sorted(compat.JIT_TOOLCHAINS))}, or pass --no-jit",
        )
    return JitToolchain(cuda, spec, why)


# --- do the base images exist? -----------------------------------------------------------------------------

STANDIN_NOTE = "TEST-ONLY stand-in bases: this image is for iterating on the Dockerfile, not for serving real models"


def base_image_available(docker: str, image: str, *, timeout_s: int = 20, runner=subprocess.run) -> bool:
    """True when ``image`` is present locally or its registry answers for it (``docker manifest inspect``)."""
    try:
        local = runner([docker, "image", "inspect", "--format", "{{.Id}}", image], capture_output=True, text=True,
                       timeout=60)
        if local.returncode == 0:
            return True
        remote = runner([docker, "manifest", "inspect", image], capture_output=True, text=True, timeout=timeout_s)
        return remote.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def check_base_images(docker: str, base: str, runtime: str, *, runner=subprocess.run) -> list[str]:
    """The base images of a bake that are neither local nor resolvable (empty: all can be used)."""
    missing = []
    for image in dict.fromkeys(i for i in (base, runtime) if i):
        if not base_image_available(docker, image, runner=runner):
            missing.append(image)
    return missing


def missing_bases_error(missing: list[str], *, mirror: str = "") -> ForgeError:
    """The one-line error for bases that cannot be had, with the fixes that apply to them."""
    from vllm_forge.image import mirrors

    fixes = []
    through_cn = [i for i in missing if mirrors.rewrite_image(i, mirrors.BUILTIN_MIRRORS["cn"]) != i]
    if through_cn and mirror != "cn":
        fixes.append("--mirror cn (pulls " + ", ".join(sorted({mirrors.split_image(i)[0] for i in through_cn}))
                     + " through m.daocloud.io)")
    fixes.append("--base-image/--runtime-image with images you have (`docker images`)")
    fixes.append("--standin to iterate on the Dockerfile with local TEST-ONLY bases (not for serving real models)")
    return ForgeError(
        f"base image{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
        f"{'are' if len(missing) > 1 else 'is'} not present locally and the registry cannot be reached",
        "pass " + ", or ".join(fixes),
    )


def _knob_values(request: BakeRequest, archs, base: str, runtime: str, recipe: str,
                 tree: VllmTree | None) -> dict[str, str]:
    """Every knob under each name a vLLM-style Dockerfile may call it; filtered by what it declares."""
    arch_list = archs_mod.torch_cuda_arch_list(archs)
    values: dict[str, str] = {
        "torch_cuda_arch_list": arch_list,
        "TORCH_CUDA_ARCH_LIST": arch_list,
        "vllm_fa_cmake_gpu_arches": archs_mod.fa_cmake_gpu_arches(archs),
        "CMAKE_BUILD_TYPE": request.build_type,
        "RUN_WHEEL_CHECK": "true" if request.wheel_check else "false",
        "RUN_WHEEL_AUDIT": "true" if request.audit and module_path(AUDIT_MODULE).is_file() else "false",
    }
    jobs, threads = request.max_jobs, request.nvcc_threads
    if recipe != "forge" and not (jobs and threads):
        # vLLM's Dockerfile has no "automatic": choose for this host (where the engine runs).
        from vllm_forge.gpu.parallelism import choose_parallelism

        auto = choose_parallelism(max_jobs=jobs, nvcc_threads=threads, n_archs=len(archs))
        jobs, threads = auto.max_jobs, auto.nvcc_threads
    values["max_jobs"] = str(jobs)
    values["nvcc_threads"] = str(threads)
    if request.compile_cache == "sccache":
        values["USE_SCCACHE"] = "1"
    if recipe == "forge":
        values["COMPILE_CACHE"] = request.compile_cache
    if recipe == "forge" and tree is not None:
        # What this checkout's vLLM version builds with and enforces (scripts/vllm_tree.py).
        if tree.build_requirements:
            values["BUILD_REQUIREMENTS"] = tree.build_requirements
        if not request.wheel_limit_mb:
            values["VLLM_MAX_SIZE_MB"] = str(tree.wheel_limit_mb())
    if request.wheel_limit_mb:
        values["VLLM_MAX_SIZE_MB"] = f"{request.wheel_limit_mb:g}"
    if request.apt_mirror:
        values["APT_MIRROR"] = check_apt_mirror(request.apt_mirror)
    if recipe == "forge":
        jit = plan_jit_toolchain(request, archs)
        values["JIT_TOOLCHAIN"] = jit.spec
        values["JIT_CHECK"] = "true" if request.jit else "false"
    if recipe == "forge" or request.base_image:
        values["BUILD_BASE_IMAGE"] = base
    if recipe == "forge" or request.runtime_image:
        values["FINAL_BASE_IMAGE"] = runtime
    if recipe == "forge":
        values["CUDA_VERSION"] = compat.cuda_minor(request.cuda)
        if request.recipe is not None:
            values["TORCH_REQUIREMENT"] = request.recipe.torch_requirement
            index = (request.pytorch_index_base_url or DEFAULT_PYTORCH_INDEX).rstrip("/")
            values["TORCH_INDEX_URL"] = f"{index}/{request.recipe.torch_index_suffix}" \
                if request.recipe.torch_requirement else ""
    elif request.cuda_explicit:
        values["CUDA_VERSION"] = full_cuda_version(request.cuda)
    if request.index_url and not has_credentials(request.index_url):
        for name in ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_DEFAULT_INDEX"):
            values[name] = request.index_url
    if request.extra_index_url:
        if has_credentials(request.extra_index_url):
            raise ForgeError(
                "--extra-index-url carries credentials, and build args are kept in the image history",
                "pass the credentials with --netrc FILE (machine HOST login USER password TOKEN) instead",
            )
        for name in ("PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL"):
            values[name] = request.extra_index_url
    if request.pytorch_index_base_url:
        if has_credentials(request.pytorch_index_base_url):
            raise ForgeError(
                "the PyTorch index (--pytorch-index, or the mirror profile's pytorch_index) carries credentials, "
                "and build args are kept in the image history",
                "give the index URL without them and pass the login with --netrc FILE (machine HOST login USER "
                "password TOKEN)",
            )
        values["PYTORCH_CUDA_INDEX_BASE_URL"] = request.pytorch_index_base_url.rstrip("/")
    return values


# scheme://host[:port] and nothing else: the Dockerfile puts it into a sed replacement, where `#`, `;`,
# `&`, a quote or a space would change the script (and a user-info part would land in the image).
_APT_MIRROR = re.compile(r"^https?://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?$")


def check_apt_mirror(value: str, where: str = "the mirror profile's apt_mirror") -> str:
    """``value`` without a trailing slash, when it is a plain http(s)://host[:port]; ForgeError otherwise."""
    value = (value or "").strip().rstrip("/")
    if not _APT_MIRROR.match(value):
        raise ForgeError(
            f"{where} {mask_urls(value)!r} is not scheme://host[:port]",
            "give the apt mirror as http(s)://host or http(s)://host:port, with no path, user, `#`, `;`, quotes or "
            "spaces",
        )
    return value


def _runtime_user(recipe: str, target_stage: str, declared: dict[str, str | None]) -> str:
    """Who the image's processes run as, for the org.vllm-forge.user label (`invoke inspect`)."""
    if target_stage == NON_ROOT_STAGES["forge"] and recipe == "forge":
        return f"vllm (uid {declared.get('VLLM_UID') or '?'}, gid 0)"
    if target_stage == NON_ROOT_STAGES["upstream"]:
        return f"non-root ({target_stage}'s USER)"
    return "root"


def _torch_label(recipe: Recipe) -> str:
    """The torch the image is built against: the pinned one installed from the PyTorch index, or the base's."""
    if recipe.torch_requirement:
        return f"{recipe.torch_requirement} ({recipe.torch_index_suffix})"
    return f"the base's own{' (' + recipe.base_torch + ')' if recipe.base_torch else ''}"


def _check_secret_file(path: Path | None, flag: str) -> None:
    if path is not None and not Path(path).expanduser().is_file():
        raise ForgeError(f"{flag} {path} is not a file", f"pass {flag} the path of an existing file")


def plan_bake(request: BakeRequest, client: DockerClient, *, now: _dt.datetime | None = None) -> BakePlan:
    """Everything decided and checked before docker runs: the exact commands a bake will run."""
    if request.target not in TARGETS:
        raise ForgeError(f"--target {request.target} is not a stage of this recipe", f"use one of {', '.join(TARGETS)}")
    src = Path(request.src).expanduser().resolve()
    facts = request.checkout
    if facts is None:
        from vllm_forge.source.checkout import read_checkout

        facts = read_checkout(src, managed=False)
    if facts.exists and not (src / "setup.py").is_file():
        raise ForgeError(
            f"{src} is not a vLLM checkout (no setup.py)",
            "run `invoke clone` first, or pass --vllm-src PATH to an existing checkout",
        )
    if not facts.exists and request.dockerfile != "forge":
        raise ForgeError(f"{src} does not exist yet, and --dockerfile {request.dockerfile} is read from it",
                         "run `invoke clone` first (a real bake clones first by itself)")
    tree = None
    if facts.exists:
        from vllm_forge.source.vllm_tree import inspect_tree

        tree = inspect_tree(src)
    archs = archs_mod.resolve_arch(request.arch, request.cuda)
    _check_secret_file(request.ca_bundle, "--ca-bundle")
    _check_secret_file(request.netrc, "--netrc")
    if request.push and not request.tag:
        raise ForgeError("--push needs a registry tag", "pass --tag registry.example.com/team/vllm:TAG")
    if client.mode != "buildx" and request.cache_to:
        raise ForgeError(
            "--cache-to needs docker buildx; this client builds with Docker's built-in BuildKit",
            "install the buildx plugin, or drop --cache-to (the local layer cache still works)",
        )
    from vllm_forge.image import remote_build

    # A builder or registry cache this client cannot use is refused, never silently dropped.
    remote_build.require_buildx(request.builder, request.registry_cache, docker=client.path,
                                available=client.mode == "buildx")

    # Every recipe builds from a staged copy, never from the checkout itself: its .git holds
    # credentials a context would carry into layers and BuildKit's cache (scripts/context_git.py).
    if request.dockerfile == "forge":
        recipe, dockerfile, context = "forge", FORGE_DOCKERFILE, Path(request.context_dir) / "context"
    elif request.dockerfile == "upstream":
        recipe, dockerfile, context = "upstream", find_upstream_dockerfile(src), Path(request.context_dir) / "checkout"
    else:
        dockerfile = Path(request.dockerfile).expanduser().resolve()
        if not dockerfile.is_file():
            raise ForgeError(
                f"--dockerfile {request.dockerfile} is not a file", "pass forge, upstream or a Dockerfile path"
            )
        recipe, context = "custom", Path(request.context_dir) / "checkout"
    if request.dist.on and recipe == "forge":  # the farm compiles through sccache
        request = dataclasses.replace(request, compile_cache=farms.cache_for_dist(request.compile_cache, request.dist))
    stage = True
    if request.recipe is not None:
        base = request.base_image or request.recipe.base_image
        runtime = request.runtime_image or request.recipe.runtime_image
    else:  # a request made without the pipeline (this module's CLI): compat's defaults for the CUDA
        base, runtime = resolve_base_images(request.cuda, request.base_image, request.runtime_image)
    for flag, value in (("--base-image", base), ("--runtime-image", runtime), ("--tag", request.tag)):
        if value:  # they may come from a shared invoke.yaml or mirror profile: never a docker option
            check_image_ref(value, flag)
    declared = dockerfile_args(dockerfile)
    stages = dockerfile_stages(dockerfile)
    target_stage = request.target if recipe == "forge" else UPSTREAM_TARGETS[request.target]
    if request.non_root:
        if request.target != "runtime":
            raise ForgeError(f"--non-root is about the serving image, not --target {request.target}",
                             "drop --non-root, or bake --target runtime")
        target_stage = NON_ROOT_STAGES.get(recipe, NON_ROOT_STAGES["upstream"])
        if target_stage not in stages and recipe != "forge":
            raise ForgeError(
                f"{dockerfile} has no stage '{target_stage}' for --non-root (vLLM added it in its own Dockerfile)",
                "use --dockerfile forge --non-root, or a vLLM version whose Dockerfile has vllm-openai-nonroot",
            )
    if recipe != "forge" and target_stage not in stages:
        raise ForgeError(
            f"{dockerfile} has no stage '{target_stage}' (stages: {', '.join(stages) or 'none'})",
            "use --dockerfile forge, or a vLLM Dockerfile with build and vllm-openai stages",
        )

    notes: list[str] = list(request.recipe.notes) if request.recipe and recipe == "forge" else []
    if request.recipe is not None and recipe == "forge":
        need = compat.MIN_DRIVER.get(request.recipe.cuda)
        notes.insert(0, f"image CUDA {request.recipe.cuda} ({request.recipe.cuda_source})"
                        + (f"; it needs an NVIDIA driver >= {need.full}" if need else ""))
    if not facts.exists:
        notes.append(f"planned before the clone: commit, build requirements and wheel limit are read from {src} "
                     "once it exists, and the bake is planned again then")
    if recipe == "forge" and request.deps_cache and tree is not None:
        deps = cached_git_deps(request, tree)
        if deps:
            notes.append(f"{len(deps)} cached git dependencies ({', '.join(d.name for d in deps)}) go into the build "
                         "context's deps/: CMake takes them from there, not from the network")
    if request.audit and not module_path(AUDIT_MODULE).is_file():
        notes.append(f"{AUDIT_MODULE} is not in this vllm-forge: the kernel audit step is skipped")
    knobs = _knob_values(request, archs, base, runtime, recipe, tree)
    build_args = {name: value for name, value in knobs.items() if name in declared}
    skipped = sorted(set(knobs) - set(declared) - {"TORCH_CUDA_ARCH_LIST"} - {"UV_DEFAULT_INDEX", "UV_INDEX_URL"})
    if skipped and recipe != "forge":
        notes.append(f"{dockerfile.name} declares no ARG {', '.join(skipped)}: its own defaults apply there")
    if recipe != "forge":
        for knob, name in (("build base", "BUILD_BASE_IMAGE"), ("runtime base", "FINAL_BASE_IMAGE")):
            if name not in build_args:
                notes.append(f"{knob}: the Dockerfile's own default ({declared.get(name) or 'none'})")
    for name, value in request.build_args.items():
        if name == "APT_MIRROR" and value:
            value = check_apt_mirror(value, "--build-arg APT_MIRROR")
        if has_credentials(value):
            raise ForgeError(
                f"--build-arg {name} carries credentials, and build args are kept in the image history",
                "pass them as a secret (--netrc, --index-url with credentials)",
            )
        build_args[name] = value

    secrets: dict[str, str] = {}
    secret_values: dict[str, str] = {}
    secrets_dir = Path(request.context_dir) / "secrets"
    if request.ca_bundle:
        secrets["ca_bundle"] = str(Path(request.ca_bundle).expanduser().resolve())
    if request.netrc:
        secrets["netrc"] = str(Path(request.netrc).expanduser().resolve())
    if request.index_url and has_credentials(request.index_url):
        secrets["pip_index_url"] = str(secrets_dir / "pip_index_url")
        secret_values["pip_index_url"] = request.index_url
        notes.append(
            f"the index URL carries credentials: it goes in as secret pip_index_url "
            f"({strip_credentials(request.index_url)}), never as a build arg"
        )
    network_host = False
    if request.dist.on and recipe != "forge":
        notes.append(f"dist_scheduler {request.dist.scheduler} is not used: {dockerfile.name} knows no sccache-dist "
                     "(the forge recipe does)")
    elif request.dist.on:
        token = request.dist.token.read()  # a missing token is a mistake to fix, not a farm to fall back from
        found = farms.probe(request.dist, token)
        notes.append(f"{found.line()} (asked from this machine; the build stage asks again and says so in its log)")
        if found.on:
            secrets[farms.SECRET_ID] = str(secrets_dir / farms.SECRET_ID)
            secret_values[farms.SECRET_ID] = farms.secret_text(found.scheduler, token)
            notes.append(f"the scheduler and the client token from {request.dist.token.describe()} go in as secret "
                         f"{farms.SECRET_ID}, never as a build arg")
            network_host = farms.is_loopback(found.scheduler)
            if network_host:
                notes.append("the scheduler is on this machine's loopback: the build runs with --network host to "
                             "reach it (and the build servers)")
    used = dockerfile_secret_ids(dockerfile)
    for secret_id in secrets:
        if secret_id not in used:
            notes.append(f"{dockerfile.name} mounts no secret '{secret_id}': it will not see it")

    identity = source_identity(facts, request.planned_repo, request.planned_ref)
    from vllm_forge import __version__ as forge_version

    created = (now or source_date(src, facts)).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    labels = {
        "org.opencontainers.image.title": "vllm",
        "org.opencontainers.image.source": identity["repo"],
        "org.opencontainers.image.revision": identity["commit"],
        "org.opencontainers.image.version": identity["ref"],
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.base.name": runtime
        if "FINAL_BASE_IMAGE" in build_args
        else (declared.get("FINAL_BASE_IMAGE") or ""),
        f"{LABEL_PREFIX}.vllm.repo": identity["repo"],
        f"{LABEL_PREFIX}.vllm.ref": identity["ref"],
        f"{LABEL_PREFIX}.vllm.commit": identity["commit"],
        f"{LABEL_PREFIX}.vllm.dirty": identity["dirty"],
        f"{LABEL_PREFIX}.arch-list": archs_mod.torch_cuda_arch_list(archs),
        f"{LABEL_PREFIX}.sm": ",".join(a.sm for a in archs),
        f"{LABEL_PREFIX}.cuda": compat.cuda_minor(request.cuda),
        f"{LABEL_PREFIX}.build-base": build_args.get("BUILD_BASE_IMAGE") or declared.get("BUILD_BASE_IMAGE") or "",
        f"{LABEL_PREFIX}.runtime-base": build_args.get("FINAL_BASE_IMAGE") or declared.get("FINAL_BASE_IMAGE") or "",
        f"{LABEL_PREFIX}.recipe": recipe,
        **({f"{LABEL_PREFIX}.torch": _torch_label(request.recipe)} if request.recipe is not None and recipe == "forge"
           else {}),
        f"{LABEL_PREFIX}.mirror": request.mirror,
        **({f"{LABEL_PREFIX}.jit": plan_jit_toolchain(request, archs).label} if recipe == "forge" else {}),
        f"{LABEL_PREFIX}.user": _runtime_user(recipe, target_stage, declared),
        f"{LABEL_PREFIX}.version": forge_version,
    }

    export_wheel = request.target == "wheel"
    image = (
        ""
        if (export_wheel and recipe == "forge")
        else (
            request.tag
            or default_tag(identity, request.cuda, archs, "build" if export_wheel else request.target)
            + ("-nonroot" if request.non_root else "")
        )
    )
    dist_dir = Path(request.dist_dir).expanduser().resolve()
    from vllm_forge.audit.audit import STAGING_PREFIX

    export_dir = (dist_dir / f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-bake-{uuid.uuid4().hex[:8]}"
                  if export_wheel else None)
    argv = list(client.build_argv)
    # A Dockerfile inside the checkout is read from the staged copy (its .dockerignore sits there too).
    staged_dockerfile = (context / dockerfile.relative_to(src)
                         if recipe != "forge" and dockerfile.is_relative_to(src) else dockerfile)
    argv += ["--progress=plain", "-f", str(staged_dockerfile), "--target", target_stage]
    if client.mode == "buildx":
        argv += remote_build.buildx_build_args(request.builder, request.registry_cache)
    if request.platform:
        argv += ["--platform", request.platform]
    if network_host:
        argv += ["--network", "host"]
    if request.no_cache:
        argv.append("--no-cache")
    for source in request.cache_from:
        argv += ["--cache-from", source]
    for dest in request.cache_to:
        argv += ["--cache-to", dest]
    for name, value in build_args.items():
        argv += ["--build-arg", f"{name}={value}"]
    for secret_id, path in secrets.items():
        argv += ["--secret", f"id={secret_id},src={path}"]
    if image:
        for name, value in labels.items():
            argv += ["--label", f"{name}={value}"]
        argv += ["-t", image]
    if export_wheel and recipe == "forge":
        argv += ["--output", f"type=local,dest={export_dir}"]
    elif client.mode == "buildx":
        argv.append("--push" if request.push else "--load")
    argv.append(str(context))
    commands = [Command(argv, env=client.build_env, why=f"build target {target_stage} ({recipe} recipe)")]
    if request.push and client.mode != "buildx":
        commands.append(Command([client.path, "push", image], why="push (this client has no buildx --push)"))
    cleanup: list[list[str]] = []
    if export_wheel and recipe != "forge":
        box = f"vllm-forge-wheel-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        commands += [
            Command([client.path, "create", "--name", box, image], why="copy the wheel out of vLLM's build stage"),
            Command([client.path, "cp", f"{box}:{UPSTREAM_DIST_DIR}/.", str(export_dir)]),
            Command([client.path, "rm", box]),
        ]
        cleanup.append([client.path, "rm", "-f", box])
    notes.insert(
        0,
        f"recipe {recipe}: {dockerfile} (target {target_stage}); "
        f"build base {build_args.get('BUILD_BASE_IMAGE', '(its default)')}, "
        f"runtime base {build_args.get('FINAL_BASE_IMAGE', '(its default)')}",
    )
    return BakePlan(
        request,
        client,
        recipe,
        dockerfile,
        context,
        target_stage,
        image,
        build_args,
        secrets,
        labels,
        commands,
        stage,
        secret_values,
        notes,
        export_dir,
        cleanup,
        tree,
        identity,
    )


# --- staging the build context ----------------------------------------------------------------------


def _real_dir(path: Path) -> Path:
    from vllm_forge.core.nofollow import real_dir

    return real_dir(path)


def _remove(path: Path) -> None:
    from vllm_forge.core.nofollow import remove

    remove(path)


def _copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` without ever writing through what is at ``target``: the copy goes
    to a new file next to it, which then replaces (a rename: never followed) whatever was there."""
    from vllm_forge.core.nofollow import copy_file

    copy_file(source, target)


# What docker/Dockerfile runs (`python3 -m`) in the build stage up to the compile: these modules and what they
# import are staged (forge/vllm_forge/, the image's PYTHONPATH), so a change elsewhere in vllm-forge does not
# invalidate the compile layer.
BUILD_STAGE_MODULES = ("vllm_forge.source.checkout", "vllm_forge.build.build_wheel", "vllm_forge.build.wheel_size",
                       "vllm_forge.audit.audit")
BUILD_STAGE_DATA = ("build/build_profiles",)  # what they read besides modules (build_estimate's recorded builds)
# Run after the compile (the runtime stage's torch pins) and in the runtime stage (the JIT check): staged apart
# (forge/late/vllm_forge/) and bind-mounted where they run, so a change to them reruns only those steps.
LATE_MODULES = ("vllm_forge.image.runtime_requirements", "vllm_forge.gpu.doctor_inside")


def staged_modules(entries: Iterable[str] = BUILD_STAGE_MODULES) -> set[str]:
    """The ``vllm_forge`` modules ``entries`` need (they and what they import, also lazily), with their packages."""
    return module_closure(entries)


def _only(modules: Iterable[str], data: Iterable[str] = ()) -> Callable[[Path, bool], bool]:
    """A ``sync_tree`` skip over vllm_forge/ that keeps the files of ``modules``, the packages they sit in, and
    the directories ``data`` (paths under vllm_forge/) whole."""
    files = {module_path(name).relative_to(PACKAGE_DIR) for name in modules}
    dirs = {parent for path in files for parent in path.parents}
    kept = tuple(Path(d) for d in data)

    def skip(rel: Path, is_dir: bool) -> bool:
        if any(rel == d or d in rel.parents for d in kept):
            return is_build_output(rel, is_dir)
        if any(rel in d.parents for d in kept):
            return False  # a package on the way to a data directory
        return rel not in (dirs if is_dir else files)

    return skip


def cached_git_deps(request: BakeRequest, tree: VllmTree | None = None) -> list:
    """The checkout's git dependencies that `fetch-deps` has cached (the build then needs no network)."""
    if not request.deps_cache:
        return []
    from vllm_forge.deps.fetch_deps import is_cached
    from vllm_forge.source.vllm_tree import inspect_tree

    tree = tree or inspect_tree(Path(request.src).expanduser())
    return [dep for dep in tree.git_deps if is_cached(request.deps_cache, dep)]


def stage_checkout(src: Path, dest: Path, git_mirror: Path, *, left_out: list[str] | None = None) -> int:
    """Copy a checkout to ``dest`` with its git metadata made credential-free: kept incrementally in
    ``git_mirror`` (outside any context) and linked in as ``dest/.git``. What the copy leaves out besides
    build outputs (scripts/context_filter.py: files that hold logins, the checkout's .dockerignore) is
    added to ``left_out`` as one line."""
    from vllm_forge.image.context_filter import ContextFilter
    from vllm_forge.source import context_git

    keep_out = ContextFilter(Path(src))
    copied = sync_tree(src, dest, skip=keep_out)
    copied += context_git.sanitize_git_dir(src, git_mirror)
    if git_mirror.is_dir():
        context_git.link_tree(git_mirror, dest / ".git")
    if left_out is not None and keep_out.summary():
        left_out.append(keep_out.summary())
    return copied


def stage_git_deps(plan: BakePlan, dest: Path, *, left_out: list[str] | None = None) -> int:
    """Copy the cached dependencies (and their markers) to the context's deps/, bind-mounted into the
    wheel build as a fetch-deps cache; an empty deps/ when there are none. A dependency's clone and
    marker go in without credentials (a --github-proxy or --url-map URL may carry them)."""
    from vllm_forge.core.nofollow import real_dirs, write_file
    from vllm_forge.deps.fetch_deps import dep_dir
    from vllm_forge.source.context_git import public_url

    _real_dir(dest)
    copied = 0
    wanted = set()
    for dep in cached_git_deps(plan.request, plan.tree):
        source = dep_dir(plan.request.deps_cache, dep)
        wanted |= {source.name, source.name + ".forge-dep.json"}
        mirror = real_dirs(Path(plan.request.context_dir), "git/deps") / source.name
        copied += stage_checkout(source, dest / source.name, mirror, left_out=left_out)
        marker = json.loads(source.with_name(source.name + ".forge-dep.json").read_text())
        # `repository` is the checkout's own CMake string (in the context anyway; is_cached compares it).
        marker["fetched_from"] = public_url(str(marker.get("fetched_from", "")))
        text = json.dumps(marker, indent=2) + "\n"
        target = dest / (source.name + ".forge-dep.json")
        if target.is_symlink() or not target.is_file() or target.read_text() != text:
            write_file(target, text)  # never written through a planted link
    for stale in dest.iterdir():
        if stale.name not in wanted:
            _remove(stale)
    return copied


def stage_context(plan: BakePlan, *, left_out: list[str] | None = None) -> int:
    """Lay out the build context: for the forge recipe vllm/ (the checkout) and forge/ (the vllm_forge
    modules the build runs up to the compile, and in late/ those it runs after it); for the others a copy of
    the checkout. No credentials either way; what a copy of a checkout leaves out besides build outputs is
    added to ``left_out`` (one line per checkout)."""
    from vllm_forge.core.nofollow import real_dirs

    context = plan.context
    context.parent.mkdir(parents=True, exist_ok=True)
    _real_dir(context)  # never a planted symlink
    src = Path(plan.request.src).expanduser().resolve()
    git_mirror = real_dirs(Path(plan.request.context_dir), "git") / "vllm"  # kept outside the context, made real
    if plan.recipe != "forge":
        return stage_checkout(src, context, git_mirror, left_out=left_out)
    for part in (context / "forge", context / "forge" / "docker"):
        _real_dir(part)
    copied = stage_checkout(src, context / "vllm", git_mirror, left_out=left_out)
    copied += sync_tree(PACKAGE_DIR, context / "forge" / "vllm_forge", skip=_only(staged_modules(), BUILD_STAGE_DATA))
    copied += sync_tree(PACKAGE_DIR, _real_dir(context / "forge" / "late") / "vllm_forge",
                        skip=_only(staged_modules(LATE_MODULES)))
    copied += stage_git_deps(plan, context / "deps", left_out=left_out)
    for helper in ("forge-env.sh", "forge-apt.sh"):
        _copy_file(REPO_ROOT / "docker" / helper, _real_dir(context / "forge" / "docker") / helper)
    return copied


# --- running it ------------------------------------------------------------------------------------------


@dataclass
class BakeResult:
    image: str
    image_id: str
    seconds: float
    wheels: list[Path]
    cached_steps: int
    total_steps: int
    executed: list[str] = field(default_factory=list)  # titles of the steps that ran (not cached)
    log_path: Path | None = None
    farm: list[str] = field(default_factory=list)  # what the build stage said about the farm and its compiles


def run_bake(
    plan: BakePlan, *, on_line: Callable[[str], None] | None = None, log_path: Path | None = None
) -> BakeResult:
    # Bakes from one vllm-forge share its staged context and secrets dir (build/bake): one at a time.
    # A second waits here instead of re-staging the context under the first one's running build.
    with _context_lock(Path(plan.request.context_dir), on_line):
        return _run_bake(plan, on_line=on_line, log_path=log_path)


@contextlib.contextmanager
def _context_lock(context_dir: Path, on_line: Callable[[str], None] | None = None):
    import fcntl

    from vllm_forge.core.nofollow import open_nofollow, remove

    context_dir.mkdir(parents=True, exist_ok=True)
    lock = context_dir / ".bake.lock"
    if lock.is_symlink():  # planted: truncating "the lock" would truncate its target
        remove(lock)
    with os.fdopen(open_nofollow(lock, os.O_RDWR | os.O_CREAT), "r+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            if on_line:
                on_line(f"waiting for another bake (pid {handle.read().strip() or '?'}) that uses {context_dir}")
            fcntl.flock(handle, fcntl.LOCK_EX)  # Ctrl-C while waiting still interrupts
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield


def _run_bake(
    plan: BakePlan, *, on_line: Callable[[str], None] | None = None, log_path: Path | None = None
) -> BakeResult:
    started = time.monotonic()
    if plan.stage_context:
        left_out: list[str] = []
        stage_context(plan, left_out=left_out)
        for line in left_out:
            if on_line:
                on_line(line)
    written: list[Path] = []
    steps: dict[str, str] = {}  # BuildKit step number -> its title
    cached: set[str] = set()
    jit_failure: list[str] = []
    farm_lines: list[str] = []

    def watch(line: str) -> None:
        failed = re.search(JIT_FAIL_LINE, line)
        if failed:
            jit_failure.append(failed.group(1).strip())
        said = re.search(r"(?<!# )(distributed compiles o(?:n|ff).*|compiles: \d+ remote.*)$", line)
        if said:  # build_wheel.py in the build stage: the farm's state, then where the compiles ran
            farm_lines.append(said.group(1).strip())
        match = re.match(r"^#(\d+) (CACHED|\[(?!internal\])(?!.*\] FROM ).*)", line)
        if match:
            if match.group(2) == "CACHED":
                cached.add(match.group(1))
            else:
                steps.setdefault(match.group(1), match.group(2))
        if on_line:
            on_line(line)

    try:
        from vllm_forge.core.nofollow import real_dir, write_file

        for secret_id, value in plan.secret_values.items():
            path = Path(plan.secrets[secret_id])
            path.parent.parent.mkdir(parents=True, exist_ok=True)
            real_dir(path.parent)
            write_file(path, value, mode=0o600)  # made next to it and renamed: never through a planted link
            written.append(path)
        if log_path:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        if plan.export_dir:
            plan.export_dir.mkdir(parents=True)
        for command in plan.commands:
            try:
                run_command(command, on_line=watch, log_path=log_path)
            except ForgeError:
                if jit_failure:
                    raise ForgeError(f"the runtime image cannot JIT-compile kernels: {jit_failure[-1]}",
                                     JIT_FIX) from None
                raise
        exported = _publish_export(plan.export_dir) if plan.export_dir else []
    finally:
        for path in written:
            path.unlink(missing_ok=True)
        for argv in plan.cleanup:
            subprocess.run(argv, capture_output=True)
        if plan.export_dir:
            shutil.rmtree(plan.export_dir, ignore_errors=True)
    image_id = ""
    if plan.image:
        proc = subprocess.run(
            [plan.client.path, "image", "inspect", "--format", "{{.Id}}", plan.image], capture_output=True, text=True
        )
        image_id = proc.stdout.strip()
    wheels = [path for path in exported if path.suffix == ".whl"]
    return BakeResult(plan.image, image_id, time.monotonic() - started, wheels, len(cached & set(steps)), len(steps),
        [title for number, title in steps.items() if number not in cached], farm=farm_lines,
    )


def _publish_export(export_dir: Path) -> list[Path]:
    """Move what the export wrote into dist/ (its parent), one rename per file; returns the new paths."""
    published = []
    for path in sorted(export_dir.iterdir()):
        if path.is_file():
            final = export_dir.parent / path.name
            os.replace(path, final)
            published.append(final)
    return published


# --- looking at images ---------------------------------------------------------------------------------------


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


# --- JIT readiness of a baked image (`invoke inspect`, `invoke doctor --image`) -------------------------------


def image_jit_facts(docker: str, image: str) -> dict:
    """vllm_forge/gpu/doctor_inside.py's JIT facts, collected inside ``image`` (no GPU, no network)."""
    check_image_ref(image, "the image")
    script = module_path("vllm_forge.gpu.doctor_inside").read_text()  # run as a file of its own
    try:
        proc = subprocess.run([docker, "run", "--rm", "-i", "--network", "none", "--entrypoint", "python3", image, "-",
                               "--jit"], input=script, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as err:
        return {"error": str(err)}
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": said[-1] if said else f"exit {proc.returncode}"}
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {"error": f"no JSON from the in-image probe: {proc.stdout[-200:]!r}"}


def jit_summary(facts: dict, targets: Iterable[str] = ()) -> tuple[bool, str]:
    """(ready, one line): nvcc version, the SM targets it can compile (those asked for first), FlashInfer."""
    if facts.get("error"):
        return False, f"JIT readiness unknown: {facts['error']}"
    flashinfer = facts.get("flashinfer") or {}
    packages = flashinfer.get("packages") or {}
    fi = ("FlashInfer " + ", ".join(f"{k} {v}" for k, v in sorted(packages.items()))
          + f"; {flashinfer.get('cubins', 0)} precompiled kernels (cubins)") if packages else "FlashInfer not installed"
    if not facts.get("nvcc"):
        return False, f"no JIT toolchain (no nvcc); {fi}"
    listed = facts.get("archs") or []
    wanted = [sm for sm in targets if sm]
    missing = [sm for sm in wanted if sm.rstrip("af") not in listed]
    host = facts.get("host_compiler") or "no host C++ compiler"
    ready = not missing and bool(facts.get("host_compiler"))
    archs = " ".join(listed) or "?"
    return ready, (f"nvcc {facts.get('nvcc_version') or '?'} ({facts['nvcc']}), targets {archs}"
                   + (f"; cannot target {', '.join(missing)}" if missing else "") + f"; {host}; {fi}")


# --- where the size goes -------------------------------------------------------------------------------------

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
class SizeBreakdown:
    image: str
    size: int
    base: str
    base_size: int | None
    parts: dict[str, int]  # SIZE_PARTS -> bytes over the base
    layers: list[LayerInfo]  # largest first
    dists: dict[str, int] = field(default_factory=dict)  # name==version -> bytes, new over the base
    budget_gb: float = 0.0

    @property
    def over_base(self) -> int | None:
        return None if self.base_size is None else self.size - self.base_size

    @property
    def ok(self) -> bool:
        return not self.budget_gb or self.size <= self.budget_gb * GB

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
    return SizeBreakdown(image, report.size, report.base, report.base_size, parts, report.layers, new, budget_gb)


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

    parser = argparse.ArgumentParser(description="vllm-forge image helpers (plan a bake, inspect, size).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_plan = sub.add_parser("plan", help="print the docker commands a bake would run")
    p_plan.add_argument("src", type=Path)
    p_plan.add_argument("--arch", default="12.0")
    p_plan.add_argument("--cuda", default="12.8")
    p_plan.add_argument("--target", default="runtime", choices=TARGETS)
    p_plan.add_argument("--dockerfile", default="forge")
    p_plan.add_argument("--base-image", default="")
    p_plan.add_argument("--runtime-image", default="")
    p_plan.add_argument("--docker", default=None)
    p_inspect = sub.add_parser("inspect", help="show an image's labels")
    p_inspect.add_argument("image")
    p_inspect.add_argument("--docker", default="docker")
    p_size = sub.add_parser("check-size", help="image size, size over its base, largest layers")
    p_size.add_argument("image")
    p_size.add_argument("--budget-gb", type=float, default=0)
    p_size.add_argument("--docker", default="docker")
    args = parser.parse_args(argv)
    if args.cmd == "plan":
        plan = plan_bake(
            BakeRequest(
                src=args.src,
                arch=args.arch,
                cuda=args.cuda,
                target=args.target,
                dockerfile=args.dockerfile,
                base_image=args.base_image,
                runtime_image=args.runtime_image,
            ),
            find_docker(args.docker),
        )
        print("\n".join(plan.lines()))
        return 0
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
