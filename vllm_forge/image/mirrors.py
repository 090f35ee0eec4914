"""Mirror profiles: one ``--mirror global|cn|NAME`` for registries, package indexes, GitHub and apt.

A profile says where to fetch from when the upstream hosts are slow or blocked:

- ``registries``: container registry host -> replacement prefix (``nvcr.io`` -> ``m.daocloud.io/nvcr.io``
  turns ``nvcr.io/nvidia/pytorch:25.02-py3`` into ``m.daocloud.io/nvcr.io/nvidia/pytorch:25.02-py3``;
  ``docker.io`` covers bare names too: ``ubuntu:24.04`` is ``docker.io/library/ubuntu:24.04``);
- ``pypi_index``: a PEP 503 index for pip and uv (PIP_INDEX_URL, UV_DEFAULT_INDEX, UV_INDEX_URL);
- ``pytorch_index``: what replaces ``https://download.pytorch.org/whl`` (PYTORCH_CUDA_INDEX_BASE_URL;
  the CUDA suffix ``/cu128`` is appended as on the upstream index);
- ``github_proxy``: a URL prefix put before the whole ``https://github.com/...`` URL (the same
  convention as ``invoke fetch-deps --github-proxy``);
- ``apt_mirror``: scheme and host that replace ``archive.ubuntu.com``, ``security.ubuntu.com``,
  ``ports.ubuntu.com``, ``deb.debian.org`` and ``security.debian.org`` in the image's apt sources
  (the paths, ``/ubuntu``, ``/debian``, ..., stay as they are).

Users add their own under ``forge.mirrors.NAME`` in ``invoke.yaml`` with the same keys, plus an
optional ``extends: cn`` (a profile named like a built-in one extends that built-in one).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_release import CudaRelease

PYPI_INDEX = "https://pypi.org/simple"
APT_HOSTS = ("archive.ubuntu.com", "security.ubuntu.com", "ports.ubuntu.com", "deb.debian.org", "security.debian.org")
DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")


def pytorch_index_base() -> str:
    """``https://download.pytorch.org/whl``: the common base of compat's per-CUDA torch indexes."""
    return next(iter(compat.PYTORCH_WHEEL_INDEX.values())).rsplit("/", 1)[0]


@dataclass
class MirrorProfile:
    name: str
    description: str = ""
    registries: dict[str, str] = field(default_factory=dict)  # registry host -> replacement prefix
    pypi_index: str = ""
    pytorch_index: str = ""
    github_proxy: str = ""
    apt_mirror: str = ""
    extends: str = ""  # the profile this one was built on ("" for a built-in one)

    @property
    def rewrites_anything(self) -> bool:
        return bool(self.registries or self.pypi_index or self.pytorch_index or self.github_proxy
                    or self.apt_mirror)


# DaoCloud's public registry mirror serves nvcr.io, ghcr.io, quay.io under the `m.daocloud.io/<host>/`
# prefix and Docker Hub as docker.m.daocloud.io; Tsinghua TUNA and Aliyun mirror PyPI and the
# Ubuntu/Debian archives; Nanjing University mirrors download.pytorch.org/whl with the same layout
# (…/pytorch/whl/cu128), which a plain PyPI mirror does not carry. No public GitHub proxy is built
# in: they come and go, so a lab names the one it trusts (`github_proxy:` in invoke.yaml).
_DAOCLOUD = {
    "nvcr.io": "m.daocloud.io/nvcr.io",
    "docker.io": "docker.m.daocloud.io",
    "ghcr.io": "m.daocloud.io/ghcr.io",
    "quay.io": "m.daocloud.io/quay.io",
    "registry.k8s.io": "m.daocloud.io/registry.k8s.io",
}

BUILTIN_MIRRORS: dict[str, MirrorProfile] = {
    "global": MirrorProfile("global", "upstream registries and indexes"),
    "cn": MirrorProfile(
        "cn",
        "mainland China: DaoCloud registry mirror, Tsinghua PyPI and apt, NJU PyTorch wheels",
        registries=dict(_DAOCLOUD),
        pypi_index="https://pypi.tuna.tsinghua.edu.cn/simple",
        pytorch_index="https://mirrors.nju.edu.cn/pytorch/whl",
        apt_mirror="http://mirrors.tuna.tsinghua.edu.cn",
    ),
    "cn-aliyun": MirrorProfile(
        "cn-aliyun",
        "mainland China: DaoCloud registry mirror, Aliyun PyPI and apt, NJU PyTorch wheels",
        registries=dict(_DAOCLOUD),
        pypi_index="https://mirrors.aliyun.com/pypi/simple",
        pytorch_index="https://mirrors.nju.edu.cn/pytorch/whl",
        apt_mirror="http://mirrors.aliyun.com",
        extends="cn",
    ),
}

