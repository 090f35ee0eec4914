"""audit/audit.py's judgement, checked exactly: targets, a file's counts over its kernel groups, whose file it
is and the fix said for it, per-CUDA variants, optional extensions, and the report built from scanned files
(issue 22: the tests called these through whole audits and looked at one verdict, so a wrong count, owner
or fix went unseen).
"""

from __future__ import annotations

import pytest

from vllm_forge.audit import audit
from vllm_forge.audit.audit import (
    GATED,
    NATIVE,
    NO_DEVICE_CODE,
    NONE,
    PARTIAL,
    PTX_JIT,
    GroupCounts,
    Target,
    TorchArchs,
    _Scanned,
)
from vllm_forge.audit.fatbin import DeviceCode, DeviceImage, FatBinary
from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu.cuda_arch import CudaArch
from vllm_forge.gpu.cuda_release import CudaRelease

SM90 = Target("sm_90", 9, 0)
SM120 = Target("sm_120", 12, 0)


def image(arch: str) -> DeviceImage:
    kind = "ptx" if arch.startswith("compute_") else "sass"
    number = arch.split("_")[1]
    variant = number[-1] if number[-1] in "af" else ""
    return DeviceImage(kind, int(number.rstrip("af")), variant, "", 10, "1.8")


def group(*archs: str, kernels=None, offset: int = 0) -> FatBinary:
    return FatBinary(offset, [image(a) for a in archs], kernels)


def code(*groups: FatBinary) -> DeviceCode:
    out = DeviceCode()
    for g in groups:
        out.add(g)
    return out


# ---- targets ----------------------------------------------------------------------------------------------


def test_target_label_and_build_arch():
    assert (SM120.label, SM120.build_arch) == ("sm_120", "12.0")
    named = Target("sm_120", 12, 0, "RTX 5090", "rtx5090")
    assert (named.label, named.build_arch) == ("RTX 5090 (sm_120)", "rtx5090")
    assert Target("sm_90a", 9, 0).build_arch == "9.0a" and Target("sm_100f", 10, 0).build_arch == "10.0f"


def test_resolve_targets_splits_dedups_and_names_one_gpu_only():
    targets = audit.resolve_targets(["12.0, 9.0a", ";;", "sm_120", "RTX 5090"])
    assert [(t.name, t.major, t.minor, t.gpu, t.spec) for t in targets] == [
        ("sm_120", 12, 0, "", ""), ("sm_90a", 9, 0, "", "")]
    (gpu,) = audit.resolve_targets([" RTX 5090 "])
    assert (gpu.name, gpu.gpu, gpu.spec) == ("sm_120", "RTX 5090", "rtx5090")
    with pytest.raises(ForgeError) as info:
        audit.resolve_targets(["", " ; "])
    assert str(info.value) == ("no target GPU arch was given. Fix: pass --arch, e.g. --arch 12.0 or --arch rtx5090.")


def test_an_arch_no_gpu_has_is_refused_naming_the_nearest():
    with pytest.raises(ForgeError) as info:
        audit.resolve_targets(["13.0"])
    problem = info.value.problem
    assert problem.startswith("'13.0' (sm_130) is not the arch of any NVIDIA GPU this tool knows; the nearest known "
                              "are sm_12")
    from vllm_forge.gpu import compat
    from vllm_forge.gpu.cuda_arch import ComputeCapability

    near = ", ".join(f"{cc.sm} ({cc})" for cc in compat.nearest_capabilities(ComputeCapability(13, 0)))
    assert problem.endswith(near)


def test_parse_code_arch_and_sort():
    assert audit.parse_code_arch("sm_90a") == CudaArch(9, 0, "a")
    assert audit.parse_code_arch("compute_100f") == CudaArch(10, 0, "f", ptx=True, sass=False)
    assert audit.parse_code_arch("sm_120") == CudaArch(12, 0)
    assert audit.sort_archs(["compute_90", "sm_100", "sm_90", "sm_75", "sm_90a"]) == [
        "sm_75", "sm_90", "compute_90", "sm_90a", "sm_100"]


