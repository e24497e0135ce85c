"""attnlab.attention_backward against the f64 reference gradients."""

import numpy as np
import pytest

import attnlab
from conftest import check_grads, qkv, randn
from reference import Ref

SHAPES = [
    (2, 4, 4, 24, 24, 16, 16),
    (1, 4, 2, 17, 40, 32, 8),
    (1, 6, 1, 40, 17, 16, 24),
    (1, 4, 2, 3, 30, 16, 16),
]
MASKS = [dict(), dict(causal=True), dict(window=(3, 2))]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: str(m) or "full")
def test_matches_reference(shape, mask):
    B, Hq, Hkv, Nq, Nk, d, dv = shape
    q, k, v = qkv(20, B, Hq, Hkv, Nq, Nk, d, dv)
    d_out = randn(np.random.default_rng(21), B, Hq, Nq, dv)
    out, lse = attnlab.attention(q, k, v, return_lse=True, **mask)
    grads = attnlab.attention_backward(q, k, v, out, lse, d_out, **mask)
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
    assert all(g.dtype == np.float32 for g in grads)
    check_grads(f"{shape} {mask}", grads, Ref(q, k, v, **mask), d_out)


@pytest.mark.parametrize("kernel", ["flash", "naive", "oracle"])
def test_every_kernel(kernel):
    q, k, v = qkv(22, 1, 4, 2, 20, 26, 16)
    d_out = randn(np.random.default_rng(23), 1, 4, 20, 16)
    out, lse = attnlab.attention(q, k, v, causal=True, return_lse=True)
    grads = attnlab.attention_backward(q, k, v, out, lse, d_out, causal=True, kernel=kernel)
    check_grads(kernel, grads, Ref(q, k, v, causal=True), d_out)


def test_float16_inputs():
    q, k, v = qkv(24, 1, 4, 2, 30, 30, 16, dtype=np.float16)
    d_out = randn(np.random.default_rng(25), 1, 4, 30, 16)
    out, lse = attnlab.attention(q, k, v, causal=True, return_lse=True)
    grads = attnlab.attention_backward(q, k, v, out, lse, d_out, causal=True)
    check_grads("f16", grads, Ref(q, k, v, causal=True), d_out)


def test_bnhd_layout_and_scale():
    q, k, v = qkv(26, 2, 4, 2, 19, 23, 16, 8)
    d_out = randn(np.random.default_rng(27), 2, 4, 19, 8)
    t = lambda x: np.ascontiguousarray(x.transpose(0, 2, 1, 3))  # noqa: E731
    out, lse = attnlab.attention(t(q), t(k), t(v), layout="bnhd", scale=0.2, return_lse=True)
    grads = attnlab.attention_backward(t(q), t(k), t(v), out, lse, t(d_out), layout="bnhd", scale=0.2)
    grads = [g.transpose(0, 2, 1, 3) for g in grads]
    check_grads("bnhd", grads, Ref(q, k, v, scale=0.2), d_out)


def test_threads_give_identical_bits():
    q, k, v = qkv(28, 1, 4, 2, 64, 64, 32)
    d_out = randn(np.random.default_rng(29), 1, 4, 64, 32)
    out, lse = attnlab.attention(q, k, v, causal=True, return_lse=True)
    one = attnlab.attention_backward(q, k, v, out, lse, d_out, causal=True, threads=1)
    for n in (2, None):
        for a, b in zip(attnlab.attention_backward(q, k, v, out, lse, d_out, causal=True, threads=n), one):
            np.testing.assert_array_equal(a, b)
