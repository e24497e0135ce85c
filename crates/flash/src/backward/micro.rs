//! The one micro-kernel the backward adds to the forward's two
//! (`crate::micro`): `dQ += dS·K`, whose broadcast operand is read along
//! rows (`dS` is stored query-major) rather than packed.

use attn_simd::load;
use wide::f32x16;

use crate::tiles::{LANES, MR};

/// `C[r][t] += Σ_k a[r][k] · b[k·bstride + 16t ..]` for `k < a[r].len()`:
/// `MR` rows × `W` vectors, reduced over `k`.
/// `a`: `MR` rows of the broadcast operand, all the same length.
/// `b`: rows `bstride` floats apart, each at least `16·W` long.
/// The accumulators come in and go out by value: held in a local array,
/// they stay in registers (through a `&mut` the compiler spilled half of
/// them to the stack on every step).
#[inline(always)]
pub(crate) fn rows_micro<const W: usize>(
    a: [&[f32]; MR],
    b: &[f32],
    bstride: usize,
    mut c: [[f32x16; W]; MR],
) -> [[f32x16; W]; MR] {
    let n = a[0].len();
    let a = a.map(|r| &r[..n]);
    if n == 0 {
        return c;
    }
    let b = &b[..(n - 1) * bstride + W * LANES];
    for k in 0..n {
        let brow = &b[k * bstride..][..W * LANES];
        let bv: [f32x16; W] = std::array::from_fn(|t| load(&brow[t * LANES..]));
        for r in 0..MR {
            let ar = f32x16::splat(a[r][k]);
            for t in 0..W {
                c[r][t] = ar.mul_add(bv[t], c[r][t]);
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_micro_matches_scalar() {
        let (n, bstride) = (5, 40);
        let rows: Vec<Vec<f32>> =
            (0..MR).map(|r| (0..n).map(|k| (r * 7 + k) as f32 * 0.25 - 3.0).collect()).collect();
        let b: Vec<f32> = (0..n * bstride).map(|i| ((i * 13) % 17) as f32 - 8.0).collect();
        let c = [[f32x16::splat(0.5); 2]; MR];
        let c = rows_micro::<2>(std::array::from_fn(|r| &rows[r][..]), &b, bstride, c);
        for r in 0..MR {
            for t in 0..2 {
                for l in 0..LANES {
                    let want: f32 = 0.5
                        + (0..n).map(|k| rows[r][k] * b[k * bstride + t * LANES + l]).sum::<f32>();
                    assert_eq!(c[r][t].to_array()[l], want, "r {r} t {t} lane {l}");
                }
            }
        }
    }
}
