"""What each run leaves under ``build/reports/``: the JSON of its report, for `invoke report` and `--plot`.

A task records the very dictionary its text report (or ``--json``) is printed from, so the HTML page and
every figure show the numbers the terminal showed. One file per report:

    build/reports/<kind>-<YYYYmmdd-HHMMSS>-<pid>-<4 hex>.json
    {"format": 1, "kind": "audit", "created": "2026-12-06T18:21:36Z", "ns": <time.time_ns()>,
     "argv": ["invoke", "audit", ...], "run": "<id shared by the records of one command line>",
     "data": {... the report's JSON ...}}

Kinds (``KINDS``): ``run`` (a pipeline: the resolved configuration and where each value came from, each step's
printed commands, its time and outcome), ``build-times`` (a build's compile units from ``.ninja_log`` and nvcc's
per-arch times), ``wheel-size``, ``image-size`` (check-size --image's split over the base), ``audit`` (audit
--json), ``nccl`` (nccl-diagnose --json, or nccl-test --json, with ``overlays``: [name, diagnosis] pairs when
--overlay was given). The newest ``KEEP`` files of each kind are kept.
``$VLLM_FORGE_RECORD_DIR`` moves the directory (tests use it). Stdlib only.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

RECORD_FORMAT = 1
RECORD_DIR_ENV = "VLLM_FORGE_RECORD_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
KINDS = {
    "run": "a pipeline run: configuration, each step's commands, time and outcome",
    "build-times": "a build's slowest compile units (.ninja_log) and device-compile time per arch (nvcc --time)",
    "wheel-size": "check-size: a wheel against its size limit",
    "image-size": "check-size --image: the image over its base, split into parts",
    "audit": "audit: each file's verdict and kernel groups per target GPU",
    "nccl": "nccl-diagnose / nccl-test: bus bandwidth per message size, link model, root cause (and --overlay's runs)",
}
KEEP = 20
# One id per process: the records one command line writes (a run and its build times) share it.
RUN_ID = uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class Record:
    kind: str
    created: str  # UTC, ISO 8601
    ns: int  # time.time_ns() when written: orders records written within one second
    argv: list[str]
    run: str
    data: dict
    path: Path

    @property
    def command(self) -> str:
        import shlex

        return " ".join(shlex.quote(word) for word in self.argv)


def record_dir() -> Path:
    return Path(os.environ.get(RECORD_DIR_ENV) or REPO_ROOT / "build" / "reports").expanduser()


def _argv() -> list[str]:
    name = Path(sys.argv[0]).name if sys.argv else ""
    words = sys.argv[1:] if sys.argv else []
    return ["invoke", *words] if name in ("invoke", "inv", "__main__.py") else [name, *words]


def save(kind: str, data: dict, *, directory: Path | None = None, argv: list[str] | None = None) -> Path:
    """Write one record (atomically: a reader never sees half a file) and drop the oldest beyond ``KEEP``.
    OSError (a read-only or full build/) goes to the caller, which reports it without failing the task."""
    if kind not in KINDS:
        raise KeyError(kind)  # a programming error, not a user's
    directory = Path(directory) if directory else record_dir()
    directory.mkdir(parents=True, exist_ok=True)
    ns = time.time_ns()
    now = ns / 1e9
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    path = directory / f"{kind}-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:4]}.json"
    body = {"format": RECORD_FORMAT, "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "ns": ns,
            "argv": argv if argv is not None else _argv(), "run": RUN_ID, "data": data}
    partial = path.with_name("." + path.name + ".partial")
    partial.write_text(json.dumps(body, indent=1, default=str) + "\n")
    os.replace(partial, path)
    for old in records_of(kind, directory)[KEEP:]:
        old.path.unlink(missing_ok=True)
    return path


def try_save(kind: str, data: dict, **kwargs) -> tuple[Path | None, str]:
    """``save``, for tasks: (path, "") or (None, why it could not be written)."""
    try:
        return save(kind, data, **kwargs), ""
    except OSError as err:
        return None, f"not recorded under {kwargs.get('directory') or record_dir()}: {err.strerror or err}"


def load(path: Path) -> Record | None:
    """One record, or None for a file that is not one (torn, foreign, of a newer format)."""
    try:
        body = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or body.get("format") != RECORD_FORMAT or body.get("kind") not in KINDS \
            or not isinstance(body.get("data"), dict):
        return None
    ns = body.get("ns")
    return Record(body["kind"], str(body.get("created", "")), ns if isinstance(ns, int) else 0,
                  [str(w) for w in body.get("argv") or []], str(body.get("run", "")), body["data"], Path(path))


def records_of(kind: str, directory: Path | None = None) -> list[Record]:
    """Every readable record of ``kind``, newest first."""
    directory = Path(directory) if directory else record_dir()
    if not directory.is_dir():
        return []
    found = [r for r in (load(p) for p in directory.glob(f"{kind}-*.json")) if r is not None and r.kind == kind]
    return sorted(found, key=lambda r: (r.ns, r.path.name), reverse=True)


def latest(kind: str, directory: Path | None = None) -> Record | None:
    found = records_of(kind, directory)
    return found[0] if found else None
