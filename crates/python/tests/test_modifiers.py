"""Score modifiers (softcap, ALiBi, sinks, bias) through every entry point,
against the f64 reference: the forward (tiled path, Nq >= 17, and the
split-KV path, Nq <= 16), the backward (with dsinks) and decode."""

import numpy as np
import pytest

import attnlab
from conftest import check_forward, check_grads, qkv, randn
from reference import Ref

B, HQ, HKV, D = 2, 4, 2, 16


def mods(name, nq, nk, rng):
    """The keyword arguments of one modifier set."""
    bias = randn(rng, 1, HQ, nq, nk, amp=0.5)
    bias[0, 1, :, ::5] = -np.inf  # -inf masks a key
    every = {
        "softcap": dict(softcap=2.5),
        "alibi": dict(alibi=True),
        "alibi_slopes": dict(alibi=np.array([0.3, 0.1, 0.05, 0.0], np.float32)),
        "sinks": dict(sinks=np.array([0.5, -1.0, 2.0, 0.0], np.float32)),
        "bias": dict(bias=bias),
        "bias_batch": dict(bias=randn(rng, B, 1, nq, nk)),
        "all": dict(softcap=3.0, alibi=True, sinks=np.array([1.0, 0.0, -2.0, 0.5]), bias=bias),
    }
    return every[name]


NAMES = ["softcap", "alibi", "alibi_slopes", "sinks", "bias", "bias_batch", "all"]
MASKS = [dict(), dict(causal=True), dict(window=(5, 2))]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: str(m) or "full")
@pytest.mark.parametrize("nq,nk", [(33, 40), (20, 20)])
def test_forward_tiled(name, mask, nq, nk):
    q, k, v = qkv(30, B, HQ, HKV, nq, nk, D, amp=1.5)
    kw = mods(name, nq, nk, np.random.default_rng(31))
    out, lse = attnlab.attention(q, k, v, return_lse=True, **mask, **kw)
    check_forward(f"{name} {mask}", out, lse, Ref(q, k, v, **mask, **kw))


@pytest.mark.parametrize("name", NAMES)
def test_forward_oracle(name):
    q, k, v = qkv(32, B, HQ, HKV, 9, 25, D, amp=1.5)
    kw = mods(name, 9, 25, np.random.default_rng(33))
    out, lse = attnlab.attention(q, k, v, kernel="oracle", causal=True, return_lse=True, **kw)
    check_forward(f"oracle {name}", out, lse, Ref(q, k, v, causal=True, **kw))


@pytest.mark.parametrize("name", NAMES)
def test_forward_split_kv(name):
    # Nq <= 16: flash runs its split-KV path.
    q, k, v = qkv(34, B, HQ, HKV, 4, 70, D, amp=1.5)
    kw = mods(name, 4, 70, np.random.default_rng(35))
    out, lse = attnlab.attention(q, k, v, causal=True, return_lse=True, **kw)
    check_forward(f"split-kv {name}", out, lse, Ref(q, k, v, causal=True, **kw))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kernel", ["flash", "oracle"])
def test_backward(name, kernel):
    q, k, v = qkv(36, B, HQ, HKV, 24, 30, D, amp=1.5)
    kw = mods(name, 24, 30, np.random.default_rng(37))
    d_out = randn(np.random.default_rng(38), B, HQ, 24, D)
    ref = Ref(q, k, v, causal=True, **kw)
    # The reference's forward output and LSE: the backward is tested alone.
    out, lse = ref.out.astype(np.float32), ref.lse.astype(np.float32)
    grads = attnlab.attention_backward(q, k, v, out, lse, d_out, causal=True, kernel=kernel, **kw)
    check_grads(f"{kernel} {name}", grads, ref, d_out)


@pytest.mark.parametrize("name", ["softcap", "alibi", "alibi_slopes", "sinks", "all_but_bias"])
@pytest.mark.parametrize("nq", [1, 3])
def test_decode(name, nq):
    rng = np.random.default_rng(39)
    lens = [37, 52]
    cache = attnlab.KvCache(B, HKV, 64, D)
    k = randn(rng, B, HKV, 52, D, amp=1.5)
    v = randn(rng, B, HKV, 52, D)
    cache.append(k, v, lengths=lens)
    q = randn(rng, B, HQ, nq, D, amp=1.5)
    kw = dict(mods("all", nq, 52, rng)) if name == "all_but_bias" else mods(name, nq, 52, rng)
    kw.pop("bias", None)
    out, lse = cache.decode(q, causal=True, return_lse=True, **kw)
    for b, n in enumerate(lens):
        ref = Ref(q[b : b + 1], k[b : b + 1, :, :n], v[b : b + 1, :, :n], causal=True, **kw)
        check_forward(f"decode {name} entry {b}", out[b : b + 1], lse[b : b + 1], ref)
