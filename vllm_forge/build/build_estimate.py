"""How long a build will take, from a recorded build of the same vLLM version: the tree's own ``.ninja_log``
when an earlier build left one, else a profile shipped in ``vllm_forge/build/build_profiles/`` (derived from a real
build's ``.ninja_log`` and build.ninja), else no estimate.

The model, each part of it said in the printed line:

- every compile unit of a CMake target costs what the record says it cost. A unit the record never timed (its
  build was stopped first: vLLM 0.26.0's FA3 and FA2, one unit of ``_C_stable_libtorch`` that ran past every
  call) is not given a made-up time: it is counted and named, and the figure is a lower bound ("at least");
  a resume whose every unit left is untimed gets no figure. A mean would say 55 s for a unit seen running 477 s;
- CPU-seconds scale with the arch codes each object is compiled for, counted as the ``-gencode`` outputs the
  arch list makes (``9.0`` and ``9.0a`` one, ``12.0+PTX`` two: SASS and PTX), this build's over the record's.
  vLLM's arch-gated kernels (built for their own archs whatever is asked) are not modelled;
- wall time = max(CPU-seconds / parallel compiles, the longest unit) + the recorded CMake configure, where
  parallel compiles = min(cores, MAX_JOBS x min(NVCC_THREADS, arch codes)), at the recording host's per-core speed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vllm_forge.build import ninja_log
from vllm_forge.build.build_progress import duration
from vllm_forge.build.cmake_build_dir import EarlierBuild

PROFILES_DIR = Path(__file__).resolve().parent / "build_profiles"


@dataclass(frozen=True)
class TargetRecord:
    objects: int  # compile units build.ninja declares for the target
    recorded: int  # how many of them the record timed
    cpu_seconds: float  # their compile seconds, summed
    longest_seconds: float


@dataclass(frozen=True)
class BuildProfile:
    label: str  # where the figures come from, for the printed line
    arch_codes: int | None  # arch codes per object in the record; None: unknown (taken to be this build's)
    configure_seconds: float
    targets: dict[str, TargetRecord]
    this_machine: bool = False  # recorded here (the tree's own .ninja_log), not on another host


@dataclass(frozen=True)
class Estimate:
    wall_seconds: float  # of the timed objects only (a lower bound when ``untimed``)
    cpu_seconds: float
    objects: int  # objects counted with a recorded time
    source: str  # the record and every assumption, for the printed line
    left: bool = False  # only what an earlier build in the tree did not compile
    untimed: int = 0  # objects of the targets built that no record has timed: not counted in the figures
    # The wall time if each untimed object took its target's mean timed object (all targets' mean where its
    # target has none): said beside the lower bound as what it is, a guess (a unit seen running > 477 s had a
    # 55 s mean), because "at least" alone cannot tell a 10-minute build from a 40-minute one.
    if_mean_seconds: float | None = None
    mean_seconds: float = 0.0

    def note(self, jobs: int) -> str:
        left = " left" if self.left else ""
        them = "it" if self.untimed == 1 else "them"
        on_jobs = f"on {jobs} job{'' if jobs == 1 else 's'}"
        guess = ""
        if self.untimed and self.if_mean_seconds is not None:
            takes = "it takes" if self.untimed == 1 else "they take"
            guess = (f"; ~{_minutes(self.if_mean_seconds)}{left} if {takes} the mean of the timed objects "
                     f"(up to {self.mean_seconds:.0f} s): a guess")
        if self.untimed and not self.objects:
            return (f"estimate: none for the {_objects(self.untimed)}{left}: the record has not timed {them}"
                    f"{guess} ({self.source})")
        figure = f"~{_minutes(self.wall_seconds)}{left} {on_jobs}"
        if self.untimed:
            figure = f"at least {figure}, plus {_objects(self.untimed)} the record has not timed{guess}"
        return f"estimate: {figure} ({self.source})"


def _objects(count: int) -> str:
    return f"{count} object{'' if count == 1 else 's'}"


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return duration(seconds)
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def arch_codes(archs: Iterable) -> int:
    """The -gencode outputs an arch list makes: one per SASS, one per PTX (CudaArch.cmake_tokens)."""
    return sum(len(arch.cmake_tokens) for arch in archs)


# --- profiles ---------------------------------------------------------------------------------------------


def derive_profile(ninja_log_text: str, objects_per_target_text: str, source: dict) -> dict:
    """The JSON of a shipped profile, from a recorded build's .ninja_log and its objects per target
    (``uniq -c`` lines of ``CMakeFiles/<target>.dir``, as counted from build.ninja)."""
    entries = ninja_log.latest(ninja_log.parse_ninja_log(ninja_log_text))
    times = ninja_log.by_target(entries)
    counts: dict[str, int] = {}
    for line in objects_per_target_text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].startswith("CMakeFiles/"):
            counts[fields[1][len("CMakeFiles/"):].removesuffix(".dir")] = int(fields[0])
    targets = {}
    for name in sorted(set(counts) | set(times)):
        timed = times.get(name)
        targets[name] = {
            "objects": max(counts.get(name, 0), timed.objects if timed else 0),
            "recorded": timed.objects if timed else 0,
            "cpu_seconds": round(timed.cpu_seconds, 3) if timed else 0.0,
            "longest_seconds": round(timed.longest_seconds, 3) if timed else 0.0,
        }
    return {"source": source, "targets": targets}


def _profile_from_json(data: dict) -> BuildProfile:
    source = data["source"]
    label = (f"from a recorded vLLM {source['vllm']} build: {source['host']}, "
             f"{', '.join(source['archs'])}, {source['date']}")
    targets = {name: TargetRecord(t["objects"], t["recorded"], t["cpu_seconds"], t["longest_seconds"])
               for name, t in data["targets"].items()}
    return BuildProfile(label, int(source["arch_codes"]), float(source["configure_seconds"]), targets)


def shipped_profile(version: str | None) -> BuildProfile | None:
    """The profile shipped for this vLLM release (``0.26.0``), or None."""
    if not version:
        return None
    path = PROFILES_DIR / f"vllm-{version.split('+', 1)[0]}.json"
    try:
        return _profile_from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def shipped_versions() -> list[str]:
    return sorted(p.stem.removeprefix("vllm-") for p in PROFILES_DIR.glob("vllm-*.json"))


def profile_from_build_dir(build_dir: Path, shown: str, arch_list: str | None) -> BuildProfile | None:
    """The tree's own record: build.ninja's compile units and the .ninja_log of what an earlier build compiled
    (on this machine). ``arch_list``: that build's TORCH_CUDA_ARCH_LIST when build-wheel recorded it."""
    counts = ninja_log.objects_per_target(build_dir / "build.ninja")
    times = ninja_log.by_target(ninja_log.latest(ninja_log.read_ninja_log(build_dir / ".ninja_log")))
    if not counts or not times:
        return None
    codes = None
    if arch_list:
        from vllm_forge.core.errors import ForgeError
        from vllm_forge.gpu.archs import parse_arch_list

        try:
            codes = arch_codes(parse_arch_list(arch_list))
        except ForgeError:
            codes = None
    targets = {}
    for name in sorted(set(counts) | set(times)):
        timed = times.get(name)
        targets[name] = TargetRecord(max(counts.get(name, 0), timed.objects if timed else 0),
                                     timed.objects if timed else 0, timed.cpu_seconds if timed else 0.0,
                                     timed.longest_seconds if timed else 0.0)
    return BuildProfile(f"from this tree's own {shown}.ninja_log", codes, 0.0, targets, this_machine=True)


