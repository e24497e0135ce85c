//! `attn decode`: benchmark one KV-cache decode configuration; and the
//! decode configurations of the sweep ([`prepare`], see [`crate::sweep`]).
//!
//! Fills a [`KvCache`] of the chosen storage type with seeded K/V of
//! length `--kv-len` for every batch entry ([`fill_cache`]), then times
//! `attn_flash::decode` of `--q-len` new queries (seeded standard-normal,
//! f32): `--warmup` untimed and `--reps` timed calls (median). Reports the
//! K+V bytes read per step, the achieved GB/s and its percentage of the
//! read bandwidth measured by `attn peak`'s microbenchmark in the same
//! process.

use crate::machine::{PeakOptions, measure_peak};
use crate::sweep::{Config, Dtype, Runner, SplitMix64, normal};
use attnlab::flash::{KvCache, decode};
use attnlab::{AttnError, AttnParams, Element, Mask, Par, bf16, f16};
use rayon::prelude::*;
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
    fill_cache(&mut cache, crate::sweep::SEED).map_err(|e| e.to_string())?;
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

// ------------------------------------------------ sweep configurations ----

/// Positions appended at a time by [`fill_cache`].
const FILL_POSITIONS: usize = 1024;

/// Most query rows [`Runner::sampled_error`] checks for a decode
/// configuration: each row reads the whole cache in f64.
pub const MAX_ERR_ROWS: usize = 8;

/// `len` values uniform on (−√3, √3) (mean 0, variance 1, like the
/// standard-normal prefill inputs, at a fraction of Box-Muller's cost:
/// filling a 4 GiB cache stays a matter of seconds), generated in parallel
/// in fixed 64 Ki-element chunks, each its own SplitMix64 stream: the
/// values depend only on (seed, stream, index).
pub fn uniform(len: usize, seed: u64, stream: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut out = vec![0f32; len];
    let half_width = 3f32.sqrt();
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut rng = SplitMix64(
            seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407)
                ^ (c as u64).wrapping_mul(0x9FB2_1C65),
        );
        rng.next_u64();
        for pair in chunk.chunks_mut(2) {
            let x = rng.next_u64();
            for (i, o) in pair.iter_mut().enumerate() {
                let bits = (x >> (8 + 32 * i)) & 0xFF_FFFF; // 24 bits each
                let u = (bits as f32 + 0.5) * (1.0 / (1u32 << 24) as f32);
                *o = (2.0 * u - 1.0) * half_width;
            }
        }
    });
    out
}

/// Fills every batch entry of `cache` up to its capacity with seeded K/V
/// ([`uniform`]), appending `FILL_POSITIONS` positions at a time (so the
/// f32 staging buffers stay small next to the cache).
pub fn fill_cache<T: Element>(cache: &mut KvCache<T>, seed: u64) -> Result<(), AttnError> {
    let (hkv, d, dv, cap) = (cache.kv_heads(), cache.head_dim(), cache.v_dim(), cache.capacity());
    let chunks = cap.div_ceil(FILL_POSITIONS) as u64;
    for b in 0..cache.batch() {
        while cache.lens()[b] < cap {
            let start = cache.lens()[b];
            let n = FILL_POSITIONS.min(cap - start);
            let stream = 2 * (b as u64 * chunks + (start / FILL_POSITIONS) as u64);
            let k = uniform(hkv * n * d, seed, stream + 1);
            let v = uniform(hkv * n * dv, seed, stream + 2);
            cache.append(b, &k, &v)?;
        }
    }
    Ok(())
}

/// Heap bytes one `attn_flash::decode` call of `cfg` allocates, from the
/// kernel's own sizing ([`attn_flash::decode::split_kv_workspace_bytes`]):
/// the split-KV partials, the merge buffer and each worker's scratch.
pub fn workspace_bytes(cfg: &Config) -> u64 {
    if cfg.kv_heads == 0 || !cfg.q_heads.is_multiple_of(cfg.kv_heads) {
        return 0;
    }
    attnlab::flash::decode::split_kv_workspace_bytes(
        cfg.batch,
        cfg.q_heads,
        cfg.kv_heads,
        cfg.q_len,
        cfg.head_dim,
        cfg.v_dim,
        cfg.kv_len,
        cfg.threads,
    ) as u64
}

/// A decode configuration ready to run: the filled cache, queries,
/// outputs and thread pool.
pub struct DecodeRunner<T> {
    cache: KvCache<T>,
    q: Vec<f32>,
    q_heads: usize,
    q_len: usize,
    out: Vec<f32>,
    lse: Vec<f32>,
    params: AttnParams,
    par: Par,
    pool: Option<rayon::ThreadPool>,
}

