//! The long-context sweep and `attn bench` (one configuration).
//!
//! One configuration ([`Config`]) is a kind (prefill or decode), a kernel,
//! a shape, a mask, a storage type and a thread count. [`measure`] runs it
//! in the current process:
//!
//! 1. seeded standard-normal inputs (SplitMix64 + Box-Muller, [`SEED`]),
//!    output and LSE buffers allocated and touched *before* the call
//!    (decode: a filled [`attn_flash::KvCache`] of the storage type and f32
//!    queries, see [`crate::decode`]);
//! 2. one call with VmHWM reset just before it (`/proc/self/clear_refs`)
//!    and the counting allocator's high-water mark reset
//!    ([`crate::alloc::measure`]): `extra_bytes` is the peak of heap bytes
//!    during the call beyond those live before it (inputs, outputs), and
//!    `rss_increase_bytes` the rise of VmHWM over the RSS before the call;
//! 3. more timed calls when the first took long enough (see
//!    [`MeasureOpts`]), median of all;
//! 4. the max abs error against an f64 evaluation of sampled query rows
//!    (same mask semantics, [`attn_core::Mask::key_range`]).
//!
//! The sweep (`cargo bench -p harness`, see `benches/harness.rs`) runs
//! every configuration of [`grid`] in a fresh child process (the bench
//! binary re-executed with [`CHILD_ENV`] set), so that peak RSS is that of
//! one configuration; short configurations are then timed by criterion in
//! the parent, long ones keep the child's direct timing (criterion needs
//! at least 10 samples, which a 30 s call cannot afford). Configurations
//! that need more memory than the budget are recorded as skipped with the
//! bytes they would need.
//!
//! Decode configurations ([`Kind::Decode`], ids `decode/flash/gqa/f16/t2/32768`)
//! go through the same steps: one step is `attn_flash::decode` of `nq` new
//! queries against a cache of `kv_len` positions, and the row adds
//! `us_per_step`, `kv_bytes` (K+V of the cache read per step), `gbs` and
//! `pct_bandwidth` (of the read bandwidth the sweep measured for the same
//! thread count, [`Row::set_read_gbs`]).

use crate::alloc;
use crate::machine::{self, MachineInfo, Peak, PeakOptions, fmt_bytes};
use attnlab::{AttnError, AttnInputs, AttnParams, AttnShape, Element, Layout, Mask, Par};
use attnlab::{Kernel, TensorViewMut, bf16, f16};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Seed of every input tensor (SplitMix64 streams derived from it).
pub const SEED: u64 = 0x5EED_A77E;

/// Environment variable that turns a re-executed bench binary into a
/// one-configuration child (its value: a JSON [`ChildRequest`]).
pub const CHILD_ENV: &str = "ATTNLAB_HARNESS_CHILD";

/// Version of the results file format. 2 added decode rows (`kind`,
/// `cache_dtype`, `us_per_step`, `kv_bytes`, `gbs`, `read_gbs`,
/// `pct_bandwidth`); files of schema 1 (prefill only) still load, their
/// rows read as prefill.
pub const SCHEMA: u32 = 2;

// ------------------------------------------------------------ CLI ----

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
    /// Sliding window `L,R` around the bottom-right diagonal; `-` (or
    /// `inf`) for an unbounded side, e.g. `128,0`.
    #[arg(long)]
    pub window: Option<String>,
    /// Storage type of Q, K, V: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Threads (default: every logical CPU); 1 runs `Par::Seq`.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object (`median_ms`, `gflops`, `pct_peak`,
    /// `extra_bytes`, `peak_rss_bytes`, `max_abs_err`, ...).
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
}

/// Entry point of `attn bench`.
pub fn bench_main(args: &BenchArgs) -> ExitCode {
    warn_if_unoptimized("attn bench");
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
    let row = measure(&cfg, &opts);
    if args.json {
        println!("{}", serde_json::to_string(&row).expect("rows serialize"));
    } else {
        print_row(&row);
    }
    if row.status == Status::Error { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Timings of an unoptimized build mean nothing: say so on stderr.
pub fn warn_if_unoptimized(what: &str) {
    if cfg!(debug_assertions) {
        eprintln!(
            "{what}: warning: this build has debug assertions (not --release); \
             times and peaks are not representative"
        );
    }
}

fn config_from_args(a: &BenchArgs) -> Result<Config, String> {
    let kernel: Kernel = a.kernel.parse()?;
    let dtype = Dtype::parse(&a.dtype)?;
    let mask = match &a.window {
        Some(w) => {
            if a.causal == 1 {
                return Err("give either --causal 1 or --window, not both".into());
            }
            MaskSpec::parse_window(w)?
        }
        None if a.causal == 1 => MaskSpec::Causal,
        None => MaskSpec::Full,
    };
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
    };
    cfg.shape().map_err(|e| e.to_string())?;
    Ok(cfg)
}

fn print_row(r: &Row) {
    println!("{}", r.id);
    match r.status {
        Status::Ok => {
            let ms = r.median_ms.unwrap_or(f64::NAN);
            println!(
                "  time      {ms:.3} ms (median of {}, first call {:.3} ms)",
                r.samples,
                r.first_call_ms.unwrap_or(f64::NAN)
            );
            println!(
                "  speed     {:.1} GFLOP/s, {:.1}% of the {:.0} GFLOP/s FMA peak",
                r.gflops.unwrap_or(f64::NAN),
                r.pct_peak.unwrap_or(f64::NAN),
                r.peak_gflops.unwrap_or(f64::NAN)
            );
            println!(
                "  memory    extra {} (workspace_bytes {}), peak RSS {} (+{} over the call)",
                opt_bytes(r.extra_bytes),
                fmt_bytes(r.workspace_bytes as f64),
                opt_bytes(r.peak_rss_bytes),
                opt_bytes(r.rss_increase_bytes)
            );
            if let Some(e) = r.max_abs_err {
                println!("  accuracy  max abs err {e:.2e} over {} sampled rows (f64)", r.err_rows);
            }
        }
        Status::Skipped | Status::Error => println!("  {:?}: {}", r.status, r.note),
    }
}

fn opt_bytes(b: Option<u64>) -> String {
    b.map(|b| fmt_bytes(b as f64)).unwrap_or_else(|| "?".into())
}

// ----------------------------------------------------- data model ----

/// Storage type of Q, K and V.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// f32.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
}

impl Dtype {
    /// "f32", "f16", "bf16".
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
    /// Parses a name.
    pub fn parse(s: &str) -> Result<Dtype, String> {
        match s {
            "f32" => Ok(Dtype::F32),
            "f16" => Ok(Dtype::F16),
            "bf16" => Ok(Dtype::Bf16),
            _ => Err(format!("unknown dtype '{s}' (expected f32, f16 or bf16)")),
        }
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}

/// The mask of a configuration, by name: `full`, `causal`, `win{L}_{R}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MaskSpec {
    /// No mask.
    Full,
    /// Bottom-right causal.
    Causal,
    /// Sliding window (`None` = unbounded side).
    Window(Option<usize>, Option<usize>),
}

