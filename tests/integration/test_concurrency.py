"""Two builds at once: into one dist/ they never corrupt each other (a private staging dir per run,
published with one rename); in one checkout the second is refused at once instead of sharing its
CMake build dir."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def start_invoke(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "invoke", *args], cwd=REPO, text=True,
                            env={**os.environ, "COLUMNS": "200", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, timeout: float = 540) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def clone(remote: str, dest: Path) -> Path:
    subprocess.run(["git", "clone", "-q", "--branch", "v0.1.0", remote, str(dest)], check=True, capture_output=True)
    return dest


def kernels_by_file(wheel: Path) -> dict[str, set[str]]:
    """SASS archs of every extension in the wheel, read by the audit's own scanner."""
    from vllm_forge.audit.audit import audit_path

    report = audit_path(wheel, ["12.0"])
    return {f.path: set(f.sass) for f in report.files if f.sass or f.ptx}


def assert_intact_wheels(dist: Path, expected: list[set[str]], count: int = 1) -> list[Path]:
    names = sorted(p.name for p in dist.iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no staging dir, no probe file left
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == count, names  # builds of other archs carry their variant in the name: both kept
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            assert archive.testzip() is None  # every member's CRC checks out
            assert "vllm/_C.abi3.so" in archive.namelist()
        kernels = kernels_by_file(wheel)
        assert len(kernels) == 2, kernels  # _C and the flash-attention stub
        archs = list(kernels.values())
        assert archs[0] == archs[1] and archs[0] in expected, kernels  # all from one build, never mixed
    return wheels


@pytest.mark.nvcc
def test_two_build_wheels_into_one_dist(minivllm_repo, tmp_path, nvcc_toolchain):
    dist = tmp_path / "dist"
    runs = []
    for arch, name in (("12.0", "a"), ("9.0", "b")):
        src = clone(minivllm_repo, tmp_path / name)
        runs.append(start_invoke("build-wheel", "--arch", arch, "--vllm-src", str(src), "--dist-dir", str(dist),
                                 "--skip-torch", "--compile-cache", "none", "--max-jobs", "1"))
    for proc in runs:
        code, out, err = finish(proc)
        assert code == 0, out[-1500:] + err[-1500:]
    wheels = assert_intact_wheels(dist, [{"sm_120"}, {"sm_90"}], count=2)
    assert sorted(".sm120-" in w.name for w in wheels) == [False, True]


@pytest.mark.nvcc
def test_a_second_build_of_the_same_checkout_is_refused_at_once(minivllm_repo, tmp_path, nvcc_toolchain):
    src = clone(minivllm_repo, tmp_path / "co")
    dist = tmp_path / "dist"
    args = ["build-wheel", "--arch", "12.0", "--vllm-src", str(src), "--dist-dir", str(dist), "--skip-torch",
            "--compile-cache", "none", "--max-jobs", "1"]
    first = start_invoke(*args)
    from vllm_forge.core import checkout_lock

    lock = checkout_lock.lock_path(src)
    import time

    deadline = time.monotonic() + 60
    while not (lock.exists() and f'"pid": {first.pid}' in lock.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "300"})
    code, out, err = finish(first)
    assert code == 0, out[-1500:] + err[-1500:]
    assert second.returncode == 2, second.stderr
    assert f"is in use by another vllm-forge run (pid {first.pid}: invoke build-wheel --arch 12.0" in second.stderr
    assert "Fix:" in second.stderr and len(second.stderr.strip().splitlines()) == 1
    assert_intact_wheels(dist, [{"sm_120"}])


def held_compile(tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    """The environment of a build whose CUDA compile waits (a compiler launcher through vLLM's own CMAKE_ARGS)
    until the test touches ``go``; it touches ``held`` once it waits."""
    held, go = tmp_path / "held", tmp_path / "go"
    launcher = tmp_path / "hold-compile.sh"
    launcher.write_text(f'#!/bin/sh\ntouch {held}\nwhile [ ! -e {go} ]; do sleep 0.1; done\nexec "$@"\n')
    launcher.chmod(0o755)
    return {"CMAKE_ARGS": f"-DCMAKE_CUDA_COMPILER_LAUNCHER={launcher}"}, held, go


def files_of(root: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_ino, p.lstat().st_mtime_ns, p.lstat().st_size)
            for p in root.rglob("*")}


