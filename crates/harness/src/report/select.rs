//! Which rows a table or plot shows: prefill or decode rows, the run's
//! main combination ([`Main`]), kernels and masks present, lookups.

use crate::config::{Config, Dtype, Kind};
use crate::results::{Row, RunFile, Status};
use std::collections::BTreeSet;

/// The run with its prefill rows of plain calls only (what every part
/// but the decode, backward and score-modifier sections is made of).
pub(super) fn prefill_only(run: &RunFile) -> RunFile {
    let rows = run
        .rows
        .iter()
        .filter(|r| r.config.kind == Kind::Prefill && r.config.mods.is_plain())
        .cloned()
        .collect();
    RunFile { rows, ..run.clone() }
}

/// The decode rows of plain calls.
pub(super) fn decode_rows(run: &RunFile) -> Vec<&Row> {
    run.rows.iter().filter(|r| r.config.kind == Kind::Decode && r.config.mods.is_plain()).collect()
}

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

pub(super) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn most_frequent(v: &[usize]) -> Option<usize> {
    let set: BTreeSet<usize> = v.iter().copied().collect();
    set.into_iter().max_by_key(|x| v.iter().filter(|y| *y == x).count())
}

pub(super) const GROUPINGS: [(&str, &str); 3] = [("mha", "MHA"), ("gqa", "GQA"), ("mqa", "MQA")];

/// Kernels present, naive and flash first.
pub(super) fn kernels(run: &RunFile) -> Vec<String> {
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
pub(super) fn masks(run: &RunFile) -> Vec<String> {
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

pub(super) fn heads_of(rows: &[&Row]) -> String {
    rows.first()
        .map(|r| format!("Hq = {}, Hkv = {}", r.config.q_heads, r.config.kv_heads))
        .unwrap_or_default()
}

pub(super) fn find<'a>(rows: &[&'a Row], kernel: &str, n: usize) -> Option<&'a Row> {
    rows.iter().copied().find(|r| r.config.kernel == kernel && r.config.q_len == n)
}

pub(super) fn ok(r: Option<&Row>) -> Option<&Row> {
    r.filter(|r| r.status == Status::Ok && r.median_ms.is_some())
}
