"""Hostile inputs to bake: planted symlinks in the build context, links out of a source tree,
credentials in any URL setting (any case, user-info or query token), an apt mirror that is a sed script."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from vllm_forge.core import credentials, tree_sync
from vllm_forge.core.errors import ForgeError
from vllm_forge.core.package import PACKAGE_ROOT
from vllm_forge.core.plan import Command, mask_urls
from vllm_forge.image import bake, bake_plan, docker_client, inspection, jit, labels, request, staging

BUILDKIT = docker_client.DockerClient("/usr/bin/docker", "buildkit", "20.10.24")
SECRET = f"tok{uuid.uuid4().hex}"


# --- staging never writes through a symlink -----------------------------------------------------------------------


def test_a_planted_link_in_the_context_cannot_redirect_a_write(tmp_path):
    outside = tmp_path / "victim.txt"
    outside.write_text("host file\n")
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("print('tree')\n")
    dest = tmp_path / "context"
    (dest / "pkg").mkdir(parents=True)
    (dest / "pkg" / "mod.py").symlink_to(outside)  # left by an earlier tree, or planted
    tree_sync.sync_tree(src, dest)
    assert outside.read_text() == "host file\n"
    assert not (dest / "pkg" / "mod.py").is_symlink()
    assert (dest / "pkg" / "mod.py").read_text() == "print('tree')\n"


def test_a_planted_directory_link_cannot_redirect_a_write(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    dest = tmp_path / "context"
    dest.mkdir()
    (dest / "pkg").symlink_to(elsewhere, target_is_directory=True)
    tree_sync.sync_tree(src, dest)
    assert list(elsewhere.iterdir()) == []
    assert (dest / "pkg").is_dir() and not (dest / "pkg").is_symlink()


def test_a_link_left_by_one_tree_is_replaced_by_the_next_trees_file(tmp_path):
    """The finding: bake 1 stages a symlink, bake 2 has a regular file at that path."""
    outside = tmp_path / "victim.txt"
    outside.write_text("host file\n")
    src1, src2, dest = tmp_path / "one", tmp_path / "two", tmp_path / "context"
    src1.mkdir()
    (src1 / "inside.txt").write_text("a\n")
    (src1 / "setup.cfg").symlink_to("inside.txt")
    tree_sync.sync_tree(src1, dest)
    assert (dest / "setup.cfg").is_symlink()
    os.remove(dest / "setup.cfg")
    (dest / "setup.cfg").symlink_to(outside)  # what a link pointing out would have become
    src2.mkdir()
    (src2 / "setup.cfg").write_text("[metadata]\n")
    tree_sync.sync_tree(src2, dest)
    assert outside.read_text() == "host file\n" and (dest / "setup.cfg").read_text() == "[metadata]\n"


def test_links_in_the_source_tree_stay_links_or_are_refused(tmp_path):
    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    (src / "real" / "f.txt").write_text("f\n")
    (src / "alias").symlink_to("real", target_is_directory=True)
    (src / "f-link").symlink_to("real/f.txt")
    dest = tmp_path / "context"
    tree_sync.sync_tree(src, dest)
    assert os.readlink(dest / "alias") == "real" and os.readlink(dest / "f-link") == "real/f.txt"
    (src / "escape").symlink_to("/etc/passwd")
    with pytest.raises(ForgeError, match="outside"):
        tree_sync.sync_tree(src, dest)
    os.remove(src / "escape")
    (src / "escape").symlink_to("../../..", target_is_directory=True)
    with pytest.raises(ForgeError, match="outside"):
        tree_sync.sync_tree(src, dest)


def test_a_link_that_climbs_out_through_another_link_is_refused(tmp_path):
    """Containment is judged on the resolved path: with `d -> .`, `d/d/../../etc/passwd` reads as inside."""
    src = tmp_path / "deep" / "src"
    src.mkdir(parents=True)
    (src / "d").symlink_to(".", target_is_directory=True)
    (src / "esc").symlink_to("d/d/../../../../etc/passwd")
    assert os.path.normpath(src / "d/d/../../../../etc/passwd").startswith(str(tmp_path))  # lexically "inside"
    with pytest.raises(ForgeError, match=r"esc is a symlink to d/d/.*which resolves outside .*src"):
        tree_sync.sync_tree(src, tmp_path / "context")


def test_stage_context_replaces_planted_links(tmp_path, checkout_for_bake):
    victim = tmp_path / "victim"
    victim.mkdir()
    req = request.BakeRequest(src=checkout_for_bake, context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist")
    plan = bake_plan.plan_bake(req, BUILDKIT)
    context = plan.context
    context.mkdir(parents=True)
    (context / "forge").symlink_to(victim, target_is_directory=True)
    staging.stage_context(plan)
    assert list(victim.iterdir()) == []
    assert (context / "forge" / "docker" / "forge-env.sh").is_file()
    # what the build's plan reads besides modules: the recorded build times its estimate comes from
    assert (context / "forge" / "vllm_forge" / "build" / "build_profiles" / "vllm-0.26.0.json").is_file()
    assert (context / "forge" / "late" / "vllm_forge" / "gpu" / "doctor_inside.py").is_file()


@pytest.fixture
def checkout_for_bake(tmp_path) -> Path:
    src = tmp_path / "vllm"
    (src / "requirements").mkdir(parents=True)
    (src / "setup.py").write_text("print('setup')\n")
    (src / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.26)\n")
    (src / "requirements" / "build.txt").write_text("cmake\n")
    (src / "vllm").mkdir()
    (src / "vllm" / "__init__.py").write_text("")
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    return src


# --- one credential rule ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    f"https://user:{SECRET}@pypi.example.com/simple",
    f"HTTPS://{SECRET}@pypi.example.com/simple",
    f"Https://forge:{SECRET}@pypi.example.com/simple",
    f"https://pypi.example.com/simple?access_token={SECRET}",
    f"https://pypi.example.com/simple/?a=1&token={SECRET}",
    f"https://gitlab.example.com/api/v4/projects/1/packages/pypi/simple?private_token={SECRET}",
    f"https://bucket.s3.example.com/whl?X-Amz-Signature={SECRET}&X-Amz-Credential=k",
    # A password may hold any character a URL's user-info can: quotes, <, >, @, ;, &, $, `...
    f"https://user:pa'ss{SECRET}@idx.example.com/whl",
    f'https://user:pa"ss{SECRET}@idx.example.com/whl',
    f"https://user:pa<ss{SECRET}>@idx.example.com/whl",
    f"https://user:p@ss{SECRET}@idx.example.com/whl",
    f"https://user:p;a&s$s`{SECRET}@idx.example.com/whl",
    f"https://{SECRET}'@idx.example.com/whl",
])
def test_every_credential_form_is_found_and_masked(url):
    assert credentials.has_credentials(url) and credentials.has_credentials(url)
    assert SECRET not in mask_urls(f"pip install --index-url {url} x")
    assert SECRET not in credentials.strip_credentials(url)
    assert SECRET not in Command(["pip", "--index-url", url]).shell()


@pytest.mark.parametrize("url", ["https://pypi.example.com/simple", "ssh://git@github.com/o/r.git",
                                 "git@github.com:o/r.git", "https://h.example/x?page=2&keyword="])
def test_urls_without_credentials_pass(url):
    assert not credentials.has_credentials(url)
    assert mask_urls(url) == url


@pytest.mark.parametrize("index", [f"HTTPS://forge:{SECRET}@pypi.example.com/simple",
                                   f"https://pypi.example.com/simple?access_token={SECRET}"])
def test_index_credentials_in_any_form_go_in_as_a_secret(tmp_path, checkout_for_bake, index):
    req = request.BakeRequest(src=checkout_for_bake, context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist",
                            index_url=index)
    plan = bake_plan.plan_bake(req, BUILDKIT)
    assert "pip_index_url" in plan.secrets and plan.secret_values["pip_index_url"] == index
    assert SECRET not in "\n".join(plan.lines()) and SECRET not in str(plan.build_args)
    assert SECRET not in str(plan.labels)


@pytest.mark.parametrize("field", ["pytorch_index_base_url", "extra_index_url"])
@pytest.mark.parametrize("url", [f"https://u:{SECRET}@download.example.com/whl",
                                 f"HTTPS://{SECRET}@download.example.com/whl",
                                 f"https://download.example.com/whl?token={SECRET}",
                                 f"https://user:pa'ss{SECRET}@download.example.com/whl",
                                 f'https://user:pa"ss<{SECRET}@download.example.com/whl'])
def test_a_credential_that_would_become_a_build_arg_is_refused(tmp_path, checkout_for_bake, field, url):
    req = request.BakeRequest(src=checkout_for_bake, context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist",
                            **{field: url})
    with pytest.raises(ForgeError, match="carries credentials") as err:
        bake_plan.plan_bake(req, BUILDKIT)
    assert "--netrc" in str(err.value) and SECRET not in str(err.value)


def test_a_build_arg_with_a_query_token_is_refused(tmp_path, checkout_for_bake):
    req = request.BakeRequest(src=checkout_for_bake, context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist",
                            build_args={"X": f"https://h.example/x?access_token={SECRET}"})
    with pytest.raises(ForgeError, match="carries credentials"):
        bake_plan.plan_bake(req, BUILDKIT)


def test_the_source_label_carries_no_credential(tmp_path):
    from vllm_forge.source.checkout import CheckoutFacts

    url = f"HTTPS://{SECRET}@git.example.com/vllm.git?private_token={SECRET}"
    cloned = CheckoutFacts(tmp_path, exists=True, managed=True, repo=url, ref="main", commit="a" * 40)
    assert labels.source_identity(cloned)["repo"] == "HTTPS://git.example.com/vllm.git"
    planned = CheckoutFacts(tmp_path / "later", exists=False, managed=True)
    assert labels.source_identity(planned, planned_repo=url)["repo"] == "HTTPS://git.example.com/vllm.git"


# --- apt mirror -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mirror", ["http://m.example#g; 1e id > /tmp/x #", "http://m.example;rm -rf /",
                                    "http://m.example/ubuntu' x", "http://u:p@m.example", "ftp://m.example",
                                    "http://m.example/path&"])
def test_a_hostile_apt_mirror_never_reaches_the_dockerfile(tmp_path, checkout_for_bake, mirror):
    req = request.BakeRequest(src=checkout_for_bake, context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist",
                            apt_mirror=mirror)
    with pytest.raises(ForgeError, match="is not scheme://host"):
        bake_plan.plan_bake(req, BUILDKIT)
    req = request.BakeRequest(src=checkout_for_bake, context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist",
                            build_args={"APT_MIRROR": mirror})
    with pytest.raises(ForgeError, match="is not scheme://host"):
        bake_plan.plan_bake(req, BUILDKIT)


def test_a_plain_apt_mirror_passes(tmp_path, checkout_for_bake):
    req = request.BakeRequest(src=checkout_for_bake, context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist",
                            apt_mirror="http://mirrors.example.cn:8080/")
    assert bake_plan.plan_bake(req, BUILDKIT).build_args["APT_MIRROR"] == "http://mirrors.example.cn:8080"


@pytest.mark.parametrize("mirror,ok", [("http://mirrors.example.cn", True), ("https://m.example:8443", True),
                                       ("http://m.example#g; 1e id #", False), ("http://m.example;x", False),
                                       ("file:///etc", False), ("http://", False)])
def test_the_dockerfile_refuses_a_hostile_apt_mirror_itself(tmp_path, mirror, ok):
    """docker/forge-apt.sh, which both stages of the Dockerfile run, on a copy of an apt sources list."""
    sources = "deb http://deb.debian.org/debian bookworm main\ndeb http://archive.ubuntu.com/ubuntu noble main\n"
    (tmp_path / "sources.list").write_text(sources)
    proc = subprocess.run(["sh", str(PACKAGE_ROOT / "docker" / "forge-apt.sh")],
                          capture_output=True, text=True,
                          env={"APT_MIRROR": mirror, "APT_ETC": str(tmp_path), "PATH": os.environ["PATH"]})
    assert (proc.returncode == 0) == ok, proc.stderr
    rewritten = (tmp_path / "sources.list").read_text()
    assert rewritten == (sources.replace("http://deb.debian.org", mirror).replace("http://archive.ubuntu.com", mirror)
                         if ok else sources)


def test_a_deps_marker_with_a_credential_is_staged_without_it(tmp_path, checkout_for_bake):
    """A cache made before the fix holds the --url-map credential in its marker: bake's copy does not."""
    import json

    from vllm_forge.deps import fetch_deps
    from vllm_forge.source.vllm_tree import inspect_tree

    (checkout_for_bake / "CMakeLists.txt").write_text(
        "project(x)\nif(DEFINED ENV{VLLM_CUTLASS_SRC_DIR})\n  set(VLLM_CUTLASS_SRC_DIR $ENV{VLLM_CUTLASS_SRC_DIR})\n"
        "endif()\nif(VLLM_CUTLASS_SRC_DIR)\n  FetchContent_Declare(cutlass SOURCE_DIR ${VLLM_CUTLASS_SRC_DIR})\n"
        "else()\n  FetchContent_Declare(cutlass GIT_REPOSITORY https://github.com/nvidia/cutlass.git GIT_TAG v4.0.0)\n"
        "endif()\n")
    (dep,) = inspect_tree(checkout_for_bake).git_deps
    cache = tmp_path / "cache"
    clone = fetch_deps.dep_dir(cache, dep)
    clone.mkdir(parents=True)
    (clone / "README").write_text("cutlass\n")
    (clone.parent / (clone.name + fetch_deps.MARKER_SUFFIX)).write_text(json.dumps({
        "name": dep.name, "repository": dep.repository, "tag": dep.tag,
        "fetched_from": f"https://forge:{SECRET}@mirror.example/github/nvidia/cutlass.git?private_token={SECRET}"}))
    req = request.BakeRequest(src=checkout_for_bake, context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist",
                            deps_cache=cache)
    plan = bake_plan.plan_bake(req, BUILDKIT)
    staging.stage_git_deps(plan, tmp_path / "deps")
    staged = json.loads((tmp_path / "deps" / (clone.name + fetch_deps.MARKER_SUFFIX)).read_text())
    assert staged["fetched_from"] == "https://mirror.example/github/nvidia/cutlass.git"
    assert staged["repository"] == dep.repository and staged["tag"] == dep.tag  # still a cache hit inside
    assert not [p for p in (tmp_path / "deps").rglob("*") if p.is_file() and SECRET in p.read_text()]


