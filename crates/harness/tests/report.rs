//! The report generator on a small synthetic result set: tables per
//! grouping and mask, "needs X GiB" where naive stops, speedups, the
//! headline, the decode section (tables per grouping and threads, the GB/s
//! plot), the backward section and plot, the score-modifier section, the
//! SVG plots, `attn report`'s round trip through a results file, and that
//! the committed docs are what the committed results give.

use harness::cli::report::ReportArgs;
use harness::config::{Config, Dtype, Grouping, Kind, MaskSpec};
use harness::machine::{CacheInfo, MachineInfo, Peak};
use harness::report;
use harness::results::{self, Row, RunFile, SCHEMA, Status};
use std::path::PathBuf;

const GIB: u64 = 1 << 30;

/// Every file `attn report` writes into the docs folder.
const DOCS: [&str; 6] = [
    "results.md",
    "headline.md",
    "img/time_vs_n.svg",
    "img/memory_vs_n.svg",
    "img/gflops_vs_n.svg",
    "img/decode_gbs_vs_l.svg",
];

fn machine() -> MachineInfo {
    MachineInfo {
        cpu_model: "Test CPU 9000".into(),
        cpu_id: "TestVendor family 1 model 2".into(),
        cpu_facts: "Test CPU 9000, TestVendor family 1 model 2; L1d 32 KiB, L2 1 MiB".into(),
        compiled_isa: "sse4.2 avx2 fma avx512f".into(),
        logical_cpus: 2,
        caches: vec![
            CacheInfo { level: 1, kind: "Data".into(), size_bytes: 32 << 10, shared_by: 1 },
            CacheInfo { level: 3, kind: "Unified".into(), size_bytes: 32 << 20, shared_by: 2 },
        ],
        mem_total_bytes: 24 * GIB,
        compiled_avx512f: true,
        compiled_fma: true,
        compiled_avx2: true,
        cpu_features: vec!["avx512f".into(), "fma".into()],
        rustc: "rustc 1.95.0".into(),
        git_commit: "0123456789abcdef".into(),
        os: "Linux test".into(),
        date_utc: "2026-11-28 01:00:00 UTC".into(),
    }
}

fn peak() -> Peak {
    Peak {
        fma_gflops_1t: 100.0,
        fma_gflops_all: 200.0,
        read_gbs_1t: 20.0,
        read_gbs_all: 30.0,
        threads_all: 2,
        fma_method: "test".into(),
        read_method: "test".into(),
        reps: Default::default(),
    }
}

/// A measured row: naive at 40 GFLOP/s with the N² score matrix as extra
/// memory, flash at 160 GFLOP/s with 1 MiB of tiles.
fn measured(cfg: Config) -> Row {
    let mut r = Row::new(&cfg);
    let naive = cfg.kernel == "naive";
    let rate = if naive { 40e9 } else { 160e9 } * cfg.threads as f64 / 2.0;
    let ms = r.flops / rate * 1e3;
    r.set_time(ms, 5, "criterion", Some(if cfg.threads == 1 { 100.0 } else { 200.0 }));
    let n = cfg.q_len as u64;
    r.extra_bytes = Some(if naive { 8 * n * n * 4 } else { 1 << 20 });
    r.rss_increase_bytes = r.extra_bytes.map(|b| b + (1 << 20));
    r.peak_rss_bytes = r.rss_increase_bytes.map(|b| b + r.io_bytes);
    r.max_abs_err = Some(if naive { 3e-7 } else { 4e-7 });
    r.err_rows = 32;
    r.first_call_ms = Some(ms);
    r
}

/// A decode row: f32 caches read at 15 GB/s, 16-bit ones at 12 GB/s (on
/// 2 threads; half of that on 1); MHA's f32 cache at 128k (4 GiB) over the
/// 3 GiB budget of this test.
fn decode_row(g: Grouping, dt: Dtype, threads: usize, l: usize) -> Row {
    let cfg = Config::decode(g, dt, threads, l);
    let mut r = Row::new(&cfg);
    if r.needs_bytes > 3 * GIB {
        let note = format!("needs {} GiB > budget 3.0 GiB", r.needs_bytes / GIB);
        return Row { status: Status::Skipped, note, ..r };
    }
    let rate = if dt == Dtype::F32 { 15e9 } else { 12e9 } * threads as f64 / 2.0;
    let ms = r.kv_bytes.unwrap() as f64 / rate * 1e3;
    r.set_time(ms, 10, "criterion", Some(if threads == 1 { 100.0 } else { 200.0 }));
    r.set_read_gbs(Some(if threads == 1 { 20.0 } else { 30.0 }));
    r.extra_bytes = Some(r.workspace_bytes);
    r.max_abs_err = Some(2e-8);
    r.err_rows = 8;
    r.first_call_ms = Some(ms);
    r
}

