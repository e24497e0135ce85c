#!/usr/bin/env python3
"""Check `attn run` against a float64 numpy reference (optional tool).

Writes seeded unit-normal float32 Q, K, V with numpy, runs
`target/release/attn run` for each kernel, and compares O and the LSE with
softmax attention computed in float64 by numpy (bottom-right causal mask).
Never needed by the tests or CI; needs numpy and a release build:

    cargo build --release -p harness
    python3 scripts/check_against_numpy.py            # B=1, H=8, d=64, N in 1, 17, 512, 2048
    python3 scripts/check_against_numpy.py --kernels oracle,naive,flash --n 1,17,512

Prints one line per (kernel, N, causal) with the max abs errors and exits 1
if any exceeds its tolerance (oracle 1e-6, naive 2e-6, flash 2e-5 unless
--tol kernel=value is given).
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

TOL = {"oracle": 1e-6, "naive": 2e-6, "flash": 2e-5}


def reference(q, k, v, causal, scale):
    """float64 O [B, Hq, Nq, dv] and LSE [B, Hq, Nq]; GQA by head groups."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    b, hq, nq, _ = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    out = np.zeros((b, hq, nq, v.shape[3]))
    lse = np.full((b, hq, nq), -np.inf)
    if causal:
        # bottom-right: query i sees keys j <= i + nk - nq
        visible = np.arange(nk)[None, :] <= np.arange(nq)[:, None] + (nk - nq)
    for bi in range(b):
        for h in range(hq):  # one head at a time keeps memory at Nq*Nk
            s = scale * (q[bi, h] @ k[bi, h // g].T)
            if causal:
                s = np.where(visible, s, -np.inf)
            m = s.max(axis=1, keepdims=True)
            m = np.where(np.isfinite(m), m, 0.0)
            p = np.exp(s - m)
            z = p.sum(axis=1, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                lse[bi, h] = np.where(z[:, 0] > 0, m[:, 0] + np.log(z[:, 0]), -np.inf)
                out[bi, h] = np.where(z > 0, (p / z) @ v[bi, h // g], 0.0)
    return out, lse


def max_abs(got, want):
    both_inf = np.isneginf(want) & np.isneginf(got)
    diff = np.where(both_inf, 0.0, np.abs(got.astype(np.float64) - want))
    return float(np.nanmax(diff)) if diff.size else 0.0


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attn", default=os.path.join(root, "target", "release", "attn"))
    ap.add_argument("--kernels", default="oracle,naive")
    ap.add_argument("--n", default="1,17,512,2048", help="sequence lengths (Nq = Nk)")
    ap.add_argument("--b", type=int, default=1)
    ap.add_argument("--h", type=int, default=8, help="query heads")
    ap.add_argument("--hkv", type=int, default=None, help="kv heads (default: --h)")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", action="append", default=[], help="kernel=max_abs")
    args = ap.parse_args()
    tol = dict(TOL)
    for t in args.tol:
        name, value = t.split("=")
        tol[name] = float(value)
    hkv = args.hkv or args.h
    if not os.access(args.attn, os.X_OK):
        sys.exit(f"{args.attn} not found: run `cargo build --release -p harness` first")

    failed = False
    worst = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = lambda name: os.path.join(tmp, name)  # noqa: E731
        for n in (int(x) for x in args.n.split(",")):
            rng = np.random.default_rng(args.seed + n)
            q = rng.standard_normal((args.b, args.h, n, args.d)).astype(np.float32)
            k = rng.standard_normal((args.b, hkv, n, args.d)).astype(np.float32)
            v = rng.standard_normal((args.b, hkv, n, args.d)).astype(np.float32)
            for name, x in (("q", q), ("k", k), ("v", v)):
                np.save(path(f"{name}.npy"), x)
            for causal in (0, 1):
                ref_o, ref_lse = reference(q, k, v, causal, 1.0 / np.sqrt(args.d))
                for kernel in args.kernels.split(","):
                    for f in ("o.npy", "lse.npy"):
                        if os.path.exists(path(f)):
                            os.remove(path(f))
                    cmd = [
                        args.attn, "run", "--kernel", kernel,
                        "--q", path("q.npy"), "--k", path("k.npy"), "--v", path("v.npy"),
                        "--out", path("o.npy"), "--lse", path("lse.npy"),
                        "--causal", str(causal), "--threads", str(args.threads),
                    ]
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    if r.returncode != 0:
                        print(f"{kernel:6} N={n:5} causal={causal}: FAILED: {r.stderr.strip()}")
                        failed = True
                        continue
                    o, lse = np.load(path("o.npy")), np.load(path("lse.npy"))
                    assert o.dtype == np.float32 and o.shape == ref_o.shape, (o.dtype, o.shape)
                    assert lse.dtype == np.float32 and lse.shape == ref_lse.shape
                    eo, el = max_abs(o, ref_o), max_abs(lse, ref_lse)
                    ms = r.stdout.strip().split("=")[-1]
                    ok = eo <= tol[kernel] and el <= tol[kernel]
                    failed |= not ok
                    w = worst.setdefault(kernel, [0.0, 0.0])
                    w[0], w[1] = max(w[0], eo), max(w[1], el)
                    print(f"{kernel:6} N={n:5} causal={causal}: max abs err O {eo:.3e}  "
                          f"LSE {el:.3e}  (tol {tol[kernel]:.0e}, {ms} ms) "
                          f"{'ok' if ok else 'FAIL'}")
    for kernel, (eo, el) in worst.items():
        print(f"worst {kernel}: O {eo:.3e}, LSE {el:.3e} (tol {tol[kernel]:.0e})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
