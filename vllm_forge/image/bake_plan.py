"""Plan a bake: everything decided and checked before docker runs (which Dockerfile and stage, every
build-arg, secret and label, the exact commands). ``--dry-run`` prints the plan, ``bake.run_bake`` runs that
same plan. Two recipes share one request:

- ``forge`` (default): ``docker/Dockerfile`` of this repo. Its build context is staged under
  ``build/bake/context`` (``vllm/`` = the checkout, ``forge/`` = the vllm_forge modules the build runs).
- ``upstream``: the checkout's own ``docker/Dockerfile`` with a staged copy of the checkout as context
  (``build/bake/checkout``), given the same knobs under vLLM's ARG names (only the ARGs it declares).

Either way the checkout's git metadata goes in through source/context_git.py: history and tags, no
credentials (a context lands in layers and in BuildKit's cache).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import socket
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vllm_forge.audit.audit import STAGING_PREFIX
from vllm_forge.build import farm as farms
from vllm_forge.core.credentials import has_credentials, strip_credentials
from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.core.package import PACKAGE_DIR, module_path
from vllm_forge.core.plan import Command
from vllm_forge.core.validate import check_image_ref
from vllm_forge.gpu import archs as archs_mod
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.image import remote_build
from vllm_forge.image.bases import resolve_base_images
from vllm_forge.image.build_args import AUDIT_MODULE, check_apt_mirror, knob_values
from vllm_forge.image.context_filter import LEFT_OUT
from vllm_forge.image.docker_client import DockerClient, find_docker
from vllm_forge.image.dockerfile import (
    FORGE_DOCKERFILE,
    NON_ROOT_STAGES,
    TARGETS,
    UPSTREAM_DIST_DIR,
    UPSTREAM_TARGETS,
    dockerfile_args,
    dockerfile_secret_ids,
    dockerfile_stages,
    find_upstream_dockerfile,
)
from vllm_forge.image.jit import plan_jit_toolchain
from vllm_forge.image.labels import default_tag, image_labels, runtime_user, source_date, source_identity
from vllm_forge.image.recipe import DEFAULT_IMAGE_CUDA
from vllm_forge.image.request import BakeRequest, cached_git_deps
from vllm_forge.source.vllm_tree import VllmTree, inspect_tree

if TYPE_CHECKING:
    from vllm_forge.source.checkout import CheckoutFacts


@dataclass
class BakePlan:
    request: BakeRequest
    client: DockerClient
    recipe: str  # forge | upstream | custom
    dockerfile: Path
    context: Path
    target_stage: str
    image: str  # the tag the image gets ("" for a wheel export)
    build_args: dict[str, str]
    secrets: dict[str, str]  # id -> file
    labels: dict[str, str]
    commands: list[Command]
    stage_context: bool  # sync the checkout (forge: + scripts) into `context` first
    secret_values: dict[str, str] = field(default_factory=dict)  # id -> value written at run time
    notes: list[str] = field(default_factory=list)
    # A wheel export lands here first (private to this run, inside dist/), then moves into dist/ file
    # by file with a rename: an interrupted or concurrent export never leaves half a wheel in dist/.
    export_dir: Path | None = None
    cleanup: list[list[str]] = field(default_factory=list)  # run (errors ignored) however the bake ends
    tree: VllmTree | None = None  # what the checkout's vLLM version reads (None: not cloned yet)
    identity: dict[str, str] = field(default_factory=dict)  # the checkout built: repo, ref, commit, dirty

    def lines(self) -> list[str]:
        """The plan as printable lines: comments, then each exact command."""
        out = [f"# docker client: {self.client.describe()}"]
        out += [f"# {note}" for note in self.notes]
        if self.stage_context and self.recipe == "forge":
            out.append(
                f"# stage the build context {self.context}: vllm/ <- {self.request.src} "
                f"(without build outputs, {LEFT_OUT}), "
                f"forge/ <- the modules of {PACKAGE_DIR} the build runs, docker/forge-env.sh and docker/forge-apt.sh"
            )
        elif self.stage_context:
            out.append(
                f"# stage the build context {self.context} <- {self.request.src} "
                f"(without build outputs, {LEFT_OUT})"
            )
        for secret_id in self.secret_values:
            out.append(f"# write secret {secret_id} to {self.secrets[secret_id]} (mode 0600, removed afterwards)")
        out += [command.shell() for command in self.commands]
        return out


def _check_secret_file(path: Path | None, flag: str) -> None:
    if path is not None and not Path(path).expanduser().is_file():
        raise ForgeError(f"{flag} {path} is not a file", f"pass {flag} the path of an existing file")


def _checkout(request: BakeRequest, src: Path) -> tuple[CheckoutFacts, VllmTree | None]:
    """What the checkout is (read now, unless the request carries it) and what its vLLM version reads (None
    while it does not exist yet)."""
    facts = request.checkout
    if facts is None:
        from vllm_forge.source.checkout import read_checkout

        facts = read_checkout(src, managed=False)
    if facts.exists and not (src / "setup.py").is_file():
        raise ForgeError(
            f"{src} is not a vLLM checkout (no setup.py)",
            "run `invoke clone` first, or pass --vllm-src PATH to an existing checkout",
        )
    if not facts.exists and request.dockerfile != "forge":
        raise ForgeError(f"{src} does not exist yet, and --dockerfile {request.dockerfile} is read from it",
                         "run `invoke clone` first (a real bake clones first by itself)")
    return facts, inspect_tree(src) if facts.exists else None


def _check_client(request: BakeRequest, client: DockerClient) -> None:
    _check_secret_file(request.ca_bundle, "--ca-bundle")
    _check_secret_file(request.netrc, "--netrc")
    if request.push and not request.tag:
        raise ForgeError("--push needs a registry tag", "pass --tag registry.example.com/team/vllm:TAG")
    if client.mode != "buildx" and request.cache_to:
        raise ForgeError(
            "--cache-to needs docker buildx; this client builds with Docker's built-in BuildKit",
            "install the buildx plugin, or drop --cache-to (the local layer cache still works)",
        )
    # A builder or registry cache this client cannot use is refused, never silently dropped.
    remote_build.require_buildx(request.builder, request.registry_cache, docker=client.path,
                                available=client.mode == "buildx")


def _recipe_files(request: BakeRequest, src: Path) -> tuple[str, Path, Path]:
    """(recipe, Dockerfile, context). Every recipe builds from a staged copy, never from the checkout itself: its
    .git holds credentials a context would carry into layers and BuildKit's cache (source/context_git.py)."""
    if request.dockerfile == "forge":
        return "forge", FORGE_DOCKERFILE, Path(request.context_dir) / "context"
    if request.dockerfile == "upstream":
        return "upstream", find_upstream_dockerfile(src), Path(request.context_dir) / "checkout"
    dockerfile = Path(request.dockerfile).expanduser().resolve()
    if not dockerfile.is_file():
        raise ForgeError(f"--dockerfile {request.dockerfile} is not a file",
                         "pass forge, upstream or a Dockerfile path")
    return "custom", dockerfile, Path(request.context_dir) / "checkout"