/// Builds the runner of a decode configuration of the sweep: a cache of
/// capacity `kv_len` filled to it ([`fill_cache`] with `seed`), f32
/// standard-normal queries, outputs touched before the first call.
pub fn prepare(cfg: &Config, seed: u64) -> Result<Box<dyn Runner>, String> {
    match cfg.dtype {
        Dtype::F32 => Ok(Box::new(DecodeRunner::<f32>::new(cfg, seed)?)),
        Dtype::F16 => Ok(Box::new(DecodeRunner::<f16>::new(cfg, seed)?)),
        Dtype::Bf16 => Ok(Box::new(DecodeRunner::<bf16>::new(cfg, seed)?)),
    }
}

impl<T: Element> DecodeRunner<T> {
    fn new(cfg: &Config, seed: u64) -> Result<Self, String> {
        let e = |e: AttnError| e.to_string();
        let mut cache =
            KvCache::<T>::new(cfg.batch, cfg.kv_heads, cfg.kv_len, cfg.head_dim, cfg.v_dim)
                .map_err(e)?;
        fill_cache(&mut cache, seed).map_err(e)?;
        let rows = cfg.batch * cfg.q_heads * cfg.q_len;
        let q = normal::<f32>(rows * cfg.head_dim, seed, 0);
        let out = vec![0.5f32; rows * cfg.v_dim];
        let lse = vec![0.5f32; rows];
        let pool = if cfg.threads > 1 {
            let p = rayon::ThreadPoolBuilder::new()
                .num_threads(cfg.threads)
                .build()
                .map_err(|e| e.to_string())?;
            p.install(|| rayon::join(|| (), || ())); // threads started
            Some(p)
        } else {
            None
        };
        Ok(DecodeRunner {
            cache,
            q,
            q_heads: cfg.q_heads,
            q_len: cfg.q_len,
            out,
            lse,
            params: cfg.params(),
            par: cfg.par(),
            pool,
        })
    }
}

impl<T: Element> Runner for DecodeRunner<T> {
    fn run(&mut self) -> Result<(), AttnError> {
        let DecodeRunner { cache, q, q_heads, q_len, out, lse, params, par, pool } = self;
        let mut call = || {
            decode(
                cache,
                q,
                *q_heads,
                *q_len,
                out,
                Some(std::hint::black_box(&mut lse[..])),
                params,
                *par,
            )
        };
        let r = match pool {
            Some(p) => p.install(call),
            None => call(),
        };
        std::hint::black_box(&self.out);
        r
    }

    /// Max |O − O_f64| over at most [`MAX_ERR_ROWS`] query rows evenly
    /// spaced over `[B, Hq, nq]` (first and last included, so that several
    /// K/V heads are exercised), against an f64 evaluation over the cache
    /// as stored.
    fn sampled_error(&self, rows: usize) -> (f64, usize) {
        let c = &self.cache;
        let (hq, nq, hkv) = (self.q_heads, self.q_len, c.kv_heads());
        let (d, dv) = (c.head_dim(), c.v_dim());
        let total = c.batch() * hq * nq;
        let n = rows.min(MAX_ERR_ROWS).min(total);
        if n == 0 {
            return (0.0, 0);
        }
        let mut picks: Vec<usize> =
            (0..n).map(|k| if n == 1 { total - 1 } else { k * (total - 1) / (n - 1) }).collect();
        picks.dedup();
        let scale = self.params.scale.map(f64::from).unwrap_or(1.0 / (d as f64).sqrt());
        let err = picks
            .par_iter()
            .map(|&r| {
                let (b, h, t) = (r / (hq * nq), (r / nq) % hq, r % nq);
                let g = h / (hq / hkv);
                let qrow = &self.q[r * d..][..d];
                let keys = self.params.mask.key_range(t, nq, c.lens()[b]);
                let mut o = vec![0f64; dv];
                if !keys.is_empty() {
                    let s: Vec<f64> = keys
                        .clone()
                        .map(|j| {
                            let dot: f64 = qrow
                                .iter()
                                .zip(c.k_row(b, g, j))
                                .map(|(x, y)| *x as f64 * y.to_f32() as f64)
                                .sum();
                            scale * dot
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let mut sum = 0.0;
                    for (j, sj) in keys.zip(&s) {
                        let p = (sj - m).exp();
                        sum += p;
                        for (oc, x) in o.iter_mut().zip(c.v_row(b, g, j)) {
                            *oc += p * x.to_f32() as f64;
                        }
                    }
                    o.iter_mut().for_each(|x| *x /= sum);
                }
                let got = &self.out[r * dv..][..dv];
                o.iter().zip(got).map(|(r, g)| (r - *g as f64).abs()).fold(0.0, f64::max)
            })
            .reduce(|| 0.0, f64::max);
        (err, picks.len())
    }
}
