"""Serve a baked image (or the local vLLM) with the OpenAI server, wait for it, smoke-test it, stop it.

``plan_serve`` returns the exact ``docker run`` command; ``start`` runs it detached, ``wait_healthy``
polls ``/health`` (failing early when the container exits), ``smoke_test`` calls ``/v1/models`` and
one chat completion, ``stop`` removes what was started. ``compose_file`` writes the same service as a
docker compose file.

Secrets: ``HF_TOKEN`` is passed by name only (``-e HF_TOKEN``: docker reads the value from this
process's environment, so it is neither on a command line nor in the image), and only at run time.
The API key travels the same way, as ``VLLM_API_KEY`` (vLLM reads it from its environment): never as
``--api-key`` on a command line, where every user of a shared host sees it in ``ps``. A compose file
names ``${VLLM_API_KEY}``, never the key.

vLLM's own server flags: the common ones are fields (``max_model_len``, ``gpu_memory_utilization``,
``served_model_name``); any other goes through ``extra_args`` (``invoke serve --vllm-args "..."``,
the words after ``--``, or ``forge.serve.vllm_args`` in invoke.yaml), after the ones this module
manages (host, port, model, tensor-parallel size), which ``extra_args`` may not repeat.

When the server dies or never becomes healthy, the error names the first real error in its log
(``first_error``: the exception line of the first traceback, which Python prints root cause first),
not vLLM's last words ("Engine core initialization failed. See root cause above.").
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.nofollow import write_file
from vllm_forge.core.pidfile import process_identity as _process_identity  # noqa: F401  (tests read it here)
from vllm_forge.core.pidfile import recorded_process as _recorded_process
from vllm_forge.core.pidfile import write_pid_record
from vllm_forge.core.plan import Command, record_command
from vllm_forge.core.validate import check_image_ref

DEFAULT_NAME = "vllm-forge-serve"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
CONTAINER_PORT = 8000
LOCAL_STATE_DIR = Path(__file__).resolve().parents[2] / "build" / "serve"
STANDIN_MODEL = "minivllm/echo"  # what the miniature's stand-in server serves (its vllm.entrypoints)
SMALL_MODEL = "Qwen/Qwen3-0.6B"  # a real model small enough for any GPU, for a first try of a real image
# Passed through to the container when set here (by name: values never appear on a command line).
PASSTHROUGH_PREFIXES = ("NCCL_", "VLLM_", "CUDA_VISIBLE_DEVICES", "HF_HUB_", "TORCH_")
PASSTHROUGH_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "NVIDIA_VISIBLE_DEVICES")
_NEVER_PASS = ("VLLM_FORGE_DOCKER", "VLLM_FORGE_DEBUG", "VLLM_FORGE_CACHE")
API_KEY_ENV = "VLLM_API_KEY"  # vLLM's own: its server takes the key from here when --api-key is absent
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
ROOT_HF_CACHE = "/root/.cache/huggingface"  # where a root image (vLLM's own, ours by default) keeps it
# Docker's own rule for container names; also what keeps a name a plain file name under build/serve/.
_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


def check_name(name: str) -> str:
    """``name`` when it is a valid Docker container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*); ForgeError otherwise."""
    if not isinstance(name, str) or not _CONTAINER_NAME.match(name):
        raise ForgeError(
            f"--name {name!r} is not a container name",
            "use letters, digits and _ . - (starting with a letter or digit), e.g. --name vllm-forge-serve",
        )
    return name


def refuse_key_on_command_line(flag: str = "--api-key") -> ForgeError:
    """The error for an API key given as a flag value: it would sit in `ps` for as long as serve runs."""
    return ForgeError(
        f"{flag} KEY puts the API key on this command line, where every user of the host can read it (ps) "
        "while serve runs",
        f"export {API_KEY_ENV}=KEY, or write it to a file (mode 0600) and pass --api-key-file FILE",
    )


def read_api_key(api_key_file: str | Path | None = None, env: dict[str, str] | None = None) -> str:
    """The API key: from ``api_key_file`` (its first line) when given, else from $VLLM_API_KEY; "" for none."""
    if api_key_file:
        path = Path(api_key_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ForgeError(f"--api-key-file {path} cannot be read ({getattr(err, 'strerror', None) or err})",
                             "pass a readable file whose first line is the key") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise ForgeError(f"--api-key-file {path} is empty", "write the key on its first line")
        return key
    return (os.environ if env is None else env).get(API_KEY_ENV, "")


@dataclass
class ServeRequest:
    model: str
    image: str = ""  # "" with local=True: run this Python's vLLM instead of a container
    local: bool = False
    tp: int = 1
    port: int = 8000
    host: str = "127.0.0.1"
    gpus: str = "all"  # all | none | 0,1
    api_key: str = ""
    insecure: bool = False
    name: str = DEFAULT_NAME
    hf_cache: Path = Path("~/.cache/huggingface")
    shm_size: str = ""  # "" : --ipc=host
    served_model_name: str = ""
    max_model_len: int = 0  # 0: vLLM's default (the model's own context length)
    gpu_memory_utilization: float = 0.0  # 0: vLLM's default (0.92 of the GPU's memory, whatever the model needs)
    extra_args: list[str] = field(default_factory=list)  # more vLLM server flags, passed as they are
    env: dict[str, str] | None = None  # the environment to pass through from (default os.environ)


# Flags this module sets itself: repeating them in extra_args would contradict the port mapping, the
# model mount or the key's way in (the environment). Any prefix of one counts: vLLM's argparse takes it.
MANAGED_FLAGS = {
    "--host": "pass `invoke serve --host`",
    "--port": "pass `invoke serve --port`",
    "--model": "pass `invoke serve --model`",
    "--tensor-parallel-size": "pass `invoke serve --tp`",
    "-tp": "pass `invoke serve --tp`",
    "--api-key": "export VLLM_API_KEY or pass --api-key-file FILE: the key goes by environment, never argv",
}
# First-class fields: a value both there and in extra_args is refused rather than guessed at.
_FIELD_FLAGS = {
    "--served-model-name": "served_model_name",
    "--max-model-len": "max_model_len",
    "--gpu-memory-utilization": "gpu_memory_utilization",
}


def split_vllm_args(text: str | list | tuple | None, where: str = "--vllm-args") -> list[str]:
    """``"--enforce-eager --dtype bfloat16"`` (shell quoting kept) or a list -> argv words."""
    if text is None or text == "":
        return []
    if isinstance(text, (list, tuple)):
        return [str(word) for word in text]
    try:
        return shlex.split(str(text))
    except ValueError as err:
        raise ForgeError(f"{where} {text!r} cannot be split into words ({err})",
                         "balance the quotes, e.g. --vllm-args \"--chat-template '{{...}}'\"") from None


def _flag_name(word: str) -> str:
    """``--max_model_len=512`` -> ``--max-model-len`` (vLLM's parser takes either spelling)."""
    name = word.split("=", 1)[0]
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


def _flag_for(name: str, flags) -> str | None:
    """The flag of ``flags`` that ``name`` spells or abbreviates (argparse takes a prefix), if any."""
    if not name.startswith("-") or name in ("-", "--"):
        return None
    return next((flag for flag in flags if flag.startswith(name)), None)


def check_extra_args(request: ServeRequest) -> None:
    words = list(request.extra_args)
    for word in words:
        name = _flag_name(word)
        managed = _flag_for(name, MANAGED_FLAGS)
        if managed:
            spelled = name if name == managed else f"{name} (a prefix of {managed}, which vLLM's parser takes for it)"
            raise ForgeError(f"the vLLM flags passed through set {spelled}, which invoke serve manages",
                             f"drop it from the pass-through flags and {MANAGED_FLAGS[managed]}")
        field_flag = _flag_for(name, _FIELD_FLAGS)
        if field_flag and getattr(request, _FIELD_FLAGS[field_flag]):
            raise ForgeError(f"{field_flag} is given twice (as invoke serve's own flag and among the vLLM flags passed "
                             f"through, as {name})", f"give {field_flag} once")
    if words and not words[0].startswith("-"):
        raise ForgeError(f"the vLLM flags passed through start with {words[0]!r}, not a flag",
                         "pass flags only (e.g. --enforce-eager --dtype bfloat16); the model goes in --model")


# invoke.yaml `forge.serve:` keys (the project's defaults for `invoke serve`; command-line flags win).
SERVE_SETTINGS = {
    "vllm_args": "more vLLM server flags, a string (shell quoting) or a list; the command line's come after",
    "max_model_len": "vLLM --max-model-len",
    "gpu_memory_utilization": "vLLM --gpu-memory-utilization",
    "served_model_name": "vLLM --served-model-name",
}


def serve_settings(invoke_config) -> dict:
    """``forge.serve`` of a task's ``ctx.config`` (or a plain mapping), checked: {} when absent."""
    forge = invoke_config.get("forge", {}) if invoke_config is not None and hasattr(invoke_config, "get") else {}
    section = (forge or {}).get("serve") if hasattr(forge or {}, "get") else None
    if section is None:
        return {}
    if not hasattr(section, "items"):
        raise ForgeError("forge.serve in invoke.yaml must be a mapping",
                         "write forge: {serve: {max_model_len: 4096, vllm_args: '--enforce-eager'}}")
    settings = dict(section.items())
    unknown = sorted(set(settings) - set(SERVE_SETTINGS))
    if unknown:
        raise ForgeError(f"invoke.yaml forge.serve has unknown key(s): {', '.join(unknown)}",
                         f"use {', '.join(SERVE_SETTINGS)}; any other vLLM flag goes in vllm_args")
    try:
        if settings.get("max_model_len") not in (None, ""):
            settings["max_model_len"] = int(settings["max_model_len"])
        if settings.get("gpu_memory_utilization") not in (None, ""):
            settings["gpu_memory_utilization"] = float(settings["gpu_memory_utilization"])
    except (TypeError, ValueError):
        raise ForgeError("forge.serve.max_model_len and gpu_memory_utilization in invoke.yaml must be numbers",
                         "e.g. max_model_len: 4096, gpu_memory_utilization: 0.5") from None
    settings["vllm_args"] = split_vllm_args(settings.get("vllm_args"), "forge.serve.vllm_args")
    return settings


def check_request(request: ServeRequest) -> None:
    check_name(request.name)
    if not request.local and not request.image:
        raise ForgeError(
            "serve needs --image TAG (a baked image) or --local", "pass --image, e.g. the tag `invoke bake` printed"
        )
    if not request.local:
        check_image_ref(request.image, "--image")  # docker reads it after its options: never one itself
    if request.shm_size and not re.fullmatch(r"[0-9]+(\.[0-9]+)?[bkmgBKMG]?", request.shm_size):
        raise ForgeError(f"--shm-size {request.shm_size!r} is not a size", "pass e.g. --shm-size 16g")
    if request.tp < 1:
        raise ForgeError("--tp must be 1 or more", "pass the number of GPUs to shard the model over")
    if not 0 < request.port < 65536:
        raise ForgeError(f"--port {request.port} is not a TCP port", "pass a port between 1 and 65535")
    if request.host not in _LOCAL_HOSTS and not request.api_key and not request.insecure:
        raise ForgeError(
            f"serving on {request.host} without --api-key-file or {API_KEY_ENV} would let anyone on the network "
            "use the model",
            f"export {API_KEY_ENV}=KEY or pass --api-key-file FILE (clients send `Authorization: Bearer KEY`), "
            "or --insecure if that is what you want",
        )
    gpus = request.gpus.strip()
    if gpus not in ("all", "none") and not all(part.strip().isdigit() for part in gpus.split(",")):
        raise ForgeError(
            f"--gpus {request.gpus} is not all, none or a list of GPU indexes", "pass all, none or e.g. 0,1"
        )
    if gpus not in ("all", "none") and len(gpus.split(",")) < request.tp:
        raise ForgeError(
            f"--tp {request.tp} needs {request.tp} GPUs but --gpus names {len(gpus.split(','))}",
            "give as many GPUs as --tp, or lower --tp",
        )
    if request.max_model_len < 0:
        raise ForgeError(f"--max-model-len {request.max_model_len} is negative",
                         "pass the context length in tokens, e.g. --max-model-len 4096 (0: the model's own)")
    if not 0 <= request.gpu_memory_utilization <= 1:
        raise ForgeError(f"--gpu-memory-utilization {request.gpu_memory_utilization:g} is not a fraction of the "
                         "GPU's memory", "pass a number above 0 and at most 1, e.g. 0.5")
    check_extra_args(request)
    path = model_path(request.model)
    if path is not None and not path.exists():
        raise ForgeError(
            f"--model {request.model} looks like a path, and {path} does not exist",
            "pass the directory holding the model's config.json, or a Hugging Face id (Qwen/Qwen2.5-0.5B-Instruct)",
        )


def model_path(model: str) -> Path | None:
    """The local directory ``model`` names, or None for a Hugging Face id (org/name)."""
    if model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists():
        return Path(model).expanduser().resolve()
    return None


def check_port_free(host: str, port: int) -> None:
    """ForgeError when something listens on host:port (before a container or server is started).

    Whether something *listens* is the question, not whether a plain bind() works: a server that just
    stopped leaves its side of each closed connection in TIME_WAIT for about a minute, which blocks a bind
    without SO_REUSEADDR but not the next server (uvicorn and docker-proxy both set it)."""
    import socket

    bind = "" if host in ("0.0.0.0", "::", "") else host
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        if probe.connect_ex((bind or "127.0.0.1", port)) == 0:
            raise ForgeError(
                f"port {port} on {host} is already in use (something listens there)",
                f"pass another --port, or stop what listens there (`invoke stop`, or `ss -ltnp 'sport = :{port}'`)",
            )
    with socket.socket(family, socket.SOCK_STREAM) as probe:  # a listener on another address, or a low port
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind, port))
        except PermissionError:
            raise ForgeError(f"port {port} needs root to listen on", "pass --port 1024 or higher") from None
        except OSError as err:
            raise ForgeError(
                f"port {port} on {host} is already in use ({err.strerror})",
                f"pass another --port, or stop what listens there (`invoke stop`, or `ss -ltnp 'sport = :{port}'`)",
            ) from None


