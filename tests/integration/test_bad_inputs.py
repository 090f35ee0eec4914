"""Every bad input, across all tasks: one line that says the fix, a non-zero exit code, no traceback,
and nothing lost or half-written. docs/errors.md is the table of these cases (one row per `Case.id`).

Each case runs the real CLI (`python -m invoke ...`) in a scratch directory whose every file is hashed
before and after: a case passes only if that tree is exactly as it was (a checkout with local changes
keeps them, a read-only or full output dir gets no half-written wheel, a refused request writes nothing).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import docker_available, require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "errors.md"
DOWN_DAEMON = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
# A docker client whose engine is down: `docker version` answers for the client, everything else fails.
FAKE_DOCKER = f"""#!/bin/sh
if [ "$1" = version ]; then echo 20.10.24; fi
echo "{DOWN_DAEMON}" >&2
exit 1
"""
# `python -m invoke` with no nvcc anywhere: no system toolkit, none from pip's nvidia packages, none on PATH.
HIDE_NVCC = (
    "import sys, vllm_forge.gpu.toolchain as t; t.SYSTEM_CUDA_ROOTS = (); t._pypi_cuda_roots = lambda: []; "
    "from invoke.main import program; program.run(['invoke', *sys.argv[1:]])"
)


def run_cli(args, *, cwd=REPO, env=None, hide_nvcc=False, timeout=120):
    env = {**os.environ, "COLUMNS": "400", **(env or {})}
    argv = [sys.executable, "-m", "invoke", *args]
    if hide_nvcc:
        argv = [sys.executable, "-c", HIDE_NVCC, *args]
        env = {k: v for k, v in env.items() if k not in ("CUDA_HOME", "CUDA_PATH", "CUDACXX")}
        env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def snapshot(root: Path) -> dict[str, str]:
    """Every file, directory and link under ``root`` with a digest of its content."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class Scratch:
    """What a case's ``prepare`` gets: the scratch dir, the sources to copy, and what it must clean up."""

    tmp: Path
    checkout: Path  # a clean clone of the embedded miniature vLLM (copy it before changing it)
    remote: str  # file:// URL of the miniature's bare repo
    subs: dict[str, str] = field(default_factory=dict)  # {name} in the argv
    env: dict[str, str] = field(default_factory=dict)
    held: list = field(default_factory=list)  # sockets to close after the run
    mounts: list[Path] = field(default_factory=list)  # tmpfs mounts to unmount after the run

    def copy_checkout(self, name: str = "co") -> Path:
        dest = self.tmp / name
        shutil.copytree(self.checkout, dest, symlinks=True)
        self.subs[name] = str(dest)
        return dest

    def tmpfs(self, name: str, options: str) -> Path:
        point = self.tmp / name
        point.mkdir()
        if os.geteuid() != 0:
            pytest.skip("a tmpfs mount needs root")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if proc.returncode != 0:  # root without CAP_SYS_ADMIN (an unprivileged container): nothing to install
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        self.mounts.append(point)
        return point


@dataclass
class Case:
    id: str
    args: list[str]  # {tmp}, {co}, {remote}, {port}, {docker} are filled in
    words: str  # must appear in the error line
    keeps: str  # what is left untouched (docs/errors.md's last column)
    prepare: Callable[[Scratch], None] | None = None
    needs: tuple[str, ...] = ()  # nvcc | docker | nogpu
    code: int = 2
    cwd: str = ""  # "{tmp}": run there (a project with its own invoke.yaml)
    hide_nvcc: bool = False


# --- case preparations -------------------------------------------------------------------------------


def with_checkout(s: Scratch) -> None:
    s.copy_checkout()


def with_local_changes(s: Scratch) -> None:
    co = s.copy_checkout()
    (co / "setup.py").write_text((co / "setup.py").read_text() + "\n# my edit, not committed\n")
    (co / "notes.txt").write_text("my notes")


def with_builder_without_buildx(s: Scratch) -> None:
    s.copy_checkout()
    s.env.update(INVOKE_FORGE_BUILDER="gpu-builders", VLLM_FORGE_DOCKER="/usr/bin/docker")


def with_foreign_dir(s: Scratch) -> None:
    (s.tmp / "co").mkdir()
    (s.tmp / "co" / "precious.txt").write_text("keep me")


def with_other_repo(s: Scratch) -> None:
    s.copy_checkout()
    subprocess.run(["git", "clone", "-q", "--bare", s.remote, str(s.tmp / "other.git")], check=True)


