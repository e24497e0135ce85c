//! Backward saturation statistics (`off_argmax`, `key_grad`,
//! `attnlab::stats`) of the flash backward against the f64 oracle
//! backward: every grouping, mask, Nq ≠ Nk, each score modifier, key
//! chunks (`C > 1`) and several tiles, fully masked and single-key rows,
//! exact ties of the argmax across tiles and chunks, identical bits for
//! any thread count, gradients unchanged by asking.
//!
//! Every problem's O and LSE come from the f64 oracle forward, rounded to
//! f32, as in `tests/modifiers_backward.rs`, whose per-pair error model of
//! `dS` the tolerances follow (see [`expect`]).

use crate::common::*;
use attnlab::modifiers::{Alibi, ScoreMods};
use attnlab::naive::{ReferenceGrads, reference, reference_backward};
use attnlab::{
    AttnInputs, AttnParams, AttnShape, BackwardInputs, BackwardKernel, BackwardStatsMut,
    CheckedBackward, Flash, GradsMut, Layout, Mask, Par, TensorView,
};

/// Which modifiers a case turns on: a full bias `[B, Hq, Nq, Nk]` of this
/// amplitude with this fraction of `−inf` entries, ALiBi slopes
/// `base·(1 + h)`, a softcap, sinks of this amplitude.
#[derive(Debug, Clone, Copy, Default)]
struct Mods {
    bias: Option<(f32, f64)>,
    alibi: Option<f32>,
    softcap: Option<f32>,
    sinks: Option<f32>,
}

/// One problem: inputs in one layout, the modifiers' data, the oracle
/// forward's O and LSE (rounded to f32) and a seeded dO.
struct Case {
    shape: AttnShape,
    layout: Layout,
    mask: Mask,
    scale: Option<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    d_out: Vec<f32>,
    bias: Option<Vec<f32>>,
    slopes: Option<Vec<f32>>,
    softcap: Option<f32>,
    sinks: Option<Vec<f32>>,
    out: Vec<f32>,
    lse: Vec<f32>,
}

/// Flash's gradients and, when asked, its `(off_argmax, key_grad)`.
type Run = ([Vec<f32>; 3], Option<(Vec<f32>, Vec<f32>)>);

impl Case {
    fn new(dims: [usize; 7], mask: Mask, layout: Layout, mods: Mods, amp: f32, seed: u64) -> Case {
        let shape = shape_of(dims);
        let (q, k, v) = make_inputs(&shape, amp, seed);
        Case::with(shape, mask, layout, mods, (q, k, v), seed)
    }

    fn with(
        shape: AttnShape,
        mask: Mask,
        layout: Layout,
        mods: Mods,
        (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>),
        seed: u64,
    ) -> Case {
        let d_out = random(shape.out_dims().iter().product(), 1.0, &mut rng(seed ^ 0xd0));
        let hq = shape.q_heads();
        let mut g = rng(seed ^ 0xb1a5);
        let bias = mods.bias.map(|(amp, ninf)| {
            let n = shape.lse_len() * shape.kv_len();
            let mut x = random(n, amp, &mut g);
            let mut pick = rng(seed ^ 0x1f);
            for e in &mut x {
                if rand::RngExt::random_bool(&mut pick, ninf) {
                    *e = f32::NEG_INFINITY;
                }
            }
            x
        });
        let slopes = mods.alibi.map(|base| (0..hq).map(|h| base * (1.0 + h as f32)).collect());
        let sinks = mods.sinks.map(|amp| random(hq, amp, &mut g));
        let mut c = Case {
            shape,
            layout,
            mask,
            scale: None,
            q,
            k,
            v,
            d_out,
            bias,
            slopes,
            softcap: mods.softcap,
            sinks,
            out: Vec::new(),
            lse: Vec::new(),
        };
        c.refresh();
        c
    }

