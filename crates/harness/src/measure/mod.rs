//! Measuring one configuration ([`Config`]) in this process, prefill or
//! decode alike. [`measure`] runs it:
//!
//! 1. [`prepare`] builds its [`Runner`]: seeded standard-normal inputs
//!    ([`inputs`], [`SEED`]), output and LSE buffers allocated and touched
//!    *before* the call, the thread pool started ([`prefill`]; decode: a
//!    filled `KvCache` of the storage type and f32 queries, [`decode`]);
//! 2. one call with VmHWM reset just before it (`/proc/self/clear_refs`)
//!    and the counting allocator's high-water mark reset
//!    ([`crate::alloc::measure`]): `extra_bytes` is the peak of heap bytes
//!    during the call beyond those live before it (inputs, outputs), and
//!    `rss_increase_bytes` the rise of VmHWM over the RSS before the call
//!    (`extra_bytes` is `None` in a binary that did not install the
//!    allocator, with a warning on stderr);
//! 3. more timed calls when the first took long enough (see
//!    [`MeasureOpts`]), median of all;
//! 4. the max abs error of sampled query rows against the f64 oracle
//!    ([`check`]); a NaN or inf output is an error of +inf, and the row
//!    an error;
//! 5. with a bias ([`Config::mods`]), the time of reading the bias buffer
//!    once ([`runner::read_once`], median of
//!    [`crate::results::BIAS_READS`]): the memory
//!    traffic the bias adds at the least, for the report's bound.
//!
//! Decode rows (ids such as `decode/flash/gqa/f16/t2/32768`) go through
//! the same steps, one step being `attnlab::flash::decode` of `nq` new
//! queries against a cache of `kv_len` positions; their rows add
//! `us_per_step`, `kv_bytes` (K+V of the cache read per step) and `gbs`
//! (and `pct_bandwidth` once the read bandwidth is known,
//! [`Row::set_read_gbs`]).
//!
//! Backward rows (`backward/flash/mha/causal/d64/f32/t2/4096`) time one
//! gradient call ([`backward`]): the forward runs once while preparing,
//! untimed, and the error is that of sampled dQ rows.
//!
//! Layer rows (`layer/flash/mha/causal/d64/f32/t2/h16x16/4096`, and
//! `layer-backward/…`) time a whole `MultiHeadAttention` forward or
//! backward ([`layer`]), always directly in the child: each timed call
//! also reports its time in the projections and in the attention, whose
//! medians become the row's [`crate::results::LayerSplit`].
//!
//! [`child`] runs the same in a fresh process, so that peak RSS is that
//! of one configuration.

pub mod backward;
pub mod check;
pub mod child;
pub mod decode;
pub mod inputs;
pub mod layer;
pub mod prefill;
pub mod runner;

pub use inputs::{SEED, SplitMix64, mod_data, normal, uniform};
pub use runner::{Runner, read_once};

use crate::results::BIAS_READS;

use crate::alloc;
use crate::config::{Config, Kind};
use crate::machine::procfs;
use crate::results::{Row, Status};
use attnlab::AttnError;
use serde::{Deserialize, Serialize};
use std::sync::Once;
use std::time::{Duration, Instant};

/// How [`measure`] times a configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeasureOpts {
    /// Input seed.
    pub seed: u64,
    /// More timed calls only if the first took at least this long (the
    /// sweep times shorter ones with criterion); 0 = always.
    pub direct_min_ms: f64,
    /// Stop adding timed calls once this much time has been spent.
    pub budget_s: f64,
    /// Most timed calls (the first call among them, unless warming up:
    /// [`measure_with_warmup`]).
    pub max_reps: usize,
    /// Query rows checked against f64 (0 = none).
    pub err_rows: usize,
    /// FMA peak for `pct_peak`.
    pub peak_gflops: Option<f64>,
}

/// Builds the runner of `cfg` with inputs seeded by `seed`
/// ([`prefill::PrefillRunner`] or [`decode::DecodeRunner`]).
pub fn prepare(cfg: &Config, seed: u64) -> Result<Box<dyn Runner>, String> {
    match cfg.kind {
        Kind::Prefill => prefill::prepare(cfg, seed),
        Kind::Decode => decode::prepare(cfg, seed),
        Kind::Backward => backward::prepare(cfg, seed),
        Kind::Layer | Kind::LayerBackward => layer::prepare(cfg, seed),
    }
}

