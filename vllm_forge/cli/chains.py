"""The tasks that run pipelines: the wheel chain, check-size, plan, demo, the bake and image chains."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from invoke.exceptions import Exit

from vllm_forge import pipeline as pipelines
from vllm_forge.cli import render, steps
from vllm_forge.cli.render import Table, console, escape
from vllm_forge.core.errors import ForgeError
from vllm_forge.core.plan import mask_urls


def patch_files(settings, patch) -> list[Path]:
    """forge.patches (paths relative to invoke.yaml's directory) first, then each --patch, in order."""
    from vllm_forge.source import patches

    return [steps.REPO_ROOT / p for p in patches.patches_from_config(settings.config.patches)] + [
        Path(p) for p in patch or []]


def wheel_chain(ctx, given, names: list[str], **more) -> None:
    """build-wheel and wheel: planned whole before anything runs (a wrong arch/CUDA/jobs value fails there)."""
    steps.check_plot(given.plot)
    settings = steps.settings(ctx, given, writes=not given.dry_run, **more)
    chain = "check-size" in names
    options = pipelines.Options(
        dry_run=given.dry_run, force=getattr(given, "force", False), audit=not given.no_audit, reuse_checkout=chain,
        reuse=not given.no_reuse, patches=patch_files(settings, given.patch),
        install_build_deps=given.install_build_deps,
        targets=[t.strip() for word in given.targets or [] for t in word.split(",") if t.strip()])
    names = pipelines.with_patches(names, options)
    if given.install_build_deps:
        names.insert(names.index("build-wheel"), "install-build-deps")
    pipeline = pipelines.build_pipeline(settings, names, options)
    state = steps.run(pipeline)
    build = next((step for step in pipeline.steps if step.name == "build-wheel"), None)
    if given.plot and not given.dry_run and build is not None and build.plan.build_times is not None:
        from vllm_forge.report import figure_data

        steps.plot(figure_data.build_figure(build.plan.build_times, state.wheel.name if state.wheel else ""),
                   given.plot)
    if chain and not given.dry_run:
        steps.summary(pipeline, state)
        if not state.results["check-size"].ok:
            raise Exit(code=1)


def check_size(ctx, given) -> None:
    from vllm_forge.report import figure_data

    if (given.plot or given.reference) and not given.image:
        raise ForgeError("--plot and --reference draw an image's size: they need --image",
                         "pass --image TAG, or drop --plot/--reference")
    references = [figure_data.parse_reference(text) for text in given.reference or []]
    steps.check_plot(given.plot)
    options = pipelines.Options(wheel=Path(given.wheel) if given.wheel else None, limit_mb=given.limit_mb,
                                image=given.image or "", budget_gb=given.budget, dry_run=given.dry_run)
    options.bake.docker = given.docker
    state = steps.run(pipelines.build_pipeline(steps.settings(ctx, given),
                                               ["check-size-image" if given.image else "check-size"], options))
    result = next(iter(state.results.values()), None)
    if given.plot and result is not None:
        steps.plot(figure_data.size_figure(result.to_dict(), references), given.plot)
    if not given.dry_run and not result.ok:
        raise Exit(code=1)


def plan(ctx, given) -> None:
    settings = steps.settings(ctx, given)
    table = Table("setting", "value", "from", title="Resolved configuration")
    for name, value in settings.config.as_dict().items():
        table.add_row(name, escape(mask_urls(str(value))), settings.rc.source(name))
    console.print(table)
    recipe = settings.recipe
    console.print(f"image: {f'CUDA {recipe.cuda} ({recipe.cuda_source})' if recipe else 'not ready (see bake)'}; "
                  "a local build: the CUDA of the nvcc found (see build-wheel)", soft_wrap=True)
    applied = settings.mirror
    rows = [row for row in applied.rows() if row[1] != row[2]]
    console.print(f"mirror {applied.profile.name}: {escape(applied.profile.description)}"
                  + ("" if rows else ", nothing rewritten"), soft_wrap=True)
    for what, old, new in rows:
        console.print(f"  {what}: {escape(mask_urls(old))} [dim]->[/] {escape(mask_urls(new))}", soft_wrap=True)
    print_farm(settings.config)
    names = ("clone", "use-existing-torch", "build-wheel", "check-size", "bake", "check-size-image", "inspect")
    pipeline = pipelines.build_pipeline(settings, names, pipelines.Options(dry_run=True, reuse_checkout=True),
                                        lenient=True)
    for step in pipeline.steps:
        render.print_step(step)
    if not pipeline.ready:
        blocked = [step.title for step in pipeline.steps if step.error is not None]
        raise ForgeError(f"{len(blocked)} step(s) cannot run as configured: {', '.join(blocked)} (see above)",
                         "fix what each `not ready` line says")


def print_farm(cfg) -> None:
    """`plan`: the farm builds would compile on (scheduler, servers it reports, toolchains), or why none."""
    from vllm_forge.build import farm

    dist = farm.DistSettings.from_config(cfg)
    if not dist.on:
        console.print("farm: none (dist_scheduler is empty): compiles run on this machine")
        return
    try:
        found = farm.plan_dist(dist, Path(cfg.cache_dir).expanduser() / "sccache-dist")
    except ForgeError as err:
        console.print(f"farm {escape(dist.scheduler)}: [yellow]not ready:[/] {escape(str(err))}", soft_wrap=True)
        return
    for note in found.notes():
        console.print(f"farm: {escape(note)}", soft_wrap=True)


def archs(cuda) -> None:
    from vllm_forge.gpu import archs as arch_tables
    from vllm_forge.gpu import compat
    from vllm_forge.gpu.cuda_release import cuda_release

    release = cuda_release(cuda)  # the task's --cuda string becomes a CudaRelease here, once
    if release is not None:
        arch_tables.check_archs_for_cuda([], release)  # an unknown CUDA version: one line, not an empty table
    table = Table("GPU", "arch", "oldest CUDA", "newest CUDA", title="GPU names accepted by --arch")
    seen = set()
    for model in compat.GPU_MODELS.values():
        if model.name in seen:
            continue
        seen.add(model.name)
        sm = model.arch.sm
        if release is not None and not compat.compiles(release, sm):
            continue
        table.add_row(model.name, sm, str(compat.min_cuda_for(sm) or "-"), str(compat.max_cuda_for(sm) or "-"))
    console.print(table)


# ---- bake and image ----------------------------------------------------------------------------------------


def bake_options(given) -> pipelines.BakeOptions:
    from vllm_forge.image.request import parse_build_args

    return pipelines.BakeOptions(
        target=given.target, tag=given.tag, dockerfile=given.dockerfile, docker=given.docker,
        ca_bundle=Path(given.ca_bundle) if given.ca_bundle else None,
        netrc=Path(given.netrc) if given.netrc else None, index_url=given.index_url,
        extra_index_url=given.extra_index_url, pytorch_index=given.pytorch_index, platform=given.platform,
        push=given.push, cache_from=list(given.cache_from or []), cache_to=list(given.cache_to or []),
        no_cache=given.no_cache, build_args=parse_build_args(given.build_arg or []), limit_mb=given.limit_mb,
        audit=not given.no_audit, jit=not given.no_jit)


def bake(ctx, given, *, chain: bool) -> None:
    """`bake` (clone first when there is no checkout) and `image` (the whole chain)."""
    settings = steps.settings(ctx, given, writes=not given.dry_run)
    options = pipelines.Options(dry_run=given.dry_run, force=given.force, reuse_checkout=chain,
                                bake=bake_options(given), budget_gb=given.budget)
    if chain:
        names = pipelines.IMAGE_CHAIN if given.target == "runtime" else ("clone", "use-existing-torch", "bake")
    else:
        names = ("clone", "bake") if pipelines.needs_clone(settings) else ("bake",)
    pipeline = pipelines.build_pipeline(settings, names, options)
    state = steps.run(pipeline)
    if given.dry_run:
        return
    if chain:
        steps.summary(pipeline, state)
        size = state.results.get("check-size-image")
        if size is not None and not size.ok:
            raise Exit(code=1)
    elif state.image and given.target == "runtime":
        print_next_after_bake(state.image, miniature=on_standins(settings))


def on_standins(settings) -> bool:
    from vllm_forge.image.standin_images import RUNTIME_STANDIN

    return settings.config.runtime_image == RUNTIME_STANDIN


def print_next_after_bake(image: str, *, miniature: bool) -> None:
    """What to run next, each line as it works here (a real image's serve line only where a GPU is)."""
    from vllm_forge.nccl.nccl_test import count_gpus
    from vllm_forge.serve import serve as serving

    quoted = shlex.quote(image)
    nexts = [f"invoke check-size --image {quoted}", f"invoke inspect {quoted}"]
    serve_line = serving.serve_line(image, miniature=miniature, gpus_here=count_gpus())
    for line in nexts + ([serve_line] if serve_line else []):
        render.print_copyable(f"next: {line}")
    if not serve_line:
        render.print_copyable(f"on a GPU host: invoke serve {serving.SMALL_MODEL} --image {quoted}")


# ---- demo --------------------------------------------------------------------------------------------------


def demo(ctx, given) -> None:
    """The whole pipeline on the embedded miniature vLLM (tasks.py demo)."""
    from vllm_forge.audit.audit import audit_path
    from vllm_forge.gpu.archs import parse_arch_list
    from vllm_forge.serve import serve as serving
    from vllm_forge.source.minivllm import RELEASE_TAG, publish_minivllm

    started = time.monotonic()
    config = steps.config(ctx, **given.settings())
    parse_arch_list(config.arch)  # a typo fails now, not after the clone
    cache = Path(config.cache_dir).expanduser()
    repo_url = publish_minivllm(cache)
    console.print(f"embedded default project published at {repo_url}")
    # Next to the published repo: a checkout always belongs to the repo in the same cache.
    flags = dict(given.settings(), vllm_repo=repo_url, vllm_ref=RELEASE_TAG, vllm_src="",
                 checkout_dir=str(cache / "demo" / "vllm"), arch=config.arch)
    settings = steps.settings(ctx, **flags)
    state = steps.run(pipelines.build_pipeline(settings, pipelines.WHEEL_CHAIN, pipelines.Options(reuse_checkout=True)))
    wheel = state.wheel
    # The archs column is what the wheel's kernels really are (its audit), not what was asked for.
    report = audit_path(wheel, [config.arch])
    sass = sorted({sm for f in report.files for sm in f.sass})
    verdicts = ", ".join(f"{name}: {'runs' if report.ok else 'NO KERNEL'}" for name in report.target_names)
    summary = Table("wheel", "MB", "SASS in the wheel", "verdict", "seconds", title="demo")
    summary.add_row(wheel.name, f"{wheel.stat().st_size / 2**20:.2f}", ", ".join(sass), verdicts,
                    f"{time.monotonic() - started:.1f}")
    console.print(summary)
    image, skipped = demo_image(ctx, flags) if not given.no_docker else ("", None)
    # What to do next, each working as printed: the demo's checkout is named, so the everyday tasks find it.
    where = f"--vllm-src {shlex.quote(str(settings.src))}"
    nexts = [f"invoke plan {where} --arch rtx5090", f"invoke audit {shlex.quote(str(wheel))} --arch rtx5090"]
    if image:
        nexts.append(serving.serve_line(image, miniature=True, gpus_here=0, port=18000))
    else:
        ptx_dist = shlex.quote(str(Path(settings.config.dist_dir) / "ptx"))
        nexts.append(f"invoke build-wheel {where} --arch 12.0+PTX --dist-dir {ptx_dist}")
    for line in nexts:
        render.print_copyable(f"next: {line}")
    if not state.results["check-size"].ok:
        raise Exit(code=1)
    if skipped:  # less than the README promises without --no-docker: say which steps and why, exit non-zero
        raise skipped


def demo_image(ctx, flags: dict) -> tuple[str, ForgeError | None]:
    """`invoke demo`'s image steps: bake the checkout, serve it, smoke-test it, tear it down. Returns the image's
    tag, or "" and why the steps could not run here (the demo then ends non-zero saying so)."""
    from vllm_forge.image import docker_client as clients
    from vllm_forge.image.standin_images import BUILD_STANDIN, RUNTIME_STANDIN
    from vllm_forge.serve import serve as serving

    docker = clients.default_docker()
    skipped = "the demo did not bake, serve or smoke-test an image (its image steps)"
    if not clients.engine_reachable(docker):
        return "", ForgeError(f"{skipped}: no Docker engine answers `{docker} info`",
                              "start one (the README's Docker section says how) and rerun, or pass --no-docker "
                              "to stop after the wheel", exit_code=1)
    settings = steps.settings(ctx, writes=True, **flags)
    recipe = settings.image_recipe()
    base, runtime = recipe.base_image, recipe.runtime_image
    if not (clients.image_present(docker, base) and clients.image_present(docker, runtime)):
        if not (clients.image_present(docker, BUILD_STANDIN) and clients.image_present(docker, RUNTIME_STANDIN)):
            return "", ForgeError(
                f"{skipped}: neither its bases ({base}, {runtime}) nor the TEST-ONLY stand-ins are in this engine",
                "build the stand-ins once, as root (`python3 -m vllm_forge.image.standin_images`: debootstrap, about 4 "
                f"minutes), or pull {base} and {runtime}, then rerun; or pass --no-docker", exit_code=1)
        console.print(f"[yellow]{base} / {runtime} are not here: baking on the TEST-ONLY stand-in images[/]",
                      soft_wrap=True)
        settings = steps.settings(ctx, writes=True, **flags, standin=True)
    name = "vllm-forge-demo"
    options = pipelines.Options(serve=serving.ServeRequest(model=serving.STANDIN_MODEL, port=18000, gpus="none",
                                                           name=name), serve_timeout_s=120)
    serving.stop(name, docker)  # a container left by an interrupted demo
    try:
        return steps.run(pipelines.build_pipeline(settings, ("bake", "serve"), options)).image, None
    finally:
        serving.stop(name, docker)
