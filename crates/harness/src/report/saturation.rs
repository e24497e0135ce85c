//! `docs/saturation.md` and its plots (`docs/saturation-*.svg`) from a
//! saturation results file (`attn saturate`): the setup, stated from the
//! run's settings; a reading whose every number and every "rises" or
//! "falls" is computed from the results; the tables; the full data.
//!
//! A pure function of one [`SaturationFile`] ([`render`], [`plots`]);
//! [`generate`] writes the files, each all or nothing.

use super::cells::{fmt_num, n_label, table};
use super::chart::{N_AXIS, PlotResult, Series, e2s, fmt_axis, panel, slope};
use crate::saturate::results::{
    DepthLayer, DepthRun, SATURATED_P, SaturationFile, SinglePoint, write_atomic,
};
use crate::units::fmt_duration;
use plotters::prelude::*;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The plot files, by name, as [`render`] links them.
pub const PLOTS: [&str; 3] =
    ["saturation-single.svg", "saturation-modifiers.svg", "saturation-depth.svg"];

/// Writes `saturation.md` and the plots into `docs`; `source` names the
/// results file in the text. Returns the paths written.
pub fn generate(run: &SaturationFile, docs: &Path, source: &str) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(docs)?;
    let mut written = Vec::new();
    for (name, svg) in PLOTS.iter().zip(plots(run)) {
        match svg {
            Ok(s) => {
                let path = docs.join(name);
                write_atomic(&path, &s)?;
                written.push(path);
            }
            Err(e) => eprintln!("saturation report: no {name}: {e}"),
        }
    }
    let md = docs.join("saturation.md");
    write_atomic(&md, &render(run, source))?;
    written.push(md);
    Ok(written)
}

// ---------------------------------------------------------------- numbers

fn pct(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x != 0.0 && x.abs() < 0.001 {
        format!("{:.2}%", 100.0 * x)
    } else {
        format!("{:.1}%", 100.0 * x)
    }
}

/// Three significant digits for quantities that span decades.
fn sig(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x == 0.0 {
        "0".into()
    } else if x.abs() >= 0.01 {
        fmt_num(x)
    } else {
        format!("{x:.2e}")
    }
}

fn t_label(t: f32) -> String {
    format!("{t}")
}

/// "rises", "falls" or "stays about the same" from `a` to `b` (a change
/// within 5% of the larger is "about the same").
fn trend(a: f64, b: f64) -> &'static str {
    let tol = 0.05 * a.abs().max(b.abs());
    if b > a + tol {
        "rises"
    } else if b < a - tol {
        "falls"
    } else {
        "stays about the same"
    }
}

/// "×12" or "×0.083" for `b/a`.
fn ratio(a: f64, b: f64) -> String {
    if a == 0.0 { "–".into() } else { format!("×{}", sig(b / a)) }
}

struct Data<'a> {
    run: &'a SaturationFile,
}

impl<'a> Data<'a> {
    fn point(&self, input: &str, m: &str, n: usize, t: f32) -> Option<&'a SinglePoint> {
        self.run.single.iter().find(|p| p.input == input && p.modifier == m && p.n == n && p.t == t)
    }
    fn ns(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.run.single.iter().map(|p| p.n).collect();
        v.sort();
        v.dedup();
        v
    }
    fn temps(&self) -> Vec<f32> {
        let mut v: Vec<f32> = self.run.single.iter().map(|p| p.t).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.dedup();
        v
    }
    fn inputs(&self) -> Vec<&'a str> {
        let mut v: Vec<&str> = Vec::new();
        for p in &self.run.single {
            if !v.contains(&p.input.as_str()) {
                v.push(&p.input);
            }
        }
        v
    }
    fn modifiers(&self) -> Vec<&'a str> {
        let mut v: Vec<&str> = Vec::new();
        for p in &self.run.single {
            if !v.contains(&p.modifier.as_str()) {
                v.push(&p.modifier);
            }
        }
        v
    }
    /// The multiplier nearest 1 (the plain `1/√d` scale).
    fn t_one(&self) -> Option<f32> {
        self.temps().into_iter().min_by(|a, b| (a - 1.0).abs().total_cmp(&(b - 1.0).abs()))
    }
    /// The N nearest 4096 (the depth experiment's), else the middle one.
    fn n_mid(&self) -> Option<usize> {
        let ns = self.ns();
        ns.iter().copied().min_by_key(|n| n.abs_diff(4096))
    }
    fn stack(&self, m: &str, t: f32) -> Option<&'a DepthRun> {
        self.run.depth.iter().find(|r| r.modifier == m && r.t == t)
    }
    fn depth_temps(&self) -> Vec<f32> {
        let mut v: Vec<f32> = self.run.depth.iter().map(|r| r.t).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.dedup();
        v
    }
}