def with_torch_checkout(s: Scratch) -> None:
    co = s.copy_checkout()
    setup = co / "setup.py"
    setup.write_text("import torch  # builds against torch, like vLLM's own\n" + setup.read_text())
    subprocess.run(["git", "-C", str(co), "commit", "-qam", "needs torch"], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


def _fake_torch(s: Scratch, version: str, cuda: str | None) -> None:
    """A torch the preflight reads (torch/version.py and its metadata) without any of torch itself."""
    site = s.tmp / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("")
    (site / "torch" / "version.py").write_text(f"__version__ = '{version}'\ncuda = {cuda!r}\nhip = None\n")
    (site / "torch-2.6.0.dist-info").mkdir()
    metadata = site / "torch-2.6.0.dist-info" / "METADATA"
    metadata.write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    s.env["PYTHONPATH"] = str(site)


def with_cpu_torch(s: Scratch) -> None:
    with_torch_checkout(s)
    _fake_torch(s, "2.6.0+cpu", None)


def with_torch_for_cuda_12(s: Scratch) -> None:
    with_torch_checkout(s)
    _fake_torch(s, "2.6.0+cu126", "12.6")


def with_old_gcc(s: Scratch) -> None:
    with_torch_checkout(s)
    _fake_torch(s, "2.11.0+cu130", "13.0")
    gxx = s.tmp / "g++-9"
    gxx.write_text("#!/bin/sh\necho 'g++ (GCC) 9.4.0'\necho 'Copyright (C) 2019 Free Software Foundation, Inc.'\n")
    gxx.chmod(0o755)
    s.env.update(CXX=str(gxx), CUDAHOSTCXX=str(gxx))


def _commit(co: Path, message: str) -> None:
    subprocess.run(["git", "-C", str(co), "commit", "-qam", message], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


def with_unmet_build_requirement(s: Scratch) -> None:
    co = s.copy_checkout()
    with (co / "requirements" / "build.txt").open("a") as handle:
        handle.write("setuptools-rust>=99\n")
    _commit(co, "a build requirement this machine lacks")


def with_no_version_source(s: Scratch) -> None:
    co = s.copy_checkout()
    shutil.rmtree(co / ".git")
    (co / "vllm" / "_version.py").unlink()
    s.env["SETUPTOOLS_SCM_PRETEND_VERSION"] = ""


def with_unreachable_pin(s: Scratch) -> None:
    co = s.copy_checkout()
    with (co / "CMakeLists.txt").open("a") as handle:
        handle.write("include(FetchContent)\nFetchContent_Declare(cutlass GIT_REPOSITORY "
                     "https://git.invalid/nvidia/cutlass.git GIT_TAG v4.4.2)\n")
    _commit(co, "a dependency nobody serves")


def with_read_only_dist(s: Scratch) -> None:
    s.copy_checkout()
    if os.geteuid() == 0:  # root writes through permission bits: a read-only mount it is
        s.tmpfs("dist", "ro,size=1m")
    else:
        (s.tmp / "dist").mkdir()
        (s.tmp / "dist").chmod(0o555)


def with_full_dist(s: Scratch) -> None:
    s.copy_checkout()
    dist = s.tmpfs("dist", "size=1m")
    (dist / "vllm-0.0.9-cp38-abi3-linux_x86_64.whl").write_bytes(b"yesterday's wheel" * 100)


def with_file_as_dist(s: Scratch) -> None:
    s.copy_checkout()
    (s.tmp / "dist").write_text("not a directory")


def with_garbage(name: str, data: bytes) -> Callable[[Scratch], None]:
    def prepare(s: Scratch) -> None:
        (s.tmp / name).write_bytes(data)

    return prepare


def truncated_wheel() -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("vllm/_C.abi3.so", os.urandom(20_000))
        archive.writestr("vllm/__init__.py", "")
    return buffer.getvalue()[:8_000]


def with_other_files(s: Scratch) -> None:
    (s.tmp / "etc").mkdir()
    (s.tmp / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (s.tmp / "etc" / "hostname").write_text("node-a\n")


def with_empty_dir(s: Scratch) -> None:
    (s.tmp / "empty").mkdir()
    (s.tmp / "empty" / "README").write_text("not vLLM")


def with_yaml(text: str) -> Callable[[Scratch], None]:
    def prepare(s: Scratch) -> None:
        for name in ("tasks.py", "vllm_forge"):
            os.symlink(REPO / name, s.tmp / name)
        (s.tmp / "invoke.yaml").write_text(text)

    return prepare


def with_fake_docker(s: Scratch) -> None:
    fake = s.tmp / "docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(0o755)
    s.env["VLLM_FORGE_DOCKER"] = str(fake)


def with_fake_docker_and_checkout(s: Scratch) -> None:
    with_fake_docker(s)
    s.copy_checkout()


def with_busy_port(s: Scratch) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    s.held.append(sock)
    s.subs["port"] = str(sock.getsockname()[1])


def free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def with_hanging_server(s: Scratch) -> None:
    """A `vllm` whose server never answers /health (it sleeps), for `serve --local`."""
    server = s.tmp / "fakevllm" / "vllm" / "entrypoints" / "openai"
    server.mkdir(parents=True)
    for init in (server.parents[1], server.parent, server):
        (init / "__init__.py").write_text("")
    (server / "api_server.py").write_text("import time\nprint('loading the model...', flush=True)\ntime.sleep(120)\n")
    (s.tmp / "model").mkdir()
    (s.tmp / "model" / "config.json").write_text("{}")
    s.env["PYTHONPATH"] = str(s.tmp / "fakevllm")
    s.subs["port"] = free_port()


def with_free_port(s: Scratch) -> None:
    s.subs["port"] = free_port()


def with_no_vllm(s: Scratch) -> None:
    with_free_port(s)
    s.env["PYTHONPATH"] = ""


def with_deps_cache(s: Scratch) -> None:
    """A checkout and an empty fetch-deps cache inside the scratch dir (INVOKE_FORGE_CACHE_DIR)."""
    s.copy_checkout()
    (s.tmp / "cache" / "deps").mkdir(parents=True)
    s.env["INVOKE_FORGE_CACHE_DIR"] = str(s.tmp / "cache")


def _tarball(path: Path, files: dict[str, bytes]) -> Path:
    import io
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def with_tarballs(s: Scratch) -> None:
    """Tarballs a lab might have: one of nothing declared, one that climbs out, another minidep."""
    with_deps_cache(s)
    _tarball(s.tmp / "usb" / "bob-stuff.tar.gz", {"a.h": b""})
    _tarball(s.tmp / "evil" / "minidep-v1.0.0.tar.gz", {"include/minidep.h": b"", "../../planted.h": b"x"})
    _tarball(s.tmp / "other" / "minidep-v1.0.0.tar.gz", {"include/minidep.h": b"// another copy\n"})


def with_imported_dep(s: Scratch) -> None:
    """The cache holds minidep imported (unverified) from a tarball."""
    from vllm_forge.deps import dep_import
    from vllm_forge.source.vllm_tree import inspect_tree

    with_tarballs(s)
    first = _tarball(s.tmp / "usb" / "minidep-v1.0.0.tar.gz", {"include/minidep.h": b"// first copy\n"})
    plan = dep_import.plan_imports(inspect_tree(s.tmp / "co"), [str(first)])
    assert [o.result for o in dep_import.run_imports(plan, s.tmp / "cache")] == ["imported"]


def with_open_token_file(s: Scratch) -> None:
    with_checkout(s)
    token = s.tmp / "client.token"
    token.write_text("a-client-token\n")
    token.chmod(0o644)


def with_checkout_and_no_token(s: Scratch) -> None:
    with_checkout(s)
    with_free_port(s)
    s.env["VLLM_FORGE_DIST_TOKEN"] = ""


def with_farm_token(s: Scratch) -> None:
    s.env["VLLM_FORGE_FARM_TOKEN"] = "a-server-token"


UNTOUCHED = "nothing is created or changed"
CHECKOUT_KEPT = "the checkout (no torch pins removed, no build dir)"

CASES = [
    # --- archs, CUDA versions, parallelism (build-wheel / plan / archs / demo) ---
    Case("unknown-gpu-name", ["build-wheel", "--arch", "rtx9999", "--vllm-src", "{co}"],
         "neither a CUDA arch nor a GPU name", CHECKOUT_KEPT, with_checkout),
    Case("unknown-arch", ["build-wheel", "--arch", "sm_999", "--vllm-src", "{co}"],
         "not an arch any known CUDA toolkit can compile", CHECKOUT_KEPT, with_checkout, needs=("nvcc",)),
    Case("arch-too-new-for-cuda", ["build-wheel", "--arch", "12.0", "--cuda", "12.6"], "needs CUDA 12.8", UNTOUCHED),
    Case("arch-dropped-by-cuda", ["build-wheel", "--arch", "7.0", "--cuda", "13.0"], "last CUDA that can is 12.9",
         UNTOUCHED),
    Case("unknown-cuda", ["build-wheel", "--arch", "12.0", "--cuda", "11.2"], "not a version this tool knows",
         UNTOUCHED),
    Case("archs-unknown-cuda", ["archs", "--cuda", "99.1"], "not a version this tool knows", UNTOUCHED),
    Case("cuda-is-not-local-nvcc", ["build-wheel", "--arch", "12.0", "--cuda", "12.8", "--vllm-src", "{co}"],
         "is CUDA 13.0", CHECKOUT_KEPT, with_checkout, needs=("nvcc13",)),
    Case("arch-auto-without-gpu", ["build-wheel", "--arch", "auto", "--vllm-src", "{co}"], "found no NVIDIA GPU",
         CHECKOUT_KEPT, with_checkout, needs=("nogpu",)),
    Case("demo-typo-in-arch", ["demo", "--arch", "rtx9999", "--dist-dir", "{tmp}/dist"],
         "neither a CUDA arch nor a GPU name", "no clone, no build: it fails before the first step"),
    Case("max-jobs-not-a-number", ["build-wheel", "--arch", "12.0", "--max-jobs", "lots"],
         "--max-jobs must be a whole number", UNTOUCHED),
    Case("max-jobs-env-not-a-number", ["plan"], "INVOKE_FORGE_MAX_JOBS must be a whole number", UNTOUCHED,
         lambda s: s.env.update(INVOKE_FORGE_MAX_JOBS="lots")),
    Case("max-jobs-negative", ["build-wheel", "--arch", "12.0", "--max-jobs", "-3"], "--max-jobs cannot be negative",
         UNTOUCHED),
    Case("max-jobs-over-memory", ["build-wheel", "--arch", "12.0", "--max-jobs", "10000"], "GiB",
         UNTOUCHED),
    Case("unknown-build-type", ["build-wheel", "--arch", "12.0", "--build-type", "Fastest"], "build type", UNTOUCHED),
    Case("unknown-compile-cache", ["build-wheel", "--arch", "12.0", "--compile-cache", "distcc"], "compile cache",
         UNTOUCHED),
    # --- the checkout and the local toolchain (build-wheel, use-existing-torch) ---
    Case("missing-checkout", ["build-wheel", "--arch", "12.0", "--vllm-src", "{tmp}/nope"],
         "not a vLLM checkout", UNTOUCHED),
    Case("not-a-vllm-tree", ["use-existing-torch", "--vllm-src", "{tmp}/empty"], "not a vLLM source tree",
         "the directory named", with_empty_dir),
    Case("no-nvcc", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dist-dir", "{tmp}/dist"],
         "no CUDA compiler (nvcc) was found", CHECKOUT_KEPT + "; no dist/", with_checkout, hide_nvcc=True),
    Case("no-torch", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dist-dir", "{tmp}/dist"],
         "torch is not installed", CHECKOUT_KEPT, with_torch_checkout, needs=("nvcc", "notorch")),
    Case("cpu-torch", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dist-dir", "{tmp}/dist"],
         "Unsupported platform", CHECKOUT_KEPT, with_cpu_torch, needs=("nvcc", "notorch")),
    Case("torch-for-another-cuda", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dist-dir", "{tmp}/dist"],
         "libcudart.so.13", CHECKOUT_KEPT, with_torch_for_cuda_12, needs=("nvcc13", "notorch")),
    Case("gcc-too-old-for-torch", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dist-dir",
                                   "{tmp}/dist"],
         "headers need gcc 11.3", CHECKOUT_KEPT, with_old_gcc, needs=("nvcc13", "notorch")),
    Case("unmet-build-requirements", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dist-dir",
                                      "{tmp}/dist"],
         "missing setuptools-rust>=99", CHECKOUT_KEPT, with_unmet_build_requirement, needs=("nvcc",)),
    Case("no-version-source", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dist-dir", "{tmp}/dist"],
         "SETUPTOOLS_SCM_PRETEND_VERSION", CHECKOUT_KEPT, with_no_version_source, needs=("nvcc",)),
    Case("git-dependency-unreachable", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dist-dir",
                                        "{tmp}/dist"],
         "neither cached nor reachable", CHECKOUT_KEPT, with_unreachable_pin, needs=("nvcc",)),
    Case("unknown-target", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--targets", "_flash",
                            "--dist-dir", "{tmp}/dist"],
         "is not a target of this build", CHECKOUT_KEPT, with_checkout, needs=("nvcc",)),
    Case("ngc-torch-not-the-pin", ["bake", "--base", "ngc", "--vllm-src", "{co}", "--dry-run"],
         "but vLLM 0.1.0 pins torch 2.6.0", CHECKOUT_KEPT, with_checkout),
    Case("pinned-torch-not-built-for-cuda", ["bake", "--base", "cuda", "--cuda", "12.8", "--vllm-src", "{co}",
                                             "--dry-run"],
         "publishes for CUDA 11.8, 12.4, 12.6, not 12.8", CHECKOUT_KEPT, with_checkout),
    Case("read-only-output-dir", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dist-dir", "{tmp}/dist"],
         "cannot write to the output dir", CHECKOUT_KEPT + "; dist/ as it was", with_read_only_dist,
         needs=("nvcc",)),
    Case("full-output-dir", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dist-dir", "{tmp}/dist"],
         "MB free", CHECKOUT_KEPT + "; yesterday's wheel in dist/", with_full_dist, needs=("nvcc",)),
    Case("output-dir-is-a-file", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dist-dir", "{tmp}/dist"],
         "cannot write to the output dir", CHECKOUT_KEPT + "; the file", with_file_as_dist, needs=("nvcc",)),
    # --- clone ---
    Case("malformed-ref", ["clone", "--ref", "bad..ref", "--checkout-dir", "{tmp}/co"], "not a valid git ref",
         UNTOUCHED),
    Case("malformed-repo-url", ["clone", "--repo", "not a url", "--checkout-dir", "{tmp}/co"],
         "not a git repository URL", UNTOUCHED),
    Case("unreachable-repo", ["clone", "--repo", "file:///nonexistent/vllm.git", "--checkout-dir", "{tmp}/co"],
         "cannot read", UNTOUCHED),
    Case("unknown-ref", ["clone", "--repo", "{remote}", "--ref", "v9.9.9", "--checkout-dir", "{tmp}/co"],
         "neither a branch nor a tag", UNTOUCHED),
    Case("checkout-with-local-changes", ["clone", "--repo", "{remote}", "--ref", "main", "--checkout-dir", "{co}"],
         "has local changes", "the edited setup.py and the untracked notes.txt", with_local_changes),
    Case("checkout-dir-not-git", ["clone", "--repo", "{remote}", "--ref", "main", "--checkout-dir", "{tmp}/co"],
         "is not a git checkout", "the directory and its files", with_foreign_dir),
    Case("checkout-of-another-repo", ["clone", "--repo", "{tmp}/other.git", "--ref", "main", "--checkout-dir", "{co}"],
         "is a checkout of", "the checkout", with_other_repo),
    Case("checkout-dir-under-a-file", ["clone", "--repo", "{remote}", "--ref", "main", "--checkout-dir",
                                       "{tmp}/afile/vllm"], "a file is in the way", "the file",
         with_garbage("afile", b"a file"), code=1),
    Case("full-disk-during-clone", ["clone", "--repo", "{remote}", "--ref", "main", "--checkout-dir", "{tmp}/disk/co"],
         "No space left on device", "no `.co.partial` is left on the disk", lambda s: s.tmpfs("disk", "size=64k"),
         code=1),
    Case("unknown-mirror", ["clone", "--mirror", "nowhere", "--checkout-dir", "{tmp}/co"],
         "mirror profile 'nowhere' is not defined", UNTOUCHED),
    # --- configuration files ---
    Case("invoke-yaml-not-yaml", ["plan"], "is not valid YAML (line 3", "invoke.yaml",
         with_yaml("forge:\n  arch: [unclosed\n"), cwd="{tmp}"),
    Case("invoke-yaml-unknown-key", ["plan"], "unknown forge key", "invoke.yaml",
         with_yaml("forge:\n  ach: '9.0'\n"), cwd="{tmp}"),
    # --- wheels and binaries (check-size, audit) ---
    Case("no-wheel-in-dist", ["check-size", "--dist-dir", "{tmp}/empty"], "no wheel found", UNTOUCHED,
         with_empty_dir),
    Case("corrupt-wheel-size", ["check-size", "--wheel", "{tmp}/vllm-0.1.0-cp38-abi3-linux_x86_64.whl"],
         "not a readable wheel", "the wheel", with_garbage("vllm-0.1.0-cp38-abi3-linux_x86_64.whl", truncated_wheel())),
    Case("corrupt-wheel-audit", ["audit", "{tmp}/vllm-0.1.0-cp38-abi3-linux_x86_64.whl", "--arch", "12.0"],
         "not a readable wheel", "the wheel", with_garbage("vllm-0.1.0-cp38-abi3-linux_x86_64.whl", truncated_wheel())),
    Case("audit-not-elf", ["audit", "{tmp}/notes.txt", "--arch", "12.0"], "is not an ELF file, a wheel",
         "the file", with_garbage("notes.txt", b"just text\n")),
    Case("audit-truncated-so", ["audit", "{tmp}/_C.abi3.so", "--arch", "12.0"], "is truncated", "the file",
         with_garbage("_C.abi3.so", (REPO / "tests/fixtures/h200x2/k_sm_90").read_bytes()[:300])),
    Case("audit-missing-path", ["audit", "{tmp}/nope.so", "--arch", "12.0"], "does not exist", UNTOUCHED),
    Case("audit-nothing-to-audit", ["audit", "--arch", "12.0"], "give either PATH or --image", UNTOUCHED),
    # --- Docker (bake, serve, inspect, stop, check-size --image, doctor --image) ---
    Case("no-docker-engine-bake", ["bake", "--vllm-src", "{co}", "--target", "wheel", "--dist-dir", "{tmp}/dist"],
         "no Docker engine answers", CHECKOUT_KEPT + "; no dist/", with_fake_docker_and_checkout),
    Case("no-docker-client", ["bake", "--vllm-src", "{co}", "--docker", "{tmp}/no/docker"], "does not exist",
         CHECKOUT_KEPT, with_checkout),
    Case("no-docker-engine-serve", ["serve", "--image", "vllm-forge/vllm:x", "--model", "m", "--port", "{port}"],
         "no Docker engine answers", UNTOUCHED, lambda s: (with_fake_docker(s), with_free_port(s))),
    Case("no-docker-engine-inspect", ["inspect", "vllm-forge/vllm:x"], "no Docker engine answers", UNTOUCHED,
         with_fake_docker),
    Case("no-docker-engine-image-size", ["check-size", "--image", "vllm-forge/vllm:x"], "no Docker engine answers",
         UNTOUCHED, with_fake_docker),
    Case("no-docker-engine-doctor", ["doctor", "--image", "vllm-forge/vllm:x"], "no Docker engine answers",
         UNTOUCHED, with_fake_docker),
    Case("no-docker-engine-stop", ["stop", "--name", "forge-never-started"], "no Docker engine answers",
         UNTOUCHED, with_fake_docker),
    Case("credentials-in-build-arg", ["bake", "--vllm-src", "{co}", "--build-arg", "IDX=https://u:pw@host/simple",
                                      "--dry-run"], "carries credentials", CHECKOUT_KEPT, with_checkout,
         needs=("docker",)),
    Case("push-without-tag", ["bake", "--vllm-src", "{co}", "--push", "--dry-run"], "--push needs a registry tag",
         CHECKOUT_KEPT, with_checkout, needs=("docker",)),
    Case("unknown-bake-target", ["bake", "--vllm-src", "{co}", "--target", "dev", "--dry-run"],
         "is not a stage of this recipe", CHECKOUT_KEPT, with_checkout, needs=("docker",)),
    Case("missing-ca-bundle", ["bake", "--vllm-src", "{co}", "--ca-bundle", "{tmp}/ca.pem", "--dry-run"],
         "is not a file", CHECKOUT_KEPT, with_checkout, needs=("docker",)),
    Case("bake-unknown-mirror", ["bake", "--vllm-src", "{co}", "--mirror", "nowhere", "--dry-run"],
         "mirror profile 'nowhere' is not defined", CHECKOUT_KEPT, with_checkout),
    # --- serve ---
    Case("public-bind-without-api-key", ["serve", "--image", "vllm-forge/vllm:x", "--model", "m", "--host", "0.0.0.0"],
         "without --api-key", "nothing is started", lambda s: s.env.update(VLLM_API_KEY="")),
    Case("port-in-use", ["serve", "--local", "--model", "m", "--port", "{port}"], "is already in use",
         "the program on that port; nothing is started", with_busy_port),
    Case("port-not-a-port", ["serve", "--image", "vllm-forge/vllm:x", "--model", "m", "--port", "70000"],
         "is not a TCP port", "nothing is started"),
    Case("port-not-a-number", ["serve", "--image", "vllm-forge/vllm:x", "--model", "m", "--port", "abc"],
         "--port needs a whole number", "nothing is started"),
    Case("model-path-missing", ["serve", "--image", "vllm-forge/vllm:x", "--model", "{tmp}/models/qwen"],
         "looks like a path", "nothing is started"),
    Case("serve-without-image", ["serve", "--model", "m"], "--image TAG", "nothing is started"),
    Case("tp-zero", ["serve", "--image", "vllm-forge/vllm:x", "--model", "m", "--tp", "0"], "--tp must be 1 or more",
         "nothing is started"),
    Case("gpus-not-a-list", ["serve", "--image", "vllm-forge/vllm:x", "--model", "m", "--gpus", "first"],
         "is not all, none or a list", "nothing is started"),
    Case("compose-for-local", ["serve", "--local", "--model", "m", "--compose", "--compose-file", "{tmp}/c.yaml"],
         "--compose writes a container service", "no compose file is written"),
    Case("server-never-healthy", ["serve", "--local", "--model", "{tmp}/model", "--port", "{port}", "--timeout", "3",
                                  "--name", "forge-bad-inputs-hang"], "did not answer within 3s",
         "the hung server is stopped; its log is kept in build/serve/", with_hanging_server, code=1),
    Case("server-exits-at-start", ["serve", "--local", "--model", "m", "--port", "{port}", "--name",
                                   "forge-bad-inputs-exit"], "exited before it became healthy",
         "its log is kept in build/serve/", with_no_vllm, code=1),
    # --- diagnostics and offline deps ---
    Case("doctor-missing-host-file", ["doctor", "--host-file", "{tmp}/host.txt"], "is not a file", UNTOUCHED),
    Case("nccl-diagnose-missing-file", ["nccl-diagnose", "{tmp}/rank0.log"], "is not a file", UNTOUCHED),
    Case("nccl-diagnose-no-files", ["nccl-diagnose"], "nccl-diagnose needs the files to read", UNTOUCHED),
    Case("nccl-diagnose-no-nccl-files", ["nccl-diagnose", "{tmp}/etc"], "none of the 2 file(s) read is an NCCL log",
         "the files", with_other_files, code=1),
    Case("nccl-test-bad-sizes", ["nccl-test", "--sizes", "8:lots", "--dry-run"], "is not a size", UNTOUCHED),
    # --- figures and the report page (issue 30) ---
    Case("plot-format-unknown", ["nccl-diagnose", "{tmp}/rank0.log", "--plot", "{tmp}/busbw.jpg"],
         "cannot tell the format from .jpg", UNTOUCHED),
    Case("overlay-without-plot", ["nccl-diagnose", "{tmp}/rank0.log", "--overlay", "{tmp}/healthy"],
         "--overlay lays runs over the --plot figure", UNTOUCHED),
    Case("size-reference-without-image", ["check-size", "--reference", "before=40", "--plot", "{tmp}/size.svg"],
         "they need --image", UNTOUCHED),
    Case("report-nothing-recorded", ["report", "--records", "{tmp}/empty", "--out", "{tmp}/reports"],
         "no runs are recorded under", "the record directory; no page is written", with_empty_dir),
    Case("fetch-deps-bad-url-map", ["fetch-deps", "--vllm-src", "{co}", "--url-map", "github", "--dry-run"],
         "is not OLD=NEW", "the checkout and the cache", with_checkout),
    Case("fetch-deps-offline-missing", ["fetch-deps", "--vllm-src", "{co}", "--offline"],
         "minidep @ v1.0.0 (https://github.com/vllm-forge/minidep.git)", "the checkout and the cache", with_deps_cache),
    Case("fetch-deps-from-missing-path", ["fetch-deps", "--vllm-src", "{co}", "--from", "{tmp}/usb/nope.tar.gz"],
         "does not exist", "the checkout and the cache", with_deps_cache),
    Case("fetch-deps-from-unmatched", ["fetch-deps", "--vllm-src", "{co}", "--from", "{tmp}/usb/bob-stuff.tar.gz"],
         "names no dependency of vLLM 0.1.0", "the checkout and the cache", with_tarballs),
    Case("fetch-deps-from-hostile-tar", ["fetch-deps", "--vllm-src", "{co}", "--from",
                                         "{tmp}/evil/minidep-v1.0.0.tar.gz"],
         "climbs out of the tree", "the cache: nothing unpacked is left, nothing written outside", with_tarballs),
    Case("fetch-deps-from-over-another", ["fetch-deps", "--vllm-src", "{co}", "--from",
                                          "{tmp}/other/minidep-v1.0.0.tar.gz"],
         "pass --force to replace it", "the cache entry imported before", with_imported_dep),
    Case("fetch-deps-from-and-bundle", ["fetch-deps", "--vllm-src", "{co}", "--from", "{tmp}/usb", "--bundle",
                                        "{tmp}/deps.tar"], "--bundle writes on the one with it",
         "the checkout and the cache", with_deps_cache),
    Case("fetch-deps-bundle-not-pinned", ["fetch-deps", "--vllm-src", "{co}", "--bundle", "{tmp}/deps.tar"],
         "a bundle carries pins only", "the cache; no bundle is written", with_imported_dep),
    Case("inspect-tree-not-vllm", ["inspect-tree", "--vllm-src", "{tmp}/empty"], "not a vLLM source tree",
         "the directory named", with_empty_dir),
    # --- what a new user types: typos, missing arguments, settings that cannot go together (issue 18) ---
    Case("task-typo", ["build-weel", "--arch", "12.0"], "did you mean build-wheel?", UNTOUCHED),
    Case("flag-typo", ["build-wheel", "--archs", "12.0"], "did you mean --arch?", UNTOUCHED),
    Case("serve-without-model", ["serve", "--image", "vllm-forge/vllm:x"], "serve needs MODEL", UNTOUCHED),
    Case("stray-argument", ["clone", "--dry-run", "v0.11.0"], "clone takes no argument 'v0.11.0'", UNTOUCHED),
    Case("invoke-dry-flag", ["--dry", "build-wheel", "--arch", "12.0", "--vllm-src", "{co}"],
         "invoke's -R/--dry only affects ctx.run", "the checkout (nothing runs)", with_checkout),
    Case("standin-and-base-image", ["bake", "--standin", "--base-image", "my.reg/pytorch:1", "--dry-run",
                                    "--vllm-src", "{co}"], "both name the bases", "the checkout", with_checkout),
    Case("plan-with-a-step-not-ready", ["plan", "--vllm-src", "{co}"], "step(s) cannot run as configured",
         "the checkout", with_builder_without_buildx),
    # --- a build farm (issue 31: docs/farm.md) ---
    Case("dist-scheduler-with-credentials", ["build-wheel", "--arch", "12.0", "--dist-scheduler",
                                             "http://ci:s3cret@farm.lan:10600", "--dry-run"],
         "is not a scheduler URL", UNTOUCHED),
    Case("dist-without-a-token", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dist-scheduler",
                                  "http://127.0.0.1:{port}"], "no client token", CHECKOUT_KEPT,
         with_checkout_and_no_token, needs=("nvcc",)),
    Case("dist-token-file-others-can-read", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}",
                                             "--dist-scheduler", "http://127.0.0.1:10600", "--dist-token-file",
                                             "{tmp}/client.token"], "can be read by other users", CHECKOUT_KEPT,
         with_open_token_file, needs=("nvcc",)),
    Case("dist-with-ccache", ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--compile-cache", "ccache",
                              "--dist-scheduler", "http://127.0.0.1:10600"],
         "run through sccache, and the compile cache is ccache", CHECKOUT_KEPT, with_checkout),
    Case("farm-server-without-scheduler", ["farm-server", "--farm-dir", "{tmp}/farm"],
         "farm-server needs the scheduler's URL", UNTOUCHED),
    Case("farm-server-listen-without-port", ["farm-server", "--scheduler", "http://127.0.0.1:10600", "--listen",
                                             "10.0.0.2", "--farm-dir", "{tmp}/farm", "--dry-run"],
         "is not HOST:PORT", UNTOUCHED, with_farm_token),
    Case("farm-status-without-scheduler", ["farm-status", "--farm-dir", "{tmp}/farm"], "no scheduler to ask",
         UNTOUCHED),
]


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


