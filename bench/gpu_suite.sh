#!/usr/bin/env bash
# Everything replay needs a GPU for, in one command for a lent GPU machine without network
# (DESIGN §7): install, build, GPU tests, GPU benchmarks, and a results table
# bench/results/gpu-<device>-<date>.md (device, date, commit, command, versions), printed last.
#
#   bench/gpu_suite.sh first                  the first run on a lent GPU, at most 6 minutes
#                                             (REPLAY_FIRST_LIMIT): see first() below
#   bench/gpu_suite.sh all [--quick]          setup, tests, benchmarks
#   bench/gpu_suite.sh setup                  pip install -e . and build replay._C (with CUDA)
#   bench/gpu_suite.sh tests                  setup, then the GPU tests and the Triton kernel tests
#   bench/gpu_suite.sh bench [--quick] [--sections matmul,prefill,decode,model]
#   bench/gpu_suite.sh table                  rebuild and print the table from what has run
#   ... --dry                                 no GPU: CPU, tiny shapes (what CI runs)
#   ... --out PATH                            the table somewhere else
#
# The lent machine allows 10 minutes per command: the whole script keeps to REPLAY_SUITE_LIMIT
# seconds (default 570), giving each phase what is left; the benchmarks stop starting new points
# when their budget is spent and still write their table. Phases and benchmark sections can run as
# separate commands: each leaves its part next to the table, and every run rebuilds the table from
# all the parts of that device and day. No .git on the machine? Pass REPLAY_COMMIT=<sha>.
#
# Exit status: 0 when every phase that ran passed; 1 otherwise (the table is printed either way).
set -euo pipefail
cd "$(dirname "$0")/.."

PHASE=${1:-all}
shift || true
case $PHASE in first|all|setup|tests|bench|table) ;; *)
  echo "usage: bench/gpu_suite.sh [first|all|setup|tests|bench|table] [--quick] [--dry]" \
       "[--sections ...]" >&2
  exit 2 ;;
esac
DRY=0
DRY_ARG=()
BENCH_ARGS=()
for a in "$@"; do
  if [[ $a == --dry ]]; then DRY=1; DRY_ARG=(--dry); fi
  BENCH_ARGS+=("$a")
done
PY=${PYTHON:-python3}
LIMIT=${REPLAY_SUITE_LIMIT:-570}
[[ $PHASE == first ]] && LIMIT=${REPLAY_FIRST_LIMIT:-360}
COMMAND="bench/gpu_suite.sh $PHASE${*:+ $*}"
FAILED=()
STAGE=start  # what was running, for the failure message

say() { printf '\n=== gpu_suite: %s\n' "$*" >&2; }
left() {  # seconds left of the command's limit, at least 1 (timeout 0 would mean no limit)
  local n=$(( LIMIT - SECONDS ))
  echo $(( n > 0 ? n : 1 ))
}

