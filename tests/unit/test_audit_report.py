"""vllm_forge/audit/audit.py's report layer, checked word for word: what one verdict cell, the table, the summary line,
the notes, the JSON and the CLI say for a report built by hand (issue 22: these were called by the tests but
their output was only searched for a word or two, so a wrong count or a dropped clause went unseen).
"""

from __future__ import annotations

import json
import sys

import pytest

from vllm_forge.audit import audit
from vllm_forge.audit.audit import (
    GATED,
    NATIVE,
    NO_DEVICE_CODE,
    NO_KERNEL_IMAGE,
    NONE,
    NOT_USABLE,
    PARTIAL,
    PTX_JIT,
    AuditReport,
    FileAudit,
    GroupCounts,
    Target,
    TorchArchs,
)
from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu.cuda_release import CudaRelease

SM90 = Target("sm_90", 9, 0)
SM120 = Target("sm_120", 12, 0, "RTX 5090", "rtx5090")


def file_audit(path="vllm/_C.abi3.so", verdicts=None, **kw) -> FileAudit:
    verdicts = verdicts or {"sm_120": NATIVE}
    kw.setdefault("sass", ["sm_120"])
    kw.setdefault("ptx", [])
    return FileAudit(path, verdict=dict(verdicts), **kw)


# ---- one cell ---------------------------------------------------------------------------------------------


def test_via_shows_at_most_two_archs():
    f = file_audit(via={"a": ["sm_90"], "b": ["sm_80", "sm_90"], "c": ["sm_80", "sm_86", "sm_90"]})
    assert [audit._via(f, t) for t in ("a", "b", "c", "d")] == ["sm_90", "sm_80, sm_90", "sm_80, sm_86, ...", ""]


@pytest.mark.parametrize("verdict, counts, extra, text", [
    (NATIVE, None, {}, "native (sm_120)"),
    (PTX_JIT, None, {}, "PTX JIT (sm_120)"),
    (NONE, None, {}, "NO KERNEL"),
    (PARTIAL, GroupCounts(count=5, native=3, none=2), {}, "PARTIAL: 2 of 5 groups have no code"),
    (PARTIAL, None, {}, "NO KERNEL"),
    (GATED, GroupCounts(count=7, native=3, none=4), {},
     "native (sm_120); 4 of 7 groups only for other GPUs, picked by vLLM's capability dispatch"),
    (GATED, None, {}, "NO KERNEL"),
    (NO_DEVICE_CODE, None, {}, "NO KERNEL"),
    (NO_DEVICE_CODE, None, {"required": False}, "no device code"),
    (NATIVE, None, {"error": "cut short"}, "unreadable"),
    (NONE, None, {"optional": "guarded import"}, NOT_USABLE),
    (PARTIAL, GroupCounts(count=4, native=1, none=3), {"optional": "guarded"},
     "optional, partial: 3 of 4 groups have no code"),
    (NATIVE, None, {"optional": "guarded"}, "native (sm_120)"),
    (NATIVE, GroupCounts(count=1, native=1, arch_specific=2, arch_specific_archs=["sm_90a", "sm_100f"]), {},
     "native (sm_120); 2 more group(s) only for sm_90a, sm_100f, not launched on this GPU"),
    (NATIVE, None, {"variant": {"family": "x", "cuda": "12.8", "role": "alternative"}},
     "native (sm_120) (alternative)"),
    (NATIVE, None, {"variant": {"family": "x", "cuda": "12.8", "role": "selected"}}, "native (sm_120)"),
    (NO_DEVICE_CODE, None, {"variant": {"family": "x", "cuda": "12.8", "role": "alternative"}},
     "NO KERNEL (alternative)"),
])
def test_verdict_text(verdict, counts, extra, text):
    extra = {"required": True, **extra}
    f = file_audit(verdicts={"sm_120": verdict}, via={"sm_120": ["sm_120"]},
                   groups={"sm_120": counts} if counts else {}, **extra)
    assert audit.verdict_text(f, "sm_120") == text


