//! Score modifiers in the flash backward: gradients (and dsinks) against the f64 oracle backward.
//!
//! Every problem's O and LSE come from the f64 oracle forward with the same
//! modifiers, rounded to f32, so the backward is tested on its own (the
//! flash forward with modifiers has its own tests). The tolerance model is
//! the one of `tests/backward.rs`, made per (query, key) pair so that it
//! follows what the modifiers do to the scores (see [`grad_tolerance`]).

use crate::backward::assert_grads;
use crate::common::*;
use attnlab::modifiers::{Alibi, ScoreMods};
use attnlab::naive::{ReferenceGrads, reference, reference_backward};
use attnlab::{
    AttnError, AttnInputs, AttnParams, AttnShape, BackwardInputs, GradsMut, Kernel, Layout, Mask,
    Par, TensorView,
};
use proptest::prelude::*;

/// The additive bias of a case: its dims (`[B|1, Hq|1, Nq, Nk]`, chosen by
/// `broadcast`: 0 = full, 1 = one batch entry, 2 = one batch entry and one
/// head), its amplitude and the fraction of `−inf` entries.
#[derive(Debug, Clone, Copy)]
struct BiasSpec {
    broadcast: usize,
    amp: f32,
    ninf: f64,
}

/// ALiBi: the paper's slopes, or `base·(1 + h)` per head.
#[derive(Debug, Clone, Copy)]
enum AlibiSpec {
    Default,
    Slopes(f32),
}

/// Sink logits: seeded around 0 with this amplitude, or one value for
/// every head.
#[derive(Debug, Clone, Copy)]
enum SinkSpec {
    Random(f32),
    Fixed(f32),
}

/// Which modifiers a case turns on.
#[derive(Debug, Clone, Copy, Default)]
struct Mods {
    bias: Option<BiasSpec>,
    alibi: Option<AlibiSpec>,
    softcap: Option<f32>,
    sinks: Option<SinkSpec>,
}

impl Mods {
    const BIAS: BiasSpec = BiasSpec { broadcast: 0, amp: 2.0, ninf: 0.05 };

    fn all(softcap: f32) -> Mods {
        Mods {
            bias: Some(Self::BIAS),
            alibi: Some(AlibiSpec::Slopes(0.05)),
            softcap: Some(softcap),
            sinks: Some(SinkSpec::Random(2.0)),
        }
    }

    /// Each modifier alone (three bias broadcasts, both ALiBi kinds), then
    /// all of them together.
    fn table() -> Vec<(&'static str, Mods)> {
        let bias = |broadcast| Mods {
            bias: Some(BiasSpec { broadcast, ..Self::BIAS }),
            ..Mods::default()
        };
        vec![
            ("bias", bias(0)),
            ("bias [1,Hq,..]", bias(1)),
            ("bias [1,1,..]", bias(2)),
            ("alibi default", Mods { alibi: Some(AlibiSpec::Default), ..Mods::default() }),
            ("alibi slopes", Mods { alibi: Some(AlibiSpec::Slopes(0.1)), ..Mods::default() }),
            ("softcap 5", Mods { softcap: Some(5.0), ..Mods::default() }),
            ("sinks", Mods { sinks: Some(SinkSpec::Random(2.0)), ..Mods::default() }),
            ("all", Mods::all(3.0)),
        ]
    }
}

/// dQ, dK, dV (in the case's layout) and, with sinks, dsinks.
type Grads = ([Vec<f32>; 3], Option<Vec<f32>>);

/// One problem: inputs in one layout, the modifiers' data, the oracle
/// forward's O and LSE (rounded to f32) and a seeded dO.
struct Case {
    shape: AttnShape,
    layout: Layout,
    mask: Mask,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    d_out: Vec<f32>,
    bias: Option<(Vec<f32>, [usize; 4], Layout)>,
    slopes: Option<Vec<f32>>,
    default_alibi: bool,
    softcap: Option<f32>,
    sinks: Option<Vec<f32>>,
    out: Vec<f32>,
    lse: Vec<f32>,
}

