#!/usr/bin/env bash
# The one prepared GPU call: the fast path's tests and benchmarks, then the other CUDA checks.
#
#   bash benchmarks/gpu_check.sh              # from the repository root
#   GPU_CHECK_COMPILE=1 bash benchmarks/gpu_check.sh      # also the torch.compile / AOTI steps
#
# Made for a lent card with Python 3.12, torch 2.11 (cu130), triton 3.6, onnxruntime's CPU build,
# no TensorRT and no network, in a 15-minute window that includes the machine's start. So:
#   - one global budget (GPU_CHECK_BUDGET_S, default 330 s), each step under its own `timeout`,
#     clipped to what is left; a step that cannot get its minimum is skipped and says so;
#   - a preflight (about 10 s) that checks and prints what each step needs: a C compiler and
#     Python.h (Triton builds its launcher with them), libcuda.so, CUDA_HOME / nvcc (AOTInductor),
#     the Python packages, nvidia-smi, and one trivial Triton kernel launched on the GPU; a
#     missing item skips only the steps that need it;
#   - steps by value: (1) the fast-path tests, (2) fast_bench (the baseline fp32 and fp16 eager,
#     every lever), (3) kernels_bench, (4) throughput through the runtime's CUDA path with few
#     frames, (5) the other CUDA tests; compile-heavy steps (torch.compile rows, the compiled
#     fast-generator test, export_check's AOTInductor build) only with GPU_CHECK_COMPILE=1;
#   - at most 8 files under $OUT (./gpu_check_out when unset), refreshed after every step, so a
#     run cut short keeps what finished:
#       summary.md          card, date, versions, preflight, every step (status, seconds), tables
#       gpu_check.log       every step's full output, in order
#       fast_bench.json/md  the levers table        kernels_bench.json   the kernels table
#       throughput.json/md  the end-to-end table    results.tgz          per-step logs, the rest
# The package is used from this checkout without pip: a shadow package tree that maps
# p2phd_infer.kernels / .export / .train onto kernels/, export/, train/ as pyproject.toml does.
set -u
T0=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-330}
RESERVE=10                      # kept for the last publish and timeout's kill grace
COMPILE=${GPU_CHECK_COMPILE:-0}
OUT=${OUT:-./gpu_check_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
LOG=$WORK/gpu_check.log
PRE=$WORK/preflight.tsv         # item <TAB> ok|missing|unknown <TAB> detail
ROWS=$WORK/rows.md
: > "$LOG"; : > "$PRE"; : > "$ROWS"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
unset TRITON_INTERPRET          # compiled kernels on the GPU, never the interpreter

elapsed() { echo $(( $(date +%s) - T0 )); }
say() { echo "$*" | tee -a "$LOG"; }
pf() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$PRE"; }     # record one preflight item
pf_status() { awk -F'\t' -v k="$1" '$1 == k { s = $2 } END { print s }' "$PRE"; }
pf_detail() { awk -F'\t' -v k="$1" '$1 == k { s = $3 } END { print s }' "$PRE"; }
# Every item once, in first-seen order, with its last verdict (the probe may refine the shell's).
pf_table() {
  awk -F'\t' '{ if (!($1 in last)) order[++n] = $1; last[$1] = $0 }
               END { for (i = 1; i <= n; i++) print last[order[i]] }' "$PRE"
}

# ---------------------------------------------------------------- the package, from this tree
SHADOW=$WORK/shadow
mkdir -p "$SHADOW/p2phd_infer"
for f in "$ROOT"/p2phd_infer/*; do ln -s "$f" "$SHADOW/p2phd_infer/"; done
for d in kernels train export; do ln -sfn "$ROOT/$d" "$SHADOW/p2phd_infer/$d"; done
export PYTHONPATH="$SHADOW${PYTHONPATH:+:$PYTHONPATH}"
PY="python3 -P"                 # -P: the checkout's own p2phd_infer/ must not shadow the tree

# ---------------------------------------------------------------- preflight
say "=== preflight"
if command -v cc > /dev/null; then pf cc ok "$(command -v cc)"
elif command -v gcc > /dev/null; then pf cc ok "$(command -v gcc) (no cc)"
else pf cc missing "no cc or gcc on PATH: Triton cannot build its launcher, inductor cannot compile"
fi
PYH=$(python3 -c 'import sysconfig, os; p = os.path.join(sysconfig.get_paths()["include"], "Python.h"); print(p if os.path.exists(p) else "")' 2>/dev/null)
if [ -n "$PYH" ]; then pf python_h ok "$PYH"
else pf python_h missing "Python.h not found (python3-dev): Triton's launcher does not build"
fi
LIBCUDA=$( (ldconfig -p 2>/dev/null | awk '/libcuda\.so/ { print $NF }';
            ls /usr/lib/x86_64-linux-gnu/libcuda.so* /usr/lib64/libcuda.so* \
               /usr/local/nvidia/lib64/libcuda.so* /usr/lib/wsl/lib/libcuda.so* 2>/dev/null) \
          | sort -u | tr '\n' ' ')
if [ -n "$LIBCUDA" ]; then pf libcuda ok "$LIBCUDA"
else pf libcuda missing "no libcuda.so in ldconfig -p or the usual lib folders (no driver?)"
fi
NVCC=$(command -v nvcc || ls "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" 2>/dev/null || true)
if [ -n "${CUDA_HOME:-}" ] && [ -f "$CUDA_HOME/include/cuda_runtime_api.h" ]; then
  pf cuda_home ok "CUDA_HOME=$CUDA_HOME"
elif [ -f /usr/local/cuda/include/cuda_runtime_api.h ]; then
  pf cuda_home ok "/usr/local/cuda (CUDA_HOME unset; torch finds it there)"
else pf cuda_home missing "no CUDA_HOME with include/cuda_runtime_api.h: AOTInductor cannot build"
fi
if [ -n "$NVCC" ]; then pf nvcc ok "$NVCC"; else pf nvcc missing "no nvcc on PATH or in CUDA_HOME/bin"; fi
if command -v nvidia-smi > /dev/null; then
  SMI=$(timeout 5 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 1)
  if [ -n "$SMI" ] && timeout 5 nvidia-smi -L > /dev/null 2>&1; then pf nvidia_smi ok "$SMI"
  else pf nvidia_smi missing "nvidia-smi found but sees no GPU: ${SMI:-no output}"; fi
else pf nvidia_smi missing "no nvidia-smi on PATH"
fi
# Whether there is a GPU at all, without torch: the device nodes. With neither nodes nor
# nvidia-smi the answer is no even if the Python probe below is cut short (a loaded machine can
# take longer than the preflight's seconds to import torch).
if ls /dev/nvidia[0-9]* > /dev/null 2>&1; then pf gpu_dev ok "$(ls /dev/nvidia[0-9]* | tr '\n' ' ')"
else pf gpu_dev missing "no /dev/nvidia0.. device node"
fi
if [ "$(pf_status gpu_dev)" = missing ] && [ "$(pf_status nvidia_smi)" = missing ]; then
  pf gpu missing "no GPU device node and no nvidia-smi"
fi

# Python: packages (cheap, first), then torch and CUDA, then one Triton kernel on the GPU. A probe
# cut by its timeout leaves the later items unknown (not missing): the steps still run.
cat > "$WORK/probe.py" <<'EOF'
import importlib, os, sys, warnings
warnings.simplefilter("ignore")     # e.g. click's __version__ deprecation: not a fault here
def pf(item, status, detail):
    print(f"{item}\t{status}\t{str(detail).splitlines()[0][:200] if str(detail) else ''}", flush=True)
pf("python", "ok", sys.version.split()[0])
for mod in ("click", "tqdm", "pytest", "fpng", "onnx", "onnxruntime"):
    try:
        m = importlib.import_module(mod)
        pf(mod, "ok", getattr(m, "__version__", "imported"))
    except Exception as e:
        pf(mod, "missing", f"{e.__class__.__name__}: {e}")
try:
    import torch
    pf("torch", "ok", torch.__version__)
except Exception as e:
    pf("torch", "missing", f"{e.__class__.__name__}: {e}")
    sys.exit(0)
if torch.cuda.is_available():
    pf("gpu", "ok", torch.cuda.get_device_name(0))
else:
    pf("gpu", "missing", f"torch {torch.__version__} sees no CUDA device (torch.version.cuda="
                         f"{torch.version.cuda})")


def triton_kernel():
    global triton, tl       # a jit function finds triton.language in its module's globals
    try:
        import triton
        import triton.language as tl
        pf("triton_version", "ok", triton.__version__)
    except Exception as e:
        return pf("triton", "missing", f"import triton: {e.__class__.__name__}: {e}")
    if not torch.cuda.is_available():
        return pf("triton", "missing", "no GPU to launch a kernel on")

    @triton.jit
    def add_one(x, y, n, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y + i, tl.load(x + i, mask=i < n) + 1, mask=i < n)
    try:
        x = torch.arange(1000, device="cuda", dtype=torch.float32)
        y = torch.empty_like(x)
        add_one[(4,)](x, y, 1000, BLOCK=256)
        torch.cuda.synchronize()
        ok = bool(torch.equal(y, x + 1))
        pf("triton", "ok" if ok else "missing", "a trivial kernel compiled, launched and summed "
                                                "right" if ok else "kernel ran, wrong sum")
    except Exception as e:
        pf("triton", "missing", f"kernel launch: {e.__class__.__name__}: {e}")
triton_kernel()
try:      # last: the package imports triton too, and the probe's seconds are few
    import p2phd_infer, p2phd_infer.kernels, p2phd_infer.engines.fast, p2phd_infer.runtime
    pf("pkg", "ok", os.path.dirname(p2phd_infer.__file__))
except Exception as e:
    pf("pkg", "missing", f"{e.__class__.__name__}: {e}")
EOF
PT=$(date +%s)
timeout -k 2 "$(( 10 - ($(date +%s) - T0) > 4 ? 10 - ($(date +%s) - T0) : 4 ))" \
  $PY "$WORK/probe.py" >> "$PRE" 2>> "$LOG"
PRC=$?
PROBE_S=$(( $(date +%s) - PT ))
[ $PRC -eq 124 ] || [ $PRC -eq 137 ] && say "preflight: the Python probe timed out after ${PROBE_S}s; what it had not reached is unknown"
for item in python click tqdm pytest fpng onnx onnxruntime torch pkg gpu triton; do
  [ -z "$(pf_status "$item")" ] && pf "$item" unknown "not reached by the probe (rc $PRC)"
done
PREFLIGHT_S=$(elapsed)
pf_table | awk -F'\t' '{ printf "  %-14s %-8s %s\n", $1, $2, $3 }' | tee -a "$LOG"
MISSING=$(pf_table | awk -F'\t' '$2 == "missing" { printf "%s%s", sep, $1; sep = ", " }')

CARD_SMI=$( [ "$(pf_status nvidia_smi)" = ok ] && pf_detail nvidia_smi | cut -d, -f1 || echo "-")
CARD_TORCH=$( [ "$(pf_status gpu)" = ok ] && pf_detail gpu || echo "none (no GPU)")

# ---------------------------------------------------------------- steps

# "needs A, B (missing)" for the missing items among the needs (their details are in the
# preflight table), or nothing.
first_missing() {
  local need gone=""
  for need in "$@"; do
    [ "$(pf_status "$need")" = missing ] && gone="${gone:+$gone, }$need"
  done
  [ -n "$gone" ] && echo "needs $gone (missing)"
}

row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$(echo "$4" | tr '|' '/' | cut -c1-160)" >> "$ROWS"; }

publish() {
  {
    echo "# gpu_check, $(date -Is)"
    echo
    echo "- card: nvidia-smi: $CARD_SMI; torch.cuda.get_device_name: $CARD_TORCH"
    if [ "$(pf_status gpu)" = missing ]; then
      echo "- **no GPU**: $(pf_detail gpu); every GPU step is skipped"
    fi
    echo "- python $(pf_detail python), torch $(pf_detail torch), triton $(pf_detail triton_version || true)$([ -z "$(pf_detail triton_version)" ] && echo '(not reached)')"
    echo "- budget ${BUDGET}s, used $(elapsed)s; compile steps: $([ "$COMPILE" = 1 ] && echo on || echo "off (GPU_CHECK_COMPILE=1 turns them on)")"
    echo "- missing: ${MISSING:-nothing}"
    echo
    echo "## Preflight (${PREFLIGHT_S}s)"
    echo
    echo "| item | status | detail |"
    echo "| --- | --- | --- |"
    pf_table | awk -F'\t' '{ gsub(/\|/, "/", $3); printf "| %s | %s | %s |\n", $1, $2, $3 }' 
    echo
    echo "## Steps"
    echo
    echo "| step | status | s | last line |"
    echo "| --- | --- | ---: | --- |"
    cat "$ROWS"
    for md in "$WORK"/fast_bench/fast_bench.md "$WORK"/fast_bench_compile/fast_bench.md \
              "$WORK"/throughput/*.md; do
      if [ -f "$md" ]; then echo; cat "$md"; fi
    done
    if [ -f "$WORK/export_check/export_check.json" ]; then
      echo; echo '```json'; cat "$WORK/export_check/export_check.json"; echo '```'
    fi
  } > "$OUT/.summary.md.tmp" && mv "$OUT/.summary.md.tmp" "$OUT/summary.md"
  cp "$LOG" "$OUT/.gpu_check.log.tmp" && mv "$OUT/.gpu_check.log.tmp" "$OUT/gpu_check.log"
  local src dst
  for pair in fast_bench/fast_bench.json:fast_bench.json fast_bench/fast_bench.md:fast_bench.md \
              kernels_bench.json:kernels_bench.json; do
    src=$WORK/${pair%%:*}; dst=${pair##*:}
    [ -f "$src" ] && cp "$src" "$OUT/.$dst.tmp" && mv "$OUT/.$dst.tmp" "$OUT/$dst"
  done
  for src in "$WORK"/throughput/*.json "$WORK"/throughput/*.md; do
    [ -f "$src" ] && cp "$src" "$OUT/.throughput.tmp" && mv "$OUT/.throughput.tmp" "$OUT/throughput.${src##*.}"
  done
  tar -czf "$OUT/.results.tgz.tmp" -C "$WORK" --exclude=shadow . 2>/dev/null \
    && mv "$OUT/.results.tgz.tmp" "$OUT/results.tgz"
}

# step NAME LIMIT_S MIN_S "NEEDS..." CMD...: runs CMD under min(LIMIT_S, budget left) unless a
# need is missing or less than MIN_S is left; records status, seconds and the output's last line.
step() {
  local name=$1 limit=$2 need=$3 needs=$4; shift 4
  local why left
  why=$(first_missing $needs)
  if [ -n "$why" ]; then
    row "$name" "skipped: $why" 0 ""; say "=== $name: skipped ($why)"; publish; return
  fi
  left=$(( BUDGET - RESERVE - $(elapsed) ))
  if [ "$left" -lt "$need" ]; then
    row "$name" "skipped: ${left}s of the budget left, needs ${need}s" 0 ""
    say "=== $name: skipped (${left}s left)"; publish; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "=== $name (timeout ${limit}s, at $(elapsed)s): $*"
  local t rc s last status
  t=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  s=$(( $(date +%s) - t ))
  cat "$WORK/$name.log" >> "$LOG"
  last=$(grep -E '(passed|failed|error|skipped|no tests ran)( |,|$)' "$WORK/$name.log" | tail -n 1)
  [ -z "$last" ] && last=$(grep -v '^\s*$' "$WORK/$name.log" | tail -n 1)
  case $rc in
    0) status=ok ;;
    124|137) status="failed: timed out at ${limit}s" ;;
    *) status="failed: rc $rc" ;;
  esac
  tail -n 3 "$WORK/$name.log"
  say "=== $name: $status in ${s}s"
  row "$name" "$status" "$s" "$last"
  publish
}

PYTEST="$PY -m pytest -o addopts= -q -rs -p no:cacheprovider"   # one -q: keeps the counts line
TRITON_NEEDS="gpu pkg cc python_h libcuda triton"

# (1) the fast path's tests: kernels and the fast generator against their references, compiled.
step tests_fast 100 40 "pytest $TRITON_NEEDS" $PYTEST \
  tests/test_fast_kernels.py tests/test_fast_generator.py tests/test_kernels.py

# (2) the levers at 2048x1024: fp32 and fp16 eager baselines, every lever, batch 1 and 4.
step fast_bench 110 45 "click $TRITON_NEEDS" $PY benchmarks/fast_bench.py \
  --out-dir "$WORK/fast_bench" --no-compile --batches 1,4 --iters 20 --warmup 3

# (3) the kernels against their references and the bandwidth floor.
step kernels_bench 40 20 "click $TRITON_NEEDS" $PY benchmarks/kernels_bench.py \
  --out "$WORK/kernels_bench.json" --reps 50

# (4) throughput: engine-only and end-to-end through the Runtime's three CUDA streams.
step throughput 70 40 "click tqdm gpu pkg" $PY benchmarks/throughput.py \
  --size 2048x1024 --device cuda --build "" --batch-sizes 1,4 --precisions fp16 --no-compile \
  --frames 8 --warmup 2 --formats jpg --out-dir "$WORK/throughput"

# (5) the other CUDA tests: the runtime's stream path, and the export tests that need a GPU
#     (-k cuda: test_runtime_cuda.py whole, CUDA-named export tests). Without onnx the export
#     files cannot be imported, so then only the runtime's.
CUDA_TESTS="tests/test_runtime_cuda.py"
if [ "$(pf_status onnx)" != missing ] && [ "$(pf_status onnxruntime)" != missing ]; then
  CUDA_TESTS="$CUDA_TESTS $(ls tests/test_export_*.py 2>/dev/null | tr '\n' ' ')"
fi
step tests_cuda 50 20 "pytest gpu pkg" $PYTEST -k cuda $CUDA_TESTS

# Compile-heavy, only when asked: the compiled fast-generator test, torch.compile rows of
# fast_bench, then the fp16 AOTInductor check.
if [ "$COMPILE" = 1 ]; then
  step tests_compile 90 60 "pytest cc python_h $TRITON_NEEDS" env P2PHD_TEST_COMPILE=1 \
    $PYTEST -k compiled tests/test_fast_generator.py
  step fast_bench_compile 150 90 "click cc python_h $TRITON_NEEDS" $PY benchmarks/fast_bench.py \
    --out-dir "$WORK/fast_bench_compile" --compile --only "torch.compile" --batches 1 \
    --iters 20 --warmup 3
  step export_check 150 100 "click onnx cc cuda_home gpu pkg" $PY benchmarks/export_check.py \
    --out-dir "$WORK/export_check"
else
  row tests_compile "skipped: compile step (GPU_CHECK_COMPILE=1)" 0 ""
  row fast_bench_compile "skipped: compile step (GPU_CHECK_COMPILE=1)" 0 ""
  row export_check "skipped: compile step (GPU_CHECK_COMPILE=1)" 0 ""
fi

publish
rm -rf "$WORK"                  # everything worth keeping is under $OUT (results.tgz)
echo
echo "================ $OUT/summary.md ($(elapsed)s) ================"
cat "$OUT/summary.md"
