#!/usr/bin/env bash
# Issue 32 on a 2-GPU host, through the invoke tasks: doctor, a healthy `nccl-test --gpus 2`, then the live fault
# runs the NCCL diagnosis was built from reconstructions of, each under NCCL_DEBUG=INFO (nccl-test sets it) and
# each judged by `invoke nccl-diagnose` over its own outputs and the host's topology:
#   p2p-off       NCCL_P2P_DISABLE=1
#   p2p-level-loc NCCL_P2P_LEVEL=LOC
#   one-channel   NCCL_MAX_NCHANNELS=1
#   tiny-buffers  NCCL_BUFFSIZE=65536
#   ring-simple   NCCL_ALGO=Ring NCCL_PROTO=Simple
#   rank-killed   one rank killed mid-run (the other one then waits for it: a timeout)
# NVLink multicast stays off in every run (NCCL_NVLS_ENABLE=0). Writes $OUT/summary.txt and $OUT/runs.tar.gz
# (one folder per run: what nccl-test printed, its table and NCCL logs, and the diagnosis), to be unpacked into
# tests/fixtures/h200x2_live_faults/ and replayed by a test.
#
#     OUT=/some/dir bash scripts/gpu/two_gpu_faults.sh      (from the repo root; invoke importable)
set -u
OUT="${OUT:-$PWD/build/gpu-2-faults}"
W="$(mktemp -d)"
mkdir -p "$OUT" "$W/runs"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 COLUMNS=160
inv() { python3 -m invoke "$@"; }
NGPU=$(nvidia-smi --query-gpu=index --format=csv,noheader | grep -c .)
if [ "$NGPU" -lt 2 ]; then echo "this host has $NGPU GPU(s): the fault runs need 2" | tee "$OUT/summary.txt"; exit 2; fi
nvidia-smi topo -m > "$W/runs/topo.txt" 2>&1
inv doctor > "$W/runs/doctor.txt" 2>&1; echo "invoke doctor: exit $?" >> "$W/runs/doctor.txt"

run() {  # name, then VAR=VALUE ... for that run
  local name=$1; shift
  mkdir -p "$W/runs/$name"
  echo "$*" > "$W/runs/$name/set.txt"
  env "$@" timeout 300 python3 -m invoke nccl-test --gpus 2 --runner torch --sizes 1M:256M \
      --out "$W/runs/$name/out" > "$W/runs/$name/nccl_test.txt" 2>&1
  echo "invoke nccl-test: exit $?" >> "$W/runs/$name/nccl_test.txt"
  inv nccl-diagnose "$W/runs/$name/out" "$W/runs/topo.txt" > "$W/runs/$name/diagnose.txt" 2>&1
  echo "invoke nccl-diagnose: exit $?" >> "$W/runs/$name/diagnose.txt"
  printf '%-14s %-40s %s\n' "$name" "$*" "$(grep -m1 'ROOT CAUSE' "$W/runs/$name/diagnose.txt")" >> "$OUT/summary.txt"
}

: > "$OUT/summary.txt"
run healthy NCCL_NVLS_ENABLE=0
run p2p-off NCCL_P2P_DISABLE=1
run p2p-level-loc NCCL_P2P_LEVEL=LOC
run one-channel NCCL_MAX_NCHANNELS=1
run tiny-buffers NCCL_BUFFSIZE=65536
run ring-simple NCCL_ALGO=Ring NCCL_PROTO=Simple

# One rank killed mid-run: start the test, wait until both ranks run, kill the second one.
mkdir -p "$W/runs/rank-killed"
echo "rank 1 killed (SIGKILL) 20 s into the run" > "$W/runs/rank-killed/set.txt"
timeout 300 python3 -m invoke nccl-test --gpus 2 --runner torch --sizes 1M:1G \
    --out "$W/runs/rank-killed/out" > "$W/runs/rank-killed/nccl_test.txt" 2>&1 &
sleep 20
victim=$(pgrep -f "nccl_allreduce" | sort -n | tail -1)
[ -n "$victim" ] && kill -9 "$victim"
wait
echo "invoke nccl-test: exit $? (killed pid ${victim:-none})" >> "$W/runs/rank-killed/nccl_test.txt"
inv nccl-diagnose "$W/runs/rank-killed/out" "$W/runs/topo.txt" > "$W/runs/rank-killed/diagnose.txt" 2>&1
printf '%-14s %-40s %s\n' rank-killed "rank 1 killed" "$(grep -m1 'ROOT CAUSE' "$W/runs/rank-killed/diagnose.txt")" \
    >> "$OUT/summary.txt"

tar -czf "$OUT/runs.tar.gz" -C "$W" runs
rm -rf "$W"
cat "$OUT/summary.txt"
