//! Memory accounting of the sweep: the counting allocator's "extra bytes"
//! of one call. Naive's are its score matrix, `B·Hq·Nq·Nk·4` (plus a small
//! per-worker product); flash's do not grow with N; a decode step's are
//! its split-KV partials.
//!
//! The allocator's counters are process-wide, so every test here holds
//! one lock while it measures.

#[global_allocator]
static ALLOC: harness::alloc::CountingAlloc = harness::alloc::CountingAlloc;

use harness::config::{Config, Dtype, Grouping, MaskSpec};
use harness::measure::{self, MeasureOpts};
use harness::results::Status;
use std::sync::Mutex;

static LOCK: Mutex<()> = Mutex::new(());

/// The counters are process-wide, and libtest's own threads may free or
/// allocate a few bytes (a finished test's name, its captured output)
/// while a test measures under the lock: CI once read 8 MiB − 112 B for an
/// 8 MiB vector. Lower bounds allow this much; it is far below anything
/// the tests tell apart.
const SLACK: u64 = 64 << 10;

#[test]
fn the_allocator_counts_an_allocation_inside_the_call() {
    let _g = lock();
    let (_, extra) = harness::alloc::measure(|| {
        let v = vec![1u8; 8 << 20];
        std::hint::black_box(&v);
    });
    assert!(harness::alloc::installed());
    let extra = extra.expect("installed in this test binary");
    let want = 8 << 20;
    assert!(extra + SLACK as usize >= want && extra <= want + SLACK as usize, "{extra}");
}

fn opts() -> MeasureOpts {
    MeasureOpts {
        seed: measure::SEED,
        direct_min_ms: 0.0,
        budget_s: 0.0, // the first call only
        max_reps: 1,
        err_rows: 8,
        peak_gflops: None,
    }
}

/// Held for a whole test, so that nothing else allocates while one
/// measures (a failing test's panic message and backtrace included).
fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn extra(cfg: &Config) -> u64 {
    let row = measure::measure(cfg, &opts());
    assert_eq!(row.status, Status::Ok, "{}: {}", row.id, row.note);
    let err = row.max_abs_err.expect("error checked");
    assert!(err < 1e-4, "{}: max abs err {err}", row.id);
    row.extra_bytes.expect("extra bytes measured")
}

#[test]
fn naive_extra_bytes_are_the_score_matrix() {
    let _g = lock();
    for (g, mask, n, threads) in [
        (Grouping::Mha, MaskSpec::Full, 256, 1),
        (Grouping::Mqa, MaskSpec::Causal, 512, 1),
        (Grouping::Gqa, MaskSpec::Full, 384, 2),
    ] {
        let cfg = Config::prefill("naive", g, mask, 32, Dtype::F32, threads, n);
        let e = extra(&cfg);
        let scores = (cfg.batch * cfg.q_heads * n * n * 4) as u64;
        // plus one Nq x dv f32 product per worker and matrixmultiply's
        // packing buffers (bounded by its cache blocking, < 2 MiB)
        let per_worker = (threads * n * cfg.v_dim * 4) as u64;
        assert!(
            e + SLACK >= scores && e <= scores + per_worker + (2 << 20),
            "{}: extra {e} vs scores {scores} (+{per_worker} per-worker)",
            cfg.id()
        );
        // ... which is what the kernel's workspace_bytes promises
        let ws = cfg.workspace_bytes();
        assert!(e.abs_diff(ws) <= 2 << 20, "{}: extra {e} vs workspace {ws}", cfg.id());
    }
}

#[test]
fn flash_extra_bytes_do_not_grow_with_n() {
    let _g = lock();
    for (g, mask, threads) in
        [(Grouping::Mha, MaskSpec::Causal, 1), (Grouping::Mqa, MaskSpec::Full, 2)]
    {
        let at = |n: usize| extra(&Config::prefill("flash", g, mask, 64, Dtype::F32, threads, n));
        let (short, long) = (at(512), at(4096));
        // 64x the score matrix, the same scratch (tiles per worker)
        assert!(
            long <= short + (16 << 10),
            "flash {g:?} {mask:?} t{threads}: extra {short} B at N=512 but {long} B at N=4096"
        );
        let naive_scores = (8 * 4096 * 4096 * 4) as u64;
        assert!(long * 100 < naive_scores, "flash extra {long} B is not small");
    }
}

