//! Criterion in the sweep: the parent process times the configurations
//! whose first call was short with criterion (ids such as
//! `prefill/flash/mha/causal/d64/f32/t2/4096`), through the same runner
//! the child measured ([`crate::measure::prepare`]).

use super::settings::SweepSettings;
use crate::config::Config;
use crate::measure::{self, SEED};
use criterion::{BenchmarkId, Criterion, SamplingMode};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

/// Criterion configured from the command line (its filter, baselines,
/// ...) with the sweep's sample size and times.
pub fn criterion(s: &SweepSettings) -> Criterion {
    Criterion::default()
        .configure_from_args()
        .nresamples(10_000)
        .without_plots()
        .sample_size(10)
        .warm_up_time(s.criterion_warm_up)
        .measurement_time(s.criterion_measurement)
}

/// Where criterion writes `estimates.json`: `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else `<target>/criterion` from this
/// executable's path (`<target>/release/deps/harness-*`).
pub fn criterion_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(h));
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(t).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// Criterion's median (ms) for `cfg`, the number of samples, and where it
/// came from: `estimates.json` written by this run, else the median of the
/// samples criterion timed through `iter_custom` (the same measurements).
pub fn time_with_criterion(
    c: &mut Criterion,
    cfg: &Config,
    s: &SweepSettings,
    dir: &Option<PathBuf>,
    since: SystemTime,
) -> Result<(f64, usize, &'static str), String> {
    let mut runner = measure::prepare(cfg, SEED)?;
    let mut records: Vec<(u64, f64)> = Vec::new();
    let mut failure: Option<String> = None;
    {
        let mut g = c.benchmark_group(cfg.kind.name());
        g.sample_size(10)
            .warm_up_time(s.criterion_warm_up)
            .measurement_time(s.criterion_measurement)
            .sampling_mode(SamplingMode::Flat);
        g.bench_function(BenchmarkId::new(cfg.function_id(), cfg.param_id()), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    if let Err(e) = runner.run() {
                        failure.get_or_insert(e.to_string());
                    }
                }
                let d = t.elapsed();
                records.push((iters, d.as_secs_f64() * 1e3));
                d
            })
        });
        g.finish();
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(ms) = dir.as_deref().and_then(|d| read_estimate(d, cfg, since)) {
        return Ok((ms, 10, "criterion"));
    }
    // The last sample_size calls are the measurement (warm-up comes first).
    let tail = &records[records.len().saturating_sub(10)..];
    if tail.is_empty() {
        return Err("criterion took no samples".into());
    }
    let per_iter: Vec<f64> = tail.iter().map(|(n, ms)| ms / *n as f64).collect();
    Ok((measure::median(&per_iter), per_iter.len(), "criterion"))
}

fn read_estimate(dir: &Path, cfg: &Config, since: SystemTime) -> Option<f64> {
    let safe = |s: &str| s.replace(['?', '"', '/', '\\', '*', '<', '>', ':', '|', '^'], "_");
    let path = dir
        .join(cfg.kind.name())
        .join(safe(&cfg.function_id()))
        .join(safe(&cfg.param_id()))
        .join("new/estimates.json");
    let meta = std::fs::metadata(&path).ok()?;
    if meta.modified().ok()? < since {
        return None; // left from an earlier run
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64().map(|ns| ns * 1e-6)
}