# --- the estimate -------------------------------------------------------------------------------------------


def estimate(profile: BuildProfile, *, codes: int, cores: int, jobs: int, nvcc_threads: int,
             targets: Iterable[str] = (), left_only: bool = False) -> Estimate:
    """Wall time of the build (or, ``left_only``, of what the record has not compiled yet) for ``targets``
    (empty: all) with ``codes`` arch codes per object, on ``cores`` cores with ``jobs`` x ``nvcc_threads``."""
    wanted = list(targets) or list(profile.targets)
    unknown = [name for name in wanted if name not in profile.targets]
    built = {name: profile.targets[name] for name in wanted if name in profile.targets}
    untimed = {name: r.objects - r.recorded for name, r in built.items() if r.objects > r.recorded}
    cpu = longest = 0.0
    objects = 0
    if not left_only:  # a resume's record timed exactly what is done: nothing left is timed
        cpu = sum(r.cpu_seconds for r in built.values())
        objects = sum(r.recorded for r in built.values())
        longest = max((r.longest_seconds for r in built.values()), default=0.0)
    recorded_codes = profile.arch_codes or codes
    scale = codes / recorded_codes
    threads = max(1, min(nvcc_threads, codes))
    parallel = max(1, min(cores, jobs * threads))
    cpu *= scale
    longest = longest * scale / threads
    configure = profile.configure_seconds
    wall = max(cpu / parallel, longest) + configure if objects else configure
    if_mean, mean = _if_mean(built, untimed, scale)
    if if_mean is not None:
        if_mean = max((cpu + if_mean) / parallel, longest, mean * scale / threads) + configure
    parts = [profile.label]
    recorded, total = sum(r.recorded for r in built.values()), sum(r.objects for r in built.values())
    parts.append(f"{recorded} of {total} objects of {'the targets built' if targets else 'every target'} timed"
                 f"{' on this machine' if profile.this_machine else ''}")
    if untimed:
        most_first = sorted(untimed.items(), key=lambda item: (-item[1], item[0]))
        parts.append("not timed: " + ", ".join(
            f"{name} ({f'all {count}' if count == built[name].objects else f'{count} of {built[name].objects}'})"
            for name, count in most_first))
        if left_only:
            parts.append("this record times only what an earlier build finished")
    if unknown:
        parts.append(f"{', '.join(unknown)} not in the record: not counted")
    if left_only and not untimed:
        parts.append("nothing left to compile")
    if not objects:
        return Estimate(profile.configure_seconds, 0.0, 0, "; ".join(parts), left=left_only,
                        untimed=sum(untimed.values()), if_mean_seconds=if_mean, mean_seconds=mean * scale)
    parts.append(f"{cpu:,.0f} CPU-seconds for the {objects} timed objects" if untimed else
                 f"{cpu:,.0f} CPU-seconds for {objects} objects")
    if profile.arch_codes is None:
        parts.append(f"arch codes per object taken to be this build's {codes} (the record's were not kept)")
    else:
        parts.append(f"CPU-seconds x {scale:g} for {codes} arch code(s) per object (the record: {recorded_codes})")
    rule = f"wall = max(CPU-seconds / {parallel} parallel compiles, the longest unit {longest:.0f} s)"
    if configure:
        rule += f" + {configure:.0f} s of CMake configure"
    parts.append(rule)
    parts.append("this machine's per-core speed as it was then" if profile.this_machine else
                 "the same per-core speed as the recording host")
    if untimed:
        parts.append("a lower bound: an untimed unit may take longer than any timed one")
    return Estimate(wall, cpu, objects, "; ".join(parts), left=left_only, untimed=sum(untimed.values()),
                    if_mean_seconds=if_mean, mean_seconds=mean * scale)