    /// O and LSE from the oracle forward, rounded to f32 (O in the case's
    /// layout).
    fn refresh(&mut self) {
        let (s, layout) = (self.shape, self.layout);
        let inputs = AttnInputs::from_slices(s, layout, &self.q, &self.k, &self.v).unwrap();
        let r = reference(&inputs, &self.params());
        let [sb, sh, sn] = layout.strides(s.out_dims());
        let (hq, nq, dv) = (s.q_heads(), s.q_len(), s.v_dim());
        let mut out = vec![0f32; s.out_dims().iter().product()];
        for b in 0..s.batch() {
            for h in 0..hq {
                for i in 0..nq {
                    for cc in 0..dv {
                        out[b * sb + h * sh + i * sn + cc] =
                            r.out[((b * hq + h) * nq + i) * dv + cc] as f32;
                    }
                }
            }
        }
        self.out = out;
        self.lse = r.lse.iter().map(|x| *x as f32).collect();
    }

    fn params(&self) -> AttnParams<'_> {
        let s = &self.shape;
        let bd = [s.batch(), s.q_heads(), s.q_len(), s.kv_len()];
        AttnParams {
            mask: self.mask,
            scale: self.scale,
            softcap: self.softcap,
            alibi: self.slopes.as_deref().map(Alibi::Slopes),
            sinks: self.sinks.as_deref(),
            bias: self.bias.as_ref().map(|x| TensorView::new("bias", x, bd, Layout::Bhnd).unwrap()),
            ..AttnParams::default()
        }
    }

    fn inputs(&self) -> BackwardInputs<'_, f32> {
        let (s, l) = (self.shape, self.layout);
        BackwardInputs::from_slices(
            s,
            l,
            &self.q,
            &self.k,
            &self.v,
            &self.out,
            &self.lse,
            &self.d_out,
        )
        .unwrap()
    }

    /// The flash backward on `par`, with statistics when `stats` (buffers
    /// filled with NaN first, so that every entry must be written).
    fn flash(&self, par: Par, stats: bool) -> Run {
        let n = |d: [usize; 4]| d.iter().product::<usize>();
        let s = &self.shape;
        let mut g = [
            vec![f32::NAN; n(s.q_dims())],
            vec![f32::NAN; n(s.k_dims())],
            vec![f32::NAN; n(s.v_dims())],
        ];
        let keys = s.batch() * s.kv_heads() * s.kv_len();
        let (mut off, mut kg) = (vec![f32::NAN; s.lse_len()], vec![f32::NAN; keys]);
        let params = self.params();
        let inputs = self.inputs();
        {
            let [dq, dk, dv] = &mut g;
            let mut views = GradsMut::from_slices(s, self.layout, dq, dk, dv).unwrap();
            let mut call = CheckedBackward::new(&inputs, &mut views, &params, par).unwrap();
            if stats {
                let st = BackwardStatsMut { off_argmax: &mut off, key_grad: &mut kg };
                call = call.with_stats(st).unwrap();
            }
            Flash::default().run_backward(call).unwrap();
        }
        (g, stats.then_some((off, kg)))
    }
}

/// What a row's `off_argmax` may be: the share off each key that may be
/// the argmax in f32, with its tolerance; `exact_zero` when the row has at
/// most one key of nonzero weight (the kernel then sends its whole mass,
/// if any, to that key: 0 exactly).
struct RowWant {
    cands: Vec<(f64, f64)>,
    exact_zero: bool,
}

