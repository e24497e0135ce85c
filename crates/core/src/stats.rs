//! Softmax saturation statistics: per query row, how concentrated the
//! attention distribution is, computed by the kernels in O(1) extra state
//! per row (no `N²` buffer).
//!
//! For row `i` with probabilities `p_j = exp(s_j − lse)` over its visible
//! keys (and `p_sink = exp(sink − lse)` when the call has a sink):
//! - `max_p`: the largest probability, sink included;
//! - `entropy`: `H = −Σ p log p` in nats, sink included; `exp(H)` is the
//!   effective support (1 for a single key, `n` for `n` equal keys).
//!
//! From the backward (`CheckedBackward::with_stats`), with `dS_ij` the
//! gradient of the loss with respect to the score `q_i·k_j·scale` (through
//! the softcap when there is one):
//! - `off_argmax` `[B, Hq, Nq]`: the share of row `i`'s score-gradient mass
//!   `Σ_j |dS_ij|` that reaches keys other than its argmax (the first key
//!   of largest probability); 0 for a row that passes no gradient;
//! - `key_grad` `[B, Hkv, Nk]`: the mass `Σ |dS_ij|` key `j` receives,
//!   summed over every row of every query head of its group.
//!
//! A fully masked row without a sink has no distribution: both are 0. A
//! fully masked row with a sink puts all mass on the sink: `max_p = 1`,
//! `H = 0`.
//!
//! Kernels keep, per row and in any base, the running max `m`, the sum
//! `l = Σ 2^(u_j − m)` and `e = Σ 2^(u_j − m)·(u_j − m)` (rescaled with `l`
//! when `m` grows, see [`rescale_mean`]); [`RowStatsAcc::finish`] turns them
//! into the two statistics. Keeping `u_j − m` (not `u_j`) keeps a peaked
//! row's small entropy accurate at any logit magnitude.

use crate::error::AttnError;
use crate::shape::AttnShape;

/// Where a call writes its statistics: `[B, Hq, Nq]` each, contiguous.
#[derive(Debug)]
pub struct StatsMut<'a> {
    /// Largest probability of each row.
    pub max_p: &'a mut [f32],
    /// Entropy of each row, in nats.
    pub entropy: &'a mut [f32],
}

impl StatsMut<'_> {
    /// Checks both buffers hold `B·Hq·Nq` values, naming the one that
    /// does not.
    pub fn check(&self, shape: &AttnShape) -> Result<(), AttnError> {
        for (tensor, len) in [("max_p", self.max_p.len()), ("entropy", self.entropy.len())] {
            if len != shape.lse_len() {
                return Err(AttnError::BufferLen { tensor, expected: shape.lse_len(), got: len });
            }
        }
        Ok(())
    }
}

/// Where a backward call writes its statistics (see the module docs).
#[derive(Debug)]
pub struct BackwardStatsMut<'a> {
    /// `[B, Hq, Nq]`: share of each row's score-gradient mass off its argmax.
    pub off_argmax: &'a mut [f32],
    /// `[B, Hkv, Nk]`: score-gradient mass each key receives.
    pub key_grad: &'a mut [f32],
}

impl BackwardStatsMut<'_> {
    /// Checks the buffers' lengths against `shape`, naming the one that is
    /// off.
    pub fn check(&self, shape: &AttnShape) -> Result<(), AttnError> {
        let keys = shape.batch() * shape.kv_heads() * shape.kv_len();
        for (tensor, len, want) in [
            ("off_argmax", self.off_argmax.len(), shape.lse_len()),
            ("key_grad", self.key_grad.len(), keys),
        ] {
            if len != want {
                return Err(AttnError::BufferLen { tensor, expected: want, got: len });
            }
        }
        Ok(())
    }
}

/// `e` after the running max grows by `delta ≥ 0` (`alpha = 2^(−delta)`):
/// every `u_j − m` shrinks by `delta`, so `e' = alpha·(e − delta·l)`. A row
/// that had no weight yet (`l = 0`) stays at 0.
#[inline]
pub fn rescale_mean(e: f32, l: f32, delta: f32, alpha: f32) -> f32 {
    if l == 0.0 { 0.0 } else { alpha * (e - delta * l) }
}

/// One finished row's accumulators, in base-2 units: `m2` the max score
/// (`u = s·log2 e`), `l = Σ 2^(u − m2)`, `e = Σ 2^(u − m2)·(u − m2)`, and
/// the sink's `sink2 = sink·log2 e`.
#[derive(Debug, Clone, Copy)]
pub struct RowStatsAcc {
    /// The row's max score, base-2 units (`−inf` when it saw no key).
    pub m2: f32,
    /// `Σ 2^(u − m2)` (0 when it saw no key).
    pub l: f32,
    /// `Σ 2^(u − m2)·(u − m2)`.
    pub e: f32,
    /// The sink logit, base-2 units.
    pub sink2: Option<f32>,
}

impl RowStatsAcc {
    /// The accumulators of a row whose keys were split into parts (the
    /// chunks of split-KV), from each part's `(m2, l, e)`, combined in
    /// the order given: relative to `M = max m2`, part `c` weighs
    /// `w_c = 2^(m2_c − M)`, so `l = Σ w_c·l_c` and
    /// `e = Σ w_c·(e_c + l_c·(m2_c − M))` (a part's deviations `u − m2_c`
    /// shift by `m2_c − M`, as in [`rescale_mean`]). A part with `l = 0`
    /// saw no key and drops out; a NaN `m2` (a faulty part) makes the
    /// result NaN.
    pub fn merge(
        parts: impl Iterator<Item = (f32, f32, f32)> + Clone,
        sink2: Option<f32>,
    ) -> RowStatsAcc {
        let mut big = f32::NEG_INFINITY;
        for (m2, l, _) in parts.clone() {
            if m2.is_nan() {
                return RowStatsAcc { m2, l: f32::NAN, e: f32::NAN, sink2 };
            }
            if l > 0.0 {
                big = big.max(m2);
            }
        }
        let (mut l, mut e) = (0f32, 0f32);
        if big > f32::NEG_INFINITY {
            for (m2, lc, ec) in parts.filter(|p| p.1 > 0.0) {
                let (delta, w) = (m2 - big, (m2 - big).exp2());
                l += w * lc;
                e += w * (ec + lc * delta);
            }
        }
        RowStatsAcc { m2: big, l, e, sink2 }
    }

