"""Replay of `invoke serve --local` with vLLM's own flags on a real H200 (tests/fixtures/gpu_real_vllm_flags,
recorded by scripts/gpu/serve_flags_on_gpu.sh with released vLLM 0.26.0): the same tiny model served twice, with
vLLM's defaults and with `--gpu-memory-utilization 0.2 --max-model-len 512`. The flags must reach vLLM (its
own log and /v1/models say so) and the engine's GPU memory must fall from ~92% of the card to ~20%."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from vllm_forge.serve import serve

pytestmark = pytest.mark.gpu

RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "gpu_real_vllm_flags"
FLAGS = ["--gpu-memory-utilization", "0.2", "--max-model-len", "512"]


def runs() -> dict[str, str]:
    """serve_flags_gpu.txt's two `== label: command` sections, by label."""
    text = (RECORD / "serve_flags_gpu.txt").read_text()
    parts = re.split(r"^== (.+?): python3 -m invoke serve .*$", text, flags=re.M)
    found = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert list(found) == ["vLLM defaults", "--gpu-memory-utilization 0.2 --max-model-len 512"], list(found)
    return found


def invoke_line(label: str) -> list[str]:
    text = (RECORD / "serve_flags_gpu.txt").read_text()
    line = re.search(rf"^== {re.escape(label)}: (python3 -m invoke serve .*)$", text, re.M).group(1)
    return shlex.split(line)


def server_argv(section: str) -> list[str]:
    """The vLLM command `invoke serve` printed (and ran) in one section."""
    line = next(ln for ln in section.splitlines() if "-m vllm.entrypoints.openai.api_server" in ln)
    return shlex.split(line.strip())


def engine_mib(section: str) -> int:
    """VLLM::EngineCore's used_gpu_memory while serving, from nvidia-smi's compute-apps table."""
    while_serving = section.split("-- nvidia-smi while serving", 1)[1].split("-- /v1/models", 1)[0]
    rows = [ln for ln in while_serving.splitlines() if "VLLM::EngineCore" in ln]
    assert len(rows) == 1, while_serving
    return int(re.search(r"(\d+) MiB", rows[0]).group(1))


def gpu_total_mib() -> int:
    header = (RECORD / "serve_flags_gpu.txt").read_text().splitlines()[1]
    assert header.startswith("NVIDIA H200, 9.0,"), header
    return int(re.search(r"(\d+) MiB$", header).group(1))


def served_models(section: str) -> dict:
    body = section.split("-- /v1/models", 1)[1].splitlines()[1]
    return json.loads(body)


def log_value(log: str, pattern: str) -> str:
    match = re.search(pattern, (RECORD / log).read_text())
    assert match, f"{pattern!r} not in {log}"
    return match.group(1)


def test_both_runs_served_and_passed_the_smoke_test():
    for label, section in runs().items():
        assert re.search(r"^healthy after [\d.]+s: http://127\.0\.0\.1:8011$", section, re.M), label
        assert re.search(r"^  /v1/models: /tmp/tiny; chat: .+$", section, re.M), label
        assert "serve_exit: 0 after" in section, label
        assert "stopped local server (pid" in section, label
        after_stop = [ln for ln in section.split("-- nvidia-smi after stop", 1)[1].splitlines()[1:]
                      if not ln.startswith("# done")]
        assert after_stop == ["pid, process_name, used_gpu_memory [MiB]"], (label, after_stop)  # GPU freed


def test_the_flags_reached_vllm_only_in_the_flags_run():
    defaults, flagged = runs().values()
    assert invoke_line("vLLM defaults")[-2:] == ["--timeout", "300"]
    assert invoke_line("--gpu-memory-utilization 0.2 --max-model-len 512")[-4:] == FLAGS
    assert not set(FLAGS[::2]) & set(server_argv(defaults))
    assert server_argv(flagged)[-4:] == ["--max-model-len", "512", "--gpu-memory-utilization", "0.2"]
    # vLLM's own view of its arguments, and of the context length it serves
    assert log_value("serverlog_defaults.txt", r"non-default args: (\{.*\})") == \
        "{'host': '127.0.0.1', 'port': 8011, 'model': '/tmp/tiny'}"
    assert log_value("serverlog_flags.txt", r"non-default args: (\{.*\})") == \
        "{'host': '127.0.0.1', 'port': 8011, 'model': '/tmp/tiny', 'max_model_len': 512, 'gpu_memory_utilization': 0.2}"
    assert served_models(defaults)["data"][0]["max_model_len"] == 2048  # the model's own
    assert served_models(flagged)["data"][0]["max_model_len"] == 512


def test_the_recorded_commands_are_what_serve_builds_today():
    """The project still turns these flags into the vLLM command that ran on the H200."""
    defaults, flagged = runs().values()
    for section, extra in ((defaults, {}), (flagged, {"gpu_memory_utilization": 0.2, "max_model_len": 512})):
        request = serve.ServeRequest(model="/tmp/tiny", local=True, port=8011, name="forge-flags", **extra)
        recorded = server_argv(section)
        assert recorded[1:3] == ["-m", serve.SERVER_MODULE]
        assert recorded[3:] == serve.server_args(request, bind_host="127.0.0.1", port=8011)


def test_gpu_memory_utilization_0_2_holds_a_fifth_of_the_h200_not_nine_tenths():
    defaults, flagged = runs().values()
    total = gpu_total_mib()
    default_mib, flagged_mib = engine_mib(defaults), engine_mib(flagged)
    assert (default_mib, flagged_mib, total) == (132302, 29228, 143771)  # as recorded
    assert default_mib / total > 0.90  # vLLM's default 0.92: nearly the whole card for a 3 MB model
    assert flagged_mib / total < 0.30
    assert flagged_mib < default_mib / 4
    # the engine's own accounting: the KV cache is what the fraction sizes
    assert log_value("serverlog_defaults.txt", r"Desired GPU memory utilization is \((0\.92), ") == "0.92"
    assert log_value("serverlog_flags.txt", r"Desired GPU memory utilization is \((0\.2), ") == "0.2"
    kv_default = float(log_value("serverlog_defaults.txt", r"Available KV cache memory: ([\d.]+) GiB"))
    kv_flagged = float(log_value("serverlog_flags.txt", r"Available KV cache memory: ([\d.]+) GiB"))
    assert (kv_default, kv_flagged) == (128.26, 27.61)
    assert kv_flagged < kv_default / 4


def test_the_install_was_the_released_wheel_minus_what_an_h200_never_loads():
    text = (RECORD / "serve_flags_gpu.txt").read_text()
    assert re.search(r"^vllm\s+0\.26\.0$", text, re.M) and re.search(r"^torch\s+2\.11\.0$", text, re.M)
    assert "vllm 0.26.0 /tmp/site/vllm/__init__.py" in text
    manifest = (RECORD / "stage_manifest.txt").read_text()
    removed = manifest.split("# removed from the wheel (not in vllm_tree):\n", 1)[1].split("\n# ", 1)[0]
    assert [ln.split()[0] for ln in removed.splitlines()][:2] == ["vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so",
                                                                  "vllm/vllm-rs"]
    assert "_vllm_fa3_C" not in removed and "_C_stable_libtorch" not in removed
    for log in ("serverlog_defaults.txt", "serverlog_flags.txt"):
        assert log_value(log, r"Using FlashAttention version (\d)") == "3"  # FA3 served; FA2 was not needed
    shas = re.findall(r"sha256 ([0-9a-f]{64})", manifest)
    assert len(shas) == 1 and manifest.rstrip().endswith(shas[0])  # the parts arrived whole