// ---------------------------------------------------------------- page

/// `docs/saturation.md`.
pub fn render(run: &SaturationFile, source: &str) -> String {
    let data = Data { run };
    let mut s = String::new();
    let m = &run.machine;
    let _ = writeln!(s, "# Softmax saturation: winner-take-all, measured\n");
    let _ = writeln!(
        s,
        "<!-- generated by `attn saturate` from {source}; do not edit -->\n\nGenerated by `attn \
         saturate` (profile `{}`) from `{source}`; `attn saturate --report-only` regenerates \
         this page and its plots from that file. Do not edit by hand: every number below, in \
         the text too, is computed from that one run.\n",
        run.profile
    );
    let _ = writeln!(
        s,
        "**Run**: {}, commit `{}`, {} ({}), {} threads, {} logical CPUs; rustc {}; the run \
         took {}.\n",
        m.date_utc,
        m.git_commit,
        m.cpu_model,
        if m.cpu_id.is_empty() { "–" } else { &m.cpu_id },
        run.threads,
        m.logical_cpus,
        m.rustc.trim_start_matches("rustc "),
        fmt_duration(run.duration_s)
    );
    let _ = writeln!(
        s,
        "The seed names two limits of softmax attention: O(N²) memory, which the rest of \
         attnlab removes, and **saturation** — \"winner-take-all dynamics cause vanishing \
         gradients for non-dominant positions in deep stacks\". This page measures the \
         second with the kernels' own streaming statistics (`attnlab::stats`, \
         `docs/semantics.md`): per query row, computed inside the flash forward and backward \
         in O(1) extra state per row, never an `N × N` buffer.\n"
    );
    measures(&mut s);
    setup(&mut s, run);
    let _ = writeln!(s, "## Reading\n");
    let _ = writeln!(
        s,
        "Generated from the tables below: each number is the run's, each \"rises\" or \
         \"falls\" a comparison of two of them (a change within 5% reads \"about the same\").\n"
    );
    for line in reading(&data) {
        let _ = writeln!(s, "- {line}");
    }
    s.push('\n');
    single_section(&mut s, &data);
    depth_section(&mut s, &data);
    full_data(&mut s, &data);
    s
}

