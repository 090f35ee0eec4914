"""The tasks that judge: audit (will these kernels run on the GPU), doctor, nccl-test and nccl-diagnose."""

from __future__ import annotations

import contextlib
import json as json_mod
from pathlib import Path

from invoke.exceptions import Exit

from vllm_forge.cli.task import lazy
from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu.cuda_release import cuda_release

# Loaded on first use: `audit` starts its analysis of a vLLM wheel's Python before the scan's own modules load.
kernel_audit = lazy("vllm_forge.audit.audit")
render = lazy("vllm_forge.cli.render")  # rich: not for `audit --json`
steps = lazy("vllm_forge.cli.steps")
figure_data = lazy("vllm_forge.report.figure_data")


def _audit_table(report: kernel_audit.AuditReport, show_all: bool) -> render.Table:
    table = render.Table(title=f"device code in {render.escape(report.source)}")
    for column in ("file", "SASS", "PTX", *[f"on {t.label}" for t in report.targets]):
        table.add_column(column, overflow="fold")
    body, hidden = kernel_audit.rows(report, show_all)
    colours = {"native": "green", "PTX JIT": "yellow", "PARTIAL": "bold red", "NO KERNEL": "bold red",
               "unreadable": "bold red"}
    for row in body:
        cells = [render.escape(c) for c in row[:3]]
        for cell in row[3:]:
            colour = next((c for word, c in colours.items() if cell.startswith(word)), "dim")
            cells.append(f"[{colour}]{render.escape(cell)}[/]")
        table.add_row(*cells)
    if hidden:
        table.add_row(f"[dim]... {hidden} more files without device code (--all lists them)[/]", "", "",
                      *[""] * len(report.target_names))
    return table


def audit(ctx, given) -> None:
    path, image, json, plot = given.path, given.image, given.json, given.plot
    if bool(path) == bool(image):
        raise ForgeError("give either PATH or --image IMAGE", "e.g. invoke audit dist/ --arch 12.0")
    if path and not given.require:
        # First, before the scan's modules load and before a spinner thread starts: the analysis of which
        # extensions vLLM runs without then runs in a child process beside the whole scan (audit_path asks
        # for it again, and takes this one).
        from vllm_forge.audit import vllm_extensions

        vllm_extensions.analyze_ahead(path)
    if plot:
        steps.check_plot(plot)
    archs = list(given.arch or []) or [steps.config(ctx).arch]
    torch_cuda = cuda_release(given.torch_cuda)
    # --json is read by programs: no spinner thread next to the scan.
    with contextlib.nullcontext() if json else render.console.status("reading device code..."):
        if image:
            report = kernel_audit.audit_image(image, archs, require=given.require or [], docker=given.docker,
                                              via=given.via, torch=not given.no_torch, torch_cuda=torch_cuda)
        else:
            report = kernel_audit.audit_path(path, archs, require=given.require or [], torch=not given.no_torch,
                                             max_inflate=given.max_inflate, torch_cuda=torch_cuda)
    steps.record("audit", report.to_dict())
    if json:
        print(report.to_json())
    else:
        render.console.print(_audit_table(report, given.all))
        torch = report.torch
        if torch:
            if torch.error:
                render.console.print(f"torch ({render.escape(torch.where)}): [dim]{render.escape(torch.error)}[/]",
                                     soft_wrap=True)
            else:
                verdicts = ", ".join(f"{report.label(t)}: {v}" for t, v in torch.verdict.items())
                colour = "green" if _torch_runs_everywhere(torch) else "red"
                render.console.print(
                    f"torch {render.escape(torch.version)} (CUDA {torch.cuda}, {render.escape(torch.where)}) built "
                    f"for {' '.join(torch.arch_list)}: [{colour}]{verdicts}[/]", soft_wrap=True)
        for note in report.notes():
            render.print_note(note)
        colour = "green" if report.ok else "bold red"
        render.console.print(f"[{colour}]{render.escape(report.summary())}[/]", soft_wrap=True)
    if plot:
        steps.plot(figure_data.audit_figure(report.to_dict()), plot, json=json)
    if not report.ok:
        raise Exit(code=1)




def _torch_runs_everywhere(torch: kernel_audit.TorchArchs) -> bool:
    return all(v in kernel_audit.RUNS for v in torch.verdict.values())


_LEVEL_STYLE = {"pass": "green", "info": "dim", "warn": "yellow", "fail": "bold red"}


def _print_findings(title: str, findings) -> None:
    # long fixes and messages fold inside their column at any terminal width instead of ending in "…"
    table = render.Table(title=render.escape(title), show_lines=False)
    table.add_column("", no_wrap=True)
    table.add_column("check", overflow="fold")
    table.add_column("finding", overflow="fold", ratio=3)
    table.add_column("fix", overflow="fold", ratio=3)
    for f in findings:
        style = _LEVEL_STYLE.get(f.level, "")
        fix = render.escape(f.fix) if f.level in ("warn", "fail") else ""
        if f.source and f.level in ("warn", "fail"):
            fix += f" [dim](see {render.escape(f.source)})[/]"
        table.add_row(f"[{style}]{f.level.upper()}[/]", f.check, render.escape(f.message), fix)
    render.console.print(table)


def _print_root_cause(cause) -> None:
    """The one headline that goes before the per-file tables: cause, evidence, fix, bandwidth."""
    style = _LEVEL_STYLE.get(cause.level, "")
    render.console.print(f"[{style}]ROOT CAUSE {cause.level.upper()}[/]: {render.escape(cause.cause)}")
    for label, text in cause.detail_rows():
        render.console.print(f"  [bold]{label}[/]: {render.escape(text)}")


