"""The build farm's tasks: start its scheduler and build servers, stop them, say how the farm is."""

from __future__ import annotations

import json as json_mod
from pathlib import Path

from invoke.exceptions import Exit

from vllm_forge.build import farm as farms
from vllm_forge.cli import steps
from vllm_forge.cli.render import Table, console, escape, print_lines, print_note
from vllm_forge.core.errors import ForgeError


def farm_settings(ctx, given):
    """The farm's settings (config layers and flags) and its directory, relative paths next to tasks.py."""
    cfg = steps.config(ctx, **given.settings())
    farm_dir = Path(cfg.farm_dir).expanduser()
    return cfg, farm_dir if farm_dir.is_absolute() else steps.REPO_ROOT / farm_dir


def start_daemon(plan, dry_run: bool) -> None:
    print_lines(plan.lines())
    if dry_run:
        return
    with console.status(f"starting the farm {plan.role} {plan.name}..."):
        started = farms.start(plan)
    console.print(f"[green]farm {plan.role} {plan.name} up[/] on {plan.address} (pid {started.pid}, "
                  f"{started.seconds:.1f}s); stop it with: invoke farm-stop --name {plan.name}", soft_wrap=True)
    if started.note:
        print_note(started.note)


def scheduler(ctx, given) -> None:
    cfg, where = farm_settings(ctx, given)
    plan = farms.plan_scheduler(where, given.listen, farms.DistSettings.from_config(cfg).token.read(),
                                farms.farm_server_token(cfg).read())
    start_daemon(plan, given.dry_run)


def server(ctx, given) -> None:
    cfg, where = farm_settings(ctx, given)
    if not cfg.dist_scheduler:
        raise ForgeError("farm-server needs the scheduler's URL", "pass --scheduler http://HOST:10600 (or set "
                                                                 "dist_scheduler in invoke.yaml)")
    listen = given.listen
    plan = farms.plan_server(where, name=given.name or f"server-{listen.rpartition(':')[2]}",
                             scheduler=cfg.dist_scheduler, listen=listen,
                             server_token=farms.farm_server_token(cfg).read(), builder=given.builder,
                             cache_size_gb=given.cache_size, cores=given.cores, trace_jobs=given.trace_jobs)
    start_daemon(plan, given.dry_run)


def stop(ctx, given) -> None:
    _cfg, where = farm_settings(ctx, given)
    for line in farms.stop(where, given.name):
        console.print(escape(line))


def status(ctx, given) -> None:
    cfg, where = farm_settings(ctx, given)
    found = farms.farm_status(where, cfg.dist_scheduler)
    if given.json:
        print(json_mod.dumps(found.as_dict(), indent=2))
    else:
        if found.status:
            console.print(f"[green]scheduler {found.scheduler}[/]: {found.status.line()}")
        else:
            console.print(f"[red]scheduler {found.scheduler}[/]: {escape(found.problem)}", soft_wrap=True)
        if found.seen:
            table = Table("server", "jobs given", "in flight", title="build servers, from the scheduler's log here")
            for server in found.seen:
                table.add_row(server.address, str(server.jobs_assigned), str(server.jobs_in_flight))
            console.print(table)
        if found.local:
            table = Table("name", "address", "pid", "state", "cores", "jobs done", "running",
                          title=f"daemons started here ({where})")
            for daemon in found.local:
                server = daemon.role == "server"
                state = "running" if daemon.running and not daemon.problem else "[red]" + (
                    "in trouble" if daemon.running else "exited") + "[/]"
                table.add_row(daemon.name, daemon.address, str(daemon.pid or "-"), state,
                              str(daemon.cores) if server else "-", str(daemon.jobs_done) if server else "-",
                              str(daemon.jobs_running) if server else "-")
            console.print(table)
            for daemon in found.local:
                if daemon.problem:
                    console.print(f"[red]{daemon.name}[/]: {escape(daemon.problem)} (log {daemon.log})", soft_wrap=True)
    if not found.status or any(d.problem for d in found.local):
        raise Exit(code=1)
