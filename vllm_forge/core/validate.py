"""Checks for values that reach git or docker from a flag, a config file or a checkout.

Every subprocess call takes an argument list, so no value reaches a shell; what is left is a value
that the tool itself reads as an option (``--upload-pack=...``) or as another kind of thing (an
``ext::`` URL, a path where a ref was meant). Each check says what the value must look like.
"""

from __future__ import annotations

import re

from vllm_forge.core.errors import ForgeError

# A git ref or commit as a user or a CMake file names it, by `git check-ref-format`'s rules (the same
# as vllm_forge/core/config.py's check_git_ref): never an option (leading -), a revision expression (.., @{,
# ^, ~, :), whitespace or a control character.
_REF_FORBIDDEN = re.compile(r"(\.\.|@\{|[\x00-\x20\x7f~^:?*\[\\]|//|^/|/$|\.lock$|^-|\.$|/\.|^\.)")
# URLs git may clone a vLLM checkout from: a transport URL, an scp-like ssh address, or a local path.
_CLONE_URL = re.compile(r"^(?:(?:https?|ssh|git|git\+ssh|ssh\+git|file)://\S+"
                        r"|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:\S+|[/.~]\S*)$", re.IGNORECASE)
# An image reference as Docker reads one: [host[:port]/]name[:tag][@digest].
_IMAGE_REF = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9.-]*:[0-9]{1,5}/)?[A-Za-z0-9][A-Za-z0-9._/-]*"
                        r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[a-z0-9]+:[a-fA-F0-9]{32,})?$")


def is_git_ref(value: str) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 255 and value != "@" and not _REF_FORBIDDEN.search(value)


def check_git_ref(value: str, what: str) -> str:
    if not is_git_ref(value):
        raise ForgeError(
            f"{what} {value!r} is not a git tag, branch or commit name",
            "give a tag (v0.11.0), a branch (main) or a commit hash; none starts with - or holds spaces, .., ~, ^ or :",
        )
    return value


def check_clone_url(value: str, what: str) -> str:
    """A repository URL (or local path) git may clone; never an option, never an ext:: or fd:: transport."""
    if not isinstance(value, str) or not _CLONE_URL.match(value) or any(c in value for c in "\n\r\0"):
        from vllm_forge.core.credentials import mask_urls

        raise ForgeError(
            f"{what} {mask_urls(str(value))!r} is not a git repository URL",
            "give an https://, ssh://, git@host:path or file:// URL, or a local path",
        )
    return value


def check_image_ref(value: str, what: str) -> str:
    """A Docker image reference ([host[:port]/]name[:tag][@digest]); never an option."""
    if not isinstance(value, str) or not _IMAGE_REF.match(value) or len(value) > 512:
        raise ForgeError(
            f"{what} {value!r} is not an image reference",
            "give it as [registry/]name[:tag][@sha256:...], e.g. vllm-forge/vllm:v0.11.0-cu128-sm120",
        )
    return value


_URL_PARTS = re.compile(r"^([a-z][a-z0-9+.-]*)://([^/?#]*)(.*)$", re.IGNORECASE)


def normalise_url(url: str, what: str) -> str:
    """``url`` as compared against a prefix: scheme and host in lower case, ``.`` path segments dropped.

    A ``..`` segment (also percent-encoded, ``%2e%2e``, which git decodes) is refused: a URL that climbs
    out of a prefix still starts with it as text. scp-like ``user@host:path`` gets the same path check."""
    from urllib.parse import unquote

    from vllm_forge.core.credentials import mask_urls

    match = _URL_PARTS.match(url)
    if match:
        scheme, authority, rest = match.group(1).lower(), match.group(2), match.group(3)
        userinfo, at, host = authority.rpartition("@")
        head = f"{scheme}://{userinfo}{at}{host.lower()}"
    else:
        head, rest = "", url
    path, sep, tail = re.match(r"^([^?#]*)([?#]?)(.*)$", rest, re.S).groups()
    segments = path.split("/")
    if any(unquote(segment) == ".." or unquote(segment).endswith(":..") for segment in segments):
        raise ForgeError(
            f"{what} {mask_urls(url)!r} has a .. segment, which climbs out of the place its prefix names",
            "check where this checkout comes from: give the repository's own URL, without .. in its path",
        )
    return head + "/".join(segment for segment in segments if unquote(segment) != ".") + sep + tail
