//! The decode section of `docs/results.md` (tables per grouping and
//! thread count: L rows × cache dtype columns of µs per step, GB/s of K+V,
//! % of the run's read bandwidth, f16/bf16 speedup over f32) and
//! `img/decode_gbs_vs_l.svg`.

use super::cells::*;
use super::chart::*;
use super::select::*;
use crate::config::{Dtype, Kind};
use crate::results::{Row, RunFile};
use crate::units::fmt_bytes;
use plotters::prelude::*;
use std::collections::BTreeSet;
use std::fmt::Write as _;

const DECODE_DTYPES: [Dtype; 4] = Dtype::CACHES;

/// One decode table: a grouping and everything but L and the cache dtype.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DecodeGroup {
    grouping: String,
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    q_len: usize,
    head_dim: usize,
    v_dim: usize,
    mask: String,
    threads: usize,
}

impl DecodeGroup {
    fn of(r: &Row) -> DecodeGroup {
        let c = &r.config;
        DecodeGroup {
            grouping: r.grouping.clone(),
            batch: c.batch,
            q_heads: c.q_heads,
            kv_heads: c.kv_heads,
            q_len: c.q_len,
            head_dim: c.head_dim,
            v_dim: c.v_dim,
            mask: c.mask.name(),
            threads: c.threads,
        }
    }

    fn has(&self, r: &Row) -> bool {
        r.config.kind == Kind::Decode && DecodeGroup::of(r) == *self
    }

    /// "GQA (Hq = 32, Hkv = 8), 2 threads", with B, nq, d or the mask
    /// when they are not the sweep's.
    fn title(&self) -> String {
        let g = GROUPINGS
            .iter()
            .find(|(k, _)| *k == self.grouping)
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| self.grouping.to_uppercase());
        let mut extra = String::new();
        if self.batch != 1 {
            let _ = write!(extra, ", B = {}", self.batch);
        }
        if self.q_len != 1 {
            let _ = write!(extra, ", nq = {}", self.q_len);
        }
        if self.head_dim != 128 || self.v_dim != self.head_dim {
            let _ = write!(extra, ", d = {}", self.head_dim);
            if self.v_dim != self.head_dim {
                let _ = write!(extra, ", dv = {}", self.v_dim);
            }
        }
        if self.mask != "causal" {
            let _ = write!(extra, ", {}", mask_title(&self.mask));
        }
        format!(
            "{g} (Hq = {}, Hkv = {}{extra}), {} thread{}",
            self.q_heads,
            self.kv_heads,
            self.threads,
            plural(self.threads)
        )
    }
}

/// The decode tables in order: MHA, GQA, MQA (then others), more threads
/// first.
fn decode_groups(rows: &[&Row]) -> Vec<DecodeGroup> {
    let mut gs: Vec<DecodeGroup> = Vec::new();
    for r in rows {
        let g = DecodeGroup::of(r);
        if !gs.contains(&g) {
            gs.push(g);
        }
    }
    let order = |g: &str| GROUPINGS.iter().position(|(k, _)| *k == g).unwrap_or(GROUPINGS.len());
    gs.sort_by_key(|g| {
        (
            order(&g.grouping),
            g.q_heads,
            g.kv_heads,
            g.batch,
            g.q_len,
            g.head_dim,
            g.v_dim,
            g.mask.clone(),
            std::cmp::Reverse(g.threads),
        )
    });
    gs
}

/// Threads of the decode plot: the run's "all", else the most any decode
/// row used.
fn decode_plot_threads(run: &RunFile, rows: &[&Row]) -> usize {
    if rows.iter().any(|r| r.config.threads == run.peak.threads_all) {
        run.peak.threads_all
    } else {
        rows.iter().map(|r| r.config.threads).max().unwrap_or(1)
    }
}

fn us_cell(r: Option<&Row>) -> String {
    cell(r, true, |r| {
        r.us_per_step.map(|u| format!("{}{}", fmt_num(u), if r.samples <= 1 { "*" } else { "" }))
    })
}

fn gbs_cell(r: Option<&Row>) -> String {
    cell(r, false, |r| r.gbs.map(fmt_num))
}

fn pct_bw_cell(r: Option<&Row>) -> String {
    cell(r, false, |r| r.pct_bandwidth.map(|p| format!("{p:.0}%")))
}

/// f32 time / `half` time.
fn dtype_speedup_cell(f32_row: Option<&Row>, half: Option<&Row>) -> String {
    match (ok(f32_row), ok(half)) {
        (Some(a), Some(b)) => {
            format!("{:.2}×", a.median_ms.unwrap_or(f64::NAN) / b.median_ms.unwrap_or(f64::NAN))
        }
        _ => "–".into(),
    }
}

