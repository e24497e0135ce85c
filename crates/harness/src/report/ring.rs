//! `docs/ring.md` and `docs/img/ring_model.svg` from `results/ring.json`
//! (`attn ring-report`): what this machine measured — one rank's kernel
//! throughput at the ring's chunk sizes, MPI point-to-point latency and
//! bandwidth, whole rings over MPI and in one process — then the measured
//! rings against the scaling model's prediction for them, and the model
//! ([`attnlab::ring::model::RingModel`]) at scale: P = 8 … 1024 ranks, N =
//! 256k … 16M tokens, links of 25, 100 and 400 Gb/s, with its assumptions.
//!
//! A pure function of the results file: every number on the page is
//! measured there or computed from what is, and each measurement names its
//! machine, commit, date and the load at the time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use attnlab::ring::model::{Prediction, RingModel};
use plotters::prelude::*;

use super::cells::{fmt_num, n_label, table};
use super::chart::{PlotResult, Series, e2s, fmt_axis, panel};
use crate::ring::results::{
    Context, Entry, PingPongEntry, ProblemRecord, RingEntry, RingResults, SoloEntry,
};

/// Ranks of the model table.
pub const MODEL_RANKS: [usize; 8] = [8, 16, 32, 64, 128, 256, 512, 1024];
/// Sequence lengths of the model table: 256k, 1M, 4M, 16M tokens.
pub const MODEL_TOKENS: [usize; 4] = [1 << 18, 1 << 20, 1 << 22, 1 << 24];
/// Link speeds of the model table, Gb/s.
pub const LINKS_GBPS: [f64; 3] = [25.0, 100.0, 400.0];
/// The model table's problem: heads (query = key/value) and head dimension.
pub const MODEL_HEADS: usize = 8;
/// The model table's head dimension.
pub const MODEL_HEAD_DIM: usize = 64;

/// The latest entry of each kind and configuration.
struct Latest<'a> {
    ping_pong: Option<&'a PingPongEntry>,
    solos: Vec<&'a SoloEntry>,
    rings: Vec<&'a RingEntry>,
}

impl<'a> Latest<'a> {
    fn of(r: &'a RingResults) -> Self {
        let mut solos: Vec<&SoloEntry> = Vec::new();
        let mut rings: Vec<&RingEntry> = Vec::new();
        let mut ping_pong = None;
        for e in r.entries.iter().rev() {
            match e {
                Entry::PingPong(p) => {
                    ping_pong.get_or_insert(p);
                }
                Entry::Solo(s) => {
                    if !solos.iter().any(|x| x.problem == s.problem && x.rank == s.rank) {
                        solos.push(s);
                    }
                }
                Entry::Ring(g) => {
                    if !rings.iter().any(|x| x.problem == g.problem && x.transport == g.transport) {
                        rings.push(g);
                    }
                }
            }
        }
        let key = |p: &ProblemRecord| (p.q_len, p.ranks, p.threads, p.mask.clone());
        solos.sort_by_key(|s| key(&s.problem));
        rings.sort_by_key(|g| (g.transport.clone(), key(&g.problem)));
        Latest { ping_pong, solos, rings }
    }
}

/// The shape of the model table's problem.
fn model_like(p: &ProblemRecord) -> bool {
    p.q_heads == MODEL_HEADS
        && p.kv_heads == MODEL_HEADS
        && p.head_dim == MODEL_HEAD_DIM
        && p.v_dim == MODEL_HEAD_DIM
        && p.mask == "causal"
        && p.layout == "zigzag"
        && p.batch == 1
}

/// The solo measurement that stands for a rank's throughput at block
/// calls of `block_rows` query rows: among the solos on `threads` threads
/// (else all solos), one of the same ring as `like` if any, else one of the
/// model table's problem whose block rows are nearest (in ratio).
fn pick_solo<'a>(
    solos: &[&'a SoloEntry],
    block_rows: f64,
    like: Option<&ProblemRecord>,
    threads: usize,
) -> Option<&'a SoloEntry> {
    let same_threads: Vec<&SoloEntry> =
        solos.iter().copied().filter(|s| s.problem.threads == threads).collect();
    let pool = if same_threads.is_empty() { solos.to_vec() } else { same_threads };
    let same = |s: &&SoloEntry| {
        like.is_some_and(|p| {
            let q = &s.problem;
            (q.q_len, q.kv_len, q.ranks, q.q_heads, q.kv_heads, q.head_dim, &q.mask, &q.layout)
                == (
                    p.q_len, p.kv_len, p.ranks, p.q_heads, p.kv_heads, p.head_dim, &p.mask,
                    &p.layout,
                )
        })
    };
    if let Some(s) = pool.iter().copied().find(same) {
        return Some(s);
    }
    let model = pool.iter().copied().filter(|s| model_like(&s.problem)).collect::<Vec<_>>();
    let pool = if model.is_empty() { pool } else { model };
    let dist = |s: &&SoloEntry| (s.block_rows.max(1) as f64 / block_rows.max(1.0)).ln().abs();
    pool.into_iter().min_by(|a, b| dist(a).total_cmp(&dist(b)))
}

