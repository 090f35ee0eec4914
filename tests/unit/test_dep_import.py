"""--from without git: which dependency a file is for, what its name says of the revision, what an import
of a tarball or directory records, and tarballs that try to write outside the cache or fill the disk."""

from __future__ import annotations

import io
import json
import os
import tarfile
import textwrap
from pathlib import Path

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.deps import dep_import as di
from vllm_forge.deps import fetch_deps as fd
from vllm_forge.deps import safe_unpack as su
from vllm_forge.source.vllm_tree import GitDep, inspect_tree

DEPS = [
    GitDep("cutlass", "https://github.com/nvidia/cutlass.git", "v4.4.2", "VLLM_CUTLASS_SRC_DIR"),
    GitDep("triton_kernels", "https://github.com/triton-lang/triton.git", "v3.5.1", "TRITON_KERNELS_SRC_DIR"),
    GitDep("flashmla", "https://github.com/vllm-project/FlashMLA", "a8f794d1251cbfd88a5011445dd5582289c727e4",
           "FLASH_MLA_SRC_DIR"),
    GitDep("vllm-flash-attn", "https://github.com/vllm-project/flash-attention.git",
           "caaa4eb59845388a20b1f435ecaafb4bd9517ad8", "VLLM_FLASH_ATTN_SRC_DIR"),
    GitDep("fmha_sm100", "https://github.com/vllm-project/MSA.git", "2e63ec37a0fc29bc20f39cd1a52e0f5affc33a73",
           "FMHA_SM100_SRC_DIR"),
]
BY_NAME = {d.name: d for d in DEPS}


@pytest.mark.parametrize(("name", "dep", "rest"), [
    ("cutlass-v4.4.2.tar.xz", "cutlass", "v4.4.2"),
    ("triton_kernels-v3.5.1.tar.xz", "triton_kernels", "v3.5.1"),  # triton_kernels beats the repository's triton
    ("triton-3.5.1.tar.gz", "triton_kernels", "3.5.1"),  # GitHub's archive of the repository
    ("flashmla-SUBSTITUTE-2bc126e03c79.tar.xz", "flashmla", "SUBSTITUTE-2bc126e03c79"),
    ("FlashMLA-a8f794d1251cbfd88a5011445dd5582289c727e4.tgz", "flashmla", "a8f794d1251cbfd88a5011445dd5582289c727e4"),
    ("flash-attention-caaa4eb59845.tar.gz", "vllm-flash-attn", "caaa4eb59845"),
    ("vllm_flash_attn@caaa4eb59845", "vllm-flash-attn", "caaa4eb59845"),  # a cache entry's own name
    ("FMHA-SM100.bundle", "fmha_sm100", ""),
    ("MSA", "fmha_sm100", ""),
])
def test_a_name_matches_its_dependency(name, dep, rest):
    assert di.match_name(name, DEPS) == ([BY_NAME[dep]], rest)


@pytest.mark.parametrize("name", ["cutlassx-v1.tar.gz", "README.md", "flash.tar.gz", "deps.tar"])
def test_a_name_of_no_dependency(name):
    assert di.match_name(name, DEPS) == ([], "")


def test_two_dependencies_with_one_name_is_ambiguous():
    twins = [GitDep("cutlass", "https://github.com/nvidia/cutlass.git", "v4.4.2", None),
             GitDep("cutlass_sm90", "https://github.com/other/cutlass.git", "v3.0.0", None)]
    assert di.match_name("cutlass-v4.4.2.tar.gz", twins)[0] == twins


@pytest.mark.parametrize(("dep", "rest", "verdict"), [
    ("cutlass", "v4.4.2", "agrees"),
    ("cutlass", "4.4.2", "agrees"),  # GitHub drops the v in archive names
    ("cutlass", "v4.0.0", "other"),
    ("cutlass", "da5e086dab31", "silent"),  # a commit cannot be checked against a tag
    ("cutlass", "headers", "silent"),
    ("flashmla", "SUBSTITUTE-2bc126e03c79", "other"),
    ("flashmla", "a8f794d", "agrees"),  # 7 hex digits are enough
    ("flashmla", "a8f794", "silent"),  # 6 are not a commit
    ("flashmla", "v1.0", "silent"),  # a version cannot be checked against a commit
    ("flashmla", "", "silent"),
])
def test_what_a_name_says_of_the_revision(dep, rest, verdict):
    assert di.revision_named(BY_NAME[dep], rest)[0] == verdict