def test_verdict_text_of_a_target_not_judged_is_no_kernel():
    assert audit.verdict_text(file_audit(), "sm_90") == "NO KERNEL"


# ---- one file ---------------------------------------------------------------------------------------------


def test_file_audit_runs_on_ok_and_failing_targets():
    f = file_audit(verdicts={"sm_90": NATIVE, "sm_120": NONE, "sm_100": PTX_JIT, "sm_89": GATED}, required=True)
    assert [f.runs_on(t) for t in ("sm_90", "sm_120", "sm_100", "sm_89", "sm_75")] == [True, False, True, True, False]
    assert f.failing_targets() == ["sm_120"] and not f.ok
    f.required = False
    assert f.ok
    broken = file_audit(verdicts={"sm_90": NATIVE}, required=True, error="cut")
    assert not broken.runs_on("sm_90") and broken.failing_targets() == ["sm_90"] and not broken.ok


def test_has_device_code_and_owner():
    assert file_audit(sass=[], ptx=["compute_90"]).has_device_code
    assert not file_audit(sass=[], ptx=[]).has_device_code
    assert [file_audit(package=p).owner for p in ("torch", "vllm_flash_attn", "xformers", "")] == [
        "torch", "vllm", "other", "unknown"]


def test_predicted_error_for_each_verdict():
    counts = GroupCounts(count=6, native=4, none=2)
    f = file_audit(verdicts={"a": NATIVE, "b": PTX_JIT, "c": PARTIAL, "d": NONE, "e": NO_DEVICE_CODE, "f": GATED,
                             "g": PARTIAL}, groups={"c": counts}, required=True)
    assert [f.predicted_error(t) for t in "abcdefgh"] == [
        None, None,
        f"{NO_KERNEL_IMAGE} when a kernel of one of the 2 kernel groups without code for c is launched",
        f"{NO_KERNEL_IMAGE} on the first kernel launch",
        f"{NO_KERNEL_IMAGE} (it carries no device code at all)",
        None,
        f"{NO_KERNEL_IMAGE} on the first kernel launch",
        None]
    f.required = False
    assert f.predicted_error("e") is None and f.predicted_error("d") == f"{NO_KERNEL_IMAGE} on the first kernel launch"
    f.error = "unreadable"
    assert f.predicted_error("d") is None


def test_file_to_dict_is_exact():
    counts = GroupCounts(count=2, native=1, none=1, missing_kernels=["_Z1kv"])
    f = file_audit(path="torch/lib/libtorch_cuda.so", verdicts={"sm_120": PARTIAL}, sass=["sm_90", "sm_80"],
                   ptx=["compute_90"], groups={"sm_120": counts}, package="torch", required=True, fix="reinstall")
    assert f.to_dict() == {
        "path": "torch/lib/libtorch_cuda.so", "sass": ["sm_80", "sm_90"], "ptx": ["compute_90"],
        "verdict": {"sm_120": PARTIAL}, "required": True, "error": None, "optional": None,
        "groups": {"sm_120": {"count": 2, "native": 1, "ptx_jit": 0, "none": 1, "kernel_less": 0,
                              "arch_specific": 0, "arch_specific_archs": [], "missing_kernels": ["_Z1kv"]}},
        "predicted_error": {"sm_120": f"{NO_KERNEL_IMAGE} when a kernel of one of the 1 kernel groups without "
                                     "code for sm_120 is launched"},
        "package": "torch", "variant": None, "fix": "reinstall"}
    bare = file_audit(path="x.so", error="bad", optional="guarded")
    assert (bare.to_dict()["error"], bare.to_dict()["optional"], bare.to_dict()["package"],
            bare.to_dict()["fix"]) == ("bad", "guarded", None, None)


# ---- torch ------------------------------------------------------------------------------------------------


