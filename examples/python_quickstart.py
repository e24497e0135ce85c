"""attnlab from Python: attention on numpy arrays, its gradients, a KV-cache
decode step, and (if PyTorch is installed) the drop-in SDPA.

    pip install ./crates/python        # once, from the repository root
    python3 examples/python_quickstart.py
"""

import numpy as np

import attnlab

rng = np.random.default_rng(0)
# Batch 1, 8 query heads sharing 2 K/V heads (GQA), 512 tokens, head dim 64.
q = rng.standard_normal((1, 8, 512, 64), dtype=np.float32)   # [B, Hq, Nq, d]
k = rng.standard_normal((1, 2, 512, 64), dtype=np.float32)   # [B, Hkv, Nk, d]
v = rng.standard_normal((1, 2, 512, 64), dtype=np.float32)   # [B, Hkv, Nk, dv]

out, lse = attnlab.attention(q, k, v, causal=True, return_lse=True)
print(f"attnlab {attnlab.version()} ({attnlab.compiled_isa()}): out {out.shape}, lse {lse.shape}")

# Gradients, from the forward's output and LSE and the upstream gradient.
d_out = np.ones_like(out)
dq, dk, dv = attnlab.attention_backward(q, k, v, out, lse, d_out, causal=True)
print(f"dq {dq.shape}, dk {dk.shape}, dv {dv.shape}")

# Decode: append the prompt to an f16 KV cache, then attend one new query.
cache = attnlab.KvCache(batch=1, kv_heads=2, capacity=1024, head_dim=64, dtype="f16")
cache.append(k, v)
step = cache.decode(q[:, :, -1:], causal=True)
print(f"decode step {step.shape}, max |diff| to the prefill's last row: "
      f"{np.abs(step - out[:, :, -1:]).max():.1e} (f16 storage)")

try:
    import torch

    import attnlab.torch as at
except ImportError:
    print("(PyTorch not installed: skipping attnlab.torch)")
else:
    tq = torch.from_numpy(q).requires_grad_()
    o = at.scaled_dot_product_attention(tq, torch.from_numpy(k), torch.from_numpy(v),
                                        is_causal=True, enable_gqa=True)
    o.sum().backward()
    print(f"attnlab.torch: out {tuple(o.shape)}, q.grad {tuple(tq.grad.shape)}")
