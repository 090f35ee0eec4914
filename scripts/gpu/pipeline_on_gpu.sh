#!/usr/bin/env bash
# The product path on a real GPU host (issue 3): build the miniature vLLM with `invoke` for 12.0 only
# and for 9.0, let `invoke audit` predict what runs on this GPU, then import the built extension and
# launch its kernels. On an sm_90 host the 12.0-only wheel must be predicted "none" and fail with
# `no kernel image is available for execution on the device`; the 9.0 wheel predicted "sass" and run.
#
#     OUT=/some/dir bash scripts/gpu/pipeline_on_gpu.sh      (from the repo root; invoke importable)
set -u
OUT="${OUT:-$PWD/build/gpu}"
mkdir -p "$OUT"
REC="$OUT/pipeline_gpu.txt"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

run_wheel() {  # dist dir: install the wheel alone and launch every kernel of vllm._C
  rm -rf "$WORK/site" && python3 -m pip install -q --no-deps --no-compile --target "$WORK/site" "$1"/*.whl
  (cd "$WORK" && PYTHONPATH="$WORK/site" python3 -c '
from vllm import _C
print("built_archs:", _C.built_archs())
for name, call in (("add_one", lambda: _C.add_one(256)), ("reduce_sum", lambda: _C.reduce_sum(1024))):
    try:
        print(name, "->", call())
    except RuntimeError as err:
        print(name, "->", err)
        raise SystemExit(1)
')
  echo "run_exit: $?"
}

{
  echo "# pipeline_on_gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>&1 | head -1)"
  echo "== invoke demo --no-docker --arch 12.0"
  start=$(date +%s.%N)
  python3 -m invoke demo --no-docker --arch 12.0 --dist-dir "$WORK/d120"
  echo "demo_exit: $? seconds: $(echo "$(date +%s.%N) - $start" | bc 2>/dev/null)"
  echo "== invoke audit (12.0 wheel) --arch auto --json"
  python3 -m invoke audit "$WORK/d120" --arch auto --json
  echo "audit_exit: $?"
  echo "== run the 12.0 wheel"
  run_wheel "$WORK/d120"
  echo "== invoke build-wheel --arch 9.0"
  python3 -m invoke build-wheel --checkout-dir ~/.cache/vllm-forge/demo/vllm --arch 9.0 --dist-dir "$WORK/d90"
  echo "build_exit: $?"
  echo "== invoke audit (9.0 wheel) --arch auto --json"
  python3 -m invoke audit "$WORK/d90" --arch auto --json
  echo "audit_exit: $?"
  echo "== run the 9.0 wheel"
  run_wheel "$WORK/d90"
} > "$REC" 2>&1
cat "$REC"
