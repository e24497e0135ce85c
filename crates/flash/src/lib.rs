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
//!   and mask partial tiles in registers; with chunk positions
//!   (`AttnParams::positions`) on the global positions of a longer
//!   problem, so a rank of ring attention computes its block directly.
//!
//! Decode: [`KvCache`] (f32/f16/bf16/[`Q8_0`] storage, ragged lengths) and
//! [`decode()`], split-KV across threads with the fixed-order log-sum-exp
//! merge [`merge_partials`], also public for sequence-parallel use. Calls
//! with at most [`SPLIT_KV_MAX_Q`] queries per head take the split-KV path
//! too.
//!
//! Saturation statistics (`attn_core::stats`, asked through
//! `CheckedCall::with_stats`, or [`decode_with_stats`] over a cache) on
//! both paths, in O(1) extra state per row (and per chunk on split-KV).
//!
//! Gradients: `Flash` is also an [`attn_core::BackwardKernel`] — the
//! FlashAttention-2 backward (`backward`: K/V tiles outer, `P` recomputed
//! from the LSE, deterministic dQ without atomics; extra memory `O(N)`:
//! row statistics and, when `B·Hkv` is small, dQ partials per key chunk), with [`Flash::backward_in`] on a caller's
//! [`BackwardWorkspace`].
//!
//! Modules: [`tiles`] (tile sizes, register blocking and decode chunking,
//! with reasons), `micro` (the two micro-kernels), `forward` (the tiled
//! loop nest, packing, online softmax, scheduler), `split_kv` (the
//! split-KV loop), `kv_block` (its quad-of-rows micro-kernels),
//! [`kv_element`] (how a cache stores values: f32, f16, bf16, q8_0),
//! [`cache`], [`decode`](mod@decode), [`merge`], `backward` (the FlashAttention-2
//! backward), [`workspace`] (the scratch of either forward path), `rows`
//! (disjoint-row writers), [`hooks`] (micro-kernels for benchmarks).
//! `docs/design.md` has the diagrams.

#![warn(missing_docs)]

mod backward;
pub mod cache;
pub mod decode;
mod forward;
pub mod hooks;
mod kv_block;
pub mod kv_element;
pub mod merge;
mod micro;
mod modify;
use modify::Mods2;
mod rows;
mod schedule;
mod split_kv;
pub mod tiles;
pub mod workspace;

use attn_core::{
    AttentionKernel, AttnError, AttnInputs, AttnParams, AttnShape, CheckedCall, Element, Par,
    RowFaults, ScoreMods, StatsMut, TensorViewMut,
};

pub use attn_simd::{cpu, isa};
pub use backward::{BackwardWorkspace, tiles as backward_tiles};
pub use cache::KvCache;
pub use decode::{decode, decode_in, decode_in_with_stats, decode_with_stats};
pub use kv_element::{KvElement, Q8_0};
pub use merge::{Partial, merge_partials};
pub use split_kv::SplitKvWorkspace;
pub use tiles::decode::SPLIT_KV_MAX_Q;
pub use tiles::{Plan, TileConfig};
pub use workspace::{Path, Workspace};

use forward::Job;
use rows::{LseWriter, RowWriter};
use split_kv::{ViewKv, split_kv};

/// The tiled kernel. [`Flash::default`] picks the tiles per shape for the
/// CPU running it ([`TileConfig::for_shape`], from its caches; split-KV for
/// decode-like calls); [`Flash::with_tiles`] forces tile sizes (for
/// experiments, tile sweeps and tests; always the tiled path).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flash {
    tiles: Option<TileConfig>,
}

impl Flash {
    /// A kernel with explicit tile sizes, checked here (see
    /// [`TileConfig::validate`]) so that no later call can fail on them.
    pub fn with_tiles(tiles: TileConfig) -> Result<Flash, AttnError> {
        tiles.validate()?;
        Ok(Flash { tiles: Some(tiles) })
    }

    /// The tile override, if any.
    pub fn tiles(&self) -> Option<TileConfig> {
        self.tiles
    }

    /// The path a call on `shape` takes: split-KV for at most
    /// [`SPLIT_KV_MAX_Q`] queries per head without a tile override, else
    /// the tiled loop nest with its [`Plan`]. Computed once per call.
    pub fn path(&self, shape: &AttnShape) -> Path {
        match self.tiles {
            None if shape.q_len() <= SPLIT_KV_MAX_Q => Path::SplitKv,
            t => Path::Tiled(Plan::new(shape, t.unwrap_or_else(|| TileConfig::for_shape(shape)))),
        }
    }