fn measures(s: &mut String) {
    let _ = writeln!(s, "## What is measured\n");
    let _ = writeln!(
        s,
        "For a query row with probabilities `p_j = exp(s_j − lse)` over its visible keys (and \
         the sink, when the call has one) and upstream gradient `dO`, with `dS_j` the gradient \
         of the loss with respect to the score `s_j`:\n"
    );
    let _ = writeln!(
        s,
        "- **max-p**: the largest probability (the sink's included); a row is **saturated** \
         when max-p > {SATURATED_P}.\n\
         - **H**: the entropy `−Σ p log p` in nats; **exp(H)** is the effective support, the \
         number of equally weighted keys with the same entropy (1 = one key takes everything, \
         N = uniform). **H / ln n** (depth) divides by the entropy of a uniform row over its \
         `n` outcomes (visible keys, plus the sink).\n\
         - **score-gradient mass** `M = Σ_j |dS_j|` of a row, the gradient that reaches its \
         scores at all; the tables give its mean over rows, `Σ key_grad / rows` from the \
         backward's per-key statistic.\n\
         - **off-argmax share**: the part of `M` that reaches keys other than the row's argmax \
         — the gradient to non-dominant positions, relative to the row's. Without a modifier \
         `Σ_j dS_j = 0` (the softmax Jacobian's rows sum to zero), so the argmax's `|dS|` \
         never exceeds the sum of the others': the share is at least 1/2, and the mass the \
         non-dominant keys receive lies between `M/2` and `M`. As a row saturates (`p_a → 1`) \
         every `dS_j` goes to 0 with `1 − p_a`, the winner's and the others' alike: \
         winner-take-all shows as `M` falling, while the share can only fall to 1/2.\n\
         - **top-1% keys' share** (depth): the part of all the key-gradient mass that the 1% \
         of keys receiving the most take (per head, pooled).\n\
         - **‖dX‖** (depth): the RMS of `dL/dX_l` over the `N × d_model` entries at the input \
         of block `l` — the gradient reaching the positions at that depth — and of the part of \
         it that came through the block's attention (LayerNorm backward of `dX_q + dX_kv`) \
         rather than the residual path; **‖dY‖** is the RMS of the gradient the block \
         receives from above (`dL/dX_(l+1)`), and **mass / ‖dY‖** the score-gradient mass \
         per row per unit of it, which compares blocks that receive different gradients.\n\
         - Depth means are over the rows with at least two outcomes: without a sink, the \
         first causal row of each head sees one key and is left out.\n"
    );
}

