//! The FlashAttention-2 backward pass: dQ, dK, dV from Q, K, V, the
//! forward's O and LSE, and dO, recomputing `P` tile by tile from the LSE
//! in `O(N)` extra memory: per-row statistics (`O(B·Hq·Nq)`), the per-worker
//! tiles and, when `B·Hkv` is under 8, `C − 1` dQ partials of
//! `B·Hq·Nq·d` floats for its `C` key chunks (see `docs/design.md`).
//!
//! A call runs in three steps:
//!
//! 1. **Rows first**: `D = rowsum(dO∘O)` and `LSE·log2 e` for every
//!    query row (`+inf` for a fully masked row, so that its `P` is 0);
//!    dQ, dK, dV and the dQ partials are zeroed. With sinks, the same pass
//!    sums `exp(sink_h − lse_i)·D_i` per (batch, head) in row order, and
//!    `dsinks[h] = −Σ_b` of those in batch order (fixed orders, so the bits
//!    do not depend on the thread count).
//! 2. **The loop nest** (`nest`): work items of (batch, K/V head, chunk of
//!    its K/V tiles), K/V tiles outer and query tiles inner; each item
//!    owns its tiles' dK, dV and adds into the dQ rows of its chunk.
//! 3. **dQ reduction**: when a head's keys were split into `C > 1`
//!    chunks, `dQ += partial_1 + … + partial_{C−1}`, in that order.
//!
//! Statistics (`CheckedBackward::with_stats`, `attn_core::stats`): the loop
//! nest adds each pair's `|dS|` to its keys' `key_grad` and to per-chunk
//! row partials (`stats`), which a last step merges in chunk order into
//! `off_argmax`. They cost one pass over each pair's `P` and `dS` tiles
//! and `3·C·B·Hq·Nq + B·Hkv·Nk` floats, allocated by the call; nothing when not
//! asked (measured overhead in `stats`).
//!
//! Score modifiers: the bias, ALiBi and the softcap change the scores the
//! loop nest recomputes (`nest`); the LSE given already includes the sinks.
//! With `check_finite`, the bias entries the mask lets a row read are
//! scanned by the call's validation (`attn_core::CheckedBackward::new`).
//!
//! Determinism: the chunking is a function of the shape only (`plan`), each
//! chunk adds its K/V tiles' contributions to its own dQ target in tile
//! order, and the partials are summed in chunk order — so the result is
//! bitwise identical for any thread count, with no atomics on dQ. `C` is
//! 1 whenever `B·Hkv ≥ 8` (e.g. MHA with 8 heads), so the usual case has
//! no partials at all; the alternative, a second pass over query tiles for
//! dQ, would recompute `S`, `P` and `dP` — 7 products of `N²·d` instead of
//! 5, 40% more arithmetic — to save `(C − 1)·B·Hq·Nq·d` floats.

mod micro;
mod nest;
mod plan;
mod stats;
mod workspace;

use attn_core::{
    AttnError, AttnParams, AttnShape, BackwardInputs, BackwardKernel, CheckedBackward, Element,
    GradsMut, Layout, Par, TensorViewMut, try_zeroed,
};
use rayon::prelude::*;

use crate::Flash;
use crate::modify::Mods2;
use crate::rows::RowWriter;
use nest::BwdJob;
use plan::BwdPlan;
use stats::{Disjoint, RowArg, StatsOut};
pub use workspace::BackwardWorkspace;

impl Flash {
    /// Allocates the scratch of a backward call on `shape` with `params`
    /// and `par`: exactly [`BackwardKernel::backward_workspace_bytes`].
    pub fn backward_workspace(
        &self,
        shape: &AttnShape,
        params: &AttnParams,
        par: Par,
    ) -> Result<BackwardWorkspace, AttnError> {
        BackwardWorkspace::new(shape, BwdPlan::new(shape, &params.mask), par)
    }

    /// Like [`BackwardKernel::backward`], on a caller-provided workspace
    /// (from [`Flash::backward_workspace`] for a shape with the same head
    /// dims, at most as many rows and no more dQ partials — the key
    /// chunking depends on `B·Hkv` — and at least as many threads; a
    /// workspace that does not fit is an error): the call allocates
    /// nothing on the calling thread (with ALiBi, but for its `Hq` slopes).
    pub fn backward_in<T: Element>(
        &self,
        inputs: &BackwardInputs<'_, T>,
        grads: &mut GradsMut<'_>,
        params: &AttnParams,
        par: Par,
        ws: &mut BackwardWorkspace,
    ) -> Result<(), AttnError> {
        run(CheckedBackward::new(inputs, grads, params, par)?, ws)
    }
}

