//! The f64 backward oracle: the ground truth of every gradient test.
//!
//! Written to be obviously right rather than fast. Per query row, in f64,
//! from Q, K, V and dO alone (the passed O and LSE are not read: the oracle
//! is the exact gradient of the f64 forward, not of the rounded one). The
//! forward row is [`reference_row`] itself — the scores `s_j` it leaves
//! are the modified ones ([`ScoreMods::score_f64`]: bias, ALiBi, softcap)
//! — and with `m = max(max_j s_j, sink)` and `Z = Σ_j exp(s_j − m) +
//! exp(sink − m)` (the sink only if the call has sinks):
//!
//! ```text
//! p_j  = exp(s_j − m) / Z           p_sink = exp(sink − m) / Z
//! o    = Σ_j p_j·v_j                D      = Σ_c dO_c·o_c
//! dP_j = dO·v_j                     dS_j   = p_j·(dP_j − D)·(1 − (s_j/c)²)
//! dq   = scale·Σ_j dS_j·k_j         dk_j  += scale·dS_j·q     dv_j += p_j·dO
//! dsink_h += −p_sink·D
//! ```
//!
//! The factor `1 − (s_j/c)²` is the softcap's derivative
//! `1 − tanh²(s_pre/c)` written with the capped score (only with a
//! softcap `c`); the bias and the ALiBi slopes are constants. The sink is
//! one more key with a zero value: `dS_sink = p_sink·(0 − D)`. dk and dv
//! accumulate over every query row of every query head of the K/V head's
//! group, dsink over the batch and the rows of its head. A row with no key
//! left (masked, or every score `−inf`) contributes nothing.

use attn_core::{
    AttnParams, AttnShape, BackwardInputs, BackwardKernel, CheckedBackward, Element, Par,
    ScoreMods, TensorViewMut,
};
use rayon::prelude::*;

use crate::oracle::{RowAt, reference_row};

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
    /// One per query head, `[Hq]`: the gradient of each sink logit, summed
    /// over the batch. All zero when the call has no sinks.
    pub dsinks: Vec<f64>,
    /// `[B, Hq, Nq]`: the share of each row's score-gradient mass
    /// `Σ_j |dS_j|` that reaches keys other than the row's argmax (the
    /// first key of largest probability); 0 when the row passes none
    /// (`attn_core::stats`).
    pub off_argmax: Vec<f64>,
    /// `[B, Hkv, Nk]`: the score-gradient mass `Σ |dS|` each key receives
    /// from every row of every query head of its group.
    pub key_grad: Vec<f64>,
}

/// The gradients in f64 (see the module docs), over the K/V heads in
/// parallel on the current rayon pool.
pub fn reference_backward<T: Element>(
    inputs: &BackwardInputs<'_, T>,
    params: &AttnParams,
) -> ReferenceGrads {
    backward_on(inputs, params, true)
}

