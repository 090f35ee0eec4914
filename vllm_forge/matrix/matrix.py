"""The CUDA x arch x mirror matrix the nox sessions run (``noxfile.py``), derived from compat's tables.

- image sessions: one per CUDA that compat knows an NGC build base, a CUDA runtime image, a torch
  wheel index and a default arch list for (``image-cu128``), baking that CUDA's default arch list;
- wheel sessions: a wheel is built with this machine's nvcc, so the sessions nox lists are the (CUDA, arch)
  pairs of that nvcc's CUDA and the archs of ``WHEEL_GPUS`` it can compile (``local_wheel_pairs``); the
  matrix for CI (``build_matrix``) holds every CUDA's pairs, the impossible ones marked with the reason;
- mirror: a profile (``vllm_forge/image/mirrors.py``) applied to whatever a session runs.

Nothing here builds: it computes names, verdicts and the task command lines.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.gpu import archs as archs_mod
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.image import mirrors

REPO_ROOT = Path(__file__).resolve().parents[2]

# The GPUs a lab typically builds wheels for, one per arch family; their archs come from compat.
WHEEL_GPUS = ("A100", "L40S", "H100", "B200", "RTX 5090", "DGX Spark")


def image_cudas() -> list[CudaRelease]:
    """CUDA versions an image can be baked for: those with every table row a bake reads."""
    return [cuda for cuda in compat.known_cudas()
            if compat.default_ngc_tag(cuda) and cuda.minor_str in compat.CUDA_RUNTIME_IMAGES
            and cuda.minor_str in compat.PYTORCH_WHEEL_INDEX and cuda.minor_str in compat.DEFAULT_ARCH_LIST]


def image_session_name(cuda: CudaRelease) -> str:
    return f"image-{cuda.tag}"


def wheel_archs() -> list[str]:
    caps = []
    for gpu in WHEEL_GPUS:
        model = compat.lookup_gpu(gpu)
        if model is None:  # a table edit removed it: drop it rather than fail `nox -l`
            continue
        if model.cc not in caps:
            caps.append(model.cc)
    return [str(cc) for cc in sorted(caps)]


def wheel_pairs() -> list[tuple[str, str]]:
    """(CUDA, arch) of every wheel session, as nox names them."""
    return [(str(cuda), arch) for cuda in image_cudas() for arch in wheel_archs()]


def local_cuda() -> CudaRelease | None:
    """The CUDA of the nvcc a local build uses (``toolchain.find_cuda_toolchain``), None without one."""
    from vllm_forge.gpu.toolchain import find_cuda_toolchain

    try:
        return find_cuda_toolchain().version
    except ForgeError:
        return None


def local_wheel_pairs(cuda: CudaRelease | None = None) -> list[tuple[str, str]]:
    """The wheel sessions that can run on this machine: its nvcc's CUDA (``cuda``: that one, for tests) and
    each arch of ``WHEEL_GPUS`` that CUDA compiles. None without an nvcc (or for a CUDA no session knows)."""
    cuda = cuda or local_cuda()
    if cuda is None or cuda.minor_release not in image_cudas():
        return []
    return [(cuda.minor_str, arch) for arch in wheel_archs() if arch_verdict(cuda, arch) is None]


def wheel_session_name(cuda: CudaRelease, arch: str) -> str:
    """The id nox gives the parametrized session (``wheel(cuda='12.8', arch='12.0')``)."""
    return f"wheel(cuda={cuda.minor_str!r}, arch={arch!r})"


def arch_verdict(cuda: CudaRelease, arch_spec: str) -> str | None:
    """None when CUDA ``cuda`` can compile every arch of ``arch_spec``, else the reason it cannot.

    A spec that is not an arch at all raises ForgeError (a user error, not a skip).
    """
    parsed = archs_mod.parse_arch_list(arch_spec)
    try:
        archs_mod.check_archs_for_cuda(parsed, cuda)
    except ForgeError as err:
        return err.problem
    return None


# --- session arguments (what follows `--` on the nox command line) -----------------------------------


@dataclass
class SessionArgs:
    arch: str | None
    rest: list[str]  # passed on to the task unchanged (--mirror, --dry-run, --ref, --vllm-src, --standin, ...)
    standin: bool = False  # --standin is among them: the bases are the TEST-ONLY stand-ins, with their CUDA


def parse_session_args(posargs: list[str]) -> SessionArgs:
    """Take out the flags a session itself reads (its arch list, to skip combinations its CUDA cannot
    build); everything else, the mirror included, goes to the invoke task, which resolves it once."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--arch")
    parser.add_argument("--cuda")
    known, rest = parser.parse_known_args(list(posargs))
    if known.cuda:
        raise ForgeError("--cuda is fixed by the session name", "run the session of that CUDA, e.g. nox -s image-cu128")
    return SessionArgs(known.arch, rest, standin="--standin" in rest)