def test_torch_archs_ok_and_to_dict():
    t = TorchArchs("image x", version="2.8.0", cuda="12.8", arch_list=["sm_90"], verdict={"sm_120": NONE})
    assert t.ok  # informational unless it counts
    t.counts = True
    assert not t.ok
    t.verdict = {"sm_120": PTX_JIT, "sm_90": NATIVE}
    assert t.ok
    assert TorchArchs("x", counts=True, verdict={"sm_120": NONE}).ok  # no torch found: the error says so
    assert t.to_dict() == {"where": "image x", "version": "2.8.0", "cuda": "12.8", "arch_list": ["sm_90"],
                           "verdict": {"sm_120": PTX_JIT, "sm_90": NATIVE}, "counts": True, "error": None}
    assert TorchArchs("this Python", error="no torch").to_dict() == {
        "where": "this Python", "version": None, "cuda": None, "arch_list": [], "verdict": {}, "counts": False,
        "error": "no torch"}


def test_torch_verdicts_by_its_arch_list():
    t = TorchArchs("x", version="2.8.0", cuda="12.8", arch_list=["sm_80", "sm_90", "compute_90"])
    audit._torch_verdicts(t, [SM90, SM120, Target("sm_86", 8, 6), Target("sm_75", 7, 5)])
    assert t.verdict == {"sm_90": NATIVE, "sm_120": PTX_JIT, "sm_86": NATIVE, "sm_75": NONE}
    cpu = TorchArchs("x", version="2.8.0", cuda="", arch_list=["sm_90"])
    audit._torch_verdicts(cpu, [SM90])
    assert cpu.verdict == {"sm_90": NONE}
    missing = TorchArchs("x", version="", cuda="12.8", arch_list=["sm_90"])
    audit._torch_verdicts(missing, [SM90])
    assert missing.verdict == {"sm_90": NONE}


def test_torch_of_this_python(monkeypatch):
    import importlib.util

    calls = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "torch" else object())
    assert audit.torch_of_this_python() is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(audit, "probe_torch", lambda where, command: calls.append((where, command)) or "probed")
    assert audit.torch_of_this_python() == "probed"
    assert calls == [("this Python", [sys.executable, "-c"])]


# ---- the report -------------------------------------------------------------------------------------------


def report_of(files, targets=(SM120,), **kw) -> AuditReport:
    return AuditReport("dist/x.whl", list(targets), files, **kw)


def test_report_ok_needs_every_part():
    good = file_audit(required=True)
    assert report_of([good]).ok
    assert not report_of([good, file_audit("b.so", {"sm_120": NONE}, required=True)]).ok
    assert not report_of([good], missing=["*.so"]).ok
    assert not report_of([good], variant_failures=["lib_cuda*.so"]).ok
    bad_torch = TorchArchs("image", version="2.8.0", cuda="12.8", counts=True, verdict={"sm_120": NONE})
    assert not report_of([good], torch=bad_torch).ok
    bad_torch.counts = False
    assert report_of([good], torch=bad_torch).ok


def test_report_labels_and_names():
    r = report_of([], targets=(SM90, SM120))
    assert r.target_names == ["sm_90", "sm_120"]
    assert [r.label("sm_90"), r.label("sm_120"), r.label("sm_100")] == ["sm_90", "RTX 5090 (sm_120)", "sm_100"]


def test_report_to_dict():
    f = file_audit(required=True)
    r = report_of([f], targets=(SM90, SM120), missing=["a*"], variant_failures=["fam"])
    d = r.to_dict()
    assert d["source"] == "dist/x.whl" and d["target"] == ["sm_90", "sm_120"]
    assert d["gpu"] == {"sm_90": None, "sm_120": "RTX 5090"} and d["ok"] is False
    assert d["missing"] == ["a*"] and d["variant_failures"] == ["fam"] and d["torch"] is None
    assert d["files"] == [f.to_dict()]
    assert json.loads(r.to_json()) == d
    r.torch = TorchArchs("this Python", version="2.8.0")
    assert r.to_dict()["torch"] == r.torch.to_dict()