def _check_needs(needs: tuple[str, ...]) -> None:
    from vllm_forge.core.errors import ForgeError
    from vllm_forge.gpu.toolchain import find_cuda_toolchain

    for need in needs:
        if need in ("nvcc", "nvcc13"):
            try:
                chain = find_cuda_toolchain()
            except ForgeError:
                require_tool("nvcc", False)
            if need == "nvcc13" and chain.version.minor_str != "13.0":
                pytest.skip(f"the case is written for nvcc 13.0, this one is {chain.version}")
        elif need == "docker":
            require_tool("a Docker engine", docker_available())
        elif need == "nogpu" and _has_gpu():
            pytest.skip("this machine has a GPU: --arch auto finds it")
        elif need == "notorch":
            import importlib.util

            if importlib.util.find_spec("torch") is not None:
                pytest.skip("torch is installed here")


@pytest.fixture(scope="module")
def clean_checkout(tmp_path_factory, minivllm_repo) -> Path:
    dest = tmp_path_factory.mktemp("bad-inputs") / "vllm"
    subprocess.run(["git", "clone", "-q", "--branch", "v0.1.0", minivllm_repo, str(dest)], check=True,
                   capture_output=True)
    return dest


def assert_one_line_error(out, words: str, code: int) -> str:
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert out.returncode == code, (out.returncode, out.stderr)
    line = lines[0]
    assert line.startswith("error: ") and "Fix:" in line and words in line, line
    return line