def _bases(request: BakeRequest) -> tuple[str, str]:
    """(build base, runtime base): the request's, else its recipe's, else compat's for its CUDA."""
    if request.recipe is not None:
        base = request.base_image or request.recipe.base_image
        runtime = request.runtime_image or request.recipe.runtime_image
    else:  # a request made without the pipeline (this module's CLI): compat's defaults for the CUDA
        base, runtime = resolve_base_images(request.cuda, request.base_image, request.runtime_image)
    for flag, value in (("--base-image", base), ("--runtime-image", runtime), ("--tag", request.tag)):
        if value:  # they may come from a shared invoke.yaml or mirror profile: never a docker option
            check_image_ref(value, flag)
    return base, runtime


def _target_stage(request: BakeRequest, recipe: str, dockerfile: Path, stages: list[str]) -> str:
    """The Dockerfile stage that plays the requested target (--non-root: its unprivileged variant)."""
    target_stage = request.target if recipe == "forge" else UPSTREAM_TARGETS[request.target]
    if request.non_root:
        if request.target != "runtime":
            raise ForgeError(f"--non-root is about the serving image, not --target {request.target}",
                             "drop --non-root, or bake --target runtime")
        target_stage = NON_ROOT_STAGES.get(recipe, NON_ROOT_STAGES["upstream"])
        if target_stage not in stages and recipe != "forge":
            raise ForgeError(
                f"{dockerfile} has no stage '{target_stage}' for --non-root (vLLM added it in its own Dockerfile)",
                "use --dockerfile forge --non-root, or a vLLM version whose Dockerfile has vllm-openai-nonroot",
            )
    if recipe != "forge" and target_stage not in stages:
        raise ForgeError(
            f"{dockerfile} has no stage '{target_stage}' (stages: {', '.join(stages) or 'none'})",
            "use --dockerfile forge, or a vLLM Dockerfile with build and vllm-openai stages",
        )
    return target_stage


