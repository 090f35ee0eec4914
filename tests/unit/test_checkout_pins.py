import pytest

from vllm_forge.source.checkout import _only_torch_pins_removed, remaining_torch_pins


@pytest.mark.parametrize("line", [
    "torch==2.14.0",
    "torch == 2.6.0",
    '    "torch == 2.14.0",',
    "torchvision==0.29.0 # for phi3v",
    "torchaudio>=2.5; platform_machine == 'x86_64'",
    "torch @ https://download.pytorch.org/whl/cu128/torch-2.7.0.whl",
    "torch[opt-einsum]==2.7.0",
])
def test_pins_are_found(tmp_path, line):
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "cuda.txt").write_text(f"numpy\n{line}\n")
    assert len(remaining_torch_pins(tmp_path)) == 1


@pytest.mark.parametrize("line", [
    "torchaudio; platform_machine != 's390x'",
    "torchcodec >= 0.14",
    "# torch==2.6.0 is what upstream uses",
    "torch-memory-saver==0.0.8",
    "pytorch-triton==3.3.0",
])
def test_non_pins_are_left_alone(tmp_path, line):
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "cuda.txt").write_text(f"{line}\n")
    assert remaining_torch_pins(tmp_path) == []


def test_pins_in_nested_requirements_and_pyproject(tmp_path):
    (tmp_path / "requirements" / "build").mkdir(parents=True)
    (tmp_path / "requirements" / "build" / "cuda.txt").write_text("torch==2.14.0\n")
    (tmp_path / "requirements" / "test.in").write_text("torch==2.14.0\n")
    (tmp_path / "pyproject.toml").write_text('requires = [\n  "torch == 2.14.0",\n]\n')
    assert [line.split(":")[0] for line in remaining_torch_pins(tmp_path)] == [
        "requirements/build/cuda.txt", "requirements/test.in", "pyproject.toml"]


def test_only_removed_torch_lines_count_as_our_edit():
    ours = "--- a/r.txt\n+++ b/r.txt\n@@ -2 +1,0 @@\n-torch==2.6.0\n-torchvision==0.21.0\n"
    assert _only_torch_pins_removed(ours)
    theirs = ours + "+numpy==2.0\n"
    assert not _only_torch_pins_removed(theirs)
    assert not _only_torch_pins_removed("--- a/r.txt\n+++ b/r.txt\n-numpy\n")


def test_an_unreachable_repository_names_git_s_cause_and_fixes_that_exist(tmp_path):
    """git's first fatal line is the cause (its last is advice); the fix names --vllm-src, and a GitHub proxy
    only for a GitHub URL, saying where one is set (no built-in mirror profile has one)."""
    from vllm_forge.image import mirrors
    from vllm_forge.source.checkout import RemoteUnreachable, checkout_target, unreachable_fix

    with pytest.raises(RemoteUnreachable) as err:
        checkout_target(f"file://{tmp_path}/nope.git", "main")
    assert str(err.value) == (f"cannot read file://{tmp_path}/nope.git: '{tmp_path}/nope.git' does not appear to "
                              "be a git repository. Fix: check the URL and your network; or build a checkout you "
                              "already have with --vllm-src PATH.")
    github = unreachable_fix("https://github.com/vllm-project/vllm.git")
    assert "forge.mirrors.NAME.github_proxy" in github and "--mirror NAME" in github and "--vllm-src PATH" in github
    assert not [name for name in mirrors.known_mirror_names() if mirrors.load_mirror(name).github_proxy]