def doctor(ctx, given) -> None:
    image, arch, json, host_file = given.image, given.arch, given.json, given.host_file
    from vllm_forge.nccl import doctor as doctor_mod

    if host_file and not Path(host_file).is_file():
        raise ForgeError(f"--host-file {host_file} is not a file",
                         "pass a host bundle written on the GPU host (see docs/nccl.md)")
    host_text = Path(host_file).read_text(errors="replace") if host_file else None
    docker = engine_docker() if image else plain_docker()  # a down engine: one line, not "no image"
    report = doctor_mod.run_doctor(image=image, arch=arch, host_text=host_text, docker=docker)
    if json:
        print(json_mod.dumps(report.to_dict(), indent=2, default=str))
    else:
        _print_root_cause(doctor_mod.root_cause(report))
        _print_findings(f"doctor{' ' + image if image else ''}: {report.level.upper()}", report.findings)
    if report.level == "fail":
        raise Exit(code=1)




def _nccl_overlays(plot, overlay) -> list[tuple[str, dict]]:
    """--overlay's diagnoses, read before the run (a typo fails first)."""
    from vllm_forge.nccl import nccl_logs

    if overlay and not plot:
        raise ForgeError("--overlay lays runs over the --plot figure, and no --plot was given",
                         "add --plot busbw.svg, or drop --overlay")
    if plot:
        steps.check_plot(plot)
    return [(figure_data.overlay_name(spec), nccl_logs.diagnosis_for(spec)) for spec in overlay or []]


def nccl_test(ctx, given) -> None:
    image, dry_run, json, plot, binary = given.image, given.dry_run, given.json, given.plot, given.binary
    from vllm_forge.nccl import nccl_logs
    from vllm_forge.nccl import nccl_test as nccl_test_mod

    overlays = _nccl_overlays(plot, given.overlay)
    if given.build_nccl_tests:
        home = Path(given.nccl_home) if given.nccl_home else nccl_test_mod.find_nccl_home()
        caps = [c for c in given.gpu_cap.replace(",", " ").split() if c]
        commands = nccl_test_mod.plan_nccl_tests_build(Path(given.build_nccl_tests), home, capabilities=caps or None)
        for command in commands:
            render.console.print(f"  [dim]# {render.escape(command.why)}[/]\n  {render.escape(command.shell())}",
                                 soft_wrap=True)
        if not dry_run:
            binary = str(nccl_test_mod.build_nccl_tests(commands))
            render.console.print(f"[green]built[/] {binary}")
    count = given.gpus or nccl_test_mod.count_gpus() or 1
    plan = nccl_test_mod.plan_run(gpus=count, sizes=given.sizes, out_dir=Path(given.out), runner=given.runner,
                                  binary=binary or None, image=image)
    for note in plan.notes:
        render.console.print(f"[dim]# {render.escape(note)}[/]", soft_wrap=True)
    render.console.print(f"[bold]{plan.runner}[/]: {render.escape(plan.command.shell())}", soft_wrap=True)
    if dry_run:
        return
    outcome, seconds = render.run_streaming(f"all-reduce on {count} GPU(s)", lambda on_line: nccl_test_mod.run_plan(
        plan, on_line=on_line))
    result = json_mod.loads(json_mod.dumps(outcome.to_dict(), default=str))
    steps.record("nccl", {**result, "overlays": overlays} if overlays else result)
    if json:
        print(json_mod.dumps(result, indent=2))
    else:
        render.console.print(render.escape(plan.output_file.read_text(errors="replace")), soft_wrap=True,
                             highlight=False)
        _print_root_cause(outcome.root_cause)
        for report in outcome.reports:
            _print_findings(f"{report.path} [{report.kind}]", report.findings)
        render.console.print(f"outputs in {plan.out_dir} [dim]({seconds:.1f}s)[/]")
    if plot:
        steps.plot(figure_data.nccl_figure(result, overlays), plot, json=json)
    if nccl_logs.worst_level([f for r in outcome.reports for f in r.findings]) == "fail":
        raise Exit(code=1)



def nccl_diagnose(ctx, given) -> None:
    json, plot = given.json, given.plot
    from vllm_forge.nccl import nccl_logs

    overlays = _nccl_overlays(plot, given.overlay)
    words = [given.files or "", *given.extra("files_")]
    words.append(getattr(ctx, "remainder", "") or "")
    paths, in_dirs = nccl_logs.input_paths(" ".join(w for w in words if w))
    # the files may come from another host: only their own "set by environment" lines count, not this shell's
    context = nccl_logs.Context(gpu_caps=[given.gpu_cap] if given.gpu_cap else [])
    reports = nccl_logs.diagnose_files(paths, context, optional=in_dirs)
    nccl_logs.check_evidence(reports)
    cause = nccl_logs.find_root_cause(reports, context)
    diagnosis = json_mod.loads(json_mod.dumps(nccl_logs.report_dict(reports, cause), default=str))
    steps.record("nccl", {**diagnosis, "overlays": overlays} if overlays else diagnosis)
    if json:
        print(json_mod.dumps(diagnosis, indent=2))
    else:
        _print_root_cause(cause)
        for report in reports:
            _print_findings(f"{report.path} [{report.kind}]: {report.level.upper()}", report.findings)
    if plot:
        steps.plot(figure_data.nccl_figure(diagnosis, overlays), plot, json=json)
    if any(r.level == "fail" for r in reports):
        raise Exit(code=1)


def plain_docker(docker=None) -> str:
    """For non-build commands any client talks to the engine; prefer the one bake would use."""
    import os

    return docker or os.environ.get("VLLM_FORGE_DOCKER") or "docker"


def engine_docker(docker=None) -> str:
    """``plain_docker``, after checking that it exists and its engine answers (one clear line if not)."""
    from vllm_forge.image.docker_client import check_engine

    path = plain_docker(docker)
    check_engine(path)
    return path
