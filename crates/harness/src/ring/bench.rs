//! `attn ring-bench`'s work: a ring timed on generated inputs, over any
//! transport, and one rank timed alone.
//!
//! Each rank generates its own chunks (standard normal, a SplitMix64
//! stream per rank and tensor: [`rank_inputs`]), so no rank ever holds
//! the whole problem. Each repetition is, on every rank:
//!
//! ```text
//! sync ─► run_rank (timed: compute, exposed communication, agreement, total)
//!      ─► sync ─► the ring's P − 1 shifts again, with nothing to compute
//!                 (timed: the transfer time, "alone")
//! ```
//!
//! where `sync` is `P − 1` one-element shifts (a rank leaves it only once
//! every rank has entered it). The **overlap** of a rank is the share of
//! its transfer time that hid behind compute:
//! `1 − exposed_comm / transfer_alone`, clamped to `[0, 1]`, where
//! `exposed_comm` is the time of the ring's shifts outside the compute
//! (waiting for a block after the step's compute, and for a slower
//! neighbour) and `transfer_alone` the same shifts timed without compute.
//! The ring's overlap is the same over all ranks' sums. The ranks' figures
//! come from the repetition whose ring time (the slowest rank's total) is
//! the median.

use std::time::Duration;

use attnlab::ring::{InProcess, RankInputs, RankTiming, RingError, RingSpec, Transport, run_rank};

use super::problem::RingProblem;
use super::results::{Context, ProblemRecord, RankRecord, RingEntry, SoloEntry};
use super::solo::Solo;
use crate::measure::inputs::{SEED, normal};

/// One `attn ring-bench`.
#[derive(Debug, Clone, Copy)]
pub struct BenchConfig {
    /// The problem (generated inputs of its shape).
    pub problem: RingProblem,
    /// Ranks in the ring.
    pub ranks: usize,
    /// Threads per rank.
    pub threads: usize,
    /// Untimed repetitions first.
    pub warmup: u32,
    /// Timed repetitions.
    pub reps: u32,
    /// The longest any rank waits for a message.
    pub deadline: Duration,
}

impl BenchConfig {
    /// The checked ring spec.
    pub fn spec(&self) -> Result<RingSpec<'static>, RingError> {
        self.problem.spec(self.ranks, self.threads)
    }
}

/// Rank `rank`'s chunks of Q, K and V, generated (see the module docs):
/// the same values for a given spec and rank on every run.
pub fn rank_inputs(spec: &RingSpec<'_>, rank: usize) -> RankInputs {
    let (lq, lk, lv) = spec.rank_lens(rank);
    let stream = |t: usize| (3 * rank + t) as u64;
    RankInputs {
        rank,
        q: normal(lq, SEED, stream(0)),
        k: normal(lk, SEED, stream(1)),
        v: normal(lv, SEED, stream(2)),
    }
}

/// One rank's timed repetitions.
#[derive(Debug, Clone, PartialEq)]
pub struct RankRuns {
    /// The rank.
    pub rank: usize,
    /// The ring's timing of each timed repetition.
    pub runs: Vec<RankTiming>,
    /// The shifts alone after each timed repetition.
    pub transfer_alone: Vec<Duration>,
}

/// `P − 1` one-element shifts: returns once every rank has entered it.
fn sync<T: Transport>(t: &mut T) -> Result<(), RingError> {
    let mut token = [0f32];
    for _ in 1..t.size() {
        let out = token;
        t.shift_during(&out, &mut token, || ())?;
    }
    Ok(())
}

/// The ring's `P − 1` block shifts with no work: their total time.
pub fn shifts_alone<T: Transport>(t: &mut T, spec: &RingSpec<'_>) -> Result<Duration, RingError> {
    let out = vec![0f32; spec.block_len()];
    let mut inc = vec![0f32; spec.block_len()];
    let mut total = Duration::ZERO;
    for _ in 1..spec.ranks {
        total += t.shift_during(&out, &mut inc, || ())?.1.total;
    }
    Ok(total)
}

/// Runs this rank's share of `warmup + reps` repetitions (module docs).
/// On an error the rank tells the ring ([`Transport::abort`]) and returns
/// the error tagged with its rank.
pub fn bench_rank<T: Transport>(
    t: &mut T,
    spec: &RingSpec<'_>,
    inputs: &RankInputs,
    warmup: u32,
    reps: u32,
) -> Result<RankRuns, RingError> {
    let rank = t.rank();
    let mut out = RankRuns { rank, runs: Vec::new(), transfer_alone: Vec::new() };
    let mut go = |t: &mut T| -> Result<(), RingError> {
        for i in 0..warmup + reps {
            sync(t)?;
            let timing = run_rank(t, spec, inputs)?.timing;
            sync(t)?;
            let alone = shifts_alone(t, spec)?;
            if i >= warmup {
                out.runs.push(timing);
                out.transfer_alone.push(alone);
            }
        }
        Ok(())
    };
    match go(t) {
        Ok(()) => Ok(out),
        // From run_rank: tagged, and the ring already told.
        Err(e @ RingError::OnRank { .. }) => Err(e),
        Err(e) => {
            t.abort(&e.to_string());
            Err(RingError::OnRank { rank, error: Box::new(e) })
        }
    }
}