def _recipe_notes(request: BakeRequest, recipe: str, src: Path, exists: bool, tree: VllmTree | None) -> list[str]:
    """What the plan says about the image's CUDA and torch, and about what it reads later or skips."""
    notes: list[str] = list(request.recipe.notes) if request.recipe and recipe == "forge" else []
    if request.recipe is not None and recipe == "forge":
        need = compat.MIN_DRIVER.get(request.recipe.cuda.minor_str)
        notes.insert(0, f"image CUDA {request.recipe.cuda} ({request.recipe.cuda_source})"
                        + (f"; it needs an NVIDIA driver >= {need.full}" if need else ""))
    if not exists:
        notes.append(f"planned before the clone: commit, build requirements and wheel limit are read from {src} "
                     "once it exists, and the bake is planned again then")
    if recipe == "forge" and request.deps_cache and tree is not None:
        deps = cached_git_deps(request, tree)
        if deps:
            notes.append(f"{len(deps)} cached git dependencies ({', '.join(d.name for d in deps)}) go into the build "
                         "context's deps/: CMake takes them from there, not from the network")
    if request.audit and not module_path(AUDIT_MODULE).is_file():
        notes.append(f"{AUDIT_MODULE} is not in this vllm-forge: the kernel audit step is skipped")
    return notes


def _build_args(request: BakeRequest, knobs: dict[str, str], recipe: str, dockerfile: Path,
                declared: dict[str, str | None], notes: list[str]) -> dict[str, str]:
    """The knobs the Dockerfile declares, then the raw --build-arg ones (never a credential); notes what it skips."""
    build_args = {name: value for name, value in knobs.items() if name in declared}
    skipped = sorted(set(knobs) - set(declared) - {"TORCH_CUDA_ARCH_LIST"} - {"UV_DEFAULT_INDEX", "UV_INDEX_URL"})
    if skipped and recipe != "forge":
        notes.append(f"{dockerfile.name} declares no ARG {', '.join(skipped)}: its own defaults apply there")
    if recipe != "forge":
        for knob, name in (("build base", "BUILD_BASE_IMAGE"), ("runtime base", "FINAL_BASE_IMAGE")):
            if name not in build_args:
                notes.append(f"{knob}: the Dockerfile's own default ({declared.get(name) or 'none'})")
    for name, value in request.build_args.items():
        if name == "APT_MIRROR" and value:
            value = check_apt_mirror(value, "--build-arg APT_MIRROR")
        if has_credentials(value):
            raise ForgeError(
                f"--build-arg {name} carries credentials, and build args are kept in the image history",
                "pass them as a secret (--netrc, --index-url with credentials)",
            )
        build_args[name] = value
    return build_args


@dataclass
class _Secrets:
    files: dict[str, str] = field(default_factory=dict)  # id -> file
    values: dict[str, str] = field(default_factory=dict)  # id -> value written at run time
    network_host: bool = False  # the farm's scheduler is on this machine's loopback


