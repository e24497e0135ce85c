"""Type stubs of attnlab (the package's public API; see the docstrings in
attnlab/__init__.py for the full documentation)."""

from typing import Literal, Optional, Sequence, Tuple, TypedDict, Union, overload

import numpy as np
import numpy.typing as npt

__all__ = ["attention", "attention_backward", "KvCache", "peak", "version", "compiled_isa"]
__version__: str

_F32 = npt.NDArray[np.float32]
"""float32 array."""
_Float = Union[npt.NDArray[np.float32], npt.NDArray[np.float16]]
"""float32 or float16 array (one dtype for q, k and v)."""
_Window = Tuple[Optional[int], Optional[int]]
"""(left, right) keys around the bottom-right diagonal; None or -1 = unbounded."""
_Kernel = Literal["flash", "naive", "oracle"]
_Layout = Literal["bhnd", "bnhd"]
_PerHead = Union[npt.ArrayLike, Sequence[float]]
"""One value per q head (1-d; converted to float32)."""

class _Stats(TypedDict):
    """Per-row softmax saturation statistics, float32 ``[B, Hq, Nq]`` each
    (the sink, if any, one more outcome)."""

    max_p: _F32
    """The largest probability (0 for a row with no key and no sink)."""
    entropy: _F32
    """``-Σ p log p`` in nats."""
    support: _F32
    """``exp(entropy)``: the effective number of keys."""

@overload
def attention(
    q: _Float,
    k: _Float,
    v: _Float,
    *,
    causal: bool = ...,
    window: Optional[_Window] = ...,
    scale: Optional[float] = ...,
    kernel: _Kernel = ...,
    layout: _Layout = ...,
    threads: Optional[int] = ...,
    return_lse: Literal[False] = ...,
    softcap: Optional[float] = ...,
    alibi: Union[bool, _PerHead, None] = ...,
    sinks: Optional[_PerHead] = ...,
    bias: Optional[_F32] = ...,
    check_finite: bool = ...,
    out: Optional[_F32] = ...,
    return_stats: Literal[False] = ...,
) -> _F32:
    """Scaled dot-product attention ``softmax(q·kᵀ·scale + mask)·v``.

    q ``[B, Hq, Nq, d]``, k ``[B, Hkv, Nk, d]``, v ``[B, Hkv, Nk, dv]``
    (layout "bhnd"; "bnhd": ``[B, N, H, D]``), float32 or float16, read in
    place when C-contiguous. Masks are bottom-right aligned. Returns out
    float32 ``[B, Hq, Nq, dv]`` (``[B, Nq, Hq, dv]`` for "bnhd").
    Raises ValueError (bad input) or MemoryError (too large)."""

@overload
def attention(
    q: _Float,
    k: _Float,
    v: _Float,
    *,
    causal: bool = ...,
    window: Optional[_Window] = ...,
    scale: Optional[float] = ...,
    kernel: _Kernel = ...,
    layout: _Layout = ...,
    threads: Optional[int] = ...,
    return_lse: Literal[True],
    softcap: Optional[float] = ...,
    alibi: Union[bool, _PerHead, None] = ...,
    sinks: Optional[_PerHead] = ...,
    bias: Optional[_F32] = ...,
    check_finite: bool = ...,
    out: Optional[_F32] = ...,
    return_stats: Literal[False] = ...,
) -> Tuple[_F32, _F32]:
    """``(out, lse)``: out as above, lse float32 ``[B, Hq, Nq]`` (natural
    log, -inf for a fully masked row)."""

@overload
def attention(
    q: _Float,
    k: _Float,
    v: _Float,
    *,
    causal: bool = ...,
    window: Optional[_Window] = ...,
    scale: Optional[float] = ...,
    kernel: _Kernel = ...,
    layout: _Layout = ...,
    threads: Optional[int] = ...,
    return_lse: Literal[False] = ...,
    softcap: Optional[float] = ...,
    alibi: Union[bool, _PerHead, None] = ...,
    sinks: Optional[_PerHead] = ...,
    bias: Optional[_F32] = ...,
    check_finite: bool = ...,
    out: Optional[_F32] = ...,
    return_stats: Literal[True],
) -> Tuple[_F32, _Stats]:
    """``(out, stats)``: out as above, stats the saturation statistics of
    each row (kernels flash and oracle)."""

@overload
def attention(
    q: _Float,
    k: _Float,
    v: _Float,
    *,
    causal: bool = ...,
    window: Optional[_Window] = ...,
    scale: Optional[float] = ...,
    kernel: _Kernel = ...,
    layout: _Layout = ...,
    threads: Optional[int] = ...,
    return_lse: Literal[True],
    softcap: Optional[float] = ...,
    alibi: Union[bool, _PerHead, None] = ...,
    sinks: Optional[_PerHead] = ...,
    bias: Optional[_F32] = ...,
    check_finite: bool = ...,
    out: Optional[_F32] = ...,
    return_stats: Literal[True],
) -> Tuple[_F32, _F32, _Stats]:
    """``(out, lse, stats)``."""

