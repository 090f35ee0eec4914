"""The one place that decides whether a URL carries a credential, and hides it.

A URL carries a credential when it has user-info (``https://user:pw@host``, ``https://TOKEN@host``;
an ssh user name alone, ``ssh://git@host``, is not secret) or a query parameter whose name says it is
one (``?access_token=``, ``?token=``, ``private_token``, ``X-Amz-Signature``, ``api_key``, ...), in any
letter case of the scheme. ``mask_urls`` hides those parts in any text (``****``); ``strip_credentials``
removes them from one URL (for labels and markers); ``has_credentials`` says whether there are any.
Everything that prints, logs, labels or stores a URL goes through these, so one rule covers them all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# A URL inside free text: scheme, optional user-info, the rest. The user-info runs to the last @ before the
# path and may hold any character but / ? # and whitespace: a password with quotes, < or > is still one.
_URL = re.compile(r"(?<![\w+.-])([a-z][a-z0-9+.-]*://)(?:([^/?#\s]*)@)?([^\s'\"<>]*)", re.IGNORECASE)
# Query (or fragment / matrix) parameters whose value is a secret, by name.
_SECRET_PARAM = re.compile(
    r"([?&;#])([\w.-]*(?:token|passw|pwd|secret|key|sig|credential|auth|session)[\w.-]*)=([^&#;\s'\"<>]*)",
    re.IGNORECASE,
)
_SSH_SCHEMES = ("ssh://", "git+ssh://", "ssh+git://")
MASK = "****"


def _userinfo_is_secret(scheme: str, userinfo: str) -> bool:
    if not userinfo:
        return False
    if ":" in userinfo:  # user:password (even an empty password says "this is a login")
        return True
    return not scheme.lower().startswith(_SSH_SCHEMES)  # https://TOKEN@host: the user name is the token


def _mask_one(match: re.Match) -> str:
    scheme, userinfo, rest = match.group(1), match.group(2), match.group(3)
    out = scheme
    if userinfo is not None:
        if _userinfo_is_secret(scheme, userinfo):
            out += (userinfo.split(":", 1)[0] + ":" if ":" in userinfo else "") + MASK + "@"
        else:
            out += userinfo + "@"
    return out + _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}={MASK}" if m.group(3) else m.group(0), rest)


def mask_urls(text: str) -> str:
    """``text`` with every URL's password, token user name and secret query values shown as ****."""
    return _URL.sub(_mask_one, text or "")


def has_credentials(url: str) -> bool:
    """Whether any URL in ``url`` carries a credential (user-info or a secret query parameter)."""
    for match in _URL.finditer(url or ""):
        if _userinfo_is_secret(match.group(1), match.group(2) or ""):
            return True
        if any(m.group(3) for m in _SECRET_PARAM.finditer(match.group(3))):
            return True
    return False


def strip_credentials(url: str) -> str:
    """``https://user:pw@host/x?token=t&a=1`` -> ``https://host/x?a=1``: no user-info, no secret parameters."""

    def strip(match: re.Match) -> str:
        rest = _SECRET_PARAM.sub(lambda m: m.group(1), match.group(3))
        rest = re.sub(r"([?&;#])[&;]+", r"\1", rest)  # the separators the removed parameters leave
        rest = re.sub(r"[?&;#]+$", "", rest)
        return match.group(1) + rest

    return _URL.sub(strip, url or "")


def is_secret_config(env: Mapping[str, str], name: str) -> bool:
    """Whether ``name`` in ``env`` is a GIT_CONFIG_VALUE_n carrying a credential (an extraHeader): the config
    git_safe hands git through the environment, never its command line."""
    match = re.fullmatch(r"GIT_CONFIG_VALUE_(\d+)", name)
    return bool(match) and env.get(f"GIT_CONFIG_KEY_{match.group(1)}", "").lower().endswith(".extraheader")
