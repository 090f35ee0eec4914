import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu import compat
from vllm_forge.gpu.cuda_release import CudaRelease
from vllm_forge.nccl.nccl_logs import nccl_floor


def test_blackwell_first_appears_in_128():
    assert str(compat.min_cuda_for("sm_120")) == "12.8"
    assert str(compat.min_cuda_for("sm_100")) == "12.8"
    assert "sm_120" not in compat.CUDA_ARCHS["12.6"]


def test_129_adds_sm103_sm121_and_family_targets():
    assert str(compat.min_cuda_for("sm_103")) == "12.9"
    assert str(compat.min_cuda_for("sm_121")) == "12.9"
    assert str(compat.min_cuda_for("sm_100f")) == "12.9"


def test_130_drops_pre_turing_and_renames_thor():
    cuda13 = compat.CUDA_ARCHS["13.0"]
    assert not {"sm_50", "sm_60", "sm_70", "sm_72"} & cuda13
    assert "sm_75" in cuda13
    assert "sm_101" not in cuda13 and "sm_110" in cuda13
    assert str(compat.max_cuda_for("sm_70")) == "12.9"


def test_every_default_arch_list_compiles_with_its_cuda():
    """Each default list is in its CUDA's row, is accepted by the check, and the check is not a no-op."""
    from vllm_forge.gpu.archs import check_archs_for_cuda, parse_arch_list

    assert set(compat.DEFAULT_ARCH_LIST) == set(compat.CUDA_ARCHS)
    for cuda, spec in compat.DEFAULT_ARCH_LIST.items():
        archs = parse_arch_list(spec)
        assert archs and {a.sm for a in archs} <= compat.CUDA_ARCHS[cuda], cuda
        assert check_archs_for_cuda(archs, CudaRelease.parse(cuda)) is None
        beyond = [a for a in parse_arch_list("3.5 7.0 12.0") if a.sm not in compat.CUDA_ARCHS[cuda]]
        assert beyond, cuda
        with pytest.raises(ForgeError, match=beyond[0].sm):
            check_archs_for_cuda(archs + beyond, CudaRelease.parse(cuda))
    assert [a.sm for a in parse_arch_list(compat.DEFAULT_ARCH_LIST["12.8"])] == [
        "sm_70", "sm_75", "sm_80", "sm_89", "sm_90", "sm_100", "sm_120"]


def test_gpu_names_normalise():
    assert compat.lookup_gpu("NVIDIA GeForce RTX 5090 D").capability == "12.0"
    assert compat.lookup_gpu("rtx-4090").capability == "8.9"
    assert compat.lookup_gpu("H200").capability == "9.0"
    assert compat.lookup_gpu("DGX Spark").capability == "12.1"
    assert compat.lookup_gpu("no such gpu") is None


def test_every_gpu_arch_is_buildable_by_some_cuda():
    from vllm_forge.gpu.archs import parse_arch_token

    for model in compat.GPU_MODELS.values():
        sm = parse_arch_token(model.capability).sm
        assert compat.min_cuda_for(sm), model


def test_ngc_defaults_follow_the_field_report():
    assert compat.default_ngc_tag(CudaRelease.parse("12.8")).image == "nvcr.io/nvidia/pytorch:25.02-py3"
    assert str(compat.default_ngc_tag(CudaRelease.parse("13.0")).cuda).startswith("13.0")
    for cuda in compat.known_cudas():
        tag = compat.default_ngc_tag(cuda)
        assert tag is None or tag.cuda.same_minor(cuda)


def test_every_cuda_has_a_driver_minimum():
    assert set(compat.MIN_DRIVER) == set(compat.CUDA_ARCHS)
    assert compat.MIN_DRIVER["13.0"].full.startswith("580")


def test_a_release_keys_the_tables_by_its_minor():
    assert CudaRelease.parse("12.8.1").minor_str == "12.8"
    assert CudaRelease.parse(" 13.0.2 ").minor_str == "13.0"
    assert CudaRelease.parse("cu128") == CudaRelease(12, 8)
    assert CudaRelease(12, 8) < CudaRelease(12, 8, 0) < CudaRelease(12, 8, 1) < CudaRelease(12, 9) < CudaRelease(13, 0)
    with pytest.raises(ForgeError):
        CudaRelease.parse("twelve")


def test_known_cudas_in_numeric_order():
    assert [str(c) for c in compat.known_cudas()] == ["11.8", "12.1", "12.4", "12.6", "12.8", "12.9", "13.0"]


