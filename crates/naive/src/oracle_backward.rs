//! The f64 backward oracle: the ground truth of every gradient test.
//!
//! Written to be obviously right rather than fast. Per query row, in f64,
//! from Q, K, V and dO alone (the passed O and LSE are not read: the oracle
//! is the exact gradient of the f64 forward, not of the rounded one):
//!
//! ```text
//! s_j = scale·q·k_j (visible j)     p_j = exp(s_j − m) / Σ exp(s_· − m)
//! o   = Σ_j p_j·v_j                 D   = Σ_c dO_c·o_c
//! dP_j = dO·v_j                     dS_j = p_j·(dP_j − D)
//! dq  = scale·Σ_j dS_j·k_j          dk_j += scale·dS_j·q     dv_j += p_j·dO
//! ```
//!
//! dk and dv accumulate over every query row of every query head of the
//! K/V head's group. A fully masked row contributes nothing.

use attn_core::{
    AttnShape, BackwardInputs, BackwardKernel, CheckedBackward, Element, Par, TensorViewMut,
};
use rayon::prelude::*;

/// The oracle's gradients in f64, contiguous `[B, H, N, D]` (logical order,
/// whatever the inputs' layout).
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceGrads {
    /// `[B, Hq, Nq, d]`.
    pub dq: Vec<f64>,
    /// `[B, Hkv, Nk, d]`.
    pub dk: Vec<f64>,
    /// `[B, Hkv, Nk, dv]`.
    pub dv: Vec<f64>,
}

/// The gradients in f64 (see the module docs), over the K/V heads in
/// parallel on the current rayon pool.
pub fn reference_backward<T: Element>(
    inputs: &BackwardInputs<'_, T>,
    params: &attn_core::AttnParams,
) -> ReferenceGrads {
    backward_on(inputs, params, true)
}

fn backward_on<T: Element>(
    inputs: &BackwardInputs<'_, T>,
    params: &attn_core::AttnParams,
    parallel: bool,
) -> ReferenceGrads {
    let s = *inputs.shape();
    let (nq, nk, d, dv) = (s.q_len(), s.kv_len(), s.head_dim(), s.v_dim());
    let grp = s.group_size();
    let mut dq = vec![0f64; s.q_dims().iter().product()];
    let mut dk = vec![0f64; s.k_dims().iter().product()];
    let mut dvv = vec![0f64; s.v_dims().iter().product()];
    // One K/V head (b, g) owns its dk, dv and the dq of its group's heads.
    let head = |bg: usize, dq: &mut [f64], dk: &mut [f64], dvh: &mut [f64]| {
        let (b, g) = (bg / s.kv_heads(), bg % s.kv_heads());
        for hi in 0..grp {
            let h = g * grp + hi;
            for i in 0..nq {
                row_grads(
                    inputs,
                    params,
                    &s,
                    (b, h, i),
                    &mut dq[(hi * nq + i) * d..][..d],
                    dk,
                    dvh,
                );
            }
        }
    };
    let (cq, ck, cv) = ((grp * nq * d).max(1), (nk * d).max(1), (nk * dv).max(1));
    if parallel {
        dq.par_chunks_mut(cq)
            .zip(dk.par_chunks_mut(ck))
            .zip(dvv.par_chunks_mut(cv))
            .enumerate()
            .for_each(|(bg, ((q, k), v))| head(bg, q, k, v));
    } else {
        for (bg, ((q, k), v)) in
            dq.chunks_mut(cq).zip(dk.chunks_mut(ck)).zip(dvv.chunks_mut(cv)).enumerate()
        {
            head(bg, q, k, v);
        }
    }
    ReferenceGrads { dq, dk, dv: dvv }
}

/// The f64 dQ of query rows `(b, h, i)` only (each O(Nk·d)): what the
/// harness checks sampled rows of a large backward run against. Same
/// arithmetic as [`reference_backward`].
pub fn reference_dq_rows<T: Element>(
    inputs: &BackwardInputs<'_, T>,
    params: &attn_core::AttnParams,
    rows: &[(usize, usize, usize)],
) -> Vec<Vec<f64>> {
    let s = *inputs.shape();
    rows.par_iter()
        .map(|&at| {
            let mut dq = vec![0f64; s.head_dim()];
            let mut dk = vec![0f64; s.kv_len() * s.head_dim()];
            let mut dv = vec![0f64; s.kv_len() * s.v_dim()];
            row_grads(inputs, params, &s, at, &mut dq, &mut dk, &mut dv);
            dq
        })
        .collect()
}

