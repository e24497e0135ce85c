//! `attn ring-bench`: a ring timed on generated inputs — per rank compute,
//! exposed communication, the same transfers alone, the overlap and
//! GFLOP/s — over threads of this process or (feature `mpi`) the
//! processes of `mpirun`; one rank timed alone (`--solo`); MPI ping-pong
//! (`--ping-pong`). `--json` appends the result to `results/ring.json`.
//! The flags; the work is [`crate::ring::bench`].

use std::path::PathBuf;
use std::process::ExitCode;

use attnlab::{AttnShape, Layout};

use super::ring::RingFlags;
use crate::machine::warn_if_unoptimized;
use crate::results::workspace_root;
use crate::ring::bench::{BenchConfig, bench_in_process, bench_solo, ring_entry};
use crate::ring::launch::Launch;
use crate::ring::problem::RingProblem;
use crate::ring::results::{self, Context, Entry, ProblemRecord, RingEntry};
use crate::ring::run::DEFAULT_RANKS;

/// `attn ring-bench` flags.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = BENCH_AFTER_HELP)]
pub struct RingBenchArgs {
    /// Sequence length N (queries; keys too unless --kv-len)
    #[arg(long, value_name = "N", required_unless_present = "ping_pong")]
    pub q_len: Option<usize>,
    /// Key/value length [default: N]
    #[arg(long, value_name = "NK")]
    pub kv_len: Option<usize>,
    /// Batch entries
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Query heads
    #[arg(long, visible_alias = "q-heads", default_value_t = 8)]
    pub heads: usize,
    /// Key/value heads [default: --heads]
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Head dimension d
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
    /// Value dimension [default: d]
    #[arg(long)]
    pub v_dim: Option<usize>,
    /// Mask, scale, how the ring is cut, ranks, threads, deadline.
    #[command(flatten)]
    pub ring: RingFlags,
    /// Untimed runs of the whole ring first
    #[arg(long, default_value_t = 0)]
    pub warmup: u32,
    /// Timed runs; the figures are from the run with the median ring time
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: u32,
    /// Time one rank of the ring alone: its block calls and merges at the
    /// ring's chunk sizes (the other ranks' blocks come from memory), with
    /// --threads threads and nothing else running: the per-rank throughput
    #[arg(long, conflicts_with = "ping_pong")]
    pub solo: bool,
    /// The rank --solo times
    #[arg(long, default_value_t = 0, requires = "solo")]
    pub rank: usize,
    /// MPI point-to-point latency and bandwidth between ranks 0 and 1
    /// (needs mpirun -np 2 and the `mpi` feature)
    #[arg(long)]
    pub ping_pong: bool,
    /// Append the result to the results file (with machine, commit, date)
    #[arg(long)]
    pub json: bool,
    /// Results file for --json [default: results/ring.json of the workspace]
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,
}

const BENCH_AFTER_HELP: &str = "\
Overlap. Each timed run of the ring is followed by the same P - 1 shifts with
nothing to compute (all ranks started together): the transfer time. A rank's
overlap is 1 - exposed / transfer, clamped to [0, 1], where `exposed` is the
time of the ring's shifts outside its compute (waiting for the next block, or
for a slower neighbour). GFLOP/s: 4·d FLOPs (2·d + 2·dv) per visible
(query, key) pair and query head, over the compute time (per rank) or the
ring's time (the slowest rank's total).

Examples:
  attn ring-bench --q-len 16384 --causal --ranks 4
  mpirun -np 4 attn ring-bench --q-len 65536 --causal --json
  attn ring-bench --q-len 65536 --causal --ranks 4 --solo --threads 2 --json
  mpirun -np 2 attn ring-bench --ping-pong --json";

