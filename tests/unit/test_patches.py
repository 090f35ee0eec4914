"""Patches: parsing, classification, all-or-nothing apply, idempotence, records and labels (real git)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.source import patches

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

DIFF_PY = """diff --git a/vllm/engine.py b/vllm/engine.py
--- a/vllm/engine.py
+++ b/vllm/engine.py
@@ -1,2 +1,2 @@
 def step():
-    return 1
+    return 2
"""
DIFF_CU = """--- a/csrc/kernel.cu
+++ b/csrc/kernel.cu
@@ -1 +1 @@
-__global__ void k() {}
+__global__ void k() { /* fixed */ }
"""
DIFF_BAD = """--- a/vllm/engine.py
+++ b/vllm/engine.py
@@ -1,2 +1,2 @@
 def step():
-    return 42
+    return 43
"""


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin"})


@pytest.fixture
def checkout(tmp_path):
    src = tmp_path / "vllm"
    (src / "vllm").mkdir(parents=True)
    (src / "csrc").mkdir()
    (src / "vllm" / "engine.py").write_text("def step():\n    return 1\n")
    (src / "csrc" / "kernel.cu").write_text("__global__ void k() {}\n")
    _git(src, "init", "-q")
    _git(src, "add", "-A")
    _git(src, "commit", "-qm", "base")
    return src


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_patched_files_and_kernel_classification(tmp_path):
    assert patches.patched_files(DIFF_PY) == ("vllm/engine.py",)
    assert patches.patched_files(DIFF_CU) == ("csrc/kernel.cu",)
    new_file = "--- /dev/null\n+++ b/cmake/x.cmake\n@@ -0,0 +1 @@\n+set(X 1)\n"
    assert patches.patched_files(new_file) == ("cmake/x.cmake",)
    assert not patches.read_patch(_write(tmp_path, "py.patch", DIFF_PY)).touches_kernels
    assert patches.read_patch(_write(tmp_path, "cu.patch", DIFF_CU)).touches_kernels
    for path in ("CMakeLists.txt", "setup.py", "cmake/utils.cmake", "./csrc/a.cu"):
        assert patches.is_kernel_input(path), path
    for path in ("vllm/csrc.py", "csrcx/a.cu", "docs/CMakeLists.txt", "requirements/cuda.txt"):
        assert not patches.is_kernel_input(path), path


def test_not_a_diff_and_missing_file_are_one_line_errors(tmp_path):
    with pytest.raises(ForgeError, match="is not a unified diff"):
        patches.read_patch(_write(tmp_path, "notes.txt", "hello\n"))
    with pytest.raises(ForgeError, match="does not exist"):
        patches.read_patch(tmp_path / "missing.patch")


def test_apply_records_and_is_idempotent(checkout, tmp_path):
    py, cu = _write(tmp_path, "py.patch", DIFF_PY), _write(tmp_path, "cu.patch", DIFF_CU)
    results = patches.apply_patches(checkout, [py, cu])
    assert [r.status for r in results] == ["applied", "applied"]
    assert "return 2" in (checkout / "vllm" / "engine.py").read_text()
    assert "fixed" in (checkout / "csrc" / "kernel.cu").read_text()
    again = patches.apply_patches(checkout, [py, cu])  # the same --patch on the next build
    assert [r.status for r in again] == ["already applied", "already applied"]
    applied = patches.applied_patches(checkout)
    assert [p.name for p in applied] == ["py.patch", "cu.patch"]
    assert applied[0].sha256 == patches.read_patch(py).sha256
    assert patches.kernel_patches(applied) == [{"name": "cu.patch", "sha256": patches.read_patch(cu).sha256}]
    # nothing of the record is in the work tree
    status = subprocess.run(["git", "status", "--porcelain"], cwd=checkout, capture_output=True, text=True).stdout
    assert sorted(line[3:] for line in status.splitlines()) == ["csrc/kernel.cu", "vllm/engine.py"]


def test_a_patch_that_does_not_apply_leaves_the_checkout_as_it_was(checkout, tmp_path):
    before = {p: p.read_bytes() for p in checkout.rglob("*") if p.is_file() and ".git" not in p.parts}
    py, bad = _write(tmp_path, "cu.patch", DIFF_CU), _write(tmp_path, "bad.patch", DIFF_BAD)
    with pytest.raises(ForgeError) as err:
        patches.apply_patches(checkout, [py, bad])
    message = str(err.value)
    assert "bad.patch does not apply" in message and "\n" not in message and "Fix:" in message
    after = {p: p.read_bytes() for p in checkout.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert after == before  # cu.patch, applied first, was taken back
    assert patches.applied_patches(checkout) == []


def test_reset_checkout_drops_the_record(checkout, tmp_path):
    patches.apply_patches(checkout, [_write(tmp_path, "py.patch", DIFF_PY)])
    _git(checkout, "checkout", "--", ".")
    assert patches.applied_patches(checkout) == []


def test_labels_and_config_forms(tmp_path):
    patch = patches.read_patch(_write(tmp_path, "fix.patch", DIFF_PY))
    assert patches.patch_labels([patch]) == {"org.vllm-forge.patches": f"fix.patch@sha256:{patch.sha256}"}
    assert patches.patch_labels([]) == {"org.vllm-forge.patches": ""}
    assert patches.patch_labels([patch.record()]) == patches.patch_labels([patch])
    assert patches.patches_from_config(["a.patch", "b.patch"]) == ["a.patch", "b.patch"]
    assert patches.patches_from_config("a.patch, b.patch") == ["a.patch", "b.patch"]
    assert patches.patches_from_config("") == []
    with pytest.raises(ForgeError):
        patches.patches_from_config({"a": 1})


def test_plan_lines_say_what_each_patch_is(tmp_path, checkout):
    py, cu = _write(tmp_path, "py.patch", DIFF_PY), _write(tmp_path, "cu.patch", DIFF_CU)
    lines = patches.plan_lines(checkout, [py, cu])
    assert lines[0].startswith(f"git apply --check && git apply {py}")
    assert patches.read_patch(py).sha256[:12] in lines[0] and lines[0].endswith("Python only")
    assert lines[1].endswith("touches kernel inputs: part of the kernel-reuse key")
    assert (checkout / "vllm" / "engine.py").read_text() == "def step():\n    return 1\n"  # nothing applied