impl BackwardKernel for Flash {
    /// `2·B·Hq·Nq` floats of per-row values, `B·Hq` of per-head sink
    /// sums, the dQ partials
    /// (`(C − 1)·B·Hq·Nq·d` floats; `C = 1` when `B·Hkv ≥ 8`), and one
    /// tile set per worker (`~5·Bc·d + 2·Br·Bc` floats): linear in `Nq`,
    /// independent of `Nk` — never `O(N²)`. A call that asks for
    /// statistics (`CheckedBackward::with_stats`) allocates `3·C·B·Hq·Nq +
    /// B·Hkv·Nk` floats more, not counted here (this size does not know whether a
    /// call will ask; [`Flash::backward_in`] never does).
    fn backward_workspace_bytes(&self, shape: &AttnShape, params: &AttnParams, par: Par) -> usize {
        BackwardWorkspace::bytes_for(shape, &BwdPlan::new(shape, &params.mask), par)
    }

    fn run_backward<T: Element>(&self, call: CheckedBackward<'_, '_, T>) -> Result<(), AttnError> {
        let plan = BwdPlan::new(call.shape(), &call.params().mask);
        let mut ws = BackwardWorkspace::new(call.shape(), plan, call.par())?;
        run(call, &mut ws)
    }
}

/// The three steps of the module docs on a validated call, and the
/// statistics when asked: their row partials `[C][B·Hq·Nq]` and key masses
/// `[B·Hkv·Nk]` are allocated here (the key masses are copied out at the
/// end, when the gradients' writers no longer hold the call).
fn run<T: Element>(
    mut call: CheckedBackward<'_, '_, T>,
    ws: &mut BackwardWorkspace,
) -> Result<(), AttnError> {
    let (inputs, params, par) = (call.inputs(), call.params(), call.par());
    let shape = *inputs.shape();
    let plan = BwdPlan::new(&shape, &params.mask);
    ws.check_fits(&shape, &plan, par)?;
    let (nq, rows) = (shape.q_len(), shape.lse_len());
    let keys = shape.batch() * shape.kv_heads() * shape.kv_len();
    let (mut row_args, mut key_grad) = match call.stats() {
        Some(st) => {
            st.off_argmax.fill(0.0);
            st.key_grad.fill(0.0);
            let rows = if nq == 0 || shape.kv_len() == 0 { 0 } else { plan.chunks * rows };
            (try_zeroed::<RowArg>("workspace", rows)?, Some(try_zeroed::<f32>("workspace", keys)?))
        }
        None => (Vec::new(), None),
    };
    let grads = call.grads();
    grads.dq.data_mut().fill(0.0);
    grads.dk.data_mut().fill(0.0);
    grads.dv.data_mut().fill(0.0);
    if let Some(ds) = grads.dsinks.as_deref_mut() {
        ds.fill(0.0);
    }
    if nq == 0 || shape.kv_len() == 0 {
        // no row sees a key: D = 0 for every row, so dsinks stays 0 (and
        // the statistics, zeroed above)
        return Ok(());
    }
    let partial_len = plan.partial_len(&shape);
    let heads = shape.batch() * shape.q_heads();
    let BackwardWorkspace { dd, lse2, sink, partial, workers, .. } = ws;
    let (dd, lse2, partial) = (&mut dd[..rows], &mut lse2[..rows], &mut partial[..partial_len]);
    let sink = &mut sink[..heads];
    partial.fill(0.0);
    let mods = Mods2::new(params, shape.q_heads());
    let n = BackwardWorkspace::workers_for(&shape, &plan, par);
    let pdims = [(plan.chunks - 1) * shape.batch(), shape.q_heads(), nq, shape.head_dim()];
    let mut pview = TensorViewMut::new("workspace", partial, pdims, Layout::Bhnd)?;
    let GradsMut { dq, dk, dv, dsinks } = grads;
    // the sink gradient is asked for only with sinks (CheckedBackward)
    let sinks = params.sinks.filter(|_| dsinks.is_some());
    let stats = key_grad
        .as_deref_mut()
        .map(|kg| StatsOut { rows: Disjoint::new(&mut row_args), key_grad: Disjoint::new(kg) });
    par.install(|| {
        row_values(inputs, sinks, (dd, lse2, sink), par.threads() > 1);
        if let Some(ds) = dsinks.as_deref_mut() {
            for (h, x) in ds.iter_mut().enumerate() {
                *x = -(0..shape.batch()).map(|b| sink[b * shape.q_heads() + h]).sum::<f32>();
            }
        }
        let job = BwdJob {
            inputs,
            params,
            mods: &mods,
            plan,
            dd,
            lse2,
            dq: RowWriter::new(dq),
            partial: RowWriter::new(&mut pview),
            dk: RowWriter::new(dk),
            dv: RowWriter::new(dv),
            stats,
        };
        job.run(&mut workers[..n]);
        if plan.chunks > 1 {
            reduce_partials(&shape, &plan, job.dq, job.partial, par.threads() > 1);
        }
    })?;
    if let (Some(st), Some(kg)) = (call.stats(), key_grad) {
        st.key_grad.copy_from_slice(&kg);
        // O(C·rows) on the calling thread, next to the call's O(rows·Nk·d)
        stats::finish(st.off_argmax, &row_args, plan.chunks);
    }
    Ok(())
}

