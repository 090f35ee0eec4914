"""Remote and multi-node BuildKit builders, and a registry layer cache, for `bake`.

A team that outgrows one machine points every bake at one builder (``docker buildx create --name
gpu-builders --driver remote tcp://buildkitd:1234``, or a kubernetes driver with several nodes) and
shares the image layers through a registry: ``--cache-to type=registry,ref=REF,mode=max`` after a
bake, ``--cache-from type=registry,ref=REF`` before the next one, on any machine. ``mode=max``
keeps the build stage's layers too, which is where the wheel is compiled. Both need docker buildx;
Debian's docker.io 20.10 without the buildx plugin has neither.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from vllm_forge.core.errors import ForgeError, run_main

_BUILDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# registry[:port]/path[:tag] (no digest: a cache ref is written to)
_IMAGE_REF = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+(:[\w][\w.-]{0,127})?$")
DEFAULT_CACHE_TAG = "buildcache"


def check_remote_settings(builder: str, registry_cache: str) -> None:
    if builder and not _BUILDER_NAME.match(builder):
        raise ForgeError(f"builder '{builder}' is not a buildx builder name",
                         "pass the NAME shown by `docker buildx ls` (letters, digits, '-', '_', '.')")
    if registry_cache and not _IMAGE_REF.match(registry_cache):
        raise ForgeError(f"registry_cache '{registry_cache}' is not an image reference",
                         "set it like registry.example.com/team/vllm-forge-cache (a tag is optional)")


def cache_ref(registry_cache: str) -> str:
    """The ref the cache is written to: the one given, with the tag ``buildcache`` if it has none."""
    last = registry_cache.rsplit("/", 1)[-1]
    return registry_cache if ":" in last else f"{registry_cache}:{DEFAULT_CACHE_TAG}"


def buildx_build_args(builder: str, registry_cache: str) -> list[str]:
    """Flags for ``docker buildx build``: the builder, then the registry cache (read and write)."""
    check_remote_settings(builder, registry_cache)
    args: list[str] = []
    if builder:
        args += ["--builder", builder]
    if registry_cache:
        ref = cache_ref(registry_cache)
        args += ["--cache-from", f"type=registry,ref={ref}",
                 "--cache-to", f"type=registry,ref={ref},mode=max,ignore-error=true"]
    return args


def buildx_bake_args(builder: str, registry_cache: str, target: str = "*") -> list[str]:
    """The same for ``docker buildx bake``: cache settings go through --set on the target(s)."""
    check_remote_settings(builder, registry_cache)
    args: list[str] = []
    if builder:
        args += ["--builder", builder]
    if registry_cache:
        ref = cache_ref(registry_cache)
        args += ["--set", f"{target}.cache-from=type=registry,ref={ref}",
                 "--set", f"{target}.cache-to=type=registry,ref={ref},mode=max,ignore-error=true"]
    return args


def buildx_available(docker: str = "docker") -> bool:
    exe = shutil.which(docker)
    if not exe:
        return False
    try:
        return subprocess.run([exe, "buildx", "version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def require_buildx(builder: str, registry_cache: str, *, docker: str = "docker", available: bool | None = None) -> bool:
    """Whether the bake must go through buildx; refuses settings this Docker cannot honour.
    Returns False when neither a builder nor a registry cache is set (plain ``docker build`` is fine)."""
    check_remote_settings(builder, registry_cache)
    if not (builder or registry_cache):
        return False
    if available is None:
        available = buildx_available(docker)
    if not available:
        asked = " and ".join(filter(None, [f"builder {builder}" if builder else "",
                                           f"registry cache {registry_cache}" if registry_cache else ""]))
        raise ForgeError(f"{asked} need(s) docker buildx, and `{docker} buildx` is not installed here",
                         "install the buildx plugin (docker-buildx-plugin or docker-buildx), or clear "
                         "builder/registry_cache to bake with the local engine")
    return True


def plan_lines(builder: str, registry_cache: str) -> list[str]:
    """What `plan` says about where a bake runs and which layer cache it uses."""
    check_remote_settings(builder, registry_cache)
    lines = [f"builder: {builder or 'the default (local engine)'}"]
    if registry_cache:
        ref = cache_ref(registry_cache)
        lines.append(f"registry layer cache: read type=registry,ref={ref}; written with mode=max "
                     "(every stage, the wheel build included); a failed cache write does not fail the bake")
    else:
        lines.append("registry layer cache: none (layers stay in the builder's own cache)")
    return lines


def main(argv=None) -> int:
    import argparse
    import shlex

    parser = argparse.ArgumentParser(description="Show the buildx flags for a remote builder and registry cache.")
    parser.add_argument("--builder", default="")
    parser.add_argument("--registry-cache", default="")
    parser.add_argument("--bake", action="store_true", help="flags for `docker buildx bake` instead of build")
    args = parser.parse_args(argv)
    for line in plan_lines(args.builder, args.registry_cache):
        print(f"# {line}")
    make = buildx_bake_args if args.bake else buildx_build_args
    print(shlex.join(make(args.builder, args.registry_cache)))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
