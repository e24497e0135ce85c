//! `attn`: attnlab's command line.
//!
//! - `attn run`: attention on `.npy` files, timed (the protocol of
//!   `shared/peers`); see [`harness::run`].
//! - `attn bench`, `attn peak`, `attn report`: the sweep, machine limits and
//!   the report generator; see [`harness::sweep`], [`harness::machine`] and
//!   [`harness::report`].
//! - `attn decode`: one KV-cache decode configuration; see
//!   [`harness::decode`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use harness::{decode, machine, report, run, sweep};

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
    /// Benchmark one configuration, or run the long-context sweep
    Bench(sweep::BenchArgs),
    /// Measure this machine's limits (FMA throughput, memory bandwidth)
    Peak(machine::PeakArgs),
    /// Turn results/ into docs/results.md and plots
    Report(report::ReportArgs),
    /// Benchmark one KV-cache decode configuration (split-KV, GB/s of K+V)
    Decode(decode::DecodeArgs),
}

// `attn bench` and `attn decode` measure a call's extra heap bytes.
#[global_allocator]
static ALLOC: harness::alloc::CountingAlloc = harness::alloc::CountingAlloc;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => run::run_main(&args),
        Command::Bench(args) => sweep::bench_main(&args),
        Command::Peak(args) => machine::peak_main(&args),
        Command::Report(args) => report::report_main(&args),
        Command::Decode(args) => decode::decode_main(&args),
    }
}
