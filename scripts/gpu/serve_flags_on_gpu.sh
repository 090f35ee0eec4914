#!/usr/bin/env bash
# Real vLLM through `invoke serve --local` on a GPU host, twice: with vLLM's defaults and with the
# pass-through flags `--gpu-memory-utilization 0.2 --max-model-len 512`, recording the GPU memory the
# engine holds each time (issue 19; the first run, tests/fixtures/gpu_real_vllm, held 132302 MiB of an
# H200 for a 1.6 M-parameter model at vLLM's default 0.92).
#
# Two steps, because the GPU host has no network:
#   1. here (CPU host, PyPI reachable):   bash scripts/gpu/serve_flags_on_gpu.sh prepare DIR
#      downloads the vLLM 0.26.0 wheel (it pins torch 2.11, as the GPU host has) and the dependencies
#      the host lacks (KINDS.md's package list), unpacks the wheel and strips what an H200 serving a
#      small Llama never loads (FA2, the vllm-rs binary, deep_gemm's builds for other CPythons), and
#      writes DIR/stage.tar.gz (gzip: xz -9 saved ~3% on these fatbins at 20x the time) split into DIR/stage.tar.gz.part-NN of at most CHUNK_MIB (54) MiB: the
#      device tool carries at most 64 MiB a call with the repo, so the parts travel one call each;
#   2. there:   mkdir /tmp/stage && cat DIR/stage.tar.gz.part-* | tar -xz -C /tmp/stage
#               STAGE=/tmp/stage OUT=/some/dir bash scripts/gpu/serve_flags_on_gpu.sh run
#      installs them into /tmp/site (no network), makes a tiny random-weight Llama with transformers,
#      serves it twice and writes to $OUT: serve_flags_gpu.txt (commands, outputs, nvidia-smi memory,
#      /v1/models) and each run's whole server log.
#
# Recorded outputs: tests/fixtures/gpu_real_vllm_flags/ (replayed by tests/unit/test_gpu_real_vllm_flags_replay.py).
set -u
MODE="${1:-run}"
VLLM_VERSION="${VLLM_VERSION:-0.26.0}"
# vLLM 0.26.0's own requirements that the GPU image lacks, at vLLM's pins, and what they need in turn,
# minus the optional kernel packages it runs without (flashinfer, tilelang, cutlass-dsl, ...; see
# tests/fixtures/gpu_real_vllm/README.md) and OTLP's exporters (tracing only). invoke runs the project.
DEPS="cachetools blake3 fastapi<0.137.0 starlette openai pydantic pydantic-core annotated-types typing-inspection
prometheus-fastapi-instrumentator lm-format-enforcer==0.11.3 llguidance<1.8.0 outlines_core==0.2.14 lark==1.2.2
xgrammar==0.2.7 partial-json-parser jsonschema jsonschema-specifications referencing rpds-py pyzmq msgspec
mistral_common pycountry pydantic-extra-types compressed-tensors==0.17.0 loguru depyf==0.20.0 astor dill watchfiles
python-json-logger pybase64 cbor2 ijson setproctitle openai-harmony anthropic docstring-parser<1 httpx2<3
httpcore2==2.16.2 truststore model-hosting-container-standards jmespath supervisor mcp mcp-types==2.3.0 pyjwt
uvicorn httptools jiter distro sniffio sse-starlette python-multipart opentelemetry-sdk opentelemetry-api
opentelemetry-exporter-otlp opentelemetry-semantic-conventions==0.66b2 opentelemetry-semantic-conventions-ai
apache-tvm-ffi==0.1.10 interegular diskcache gguf invoke==2.2.0"
# Never loaded by an sm_90 serve of a dense bf16 model: FA2 (FA3 serves Hopper), the Rust front end
# (only with VLLM_RUST_FRONTEND_PATH), DeepGEMM's extension built for other CPythons (the host has 3.12).
STRIP="vllm/vllm_flash_attn/_vllm_fa2_C.abi3.so vllm/vllm-rs vllm/third_party/deep_gemm/_C.cpython-310-x86_64-linux-gnu.so
vllm/third_party/deep_gemm/_C.cpython-311-x86_64-linux-gnu.so vllm/third_party/deep_gemm/_C.cpython-313-x86_64-linux-gnu.so
vllm/third_party/deep_gemm/_C.cpython-314-x86_64-linux-gnu.so"

