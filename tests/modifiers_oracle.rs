//! Score modifiers in the f64 oracle and naive: finite differences of the softcap and sink gradients, naive against the oracle.
//!
//! The finite-difference checks of the oracle's gradients (dq, dk, dv and
//! dsinks, each modifier alone and combined) are unit tests beside the
//! code (`crates/naive/src/oracle_backward.rs`); the repair's handling of
//! a non-finite bias is in `crates/naive/src/exact.rs`. Here: the naive
//! forward and backward against the oracle, with a tolerance model that
//! accounts for what the modifiers add to the scores ([`mod_tolerance`],
//! [`mod_grad_tolerance`]), which the other modifier tests may reuse.

use crate::backward::assert_grads;
use crate::common::*;
use attnlab::naive::{Reference, ReferenceGrads, reference, reference_backward};
use attnlab::{
    Alibi, AttnError, AttnInputs, AttnParams, AttnShape, BackwardInputs, Element, GradsMut, Kernel,
    Layout, Mask, Par, ScoreMods, TensorView, TensorViewMut,
};

/// The modifiers of one test call, owning what [`AttnParams`] borrows.
#[derive(Debug, Clone, Default)]
pub struct Mods {
    pub softcap: Option<f32>,
    /// `Some(None)`: `Alibi::Default`; `Some(Some(slopes))`: given slopes.
    pub alibi: Option<Option<Vec<f32>>>,
    pub sinks: Option<Vec<f32>>,
    /// Bias data (C order over its dims) and its logical dims.
    pub bias: Option<(Vec<f32>, [usize; 4])>,
}

impl Mods {
    /// `base` with these modifiers (the bias view in C order, named "bias").
    pub fn params<'a>(&'a self, base: AttnParams<'static>) -> AttnParams<'a> {
        AttnParams {
            softcap: self.softcap,
            alibi: self.alibi.as_ref().map(|a| match a {
                None => Alibi::Default,
                Some(s) => Alibi::Slopes(s),
            }),
            sinks: self.sinks.as_deref(),
            bias: self
                .bias
                .as_ref()
                .map(|(d, dims)| TensorView::new("bias", d, *dims, Layout::Bhnd).unwrap()),
            ..base
        }
    }

    /// A short description for failure messages.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if let Some(c) = self.softcap {
            v.push(format!("softcap {c}"));
        }
        match &self.alibi {
            Some(None) => v.push("alibi default".into()),
            Some(Some(s)) => v.push(format!("alibi {:?}", &s[..s.len().min(3)])),
            None => {}
        }
        if let Some(s) = &self.sinks {
            v.push(format!("sinks {:?}", &s[..s.len().min(3)]));
        }
        if let Some((_, dims)) = &self.bias {
            v.push(format!("bias {dims:?}"));
        }
        if v.is_empty() { "plain".into() } else { v.join(", ") }
    }
}

/// Per-row tolerances against the oracle, `[B, Hq, Nq]`.
pub struct RowTolerance {
    pub out: Vec<f64>,
    pub lse: Vec<f64>,
}

/// The f32 error of one modified score `s_j` against f64, from the
/// tolerance model of `tests/common.rs` extended to the modifiers:
///
/// - before the softcap, `s = scale·q·k + bias − slope·|diag − j|` is
///   off by at most `δ_pre = 32·ε·M` with `M = scale·Σ_c |q_c·k_c| +
///   |bias| + slope·|diag − j|` (the dot product's error as before, plus
///   one rounding per term added, and the ×log2 e);
/// - the softcap `c·tanh(s/c)` passes that on times its slope `1 − t²`
///   (`t = tanh(s/c)`, taken from the f64 result; bounded by 1, plus
///   `2·δ_pre/c` for the slope's change over the error interval), and adds
///   its own f32 rounding of ~`ε·c` per score (the division, `tanh` to a
///   few ulps, the product): `8·ε·c`.
pub fn score_error(m: f64, softcap: Option<f32>, capped: f64) -> f64 {
    let eps = f32::EPSILON as f64;
    let pre = 32.0 * eps * m;
    match softcap {
        None => pre,
        Some(c) => {
            let (c, t) = (c as f64, capped / c as f64);
            pre * (1.0 - t * t + 2.0 * pre / c).min(1.0) + 8.0 * eps * c
        }
    }
}

