"""No credential of the checkout reaches an image, a log, a label or a build context; `--non-root` serves.

A user's checkout of a private fork, as it really looks: `origin` is
https://forgeuser:TOKEN@example.com/vllm.git, .git/config has an http.extraHeader bearer token, a
url.*.insteadOf carrying the token and a credential helper; the reflog says `clone: from <url with
token>`, FETCH_HEAD names it; a .netrc and a .git-credentials sit in the work tree and a netrc beside
the checkout (passed as --netrc, a BuildKit secret). The fetch-deps cache has the same planted in its
clone. Then build, wheel and runtime are baked on the stand-ins (forge recipe, and vLLM's recipe
`--dockerfile upstream`), and the token is looked for everywhere they leave things.

BuildKit's exported cache (`--cache-to type=local`) needs buildx, which the CI client (Docker 20.10
built-in BuildKit) does not have: every cache record is made from the build context, the base images
and the Dockerfile, so the test checks every file of each staged build context instead.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from vllm_forge.gpu.archs import parse_arch_list
from vllm_forge.gpu.cuda_release import CudaRelease

pytestmark = [pytest.mark.integration, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_FIXTURE = REPO / "tests" / "fixtures" / "upstream_dockerfile" / "Dockerfile"
TOKEN = f"forge-token-{uuid.uuid4().hex}"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def plant(repo: Path) -> None:
    """The token wherever a user's checkout keeps it."""
    git(repo, "remote", "set-url", "origin", f"https://forgeuser:{TOKEN}@example.com/vllm.git")
    git(repo, "config", "http.extraHeader", f"Authorization: Bearer {TOKEN}-header")
    git(repo, "config", f"url.https://forgeuser:{TOKEN}-insteadof@example.com/.insteadOf", "https://example.com/")
    git(repo, "config", "credential.helper", f"store --file=/tmp/{TOKEN}-store")
    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "update-ref", "-m", f"clone: from https://forgeuser:{TOKEN}-reflog@example.com/vllm.git", "HEAD", head)
    (repo / ".git" / "FETCH_HEAD").write_text(
        f"{head}\t\tbranch 'main' of https://forgeuser:{TOKEN}-fetch@example.com/vllm\n")
    (repo / ".netrc").write_text(f"machine example.com login forgeuser password {TOKEN}-netrc\n")
    (repo / ".git-credentials").write_text(f"https://forgeuser:{TOKEN}-store@example.com\n")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from vllm_forge.deps.fetch_deps import dep_dir, fetch_deps
    from vllm_forge.source.minivllm import MINIDEP_GITHUB_PREFIX, publish_minidep, publish_minivllm
    from vllm_forge.source.vllm_tree import inspect_tree

    tmp = tmp_path_factory.mktemp("creds")
    remote = tmp / "remote"
    url = publish_minivllm(remote)
    publish_minidep(remote)
    work = tmp / "work"
    co = work / "vllm"
    subprocess.run(["git", "clone", "-q", url, str(co)], check=True)
    plant(co)
    netrc = work / "netrc"  # beside the checkout
    netrc.write_text(f"machine example.com login forgeuser password {TOKEN}-beside\n")
    cache = tmp / "cache"
    tree = inspect_tree(co)
    fetch_deps(tree, cache, url_map={MINIDEP_GITHUB_PREFIX: remote.as_uri() + "/"})
    dep = dep_dir(cache, tree.git_deps[0])
    plant(dep)  # a proxy or mirror URL with a token, as fetch-deps may have used
    marker = dep.with_name(dep.name + ".forge-dep.json")
    marker.write_text(marker.read_text().replace('"fetched_from": "', f'"fetched_from": "https://u:{TOKEN}-proxy@'))
    return SimpleNamespace(tmp=tmp, co=co, netrc=netrc, cache=cache, dep=dep, marker=marker)


def request(planted, standins, **kw):
    from vllm_forge.image.request import BakeRequest, default_ca_bundle

    return BakeRequest(src=planted.co, archs=parse_arch_list("12.0"), cuda=CudaRelease(13, 0),
                       base_image=standins["build"],
                       runtime_image=standins["runtime"], ca_bundle=default_ca_bundle()[0], netrc=planted.netrc,
                       context_dir=planted.tmp / "bake", dist_dir=planted.tmp / "dist", deps_cache=planted.cache,
                       build_args={"CMAKE_ARGS": "-DMINIVLLM_FETCH_DEPS=ON"}, **kw)


