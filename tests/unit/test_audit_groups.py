"""Per kernel group verdicts (issue 14): a library is judged by each fat binary in it, not by the union
of its archs; the verdict names the error the user will see and the fix for whose file it is."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest

from vllm_forge.audit import audit
from vllm_forge.audit.fatbin import list_device_code
from vllm_forge.core.errors import ForgeError, run_main
from vllm_forge.gpu.cuda_release import CudaRelease

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TU_PARTIAL = FIXTURES / "gpu_tu_partial"
H200 = FIXTURES / "h200x2"


# ---- the recorded H200 run: one library, two translation units, one kernel without code ---------------


def recorded_launches() -> dict[str, bool]:
    """kernel -> whether its launch worked on the H200, from run.txt (`launch_a (...): <error>`)."""
    runs = {}
    for line in (TU_PARTIAL / "run.txt").read_text().splitlines():
        m = re.match(r"launch_(\w) \(.*\): (.*)$", line)
        if m:
            runs[f"_Z2k{m.group(1)}Pi"] = m.group(2) == "no error"
    return runs


def test_recorded_partial_library_is_partial_on_the_gpu_it_ran_on():
    runs = recorded_launches()
    assert runs == {"_Z2kbPi": True, "_Z2kaPi": False}  # what happened on the H200 (sm_90)
    code = list_device_code(TU_PARTIAL / "libab.so")
    # cuobjdump's union: sm_75, sm_80, sm_90. The sm_75 cubin is nvlink's and holds no kernel.
    assert sorted(code.sass) == ["sm_75", "sm_80", "sm_90"]
    assert [(sorted(g.sass), g.kernels) for g in code.groups] == [
        (["sm_75"], ()), (["sm_80"], ("_Z2kaPi",)), (["sm_90"], ("_Z2kbPi",))]
    report = audit.audit_path(TU_PARTIAL / "libab.so", ["9.0", "8.0", "rtx5090"])
    (f,) = report.files
    assert f.verdict == {"sm_90": "partial", "sm_80": "partial", "sm_120": "none"}
    h200 = f.groups["sm_90"]
    assert (h200.count, h200.native, h200.none, h200.kernel_less) == (2, 1, 1, 1)
    # The kernels predicted to fail are exactly those that failed.
    assert h200.missing_kernels == [k for k, ran in runs.items() if not ran]
    assert f.groups["sm_80"].missing_kernels == ["_Z2kbPi"]
    assert not report.ok
    assert "no kernel image is available for execution on the device" in f.predicted_error("sm_90")
    notes = "\n".join(report.notes())
    assert "1 of 2 kernel groups have no code for sm_90" in notes
    assert "no kernel group has code for RTX 5090 (sm_120)" in notes


def test_required_partial_file_fails_where_the_union_would_pass(tmp_path):
    wheel = tmp_path / "x-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(TU_PARTIAL / "libab.so", "mylib/_C.abi3.so")
    report = audit.audit_path(wheel, ["9.0"], require=["*/_C.abi3.so"])
    assert not report.ok
    assert "PARTIAL" in report.summary()
    assert audit.verdict_text(report.files[0], "sm_90") == "PARTIAL: 1 of 2 groups have no code"


def test_a_vllm_extension_built_for_the_gpu_is_judged_by_its_dispatch(tmp_path):
    """The same shape inside vLLM's package: vLLM builds some kernels for chosen archs only and picks kernels
    by compute capability (the stock 0.26.0 _C has 14 groups without sm_90 code and serves on an H200), so a
    file with native groups for the GPU is `gated`: it passes, and says how many groups are for other GPUs.
    A vLLM file with no native group for the GPU (issue 14's 55 of 56) still fails."""
    wheel = tmp_path / "vllm-1-cp38-abi3-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(TU_PARTIAL / "libab.so", "vllm/_C.abi3.so")
    report = audit.audit_path(wheel, ["9.0", "12.0"], require=["*/_C.abi3.so"])
    f = report.files[0]
    assert f.verdict["sm_90"] == "gated" and f.runs_on("sm_90") and f.predicted_error("sm_90") is None
    assert audit.verdict_text(f, "sm_90") == ("native (sm_90); 1 of 2 groups only for other GPUs, picked by "
                                              "vLLM's capability dispatch")
    assert f.verdict["sm_120"] == "none" and not report.ok


# ---- the verdict rule on hand-made groups ------------------------------------------------------------


def group(*archs: str, kernels=("k",)):
    from vllm_forge.audit.fatbin import DeviceImage, FatBinary

    images = []
    for arch in archs:
        kind = "ptx" if arch.startswith("compute_") else "sass"
        number = arch.split("_")[1]
        variant = number[-1] if number[-1] in "af" else ""
        images.append(DeviceImage(kind, int(number.rstrip("af")), variant, "", 10, "1.8"))
    return FatBinary(0, images, kernels)


@pytest.mark.parametrize("groups, verdict, counts", [
    ([group("sm_120"), group("sm_120f")], "native", (2, 2, 0, 0)),
    ([group("sm_120"), group("sm_80", "compute_80")], "ptx-jit", (2, 1, 1, 0)),
    ([group("sm_52", "compute_52")] + [group("sm_90")] * 55, "partial", (56, 0, 1, 55)),
    ([group("sm_90a"), group("sm_100f")], "none", (2, 0, 0, 2)),
    ([group("sm_75", kernels=())], "no-device-code", (0, 0, 0, 0)),
    ([group("sm_75", kernels=()), group("sm_120")], "native", (1, 1, 0, 0)),
    ([group("sm_75", kernels=None), group("sm_120")], "partial", (2, 1, 0, 1)),  # unknown kernels count
    ([], "no-device-code", (0, 0, 0, 0)),
])
def test_worst_over_groups(groups, verdict, counts):
    target = audit.resolve_targets(["12.0"])[0]
    got, c, _via = audit.judge(groups, target)
    assert got == verdict
    assert (c.count, c.native, c.ptx_jit, c.none) == counts


def test_arch_specific_groups_for_other_gpus_do_not_make_a_file_partial():
    """A `9.0a;12.0` build of vLLM: its sm90a-only units (CUTLASS, FA3) exist only for Hopper and are
    launched behind a capability check; on an RTX 5090 the file is judged by the rest. A plain-SASS group
    for another GPU (sm_75 only) still fails, and a file of nothing but arch-specific code has none."""
    target = audit.resolve_targets(["12.0"])[0]
    verdict, counts, _ = audit.judge([group("sm_120"), group("sm_90a"), group("sm_100f")], target)
    assert (verdict, counts.count, counts.arch_specific, counts.arch_specific_archs) == (
        "native", 1, 2, ["sm_90a", "sm_100f"])
    verdict, counts, _ = audit.judge([group("sm_120"), group("sm_90a"), group("sm_75")], target)
    assert (verdict, counts.count, counts.none, counts.arch_specific) == ("partial", 2, 1, 1)
    hopper = audit.resolve_targets(["9.0a"])[0]
    assert audit.judge([group("sm_120"), group("sm_90a")], hopper)[0] == "partial"  # sm_120 SASS: not on 9.0a


def test_fifty_five_of_fifty_six_is_said_in_words():
    from vllm_forge.audit.fatbin import DeviceCode

    code = DeviceCode()
    for g in [group("sm_52", "compute_52")] + [group("sm_90", kernels=(f"k{i}",)) for i in range(55)]:
        code.add(g)
    report = audit.build_report("x", [audit._Scanned("vllm/_C.abi3.so", code)], audit.resolve_targets(["rtx5090"]))
    note = next(n for n in report.notes() if n.startswith("vllm/_C.abi3.so"))
    assert "55 of 56 kernel groups have no code for RTX 5090 (sm_120)" in note
    assert "expect `CUDA error: no kernel image is available for execution on the device`" in note
    assert note.endswith("Fix: rebuild vLLM for it: `invoke build-wheel --arch rtx5090`")


# ---- the header, the fix by owner, the JSON ------------------------------------------------------------


def test_header_names_the_gpu_given():
    report = audit.audit_path(H200 / "k_sm_90a", ["rtx5090", "sm_90"], torch=False)
    assert [t.label for t in report.targets] == ["RTX 5090 (sm_120)", "sm_90"]
    text = audit.format_text(report)
    assert "on RTX 5090 (sm_120)" in text.splitlines()[0]
    assert "RTX 5090 (sm_120): 0 native" in report.summary()


@pytest.mark.parametrize("path, owner, package", [
    ("torch/lib/libtorch_cuda.so", "torch", "torch"),
    ("/usr/local/lib/python3.12/dist-packages/torch/lib/libtorch_cuda.so", "torch", "torch"),
    ("vllm/_C.abi3.so", "vllm", "vllm"),
    ("dist/vllm-0.11.0-cp38-abi3-linux_x86_64.whl/vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so", "vllm", "vllm"),
    ("bitsandbytes/libbitsandbytes_cuda121.so", "other", "bitsandbytes"),
    ("/opt/lib/libfoo.so", "unknown", ""),
    ("libab.so", "unknown", ""),
])
def test_owner(path, owner, package):
    assert audit.owner_of(path) == package
    assert audit.owner_kind(package) == owner


def test_fix_depends_on_whose_file_it_is():
    t = audit.resolve_targets(["rtx5090"])
    torch_fix = audit.fix_for("torch", "torch", t)
    assert "CUDA 12.8 or newer" in torch_fix and "https://download.pytorch.org/whl/cu128" in torch_fix
    assert "invoke use-existing-torch" in torch_fix and "nvcr.io/nvidia/pytorch:25.02-py3" in torch_fix
    assert audit.fix_for("vllm", "vllm", t) == "rebuild vLLM for it: `invoke build-wheel --arch rtx5090`"
    assert audit.fix_for("vllm", "vllm", audit.resolve_targets(["sm_90a"])).endswith("--arch 9.0a`")
    other = audit.fix_for("other", "bitsandbytes", t)
    assert "bitsandbytes's build for a CUDA that knows RTX 5090 (sm_120) (CUDA 12.8 or newer)" in other
    assert "-gencode arch=compute_120,code=sm_120" in audit.fix_for("unknown", "", t)


def seed_torch_wheel(tmp_path: Path) -> Path:
    """torch 2.6.0's libtorch_cuda.so as the seed saw it: sm_50 ... sm_90a, no PTX (stand-in: sm_90a)."""
    wheel = tmp_path / "torch-2.6.0-cp312-cp312-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(H200 / "k_sm_90a", "torch/lib/libtorch_cuda.so")
        zf.write(H200 / "k_sm_120", "vllm/_C.abi3.so")
    return wheel


def test_torch_file_gets_the_torch_fix_and_the_predicted_error(tmp_path, capsys):
    code = run_main(audit.main, [str(seed_torch_wheel(tmp_path)), "--arch", "rtx5090", "--no-torch", "--json"])
    assert code == 1
    data = json.loads(capsys.readouterr().out)
    torch_file = next(f for f in data["files"] if f["path"] == "torch/lib/libtorch_cuda.so")
    assert torch_file["verdict"] == {"sm_120": "none"} and torch_file["package"] == "torch"
    assert torch_file["fix"].startswith("install a torch built for CUDA 12.8 or newer")
    assert torch_file["predicted_error"]["sm_120"].startswith(
        "CUDA error: no kernel image is available for execution on the device")
    assert data["gpu"] == {"sm_120": "RTX 5090"}
    vllm_file = next(f for f in data["files"] if f["path"] == "vllm/_C.abi3.so")
    assert vllm_file["verdict"] == {"sm_120": "native"} and vllm_file["predicted_error"] == {"sm_120": None}
    assert vllm_file["groups"]["sm_120"] == {"count": 1, "native": 1, "ptx_jit": 0, "none": 0, "kernel_less": 1,
                                       "arch_specific": 0, "arch_specific_archs": [],
                                             "missing_kernels": []}


def test_json_archs_sort_numerically_and_no_device_code_is_its_own_verdict(tmp_path):
    from vllm_forge.audit.fatbin import DeviceCode

    code = DeviceCode()
    code.add(group("sm_100", "sm_70", "sm_90a", "compute_120", "compute_75"))
    empty = DeviceCode()
    report = audit.build_report("x", [audit._Scanned("a.so", code), audit._Scanned("b.so", empty)],
                                audit.resolve_targets(["12.0"]))
    data = json.loads(report.to_json())
    assert data["files"][0]["sass"] == ["sm_70", "sm_90a", "sm_100"]
    assert data["files"][0]["ptx"] == ["compute_75", "compute_120"]
    assert data["files"][1]["verdict"] == {"sm_120": "no-device-code"}
    assert data["files"][1]["required"] is False and data["ok"] is True


# ---- per-CUDA variants --------------------------------------------------------------------------------


def variants_wheel(tmp_path: Path) -> Path:
    """bitsandbytes-style: one library per CUDA; only the cuda128 one has sm_120 code."""
    wheel = tmp_path / "bitsandbytes-0.45.0-py3-none-manylinux_2_24_x86_64.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(H200 / "k_sm_90", "bitsandbytes/libbitsandbytes_cuda121.so")
        zf.write(H200 / "k_sm_90", "bitsandbytes/libbitsandbytes_cuda124.so")
        zf.write(H200 / "k_sm_120", "bitsandbytes/libbitsandbytes_cuda128.so")
    return wheel


def test_variant_matching_torchs_cuda_decides(tmp_path):
    wheel = variants_wheel(tmp_path)
    good = audit.audit_path(wheel, ["12.0"], torch_cuda=CudaRelease(12, 8))
    assert good.ok
    roles = {Path(f.path).name: f.variant["role"] for f in good.files}
    assert roles == {"libbitsandbytes_cuda121.so": "alternative", "libbitsandbytes_cuda124.so": "alternative",
                     "libbitsandbytes_cuda128.so": "selected"}
    bad = audit.audit_path(wheel, ["12.0"], torch_cuda=CudaRelease(12, 4))
    assert not bad.ok
    assert [Path(f.path).name for f in bad.files if not f.ok] == ["libbitsandbytes_cuda124.so"]


def test_variants_are_alternatives_when_torchs_cuda_is_unknown(tmp_path):
    report = audit.audit_path(variants_wheel(tmp_path), ["12.0"])
    assert report.ok  # one of them runs
    assert all(f.variant["role"] == "alternative" for f in report.files)
    assert any("judged as alternatives" in n for n in report.notes())
    assert "(alternative)" in audit.verdict_text(report.files[0], "sm_120")
    hopper_only = audit.audit_path(variants_wheel(tmp_path), ["10.0"])
    assert not hopper_only.ok
    assert hopper_only.variant_failures == ["bitsandbytes/libbitsandbytes_cuda*.so"]


# ---- arch names no GPU has ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["13.0", "sm_130", "9.5", "sm_95a"])
def test_unknown_arch_is_refused_naming_the_nearest(spec, capsys):
    with pytest.raises(ForgeError) as err:
        audit.resolve_targets([spec])
    assert "is not the arch of any NVIDIA GPU this tool knows; the nearest known are" in err.value.problem
    code = run_main(audit.main, [str(H200 / "k_sm_90"), "--arch", spec])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")


def test_unknown_arch_lists_nearest_known():
    with pytest.raises(ForgeError, match=r"sm_121 \(12\.1\), sm_120 \(12\.0\), sm_110 \(11\.0\)"):
        audit.resolve_targets(["13.0"])


@pytest.mark.parametrize("spec", ["8.8", "sm_121a", "11.0", "10.3", "sm_35", "h100", "rtx5090"])
def test_archs_the_compat_table_lists_are_accepted(spec):
    assert audit.resolve_targets([spec])


# ---- doctor uses the per-group verdicts -----------------------------------------------------------------


def test_doctor_reports_partial_extensions_with_the_vllm_fix(tmp_path):
    import shutil

    from vllm_forge.nccl import doctor

    site = tmp_path / "site-packages"
    (site / "vllm").mkdir(parents=True)
    shutil.copy(TU_PARTIAL / "libab.so", site / "vllm" / "_C.abi3.so")
    [finding] = doctor.check_audit(str(site / "vllm"), [("GPU0", "9.0")], doctor.load_audit())
    assert finding.level == "pass"  # vLLM's own file with native groups: gated, see docs/audit.md
    assert "picked by vLLM's dispatch" in finding.message
    shutil.copy(H200 / "k_ptx80", site / "vllm" / "_moe_C.abi3.so")  # PTX of 8.0 only: runs on 9.0 by JIT
    (site / "vllm" / "_C.abi3.so").unlink()
    [finding] = doctor.check_audit(str(site / "vllm"), [("GPU0", "7.5")], doctor.load_audit())
    assert finding.level == "fail" and finding.fix == "rebuild vLLM for it: `invoke build-wheel --arch 7.5`"


# ---- inflaters: ISA-L (default when installed), zlib, zlib-ng give the same audit -----------------------


def installed_inflaters() -> list[str]:
    found = []
    for name in ("zlib", "isal", "zlib-ng"):
        try:
            audit.raw_inflater(name)
        except ForgeError:
            continue
        found.append(name)
    return found


def test_every_inflater_gives_the_same_report(tmp_path, monkeypatch):
    wheel = seed_torch_wheel(tmp_path)
    outputs = {}
    for name in installed_inflaters():
        monkeypatch.setenv("VLLM_FORGE_INFLATER", name)
        outputs[name] = audit.audit_path(wheel, ["12.0", "9.0"]).to_json()
    assert len(set(outputs.values())) == 1, list(outputs)


def test_a_corrupt_deflate_stream_is_unreadable_with_every_inflater(tmp_path, monkeypatch):
    wheel = tmp_path / "bad-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(H200 / "k_sm_120", "pkg/_C.so")
    data = bytearray(wheel.read_bytes())
    start = data.index(b"pkg/_C.so") + len("pkg/_C.so")  # the member's data follows its local header
    data[start + 40:start + 4000] = bytes(range(256)) * 15 + bytes(range(120))
    wheel.write_bytes(bytes(data))
    for name in installed_inflaters():
        monkeypatch.setenv("VLLM_FORGE_INFLATER", name)
        (f,) = audit.audit_path(wheel, ["12.0"]).files
        assert f.error and f.required, name


def test_unknown_inflater_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("VLLM_FORGE_INFLATER", "brotli")
    assert run_main(audit.main, [str(seed_torch_wheel(tmp_path)), "--arch", "12.0", "--no-torch"]) == 2
    assert "VLLM_FORGE_INFLATER=brotli is not an inflater this tool knows" in capsys.readouterr().err


# ---- the wheel's directory, read without a ZipInfo per member ---------------------------------------------


def zipfile_candidates(path: Path) -> list[tuple]:
    with zipfile.ZipFile(path) as zf:
        return sorted((i.filename, i.file_size, i.compress_size, i.header_offset, i.compress_type)
                      for i in zf.infolist() if not i.is_dir() and audit.is_candidate(i.filename))


def test_fast_directory_reader_agrees_with_zipfile(tmp_path):
    wheel = tmp_path / "many-1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.comment = b"a comment"
        for i in range(300):
            zf.writestr(f"pkg/mod{i}.py", f"x = {i}\n")
        zf.write(H200 / "k_sm_120", "pkg/_C.abi3.so")
        zf.writestr("pkg/libx.so.1", b"\x7fELF" + bytes(60), compress_type=zipfile.ZIP_STORED)
        zf.writestr("pkg/ünïcode/_y.so", b"\x7fELF" + bytes(60))
        zf.writestr("pkg/sub/", b"")
    fast = audit._zip_candidates(wheel)
    assert fast is not None
    assert sorted((i.filename, i.file_size, i.compress_size, i.header_offset, i.compress_type) for i in fast) == \
        zipfile_candidates(wheel)
    # Bytes before the archive (a self-extracting zip): left to zipfile, same members audited.
    prefixed = tmp_path / "prefixed-1-py3-none-any.whl"
    prefixed.write_bytes(b"#!/bin/sh\n" * 100 + wheel.read_bytes())
    assert audit._zip_candidates(prefixed) is None
    assert sorted(s.path for s in audit.scan_wheel(prefixed)) == sorted(s.path for s in audit.scan_wheel(wheel))


def test_sort_archs_is_numeric_and_total():
    assert audit.sort_archs({"compute_75", "sm_100", "sm_75", "sm_90a", "sm_90", "compute_120"}) == [
        "sm_75", "compute_75", "sm_90", "sm_90a", "sm_100", "compute_120"]
