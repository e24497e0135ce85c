"""KvCache: append (ragged, all or nothing) and decode against the f64
reference over the values the cache stores (f32, f16, bf16, q8_0)."""

import numpy as np
import pytest

import attnlab
from conftest import check_forward, randn
from reference import Ref, round_bf16, round_q8_0

STORED = {
    "f32": lambda x: x,
    "f16": lambda x: x.astype(np.float16).astype(np.float32),
    "bf16": round_bf16,
    "q8_0": round_q8_0,
}


def test_attributes():
    c = attnlab.KvCache(2, 4, 100, 64, v_dim=32, dtype="bf16")
    assert (c.batch, c.kv_heads, c.capacity, c.head_dim, c.v_dim, c.dtype) == (2, 4, 100, 64, 32, "bf16")
    assert c.lengths == [0, 0] and c.bytes_in_use == 0
    assert "KvCache(batch=2" in repr(c)
    assert attnlab.KvCache(1, 1, 4, 8).v_dim == 8
    assert isinstance(c, attnlab._attnlab.KvCache)


@pytest.mark.parametrize("dtype", list(STORED))
@pytest.mark.parametrize("mask", [dict(), dict(causal=True), dict(window=(6, 0))], ids=str)
def test_decode_matches_reference(dtype, mask):
    rng = np.random.default_rng(40)
    B, Hq, Hkv, d, dv, cap = 3, 8, 2, 32, 48, 80
    cache = attnlab.KvCache(B, Hkv, cap, d, v_dim=dv, dtype=dtype)
    # Two appends, ragged: a prefill of different lengths, then 2 steps.
    k1, v1 = randn(rng, B, Hkv, 40, d), randn(rng, B, Hkv, 40, dv)
    cache.append(k1, v1, lengths=[40, 7, 25])
    k2, v2 = randn(rng, B, Hkv, 2, d), randn(rng, B, Hkv, 2, dv)
    cache.append(k2, v2)
    lens = [42, 9, 27]
    assert cache.lengths == lens
    q = randn(rng, B, Hq, 2, d)
    out, lse = cache.decode(q, return_lse=True, **mask)
    assert out.shape == (B, Hq, 2, dv) and lse.shape == (B, Hq, 2)
    for b, n in enumerate(lens):
        n1 = n - 2
        k = STORED[dtype](np.concatenate([k1[b : b + 1, :, :n1], k2[b : b + 1]], axis=2))
        v = STORED[dtype](np.concatenate([v1[b : b + 1, :, :n1], v2[b : b + 1]], axis=2))
        ref = Ref(q[b : b + 1], k, v, **mask)
        check_forward(f"{dtype} entry {b}", out[b : b + 1], lse[b : b + 1], ref)


def test_decode_threads_and_f16_queries():
    rng = np.random.default_rng(41)
    cache = attnlab.KvCache(1, 2, 600, 64)
    cache.append(randn(rng, 1, 2, 600, 64), randn(rng, 1, 2, 600, 64))
    q = randn(rng, 1, 8, 1, 64)
    one = cache.decode(q, threads=1)
    for n in (2, None):
        np.testing.assert_array_equal(cache.decode(q, threads=n), one)
    q16 = q.astype(np.float16)
    np.testing.assert_array_equal(cache.decode(q16), cache.decode(q16.astype(np.float32)))


def test_append_is_all_or_nothing():
    rng = np.random.default_rng(42)
    cache = attnlab.KvCache(2, 1, 10, 4, dtype="f16")
    cache.append(randn(rng, 2, 1, 8, 4), randn(rng, 2, 1, 8, 4), lengths=[8, 2])
    before = cache.decode(randn(np.random.default_rng(0), 2, 1, 1, 4))
    k, v = randn(rng, 2, 1, 3, 4), randn(rng, 2, 1, 3, 4)
    with pytest.raises(ValueError, match=r"kv cache: batch entry 0 holds 8 of 10 positions; appending 3 would exceed"):
        cache.append(k, v)
    k[1, 0, 2, 1] = np.nan
    with pytest.raises(ValueError, match=r"k: non-finite value NaN at index \[1, 0, 2, 1\]"):
        cache.append(k, v, lengths=[2, 3])
    v[1, 0, 0, 3] = 1e6
    with pytest.raises(ValueError, match=r"v: value 1000000 at index \[1, 0, 0, 3\] overflows the cache's f16 storage"):
        cache.append(k[:, :, :2], v[:, :, :2])
    assert cache.lengths == [8, 2]
    np.testing.assert_array_equal(cache.decode(randn(np.random.default_rng(0), 2, 1, 1, 4)), before)


def test_append_and_decode_errors():
    cache = attnlab.KvCache(2, 2, 10, 4)
    z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
    with pytest.raises(ValueError, match=r"k: expected 2 kv heads, got 1"):
        cache.append(z(2, 1, 3, 4), z(2, 1, 3, 4))
    with pytest.raises(ValueError, match=r"v: expected 4 v_dim, got 5"):
        cache.append(z(2, 2, 3, 4), z(2, 2, 3, 5))
    with pytest.raises(ValueError, match=r"v: expected 3 positions, got 2"):
        cache.append(z(2, 2, 3, 4), z(2, 2, 2, 4))
    with pytest.raises(ValueError, match=r"lengths: expected one length per batch entry \(2\), got 1"):
        cache.append(z(2, 2, 3, 4), z(2, 2, 3, 4), lengths=[1])
    with pytest.raises(ValueError, match=r"lengths: entry 1 asks for 4 positions, but k and v hold 3"):
        cache.append(z(2, 2, 3, 4), z(2, 2, 3, 4), lengths=[1, 4])
    cache.append(z(2, 2, 3, 4), z(2, 2, 3, 4))
    with pytest.raises(ValueError, match=r"q: expected 4 head dim \(the cache's\), got 8"):
        cache.decode(z(2, 4, 1, 8))
    with pytest.raises(ValueError, match=r"q heads \(3\) must be a multiple of kv heads \(2\)"):
        cache.decode(z(2, 3, 1, 4))
    with pytest.raises(ValueError, match=r"dtype: unknown cache storage 'int8'"):
        attnlab.KvCache(1, 1, 4, 4, dtype="int8")
    with pytest.raises(ValueError, match=r"kv_heads must be at least 1, got 0"):
        attnlab.KvCache(1, 0, 4, 4)


def test_clear():
    cache = attnlab.KvCache(1, 1, 4, 4)
    cache.append(np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 4, 4), np.float32))
    assert cache.lengths == [4] and cache.bytes_in_use == 4 * 8 * 4
    cache.clear()
    assert cache.lengths == [0]
