"""Errors: ValueError for bad input, MemoryError for too large, with the
messages of the `attn` command line (attnlab's error, the shapes of the
inputs for a shape mismatch, the index of a non-finite value)."""

import re

import numpy as np
import pytest

import attnlab
from conftest import qkv


def raises(exc, msg):
    return pytest.raises(exc, match=re.escape(msg))


def test_shape_mismatches_name_the_tensor_and_dimension():
    q, k, v = qkv(0, 1, 4, 2, 8, 10, 16)
    with raises(ValueError, "k: expected 16 features (head_dim), got 8 (q [1, 4, 8, 16], k [1, 2, 10, 8]"):
        attnlab.attention(q, k[..., :8].copy(), v)
    with raises(ValueError, "v: expected 10 key positions, got 9"):
        attnlab.attention(q, k, v[:, :, :9].copy())
    with raises(ValueError, "k: expected 1 batch entries, got 2"):
        attnlab.attention(q, np.concatenate([k, k]), np.concatenate([v, v]))
    with raises(ValueError, "q heads (4) must be a multiple of kv heads (3) for MHA/GQA/MQA"):
        attnlab.attention(q, np.concatenate([k, k[:, :1]], 1), np.concatenate([v, v[:, :1]], 1))
    with raises(ValueError, "q: expected a 4-d array [B, Hq, Nq, d] (layout bhnd), got 3-d shape (4, 8, 16)"):
        attnlab.attention(q[0], k, v)
    with raises(ValueError, "head_dim must be at least 1, got 0"):
        attnlab.attention(q[..., :0], k[..., :0], v)


def test_dtypes():
    q, k, v = qkv(1, 1, 2, 2, 8, 8, 16)
    with raises(ValueError, "q: dtype float64 is not supported; expected float32 or float16"):
        attnlab.attention(q.astype(np.float64), k, v)
    with raises(ValueError, "v: dtype float16 does not match q's float32 (q, k and v must share one dtype)"):
        attnlab.attention(q, k, v.astype(np.float16))
    with raises(ValueError, "q: dtype int64 is not supported"):
        attnlab.attention(np.zeros((1, 2, 8, 16), np.int64), k, v)


def test_non_finite_inputs_name_the_index():
    q, k, v = qkv(2, 1, 2, 2, 20, 20, 16)
    k[0, 1, 7, 3] = np.nan
    with raises(ValueError, "k: non-finite value NaN at index [0, 1, 7, 3] (flat index 435); pass check_finite=False"):
        attnlab.attention(q, k, v)
    out = attnlab.attention(q, k, v, check_finite=False)
    assert np.isnan(out[0, 1]).all() and np.isfinite(out[0, 0]).all()


def test_parameters():
    q, k, v = qkv(3, 1, 2, 2, 20, 20, 16)
    cases = [
        (dict(kernel="fast"), "unknown kernel 'fast' (expected oracle, naive or flash)"),
        (dict(layout="nhd"), "unknown layout 'nhd' (expected bhnd or bnhd)"),
        (dict(causal=True, window=(4, 0)), "causal=True and window cannot be combined"),
        (dict(window=5), "window: expected (left, right)"),
        (dict(window=(-3, 0)), "window: left side -3 is not a key count"),
        (dict(threads=0), "threads: expected None (all cores) or an int >= 1, got 0"),
        (dict(threads=5000), "threads: at most 4096, got 5000"),
        (dict(scale=float("nan")), "scale: must be finite, got NaN"),
        (dict(softcap=-1.0), "softcap: must be finite and > 0, got -1"),
        (dict(sinks=[0.0]), "sinks: expected one value per q head (2), got 1"),
        (dict(alibi=[0.5, np.inf]), "alibi slopes: must be finite, got inf for q head 1"),
        (dict(bias=np.zeros((1, 3, 20, 20), np.float32)), "bias: expected 2 q heads (or 1), got 3"),
        (dict(bias=np.zeros((1, 1, 20, 20))), "bias: dtype float64 is not supported; expected float32"),
    ]
    for kw, msg in cases:
        with raises(ValueError, msg):
            attnlab.attention(q, k, v, **kw)


def test_too_large_is_memory_error():
    # The naive kernel's score matrix for 2^17 x 2^17 keys: 64 GiB.
    n = 1 << 17
    x = np.zeros((1, 1, n, 1), np.float32)
    with pytest.raises(MemoryError, match=r"scores: needs 64\.00 GiB"):
        attnlab.attention(x, x, x, kernel="naive")
    with pytest.raises(MemoryError, match=r"kv cache k: needs"):
        attnlab.KvCache(1, 8, 1 << 40, 128)


def test_backward_errors():
    q, k, v = qkv(4, 1, 2, 2, 20, 20, 16)
    out, lse = attnlab.attention(q, k, v, return_lse=True)
    with raises(ValueError, "lse: expected shape [1, 2, 20] ([B, Hq, Nq] in any layout), got [1, 2, 19]"):
        attnlab.attention_backward(q, k, v, out, lse[..., :19].copy(), out)
    with raises(ValueError, "d_out: expected 20 query positions, got 19"):
        attnlab.attention_backward(q, k, v, out, lse, out[:, :, :19].copy())
    with raises(ValueError, "out: dtype float16 is not supported; expected float32"):
        attnlab.attention_backward(q, k, v, out.astype(np.float16), lse, out)
