//! The backward's saturation statistics (`attn_core::stats`): per query
//! row the share of its score-gradient mass `Σ_j |dS_ij|` off its argmax,
//! per key the mass it receives — from the `P` and `dS` tiles the loop
//! nest has already computed, in `O(rows)` extra memory.
//!
//! A row's keys are split over the `C` chunks of its K/V head, so each
//! item keeps a [`RowArg`] per row of its chunk: the `|dS|` sum, the
//! largest `P` and `|dS|` at the first key reaching it. Within an item a
//! row meets its keys in increasing order (K/V tiles in order, keys in
//! column order) and a later key replaces the argmax only with a strictly
//! larger `P`; [`finish`] merges the chunks in order with the same rule,
//! so the argmax is the first key of largest `P` (the oracle's) and the
//! bits do not depend on the thread count. Each key belongs to one item,
//! which sums `|dS|` over its group's rows in the nest's fixed order.
//!
//! Cost: a pass over each block of 8 rows of `P` and `dS` right after
//! their epilogue (in L1), with no data-dependent branch (see
//! [`add_rows`]); `3·C·B·Hq·Nq + B·Hkv·Nk` floats allocated by the call.
//! Measured with `stats_backward_overhead` (`tests/stats_backward.rs`: N =
//! 4096, d = 64, causal, one thread, medians of 21 alternating pairs, on a
//! shared 2-core Zen 5; four runs): MHA with 8 heads ×1.04–1.05 (e.g.
//! 211 → 221 ms), one head (8 key chunks) ×1.05–1.06 (26.6 → 28.0 ms);
//! the call without statistics runs as before (one test per block of 8
//! rows; its time against the parent commit's, alternated: the same
//! within the noise).

use wide::f32x16;

use super::plan::{BC, SROW};
use crate::tiles::LANES;

/// One row's statistics over the keys of one chunk.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowArg {
    /// `Σ |dS|` over the keys seen so far.
    pub sum: f32,
    /// The largest `P` seen so far (0 before any key with `P > 0`).
    pub pmax: f32,
    /// `|dS|` at the first key that reached `pmax`.
    pub at: f32,
}

/// A buffer whose disjoint ranges are handed to parallel work items.
#[derive(Clone, Copy)]
pub(crate) struct Disjoint<'a, T> {
    ptr: *mut T,
    len: usize,
    _life: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: ranges are only handed out through `range_mut`, whose contract
// makes callers take disjoint ones; the buffer outlives 'a.
unsafe impl<T: Send> Send for Disjoint<'_, T> {}
// SAFETY: as above; shared use is what it exists for.
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    pub(crate) fn new(x: &'a mut [T]) -> Self {
        Disjoint { ptr: x.as_mut_ptr(), len: x.len(), _life: std::marker::PhantomData }
    }

    /// Elements `start..start + n`.
    ///
    /// # Safety
    /// No two live slices returned by this function (from any copy, on
    /// any thread) may overlap.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range_mut(&self, start: usize, n: usize) -> &mut [T] {
        assert!(start + n <= self.len, "range out of bounds");
        // SAFETY: in bounds (checked above); exclusivity is the caller's
        // contract; the pointer came from a live `&mut [T]` borrowed for 'a.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), n) }
    }
}

/// Where the loop nest writes the statistics: the per-chunk row partials
/// `[C][B·Hq·Nq]` and `key_grad` `[B·Hkv·Nk]`.
#[derive(Clone, Copy)]
pub(crate) struct StatsOut<'a> {
    pub rows: Disjoint<'a, RowArg>,
    pub key_grad: Disjoint<'a, f32>,
}

