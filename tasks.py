"""vllm-forge tasks: build vLLM for the GPU you name, bake a slim image, prove it runs.

The list of tasks. Each resolves its settings, runs a pipeline or makes a report, and renders it; its flags
and their help come from the declarations (vllm_forge/core/config.py ``SETTINGS``, vllm_forge/cli/flags.py
``FLAGS``), the printing from vllm_forge/cli/. Task modules load on first use: `invoke --list` imports none.
"""

from __future__ import annotations

from pathlib import Path

from invoke import Collection, Task

from vllm_forge.cli import _invoke
from vllm_forge.cli.command_line import check_command_line, check_project_config
from vllm_forge.cli.task import forge_task, lazy
from vllm_forge.core.config import invoke_defaults

check_project_config(Path(__file__).parent / "invoke.yaml")  # where invoke looks: next to tasks.py as found

pipelines = lazy("vllm_forge.pipeline")
steps = lazy("vllm_forge.cli.steps")
chains = lazy("vllm_forge.cli.chains")
diagnose = lazy("vllm_forge.cli.diagnose")
deps = lazy("vllm_forge.cli.deps")
serving = lazy("vllm_forge.cli.serving")
farm = lazy("vllm_forge.cli.farm")


# ---- the build: checkout, wheel, plan ----

@forge_task("clone")
def clone(ctx, given):
    """Clone or update a vLLM checkout at a ref (partial clone; local changes are never lost)."""
    settings = steps.settings(ctx, given, writes=not given.dry_run)
    options = pipelines.Options(dry_run=given.dry_run, force=given.force)
    steps.run(pipelines.build_pipeline(settings, ["clone"], options))


@forge_task("use-existing-torch")
def use_existing_torch(ctx, given):
    """Run the checkout's own use_existing_torch.py and verify no torch pin is left."""
    settings = steps.settings(ctx, given, writes=not given.dry_run)
    steps.run(pipelines.build_pipeline(settings, ["use-existing-torch"], pipelines.Options(dry_run=given.dry_run)))


@forge_task("build-wheel")
def build_wheel(ctx, given):
    """Build the vLLM wheel for exactly the archs asked for; publish it to dist/ only if it audits clean."""
    chains.wheel_chain(ctx, given, [*([] if given.skip_torch else ["use-existing-torch"]), "build-wheel"])


@forge_task("wheel")
def wheel(ctx, given):
    """The wheel chain: clone (or reuse) → patch → use-existing-torch → build-wheel → check-size, with a summary."""
    chains.wheel_chain(ctx, given, list(pipelines.WHEEL_CHAIN), wheel_limit_mb=given.limit_mb or None)


@forge_task("check-size")
def check_size(ctx, given):
    """Check the wheel against its size limit (vLLM's own, 400 MB by default), or an image with --image."""
    chains.check_size(ctx, given)


@forge_task("plan")
def plan(ctx, given):
    """Show the resolved configuration (and where each value came from) and every step's exact commands."""
    chains.plan(ctx, given)


@forge_task("archs")
def archs(ctx, given):
    """List the GPU names this tool knows, their arch, and the CUDA versions that can build them."""
    chains.archs(given.cuda)


@forge_task("demo")
def demo(ctx, given):
    """The whole pipeline on the embedded miniature vLLM: clone, build, audit, check-size, then bake/serve/smoke."""
    chains.demo(ctx, given)


# ---- proof: audit, doctor, NCCL ----

@forge_task("audit")
def audit(ctx, given):
    """Prove every CUDA extension runs on the target GPU: SASS, PTX JIT or no kernel, per file."""
    diagnose.audit(ctx, given)


@forge_task("doctor")
def doctor(ctx, given):
    """Name what will break vLLM on these GPUs (driver, torch archs, audit, NCCL, topology) and the fix."""
    diagnose.doctor(ctx, given)


@forge_task("nccl-test")
def nccl_test(ctx, given):
    """All-reduce across the GPUs with NCCL_DEBUG=INFO captured, parsed and judged against the link."""
    diagnose.nccl_test(ctx, given)


@forge_task("nccl-diagnose", klass=_invoke.FilesTask)
def nccl_diagnose(ctx, given):
    """Read NCCL logs / nccl-tests outputs / topo files: one root cause first, then each file's findings."""
    diagnose.nccl_diagnose(ctx, given)


# ---- the image: bake, image, inspect, serve, stop ----

@forge_task("bake")
def bake(ctx, given):
    """Bake vLLM into an image: multi-stage, layer- and compile-cached, checked and audited inside the build."""
    chains.bake(ctx, given, chain=False)


@forge_task("image")
def image(ctx, given):
    """The image chain: clone (or reuse) → use-existing-torch → bake → check-size --image → inspect, with a summary."""
    chains.bake(ctx, given, chain=True)


@forge_task("inspect")
def inspect(ctx, given):
    """Show an image's build labels (vLLM ref/commit, archs, CUDA, bases, date, vllm-forge version) and size."""
    from vllm_forge.cli.render import print_said
    from vllm_forge.image.inspection import inspect_image

    print_said(pipelines.labels_said(inspect_image(diagnose.engine_docker(given.docker), given.image)))


@forge_task("serve")
def serve(ctx, given):
    """Start the OpenAI server (container or --local) with vLLM's flags, wait for /health, smoke-test it."""
    serving.serve(ctx, given)


@forge_task("stop")
def stop(ctx, given):
    """Stop and remove what `invoke serve` started (a --local server, else the container)."""
    serving.stop(given.name, given.docker)


# ---- the vLLM tree and its dependencies ----

@forge_task("inspect-tree")
def inspect_tree(ctx, given):
    """Say what the checkout's vLLM version needs: script paths, env knobs, CUDA arch gate, wheel limit, git deps."""
    deps.inspect_tree(ctx, given)


@forge_task("fetch-deps")
def fetch_deps(ctx, given):
    """Bring the git deps vLLM's CMake fetches (CUTLASS, flash-attention, ...) into the cache, for offline builds:
    fetched (git), imported from tarballs, directories or bundles (--from), or written to one bundle (--bundle)."""
    deps.fetch_deps(ctx, given)


# ---- records ----

@forge_task("report")
def report(ctx, given):
    """One self-contained HTML page of the last recorded runs: plan, steps and times, build time, audit map,
    image size, NCCL curve."""
    from vllm_forge.cli.render import console
    from vllm_forge.report import report_html

    page = report_html.write_report(Path(given.records) if given.records else None, Path(given.out))
    console.print(f"[green]wrote[/] {page}")


# ---- the build farm (sccache-dist) ----

@forge_task("farm-scheduler")
def farm_scheduler(ctx, given):
    """Start the build farm's sccache-dist scheduler, detached (builds: --dist-scheduler http://HOST:PORT)."""
    farm.scheduler(ctx, given)


@forge_task("farm-server")
def farm_server(ctx, given):
    """Start a sccache-dist build server of the farm, detached: it runs other machines' compile jobs sandboxed."""
    farm.server(ctx, given)


@forge_task("farm-stop")
def farm_stop(ctx, given):
    """Stop the farm daemons this machine started (the scheduler and build servers with pid records)."""
    farm.stop(ctx, given)


@forge_task("farm-status")
def farm_status(ctx, given):
    """The farm as its scheduler reports it (servers, cores, jobs in flight), and the daemons running here."""
    farm.status(ctx, given)


# Collected by type, not with Collection.from_module: its isinstance() test would load every lazy module.
ns = Collection(*(value for value in list(globals().values()) if issubclass(type(value), Task)))
ns.configure({"forge": invoke_defaults()})
check_command_line(ns)
