//! One rank of the ring, over any [`Transport`].
//!
//! ```text
//! cur = pack(my K, V)                         (crate::block layout)
//! for step s in 0..P:                         source = (rank − s) mod P
//!     if s < P − 1:  shift_during(cur → next rank, nxt ← previous rank, compute)
//!     else:          compute                  (no shift after the last step)
//!     swap(cur, nxt)
//! compute = for each (local Q chunk, source K/V chunk) pair of the step,
//!           unless invisible (plan::Relation):
//!     partial (O, LSE) = flash forward of the Q chunk against the K/V chunk
//!                        at their global positions (AttnParams::positions)
//!     acc[Q chunk] = merge_partials([acc, partial])        (first: acc = partial)
//! sinks: each row's LSE and output rescaled once (with_sink)
//! agreement: P − 1 one-element shifts, so that no rank succeeds alone
//! ```
//!
//! The merge order is the plan's (steps in order, pairs in chunk order),
//! a function of the rank and `P` only, and the kernel's bits do not
//! depend on its thread count: a rank's result is the same bits on every
//! run and for any `threads`, whatever the timing. A running merge keeps
//! one accumulator per query chunk instead of `P` partials.

use std::time::{Duration, Instant};

use attn_core::modifiers::with_sink;
use attn_core::{
    AttentionKernel, AttnError, AttnInputs, AttnParams, Layout, Par, ScoreMods, TensorView,
    TensorViewMut,
};
use attn_flash::{Flash, Partial, merge_partials};

use crate::block::{pack_block, unpack_block};
use crate::error::RingError;
use crate::plan::{Relation, Step, rank_plan};
use crate::scatter::RankInputs;
use crate::spec::RingSpec;
use crate::transport::Transport;

/// Where a rank's time went, for `attn ring-bench`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RankTiming {
    /// Wall time of the compute (kernel calls and merges) over all steps.
    pub compute: Duration,
    /// Wall time of the shifts outside the compute: communication that
    /// did not hide behind it.
    pub exposed_comm: Duration,
    /// Wall time of the closing agreement (`P − 1` one-element shifts: no
    /// rank returns a result unless every rank computed its own). It
    /// includes waiting for the slowest rank: load imbalance shows here.
    pub agreement: Duration,
    /// Wall time of the whole rank, packing, the final rescale and the
    /// agreement included.
    pub total: Duration,
    /// Block calls computed.
    pub pairs_computed: usize,
    /// Block calls skipped as invisible.
    pub pairs_skipped: usize,
    /// Visible (query, key) pairs computed, per (batch entry, query
    /// head): the rank's FLOPs are `visible_pairs · B · Hq · 2·(d + dv)`.
    pub visible_pairs: u64,
    /// Bytes this rank sent (`P − 1` blocks).
    pub bytes_sent: u64,
}

/// A rank's results: its output rows and LSE (the order of
/// [`crate::scatter`]) and its timing.
#[derive(Debug, Clone, PartialEq)]
pub struct RankOutput {
    /// Output, its query chunks each `[B, Hq, n_c, dv]`.
    pub out: Vec<f32>,
    /// LSE (natural log), its query chunks each `[B, Hq, n_c]`.
    pub lse: Vec<f32>,
    /// Where the time went.
    pub timing: RankTiming,
}

/// Runs rank `transport.rank()` of the ring `spec` on its `inputs`. On
/// any error the rank tells the ring ([`Transport::abort`]) so that its
/// neighbours stop waiting, and returns the error tagged with its rank.
///
/// All or nothing: after its compute a rank passes a token around the
/// ring (`P − 1` shifts of one element, each rank forwarding only once it
/// has computed and received the previous token), so a rank returns `Ok`
/// only if every rank got through its compute; if any rank fails, every
/// rank returns an error (the others' report the failure:
/// [`RingError::is_consequence`]).
pub fn run_rank<T: Transport>(
    transport: &mut T,
    spec: &RingSpec<'_>,
    inputs: &RankInputs,
) -> Result<RankOutput, RingError> {
    let rank = transport.rank();
    let r = run(transport, spec, inputs);
    if let Err(e) = &r {
        transport.abort(&e.to_string());
    }
    r.map_err(|e| e.on_rank(rank))
}