/// The logical CPUs of the machine the solos ran on.
fn solo_cpus(solos: &[&SoloEntry]) -> usize {
    solos.first().map_or(1, |s| s.context.machine_cpus.max(1))
}

/// "12 µs", "3.4 ms", "5.67 s", "8.9 min", "1.2 h", "3.4 days".
fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        "–".into()
    } else if s < 1e-3 {
        format!("{} µs", fmt_num(s * 1e6))
    } else if s < 1.0 {
        format!("{} ms", fmt_num(s * 1e3))
    } else if s < 120.0 {
        format!("{} s", fmt_num(s))
    } else if s < 7200.0 {
        format!("{} min", fmt_num(s / 60.0))
    } else if s < 172_800.0 {
        format!("{} h", fmt_num(s / 3600.0))
    } else {
        format!("{} days", fmt_num(s / 86400.0))
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.0}%", x * 100.0))
}

fn tokens(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) { format!("{}M", n >> 20) } else { n_label(n) }
}

fn short_commit(c: &Context) -> String {
    let g = &c.machine.git_commit;
    let (hash, dirty) = g.split_once('-').unwrap_or((g, ""));
    let h: String = hash.chars().take(10).collect();
    if dirty.is_empty() { h } else { format!("{h}-{dirty}") }
}

fn when(c: &Context) -> String {
    format!("{}, {}, load {}", short_commit(c), c.machine.date_utc, c.load_avg)
}

fn describe(p: &ProblemRecord) -> String {
    let heads = if p.q_heads == p.kv_heads {
        format!("H = {}", p.q_heads)
    } else {
        format!("H = {} (K/V {})", p.q_heads, p.kv_heads)
    };
    let n = if p.q_len == p.kv_len {
        format!("N = {}", p.q_len)
    } else {
        format!("Nq = {}, Nk = {}", p.q_len, p.kv_len)
    };
    let dv = if p.v_dim == p.head_dim { String::new() } else { format!(", dv = {}", p.v_dim) };
    let b = if p.batch == 1 { String::new() } else { format!("B = {}, ", p.batch) };
    format!("{b}{n}, {heads}, d = {}{dv}, {} {}", p.head_dim, p.mask, p.layout)
}

/// The model of a measured ring: its problem on its ranks; each rank's
/// throughput the machine's (a solo rank of the same ring on all of the
/// machine's CPUs, when measured), scaled to the CPUs the ranks use and
/// shared by them: `F · min(ranks·threads, CPUs) / (solo threads · ranks)`;
/// each link the ping-pong bandwidth shared by the transfers that run at
/// once on the machine. With the solo used; `None` without the
/// measurements.
fn measured_model<'a>(
    g: &RingEntry,
    solos: &[&'a SoloEntry],
    pp: Option<&PingPongEntry>,
) -> Option<(RingModel, &'a SoloEntry)> {
    let p = &g.problem;
    let solo = pick_solo(solos, p.chunk() / 2.0, Some(p), g.context.machine_cpus)?;
    let (bw, lat) = (pp?.bandwidth()?, pp?.latency_s()?);
    let cpus = g.context.machine_cpus.max(1) as f64;
    let here = g.context.ranks_here.max(1) as f64;
    let threads = p.threads.max(1) as f64;
    let share = (cpus / (here * threads)).min(1.0);
    let per_thread = solo.gflops * 1e9 / solo.problem.threads.max(1) as f64;
    let model = RingModel {
        ranks: p.ranks,
        tokens: p.q_len,
        q_heads: p.q_heads,
        kv_heads: p.kv_heads,
        head_dim: p.head_dim,
        causal: p.mask == "causal",
        flops_per_s: per_thread * threads * share,
        bandwidth: bw / here,
        latency: lat,
    };
    Some((model, solo))
}