def run_case(case: Case, tmp: Path, checkout: Path, remote: str):
    scratch = Scratch(tmp, checkout, remote, subs={"tmp": str(tmp), "remote": remote})
    try:
        if case.prepare:
            case.prepare(scratch)
        before = snapshot(tmp)
        args = [arg.format(**scratch.subs) for arg in case.args]
        cwd = Path(case.cwd.format(**scratch.subs)) if case.cwd else REPO
        out = run_cli(args, cwd=cwd, env=scratch.env, hide_nvcc=case.hide_nvcc)
        after = snapshot(tmp)
    finally:
        for sock in scratch.held:
            sock.close()
        for point in scratch.mounts:
            subprocess.run(["umount", str(point)], capture_output=True)
    return out, before, after


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_with_the_fix_and_loses_nothing(case, tmp_path, clean_checkout, minivllm_repo):
    _check_needs(case.needs)
    out, before, after = run_case(case, tmp_path, clean_checkout, minivllm_repo)
    assert_one_line_error(out, case.words, case.code)
    assert after == before, f"the scratch tree changed: {sorted(set(after.items()) ^ set(before.items()))[:6]}"


def test_the_server_that_never_got_healthy_was_stopped(tmp_path, clean_checkout, minivllm_repo):
    case = next(c for c in CASES if c.id == "server-never-healthy")
    out, _, _ = run_case(case, tmp_path, clean_checkout, minivllm_repo)
    assert out.returncode == 1
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "model")], capture_output=True, text=True).stdout
    assert not left.strip(), f"server processes left running: {left}"
    log = REPO / "build" / "serve" / "forge-bad-inputs-hang.log"
    assert "loading the model" in log.read_text() and str(log) in out.stderr
    assert not (REPO / "build" / "serve" / "forge-bad-inputs-hang.pid").exists()