/// One query row `(b, h, i)`: its dq into `dq`, its contributions to the
/// head's `dk` `[Nk][d]` and `dv` `[Nk][dv]`.
fn row_grads<T: Element>(
    inputs: &BackwardInputs<'_, T>,
    params: &attn_core::AttnParams,
    s: &AttnShape,
    (b, h, i): (usize, usize, usize),
    dq: &mut [f64],
    dk: &mut [f64],
    dv: &mut [f64],
) {
    let (d, dvn) = (s.head_dim(), s.v_dim());
    let g = s.kv_head_of(h);
    let keys = params.mask.key_range(i, s.q_len(), s.kv_len());
    if keys.is_empty() {
        return;
    }
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (d as f64).sqrt());
    let x = |e: &T| e.to_f32() as f64;
    let (q, k, v) = (&inputs.fwd.q, &inputs.fwd.k, &inputs.fwd.v);
    let qi: Vec<f64> = q.row(b, h, i).iter().map(x).collect();
    let doi: Vec<f64> = inputs.d_out.row(b, h, i).iter().map(|&e| e as f64).collect();
    let scores: Vec<f64> = keys
        .clone()
        .map(|j| scale * qi.iter().zip(k.row(b, g, j)).map(|(a, c)| a * x(c)).sum::<f64>())
        .collect();
    let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = scores.iter().map(|sj| (sj - m).exp()).collect();
    let sum: f64 = w.iter().sum();
    let p: Vec<f64> = w.iter().map(|wj| wj / sum).collect();
    let mut o = vec![0f64; dvn];
    for (j, pj) in keys.clone().zip(&p) {
        for (oc, vc) in o.iter_mut().zip(v.row(b, g, j)) {
            *oc += pj * x(vc);
        }
    }
    let dd: f64 = doi.iter().zip(&o).map(|(a, c)| a * c).sum();
    for (j, pj) in keys.zip(&p) {
        let vj = v.row(b, g, j);
        let dp: f64 = doi.iter().zip(vj).map(|(a, c)| a * x(c)).sum();
        let ds = pj * (dp - dd);
        for (c, kc) in k.row(b, g, j).iter().enumerate() {
            dq[c] += scale * ds * x(kc);
            dk[j * d + c] += scale * ds * qi[c];
        }
        for c in 0..dvn {
            dv[j * dvn + c] += pj * doi[c];
        }
    }
}

/// Writes f64 values in logical `[B, H, N, D]` order into a view.
fn write_view(src: &[f64], view: &mut TensorViewMut<'_>) {
    let [nb, nh, n, d] = view.dims();
    for b in 0..nb {
        for h in 0..nh {
            for i in 0..n {
                let at = ((b * nh + h) * n + i) * d;
                for (o, x) in view.row_mut(b, h, i).iter_mut().zip(&src[at..at + d]) {
                    *o = *x as f32;
                }
            }
        }
    }
}

impl BackwardKernel for crate::Oracle {
    /// f64 copies of the three gradients.
    fn backward_workspace_bytes(
        &self,
        shape: &AttnShape,
        _: &attn_core::AttnParams,
        _: Par,
    ) -> usize {
        let n = |dims: [usize; 4]| dims.iter().product::<usize>();
        8 * (n(shape.q_dims()) + n(shape.k_dims()) + n(shape.v_dims()))
    }

