//! The "Score modifiers" section of `docs/results.md`: each row with
//! modifiers (softcap, ALiBi, sinks, bias; [`crate::config::Mods`]) next
//! to the plain call of the same configuration from the same run, their
//! ratio, and for a bias the bound `2 × (plain + reading the bias once)`.
//! Nothing when the run has no such rows (files from before them), so
//! their pages render as they did.

use super::cells::*;
use super::select::*;
use crate::config::{Kind, Mods, Sinks, Slopes};
use crate::results::{Row, RunFile};
use crate::units::fmt_bytes;
use std::fmt::Write as _;

/// The run's rows with score modifiers.
pub(super) fn modifier_rows(run: &RunFile) -> Vec<&Row> {
    run.rows.iter().filter(|r| !r.config.mods.is_plain()).collect()
}

/// "softcap 50 + ALiBi + sinks + bias", with given values spelled out.
fn label(m: &Mods) -> String {
    let values = |v: &[f32]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ");
    let mut parts = Vec::new();
    if let Some(c) = m.softcap {
        parts.push(format!("softcap {c}"));
    }
    match &m.alibi {
        Some(Slopes::Default) => parts.push("ALiBi".into()),
        Some(Slopes::Values(v)) => parts.push(format!("ALiBi (slopes {})", values(v))),
        None => {}
    }
    match &m.sinks {
        Some(Sinks::Random) => parts.push("sinks".into()),
        Some(Sinks::Values(v)) => parts.push(format!("sinks ({})", values(v))),
        None => {}
    }
    if m.bias.is_some() {
        parts.push("bias".into());
    }
    parts.join(" + ")
}

/// The heading of one plain configuration.
fn title(r: &Row) -> String {
    let c = &r.config;
    let g = GROUPINGS
        .iter()
        .find(|(k, _)| *k == r.grouping)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| r.grouping.to_uppercase());
    let t = format!("{} thread{}", c.threads, plural(c.threads));
    match c.kind {
        Kind::Decode => format!(
            "Decode, {g} (Hq = {}, Hkv = {}), {} cache, L = {}, nq = {}, d = {}, {t}",
            c.q_heads,
            c.kv_heads,
            c.dtype.name(),
            n_label(c.kv_len),
            c.q_len,
            c.head_dim
        ),
        k => {
            let n = if c.q_len == c.kv_len {
                n_label(c.q_len)
            } else {
                format!("{}×{}", n_label(c.q_len), n_label(c.kv_len))
            };
            format!(
                "{} {}, {g} (Hq = {}, Hkv = {}), {}, N = {n}, d = {}, {}, {t}",
                if k == Kind::Backward { "Backward" } else { "Prefill" },
                c.kernel,
                c.q_heads,
                c.kv_heads,
                mask_title(&c.mask.name()),
                c.head_dim,
                c.dtype.name()
            )
        }
    }
}

/// The "Score modifiers" section (see the module docs).
pub(super) fn mods_section(s: &mut String, run: &RunFile) {
    let rows = modifier_rows(run);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Score modifiers\n");
    let _ = writeln!(
        s,
        "- **Problem**: the calls above with a score modifier (`docs/semantics.md`): a logit \
         softcap, ALiBi with the paper's slopes, one sink logit per query head (seeded \
         standard-normal), an additive f32 bias of shape `[1, 1, Nq, Nk]` (seeded \
         standard-normal, broadcast over heads), and all of them together. The error is \
         against the f64 oracle with the same modifiers."
    );
    let _ = writeln!(
        s,
        "- **plain** is the same configuration without modifiers, from this run; **overhead** \
         = time / plain time. **bias read once** is the time of summing the bias buffer once \
         in the same process (median of {} reads): the least extra memory traffic a bias \
         costs. The target for a call with a bias is **2 × (plain + read once)**.\n",
        crate::results::BIAS_READS
    );
    // One table per plain configuration, in the run's order.
    let mut bases: Vec<crate::config::Config> = Vec::new();
    for r in &rows {
        let base = r.config.clone().with_mods(Mods::default());
        if !bases.contains(&base) {
            bases.push(base);
        }
    }
    for base in bases {
        let plain = run.rows.iter().find(|r| r.config == base);
        let sel: Vec<&Row> = rows
            .iter()
            .copied()
            .filter(|r| r.config.clone().with_mods(Mods::default()) == base)
            .collect();
        let decode = base.kind == Kind::Decode;
        let any_bias = sel.iter().any(|r| r.config.mods.bias.is_some());
        let _ = writeln!(s, "### {}\n", title(sel[0]));
        let unit = if decode { "µs" } else { "ms" };
        let mut head: Vec<String> = vec![
            "modifiers".into(),
            format!("time {unit}"),
            format!("plain {unit}"),
            "overhead".into(),
        ];
        if any_bias {
            head.extend(
                ["bias", "bias read once ms", "2 × (plain + read) ms", "within"].map(String::from),
            );
        }
        head.push("err".into());
        let time = |r: Option<&Row>| if decode { us_cell(r) } else { ms_cell(r) };
        let mut body = Vec::new();
        for r in sel {
            let mut row = vec![label(&r.config.mods), time(Some(r)), time(plain)];
            let (t, p) =
                (ok(Some(r)).and_then(|r| r.median_ms), ok(plain).and_then(|r| r.median_ms));
            row.push(match (t, p) {
                (Some(t), Some(p)) => format!("{:.2}×", t / p),
                _ => "–".into(),
            });
            if any_bias {
                let read = r.bias_read_ms.filter(|_| r.config.mods.bias.is_some());
                let bound = match (p, read) {
                    (Some(p), Some(b)) => Some(2.0 * (p + b)),
                    _ => None,
                };
                let bytes = r.config.mods.bias_bytes(r.config.q_len, r.config.kv_len);
                row.push(if bytes > 0 { fmt_bytes(bytes as f64) } else { "–".into() });
                row.push(read.map(fmt_num).unwrap_or_else(|| "–".into()));
                row.push(bound.map(fmt_num).unwrap_or_else(|| "–".into()));
                row.push(match (t, bound) {
                    (Some(t), Some(b)) if t <= b => "yes".into(),
                    (Some(_), Some(_)) => "**no**".into(),
                    _ => "–".into(),
                });
            }
            row.push(err_cell(Some(r)));
            body.push(row);
        }
        table(s, &head, &body);
    }
}

fn us_cell(r: Option<&Row>) -> String {
    cell(r, true, |r| {
        r.us_per_step.map(|u| format!("{}{}", fmt_num(u), if r.samples <= 1 { "*" } else { "" }))
    })
}
