"""Which docker client bakes, and whether its engine answers.

A client with the buildx plugin builds with ``docker buildx build``; one without it, where its built-in BuildKit
works (Docker 20.10-23), with ``DOCKER_BUILDKIT=1 docker build``. ``--docker`` / ``$VLLM_FORGE_DOCKER`` name one.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vllm_forge.core.errors import ForgeError


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


def engine_reachable(docker: str = "docker") -> bool:
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
