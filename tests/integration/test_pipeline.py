"""The core pipeline for real: git clones from a local bare repo, nvcc builds, cuobjdump checks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vllm_forge.build.build_wheel import BuildRequest, plan_build, run_build
from vllm_forge.core.errors import ForgeError
from vllm_forge.core.plan import Command, run_command
from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.source import checkout

pytestmark = pytest.mark.integration


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_clone_tag_then_update_to_branch(minivllm_repo, tmp_path):
    dest = tmp_path / "vllm"
    sha = checkout.clone(minivllm_repo, "v0.1.0", dest)
    assert git("describe", "--tags", cwd=dest) == "v0.1.0"
    assert not (tmp_path / ".vllm.partial").exists()
    sha_main = checkout.clone(minivllm_repo, "main", dest)
    assert sha_main != sha and (dest / "CHANGELOG.md").exists()
    # idempotent: the same ref again is a no-op fetch + checkout
    assert checkout.clone(minivllm_repo, "main", dest) == sha_main


def test_clone_by_commit(minivllm_repo, tmp_path):
    sha = checkout.clone(minivllm_repo, "v0.1.0", tmp_path / "a")
    assert checkout.clone(minivllm_repo, sha, tmp_path / "b") == sha


def test_local_changes_are_refused_then_stashed_never_lost(minivllm_repo, tmp_path):
    dest = tmp_path / "vllm"
    checkout.clone(minivllm_repo, "v0.1.0", dest)
    (dest / "setup.py").write_text((dest / "setup.py").read_text() + "\n# my edit\n")
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(ForgeError, match="local changes"):
        checkout.clone(minivllm_repo, "main", dest)
    assert "# my edit" in (dest / "setup.py").read_text()
    checkout.clone(minivllm_repo, "main", dest, force=True)
    assert "# my edit" not in (dest / "setup.py").read_text()
    git("stash", "pop", cwd=dest)
    assert "# my edit" in (dest / "setup.py").read_text() and (dest / "notes.txt").read_text() == "mine"


def test_use_existing_torch_edit_does_not_block_an_update(minivllm_repo, tmp_path):
    dest = tmp_path / "vllm"
    checkout.clone(minivllm_repo, "v0.1.0", dest)
    checkout.use_existing_torch(dest)
    assert checkout.remaining_torch_pins(dest) == []
    assert checkout.inspect_checkout(dest).torch_edit_only
    checkout.clone(minivllm_repo, "main", dest)
    assert checkout.remaining_torch_pins(dest)  # pins back: the checkout is exactly origin/main


def test_use_existing_torch_leaves_no_pin(minivllm_repo, tmp_path):
    dest = tmp_path / "vllm"
    checkout.clone(minivllm_repo, "v0.1.0", dest)
    before = checkout.remaining_torch_pins(dest)
    assert any("torch==2.6.0" in line for line in before)
    assert any("pyproject.toml" in line for line in before)
    checkout.use_existing_torch(dest)
    assert checkout.remaining_torch_pins(dest) == []


def test_unknown_ref_and_unreachable_repo_fail_before_cloning(minivllm_repo, tmp_path):
    with pytest.raises(ForgeError, match="neither a branch nor a tag"):
        checkout.clone(minivllm_repo, "v9.9.9", tmp_path / "x")
    with pytest.raises(ForgeError, match="cannot read"):
        checkout.clone((tmp_path / "missing.git").as_uri(), "main", tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_non_git_directory_is_not_clobbered(minivllm_repo, tmp_path):
    dest = tmp_path / "vllm"
    dest.mkdir()
    (dest / "precious.txt").write_text("keep")
    with pytest.raises(ForgeError, match="not a git checkout"):
        checkout.clone(minivllm_repo, "main", dest)
    assert (dest / "precious.txt").read_text() == "keep"


@pytest.fixture(scope="module")
def prepared_src(tmp_path_factory):
    from vllm_forge.source.minivllm import publish_minivllm

    url = publish_minivllm(tmp_path_factory.mktemp("remote"))
    src = tmp_path_factory.mktemp("co") / "vllm"
    checkout.clone(url, "v0.1.0", src)
    checkout.use_existing_torch(src)
    return src


def cuobjdump_elfs(cuobjdump, so: Path) -> set[str]:
    out = subprocess.run([str(cuobjdump), "--list-elf", str(so)], capture_output=True, text=True).stdout
    return {line.rsplit(".", 2)[-2] for line in out.splitlines() if line.startswith("ELF file")}


@pytest.mark.nvcc
@pytest.mark.parametrize("arch, expected", [
    ("12.0", {"sm_120"}), ("9.0", {"sm_90"}), ("rtx5090;h100", {"sm_90", "sm_120"})])
def test_build_wheel_compiles_exactly_the_requested_archs(prepared_src, tmp_path, nvcc_toolchain, cuobjdump,
                                                          arch, expected):
    dist = tmp_path / "dist"
    plan = plan_build(BuildRequest(src=prepared_src, dist_dir=dist, archs=parse_arch_list(arch), compile_cache="none",
                                   max_jobs=2))
    wheel = run_build(plan, audit=False)
    assert wheel.parent == dist and wheel.name.endswith("-cp38-abi3-linux_x86_64.whl")
    assert sorted(p.name for p in dist.iterdir()) == [wheel.name]  # no staging left behind
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "vllm/_C.abi3.so" in names
        assert "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so" in names
        metadata = archive.read(next(n for n in names if n.endswith("METADATA"))).decode()
        assert "torch" not in metadata  # use-existing-torch removed the pins
        extracted = tmp_path / "x"
        archive.extractall(extracted)
    assert cuobjdump_elfs(cuobjdump, extracted / "vllm/_C.abi3.so") == expected
    assert cuobjdump_elfs(cuobjdump, extracted / "vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so") == expected


@pytest.mark.nvcc
def test_failed_build_leaves_dist_as_it_was(prepared_src, tmp_path, nvcc_toolchain):
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "vllm-0.0.9-cp38-abi3-linux_x86_64.whl").write_bytes(b"yesterday's wheel")
    plan = plan_build(BuildRequest(src=prepared_src, dist_dir=dist, archs=parse_arch_list("12.0"),
                                   compile_cache="none"))
    plan.command.env["TORCH_CUDA_ARCH_LIST"] = "not-an-arch"  # make CMake fail
    with pytest.raises(ForgeError, match="failed with exit code"):
        run_build(plan, audit=False)
    assert sorted(p.name for p in dist.iterdir()) == ["vllm-0.0.9-cp38-abi3-linux_x86_64.whl"]


def test_interrupt_kills_the_child_process_group(tmp_path):
    """Ctrl-C in the middle of a step stops the child and everything it started."""
    marker = tmp_path / "still-running"
    script = f"import time, pathlib\ntime.sleep(3)\npathlib.Path({str(marker)!r}).write_text('x')\n"
    command = Command([sys.executable, "-c", script])
    import signal
    import threading

    # What a terminal's Ctrl-C does: SIGINT to the main thread, blocked reading the child's output.
    main_thread = threading.main_thread().ident
    threading.Timer(0.5, lambda: signal.pthread_kill(main_thread, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        run_command(command, on_line=lambda line: None)
    import time

    time.sleep(3.5)
    assert not marker.exists()


def test_build_wheel_cli_refuses_impossible_arch_before_anything(tmp_path, repo_root):
    out = subprocess.run([sys.executable, "-m", "invoke", "build-wheel", "--arch", "12.0", "--cuda", "12.6",
                          "--checkout-dir", str(tmp_path / "none")], cwd=repo_root, capture_output=True, text=True)
    assert out.returncode == 2
    assert "needs CUDA 12.8" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()


@pytest.mark.nvcc
def test_build_uses_nvidia_pypi_nvcc_when_no_system_toolkit(prepared_src, tmp_path, cuobjdump):
    """A machine with only Python and PyPI: the nvcc from `cuda-toolkit[nvcc]` wheels builds the kernels."""
    from conftest import require_tool

    from vllm_forge.gpu.toolchain import _pypi_cuda_roots

    require_tool("NVIDIA's nvcc from PyPI (requirements-build.txt)", bool(_pypi_cuda_roots()))
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "CUDACXX")}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"  # no /usr/local/bin/nvcc, no /usr/local/cuda*/bin
    dist = tmp_path / "dist"
    # The build machine has /usr/local/cuda; this run must not see it.
    hide_system = ("import sys, vllm_forge.gpu.toolchain as t; t.SYSTEM_CUDA_ROOTS = (); "
                   "from vllm_forge.build.build_wheel import main; sys.exit(main())")
    out = subprocess.run(
        [sys.executable, "-c", hide_system, str(prepared_src), "--arch", "12.0", "--dist-dir", str(dist),
         "--compile-cache", "none", "--no-audit"],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "site-packages/nvidia/cu13/bin/nvcc" in out.stdout
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract("vllm/_C.abi3.so", tmp_path)
    assert cuobjdump_elfs(cuobjdump, tmp_path / "vllm/_C.abi3.so") == {"sm_120"}


def test_demo_twice_second_run_reuses_the_checkout(tmp_path, repo_root, nvcc_toolchain):
    """A warm `invoke demo` updates the checkout the first one built in (build outputs are ignored); its next:
    lines work as printed; without --no-docker and no way to bake here it exits 1 saying so."""
    env = {**os.environ, "INVOKE_FORGE_CACHE_DIR": str(tmp_path / "cache")}
    for attempt, columns in ((1, "200"), (2, "40")):  # the second on a narrow terminal
        env["COLUMNS"] = columns
        argv = [sys.executable, "-m", "invoke", "demo", "--no-docker", "--dist-dir", str(tmp_path / "dist")]
        out = subprocess.run(argv, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"run {attempt}: {out.stdout[-1500:]}{out.stderr[-1500:]}"
        assert "runs" in out.stdout and "NO KERNEL" not in out.stdout  # the audit verdict (a cell may wrap)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name in out.stdout  # its summary table is as wide as the name needs, never cut with "…"
    # it ends with what to do next, and each command works as printed (one line each, even at 40 columns)
    nexts = [line[len("next: "):] for line in out.stdout.splitlines() if line.startswith("next: ")]
    assert len(nexts) == 3, out.stdout[-1500:]
    for line in nexts:
        ran = subprocess.run(line, shell=True, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, f"{line}: {ran.stdout[-1000:]}{ran.stderr[-1000:]}"
    # Without --no-docker the README promises a bake, a server and a smoke test: a demo that could not do them
    # says which steps it skipped and why, and exits 1 (the wheel part done, as above).
    engines = {"no Docker engine answers": "echo 'Cannot connect to the Docker daemon' >&2; exit 1",
               "neither its bases": '[ "$1" = info ] && exit 0; exit 1'}  # an engine holding no image at all
    for words, script in engines.items():
        docker = tmp_path / "docker"
        docker.write_text(f"#!/bin/sh\n{script}\n")
        docker.chmod(0o755)
        argv = [sys.executable, "-m", "invoke", "demo", "--dist-dir", str(tmp_path / "dist")]
        out = subprocess.run(argv, cwd=repo_root, env={**env, "VLLM_FORGE_DOCKER": str(docker)}, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 1, out.stdout[-1500:] + out.stderr[-1500:]
        assert "runs" in out.stdout and "NO KERNEL" not in out.stdout  # the audit verdict (a cell may wrap)
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith("error: the demo did not bake, serve or smoke-test an image (its image steps): ")
        assert words in line and "or pass --no-docker" in line, line


def test_the_embedded_miniature_is_built_from_a_private_copy(tmp_path, repo_root, nvcc_toolchain):
    """`--vllm-src tests/fixtures/minivllm` must not edit this repository (use-existing-torch rewrites pins)
    and the wheel carries the miniature's real version, not 0.0.0."""
    def status():
        return subprocess.run(["git", "status", "--porcelain", "--", "tests/fixtures/minivllm"], cwd=repo_root,
                              capture_output=True, text=True, check=True).stdout

    before = status()
    out = subprocess.run([sys.executable, "-m", "invoke", "build-wheel", "--vllm-src", "tests/fixtures/minivllm",
                          "--arch", "12.0", "--dist-dir", str(tmp_path / "dist")], cwd=repo_root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-1500:]
    assert status() == before
    names = [w.name for w in (tmp_path / "dist").glob("*.whl")]
    assert len(names) == 1 and re.fullmatch(r"vllm-0\.1\.0\+cu\d+\.sm120-cp38-abi3-linux_x86_64\.whl", names[0]), names


