"""A team's shared compile cache as a BuildConfig names it: sccache's Redis or bucket, or ccache's remote storage.

The ``sccache_*`` and ``ccache_remote`` keys as one typed value, and the checks ``config.resolve_config`` runs
on them before a plan shows them (one backend, no password in a URL). What a build does with it (launchers,
the environment, statistics) is build/compile_cache.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from vllm_forge.core.errors import ForgeError


@dataclass(frozen=True)
class SharedCache:
    """A team's shared compile cache. Every field is optional; all empty: local cache only."""

    sccache_redis: str = ""  # redis://[user@]host:port[/db]; the password: SCCACHE_REDIS_PASSWORD
    sccache_bucket: str = ""  # S3: name or s3://name[/prefix]; GCS: gs://name[/prefix]
    sccache_region: str = ""  # S3 region, e.g. us-east-1
    sccache_endpoint: str = ""  # S3-compatible endpoint (MinIO, R2, Ceph), e.g. https://minio:9000
    ccache_remote: str = ""  # ccache remote storage: redis://host:port, http://host/cache

    @classmethod
    def from_config(cls, config: Any) -> SharedCache:
        """From a BuildConfig (or anything with the same attribute names)."""
        return cls(**{name: str(getattr(config, name, "") or "") for name in cls.__dataclass_fields__})

    @property
    def sccache_backend(self) -> str:
        if self.sccache_redis:
            return "redis"
        if self.sccache_bucket:
            return "gcs" if self.sccache_bucket.startswith("gs://") else "s3"
        return ""

    @property
    def tool(self) -> str:
        """The cache tool these settings are for ('' when none is set)."""
        if self.sccache_backend:
            return "sccache"
        return "ccache" if self.ccache_remote else ""

    def check(self) -> None:
        if self.sccache_redis and self.sccache_bucket:
            raise ForgeError("both sccache_redis and sccache_bucket are set, and sccache uses one backend",
                             "keep one of them (Redis for a LAN, a bucket for machines in different places)")
        if self.sccache_backend and self.ccache_remote:
            raise ForgeError("both sccache and ccache shared-cache settings are set",
                             "keep the ones for the tool you use (compile_cache: sccache or ccache)")
        for name, url in (("sccache_redis", self.sccache_redis), ("ccache_remote", self.ccache_remote)):
            if urlsplit(url).password is not None:
                raise ForgeError(
                    f"{name} '{mask_url(url)}' holds a password, and config files and plans are no place for one",
                    "drop it from the URL and export it instead: SCCACHE_REDIS_PASSWORD for sccache; for ccache "
                    "export the whole URL as CCACHE_REMOTE_STORAGE and leave ccache_remote empty",
                )
        if self.sccache_redis and urlsplit(self.sccache_redis).scheme not in ("redis", "rediss"):
            raise ForgeError(f"sccache_redis '{mask_url(self.sccache_redis)}' is not a redis:// URL",
                             "set it to redis://HOST:6379 (or rediss:// for TLS)")
        if (self.sccache_region or self.sccache_endpoint) and self.sccache_backend != "s3":
            raise ForgeError("sccache_region/sccache_endpoint are set without an S3 sccache_bucket",
                             "set sccache_bucket to the S3 bucket name, or remove them")
        if self.sccache_endpoint and not re.match(r"^https?://", self.sccache_endpoint):
            raise ForgeError(f"sccache_endpoint '{self.sccache_endpoint}' is not an http(s) URL",
                             "set it like https://minio.example:9000")

    def describe(self) -> str:
        """One line for a plan, with any password masked."""
        if self.sccache_backend == "redis":
            return f"sccache Redis {mask_url(self.sccache_redis)}"
        if self.sccache_backend:
            where = ", ".join(filter(None, [self.sccache_region, self.sccache_endpoint]))
            text = f"sccache {self.sccache_backend.upper()} bucket {self.sccache_bucket}"
            return text + (f" ({where})" if where else "")
        if self.ccache_remote:
            return f"ccache remote storage {mask_url(self.ccache_remote)}"
        return "none (local cache only)"


def mask_url(url: str) -> str:
    """The URL with its password (if any) replaced by ****."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}:****@" if parts.username else ":****@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