def check_image_session(cuda: CudaRelease, args: SessionArgs) -> None:
    """What an image session for ``cuda`` refuses before running anything: archs that CUDA cannot compile, and
    stand-in bases of another CUDA; each in one line naming the session that would run it."""
    from vllm_forge.image.standin_images import STANDIN_CUDA

    if args.standin and not cuda.same_minor(STANDIN_CUDA):
        raise ForgeError(f"the TEST-ONLY stand-in bases have CUDA {STANDIN_CUDA}, not {cuda}",
                         f"run nox -s {image_session_name(STANDIN_CUDA)} -- {shlex.join(args.rest)}")
    spec = args.arch or compat.DEFAULT_ARCH_LIST[cuda.minor_str]
    reason = arch_verdict(cuda, spec)
    if reason:
        able = [other for other in image_cudas() if arch_verdict(other, spec) is None]
        fix = (f"run nox -s {image_session_name(able[-1])} -- --arch {shlex.quote(spec)}" if able
               else "pick archs one CUDA version can compile together (`invoke archs`)")
        raise ForgeError(reason, fix)


# --- the project's configuration, as the tasks see it --------------------------------------------------


def project_invoke_config(root: Path = REPO_ROOT) -> Any:
    """invoke's Config with invoke.yaml next to tasks.py and the INVOKE_* environment loaded."""
    import logging

    from invoke import Config

    log = logging.getLogger("invoke")
    level = log.level
    log.setLevel(logging.WARNING)  # nox logs at DEBUG: keep invoke's config tracing out of the output
    try:
        config = Config(project_location=str(root))
        config.load_project()
        config.load_shell_env()
    finally:
        log.setLevel(level)
    return config


def configured_mirror(invoke_config: Any = None) -> str:
    """``forge.mirror`` of the project (global by default)."""
    forge = invoke_config.get("forge", {}) if invoke_config is not None else {}
    return str((forge or {}).get("mirror") or "global")


def select_mirror(name: str | None, invoke_config: Any = None) -> mirrors.MirrorProfile:
    return mirrors.load_mirror(name or configured_mirror(invoke_config), mirrors.user_mirrors_from(invoke_config))


# --- task command lines ------------------------------------------------------------------------------


def image_argv(cuda: CudaRelease, args: SessionArgs) -> list[str]:
    """``invoke image`` for one image session: the whole chain for this CUDA and its default arch list."""
    arch = args.arch or compat.DEFAULT_ARCH_LIST[cuda.minor_str]
    return ["invoke", "image", "--cuda", cuda.minor_str, "--arch", arch, *args.rest]


def wheel_argv(cuda: CudaRelease, arch: str, args: SessionArgs) -> list[str]:
    """``invoke wheel``: clone (or reuse) → use-existing-torch → build-wheel → check-size for one pair."""
    return ["invoke", "wheel", "--cuda", cuda.minor_str, "--arch", arch, *args.rest]


# --- the whole matrix, for `nox -s matrix` ---------------------------------------------------------------