/// Adds rows of one (query tile, K/V tile) pair to the statistics: `p`
/// and `ds` start at the first of them in the pair's tiles (`SROW` apart,
/// `dS` in natural units); rows `..rows.len()` and columns `..cols` (whole
/// vectors; `P = dS = 0` past the tile's keys and wherever masked) are
/// the pair's; `kg` holds the tile's keys (`cols` or fewer). Rows in
/// order, each row's keys in order: a key replaces the row's argmax only
/// with a strictly larger `P`.
pub(crate) fn add_rows(p: &[f32], ds: &[f32], cols: usize, rows: &mut [RowArg], kg: &mut [f32]) {
    const NC: usize = BC / LANES;
    let nv = cols / LANES;
    debug_assert!(cols.is_multiple_of(LANES) && nv <= NC && kg.len() <= cols);
    let mut col = [f32x16::ZERO; NC];
    for (r, acc) in rows.iter_mut().enumerate() {
        let (pr, dr) = (&p[r * SROW..][..cols], &ds[r * SROW..][..cols]);
        let (mut sum, mut top) = (f32x16::ZERO, f32x16::ZERO);
        for (t, c) in col.iter_mut().enumerate().take(nv) {
            let a = attn_simd::load(&dr[t * LANES..]).abs();
            *c += a;
            sum += a;
            top = top.fast_max(attn_simd::load(&pr[t * LANES..]));
        }
        acc.sum += attn_simd::hsum(sum);
        // The first key reaching the row's largest P here, without a
        // branch: a new maximum comes ~ln(tiles) times per row on random
        // data, too irregular to predict, and the search is a latency chain
        // that independent rows overlap only when nothing is mispredicted
        // (measured: with a branch the statistics cost ~1.7× more).
        let m = attn_simd::hmax(top);
        let bits = (0..nv).fold(0u64, |b, t| {
            let hits = attn_simd::load(&pr[t * LANES..]).simd_eq(f32x16::splat(m));
            b | (u64::from(hits.to_bitmask()) << (t * LANES))
        });
        // (no hit only for a NaN P, which never wins below)
        let at = dr[(bits.trailing_zeros() as usize).min(cols - 1)].abs();
        let up = m > acc.pmax;
        acc.pmax = if up { m } else { acc.pmax };
        acc.at = if up { at } else { acc.at };
    }
    let col: &[f32] = wide::bytemuck::cast_slice(&col[..]);
    kg.iter_mut().zip(col).for_each(|(k, c)| *k += c);
}

/// `off_argmax` of every row `[B·Hq·Nq]` from the chunks' partials
/// `[C][B·Hq·Nq]`, merged in chunk order (sums added, a later chunk's
/// argmax taken only with a strictly larger `P`); 0 for a row with no
/// mass.
pub(crate) fn finish(off: &mut [f32], part: &[RowArg], chunks: usize) {
    let rows = off.len();
    for (r, o) in off.iter_mut().enumerate() {
        let mut m = part[r];
        for c in 1..chunks {
            let x = part[c * rows + r];
            m.sum += x.sum;
            if x.pmax > m.pmax {
                (m.pmax, m.at) = (x.pmax, x.at);
            }
        }
        // `at` is one of the non-negative terms of `sum`, so `sum ≥ at`
        // in f32 too (rounding is monotone): the share is in [0, 1].
        *o = if m.sum > 0.0 { (m.sum - m.at) / m.sum } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backward::plan::BR;

    #[test]
    fn first_key_of_largest_p_wins_within_and_across_tiles_and_chunks() {
        let (mut p, mut ds) = (vec![0f32; BR * SROW], vec![0f32; BR * SROW]);
        // row 0: P ties at keys 5 and 40 (|dS| 1 and 2), key 70 is past cols
        p[5] = 0.5;
        p[40] = 0.5;
        ds[5] = -1.0;
        ds[40] = 2.0;
        ds[1] = 3.0;
        // row 1: all zero (masked)
        let mut rows = [RowArg::default(); 2];
        let mut kg = [0f32; 50];
        add_rows(&p, &ds, 64, &mut rows, &mut kg);
        assert_eq!((rows[0].sum, rows[0].pmax, rows[0].at), (6.0, 0.5, 1.0));
        assert_eq!((rows[1].sum, rows[1].pmax, rows[1].at), (0.0, 0.0, 0.0));
        assert_eq!((kg[1], kg[5], kg[40], kg[6]), (3.0, 1.0, 2.0, 0.0));
        // the next tile of the same chunk: an equal P does not replace
        add_rows(&p, &ds, 32, &mut rows[..1], &mut kg[..32]);
        assert_eq!((rows[0].sum, rows[0].at), (10.0, 1.0));
        assert_eq!((kg[1], kg[5], kg[40]), (6.0, 2.0, 2.0));
        // across chunks: equal P keeps chunk 0's, larger P takes over
        let a = RowArg { sum: 4.0, pmax: 0.5, at: 1.0 };
        let tie = RowArg { sum: 4.0, pmax: 0.5, at: 3.0 };
        let big = RowArg { sum: 4.0, pmax: 0.6, at: 4.0 };
        let mut off = [f32::NAN; 2];
        finish(&mut off, &[a, RowArg::default(), tie, big], 2);
        assert_eq!(off, [0.875, 0.0]);
        finish(&mut off, &[a, a, big, tie], 2);
        assert_eq!(off, [0.5, 0.875]);
    }
}