/// Runs one configuration in this process (see the module docs).
pub fn measure(cfg: &Config, opts: &MeasureOpts) -> Row {
    measure_with_warmup(cfg, opts, 0)
}

/// [`measure`] with `warmup` untimed calls first, the first
/// (memory-measured) call counting as one of them; with `warmup` 0 (as in
/// [`measure`]) the first call is also the first timed one. At most
/// `max_reps` calls are timed, within `budget_s`.
pub fn measure_with_warmup(cfg: &Config, opts: &MeasureOpts, warmup: usize) -> Row {
    let mut row = Row::new(cfg);
    let mut runner = match prepare(cfg, opts.seed) {
        Ok(r) => r,
        Err(e) => return Row::error(cfg, e),
    };
    let hwm_ok = procfs::reset_hwm();
    let rss0 = procfs::vm_rss();
    let t0 = Instant::now();
    let (res, extra) = alloc::measure(|| runner.run());
    let first = t0.elapsed();
    let hwm = procfs::vm_hwm();
    if let Err(e) = res {
        return Row::error(cfg, e.to_string());
    }
    row.first_call_ms = Some(first.as_secs_f64() * 1e3);
    row.extra_bytes = extra.map(|b| b as u64);
    if extra.is_none() {
        warn_no_allocator();
    }
    if hwm_ok {
        row.peak_rss_bytes = hwm;
        if let (Some(h), Some(r)) = (hwm, rss0) {
            row.rss_increase_bytes = Some(h.saturating_sub(r));
        }
    }
    if row.first_call_ms.unwrap_or(0.0) >= opts.direct_min_ms {
        let run = |runner: &mut Box<dyn Runner>| -> Result<Duration, AttnError> {
            let t = Instant::now();
            runner.run()?;
            Ok(t.elapsed())
        };
        let mut times = if warmup == 0 { vec![first] } else { Vec::new() };
        let mut phases: Vec<(f64, f64)> = Vec::new();
        if warmup == 0 {
            phases.extend(runner.phases_ms());
        }
        for _ in 1..warmup {
            if let Err(e) = run(&mut runner) {
                return Row::error(cfg, e.to_string());
            }
        }
        let budget = Duration::try_from_secs_f64(opts.budget_s.max(0.0)).unwrap_or(Duration::MAX);
        let (mut spent, mut last) = (first, first);
        while times.len() < opts.max_reps.max(1) && spent.saturating_add(last) <= budget {
            match run(&mut runner) {
                Ok(dt) => (spent, last) = (spent + dt, dt),
                Err(e) => return Row::error(cfg, e.to_string()),
            }
            times.push(last);
            phases.extend(runner.phases_ms());
        }
        let ms = median(&times.iter().map(|t| t.as_secs_f64() * 1e3).collect::<Vec<_>>());
        row.set_time(ms, times.len(), "direct", opts.peak_gflops);
        if !phases.is_empty() {
            let proj = median(&phases.iter().map(|p| p.0).collect::<Vec<_>>());
            let attn = median(&phases.iter().map(|p| p.1).collect::<Vec<_>>());
            row.set_layer_split(proj, attn);
        }
    } else {
        row.peak_gflops = opts.peak_gflops;
    }
    if let Some(bias) = runner.bias() {
        let ms: Vec<f64> = (0..BIAS_READS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(read_once(std::hint::black_box(bias)));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        row.bias_read_ms = Some(median(&ms));
    }
    if opts.err_rows > 0 {
        let (e, n) = runner.sampled_error(opts.err_rows);
        row.max_abs_err = Some(e);
        row.storage_err = runner.storage_error(opts.err_rows);
        row.err_rows = n;
        if !e.is_finite() {
            // JSON has no infinity: the status says it where the number cannot.
            row.status = Status::Error;
            row.note = format!("NaN or inf in the output ({n} sampled rows checked)");
        }
    }
    row
}

/// Says once per process that extra bytes are not measured.
fn warn_no_allocator() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        eprintln!(
            "harness: warning: the counting allocator is not this binary's global allocator \
             (see harness::alloc): extra bytes are not measured"
        );
    });
}

/// Median of a non-empty slice (mean of the middle two for even lengths).
pub fn median(x: &[f64]) -> f64 {
    let mut v = x.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