# ---- one file's groups ------------------------------------------------------------------------------------


def test_judge_counts_each_kind_of_group_and_the_deciding_archs():
    groups = [group("sm_90", "sm_120"), group("sm_80", "compute_80"), group("sm_90"), group(),
              group("sm_120", kernels=()), group("sm_90a", kernels=("_Z4wgmmav",))]
    verdict, counts, via = audit.judge(groups, SM120)
    assert verdict == PARTIAL and via == ["compute_80", "sm_120"]
    assert counts.to_dict() == {"count": 3, "native": 1, "ptx_jit": 1, "none": 1, "kernel_less": 1,
                                "arch_specific": 1, "arch_specific_archs": ["sm_90a"], "missing_kernels": []}


@pytest.mark.parametrize("groups, verdict", [
    ([group("sm_120")], NATIVE),
    ([group("sm_120"), group("compute_90")], PTX_JIT),
    ([group("sm_120"), group("sm_90")], PARTIAL),
    ([group("sm_90"), group("sm_80")], NONE),
    ([group("sm_90", kernels=())], NO_DEVICE_CODE),
    ([], NO_DEVICE_CODE),
    ([group()], NO_DEVICE_CODE),
])
def test_judge_is_the_worst_over_groups(groups, verdict):
    assert audit.judge(groups, SM120)[0] == verdict


def test_missing_kernels_are_the_first_twenty():
    groups = [group("sm_90", kernels=tuple(f"k{i}_{j}" for j in range(3))) for i in range(8)] + [group("sm_120")]
    _, counts, _ = audit.judge(groups, SM120)
    assert counts.none == 8 and counts.missing_kernels == [f"k{i}_{j}" for i in range(7) for j in range(3)][:20]
    _, unknown, _ = audit.judge([group("sm_90"), group("sm_120")], SM120)
    assert unknown.missing_kernels == []  # kernels not read: nothing to name


def test_a_file_of_only_arch_specific_groups_for_other_gpus_has_no_code_for_this_one():
    groups = [group("sm_90a", kernels=("_Z1av",)), group("sm_100f", "compute_100f", kernels=("_Z1bv",))]
    verdict, counts, via = audit.judge(groups, SM120)
    assert verdict == NONE and via == []
    assert counts.to_dict() == {"count": 2, "native": 0, "ptx_jit": 0, "none": 2, "kernel_less": 0,
                                "arch_specific": 0, "arch_specific_archs": [], "missing_kernels": ["_Z1av", "_Z1bv"]}
    many = [group("sm_90a", kernels=(f"k{i}",)) for i in range(25)]
    assert audit.judge(many, SM120)[1].missing_kernels == [f"k{i}" for i in range(20)]


def test_arch_specific_groups_beside_other_code_are_counted_apart():
    groups = [group("sm_120"), group("sm_90a"), group("sm_100f"), group("sm_90a", "sm_80")]
    verdict, counts, _ = audit.judge(groups, SM120)
    assert verdict == PARTIAL  # sm_90a + sm_80 is not arch-specific only: it has no code for sm_120
    assert (counts.count, counts.arch_specific, counts.arch_specific_archs) == (2, 2, ["sm_90a", "sm_100f"])
    verdict, counts, _ = audit.judge([group("sm_90a"), group("sm_90a", "compute_90a")], SM90)
    assert verdict == NATIVE and counts.arch_specific == 0 and counts.native == 2


# ---- whose file, and its fix ------------------------------------------------------------------------------


