//! The split-KV micro-kernels: one block of [`KB`] = 16 keys against a
//! quad of 4 query rows.
//!
//! ```text
//! scores  for each quad of 4 keys: 16 accumulators acc[key][row] over
//!         the head dim (each K vector loaded — and widened — once for
//!         the 4 rows, each Q vector once for the 4 keys), then
//!         `sums16` turns the 16 into one vector [row][key] and
//!         `transpose_quarters` the four of them into one 16-key vector
//!         per row: no horizontal sum per dot product
//! P·V     for each chunk of W ≤ 4 vectors of dv: 4 rows × W accumulators
//!         in registers while the block's V rows stream past (each V
//!         vector loaded and widened once for the 4 rows)
//! ```
//!
//! Registers: 16 accumulators + 4 K vectors + 1 Q vector (scores), 16 +
//! 4 + 1 broadcast (P·V) of the 32 zmm. K and V rows are read through
//! [`Load16`]: in place (f32, f16 with `vcvtph2ps`, bf16 with a shift,
//! q8_0 with `vpmovsxbd`), or from f32 scratch the caller widened.

use attn_simd::{Ahead, LANES, f32x16, load, sums16, transpose_quarters};

use crate::kv_element::sealed::Load16;
use crate::tiles::decode::KB;

/// Query rows per quad.
pub(crate) const QUAD: usize = 4;

/// Scores of 4 rows against 16 keys: `out[r]` lane `jj` = `q[r]·k[jj]`.
/// `q`: the quad's pre-scaled rows, `dp` (a multiple of 16) floats each,
/// zero past the head dim; `k`: the 16 key rows, each with `dp / 16`
/// whole vectors (padding zero). Prefetches `ahead` (the next block's K
/// rows) a share per inner iteration.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // register blocks read best as indices
pub(crate) fn quad_scores<U: Load16>(
    q: &[f32],
    dp: usize,
    k: &[&[U]; KB],
    ahead: Ahead<'_>,
) -> [f32x16; QUAD] {
    // (Plain loops over arrays, not `array::from_fn` closures: those were
    // not inlined and put the accumulators in memory.)
    let nv = dp / LANES;
    let (q, _) = q[..QUAD * dp].as_chunks::<LANES>();
    let q: [&[[f32; LANES]]; QUAD] = std::array::from_fn(|r| &q[r * nv..(r + 1) * nv]);
    let ahead = ahead.split(4 * nv);
    let mut quads = [f32x16::ZERO; 4];
    for (kq, out) in quads.iter_mut().enumerate() {
        let kr = [k[4 * kq], k[4 * kq + 1], k[4 * kq + 2], k[4 * kq + 3]].map(|r| U::trim(r, nv));
        let mut acc = [f32x16::ZERO; 16];
        for v in 0..nv {
            ahead.step(kq * nv + v);
            let mut kv = [f32x16::ZERO; 4];
            for kk in 0..4 {
                kv[kk] = U::load16(kr[kk], v);
            }
            for r in 0..QUAD {
                let qv = f32x16::new(q[r][v]);
                for kk in 0..4 {
                    acc[4 * kk + r] = qv.mul_add(kv[kk], acc[4 * kk + r]);
                }
            }
        }
        *out = sums16(&acc); // lanes [row][key of this quad]
    }
    transpose_quarters(quads)
}

/// `acc[r] = alpha[r]·acc[r] + Σ_{jj < jb} p[r][jj]·v[jj]` for the quad's
/// 4 rows of `dvp` (a multiple of 16) accumulators, rows `dvp` apart.
/// Prefetches `ahead` (the next block's V rows) a share per key.
#[inline(always)]
pub(crate) fn quad_pv<U: Load16>(
    p: &[[f32; KB]; QUAD],
    alpha: [f32; QUAD],
    v: &[&[U]; KB],
    jb: usize,
    acc: &mut [f32],
    dvp: usize,
    ahead: Ahead<'_>,
) {
    let nv = dvp / LANES;
    // column chunks of 4, then 2, then 1 vectors: ahead is split over them
    let chunks = nv / 4 + (nv % 4) / 2 + nv % 2;
    let ahead = ahead.split(chunks * KB);
    let (mut c, mut i) = (0, 0);
    while c + 4 <= nv {
        pv_cols::<U, 4>(p, alpha, v, jb, acc, dvp, c, (ahead, i));
        (c, i) = (c + 4, i + 1);
    }
    if c + 2 <= nv {
        pv_cols::<U, 2>(p, alpha, v, jb, acc, dvp, c, (ahead, i));
        (c, i) = (c + 2, i + 1);
    }
    if c < nv {
        pv_cols::<U, 1>(p, alpha, v, jb, acc, dvp, c, (ahead, i));
    }
}

