import io

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu import parallelism
from vllm_forge.gpu.parallelism import choose_parallelism


def test_bound_by_cores_on_a_big_machine():
    p = choose_parallelism(cores=16, avail_gb=256, n_archs=1)
    assert (p.max_jobs, p.nvcc_threads) == (16, 1) and "bound by cores" in p.reason


def test_bound_by_memory_on_a_small_machine():
    p = choose_parallelism(cores=64, avail_gb=32, n_archs=1, mem_per_job_gb=4)
    assert p.max_jobs == 8 and "bound by memory" in p.reason


def test_multi_arch_uses_nvcc_threads_and_fewer_jobs():
    p = choose_parallelism(cores=32, avail_gb=64, n_archs=7, mem_per_job_gb=4)
    assert p.nvcc_threads == 2 and p.max_jobs == 8


def test_explicit_jobs_that_cannot_fit_are_refused():
    with pytest.raises(ForgeError) as err:
        choose_parallelism(max_jobs=64, cores=64, avail_gb=23, mem_per_job_gb=4)
    assert "--max-jobs 5" in str(err.value)


def test_explicit_jobs_that_fit_are_kept():
    assert choose_parallelism(max_jobs=3, avail_gb=23, mem_per_job_gb=4).max_jobs == 3


def test_no_memory_at_all_is_refused():
    with pytest.raises(ForgeError):
        choose_parallelism(cores=4, avail_gb=1, mem_per_job_gb=4)


# ---- boundaries: the exact value where each rule changes its answer ---------------------------------


@pytest.mark.parametrize("cores, threads", [(7, 1), (8, 2), (9, 2)])
def test_two_nvcc_threads_from_eight_cores(cores, threads):
    """Several archs get a second nvcc thread only on 8 cores or more."""
    p = choose_parallelism(cores=cores, avail_gb=1024, n_archs=3)
    assert p.nvcc_threads == threads and f"(3 arch(s), at most {threads} on {cores} cores)" in p.reason


def test_one_arch_never_gets_a_second_thread():
    assert choose_parallelism(cores=64, avail_gb=1024, n_archs=1).nvcc_threads == 1


def test_jobs_are_cores_over_threads():
    p = choose_parallelism(cores=9, avail_gb=1024, n_archs=2)
    assert (p.max_jobs, p.nvcc_threads) == (4, 2)


def test_memory_exactly_enough_for_every_core_is_bound_by_cores():
    """fit == cores: memory does not limit, and the reason says cores."""
    p = choose_parallelism(cores=8, avail_gb=32, n_archs=1, mem_per_job_gb=4)
    assert p.max_jobs == 8 and "bound by cores" in p.reason
    p = choose_parallelism(cores=8, avail_gb=31.9, n_archs=1, mem_per_job_gb=4)
    assert p.max_jobs == 7 and "bound by memory" in p.reason


def test_memory_for_exactly_one_job_is_enough():
    assert choose_parallelism(cores=4, avail_gb=4, mem_per_job_gb=4).max_jobs == 1
    with pytest.raises(ForgeError, match="needs about 4 GiB"):
        choose_parallelism(cores=4, avail_gb=3.99, mem_per_job_gb=4)


def test_memory_per_job_counts_every_thread():
    # 2 threads x 4 GiB = 8 GiB a job: 20 GiB fits 2 jobs, not 5 (20 / 4) nor 10 (20 / (4 / 2)).
    p = choose_parallelism(cores=16, avail_gb=20, n_archs=2, mem_per_job_gb=4)
    assert (p.max_jobs, p.nvcc_threads) == (2, 2)


def test_explicit_jobs_needing_exactly_the_memory_available_are_kept():
    assert choose_parallelism(max_jobs=4, cores=4, avail_gb=16, mem_per_job_gb=4).max_jobs == 4
    with pytest.raises(ForgeError, match="--max-jobs 3 or lower"):
        choose_parallelism(max_jobs=4, cores=4, avail_gb=15.9, mem_per_job_gb=4)


def test_explicit_jobs_too_big_for_even_one_job_suggest_one():
    with pytest.raises(ForgeError, match="--max-jobs 1 or lower"):
        choose_parallelism(max_jobs=2, cores=4, avail_gb=2, mem_per_job_gb=4)


