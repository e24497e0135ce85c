//! The layer section of `docs/results.md`: a whole
//! `MultiHeadAttention` forward and backward, each call's time split
//! between the projections' GEMMs and the flash kernel (tables per thread
//! count: N × heads × pass rows; time, each part's time, share and
//! GFLOP/s, the FLOPs credited, the error).

use super::cells::*;
use super::select::{ok, plural};
use crate::config::Kind;
use crate::results::{Row, RunFile};
use std::fmt::Write as _;

/// The run's layer rows.
pub(super) fn layer_rows(run: &RunFile) -> Vec<&Row> {
    run.rows.iter().filter(|r| r.config.kind.is_layer()).collect()
}

/// "12.3 (45%)": a part's time and its share of the call.
fn part_cell(r: Option<&Row>, part: impl Fn(&crate::results::LayerSplit) -> f64) -> String {
    cell(r, true, |r| {
        let (split, total) = (r.layer.as_ref()?, r.median_ms?);
        let ms = part(split);
        Some(format!("{} ({:.0}%)", fmt_num(ms), 100.0 * ms / total))
    })
}

/// The "Attention layer" section (nothing when the run has no layer rows).
pub(super) fn layer_section(s: &mut String, run: &RunFile) {
    let rows = layer_rows(run);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(s, "## Attention layer: projections and attention\n");
    let _ = writeln!(
        s,
        "- **Problem**: `attnlab::MultiHeadAttention`, self-attention over N tokens of \
         `d_model` = Hq·d (B = 1, seeded standard-normal tokens, Xavier-uniform weights, no \
         biases), the flash kernel in between; **forward** is `forward_train` (Y and the \
         activations the backward needs), **backward** is `backward` (dX, every dW) from a \
         forward run before, untimed. Each call is timed whole and in two parts \
         (`attnlab::layer::PhaseTimes`): the four projections' GEMMs (Q, K, V and output; \
         backward: their dW and dX) and the attention kernel (backward: the flash backward), \
         each with the buffers it allocates; the rest of the call (input checks) is in neither. \
         Every time is the median over the timed calls (`*`: one call), and the shares are of \
         the median call."
    );
    let _ = writeln!(
        s,
        "- **FLOPs**: projections `2·N·d_model·(Hq·d + 2·Hkv·d + Hq·d)` (four GEMMs; backward \
         2 × that: dW and dX of each), attention as in the forward and backward tables (causal \
         `2·Hq·N²·d`, backward 2.5 ×). For d_model 1024, Hq 16, d 64 that is, per token, \
         8.4 MFLOP of projections for MHA (Hkv 16) and 5.2 MFLOP for GQA (Hkv 4); the \
         attention's `2·16·N·64` per token grows with N. **GFLOP/s** = each part's FLOPs / its \
         time. **err** = max |O − O_f64| of the attention (the oracle over the layer's own Q, \
         K, V) and |Y − O·W_O| (f64) over 32 sampled rows (forward), max |dW_O − Oᵀ·dY| (f64) \
         over 32 sampled entries (backward).\n"
    );
    let mut threads: Vec<usize> = rows.iter().map(|r| r.config.threads).collect();
    threads.sort_unstable_by(|a, b| b.cmp(a));
    threads.dedup();
    for t in threads {
        let mut sel: Vec<&Row> = rows.iter().copied().filter(|r| r.config.threads == t).collect();
        sel.sort_by_key(|r| {
            let c = &r.config;
            (c.kind == Kind::LayerBackward, std::cmp::Reverse(c.kv_heads), c.q_len)
        });
        let first = &sel[0].config;
        let _ = writeln!(
            s,
            "### Layer, d_model = {}, Hq = {}, d = {}, {}, {}, {t} thread{}\n",
            first.d_model(),
            first.q_heads,
            first.head_dim,
            mask_title(&first.mask.name()),
            first.dtype.name(),
            plural(t)
        );
        let head: Vec<String> = [
            "pass",
            "heads",
            "N",
            "time ms",
            "projections ms (share)",
            "projections GFLOP/s",
            "attention ms (share)",
            "attention GFLOP/s",
            "GFLOP proj + attn",
            "err",
        ]
        .map(String::from)
        .to_vec();
        let body: Vec<Vec<String>> = sel
            .iter()
            .map(|&r| {
                let c = &r.config;
                let split = ok(Some(r)).and_then(|r| r.layer);
                let flops = c
                    .layer_flops()
                    .map(|(p, a)| format!("{} + {}", fmt_num(p * 1e-9), fmt_num(a * 1e-9)));
                vec![
                    if c.kind == Kind::LayerBackward { "backward" } else { "forward" }.into(),
                    format!("{} {}/{}", r.grouping.to_uppercase(), c.q_heads, c.kv_heads),
                    n_label(c.q_len),
                    ms_cell(Some(r)),
                    part_cell(Some(r), |l| l.proj_ms),
                    split.map(|l| fmt_num(l.proj_gflops)).unwrap_or_else(|| "–".into()),
                    part_cell(Some(r), |l| l.attn_ms),
                    split.map(|l| fmt_num(l.attn_gflops)).unwrap_or_else(|| "–".into()),
                    flops.unwrap_or_else(|| "–".into()),
                    err_cell(Some(r)),
                ]
            })
            .collect();
        table(s, &head, &body);
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn layer_flops_per_token() {
        // the numbers the section's text quotes
        let per_token = |kv: usize| Config::layer(kv, 1, 1, false).layer_flops().unwrap().0;
        assert_eq!(per_token(16), 2.0 * 1024.0 * 4096.0); // 8.4 MFLOP
        assert_eq!(per_token(4), 2.0 * 1024.0 * (1024.0 + 512.0 + 1024.0)); // 5.2 MFLOP
        let (p, a) = Config::layer(4, 1, 4096, true).layer_flops().unwrap();
        assert_eq!(p, 2.0 * 4096.0 * per_token(4));
        assert_eq!(a, 2.5 * 2.0 * 16.0 * 4096.0 * 4096.0 * 64.0);
    }
}