/// The model's quantities of one row of a call: for each visible key `j`,
/// its f64 weight `p_j = exp(s_j − lse)` (0 for a `−inf` score) and the
/// f32 error `δ_j` of its score ([`score_error`]). `None` for a row with
/// no weight at all (its oracle LSE is `−inf` or the sink's).
pub fn row_model<T: Element>(
    inputs: &AttnInputs<'_, T>,
    params: &AttnParams,
    r: &Reference,
    (b, h, i): (usize, usize, usize),
) -> Vec<(usize, f64, f64)> {
    let s = *inputs.shape();
    let (nq, nk) = (s.q_len(), s.kv_len());
    let mods = ScoreMods::new(params, s.q_heads());
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (s.head_dim() as f64).sqrt());
    let lse = r.lse[(b * s.q_heads() + h) * nq + i];
    let diag = i as i64 + nk as i64 - nq as i64;
    let g = s.kv_head_of(h);
    let q = inputs.q.row(b, h, i);
    let x = |e: &T| e.to_f32() as f64;
    let mut v = Vec::new();
    if lse == f64::NEG_INFINITY {
        return v;
    }
    for j in params.mask.key_range(i, nq, nk) {
        let k = inputs.k.row(b, g, j);
        let dot: f64 = q.iter().zip(k).map(|(a, c)| x(a) * x(c)).sum();
        let mag: f64 = q.iter().zip(k).map(|(a, c)| (x(a) * x(c)).abs()).sum::<f64>() * scale;
        let sj = mods.score_f64(scale * dot, b, h, i, diag, j);
        if sj == f64::NEG_INFINITY {
            continue;
        }
        let bias = mods.bias_row(b, h, i).map_or(0.0, |r| (r[j] as f64).abs());
        let alibi = mods.slope(h).map_or(0.0, |m| m as f64 * (diag - j as i64).abs() as f64);
        let p = (sj - lse).exp();
        v.push((j, p, score_error(mag + bias + alibi, mods.softcap, sj)));
    }
    v
}

/// Per-row tolerances of a forward against the oracle `r`: with the
/// row's `W = Σ_j p_j·δ_j` (weights from the oracle, errors from
/// [`score_error`]), an error `δ_j` in score `j` moves weight `j` by
/// `p_j·(δ_j − W)` and so the output by at most `2·W·max|v|`, and the LSE
/// by `W`. As in `tests/common.rs`, `1e-5` (relative to `max|v|`, and to
/// `1 + |lse|` for the LSE) covers the fast exp2 and the f32 sums; a sink
/// rescales the row by `exp(λ − lse)`, computed from an LSE rounded to
/// f32 (`ε·|lse|` more, relative). Weighting by `p_j` keeps the bound
/// tight when far keys carry large penalties but no weight (a steep
/// ALiBi): only the scores that matter count.
pub fn mod_tolerance<T: Element>(
    inputs: &AttnInputs<'_, T>,
    params: &AttnParams,
    r: &Reference,
) -> RowTolerance {
    let s = *inputs.shape();
    let eps = f32::EPSILON as f64;
    let vmax = inputs.v.data().iter().map(|x| x.to_f32().abs() as f64).fold(0.0, f64::max);
    let sinks = params.sinks.is_some();
    let (mut out, mut lse) = (Vec::new(), Vec::new());
    for b in 0..s.batch() {
        for h in 0..s.q_heads() {
            for i in 0..s.q_len() {
                let l = r.lse[(b * s.q_heads() + h) * s.q_len() + i];
                let w: f64 =
                    row_model(inputs, params, r, (b, h, i)).iter().map(|(_, p, d)| p * d).sum();
                let sink_term = if sinks && l.is_finite() { 4.0 * eps * l.abs() } else { 0.0 };
                out.push((1e-5 + 2.0 * w + sink_term) * vmax.max(1e-30));
                lse.push(1e-5 * (1.0 + l.abs()) + w);
            }
        }
    }
    RowTolerance { out, lse }
}

/// Asserts a forward's output and LSE match the oracle row by row, within
/// `tol`; a fully masked row (oracle LSE `−inf`) must have LSE `−inf` and
/// output exactly 0. Reports the worst element relative to its tolerance.
pub fn assert_rows(
    what: &str,
    shape: &AttnShape,
    layout: Layout,
    (out, lse): (&[f32], &[f32]),
    r: &Reference,
    tol: &RowTolerance,
) {
    let (nq, dv) = (shape.q_len(), shape.v_dim());
    let mut worst = (0f64, 0usize, String::new());
    for b in 0..shape.batch() {
        for h in 0..shape.q_heads() {
            for i in 0..nq {
                let row = (b * shape.q_heads() + h) * nq + i;
                let (want, got) = (r.lse[row], lse[row]);
                if want == f64::NEG_INFINITY {
                    assert_eq!(got, f32::NEG_INFINITY, "{what}: lse[{row}] (oracle −inf)");
                } else {
                    let e = (got as f64 - want).abs();
                    assert!(
                        e <= tol.lse[row],
                        "{what}: lse[{row}] = {got} but oracle {want} (|err| {e:.3e} > tol {:.3e})",
                        tol.lse[row]
                    );
                }
                for c in 0..dv {
                    let g = out_at(out, shape, layout, b, h, i, c) as f64;
                    let w = r.out[row * dv + c];
                    if want == f64::NEG_INFINITY {
                        assert_eq!(g, 0.0, "{what}: out row {row}: fully masked, must be 0");
                    }
                    let e = if g.is_nan() { f64::INFINITY } else { (g - w).abs() };
                    let ratio = e / tol.out[row];
                    if ratio > worst.0 || e.is_infinite() {
                        worst = (ratio, row, format!("out[{row}][{c}] = {g} but oracle {w}"));
                    }
                }
            }
        }
    }
    assert!(
        worst.0 <= 1.0,
        "{what}: {} (|err| = {:.3} × tol {:.3e})",
        worst.2,
        worst.0,
        tol.out[worst.1]
    );
}

