"""Saturation statistics (``return_stats=True``): max_p, entropy and
support per row, through attention (flash's tiled and split-KV paths, the
oracle) and KvCache.decode, against the f64 reference (reference.py's
``Ref.stats``, written from docs/semantics.md)."""

import numpy as np
import pytest

import attnlab
from conftest import assert_close, qkv, randn
from reference import Ref, round_q8_0

B, HQ, HKV, D = 2, 4, 2, 16


def check_stats(what, stats, ref):
    max_p, h, tol_p, tol_h = ref.stats()
    assert set(stats) == {"max_p", "entropy", "support"}, what
    for name in stats:
        assert stats[name].dtype == np.float32 and stats[name].shape == max_p.shape, (what, name)
    assert_close(f"{what} max_p", stats["max_p"], max_p, tol_p)
    assert_close(f"{what} entropy", stats["entropy"], h, tol_h)
    # exp in f32 (Rust's and numpy's may differ by an ulp)
    np.testing.assert_allclose(stats["support"], np.exp(stats["entropy"].astype(np.float64)), rtol=1e-6)


MODS = {
    "plain": dict(),
    "softcap": dict(softcap=2.5),
    "alibi": dict(alibi=True),
    "sinks": dict(sinks=np.array([0.5, -1.0, 2.0, 0.0], np.float32)),
    "all": dict(softcap=3.0, alibi=True, sinks=np.array([1.0, 0.0, -2.0, 0.5], np.float32)),
}
MASKS = [dict(), dict(causal=True), dict(window=(5, 2))]


@pytest.mark.parametrize("name", list(MODS))
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: str(m) or "full")
@pytest.mark.parametrize("nq,nk", [(33, 40), (4, 700)], ids=["tiled", "split-kv"])
@pytest.mark.parametrize("kernel", ["flash", "oracle"])
def test_stats_match_reference(name, mask, nq, nk, kernel):
    q, k, v = qkv(50, B, HQ, HKV, nq, nk, D, amp=1.5)
    kw = MODS[name]
    out, stats = attnlab.attention(q, k, v, kernel=kernel, return_stats=True, **mask, **kw)
    check_stats(f"{kernel} {name} {mask}", stats, Ref(q, k, v, **mask, **kw))
    # the statistics leave the output as it is
    np.testing.assert_array_equal(out, attnlab.attention(q, k, v, kernel=kernel, **mask, **kw))


def test_bias_and_layout_and_lse_together():
    q, k, v = qkv(51, B, HQ, HKV, 6, 50, D)
    bias = randn(np.random.default_rng(52), 1, HQ, 6, 50)
    bias[..., ::4] = -np.inf
    t = lambda x: np.ascontiguousarray(x.transpose(0, 2, 1, 3))  # noqa: E731
    out, lse, stats = attnlab.attention(
        t(q), t(k), t(v), layout="bnhd", bias=bias, return_lse=True, return_stats=True
    )
    ref = Ref(q, k, v, bias=bias)
    assert out.shape == (B, 6, HQ, D) and lse.shape == (B, HQ, 6)
    check_stats("bnhd bias", stats, ref)


def test_masked_and_single_key_rows():
    # Nq = 6 > Nk = 3, causal: rows 0..2 see nothing, row 3 one key
    q, k, v = qkv(53, 1, 2, 1, 6, 3, 8)
    for kernel in ("flash", "oracle"):
        _, s = attnlab.attention(q, k, v, causal=True, kernel=kernel, return_stats=True)
        np.testing.assert_array_equal(s["max_p"][0, :, :4], [[0, 0, 0, 1]] * 2)
        np.testing.assert_array_equal(s["entropy"][0, :, :4], np.zeros((2, 4)))
        np.testing.assert_array_equal(s["support"][0, :, :3], np.ones((2, 3)))
        # with a sink a row with no key puts all its mass there
        _, s = attnlab.attention(q, k, v, causal=True, kernel=kernel, sinks=[0.0, 1.0], return_stats=True)
        np.testing.assert_array_equal(s["max_p"][0, :, :3], np.ones((2, 3)))
        assert not np.isnan(s["entropy"]).any()


def test_naive_kernel_refuses_statistics():
    q, k, v = qkv(54, 1, 2, 1, 20, 20, 8)
    with pytest.raises(ValueError, match="kernel naive: .*saturation statistics"):
        attnlab.attention(q, k, v, kernel="naive", return_stats=True)


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_decode_stats(dtype):
    rng = np.random.default_rng(55)
    cache = attnlab.KvCache(2, HKV, 1200, 32, dtype=dtype)
    k, v = randn(rng, 2, HKV, 1100, 32, amp=1.5), randn(rng, 2, HKV, 1100, 32)
    cache.append(k, v, lengths=[1100, 1])
    q = randn(rng, 2, HQ, 1, 32, amp=1.5)
    sinks = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    for kw in (dict(), dict(softcap=4.0, alibi=True, sinks=sinks)):
        out, lse, stats = cache.decode(q, return_lse=True, return_stats=True, **kw)
        assert out.shape == (2, HQ, 1, 32) and lse.shape == (2, HQ, 1)
        stored = k if dtype == "f32" else round_q8_0(k)
        stored_v = v if dtype == "f32" else round_q8_0(v)
        one = {n: a[:1] for n, a in stats.items()}
        check_stats(f"{dtype} {kw}", one, Ref(q[:1], stored[:1], stored_v[:1], **kw))
        if not kw:
            # entry 1 holds one key: max_p 1, entropy 0
            np.testing.assert_array_equal(stats["max_p"][1], np.ones((HQ, 1)))
            np.testing.assert_array_equal(stats["entropy"][1], np.zeros((HQ, 1)))
        _, plain = cache.decode(q, return_stats=True, threads=1, **kw)
        for n in plain:
            np.testing.assert_array_equal(plain[n], stats[n])
