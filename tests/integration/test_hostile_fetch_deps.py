"""fetch-deps against a hostile fork: a GIT_TAG that is a git option, a submodule or repository on a
private local path, credentials in a --url-map URL. Real git, local repositories, no network."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
from test_fetch_deps_bare_repos import git, github, make_tree  # noqa: F401 (github is a fixture)

from vllm_forge.core.errors import ForgeError
from vllm_forge.core.git_safe import git_argv
from vllm_forge.deps import fetch_deps as fd
from vllm_forge.source.vllm_tree import inspect_tree

pytestmark = pytest.mark.integration


def test_upload_pack_in_git_tag_runs_nothing(tmp_path, github):  # noqa: F811
    pwned = tmp_path / "pwned"
    tree = inspect_tree(make_tree(tmp_path / "src", f'"--upload-pack=touch {pwned};:"'))
    assert tree.git_deps[0].tag.startswith("--upload-pack=")  # the exploit reached the parser
    with pytest.raises(ForgeError, match="not a git tag, branch or commit name"):
        fd.fetch_deps(tree, tmp_path / "cache", github_proxy=github["proxy"])
    with pytest.raises(ForgeError, match="not a git tag"):  # the dry run says so too
        fd.plan_fetch(tree, tmp_path / "cache", github["proxy"])
    assert not pwned.exists()
    assert not (tmp_path / "cache" / "deps").exists() or not any((tmp_path / "cache" / "deps").iterdir())


def test_end_of_options_alone_stops_the_upload_pack(tmp_path, github, monkeypatch):  # noqa: F811
    """Defence in depth: even past the ref check, git reads the tag as a ref, never as an option."""
    pwned = tmp_path / "pwned"
    tree = inspect_tree(make_tree(tmp_path / "src", f'"--upload-pack=touch {pwned};:"'))
    monkeypatch.setattr(fd, "check_ref", lambda dep: None)
    with pytest.raises(ForgeError, match="is not in the cache"):
        fd.fetch_deps(tree, tmp_path / "cache", github_proxy=github["proxy"])
    assert not pwned.exists()


@pytest.fixture
def private_repo(tmp_path) -> Path:
    """A repository on this host that no fork should be able to pull into the cache."""
    work = tmp_path / "private-work"
    work.mkdir()
    (work / "secret.txt").write_text("private\n")
    git("init", "-q", cwd=work)
    git("add", ".", cwd=work)
    git("commit", "-qm", "private", cwd=work)
    bare = tmp_path / "private.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    return bare


def test_submodule_on_a_private_local_path_is_not_cloned(tmp_path, github, private_repo):  # noqa: F811
    hub = github["root"] / "https:" / "github.com" / "org"
    work = tmp_path / "evil-work"
    work.mkdir()
    (work / "kernel.cu").write_text("// evil\n")
    git("init", "-q", cwd=work)
    git("submodule", "add", "-q", private_repo.as_uri(), "third/private", cwd=work)
    git("add", ".", cwd=work)
    git("commit", "-qm", "evil", cwd=work)
    git("tag", "v1.0", cwd=work)
    git("clone", "-q", "--bare", str(work), str(hub / "evil.git"), cwd=tmp_path)
    src = make_tree(tmp_path / "src", "v1.0")
    cmake = src / "CMakeLists.txt"
    cmake.write_text(cmake.read_text().replace("org/kernels.git", "org/evil.git"))
    cache = tmp_path / "cache"
    with pytest.raises(ForgeError) as err:
        fd.fetch_deps(inspect_tree(src), cache, github_proxy=github["proxy"])
    assert "submodule" in str(err.value) and "--url-map" in str(err.value)
    assert not list(cache.rglob("secret.txt"))
    assert not list((cache / "deps").glob("kernels@*"))


@pytest.mark.parametrize("repository", ["file://{private}", "{private}", "ext::sh -c touch% {tmp}/pwned"])
def test_a_checkout_repository_outside_https_and_ssh_is_refused(tmp_path, private_repo, repository):
    url = repository.format(private=private_repo, tmp=tmp_path)
    src = make_tree(tmp_path / "src", "main")
    cmake = src / "CMakeLists.txt"
    cmake.write_text(cmake.read_text().replace("https://github.com/org/kernels.git", f'"{url}"'))
    with pytest.raises(ForgeError, match="neither https:// nor ssh"):
        fd.fetch_deps(inspect_tree(src), tmp_path / "cache")
    assert not (tmp_path / "pwned").exists()
    assert not list((tmp_path / "cache").rglob("secret.txt"))


def test_git_runs_with_only_the_protocols_needed(tmp_path):
    config, _ = fd._git_config(fd.url_rewrites(url_map={"https://github.com/": "file:///srv/git/"}))
    args = git_argv(["fetch"], extra_config=config, cwd=tmp_path)
    assert args[args.index("protocol.allow=never") - 1] == "-c"
    assert args.index("protocol.allow=never") < args.index("protocol.file.allow=always")
    assert "protocol.https.allow=always" in args
    plain = git_argv(["fetch"], extra_config=fd._git_config(fd.url_rewrites())[0], cwd=tmp_path)
    assert "protocol.allow=never" in plain and not any("protocol.file" in a or "protocol.ext" in a for a in plain)


@pytest.fixture
def http_github(github):  # noqa: F811
    """The fake GitHub over (dumb) HTTP, which takes any user name and password."""
    for repo in (github["root"] / "https:" / "github.com" / "org").iterdir():
        subprocess.run(["git", "update-server-info"], cwd=repo, check=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(github["root"]))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {**github, "port": server.server_address[1]}
    server.shutdown()
    server.server_close()


def test_url_map_credentials_are_in_nothing_printed_or_cached(tmp_path, http_github, capsys):
    secret = f"tok-{uuid.uuid4().hex}"
    target = f"http://forge:{secret}@127.0.0.1:{http_github['port']}/https:/github.com/"
    src = make_tree(tmp_path / "src", "v1.0")  # with its submodule, fetched through the same URL
    cache = tmp_path / "cache"
    args = [str(src), "--cache-dir", str(cache), "--url-map", f"https://github.com/={target}"]
    assert fd.main([*args, "--dry-run"]) == 0
    assert fd.main(args) == 0  # fetched through the URL with the credential
    out = capsys.readouterr()
    assert secret not in out.out + out.err
    assert "forge:****@127.0.0.1" in out.out  # the dry run shows where, masked
    path = cache / "deps" / "kernels@v1.0"
    assert (path / "kernel.cu").read_text() == "// v1\n"
    assert (path / "third" / "sub" / "sub.txt").read_text() == "submodule\n"
    marker = json.loads((path.parent / (path.name + fd.MARKER_SUFFIX)).read_text())
    assert marker["fetched_from"] == f"http://127.0.0.1:{http_github['port']}/https:/github.com/org/kernels.git"
    stored = [p for p in cache.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert stored == []


def test_query_token_in_a_url_map_is_masked_in_the_dry_run(tmp_path, capsys):
    secret = f"tok-{uuid.uuid4().hex}"
    src = make_tree(tmp_path / "src", "v1.0")
    assert fd.main([str(src), "--cache-dir", str(tmp_path / "cache"), "--dry-run", "--url-map",
                    f"https://github.com/=https://git.example.com/x?private_token={secret}&h=/"]) == 0
    assert secret not in capsys.readouterr().out


@pytest.mark.parametrize("climb", ["..", "%2e%2e", "%2E.", "./.."])
def test_a_repository_that_climbs_out_of_a_url_map_prefix_is_refused(tmp_path, github, private_repo, climb):  # noqa: F811
    """`--url-map https://github.com/=file:///srv/git/` names the mirror; a fork's GIT_REPOSITORY
    file:///srv/git/../../home/victim/private starts with that prefix as text, and is not under it."""
    mirror = github["proxy"]  # file://<tmp>/proxy/ : the named mirror
    url = f"{mirror}{climb}/{private_repo.name}"  # <tmp>/proxy/../private.git
    src = make_tree(tmp_path / "src", "main")
    cmake = src / "CMakeLists.txt"
    cmake.write_text(cmake.read_text().replace("https://github.com/org/kernels.git", f'"{url}"'))
    cache = tmp_path / "cache"
    with pytest.raises(ForgeError, match=r"has a \.\. segment.* Fix: check where this checkout comes from"):
        fd.fetch_deps(inspect_tree(src), cache, url_map={"https://github.com/": mirror})
    with pytest.raises(ForgeError, match=r"has a \.\. segment"):  # the dry run refuses it too
        fd.plan_fetch(inspect_tree(src), cache, url_map={"https://github.com/": mirror})
    assert not list(cache.rglob("secret.txt"))


