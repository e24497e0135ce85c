//! `results/` -> `docs/results.md`, `docs/headline.md` and the plots in
//! `docs/img/`, and `attn report` (which regenerates them from a results
//! file without re-running anything).
//!
//! Everything here is a pure function of one [`RunFile`]: the tables are
//! per head grouping and mask, for the run's main combination (d = 64,
//! f32, all threads, when present) with every N, followed by the other
//! combinations of that grouping and mask; the plots are SVG (plotters,
//! SVG backend): time vs N and memory vs N on log-log axes with O(N²) and
//! O(N) references, and GFLOP/s vs N per grouping.
//!
//! Decode rows (schema 2) get their own section when the run has any:
//! tables per grouping and thread count (L rows × cache dtype columns: µs
//! per step, GB/s of K+V, % of the run's read bandwidth, f16/bf16 speedup
//! over f32) and `img/decode_gbs_vs_l.svg`. Everything else is computed
//! from the prefill rows only, so a prefill-only run renders as before.

use crate::machine::fmt_bytes;
use crate::sweep::{Config, Dtype, Kind, Row, RunFile, Status, fmt_duration, workspace_root};
use plotters::coord::ranged1d::Ranged;
use plotters::prelude::*;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `attn report` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Results file (default: `results/latest.json` of the workspace).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output folder for `results.md`, `headline.md` and `img/`
    /// (default: `docs/` of the workspace).
    #[arg(long)]
    pub docs: Option<PathBuf>,
}