/// The "Decode" section of `docs/results.md` (nothing when the run has no
/// decode rows).
pub(super) fn decode_section(s: &mut String, run: &RunFile) {
    let rows = decode_rows(run);
    if rows.is_empty() {
        return;
    }
    let p = &run.peak;
    let l3 = run
        .machine
        .caches
        .iter()
        .filter(|c| c.kind != "Instruction")
        .max_by_key(|c| c.level)
        .map(|c| (c.level, c.size_bytes));
    let _ = writeln!(s, "## Decode (KV cache)\n");
    let _ = writeln!(
        s,
        "- **Problem**: one decode step, `attn_flash::decode` (split-KV: per K/V head at most \
         {} chunks of at least {} positions, fixed-order LSE merge): B = 1, Hq = 32 query heads, one new query (nq = 1; \
         causal, so it sees the whole cache), d = dv = 128, against a KV cache of L positions \
         stored as f32, f16, bf16 or q8_0 (ggml's blocks of 32 int8 values with an f16 \
         scale, quantised on append); queries, outputs, the LSE and all arithmetic are f32. MHA \
         has Hkv = 32, GQA Hkv = 8, MQA Hkv = 1. Cache values are seeded uniform on (−√3, √3) \
         (unit variance), queries standard-normal.",
        attnlab::flash::decode::chunk_limits().1,
        attnlab::flash::decode::chunk_limits().0
    );
    let _ = writeln!(
        s,
        "- **What is timed**: the decode call alone, on a cache filled beforehand (partials \
         and merge buffers allocated inside, output and LSE written), timed like the prefill \
         rows (criterion for short steps, direct otherwise; `*` marks a single timed call); \
         **µs** is the median time of one step. Consecutive steps read the same cache, so \
         one that fits in the last-level cache{} is read from there rather than from DRAM.",
        l3.map(|(lvl, b)| format!(" (L{lvl}, {})", fmt_bytes(b as f64))).unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "- **GB/s** = bytes of K and V one step reads, B·Hkv·L·(d + dv)·(4 for f32, 2 for \
         f16/bf16, 34/32 for q8_0), over the time; queries, outputs and partials are not \
         counted. **K+V** is that size for an f32 cache (half of it for f16/bf16, 0.27× for \
         q8_0). **% bw** divides by the read \
         bandwidth measured in this run for the same thread count ({} GB/s on 1 thread, {} \
         GB/s on {} threads; {}): above 100% means the cache was served from the CPU caches.",
        fmt_num(p.read_gbs_1t),
        fmt_num(p.read_gbs_all),
        p.threads_all,
        p.read_method
    );
    let _ = writeln!(
        s,
        "- **f16 ×**, **bf16 ×**, **q8_0 ×** = f32 time / f16 (bf16, q8_0) time: at most \
         about 2× (3.8× for q8_0) for a step bound by memory bandwidth, less where the \
         widening to f32 costs.\n"
    );
    let _ = writeln!(s, "![decode GB/s vs L](img/decode_gbs_vs_l.svg)\n");

    for g in decode_groups(&rows) {
        let sel: Vec<&Row> = rows.iter().copied().filter(|r| g.has(r)).collect();
        let dts: Vec<Dtype> = DECODE_DTYPES
            .iter()
            .copied()
            .filter(|d| sel.iter().any(|r| r.config.dtype == *d))
            .collect();
        let ls: BTreeSet<usize> = sel.iter().map(|r| r.config.kv_len).collect();
        let find_dl = |d: Dtype, l: usize| -> Option<&Row> {
            sel.iter().copied().find(|r| r.config.dtype == d && r.config.kv_len == l)
        };
        let halves: Vec<Dtype> = if dts.contains(&Dtype::F32) {
            dts.iter().copied().filter(|d| *d != Dtype::F32).collect()
        } else {
            Vec::new()
        };
        let _ = writeln!(s, "### Decode, {}\n", g.title());
        let mut head = vec!["L".to_string(), "K+V (f32)".to_string()];
        head.extend(dts.iter().map(|d| format!("{} µs", d.name())));
        head.extend(halves.iter().map(|d| format!("{} ×", d.name())));
        head.extend(dts.iter().map(|d| format!("{} GB/s", d.name())));
        head.extend(dts.iter().map(|d| format!("{} % bw", d.name())));
        let mut body = Vec::new();
        for &l in &ls {
            let f32_bytes = (g.batch * g.kv_heads * l * (g.head_dim + g.v_dim) * 4) as f64;
            let mut row = vec![n_label(l), fmt_bytes(f32_bytes)];
            row.extend(dts.iter().map(|&d| us_cell(find_dl(d, l))));
            row.extend(
                halves.iter().map(|&d| dtype_speedup_cell(find_dl(Dtype::F32, l), find_dl(d, l))),
            );
            row.extend(dts.iter().map(|&d| gbs_cell(find_dl(d, l))));
            row.extend(dts.iter().map(|&d| pct_bw_cell(find_dl(d, l))));
            body.push(row);
        }
        table(s, &head, &body);
    }
    storage_error_table(s, &rows);
}