/// Per row the allowed `off_argmax` values, per key the tolerance of
/// `key_grad` — from an f64 pass over the problem checked against the
/// oracle's own values — with the error model of
/// `tests/modifiers_backward.rs` (`grad_tolerance`), per (query, key):
///
/// - `P = 2^(S' − LSE·log2e)` is off by a relative `δ = 16·eps·L + 2·eps·(1
///   + |lse|) + 1e-6` (`+ 8·eps·|s'|` with a softcap), `L` bounding the
///   terms of the score; with a softcap `c` its slope `f = 1 − (s'/c)²` is
///   off by `Δf` (that file's formula); so `dS = P·(dP − D)·f` is off by
///   `ε = P·(e·A + E)`, `e = δ·f + Δf`, `A = max_j(|dP_j| + |D|)` and
///   `E = dv·eps·(A + max|dO|·max|V|)` — taken per row here (that file
///   takes them over the problem, an upper bound of these) — plus the
///   whole `|dS|` where `P` is below f32's range (2⁻¹⁰⁰).
/// - A row's f32 sum `Σ'` of its `n` values `|dS|` is off by at most
///   `Eσ = Σ ε` from the `dS` errors and `n·eps·Σ` from the summation
///   (non-negative terms); its argmax term by `ε_a`. So
///   `off = 1 − a/Σ` is off by at most `(ε_a + Eσ + n·eps·Σ) / (Σ·(1 −
///   n·eps) − Eσ)` (to first order in the relative errors, each ≲ 1e-4),
///   plus `4·eps` for the last subtraction and division; no bound (1)
///   when the denominator is not positive: `Σ` within its own error, as
///   in a row whose weight is almost all on one key (its `dS` are all
///   ~`P·(1 − P)·dP`, below the f32 error of `dP − D`).
/// - The argmax: key `j` may be the kernel's argmax when
///   `P_j·e^{δ_j} ≥ P_max·e^{−δ_max}`; each such key gives a candidate
///   share (a single one without near-ties). With `strict`, only the
///   oracle's argmax (the first key of largest f64 weight) is allowed:
///   for exact ties by construction, whose f32 weights are equal too.
/// - `key_grad_j`: `Σ_i ε_ij + (m_j + 1)·eps·kg_j` over the `m_j` rows of
///   the group that reach it (summation and the final rounding).
fn expect(c: &Case, r: &ReferenceGrads, strict: bool) -> (Vec<RowWant>, Vec<f64>) {
    struct Key {
        j: usize,
        p: f64,
        ds: f64,
        delta: f64,
        e: f64,
    }
    let params = c.params();
    let inputs = c.inputs();
    let s = c.shape;
    let (nq, nk, dv, hq) = (s.q_len(), s.kv_len(), s.v_dim(), s.q_heads());
    let mods = ScoreMods::new(&params, hq);
    // the oracle's scale: in f64 when it is the default 1/sqrt(d)
    let scale = params.scale.map_or(1.0 / (s.head_dim() as f64).sqrt(), f64::from);
    let eps = f32::EPSILON as f64;
    let amax = |x: &[f32]| x.iter().fold(0f64, |a, v| a.max(v.abs() as f64));
    let vm = amax(&c.v);
    let fwd = reference(&inputs.fwd, &params);
    // per row: its keys, and its error of `dP − D` (`E`) and bound `A`
    let mut rows: Vec<(Vec<Key>, f64, f64)> = Vec::with_capacity(s.lse_len());
    for b in 0..s.batch() {
        for h in 0..hq {
            let g = s.kv_head_of(h);
            for i in 0..nq {
                let bh = b * hq + h;
                let lse = fwd.lse[bh * nq + i];
                let (mut keys, mut a_row, mut gm) = (Vec::new(), 0f64, 0f64);
                if lse.is_finite() {
                    let o = &fwd.out[(bh * nq + i) * dv..][..dv];
                    let doi = inputs.d_out.row(b, h, i);
                    gm = amax(doi);
                    let dd: f64 = doi.iter().zip(o).map(|(a, x)| *a as f64 * x).sum();
                    let qi = inputs.fwd.q.row(b, h, i);
                    let diag = (i + nk) as i64 - nq as i64;
                    for j in params.mask.key_range(i, nq, nk) {
                        let kj = inputs.fwd.k.row(b, g, j);
                        let dot: f64 = qi.iter().zip(kj).map(|(x, y)| *x as f64 * *y as f64).sum();
                        let labs: f64 =
                            qi.iter().zip(kj).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
                        let bias = mods.bias_row(b, h, i).map_or(0.0, |row| row[j] as f64);
                        let dist = (diag - j as i64).unsigned_abs() as f64;
                        let slope = mods.slope(h).map_or(0.0, |x| x as f64);
                        let sp = mods.score_f64(scale * dot, b, h, i, diag, j);
                        let p = (sp - lse).exp();
                        if p == 0.0 {
                            continue; // a −inf score: no gradient (the oracle's rule)
                        }
                        let l = scale.abs() * labs + bias.abs() + slope.abs() * dist;
                        let dsc = 16.0 * eps * l;
                        let mut delta = dsc + 2.0 * eps * (1.0 + lse.abs()) + 1e-6;
                        let (f, df) = match mods.softcap {
                            Some(cap) => {
                                let (cap, t) = (cap as f64, sp / cap as f64);
                                delta += 8.0 * eps * sp.abs();
                                let sens = 2.0 * t.abs() * (1.0 - t * t) / cap;
                                (
                                    1.0 - t * t,
                                    (sens * dsc + (dsc / cap).powi(2) + 4.0 * eps).min(1.0),
                                )
                            }
                            None => (1.0, 0.0),
                        };
                        let vj = inputs.fwd.v.row(b, g, j);
                        let dp: f64 = doi.iter().zip(vj).map(|(x, y)| *x as f64 * *y as f64).sum();
                        a_row = a_row.max(dp.abs() + dd.abs());
                        let ds = p * (dp - dd) * f;
                        keys.push(Key { j, p, ds, delta, e: delta * f + df });
                    }
                }
                rows.push((keys, a_row, dv as f64 * eps * (a_row + gm * vm)));
            }
        }
    }
    let err = |k: &Key, a: f64, big_e: f64| {
        let under = if k.p < 2f64.powi(-100) { k.ds.abs() } else { 0.0 };
        k.p * (k.e * a + big_e) + under
    };
    let nkeys = s.batch() * s.kv_heads() * nk;
    let (mut kg, mut kg_err, mut kg_rows) =
        (vec![0f64; nkeys], vec![0f64; nkeys], vec![0usize; nkeys]);
    let mut want = Vec::with_capacity(rows.len());
    for (row, (keys, a, big_e)) in rows.iter().enumerate() {
        let err = |k: &Key| err(k, *a, *big_e);
        let (b, h) = (row / (hq * nq), row / nq % hq);
        let col0 = (b * s.kv_heads() + s.kv_head_of(h)) * nk;
        for k in keys {
            kg[col0 + k.j] += k.ds.abs();
            kg_err[col0 + k.j] += err(k);
            kg_rows[col0 + k.j] += 1;
        }
        let sum: f64 = keys.iter().map(|k| k.ds.abs()).sum();
        let esum: f64 = keys.iter().map(err).sum();
        let n = keys.len() as f64;
        let den = sum * (1.0 - n * eps) - esum;
        let share = |k: &Key| {
            let tol =
                if den > 0.0 { (err(k) + esum + n * eps * sum) / den + 4.0 * eps } else { 1.0 };
            ((sum - k.ds.abs()) / sum, tol)
        };
        // the f64 argmax: the first key of largest weight
        let first = keys.iter().fold(None::<&Key>, |best, k| match best {
            Some(x) if k.p <= x.p => Some(x),
            _ => Some(k),
        });
        let exact_zero = keys.len() <= 1;
        let mut cands = Vec::new();
        if let Some(a) = first {
            let (sh, _) = share(a);
            let o = r.off_argmax[row];
            assert!(
                exact_zero || (sh - o).abs() <= 1e-9,
                "row {row}: the test's f64 share {sh} but the oracle's {o}"
            );
            if strict {
                cands.push(share(a));
            } else {
                let bound = a.p * (-a.delta).exp();
                cands.extend(keys.iter().filter(|k| k.p * k.delta.exp() >= bound).map(share));
            }
        } else {
            assert_eq!(r.off_argmax[row], 0.0, "row {row}");
        }
        want.push(RowWant { cands, exact_zero });
    }
    let kg_tol: Vec<f64> = (0..nkeys)
        .map(|j| {
            let w = r.key_grad[j];
            assert!(
                (kg[j] - w).abs() <= 1e-9 * (1.0 + w),
                "key {j}: the test's {} but the oracle's {w}",
                kg[j]
            );
            kg_err[j] + (kg_rows[j] + 1) as f64 * eps * w
        })
        .collect();
    (want, kg_tol)
}

