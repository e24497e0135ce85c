//! Tile sizes of the backward loop nest and how the keys of one K/V head
//! are cut into chunks, with the reason for each value.

use attn_core::{AttnShape, Mask};

use crate::tiles::{LANES, MR, NR};

/// Keys per K/V tile (`Bc`): the tile whose `dK`, `dV` a worker keeps in
/// its scratch while every query tile of the group streams past. A
/// multiple of 32 (one `Sᵀ` micro-tile panel). 64 keys at d = 64 keep the
/// tile's packed `Kᵀ`, `Vᵀ`, `K` and the `dK`, `dV` accumulators at
/// 80 KiB, in the L2 next to the streaming Q/dO tiles.
pub(crate) const BC: usize = 64;

/// Query rows per inner tile (`Br`): `P` and `dS` are `Br × Bc` each
/// (2 × 20 KiB with the padded rows), L1/L2 resident between the five
/// products that read them. A multiple of [`MR`]. `Br` = 128 measured the
/// same as 64 within the noise of the shared Zen 5 (MHA d = 64, N = 4096,
/// one thread: 450–500 ms against 430–490 ms, interleaved runs), so the
/// smaller tile stays.
pub(crate) const BR: usize = 64;

/// Row stride of the `P` and `dS` tiles: one vector longer than `Bc`, so
/// that a column walk (the `dV`/`dK` products read 8 keys of every row)
/// does not map onto a few L1 sets.
pub(crate) const SROW: usize = BC + LANES;

/// A call is cut into at least this many work items when it can be: the
/// keys of each (batch, K/V head) are split into `ceil(8 / (B·Hkv))`
/// chunks (a function of the shape only, never of the thread count, so
/// that the dQ sum order — and the bits — do not depend on it). Eight
/// items keep two to four threads busy on MQA/GQA with B = 1; MHA with 8
/// heads needs no split and no dQ partials.
pub(crate) const MIN_ITEMS: usize = 8;

/// Most chunks per K/V head (so the chunk bounds fit in an array).
pub(crate) const MAX_CHUNKS: usize = MIN_ITEMS;

/// What one call's loop nest needs to size and split its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BwdPlan {
    /// Q/K head dim and V head dim.
    pub d: usize,
    pub dv: usize,
    /// `d` and `dv` rounded up to whole vectors (row widths of the padded
    /// buffers).
    pub dpad: usize,
    pub dvpad: usize,
    /// Chunks of K/V tiles per (batch, K/V head).
    pub chunks: usize,
    /// Chunk `c` covers K/V tiles `bounds[c] .. bounds[c + 1]`.
    pub bounds: [usize; MAX_CHUNKS + 1],
}

impl BwdPlan {
    /// The plan of a call on `shape` with `mask`.
    pub(crate) fn new(shape: &AttnShape, mask: &Mask) -> BwdPlan {
        let (d, dv) = (shape.head_dim(), shape.v_dim());
        let tiles = shape.kv_len().div_ceil(BC);
        let heads = shape.batch() * shape.kv_heads();
        let chunks = MIN_ITEMS.div_ceil(heads).clamp(1, tiles.max(1)).min(MAX_CHUNKS);
        let mut bounds = [tiles; MAX_CHUNKS + 1];
        bounds[0] = 0;
        if chunks > 1 {
            // Equal work per chunk: a tile's work is its visible query span
            // times its keys (causal tiles near the start see more queries).
            let (nq, nk) = (shape.q_len(), shape.kv_len());
            let work = |t: usize| {
                let (j0, j1) = (t * BC, ((t + 1) * BC).min(nk));
                query_span(mask, nq, nk, j0, j1).len() as u128 * (j1 - j0) as u128
            };
            let total: u128 = (0..tiles).map(work).sum();
            let (mut c, mut acc) = (1, 0u128);
            for t in 0..tiles {
                acc += work(t);
                // the end of chunk c-1: its share of the work is reached
                while c < chunks && acc * chunks as u128 >= total * c as u128 {
                    bounds[c] = (t + 1).min(tiles);
                    c += 1;
                }
            }
            for b in bounds.iter_mut().take(chunks).skip(c) {
                *b = tiles;
            }
        }
        BwdPlan {
            d,
            dv,
            dpad: d.next_multiple_of(LANES),
            dvpad: dv.next_multiple_of(LANES),
            chunks,
            bounds,
        }
    }

    /// Floats of the dQ partials: one `[B, Hq, Nq, d]` copy per chunk
    /// past the first (the first accumulates into dQ itself).
    pub(crate) fn partial_len(&self, shape: &AttnShape) -> usize {
        (self.chunks - 1) * shape.batch() * shape.q_heads() * shape.q_len() * self.d
    }