/// Entry point of `attn report`.
pub fn report_main(args: &ReportArgs) -> ExitCode {
    let root = workspace_root();
    let input = args.input.clone().unwrap_or_else(|| root.join("results/latest.json"));
    let docs = args.docs.clone().unwrap_or_else(|| root.join("docs"));
    let run = match load(&input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("attn report: {e}");
            return ExitCode::FAILURE;
        }
    };
    match generate(&run, &docs, &source_name(&input, &root)) {
        Ok(paths) => {
            for p in paths {
                println!("wrote {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("attn report: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `path` relative to `root` when inside it, for the docs' "generated from".
pub fn source_name(path: &Path, root: &Path) -> String {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (p, r) = (canon(path), canon(root));
    p.strip_prefix(&r).map(|x| x.display().to_string()).unwrap_or_else(|_| p.display().to_string())
}

/// Reads a results file (schema 1 or 2, see [`crate::sweep::SCHEMA`]).
pub fn load(path: &Path) -> Result<RunFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let run: RunFile = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a results file: {e}", path.display()))?;
    if run.schema > crate::sweep::SCHEMA {
        return Err(format!(
            "{}: schema {} is newer than this attn's ({}): rebuild attn",
            path.display(),
            run.schema,
            crate::sweep::SCHEMA
        ));
    }
    Ok(run)
}

/// The run with its prefill rows only (what every part but the decode
/// section is made of).
fn prefill_only(run: &RunFile) -> RunFile {
    let rows = run.rows.iter().filter(|r| r.config.kind == Kind::Prefill).cloned().collect();
    RunFile { rows, ..run.clone() }
}

fn decode_rows(run: &RunFile) -> Vec<&Row> {
    run.rows.iter().filter(|r| r.config.kind == Kind::Decode).collect()
}

/// Writes `results.md`, `headline.md` and `img/{time,memory,gflops}_vs_n.svg`
/// (and `img/decode_gbs_vs_l.svg` when the run has decode rows) into
/// `docs`; `source` names the results file in the text.
pub fn generate(run: &RunFile, docs: &Path, source: &str) -> std::io::Result<Vec<PathBuf>> {
    let img = docs.join("img");
    std::fs::create_dir_all(&img)?;
    let mut written = Vec::new();
    let mut plots = vec![
        ("time_vs_n.svg", plot_time_vs_n(run)),
        ("memory_vs_n.svg", plot_memory_vs_n(run)),
        ("gflops_vs_n.svg", plot_gflops_vs_n(run)),
    ];
    if !decode_rows(run).is_empty() {
        plots.push(("decode_gbs_vs_l.svg", plot_decode_gbs_vs_l(run)));
    }
    for (name, svg) in plots {
        let path = img.join(name);
        match svg {
            Ok(s) => {
                std::fs::write(&path, s)?;
                written.push(path);
            }
            Err(e) => eprintln!("report: no {name}: {e}"),
        }
    }
    let md = docs.join("results.md");
    std::fs::write(&md, render_results_md(run, source))?;
    written.push(md);
    let head = docs.join("headline.md");
    std::fs::write(&head, render_headline_md(run, source))?;
    written.push(head);
    Ok(written)
}

// ------------------------------------------------------------ rows ----

/// The combination the main tables and plots use: d, dtype, threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Main {
    /// Head dimension.
    pub d: usize,
    /// Storage type.
    pub dtype: Dtype,
    /// Threads.
    pub threads: usize,
}

impl Main {
    /// d = 64 (else the most frequent d), f32, all threads (else the most
    /// threads any row used), over the prefill rows.
    pub fn of(run: &RunFile) -> Main {
        let pre = prefill_only(run);
        let rows = &pre.rows;
        let ds: Vec<usize> = rows.iter().map(|r| r.config.head_dim).collect();
        let d = if ds.contains(&64) { 64 } else { most_frequent(&ds).unwrap_or(64) };
        let threads = if rows.iter().any(|r| r.config.threads == run.peak.threads_all) {
            run.peak.threads_all
        } else {
            rows.iter().map(|r| r.config.threads).max().unwrap_or(1)
        };
        Main { d, dtype: Dtype::F32, threads }
    }

    /// Whether `c` is in the main combination (prefill, B = 1).
    pub fn has(&self, c: &Config) -> bool {
        c.kind == Kind::Prefill
            && c.head_dim == self.d
            && c.v_dim == c.head_dim
            && c.dtype == self.dtype
            && c.threads == self.threads
            && c.q_len == c.kv_len
            && c.batch == 1
    }

    /// "d = 64, f32, 2 threads".
    pub fn describe(&self) -> String {
        format!(
            "d = {}, {}, {} thread{}",
            self.d,
            self.dtype.name(),
            self.threads,
            plural(self.threads)
        )
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn most_frequent(v: &[usize]) -> Option<usize> {
    let set: BTreeSet<usize> = v.iter().copied().collect();
    set.into_iter().max_by_key(|x| v.iter().filter(|y| *y == x).count())
}

const GROUPINGS: [(&str, &str); 3] = [("mha", "MHA"), ("gqa", "GQA"), ("mqa", "MQA")];

/// Kernels present, naive and flash first.
fn kernels(run: &RunFile) -> Vec<String> {
    let mut ks: Vec<String> = Vec::new();
    for k in ["naive", "flash"] {
        if run.rows.iter().any(|r| r.config.kernel == k) {
            ks.push(k.into());
        }
    }
    for r in &run.rows {
        if !ks.contains(&r.config.kernel) {
            ks.push(r.config.kernel.clone());
        }
    }
    ks
}

/// Masks present, full and causal first.
fn masks(run: &RunFile) -> Vec<String> {
    let mut ms: Vec<String> = Vec::new();
    for m in ["full", "causal"] {
        if run.rows.iter().any(|r| r.config.mask.name() == m) {
            ms.push(m.into());
        }
    }
    for r in &run.rows {
        if !ms.contains(&r.config.mask.name()) {
            ms.push(r.config.mask.name());
        }
    }
    ms
}

fn heads_of(rows: &[&Row]) -> String {
    rows.first()
        .map(|r| format!("Hq = {}, Hkv = {}", r.config.q_heads, r.config.kv_heads))
        .unwrap_or_default()
}

fn find<'a>(rows: &[&'a Row], kernel: &str, n: usize) -> Option<&'a Row> {
    rows.iter().copied().find(|r| r.config.kernel == kernel && r.config.q_len == n)
}

fn ok(r: Option<&Row>) -> Option<&Row> {
    r.filter(|r| r.status == Status::Ok && r.median_ms.is_some())
}

// ----------------------------------------------------------- cells ----

/// "12.3", "1.23", "0.123", "1234".
pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        "–".into()
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// "12.3 ms", "4.56 s".
fn fmt_time(ms: f64) -> String {
    if ms >= 10_000.0 { format!("{} s", fmt_num(ms / 1e3)) } else { format!("{} ms", fmt_num(ms)) }
}

/// GiB with one decimal, as in "needs 32.0 GiB".
fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// The cell of a row that was not measured: "needs 32.0 GiB" or
/// "error¹" in a primary column (time, extra memory), "–" elsewhere and
/// when the row is absent.
fn not_ok(r: Option<&Row>, primary: bool) -> Option<String> {
    match r {
        None => Some("–".into()),
        Some(r) if r.status == Status::Skipped && primary => {
            Some(format!("needs {}", gib(r.needs_bytes)))
        }
        Some(r) if r.status == Status::Error && primary => Some("error¹".into()),
        Some(r) if r.status != Status::Ok => Some("–".into()),
        Some(_) => None,
    }
}

fn cell(r: Option<&Row>, primary: bool, f: impl Fn(&Row) -> Option<String>) -> String {
    not_ok(r, primary).unwrap_or_else(|| r.and_then(f).unwrap_or_else(|| "–".into()))
}

fn ms_cell(r: Option<&Row>) -> String {
    cell(r, true, |r| {
        r.median_ms.map(|m| format!("{}{}", fmt_num(m), if r.samples <= 1 { "*" } else { "" }))
    })
}

fn gflops_cell(r: Option<&Row>) -> String {
    cell(r, false, |r| r.gflops.map(fmt_num))
}

fn pct_cell(r: Option<&Row>) -> String {
    cell(r, false, |r| r.pct_peak.map(|p| format!("{p:.0}%")))
}

fn bytes_cell(r: Option<&Row>, primary: bool, f: impl Fn(&Row) -> Option<u64>) -> String {
    cell(r, primary, |r| f(r).map(|b| fmt_bytes(b as f64)))
}

fn err_cell(r: Option<&Row>) -> String {
    cell(r, false, |r| r.max_abs_err.map(|e| format!("{e:.1e}")))
}

fn speedup_cell(naive: Option<&Row>, flash: Option<&Row>) -> String {
    match (ok(naive), ok(flash)) {
        (Some(a), Some(b)) => {
            format!("{:.2}×", a.median_ms.unwrap_or(f64::NAN) / b.median_ms.unwrap_or(f64::NAN))
        }
        _ => "–".into(),
    }
}

// -------------------------------------------------------- markdown ----

fn table(out: &mut String, head: &[String], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let align: Vec<&str> = head.iter().map(|_| "---:").collect();
    let _ = writeln!(out, "|{}|", align.join("|"));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

fn n_label(n: usize) -> String {
    if n >= 1024 && n.is_multiple_of(1024) { format!("{}k", n / 1024) } else { n.to_string() }
}

/// `docs/results.md`.
pub fn render_results_md(all: &RunFile, source: &str) -> String {
    let pre = prefill_only(all);
    let run = &pre;
    let mut s = String::new();
    let main = Main::of(run);
    let ks = kernels(run);
    let m = &run.machine;
    let p = &run.peak;
    let _ = writeln!(s, "# Results: the O(N²) kernel against the tiled kernel\n");
    let _ = writeln!(
        s,
        "Generated by `cargo bench -p harness` from `{source}` (profile `{}`{}, started {}, \
         took {}); regenerate the page from that file with `attn report`. Do not edit by hand: \
         every number below comes from that one run, on the machine it names.\n",
        run.profile,
        run.filter.as_ref().map(|f| format!(", filter `{f}`")).unwrap_or_default(),
        run.started_utc,
        fmt_duration(run.duration_s)
    );
    let _ = writeln!(s, "## Machine (measured in this run)\n");
    let yes = |b: bool| if b { "yes" } else { "**no**" };
    let facts: Vec<Vec<String>> = vec![
        vec!["CPU".into(), format!("{}, {} logical CPUs", m.cpu_model, m.logical_cpus)],
        vec!["caches".into(), m.cache_summary()],
        vec!["memory".into(), fmt_bytes(m.mem_total_bytes as f64)],
        vec![
            "ISA compiled in".into(),
            format!(
                "avx512f {}, fma {}, avx2 {}",
                yes(m.compiled_avx512f),
                yes(m.compiled_fma),
                yes(m.compiled_avx2)
            ),
        ],
        vec!["CPU features".into(), m.cpu_features.join(" ")],
        vec![
            "FMA peak".into(),
            format!(
                "{} GFLOP/s (1 thread), {} GFLOP/s ({} threads); {}",
                fmt_num(p.fma_gflops_1t),
                fmt_num(p.fma_gflops_all),
                p.threads_all,
                p.fma_method
            ),
        ],
        vec![
            "read bandwidth".into(),
            format!(
                "{} GB/s (1 thread), {} GB/s ({} threads); {}",
                fmt_num(p.read_gbs_1t),
                fmt_num(p.read_gbs_all),
                p.threads_all,
                p.read_method
            ),
        ],
        vec!["rustc".into(), m.rustc.clone()],
        vec!["commit".into(), format!("`{}`", m.git_commit)],
        vec!["OS".into(), m.os.clone()],
        vec!["date".into(), m.date_utc.clone()],
    ];
    let _ = writeln!(s, "| | |\n|---|---|");
    for f in facts {
        let _ = writeln!(s, "| {} | {} |", f[0], f[1]);
    }
    s.push('\n');

    let _ = writeln!(s, "## How to read the tables\n");
    let _ = writeln!(
        s,
        "- **Problem**: `O = softmax(Q·Kᵀ/√d + mask)·V`, prefill (Nq = Nk = N), B = 1, Hq = 8 \
         query heads; MHA has Hkv = 8, GQA Hkv = 2, MQA Hkv = 1. Inputs are seeded \
         standard-normal (seed {:#x}), `[B, H, N, d]`, the per-row LSE is computed too. Causal \
         is bottom-right aligned.",
        run.seed
    );
    let _ = writeln!(
        s,
        "- **GFLOP/s** = 4·B·Hq·Nq·Nk·d / time, halved for causal with Nq = Nk (the useful \
         work). **% peak** divides by the FMA peak of this run for the same thread count."
    );
    let _ = writeln!(
        s,
        "- **time** is the median of one call in ms; `*` marks a single timed call. {}",
        run.timing
    );
    let _ = writeln!(
        s,
        "- **extra** = the counting allocator's peak during the call minus what was allocated \
         before it (inputs and outputs): the kernel's scratch. **workspace** is what the \
         kernel's `workspace_bytes` promises. **RSS +** = rise of the process's VmHWM (reset \
         through `/proc/self/clear_refs` just before the call) over its RSS before the call, in \
         a fresh process per configuration."
    );
    let _ = writeln!(
        s,
        "- **needs X GiB**: not run, because inputs + outputs + `workspace_bytes` exceed the \
         memory budget of the run ({}; default half of physical memory) or the memory \
         available at that moment: this is where the O(N²) kernel stops.",
        gib(run.mem_budget_bytes)
    );
    let _ = writeln!(
        s,
        "- **err** = max |O − O_f64| over {} sampled query rows (first and last head), \
         against an f64 evaluation of the same inputs.",
        run.rows.iter().map(|r| r.err_rows).max().unwrap_or(0)
    );
    let _ = writeln!(
        s,
        "- **speedup** = naive time / flash time; **–** = not in this run's grid. Main tables: \
         {}. The machine is shared and noisy: treat differences under ~10-15% as noise.\n",
        main.describe()
    );

    let _ = writeln!(s, "## Grid of this run\n");
    for g in &all.grid {
        let _ = writeln!(s, "- {g}");
    }
    let _ = writeln!(
        s,
        "\n{} configurations: {} measured, {} skipped for memory, {} failed.\n",
        all.rows.len(),
        all.rows.iter().filter(|r| r.status == Status::Ok).count(),
        all.rows.iter().filter(|r| r.status == Status::Skipped).count(),
        all.rows.iter().filter(|r| r.status == Status::Error).count()
    );

    let _ = writeln!(s, "## Headline\n");
    s += &headline_table(run);
    let _ = writeln!(s, "## Plots\n");
    let _ = writeln!(
        s,
        "![time vs N](img/time_vs_n.svg)\n\n![memory vs N](img/memory_vs_n.svg)\n\n\
         ![GFLOP/s vs N](img/gflops_vs_n.svg)\n"
    );

    for (g, gname) in GROUPINGS {
        let grows: Vec<&Row> = run.rows.iter().filter(|r| r.grouping == g).collect();
        if grows.is_empty() {
            continue;
        }
        let _ = writeln!(s, "## {gname} ({})\n", heads_of(&grows));
        for mask in masks(run) {
            let mrows: Vec<&Row> =
                grows.iter().copied().filter(|r| r.config.mask.name() == mask).collect();
            if mrows.is_empty() {
                continue;
            }
            let _ = writeln!(s, "### {gname}, {}\n", mask_title(&mask));
            let main_rows: Vec<&Row> =
                mrows.iter().copied().filter(|r| main.has(&r.config)).collect();
            if !main_rows.is_empty() {
                let _ = writeln!(s, "{}:\n", main.describe());
                main_tables(&mut s, &main_rows, &ks);
            }
            let other: Vec<&Row> = mrows.iter().copied().filter(|r| !main.has(&r.config)).collect();
            if !other.is_empty() {
                let _ = writeln!(s, "Other head dims, thread counts and storage types:\n");
                other_table(&mut s, &other, &ks);
            }
        }
    }

    decode_section(&mut s, all);

    let failed: Vec<&Row> = all.rows.iter().filter(|r| r.status == Status::Error).collect();
    if !failed.is_empty() {
        let _ = writeln!(s, "## ¹ Configurations that failed\n");
        let mut notes: Vec<(String, Vec<String>)> = Vec::new();
        for r in failed {
            match notes.iter_mut().find(|(n, _)| *n == r.note) {
                Some((_, ids)) => ids.push(r.id.clone()),
                None => notes.push((r.note.clone(), vec![r.id.clone()])),
            }
        }
        for (note, ids) in notes {
            let shown: Vec<String> = ids.iter().take(4).map(|i| format!("`{i}`")).collect();
            let more =
                if ids.len() > 4 { format!(" and {} more", ids.len() - 4) } else { "".into() };
            let _ = writeln!(
                s,
                "- {} configuration(s), e.g. {}{more}: {note}",
                ids.len(),
                shown.join(", ")
            );
        }
        s.push('\n');
    }
    s
}

fn mask_title(m: &str) -> String {
    match m {
        "full" => "no mask".into(),
        "causal" => "causal".into(),
        w => format!("window {w}"),
    }
}

fn main_tables(s: &mut String, rows: &[&Row], ks: &[String]) {
    let ns: BTreeSet<usize> = rows.iter().map(|r| r.config.q_len).collect();
    let two = ks.iter().any(|k| k == "naive") && ks.iter().any(|k| k == "flash");
    let mut head = vec!["N".to_string()];
    for k in ks {
        head.push(format!("{k} ms"));
    }
    if two {
        head.push("speedup".into());
    }
    for k in ks {
        head.push(format!("{k} GFLOP/s"));
    }
    for k in ks {
        head.push(format!("{k} % peak"));
    }
    let mut body = Vec::new();
    for &n in &ns {
        let mut row = vec![n_label(n)];
        for k in ks {
            row.push(ms_cell(find(rows, k, n)));
        }
        if two {
            row.push(speedup_cell(find(rows, "naive", n), find(rows, "flash", n)));
        }
        for k in ks {
            row.push(gflops_cell(find(rows, k, n)));
        }
        for k in ks {
            row.push(pct_cell(find(rows, k, n)));
        }
        body.push(row);
    }
    table(s, &head, &body);

    let mut head = vec!["N".to_string()];
    for k in ks {
        head.push(format!("{k} extra"));
        head.push(format!("{k} workspace"));
        head.push(format!("{k} RSS +"));
    }
    for k in ks {
        head.push(format!("{k} err"));
    }
    let mut body = Vec::new();
    for &n in &ns {
        let mut row = vec![n_label(n)];
        for k in ks {
            let r = find(rows, k, n);
            row.push(bytes_cell(r, true, |r| r.extra_bytes));
            // workspace_bytes is known without running
            let ws = r
                .filter(|r| r.status == Status::Skipped)
                .map(|r| fmt_bytes(r.workspace_bytes as f64));
            row.push(ws.unwrap_or_else(|| bytes_cell(r, false, |r| Some(r.workspace_bytes))));
            row.push(bytes_cell(r, false, |r| r.rss_increase_bytes));
        }
        for k in ks {
            row.push(err_cell(find(rows, k, n)));
        }
        body.push(row);
    }
    table(s, &head, &body);
}

fn other_table(s: &mut String, rows: &[&Row], ks: &[String]) {
    let mut keys: Vec<(usize, usize, usize, Dtype)> = Vec::new();
    for r in rows {
        let c = &r.config;
        let key = (c.q_len, c.head_dim, c.threads, c.dtype);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.sort_by_key(|&(n, d, t, dt)| (n, d, dt.size() != 4, dt.name(), t));
    let two = ks.iter().any(|k| k == "naive") && ks.iter().any(|k| k == "flash");
    let mut head: Vec<String> =
        ["N", "d", "dtype", "threads"].iter().map(|x| x.to_string()).collect();
    for k in ks {
        head.push(format!("{k} ms"));
    }
    if two {
        head.push("speedup".into());
    }
    for k in ks {
        head.push(format!("{k} % peak"));
    }
    for k in ks {
        head.push(format!("{k} extra"));
    }
    for k in ks {
        head.push(format!("{k} err"));
    }
    let mut body = Vec::new();
    for (n, d, t, dt) in keys {
        let sel: Vec<&Row> = rows
            .iter()
            .copied()
            .filter(|r| {
                let c = &r.config;
                c.q_len == n && c.head_dim == d && c.threads == t && c.dtype == dt
            })
            .collect();
        let mut row = vec![n_label(n), d.to_string(), dt.name().into(), t.to_string()];
        for k in ks {
            row.push(ms_cell(find(&sel, k, n)));
        }
        if two {
            row.push(speedup_cell(find(&sel, "naive", n), find(&sel, "flash", n)));
        }
        for k in ks {
            row.push(pct_cell(find(&sel, k, n)));
        }
        for k in ks {
            row.push(bytes_cell(find(&sel, k, n), true, |r| r.extra_bytes));
        }
        for k in ks {
            row.push(err_cell(find(&sel, k, n)));
        }
        body.push(row);
    }
    table(s, &head, &body);
}

/// The few rows of the headline: for the main combination, MHA without
/// mask and causal at N = 4096 (or the nearest N below), MHA causal at
/// the longest N the naive kernel ran, and the longest N the flash kernel
/// ran (with what naive would have needed there).
pub fn headline_rows(run: &RunFile) -> Vec<(String, String, usize)> {
    let pre = prefill_only(run);
    let run = &pre;
    let main = Main::of(run);
    let in_main = |r: &&Row| main.has(&r.config);
    let mut picks: Vec<(String, String, usize)> = Vec::new();
    let mut push = |g: &str, m: &str, n: usize| {
        let key = (g.to_string(), m.to_string(), n);
        if !picks.contains(&key) {
            picks.push(key);
        }
    };
    let ns_of = |g: &str, m: &str, kernel: &str, okonly: bool| -> Vec<usize> {
        run.rows
            .iter()
            .filter(in_main)
            .filter(|r| r.grouping == g && r.config.mask.name() == m && r.config.kernel == kernel)
            .filter(|r| !okonly || r.status == Status::Ok)
            .map(|r| r.config.q_len)
            .collect()
    };
    for m in ["full", "causal"] {
        let ns = ns_of("mha", m, "flash", false);
        if let Some(n) = ns.iter().copied().filter(|&n| n <= 4096).max() {
            push("mha", m, n);
        }
    }
    if let Some(n) = ns_of("mha", "causal", "naive", true).into_iter().max() {
        push("mha", "causal", n);
    }
    let mut longest: Option<(usize, String, String)> = None;
    for r in run.rows.iter().filter(in_main) {
        if r.config.kernel == "flash" && r.status == Status::Ok {
            let n = r.config.q_len;
            if longest.as_ref().is_none_or(|(ln, _, _)| n > *ln) {
                longest = Some((n, r.grouping.clone(), r.config.mask.name()));
            }
        }
    }
    if let Some((n, g, m)) = longest {
        push(&g, &m, n);
    }
    picks
}

fn headline_table(run: &RunFile) -> String {
    let pre = prefill_only(run);
    let run = &pre;
    let main = Main::of(run);
    let mut s = String::new();
    let mut body = Vec::new();
    for (g, m, n) in headline_rows(run) {
        let sel: Vec<&Row> = run
            .rows
            .iter()
            .filter(|r| main.has(&r.config) && r.grouping == g && r.config.mask.name() == m)
            .collect();
        let (nv, fl) = (find(&sel, "naive", n), find(&sel, "flash", n));
        let time = |r: Option<&Row>| match ok(r) {
            Some(r) => format!(
                "{} ({} GFLOP/s, {:.0}% of peak)",
                fmt_time(r.median_ms.unwrap_or(f64::NAN)),
                fmt_num(r.gflops.unwrap_or(f64::NAN)),
                r.pct_peak.unwrap_or(f64::NAN)
            ),
            None => not_ok(r, true).unwrap_or_else(|| "–".into()),
        };
        let mem = |r: Option<&Row>| match ok(r) {
            Some(r) => r.extra_bytes.map(|b| fmt_bytes(b as f64)).unwrap_or_else(|| "–".into()),
            None => not_ok(r, true).unwrap_or_else(|| "–".into()),
        };
        body.push(vec![
            format!("{} {} N={}", g.to_uppercase(), m, n_label(n)),
            time(nv),
            time(fl),
            speedup_cell(nv, fl),
            mem(nv),
            mem(fl),
        ]);
    }
    let head: Vec<String> = [
        "configuration",
        "naive (O(N²) memory)",
        "flash (tiled)",
        "speedup",
        "naive extra memory",
        "flash extra memory",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    let _ = writeln!(
        s,
        "{}, {} FMA peak {} GFLOP/s, on {} ({} logical CPUs), {}:\n",
        main.describe(),
        if main.threads == 1 { "1-thread" } else { "all-threads" },
        fmt_num(run.peak.fma_gflops(main.threads)),
        run.machine.cpu_model,
        run.machine.logical_cpus,
        run.machine.date_utc.split(' ').next().unwrap_or("")
    );
    table(&mut s, &head, &body);
    s
}

/// `docs/headline.md`: the headline table and one plot, with links that
/// work from the repository root (for the README).
pub fn render_headline_md(run: &RunFile, source: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<!-- generated by `cargo bench -p harness` / `attn report` from {source}; do not edit -->\n"
    );
    s += &headline_table(run);
    let _ = writeln!(
        s,
        "![time vs N, log-log](docs/img/time_vs_n.svg)\n\n\
         All tables, memory and GFLOP/s plots, the machine and the method: \
         [docs/results.md](docs/results.md) (run of {}, commit `{}`).",
        run.started_utc,
        short_commit(&run.machine.git_commit)
    );
    s
}

fn short_commit(c: &str) -> String {
    let dirty = c.ends_with("-dirty");
    let h: String = c.chars().take(10).collect();
    if dirty { format!("{h}-dirty") } else { h }
}

// ----------------------------------------------------------- plots ----

type PlotResult = Result<String, String>;

fn e2s<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

struct Series {
    label: String,
    color: RGBColor,
    dashed: bool,
    hollow: bool,
    points: Vec<(f64, f64)>,
}

const NAIVE_FULL: RGBColor = RGBColor(200, 40, 40);
const NAIVE_CAUSAL: RGBColor = RGBColor(240, 140, 40);
const FLASH_FULL: RGBColor = RGBColor(30, 90, 200);
const FLASH_CAUSAL: RGBColor = RGBColor(20, 160, 120);
const GREY: RGBColor = RGBColor(120, 120, 120);

fn color_of(kernel: &str, mask: &str) -> RGBColor {
    match (kernel, mask) {
        ("naive", "full") => NAIVE_FULL,
        ("naive", _) => NAIVE_CAUSAL,
        ("flash", "full") => FLASH_FULL,
        ("flash", _) => FLASH_CAUSAL,
        _ => GREY,
    }
}

fn fmt_n_axis(x: f64) -> String {
    n_label(x.round() as usize)
}

fn fmt_axis(x: f64) -> String {
    if (1.0..1e6).contains(&x) {
        format!("{}", x.round() as u64)
    } else {
        let e = x.log10().round() as i32;
        if (x / 10f64.powi(e) - 1.0).abs() < 1e-6 { format!("1e{e}") } else { format!("{x:.1e}") }
    }
}

fn log_bounds(vals: impl Iterator<Item = f64>, pad: f64) -> Option<(f64, f64)> {
    let v: Vec<f64> = vals.filter(|x| x.is_finite() && *x > 0.0).collect();
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(0.0, f64::max);
    if v.is_empty() {
        None
    } else if hi / lo < 1.5 {
        Some((lo / 2.0, hi * 2.0))
    } else {
        Some((lo / pad, hi * pad))
    }
}

const N_AXIS: &str = "N (sequence length)";

/// Draws one panel: log x, log or linear y (from 0 to `y_top`, default
/// 1.25 times the largest value).
#[allow(clippy::too_many_arguments)]
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    y_log: bool,
    y_fmt: &dyn Fn(f64) -> String,
    hline: Option<(f64, String)>,
    legend: SeriesLabelPosition,
    y_top: Option<f64>,
) -> Result<(), String> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x0, x1) = log_bounds(xs, 1.25).ok_or("no points")?;
    let ys =
        series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain(hline.iter().map(|h| h.0));
    let (y0, y1) = log_bounds(ys, 2.0).ok_or("no points")?;
    // Label the x axis at the N values of the run (powers of two).
    let mut keys: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    keys.sort_by(|a, b| a.total_cmp(b));
    keys.dedup();
    while keys.len() > 9 {
        keys = keys.iter().copied().step_by(2).collect();
    }
    let xr = || (x0..x1).log_scale().with_key_points(keys.clone());
    let mut b = ChartBuilder::on(area);
    b.caption(title, ("sans-serif", 17)).margin(12).x_label_area_size(40).y_label_area_size(70);
    if y_log {
        let mut chart = b.build_cartesian_2d(xr(), (y0..y1).log_scale()).map_err(e2s)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|x| fmt_n_axis(*x))
            .y_label_formatter(&|y| y_fmt(*y))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e2s)?;
        draw_all(&mut chart, series, &hline, (x0, x1), legend)
    } else {
        let mut chart = b.build_cartesian_2d(xr(), 0f64..y_top.unwrap_or(y1 / 1.6)).map_err(e2s)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|x| fmt_n_axis(*x))
            .y_label_formatter(&|y| y_fmt(*y))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e2s)?;
        draw_all(&mut chart, series, &hline, (x0, x1), legend)
    }
}

