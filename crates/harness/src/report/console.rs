//! One row on the terminal: `attn bench`'s summary, `attn decode`'s line
//! and the sweep's progress line.

use crate::config::Kind;
use crate::results::{Row, Status};
use crate::units::fmt_bytes;

/// `attn bench`'s summary of one row: its id, then time, speed, memory and
/// accuracy (or why it was not measured), one line each.
pub fn summary(r: &Row) -> String {
    let mut lines = vec![r.id.clone()];
    match r.status {
        Status::Ok => {
            let ms = r.median_ms.unwrap_or(f64::NAN);
            lines.push(format!(
                "  time      {ms:.3} ms (median of {}, first call {:.3} ms)",
                r.samples,
                r.first_call_ms.unwrap_or(f64::NAN)
            ));
            lines.push(format!(
                "  speed     {:.1} GFLOP/s, {:.1}% of the {:.0} GFLOP/s FMA peak",
                r.gflops.unwrap_or(f64::NAN),
                r.pct_peak.unwrap_or(f64::NAN),
                r.peak_gflops.unwrap_or(f64::NAN)
            ));
            lines.push(format!(
                "  memory    extra {} (workspace_bytes {}), peak RSS {} (+{} over the call)",
                opt_bytes(r.extra_bytes),
                fmt_bytes(r.workspace_bytes as f64),
                opt_bytes(r.peak_rss_bytes),
                opt_bytes(r.rss_increase_bytes)
            ));
            if let Some(t) = &r.tiles {
                lines.push(format!("  tiles     {t} on {}", r.cpu));
            }
            if let Some(b) = r.bias_read_ms {
                lines.push(format!("  bias      read once in {b:.3} ms"));
            }
            if let Some(e) = r.max_abs_err {
                lines.push(format!(
                    "  accuracy  max abs err {e:.2e} over {} sampled rows (f64)",
                    r.err_rows
                ));
            }
        }
        Status::Skipped | Status::Error => lines.push(format!("  {:?}: {}", r.status, r.note)),
    }
    lines.join("\n") + "\n"
}

/// `attn decode`'s line: the configuration, time per step, GB/s of K+V
/// and its share of the measured read bandwidth.
pub fn decode_line(r: &Row) -> String {
    let c = &r.config;
    format!(
        "{}: B={} Hq={} Hkv={} nq={} L={} d={} threads={}: {:.3} ms/step, {:.1} GB/s of K+V \
         ({:.0}% of {:.1} GB/s measured read bandwidth)",
        r.id,
        c.batch,
        c.q_heads,
        c.kv_heads,
        c.q_len,
        c.kv_len,
        c.head_dim,
        c.threads,
        r.median_ms.unwrap_or(f64::NAN),
        r.gbs.unwrap_or(f64::NAN),
        r.pct_bandwidth.unwrap_or(f64::NAN),
        r.read_gbs.unwrap_or(f64::NAN)
    )
}

/// The sweep's line for a finished row: time and speed (decode: µs per
/// step and GB/s), or why it was not measured.
pub fn outcome(row: &Row) -> String {
    match row.status {
        Status::Ok if row.config.kind == Kind::Decode => format!(
            "{:.1} us/step, {:.1} GB/s of K+V ({:.0}% of read bandwidth), err {:.1e}",
            row.us_per_step.unwrap_or(f64::NAN),
            row.gbs.unwrap_or(f64::NAN),
            row.pct_bandwidth.unwrap_or(f64::NAN),
            row.max_abs_err.unwrap_or(f64::NAN)
        ),
        Status::Ok if row.layer.is_some() => {
            let l = row.layer.expect("checked");
            format!(
                "{:.3} ms: projections {:.3} ms ({:.1} GFLOP/s), attention {:.3} ms ({:.1} \
                 GFLOP/s), err {:.1e}",
                row.median_ms.unwrap_or(f64::NAN),
                l.proj_ms,
                l.proj_gflops,
                l.attn_ms,
                l.attn_gflops,
                row.max_abs_err.unwrap_or(f64::NAN)
            )
        }
        Status::Ok => format!(
            "{:.3} ms, {:.1} GFLOP/s, extra {}, err {:.1e}",
            row.median_ms.unwrap_or(f64::NAN),
            row.gflops.unwrap_or(f64::NAN),
            opt_bytes(row.extra_bytes),
            row.max_abs_err.unwrap_or(f64::NAN)
        ),
        Status::Skipped => format!("skipped: {}", row.note),
        Status::Error => format!("error: {}", row.note),
    }
}

/// Bytes, or "?" where not measured.
fn opt_bytes(b: Option<u64>) -> String {
    b.map(|b| fmt_bytes(b as f64)).unwrap_or_else(|| "?".into())
}
