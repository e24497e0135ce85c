#!/usr/bin/env python3
"""Check `attn run`'s score modifiers against PyTorch and numpy (optional tool).

On the inputs of `shared/peers` (B=1, H=8, N=512, d=64, float32 Q, K, V;
read from $PEERS_HOME/build/data/mha_d64_N512_{full,causal} when the peers
sweep has written them, else generated the same way: seeded by the shape's
name), for no mask and causal:

- `--bias b.npy` (a seeded standard-normal bias [1, H, N, N] with some -inf
  entries, never a whole row) against PyTorch's
  `scaled_dot_product_attention` in float64 with the same bias as a float
  `attn_mask` (the causal mask added to it as -inf: PyTorch's `is_causal` is
  top-left aligned, attnlab's bottom-right; for Nq = Nk they agree, and the
  float mask states it either way);
- `--softcap`, `--sinks`, `--alibi`, `--alibi-slopes`, the bias, and all of
  them together against a float64 numpy reference written here from
  docs/semantics.md ("Score modifiers": bias, then ALiBi, then the softcap,
  then the mask; the sink only in the softmax denominator), O and the LSE.

Never needed by the tests or CI. Needs numpy; torch for the PyTorch check
(skipped, and said so, without it). With the peers' virtualenv and a release
build:

    cargo build --release -p harness
    ~/.cache/attnlab-peers/.venv/bin/python scripts/check_modifiers.py
    ~/.cache/attnlab-peers/.venv/bin/python scripts/check_modifiers.py --kernels oracle,naive,flash

Prints one line per (kernel, mask, check) with the max abs errors of O and
the LSE, and exits 1 if any exceeds its kernel's tolerance (max abs, O and
LSE, inputs standard-normal: oracle 1e-6, naive 2e-6, flash 2e-5, as
scripts/check_against_numpy.py; --tol kernel=value changes one) or if a
run fails.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

TOL = {"oracle": 1e-6, "naive": 2e-6, "flash": 2e-5}


def default_slopes(n):
    """ALiBi's slopes for n heads (docs/semantics.md), rounded to f32 as
    attnlab stores them."""

    def pow2(n):
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    m = 1 << (n.bit_length() - 1)
    s = pow2(m)
    if m < n:
        s += pow2(2 * m)[::2][: n - m]
    return np.array(s, dtype=np.float32)


def visible_keys(nq, nk, causal):
    """[nq, nk] bool: bottom-right causal (query i sees keys j <= i + nk - nq)."""
    if not causal:
        return np.ones((nq, nk), dtype=bool)
    return np.arange(nk)[None, :] <= np.arange(nq)[:, None] + (nk - nq)


def reference(q, k, v, causal, scale, bias=None, slopes=None, softcap=None, sinks=None):
    """float64 O [B, Hq, Nq, dv] and LSE [B, Hq, Nq] of docs/semantics.md:
    s = scale*q.k; s += bias; s -= slope*|i + Nk - Nq - j|; s = c*tanh(s/c)
    (-inf stays -inf); masked keys drop out; lse = ln(e^sink + sum e^s);
    O = sum e^(s - lse) v. GQA by head groups; bias dims of size 1
    broadcast."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    b, hq, nq, _ = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    g = hq // hkv
    out = np.zeros((b, hq, nq, v.shape[3]))
    lse = np.full((b, hq, nq), -np.inf)
    visible = visible_keys(nq, nk, causal)
    dist = np.abs((np.arange(nq)[:, None] + (nk - nq)) - np.arange(nk)[None, :])
    for bi in range(b):
        for h in range(hq):
            s = scale * (q[bi, h] @ k[bi, h // g].T)
            if bias is not None:
                s = s + bias[bi % bias.shape[0], h % bias.shape[1]].astype(np.float64)
            if slopes is not None:
                s = s - float(slopes[h]) * dist
            if softcap is not None:
                c = float(softcap)
                s = np.where(np.isneginf(s), s, c * np.tanh(s / c))
            s = np.where(visible, s, -np.inf)
            m = s.max(axis=1)
            if sinks is not None:
                m = np.maximum(m, float(sinks[h]))
            m = np.where(np.isfinite(m), m, 0.0)
            p = np.exp(s - m[:, None])
            z = p.sum(axis=1)
            if sinks is not None:
                z = z + np.exp(float(sinks[h]) - m)
            with np.errstate(divide="ignore", invalid="ignore"):
                lse[bi, h] = np.where(z > 0, m + np.log(z), -np.inf)
                out[bi, h] = np.where(z[:, None] > 0, (p / z[:, None]) @ v[bi, h // g], 0.0)
    return out, lse


def torch_sdpa(q, k, v, causal, scale, bias):
    """PyTorch SDPA in float64 with `bias` (+ the causal mask as -inf) as a
    float attn_mask; None without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    nq, nk = q.shape[2], k.shape[2]
    mask = bias.astype(np.float64) + np.where(visible_keys(nq, nk, causal), 0.0, -np.inf)
    t = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))  # noqa: E731
    g = q.shape[1] // k.shape[1]
    kk, vv = t(k).repeat_interleave(g, dim=1), t(v).repeat_interleave(g, dim=1)
    with torch.no_grad():
        o = F.scaled_dot_product_attention(t(q), kk, vv, attn_mask=t(mask), scale=scale)
    return o.numpy()


def max_abs(got, want):
    both_inf = np.isneginf(want) & np.isneginf(got)
    diff = np.where(both_inf, 0.0, np.abs(got.astype(np.float64) - want))
    return float(np.max(diff)) if diff.size else 0.0


def peers_inputs(name, b, h, n, d):
    """The peers sweep's q, k, v for shape `name` (its data directory when
    present, else generated as bench_peers.py does) and whether it is
    causal."""
    home = os.environ.get("PEERS_HOME", os.path.expanduser("~/.cache/attnlab-peers"))
    data = os.path.join(home, "build", "data", name)
    causal = name.endswith("_causal")
    if all(os.path.exists(os.path.join(data, f"{x}.npy")) for x in "qkv"):
        with open(os.path.join(data, "meta.json")) as f:
            causal = json.load(f)["key"]["causal"]
        return [np.load(os.path.join(data, f"{x}.npy")) for x in "qkv"], causal, data
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    qkv = [rng.standard_normal((b, h, n, d), dtype=np.float32) for _ in range(3)]
    return qkv, causal, f"generated (seed {seed}, as bench_peers.py)"


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attn", default=os.path.join(root, "target", "release", "attn"))
    ap.add_argument("--kernels", default="flash")
    ap.add_argument("--shapes", default="mha_d64_N512_full,mha_d64_N512_causal",
                    help="peers shape names (MHA, B=1, H=8, d=64, N=512 when generated)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="seed of the bias, sinks and slopes")
    ap.add_argument("--tol", action="append", default=[], help="kernel=max_abs")
    args = ap.parse_args()
    tol = dict(TOL)
    for t in args.tol:
        name, value = t.split("=")
        tol[name] = float(value)
    if not os.access(args.attn, os.X_OK):
        sys.exit(f"{args.attn} not found: run `cargo build --release -p harness` first")

    failed = False
    worst = {}
    torch_missing = False
    with tempfile.TemporaryDirectory() as tmp:
        path = lambda name: os.path.join(tmp, name)  # noqa: E731
        for shape in args.shapes.split(","):
            (q, k, v), causal, source = peers_inputs(shape, 1, 8, 512, 64)
            b, hq, n, d = q.shape
            hkv, nk = k.shape[1], k.shape[2]
            scale = 1.0 / np.sqrt(d)
            print(f"{shape}: q {q.shape}, k {k.shape}, v {v.shape}, causal={int(causal)}; {source}")
            for name, x in (("q", q), ("k", k), ("v", v)):
                np.save(path(f"{name}.npy"), x)
            rng = np.random.default_rng(args.seed)
            bias = rng.standard_normal((1, hq, n, nk)).astype(np.float32)
            holes = rng.random((1, hq, n, nk)) < 0.05
            holes &= np.arange(nk)[None, None, None, :] != (np.arange(n) + nk - n)[None, None, :, None]
            bias[holes] = -np.inf  # never the diagonal: no row loses every key
            sinks = (2.0 * rng.standard_normal(hq)).astype(np.float32)
            slopes = rng.uniform(0.01, 0.5, hq).astype(np.float32)
            np.save(path("bias.npy"), bias)
            np.save(path("sinks.npy"), sinks)
            np.save(path("slopes.npy"), slopes)
            softcap = 2.0
            cases = [
                ("bias", ["--bias", path("bias.npy")], dict(bias=bias)),
                ("softcap 2", ["--softcap", str(softcap)], dict(softcap=softcap)),
                ("sinks", ["--sinks", path("sinks.npy")], dict(sinks=sinks)),
                ("alibi (default slopes)", ["--alibi"], dict(slopes=default_slopes(hq))),
                ("alibi-slopes", ["--alibi-slopes", path("slopes.npy")], dict(slopes=slopes)),
                (
                    "all four",
                    ["--bias", path("bias.npy"), "--alibi", "--softcap", str(softcap),
                     "--sinks", path("sinks.npy")],
                    dict(bias=bias, slopes=default_slopes(hq), softcap=softcap, sinks=sinks),
                ),
            ]
            sdpa = torch_sdpa(q, k, v, causal, scale, bias)
            if sdpa is None:
                torch_missing = True
            else:
                ref_o, _ = reference(q, k, v, causal, scale, bias=bias)
                print(f"  numpy reference vs torch SDPA (both float64), bias: O "
                      f"{max_abs(sdpa, ref_o):.3e}")
            for label, flags, mods in cases:
                ref_o, ref_lse = reference(q, k, v, causal, scale, **mods)
                for kernel in args.kernels.split(","):
                    for f in ("o.npy", "lse.npy"):
                        if os.path.exists(path(f)):
                            os.remove(path(f))
                    cmd = [
                        args.attn, "run", "--kernel", kernel,
                        "--q", path("q.npy"), "--k", path("k.npy"), "--v", path("v.npy"),
                        "--out", path("o.npy"), "--lse", path("lse.npy"),
                        "--causal", str(int(causal)), "--threads", str(args.threads),
                    ] + flags
                    r = subprocess.run(cmd, capture_output=True, text=True)
                    if r.returncode != 0:
                        print(f"  {kernel:6} {label}: FAILED: {r.stderr.strip()}")
                        failed = True
                        continue
                    o, lse = np.load(path("o.npy")), np.load(path("lse.npy"))
                    assert o.shape == ref_o.shape and lse.shape == ref_lse.shape
                    checks = [("numpy f64", max_abs(o, ref_o), max_abs(lse, ref_lse))]
                    if label == "bias" and sdpa is not None:
                        checks.insert(0, ("torch SDPA float attn_mask", max_abs(o, sdpa), None))
                    for against, eo, el in checks:
                        ok = eo <= tol[kernel] and (el is None or el <= tol[kernel])
                        failed |= not ok
                        w = worst.setdefault(kernel, [0.0, 0.0])
                        w[0] = max(w[0], eo)
                        w[1] = max(w[1], el or 0.0)
                        lse_txt = f"  LSE {el:.3e}" if el is not None else ""
                        print(f"  {kernel:6} {label:22} vs {against:26}: max abs err O {eo:.3e}"
                              f"{lse_txt}  (tol {tol[kernel]:.0e}) {'ok' if ok else 'FAIL'}")
    for kernel, (eo, el) in worst.items():
        print(f"worst {kernel}: O {eo:.3e}, LSE {el:.3e} (tol {tol[kernel]:.0e})")
    if torch_missing:
        print("torch is not installed here: the PyTorch SDPA comparison was skipped")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
