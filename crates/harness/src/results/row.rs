//! One configuration's results ([`Row`], [`Status`]) and one sweep's
//! ([`RunFile`]), as `results/*.json` holds them ([`SCHEMA`]).

use crate::config::{Config, Dtype, Kind};
use crate::machine::{MachineInfo, Peak};
use attnlab::Kernel;
use attnlab::flash::{Flash, Path};
use serde::{Deserialize, Serialize};

/// Version of the results file format. 2 added decode rows (`kind`,
/// `cache_dtype`, `us_per_step`, `kv_bytes`, `gbs`, `read_gbs`,
/// `pct_bandwidth`); 3 added score modifiers (`mods`, written only for
/// rows that have any, and `bias_read_ms`), which an older `attn` would
/// have read as rows of the plain call; 4 added layer rows (kinds
/// `layer` and `layer_backward`, and their `layer` split), which an
/// older `attn` cannot read; files of schema 1 (prefill only), 2 and 3
/// still load, their rows read as prefill and as plain calls.
pub const SCHEMA: u32 = 4;

/// Timed reads of the bias buffer behind a row's `bias_read_ms` (their
/// median).
pub const BIAS_READS: usize = 5;

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
    /// The configuration (its score modifiers, if any, are the row's
    /// `mods`: [`crate::config::Mods`]).
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
    /// Decode with an f16, bf16 or q8_0 cache: max |O − O_f64| over the
    /// same rows with the oracle reading the f32 values before the cache
    /// stored them (`max_abs_err` reads them as stored).
    #[serde(default)]
    pub storage_err: Option<f64>,
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
    /// The CPU that ran the row and the facts its tiles were chosen from
    /// ([`attnlab::cpu::CpuFacts::summary`]: brand, vendor/family/
    /// model, caches, vector datapath); empty in rows from before it was
    /// recorded.
    #[serde(default)]
    pub cpu: String,
    /// What the flash kernel ran with ([`tiles_of`]): `Br×Bc` tiles of the
    /// tiled path (`256x64`), or `split-kv`; `None` for other kernels and
    /// in rows from before it was recorded.
    #[serde(default)]
    pub tiles: Option<String>,
    /// Rows with a bias: the time of reading the bias buffer once in the
    /// same process, ms (median of [`BIAS_READS`] reads;
    /// `crate::measure::read_once`). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias_read_ms: Option<f64>,
    /// Layer rows: the time split between the projections and the
    /// attention. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<LayerSplit>,
}

/// Where a layer row's time went: the medians, over the timed calls, of
/// the time in the projections' GEMMs and in the flash kernel (each
/// with its output buffers), and each part's FLOPs
/// ([`Config::layer_flops`]) and GFLOP/s. The rest of `median_ms` (input
/// checks) is neither.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerSplit {
    /// Median time in the Q, K, V and output projections (backward: their
    /// gradients), ms.
    pub proj_ms: f64,
    /// Median time in the attention kernel (backward: the flash
    /// backward), ms.
    pub attn_ms: f64,
    /// FLOPs credited to the projections.
    pub proj_flops: f64,
    /// FLOPs credited to the attention.
    pub attn_flops: f64,
    /// `proj_flops / proj_ms`, GFLOP/s.
    pub proj_gflops: f64,
    /// `attn_flops / attn_ms`, GFLOP/s.
    pub attn_gflops: f64,
}

/// The tiles `Flash` chooses for `cfg` on this CPU: `BrxBc` on the tiled
/// path, `split-kv` for decode and decode-like calls, `bwd BrxBc` for the
/// backward's fixed tiles, `None` for other kernels or a shape that does
/// not build.
pub fn tiles_of(cfg: &Config) -> Option<String> {
    if cfg.kernel != Kernel::Flash.name() {
        return None;
    }
    if cfg.kind == Kind::Decode {
        return Some("split-kv".into());
    }
    if cfg.kind.is_backward() {
        let (br, bc) = attnlab::flash::backward_tiles();
        return Some(format!("bwd {br}x{bc}"));
    }
    match Flash::default().path(&cfg.shape().ok()?) {
        Path::Tiled(plan) => Some(format!("{}x{}", plan.tiles().br, plan.tiles().bc)),
        Path::SplitKv => Some("split-kv".into()),
    }
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
            storage_err: None,
            err_rows: 0,
            avx512f: cfg!(target_feature = "avx512f"),
            fma: cfg!(target_feature = "fma"),
            cache_dtype: (cfg.kind == Kind::Decode).then_some(cfg.dtype),
            us_per_step: None,
            kv_bytes: cfg.kv_bytes(),
            gbs: None,
            read_gbs: None,
            pct_bandwidth: None,
            cpu: attnlab::cpu::facts().summary(),
            tiles: tiles_of(cfg),
            bias_read_ms: None,
            layer: None,
        }
    }

    /// Layer rows: records the median times of the two parts (ms) and
    /// derives their GFLOP/s; nothing for other rows.
    pub fn set_layer_split(&mut self, proj_ms: f64, attn_ms: f64) {
        if let Some((proj_flops, attn_flops)) = self.config.layer_flops() {
            let rate = |f: f64, ms: f64| f / (ms * 1e-3) * 1e-9;
            self.layer = Some(LayerSplit {
                proj_ms,
                attn_ms,
                proj_flops,
                attn_flops,
                proj_gflops: rate(proj_flops, proj_ms),
                attn_gflops: rate(attn_flops, attn_ms),
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Grouping;

    #[test]
    fn decode_rows_carry_the_cache() {
        let c = Config::decode(Grouping::Gqa, Dtype::F16, 2, 32768);
        let r = Row::new(&c);
        assert_eq!(
            (r.kv_bytes, r.cache_dtype, r.grouping.as_str()),
            (c.kv_bytes(), Some(Dtype::F16), "gqa")
        );
        assert!(r.needs_bytes > c.kv_bytes().unwrap() && r.workspace_bytes > 0);
        assert_eq!(r.tiles.as_deref(), Some("split-kv"));
    }

    #[test]
    fn rows_record_the_cpu_and_the_tiles() {
        use crate::config::MaskSpec;
        let c = Config::prefill("flash", Grouping::Mha, MaskSpec::Full, 64, Dtype::F32, 1, 4096);
        let r = Row::new(&c);
        let t = attnlab::flash::TileConfig::for_shape(&c.shape().unwrap());
        assert_eq!(r.tiles, Some(format!("{}x{}", t.br, t.bc)));
        assert_eq!(r.cpu, attnlab::cpu::facts().summary());
        assert!(!r.cpu.is_empty());
        // the backward runs its own fixed tiles, also for short sequences
        let bwd = Config::backward("flash", Grouping::Mha, MaskSpec::Causal, 64, Dtype::F32, 1, 8);
        let (br, bc) = attnlab::flash::backward_tiles();
        assert_eq!(Row::new(&bwd).tiles, Some(format!("bwd {br}x{bc}")));
        let naive = Config { kernel: "naive".into(), ..c };
        assert_eq!(Row::new(&naive).tiles, None);
        // Rows written before these fields existed still load.
        let mut v = serde_json::to_value(&r).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("cpu").unwrap();
        o.remove("tiles").unwrap();
        let old: Row = serde_json::from_value(v).unwrap();
        assert_eq!((old.cpu.as_str(), old.tiles), ("", None));
    }
}