def _if_mean(built: dict[str, TargetRecord], untimed: dict[str, int], scale: float) -> tuple[float | None, float]:
    """The CPU-seconds the untimed objects would take at their target's mean timed object (all targets' mean
    where the target has none), scaled to this build's arch codes, and the mean used (the largest of them); None
    when nothing is untimed or nothing was timed."""
    recorded = sum(r.recorded for r in built.values())
    if not untimed or not recorded:
        return None, 0.0
    overall = sum(r.cpu_seconds for r in built.values()) / recorded
    means = {name: built[name].cpu_seconds / built[name].recorded if built[name].recorded else overall
             for name in untimed}
    return sum(count * means[name] for name, count in untimed.items()) * scale, max(means.values())


def estimate_note(tree, settings: dict, *, archs: list, cores: int, jobs: int, nvcc_threads: int,
                  targets: Iterable[str] = (), earlier: EarlierBuild | None = None) -> str:
    """The plan's line: an estimate for this build (``settings``: cmake_build_dir.compile_settings) and where
    it comes from, or why there is none. ``earlier``: the CMake build dir an earlier build left in the tree
    (cmake_build_dir.earlier_build)."""
    codes = arch_codes(archs)
    if earlier is not None and earlier.objects:
        own = profile_from_build_dir(earlier.build_dir, earlier.shown, (earlier.settings or {}).get("archs"))
        if own is not None:
            resumed = not earlier.changed(settings)
            found = estimate(own, codes=codes, cores=cores, jobs=jobs, nvcc_threads=nvcc_threads, targets=targets,
                             left_only=resumed)
            return found.note(jobs)
    if tree.kind != "vllm":
        return f"estimate: none ({tree.kind} is not vLLM and has no recorded build yet; this build records one)"
    profile = shipped_profile(tree.version)
    if profile is None:
        recorded = ", ".join(shipped_versions()) or "none"
        return (f"estimate: none (no recorded build of vLLM {tree.version or '(unknown version)'}: recorded are "
                f"{recorded}; this build's .ninja_log will be one for the next build of this tree)")
    return estimate(profile, codes=codes, cores=cores, jobs=jobs, nvcc_threads=nvcc_threads, targets=targets).note(jobs)