def test_summary_counts_each_kind_of_verdict():
    files = [
        file_audit("a.so", {"sm_120": NATIVE}, required=True),
        file_audit("b.so", {"sm_120": NATIVE}, required=True),
        file_audit("c.so", {"sm_120": PTX_JIT}, required=True),
        file_audit("d.so", {"sm_120": GATED}, required=True),
        file_audit("e.so", {"sm_120": PARTIAL}, required=True),
        file_audit("f.so", {"sm_120": NONE}, required=True),
        file_audit("g.so", {"sm_120": NO_DEVICE_CODE}, required=True, sass=[]),
        file_audit("h.so", {"sm_120": NATIVE}, required=True, error="cut short"),
        file_audit("i.so", {"sm_120": NONE}, required=False),
        file_audit("j.so", {"sm_120": NO_DEVICE_CODE}, required=False, sass=[]),
    ]
    r = report_of(files, missing=["x*"], variant_failures=["libbnb_cuda*.so"],
                  torch=TorchArchs("image i", version="2.8.0", cuda="12.8", verdict={"sm_120": NONE}))
    assert r.summary() == (
        "FAIL: 8 required, 8 of 10 files carry device code; RTX 5090 (sm_120): 2 native, 1 via PTX JIT, "
        "1 native with kernels for other GPUs picked by vLLM's dispatch, 1 PARTIAL (some kernels have no code), "
        "3 with NO kernel (and 1 not required without one); 1 unreadable; --require matched nothing: x*; "
        "no variant runs: libbnb_cuda*.so; torch 2.8.0 (image i): no kernels for RTX 5090 (sm_120)")


def test_summary_of_a_clean_report_says_only_what_is_there():
    r = report_of([file_audit(required=True)], targets=(SM90, SM120))
    r.files[0].verdict = {"sm_90": NATIVE, "sm_120": NATIVE}
    assert r.summary() == "OK: 1 required, 1 of 1 files carry device code; sm_90: 1 native; RTX 5090 (sm_120): 1 native"
    r.torch = TorchArchs("this Python", version="2.8.0", cuda="12.8", verdict={"sm_90": NATIVE, "sm_120": PTX_JIT})
    assert r.summary().endswith("; torch 2.8.0 (this Python): ok")
    r.torch = TorchArchs("this Python", error="no torch")
    assert r.summary().endswith("RTX 5090 (sm_120): 1 native")


def test_notes_for_failing_files():
    partial = GroupCounts(count=3, native=1, none=2, missing_kernels=["_Z5fusedv", "_Z4nextv"])
    files = [
        file_audit("a.so", {"sm_120": PTX_JIT}, required=True),
        file_audit("b.so", {"sm_90": PARTIAL, "sm_120": NONE}, required=True, sass=["sm_80"], ptx=["compute_80"],
                   groups={"sm_90": partial}, fix="rebuild b"),
        file_audit("c.so", {"sm_90": NO_DEVICE_CODE, "sm_120": NO_DEVICE_CODE}, required=True, sass=[], fix="x"),
        file_audit("d.so", {"sm_120": NATIVE}, required=True, error="d.so is truncated"),
    ]
    r = report_of(files, targets=(SM90, SM120))
    assert r.notes() == [
        audit.JIT_NOTE,
        "b.so: 2 of 3 kernel groups have no code for sm_90; no kernel group has code for RTX 5090 (sm_120) "
        f"(it carries sm_80, compute_80; e.g. kernel _Z5fusedv); expect `{NO_KERNEL_IMAGE}`. Fix: rebuild b",
        "c.so: it carries no device code for sm_90; it carries no device code for RTX 5090 (sm_120) "
        f"(it carries no device code); expect `{NO_KERNEL_IMAGE}`. Fix: x",
        "d.so: d.so is truncated",
    ]


