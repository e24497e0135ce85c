//! The written reading: every number and every "rises" or "falls" computed from the results.

use super::*;

pub(super) fn reading(d: &Data) -> Vec<String> {
    let mut out = Vec::new();
    let (ns, temps) = (d.ns(), d.temps());
    let (Some(&n_lo), Some(&n_hi), Some(t1), Some(n_mid)) =
        (ns.first(), ns.last(), d.t_one(), d.n_mid())
    else {
        return out;
    };
    let (Some(&t_lo), Some(&t_hi)) = (temps.first(), temps.last()) else { return out };
    let (nl, nh, nm) = (n_label(n_lo), n_label(n_hi), n_label(n_mid));
    let (tl, th, to) = (t_label(t_lo), t_label(t_hi), t_label(t1));
    let pt = |i: &str, m: &str, n: usize, t: f32| d.point(i, m, n, t);
    let opt_pct = |x: Option<f64>| x.map(pct).unwrap_or_else(|| "–".into());

    if let (Some(a), Some(b)) = (pt("iid", "plain", n_lo, t1), pt("iid", "plain", n_hi, t1)) {
        out.push(format!(
            "**Context length at the usual scale** (iid, plain, t = {to}): mean max-p {} from \
             {} (N = {nl}) to {} (N = {nh}), saturated rows {} → {}, and the effective support \
             exp(H) is {} of N at N = {nl} and {} at N = {nh}.",
            trend(a.max_p, b.max_p),
            sig(a.max_p),
            sig(b.max_p),
            pct(a.saturated),
            pct(b.saturated),
            pct(a.support / n_lo as f64),
            pct(b.support / n_hi as f64),
        ));
    }
    if let (Some(a), Some(b), Some(c), Some(e)) = (
        pt("iid", "plain", n_mid, t_lo),
        pt("iid", "plain", n_mid, t_hi),
        pt("iid", "plain", n_lo, t1),
        pt("iid", "plain", n_hi, t1),
    ) {
        out.push(format!(
            "**Temperature** (iid, plain, N = {nm}): from t = {tl} to t = {th}, mean max-p goes \
             from {} to {} ({}), saturated rows from {} to {}, and exp(H) from {} to {} keys. \
             Lengthening the context from N = {nl} to N = {nh} at t = {to} moves mean max-p by \
             {} instead.",
            sig(a.max_p),
            sig(b.max_p),
            ratio(a.max_p, b.max_p),
            pct(a.saturated),
            pct(b.saturated),
            sig(a.support),
            sig(b.support),
            ratio(c.max_p, e.max_p),
        ));
    }
    if let (Some(a), Some(b)) = (pt("iid", "plain", n_lo, t_hi), pt("iid", "plain", n_hi, t_hi)) {
        let why = if trend(a.max_p, b.max_p) == "falls" {
            ", as expected when more keys compete: the gap between the two largest of N \
             normal logits shrinks like `t/√(2 ln N)`, so the winner's lead narrows"
        } else {
            ""
        };
        out.push(format!(
            "**Long context at t = {th}** (iid, plain): mean max-p {} from {} (N = {nl}) to {} \
             (N = {nh}), saturated rows {} → {}{why}.",
            trend(a.max_p, b.max_p),
            sig(a.max_p),
            sig(b.max_p),
            pct(a.saturated),
            pct(b.saturated),
        ));
    }
    if let (Some(a), Some(b)) = (pt("peaky", "plain", n_lo, t1), pt("peaky", "plain", n_hi, t1)) {
        let (sa, sb) = (a.anchor_grad_share, b.anchor_grad_share);
        let hot = pt("peaky", "plain", n_hi, t_hi).map(|h| {
            format!(
                "; at t = {th} and N = {nh} max-p is {}, {} of rows are saturated and the \
                 anchors receive {} of the gradient",
                sig(h.max_p),
                pct(h.saturated),
                opt_pct(h.anchor_grad_share)
            )
        });
        out.push(format!(
            "**A few aligned keys** (peaky, plain, t = {to}): mean max-p {} from {} (N = {nl}) \
             to {} (N = {nh}), and the anchors' share of the key-gradient mass {} from {} to \
             {}{}.",
            trend(a.max_p, b.max_p),
            sig(a.max_p),
            sig(b.max_p),
            match (sa, sb) {
                (Some(x), Some(y)) => trend(x, y),
                _ => "goes",
            },
            opt_pct(sa),
            opt_pct(sb),
            hot.unwrap_or_default(),
        ));
    }
    let plain: Vec<&SinglePoint> = d.run.single.iter().filter(|p| p.modifier == "plain").collect();
    let by = |f: fn(&SinglePoint) -> f64, max: bool| {
        plain.iter().copied().reduce(|a, b| if (f(b) > f(a)) == max { b } else { a })
    };
    if let (Some(a), Some(b), Some(lo), Some(hi), Some(so), Some(sh)) = (
        pt("iid", "plain", n_mid, t_lo),
        pt("iid", "plain", n_mid, t_hi),
        by(|p| p.grad_mass, false),
        by(|p| p.grad_mass, true),
        by(|p| p.off_share, false),
        by(|p| p.off_share, true),
    ) {
        let at =
            |p: &SinglePoint| format!("{}, N = {}, t = {}", p.input, n_label(p.n), t_label(p.t));
        out.push(format!(
            "**Gradient** (plain): at N = {nm} (iid) the score-gradient mass per row {} from {} \
             at t = {tl} to {} at t = {th} ({}); over every plain point it ranges from {} ({}) \
             to {} ({}). The off-argmax share of it ranges from {} ({}) to {} ({}): it can fall \
             only to 1/2, so it is the mass per row, not the share, that shows how much \
             gradient the non-winning keys lose.",
            trend(a.grad_mass, b.grad_mass),
            sig(a.grad_mass),
            sig(b.grad_mass),
            ratio(a.grad_mass, b.grad_mass),
            sig(lo.grad_mass),
            at(lo),
            sig(hi.grad_mass),
            at(hi),
            pct(so.off_share),
            at(so),
            pct(sh.off_share),
            at(sh),
        ));
    }
    for input in d.inputs() {
        if let (Some(p), Some(c)) =
            (pt(input, "plain", n_hi, t_hi), pt(input, "softcap", n_hi, t_hi))
        {
            out.push(format!(
                "**Softcap c = {}** ({input}, N = {nh}, t = {th}), plain → softcap: mean max-p \
                 {} → {}, saturated rows {} → {}, exp(H) {} → {} keys, score-gradient mass per \
                 row {} → {} ({}){}.",
                d.run.settings.single.softcap,
                sig(p.max_p),
                sig(c.max_p),
                pct(p.saturated),
                pct(c.saturated),
                sig(p.support),
                sig(c.support),
                sig(p.grad_mass),
                sig(c.grad_mass),
                ratio(p.grad_mass, c.grad_mass),
                match (p.anchor_grad_share, c.anchor_grad_share) {
                    (Some(x), Some(y)) =>
                        format!(", anchors' gradient share {} → {}", pct(x), pct(y)),
                    _ => String::new(),
                },
            ));
        }
    }
    if let (Some(a), Some(b), Some(h), Some(p)) = (
        pt("iid", "sinks", n_lo, t1),
        pt("iid", "sinks", n_hi, t1),
        pt("iid", "sinks", n_hi, t_hi),
        pt("iid", "plain", n_lo, t1),
    ) {
        let (sa, sb, shh) = (a.sink_share, b.sink_share, h.sink_share);
        let word = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => trend(x, y),
            _ => "changes",
        };
        out.push(format!(
            "**Sinks** (iid, sink logit {}): the sink's mean share of a row's mass {} from {} \
             (N = {nl}) to {} (N = {nh}) at t = {to}, and {} to {} at t = {th} (N = {nh}). At \
             N = {nl}, t = {to} the score-gradient mass per row goes from {} (plain) to {} \
             ({}), mean max-p (the sink's counted) from {} to {}.",
            d.run.settings.single.sink,
            word(sa, sb),
            opt_pct(sa),
            opt_pct(sb),
            word(sb, shh),
            opt_pct(shh),
            sig(p.grad_mass),
            sig(a.grad_mass),
            ratio(p.grad_mass, a.grad_mass),
            sig(p.max_p),
            sig(a.max_p),
        ));
    }
    // depth
    let dts = d.depth_temps();
    for &t in &dts {
        let Some(r) = d.stack("plain", t) else { continue };
        let (Some(f), Some(l)) = (r.layers.first(), r.layers.last()) else { continue };
        let peak = r.layers.iter().max_by(|a, b| a.saturated.total_cmp(&b.saturated));
        let grow = match trend(l.dy_rms, f.dx_rms) {
            "rises" => "grows",
            "falls" => "shrinks",
            _ => "stays about the same",
        };
        out.push(format!(
            "**Depth, t = {}** (plain, N = {}): H / ln n {} from {} (block 1) to {} (block {}); \
             saturated rows {} → {}{}. Per unit of the gradient a block receives, its \
             score-gradient mass per row {} from {} (block 1) to {} (block {}). Going down the \
             stack the gradient {}: RMS {} entering block {} from the loss, {} at the input of \
             block 1 ({}); block 1's attention branch passes {} of it, block {}'s {}.",
            t_label(t),
            d.run.settings.depth.n,
            trend(f.entropy_norm, l.entropy_norm),
            sig(f.entropy_norm),
            sig(l.entropy_norm),
            l.layer,
            pct(f.saturated),
            pct(l.saturated),
            peak.filter(|p| p.saturated > f.saturated.max(l.saturated))
                .map(|p| format!(" (most at block {}: {})", p.layer, pct(p.saturated)))
                .unwrap_or_default(),
            trend(unit_mass(f), unit_mass(l)),
            sig(unit_mass(f)),
            sig(unit_mass(l)),
            l.layer,
            grow,
            sig(l.dy_rms),
            l.layer,
            sig(f.dx_rms),
            ratio(l.dy_rms, f.dx_rms),
            sig(f.dx_attn_rms),
            l.layer,
            sig(l.dx_attn_rms),
        ));
    }
    if let Some(&t) = dts.last() {
        let get = |m: &str| d.stack(m, t);
        let last = |m: &str| get(m).and_then(|r| r.layers.last());
        let first = |m: &str| get(m).and_then(|r| r.layers.first());
        if let (Some(p), Some(c), Some(k), Some(p1), Some(c1), Some(k1)) = (
            last("plain"),
            last("softcap"),
            last("sinks"),
            first("plain"),
            first("softcap"),
            first("sinks"),
        ) {
            out.push(format!(
                "**Remedies in depth** (t = {}; plain, softcap, sinks): at block {} H / ln n \
                 {}, {}, {} and saturated rows {}, {}, {}; at block 1 saturated rows {}, {}, \
                 {} and the gradient's RMS {}, {}, {}.",
                t_label(t),
                p.layer,
                sig(p.entropy_norm),
                sig(c.entropy_norm),
                sig(k.entropy_norm),
                pct(p.saturated),
                pct(c.saturated),
                pct(k.saturated),
                pct(p1.saturated),
                pct(c1.saturated),
                pct(k1.saturated),
                sig(p1.dx_rms),
                sig(c1.dx_rms),
                sig(k1.dx_rms),
            ));
        }
    }
    out
}

/// A block's score-gradient mass per row per unit RMS of the gradient it
/// receives.
pub(super) fn unit_mass(l: &DepthLayer) -> f64 {
    if l.dy_rms > 0.0 { l.grad_mass / l.dy_rms } else { f64::NAN }
}