def main(argv=None) -> int:
    """Print a profile for vllm_forge/build/build_profiles/vllm-X.json from a recorded build
    (``python -m vllm_forge.build.build_estimate --help``, from the repository's root)."""
    import argparse

    parser = argparse.ArgumentParser(description="Derive a build-time profile from a recorded vLLM build.")
    parser.add_argument("--ninja-log", type=Path, required=True, help="the build dir's .ninja_log")
    parser.add_argument("--objects-per-target", type=Path, required=True,
                        help="`uniq -c` counts of CMakeFiles/<target>.dir in that build's build.ninja")
    parser.add_argument("--vllm", required=True, help="the vLLM version built, e.g. 0.26.0")
    parser.add_argument("--host", required=True, help="the machine, e.g. '16-core H100 host'")
    parser.add_argument("--cores", type=int, required=True, help="its cores")
    parser.add_argument("--jobs", type=int, required=True, help="the MAX_JOBS it built with")
    parser.add_argument("--nvcc-threads", type=int, required=True, help="the NVCC_THREADS it built with")
    parser.add_argument("--arch", required=True, help="the TORCH_CUDA_ARCH_LIST it built, e.g. 9.0")
    parser.add_argument("--date", required=True, help="when, e.g. 2026-12")
    parser.add_argument("--configure-seconds", type=float, required=True, help="CMake's 'Configuring done' time")
    parser.add_argument("--note", default="", help="anything else a reader should know about the record")
    args = parser.parse_args(argv)
    from vllm_forge.gpu.archs import parse_arch_list

    archs = parse_arch_list(args.arch)
    source = {"vllm": args.vllm, "host": args.host, "cores": args.cores, "max_jobs": args.jobs,
              "nvcc_threads": args.nvcc_threads, "archs": [a.sm for a in archs], "arch_codes": arch_codes(archs),
              "date": args.date, "configure_seconds": args.configure_seconds, "note": args.note}
    print(json.dumps(derive_profile(args.ninja_log.read_text(), args.objects_per_target.read_text(), source),
                     indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    from vllm_forge.core.errors import run_main

    sys.exit(run_main(main))