/// Runs `kernel`'s forward with an LSE buffer.
pub fn forward<T: Element>(
    kernel: Kernel,
    inputs: &AttnInputs<'_, T>,
    layout: Layout,
    params: &AttnParams,
    par: Par,
) -> Result<(Vec<f32>, Vec<f32>), AttnError> {
    let shape = inputs.shape();
    let mut out = vec![f32::NAN; shape.out_dims().iter().product()];
    let mut lse = vec![f32::NAN; shape.lse_len()];
    let mut view = TensorViewMut::new("out", &mut out, shape.out_dims(), layout).unwrap();
    kernel.forward(inputs, &mut view, Some(&mut lse), params, par)?;
    Ok((out, lse))
}

/// Seeded values times `amp`, for biases and sinks.
fn values(n: usize, amp: f32, seed: u64) -> Vec<f32> {
    random(n, amp, &mut rng(seed))
}

/// Each modifier alone, then all combined, for a shape: softcap (tight
/// enough to bend the scores), ALiBi (the paper's slopes, and given
/// ones), a full bias, a bias broadcast over batch and heads, sinks.
pub fn mod_sets(shape: &AttnShape, seed: u64) -> Vec<Mods> {
    let (b, hq, nq, nk) = (shape.batch(), shape.q_heads(), shape.q_len(), shape.kv_len());
    let slopes: Vec<f32> = values(hq, 0.3, seed ^ 1).iter().map(|x| x.abs() + 0.01).collect();
    let sinks = values(hq, 2.0, seed ^ 2);
    let full = (values(b * hq * nq * nk, 1.0, seed ^ 3), [b, hq, nq, nk]);
    let bcast = (values(nq * nk, 2.0, seed ^ 4), [1, 1, nq, nk]);
    vec![
        Mods { softcap: Some(1.5), ..Default::default() },
        Mods { alibi: Some(None), ..Default::default() },
        Mods { alibi: Some(Some(slopes.clone())), ..Default::default() },
        Mods { bias: Some(full.clone()), ..Default::default() },
        Mods { bias: Some(bcast), ..Default::default() },
        Mods { sinks: Some(sinks.clone()), ..Default::default() },
        Mods {
            softcap: Some(3.0),
            alibi: Some(Some(slopes)),
            sinks: Some(sinks),
            bias: Some(full),
        },
    ]
}

/// One problem's inputs and the naive forward against the oracle, in
/// both layouts.
fn check_forward(what: &str, dims: [usize; 7], mask: Mask, amp: f32, mods: &Mods, seed: u64) {
    let shape = shape_of(dims);
    let (q, k, v) = make_inputs(&shape, amp, seed);
    let base = AttnParams::with_mask(mask);
    let params = mods.params(base);
    params.validate_for(&shape).unwrap();
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        let inputs = AttnInputs::from_slices(shape, layout, &q, &k, &v).unwrap();
        let r = reference(&inputs, &params);
        let tol = mod_tolerance(&inputs, &params, &r);
        let got = forward(Kernel::Naive, &inputs, layout, &params, Par::Seq)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let what = format!("{what} {dims:?} {mask:?} {layout:?} amp {amp} [{}]", mods.describe());
        assert_rows(&what, &shape, layout, (&got.0, &got.1), &r, &tol);
    }
}

const fn w(left: Option<usize>, right: Option<usize>) -> Mask {
    Mask::Window { left, right }
}

/// Every grouping (MHA, GQA, MQA), every kind of mask, Nq ≠ Nk both ways
/// (Nq > Nk with causal: fully masked rows), dv ≠ d.
const SHAPES: [([usize; 7], Mask); 8] = [
    ([1, 4, 4, 37, 37, 16, 16], Mask::None),
    ([2, 4, 4, 37, 50, 16, 16], Mask::Causal),
    ([2, 6, 2, 45, 70, 32, 24], Mask::None),
    ([1, 6, 2, 70, 45, 32, 32], Mask::Causal),
    ([1, 5, 1, 33, 90, 24, 40], Mask::Causal),
    ([2, 4, 1, 60, 60, 16, 16], w(Some(8), Some(3))),
    ([1, 2, 2, 80, 40, 8, 8], w(Some(0), Some(0))),
    ([1, 3, 1, 40, 100, 16, 16], w(None, Some(5))),
];

#[test]
fn naive_forward_matches_the_oracle_per_modifier() {
    for (n, (dims, mask)) in SHAPES.into_iter().enumerate() {
        for (m, mods) in mod_sets(&shape_of(dims), n as u64).iter().enumerate() {
            check_forward("naive", dims, mask, 1.5, mods, (n * 10 + m) as u64);
        }
    }
}