impl Case {
    fn new(dims: [usize; 7], mask: Mask, layout: Layout, mods: Mods, seed: u64) -> Case {
        let shape = shape_of(dims);
        let (q, k, v) = make_inputs(&shape, 1.0, seed);
        let d_out = random(shape.out_dims().iter().product(), 1.0, &mut rng(seed ^ 0xd0));
        let [b, hq, _, nq, nk, _, _] = dims;
        let mut g = rng(seed ^ 0xb1a5);
        let bias = mods.bias.map(|spec| {
            let bd = [[b, hq, nq, nk], [1, hq, nq, nk], [1, 1, nq, nk]][spec.broadcast];
            let mut x = random(bd.iter().product(), spec.amp, &mut g);
            let mut ninf = rng(seed ^ 0x1f);
            for e in &mut x {
                if rand::RngExt::random_bool(&mut ninf, spec.ninf) {
                    *e = f32::NEG_INFINITY;
                }
            }
            let bl = if seed.is_multiple_of(2) { Layout::Bhnd } else { Layout::Bnhd };
            (x, bd, bl)
        });
        let slopes = match mods.alibi {
            Some(AlibiSpec::Slopes(base)) => {
                Some((0..hq).map(|h| base * (1.0 + h as f32)).collect())
            }
            _ => None,
        };
        let sinks = mods.sinks.map(|s| match s {
            SinkSpec::Random(amp) => random(hq, amp, &mut g),
            SinkSpec::Fixed(x) => vec![x; hq],
        });
        let mut c = Case {
            shape,
            layout,
            mask,
            q,
            k,
            v,
            d_out,
            bias,
            slopes,
            default_alibi: matches!(mods.alibi, Some(AlibiSpec::Default)),
            softcap: mods.softcap,
            sinks,
            out: Vec::new(),
            lse: Vec::new(),
        };
        c.forward();
        c
    }

    /// O and LSE from the oracle forward, rounded to f32 (O in the case's
    /// layout).
    fn forward(&mut self) {
        let s = self.shape;
        let params = self.params();
        let inputs = AttnInputs::from_slices(s, self.layout, &self.q, &self.k, &self.v).unwrap();
        let r = reference(&inputs, &params);
        let (nq, dv) = (s.q_len(), s.v_dim());
        let [sb, sh, sn] = self.layout.strides(s.out_dims());
        let mut out = vec![0f32; s.out_dims().iter().product()];
        for b in 0..s.batch() {
            for h in 0..s.q_heads() {
                for i in 0..nq {
                    for c in 0..dv {
                        out[b * sb + h * sh + i * sn + c] =
                            r.out[((b * s.q_heads() + h) * nq + i) * dv + c] as f32;
                    }
                }
            }
        }
        self.out = out;
        self.lse = r.lse.iter().map(|x| *x as f32).collect();
    }

