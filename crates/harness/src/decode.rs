//! `attn decode`: benchmark one KV-cache decode configuration.
//!
//! Fills a [`KvCache`] of the chosen storage type with seeded
//! standard-normal K/V of length `--kv-len` for every batch entry, then
//! times `attn_flash::decode` of `--q-len` new queries: `--warmup` untimed
//! and `--reps` timed calls (median). Reports the K+V bytes read per step,
//! the achieved GB/s and its percentage of the read bandwidth measured by
//! `attn peak`'s microbenchmark in the same process.

use crate::machine::{PeakOptions, measure_peak};
use crate::sweep::normal;
use attn_core::{AttnParams, Element, Mask, Par, bf16, f16};
use attn_flash::{KvCache, decode};
use std::process::ExitCode;
use std::time::Instant;

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
    /// Storage type of the cache: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub cache_dtype: String,
    /// Sliding window LEFT,RIGHT instead of causal (`inf` = unbounded).
    #[arg(long)]
    pub window: Option<String>,
    /// Threads (a rayon pool of this size); default: all cores.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Untimed calls first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed calls (median reported).
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub json: bool,
}

/// One decode measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecodeRow {
    /// Configuration, e.g. `decode/gqa/f16/L32768/nq1`.
    pub id: String,
    /// Cache storage type.
    pub cache_dtype: String,
    /// B, Hq, Hkv, nq, L, d.
    pub batch: usize,
    /// Query heads.
    pub q_heads: usize,
    /// K/V heads.
    pub kv_heads: usize,
    /// New queries.
    pub q_len: usize,
    /// Cached positions.
    pub kv_len: usize,
    /// Head dim.
    pub head_dim: usize,
    /// Threads.
    pub threads: usize,
    /// Median time of one step.
    pub median_ms: f64,
    /// Microseconds per step.
    pub us_per_step: f64,
    /// K+V bytes read per step.
    pub kv_bytes: u64,
    /// Achieved GB/s (1e9 bytes) of K+V.
    pub gbs: f64,
    /// Read bandwidth measured in the same process for this thread count.
    pub read_gbs: f64,
    /// `gbs / read_gbs`, percent.
    pub pct_bandwidth: f64,
    /// Timed calls.
    pub reps: usize,
}

/// Parses `LEFT,RIGHT` (`inf` or `-1` = unbounded).
fn parse_window(s: &str) -> Result<Mask, String> {
    let side = |x: &str| -> Result<Option<usize>, String> {
        match x.trim() {
            "inf" | "-1" => Ok(None),
            v => v.parse().map(Some).map_err(|_| format!("--window: bad side '{v}'")),
        }
    };
    let (l, r) =
        s.split_once(',').ok_or_else(|| format!("--window: expected LEFT,RIGHT, got '{s}'"))?;
    Ok(Mask::Window { left: side(l)?, right: side(r)? })
}

/// Runs one decode configuration (see the module docs).
pub fn measure_decode(a: &DecodeArgs) -> Result<DecodeRow, String> {
    match a.cache_dtype.as_str() {
        "f32" => measure_typed::<f32>(a),
        "f16" => measure_typed::<f16>(a),
        "bf16" => measure_typed::<bf16>(a),
        other => Err(format!("--cache-dtype: expected f32, f16 or bf16, got '{other}'")),
    }
}

fn measure_typed<T: Element>(a: &DecodeArgs) -> Result<DecodeRow, String> {
    let threads = a.threads.unwrap_or_else(crate::machine::logical_cpus).max(1);
    if a.reps == 0 {
        return Err("--reps must be at least 1".into());
    }
    let mask = match &a.window {
        Some(w) => parse_window(w)?,
        None => Mask::Causal,
    };
    let mut cache = KvCache::<T>::new(a.batch, a.kv_heads, a.kv_len, a.head_dim, a.head_dim)
        .map_err(|e| e.to_string())?;
    let per = a.kv_heads * a.kv_len * a.head_dim;
    for b in 0..a.batch {
        let k: Vec<f32> = normal(per, 1 + b as u64, 1);
        let v: Vec<f32> = normal(per, 1 + b as u64, 2);
        cache.append(b, &k, &v).map_err(|e| e.to_string())?;
    }
    let q: Vec<f32> = normal(a.batch * a.q_heads * a.q_len * a.head_dim, 7, 3);
    let mut out = vec![0f32; a.batch * a.q_heads * a.q_len * a.head_dim];
    let mut lse = vec![0f32; a.batch * a.q_heads * a.q_len];
    let params = AttnParams { mask, check_finite: false, ..Default::default() };
    let pool =
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| e.to_string())?;
    let par = if threads == 1 { Par::Seq } else { Par::Rayon(threads) };
    let mut times = Vec::with_capacity(a.reps);
    pool.install(|| -> Result<(), String> {
        for i in 0..a.warmup + a.reps {
            let t0 = Instant::now();
            decode(&cache, &q, a.q_heads, a.q_len, &mut out, Some(&mut lse), &params, par)
                .map_err(|e| e.to_string())?;
            if i >= a.warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok(())
    })?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let peak = measure_peak(&PeakOptions::quick(threads));
    let read_gbs = if threads == 1 { peak.read_gbs_1t } else { peak.read_gbs_all };
    let kv_bytes = cache.bytes_in_use() as u64;
    let gbs = kv_bytes as f64 / median / 1e9;
    let grouping = crate::sweep::grouping_name(a.q_heads, a.kv_heads);
    Ok(DecodeRow {
        id: format!("decode/{grouping}/{}/L{}/nq{}", T::NAME, a.kv_len, a.q_len),
        cache_dtype: T::NAME.into(),
        batch: a.batch,
        q_heads: a.q_heads,
        kv_heads: a.kv_heads,
        q_len: a.q_len,
        kv_len: a.kv_len,
        head_dim: a.head_dim,
        threads,
        median_ms: median * 1e3,
        us_per_step: median * 1e6,
        kv_bytes,
        gbs,
        read_gbs,
        pct_bandwidth: 100.0 * gbs / read_gbs,
        reps: a.reps,
    })
}

/// Entry point of `attn decode`.
pub fn decode_main(a: &DecodeArgs) -> ExitCode {
    match measure_decode(a) {
        Ok(r) if a.json => {
            println!("{}", serde_json::to_string(&r).expect("row serializes"));
            ExitCode::SUCCESS
        }
        Ok(r) => {
            println!(
                "{}: B={} Hq={} Hkv={} nq={} L={} d={} threads={}: {:.3} ms/step, {:.1} GB/s of K+V \
                 ({:.0}% of {:.1} GB/s measured read bandwidth)",
                r.id,
                r.batch,
                r.q_heads,
                r.kv_heads,
                r.q_len,
                r.kv_len,
                r.head_dim,
                r.threads,
                r.median_ms,
                r.gbs,
                r.pct_bandwidth,
                r.read_gbs
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("attn decode: {e}");
            ExitCode::from(2)
        }
    }
}
