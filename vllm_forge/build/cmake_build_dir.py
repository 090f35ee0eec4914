"""What the CMake build dir of a tree holds: the objects an earlier build compiled (so a second build-wheel
resumes it) and the settings they were compiled with. Where the compile time of the build that just ran went
is build_times.py's record; both find the dir with ninja_log.find_build_dir.

setup.py (vLLM's and the miniature's) configures CMake in ``build/temp.<platform>-<python>/`` of the tree and
runs ninja there; ninja skips every object whose inputs and command did not change, and appends one line per
finished object to ``.ninja_log``. Nothing vllm-forge does between two builds touches that dir (the private copy
of the miniature keeps its ``build/``), so an interrupted build resumes where it stopped. What would make ninja
compile everything again is a change of the settings in every command line (archs, build type, compilers) or of
torch's headers, or the compile cache's launcher: build-wheel records those in ``build/.vllm-forge-compile.json``
when a compile starts and says which ones changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vllm_forge.build import ninja_log

SETTINGS_FILE = ".vllm-forge-compile.json"  # in <tree>/build/: the settings of the last compile started there
# What reaches every compile command or every object's headers, and how it is named to the user: kernel-key
# inputs (build_wheel.kernel_inputs; the rest of the key, sources, patches and env, changes only some objects)
# and the compile cache, whose launcher prefixes every compile command.
COMPILE_SETTINGS = {
    "archs": "TORCH_CUDA_ARCH_LIST",
    "fa_archs": "VLLM_FA_CMAKE_GPU_ARCHES",
    "build_type": "CMAKE_BUILD_TYPE",
    "nvcc": "nvcc",
    "host_compiler": "host compiler",
    "torch": "torch",
    "python": "Python",
    "compile_cache": "compile cache",
}


def compile_settings(kernel_inputs: dict, compile_cache: str) -> dict:
    """A build's settings as compared between two builds of one tree (``COMPILE_SETTINGS``)."""
    values = {**kernel_inputs, "compile_cache": compile_cache}
    return {name: values.get(name) for name in COMPILE_SETTINGS}


def python_suffix(settings: dict) -> str:
    """``cpython-312`` for Python 3.12: the end of setup.py's build dir name for that interpreter."""
    version = str(settings.get("python") or "")
    return "cpython-" + version.replace(".", "") if version else ""


def shown_dir(path: Path, tree: Path) -> str:
    """``build/temp.x/``: a dir as the plan and the report name it, relative to the tree when it is inside."""
    try:
        return str(path.relative_to(tree)) + "/"
    except ValueError:
        return str(path) + "/"


@dataclass(frozen=True)
class EarlierBuild:
    """A CMake build dir an earlier build left in the tree."""

    tree: Path
    build_dir: Path
    objects: int  # compile units its .ninja_log records (the newest line of each)
    settings: dict | None  # what build-wheel recorded when that compile started; None: not recorded

    @property
    def shown(self) -> str:
        return shown_dir(self.build_dir, self.tree)

    def changed(self, now: dict) -> list[str]:
        """The compile settings that differ from ``now`` (``compile_settings``), as 'NAME old (now new)'."""
        if self.settings is None:
            return []
        return [f"{label} {self.settings.get(key) or '-'} (now {now.get(key) or '-'})"
                for key, label in COMPILE_SETTINGS.items()
                if key in self.settings and self.settings[key] != now.get(key)]  # a key not recorded: not known

    def note(self, now: dict) -> str:
        """The plan's line about resuming, for a build with the settings ``now`` (``compile_settings``)."""
        if self.objects == 0:
            return (f"resume: {self.shown} holds no compiled object yet (its .ninja_log is empty): "
                    "ninja compiles everything")
        changed = self.changed(now)
        if changed:
            return (f"no resume: {self.shown} holds {self.objects} objects an earlier build compiled with "
                    f"{', '.join(changed)}: that reaches every compile command or header, so ninja compiles "
                    "them again (a full rebuild)")
        line = (f"resuming: {self.shown} holds {self.objects} objects an earlier build compiled (its .ninja_log); "
                "ninja rebuilds only what changed")
        if self.settings is None:
            line += (" (that build's archs, build type and compilers were not recorded: if they differ, ninja "
                     "compiles those objects again)")
        return line


def earlier_build(tree: Path | str, settings: dict | None = None) -> EarlierBuild | None:
    """The CMake build dir of ``tree`` (for the Python in ``settings``) and what it holds; None when there is
    none (a first build)."""
    tree = Path(tree).expanduser()
    build_dir = ninja_log.find_build_dir(tree, python_suffix(settings or {}))
    if build_dir is None:
        return None
    entries = ninja_log.read_ninja_log(build_dir / ".ninja_log")
    objects = sum(1 for entry in ninja_log.latest(entries) if entry.target)
    return EarlierBuild(tree, build_dir, objects, read_settings(tree))


_UNSET = object()


def resume_note(tree: Path | str, settings: dict, found=_UNSET) -> str:
    """The plan's line about resuming a build with ``settings`` (``compile_settings``); ``found``:
    ``earlier_build``'s answer, when already asked."""
    found = earlier_build(tree, settings) if found is _UNSET else found
    if found is None:
        return f"resume: no CMake build dir under {Path(tree) / 'build'} yet: ninja compiles everything"
    return found.note(settings)


def read_settings(tree: Path) -> dict | None:
    try:
        data = json.loads((tree / "build" / SETTINGS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_settings(tree: Path | str, settings: dict) -> None:
    """Written when a compile starts (an interrupted or killed build is described too); ``settings``:
    ``compile_settings``."""
    build = Path(tree).expanduser() / "build"
    build.mkdir(exist_ok=True)
    path = build / SETTINGS_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    partial.replace(path)