def _secrets(request: BakeRequest, recipe: str, dockerfile: Path, notes: list[str]) -> _Secrets:
    """The BuildKit secrets of the build (a CA bundle, a netrc, an index URL with credentials, the farm's
    scheduler and token), never build args; notes where they come from and which the Dockerfile ignores."""
    found = _Secrets()
    secrets_dir = Path(request.context_dir) / "secrets"
    if request.ca_bundle:
        found.files["ca_bundle"] = str(Path(request.ca_bundle).expanduser().resolve())
    if request.netrc:
        found.files["netrc"] = str(Path(request.netrc).expanduser().resolve())
    if request.index_url and has_credentials(request.index_url):
        found.files["pip_index_url"] = str(secrets_dir / "pip_index_url")
        found.values["pip_index_url"] = request.index_url
        notes.append(
            f"the index URL carries credentials: it goes in as secret pip_index_url "
            f"({strip_credentials(request.index_url)}), never as a build arg"
        )
    if request.dist.on and recipe != "forge":
        notes.append(f"dist_scheduler {request.dist.scheduler} is not used: {dockerfile.name} knows no sccache-dist "
                     "(the forge recipe does)")
    elif request.dist.on:
        token = request.dist.token.read()  # a missing token is a mistake to fix, not a farm to fall back from
        farm = farms.probe(request.dist, token)
        notes.append(f"{farm.line()} (asked from this machine; the build stage asks again and says so in its log)")
        if farm.on:
            found.files[farms.SECRET_ID] = str(secrets_dir / farms.SECRET_ID)
            found.values[farms.SECRET_ID] = farms.secret_text(farm.scheduler, token)
            notes.append(f"the scheduler and the client token from {request.dist.token.describe()} go in as secret "
                         f"{farms.SECRET_ID}, never as a build arg")
            found.network_host = farms.is_loopback(farm.scheduler)
            if found.network_host:
                notes.append("the scheduler is on this machine's loopback: the build runs with --network host to "
                             "reach it (and the build servers)")
    used = dockerfile_secret_ids(dockerfile)
    for secret_id in found.files:
        if secret_id not in used:
            notes.append(f"{dockerfile.name} mounts no secret '{secret_id}': it will not see it")
    return found


def _build_argv(request: BakeRequest, client: DockerClient, *, dockerfile: Path, context: Path, target_stage: str,
                build_args: dict[str, str], secrets: _Secrets, labels: dict[str, str], image: str,
                export_dir: Path | None, src: Path, recipe: str) -> list[str]:
    """The one `docker build` command line of the plan."""
    argv = list(client.build_argv)
    # A Dockerfile inside the checkout is read from the staged copy (its .dockerignore sits there too).
    staged_dockerfile = (context / dockerfile.relative_to(src)
                         if recipe != "forge" and dockerfile.is_relative_to(src) else dockerfile)
    argv += ["--progress=plain", "-f", str(staged_dockerfile), "--target", target_stage]
    if client.mode == "buildx":
        argv += remote_build.buildx_build_args(request.builder, request.registry_cache)
    if request.platform:
        argv += ["--platform", request.platform]
    if secrets.network_host:
        argv += ["--network", "host"]
    if request.no_cache:
        argv.append("--no-cache")
    for source in request.cache_from:
        argv += ["--cache-from", source]
    for dest in request.cache_to:
        argv += ["--cache-to", dest]
    for name, value in build_args.items():
        argv += ["--build-arg", f"{name}={value}"]
    for secret_id, path in secrets.files.items():
        argv += ["--secret", f"id={secret_id},src={path}"]
    if image:
        for name, value in labels.items():
            argv += ["--label", f"{name}={value}"]
        argv += ["-t", image]
    if request.target == "wheel" and recipe == "forge":  # BuildKit exports the wheel itself
        argv += ["--output", f"type=local,dest={export_dir}"]
    elif client.mode == "buildx":
        argv.append("--push" if request.push else "--load")
    argv.append(str(context))
    return argv


def _after_build(request: BakeRequest, client: DockerClient, recipe: str, image: str,
                 export_dir: Path | None) -> tuple[list[Command], list[list[str]]]:
    """(commands after the build, cleanup): a push without buildx, the wheel copied out of vLLM's build stage."""
    commands: list[Command] = []
    cleanup: list[list[str]] = []
    if request.push and client.mode != "buildx":
        commands.append(Command([client.path, "push", image], why="push (this client has no buildx --push)"))
    if request.target == "wheel" and recipe != "forge":
        box = f"vllm-forge-wheel-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        commands += [
            Command([client.path, "create", "--name", box, image], why="copy the wheel out of vLLM's build stage"),
            Command([client.path, "cp", f"{box}:{UPSTREAM_DIST_DIR}/.", str(export_dir)]),
            Command([client.path, "rm", box]),
        ]
        cleanup.append([client.path, "rm", "-f", box])
    return commands, cleanup