impl MaskSpec {
    /// The kernel-level mask.
    pub fn mask(self) -> Mask {
        match self {
            MaskSpec::Full => Mask::None,
            MaskSpec::Causal => Mask::Causal,
            MaskSpec::Window(left, right) => Mask::Window { left, right },
        }
    }
    /// Name used in ids and files.
    pub fn name(self) -> String {
        let side = |s: Option<usize>| s.map(|v| v.to_string()).unwrap_or_else(|| "inf".into());
        match self {
            MaskSpec::Full => "full".into(),
            MaskSpec::Causal => "causal".into(),
            MaskSpec::Window(l, r) => format!("win{}_{}", side(l), side(r)),
        }
    }
    /// Parses `L,R` (the `--window` flag); `-`, `inf` or empty = unbounded.
    pub fn parse_window(s: &str) -> Result<MaskSpec, String> {
        let (l, r) = s.split_once(',').ok_or_else(|| format!("--window '{s}': expected L,R"))?;
        let side = |v: &str| -> Result<Option<usize>, String> {
            match v.trim() {
                "" | "-" | "inf" | "-1" => Ok(None),
                x => x.parse().map(Some).map_err(|_| format!("--window '{s}': bad side '{x}'")),
            }
        };
        Ok(MaskSpec::Window(side(l)?, side(r)?))
    }
}

impl From<MaskSpec> for String {
    fn from(m: MaskSpec) -> String {
        m.name()
    }
}

impl TryFrom<String> for MaskSpec {
    type Error = String;
    fn try_from(s: String) -> Result<MaskSpec, String> {
        match s.as_str() {
            "full" => Ok(MaskSpec::Full),
            "causal" => Ok(MaskSpec::Causal),
            w => {
                let body = w.strip_prefix("win").ok_or_else(|| format!("unknown mask '{w}'"))?;
                MaskSpec::parse_window(&body.replace('_', ","))
            }
        }
    }
}

/// What a configuration times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One forward call over Q, K, V (`attnlab::Kernel::forward`).
    #[default]
    Prefill,
    /// One step of `attn_flash::decode`: `q_len` new queries against a KV
    /// cache of `kv_len` positions stored as `dtype` (queries are f32).
    Decode,
}

impl Kind {
    /// "prefill" or "decode": the first part of ids and criterion's group.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Prefill => "prefill",
            Kind::Decode => "decode",
        }
    }
}

/// One point of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Prefill or decode (absent in schema-1 files: prefill).
    #[serde(default)]
    pub kind: Kind,
    /// "naive", "flash" or "oracle" (decode: "flash").
    pub kernel: String,
    /// B.
    pub batch: usize,
    /// Hq.
    pub q_heads: usize,
    /// Hkv.
    pub kv_heads: usize,
    /// Nq.
    pub q_len: usize,
    /// Nk.
    pub kv_len: usize,
    /// d.
    pub head_dim: usize,
    /// dv.
    pub v_dim: usize,
    /// Mask.
    pub mask: MaskSpec,
    /// Storage type (decode: of the K/V cache; queries are f32).
    pub dtype: Dtype,
    /// Threads (1 = `Par::Seq`).
    pub threads: usize,
}

impl Config {
    /// A prefill configuration of the sweep: B = 1, Nq = Nk = n, dv = d.
    #[allow(clippy::too_many_arguments)]
    pub fn prefill(
        kernel: &str,
        g: Grouping,
        mask: MaskSpec,
        d: usize,
        dtype: Dtype,
        threads: usize,
        n: usize,
    ) -> Config {
        let (hq, hkv) = g.heads();
        Config {
            kind: Kind::Prefill,
            kernel: kernel.into(),
            batch: 1,
            q_heads: hq,
            kv_heads: hkv,
            q_len: n,
            kv_len: n,
            head_dim: d,
            v_dim: d,
            mask,
            dtype,
            threads,
        }
    }

    /// A decode configuration of the sweep: B = 1, Hq = 32, Hkv = 32, 8
    /// or 1 ([`Grouping::decode_heads`]), one new query (causal), d = dv =
    /// 128, a cache of `kv_len` positions stored as `dtype`.
    pub fn decode(g: Grouping, dtype: Dtype, threads: usize, kv_len: usize) -> Config {
        let (hq, hkv) = g.decode_heads();
        Config {
            kind: Kind::Decode,
            kernel: "flash".into(),
            batch: 1,
            q_heads: hq,
            kv_heads: hkv,
            q_len: 1,
            kv_len,
            head_dim: 128,
            v_dim: 128,
            mask: MaskSpec::Causal,
            dtype,
            threads,
        }
    }

    /// "mha", "gqa" or "mqa".
    pub fn grouping(&self) -> &'static str {
        grouping_name(self.q_heads, self.kv_heads)
    }

    /// Criterion function id: `flash/mha/causal/d64/f32/t2` (plus `/b{B}`,
    /// `/h{Hq}x{Hkv}` or `/dv{dv}` when they differ from the sweep's);
    /// decode: `flash/gqa/f16/t2` (plus `/b{B}`, `/h{Hq}x{Hkv}`, `/d{d}`,
    /// `/dv{dv}`, `/nq{nq}` or the mask when they differ from the sweep's).
    pub fn function_id(&self) -> String {
        if self.kind == Kind::Decode {
            return self.decode_function_id();
        }
        let mut s = format!(
            "{}/{}/{}/d{}/{}/t{}",
            self.kernel,
            self.grouping(),
            self.mask.name(),
            self.head_dim,
            self.dtype.name(),
            self.threads
        );
        if self.batch != 1 {
            s += &format!("/b{}", self.batch);
        }
        if self.q_heads != 8 || !(self.kv_heads == 8 || self.kv_heads == 2 || self.kv_heads == 1) {
            s += &format!("/h{}x{}", self.q_heads, self.kv_heads);
        }
        if self.v_dim != self.head_dim {
            s += &format!("/dv{}", self.v_dim);
        }
        s
    }

    fn decode_function_id(&self) -> String {
        let mut s =
            format!("{}/{}/{}/t{}", self.kernel, self.grouping(), self.dtype.name(), self.threads);
        if self.batch != 1 {
            s += &format!("/b{}", self.batch);
        }
        if self.q_heads != 32 || !matches!(self.kv_heads, 32 | 8 | 1) {
            s += &format!("/h{}x{}", self.q_heads, self.kv_heads);
        }
        if self.head_dim != 128 {
            s += &format!("/d{}", self.head_dim);
        }
        if self.v_dim != self.head_dim {
            s += &format!("/dv{}", self.v_dim);
        }
        if self.q_len != 1 {
            s += &format!("/nq{}", self.q_len);
        }
        if self.mask != MaskSpec::Causal {
            s += &format!("/{}", self.mask.name());
        }
        s
    }

    /// Criterion parameter: `N`, or `NqxNk` when they differ; decode: the
    /// cache length L.
    pub fn param_id(&self) -> String {
        if self.kind == Kind::Decode {
            self.kv_len.to_string()
        } else if self.q_len == self.kv_len {
            self.q_len.to_string()
        } else {
            format!("{}x{}", self.q_len, self.kv_len)
        }
    }

    /// Full id, `prefill/flash/mha/causal/d64/f32/t2/4096` or
    /// `decode/flash/gqa/f16/t2/32768`: criterion's group/function/parameter.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.kind.name(), self.function_id(), self.param_id())
    }

    /// The validated shape.
    pub fn shape(&self) -> Result<AttnShape, AttnError> {
        AttnShape::new(
            self.batch,
            self.q_heads,
            self.kv_heads,
            self.q_len,
            self.kv_len,
            self.head_dim,
            self.v_dim,
        )
    }

    /// Call parameters: the mask, default scale, no finiteness scan (the
    /// inputs are generated finite; the scan is O(size), not the kernel's).
    pub fn params(&self) -> AttnParams {
        AttnParams { mask: self.mask.mask(), check_finite: false, ..Default::default() }
    }

    /// `Par::Seq` for one thread, else `Par::Rayon(threads)` inside a pool
    /// of that size.
    pub fn par(&self) -> Par {
        if self.threads <= 1 { Par::Seq } else { Par::Rayon(self.threads) }
    }

    /// FLOPs credited: `4·B·Hq·Nq·Nk·d` (for dv = d), halved for causal
    /// with Nq = Nk ([`AttnShape::flops_conventional`]).
    /// Sliding windows are credited their visible pairs only
    /// ([`AttnShape::flops`]): the N² convention would overstate them.
    pub fn flops(&self) -> f64 {
        let m = self.mask.mask();
        match (self.shape(), self.mask) {
            (Ok(s), MaskSpec::Window(..)) => s.flops(&m),
            (Ok(s), _) => s.flops_conventional(&m),
            (Err(_), _) => 0.0,
        }
    }

    /// Bytes of inputs (Q, K, V) and outputs (O and LSE, f32); decode:
    /// the K/V cache, f32 queries, O and LSE.
    pub fn io_bytes(&self) -> u64 {
        let e = self.dtype.size() as u64;
        let (b, hq, hkv) = (self.batch as u64, self.q_heads as u64, self.kv_heads as u64);
        let (nq, nk, d, dv) =
            (self.q_len as u64, self.kv_len as u64, self.head_dim as u64, self.v_dim as u64);
        let q_bytes = if self.kind == Kind::Decode { 4 } else { e };
        q_bytes * b * hq * nq * d + e * b * hkv * nk * (d + dv) + 4 * b * hq * nq * (dv + 1)
    }

    /// The kernel's `workspace_bytes` for this configuration (decode: the
    /// split-KV partials, [`crate::decode::workspace_bytes`]).
    pub fn workspace_bytes(&self) -> u64 {
        if self.kind == Kind::Decode {
            return crate::decode::workspace_bytes(self);
        }
        match (self.kernel.parse::<Kernel>(), self.shape()) {
            (Ok(k), Ok(s)) => k.workspace_bytes(&s, &self.params(), self.par()) as u64,
            _ => 0,
        }
    }

    /// Decode: bytes of K and V one step reads (the whole cache of
    /// `kv_len` positions per batch entry, every K/V head); `None` for
    /// prefill.
    pub fn kv_bytes(&self) -> Option<u64> {
        (self.kind == Kind::Decode).then(|| {
            (self.batch * self.kv_heads * self.kv_len * (self.head_dim + self.v_dim)) as u64
                * self.dtype.size() as u64
        })
    }
}