def attention_backward(
    q: _Float,
    k: _Float,
    v: _Float,
    out: _F32,
    lse: _F32,
    d_out: _F32,
    *,
    causal: bool = ...,
    window: Optional[_Window] = ...,
    scale: Optional[float] = ...,
    kernel: _Kernel = ...,
    layout: _Layout = ...,
    threads: Optional[int] = ...,
    softcap: Optional[float] = ...,
    alibi: Union[bool, _PerHead, None] = ...,
    sinks: Optional[_PerHead] = ...,
    bias: Optional[_F32] = ...,
    check_finite: bool = ...,
) -> Union[Tuple[_F32, _F32, _F32], Tuple[_F32, _F32, _F32, _F32]]:
    """Gradients of attention: ``(dq, dk, dv)`` float32 of q's, k's and
    v's shapes, plus dsinks float32 ``[Hq]`` when ``sinks`` is given.
    out, lse ``[B, Hq, Nq]`` and d_out are float32; the keyword arguments
    must be those of the forward call."""

_StorageType = Literal["f32", "f16", "bf16", "q8_0"]

class KvCache:
    """KV cache for decode: K ``[B, Hkv, capacity, head_dim]``, V
    ``[B, Hkv, capacity, v_dim]`` stored as f32, f16, bf16 or q8_0, a
    length per batch entry."""

    def __new__(
        cls,
        batch: int,
        kv_heads: int,
        capacity: int,
        head_dim: int,
        v_dim: Optional[int] = ...,
        dtype: _StorageType = ...,
    ) -> KvCache: ...
    @property
    def batch(self) -> int: ...
    @property
    def kv_heads(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def v_dim(self) -> int: ...
    @property
    def dtype(self) -> _StorageType: ...
    @property
    def lengths(self) -> list[int]:
        """Stored positions of each batch entry."""
    @property
    def bytes_in_use(self) -> int:
        """Bytes of K and V that a decode step over the current lengths reads."""
    def clear(self) -> None:
        """Forgets every stored position (keeps the memory)."""
    def append(self, k: _Float, v: _Float, lengths: Optional[Sequence[int]] = ...) -> None:
        """k ``[B, Hkv, n, head_dim]``, v ``[B, Hkv, n, v_dim]`` (float32;
        float16 converted); entry b gets its first ``lengths[b]``
        positions (all n by default). All or nothing (ValueError)."""
    @overload
    def decode(
        self,
        q: _Float,
        *,
        causal: bool = ...,
        window: Optional[_Window] = ...,
        scale: Optional[float] = ...,
        threads: Optional[int] = ...,
        return_lse: Literal[False] = ...,
        softcap: Optional[float] = ...,
        alibi: Union[bool, _PerHead, None] = ...,
        sinks: Optional[_PerHead] = ...,
        check_finite: bool = ...,
        return_stats: Literal[False] = ...,
    ) -> _F32:
        """q ``[B, Hq, nq, head_dim]`` (the newest nq positions, already
        appended) -> out float32 ``[B, Hq, nq, v_dim]``."""
    @overload
    def decode(
        self,
        q: _Float,
        *,
        causal: bool = ...,
        window: Optional[_Window] = ...,
        scale: Optional[float] = ...,
        threads: Optional[int] = ...,
        return_lse: Literal[True],
        softcap: Optional[float] = ...,
        alibi: Union[bool, _PerHead, None] = ...,
        sinks: Optional[_PerHead] = ...,
        check_finite: bool = ...,
        return_stats: Literal[False] = ...,
    ) -> Tuple[_F32, _F32]:
        """``(out, lse)``, lse float32 ``[B, Hq, nq]``."""
    @overload
    def decode(
        self,
        q: _Float,
        *,
        causal: bool = ...,
        window: Optional[_Window] = ...,
        scale: Optional[float] = ...,
        threads: Optional[int] = ...,
        return_lse: Literal[False] = ...,
        softcap: Optional[float] = ...,
        alibi: Union[bool, _PerHead, None] = ...,
        sinks: Optional[_PerHead] = ...,
        check_finite: bool = ...,
        return_stats: Literal[True],
    ) -> Tuple[_F32, _Stats]:
        """``(out, stats)``: the saturation statistics ``[B, Hq, nq]``."""
    @overload
    def decode(
        self,
        q: _Float,
        *,
        causal: bool = ...,
        window: Optional[_Window] = ...,
        scale: Optional[float] = ...,
        threads: Optional[int] = ...,
        return_lse: Literal[True],
        softcap: Optional[float] = ...,
        alibi: Union[bool, _PerHead, None] = ...,
        sinks: Optional[_PerHead] = ...,
        check_finite: bool = ...,
        return_stats: Literal[True],
    ) -> Tuple[_F32, _F32, _Stats]:
        """``(out, lse, stats)``."""

class _Peak(TypedDict):
    fma_gflops_1t: float
    fma_gflops_all: float
    read_gbs_1t: float
    read_gbs_all: float
    threads_all: int
    fma_method: str
    read_method: str

def peak(threads: Optional[int] = ..., quick: bool = ...) -> _Peak:
    """This machine's f32 FMA peak and read bandwidth, 1 thread and
    ``threads`` (default: every logical CPU), as ``attn peak --json``."""

def version() -> str:
    """attnlab's version."""

def compiled_isa() -> str:
    """Vector instruction sets the kernels were compiled for, e.g.
    ``"sse4.2 avx2 fma avx512f"``."""
