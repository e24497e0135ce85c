//! `results/` -> `docs/results.md` and plots, and `attn report`.
//! (Interface fixed; body being written.)

use std::process::ExitCode;

/// `attn report` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {}

/// Entry point of `attn report`.
pub fn report_main(_args: &ReportArgs) -> ExitCode {
    eprintln!("attn report: not available in this build yet");
    ExitCode::from(2)
}