#[test]
fn rss_rise_covers_the_naive_scores() {
    // The sweep measures in a fresh process per configuration (see
    // `cargo test --benches` for that path); here, in-process.
    let _g = lock();
    let cfg = Config::prefill("naive", Grouping::Mha, MaskSpec::Full, 64, Dtype::F32, 1, 1024);
    let row = measure::measure(&cfg, &opts());
    assert_eq!(row.status, Status::Ok, "{}", row.note);
    let scores = 8 * 1024 * 1024 * 4u64;
    // VmHWM resets (root or own process): the RSS rise covers the scores.
    if let Some(rise) = row.rss_increase_bytes {
        assert!(rise >= scores / 2, "RSS rise {rise} for {scores} B of scores");
        assert!(row.peak_rss_bytes.unwrap() >= rise);
    }
    assert_eq!(row.needs_bytes, row.io_bytes + row.workspace_bytes);
    assert!(row.gflops.unwrap() > 0.0 && row.median_ms.unwrap() > 0.0);
    assert_eq!(row.timer, "direct");
}

#[test]
fn decode_extra_bytes_are_the_split_kv_partials() {
    // One decode step allocates its per-chunk partials and merge buffers,
    // nothing that grows like the cache; its output matches f64.
    let _g = lock();
    for (g, dtype, threads, len) in [
        (Grouping::Gqa, Dtype::F16, 1, 2048),
        (Grouping::Mqa, Dtype::F32, 2, 1536),
        (Grouping::Gqa, Dtype::Q8_0, 2, 1024),
    ] {
        let cfg = Config::decode(g, dtype, threads, len);
        let row = measure::measure(&cfg, &opts());
        assert_eq!(row.status, Status::Ok, "{}: {}", row.id, row.note);
        assert!(row.max_abs_err.unwrap() < 1e-5, "{}: err {:?}", row.id, row.max_abs_err);
        assert!(row.err_rows >= 2, "{}: {} rows checked", row.id, row.err_rows);
        let (e, ws) = (row.extra_bytes.unwrap(), row.workspace_bytes);
        // the decode workspace (one scratch per thread, partials for the
        // most chunks any length can need) is allocated up front, exactly;
        // 64 KiB of slack for the allocator's bookkeeping
        assert!(e <= ws + (64 << 10), "{}: extra {e} above workspace {ws}", row.id);
        // and at least the per-chunk partial results (+ the merge buffer)
        let (chunk, max_chunks) = attnlab::flash::decode::chunk_limits();
        let nc = len.div_ceil(chunk).clamp(1, max_chunks);
        let rows = cfg.q_heads / cfg.kv_heads * cfg.q_len;
        let partials = (4 * (nc + 1) * rows * (cfg.v_dim + 1)) as u64;
        assert!(e >= partials, "{}: extra {e} below the partials' {partials} B", row.id);
        let kv = row.kv_bytes.unwrap();
        assert_eq!(kv, (cfg.kv_heads * len) as u64 * 2 * dtype.row_bytes(128));
        // what storing as f16/q8_0 costs against the f32 values: some
        // error (q8_0 steps of max|x|/127 ≈ 0.014 on these values), bounded
        match (dtype, row.storage_err) {
            (Dtype::F32, e) => assert_eq!(e, None),
            (_, Some(e)) => assert!(e > 0.0 && e < 0.02, "{}: storage error {e}", row.id),
            (_, None) => panic!("{}: no storage error", row.id),
        }
        assert!(e * 8 < kv, "{}: extra {e} B is not small next to the cache ({kv} B)", row.id);
        // the step's figures
        let us = row.us_per_step.unwrap();
        assert!((us - row.median_ms.unwrap() * 1e3).abs() < 1e-6 * us);
        assert!((row.gbs.unwrap() - kv as f64 / us * 1e-3).abs() < 1e-9 * kv as f64);
        assert_eq!(row.cache_dtype, Some(dtype));
    }
}
