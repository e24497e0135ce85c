//! Sixteen stored values widened to one `f32x16`: f16 with the hardware
//! conversion, bf16 with a shift, int8 times a scale (q8_0).
//!
//! On an AVX-512 build each is one or two instructions (`vcvtph2ps`;
//! `vpmovzxwd` + `vpslld`; `vpmovsxbd` + `vcvtdq2ps` + `vmulps`). Other
//! builds take the portable fallback below each, which gives the same
//! values (every conversion here is exact, and the q8_0 product is one
//! rounding either way); CI's baseline-ISA pass tests it.

use half::{bf16, f16};
use wide::f32x16;

#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
mod avx512 {
    use crate::m512::f32x16 as vec;
    use std::arch::x86_64::*;
    use wide::f32x16;

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn f16(s: &[u16; 16]) -> f32x16 {
        // SAFETY: reads exactly the 32 bytes of `s` (unaligned load); the
        // features are enabled at compile time (cfg above).
        vec(unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().cast())) })
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn bf16(s: &[u16; 16]) -> f32x16 {
        // SAFETY: as above, 32 bytes of `s`.
        let w = unsafe { _mm512_cvtepu16_epi32(_mm256_loadu_si256(s.as_ptr().cast())) };
        vec(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(w)))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn i8_scaled(s: &[i8; 16], scale: f32) -> f32x16 {
        // SAFETY: as above, the 16 bytes of `s`.
        let w = unsafe { _mm512_cvtepi8_epi32(_mm_loadu_si128(s.as_ptr().cast())) };
        vec(_mm512_mul_ps(_mm512_cvtepi32_ps(w), _mm512_set1_ps(scale)))
    }
}

/// 16 f16 values as f32 (exact).
#[inline(always)]
pub fn f16x16(s: &[f16; 16]) -> f32x16 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        // SAFETY: this cfg means the build targets AVX-512F, so the CPU
        // running it has the feature `avx512::*` is compiled for.
        unsafe { avx512::f16(&s.map(f16::to_bits)) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    {
        f32x16::new(s.map(f16::to_f32))
    }
}

/// 16 bf16 values as f32 (exact: the bits shifted into the high half).
#[inline(always)]
pub fn bf16x16(s: &[bf16; 16]) -> f32x16 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        // SAFETY: this cfg means the build targets AVX-512F, so the CPU
        // running it has the feature `avx512::*` is compiled for.
        unsafe { avx512::bf16(&s.map(bf16::to_bits)) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    {
        f32x16::new(s.map(bf16::to_f32))
    }
}

/// 16 int8 values times `scale` (one f32 rounding per lane: the q8_0
/// dequantisation `q·d`).
#[inline(always)]
pub fn i8x16_scaled(s: &[i8; 16], scale: f32) -> f32x16 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        // SAFETY: this cfg means the build targets AVX-512F, so the CPU
        // running it has the feature `avx512::*` is compiled for.
        unsafe { avx512::i8_scaled(s, scale) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    {
        f32x16::new(s.map(|x| x as f32 * scale))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_match_scalar() {
        let xs: [f32; 16] = std::array::from_fn(|i| (i as f32 - 7.5) * 3.37e-3 * (i * i) as f32);
        let h = xs.map(f16::from_f32);
        assert_eq!(f16x16(&h).to_array(), h.map(f16::to_f32));
        let b = xs.map(bf16::from_f32);
        assert_eq!(bf16x16(&b).to_array(), b.map(bf16::to_f32));
        let specials = [f16::INFINITY, f16::NEG_INFINITY, f16::MIN_POSITIVE_SUBNORMAL, f16::MAX];
        let mut h2 = h;
        h2[..4].copy_from_slice(&specials);
        assert_eq!(&f16x16(&h2).to_array()[..4], &specials.map(f16::to_f32));
        let q: [i8; 16] = std::array::from_fn(|i| (i as i32 * 17 - 127) as i8);
        let s = 0.0123f32;
        assert_eq!(i8x16_scaled(&q, s).to_array(), q.map(|x| x as f32 * s));
    }
}