@pytest.mark.parametrize("path, member, package", [
    ("/usr/lib/python3/site-packages/torch/lib/x.so", True, "torch"),
    ("/usr/lib/python3/site-packages/x.so", True, ""),  # directly in site-packages: no package
    ("dist/flashinfer-0.2.whl/flashinfer/x.so", True, "flashinfer"),
    ("dist/a.whl/x.so", True, ""),
    ("xformers/_C.so", True, "xformers"),
    ("xformers/_C.so", False, ""),
    ("lib/libcudart.so.12", True, ""),
    ("lib64/libx.so", True, ""),
    ("build/x/_C.so", True, ""),
    ("/abs/vllm/_C.so", True, "vllm"),
    ("build/lib.linux/vllm/vllm_flash_attn/_C.so", True, "vllm_flash_attn"),
    ("copy/torch/lib/vllm/x.so", False, "vllm"),  # the innermost package-named directory
    ("x.so", True, ""),
])
def test_owner_of(path, member, package):
    assert audit.owner_of(path, member) == package


def test_fix_for_torch_names_the_cuda_its_index_and_a_base_image():
    from vllm_forge.gpu import compat

    fix = audit.fix_for("torch", "torch", [Target("sm_120", 12, 0, "RTX 5090", "rtx5090")])
    ngc = compat.default_ngc_tag(CudaRelease(12, 8)).image
    assert fix == ("install a torch built for CUDA 12.8 or newer, which knows RTX 5090 (sm_120) (e.g. `pip install "
                   "torch --index-url https://download.pytorch.org/whl/cu128`), or build on a base image whose torch "
                   f"has it (e.g. {ngc}) with `invoke use-existing-torch`")
    # The newest CUDA any target needs decides; no wheel index for it: no pip line.
    both = audit.fix_for("torch", "torch", [Target("sm_75", 7, 5), Target("sm_90a", 9, 0)])
    assert both.startswith("install a torch built for CUDA 12.1 or newer, which knows sm_75, sm_90a")
    assert "pip install" not in both


def test_fix_for_torch_without_a_known_cuda(monkeypatch):
    from vllm_forge.gpu import compat

    monkeypatch.setattr(compat, "min_cuda_for", lambda name: None)
    assert audit.fix_for("torch", "torch", [SM120]) == (
        "no CUDA toolkit this tool knows compiles for sm_120; wait for a torch built for it")
    assert audit.fix_for("other", "bnb", [SM120]) == (
        "install bnb's build for a CUDA that knows sm_120, or rebuild bnb for it")
    assert audit.fix_for("unknown", "", [SM120]) == (
        "rebuild it for sm_120: nvcc -gencode arch=compute_120,code=sm_120")


def test_fix_for_vllm_other_and_unknown_files():
    targets = [Target("sm_90a", 9, 0), Target("sm_120", 12, 0, "RTX 5090", "rtx5090")]
    assert audit.fix_for("vllm", "vllm", targets) == "rebuild vLLM for it: `invoke build-wheel --arch 9.0a,rtx5090`"
    assert audit.fix_for("other", "bitsandbytes", targets) == (
        "install bitsandbytes's build for a CUDA that knows sm_90a, RTX 5090 (sm_120) (CUDA 12.8 or newer), or "
        "rebuild bitsandbytes for it")
    assert audit.fix_for("unknown", "", targets) == (
        "rebuild it for sm_90a, RTX 5090 (sm_120) (CUDA 12.8 or newer): nvcc -gencode arch=compute_90a,code=sm_90a "
        "-gencode arch=compute_120,code=sm_120")


def test_variant_cuda():
    assert audit.variant_cuda("bitsandbytes/libbitsandbytes_cuda121.so") == (
        "bitsandbytes/libbitsandbytes_cuda*.so", CudaRelease(12, 1))
    assert audit.variant_cuda("a/libbnb_cuda128_nocublaslt.so") == ("a/libbnb_cuda*_nocublaslt.so", CudaRelease(12, 8))
    assert audit.variant_cuda("a/libx_cuda130.so") == ("a/libx_cuda*.so", CudaRelease(13, 0))
    assert audit.variant_cuda("a/libx_cuda1.so") is None and audit.variant_cuda("a/libx_cuda1234.so") is None
    assert audit.variant_cuda("a/libx.so") is None and audit.variant_cuda("a/libx_cuda121.so.1") is None