    /// Bytes of one worker's buffers.
    pub(crate) fn worker_bytes(&self) -> usize {
        let floats = BC * self.d       // packed, pre-scaled Kᵀ panels
            + BC * self.dv             // packed, pre-scaled Vᵀ panels
            + BC * self.dpad           // K rows, padded
            + BC * self.dpad           // dK accumulator
            + BC * self.dvpad          // dV accumulator
            + 2 * BR * SROW            // P and dS tiles
            + BR * self.dpad           // Q tile (widened or padded)
            + BR * self.dvpad; // dO tile (padded)
        floats * 4 + 2 * BR * std::mem::size_of::<usize>()
    }
}

/// Query rows that see at least one key of `j0..j1`: contiguous, because
/// every mask's visible range `lo..hi` is nondecreasing in the row (see
/// `Mask::key_range`), found by two binary searches.
pub(crate) fn query_span(
    mask: &Mask,
    nq: usize,
    nk: usize,
    j0: usize,
    j1: usize,
) -> std::ops::Range<usize> {
    let first = partition(nq, |i| mask.key_range(i, nq, nk).end <= j0);
    let end = partition(nq, |i| mask.key_range(i, nq, nk).start < j1);
    // Rows in first..end with an empty range see nothing; the loop nest
    // masks them. The span is empty when first >= end.
    first..end.max(first)
}

/// The first `i` in `0..n` for which `pred` is false (`pred` true on a
/// prefix).
fn partition(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) { lo = mid + 1 } else { hi = mid }
    }
    lo
}

const _: () = assert!(BC.is_multiple_of(NR) && BR.is_multiple_of(MR));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_is_exactly_the_rows_that_see_the_keys() {
        let masks = [
            Mask::None,
            Mask::Causal,
            Mask::Window { left: Some(3), right: Some(2) },
            Mask::Window { left: Some(0), right: Some(0) },
            Mask::Window { left: None, right: Some(5) },
        ];
        for m in masks {
            for (nq, nk) in [(9, 40), (40, 9), (33, 33), (0, 5), (5, 0)] {
                for j0 in 0..nk {
                    for j1 in j0 + 1..=nk {
                        let want: Vec<usize> = (0..nq)
                            .filter(|&i| {
                                let r = m.key_range(i, nq, nk);
                                r.start < j1 && r.end > j0
                            })
                            .collect();
                        let span = query_span(&m, nq, nk, j0, j1);
                        let got: Vec<usize> = span
                            .clone()
                            .filter(|&i| {
                                let r = m.key_range(i, nq, nk);
                                r.start < j1 && r.end > j0
                            })
                            .collect();
                        assert_eq!(got, want, "{m:?} {nq}x{nk} keys {j0}..{j1}");
                        // and no wider than needed
                        if let (Some(a), Some(b)) = (want.first(), want.last()) {
                            assert_eq!(span, *a..b + 1, "{m:?} {nq}x{nk} keys {j0}..{j1}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn chunks_depend_on_the_shape_only_and_split_causal_work_evenly() {
        let s = |hkv: usize, n: usize| {
            AttnShape::builder().q_heads(8).kv_heads(hkv).seq_len(n).head_dim(64).build().unwrap()
        };
        assert_eq!(BwdPlan::new(&s(8, 4096), &Mask::None).chunks, 1);
        let p = BwdPlan::new(&s(2, 4096), &Mask::None);
        assert_eq!(p.chunks, 4);
        assert_eq!(&p.bounds[..5], &[0, 16, 32, 48, 64]);
        let p = BwdPlan::new(&s(1, 4096), &Mask::Causal);
        assert_eq!(p.chunks, 8);
        // causal: early key tiles see more queries, so early chunks are
        // shorter; each chunk's work is its share to within one tile's
        let len: Vec<usize> = (0..8).map(|c| p.bounds[c + 1] - p.bounds[c]).collect();
        assert!(len[0] < len[7], "{len:?}");
        let work = |t: usize| (4096 - t * BC) as u128 * BC as u128; // span × keys
        let total: u128 = (0..64).map(work).sum();
        for c in 0..8 {
            let w: u128 = (p.bounds[c]..p.bounds[c + 1]).map(work).sum();
            let share = total / 8;
            assert!(w.abs_diff(share) <= work(0), "chunk {c}: {w} vs {share} ({len:?})");
        }
        assert_eq!(p.bounds[8], 64);
        // fewer tiles than chunks: one tile each
        let p = BwdPlan::new(&s(1, 100), &Mask::None);
        assert_eq!((p.chunks, &p.bounds[..3]), (2, &[0, 1, 2][..]));
    }
}
