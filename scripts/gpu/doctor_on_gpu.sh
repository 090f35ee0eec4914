#!/usr/bin/env bash
# Issue 5 on a real GPU host: doctor (host + in-Python checks), the torch.distributed all-reduce on 1 GPU
# and on all GPUs (when there are more), NCCL_DEBUG=INFO logs, then nccl_logs diagnose on what was recorded.
# Needs only python3 + torch (CUDA build) + nvidia-smi; no invoke/rich. Writes at most 8 flat files to $OUT:
#   host.txt doctor.json (host + in-Python facts) allreduce_1gpu.txt nccl_debug_1gpu.log
#   allreduce_Ngpu.txt nccl_debug_Ngpu.log (N > 1 only) nccl_tests.txt diagnose.json
# nccl_tests.txt only when build/nccl-tests/build/all_reduce_perf was carried (built against NCCL 2.28.9
# headers for sm_90); it runs against torch's own libnccl.so.2 / libcudart.so.13 from site-packages.
# Replayed by tests/unit/test_gpu_replay.py once copied to tests/fixtures/gpu/.
set -u
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/build/gpu-out}"
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"

{
  echo "== nvidia-smi"; nvidia-smi
  echo "== query"
  nvidia-smi --query-gpu=index,name,compute_cap,driver_version,memory.total,pci.bus_id,pcie.link.gen.max,pcie.link.width.max --format=csv
  echo "== topo"; nvidia-smi topo -m
  echo "== topo -p2p r"; nvidia-smi topo -p2p r
} > "$OUT/host.txt" 2>&1

"$PY" -m vllm_forge.nccl.doctor --json > "$OUT/doctor.json" 2>&1; echo "doctor --json: exit $?"

NGPU=$(nvidia-smi --query-gpu=index --format=csv,noheader | grep -c .)
runs="1"
[ "$NGPU" -gt 1 ] && runs="1 $NGPU"
for n in $runs; do
  tag=$([ "$n" = 1 ] && echo 1gpu || echo Ngpu)
  sizes=$([ "$n" = 1 ] && echo 8:128M || echo 1M:512M)
  "$PY" -m vllm_forge.nccl.nccl_test --runner torch --gpus "$n" --sizes "$sizes" --out "$WORK/$tag" --json \
      > "$WORK/$tag.json" 2>&1
  echo "nccl_test --gpus $n: exit $?"
  cp "$WORK/$tag/all_reduce.txt" "$OUT/allreduce_$tag.txt" 2>/dev/null || tail -20 "$WORK/$tag.json"
  cat "$WORK/$tag"/nccl_debug*.log > "$OUT/nccl_debug_$tag.log" 2>/dev/null
  grep -E '"level"|"returncode"' "$WORK/$tag.json" | head -3
done

BIN="$PWD/build/nccl-tests/build/all_reduce_perf"
if [ -x "$BIN" ]; then
  LIBS=$("$PY" -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for s in site.getsitepackages() for p in glob.glob(s + '/nvidia/*/lib/lib*.so*')})))")
  LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$PY" -m vllm_forge.nccl.nccl_test --runner nccl-tests \
      --binary "$BIN" --gpus "$NGPU" --sizes 8:512M --out "$WORK/nt" > /dev/null 2>&1
  echo "nccl_test --runner nccl-tests --gpus $NGPU: exit $?"
  { echo "== all_reduce_perf"; cat "$WORK/nt/all_reduce.txt"; echo "== nccl debug"; cat "$WORK/nt"/nccl_debug*.log; } \
      > "$OUT/nccl_tests.txt" 2>&1
fi

"$PY" -m vllm_forge.nccl.nccl_logs diagnose --json "$OUT"/allreduce_*.txt "$OUT"/nccl_debug_*.log "$OUT/host.txt" \
    $([ -f "$OUT/nccl_tests.txt" ] && echo "$OUT/nccl_tests.txt") > "$OUT/diagnose.json" 2>&1
echo "nccl_logs diagnose: exit $?"
"$PY" -m vllm_forge.nccl.nccl_logs diagnose "$OUT"/allreduce_*.txt "$OUT"/nccl_debug_*.log "$OUT/host.txt" | head -60
[ -f "$OUT/nccl_tests.txt" ] && "$PY" -m vllm_forge.nccl.nccl_logs diagnose "$OUT/nccl_tests.txt" "$OUT/host.txt" | head -30
"$PY" -m vllm_forge.nccl.doctor | head -30
cat "$OUT"/allreduce_*.txt
[ -f "$OUT/nccl_tests.txt" ] && grep -v "NCCL INFO" "$OUT/nccl_tests.txt" | head -60
rm -rf "$WORK"
ls -la "$OUT"
