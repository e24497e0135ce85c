"""A float64 numpy reference of attention, its gradients and decode, and
the tolerance model of the Rust tests (tests/common.rs, tests/backward.rs)
-- written here from docs/semantics.md, not calling attnlab.

Layout ``[B, H, N, D]``; K and V have ``Hkv`` heads, each shared by
``Hq / Hkv`` query heads. Masks and ALiBi are aligned bottom-right: query
``i`` sits on key ``diag = i + Nk - Nq``. Per row, in this order:
``s = scale·q·k``, ``+ bias``, ``- slope·|diag - j|``, ``c·tanh(s/c)``
(``-inf`` stays), the mask, ``lse = ln(e^sink + Σ e^s)``,
``o = Σ e^(s - lse)·v``. A row with no visible key has output 0 and LSE
``-inf`` (the sink's logit when there is one).
"""

import numpy as np

EPS = float(np.finfo(np.float32).eps)


def default_slopes(n):
    """The ALiBi paper's slopes for ``n`` heads, rounded to float32 as
    attnlab stores them."""

    def pow2(m):
        return [2.0 ** (-8.0 * (h + 1) / m) for h in range(m)]

    m = 1 << (n.bit_length() - 1)
    s = pow2(m)
    if m < n:
        s += pow2(2 * m)[::2][: n - m]
    return np.array(s, dtype=np.float32).astype(np.float64)


def visible(nq, nk, causal=False, window=None):
    """``[Nq, Nk]`` bool: which keys each query sees."""
    i = np.arange(nq)[:, None]
    j = np.arange(nk)[None, :]
    diag = i + nk - nq
    left, right = (None, 0) if causal else (window or (None, None))
    left = None if left == -1 else left
    right = None if right == -1 else right
    vis = np.ones((nq, nk), dtype=bool)
    if left is not None:
        vis &= j >= diag - left
    if right is not None:
        vis &= j <= diag + right
    return vis


def default_scale(d):
    # attnlab's default scale is computed in f32: 1 / sqrt(d as f32).
    return float(np.float32(1.0) / np.sqrt(np.float32(d)))


