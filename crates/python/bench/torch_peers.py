"""attnlab.torch.scaled_dot_product_attention next to PyTorch's SDPA on the
shapes of shared/peers (bwd_peers.py and bench_peers.py): max abs error of
the output and of dQ, dK, dV against PyTorch in float32 and, up to
N = 4096, against PyTorch in float64 (the reference); PyTorch float32's own
error against float64 is printed for scale.

    python bench/torch_peers.py [--big] [--only NAME,...]   # --big adds N = 16384 (f32 only)
"""

import argparse
import time

import torch
import torch.nn.functional as F

import attnlab.torch as at

# name: (B, Hq, Hkv, L, S, d, causal)
SHAPES = {
    "mha_d64_N1024_full": (1, 8, 8, 1024, 1024, 64, False),
    "mha_d64_N4096_full": (1, 8, 8, 4096, 4096, 64, False),
    "mha_d64_N4096_causal": (1, 8, 8, 4096, 4096, 64, True),
    "mha_d128_N4096_full": (1, 8, 8, 4096, 4096, 128, False),
    "gqa_Hkv2_N4096_causal": (1, 8, 2, 4096, 4096, 64, True),
    "mqa_Hkv1_N4096_causal": (1, 8, 1, 4096, 4096, 64, True),
    "decode_Nk4096": (1, 32, 8, 1, 4096, 128, False),
    "decode_Nk32768": (1, 32, 8, 1, 32768, 128, False),
}
BIG = {"mha_d64_N16384_causal": (1, 8, 8, 16384, 16384, 64, True)}


def run(fn, q, k, v, do, causal, gqa):
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    t = time.perf_counter()
    out = fn(q, k, v, is_causal=causal, enable_gqa=gqa)
    out.backward(do)
    ms = (time.perf_counter() - t) * 1e3
    return [x.detach() for x in (out, q.grad, k.grad, v.grad)], ms


def err(a, b):
    return (a.double() - b.double()).abs().max().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--only", help="comma-separated shape names")
    a = ap.parse_args()
    shapes = dict(SHAPES, **(BIG if a.big else {}))
    if a.only:
        shapes = {n: shapes[n] for n in a.only.split(",")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("shape | vs | out | dQ | dK | dV | attnlab ms | torch f32 ms")
    for name, (B, Hq, Hkv, L, S, d, causal) in shapes.items():
        g = torch.Generator().manual_seed(0)
        q = torch.randn(B, Hq, L, d, generator=g)
        k = torch.randn(B, Hkv, S, d, generator=g)
        v = torch.randn(B, Hkv, S, d, generator=g)
        do = torch.randn(B, Hq, L, d, generator=g)
        gqa = Hq != Hkv
        ours, ms_ours = run(at.scaled_dot_product_attention, q, k, v, do, causal, gqa)
        f32, ms_f32 = run(F.scaled_dot_product_attention, q, k, v, do, causal, gqa)
        rows = [("torch f32", ours, f32)]
        if L * S <= 4096 * 4096 and L > 1 or S <= 32768 and L == 1:
            f64, _ = run(F.scaled_dot_product_attention, *(x.double() for x in (q, k, v, do)), causal, gqa)
            rows += [("torch f64", ours, f64), ("(torch f32 vs f64)", f32, f64)]
        for vs, x, y in rows:
            errs = " | ".join(f"{err(p, r):.2e}" for p, r in zip(x, y))
            print(f"{name} | {vs} | {errs} | {ms_ours:.0f} | {ms_f32:.0f}")


if __name__ == "__main__":
    main()