/// The worst `error / tolerance` of the comparisons with a bound, and
/// counts of rows.
#[derive(Debug, Default, Clone, Copy)]
struct Worst {
    off: f64,
    key: f64,
    /// Rows with some mass off the argmax checked to better than 1e-3.
    tight: usize,
    /// Rows with no bound (only `0 ≤ off_argmax ≤ 1` checked).
    loose: usize,
    rows: usize,
}

impl Worst {
    fn add(&mut self, w: Worst) {
        self.off = self.off.max(w.off);
        self.key = self.key.max(w.key);
        self.tight += w.tight;
        self.loose += w.loose;
        self.rows += w.rows;
    }
}

/// Flash's statistics (sequential) against the oracle's on one case;
/// identical bits on 2 and 3 threads, and the gradients the same bits as
/// without statistics. Returns the worst error-to-tolerance ratios.
fn check(what: &str, c: &Case, strict: bool) -> Worst {
    let what = format!("{what} {:?} {:?} {:?}", c.shape, c.mask, c.layout);
    let r = reference_backward(&c.inputs(), &c.params());
    let (want, kg_tol) = expect(c, &r, strict);
    let (grads, stats) = c.flash(Par::Seq, true);
    let (off, kg) = stats.unwrap();
    let mut worst = Worst::default();
    for (row, (w, got)) in want.iter().zip(&off).enumerate() {
        if w.exact_zero {
            assert_eq!(*got, 0.0, "{what}: row {row} has at most one key, off_argmax {got}");
            continue;
        }
        let ratio = w
            .cands
            .iter()
            .map(|(sh, tol)| (*got as f64 - sh).abs() / tol)
            .fold(f64::INFINITY, f64::min);
        assert!(
            ratio <= 1.0 && (0.0..=1.0).contains(got),
            "{what}: row {row} off_argmax {got}, allowed (share, tol) {:?} (oracle {})",
            w.cands,
            r.off_argmax[row]
        );
        worst.rows += 1;
        if w.cands.iter().all(|(_, t)| *t >= 1.0) {
            worst.loose += 1;
            continue;
        }
        worst.off = worst.off.max(ratio);
        if w.cands.iter().all(|(_, t)| *t < 1e-3) && r.off_argmax[row] > 1e-3 {
            worst.tight += 1;
        }
    }
    for (j, ((got, want), tol)) in kg.iter().zip(&r.key_grad).zip(&kg_tol).enumerate() {
        let e = (*got as f64 - want).abs();
        assert!(
            e <= *tol,
            "{what}: key_grad[{j}] = {got} but oracle {want} (|err| {e:.3e} > tol {tol:.3e})"
        );
        if *tol > 0.0 {
            worst.key = worst.key.max(e / tol);
        }
    }
    // any thread count: the same bits; asking changes no gradient's bits
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for n in [2, 3] {
        let (g, st) = c.flash(Par::rayon(n).unwrap(), true);
        let (o, k) = st.unwrap();
        assert_eq!(bits(&o), bits(&off), "{what}: off_argmax on {n} threads");
        assert_eq!(bits(&k), bits(&kg), "{what}: key_grad on {n} threads");
        for t in 0..3 {
            assert_eq!(bits(&g[t]), bits(&grads[t]), "{what}: gradient {t} on {n} threads");
        }
    }
    let (plain, _) = c.flash(Par::Seq, false);
    for t in 0..3 {
        assert_eq!(bits(&plain[t]), bits(&grads[t]), "{what}: gradient {t} without statistics");
    }
    worst
}

