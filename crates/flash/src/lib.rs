//! # attn-flash
//!
//! The tiled online-softmax attention kernel (the FlashAttention-2 forward
//! algorithm) for CPUs: `O = softmax(Q·Kᵀ·scale + mask)·V` with O(tile)
//! extra memory, whatever the sequence lengths.
//!
//! - Data: any [`attn_core::Layout`], f32/f16/bf16 inputs (converted per
//!   tile while packing), f32 accumulation, f32 output and LSE.
//! - Work: items of (query tile, batch entry, K/V head, chunk of its query
//!   heads) — each K/V tile is packed once and used by every query head of
//!   the group, never copied per head; items go to workers heaviest-first
//!   through an atomic counter, each worker with its own reusable scratch,
//!   so results are bitwise identical for any thread count.
//! - Masks: causal and sliding windows skip invisible K/V tiles entirely
//!   and mask partial tiles in registers.
//!
//! Decode: [`KvCache`] (f32/f16/bf16 storage, ragged lengths) and
//! [`decode()`], split-KV across threads with the fixed-order log-sum-exp
//! merge [`merge_partials`], also public for sequence-parallel use.
//!
//! Modules: [`tiles`] (tile sizes and register blocking, with reasons),
//! `micro` (the two micro-kernels), `forward` (loop nest, packing, online
//! softmax, scheduler). `docs/design.md` has the diagram.

#![warn(missing_docs)]

pub mod cache;
pub mod decode;
mod forward;
pub mod merge;
mod micro;
pub mod tiles;

use attn_core::{
    AttentionKernel, AttnError, AttnInputs, AttnParams, AttnShape, Element, Par, TensorViewMut,
    validate_call,
};

pub use cache::KvCache;
pub use decode::decode;
use decode::{ViewKv, split_kv, split_kv_bytes};
use forward::{Job, LseWriter, Scratch};

/// Calls with at most this many queries per head (decode-like) and no tile
/// override run split-KV (see [`decode()`]): the tiled loop nest would pad
/// each query tile to 32 rows and stream K/V per tile, while split-KV
/// reads each K/V element once for all query heads of its group and
/// spreads the keys over the threads.
pub const SPLIT_KV_MAX_Q: usize = 16;
pub use merge::{Partial, merge_partials};
pub use tiles::{Plan, TileConfig};

/// The tiled kernel. `tiles: None` picks the measured default per shape;
/// `Some` overrides it (for experiments and tile sweeps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flash {
    /// Tile-size override.
    pub tiles: Option<TileConfig>,
}

/// Scratch memory for [`Flash::forward_in`]: one buffer set per worker,
/// sized by the shape's head dims and the tile sizes — not by `Nq` or `Nk`.
#[derive(Debug)]
pub struct Workspace {
    plan: Plan,
    workers: Vec<Scratch>,
}

impl Workspace {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.workers.len() * self.plan.worker_bytes()
    }
}

impl Flash {
    /// A kernel with explicit tile sizes.
    pub fn with_tiles(tiles: TileConfig) -> Flash {
        Flash { tiles: Some(tiles) }
    }

    /// Whether a call on `shape` takes the split-KV path.
    pub fn uses_split_kv(&self, shape: &AttnShape) -> bool {
        self.tiles.is_none() && shape.q_len() <= SPLIT_KV_MAX_Q
    }

    /// The plan (tile sizes and head chunking) this kernel uses for `shape`.
    pub fn plan(&self, shape: &AttnShape) -> Plan {
        Plan::new(shape, self.tiles.unwrap_or_else(|| TileConfig::for_shape(shape)))
    }

    fn workers(&self, shape: &AttnShape, par: Par) -> usize {
        match par {
            Par::Seq => 1,
            Par::Rayon(_) => par.threads().max(1),
        }
        .min(work_items(shape, &self.plan(shape)).max(1))
    }

    /// Allocates the scratch a call on `shape` with `par` needs.
    pub fn workspace(&self, shape: &AttnShape, par: Par) -> Workspace {
        let plan = self.plan(shape);
        let n = self.workers(shape, par);
        Workspace { plan, workers: (0..n).map(|_| Scratch::new(&plan)).collect() }
    }