# ---- the report from scanned files ------------------------------------------------------------------------


def scanned(path, *groups, error="", member=True, location=""):
    return _Scanned(path, code(*groups) if not error else None, error, member, location)


def test_build_report_judges_every_file_on_every_target():
    files = [
        scanned("vllm/_C.abi3.so", group("sm_120"), group("sm_90a")),
        scanned("torch/lib/libtorch_cuda.so", group("sm_90")),
        scanned("bnb/libx.so", group("sm_80", "compute_80")),
        scanned("pkg/empty.so"),
        scanned("pkg/broken.so", error="pkg/broken.so is truncated"),
    ]
    report = audit.build_report("w.whl", files, [SM90, SM120])
    by = {f.path: f for f in report.files}
    assert [f.path for f in report.files] == sorted(by)
    # sm_90: its sm_90a group runs, its sm_120 group is for another GPU: vLLM's dispatch (gated).
    # sm_120: the sm_90a group is arch-specific code for another GPU, counted apart.
    assert by["vllm/_C.abi3.so"].verdict == {"sm_90": GATED, "sm_120": NATIVE}
    assert by["vllm/_C.abi3.so"].groups["sm_120"].arch_specific == 1
    assert by["torch/lib/libtorch_cuda.so"].verdict == {"sm_90": NATIVE, "sm_120": NONE}
    assert by["bnb/libx.so"].verdict == {"sm_90": PTX_JIT, "sm_120": PTX_JIT}
    assert by["pkg/empty.so"].verdict == {"sm_90": NO_DEVICE_CODE, "sm_120": NO_DEVICE_CODE}
    assert [by[p].required for p in sorted(by)] == [True, True, False, True, True]
    assert by["torch/lib/libtorch_cuda.so"].fix == audit.fix_for("torch", "torch", [SM120])
    assert by["vllm/_C.abi3.so"].fix == ""
    assert by["bnb/libx.so"].fix == "" and by["pkg/broken.so"].fix == ""
    assert by["vllm/_C.abi3.so"].via == {"sm_90": ["sm_90a"], "sm_120": ["sm_120"]}
    assert by["pkg/empty.so"].fix == "" and by["pkg/empty.so"].via == {"sm_90": [], "sm_120": []}
    assert by["pkg/broken.so"].error == "pkg/broken.so is truncated" and by["pkg/broken.so"].sass == []
    assert report.missing == [] and report.torch is None and report.torch_cuda is None and not report.ok


def test_a_vllm_file_with_native_groups_is_gated_and_others_stay_partial():
    groups = (group("sm_120"), group("sm_90"))
    report = audit.build_report("d", [scanned("vllm/_C.abi3.so", *groups), scanned("other/_C.so", *groups),
                                      scanned("vllm/_ptx.so", group("compute_120"), group("sm_90"))], [SM120])
    assert [f.verdict["sm_120"] for f in report.files] == [PARTIAL, GATED, PARTIAL]
    assert [f.ok for f in report.files] == [False, True, False]


def test_require_globs_match_path_or_name_and_unmatched_ones_are_missing():
    files = [scanned("vllm/_C.abi3.so", group("sm_120")), scanned("vllm/_moe_C.abi3.so", group("sm_90")),
             scanned("torch/lib/libc10.so")]
    report = audit.build_report("d", files, [SM120], require=["vllm/_C*", "libc10.so", "nothing*"])
    assert [(f.path, f.required) for f in report.files] == [
        ("torch/lib/libc10.so", True), ("vllm/_C.abi3.so", True), ("vllm/_moe_C.abi3.so", False)]
    assert report.missing == ["nothing*"] and not report.ok
    assert report.files[0].fix == audit.fix_for("torch", "torch", [SM120])  # named, so it needs one
    assert audit.build_report("d", files, [SM120], require=["vllm/_C.abi3.so"]).ok
    assert not audit.build_report("d", files, [SM120], require=["*_C.abi3.so"]).ok  # * crosses /: _moe_C too