#[test]
fn naive_forward_extremes() {
    let mha = [1, 2, 2, 40, 60, 16, 16];
    let hq = 2;
    // Softcap far below and far above the logits; Gemma's 50 on large ones.
    for (c, amp) in [(1e-3, 1.0), (1e-3, 4.0), (1e6, 1.0), (1e6, 8.0), (50.0, 8.0)] {
        let mods = Mods { softcap: Some(c), ..Default::default() };
        for mask in [Mask::None, Mask::Causal] {
            check_forward("softcap", mha, mask, amp, &mods, 1);
        }
    }
    // Sinks that swallow the row (1e4: output 0, LSE the sink) or vanish.
    let sinks = Mods { sinks: Some(vec![1e4, -1e4]), ..Default::default() };
    let capped = Mods { softcap: Some(5.0), alibi: Some(None), ..sinks.clone() };
    for mods in [&sinks, &capped] {
        for mask in [Mask::None, Mask::Causal] {
            check_forward("sink ±1e4", [1, 2, 1, 40, 30, 16, 16], mask, 1.0, mods, 2);
        }
    }
    // Slopes so steep that every key but the nearest has weight 0; with
    // Nq > Nk the first rows sit far from every key (scores ~ −1e5, which
    // a sink at 0 outweighs entirely).
    let steep = Mods { alibi: Some(Some(vec![1e3; hq])), ..Default::default() };
    let steep_sink = Mods { sinks: Some(vec![0.0; hq]), ..steep.clone() };
    let steep_cap = Mods { softcap: Some(30.0), ..steep_sink.clone() };
    for mods in [&steep, &steep_sink, &steep_cap] {
        for dims in [[1, 2, 1, 300, 300, 16, 16], [1, 2, 2, 300, 40, 8, 8]] {
            check_forward("steep alibi", dims, Mask::None, 1.0, mods, 3);
        }
    }
}

/// A bias with `−inf` entries acts as a mask: scattered ones, and rows
/// whose every visible key is `−inf` (output 0, LSE `−inf` or the sink's),
/// with and without sinks, broadcast or not; never NaN.
#[test]
fn naive_forward_minus_infinity_bias_masks() {
    for (dims, mask) in [
        ([2, 4, 2, 30, 40, 16, 16], Mask::None),
        ([1, 3, 1, 40, 30, 8, 8], Mask::Causal),
        ([1, 2, 2, 50, 50, 16, 16], w(Some(4), Some(4))),
    ] {
        let s = shape_of(dims);
        let (b, hq, nq, nk) = (s.batch(), s.q_heads(), s.q_len(), s.kv_len());
        for bias_dims in [[b, hq, nq, nk], [1, 1, nq, nk]] {
            let n: usize = bias_dims.iter().product();
            let mut bias = values(n, 1.0, 7);
            // scattered −inf: about one key in three
            let mut g = rng(8);
            for x in bias.iter_mut() {
                if random(1, 1.0, &mut g)[0] > 0.4 {
                    *x = f32::NEG_INFINITY;
                }
            }
            // rows 3 and 10 of every (b, h) entry: all −inf
            for r in bias.chunks_mut(nq * nk) {
                r[3 * nk..4 * nk].fill(f32::NEG_INFINITY);
                r[10 * nk..11 * nk].fill(f32::NEG_INFINITY);
            }
            // row 5: −inf only on the keys it sees (the rest finite)
            for r in bias.chunks_mut(nq * nk) {
                let keys = mask.key_range(5, nq, nk);
                r[5 * nk..6 * nk][keys].fill(f32::NEG_INFINITY);
            }
            let plain = Mods { bias: Some((bias.clone(), bias_dims)), ..Default::default() };
            let sinks = Mods { sinks: Some(values(hq, 1.0, 9)), ..plain.clone() };
            let all = Mods { softcap: Some(4.0), alibi: Some(None), ..sinks.clone() };
            for mods in [&plain, &sinks, &all] {
                check_forward("-inf bias", dims, mask, 1.0, mods, 4);
                // the fully masked rows exactly: output 0, LSE −inf or sink
                let (q, k, v) = make_inputs(&s, 1.0, 4);
                let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
                let params = mods.params(AttnParams::with_mask(mask));
                let (out, lse) =
                    forward(Kernel::Naive, &inputs, Layout::Bhnd, &params, Par::Seq).unwrap();
                for bh in 0..b * hq {
                    for i in [3, 5, 10] {
                        let row = bh * nq + i;
                        let want = mods.sinks.as_ref().map_or(f32::NEG_INFINITY, |x| x[bh % hq]);
                        assert_eq!(lse[row], want, "{dims:?} row {row} [{}]", mods.describe());
                        assert!(out[row * s.v_dim()..][..s.v_dim()].iter().all(|x| *x == 0.0));
                    }
                }
            }
        }
    }
}

