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
    from scripts.audit import audit_path

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
    lock = src / "build" / ".vllm-forge-build.lock"
    import time

    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "300"})
    code, out, err = finish(first)
    assert code == 0, out[-1500:] + err[-1500:]
    assert second.returncode == 2, second.stderr
    assert "another build-wheel" in second.stderr and "Fix:" in second.stderr
    assert_intact_wheels(dist, [{"sm_120"}])


@pytest.mark.docker
def test_two_bake_wheel_exports_into_one_dist(minivllm_repo, tmp_path):
    from scripts import image
    from scripts.errors import ForgeError
    from scripts.standin_images import BUILD_STANDIN, RUNTIME_STANDIN, ensure_standin_images

    try:
        client = image.find_docker()
        image.check_engine(client.path)
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