const W: Mask = Mask::Window { left: Some(20), right: Some(5) };

/// Shapes `[B, Hq, Hkv, Nq, Nk, d, dv]` with their key chunks `C` (the
/// plan splits keys when `B·Hkv < 8`) and tiles of 64.
const SHAPES: [[usize; 7]; 6] = [
    [1, 4, 4, 70, 70, 32, 32],   // MHA, C = 2 (one tile each)
    [2, 6, 2, 65, 130, 24, 40],  // GQA, Nq < Nk, dv != d, C = 2 of 3 tiles
    [1, 4, 1, 100, 200, 16, 16], // MQA, C = 4
    [1, 2, 1, 150, 60, 16, 8],   // MQA, Nq > Nk: causal masks 90 rows; C = 1
    [1, 8, 8, 130, 130, 32, 32], // MHA, C = 1, 3 × 3 tiles
    [1, 1, 1, 40, 700, 64, 64],  // C = 8 chunks of 1-2 tiles
];

#[test]
fn stats_match_the_oracle_for_every_grouping_and_mask() {
    let mut worst = Worst::default();
    let mut n = 0u64;
    for dims in SHAPES {
        for mask in [Mask::None, Mask::Causal, W] {
            for amp in [1.0, 2.5] {
                n += 1;
                let layout = if n.is_multiple_of(2) { Layout::Bhnd } else { Layout::Bnhd };
                let c = Case::new(dims, mask, layout, Mods::default(), amp, n);
                worst.add(check(&format!("amp {amp}"), &c, false));
            }
        }
    }
    println!("{worst:?}");
    // not vacuous: thousands of rows with mass off the argmax, checked
    // to better than 1e-3
    assert!(worst.tight > 5000, "{worst:?}");
}