fn backward_on<T: Element>(
    inputs: &BackwardInputs<'_, T>,
    params: &AttnParams,
    parallel: bool,
) -> ReferenceGrads {
    let s = *inputs.shape();
    let (nq, nk, d, dv) = (s.q_len(), s.kv_len(), s.head_dim(), s.v_dim());
    let grp = s.group_size();
    let mods = ScoreMods::new(params, s.q_heads());
    let mut dq = vec![0f64; s.q_dims().iter().product()];
    let mut dk = vec![0f64; s.k_dims().iter().product()];
    let mut dvv = vec![0f64; s.v_dims().iter().product()];
    // dsink of each (b, h), in K/V-head order: (b·Hkv + g)·grp + hi = b·Hq + h.
    let mut dsink_bh = vec![0f64; s.batch() * s.q_heads()];
    let mut off_argmax = vec![0f64; s.lse_len()];
    let mut key_grad = vec![0f64; s.batch() * s.kv_heads() * nk];
    // One K/V head (b, g) owns its dk, dv, key_grad and the dq, dsink and
    // row shares of its group's heads.
    let head = |bg: usize,
                (dq, dk, dvh): (&mut [f64], &mut [f64], &mut [f64]),
                dsink: &mut [f64],
                share: &mut [f64],
                kg: &mut [f64]| {
        let (b, g) = (bg / s.kv_heads(), bg % s.kv_heads());
        let mut scratch = Scratch::default();
        for hi in 0..grp {
            let h = g * grp + hi;
            for i in 0..nq {
                let dq_row = &mut dq[(hi * nq + i) * d..][..d];
                let at = (b, h, i);
                let r = row_grads(inputs, params, &mods, at, dq_row, (dk, dvh, kg), &mut scratch);
                dsink[hi] += r.dsink;
                share[hi * nq + i] = r.off_argmax_share();
            }
        }
    };
    let (cq, ck, cv) = ((grp * nq * d).max(1), (nk * d).max(1), (nk * dv).max(1));
    let (cr, cn) = ((grp * nq).max(1), nk.max(1));
    if parallel {
        dq.par_chunks_mut(cq)
            .zip(dk.par_chunks_mut(ck))
            .zip(dvv.par_chunks_mut(cv))
            .zip(dsink_bh.par_chunks_mut(grp))
            .zip(off_argmax.par_chunks_mut(cr))
            .zip(key_grad.par_chunks_mut(cn))
            .enumerate()
            .for_each(|(bg, (((((q, k), v), ds), sh), kg))| head(bg, (q, k, v), ds, sh, kg));
    } else {
        for (bg, (((((q, k), v), ds), sh), kg)) in dq
            .chunks_mut(cq)
            .zip(dk.chunks_mut(ck))
            .zip(dvv.chunks_mut(cv))
            .zip(dsink_bh.chunks_mut(grp))
            .zip(off_argmax.chunks_mut(cr))
            .zip(key_grad.chunks_mut(cn))
            .enumerate()
        {
            head(bg, (q, k, v), ds, sh, kg);
        }
    }
    // Sum over the batch in a fixed order.
    let mut dsinks = vec![0f64; s.q_heads()];
    for per_b in dsink_bh.chunks(s.q_heads()) {
        dsinks.iter_mut().zip(per_b).for_each(|(a, x)| *a += x);
    }
    ReferenceGrads { dq, dk, dv: dvv, dsinks, off_argmax, key_grad }
}

/// The f64 dQ of query rows `(b, h, i)` only (each O(Nk·d)): what the
/// harness checks sampled rows of a large backward run against. Same
/// arithmetic as [`reference_backward`].
pub fn reference_dq_rows<T: Element>(
    inputs: &BackwardInputs<'_, T>,
    params: &AttnParams,
    rows: &[(usize, usize, usize)],
) -> Vec<Vec<f64>> {
    let s = *inputs.shape();
    let mods = ScoreMods::new(params, s.q_heads());
    rows.par_iter()
        .map(|&at| {
            let mut dq = vec![0f64; s.head_dim()];
            let mut dk = vec![0f64; s.kv_len() * s.head_dim()];
            let mut dv = vec![0f64; s.kv_len() * s.v_dim()];
            let mut kg = vec![0f64; s.kv_len()];
            let mut scratch = Scratch::default();
            row_grads(
                inputs,
                params,
                &mods,
                at,
                &mut dq,
                (&mut dk, &mut dv, &mut kg),
                &mut scratch,
            );
            dq
        })
        .collect()
}

/// Reusable row buffers: the modified scores and the output row.
#[derive(Default)]
struct Scratch {
    scores: Vec<f64>,
    o: Vec<f64>,
}

/// What one row returns besides its gradients.
#[derive(Default)]
struct RowOut {
    /// Its contribution to the head's dsink (0 without sinks).
    dsink: f64,
    /// `Σ_j |dS_j|`.
    abs_sum: f64,
    /// `|dS|` at the row's argmax (the first key of largest weight).
    abs_at_argmax: f64,
}

impl RowOut {
    fn off_argmax_share(&self) -> f64 {
        if self.abs_sum > 0.0 { (self.abs_sum - self.abs_at_argmax) / self.abs_sum } else { 0.0 }
    }
}

