//! The settings of one sweep (memory budget, criterion and direct timing
//! per profile), the memory check that skips a configuration, and the
//! cost estimate behind the progress line.

use super::grid::Profile;
use crate::config::Config;
use crate::machine::{self, Peak};
use crate::measure::{MeasureOpts, SEED};
use crate::results::{Row, Status};
use std::time::Duration;

/// Most direct calls the child times for a row with score modifiers.
pub const MODIFIER_MAX_REPS: usize = 3;

/// Layer rows: always timed directly in the child (each call reports its
/// split between projections and attention, which criterion would not
/// keep), at most this many calls within [`LAYER_BUDGET_S`].
pub const LAYER_MAX_REPS: usize = 5;

/// Layer rows: the time budget of the direct calls, seconds (the eight
/// rows of the default grid add about half a minute on 2 cores).
pub const LAYER_BUDGET_S: f64 = 2.0;

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

    /// The child's [`MeasureOpts`]: at most [`MODIFIER_MAX_REPS`] direct
    /// calls for a row with score modifiers (they add ~10 rows of
    /// ~0.2 s calls to the default sweep).
    pub fn measure_opts(&self, peak: &Peak, cfg: &Config) -> MeasureOpts {
        let max_reps = if cfg.mods.is_plain() {
            self.direct_max_reps
        } else {
            self.direct_max_reps.min(MODIFIER_MAX_REPS)
        };
        if cfg.kind.is_layer() {
            return MeasureOpts {
                seed: SEED,
                direct_min_ms: 0.0,
                budget_s: LAYER_BUDGET_S,
                max_reps: LAYER_MAX_REPS.min(self.direct_max_reps),
                err_rows: self.err_rows,
                peak_gflops: Some(peak.fma_gflops(cfg.threads)),
            };
        }
        MeasureOpts {
            seed: SEED,
            direct_min_ms: self.criterion_max_ms,
            budget_s: self.direct_budget_s,
            max_reps,
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
             most {} calls ({MODIFIER_MAX_REPS} for rows with score modifiers), median of all \
             (1 call for the longest configurations). Layer rows are always timed directly (at \
             most {LAYER_MAX_REPS} calls within {LAYER_BUDGET_S:.0} s), each call split between \
             the projections and the attention, medians of each part.",
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
        let f32_kv =
            (cfg.batch * cfg.kv_heads * cfg.kv_len * (cfg.head_dim + cfg.v_dim) * 4) as f64;
        let fill = f32_kv / 1e9;
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
    if cfg.kind.is_layer() {
        // preparing (weights, tokens; backward: a forward) and direct calls
        let reps = LAYER_BUDGET_S.max(call).min(call * LAYER_MAX_REPS as f64);
        return 0.3 + 2.0 * call + reps;
    }
    let timing = if call * 1e3 < s.criterion_max_ms {
        s.criterion_warm_up.as_secs_f64() + s.criterion_measurement.as_secs_f64().max(10.0 * call)
    } else {
        (s.direct_budget_s.max(call)).min(call * s.direct_max_reps as f64)
    };
    0.1 + call + timing
}