/// A NaN or `+inf` bias entry that a row reads is an error naming the
/// bias and its flat index (also under a softcap, which would make `+inf`
/// finite); one that no row reads is not; unchecked, only the rows that
/// read it are NaN.
#[test]
fn naive_forward_names_a_non_finite_bias() {
    let dims = [2, 2, 1, 6, 8, 8, 8];
    let s = shape_of(dims);
    let (q, k, v) = make_inputs(&s, 1.0, 5);
    let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
    let at = |b: usize, h: usize, i: usize, j: usize| ((b * 2 + h) * 6 + i) * 8 + j;
    for bad in [f32::NAN, f32::INFINITY] {
        let mut bias = values(2 * 2 * 6 * 8, 1.0, 6);
        let idx = at(1, 0, 2, 7); // key 7 of row 2: visible without a mask only
        bias[idx] = bad;
        for cap in [None, Some(2.0)] {
            let mods = Mods {
                softcap: cap,
                bias: Some((bias.clone(), [2, 2, 6, 8])),
                ..Default::default()
            };
            let p = mods.params(AttnParams::default());
            let e = forward(Kernel::Naive, &inputs, Layout::Bhnd, &p, Par::Seq).unwrap_err();
            assert!(
                matches!(e, AttnError::NonFinite { tensor: "bias", index, .. } if index == idx),
                "{bad} softcap {cap:?}: {e}"
            );
            // causal: row 2 sees keys 0..=4
            let p = mods.params(AttnParams::causal());
            let (out, lse) = forward(Kernel::Naive, &inputs, Layout::Bhnd, &p, Par::Seq).unwrap();
            assert!(out.iter().chain(&lse).all(|x| x.is_finite()));
            // unchecked: the same NaN rows as the oracle's
            let p = AttnParams { check_finite: false, ..mods.params(AttnParams::default()) };
            let (out, _) = forward(Kernel::Naive, &inputs, Layout::Bhnd, &p, Par::Seq).unwrap();
            let r = reference(&inputs, &p);
            for (row, (o, want)) in out.chunks(8).zip(r.out.chunks(8)).enumerate() {
                let nan = want.iter().any(|x| x.is_nan());
                assert_eq!(o.iter().any(|x| x.is_nan()), nan, "row {row}: {o:?}");
                assert_eq!(nan, row == 14 && (cap.is_none() || bad.is_nan()));
            }
        }
    }
}

/// Identical bits on any number of threads, every modifier on.
#[test]
fn naive_forward_with_modifiers_is_thread_count_independent() {
    let dims = [2, 6, 2, 45, 70, 32, 24];
    let s = shape_of(dims);
    let mods = mod_sets(&s, 11).pop().unwrap();
    let (q, k, v) = make_inputs(&s, 1.0, 12);
    let inputs = AttnInputs::from_slices(s, Layout::Bnhd, &q, &k, &v).unwrap();
    let p = mods.params(AttnParams::causal());
    let seq = forward(Kernel::Naive, &inputs, Layout::Bnhd, &p, Par::Seq).unwrap();
    let bits =
        |x: &(Vec<f32>, Vec<f32>)| x.0.iter().chain(&x.1).map(|v| v.to_bits()).collect::<Vec<_>>();
    for n in [2, 3] {
        let par =
            forward(Kernel::Naive, &inputs, Layout::Bnhd, &p, Par::rayon(n).unwrap()).unwrap();
        assert_eq!(bits(&seq), bits(&par), "{n} threads");
    }
}