def make_tree(root: Path) -> Path:
    """A checkout declaring cutlass (tag pin) and flashmla (commit pin)."""
    (root / "vllm").mkdir(parents=True)
    (root / "setup.py").write_text("")
    (root / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.26.0\n")
    (root / "CMakeLists.txt").write_text(textwrap.dedent("""
        project(x)
        if(DEFINED ENV{VLLM_CUTLASS_SRC_DIR})
          FetchContent_Declare(cutlass SOURCE_DIR $ENV{VLLM_CUTLASS_SRC_DIR})
        else()
          FetchContent_Declare(cutlass GIT_REPOSITORY https://github.com/nvidia/cutlass.git GIT_TAG v4.4.2)
        endif()
        if(DEFINED ENV{FLASH_MLA_SRC_DIR})
          FetchContent_Declare(flashmla SOURCE_DIR $ENV{FLASH_MLA_SRC_DIR})
        else()
          FetchContent_Declare(flashmla GIT_REPOSITORY https://github.com/vllm-project/FlashMLA
                               GIT_TAG a8f794d1251cbfd88a5011445dd5582289c727e4)
        endif()
    """))
    return root


def write_tar(path: Path, files: dict[str, bytes], prefix: str = "", mode: str = "w:gz", **pax) -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT, pax_headers=pax) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def tree(tmp_path):
    return inspect_tree(make_tree(tmp_path / "vllm"))


def import_all(tree, items, cache, **kw):
    plan = di.plan_imports(tree, [str(i) for i in items])
    return plan, di.run_imports(plan, cache, **kw)


def test_tarballs_are_unverified_or_substitute_by_their_names(tree, tmp_path):
    usb = tmp_path / "usb"
    usb.mkdir()
    write_tar(usb / "cutlass-v4.4.2.tar.xz", {"include/cutlass/cutlass.h": b"// 4.4.2\n"}, prefix="cutlass-4.4.2/",
              mode="w:xz")
    write_tar(usb / "flashmla-SUBSTITUTE-2bc126e03c79.tar.gz", {"csrc/api.cpp": b"//\n"})
    (usb / "README.md").write_text("what is on this stick\n")
    cache = tmp_path / "cache"
    plan, outcomes = import_all(tree, [usb], cache)
    assert [o.result for o in outcomes] == ["imported", "imported"]
    assert [(p.path.name, p.refused) for p in plan.passed] == [("README.md", False)]
    cutlass, flashmla = tree.git_deps
    state = fd.dep_state(cache, cutlass)
    sha = su.file_sha256(usb / "cutlass-v4.4.2.tar.xz")
    assert (state.status, state.detail) == (
        "unverified", f"unverified: imported from {usb / 'cutlass-v4.4.2.tar.xz'} (no git data), sha256 {sha[:12]}")
    assert (state.path / "include" / "cutlass" / "cutlass.h").read_text() == "// 4.4.2\n"  # the top dir stripped
    state = fd.dep_state(cache, flashmla)
    assert (state.status, state.detail) == (
        "substitute", f"substitute: imported from {usb / 'flashmla-SUBSTITUTE-2bc126e03c79.tar.gz'}, which names "
                      "2bc126e03c79, not the pin a8f794d1251c")
    marker = json.loads((state.path.parent / (state.path.name + fd.MARKER_SUFFIX)).read_text())
    assert marker["source"] == "tar" and marker["commit"] is None and marker["format"] == 2
    assert fd.deps_env(tree, cache) == {"VLLM_CUTLASS_SRC_DIR": str(fd.dep_dir(cache, cutlass)),
                                        "FLASH_MLA_SRC_DIR": str(fd.dep_dir(cache, flashmla))}
    assert sorted(p.name for p in (cache / "deps").iterdir()) == sorted(
        [e for d in tree.git_deps for e in (fd.dep_dir(cache, d).name, fd.dep_dir(cache, d).name + fd.MARKER_SUFFIX)])


def test_a_git_archive_names_its_commit_and_its_top_directory_its_revision(tree, tmp_path):
    other = "2bc126e03c795234b80245c58d66a315c654eb26"
    archive = write_tar(tmp_path / "flashmla.tar", {"a.cu": b""}, prefix="flashmla/", mode="w", comment=other)
    import_all(tree, [archive], tmp_path / "cache")
    state = fd.dep_state(tmp_path / "cache", tree.git_deps[1])
    assert state.status == "substitute" and "a `git archive` of 2bc126e03c79 (its pax header)" in state.detail
    archive = write_tar(tmp_path / "fm.tar", {"a.cu": b""}, prefix="FlashMLA-2bc126e03c79/", mode="w")
    import_all(tree, [f"flashmla={archive}"], tmp_path / "cache2")
    state = fd.dep_state(tmp_path / "cache2", tree.git_deps[1])
    assert state.status == "substitute" and "whose directory FlashMLA-2bc126e03c79 names 2bc126e03c79" in state.detail


