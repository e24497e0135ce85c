//! The long-context sweep and `attn bench` (one configuration).
//! (Interface fixed; body being written.)

use std::process::ExitCode;

/// `attn bench` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {}

/// Entry point of `attn bench`.
pub fn bench_main(_args: &BenchArgs) -> ExitCode {
    eprintln!("attn bench: not available in this build yet");
    ExitCode::from(2)
}
