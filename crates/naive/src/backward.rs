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
//! The three `[B, Hq, Nq, Nk]` tensors are allocated up front (that is the
//! baseline's point: `3·B·Hq·Nq·Nk·4` bytes). Work runs in parallel over
//! the K/V heads, each summing its group's query heads in order, so the
//! result does not depend on the thread count.

use attn_core::{
    AttnError, AttnParams, AttnShape, BackwardKernel, CheckedBackward, Element, HeadRowsMut, Par,
    TensorView, try_zeroed,
};
use attn_simd::{LOG2_E, exp2_shift_sum};
use rayon::prelude::*;

use crate::Naive;
use crate::naive::widened;

/// f32 views of what one head's GEMMs read.
struct Views<'a> {
    q: TensorView<'a, f32>,
    k: TensorView<'a, f32>,
    v: TensorView<'a, f32>,
    out: TensorView<'a, f32>,
    d_out: TensorView<'a, f32>,
    lse: &'a [f32],
}

/// One K/V head's outputs: its dK and dV rows and the dQ rows of its
/// group's query heads.
struct HeadOut<'g> {
    dk: HeadRowsMut<'g>,
    dv: HeadRowsMut<'g>,
    dq: Vec<HeadRowsMut<'g>>,
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
    /// per worker one `Nk×(d+dv) + Nq×d` product buffer (f16/bf16 inputs
    /// add their f32 copies, not counted). Saturates instead of overflowing.
    fn backward_workspace_bytes(&self, shape: &AttnShape, _: &AttnParams, par: Par) -> usize {
        let heads = shape.batch() * shape.q_heads();
        let per = shape.q_len().saturating_mul(shape.kv_len());
        let mats = heads.saturating_mul(per).saturating_mul(3);
        let (nk, nq, d, dv) = (shape.kv_len(), shape.q_len(), shape.head_dim(), shape.v_dim());
        let workers = par.threads().min(shape.batch() * shape.kv_heads());
        let tmp = workers.saturating_mul(nk * (d + dv) + nq * d);
        mats.saturating_add(tmp).saturating_mul(4)
    }

    fn run_backward<T: Element>(
        &self,
        mut call: CheckedBackward<'_, '_, T>,
    ) -> Result<(), AttnError> {
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
        let g = call.grads();
        let mut dq_heads = g.dq.heads_mut().into_iter();
        let heads: Vec<HeadOut<'_>> =
            g.dk.heads_mut()
                .into_iter()
                .zip(g.dv.heads_mut())
                .map(|(dk, dv)| HeadOut { dk, dv, dq: dq_heads.by_ref().take(grp).collect() })
                .collect();
        let work = |((p, dp), ds): ((&mut [f32], &mut [f32]), &mut [f32]), o, t: &mut Tmp| {
            kv_head(&shape, &views, params, [p, dp, ds], o, t)
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
        })
    }
}

/// One K/V head `(b, g)`: every query head of its group in order.
fn kv_head(
    shape: &AttnShape,
    x: &Views<'_>,
    params: &AttnParams,
    [p, dp, ds]: [&mut [f32]; 3],
    mut o: HeadOut<'_>,
    t: &mut Tmp,
) {
    let (nq, nk, d, dv) = (shape.q_len(), shape.kv_len(), shape.head_dim(), shape.v_dim());
    let (b, g) = (o.dk.batch(), o.dk.head());
    let scale = params.scale_for(d);
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
                gemm(
                    (nq, d, nk),
                    scale * LOG2_E,
                    (qp, qs, 1),
                    (kp, 1, ks),
                    0.0,
                    (p.as_mut_ptr(), nk),
                );
                gemm((nq, dv, nk), scale, (dop, dos, 1), (vp, 1, vs), 0.0, (dp.as_mut_ptr(), nk));
            }
            let lse_base = (b * shape.q_heads() + h) * nq;
            for i in 0..nq {
                let keys = params.mask.key_range(i, nq, nk);
                let row = &mut p[i * nk..(i + 1) * nk];
                let lse = x.lse[lse_base + i];
                if keys.is_empty() || lse == f32::NEG_INFINITY {
                    row.fill(0.0);
                    ds[i * nk..(i + 1) * nk].fill(0.0);
                    continue;
                }
                row[..keys.start].fill(0.0);
                row[keys.end..].fill(0.0);
                exp2_shift_sum(&mut row[keys], 1.0, lse * LOG2_E);
                let dd: f32 = scale
                    * x.d_out
                        .row(b, h, i)
                        .iter()
                        .zip(x.out.row(b, h, i))
                        .map(|(a, c)| a * c)
                        .sum::<f32>();
                for ((s, pj), dpj) in
                    ds[i * nk..(i + 1) * nk].iter_mut().zip(&*row).zip(&dp[i * nk..])
                {
                    *s = pj * (dpj - dd);
                }
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