/// [`quad_pv`] on vectors `c .. c + W` of every row, prefetching share
/// `i·KB + jj` of `ahead` at key `jj`.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // register blocks read best as indices
#[allow(clippy::too_many_arguments)]
fn pv_cols<U: Load16, const W: usize>(
    p: &[[f32; KB]; QUAD],
    alpha: [f32; QUAD],
    v: &[&[U]; KB],
    jb: usize,
    acc: &mut [f32],
    dvp: usize,
    c: usize,
    (ahead, i): (Ahead<'_>, usize),
) {
    let at = |r: usize, t: usize| r * dvp + (c + t) * LANES;
    let mut x = [[f32x16::ZERO; W]; QUAD];
    for r in 0..QUAD {
        let a = f32x16::splat(alpha[r]);
        for t in 0..W {
            x[r][t] = load(&acc[at(r, t)..]) * a;
        }
    }
    for jj in 0..jb {
        ahead.step(i * KB + jj);
        let mut vv = [f32x16::ZERO; W];
        for t in 0..W {
            vv[t] = U::load16(v[jj], c + t);
        }
        for r in 0..QUAD {
            let pr = f32x16::splat(p[r][jj]);
            for t in 0..W {
                x[r][t] = pr.mul_add(vv[t], x[r][t]);
            }
        }
    }
    for (r, xr) in x.iter().enumerate() {
        for (t, xt) in xr.iter().enumerate() {
            acc[at(r, t)..at(r, t) + LANES].copy_from_slice(xt.as_array());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn quad_scores_and_pv_match_scalar() {
        let (d, dp, dvp, jb) = (20, 32, 48, 13);
        let q: Vec<f32> = (0..QUAD * dp)
            .map(|i| if i % dp < d { ((i * 7) % 11) as f32 * 0.1 - 0.5 } else { 0.0 })
            .collect();
        let keys: Vec<Vec<f16>> = (0..KB)
            .map(|j| {
                (0..dp)
                    .map(|c| {
                        f16::from_f32(if c < d {
                            ((j * 5 + c) % 9) as f32 * 0.25 - 1.0
                        } else {
                            0.0
                        })
                    })
                    .collect()
            })
            .collect();
        let k: [&[f16]; KB] = std::array::from_fn(|j| &keys[j][..]);
        let s = quad_scores(&q, dp, &k, Ahead::of(&q[..])).map(|x| x.to_array());
        for r in 0..QUAD {
            for j in 0..KB {
                let want: f32 = (0..d).map(|c| q[r * dp + c] * keys[j][c].to_f32()).sum();
                assert!((s[r][j] - want).abs() < 1e-5, "{r} {j}: {} vs {want}", s[r][j]);
            }
        }
        let vals: Vec<Vec<f32>> =
            (0..KB).map(|j| (0..dvp).map(|c| ((j * 3 + c) % 7) as f32 - 3.0).collect()).collect();
        let v: [&[f32]; KB] = std::array::from_fn(|j| &vals[j][..]);
        let p: [[f32; KB]; QUAD] =
            std::array::from_fn(|r| std::array::from_fn(|j| (r + j) as f32 * 0.1));
        let alpha = [0.5, 1.0, 0.0, 2.0];
        let mut acc: Vec<f32> = (0..QUAD * dvp).map(|i| i as f32 * 0.01).collect();
        let before = acc.clone();
        quad_pv(&p, alpha, &v, jb, &mut acc, dvp, Ahead::NONE);
        for r in 0..QUAD {
            for c in 0..dvp {
                let want = alpha[r] * before[r * dvp + c]
                    + (0..jb).map(|j| p[r][j] * vals[j][c]).sum::<f32>();
                assert!((acc[r * dvp + c] - want).abs() < 1e-4, "{r} {c}");
            }
        }
    }
}
