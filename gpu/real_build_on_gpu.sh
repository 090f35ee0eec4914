#!/usr/bin/env bash
# A real vLLM build through this repository's own tasks on a GPU host with no network (issue 26):
# the vLLM 0.26.0 PyPI sdist, its eight CMake dependencies imported from tarballs with `fetch-deps --from`,
# its build requirements installed by `build-wheel --install-build-deps` from a local wheelhouse, and
# `--targets` for the two extensions a 10-minute call can compile; then the built `_C` is audited and its
# ops run on the GPU against torch. Two phases, run as back-to-back calls (what /tmp holds survives them):
#
#   bash gpu/real_build_on_gpu.sh build    # needs here: .whl/ (invoke, pyelftools, isal + vLLM's build
#                                          # requirements), .gpu/deps/*.tar.xz (the dependency tarballs) and
#                                          # .gpu/sdist/*.tar.xz (the vLLM sdist; tests/, docs/, benchmarks/
#                                          # and examples/ may be left out to fit the transfer: the build reads
#                                          # none of them); stops at its time limit
#   bash gpu/real_build_on_gpu.sh resume   # the same build-wheel again: ninja resumes; then audit and ops
#
# OUT (default build/gpu) receives what each phase printed; from the repo root.
set -u
OUT="${OUT:-$PWD/build/gpu}"
mkdir -p "$OUT"
VB=/tmp/vb
TREE="$VB/vllm-0.26.0"
export INVOKE_FORGE_CACHE_DIR="$VB/cache" NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 COLUMNS=160
# pip finds vLLM's build requirements in the wheelhouse this call carried, and nowhere else
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$PWD/.whl"
# TARGETS (default _C: the library that registers torch.ops._C) and FIRST_RUN_SECONDS (how long the first
# build runs before it is interrupted, so the second one has something to resume) set the size of the run.
TARGETS="${TARGETS:-_C}"
BUILD=(python3 -m invoke build-wheel --vllm-src "$TREE" --arch 9.0 --cuda 13.0
       --targets "$TARGETS" --install-build-deps --compile-cache none --dist-dir "$VB/dist")

case "${1:-}" in
build)
  {
    echo "# real_build_on_gpu.sh build: setup $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
    echo "cores: $(nproc); $(free -g | awk '/Mem:/ {print $2 " GiB RAM"}')"
    command -v python3; python3 --version; nvcc --version | tail -2; c++ --version | head -1; cmake --version | head -1
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
    python3 -m pip list 2>/dev/null | grep -iE '^(setuptools|setuptools.scm|setuptools.rust|packaging|wheel|ninja|cmake|protobuf|jinja2|regex|build) '
    echo "== pip install (this repository's own needs, from .whl)"
    python3 -m pip install -q --no-index --find-links .whl invoke pyelftools isal 2>&1 | tail -3
    python3 -m invoke --version
    mkdir -p "$VB/deps" && cp .gpu/deps/*.tar.xz "$VB/deps/" && ls -la "$VB/deps"
  } > "$OUT/setup.txt" 2>&1
  cat "$OUT/setup.txt"
  {
    echo "# real_build_on_gpu.sh build $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    rm -rf "$TREE" && mkdir -p "$VB" && tar -xJf .gpu/sdist/*.tar.xz -C "$VB"
    sha256sum .gpu/sdist/*.tar.xz
    (cd "$TREE" && git init -q && git add -A && git -c user.name=forge -c user.email=forge@example.com \
      commit -qm "vLLM 0.26.0 sdist" && git tag v0.26.0 && git log --oneline | head -1)
    echo "== invoke fetch-deps --from $VB/deps"
    python3 -m invoke fetch-deps --vllm-src "$TREE" --from "$VB/deps"
    echo "fetch_deps_exit: $?"
    echo "== invoke fetch-deps --offline"
    python3 -m invoke fetch-deps --vllm-src "$TREE" --offline
    echo "== invoke build-wheel (default targets) --dry-run: the substitute refused"
    python3 -m invoke build-wheel --vllm-src "$TREE" --arch 9.0 --cuda 13.0 --install-build-deps --dry-run \
      --dist-dir "$VB/dist" 2>&1 | tail -2
    echo "== ${BUILD[*]}"
    start=$SECONDS
    limit=$((570 - SECONDS)); [ -n "${FIRST_RUN_SECONDS:-}" ] && [ "$FIRST_RUN_SECONDS" -lt "$limit" ] && limit=$FIRST_RUN_SECONDS
    timeout --signal=INT "$limit" "${BUILD[@]}"
    echo "build_exit: $? seconds: $((SECONDS - start))"
  } > "$OUT/build1.txt" 2>&1
  tail -60 "$OUT/build1.txt"
  ;;
resume)
  {
    echo "# real_build_on_gpu.sh resume $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    if ls "$VB"/dist/vllm-*.whl >/dev/null 2>&1; then
      echo "== the build phase finished the wheel: nothing to resume"
    else
      echo "== ${BUILD[*]}"
      start=$SECONDS
      timeout --signal=INT $((500 - SECONDS)) "${BUILD[@]}"
      echo "build_exit: $? seconds: $((SECONDS - start))"
    fi
    ls -la "$VB/dist"
  } > "$OUT/build2.txt" 2>&1
  {
    wheel=$(ls "$VB"/dist/vllm-*.whl 2>/dev/null | head -1)
    echo "== invoke audit $wheel --arch auto"
    python3 -m invoke audit "$wheel" --arch auto
    echo "audit_exit: $?"
    echo "== python3 scripts/op_check.py $wheel"
    python3 scripts/op_check.py "$wheel"
    echo "op_check_exit: $?"
    python3 scripts/op_check.py "$wheel" --json > "$OUT/ops.json"
    python3 -c 'import sys, zipfile, json
z = zipfile.ZipFile(sys.argv[1])
name = next(n for n in z.namelist() if n.endswith(".dist-info/vllm_forge.json"))
print(json.dumps(json.loads(z.read(name)), indent=2))' "$wheel" > "$OUT/build_info.json"
  } > "$OUT/audit_ops.txt" 2>&1
  ninja_dir=$(dirname "$(ls -d "$TREE"/build/temp.*/build.ninja | head -1)")
  cp "$ninja_dir/.ninja_log" "$OUT/ninja_log.txt"
  tar -czf "$OUT/logs.tar.gz" -C "$PWD/build/logs" .
  tail -40 "$OUT/build2.txt"; cat "$OUT/audit_ops.txt"
  ;;
*)
  echo "usage: bash gpu/real_build_on_gpu.sh build|resume" >&2
  exit 2
  ;;
esac