/// "mha" (Hq = Hkv), "mqa" (Hkv = 1 < Hq), else "gqa".
pub fn grouping_name(hq: usize, hkv: usize) -> &'static str {
    if hq == hkv {
        "mha"
    } else if hkv == 1 {
        "mqa"
    } else {
        "gqa"
    }
}

/// The head groupings of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grouping {
    /// Hq = Hkv = 8.
    Mha,
    /// Hq = 8, Hkv = 2.
    Gqa,
    /// Hq = 8, Hkv = 1.
    Mqa,
}

impl Grouping {
    /// All three.
    pub const ALL: [Grouping; 3] = [Grouping::Mha, Grouping::Gqa, Grouping::Mqa];
    /// (Hq, Hkv).
    pub fn heads(self) -> (usize, usize) {
        match self {
            Grouping::Mha => (8, 8),
            Grouping::Gqa => (8, 2),
            Grouping::Mqa => (8, 1),
        }
    }
    /// (Hq, Hkv) of the decode configurations: 32 query heads, as in
    /// 7-8B-parameter models, with 32, 8 or 1 K/V heads.
    pub fn decode_heads(self) -> (usize, usize) {
        match self {
            Grouping::Mha => (32, 32),
            Grouping::Gqa => (32, 8),
            Grouping::Mqa => (32, 1),
        }
    }
}

/// Outcome of one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Measured.
    Ok,
    /// Not run: it would need more memory than the budget (`needs_bytes`).
    Skipped,
    /// The kernel (or the child process) failed; `note` says why.
    Error,
}

/// One configuration's results: a row of `results/*.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Criterion id, `prefill/flash/mha/causal/d64/f32/t2/4096`.
    pub id: String,
    /// The configuration.
    #[serde(flatten)]
    pub config: Config,
    /// "mha", "gqa", "mqa".
    pub grouping: String,
    /// ok, skipped or error.
    pub status: Status,
    /// Why skipped or failed; empty when ok.
    pub note: String,
    /// FLOPs credited (see [`Config::flops`]).
    pub flops: f64,
    /// Median time of one call, ms.
    pub median_ms: Option<f64>,
    /// Timed calls behind the median (criterion: samples).
    pub samples: usize,
    /// "criterion" (in the parent, 10 samples) or "direct" (in the child).
    pub timer: String,
    /// Time of the first, memory-measured call, ms.
    pub first_call_ms: Option<f64>,
    /// `flops / median`, GFLOP/s.
    pub gflops: Option<f64>,
    /// `gflops` over the FMA peak for `threads`, measured in the same run.
    pub pct_peak: Option<f64>,
    /// The FMA peak used for `pct_peak`, GFLOP/s.
    pub peak_gflops: Option<f64>,
    /// Heap high-water mark during the first call beyond what was live
    /// before it (inputs and outputs), bytes.
    pub extra_bytes: Option<u64>,
    /// The kernel's own `workspace_bytes`.
    pub workspace_bytes: u64,
    /// Inputs + outputs (O and LSE), bytes.
    pub io_bytes: u64,
    /// `io_bytes + workspace_bytes`: what the budget check uses.
    pub needs_bytes: u64,
    /// VmHWM after the first call (VmHWM reset before it), bytes.
    pub peak_rss_bytes: Option<u64>,
    /// `peak_rss_bytes` minus VmRSS just before the call.
    pub rss_increase_bytes: Option<u64>,
    /// Max |O - O_f64| over `err_rows` sampled query rows.
    pub max_abs_err: Option<f64>,
    /// Query rows checked.
    pub err_rows: usize,
    /// Compiled with avx512f.
    pub avx512f: bool,
    /// Compiled with fma.
    pub fma: bool,
    /// Decode: the storage type of the K/V cache (= `dtype`); `None` for
    /// prefill.
    #[serde(default)]
    pub cache_dtype: Option<Dtype>,
    /// Decode: `median_ms` in µs, the time of one step.
    #[serde(default)]
    pub us_per_step: Option<f64>,
    /// Decode: K+V bytes of the cache one step reads ([`Config::kv_bytes`]).
    #[serde(default)]
    pub kv_bytes: Option<u64>,
    /// Decode: `kv_bytes / median`, GB/s (1e9 bytes).
    #[serde(default)]
    pub gbs: Option<f64>,
    /// Decode: the read bandwidth of `threads` measured in the same run,
    /// GB/s (the denominator of `pct_bandwidth`).
    #[serde(default)]
    pub read_gbs: Option<f64>,
    /// Decode: `gbs / read_gbs`, percent.
    #[serde(default)]
    pub pct_bandwidth: Option<f64>,
}

impl Row {
    /// A row with the configuration filled in and nothing measured.
    pub fn new(cfg: &Config) -> Row {
        let workspace = cfg.workspace_bytes();
        let io = cfg.io_bytes();
        Row {
            id: cfg.id(),
            config: cfg.clone(),
            grouping: cfg.grouping().into(),
            status: Status::Ok,
            note: String::new(),
            flops: cfg.flops(),
            median_ms: None,
            samples: 0,
            timer: String::new(),
            first_call_ms: None,
            gflops: None,
            pct_peak: None,
            peak_gflops: None,
            extra_bytes: None,
            workspace_bytes: workspace,
            io_bytes: io,
            needs_bytes: io + workspace,
            peak_rss_bytes: None,
            rss_increase_bytes: None,
            max_abs_err: None,
            err_rows: 0,
            avx512f: cfg!(target_feature = "avx512f"),
            fma: cfg!(target_feature = "fma"),
            cache_dtype: (cfg.kind == Kind::Decode).then_some(cfg.dtype),
            us_per_step: None,
            kv_bytes: cfg.kv_bytes(),
            gbs: None,
            read_gbs: None,
            pct_bandwidth: None,
        }
    }