    /// Like [`AttentionKernel::forward`], on a caller-provided workspace
    /// (no allocation under `Par::Seq` on the tiled path). The workspace
    /// must come from [`Flash::workspace`] for the same head dims, group
    /// size, tiles and at most as many threads. Split-KV calls (see
    /// [`SPLIT_KV_MAX_Q`]) allocate their partial results instead, a size
    /// independent of the number of keys.
    pub fn forward_in<T: Element>(
        &self,
        inputs: &AttnInputs<'_, T>,
        out: &mut TensorViewMut<'_>,
        lse: Option<&mut [f32]>,
        params: &AttnParams,
        par: Par,
        ws: &mut Workspace,
    ) -> Result<(), AttnError> {
        validate_call(inputs, out, lse.as_deref(), params)?;
        let shape = inputs.shape();
        let plan = self.plan(shape);
        if let Some(t) = self.tiles {
            t.validate().map_err(|reason| AttnError::Param { name: "tiles", reason })?;
        }
        if ws.plan != plan || ws.workers.len() < self.workers(shape, par) {
            return Err(AttnError::Param {
                name: "workspace",
                reason: format!(
                    "made for {:?} with {} workers; this call needs {:?} with {}",
                    ws.plan,
                    ws.workers.len(),
                    plan,
                    self.workers(shape, par)
                ),
            });
        }
        if shape.q_len() == 0 {
            return Ok(());
        }
        if self.uses_split_kv(shape) {
            let kv = ViewKv { k: &inputs.k, v: &inputs.v };
            let (hq, nq) = (shape.q_heads(), shape.q_len());
            let mut lse = lse;
            split_kv(&kv, &inputs.q, hq, nq, params, par, |b, h, t, row, l| {
                out.row_mut(b, h, t).copy_from_slice(row);
                if let Some(lse) = lse.as_deref_mut() {
                    lse[(b * hq + h) * nq + t] = l;
                }
            });
            return Ok(());
        }
        let n = self.workers(shape, par);
        let job = Job { inputs, params, plan, out: out.row_writer(), lse: LseWriter::new(lse) };
        job.run(&mut ws.workers[..n], par);
        Ok(())
    }
}

fn work_items(shape: &AttnShape, plan: &Plan) -> usize {
    shape.q_len().div_ceil(plan.tiles.br)
        * shape.batch()
        * shape.kv_heads()
        * shape.group_size().div_ceil(plan.heads_per_item)
}

impl AttentionKernel for Flash {
    fn name(&self) -> &'static str {
        "flash"
    }

    /// One scratch set per worker: `O(threads × tile)`, independent of
    /// `Nq` and `Nk`. Split-KV calls (at most [`SPLIT_KV_MAX_Q`] queries per
    /// head) add their partial results, at most [`decode::MAX_CHUNKS`] per
    /// head however long `Nk` is.
    fn workspace_bytes(&self, shape: &AttnShape, _: &AttnParams, par: Par) -> usize {
        if self.uses_split_kv(shape) {
            return split_kv_bytes(shape, par.threads());
        }
        self.workers(shape, par) * self.plan(shape).worker_bytes()
    }

    fn forward<T: Element>(
        &self,
        inputs: &AttnInputs<'_, T>,
        out: &mut TensorViewMut<'_>,
        lse: Option<&mut [f32]>,
        params: &AttnParams,
        par: Par,
    ) -> Result<(), AttnError> {
        validate_call(inputs, out, lse.as_deref(), params)?;
        let mut ws = self.workspace(inputs.shape(), par);
        self.forward_in(inputs, out, lse, params, par, &mut ws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attn_core::{Layout, Mask};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn check(shape: AttnShape, mask: Mask, tiles: Option<TileConfig>, par: Par) -> f64 {
        let mut rng = StdRng::seed_from_u64(7);
        let mut gen_ =
            |n: usize| (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect::<Vec<_>>();
        let q = gen_(shape.q_dims().iter().product());
        let k = gen_(shape.k_dims().iter().product());
        let v = gen_(shape.v_dims().iter().product());
        let inp = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
        let params = AttnParams::with_mask(mask);
        let r = attn_naive::reference(&inp, &params);
        let mut o = vec![0f32; r.out.len()];
        let mut lse = vec![0f32; r.lse.len()];
        let mut ov = TensorViewMut::new("out", &mut o, shape.out_dims(), Layout::Bhnd).unwrap();
        Flash { tiles }.forward(&inp, &mut ov, Some(&mut lse), &params, par).unwrap();
        let mut worst = 0f64;
        for (a, b) in o.iter().zip(&r.out) {
            worst = worst.max((*a as f64 - b).abs());
        }
        for (a, b) in lse.iter().zip(&r.lse) {
            if b.is_infinite() {
                assert_eq!(*a as f64, *b);
            } else {
                worst = worst.max((*a as f64 - b).abs());
            }
        }
        worst
    }

    #[test]
    fn matches_oracle_smoke() {
        for (shape, mask) in [
            (AttnShape::new(1, 2, 1, 70, 150, 24, 40).unwrap(), Mask::None),
            (AttnShape::new(2, 4, 2, 100, 100, 64, 64).unwrap(), Mask::Causal),
            (AttnShape::new(1, 3, 3, 90, 40, 16, 17).unwrap(), Mask::Causal),
            (
                AttnShape::new(1, 2, 2, 130, 200, 8, 8).unwrap(),
                Mask::Window { left: Some(5), right: Some(3) },
            ),
        ] {
            let e = check(shape, mask, None, Par::Seq);
            assert!(e < 1e-5, "{shape:?} {mask:?}: {e}");
        }
    }
}