/// The benchmark the flags ask for, with `ranks` ranks of `threads`.
fn config(args: &RingBenchArgs, ranks: usize, threads: usize) -> Result<BenchConfig, String> {
    let n = args.q_len.ok_or("--q-len is required")?;
    let shape = AttnShape::builder()
        .batch(args.batch)
        .q_heads(args.heads)
        .kv_heads(args.kv_heads.unwrap_or(args.heads))
        .q_len(n)
        .kv_len(args.kv_len.unwrap_or(n))
        .head_dim(args.head_dim)
        .v_dim(args.v_dim.unwrap_or(args.head_dim))
        .build()
        .map_err(|e| format!("shape: {e}"))?;
    Ok(BenchConfig {
        problem: RingProblem {
            shape,
            layout: args.ring.layout,
            tensors: Layout::Bhnd,
            mask: args.ring.mask()?,
            scale: args.ring.scale,
        },
        ranks,
        threads,
        warmup: args.warmup,
        reps: args.reps,
        deadline: args.ring.deadline()?,
    })
}

fn results_path(args: &RingBenchArgs) -> PathBuf {
    args.results.clone().unwrap_or_else(|| workspace_root().join("results/ring.json"))
}

/// Prints a ring's figures.
pub fn print_ring(e: &RingEntry) {
    let p = &e.problem;
    println!(
        "ring: B={} H={}/{} N={} Nk={} d={} dv={} {} {}, {} ranks ({}) × {} thread(s), \
         median of {} run(s)",
        p.batch,
        p.q_heads,
        p.kv_heads,
        p.q_len,
        p.kv_len,
        p.head_dim,
        p.v_dim,
        p.mask,
        p.layout,
        p.ranks,
        e.transport,
        p.threads,
        e.reps
    );
    println!(
        "{:>4} {:>11} {:>11} {:>11} {:>8} {:>11} {:>11} {:>9}",
        "rank", "compute s", "exposed s", "alone s", "overlap", "agree s", "total s", "GFLOP/s"
    );
    let pct = |o: Option<f64>| o.map_or("-".into(), |o| format!("{:.0}%", o * 100.0));
    for r in &e.ranks {
        println!(
            "{:>4} {:>11.4} {:>11.4} {:>11.4} {:>8} {:>11.4} {:>11.4} {:>9.1}",
            r.rank,
            r.compute_s,
            r.exposed_comm_s,
            r.transfer_alone_s,
            pct(r.overlap),
            r.agreement_s,
            r.total_s,
            r.gflops
        );
    }
    println!(
        "ring: {:.4} s, {:.1} GFLOP/s; overlap {} (exposed {:.4} s of {:.4} s of transfers, \
         all ranks)",
        e.wall_s,
        e.gflops,
        pct(e.overlap),
        e.exposed_comm_s,
        e.transfer_alone_s
    );
}

/// Prints the error (one line) and returns exit status 2.
fn fail(rank: Option<usize>, e: &str) -> ExitCode {
    use std::io::Write;
    let line = match rank {
        Some(r) => format!("attn ring-bench: rank {r}: {e}\n"),
        None => format!("attn ring-bench: {e}\n"),
    };
    let _ = std::io::stderr().write_all(line.as_bytes());
    ExitCode::from(2)
}

/// Appends `entry` when `--json`.
fn save(args: &RingBenchArgs, entry: Entry) -> Result<(), String> {
    if !args.json {
        return Ok(());
    }
    let path = results_path(args);
    results::append(&path, entry)?;
    eprintln!("attn ring-bench: appended to {}", path.display());
    Ok(())
}

/// Entry point of `attn ring-bench`.
pub fn main(args: &RingBenchArgs) -> ExitCode {
    warn_if_unoptimized("attn ring-bench");
    let launch = Launch::detect();
    if let Err(e) = launch.check_supported("ring-bench") {
        return fail(None, &e);
    }
    match launch {
        #[cfg(feature = "mpi")]
        Launch::Mpi { size, .. } => main_mpi(args, launch, size),
        _ => main_in_process(args),
    }
}

