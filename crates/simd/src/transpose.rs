//! Sixteen horizontal sums at once: the sums of 16 vectors as the lanes
//! of one vector.
//!
//! A dot product of a query row with a key row ends in a horizontal sum
//! of 16 lanes; done one vector at a time that costs 4 shuffles and 4
//! adds each. Summing 16 vectors together as a tree — halves of pairs,
//! then quarters, then within 128-bit lanes — costs 15 adds and 30
//! shuffles for all 16, about 3 instructions a sum instead of 8.

use wide::f32x16;

/// `out[4·j + e] = Σ lanes of v[4·e + j]` (a 4×4 transpose of the sums:
/// with `v[4·key + row]`, the lanes come out as `[row][key]`).
#[inline(always)]
pub fn sums16(v: &[f32x16; 16]) -> f32x16 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        // SAFETY: the build targets AVX-512F (this cfg), so the CPU
        // running it has the feature the function is compiled for.
        unsafe { avx512::sums16(v) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    {
        f32x16::new(std::array::from_fn(|i| v[4 * (i % 4) + i / 4].reduce_add()))
    }
}

/// The 4×4 transpose of 128-bit quarters: quarter `j` of `out[i]` is
/// quarter `i` of `v[j]`. After [`sums16`] of four key quads
/// (`v[kq]` lanes `[row][key]`), `out[row]` holds that row's 16 keys.
#[inline(always)]
pub fn transpose_quarters(v: [f32x16; 4]) -> [f32x16; 4] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        // SAFETY: the build targets AVX-512F (this cfg).
        unsafe { avx512::transpose_quarters(v) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    {
        let a = v.map(|x| x.to_array());
        std::array::from_fn(|i| f32x16::new(std::array::from_fn(|l| a[l / 4][4 * i + l % 4])))
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
mod avx512 {
    use crate::m512::{f32x16 as v, m512 as m};
    use std::arch::x86_64::*;
    use wide::f32x16;

    /// Two sources' 16 lanes folded to 8 each: `[a: 8 | b: 8]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fold_halves(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b))
    }

    /// Two `[x: 8 | y: 8]` vectors folded to 4 lanes a source:
    /// `[x0: 4 | y0: 4 | x1: 4 | y1: 4]` (sources in the order a.x, a.y,
    /// b.x, b.y).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn fold_quarters(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn sums16(x: &[f32x16; 16]) -> f32x16 {
        let x = x.map(m);
        // 16 → 8 vectors: [v(2i): 8 | v(2i+1): 8]
        let h: [__m512; 8] = std::array::from_fn(|i| fold_halves(x[2 * i], x[2 * i + 1]));
        // 8 → 4: q[k] holds sources 4k..4k+4, 4 lanes each, in 128-bit lane j = source 4k+j
        let q: [__m512; 4] = std::array::from_fn(|k| fold_quarters(h[2 * k], h[2 * k + 1]));
        // Within each 128-bit lane j: [q0 q1 q2 q3][j] → its 4 sums.
        let lo01 = _mm512_unpacklo_ps(q[0], q[1]); // q0[0] q1[0] q0[1] q1[1]
        let hi01 = _mm512_unpackhi_ps(q[0], q[1]); // q0[2] q1[2] q0[3] q1[3]
        let lo23 = _mm512_unpacklo_ps(q[2], q[3]);
        let hi23 = _mm512_unpackhi_ps(q[2], q[3]);
        let s01 = _mm512_add_ps(lo01, hi01); // q0[0+2] q1[0+2] q0[1+3] q1[1+3]
        let s23 = _mm512_add_ps(lo23, hi23);
        let a = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(s01), _mm512_castps_pd(s23)));
        let b = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(s01), _mm512_castps_pd(s23)));
        // lane (j, e) = source 4e + j
        v(_mm512_add_ps(a, b))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn transpose_quarters(x: [f32x16; 4]) -> [f32x16; 4] {
        let x = x.map(m);
        let t0 = _mm512_shuffle_f32x4::<0x44>(x[0], x[1]); // x0.0 x0.1 x1.0 x1.1
        let t1 = _mm512_shuffle_f32x4::<0xEE>(x[0], x[1]); // x0.2 x0.3 x1.2 x1.3
        let t2 = _mm512_shuffle_f32x4::<0x44>(x[2], x[3]);
        let t3 = _mm512_shuffle_f32x4::<0xEE>(x[2], x[3]);
        [
            v(_mm512_shuffle_f32x4::<0x88>(t0, t2)), // x0.0 x1.0 x2.0 x3.0
            v(_mm512_shuffle_f32x4::<0xDD>(t0, t2)),
            v(_mm512_shuffle_f32x4::<0x88>(t1, t3)),
            v(_mm512_shuffle_f32x4::<0xDD>(t1, t3)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_quarters_swaps_quarter_indices() {
        let v: [f32x16; 4] =
            std::array::from_fn(|s| f32x16::new(std::array::from_fn(|l| (s * 16 + l) as f32)));
        let got = transpose_quarters(v).map(|x| x.to_array());
        for (i, out) in got.iter().enumerate() {
            for j in 0..4 {
                for e in 0..4 {
                    assert_eq!(out[4 * j + e], v[j].to_array()[4 * i + e]);
                }
            }
        }
    }

    #[test]
    fn sums16_is_the_transposed_horizontal_sums() {
        let v: [f32x16; 16] = std::array::from_fn(|s| {
            f32x16::new(std::array::from_fn(|l| ((s * 16 + l) % 13) as f32 + s as f32 * 0.25))
        });
        let got = sums16(&v).to_array();
        for j in 0..4 {
            for e in 0..4 {
                let want: f32 = v[4 * e + j].to_array().iter().sum();
                assert!(
                    (got[4 * j + e] - want).abs() < 1e-4,
                    "lane {j},{e}: {} vs {want}",
                    got[4 * j + e]
                );
            }
        }
    }
}