@pytest.mark.parametrize(("files", "kept"), [
    ({"src/CMakeLists.txt": b"", "src/include/a.h": b""}, "CMakeLists.txt"),  # `tar -czf x.tgz src/`
    ({"work/LICENSE.txt": b"", "work/a.h": b""}, "LICENSE.txt"),
    ({"python/cutlass/__init__.py": b""}, "python"),  # the tree's own first level, as fmha_sm100's
])
def test_a_lone_top_directory_is_stripped_only_when_it_wraps_a_tree(tree, tmp_path, files, kept):
    import_all(tree, [write_tar(tmp_path / "cutlass-v4.4.2.tar.gz", files)], tmp_path / "cache")
    assert kept in [p.name for p in fd.dep_dir(tmp_path / "cache", tree.git_deps[0]).iterdir()]


def test_a_directory_is_copied_and_a_lone_first_level_is_kept(tree, tmp_path):
    src = tmp_path / "src" / "cutlass"
    (src / "python" / "cutlass").mkdir(parents=True)
    (src / "python" / "cutlass" / "__init__.py").write_text("x = 1\n")
    os.symlink("python/cutlass/__init__.py", src / "link.py")
    import_all(tree, [src], tmp_path / "cache")
    state = fd.dep_state(tmp_path / "cache", tree.git_deps[0])
    assert state.status == "unverified" and "(a directory without git data), sha256" in state.detail
    assert (state.path / "python" / "cutlass" / "__init__.py").is_file()  # python/ alone is the tree, not a wrapper
    assert os.readlink(state.path / "link.py") == "python/cutlass/__init__.py"


def test_reimport_is_a_no_op_and_other_content_needs_force(tree, tmp_path):
    first = write_tar(tmp_path / "cutlass-v4.4.2.tar.gz", {"a.h": b"1"})
    cache = tmp_path / "cache"
    import_all(tree, [first], cache)
    _, [outcome] = import_all(tree, [first], cache)
    assert outcome.result == "unchanged" and "same sha256" in outcome.line
    (tmp_path / "other").mkdir()
    second = write_tar(tmp_path / "other" / "cutlass-v4.4.2.tar.gz", {"a.h": b"2"})
    _, [outcome] = import_all(tree, [second], cache)
    assert outcome.result == "refused" and "pass --force to replace it" in str(outcome.error)
    assert (fd.dep_dir(cache, tree.git_deps[0]) / "a.h").read_text() == "1"  # nothing lost
    _, [outcome] = import_all(tree, [second], cache, force=True)
    assert outcome.result == "imported" and (fd.dep_dir(cache, tree.git_deps[0]) / "a.h").read_text() == "2"


def test_unmatched_ambiguous_and_unreadable_inputs_are_refused_not_guessed(tree, tmp_path):
    (tmp_path / "a").mkdir()
    one = write_tar(tmp_path / "a" / "cutlass-v4.4.2.tar.gz", {"a.h": b"1"})
    two = write_tar(tmp_path / "cutlass-4.4.2.tgz", {"a.h": b"2"})
    nameless = write_tar(tmp_path / "deps-from-bob.tar.gz", {"a.h": b"3"})
    broken = tmp_path / "cutlass-v4.4.2.tar.xz"
    broken.write_bytes(b"\xfd7zXZ\x00 not really")
    plan = di.plan_imports(tree, [str(one), str(two), str(nameless), str(tmp_path / "nope.tar"), str(broken),
                                  f"cutless={one}"])
    refused = {(p.path.name, p.why.split(" (")[0]) for p in plan.passed if p.refused}
    assert refused == {
        ("cutlass-v4.4.2.tar.gz", f"and {two} could both be cutlass"),
        ("deps-from-bob.tar.gz", "names no dependency of vLLM 0.26.0"),
        ("nope.tar", "does not exist"),
        ("cutlass-v4.4.2.tar.xz", "is not a tarball, a git bundle or a directory"),
        ("cutlass-v4.4.2.tar.gz", "is given for cutless, which is not a dependency of vLLM 0.26.0"),
    }
    assert plan.sources == ()
    plan = di.plan_imports(tree, [str(one), f"cutlass={two}", f"flashmla={nameless}"])  # NAME=PATH decides
    assert {(s.dep.name, s.path) for s in plan.sources} == {("cutlass", two), ("flashmla", nameless)}
    assert [(p.path, p.refused) for p in plan.passed] == [(one, False)]


