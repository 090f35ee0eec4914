#!/usr/bin/env bash
# The audit's prediction against a real GPU (issue 3). Run on an H100/H200 host (sm_90) from the repo root:
#
#     OUT=/some/dir bash scripts/gpu/audit_on_gpu.sh
#
# Needs nvcc (13.0), python3 and, for the record, cuobjdump and nvidia-smi; nothing else (vllm_forge/audit/audit.py is
# stdlib-only). It builds one tiny kernel program twice, for 12.0 only and for 9.0, asks
# `python3 -m vllm_forge.audit.audit BINARY --arch sm_90 --json` what will happen, then runs each binary: the 12.0-only
# one must fail with `no kernel image is available for execution on the device`, the 9.0 one must run.
# Everything goes to "$OUT/audit_gpu.txt"; save it as tests/fixtures/gpu/audit_gpu.txt, which
# tests/unit/test_audit.py::test_gpu_record_matches_the_audit replays.
set -u
OUT="${OUT:-$PWD/build/gpu}"
mkdir -p "$OUT"
REC="$OUT/audit_gpu.txt"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
CUOBJDUMP="${CUOBJDUMP:-$(command -v cuobjdump || echo "$(dirname "$NVCC")/cuobjdump")}"

cat > "$WORK/k.cu" <<'EOF'
#include <cstdio>
__global__ void add_one(int *a) { a[threadIdx.x] += 1; }
int main() {
  int *a = nullptr;
  cudaError_t err = cudaMalloc(&a, 32 * sizeof(int));
  if (err != cudaSuccess) { printf("malloc: %s\n", cudaGetErrorString(err)); return 2; }
  add_one<<<1, 32>>>(a);
  cudaError_t launch = cudaGetLastError();  // reading it clears it: keep it for the exit code
  printf("launch: %s\n", cudaGetErrorString(launch));
  err = cudaDeviceSynchronize();
  if (err == cudaSuccess) err = cudaGetLastError();
  printf("last: %s\n", cudaGetErrorString(err));
  return launch == cudaSuccess && err == cudaSuccess ? 0 : 1;
}
EOF

{
  echo "# audit_on_gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>&1 | head -1)"
  echo "nvcc: $("$NVCC" --version 2>&1 | tail -1)"
  echo "python: $(python3 --version 2>&1)"
} > "$REC"

build_and_check() {  # name, gencode flags...
  local name="$1"; shift
  {
    echo "== $name"
    echo "flags: $*"
    if ! "$NVCC" -o "$WORK/$name" "$WORK/k.cu" "$@" > "$WORK/$name.nvcc" 2>&1; then
      echo "nvcc failed:"; cat "$WORK/$name.nvcc"; return
    fi
    "$CUOBJDUMP" --list-elf --list-ptx "$WORK/$name" 2>&1 | sed 's/^/cuobjdump: /'
    python3 -m vllm_forge.audit.audit "$WORK/$name" --arch sm_90 --json --no-torch > "$WORK/$name.json" 2> "$WORK/$name.err"
    echo "audit_exit: $?"
    echo "audit_json: $(python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' < "$WORK/$name.json" 2>&1)"
    sed 's/^/audit_stderr: /' "$WORK/$name.err"
    python3 -m vllm_forge.audit.audit "$WORK/$name" --arch auto --no-torch 2>&1 | tail -1 | sed 's/^/audit_auto: /'
    "$WORK/$name"
    echo "run_exit: $?"
  } >> "$REC" 2>&1
}

build_and_check k12 -gencode arch=compute_120,code=sm_120
build_and_check k90 -gencode arch=compute_90,code=sm_90
cat "$REC"