/// What storing the cache as f16, bf16 or q8_0 costs in accuracy: per
/// grouping and L (at the most threads measured), the max |O − O_f64|
/// of the sampled rows against the f32 values before storing, next to the
/// f32 cache's (the kernel's own error).
fn storage_error_table(s: &mut String, rows: &[&Row]) {
    let threads = rows.iter().map(|r| r.config.threads).max().unwrap_or(1);
    let sel: Vec<&Row> = rows.iter().copied().filter(|r| r.config.threads == threads).collect();
    let dts: Vec<Dtype> = DECODE_DTYPES
        .iter()
        .copied()
        .filter(|d| sel.iter().any(|r| r.config.dtype == *d))
        .collect();
    if !dts.iter().any(|d| *d != Dtype::F32) {
        return;
    }
    let _ = writeln!(s, "### Decode, error of the stored cache\n");
    let _ = writeln!(
        s,
        "Max |O − O_f64| over the sampled rows, {threads} thread{}: for f32 the kernel's \
         error; for the others the oracle reads the f32 values the cache was filled with, \
         so the figure is what rounding (f16, bf16) or quantising (q8_0) K and V costs, the \
         kernel's own error included.\n",
        plural(threads)
    );
    let mut keys: Vec<(DecodeGroup, usize)> = Vec::new();
    for g in decode_groups(&sel) {
        let mut ls: Vec<usize> = sel.iter().filter(|r| g.has(r)).map(|r| r.config.kv_len).collect();
        ls.sort_unstable();
        ls.dedup();
        keys.extend(ls.into_iter().map(|l| (g.clone(), l)));
    }
    let mut head = vec!["grouping".to_string(), "L".to_string()];
    head.extend(dts.iter().map(|d| d.name().to_string()));
    let body: Vec<Vec<String>> = keys
        .iter()
        .map(|(g, l)| {
            let mut row = vec![g.grouping.to_uppercase(), n_label(*l)];
            row.extend(dts.iter().map(|&d| {
                let r = sel
                    .iter()
                    .copied()
                    .find(|r| g.has(r) && r.config.kv_len == *l && r.config.dtype == d);
                let e = |r: &Row| if d == Dtype::F32 { r.max_abs_err } else { r.storage_err };
                cell(r, false, |r| e(r).map(|e| format!("{e:.1e}")))
            }));
            row
        })
        .collect();
    table(s, &head, &body);
}

fn dtype_color(d: Dtype) -> RGBColor {
    match d {
        Dtype::F32 => FLASH_FULL,
        Dtype::F16 => FLASH_CAUSAL,
        Dtype::Bf16 => NAIVE_CAUSAL,
        Dtype::Q8_0 => NAIVE_FULL,
    }
}

/// `img/decode_gbs_vs_l.svg`: GB/s of K+V against L (log x), one panel
/// per grouping, one line per cache dtype, at all threads, with the read
/// bandwidth measured in the run for that thread count.
pub fn plot_decode_gbs_vs_l(run: &RunFile) -> PlotResult {
    let rows = decode_rows(run);
    let threads = decode_plot_threads(run, &rows);
    let groups: Vec<DecodeGroup> =
        decode_groups(&rows).into_iter().filter(|g| g.threads == threads).collect();
    let series_of = |g: &DecodeGroup| -> Vec<Series> {
        DECODE_DTYPES
            .iter()
            .map(|&d| {
                let mut pts: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| g.has(r) && r.config.dtype == d)
                    .filter_map(|r| {
                        ok(Some(r)).and_then(|r| r.gbs).map(|y| (r.config.kv_len as f64, y))
                    })
                    .filter(|p| p.1 > 0.0 && p.1.is_finite())
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    label: format!("{} cache", d.name()),
                    color: dtype_color(d),
                    dashed: false,
                    hollow: d == Dtype::Bf16,
                    points: pts,
                }
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let groups: Vec<DecodeGroup> =
        groups.into_iter().filter(|g| !series_of(g).is_empty()).collect();
    if groups.is_empty() {
        return Err("no measured decode rows".into());
    }
    let bw = run.peak.read_gbs(threads);
    // Room above the bandwidth line for the legend, the same in every panel.
    let top = rows
        .iter()
        .filter(|r| r.config.threads == threads)
        .filter_map(|r| ok(Some(r)).and_then(|r| r.gbs))
        .fold(bw, f64::max)
        * 1.6;
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (460 * groups.len() as u32, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(e2s)?;
        let areas = root.split_evenly((1, groups.len()));
        for (area, g) in areas.iter().zip(&groups) {
            panel(
                area,
                &format!("decode GB/s of K+V, {}", g.title()),
                "L (cached positions)",
                "GB/s",
                &series_of(g),
                false,
                &|y| format!("{}", y.round() as i64),
                Some((bw, format!("read bandwidth {} GB/s (measured)", fmt_num(bw)))),
                SeriesLabelPosition::UpperRight,
                Some(top),
            )?;
        }
        root.present().map_err(e2s)?;
    }
    Ok(svg)
}
