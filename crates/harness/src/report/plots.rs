//! The prefill plots of `docs/img/`: time, memory and GFLOP/s against N.

use super::cells::*;
use super::chart::*;
use super::select::*;
use crate::results::{Row, RunFile, Status};
use plotters::prelude::*;

fn time_series(run: &RunFile, g: &str) -> Vec<Series> {
    let mut series = Vec::new();
    for k in ["naive", "flash"] {
        for m in ["full", "causal"] {
            let pts = points(run, g, k, m, |r| ok(Some(r)).and_then(|r| r.median_ms));
            series.push(Series {
                label: format!("{k}, {}", if m == "full" { "no mask" } else { m }),
                color: color_of(k, m),
                dashed: false,
                hollow: false,
                points: pts,
            });
        }
    }
    series
}

/// `img/time_vs_n.svg`: one log-log panel per grouping.
pub fn plot_time_vs_n(run: &RunFile) -> PlotResult {
    let pre = prefill_only(run);
    let run = &pre;
    let gs: Vec<(&str, &str)> = GROUPINGS
        .iter()
        .copied()
        .filter(|(g, _)| !time_series(run, g).iter().all(|s| s.points.is_empty()))
        .collect();
    if gs.is_empty() {
        return Err("no measured rows".into());
    }
    let main = Main::of(run);
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (460 * gs.len() as u32, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(e2s)?;
        let areas = root.split_evenly((1, gs.len()));
        for (area, (g, gname)) in areas.iter().zip(&gs) {
            let mut series = time_series(run, g);
            // Guides start 4x below the lowest first point.
            let anchor = series
                .iter()
                .filter(|s| !s.points.is_empty())
                .min_by(|a, b| {
                    let key = |s: &Series| (s.points[0].0, s.points[0].1);
                    key(a).partial_cmp(&key(b)).unwrap_or(std::cmp::Ordering::Equal)
                })
                .map(|s| s.points.clone())
                .unwrap_or_default();
            let refs: Vec<Series> = [("∝ N² (guide)", 2), ("∝ N (guide)", 1)]
                .iter()
                .filter_map(|(l, k)| slope(l, *k, &anchor, 0.25, &series, GREY))
                .collect();
            series.extend(refs);
            panel(
                area,
                &format!("{gname}: time per call ({})", main.describe()),
                N_AXIS,
                "ms (log)",
                &series,
                true,
                &fmt_axis,
                None,
                SeriesLabelPosition::UpperLeft,
                None,
            )?;
        }
        root.present().map_err(e2s)?;
    }
    Ok(svg)
}