/// Tolerances `[dq, dk, dv, dsinks]` of a backward against the oracle's
/// gradients `r`, given its forward's O and LSE (which the fast kernels
/// read) and the forward's tolerance `fwd` against the oracle. The model of
/// `crate::backward::grad_tolerance`, per row and per key instead of one
/// global bound, with the modifiers' score errors ([`row_model`]):
///
/// - `P_ij = exp(s_ij − LSE_i)` is off by a relative `δP_ij = δ_ij +
///   tol_lse_i + 2·ε·(1 + |LSE_i|) + 1e-6` (the recomputed score, the
///   forward's LSE, their f32 difference, the fast exp2);
/// - with a softcap the factor `f = 1 − t²` (`t = s/c`) is recomputed from
///   an f32 score off by `δ_ij`, so it is off by `2·|t|·δ_ij/c + 4·ε`;
/// - `dS_ij = P_ij·(dP_ij − D_i)·f_ij` is off by `e_ij = P_ij·((δP_ij·A_i +
///   E_i)·f_ij + A_i·δf_ij)`, where `A_i = max_j |dP_ij| + |D_i|` and
///   `E_i = dv·ε·A_i + dv·max|dO|·tol_out_i` (the f32 sums of dP and the
///   forward output's error in `D`);
/// - `dQ_i` sums `e_i·` times `scale·max|K|`, `dK_j` sums `e_·j` over the
///   group's rows times `scale·max|Q|`, `dV_j` sums `P_ij·δP_ij` times
///   `max|dO|`;
/// - `dsink_h = −Σ_{b,i} exp(sink_h − LSE_i)·D_i`: each term is off by
///   its weight times `|D_i|·(tol_lse_i + 2·ε·(1 + |LSE_i|) + 1e-6) + E_i`,
///   and the f32 sum over `B·Nq` terms by `B·Nq·ε·Σ|term|`;
/// - each gets `1e-6·(1 + max|grad|)` more, as in `grad_tolerance`.
pub fn mod_grad_tolerance<T: Element>(
    p: &BackwardInputs<'_, T>,
    params: &AttnParams,
    fwd_ref: &Reference,
    fwd: &RowTolerance,
    r: &ReferenceGrads,
) -> [Vec<f64>; 4] {
    let s = *p.shape();
    let (nq, nk, dv) = (s.q_len(), s.kv_len(), s.v_dim());
    let mods = ScoreMods::new(params, s.q_heads());
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (s.head_dim() as f64).sqrt());
    let eps = f32::EPSILON as f64;
    let amax = |x: &[f64]| x.iter().fold(0f64, |a, v| a.max(v.abs()));
    let emax = |x: &[T]| x.iter().fold(0f64, |a, v| a.max(v.to_f32().abs() as f64));
    let (qm, km) = (emax(p.fwd.q.data()), emax(p.fwd.k.data()));
    let gm = p.d_out.data().iter().fold(0f64, |a, v| a.max(v.abs() as f64));
    let x = |e: &T| e.to_f32() as f64;
    let (mut dq_t, mut col_k, mut col_v) = (
        0f64,
        vec![0f64; s.batch() * s.kv_heads() * nk],
        vec![0f64; s.batch() * s.kv_heads() * nk],
    );
    let mut dsink_t = vec![0f64; s.q_heads()];
    let mut dsink_terms = vec![0f64; s.q_heads()];
    for b in 0..s.batch() {
        for h in 0..s.q_heads() {
            let g = s.kv_head_of(h);
            for i in 0..nq {
                let row = (b * s.q_heads() + h) * nq + i;
                let lse = p.lse[row] as f64;
                let doi = p.d_out.row(b, h, i);
                let d_i: f64 = doi
                    .iter()
                    .zip(&fwd_ref.out[row * dv..][..dv])
                    .map(|(a, c)| *a as f64 * c)
                    .sum();
                let lse_err = fwd.lse[row] + 2.0 * eps * (1.0 + lse.abs()) + 1e-6;
                let model = row_model(&p.fwd, params, fwd_ref, (b, h, i));
                let dps: Vec<f64> = model
                    .iter()
                    .map(|(j, _, _)| {
                        doi.iter().zip(p.fwd.v.row(b, g, *j)).map(|(a, c)| *a as f64 * x(c)).sum()
                    })
                    .collect();
                let a = dps.iter().fold(0f64, |m, v| m.max(v.abs())) + d_i.abs();
                let e = dv as f64 * eps * a + dv as f64 * gm * fwd.out[row];
                let mut row_sum = 0.0;
                for (j, pj, dj) in &model {
                    let dp_rel = dj + lse_err;
                    let (f, df) = match mods.softcap {
                        None => (1.0, 0.0),
                        Some(c) => {
                            let c = c as f64;
                            let dot: f64 = p
                                .fwd
                                .q
                                .row(b, h, i)
                                .iter()
                                .zip(p.fwd.k.row(b, g, *j))
                                .map(|(u, w)| x(u) * x(w))
                                .sum();
                            let diag = i as i64 + nk as i64 - nq as i64;
                            let t = mods.score_f64(scale * dot, b, h, i, diag, *j) / c;
                            (1.0 - t * t, 2.0 * t.abs() * dj / c + 4.0 * eps)
                        }
                    };
                    let eij = pj * ((dp_rel * a + e) * f + a * df);
                    row_sum += eij;
                    col_k[(b * s.kv_heads() + g) * nk + j] += eij;
                    col_v[(b * s.kv_heads() + g) * nk + j] += pj * dp_rel;
                }
                dq_t = dq_t.max(row_sum);
                if let Some(sk) = mods.sink(h) {
                    let w = if lse.is_finite() { (sk as f64 - lse).exp() } else { 0.0 };
                    dsink_t[h] += w * (d_i.abs() * lse_err + e);
                    dsink_terms[h] += (w * d_i).abs();
                }
            }
        }
    }
    let n_terms = (s.batch() * nq) as f64;
    let base = |g: &[f64]| 1e-6 * (1.0 + amax(g));
    [
        vec![scale * km * dq_t + base(&r.dq)],
        vec![scale * qm * amax(&col_k) + base(&r.dk)],
        vec![gm * amax(&col_v) + base(&r.dv)],
        dsink_t
            .iter()
            .zip(&dsink_terms)
            .map(|(t, m)| t + n_terms * eps * m + base(&r.dsinks))
            .collect(),
    ]
}