/// A local query chunk and its accumulator.
struct Local {
    chunk: usize,
    q: std::ops::Range<usize>,
    /// Its elements in `RankInputs::q`.
    q_at: std::ops::Range<usize>,
    out: Vec<f32>,
    lse: Vec<f32>,
    started: bool,
}

/// Buffers of one step's compute, reused.
struct Scratch {
    out: Vec<f32>,
    lse: Vec<f32>,
    merged_out: Vec<f32>,
    merged_lse: Vec<f32>,
}

fn run<T: Transport>(
    transport: &mut T,
    spec: &RingSpec<'_>,
    inputs: &RankInputs,
) -> Result<RankOutput, RingError> {
    let t0 = Instant::now();
    spec.validate()?;
    let (rank, p) = (transport.rank(), spec.ranks);
    if transport.size() != p || rank >= p {
        return Err(AttnError::Param {
            name: "ranks",
            reason: format!(
                "the transport is rank {rank} of {}, the ring spec has {p} ranks",
                transport.size()
            ),
        }
        .into());
    }
    if inputs.rank != rank {
        return Err(AttnError::Param {
            name: "rank",
            reason: format!("inputs cut for rank {} given to rank {rank}", inputs.rank),
        }
        .into());
    }
    inputs.check(spec)?;

    let s = &spec.shape;
    let (d, dv) = (s.head_dim(), s.v_dim());
    let bh = s.batch() * s.q_heads();
    let mut at = 0;
    let mut local: Vec<Local> = spec
        .q_partition()
        .rank_chunks(rank)
        .into_iter()
        .map(|(chunk, q)| {
            let rows = bh * q.len();
            let q_at = at..at + rows * d;
            at = q_at.end;
            Local {
                chunk,
                q,
                q_at,
                out: vec![0.0; rows * dv],
                lse: vec![f32::NEG_INFINITY; rows],
                started: false,
            }
        })
        .collect();
    let most = local.iter().map(|l| l.lse.len()).max().unwrap_or(0);
    let mut scratch = Scratch {
        out: vec![0.0; most * dv],
        lse: vec![0.0; most],
        merged_out: vec![0.0; most * dv],
        merged_lse: vec![0.0; most],
    };

    let block_len = spec.block_len();
    let mut cur = vec![0f32; block_len];
    pack_block(&inputs.k, &inputs.v, &mut cur);
    let mut nxt = if p > 1 { vec![0f32; block_len] } else { Vec::new() };

    let pool = match spec.threads {
        1 => None,
        n => Some(rayon::ThreadPoolBuilder::new().num_threads(n).build().map_err(|e| {
            AttnError::Param { name: "threads", reason: format!("no pool of {n} threads: {e}") }
        })?),
    };
    let mut timing = RankTiming::default();
    for step in rank_plan(spec, rank) {
        let block = &cur;
        let mut work = || -> Result<(), AttnError> {
            let mut go = || compute(spec, &step, block, inputs, &mut local, &mut scratch);
            match &pool {
                None => go(),
                Some(pool) => pool.install(go),
            }
        };
        if step.step + 1 < p {
            let (r, t) = transport.shift_during(&cur, &mut nxt, work)?;
            r?;
            timing.compute += t.compute;
            timing.exposed_comm += t.exposed_comm;
            timing.bytes_sent += (block_len * 4) as u64;
        } else {
            let c0 = Instant::now();
            work()?;
            timing.compute += c0.elapsed();
        }
        for pair in &step.pairs {
            if pair.relation == Relation::Invisible {
                timing.pairs_skipped += 1;
            } else {
                timing.pairs_computed += 1;
                timing.visible_pairs += visible_pairs(spec, &pair.q, &pair.kv);
            }
        }
        if step.step + 1 < p {
            std::mem::swap(&mut cur, &mut nxt);
        }
    }

    // Sinks: once per row, on the merged result.
    let mods = ScoreMods::new(&spec.params, s.q_heads());
    if mods.sinks.is_some() {
        for l in &mut local {
            let n = l.q.len();
            for (row, lse) in l.lse.iter_mut().enumerate() {
                let h = row / n % s.q_heads();
                let (new, f) = with_sink(*lse, mods.sink(h).expect("sinks"));
                *lse = new;
                l.out[row * dv..(row + 1) * dv].iter_mut().for_each(|x| *x *= f);
            }
        }
    }
    // All or nothing (see `run_rank`).
    let a0 = Instant::now();
    let mut token = [1f32];
    for _ in 1..p {
        let mut incoming = [0f32];
        transport.shift_during(&token, &mut incoming, || ())?;
        token = incoming;
    }
    timing.agreement = a0.elapsed();
    let mut out = Vec::with_capacity(local.iter().map(|l| l.out.len()).sum());
    let mut lse = Vec::with_capacity(local.iter().map(|l| l.lse.len()).sum());
    for l in local {
        debug_assert!(l.chunk < spec.q_partition().chunks());
        out.extend_from_slice(&l.out);
        lse.extend_from_slice(&l.lse);
    }
    timing.total = t0.elapsed();
    Ok(RankOutput { out, lse, timing })
}

