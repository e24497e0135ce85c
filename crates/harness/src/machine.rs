//! Machine facts and `attn peak`. (Interface fixed; body being written.)

use std::process::ExitCode;

/// `attn peak` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PeakArgs {}

/// Entry point of `attn peak`.
pub fn peak_main(_args: &PeakArgs) -> ExitCode {
    eprintln!("attn peak: not available in this build yet");
    ExitCode::from(2)
}
