//! `tanh` over 16 lanes, for the logit softcap `c·tanh(s/c)`.
//!
//! A rational approximation `tanh(x) ≈ x·P(x²)/Q(x²)` on the clamped
//! argument `|x| ≤ 9`, `P` and `Q` of degree 4 in `x²` with `P(0) = Q(0) =
//! 1`. The coefficients are the relative-error minimax fit on `[0, 9]`
//! (Remez exchange in 40-digit `mpmath`: unknowns `p₁..p₄, q₁..q₄, E`,
//! each step solving `P(sᵢ) − fᵢQ(sᵢ) = (−1)ⁱ E fᵢ Q_prev(sᵢ)` with
//! `fᵢ = tanh(xᵢ)/xᵢ`, `sᵢ = xᵢ²`, then moving the 9 points to the
//! error's extrema on a 4000-point grid; it equioscillates with relative
//! error `2.1e-8`; rounded to `f32`). Every coefficient is positive, so
//! neither polynomial cancels. Why this shape:
//!
//! - Odd numerator, even denominator: `tanh(−x) = −tanh(x)` bit for bit.
//! - `P(0) = Q(0) = 1` and the numerator evaluated as `x + x·s·P₁(s)`:
//!   for tiny `|x|` (`x² ≲ 1e-8`, subnormals, `±0`) the result is `x`
//!   itself, which is `tanh(x)` rounded to `f32`; no cancellation.
//! - `|x|` is clamped to 9, where `tanh` is `1 − 3.05e-8` (its f32
//!   rounding is `1 − 2⁻²⁴`); the fit's error there is positive and the
//!   f32 evaluation with FMA gives exactly 1, so with FMA lanes with
//!   `|x| ≥ 9` and `±inf` give exactly `±1`; where `mul_add` rounds twice
//!   (the baseline x86-64 build) they give `±(1 − 2⁻²⁴)`. Rounding in the evaluation can lift the quotient an
//!   ulp above 1 nearer the clamp (seen at `x ≈ 8.26`), so the result is
//!   clamped to `[−1, 1]` as well.
//! - Error: the fit's `2.1e-8` becomes `4.3e-8` with `f32` coefficients;
//!   the rest is rounding in the ~8 operations of each lane's chain.
//!   Measured over every positive `f32`: at most `3.27e-7` relative (at
//!   `x ≈ 5.24`, about 5 ulp of a result just below 1).
//! - 15 vector operations, no branch (`vminps`/`vmaxps` ×4, `vmulps` ×2,
//!   `vfmadd` ×8, `vdivps` ×1 in the release assembly): the input clamp,
//!   the square, 5 for the numerator, 4 for the denominator, the
//!   division and the output clamp. The division is not the bottleneck
//!   (replacing it by a multiply saves ~12% in the timing test below).

use wide::f32x16;

/// The argument clamp: `tanh(9) = 1 − 3.05e-8`; the fit gives 1 there (with FMA).
const CLAMP: f32 = 9.0;
/// `P(s) = 1 + s·P₁(s)`, `P₁(s) = P1[0] + P1[1]·s + P1[2]·s² + P1[3]·s³`.
const P1: [f32; 4] = [0.133_839_77, 0.003_498_992, 2.066_119e-5, 1.341_971_6e-8];
/// `Q(s) = 1 + s·Q₁(s)`, likewise.
const Q1: [f32; 4] = [0.467_172_98, 0.025_890_19, 3.291_031_5e-4, 7.804_687e-7];

