"""A CUDA arch as a value: what a build compiles for (``CudaArch``: SASS and/or PTX of one arch, with its
``a``/``f`` variant) and what a GPU is (``ComputeCapability``). Parsed once, by vllm_forge/gpu/archs.py from
what users type and by the readers of binaries from what those hold; every other module takes these values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from vllm_forge.core.errors import ForgeError


class ComputeCapability(NamedTuple):
    """A GPU's compute capability (what nvidia-smi's ``compute_cap`` says): the GPU a build must run on."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> ComputeCapability:
        """``"9.0"`` (nvidia-smi, torch, NVML) -> (9, 0); ForgeError for anything else."""
        match = re.fullmatch(r"\s*(\d{1,2})\.(\d)\s*", str(text))
        if not match:
            raise ForgeError(f"'{text}' is not a compute capability", "give it as MAJOR.MINOR, e.g. 12.0")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def sm(self) -> str:
        return f"sm_{self.major}{self.minor}"

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


@dataclass(frozen=True, order=True)
class CudaArch:
    major: int
    minor: int
    variant: str = ""  # "" | "a" (arch-specific) | "f" (family-specific)
    ptx: bool = False  # also embed PTX of this arch, for forward compatibility via JIT
    sass: bool = True  # embed SASS (False only for `compute_XY`: PTX alone)

    @property
    def number(self) -> str:
        return f"{self.major}{self.minor}{self.variant}"

    @property
    def sm(self) -> str:
        return f"sm_{self.number}"

    @property
    def compute(self) -> str:
        return f"compute_{self.number}"

    @property
    def capability(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def gpu(self) -> ComputeCapability:
        """The GPU this arch is named after (``9.0a`` -> 9.0)."""
        return ComputeCapability(self.major, self.minor)

    @property
    def has_ptx(self) -> bool:
        """PTX of this arch is embedded (``+PTX``, ``compute_XY``, ``XY-virtual``)."""
        return self.ptx or not self.sass

    @property
    def code_name(self) -> str:
        """One fat-binary entry's name: ``sm_90a`` for SASS, ``compute_90a`` for PTX alone."""
        return self.sm if self.sass else self.compute

    @property
    def torch_token(self) -> str:
        """One entry of TORCH_CUDA_ARCH_LIST: ``12.0``, ``9.0a``, ``12.0+PTX``."""
        return f"{self.major}.{self.minor}{self.variant}" + ("+PTX" if self.ptx or not self.sass else "")

    @property
    def cmake_tokens(self) -> list[str]:
        """CMake CUDA_ARCHITECTURES entries: ``120-real`` (SASS), ``120-virtual`` (PTX)."""
        tokens = []
        if self.sass:
            tokens.append(f"{self.number}-real")
        if self.ptx or not self.sass:
            tokens.append(f"{self.number}-virtual")
        return tokens

    def __str__(self) -> str:
        return self.torch_token
