"""attnlab.torch against torch.nn.functional.scaled_dot_product_attention,
forward and gradients (skipped without torch; its ImportError without torch
is tested in test_module.py)."""

import numpy as np
import pytest

from reference import Ref

torch = pytest.importorskip("torch", reason="torch is not installed (CI need not install it)")
import torch.nn.functional as F  # noqa: E402

import attnlab.torch as at  # noqa: E402

# (B, Hq, Hkv, L, S, E, Ev, kwargs)
CASES = [
    (2, 4, 4, 33, 33, 16, 16, dict()),
    (1, 8, 2, 40, 40, 32, 32, dict(is_causal=True)),
    (1, 4, 1, 45, 20, 16, 8, dict(is_causal=True)),  # L > S: top-left
    (1, 4, 2, 17, 50, 16, 16, dict(scale=0.3)),
    (2, 4, 2, 24, 24, 16, 16, dict(is_causal=True, causal_alignment="bottom_right")),
    (1, 2, 2, 5, 64, 16, 16, dict()),  # split-KV path
]


def _inputs(B, Hq, Hkv, L, S, E, Ev, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, L, E, generator=g)
    k = torch.randn(B, Hkv, S, E, generator=g)
    v = torch.randn(B, Hkv, S, Ev, generator=g)
    do = torch.randn(B, Hq, L, Ev, generator=g)
    return q, k, v, do


def _ref_kwargs(L, S, kw):
    """The reference's mask for PyTorch's arguments."""
    r = dict(scale=kw.get("scale"))
    if kw.get("is_causal"):
        if kw.get("causal_alignment") == "bottom_right" or L == S:
            r["causal"] = True
        else:
            r["window"] = (None, L - S)
    return r


def _grads(fn, q, k, v, do, **kw):
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, **kw)
    out.backward(do)
    return out.detach(), q.grad, k.grad, v.grad


def _tols(q, k, v, do, **ref_kwargs):
    """Tolerances of out, dq, dk, dv: the f32 error model of the Rust tests
    (reference.py) on these inputs."""
    ref = Ref(q.numpy(), k.numpy(), v.numpy(), **ref_kwargs)
    return [ref.tol_out()] + ref.grad_tol(ref.backward(do.numpy()))[:3]


def _check(what, got, want, tol):
    err = (got.double() - want).abs().max().item()
    assert err <= tol, f"{what}: max abs err {err:.3e} > tol {tol:.3e}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:7])) + str(c[7]))
def test_matches_torch_sdpa(case):
    B, Hq, Hkv, L, S, E, Ev, kw = case
    q, k, v, do = _inputs(B, Hq, Hkv, L, S, E, Ev)
    gqa = dict(enable_gqa=Hq != Hkv)
    got = _grads(at.scaled_dot_product_attention, q, k, v, do, **kw, **gqa)
    torch_kw = {k_: v_ for k_, v_ in kw.items() if k_ != "causal_alignment"}
    if kw.get("causal_alignment") == "bottom_right":
        # PyTorch's bottom-right causal mask, as an explicit mask.
        del torch_kw["is_causal"]
        torch_kw["attn_mask"] = torch.ones(L, S, dtype=torch.bool).tril(S - L)
    want = _grads(F.scaled_dot_product_attention, *(x.double() for x in (q, k, v, do)), **torch_kw, **gqa)
    tols = _tols(q, k, v, do, **_ref_kwargs(L, S, kw))
    for name, g, w, t in zip(("out", "dq", "dk", "dv"), got, want, tols):
        assert g.dtype == torch.float32 and g.shape == w.shape, name
        _check(f"{case} {name}", g, w, t)


def test_bnhd_inputs_are_not_copied():
    B, L, H, E = 1, 40, 4, 16
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(B, L, 3, H, E, generator=g)  # a fused projection
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    assert at._layout((q, k, v)) == "bhnd"  # the three are interleaved
    q, k, v = (qkv[:, :, i].contiguous().transpose(1, 2) for i in range(3))
    assert at._layout((q, k, v)) == "bnhd"
    assert np.shares_memory(at._np(q, "bnhd"), q.transpose(1, 2).numpy())
    do = torch.randn(B, H, L, E, generator=g)
    got = _grads(at.scaled_dot_product_attention, q, k, v, do, is_causal=True)
    want = _grads(F.scaled_dot_product_attention, *(x.double() for x in (q, k, v, do)), is_causal=True)
    for name, a, b, t in zip(("out", "dq", "dk", "dv"), got, want, _tols(q, k, v, do, causal=True)):
        _check(name, a, b, t)


@pytest.mark.parametrize("kind", ["bool", "float", "bool_2d"])
def test_attn_mask(kind):
    B, H, L, S, E = 2, 4, 24, 30, 16
    q, k, v, do = _inputs(B, H, H, L, S, E, E, seed=2)
    g = torch.Generator().manual_seed(3)
    if kind == "bool":
        mask = torch.rand(B, 1, L, S, generator=g) > 0.3
        mask[..., 0] = True  # no fully masked row (PyTorch gives NaN there)
    elif kind == "float":
        mask = torch.randn(1, H, L, S, generator=g)
    else:
        mask = torch.rand(L, S, generator=g) > 0.5
        mask[:, -1] = True
    got = _grads(at.scaled_dot_product_attention, q, k, v, do, attn_mask=mask)
    want_mask = mask if mask.dtype == torch.bool else mask.double()
    want = _grads(F.scaled_dot_product_attention, *(x.double() for x in (q, k, v, do)), attn_mask=want_mask)
    bias = mask.float() if kind == "float" else torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    bias = bias.reshape((1,) * (4 - bias.dim()) + tuple(bias.shape)).numpy()
    for name, a, b, t in zip(("out", "dq", "dk", "dv"), got, want, _tols(q, k, v, do, bias=bias)):
        _check(f"{kind} {name}", a, b, t)


def test_errors():
    q, k, v, _ = _inputs(1, 4, 2, 10, 20, 16, 16)
    sdpa = at.scaled_dot_product_attention
    with pytest.raises(ValueError, match="pass enable_gqa=True"):
        sdpa(q, k, v)
    with pytest.raises(ValueError, match="is_causal=True with L=10 < S=20"):
        sdpa(q, k, v, is_causal=True, enable_gqa=True)
    with pytest.raises(NotImplementedError, match="dropout"):
        sdpa(q, k, v, dropout_p=0.1, enable_gqa=True)
    with pytest.raises(ValueError, match="CPU float32 tensors, got torch.float64"):
        sdpa(q.double(), k, v, enable_gqa=True)
    with pytest.raises(ValueError, match="cannot be combined"):
        sdpa(q, k, v, is_causal=True, attn_mask=torch.ones(10, 20, dtype=torch.bool), enable_gqa=True)
    with pytest.raises(ValueError, match="does not broadcast"):
        sdpa(q, k, v, attn_mask=torch.ones(3, 20, dtype=torch.bool), enable_gqa=True)
    m = torch.zeros(10, 20, requires_grad=True)
    with pytest.raises(ValueError, match="no gradient for the mask"):
        sdpa(q, k, v, attn_mask=m, enable_gqa=True)
    # attnlab's errors come through as they are.
    with pytest.raises(ValueError, match="v: expected 20 key positions, got 19"):
        sdpa(q, k, v[:, :, :19], enable_gqa=True)
