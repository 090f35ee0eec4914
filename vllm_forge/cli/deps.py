"""The vLLM tree's tasks: inspect-tree (what the checkout's vLLM version needs) and fetch-deps (its CMake git
dependencies into the cache: fetched, imported with --from, or written to one --bundle)."""

from __future__ import annotations

import json as json_mod
from dataclasses import dataclass
from pathlib import Path

from vllm_forge.cli import steps
from vllm_forge.cli.render import Table, console, err_console, escape, run_streaming
from vllm_forge.core.errors import ForgeError
from vllm_forge.deps import dep_import as dep_importer
from vllm_forge.deps import fetch_deps as dep_fetcher
from vllm_forge.gpu import archs as arch_tables
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.source import vllm_tree


def inspect_tree(ctx, given) -> None:
    json, arch = given.json, given.arch
    tree = vllm_tree.inspect_tree(steps.settings(ctx, given).src)
    cudas = [CudaRelease.parse(c) for c in given.cuda] if given.cuda else list(compat.VLLM_CUDAS)
    if json:
        print(json_mod.dumps(tree.as_dict(cudas), indent=2))
    else:
        console.print(f"[bold]{escape(tree.summary())}[/]", soft_wrap=True)
        limit = (f"wheel limit {tree.wheel_size_limit_mb} MB from {escape(tree.wheel_size_source)}"
                 if tree.wheel_size_limit_mb else f"no wheel limit in the checkout (vLLM's {tree.wheel_limit_mb()} MB "
                                                   "applies)")
        console.print(f"  version from {escape(tree.version_source)}; {limit}; Dockerfile {tree.dockerfile or '-'} "
                      f"({len(tree.dockerfile_args)} ARGs)", soft_wrap=True)
        console.print("  build knobs read: " + ", ".join(k for k in vllm_tree.BUILD_KNOBS if tree.reads(k)),
                      soft_wrap=True)
        table = Table("CUDA", "CUDA_SUPPORTED_ARCHS", title="arch gate (CMakeLists.txt)")
        for version in cudas:
            archs = tree.cuda_supported_archs(version)
            table.add_row(str(version), ";".join(archs) if archs is not None else "no gate")
        console.print(table)
        console.print("[bold]git dependencies its CMake fetches[/] (name: repository @ pin, local-copy variable)")
        for dep in tree.git_deps:
            local = (dep.src_dir_env or "none") + (f" -> <clone>/{dep.source_subdir}" if dep.source_subdir else "")
            console.print(f"  {dep.name}: {dep.repository} @ {dep.tag}  [dim]{local}[/]", soft_wrap=True)
        for note in tree.notes:
            console.print(f"  [yellow]note:[/] {escape(note)}", soft_wrap=True)
    if arch:
        archs = arch_tables.parse_arch_list(arch)
        for version in cudas:
            tree.check_archs(archs, version)
        console.print(f"[green]{', '.join(a.sm for a in archs)} kept by this vLLM's gate for CUDA "
                      f"{', '.join(str(c) for c in cudas)}[/]")




@dataclass
class Deps:
    """One fetch-deps command line: the checkout's dependencies, the cache, and how URLs are rewritten."""

    tree: vllm_tree.VllmTree
    cache: Path
    proxy: str | None
    mapping: dict[str, str]

    @property
    def rewrites(self):
        return dep_fetcher.url_rewrites(self.proxy, self.mapping)

    def heading(self) -> str:
        deps = self.tree.git_deps
        return (f"[bold]{escape(self.tree.summary().split(':')[0])}: {len(deps)} git "
                f"dependenc{'y' if len(deps) == 1 else 'ies'}[/] (cache {self.cache / 'deps'})")


def url_map(items) -> dict[str, str]:
    mapping = {}
    for item in items or []:
        if "=" not in item:
            raise ForgeError(f"--url-map {item!r} is not OLD=NEW",
                             "e.g. --url-map https://github.com/=https://git.example.com/github/")
        old, new = item.split("=", 1)
        mapping[old] = new
    return mapping


def fetch_deps(ctx, given) -> None:
    from vllm_forge.audit.audit import parse_size

    settings = steps.settings(ctx, given)
    mapping = url_map(given.url_map)
    imports = list(given.from_ or [])
    if imports and given.bundle:
        raise ForgeError("--from imports on the machine without GitHub, --bundle writes on the one with it",
                         "run `invoke fetch-deps --bundle FILE` where GitHub is reachable, then --from FILE here")
    limit = parse_size(given.max_size) if given.max_size not in (None, "") else dep_importer.DEFAULT_MAX_SIZE
    deps = Deps(vllm_tree.inspect_tree(settings.src), Path(settings.config.cache_dir).expanduser(),
                given.github_proxy or settings.mirror.github_proxy or None, mapping)
    if imports:
        plan = dep_importer.plan_imports(deps.tree, imports)
        (_dry_imports if given.dry_run else _imports)(deps, plan, given, limit)
    elif given.dry_run:
        _dry_fetch(deps, given)
    else:
        _fetch(deps, given)


