//! The one-layer experiment's inputs, seeded, `[B, H, N, d]` (MHA):
//!
//! - **iid**: Q, K, V standard normal, so a logit `t/√d·q·k` is about
//!   `N(0, t²)`;
//! - **peaky**: "a few keys aligned with the queries". Per sequence and
//!   head, a random unit direction `u`; every query is
//!   `q = ρ√d·u + √(1−ρ²)·z` (`z` standard normal: `|q|² ≈ d` as in iid,
//!   cosine with `u` about `ρ`), and `A` anchor keys, at distinct random
//!   positions that every query row sees, are `k = √d·u + σ·z`; the other
//!   keys, V and dO are as in iid. An anchor's logit is then about
//!   `t·ρ·√d` above the others' mean (`4t` for `ρ = 0.5`, `d = 64`), with
//!   spread `t·√(1 − ρ² + σ²)`, while the other keys stay `N(0, t²)`.
//!
//! dO (the upstream gradient of the backward) is standard normal in both:
//! the gradient of the random linear loss `Σ dO∘O`.

use crate::measure::inputs::{SplitMix64, normal};
use attnlab::{AttnError, AttnShape};

/// One problem's tensors, contiguous `[B, H, N, D]`, and the anchors.
#[derive(Debug, Clone)]
pub struct Problem {
    /// `B`, `H = Hq = Hkv`, `Nq`, `Nk = N`, `d = dv`.
    pub shape: AttnShape,
    /// Q, `[B, H, Nq, d]`.
    pub q: Vec<f32>,
    /// K, `[B, H, N, d]`.
    pub k: Vec<f32>,
    /// V, `[B, H, N, d]`.
    pub v: Vec<f32>,
    /// dO, `[B, H, Nq, d]`.
    pub d_out: Vec<f32>,
    /// Anchor key positions, `A` per (sequence, head) in `(b, h)` order
    /// (empty for iid).
    pub anchors: Vec<usize>,
}

/// The shape of a one-layer problem: `batch` sequences of `n` keys, the
/// last `q_rows` of them as queries, `heads` heads of dimension `d`.
pub fn shape(
    batch: usize,
    heads: usize,
    q_rows: usize,
    n: usize,
    d: usize,
) -> Result<AttnShape, AttnError> {
    AttnShape::builder()
        .batch(batch)
        .q_heads(heads)
        .kv_heads(heads)
        .q_len(q_rows)
        .kv_len(n)
        .head_dim(d)
        .v_dim(d)
        .build()
}

/// The iid problem on `shape` (see the module docs).
pub fn iid(shape: &AttnShape, seed: u64) -> Problem {
    let qn: usize = shape.q_dims().iter().product();
    let kn: usize = shape.k_dims().iter().product();
    Problem {
        shape: *shape,
        q: normal(qn, seed, 1),
        k: normal(kn, seed, 2),
        v: normal(kn, seed, 3),
        d_out: normal(qn, seed, 4),
        anchors: Vec::new(),
    }
}

