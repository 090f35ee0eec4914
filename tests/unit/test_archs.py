import pytest

from scripts.archs import (
    CudaArch,
    check_archs_for_cuda,
    fa_cmake_gpu_arches,
    parse_arch_list,
    parse_arch_token,
    resolve_arch,
    torch_cuda_arch_list,
)
from scripts.errors import ForgeError


def no_gpu():
    raise AssertionError("auto detection must not run for this spec")


@pytest.mark.parametrize(
    "spec, sms",
    [
        ("12.0", ["sm_120"]),
        ("sm_120", ["sm_120"]),
        ("120", ["sm_120"]),
        ("12.0+PTX", ["sm_120"]),
        ("9.0a", ["sm_90a"]),
        ("sm_100f", ["sm_100f"]),
        ("rtx5090", ["sm_120"]),
        ("RTX 5090 D", ["sm_120"]),
        ("NVIDIA GeForce RTX 5090 D", ["sm_120"]),
        ("h100", ["sm_90"]),
        ("dgx spark", ["sm_121"]),
        ("B300", ["sm_103"]),
        ("8.0;8.6,8.9 9.0", ["sm_80", "sm_86", "sm_89", "sm_90"]),
        ("RTX 5090 D, h100; 8.0", ["sm_80", "sm_90", "sm_120"]),
        ("12.0 12.0 sm_120", ["sm_120"]),
    ],
)
def test_parse_arch_list_accepts_every_spelling(spec, sms):
    assert [a.sm for a in parse_arch_list(spec, detect=no_gpu)] == sms


def test_ptx_and_variants_reach_both_variables():
    archs = parse_arch_list("9.0a;12.0+PTX", detect=no_gpu)
    assert torch_cuda_arch_list(archs) == "9.0a;12.0+PTX"
    assert fa_cmake_gpu_arches(archs) == "90a-real;120-real;120-virtual"


def test_compute_token_is_ptx_only():
    arch = parse_arch_token("compute_80")
    assert arch == CudaArch(8, 0, "", ptx=True, sass=False)
    assert arch.cmake_tokens == ["80-virtual"]


def test_sass_and_ptx_requests_for_one_arch_merge():
    (arch,) = parse_arch_list("12.0 12.0+PTX", detect=no_gpu)
    assert arch.ptx and arch.sass


@pytest.mark.parametrize("spec", ["foo", "rtx9999", "12", "1.0", "sm_12x", ""])
def test_unknown_words_are_refused_with_a_fix(spec):
    with pytest.raises(ForgeError) as err:
        parse_arch_list(spec, detect=no_gpu)
    assert "Fix:" in str(err.value)


def test_auto_uses_detected_gpus():
    detected = [CudaArch(9, 0), CudaArch(12, 0)]
    assert parse_arch_list("auto", detect=lambda: detected) == detected


def test_auto_without_gpu_is_a_clear_error(monkeypatch):
    from scripts import archs

    monkeypatch.setattr(archs.shutil, "which", lambda name: None)
    monkeypatch.setattr(archs, "_nvml_capabilities", lambda: [])
    with pytest.raises(ForgeError, match="found no NVIDIA GPU"):
        archs.detect_local_archs()


def test_auto_reads_nvidia_smi(monkeypatch):
    from scripts import archs

    class Result:
        returncode = 0
        stdout = "9.0\n9.0\n12.0\n"

    monkeypatch.setattr(archs.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert [a.sm for a in archs.detect_local_archs(runner=lambda *a, **k: Result())] == ["sm_90", "sm_120"]


def test_sm120_on_cuda_126_names_the_minimum_cuda():
    with pytest.raises(ForgeError) as err:
        resolve_arch("12.0", "12.6", detect=no_gpu)
    message = str(err.value)
    assert "12.8" in message and "sm_120" in message and "Fix:" in message


def test_volta_on_cuda_13_names_the_last_cuda():
    with pytest.raises(ForgeError, match="last CUDA that can is 12.9"):
        check_archs_for_cuda(parse_arch_list("7.0", detect=no_gpu), "13.0")


def test_thor_rename_sm101_to_sm110():
    check_archs_for_cuda(parse_arch_list("10.1", detect=no_gpu), "12.9")
    with pytest.raises(ForgeError):
        check_archs_for_cuda(parse_arch_list("10.1", detect=no_gpu), "13.0")
    check_archs_for_cuda(parse_arch_list("11.0", detect=no_gpu), "13.0")


def test_unknown_cuda_lists_known_ones():
    with pytest.raises(ForgeError, match="12.8"):
        resolve_arch("9.0", "11.2", detect=no_gpu)