#[test]
fn each_modifier_and_all_combined_match_the_oracle() {
    let table = [
        ("bias", Mods { bias: Some((2.0, 0.05)), ..Mods::default() }),
        ("alibi", Mods { alibi: Some(0.1), ..Mods::default() }),
        ("softcap 5", Mods { softcap: Some(5.0), ..Mods::default() }),
        ("sinks", Mods { sinks: Some(2.0), ..Mods::default() }),
        (
            "all",
            Mods {
                bias: Some((2.0, 0.05)),
                alibi: Some(0.05),
                softcap: Some(3.0),
                sinks: Some(2.0),
            },
        ),
    ];
    let mut worst = Worst::default();
    let mut n = 100u64;
    for dims in [SHAPES[1], SHAPES[2], SHAPES[3], SHAPES[5]] {
        for mask in [Mask::None, Mask::Causal, W] {
            for (name, mods) in table {
                n += 1;
                let layout = if n.is_multiple_of(2) { Layout::Bhnd } else { Layout::Bnhd };
                let c = Case::new(dims, mask, layout, mods, 1.5, n);
                worst.add(check(name, &c, false));
            }
        }
    }
    println!("{worst:?}");
    assert!(worst.tight > 5000, "{worst:?}");
}

/// Rows that see no key (causal with Nq > Nk, a row whose every bias entry
/// is `−inf`) and rows that see one (the diagonal window, the first
/// visible row of a causal Nq > Nk, Nk = 1): `off_argmax` exactly 0, with
/// and without sinks; `key_grad` against the oracle.
#[test]
fn masked_and_single_key_rows_give_zero() {
    let diag = Mask::Window { left: Some(0), right: Some(0) };
    for sinks in [None, Some(1.0)] {
        let mods = Mods { sinks, ..Mods::default() };
        // causal, Nq > Nk: rows 0..60 see nothing, row 60 sees key 0
        let c = Case::new([1, 3, 1, 100, 40, 16, 16], Mask::Causal, Layout::Bhnd, mods, 1.0, 7);
        check("masked rows", &c, false);
        let (_, st) = c.flash(Par::Seq, true);
        let (off, _) = st.unwrap();
        for h in 0..3 {
            assert!(off[h * 100..h * 100 + 61].iter().all(|x| *x == 0.0), "{sinks:?} head {h}");
            // the later rows do send mass off their argmax
            assert!(off[h * 100 + 70..(h + 1) * 100].iter().all(|x| *x > 0.0), "{sinks:?}");
        }
        // one key per row: the diagonal window, and Nk = 1
        for (dims, mask) in
            [([1, 2, 1, 130, 130, 16, 16], diag), ([2, 2, 2, 70, 1, 8, 8], Mask::None)]
        {
            let c = Case::new(dims, mask, Layout::Bnhd, mods, 1.0, 8);
            check("single key", &c, false);
            let (_, st) = c.flash(Par::Seq, true);
            let (off, kg) = st.unwrap();
            assert!(off.iter().all(|x| *x == 0.0), "{dims:?} {sinks:?}");
            // with a sink the one key's dS = p·(1 − p)·dP is not 0
            if sinks.is_some() {
                assert!(kg.iter().all(|x| *x > 0.0), "{dims:?}");
            }
        }
    }
    // every bias entry of rows 3 and 64 of each head −inf: no key, with or
    // without a sink; the others see their keys
    for sinks in [None, Some(0.5)] {
        let mods = Mods { bias: Some((1.0, 0.0)), sinks, ..Mods::default() };
        let mut c = Case::new([1, 2, 1, 80, 90, 16, 16], Mask::None, Layout::Bhnd, mods, 1.0, 9);
        let bias = c.bias.as_mut().unwrap();
        for h in 0..2 {
            for i in [3, 64] {
                bias[(h * 80 + i) * 90..][..90].fill(f32::NEG_INFINITY);
            }
        }
        c.refresh();
        check("-inf bias rows", &c, false);
        let (_, st) = c.flash(Par::Seq, true);
        let (off, _) = st.unwrap();
        for h in 0..2 {
            assert_eq!((off[h * 80 + 3], off[h * 80 + 64]), (0.0, 0.0), "{sinks:?}");
            assert!(off[h * 80 + 4] > 0.0);
        }
    }
}