def test_the_package_comes_from_the_files_location_first():
    files = [scanned("x/_C.so", group("sm_120"), location="/usr/lib/python3/site-packages/vllm/x/_C.so"),
             scanned("x/_C.so", group("sm_120"), member=False)]
    report = audit.build_report("d", files, [SM120])
    assert [f.package for f in report.files] == ["vllm", ""]


def test_torch_in_the_report_and_its_cuda_picks_the_variant():
    torch = TorchArchs("image i", version="2.8.0", cuda="12.8.1", arch_list=["sm_120"], counts=True)
    files = [scanned("bnb/libbitsandbytes_cuda121.so", group("sm_90")),
             scanned("bnb/libbitsandbytes_cuda128.so", group("sm_120"))]
    report = audit.build_report("d", files, [SM120], torch=torch)
    assert report.torch_cuda == CudaRelease(12, 8) and torch.verdict == {"sm_120": NATIVE}
    assert [f.variant["role"] for f in report.files] == ["alternative", "selected"]
    assert [f.required for f in report.files] == [False, True] and report.ok
    assert audit.build_report("d", files, [SM120], torch=torch, torch_cuda=CudaRelease(12, 1)).torch_cuda == \
        CudaRelease(12, 1)
    picked = audit.build_report("d", files, [SM120], torch_cuda=CudaRelease(12, 1))
    assert [f.variant["role"] for f in picked.files] == ["selected", "alternative"] and not picked.ok
    no_cuda = audit.build_report("d", files, [SM120], torch=TorchArchs("this Python", version="2.8.0"))
    assert no_cuda.torch_cuda is None


def test_variants_without_torchs_cuda_need_one_that_runs():
    runs = [scanned("b/libx_cuda121.so", group("sm_90")), scanned("b/libx_cuda128.so", group("sm_120"))]
    report = audit.build_report("d", runs, [SM120])
    assert [f.variant for f in report.files] == [
        {"family": "b/libx_cuda*.so", "cuda": "12.1", "role": "alternative"},
        {"family": "b/libx_cuda*.so", "cuda": "12.8", "role": "alternative"}]
    assert report.variant_failures == [] and report.ok
    none_run = [scanned("b/libx_cuda121.so", group("sm_90")), scanned("b/libx_cuda124.so", group("sm_80"))]
    report = audit.build_report("d", none_run, [SM120])
    assert report.variant_failures == ["b/libx_cuda*.so"] and not report.ok
    broken = [scanned("b/libx_cuda121.so", group("sm_90")), scanned("b/libx_cuda128.so", error="cut")]
    assert audit.build_report("d", broken, [SM120]).variant_failures == ["b/libx_cuda*.so"]
    alone = audit.build_report("d", [scanned("b/libx_cuda121.so", group("sm_90"))], [SM120])
    assert alone.files[0].variant is None and alone.variant_failures == [] and not alone.ok
    unrequired = audit.build_report("d", runs, [SM120], require=["*cuda128*"])
    assert [f.variant for f in unrequired.files] == [None, None]  # only required files form a family


# ---- optional extensions ----------------------------------------------------------------------------------


class _Ext:
    def __init__(self, reason, loses):
        self.reason, self.loses = reason, loses