    /// f64 throughout, on the call's threads; rounded to f32 at the end.
    fn run_backward<T: Element>(
        &self,
        mut call: CheckedBackward<'_, '_, T>,
    ) -> Result<(), attn_core::AttnError> {
        let (inputs, params, par) = (call.inputs(), call.params(), call.par());
        let r = par.install(|| backward_on(inputs, params, par.threads() > 1))?;
        let g = call.grads();
        write_view(&r.dq, &mut g.dq);
        write_view(&r.dk, &mut g.dk);
        write_view(&r.dv, &mut g.dv);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::reference;
    use attn_core::{AttnInputs, AttnParams, Layout, Mask};

    fn shape(hq: usize, hkv: usize, nq: usize, nk: usize, d: usize, dv: usize) -> AttnShape {
        AttnShape::builder()
            .q_heads(hq)
            .kv_heads(hkv)
            .q_len(nq)
            .kv_len(nk)
            .head_dim(d)
            .v_dim(dv)
            .build()
            .unwrap()
    }

    /// Dyadic values, so that x ± 2⁻¹⁰ is exact in f32.
    fn dyadic(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i * 37 + seed * 11) % 61) as f32 - 30.0) / 32.0).collect()
    }

    /// `f = Σ dO∘O(Q, K, V)` in f64 (the f64 forward of `reference`).
    fn objective(
        s: AttnShape,
        p: &AttnParams,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d_o: &[f32],
    ) -> f64 {
        let inp = AttnInputs::from_slices(s, Layout::Bhnd, q, k, v).unwrap();
        reference(&inp, p).out.iter().zip(d_o).map(|(o, g)| o * *g as f64).sum()
    }

    /// Every gradient element against a central finite difference of the
    /// f64 forward with step h = 2⁻¹⁰: the truncation error is
    /// O(h²·|f'''|) ≈ 1e-6·|f'''| and the f64 round-off ~1e-16/h ≈ 1e-13,
    /// so 2e-5 absolute (the gradients are O(1) here) leaves room for
    /// third derivatives up to ~20.
    #[test]
    fn matches_finite_differences() {
        let cases = [
            (shape(1, 1, 3, 4, 2, 3), Mask::None),
            (shape(2, 1, 4, 3, 3, 2), Mask::Causal),
            (shape(2, 2, 3, 5, 2, 2), Mask::Window { left: Some(1), right: Some(1) }),
            (shape(3, 1, 5, 2, 1, 1), Mask::Causal), // fully masked rows
        ];
        for (s, mask) in cases {
            let p = AttnParams { scale: Some(0.7), ..AttnParams::with_mask(mask) };
            let n = |dims: [usize; 4]| dims.iter().product::<usize>();
            let (q, k, v) =
                (dyadic(n(s.q_dims()), 1), dyadic(n(s.k_dims()), 2), dyadic(n(s.v_dims()), 3));
            let d_o = dyadic(n(s.out_dims()), 4);
            let fwd = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
            let r = reference(&fwd, &p);
            let out: Vec<f32> = r.out.iter().map(|&x| x as f32).collect();
            let lse: Vec<f32> = r.lse.iter().map(|&x| x as f32).collect();
            let inp =
                BackwardInputs::from_slices(s, Layout::Bhnd, &q, &k, &v, &out, &lse, &d_o).unwrap();
            let g = reference_backward(&inp, &p);
            let h = 1.0f32 / 1024.0;
            let mut worst = 0f64;
            for (which, grad) in [(0, &g.dq), (1, &g.dk), (2, &g.dv)] {
                for idx in 0..grad.len() {
                    let at = |x: &mut [f32]| {
                        let (mut q2, mut k2, mut v2) = (q.clone(), k.clone(), v.clone());
                        [&mut q2, &mut k2, &mut v2][which][idx] += x[0];
                        objective(s, &p, &q2, &k2, &v2, &d_o)
                    };
                    let (fp, fm) = (at(&mut [h]), at(&mut [-h]));
                    let fd = (fp - fm) / (2.0 * h as f64);
                    let e = (fd - grad[idx]).abs();
                    assert!(
                        e < 2e-5,
                        "{s:?} {mask:?} tensor {which} [{idx}]: fd {fd} vs {}",
                        grad[idx]
                    );
                    worst = worst.max(e);
                }
            }
            // the check is not vacuous: the gradients are far from zero
            let big = g.dq.iter().chain(&g.dk).chain(&g.dv).fold(0f64, |a, x| a.max(x.abs()));
            assert!(big > 0.05 && worst < 2e-5, "{s:?}: largest gradient {big}");
        }
    }

    #[test]
    fn fully_masked_rows_have_zero_dq() {
        let s = shape(1, 1, 3, 1, 2, 2);
        let (q, k, v, d_o) = ([1f32; 6], [0.5f32; 2], [2f32; 2], [1f32; 6]);
        let (o, lse) = ([0f32; 6], [0f32; 3]);
        let inp = BackwardInputs::from_slices(s, Layout::Bhnd, &q, &k, &v, &o, &lse, &d_o).unwrap();
        let g = reference_backward(&inp, &AttnParams::causal());
        assert_eq!(&g.dq[..4], &[0.0; 4]);
        // one key: p = 1, so dv = dO of the one row that sees it, dq = dk = 0
        assert_eq!(g.dv, vec![1.0, 1.0]);
        assert!(g.dq.iter().chain(&g.dk).all(|x| x.abs() < 1e-15));
    }
}