def serve_line(image: str, *, miniature: bool, gpus_here: int, port: int | None = None) -> str | None:
    """The `invoke serve` command that works as printed on this machine for ``image``: an image of the embedded
    miniature (the demo's, or any bake on the stand-in bases, where only the miniature runs: they have no torch)
    serves its echo model without a GPU (--gpus none); a real vLLM needs a GPU here (None when there is none)."""
    extra = f" --port {port}" if port else ""
    if miniature:
        return f"invoke serve {STANDIN_MODEL} --image {shlex.quote(image)} --gpus none{extra}"
    if gpus_here:
        return f"invoke serve {SMALL_MODEL} --image {shlex.quote(image)}{extra}"
    return None


def passthrough_env(env: dict[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    # VLLM_FORGE_* are this tool's own settings (docker client, debug, command log), not the server's.
    names = [n for n in env if (n.startswith(PASSTHROUGH_PREFIXES) or n in PASSTHROUGH_NAMES)
             and n not in _NEVER_PASS and not n.startswith("VLLM_FORGE_")]
    return sorted(names)


def server_args(request: ServeRequest, *, bind_host: str, port: int) -> list[str]:
    args = [
        "--host",
        bind_host,
        "--port",
        str(port),
        "--model",
        request.model,
        "--tensor-parallel-size",
        str(request.tp),
    ]
    if request.served_model_name:
        args += ["--served-model-name", request.served_model_name]
    if request.max_model_len:
        args += ["--max-model-len", str(request.max_model_len)]
    if request.gpu_memory_utilization:
        args += ["--gpu-memory-utilization", f"{request.gpu_memory_utilization:g}"]
    return args + list(request.extra_args)  # the API key goes by environment (API_KEY_ENV), never here


def _gpus_flag(gpus: str) -> list[str]:
    gpus = gpus.strip()
    if gpus == "none":
        return []
    if gpus == "all":
        return ["--gpus", "all"]
    return ["--gpus", f'"device={gpus}"']


def plan_serve(request: ServeRequest, docker: str = "docker") -> Command:
    """The exact `docker run` (or local python) command that starts the server detached."""
    check_request(request)
    key_env = {API_KEY_ENV: request.api_key} if request.api_key else {}  # masked wherever printed
    if request.local:
        return Command(
            [sys.executable, "-m", SERVER_MODULE, *server_args(request, bind_host=request.host, port=request.port)],
            env=key_env, why="the vLLM installed in this Python, in the background",
        )
    hf_cache = Path(request.hf_cache).expanduser()
    user, hf_target = image_runtime(docker, request.image)
    argv = [docker, "run", "-d", "--name", request.name, "--label", "org.vllm-forge.serve=1"]
    argv += _gpus_flag(request.gpus)
    argv += ["--shm-size", request.shm_size] if request.shm_size else ["--ipc=host"]
    argv += ["-p", f"{request.host}:{request.port}:{CONTAINER_PORT}"]
    argv += ["-v", f"{hf_cache}:{hf_target}"]
    argv += run_as(user)
    local_model = model_path(request.model)
    if local_model is not None:  # the container sees the model at the same path, read-only
        argv += ["-v", f"{local_model}:{local_model}:ro"]
    for name in sorted(set(passthrough_env(request.env)) | set(key_env)):
        argv += ["-e", name]  # by name: docker takes the value from its own environment
    argv.append(request.image)
    argv += server_args(request, bind_host="0.0.0.0", port=CONTAINER_PORT)
    if local_model is not None:
        argv[argv.index("--model") + 1] = str(local_model)
    return Command(argv, env=key_env, why="start the OpenAI server container, detached")


def image_runtime(docker: str, image: str) -> tuple[str, str]:
    """(USER, HF cache dir) a local image runs with: its USER and HF_HOME; ("", ROOT_HF_CACHE) when it
    sets neither or is not here (a pull happens at `docker run`)."""
    try:
        proc = subprocess.run([docker, "image", "inspect", "--format", "{{json .Config}}", image],
                              capture_output=True, text=True, timeout=60)
        config = json.loads(proc.stdout or "null") if proc.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        config = None
    config = config if isinstance(config, dict) else {}
    env = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    return config.get("User") or "", env.get("HF_HOME") or ROOT_HF_CACHE


def run_as(image_user: str, uid: int | None = None) -> list[str]:
    """``--user UID:0`` for a non-root image (`bake --non-root`) started by a non-root caller: files it
    writes into the mounted HF cache then belong to the caller, and group 0 opens the image's home
    and caches. A root caller keeps the image's own user."""
    uid = os.getuid() if uid is None else uid
    if image_user.split(":")[0] in ("", "root", "0") or uid == 0:
        return []
    return ["--user", f"{uid}:0"]


def shell_line(command: Command, request: ServeRequest) -> str:
    """The command for printing: the key is only in its environment, which ``Command.shell`` masks."""
    return command.shell()


@dataclass
class Started:
    kind: str  # container | process
    ident: str  # container id or pid
    name: str
    url: str


def base_url(request: ServeRequest) -> str:
    host = "127.0.0.1" if request.host in ("0.0.0.0", "::") else request.host
    return f"http://{host}:{request.port}"


def start(request: ServeRequest, docker: str = "docker", command: Command | None = None) -> Started:
    """Run ``command`` (default: ``plan_serve``'s) detached; the pipeline passes the one it printed."""
    command = command or plan_serve(request, docker)
    record_command(command)
    check_port_free(request.host, request.port)
    if request.local:
        LOCAL_STATE_DIR.mkdir(parents=True, exist_ok=True)
        with open(LOCAL_STATE_DIR / f"{request.name}.log", "w") as log:
            proc = subprocess.Popen(
                command.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **command.env},
            )
        write_pid_record(LOCAL_STATE_DIR / f"{request.name}.pid", proc.pid)
        return Started("process", str(proc.pid), request.name, base_url(request))
    try:
        existing = subprocess.run([docker, "container", "inspect", request.name], capture_output=True, text=True)
    except FileNotFoundError:
        raise ForgeError(f"docker client {docker} does not exist", "install Docker, or pass --docker PATH") from None
    if existing.returncode == 0:
        raise ForgeError(
            f"a container named {request.name} already exists",
            f"stop it with `invoke stop --name {request.name}`, or pass --name",
        )
    Path(request.hf_cache).expanduser().mkdir(parents=True, exist_ok=True)  # else docker makes it, root-owned
    env = {**os.environ, **(request.env or {}), **command.env}
    try:
        proc = subprocess.run(command.argv, capture_output=True, text=True, env=env)
    except BaseException:  # Ctrl-C while docker creates it: remove what may have been created
        subprocess.run([docker, "rm", "-f", request.name], capture_output=True)
        raise
    if proc.returncode != 0:
        subprocess.run([docker, "rm", "-f", request.name], capture_output=True)
        said = " ".join(proc.stderr.split())[-400:]
        raise ForgeError(
            f"docker run failed: {said}",
            "read docker's message; for GPU errors check the NVIDIA container toolkit "
            "(`docker info | grep -i nvidia`), or pass --gpus none for CPU-only stand-ins",
        )
    return Started("container", proc.stdout.strip(), request.name, base_url(request))


def _http(method: str, url: str, *, api_key: str = "", body: dict | None = None, timeout: float = 10):
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return requests.request(method, url, json=body, headers=headers, timeout=timeout)


def is_running(started: Started, docker: str = "docker") -> bool:
    if started.kind == "process":
        try:
            os.kill(int(started.ident), 0)
        except (ProcessLookupError, ValueError):
            return False
        try:  # a zombie (exited, not yet reaped) is not running
            return Path(f"/proc/{started.ident}/stat").read_text().split()[2] != "Z"
        except OSError:
            return True
    proc = subprocess.run(
        [docker, "inspect", "--format", "{{.State.Running}}", started.ident], capture_output=True, text=True
    )
    return proc.stdout.strip() == "true"


def save_logs(started: Started, docker: str = "docker") -> Path | None:
    """The server's whole log in build/serve/<name>.log (a container's is copied out before it is removed)."""
    path = LOCAL_STATE_DIR / f"{started.name}.log"
    if started.kind == "container":
        try:
            proc = subprocess.run([docker, "logs", started.ident], capture_output=True, text=True, timeout=60)
            if proc.returncode != 0:  # the container is gone: docker's complaint is not the server's log
                return None
            LOCAL_STATE_DIR.mkdir(parents=True, exist_ok=True)
            write_file(path, proc.stdout + proc.stderr)  # never through a link planted in build/serve
        except (OSError, subprocess.SubprocessError):
            return None
    return path if path.exists() else None


# `(EngineCore pid=2024) ` and `ERROR 11-27 13:48:11 [core.py:1330] ` in front of vLLM's log lines.
_PROCESS_PREFIX = re.compile(r"^\s*\([\w:. -]+ pid=\d+\)\s?")
_LEVEL_PREFIX = re.compile(r"^(?:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+"
                           r"(?:\[[^\]]*\]\s?)?")


def _log_body(line: str) -> str:
    return _LEVEL_PREFIX.sub("", _PROCESS_PREFIX.sub("", line.rstrip("\n")), count=1)


def first_error(text: str) -> str:
    """The first real error in a server log: the exception line of its first traceback (chained
    exceptions print the root cause first); else the first line that starts with an Error/Exception
    name; else ''. Warnings that merely mention an error (`OSError: [Errno 24]` inside a ulimit
    warning) are neither."""
    from vllm_forge.core.first_error import EXCEPTION_LINE, python_exception

    lines = [_log_body(line) for line in text.splitlines()]
    found = python_exception(lines)
    if found:
        return found
    for line in lines:
        if EXCEPTION_LINE.match(line.strip()) and not line.startswith((" ", "\t")):
            return line.strip()[:300]
    return ""


def failure_fix(error: str) -> str:
    """The fix to print for a server's first error, where the error says what it is."""
    missing = re.search(r"No module named '([\w.]+)'", error)
    if missing and missing.group(1).split(".")[0] == "vllm":
        return ("install vLLM in the Python that serves (pip install vllm, or the wheel `invoke build-wheel` made), "
                "or serve an image with --image")
    if missing:
        return (f"install what provides the module {missing.group(1)} in the Python that serves (or the image), "
                "or turn off the vLLM feature that imports it; the log has the whole traceback")
    if "out of memory" in error.lower() or "OutOfMemoryError" in error:
        return ("lower --gpu-memory-utilization or --max-model-len, free the GPU (nvidia-smi), or shard over more "
                "GPUs with --tp")
    if "no kernel image is available" in error:
        return "the GPU has no kernels in this build: `invoke audit` it and rebuild for this GPU's arch"
    return "read that log (model name, GPU visibility, memory)"


def last_words(started: Started, docker: str = "docker") -> str:
    """'first error: ...; full log: PATH' (or 'last line: ...'), for a one-line error about a server
    that went wrong."""
    path = save_logs(started, docker)
    try:
        text = path.read_text(errors="replace") if path else logs(started, docker, tail=400)
    except (OSError, subprocess.SubprocessError):
        text = ""
    return describe_log(text, path)


def describe_log(text: str, path: Path | None) -> str:
    error = first_error(text)
    if error:
        said = f"first error: {error}"
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        said = f"last line: {lines[-1][-300:] if lines else 'no output'}"
    return said + (f"; full log: {path}" if path else "")


def logs(started: Started, docker: str = "docker", tail: int = 40) -> str:
    if started.kind == "process":
        path = LOCAL_STATE_DIR / f"{started.name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-tail:]) if path.exists() else ""
    proc = subprocess.run([docker, "logs", "--tail", str(tail), started.ident], capture_output=True, text=True)
    return (proc.stdout + proc.stderr).strip()


def wait_healthy(
    started: Started,
    *,
    timeout_s: float = 600,
    docker: str = "docker",
    on_tick: Callable[[float], None] | None = None,
    interval_s: float = 0.5,
) -> float:
    """Poll ``/health`` until 200; fail at once when the server exits. Returns the seconds it took."""
    import requests

    began = time.monotonic()
    while True:
        elapsed = time.monotonic() - began
        try:
            if _http("GET", f"{started.url}/health", timeout=5).status_code == 200:
                return time.monotonic() - began
        except requests.RequestException:
            pass
        if not is_running(started, docker):
            words = last_words(started, docker)
            raise ForgeError(f"the server exited before it became healthy ({words})",
                             failure_fix(words), exit_code=1)
        if elapsed > timeout_s:
            words = last_words(started, docker)
            raise ForgeError(
                f"{started.url}/health did not answer within {timeout_s:g}s ({words})",
                ("raise --timeout for large models, or read that log; the server was stopped"
                 if not words.startswith("first error") else failure_fix(words) + "; the server was stopped"),
                exit_code=1,
            )
        if on_tick:
            on_tick(elapsed)
        time.sleep(interval_s)


@dataclass
class SmokeResult:
    models: list[str]
    reply: str
    seconds: float


def smoke_test(url: str, *, model: str = "", api_key: str = "", prompt: str = "Say hello.") -> SmokeResult:
    """GET /v1/models and POST one chat completion; ForgeError unless both answer sensibly."""
    began = time.monotonic()
    response = _http("GET", f"{url}/v1/models", api_key=api_key)
    if response.status_code != 200:
        raise ForgeError(
            f"GET /v1/models answered {response.status_code}: {response.text[:200]}",
            "check the API key ($VLLM_API_KEY or --api-key-file) and the server log (`docker logs`)",
            exit_code=1,
        )
    models = [m.get("id", "") for m in response.json().get("data", [])]
    if not models:
        raise ForgeError("GET /v1/models lists no model", "check --model and the server log", exit_code=1)
    use = model if model in models else models[0]
    body = {"model": use, "messages": [{"role": "user", "content": prompt}], "max_tokens": 16}
    response = _http("POST", f"{url}/v1/chat/completions", api_key=api_key, body=body, timeout=120)
    if response.status_code != 200:
        raise ForgeError(
            f"POST /v1/chat/completions answered {response.status_code}: {response.text[:200]}",
            "read the server log (`docker logs`)",
            exit_code=1,
        )
    try:
        reply = response.json()["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError, ValueError):
        raise ForgeError(
            f"the chat completion has no message: {response.text[:200]}", "read the server log", exit_code=1
        ) from None
    return SmokeResult(models, reply, time.monotonic() - began)


def stop(name: str = DEFAULT_NAME, docker: str = "docker") -> str:
    """Remove the container (or end the local server) named ``name``; says what it did."""
    check_name(name)
    pid_file = LOCAL_STATE_DIR / f"{name}.pid"
    if pid_file.exists() or pid_file.is_symlink():
        pid, why = _recorded_process(pid_file)
        pid_file.unlink()
        if pid is None:
            return why
        try:
            # start() made the server a session (and group) leader: end its workers with it.
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGTERM)
                return f"stopped local server (pid {pid}, its whole process group)"
            os.kill(pid, signal.SIGTERM)
            return f"stopped local server (pid {pid})"
        except ProcessLookupError:
            return f"nothing to stop: the local server (pid {pid}) had already exited"
    try:
        proc = subprocess.run([docker, "rm", "-f", name], capture_output=True, text=True)
    except FileNotFoundError:
        raise ForgeError(f"docker client {docker} does not exist", "install Docker, or pass --docker PATH") from None
    if "No such container" in proc.stderr:  # docker 23+ says so and exits 0 for `rm -f`
        return f"nothing to stop: no container named {name}"
    if proc.returncode != 0:
        raise ForgeError(f"could not remove {name}: {proc.stderr.strip()[-200:]}", "check `docker ps -a`")
    return f"removed container {name}"


def serve(
    request: ServeRequest,
    *,
    docker: str = "docker",
    timeout_s: float = 600,
    on_tick: Callable[[float], None] | None = None,
    smoke: bool = True,
    command: Command | None = None,
) -> tuple[Started, float, SmokeResult | None]:
    """Start, wait for /health, smoke-test; on any failure remove what was started and re-raise."""
    started = start(request, docker, command)
    try:
        seconds = wait_healthy(started, timeout_s=timeout_s, docker=docker, on_tick=on_tick)
        result = (
            smoke_test(started.url, model=request.served_model_name or request.model, api_key=request.api_key)
            if smoke
            else None
        )
    except BaseException as err:
        words = (last_words(started, docker) if isinstance(err, ForgeError) and "full log: " not in str(err)
                 and "last line" not in str(err) else "")
        stop(request.name, docker)
        if words:
            raise ForgeError(f"{err.problem} ({words})", err.fix, exit_code=err.exit_code) from None
        raise
    return started, seconds, result


def write_compose_file(request: ServeRequest, path: Path) -> Path:
    """Write ``compose_file(request)`` to ``path`` whole or not at all (a refused request writes nothing)."""
    text = compose_file(request)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, text)  # made next to it and renamed into place: whole or not at all, never through a link
    return path


