//! Table cells and markdown tables: number formats, the cell of a row
//! that was not measured ("needs X GiB", "error¹", "–"), speedups.

use super::select::ok;
use crate::results::{Row, Status};
use crate::units::fmt_bytes;
use std::fmt::Write as _;

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
pub(super) fn fmt_time(ms: f64) -> String {
    if ms >= 10_000.0 { format!("{} s", fmt_num(ms / 1e3)) } else { format!("{} ms", fmt_num(ms)) }
}

/// GiB with one decimal, as in "needs 32.0 GiB".
pub(super) fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// The cell of a row that was not measured: "needs 32.0 GiB" or
/// "error¹" in a primary column (time, extra memory), "–" elsewhere and
/// when the row is absent.
pub(super) fn not_ok(r: Option<&Row>, primary: bool) -> Option<String> {
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

pub(super) fn cell(r: Option<&Row>, primary: bool, f: impl Fn(&Row) -> Option<String>) -> String {
    not_ok(r, primary).unwrap_or_else(|| r.and_then(f).unwrap_or_else(|| "–".into()))
}

pub(super) fn ms_cell(r: Option<&Row>) -> String {
    cell(r, true, |r| {
        r.median_ms.map(|m| format!("{}{}", fmt_num(m), if r.samples <= 1 { "*" } else { "" }))
    })
}

pub(super) fn gflops_cell(r: Option<&Row>) -> String {
    cell(r, false, |r| r.gflops.map(fmt_num))
}

pub(super) fn pct_cell(r: Option<&Row>) -> String {
    cell(r, false, |r| r.pct_peak.map(|p| format!("{p:.0}%")))
}

pub(super) fn bytes_cell(
    r: Option<&Row>,
    primary: bool,
    f: impl Fn(&Row) -> Option<u64>,
) -> String {
    cell(r, primary, |r| f(r).map(|b| fmt_bytes(b as f64)))
}

pub(super) fn err_cell(r: Option<&Row>) -> String {
    cell(r, false, |r| r.max_abs_err.map(|e| format!("{e:.1e}")))
}

pub(super) fn speedup_cell(naive: Option<&Row>, flash: Option<&Row>) -> String {
    match (ok(naive), ok(flash)) {
        (Some(a), Some(b)) => {
            format!("{:.2}×", a.median_ms.unwrap_or(f64::NAN) / b.median_ms.unwrap_or(f64::NAN))
        }
        _ => "–".into(),
    }
}

pub(super) fn table(out: &mut String, head: &[String], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let align: Vec<&str> = head.iter().map(|_| "---:").collect();
    let _ = writeln!(out, "|{}|", align.join("|"));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

pub(super) fn n_label(n: usize) -> String {
    if n >= 1024 && n.is_multiple_of(1024) { format!("{}k", n / 1024) } else { n.to_string() }
}

pub(super) fn mask_title(m: &str) -> String {
    match m {
        "full" => "no mask".into(),
        "causal" => "causal".into(),
        w => format!("window {w}"),
    }
}