fn draw_all<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    series: &[Series],
    hline: &Option<(f64, String)>,
    (x0, x1): (f64, f64),
    legend: SeriesLabelPosition,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let c = s.color;
        let style = c.stroke_width(2);
        let anno = if s.dashed {
            chart.draw_series(DashedLineSeries::new(s.points.clone(), 6, 4, style)).map_err(e2s)?
        } else {
            chart.draw_series(LineSeries::new(s.points.clone(), style)).map_err(e2s)?
        };
        anno.label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        let hollow = s.hollow;
        chart
            .draw_series(s.points.iter().map(|p| {
                let st = if hollow { c.stroke_width(1) } else { c.filled() };
                Circle::new(*p, 3, st)
            }))
            .map_err(e2s)?;
    }
    if let Some((y, label)) = hline {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x0, *y), (x1, *y)],
                3,
                3,
                BLACK.stroke_width(1),
            ))
            .map_err(e2s)?
            .label(label.clone())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(e2s)
}

/// Points (N, f(row)) of the main combination for one series.
fn points(
    run: &RunFile,
    grouping: &str,
    kernel: &str,
    mask: &str,
    f: impl Fn(&Row) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let main = Main::of(run);
    let mut v: Vec<(f64, f64)> = run
        .rows
        .iter()
        .filter(|r| main.has(&r.config))
        .filter(|r| r.grouping == grouping && r.config.kernel == kernel)
        .filter(|r| r.config.mask.name() == mask)
        .filter_map(|r| f(r).map(|y| (r.config.q_len as f64, y)))
        .filter(|p| p.1 > 0.0 && p.1.is_finite())
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v.dedup_by(|a, b| a.0 == b.0);
    v
}

