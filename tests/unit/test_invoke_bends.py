"""Every bend into invoke lives in vllm_forge/cli/_invoke.py, each held here against the invoke behaviour it
works around: an invoke upgrade that changes one fails here (not quietly in a user's terminal), and so does a
private invoke name anywhere else in the product."""

from __future__ import annotations

import hashlib
import inspect
import re
import sys

import invoke
import pytest
from invoke import Config, Task
from invoke.parser.parser import ParseMachine

from vllm_forge.cli import _invoke

# sha256 of `inspect.getsource(ParseMachine.complete_context)` in invoke 3.0.3, before _invoke.py wraps it.
COMPLETE_CONTEXT_SHA256 = "fba382f0b1987dfd88c82aaf45ecd0adc3eee9475db229cd17d3da554bfd1c1f"

# Names of invoke's that are not its public API, and the strings that reach them.
PRIVATE = re.compile(r"ParseMachine|complete_context|invoke\.vendor|invoke\.util|invoke\.parser|\"_(runtime|env|"
                     r"project|user|system)\"|arg_opts|get_arguments")


def test_invoke_is_the_pinned_version(repo_root):
    pin = re.search(r"^invoke==(\S+)$", (repo_root / "requirements.txt").read_text(), re.M)
    assert pin, "requirements.txt must pin invoke exactly"
    assert invoke.__version__ == pin.group(1)


def test_1_the_wrapped_method_is_the_one_checked():
    method = ParseMachine.complete_context
    original = method.__defaults__[0] if getattr(method, "forge_wrapped", False) else method
    assert hashlib.sha256(inspect.getsource(original).encode()).hexdigest() == COMPLETE_CONTEXT_SHA256


def test_1_an_optional_positional_is_filled_with_empty(repo_root, monkeypatch):
    import tasks

    line = _parse(monkeypatch, tasks.ns, ["audit", "--image", "img"])
    assert line.error == "" and line.tasks_given()[0][1]["path"] == ""


def test_2_the_layers_name_the_source(tmp_path, monkeypatch):
    (tmp_path / "invoke.yaml").write_text("forge:\n  arch: '9.0'\n  bogus: 1\n")
    monkeypatch.setenv("INVOKE_FORGE_CUDA", "12.9")
    config = Config(project_location=str(tmp_path))
    config.load_collection({"forge": {"arch": "12.0", "cuda": "", "mirror": "global"}})
    config.load_project()
    config.load_shell_env()
    layers = _invoke.config_layers(config)
    assert layers.forge["arch"] == "9.0" and layers.sources["arch"] == "invoke.yaml"
    assert layers.sources["cuda"] == "environment (INVOKE_FORGE_*)" and "mirror" not in layers.sources
    assert layers.project_keys == {"arch", "bogus"}


def test_3_invoke_yaml_is_read_with_invokes_yaml(tmp_path):
    (tmp_path / "invoke.yaml").write_text("forge:\n  arch: [\n")
    with pytest.raises(_invoke.yaml_error()):
        _invoke.project_yaml(tmp_path / "invoke.yaml")
    (tmp_path / "invoke.yaml").write_text("forge:\n  arch: '9.0'\n")
    assert _invoke.project_yaml(tmp_path / "invoke.yaml") == {"forge": {"arch": "9.0"}}


def test_4_files_task_declares_one_positional_per_word(repo_root, monkeypatch):
    import tasks

    monkeypatch.setattr(sys, "argv", ["invoke", "nccl-diagnose", "a.log", "--gpu-cap", "12.0", "b.log", "c.log"])
    names = [a.name for a in tasks.ns["nccl-diagnose"].get_arguments() if a.positional]
    assert names == ["files", "files_2", "files_3"]


def test_5_a_typo_is_invokes_parse_error(repo_root, monkeypatch):
    import tasks

    line = _parse(monkeypatch, tasks.ns, ["build-weel"])
    assert line.parsed is None and "No idea what 'build-weel' is" in line.error
    line = _parse(monkeypatch, tasks.ns, ["serve"])
    assert "'serve' did not receive required positional arguments: 'model'" in line.error
    line = _parse(monkeypatch, tasks.ns, ["clone", "--help"])
    assert line.core_value("help") == "clone"  # invoke hands --help after a task the task's name


def test_6_invoke_pops_help_and_the_bend_keeps_it():
    def body(ctx, arch=None):
        pass

    plain = Task(body, help={"arch": "target GPUs"})
    assert [a.help for a in plain.get_arguments()] == ["target GPUs"]
    assert [a.help for a in plain.get_arguments()] == [None]  # invoke's arg_opts popped it: the bend is needed
    kept = _invoke.HelpKeepingTask(body, help={"arch": "target GPUs"})
    assert [a.help for a in kept.get_arguments()] == [a.help for a in kept.get_arguments()] == ["target GPUs"]


def test_no_private_invoke_name_outside_the_bends_module(repo_root):
    sources = [repo_root / "tasks.py", repo_root / "noxfile.py", *(repo_root / "vllm_forge").rglob("*.py")]
    found = [f"{path.relative_to(repo_root)}:{n}" for path in sources if path.name != "_invoke.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if PRIVATE.search(line)]
    assert found == []
    assert (repo_root / "vllm_forge/cli/_invoke.py").read_text().count("ParseMachine.complete_context =") == 1


def _parse(monkeypatch, namespace, argv: list[str]) -> _invoke.CommandLine:
    monkeypatch.setattr(sys, "argv", ["invoke", *argv])
    return _invoke.parse_command_line(namespace)