PROFILE_KEYS = ("description", "registries", "pypi_index", "pytorch_index", "github_proxy", "apt_mirror", "extends")
_URL_KEYS = ("pypi_index", "pytorch_index", "github_proxy", "apt_mirror")


def known_mirror_names(user_mirrors: Mapping[str, Any] | None = None) -> list[str]:
    return sorted(set(BUILTIN_MIRRORS) | set(user_mirrors or {}))


def user_mirrors_from(invoke_config: Any) -> Mapping[str, Any]:
    """``forge.mirrors`` of an invoke config (a task's ``ctx.config``), or {}."""
    if invoke_config is None or not hasattr(invoke_config, "get"):
        return {}
    forge = invoke_config.get("forge", {}) or {}
    mirrors = forge.get("mirrors", {}) if hasattr(forge, "get") else {}
    return mirrors or {}


def load_mirror(name: str, user_mirrors: Mapping[str, Any] | None = None) -> MirrorProfile:
    """The profile called ``name``: one from invoke.yaml's ``forge.mirrors`` (over its ``extends``,
    or over the built-in of the same name) or a built-in one. ForgeError for an unknown name."""
    if not isinstance(user_mirrors or {}, Mapping):
        raise ForgeError("forge.mirrors in invoke.yaml must be a mapping of profile names",
                         "write forge: {mirrors: {NAME: {pypi_index: URL, ...}}}")
    return _resolve(str(name or "global").strip(), dict(user_mirrors or {}), ())


def _resolve(name: str, user: dict[str, Any], chain: tuple[str, ...]) -> MirrorProfile:
    if name in chain:
        raise ForgeError(f"mirror profiles extend each other in a loop: {' -> '.join((*chain, name))}",
                         "make one of them extend a built-in profile (global, cn) instead")
    if name not in user:
        if name in BUILTIN_MIRRORS:
            profile = BUILTIN_MIRRORS[name]
            return replace(profile, registries=dict(profile.registries))
        known = ", ".join(known_mirror_names(user))
        via = f" (extended by {chain[-1]})" if chain else ""
        raise ForgeError(f"mirror profile '{name}'{via} is not defined",
                         f"use one of {known}, or define it in invoke.yaml under forge.mirrors.{name}")
    spec = user[name] if user[name] is not None else {}
    if not isinstance(spec, Mapping):
        raise ForgeError(f"forge.mirrors.{name} in invoke.yaml must be a mapping",
                         f"give it keys among {', '.join(PROFILE_KEYS)}")
    unknown = sorted(set(spec) - set(PROFILE_KEYS))
    if unknown:
        raise ForgeError(f"forge.mirrors.{name} sets unknown key(s): {', '.join(map(str, unknown))}",
                         f"use only {', '.join(PROFILE_KEYS)}")
    parent_name = str(spec.get("extends") or "")
    if parent_name:
        base = _resolve(parent_name, user, (*chain, name))
    elif name in BUILTIN_MIRRORS:  # `forge.mirrors.cn.pypi_index: ...` adjusts the built-in cn
        base, parent_name = _resolve(name, {}, ()), name
    else:
        base = MirrorProfile(name)
    profile = replace(base, name=name, extends=parent_name, registries=dict(base.registries),
                      description=str(spec.get("description") or f"{name} from invoke.yaml"
                                      + (f", extends {parent_name}" if parent_name else "")))
    for key in _URL_KEYS:
        if key in spec:
            value = "" if spec[key] is None else str(spec[key]).strip()
            _check_url(name, key, value)
            setattr(profile, key, value)
    if "registries" in spec:
        registries = spec["registries"] or {}
        if not isinstance(registries, Mapping):
            raise ForgeError(f"forge.mirrors.{name}.registries must map registry hosts to mirror prefixes",
                             "e.g. registries: {nvcr.io: harbor.example.com/nvcr}")
        for host, prefix in registries.items():
            host = _normal_registry(str(host))
            if prefix in (None, ""):
                profile.registries.pop(host, None)  # `nvcr.io: ""` keeps that registry un-mirrored
                continue
            _check_prefix(name, host, str(prefix))
            profile.registries[host] = str(prefix).strip().rstrip("/")
    return profile


def _check_url(profile: str, key: str, value: str) -> None:
    if value and not re.match(r"^(https?|file)://[^\s]+$", value):
        raise ForgeError(f"forge.mirrors.{profile}.{key} is not a URL: {value!r}",
                         f"give {key} as http(s)://host/path, or \"\" to leave it upstream")