/// A reference line ∝ N^k through `factor` times the first point of
/// `anchor`, across the N range of `all`.
fn slope(
    label: &str,
    k: i32,
    anchor: &[(f64, f64)],
    factor: f64,
    all: &[Series],
    color: RGBColor,
) -> Option<Series> {
    let &(xa, ya) = anchor.first()?;
    let ya = ya * factor;
    let xs = all.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (lo, hi) = xs.fold((f64::INFINITY, 0.0f64), |(l, h), x| (l.min(x), h.max(x)));
    let y = |x: f64| ya * (x / xa).powi(k);
    Some(Series {
        label: label.into(),
        color,
        dashed: true,
        hollow: false,
        points: vec![(lo, y(lo)), (hi, y(hi))],
    })
}

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

// ---------------------------------------------------------- decode ----

const DECODE_DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];

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
fn decode_section(s: &mut String, run: &RunFile) {
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
         stored as f32, f16 or bf16; queries, outputs, the LSE and all arithmetic are f32. MHA \
         has Hkv = 32, GQA Hkv = 8, MQA Hkv = 1. Cache values are seeded uniform on (−√3, √3) \
         (unit variance), queries standard-normal.",
        attnlab::flash::decode::MAX_CHUNKS,
        attnlab::flash::decode::CHUNK
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
         f16/bf16), over the time; queries, outputs and partials are not counted. **K+V** is \
         that size for an f32 cache (half of it for f16/bf16). **% bw** divides by the read \
         bandwidth measured in this run for the same thread count ({} GB/s on 1 thread, {} \
         GB/s on {} threads; {}): above 100% means the cache was served from the CPU caches.",
        fmt_num(p.read_gbs_1t),
        fmt_num(p.read_gbs_all),
        p.threads_all,
        p.read_method
    );
    let _ = writeln!(
        s,
        "- **f16 ×**, **bf16 ×** = f32 time / f16 (bf16) time: at most about 2× for a step \
         bound by memory bandwidth (half the bytes), less where the widening to f32 costs.\n"
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
}

fn dtype_color(d: Dtype) -> RGBColor {
    match d {
        Dtype::F32 => FLASH_FULL,
        Dtype::F16 => FLASH_CAUSAL,
        Dtype::Bf16 => NAIVE_CAUSAL,
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