    /// A failed row.
    pub fn error(cfg: &Config, note: impl Into<String>) -> Row {
        Row { status: Status::Error, note: note.into(), ..Row::new(cfg) }
    }

    /// Sets the time and derives GFLOP/s and % of peak (decode: also µs
    /// per step and GB/s of K+V).
    pub fn set_time(&mut self, median_ms: f64, samples: usize, timer: &str, peak: Option<f64>) {
        self.median_ms = Some(median_ms);
        self.samples = samples;
        self.timer = timer.into();
        let gflops = self.flops / (median_ms * 1e-3) * 1e-9;
        self.gflops = Some(gflops);
        if let Some(p) = peak.filter(|p| *p > 0.0) {
            self.peak_gflops = Some(p);
            self.pct_peak = Some(100.0 * gflops / p);
        }
        if let Some(kv) = self.kv_bytes {
            self.us_per_step = Some(median_ms * 1e3);
            self.gbs = Some(kv as f64 / (median_ms * 1e-3) * 1e-9);
        }
        if let Some(r) = self.read_gbs {
            self.set_read_gbs(Some(r));
        }
    }

    /// Decode rows with a time: sets the read bandwidth that
    /// `pct_bandwidth` divides by (the run's measurement for this row's
    /// thread count).
    pub fn set_read_gbs(&mut self, read_gbs: Option<f64>) {
        if self.config.kind != Kind::Decode || self.gbs.is_none() {
            return;
        }
        if let Some(r) = read_gbs.filter(|r| *r > 0.0) {
            self.read_gbs = Some(r);
            self.pct_bandwidth = self.gbs.map(|g| 100.0 * g / r);
        }
    }
}

/// The results of one sweep: `results/runs/*.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFile {
    /// [`SCHEMA`].
    pub schema: u32,
    /// default, full, quick or smoke.
    pub profile: String,
    /// Criterion filter the run was given, if any.
    pub filter: Option<String>,
    /// Start, UTC.
    pub started_utc: String,
    /// Wall time of the whole run, seconds.
    pub duration_s: f64,
    /// The machine, collected at the start.
    pub machine: MachineInfo,
    /// Peaks measured at the start of the run.
    pub peak: Peak,
    /// Memory budget of the run, bytes.
    pub mem_budget_bytes: u64,
    /// Input seed.
    pub seed: u64,
    /// How the grid was chosen, one line per part.
    pub grid: Vec<String>,
    /// How times were taken.
    pub timing: String,
    /// One row per configuration.
    pub rows: Vec<Row>,
}

// ------------------------------------------------------------ grid ----

/// Size of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Two tiny configurations (`cargo test --benches`): checks plumbing.
    Smoke,
    /// A few seconds: short N only.
    Quick,
    /// About 10 minutes on a 2-core Zen 4 (`cargo bench -p harness`), of
    /// which decode about 1.5.
    Default,
    /// Flash to N = 131072, every axis further out, the whole decode grid
    /// (hours).
    Full,
}

impl Profile {
    /// Name as in `ATTNLAB_PROFILE`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Smoke => "smoke",
            Profile::Quick => "quick",
            Profile::Default => "default",
            Profile::Full => "full",
        }
    }
    /// Parses a name.
    pub fn parse(s: &str) -> Result<Profile, String> {
        match s {
            "smoke" => Ok(Profile::Smoke),
            "quick" => Ok(Profile::Quick),
            "" | "default" => Ok(Profile::Default),
            "full" => Ok(Profile::Full),
            _ => Err(format!("ATTNLAB_PROFILE={s}: expected quick, default or full")),
        }
    }
}

/// Cache lengths L of the decode grid.
pub const DECODE_LENS: [usize; 6] = [1024, 4096, 16384, 32768, 65536, 131072];

/// The sweep's configurations for `profile` with `all` = every core:
/// prefill sorted by N (then by kernel, grouping, mask, d, dtype,
/// threads), then decode sorted by L (then grouping, dtype, threads); and
/// a description of the grid, one line per part.
pub fn grid(profile: Profile, all: usize) -> (Vec<Config>, Vec<String>) {
    let (mut v, mut desc) = prefill_grid(profile, all);
    let (d, dd) = decode_grid(profile, all);
    v.extend(d);
    desc.extend(dd);
    v.sort_by_key(|c| {
        let decode = c.kind == Kind::Decode;
        let dtype_key = if decode {
            [Dtype::F32, Dtype::F16, Dtype::Bf16].iter().position(|d| *d == c.dtype).unwrap_or(3)
        } else {
            usize::from(c.dtype.size() == 4)
        };
        (
            decode,
            if decode { c.kv_len } else { c.q_len },
            c.kernel.clone(),
            ["mha", "gqa", "mqa"].iter().position(|g| *g == c.grouping()),
            c.mask.name(),
            c.head_dim,
            dtype_key,
            c.threads,
        )
    });
    v.dedup();
    (v, desc)
}

/// The decode part of [`grid`] (unsorted).
fn decode_grid(profile: Profile, all: usize) -> (Vec<Config>, Vec<String>) {
    use Grouping::*;
    let all = all.max(1);
    let dtypes = [Dtype::F32, Dtype::F16, Dtype::Bf16];
    let mut v: Vec<Config> = Vec::new();
    let mut desc: Vec<String> = Vec::new();
    let mut at = |gs: &[Grouping], dts: &[Dtype], ts: &[usize], ls: &[usize]| {
        for &g in gs {
            for &dt in dts {
                for &t in ts {
                    for &l in ls {
                        v.push(Config::decode(g, dt, t, l));
                    }
                }
            }
        }
    };
    let threads: Vec<usize> = if all > 1 { vec![1, all] } else { vec![1] };
    let head = "decode (B = 1, Hq = 32, d = 128, one new query, causal; MHA Hkv = 32, GQA 8, \
                MQA 1)";
    match profile {
        Profile::Smoke => {
            at(&[Gqa], &[Dtype::F16], &[1], &[1024]);
            desc.push("smoke: decode GQA, f16 cache, L = 1024, 1 thread".into());
        }
        Profile::Quick => {
            at(&[Gqa], &dtypes, &[all], &[1024, 4096]);
            desc.push(format!("{head}: GQA x f32/f16/bf16 cache, L = 1024, 4096, {all} threads"));
        }
        Profile::Default => {
            at(&[Gqa, Mqa], &dtypes, &[all], &DECODE_LENS);
            at(&[Mha], &dtypes, &[all], &DECODE_LENS[..5]);
            desc.push(format!(
                "{head}: GQA and MQA x f32/f16/bf16 cache x L = 1k ... 128k, MHA x the same \
                 dtypes x L = 1k ... 64k (2 GiB of f32 cache), {all} threads"
            ));
            if all > 1 {
                at(&[Gqa], &dtypes, &[1], &[1024, 4096, 32768, 131072]);
                desc.push(
                    "decode: GQA x f32/f16/bf16 cache x L = 1k, 4k, 32k, 128k on 1 thread".into(),
                );
            }
        }
        Profile::Full => {
            at(&Grouping::ALL, &dtypes, &threads, &DECODE_LENS);
            let ts = threads.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" and ");
            desc.push(format!(
                "{head}: MHA/GQA/MQA x f32/f16/bf16 cache x L = 1k ... 128k x threads {ts}"
            ));
        }
    }
    (v, desc)
}

