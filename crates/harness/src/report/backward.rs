//! The backward section of `docs/results.md` (tables per head grouping,
//! head dim and thread count: N and mask rows × naive and flash time,
//! GFLOP/s, % of peak, extra memory, error) and `img/backward_vs_n.svg`
//! (time and extra memory against N).

use super::cells::*;
use super::chart::*;
use super::select::*;
use crate::config::Kind;
use crate::results::{Row, RunFile};
use plotters::prelude::*;
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The run's backward rows of plain calls.
pub(super) fn backward_rows(run: &RunFile) -> Vec<&Row> {
    run.rows
        .iter()
        .filter(|r| r.config.kind == Kind::Backward && r.config.mods.is_plain())
        .collect()
}

/// One backward table: grouping, head dim, thread count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Group {
    order: usize,
    grouping: String,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: String,
    threads: std::cmp::Reverse<usize>,
}

impl Group {
    fn of(r: &Row) -> Group {
        let c = &r.config;
        Group {
            order: GROUPINGS.iter().position(|(k, _)| *k == r.grouping).unwrap_or(GROUPINGS.len()),
            grouping: r.grouping.clone(),
            q_heads: c.q_heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
            dtype: c.dtype.name().to_string(),
            threads: std::cmp::Reverse(c.threads),
        }
    }

    fn title(&self) -> String {
        let g = GROUPINGS
            .iter()
            .find(|(k, _)| *k == self.grouping)
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| self.grouping.to_uppercase());
        let t = self.threads.0;
        format!(
            "{g} (Hq = {}, Hkv = {}), d = {}, {}, {t} thread{}",
            self.q_heads,
            self.kv_heads,
            self.head_dim,
            self.dtype,
            plural(t)
        )
    }
}

/// The "Backward" section (nothing when the run has no backward rows).
pub(super) fn backward_section(s: &mut String, run: &RunFile) {
    let rows = backward_rows(run);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Backward (gradients)\n");
    let _ = writeln!(
        s,
        "- **Problem**: dQ, dK, dV of the prefill problem above (`Kernel::backward`), from Q, \
         K, V, the forward's O and LSE (one flash forward before the timed calls) and a seeded \
         standard-normal dO. **naive** materialises P, dP and dS (three `[B, Hq, N, N]` f32 \
         tensors, two-GEMM style); **flash** is the FlashAttention-2 backward (K/V tiles \
         outer, P recomputed from the LSE, dQ made deterministic by fixed key chunks; \
         `docs/design.md`)."
    );
    let _ = writeln!(
        s,
        "- **GFLOP/s** = 2.5 × the forward's FLOPs (the FlashAttention-2 convention: five \
         products of the forward's size; recomputing S is not credited) / time; **% peak** \
         divides by the FMA peak of this run for the same thread count. **time**, **extra** \
         and `needs` as for the forward tables. **err** = max |dQ − dQ_f64| over 32 sampled \
         query rows (dK and dV rows would each need the whole softmax: O(N²·d) per row).\n"
    );
    let _ = writeln!(s, "![backward time and memory vs N](img/backward_vs_n.svg)\n");
    let mut groups: Vec<Group> = rows.iter().map(|r| Group::of(r)).collect();
    groups.sort();
    groups.dedup();
    for g in groups {
        let sel: Vec<&Row> = rows.iter().copied().filter(|r| Group::of(r) == g).collect();
        // N, then no mask before causal before windows
        let mask_key =
            |m: &str| (["full", "causal"].iter().position(|x| *x == m).unwrap_or(2), m.to_string());
        let keys: BTreeSet<(usize, (usize, String))> =
            sel.iter().map(|r| (r.config.q_len, mask_key(&r.config.mask.name()))).collect();
        let find = |k: &str, n: usize, m: &str| {
            sel.iter()
                .copied()
                .find(|r| r.config.kernel == k && r.config.q_len == n && r.config.mask.name() == m)
        };
        let _ = writeln!(s, "### Backward, {}\n", g.title());
        let head: Vec<String> = [
            "N",
            "mask",
            "naive ms",
            "flash ms",
            "speedup",
            "flash GFLOP/s",
            "flash % peak",
            "naive extra",
            "flash extra",
            "flash err",
        ]
        .map(String::from)
        .to_vec();
        let mut body = Vec::new();
        for (n, (_, m)) in &keys {
            let (nv, fl) = (find("naive", *n, m), find("flash", *n, m));
            body.push(vec![
                n_label(*n),
                mask_title(m),
                ms_cell(nv),
                ms_cell(fl),
                speedup_cell(nv, fl),
                gflops_cell(fl),
                pct_cell(fl),
                bytes_cell(nv, true, |r| r.extra_bytes),
                bytes_cell(fl, true, |r| r.extra_bytes),
                err_cell(fl),
            ]);
        }
        table(s, &head, &body);
    }
}

/// `img/backward_vs_n.svg`: time and extra memory against N (log-log),
/// naive and flash × no mask and causal, for MHA with d = 64 on the
/// most threads the run's backward rows used.
pub fn plot_backward_vs_n(run: &RunFile) -> PlotResult {
    let rows = backward_rows(run);
    let threads = rows.iter().map(|r| r.config.threads).max().ok_or("no backward rows")?;
    let pick =
        |r: &Row| r.grouping == "mha" && r.config.head_dim == 64 && r.config.threads == threads;
    let series = |f: &dyn Fn(&Row) -> Option<f64>| -> Vec<Series> {
        let mut out = Vec::new();
        for k in ["naive", "flash"] {
            for m in ["full", "causal"] {
                let mut pts: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| pick(r) && r.config.kernel == k && r.config.mask.name() == m)
                    .filter_map(|r| ok(Some(r)).and_then(f).map(|y| (r.config.q_len as f64, y)))
                    .filter(|p| p.1 > 0.0 && p.1.is_finite())
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                out.push(Series {
                    label: format!("{k}, {}", mask_title(m)),
                    color: color_of(k, m),
                    dashed: false,
                    hollow: false,
                    points: pts,
                });
            }
        }
        out.retain(|s| !s.points.is_empty());
        out
    };
    let time = series(&|r| r.median_ms);
    let mem = series(&|r| r.extra_bytes.map(|b| b as f64 / (1u64 << 20) as f64));
    if time.is_empty() {
        return Err("no measured MHA d = 64 backward rows".into());
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (920, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(e2s)?;
        let areas = root.split_evenly((1, 2));
        let t = format!("{threads} thread{}", plural(threads));
        panel(
            &areas[0],
            &format!("backward time, MHA d = 64, {t}"),
            N_AXIS,
            "ms",
            &time,
            true,
            &|y| fmt_axis(y),
            None,
            SeriesLabelPosition::UpperLeft,
            None,
        )?;
        if !mem.is_empty() {
            panel(
                &areas[1],
                &format!("backward extra memory, MHA d = 64, {t}"),
                N_AXIS,
                "MiB",
                &mem,
                true,
                &|y| fmt_axis(y),
                None,
                SeriesLabelPosition::UpperLeft,
                None,
            )?;
        }
        root.present().map_err(e2s)?;
    }
    Ok(svg)
}