    /// The path a call with `params` takes: [`Flash::path`], except that
    /// a call with chunk positions (`AttnParams::positions`) always takes
    /// the tiled path, the one that computes masks on global positions.
    pub fn path_for(&self, shape: &AttnShape, params: &AttnParams) -> Path {
        match self.path(shape) {
            Path::SplitKv if params.positions.is_some() => {
                Path::Tiled(Plan::new(shape, TileConfig::for_shape(shape)))
            }
            p => p,
        }
    }

    /// Allocates the scratch a call on `shape` with `par` needs: exactly
    /// [`AttentionKernel::workspace_bytes`], or an error naming the
    /// workspace if it cannot be allocated.
    pub fn workspace(&self, shape: &AttnShape, par: Par) -> Result<Workspace, AttnError> {
        Workspace::new(shape, self.path(shape), par)
    }

    /// Like [`AttentionKernel::forward`], on a caller-provided workspace
    /// (from [`Flash::workspace`] for a shape with the same head dims and
    /// group size, the same tiles, and at least as many threads; for a call
    /// with chunk positions, one made for [`Flash::path_for`]'s tiled path,
    /// e.g. `Workspace::new(shape, flash.path_for(shape, params), par)`):
    /// the call allocates nothing on the calling thread.
    pub fn forward_in<T: Element>(
        &self,
        inputs: &AttnInputs<'_, T>,
        out: &mut TensorViewMut<'_>,
        lse: Option<&mut [f32]>,
        params: &AttnParams,
        par: Par,
        ws: &mut Workspace,
    ) -> Result<(), AttnError> {
        let call = CheckedCall::new(inputs, out, lse, params, par)?;
        self.run_in(call, self.path_for(inputs.shape(), params), ws)
    }

    /// Runs a validated call on `path` with `ws`.
    fn run_in<T: Element>(
        &self,
        mut call: CheckedCall<'_, '_, T>,
        path: Path,
        ws: &mut Workspace,
    ) -> Result<(), AttnError> {
        let (inputs, params, par) = (call.inputs(), call.params(), call.par());
        let shape = *inputs.shape();
        ws.check_fits(&shape, path, par)?;
        if shape.q_len() == 0 {
            return Ok(());
        }
        let (out, mut lse, mut stats) = call.outputs_and_stats();
        let faults = RowFaults::new();
        match path {
            Path::SplitKv => {
                // `path_for` never sends chunk positions here; a caller's
                // split-KV path (`run_in`) must not ignore them.
                params.refuse_positions("flash's split-KV path")?;
                let kv = ViewKv { k: &inputs.k, v: &inputs.v };
                let (hq, nq, nk) = (shape.q_heads(), shape.q_len(), shape.kv_len());
                let ws = ws.split_kv_mut().expect("checked by check_fits");
                let want = stats.is_some();
                split_kv(&kv, &inputs.q, params, par, ws, want, |b, h, t, row, l, st| {
                    let o = out.row_mut(b, h, t);
                    o.copy_from_slice(row);
                    let idx = (b * hq + h) * nq + t;
                    if let Some(lse) = lse.as_deref_mut() {
                        lse[idx] = l;
                    }
                    if let (Some(dst), Some((p, e))) = (stats.as_deref_mut(), st) {
                        (dst.max_p[idx], dst.entropy[idx]) = (p, e);
                    }
                    let visible = !params.mask.key_range(t, nq, nk).is_empty();
                    if RowFaults::is_fault(visible, l, o) {
                        faults.report(idx);
                    }
                })?;
            }
            Path::Tiled(plan) => {
                let n = Workspace::tiled_workers(&shape, &plan, par);
                let workers = &mut ws.tiled_mut().expect("checked by check_fits")[..n];
                let (rows, lses) = (RowWriter::new(out), LseWriter::new(lse.as_deref_mut()));
                let mods = Mods2::new(params, shape.q_heads());
                let diag = params.diagonal(shape.q_len(), shape.kv_len());
                let job = Job {
                    inputs,
                    params,
                    plan,
                    out: rows,
                    lse: lses,
                    faults: &faults,
                    mods: &mods,
                    stats: stats.as_deref_mut().map(|st| {
                        (
                            LseWriter::new(Some(&mut *st.max_p)),
                            LseWriter::new(Some(&mut *st.entropy)),
                        )
                    }),
                    diag,
                };
                par.install(|| job.run(workers))?;
            }
        }
        let rows = faults.into_sorted();
        let faults = RowFaults::new();
        rows.iter().for_each(|&r| faults.report(r));
        attn_naive::exact::repair_rows(inputs, params, faults, out, lse)?;
        if let Some(st) = stats {
            repair_stats(inputs, params, &rows, st);
        }
        Ok(())
    }
}