/// One query row `(b, h, i)`: its dq into `dq`, its contributions to the
/// head's `dk` `[Nk][d]`, `dv` `[Nk][dv]` and `key_grad` `[Nk]` (`|dS|`);
/// returns its dsink contribution and its score-gradient mass.
fn row_grads<T: Element>(
    inputs: &BackwardInputs<'_, T>,
    params: &AttnParams,
    mods: &ScoreMods<'_>,
    (b, h, i): (usize, usize, usize),
    dq: &mut [f64],
    (dk, dv, key_grad): (&mut [f64], &mut [f64], &mut [f64]),
    Scratch { scores, o }: &mut Scratch,
) -> RowOut {
    let s = inputs.shape();
    let (d, dvn) = (s.head_dim(), s.v_dim());
    let g = s.kv_head_of(h);
    let keys = params.key_range(i, s.q_len(), s.kv_len());
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (d as f64).sqrt());
    let x = |e: &T| e.to_f32() as f64;
    let (q, k, v) = (&inputs.fwd.q, &inputs.fwd.k, &inputs.fwd.v);
    // The forward row: `scores` holds the modified s_j of the visible keys.
    o.clear();
    o.resize(dvn, 0.0);
    let at = RowAt::in_call(mods, params, (b, h, i), s.q_len(), s.kv_len());
    let (kr, vr) = (|j| k.row(b, g, j), |j| v.row(b, g, j));
    reference_row(q.row(b, h, i), keys.clone(), scale, at, kr, vr, scores, o);
    if scores.iter().all(|s| *s == f64::NEG_INFINITY) {
        return RowOut::default(); // no key left: o = 0, nothing flows back
    }
    let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sink = mods.sink(h).map(f64::from);
    let m = sink.map_or(top, |sk| top.max(sk));
    let z =
        scores.iter().map(|sj| (sj - m).exp()).sum::<f64>() + sink.map_or(0.0, |sk| (sk - m).exp());
    let qi: Vec<f64> = q.row(b, h, i).iter().map(x).collect();
    let doi: Vec<f64> = inputs.d_out.row(b, h, i).iter().map(|&e| e as f64).collect();
    let dd: f64 = doi.iter().zip(o.iter()).map(|(a, c)| a * c).sum();
    let cap = mods.softcap.map(f64::from);
    let mut r = RowOut::default();
    let mut p_best = 0f64;
    for (j, sj) in keys.zip(scores.iter()) {
        let pj = (sj - m).exp() / z;
        if pj == 0.0 {
            continue; // a −inf score, or a weight below f64: no gradient
        }
        let vj = v.row(b, g, j);
        let dp: f64 = doi.iter().zip(vj).map(|(a, c)| a * x(c)).sum();
        let ds = pj * (dp - dd) * cap.map_or(1.0, |c| 1.0 - (sj / c) * (sj / c));
        r.abs_sum += ds.abs();
        key_grad[j] += ds.abs();
        if pj > p_best {
            (p_best, r.abs_at_argmax) = (pj, ds.abs());
        }
        for (c, kc) in k.row(b, g, j).iter().enumerate() {
            dq[c] += scale * ds * x(kc);
            dk[j * d + c] += scale * ds * qi[c];
        }
        for c in 0..dvn {
            dv[j * dvn + c] += pj * doi[c];
        }
    }
    r.dsink = sink.map_or(0.0, |sk| -(sk - m).exp() / z * dd);
    r
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
    /// f64 copies of the three gradients and one dsink per (batch, head).
    fn backward_workspace_bytes(&self, shape: &AttnShape, _: &AttnParams, _: Par) -> usize {
        let n = |dims: [usize; 4]| dims.iter().product::<usize>();
        let heads = shape.batch() * shape.q_heads();
        8 * (n(shape.q_dims()) + n(shape.k_dims()) + n(shape.v_dims()) + heads)
    }

    /// f64 throughout, on the call's threads; rounded to f32 at the end
    /// (dsinks too, when the caller asks for them).
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
        if let Some(ds) = g.dsinks.as_deref_mut() {
            ds.iter_mut().zip(&r.dsinks).for_each(|(o, x)| *o = *x as f32);
        }
        if let Some(st) = call.stats() {
            st.off_argmax.iter_mut().zip(&r.off_argmax).for_each(|(o, x)| *o = *x as f32);
            st.key_grad.iter_mut().zip(&r.key_grad).for_each(|(o, x)| *o = *x as f32);
        }
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::reference;
    use attn_core::{Alibi, AttnInputs, Layout, Mask, TensorView};

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

    /// Every gradient element (dq, dk, dv and, with sinks, dsinks) against
    /// a central finite difference of the f64 forward with step h = 2⁻¹⁰
    /// (exact in f32 on the dyadic inputs): the truncation error is
    /// O(h²·|f'''|) ≈ 1e-6·|f'''| and the f64 round-off ~1e-16/h ≈ 1e-13,
    /// so 2e-5 absolute (the gradients are O(1) here) leaves room for
    /// third derivatives up to ~20 (a softcap c ≥ 0.5 keeps tanh's ≤ 2/c²
    /// within that). Returns the largest |gradient|, so that callers can
    /// check the comparison is not vacuous.
    fn check_fd(what: &str, s: AttnShape, p: &AttnParams) -> f64 {
        let n = |dims: [usize; 4]| dims.iter().product::<usize>();
        let (q, k, v) =
            (dyadic(n(s.q_dims()), 1), dyadic(n(s.k_dims()), 2), dyadic(n(s.v_dims()), 3));
        let d_o = dyadic(n(s.out_dims()), 4);
        let fwd = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
        let r = reference(&fwd, p);
        let out: Vec<f32> = r.out.iter().map(|&x| x as f32).collect();
        let lse: Vec<f32> = r.lse.iter().map(|&x| x as f32).collect();
        let inp =
            BackwardInputs::from_slices(s, Layout::Bhnd, &q, &k, &v, &out, &lse, &d_o).unwrap();
        let g = reference_backward(&inp, p);
        assert_eq!(g.dsinks.len(), s.q_heads());
        let h = 1.0f32 / 1024.0;
        let fd_of = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / (2.0 * h as f64);
        let check = |name: &str, idx: usize, fd: f64, want: f64| {
            let e = (fd - want).abs();
            assert!(e < 2e-5, "{what} {s:?} {name}[{idx}]: fd {fd} vs {want}");
        };
        for (which, grad) in [(0, &g.dq), (1, &g.dk), (2, &g.dv)] {
            for idx in 0..grad.len() {
                let fd = fd_of(&|dx| {
                    let (mut q2, mut k2, mut v2) = (q.clone(), k.clone(), v.clone());
                    [&mut q2, &mut k2, &mut v2][which][idx] += dx;
                    objective(s, p, &q2, &k2, &v2, &d_o)
                });
                check(["dq", "dk", "dv"][which], idx, fd, grad[idx]);
            }
        }
        match p.sinks {
            Some(sinks) => {
                for idx in 0..sinks.len() {
                    let fd = fd_of(&|dx| {
                        let mut s2 = sinks.to_vec();
                        s2[idx] += dx;
                        objective(s, &AttnParams { sinks: Some(&s2), ..*p }, &q, &k, &v, &d_o)
                    });
                    check("dsinks", idx, fd, g.dsinks[idx]);
                }
            }
            None => assert!(g.dsinks.iter().all(|x| *x == 0.0)),
        }
        g.dq.iter().chain(&g.dk).chain(&g.dv).fold(0f64, |a, x| a.max(x.abs()))
    }

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
            let big = check_fd("plain", s, &p);
            // the check is not vacuous: the gradients are far from zero
            assert!(big > 0.05, "{s:?}: largest gradient {big}");
        }
    }

    /// Each modifier alone and all combined, causal and not, MHA and GQA
    /// (and MQA with Nq > Nk: fully masked rows), against finite
    /// differences — dsinks included.
    #[test]
    fn modifiers_match_finite_differences() {
        let cases = [
            (shape(2, 2, 3, 4, 2, 3), Mask::None),
            (shape(4, 2, 4, 5, 3, 2), Mask::Causal),
            (shape(3, 1, 5, 3, 2, 2), Mask::Causal), // MQA, rows 0-1 see nothing
            (shape(2, 1, 4, 4, 2, 2), Mask::Window { left: Some(1), right: Some(0) }),
        ];
        for (s, mask) in cases {
            let hq = s.q_heads();
            let sinks: Vec<f32> = (0..hq).map(|h| [0.25, -0.5, 1.0, 0.0][h % 4]).collect();
            let slopes: Vec<f32> = (0..hq).map(|h| 0.125 + 0.25 * h as f32).collect();
            // A full bias [B, Hq, Nq, Nk] with two −inf entries (key 0 of
            // row 0 of each head, and one more), and one broadcast over
            // the heads [1, 1, Nq, Nk].
            let mut full = dyadic(hq * s.q_len() * s.kv_len(), 5);
            full.iter_mut().step_by(s.q_len() * s.kv_len()).for_each(|x| *x = f32::NEG_INFINITY);
            full[s.kv_len() + 1] = f32::NEG_INFINITY;
            let bcast = dyadic(s.q_len() * s.kv_len(), 6);
            let bias_full =
                TensorView::new("bias", &full, [1, hq, s.q_len(), s.kv_len()], Layout::Bhnd)
                    .unwrap();
            let bias_b =
                TensorView::new("bias", &bcast, [1, 1, s.q_len(), s.kv_len()], Layout::Bhnd)
                    .unwrap();
            let base = AttnParams { scale: Some(0.7), ..AttnParams::with_mask(mask) };
            let mods: [(&str, AttnParams); 8] = [
                ("softcap", AttnParams { softcap: Some(0.75), ..base }),
                ("softcap wide", AttnParams { softcap: Some(30.0), ..base }),
                ("alibi", AttnParams { alibi: Some(Alibi::Slopes(&slopes)), ..base }),
                ("alibi default", AttnParams { alibi: Some(Alibi::Default), ..base }),
                ("bias", AttnParams { bias: Some(bias_full), ..base }),
                ("bias broadcast", AttnParams { bias: Some(bias_b), ..base }),
                ("sinks", AttnParams { sinks: Some(&sinks), ..base }),
                (
                    "all",
                    AttnParams {
                        softcap: Some(1.5),
                        alibi: Some(Alibi::Slopes(&slopes)),
                        sinks: Some(&sinks),
                        bias: Some(bias_full),
                        ..base
                    },
                ),
            ];
            for (what, p) in mods {
                p.validate_for(&s).unwrap();
                let big = check_fd(what, s, &p);
                assert!(big > 0.02, "{what} {s:?}: largest gradient {big}");
            }
        }
    }

    /// The sink gradient is far from zero where it is checked, and a row
    /// whose every key is masked by a −inf bias (output 0, LSE = sink)
    /// contributes nothing, to dsink or anything else.
    #[test]
    fn dsinks_are_not_vacuous_and_bias_masked_rows_are_inert() {
        let s = shape(2, 1, 3, 3, 2, 2);
        let n = |dims: [usize; 4]| dims.iter().product::<usize>();
        let (q, k, v) =
            (dyadic(n(s.q_dims()), 1), dyadic(n(s.k_dims()), 2), dyadic(n(s.v_dims()), 3));
        let d_o = dyadic(n(s.out_dims()), 4);
        let (o, lse) = (vec![0f32; n(s.out_dims())], vec![0f32; s.lse_len()]);
        let inp = BackwardInputs::from_slices(s, Layout::Bhnd, &q, &k, &v, &o, &lse, &d_o).unwrap();
        let sinks = [0.5f32, -0.25];
        let mut bias = vec![0f32; 9];
        bias[3..6].fill(f32::NEG_INFINITY); // row 1 of every head
        let bv = TensorView::new("bias", &bias, [1, 1, 3, 3], Layout::Bhnd).unwrap();
        let p = AttnParams { sinks: Some(&sinks), bias: Some(bv), ..Default::default() };
        let g = reference_backward(&inp, &p);
        assert!(g.dsinks.iter().all(|x| x.abs() > 1e-3), "{:?}", g.dsinks);
        for h in 0..2 {
            assert_eq!(&g.dq[(h * 3 + 1) * 2..][..2], &[0.0, 0.0]);
        }
        // Row 1 removed from dO: the same gradients.
        let mut d_o2 = d_o.clone();
        for h in 0..2 {
            d_o2[(h * 3 + 1) * 2..][..2].fill(0.0);
        }
        let inp2 =
            BackwardInputs::from_slices(s, Layout::Bhnd, &q, &k, &v, &o, &lse, &d_o2).unwrap();
        assert_eq!(reference_backward(&inp2, &p), g);
        // Through the kernel: dsinks written when asked for.
        let (mut dq, mut dk, mut dv) = (vec![0f32; 12], vec![0f32; 6], vec![0f32; 6]);
        let mut ds = [f32::NAN; 2];
        let mut gm =
            attn_core::GradsMut::from_slices(&s, Layout::Bhnd, &mut dq, &mut dk, &mut dv).unwrap();
        gm.dsinks = Some(&mut ds);
        crate::Oracle.backward(&inp, &mut gm, &p, Par::Seq).unwrap();
        assert_eq!(ds, [g.dsinks[0] as f32, g.dsinks[1] as f32]);
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
