"""vllm_forge/audit/vllm_extensions.py: required vs optional, read from a stand-in vLLM's own Python files, and
the audit's hook (only required extensions fail it; --require still overrides)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import pytest

from tests.unit.fake_vllm import write_install, write_wheel
from vllm_forge.audit import audit
from vllm_forge.audit import vllm_extensions as ext
from vllm_forge.core.errors import ForgeError

PYTHON = {
    "vllm/__init__.py": "from vllm.version import __version__\n",
    "vllm/version.py": "__version__ = '0.0.1'\n",
    "vllm/platforms/__init__.py": "",
    "vllm/platforms/cuda.py": (
        "import contextlib\n"
        "from typing import TYPE_CHECKING\n"
        "# import custom ops, trigger op registration\n"
        "import vllm._C  # noqa\n"
        "from vllm import ops\n"
        "\n"
        "with contextlib.suppress(ImportError):\n"
        "    import vllm._qutlass_C  # noqa\n"
        "if TYPE_CHECKING:\n"
        "    import vllm._never_C\n"
        "else:\n"
        "    import vllm._always_C\n"
        "\n"
        "class CudaPlatform:\n"
        "    @classmethod\n"
        "    def import_kernels(cls):\n"
        "        \"\"\"Import CUDA kernel extensions (_C, optional _moe_C).\"\"\"\n"
        "        with contextlib.suppress(ImportError):\n"
        "            import vllm._moe_C  # noqa: F401\n"
    ),
    "vllm/ops.py": (
        "import torch\n"
        "def moe_sum(x):\n"
        "    return torch.ops._moe_C.moe_sum(x)\n"
        "def matmul_mxf4(a, b):\n"
        "    return torch.ops._qutlass_C.matmul_mxf4_bf16_tn(a, b)\n"
    ),
    "vllm/attn/__init__.py": "",
    "vllm/attn/fa.py": (
        "try:\n"
        "    from . import _fa3_C  # noqa: F401\n"
        "    FA3_AVAILABLE = True\n"
        "except ImportError as e:\n"
        "    FA3_AVAILABLE = False\n"
        "\n"
        "# FlashMLA needs Hopper; without it MLA models use the Triton backend\n"
        "if current_platform.is_device_capability(90):\n"
        "    try:\n"
        "        import vllm._flashmla_C\n"
        "    except ImportError:\n"
        "        logger.warning('FlashMLA unavailable: MLA falls back to Triton')\n"
    ),
    "vllm/strict.py": (
        "try:\n"
        "    import vllm._strict_C\n"
        "except ImportError as err:\n"
        "    raise RuntimeError('rebuild vLLM') from err\n"
    ),
    "vllm/dg/__init__.py": "from . import _C\n",
    "vllm/dg/_C.py": (
        "import glob, os, torch\n"
        "torch.ops.load_library(glob.glob(os.path.join(os.path.dirname(__file__), '_C_extension*.so'))[0])\n"
    ),
    "vllm/utils_dg.py": (
        "import importlib\n"
        "def import_deep_gemm():\n"
        "    return importlib.import_module('vllm.dg')\n"
    ),
    "vllm/entrypoints/__init__.py": "",
    "vllm/entrypoints/openai/__init__.py": "",
    "vllm/entrypoints/openai/api_server.py": "import vllm.attn.fa\nimport vllm.strict\n",
}
EXTENSIONS = {
    "vllm/_C.abi3.so": ["sm_80", "sm_90a", "sm_120"],
    "vllm/_qutlass_C.abi3.so": ["sm_100f"],
    "vllm/_moe_C.abi3.so": ["sm_90a"],
    "vllm/attn/_fa3_C.abi3.so": ["sm_90a"],
    "vllm/_flashmla_C.abi3.so": ["sm_90a", "sm_100f"],
    "vllm/_strict_C.abi3.so": ["sm_80", "compute_80"],
    "vllm/dg/_C_extension.abi3.so": ["sm_90a"],
    "vllm/_orphan_C.abi3.so": ["sm_100f"],
    "vllm/_always_C.abi3.so": ["sm_80", "sm_90"],
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_FORGE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def install(tmp_path) -> Path:
    return write_install(tmp_path / "site", PYTHON, EXTENSIONS)


def by_module(report) -> dict[str, ext.Extension]:
    return {e.module: e for e in report.extensions}


def test_each_guard_is_read_from_the_source(install):
    found = by_module(ext.analyze(install / "vllm"))
    assert found["vllm._C"].required and "vllm/platforms/cuda.py:4" in found["vllm._C"].reason
    qutlass = found["vllm._qutlass_C"]
    assert not qutlass.required and "contextlib.suppress(ImportError)" in qutlass.reason
    assert any("matmul_mxf4" in lost for lost in qutlass.loses)  # the function that calls its ops
    moe = found["vllm._moe_C"]
    assert not moe.required and "lazy, in import_kernels()" in moe.reason
    assert any("optional _moe_C" in lost for lost in moe.loses)  # the docstring says so
    fa3 = found["vllm.attn._fa3_C"]  # `from . import _fa3_C` in a package module
    assert not fa3.required and "try/except ImportError" in fa3.reason
    assert "sets FA3_AVAILABLE = False" in fa3.loses
    flashmla = found["vllm._flashmla_C"]
    assert not flashmla.required and "if current_platform.is_device_capability(90)" in flashmla.reason
    assert any("MLA falls back to Triton" in lost for lost in flashmla.loses)  # the log message and the comment
    assert any("FlashMLA needs Hopper" in lost for lost in flashmla.loses)


def test_an_except_that_reraises_guards_nothing(install):
    strict = by_module(ext.analyze(install / "vllm"))["vllm._strict_C"]
    assert strict.required and "vllm/strict.py:2" in strict.reason


def test_a_library_loaded_by_file_name_is_judged_by_its_loader(install):
    dg = by_module(ext.analyze(install / "vllm"))["vllm.dg._C_extension"]
    assert not dg.required
    assert dg.sites[0].via == "vllm.dg._C" and "start-up does not import" in dg.reason


def test_an_extension_nothing_imports_stays_required(install):
    orphan = by_module(ext.analyze(install / "vllm"))["vllm._orphan_C"]
    assert orphan.required and "no import of it found" in orphan.reason


def test_type_checking_imports_are_no_sites_but_its_else_runs(install):
    report = ext.analyze(install)
    assert all(s.line != 10 for e in report.extensions for s in e.sites if s.path == "vllm/platforms/cuda.py")
    assert by_module(report)["vllm._always_C"].required


def test_a_start_up_module_makes_an_unconditional_import_required(tmp_path):
    python = dict(PYTHON)
    python["vllm/entrypoints/openai/api_server.py"] = "import vllm.dg\n"  # now start-up imports deep_gemm
    root = write_install(tmp_path / "site", python, EXTENSIONS)
    dg = by_module(ext.analyze(root))["vllm.dg._C_extension"]
    assert dg.required and "via vllm.dg._C" in dg.reason


def test_wheel_and_directories_agree(install, tmp_path):
    wheel = write_wheel(tmp_path / "vllm-0.0.1-cp38-abi3-linux_x86_64.whl", PYTHON, EXTENSIONS)
    from_wheel = ext.analyze(wheel)
    assert from_wheel.version == "0.0.1"
    for other in (ext.analyze(install), ext.analyze(install / "vllm")):
        assert [(e.path, e.required) for e in other.extensions] == [(e.path, e.required) for e in from_wheel.extensions]


def test_the_answer_is_cached_and_follows_the_files(install, tmp_path):
    first = ext.analyze(install)
    assert list((tmp_path / "cache" / "vllm-extensions").glob("*.json"))
    assert ext.analyze(install).to_dict()["extensions"] == first.to_dict()["extensions"]
    (install / "vllm/platforms/cuda.py").write_text("import vllm._C\nimport vllm._qutlass_C\n")
    assert by_module(ext.analyze(install))["vllm._qutlass_C"].required  # changed file, new answer


def test_not_a_vllm_install_is_one_line(tmp_path):
    with pytest.raises(ForgeError, match="not a vLLM install"):
        ext.analyze(tmp_path)
    with pytest.raises(ForgeError, match="does not exist"):
        ext.analyze(tmp_path / "nothing")


def test_cli_prints_required_and_optional(install, capsys):
    assert ext.main([str(install / "vllm")]) == 0
    out = capsys.readouterr().out
    assert "REQUIRED  vllm._C " in out and "optional  vllm._qutlass_C" in out
    assert ext.main([str(install), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {e["module"]: e["required"] for e in data["extensions"]}["vllm._moe_C"] is False


# ---- the audit's hook --------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["package", "site", "wheel", "dir-of-wheels"])
def test_audit_fails_only_for_required_extensions(install, tmp_path, layout):
    if layout == "package":
        path, prefix = install / "vllm", ""
    elif layout == "site":
        path, prefix = install, "vllm/"
    else:
        wheels = tmp_path / "dist"
        wheels.mkdir()
        wheel = write_wheel(wheels / "vllm-0.0.1-cp38-abi3-linux_x86_64.whl", PYTHON, EXTENSIONS)
        path, prefix = (wheel, "vllm/") if layout == "wheel" else (wheels, f"{wheel.name}/vllm/")
    report = audit.audit_path(path, ["9.0"])
    files = {f.path: f for f in report.files}
    qutlass = files[prefix + "_qutlass_C.abi3.so"]
    assert not qutlass.required and qutlass.ok and qutlass.optional
    assert audit.verdict_text(qutlass, "sm_90") == "optional, not usable on this GPU"
    assert files[prefix + "_C.abi3.so"].required
    assert files[prefix + "_orphan_C.abi3.so"].required  # nothing says it is optional: it still fails
    assert not report.ok
    assert any("_qutlass_C.abi3.so: optional, not usable on this GPU (sm_90; it carries sm_100f)" in n
               for n in report.notes())
    assert not any("rebuild it" in n and "_qutlass_C" in n for n in report.notes())


def test_audit_passes_when_only_optional_extensions_lack_kernels(tmp_path):
    extensions = {k: v for k, v in EXTENSIONS.items() if "orphan" not in k}
    root = write_install(tmp_path / "site", PYTHON, extensions)
    report = audit.audit_path(root / "vllm", ["9.0"])
    assert report.ok, audit.format_text(report)
    assert "not required without one" in report.summary()
    data = json.loads(report.to_json())
    assert next(f for f in data["files"] if f["path"] == "_qutlass_C.abi3.so")["optional"].startswith("guarded")
    # --require overrides: what the user names must run, whatever the package says
    forced = audit.audit_path(root / "vllm", ["9.0"], require=["*_qutlass_C*"])
    assert not forced.ok and not any(f.optional for f in forced.files)


def test_audit_of_a_plain_library_is_unchanged(tmp_path):
    lib = write_install(tmp_path, {}, {"libk.so": ["sm_100f"]}) / "libk.so"
    report = audit.audit_path(lib, ["9.0"])
    assert not report.ok and report.files[0].required and not report.files[0].optional


# ---- the analysis beside the kernel scan ---------------------------------------------------------------


def _count_runs(monkeypatch, tmp_path) -> Path:
    """A file that gets one line, the pid, per analysis: written by a forked child too, unlike a list."""
    runs = tmp_path / "runs.txt"
    real = ext.analyze_sources

    def counted(*args, **kwargs):
        with open(runs, "a") as out:
            out.write(f"{os.getpid()}\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(ext, "analyze_sources", counted)
    return runs


def _pids(runs: Path) -> list[int]:
    return [int(line) for line in runs.read_text().split()] if runs.exists() else []


@pytest.mark.parametrize("fork", [True, False], ids=["child process", "thread"])
def test_an_analysis_started_ahead_is_the_one_analyze_returns(tmp_path, monkeypatch, fork):
    wheel = write_wheel(tmp_path / "vllm-0.0.1-cp38-abi3-linux_x86_64.whl", PYTHON, EXTENSIONS)
    expected = ext.analyze(wheel, cache=False).to_dict()
    monkeypatch.setattr(ext, "may_fork", lambda: fork)
    runs = _count_runs(monkeypatch, tmp_path)
    ext.analyze_ahead(wheel)
    report = ext.analyze(str(wheel))
    assert report.to_dict() == {**expected, "source": str(wheel)}
    [pid] = _pids(runs)
    assert (pid != os.getpid()) is fork
    ext.analyze(wheel)  # the cache answers now (the child wrote it)
    assert len(_pids(runs)) == 1
    if fork:
        with pytest.raises(ChildProcessError):  # reaped: none left behind
            os.waitpid(pid, os.WNOHANG)


@pytest.mark.parametrize("fork", [True, False], ids=["child process", "thread"])
def test_an_error_ahead_is_raised_by_analyze(tmp_path, monkeypatch, fork):
    monkeypatch.setattr(ext, "may_fork", lambda: fork)
    wheel = write_wheel(tmp_path / "torch-2.0-cp38-abi3-linux_x86_64.whl", {"torch/__init__.py": ""}, {})
    ext.analyze_ahead(wheel)
    with pytest.raises(ForgeError, match="holds no vllm/ package") as raised:
        ext.analyze(wheel)
    assert str(raised.value) == str(pytest.raises(ForgeError, ext.analyze, wheel, cache=False).value)
    ext.analyze_ahead(tmp_path / "nothing.whl")  # never raises: analyze says what is wrong
    with pytest.raises(ForgeError, match="does not exist"):
        ext.analyze(tmp_path / "nothing.whl")


def test_a_child_that_dies_leaves_the_analysis_to_this_process(tmp_path, monkeypatch):
    wheel = write_wheel(tmp_path / "vllm-0.0.1-cp38-abi3-linux_x86_64.whl", PYTHON, EXTENSIONS)
    expected = ext.analyze(wheel, cache=False).to_dict()
    parent, real = os.getpid(), ext._analyze
    monkeypatch.setattr(ext, "may_fork", lambda: True)
    monkeypatch.setattr(ext, "_analyze", lambda *args: os._exit(9) if os.getpid() != parent else real(*args))
    ext.analyze_ahead(wheel)
    assert ext.analyze(wheel).to_dict() == {**expected, "source": str(wheel)}


def test_a_torn_answer_from_the_child_is_not_taken(tmp_path):
    wheel = write_wheel(tmp_path / "vllm-0.0.1-cp38-abi3-linux_x86_64.whl", PYTHON, EXTENSIONS)
    read_fd, write_fd = os.pipe()
    os.write(write_fd, pickle.dumps(ext.analyze(wheel, cache=False))[:40])  # cut short
    os.close(write_fd)
    pid = os.fork()
    if pid == 0:  # a child that is only there to be reaped
        os._exit(0)
    outcome: list = []
    ext._collect(wheel, pid, read_fd, outcome)
    assert outcome[0].to_dict() == ext.analyze(wheel, cache=False).to_dict()


def test_no_fork_while_another_thread_runs(tmp_path):
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        assert not ext.may_fork()
    finally:
        release.set()
        other.join()
    assert ext.may_fork() is (sys.platform.startswith("linux") and threading.active_count() == 1)


def test_the_audit_starts_the_analysis_before_it_reads_the_kernels(tmp_path, monkeypatch):
    wheel = write_wheel(tmp_path / "vllm-0.0.1-cp38-abi3-linux_x86_64.whl", PYTHON, EXTENSIONS)
    order = []
    real_ahead, real_scan = ext.analyze_ahead, audit.scan
    monkeypatch.setattr(ext, "analyze_ahead", lambda path: order.append(("ahead", path)) or real_ahead(path))
    monkeypatch.setattr(audit, "scan", lambda *args: order.append(("scan", args[0])) or real_scan(*args))
    report = audit.audit_path(wheel, ["9.0"])
    assert order == [("ahead", wheel), ("scan", wheel)]
    assert not {f.path: f for f in report.files}["vllm/_qutlass_C.abi3.so"].required
    order.clear()
    audit.audit_path(wheel, ["9.0"], require=["*"])  # --require: nothing to read
    assert order == [("scan", wheel)]


# ---- the cache: a speed-up only ------------------------------------------------------------------------


def _entries(tmp_path) -> list:
    return sorted((tmp_path / "cache" / "vllm-extensions").glob("*.json"))


def _wheel(tmp_path, name="vllm-0.0.1-cp38-abi3-linux_x86_64.whl", python=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return write_wheel(tmp_path / name, python or PYTHON, EXTENSIONS)


@pytest.mark.parametrize("damage", ["torn", "garbage", "empty", "edited", "another wheel's", "a directory"])
def test_a_damaged_cache_entry_never_changes_the_answer(tmp_path, damage):
    wheel = _wheel(tmp_path)
    expected = ext.analyze(wheel).to_dict()
    [entry] = _entries(tmp_path)
    if damage == "torn":
        entry.write_text(entry.read_text()[:200])
    elif damage == "garbage":
        entry.write_bytes(bytes(range(256)))
    elif damage == "empty":
        entry.write_text("")
    elif damage == "edited":  # well-formed, and it would flip the answer
        data = json.loads(entry.read_text())
        for found in data["report"]["extensions"]:
            found["required"] = not found["required"]
        entry.write_text(json.dumps(data))
    elif damage == "another wheel's":  # a whole entry, in the wrong place
        other = _wheel(tmp_path / "other", python={**PYTHON, "vllm/platforms/cuda.py": "import vllm._qutlass_C\n"})
        ext.analyze(other)
        [theirs] = [e for e in _entries(tmp_path) if e != entry]
        entry.write_text(theirs.read_text())
    else:
        entry.unlink()
        entry.mkdir()
    assert ext.analyze(wheel).to_dict() == expected


def _analyze_as(wheel, ahead: bool):
    """The audit's way (started ahead: a forked child where it may) or a plain in-process analysis."""
    if ahead:
        ext.analyze_ahead(wheel)
    return ext.analyze(wheel).to_dict()