def test_ngc_tags_of_one_cuda_minor():
    assert [t.tag for t in compat.ngc_tags_for(CudaRelease.parse("12.8.1"))] == ["25.01-py3", "25.02-py3", "25.03-py3"]
    assert compat.ngc_tags_for(CudaRelease.parse("11.8")) == []


def test_default_ngc_tag_is_the_pinned_one_else_the_newest():
    assert compat.default_ngc_tag(CudaRelease.parse("12.8.0")).tag == "25.02-py3"
    assert compat.default_ngc_tag(CudaRelease.parse("12.9")).tag == "25.06-py3"
    assert compat.default_ngc_tag(CudaRelease.parse("13.0")).tag == "25.10-py3"
    assert compat.default_ngc_tag(CudaRelease.parse("12.1")) is None


def test_oldest_and_newest_cuda_per_arch():
    assert (str(compat.min_cuda_for("sm_90a")), str(compat.max_cuda_for("sm_90a"))) == ("12.1", "13.0")
    assert (str(compat.min_cuda_for("sm_35")), str(compat.max_cuda_for("sm_35"))) == ("11.8", "11.8")
    assert (str(compat.min_cuda_for("sm_101")), str(compat.max_cuda_for("sm_101"))) == ("12.8", "12.9")
    assert str(compat.max_cuda_for("sm_120")) == "13.0" and str(compat.min_cuda_for("sm_110")) == "13.0"
    assert compat.min_cuda_for("sm_99") is None and compat.max_cuda_for("sm_99") is None


@pytest.mark.parametrize("name, key", [
    ("NVIDIA GeForce RTX 5090", "rtx5090"),
    ("Tesla T4", "t4"),
    ("NVIDIA H100 80GB HBM3", "h10080gbhbm3"),
    ("RTX-PRO 6000 Blackwell", "rtxpro6000blackwell"),
])
def test_normalize_gpu_name(name, key):
    assert compat.normalize_gpu_name(name) == key


@pytest.mark.parametrize("cap, version", [
    ("12.0", "2.26.2"), ("12.1", "2.26.2"), ("12.0.1", "2.26.2"), ("10.0", "2.25.1"), ("10.3", "2.25.1"),
    ("11.0", "2.27.5"), ("9.0", "2.15.1"), ("8.0", "2.7.3"), ("8.6", "2.7.3"), ("8.9", "2.7.3"),
    ("7.5", "2.4.8"), ("7.0", "2.4.8"),
])
def test_nccl_minimum_is_the_highest_row_of_the_same_major_not_above(cap, version):
    assert nccl_floor(cap)[0] == version


@pytest.mark.parametrize("cap", ["6.0", "13.0", "12", "twelve", "", "x.0"])
def test_nccl_minimum_unknown_for_other_generations_and_bad_input(cap):
    assert nccl_floor(cap) is None


def test_nccl_minimum_picks_the_closest_row_below(monkeypatch):
    monkeypatch.setitem(compat.NCCL_MIN_FOR_ARCH, "8.6", ("2.9.9", "a later row of the same major"))
    monkeypatch.setitem(compat.NCCL_MIN_FOR_ARCH, "8.9", ("2.10.0", "the highest row"))
    assert nccl_floor("8.7")[0] == "2.9.9"
    assert nccl_floor("8.9")[0] == "2.10.0"
    assert nccl_floor("8.0")[0] == "2.7.3"
    monkeypatch.delitem(compat.NCCL_MIN_FOR_ARCH, "8.0")
    assert nccl_floor("8.0") is None


def test_known_cudas_sort_as_numbers_not_text(monkeypatch):
    monkeypatch.setitem(compat.CUDA_ARCHS, "12.10", frozenset({"sm_120"}))
    assert [str(c) for c in compat.known_cudas()[-3:]] == ["12.9", "12.10", "13.0"]
    assert str(compat.min_cuda_for("sm_120")) == "12.8" and str(compat.max_cuda_for("sm_120")) == "13.0"


@pytest.mark.parametrize("name", ["a10g", "A10G", "NVIDIA A10G"])
def test_a10g_is_a_gpu_name(name):
    """AWS g5's GPU, as nvidia-smi and users write it."""
    from vllm_forge.gpu.archs import parse_arch_list

    assert compat.lookup_gpu(name).capability == "8.6"
    assert [a.sm for a in parse_arch_list(name)] == ["sm_86"]
