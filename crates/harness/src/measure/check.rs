//! The error check of a measurement: sampled output rows against the f64
//! oracle of `attnlab::naive` ([`reference_rows`] for prefill,
//! [`reference_row`] over a KV cache for decode), the same arithmetic
//! every test of the workspace trusts. A NaN or inf output is an error of
//! +inf ([`row_error`]), never 0.

use attnlab::ScoreMods;
use attnlab::flash::{KvCache, KvElement};
use attnlab::naive::{RowAt, reference_row, reference_rows};
use attnlab::{AttnInputs, AttnParams, AttnShape, Element, Layout};
use rayon::prelude::*;

/// Max |want − got| over one row; a NaN or infinite output (or
/// difference) is an error of +inf.
pub fn row_error(want: &[f64], got: &[f32]) -> f64 {
    want.iter()
        .zip(got)
        .map(|(w, g)| {
            let e = (w - f64::from(*g)).abs();
            if e.is_finite() { e } else { f64::INFINITY }
        })
        .fold(0.0, f64::max)
}

/// Max |O − O_f64| over sampled rows of `[B, Hq, Nq, dv]` contiguous
/// buffers: `rows / 2` evenly spaced query rows (first and last included)
/// of (b = 0, h = 0) and of (b = B-1, h = Hq-1), so that GQA's kv-head
/// mapping is exercised. Returns the error and the rows checked.
pub fn prefill_error<T: Element>(
    shape: &AttnShape,
    params: &AttnParams,
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[f32],
    rows: usize,
) -> (f64, usize) {
    let (b_n, hq, nq, dv) = (shape.batch(), shape.q_heads(), shape.q_len(), shape.v_dim());
    if nq == 0 || rows == 0 {
        return (0.0, 0);
    }
    let Ok(inputs) = AttnInputs::from_slices(*shape, Layout::Bhnd, q, k, v) else {
        return (f64::INFINITY, 0); // not what the kernel ran on either
    };
    let mut heads = vec![(0, 0), (b_n - 1, hq - 1)];
    heads.dedup();
    let per = rows.div_ceil(heads.len()).clamp(1, nq);
    let mut picks: Vec<(usize, usize, usize)> = Vec::new();
    for &(b, h) in &heads {
        for r in 0..per {
            let i = if per == 1 { nq - 1 } else { r * (nq - 1) / (per - 1) };
            picks.push((b, h, i));
        }
    }
    picks.dedup();
    let want = reference_rows(&inputs, params, &picks);
    let err = picks
        .iter()
        .zip(&want)
        .map(|(&(b, h, i), (o, _lse))| row_error(o, &out[((b * hq + h) * nq + i) * dv..][..dv]))
        .fold(0.0, f64::max);
    (err, picks.len())
}

/// The K and V rows (`[len, d]`, `[len, dv]`, f32) of K/V head `g` of
/// batch entry `b` that a decode step is checked against.
pub type KvRows<'a> = dyn Fn(usize, usize) -> (Vec<f32>, Vec<f32>) + Sync + 'a;

/// [`KvRows`] of a cache as it stores them, widened to f32 (exactly the
/// values the kernel reads).
pub fn stored_rows<T: KvElement>(cache: &KvCache<T>, b: usize, g: usize) -> (Vec<f32>, Vec<f32>) {
    let (d, dv, len) = (cache.head_dim(), cache.v_dim(), cache.lens()[b]);
    let (mut k, mut v) = (vec![0f32; len * d], vec![0f32; len * dv]);
    for j in 0..len {
        T::widen(cache.k_row(b, g, j), &mut k[j * d..(j + 1) * d]);
        T::widen(cache.v_row(b, g, j), &mut v[j * dv..(j + 1) * dv]);
    }
    (k, v)
}

/// Max |O − O_f64| of a decode step over `rows` query rows evenly spaced
/// over `[B, Hq, nq]` (first and last included, so that several K/V heads
/// are exercised), against the oracle over the K/V rows `kv` gives;
/// `shape` is `(B, Hq, Hkv, nq)`, `lens` the cached positions of each
/// batch entry, `q` and `out` `[B, Hq, nq, d|dv]` contiguous. Returns the
/// error and the rows checked.
#[allow(clippy::too_many_arguments)]
pub fn decode_error(
    kv: &KvRows<'_>,
    (bsz, hq, hkv, nq): (usize, usize, usize, usize),
    lens: &[usize],
    (d, dv): (usize, usize),
    q: &[f32],
    params: &AttnParams,
    out: &[f32],
    rows: usize,
) -> (f64, usize) {
    let total = bsz * hq * nq;
    let n = rows.min(total);
    if n == 0 {
        return (0.0, 0);
    }
    let mut picks: Vec<usize> =
        (0..n).map(|k| if n == 1 { total - 1 } else { k * (total - 1) / (n - 1) }).collect();
    picks.dedup();
    // The oracle's scale (`attnlab::naive::reference`), in f64.
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (d as f64).sqrt());
    let mods = ScoreMods::new(params, hq);
    let err = picks
        .par_iter()
        .map(|&r| {
            let (b, h, t) = (r / (hq * nq), (r / nq) % hq, r % nq);
            let g = h / (hq / hkv);
            let keys = params.mask.key_range(t, nq, lens[b]);
            let (k, v) = kv(b, g);
            let mut o = vec![0f64; dv];
            reference_row(
                &q[r * d..][..d],
                keys,
                scale,
                RowAt::new(&mods, b, h, t, nq, lens[b]),
                |j| &k[j * d..(j + 1) * d],
                |j| &v[j * dv..(j + 1) * dv],
                &mut Vec::new(),
                &mut o,
            );
            row_error(&o, &out[r * dv..][..dv])
        })
        .reduce(|| 0.0, f64::max);
    (err, picks.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_and_inf_outputs_are_infinite_errors() {
        let want = [0.5, -1.0, 2.0];
        assert_eq!(row_error(&want, &[0.5, -1.0, 2.0]), 0.0);
        assert_eq!(row_error(&want, &[0.25, -1.0, 2.5]), 0.5);
        // `fold(0.0, f64::max)` over the plain differences would say 0.5
        // here: f64::max drops NaN.
        assert_eq!(row_error(&want, &[0.25, f32::NAN, 2.0]), f64::INFINITY);
        assert_eq!(row_error(&want, &[f32::NAN; 3]), f64::INFINITY);
        assert_eq!(row_error(&want, &[0.5, f32::INFINITY, 2.0]), f64::INFINITY);
        assert_eq!(row_error(&want, &[0.5, -1.0, f32::NEG_INFINITY]), f64::INFINITY);
    }
}
