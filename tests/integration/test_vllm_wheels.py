"""Required vs optional extensions of the real vLLM 0.26.0, 0.33.0 and 0.34.0 wheels from PyPI, and the audit
that follows from it (the H200 case of tests/fixtures/gpu_real_vllm: `_qutlass_C` carries only sm_100f).

The wheels (about 300 MB each) are fetched once with `pip download --no-deps` into the vllm-forge cache
(``~/.cache/vllm-forge/wheels``, under ``$VLLM_FORGE_CACHE`` when set; ``nox -s clean`` removes it) and kept
there, outside the repo. Only
their ``.py`` members are inflated for the import analysis; the audit streams the ``.so`` members.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT, require_tool

from vllm_forge.audit import audit
from vllm_forge.audit import vllm_extensions as ext
from vllm_forge.core import forge_cache

pytestmark = [pytest.mark.integration, pytest.mark.network]
RECORDED = REPO_ROOT / "tests" / "fixtures" / "gpu_real_vllm" / "audit_fullwheel.txt"
ANSWERS = REPO_ROOT / "tests" / "fixtures" / "vllm_extensions_answers"  # what the analysis said before issue 33


def wheel_cache() -> Path:
    return forge_cache.root() / "wheels"


def vllm_wheel(version: str) -> Path:
    cache = wheel_cache()
    found = sorted(cache.glob(f"vllm-{version}-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
         "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "-d", str(cache),
         f"vllm=={version}"], capture_output=True, text=True, timeout=1800)
    found = sorted(cache.glob(f"vllm-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        require_tool(f"vllm {version} from PyPI ({(proc.stderr or proc.stdout).strip()[-200:]})", False)
    return found[0]


@pytest.fixture(scope="module")
def wheel_0_26() -> Path:
    return vllm_wheel("0.26.0")


@pytest.fixture(scope="module")
def wheel_0_33() -> Path:
    return vllm_wheel("0.33.0")


@pytest.mark.parametrize("version", ["0.26.0", "0.33.0", "0.34.0"])
def test_the_answer_is_the_recorded_one_and_little_is_parsed(version, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_FORGE_CACHE", str(tmp_path / "cache"))  # a first audit: nothing cached
    recorded = json.loads((ANSWERS / f"vllm-{version}.json").read_text())
    parsed = []
    real_parse = ast.parse
    monkeypatch.setattr(ext.ast, "parse", lambda text, *args, **kwargs: parsed.append(len(text.lstrip("\n")))
                        or real_parse(text, *args, **kwargs))
    found = ext.analyze(vllm_wheel(version)).to_dict()
    found.pop("source")
    assert {e["path"]: e["required"] for e in found["extensions"]} == \
        {e["path"]: e["required"] for e in recorded["extensions"]}
    assert found == recorded  # every reason, site and "without it" line too
    with zipfile.ZipFile(vllm_wheel(version)) as zf:
        python = sum(i.file_size for i in zf.infolist() if i.filename.startswith("vllm/")
                     and i.filename.endswith(".py"))
    assert sum(parsed) < python / 50  # parsing every start-up module was a fifth of it


@pytest.mark.parametrize("version", ["0.33.0", "0.34.0"])
def test_a_first_audit_stays_under_150_mib(version, tmp_path):
    """The audit's own peak RSS (a small wrapper starts it, so it inherits no large parent's high-water mark)."""
    wrapper = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)"
               ".returncode; print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "vllm_forge.audit.audit",
                           str(vllm_wheel(version)), "--arch", "9.0", "--json", "--no-torch"],
                          env={**os.environ, "VLLM_FORGE_CACHE": str(tmp_path)}, cwd=REPO_ROOT, capture_output=True,
                          text=True,
                          timeout=600)
    code, peak = (int(word) for word in done.stdout.split())
    assert code in (0, 1), done.stderr
    assert peak * 1024 <= 150 << 20
    assert len(list((tmp_path / "vllm-extensions").glob("*.json"))) == 1  # the analysis ran: the cache was empty


def modules(report) -> dict[str, ext.Extension]:
    return {e.module: e for e in report.extensions}


def test_0_26_needs_only_its_core_ops(wheel_0_26):
    report = ext.analyze(wheel_0_26)
    assert report.version == "0.26.0"
    found = modules(report)
    assert sorted(m for m, e in found.items() if e.required) == ["vllm._C_stable_libtorch"]
    assert "vllm/platforms/cuda.py:23" in found["vllm._C_stable_libtorch"].reason
    qutlass = found["vllm._qutlass_C"]
    assert "contextlib.suppress(ImportError)" in qutlass.reason
    assert any("matmul_mxf4_bf16_tn" in lost for lost in qutlass.loses)
    fa3 = found["vllm.vllm_flash_attn._vllm_fa3_C"]
    assert "try/except ImportError" in fa3.reason and "sets FA3_AVAILABLE = False" in fa3.loses
    assert "if current_platform.is_cuda()" in found["vllm._flashmla_extension_C"].reason
    assert "lazy, in import_kernels()" in found["vllm._moe_C_stable_libtorch"].reason


def test_0_33_needs_only_its_core_ops(wheel_0_33):
    found = modules(ext.analyze(wheel_0_33))
    assert sorted(m for m, e in found.items() if e.required) == ["vllm._C_stable_libtorch"]
    deepselect = found["vllm._deepselect_C"]
    assert "try/except ImportError" in deepselect.reason and "sets _HAS_DEEP_SELECT_C = False" in deepselect.loses
    deep_gemm = found["vllm.third_party.deep_gemm._C_extension"]  # torch.ops.load_library by file name
    assert deep_gemm.sites and deep_gemm.sites[0].via == "vllm.third_party.deep_gemm._C"
    assert "lazy" in found["vllm._flashkda_C"].reason


def recorded_rows() -> dict[str, tuple[list[str], list[str]]]:
    """file -> (SASS, PTX) as the audit printed them for the unmodified wheel (audit_fullwheel.txt)."""
    rows = {}
    for line in RECORDED.read_text().splitlines():
        if line.startswith("vllm/"):
            cells = re.split(r"\s{2,}", line.strip())
            rows[cells[0]] = ([] if cells[1] == "-" else cells[1].split(), [] if cells[2] == "-" else cells[2].split())
    return rows


def test_0_26_on_an_h200_is_ok_and_says_what_is_optional(wheel_0_26):
    report = audit.audit_path(wheel_0_26, ["9.0"], torch=False)
    files = {f.path: f for f in report.files}
    for path, (sass, ptx) in recorded_rows().items():  # the same device code as recorded on the GPU host
        assert (audit.sort_archs(files[path].sass), audit.sort_archs(files[path].ptx)) == (sass, ptx), path
    assert report.ok, audit.format_text(report)  # recorded: FAIL, exit 1
    qutlass = files["vllm/_qutlass_C.abi3.so"]
    assert audit.verdict_text(qutlass, "sm_90") == "optional, not usable on this GPU"
    assert "1 not required without one" in report.summary()
    forced = audit.audit_path(wheel_0_26, ["9.0"], require=["*_qutlass_C*"], torch=False)
    assert not forced.ok


def test_0_33_on_an_rtx_5090_and_an_a100(wheel_0_33):
    for arch, unusable in (("12.0", "vllm/vllm_flash_attn/_vllm_fa3_C.abi3.so"),
                           ("8.0", "vllm/_qutlass_C.abi3.so")):
        report = audit.audit_path(wheel_0_33, [arch], torch=False)
        assert report.ok, audit.format_text(report)
        target = report.target_names[0]
        assert audit.verdict_text({f.path: f for f in report.files}[unusable], target) == \
            "optional, not usable on this GPU"
        required = [f.path for f in report.files if f.required]
        assert required == ["vllm/_C_stable_libtorch.abi3.so"]
