"""A CUDA toolkit release as a value: parsed once where it enters (a flag, a pin, nvcc's banner, a wheel
index suffix), then compared and looked up as numbers, never re-parsed.

compat's tables stay keyed by the release's minor as text ("12.8", the way NVIDIA's release notes name
them); code looks them up with ``release.minor_str``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from vllm_forge.core.errors import ForgeError

# "12.8", "12.8.1", "13.0.88" (a patch beyond the release's own, as nvcc prints it), "cu128", "cu130"
_RELEASE_RE = re.compile(r"^(?:(?P<major>\d{1,2})\.(?P<minor>\d{1,2})(?:\.(?P<patch>\d+))?|cu(?P<tag>\d{2,3}))$",
                         re.IGNORECASE)


@functools.total_ordering
@dataclass(frozen=True, eq=True)
class CudaRelease:
    """``CudaRelease(12, 8)`` is CUDA 12.8; ``CudaRelease(12, 8, 1)`` its update 1. A release without a patch
    sorts before its patches (12.8 < 12.8.0 < 12.8.1 < 12.9)."""

    major: int
    minor: int
    patch: int | None = None

    @classmethod
    def parse(cls, text: str | CudaRelease) -> CudaRelease:
        """``"12.8"``, ``"12.8.1"``, ``"cu128"`` (PyTorch's index suffix) -> the release; ForgeError otherwise."""
        if isinstance(text, CudaRelease):
            return text
        match = _RELEASE_RE.match(str(text).strip())
        if not match:
            raise ForgeError(f"'{text}' is not a CUDA release",
                             "give it as MAJOR.MINOR, e.g. 12.8 (12.8.1 and cu128 are read too)")
        if match.group("tag"):
            digits = match.group("tag")
            return cls(int(digits[:-1]), int(digits[-1]))
        patch = match.group("patch")
        return cls(int(match.group("major")), int(match.group("minor")), int(patch) if patch is not None else None)

    @classmethod
    def parse_or_none(cls, text: str | None) -> CudaRelease | None:
        """What a probe reported (torch.version.cuda, an nvcc banner) as a release; None when it names none."""
        try:
            return cls.parse(text) if text else None
        except ForgeError:
            return None

    @property
    def minor_str(self) -> str:
        """``"12.8"``: the key of compat's tables, and what labels, tags and messages say."""
        return f"{self.major}.{self.minor}"

    @property
    def minor_release(self) -> CudaRelease:
        """The release without its patch: 12.8.1 -> 12.8."""
        return CudaRelease(self.major, self.minor)

    @property
    def tag(self) -> str:
        """``"cu128"``: PyTorch's wheel index directory, vLLM's wheel variant and this project's image tags."""
        return f"cu{self.major}{self.minor}"

    def same_minor(self, other: CudaRelease) -> bool:
        return (self.major, self.minor) == (other.major, other.minor)

    def _key(self) -> tuple[int, int, int]:
        return self.major, self.minor, -1 if self.patch is None else self.patch

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, CudaRelease):
            return NotImplemented
        return self._key() < other._key()

    def __str__(self) -> str:
        return self.minor_str if self.patch is None else f"{self.minor_str}.{self.patch}"


def cuda_release(text: str | None) -> CudaRelease | None:
    """A ``--cuda`` value as typed on a command line: the release, or None when it was not given."""
    return CudaRelease.parse(text) if text else None