finish() {  # on every exit: rebuild the table from the parts and print it, then the verdict
  local rc=$?
  trap - EXIT
  [[ $rc -ne 0 && ${#FAILED[@]} -eq 0 ]] && FAILED+=("$STAGE (exit $rc)")
  if [[ -n ${TABLE:-} ]]; then
    "$PY" bench/gpu_bench.py --sections none --out "$TABLE" --command "$COMMAND" \
      "${DRY_ARG[@]}" || FAILED+=("table")
  fi
  if ((${#FAILED[@]})); then
    printf '\ngpu_suite: FAILED: %s\n' "${FAILED[*]}" >&2
    exit 1
  fi
  printf '\ngpu_suite: OK (%ss)\n' "$SECONDS" >&2
}
trap finish EXIT

setup() {
  STAGE=setup
  say "setup: install replay and build replay._C"
  if [[ ${REPLAY_SKIP_SETUP:-0} == 1 ]]; then
    echo "REPLAY_SKIP_SETUP=1: skipped" >&2
    return
  fi
  timeout "$(left)" "$PY" -m pip install -q --no-deps --no-build-isolation -e .
  timeout "$(left)" "$PY" setup.py -q build_ext --inplace
  "$PY" - <<'EOF' >&2
import torch
from replay._ext import C
cuda = torch.cuda.is_available()
print("CUDA device:", torch.cuda.get_device_name() if cuda else "none")
print("replay._C CUDA kernels:", "built" if hasattr(C(), "score_cuda_f32") else
      "NOT built (nvcc not found or REPLAY_SKIP_CUDA_BUILD=1): CUDA scoring tests will skip")
EOF
}

# One pytest run: its summary line (and skip reasons) go into the tests part of the table.
run_pytest() {
  local title=$1 budget=$2
  shift 2
  local log rc=0
  log=$(mktemp)
  say "tests: $title (at most ${budget}s)"
  timeout "$budget" "$PY" -m pytest -q -rs "$@" 2>&1 | tee "$log" >&2 || rc=$?
  [[ $rc -eq 5 ]] && rc=0  # no test collected (e.g. every test deselected): not a failure
  [[ $rc -eq 124 ]] && echo "TIMEOUT after ${budget}s" >>"$log"
  {
    local summary
    summary=$(grep -E '(passed|failed|error|skipped|deselected|no tests ran|TIMEOUT)' "$log" \
              | tail -n 1 | tr -d '=' | sed 's/^ *//' || true)
    echo "| \`python -m pytest -q $*\` | ${summary:-no summary (see the log)} |"
  } >>"$PARTS/tests.rows"
  grep -E '^(SKIPPED|FAILED|ERROR)' "$log" | sed 's/^/    /' >>"$PARTS/tests.details" || true
  rm -f "$log"
  ((rc == 0)) || FAILED+=("$title")
}

tests() {
  STAGE=tests
  : >"$PARTS/tests.rows"
  : >"$PARTS/tests.details"
  local budget
  budget=$(left)
  [[ $PHASE == all ]] && budget=$(( budget / 2 ))  # leave the benchmarks the other half
  # GPU tests: bitwise replay in bf16, numerics against float64, CUDA scoring and sampler
  # against the C++ ones. Without CUDA (a dry run) they skip, which checks that they say why.
  run_pytest "GPU tests" "$budget" -m gpu tests
  # The Triton kernel tests: their CUDA cases are marked gpu and ran above; the rest of those
  # files (configuration checks; interpreter cases skip where CUDA is present) run here.
  local kt=()
  for f in tests/test_triton*.py tests/test_kernels*.py; do [[ -e $f ]] && kt+=("$f"); done
  if ((DRY)); then
    echo "dry run: the Triton kernel tests are left to CI's CPU run" >&2
  elif ((${#kt[@]})); then
    run_pytest "Triton kernel tests" "$(left)" -m "not gpu" "${kt[@]}"
  fi
  tests_part
}

tests_part() {  # the tests part of the table, from the rows run_pytest wrote
  {
    echo "## GPU tests"
    echo
    echo "| command | result |"
    echo "|---|---|"
    cat "$PARTS/tests.rows"
    if [[ -s $PARTS/tests.details ]]; then
      echo
      echo "Skipped and failed:"
      echo
      cat "$PARTS/tests.details"
    fi
    echo
    echo "_Run by \`$COMMAND\` at $(date -u +%H:%M) UTC._"
  } >"$PARTS/tests.md"
  rm -f "$PARTS/tests.rows" "$PARTS/tests.details"
}

bench() {
  STAGE=bench
  local budget=$(( $(left) - 60 ))  # the last point may overrun its start by up to a minute
  ((budget > 30)) || budget=30
  say "bench: gpu_bench.py ${BENCH_ARGS[*]:-} (budget ${budget}s)"
  local rc=0 hard=$(( $(left) - 10 ))
  ((hard > 30)) || hard=30
  # The table is printed once, at the end, by finish().
  timeout "$hard" "$PY" bench/gpu_bench.py "${BENCH_ARGS[@]}" --out "$TABLE" \
    --budget "$budget" --command "$COMMAND" >/dev/null || rc=$?
  ((rc == 0)) || FAILED+=("bench (exit $rc)")
}

# ---------------------------------------------------------------------------------------------
# first: what one lent machine must bring back, in one command of at most 6 minutes. Each step has
# a time box (its share, or what is left if less); a step that fails or runs out of time is
# recorded and the next one runs. The rest of the suite (all, bench --sections ...) is for a
# second call. docs/gpu.md says what each figure means and why this fits.

STEPS=()  # "| step | time box | took | result |" rows of the first run
step() {  # step NAME BOX COMMAND...: run COMMAND within min(BOX, what is left); record it
  local name=$1 box=$2 rc=0 t0=$SECONDS l
  shift 2
  l=$(left)
  ((box < l)) || box=$l
  STAGE=$name
  say "first: $name (at most ${box}s)"
  BOX=$box "$@" || rc=$?
  local took=$(( SECONDS - t0 )) result=ok
  ((rc == 124)) && result="TIMEOUT after ${box}s"
  ((rc != 0 && rc != 124)) && result="FAILED (exit $rc)"
  ((rc == 0)) || FAILED+=("$name")
  STEPS+=("| $name | ${box}s | ${took}s | $result |")
  first_part
}

first_part() {  # the step table, rewritten after every step so that a killed run still has it
  {
    echo "## First run: steps"
    echo
    echo "Every step is time-boxed and none aborts the rest; the whole run keeps to ${LIMIT}s."
    echo
    echo "| step | time box | took | result |"
    echo "|---|---|---|---|"
    if ((${#STEPS[@]})); then printf '%s\n' "${STEPS[@]}"; fi
    echo
  } >"$PARTS/first.md"
}

env_step() {  # the machine, printed and kept as a part of the table
  {
    echo "## Environment"
    echo
    echo '```'
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 2
    else
      echo "nvidia-smi: not found"
    fi
    if command -v nvcc >/dev/null; then nvcc --version | tail -n 2; else echo "nvcc: not found"; fi
    timeout "$BOX" "$PY" - <<'EOF' 2>&1
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}: {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB, "
          f"sm_{p.major}{p.minor}")
else:
    print("GPU: none (torch.cuda.is_available() is False)")
EOF
    echo '```'
    echo
  } | tee "$PARTS/env.md" >&2
}

build_once() {  # one build: pip's editable install compiles replay._C into the tree
  if [[ ${REPLAY_SKIP_SETUP:-0} == 1 ]]; then
    echo "REPLAY_SKIP_SETUP=1: skipped" >&2
    return
  fi
  timeout "$BOX" "$PY" -m pip install -q --no-deps --no-build-isolation -e . || return
  "$PY" -c "from replay._ext import C; print('replay._C:', 'with CUDA' if getattr(C(), 'has_cuda',
False) else 'CPU only (nvcc not found): the CUDA sampler tests will skip')" >&2
}

FIRST_TESTS=(
  tests/test_gpu.py::test_engine_rows_equal_verifier_rows_bf16      # batch 1..256, chunks 1/16/256
  tests/test_gpu.py::test_same_request_same_rows_in_any_batch_bf16  # alone vs among 255
  tests/test_gpu.py::test_prefill_and_decode_rows_equal_bf16
  "tests/test_triton_kernels.py::test_attention_rows_equal_across_batches_and_buffer_places[cuda-bf16]"
  tests/test_gpu.py::test_forward_makes_no_device_sync
  tests/test_gpu.py::test_forward_runs_in_a_cuda_graph
  tests/test_gpu.py::test_sampling_on_cuda_matches_cpp
)

tests_step() {  # the bf16 bitwise replay tests (split vs one-program attention among them)
  : >"$PARTS/tests.rows"
  : >"$PARTS/tests.details"
  local before=${#FAILED[@]}
  run_pytest "bf16 bitwise replay" "$BOX" "${FIRST_TESTS[@]}"
  tests_part
  if ((${#FAILED[@]} > before)); then  # step() records the failure, once, as this step's
    FAILED=("${FAILED[@]:0:before}")
    return 1
  fi
}

bench_step() {  # bench_step SECTION: one gpu_bench.py section on the first run's grid
  timeout "$BOX" "$PY" bench/gpu_bench.py --first --sections "$1" --out "$TABLE" \
    --budget $(( BOX > 30 ? BOX - 20 : 10 )) --command "$COMMAND" "${DRY_ARG[@]}" >/dev/null
}

first() {
  first_part
  step environment 20 env_step
  step build 100 build_once
  step "bf16 bitwise replay" 100 tests_step
  step "matmul vs cuBLAS" 45 bench_step matmul
  step "verifier MFU" 80 bench_step verify
}

unset TRITON_INTERPRET  # real kernels on the GPU; gpu_bench.py --dry sets it for itself
if ((DRY)); then
  export TRITON_INTERPRET=1
fi
STAGE="finding the table (is there a CUDA device? --dry runs without one)"
TABLE=$("$PY" bench/gpu_bench.py --where "${BENCH_ARGS[@]}")  # honours --out and --dry
PARTS=${TABLE%.md}.parts
mkdir -p "$PARTS"
case $PHASE in table|first) ;; *) setup ;; esac
case $PHASE in
  first) first ;;
  tests) tests ;;
  bench) bench ;;
  all) tests; bench ;;
esac
