"""attnlab.attention against the f64 reference: groupings, masks,
Nq != Nk, float16, layouts, kernels; the output buffer API, zero-copy
inputs, threads and the GIL."""

import threading
import time
import tracemalloc

import numpy as np
import pytest

import attnlab
from conftest import check_forward, qkv
from reference import Ref

# [B, Hq, Hkv, Nq, Nk, d, dv]: MHA, GQA, MQA; Nq < Nk, Nq > Nk (then the
# first rows of a causal mask see no key), Nq = Nk; Nq >= 17 takes the
# tiled path, Nq <= 16 the split-KV path; d != dv.
SHAPES = [
    (2, 4, 4, 33, 33, 16, 16),
    (1, 4, 2, 17, 40, 32, 8),
    (2, 6, 1, 40, 17, 16, 24),
    (1, 4, 2, 5, 70, 16, 16),
    (1, 2, 1, 1, 50, 64, 64),
]
MASKS = [
    dict(),
    dict(causal=True),
    dict(window=(3, 2)),
    dict(window=(None, 5)),
    dict(window=(4, -1)),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: str(m) or "full")
def test_matches_reference(shape, mask):
    B, Hq, Hkv, Nq, Nk, d, dv = shape
    q, k, v = qkv(1, B, Hq, Hkv, Nq, Nk, d, dv)
    out, lse = attnlab.attention(q, k, v, return_lse=True, **mask)
    assert out.dtype == np.float32 and lse.dtype == np.float32
    assert out.shape == (B, Hq, Nq, dv) and lse.shape == (B, Hq, Nq)
    check_forward(f"{shape} {mask}", out, lse, Ref(q, k, v, **mask))
    # Without return_lse: the output alone, the same values.
    np.testing.assert_array_equal(attnlab.attention(q, k, v, **mask), out)


@pytest.mark.parametrize("kernel", ["flash", "naive", "oracle"])
def test_every_kernel(kernel):
    q, k, v = qkv(2, 1, 4, 2, 29, 35, 16)
    out, lse = attnlab.attention(q, k, v, causal=True, kernel=kernel, return_lse=True)
    check_forward(kernel, out, lse, Ref(q, k, v, causal=True))


@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "x".join(map(str, s)))
def test_float16_inputs(shape):
    B, Hq, Hkv, Nq, Nk, d, dv = shape
    q, k, v = qkv(3, B, Hq, Hkv, Nq, Nk, d, dv, dtype=np.float16)
    out, lse = attnlab.attention(q, k, v, causal=True, return_lse=True)
    assert out.dtype == np.float32
    # The reference widens the same float16 values exactly.
    check_forward("f16", out, lse, Ref(q, k, v, causal=True))


def test_bnhd_layout():
    q, k, v = qkv(4, 2, 4, 2, 21, 30, 16, 8)
    t = lambda x: np.ascontiguousarray(x.transpose(0, 2, 1, 3))  # noqa: E731
    out, lse = attnlab.attention(t(q), t(k), t(v), layout="bnhd", causal=True, return_lse=True)
    assert out.shape == (2, 21, 4, 8)
    check_forward("bnhd", out.transpose(0, 2, 1, 3), lse, Ref(q, k, v, causal=True))


def test_scale():
    q, k, v = qkv(5, 1, 2, 2, 20, 20, 16)
    out = attnlab.attention(q, k, v, scale=0.3)
    check_forward("scale", out, None, Ref(q, k, v, scale=0.3))


def test_fully_masked_rows_are_zero_with_minus_inf_lse():
    q, k, v = qkv(6, 1, 2, 2, 30, 10, 16)
    out, lse = attnlab.attention(q, k, v, causal=True, return_lse=True)
    # Nq - Nk = 20 rows see no key under the bottom-right causal mask.
    assert np.all(out[:, :, :20] == 0) and np.all(lse[:, :, :20] == -np.inf)
    assert np.all(np.isfinite(lse[:, :, 20:]))


def test_threads_give_identical_bits():
    q, k, v = qkv(7, 1, 4, 2, 64, 64, 32)
    ref = attnlab.attention(q, k, v, causal=True, threads=1)
    for n in (2, 3, None):
        np.testing.assert_array_equal(attnlab.attention(q, k, v, causal=True, threads=n), ref)


