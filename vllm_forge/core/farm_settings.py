"""The sccache-dist settings of a BuildConfig: which scheduler, where each token comes from, which toolchains.

The ``dist_*`` and ``farm_server_token_*`` keys as typed values, and the checks ``config.resolve_config`` runs
on them before anything is planned (no token in a URL, a variable name that is one, toolchain entries that
parse). Reading a token is here too (a file of mode 0600, else a variable); the farm itself (probing the
scheduler, client configs, the daemons) is build/farm.py.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vllm_forge.core.errors import ForgeError

SCHEDULER_PORT = 10600  # sccache's documented default
CLIENT_TOKEN_ENV = "VLLM_FORGE_DIST_TOKEN"
SERVER_TOKEN_ENV = "VLLM_FORGE_FARM_TOKEN"


# ---- tokens ----

@dataclass(frozen=True)
class TokenSource:
    """Where one token comes from: a file (its first line) when set, else an environment variable (by name)."""

    what: str  # "client token" / "server token"
    file: str = ""
    env: str = ""
    file_key: str = ""  # the config key and flag that set them, for the fix
    env_key: str = ""

    def describe(self) -> str:
        return f"file {self.file}" if self.file else f"${self.env}"

    def check(self) -> None:
        if self.env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.env):
            raise ForgeError(f"{self.env_key} {self.env!r} is not an environment variable name",
                             f"set {self.env_key} to the NAME of the variable that holds the {self.what}, "
                             f"e.g. {CLIENT_TOKEN_ENV}")

    def read(self, environ: Mapping[str, str] | None = None) -> str:
        environ = os.environ if environ is None else environ
        if self.file:
            path = Path(self.file).expanduser()
            try:
                info = path.stat()
                text = path.read_text(errors="replace")
            except OSError as err:
                raise ForgeError(f"cannot read the {self.what} file {path} ({err.strerror})",
                                 f"point {self.file_key} at a readable file whose first line is the token") from None
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ForgeError(f"the {self.what} file {path} can be read by other users "
                                 f"(mode {stat.S_IMODE(info.st_mode):o})", f"chmod 600 {path}")
            token = text.splitlines()[0].strip() if text.strip() else ""
            where = f"the file {path}"
        else:
            token = environ.get(self.env, "").strip()
            where = f"${self.env}"
        if not token:
            raise ForgeError(
                f"no {self.what}: {where} is {'empty' if self.file else 'not set'}",
                f"export {self.env or CLIENT_TOKEN_ENV}=TOKEN or point {self.file_key} at a 0600 file holding it "
                "(make one with `sccache-dist auth generate-shared-token`)")
        check_token_text(token, self.what)
        return token


def farm_server_token(config) -> TokenSource:
    """The server token's source, from a BuildConfig's ``farm_server_token_*`` keys."""
    return TokenSource("server token", str(getattr(config, "farm_server_token_file", "") or ""),
                       str(getattr(config, "farm_server_token_env", "") or SERVER_TOKEN_ENV),
                       "farm_server_token_file (--server-token-file)", "farm_server_token_env")


def check_token_text(token: str, what: str = "token") -> None:
    """sccache sends the token as an HTTP header value, and it goes into TOML: visible ASCII only."""
    if not re.fullmatch(r"[\x21-\x7e]+", token) or '"' in token or "\\" in token:
        raise ForgeError(f"the {what} holds characters an HTTP header cannot carry (spaces, quotes, "
                         "backslashes or non-ASCII)",
                         "use a token from `sccache-dist auth generate-shared-token` (URL-safe base64)")


@dataclass(frozen=True)
class Toolchain:
    """A toolchain archive made beforehand (sccache's ``path_override``): the compiler here, the archive,
    and where the compiler sits inside the archive."""

    compiler: str
    archive: str
    in_archive: str

    def entry(self) -> str:
        return f"{self.compiler}={self.archive}" + (f"={self.in_archive}" if self.in_archive != self.compiler else "")


def parse_toolchains(value: str) -> list[Toolchain]:
    """``COMPILER=ARCHIVE[=PATH_IN_ARCHIVE]`` entries, comma-separated (a YAML list in invoke.yaml is joined)."""
    found = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        parts = item.split("=")
        if len(parts) not in (2, 3) or not all(parts) or not all(p.startswith("/") for p in parts[:1] + parts[2:]):
            raise ForgeError(f"dist_toolchains entry {item!r} is not COMPILER=ARCHIVE[=PATH_IN_ARCHIVE]",
                             "write e.g. /usr/bin/gcc=/srv/toolchains/gcc-12.tar.gz (absolute compiler paths)")
        found.append(Toolchain(parts[0], str(Path(parts[1]).expanduser()), parts[2] if len(parts) == 3 else parts[0]))
    return found


@dataclass(frozen=True)
class DistSettings:
    """The ``dist_*`` keys of a BuildConfig: which scheduler, which token, which toolchains."""

    scheduler: str = ""  # http(s)://host:port of the sccache-dist scheduler; "": compile here only
    token_file: str = ""
    token_env: str = CLIENT_TOKEN_ENV
    toolchains: str = ""  # COMPILER=ARCHIVE[=PATH_IN_ARCHIVE],...; "": sccache packages each compiler itself

    @classmethod
    def from_config(cls, config) -> DistSettings:
        return cls(str(getattr(config, "dist_scheduler", "") or ""), str(getattr(config, "dist_token_file", "") or ""),
                   str(getattr(config, "dist_token_env", "") or ""), str(getattr(config, "dist_toolchains", "") or ""))

    @property
    def on(self) -> bool:
        return bool(self.scheduler)

    @property
    def token(self) -> TokenSource:
        return TokenSource("client token", self.token_file, self.token_env or CLIENT_TOKEN_ENV,
                           "dist_token_file (--dist-token-file)", "dist_token_env")

    def check(self) -> None:
        if not self.on:
            return
        check_scheduler_url(self.scheduler, "dist_scheduler (--dist-scheduler)")
        self.token.check()
        parse_toolchains(self.toolchains)

    def toolchain_note(self) -> str:
        made = parse_toolchains(self.toolchains)
        packaged = ("sccache packages each compiler this build runs (gcc, and nvcc's cudafe++, cicc and ptxas) "
                    "with its libraries on first use, uploads it once to each server, which keeps it in its "
                    "toolchain cache")
        if not made:
            return f"toolchains: packaged here: {packaged}"
        listed = ", ".join(f"{t.compiler} ({t.archive})" for t in made)
        return f"toolchains: pre-installed archives for {listed}; for every other compiler {packaged}"



def check_scheduler_url(url: str, key: str) -> str:
    """``url`` when it is http(s)://host[:port] with nothing else; ForgeError otherwise."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None
            or parts.password is not None or parts.query or parts.fragment or parts.path not in ("", "/")
            or re.search(r"\s", url)):
        from vllm_forge.core.plan import mask_urls

        raise ForgeError(f"{key} {mask_urls(url)!r} is not a scheduler URL",
                         f"write it as http://HOST:{SCHEDULER_PORT} (no user, token, path or query: the token comes "
                         "from dist_token_file or $" + CLIENT_TOKEN_ENV + ")")
    return url.rstrip("/")