/// `tanh(x)` for every lane: relative error below `3.5e-7` against the
/// exact value over all finite `f32` (the tests sweep the bit patterns),
/// `|result| ≤ 1`, odd (`tanh(−x) = −tanh(x)` bit for bit), `x` itself
/// for tiny `|x|` and `±0` (`−0` stays `−0`), exactly `±1` for `|x| ≥ 9`
/// and `±inf`. NaN in gives NaN out. Branch-free; 15 vector operations
/// including one division.
#[inline(always)]
pub fn tanh(x: f32x16) -> f32x16 {
    // `fast_clamp` is max(−9, min(9, x)) with `x` second: a NaN lane
    // passes through both (x86 min/max return the second operand then).
    let x = x.fast_clamp(f32x16::splat(-CLAMP), f32x16::splat(CLAMP));
    let s = x * x;
    let mut p = f32x16::splat(P1[3]);
    p = p.mul_add(s, f32x16::splat(P1[2]));
    p = p.mul_add(s, f32x16::splat(P1[1]));
    p = p.mul_add(s, f32x16::splat(P1[0]));
    let num = (x * s).mul_add(p, x);
    let mut q = f32x16::splat(Q1[3]);
    q = q.mul_add(s, f32x16::splat(Q1[2]));
    q = q.mul_add(s, f32x16::splat(Q1[1]));
    q = q.mul_add(s, f32x16::splat(Q1[0]));
    let den = q.mul_add(s, f32x16::splat(1.0));
    // Rounding can lift the quotient an ulp above 1 near saturation.
    let one = f32x16::splat(1.0);
    (num / den).fast_clamp(-one, one)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative error of `tanh(xs)` lane by lane against `f64::tanh`.
    fn rel_errors(xs: [f32; 16]) -> [f64; 16] {
        let got = tanh(f32x16::new(xs)).to_array();
        std::array::from_fn(|i| {
            let want = (xs[i] as f64).tanh();
            if want == 0.0 {
                assert_eq!(got[i].to_bits(), xs[i].to_bits(), "tanh({:e})", xs[i]);
                0.0
            } else {
                ((got[i] as f64 - want) / want).abs()
            }
        })
    }

    /// Worst relative error over every `stride`-th positive finite bit
    /// pattern from `from`, with its argument; checks `|tanh| ≤ 1` and
    /// odd symmetry on the way.
    fn sweep(from: u32, stride: u32) -> (f64, f32) {
        let mut worst = (0.0, 0.0);
        let mut bits = from;
        let end = f32::INFINITY.to_bits();
        while bits < end {
            let xs: [f32; 16] = std::array::from_fn(|i| {
                f32::from_bits(bits.saturating_add(i as u32 * stride).min(end - 1))
            });
            let pos = tanh(f32x16::new(xs)).to_array();
            let neg = tanh(-f32x16::new(xs)).to_array();
            for i in 0..16 {
                assert!(pos[i] <= 1.0, "tanh({:e}) = {:e}", xs[i], pos[i]);
                assert_eq!((-neg[i]).to_bits(), pos[i].to_bits(), "odd at {:e}", xs[i]);
            }
            for (e, x) in rel_errors(xs).into_iter().zip(xs) {
                if e > worst.0 {
                    worst = (e, x);
                }
            }
            bits = bits.saturating_add(16 * stride);
        }
        worst
    }

    #[test]
    fn matches_f64_over_a_sweep_of_all_finite_f32() {
        // Every 97th bit pattern: ~2.2e7 arguments, all binades from the
        // smallest subnormal to f32::MAX.
        let (worst, at) = sweep(1, 97);
        assert!(worst < 3.5e-7, "max rel err {worst:e} at {at:e}");
    }

    #[test]
    fn targeted_points() {
        let pts = [
            1e-30,
            1e-20,
            1e-8,
            1e-4,
            0.01,
            0.1,
            0.5,
            0.549_306_1,
            1.0,
            2.0,
            3.0,
            4.5,
            6.0,
            8.5,
            8.99,
            8.999_999,
        ];
        let worst = rel_errors(pts).into_iter().fold(0.0, f64::max);
        assert!(worst < 3.5e-7, "max rel err {worst:e}");
        // Tiny arguments come back unchanged (tanh(x) rounds to x), so
        // `1e6·tanh(s/1e6)` is `s` to an ulp.
        let tiny = [
            1e-30,
            -1e-30,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::from_bits(1),
            -f32::from_bits(1),
            f32::from_bits(0x007f_ffff),
            1e-4,
            -3e-5,
            0.0,
            -0.0,
            1e-38,
            2e-20,
            -7e-12,
            1e-10,
            f32::MIN_POSITIVE * 3.0,
        ];
        let got = tanh(f32x16::new(tiny)).to_array();
        for (g, x) in got.into_iter().zip(tiny) {
            assert_eq!(g.to_bits(), x.to_bits(), "tanh({x:e}) = {g:e}");
        }
    }

    /// Beyond 9 the argument is clamped, so every |x| ≥ 9 gives the value
    /// at 9: 1 with FMA; one ulp below 1 (0.99999994, which is tanh(9)
    /// correctly rounded) when `mul_add` is two roundings (the baseline
    /// x86-64 build). Both are within the stated error of ±1.
    #[test]
    fn saturates_to_one_and_keeps_nan() {
        let big = [
            9.0,
            9.001,
            9.5,
            10.0,
            20.0,
            88.0,
            1e10,
            f32::MAX,
            f32::INFINITY,
            -9.0,
            -12.0,
            -1e30,
            -f32::MAX,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        let got = tanh(f32x16::new(big)).to_array();
        let below_one = 1.0 - f32::EPSILON / 2.0;
        for (g, x) in got[..14].iter().zip(big) {
            let m = g * x.signum();
            assert!(m == 1.0 || m == below_one, "tanh({x:e}) = {g}");
        }
        assert!(got[14].is_nan() && got[15].is_nan());
    }

    #[test]
    fn close_to_saturation_is_below_one() {
        // Every f32 in [8, 9]: none rounds above 1, and the error holds.
        let (from, to) = (8.0f32.to_bits(), 9.0f32.to_bits());
        let mut worst = 0.0f64;
        for start in (from..=to).step_by(16) {
            let xs: [f32; 16] = std::array::from_fn(|i| f32::from_bits((start + i as u32).min(to)));
            let got = tanh(f32x16::new(xs)).to_array();
            assert!(got.iter().all(|&t| t <= 1.0));
            worst = rel_errors(xs).into_iter().fold(worst, f64::max);
        }
        assert!(worst < 3.5e-7, "max rel err {worst:e}");
    }

    /// Every positive finite f32 (2³¹ arguments; ~seconds in release):
    /// `cargo test --release -p attn-simd tanh::tests::exhaustive -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn exhaustive() {
        let (worst, at) = sweep(0, 1);
        println!("max rel err {worst:e} at {at:e}");
        assert!(worst < 3.5e-7);
    }

    /// Throughput in ns per 16 lanes, next to `exp2` and the lane-by-lane
    /// `f32::tanh` (L1-resident inputs, independent vectors, results
    /// stored):
    /// `cargo test --release -p attn-simd tanh::tests::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        use std::hint::black_box;
        use std::time::Instant;
        fn time(name: &str, reps: usize, f: impl Fn(f32x16) -> f32x16) {
            let xs: Vec<f32x16> = (0..256)
                .map(|k| {
                    f32x16::new(std::array::from_fn(|i| ((k * 16 + i) as f32 * 0.37).sin() * 6.0))
                })
                .collect();
            let mut out = vec![f32x16::ZERO; xs.len()];
            let mut best = f64::INFINITY;
            for _ in 0..7 {
                let t = Instant::now();
                for _ in 0..reps {
                    for (o, &x) in out.iter_mut().zip(black_box(&xs)) {
                        *o = f(x);
                    }
                    black_box(&mut out);
                }
                best = best.min(t.elapsed().as_secs_f64() * 1e9 / (reps * xs.len()) as f64);
            }
            println!("{name:>16}: {best:.3} ns / 16 lanes");
        }
        time("copy", 4000, |x| x);
        time("tanh", 4000, tanh);
        time("exp2", 4000, crate::exp2);
        time("wide tanh", 1000, |x| x.tanh());
        time("f32::tanh x16", 100, |x| f32x16::new(x.to_array().map(f32::tanh)));
    }
}
