//! `attn saturate`: the softmax-saturation study ([`crate::saturate`]):
//! runs a profile, writes its results file, then `docs/saturation.md` and
//! its plots ([`crate::report::saturation`]); `--report-only` regenerates
//! the docs from an existing results file.

use crate::report::saturation::generate;
use crate::report::source_name;
use crate::results::workspace_root;
use crate::saturate::{self, Profile, results};
use std::path::PathBuf;
use std::process::ExitCode;

/// `attn saturate` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SaturateArgs {
    /// The longer profile: N up to 256k, twice the rows, every scale
    /// multiplier in the depth experiment (writes
    /// `results/saturation-full.json` unless `--results` says otherwise)
    #[arg(long, conflicts_with_all = ["tiny", "report_only"])]
    pub full: bool,
    /// A seconds-long profile of tiny sizes (for tests; its numbers mean
    /// little)
    #[arg(long, hide = true, conflicts_with = "report_only")]
    pub tiny: bool,
    /// Do not run anything: regenerate the docs from the results file
    #[arg(long)]
    pub report_only: bool,
    /// Results file to write (or, with `--report-only`, to read); default
    /// `results/saturation.json` of the workspace (`saturation-full.json`
    /// with `--full`)
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Folder for `saturation.md` and its plots (default: `docs/` of the
    /// workspace)
    #[arg(long)]
    pub docs: Option<PathBuf>,
    /// Threads (default: every logical CPU)
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Entry point of `attn saturate`.
pub fn main(args: &SaturateArgs) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attn saturate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &SaturateArgs) -> Result<(), String> {
    let root = workspace_root();
    let profile = if args.full {
        Profile::Full
    } else if args.tiny {
        Profile::Tiny
    } else {
        Profile::Default
    };
    let file = if profile == Profile::Full { "saturation-full.json" } else { "saturation.json" };
    let path = args.results.clone().unwrap_or_else(|| root.join("results").join(file));
    let docs = args.docs.clone().unwrap_or_else(|| root.join("docs"));
    let run = if args.report_only {
        results::load(&path)?
    } else {
        crate::machine::warn_if_unoptimized("attn saturate");
        let threads = args.threads.unwrap_or_else(crate::machine::logical_cpus);
        if threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| format!("cannot start {threads} threads: {e}"))?;
        let run = pool.install(|| saturate::run(profile, |line| eprintln!("{line}")))?;
        results::write(&run, &path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("wrote {}", path.display());
        eprintln!("took {:.1} s", run.duration_s);
        run
    };
    let written = generate(&run, &docs, &source_name(&path, &root))
        .map_err(|e| format!("cannot write the docs in {}: {e}", docs.display()))?;
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}