/// The naive backward (dq, dk, dv and dsinks when the call has sinks)
/// against the oracle, in both layouts, on two forwards: the oracle's O
/// and LSE rounded to f32 (their error is that rounding, `ε·|x|`, so the
/// bounds measure the backward alone) and the naive forward's (the chain a
/// caller runs, with the forward's tolerance carried through `D` and the
/// LSE).
fn check_backward(what: &str, dims: [usize; 7], mask: Mask, amp: f32, mods: &Mods, seed: u64) {
    let shape = shape_of(dims);
    let (q, k, v) = make_inputs(&shape, amp, seed);
    let d_out = random(shape.out_dims().iter().product(), 1.0, &mut rng(seed ^ 0xd0));
    let params = mods.params(AttnParams::with_mask(mask));
    params.validate_for(&shape).unwrap();
    let n = |d: [usize; 4]| d.iter().product::<usize>();
    let eps = f32::EPSILON as f64;
    let dv = shape.v_dim();
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        let fwd = AttnInputs::from_slices(shape, layout, &q, &k, &v).unwrap();
        let fwd_ref = reference(&fwd, &params);
        let rounded = RowTolerance {
            out: fwd_ref
                .out
                .chunks(dv.max(1))
                .map(|o| eps * o.iter().fold(0f64, |a, x| a.max(x.abs())))
                .collect(),
            lse: fwd_ref
                .lse
                .iter()
                .map(|l| if l.is_finite() { eps * l.abs() } else { 0.0 })
                .collect(),
        };
        for (source, fwd_tol) in
            [(Kernel::Oracle, rounded), (Kernel::Naive, mod_tolerance(&fwd, &params, &fwd_ref))]
        {
            let what = format!(
                "{what} {dims:?} {mask:?} {layout:?} amp {amp} [{}] on the {source} forward",
                mods.describe()
            );
            let (out, lse) = forward(source, &fwd, layout, &params, Par::Seq).unwrap();
            let inputs =
                BackwardInputs::from_slices(shape, layout, &q, &k, &v, &out, &lse, &d_out).unwrap();
            let r = reference_backward(&inputs, &params);
            let tol = mod_grad_tolerance(&inputs, &params, &fwd_ref, &fwd_tol, &r);
            let mut g = [
                vec![f32::NAN; n(shape.q_dims())],
                vec![f32::NAN; n(shape.k_dims())],
                vec![f32::NAN; n(shape.v_dims())],
            ];
            let mut dsinks = vec![f32::NAN; shape.q_heads()];
            {
                let [dq, dk, dv] = &mut g;
                let mut views = GradsMut::from_slices(&shape, layout, dq, dk, dv).unwrap();
                if params.sinks.is_some() {
                    views.dsinks = Some(&mut dsinks);
                }
                Kernel::Naive
                    .backward(&inputs, &mut views, &params, Par::Seq)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            assert_grads(&what, &shape, layout, &g, &r, [tol[0][0], tol[1][0], tol[2][0]]);
            if params.sinks.is_some() {
                for (h, (got, want)) in dsinks.iter().zip(&r.dsinks).enumerate() {
                    let e = (*got as f64 - want).abs();
                    assert!(
                        e <= tol[3][h],
                        "{what}: dsinks[{h}] = {got} but oracle {want} (|err| {e:.3e} > tol {:.3e})",
                        tol[3][h]
                    );
                }
            }
        }
    }
}

#[test]
fn naive_backward_matches_the_oracle_per_modifier() {
    for (n, (dims, mask)) in SHAPES.into_iter().enumerate() {
        for (m, mods) in mod_sets(&shape_of(dims), n as u64).iter().enumerate() {
            check_backward("naive backward", dims, mask, 1.5, mods, (n * 10 + m) as u64);
        }
    }
}

#[test]
fn naive_backward_extremes() {
    let mha = [1, 2, 2, 40, 60, 16, 16];
    for (c, amp) in [(1e-3, 1.0), (1e-3, 4.0), (1e6, 1.0), (1e6, 8.0), (50.0, 8.0)] {
        let mods = Mods { softcap: Some(c), ..Default::default() };
        for mask in [Mask::None, Mask::Causal] {
            check_backward("softcap", mha, mask, amp, &mods, 1);
        }
    }
    let sinks = Mods { sinks: Some(vec![1e4, -1e4]), ..Default::default() };
    let capped = Mods { softcap: Some(5.0), alibi: Some(None), ..sinks.clone() };
    for mods in [&sinks, &capped] {
        for mask in [Mask::None, Mask::Causal] {
            check_backward("sink ±1e4", [1, 2, 1, 40, 30, 16, 16], mask, 1.0, mods, 2);
        }
    }
    let steep = Mods { alibi: Some(Some(vec![1e3; 2])), ..Default::default() };
    let steep_sink = Mods { sinks: Some(vec![0.0; 2]), ..steep.clone() };
    let steep_cap = Mods { softcap: Some(30.0), ..steep_sink.clone() };
    for mods in [&steep, &steep_sink, &steep_cap] {
        for dims in [[1, 2, 1, 300, 300, 16, 16], [1, 2, 2, 300, 40, 8, 8]] {
            check_backward("steep alibi", dims, Mask::None, 1.0, mods, 3);
        }
    }
    // −inf bias: scattered, and whole rows (which contribute nothing).
    let dims = [2, 4, 2, 30, 40, 16, 16];
    let mut bias = values(2 * 4 * 30 * 40, 1.0, 7);
    let mut g = rng(8);
    for x in bias.iter_mut() {
        if random(1, 1.0, &mut g)[0] > 0.4 {
            *x = f32::NEG_INFINITY;
        }
    }
    for r in bias.chunks_mut(30 * 40) {
        r[3 * 40..4 * 40].fill(f32::NEG_INFINITY);
    }
    let plain = Mods { bias: Some((bias, [2, 4, 30, 40])), ..Default::default() };
    let with_sinks = Mods { sinks: Some(values(4, 1.0, 9)), ..plain.clone() };
    let all = Mods { softcap: Some(4.0), alibi: Some(None), ..with_sinks.clone() };
    for mods in [&plain, &with_sinks, &all] {
        for mask in [Mask::None, Mask::Causal] {
            check_backward("-inf bias", dims, mask, 1.0, mods, 4);
        }
    }
}

