"""`invoke serve`: vLLM's own flags pass through (first-class, --vllm-args, after `--`, invoke.yaml
forge.serve) to the container, the --local process and the compose file; a failed server's error names
the first real error in its log (replayed from tests/fixtures/gpu_real_vllm)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vllm_forge.core.errors import ForgeError
from vllm_forge.serve import serve

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gpu_real_vllm"


def req(**kw) -> serve.ServeRequest:
    kw.setdefault("model", "Qwen/Qwen2.5-0.5B-Instruct")
    kw.setdefault("image", "vllm-forge/vllm:test")
    kw.setdefault("env", {})
    return serve.ServeRequest(**kw)


FLAGS = dict(max_model_len=512, gpu_memory_utilization=0.2, served_model_name="tiny",
             extra_args=["--enforce-eager", "--chat-template", "{{ messages }}"])
EXPECTED_TAIL = ["--served-model-name", "tiny", "--max-model-len", "512", "--gpu-memory-utilization", "0.2",
                 "--enforce-eager", "--chat-template", "{{ messages }}"]


def test_flags_reach_the_container_the_local_server_and_compose():
    docker = serve.plan_serve(req(**FLAGS)).argv
    image_at = docker.index("vllm-forge/vllm:test")
    assert docker[image_at + 1:][-len(EXPECTED_TAIL):] == EXPECTED_TAIL  # after the image: the server's argv
    local = serve.plan_serve(req(local=True, image="", **FLAGS)).argv
    assert local[-len(EXPECTED_TAIL):] == EXPECTED_TAIL
    compose = serve.compose_file(req(**FLAGS))
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(compose)["services"]["vllm-forge-serve"]["command"][-len(EXPECTED_TAIL):] == EXPECTED_TAIL


def test_no_flag_means_vllms_own_default():
    argv = serve.plan_serve(req()).argv
    assert "--max-model-len" not in argv and "--gpu-memory-utilization" not in argv


def test_the_api_key_stays_out_of_argv():
    command = serve.plan_serve(req(api_key="s3cret", **FLAGS))
    assert "s3cret" not in " ".join(command.argv) and command.env == {"VLLM_API_KEY": "s3cret"}
    assert "s3cret" not in command.shell()


@pytest.mark.parametrize("extra, match", [
    (["--api-key", "k"], "--api-key, which invoke serve manages.*environment"),
    (["--api_key=k"], "--api-key, which invoke serve manages"),
    (["--port", "9000"], "--port.*invoke serve --port"),
    (["--tensor-parallel-size=2"], "invoke serve --tp"),
    (["--model", "x"], "invoke serve --model"),
    (["--max-model-len", "9"], "--max-model-len is given twice"),
    (["--gpu_memory_utilization=0.5"], "--gpu-memory-utilization is given twice"),
    (["Qwen/Qwen3-8B"], "not a flag"),
])
def test_pass_through_may_not_contradict_what_serve_manages(extra, match):
    with pytest.raises(ForgeError, match=match):
        serve.plan_serve(req(max_model_len=512, gpu_memory_utilization=0.3, extra_args=extra))


@pytest.mark.parametrize("kw, match", [
    ({"gpu_memory_utilization": 1.5}, "not a fraction"),
    ({"gpu_memory_utilization": -0.1}, "not a fraction"),
    ({"max_model_len": -1}, "negative"),
])
def test_bad_values_are_one_line(kw, match):
    with pytest.raises(ForgeError, match=match):
        serve.plan_serve(req(**kw))


def test_vllm_args_keep_shell_quoting():
    assert serve.split_vllm_args("--enforce-eager --chat-template '{{ a b }}'") == [
        "--enforce-eager", "--chat-template", "{{ a b }}"]
    assert serve.split_vllm_args(["--dtype", "bfloat16"]) == ["--dtype", "bfloat16"]
    assert serve.split_vllm_args("") == []
    with pytest.raises(ForgeError, match="cannot be split"):
        serve.split_vllm_args("--chat-template 'unclosed")


def test_invoke_yaml_serve_section():
    settings = serve.serve_settings({"forge": {"serve": {"max_model_len": "4096", "gpu_memory_utilization": 0.5,
                                                         "vllm_args": "--enforce-eager --dtype half"}}})
    assert settings == {"max_model_len": 4096, "gpu_memory_utilization": 0.5,
                        "vllm_args": ["--enforce-eager", "--dtype", "half"]}
    assert serve.serve_settings({"forge": {}}) == {} and serve.serve_settings(None) == {}
    with pytest.raises(ForgeError, match="unknown key.*max_len"):
        serve.serve_settings({"forge": {"serve": {"max_len": 1}}})
    with pytest.raises(ForgeError, match="must be numbers"):
        serve.serve_settings({"forge": {"serve": {"max_model_len": "lots"}}})
    with pytest.raises(ForgeError, match="must be a mapping"):
        serve.serve_settings({"forge": {"serve": "--enforce-eager"}})


# ---- the first real error in a server's log -------------------------------------------------------------


def test_a_healthy_log_has_no_error():
    """The recorded log of the run that served: its ulimit WARNING mentions `OSError: [Errno 24]`."""
    text = (FIXTURE / "serverlog.txt").read_text()
    assert "OSError: [Errno 24]" in text
    assert serve.first_error(text) == ""


def recorded_attempts() -> list[dict]:
    """Each failed `invoke serve --local` of attempts.txt: the device run, the line the project printed
    ("last line: ..."), and the root cause lines recorded from its log."""
    attempts = []
    for block in re.split(r"^== attempt ", (FIXTURE / "attempts.txt").read_text(), flags=re.M)[1:]:
        run = int(re.match(r"\(device run (\d+)\)", block).group(1))
        last = re.search(r"last line: (.*?); full log:", block).group(1)
        causes = re.findall(r"^  (\(EngineCore pid=\d+\) ERROR .*)$", block, re.M)
        attempts.append({"run": run, "last": last, "causes": causes})
    for line in (FIXTURE / "attempts.txt").read_text().splitlines():
        m = re.match(r"\s+\(device run (\d+): root cause\) (.*)$", line)
        if m:
            next(a for a in attempts if a["run"] == int(m.group(1)))["causes"].append(m.group(2))
    return attempts


def _frames(prefix: str, *frames: str) -> list[str]:
    out = [f"{prefix}Traceback (most recent call last):"]
    for frame in frames:
        out += [f'{prefix}  File "/tmp/site/{frame}", line 1, in <module>', f"{prefix}    import something"]
    return out


def failing_log(attempt: dict) -> str:
    """The recorded start of a real log (serverlog.txt, up to the engine start) and a traceback ending in the
    recorded lines. The failed runs' whole logs were not recorded: only these lines were (attempts.txt)."""
    start = (FIXTURE / "serverlog.txt").read_text().splitlines()[:14]
    api = "(APIServer pid=1900) "
    last = attempt["last"]
    if attempt["run"] == 8:  # EngineCore logs the cause with logger.exception, then the APIServer gives up
        cause = attempt["causes"][0]
        head = cause.split("] ", 1)[0] + "] "
        body = [head + "EngineCore failed to start."] + _frames(head, "vllm/v1/engine/core.py",
                                                               "vllm/v1/sample/sampler.py") + [cause]
        body += _frames(api, "vllm/entrypoints/openai/api_server.py", "vllm/v1/engine/utils.py") + [last]
    elif attempt["causes"]:  # a chained exception: Python prints the cause first
        body = _frames(api, "mistral_common/tokens.py") + [api + attempt["causes"][0], api,
                                                           api + "The above exception was the direct cause of the "
                                                           "following exception:", api]
        body += _frames(api, "transformers/utils/import_utils.py") + [api + last]
    else:
        body = _frames(api, "xgrammar/__init__.py") + [api + last]
    return "\n".join(start + body) + "\n"