def test_mark_optional_uses_what_vllms_code_says(monkeypatch):
    from vllm_forge.audit import vllm_extensions

    seen = []

    def optional(path, paths):
        seen.append((path, paths))
        return {"vllm/_moe_C.abi3.so": _Ext("imported in a try block", ["MoE kernels.", "fused top-k.", "x", "y"]),
                "vllm/_flash.abi3.so": _Ext("lazy import", []),
                "vllm/_broken.so": _Ext("lazy", ["z"])}

    monkeypatch.setattr(vllm_extensions, "optional_extensions", optional)
    files = [scanned("vllm/_moe_C.abi3.so", group("sm_90")), scanned("vllm/_flash.abi3.so", group("sm_90")),
             scanned("vllm/_C.abi3.so", group("sm_120")), scanned("vllm/_broken.so", error="cut"),
             scanned("vllm/empty.so")]
    report = audit.mark_optional(audit.build_report("w.whl", files, [SM120]), "w.whl")
    assert seen == [("w.whl", ["vllm/_C.abi3.so", "vllm/_flash.abi3.so", "vllm/_moe_C.abi3.so"])]
    by = {f.path: f for f in report.files}
    assert by["vllm/_moe_C.abi3.so"].optional == "imported in a try block; without it: MoE kernels; fused top-k; x"
    assert by["vllm/_flash.abi3.so"].optional == "lazy import"
    assert [by[p].required for p in ("vllm/_moe_C.abi3.so", "vllm/_flash.abi3.so", "vllm/_C.abi3.so",
                                     "vllm/_broken.so")] == [False, False, True, True]
    assert by["vllm/_broken.so"].optional == "" and report.ok is False  # the unreadable file still counts


@pytest.mark.parametrize("error", [ImportError("x"), ForgeError("x", "y"), OSError("x"), RecursionError()])
def test_mark_optional_keeps_every_file_required_when_the_code_cannot_be_read(monkeypatch, error):
    from vllm_forge.audit import vllm_extensions

    def broken(path, paths):
        raise error

    monkeypatch.setattr(vllm_extensions, "optional_extensions", broken)
    report = audit.build_report("d", [scanned("vllm/_moe_C.abi3.so", group("sm_90"))], [SM120])
    assert audit.mark_optional(report, "d") is report and report.files[0].required


def test_mark_optional_of_an_image_asks_inside_it(monkeypatch):
    from vllm_forge.audit import vllm_extensions

    seen = []
    monkeypatch.setattr(vllm_extensions, "optional_extensions_in_image",
                        lambda image, paths, docker: seen.append((image, paths, docker)) or {})
    report = audit.build_report("image i", [scanned("/usr/lib/vllm/_C.so", group("sm_120"))], [SM120])
    audit.mark_optional(report, "i", docker="/usr/bin/docker")
    assert seen == [("i", ["/usr/lib/vllm/_C.so"], "/usr/bin/docker")]


def test_audit_path_routes_and_marks_optional_only_without_require(monkeypatch, tmp_path):
    lib = tmp_path / "lib.so"
    import struct

    from vllm_forge.audit.fatbin import FATBIN_MAGIC

    body = bytearray(64)
    struct.pack_into("<HHIQ", body, 0, 2, 0x0101, 64, 0)
    struct.pack_into("<II", body, 24, (1 << 16) | 8, 120)
    lib.write_bytes(struct.pack("<IHHQ", FATBIN_MAGIC, 1, 16, 64) + bytes(body))
    marked = []
    monkeypatch.setattr(audit, "mark_optional", lambda report, path: marked.append(path) or report)
    report = audit.audit_path(lib, ["12.0"])
    assert marked == [lib] and report.source == str(lib) and report.ok
    assert [(f.path, f.sass, f.verdict) for f in report.files] == [(str(lib), ["sm_120"], {"sm_120": NATIVE})]
    audit.audit_path(lib, ["12.0"], require=["*.so"])
    assert marked == [lib]


def test_group_counts_to_dict_is_a_copy():
    counts = GroupCounts(count=1, arch_specific_archs=["sm_90a"], missing_kernels=["k"])
    data = counts.to_dict()
    data["arch_specific_archs"].append("x")
    data["missing_kernels"].append("y")
    assert counts.arch_specific_archs == ["sm_90a"] and counts.missing_kernels == ["k"]