def test_non_contiguous_inputs_are_copied_and_correct():
    q, k, v = qkv(8, 1, 4, 2, 24, 24, 16)
    # A transposed view (C-contiguous in bnhd, not bhnd) and a strided one.
    qt = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    kk = np.zeros((1, 2, 24, 32), np.float32)
    kk[..., ::2] = k
    ks = kk[..., ::2]
    assert not qt.flags.c_contiguous and not ks.flags.c_contiguous
    np.testing.assert_array_equal(attnlab.attention(qt, ks, v), attnlab.attention(q, k, v))
    # Fortran order is read as what it is, not as its memory.
    qf = np.asfortranarray(q)
    np.testing.assert_array_equal(attnlab.attention(qf, k, v), attnlab.attention(q, k, v))


def test_out_buffer_is_written_in_place():
    q, k, v = qkv(9, 1, 4, 2, 40, 40, 16)
    buf = np.full((1, 4, 40, 16), np.nan, np.float32)
    res = attnlab.attention(q, k, v, causal=True, out=buf)
    assert res is buf and np.shares_memory(res, buf)
    np.testing.assert_array_equal(buf, attnlab.attention(q, k, v, causal=True))
    res, lse = attnlab.attention(q, k, v, causal=True, out=buf, return_lse=True)
    assert res is buf and lse.shape == (1, 4, 40)


def test_out_buffer_errors():
    q, k, v = qkv(10, 1, 4, 2, 40, 40, 16)
    for bad, msg in [
        (np.zeros((1, 4, 16, 40), np.float32), r"out: expected shape \[1, 4, 40, 16\]"),
        (np.zeros((1, 4, 40, 16), np.float64), "out: expected a float32 array"),
        (np.zeros((1, 4, 40, 32), np.float32)[..., ::2], "not C-contiguous"),
    ]:
        with pytest.raises(ValueError, match=msg):
            attnlab.attention(q, k, v, out=bad)
    ro = np.zeros((1, 4, 40, 16), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out: cannot write to it"):
        attnlab.attention(q, k, v, out=ro)
    # An output that is one of the inputs is refused, not raced.
    with pytest.raises(ValueError, match="share no memory"):
        attnlab.attention(q, q, q, out=q)


def _traced_peak(f):
    """Peak bytes numpy (and Python) allocated while ``f`` ran: numpy
    reports its array buffers to tracemalloc; attnlab's own output buffers
    (Rust allocations) are not traced."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        f()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_c_contiguous_inputs_are_not_copied(dtype):
    # 2 MiB (f32) per input: a copy of any of them would show in the peak.
    q, k, v = qkv(11, 1, 8, 8, 1024, 1024, 64, dtype=dtype)
    buf = np.empty((1, 8, 1024, 64), np.float32)
    attnlab.attention(q, k, v, out=buf)  # warm-up (thread pool, lazy imports)
    peak = _traced_peak(lambda: attnlab.attention(q, k, v, out=buf))
    assert peak < q.nbytes // 8, f"{peak} bytes allocated for {q.nbytes}-byte inputs"
    # Control: a non-contiguous input is copied, and the check sees it.
    qt = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    peak = _traced_peak(lambda: attnlab.attention(qt, k, v, out=buf))
    assert peak >= q.nbytes


def test_inputs_are_left_as_they_were():
    q, k, v = qkv(12, 1, 2, 2, 20, 20, 16)
    copies = [x.copy() for x in (q, k, v)]
    attnlab.attention(q, k, v, causal=True)
    for x, c in zip((q, k, v), copies):
        np.testing.assert_array_equal(x, c)
        assert x.flags.writeable


def test_the_gil_is_released_during_compute():
    # Calls of ~0.1-0.5 s: long next to the scheduler's time slices on a
    # busy machine, so only a held GIL makes a gap that long.
    q, k, v = qkv(13, 1, 8, 8, 4096, 4096, 64)
    attnlab.attention(q[:, :, :64], k, v, threads=1)
    started, calls = threading.Event(), []

    def work():
        started.set()
        for _ in range(2):
            t0 = time.perf_counter()
            attnlab.attention(q, k, v, threads=1)
            calls.append(time.perf_counter() - t0)

    t = threading.Thread(target=work)
    t.start()
    started.wait()
    stamps = []
    while t.is_alive():
        stamps.append(time.perf_counter())
    t.join()
    gap = np.diff(stamps).max()
    # Holding the GIL for a call would stop this loop for the whole call;
    # released, the loop only waits for the interpreter's switch interval
    # (5 ms) between calls, and for the OS scheduler.
    assert gap < 0.5 * min(calls), (calls, gap, len(stamps))