fn synthetic() -> RunFile {
    let mut rows = Vec::new();
    for g in Grouping::ALL {
        for m in [MaskSpec::Full, MaskSpec::Causal] {
            for n in [1024, 4096, 16384, 65536] {
                for k in ["naive", "flash"] {
                    let cfg = Config::prefill(k, g, m, 64, Dtype::F32, 2, n);
                    if k == "naive" && n >= 16384 {
                        let r = Row::new(&cfg);
                        let note = format!("needs {} GiB > budget 12.0 GiB", r.needs_bytes / GIB);
                        rows.push(Row { status: Status::Skipped, note, ..r });
                    } else {
                        rows.push(measured(cfg));
                    }
                }
            }
        }
    }
    // another combination: d = 128 on one thread
    for k in ["naive", "flash"] {
        rows.push(measured(Config::prefill(
            k,
            Grouping::Mha,
            MaskSpec::Causal,
            128,
            Dtype::F32,
            1,
            1024,
        )));
    }
    // a failed row
    rows.push(Row::error(
        &Config::prefill("flash", Grouping::Mha, MaskSpec::Full, 64, Dtype::Bf16, 2, 4096),
        "unsupported: bf16 in this test",
    ));
    // decode: every grouping and cache dtype on 2 threads, GQA also on 1
    for g in Grouping::ALL {
        for dt in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            for l in [1024, 32768, 131072] {
                rows.push(decode_row(g, dt, 2, l));
            }
        }
    }
    for dt in [Dtype::F32, Dtype::F16] {
        rows.push(decode_row(Grouping::Gqa, dt, 1, 32768));
    }
    RunFile {
        schema: SCHEMA,
        profile: "default".into(),
        filter: None,
        started_utc: "2026-11-28 01:00:00 UTC".into(),
        duration_s: 600.0,
        machine: machine(),
        peak: peak(),
        mem_budget_bytes: 12 * GIB,
        seed: 42,
        grid: vec!["synthetic grid line".into(), "synthetic decode line".into()],
        timing: "synthetic timing".into(),
        rows,
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn tables_per_grouping_and_mask() {
    let run = synthetic();
    let md = report::render_results_md(&run, "results/test.json");
    for want in [
        "## MHA (Hq = 8, Hkv = 8)",
        "## GQA (Hq = 8, Hkv = 2)",
        "## MQA (Hq = 8, Hkv = 1)",
        "### MHA, no mask",
        "### MQA, causal",
        "| N | naive ms | flash ms | speedup | naive GFLOP/s | flash GFLOP/s | naive % peak | flash % peak |",
        "| N | naive extra | naive workspace | naive RSS + | flash extra | flash workspace | flash RSS + | naive err | flash err |",
        "Test CPU 9000, 2 logical CPUs",
        "| tiles chosen from | Test CPU 9000, TestVendor family 1 model 2; L1d 32 KiB, L2 1 MiB |",
        "| flash tiles (Br×Bc) | ",
        "100 GFLOP/s (1 thread), 200 GFLOP/s (2 threads)",
        "synthetic grid line",
        "synthetic timing",
        "`results/test.json`",
        "![memory vs N](img/memory_vs_n.svg)",
    ] {
        assert!(md.contains(want), "missing {want:?} in\n{md}");
    }
    // naive at 4x less GFLOP/s: 4x the time; 20% / 80% of the 200 peak
    assert!(md.contains("| 4.00× |"), "{md}");
    assert!(md.contains("| 20% | 80% |"), "{md}");
    // where naive stops: the needs cells, and flash going on
    let needs_16k = Row::new(&Config::prefill(
        "naive",
        Grouping::Mha,
        MaskSpec::Full,
        64,
        Dtype::F32,
        2,
        16384,
    ))
    .needs_bytes;
    let cell = format!("needs {:.1} GiB", needs_16k as f64 / GIB as f64);
    assert!(md.contains(&format!("| 16k | {cell} |")), "no {cell:?} row in\n{md}");
    assert!(md.contains("| 64k | needs "), "{md}");
    // naive's extra is the score matrix: 8·4096²·4 B = 512 MiB
    assert!(md.contains("| 4k | 512 MiB |"), "{md}");
    assert!(md.contains("1.00 MiB"), "{md}");
    // the other combination, and the failed row's footnote
    assert!(md.contains("Other head dims, thread counts and storage types"), "{md}");
    assert!(md.contains("| 1k | 128 | f32 | 1 |"), "{md}");
    assert!(md.contains("error¹"), "{md}");
    assert!(md.contains("unsupported: bf16 in this test"), "{md}");
}

#[test]
fn decode_tables_per_grouping_and_threads() {
    let run = synthetic();
    let md = report::render_results_md(&run, "results/test.json");
    let (prefill, decode) = md.split_once("## Decode (KV cache)").expect("a decode section");
    // the prefill part does not see decode rows (L = 32k is decode only)
    assert!(!prefill.contains("| 32k |"), "decode rows leaked into the prefill tables");
    assert!(prefill.contains("synthetic decode line"), "{prefill}");
    for want in [
        "### Decode, MHA (Hq = 32, Hkv = 32), 2 threads",
        "### Decode, GQA (Hq = 32, Hkv = 8), 2 threads",
        "### Decode, GQA (Hq = 32, Hkv = 8), 1 thread",
        "### Decode, MQA (Hq = 32, Hkv = 1), 2 threads",
        "| L | K+V (f32) | f32 µs | f16 µs | bf16 µs | f16 × | bf16 × | f32 GB/s | f16 GB/s | bf16 GB/s | f32 % bw | f16 % bw | bf16 % bw |",
        "![decode GB/s vs L](img/decode_gbs_vs_l.svg)",
        "20.0 GB/s on 1 thread, 30.0 GB/s on 2 threads",
        "bytes of K and V one step reads",
    ] {
        assert!(
            decode.contains(want),
            "missing {want:?} in
{decode}"
        );
    }
    // GQA, 2 threads, L = 32k: 256 MiB of f32 at 15 GB/s (50% of 30),
    // 128 MiB of f16/bf16 at 12 GB/s (40%): 1.60x
    let row = "| 32k | 256 MiB | 17896 | 11185 | 11185 | 1.60× | 1.60× | 15.0 | 12.0 | 12.0 | 50% | 40% | 40% |";
    assert!(
        decode.contains(row),
        "no {row:?} in
{decode}"
    );
    // 1 thread: half the rate, % of the 1-thread bandwidth; no bf16 row
    let row = "| 32k | 256 MiB | 35791 | 22370 | 1.60× | 7.50 | 6.00 | 38% | 30% |";
    assert!(
        decode.contains(row),
        "no {row:?} in
{decode}"
    );
    // MHA's f32 cache at 128k is over the budget: its needs, f16 still runs
    assert!(decode.contains("| 128k | 4.00 GiB | needs 4.0 GiB | "), "{decode}");
    // the failed-rows footnote still closes the page
    assert!(decode.contains("## ¹ Configurations that failed"), "{decode}");
}

#[test]
fn decode_plot_has_a_line_per_dtype_and_the_bandwidth() {
    let run = synthetic();
    let svg = report::plot_decode_gbs_vs_l(&run).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for want in [
        "f32 cache",
        "f16 cache",
        "bf16 cache",
        "read bandwidth 30.0 GB/s (measured)",
        "MHA (Hq = 32, Hkv = 32), 2 threads",
        "MQA (Hq = 32, Hkv = 1), 2 threads",
        "L (cached positions)",
    ] {
        assert!(svg.contains(want), "decode plot lacks {want:?}");
    }
    // all threads only
    assert!(!svg.contains("1 thread"), "1-thread rows in the decode plot");
    // a run without decode rows renders no decode section
    let mut pre = synthetic();
    pre.rows.retain(|r| r.config.kind == Kind::Prefill);
    assert!(report::plot_decode_gbs_vs_l(&pre).is_err());
    assert!(!report::render_results_md(&pre, "x").contains("Decode"));
}

#[test]
fn schema_1_files_load_as_prefill_and_newer_ones_are_refused() {
    let dir = tmp("schema");
    let mut pre = synthetic();
    pre.rows.retain(|r| r.config.kind == Kind::Prefill);
    // a schema-1 file: no kind, no decode fields
    let mut v = serde_json::to_value(&pre).unwrap();
    v["schema"] = 1.into();
    for r in v["rows"].as_array_mut().unwrap() {
        let o = r.as_object_mut().unwrap();
        for k in
            ["kind", "cache_dtype", "us_per_step", "kv_bytes", "gbs", "read_gbs", "pct_bandwidth"]
        {
            assert!(o.remove(k).is_some(), "no {k} in a row");
        }
    }
    let old = dir.join("old.json");
    std::fs::write(&old, serde_json::to_string(&v).unwrap()).unwrap();
    let loaded = results::load(&old).unwrap();
    assert_eq!(loaded.schema, 1);
    assert_eq!(loaded.rows, pre.rows, "schema-1 rows read back as prefill rows");
    let newer = dir.join("newer.json");
    v["schema"] = (SCHEMA + 1).into();
    std::fs::write(&newer, serde_json::to_string(&v).unwrap()).unwrap();
    let e = results::load(&newer).unwrap_err();
    assert!(e.contains("newer"), "{e}");
}

#[test]
fn headline_picks_few_rows_and_links_the_docs() {
    let run = synthetic();
    let rows = report::headline_rows(&run);
    assert!(rows.len() >= 2 && rows.len() <= 4, "{rows:?}");
    assert!(rows.contains(&("mha".into(), "full".into(), 4096)), "{rows:?}");
    assert!(rows.contains(&("mha".into(), "causal".into(), 4096)), "{rows:?}");
    // the longest N flash ran, where naive only says what it would need
    assert!(rows.iter().any(|r| r.2 == 65536), "{rows:?}");
    let h = report::render_headline_md(&run, "results/test.json");
    assert!(h.contains("(docs/results.md)"), "{h}");
    assert!(h.contains("docs/img/time_vs_n.svg"), "{h}");
    assert!(h.contains("MHA full N=4k"), "{h}");
    assert!(h.contains("needs "), "{h}");
    assert!(h.contains("4.00×"), "{h}");
}

#[test]
fn plots_are_svg_with_both_kernels_and_slopes() {
    let run = synthetic();
    let t = report::plot_time_vs_n(&run).unwrap();
    assert!(t.starts_with("<svg") && t.trim_end().ends_with("</svg>"));
    for want in ["naive, no mask", "flash, causal", "∝ N²", "∝ N", "MHA: time", "MQA: time"] {
        assert!(t.contains(want), "time plot lacks {want:?}");
    }
    let m = report::plot_memory_vs_n(&run).unwrap();
    for want in ["naive extra", "flash extra", "not run (needs)", "inputs + outputs (∝ N)", "∝ N²"]
    {
        assert!(m.contains(want), "memory plot lacks {want:?}");
    }
    let g = report::plot_gflops_vs_n(&run).unwrap();
    for want in ["FMA peak 200 GFLOP/s", "GQA: GFLOP/s", "flash, no mask"] {
        assert!(g.contains(want), "GFLOP/s plot lacks {want:?}");
    }
}

#[test]
fn report_regenerates_docs_from_a_results_file() {
    let dir = tmp("roundtrip");
    let run = synthetic();
    let input = dir.join("run.json");
    std::fs::write(&input, serde_json::to_string_pretty(&run).unwrap()).unwrap();
    assert_eq!(results::load(&input).unwrap(), run, "results file round trip");
    let docs = dir.join("docs");
    let _ = harness::cli::report::main(&ReportArgs {
        input: Some(input.clone()),
        docs: Some(docs.clone()),
    });
    for f in DOCS {
        assert!(docs.join(f).is_file(), "attn report did not write {f}");
    }
    // the same again: identical bytes (nothing depends on the clock)
    let first = std::fs::read_to_string(docs.join("results.md")).unwrap();
    let again = dir.join("again");
    let src = report::source_name(&input, &results::workspace_root());
    report::generate(&run, &again, &src).unwrap();
    assert_eq!(first, std::fs::read_to_string(again.join("results.md")).unwrap());
    assert!(results::load(&dir.join("missing.json")).is_err());
}

#[test]
fn committed_docs_match_committed_results() {
    // The README's headline and docs/results.md must be what `attn report`
    // makes of results/latest.json.
    let root = results::workspace_root();
    let latest = root.join("results/latest.json");
    let Ok(run) = results::load(&latest) else {
        eprintln!("no results/latest.json yet: nothing to compare");
        return;
    };
    let dir = tmp("committed");
    report::generate(&run, &dir, "results/latest.json").unwrap();
    for f in DOCS {
        let want = std::fs::read_to_string(dir.join(f)).unwrap();
        let got = std::fs::read_to_string(root.join("docs").join(f)).unwrap_or_default();
        assert!(got == want, "docs/{f} is not what `attn report` makes of results/latest.json");
    }
}

#[test]
fn backward_section_and_plot_from_backward_rows() {
    let mut run = synthetic();
    // no backward rows: no section, no plot (the committed docs stay as they are)
    let md = report::render_results_md(&run, "results/test.json");
    assert!(!md.contains("## Backward"), "{md}");
    for n in [1024, 4096] {
        for m in [MaskSpec::Full, MaskSpec::Causal] {
            for k in ["naive", "flash"] {
                run.rows.push(measured(Config::backward(
                    k,
                    Grouping::Mha,
                    m,
                    64,
                    Dtype::F32,
                    2,
                    n,
                )));
            }
        }
    }
    let mut over = Row::new(&Config::backward(
        "naive",
        Grouping::Mha,
        MaskSpec::Causal,
        64,
        Dtype::F32,
        2,
        16384,
    ));
    over.status = Status::Skipped;
    over.needs_bytes = 24 * GIB;
    run.rows.push(over);
    run.rows.push(measured(Config::backward(
        "flash",
        Grouping::Mha,
        MaskSpec::Causal,
        64,
        Dtype::F32,
        2,
        16384,
    )));
    let md = report::render_results_md(&run, "results/test.json");
    let (fwd, bwd) = md.split_once("## Backward (gradients)").expect("a backward section");
    // backward rows stay out of the forward tables (16k causal flash exists only there)
    assert!(!fwd.contains("Backward, MHA"), "{fwd}");
    for want in [
        "### Backward, MHA (Hq = 8, Hkv = 8), d = 64, f32, 2 threads",
        "| N | mask | naive ms | flash ms | speedup | flash GFLOP/s | flash % peak | naive extra | flash extra | flash err |",
        "2.5 × the forward's FLOPs",
        "![backward time and memory vs N](img/backward_vs_n.svg)",
        "| 16k | causal | needs 24.0 GiB |",
    ] {
        assert!(bwd.contains(want), "missing {want:?} in\n{bwd}");
    }
    // flash at 160 GFLOP/s on 2 threads is 80% of the synthetic 200 GFLOP/s peak;
    // naive at 40: a 4x speedup; no mask before causal
    let first = bwd.lines().find(|l| l.starts_with("| 1k |")).unwrap();
    assert!(first.contains("| no mask |") && first.contains("| 4.00× | 160 | 80% |"), "{first}");
    let svg = report::plot_backward_vs_n(&run).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("flash, causal") && svg.contains("naive, no mask")
    );
}