fn setup(s: &mut String, run: &SaturationFile) {
    let st = &run.settings.single;
    let d = &run.settings.depth;
    let _ = writeln!(s, "## Setup\n");
    let ns: Vec<String> = st.ns.iter().map(|n| n_label(*n)).collect();
    let ts: Vec<String> = st.temps.iter().map(|t| t_label(*t)).collect();
    let sd = (st.head_dim as f64).sqrt();
    let _ = writeln!(
        s,
        "**One layer.** One attention call, forward then backward, per point: N ∈ {{{}}} × \
         scale `t/√d` with t ∈ {{{}}} (t = 1 is the usual `1/√d`; larger t = sharper, \
         colder softmax) × inputs × {{plain, softcap, sinks}}; MHA with {} heads of d = {}, \
         bottom-right causal, f32, the flash kernels on {} threads.\n",
        ns.join(", "),
        ts.join(", "),
        st.heads,
        st.head_dim,
        run.threads
    );
    let _ = writeln!(
        s,
        "- **Rows**: a row's statistics depend only on the row and the keys it sees, so each \
         point uses the **last** `Nq = min({}, N/{})` query rows of causal sequences of N \
         tokens against all N keys (bottom-right aligned: each sees between `N − Nq + 1` and \
         N keys, at least {}% of N), `B` sequences so that every point has `B·H·Nq = {}` \
         rows. That costs `O(Nq·N)` instead of `O(N²)` and takes the study to N = {}.",
        st.q_max,
        st.q_div,
        fmt_num(100.0 * (1.0 - 1.0 / st.q_div as f64)),
        st.rows,
        n_label(*st.ns.iter().max().unwrap_or(&0))
    );
    let _ = writeln!(
        s,
        "- **Inputs** (seed {:#x}): *iid*: Q, K, V standard normal, so logits are about \
         `N(0, t²)`. *peaky*: \"a few keys aligned with the queries\": per sequence and head a \
         random unit direction `u`, queries `q = ρ√d·u + √(1−ρ²)·z` (ρ = {}), and {} anchor \
         keys `k = √d·u + σ·z` (σ = {}) at random positions every row sees; their logits \
         stand about `t·ρ·√d = {}·t` above the other keys' `N(0, t²)`.",
        st.seed,
        st.rho,
        st.anchors,
        st.anchor_noise,
        fmt_num(st.rho as f64 * sd)
    );
    let cap = st.softcap as f64;
    let capped = |x: f64| cap * (x / cap).tanh();
    let _ = writeln!(
        s,
        "- **Softcap** c = {}: scores `c·tanh(s/c)`. It leaves the logits of t = 1 nearly \
         alone (a logit of 4, about the largest of 64k standard-normal ones, becomes {}) and \
         binds at high t (a logit of 16 becomes {}, 32 becomes {}). Gemma 2 caps attention \
         logits at 50, which trained models' larger logits reach; here the logits are \
         `N(0, t²)`, so a smaller cap is the one that acts.",
        st.softcap,
        fmt_num(capped(4.0)),
        fmt_num(capped(16.0)),
        fmt_num(capped(32.0))
    );
    let _ = writeln!(
        s,
        "- **Sinks**: one sink logit {} per head (gpt-oss learns one per head): `exp({})` = \
         {} is the weight of about {} typical keys at t = 1 (`E exp(s) = e^(1/2)` for `N(0, \
         1)` logits). The statistics count the sink as an outcome: a row whose mass sits on \
         the sink has max-p near 1 without any key winning (the sink's mean share is \
         tabulated).",
        st.sink,
        st.sink,
        fmt_num((st.sink as f64).exp()),
        fmt_num((st.sink as f64).exp() / 0.5f64.exp())
    );
    let _ = writeln!(
        s,
        "- **Backward**: `dO` standard normal (the gradient of the random linear loss \
         `Σ dO∘O`); the kernels' backward statistics give each row's off-argmax share and \
         each key's received mass.\n"
    );
    let _ = writeln!(
        s,
        "**Depth.** A seeded stack of {} pre-norm residual blocks `X_(l+1) = X_l + \
         MHA_l(LN(X_l))` (no MLP) over one causal sequence of N = {} tokens: `d_model` = {}, \
         {} heads of {} (MHA, no biases, `attnlab::MultiHeadAttention` with Xavier-uniform \
         weights seeded by block), LayerNorm without affine parameters (ε = {}), `X_0` \
         standard normal, loss `Σ G∘X_L` with `G` standard normal (seed {:#x}). One stack per \
         t ∈ {{{}}} (scale `t/√{}`) × {{plain, softcap, sinks}} with the one-layer softcap \
         and sink. Block l's forward statistics are those of a stack of depth l (blocks are \
         seeded by index); the backward starts at the top, so block l's gradients are \
         those after {} − l blocks of backpropagation. Each block's forward is recomputed in \
         the backward from the stored `X_l` (the kernels are deterministic), so only the \
         residual states are kept.\n",
        d.layers,
        d.n,
        d.d_model,
        d.heads,
        d.head_dim,
        d.ln_eps,
        d.seed,
        d.temps.iter().map(|t| t_label(*t)).collect::<Vec<_>>().join(", "),
        d.head_dim,
        d.layers
    );
}

// ---------------------------------------------------------------- reading