fn machine_section(s: &mut String, l: &Latest<'_>, all: &RingResults) {
    let Some(first) = all.entries.last().map(Entry::context) else { return };
    let m = &first.machine;
    let _ = writeln!(s, "## This machine\n");
    let _ = writeln!(
        s,
        "{} ({}), {} logical CPUs, {}; compiled for {}; {}.{}\n",
        m.cpu_model,
        m.cpu_id,
        first.machine_cpus,
        m.cache_summary(),
        if m.compiled_isa.is_empty() { "–" } else { &m.compiled_isa },
        m.os,
        all.entries
            .iter()
            .rev()
            .find_map(|e| e.context().mpi_library.as_ref())
            .map(|v| format!(" MPI: {v}."))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "The machine is shared (other builds run beside these measurements): each measurement \
         gives the load average when it started.\n"
    );

    let _ = writeln!(s, "### Per-rank kernel throughput\n");
    if l.solos.is_empty() {
        let _ = writeln!(s, "No measurement yet (`attn ring-bench --solo --json`).\n");
    } else {
        let _ = writeln!(
            s,
            "One rank of a P-rank ring timed alone (`attn ring-bench --solo`): its flash block \
             calls (a query chunk against a key chunk at their global positions) and merges, at \
             the ring's chunk sizes, with the other ranks' blocks taken from memory and nothing \
             else running. GFLOP/s counts 4·d FLOPs per visible (query, key) pair and head.\n"
        );
        let rows: Vec<Vec<String>> = l
            .solos
            .iter()
            .map(|x| {
                vec![
                    describe(&x.problem),
                    x.problem.ranks.to_string(),
                    x.rank.to_string(),
                    x.chunk.to_string(),
                    x.block_rows.to_string(),
                    x.problem.threads.to_string(),
                    fmt_secs(x.compute_s),
                    fmt_num(x.gflops),
                    when(&x.context),
                ]
            })
            .collect();
        let head = [
            "problem",
            "P",
            "rank",
            "tokens per rank",
            "block rows",
            "threads",
            "compute",
            "GFLOP/s",
            "commit, date, load",
        ];
        table(s, &head.map(String::from), &rows);
    }

    let _ = writeln!(s, "### MPI point-to-point\n");
    match l.ping_pong {
        None => {
            let _ = writeln!(
                s,
                "No measurement yet (`mpirun -np 2 attn ring-bench --ping-pong --json`).\n"
            );
        }
        Some(p) => {
            let _ = writeln!(
                s,
                "Ping-pong between two processes on this machine (`mpirun -np 2 attn ring-bench \
                 --ping-pong`; Open MPI moves the messages through shared memory). One way is half \
                 a round trip; {}.\n",
                when(&p.context)
            );
            let rows: Vec<Vec<String>> = p
                .points
                .iter()
                .map(|x| {
                    vec![
                        crate::units::fmt_bytes(x.bytes as f64),
                        x.round_trips.to_string(),
                        fmt_secs(x.one_way_s),
                        fmt_secs(x.best_one_way_s),
                        format!("{:.2}", x.bandwidth() / 1e9),
                    ]
                })
                .collect();
            let head = ["message", "round trips", "one way (median)", "one way (best)", "GB/s"];
            table(s, &head.map(String::from), &rows);
            if let (Some(lat), Some(bw)) = (p.latency_s(), p.bandwidth()) {
                let _ = writeln!(
                    s,
                    "Latency (the smallest message, one way): **{}**; bandwidth (the largest \
                     message): **{:.2} GB/s**.\n",
                    fmt_secs(lat),
                    bw / 1e9
                );
            }
        }
    }

    let _ = writeln!(s, "### Measured rings\n");
    if l.rings.is_empty() {
        let _ = writeln!(s, "No measurement yet (`attn ring-bench --json`).\n");
        return;
    }
    let _ = writeln!(
        s,
        "`attn ring-bench`: every rank generates its own chunks, runs the ring, then the same \
         P − 1 shifts with nothing to compute, all ranks started together (*transfer alone*). \
         *Exposed* is the time of the ring's shifts outside the compute — waiting for the next \
         block after a step's compute, including waiting for a slower neighbour; *overlap* = \
         1 − exposed / transfer alone (clamped to 0…100%), the share of the transfer time that \
         hid behind compute. *Agree* is the closing all-or-nothing token round (it absorbs the \
         ranks' imbalance). GFLOP/s: per rank over its compute, for the ring over its time (the \
         slowest rank's total).\n"
    );
    for g in &l.rings {
        let p = &g.problem;
        let how = if g.transport == "mpi" {
            format!("{} processes (MPI, {} on this machine)", p.ranks, g.context.ranks_here)
        } else {
            format!("{} threads of one process (in-process transport)", p.ranks)
        };
        let _ = writeln!(
            s,
            "**{}; {how}, {} thread(s) per rank** — {}; median of {} run(s).\n",
            describe(p),
            p.threads,
            when(&g.context),
            g.reps
        );
        let rows: Vec<Vec<String>> = g
            .ranks
            .iter()
            .map(|r| {
                vec![
                    r.rank.to_string(),
                    fmt_secs(r.compute_s),
                    fmt_secs(r.exposed_comm_s),
                    fmt_secs(r.transfer_alone_s),
                    pct(r.overlap),
                    fmt_secs(r.agreement_s),
                    fmt_secs(r.total_s),
                    fmt_num(r.gflops),
                ]
            })
            .collect();
        let head = [
            "rank",
            "compute",
            "exposed",
            "transfer alone",
            "overlap",
            "agree",
            "total",
            "GFLOP/s",
        ];
        table(s, &head.map(String::from), &rows);
        let _ = writeln!(
            s,
            "Ring: **{}**, {} GFLOP/s; overlap **{}** (exposed {} of {} of transfers, all ranks).\n",
            fmt_secs(g.wall_s),
            fmt_num(g.gflops),
            pct(g.overlap),
            fmt_secs(g.exposed_comm_s),
            fmt_secs(g.transfer_alone_s)
        );
    }
}