def test_notes_fold_after_ten_failing_files_and_name_variants_and_torch():
    files = [file_audit(f"f{i:02}.so", {"sm_120": NONE}, required=True, fix="fix") for i in range(12)]
    files.append(file_audit("lib_cuda128.so", {"sm_120": NATIVE},
                            variant={"family": "lib_cuda*.so", "cuda": "12.8", "role": "alternative"}))
    torch = TorchArchs("image i", version="2.8.0", cuda="12.8", arch_list=["sm_80", "sm_90"],
                       verdict={"sm_120": NONE}, counts=True)
    r = report_of(files, variant_failures=["fam_cuda*.so"], torch=torch)
    notes = r.notes()
    assert [n.split(":")[0] for n in notes[:10]] == [f"f{i:02}.so" for i in range(10)]
    assert notes[10] == "... and 2 more files that cannot run (--json lists them)"
    assert notes[11] == "fam_cuda*.so: none of its per-CUDA variants runs on RTX 5090 (sm_120)"
    assert notes[12] == ("lib_cuda*.so: one variant per CUDA, only the one matching torch's CUDA is loaded; torch's "
                         "CUDA is unknown here, so they are judged as alternatives (one must run)")
    assert notes[13].startswith("torch 2.8.0 in image i was built for sm_80 sm_90: expect `sm_120 is not compatible "
                                f"with the current PyTorch installation` and `{NO_KERNEL_IMAGE}`. Fix: ")
    assert notes[13].endswith(audit.fix_for("torch", "torch", [SM120]))
    assert len(notes) == 14
    r.torch_cuda = "12.8"
    assert not any(n.startswith("lib_cuda*.so") for n in r.notes())
    ten = report_of(files[:10])
    assert not any(n.startswith("...") for n in ten.notes()) and len(ten.notes()) == 10


def test_optional_notes_say_what_is_lost():
    counts = GroupCounts(count=4, native=1, none=3)
    files = [
        file_audit("vllm/_moe_C.abi3.so", {"sm_120": PARTIAL}, sass=["sm_90"], ptx=["compute_90"],
                   groups={"sm_120": counts}, optional="imported in a try block"),
        file_audit("vllm/_flashmla_C.abi3.so", {"sm_120": NONE}, sass=["sm_90a"], optional="guarded"),
        file_audit("vllm/_ok.abi3.so", {"sm_120": NATIVE}, optional="guarded"),
        file_audit("vllm/_C.abi3.so", {"sm_120": NONE}),
        file_audit("vllm/_empty.abi3.so", {"sm_120": NONE}, sass=[], optional="guarded"),
    ]
    assert audit.optional_notes(report_of(files)) == [
        "vllm/_moe_C.abi3.so: optional, partly usable on this GPU (3 of 4 kernel groups without code for sm_120) "
        "(sm_120; it carries sm_90, compute_90); vLLM runs without it: imported in a try block",
        f"vllm/_flashmla_C.abi3.so: {NOT_USABLE} (sm_120; it carries sm_90a); vLLM runs without it: guarded",
    ]


# ---- the table --------------------------------------------------------------------------------------------


def quiet_files(n):
    return [file_audit(f"lib/q{i:02}.so", {"sm_120": NO_DEVICE_CODE}, sass=[], required=False) for i in range(n)]


def test_rows_fold_quiet_files_past_the_limit_only():
    loud = file_audit("vllm/_C.abi3.so", required=True, via={"sm_120": ["sm_120"]})
    limit = audit.TABLE_LIMIT_NO_CODE
    body, hidden = audit.rows(report_of([loud] + quiet_files(limit)))
    assert hidden == 0 and len(body) == limit + 1
    body, hidden = audit.rows(report_of([loud] + quiet_files(limit + 1)))
    assert hidden == limit + 1 and body == [["vllm/_C.abi3.so", "sm_120", "-", "native (sm_120)"]]
    body, hidden = audit.rows(report_of([loud] + quiet_files(limit + 1)), show_all=True)
    assert hidden == 0 and len(body) == limit + 2
    # Required, unreadable, or judged on any target: never folded.
    kept = [file_audit("r.so", {"sm_120": NO_DEVICE_CODE}, sass=[], required=True),
            file_audit("e.so", {"sm_120": NO_DEVICE_CODE}, sass=[], error="bad")]
    body, hidden = audit.rows(report_of(kept + quiet_files(limit + 1)))
    assert hidden == limit + 1 and [row[0] for row in body] == ["r.so", "e.so"]