def test_explicit_jobs_and_threads_are_used_as_given():
    p = choose_parallelism(max_jobs=3, nvcc_threads=2, cores=64, avail_gb=1024, n_archs=7, mem_per_job_gb=4)
    assert (p.max_jobs, p.nvcc_threads) == (3, 2)
    assert p.reason == ("MAX_JOBS=3 as given, NVCC_THREADS=2: needs ~24 GiB "
                        "(3 job(s) x 2 thread(s) x 4 GiB) of the 1024.0 GiB available")


def test_explicit_threads_count_against_cores_and_memory():
    p = choose_parallelism(nvcc_threads=4, cores=8, avail_gb=1024, n_archs=1)
    assert (p.max_jobs, p.nvcc_threads) == (2, 4)
    assert "NVCC_THREADS=4 (as given)" in p.reason


def test_more_threads_than_cores_still_runs_one_job():
    assert choose_parallelism(nvcc_threads=4, cores=2, avail_gb=1024).max_jobs == 1


def test_reason_shows_the_arithmetic():
    p = choose_parallelism(cores=16, avail_gb=40, n_archs=3, mem_per_job_gb=4)
    assert p.reason == (
        "MAX_JOBS=5 = min(cores 16 / 2 nvcc thread(s) = 8, memory 40.0 GiB available / (4 GiB per job x 2) = 5): "
        "bound by memory; NVCC_THREADS=2 (3 arch(s), at most 2 on 16 cores). "
        "Override with --max-jobs/--nvcc-threads, or --mem-per-job-gb if your compiles need more or less memory")
    small = choose_parallelism(cores=4, avail_gb=1024, n_archs=3)
    assert "NVCC_THREADS=1 (3 arch(s), at most 1 on 4 cores)" in small.reason


def test_jobs_smaller_than_a_gib_are_fine():
    assert choose_parallelism(cores=4, avail_gb=1, mem_per_job_gb=0.5).max_jobs == 2


@pytest.mark.parametrize("mem", [0, -4])
def test_a_job_that_needs_no_memory_is_refused(mem):
    """Found by mutation testing: 0 divided by zero (ZeroDivisionError) instead of a user error."""
    with pytest.raises(ForgeError, match="mem-per-job-gb"):
        choose_parallelism(cores=4, avail_gb=16, mem_per_job_gb=mem)


# ---- this machine: cores and memory when not given --------------------------------------------------


def test_machine_values_are_read_when_not_given(monkeypatch):
    monkeypatch.setattr(parallelism, "cpu_count", lambda: 6)
    monkeypatch.setattr(parallelism, "available_memory_gb", lambda: 12.0)
    p = choose_parallelism(n_archs=1)
    assert p.max_jobs == 3 and "cores 6" in p.reason and "memory 12.0 GiB" in p.reason


def test_zero_available_memory_given_is_used_not_replaced(monkeypatch):
    monkeypatch.setattr(parallelism, "available_memory_gb", lambda: 1024.0)
    with pytest.raises(ForgeError, match="only 0.0 GiB"):
        choose_parallelism(cores=4, avail_gb=0)


def fake_meminfo(monkeypatch, text):
    def fake_open(path, *args, **kwargs):
        assert path == "/proc/meminfo"
        if text is None:
            raise FileNotFoundError(path)
        return io.StringIO(text)

    monkeypatch.setattr(parallelism, "open", fake_open, raising=False)


def test_available_memory_is_memavailable_in_gib(monkeypatch):
    fake_meminfo(monkeypatch, "MemTotal:       65536000 kB\nMemFree: 1 kB\nMemAvailable:    3145728 kB\n")
    assert parallelism.available_memory_gb() == 3.0


@pytest.mark.parametrize("text", [None, "MemTotal: 65536000 kB\n"], ids=["no /proc/meminfo", "old kernel"])
def test_unknown_memory_assumes_a_small_machine(monkeypatch, text):
    fake_meminfo(monkeypatch, text)
    assert parallelism.available_memory_gb() == 8.0


def test_cpu_count_is_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(parallelism.os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setattr(parallelism.os, "cpu_count", lambda: 64)
    assert parallelism.cpu_count() == 3


@pytest.mark.parametrize("count, expected", [(12, 12), (None, 1)])
def test_cpu_count_without_affinity(monkeypatch, count, expected):
    monkeypatch.delattr(parallelism.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(parallelism.os, "cpu_count", lambda: count)
    assert parallelism.cpu_count() == expected
