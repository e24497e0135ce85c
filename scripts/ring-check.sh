#!/usr/bin/env bash
# The ring over MPI against one process, on generated inputs:
#   scripts/ring-check.sh [N] [NP]        (default N = 65536, NP = 4)
# B = 1, H = 8, d = 64, causal: `attn run --kernel flash` on all CPUs, then
# `mpirun -np NP attn ring` (one thread per rank), and the largest absolute
# differences of O and LSE. Needs attn built with --features mpi (it builds
# it) and about 1.2 GiB of scratch space in $TMPDIR for N = 65536.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-65536}
np=${2:-4}
cargo build --release -p harness --features mpi --bin attn --example npy_tool
root=$PWD/target/release
mpi=(mpirun --oversubscribe -np "$np")
if [ "$(id -u)" = 0 ]; then mpi+=(--allow-run-as-root); fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
"$root/examples/npy_tool" gen q.npy "1,8,$n,64" 1
"$root/examples/npy_tool" gen k.npy "1,8,$n,64" 2
"$root/examples/npy_tool" gen v.npy "1,8,$n,64" 3
echo "--- attn run --kernel flash --causal 1 --threads $(nproc --all): N = $n, H = 8, d = 64"
"$root/attn" run --q q.npy --k k.npy --v v.npy --out o_run.npy --lse lse_run.npy --kernel flash \
  --causal 1 --threads "$(nproc --all)"
echo "--- mpirun -np $np attn ring --causal --threads 1"
"${mpi[@]}" "$root/attn" ring --q q.npy --k k.npy --v v.npy --out o_ring.npy --lse lse_ring.npy \
  --causal --threads 1
echo "--- O: ring against run"
"$root/examples/npy_tool" diff o_ring.npy o_run.npy
echo "--- LSE: ring against run"
"$root/examples/npy_tool" diff lse_ring.npy lse_run.npy