def _check_prefix(profile: str, host: str, prefix: str) -> None:
    if re.match(r"^[a-z]+://", prefix.strip()) or not re.match(r"^[\w.-]+(:\d+)?(/[\w./-]*)?$", prefix.strip()):
        raise ForgeError(f"forge.mirrors.{profile}.registries.{host} is not a registry prefix: {prefix!r}",
                         "give it as host[/path] without a scheme, e.g. harbor.example.com/nvcr")


def _normal_registry(host: str) -> str:
    host = host.strip().lower().rstrip("/")
    return DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def split_image(image: str) -> tuple[str, str]:
    """``(registry, repository[:tag][@digest])`` as Docker reads a reference: ``ubuntu:24.04`` is
    ``("docker.io", "library/ubuntu:24.04")``."""
    first, slash, rest = image.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return _normal_registry(first), rest
    if not slash:
        return DOCKER_HUB, f"library/{image}"
    return DOCKER_HUB, image


def rewrite_image(image: str, profile: MirrorProfile) -> str:
    """The image reference to pull through the profile's registry mirror (unchanged when none applies)."""
    if not image or "$" in image:
        return image
    registry, path = split_image(image)
    prefix = profile.registries.get(registry)
    return f"{prefix}/{path}" if prefix else image


def rewrite_git_url(url: str, profile: MirrorProfile) -> str:
    """``https://github.com/...`` through the profile's GitHub proxy (other URLs unchanged)."""
    if not profile.github_proxy or not url:
        return url
    from vllm_forge.deps.fetch_deps import url_rewrites  # the one place the proxy convention lives

    for old, new in url_rewrites(profile.github_proxy).items():
        if url.startswith(old):
            return new + url[len(old):]
        if url.startswith("http://" + old[len("https://"):]):
            return new + url[len(old) - 1:]
    return url


def pytorch_index_url(cuda: CudaRelease, profile: MirrorProfile) -> str:
    """The torch wheel index for ``cuda`` through the profile (``…/whl/cu128``)."""
    upstream = compat.PYTORCH_WHEEL_INDEX.get(cuda.minor_str, "")
    if not upstream or not profile.pytorch_index:
        return upstream
    return profile.pytorch_index.rstrip("/") + upstream[len(pytorch_index_base()):]


def mirror_env(profile: MirrorProfile) -> dict[str, str]:
    """Environment / build-arg values pip, uv, vLLM's and this repo's Dockerfile read for the profile.

    Empty for ``global``: the tools' own defaults then apply. APT_MIRROR is ``scheme://host`` to put
    in place of the upstream apt hosts (see ``APT_HOSTS``).
    """
    env: dict[str, str] = {}
    if profile.pypi_index:
        env.update(PIP_INDEX_URL=profile.pypi_index, UV_DEFAULT_INDEX=profile.pypi_index,
                   UV_INDEX_URL=profile.pypi_index)
    if profile.pytorch_index:
        env["PYTORCH_CUDA_INDEX_BASE_URL"] = profile.pytorch_index.rstrip("/")
    if profile.apt_mirror:
        env["APT_MIRROR"] = profile.apt_mirror.rstrip("/")
    return env


def default_images(cuda: CudaRelease) -> tuple[str, str]:
    """(build base, runtime base) compat names for ``cuda``; "" where it knows none."""
    row = compat.default_ngc_tag(cuda)
    return (row.image if row else "", compat.CUDA_RUNTIME_IMAGES.get(cuda.minor_str, ""))


