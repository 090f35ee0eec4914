#!/usr/bin/env bash
# A real vLLM build through this repository's own tasks on a GPU host with no network (issue 26):
# the vLLM 0.26.0 PyPI sdist, its eight CMake dependencies imported from tarballs with `fetch-deps --from`,
# its build requirements installed by `build-wheel --install-build-deps` from a local wheelhouse, and
# `--targets` for what a 10-minute call can compile; then the built `_C` is audited and its ops run on the
# GPU against torch. Needs here: .whl/ (invoke, pyelftools, isal + vLLM's build requirements),
# .gpu/deps/*.tar.xz (the dependency tarballs) and .gpu/sdist/*.tar.xz (the vLLM sdist; tests/, docs/,
# benchmarks/ and examples/ may be left out to fit the transfer: the build reads none of them).
#
#   bash scripts/gpu/real_build_on_gpu.sh all      # set up, build, check: one call
#   bash scripts/gpu/real_build_on_gpu.sh build    # set up and build until FIRST_RUN_SECONDS (then interrupted) ...
#   bash scripts/gpu/real_build_on_gpu.sh resume   # ... and, as the next back-to-back call, resume it and check
#   bash scripts/gpu/real_build_on_gpu.sh start    # set up, then build and check in a new process session ...
#   bash scripts/gpu/real_build_on_gpu.sh wait     # ... and, in back-to-back calls, follow it until it is done
#   bash scripts/gpu/real_build_on_gpu.sh c2x      # set up, configure, then time scaled_mm_c2x.cu.o alone ...
#   bash scripts/gpu/real_build_on_gpu.sh c2x-wait # ... (in its own session), following it in back-to-back calls
#
# start/wait exist because one unit of `_C` for 9.0 (scaled_mm_c2x.cu, 8.9 SASS + PTX) is 72nd of 78 in
# build.ninja's order, so ninja starts it last, and it runs past a 10-minute call on its own: a build in a
# new process session (setsid) outlives the call that started it, as long as the next call comes within the
# machine's idle window. WAIT_SECONDS (default 560) bounds each call.
#
# TARGETS (default _C: the library that registers torch.ops._C) sets what is built. OUT (default build/gpu)
# receives what each phase printed; run from the repo root.
set -u
OUT="${OUT:-$PWD/build/gpu}"
mkdir -p "$OUT"
VB=/tmp/vb
TREE="$VB/vllm-0.26.0"
export INVOKE_FORGE_CACHE_DIR="$VB/cache" NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 COLUMNS=160
# pip finds vLLM's build requirements in the wheelhouse this call carried, and nowhere else
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/.whl"
TARGETS="${TARGETS:-_C}"
BUILD=(python3 -m invoke build-wheel --vllm-src "$TREE" --arch 9.0 --cuda 13.0
       --targets "$TARGETS" --install-build-deps --compile-cache none --dist-dir "$VB/dist")

