//! The O(N²) backward: materialise `P`, `dP` and `dS` for every head, as
//! framework autograd does, with blocked GEMMs (`matrixmultiply`). Per
//! (batch, K/V head), for each query head `h` of its group, in f32:
//!
//! ```text
//! P[Nq×Nk]  = 2^(Q·Kᵀ·(scale·log2 e) − LSE·log2 e)   sgemm + exp2, 0 where masked
//! dP[Nq×Nk] = dO·Vᵀ·scale                              sgemm
//! dS        = P∘(dP − scale·D),  D = rowsum(dO∘O)
//! dV += Pᵀ·dO    dK += dSᵀ·Q    dQ_h = dS·K            sgemm ×3
//! ```
//!
//! With score modifiers, the scores are recomputed exactly as the forward
//! forms them (`Q·Kᵀ·scale`, then `modify_row`: bias, ALiBi, softcap,
//! then `·log2 e`); the LSE already holds the sink. A softcap multiplies
//! `dS` by `1 − (s/c)²` of the capped score `s` (its derivative), and the
//! sink's gradient is `dsink_h = −Σ_{b,i} exp(sink_h − LSE_i)·D_i`, summed
//! in f32 per (batch, head) and then over the batch in order.
//!
//! The three `[B, Hq, Nq, Nk]` tensors are allocated up front (that is the
//! baseline's point: `3·B·Hq·Nq·Nk·4` bytes). Work runs in parallel over
//! the K/V heads, each summing its group's query heads in order, so the
//! result does not depend on the thread count.

use attn_core::{
    AttnError, AttnParams, AttnShape, BackwardKernel, CheckedBackward, Element, HeadRowsMut, Par,
    ScoreMods, TensorView, try_zeroed,
};
use attn_simd::{LOG2_E, exp2_shift_sum};
use rayon::prelude::*;

use crate::Naive;
use crate::naive::{modify_row, widened};

/// f32 views of what one head's GEMMs read.
struct Views<'a> {
    q: TensorView<'a, f32>,
    k: TensorView<'a, f32>,
    v: TensorView<'a, f32>,
    out: TensorView<'a, f32>,
    d_out: TensorView<'a, f32>,
    lse: &'a [f32],
}

/// One K/V head's outputs: its dK and dV rows, the dQ rows of its group's
/// query heads and, when asked for, their sink gradients of this batch
/// entry.
struct HeadOut<'g> {
    dk: HeadRowsMut<'g>,
    dv: HeadRowsMut<'g>,
    dq: Vec<HeadRowsMut<'g>>,
    dsink: Option<&'g mut [f32]>,
}

/// Per-worker products before they are copied into the strided outputs.
#[derive(Default)]
struct Tmp {
    dk: Vec<f32>,
    dv: Vec<f32>,
    dq: Vec<f32>,
}

/// `C[m×n] = alpha·A·B + beta·C` on strided f32 matrices.
///
/// # Safety
/// Each pointer with its strides must describe a matrix of the given
/// size inside one live allocation, and `c` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    (m, k, n): (usize, usize, usize),
    alpha: f32,
    (a, rsa, csa): (*const f32, usize, usize),
    (b, rsb, csb): (*const f32, usize, usize),
    beta: f32,
    (c, rsc): (*mut f32, usize),
) {
    // SAFETY: the caller's contract.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a,
            rsa as isize,
            csa as isize,
            b,
            rsb as isize,
            csb as isize,
            beta,
            c,
            rsc as isize,
            1,
        )
    }
}

impl BackwardKernel for Naive {
    /// `P`, `dP` and `dS` for every head (`3·B·Hq·Nq·Nk·4` bytes), plus
    /// per worker one `Nk×(d+dv) + Nq×d` product buffer, plus one sink
    /// gradient per (batch, head) with sinks (f16/bf16 inputs add their
    /// f32 copies, not counted). Saturates instead of overflowing.
    fn backward_workspace_bytes(&self, shape: &AttnShape, params: &AttnParams, par: Par) -> usize {
        let heads = shape.batch() * shape.q_heads();
        let per = shape.q_len().saturating_mul(shape.kv_len());
        let mats = heads.saturating_mul(per).saturating_mul(3);
        let (nk, nq, d, dv) = (shape.kv_len(), shape.q_len(), shape.head_dim(), shape.v_dim());
        let workers = par.threads().min(shape.batch() * shape.kv_heads());
        let tmp = workers.saturating_mul(nk * (d + dv) + nq * d);
        let sinks = if params.sinks.is_some() { heads } else { 0 };
        mats.saturating_add(tmp).saturating_add(sinks).saturating_mul(4)
    }

