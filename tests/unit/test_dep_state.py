"""dep_state: what a cache entry is (missing, pinned, unverified, substitute), read from its marker and
its .git files alone; markers of older vllm-forge versions and hand-written ones; the submodule policy."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from vllm_forge.deps import fetch_deps as fd
from vllm_forge.source.vllm_tree import GitDep

PIN = "a8f794d1251cbfd88a5011445dd5582289c727e4"
OTHER = "2bc126e03c795234b80245c58d66a315c654eb26"
FLASHMLA = GitDep("flashmla", "https://github.com/vllm-project/FlashMLA", PIN, "FLASH_MLA_SRC_DIR")
CUTLASS = GitDep("cutlass", "https://github.com/nvidia/cutlass.git", "v4.4.2", "VLLM_CUTLASS_SRC_DIR")


def entry(cache: Path, dep: GitDep, marker: dict | None, head: str | None = None) -> Path:
    """A cache entry as a hand, an older vllm-forge or this one left it: files, maybe .git/HEAD, a marker."""
    path = fd.dep_dir(cache, dep)
    path.mkdir(parents=True)
    (path / "CMakeLists.txt").write_text("project(x)\n")
    if head is not None:
        (path / ".git" / "refs" / "tags").mkdir(parents=True)
        (path / ".git" / "HEAD").write_text(head + "\n")
    if marker is not None:
        (path.parent / (path.name + fd.MARKER_SUFFIX)).write_text(json.dumps(marker))
    return path


def hand_marker(dep: GitDep, **extra) -> dict:
    return {"name": dep.name, "repository": dep.repository, "tag": dep.tag, **extra}


def test_missing_without_entry_marker_or_with_another_pin(tmp_path):
    assert fd.dep_state(tmp_path, FLASHMLA).status == "missing"
    path = entry(tmp_path, FLASHMLA, None)  # an interrupted write: no marker
    state = fd.dep_state(tmp_path, FLASHMLA)
    assert (state.status, state.path) == ("missing", path)
    (path.parent / (path.name + fd.MARKER_SUFFIX)).write_text(json.dumps(hand_marker(FLASHMLA, tag=OTHER)))
    assert fd.dep_state(tmp_path, FLASHMLA).status == "missing"
    assert not fd.is_cached(tmp_path, FLASHMLA)


def test_the_fixtures_hand_written_marker_never_makes_the_substitute_the_pin(tmp_path):
    """gpu_real_build_0_26_0: the substitute tarball unpacked by hand, a marker claiming the pinned commit."""
    entry(tmp_path, FLASHMLA, hand_marker(FLASHMLA, commit=PIN))
    state = fd.dep_state(tmp_path, FLASHMLA)
    assert state.status == "unverified"
    assert state.detail == "unverified: marker without provenance (written by hand or an older vllm-forge)"
    assert fd.is_cached(tmp_path, FLASHMLA)  # still used by the build, as before; the preflight decides


def test_an_old_marker_is_pinned_only_by_the_entrys_git_head(tmp_path):
    entry(tmp_path, FLASHMLA, hand_marker(FLASHMLA, commit=PIN), head=OTHER)
    state = fd.dep_state(tmp_path, FLASHMLA)
    assert state.status == "substitute" and "git commit 2bc126e03c79 is checked out, not the pin a8f794d1251c" \
        in state.detail
    other = tmp_path / "other"
    entry(other, FLASHMLA, hand_marker(FLASHMLA), head=PIN)
    assert fd.dep_state(other, FLASHMLA).status == "pinned"


def test_an_old_fetch_marker_of_a_tag_is_pinned_when_head_is_its_commit(tmp_path):
    commit = "da5e086dab31d63815acafdac9a9c5893b1c69e2"
    entry(tmp_path, CUTLASS, hand_marker(CUTLASS, commit=commit, fetched_from=CUTLASS.repository,
                                         submodules="all"), head=commit)
    assert fd.dep_state(tmp_path, CUTLASS).status == "pinned"
    hand = tmp_path / "hand"  # no provenance: the tag must resolve to HEAD in the entry's own refs
    path = entry(hand, CUTLASS, hand_marker(CUTLASS), head=commit)
    assert fd.dep_state(hand, CUTLASS).status == "unverified"
    (path / ".git" / "refs" / "tags" / "v4.4.2").write_text(commit + "\n")
    assert fd.dep_state(hand, CUTLASS).status == "pinned"


def test_an_annotated_tag_is_peeled_from_packed_refs_and_loose_objects(tmp_path):
    commit = "da5e086dab31d63815acafdac9a9c5893b1c69e2"
    tag_object = "1" * 40
    path = entry(tmp_path, CUTLASS, hand_marker(CUTLASS), head=commit)
    (path / ".git" / "packed-refs").write_text(f"# pack-refs with: peeled\n{tag_object} refs/tags/v4.4.2\n^{commit}\n")
    assert fd.dep_state(tmp_path, CUTLASS).status == "pinned"
    (path / ".git" / "packed-refs").unlink()
    (path / ".git" / "refs" / "tags" / "v4.4.2").write_text(tag_object + "\n")
    assert fd.dep_state(tmp_path, CUTLASS).status == "unverified"  # the tag object cannot be read: not proven
    body = f"object {commit}\ntype commit\ntag v4.4.2\n\nrelease\n".encode()
    (path / ".git" / "objects" / "11").mkdir(parents=True)
    (path / ".git" / "objects" / "11" / ("1" * 38)).write_bytes(zlib.compress(b"tag %d\0" % len(body) + body))
    assert fd.dep_state(tmp_path, CUTLASS).status == "pinned"


def test_head_through_a_branch_ref_and_a_gitfile(tmp_path):
    path = entry(tmp_path, FLASHMLA, hand_marker(FLASHMLA))
    real = path / ".git-data"  # a gitdir kept inside the entry
    (real / "refs" / "heads").mkdir(parents=True)
    (real / "HEAD").write_text("ref: refs/heads/main\n")
    (real / "refs" / "heads" / "main").write_text(PIN + "\n")
    (path / ".git").write_text(f"gitdir: {real}\n")
    assert fd.read_head(path) == PIN
    assert fd.dep_state(tmp_path, FLASHMLA).status == "pinned"


def test_git_data_kept_outside_the_entry_proves_nothing(tmp_path):
    """A `gitdir:` pointer out of the entry (to any repository at the pin) says nothing about its files."""
    path = entry(tmp_path, FLASHMLA, hand_marker(FLASHMLA))
    real = tmp_path / "elsewhere.git"
    (real / "refs" / "heads").mkdir(parents=True)
    (real / "HEAD").write_text("ref: refs/heads/main\n")
    (real / "refs" / "heads" / "main").write_text(PIN + "\n")
    (path / ".git").write_text(f"gitdir: {real}\n")
    assert fd.read_head(path) is None
    assert fd.dep_state(tmp_path, FLASHMLA).status == "unverified"


def new_marker(dep: GitDep, status: str, commit: str | None, **extra) -> dict:
    return hand_marker(dep, format=2, status=status, commit=commit, **extra)


def test_a_fetched_entry_is_pinned_while_its_head_is_the_recorded_commit(tmp_path):
    path = entry(tmp_path, FLASHMLA, new_marker(FLASHMLA, "pinned", PIN, source="fetch",
                                                fetched_from="https://github.com/vllm-project/FlashMLA"), head=PIN)
    state = fd.dep_state(tmp_path, FLASHMLA)
    assert (state.status, state.detail) == (
        "pinned", "pinned: git commit a8f794d1251c (fetched from https://github.com/vllm-project/FlashMLA)")
    (path / ".git" / "HEAD").write_text(OTHER + "\n")  # someone checked out another commit in the cache
    state = fd.dep_state(tmp_path, FLASHMLA)
    assert state.status == "substitute" and "the entry was changed after it was fetched" in state.detail
    import shutil

    shutil.rmtree(path / ".git")
    assert fd.dep_state(tmp_path, FLASHMLA).status == "unverified"


def test_a_marker_that_says_pinned_for_another_commit_is_not_believed(tmp_path):
    entry(tmp_path, FLASHMLA, new_marker(FLASHMLA, "pinned", OTHER, source="fetch"), head=OTHER)
    assert fd.dep_state(tmp_path, FLASHMLA).status == "substitute"


def test_unverified_and_substitute_imports_keep_their_recorded_line(tmp_path):
    detail = ("substitute: imported from /media/usb/flashmla-SUBSTITUTE-2bc126e03c79.tar.xz, which names 2bc126e03c79, "
              "not the pin a8f794d1251c")
    entry(tmp_path, FLASHMLA, new_marker(FLASHMLA, "substitute", None, detail=detail, source="tar",
                                         imported_from="/media/usb/flashmla-SUBSTITUTE-2bc126e03c79.tar.xz",
                                         submodules={"taken": [], "skipped": {}, "missing": ["csrc/cutlass"]}))
    state = fd.dep_state(tmp_path, FLASHMLA)
    assert state.status == "substitute"
    assert state.detail == detail + "; submodule csrc/cutlass missing"
    assert "csrc/cutlass missing" in fd.submodules_recorded(tmp_path, FLASHMLA)


def test_install_entry_writes_the_marker_last_and_replaces_an_old_entry(tmp_path):
    final = tmp_path / "deps" / "x@v1"
    final.mkdir(parents=True)
    (final / "old").write_text("old")
    (final.parent / (final.name + fd.MARKER_SUFFIX)).write_text("{}")
    tmp = tmp_path / "deps" / ".x@v1.import"
    tmp.mkdir()
    (tmp / "new").write_text("new")
    fd.install_entry(tmp, final, {"name": "x", "status": "unverified"})
    assert [p.name for p in final.iterdir()] == ["new"] and not tmp.exists()
    assert json.loads((final.parent / (final.name + fd.MARKER_SUFFIX)).read_text()) == {
        "format": fd.MARKER_FORMAT, "name": "x", "status": "unverified"}
    assert sorted(p.name for p in final.parent.iterdir()) == ["x@v1", "x@v1" + fd.MARKER_SUFFIX]


@pytest.mark.parametrize(("dep", "path", "url", "taken"), [
    ("vllm-flash-attn", "csrc/cutlass", "https://github.com/NVIDIA/cutlass.git", True),
    ("vllm-flash-attn", "csrc/composable_kernel", "https://github.com/ROCm/composable_kernel.git", False),
    ("vllm-flash-attn", "third_party/aiter", "https://github.com/ROCm/aiter.git", False),
    ("somedep", "third_party/hipify", "https://example.com/x/hip.git", False),  # by the rule: HIP only
    ("somedep", "ext/ck", "https://github.com/ROCmSoftwarePlatform/composable_kernel", False),
    ("somedep", "third_party/cutlass", "https://github.com/NVIDIA/cutlass", True),
    ("somedep", "third_party/chip_tools", "https://example.com/chip_tools.git", True),  # "hip" inside a word
])
def test_submodule_policy(dep, path, url, taken):
    assert fd.submodule_choice(dep, path, path, url)[0] is taken


def test_what_a_fetch_will_take_is_said_before_it_runs():
    fa = GitDep("vllm-flash-attn", "https://github.com/vllm-project/flash-attention.git", "caaa4eb5", None)
    said = fd.submodules_planned(fa)
    assert "csrc/cutlass taken" in said and "csrc/composable_kernel (ROCm only)" in said and "skipped" in said
    deepgemm = GitDep("deepgemm", "https://github.com/deepseek-ai/DeepGEMM.git", "a6b593d2", None,
                      submodules=("third-party/cutlass", "third-party/fmt"))
    assert fd.submodules_planned(deepgemm) == \
        "submodules: only third-party/cutlass, third-party/fmt (the checkout's GIT_SUBMODULES)"
    assert fd.submodules_planned(GitDep("x", "https://h/x.git", "v1", None)) == \
        "submodules: all, unless ROCm/HIP-only by name or URL"


def test_a_ref_that_is_a_link_to_dev_zero_is_read_bounded(tmp_path):
    """A hand-made entry's .git is read, never trusted: a ref linked to /dev/zero must not eat the memory.
    Run in a child with 1 GiB of address space, so a regression fails here instead of on the machine."""
    import subprocess
    import sys

    path = entry(tmp_path, FLASHMLA, hand_marker(FLASHMLA), head="ref: refs/heads/main")
    (path / ".git" / "refs" / "heads").mkdir()
    (path / ".git" / "refs" / "heads" / "main").symlink_to("/dev/zero")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
            "from vllm_forge.deps import fetch_deps as fd; from vllm_forge.source.vllm_tree import GitDep; "
            f"print(fd.dep_state(sys.argv[1], GitDep('flashmla', {FLASHMLA.repository!r}, {PIN!r}, None)).status)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert (proc.returncode, proc.stdout.strip()) == (0, "unverified"), proc.stderr[-500:]