/// The exact statistics (f64, from the oracle's row) of the rows a call
/// recomputed, whose f32 accumulators are not those of the row: the
/// statistics follow the output, as the LSE does.
fn repair_stats<T: Element>(
    inputs: &AttnInputs<'_, T>,
    params: &AttnParams,
    rows: &[usize],
    st: &mut StatsMut<'_>,
) {
    let s = inputs.shape();
    let (nq, nk) = (s.q_len(), s.kv_len());
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (s.head_dim() as f64).sqrt());
    let mods = ScoreMods::new(params, s.q_heads());
    let (mut scores, mut o) = (Vec::new(), vec![0f64; s.v_dim()]);
    let (k, v) = (&inputs.k, &inputs.v);
    for &idx in rows {
        let (bh, i) = (idx / nq, idx % nq);
        let (b, h) = (bh / s.q_heads(), bh % s.q_heads());
        let g = s.kv_head_of(h);
        let at = attn_naive::RowAt::new(&mods, b, h, i, nq, nk);
        let keys = params.mask.key_range(i, nq, nk);
        let (kr, vr) = (|j| k.row(b, g, j), |j| v.row(b, g, j));
        let q = inputs.q.row(b, h, i);
        attn_naive::reference_row(q, keys, scale, at, kr, vr, &mut scores, &mut o);
        let (p, e) = attn_naive::oracle_stats::scores_stats(&scores, mods.sink(h).map(f64::from));
        (st.max_p[idx], st.entropy[idx]) = (p as f32, e as f32);
    }
}

impl AttentionKernel for Flash {
    fn name(&self) -> &'static str {
        "flash"
    }

    /// Exactly what [`Flash::workspace`] allocates for this call's path: one
    /// scratch set per worker on the tiled path, `O(threads × tile)`; the
    /// partial results (at most 64 chunks per K/V head, whatever `Nk`) and
    /// per-thread buffers on the split-KV path. Independent of `Nk`, and of
    /// `Nq` past the first tile.
    fn workspace_bytes(&self, shape: &AttnShape, params: &AttnParams, par: Par) -> usize {
        Workspace::bytes_for(shape, self.path_for(shape, params), par)
    }

    /// Runs on the calling thread's cached workspace when it fits this
    /// call, else on a new one, which then stays cached (see
    /// [`CACHED_WORKSPACE_MAX`]): a repeated call allocates and zeroes no
    /// scratch (measured on Zen 5: N = 256, MHA, d = 64, 2 threads, median
    /// 414 → 363 µs, the same as `forward_in` on a kept workspace).
    fn run<T: Element>(&self, call: CheckedCall<'_, '_, T>) -> Result<(), AttnError> {
        let (shape, par) = (*call.shape(), call.par());
        let path = self.path_for(&shape, call.params());
        let cached = CACHED.with(|c| c.borrow_mut().take());
        let mut ws = match cached {
            Some(ws) if ws.check_fits(&shape, path, par).is_ok() => ws,
            _ => Workspace::new(&shape, path, par)?,
        };
        let r = self.run_in(call, path, &mut ws);
        if ws.bytes() <= CACHED_WORKSPACE_MAX {
            CACHED.with(|c| *c.borrow_mut() = Some(ws));
        }
        r
    }
}

/// Largest workspace [`Flash`]'s `forward` keeps on the calling thread
/// between calls (the last one used; a typical tiled workspace is under
/// 1 MiB per worker). Larger ones are freed after the call;
/// [`Flash::forward_in`] leaves the choice to the caller.
pub const CACHED_WORKSPACE_MAX: usize = 64 << 20;

