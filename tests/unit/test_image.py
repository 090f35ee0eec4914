"""image/ without a Docker engine: ARG parsing, client choice, bake plans, context staging."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from vllm_forge.core import credentials, tree_sync
from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.image import bake_plan, docker_client, dockerfile, inspection, runtime_requirements, staging
from vllm_forge.image import labels as labels_mod
from vllm_forge.image import request as request_mod

REPO = Path(__file__).resolve().parents[2]
FORGE_DOCKERFILE = REPO / "docker" / "Dockerfile"
UPSTREAM_FIXTURE = REPO / "tests" / "fixtures" / "upstream_dockerfile" / "Dockerfile"
BUILDKIT = docker_client.DockerClient("/usr/bin/docker", "buildkit", "20.10.24")
BUILDX = docker_client.DockerClient("/usr/local/bin/docker", "buildx", "28.2.2")
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)

# vLLM's names for the knobs both recipes share (read from vLLM's docker/Dockerfile, 0.9-0.11).
UPSTREAM_NAMES = {
    "BUILD_BASE_IMAGE",
    "FINAL_BASE_IMAGE",
    "torch_cuda_arch_list",
    "max_jobs",
    "nvcc_threads",
    "USE_SCCACHE",
    "VLLM_MAX_SIZE_MB",
    "RUN_WHEEL_CHECK",
    "PIP_INDEX_URL",
    "UV_INDEX_URL",
    "PYTORCH_CUDA_INDEX_BASE_URL",
    "CUDA_VERSION",
}


@pytest.fixture
def checkout(tmp_path) -> Path:
    src = tmp_path / "vllm"
    (src / "requirements").mkdir(parents=True)
    (src / "setup.py").write_text("print('setup')\n")
    (src / "CMakeLists.txt").write_text("cmake_minimum_required(VERSION 3.26)\n")
    (src / "vllm").mkdir()
    (src / "vllm" / "__init__.py").write_text("")
    (src / "requirements" / "build.txt").write_text("cmake\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(src)]
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    subprocess.run(git + ["tag", "v1.2.3"], check=True)
    return src


def request(src, tmp_path, arch="12.0", cuda="12.8", **kw) -> request_mod.BakeRequest:
    """A request as the resolved settings make it: ``arch``/``cuda`` as typed on a command line, parsed once."""
    return request_mod.BakeRequest(src=src, archs=parse_arch_list(arch), cuda=CudaRelease.parse(cuda),
                                   context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist", **kw)


# --- the Dockerfile itself -----------------------------------------------------------------------------


def test_forge_dockerfile_uses_upstream_names_and_has_the_three_stages():
    declared = dockerfile.dockerfile_args(FORGE_DOCKERFILE)
    assert UPSTREAM_NAMES <= set(declared)
    assert {"UV_DEFAULT_INDEX", "COMPILE_CACHE", "CMAKE_BUILD_TYPE", "RUN_WHEEL_AUDIT"} <= set(declared)
    assert declared["BUILD_BASE_IMAGE"] == "nvcr.io/nvidia/pytorch:25.02-py3"  # the real default, not a stand-in
    assert "standin" not in FORGE_DOCKERFILE.read_text()
    assert dockerfile.dockerfile_stages(FORGE_DOCKERFILE) == ["build", "wheel", "runtime", "runtime-nonroot"]


def test_forge_dockerfile_runs_on_docker_20_10_buildkit():
    text = FORGE_DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE)  # no frontend pull
    assert not re.search(r"<<-?\s*['\"]?\w+", text)  # no heredocs
    assert "git clone" not in text  # the source comes from the context, never a second clone
    assert {"ca_bundle", "pip_index_url", "netrc"} <= dockerfile.dockerfile_secret_ids(FORGE_DOCKERFILE)


def test_default_base_matches_compat_table():
    from vllm_forge.gpu import compat

    default_ngc = compat.default_ngc_tag(CudaRelease(12, 8))
    assert dockerfile.dockerfile_args(FORGE_DOCKERFILE)["BUILD_BASE_IMAGE"] == default_ngc.image
    assert dockerfile.dockerfile_args(FORGE_DOCKERFILE)["FINAL_BASE_IMAGE"] == compat.CUDA_RUNTIME_IMAGES["12.8"]


def test_runtime_stage_keeps_no_build_tree():
    text = FORGE_DOCKERFILE.read_text()
    runtime = text[text.index("AS runtime") :]
    assert "COPY vllm" not in runtime and "COPY forge" not in runtime
    assert "type=bind,from=build" in runtime  # the wheel arrives through a bind mount
    assert "type=cache,target=/root/.cache/pip" in runtime


@pytest.mark.parametrize("version", ["0.9.2", "0.10.0", "0.11.0"])
def test_names_match_a_real_vllm_dockerfile(version):
    real = Path(f"/work/cache/vllm-sdists/vllm-{version}/docker/Dockerfile")
    if not real.is_file():
        pytest.skip(f"vLLM {version} sdist not unpacked here")
    declared = set(dockerfile.dockerfile_args(real))
    assert UPSTREAM_NAMES - {"USE_SCCACHE"} <= declared | {"UV_INDEX_URL", "CUDA_VERSION"}
    assert "build" in dockerfile.dockerfile_stages(real) and "vllm-openai" in dockerfile.dockerfile_stages(real)


def test_dockerfile_args_parses_multi_and_continued_lines(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text(
        "ARG A=1\n# ARG COMMENTED=1\nFROM x AS one\nARG B C=3 \\\n  D='x y'\nARG A\nARG E\nFROM one AS two\n"
    )
    assert dockerfile.dockerfile_args(path) == {"A": "1", "B": None, "C": "3", "D": "x y", "E": None}
    assert dockerfile.dockerfile_stages(path) == ["one", "two"]


# --- which docker ---------------------------------------------------------------------------------------


def fake_runner(buildx: set[str], builtin: set[str]):
    def run(argv, **kwargs):
        path = argv[0]
        if argv[1:3] == ["buildx", "version"]:
            return SimpleNamespace(returncode=0 if path in buildx else 1, stdout="", stderr="")
        if argv[1] == "build":
            assert kwargs["env"]["DOCKER_BUILDKIT"] == "1"
            return SimpleNamespace(returncode=0 if path in builtin else 1, stdout="", stderr="")
        if argv[1] == "version":
            return SimpleNamespace(returncode=0, stdout="20.10.24\n", stderr="")
        if argv[1] == "info":
            return SimpleNamespace(returncode=0, stdout="20.10.24\n", stderr="")
        raise AssertionError(argv)

    return run


def test_find_docker_prefers_buildx_then_builtin(monkeypatch):
    monkeypatch.delenv("VLLM_FORGE_DOCKER", raising=False)
    monkeypatch.setattr(docker_client, "_candidate_clients",
                        lambda explicit: [explicit] if explicit else ["/new", "/old"])
    client = docker_client.find_docker(runner=fake_runner(buildx=set(), builtin={"/old"}))
    assert (client.path, client.mode) == ("/old", "buildkit")
    assert client.build_env == {"DOCKER_BUILDKIT": "1"} and client.build_argv == ["/old", "build"]
    client = docker_client.find_docker(runner=fake_runner(buildx={"/old"}, builtin={"/old", "/new"}))
    assert (client.path, client.mode) == ("/old", "buildx")
    assert client.build_argv == ["/old", "buildx", "build"] and client.build_env == {}


def test_find_docker_honours_explicit_and_env(monkeypatch):
    monkeypatch.setattr(docker_client, "_candidate_clients",
                        lambda explicit: [explicit] if explicit else ["/new", "/old"])
    monkeypatch.setenv("VLLM_FORGE_DOCKER", "/env-docker")
    runner = fake_runner(buildx=set(), builtin={"/env-docker", "/flag"})
    assert docker_client.find_docker(runner=runner).path == "/env-docker"
    assert docker_client.find_docker("/flag", runner=runner).path == "/flag"


def test_find_docker_without_buildkit_says_how(monkeypatch):
    monkeypatch.delenv("VLLM_FORGE_DOCKER", raising=False)
    monkeypatch.setattr(docker_client, "_candidate_clients", lambda explicit: ["/new"])
    with pytest.raises(ForgeError, match="buildx"):
        docker_client.find_docker(runner=fake_runner(buildx=set(), builtin=set()))


# --- plans ----------------------------------------------------------------------------------------------


def flag_values(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def cloned(src: Path, origin: str, ref: str):
    """``src`` as `invoke clone` leaves it: an origin remote and the ref it checked out recorded."""
    from vllm_forge.source.checkout import read_checkout

    subprocess.run(["git", "-C", str(src), "remote", "add", "origin", origin], check=True)
    subprocess.run(["git", "-C", str(src), "config", "vllm-forge.ref", ref], check=True)
    return read_checkout(src, managed=True)


def test_forge_plan_is_the_exact_command(checkout, tmp_path):
    facts = cloned(checkout, "https://u:pw@git.example/vllm.git", "v1.2.3")
    plan = bake_plan.plan_bake(request(checkout, tmp_path, arch="9.0a;12.0+PTX", cuda="12.8", checkout=facts),
                           BUILDKIT, now=NOW)
    (command,) = plan.commands
    argv = command.argv
    assert argv[:3] == ["/usr/bin/docker", "build", "--progress=plain"] and command.env == {"DOCKER_BUILDKIT": "1"}
    args = dict(a.split("=", 1) for a in flag_values(argv, "--build-arg"))
    assert args["torch_cuda_arch_list"] == "9.0a;12.0+PTX"
    assert args["BUILD_BASE_IMAGE"] == "nvcr.io/nvidia/pytorch:25.02-py3"
    assert args["FINAL_BASE_IMAGE"].startswith("nvcr.io/nvidia/cuda:12.8")
    assert args["max_jobs"] == "0" and args["CUDA_VERSION"] == "12.8"
    assert "vllm_fa_cmake_gpu_arches" not in args  # not a knob of this recipe: derived from the arch list
    labels = dict(a.split("=", 1) for a in flag_values(argv, "--label"))
    assert labels["org.opencontainers.image.source"] == "https://git.example/vllm.git"  # no password in a label
    assert labels["org.opencontainers.image.created"] == "2026-01-02T03:04:05Z"
    assert labels["org.vllm-forge.vllm.ref"] == "v1.2.3" and len(labels["org.vllm-forge.vllm.commit"]) == 40
    assert labels["org.vllm-forge.sm"] == "sm_90a,sm_120" and labels["org.vllm-forge.cuda"] == "12.8"
    assert labels["org.vllm-forge.version"]
    assert labels["org.vllm-forge.vllm.dirty"] == "false" and labels["org.vllm-forge.mirror"] == "global"
    assert flag_values(argv, "-t") == ["vllm-forge/vllm:v1.2.3-cu128-sm90a-sm120"]
    assert argv[-1] == str(tmp_path / "bake" / "context") and plan.stage_context
    assert flag_values(argv, "--target") == ["runtime"]
    assert any(line.startswith("# stage the build context") for line in plan.lines())
    assert plan.lines()[-1] == command.shell()


def test_labels_and_tag_describe_the_checkout_that_is_built(checkout, tmp_path):
    """Not the configuration's defaults: a checkout of another repository at another ref, a local
    checkout (--vllm-src: ref `local`), and one with changes of its own (dirty)."""
    facts = cloned(checkout, "file:///srv/forks/vllm.git", "v0.1.0")
    labels = bake_plan.plan_bake(request(checkout, tmp_path, checkout=facts), BUILDKIT).labels
    assert labels["org.vllm-forge.vllm.repo"] == "file:///srv/forks/vllm.git"
    assert labels["org.vllm-forge.vllm.ref"] == "v0.1.0"
    local = bake_plan.plan_bake(request(checkout, tmp_path), BUILDKIT)  # no facts given: a local checkout
    commit = local.labels["org.vllm-forge.vllm.commit"]
    assert local.labels["org.vllm-forge.vllm.ref"] == "local" and len(commit) == 40
    assert local.image == f"vllm-forge/vllm:local-{commit[:12]}-cu128-sm120"
    (checkout / "setup.py").write_text("print('my change')\n")
    dirty = bake_plan.plan_bake(request(checkout, tmp_path), BUILDKIT)
    assert dirty.labels["org.vllm-forge.vllm.dirty"] == "true" and dirty.image.endswith(
        f"local-{commit[:12]}-dirty-cu128-sm120")


def test_builder_and_registry_cache_are_applied_or_refused(checkout, tmp_path):
    plan = bake_plan.plan_bake(request(checkout, tmp_path, builder="gpu-builders",
                                   registry_cache="reg.example/team/cache"), BUILDX)
    argv = plan.commands[0].argv
    assert flag_values(argv, "--builder") == ["gpu-builders"]
    assert flag_values(argv, "--cache-from") == ["type=registry,ref=reg.example/team/cache:buildcache"]
    assert flag_values(argv, "--cache-to")[0].startswith("type=registry,ref=reg.example/team/cache:buildcache")
    for settings in ({"builder": "gpu-builders"}, {"registry_cache": "reg.example/team/cache"}):
        with pytest.raises(ForgeError, match="buildx"):  # Docker 20.10 without buildx: refused, not dropped
            bake_plan.plan_bake(request(checkout, tmp_path, **settings), BUILDKIT)


def test_index_url_with_credentials_travels_as_secret(checkout, tmp_path):
    url = "https://forge:s3cret-token@pypi.example/simple"
    plan = bake_plan.plan_bake(request(checkout, tmp_path, index_url=url, ca_bundle=checkout / "setup.py"), BUILDKIT)
    text = "\n".join(plan.lines())
    assert "s3cret-token" not in text
    assert "PIP_INDEX_URL" not in text
    assert f"id=pip_index_url,src={tmp_path / 'bake' / 'secrets' / 'pip_index_url'}" in text
    assert f"id=ca_bundle,src={checkout / 'setup.py'}" in text
    assert plan.secret_values == {"pip_index_url": url}
    plain = bake_plan.plan_bake(request(checkout, tmp_path, index_url="https://mirror.example/simple"), BUILDKIT)
    args = flag_values(plain.commands[0].argv, "--build-arg")
    assert (
        "PIP_INDEX_URL=https://mirror.example/simple" in args
        and "UV_DEFAULT_INDEX=https://mirror.example/simple" in args
    )


def test_credentials_never_become_build_args(checkout, tmp_path):
    with pytest.raises(ForgeError, match="--netrc"):
        bake_plan.plan_bake(request(checkout, tmp_path, extra_index_url="https://u:p@x/simple"), BUILDKIT)
    with pytest.raises(ForgeError, match="secret"):
        bake_plan.plan_bake(request(checkout, tmp_path, build_args={"X": "https://u:p@x"}), BUILDKIT)
    with pytest.raises(ForgeError, match="is not a file"):
        bake_plan.plan_bake(request(checkout, tmp_path, ca_bundle=tmp_path / "missing.pem"), BUILDKIT)


def test_buildx_mode_loads_pushes_and_caches(checkout, tmp_path):
    plan = bake_plan.plan_bake(
        request(
            checkout,
            tmp_path,
            builder="ci",
            platform="linux/amd64",
            cache_from=["type=registry,ref=r/c"],
            cache_to=["type=registry,ref=r/c,mode=max"],
        ),
        BUILDX,
    )
    argv = plan.commands[0].argv
    assert argv[:3] == ["/usr/local/bin/docker", "buildx", "build"] and "--load" in argv
    assert flag_values(argv, "--builder") == ["ci"] and flag_values(argv, "--platform") == ["linux/amd64"]
    assert flag_values(argv, "--cache-to") == ["type=registry,ref=r/c,mode=max"]
    pushed = bake_plan.plan_bake(request(checkout, tmp_path, push=True, tag="reg.example/t/vllm:1"), BUILDX)
    assert "--push" in pushed.commands[0].argv and "--load" not in pushed.commands[0].argv


def test_builtin_buildkit_pushes_after_and_refuses_cache_to(checkout, tmp_path):
    plan = bake_plan.plan_bake(request(checkout, tmp_path, push=True, tag="reg.example/t/vllm:1"), BUILDKIT)
    assert [c.argv[:2] for c in plan.commands] == [["/usr/bin/docker", "build"], ["/usr/bin/docker", "push"]]
    with pytest.raises(ForgeError, match="buildx"):
        bake_plan.plan_bake(request(checkout, tmp_path, cache_to=["type=local,dest=/tmp/c"]), BUILDKIT)
    with pytest.raises(ForgeError, match="--tag"):
        bake_plan.plan_bake(request(checkout, tmp_path, push=True), BUILDKIT)


def test_wheel_target_exports_only_the_wheel(checkout, tmp_path):
    plan = bake_plan.plan_bake(request(checkout, tmp_path, target="wheel"), BUILDKIT)
    argv = plan.commands[0].argv
    # into a private staging dir in dist/, moved into dist/ by rename after the export
    assert flag_values(argv, "--output") == [f"type=local,dest={plan.export_dir}"]
    assert plan.export_dir.parent == tmp_path / "dist" and plan.export_dir.name.startswith(".staging-")
    assert "-t" not in argv and "--label" not in argv and plan.image == ""
    with pytest.raises(ForgeError, match="--target"):
        bake_plan.plan_bake(request(checkout, tmp_path, target="dev"), BUILDKIT)


def test_upstream_plan_passes_only_declared_args(checkout, tmp_path):
    (checkout / "docker").mkdir()
    (checkout / "docker" / "Dockerfile").write_text(UPSTREAM_FIXTURE.read_text())
    plan = bake_plan.plan_bake(
        request(
            checkout,
            tmp_path,
            dockerfile="upstream",
            arch="12.0",
            cuda="12.8",
            cuda_explicit=True,
            compile_cache="sccache",
        ),
        BUILDKIT,
    )
    argv = plan.commands[0].argv
    args = dict(a.split("=", 1) for a in flag_values(argv, "--build-arg"))
    assert args["torch_cuda_arch_list"] == "12.0" and args["vllm_fa_cmake_gpu_arches"] == "120-real"
    assert args["USE_SCCACHE"] == "1" and args["CUDA_VERSION"].startswith("12.8.")
    assert int(args["max_jobs"]) >= 1 and int(args["nvcc_threads"]) >= 1  # upstream has no "automatic"
    assert "BUILD_BASE_IMAGE" not in args and "COMPILE_CACHE" not in args  # its own default base; not its knob
    # The context is a staged copy of the checkout (its .git without credentials), never the checkout.
    staged = tmp_path / "bake" / "checkout"
    assert flag_values(argv, "--target") == ["vllm-openai"] and argv[-1] == str(staged)
    assert flag_values(argv, "-f") == [str(staged / "docker" / "Dockerfile")]
    assert plan.stage_context and any("own default" in n for n in plan.notes)
    wheel = bake_plan.plan_bake(request(checkout, tmp_path, dockerfile="upstream", target="wheel"), BUILDKIT)
    kinds = [c.argv[1] for c in wheel.commands]
    assert kinds == ["build", "create", "cp", "rm"]
    assert wheel.commands[2].argv[2].endswith(":/workspace/dist/.") and wheel.commands[2].argv[3] == str(
        wheel.export_dir
    )
    assert wheel.export_dir.parent == tmp_path / "dist" and wheel.cleanup[0][1:3] == ["rm", "-f"]


def test_upstream_without_a_dockerfile_says_so(checkout, tmp_path):
    with pytest.raises(ForgeError, match="no Dockerfile of its own"):
        bake_plan.plan_bake(request(checkout, tmp_path, dockerfile="upstream"), BUILDKIT)


def test_not_a_checkout_and_bad_arch_fail_before_docker(tmp_path):
    with pytest.raises(ForgeError, match="not a vLLM checkout"):
        bake_plan.plan_bake(request(tmp_path, tmp_path), BUILDKIT)


# --- small pieces -----------------------------------------------------------------------------------------


def test_strip_credentials():
    assert credentials.strip_credentials("https://u:p@h.example/x") == "https://h.example/x"
    assert credentials.strip_credentials("https://h.example/x") == "https://h.example/x"
    assert credentials.has_credentials("https://tok@h/x") and not credentials.has_credentials("git@github.com:o/r.git")


@pytest.mark.parametrize(
    "created_by,expected",
    [
        ("RUN |2 A=1 B=x y /bin/sh -c pip install x # buildkit", "RUN pip install x"),
        ("/bin/sh -c #(nop)  ENV PATH=/x", "ENV PATH=/x"),
        ("COPY /workspace/meta/wheel.sha256 /opt/x # buildkit", "COPY /workspace/meta/wheel.sha256 /opt/x"),
        ("", "(a layer of the base image)"),
    ],
)
def test_clean_instruction(created_by, expected):
    assert inspection.clean_instruction(created_by) == expected


def test_default_tag_is_a_valid_docker_tag():
    identity = {"ref": "feature/x@y", "commit": "0" * 40, "dirty": "false"}
    tag = labels_mod.default_tag(identity, CudaRelease(12, 8), parse_arch_list("12.0"), "build")
    assert tag == "vllm-forge/vllm:feature-x-y-cu128-sm120-build"


def test_sync_tree_copies_changes_and_drops_build_outputs(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    (src / "vllm" / "__pycache__").mkdir(parents=True)
    (src / "build").mkdir()
    (src / "vllm" / "a.py").write_text("a")
    (src / "vllm" / "_C.abi3.so").write_text("binary")
    (src / "vllm" / "__pycache__" / "a.pyc").write_text("c")
    (src / "build" / "junk").write_text("j")
    (src / "link").symlink_to("vllm/a.py")
    assert tree_sync.sync_tree(src, dest) == 2
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == ["link", "vllm", "vllm/a.py"]
    assert tree_sync.sync_tree(src, dest) == 0  # unchanged: nothing copied
    (src / "vllm" / "a.py").unlink()
    (src / "vllm" / "b.py").write_text("b")
    tree_sync.sync_tree(src, dest)
    assert not (dest / "vllm" / "a.py").exists() and (dest / "vllm" / "b.py").read_text() == "b"


def test_the_staged_modules_are_what_the_build_runs_and_nothing_else():
    needed = staging.staged_modules()
    assert {"vllm_forge", "vllm_forge.core", "vllm_forge.build", "vllm_forge.build.build_wheel",
            "vllm_forge.source.checkout", "vllm_forge.build.wheel_size", "vllm_forge.audit.audit",
            "vllm_forge.core.errors", "vllm_forge.gpu.archs", "vllm_forge.gpu.compat", "vllm_forge.core.plan",
            "vllm_forge.gpu.toolchain"} <= needed
    assert "vllm_forge.build.setup_targets" in needed  # run by build_wheel as a program, never imported
    assert not {name for name in needed if name.split(".")[1:2] in (["image"], ["serve"], ["nccl"], ["report"])}
    assert "vllm_forge.pipeline" not in needed
    assert staging.staged_modules(staging.LATE_MODULES) == {
        "vllm_forge", "vllm_forge.image", "vllm_forge.image.runtime_requirements", "vllm_forge.gpu",
        "vllm_forge.gpu.doctor_inside"}  # stdlib only, both


def test_the_staged_package_imports_from_where_it_is_staged(tmp_path, checkout):
    """Each module the build stage runs imports with only the staged copy on PYTHONPATH, from another directory."""
    request = request_mod.BakeRequest(src=checkout, context_dir=tmp_path / "bake", dist_dir=tmp_path / "dist")
    plan = bake_plan.plan_bake(request, BUILDKIT)
    staging.stage_context(plan)
    forge = plan.context / "forge"
    for root, modules in ((forge, staging.BUILD_STAGE_MODULES), (forge / "late", staging.LATE_MODULES)):
        code = ("import importlib, sys; mods = [importlib.import_module(m) for m in sys.argv[1:]]; "
                "print(*sorted({m.__file__.split('/vllm_forge/')[0] for m in mods}))")
        out = subprocess.run([sys.executable, "-c", code, *modules], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(root)})
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == [str(root)]  # the staged copy, not this checkout


def test_default_ca_bundle_follows_pip(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("pem")
    assert request_mod.default_ca_bundle({"PIP_CERT": str(bundle)}) == (bundle, "PIP_CERT")
    assert (
        request_mod.default_ca_bundle({"PIP_CERT": str(tmp_path / "nope"), "REQUESTS_CA_BUNDLE": str(bundle)})[1]
        == "REQUESTS_CA_BUNDLE"
    )


def test_runtime_requirements_pin_major_minor(monkeypatch):
    import importlib.metadata as metadata

    versions = {"torch": "2.7.0a0+ecf3bae40a", "torchvision": "0.22.0"}

    def version(name):
        if name not in versions:
            raise metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(metadata, "version", version)
    assert runtime_requirements.runtime_requirements() == ["torch==2.7.*", "torchvision==0.22.*"]


def test_the_created_label_is_when_the_sources_changed_so_a_rebake_keeps_its_image_id(tmp_path, monkeypatch):
    """A build time in the `created` label made every no-change re-bake (all steps cached) a new image and left
    the old one dangling: the label is the sources' date instead."""
    import os
    import subprocess

    from vllm_forge.image.labels import source_date
    from vllm_forge.source.checkout import read_checkout

    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    src = tmp_path / "vllm"
    (src / "build").mkdir(parents=True)
    (src / "setup.py").write_text("")
    env = {**os.environ, "GIT_COMMITTER_DATE": "2025-01-02T03:04:05Z", "GIT_AUTHOR_DATE": "2025-01-02T03:04:05Z"}
    for argv in (["init", "-q"], ["add", "setup.py"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *argv], cwd=src, env=env, check=True)
    facts = read_checkout(src, managed=False)
    assert source_date(src, facts).isoformat() == "2025-01-02T03:04:05+00:00"
    assert source_date(src, facts) == source_date(src, read_checkout(src, managed=False))  # a re-bake: the same
    (src / "build" / "out.o").write_text("a build output, newer")  # never counts
    (src / "setup.py").write_text("changed")
    os.utime(src / "setup.py", (1_800_000_000, 1_800_000_000))
    assert source_date(src, read_checkout(src, managed=False)).timestamp() == 1_800_000_000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert source_date(src, facts).timestamp() == 1_700_000_000