fn measured_vs_model(s: &mut String, l: &Latest<'_>) {
    let _ = writeln!(s, "## Measured rings against the model\n");
    let mpi: Vec<&&RingEntry> = l.rings.iter().filter(|g| g.transport == "mpi").collect();
    let rows: Vec<Vec<String>> = mpi
        .iter()
        .filter_map(|g| {
            let (m, solo) = measured_model(g, &l.solos, l.ping_pong)?;
            let pr = m.predict();
            let p = &g.problem;
            let n = g.ranks.len().max(1) as f64;
            let steps = p.ranks as f64;
            let step_compute = g.ranks.iter().map(|r| r.compute_s).sum::<f64>() / n / steps;
            let shifts = (p.ranks.saturating_sub(1)).max(1) as f64;
            let step_alone = g.ranks.iter().map(|r| r.transfer_alone_s).sum::<f64>() / n / shifts;
            let exposed = g.exposed_comm_s / n;
            let same = solo.problem.q_len == p.q_len && solo.problem.ranks == p.ranks;
            Some(vec![
                p.ranks.to_string(),
                p.q_len.to_string(),
                format!(
                    "{} (machine: {} on {} thread(s){}; {} ranks × {} thread(s) on {} CPUs)",
                    fmt_num(m.flops_per_s / 1e9),
                    fmt_num(solo.gflops),
                    solo.problem.threads,
                    if same { "" } else { ", nearest chunk" },
                    g.context.ranks_here,
                    p.threads,
                    g.context.machine_cpus
                ),
                format!("{:.2} GB/s", m.bandwidth / 1e9),
                format!("{} / {}", fmt_secs(pr.step_compute_s), fmt_secs(step_compute)),
                format!("{} / {}", fmt_secs(pr.step_transfer_s), fmt_secs(step_alone)),
                format!("{} / {}", fmt_secs(pr.exposed_comm_s), fmt_secs(exposed)),
                format!(
                    "{} / {} (×{:.2})",
                    fmt_secs(pr.layer_s),
                    fmt_secs(g.wall_s),
                    g.wall_s / pr.layer_s
                ),
                format!("{} / {}", if pr.hidden { "yes" } else { "no" }, pct(g.overlap)),
            ])
        })
        .collect();
    if rows.is_empty() {
        let _ = writeln!(
            s,
            "Needs a ring measured over MPI, a solo rank and a ping-pong in the results file \
             (`scripts/ring-doc.sh` runs them).\n"
        );
        return;
    }
    let _ = writeln!(
        s,
        "Each ring measured over MPI above, and the model's prediction for it (predicted / \
         measured; for the time, measured ÷ predicted). These ranks share one machine of {} \
         logical CPUs, so the model is given what they share: a rank's throughput is the \
         machine's measured throughput — one rank of the same ring alone on all of its CPUs \
         (the solo measurements above) — scaled to the CPUs the ranks use and shared among the \
         ranks on the machine, `F · min(ranks × threads, CPUs) / (CPUs · ranks)`; a link is the \
         measured point-to-point bandwidth divided by the ranks on the machine (their transfers \
         run at once, and over shared memory each is a copy by a CPU, not a NIC's DMA), with the \
         measured latency. Measured step compute is a rank's compute over its P steps, averaged \
         over the ranks; measured step transfer is the transfer-alone time per shift; measured \
         exposed communication is per rank, averaged. Other work on the machine between the solo \
         and the ring shows in the ratio.\n",
        l.rings.first().map_or(0, |g| g.context.machine_cpus)
    );
    let head = [
        "P",
        "N",
        "per-rank GFLOP/s",
        "link",
        "step compute",
        "step transfer",
        "exposed comm.",
        "time per layer",
        "hides? / overlap",
    ];
    table(s, &head.map(String::from), &rows);
}

/// The model of one cell of the scale table.
fn cell_model(ranks: usize, tokens: usize, f: f64, gbps: f64, latency: f64) -> RingModel {
    RingModel {
        ranks,
        tokens,
        q_heads: MODEL_HEADS,
        kv_heads: MODEL_HEADS,
        head_dim: MODEL_HEAD_DIM,
        causal: true,
        flops_per_s: f,
        bandwidth: gbps * 1e9 / 8.0,
        latency,
    }
}

