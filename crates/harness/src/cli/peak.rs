//! `attn peak`: this machine's limits (FMA throughput, read bandwidth),
//! measured by [`crate::machine::peak`].

use crate::machine::{self, PeakOptions, logical_cpus, measure_peak};
use std::process::ExitCode;

/// `attn peak` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PeakArgs {
    /// Print one JSON object (`fma_gflops_1t`, `fma_gflops_all`,
    /// `read_gbs_1t`, `read_gbs_all`, ...) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Threads for the "all" figures (default: every logical CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Fewer, shorter repetitions (about 0.5 s instead of 2 s).
    #[arg(long)]
    pub quick: bool,
}

/// Entry point of `attn peak`.
pub fn main(args: &PeakArgs) -> ExitCode {
    machine::warn_if_unoptimized("attn peak");
    let threads = args.threads.unwrap_or_else(logical_cpus).max(1);
    let opts = if args.quick { PeakOptions::quick(threads) } else { PeakOptions::new(threads) };
    let p = measure_peak(&opts);
    if args.json {
        match serde_json::to_string(&p) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("attn peak: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        println!("CPU: {}", crate::machine::facts::cpu_id(&cpuinfo));
        println!("kernels compiled for: {}", attnlab::isa::compiled());
        println!("FMA peak ({}):", p.fma_method);
        println!("  1 thread:    {:8.1} GFLOP/s", p.fma_gflops_1t);
        println!("  {} threads: {:8.1} GFLOP/s", p.threads_all, p.fma_gflops_all);
        println!("Read bandwidth ({}):", p.read_method);
        println!("  1 thread:    {:8.1} GB/s", p.read_gbs_1t);
        println!("  {} threads: {:8.1} GB/s", p.threads_all, p.read_gbs_all);
    }
    ExitCode::SUCCESS
}
