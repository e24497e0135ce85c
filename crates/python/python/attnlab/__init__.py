"""attnlab: memory-efficient scaled dot-product attention on CPUs.

``O = softmax(Q·Kᵀ·scale + mask)·V`` for MHA, GQA and MQA, computed by
attnlab's Rust kernels (the tiled FlashAttention-2 ``flash`` kernel by
default), on numpy arrays:

>>> import numpy as np, attnlab
>>> q = np.random.randn(1, 8, 128, 64).astype(np.float32)   # [B, Hq, Nq, d]
>>> kv = np.random.randn(1, 2, 128, 64).astype(np.float32)  # [B, Hkv, Nk, d]
>>> out = attnlab.attention(q, kv, kv, causal=True)          # [B, Hq, Nq, d]

Arrays: float32 or float16 (one dtype for q, k and v), 4-d, in the layout
``"bhnd"`` (``[B, H, N, D]``, the default) or ``"bnhd"``
(``[B, N, H, D]``). C-contiguous arrays are read in place (no copy); any
other strides are copied once to a C-contiguous array first. Other dtypes
raise ``ValueError`` (convert with ``.astype(np.float32)``). Outputs are
new float32 arrays that own attnlab's buffers (no copy), in the layout of
the call.

Masks are aligned **bottom-right** (FlashAttention >= 2.1): with
``Nq != Nk``, query ``i`` sits on key ``i + Nk - Nq``; ``causal=True``
shows it keys ``j <= i + Nk - Nq``. (PyTorch's ``is_causal`` is top-left;
``attnlab.torch`` emulates that.)

Errors from attnlab are ``ValueError`` (bad input; the message names the
tensor and the dimension) or ``MemoryError`` (a buffer too large for the
machine). The GIL is released while the kernels run; ``threads=None``
runs on every core, ``threads=n`` on a pool of ``n`` threads.

``attnlab.torch.scaled_dot_product_attention`` is a drop-in autograd
function for PyTorch CPU tensors.
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _attnlab
from ._attnlab import compiled_isa, peak, version

__all__ = [
    "attention",
    "attention_backward",
    "KvCache",
    "peak",
    "version",
    "compiled_isa",
]

__version__ = version()

_w = _attnlab.isa_warning()
if _w is not None:
    warnings.warn(_w, RuntimeWarning, stacklevel=2)
del _w

_LAYOUT_DIMS = {
    "bhnd": ("[B, Hq, Nq, d]", "[B, Hkv, Nk, d]", "[B, Hkv, Nk, dv]"),
    "bnhd": ("[B, Nq, Hq, d]", "[B, Nk, Hkv, d]", "[B, Nk, Hkv, dv]"),
}
_FLOATS = (np.dtype(np.float32), np.dtype(np.float16))


def _array(name, x, dims, dtypes=_FLOATS):
    """`x` as a C-contiguous 4-d (or `len(dims)`-d) numpy array of one of
    `dtypes`: itself when it already is one (no copy), a C-contiguous copy
    when only its strides differ; otherwise ValueError."""
    a = np.asarray(x)
    if a.dtype not in dtypes:
        want = " or ".join(d.name for d in dtypes)
        raise ValueError(
            f"{name}: dtype {a.dtype} is not supported; expected {want} "
            f"(convert with .astype(np.{dtypes[0].name}))"
        )
    ndim = dims.count(",") + 1
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array {dims}, got {a.ndim}-d shape {a.shape}")
    return np.ascontiguousarray(a)


def _qkv(q, k, v, layout):
    if layout not in _LAYOUT_DIMS:
        raise ValueError(f"unknown layout '{layout}' (expected bhnd or bnhd)")
    qd, kd, vd = _LAYOUT_DIMS[layout]
    suffix = f" (layout {layout})"
    q = _array("q", q, qd + suffix)
    k = _array("k", k, kd + suffix)
    v = _array("v", v, vd + suffix)
    for name, a in (("k", k), ("v", v)):
        if a.dtype != q.dtype:
            raise ValueError(
                f"{name}: dtype {a.dtype} does not match q's {q.dtype} "
                "(q, k and v must share one dtype)"
            )
    return q, k, v


def _window(window):
    """(left, right) with None for an unbounded side (-1 accepted, as
    FlashAttention spells it)."""
    if window is None:
        return None
    try:
        left, right = window
    except (TypeError, ValueError):
        raise ValueError(
            f"window: expected (left, right), each a key count or None/-1 for unbounded, got {window!r}"
        ) from None

    def side(s, which):
        if s is None or s == -1:
            return None
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(
                f"window: {which} side {s!r} is not a key count (an int >= 0, or None/-1 for unbounded)"
            )
        return int(s)

    return side(left, "left"), side(right, "right")


def _threads(threads):
    if threads is None:
        return None
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads: expected None (all cores) or an int >= 1, got {threads!r}")
    return int(threads)


def _per_head(name, x):
    """Per-head values (ALiBi slopes, sinks) as a C-contiguous 1-d float32
    array (converted: they are one value per head)."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-d array, one value per q head, got shape {a.shape}")
    return a


