"""BuildConfig: every knob of a build, resolved through invoke's own config layers.

Order, lowest first: built-in defaults (``DEFAULTS``, installed as the collection's config) <
system/user invoke files < ``invoke.yaml`` next to tasks.py < ``INVOKE_FORGE_*`` environment
variables < a ``-f`` runtime file < command-line flags. ``resolve_config`` also records which layer
each value came from, so ``invoke plan`` can say so.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vllm_forge.core.errors import ForgeError

DEFAULT_VLLM_REPO = "https://github.com/vllm-project/vllm.git"
# vllm-forge's one cache on this machine (vllm_forge/core/forge_cache.py lists and removes it).
CACHE_ENV = "VLLM_FORGE_CACHE"
DEFAULT_CACHE = "~/.cache/vllm-forge"


def default_cache_root() -> str:
    """The cache directory as configured, unexpanded: ``$VLLM_FORGE_CACHE``, else ``~/.cache/vllm-forge``."""
    return os.environ.get(CACHE_ENV) or DEFAULT_CACHE

DEFAULTS: dict[str, Any] = {
    "vllm_repo": DEFAULT_VLLM_REPO,
    "vllm_ref": "main",
    "vllm_src": "",  # an existing checkout to use as is; empty: `clone` into checkout_dir
    "checkout_dir": "build/vllm",
    "arch": "12.0",
    "cuda": "",  # empty: a local build's is the nvcc found; a bake's is what the checkout pins (image/recipe.py)
    "base": "auto",  # bake's build base: auto (what the checkout pins), cuda (CUDA -devel + pinned torch), ngc
    "base_image": "",  # empty: the base `base` picks for the image's CUDA (vllm_forge/image/recipe.py)
    "runtime_image": "",  # empty: the CUDA runtime image for the image's CUDA
    "max_jobs": 0,  # 0: from cores and free memory
    "nvcc_threads": 0,  # 0: from the arch count and memory
    "mem_per_job_gb": 4.0,  # what one compile job may take; vLLM's CUTLASS/FA units need 3-6 GiB
    "build_type": "Release",
    "compile_cache": "auto",  # auto | none | ccache | sccache
    "cache_dir": default_cache_root(),  # $VLLM_FORGE_CACHE, else ~/.cache/vllm-forge
    # A team's shared compile cache (docs/build-speed.md); credentials come from the environment.
    "sccache_redis": "",  # redis://host:6379 (no password here: export SCCACHE_REDIS_PASSWORD)
    "sccache_bucket": "",  # S3: name or s3://name/prefix; GCS: gs://name/prefix
    "sccache_region": "",  # S3 region
    "sccache_endpoint": "",  # S3-compatible endpoint URL (MinIO, R2, Ceph)
    "ccache_remote": "",  # ccache remote storage URL: redis://host:6379 or http://host/cache
    # Distributed compiles through a sccache-dist farm (docs/farm.md); tokens are read, never configured.
    "dist_scheduler": "",  # scheduler URL, http://host:10600; empty: compile on this machine only
    "dist_token_file": "",  # file whose first line is the client token (mode 0600); empty: dist_token_env
    "dist_token_env": "VLLM_FORGE_DIST_TOKEN",  # the environment variable holding the client token (its name)
    "dist_toolchains": "",  # archives made beforehand: COMPILER=ARCHIVE[=PATH_IN_ARCHIVE] (a YAML list); empty:
    #                         sccache packages each compiler on first use
    "farm_dir": "build/farm",  # farm tasks: daemon configs, logs, pid records, toolchain caches (next to tasks.py)
    "farm_server_token_file": "",  # file holding the server token (scheduler <-> build servers); empty: the env
    "farm_server_token_env": "VLLM_FORGE_FARM_TOKEN",  # the environment variable holding the server token
    # BuildKit for `bake`: a named buildx builder (remote or multi-node) and a registry layer cache.
    "builder": "",  # docker buildx builder name; empty: the default builder
    "registry_cache": "",  # image ref for --cache-to/--cache-from type=registry, e.g. ghcr.io/org/vllm-cache
    "dist_dir": "dist",
    "wheel_limit_mb": 0,  # 0: the limit the checkout's vLLM version enforces (400 when unknown)
    "mirror": "global",
    "standin": False,  # bake on the TEST-ONLY stand-in bases (local Dockerfile iteration without NGC)
    "non_root": False,  # bake: the runtime image runs vLLM as uid 2000 (docs/image.md)
    "patches": "",  # patch files for build-wheel: a YAML list, or "a.patch,b.patch" (INVOKE_FORGE_PATCHES)
}

BUILD_TYPES = ("Release", "RelWithDebInfo", "Debug", "MinSizeRel")
COMPILE_CACHES = ("auto", "none", "ccache", "sccache")
BASES = ("auto", "cuda", "ngc")  # what a bake builds on (image/recipe.py chooses from the checkout's pins)

# Layers as invoke stores them, highest precedence first, with the name `plan` shows.
_INVOKE_LAYERS = (
    ("_runtime", "runtime file (-f)"),
    ("_env", "environment (INVOKE_FORGE_*)"),
    ("_project", "invoke.yaml"),
    ("_user", "user invoke file"),
    ("_system", "system invoke file"),
)


@dataclass
class BuildConfig:
    vllm_repo: str
    vllm_ref: str
    vllm_src: str
    checkout_dir: str
    arch: str
    cuda: str
    base: str
    base_image: str
    runtime_image: str
    max_jobs: int
    nvcc_threads: int
    mem_per_job_gb: float
    build_type: str
    compile_cache: str
    cache_dir: str
    sccache_redis: str
    sccache_bucket: str
    sccache_region: str
    sccache_endpoint: str
    ccache_remote: str
    dist_scheduler: str
    dist_token_file: str
    dist_token_env: str
    dist_toolchains: str  # comma-separated (a YAML list in invoke.yaml is joined): see vllm_forge/build/farm.py
    farm_dir: str
    farm_server_token_file: str
    farm_server_token_env: str
    builder: str
    registry_cache: str
    dist_dir: str
    wheel_limit_mb: int
    mirror: str
    patches: str  # comma-separated (a YAML list in invoke.yaml is joined): see vllm_forge/source/patches.py
    standin: bool
    non_root: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def source_dir(self) -> str:
        """The checkout builds read: ``vllm_src`` when given, else where ``clone`` puts it."""
        return os.path.expanduser(self.vllm_src or self.checkout_dir)


@dataclass
class ResolvedConfig:
    config: BuildConfig
    sources: dict[str, str] = field(default_factory=dict)  # field name -> layer it came from

    def source(self, name: str) -> str:
        return self.sources.get(name, "default")

    def is_default(self, name: str) -> bool:
        return self.source(name) == "default"


def _layer_values(invoke_config: Any, attr: str) -> Mapping[str, Any]:
    layer = getattr(invoke_config, attr, None) or {}
    forge = layer.get("forge") if isinstance(layer, Mapping) else None
    return forge if isinstance(forge, Mapping) else {}


def resolve_config(invoke_config: Any = None, flags: Mapping[str, Any] | None = None) -> ResolvedConfig:
    """Merge the layers into one checked BuildConfig.

    ``invoke_config`` is a task's ``ctx.config`` (None: defaults only); ``flags`` are the task's
    command-line values, where None means "not given".
    """
    values = dict(DEFAULTS)
    sources = {name: "default" for name in DEFAULTS}
    if invoke_config is not None:
        merged = invoke_config.get("forge", {}) if hasattr(invoke_config, "get") else {}
        for name in DEFAULTS:
            if name in merged and merged[name] is not None:  # None: invoke's placeholder for a number
                values[name] = merged[name]
        for name in DEFAULTS:
            for attr, label in _INVOKE_LAYERS:
                if name in _layer_values(invoke_config, attr):
                    sources[name] = label
                    break
        unknown = sorted(set(_layer_values(invoke_config, "_project")) - set(DEFAULTS) - {"mirrors", "serve"})
        if unknown:
            raise ForgeError(
                f"invoke.yaml sets unknown forge key(s): {', '.join(unknown)}",
                f"remove them or use one of: {', '.join(sorted(DEFAULTS))}",
            )
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in DEFAULTS:
            raise KeyError(name)  # a programming error in tasks.py, not a user error
        values[name] = value
        sources[name] = "command line"
    config = BuildConfig(**{f.name: _coerce(f.name, values[f.name], sources[f.name]) for f in fields(BuildConfig)})
    validate_config(config, sources)
    return ResolvedConfig(config, sources)


def invoke_defaults() -> dict[str, Any]:
    """DEFAULTS as the collection's config: numbers as None, so that invoke hands an INVOKE_FORGE_*
    value over as the string it is and ``_coerce`` (not invoke's bare int()) judges it."""
    return {name: None if isinstance(value, (int, float)) and not isinstance(value, bool) else value
            for name, value in DEFAULTS.items()}


# What 0 means for the numeric settings where it is not a value but "decide for me".
ZERO_MEANS = {"max_jobs": "automatic", "nvcc_threads": "automatic", "wheel_limit_mb": "the checkout's own limit"}


def setting_name(name: str, source: str) -> str:
    """A setting as the user wrote it where it came from: --max-jobs, INVOKE_FORGE_MAX_JOBS, max_jobs in
    invoke.yaml."""
    if source == "command line":
        return "--" + name.replace("_", "-")
    if source.startswith("environment"):
        return f"INVOKE_FORGE_{name.upper()}"
    if source == "invoke.yaml":
        return f"{name} in invoke.yaml"
    if source.startswith("runtime file"):
        return f"{name} in the -f file"
    return name


def _coerce(name: str, value: Any, source: str = "default") -> Any:
    default = DEFAULTS[name]
    try:
        if isinstance(default, bool):
            return bool(value)
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        what = "a whole number" if isinstance(default, int) else "a number"
        shown = setting_name(name, source)
        hint = f" (0 means {ZERO_MEANS[name]})" if name in ZERO_MEANS else f", e.g. {default}"
        fix = (f"pass {shown} {what}{hint}" if source == "command line"
               else f"set {shown} to {what}{hint}, or unset it")
        raise ForgeError(f"{shown} must be {what}, got {value!r}", fix) from None
    if isinstance(value, (list, tuple)):  # patches: a YAML list
        return ",".join(str(item) for item in value)
    return "" if value is None else str(value)


_REF_FORBIDDEN = re.compile(r"(\.\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|//|^/|/$|\.lock(/|$)|^-|\.$|(^|/)\.)")


def check_git_ref(ref: str) -> None:
    """Refuse refs git itself would refuse (the rules of ``git check-ref-format``)."""
    if not ref or _REF_FORBIDDEN.search(ref) or ref == "@":
        raise ForgeError(
            f"'{ref}' is not a valid git ref",
            "pass a tag (v0.11.0), a branch (main) or a commit hash with --ref",
        )


_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:[\w./~-]+\Z")


def check_repo_url(url: str) -> None:
    if re.match(r"^(https?|ssh|git|file)://[^\s]+\Z", url) or _SCP_LIKE.match(url):
        return
    if url and not re.search(r"\s", url) and (url.startswith(("/", "./", "../", "~"))):
        return  # a local path to a repository
    raise ForgeError(
        f"'{url}' is not a git repository URL",
        "pass --repo as https://host/org/repo.git, git@host:org/repo.git, file:///path or a local path",
    )


def validate_config(config: BuildConfig, sources: Mapping[str, str] | None = None) -> None:
    if config.build_type not in BUILD_TYPES:
        raise ForgeError(
            f"build type '{config.build_type}' is not one CMake knows",
            f"use one of {', '.join(BUILD_TYPES)}",
        )
    if config.base not in BASES:
        raise ForgeError(f"base '{config.base}' is not one of {', '.join(BASES)}",
                         "use auto (what the checkout pins), cuda (NVIDIA's CUDA image + the pinned torch) or ngc")
    if config.compile_cache not in COMPILE_CACHES:
        raise ForgeError(
            f"compile cache '{config.compile_cache}' is not supported",
            f"use one of {', '.join(COMPILE_CACHES)}",
        )
    for name in ("max_jobs", "nvcc_threads", "wheel_limit_mb"):
        if getattr(config, name) < 0:
            shown = setting_name(name, (sources or {}).get(name, "default"))
            raise ForgeError(f"{shown} cannot be negative", f"{'pass' if shown.startswith('--') else 'set'} "
                             f"{shown} {'' if shown.startswith('--') else 'to '}0 ({ZERO_MEANS[name]}) or a "
                             "positive number")
    if config.mem_per_job_gb <= 0:
        raise ForgeError("mem_per_job_gb must be positive", "set it to the GiB one compile job needs, e.g. 4")
    check_repo_url(config.vllm_repo)
    check_git_ref(config.vllm_ref)
    # Late: `invoke --list` imports this module, and loads no other.
    from vllm_forge.core.farm_settings import DistSettings, farm_server_token
    from vllm_forge.core.shared_cache import SharedCache

    SharedCache.from_config(config).check()  # before `plan` shows them: no password in a URL
    DistSettings.from_config(config).check()  # no token in the scheduler URL, token variable names
    farm_server_token(config).check()
