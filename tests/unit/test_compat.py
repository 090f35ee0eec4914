from scripts import compat


def test_blackwell_first_appears_in_128():
    assert compat.min_cuda_for("sm_120") == "12.8"
    assert compat.min_cuda_for("sm_100") == "12.8"
    assert "sm_120" not in compat.CUDA_ARCHS["12.6"]


def test_129_adds_sm103_sm121_and_family_targets():
    assert compat.min_cuda_for("sm_103") == "12.9"
    assert compat.min_cuda_for("sm_121") == "12.9"
    assert compat.min_cuda_for("sm_100f") == "12.9"


def test_130_drops_pre_turing_and_renames_thor():
    cuda13 = compat.CUDA_ARCHS["13.0"]
    assert not {"sm_50", "sm_60", "sm_70", "sm_72"} & cuda13
    assert "sm_75" in cuda13
    assert "sm_101" not in cuda13 and "sm_110" in cuda13
    assert compat.max_cuda_for("sm_70") == "12.9"


def test_every_default_arch_list_compiles_with_its_cuda():
    from scripts.archs import check_archs_for_cuda, parse_arch_list

    for cuda, spec in compat.DEFAULT_ARCH_LIST.items():
        check_archs_for_cuda(parse_arch_list(spec), cuda)


def test_gpu_names_normalise():
    assert compat.lookup_gpu("NVIDIA GeForce RTX 5090 D").capability == "12.0"
    assert compat.lookup_gpu("rtx-4090").capability == "8.9"
    assert compat.lookup_gpu("H200").capability == "9.0"
    assert compat.lookup_gpu("DGX Spark").capability == "12.1"
    assert compat.lookup_gpu("no such gpu") is None


def test_every_gpu_arch_is_buildable_by_some_cuda():
    from scripts.archs import parse_arch_token

    for model in compat.GPU_MODELS.values():
        sm = parse_arch_token(model.capability).sm
        assert compat.min_cuda_for(sm), model


def test_ngc_defaults_follow_the_field_report():
    assert compat.default_ngc_tag("12.8").image == "nvcr.io/nvidia/pytorch:25.02-py3"
    assert compat.default_ngc_tag("13.0").cuda.startswith("13.0")
    for cuda in compat.known_cudas():
        tag = compat.default_ngc_tag(cuda)
        assert tag is None or compat.cuda_minor(tag.cuda) == cuda


def test_every_cuda_has_a_driver_minimum():
    assert set(compat.MIN_DRIVER) == set(compat.CUDA_ARCHS)
    assert compat.MIN_DRIVER["13.0"].full.startswith("580")