def _mods(softcap, alibi, sinks, bias):
    if softcap is not None:
        softcap = float(softcap)
    if alibi is None or alibi is False:
        alibi = None
    elif alibi is not True:
        alibi = _per_head("alibi", alibi)
    if sinks is not None:
        sinks = _per_head("sinks", sinks)
    if bias is not None:
        bias = _array("bias", bias, "[B or 1, Hq or 1, Nq, Nk]", (np.dtype(np.float32),))
    return dict(softcap=softcap, alibi=alibi, sinks=sinks, bias=bias)


def _scale(scale):
    return None if scale is None else float(scale)


def attention(
    q,
    k,
    v,
    *,
    causal=False,
    window=None,
    scale=None,
    kernel="flash",
    layout="bhnd",
    threads=None,
    return_lse=False,
    softcap=None,
    alibi=None,
    sinks=None,
    bias=None,
    check_finite=True,
    out=None,
    return_stats=False,
):
    """Scaled dot-product attention, ``softmax(q·kᵀ·scale + mask)·v``.

    Parameters
    ----------
    q : ndarray, float32 or float16, ``[B, Hq, Nq, d]`` (layout ``"bhnd"``)
        or ``[B, Nq, Hq, d]`` (``"bnhd"``).
    k : ndarray, same dtype, ``[B, Hkv, Nk, d]`` (or ``[B, Nk, Hkv, d]``);
        ``Hq`` must be a multiple of ``Hkv`` (MHA, GQA, MQA).
    v : ndarray, same dtype, ``[B, Hkv, Nk, dv]`` (or ``[B, Nk, Hkv, dv]``).
        C-contiguous inputs are read in place; others are copied once.
    causal : bool
        Bottom-right causal mask: query ``i`` sees keys ``j <= i + Nk - Nq``.
    window : (left, right) or None
        Sliding window around the bottom-right diagonal: query ``i`` sees
        keys ``i+Nk-Nq-left ..= i+Nk-Nq+right``; a side of ``None`` or
        ``-1`` is unbounded. Not with ``causal=True`` (which is
        ``window=(None, 0)``).
    scale : float or None
        Softmax scale; ``None`` is ``1/sqrt(d)``.
    kernel : "flash", "naive" or "oracle"
        The tiled kernel (default), the O(N²) one, or the f64 reference.
    layout : "bhnd" or "bnhd"
        Memory order of q, k, v and the output.
    threads : int or None
        ``None``: every core; ``n``: a pool of ``n`` threads.
    return_lse : bool
        Also return the per-row log-sum-exp (natural log) of the scaled,
        modified scores, float32 ``[B, Hq, Nq]`` in any layout, ``-inf``
        for a fully masked row.
    softcap : float or None
        Logit softcap ``c > 0``: scores become ``c·tanh(s/c)``.
    alibi : True, array or None
        ALiBi: ``True`` for the paper's slopes for ``Hq`` heads, or one
        slope per q head (1-d, converted to float32); subtracts
        ``slope_h·|i + Nk - Nq - j|`` from the scores.
    sinks : array or None
        One sink logit per q head (1-d, converted to float32): enters each
        row's softmax denominator with no value.
    bias : ndarray or None
        Additive bias, float32 ``[B or 1, Hq or 1, Nq, Nk]`` whatever the
        layout (size-1 dims broadcast; ``-inf`` masks a key). Read in place
        when C-contiguous.
    check_finite : bool
        Reject NaN/inf in the inputs that reach a result (``ValueError``
        naming the tensor and index); ``False`` lets them propagate.
    out : ndarray or None
        Write the output here: float32, C-contiguous, of the output's
        shape, sharing no memory with the inputs; it is returned.
    return_stats : bool
        Also return each row's softmax saturation statistics, computed
        inside the kernel in O(1) extra memory per row (kernels ``flash``
        and ``oracle``; ``naive`` raises ``ValueError``): a dict of float32
        ``[B, Hq, Nq]`` arrays, in any layout, ``"max_p"`` (the largest
        probability), ``"entropy"`` (``-Σ p log p`` in nats) and
        ``"support"`` (``exp(entropy)``, the effective number of keys).
        The sink, if any, counts as one more outcome; a row with no key
        and no sink has ``max_p = 0``, ``entropy = 0``.

    Returns
    -------
    out : ndarray, float32, ``[B, Hq, Nq, dv]`` (``[B, Nq, Hq, dv]`` for
        ``"bnhd"``); or ``(out, lse)`` with ``return_lse=True``, ``(out,
        stats)`` with ``return_stats=True``, ``(out, lse, stats)`` with
        both.

    Raises
    ------
    ValueError
        Bad input: shapes that do not fit together (the message names the
        tensor and dimension), a dtype other than float32/float16, a
        non-finite input, an invalid parameter.
    MemoryError
        An output or workspace too large for the machine.
    """
    q, k, v = _qkv(q, k, v, layout)
    return _attnlab.attention(
        q,
        k,
        v,
        causal=bool(causal),
        window=_window(window),
        scale=_scale(scale),
        kernel=kernel,
        layout=layout,
        threads=_threads(threads),
        return_lse=bool(return_lse),
        check_finite=bool(check_finite),
        out=out,
        return_stats=bool(return_stats),
        **_mods(softcap, alibi, sinks, bias),
    )


