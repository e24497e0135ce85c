#!/usr/bin/env bash
# docs/ring.md from measurements on this machine, end to end:
#   scripts/ring-doc.sh [N]        N: the measured rings' length (default 65536)
# 1. builds attn (release, --features mpi: Open MPI and libclang needed, see
#    the README);
# 2. MPI ping-pong between two ranks on this machine (shared memory);
# 3. one rank alone (`attn ring-bench --solo`) on all of the machine's CPUs
#    (the machine's throughput): at the chunk sizes of the rings below (N
#    over 2 and 4 ranks), and at two small chunks (N = 16384 over 8 and 64
#    ranks) for the model table;
# 4. the ring over MPI, mpirun -np 2 and -np 4: N tokens, causal, zigzag,
#    H = 8, d = 64, one thread per rank;
# 5. `attn ring-report`: docs/ring.md and docs/img/ring_model.svg.
# Every measurement appends to results/ring.json with the machine, commit,
# date and load. Run it on a committed tree, so that the commit recorded is
# the code that ran.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-65536}
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "ring-doc: warning: the tree has uncommitted changes (results will say -dirty)" >&2
fi
cargo build --release -p harness --features mpi --bin attn
attn=target/release/attn
mpi=(mpirun --oversubscribe)
# mpirun refuses root unless told; only where it runs as root.
if [ "$(id -u)" = 0 ]; then mpi+=(--allow-run-as-root); fi
cpus=$(nproc --all)
shape=(--heads 8 --head-dim 64 --causal --layout zigzag)
step() { echo; echo "=== $*"; }

step "MPI ping-pong, 2 ranks"
"${mpi[@]}" -np 2 "$attn" ring-bench --ping-pong --json
for p in 8 64; do
  step "one rank alone: N = 16384 over $p ranks, $cpus threads"
  "$attn" ring-bench --q-len 16384 --ranks "$p" "${shape[@]}" --solo --threads "$cpus" \
    --warmup 1 --reps 3 --json
done
# Each ring right after its solo rank: the machine is shared, and the model
# compares the two.
for p in 2 4; do
  step "one rank alone: N = $n over $p ranks, $cpus threads"
  "$attn" ring-bench --q-len "$n" --ranks "$p" "${shape[@]}" --solo --threads "$cpus" --json
  step "the ring over MPI: mpirun -np $p, N = $n"
  "${mpi[@]}" -np "$p" "$attn" ring-bench --q-len "$n" "${shape[@]}" --threads 1 --json
done
step "docs/ring.md"
"$attn" ring-report
