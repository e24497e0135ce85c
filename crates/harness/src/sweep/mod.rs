//! The long-context sweep, `cargo bench -p harness` (whose bench target is
//! only `main` calling [`bench_main`]).
//!
//! Prefill: sequence length × head grouping (MHA/GQA/MQA) × mask × d ×
//! threads for the naive and the flash kernel; decode: cache length ×
//! grouping × cache dtype × threads for `attnlab::flash::decode` (see
//! [`grid()`]). Then `results/runs/*.json`, `results/latest.json`,
//! `docs/results.md`, `docs/headline.md` and `docs/img/*.svg` are
//! regenerated.
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
//! - `cargo test --benches` runs the smoke profile (two tiny prefill
//!   configurations and one decode configuration) and writes nothing.
//!
//! Each configuration first runs in a fresh child process (the bench
//! binary re-executed, [`crate::measure::child`]) for memory, error and,
//! for long calls, time, so that peak RSS is that of one configuration;
//! short calls are then timed in the parent by criterion ([`timing`]:
//! criterion needs at least 10 samples, which a 30 s call cannot afford)
//! with ids such as
//! `prefill/flash/mha/causal/d64/f32/t2/4096` or
//! `decode/flash/gqa/f16/t2/32768`. Decode rows' "% of bandwidth" divides
//! by the read bandwidth the parent measured for the same thread count (the
//! best of the measurements before and after the sweep, like "% of peak").
//!
//! Configurations that need more memory than the budget are recorded as
//! skipped with the bytes they would need ([`settings`]).
//!
//! Files: [`mod@grid`] (what runs), [`settings`] (budgets and timing per
//! profile), [`args`] (the command line), [`timing`] (criterion),
//! [`progress`] (stderr), [`driver`] (the loop and the results).

pub mod args;
pub mod driver;
pub mod grid;
pub mod progress;
pub mod settings;
pub mod timing;

pub use driver::bench_main;
pub use grid::{DECODE_LENS, Profile, grid};
pub use settings::SweepSettings;