/// The prefill part of [`grid`] (unsorted).
fn prefill_grid(profile: Profile, all: usize) -> (Vec<Config>, Vec<String>) {
    use Grouping::*;
    use MaskSpec::{Causal, Full};
    let all = all.max(1);
    let mut v: Vec<Config> = Vec::new();
    let mut desc: Vec<String> = Vec::new();
    let kernels = ["naive", "flash"];
    let masks = [Full, Causal];
    let threads: Vec<usize> = if all > 1 { vec![1, all] } else { vec![1] };
    let every = |v: &mut Vec<Config>, ns: &[usize], ds: &[usize], ts: &[usize], gs: &[Grouping]| {
        for &n in ns {
            for k in kernels {
                for &g in gs {
                    for m in masks {
                        for &d in ds {
                            for &t in ts {
                                v.push(Config::prefill(k, g, m, d, Dtype::F32, t, n));
                            }
                        }
                    }
                }
            }
        }
    };
    let flash_at = |v: &mut Vec<Config>, n: usize, gs: &[Grouping], ms: &[MaskSpec]| {
        for &g in gs {
            for &m in ms {
                v.push(Config::prefill("flash", g, m, 64, Dtype::F32, all, n));
            }
        }
    };
    // naive rows at long N: recorded as "needs X GiB" when over budget.
    let naive_at = |v: &mut Vec<Config>, n: usize, gs: &[Grouping], ms: &[MaskSpec]| {
        for &g in gs {
            for &m in ms {
                v.push(Config::prefill("naive", g, m, 64, Dtype::F32, all, n));
            }
        }
    };
    let halves = |v: &mut Vec<Config>, ns: &[usize], ms: &[MaskSpec]| {
        for &n in ns {
            for dt in [Dtype::F16, Dtype::Bf16] {
                for &m in ms {
                    v.push(Config::prefill("flash", Mha, m, 64, dt, all, n));
                }
            }
        }
    };
    match profile {
        Profile::Smoke => {
            for k in kernels {
                v.push(Config::prefill(k, Gqa, Causal, 16, Dtype::F32, 1, 64));
            }
            desc.push("smoke: naive and flash, GQA causal d=16, N=64, 1 thread".into());
        }
        Profile::Quick => {
            every(&mut v, &[256, 512, 1024], &[64], &[all], &Grouping::ALL);
            desc.push(format!(
                "N = 256, 512, 1024: naive and flash x MHA/GQA/MQA x full/causal, d = 64, f32, {all} threads"
            ));
        }
        Profile::Default => {
            let main_ns = [256, 512, 1024, 2048, 4096, 8192, 16384];
            every(&mut v, &main_ns, &[64], &[all], &Grouping::ALL);
            desc.push(format!(
                "N = 256 ... 16384: naive and flash x MHA/GQA/MQA x full/causal, d = 64, f32, \
                 {all} threads (the main tables; naive needs ~8.5 GiB at 16384)"
            ));
            every(&mut v, &[1024], &[64, 128], &threads, &Grouping::ALL);
            let ts = threads.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" and ");
            desc.push(format!(
                "N = 1024: d = 64 and 128 x threads {ts}, naive and flash x MHA/GQA/MQA x full/causal"
            ));
            every(&mut v, &[4096], &[64, 128], &threads, &Grouping::ALL);
            desc.push("N = 4096: the same d x threads".into());
            for (d, t) in [(64, 1), (128, all)] {
                if (d, t) != (64, all) {
                    for m in masks {
                        v.push(Config::prefill("flash", Mha, m, d, Dtype::F32, t, 16384));
                    }
                }
            }
            desc.push(format!(
                "N = 16384: also flash MHA full/causal with d = 64 on 1 thread and d = 128 on {all}"
            ));
            flash_at(&mut v, 32768, &Grouping::ALL, &masks);
            naive_at(&mut v, 32768, &Grouping::ALL, &masks);
            desc.push(format!(
                "N = 32768: flash x MHA/GQA/MQA x full/causal, d = 64, {all} threads, one timed \
                 call; naive recorded with the memory it would need"
            ));
            flash_at(&mut v, 65536, &Grouping::ALL, &[Causal]);
            flash_at(&mut v, 65536, &[Mha], &[Full]);
            naive_at(&mut v, 65536, &Grouping::ALL, &masks);
            desc.push(format!(
                "N = 65536: flash causal x MHA/GQA/MQA and MHA without mask, d = 64, {all} \
                 threads, one timed call; naive recorded with the memory it would need"
            ));
            halves(&mut v, &[4096], &masks);
            desc.push(format!(
                "N = 4096: flash with f16 and bf16 inputs (f32 accumulation), MHA \
                 full/causal, d = 64, {all} threads"
            ));
        }
        Profile::Full => {
            every(&mut v, &[256, 512, 1024, 2048, 4096], &[64, 128], &threads, &Grouping::ALL);
            desc.push(
                "N = 256 ... 4096: naive and flash x MHA/GQA/MQA x full/causal x d = 64, 128 x threads 1 and all"
                    .into(),
            );
            every(&mut v, &[8192, 16384], &[64, 128], &[all], &Grouping::ALL);
            desc.push(format!(
                "N = 8192, 16384: the same with {all} threads (naive over budget recorded as needs)"
            ));
            for n in [32768, 65536, 131072] {
                flash_at(&mut v, n, &Grouping::ALL, &masks);
                naive_at(&mut v, n, &Grouping::ALL, &masks);
            }
            desc.push(format!(
                "N = 32768, 65536, 131072: flash x MHA/GQA/MQA x full/causal, d = 64, {all} threads"
            ));
            halves(&mut v, &[1024, 4096, 16384], &masks);
            desc.push("N = 1024, 4096, 16384: flash f16 and bf16, MHA full/causal".into());
        }
    }
    (v, desc)
}

// ----------------------------------------------- one configuration ----

/// How [`measure`] times a configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeasureOpts {
    /// Input seed.
    pub seed: u64,
    /// More timed calls only if the first took at least this long (the
    /// sweep times shorter ones with criterion); 0 = always.
    pub direct_min_ms: f64,
    /// Stop adding timed calls once this much time has been spent.
    pub budget_s: f64,
    /// Most timed calls, the first included.
    pub max_reps: usize,
    /// Query rows checked against f64 (0 = none).
    pub err_rows: usize,
    /// FMA peak for `pct_peak`.
    pub peak_gflops: Option<f64>,
}

/// Something that runs one attention call on prepared buffers.
pub trait Runner {
    /// One call.
    fn run(&mut self) -> Result<(), AttnError>;
    /// Max abs error of the last output over `rows` sampled query rows
    /// (half in the first (b, h), half in the last), and the rows checked.
    fn sampled_error(&self, rows: usize) -> (f64, usize);
}

/// Inputs, outputs and thread pool of one configuration.
pub struct Prepared<T> {
    kernel: Kernel,
    shape: AttnShape,
    params: AttnParams,
    par: Par,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    out: Vec<f32>,
    lse: Vec<f32>,
    pool: Option<rayon::ThreadPool>,
}

/// Builds inputs (seeded), outputs and the thread pool of `cfg` (decode:
/// [`crate::decode::prepare`]).
pub fn prepare(cfg: &Config, seed: u64) -> Result<Box<dyn Runner>, String> {
    if cfg.kind == Kind::Decode {
        return crate::decode::prepare(cfg, seed);
    }
    match cfg.dtype {
        Dtype::F32 => Ok(Box::new(Prepared::<f32>::new(cfg, seed)?)),
        Dtype::F16 => Ok(Box::new(Prepared::<f16>::new(cfg, seed)?)),
        Dtype::Bf16 => Ok(Box::new(Prepared::<bf16>::new(cfg, seed)?)),
    }
}

