#!/usr/bin/env bash
# The MPI transport under mpirun, every mode of mpi_ring_check with NP ranks:
#   crates/ring/examples/mpi_check.sh path/to/mpi_ring_check NP
# `check` must pass; each failure mode must end the whole job non-zero,
# with the expected message, well before any hang guard (timeout 60).
set -euo pipefail
bin=$1
np=$2
run=(mpirun --oversubscribe -np "$np")
# mpirun refuses root unless told; only where CI runs as root.
if [ "$(id -u)" = 0 ]; then run+=(--allow-run-as-root); fi

echo "--- check, $np ranks"
timeout 120 "${run[@]}" "$bin" check

# expect_failure MODE MAX_SECONDS PATTERN COUNT: the job exits non-zero
# within MAX_SECONDS and at least COUNT lines match PATTERN.
expect_failure() {
  local mode=$1 max=$2 pattern=$3 count=$4 out rc t0 t
  echo "--- $mode, $np ranks"
  t0=$(date +%s)
  set +e
  out=$(timeout 60 "${run[@]}" "$bin" "$mode" 2>&1)
  rc=$?
  set -e
  t=$(( $(date +%s) - t0 ))
  echo "$out" | grep -aE "^rank [0-9]+: error" || true
  echo "exit $rc after ${t} s"
  if [ "$rc" = 0 ] || [ "$rc" = 124 ]; then
    echo "FAIL: $mode: exit status $rc (0 = no failure, 124 = hang)"; echo "$out"; return 1
  fi
  if [ "$t" -gt "$max" ]; then
    echo "FAIL: $mode: took ${t} s (at most ${max} s)"; return 1
  fi
  local n
  n=$(echo "$out" | grep -acE "$pattern" || true)
  if [ "$n" -lt "$count" ]; then
    echo "FAIL: $mode: $n lines match '$pattern', expected $count"; echo "$out"; return 1
  fi
}

# Bad input on rank 0: every rank prints rank 0's error and exits 1.
expect_failure fail-rank0 20 "^rank [0-9]+: error: rank 0 failed: bad input" "$np"
# Rank 0 never shifts: rank 1 times out (deadline 2 s), the job is aborted.
expect_failure stall-rank0 20 "^rank 1: error: no block from rank 0 within 2.0 s" 1
# Rank 0 dies: mpirun ends the job long before the 60 s deadline.
expect_failure exit-rank0 20 "Exit code: +3" 1
echo "--- MPI checks passed, $np ranks"
