"""clone with hostile --repo/--ref values (which may come from a shared invoke.yaml): refused before git
runs, and the URL is passed after `--` so that git never reads it as an option."""

from __future__ import annotations

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.image import bake_plan, docker_client, request
from vllm_forge.source import checkout


@pytest.mark.parametrize("repo", ["--upload-pack=touch {pwned};:", "ext::sh -c touch% {pwned}", "-u", "fd::17",
                                  "https://h/x.git\n--upload-pack=touch {pwned}"])
def test_a_hostile_repo_is_refused_before_git_runs(tmp_path, repo):
    pwned = tmp_path / "pwned"
    with pytest.raises(ForgeError, match="is not a git repository URL"):
        checkout.plan_clone(repo.format(pwned=pwned), "main", tmp_path / "co")
    assert not pwned.exists() and not (tmp_path / "co").exists()


@pytest.mark.parametrize("ref", ["--upload-pack=touch {pwned};:", "-b", "main..x", "a b", "HEAD^{{tree}}"])
def test_a_hostile_ref_is_refused_before_git_runs(tmp_path, ref):
    pwned = tmp_path / "pwned"
    with pytest.raises(ForgeError, match="is not a git tag, branch or commit name"):
        checkout.plan_clone("https://127.0.0.1:9/vllm.git", ref.format(pwned=pwned), tmp_path / "co")
    assert not pwned.exists()


def test_the_clone_url_follows_double_dash(tmp_path, monkeypatch):
    monkeypatch.setattr(checkout, "checkout_target", lambda repo, ref: "origin/main")
    clone = next(c for c in checkout.plan_clone("https://h.example/vllm.git", "main", tmp_path / "co")
                 if "clone" in c.argv)
    assert clone.argv[clone.argv.index("--") + 1] == "https://h.example/vllm.git"


@pytest.mark.parametrize("flag", ["base_image", "runtime_image", "tag"])
def test_an_image_name_that_is_a_docker_option_is_refused(tmp_path, flag):
    src = tmp_path / "vllm"
    (src / "vllm").mkdir(parents=True)
    (src / "setup.py").write_text("")
    (src / "CMakeLists.txt").write_text("project(x)\n")
    req = request.BakeRequest(src=src, context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist",
                            **{flag: "--output=type=local,dest=/"})
    with pytest.raises(ForgeError, match="is not an image reference"):
        bake_plan.plan_bake(req, docker_client.DockerClient("/usr/bin/docker", "buildkit", "20.10.24"))


def test_a_checkout_lock_planted_as_a_link_truncates_nothing(tmp_path):
    """The lock next to a checkout (.<name>.vllm-forge.lock) may be a link to a file of yours, planted by
    whatever unpacked the tree beside it."""
    from vllm_forge.core import checkout_lock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    tree = tmp_path / "vllm"
    tree.mkdir()
    checkout_lock.lock_path(tree).symlink_to(victim)
    with checkout_lock.holding(tree):
        assert not checkout_lock.lock_path(tree).is_symlink()
    assert victim.read_text() == "precious\n"
