//! `attn ring-report`: `docs/ring.md` (and `docs/img/ring_model.svg`) from
//! `results/ring.json`, without running anything
//! ([`crate::report::ring`]).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::report::ring::generate_ring;
use crate::report::source_name;
use crate::results::workspace_root;
use crate::ring::results::load;

/// `attn ring-report` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct RingReportArgs {
    /// Results file [default: results/ring.json of the workspace]
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Output folder for `ring.md` and `img/ring_model.svg` [default: docs/
    /// of the workspace]
    #[arg(long, value_name = "DIR")]
    pub docs: Option<PathBuf>,
}

/// Entry point of `attn ring-report`.
pub fn main(args: &RingReportArgs) -> ExitCode {
    let root = workspace_root();
    let input = args.input.clone().unwrap_or_else(|| root.join("results/ring.json"));
    let docs = args.docs.clone().unwrap_or_else(|| root.join("docs"));
    if !input.exists() {
        eprintln!("attn ring-report: {}: no such file", input.display());
        return ExitCode::FAILURE;
    }
    let results = match load(&input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("attn ring-report: {e}");
            return ExitCode::FAILURE;
        }
    };
    match generate_ring(&results, &docs, &source_name(&input, &root)) {
        Ok(paths) => {
            for p in paths {
                println!("wrote {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("attn ring-report: {e}");
            ExitCode::FAILURE
        }
    }
}