def test_several_refusals_are_one_error_line(tree, tmp_path):
    plan, outcomes = import_all(tree, [tmp_path / "x.tar", tmp_path / "y.tar"], tmp_path / "cache")
    error = di.refusal(outcomes)
    assert str(error).count("does not exist") == 2 and str(error).count("Fix:") == 1 and "\n" not in str(error)


# --- hostile tarballs ---------------------------------------------------------------------------------------

def hostile(path: Path, *members: tarfile.TarInfo, data: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def member(name: str, kind=tarfile.REGTYPE, link: str = "", size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, size
    return info


@pytest.mark.parametrize(("members", "words"), [
    ([member("/etc/cron.d/x")], "is an absolute path"),
    ([member("src/../../x")], r"climbs out of the tree \(\.\.\)"),
    ([member("out", tarfile.SYMTYPE, "/etc")], "is a symlink to the absolute path /etc"),
    ([member("src/out", tarfile.SYMTYPE, "../../x")], "points outside the tree"),
    ([member("a", tarfile.SYMTYPE, "."), member("a/b", tarfile.SYMTYPE, "..")],
     "would be written through the symlink a"),
    ([member("d", tarfile.DIRTYPE), member("p", tarfile.SYMTYPE, "d/../..")], "with .. after a name"),
    ([member("hard", tarfile.LNKTYPE, "../../etc/passwd")], "is a hard link to '../../etc/passwd'"),
    ([member("hard", tarfile.LNKTYPE, "later.h"), member("later.h")], "not a file unpacked before it"),
    ([member("dev/null", tarfile.CHRTYPE)], "is a character device"),
    ([member("dev/sda", tarfile.BLKTYPE)], "is a block device"),
    ([member("pipe", tarfile.FIFOTYPE)], "is a FIFO"),
    ([member("a.h"), member("a.h", tarfile.SYMTYPE, "b.h")], "appears twice"),
])
def test_a_hostile_tarball_is_refused_naming_the_member_and_writes_nothing_outside(tmp_path, members, words):
    archive = hostile(tmp_path / "evil.tar", *members)
    dest = tmp_path / "work" / "dest"
    dest.parent.mkdir()
    with pytest.raises(ForgeError, match=words) as err:
        su.unpack_tar(archive, dest, su.Budget(1 << 20, "1 MiB", "no"))
    assert str(err.value).startswith(f"{archive}: ") and "Fix:" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar", "work"]  # nothing beside the destination


def test_a_tar_bomb_stops_at_the_budget_before_its_data_is_written(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for number in range(3):
            info = tarfile.TarInfo(f"zeros{number}")
            info.size = 4 << 20
            tar.addfile(info, io.BytesIO(bytes(info.size)))
    assert archive.stat().st_size < 100_000  # 12 MiB of zeros compress to nothing
    budget = su.Budget(6 << 20, "--max-size 6 MiB", "if you trust it, pass --max-size 1G")
    with pytest.raises(ForgeError, match=r"would unpack more than --max-size 6 MiB \(a tar bomb"):
        su.unpack_tar(archive, tmp_path / "dest", budget)
    assert sum(p.stat().st_size for p in (tmp_path / "dest").rglob("*") if p.is_file()) <= 6 << 20


def test_the_budget_never_exceeds_the_free_disk(tmp_path):
    budget = su.budget_for(tmp_path, 1 << 60)
    assert budget.limit < 1 << 60 and "free on" in budget.why and "--cache-dir" in budget.fix
    assert su.budget_for(tmp_path, 1 << 20).limit == 1 << 20


def test_a_hostile_import_leaves_the_cache_as_it_was(tree, tmp_path):
    cache = tmp_path / "cache"
    good = write_tar(tmp_path / "cutlass-v4.4.2.tar.gz", {"a.h": b"1"})
    import_all(tree, [good], cache)
    before = sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))
    evil = hostile(tmp_path / "flashmla-a8f794d.tar", member("ok.h", size=1),
                   member("x", tarfile.SYMTYPE, "/etc/passwd"), data=b"k")
    _, [outcome] = import_all(tree, [evil], cache, force=True)
    assert outcome.result == "refused" and "is a symlink to the absolute path /etc/passwd" in outcome.line
    assert sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) == before
