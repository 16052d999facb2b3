#!/usr/bin/env bash
# Everything replay needs a GPU for, in one command for a lent GPU machine without network
# (DESIGN §7): install, build, GPU tests, GPU benchmarks, and a results table
# bench/results/gpu-<device>-<date>.md (device, date, commit, command, versions), printed last.
#
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
case $PHASE in all|setup|tests|bench|table) ;; *)
  echo "usage: bench/gpu_suite.sh [all|setup|tests|bench|table] [--quick] [--dry] [--sections ...]" >&2
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

unset TRITON_INTERPRET  # real kernels on the GPU; gpu_bench.py --dry sets it for itself
if ((DRY)); then
  export TRITON_INTERPRET=1
fi
STAGE="finding the table (is there a CUDA device? --dry runs without one)"
TABLE=$("$PY" bench/gpu_bench.py --where "${BENCH_ARGS[@]}")  # honours --out and --dry
PARTS=${TABLE%.md}.parts
mkdir -p "$PARTS"
[[ $PHASE == table ]] || setup
case $PHASE in
  tests) tests ;;
  bench) bench ;;
  all) tests; bench ;;
esac