class Ref:
    """The f64 forward of one call (inputs ``[B, H, N, D]``, any float
    dtype: they are widened exactly)."""

    def __init__(self, q, k, v, *, causal=False, window=None, scale=None, softcap=None,
                 alibi=None, sinks=None, bias=None):
        q, k, v = (np.asarray(x).astype(np.float64) for x in (q, k, v))
        B, Hq, Nq, d = q.shape
        Hkv, Nk = k.shape[1], k.shape[2]
        g = Hq // Hkv
        self.q, self.k, self.v, self.g = q, k, v, g
        self.kr, self.vr = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        self.scale = default_scale(d) if scale is None else float(np.float32(scale))
        s = self.scale * np.einsum("bhid,bhjd->bhij", q, self.kr)
        # L: a bound on each score's magnitude before rounding, for the
        # tolerance (scale·Σ|q·k|, plus the bias and the ALiBi penalty).
        mag = abs(self.scale) * np.einsum("bhid,bhjd->bhij", np.abs(q), np.abs(self.kr))
        if bias is not None:
            bias = np.asarray(bias).astype(np.float64)
            s = s + bias
            mag = mag + np.where(np.isfinite(bias), np.abs(bias), 0.0)
        if alibi is not None and alibi is not False:
            slopes = default_slopes(Hq) if alibi is True else np.asarray(alibi, np.float32).astype(np.float64)
            i = np.arange(Nq)[:, None]
            j = np.arange(Nk)[None, :]
            pen = slopes[None, :, None, None] * np.abs(i + Nk - Nq - j)[None, None]
            s = s - pen
            mag = mag + np.abs(pen)
        self.s_pre = s
        self.softcap = softcap
        if softcap is not None:
            with np.errstate(invalid="ignore"):
                s = np.where(np.isneginf(s), -np.inf, softcap * np.tanh(s / softcap))
        vis = visible(Nq, Nk, causal, window)[None, None] & ~np.isneginf(s)
        self.vis = vis
        s = np.where(vis, s, -np.inf)
        self.s = s
        m = s.max(axis=-1)
        self.sinks = None if sinks is None else np.asarray(sinks, np.float32).astype(np.float64)
        if self.sinks is not None:
            m = np.maximum(m, self.sinks[None, :, None])
        m = np.where(np.isfinite(m), m, 0.0)
        with np.errstate(under="ignore"):
            e = np.exp(s - m[..., None])
            total = e.sum(axis=-1)
            if self.sinks is not None:
                total = total + np.exp(self.sinks[None, :, None] - m)
        with np.errstate(divide="ignore"):
            self.lse = np.where(total > 0, m + np.log(total), -np.inf)
        finite = np.isfinite(self.lse)[..., None]
        with np.errstate(under="ignore", invalid="ignore"):
            self.p = np.where(finite & vis, np.exp(s - np.where(finite, self.lse[..., None], 0.0)), 0.0)
            self.p_sink = None
            if self.sinks is not None:
                self.p_sink = np.where(np.isfinite(self.lse), np.exp(self.sinks[None, :, None] - self.lse), 0.0)
        self.out = self.p @ self.vr
        self.l_max = float(np.where(vis, mag, 0.0).max(initial=0.0))

    def tol_out(self):
        """``(1e-5 + 32·eps·L)·max|v|`` (tests/common.rs)."""
        return (1e-5 + 32 * EPS * self.l_max) * max(np.abs(self.v).max(initial=0.0), 1e-30)

    def tol_lse(self):
        """Per row: ``1e-5·(1 + |lse|) + 32·eps·L``."""
        lse = np.where(np.isfinite(self.lse), np.abs(self.lse), 0.0)
        return 1e-5 * (1 + lse) + 32 * EPS * self.l_max

    def stats(self):
        """``(max_p, entropy, tol_max_p, tol_entropy)``, ``[B, Hq, Nq]``
        each: the saturation statistics (the sink one more outcome; 0 and
        0 for a row with no key and no sink) and their tolerances. Every
        score is off by at most ``δ = 32·eps·L`` (as for the LSE); since
        ``∂H/∂s_k = -p_k·(s_k - E_p s)``, the entropy moves by at most
        ``δ·Σ p_k·|s_k - E_p s|`` and each ``p_k`` by ``2·δ·p_k``; twice
        these, plus ``1e-5`` relative for the f32 sums."""
        p = self.p
        outcomes = [(p, self.s)]
        if self.sinks is not None:
            sink = np.broadcast_to(self.sinks[None, :, None], self.lse.shape)
            outcomes.append((self.p_sink[..., None], sink[..., None]))
        max_p = np.max([q.max(axis=-1, initial=0.0) for q, _ in outcomes], axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = sum(np.where(q > 0, -q * np.log(q), 0.0).sum(axis=-1) for q, _ in outcomes)
            mean = sum(np.where(q > 0, q * s, 0.0).sum(axis=-1) for q, s in outcomes)
            spread = sum(
                np.where(q > 0, q * np.abs(s - mean[..., None]), 0.0).sum(axis=-1) for q, s in outcomes
            )
        delta = 32 * EPS * self.l_max
        return max_p, h, 1e-5 * max_p + 4 * delta * max_p, 1e-5 * (1 + h) + 2 * delta * spread

    def backward(self, d_out):
        """``(dq, dk, dv, dsinks)`` in f64 (``dsinks`` None without sinks)."""
        do = np.asarray(d_out, np.float64)
        B, Hq, Nq, _ = self.q.shape
        Hkv, Nk = self.k.shape[1], self.k.shape[2]
        dp = do @ self.vr.transpose(0, 1, 3, 2)
        D = (do * self.out).sum(axis=-1)
        ds = self.p * (dp - D[..., None])
        if self.softcap is not None:
            with np.errstate(invalid="ignore"):
                t = np.tanh(np.where(self.vis, self.s_pre, 0.0) / self.softcap)
            ds = ds * (1 - t * t)
        dq = self.scale * ds @ self.kr
        dk = (self.scale * ds.transpose(0, 1, 3, 2) @ self.q).reshape(B, Hkv, self.g, Nk, -1).sum(axis=2)
        dv = (self.p.transpose(0, 1, 3, 2) @ do).reshape(B, Hkv, self.g, Nk, -1).sum(axis=2)
        dsinks = None
        if self.sinks is not None:
            dsinks = -(self.p_sink * D).sum(axis=(0, 2))
        self._bwd = (dp, D, do)
        return dq, dk, dv, dsinks

    def grad_tol(self, grads):
        """Tolerances of dq, dk, dv, dsinks (tests/backward.rs's model):
        ``P`` off by a relative ``δ = 16·eps·L + 2·eps·(1 + max|lse|) +
        1e-6``; ``dS`` by ``P·(δ·A + E)`` with ``A = max(|dP| + |D|)``
        and ``E = dv·eps·A + dv·max|dO|·tol_out``; ``dQ`` sums rows of
        ``P`` (``scale·max|K|·(δ·A + E)``), ``dK``/``dV`` columns (times
        the largest column sum ``C``); each ``1e-6·(1 + max|grad|)`` more.
        dsinks: ``Σ p_sink·(δ·|D| + dv·max|dO|·tol_out)`` plus the same."""
        dp, D, do = self._bwd
        B, Hq, Nq, dv_ = self.out.shape
        Hkv, Nk = self.k.shape[1], self.k.shape[2]
        lm = np.abs(self.lse[np.isfinite(self.lse)]).max(initial=0.0)
        delta = 16 * EPS * self.l_max + 2 * EPS * (1 + lm) + 1e-6
        rows = self.vis.any(axis=-1)
        a = (np.where(self.vis, np.abs(dp), 0.0).max(axis=-1, initial=0.0) + np.abs(D))
        a_max = float(np.where(rows, a, 0.0).max(initial=0.0))
        colsum = self.p.reshape(B, Hkv, self.g, Nq, Nk).sum(axis=(2, 3)).max(initial=0.0)
        gm = np.abs(do).max(initial=0.0)
        e = dv_ * EPS * a_max + dv_ * gm * self.tol_out()
        base = [1e-6 * (1 + np.abs(x).max(initial=0.0)) if x is not None else 0.0 for x in grads]
        qm, km = np.abs(self.q).max(initial=0.0), np.abs(self.k).max(initial=0.0)
        tol = [
            self.scale * km * (delta * a_max + e) + base[0],
            self.scale * qm * (delta * a_max + e) * colsum + base[1],
            delta * gm * colsum + base[2],
            None,
        ]
        if self.sinks is not None:
            tol[3] = float((self.p_sink * (delta * np.abs(D) + dv_ * gm * self.tol_out())).sum(axis=(0, 2)).max()) + base[3]
        return tol


def round_bf16(x):
    """float32 -> bfloat16 (round to nearest even) -> float32."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16 << 16
    return b.astype(np.uint32).view(np.float32)


def round_q8_0(x):
    """float32 rows (last axis) -> ggml q8_0 (blocks of 32: an f16 scale
    max|x|/127, int8 values rounded half away from zero) -> float32, as
    attnlab quantises on append."""
    x = np.asarray(x, np.float32)
    n = x.shape[-1]
    pad = (-n) % 32
    xp = np.concatenate([x, np.zeros(x.shape[:-1] + (pad,), np.float32)], axis=-1)
    blocks = xp.reshape(x.shape[:-1] + (-1, 32))
    d = (np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    t = (blocks * inv).astype(np.float32).astype(np.float64)
    qs = np.clip(np.sign(t) * np.floor(np.abs(t) + 0.5), -128, 127)
    scale = d.astype(np.float16).astype(np.float64)
    return (qs * scale).reshape(xp.shape)[..., :n]
