"""The task flags: options that belong to their tasks, declared once each (settings are core/config.py's).

A task flag is its tasks' own (``--dry-run``, ``--json``, serve's ``--port``), or, with ``setting=``, another
spelling of a setting for some tasks (the farm's ``--scheduler`` is ``dist_scheduler``). cli/task.py makes each
task's invoke signature and ``help=`` from these and ``SETTINGS``; a flag of ``kind=list`` is repeatable.
"""

from __future__ import annotations

from vllm_forge.core.config import SETTINGS
from vllm_forge.core.options import REQUIRED, Option, for_task

WHEEL_TASKS = ("build-wheel", "wheel")
BAKE_TASKS = ("bake", "image")
NCCL_TASKS = ("nccl-test", "nccl-diagnose")
DRY_RUN_TASKS = ("clone", "use-existing-torch", *WHEEL_TASKS, "check-size", *BAKE_TASKS)
FARM_START = ("farm-scheduler", "farm-server")

DOCKER_HELP = "docker client (default: $VLLM_FORGE_DOCKER or docker)"
PLOT_NCCL = ("also draw busbw against message size (the link model's expected busbw and the healthy band beside it) "
             "into this .png or .svg")

FLAGS: tuple[Option, ...] = (
    # -- the build and image chains
    Option("dry_run", "print the exact commands and environment, run nothing", False, bool, tasks=DRY_RUN_TASKS),
    Option("dry_run", "print the commands only", False, bool, tasks=("nccl-test",)),
    Option("dry_run", "print the docker run command, start nothing", False, bool, tasks=("serve",)),
    Option("dry_run", "print the config (tokens masked) and the command, start nothing", False, bool,
           tasks=FARM_START),
    Option("force", "stash local changes in the checkout instead of refusing", False, bool,
           tasks=("clone", "wheel", *BAKE_TASKS)),
    Option("no_audit", "do not audit the built wheel's kernels for the requested archs", False, bool,
           tasks=(*WHEEL_TASKS, *BAKE_TASKS)),
    Option("skip_torch", "do not run use-existing-torch before building", False, bool, tasks=("build-wheel",)),
    Option("patch", "apply this unified diff to the checkout before use-existing-torch (repeatable; see "
           "forge.patches)", None, list, value="FILE", tasks=WHEEL_TASKS),
    Option("no_reuse", "compile the kernels even when a wheel in dist/ was built from the same kernel inputs", False,
           bool, tasks=WHEEL_TASKS),
    Option("targets", "build only these CMake extension targets of the checkout's setup.py, e.g. "
           "_C_stable_libtorch,_moe_C_stable_libtorch (an unambiguous start such as _C will do; repeatable)", None,
           list, value="TARGET[,TARGET...]", tasks=WHEEL_TASKS),
    Option("install_build_deps", "pip-install the checkout's unmet build requirements (pyproject [build-system], "
           "requirements/build*) into the building Python first; torch is never replaced", False, bool,
           tasks=WHEEL_TASKS),
    Option("plot", "also draw the slowest compile units (.ninja_log) and the compile time per arch into this .png "
           "or .svg", None, value="FILE", tasks=WHEEL_TASKS),
    Option("limit_mb", "wheel size limit in MB (0: the checkout's vLLM limit, 400 when unknown)", 0.0, float,
           value="MB", tasks=("wheel", "check-size", *BAKE_TASKS)),
    # -- check-size
    Option("wheel", "the wheel to check (default: the newest in dist/)", None, value="WHEEL", tasks=("check-size",)),
    Option("image", "check this image instead: total, size over its runtime base, largest layers", None,
           value="IMAGE", tasks=("check-size",)),
    Option("budget", "with --image: fail when the image is larger than this many GB", 0.0, float, value="GB",
           tasks=("check-size",)),
    Option("docker", "with --image: the docker client to use", None, value="DOCKER", tasks=("check-size",)),
    Option("plot", "with --image: also draw the image as a stacked bar (base and each part) beside reference bars "
           "into this .png or .svg", None, value="FILE", tasks=("check-size",)),
    Option("reference", "with --plot: a reference bar (repeatable; default: the field report's 40 GB single-stage "
           "and 28.4 GB multi-stage images)", None, list, value="LABEL=GB", tasks=("check-size",)),
    # -- bake / image
    Option("budget", "image chain: fail when the image is larger than this many GB", 0.0, float, value="GB",
           tasks=BAKE_TASKS),
    Option("no_jit", "no JIT toolchain (nvcc, g++) in the runtime image and no JIT check: only for models that need "
           "no run-time kernel compile (the label org.vllm-forge.jit records it)", False, bool, tasks=BAKE_TASKS),
    Option("docker", "docker client (default: $VLLM_FORGE_DOCKER, else one with buildx, else one with built-in "
           "BuildKit)", None, value="DOCKER", tasks=BAKE_TASKS),
    Option("target", "build (builder with sources), wheel (export the wheel to --dist-dir) or runtime (the serving "
           "image)", "runtime", value="TARGET", tasks=BAKE_TASKS),
    Option("tag", "image tag (default: vllm-forge/vllm:REF-cuXY-smNN)", "", value="TAG", tasks=BAKE_TASKS),
    Option("dockerfile", "forge (this repo's slim recipe), upstream (the checkout's own docker/Dockerfile) or a path",
           "forge", value="DOCKERFILE", tasks=BAKE_TASKS),
    Option("ca_bundle", "PEM bundle for pip/git inside the build (BuildKit secret; default: this host's pip cert)",
           None, value="FILE", tasks=BAKE_TASKS),
    Option("netrc", "netrc file with private index logins (BuildKit secret, mounted as /root/.netrc)", None,
           value="FILE", tasks=BAKE_TASKS),
    Option("index_url", "pip/uv index URL; one with credentials goes in as a secret, never as a build arg", "",
           value="URL", tasks=BAKE_TASKS),
    Option("extra_index_url", "extra pip/uv index URL (no credentials: use --netrc)", "", value="URL",
           tasks=BAKE_TASKS),
    Option("pytorch_index", "PyTorch wheel index base (PYTORCH_CUDA_INDEX_BASE_URL), default "
           "download.pytorch.org/whl", "", value="URL", tasks=BAKE_TASKS),
    Option("platform", "target platform, e.g. linux/amd64", "", value="PLATFORM", tasks=BAKE_TASKS),
    Option("push", "push the image (buildx --push, else docker push after the build)", False, bool, tasks=BAKE_TASKS),
    Option("cache_from", "--cache-from source (buildx or registry inline cache; repeatable)", None, list, value="SRC",
           tasks=BAKE_TASKS),
    Option("cache_to", "--cache-to destination (buildx only; repeatable)", None, list, value="DEST", tasks=BAKE_TASKS),
    Option("no_cache", "build without the layer cache", False, bool, tasks=BAKE_TASKS),
    Option("build_arg", "extra build arg (repeatable)", None, list, value="NAME=VALUE", tasks=BAKE_TASKS),
    # -- archs, demo
    Option("cuda", "show which archs this CUDA version can build", None, value="VERSION", tasks=("archs",)),
    Option("no_docker", "skip the image steps (bake, serve, smoke test); without it, a demo that cannot run them here "
           "says why and exits 1", False, bool, tasks=("demo",)),
    # -- audit
    Option("path", "a .so, executable, directory (wheels in it too), wheel, or `docker save`/`docker export` tar",
           "", value="PATH", tasks=("audit",), positional=True),
    Option("image", "a local Docker image to audit instead of PATH (its torch is checked too)", None, value="IMAGE",
           tasks=("audit",)),
    Option("arch", "target GPUs: 12.0, sm_120, 9.0a, rtx5090, h100, auto; several with , or ; (repeatable; "
           "default: the arch setting)", None, list, value="ARCHS", tasks=("audit",)),
    Option("require", "glob of files that must run, e.g. '*/_C*.so' (repeatable; default: every file with device "
           "code)", None, list, value="GLOB", tasks=("audit",)),
    Option("json", "print the report as JSON (stable schema, see docs/audit.md)", False, bool, tasks=("audit",)),
    Option("all", "list every file without device code too", False, bool, tasks=("audit",)),
    Option("via", "how to read --image: save (layers, no container) or export (a created, never started container)",
           "save", value="HOW", tasks=("audit",)),
    Option("docker", DOCKER_HELP, None, value="DOCKER", tasks=("audit", "inspect", "serve", "stop")),
    Option("no_torch", "do not check torch's own arch list (the image's, or this Python's)", False, bool,
           tasks=("audit",)),
    Option("max_inflate", "cap on the bytes inflated from wheels, e.g. 16G (default 8G: refuses zip bombs in one "
           "line)", "8G", value="SIZE", tasks=("audit",)),
    Option("torch_cuda", "CUDA of the torch that loads these files, e.g. 12.8 (picks per-CUDA library variants)", "",
           value="VERSION", tasks=("audit",)),
    Option("plot", "also draw a file x GPU map of the verdicts, with kernel-group counts, into this .png or .svg",
           None, value="FILE", tasks=("audit",)),
    # -- doctor, nccl
    Option("image", "check this image's Python, torch, NCCL and vLLM (docker run) instead of this Python", "",
           value="IMAGE", tasks=("doctor",)),
    Option("arch", "GPUs to judge for when none is visible: rtx5090, 12.0, h100 ...", "", value="ARCHS",
           tasks=("doctor",)),
    Option("json", "print the report as JSON", False, bool, tasks=("doctor",)),
    Option("host_file", "judge a recorded host bundle (== query / == topo sections) instead of this machine", "",
           value="FILE", tasks=("doctor",)),
    Option("files", "NCCL debug logs, nccl-tests outputs, nvidia-smi outputs, or directories: several as separate "
           "arguments (logs/*.log), quoted and separated by spaces or commas, or after --", "", value="FILES",
           tasks=("nccl-diagnose",), positional=True),
    Option("image", "run inside this image (docker run --gpus all --ipc=host)", "", value="IMAGE",
           tasks=("nccl-test",)),
    Option("gpus", "GPUs (ranks) to use; default (or 0): all that nvidia-smi lists", 0, int, value="N",
           tasks=("nccl-test",)),
    Option("sizes", "MIN:MAX message sizes, doubling (default 8:128M)", "8:128M", value="MIN:MAX",
           tasks=("nccl-test",)),
    Option("out", "directory for the output table and NCCL_DEBUG_FILE logs (default build/nccl-test)",
           "build/nccl-test", value="DIR", tasks=("nccl-test",)),
    Option("runner", "auto (all_reduce_perf when found, else torch.distributed), nccl-tests or torch", "auto",
           value="RUNNER", tasks=("nccl-test",)),
    Option("binary", "the all_reduce_perf to run", "", value="FILE", tasks=("nccl-test",)),
    Option("build_nccl_tests", "build nccl-tests (make MPI=0 NCCL_HOME=...) from this NVIDIA/nccl-tests checkout "
           "first", "", value="DIR", tasks=("nccl-test",)),
    Option("nccl_home", "NCCL to build nccl-tests against (default: pip's nvidia-nccl, else /usr)", "", value="DIR",
           tasks=("nccl-test",)),
    Option("gpu_cap", "compute capabilities to build nccl-tests for, e.g. 9.0,12.0 (default: nvcc's defaults)", "",
           value="CAPS", tasks=("nccl-test",)),
    Option("gpu_cap", "compute capability of the GPUs when the files do not say (e.g. 12.0)", "", value="CAP",
           tasks=("nccl-diagnose",)),
    Option("json", "print the parsed result and verdicts as JSON", False, bool, tasks=("nccl-test",)),
    Option("json", "print the root cause and the reports as JSON", False, bool, tasks=("nccl-diagnose",)),
    Option("plot", PLOT_NCCL, None, value="FILE", tasks=NCCL_TASKS),
    Option("overlay", "with --plot: lay another run over it: its JSON (--json, or its record under build/reports) or "
           "its NCCL outputs (files, a directory), diagnosed on their own (repeatable)", None, list, value="RUN",
           tasks=NCCL_TASKS),
    # -- inspect, serve, stop
    Option("image", "image tag or id", REQUIRED, value="IMAGE", tasks=("inspect",), positional=True),
    Option("model", "model to serve (a Hugging Face id or a path)", REQUIRED, value="MODEL", tasks=("serve",),
           positional=True),
    Option("image", "image to serve (e.g. the tag `invoke bake` printed)", "", value="IMAGE", tasks=("serve",)),
    Option("local", "serve the vLLM installed in this Python instead of a container", False, bool, tasks=("serve",)),
    Option("tp", "tensor-parallel size (GPUs per replica; default 1)", 1, int, value="N", tasks=("serve",)),
    Option("port", "port published on the host (default 8000)", 8000, int, value="PORT", tasks=("serve",)),
    Option("host", "host address to publish on (default 127.0.0.1; 0.0.0.0 needs an API key or --insecure)",
           "127.0.0.1", value="ADDRESS", tasks=("serve",)),
    Option("gpus", "all, none (CPU-only stand-ins) or indexes like 0,1", "all", value="GPUS", tasks=("serve",)),
    Option("api_key", "refused: a key on the command line is visible in ps; use $VLLM_API_KEY or --api-key-file",
           None, value="KEY", tasks=("serve",)),
    Option("api_key_file", "file whose first line is the API key the server requires (default: $VLLM_API_KEY)", None,
           value="FILE", tasks=("serve",)),
    Option("insecure", "allow --host 0.0.0.0 without an API key", False, bool, tasks=("serve",)),
    Option("name", "container name (default vllm-forge-serve)", "vllm-forge-serve", value="NAME",
           tasks=("serve", "stop")),
    Option("timeout", "seconds to wait for /health (default 600)", 600.0, float, value="SECONDS", tasks=("serve",)),
    Option("shm_size", "use --shm-size SIZE instead of --ipc=host", "", value="SIZE", tasks=("serve",)),
    Option("max_model_len", "vLLM --max-model-len: context length in tokens (default: the model's own; less KV "
           "cache)", None, value="TOKENS", tasks=("serve",)),
    Option("gpu_memory_utilization", "vLLM --gpu-memory-utilization: fraction of each GPU's memory vLLM takes, "
           "weights and KV cache (vLLM's default 0.92 takes nearly the whole GPU, whatever the model)", None,
           value="FRACTION", tasks=("serve",)),
    Option("served_model_name", "vLLM --served-model-name: the model name clients send (default: --model)", None,
           value="NAME", tasks=("serve",)),
    Option("vllm_args", "more vLLM server flags, one quoted string: --vllm-args \"--enforce-eager --dtype bfloat16\" "
           "(also: words after `--`, and invoke.yaml forge.serve.vllm_args)", "", value="ARGS", tasks=("serve",)),
    Option("compose", "write the equivalent docker compose file instead of starting anything", False, bool,
           tasks=("serve",)),
    Option("compose_file", "where --compose writes (default build/serve/compose.yaml)", "build/serve/compose.yaml",
           value="FILE", tasks=("serve",)),
    Option("no_smoke", "do not call /v1/models and a chat completion after /health", False, bool, tasks=("serve",)),
    # -- vLLM tree, dependencies
    Option("cuda", "CUDA version(s) to show the checkout's arch gate for (default 12.6, 12.8, 12.9, 13.0; "
           "repeatable)", None, list, value="VERSION", tasks=("inspect-tree",)),
    Option("arch", "also check these archs against the gate of --cuda (preflight)", None, value="ARCHS",
           tasks=("inspect-tree",)),
    Option("json", "print every detected fact as JSON", False, bool, tasks=("inspect-tree",)),
    Option("github_proxy", "URL prefix put before https://github.com/... (default: the mirror profile's "
           "github_proxy)", None, value="URL", tasks=("fetch-deps",)),
    Option("url_map", "fetch URLs starting with OLD from NEW instead (repeatable)", None, list, value="OLD=NEW",
           tasks=("fetch-deps",)),
    Option("offline", "use the cache only, never the network; fail naming every missing pin with its URL", False,
           bool, tasks=("fetch-deps",)),
    Option("dry_run", "list the dependencies, their pins, what the cache holds and what would be fetched or imported "
           "(submodules too); change nothing", False, bool, tasks=("fetch-deps",)),
    Option("json", "print the environment that points the build at the cache, as JSON", False, bool,
           tasks=("fetch-deps",)),
    Option("from_", "import dependencies from a directory of them, a .tar/.tar.gz/.tar.xz, a git bundle, a "
           "dependency's directory, or a file --bundle wrote; never fetches (repeatable)", None, list,
           value="[NAME=]PATH", tasks=("fetch-deps",)),
    Option("bundle", "after fetching, write every dependency with its git data into this .tar, .tar.gz or .tar.xz, "
           "for --from on a machine without GitHub", None, value="FILE", tasks=("fetch-deps",)),
    Option("force", "replace cache entries: an import over a different entry, a fetch over one that is not pinned",
           False, bool, tasks=("fetch-deps",)),
    Option("max_size", "the most one import may unpack or copy, e.g. 8G or 500M (default 8G; never more than the "
           "free disk)", None, value="SIZE", tasks=("fetch-deps",)),
    # -- report
    Option("out", "directory the page goes to, as index.html (default reports/)", "reports", value="DIR",
           tasks=("report",)),
    Option("records", "directory of recorded runs to read (default build/reports, or $VLLM_FORGE_RECORD_DIR)", "",
           value="DIR", tasks=("report",)),
    # -- the build farm
    Option("scheduler", "the farm's scheduler URL (default: dist_scheduler)", None, value="URL",
           setting="dist_scheduler", tasks=("farm-server", "farm-status")),
    Option("listen", "the address the scheduler serves on, which servers and builds reach (default "
           "127.0.0.1:10600; 0.0.0.0:10600 for every interface)", "127.0.0.1:10600", value="HOST:PORT",
           tasks=("farm-scheduler",)),
    Option("listen", "the address this server serves on and the scheduler and builds reach it at: its LAN address "
           "(default 127.0.0.1:10501)", "127.0.0.1:10501", value="HOST:PORT", tasks=("farm-server",)),
    Option("token_file", "file whose first line is the client token builds send (default: $VLLM_FORGE_DIST_TOKEN)",
           None, value="FILE", setting="dist_token_file", tasks=("farm-scheduler",)),
    Option("name", "this server's name in the farm dir (default server-PORT); farm-stop and farm-status use it", "",
           value="NAME", tasks=("farm-server",)),
    Option("name", "stop only this daemon (scheduler, or a server's name); default: all", "", value="NAME",
           tasks=("farm-stop",)),
    Option("builder", "overlay (bubblewrap + overlayfs, needs root) or docker (needs the image aidanhs/busybox)",
           "overlay", value="BUILDER", tasks=("farm-server",)),
    Option("cache_size", "GB of client toolchains the server keeps (default 10)", 10.0, float, value="GB",
           tasks=("farm-server",)),
    Option("cores", "CPUs the server runs jobs on and reports to the scheduler (default 0: all)", 0, int,
           value="N", tasks=("farm-server",)),
    Option("trace_jobs", "log each job's compiler command and environment in the server log (the environment comes "
           "from the client's build)", False, bool, tasks=("farm-server",)),
    Option("json", "print the status as JSON", False, bool, tasks=("farm-status",)),
)


def task_options(task: str) -> list[Option]:
    """Every option ``task`` takes, settings and task flags, positional ones first."""
    return for_task((*SETTINGS, *FLAGS), task)


def is_setting(option: Option) -> bool:
    """The option is a setting of ``BuildConfig`` (its value goes through the configuration layers)."""
    return any(option is setting for setting in SETTINGS)
