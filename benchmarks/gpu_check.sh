#!/usr/bin/env bash
# The one prepared GPU call (issue 7 and the kernels / export / runtime GPU checks).
#
#   bash benchmarks/gpu_check.sh            # from the repository root, on the lent GPU machine
#
# Made for the lent H100 (PyTorch 2.11, Triton 3.6, no network, no TensorRT): installs the package
# editable (offline), runs the GPU tests, then the benchmarks, most valuable first, each under its
# own timeout and all under one deadline (GPU_CHECK_BUDGET_S, default 450 s), going on past a
# failing step; compile-heavy steps come last and only start with enough time left.
# Everything lands under $OUT (./gpu_out when unset) as at most 8 files, refreshed after every
# step so a run cut short still returns what it did:
#   summary.md         steps (rc, seconds) and the result tables
#   gpu_check.log      every step's full output, one after the other
#   fast_bench.md/json the levers table (issue 7)
#   results.tgz        everything else (each step's log, JSON and Markdown)
set -u
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
LOG=$WORK/gpu_check.log
SUMMARY=$WORK/summary.md
BUDGET=${GPU_CHECK_BUDGET_S:-450}
T0=$(date +%s)
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET          # compiled kernels on the GPU, not the interpreter
PY="python3"
ROWS=""

elapsed() { echo $(( $(date +%s) - T0 )); }

publish() {
  {
    echo "# gpu_check $(date -Is)"
    echo
    echo "| step | rc | s |"
    echo "| --- | ---: | ---: |"
    printf "%b" "$ROWS"
    for md in "$WORK"/fast_bench/fast_bench.md "$WORK"/fast_bench_compile/fast_bench.md \
              "$WORK"/throughput/*.md; do
      if [ -f "$md" ]; then echo; cat "$md"; fi
    done
  } > "$SUMMARY.tmp"
  mv "$SUMMARY.tmp" "$SUMMARY"
  cp "$SUMMARY" "$OUT/summary.md.tmp" && mv "$OUT/summary.md.tmp" "$OUT/summary.md"
  cp "$LOG" "$OUT/gpu_check.log.tmp" 2>/dev/null && mv "$OUT/gpu_check.log.tmp" "$OUT/gpu_check.log"
  for f in fast_bench.md fast_bench.json; do
    if [ -f "$WORK/fast_bench/$f" ]; then cp "$WORK/fast_bench/$f" "$OUT/$f"; fi
  done
  tar -czf "$OUT/.results.tgz.tmp" -C "$WORK" --exclude=shadow . 2>/dev/null \
    && mv "$OUT/.results.tgz.tmp" "$OUT/results.tgz"
}

# step NAME TIMEOUT_S MIN_LEFT_S CMD...: runs CMD with min(TIMEOUT_S, time left) unless less than
# MIN_LEFT_S of the budget is left; records rc and seconds; output to its own log and to LOG.
step() {
  local name=$1 limit=$2 need=$3; shift 3
  local left=$(( BUDGET - $(elapsed) ))
  if [ "$left" -lt "$need" ]; then
    ROWS+="| $name | skipped (${left}s left) | |\n"
    echo "=== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"
    publish
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== $name (timeout ${limit}s): $*" | tee -a "$LOG"
  local t=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  local s=$(( $(date +%s) - t ))
  cat "$WORK/$name.log" >> "$LOG"
  tail -n 4 "$WORK/$name.log"
  echo "=== $name: rc=$rc in ${s}s" | tee -a "$LOG"
  ROWS+="| $name | $rc$([ $rc -eq 124 ] && echo ' (timeout)') | $s |\n"
  publish
}

# 0. what the machine is
step env 30 5 bash -c 'nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv;
  python3 -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__, torch.cuda.get_device_name())"'

# 1. the package, offline: editable install; if that fails, a shadow tree with the package-dir
#    mapping (p2phd_infer.kernels -> kernels/ ...) on PYTHONPATH, and python -P so the checkout's
#    own p2phd_infer/ (which lacks the mapped subpackages) never shadows it.
step install 120 30 python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
if ! (cd /tmp && python3 -c "import p2phd_infer.kernels, p2phd_infer.export") >> "$LOG" 2>&1; then
  SHADOW=$WORK/shadow
  mkdir -p "$SHADOW/p2phd_infer"
  for f in "$PWD"/p2phd_infer/*; do ln -sf "$f" "$SHADOW/p2phd_infer/"; done
  for d in kernels train export; do ln -sfn "$PWD/$d" "$SHADOW/p2phd_infer/$d"; done
  export PYTHONPATH="$SHADOW${PYTHONPATH:+:$PYTHONPATH}"
  PY="python3 -P"
  echo "=== install fell back to the shadow tree $SHADOW" | tee -a "$LOG"
  ROWS+="| install fallback: shadow tree | | |\n"
fi

# 2. issue 7's GPU tests: kernels vs references compiled, fp16 PSNR, CUDA-graph replay.
step tests_fast 150 60 $PY -m pytest -q -rs -p no:cacheprovider \
  tests/test_fast_kernels.py tests/test_fast_generator.py

# 3. issue 7's levers at 2048x1024 (no compile rows here: they come later).
[ -f benchmarks/fast_bench.py ] && step fast_bench 180 90 $PY benchmarks/fast_bench.py \
  --out-dir "$WORK/fast_bench" --no-compile --batches 1,2,4 --iters 20 --warmup 3

# 4. the other helpers' GPU tests (kernels, export, runtime).
OTHER_TESTS=$(ls tests/test_kernels.py tests/test_export*.py tests/test_runtime*.py 2>/dev/null \
              | tr '\n' ' ')
[ -n "$OTHER_TESTS" ] && step tests_other 120 60 $PY -m pytest -q -rs -p no:cacheprovider $OTHER_TESTS

# 5. throughput: the engine (fast path by default on CUDA) beside the official-shape baseline.
[ -f benchmarks/throughput.py ] && step throughput 120 60 $PY benchmarks/throughput.py \
  --size 2048x1024 --device cuda --build "" --batch-sizes 1,4 --precisions fp16 --no-compile \
  --frames 16 --warmup 3 --formats jpg --out-dir "$WORK/throughput"

# 6. the kernels helper's bench (instance mean, label encoding, feature scatter).
[ -f benchmarks/kernels_bench.py ] && step kernels_bench 60 30 $PY benchmarks/kernels_bench.py \
  --out "$WORK/kernels_bench.json"

# 7. compile-heavy steps last. torch.compile rows (about a minute each): the official fp16
#    network compiled beside the fast engine compiled; max-autotune only when asked
#    (GPU_CHECK_MAX_AUTOTUNE=1, ~2 more minutes). Then the export helper's AOTInductor check.
[ -f benchmarks/fast_bench.py ] && step fast_bench_compile 240 120 $PY benchmarks/fast_bench.py \
  --out-dir "$WORK/fast_bench_compile" --compile --only "torch.compile" --batches 1 \
  --iters 20 --warmup 3 $([ "${GPU_CHECK_MAX_AUTOTUNE:-0}" = 1 ] && echo --max-autotune)
[ -f benchmarks/export_check.py ] && step export_check 180 100 $PY benchmarks/export_check.py \
  --out-dir "$WORK/export_check"

publish
echo
echo "================ summary ($(elapsed)s) ================"
cat "$SUMMARY"
