//! The `attn` command line: one file per subcommand, each its clap flags
//! and a `main`; the work lives in the other modules.
//!
//! - `attn run`: attention on `.npy` files, timed ([`run`], work in
//!   [`crate::npy_call`]);
//! - `attn grad`: gradients dQ, dK, dV on `.npy` files, timed ([`grad`],
//!   work in [`crate::npy_call::grad`]);
//! - `attn bench`: one prefill configuration ([`mod@bench`], work in
//!   [`crate::measure`]);
//! - `attn decode`: one KV-cache decode configuration ([`decode`], the
//!   sweep's decode runner);
//! - `attn peak`: machine limits ([`peak`], [`crate::machine::peak`]);
//! - `attn report`: `docs/` from a results file ([`report`],
//!   [`crate::report`]);
//! - `attn ring`: ring attention on `.npy` files over P ranks, in one
//!   process or under `mpirun` ([`mod@ring`], work in [`crate::ring`]);
//! - `attn ring-bench`: a ring timed on generated inputs, one rank alone,
//!   MPI ping-pong ([`ring_bench`], [`crate::ring::bench`]);
//! - `attn ring-report`: `docs/ring.md` from `results/ring.json`
//!   ([`ring_report`], [`crate::report::ring`]);
//! - `attn saturate`: the softmax-saturation study and
//!   `docs/saturation.md` ([`saturate`], work in [`crate::saturate`]).
//!
//! The score-modifier flags: [`run::CallArgs`] for `attn run` and `attn
//! grad` (files), [`mods::GenModArgs`] for `attn bench` and `attn decode`
//! (numbers, or generated).

pub mod bench;
pub mod decode;
pub mod grad;
pub mod mods;
pub mod peak;
pub mod report;
pub mod ring;
pub mod ring_bench;
pub mod ring_report;
pub mod run;
pub mod saturate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// attnlab: memory-efficient scaled dot-product attention on CPUs.
#[derive(Debug, Parser)]
#[command(name = "attn", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands; each owns its flags (`clap::Args`) and entry point.
#[derive(Debug, Subcommand)]
enum Command {
    /// Attention on .npy files: read Q, K, V, run a kernel, write O (and the
    /// LSE); prints `time_ms=` per timed call
    Run(run::RunArgs),
    /// Gradients on .npy files: read Q, K, V and dO, run the forward
    /// (untimed), then the backward; write dQ, dK, dV; prints `time_ms=` per
    /// timed backward call
    Grad(grad::GradArgs),
    /// Benchmark one prefill configuration (the long-context sweep is
    /// `cargo bench -p harness`)
    Bench(bench::BenchArgs),
    /// Measure this machine's limits (FMA throughput, memory bandwidth)
    Peak(peak::PeakArgs),
    /// Turn results/ into docs/results.md and plots
    Report(report::ReportArgs),
    /// Benchmark one KV-cache decode configuration (split-KV, GB/s of K+V)
    Decode(decode::DecodeArgs),
    /// Ring attention on .npy files over P ranks: threads of this process, or
    /// the processes of `mpirun -np P` (built with `--features mpi`)
    Ring(ring::RingArgs),
    /// Time a ring on generated inputs (per rank compute, exposed
    /// communication, overlap, GFLOP/s), one rank alone, or MPI ping-pong
    RingBench(ring_bench::RingBenchArgs),
    /// Turn results/ring.json into docs/ring.md and its plot
    RingReport(ring_report::RingReportArgs),
    /// The softmax-saturation study: statistics of one layer vs N, scale
    /// and modifiers, and of a 32-block stack; writes
    /// results/saturation.json and docs/saturation.md
    Saturate(saturate::SaturateArgs),
}

/// Parses the command line and runs the subcommand. Warns first on stderr
/// when the build leaves vector units of this CPU unused
/// (`attnlab::isa::warning`; `ATTNLAB_NO_ISA_WARNING=1` silences it).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("ATTNLAB_NO_ISA_WARNING").is_none()
        && let Some(w) = attnlab::isa::warning()
    {
        eprintln!("attn: warning: {w}");
    }
    match cli.command {
        Command::Run(args) => run::main(&args),
        Command::Grad(args) => grad::main(&args),
        Command::Bench(args) => bench::main(&args),
        Command::Peak(args) => peak::main(&args),
        Command::Report(args) => report::main(&args),
        Command::Decode(args) => decode::main(&args),
        Command::Ring(args) => ring::main(&args),
        Command::RingBench(args) => ring_bench::main(&args),
        Command::RingReport(args) => ring_report::main(&args),
        Command::Saturate(args) => saturate::main(&args),
    }
}
