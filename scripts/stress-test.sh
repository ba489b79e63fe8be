#!/usr/bin/env bash
# Rehearse CI on a busy machine: the README's test command while CPU-bound processes run beside it.
# Usage: scripts/stress-test.sh [RUNS] [-- pytest arguments]. RUNS (default 3) runs in a row; stops at
# the first red one. VOICEGATE_STRESS_HOGS sets how many busy processes (default 2, one per core here).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
hogs=()
stop_hogs() { [ ${#hogs[@]} -eq 0 ] || kill "${hogs[@]}" 2>/dev/null || true; }
trap stop_hogs EXIT
for _ in $(seq "${VOICEGATE_STRESS_HOGS:-2}"); do
  # A plain busy loop at normal priority: a neighbour on a shared CI machine takes a core.
  python3 -c 'while True: pass' &
  hogs+=($!)
done
echo "stress: ${#hogs[@]} CPU-bound processes beside the suite, $runs run(s)"
for run in $(seq "$runs"); do
  started=$(date +%s)
  if scripts/test.sh "$@"; then
    echo "stress run $run of $runs: passed in $(( $(date +%s) - started )) s"
  else
    echo "stress run $run of $runs: FAILED after $(( $(date +%s) - started )) s"
    exit 1
  fi
done
echo "stress: all $runs runs passed"
