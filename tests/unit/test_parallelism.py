import pytest

from scripts.errors import ForgeError
from scripts.parallelism import choose_parallelism


def test_bound_by_cores_on_a_big_machine():
    p = choose_parallelism(cores=16, avail_gb=256, n_archs=1)
    assert (p.max_jobs, p.nvcc_threads) == (16, 1) and "cores" in p.reason


def test_bound_by_memory_on_a_small_machine():
    p = choose_parallelism(cores=64, avail_gb=32, n_archs=1, mem_per_job_gb=4)
    assert p.max_jobs == 8 and "memory" in p.reason


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