    fn run_backward<T: Element>(
        &self,
        mut call: CheckedBackward<'_, '_, T>,
    ) -> Result<(), AttnError> {
        if call.stats().is_some() {
            return Err(AttnError::Unsupported {
                what: "backward statistics in the naive kernel (use flash or the oracle)".into(),
            });
        }
        let (inputs, params, par) = (call.inputs(), call.params(), call.par());
        let shape = *inputs.shape();
        let (q, k, v) = (widened(&inputs.fwd.q), widened(&inputs.fwd.k), widened(&inputs.fwd.v));
        let f = &inputs.fwd;
        let views = Views {
            q: TensorView::new("q", &q, f.q.dims(), f.q.layout())?,
            k: TensorView::new("k", &k, f.k.dims(), f.k.layout())?,
            v: TensorView::new("v", &v, f.v.dims(), f.v.layout())?,
            out: inputs.out,
            d_out: inputs.d_out,
            lse: inputs.lse,
        };
        let grp = shape.group_size();
        // The three score-sized buffers: sizes checked, since the GEMMs
        // below write them through raw pointers.
        let overflow = AttnError::Overflow { tensor: "P" };
        let chunk = [grp, shape.q_len(), shape.kv_len()]
            .iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .ok_or(overflow.clone())?
            .max(1);
        let n = [shape.batch(), shape.kv_heads(), chunk]
            .iter()
            .try_fold(1usize, |a, &x| a.checked_mul(x))
            .ok_or(overflow)?;
        let mut p = try_zeroed::<f32>("P", n)?;
        let mut dp = try_zeroed::<f32>("dP", n)?;
        let mut ds = try_zeroed::<f32>("dS", n)?;
        let mods = ScoreMods::new(params, shape.q_heads());
        let g = call.grads();
        // dsink of each (b, h), in K/V-head order: (b·Hkv + g)·grp + hi = b·Hq + h.
        let mut dsink_bh = match g.dsinks {
            Some(_) => try_zeroed::<f32>("dsinks", shape.batch() * shape.q_heads())?,
            None => Vec::new(),
        };
        let mut dsink_parts = dsink_bh.chunks_mut(grp.max(1));
        let mut dq_heads = g.dq.heads_mut().into_iter();
        let heads: Vec<HeadOut<'_>> =
            g.dk.heads_mut()
                .into_iter()
                .zip(g.dv.heads_mut())
                .map(|(dk, dv)| HeadOut {
                    dk,
                    dv,
                    dq: dq_heads.by_ref().take(grp).collect(),
                    dsink: dsink_parts.next(),
                })
                .collect();
        let work = |((p, dp), ds): ((&mut [f32], &mut [f32]), &mut [f32]), o, t: &mut Tmp| {
            kv_head(&shape, &views, params, &mods, [p, dp, ds], o, t)
        };
        par.install(|| {
            if par.threads() == 1 {
                let mut t = Tmp::default();
                let mats = p.chunks_mut(chunk).zip(dp.chunks_mut(chunk)).zip(ds.chunks_mut(chunk));
                mats.zip(heads).for_each(|(m, o)| work(m, o, &mut t));
            } else {
                let mats = p.par_chunks_mut(chunk).zip(dp.par_chunks_mut(chunk));
                mats.zip(ds.par_chunks_mut(chunk))
                    .zip(heads)
                    .for_each_init(Tmp::default, |t, (m, o)| work(m, o, t));
            }
        })?;
        if let Some(dsinks) = g.dsinks.as_deref_mut() {
            dsinks.fill(0.0);
            for per_b in dsink_bh.chunks(shape.q_heads()) {
                dsinks.iter_mut().zip(per_b).for_each(|(a, x)| *a += x);
            }
        }
        Ok(())
    }
}

