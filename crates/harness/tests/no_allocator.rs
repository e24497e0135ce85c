//! A binary that does not install the counting allocator (this test
//! target): memory measurements say "not measured", never 0 bytes.

use harness::config::{Config, Dtype, Grouping, MaskSpec};
use harness::measure::{self, MeasureOpts};
use harness::results::Status;

#[test]
fn extra_bytes_are_not_measured_without_the_counting_allocator() {
    assert!(!harness::alloc::installed());
    let (_buf, extra) = harness::alloc::measure(|| vec![1u8; 1 << 20]);
    assert_eq!(extra, None);

    let cfg = Config::prefill("flash", Grouping::Gqa, MaskSpec::Causal, 16, Dtype::F32, 1, 64);
    let opts = MeasureOpts {
        seed: measure::SEED,
        direct_min_ms: 0.0,
        budget_s: 0.0,
        max_reps: 1,
        err_rows: 4,
        peak_gflops: None,
    };
    let row = measure::measure(&cfg, &opts);
    assert_eq!(row.status, Status::Ok, "{}", row.note);
    assert_eq!(row.extra_bytes, None, "extra bytes reported without the allocator");
    assert!(row.median_ms.is_some() && row.max_abs_err.is_some());
}