def test_a_link_planted_at_the_bake_lock_truncates_nothing(tmp_path):
    """The finding: build/bake/.bake.lock as a link had its target truncated (and the pid written there)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    context_dir = tmp_path / "bake"
    context_dir.mkdir()
    (context_dir / ".bake.lock").symlink_to(victim)
    with bake._context_lock(context_dir):
        pass
    assert victim.read_text() == "precious\n"
    assert not (context_dir / ".bake.lock").is_symlink()


def test_a_planted_link_at_the_secret_file_is_replaced(tmp_path, checkout_for_bake, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    req = request.BakeRequest(src=checkout_for_bake, context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist",
                            index_url=f"https://u:{SECRET}@idx.example.com/simple")
    plan = bake_plan.plan_bake(req, BUILDKIT)
    secret = Path(plan.secrets["pip_index_url"])
    secret.parent.mkdir(parents=True)
    secret.symlink_to(victim)
    seen = []
    monkeypatch.setattr(bake, "run_command", lambda command, **kw: seen.append(secret.read_text()))
    plan.stage_context = False
    bake._run_bake(plan)
    assert victim.read_text() == "precious\n" and seen and SECRET in seen[0]


def test_the_command_log_is_never_appended_through_a_link(tmp_path, monkeypatch):
    from vllm_forge.core.plan import COMMAND_LOG_ENV, record_command

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    log = tmp_path / "forge-commands.jsonl"
    log.symlink_to(victim)  # e.g. another user of the host, in /tmp
    monkeypatch.setenv(COMMAND_LOG_ENV, str(log))
    with pytest.raises(ForgeError, match=r"VLLM_FORGE_COMMAND_LOG .*forge-commands.jsonl is a symlink .* Fix: remove"):
        record_command(Command(["true"]))
    assert victim.read_text() == "precious\n"
    log.unlink()
    record_command(Command(["true"]))
    assert log.read_text().startswith('{"shell": "true"')


# --- files that hold logins, and the checkout's .dockerignore -------------------------------------------------


LOGIN_FILES = [".env", ".env.production", "deploy/.env.local", ".envrc", ".pypirc", ".netrc", "_netrc",
               ".git-credentials", ".gitconfig", ".docker/config.json", "tools/.dockercfg", ".aws/credentials",
               ".aws/config", ".config/gcloud/application_default_credentials.json",
               "ci/application_default_credentials.json", ".kube/config", "k8s/kubeconfig", ".ssh/id_ed25519",
               "keys/id_rsa", "id_ecdsa"]


def test_files_that_hold_logins_are_left_out_and_reported(tmp_path, checkout_for_bake):
    """The finding: git-ignored .env, .pypirc, .docker/config.json, .aws/credentials were staged."""
    for rel in LOGIN_FILES:
        path = checkout_for_bake / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"TOKEN={SECRET}\n")
    (checkout_for_bake / ".env.example").write_text("TOKEN=\n")  # a template holds no login: it stays
    left: list[str] = []
    dest = tmp_path / "context"
    staging.stage_checkout(checkout_for_bake, dest, tmp_path / "git-mirror", left_out=left)
    staged = [p for p in dest.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert staged == []
    assert (dest / ".env.example").is_file() and (dest / "setup.py").is_file()
    assert len(left) == 1 and ".aws/credentials" in left[0] and ".ssh/" in left[0] or "..." in left[0]
    assert left[0].startswith(f"left out of the build context, of {checkout_for_bake}: 20 that hold logins (")


def test_the_checkouts_dockerignore_is_honoured(tmp_path, checkout_for_bake):
    (checkout_for_bake / ".dockerignore").write_text(
        "# vLLM's own kind of rules\n/build\n*.log\ndocs/**\n!docs/keep.md\nvllm/*.bin\n**/scratch\n  \n")
    for rel in ("run.log", "docs/a/b.md", "docs/keep.md", "vllm/w.bin", "vllm/sub/w.bin", "x/scratch/y.txt",
                "logs/run.log"):
        (checkout_for_bake / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout_for_bake / rel).write_text("x\n")
    left: list[str] = []
    dest = tmp_path / "context"
    staging.stage_checkout(checkout_for_bake, dest, tmp_path / "git-mirror", left_out=left)
    got = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() and ".git" not in p.parts)
    assert "docs/keep.md" in got and "vllm/sub/w.bin" in got and "logs/run.log" in got  # as Docker decides
    for gone in ("run.log", "docs/a/b.md", "vllm/w.bin", "x/scratch/y.txt"):
        assert gone not in got
    assert "4 that its .dockerignore names" in left[0]


@pytest.mark.parametrize("pattern", ["*a" * 12 + "b", "**/" * 30 + "x", "[a-z]*" * 40])
def test_a_hostile_dockerignore_pattern_stays_linear(tmp_path, checkout_for_bake, pattern):
    """Docker matches .dockerignore with Go's RE2; a backtracking matcher takes hours on `*a*a*a...b`."""
    import time

    (checkout_for_bake / ".dockerignore").write_text(pattern + "\n")
    (checkout_for_bake / ("a" * 200)).write_text("x\n")
    started = time.monotonic()
    staging.stage_checkout(checkout_for_bake, tmp_path / "context", tmp_path / "git-mirror")
    assert time.monotonic() - started < 20  # seconds; a backtracking match of this pattern: far beyond


