#!/usr/bin/env bash
# Real vLLM through `invoke serve --local` on a GPU host, twice: with vLLM's defaults and with the
# pass-through flags `--gpu-memory-utilization 0.2 --max-model-len 512`, recording the GPU memory the
# engine holds each time (issue 19; the first run, tests/fixtures/gpu_real_vllm, held 132302 MiB of an
# H200 for a 1.6 M-parameter model at vLLM's default 0.92).
#
# Two steps, because the GPU host has no network:
#   1. here (CPU host, PyPI reachable):   bash gpu/serve_flags_on_gpu.sh prepare DIR
#      downloads the vLLM 0.26.0 wheel (it pins torch 2.11, as the GPU host has) and the dependencies
#      the host lacks (KINDS.md's package list) into DIR, and prints what that weighs against the
#      device tool's 64 MiB carry limit;
#   2. there:   WHEELS=DIR OUT=/some/dir bash gpu/serve_flags_on_gpu.sh run
#      installs them with pip --target (no network), makes a tiny random-weight Llama with transformers,
#      serves it twice and writes serve_flags_gpu.txt (commands, outputs, nvidia-smi memory) to $OUT.
#
# Recorded outputs belong in tests/fixtures/gpu_real_vllm_flags/ with a replay test.
set -u
MODE="${1:-run}"
VLLM_VERSION="${VLLM_VERSION:-0.26.0}"
# vLLM 0.26.0's own requirements that the GPU image lacks, minus the optional kernel packages it runs
# without (flashinfer, tilelang, cutlass-dsl, ...; see tests/fixtures/gpu_real_vllm/README.md).
DEPS="cachetools blake3 fastapi starlette openai pydantic pydantic-core annotated-types typing-inspection
prometheus-fastapi-instrumentator lm-format-enforcer llguidance outlines_core lark xgrammar==0.2.7
partial-json-parser jsonschema jsonschema-specifications referencing rpds-py pyzmq msgspec mistral_common
pycountry compressed-tensors depyf watchfiles python-json-logger pybase64 cbor2 ijson setproctitle
openai-harmony anthropic model-hosting-container-standards mcp uvicorn httptools jiter distro sniffio
sse-starlette python-multipart opentelemetry-sdk opentelemetry-api opentelemetry-exporter-otlp
opentelemetry-semantic-conventions-ai apache-tvm-ffi==0.1.10 interegular diskcache gguf"

if [ "$MODE" = prepare ]; then
  DIR="${2:?usage: serve_flags_on_gpu.sh prepare DIR}"
  mkdir -p "$DIR"
  platforms="--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64
             --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_31_x86_64"
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    -d "$DIR" "vllm==$VLLM_VERSION" $DEPS || exit 1
  total=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
  wheel=$(du -cb "$DIR"/vllm-*.whl | tail -1 | cut -f1)
  echo "vllm $VLLM_VERSION wheel: $((wheel / 1048576)) MiB; with the missing dependencies: $((total / 1048576)) MiB" \
       "($(ls "$DIR"/*.whl | wc -l) wheels); the device tool carries at most 64 MiB a call, the repo included"
  [ "$total" -lt $((60 * 1048576)) ] || { echo "does not fit one call"; exit 3; }
  exit 0
fi

OUT="${OUT:-$PWD/build/gpu}"
WHEELS="${WHEELS:?WHEELS=DIR holding the wheels from step 1}"
mkdir -p "$OUT"
REC="$OUT/serve_flags_gpu.txt"
SITE="$(mktemp -d)"
MODEL="$(mktemp -d)/tiny"
trap 'python3 -m invoke stop --name forge-flags >/dev/null 2>&1; rm -rf "$SITE"' EXIT
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_USE_FLASHINFER_SAMPLER=0  # vLLM's V2 runner imports FlashInfer for sampling otherwise

serve_once() {  # label, then extra invoke serve flags
  local label="$1"; shift
  echo "== $label: python3 -m invoke serve --local --model $MODEL --port 8011 --name forge-flags $*"
  start=$(date +%s)
  python3 -m invoke serve --local --model "$MODEL" --port 8011 --name forge-flags --timeout 300 "$@"
  echo "serve_exit: $? after $(( $(date +%s) - start )) s"
  echo "-- nvidia-smi while serving ($label)"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv
  python3 -m invoke stop --name forge-flags
  sleep 10
  echo "-- nvidia-smi after stop ($label)"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
}

{
  echo "# serve_flags_on_gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$SITE"
  python3 - "$MODEL" <<'PY'
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

out = Path(sys.argv[1])
tok = Tokenizer(models.BPE(unk_token=None))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(["hello world, say hello to the tiny model"] * 50, trainer)
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
fast.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
fast.save_pretrained(out)
config = LlamaConfig(vocab_size=600, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                     bos_token_id=0, eos_token_id=1, torch_dtype="bfloat16")
LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
print("model:", out, sum(p.numel() for p in LlamaForCausalLM(config).parameters()), "parameters")
PY
  python3 -c 'import vllm; print("vllm", vllm.__version__, vllm.__file__)'
  python3 -m invoke serve --local --model "$MODEL" --gpu-memory-utilization 0.2 --max-model-len 512 --dry-run
  serve_once "vLLM defaults"
  serve_once "--gpu-memory-utilization 0.2 --max-model-len 512" --gpu-memory-utilization 0.2 --max-model-len 512
  echo "== server log (flags run)"
  cat build/serve/forge-flags.log
} > "$REC" 2>&1
cat "$REC"