if [ "$MODE" = prepare ]; then
  DIR="${2:?usage: serve_flags_on_gpu.sh prepare DIR}"
  mkdir -p "$DIR" && DIR="$(cd "$DIR" && pwd)" || exit 1
  stage="$DIR/stage"
  rm -rf "$stage" && mkdir -p "$stage/wheels" "$stage/vllm_tree" || exit 1
  platforms="--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64
             --platform manylinux_2_26_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64
             --platform manylinux_2_31_x86_64 --platform manylinux1_x86_64"
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    -d "$stage/wheels" $DEPS || exit 1
  # shellcheck disable=SC2086
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
    -d "$DIR" "vllm==$VLLM_VERSION" || exit 1
  (cd "$stage/vllm_tree" && python3 -m zipfile -e "$DIR"/vllm-"$VLLM_VERSION"-*.whl . && rm $STRIP) || exit 1
  echo "stripped: $STRIP" | tr '\n' ' '; echo
  tar -C "$stage" -cf - vllm_tree wheels | gzip -6 > "$DIR/stage.tar.gz" || exit 1
  rm -f "$DIR"/stage.tar.gz.part-*
  split -b "${CHUNK_MIB:-54}M" -d "$DIR/stage.tar.gz" "$DIR/stage.tar.gz.part-"
  sha256sum "$DIR/stage.tar.gz"
  ls -l "$DIR"/stage.tar.gz.part-*
  echo "vllm $VLLM_VERSION wheel $(du -m "$DIR"/vllm-*.whl | cut -f1) MiB; stripped tree + $(ls "$stage/wheels" | wc -l)" \
       "wheels $(du -sm "$stage" | cut -f1) MiB; gzip $(du -m "$DIR/stage.tar.gz" | cut -f1) MiB in" \
       "$(ls "$DIR"/stage.tar.gz.part-* | wc -l) parts (the device tool carries 64 MiB a call, the repo included)"
  exit 0
fi

OUT="${OUT:-$PWD/build/gpu}"
STAGE="${STAGE:?STAGE=DIR: stage.tar.gz of step 1, unpacked}"
mkdir -p "$OUT"
REC="$OUT/serve_flags_gpu.txt"
SITE=/tmp/site
MODEL=/tmp/tiny
NAME=forge-flags
trap 'python3 -m invoke stop --name $NAME >/dev/null 2>&1' EXIT
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export VLLM_USE_FLASHINFER_SAMPLER=0  # vLLM's V2 runner imports FlashInfer for sampling otherwise

serve_once() {  # label, log file name, then extra invoke serve flags
  local label="$1" log="$2"; shift 2
  echo "== $label: python3 -m invoke serve --local --model $MODEL --port 8011 --name $NAME --timeout 300 $*"
  start=$(date +%s)
  python3 -m invoke serve --local --model "$MODEL" --port 8011 --name "$NAME" --timeout 300 "$@"
  echo "serve_exit: $? after $(( $(date +%s) - start )) s"
  echo "-- nvidia-smi while serving ($label)"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
  nvidia-smi --query-gpu=memory.used,memory.total --format=csv
  echo "-- /v1/models ($label)"
  curl -s http://127.0.0.1:8011/v1/models; echo
  python3 -m invoke stop --name "$NAME"
  sleep 10
  echo "-- nvidia-smi after stop ($label)"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
  cp "build/serve/$NAME.log" "$OUT/$log"
}

{
  echo "# serve_flags_on_gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
  uname -r; python3 --version
  rm -rf "$SITE" && mkdir -p "$SITE"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$STAGE"/wheels/*.whl || exit 1
  cp -a "$STAGE"/vllm_tree/. "$SITE"/ || exit 1  # the stripped wheel's files, as pip --target lays them out
  export PYTHONPATH="$SITE"
  python3 -m pip list 2>/dev/null | grep -iE '^(torch|transformers|tokenizers|triton|vllm|invoke|xgrammar) '
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
model = LlamaForCausalLM(config).to(torch.bfloat16)
model.save_pretrained(out)
print("model:", out, sum(p.numel() for p in model.parameters()), "parameters")
PY
  python3 -c 'import vllm; print("vllm", vllm.__version__, vllm.__file__)'
  python3 -m invoke serve --local --model "$MODEL" --gpu-memory-utilization 0.2 --max-model-len 512 --dry-run
  serve_once "vLLM defaults" serverlog_defaults.txt
  serve_once "--gpu-memory-utilization 0.2 --max-model-len 512" serverlog_flags.txt \
    --gpu-memory-utilization 0.2 --max-model-len 512
  echo "# done $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$REC" 2>&1
cat "$REC"
