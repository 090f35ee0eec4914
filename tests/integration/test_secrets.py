"""Secrets (HF_TOKEN, API keys, index and cache credentials) appear in nothing printed (plan,
--dry-run, --json, logs), nothing written (compose files, wheels, build logs) and nothing a shared host
shows (process command lines, container arguments, images); and `serve` binds 127.0.0.1 unless asked,
refusing 0.0.0.0 without an API key unless --insecure."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import require_tool

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MARKER = f"forge-secret-{uuid.uuid4().hex}"
SECRET_ENV = {
    "HF_TOKEN": f"{MARKER}-hf",
    "HUGGING_FACE_HUB_TOKEN": f"{MARKER}-hub",
    "VLLM_API_KEY": f"{MARKER}-key",
    "SCCACHE_REDIS_PASSWORD": f"{MARKER}-redis",
    "AWS_SECRET_ACCESS_KEY": f"{MARKER}-aws",
    "AWS_SESSION_TOKEN": f"{MARKER}-session",
    "VLLM_FORGE_DIST_TOKEN": f"{MARKER}-dist",  # a build farm's client and server tokens (docs/farm.md)
    "VLLM_FORGE_FARM_TOKEN": f"{MARKER}-farm",
}


def run_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400", **SECRET_ENV, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, minivllm_repo) -> Path:
    dest = tmp_path_factory.mktemp("secrets") / "vllm"
    subprocess.run(["git", "clone", "-q", "--branch", "v0.1.0", minivllm_repo, str(dest)], check=True,
                   capture_output=True)
    return dest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("args", [
    ["plan"],
    ["plan", "--vllm-src", "{co}"],
    ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dry-run"],
    ["clone", "--repo", "https://forge:{marker}-url@127.0.0.1:9/vllm.git", "--dry-run"],
    ["plan", "--repo", "https://{marker}-token@127.0.0.1:9/vllm.git"],
    ["serve", "--image", "vllm-forge/vllm:x", "--model", "m", "--host", "0.0.0.0", "--dry-run"],
    ["serve", "--image", "vllm-forge/vllm:x", "--model", "m", "--api-key-file", "{keyfile}", "--dry-run"],
    ["serve", "--local", "--model", "m", "--api-key-file", "{keyfile}", "--dry-run"],
    ["inspect-tree", "--vllm-src", "{co}", "--json"],
    ["doctor", "--arch", "12.0", "--json"],
    ["nccl-test", "--dry-run"],
    ["fetch-deps", "--vllm-src", "{co}", "--dry-run"],
    ["fetch-deps", "--vllm-src", "{co}", "--url-map", "https://github.com/=https://forge:{marker}-map@git.example.com/",
     "--dry-run"],
    ["fetch-deps", "--vllm-src", "{co}", "--github-proxy", "https://proxy.example.com/?access_token={marker}-proxy",
     "--dry-run"],
    ["build-wheel", "--arch", "12.0", "--vllm-src", "{co}", "--dist-scheduler", "http://127.0.0.1:9", "--dry-run"],
    ["farm-scheduler", "--farm-dir", "{tmp}/farm", "--dry-run"],
    ["farm-server", "--scheduler", "http://127.0.0.1:9", "--farm-dir", "{tmp}/farm", "--dry-run"],
], ids=lambda a: " ".join(a[:2]) + (" " + a[-1] if a[-1].startswith("--") else ""))
def test_nothing_printed_shows_a_secret(args, checkout, tmp_path):
    keyfile = tmp_path / "api-key"
    keyfile.write_text(f"{MARKER}-file\n")
    out = run_cli(*[a.format(co=checkout, marker=MARKER, keyfile=keyfile, tmp=tmp_path) for a in args])
    assert "Traceback" not in out.stderr
    assert MARKER not in out.stdout + out.stderr
    if args[0] == "serve":
        assert out.returncode == 0, out.stderr
        assert "VLLM_API_KEY='****'" in out.stdout or "-e VLLM_API_KEY" in out.stdout
        assert "--api-key" not in out.stdout  # the key travels by environment, not on a command line


def test_bake_dry_run_masks_index_credentials(checkout):
    from tests.conftest import docker_available

    require_tool("a Docker engine", docker_available())
    out = run_cli("bake", "--vllm-src", str(checkout), "--index-url", f"https://forge:{MARKER}-idx@pypi.example.com/simple",
                  "--dry-run")
    assert out.returncode == 0, out.stderr
    assert MARKER not in out.stdout + out.stderr
    assert "pip_index_url" in out.stdout  # it goes in as a BuildKit secret


def test_an_api_key_on_the_command_line_is_refused():
    out = run_cli("serve", "--image", "vllm-forge/vllm:x", "--model", "m", "--api-key", f"{MARKER}-flag",
                  "--dry-run")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--api-key-file" in out.stderr and "VLLM_API_KEY" in out.stderr
    assert MARKER not in out.stdout + out.stderr


def test_compose_file_names_the_key_never_holds_it(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "compose.yaml"
    out = run_cli("serve", "--image", "vllm-forge/vllm:x", "--model", "m", "--host", "0.0.0.0",
                  "--compose", "--compose-file", str(path))  # the key: $VLLM_API_KEY
    assert out.returncode == 0, out.stderr
    text = path.read_text()
    assert MARKER not in text and MARKER not in out.stdout + out.stderr
    service = yaml.safe_load(text)["services"]["vllm-forge-serve"]
    assert "VLLM_API_KEY=${VLLM_API_KEY:?export VLLM_API_KEY first}" in service["environment"]
    assert "HF_TOKEN" in service["environment"]  # by name: compose takes it from the shell
    assert "--api-key" not in service["command"]
    assert not list(tmp_path.glob(".*partial"))


def test_compose_refused_writes_nothing(tmp_path):
    path = tmp_path / "compose.yaml"
    out = run_cli("serve", "--image", "x", "--model", "m", "--host", "0.0.0.0", "--compose", "--compose-file",
                  str(path), env={"VLLM_API_KEY": ""})
    assert out.returncode == 2 and not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.nvcc
def test_a_real_build_writes_no_secret(checkout, tmp_path, nvcc_toolchain):
    """The wheel and the build log of a real build, run with secrets in its environment."""
    import shutil

    src = tmp_path / "co"
    shutil.copytree(checkout, src, symlinks=True)
    logs = REPO / "build" / "logs"
    before = set(logs.glob("build-wheel-*.log")) if logs.exists() else set()
    out = run_cli("build-wheel", "--arch", "12.0", "--vllm-src", str(src), "--dist-dir", str(tmp_path / "dist"),
                  "--compile-cache", "none", "--max-jobs", "1")
    assert out.returncode == 0, out.stdout[-1500:] + out.stderr[-1500:]
    assert MARKER not in out.stdout + out.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert MARKER.encode() not in wheel.read_bytes()
    new_logs = set(logs.glob("build-wheel-*.log")) - before
    assert new_logs and all(MARKER not in log.read_text(errors="replace") for log in new_logs)


def test_serve_binds_localhost_unless_asked():
    out = run_cli("serve", "--image", "x", "--model", "m", "--dry-run", env={"VLLM_API_KEY": ""})
    assert out.returncode == 0 and "-p 127.0.0.1:8000:8000" in out.stdout
    local = run_cli("serve", "--local", "--model", "m", "--dry-run", env={"VLLM_API_KEY": ""})
    assert local.returncode == 0 and "--host 127.0.0.1" in local.stdout
    for host in ("0.0.0.0", "::", "192.168.1.10", ""):
        refused = run_cli("serve", "--image", "x", "--model", "m", "--host", host, "--dry-run",
                          env={"VLLM_API_KEY": ""})
        assert refused.returncode == 2 and "without --api-key" in refused.stderr, (host, refused.stderr)
    insecure = run_cli("serve", "--image", "x", "--model", "m", "--host", "0.0.0.0", "--insecure", "--dry-run",
                       env={"VLLM_API_KEY": ""})
    assert insecure.returncode == 0 and "-p 0.0.0.0:8000:8000" in insecure.stdout
    keyfile = Path(os.environ.get("TMPDIR", "/tmp")) / f"forge-key-{uuid.uuid4().hex}"
    keyfile.write_text("k\n")
    try:
        keyed = run_cli("serve", "--image", "x", "--model", "m", "--host", "0.0.0.0", "--api-key-file", str(keyfile),
                        "--dry-run", env={"VLLM_API_KEY": ""})
    finally:
        keyfile.unlink()
    assert keyed.returncode == 0 and "VLLM_API_KEY='****' " in keyed.stdout and "docker run" in keyed.stdout
    from_env = run_cli("serve", "--image", "x", "--model", "m", "--host", "0.0.0.0", "--dry-run")  # key from env
    assert from_env.returncode == 0


@pytest.fixture(scope="module")
def server_image():
    """The embedded miniature's OpenAI server (stdlib only) on the runtime stand-in: reads VLLM_API_KEY like vLLM."""
    from vllm_forge.core.errors import ForgeError
    from vllm_forge.image import docker_client
    from vllm_forge.image.standin_images import RUNTIME_STANDIN, ensure_standin_images

    try:
        client = docker_client.find_docker()
        docker_client.check_engine(client.path)
        ensure_standin_images(client.path, log=lambda line: None)
    except ForgeError as err:
        require_tool(f"a Docker engine with BuildKit ({err})", False)
    tag = f"vllm-forge-test/keyed-server:{uuid.uuid4().hex[:8]}"
    dockerfile = (f"FROM {RUNTIME_STANDIN}\nCOPY vllm /opt/mini/vllm\nENV PYTHONPATH=/opt/mini\n"
                  'ENTRYPOINT ["python3", "-m", "vllm.entrypoints.openai.api_server"]\n')
    subprocess.run(client.build_argv + ["-q", "-t", tag, "-f", "-", str(REPO / "tests/fixtures/minivllm")],
                   input=dockerfile, text=True, check=True, capture_output=True, env={**os.environ, **client.build_env})
    yield client, tag
    subprocess.run([client.path, "rmi", "-f", tag], capture_output=True)


