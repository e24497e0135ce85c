//! Score modifiers (bias, ALiBi, softcap, sinks) in the tiled kernels.
//!
//! The kernels work on scores in the log2 domain, `u = s·log2 e` (Q is
//! packed pre-scaled by `scale·log2 e`), so every modifier is applied in
//! those units: the bias and the ALiBi penalty are multiplied by `log2 e`,
//! and the softcap `c·tanh(s/c)` becomes `c₂·tanh(u/c₂)` with
//! `c₂ = c·log2 e`. Sinks never touch scores: a finished row is rescaled
//! ([`attn_core::modifiers::with_sink`]). The loops that apply these live
//! with their kernels (forward: key-major `Sᵀ`; backward: query-major
//! `S`); this file holds the per-call constants and the lane arithmetic
//! they share.

use attn_core::{AttnParams, ScoreMods};
use attn_simd::{LOG2_E, tanh};
use wide::f32x16;

/// One call's modifiers, resolved and converted to the log2 domain.
#[derive(Debug, Clone, Default)]
pub(crate) struct Mods2<'a> {
    /// The modifiers as given (bias rows, sinks).
    pub mods: ScoreMods<'a>,
    /// `c·log2 e` for a softcap `c`.
    pub cap2: Option<f32>,
    /// `slope_h·log2 e` per query head, for ALiBi.
    pub slope2: Option<Vec<f32>>,
}

impl<'a> Mods2<'a> {
    /// The modifiers of `params` for `q_heads` query heads.
    pub fn new(params: &AttnParams<'a>, q_heads: usize) -> Mods2<'a> {
        let mods = ScoreMods::new(params, q_heads);
        Mods2 {
            cap2: mods.softcap.map(|c| c * LOG2_E),
            slope2: mods.slopes.as_ref().map(|s| s.iter().map(|x| x * LOG2_E).collect()),
            mods,
        }
    }

    /// Whether any modifier changes scores (bias, ALiBi or softcap).
    #[inline]
    pub fn touches_scores(&self) -> bool {
        self.mods.touches_scores()
    }

    /// The factor the tiled forward folds into packed Q when it applies
    /// the softcap in registers (no bias): `1/c₂`, so that a block's scores
    /// come out as `u/c₂` and the cap is `c₂·tanh` of them; 1 otherwise.
    #[inline]
    pub fn register_prescale(&self) -> f32 {
        match (self.cap2, &self.mods.bias) {
            (Some(c2), None) => 1.0 / c2,
            _ => 1.0,
        }
    }
}

/// `|base + t·step|` for lanes `t = 0..16`: the distances from the
/// diagonal of 16 consecutive queries (`step = 1`, one key) or keys
/// (`step = −1`, one query), exact while below 2²⁴.
#[inline(always)]
pub(crate) fn distances(base: i64, step: f32) -> f32x16 {
    let iota = f32x16::new(std::array::from_fn(|l| l as f32));
    iota.mul_add(f32x16::splat(step), f32x16::splat(base as f32)).abs()
}

/// The softcap in the log2 domain: `c₂·tanh(u/c₂)`, with `−inf` kept (a
/// masked key stays masked).
#[inline(always)]
pub(crate) fn cap(u: f32x16, cap2: f32) -> f32x16 {
    let t = tanh(u * f32x16::splat(1.0 / cap2)) * f32x16::splat(cap2);
    u.simd_eq(f32x16::splat(f32::NEG_INFINITY)).select(u, t)
}

/// The softcap's derivative `d(c·tanh(s/c))/ds = 1 − tanh²` from the
/// capped score `u'` itself: `1 − (u'/c₂)²`.
#[inline(always)]
pub(crate) fn cap_slope(capped: f32x16, cap2: f32) -> f32x16 {
    let t = capped * f32x16::splat(1.0 / cap2);
    t.mul_add(-t, f32x16::splat(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_count_from_the_diagonal() {
        assert_eq!(distances(-3, 1.0).to_array()[..5], [3.0, 2.0, 1.0, 0.0, 1.0]);
        assert_eq!(distances(2, -1.0).to_array()[..4], [2.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn cap_matches_the_definition_and_keeps_minus_infinity() {
        let c = 5.0f32;
        let s = [-1e30f32, -7.0, -0.5, 0.0, 1e-3, 3.0, 40.0, f32::NEG_INFINITY];
        let mut u = [0f32; 16];
        for (x, s) in u.iter_mut().zip(s) {
            *x = s * LOG2_E;
        }
        let got = cap(f32x16::new(u), c * LOG2_E).to_array();
        for (k, s) in s.iter().enumerate() {
            let want = attn_core::modifiers::softcap_f64(*s as f64, c as f64) * LOG2_E as f64;
            if want.is_infinite() {
                assert_eq!(got[k] as f64, want);
            } else {
                assert!((got[k] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{s}");
            }
        }
        let slope = cap_slope(f32x16::splat(0.0), c * LOG2_E).to_array()[0];
        assert_eq!(slope, 1.0);
    }
}