setup() {
  {
    echo "# real_build_on_gpu.sh setup $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
    echo "cores: $(nproc); $(free -g | awk '/Mem:/ {print $2 " GiB RAM"}')"
    command -v python3; python3 --version; nvcc --version | tail -2; c++ --version | head -1; cmake --version | head -1
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
    python3 -m pip list 2>/dev/null | grep -iE '^(setuptools|setuptools.scm|setuptools.rust|packaging|wheel|ninja|cmake|protobuf|jinja2|regex|build) '
    echo "== pip install (this repository's own needs, from .whl)"
    python3 -m pip install -q --no-index --find-links .whl invoke pyelftools isal 2>&1 | tail -3
    python3 -m invoke --version
    mkdir -p "$VB/deps" && cp .gpu/deps/*.tar.xz "$VB/deps/" && ls -la "$VB/deps"
    rm -rf "$TREE" && tar --no-same-owner -xJf .gpu/sdist/*.tar.xz -C "$VB"  # root keeps uid 1000 otherwise: git then refuses the tree
    sha256sum .gpu/sdist/*.tar.xz
    (cd "$TREE" && git init -q && git add -A && git -c user.name=forge -c user.email=forge@example.com \
      commit -qm "vLLM 0.26.0 sdist" && git tag v0.26.0 && git log --oneline | head -1)
    echo "== invoke fetch-deps --from $VB/deps"
    python3 -m invoke fetch-deps --vllm-src "$TREE" --from "$VB/deps"
    echo "fetch_deps_exit: $?"
    echo "== invoke build-wheel (every target) --dry-run: the substitute refused"
    python3 -m invoke build-wheel --vllm-src "$TREE" --arch 9.0 --cuda 13.0 --install-build-deps --dry-run \
      --dist-dir "$VB/dist" 2>&1 | tail -2
  } > "$OUT/setup.txt" 2>&1
  tail -30 "$OUT/setup.txt"
}

build() {  # $1: the file to write, $2: seconds it may take at most
  {
    echo "# real_build_on_gpu.sh build $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    if ls "$VB"/dist/vllm-*.whl >/dev/null 2>&1; then
      echo "== a wheel is built already: nothing to resume"
    else
      echo "== ${BUILD[*]}"
      start=$SECONDS
      timeout --signal=INT "$2" "${BUILD[@]}"
      echo "build_exit: $? seconds: $((SECONDS - start))"
    fi
    ls -la "$VB/dist"
  } > "$1" 2>&1
  tail -45 "$1"
}

check() {
  {
    wheel=$(ls "$VB"/dist/vllm-*.whl 2>/dev/null | head -1)
    echo "== invoke audit $wheel --arch auto"
    python3 -m invoke audit "$wheel" --arch auto
    echo "audit_exit: $?"
    echo "== python3 -m vllm_forge.audit.op_check $wheel"
    python3 -m vllm_forge.audit.op_check "$wheel" --json > "$OUT/ops.json"
    echo "op_check_exit: $?"
    cat "$OUT/ops.json"
    python3 -c 'import sys, zipfile, json
z = zipfile.ZipFile(sys.argv[1])
name = next(n for n in z.namelist() if n.endswith(".dist-info/vllm_forge.json"))
print(json.dumps(json.loads(z.read(name)), indent=2))' "$wheel" > "$OUT/build_info.json"
  } > "$OUT/audit_ops.txt" 2>&1
  cat "$OUT/audit_ops.txt"
}

collect() {
  ninja_dir=$(dirname "$(ls -d "$TREE"/build/temp.*/build.ninja 2>/dev/null | head -1)")
  cp "$ninja_dir/.ninja_log" "$OUT/ninja_log.txt" 2>/dev/null
  tar -czf "$OUT/logs.tar.gz" -C "$PWD/build/logs" . 2>/dev/null
}