def run_cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400", **(env or {})}, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def baked(client, standins, planted):
    """build, wheel and runtime through the API (logs in build/logs), runtime --non-root through `invoke bake`."""
    from vllm_forge.image.bake import run_bake
    from vllm_forge.image.bake_plan import plan_bake

    suffix = uuid.uuid4().hex[:8]
    tags = {"build": f"vllm-forge-test/creds:{suffix}-build", "runtime": f"vllm-forge-test/creds:{suffix}",
            "nonroot": f"vllm-forge-test/creds:{suffix}-nonroot"}
    logs = REPO / "build" / "logs"
    before = set(logs.glob("*.log")) if logs.is_dir() else set()
    results = {}
    try:
        for target in ("build", "wheel", "runtime"):
            plan = plan_bake(request(planted, standins, target=target, tag=tags.get(target, "")), client)
            results[target] = run_bake(plan, log_path=logs / f"bake-test-creds-{suffix}-{target}.log")
        cli = run_cli("bake", "--vllm-src", str(planted.co), "--cuda", "13.0", "--base-image", standins["build"],
                      "--runtime-image", standins["runtime"], "--tag", tags["nonroot"], "--netrc", str(planted.netrc),
                      "--build-arg", "CMAKE_ARGS=-DMINIVLLM_FETCH_DEPS=ON", "--non-root",
                      env={"VLLM_FORGE_DOCKER": client.path, "INVOKE_FORGE_CACHE_DIR": str(planted.cache)})
        assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
        yield SimpleNamespace(tags=tags, results=results, cli=cli,
                              logs=sorted(set(logs.glob("*.log")) - before))
    finally:
        subprocess.run([client.path, "rmi", "-f", *tags.values()], capture_output=True)
        for log in set(logs.glob("bake-*.log")) - before:  # this test's (the API ones and `invoke bake`'s)
            log.unlink(missing_ok=True)


def assert_no_token_in_stream(argv: list[str], what: str) -> int:
    """Read a command's whole output in chunks (overlapping by the token's length); returns bytes read."""
    needle = TOKEN.encode()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    tail, total = b"", 0
    try:
        while chunk := proc.stdout.read(1 << 22):
            assert needle not in tail + chunk, f"the token is in {what}"
            tail = chunk[-len(needle):]
            total += len(chunk)
    finally:
        proc.stdout.close()
        assert proc.wait() == 0
    return total


def assert_no_token_in_files(root: Path) -> int:
    scanned = 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert TOKEN.encode() not in data, f"the token is in {path}"
            if path.suffix == ".whl":
                with zipfile.ZipFile(path) as wheel:
                    for name in wheel.namelist():
                        assert TOKEN.encode() not in wheel.read(name), f"the token is in {path}!{name}"
            scanned += 1
    return scanned


def test_the_token_is_where_a_user_has_it(planted):
    """The control: without the sanitising every check below would find it."""
    for path in (planted.co / ".git" / "config", planted.co / ".git" / "logs" / "HEAD",
                 planted.co / ".git" / "FETCH_HEAD", planted.co / ".netrc", planted.co / ".git-credentials",
                 planted.netrc, planted.dep / ".git" / "config", planted.marker):
        assert TOKEN in path.read_text(), path
    assert f"Bearer {TOKEN}-header" in git(planted.co, "config", "--list")


def test_no_token_in_any_layer_history_or_label(client, baked):
    for ref in (baked.tags["build"], baked.tags["runtime"], baked.tags["nonroot"]):
        assert_no_token_in_stream([client.path, "history", "--no-trunc", ref], f"docker history of {ref}")
        assert_no_token_in_stream([client.path, "image", "inspect", ref], f"the config or labels of {ref}")
        size = assert_no_token_in_stream([client.path, "save", ref], f"docker save {ref}")
        assert size > 10**6  # really read the layers
    labels = subprocess.run([client.path, "image", "inspect", "-f", "{{json .Config.Labels}}", baked.tags["build"]],
                            capture_output=True, text=True, check=True).stdout
    assert '"org.vllm-forge.vllm.repo":"https://example.com/vllm.git"' in labels


def test_git_still_works_inside_the_build(client, baked, planted):
    """What setuptools-scm and `git describe` need came along: history, tags, HEAD, the index."""
    probe = "cd /workspace/vllm && git describe --tags && git remote get-url origin && ls .git"
    out = subprocess.run([client.path, "run", "--rm", "--entrypoint", "sh", baked.tags["build"], "-c", probe],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0].startswith("v0.1.0") and lines[1] == "https://example.com/vllm.git"
    assert not {"logs", "FETCH_HEAD", "hooks", "info"} & set(lines[2:])
    # As staged (before use-existing-torch edits requirements): nothing looks modified, no dirty version.
    staged = planted.tmp / "bake" / "context" / "vllm"
    assert git(staged, "status", "--porcelain", "--untracked-files=no") == ""
    assert git(staged, "describe", "--tags", "--dirty").strip() == git(planted.co, "describe", "--tags").strip()
    # the planted commit sits one past the tag: setuptools-scm-like .dev1 and the commit in the local version
    (name,) = [w.name for w in baked.results["wheel"].wheels]
    assert re.fullmatch(r"vllm-0\.1\.0\.dev1\+g[0-9a-f]{12,40}\.cu130\.sm120-cp38-abi3-linux_x86_64\.whl", name), name


