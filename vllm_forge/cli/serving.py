"""serve and stop: the OpenAI server in a container or --local, its flags over invoke.yaml's forge.serve."""

from __future__ import annotations

from vllm_forge import pipeline as pipelines
from vllm_forge.cli import steps
from vllm_forge.cli.diagnose import engine_docker, plain_docker
from vllm_forge.cli.render import console
from vllm_forge.cli.task import number
from vllm_forge.core.errors import ForgeError
from vllm_forge.serve import serve as serving

SERVE_NAME = serving.DEFAULT_NAME


def _serve_request(ctx, model, image, local, tp, port, host, gpus, api_key, insecure, name, shm_size,
                   max_model_len, gpu_memory_utilization, served_model_name, vllm_args) -> serving.ServeRequest:
    """Flags over invoke.yaml's forge.serve over vLLM's defaults; pass-through flags: invoke.yaml's,
    then --vllm-args, then the words after `--` (vLLM takes the last of a repeated flag)."""
    settings = serving.serve_settings(steps.layers(ctx))
    remainder = serving.split_vllm_args(getattr(ctx, "remainder", "") or "", "the words after --")

    def pick(flag, key, kind, default):  # the command line, else invoke.yaml, else vLLM's own default
        try:
            return number(key.replace("_", "-"), flag if flag not in (None, "") else settings.get(key), kind, default)
        except ForgeError as err:
            raise ForgeError(err.problem, f"pass e.g. --{key.replace('_', '-')} "
                             f"{4096 if kind is int else 0.5}") from None

    return serving.ServeRequest(
        model=model, image=image, local=local, tp=number("tp", tp, default=1),
        port=number("port", port, default=8000), host=host, gpus=gpus,
        api_key=api_key, insecure=insecure,
        name=name, shm_size=shm_size, max_model_len=pick(max_model_len, "max_model_len", int, 0),
        gpu_memory_utilization=pick(gpu_memory_utilization, "gpu_memory_utilization", float, 0.0),
        served_model_name=served_model_name or settings.get("served_model_name") or "",
        extra_args=settings.get("vllm_args", []) + serving.split_vllm_args(vllm_args) + remainder)



def serve(ctx, given) -> None:
    g = given
    if g.api_key is not None:
        raise serving.refuse_key_on_command_line()
    request = _serve_request(ctx, g.model, g.image, g.local, g.tp, g.port, g.host, g.gpus,
                             serving.read_api_key(g.api_key_file), g.insecure, g.name, g.shm_size, g.max_model_len,
                             g.gpu_memory_utilization, g.served_model_name, g.vllm_args)
    docker_path = plain_docker(g.docker)
    if g.compose:
        path = serving.write_compose_file(request, steps.REPO_ROOT / g.compose_file)
        key = "export VLLM_API_KEY=...; " if request.api_key else ""  # the file names it, never holds it
        console.print(f"[green]wrote[/] {path}: {key}docker compose -f {path} up -d")
        return
    options = pipelines.Options(dry_run=g.dry_run, serve=request, smoke=not g.no_smoke, serve_timeout_s=g.timeout)
    options.bake.docker = docker_path
    steps.run(pipelines.build_pipeline(steps.settings(ctx), ["serve"], options))
    if g.dry_run:
        return
    console.print(f"stop it with: invoke stop{'' if g.name == SERVE_NAME else ' --name ' + g.name}")


def stop(name: str, docker) -> None:
    if (serving.LOCAL_STATE_DIR / f"{serving.check_name(name)}.pid").exists():  # a --local server: no Docker
        console.print(serving.stop(name, plain_docker(docker)))
        return
    import shutil

    client = plain_docker(docker)
    if not shutil.which(client):  # no Docker here: nothing of ours can be running in it
        console.print(f"nothing to stop: no local server named {name} ({serving.LOCAL_STATE_DIR / (name + '.pid')} "
                      f"does not exist) and no docker client ({client}) on this host")
        return
    console.print(serving.stop(name, engine_docker(docker)))


