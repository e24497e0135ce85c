//! What every rank of one ring agrees on: the whole problem's shape, the
//! layout, the number of ranks, the attention parameters and the threads
//! each rank computes with. Every size a rank needs (its chunks, the
//! length of the blocks that travel) follows from it.

use attn_core::{AttnError, AttnParams, AttnShape, ChunkPositions, Par};
use std::ops::Range;

use crate::error::RingError;
use crate::partition::{Partition, RingLayout};

/// One ring attention problem (the same on every rank).
#[derive(Debug, Clone, Copy)]
pub struct RingSpec<'a> {
    /// The whole problem: `[B, Hq, Nq, d]` queries against `[B, Hkv, Nk,
    /// d]` keys and `[B, Hkv, Nk, dv]` values.
    pub shape: AttnShape,
    /// How the sequences are cut ([`RingLayout`]).
    pub layout: RingLayout,
    /// Ranks in the ring, at least 1.
    pub ranks: usize,
    /// Scale, mask (on global positions) and score modifiers: softcap,
    /// ALiBi (global distances) and sinks (added once, after the merge).
    /// No bias (an `Nq × Nk` tensor has no place in a ring) and no chunk
    /// positions (the ring sets them for each block).
    pub params: AttnParams<'a>,
    /// Threads each rank computes with (a rayon pool of its own when more
    /// than 1), at least 1. Results do not depend on it.
    pub threads: usize,
}

impl<'a> RingSpec<'a> {
    /// A checked spec with one thread per rank ([`RingSpec::validate`]).
    pub fn new(
        shape: AttnShape,
        layout: RingLayout,
        ranks: usize,
        params: AttnParams<'a>,
    ) -> Result<Self, RingError> {
        let spec = RingSpec { shape, layout, ranks, params, threads: 1 };
        spec.validate()?;
        Ok(spec)
    }

    /// The same spec with `threads` threads per rank, checked.
    pub fn with_threads(self, threads: usize) -> Result<Self, RingError> {
        let spec = RingSpec { threads, ..self };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks what every rank relies on: at least one rank, a thread count
    /// in `1..=MAX_THREADS`, parameters valid for the shape, no bias and
    /// no chunk positions. Errors name the parameter.
    pub fn validate(&self) -> Result<(), RingError> {
        if self.ranks == 0 {
            return Err(AttnError::ZeroDim { dim: "ranks" }.into());
        }
        Par::rayon(self.threads)?;
        self.params.validate_for(&self.shape)?;
        if let Some(bias) = &self.params.bias {
            return Err(AttnError::Unsupported {
                what: format!(
                    "a bias ({}) in ring attention: each rank would need its rows of the whole \
                     Nq × Nk tensor",
                    bias.name()
                ),
            }
            .into());
        }
        if self.params.positions.is_some() {
            return Err(AttnError::Param {
                name: "positions",
                reason: "ring attention places every block itself; give the whole problem's \
                         shape and no positions"
                    .into(),
            }
            .into());
        }
        Ok(())
    }

    /// The query sequence's partition.
    pub fn q_partition(&self) -> Partition {
        Partition { len: self.shape.q_len(), ranks: self.ranks, layout: self.layout }
    }

    /// The key/value sequence's partition.
    pub fn kv_partition(&self) -> Partition {
        Partition { len: self.shape.kv_len(), ranks: self.ranks, layout: self.layout }
    }

    /// Elements of rank `rank`'s Q, K and V (its chunks, see
    /// [`crate::RankInputs`]).
    pub fn rank_lens(&self, rank: usize) -> (usize, usize, usize) {
        let s = &self.shape;
        let (nq, nk) = (self.q_partition().rank_len(rank), self.kv_partition().rank_len(rank));
        let bh = |h: usize| s.batch() * h;
        (bh(s.q_heads()) * nq * s.head_dim(), bh(s.kv_heads()) * nk * s.head_dim(), {
            bh(s.kv_heads()) * nk * s.v_dim()
        })
    }

    /// Elements of rank `rank`'s output (its query rows, `dv` each) and of
    /// its LSE.
    pub fn rank_out_lens(&self, rank: usize) -> (usize, usize) {
        let s = &self.shape;
        let rows = s.batch() * s.q_heads() * self.q_partition().rank_len(rank);
        (rows * s.v_dim(), rows)
    }

    /// Length (f32 elements) of the block every rank sends and receives at
    /// each step: the largest rank's K and V ([`crate::block`]).
    pub fn block_len(&self) -> usize {
        (0..self.ranks)
            .map(|r| {
                let (_, k, v) = self.rank_lens(r);
                k + v
            })
            .max()
            .unwrap_or(0)
    }

    /// The shape of one block call: the query chunk `q` against the key
    /// chunk `kv`.
    pub fn pair_shape(&self, q: &Range<usize>, kv: &Range<usize>) -> Result<AttnShape, AttnError> {
        let s = &self.shape;
        AttnShape::builder()
            .batch(s.batch())
            .q_heads(s.q_heads())
            .kv_heads(s.kv_heads())
            .q_len(q.len())
            .kv_len(kv.len())
            .head_dim(s.head_dim())
            .v_dim(s.v_dim())
            .build()
    }

    /// The chunk positions of that call in the whole problem.
    pub fn pair_positions(&self, q: &Range<usize>, kv: &Range<usize>) -> ChunkPositions {
        ChunkPositions {
            q_start: q.start,
            kv_start: kv.start,
            q_total: self.shape.q_len(),
            kv_total: self.shape.kv_len(),
        }
    }
}