/// Any scale: the kernel's `dS` tile is in natural units, so the
/// statistics do not depend on how the scale is folded. A negative scale,
/// and a zero one: every score 0, every row's weights equal (exact ties,
/// in f64 and in the kernel), so each row's argmax is its first key —
/// checked strictly — and its mass is not 0 (dQ and dK are).
#[test]
fn any_scale_even_zero_or_negative() {
    for (scale, strict) in [(-0.3f32, false), (0.0, true)] {
        for (dims, mask) in [(SHAPES[2], Mask::Causal), (SHAPES[5], W), (SHAPES[1], Mask::None)] {
            let mut c = Case::new(dims, mask, Layout::Bhnd, Mods::default(), 1.0, 300);
            c.scale = Some(scale);
            c.refresh();
            check(&format!("scale {scale}"), &c, strict);
            if scale == 0.0 {
                let (g, st) = c.flash(Par::Seq, true);
                let (off, kg) = st.unwrap();
                assert!(g[0].iter().chain(&g[1]).all(|x| *x == 0.0));
                assert!(off.iter().filter(|x| **x > 0.1).count() * 2 > off.len(), "{dims:?}");
                assert!(kg.iter().any(|x| *x > 0.0));
            }
        }
    }
}

/// Exact ties of the argmax across lanes, tiles and chunks: five keys of
/// each K/V head share one K row that dominates every query's scores (by
/// ~4.5 nats over the rest), at positions 10, 50 (tile 0), 70 (tile 1),
/// 200 (tile 3) and 290 (tile 4) — each tile its own chunk in MQA, four
/// chunks in GQA. Their scores, hence weights, are the same bits in f64
/// and in the kernel, so the argmax must be the first the row sees, as in
/// the oracle: checked strictly (no near-tie allowance), with masks that
/// hide different copies from different rows, and with a softcap and
/// sinks. Their values differ, so the shares tell the copies apart (checked).
#[test]
fn exact_ties_go_to_the_first_key_across_tiles_and_chunks() {
    let copies = [10usize, 50, 70, 200, 290];
    let window = Mask::Window { left: Some(230), right: Some(0) };
    let mut n = 200u64;
    for dims in [[1, 2, 1, 40, 300, 16, 16], [1, 4, 2, 40, 300, 16, 16]] {
        let shape = shape_of(dims);
        for mask in [Mask::None, Mask::Causal, window] {
            for mods in
                [Mods::default(), Mods { softcap: Some(20.0), sinks: Some(1.0), ..Mods::default() }]
            {
                n += 1;
                let mut g = rng(n);
                let q: Vec<f32> = random(shape.q_dims().iter().product(), 0.3, &mut g)
                    .iter()
                    .map(|x| x + 1.0)
                    .collect();
                let mut k = random(shape.k_dims().iter().product(), 0.5, &mut g);
                let v = random(shape.v_dims().iter().product(), 1.0, &mut g);
                for kv in 0..shape.kv_heads() {
                    for j in copies {
                        k[(kv * 300 + j) * 16..][..16].fill(1.5);
                    }
                }
                let c = Case::with(shape, mask, Layout::Bhnd, mods, (q, k, v), n);
                let r = reference_backward(&c.inputs(), &c.params());
                let (strict, _) = expect(&c, &r, true);
                let (loose, _) = expect(&c, &r, false);
                // the copies' shares differ by more than the tolerances
                let apart = strict
                    .iter()
                    .zip(&loose)
                    .filter(|(s, l)| {
                        let (want, t) = s.cands.first().copied().unwrap_or((0.0, 1.0));
                        l.cands.len() >= 2
                            && l.cands
                                .iter()
                                .filter(|(x, u)| (x - want).abs() > 2.0 * (t + u))
                                .count()
                                == l.cands.len() - 1
                    })
                    .count();
                assert!(
                    apart * 10 >= strict.len() * 9,
                    "{dims:?} {mask:?}: {apart} of {}",
                    strict.len()
                );
                check("ties", &c, true);
            }
        }
    }
}