/// `run` with score-modifier rows: flash MHA causal N = 4096 d = 64 on 1
/// thread, plain at 100 ms, softcap at 104 ms, a bias at 161 ms (bias read
/// once in 3 ms: bound 2 × 103 = 206 ms), all four at 250 ms (over the
/// bound); a GQA softcap row without its plain call; a failed ALiBi row;
/// decode GQA f32 L = 32k with sinks at 1.25 × the plain step.
fn with_modifiers(mut run: RunFile) -> RunFile {
    use harness::config::{BiasSpec, Mods, Sinks, Slopes};
    let plain = Config::prefill("flash", Grouping::Mha, MaskSpec::Causal, 64, Dtype::F32, 1, 4096);
    let at = |cfg: Config, ms: f64, read: Option<f64>| {
        let mut r = measured(cfg);
        r.set_time(ms, 3, "direct", Some(100.0));
        r.bias_read_ms = read;
        r
    };
    let softcap = Mods { softcap: Some(50.0), ..Default::default() };
    let bias = Mods { bias: Some(BiasSpec::Random), ..Default::default() };
    let all = Mods {
        softcap: Some(50.0),
        alibi: Some(Slopes::Default),
        sinks: Some(Sinks::Random),
        bias: Some(BiasSpec::Random),
    };
    run.rows.push(at(plain.clone(), 100.0, None));
    run.rows.push(at(plain.clone().with_mods(softcap.clone()), 104.0, None));
    run.rows.push(at(plain.clone().with_mods(bias), 161.0, Some(3.0)));
    run.rows.push(at(plain.clone().with_mods(all), 250.0, Some(3.0)));
    let gqa = Config::prefill("flash", Grouping::Gqa, MaskSpec::Causal, 64, Dtype::F32, 1, 4096);
    run.rows.push(at(gqa.clone().with_mods(softcap), 50.0, None));
    let alibi = Mods { alibi: Some(Slopes::Default), ..Default::default() };
    run.rows.push(Row::error(&gqa.with_mods(alibi), "alibi failed in this test"));
    let dec = Config::decode(Grouping::Gqa, Dtype::F32, 2, 32768);
    let plain_us = run.rows.iter().find(|r| r.config == dec).unwrap().median_ms.unwrap();
    let mut r = decode_row(Grouping::Gqa, Dtype::F32, 2, 32768);
    r = Row {
        id: dec.clone().with_mods(Mods { sinks: Some(Sinks::Random), ..Default::default() }).id(),
        ..r
    };
    r.config.mods = Mods { sinks: Some(Sinks::Random), ..Default::default() };
    r.set_time(plain_us * 1.25, 10, "criterion", Some(200.0));
    run.rows.push(r);
    run
}