def test_a_url_under_the_prefix_is_taken_once_normalised(tmp_path):
    rewrites = fd.url_rewrites(url_map={"https://github.com/": "FILE:///srv/git/"})
    assert fd.check_fetch_url("file:///srv/./git/org/x.git", rewrites, "x") == "file:///srv/git/org/x.git"
    assert fd.check_fetch_url("HTTPS://GitHub.com/org/x.git", {}, "x") == "https://github.com/org/x.git"


def test_a_link_planted_in_the_cache_is_replaced_not_written_through(tmp_path, github):  # noqa: F811
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_text("mine\n")
    cache = tmp_path / "cache"
    (cache / "deps").mkdir(parents=True)
    (cache / "deps" / f"kernels@v1.0{fd.MARKER_SUFFIX}").symlink_to(victim)
    (cache / "deps" / "kernels@v1.0").symlink_to(victim_dir, target_is_directory=True)
    fd.fetch_deps(inspect_tree(make_tree(tmp_path / "src", "v1.0")), cache, github_proxy=github["proxy"])
    assert victim.read_text() == "precious\n" and sorted(p.name for p in victim_dir.iterdir()) == ["keep.txt"]
    assert (cache / "deps" / "kernels@v1.0" / "kernel.cu").read_text() == "// v1\n"
    assert json.loads((cache / "deps" / f"kernels@v1.0{fd.MARKER_SUFFIX}").read_text())["tag"] == "v1.0"
