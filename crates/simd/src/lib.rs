//! # attn-simd
//!
//! Vector math shared by the kernels (not a kernel itself): a fast `exp2`
//! and [`tanh`],
//! loads and horizontal reductions over `wide::f32x16`, [`sums16`] and
//! [`transpose_quarters`] (16 dot products' sums at once), [`convert`]
//! (f16, bf16 and q8_0's int8 widened 16 at a time), [`Ahead`] (prefetch
//! spread over a loop), [`cpu`]: what the running CPU is (caches, vector
//! datapath), and [`isa`]: which instruction set this build uses, next to
//! what the running CPU offers.
//!
//! With `-C target-cpu=native` on an AVX-512 machine an `f32x16` is one
//! zmm register; elsewhere `wide` emulates it with narrower vectors.
//! `wide` picks instructions at compile time, so [`isa::compiled`] is the
//! truth about the code that runs.

#![warn(missing_docs)]

mod ahead;
pub mod convert;
pub mod cpu;
pub mod isa;
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
mod m512;
mod tanh;
mod transpose;

pub use ahead::Ahead;
pub use tanh::tanh;
pub use transpose::{sums16, transpose_quarters};

pub use wide::f32x16;

/// Lanes of an [`f32x16`].
pub const LANES: usize = 16;

/// `log2(e)`: multiply a natural-log score by this to use [`exp2`].
pub const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// `2^x` for every lane: round-to-nearest range reduction with the
/// `1.5·2²³` magic number, a degree-6 polynomial on `[-0.5, 0.5]`
/// (Cephes `exp2f` coefficients), and the integer part added to the
/// exponent bits. Relative error ~1e-7 (tested against `f64::exp2`).
/// Lanes below -126 (including `-inf`) give exactly 0; NaN stays NaN
/// only through the polynomial (callers never pass NaN).
#[inline(always)]
pub fn exp2(x: f32x16) -> f32x16 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let xc = x.fast_max(f32x16::splat(-127.0)).fast_min(f32x16::splat(127.0));
    let t = xc + f32x16::splat(MAGIC);
    let n = t - f32x16::splat(MAGIC);
    let f = xc - n;
    let mut p = f32x16::splat(1.535_336_2e-4);
    p = p.mul_add(f, f32x16::splat(1.339_887_4e-3));
    p = p.mul_add(f, f32x16::splat(9.618_437e-3));
    p = p.mul_add(f, f32x16::splat(5.550_332_5e-2));
    p = p.mul_add(f, f32x16::splat(0.240_226_48));
    p = p.mul_add(f, f32x16::splat(std::f32::consts::LN_2));
    p = p.mul_add(f, f32x16::splat(1.0));
    // bits(t) = bits(MAGIC) + n; shifting left by 23 leaves n << 23.
    let scaled = f32x16::from_bits(p.to_bits() + (t.to_bits() << 23));
    x.simd_lt(f32x16::splat(-126.0)).select(f32x16::ZERO, scaled)
}

/// Loads 16 floats from the start of `s` (unaligned).
#[inline(always)]
pub fn load(s: &[f32]) -> f32x16 {
    let a: &[f32; LANES] = s[..LANES].try_into().unwrap();
    f32x16::new(*a)
}

/// Largest lane (no NaN handling: callers pass finite values or -inf).
#[inline(always)]
pub fn hmax(v: f32x16) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        // SAFETY: the build targets AVX-512F (this cfg), so the CPU has
        // the feature the reduction needs.
        unsafe { std::arch::x86_64::_mm512_reduce_max_ps(m512::m512(v)) }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    {
        v.to_array().into_iter().fold(f32::NEG_INFINITY, f32::max)
    }
}

/// Sum of the lanes.
#[inline(always)]
pub fn hsum(v: f32x16) -> f32 {
    v.reduce_add()
}

/// Whether every value is finite (no NaN, no ±inf), 16 lanes at a time:
/// `x·0` is 0 for a finite `x` and NaN otherwise, so one FMA per vector
/// and one sum tell.
#[inline]
pub fn all_finite(s: &[f32]) -> bool {
    let (chunks, tail) = s.as_chunks::<LANES>();
    let mut acc = f32x16::ZERO;
    for c in chunks {
        acc = f32x16::new(*c).mul_add(f32x16::ZERO, acc);
    }
    hsum(acc) + tail.iter().map(|x| x * 0.0).sum::<f32>() == 0.0
}

