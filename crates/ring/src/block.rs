//! The K/V block that travels around the ring: one flat f32 buffer of
//! [`RingSpec::block_len`] elements, the same length on every rank (the
//! largest rank's K and V), laid out as
//!
//! ```text
//! [ k of the owner: its chunks, each [B, Hkv, m_c, d]  ]   (= RankInputs::k)
//! [ v of the owner: its chunks, each [B, Hkv, m_c, dv] ]   (= RankInputs::v)
//! [ zeros up to block_len                              ]
//! ```
//!
//! A receiver knows the owner (`(rank − step) mod P`, from the plan), so
//! its chunks' positions and lengths, and reads K and V in place: no
//! header, nothing copied out.

use std::ops::Range;

use crate::spec::RingSpec;

/// Writes `k` then `v` (one rank's, see [`crate::RankInputs`]) into
/// `buf` and zeroes the rest. `buf` holds [`RingSpec::block_len`]
/// elements; lengths are the caller's to have checked.
pub fn pack_block(k: &[f32], v: &[f32], buf: &mut [f32]) {
    let (kb, rest) = buf.split_at_mut(k.len());
    kb.copy_from_slice(k);
    let (vb, pad) = rest.split_at_mut(v.len());
    vb.copy_from_slice(v);
    pad.fill(0.0);
}

/// One chunk of a block, read in place.
#[derive(Debug, Clone)]
pub struct BlockChunk<'b> {
    /// The chunk's index in the key partition.
    pub chunk: usize,
    /// Its global key positions.
    pub kv: Range<usize>,
    /// Its keys, `[B, Hkv, m, d]`.
    pub k: &'b [f32],
    /// Its values, `[B, Hkv, m, dv]`.
    pub v: &'b [f32],
}

/// The chunks of the block `buf` that rank `owner` packed.
pub fn unpack_block<'b>(spec: &RingSpec<'_>, owner: usize, buf: &'b [f32]) -> Vec<BlockChunk<'b>> {
    let s = &spec.shape;
    let (_, k_len, _) = spec.rank_lens(owner);
    let row = s.batch() * s.kv_heads();
    let (mut ko, mut vo) = (0, k_len);
    spec.kv_partition()
        .rank_chunks(owner)
        .into_iter()
        .map(|(chunk, kv)| {
            let (kn, vn) = (row * kv.len() * s.head_dim(), row * kv.len() * s.v_dim());
            let c = BlockChunk { chunk, kv, k: &buf[ko..ko + kn], v: &buf[vo..vo + vn] };
            (ko, vo) = (ko + kn, vo + vn);
            c
        })
        .collect()
}
