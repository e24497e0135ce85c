//! A rank's share of the tensors, cut out of the whole ones, and its
//! results put back: what `ring_in_process` does in memory and what an
//! MPI root does around its scatter and gather.
//!
//! A rank's tensors are its chunks ([`crate::Partition::rank_chunks`]) in
//! increasing chunk order, each chunk contiguous in `[B, H, n_c, D]`
//! order:
//!
//! ```text
//! q   = [chunk 0: B × Hq  × n_0 × d ][chunk 1: B × Hq  × n_1 × d ]   (zigzag: 2 chunks)
//! k   = [chunk 0: B × Hkv × m_0 × d ][chunk 1: B × Hkv × m_1 × d ]
//! v   = [chunk 0: B × Hkv × m_0 × dv][chunk 1: B × Hkv × m_1 × dv]
//! out = [chunk 0: B × Hq  × n_0 × dv][chunk 1 ...]
//! lse = [chunk 0: B × Hq  × n_0     ][chunk 1 ...]
//! ```
//!
//! (`n_c` the chunk's query positions, `m_c` its key positions; a
//! contiguous layout has one chunk.) The whole tensors may be in either
//! [`Layout`]; the LSE is `[B, Hq, Nq]`, contiguous.

use std::ops::Range;

use attn_core::{AttnError, AttnInputs, Layout, TensorView, TensorViewMut};

use crate::error::RingError;
use crate::spec::RingSpec;

/// One rank's queries, keys and values (see the module docs for the
/// order), f32.
#[derive(Debug, Clone, PartialEq)]
pub struct RankInputs {
    /// The rank these belong to.
    pub rank: usize,
    /// Its query chunks, each `[B, Hq, n_c, d]`.
    pub q: Vec<f32>,
    /// Its key chunks, each `[B, Hkv, m_c, d]`.
    pub k: Vec<f32>,
    /// Its value chunks, each `[B, Hkv, m_c, dv]`.
    pub v: Vec<f32>,
}

impl RankInputs {
    /// Checks the lengths against what `spec` gives rank `self.rank`
    /// ([`RingSpec::rank_lens`]): an error naming the tensor otherwise.
    pub fn check(&self, spec: &RingSpec<'_>) -> Result<(), RingError> {
        if self.rank >= spec.ranks {
            return Err(AttnError::Param {
                name: "rank",
                reason: format!("rank {} of a ring of {}", self.rank, spec.ranks),
            }
            .into());
        }
        let (q, k, v) = spec.rank_lens(self.rank);
        for (tensor, want, got) in
            [("q", q, self.q.len()), ("k", k, self.k.len()), ("v", v, self.v.len())]
        {
            if want != got {
                return Err(AttnError::BufferLen { tensor, expected: want, got }.into());
            }
        }
        Ok(())
    }
}

/// Copies the rows of `chunk`'s positions of every `(b, h)` of `x` into
/// `dst`, in `[B, H, n, D]` order.
fn cut_chunk(x: &TensorView<'_, f32>, chunk: &Range<usize>, dst: &mut Vec<f32>) {
    let [b, h, _, _] = x.dims();
    for bi in 0..b {
        for hi in 0..h {
            for n in chunk.clone() {
                dst.extend_from_slice(x.row(bi, hi, n));
            }
        }
    }
}

/// Rank `rank`'s share of the whole tensors `q`, `k`, `v` (in `layout`,
/// dims from `spec.shape`), checked: a buffer of the wrong length is an
/// error naming it.
pub fn cut(
    spec: &RingSpec<'_>,
    rank: usize,
    layout: Layout,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Result<RankInputs, RingError> {
    spec.validate()?;
    let whole = AttnInputs::from_slices(spec.shape, layout, q, k, v)?;
    if rank >= spec.ranks {
        return Err(AttnError::Param {
            name: "rank",
            reason: format!("rank {rank} of a ring of {}", spec.ranks),
        }
        .into());
    }
    let (lq, lk, lv) = spec.rank_lens(rank);
    let mut out = RankInputs {
        rank,
        q: Vec::with_capacity(lq),
        k: Vec::with_capacity(lk),
        v: Vec::with_capacity(lv),
    };
    for (_, chunk) in spec.q_partition().rank_chunks(rank) {
        cut_chunk(&whole.q, &chunk, &mut out.q);
    }
    for (_, chunk) in spec.kv_partition().rank_chunks(rank) {
        cut_chunk(&whole.k, &chunk, &mut out.k);
        cut_chunk(&whole.v, &chunk, &mut out.v);
    }
    Ok(out)
}

/// Writes rank `rank`'s results (`rank_out`, `rank_lse`, in the order of
/// the module docs) into the whole output `out` (`[B, Hq, Nq, dv]` in
/// `layout`) and LSE `lse` (`[B, Hq, Nq]`). Every length is checked,
/// naming the buffer.
#[allow(clippy::too_many_arguments)]
pub fn place(
    spec: &RingSpec<'_>,
    rank: usize,
    rank_out: &[f32],
    rank_lse: &[f32],
    layout: Layout,
    out: &mut [f32],
    lse: &mut [f32],
) -> Result<(), RingError> {
    let s = &spec.shape;
    if rank >= spec.ranks {
        return Err(AttnError::Param {
            name: "rank",
            reason: format!("rank {rank} of a ring of {}", spec.ranks),
        }
        .into());
    }
    let mut whole = TensorViewMut::new("out", out, s.out_dims(), layout)?;
    if lse.len() != s.lse_len() {
        return Err(
            AttnError::BufferLen { tensor: "lse", expected: s.lse_len(), got: lse.len() }.into()
        );
    }
    let (want_out, want_lse) = spec.rank_out_lens(rank);
    for (tensor, want, got) in
        [("rank out", want_out, rank_out.len()), ("rank lse", want_lse, rank_lse.len())]
    {
        if want != got {
            return Err(AttnError::BufferLen { tensor, expected: want, got }.into());
        }
    }
    let (hq, nq, dv) = (s.q_heads(), s.q_len(), s.v_dim());
    let (mut o, mut l) = (rank_out.chunks_exact(dv), rank_lse.iter());
    for (_, chunk) in spec.q_partition().rank_chunks(rank) {
        for b in 0..s.batch() {
            for h in 0..hq {
                for n in chunk.clone() {
                    whole.row_mut(b, h, n).copy_from_slice(o.next().expect("length checked"));
                    lse[(b * hq + h) * nq + n] = *l.next().expect("length checked");
                }
            }
        }
    }
    Ok(())
}