@dataclass
class MatrixEntry:
    session: str
    kind: str  # image | wheel
    cuda: CudaRelease
    arch: str
    mirror: str
    base_image: str
    runtime_image: str
    skip: str | None = None  # why this combination cannot work

    def as_json(self) -> dict[str, str]:
        return {"session": self.session, "cuda": self.cuda.minor_str, "arch": self.arch, "mirror": self.mirror,
                "base_image": self.base_image}


def build_matrix(profiles: list[mirrors.MirrorProfile], arch: str | None = None,
                 kinds: tuple[str, ...] = ("image", "wheel")) -> list[MatrixEntry]:
    """Every session x mirror; ``arch`` replaces the image sessions' default arch lists."""
    entries: list[MatrixEntry] = []
    for profile in profiles:
        for cuda in image_cudas():
            base, runtime = mirrors.default_images(cuda)
            base, runtime = mirrors.rewrite_image(base, profile), mirrors.rewrite_image(runtime, profile)
            if "image" in kinds:
                spec = arch or compat.DEFAULT_ARCH_LIST[cuda.minor_str]
                entries.append(MatrixEntry(image_session_name(cuda), "image", cuda, spec, profile.name, base,
                                           runtime, arch_verdict(cuda, spec)))
            if "wheel" in kinds:
                for wheel_arch in wheel_archs():
                    entries.append(MatrixEntry(wheel_session_name(cuda, wheel_arch), "wheel", cuda, wheel_arch,
                                               profile.name, base, runtime, arch_verdict(cuda, wheel_arch)))
    return entries


def matrix_profiles(names: list[str] | None, invoke_config: Any = None) -> list[mirrors.MirrorProfile]:
    """The named profiles, or every one known (built-in and invoke.yaml's)."""
    user: Mapping[str, Any] = mirrors.user_mirrors_from(invoke_config)
    return [mirrors.load_mirror(name, user) for name in (names or mirrors.known_mirror_names(user))]


def matrix_main(argv: list[str], invoke_config: Any = None, out=None) -> int:
    """`nox -s matrix -- [--json] [--mirror NAME ...] [--arch SPEC] [--kind image|wheel]`."""
    import json

    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="nox -s matrix --", description="Print the CUDA x arch x mirror matrix.")
    parser.add_argument("--json", action="store_true", help="a CI-ready JSON list of runnable sessions")
    parser.add_argument("--mirror", action="append", help="only this mirror profile (repeatable; default: all)")
    parser.add_argument("--arch", help="arch spec for the image sessions instead of each CUDA's default list")
    parser.add_argument("--kind", choices=("image", "wheel"), action="append", help="only image or wheel sessions")
    args = parser.parse_args(argv)
    entries = build_matrix(matrix_profiles(args.mirror, invoke_config), args.arch,
                           tuple(args.kind or ("image", "wheel")))
    runnable = [entry for entry in entries if entry.skip is None]
    if args.json:
        print(json.dumps([entry.as_json() for entry in runnable], indent=2), file=out)
        return 0
    for entry in runnable:
        print(f"{entry.session:36} mirror={entry.mirror:10} arch={entry.arch!r:34} base={entry.base_image}", file=out)
    skipped = [entry for entry in entries if entry.skip]
    reasons: dict[str, tuple[str, list[str]]] = {}
    for entry in skipped:
        reasons.setdefault(entry.session, (entry.skip, []))[1].append(entry.mirror)
    for session, (reason, names) in reasons.items():
        print(f"skip {session} (mirror {', '.join(names)}): {reason}", file=out)
    print(f"{len(runnable)} runnable, {len(skipped)} skipped "
          f"({len(image_cudas())} CUDA versions: {', '.join(str(c) for c in image_cudas())}; "
          f"wheel archs {', '.join(wheel_archs())})",
          file=out)
    return 0


def main(argv=None) -> int:
    return matrix_main(list(sys.argv[1:] if argv is None else argv), project_invoke_config())


if __name__ == "__main__":
    sys.exit(run_main(main))
