"""BuildConfig: every setting of a build, declared once (``SETTINGS``), resolved through invoke's config layers.

Order, lowest first: built-in defaults (``DEFAULTS``, installed as the collection's config) <
system/user invoke files < ``invoke.yaml`` next to tasks.py < ``INVOKE_FORGE_*`` environment
variables < a ``-f`` runtime file < command-line flags. ``resolve_config`` also records which layer
each value came from, so ``invoke plan`` can say so. What the layers hold reaches it as ``ConfigLayers``
(vllm_forge/cli/_invoke.py reads them from invoke's Config).

Adding a setting is one ``Option`` in ``SETTINGS`` (its flag, the tasks that take it, its help), plus the code
that uses it: ``DEFAULTS``, ``BuildConfig``, the task signatures and help, ``plan``'s table and the README's
configuration table are made from the declaration.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import Any

from vllm_forge.core.errors import ForgeError
from vllm_forge.core.options import Option

DEFAULT_VLLM_REPO = "https://github.com/vllm-project/vllm.git"
# vllm-forge's one cache on this machine (vllm_forge/core/forge_cache.py lists and removes it).
CACHE_ENV = "VLLM_FORGE_CACHE"
DEFAULT_CACHE = "~/.cache/vllm-forge"


def default_cache_root() -> str:
    """The cache directory as configured, unexpanded: ``$VLLM_FORGE_CACHE``, else ``~/.cache/vllm-forge``."""
    return os.environ.get(CACHE_ENV) or DEFAULT_CACHE


# The tasks that take a setting as a flag.
CHECKOUT_TASKS = ("clone", "use-existing-torch", "build-wheel", "wheel", "plan", "bake", "image", "fetch-deps",
                  "inspect-tree")
CLONE_TASKS = ("clone", "wheel", "plan", "bake", "image")
BUILD_TASKS = ("build-wheel", "wheel", "plan", "bake", "image")  # what compiles vLLM (and plan, which shows it)
LOCAL_BUILD_TASKS = ("build-wheel", "wheel", "plan")
BAKE_TASKS = ("bake", "image")
FARM_TASKS = ("farm-scheduler", "farm-server", "farm-stop", "farm-status")

# Every setting, in the order `plan` shows them. A setting with ``tasks`` is also a flag of those tasks.
SETTINGS: tuple[Option, ...] = (
    Option("vllm_repo", "vLLM git repository URL to clone (https, ssh, file:// or a local path)",
           DEFAULT_VLLM_REPO, value="URL", flag="repo", tasks=CLONE_TASKS),
    Option("vllm_ref", "tag, branch or commit to check out, e.g. v0.11.0", "main", value="REF", flag="ref",
           tasks=CLONE_TASKS),
    Option("vllm_src", "an existing vLLM checkout, used as is instead of the clone in checkout_dir", "",
           value="DIR", tasks=CHECKOUT_TASKS),
    Option("checkout_dir", "where `clone` keeps its checkout", "build/vllm", value="DIR", tasks=CHECKOUT_TASKS),
    Option("arch", "target GPUs: 12.0, sm_120, 9.0a, 12.0+PTX, 10.0f, compute_80, GPU names (rtx5090, "
           "'RTX 5090 D', h100, b200) or auto; several separated by ; , or spaces", "12.0", value="ARCHS",
           tasks=(*BUILD_TASKS, "demo")),
    Option("cuda", "CUDA release, e.g. 13.0: a local build's is the nvcc found (an explicit value must match it); "
           "a bake's is this, else what the checkout's Dockerfile pins, else 12.8", "", value="VERSION",
           tasks=BUILD_TASKS),
    Option("base", "bake's build base: auto (what the checkout pins), cuda (NVIDIA's CUDA -devel image + the "
           "pinned torch from the PyTorch index) or ngc (NGC's PyTorch image and its own torch)", "auto",
           value="BASE", tasks=("plan", *BAKE_TASKS)),
    Option("base_image", "build base image, used as is with its own torch (empty: the one base picks for the "
           "image's CUDA)", "", value="IMAGE", tasks=BAKE_TASKS),
    Option("runtime_image", "serving base image (empty: the CUDA runtime image for the image's CUDA)", "",
           value="IMAGE", tasks=BAKE_TASKS),
    Option("max_jobs", "parallel compile jobs (0: from cores and available memory, at mem_per_job_gb GiB a job)",
           0, int, value="JOBS", tasks=BUILD_TASKS),
    Option("nvcc_threads", "nvcc --threads per job (0: from the arch count and memory)", 0, int, value="THREADS",
           tasks=BUILD_TASKS),
    Option("mem_per_job_gb", "GiB one compile job may use, for the automatic max_jobs (vLLM's CUTLASS and "
           "flash-attention units need 3-6)", 4.0, float, value="GIB", tasks=LOCAL_BUILD_TASKS),
    Option("build_type", "CMAKE_BUILD_TYPE: Release, RelWithDebInfo, Debug or MinSizeRel", "Release",
           value="TYPE", tasks=BUILD_TASKS),
    Option("cmake_args", "extra CMake arguments for vLLM's build, e.g. '-DENABLE_MACHETE=OFF' (setup.py reads "
           "CMAKE_ARGS; a bake passes the Dockerfile's ARG CMAKE_ARGS)", "", value="ARGS", tasks=BUILD_TASKS),
    Option("compile_cache", "auto (whichever is installed), none, ccache or sccache", "auto", value="CACHE",
           tasks=BUILD_TASKS),
    Option("cache_dir", "vllm-forge's cache: compile caches, the dependencies fetch-deps brings "
           "(<cache_dir>/deps/<name>@<rev>), the demo's checkout", default_cache_root(), value="DIR",
           tasks=("fetch-deps",), shown_default="`$VLLM_FORGE_CACHE`, else `~/.cache/vllm-forge`"),
    # A team's shared compile cache (docs/build-speed.md); credentials come from the environment.
    Option("sccache_redis", "a shared sccache on Redis, redis://host:6379 (no password here: export "
           "SCCACHE_REDIS_PASSWORD)", ""),
    Option("sccache_bucket", "a shared sccache bucket: S3 name or s3://name/prefix, GCS gs://name/prefix", ""),
    Option("sccache_region", "the S3 bucket's region", ""),
    Option("sccache_endpoint", "an S3-compatible endpoint URL (MinIO, R2, Ceph)", ""),
    Option("ccache_remote", "ccache remote storage: redis://host:6379 or http://host/cache", ""),
    # Distributed compiles through a sccache-dist farm (docs/farm.md); tokens are read, never configured.
    Option("dist_scheduler", "a sccache-dist farm's scheduler URL, e.g. http://farm.lan:10600: the compiles run on "
           "the farm ('' turns a configured one off; docs/farm.md)", "", value="URL", tasks=BUILD_TASKS),
    Option("dist_token_file", "file whose first line is the farm's client token, mode 0600 (empty: the variable "
           "dist_token_env names)", "", value="FILE", tasks=BUILD_TASKS),
    Option("dist_token_env", "the environment variable that holds the farm's client token", "VLLM_FORGE_DIST_TOKEN"),
    Option("dist_toolchains", "toolchain archives made beforehand, COMPILER=ARCHIVE[=PATH_IN_ARCHIVE] (a YAML list; "
           "empty: sccache packages each compiler on first use)", ""),
    Option("farm_dir", "the farm tasks' daemon configs, logs, pid records and toolchain caches", "build/farm",
           value="DIR", tasks=FARM_TASKS),
    Option("farm_server_token_file", "file whose first line is the farm's server token, between the scheduler and "
           "its build servers (empty: the variable farm_server_token_env names)", "", value="FILE",
           flag="server_token_file", tasks=("farm-scheduler", "farm-server")),
    Option("farm_server_token_env", "the environment variable that holds the farm's server token",
           "VLLM_FORGE_FARM_TOKEN"),
    # BuildKit for `bake`: a named buildx builder (remote or multi-node) and a registry layer cache.
    Option("builder", "the buildx builder bake uses (empty: the default builder); refused in one line by a Docker "
           "without buildx", "", value="NAME", tasks=BAKE_TASKS),
    Option("registry_cache", "image ref of a registry layer cache bake reads and writes (type=registry), e.g. "
           "ghcr.io/org/vllm-cache", ""),
    Option("dist_dir", "where wheels are published", "dist", value="DIR",
           tasks=("build-wheel", "wheel", "check-size", "plan", *BAKE_TASKS, "demo")),
    Option("wheel_limit_mb", "wheel size limit in MB (0: the checkout's own limit, 400 when unknown)", 0, int),
    Option("mirror", "mirror profile: global, cn, or one defined in invoke.yaml under forge.mirrors", "global",
           value="PROFILE", tasks=("clone", "build-wheel", "wheel", "plan", *BAKE_TASKS, "fetch-deps")),
    Option("patches", "patch files build-wheel applies after the clone (a YAML list, or paths separated by commas; "
           "--patch adds more)", ""),
    Option("standin", "bake on the TEST-ONLY stand-in bases (built locally when missing; CUDA 13.0): for iterating "
           "on the Dockerfile without NGC, not for serving real models", False, bool, tasks=BAKE_TASKS),
    Option("non_root", "the runtime image runs vLLM as an unprivileged user, uid 2000 (docs/image.md)", False, bool,
           tasks=BAKE_TASKS),
)

DEFAULTS: dict[str, Any] = {option.name: option.default for option in SETTINGS}

BUILD_TYPES = ("Release", "RelWithDebInfo", "Debug", "MinSizeRel")
COMPILE_CACHES = ("auto", "none", "ccache", "sccache")
BASES = ("auto", "cuda", "ngc")  # what a bake builds on (image/recipe.py chooses from the checkout's pins)


def _as_dict(self) -> dict[str, Any]:
    return asdict(self)


def _source_dir(self) -> str:
    """The checkout builds read: ``vllm_src`` when given, else where ``clone`` puts it."""
    return os.path.expanduser(self.vllm_src or self.checkout_dir)


# One field per setting, typed as declared (comma-separated lists, such as patches, are strings).
BuildConfig = make_dataclass("BuildConfig", [(option.name, option.kind) for option in SETTINGS],
                             namespace={"as_dict": _as_dict, "source_dir": property(_source_dir),
                                        "__doc__": "Every setting of a build, resolved (``SETTINGS``)."})
BuildConfig.__module__ = __name__


@dataclass(frozen=True)
class ConfigLayers:
    """What invoke's configuration layers say about the ``forge:`` section: the values of all layers merged,
    for each key the layer that set it (highest first, as ``plan`` names it), and the keys invoke.yaml sets.
    ``get`` answers like invoke's Config, so code that reads ``forge.mirrors`` or ``forge.serve`` takes either."""

    forge: Mapping[str, Any] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)
    project_keys: frozenset[str] = frozenset()

    def get(self, name: str, default: Any = None) -> Any:
        return self.forge if name == "forge" else default