def test_format_text_exactly():
    counts = GroupCounts(count=2, native=1, none=1)
    files = [file_audit("vllm/_C.abi3.so", {"sm_120": NATIVE}, sass=["sm_120", "sm_90"], ptx=["compute_120"],
                        required=True, via={"sm_120": ["sm_120"]}),
             file_audit("x/libx.so", {"sm_120": PARTIAL}, sass=["sm_80"], groups={"sm_120": counts}, required=True,
                        fix="rebuild it")] + quiet_files(audit.TABLE_LIMIT_NO_CODE + 1)
    torch = TorchArchs("this Python", version="2.8.0", cuda="12.8", arch_list=["sm_90", "sm_120"],
                       verdict={"sm_120": NATIVE})
    text = audit.format_text(report_of(files, torch=torch))
    assert text.splitlines() == [
        "file             SASS          PTX          on RTX 5090 (sm_120)",
        "vllm/_C.abi3.so  sm_90 sm_120  compute_120  native (sm_120)",
        "x/libx.so        sm_80         -            PARTIAL: 1 of 2 groups have no code",
        "... and 21 more files without device code (--all lists them)",
        "torch (this Python): 2.8.0 (CUDA 12.8) built for sm_90 sm_120; sm_120: native",
        f"note: x/libx.so: 1 of 2 kernel groups have no code for RTX 5090 (sm_120) (it carries sm_80); expect "
        f"`{NO_KERNEL_IMAGE}`. Fix: rebuild it",
        "FAIL: 2 required, 2 of 23 files carry device code; RTX 5090 (sm_120): 1 native, 1 PARTIAL (some kernels "
        "have no code); torch 2.8.0 (this Python): ok",
    ]
    torch.error, torch.version = "torch is not importable: ModuleNotFoundError: torch", ""
    assert "torch (this Python): torch is not importable: ModuleNotFoundError: torch" in audit.format_text(
        report_of(files[:1], torch=torch)).splitlines()
    assert not any(line.startswith("torch") for line in audit.format_text(report_of(files[:1])).splitlines())


# ---- audit_image and the CLI ----------------------------------------------------------------------------


def test_audit_image_scans_the_image_and_its_torch(monkeypatch):
    from vllm_forge.audit.fatbin import list_device_code

    code = list_device_code(b"\x7fELF\x02\x01\x01" + bytes(57))
    seen = {}
    monkeypatch.setattr(audit, "scan_image", lambda image, docker=None, via="save": seen.update(
        scan=(image, docker, via)) or [audit._Scanned("/usr/lib/x.so", code)])
    monkeypatch.setattr(audit, "torch_of_image", lambda image, docker=None: seen.update(torch=(image, docker))
                        or TorchArchs(f"image {image}", version="2.8.0", cuda="12.8", arch_list=["sm_120"],
                                      counts=True))
    monkeypatch.setattr(audit, "_docker", lambda docker: f"/bin/{docker or 'docker'}")
    monkeypatch.setattr(audit, "mark_optional", lambda report, path, docker="": seen.update(
        optional=(path, docker)) or report)
    report = audit.audit_image("img:1", ["12.0"], docker="podman", via="export", torch_cuda=CudaRelease(12, 8))
    assert seen == {"scan": ("img:1", "podman", "export"), "torch": ("img:1", "podman"),
                    "optional": ("img:1", "/bin/podman")}
    assert report.source == "image img:1" and report.torch.verdict == {"sm_120": NATIVE} and report.ok
    assert report.torch_cuda == CudaRelease(12, 8) and [f.path for f in report.files] == ["/usr/lib/x.so"]
    seen.clear()
    report = audit.audit_image("img:1", ["12.0"], require=["*.so"], torch=False)
    assert "torch" not in seen and "optional" not in seen and report.torch is None
    assert report.files[0].required


