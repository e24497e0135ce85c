//! `attn decode`: one KV-cache decode configuration, through the runner
//! of the sweep's decode rows ([`crate::measure::decode`]) and with the
//! same ids (`decode/flash/gqa/f16/t2/32768`).
//!
//! Fills a cache of the chosen storage type with seeded K/V of length
//! `--kv-len` for every batch entry, then times `attnlab::flash::decode`
//! of `--q-len` new queries (seeded standard-normal, f32): `--warmup`
//! untimed and `--reps` timed calls (median). Reports the K+V bytes read
//! per step, the achieved GB/s and its percentage of the read bandwidth
//! measured by `attn peak`'s microbenchmark in the same process.

use super::mods::GenModArgs;
use crate::config::{Config, Dtype, Kind, MaskSpec};
use crate::machine::{self, PeakOptions};
use crate::measure::{self, MeasureOpts, SEED, decode::MAX_ERR_ROWS};
use crate::report::console;
use crate::results::Status;
use std::process::ExitCode;

/// `attn decode` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DecodeArgs {
    /// Batch size B (every entry holds --kv-len positions).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Query heads Hq.
    #[arg(long, default_value_t = 32)]
    pub q_heads: usize,
    /// Key/value heads Hkv (Hq must be a multiple).
    #[arg(long, default_value_t = 8)]
    pub kv_heads: usize,
    /// New queries per step, nq (1..=16 typical); bottom-right causal among
    /// themselves.
    #[arg(long, default_value_t = 1)]
    pub q_len: usize,
    /// Cached positions L.
    #[arg(long, default_value_t = 32768)]
    pub kv_len: usize,
    /// Head dim d (also dv).
    #[arg(long, default_value_t = 128)]
    pub head_dim: usize,
    /// Storage type of the cache: f32, f16, bf16 or q8_0 (ggml blocks of 32 int8 values and an f16 scale).
    #[arg(long, default_value = "f32")]
    pub cache_dtype: String,
    /// Sliding window LEFT,RIGHT instead of causal; `inf`, -1, `-` or
    /// nothing for an unbounded side.
    #[arg(long, value_name = "LEFT,RIGHT", allow_hyphen_values = true)]
    pub window: Option<String>,
    /// Threads (a rayon pool of this size); default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Untimed calls first (the first call, which measures memory,
    /// included).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed calls (median reported).
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// Print the row as one JSON object (the sweep's row format) instead
    /// of a line of text.
    #[arg(long)]
    pub json: bool,
    /// Score modifiers (not --bias: decode reads a KV cache, and a bias is
    /// prefill only).
    #[command(flatten)]
    pub mods: GenModArgs,
}
/// Entry point of `attn decode`.
pub fn main(a: &DecodeArgs) -> ExitCode {
    let cfg = match config_from_args(a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("attn decode: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = MeasureOpts {
        seed: SEED,
        direct_min_ms: 0.0,
        budget_s: f64::INFINITY, // exactly --reps timed calls
        max_reps: a.reps,
        err_rows: MAX_ERR_ROWS,
        peak_gflops: None,
    };
    let mut row = measure::measure_with_warmup(&cfg, &opts, a.warmup);
    if row.status == Status::Error {
        eprintln!("attn decode: {}", row.note);
        return ExitCode::from(2);
    }
    let peak = machine::measure_peak(&PeakOptions::quick(cfg.threads));
    row.set_read_gbs(Some(peak.read_gbs(cfg.threads)));
    if a.json {
        println!("{}", serde_json::to_string(&row).expect("rows serialize"));
    } else {
        println!("{}", console::decode_line(&row));
    }
    ExitCode::SUCCESS
}

/// The decode configuration the flags describe.
fn config_from_args(a: &DecodeArgs) -> Result<Config, String> {
    let dtype = Dtype::parse(&a.cache_dtype).map_err(|e| format!("--cache-dtype: {e}"))?;
    if a.reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    if a.mods.bias.is_some() {
        return Err("--bias: decode takes no bias (a bias is prefill only: attn bench or \
                    attn run take one)"
            .into());
    }
    let mask = match &a.window {
        Some(w) => MaskSpec::parse_window(w)?,
        None => MaskSpec::Causal,
    };
    let cfg = Config {
        kind: Kind::Decode,
        kernel: "flash".into(),
        batch: a.batch,
        q_heads: a.q_heads,
        kv_heads: a.kv_heads,
        q_len: a.q_len,
        kv_len: a.kv_len,
        head_dim: a.head_dim,
        v_dim: a.head_dim,
        mask,
        dtype,
        threads: a.threads.unwrap_or_else(machine::logical_cpus).max(1),
        mods: a.mods.mods()?,
    };
    cfg.shape().map_err(|e| e.to_string())?;
    cfg.mods.validate_for(cfg.q_heads)?;
    Ok(cfg)
}