# --- --image references, wherever one is taken ------------------------------------------------------------------


@pytest.fixture
def recording_docker(tmp_path):
    """A docker client that records every call (and whose engine answers), for VLLM_FORGE_DOCKER."""
    log = tmp_path / "docker-calls.log"
    docker = tmp_path / "docker"
    docker.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nif [ "$1" = version ]; then echo 20.10.24; fi\n'
                      'if [ "$1" = info ]; then echo 20.10.24; fi\nexit 0\n')
    docker.chmod(0o755)
    return docker, log


HOSTILE_IMAGES = ["--privileged", "--output=type=local,dest=/", "-v/:/host", "img\nname", "a b"]


@pytest.mark.parametrize("task", [
    ["audit", "--image={image}", "--arch", "12.0"], ["doctor", "--image={image}"],
    ["nccl-test", "--image={image}", "--gpus", "1", "--dry-run"], ["check-size", "--image={image}"],
    ["inspect", "--image={image}"], ["serve", "m", "--image={image}", "--dry-run"],
])
def test_every_task_that_takes_an_image_checks_it_before_docker(task, recording_docker):
    docker, log = recording_docker
    repo = Path(__file__).resolve().parents[2]
    for hostile in HOSTILE_IMAGES[:3]:
        argv = [part.format(image=hostile) for part in task]
        out = subprocess.run([sys.executable, "-m", "invoke", *argv], cwd=repo, capture_output=True, text=True,
                             timeout=120, env={**os.environ, "COLUMNS": "300", "VLLM_FORGE_DOCKER": str(docker)})
        assert out.returncode == 2 and "is not an image reference" in out.stderr, (argv, out.stdout, out.stderr)
        calls = log.read_text().splitlines() if log.exists() else []
        assert not [c for c in calls if hostile in c], calls


@pytest.mark.parametrize("hostile", HOSTILE_IMAGES)
def test_the_image_functions_check_it_themselves(hostile, tmp_path):
    from vllm_forge.audit import audit
    from vllm_forge.nccl import doctor, nccl_test

    ran = []

    def runner(argv, **kw):
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    for call in (lambda: audit.scan_image(hostile, docker="/bin/true"),
                 lambda: audit.audit_image(hostile, ["12.0"], docker="/bin/true"),
                 lambda: doctor.run_doctor(image=hostile, docker="/bin/true", runner=runner),
                 lambda: nccl_test.plan_run(gpus=1, out_dir=tmp_path, image=hostile, has_torch=lambda p: True),
                 lambda: jit.image_jit_facts("/bin/true", hostile),
                 lambda: inspection.image_size_breakdown("/bin/true", hostile),
                 lambda: inspection.image_size_report("/bin/true", hostile)):
        with pytest.raises(ForgeError, match="is not an image reference"):
            call()
    assert ran == []