fn reading(d: &Data) -> Vec<String> {
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
fn unit_mass(l: &DepthLayer) -> f64 {
    if l.dy_rms > 0.0 { l.grad_mass / l.dy_rms } else { f64::NAN }
}

// ---------------------------------------------------------------- tables

/// One table per input and quantity: rows N × modifier, columns t.
fn single_table(
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

fn single_section(s: &mut String, d: &Data) {
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
fn shown_layers(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> =
        std::iter::successors(Some(1usize), |x| Some(x * 2)).take_while(|x| *x <= n).collect();
    if v.last() != Some(&n) && n > 0 {
        v.push(n);
    }
    v
}

fn depth_row(m: &str, l: &DepthLayer) -> Vec<String> {
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

const DEPTH_HEAD: [&str; 13] = [
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

fn depth_section(s: &mut String, d: &Data) {
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

fn full_data(s: &mut String, d: &Data) {
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

// ---------------------------------------------------------------- plots

/// Colours of the multipliers, cold to hot.
const TEMP_COLORS: [RGBColor; 6] = [
    RGBColor(120, 170, 230),
    RGBColor(30, 90, 200),
    RGBColor(20, 160, 120),
    RGBColor(240, 140, 40),
    RGBColor(200, 40, 40),
    RGBColor(120, 30, 120),
];

fn modifier_color(m: &str) -> RGBColor {
    match m {
        "plain" => RGBColor(30, 90, 200),
        "softcap" => RGBColor(20, 160, 120),
        _ => RGBColor(240, 140, 40),
    }
}

/// A lighter tint of a modifier's colour, for its dashed (lower `t`)
/// series: the legend tells them apart by colour.
fn light(c: RGBColor) -> RGBColor {
    let up = |x: u8| x + (255 - x) / 2;
    RGBColor(up(c.0), up(c.1), up(c.2))
}

/// The three SVGs of [`PLOTS`], in that order.
pub fn plots(run: &SaturationFile) -> [Result<String, String>; 3] {
    let d = Data { run };
    [plot_single(&d), plot_modifiers(&d), plot_depth(&d)]
}

type Metric = (&'static str, &'static str, fn(&SinglePoint) -> f64, bool);

const SINGLE_METRICS: [Metric; 3] = [
    ("mean max-p", "max-p", |p| p.max_p, false),
    ("mean exp(H)", "keys (log)", |p| p.support, true),
    ("score-gradient mass per row", "Σ|dS| (log)", |p| p.grad_mass, true),
];

fn single_series(
    d: &Data,
    input: &str,
    f: fn(&SinglePoint) -> f64,
    pick: &[(&str, f32)],
    style: &dyn Fn(usize, &str, f32) -> (RGBColor, bool),
) -> Vec<Series> {
    pick.iter()
        .enumerate()
        .map(|(i, (m, t))| {
            let mut pts: Vec<(f64, f64)> = d
                .run
                .single
                .iter()
                .filter(|p| p.input == input && p.modifier == *m && p.t == *t)
                .map(|p| (p.n as f64, f(p)))
                .filter(|p| p.1.is_finite() && p.1 > 0.0)
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (color, dashed) = style(i, m, *t);
            Series {
                label: if pick.iter().all(|x| x.0 == pick[0].0) {
                    format!("t = {}", t_label(*t))
                } else {
                    format!("{m}, t = {}", t_label(*t))
                },
                color,
                dashed,
                hollow: false,
                points: pts,
            }
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// A grid: one row per input, one column per metric of
/// [`SINGLE_METRICS`].
fn single_grid(
    d: &Data,
    title: &str,
    pick: &[(&str, f32)],
    style: &dyn Fn(usize, &str, f32) -> (RGBColor, bool),
) -> PlotResult {
    let inputs = d.inputs();
    if inputs.is_empty() || pick.is_empty() {
        return Err("no one-layer points".into());
    }
    let mut svg = String::new();
    {
        let (w, h) = (1380u32, 400 * inputs.len() as u32);
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(e2s)?;
        let areas = root.split_evenly((inputs.len(), SINGLE_METRICS.len()));
        for (r, input) in inputs.iter().enumerate() {
            for (c, (name, y_desc, f, log)) in SINGLE_METRICS.iter().enumerate() {
                let mut series = single_series(d, input, *f, pick, style);
                if *name == "mean exp(H)" {
                    let anchor: Vec<(f64, f64)> =
                        d.ns().first().map(|n| vec![(*n as f64, *n as f64)]).unwrap_or_default();
                    if let Some(g) = slope(
                        "exp(H) = N (uniform)",
                        1,
                        &anchor,
                        1.0,
                        &series,
                        RGBColor(120, 120, 120),
                    ) {
                        series.push(g);
                    }
                }
                panel(
                    &areas[r * SINGLE_METRICS.len() + c],
                    &format!("{input}: {name}{title}"),
                    N_AXIS,
                    y_desc,
                    &series,
                    *log,
                    &|y| if *log { fmt_axis(y) } else { format!("{y:.1}") },
                    None,
                    if *log && *name != "mean exp(H)" {
                        SeriesLabelPosition::LowerLeft
                    } else {
                        SeriesLabelPosition::UpperLeft
                    },
                    (!*log).then_some(1.05),
                )?;
            }
        }
        root.present().map_err(e2s)?;
    }
    Ok(svg)
}

fn plot_single(d: &Data) -> PlotResult {
    let pick: Vec<(&str, f32)> = d.temps().into_iter().map(|t| ("plain", t)).collect();
    single_grid(d, " (plain)", &pick, &|i, _, _| (TEMP_COLORS[i % TEMP_COLORS.len()], false))
}

fn plot_modifiers(d: &Data) -> PlotResult {
    let (Some(t1), Some(&th)) = (d.t_one(), d.temps().last()) else {
        return Err("no one-layer points".into());
    };
    let ts: Vec<f32> = if t1 == th { vec![th] } else { vec![t1, th] };
    let mods = d.modifiers();
    let pick: Vec<(&str, f32)> =
        ts.iter().flat_map(|t| mods.iter().map(move |m| (*m, *t))).collect();
    let color =
        |m: &str, t: f32| if t == th { modifier_color(m) } else { light(modifier_color(m)) };
    single_grid(d, "", &pick, &|_, m, t| (color(m, t), t != th))
}

type DepthMetric = (&'static str, &'static str, fn(&DepthLayer) -> f64, bool);

const DEPTH_METRICS: [DepthMetric; 4] = [
    ("H / ln n (1 = uniform)", "H / ln n", |l| l.entropy_norm, false),
    ("saturated rows (max-p > 0.9)", "fraction", |l| l.saturated, false),
    ("score-gradient mass per row / ‖dY‖", "Σ|dS| / RMS (log)", unit_mass, true),
    ("‖dL/dX‖ at the block's input", "RMS (log)", |l| l.dx_rms, true),
];

fn plot_depth(d: &Data) -> PlotResult {
    if d.run.depth.is_empty() {
        return Err("no stacks".into());
    }
    let th = *d.depth_temps().last().unwrap_or(&1.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 820)).into_drawing_area();
        root.fill(&WHITE).map_err(e2s)?;
        let areas = root.split_evenly((2, 2));
        for (area, (title, y_desc, f, log)) in areas.iter().zip(DEPTH_METRICS.iter()) {
            let series: Vec<Series> = d
                .run
                .depth
                .iter()
                .map(|r| Series {
                    label: format!("{}, t = {}", r.modifier, t_label(r.t)),
                    color: if r.t == th {
                        modifier_color(&r.modifier)
                    } else {
                        light(modifier_color(&r.modifier))
                    },
                    dashed: r.t != th,
                    hollow: false,
                    points: r
                        .layers
                        .iter()
                        .map(|l| (l.layer as f64, f(l)))
                        .filter(|p| p.1.is_finite() && (!*log || p.1 > 0.0))
                        .collect(),
                })
                .collect();
            linear_x_panel(area, title, y_desc, &series, *log)?;
        }
        root.present().map_err(e2s)?;
    }
    Ok(svg)
}

/// One panel with a linear x axis (the block index) and a linear (0 to
/// 1.05 × max) or log y axis.
fn linear_x_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    series: &[Series],
    y_log: bool,
) -> Result<(), String> {
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let x1 = pts().map(|p| p.0).fold(1.0, f64::max);
    let top = pts().map(|p| p.1).fold(0.0, f64::max);
    // linear labels: enough decimals that a small range's ticks differ
    let digits = if top < 0.05 { 3 } else { 2 };
    let mut b = ChartBuilder::on(area);
    b.caption(title, ("sans-serif", 17)).margin(12).x_label_area_size(40).y_label_area_size(70);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("block (1 = input side)")
                .y_desc(y_desc)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| {
                    if y_log { fmt_axis(*y) } else { format!("{y:.*}", digits) }
                })
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(e2s)?;
            for s in series.iter().filter(|s| !s.points.is_empty()) {
                let c = s.color;
                let style = c.stroke_width(2);
                let anno = if s.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(s.points.clone(), 6, 4, style))
                        .map_err(e2s)?
                } else {
                    chart.draw_series(LineSeries::new(s.points.clone(), style)).map_err(e2s)?
                };
                let dashed = s.dashed;
                anno.label(s.label.clone()).legend(move |(x, y)| {
                    // a dashed series gets a dashed key: two strokes
                    let ends = if dashed { [(0, 7), (11, 18)] } else { [(0, 18), (0, 18)] };
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(ends[0].0, 0), (ends[0].1, 0)], c.stroke_width(2))
                        + PathElement::new(vec![(ends[1].0, 0), (ends[1].1, 0)], c.stroke_width(2))
                });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(e2s)
        }};
    }
    if y_log {
        let ys: Vec<f64> = pts().map(|p| p.1).filter(|y| *y > 0.0).collect();
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().copied().fold(0.0, f64::max);
        if ys.is_empty() {
            return Err("no points".into());
        }
        let (lo, hi) = if hi / lo < 4.0 { (lo / 2.0, hi * 2.0) } else { (lo / 1.5, hi * 1.5) };
        draw!(b.build_cartesian_2d(0.5f64..x1 + 0.5, (lo..hi).log_scale()).map_err(e2s)?)
    } else {
        let hi = top.max(1e-3) * 1.05;
        draw!(b.build_cartesian_2d(0.5f64..x1 + 0.5, 0f64..hi).map_err(e2s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saturate::results::tests::synthetic;

    #[test]
    fn trend_words_follow_the_numbers() {
        assert_eq!(trend(1.0, 2.0), "rises");
        assert_eq!(trend(2.0, 1.0), "falls");
        assert_eq!(trend(1.0, 1.02), "stays about the same");
        assert_eq!(ratio(2.0, 1.0), "×0.500");
    }

    #[test]
    fn the_page_states_the_run_and_carries_its_numbers() {
        let run = synthetic();
        let md = render(&run, "results/saturation.json");
        assert!(md.contains(&format!("commit `{}`", run.machine.git_commit)));
        assert!(md.contains(&run.machine.cpu_model) && md.contains(&run.machine.date_utc));
        // one-layer tables: N = 256, plain, t = 1 is k = 0 of the synthetic data
        assert!(md.contains("| 256 | plain | 0.123 (0.0%) |"), "max-p row missing:\n{md}");
        assert!(md.contains("75.3 (29.4%)"), "support cell missing");
        assert!(md.contains("0.543 (98.8%)"), "gradient cell missing");
        // the last point: N = 1k, t = 8 → k = 3
        assert!(md.contains("0.723 (15.0%)"));
        // peaky anchors and sinks
        assert!(md.contains("anchor keys' share") && md.contains("| 256 | peaky | 1.0% |"));
        // depth: block 3 of plain t = 4 has entropy 3.5 − 3 = 0.5
        assert!(
            md.contains("| 3 | plain | 0.500 | 0.500 | 0.600 | 30.0% | 75.0% | 0.030 | 0.030 |")
        );
        // the reading quotes the numbers it compares, with computed trends
        assert!(md.contains("mean max-p rises from 0.123 (N = 256) to 0.523 (N = 1k)"), "{md}");
        assert!(md.contains("H / ln n falls from 0.700 (block 1) to 0.500 (block 3)"));
        // dY of block 3 is 1.0, dX of block 1 is 1.5: the gradient grows downwards
        assert!(md.contains("the gradient grows: RMS 1.00 entering block 3"), "{md}");
        assert!(md.contains("![one layer") && md.contains("saturation-depth.svg"));
    }

    #[test]
    fn the_plots_render_and_the_files_are_written() {
        let run = synthetic();
        for (name, svg) in PLOTS.iter().zip(plots(&run)) {
            let svg = svg.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(svg.starts_with("<svg") && svg.contains("t = 1"), "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        let written = generate(&run, dir.path(), "x.json").unwrap();
        assert_eq!(written.len(), 4);
        let md = std::fs::read_to_string(dir.path().join("saturation.md")).unwrap();
        assert_eq!(md, render(&run, "x.json"));
    }
}
