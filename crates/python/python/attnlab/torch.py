"""PyTorch's ``scaled_dot_product_attention`` on attnlab's kernels, as an
autograd function (CPU float32 tensors).

>>> import torch, attnlab.torch as at
>>> q = torch.randn(1, 8, 512, 64, requires_grad=True)
>>> kv = torch.randn(1, 2, 512, 64, requires_grad=True)
>>> out = at.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
>>> out.sum().backward()        # attnlab.attention_backward computes the gradients

The arguments are PyTorch's, with its semantics where they coincide:

- ``query`` ``[B, Hq, L, E]``, ``key`` ``[B, Hkv, S, E]``, ``value``
  ``[B, Hkv, S, Ev]``: 4-d CPU float32 tensors. They reach attnlab without
  a copy (``.numpy()``) when C-contiguous, or when all three are the
  ``.transpose(1, 2)`` of C-contiguous ``[B, N, H, D]`` tensors (the output
  of a fused projection: attnlab's ``"bnhd"`` layout); otherwise they are
  copied once with ``.contiguous()``.
- ``is_causal``: **top-left** aligned as in PyTorch: query ``i`` sees keys
  ``j <= i``. attnlab's own masks are bottom-right aligned (query ``i``
  sees ``j <= i + S - L``); the two agree when ``L == S``. For ``L > S``
  the top-left mask is run as attnlab's window ``(None, L - S)``; for
  ``L < S`` it cannot be expressed without materializing it, and is a
  ``ValueError`` -- pass ``causal_alignment="bottom_right"`` for attnlab's
  alignment (what a KV cache needs), or an explicit ``attn_mask``.
- ``attn_mask``: a bool mask (``True`` = take part) or a float mask added
  to the scores, broadcastable to ``[B, Hq, L, S]``; it is passed to
  attnlab as an additive float32 bias ``[B|1, Hq|1, L, S]`` (a bool mask
  becomes 0 / -inf). It gets no gradient (``requires_grad`` is refused).
  A row whose keys are all masked gives output 0 (PyTorch gives NaN).
- ``dropout_p`` must be 0 (``NotImplementedError`` otherwise).
- ``scale``: as PyTorch, default ``1/sqrt(E)``.
- ``enable_gqa``: as PyTorch, needed when ``Hq != Hkv``; K/V heads are
  never repeated in memory.

attnlab runs on ``torch.get_num_threads()`` threads with the GIL released.
"""

from __future__ import annotations

from typing import Optional

try:
    import torch
except ImportError as e:  # pragma: no cover - exercised without torch
    raise ImportError(
        "attnlab.torch needs PyTorch, which is not installed (pip install torch; CPU wheels: "
        "--index-url https://download.pytorch.org/whl/cpu). attnlab itself works on numpy "
        "arrays without it: attnlab.attention(q, k, v)."
    ) from e

import attnlab

__all__ = ["scaled_dot_product_attention"]


def _layout(ts):
    """"bhnd" if every tensor is C-contiguous, "bnhd" if every one is the
    transpose(1, 2) of a C-contiguous tensor, else "bhnd" (copies)."""
    if all(t.is_contiguous() for t in ts):
        return "bhnd"
    if all(t.transpose(1, 2).is_contiguous() for t in ts):
        return "bnhd"
    return "bhnd"


def _np(t, layout):
    """The tensor's data as a numpy array in `layout`, without a copy when
    its memory already is in that order."""
    t = t.detach()
    if layout == "bnhd":
        t = t.transpose(1, 2)
    return t.contiguous().numpy()


def _tensor(a, layout):
    """A numpy result (memory order `layout`) as a logical [B, H, N, D]
    tensor sharing its memory."""
    t = torch.from_numpy(a)
    return t.transpose(1, 2) if layout == "bnhd" else t


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, kw):
        layout = _layout((q, k, v))
        out, lse = attnlab.attention(
            _np(q, layout), _np(k, layout), _np(v, layout), layout=layout, return_lse=True,
            bias=bias, **kw
        )
        out = _tensor(out, layout)
        ctx.save_for_backward(q, k, v, out, torch.from_numpy(lse))
        ctx.layout, ctx.bias, ctx.kw = layout, bias, kw
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, out, lse = ctx.saved_tensors
        layout = ctx.layout
        dq, dk, dv = attnlab.attention_backward(
            _np(q, layout), _np(k, layout), _np(v, layout), _np(out, layout), lse.numpy(),
            _np(d_out, layout), layout=layout, bias=ctx.bias, **ctx.kw
        )
        return _tensor(dq, layout), _tensor(dk, layout), _tensor(dv, layout), None, None