/// One K/V head `(b, g)`: every query head of its group in order.
fn kv_head(
    shape: &AttnShape,
    x: &Views<'_>,
    params: &AttnParams,
    mods: &ScoreMods<'_>,
    [p, dp, ds]: [&mut [f32]; 3],
    mut o: HeadOut<'_>,
    t: &mut Tmp,
) {
    let (nq, nk, d, dv) = (shape.q_len(), shape.kv_len(), shape.head_dim(), shape.v_dim());
    let (b, g) = (o.dk.batch(), o.dk.head());
    let scale = params.scale_for(d);
    // Modified scores are formed in natural units, then taken to log2.
    let touches = mods.touches_scores();
    let alpha = scale * if touches { 1.0 } else { LOG2_E };
    t.dk.clear();
    t.dk.resize(nk * d, 0.0);
    t.dv.clear();
    t.dv.resize(nk * dv, 0.0);
    t.dq.resize(nq * d, 0.0);
    let (ks, vs) = (x.k.row_stride(), x.v.row_stride());
    let per = nq * nk;
    for (hi, dq_rows) in o.dq.iter_mut().enumerate() {
        let h = dq_rows.head();
        if nq == 0 {
            continue;
        }
        let (p, dp, ds) = (
            &mut p[hi * per..(hi + 1) * per],
            &mut dp[hi * per..(hi + 1) * per],
            &mut ds[hi * per..(hi + 1) * per],
        );
        t.dq.fill(0.0);
        if nk > 0 {
            let kp = x.k.data()[x.k.offset(b, g, 0)..].as_ptr();
            let vp = x.v.data()[x.v.offset(b, g, 0)..].as_ptr();
            let qp = x.q.data()[x.q.offset(b, h, 0)..].as_ptr();
            let dop = x.d_out.data()[x.d_out.offset(b, h, 0)..].as_ptr();
            let (qs, dos) = (x.q.row_stride(), x.d_out.row_stride());
            // The five products read matrices inside their buffers: the
            // views checked the buffer lengths, so Q/dO (Nq rows) and K/V
            // (Nk rows) with their row strides lie in them; P, dP, dS are
            // this head's Nq·Nk chunks and dK, dV, dQ the Nk×d, Nk×dv,
            // Nq×d product buffers.
            // SAFETY: as just stated; outputs never alias inputs.
            unsafe {
                gemm((nq, d, nk), alpha, (qp, qs, 1), (kp, 1, ks), 0.0, (p.as_mut_ptr(), nk));
                gemm((nq, dv, nk), scale, (dop, dos, 1), (vp, 1, vs), 0.0, (dp.as_mut_ptr(), nk));
            }
            let lse_base = (b * shape.q_heads() + h) * nq;
            let sink = mods.sink(h);
            let mut dsink = 0f32;
            for i in 0..nq {
                let keys = params.mask.key_range(i, nq, nk);
                let row = &mut p[i * nk..(i + 1) * nk];
                let dsr = &mut ds[i * nk..(i + 1) * nk];
                let lse = x.lse[lse_base + i];
                if keys.is_empty() || lse == f32::NEG_INFINITY {
                    row.fill(0.0);
                    dsr.fill(0.0);
                    continue;
                }
                row[..keys.start].fill(0.0);
                row[keys.end..].fill(0.0);
                dsr[..keys.start].fill(0.0);
                dsr[keys.end..].fill(0.0);
                let (j0, vis, dsv) = (keys.start, &mut row[keys.clone()], &mut dsr[keys.clone()]);
                if touches {
                    let diag = i as i64 + nk as i64 - nq as i64;
                    modify_row(vis, mods, (b, h, i), diag, j0);
                    if let Some(c) = mods.softcap {
                        // the softcap's slope 1 − (s/c)², 0 for a −inf score
                        for (f, s) in dsv.iter_mut().zip(&*vis) {
                            let u = s / c;
                            *f = if *s == f32::NEG_INFINITY { 0.0 } else { u.mul_add(-u, 1.0) };
                        }
                    }
                    vis.iter_mut().for_each(|u| *u *= LOG2_E);
                }
                exp2_shift_sum(vis, 1.0, lse * LOG2_E);
                let d_i: f32 = x
                    .d_out
                    .row(b, h, i)
                    .iter()
                    .zip(x.out.row(b, h, i))
                    .map(|(a, c)| a * c)
                    .sum::<f32>();
                let dd = scale * d_i;
                let dpv = &dp[i * nk..(i + 1) * nk][keys];
                if mods.softcap.is_some() {
                    for ((s, pj), dpj) in dsv.iter_mut().zip(&*vis).zip(dpv) {
                        *s *= pj * (dpj - dd);
                    }
                } else {
                    for ((s, pj), dpj) in dsv.iter_mut().zip(&*vis).zip(dpv) {
                        *s = pj * (dpj - dd);
                    }
                }
                if let Some(sink) = sink {
                    dsink -= (sink - lse).exp() * d_i;
                }
            }
            if let Some(out) = o.dsink.as_deref_mut() {
                out[hi] = dsink;
            }
            // SAFETY: as above (the products' sizes are stated there).
            unsafe {
                gemm(
                    (nk, nq, dv),
                    1.0,
                    (p.as_ptr(), 1, nk),
                    (dop, dos, 1),
                    1.0,
                    (t.dv.as_mut_ptr(), dv),
                );
                gemm(
                    (nk, nq, d),
                    1.0,
                    (ds.as_ptr(), 1, nk),
                    (qp, qs, 1),
                    1.0,
                    (t.dk.as_mut_ptr(), d),
                );
                gemm(
                    (nq, nk, d),
                    1.0,
                    (ds.as_ptr(), nk, 1),
                    (kp, ks, 1),
                    0.0,
                    (t.dq.as_mut_ptr(), d),
                );
            }
        }
        for i in 0..nq {
            dq_rows.row_mut(i).copy_from_slice(&t.dq[i * d..(i + 1) * d]);
        }
    }
    for j in 0..nk {
        o.dk.row_mut(j).copy_from_slice(&t.dk[j * d..(j + 1) * d]);
        o.dv.row_mut(j).copy_from_slice(&t.dv[j * dv..(j + 1) * dv]);
    }
}