follow() {  # print the detached build's progress until it is done or WAIT_SECONDS have passed
  limit=${WAIT_SECONDS:-560}
  while [ ! -e "$VB/detached.done" ] && [ $SECONDS -lt "$limit" ]; do
    sleep 20
    echo "== $(date -u +%H:%M:%S) $(tail -c 400 "$VB/out/build.txt" 2>/dev/null | tr '\r' '\n' | grep -v '^$' | tail -1)"
    ps -eo etimes,args | awk '$2 ~ /cicc|ptxas|nvcc/ && $0 ~ /scaled_mm_c2x/ {print "   c2x unit: " $1 " s, " substr($2, 1, 60); exit}'
  done
  cp "$VB"/out/* "$OUT"/ 2>/dev/null
  cp "$VB/detached.out" "$OUT/detached.txt" 2>/dev/null
  [ -e "$VB/detached.done" ] && echo "detached build done: $(cat "$VB/detached.done")" || echo "still running"
}

C2X=CMakeFiles/_C_stable_libtorch.dir/csrc/libtorch_stable/quantization/w8a8/cutlass/scaled_mm_c2x.cu.o

c2x_follow() {
  limit=${WAIT_SECONDS:-560}
  while [ ! -e "$VB/c2x.done" ] && [ $SECONDS -lt "$limit" ]; do
    sleep 20
    ps -eo etimes,args | awk '$0 ~ /scaled_mm_c2x/ && $2 ~ /cicc|ptxas|cc1plus|fatbinary|cudafe/ {print "== " $1 " s in " $2; exit}'
  done
  cp "$VB"/out/c2x* "$OUT"/ 2>/dev/null
  [ -e "$VB/c2x.done" ] && echo "c2x done: $(cat "$VB/c2x.done")" || echo "still running"
}

case "${1:-}" in
c2x)
  setup
  mkdir -p "$VB/out"
  rm -f "$VB/c2x.done"
  {
    echo "== configure through ${BUILD[*]}, interrupted once ninja runs"
    "${BUILD[@]}" &
    pid=$!
    while kill -0 $pid 2>/dev/null && ! ls "$TREE"/build/temp.*/build.ninja >/dev/null 2>&1; do sleep 1; done
    sleep 5  # CMake writes build.ninja last: ninja starts right after
    kill -INT $pid 2>/dev/null; pkill -INT -x ninja 2>/dev/null
    wait $pid; echo "build_exit: $? after ${SECONDS} s"
    dir=$(dirname "$(ls -d "$TREE"/build/temp.*/build.ninja | head -1)")
    echo "build dir: $dir"
    ninja -C "$dir" -t commands "$C2X" | tail -1
  } > "$OUT/c2x-configure.txt" 2>&1
  tail -8 "$OUT/c2x-configure.txt"
  cp "$OUT/c2x-configure.txt" "$VB/out/"
  dir=$(dirname "$(ls -d "$TREE"/build/temp.*/build.ninja | head -1)")
  echo "cores: $(nproc); started $(date -u +%H:%M:%S)" > "$VB/out/c2x-time.txt"
  # bash's own `time` (GNU time may be missing there); a new session: it outlives this call
  setsid nohup bash -c "TIMEFORMAT='real %R s, user %U s, sys %S s'; { time ninja -C $dir -j1 $C2X \
    > $VB/out/c2x-ninja.txt 2>&1; } 2>> $VB/out/c2x-time.txt; echo \"exit at \$(date -u +%H:%M:%S)\" > $VB/c2x.done" \
    > /dev/null 2>&1 < /dev/null &
  c2x_follow
  ;;
c2x-wait)
  c2x_follow
  ;;
start)
  setup
  mkdir -p "$VB/out"
  rm -f "$VB/detached.done"
  OUT="$VB/out" setsid nohup bash "$0" _detached > "$VB/detached.out" 2>&1 < /dev/null &
  follow
  ;;
wait)
  follow
  ;;
_detached)
  build "$OUT/build.txt" 1700
  ls "$VB"/dist/vllm-*.whl >/dev/null 2>&1 && check
  collect
  echo "finished $(date -u +%H:%M:%S) after ${SECONDS} s" > "$VB/detached.done"
  ;;
all)
  setup
  build "$OUT/build.txt" $((545 - SECONDS))
  ls "$VB"/dist/vllm-*.whl >/dev/null 2>&1 && check
  collect
  ;;
build)
  setup
  limit=$((570 - SECONDS)); [ -n "${FIRST_RUN_SECONDS:-}" ] && [ "$FIRST_RUN_SECONDS" -lt "$limit" ] && limit=$FIRST_RUN_SECONDS
  build "$OUT/build1.txt" "$limit"
  collect
  ;;
resume)
  build "$OUT/build2.txt" $((500 - SECONDS))
  ls "$VB"/dist/vllm-*.whl >/dev/null 2>&1 && check
  collect
  ;;
*)
  echo "usage: bash scripts/gpu/real_build_on_gpu.sh all|build|resume|start|wait|c2x|c2x-wait" >&2
  exit 2
  ;;
esac
