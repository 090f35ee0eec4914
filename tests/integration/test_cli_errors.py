"""User mistakes end in one line with the fix, a non-zero exit code and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def invoke(*args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "300", **(env or {})}, timeout=120)


CASES = [
    (["build-wheel", "--arch", "12.0", "--cuda", "12.6"], "needs CUDA 12.8"),
    (["build-wheel", "--arch", "rtx9999"], "neither a CUDA arch nor a GPU name"),
    (["build-wheel", "--arch", "7.0", "--cuda", "13.0"], "last CUDA that can is 12.9"),
    (["build-wheel", "--arch", "12.0", "--cuda", "11.2"], "not a version this tool knows"),
    (["build-wheel", "--arch", "12.0", "--max-jobs", "10000"], "--max-jobs"),
    (["build-wheel", "--arch", "12.0", "--compile-cache", "distcc"], "compile cache"),
    (["build-wheel", "--arch", "12.0", "--build-type", "Fastest"], "build type"),
    (["build-wheel", "--arch", "12.0", "--vllm-src", "/nonexistent/vllm"], "not a vLLM checkout"),
    (["clone", "--ref", "bad..ref"], "not a valid git ref"),
    (["clone", "--repo", "not a url"], "not a git repository URL"),
    (["clone", "--repo", "file:///nonexistent/repo.git", "--checkout-dir", "/tmp/forge-never"], "cannot read"),
    (["use-existing-torch", "--vllm-src", "/tmp"], "not a vLLM source tree"),
    (["check-size", "--wheel", "/nonexistent.whl"], "no wheel found"),
]


@pytest.mark.parametrize("args, words", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_user_error_is_one_clear_line(args, words):
    out = invoke(*args)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ") and words in lines[0] and "Fix:" in lines[0]


def test_debug_shows_the_traceback():
    out = invoke("build-wheel", "--arch", "rtx9999", env={"VLLM_FORGE_DEBUG": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_check_size_over_limit_lists_largest_members(tmp_path):
    import zipfile

    wheel = tmp_path / "vllm-0.1.0-cp38-abi3-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("vllm/_C.abi3.so", os.urandom(300_000))
        archive.writestr("vllm/__init__.py", "")
    out = invoke("check-size", "--wheel", str(wheel), "--limit-mb", "0.1")
    assert out.returncode == 1
    assert "vllm/_C.abi3.so" in out.stdout and "largest members" in out.stdout
    assert invoke("check-size", "--wheel", str(wheel), "--limit-mb", "1").returncode == 0


@pytest.mark.parametrize("content, words", [
    ("forge:\n  arch: [unclosed\n", "is not valid YAML (line 3"),
    ("- a\n- b\n", "must be a mapping"),
    ("forge:\n  ach: '9.0'\n", "unknown forge key"),
    ("forge:\n  max_jobs: lots\n", "max_jobs in invoke.yaml must be a whole number"),
])
def test_bad_invoke_yaml_is_one_line(tmp_path, content, words):
    for name in ("tasks.py", "vllm_forge"):
        os.symlink(REPO / name, tmp_path / name)
    (tmp_path / "invoke.yaml").write_text(content)
    out = invoke("plan", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and "Fix:" in lines[0], out.stderr


def test_audit_takes_a_positional_path():
    binary = REPO / "tests/fixtures/h200x2/k_sm_90"
    assert invoke("audit", str(binary), "--arch", "9.0").returncode == 0
    out = invoke("audit", str(binary), "--arch", "12.0")
    assert out.returncode == 1 and "NO KERNEL" in out.stdout