/// Max of a slice (−inf when empty), 16 lanes at a time.
pub fn slice_max(s: &[f32]) -> f32 {
    let (chunks, tail) = s.as_chunks::<LANES>();
    let mut m = f32x16::splat(f32::NEG_INFINITY);
    for c in chunks {
        m = m.fast_max(f32x16::new(*c));
    }
    tail.iter().copied().fold(hmax(m), f32::max)
}

/// `s[i] = 2^(s[i]·mul - sub)` in place; returns the sum of the results.
pub fn exp2_shift_sum(s: &mut [f32], mul: f32, sub: f32) -> f32 {
    let (chunks, tail) = s.as_chunks_mut::<LANES>();
    let (vm, vs) = (f32x16::splat(mul), f32x16::splat(sub));
    let mut acc = f32x16::ZERO;
    for c in chunks {
        let e = exp2(f32x16::new(*c).mul_sub(vm, vs));
        acc += e;
        *c = e.to_array();
    }
    let mut total = hsum(acc);
    for x in tail {
        let mut a = [f32::NEG_INFINITY; LANES];
        a[0] = *x * mul - sub;
        *x = exp2(f32x16::new(a)).to_array()[0];
        total += *x;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp2_matches_f64() {
        let mut worst = 0.0f64;
        let mut x = -125.0f32;
        while x < 126.5 - 16.0 * 0.0137 {
            let v = exp2(f32x16::new(std::array::from_fn(|i| x + i as f32 * 0.0137)));
            for (i, got) in v.to_array().into_iter().enumerate() {
                let xi = (x + i as f32 * 0.0137) as f64;
                let want = xi.exp2();
                let rel = ((got as f64 - want) / want).abs();
                worst = worst.max(rel);
            }
            x += 0.219;
        }
        assert!(worst < 3e-7, "max rel err {worst}");
    }

    #[test]
    fn exp2_underflow_is_exact_zero() {
        let v = exp2(f32x16::new([
            f32::NEG_INFINITY,
            -1e30,
            -126.5,
            -200.0,
            0.0,
            1.0,
            -1.0,
            f32::NEG_INFINITY,
            0.5,
            -0.5,
            3.0,
            -3.0,
            10.0,
            -10.0,
            0.25,
            -0.25,
        ]))
        .to_array();
        assert_eq!(&v[..4], &[0.0; 4]);
        assert_eq!(v[4], 1.0);
        assert_eq!(v[5], 2.0);
        assert_eq!(v[6], 0.5);
        assert_eq!(v[7], 0.0);
        assert!((v[12] - 1024.0).abs() < 1e-3);
    }

    #[test]
    fn all_finite_sees_every_kind_of_non_finite() {
        let mut s: Vec<f32> = (0..37).map(|i| i as f32 - 30.0).collect();
        assert!(all_finite(&s) && all_finite(&[]));
        for i in [3, 20, 36] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let keep = s[i];
                s[i] = bad;
                assert!(!all_finite(&s), "{i} {bad}");
                s[i] = keep;
            }
        }
        assert!(all_finite(&[f32::MAX, -f32::MAX, f32::MIN_POSITIVE]));
    }

    #[test]
    fn reductions() {
        let s: Vec<f32> = (0..37).map(|i| ((i * 7) % 23) as f32 - 5.0).collect();
        assert_eq!(slice_max(&s), 17.0);
        assert_eq!(slice_max(&[]), f32::NEG_INFINITY);
        let mut e = s.clone();
        let total = exp2_shift_sum(&mut e, 1.0, 17.0);
        let want: f64 = s.iter().map(|&x| ((x - 17.0) as f64).exp2()).sum();
        assert!((total as f64 - want).abs() < 1e-5 * want);
        for (a, b) in e.iter().zip(&s) {
            assert!(((*a as f64) - ((*b - 17.0) as f64).exp2()).abs() < 1e-6);
        }
    }
}
