//! `cargo bench -p harness`: the long-context sweep.
//!
//! Prefill: sequence length × head grouping (MHA/GQA/MQA) × mask × d ×
//! threads for the naive and the flash kernel; decode: cache length ×
//! grouping × cache dtype × threads for `attn_flash::decode` (see
//! `harness::sweep::grid`). Then `results/runs/*.json`,
//! `results/latest.json`, `docs/results.md`, `docs/headline.md` and
//! `docs/img/*.svg` are regenerated.
//!
//! - `ATTNLAB_PROFILE=quick|default|full` picks the grid (default:
//!   `default`, about 10 minutes on a 2-core Zen 4; `full` runs flash to
//!   N = 131072 and takes hours).
//! - A filter argument (`cargo bench -p harness -- mqa/causal`, `-- decode/`)
//!   keeps the configurations whose id contains it; criterion applies it
//!   too.
//! - `ATTNLAB_MEM_BUDGET_GIB` sets the memory budget (default: half of
//!   physical memory); configurations needing more are recorded as
//!   "needs X GiB" instead of run.
//! - Only a complete `default` or `full` run replaces `results/latest.json`
//!   and the docs (`ATTNLAB_PUBLISH=1` forces it, `=0` prevents it); every
//!   run writes its own `results/runs/` file.
//! - `cargo test --benches` runs a two-configuration smoke sweep and
//!   writes nothing.
//!
//! Each configuration first runs in a fresh child process (this binary,
//! re-executed) for memory, error and, for long calls, time; short calls
//! are then timed here by criterion with ids such as
//! `prefill/flash/mha/causal/d64/f32/t2/4096` or
//! `decode/flash/gqa/f16/t2/32768`. Decode rows' "% of bandwidth" divides
//! by the read bandwidth measured here for the same thread count (the best
//! of the measurements before and after the sweep, like "% of peak").