impl<T: Element> Prepared<T> {
    fn new(cfg: &Config, seed: u64) -> Result<Self, String> {
        let kernel: Kernel = cfg.kernel.parse()?;
        let shape = cfg.shape().map_err(|e| e.to_string())?;
        let len = |d: [usize; 4]| d.iter().product::<usize>();
        let q = normal::<T>(len(shape.q_dims()), seed, 0);
        let k = normal::<T>(len(shape.k_dims()), seed, 1);
        let v = normal::<T>(len(shape.v_dims()), seed, 2);
        // Non-zero fill: the pages are touched now, not inside the call.
        let out = vec![0.5f32; len(shape.out_dims())];
        let lse = vec![0.5f32; shape.lse_len()];
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
        Ok(Prepared {
            kernel,
            shape,
            params: cfg.params(),
            par: cfg.par(),
            q,
            k,
            v,
            out,
            lse,
            pool,
        })
    }
}

impl<T: Element> Runner for Prepared<T> {
    fn run(&mut self) -> Result<(), AttnError> {
        let Prepared { kernel, shape, params, par, q, k, v, out, lse, pool } = self;
        let inputs = AttnInputs::from_slices(*shape, Layout::Bhnd, q, k, v)?;
        let mut view = TensorViewMut::new("out", out, shape.out_dims(), Layout::Bhnd)?;
        let mut call = || {
            kernel.forward(
                &inputs,
                &mut view,
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

    fn sampled_error(&self, rows: usize) -> (f64, usize) {
        sampled_error(&self.shape, &self.params, &self.q, &self.k, &self.v, &self.out, rows)
    }
}

/// Runs one configuration in this process (see the module docs).
pub fn measure(cfg: &Config, opts: &MeasureOpts) -> Row {
    let mut row = Row::new(cfg);
    let mut runner = match prepare(cfg, opts.seed) {
        Ok(r) => r,
        Err(e) => return Row::error(cfg, e),
    };
    let hwm_ok = machine::reset_hwm();
    let rss0 = machine::vm_rss();
    let t0 = Instant::now();
    let (res, extra) = alloc::measure(|| runner.run());
    let first = t0.elapsed();
    let hwm = machine::vm_hwm();
    if let Err(e) = res {
        return Row::error(cfg, e.to_string());
    }
    row.first_call_ms = Some(first.as_secs_f64() * 1e3);
    // None where the binary did not install the counting allocator.
    row.extra_bytes = extra.map(|b| b as u64);
    if hwm_ok {
        row.peak_rss_bytes = hwm;
        if let (Some(h), Some(r)) = (hwm, rss0) {
            row.rss_increase_bytes = Some(h.saturating_sub(r));
        }
    }
    let mut times = vec![first];
    if row.first_call_ms.unwrap_or(0.0) >= opts.direct_min_ms {
        let budget = Duration::from_secs_f64(opts.budget_s.max(0.0));
        let mut spent = first;
        while times.len() < opts.max_reps.max(1) && spent + *times.last().unwrap() <= budget {
            let t = Instant::now();
            if let Err(e) = runner.run() {
                return Row::error(cfg, e.to_string());
            }
            let dt = t.elapsed();
            times.push(dt);
            spent += dt;
        }
        let ms = median(&times.iter().map(|t| t.as_secs_f64() * 1e3).collect::<Vec<_>>());
        row.set_time(ms, times.len(), "direct", opts.peak_gflops);
    } else {
        row.peak_gflops = opts.peak_gflops;
    }
    if opts.err_rows > 0 {
        let (e, n) = runner.sampled_error(opts.err_rows);
        row.max_abs_err = Some(e);
        row.err_rows = n;
    }
    row
}

/// Median of a non-empty slice (mean of the middle two for even lengths).
pub fn median(x: &[f64]) -> f64 {
    let mut v = x.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Max |O - O_f64| over sampled rows of `[B, Hq, Nq, dv]` contiguous
/// buffers: `rows / 2` evenly spaced query rows (first and last included)
/// of (b = 0, h = 0) and of (b = B-1, h = Hq-1), so that GQA's kv-head
/// mapping is exercised. Returns the error and the rows checked.
pub fn sampled_error<T: Element>(
    shape: &AttnShape,
    params: &AttnParams,
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[f32],
    rows: usize,
) -> (f64, usize) {
    let (b_n, hq, hkv) = (shape.batch(), shape.q_heads(), shape.kv_heads());
    let (nq, nk, d, dv) = (shape.q_len(), shape.kv_len(), shape.head_dim(), shape.v_dim());
    if nq == 0 || rows == 0 {
        return (0.0, 0);
    }
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (d as f64).sqrt());
    let mut heads = vec![(0, 0), (b_n - 1, hq - 1)];
    heads.dedup();
    let per = rows.div_ceil(heads.len()).clamp(1, nq);
    let mut picks: Vec<(usize, usize, usize)> = Vec::new();
    for &(b, h) in &heads {
        for r in 0..per {
            let i = if per == 1 { nq - 1 } else { r * (nq - 1) / (per - 1) };
            picks.push((b, h, i));
        }
    }
    picks.dedup();
    let err = picks
        .par_iter()
        .map(|&(b, h, i)| {
            let g = h / (hq / hkv);
            let qrow = &q[((b * hq + h) * nq + i) * d..][..d];
            let keys = params.mask.key_range(i, nq, nk);
            let mut o = vec![0f64; dv];
            if !keys.is_empty() {
                let s: Vec<f64> = keys
                    .clone()
                    .map(|j| {
                        let krow = &k[((b * hkv + g) * nk + j) * d..][..d];
                        let dot: f64 = qrow
                            .iter()
                            .zip(krow)
                            .map(|(x, y)| x.to_f32() as f64 * y.to_f32() as f64)
                            .sum();
                        scale * dot
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for (j, sj) in keys.zip(&s) {
                    let p = (sj - m).exp();
                    sum += p;
                    let vrow = &v[((b * hkv + g) * nk + j) * dv..][..dv];
                    for (oc, x) in o.iter_mut().zip(vrow) {
                        *oc += p * x.to_f32() as f64;
                    }
                }
                o.iter_mut().for_each(|x| *x /= sum);
            }
            let got = &out[((b * hq + h) * nq + i) * dv..][..dv];
            o.iter().zip(got).map(|(r, g)| (r - *g as f64).abs()).fold(0.0, f64::max)
        })
        .reduce(|| 0.0, f64::max);
    (err, picks.len())
}

/// SplitMix64: a tiny, well-mixed generator with independent streams.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    #[inline]
    pub fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// `len` standard-normal values (Box-Muller), generated in parallel in
/// fixed 64 Ki-element chunks, each chunk its own SplitMix64 stream: the
/// values depend only on (seed, stream, index), not on the thread count.
pub fn normal<T: Element>(len: usize, seed: u64, stream: u64) -> Vec<T> {
    const CHUNK: usize = 1 << 16;
    let mut out = vec![T::default(); len];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut rng = SplitMix64(
            seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ (c as u64).wrapping_mul(0x9E37),
        );
        rng.next_u64();
        for pair in chunk.chunks_mut(2) {
            let (u1, u2) = (rng.next_unit(), rng.next_unit());
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f64::consts::TAU * u2;
            pair[0] = T::from_f32((r * t.cos()) as f32);
            if pair.len() > 1 {
                pair[1] = T::from_f32((r * t.sin()) as f32);
            }
        }
    });
    out
}

// ------------------------------------------------- child processes ----

/// What a child process is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildRequest {
    /// The configuration.
    pub config: Config,
    /// How to time it.
    pub opts: MeasureOpts,
}

/// In a binary that may be re-executed as a child (the bench): if
/// [`CHILD_ENV`] is set, measures its configuration, prints the row as one
/// JSON line on stdout and returns the exit code; otherwise `None`.
pub fn child_main_if_requested() -> Option<ExitCode> {
    let req = std::env::var(CHILD_ENV).ok()?;
    let req: ChildRequest = match serde_json::from_str(&req) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("harness child: bad request: {e}");
            return Some(ExitCode::from(2));
        }
    };
    let row = measure(&req.config, &req.opts);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string(&row).expect("rows serialize"));
    let _ = out.flush();
    Some(ExitCode::SUCCESS)
}