def attention_backward(
    q,
    k,
    v,
    out,
    lse,
    d_out,
    *,
    causal=False,
    window=None,
    scale=None,
    kernel="flash",
    layout="bhnd",
    threads=None,
    softcap=None,
    alibi=None,
    sinks=None,
    bias=None,
    check_finite=True,
):
    """Gradients of :func:`attention`: ``(dq, dk, dv)``, or
    ``(dq, dk, dv, dsinks)`` when the call has ``sinks``.

    Parameters
    ----------
    q, k, v : the forward's inputs (float32 or float16, one dtype, same
        shapes and layout as for :func:`attention`).
    out : ndarray, float32, the forward's output (``[B, Hq, Nq, dv]`` or
        ``[B, Nq, Hq, dv]``).
    lse : ndarray, float32 ``[B, Hq, Nq]``: the forward's ``lse``
        (``return_lse=True``).
    d_out : ndarray, float32, the gradient of the loss with respect to
        ``out`` (its shape).
    The keyword arguments are those of the forward call and must be the
    same (mask, scale, modifiers); ``kernel``, ``layout``, ``threads`` and
    ``check_finite`` as for :func:`attention`. Non-C-contiguous arrays are
    copied once.

    Returns
    -------
    dq : float32, q's shape. dk : float32, k's shape (summed over each GQA
    group). dv : float32, v's shape. dsinks : float32 ``[Hq]`` (summed
    over the batch and rows), only with ``sinks``.

    Raises
    ------
    ValueError, MemoryError : as :func:`attention`.
    """
    q, k, v = _qkv(q, k, v, layout)
    f32 = (np.dtype(np.float32),)
    od = _LAYOUT_DIMS[layout][0].replace("d]", "dv]")
    out = _array("out", out, od, f32)
    lse = _array("lse", lse, "[B, Hq, Nq]", f32)
    d_out = _array("d_out", d_out, od, f32)
    return _attnlab.attention_backward(
        q,
        k,
        v,
        out,
        lse,
        d_out,
        causal=bool(causal),
        window=_window(window),
        scale=_scale(scale),
        kernel=kernel,
        layout=layout,
        threads=_threads(threads),
        check_finite=bool(check_finite),
        **_mods(softcap, alibi, sinks, bias),
    )


