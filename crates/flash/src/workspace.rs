//! The scratch memory of one call, for whichever path the call takes.
//!
//! `Workspace::bytes_for` and `Workspace::new` derive from the same
//! sizes, so [`attn_core::AttentionKernel::workspace_bytes`] is exactly
//! what a call allocates, on either path.

use attn_core::{AttnError, AttnShape, Par};

use crate::forward::Scratch;
use crate::split_kv::{SplitKvPlan, SplitKvWorkspace};
use crate::tiles::Plan;

/// The path of one call, chosen once by [`crate::Flash::path`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The tiled FlashAttention-2 loop nest with this plan.
    Tiled(Plan),
    /// Split-KV over chunks of the keys (decode-like calls).
    SplitKv,
}

/// Scratch memory for [`crate::Flash::forward_in`]: per-worker tiles on the
/// tiled path, partial results and per-thread buffers on the split-KV
/// path. Sized by the head dims, the tiles and the thread count — never by
/// `Nk`.
#[derive(Debug)]
pub struct Workspace {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Tiled { plan: Plan, workers: Vec<Scratch> },
    SplitKv(SplitKvWorkspace),
}

impl Workspace {
    /// Allocates the scratch of a call on `shape` taking `path` with `par`.
    pub(crate) fn new(shape: &AttnShape, path: Path, par: Par) -> Result<Workspace, AttnError> {
        let inner = match path {
            Path::Tiled(plan) => {
                let n = Self::tiled_workers(shape, &plan, par);
                let mut workers = Vec::with_capacity(n);
                for _ in 0..n {
                    workers.push(Scratch::new(&plan)?);
                }
                Inner::Tiled { plan, workers }
            }
            Path::SplitKv => {
                Inner::SplitKv(SplitKvWorkspace::new(SplitKvPlan::new(shape, par.threads()))?)
            }
        };
        Ok(Workspace { inner })
    }

    /// Bytes [`Workspace::new`] allocates for the same arguments.
    pub(crate) fn bytes_for(shape: &AttnShape, path: Path, par: Par) -> usize {
        match path {
            Path::Tiled(plan) => Self::tiled_workers(shape, &plan, par)
                .saturating_mul(plan.worker_bytes() + std::mem::size_of::<Scratch>()),
            Path::SplitKv => SplitKvPlan::new(shape, par.threads()).bytes(),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.inner {
            Inner::Tiled { plan, workers } => {
                workers.len() * (plan.worker_bytes() + std::mem::size_of::<Scratch>())
            }
            Inner::SplitKv(ws) => ws.bytes(),
        }
    }

    /// Workers of the tiled path: one per thread, at most one per item.
    pub(crate) fn tiled_workers(shape: &AttnShape, plan: &Plan, par: Par) -> usize {
        let items = shape.q_len().div_ceil(plan.tiles.br)
            * shape.batch()
            * shape.kv_heads()
            * shape.group_size().div_ceil(plan.heads_per_item);
        par.threads().min(items).max(1)
    }

    /// An error naming the workspace unless it can run this call.
    pub(crate) fn check_fits(
        &self,
        shape: &AttnShape,
        path: Path,
        par: Par,
    ) -> Result<(), AttnError> {
        let mismatch = |have: String| AttnError::Param {
            name: "workspace",
            reason: format!("made for {have}; this call needs {path:?} with {par:?}"),
        };
        match (&self.inner, path) {
            (Inner::Tiled { plan, workers }, Path::Tiled(need)) => {
                if *plan != need || workers.len() < Self::tiled_workers(shape, &need, par) {
                    return Err(mismatch(format!("{plan:?} with {} workers", workers.len())));
                }
                Ok(())
            }
            (Inner::SplitKv(ws), Path::SplitKv) => {
                ws.check_fits(&SplitKvPlan::new(shape, par.threads()))
            }
            (Inner::Tiled { .. }, _) => Err(mismatch("the tiled path".into())),
            (Inner::SplitKv(_), _) => Err(mismatch("the split-KV path".into())),
        }
    }

    pub(crate) fn tiled_mut(&mut self) -> Option<&mut [Scratch]> {
        match &mut self.inner {
            Inner::Tiled { workers, .. } => Some(workers),
            Inner::SplitKv(_) => None,
        }
    }

    pub(crate) fn split_kv_mut(&mut self) -> Option<&mut SplitKvWorkspace> {
        match &mut self.inner {
            Inner::SplitKv(ws) => Some(ws),
            Inner::Tiled { .. } => None,
        }
    }
}