/// Identical gradients (dsinks included) on any number of threads, every
/// modifier on.
#[test]
fn naive_backward_with_modifiers_is_thread_count_independent() {
    let dims = [2, 6, 2, 45, 70, 32, 24];
    let s = shape_of(dims);
    let mods = mod_sets(&s, 13).pop().unwrap();
    let (q, k, v) = make_inputs(&s, 1.0, 14);
    let d_out = random(s.out_dims().iter().product(), 1.0, &mut rng(15));
    let p = mods.params(AttnParams::causal());
    let fwd = AttnInputs::from_slices(s, Layout::Bnhd, &q, &k, &v).unwrap();
    let (out, lse) = forward(Kernel::Naive, &fwd, Layout::Bnhd, &p, Par::Seq).unwrap();
    let inputs =
        BackwardInputs::from_slices(s, Layout::Bnhd, &q, &k, &v, &out, &lse, &d_out).unwrap();
    let n = |d: [usize; 4]| d.iter().product::<usize>();
    let run = |par: Par| {
        let (mut dq, mut dk, mut dv) =
            (vec![0f32; n(s.q_dims())], vec![0f32; n(s.k_dims())], vec![0f32; n(s.v_dims())]);
        let mut ds = vec![0f32; s.q_heads()];
        let mut g = GradsMut::from_slices(&s, Layout::Bnhd, &mut dq, &mut dk, &mut dv).unwrap();
        g.dsinks = Some(&mut ds);
        Kernel::Naive.backward(&inputs, &mut g, &p, par).unwrap();
        [dq, dk, dv, ds].concat().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    let seq = run(Par::Seq);
    for t in [2, 3] {
        assert!(seq == run(Par::rayon(t).unwrap()), "{t} threads");
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn mask_strategy() -> impl Strategy<Value = Mask> {
        let side = prop_oneof![Just(None), (0usize..20).prop_map(Some)];
        prop_oneof![
            Just(Mask::None),
            Just(Mask::Causal),
            (side.clone(), side).prop_map(|(left, right)| Mask::Window { left, right }),
        ]
    }

    #[derive(Debug, Clone)]
    struct Problem {
        dims: [usize; 7],
        mask: Mask,
        amp: f32,
        softcap: Option<f32>,
        /// 0: off, 1: default slopes, 2: given slopes
        alibi: u8,
        sinks: Option<f32>,
        /// 0: off, 1: full, 2: broadcast over heads, 3: over batch and heads
        bias: u8,
        /// fraction of −inf bias entries
        holes: f32,
        seed: u64,
    }

    fn problem() -> impl Strategy<Value = Problem> {
        (
            (1usize..=2, 1usize..=3, 1usize..=3, 0usize..=40, 0usize..=40),
            (prop::sample::select(vec![1usize, 3, 8, 16, 32]), 1usize..=20),
            mask_strategy(),
            prop_oneof![Just(1.0f32), Just(3.0f32), Just(0.1f32)],
            prop_oneof![
                Just(None),
                prop::sample::select(vec![1e-3f32, 1.0, 5.0, 50.0]).prop_map(Some)
            ],
            (
                0u8..3,
                prop_oneof![
                    Just(None),
                    prop::sample::select(vec![-1e4f32, -3.0, 0.0, 2.0, 1e4]).prop_map(Some)
                ],
            ),
            (0u8..4, prop::sample::select(vec![0.0f32, 0.3, 0.9])),
            any::<u64>(),
        )
            .prop_map(
                |(
                    (b, hkv, grp, nq, nk),
                    (d, dv),
                    mask,
                    amp,
                    softcap,
                    (alibi, sinks),
                    (bias, holes),
                    seed,
                )| {
                    Problem {
                        dims: [b, hkv * grp, hkv, nq, nk, d, dv],
                        mask,
                        amp,
                        softcap,
                        alibi,
                        sinks,
                        bias,
                        holes,
                        seed,
                    }
                },
            )
    }

    impl Problem {
        fn mods(&self) -> Mods {
            let [b, hq, _, nq, nk, _, _] = self.dims;
            let mut g = rng(self.seed ^ 0xb1a5);
            let bias = (self.bias > 0).then(|| {
                let dims = match self.bias {
                    1 => [b, hq, nq, nk],
                    2 => [b, 1, nq, nk],
                    _ => [1, 1, nq, nk],
                };
                let n = dims.iter().product();
                let mut x = random(n, 1.0, &mut g);
                for v in x.iter_mut() {
                    if random(1, 1.0, &mut g)[0].abs() < self.holes * 1.5 {
                        *v = f32::NEG_INFINITY;
                    }
                }
                (x, dims)
            });
            let slopes = random(hq, 0.5, &mut g).iter().map(|x| x.abs()).collect();
            Mods {
                softcap: self.softcap,
                alibi: match self.alibi {
                    0 => None,
                    1 => Some(None),
                    _ => Some(Some(slopes)),
                },
                sinks: self.sinks.map(|s| random(hq, 1.0, &mut g).iter().map(|x| s + x).collect()),
                bias,
            }
        }
    }

    proptest! {
        /// Random shapes, masks and modifier combinations: the naive
        /// forward and backward against the oracle (the models of
        /// [`mod_tolerance`] and [`mod_grad_tolerance`]).
        #[test]
        fn naive_matches_the_oracle_with_random_modifiers(p in problem()) {
            let mods = p.mods();
            check_forward("prop", p.dims, p.mask, p.amp, &mods, p.seed);
            check_backward("prop", p.dims, p.mask, p.amp, &mods, p.seed);
        }
    }
}
