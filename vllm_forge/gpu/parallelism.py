"""MAX_JOBS and NVCC_THREADS sized to this machine, so a build does not die out of memory."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vllm_forge.core.errors import ForgeError


@dataclass(frozen=True)
class Parallelism:
    max_jobs: int
    nvcc_threads: int
    reason: str


def available_memory_gb() -> float:
    """MemAvailable from /proc/meminfo (what can be used without swapping), in GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return 8.0  # unknown: assume a small machine rather than a large one


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def choose_parallelism(
    *,
    max_jobs: int = 0,
    nvcc_threads: int = 0,
    n_archs: int = 1,
    mem_per_job_gb: float = 4.0,
    cores: int | None = None,
    avail_gb: float | None = None,
) -> Parallelism:
    """Jobs x threads bounded by cores and by memory (each nvcc thread of a job holds one arch's
    compile in memory); an explicit value that cannot fit in memory is refused, not trimmed."""
    if mem_per_job_gb <= 0:  # would divide by zero below
        raise ForgeError(f"--mem-per-job-gb must be positive, got {mem_per_job_gb:g}",
                         "pass the GiB one compile job needs, e.g. --mem-per-job-gb 4")
    cores = cores or cpu_count()
    avail_gb = available_memory_gb() if avail_gb is None else avail_gb
    threads = nvcc_threads or max(1, min(n_archs, 2 if cores >= 8 else 1))
    fit = int(avail_gb // (mem_per_job_gb * threads))
    if max_jobs:
        need = max_jobs * threads * mem_per_job_gb
        if need > avail_gb:
            raise ForgeError(
                f"MAX_JOBS={max_jobs} with NVCC_THREADS={threads} needs about {need:.0f} GiB "
                f"({mem_per_job_gb:g} GiB a job) but only {avail_gb:.1f} GiB is available",
                f"pass --max-jobs {max(1, fit)} or lower (or --mem-per-job-gb if your build needs less)",
            )
        return Parallelism(max_jobs, threads, (
            f"MAX_JOBS={max_jobs} as given, NVCC_THREADS={threads}: needs ~{need:.0f} GiB "
            f"({max_jobs} job(s) x {threads} thread(s) x {mem_per_job_gb:g} GiB) of the {avail_gb:.1f} GiB available"
        ))
    if fit < 1:
        raise ForgeError(
            f"one compile job needs about {mem_per_job_gb * threads:g} GiB but only {avail_gb:.1f} GiB is available",
            "free memory, lower --nvcc-threads, or lower --mem-per-job-gb if your build needs less",
        )
    by_cores = cores // threads or 1
    jobs = max(1, min(by_cores, fit))
    limiter = "memory" if fit < by_cores else "cores"
    how_threads = "as given" if nvcc_threads else (
        f"{n_archs} arch(s), at most {2 if cores >= 8 else 1} on {cores} cores")
    reason = (
        f"MAX_JOBS={jobs} = min(cores {cores} / {threads} nvcc thread(s) = {by_cores}, "
        f"memory {avail_gb:.1f} GiB available / ({mem_per_job_gb:g} GiB per job x {threads}) = {fit}): "
        f"bound by {limiter}; NVCC_THREADS={threads} ({how_threads}). "
        "Override with --max-jobs/--nvcc-threads, or --mem-per-job-gb if your compiles need more or less memory"
    )
    return Parallelism(jobs, threads, reason)
