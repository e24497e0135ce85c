//! Storage element types. Kernels accumulate in f32 (f64 in the oracle)
//! whatever the storage type.

use half::{bf16, f16};

/// A storage type for Q, K and V: f32, f16 or bf16.
pub trait Element: Copy + Send + Sync + Default + PartialEq + std::fmt::Debug + 'static {
    /// Name as used on the command line and in result rows.
    const NAME: &'static str;
    /// Widen to f32 (exact for all three types).
    fn to_f32(self) -> f32;
    /// Round from f32 to this type (round to nearest even).
    fn from_f32(x: f32) -> Self;
    /// Widen a run of values into `dst` (vectorized for the half types).
    fn widen_slice(src: &[Self], dst: &mut [f32]);
    /// The slice itself when the storage type is f32 (no conversion needed).
    fn as_f32_slice(s: &[Self]) -> Option<&[f32]>;
    /// The slice itself when the storage type is f16 (kernels widen it
    /// with the hardware conversion).
    fn as_f16_slice(_: &[Self]) -> Option<&[f16]> {
        None
    }
    /// The slice itself when the storage type is bf16.
    fn as_bf16_slice(_: &[Self]) -> Option<&[bf16]> {
        None
    }
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline]
    fn as_f32_slice(s: &[Self]) -> Option<&[f32]> {
        Some(s)
    }
}

impl Element for f16 {
    const NAME: &'static str = "f16";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        src.convert_to_f32_slice(dst);
    }
    #[inline]
    fn as_f32_slice(_: &[Self]) -> Option<&[f32]> {
        None
    }
    #[inline]
    fn as_f16_slice(s: &[Self]) -> Option<&[f16]> {
        Some(s)
    }
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    #[inline]
    fn widen_slice(src: &[Self], dst: &mut [f32]) {
        // bf16 -> f32 is a 16-bit shift; this loop vectorizes.
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
    #[inline]
    fn as_f32_slice(_: &[Self]) -> Option<&[f32]> {
        None
    }
    #[inline]
    fn as_bf16_slice(s: &[Self]) -> Option<&[bf16]> {
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widen_matches_scalar() {
        let xs: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.37).collect();
        let h: Vec<f16> = xs.iter().map(|&x| f16::from_f32(x)).collect();
        let b: Vec<bf16> = xs.iter().map(|&x| bf16::from_f32(x)).collect();
        let mut out = vec![0.0; xs.len()];
        f16::widen_slice(&h, &mut out);
        assert!(out.iter().zip(&h).all(|(o, s)| *o == s.to_f32()));
        bf16::widen_slice(&b, &mut out);
        assert!(out.iter().zip(&b).all(|(o, s)| *o == s.to_f32()));
    }
}