@pytest.mark.parametrize("how", [["--debug"], []], ids=["invoke --debug", "VLLM_FORGE_DEBUG=1"])
@pytest.mark.parametrize("args", [
    ["build-wheel", "--arch", "rtx9999"],
    ["clone", "--ref", "bad..ref"],
    ["serve", "--image", "x", "--model", "m", "--host", "0.0.0.0"],
], ids=["build-wheel", "clone", "serve"])
def test_debug_shows_the_traceback(how, args):
    env = {"VLLM_API_KEY": ""} if how else {"VLLM_FORGE_DEBUG": "1", "VLLM_API_KEY": ""}
    out = run_cli([*how, *args], env=env)
    assert out.returncode != 0
    assert "Traceback" in out.stderr and "vllm_forge.core.errors.ForgeError" in out.stderr


def test_debug_shows_the_traceback_of_a_disk_error(tmp_path, clean_checkout, minivllm_repo):
    (tmp_path / "afile").write_text("x")
    args = ["clone", "--repo", minivllm_repo, "--checkout-dir", str(tmp_path / "afile" / "vllm")]
    assert "Traceback" not in run_cli(args).stderr
    out = run_cli(args, env={"VLLM_FORGE_DEBUG": "1"})
    assert "Traceback" in out.stderr and "FileExistsError" in out.stderr


