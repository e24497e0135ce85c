//! The sweep driver: every configuration of the grid in a child process,
//! short ones timed again by criterion, the machine's peaks before and
//! after, the results file, and the docs when the run is published.

use super::args::SweepArgs;
use super::grid::{Profile, grid};
use super::progress::Progress;
use super::settings::{SweepSettings, estimated_cost_s};
use super::timing;
use crate::config::Config;
use crate::machine::{self, MachineInfo, Peak, PeakOptions};
use crate::measure::{SEED, child};
use crate::report;
use crate::results::{Row, RunFile, SCHEMA, Status, workspace_root, write_run};
use crate::units::{fmt_bytes, fmt_duration};
use criterion::Criterion;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

/// The bench target's `main`: the child-process protocol when this is a
/// child, else the sweep (see the module docs of [`crate::sweep`]).
pub fn bench_main() -> ExitCode {
    if let Some(code) = child::child_main_if_requested() {
        return code;
    }
    let SweepArgs { filter, test_mode, list } = SweepArgs::from_env();
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
    let (mut configs, grid_desc) = grid(profile, settings.all_threads);
    if let Some(f) = &filter {
        configs.retain(|c| c.id().contains(f.as_str()));
    }
    if list {
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
        fmt_bytes(settings.mem_budget_bytes as f64)
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

    let mut c = timing::criterion(&settings);
    let criterion_dir = timing::criterion_dir();
    let costs = configs.iter().map(|c| estimated_cost_s(c, &settings)).collect();
    let mut progress = Progress::new(costs);
    let mut rows: Vec<Row> = Vec::with_capacity(configs.len());
    for (i, cfg) in configs.iter().enumerate() {
        progress.starting(i, &cfg.id());
        let row = match settings.check_memory(cfg) {
            Some(skipped) => skipped,
            None => {
                let timer = Timer { c: &mut c, dir: &criterion_dir, since: started_wall };
                measure_one(cfg, &settings, &peak, timer)
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
        fmt_duration(run.duration_s),
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
    if !write_and_publish(&run, profile, &filter) {
        return ExitCode::FAILURE;
    }
    c.final_summary();
    ExitCode::SUCCESS
}

/// Criterion and where its estimates of this run are.
struct Timer<'a> {
    c: &'a mut Criterion,
    dir: &'a Option<PathBuf>,
    since: SystemTime,
}

/// One configuration: measured in a child process, then timed by
/// criterion here when the child did not time it (a short call).
fn measure_one(cfg: &Config, settings: &SweepSettings, peak: &Peak, t: Timer<'_>) -> Row {
    let opts = settings.measure_opts(peak, cfg);
    let mut row = child::run_child(None, cfg, &opts);
    if row.status == Status::Ok && row.median_ms.is_none() {
        match timing::time_with_criterion(t.c, cfg, settings, t.dir, t.since) {
            Ok((ms, n, how)) => row.set_time(ms, n, how, opts.peak_gflops),
            Err(e) => row = Row::error(cfg, e),
        }
    }
    row.set_read_gbs(Some(peak.read_gbs(cfg.threads)));
    row
}

/// Writes the run's results file and, when the run is published (a
/// complete default or full run, or `ATTNLAB_PUBLISH=1`),
/// `results/latest.json` and the docs; false (said on stderr) when a
/// write failed.
fn write_and_publish(run: &RunFile, profile: Profile, filter: &Option<String>) -> bool {
    let publish = match std::env::var("ATTNLAB_PUBLISH").ok().as_deref() {
        Some("1") => true,
        Some("0") => false,
        _ => filter.is_none() && matches!(profile, Profile::Default | Profile::Full),
    };
    let root = workspace_root();
    match write_run(run, &root.join("results"), publish) {
        Ok(paths) => paths.iter().for_each(|p| eprintln!("wrote {}", p.display())),
        Err(e) => {
            eprintln!("cannot write results: {e}");
            return false;
        }
    }
    if publish {
        let latest = root.join("results/latest.json");
        match report::generate(run, &root.join("docs"), &report::source_name(&latest, &root)) {
            Ok(paths) => paths.iter().for_each(|p| eprintln!("wrote {}", p.display())),
            Err(e) => {
                eprintln!("cannot write docs: {e}");
                return false;
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
    true
}