thread_local! {
    static CACHED: std::cell::RefCell<Option<Workspace>> = const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use attn_core::{Layout, Mask};
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn check(shape: AttnShape, mask: Mask, flash: Flash, par: Par) -> f64 {
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
        flash.forward(&inp, &mut ov, Some(&mut lse), &params, par).unwrap();
        let mut worst = 0f64;
        for (a, b) in o.iter().zip(&r.out) {
            let e = (*a as f64 - b).abs();
            worst = if e.is_nan() { f64::INFINITY } else { worst.max(e) };
        }
        for (a, b) in lse.iter().zip(&r.lse) {
            if b.is_infinite() {
                assert_eq!(*a as f64, *b);
            } else {
                let e = (*a as f64 - b).abs();
                worst = if e.is_nan() { f64::INFINITY } else { worst.max(e) };
            }
        }
        worst
    }

    fn shape(
        b: usize,
        hq: usize,
        hkv: usize,
        nq: usize,
        nk: usize,
        d: usize,
        dv: usize,
    ) -> AttnShape {
        AttnShape::builder()
            .batch(b)
            .q_heads(hq)
            .kv_heads(hkv)
            .q_len(nq)
            .kv_len(nk)
            .head_dim(d)
            .v_dim(dv)
            .build()
            .unwrap()
    }

    #[test]
    fn matches_oracle_smoke() {
        for (shape, mask) in [
            (shape(1, 2, 1, 70, 150, 24, 40), Mask::None),
            (shape(2, 4, 2, 100, 100, 64, 64), Mask::Causal),
            (shape(1, 3, 3, 90, 40, 16, 17), Mask::Causal),
            (shape(1, 2, 2, 130, 200, 8, 8), Mask::Window { left: Some(5), right: Some(3) }),
            (shape(1, 8, 2, 3, 700, 32, 32), Mask::Causal), // split-KV
        ] {
            for par in [Par::Seq, Par::rayon(2).unwrap()] {
                let e = check(shape, mask, Flash::default(), par);
                assert!(e < 1e-5, "{shape:?} {mask:?}: {e}");
            }
        }
    }

    #[test]
    fn plans_for_other_cpus_match_oracle() {
        // The whole plan the CPU detection makes — tiles and query heads per
        // item, from the L1d and L2 — for CPUs other than this one: a Zen 4
        // or Zen 5 (1 MiB L2: 3 heads of 160x64 at d = 128), a Xeon (2 MiB:
        // 6 heads), a small core (256 KiB: Br = 128, one head per item).
        use attn_simd::cpu::{Caches, CpuFacts, Datapath, Vendor};
        let cpu = |l1d: u64, l2: u64| CpuFacts {
            vendor: Vendor::Other,
            family: 0,
            model: 0,
            brand: String::new(),
            caches: Caches {
                l1d: Some(l1d << 10),
                l2: Some(l2 << 10),
                l3: None,
                l3_shared_by: None,
            },
            cache_source: "test",
            datapath: Datapath::Narrow,
            features: vec![],
        };
        let s = shape(1, 8, 1, 300, 90, 128, 128);
        let mut rng = StdRng::seed_from_u64(3);
        let mut gen_ =
            |n: usize| (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>();
        let q = gen_(s.q_dims().iter().product());
        let k = gen_(s.k_dims().iter().product());
        let v = gen_(s.v_dims().iter().product());
        let inp = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
        let params = AttnParams::causal();
        let r = attn_naive::reference(&inp, &params);
        let mut heads = vec![];
        for (l1d, l2) in [(32, 1024), (48, 2048), (16, 256)] {
            let cpu = cpu(l1d, l2);
            let plan = Plan::for_cpu(&s, TileConfig::for_cpu(&s, &cpu), &cpu);
            heads.push((plan.tiles.br, plan.tiles.bc, plan.heads_per_item));
            for par in [Par::Seq, Par::rayon(2).unwrap()] {
                let mut o = vec![f32::NAN; r.out.len()];
                let mut ov = TensorViewMut::new("out", &mut o, s.out_dims(), Layout::Bhnd).unwrap();
                let call = CheckedCall::new(&inp, &mut ov, None, &params, par).unwrap();
                let mut ws = Workspace::new(&s, Path::Tiled(plan), par).unwrap();
                Flash::default().run_in(call, Path::Tiled(plan), &mut ws).unwrap();
                let bad = o.iter().zip(&r.out).position(|(a, b)| {
                    let e = (*a as f64 - b).abs();
                    e.is_nan() || e >= 1e-5
                });
                assert_eq!(bad, None, "{plan:?} {par:?}");
            }
        }
        assert_eq!(heads, [(160, 64, 3), (160, 64, 6), (128, 32, 1)]);
    }

    #[test]
    fn bad_tiles_are_rejected_before_use() {
        for (br, bc) in [(0, 64), (32, 0), (33, 64), (512, 64), (32, 12), (32, 1 << 40)] {
            let e = Flash::with_tiles(TileConfig { br, bc }).unwrap_err();
            assert!(e.to_string().starts_with("tiles: "), "{e}");
        }
    }
}