use criterion::{BenchmarkId, Criterion, SamplingMode};
use harness::machine::{self, MachineInfo, PeakOptions};
use harness::report;
use harness::sweep::{
    self, Config, Profile, Progress, Row, RunFile, SCHEMA, SEED, Status, SweepSettings,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

/// Criterion flags that take a value (so the value is not the filter).
const VALUE_FLAGS: [&str; 16] = [
    "--save-baseline",
    "--baseline",
    "--baseline-lenient",
    "--load-baseline",
    "--profile-time",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--color",
    "--format",
    "--plotting-backend",
    "--output-format",
];

#[global_allocator]
static ALLOC: harness::alloc::CountingAlloc = harness::alloc::CountingAlloc;

fn main() -> ExitCode {
    if let Some(code) = sweep::child_main_if_requested() {
        return code;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |f: &str| args.iter().any(|a| a == f);
    let mut filter: Option<String> = None;
    let mut skip_next = false;
    for a in &args {
        if skip_next {
            skip_next = false;
        } else if VALUE_FLAGS.contains(&a.as_str()) {
            skip_next = true;
        } else if !a.starts_with('-') && filter.is_none() {
            filter = Some(a.clone());
        }
    }
    // `cargo bench` passes --bench; `cargo test --benches` does not.
    let test_mode = !has("--bench") || has("--test");
    let profile = if test_mode {
        Profile::Smoke
    } else {
        match Profile::parse(&std::env::var("ATTNLAB_PROFILE").unwrap_or_default()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        }
    };
    let settings = SweepSettings::new(profile);
    let (mut configs, grid_desc) = sweep::grid(profile, settings.all_threads);
    if let Some(f) = &filter {
        configs.retain(|c| c.id().contains(f.as_str()));
    }
    if has("--list") {
        for c in &configs {
            println!("{}: benchmark", c.id());
        }
        return ExitCode::SUCCESS;
    }

    let started = Instant::now();
    let started_wall = SystemTime::now();
    let started_utc = machine::utc_now();
    eprintln!(
        "attnlab sweep: profile {}, {} configurations, memory budget {}; measuring the machine...",
        profile.name(),
        configs.len(),
        machine::fmt_bytes(settings.mem_budget_bytes as f64)
    );
    let machine_info = MachineInfo::collect();
    let peak_opts = if profile == Profile::Smoke || profile == Profile::Quick {
        PeakOptions::quick(settings.all_threads)
    } else {
        PeakOptions::new(settings.all_threads)
    };
    let mut peak = machine::measure_peak(&peak_opts);
    eprintln!(
        "{} ({} CPUs): FMA peak {:.0} / {:.0} GFLOP/s, read {:.1} / {:.1} GB/s (1 / {} threads)",
        machine_info.cpu_model,
        machine_info.logical_cpus,
        peak.fma_gflops_1t,
        peak.fma_gflops_all,
        peak.read_gbs_1t,
        peak.read_gbs_all,
        peak.threads_all
    );

    let mut c = Criterion::default()
        .configure_from_args()
        .nresamples(10_000)
        .without_plots()
        .sample_size(10)
        .warm_up_time(settings.criterion_warm_up)
        .measurement_time(settings.criterion_measurement);
    let criterion_dir = criterion_dir();
    let costs = configs.iter().map(|c| sweep::estimated_cost_s(c, &settings)).collect();
    let mut progress = Progress::new(costs);
    let mut rows: Vec<Row> = Vec::with_capacity(configs.len());
    for (i, cfg) in configs.iter().enumerate() {
        progress.starting(i, &cfg.id());
        let row = match settings.check_memory(cfg) {
            Some(skipped) => skipped,
            None => {
                let opts = settings.measure_opts(&peak, cfg);
                let mut row = sweep::run_child(None, cfg, &opts);
                if row.status == Status::Ok && row.median_ms.is_none() {
                    match time_with_criterion(&mut c, cfg, &settings, &criterion_dir, started_wall)
                    {
                        Ok((ms, n, how)) => row.set_time(ms, n, how, opts.peak_gflops),
                        Err(e) => row = Row::error(cfg, e),
                    }
                }
                row.set_read_gbs(Some(peak.read_gbs(cfg.threads)));
                row
            }
        };
        progress.finished(i, &row);
        rows.push(row);
    }

    // The peaks once more, after the sweep: each figure is the best of the
    // two (noise only lowers a peak), and every "% of peak" uses it.
    if profile != Profile::Smoke {
        eprintln!("measuring the machine's peaks again...");
        peak = peak.best_of(&machine::measure_peak(&peak_opts));
        for r in rows.iter_mut() {
            if let Some(g) = r.gflops {
                let p = peak.fma_gflops(r.config.threads);
                r.peak_gflops = Some(p);
                r.pct_peak = Some(100.0 * g / p);
            }
            if r.status == Status::Ok {
                r.set_read_gbs(Some(peak.read_gbs(r.config.threads)));
            }
        }
    }
    let run = RunFile {
        schema: SCHEMA,
        profile: profile.name().into(),
        filter: filter.clone(),
        started_utc,
        duration_s: started.elapsed().as_secs_f64(),
        machine: machine_info,
        peak,
        mem_budget_bytes: settings.mem_budget_bytes,
        seed: SEED,
        grid: grid_desc,
        timing: settings.timing_description(),
        rows,
    };
    eprintln!(
        "sweep done in {}: {} measured, {} skipped (memory), {} failed",
        sweep::fmt_duration(run.duration_s),
        run.rows.iter().filter(|r| r.status == Status::Ok).count(),
        run.rows.iter().filter(|r| r.status == Status::Skipped).count(),
        run.rows.iter().filter(|r| r.status == Status::Error).count()
    );
    if profile == Profile::Smoke {
        // `cargo test --benches`: the plumbing ran; write nothing.
        let bad: Vec<&Row> = run
            .rows
            .iter()
            .filter(|r| r.status == Status::Error && !r.note.starts_with("unsupported"))
            .collect();
        for r in &bad {
            eprintln!("smoke: {} failed: {}", r.id, r.note);
        }
        return if bad.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let publish = match std::env::var("ATTNLAB_PUBLISH").ok().as_deref() {
        Some("1") => true,
        Some("0") => false,
        _ => filter.is_none() && matches!(profile, Profile::Default | Profile::Full),
    };
    let root = sweep::workspace_root();
    match sweep::write_run(&run, &root.join("results"), publish) {
        Ok(paths) => paths.iter().for_each(|p| eprintln!("wrote {}", p.display())),
        Err(e) => {
            eprintln!("cannot write results: {e}");
            return ExitCode::FAILURE;
        }
    }
    if publish {
        let latest = root.join("results/latest.json");
        match report::generate(&run, &root.join("docs"), &report::source_name(&latest, &root)) {
            Ok(paths) => paths.iter().for_each(|p| eprintln!("wrote {}", p.display())),
            Err(e) => {
                eprintln!("cannot write docs: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        eprintln!(
            "not published (profile {}, filter {:?}): results/latest.json and docs/ are unchanged; \
             render this run with `attn report --input <the runs/ file> --docs <dir>`",
            profile.name(),
            filter
        );
    }
    c.final_summary();
    ExitCode::SUCCESS
}

/// Where criterion writes `estimates.json`: `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else `<target>/criterion` from this
/// executable's path (`<target>/release/deps/harness-*`).
fn criterion_dir() -> Option<PathBuf> {
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
fn time_with_criterion(
    c: &mut Criterion,
    cfg: &Config,
    s: &SweepSettings,
    dir: &Option<PathBuf>,
    since: SystemTime,
) -> Result<(f64, usize, &'static str), String> {
    let mut runner = sweep::prepare(cfg, SEED)?;
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
    Ok((sweep::median(&per_iter), per_iter.len(), "criterion"))
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