def test_no_token_in_the_wheel_the_logs_or_the_build_contexts(baked, planted):
    assert baked.logs and all(TOKEN not in log.read_text(errors="replace") for log in baked.logs)
    assert TOKEN not in baked.cli.stdout + baked.cli.stderr
    assert assert_no_token_in_files(planted.tmp / "dist") >= 1
    # Stand-in for an exported BuildKit cache (needs buildx): every file the builds were given.
    staged = planted.tmp / "bake"
    assert (staged / "context" / "vllm" / ".git" / "HEAD").is_file()
    assert (staged / "context" / "deps" / planted.dep.name / ".git" / "HEAD").is_file()
    assert assert_no_token_in_files(staged) > 50
    assert assert_no_token_in_files(REPO / "build" / "bake" / "context") > 50  # the `invoke bake` one


def test_upstream_recipe_builds_from_a_sanitized_copy(client, standins, planted):
    from vllm_forge.image.bake import run_bake
    from vllm_forge.image.bake_plan import plan_bake

    up = planted.tmp / "up" / "vllm"
    shutil.copytree(planted.co, up, symlinks=True)
    (up / "docker").mkdir()
    shutil.copy(UPSTREAM_FIXTURE, up / "docker" / "Dockerfile")
    tag = f"vllm-forge-test/creds-upstream:{uuid.uuid4().hex[:8]}"
    req = request(planted, standins, dockerfile="upstream", target="build", tag=tag, max_jobs=2, nvcc_threads=1)
    req.src, req.build_args = up, {}
    try:
        plan = plan_bake(req, client)
        assert plan.context == planted.tmp / "bake" / "checkout"
        run_bake(plan)
        assert_no_token_in_stream([client.path, "save", tag], f"docker save {tag}")
        assert_no_token_in_stream([client.path, "history", "--no-trunc", tag], f"docker history of {tag}")
        assert assert_no_token_in_files(plan.context) > 20
        out = subprocess.run([client.path, "run", "--rm", "--entrypoint", "git", tag, "-C", "/workspace",
                              "describe", "--tags"], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.startswith("v0.1.0"), out.stderr
    finally:
        subprocess.run([client.path, "rmi", "-f", tag], capture_output=True)


def test_non_root_image_serves_and_inspect_shows_the_user(client, baked):
    tag = baked.tags["nonroot"]
    user = subprocess.run([client.path, "image", "inspect", "-f", "{{.Config.User}}", tag],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert user == "2000:0"
    probe = ('id -u && for d in "$HOME" "$HF_HOME" "$VLLM_CACHE_ROOT" "$TORCHINDUCTOR_CACHE_DIR" "$TRITON_CACHE_DIR"; '
             'do touch "$d/.w" || exit 1; done && echo writable')
    for extra in ([], ["--user", "4321:0"]):  # its own uid, and an arbitrary uid in group 0 (OpenShift)
        out = subprocess.run([client.path, "run", "--rm", *extra, "--entrypoint", "sh", tag, "-c", probe],
                             capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.split() == [extra[1][:4] if extra else "2000", "writable"], (
            out.stdout + out.stderr)
    shown = run_cli("inspect", tag, env={"VLLM_FORGE_DOCKER": client.path})
    assert shown.returncode == 0, shown.stderr
    assert "runs as: 2000:0" in shown.stdout and "vllm (uid 2000, gid 0)" in shown.stdout
    root = run_cli("inspect", baked.tags["runtime"], env={"VLLM_FORGE_DOCKER": client.path})
    assert "runs as: root" in root.stdout

    name = f"vllm-forge-test-{uuid.uuid4().hex[:6]}"
    try:
        served = run_cli("serve", "--image", tag, "--model", "minivllm/echo", "--gpus", "none", "--port",
                         str(free_port()), "--name", name, "--timeout", "60", env={"VLLM_FORGE_DOCKER": client.path},
                         timeout=180)
        assert served.returncode == 0, served.stdout[-1500:] + served.stderr[-1500:]  # healthy, smoke test passed
        assert ":/home/vllm/.cache/huggingface" in served.stdout  # the HF cache where this image looks for it
        running = subprocess.run([client.path, "inspect", "-f", "{{.Config.User}}", name],
                                 capture_output=True, text=True, check=True).stdout.strip()
        assert running == "2000:0"
        stopped = run_cli("stop", "--name", name, env={"VLLM_FORGE_DOCKER": client.path})
        assert stopped.returncode == 0, stopped.stderr
    finally:
        subprocess.run([client.path, "rm", "-f", name], capture_output=True)
    assert subprocess.run([client.path, "container", "inspect", name], capture_output=True).returncode != 0