/// `img/memory_vs_n.svg`: extra bytes of both kernels (and what naive
/// would need where it was not run), inputs + outputs (∝ N) and an N²
/// reference, for the causal (else unmasked) MHA rows of the main
/// combination, falling back to another grouping per N.
pub fn plot_memory_vs_n(run: &RunFile) -> PlotResult {
    let pre = prefill_only(run);
    let run = &pre;
    let mask =
        if run.rows.iter().any(|r| r.config.mask.name() == "causal") { "causal" } else { "full" };
    let main = Main::of(run);
    let pick = |kernel: &str, f: &dyn Fn(&Row) -> Option<f64>| -> Vec<(f64, f64)> {
        let mut by_n: Vec<(f64, f64)> = Vec::new();
        for (g, _) in GROUPINGS {
            for p in points(run, g, kernel, mask, f) {
                if !by_n.iter().any(|q| q.0 == p.0) {
                    by_n.push(p);
                }
            }
        }
        by_n.sort_by(|a, b| a.0.total_cmp(&b.0));
        by_n
    };
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let naive = pick("naive", &|r| ok(Some(r)).and_then(|r| r.extra_bytes).map(mib));
    let naive_needs =
        pick("naive", &|r| (r.status == Status::Skipped).then(|| mib(r.workspace_bytes)));
    let flash = pick("flash", &|r| ok(Some(r)).and_then(|r| r.extra_bytes).map(mib));
    let flash_rss = pick("flash", &|r| ok(Some(r)).and_then(|r| r.rss_increase_bytes).map(mib));
    let naive_rss = pick("naive", &|r| ok(Some(r)).and_then(|r| r.rss_increase_bytes).map(mib));
    let io = pick("flash", &|r| Some(mib(r.io_bytes)));
    let mut series = vec![
        Series {
            label: "naive extra (allocator peak)".into(),
            color: NAIVE_FULL,
            dashed: false,
            hollow: false,
            points: naive.clone(),
        },
        Series {
            label: "naive workspace, not run (needs)".into(),
            color: NAIVE_FULL,
            dashed: true,
            hollow: true,
            points: naive_needs,
        },
        Series {
            label: "naive RSS rise".into(),
            color: NAIVE_CAUSAL,
            dashed: false,
            hollow: true,
            points: naive_rss,
        },
        Series {
            label: "flash extra (allocator peak)".into(),
            color: FLASH_FULL,
            dashed: false,
            hollow: false,
            points: flash,
        },
        Series {
            label: "flash RSS rise".into(),
            color: FLASH_CAUSAL,
            dashed: false,
            hollow: true,
            points: flash_rss,
        },
        Series {
            label: "inputs + outputs (∝ N)".into(),
            color: GREY,
            dashed: false,
            hollow: true,
            points: io,
        },
    ];
    if let Some(s) = slope("∝ N² (guide)", 2, &naive, 3.0, &series, BLACK) {
        series.push(s);
    }
    if series.iter().all(|s| s.points.is_empty()) {
        return Err("no rows".into());
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(e2s)?;
        panel(
            &root,
            &format!("memory per call, {mask} ({}; MHA, else GQA/MQA)", main.describe()),
            N_AXIS,
            "MiB (log)",
            &series,
            true,
            &|y| {
                if y >= 1.0 { format!("{}", y.round() as u64) } else { format!("{y:.2}") }
            },
            Some((
                mib(run.mem_budget_bytes),
                format!("memory budget of the run ({})", gib(run.mem_budget_bytes)),
            )),
            SeriesLabelPosition::UpperLeft,
            None,
        )?;
        root.present().map_err(e2s)?;
    }
    Ok(svg)
}

/// `img/gflops_vs_n.svg`: GFLOP/s per grouping, with the FMA peak.
pub fn plot_gflops_vs_n(run: &RunFile) -> PlotResult {
    let pre = prefill_only(run);
    let run = &pre;
    let main = Main::of(run);
    let peak = run.peak.fma_gflops(main.threads);
    let gs: Vec<(&str, &str)> = GROUPINGS
        .iter()
        .copied()
        .filter(|(g, _)| {
            run.rows
                .iter()
                .any(|r| r.grouping == *g && r.status == Status::Ok && main.has(&r.config))
        })
        .collect();
    if gs.is_empty() {
        return Err("no measured rows".into());
    }
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (460 * gs.len() as u32, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(e2s)?;
        let areas = root.split_evenly((1, gs.len()));
        for (area, (g, gname)) in areas.iter().zip(&gs) {
            let mut series = Vec::new();
            for k in ["naive", "flash"] {
                for m in ["full", "causal"] {
                    series.push(Series {
                        label: format!("{k}, {}", if m == "full" { "no mask" } else { m }),
                        color: color_of(k, m),
                        dashed: false,
                        hollow: false,
                        points: points(run, g, k, m, |r| ok(Some(r)).and_then(|r| r.gflops)),
                    });
                }
            }
            panel(
                area,
                &format!("{gname}: GFLOP/s ({})", main.describe()),
                N_AXIS,
                "GFLOP/s",
                &series,
                false,
                &|y| format!("{}", y.round() as i64),
                Some((peak, format!("FMA peak {} GFLOP/s", fmt_num(peak)))),
                SeriesLabelPosition::LowerRight,
                None,
            )?;
        }
        root.present().map_err(e2s)?;
    }
    Ok(svg)
}
