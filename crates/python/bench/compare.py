"""attnlab.attention (Python) next to attnlab::attention_with (Rust) on the
same shape, interleaved so that drift on a shared machine hits both alike.

    cargo build --release -p attnlab-python-bench        # in crates/python
    python bench/compare.py [--shape 1,8,8,4096,64] [--causal 0] [--threads 2] [--rounds 7] [--reps 3]

Prints the median per-call time of each side, and their ratio. The Python
side times ``attnlab.attention(q, k, v)`` (output allocated, as the Rust
facade allocates it) and ``attnlab.attention(q, k, v, out=buf)``.
"""

import argparse
import pathlib
import statistics
import subprocess
import time

import numpy as np

import attnlab

HERE = pathlib.Path(__file__).resolve().parent
BIN = HERE.parent / "target" / "release" / "attnlab-python-bench"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1,8,8,4096,64", help="B,Hq,Hkv,N,d")
    ap.add_argument("--causal", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    B, Hq, Hkv, N, d = map(int, a.shape.split(","))
    rng = np.random.default_rng(0)
    q = rng.uniform(-1, 1, (B, Hq, N, d)).astype(np.float32)
    k = rng.uniform(-1, 1, (B, Hkv, N, d)).astype(np.float32)
    v = rng.uniform(-1, 1, (B, Hkv, N, d)).astype(np.float32)
    buf = np.empty((B, Hq, N, d), np.float32)
    kw = dict(causal=bool(a.causal), threads=a.threads)
    attnlab.attention(q, k, v, **kw)  # warm-up: the pool, the pages

    rust, py, py_out = [], [], []
    for _ in range(a.rounds):
        r = subprocess.run(
            [str(BIN), str(B), str(Hq), str(Hkv), str(N), str(d), str(a.causal), str(a.threads), "1", str(a.reps)],
            capture_output=True, text=True, check=True,
        )
        rust += [float(line.split("=")[1]) for line in r.stdout.split()]
        for _ in range(a.reps):
            t = time.perf_counter()
            attnlab.attention(q, k, v, **kw)
            py.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            attnlab.attention(q, k, v, out=buf, **kw)
            py_out.append((time.perf_counter() - t) * 1e3)
    med = statistics.median
    print(f"shape {a.shape} causal={a.causal} threads={a.threads}, {len(rust)} calls each, medians:")
    print(f"  Rust   attnlab::attention_with        {med(rust):9.2f} ms")
    print(f"  Python attnlab.attention(q, k, v)     {med(py):9.2f} ms  ({med(py) / med(rust):.3f} x Rust)")
    print(f"  Python attnlab.attention(.., out=buf) {med(py_out):9.2f} ms  ({med(py_out) / med(rust):.3f} x Rust)")


if __name__ == "__main__":
    main()
