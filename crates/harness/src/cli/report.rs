//! `attn report`: regenerate `docs/` from a results file without running
//! anything ([`crate::report::generate`]).

use crate::report::{generate, source_name};
use crate::results::{load, workspace_root};
use std::path::PathBuf;
use std::process::ExitCode;

/// `attn report` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Results file (default: `results/latest.json` of the workspace).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output folder for `results.md`, `headline.md` and `img/`
    /// (default: `docs/` of the workspace).
    #[arg(long)]
    pub docs: Option<PathBuf>,
}

/// Entry point of `attn report`.
pub fn main(args: &ReportArgs) -> ExitCode {
    let root = workspace_root();
    let input = args.input.clone().unwrap_or_else(|| root.join("results/latest.json"));
    let docs = args.docs.clone().unwrap_or_else(|| root.join("docs"));
    let run = match load(&input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("attn report: {e}");
            return ExitCode::FAILURE;
        }
    };
    match generate(&run, &docs, &source_name(&input, &root)) {
        Ok(paths) => {
            for p in paths {
                println!("wrote {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("attn report: {e}");
            ExitCode::FAILURE
        }
    }
}