fn main_in_process(args: &RingBenchArgs) -> ExitCode {
    if args.ping_pong {
        return fail(
            None,
            "--ping-pong measures MPI between two processes: run it under mpirun -np 2 with \
             attn built with --features mpi",
        );
    }
    let ranks = args.ring.ranks.map_or(DEFAULT_RANKS, |p| p.get());
    let solo = args.solo;
    let threads = args.ring.threads_for(if solo { 1 } else { ranks });
    let cfg = match config(args, ranks, threads) {
        Ok(c) => c,
        Err(e) => return fail(None, &e),
    };
    let context = Context::collect(None, 1, if solo { 1 } else { ranks });
    let entry = if solo {
        match bench_solo(&cfg, args.rank, context) {
            Ok(s) => {
                println!(
                    "solo: rank {} of {} (chunk {} tokens, block calls of up to {} rows), \
                     {} thread(s): compute {:.4} s, {:.1} GFLOP/s",
                    s.rank, cfg.ranks, s.chunk, s.block_rows, cfg.threads, s.compute_s, s.gflops
                );
                Entry::Solo(s)
            }
            Err(e) => return fail(None, &e.to_string()),
        }
    } else {
        match bench_in_process(&cfg) {
            Ok(runs) => {
                let problem = ProblemRecord::new(&cfg.problem, cfg.ranks, cfg.threads);
                let e = ring_entry(context, problem, "in-process", cfg.warmup, &runs);
                print_ring(&e);
                Entry::Ring(e)
            }
            Err(e) => return fail(None, &e.to_string()),
        }
    };
    match save(args, entry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(None, &e),
    }
}

#[cfg(feature = "mpi")]
fn main_mpi(args: &RingBenchArgs, launch: Launch, size: usize) -> ExitCode {
    use crate::ring::mpi;
    use attnlab::ring::Transport;
    if args.solo {
        return fail(None, "--solo times one rank alone: run it without mpirun");
    }
    let ranks_here = launch.ranks_on_this_machine(1);
    let threads = args.ring.threads_for(ranks_here);
    let deadline = args.ring.deadline().unwrap_or(crate::ring::run::DEFAULT_DEADLINE);
    mpi::session(
        deadline,
        |t| {
            // Rank 0 records the machine before anything runs.
            let context =
                (t.rank() == 0).then(|| Context::collect(Some(mpi::library()), size, ranks_here));
            if args.ping_pong {
                let points = mpi::ping_pong(t)?;
                return Ok(points.zip(context).map(|(points, context)| {
                    Entry::PingPong(results::PingPongEntry { context, points })
                }));
            }
            let ranks = args.ring.ranks.map_or(size, |p| p.get());
            // Every rank parsed the same flags: a bad one fails every rank
            // alike, before any message.
            let cfg = config(args, ranks, threads)?;
            let runs = mpi::bench(t, &cfg)?;
            Ok(runs.zip(context).map(|(runs, context)| {
                let problem = ProblemRecord::new(&cfg.problem, cfg.ranks, cfg.threads);
                Entry::Ring(ring_entry(context, problem, "mpi", cfg.warmup, &runs))
            }))
        },
        |rank, outcome| match outcome {
            Ok(Some(entry)) => {
                match &entry {
                    Entry::Ring(e) => print_ring(e),
                    Entry::PingPong(p) => {
                        println!(
                            "{:>10} {:>12} {:>12} {:>10}",
                            "bytes", "median µs", "best µs", "GB/s"
                        );
                        for x in &p.points {
                            println!(
                                "{:>10} {:>12.2} {:>12.2} {:>10.3}",
                                x.bytes,
                                x.one_way_s * 1e6,
                                x.best_one_way_s * 1e6,
                                x.bandwidth() / 1e9
                            );
                        }
                    }
                    Entry::Solo(_) => {}
                }
                match save(args, entry) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(Some(rank), &e),
                }
            }
            Ok(None) => ExitCode::SUCCESS,
            Err(e) => fail(Some(rank), &e),
        },
    )
}
