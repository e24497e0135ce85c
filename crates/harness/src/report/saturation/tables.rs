//! The tables: one layer, depth, and the full data.

use super::*;

/// One table per input and quantity: rows N × modifier, columns t.
pub(super) fn single_table(
    s: &mut String,
    d: &Data,
    input: &str,
    title: &str,
    cell: &dyn Fn(&SinglePoint) -> Option<String>,
) {
    let temps = d.temps();
    let _ = writeln!(s, "**{title}** ({input})\n");
    let mut head = vec!["N".to_string(), "modifier".to_string()];
    head.extend(temps.iter().map(|t| format!("t = {}", t_label(*t))));
    let mut body = Vec::new();
    for n in d.ns() {
        for m in d.modifiers() {
            let mut row = vec![n_label(n), m.to_string()];
            row.extend(
                temps
                    .iter()
                    .map(|t| d.point(input, m, n, *t).and_then(cell).unwrap_or_else(|| "–".into())),
            );
            body.push(row);
        }
    }
    table(s, &head, &body);
}

pub(super) fn single_section(s: &mut String, d: &Data) {
    if d.run.single.is_empty() {
        return;
    }
    let _ = writeln!(s, "## One layer\n");
    let _ = writeln!(s, "![one layer: max-p, support and gradient vs N](saturation-single.svg)\n");
    let _ = writeln!(
        s,
        "![plain, softcap and sinks vs N](saturation-modifiers.svg)\n\nEach cell is a mean \
         over the point's rows. The full data (every quantity of every point, and its time) \
         is at the end of the page.\n"
    );
    for input in d.inputs() {
        let _ = writeln!(s, "### Inputs: {input}\n");
        single_table(s, d, input, "mean max-p (saturated rows)", &|p| {
            Some(format!("{} ({})", sig(p.max_p), pct(p.saturated)))
        });
        single_table(s, d, input, "mean exp(H), keys (share of N)", &|p| {
            Some(format!("{} ({})", sig(p.support), pct(p.support / p.n as f64)))
        });
        single_table(s, d, input, "score-gradient mass per row (off-argmax share)", &|p| {
            Some(format!("{} ({})", sig(p.grad_mass), pct(p.off_share)))
        });
        if d.run.single.iter().any(|p| p.input == input && p.anchor_grad_share.is_some()) {
            single_table(s, d, input, "anchor keys' share of the key-gradient mass", &|p| {
                p.anchor_grad_share.map(pct)
            });
        }
    }
    if d.run.single.iter().any(|p| p.sink_share.is_some()) {
        let _ = writeln!(s, "### The sink's share of each row's mass\n");
        let temps = d.temps();
        let mut head = vec!["N".to_string(), "inputs".to_string()];
        head.extend(temps.iter().map(|t| format!("t = {}", t_label(*t))));
        let mut body = Vec::new();
        for n in d.ns() {
            for input in d.inputs() {
                let mut row = vec![n_label(n), input.to_string()];
                row.extend(temps.iter().map(|t| {
                    d.point(input, "sinks", n, *t)
                        .and_then(|p| p.sink_share)
                        .map(pct)
                        .unwrap_or_else(|| "–".into())
                }));
                body.push(row);
            }
        }
        table(s, &head, &body);
    }
}

/// The blocks the depth tables show: 1, 2, 4, … and the last.
pub(super) fn shown_layers(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> =
        std::iter::successors(Some(1usize), |x| Some(x * 2)).take_while(|x| *x <= n).collect();
    if v.last() != Some(&n) && n > 0 {
        v.push(n);
    }
    v
}

pub(super) fn depth_row(m: &str, l: &DepthLayer) -> Vec<String> {
    vec![
        l.layer.to_string(),
        m.to_string(),
        sig(l.entropy),
        sig(l.entropy_norm),
        sig(l.max_p),
        pct(l.saturated),
        pct(l.off_share),
        sig(l.grad_mass),
        sig(unit_mass(l)),
        pct(l.key_top1),
        sig(l.dy_rms),
        sig(l.dx_rms),
        sig(l.dx_attn_rms),
    ]
}

pub(super) const DEPTH_HEAD: [&str; 13] = [
    "block",
    "modifier",
    "H (nats)",
    "H / ln n",
    "max-p",
    "saturated",
    "off-argmax share",
    "score-grad mass",
    "mass / ‖dY‖",
    "top-1% keys' share",
    "‖dY‖ from above",
    "‖dX‖ at input",
    "‖dX‖ via attention",
];

pub(super) fn depth_section(s: &mut String, d: &Data) {
    if d.run.depth.is_empty() {
        return;
    }
    let set = &d.run.settings.depth;
    let _ = writeln!(s, "## Depth: {} blocks at N = {}\n", set.layers, n_label(set.n));
    let _ = writeln!(s, "![per block: entropy, saturation, gradients](saturation-depth.svg)\n");
    let head: Vec<String> = DEPTH_HEAD.iter().map(|h| h.to_string()).collect();
    for t in d.depth_temps() {
        let _ = writeln!(s, "### t = {} (scale {}/√{})\n", t_label(t), t_label(t), set.head_dim);
        let mut body = Vec::new();
        for l in shown_layers(set.layers) {
            for r in d.run.depth.iter().filter(|r| r.t == t) {
                if let Some(x) = r.layers.iter().find(|x| x.layer == l) {
                    body.push(depth_row(&r.modifier, x));
                }
            }
        }
        table(s, &head, &body);
    }
}

pub(super) fn full_data(s: &mut String, d: &Data) {
    let _ = writeln!(s, "## Full data\n");
    let _ = writeln!(s, "<details><summary>Every one-layer point</summary>\n");
    let head: Vec<String> = [
        "inputs",
        "modifier",
        "N",
        "t",
        "B × Nq",
        "max-p",
        "saturated",
        "H (nats)",
        "exp(H)",
        "off-argmax share",
        "score-grad mass",
        "anchors' share",
        "sink's share",
        "ms",
    ]
    .iter()
    .map(|h| h.to_string())
    .collect();
    let body: Vec<Vec<String>> = d
        .run
        .single
        .iter()
        .map(|p| {
            vec![
                p.input.clone(),
                p.modifier.clone(),
                n_label(p.n),
                t_label(p.t),
                format!("{} × {}", p.batch, p.q_rows),
                sig(p.max_p),
                pct(p.saturated),
                sig(p.entropy),
                sig(p.support),
                pct(p.off_share),
                sig(p.grad_mass),
                p.anchor_grad_share.map(pct).unwrap_or_else(|| "–".into()),
                p.sink_share.map(pct).unwrap_or_else(|| "–".into()),
                fmt_num(p.ms),
            ]
        })
        .collect();
    table(s, &head, &body);
    let _ = writeln!(s, "</details>\n");
    if d.run.depth.is_empty() {
        return;
    }
    let _ = writeln!(s, "<details><summary>Every block of every stack</summary>\n");
    let head: Vec<String> = DEPTH_HEAD.iter().map(|h| h.to_string()).collect();
    for r in &d.run.depth {
        let _ = writeln!(
            s,
            "**{}, t = {}** ({} to run forward, recompute and backward)\n",
            r.modifier,
            t_label(r.t),
            fmt_duration(r.ms / 1e3)
        );
        let body: Vec<Vec<String>> = r.layers.iter().map(|l| depth_row(&r.modifier, l)).collect();
        table(s, &head, &body);
    }
    let _ = writeln!(s, "</details>");
}
