"""TEST-ONLY stand-in base images for the Docker tests: no registry can be reached from CI.

The real defaults stay NVIDIA's images (``nvcr.io/nvidia/pytorch`` to build, ``nvcr.io/nvidia/cuda``
runtime to serve). For CI and for this machine, which reach only PyPI and Debian, this module builds
two small local images with ``debootstrap`` + ``docker import`` that look enough like those to run
the whole bake/serve pipeline on the miniature project:

- ``vllm-forge-standin/build:cu130``: Debian bookworm, python3/pip/venv, git, g++, cmake, ninja,
  ccache, and NVIDIA's CUDA 13 nvcc from PyPI exposed as ``/usr/local/cuda/bin/nvcc`` (as in NGC
  images). No torch.
- ``vllm-forge-standin/runtime:py3``: Debian bookworm with python3/pip/venv only: no compiler.

Both are cached: an image that exists is not rebuilt, and each rootfs tarball is kept in
``~/.cache/vllm-forge/standin/`` so a pruned image is re-imported in seconds.

Usage: ``python -m vllm_forge.image.standin_images [--docker /usr/bin/docker] [--ca-bundle FILE] [--force]``
(needs root for debootstrap/chroot). Prints the two image names.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.gpu.cuda_release import CudaRelease

BUILD_STANDIN = "vllm-forge-standin/build:cu130"
RUNTIME_STANDIN = "vllm-forge-standin/runtime:py3"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# NVIDIA's CUDA 13 compiler from PyPI (what `pip install` can reach where NGC images cannot).
CUDA_PIP_SPEC = "cuda-toolkit[nvcc,crt,nvvm,cudart,cuobjdump]==13.0.2"
RECIPE_VERSION = "2"  # bump when the recipe changes: cached tarballs are named after it

RUNTIME_PACKAGES = ["python3", "python3-pip", "python3-venv", "ca-certificates"]
BUILD_PACKAGES = RUNTIME_PACKAGES + ["python3-dev", "git", "g++", "make", "cmake", "ninja-build", "ccache"]

_COMMON_CHANGES = [
    "ENV LANG=C.UTF-8",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'CMD ["/bin/bash"]',
]
_BUILD_CHANGES = [
    "ENV PATH=/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV CUDA_HOME=/usr/local/cuda",
    # PyPI's toolkit keeps libcudart_static.a in lib/, where nvcc's own profile does not look.
    "ENV LIBRARY_PATH=/usr/local/cuda/lib",
    "ENV CUDA_VERSION=13.0.2",
]


@dataclass(frozen=True)
class StandinSpec:
    image: str
    packages: list[str]
    with_nvcc: bool
    changes: list[str]

    @property
    def tarball_name(self) -> str:
        safe = self.image.replace("/", "_").replace(":", "-")
        return f"{safe}-r{RECIPE_VERSION}.tar"


STANDINS = {
    "runtime": StandinSpec(RUNTIME_STANDIN, RUNTIME_PACKAGES, False, _COMMON_CHANGES),
    "build": StandinSpec(BUILD_STANDIN, BUILD_PACKAGES, True, _COMMON_CHANGES + _BUILD_CHANGES),
}


def default_cache_dir() -> Path:
    from vllm_forge.core import forge_cache

    return forge_cache.root() / "standin"


RECIPE_LABEL = "org.vllm-forge.standin-recipe"


def image_exists(docker: str, image: str) -> bool:
    """The stand-in exists and was made by this recipe version (an older one is re-imported)."""
    proc = subprocess.run(
        [docker, "image", "inspect", "--format", f'{{{{index .Config.Labels "{RECIPE_LABEL}"}}}}', image],
        capture_output=True,
        text=True,
    )
    return proc.returncode == 0 and proc.stdout.strip() == RECIPE_VERSION


def _run(argv: list[str], *, log, env: dict[str, str] | None = None, on_output=None) -> None:
    """Run a command; with ``env``, in exactly that environment (no host PIP_*/SSL_* leaking into a chroot). Its
    output goes to ``on_output`` line by line as it comes (debootstrap runs for minutes: that is the progress)."""
    log(f"$ {' '.join(argv)}")
    on_output = on_output or (lambda line: None)
    proc = subprocess.Popen(argv, env=os.environ if env is None else env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    lines: list[str] = []
    with proc:
        for line in proc.stdout:
            lines.append(line.rstrip())
            on_output(line.rstrip())
    if proc.returncode != 0:
        raise ForgeError(f"`{' '.join(argv[:3])} ...` failed (exit {proc.returncode}): {first_error(lines)}",
                         "the stand-in images need root, debootstrap, and deb.debian.org and pypi.org reachable "
                         "from this machine (set http_proxy/https_proxy if they are only reachable through one)")


def first_error(lines: list[str]) -> str:
    """The line that says what went wrong: debootstrap's `E:`, pip's `ERROR:`, a compiler's `error:`, else the
    last line."""
    for line in lines:
        if re.match(r"^(E: |ERROR: |fatal: )|.*\berror\b:", line.strip()):
            return line.strip()
    return next((line.strip() for line in reversed(lines) if line.strip()), "no output")


def every(seconds: float, write=print):
    """An ``on_output`` for a terminal: the first line, then at most one line per ``seconds`` with the time
    elapsed (debootstrap prints hundreds of lines over several minutes)."""
    import time

    start = time.monotonic()
    last = [-seconds]

    def show(line: str) -> None:
        now = time.monotonic() - start
        if now - last[0] >= seconds:
            last[0] = now
            write(f"  {now:4.0f}s {line}")

    return show


def _chroot() -> str:
    return shutil.which("chroot") or "/usr/sbin/chroot"


def build_rootfs(spec: StandinSpec, tarball: Path, *, ca_bundle: Path | None, log=print, on_output=None) -> None:
    """debootstrap a minimal bookworm with ``spec.packages`` (+ PyPI nvcc) and tar it to ``tarball``."""
    if os.geteuid() != 0:
        raise ForgeError(
            "building the stand-in images needs root (debootstrap, chroot)",
            "run as root, or in CI where the job runs as root",
        )
    if not shutil.which("debootstrap"):
        raise ForgeError("debootstrap is not installed", "apt-get install -y debootstrap")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="standin-", dir=tarball.parent) as tmp:
        root = Path(tmp) / "rootfs"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(spec.packages)}",
                DEBIAN_SUITE,
                str(root),
                DEBIAN_MIRROR,
            ],
            log=log,
            on_output=on_output,
        )
        if spec.with_nvcc:
            _install_pypi_nvcc(root, ca_bundle, log=log, on_output=on_output)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for child in (root / junk).glob("*"):
                if child.is_file():
                    child.unlink()
        shutil.rmtree(root / "root" / ".cache", ignore_errors=True)
        (root / "etc" / "resolv.conf").unlink(missing_ok=True)  # Docker writes its own
        partial = tarball.with_suffix(".partial")
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], log=log)
        os.replace(partial, tarball)


def _install_pypi_nvcc(root: Path, ca_bundle: Path | None, *, log, on_output=None) -> None:
    """pip-install NVIDIA's nvcc into the chroot and lay it out as /usr/local/cuda (NGC's layout)."""
    shutil.copy2("/etc/resolv.conf", root / "etc" / "resolv.conf")
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "PIP_BREAK_SYSTEM_PACKAGES": "1",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_ROOT_USER_ACTION": "ignore",
        "PIP_CONFIG_FILE": "/dev/null",
        "HOME": "/root",
    }
    cert_in_root = None
    if ca_bundle:
        # The proxy CA is used for this one pip run and removed: it is not baked into the image.
        cert_in_root = root / "tmp" / "forge-ca.pem"
        shutil.copy2(ca_bundle, cert_in_root)
        for name in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
            env[name] = "/tmp/forge-ca.pem"
    try:
        _run([_chroot(), str(root), "python3", "-m", "pip", "install", CUDA_PIP_SPEC], log=log, env=env,
             on_output=on_output)
    finally:
        if cert_in_root:
            cert_in_root.unlink(missing_ok=True)
    found = sorted(root.glob("usr/local/lib/python3*/dist-packages/nvidia/cu13"))
    if not found:
        raise ForgeError(
            "pip installed the CUDA toolkit but no nvidia/cu13 directory appeared",
            f"check that {CUDA_PIP_SPEC} still ships nvcc under nvidia/cu13",
        )
    cu13 = "/" + str(found[0].relative_to(root))
    cuda = root / "usr" / "local" / "cuda"
    cuda.mkdir(parents=True, exist_ok=True)
    for name in ("bin", "include", "lib", "nvvm"):
        (cuda / name).symlink_to(f"{cu13}/{name}")
    (cuda / "lib64").symlink_to("lib")
    # Prove it compiles and links a kernel inside the chroot before we ship it.
    probe = root / "tmp" / "probe.cu"
    probe.write_text("__global__ void k(){}\nint main(){k<<<1,1>>>();return 0;}\n")
    _run(
        [_chroot(), str(root), "nvcc", "-arch=sm_120", "/tmp/probe.cu", "-o", "/tmp/probe"],
        log=log,
        env={"PATH": "/usr/local/cuda/bin:/usr/bin:/bin", "LIBRARY_PATH": "/usr/local/cuda/lib", "HOME": "/root"},
    )
    for leftover in (probe, root / "tmp" / "probe"):
        leftover.unlink(missing_ok=True)


def import_image(docker: str, spec: StandinSpec, tarball: Path, *, log=print) -> None:
    argv = [docker, "import", "--change", f"LABEL {RECIPE_LABEL}={RECIPE_VERSION}"]
    for change in spec.changes:
        argv += ["--change", change]
    argv += ["--message", "vllm-forge TEST-ONLY stand-in (image/standin_images.py)", str(tarball), spec.image]
    _run(argv, log=log)


def ensure_standin_images(
    docker: str = "docker",
    *,
    cache_dir: Path | None = None,
    ca_bundle: Path | None = None,
    force: bool = False,
    log=print,
    on_output=None,
) -> dict[str, str]:
    """Make sure both stand-in images exist; returns ``{"build": image, "runtime": image}``. ``log`` gets what
    is done, ``on_output`` the commands' output as it comes (default: ``log``)."""
    on_output = on_output or log
    cache_dir = Path(cache_dir or default_cache_dir()).expanduser()
    if ca_bundle is None and Path("/etc/ssl/certs/ca-certificates.crt").is_file():
        ca_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    for kind, spec in STANDINS.items():
        if not force and image_exists(docker, spec.image):
            log(f"{spec.image}: present")
            continue
        tarball = cache_dir / spec.tarball_name
        if force or not tarball.is_file():
            log(f"{spec.image}: building its rootfs with debootstrap ({kind}; a few minutes, once: then cached in "
                f"{cache_dir})")
            build_rootfs(spec, tarball, ca_bundle=ca_bundle, log=log, on_output=on_output)
        log(f"{spec.image}: importing {tarball}")
        import_image(docker, spec, tarball, log=log)
    return {kind: spec.image for kind, spec in STANDINS.items()}


