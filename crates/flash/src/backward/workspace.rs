//! The backward pass's scratch: `O(B·Hq·Nq)` shared vectors, the dQ
//! partials of a split call, and per-worker tiles. Never `O(N²)`.
//!
//! [`BackwardWorkspace::bytes_for`] and [`BackwardWorkspace::new`] derive
//! from the same sizes, so `backward_workspace_bytes` is exactly what a
//! call allocates.

use attn_core::{AttnError, AttnShape, Par, try_zeroed};
use wide::f32x16;

use super::plan::{BC, BR, BwdPlan, SROW};
use crate::tiles::NV;

/// One worker's buffers, sized by a [`BwdPlan`]; reused for every item.
#[derive(Debug)]
pub(crate) struct Scratch {
    /// `Kᵀ·scale·log2 e` of the K/V tile in panels of 32 keys:
    /// `[Bc/32][d]` of 32 lanes.
    pub ktp: Vec<[f32x16; NV]>,
    /// `Vᵀ` of the tile, the same way: `[Bc/32][dv]`.
    pub vtp: Vec<[f32x16; NV]>,
    /// `K·scale` rows of the tile, `[Bc][dpad]`, zero-padded.
    pub krow: Vec<f32>,
    /// `dK` and `dV` of the tile: `[Bc][dpad]`, `[Bc][dvpad]`.
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
    /// `P` and `dS` of the current (query tile, head): `[Br][SROW]`.
    pub p: Vec<f32>,
    pub ds: Vec<f32>,
    /// Q and dO rows when they cannot be read in place (f16/bf16 Q, or a
    /// head dim that is not a whole number of vectors): `[Br][dpad]`,
    /// `[Br][dvpad]`.
    pub qbuf: Vec<f32>,
    pub dobuf: Vec<f32>,
    /// Visible keys `lo..hi` of each query row of the tile.
    pub lo: Vec<usize>,
    pub hi: Vec<usize>,
}

impl Scratch {
    fn new(p: &BwdPlan) -> Result<Scratch, AttnError> {
        let f = |n: usize| try_zeroed::<f32>("workspace", n);
        Ok(Scratch {
            ktp: try_zeroed("workspace", BC / 32 * p.d)?,
            vtp: try_zeroed("workspace", BC / 32 * p.dv)?,
            krow: f(BC * p.dpad)?,
            dk: f(BC * p.dpad)?,
            dv: f(BC * p.dvpad)?,
            p: f(BR * SROW)?,
            ds: f(BR * SROW)?,
            qbuf: f(BR * p.dpad)?,
            dobuf: f(BR * p.dvpad)?,
            lo: try_zeroed("workspace", BR)?,
            hi: try_zeroed("workspace", BR)?,
        })
    }
}

/// Scratch memory for [`crate::Flash::backward_in`]: `D` and
/// `LSE·log2 e` of every query row (`2·B·Hq·Nq` floats), one sink-gradient
/// sum per (batch, query head) (`B·Hq`), the dQ partials
/// of the chunks past the first (`(C − 1)·B·Hq·Nq·d` floats, `C` = 1
/// unless `B·Hkv < 8`), and one scratch set per worker. (A call that asks
/// for statistics allocates their row partials itself, see
/// `BackwardKernel::backward_workspace_bytes`.)
#[derive(Debug)]
pub struct BackwardWorkspace {
    pub(crate) plan: BwdPlan,
    pub(crate) dd: Vec<f32>,
    pub(crate) lse2: Vec<f32>,
    /// `Σ_i exp(sink_h − lse_i)·D_i` per (batch, query head), `[B·Hq]`.
    pub(crate) sink: Vec<f32>,
    pub(crate) partial: Vec<f32>,
    pub(crate) workers: Vec<Scratch>,
}

impl BackwardWorkspace {
    /// Allocates the scratch of a call on `shape` with `plan` and `par`.
    pub(crate) fn new(
        shape: &AttnShape,
        plan: BwdPlan,
        par: Par,
    ) -> Result<BackwardWorkspace, AttnError> {
        let n = Self::workers_for(shape, &plan, par);
        let mut workers = Vec::new();
        workers.try_reserve_exact(n).map_err(|_| AttnError::OutOfMemory {
            tensor: "workspace",
            bytes: n * std::mem::size_of::<Scratch>(),
            available: None,
        })?;
        for _ in 0..n {
            workers.push(Scratch::new(&plan)?);
        }
        Ok(BackwardWorkspace {
            plan,
            dd: try_zeroed("workspace", shape.lse_len())?,
            lse2: try_zeroed("workspace", shape.lse_len())?,
            sink: try_zeroed("workspace", Self::heads(shape))?,
            partial: try_zeroed("workspace", plan.partial_len(shape))?,
            workers,
        })
    }

    /// Bytes [`BackwardWorkspace::new`] allocates for the same arguments.
    pub(crate) fn bytes_for(shape: &AttnShape, plan: &BwdPlan, par: Par) -> usize {
        let rows = 2 * shape.lse_len() + Self::heads(shape) + plan.partial_len(shape);
        let per_worker = plan.worker_bytes() + std::mem::size_of::<Scratch>();
        (rows * 4).saturating_add(Self::workers_for(shape, plan, par).saturating_mul(per_worker))
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let per_worker = self.plan.worker_bytes() + std::mem::size_of::<Scratch>();
        (self.dd.len() + self.lse2.len() + self.sink.len() + self.partial.len()) * 4
            + self.workers.len() * per_worker
    }

    /// (Batch entry, query head) pairs: one sink sum each.
    fn heads(shape: &AttnShape) -> usize {
        shape.batch() * shape.q_heads()
    }

    /// Work items of a call: (batch, K/V head, chunk of its keys).
    pub(crate) fn items(shape: &AttnShape, plan: &BwdPlan) -> usize {
        shape.batch() * shape.kv_heads() * plan.chunks
    }

    /// Workers: one per thread, at most one per item.
    pub(crate) fn workers_for(shape: &AttnShape, plan: &BwdPlan, par: Par) -> usize {
        par.threads().min(Self::items(shape, plan)).max(1)
    }

    /// An error naming the workspace unless it can run a call on `shape`
    /// with `plan` and `par`.
    pub(crate) fn check_fits(
        &self,
        shape: &AttnShape,
        plan: &BwdPlan,
        par: Par,
    ) -> Result<(), AttnError> {
        let p = &self.plan;
        let fits = (p.d, p.dv) == (plan.d, plan.dv)
            && self.dd.len() >= shape.lse_len()
            && self.sink.len() >= Self::heads(shape)
            && self.partial.len() >= plan.partial_len(shape)
            && self.workers.len() >= Self::workers_for(shape, plan, par);
        if fits {
            return Ok(());
        }
        Err(AttnError::Param {
            name: "workspace",
            reason: format!(
                "made for d = {}, dv = {}, {} rows, {} heads, {} dQ partial floats and {} \
                 workers; this call needs d = {}, dv = {}, {} rows, {} heads, {} and {}",
                p.d,
                p.dv,
                self.dd.len(),
                self.sink.len(),
                self.partial.len(),
                self.workers.len(),
                plan.d,
                plan.dv,
                shape.lse_len(),
                Self::heads(shape),
                plan.partial_len(shape),
                Self::workers_for(shape, plan, par)
            ),
        })
    }
}