    fn params(&self) -> AttnParams<'_> {
        AttnParams {
            mask: self.mask,
            softcap: self.softcap,
            alibi: match (&self.slopes, self.default_alibi) {
                (Some(s), _) => Some(Alibi::Slopes(s)),
                (None, true) => Some(Alibi::Default),
                (None, false) => None,
            },
            sinks: self.sinks.as_deref(),
            bias: self.bias.as_ref().map(|(x, d, l)| TensorView::new("bias", x, *d, *l).unwrap()),
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

    /// dQ, dK, dV and, with sinks, dsinks of `kernel` under `params`.
    fn try_grads(&self, kernel: Kernel, params: &AttnParams, par: Par) -> Result<Grads, AttnError> {
        let n = |d: [usize; 4]| d.iter().product::<usize>();
        let s = &self.shape;
        let mut g = [
            vec![f32::NAN; n(s.q_dims())],
            vec![f32::NAN; n(s.k_dims())],
            vec![f32::NAN; n(s.v_dims())],
        ];
        let mut ds = params.sinks.map(|x| vec![f32::NAN; x.len()]);
        let [dq, dk, dv] = &mut g;
        let mut views = GradsMut::from_slices(s, self.layout, dq, dk, dv)?;
        views.dsinks = ds.as_deref_mut();
        kernel.backward(&self.inputs(), &mut views, params, par)?;
        Ok((g, ds))
    }

    fn grads(&self, par: Par) -> Grads {
        self.try_grads(Kernel::Flash, &self.params(), par).unwrap_or_else(|e| panic!("flash: {e}"))
    }
}

/// The tolerances of dQ, dK, dV and of each dsink against the oracle: the
/// model of `tests/backward.rs::grad_tolerance`, per (query, key) pair.
///
/// For a visible pair with pre-cap score `s` and capped score `s'`, let
/// `L = |scale|·Σ_c |q_c·k_c| + |bias| + |slope|·|diag − j|` bound the terms
/// of `s` (each f32 operation errs by `eps` of what it adds, the dot
/// product by `~sqrt(d)·eps·L`). Then, as in `tests/backward.rs`:
///
/// - `P = 2^(S' − LSE·log2e)` is off by a relative
///   `δ = 16·eps·L + 8·eps·|s'| + 2·eps·(1 + |lse|) + 1e-6`: the score (the
///   cap only shrinks its error: its slope is at most 1), the vector tanh
///   and the cap's rounding (`8·eps` of the capped value, with a softcap),
///   the f32 LSE given (rounded once, times `log2 e` once), the fast exp2.
/// - With a softcap `c`, the factor `f = 1 − (s'/c)²` of `dS` is off by
///   `Δf = min(1, |f'|·Δs + (Δs/c)² + 4·eps)`, `Δs = 16·eps·L`,
///   `|f'| = 2·|t|·(1 − t²)/c` at `t = s'/c` (its second derivative is at
///   most `2/c²`): the sensitivity of a steep cap to its input, largest
///   for a small `c` — the f32 contract, not a kernel error.
/// - `dS = P·(dP − D)·f` is then off by `P·(e·A + E)` with `e = δ·f + Δf`,
///   `A = max(|dP| + |D|)` and `E = dv·eps·(A + max|dO|·max|V|)` (the f32
///   sums of `dP` and `D`, and `O` rounded to f32).
/// - `dQ_i` sums `dS` over a row: `scale·max|K|·(Σ_j P·e·A + E)`; `dK_j`
///   and `dV_j` over a column of every query head of the group:
///   `scale·max|Q|·(Σ_i P·e·A + E·C)` and `max|dO|·Σ_i P·δ` (`C` the
///   largest column sum of `P`); the largest row or column sum is taken.
///   The 16 of `16·eps·L` is the bound of `tests/backward.rs` (where the
///   worst measured error was 0.06 of the tolerance), a worst case here too.
/// - Each gets `1e-6·(1 + max|grad|)` for the f32 accumulations.
/// - `dsink_h = −Σ_{b,i} w_i·D_i`, `w_i = exp(sink − lse_i)` in f32: off by
///   `w·(eps·(|sink| + 2·|lse| + 4)·|D| + 2·dv·eps·max|dO|·max|V|)` per row
///   (the LSE's rounding, the subtraction, exp; `D`'s sum and `O`'s
///   rounding), plus `n·eps·Σ w·|D|` for the f32 sum of `n = B·Nq` rows and
///   `1e-6·(1 + |dsink|)`.
struct GradTol {
    grads: [f64; 3],
    dsinks: Vec<f64>,
}

#[allow(clippy::needless_range_loop)] // h indexes heads of several tensors
fn grad_tolerance(c: &Case, r: &ReferenceGrads) -> GradTol {
    let params = c.params();
    let p = c.inputs();
    let s = c.shape;
    let (nq, nk, dv) = (s.q_len(), s.kv_len(), s.v_dim());
    let mods = ScoreMods::new(&params, s.q_heads());
    let scale = params.scale_for(s.head_dim()) as f64;
    let eps = f32::EPSILON as f64;
    let amax = |x: &[f32]| x.iter().fold(0f64, |a, v| a.max(v.abs() as f64));
    let (qm, km, vm, gm) = (amax(&c.q), amax(&c.k), amax(&c.v), amax(&c.d_out));
    let ref_fwd = reference(&p.fwd, &params);
    let cols = s.batch() * s.kv_heads() * nk;
    let (mut col_e, mut col_d, mut col_p) = (vec![0f64; cols], vec![0f64; cols], vec![0f64; cols]);
    let (mut row_e, mut a_max) = (0f64, 0f64);
    let mut sink_tol = vec![0f64; s.q_heads()];
    for b in 0..s.batch() {
        for h in 0..s.q_heads() {
            let g = s.kv_head_of(h);
            for i in 0..nq {
                let bh = b * s.q_heads() + h;
                let lse = ref_fwd.lse[bh * nq + i];
                let o = &ref_fwd.out[(bh * nq + i) * dv..][..dv];
                let doi = p.d_out.row(b, h, i);
                let dd: f64 = doi.iter().zip(o).map(|(a, x)| *a as f64 * x).sum();
                if let Some(sink) = mods.sink(h)
                    && lse.is_finite()
                {
                    let w = (sink as f64 - lse).exp();
                    let dabs: f64 = doi.iter().zip(o).map(|(a, x)| (*a as f64 * x).abs()).sum();
                    let n = (s.batch() * nq) as f64;
                    sink_tol[h] += w
                        * ((eps * (sink.abs() as f64 + 2.0 * lse.abs() + 4.0) + n * eps) * dabs
                            + 2.0 * dv as f64 * eps * gm * vm);
                }
                if lse == f64::NEG_INFINITY {
                    continue; // nothing visible: the kernel gives exact zeros
                }
                let qi = p.fwd.q.row(b, h, i);
                let diag = (i + nk) as i64 - nq as i64;
                let mut row = 0f64;
                for j in params.mask.key_range(i, nq, nk) {
                    let kj = p.fwd.k.row(b, g, j);
                    let dot: f64 = qi.iter().zip(kj).map(|(x, y)| *x as f64 * *y as f64).sum();
                    let labs: f64 =
                        qi.iter().zip(kj).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
                    let bias = mods.bias_row(b, h, i).map_or(0.0, |r| r[j] as f64);
                    if bias == f64::NEG_INFINITY {
                        continue; // P = 0 exactly
                    }
                    let dist = (diag - j as i64).unsigned_abs() as f64;
                    let slope = mods.slope(h).map_or(0.0, |x| x as f64);
                    let l = scale.abs() * labs + bias.abs() + slope.abs() * dist;
                    let sp = mods.score_f64(scale * dot, b, h, i, diag, j);
                    let pij = (sp - lse).exp();
                    let ds = 16.0 * eps * l;
                    let mut delta = ds + 2.0 * eps * (1.0 + lse.abs()) + 1e-6;
                    let (f, df) = match mods.softcap {
                        Some(cap) => {
                            let cap = cap as f64;
                            let t = sp / cap;
                            delta += 8.0 * eps * sp.abs();
                            let sens = 2.0 * t.abs() * (1.0 - t * t) / cap;
                            (1.0 - t * t, (sens * ds + (ds / cap).powi(2) + 4.0 * eps).min(1.0))
                        }
                        None => (1.0, 0.0),
                    };
                    let e = delta * f + df;
                    row += pij * e;
                    let col = (b * s.kv_heads() + g) * nk + j;
                    col_e[col] += pij * e;
                    col_d[col] += pij * delta;
                    col_p[col] += pij;
                    let dp: f64 = doi
                        .iter()
                        .zip(p.fwd.v.row(b, g, j))
                        .map(|(x, y)| *x as f64 * *y as f64)
                        .sum();
                    a_max = a_max.max(dp.abs() + dd.abs());
                }
                row_e = row_e.max(row);
            }
        }
    }
    let fmax = |x: &[f64]| x.iter().fold(0f64, |a, v| a.max(*v));
    let (ce, cd, cp) = (fmax(&col_e), fmax(&col_d), fmax(&col_p));
    let e = dv as f64 * eps * (a_max + gm * vm);
    let base = |g: &[f64]| 1e-6 * (1.0 + g.iter().fold(0f64, |a, v| a.max(v.abs())));
    GradTol {
        grads: [
            scale.abs() * km * (row_e * a_max + e) + base(&r.dq),
            scale.abs() * qm * (ce * a_max + e * cp) + base(&r.dk),
            gm * cd + base(&r.dv),
        ],
        dsinks: sink_tol.iter().zip(&r.dsinks).map(|(t, d)| t + 1e-6 * (1.0 + d.abs())).collect(),
    }
}

/// Flash's gradients (sequential) against the oracle backward on one case;
/// returns them.
fn check(what: &str, c: &Case) -> Grads {
    let params = c.params();
    let r = reference_backward(&c.inputs(), &params);
    let tol = grad_tolerance(c, &r);
    let (g, ds) = c.grads(Par::Seq);
    let what = format!("{what} {:?} {:?} {:?}", c.shape, c.mask, c.layout);
    assert_grads(&what, &c.shape, c.layout, &g, &r, tol.grads);
    if let Some(ds) = &ds {
        for (h, (got, want)) in ds.iter().zip(&r.dsinks).enumerate() {
            let err = (*got as f64 - want).abs();
            assert!(
                err <= tol.dsinks[h],
                "{what}: dsinks[{h}] = {got} but oracle {want} (|err| {err:.3e} > tol {:.3e})",
                tol.dsinks[h]
            );
        }
    }
    assert!(g.iter().flatten().all(|x| x.is_finite()), "{what}: non-finite gradient");
    (g, ds)
}

const W: Mask = Mask::Window { left: Some(20), right: Some(5) };

#[test]
fn each_modifier_and_all_combined_match_the_oracle() {
    let shapes = [
        [1, 2, 2, 70, 70, 32, 32],  // MHA, one full 64-row tile
        [2, 6, 2, 65, 130, 24, 40], // GQA, Nq < Nk, dv != d, dQ partials
        [1, 4, 1, 100, 40, 16, 8],  // MQA, Nq > Nk: causal masks 60 rows
    ];
    let mut n = 0u64;
    for (name, mods) in Mods::table() {
        for dims in shapes {
            for mask in [Mask::None, Mask::Causal, W] {
                let layout = if n.is_multiple_of(2) { Layout::Bhnd } else { Layout::Bnhd };
                check(name, &Case::new(dims, mask, layout, mods, n));
                n += 1;
            }
        }
    }
}

#[test]
fn sink_gradient_matches_the_oracle_and_is_not_trivial() {
    // Sinks near the rows' LSEs, so exp(sink − lse) is far from 0 and 1.
    for (dims, mask) in
        [([2, 4, 2, 50, 80, 16, 24], Mask::Causal), ([1, 3, 3, 90, 40, 8, 8], Mask::None)]
    {
        let mods = Mods { sinks: Some(SinkSpec::Fixed(3.0)), ..Mods::default() };
        let c = Case::new(dims, mask, Layout::Bhnd, mods, 7);
        let (_, ds) = check("dsinks", &c);
        let ds = ds.unwrap();
        assert!(ds.iter().all(|x| x.abs() > 1e-3), "{ds:?}");
        // dsinks is asked for only with sinks
        let plain = AttnParams::with_mask(mask);
        let mut g = c.grads(Par::Seq).0;
        let [dq, dk, dv] = &mut g;
        let mut d = vec![0f32; dims[1]];
        let mut views = GradsMut::from_slices(&c.shape, c.layout, dq, dk, dv).unwrap();
        views.dsinks = Some(&mut d);
        let e = Kernel::Flash.backward(&c.inputs(), &mut views, &plain, Par::Seq).unwrap_err();
        assert!(e.to_string().starts_with("dsinks"), "{e}");
    }
}

#[test]
fn extremes_match_the_oracle_without_nan() {
    let one = |m: Mods| m;
    let cases: Vec<(&str, [usize; 7], Mask, Mods)> = vec![
        (
            "softcap 1e-3",
            [1, 2, 1, 70, 90, 32, 32],
            Mask::Causal,
            one(Mods { softcap: Some(1e-3), ..Mods::default() }),
        ),
        (
            "softcap 1e6",
            [1, 2, 1, 70, 90, 32, 32],
            Mask::None,
            one(Mods { softcap: Some(1e6), ..Mods::default() }),
        ),
        (
            "softcap 1e-3 + bias",
            [1, 2, 2, 40, 70, 16, 16],
            W,
            one(Mods { softcap: Some(1e-3), bias: Some(Mods::BIAS), ..Mods::default() }),
        ),
        // exp(−slope·1) underflows f32: each row is its diagonal key
        (
            "slopes 30",
            [1, 2, 2, 70, 70, 16, 16],
            Mask::None,
            one(Mods { alibi: Some(AlibiSpec::Slopes(30.0)), ..Mods::default() }),
        ),
        // Nq > Nk, no mask: the first rows' nearest key is 30 away
        (
            "slopes 1e3",
            [1, 2, 1, 100, 70, 16, 16],
            Mask::None,
            one(Mods { alibi: Some(AlibiSpec::Slopes(1e3)), ..Mods::default() }),
        ),
        (
            "sink 1e4",
            [1, 2, 2, 70, 70, 16, 16],
            Mask::Causal,
            one(Mods { sinks: Some(SinkSpec::Fixed(1e4)), ..Mods::default() }),
        ),
        (
            "sink -1e4",
            [1, 2, 2, 70, 70, 16, 16],
            Mask::Causal,
            one(Mods { sinks: Some(SinkSpec::Fixed(-1e4)), ..Mods::default() }),
        ),
        (
            "sink 1e4 all",
            [1, 4, 2, 50, 60, 16, 8],
            W,
            Mods { sinks: Some(SinkSpec::Fixed(1e4)), ..Mods::all(2.0) },
        ),
        (
            "half -inf bias",
            [1, 2, 2, 70, 70, 16, 16],
            Mask::None,
            one(Mods { bias: Some(BiasSpec { ninf: 0.5, ..Mods::BIAS }), ..Mods::default() }),
        ),
    ];
    for (name, dims, mask, mods) in cases {
        check(name, &Case::new(dims, mask, Layout::Bhnd, mods, 3));
    }
}

#[test]
fn minus_inf_bias_rows_and_columns_give_zero_gradients() {
    // Row 3 of every head sees only −inf (fully masked by the bias), and
    // key 5 is −inf for every row (no query sees it): dQ row 3 = 0 and
    // dK, dV row 5 = 0, with and without a sink, never NaN.
    let dims = [1, 2, 1, 70, 70, 16, 16];
    for (sinks, softcap) in [(None, None), (Some(SinkSpec::Fixed(0.5)), Some(2.0))] {
        let mods = Mods {
            bias: Some(BiasSpec { ninf: 0.0, ..Mods::BIAS }),
            sinks,
            softcap,
            ..Mods::default()
        };
        // (an even seed: the bias is in Bhnd, as the indexing below assumes)
        let mut c = Case::new(dims, Mask::None, Layout::Bhnd, mods, 8);
        let (bias, _, _) = c.bias.as_mut().unwrap();
        for h in 0..2 {
            for i in 0..70 {
                for j in 0..70 {
                    if i == 3 || j == 5 {
                        bias[(h * 70 + i) * 70 + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        c.forward();
        assert_eq!(c.lse[3], sinks.map_or(f32::NEG_INFINITY, |_| 0.5));
        let ([dq, dk, dv], _) = check("-inf bias", &c);
        for h in 0..2 {
            assert!(dq[(h * 70 + 3) * 16..][..16].iter().all(|x| *x == 0.0), "dq row {h},3");
        }
        assert!(dk[5 * 16..][..16].iter().all(|x| *x == 0.0), "dk row 5");
        assert!(dv[5 * 16..][..16].iter().all(|x| *x == 0.0), "dv row 5");
    }
}

#[test]
fn identical_bits_for_1_2_and_3_threads() {
    let cases = [
        ([1, 8, 8, 200, 200, 64, 64], Mask::Causal), // MHA: one chunk per head
        ([1, 8, 2, 150, 170, 32, 48], Mask::None),   // GQA: 4 chunks, dQ partials
        ([2, 4, 1, 130, 257, 16, 16], W),
    ];
    for (dims, mask) in cases {
        let c = Case::new(dims, mask, Layout::Bnhd, Mods::all(4.0), 21);
        let seq = c.grads(Par::Seq);
        for t in [2, 3] {
            let got = c.grads(Par::rayon(t).unwrap());
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            for (a, b) in seq.0.iter().zip(&got.0) {
                assert!(bits(a) == bits(b), "{dims:?} {mask:?}: {t} threads differ");
            }
            let (a, b) = (seq.1.as_ref().unwrap(), got.1.as_ref().unwrap());
            assert_eq!(bits(a), bits(b), "{dims:?} {mask:?}: dsinks, {t} threads");
        }
    }
}

#[test]
fn non_finite_bias_is_named_when_a_row_reads_it() {
    let dims = [1, 2, 1, 20, 20, 8, 8];
    let mods = Mods { bias: Some(BiasSpec { ninf: 0.0, ..Mods::BIAS }), ..Mods::default() };
    let mut c = Case::new(dims, Mask::Causal, Layout::Bhnd, mods, 4); // bias in Bhnd
    let at = |h: usize, i: usize, j: usize| (h * 20 + i) * 20 + j;
    let set = |c: &mut Case, e: usize, x: f32| c.bias.as_mut().unwrap().0[e] = x;
    // visible entries: NaN, +inf → an error naming the bias and its index
    for x in [f32::NAN, f32::INFINITY] {
        set(&mut c, at(1, 7, 2), x);
        let e = c.try_grads(Kernel::Flash, &c.params(), Par::Seq).unwrap_err();
        assert!(
            matches!(e, AttnError::NonFinite { tensor: "bias", index, .. } if index == at(1, 7, 2)),
            "{e}"
        );
        assert!(e.to_string().starts_with("bias: non-finite value"), "{e}");
        // off: the row that reads it is NaN (or ±inf), the others stay finite
        let off = AttnParams { check_finite: false, ..c.params() };
        let ([dq, ..], _) = c.try_grads(Kernel::Flash, &off, Par::Seq).unwrap();
        for (r, row) in dq.chunks(8).enumerate() {
            // row 7 of head 1 reads it (so do its dK, dV rows)
            let bad = r == 20 + 7;
            assert_eq!(row.iter().any(|v| !v.is_finite()), bad, "check_finite off: dq row {r}");
        }
        set(&mut c, at(1, 7, 2), 0.5);
    }
    // the first in row order is reported
    set(&mut c, at(1, 9, 0), f32::NAN);
    set(&mut c, at(0, 12, 12), f32::INFINITY);
    for par in [Par::Seq, Par::rayon(2).unwrap()] {
        let e = c.try_grads(Kernel::Flash, &c.params(), par).unwrap_err();
        assert!(matches!(e, AttnError::NonFinite { index, .. } if index == at(0, 12, 12)), "{e}");
    }
    set(&mut c, at(1, 9, 0), 0.5);
    set(&mut c, at(0, 12, 12), 0.5);
    // masked (causal: key 15 of row 4) or −inf: not errors
    set(&mut c, at(0, 4, 15), f32::NAN);
    set(&mut c, at(1, 4, 3), f32::NEG_INFINITY);
    c.forward();
    check("masked NaN, -inf", &c);
}

/// A random problem with a random subset of the modifiers.
#[derive(Debug, Clone)]
struct Random {
    dims: [usize; 7],
    mask: Mask,
    layout: Layout,
    mods: Mods,
    seed: u64,
}

fn random_problem() -> impl Strategy<Value = Random> {
    let side = prop_oneof![Just(None), (0usize..40).prop_map(Some)];
    let mask = prop_oneof![
        Just(Mask::None),
        Just(Mask::Causal),
        (side.clone(), side).prop_map(|(left, right)| Mask::Window { left, right }),
    ];
    let bias = prop::option::of(
        (0usize..3, prop_oneof![Just(0.0), Just(0.1)]).prop_map(|(broadcast, ninf)| BiasSpec {
            broadcast,
            amp: 2.0,
            ninf,
        }),
    );
    let alibi = prop::option::of(prop_oneof![
        Just(AlibiSpec::Default),
        (0.001f32..2.0).prop_map(AlibiSpec::Slopes)
    ]);
    let softcap = prop::option::of(prop_oneof![Just(0.5f32), Just(5.0), Just(50.0)]);
    let sinks = prop::option::of((-4f32..4.0).prop_map(SinkSpec::Fixed));
    (
        (1usize..=2, 1usize..=2, 1usize..=3, 1usize..=100, 1usize..=100),
        (prop::sample::select(vec![1usize, 8, 16, 24, 64, 80]), 1usize..=40),
        mask,
        prop_oneof![Just(Layout::Bhnd), Just(Layout::Bnhd)],
        (bias, alibi, softcap, sinks),
        any::<u64>(),
    )
        .prop_map(
            |(
                (b, hkv, grp, nq, nk),
                (d, dv),
                mask,
                layout,
                (bias, alibi, softcap, sinks),
                seed,
            )| {
                Random {
                    dims: [b, hkv * grp, hkv, nq, nk, d, dv],
                    mask,
                    layout,
                    mods: Mods { bias, alibi, softcap, sinks },
                    seed,
                }
            },
        )
}

proptest! {
    #[test]
    fn random_modifiers_match_the_oracle(p in random_problem()) {
        check("prop", &Case::new(p.dims, p.mask, p.layout, p.mods, p.seed));
    }
}

/// The backward's cost of each modifier against the plain call: N = 4096,
/// d = 64, causal, MHA with one head, one thread; calls alternate plain and
/// modified, 15 pairs: the medians of each and of the
/// pairs' ratios (robust to a shared machine's drifting load). `cargo test --release -p attnlab --test
/// tests modifier_overhead -- --ignored --nocapture`.
#[test]
#[ignore]
fn modifier_overhead() {
    let n = 4096;
    let dims = [1, 1, 1, n, n, 64, 64];
    let time = |c: &Case, check: bool| {
        let params = AttnParams { check_finite: check, ..c.params() };
        let t = std::time::Instant::now();
        std::hint::black_box(c.try_grads(Kernel::Flash, &params, Par::Seq).unwrap());
        t.elapsed().as_secs_f64()
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let plain = Case::new(dims, Mask::Causal, Layout::Bhnd, Mods::default(), 1);
    let bias =
        Mods { bias: Some(BiasSpec { broadcast: 2, amp: 1.0, ninf: 0.0 }), ..Mods::default() };
    let variants = [
        ("bias, unchecked", bias, false),
        (
            "bias [1,1,N,N]",
            Mods { bias: Some(BiasSpec { broadcast: 2, amp: 1.0, ninf: 0.0 }), ..Mods::default() },
            true,
        ),
        ("alibi", Mods { alibi: Some(AlibiSpec::Default), ..Mods::default() }, true),
        ("softcap 50", Mods { softcap: Some(50.0), ..Mods::default() }, true),
        ("sinks + dsinks", Mods { sinks: Some(SinkSpec::Fixed(0.0)), ..Mods::default() }, true),
        (
            "all",
            Mods { bias: Some(BiasSpec { broadcast: 2, amp: 1.0, ninf: 0.0 }), ..Mods::all(50.0) },
            true,
        ),
    ];
    time(&plain, true);
    for (name, mods, check) in variants {
        let c = Case::new(dims, Mask::Causal, Layout::Bhnd, mods, 1);
        let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..15 {
            let (x, y) = (time(&plain, check), time(&c, check));
            a.push(x);
            b.push(y);
            r.push(y / x);
        }
        let (a, b, r) = (median(a), median(b), median(r));
        println!(
            "{name:>16}: plain {:.1} ms, modified {:.1} ms, median of the pairs' ratios {r:.3}",
            a * 1e3,
            b * 1e3
        );
    }
}