def test_every_case_is_a_row_of_docs_errors_md():
    """The table in docs/errors.md and these cases are the same list."""
    text = DOCS.read_text().split("## Interrupts")[0]  # the first table is the bad-input one
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    ids = [row.split("`")[1] for row in rows]
    assert sorted(ids) == sorted(c.id for c in CASES)
    assert len(ids) >= 30
    for row, case in zip(sorted(rows, key=lambda r: r.split("`")[1]), sorted(CASES, key=lambda c: c.id), strict=True):
        message = row.split(" | ")[2]
        assert message.startswith("error: ") and "Fix:" in message and case.words in message, row


def test_cases_need_only_what_ci_installs():
    """Every `needs` is one _check_needs knows, and its tools (nvcc, docker) are here: in CI they must be
    (nogpu/notorch hold by the runner having neither), so no case is skipped there; elsewhere this runs
    when both tools are present and is skipped, naming the missing one, when not."""
    needs = {need for case in CASES for need in case.needs}
    assert needs <= {"nvcc", "nvcc13", "docker", "nogpu", "notorch"}, needs
    assert {"nvcc", "docker"} <= needs  # the tools this test checks are the ones cases rely on
    _check_needs(("nvcc", "docker"))
    from vllm_forge.gpu.toolchain import find_cuda_toolchain

    assert Path(find_cuda_toolchain().nvcc).is_file() and docker_available()