/// Runs `cfg` in a fresh process: `exe` (default: this executable)
/// re-executed with [`CHILD_ENV`]. A crash or a kill (e.g. out of memory)
/// becomes an error row.
pub fn run_child(exe: Option<&Path>, cfg: &Config, opts: &MeasureOpts) -> Row {
    let exe = match exe.map(Path::to_path_buf).or_else(|| std::env::current_exe().ok()) {
        Some(e) => e,
        None => return Row::error(cfg, "cannot find the current executable"),
    };
    let req = ChildRequest { config: cfg.clone(), opts: opts.clone() };
    let out = Command::new(&exe)
        .env(CHILD_ENV, serde_json::to_string(&req).expect("requests serialize"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return Row::error(cfg, format!("cannot start {}: {e}", exe.display())),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = stdout.lines().rev().find(|l| l.starts_with('{'))
        && let Ok(row) = serde_json::from_str::<Row>(line)
    {
        return row;
    }
    let why = match out.status.code() {
        Some(c) => format!("child process exited with status {c}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            match out.status.signal() {
                Some(9) => "child process killed (signal 9: out of memory?)".to_string(),
                Some(s) => format!("child process killed by signal {s}"),
                None => "child process failed".to_string(),
            }
        }
    };
    Row::error(cfg, why)
}

// ------------------------------------------------- sweep plumbing ----

/// Settings of one sweep, from the profile and the environment.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// The profile.
    pub profile: Profile,
    /// Threads for "all cores".
    pub all_threads: usize,
    /// Configurations whose first call took less are timed by criterion.
    pub criterion_max_ms: f64,
    /// Criterion warm-up and measurement time per configuration.
    pub criterion_warm_up: Duration,
    /// See `criterion_warm_up`.
    pub criterion_measurement: Duration,
    /// Direct timing: budget per configuration and most calls.
    pub direct_budget_s: f64,
    /// See `direct_budget_s`.
    pub direct_max_reps: usize,
    /// Memory budget: configurations needing more are skipped.
    pub mem_budget_bytes: u64,
    /// Query rows checked against f64 per configuration.
    pub err_rows: usize,
}

impl SweepSettings {
    /// Settings for `profile`; `ATTNLAB_MEM_BUDGET_GIB` overrides the
    /// memory budget (default: half of physical memory).
    pub fn new(profile: Profile) -> SweepSettings {
        let total = machine::meminfo("MemTotal").unwrap_or(8 << 30);
        let mem_budget_bytes = std::env::var("ATTNLAB_MEM_BUDGET_GIB")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .map(|g| (g * (1u64 << 30) as f64) as u64)
            .unwrap_or(total / 2);
        let (warm, meas, crit_max, budget, reps) = match profile {
            Profile::Smoke => (0.01, 0.02, 1e9, 0.0, 1),
            Profile::Quick => (0.05, 0.2, 40.0, 1.0, 5),
            Profile::Default => (0.15, 0.5, 60.0, 1.5, 5),
            Profile::Full => (0.5, 2.0, 300.0, 10.0, 5),
        };
        SweepSettings {
            profile,
            all_threads: machine::logical_cpus(),
            criterion_max_ms: crit_max,
            criterion_warm_up: Duration::from_secs_f64(warm),
            criterion_measurement: Duration::from_secs_f64(meas),
            direct_budget_s: budget,
            direct_max_reps: reps,
            mem_budget_bytes,
            err_rows: 32,
        }
    }

    /// The child's [`MeasureOpts`].
    pub fn measure_opts(&self, peak: &Peak, cfg: &Config) -> MeasureOpts {
        MeasureOpts {
            seed: SEED,
            direct_min_ms: self.criterion_max_ms,
            budget_s: self.direct_budget_s,
            max_reps: self.direct_max_reps,
            err_rows: self.err_rows,
            peak_gflops: Some(peak.fma_gflops(cfg.threads)),
        }
    }

    /// A skipped row if `cfg` needs more memory than the budget (or than
    /// is available right now), else `None`.
    pub fn check_memory(&self, cfg: &Config) -> Option<Row> {
        let row = Row::new(cfg);
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        if row.needs_bytes > self.mem_budget_bytes {
            let note = format!(
                "needs {:.1} GiB > budget {:.1} GiB",
                gib(row.needs_bytes),
                gib(self.mem_budget_bytes)
            );
            return Some(Row { status: Status::Skipped, note, ..row });
        }
        let avail = machine::meminfo("MemAvailable").unwrap_or(u64::MAX);
        if row.needs_bytes.saturating_add(1 << 30) > avail {
            let note = format!(
                "needs {:.1} GiB, only {:.1} GiB available now",
                gib(row.needs_bytes),
                gib(avail)
            );
            return Some(Row { status: Status::Skipped, note, ..row });
        }
        None
    }

    /// How times were taken, for the results file.
    pub fn timing_description(&self) -> String {
        format!(
            "Each configuration runs first in a fresh child process: one call measures memory \
             (counting allocator, VmHWM) and the max abs error. If that call took under {:.0} ms, \
             criterion times it in the parent process (10 samples, {:.2} s warm-up, {:.2} s \
             measurement, flat sampling; the row's time is criterion's median). Otherwise the \
             child times it directly: the first call plus more calls while under {:.1} s, at \
             most {} calls, median of all (1 call for the longest configurations).",
            self.criterion_max_ms,
            self.criterion_warm_up.as_secs_f64(),
            self.criterion_measurement.as_secs_f64(),
            self.direct_budget_s,
            self.direct_max_reps
        )
    }
}

/// Rough cost of a configuration in seconds: only for the progress
/// estimate (scaled by what the run has actually taken so far).
pub fn estimated_cost_s(cfg: &Config, s: &SweepSettings) -> f64 {
    if cfg.io_bytes() + cfg.workspace_bytes() > s.mem_budget_bytes {
        return 0.01; // recorded as skipped, not run
    }
    if let Some(kv) = cfg.kv_bytes() {
        // filling the cache (~1 GB/s of f32 values), steps at ~8 GB/s
        let fill = (kv / cfg.dtype.size() as u64 * 4) as f64 / 1e9;
        let step = kv as f64 / 8e9;
        let (fills, timing) = if step * 1e3 < s.criterion_max_ms {
            let t = s.criterion_warm_up.as_secs_f64()
                + s.criterion_measurement.as_secs_f64().max(10.0 * step);
            (2.0, t)
        } else {
            (1.0, (s.direct_budget_s.max(step)).min(step * s.direct_max_reps as f64))
        };
        return 0.1 + fills * fill + step + timing;
    }
    let rate = match cfg.kernel.as_str() {
        "naive" => 40e9 * (cfg.threads as f64).powf(0.7),
        _ => 80e9 * cfg.threads as f64,
    };
    let call = cfg.flops() / rate;
    let timing = if call * 1e3 < s.criterion_max_ms {
        s.criterion_warm_up.as_secs_f64() + s.criterion_measurement.as_secs_f64().max(10.0 * call)
    } else {
        (s.direct_budget_s.max(call)).min(call * s.direct_max_reps as f64)
    };
    0.1 + call + timing
}