def test_main_passes_every_option_through(monkeypatch, capsys):
    calls = []

    def fake_path(path, arch, **kw):
        calls.append(("path", path, arch, kw))
        return report_of([file_audit(required=True, via={"sm_120": ["sm_120"]})])

    def fake_image(image, arch, **kw):
        calls.append(("image", image, arch, kw))
        return report_of([file_audit(verdicts={"sm_120": NONE}, required=True)])

    monkeypatch.setattr(audit, "audit_path", fake_path)
    monkeypatch.setattr(audit, "audit_image", fake_image)
    assert audit.main(["dist", "--arch", "12.0", "--arch", "9.0", "--require", "*_C*", "--max-inflate", "16G",
                       "--torch-cuda", "12.8", "--no-torch"]) == 0
    assert calls.pop() == ("path", "dist", ["12.0", "9.0"], {"require": ["*_C*"], "torch": False,
                                                             "max_inflate": "16G", "torch_cuda": CudaRelease(12, 8)})
    assert capsys.readouterr().out.splitlines()[-1].startswith("OK: 1 required")
    assert audit.main(["dist", "--arch", "12.0"]) == 0
    assert calls.pop() == ("path", "dist", ["12.0"], {"require": [], "torch": True, "max_inflate": "8G",
                                                      "torch_cuda": None})
    capsys.readouterr()
    assert audit.main(["--image", "img", "--arch", "12.0", "--via", "export", "--docker", "podman", "--json"]) == 1
    assert calls.pop() == ("image", "img", ["12.0"], {"require": [], "docker": "podman", "via": "export",
                                                      "torch": True, "torch_cuda": None})
    assert json.loads(capsys.readouterr().out)["ok"] is False
    for argv in (["--arch", "12.0"], ["dist", "--image", "img", "--arch", "12.0"]):
        with pytest.raises(ForgeError, match="give either a PATH or --image IMAGE"):
            audit.main(argv)


def test_main_all_lists_every_quiet_file(monkeypatch, capsys):
    monkeypatch.setattr(audit, "audit_path", lambda path, arch, **kw: report_of(
        [file_audit(required=True, via={"sm_120": ["sm_120"]})] + quiet_files(audit.TABLE_LIMIT_NO_CODE + 1)))
    audit.main(["dist", "--arch", "12.0"])
    assert "... and 21 more files without device code (--all lists them)" in capsys.readouterr().out
    audit.main(["dist", "--arch", "12.0", "--all"])
    out = capsys.readouterr().out
    assert "more files without device code" not in out and "lib/q20.so" in out


def test_notes_fold_from_the_eleventh_failing_file_and_go_on_after_an_unreadable_one():
    eleven = [file_audit("a.so", {"sm_120": NONE}, required=True, error="a.so is cut short")]
    eleven += [file_audit(f"f{i:02}.so", {"sm_120": NONE}, required=True, fix="fix") for i in range(10)]
    notes = report_of(eleven).notes()
    assert notes[0] == "a.so: a.so is cut short" and notes[1].startswith("f00.so: no kernel group has code")
    assert notes[-1] == "... and 1 more files that cannot run (--json lists them)" and len(notes) == 11


def test_a_torch_without_archs_is_said_so():
    torch = TorchArchs("image i", version="2.8.0", cuda="12.8", arch_list=[], verdict={"sm_120": NONE}, counts=True)
    (note,) = report_of([], torch=torch).notes()
    assert note.startswith("torch 2.8.0 in image i was built for no CUDA arch: expect `sm_120 is not compatible")


def test_summary_of_a_file_not_judged_on_a_target_counts_it_as_no_kernel():
    r = report_of([file_audit(required=True), file_audit("b.so", required=True)], targets=(SM90, SM120),
                  missing=["x*", "y*"])
    assert r.summary() == ("FAIL: 2 required, 2 of 2 files carry device code; sm_90: 0 native, 2 with NO kernel; "
                           "RTX 5090 (sm_120): 2 native; --require matched nothing: x*, y*")


def test_to_json_is_indented_in_the_dicts_order():
    r = report_of([file_audit(required=True)])
    assert r.to_json() == json.dumps(r.to_dict(), indent=2)
    assert r.to_json().splitlines()[:2] == ["{", '  "source": "dist/x.whl",']