@pytest.mark.parametrize("ahead", [False, True], ids=["in process", "in a child"])
@pytest.mark.parametrize("how", ["a file where the directory goes", "a read-only file system"])
def test_a_cache_that_cannot_be_written_costs_time_only(tmp_path, monkeypatch, how, ahead):
    wheel = _wheel(tmp_path)
    expected = ext.analyze(wheel, cache=False).to_dict()
    monkeypatch.setattr(ext, "may_fork", lambda: True)
    if how == "a file where the directory goes":
        (tmp_path / "cache").write_text("not a directory")
        for _ in range(2):
            assert _analyze_as(wheel, ahead) == {**expected, "source": str(wheel)}
        return
    real_write = Path.write_text

    def refuse(self, *args, **kwargs):
        real_write(self, "{")  # the file system takes the first block, then says no
        raise OSError(errno.EROFS, "Read-only file system")

    with mock.patch.object(Path, "write_text", refuse):
        for _ in range(2):
            assert _analyze_as(wheel, ahead) == {**expected, "source": str(wheel)}
    assert ext.cache_usage() == ext.CacheUsage(tmp_path / "cache" / "vllm-extensions", 0, 0)  # nothing torn left


def test_a_moved_wheel_is_answered_from_the_cache_and_a_changed_one_is_not(tmp_path, monkeypatch):
    staged = _wheel(tmp_path / "dist" / ".staging")
    expected = ext.analyze(staged).to_dict()
    published = tmp_path / "dist" / staged.name
    staged.rename(published)  # what build-wheel does after its own audit
    real = ext.analyze_sources
    monkeypatch.setattr(ext, "analyze_sources", lambda *args: pytest.fail("analysed again"))
    assert ext.analyze(published).to_dict() == {**expected, "source": str(published)}
    monkeypatch.setattr(ext, "analyze_sources", real)
    _wheel(tmp_path / "dist", python={**PYTHON, "vllm/platforms/cuda.py": "import vllm._C\nimport vllm._qutlass_C\n"})
    assert by_module(ext.analyze(published))["vllm._qutlass_C"].required