def _bias(attn_mask, shape):
    """`attn_mask` as attnlab's float32 bias [B|1, Hq|1, L, S]."""
    B, H, L, S = shape
    if attn_mask.requires_grad:
        raise ValueError("attn_mask: attnlab computes no gradient for the mask (requires_grad=True)")
    m = attn_mask.detach()
    if m.device.type != "cpu":
        raise ValueError(f"attn_mask: expected a CPU tensor, got device {m.device}")
    if m.dim() > 4:
        raise ValueError(f"attn_mask: expected at most 4 dims [B, Hq, L, S], got shape {tuple(m.shape)}")
    m = m.reshape((1,) * (4 - m.dim()) + tuple(m.shape))
    if m.dtype == torch.bool:
        m = torch.zeros(m.shape, dtype=torch.float32).masked_fill_(~m, float("-inf"))
    elif m.dtype != torch.float32:
        raise ValueError(f"attn_mask: expected bool or float32, got {m.dtype}")
    try:
        m = m.expand(m.shape[0], m.shape[1], L, S)
    except RuntimeError:
        raise ValueError(
            f"attn_mask: shape {tuple(attn_mask.shape)} does not broadcast to [B, Hq, L, S] = {[B, H, L, S]}"
        ) from None
    return m.contiguous().numpy()


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    *,
    causal_alignment: str = "top_left",
) -> torch.Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` computed by
    attnlab, differentiable with respect to query, key and value.

    query ``[B, Hq, L, E]``, key ``[B, Hkv, S, E]``, value
    ``[B, Hkv, S, Ev]``: CPU float32 tensors. Returns ``[B, Hq, L, Ev]``
    float32. See the module docs for where the semantics differ from
    PyTorch's (causal alignment when ``L != S``, fully masked rows) and
    for ``causal_alignment`` ("top_left", PyTorch's, or "bottom_right",
    attnlab's). Raises ``ValueError`` for inputs attnlab cannot take,
    ``NotImplementedError`` for ``dropout_p > 0``.
    """
    if dropout_p != 0.0:
        raise NotImplementedError("attnlab.torch: dropout is not implemented (dropout_p must be 0)")
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu" or t.dtype != torch.float32:
            raise ValueError(f"{name}: attnlab.torch takes CPU float32 tensors, got {t.dtype} on {t.device}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-d tensor [B, H, N, D], got shape {tuple(t.shape)}")
    B, Hq, L, _ = query.shape
    Hkv, S = key.shape[1], key.shape[2]
    if Hq != Hkv and not enable_gqa:
        raise ValueError(
            f"query has {Hq} heads and key {Hkv}: pass enable_gqa=True for grouped-query attention"
        )
    kw = dict(scale=scale, threads=torch.get_num_threads())
    if is_causal:
        if attn_mask is not None:
            raise ValueError("attn_mask and is_causal=True cannot be combined (as in PyTorch)")
        if causal_alignment == "bottom_right" or L == S:
            kw["causal"] = True
        elif causal_alignment != "top_left":
            raise ValueError(f"causal_alignment: expected 'top_left' or 'bottom_right', got {causal_alignment!r}")
        elif L > S:
            # Top-left: query i sees j <= i = diag + (L - S), diag = i + S - L.
            kw["window"] = (None, L - S)
        else:
            raise ValueError(
                f"is_causal=True with L={L} < S={S}: PyTorch's top-left causal mask is not one "
                "attnlab runs without materializing it; pass causal_alignment='bottom_right' "
                "(attnlab's alignment: query i sees keys j <= i + S - L) or an explicit attn_mask"
            )
    bias = None if attn_mask is None else _bias(attn_mask, (B, Hq, L, S))
    return _Attention.apply(query, key, value, bias, kw)
