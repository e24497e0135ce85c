//! `attn bench`: one prefill configuration measured in this process, as
//! the sweep measures it ([`crate::measure::measure`]).

use super::mods::GenModArgs;
use crate::config::{Config, Dtype, Kind, MaskSpec};
use crate::machine::{self, PeakOptions};
use crate::measure::{self, MeasureOpts, SEED};
use crate::report::console;
use crate::results::Status;
use attnlab::Kernel;
use std::process::ExitCode;

/// `attn bench` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Kernel: naive or flash (oracle works too, slowly).
    #[arg(long, default_value = "flash")]
    pub kernel: String,
    /// Batch size B.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Query heads Hq.
    #[arg(long, default_value_t = 8)]
    pub q_heads: usize,
    /// Key/value heads Hkv (Hq = Hkv: MHA, 1: MQA, else GQA).
    #[arg(long, default_value_t = 8)]
    pub kv_heads: usize,
    /// Query length Nq.
    #[arg(long, default_value_t = 4096)]
    pub q_len: usize,
    /// Key/value length Nk (default: Nq).
    #[arg(long)]
    pub kv_len: Option<usize>,
    /// Q/K head dimension d.
    #[arg(long, default_value_t = 64)]
    pub head_dim: usize,
    /// V head dimension (default: d).
    #[arg(long)]
    pub v_dim: Option<usize>,
    /// Bottom-right causal mask: 0 or 1.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub causal: u8,
    /// Sliding window `L,R` around the bottom-right diagonal; `inf`, `-1`,
    /// `-` or nothing for an unbounded side, e.g. `128,0`.
    #[arg(long, value_name = "L,R", allow_hyphen_values = true)]
    pub window: Option<String>,
    /// Storage type of Q, K, V: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Threads (default: every logical CPU); 1 runs `Par::Seq`.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object (`median_ms`, `gflops`, `pct_peak`,
    /// `extra_bytes`, `peak_rss_bytes`, `max_abs_err`, `tiles`, `cpu`, ...).
    #[arg(long)]
    pub json: bool,
    /// Most timed calls (the first, memory-measured call included).
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// Stop adding timed calls after this many seconds.
    #[arg(long, default_value_t = 5.0)]
    pub budget_s: f64,
    /// Query rows checked against the f64 evaluation (0: no check).
    #[arg(long, default_value_t = 32)]
    pub err_rows: usize,
    /// FMA peak (GFLOP/s) for "% of peak"; default: measured now (~0.3 s).
    #[arg(long)]
    pub peak_gflops: Option<f64>,
    /// Score modifiers (the error check uses them too).
    #[command(flatten)]
    pub mods: GenModArgs,
}
/// Entry point of `attn bench`.
pub fn main(args: &BenchArgs) -> ExitCode {
    machine::warn_if_unoptimized("attn bench");
    let cfg = match config_from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("attn bench: {e}");
            return ExitCode::from(2);
        }
    };
    let peak = match args.peak_gflops {
        Some(p) => p,
        None => machine::measure_peak(&PeakOptions::quick(cfg.threads)).fma_gflops(cfg.threads),
    };
    let opts = MeasureOpts {
        seed: SEED,
        direct_min_ms: 0.0,
        budget_s: args.budget_s,
        max_reps: args.reps.max(1),
        err_rows: args.err_rows,
        peak_gflops: Some(peak),
    };
    let row = measure::measure(&cfg, &opts);
    if args.json {
        println!("{}", serde_json::to_string(&row).expect("rows serialize"));
    } else {
        print!("{}", console::summary(&row));
    }
    if row.status == Status::Error { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The configuration the flags describe.
fn config_from_args(a: &BenchArgs) -> Result<Config, String> {
    let kernel: Kernel = a.kernel.parse()?;
    let dtype = Dtype::parse(&a.dtype)?;
    let mask = MaskSpec::from_flags(a.causal == 1, a.window.as_deref())?;
    let cfg = Config {
        kind: Kind::Prefill,
        kernel: kernel.name().to_string(),
        batch: a.batch,
        q_heads: a.q_heads,
        kv_heads: a.kv_heads,
        q_len: a.q_len,
        kv_len: a.kv_len.unwrap_or(a.q_len),
        head_dim: a.head_dim,
        v_dim: a.v_dim.unwrap_or(a.head_dim),
        mask,
        dtype,
        threads: a.threads.unwrap_or_else(machine::logical_cpus).max(1),
        mods: a.mods.mods()?,
    };
    cfg.shape().map_err(|e| e.to_string())?;
    cfg.mods.validate_for(cfg.q_heads)?;
    Ok(cfg)
}