/// The machine's throughput (FLOP/s) at a model cell's block size, and the
/// solo measurement it comes from.
fn cell_throughput<'a>(l: &Latest<'a>, ranks: usize, tokens: usize) -> Option<&'a SoloEntry> {
    pick_solo(&l.solos, tokens as f64 / ranks as f64 / 2.0, None, solo_cpus(&l.solos))
}

fn model_section(s: &mut String, l: &Latest<'_>) {
    let _ = writeln!(s, "## The model at scale\n");
    let Some(lat) = l.ping_pong.and_then(PingPongEntry::latency_s) else {
        let _ = writeln!(s, "Needs a ping-pong and a solo rank in the results file.\n");
        return;
    };
    if l.solos.is_empty() {
        let _ = writeln!(s, "Needs a solo rank in the results file.\n");
        return;
    }
    let _ = writeln!(
        s,
        "`attnlab::ring::model::RingModel`: one layer of exact causal attention, H = {h} heads \
         (K/V heads {h}), d = {d}, batch 1, zigzag layout, on P ranks joined by links of 25, 100 \
         and 400 Gb/s. **A rank is this machine**: its throughput is the measured per-rank \
         kernel throughput above on all of its {cpus} logical CPUs, taken at the measured block \
         size nearest the cell's (the *measured at* column). The per-message latency is the \
         measured MPI latency above ({lat}), a lower bound for a network — a few µs more change \
         nothing here, where the smallest block takes hundreds of µs to send.\n",
        h = MODEL_HEADS,
        d = MODEL_HEAD_DIM,
        cpus = l.solos[0].context.machine_cpus,
        lat = fmt_secs(lat),
    );
    let _ = writeln!(s, "Assumptions:\n");
    for a in [
        "N tokens split over P ranks, each holding c = N / P queries and keys: in the zigzag \
         layout every step after the first costs each rank the same, half a c × c block (the \
         visible pairs of two of its four c/2 × c/2 sub-blocks);",
        "a step's compute is its FLOPs (4·d per visible query–key pair and head: 2·d for QKᵀ, \
         2·d for PV) over the rank's sustained throughput, measured at that block size; the \
         throughput does not depend on anything else (no memory or cache effect of N itself: a \
         rank holds only its chunks);",
        "a step's transfer is one K/V block, 2·c·H·d f32 values, sent to the next rank while the \
         step computes: latency + bytes / bandwidth; all links run at once, each in one \
         direction, and the transfer costs the compute nothing (a NIC's DMA);",
        "double buffering: the layer takes the first step's compute and then P − 1 steps of \
         max(compute, transfer) — the slower sets the pace; communication *hides* when a step's \
         transfer takes no longer than its compute;",
        "left out: the merge of partials (O(c·H·d) per step, against O(c²·H·d) of compute), the \
         closing agreement (P − 1 one-element messages), load imbalance, and the scatter and \
         gather of the inputs and outputs (a model layer's inputs are already sharded).",
    ] {
        let _ = writeln!(s, "- {a}");
    }
    let _ = writeln!(s);
    // The threshold: compute ∝ c², transfer ∝ c.
    let big = l
        .solos
        .iter()
        .filter(|x| x.problem.threads == solo_cpus(&l.solos))
        .max_by_key(|x| x.block_rows)
        .or_else(|| l.solos.iter().max_by_key(|x| x.block_rows));
    if let Some(big) = big {
        let f = big.gflops * 1e9;
        let cells: Vec<String> = LINKS_GBPS
            .iter()
            .map(|&g| {
                let c = cell_model(8, 1 << 20, f, g, 0.0).hiding_chunk();
                format!("{:.0} tokens per rank at {g:.0} Gb/s", c.ceil())
            })
            .collect();
        let _ = writeln!(
            s,
            "Compute per step grows as c² and the block as c, so a transfer hides once a rank \
             holds more than c* = 4·F / B tokens (F the throughput in FLOP/s, B the bandwidth in \
             bytes/s; H = H_kv). At {} GFLOP/s (the largest block measured, {} rows): **{}**. c* grows \
             with F: a rank with 10× this machine's throughput needs 10× the tokens.\n",
            fmt_num(big.gflops),
            big.block_rows,
            cells.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "Each cell: time per layer, then ✓ when every transfer hides behind its step's compute, \
         or ✗ and how many times longer a transfer takes than a step's compute (the links then \
         set the pace).\n"
    );
    for &n in &MODEL_TOKENS {
        let _ = writeln!(s, "**N = {} tokens**\n", tokens(n));
        let rows: Vec<Vec<String>> = MODEL_RANKS
            .iter()
            .filter_map(|&p| {
                let solo = cell_throughput(l, p, n)?;
                let f = solo.gflops * 1e9;
                let preds: Vec<Prediction> =
                    LINKS_GBPS.iter().map(|&g| cell_model(p, n, f, g, lat).predict()).collect();
                let mut row = vec![
                    p.to_string(),
                    tokens(n / p),
                    format!("{} ({} rows)", fmt_num(solo.gflops), solo.block_rows),
                    fmt_secs(preds[0].step_compute_s),
                ];
                row.extend(preds.iter().map(|pr| {
                    if pr.hidden {
                        format!("{} ✓", fmt_secs(pr.layer_s))
                    } else {
                        format!(
                            "{} ✗ {:.1}×",
                            fmt_secs(pr.layer_s),
                            pr.step_transfer_s / pr.step_compute_s
                        )
                    }
                }));
                Some(row)
            })
            .collect();
        let mut head = vec![
            "P".to_string(),
            "tokens per rank".into(),
            "GFLOP/s (measured at)".into(),
            "compute per step".into(),
        ];
        head.extend(LINKS_GBPS.iter().map(|g| format!("{g:.0} Gb/s")));
        table(s, &head, &rows);
    }
    let _ = writeln!(
        s,
        "![the model's time per layer against the ranks, and one step's compute against its \
         transfer](img/ring_model.svg)\n"
    );
}

/// `docs/ring.md`.
pub fn render_ring_md(all: &RingResults, source: &str) -> String {
    let l = Latest::of(all);
    let mut s = String::new();
    let _ = writeln!(s, "# Ring attention: measured on this machine, and a scaling model\n");
    let _ = writeln!(
        s,
        "Generated by `attn ring-report` from `{source}` ({} measurements; the latest of each \
         configuration is shown). `scripts/ring-doc.sh` runs every measurement and regenerates \
         this page. Do not edit by hand: every number below is measured or computed from \
         measurements, and each names its commit, date and the load at the time.\n",
        all.entries.len()
    );
    let _ = writeln!(
        s,
        "Ring attention (`attn-ring`) shards a sequence over P ranks: each rank keeps its query \
         chunks while the K/V blocks travel around the ring, one step per rank; during each step \
         a rank computes its queries against the block it holds and sends that block on to the \
         next rank (double buffering), and merges the partial results by log-sum-exp. \
         `mpirun -np P attn ring` runs it over MPI, one process per rank; `attn ring --ranks P` \
         in one process.\n"
    );
    machine_section(&mut s, &l, all);
    measured_vs_model(&mut s, &l);
    model_section(&mut s, &l);
    s
}

/// `img/ring_model.svg`, two panels: the model's time per layer against
/// the ranks, one line per sequence length (100 Gb/s solid, 25 Gb/s
/// dashed); and one step's compute against its transfer at 25, 100 and 400
/// Gb/s, against the tokens per rank — where they cross, c*, transfers
/// start to hide.
pub fn plot_ring_model(all: &RingResults) -> PlotResult {
    let l = Latest::of(all);
    let lat = l.ping_pong.and_then(PingPongEntry::latency_s).ok_or("no ping-pong")?;
    if l.solos.is_empty() {
        return Err("no solo rank".into());
    }
    let colors = [
        RGBColor(30, 90, 200),
        RGBColor(20, 160, 120),
        RGBColor(240, 140, 40),
        RGBColor(200, 40, 40),
    ];
    let mut layer = Vec::new();
    for (&n, &color) in MODEL_TOKENS.iter().zip(&colors) {
        for (gbps, dashed) in [(100.0, false), (25.0, true)] {
            let points: Vec<(f64, f64)> = MODEL_RANKS
                .iter()
                .filter_map(|&p| {
                    let f = cell_throughput(&l, p, n)?.gflops * 1e9;
                    Some((p as f64, cell_model(p, n, f, gbps, lat).predict().layer_s))
                })
                .collect();
            layer.push(Series {
                label: format!("N = {}, {gbps:.0} Gb/s", tokens(n)),
                color,
                dashed,
                hollow: dashed,
                points,
            });
        }
    }
    // One step at c tokens per rank: a ring of 8 ranks over 8·c tokens (the
    // step does not depend on P beyond c).
    let chunks: Vec<usize> = (4..=21).map(|k| 1usize << k).collect();
    let step = |c: usize, gbps: f64| -> Option<Prediction> {
        let f = cell_throughput(&l, 8, 8 * c)?.gflops * 1e9;
        Some(cell_model(8, 8 * c, f, gbps, lat).predict())
    };
    let mut steps = vec![Series {
        label: "compute (measured throughput)".into(),
        color: BLACK,
        dashed: false,
        hollow: false,
        points: chunks
            .iter()
            .filter_map(|&c| Some((c as f64, step(c, 100.0)?.step_compute_s)))
            .collect(),
    }];
    for (&gbps, &color) in LINKS_GBPS.iter().zip(&colors[1..]) {
        steps.push(Series {
            label: format!("transfer at {gbps:.0} Gb/s"),
            color,
            dashed: true,
            hollow: true,
            points: chunks
                .iter()
                .filter_map(|&c| Some((c as f64, step(c, gbps)?.step_transfer_s)))
                .collect(),
        });
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1240, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(e2s)?;
        let (left, right) = root.split_horizontally(680);
        panel(
            &left,
            &format!(
                "Time per layer: causal, H = {MODEL_HEADS}, d = {MODEL_HEAD_DIM}, a rank = this machine"
            ),
            "P (ranks)",
            "seconds per layer (log)",
            &layer,
            true,
            &fmt_axis,
            None,
            SeriesLabelPosition::UpperRight,
            None,
        )?;
        panel(
            &right,
            "One step: compute against transfer",
            "tokens per rank",
            "seconds per step (log)",
            &steps,
            true,
            &fmt_axis,
            None,
            SeriesLabelPosition::UpperLeft,
            None,
        )?;
        root.present().map_err(e2s)?;
    }
    Ok(svg)
}

/// Writes `ring.md` and `img/ring_model.svg` into `docs` (the plot only
/// when the results have what it needs); `source` names the results file
/// in the text. Returns the paths written.
pub fn generate_ring(
    all: &RingResults,
    docs: &Path,
    source: &str,
) -> std::io::Result<Vec<PathBuf>> {
    let img = docs.join("img");
    std::fs::create_dir_all(&img)?;
    let mut written = Vec::new();
    match plot_ring_model(all) {
        Ok(svg) => {
            let p = img.join("ring_model.svg");
            std::fs::write(&p, svg)?;
            written.push(p);
        }
        Err(e) => eprintln!("attn ring-report: no ring_model.svg: {e}"),
    }
    let md = docs.join("ring.md");
    std::fs::write(&md, render_ring_md(all, source))?;
    written.push(md);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::results::{PingPongPoint, RankRecord};

    fn context(processes: usize, ranks_here: usize) -> Context {
        let mut c = Context::collect(None, processes, ranks_here);
        c.machine_cpus = 2;
        c.machine.git_commit = "0123456789abcdef".into();
        c.machine.date_utc = "2026-01-02 03:04:05 UTC".into();
        c.load_avg = "1.00 2.00 3.00".into();
        c
    }

    fn problem(n: usize, ranks: usize, threads: usize) -> ProblemRecord {
        ProblemRecord {
            batch: 1,
            q_heads: 8,
            kv_heads: 8,
            q_len: n,
            kv_len: n,
            head_dim: 64,
            v_dim: 64,
            mask: "causal".into(),
            layout: "zigzag".into(),
            ranks,
            threads,
        }
    }

    fn solo(n: usize, ranks: usize, gflops: f64) -> Entry {
        let p = problem(n, ranks, 2);
        let flops = (n * n / 2) as f64 / ranks as f64 * p.flops_per_pair();
        Entry::Solo(SoloEntry {
            context: context(1, 1),
            rank: 0,
            warmup: 0,
            computes_s: vec![flops / gflops / 1e9],
            compute_s: flops / gflops / 1e9,
            flops,
            gflops,
            chunk: n / ranks,
            block_rows: n / ranks / 2,
            problem: p,
        })
    }

    fn ring(n: usize, ranks: usize, transport: &str, wall: f64) -> Entry {
        let p = problem(n, ranks, 1);
        let flops = (n * n / 2) as f64 * p.flops_per_pair();
        let rank = |r: usize| RankRecord {
            rank: r,
            compute_s: wall * 0.9,
            exposed_comm_s: 0.01,
            agreement_s: 0.05,
            total_s: wall,
            transfer_alone_s: 0.1,
            overlap: Some(0.9),
            flops: flops / ranks as f64,
            gflops: flops / ranks as f64 / (wall * 0.9) / 1e9,
            pairs_computed: 2 * ranks,
            pairs_skipped: 2 * ranks,
            bytes_sent: 1 << 20,
        };
        Entry::Ring(RingEntry {
            context: context(if transport == "mpi" { ranks } else { 1 }, ranks),
            transport: transport.into(),
            warmup: 0,
            reps: 1,
            walls_s: vec![wall],
            wall_s: wall,
            flops,
            gflops: flops / wall / 1e9,
            exposed_comm_s: 0.01 * ranks as f64,
            transfer_alone_s: 0.1 * ranks as f64,
            overlap: Some(0.9),
            ranks: (0..ranks).map(rank).collect(),
            problem: p,
        })
    }

    fn ping_pong() -> Entry {
        let point = |bytes: usize, s: f64| PingPongPoint {
            bytes,
            round_trips: 10,
            one_way_s: s,
            best_one_way_s: s * 0.9,
        };
        Entry::PingPong(PingPongEntry {
            context: context(2, 2),
            points: vec![point(8, 5e-7), point(1 << 27, 0.04)],
        })
    }

    fn results() -> RingResults {
        RingResults {
            schema: 1,
            entries: vec![
                solo(65536, 4, 50.0),
                solo(16384, 64, 20.0),
                ping_pong(),
                ring(65536, 2, "mpi", 40.0),
                ring(65536, 4, "mpi", 45.0),
                // A newer measurement of the same ring replaces the older.
                ring(65536, 4, "mpi", 44.0),
                ring(4096, 3, "in-process", 1.0),
            ],
        }
    }

    #[test]
    fn the_page_has_every_section_from_the_measurements() {
        let md = render_ring_md(&results(), "results/ring.json");
        for want in [
            "from `results/ring.json` (7 measurements",
            "### Per-rank kernel throughput",
            "### MPI point-to-point",
            "Latency (the smallest message, one way): **0.500 µs**",
            "bandwidth (the largest message): **3.36 GB/s**",
            "4 processes (MPI, 4 on this machine)",
            "3 threads of one process (in-process transport)",
            "## Measured rings against the model",
            "Assumptions:",
            "**N = 16M tokens**",
            "0123456789, 2026-01-02 03:04:05 UTC, load 1.00 2.00 3.00",
        ] {
            assert!(md.contains(want), "{want:?} not in\n{md}");
        }
        assert!(!md.contains("| 45.0 s |"), "the older ring is shown:\n{md}");
        // 4 model tables of 8 rows, 3 measured rings, 2 solos, 2 points...
        let rows = md.lines().filter(|l| l.starts_with("| 1024 |")).count();
        assert_eq!(rows, 4);
        // Measured against the model: per-rank F = the same ring's solo on
        // the machine's 2 CPUs (50 GFLOP/s) × min(4 ranks × 1 thread, 2
        // CPUs) / (2 CPUs × 4 ranks) = 12.5 GFLOP/s.
        let f4 =
            "| 4 | 65536 | 12.5 (machine: 50.0 on 2 thread(s); 4 ranks × 1 thread(s) on 2 CPUs) |";
        assert!(md.contains(f4), "{md}");
        let f2 = "| 2 | 65536 | 25.0 (machine: 50.0 on 2 thread(s), nearest chunk; 2 ranks × 1";
        assert!(md.contains(f2), "{md}");
    }

    #[test]
    fn model_cells_follow_the_model() {
        let r = results();
        let l = Latest::of(&r);
        // The big-chunk cells use the solo at 8192 rows, small ones the
        // solo at 128 rows.
        assert_eq!(cell_throughput(&l, 8, 1 << 20).unwrap().gflops, 50.0);
        assert_eq!(cell_throughput(&l, 1024, 1 << 18).unwrap().gflops, 20.0);
        // A cell's verdict is the model's.
        let md = render_ring_md(&r, "x");
        let m = cell_model(1024, 1 << 18, 20e9, 25.0, 5e-7).predict();
        let want = format!("| 1024 | 256 | 20.0 (128 rows) | {} |", fmt_secs(m.step_compute_s));
        let line = md.lines().find(|l| l.starts_with(&want)).expect(&want);
        assert!(line.contains(if m.hidden { "✓" } else { "✗" }), "{line}");
        // 256 tokens a rank at 20 GFLOP/s: c* = 4·F/B = 25.6 at 25 Gb/s, so
        // it hides; a 1 GFLOP/s·10⁶ rank would not.
        assert!(m.hidden);
        assert!(!cell_model(1024, 1 << 18, 1e15, 25.0, 5e-7).predict().hidden);
    }

    #[test]
    fn an_empty_file_renders_and_says_what_is_missing() {
        let md = render_ring_md(&RingResults::default(), "results/ring.json");
        assert!(md.contains("Needs a ring measured over MPI"), "{md}");
        assert!(md.contains("Needs a ping-pong"), "{md}");
        assert!(plot_ring_model(&RingResults::default()).is_err());
    }

    #[test]
    fn the_plot_and_the_page_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let paths = generate_ring(&results(), dir.path(), "results/ring.json").unwrap();
        assert_eq!(paths.len(), 2);
        let svg = std::fs::read_to_string(dir.path().join("img/ring_model.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("N = 16M, 100 Gb/s"), "{svg:.200}");
        assert!(dir.path().join("ring.md").exists());
    }
}