/// Progress on stderr: configuration i of n, elapsed, estimate left.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    costs: Vec<f64>,
    done_cost: f64,
    done: usize,
}

impl Progress {
    /// Starts the clock for configurations with these estimated costs.
    pub fn new(costs: Vec<f64>) -> Progress {
        Progress { start: Instant::now(), costs, done_cost: 0.0, done: 0 }
    }

    /// Seconds since the start.
    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Estimated seconds left: the remaining estimated cost scaled by
    /// (time taken / estimated cost) of what is done.
    pub fn left_s(&self) -> f64 {
        let rest: f64 = self.costs[self.done.min(self.costs.len())..].iter().sum();
        if self.done_cost <= 0.0 { rest } else { rest * self.elapsed_s() / self.done_cost }
    }

    /// Reports the start of configuration `i` (0-based).
    pub fn starting(&self, i: usize, id: &str) {
        eprintln!(
            "[{:>3}/{}] {id}  (elapsed {}, ~{} left)",
            i + 1,
            self.costs.len(),
            fmt_duration(self.elapsed_s()),
            fmt_duration(self.left_s())
        );
    }

    /// Reports the end of configuration `i` with its row.
    pub fn finished(&mut self, i: usize, row: &Row) {
        self.done = i + 1;
        self.done_cost += self.costs.get(i).copied().unwrap_or(0.0);
        let what = match row.status {
            Status::Ok if row.config.kind == Kind::Decode => format!(
                "{:.1} us/step, {:.1} GB/s of K+V ({:.0}% of read bandwidth), err {:.1e}",
                row.us_per_step.unwrap_or(f64::NAN),
                row.gbs.unwrap_or(f64::NAN),
                row.pct_bandwidth.unwrap_or(f64::NAN),
                row.max_abs_err.unwrap_or(f64::NAN)
            ),
            Status::Ok => format!(
                "{:.3} ms, {:.1} GFLOP/s, extra {}, err {:.1e}",
                row.median_ms.unwrap_or(f64::NAN),
                row.gflops.unwrap_or(f64::NAN),
                opt_bytes(row.extra_bytes),
                row.max_abs_err.unwrap_or(f64::NAN)
            ),
            Status::Skipped => format!("skipped: {}", row.note),
            Status::Error => format!("error: {}", row.note),
        };
        eprintln!("          -> {what}");
    }
}

/// "1m05s", "42s".
pub fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 60 { format!("{}m{:02}s", s / 60, s % 60) } else { format!("{s}s") }
}

/// The workspace root: the nearest ancestor of the current directory with
/// a `Cargo.toml` declaring `[workspace]`, else the one this crate was
/// built in.
pub fn workspace_root() -> PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let toml = dir.join("Cargo.toml");
            if std::fs::read_to_string(&toml).is_ok_and(|s| s.contains("[workspace]")) {
                return dir.to_path_buf();
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Writes `results/runs/<stamp>-<machine>.json` and, when `publish`,
/// `results/latest.json`. Returns the paths written.
pub fn write_run(
    run: &RunFile,
    results_dir: &Path,
    publish: bool,
) -> std::io::Result<Vec<PathBuf>> {
    let runs = results_dir.join("runs");
    std::fs::create_dir_all(&runs)?;
    let stamp = run.started_utc.replace([' ', ':', '-'], "").replace("UTC", "Z");
    let path = runs.join(format!("{stamp}-{}-{}.json", run.machine.slug(), run.profile));
    let text = serde_json::to_string_pretty(run).map_err(std::io::Error::other)? + "\n";
    std::fs::write(&path, &text)?;
    let mut paths = vec![path];
    if publish {
        let latest = results_dir.join("latest.json");
        std::fs::write(&latest, &text)?;
        paths.push(latest);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_the_axes() {
        let c = Config::prefill("flash", Grouping::Mha, MaskSpec::Causal, 64, Dtype::F32, 2, 4096);
        assert_eq!(c.id(), "prefill/flash/mha/causal/d64/f32/t2/4096");
        let c = Config::prefill("naive", Grouping::Mqa, MaskSpec::Full, 128, Dtype::Bf16, 1, 512);
        assert_eq!(c.id(), "prefill/naive/mqa/full/d128/bf16/t1/512");
        assert_eq!(c.grouping(), "mqa");
    }

    #[test]
    fn decode_ids_and_bytes() {
        let c = Config::decode(Grouping::Gqa, Dtype::F16, 2, 32768);
        assert_eq!(c.id(), "decode/flash/gqa/f16/t2/32768");
        assert_eq!((c.q_heads, c.kv_heads, c.q_len, c.head_dim), (32, 8, 1, 128));
        assert_eq!(c.kv_bytes(), Some(8 * 32768 * 256 * 2));
        let r = Row::new(&c);
        assert_eq!(
            (r.kv_bytes, r.cache_dtype, r.grouping.as_str()),
            (c.kv_bytes(), Some(Dtype::F16), "gqa")
        );
        assert!(r.needs_bytes > c.kv_bytes().unwrap() && r.workspace_bytes > 0);
        let c = Config::decode(Grouping::Mha, Dtype::F32, 1, 131072);
        assert_eq!(c.id(), "decode/flash/mha/f32/t1/131072");
        assert_eq!(c.kv_bytes(), Some(4 << 30));
        let c = Config { q_len: 4, batch: 2, ..c };
        assert_eq!(c.id(), "decode/flash/mha/f32/t1/b2/nq4/131072");
        assert_eq!(
            Config::prefill("flash", Grouping::Gqa, MaskSpec::Full, 64, Dtype::F32, 2, 64)
                .kv_bytes(),
            None
        );
    }

    #[test]
    fn masks_round_trip() {
        for m in [
            MaskSpec::Full,
            MaskSpec::Causal,
            MaskSpec::Window(Some(128), Some(0)),
            MaskSpec::Window(None, Some(3)),
        ] {
            assert_eq!(MaskSpec::try_from(m.name()).unwrap(), m);
        }
        assert_eq!(MaskSpec::parse_window("128,-").unwrap(), MaskSpec::Window(Some(128), None));
        assert!(MaskSpec::parse_window("12").is_err());
    }

    #[test]
    fn flops_follow_the_convention() {
        let c = Config::prefill("flash", Grouping::Gqa, MaskSpec::Full, 64, Dtype::F32, 1, 1024);
        assert_eq!(c.flops(), 4.0 * 8.0 * 1024.0 * 1024.0 * 64.0);
        let c = Config { mask: MaskSpec::Causal, ..c };
        assert_eq!(c.flops(), 2.0 * 8.0 * 1024.0 * 1024.0 * 64.0);
    }

    #[test]
    fn normal_is_deterministic_and_standard() {
        let a = normal::<f32>(200_001, 7, 1);
        let b = normal::<f32>(200_001, 7, 1);
        assert_eq!(a, b);
        let c = normal::<f32>(1000, 7, 2);
        assert_ne!(&a[..1000], &c[..]);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
    }

    #[test]
    fn grid_is_sorted_and_unique() {
        for p in [Profile::Smoke, Profile::Quick, Profile::Default, Profile::Full] {
            let (g, desc) = grid(p, 2);
            assert!(!g.is_empty() && !desc.is_empty());
            let ids: Vec<String> = g.iter().map(Config::id).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), ids.len(), "{p:?} has duplicate ids");
            // prefill by N, then decode by L
            let len = |c: &Config| (c.kind == Kind::Decode, c.q_len.max(c.kv_len));
            assert!(g.windows(2).all(|w| len(&w[0]) <= len(&w[1])), "{p:?} is not sorted");
            assert!(g.iter().any(|c| c.kind == Kind::Decode), "{p:?} has no decode rows");
        }
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
