#!/usr/bin/env bash
# Issue 8 on a 2-GPU NVLink host, through the invoke tasks themselves: doctor (text and JSON),
# nccl-test --gpus 2 on the torch.distributed path and, when a prebuilt all_reduce_perf was carried
# (build/nccl-tests), on the nccl-tests path; NCCL_DEBUG=INFO logs captured; nccl-diagnose over all
# of it. Writes 8 flat files to $OUT (the device tool's limit), replayed by
# tests/unit/test_gpu_two_replay.py once copied to tests/fixtures/gpu_h200x2/.
#
#     OUT=/some/dir bash scripts/gpu/two_gpu.sh     (from the repo root; invoke importable)
set -u
OUT="${OUT:-$PWD/build/gpu-2}"
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 COLUMNS=160
W="$(mktemp -d)"
inv() { python3 -m invoke "$@"; }
# Two ranks on a 2-GPU host; where fewer GPUs are lent, as many as there are (and the record says so).
NGPU=$(nvidia-smi --query-gpu=index --format=csv,noheader | grep -c .)
GPUS=$(( NGPU < 2 ? NGPU : 2 ))

{
  echo "== nvidia-smi"; nvidia-smi
  echo "== query"
  nvidia-smi --query-gpu=index,name,compute_cap,driver_version,memory.total,pci.bus_id,pcie.link.gen.max,pcie.link.width.max --format=csv
  echo "== topo"; nvidia-smi topo -m
  echo "== topo -p2p r"; nvidia-smi topo -p2p r
  echo "== ranks"; echo "gpus: $GPUS of $NGPU"
} > "$OUT/host.txt" 2>&1

inv doctor > "$OUT/doctor.txt" 2>&1; echo "invoke doctor: exit $?" | tee -a "$OUT/doctor.txt"
inv doctor --json > "$OUT/doctor.json" 2>&1; echo "invoke doctor --json: exit $?"

inv nccl-test --gpus "$GPUS" --runner torch --sizes 1M:512M --out "$W/torch" > "$W/torch.out" 2>&1
echo "invoke nccl-test --gpus $GPUS --runner torch: exit $?" >> "$W/torch.out"
{ cat "$W/torch.out"; echo "== all_reduce.txt"; cat "$W/torch/all_reduce.txt"; } > "$OUT/nccl_test_torch.txt" 2>&1
cat "$W"/torch/nccl_debug*.log > "$OUT/nccl_debug_torch.log" 2>/dev/null

BIN="$PWD/build/nccl-tests/build/all_reduce_perf"
if [ -x "$BIN" ]; then
  LIBS=$(python3 -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for s in site.getsitepackages() for p in glob.glob(s + '/nvidia/*/lib/lib*.so*')})))")
  LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" inv nccl-test --gpus "$GPUS" --runner nccl-tests \
      --binary "$BIN" --sizes 8:512M --out "$W/nt" > "$W/nt.out" 2>&1
  echo "invoke nccl-test --gpus $GPUS --runner nccl-tests: exit $?" >> "$W/nt.out"
  { cat "$W/nt.out"; echo "== all_reduce.txt"; cat "$W/nt/all_reduce.txt"; echo "== nccl debug";
    cat "$W"/nt/nccl_debug*.log; } > "$OUT/nccl_tests.txt" 2>&1
fi

FILES="$W/torch/all_reduce.txt $OUT/nccl_debug_torch.log $OUT/host.txt"
[ -f "$OUT/nccl_tests.txt" ] && FILES="$FILES $W/nt/all_reduce.txt $(ls "$W"/nt/nccl_debug*.log | tr '\n' ' ')"
inv nccl-diagnose "$FILES" > "$OUT/diagnose.txt" 2>&1; echo "invoke nccl-diagnose: exit $?" >> "$OUT/diagnose.txt"
rm -rf "$W"
cat "$OUT/doctor.txt" "$OUT/nccl_test_torch.txt" "$OUT/diagnose.txt"
grep -v "NCCL INFO" "$OUT/nccl_tests.txt" 2>/dev/null | head -80
ls -la "$OUT"
