//! The two register-blocked micro-kernels. Both broadcast [`MR`] scalars
//! against [`NV`] vectors per step and keep `MR × NV` accumulators in
//! registers; operands come from packed, iterator-walked buffers, so the
//! loops carry no bounds checks.

use crate::tiles::{LANES, MR, NV};
use attn_simd::load;
use wide::f32x16;

/// `Sᵀ` micro-tile: `C[r][t] = Σ_c k[r][c] · qp[c][t]` — 8 keys × 32
/// queries, reduced over the head dim `c`.
/// `k`: 8 key rows (read in place; each at least `d` long).
/// `qp`: one 32-query panel of the packed, pre-scaled `Qᵀ`, `[d][NV]`.
#[inline(always)]
pub fn qk_micro(k: [&[f32]; MR], qp: &[[f32x16; NV]]) -> [[f32x16; NV]; MR] {
    let d = qp.len();
    let k = k.map(|r| &r[..d]);
    let mut c = [[f32x16::ZERO; NV]; MR];
    for (i, b) in qp.iter().enumerate() {
        for r in 0..MR {
            let ar = f32x16::splat(k[r][i]);
            for t in 0..NV {
                c[r][t] = ar.mul_add(b[t], c[r][t]);
            }
        }
    }
    c
}

/// `O` micro-tile: `C[r][t] += Σ_k pt[k][r] · v[k][t]` for the first `kn`
/// key rows — `MR` queries × `W` vectors of `dv`.
/// `pt`: `Pᵀ` starting at this block's first query, rows `pstride` apart.
/// `v`: V starting at this column chunk, rows `vstride` floats apart
/// (in place, or a converted tile).
#[inline(always)]
pub fn pv_micro<const W: usize>(
    pt: &[f32],
    pstride: usize,
    v: &[f32],
    vstride: usize,
    kn: usize,
    c: &mut [[f32x16; W]; MR],
) {
    for (prow, vrow) in pt.chunks(pstride).zip(v.chunks(vstride)).take(kn) {
        let a: &[f32; MR] = prow[..MR].try_into().unwrap();
        let vrow = &vrow[..W * LANES];
        let b: [f32x16; W] = std::array::from_fn(|t| load(&vrow[t * LANES..]));
        for r in 0..MR {
            let ar = f32x16::splat(a[r]);
            for t in 0..W {
                c[r][t] = ar.mul_add(b[t], c[r][t]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qk_micro_matches_scalar() {
        let d = 5;
        let kr: Vec<Vec<f32>> =
            (0..MR).map(|r| (0..d).map(|c| (c * 8 + r) as f32 * 0.1 - 2.0).collect()).collect();
        let qp: Vec<[f32x16; NV]> = (0..d)
            .map(|c| {
                std::array::from_fn(|t| {
                    f32x16::new(std::array::from_fn(|l| ((c * 32 + t * 16 + l) % 7) as f32 - 3.0))
                })
            })
            .collect();
        let got = qk_micro(std::array::from_fn(|r| &kr[r][..]), &qp);
        for r in 0..MR {
            for t in 0..NV {
                for l in 0..16 {
                    let want: f32 = (0..d).map(|c| kr[r][c] * qp[c][t].to_array()[l]).sum();
                    assert!((got[r][t].to_array()[l] - want).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn pv_micro_accumulates_kn_rows_only() {
        let (kn, pstride, vstride) = (3, 10, 2);
        let pt: Vec<f32> = (0..40).map(|i| i as f32 * 0.5).collect();
        let v: Vec<f32> = (0..8).flat_map(|i| [i as f32 + 1.0; 16]).collect();
        let mut c = [[f32x16::splat(1.0); 1]; MR];
        pv_micro::<1>(&pt, pstride, &v, vstride * 16, kn, &mut c);
        for r in 0..MR {
            let want: f32 =
                1.0 + (0..kn).map(|k| pt[k * pstride + r] * (2 * k + 1) as f32).sum::<f32>();
            assert_eq!(c[r][0].to_array()[3], want);
        }
    }
}