def test_wheels_for_other_archs_never_replace_each_other(prepared_src, tmp_path, nvcc_toolchain):
    """The README's promise: a 9.0 build after a 12.0 one into the same dist/ keeps both wheels (the variant
    is the wheel's PEP 440 local version)."""
    for arch in ("12.0", "9.0"):
        plan = plan_build(BuildRequest(src=prepared_src, dist_dir=tmp_path / "dist", archs=parse_arch_list(arch),
                                       reuse=False))
        run_build(plan)
    names = sorted(w.name for w in (tmp_path / "dist").glob("*.whl"))
    assert len(names) == 2 and names[0].endswith(".sm120-cp38-abi3-linux_x86_64.whl") and ".sm90-" in names[1]


@pytest.mark.docker
def test_demo_and_bake_next_lines_work_as_printed(tmp_path, repo_root, nvcc_toolchain,
                                                                             client, standins):
    """With an engine and the stand-ins, the demo bakes, serves and smoke-tests; then each `next:` line it printed
    runs as printed here (the serve line on a machine without a GPU, right after the demo stopped its server)."""
    env = {**os.environ, "INVOKE_FORGE_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "40",
           "VLLM_FORGE_DOCKER": client.path}

    def tags() -> set[str]:
        out = subprocess.run([client.path, "images", "--format", "{{.Repository}}:{{.Tag}}", "vllm-forge/vllm"],
                             capture_output=True, text=True)
        return set(out.stdout.split())

    before = tags()
    out = subprocess.run([sys.executable, "-m", "invoke", "demo", "--dist-dir", str(tmp_path / "dist")], cwd=repo_root,
                         env=env, capture_output=True, text=True, timeout=900)
    try:
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        assert "healthy after" in out.stdout and "chat: echo:" in out.stdout
        nexts = [line[len("next: "):] for line in out.stdout.splitlines() if line.startswith("next: ")]
        assert len(nexts) == 3 and nexts[2].startswith("invoke serve minivllm/echo --image "), nexts
        for line in nexts:
            ran = subprocess.run(line, shell=True, cwd=repo_root, env=env, capture_output=True, text=True,
                                 timeout=600)
            assert ran.returncode == 0, f"{line}: {ran.stdout[-1000:]}{ran.stderr[-1000:]}"
            subprocess.run([sys.executable, "-m", "invoke", "stop"], cwd=repo_root, env=env, capture_output=True)
        # `invoke bake` of the same checkout on the stand-ins: its next: lines too (the serve one without a GPU)
        baked = subprocess.run([sys.executable, "-m", "invoke", "bake", "--standin", "--vllm-src",
                                str(tmp_path / "cache" / "demo" / "vllm"), "--tag", "vllm-forge/vllm:i29-next-lines"],
                               cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)
        assert baked.returncode == 0, baked.stdout[-2000:] + baked.stderr[-2000:]
        nexts = [line[len("next: "):] for line in baked.stdout.splitlines() if line.startswith("next: ")]
        assert nexts == ["invoke check-size --image vllm-forge/vllm:i29-next-lines",
                         "invoke inspect vllm-forge/vllm:i29-next-lines",
                         "invoke serve minivllm/echo --image vllm-forge/vllm:i29-next-lines --gpus none"], nexts
        for line in nexts:
            ran = subprocess.run(line, shell=True, cwd=repo_root, env=env, capture_output=True, text=True,
                                 timeout=600)
            assert ran.returncode == 0, f"{line}: {ran.stdout[-1000:]}{ran.stderr[-1000:]}"
    finally:
        subprocess.run([sys.executable, "-m", "invoke", "stop"], cwd=repo_root, env=env, capture_output=True)
        for tag in tags() - before:
            subprocess.run([client.path, "rmi", tag], capture_output=True)