@dataclass
class ResolvedConfig:
    config: BuildConfig
    sources: dict[str, str] = field(default_factory=dict)  # field name -> layer it came from

    def source(self, name: str) -> str:
        return self.sources.get(name, "default")

    def is_default(self, name: str) -> bool:
        return self.source(name) == "default"


def resolve_config(layers: ConfigLayers | None = None, flags: Mapping[str, Any] | None = None) -> ResolvedConfig:
    """Merge the layers into one checked BuildConfig.

    ``layers``: what invoke's layers hold (None: defaults only); ``flags`` are the task's command-line values,
    where None means "not given".
    """
    values = dict(DEFAULTS)
    sources = {name: "default" for name in DEFAULTS}
    if layers is not None:
        merged = layers.forge
        for name in DEFAULTS:
            if name in merged and merged[name] is not None:  # None: invoke's placeholder for a number
                values[name] = merged[name]
            if name in layers.sources:
                sources[name] = layers.sources[name]
        unknown = sorted(layers.project_keys - set(DEFAULTS) - {"mirrors", "serve"})
        if unknown:
            raise ForgeError(
                f"invoke.yaml sets unknown forge key(s): {', '.join(unknown)}",
                f"remove them or use one of: {', '.join(sorted(DEFAULTS))}",
            )
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in DEFAULTS:
            raise KeyError(name)  # a programming error in a task, not a user error
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