class KvCache(_attnlab.KvCache):
    """A KV cache for decode: K ``[B, Hkv, capacity, head_dim]`` and V
    ``[B, Hkv, capacity, v_dim]`` stored as ``dtype`` ("f32", "f16",
    "bf16" or "q8_0", ggml's 8-bit blocks of 32 quantised on append), with
    a length per batch entry (ragged batches allowed).

    ``KvCache(batch, kv_heads, capacity, head_dim, v_dim=None, dtype="f32")``
    (``v_dim=None`` is ``head_dim``). Raises ``MemoryError`` when the
    storage does not fit in memory.

    Attributes: ``batch``, ``kv_heads``, ``capacity``, ``head_dim``,
    ``v_dim``, ``dtype``, ``lengths`` (positions stored per entry),
    ``bytes_in_use`` (bytes a decode step reads).
    """

    def append(self, k, v, lengths=None):
        """Appends positions to every batch entry.

        ``k``: ``[B, Hkv, n, head_dim]``, ``v``: ``[B, Hkv, n, v_dim]``,
        float32 (float16 is converted to float32, as the cache converts
        from float32 anyway). Entry ``b`` gets the first ``lengths[b]`` of
        its ``n`` positions (all ``n`` when ``lengths`` is None). All or
        nothing: a shape, capacity or value error (non-finite, or beyond
        the storage type's range) raises ``ValueError`` before any entry
        changes.
        """
        k = _array("k", k, "[B, Hkv, n, head_dim]", _FLOATS).astype(np.float32, copy=False)
        v = _array("v", v, "[B, Hkv, n, v_dim]", _FLOATS).astype(np.float32, copy=False)
        if lengths is not None:
            lengths = [int(x) for x in lengths]
            if any(x < 0 for x in lengths):
                raise ValueError(f"lengths: expected counts >= 0, got {lengths}")
        return super().append(k, v, lengths)

    def decode(
        self,
        q,
        *,
        causal=False,
        window=None,
        scale=None,
        threads=None,
        return_lse=False,
        softcap=None,
        alibi=None,
        sinks=None,
        check_finite=True,
        return_stats=False,
    ):
        """Attention of the newest ``nq`` positions of each sequence
        (already appended) over the cache.

        ``q``: ``[B, Hq, nq, head_dim]``, float32 (float16 converted),
        ``Hq`` a multiple of ``kv_heads``. Masks are bottom-right against
        each entry's own length: with ``causal=True`` query ``t`` of entry
        ``b`` sees positions ``j <= t + lengths[b] - nq``. ``scale``,
        ``threads``, ``return_lse``, ``softcap``, ``alibi``, ``sinks``,
        ``check_finite`` and ``return_stats`` as for :func:`attention` (no
        ``bias``: prefill only).

        Returns ``out`` float32 ``[B, Hq, nq, v_dim]``, or ``(out, lse)``
        with ``lse`` ``[B, Hq, nq]``, ``(out, stats)`` or ``(out, lse,
        stats)`` with ``return_stats=True``.
        """
        q = _array("q", q, "[B, Hq, nq, head_dim]", _FLOATS).astype(np.float32, copy=False)
        mods = _mods(softcap, alibi, sinks, None)
        del mods["bias"]
        return super().decode(
            q,
            causal=bool(causal),
            window=_window(window),
            scale=_scale(scale),
            threads=_threads(threads),
            return_lse=bool(return_lse),
            check_finite=bool(check_finite),
            return_stats=bool(return_stats),
            **mods,
        )