/// `dd = rowsum(dO∘O)` and `lse2 = LSE·log2 e` (`+inf` for a fully
/// masked row) for every query row, `[B·Hq·Nq]`; with `sinks`, also
/// `sink[b·Hq + h] = Σ_i exp(sink_h − lse_i)·rowsum(dO∘O)_i` over the rows
/// of `(b, h)` in order (a row with LSE `−inf` adds nothing).
fn row_values<T: Element>(
    inputs: &BackwardInputs<'_, T>,
    sinks: Option<&[f32]>,
    (dd, lse2, sink): (&mut [f32], &mut [f32], &mut [f32]),
    parallel: bool,
) {
    let s = inputs.shape();
    let nq = s.q_len();
    let head = |bh: usize, d: &mut [f32], l: &mut [f32], sk: &mut f32| {
        let (b, h) = (bh / s.q_heads(), bh % s.q_heads());
        let logit = sinks.map(|x| x[h]);
        let mut acc = 0f32;
        for i in 0..nq {
            let (o, g) = (inputs.out.row(b, h, i), inputs.d_out.row(b, h, i));
            let dot = o.iter().zip(g).map(|(x, y)| x * y).sum::<f32>();
            d[i] = dot;
            let lse = inputs.lse[bh * nq + i];
            l[i] = if lse == f32::NEG_INFINITY { f32::INFINITY } else { lse * attn_simd::LOG2_E };
            if let Some(sl) = logit
                && lse != f32::NEG_INFINITY
            {
                acc += (sl - lse).exp() * dot;
            }
        }
        *sk = acc;
    };
    if parallel {
        dd.par_chunks_mut(nq)
            .zip(lse2.par_chunks_mut(nq))
            .zip(sink.par_iter_mut())
            .enumerate()
            .for_each(|(bh, ((d, l), sk))| head(bh, d, l, sk));
    } else {
        for (bh, ((d, l), sk)) in
            dd.chunks_mut(nq).zip(lse2.chunks_mut(nq)).zip(sink.iter_mut()).enumerate()
        {
            head(bh, d, l, sk);
        }
    }
}

/// `dQ += partial_1 + … + partial_{C−1}` in chunk order, per query row
/// (heads in parallel on the current pool when `parallel`, else on the
/// calling thread; the order within a row is fixed either way).
fn reduce_partials(
    shape: &AttnShape,
    plan: &BwdPlan,
    dq: RowWriter<'_>,
    partial: RowWriter<'_>,
    parallel: bool,
) {
    let (nb, hq, nq) = (shape.batch(), shape.q_heads(), shape.q_len());
    let head = |bh: usize| {
        let (b, h) = (bh / hq, bh % hq);
        for i in 0..nq {
            // SAFETY: each (b, h) is reduced by one task; the loop nest has
            // finished, so nothing else references these rows.
            let row = unsafe { dq.row_mut(b, h, i) };
            for c in 1..plan.chunks {
                // SAFETY: as above (partial rows of this (b, h) only).
                let p = unsafe { partial.row_mut((c - 1) * nb + b, h, i) };
                row.iter_mut().zip(&*p).for_each(|(x, y)| *x += y);
            }
        }
    };
    if parallel {
        (0..nb * hq).into_par_iter().for_each(head);
    } else {
        (0..nb * hq).for_each(head);
    }
}

/// The backward's tiles `(Br, Bc)`: query rows and key rows per tile,
/// fixed (see `plan.rs`), for reports.
pub fn tiles() -> (usize, usize) {
    (plan::BR, plan::BC)
}