/// The cost of the statistics: N = 4096, d = 64, causal, one thread, MHA
/// with 8 heads (one key chunk per head) and with 1 (8 chunks); calls
/// alternate without and with statistics, 21 pairs: the medians of each
/// and of the pairs' ratios. `cargo test --release -p attnlab --test tests
/// stats_backward_overhead -- --ignored --nocapture`.
#[test]
#[ignore]
fn stats_backward_overhead() {
    let n = 4096;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for h in [8, 1] {
        let shape = shape_of([1, h, h, n, n, 64, 64]);
        let (q, k, v) = make_inputs(&shape, 1.0, 1);
        let p = AttnParams::causal();
        let fwd = attnlab::attention(&shape, &q, &k, &v, &p).unwrap();
        let d_out = random(fwd.out.len(), 1.0, &mut rng(2));
        let c = Case {
            shape,
            layout: Layout::Bhnd,
            mask: Mask::Causal,
            scale: None,
            q,
            k,
            v,
            d_out,
            bias: None,
            slopes: None,
            softcap: None,
            sinks: None,
            out: fwd.out,
            lse: fwd.lse,
        };
        let time = |stats: bool| {
            let t = std::time::Instant::now();
            std::hint::black_box(c.flash(Par::Seq, stats));
            t.elapsed().as_secs_f64()
        };
        time(true);
        let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..21 {
            let (x, y) = (time(false), time(true));
            a.push(x);
            b.push(y);
            r.push(y / x);
        }
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (amin, bmin) = (min(&a), min(&b));
        let (a, b, r) = (median(a), median(b), median(r));
        println!(
            "H = {h}: without {:.1} ms, with statistics {:.1} ms (medians; fastest {:.1}, {:.1}), \
             median of the pairs' ratios {r:.3}",
            a * 1e3,
            b * 1e3,
            amin * 1e3,
            bmin * 1e3
        );
    }
}
