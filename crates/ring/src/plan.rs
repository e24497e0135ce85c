//! The per-step plan of a rank: which K/V block it holds at each step and,
//! for each (local query chunk, K/V chunk) pair, whether the mask leaves
//! it fully visible, partly visible (the diagonal, a window's edge) or
//! invisible — then it is skipped.
//!
//! At step `s` (`0..P`) rank `r` holds the block that started on rank
//! `(r − s) mod P`: its own at step 0, and each step's block moves on to
//! rank `r + 1` while the next one arrives from rank `r − 1`.

use std::ops::Range;

use attn_core::Mask;

use crate::spec::RingSpec;

/// How much of a (query chunk, key chunk) pair the mask leaves visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Relation {
    /// Every query sees every key of the chunk.
    Full,
    /// Some pairs are visible, some are not (the causal diagonal, a
    /// window's edges): the kernel masks inside the block.
    Diagonal,
    /// No query sees any key of the chunk: the pair is skipped.
    Invisible,
}

/// The relation of global queries `q` to global keys `kv` under `mask`,
/// in a problem of `q_total` queries and `kv_total` keys (bottom-right
/// aligned: query `i` sits on key `i + kv_total − q_total`).
///
/// Closed form: query `i` on diagonal `t = i + kv_total − q_total` sees a
/// key of `kv` exactly when `kv.start − right <= t <= kv.end − 1 + left`
/// (what [`Mask::key_range_on`] gives, restricted to `kv`), and sees all
/// of them when `t − left <= kv.start` and `t + right + 1 >= kv.end`; the
/// diagonals of `q` are consecutive, so the first and last query decide.
/// An empty chunk is invisible.
pub fn relation(
    mask: Mask,
    q: &Range<usize>,
    kv: &Range<usize>,
    q_total: usize,
    kv_total: usize,
) -> Relation {
    if q.is_empty() || kv.is_empty() {
        return Relation::Invisible;
    }
    let (left, right) = mask.as_window();
    let shift = kv_total as i128 - q_total as i128;
    let (t_first, t_last) = (q.start as i128 + shift, q.end as i128 - 1 + shift);
    let (k0, k_last) = (kv.start as i128, kv.end as i128 - 1);
    // Diagonals that see some key of the chunk: [k0 − right, k_last + left].
    let lo = right.map_or(i128::MIN, |r| k0 - r as i128);
    let hi = left.map_or(i128::MAX, |l| k_last + l as i128);
    if t_last < lo || t_first > hi {
        return Relation::Invisible;
    }
    let left_ok = left.is_none_or(|l| t_last - l as i128 <= k0);
    let right_ok = right.is_none_or(|r| t_first + r as i128 >= k_last);
    if left_ok && right_ok { Relation::Full } else { Relation::Diagonal }
}

/// One block call of a step: a local query chunk against one chunk of the
/// block the rank holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The query chunk's index in the query partition.
    pub q_chunk: usize,
    /// Its global query positions.
    pub q: Range<usize>,
    /// The key chunk's index in the key partition.
    pub kv_chunk: usize,
    /// Its global key positions.
    pub kv: Range<usize>,
    /// How much the mask leaves visible; [`Relation::Invisible`] pairs are
    /// skipped.
    pub relation: Relation,
}

/// What a rank does at one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The step, `0..P`.
    pub step: usize,
    /// The rank whose K/V block this rank holds at this step:
    /// `(rank − step) mod P`.
    pub source: usize,
    /// Every (local query chunk, source key chunk) pair, query chunks in
    /// increasing order, then key chunks: the order the partials are
    /// merged in.
    pub pairs: Vec<Pair>,
}

/// The plan of rank `rank`: its `P` steps (see the module docs). Depends
/// on the spec and the rank only, never on timing.
pub fn rank_plan(spec: &RingSpec<'_>, rank: usize) -> Vec<Step> {
    let p = spec.ranks;
    let (qp, kp) = (spec.q_partition(), spec.kv_partition());
    let (q_total, kv_total) = (spec.shape.q_len(), spec.shape.kv_len());
    let local = qp.rank_chunks(rank);
    (0..p)
        .map(|step| {
            let source = (rank + p - step) % p;
            let mut pairs = Vec::new();
            for (q_chunk, q) in &local {
                for (kv_chunk, kv) in kp.rank_chunks(source) {
                    let relation = relation(spec.params.mask, q, &kv, q_total, kv_total);
                    pairs.push(Pair { q_chunk: *q_chunk, q: q.clone(), kv_chunk, kv, relation });
                }
            }
            Step { step, source, pairs }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relation by brute force over every (query, key) pair, from
    /// the masks' one definition.
    fn brute(mask: Mask, q: &Range<usize>, kv: &Range<usize>, nq: usize, nk: usize) -> Relation {
        let mut seen = 0usize;
        for i in q.clone() {
            let r = mask.key_range(i, nq, nk);
            seen += (r.start.max(kv.start)..r.end.min(kv.end)).len();
        }
        match seen {
            0 => Relation::Invisible,
            s if s == q.len() * kv.len() => Relation::Full,
            _ => Relation::Diagonal,
        }
    }

    #[test]
    fn relation_is_the_brute_force_one() {
        let masks = [
            Mask::None,
            Mask::Causal,
            Mask::Window { left: Some(0), right: Some(0) },
            Mask::Window { left: Some(3), right: Some(1) },
            Mask::Window { left: None, right: Some(2) },
            Mask::Window { left: Some(4), right: None },
            Mask::Window { left: Some(0), right: None },
        ];
        for mask in masks {
            for (nq, nk) in [(12, 12), (7, 12), (12, 7), (1, 9), (9, 1)] {
                for q0 in 0..nq {
                    for q1 in q0..=nq {
                        for k0 in 0..nk {
                            for k1 in k0..=nk {
                                let (q, kv) = (q0..q1, k0..k1);
                                assert_eq!(
                                    relation(mask, &q, &kv, nq, nk),
                                    brute(mask, &q, &kv, nq, nk),
                                    "{mask:?} nq {nq} nk {nk} q {q:?} kv {kv:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