def test_the_cache_keeps_under_its_limit_dropping_the_least_recently_used(tmp_path, monkeypatch):
    wheels = [_wheel(tmp_path / str(i), python={**PYTHON, f"vllm/x{i}.py": ""}) for i in range(6)]
    ext.analyze(wheels[0])
    size = ext.cache_usage().bytes
    monkeypatch.setattr(ext, "CACHE_LIMIT", int(size * 3.5))
    for wheel in wheels[1:]:
        ext.analyze(wheels[0])  # read: the most recently used
        ext.analyze(wheel)
    usage = ext.cache_usage()
    assert usage.bytes <= ext.CACHE_LIMIT and usage.entries == 3
    monkeypatch.setattr(ext, "analyze_sources", lambda *args: pytest.fail("analysed again"))
    ext.analyze(wheels[0])
    ext.analyze(wheels[-1])


def test_cache_usage_reports_and_clear_cache_empties_it(tmp_path):
    assert ext.cache_usage() == ext.CacheUsage(tmp_path / "cache" / "vllm-extensions", 0, 0)
    ext.analyze(_wheel(tmp_path))
    (tmp_path / "cache" / "vllm-extensions" / "0123.json.99.1").write_text("{")  # a write cut short
    usage = ext.cache_usage()
    assert usage.entries == 1 and usage.bytes == sum(p.stat().st_size for p in usage.path.iterdir())
    assert str(usage.path) in usage.describe() and "1 vLLM import analyses" in usage.describe()
    assert ext.clear_cache() == usage.bytes
    assert ext.cache_usage().bytes == 0