#[test]
fn modifier_section_next_to_the_plain_calls() {
    let run = with_modifiers(synthetic());
    let md = report::render_results_md(&run, "results/test.json");
    let (rest, section) = md.split_once("## Score modifiers\n").expect("a modifier section");
    let section = section.split("## ¹").next().unwrap();
    for want in [
        "### Prefill flash, MHA (Hq = 8, Hkv = 8), causal, N = 4k, d = 64, f32, 1 thread",
        "| modifiers | time ms | plain ms | overhead | bias | bias read once ms | 2 × (plain + read) ms | within | err |",
        "| softcap 50 | 104 | 100 | 1.04× | – | – | – | – | 4.0e-7 |",
        "| bias | 161 | 100 | 1.61× | 64.0 MiB | 3.00 | 206 | yes | 4.0e-7 |",
        "| softcap 50 + ALiBi + sinks + bias | 250 | 100 | 2.50× | 64.0 MiB | 3.00 | 206 | **no** | 4.0e-7 |",
        // no plain call in the run: no ratio; the failed row says so
        "### Prefill flash, GQA (Hq = 8, Hkv = 2), causal, N = 4k, d = 64, f32, 1 thread",
        "| softcap 50 | 50.0 | – | – | 4.0e-7 |",
        "| ALiBi | error¹ | – | – | – |",
        "### Decode, GQA (Hq = 32, Hkv = 8), f32 cache, L = 32k, nq = 1, d = 128, 2 threads",
        "| modifiers | time µs | plain µs | overhead | err |",
        "| sinks | 22370 | 17896 | 1.25× | 2.0e-8 |",
    ] {
        assert!(section.contains(want), "missing {want:?} in\n{section}");
    }
    assert!(md.contains("alibi failed in this test"), "the failure footnote");
    // every other part of the page is made of plain calls only: the page
    // without the section (and the configuration count) is that of the
    // plain rows
    let mut plain = run.clone();
    plain.rows.retain(|r| r.config.mods.is_plain());
    let old = report::render_results_md(&plain, "results/test.json");
    let counts = |s: &str| -> String {
        s.lines().filter(|l| !l.contains(" configurations: ")).collect::<Vec<_>>().join("\n")
    };
    let failed = md.split("## ¹").nth(1).unwrap();
    let old_failed = old.split("## ¹").nth(1).unwrap();
    assert!(
        counts(rest) == counts(old.split("## ¹").next().unwrap()),
        "rows with modifiers changed the rest of the page"
    );
    assert!(failed.contains(old_failed.trim_end()), "{failed}");
    // a run without modifier rows has no section
    assert!(!old.contains("Score modifiers"));
    // rows with modifiers survive a results file
    let dir = tmp("mods");
    let input = dir.join("run.json");
    std::fs::write(&input, serde_json::to_string_pretty(&run).unwrap()).unwrap();
    assert_eq!(results::load(&input).unwrap(), run);
    let text = std::fs::read_to_string(&input).unwrap();
    assert_eq!(text.matches("\"mods\"").count(), 6, "only rows with modifiers carry the field");
    assert_eq!(text.matches("\"bias_read_ms\"").count(), 2);
}