/// The bench with `cfg.ranks` ranks as threads of this process; each
/// rank's runs, by rank. If any rank fails, the original failure.
pub fn bench_in_process(cfg: &BenchConfig) -> Result<Vec<RankRuns>, RingError> {
    let spec = cfg.spec()?;
    let results: Vec<Result<RankRuns, RingError>> = std::thread::scope(|s| {
        let handles: Vec<_> = InProcess::ring(cfg.ranks, cfg.deadline)
            .into_iter()
            .map(|mut t| {
                let spec = &spec;
                s.spawn(move || {
                    let inputs = rank_inputs(spec, t.rank());
                    bench_rank(&mut t, spec, &inputs, cfg.warmup, cfg.reps)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut runs = Vec::with_capacity(results.len());
    let mut first: Option<RingError> = None;
    for r in results {
        match r {
            Ok(x) => runs.push(x),
            // The original failure wins over the reports of it.
            Err(e) => match &first {
                Some(f) if !f.is_consequence() || e.is_consequence() => {}
                _ => first = Some(e),
            },
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(runs),
    }
}

/// The index of the median of `x` (the lower one for an even count).
fn median_index(x: &[f64]) -> usize {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    idx[(idx.len() - 1) / 2]
}

fn overlap(exposed: f64, alone: f64) -> Option<f64> {
    (alone > 0.0).then(|| (1.0 - exposed / alone).clamp(0.0, 1.0))
}

/// The results entry of a timed ring from every rank's runs (`runs` by
/// rank, each with `reps ≥ 1` runs).
pub fn ring_entry(
    context: Context,
    problem: ProblemRecord,
    transport: &str,
    warmup: u32,
    runs: &[RankRuns],
) -> RingEntry {
    let reps = runs.iter().map(|r| r.runs.len()).min().unwrap_or(0);
    let walls_s: Vec<f64> = (0..reps)
        .map(|i| runs.iter().map(|r| r.runs[i].total.as_secs_f64()).fold(0.0, f64::max))
        .collect();
    let m = if reps == 0 { 0 } else { median_index(&walls_s) };
    let per_pair = problem.flops_per_pair();
    let ranks: Vec<RankRecord> = runs
        .iter()
        .filter(|r| m < r.runs.len())
        .map(|r| {
            let t = &r.runs[m];
            let compute_s = t.compute.as_secs_f64();
            let exposed_comm_s = t.exposed_comm.as_secs_f64();
            let transfer_alone_s = r.transfer_alone.get(m).map_or(0.0, Duration::as_secs_f64);
            let flops = t.visible_pairs as f64 * per_pair;
            RankRecord {
                rank: r.rank,
                compute_s,
                exposed_comm_s,
                agreement_s: t.agreement.as_secs_f64(),
                total_s: t.total.as_secs_f64(),
                transfer_alone_s,
                overlap: overlap(exposed_comm_s, transfer_alone_s),
                flops,
                gflops: if compute_s > 0.0 { flops / compute_s / 1e9 } else { 0.0 },
                pairs_computed: t.pairs_computed,
                pairs_skipped: t.pairs_skipped,
                bytes_sent: t.bytes_sent,
            }
        })
        .collect();
    let wall_s = walls_s.get(m).copied().unwrap_or(0.0);
    let flops: f64 = ranks.iter().map(|r| r.flops).sum();
    let exposed_comm_s: f64 = ranks.iter().map(|r| r.exposed_comm_s).sum();
    let transfer_alone_s: f64 = ranks.iter().map(|r| r.transfer_alone_s).sum();
    RingEntry {
        context,
        problem,
        transport: transport.to_string(),
        warmup,
        reps: reps as u32,
        walls_s,
        wall_s,
        flops,
        gflops: if wall_s > 0.0 { flops / wall_s / 1e9 } else { 0.0 },
        exposed_comm_s,
        transfer_alone_s,
        overlap: overlap(exposed_comm_s, transfer_alone_s),
        ranks,
    }
}

/// Rank `rank` of the ring `cfg` alone ([`Solo`]): its compute timed
/// `cfg.reps` times after `cfg.warmup` untimed runs, with `cfg.threads`
/// threads.
pub fn bench_solo(
    cfg: &BenchConfig,
    rank: usize,
    context: Context,
) -> Result<SoloEntry, RingError> {
    let spec = cfg.spec()?;
    if rank >= cfg.ranks {
        return Err(attnlab::AttnError::Param {
            name: "rank",
            reason: format!("rank {rank} of a ring of {}", cfg.ranks),
        }
        .into());
    }
    let inputs = rank_inputs(&spec, rank);
    let blocks = (0..cfg.ranks)
        .map(|r| {
            let (_, lk, lv) = spec.rank_lens(r);
            let stream = |t: usize| (3 * r + t) as u64;
            let (k, v) = if r == rank {
                (inputs.k.clone(), inputs.v.clone())
            } else {
                (normal(lk, SEED, stream(1)), normal(lv, SEED, stream(2)))
            };
            let mut b = vec![0f32; spec.block_len()];
            attnlab::ring::block::pack_block(&k, &v, &mut b);
            b
        })
        .collect();
    let mut solo = Solo::new(rank, blocks);
    let mut computes = Vec::new();
    let mut visible = 0;
    for i in 0..cfg.warmup + cfg.reps {
        solo.restart();
        let t = run_rank(&mut solo, &spec, &inputs)?.timing;
        visible = t.visible_pairs;
        if i >= cfg.warmup {
            computes.push(t.compute.as_secs_f64());
        }
    }
    let problem = ProblemRecord::new(&cfg.problem, cfg.ranks, cfg.threads);
    let flops = visible as f64 * problem.flops_per_pair();
    let compute_s = computes[median_index(&computes)];
    let part = spec.q_partition();
    Ok(SoloEntry {
        context,
        rank,
        warmup: cfg.warmup,
        computes_s: computes,
        compute_s,
        flops,
        gflops: flops / compute_s / 1e9,
        chunk: part.rank_len(rank),
        block_rows: part.rank_chunks(rank).iter().map(|(_, c)| c.len()).max().unwrap_or(0),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnlab::ring::RingLayout;
    use attnlab::{AttnShape, Layout, Mask};

    fn config(ranks: usize, reps: u32) -> BenchConfig {
        let shape = AttnShape::builder()
            .batch(1)
            .q_heads(4)
            .kv_heads(2)
            .q_len(96)
            .kv_len(96)
            .head_dim(16)
            .v_dim(16)
            .build()
            .unwrap();
        BenchConfig {
            problem: RingProblem {
                shape,
                layout: RingLayout::Zigzag,
                tensors: Layout::Bhnd,
                mask: Mask::Causal,
                scale: None,
            },
            ranks,
            threads: 1,
            warmup: 0,
            reps,
            deadline: Duration::from_secs(60),
        }
    }

    #[test]
    fn an_in_process_bench_times_every_rank() {
        let cfg = config(3, 2);
        let runs = bench_in_process(&cfg).unwrap();
        assert_eq!(runs.len(), 3);
        let ctx = Context::collect(None, 1, 3);
        let e = ring_entry(ctx, ProblemRecord::new(&cfg.problem, 3, 1), "in-process", 0, &runs);
        assert_eq!((e.reps, e.ranks.len(), e.walls_s.len()), (2, 3, 2));
        // Zigzag causal: the ranks' visible pairs add up to the whole
        // causal triangle (96·97/2 pairs per head).
        let pairs: f64 = e.ranks.iter().map(|r| r.flops).sum::<f64>()
            / ProblemRecord::new(&cfg.problem, 3, 1).flops_per_pair();
        assert_eq!(pairs, (96 * 97 / 2) as f64);
        for r in &e.ranks {
            assert!(r.total_s >= r.compute_s && r.transfer_alone_s > 0.0, "{r:?}");
            let o = r.overlap.unwrap();
            assert!((0.0..=1.0).contains(&o));
        }
        assert!(e.walls_s.contains(&e.wall_s));
    }

    #[test]
    fn solo_computes_what_the_rank_computes_in_the_ring() {
        let cfg = config(4, 1);
        let runs = bench_in_process(&cfg).unwrap();
        for rank in [0, 3] {
            let s = bench_solo(&cfg, rank, Context::collect(None, 1, 1)).unwrap();
            let want = runs[rank].runs[0].visible_pairs as f64
                * ProblemRecord::new(&cfg.problem, 4, 1).flops_per_pair();
            assert_eq!(s.flops, want);
            assert_eq!((s.chunk, s.block_rows), (24, 12));
        }
        assert!(bench_solo(&cfg, 4, Context::collect(None, 1, 1)).is_err());
    }

    #[test]
    fn the_overlap_is_the_hidden_share_of_the_transfer() {
        assert_eq!(overlap(0.25, 1.0), Some(0.75));
        assert_eq!(overlap(2.0, 1.0), Some(0.0));
        assert_eq!(overlap(0.0, 0.0), None);
        assert_eq!(median_index(&[3.0, 1.0, 2.0]), 2);
        assert_eq!(median_index(&[4.0, 1.0]), 1);
    }
}
