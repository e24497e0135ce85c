"""Shared helpers: seeded inputs and comparisons against the f64 reference."""

import numpy as np
import pytest

from reference import Ref


def randn(rng, *shape, dtype=np.float32, amp=1.0):
    return (amp * rng.standard_normal(shape)).astype(dtype)


def qkv(seed, B, Hq, Hkv, Nq, Nk, d, dv=None, dtype=np.float32, amp=1.0):
    """Seeded standard-normal ``q [B, Hq, Nq, d]``, ``k [B, Hkv, Nk, d]``,
    ``v [B, Hkv, Nk, dv]``."""
    rng = np.random.default_rng(seed)
    dv = d if dv is None else dv
    return (
        randn(rng, B, Hq, Nq, d, dtype=dtype, amp=amp),
        randn(rng, B, Hkv, Nk, d, dtype=dtype, amp=amp),
        randn(rng, B, Hkv, Nk, dv, dtype=dtype, amp=amp),
    )


def assert_close(what, got, want, tol):
    """Asserts ``|got - want| <= tol`` elementwise (``tol`` scalar or
    broadcastable), reporting the worst element; infinities must match."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    inf = np.isinf(want)
    assert np.array_equal(np.isinf(got), inf) and np.array_equal(got[inf], want[inf]), (
        f"{what}: infinities differ"
    )
    with np.errstate(invalid="ignore"):
        err = np.where(inf, 0.0, np.abs(got - want))
    ratio = err / np.broadcast_to(tol, err.shape)
    i = np.unravel_index(np.argmax(ratio), ratio.shape) if ratio.size else ()
    assert ratio.size == 0 or ratio[i] <= 1.0, (
        f"{what}: at {i} got {got[i]} want {want[i]} (|err| {err[i]:.3e} > tol "
        f"{np.broadcast_to(tol, err.shape)[i]:.3e})"
    )


def check_forward(what, got_out, got_lse, ref: Ref):
    assert_close(f"{what} out", got_out, ref.out, ref.tol_out())
    if got_lse is not None:
        assert_close(f"{what} lse", got_lse, ref.lse, ref.tol_lse())


def check_grads(what, got, ref: Ref, d_out):
    want = ref.backward(d_out)
    tol = ref.grad_tol(want)
    names = ("dq", "dk", "dv", "dsinks")
    assert len(got) == (4 if ref.sinks is not None else 3), f"{what}: {len(got)} gradients"
    for name, g, w, t in zip(names, got, want, tol):
        assert_close(f"{what} {name}", g, w, t)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
