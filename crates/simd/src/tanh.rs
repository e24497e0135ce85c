//! `tanh` over 16 lanes, for the logit softcap `c·tanh(s/c)`.

use wide::f32x16;

/// `tanh(x)` for every lane.
///
/// Interim definition: lane by lane with `f32::tanh` (correct, slow); the
/// vectorized version replaces this body.
#[inline(always)]
pub fn tanh(x: f32x16) -> f32x16 {
    f32x16::new(x.to_array().map(f32::tanh))
}
