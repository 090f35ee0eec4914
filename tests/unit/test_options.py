"""Each option is declared once (core/config.py SETTINGS, cli/flags.py FLAGS); the task signatures, their help,
BuildConfig, DEFAULTS and the README's configuration table are made from those declarations."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from vllm_forge.cli.flags import FLAGS, task_options
from vllm_forge.core.config import DEFAULTS, SETTINGS, BuildConfig, resolve_config
from vllm_forge.core.options import duplicates, markdown_table


def test_no_task_gets_a_flag_twice():
    assert duplicates((*SETTINGS, *FLAGS)) == []


def test_buildconfig_and_defaults_are_the_settings():
    assert [f.name for f in dataclasses.fields(BuildConfig)] == [o.name for o in SETTINGS] == list(DEFAULTS)


def test_the_readme_table_is_the_declarations(repo_root):
    readme = (repo_root / "README.md").read_text()
    table = re.search(r"<!-- configuration table.*?-->\n(.*?)<!-- end configuration table -->", readme, re.S)
    assert table, "README.md lost its configuration table markers"
    assert table.group(1) == markdown_table(SETTINGS, FLAGS), "regenerate it with vllm_forge.core.options"


def test_every_option_of_every_task_has_help_that_says_what_it_takes(repo_root):
    import tasks
    from vllm_forge.cli.command_line import help_rows

    for name in tasks.ns.task_names:
        rows = help_rows(tasks.ns[name])
        assert len(rows) == len(task_options(name)), name
        for spec, text in rows:
            assert text.strip(), (name, spec)
            assert "STRING" not in spec and "=INT" not in spec, (name, spec)


@pytest.mark.parametrize("task", ["build-wheel", "wheel", "bake", "image"])
def test_cmake_args_is_one_declaration(repo_root, task):
    out = subprocess.run([sys.executable, "-m", "invoke", task, "--help"], cwd=repo_root, capture_output=True,
                         text=True, check=True).stdout
    assert "--cmake-args=ARGS" in out and "CMAKE_ARGS" in out
    assert resolve_config(None, {"cmake_args": "-DENABLE_MACHETE=OFF"}).config.cmake_args == "-DENABLE_MACHETE=OFF"


def test_cmake_args_reach_the_bake_build_args():
    from pathlib import Path

    from vllm_forge.gpu.archs import parse_arch_list
    from vllm_forge.image.build_args import knob_values
    from vllm_forge.image.request import BakeRequest

    request = BakeRequest(src=Path("."), archs=parse_arch_list("12.0"), cmake_args="-DENABLE_MACHETE=OFF")
    values = knob_values(request, parse_arch_list("12.0"), "base", "runtime", "forge", None)
    assert values["CMAKE_ARGS"] == "-DENABLE_MACHETE=OFF"
    plain = BakeRequest(src=Path("."), archs=parse_arch_list("12.0"))
    assert "CMAKE_ARGS" not in knob_values(plain, parse_arch_list("12.0"), "base", "runtime", "forge", None)