    /// `(max_p, entropy in nats)` of the row (see the module docs); NaN
    /// when an accumulator is NaN (a row the kernel could not evaluate).
    pub fn finish(&self) -> (f32, f32) {
        if self.m2.is_nan() || self.l.is_nan() || self.e.is_nan() {
            return (f32::NAN, f32::NAN);
        }
        let (m2, l, e) = (self.m2 as f64, self.l as f64, self.e as f64);
        let keys = l > 0.0 && m2.is_finite();
        match (keys, self.sink2.map(f64::from)) {
            (false, None) => (0.0, 0.0),
            (false, Some(_)) => (1.0, 0.0),
            (true, None) => {
                // p_j = 2^(u_j − m2)/l: H = log2 l − e/l bits.
                ((1.0 / l) as f32, ((l.log2() - e / l) * std::f64::consts::LN_2) as f32)
            }
            (true, Some(s2)) => {
                // Relative to M = max(m2, sink2): the keys weigh
                // l·2^(m2 − M), the sink 2^(s2 − M).
                let big = m2.max(s2);
                let (wk, ws) = ((m2 - big).exp2(), (s2 - big).exp2());
                let total = l * wk + ws;
                // Σ w·(u − M) over keys and sink.
                let dev = wk * (e + l * (m2 - big)) + ws * (s2 - big);
                let max_p = wk.max(ws) / total;
                let h = total.log2() - dev / total;
                (max_p as f32, (h * std::f64::consts::LN_2) as f32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accumulators of a row of base-2 scores, built directly.
    fn acc(u: &[f64], sink2: Option<f32>) -> RowStatsAcc {
        let m = u.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let l: f64 = u.iter().map(|x| (x - m).exp2()).sum();
        let e: f64 = u.iter().map(|x| (x - m).exp2() * (x - m)).sum();
        RowStatsAcc { m2: m as f32, l: l as f32, e: e as f32, sink2 }
    }

    #[test]
    fn uniform_single_and_empty_rows() {
        let (p, h) = acc(&[3.0; 8], None).finish();
        assert!((p - 0.125).abs() < 1e-7 && (h - 8f32.ln()).abs() < 1e-6);
        assert_eq!(acc(&[5.0], None).finish(), (1.0, 0.0));
        assert_eq!(acc(&[], None).finish(), (0.0, 0.0));
        assert_eq!(acc(&[], Some(2.0)).finish(), (1.0, 0.0));
    }

    #[test]
    fn a_sink_is_one_more_outcome() {
        // Two equal keys and a sink equal to them: three equal outcomes.
        let (p, h) = acc(&[1.0, 1.0], Some(1.0)).finish();
        assert!((p - 1.0 / 3.0).abs() < 1e-6 && (h - 3f32.ln()).abs() < 1e-6);
        // A huge sink takes all the mass.
        let (p, h) = acc(&[1.0, 1.0], Some(1e4)).finish();
        assert_eq!((p, h), (1.0, 0.0));
    }

    #[test]
    fn merging_parts_equals_the_whole_row() {
        let u = [0.5f64, -3.0, 2.25, 7.0, 6.5, -40.0, 1.0];
        let whole = acc(&u, Some(1.5));
        // split in three parts, one of them empty
        let parts = [acc(&u[..3], None), acc(&[], None), acc(&u[3..], None)];
        let merged = RowStatsAcc::merge(parts.iter().map(|p| (p.m2, p.l, p.e)), Some(1.5));
        assert_eq!(merged.m2, whole.m2);
        assert!((merged.l - whole.l).abs() < 1e-6 && (merged.e - whole.e).abs() < 1e-5);
        let ((p0, h0), (p1, h1)) = (merged.finish(), whole.finish());
        assert!((p0 - p1).abs() < 1e-7 && (h0 - h1).abs() < 1e-6);
        // nothing seen: a row with no distribution
        let none = RowStatsAcc::merge([(f32::NEG_INFINITY, 0.0, 0.0)].into_iter(), None);
        assert_eq!(none.finish(), (0.0, 0.0));
        // a faulty part: NaN, never a plausible value
        let bad = RowStatsAcc::merge([(1.0, 1.0, 0.0), (f32::NAN, 0.0, 0.0)].into_iter(), None);
        assert!(bad.finish().0.is_nan() && bad.finish().1.is_nan());
    }

    #[test]
    fn rescaling_keeps_the_mean_relative_to_the_new_max() {
        // Keys 0 and 2 seen in two steps: max 0, then 2.
        let (l0, e0) = (1.0f32, 0.0f32);
        let alpha = 2f32.powi(-2);
        let e1 = rescale_mean(e0, l0, 2.0, alpha) + 0.0; // new key at the max adds 0
        let l1 = l0 * alpha + 1.0;
        let direct = acc(&[0.0, 2.0], None);
        assert!((e1 - direct.e).abs() < 1e-7 && (l1 - direct.l).abs() < 1e-7);
        assert_eq!(rescale_mean(0.0, 0.0, f32::INFINITY, 0.0), 0.0);
    }
}