def _dry_imports(deps: Deps, plan, given, limit) -> None:
    console.print(deps.heading())
    for source in plan.sources:
        console.print(f"  {source.dep.name} @ {dep_fetcher.short(source.dep.tag)}: would import "
                      f"{escape(source.describe())}", soft_wrap=True)
    _print_passed(plan.passed)
    _print_dep_states(deps.tree, deps.cache, deps.rewrites, imported={s.dep for s in plan.sources})
    refused = [p for p in plan.passed if p.refused]
    if refused:
        raise dep_importer.refusal([dep_importer.Outcome(None, p.path, "refused", "", ForgeError(
            f"{p.path} {p.why}", p.fix)) for p in refused])


def _imports(deps: Deps, plan, given, limit) -> None:
    outcomes, seconds = run_streaming("importing dependencies", dep_importer.run_imports, plan, deps.cache,
                                      force=given.force, max_size=limit)
    if not given.json:  # --json: stdout is the JSON alone, as for a fetch
        _print_passed([p for p in plan.passed if not p.refused])
        for outcome in outcomes:
            colour = {"imported": "green", "unchanged": "dim", "refused": "red"}[outcome.result]
            console.print(f"[{colour}]{escape(outcome.line)}[/]", soft_wrap=True)
        console.print(deps.heading() + f" [dim]({seconds:.1f}s)[/]")
        _print_dep_states(deps.tree, deps.cache, deps.rewrites)
    failed = dep_importer.refusal(outcomes)
    if failed is not None:
        raise failed
    if given.offline:  # the one-line refusal naming every pin still missing
        dep_fetcher.fetch_deps(deps.tree, deps.cache, deps.proxy, url_map=deps.mapping, offline=True)
    if given.json:
        print(json_mod.dumps(dep_fetcher.deps_env(deps.tree, deps.cache), indent=2))


def _dry_fetch(deps: Deps, given) -> None:
    console.print(deps.heading())
    for status in dep_fetcher.plan_fetch(deps.tree, deps.cache, deps.proxy, deps.mapping, force=given.force):
        state = (f"fetch from {escape(status.url)}" + (f" over {status.state.status}" if status.cached else "")
                 if status.fetch else escape(status.state.detail))
        how = dep_fetcher.override_for(deps.tree, status.dep) or "[red]no local-copy override[/]"
        submodules = dep_fetcher.submodules_planned(status.dep) if status.fetch else \
            dep_fetcher.submodules_recorded(deps.cache, status.dep)
        console.print(f"  {status.dep.name} @ {status.dep.tag}: {state} -> {status.path.name}  [dim]{how}[/]",
                      soft_wrap=True)
        if submodules:
            console.print(f"    [dim]{escape(submodules)}[/]", soft_wrap=True)
    if given.bundle:
        console.print(f"  then write every dependency, with its git data, to {Path(given.bundle).expanduser()}")


def _fetch(deps: Deps, given) -> None:
    env, seconds = run_streaming("fetching dependencies", dep_fetcher.fetch_deps, deps.tree, deps.cache, deps.proxy,
                                 url_map=deps.mapping, offline=given.offline, force=given.force)
    if given.bundle:
        manifest, written = run_streaming("writing the bundle", dep_importer.write_bundle, deps.tree, deps.cache,
                                          given.bundle)
        out = Path(given.bundle).expanduser().absolute()
        said = (f"[green]wrote {out}[/] ({out.stat().st_size / (1 << 20):.0f} MiB, {len(manifest['deps'])} "
                f"dependencies with their git data) [dim]({written:.1f}s)[/]: take it to the machine without GitHub "
                f"and run `invoke fetch-deps --from {out.name}` there")
        (err_console if given.json else console).print(said, soft_wrap=True)  # --json: stdout is the JSON alone
    if given.json:
        print(json_mod.dumps(env, indent=2))
        return
    console.print(deps.heading() + f" [dim]({seconds:.1f}s)[/]")
    _print_dep_states(deps.tree, deps.cache, deps.rewrites)
    console.print("the build reads them from:")
    for name, value in env.items():
        console.print(f"  {name}={escape(value)}", soft_wrap=True)


def _print_passed(passed) -> None:
    for item in passed:
        colour = "red" if item.refused else "dim"
        console.print(f"[{colour}]{'refused' if item.refused else 'not imported'}: {escape(str(item.path))} "
                      f"{escape(item.why)}{'; ' + escape(item.fix) if item.fix else ''}[/]", soft_wrap=True)


def _print_dep_states(tree, cache: Path, rewrites, imported=()) -> list:
    """One line per dependency (its status and why) and what it took of its submodules, then the pins still
    missing with their URL; the missing dependencies. Those in ``imported`` (a dry run's) are left out."""
    colours = {"pinned": "green", "unverified": "yellow", "substitute": "red", "missing": "red"}
    missing = []
    for dep in tree.git_deps:
        if dep in imported:
            continue
        state = dep_fetcher.dep_state(cache, dep)
        colour = colours[state.status]
        console.print(f"  {dep.name} @ {dep_fetcher.short(dep.tag)}: [{colour}]{escape(state.detail)}[/]",
                      soft_wrap=True)
        submodules = dep_fetcher.submodules_recorded(cache, dep) if state.status != "missing" else ""
        if submodules:
            console.print(f"    [dim]{escape(submodules)}[/]", soft_wrap=True)
        if state.status == "missing":
            missing.append(dep)
    if missing:
        pins = dep_fetcher.missing_pins(missing, rewrites)
        console.print(f"[yellow]still missing ({len(missing)}):[/] {escape(pins)}. To bring them: "
                      f"{escape(dep_fetcher.BRING_THEM)}", soft_wrap=True)
    return missing