@pytest.mark.docker
def test_served_api_key_is_in_no_command_line_and_no_image(server_image, tmp_path):
    import requests

    client, tag = server_image
    name = f"vllm-forge-test-{uuid.uuid4().hex[:6]}"
    port = free_port()
    key = f"{MARKER}-served"
    keyfile = tmp_path / "api-key"
    keyfile.write_text(key + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "serve", "--image", tag, "--model", "minivllm/echo",
                             "--gpus", "none", "--port", str(port), "--name", name, "--api-key-file", str(keyfile),
                             "--timeout", "60"],
                            cwd=REPO, env={**os.environ, "COLUMNS": "400", "VLLM_FORGE_DOCKER": client.path},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen_on_host = ""
        while proc.poll() is None:  # every command line on the host while it starts the container
            seen_on_host += subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            time.sleep(0.1)
        out, err = proc.communicate()
        assert proc.returncode == 0, out[-1500:] + err[-1500:]  # healthy, and the smoke test used the key
        seen_on_host += subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert key not in seen_on_host and key not in out + err
        info = subprocess.run([client.path, "inspect", "-f", "{{json .Args}} {{json .Config.Cmd}} {{json .Path}}",
                               name], capture_output=True, text=True, check=True).stdout
        assert key not in info and "VLLM_API_KEY" not in info
        assert key not in subprocess.run([client.path, "image", "inspect", tag], capture_output=True, text=True).stdout
        ports = subprocess.run([client.path, "port", name], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{port}" in ports and "0.0.0.0" not in ports
        assert requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 401
        auth = {"Authorization": f"Bearer {key}"}
        assert requests.get(f"http://127.0.0.1:{port}/v1/models", headers=auth, timeout=5).status_code == 200
    finally:
        subprocess.run([client.path, "rm", "-f", name], capture_output=True)


def mirror_config(tmp_path: Path, **urls: str) -> Path:
    path = tmp_path / "invoke.yaml"
    lines = ["forge:", "  mirrors:", "    corp:"] + [f'      {key}: "{value}"' for key, value in urls.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_mirror_profile_credentials_are_masked_in_the_plan(tmp_path, checkout):
    config = mirror_config(tmp_path, pypi_index=f"https://forge:{MARKER}-pypi@pypi.corp.example/simple",
                           pytorch_index=f"https://torch.corp.example/whl?access_token={MARKER}-torch")
    out = run_cli("-f", str(config), "plan", "--mirror", "corp", "--vllm-src", str(checkout))
    assert "Traceback" not in out.stderr and "forge:****@pypi.corp.example" in out.stdout
    assert MARKER not in out.stdout + out.stderr


def test_mirror_profile_credentials_never_become_build_args(tmp_path, checkout):
    from tests.conftest import docker_available

    require_tool("a Docker engine", docker_available())
    config = mirror_config(tmp_path, pypi_index=f"https://{MARKER}-pypi@pypi.corp.example/simple")
    out = run_cli("-f", str(config), "bake", "--mirror", "corp", "--vllm-src", str(checkout), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "pip_index_url" in out.stdout and MARKER not in out.stdout + out.stderr
    config = mirror_config(tmp_path, pytorch_index=f"https://torch.corp.example/whl?access_token={MARKER}-torch")
    out = run_cli("-f", str(config), "bake", "--mirror", "corp", "--vllm-src", str(checkout), "--dry-run")
    assert out.returncode == 2 and "carries credentials" in out.stderr and "--netrc" in out.stderr
    assert MARKER not in out.stdout + out.stderr
