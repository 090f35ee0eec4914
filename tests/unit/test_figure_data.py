"""vllm_forge/report/figure_data.py: what each figure draws, checked against the report JSON it comes from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fake_vllm import write_install

from vllm_forge.audit import audit
from vllm_forge.build import build_times, ninja_log
from vllm_forge.core.errors import ForgeError
from vllm_forge.gpu import compat
from vllm_forge.nccl import nccl_logs
from vllm_forge.report import figure_data

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FAULT = FIXTURES / "h200x2_live_fault"
HEALTHY = FIXTURES / "h200x2_live"
GB = 1000**3


def diagnosis(*paths: Path) -> dict:
    """What `invoke nccl-diagnose --json` prints (and records) for these files."""
    files, in_dirs = nccl_logs.input_paths(" ".join(str(p) for p in paths))
    ctx = nccl_logs.Context()
    reports = nccl_logs.diagnose_files(files, ctx, optional=in_dirs)
    return json.loads(json.dumps(nccl_logs.report_dict(reports, nccl_logs.find_root_cause(reports, ctx)), default=str))


def table_points(report: dict) -> dict[str, list[tuple[int, float]]]:
    """Each nccl-tests table of the JSON, read here without figure_data: size and the better busbw of each row."""
    out = {}
    for file in report["files"]:
        sections = [("", file["facts"])] if file["kind"] == "nccl-tests" else [
            (name, s) for name, s in file["facts"].items() if file["kind"] == "bundle" and isinstance(s, dict)
            and s.get("kind") == "nccl-tests"]
        for name, table in sections:
            points = []
            for row in table["rows"]:
                values = [m["busbw"] for m in (row["out_of_place"], row["in_place"]) if m and m["busbw"] is not None]
                points.append((row["size"], max(values)))
            out[Path(file["path"]).name + (f" [{name}]" if name else "")] = points
    return out


@pytest.fixture(scope="module")
def fault() -> dict:
    return diagnosis(FAULT)


@pytest.fixture(scope="module")
def healthy() -> dict:
    return diagnosis(HEALTHY / "nccl_tests.txt", FAULT / "topo.txt")


def test_the_fault_run_is_drawn_from_its_table_with_the_link_model_and_the_verdict(fault):
    data = figure_data.nccl_figure(fault)
    points = table_points(fault)
    assert [c.label.split(" (")[0] for c in data.curves] == list(points) == ["all_reduce.txt"]
    curve = data.curves[0]
    assert list(zip(curve.sizes, curve.busbw, strict=True)) == points["all_reduce.txt"]
    assert curve.sizes[0] == 1 << 20 and curve.busbw[-1] == 3.82 and curve.peak == 3.82  # fixture README
    assert curve.level == "fail" and "torch.distributed, 2 ranks on NVIDIA H200" in curve.label
    cause = fault["root_cause"]
    assert data.title == f"FAIL: {cause['cause']}" and "NCCL_P2P_DISABLE and NCCL_SHM_DISABLE" in data.title
    assert [(r.value, r.source) for r in data.references] == [(cause["expected"], cause["expected_source"])]
    assert data.references[0].value == 450.0 and "18 NVLinks x 25 GB/s" in data.references[0].label
    assert data.band == (compat.BUSBW_SHARE["good"] * 450.0, 450.0) and data.poor == compat.BUSBW_SHARE["poor"] * 450
    assert "H100/H200 SXM datasheet" in data.source and "README.md" not in data.source  # unrecognised: not data


def test_a_healthy_run_of_the_same_pair_is_laid_over_the_fault(fault, healthy):
    data = figure_data.nccl_figure(fault, [("healthy run", healthy)])
    assert [c.level for c in data.curves] == ["fail", "pass"]
    assert data.curves[0].label.startswith("this run: all_reduce.txt")
    assert data.curves[1].label.startswith("healthy run: nccl_tests.txt [all_reduce.txt] (nccl-tests, 2 ranks")
    over = table_points(healthy)["nccl_tests.txt [all_reduce.txt]"]
    assert list(zip(data.curves[1].sizes, data.curves[1].busbw, strict=True)) == over
    assert data.curves[1].peak == 314.25 and len(over) == 27  # 8 B .. 512 MiB, the README's figure
    assert len(data.references) == 1  # the same link: one reference line
    assert healthy["root_cause"]["level"] == "pass" and data.title.startswith("FAIL: ")


def test_one_rank_runs_and_missing_topologies_are_said_not_drawn():
    data = figure_data.nccl_figure(diagnosis(FIXTURES / "gpu" / "allreduce_1gpu.txt"))
    assert data.curves == () and data.references == () and data.band is None
    assert data.notes[0] == "allreduce_1gpu.txt: one rank, bus bandwidth is 0 by definition (not drawn)"
    assert "no link model figure" in data.notes[1] and "no topology given" in data.source


def test_nccl_test_json_and_rows_without_their_busbw_are_read(fault):
    outcome = {"runner": "torch", "reports": fault["files"], "root_cause": fault["root_cause"], "level": "fail"}
    for file in outcome["reports"]:
        for row in (file["facts"].get("rows") or []) if file["kind"] == "nccl-tests" else []:
            del row["busbw"]  # written before rows carried it
    assert figure_data.nccl_figure(outcome).curves == figure_data.nccl_figure(fault).curves


def test_overlays_come_from_json_records_or_files(tmp_path, fault):
    record = tmp_path / "nccl-1.json"
    record.write_text(json.dumps({"format": 1, "kind": "nccl", "data": fault}))
    bare = tmp_path / "fault.json"
    bare.write_text(json.dumps(fault))
    assert nccl_logs.diagnosis_for(str(record)) == nccl_logs.diagnosis_for(str(bare)) == fault
    assert nccl_logs.diagnosis_for(str(FAULT))["root_cause"] == fault["root_cause"]
    (tmp_path / "other.json").write_text(json.dumps({"ok": True}))
    with pytest.raises(ForgeError, match="is not an NCCL diagnosis"):
        nccl_logs.diagnosis_for(str(tmp_path / "other.json"))
    (tmp_path / "torn.json").write_text("{")
    with pytest.raises(ForgeError, match="is not valid JSON"):
        nccl_logs.diagnosis_for(str(tmp_path / "torn.json"))


# ---- check-size --image ------------------------------------------------------------------------------------------

BREAKDOWN = {"image": "vllm-forge/vllm:v0.26.0-cu130-sm120", "size": 21_400_000_000, "base": "nvidia/cuda:13.0.0-base",
             "base_size": 350_000_000, "over_base": 21_050_000_000, "budget_gb": 25.0, "ok": True,
             "parts": {"JIT toolchain": 1_900_000_000, "torch and its CUDA wheels": 15_100_000_000,
                       "vLLM and its other requirements": 3_700_000_000, "the rest": 350_000_000}}


def test_the_image_bar_is_its_base_then_each_part_and_the_field_report_beside_it():
    data = figure_data.size_figure(BREAKDOWN)
    image, *refs = data.bars
    assert image.segments == (("base nvidia/cuda:13.0.0-base", 350_000_000), *BREAKDOWN["parts"].items())
    assert image.total == BREAKDOWN["size"] == sum(size for _, size in image.segments) and not image.reference
    assert [(r.label, r.total, r.reference) for r in refs] == [("field report: single stage", 40 * GB, True),
                                                              ("field report: multi-stage", 28.4 * GB, True)]
    assert data.budget == 25 * GB
    assert data.title == ("vllm-forge/vllm:v0.26.0-cu130-sm120: 21.40 GB, 21.05 GB over its base "
                          "(within the 25 GB budget)")
    assert "docs/field-report.md: 28.4GB in docker images" in data.source


def test_named_references_replace_the_built_in_ones_and_an_unknown_base_is_said():
    refs = [figure_data.parse_reference("last release=31.5"), figure_data.parse_reference("a=b=2")]
    assert [(r.label, r.value) for r in refs] == [("last release", 31.5 * GB), ("a=b", 2 * GB)]
    no_base = {**BREAKDOWN, "base_size": None, "over_base": None, "budget_gb": 0, "ok": True}
    data = figure_data.size_figure(no_base, refs)
    assert [b.label for b in data.bars[1:]] == ["last release", "a=b"] and data.budget is None
    assert data.bars[0].segments[0] == ("base and unclassified (base not present locally)", 350_000_000)
    assert "is not present locally" in data.notes[0] and "over its base" not in data.title
    for bad in ("40", "=40", "x=", "x=-1", "x=big"):
        with pytest.raises(ForgeError, match="is not LABEL=GB"):
            figure_data.parse_reference(bad)


# ---- build-wheel --------------------------------------------------------------------------------------------------


def test_the_build_figure_is_the_records_slowest_units_and_archs():
    phases = build_times.parse_nvcc_time("u.cu , cicc , a , b , compute_90 , nvcc , 3 , s\n"
                                         "u.cu , ptxas , a , b , sm_80 , nvcc , 1 , s\n"
                                         "u.cu , fatbinary , a , b ,  , nvcc , 0.5 , s\n")
    log = ninja_log.read_ninja_log(FIXTURES / "gpu_real_build_0_26_0" / "ninja_log.txt")
    times = build_times.recorded(log, phases).record()
    times["ninja_log"] = "ninja_log.txt"
    data = figure_data.build_figure(times, "vllm 0.26.0")
    assert data.units == tuple((u["source"], u["target"], u["seconds"]) for u in times["slowest"])
    assert data.units[0] == ("csrc/libtorch_stable/quantization/cutlass_w4a8/w4a8_mm_entry.cu", "_C_stable_libtorch",
                             225.189)
    assert data.archs == (("sm_80", 1.0), ("sm_90", 3.0)) and data.shared_seconds == 0.5
    assert data.title == "vllm 0.26.0: 109 compile units, 7,449 CPU-seconds over 2 ninja sessions (a resumed build)"
    one = figure_data.build_figure({**times, "archs": times["archs"][:1]})
    assert one.archs == () and one.notes[-1] == "one arch built (sm_80): no per-arch comparison"


# ---- audit --------------------------------------------------------------------------------------------------------


def test_the_audit_map_is_each_files_verdict_per_gpu_with_group_counts(tmp_path):
    root = write_install(tmp_path, {"vllm/__init__.py": "from vllm import _C\ntry:\n    from vllm import _q_C\n"
                                                        "except ImportError:\n    pass\n"},
                         {"vllm/_C.abi3.so": ["sm_90a", "sm_120"], "vllm/fa/_fa2_C.abi3.so": ["sm_80", "compute_80"],
                          "vllm/_q_C.abi3.so": ["sm_100f"], "vllm/cumem.abi3.so": []})
    shutil.copy(FIXTURES / "gpu_tu_partial" / "libab.so", root / "libab.so")  # two groups, one for sm_90
    (root / "bad.so").write_bytes(b"\x7fELF" + b"\0" * 12)
    report = audit.audit_path(root, ["9.0", "rtx5090"]).to_dict()
    data = figure_data.audit_figure(report)
    assert data.targets == ("sm_90", "RTX 5090 (sm_120)")
    by_file = dict(zip(data.files, data.cells, strict=True))
    judged = {f["path"]: f for f in report["files"]}
    assert set(by_file) == {p for p, f in judged.items() if f["sass"] or f["ptx"] or f["error"]}  # cumem left out
    assert "1 file(s) without device code left out" in data.notes
    for path, cells in by_file.items():
        for target, cell in zip(report["target"], cells, strict=True):
            verdict, groups = judged[path]["verdict"][target], judged[path]["groups"].get(target, {})
            assert cell.groups == groups.get("count", 0) and cell.runnable == groups.get("count", 0) - groups.get(
                "none", 0)
            assert cell.category == ("unreadable" if judged[path]["error"] else "optional"
                                     if judged[path]["optional"] and verdict in ("none", "partial") else verdict)
    assert [c.category for c in by_file["vllm/_C.abi3.so"]] == ["native", "native"]
    assert [(c.category, c.text) for c in by_file["vllm/fa/_fa2_C.abi3.so"]] == [("ptx-jit", "1/1 (1 JIT)")] * 2
    assert [c.category for c in by_file["vllm/_q_C.abi3.so"]] == ["optional", "optional"]
    assert [(c.category, c.text) for c in by_file["libab.so"]] == [("partial", "1/2"), ("none", "0/2")]
    assert by_file["bad.so"][0].category == "unreadable"
    assert data.title.startswith("FAIL: kernels per file and GPU in ")


def test_a_required_file_without_device_code_is_a_none_cell():
    report = {"target": ["sm_90"], "gpu": {}, "ok": False, "source": "x", "files": [
        {"path": "a.so", "verdict": {"sm_90": "no-device-code"}, "groups": {}, "required": True, "error": None,
         "optional": None, "sass": [], "ptx": []}]}
    cell = figure_data.audit_figure(report).cells[0][0]
    assert (cell.category, cell.text) == ("none", "0/0")


def test_the_files_common_directory_is_named_once_in_the_title():
    files = [{"path": f"vllm-0.1.0-cp38-abi3-linux_x86_64.whl/vllm/{n}", "verdict": {"sm_90": "native"},
              "groups": {"sm_90": {"count": 1, "none": 0}}, "required": True, "error": None, "optional": None}
             for n in ("_C.abi3.so", "fa/_fa2_C.abi3.so")]
    data = figure_data.audit_figure({"target": ["sm_90"], "gpu": {}, "ok": True, "source": "dist", "files": files})
    assert data.prefix == "vllm-0.1.0-cp38-abi3-linux_x86_64.whl/vllm" and data.files == tuple(f["path"] for f in files)
    assert data.title == "OK: kernels per file and GPU in dist, vllm-0.1.0-cp38-abi3-linux_x86_64.whl/vllm/"
    one = figure_data.audit_figure({"target": ["sm_90"], "gpu": {}, "ok": True, "source": "x", "files": files[:1]})
    assert one.prefix == "" and one.title.endswith(" in x")


@pytest.mark.parametrize("spec, name", [("/data/h200x2_live/nccl_tests.txt,/data/h200x2_live/topo.txt",
                                         "h200x2_live/nccl_tests.txt +1"), ("fault.json", "fault.json"),
                                        ("build/reports/nccl-1.json", "reports/nccl-1.json")])
def test_an_overlay_is_named_by_its_first_file(spec, name):
    assert figure_data.overlay_name(spec) == name
