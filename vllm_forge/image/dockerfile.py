"""The Dockerfiles a bake builds from: this repo's docker/Dockerfile (the forge recipe) or a checkout's own,
the stages each has for a bake's targets, and what one declares (ARGs and their defaults, stages, secrets).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from pathlib import Path

from vllm_forge.core.errors import ForgeError
from vllm_forge.core.package import PACKAGE_ROOT

FORGE_DOCKERFILE = PACKAGE_ROOT / "docker" / "Dockerfile"
TARGETS = ("build", "wheel", "runtime")
# Our target name -> the stage of vLLM's own Dockerfile that plays that part.
UPSTREAM_TARGETS = {"build": "build", "wheel": "build", "runtime": "vllm-openai"}
# --non-root: the runtime target's unprivileged variant (vLLM's own is vllm-openai-nonroot).
NON_ROOT_STAGES = {"forge": "runtime-nonroot", "upstream": "vllm-openai-nonroot"}
UPSTREAM_DIST_DIR = "/workspace/dist"  # where vLLM's build stage leaves its wheel
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