def plan_bake(request: BakeRequest, client: DockerClient, *, now: _dt.datetime | None = None) -> BakePlan:
    """Everything decided and checked before docker runs: the exact commands a bake will run."""
    if request.target not in TARGETS:
        raise ForgeError(f"--target {request.target} is not a stage of this recipe", f"use one of {', '.join(TARGETS)}")
    src = Path(request.src).expanduser().resolve()
    facts, tree = _checkout(request, src)
    archs = list(request.archs)
    archs_mod.check_archs_for_cuda(archs, request.cuda)
    _check_client(request, client)
    recipe, dockerfile, context = _recipe_files(request, src)
    if request.dist.on and recipe == "forge":  # the farm compiles through sccache
        request = dataclasses.replace(request, compile_cache=farms.cache_for_dist(request.compile_cache, request.dist))
    base, runtime = _bases(request)
    declared = dockerfile_args(dockerfile)
    target_stage = _target_stage(request, recipe, dockerfile, dockerfile_stages(dockerfile))
    notes = _recipe_notes(request, recipe, src, facts.exists, tree)
    jit = plan_jit_toolchain(request, archs) if recipe == "forge" else None  # once: build args and the label
    knobs = knob_values(request, archs, base, runtime, recipe, tree, jit)
    build_args = _build_args(request, knobs, recipe, dockerfile, declared, notes)
    secrets = _secrets(request, recipe, dockerfile, notes)
    identity = source_identity(facts, request.planned_repo, request.planned_ref)
    created = (now or source_date(src, facts)).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    labels = image_labels(identity, created, archs, request.cuda, recipe=recipe, build_args=build_args,
                          declared=declared, runtime=runtime, torch=request.recipe if recipe == "forge" else None,
                          mirror=request.mirror, jit=jit, user=runtime_user(recipe, target_stage, declared))
    export_wheel = request.target == "wheel"
    image = "" if (export_wheel and recipe == "forge") else (
        request.tag or default_tag(identity, request.cuda, archs, "build" if export_wheel else request.target)
        + ("-nonroot" if request.non_root else ""))
    dist_dir = Path(request.dist_dir).expanduser().resolve()
    export_dir = (dist_dir / f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-bake-{uuid.uuid4().hex[:8]}"
                  if export_wheel else None)
    argv = _build_argv(request, client, dockerfile=dockerfile, context=context, target_stage=target_stage,
                       build_args=build_args, secrets=secrets, labels=labels, image=image, export_dir=export_dir,
                       src=src, recipe=recipe)
    after, cleanup = _after_build(request, client, recipe, image, export_dir)
    commands = [Command(argv, env=client.build_env, why=f"build target {target_stage} ({recipe} recipe)"), *after]
    notes.insert(
        0,
        f"recipe {recipe}: {dockerfile} (target {target_stage}); "
        f"build base {build_args.get('BUILD_BASE_IMAGE', '(its default)')}, "
        f"runtime base {build_args.get('FINAL_BASE_IMAGE', '(its default)')}",
    )
    return BakePlan(request, client, recipe, dockerfile, context, target_stage, image, build_args, secrets.files,
                    labels, commands, True, secrets.values, notes, export_dir, cleanup, tree, identity)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Print the docker commands a bake of the checkout SRC would run.")
    parser.add_argument("src", type=Path, help="the vLLM checkout")
    parser.add_argument("--arch", default="12.0", help="ARCH: target GPUs, e.g. 12.0, rtx5090, '9.0a;12.0+PTX'")
    parser.add_argument("--cuda", type=CudaRelease.parse, default=DEFAULT_IMAGE_CUDA,
                        help=f"CUDA: the image's CUDA release, e.g. 13.0 (default: {DEFAULT_IMAGE_CUDA})")
    parser.add_argument("--target", default="runtime", choices=TARGETS, help="the stage to build")
    parser.add_argument("--dockerfile", default="forge", help="forge, upstream or a Dockerfile's PATH")
    parser.add_argument("--base-image", default="", help="IMAGE: the build base (default: compat's for --cuda)")
    parser.add_argument("--runtime-image", default="", help="IMAGE: the runtime base (default: compat's)")
    parser.add_argument("--docker", default=None, help="PATH: the docker client (default: found on PATH)")
    args = parser.parse_args(argv)
    plan = plan_bake(
        BakeRequest(
            src=args.src,
            archs=archs_mod.parse_arch_list(args.arch),
            cuda=args.cuda,
            target=args.target,
            dockerfile=args.dockerfile,
            base_image=args.base_image,
            runtime_image=args.runtime_image,
        ),
        find_docker(args.docker),
    )
    print("\n".join(plan.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