def compose_file(request: ServeRequest) -> str:
    """The same service as a docker compose file, written by a YAML dumper (no value can add a key)."""
    import yaml

    check_request(request)
    if request.local:
        raise ForgeError("--compose writes a container service; --local has none", "pass --image TAG with --compose")
    user, hf_target = image_runtime(os.environ.get("VLLM_FORGE_DOCKER") or "docker", request.image)
    service: dict = {
        "image": request.image,
        "container_name": request.name,
        # `$$`: compose would substitute `$NAME` in a passed-through value (a chat template) from the shell
        "command": [a.replace("$", "$$") for a in server_args(request, bind_host="0.0.0.0", port=CONTAINER_PORT)],
        "ports": [f"{request.host}:{request.port}:{CONTAINER_PORT}"],
        "volumes": [str(Path(request.hf_cache).expanduser()) + ":" + hf_target],
    }
    flag = run_as(user)
    if flag:
        service["user"] = flag[1]
    if request.shm_size:
        service["shm_size"] = request.shm_size
    else:
        service["ipc"] = "host"
    names = [name for name in passthrough_env(request.env) if name != API_KEY_ENV]
    environment = list(names)  # by name: compose takes the value from the shell
    if request.api_key:  # the key itself is never written: compose reads it from the shell that runs it
        environment.append(API_KEY_ENV + "=${" + API_KEY_ENV + ":?export " + API_KEY_ENV + " first}")
    if environment:
        service["environment"] = environment
    if request.gpus != "none":
        device: dict = {"driver": "nvidia"}
        if request.gpus == "all":
            device["count"] = "all"
        else:
            device["device_ids"] = [g.strip() for g in request.gpus.split(",")]
        device["capabilities"] = ["gpu"]
        service["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    service["healthcheck"] = {
        "test": ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"],
        "interval": "10s",
        "timeout": "5s",
        "retries": 60,
    }
    service["restart"] = "unless-stopped"
    header = ("# Written by `invoke serve --compose` (vllm-forge). "
              "Start: docker compose up -d; stop: docker compose down\n")
    return header + yaml.safe_dump({"services": {request.name: service}}, sort_keys=False, default_flow_style=False,
                                   width=1000)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Serve a vLLM image and smoke-test it.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("--image", default="")
    p_run.add_argument("--local", action="store_true")
    p_run.add_argument("--model", required=True)
    p_run.add_argument("--tp", type=int, default=1)
    p_run.add_argument("--port", type=int, default=8000)
    p_run.add_argument("--host", default="127.0.0.1")
    p_run.add_argument("--gpus", default="all")
    p_run.add_argument("--api-key", default=None, help=argparse.SUPPRESS)  # refused: see refuse_key_on_command_line
    p_run.add_argument("--api-key-file", default=None, help=f"file holding the API key (default: ${API_KEY_ENV})")
    p_run.add_argument("--insecure", action="store_true")
    p_run.add_argument("--name", default=DEFAULT_NAME)
    p_run.add_argument("--timeout", type=float, default=600)
    p_run.add_argument("--docker", default=os.environ.get("VLLM_FORGE_DOCKER", "docker"))
    p_run.add_argument("--max-model-len", type=int, default=0)
    p_run.add_argument("--gpu-memory-utilization", type=float, default=0.0)
    p_run.add_argument("--served-model-name", default="")
    p_run.add_argument("--vllm-args", default="", help="more vLLM server flags, one quoted string")
    p_run.add_argument("--dry-run", action="store_true")
    p_stop = sub.add_parser("stop")
    p_stop.add_argument("--name", default=DEFAULT_NAME)
    p_stop.add_argument("--docker", default=os.environ.get("VLLM_FORGE_DOCKER", "docker"))
    args = parser.parse_args(argv)
    if args.cmd == "stop":
        print(stop(args.name, args.docker))
        return 0
    if args.api_key is not None:
        raise refuse_key_on_command_line()
    request = ServeRequest(
        model=args.model,
        image=args.image,
        local=args.local,
        tp=args.tp,
        port=args.port,
        host=args.host,
        gpus=args.gpus,
        api_key=read_api_key(args.api_key_file),
        insecure=args.insecure,
        name=args.name,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        served_model_name=args.served_model_name,
        extra_args=split_vllm_args(args.vllm_args),
    )
    if args.dry_run:
        print(shell_line(plan_serve(request, args.docker), request))
        return 0
    started, seconds, result = serve(request, docker=args.docker, timeout_s=args.timeout)
    print(f"healthy after {seconds:.1f}s at {started.url}; models {result.models}; reply {result.reply!r}")
    print(f"stop it with: python -m vllm_forge.serve.serve stop --name {started.name}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