def test_invoke_audit_starts_the_analysis_before_any_thread_of_its_own(tmp_path, monkeypatch, capsys):
    """Without --json the audit shows a spinner (a thread); a fork after it would be unsafe, so the analysis
    would run in a thread and hold the GIL against the scan. The task asks for it first."""
    import invoke

    import tasks

    wheel = write_wheel(tmp_path / "vllm-0.0.1-cp38-abi3-linux_x86_64.whl", PYTHON, EXTENSIONS)
    threads_before = threading.active_count()
    asked: list[tuple[str, int]] = []
    real = ext.analyze_ahead
    monkeypatch.setattr(ext, "analyze_ahead", lambda path: asked.append((str(path), threading.active_count()))
                        or real(path))
    monkeypatch.setenv("VLLM_FORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    program = invoke.Program(namespace=tasks.ns)
    with pytest.raises(SystemExit):  # the stand-in wheel carries no kernels for 9.0: exit 1
        program.run(["invoke", "audit", str(wheel), "--arch", "9.0", "--no-torch"])
    assert asked and asked[0] == (str(wheel), threads_before)
    assert "_qutlass_C" in capsys.readouterr().out


def test_the_scan_leaves_the_analysing_child_its_core(tmp_path, monkeypatch):
    wheel = write_wheel(tmp_path / "vllm-0.0.1-cp38-abi3-linux_x86_64.whl", PYTHON, EXTENSIONS)
    monkeypatch.setattr(ext, "may_fork", lambda: True)
    asked = []
    real_scan = audit.scan
    monkeypatch.setattr(audit, "scan", lambda path, budget, held=audit.NOTHING_HELD: asked.append(
        (held.cores, held.free is ext.CHILDREN_DONE)) or real_scan(path, budget, held))
    monkeypatch.setattr(ext, "_analyze", lambda *args, real=ext._analyze: time.sleep(0.3) or real(*args))
    audit.audit_path(wheel, ["9.0"])
    assert asked == [(1, True)] and ext.CHILDREN_DONE.is_set() and ext.analyses_in_children() == 0
    audit.audit_path(wheel, ["9.0"], require=["*"])  # no analysis: nothing held
    assert asked[-1] == (0, False)


def test_threads_held_for_a_busy_core_start_once_it_is_free():
    free = threading.Event()
    started: list[tuple[str, int]] = []

    def work(item):
        started.append((threading.current_thread().name, item))
        if item == 0:
            time.sleep(0.1)
            assert all(i == 0 for _, i in started)  # the held thread took nothing while the core was busy
            free.set()
            time.sleep(0.1)
        return item * 10

    results = audit.side_by_side([0, 1, 2, 3], work, 2, audit.Held(1, free))
    assert results == [0, 10, 20, 30]
    assert len({name for name, _ in started}) == 2  # the held thread took items once free


def test_a_held_thread_ends_when_nothing_is_left_and_errors_reach_the_caller():
    never = threading.Event()
    assert audit.side_by_side([1, 2], lambda x: x + 1, 2, audit.Held(1, never)) == [2, 3]  # returns: not held forever
    with pytest.raises(ZeroDivisionError):
        audit.side_by_side([1, 0, 2], lambda x: 1 / x, 2)


def test_a_wheel_the_cache_answers_for_starts_no_child(tmp_path, monkeypatch):
    wheel = write_wheel(tmp_path / "vllm-0.0.1-cp38-abi3-linux_x86_64.whl", PYTHON, EXTENSIONS)
    monkeypatch.setenv("VLLM_FORGE_CACHE", str(tmp_path / "cache"))
    expected = ext.analyze(wheel).to_dict()  # writes the entry
    monkeypatch.setattr(ext, "may_fork", lambda: True)
    forks = []
    monkeypatch.setattr(ext, "_forked", lambda *args: forks.append(args))
    ext.analyze_ahead(wheel)
    assert forks == [] and ext.analyses_in_children() == 0
    assert ext.analyze(wheel).to_dict() == expected