/// Visible (query, key) pairs of one block call, per head.
fn visible_pairs(
    spec: &RingSpec<'_>,
    q: &std::ops::Range<usize>,
    kv: &std::ops::Range<usize>,
) -> u64 {
    let (nq, nk) = (spec.shape.q_len(), spec.shape.kv_len());
    q.clone()
        .map(|i| {
            let r = spec.params.mask.key_range(i, nq, nk);
            (r.start.max(kv.start)..r.end.min(kv.end)).len() as u64
        })
        .sum()
}

/// One step's block calls and merges, in the plan's order.
fn compute(
    spec: &RingSpec<'_>,
    step: &Step,
    block: &[f32],
    inputs: &RankInputs,
    local: &mut [Local],
    scratch: &mut Scratch,
) -> Result<(), AttnError> {
    let s = &spec.shape;
    let dv = s.v_dim();
    let chunks = unpack_block(spec, step.source, block);
    // Inside the rank's own pool (or on its thread): every worker of it.
    let par = if spec.threads == 1 { Par::Seq } else { Par::Pool };
    for pair in step.pairs.iter().filter(|p| p.relation != Relation::Invisible) {
        let l = local.iter_mut().find(|l| l.chunk == pair.q_chunk).expect("a local chunk");
        let kvc = chunks.iter().find(|c| c.chunk == pair.kv_chunk).expect("a block chunk");
        let shape = spec.pair_shape(&pair.q, &pair.kv)?;
        let q = TensorView::new("q", &inputs.q[l.q_at.clone()], shape.q_dims(), Layout::Bhnd)?;
        let k = TensorView::new("k", kvc.k, shape.k_dims(), Layout::Bhnd)?;
        let v = TensorView::new("v", kvc.v, shape.v_dims(), Layout::Bhnd)?;
        let call = AttnInputs::new(shape, q, k, v)?;
        let rows = l.lse.len();
        let params = AttnParams {
            positions: Some(spec.pair_positions(&pair.q, &pair.kv)),
            sinks: None,
            ..spec.params
        };
        // The first partial of a chunk is its accumulator as it is (so one
        // rank and one chunk give exactly the unsplit kernel's bits).
        let (po, pl) = if l.started {
            (&mut scratch.out[..rows * dv], &mut scratch.lse[..rows])
        } else {
            (&mut l.out[..], &mut l.lse[..])
        };
        let mut ov = TensorViewMut::new("out", po, shape.out_dims(), Layout::Bhnd)?;
        Flash::default().forward(&call, &mut ov, Some(pl), &params, par)?;
        if l.started {
            let (mo, ml) = (&mut scratch.merged_out[..rows * dv], &mut scratch.merged_lse[..rows]);
            let parts = [
                Partial { out: &l.out, lse: &l.lse },
                Partial { out: &scratch.out[..rows * dv], lse: &scratch.lse[..rows] },
            ];
            merge_partials(&parts, dv, mo, ml)?;
            l.out.copy_from_slice(mo);
            l.lse.copy_from_slice(ml);
        }
        l.started = true;
    }
    Ok(())
}