@pytest.mark.parametrize("attempt", recorded_attempts(), ids=lambda a: f"run{a['run']}")
def test_recorded_failures_name_their_first_error(attempt, tmp_path):
    log = tmp_path / "vllm-forge-serve.log"
    log.write_text(failing_log(attempt))
    said = serve.describe_log(log.read_text(), log)
    expected = {5: "ModuleNotFoundError: No module named 'pycountry'",
                6: "ModuleNotFoundError: No module named 'tvm_ffi'",
                7: "TypeError: load_lib_module() got an unexpected keyword argument 'extra_lib_paths'",
                8: "ModuleNotFoundError: No module named 'flashinfer'"}[attempt["run"]]
    assert said == f"first error: {expected}; full log: {log}"
    if attempt["run"] in (5, 8):  # what the project printed then was not the cause
        assert expected not in attempt["last"]
    if "No module named" in expected:
        assert "install what provides the module" in serve.failure_fix(said)


def test_no_traceback_falls_back_to_an_error_line_then_the_last_line():
    assert serve.first_error("INFO starting\nRuntimeError: CUDA error: out of memory\nbye\n") == \
        "RuntimeError: CUDA error: out of memory"
    assert serve.describe_log("INFO starting\nKilled\n", None) == "last line: Killed"
    assert "--gpu-memory-utilization" in serve.failure_fix("torch.OutOfMemoryError: CUDA out of memory.")


def test_a_python_without_vllm_is_told_to_install_vllm():
    said = ("last line: python3: Error while finding module specification for 'vllm.entrypoints.openai.api_server' "
            "(ModuleNotFoundError: No module named 'vllm')")
    assert serve.failure_fix(said).startswith("install vLLM in the Python that serves")


def test_compose_keeps_a_dollar_in_a_passed_flag_literal():
    compose = serve.compose_file(req(extra_args=["--chat-template", "{{ '$HOME' }}"]))
    command = pytest.importorskip("yaml").safe_load(compose)["services"]["vllm-forge-serve"]["command"]
    assert command[-1] == "{{ '$$HOME' }}"  # compose turns $$ back into $, and substitutes a lone $HOME