# The CUDA the stand-ins stand for (their nvcc): a bake on them uses --cuda 13.0, whose JIT toolchain
# (NVIDIA's CUDA 13 wheels from PyPI, vllm_forge/gpu/compat.py JIT_TOOLCHAINS) installs on Debian too.
STANDIN_CUDA = CudaRelease(13, 0)


def ensure_standins(docker: str = "docker", *, log=print) -> dict[str, str]:
    """``bake --standin``: build the stand-in bases, or reuse them when this recipe made them; returns
    ``{"build": image, "runtime": image}``. They are TEST-ONLY: images baked on them serve the miniature."""
    return ensure_standin_images(docker, log=log)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="Build the TEST-ONLY stand-in base images (debootstrap + docker import)."
    )
    parser.add_argument(
        "--docker",
        default=os.environ.get("VLLM_FORGE_DOCKER", "docker"),
        help="docker client to import with (any version works for import)",
    )
    parser.add_argument("--cache-dir", type=Path, default=None, help="where rootfs tarballs are kept")
    parser.add_argument(
        "--ca-bundle",
        type=Path,
        default=None,
        help="CA bundle for pip inside the chroot (default: /etc/ssl/certs/ca-certificates.crt)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild the rootfs tarballs and re-import")
    args = parser.parse_args(argv)
    images = ensure_standin_images(args.docker, cache_dir=args.cache_dir, ca_bundle=args.ca_bundle, force=args.force,
                                   on_output=every(10))
    print(images["build"])
    print(images["runtime"])
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
