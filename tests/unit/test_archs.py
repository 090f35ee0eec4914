import json
import sys

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu.archs import (
    CudaArch,
    check_archs_for_cuda,
    fa_cmake_gpu_arches,
    parse_arch_list,
    parse_arch_token,
    resolve_arch,
    torch_cuda_arch_list,
)
from vllm_forge.gpu.cuda_release import CudaRelease


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
    from vllm_forge.gpu import archs

    monkeypatch.setattr(archs.shutil, "which", lambda name: None)
    monkeypatch.setattr(archs, "_nvml_capabilities", lambda: [])
    with pytest.raises(ForgeError, match="found no NVIDIA GPU"):
        archs.detect_local_archs()


def test_auto_reads_nvidia_smi(monkeypatch):
    from vllm_forge.gpu import archs

    class Result:
        returncode = 0
        stdout = "9.0\n9.0\n12.0\n"

    monkeypatch.setattr(archs.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert [a.sm for a in archs.detect_local_archs(runner=lambda *a, **k: Result())] == ["sm_90", "sm_120"]


def test_sm120_on_cuda_126_names_the_minimum_cuda():
    with pytest.raises(ForgeError) as err:
        resolve_arch("12.0", CudaRelease.parse("12.6"), detect=no_gpu)
    message = str(err.value)
    assert "12.8" in message and "sm_120" in message and "Fix:" in message


def test_volta_on_cuda_13_names_the_last_cuda():
    with pytest.raises(ForgeError, match="last CUDA that can is 12.9"):
        check_archs_for_cuda(parse_arch_list("7.0", detect=no_gpu), CudaRelease.parse("13.0"))


def test_thor_rename_sm101_to_sm110():
    check_archs_for_cuda(parse_arch_list("10.1", detect=no_gpu), CudaRelease.parse("12.9"))
    with pytest.raises(ForgeError):
        check_archs_for_cuda(parse_arch_list("10.1", detect=no_gpu), CudaRelease.parse("13.0"))
    check_archs_for_cuda(parse_arch_list("11.0", detect=no_gpu), CudaRelease.parse("13.0"))


def test_unknown_cuda_lists_known_ones():
    with pytest.raises(ForgeError, match="12.8"):
        resolve_arch("9.0", CudaRelease.parse("11.2"), detect=no_gpu)


# ---- every spelling, down to the flags it sets -------------------------------------------------------


@pytest.mark.parametrize("token, arch", [
    ("12.0", CudaArch(12, 0)),
    ("12.0+PTX", CudaArch(12, 0, ptx=True)),
    ("12.0+ptx", CudaArch(12, 0, ptx=True)),
    ("9.0a", CudaArch(9, 0, "a")),
    ("9.0A", CudaArch(9, 0, "a")),
    ("10.0f+PTX", CudaArch(10, 0, "f", ptx=True)),
    ("sm_120", CudaArch(12, 0)),
    ("SM_90A", CudaArch(9, 0, "a")),
    ("sm_100f", CudaArch(10, 0, "f")),
    ("sm_120+PTX", CudaArch(12, 0, ptx=True)),
    ("sm_75", CudaArch(7, 5)),
    ("compute_120", CudaArch(12, 0, ptx=True, sass=False)),
    ("compute_90a", CudaArch(9, 0, "a", ptx=True, sass=False)),
    ("COMPUTE_100F", CudaArch(10, 0, "f", ptx=True, sass=False)),
    ("120", CudaArch(12, 0)),
    ("90a", CudaArch(9, 0, "a")),
    ("120-real", CudaArch(12, 0)),
    ("120-virtual", CudaArch(12, 0, ptx=True, sass=False)),
    ("90a-virtual", CudaArch(9, 0, "a", ptx=True, sass=False)),
    ("120-VIRTUAL", CudaArch(12, 0, ptx=True, sass=False)),
    ("120+PTX", CudaArch(12, 0, ptx=True)),
    (" 8.6 ", CudaArch(8, 6)),
    ("3.0", CudaArch(3, 0)),
    ("sm_30", CudaArch(3, 0)),
])
def test_parse_arch_token_sets_variant_ptx_and_sass(token, arch):
    assert parse_arch_token(token) == arch


@pytest.mark.parametrize("token", ["2.1", "sm_21", "20", "12", "1234", "12.0b", "sm_120-real", "abc", "12.0+PTX+PTX"])
def test_parse_arch_token_refuses_what_is_not_an_arch(token):
    assert parse_arch_token(token) is None


def test_compute_variant_stays_ptx_only_in_both_variables():
    """compute_90a is PTX of 9.0a alone: not 9.0+PTX, not SASS."""
    archs = parse_arch_list("compute_90a", detect=no_gpu)
    assert archs == [CudaArch(9, 0, "a", ptx=True, sass=False)]
    assert torch_cuda_arch_list(archs) == "9.0a+PTX"
    assert fa_cmake_gpu_arches(archs) == "90a-virtual"
    assert archs[0].sm == "sm_90a" and archs[0].compute == "compute_90a" and archs[0].capability == "9.0"


@pytest.mark.parametrize("spec", ["12.0;compute_120", "compute_120;12.0", "120-virtual 120-real"])
def test_sass_and_ptx_only_requests_merge_to_both(spec):
    """A PTX-only request never drops the SASS another entry asked for, in either order."""
    archs = parse_arch_list(spec, detect=no_gpu)
    assert archs == [CudaArch(12, 0, ptx=True, sass=True)]
    assert fa_cmake_gpu_arches(archs) == "120-real;120-virtual"
    assert torch_cuda_arch_list(archs) == "12.0+PTX"


def test_variants_are_separate_archs_in_order():
    archs = parse_arch_list("12.0 9.0a 9.0 sm_100f 8.0+PTX", detect=no_gpu)
    assert [a.torch_token for a in archs] == ["8.0+PTX", "9.0", "9.0a", "10.0f", "12.0"]
    assert fa_cmake_gpu_arches(archs) == "80-real;80-virtual;90-real;90a-real;100f-real;120-real"


def test_merging_keeps_the_variant():
    assert parse_arch_list("9.0a 9.0a+PTX", detect=no_gpu) == [CudaArch(9, 0, "a", ptx=True)]
    assert parse_arch_list("compute_100f sm_100f", detect=no_gpu) == [CudaArch(10, 0, "f", ptx=True)]


def test_repeated_sass_keeps_no_ptx():
    assert parse_arch_list("sm_120 12.0", detect=no_gpu) == [CudaArch(12, 0)]


def test_ptx_only_twice_stays_ptx_only():
    assert parse_arch_list("compute_80 80-virtual", detect=no_gpu) == [CudaArch(8, 0, ptx=True, sass=False)]


# ---- GPU names, auto, separators ----------------------------------------------------------------------


def test_auto_is_a_word_among_others():
    detected = [CudaArch(12, 0)]
    assert parse_arch_list("auto;8.0", detect=lambda: detected) == [CudaArch(8, 0), CudaArch(12, 0)]
    assert parse_arch_list("8.0 AUTO", detect=lambda: detected) == [CudaArch(8, 0), CudaArch(12, 0)]


def test_an_arch_spelling_is_never_read_as_a_gpu_name(monkeypatch):
    from vllm_forge.gpu import compat

    monkeypatch.setitem(compat.GPU_MODELS, "90", compat.GpuModel("A GPU called 90", "8.0"))
    assert compat.lookup_gpu("90").capability == "8.0"
    assert parse_arch_list("90", detect=no_gpu) == [CudaArch(9, 0)]


def test_longest_gpu_name_wins():
    # "RTX 5090 D" is a GPU, then "8.0" an arch; "rtx 4090" then "d"? no: "RTX 4090 D" is one name.
    assert parse_arch_list("RTX 4090 D 8.0", detect=no_gpu) == [CudaArch(8, 0), CudaArch(8, 9)]
    assert [a.sm for a in parse_arch_list("rtx 3090 ti rtx 5090", detect=no_gpu)] == ["sm_86", "sm_120"]


@pytest.mark.parametrize("spec", [None, "", "   ", ";", " , ;"])
def test_empty_specs_are_refused(spec):
    """Found by mutation testing: ";" used to resolve to no arch at all (an empty TORCH_CUDA_ARCH_LIST)."""
    with pytest.raises(ForgeError, match="no GPU arch was given"):
        parse_arch_list(spec, detect=no_gpu)


def test_the_unknown_word_is_named():
    with pytest.raises(ForgeError, match="'rtx9999' is neither"):
        parse_arch_list("12.0 rtx9999", detect=no_gpu)


# ---- detection ------------------------------------------------------------------------------------------


class SmiResult:
    def __init__(self, returncode=0, stdout=""):
        self.returncode, self.stdout = returncode, stdout


def test_nvidia_smi_is_asked_for_compute_capabilities(monkeypatch):
    from vllm_forge.gpu import archs

    calls = []

    def runner(argv, **kwargs):
        calls.append((argv, kwargs))
        return SmiResult(0, "\n 12.0 \n\n8.6\n")

    monkeypatch.setattr(archs.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    monkeypatch.setattr(archs, "_nvml_capabilities", lambda: pytest.fail("NVML must not be asked"))
    assert archs.detect_local_archs(runner=runner) == [CudaArch(8, 6), CudaArch(12, 0)]
    (argv, kwargs), = calls
    assert argv == ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"]
    assert kwargs["capture_output"] and kwargs["text"] and kwargs["check"] is False and kwargs["timeout"] > 0


@pytest.mark.parametrize("outcome", ["fails", "raises", "prints nothing"])
def test_nvml_is_the_fallback_when_nvidia_smi_gives_nothing(monkeypatch, outcome):
    import subprocess

    from vllm_forge.gpu import archs

    def runner(argv, **kwargs):
        if outcome == "raises":
            raise subprocess.TimeoutExpired(argv, 20)
        return SmiResult(9, "9.0\n") if outcome == "fails" else SmiResult(0, "\n")

    monkeypatch.setattr(archs.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(archs, "_nvml_capabilities", lambda: ["10.0"])
    assert archs.detect_local_archs(runner=runner) == [CudaArch(10, 0)]


def test_nvidia_smi_missing_is_not_run(monkeypatch):
    from vllm_forge.gpu import archs

    monkeypatch.setattr(archs.shutil, "which", lambda name: None)
    monkeypatch.setattr(archs, "_nvml_capabilities", lambda: ["8.0", "bogus"])
    assert archs.detect_local_archs(runner=lambda *a, **k: pytest.fail("nvidia-smi is not there")) == [CudaArch(8, 0)]


class FakeNvml:
    def __init__(self, caps, init_error=None):
        self.caps, self.init_error, self.shut = caps, init_error, False

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error

    def nvmlDeviceGetCount(self):
        return len(self.caps)

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return self.caps[handle[1]]

    def nvmlShutdown(self):
        self.shut = True


def test_nvml_lists_every_device(monkeypatch):
    from vllm_forge.gpu import archs

    nvml = FakeNvml([(9, 0), (12, 0), (9, 0)])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert archs._nvml_capabilities() == ["9.0", "12.0", "9.0"]
    assert nvml.shut


def test_nvml_without_a_driver_or_module_is_no_gpu(monkeypatch):
    from vllm_forge.gpu import archs

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([(9, 0)], init_error=RuntimeError("NVML: driver not loaded")))
    assert archs._nvml_capabilities() == []
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert archs._nvml_capabilities() == []


# ---- which CUDA compiles what ----------------------------------------------------------------------------


def test_every_arch_of_a_list_is_checked_not_just_the_first():
    """8.0 compiles with 12.6 but 10.0 needs 12.8: the list is refused, naming sm_100."""
    with pytest.raises(ForgeError) as err:
        check_archs_for_cuda(parse_arch_list("8.0;10.0", detect=no_gpu), CudaRelease.parse("12.6"))
    assert str(err.value).startswith("CUDA 12.6 cannot compile sm_100 (needs CUDA 12.8 or newer)")


def test_arch_variants_need_their_own_cuda():
    check_archs_for_cuda(parse_arch_list("9.0a 12.0f", detect=no_gpu), CudaRelease.parse("12.9"))
    with pytest.raises(ForgeError, match="cannot compile sm_120f .needs CUDA 12.9"):
        check_archs_for_cuda(parse_arch_list("12.0f", detect=no_gpu), CudaRelease.parse("12.8"))
    with pytest.raises(ForgeError, match="cannot compile sm_90a .needs CUDA 12.1"):
        check_archs_for_cuda(parse_arch_list("9.0a", detect=no_gpu), CudaRelease.parse("11.8"))


def test_an_arch_no_cuda_knows_is_named_as_such():
    with pytest.raises(ForgeError, match="sm_99 is not an arch any known CUDA toolkit can compile"):
        check_archs_for_cuda([CudaArch(9, 9)], CudaRelease.parse("12.8"))


def test_patch_release_of_cuda_is_its_minor():
    check_archs_for_cuda(parse_arch_list("12.0", detect=no_gpu), CudaRelease.parse("12.8.1"))
    with pytest.raises(ForgeError, match="CUDA 12.6 cannot compile sm_120"):
        check_archs_for_cuda(parse_arch_list("12.0", detect=no_gpu), CudaRelease.parse("12.6.3"))


def test_arch_dropped_later_is_fine_on_its_last_cuda():
    check_archs_for_cuda(parse_arch_list("7.0 5.0", detect=no_gpu), CudaRelease.parse("12.9"))
    with pytest.raises(ForgeError, match="last CUDA that can is 11.8"):
        check_archs_for_cuda(parse_arch_list("3.5", detect=no_gpu), CudaRelease.parse("12.1"))


def test_unknown_cuda_names_itself():
    with pytest.raises(ForgeError) as err:
        check_archs_for_cuda([CudaArch(9, 0)], CudaRelease.parse("11.2"))
    assert str(err.value).startswith("CUDA 11.2 is not a version this tool knows")


def test_versions_compare_as_numbers():
    assert CudaRelease.parse("12.10") > CudaRelease.parse("12.9") and CudaRelease(13, 0) > CudaRelease(12, 9)


def test_resolve_arch_checks_only_when_cuda_is_given():
    assert resolve_arch("12.0", None, detect=no_gpu) == [CudaArch(12, 0)]
    assert resolve_arch("12.0", CudaRelease.parse("12.8"), detect=no_gpu) == [CudaArch(12, 0)]
    assert resolve_arch("auto", None, detect=lambda: [CudaArch(8, 9)]) == [CudaArch(8, 9)]


def test_main_prints_every_variable(capsys):
    from vllm_forge.gpu.archs import main

    assert main(["9.0a;rtx5090", "--cuda", "12.8"]) == 0
    assert capsys.readouterr().out == json.dumps({
        "sm": ["sm_90a", "sm_120"],
        "TORCH_CUDA_ARCH_LIST": "9.0a;12.0",
        "VLLM_FA_CMAKE_GPU_ARCHES": "90a-real;120-real",
    }, indent=2) + "\n"


def test_main_refuses_what_the_cuda_cannot_build():
    from vllm_forge.gpu.archs import main

    with pytest.raises(ForgeError, match="needs CUDA 12.8"):
        main(["12.0", "--cuda", "12.6"])