@dataclass
class AppliedMirror:
    """A profile applied to one configuration: every URL and image a command will really use.

    Computed once per command line (``apply_mirror``); clone, build-wheel, bake, fetch-deps and
    ``invoke plan`` all read this one result instead of re-applying the profile themselves.
    """

    profile: MirrorProfile
    cuda: CudaRelease  # the image's CUDA release (the recipe's), whose default images and torch index apply
    base_image: str  # "" : the recipe's default, not rewritten (an upstream Dockerfile keeps its own)
    runtime_image: str
    requested_base: str  # what the configuration asks for (its default for ``cuda`` when unset)
    requested_runtime: str
    clone_url: str
    vllm_repo: str
    pypi_index: str  # "" : the tools' default (pypi.org)
    pytorch_index: str  # base, without the /cuXYZ suffix; "" : download.pytorch.org/whl
    apt_mirror: str  # scheme://host; "" : the image's own apt sources
    github_proxy: str

    @property
    def env(self) -> dict[str, str]:
        """Environment for pip/uv and the build (build-wheel, fetch-deps): empty for ``global``."""
        return mirror_env(self.profile)

    def rows(self) -> list[tuple[str, str, str]]:
        """``(what, upstream, used)`` for every URL the profile may rewrite, for ``invoke plan``."""
        none = f"(none known for CUDA {self.cuda})"
        torch_index = compat.PYTORCH_WHEEL_INDEX.get(self.cuda.minor_str, "")
        apt_upstream = "http://{archive,security,ports}.ubuntu.com, http://{deb,security}.debian.org"
        return [
            ("build base image", self.requested_base or none, self.base_image or self.requested_base or none),
            ("runtime base image", self.requested_runtime or none,
             self.runtime_image or self.requested_runtime or none),
            ("PyPI index (pip, uv)", PYPI_INDEX, self.pypi_index or PYPI_INDEX),
            ("PyTorch wheel index", torch_index or none, pytorch_index_url(self.cuda, self.profile) or none),
            ("vLLM clone URL", self.vllm_repo, self.clone_url),
            ("apt sources (image)", apt_upstream, self.apt_mirror or apt_upstream),
        ]


def apply_mirror(profile: MirrorProfile, config: Any, recipe: Any = None, *,
                 cuda: CudaRelease | None = None) -> AppliedMirror:
    """The profile applied to ``config`` (a BuildConfig: ``base_image``, ``runtime_image``, ``vllm_repo``) and
    the bake's ``recipe`` (vllm_forge/image/recipe.py: its CUDA and default images; without one, compat's
    defaults for ``cuda``, the --cuda asked for, else the recipe's default). An explicit base image is
    rewritten through the registry mirror too; a default one is named only when the mirror changes it, so a
    recipe's own default stays in charge otherwise."""
    if recipe is not None:
        cuda, default_base, default_runtime = recipe.cuda, recipe.base_image, recipe.runtime_image
    else:
        from vllm_forge.image.recipe import DEFAULT_IMAGE_CUDA

        cuda = cuda or DEFAULT_IMAGE_CUDA
        default_base, default_runtime = default_images(cuda)
    chosen = []
    for explicit, default in ((config.base_image, default_base), (config.runtime_image, default_runtime)):
        image = explicit or default
        rewritten = rewrite_image(image, profile) if image else ""
        chosen.append(rewritten if explicit or (rewritten and rewritten != image) else "")
    return AppliedMirror(
        profile=profile, cuda=cuda, base_image=chosen[0], runtime_image=chosen[1],
        requested_base=config.base_image or default_base, requested_runtime=config.runtime_image or default_runtime,
        clone_url=rewrite_git_url(config.vllm_repo, profile), vllm_repo=config.vllm_repo,
        pypi_index=profile.pypi_index, pytorch_index=profile.pytorch_index.rstrip("/"),
        apt_mirror=profile.apt_mirror.rstrip("/"), github_proxy=profile.github_proxy,
    )


def describe_mirror(profile: MirrorProfile, config: Any, cuda: CudaRelease | None = None) -> list[tuple[str, str, str]]:
    """Rows ``(what, original, rewritten)`` (see ``AppliedMirror.rows``)."""
    return apply_mirror(profile, config, cuda=cuda).rows()


def profile_as_dict(profile: MirrorProfile) -> dict[str, Any]:
    return {f.name: getattr(profile, f.name) for f in fields(profile)}


def main(argv=None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Show a mirror profile and what it rewrites.")
    parser.add_argument("name", nargs="?", default="", help="profile name (default: list the built-in ones)")
    parser.add_argument("--cuda", type=CudaRelease.parse, default=None,
                        help="CUDA: the release whose images and torch index to show, e.g. 12.8 (default: the one "
                             "a bake of a checkout that pins none uses)")
    parser.add_argument("--image", action="append", default=[], help="also rewrite this image reference")
    args = parser.parse_args(argv)
    if not args.name:
        for name, profile in BUILTIN_MIRRORS.items():
            print(f"{name:10} {profile.description}")
        return 0
    profile = load_mirror(args.name)
    from vllm_forge.core.config import DEFAULTS

    class _Config:
        base_image, runtime_image, vllm_repo = "", "", DEFAULTS["vllm_repo"]

    rows = describe_mirror(profile, _Config, args.cuda)
    rows += [("image", image, rewrite_image(image, profile)) for image in args.image]
    print(json.dumps({"profile": profile_as_dict(profile), "env": mirror_env(profile),
                      "rewrites": [{"what": w, "original": o, "rewritten": r} for w, o, r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
