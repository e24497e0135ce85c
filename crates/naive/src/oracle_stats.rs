//! The saturation statistics (`attn_core::stats`) in f64, from the
//! oracle's rows: the ground truth of the kernels' statistics.
//!
//! For each row the oracle's [`reference_row`] leaves the modified scores
//! `s_j` of the visible keys in its score buffer and returns the LSE (sink
//! included), so `p_j = exp(s_j − lse)`, `max_p = max(p_j, p_sink)` and
//! `H = Σ_j p_j·(lse − s_j) + p_sink·(lse − sink)`.

use attn_core::{AttnInputs, AttnParams, Element, ScoreMods};
use rayon::prelude::*;

use crate::oracle::{RowAt, reference_row};

/// Per-row statistics in f64, `[B, Hq, Nq]` each.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceStats {
    /// Largest probability of each row (sink included).
    pub max_p: Vec<f64>,
    /// Entropy in nats (sink included).
    pub entropy: Vec<f64>,
}

/// The statistics of every row of a call (rows in parallel on the current
/// rayon pool).
pub fn reference_stats<T: Element>(
    inputs: &AttnInputs<'_, T>,
    params: &AttnParams,
) -> ReferenceStats {
    let s = *inputs.shape();
    let (nq, nk) = (s.q_len(), s.kv_len());
    let mods = ScoreMods::new(params, s.q_heads());
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (s.head_dim() as f64).sqrt());
    let rows: Vec<(f64, f64)> = (0..s.lse_len())
        .into_par_iter()
        .map(|idx| {
            let (bh, i) = (idx / nq, idx % nq);
            let (b, h) = (bh / s.q_heads(), bh % s.q_heads());
            let g = s.kv_head_of(h);
            let keys = params.key_range(i, nq, nk);
            let (mut scores, mut out) = (Vec::new(), vec![0f64; s.v_dim()]);
            let (k, v) = (&inputs.k, &inputs.v);
            let lse = reference_row(
                inputs.q.row(b, h, i),
                keys,
                scale,
                RowAt::in_call(&mods, params, (b, h, i), nq, nk),
                |j| k.row(b, g, j),
                |j| v.row(b, g, j),
                &mut scores,
                &mut out,
            );
            row_stats(&scores, lse, mods.sink(h).map(f64::from))
        })
        .collect();
    ReferenceStats {
        max_p: rows.iter().map(|r| r.0).collect(),
        entropy: rows.iter().map(|r| r.1).collect(),
    }
}

/// `(max_p, entropy)` of one row from its scores and LSE (see the module
/// docs); a row with no distribution (no key, no sink) gives `(0, 0)`.
pub fn row_stats(scores: &[f64], lse: f64, sink: Option<f64>) -> (f64, f64) {
    if lse == f64::NEG_INFINITY {
        return (0.0, 0.0);
    }
    let mut terms: Vec<f64> = scores.iter().copied().filter(|x| *x > f64::NEG_INFINITY).collect();
    terms.extend(sink);
    let (mut max_p, mut h) = (0f64, 0f64);
    for s in terms {
        let p = (s - lse).exp();
        max_p = max_p.max(p);
        h += p * (lse - s);
    }
    (max_p, h)
}

/// `(max_p, entropy)` of a row from its modified scores alone (as
/// [`reference_row`] leaves them; `−inf` for keys that drop out) and its
/// sink, the LSE taken in f64 from the same scores, so the statistics stay
/// exact at any logit magnitude: what the kernels write for a row they
/// recompute exactly (`crate::exact`). A NaN or `+inf` score (a non-finite
/// input, `check_finite` off) gives NaN for both.
pub fn scores_stats(scores: &[f64], sink: Option<f64>) -> (f64, f64) {
    if scores.iter().any(|s| s.is_nan()) {
        return (f64::NAN, f64::NAN);
    }
    let m = scores.iter().copied().fold(sink.unwrap_or(f64::NEG_INFINITY), f64::max);
    if m == f64::NEG_INFINITY {
        return row_stats(&[], m, sink);
    }
    // Relative to the max, not to the LSE: `s − m` keeps its digits where
    // `s − lse` would lose them to `lse`'s rounding.
    let terms = || scores.iter().chain(sink.as_ref()).filter(|s| **s != f64::NEG_INFINITY);
    let sum: f64 = terms().map(|s| (s - m).exp()).sum();
    let (mut max_p, mut dev) = (0f64, 0f64);
    for s in terms() {
        let p = (s - m).exp() / sum;
        max_p = max_p.max(p);
        dev += p * (s - m);
    }
    let h = sum.ln() - dev;
    if max_p.is_finite() && h.is_finite() && !sum.is_nan() {
        (max_p, h)
    } else {
        (f64::NAN, f64::NAN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_stats_at_any_magnitude() {
        let ninf = f64::NEG_INFINITY;
        // two equal keys and a masked one, shifted far beyond f32
        for shift in [0.0, 1e40, -1e300] {
            let (p, h) = scores_stats(&[shift + 1.0, ninf, shift + 1.0], None);
            assert!((p - 0.5).abs() < 1e-12 && (h - 2f64.ln()).abs() < 1e-12, "{shift}");
        }
        assert_eq!(scores_stats(&[ninf], None), (0.0, 0.0));
        assert_eq!(scores_stats(&[], Some(3.0)), (1.0, 0.0));
        for nan in [&[0.0, f64::NAN][..], &[f64::NAN], &[f64::INFINITY, 1.0]] {
            let (p, h) = scores_stats(nan, Some(0.5));
            assert!(p.is_nan() && h.is_nan(), "{nan:?}");
        }
    }
}