@pytest.mark.nvcc
def test_the_miniatures_private_copy_has_one_writer_and_readers_never_touch_it(tmp_path, nvcc_toolchain):
    """The embedded miniature is built in a private copy under build/: a second build-wheel of it is refused
    naming the first, and plan, inspect-tree, a dry run and an audit of the dist dir, run while the first
    build compiles, change nothing in that copy; the first build then finishes."""
    import time

    from vllm_forge.core import checkout_lock

    env, held, go = held_compile(tmp_path)
    args = ["build-wheel", "--vllm-src", "tests/fixtures/minivllm", "--arch", "12.0", "--skip-torch",
            "--compile-cache", "none", "--max-jobs", "1", "--dist-dir", str(tmp_path / "dist")]
    first = start_invoke(*args, env=env)
    try:
        deadline = time.monotonic() + 240
        while not held.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert held.exists(), finish(first, timeout=10)
        copy = REPO / "build" / "private-src" / "tests--fixtures--minivllm"
        assert checkout_lock.holder(copy).startswith(f"pid {first.pid}: invoke build-wheel --vllm-src")
        before = files_of(copy)
        assert "build" in before  # the build's own CMake dir, which a refresh of the copy would remove

        second = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
                                env={**os.environ, "COLUMNS": "300"}, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.startswith(f"error: {copy} is in use by another vllm-forge run (pid {first.pid}: "
                                        "invoke build-wheel --vllm-src tests/fixtures/minivllm"), second.stderr
        readers = [["plan", "--vllm-src", "tests/fixtures/minivllm", "--arch", "12.0"],
                   ["inspect-tree", "--vllm-src", "tests/fixtures/minivllm"],
                   [*args, "--dry-run"],
                   ["audit", str(tmp_path / "dist"), "--arch", "12.0", "--no-torch"]]
        for reader in readers:
            out = subprocess.run([sys.executable, "-m", "invoke", *reader], cwd=REPO, capture_output=True,
                                 text=True, env={**os.environ, "COLUMNS": "300"}, timeout=120)
            assert out.returncode == 0 and "Traceback" not in out.stderr, (reader, out.stdout[-2000:], out.stderr)
            if reader[0] == "plan":
                assert f"in use by pid {first.pid}" in out.stdout  # it says it read the copy as the build left it
        assert files_of(copy) == before
        assert first.poll() is None  # still compiling: the readers ran while it held the copy
    finally:
        go.touch()
    code, out, err = finish(first)
    assert code == 0, out[-1500:] + err[-1500:]
    assert len(list((tmp_path / "dist").glob("*.whl"))) == 1


@pytest.mark.docker
def test_two_bake_wheel_exports_into_one_dist(minivllm_repo, tmp_path):
    from vllm_forge.core.errors import ForgeError
    from vllm_forge.image import docker_client
    from vllm_forge.image.standin_images import BUILD_STANDIN, RUNTIME_STANDIN, ensure_standin_images

    try:
        client = docker_client.find_docker()
        docker_client.check_engine(client.path)
        ensure_standin_images(client.path, log=lambda line: None)
    except ForgeError as err:
        require_tool(f"a Docker engine with BuildKit and the stand-in images ({err})", False)
    src = clone(minivllm_repo, tmp_path / "co")
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "vllm-0.0.9-cp38-abi3-linux_x86_64.whl.keep").write_bytes(b"not ours")
    args = ["bake", "--vllm-src", str(src), "--target", "wheel", "--dist-dir", str(dist), "--arch", "12.0",
            "--cuda", "13.0", "--base-image", BUILD_STANDIN, "--runtime-image", RUNTIME_STANDIN]
    runs = [start_invoke(*args, env={"VLLM_FORGE_DOCKER": client.path}) for _ in range(2)]
    for proc in runs:
        code, out, err = finish(proc)
        assert code == 0, out[-1500:] + err[-1500:]
    assert (dist / "vllm-0.0.9-cp38-abi3-linux_x86_64.whl.keep").read_bytes() == b"not ours"
    (dist / "vllm-0.0.9-cp38-abi3-linux_x86_64.whl.keep").unlink()
    assert_intact_wheels(dist, [{"sm_120"}])