/// The peaky problem on `shape`: `anchors` keys per (sequence, head)
/// aligned with the queries, which have cosine about `rho` with the
/// head's direction; anchor noise `sigma` (see the module docs). Anchors
/// sit among the keys every query row sees under the bottom-right causal
/// mask (`0 ..= N − Nq`); `anchors` must not exceed their number.
pub fn peaky(shape: &AttnShape, anchors: usize, rho: f32, sigma: f32, seed: u64) -> Problem {
    let mut p = iid(shape, seed);
    let (b, h, nq, n, d) =
        (shape.batch(), shape.q_heads(), shape.q_len(), shape.kv_len(), shape.head_dim());
    let seen = n + 1 - nq.min(n); // keys 0..seen are visible to every row
    assert!(anchors <= seen, "peaky: {anchors} anchors, but every row sees only {seen} keys");
    let dirs: Vec<f32> = normal(b * h * d, seed, 5);
    let mut pick = SplitMix64(seed ^ 0xA11C_4E55);
    let sd = (d as f32).sqrt();
    let keep = (1.0 - rho * rho).max(0.0).sqrt();
    for bh in 0..b * h {
        let u = &dirs[bh * d..][..d];
        let norm = u.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        let u: Vec<f32> = u.iter().map(|x| x / norm).collect();
        for row in p.q[bh * nq * d..][..nq * d].chunks_mut(d) {
            for (x, uc) in row.iter_mut().zip(&u) {
                *x = rho * sd * uc + keep * *x;
            }
        }
        // distinct positions, uniform over 0..seen
        let mut chosen: Vec<usize> = Vec::with_capacity(anchors);
        while chosen.len() < anchors {
            let j = (pick.next_u64() % seen as u64) as usize;
            if !chosen.contains(&j) {
                chosen.push(j);
            }
        }
        for &j in &chosen {
            let row = &mut p.k[(bh * n + j) * d..][..d];
            for (x, uc) in row.iter_mut().zip(&u) {
                *x = sd * uc + sigma * *x;
            }
        }
        p.anchors.extend(chosen);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    #[test]
    fn iid_is_standard_normal_and_seeded() {
        let s = shape(2, 2, 32, 256, 16).unwrap();
        let p = iid(&s, 3);
        for (name, x) in [("q", &p.q), ("k", &p.k), ("v", &p.v), ("d_out", &p.d_out)] {
            let n = x.len() as f64;
            let mean = x.iter().map(|v| *v as f64).sum::<f64>() / n;
            let var = x.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n;
            assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "{name}: {mean} {var}");
        }
        assert_eq!(iid(&s, 3).k, p.k);
        assert_ne!(iid(&s, 4).k, p.k);
        assert!(p.anchors.is_empty());
    }

    #[test]
    fn peaky_anchors_are_visible_distinct_and_stand_out_by_rho_sqrt_d() {
        let (b, h, nq, n, d) = (2, 3, 32, 512, 64);
        let s = shape(b, h, nq, n, d).unwrap();
        let (a, rho, sigma) = (4, 0.5f32, 0.5f32);
        let p = peaky(&s, a, rho, sigma, 11);
        assert_eq!(p.anchors.len(), b * h * a);
        let base = iid(&s, 11);
        assert_eq!(p.v, base.v, "V is the iid one");
        let scale = 1.0 / (d as f64).sqrt();
        let (mut gap, mut cos, mut count) = (0f64, 0f64, 0usize);
        for bh in 0..b * h {
            let anchors = &p.anchors[bh * a..][..a];
            let mut sorted = anchors.to_vec();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), a, "anchors of head {bh} repeat: {anchors:?}");
            assert!(anchors.iter().all(|&j| j <= n - nq), "{anchors:?} not seen by row 0");
            // the other keys are untouched
            for j in (0..n).filter(|j| !anchors.contains(j)) {
                assert_eq!(p.k[(bh * n + j) * d..][..d], base.k[(bh * n + j) * d..][..d]);
            }
            for i in 0..nq {
                let q = &p.q[(bh * nq + i) * d..][..d];
                let logit = |j: usize| scale * dot(q, &p.k[(bh * n + j) * d..][..d]);
                let on: f64 = anchors.iter().map(|&j| logit(j)).sum::<f64>() / a as f64;
                let off: f64 = (0..n).filter(|j| !anchors.contains(j)).map(logit).sum::<f64>()
                    / (n - a) as f64;
                gap += on - off;
                // the anchors share one direction u: cos(q, anchor) ≈ rho
                let k0 = &p.k[(bh * n + anchors[0]) * d..][..d];
                cos += dot(q, k0) / (dot(q, q) * dot(k0, k0)).sqrt();
                count += 1;
            }
        }
        let (gap, cos) = (gap / count as f64, cos / count as f64);
        let want = rho as f64 * (d as f64).sqrt();
        assert!((gap - want).abs() < 0.1 * want, "mean anchor gap {gap}, expected ~{want}");
        // |k0|² ≈ d(1 + σ²): cosine ≈ ρ/√(1 + σ²)
        let want_cos = rho as f64 / (1.0 + (sigma * sigma) as f64).sqrt();
        assert!((cos - want_cos).abs() < 0.05, "mean cosine {cos}, expected ~{want_cos}");
        assert_eq!(peaky(&s, a, rho, sigma, 11).anchors, p.anchors, "seeded");
    }

    #[test]
    #[should_panic(expected = "every row sees only")]
    fn more_anchors_than_shared_keys_is_refused() {
        let s = shape(1, 1, 30, 32, 8).unwrap();
        peaky(&s, 4, 0.5, 0.5, 1);
    }
}