def table_rows(only: list[str] | None = None) -> str:  # pragma: no cover - regenerates docs/errors.md's table
    """`python -m tests.integration.test_bad_inputs [ID...]`: run every case (or those named), print its table row."""
    import re
    import tempfile

    from vllm_forge.source.minivllm import publish_minivllm

    base = Path(tempfile.mkdtemp(prefix="forge-errors-"))
    remote = publish_minivllm(base / "remote")
    checkout = base / "clean" / "vllm"
    subprocess.run(["git", "clone", "-q", "--branch", "v0.1.0", remote, str(checkout)], check=True,
                   capture_output=True)
    rows = []
    for number, case in enumerate(CASES):
        if only and case.id not in only:
            continue
        tmp = base / f"case{number}"
        tmp.mkdir()
        out, _, _ = run_case(case, tmp, checkout, remote)
        line = next((line for line in out.stderr.splitlines() if line.strip()), "(nothing)")

        def shown(text: str, tmp: Path = tmp) -> str:
            text = text.replace(str(tmp), "/tmp/x").replace(remote, "file:///srv/vllm.git")
            text = text.replace(sys.executable, "python3")
            text = re.sub(r"port \d+ on", "port 8123 on", text)
            text = re.sub(r"sport = :\d+", "sport = :8123", text)
            text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:8123", text)
            text = re.sub(r"only \d+\.\d GiB", "only N GiB", text)
            text = re.sub(r"about \d+ GiB", "about N GiB", text)
            return re.sub(r"--max-jobs \d+ or lower", "--max-jobs N or lower", text).replace("|", "\\|")

        args = " ".join(a.format(tmp="/tmp/x", co="/tmp/x/co", remote=remote, port="8123") for a in case.args)
        env = ("VLLM_FORGE_DOCKER=<client of a stopped daemon> " if case.prepare in (
            with_fake_docker, with_fake_docker_and_checkout) or case.id == "no-docker-engine-serve" else "")
        env += "INVOKE_FORGE_MAX_JOBS=lots " if case.id == "max-jobs-env-not-a-number" else ""
        env += "(no nvcc anywhere) " if case.hide_nvcc else ""
        rows.append(f"| `{case.id}` | `{env}invoke {shown(args)}` | {shown(line)} | {out.returncode} | {case.keeps} |")
    return "\n".join(rows)


if __name__ == "__main__":  # pragma: no cover
    print(table_rows(sys.argv[1:]))
