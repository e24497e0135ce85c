//! Score modifiers in split-KV decode and the KV cache path: softcap, ALiBi, sinks against the oracle.
//!
//! Every row is compared with the f64 oracle row (`reference_row` located
//! by `RowAt`, the single definition) over the values the kernel reads
//! (the cache's stored values widened to f32). Tolerance: the model of
//! `common::tolerance` (an error `δ` in a logit moves the output by up to
//! `δ·max|v|` and the LSE by `δ`), with `L` taken per row as the largest
//! magnitude an f32 score of a key that matters passes through: for each
//! key whose modified score is within 40 of the row's max (lighter keys
//! weigh below `e⁻⁴⁰` together, even over 2¹⁵ keys),
//! `scale·Σ_c |q_c·k_c| + |bias_j| + slope·|diag − j|` — each of the f32
//! additions of the bias and the ALiBi penalty rounds at that magnitude,
//! and the softcap `c·tanh(s/c)` has slope ≤ 1, so it never enlarges an
//! error; and the sink's `|sink|` when the sink is within 40 of the max
//! (its logit is rounded into the log2 domain like a score). So
//! `tol_out = (1e-5 + 32·ε·L)·max|v|` and `tol_lse = 1e-5·(1 + |lse|) +
//! 32·ε·L`. Rows with no key left are exact: output 0 and LSE `−inf`, or
//! exactly the sink.

use crate::common::*;
use crate::decode::filled;
use attnlab::flash::{KvElement, Path, Q8_0, SPLIT_KV_MAX_Q, decode};
use attnlab::naive::{RowAt, reference, reference_row};
use attnlab::{
    Alibi, AttentionKernel, AttnInputs, AttnParams, Flash, Layout, Mask, Par, ScoreMods,
    TensorView, TensorViewMut, bf16, f16,
};

/// The sizes of a call: `(B, Hq, Hkv, nq, d, dv)`.
type Dims = (usize, usize, usize, usize, usize, usize);

/// Row access of a call's inputs as f32: `q(b, h, t)`, `k(b, g, j)`,
/// `v(b, g, j)`, and each batch entry's number of keys.
struct Rows<'a> {
    q: &'a dyn Fn(usize, usize, usize) -> &'a [f32],
    k: &'a dyn Fn(usize, usize, usize) -> &'a [f32],
    v: &'a dyn Fn(usize, usize, usize) -> &'a [f32],
    lens: &'a [usize],
}

/// The oracle over `rows`: `[B, Hq, nq, dv]` outputs and `[B, Hq, nq]`
/// LSEs in f64, with each row's `L` (see the module docs), whether it has
/// no key left (masked, or every key's bias `−inf`), and max|v|.
struct Expected {
    out: Vec<f64>,
    lse: Vec<f64>,
    l: Vec<f64>,
    empty: Vec<bool>,
    vmax: f64,
}

fn expected(dims: Dims, rows: &Rows<'_>, params: &AttnParams) -> Expected {
    let (bsz, hq, hkv, nq, d, dv) = dims;
    let group = hq / hkv;
    let mods = ScoreMods::new(params, hq);
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (d as f64).sqrt());
    let mut e = Expected { out: vec![], lse: vec![], l: vec![], empty: vec![], vmax: 0.0 };
    let (mut scores, mut o) = (Vec::new(), vec![0f64; dv]);
    for b in 0..bsz {
        let len = rows.lens[b];
        for h in 0..hq {
            let g = h / group;
            for t in 0..nq {
                let keys = params.mask.key_range(t, nq, len);
                let at = RowAt::new(&mods, b, h, t, nq, len);
                let q = (rows.q)(b, h, t);
                let kr = |j| (rows.k)(b, g, j);
                let vr = |j| (rows.v)(b, g, j);
                let lse = reference_row(q, keys.clone(), scale, at, kr, vr, &mut scores, &mut o);
                // `scores` now holds the row's modified scores, key by key
                let sink = mods.sink(h).map(f64::from);
                let m = scores.iter().copied().fold(sink.unwrap_or(f64::NEG_INFINITY), f64::max);
                let mut l = sink.filter(|s| *s >= m - 40.0).map_or(0.0, f64::abs);
                for (j, s) in keys.zip(&scores) {
                    if *s < m - 40.0 {
                        continue;
                    }
                    let qk: f64 =
                        q.iter().zip(kr(j)).map(|(a, c)| (*a as f64 * *c as f64).abs()).sum();
                    let bias = mods.bias_row(b, h, t).map_or(0.0, |x| (x[j] as f64).abs());
                    let alibi =
                        mods.slope(h).map_or(0.0, |x| x as f64 * at.diag.abs_diff(j as i64) as f64);
                    l = f64::max(l, qk * scale.abs() + bias + alibi);
                    e.vmax = vr(j).iter().fold(e.vmax, |a, x| a.max(x.abs() as f64));
                }
                e.out.extend_from_slice(&o);
                e.lse.push(lse);
                e.l.push(l);
                e.empty.push(scores.iter().all(|s| *s == f64::NEG_INFINITY));
            }
        }
    }
    e
}

/// Asserts a call's `out`/`lse` (contiguous `[B, Hq, nq, ·]`) match `e`,
/// naming the worst element relative to its row's tolerance.
fn assert_rows(what: &str, dv: usize, (out, lse): (&[f32], &[f32]), e: &Expected) {
    let eps = f32::EPSILON as f64;
    let mut worst = (0f64, String::new());
    for (r, &want_lse) in e.lse.iter().enumerate() {
        let (got_o, want_o) = (&out[r * dv..(r + 1) * dv], &e.out[r * dv..(r + 1) * dv]);
        if e.empty[r] {
            // no key left: LSE −inf or exactly the sink, output 0
            let exact = lse[r] == want_lse as f32 && got_o.iter().all(|x| *x == 0.0);
            assert!(
                exact,
                "{what}: row {r} has no key: lse {} (want {want_lse}), out {got_o:?}",
                lse[r]
            );
            continue;
        }
        let tol_out = (1e-5 + 32.0 * eps * e.l[r]) * e.vmax.max(1e-30);
        let tol_lse = 1e-5 * (1.0 + want_lse.abs()) + 32.0 * eps * e.l[r];
        let mut rate = |err: f64, tol: f64, name: String| {
            let ratio = if err.is_nan() { f64::INFINITY } else { err / tol };
            if ratio > worst.0 || ratio.is_infinite() && worst.0.is_finite() {
                worst = (ratio, format!("{name}: |err| {err:.3e}, tol {tol:.3e}"));
            }
        };
        for (c, (g, w)) in got_o.iter().zip(want_o).enumerate() {
            rate((*g as f64 - w).abs(), tol_out, format!("out[row {r}][{c}] = {g}, oracle {w}"));
        }
        let err = (lse[r] as f64 - want_lse).abs();
        rate(err, tol_lse, format!("lse[{r}] = {}, oracle {want_lse}", lse[r]));
    }
    assert!(worst.0 <= 1.0, "{what}: {}", worst.1);
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Decode over a ragged cache of `T` with `params`, on 1 and 2 threads
/// (identical bits), against the oracle over the stored values.
fn check_decode<T: KvElement>(
    lens: &[usize],
    (hq, hkv, nq): (usize, usize, usize),
    (d, dv): (usize, usize),
    params: &AttnParams,
    amp: f32,
    seed: u64,
) {
    let (cache, stored) = filled::<T>(lens, hkv, d, dv, seed);
    let bsz = lens.len();
    let q = random(bsz * hq * nq * d, amp, &mut rng(seed + 1));
    let qs = cache.query_shape(hq, nq).unwrap();
    let run = |par| {
        let mut out = vec![f32::NAN; bsz * hq * nq * dv];
        let mut lse = vec![f32::NAN; bsz * hq * nq];
        decode(&cache, &qs, &q, &mut out, Some(&mut lse), params, par).unwrap();
        (out, lse)
    };
    let (out, lse) = run(Par::Seq);
    let (out2, lse2) = run(Par::rayon(2).unwrap());
    let what = format!(
        "decode {} lens {lens:?} hq {hq} hkv {hkv} nq {nq} d {d} dv {dv} amp {amp} {:?} \
         softcap {:?} alibi {:?} sinks {:?}",
        T::NAME,
        params.mask,
        params.softcap,
        params.alibi,
        params.sinks.map(|s| s[0]),
    );
    assert!(same_bits(&out, &out2) && same_bits(&lse, &lse2), "{what}: 1 and 2 threads differ");
    let qr = |b: usize, h: usize, t: usize| &q[((b * hq + h) * nq + t) * d..][..d];
    let kr = |b: usize, g: usize, j: usize| &stored[b].0[(g * lens[b] + j) * d..][..d];
    let vr = |b: usize, g: usize, j: usize| &stored[b].1[(g * lens[b] + j) * dv..][..dv];
    let rows = Rows { q: &qr, k: &kr, v: &vr, lens };
    let e = expected((bsz, hq, hkv, nq, d, dv), &rows, params);
    assert_rows(&what, dv, (&out, &lse), &e);
}

/// Parameters with a mask and modifiers.
fn mods<'a>(
    mask: Mask,
    softcap: Option<f32>,
    alibi: Option<Alibi<'a>>,
    sinks: Option<&'a [f32]>,
) -> AttnParams<'a> {
    AttnParams { softcap, alibi, sinks, ..AttnParams::with_mask(mask) }
}

/// `n` values spread over `[lo, hi]`.
fn spread(n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|i| lo + (hi - lo) * i as f32 / (n.max(2) - 1) as f32).collect()
}

/// The modifier sets every grouping and dtype runs: each alone, then
/// combined (`sinks` and `slopes` one per query head).
fn sets<'a>(mask: Mask, sinks: &'a [f32], slopes: &'a [f32]) -> Vec<AttnParams<'a>> {
    vec![
        mods(mask, Some(5.0), None, None),
        mods(mask, None, Some(Alibi::Default), None),
        mods(mask, None, Some(Alibi::Slopes(slopes)), None),
        mods(mask, None, None, Some(sinks)),
        mods(mask, Some(2.0), Some(Alibi::Default), None),
        mods(mask, None, Some(Alibi::Slopes(slopes)), Some(sinks)),
        mods(mask, Some(30.0), Some(Alibi::Default), Some(sinks)),
    ]
}

#[test]
fn decode_modifiers_every_grouping_and_dtype() {
    let masks = [Mask::Causal, Mask::None, Mask::Window { left: Some(100), right: Some(0) }];
    for (i, (hq, hkv)) in [(4, 4), (8, 2), (6, 1)].into_iter().enumerate() {
        let sinks = spread(hq, -1.0, 3.0);
        let slopes = spread(hq, 0.5, 0.002);
        for (m, mask) in masks.into_iter().enumerate() {
            for (k, p) in sets(mask, &sinks, &slopes).iter().enumerate() {
                let seed = (100 * i + 10 * m + k) as u64;
                // logits of a few units: the modifiers decide the weights
                check_decode::<f32>(&[700], (hq, hkv, 1), (64, 64), p, 3.0, seed);
                check_decode::<f16>(&[530], (hq, hkv, 3), (32, 48), p, 3.0, seed);
                check_decode::<bf16>(&[300], (hq, hkv, 2), (128, 128), p, 3.0, seed);
                check_decode::<Q8_0>(&[610], (hq, hkv, 2), (64, 64), p, 3.0, seed);
                // head dims off the 32-value block
                check_decode::<Q8_0>(&[77], (hq, hkv, 1), (20, 40), p, 3.0, seed + 1);
            }
        }
    }
}

#[test]
fn decode_modifiers_nq_1_to_16_ragged() {
    let (hq, hkv) = (4, 2);
    let sinks = spread(hq, 2.0, -2.0);
    let slopes = spread(hq, 0.3, 0.01);
    for nq in [1, 2, 5, 16] {
        for (k, p) in sets(Mask::Causal, &sinks, &slopes).iter().enumerate() {
            let seed = (nq * 10 + k) as u64;
            let lens = [0, 1, 17, 513, 1030];
            check_decode::<f32>(&lens, (hq, hkv, nq), (16, 24), p, 2.0, seed);
        }
    }
    // more queries than positions: the first rows see nothing (LSE = sink);
    // without a mask the diagonal lies before key 0 (ALiBi counts from it)
    for mask in [Mask::Causal, Mask::None, Mask::Window { left: Some(2), right: Some(1) }] {
        for p in sets(mask, &sinks, &slopes) {
            check_decode::<f32>(&[3, 0, 9], (hq, hkv, 12), (8, 8), &p, 2.0, 5);
            check_decode::<Q8_0>(&[40, 6], (hq, hkv, 16), (32, 16), &p, 2.0, 6);
        }
    }
}

#[test]
fn decode_modifier_extremes() {
    let (hq, hkv) = (4, 2);
    let lens = [1030, 5, 0];
    let big = spread(hq, 1e4, 1e4);
    let low = spread(hq, -1e4, -1e4);
    let mixed = [1e4, -1e4, 0.0, 1e4];
    let steep = [1e3, 50.0, 5.0, 1e-3];
    let cases = [
        // softcap: every score flattened to ±c, or left as it is
        mods(Mask::Causal, Some(1e-3), None, None),
        mods(Mask::Causal, Some(1e6), None, None),
        mods(Mask::None, Some(1e-3), Some(Alibi::Default), Some(&mixed)),
        // slopes so steep that every key but the nearest underflows
        mods(Mask::Causal, None, Some(Alibi::Slopes(&steep)), None),
        mods(Mask::None, Some(1e6), Some(Alibi::Slopes(&steep)), Some(&mixed)),
        mods(
            Mask::Window { left: Some(300), right: Some(2) },
            None,
            Some(Alibi::Slopes(&steep)),
            None,
        ),
        // a sink that takes (almost) all the weight, or none of it
        mods(Mask::Causal, None, None, Some(&big)),
        mods(Mask::Causal, None, None, Some(&low)),
        mods(Mask::Causal, Some(50.0), Some(Alibi::Default), Some(&mixed)),
    ];
    for (k, p) in cases.iter().enumerate() {
        for nq in [1, 7] {
            check_decode::<f32>(&lens, (hq, hkv, nq), (32, 32), p, 3.0, k as u64);
            check_decode::<f16>(&lens, (hq, hkv, nq), (32, 32), p, 3.0, k as u64);
        }
        // large logits (|s| ~ 1e3) through the modifiers
        check_decode::<f32>(&lens, (hq, hkv, 3), (64, 64), p, 40.0, 50 + k as u64);
    }
    // finite parameters whose log2-domain value overflows f32 (slope·log2 e,
    // c·log2 e): the rows are recomputed exactly, never NaN
    let huge = [3e38, 1.0, 3e38, 0.0];
    for p in [
        mods(Mask::Causal, None, Some(Alibi::Slopes(&huge)), None),
        mods(Mask::None, Some(3e38), None, Some(&mixed)),
        mods(Mask::Causal, Some(3e38), Some(Alibi::Slopes(&huge)), None),
    ] {
        check_decode::<f32>(&lens, (hq, hkv, 3), (32, 32), &p, 3.0, 7);
    }
    // a sink of 1e4 takes everything: the output is 0 to f32 rounding,
    // the LSE the sink's
    let (cache, _) = filled::<f32>(&[600], hkv, 16, 16, 1);
    let qs = cache.query_shape(hq, 1).unwrap();
    let q = random(hq * 16, 1.0, &mut rng(2));
    let (mut out, mut lse) = (vec![f32::NAN; hq * 16], vec![f32::NAN; hq]);
    let p = mods(Mask::Causal, None, None, Some(&big));
    decode(&cache, &qs, &q, &mut out, Some(&mut lse), &p, Par::Seq).unwrap();
    assert!(out.iter().all(|x| *x == 0.0), "{out:?}");
    assert_eq!(lse, big);
}

#[test]
fn decode_refuses_a_bias_and_names_bad_modifiers() {
    let (cache, _) = filled::<f32>(&[5], 1, 4, 4, 3);
    let qs = cache.query_shape(2, 1).unwrap();
    let (q, mut out, mut lse) = (vec![0.5; 8], vec![0.0; 8], vec![0.0; 2]);
    let bias_data = vec![0.0f32; 2 * 5];
    let bias = TensorView::new("bias", &bias_data, [1, 2, 1, 5], Layout::Bhnd).unwrap();
    let p = AttnParams { bias: Some(bias), ..AttnParams::causal() };
    let e = decode(&cache, &qs, &q, &mut out, Some(&mut lse), &p, Par::Seq).unwrap_err();
    assert!(e.to_string().starts_with("bias: prefill only"), "{e}");
    let bad = [
        (mods(Mask::Causal, Some(0.0), None, None), "softcap: "),
        (mods(Mask::Causal, Some(f32::NAN), None, None), "softcap: "),
        (mods(Mask::Causal, None, None, Some(&[1.0])), "sinks: "),
        (mods(Mask::Causal, None, None, Some(&[1.0, f32::INFINITY])), "sinks: "),
        (mods(Mask::Causal, None, Some(Alibi::Slopes(&[1.0, 2.0, 3.0])), None), "alibi slopes: "),
    ];
    for (p, name) in bad {
        let e = decode(&cache, &qs, &q, &mut out, Some(&mut lse), &p, Par::Seq).unwrap_err();
        assert!(e.to_string().starts_with(name), "{e}");
    }
}

/// A bias `[bb, hb, nq, nk]` in `layout` (logical order filled by `f`).
fn bias_data(
    [bb, hb, nq, nk]: [usize; 4],
    layout: Layout,
    f: impl Fn(usize, usize, usize, usize) -> f32,
) -> Vec<f32> {
    let mut x = vec![0f32; bb * hb * nq * nk];
    let [sb, sh, sn] = layout.strides([bb, hb, nq, nk]);
    for b in 0..bb {
        for h in 0..hb {
            for i in 0..nq {
                for j in 0..nk {
                    x[b * sb + h * sh + i * sn + j] = f(b, h, i, j);
                }
            }
        }
    }
    x
}

/// A Flash call with at most `SPLIT_KV_MAX_Q` queries (the split-KV path)
/// on 1 and 2 threads (identical bits), against the oracle.
fn check_prefill(dims: [usize; 7], layout: Layout, params: &AttnParams, amp: f32, seed: u64) {
    let shape = shape_of(dims);
    let [bsz, hq, hkv, nq, nk, d, dv] = dims;
    assert!(nq <= SPLIT_KV_MAX_Q && Flash::default().path(&shape) == Path::SplitKv);
    let (q, k, v) = make_inputs(&shape, amp, seed);
    let inputs = AttnInputs::from_slices(shape, layout, &q, &k, &v).unwrap();
    let run = |par| {
        let mut out = vec![f32::NAN; shape.out_dims().iter().product()];
        let mut lse = vec![f32::NAN; shape.lse_len()];
        let mut ov = TensorViewMut::new("out", &mut out, shape.out_dims(), Layout::Bhnd).unwrap();
        Flash::default().forward(&inputs, &mut ov, Some(&mut lse), params, par).unwrap();
        (out, lse)
    };
    let (out, lse) = run(Par::Seq);
    let (out2, lse2) = run(Par::rayon(2).unwrap());
    let what = format!(
        "prefill {dims:?} {layout:?} amp {amp} {:?} softcap {:?} alibi {:?} sinks {:?} bias {:?}",
        params.mask,
        params.softcap,
        params.alibi,
        params.sinks.map(|s| s[0]),
        params.bias.map(|b| b.dims()),
    );
    assert!(same_bits(&out, &out2) && same_bits(&lse, &lse2), "{what}: 1 and 2 threads differ");
    let (qv, kv, vv) = (&inputs.q, &inputs.k, &inputs.v);
    let (qr, kr, vr) =
        (|b, h, t| qv.row(b, h, t), |b, g, j| kv.row(b, g, j), |b, g, j| vv.row(b, g, j));
    let lens = vec![nk; bsz];
    let rows = Rows { q: &qr, k: &kr, v: &vr, lens: &lens };
    let mut e = expected((bsz, hq, hkv, nq, d, dv), &rows, params);
    // the values from the oracle itself (the same rows)
    let r = reference(&inputs, params);
    assert_eq!((&r.out, &r.lse), (&e.out, &e.lse));
    (e.out, e.lse) = (r.out, r.lse);
    assert_rows(&what, dv, (&out, &lse), &e);
}

fn with_bias<'a>(p: AttnParams<'a>, bias: TensorView<'a, f32>) -> AttnParams<'a> {
    AttnParams { bias: Some(bias), ..p }
}

#[test]
fn prefill_split_kv_with_a_bias() {
    let (bsz, hq, hkv, nk) = (2, 4, 2, 300);
    let sinks = spread(hq, -1.0, 2.0);
    let slopes = spread(hq, 0.2, 0.01);
    for (c, nq) in [1, 3, 16].into_iter().enumerate() {
        for (bdims, layout) in [
            ([bsz, hq, nq, nk], Layout::Bhnd),
            ([1, hq, nq, nk], Layout::Bnhd),
            ([bsz, 1, nq, nk], Layout::Bhnd),
            ([1, 1, nq, nk], Layout::Bnhd),
        ] {
            // random values of a few units, every 7th key −inf, and the
            // last row of (0, 0) −inf everywhere (fully masked)
            let data = bias_data(bdims, layout, |b, h, i, j| {
                let x = ((b * 31 + h * 17 + i * 7 + j * 13) % 23) as f32 * 0.4 - 4.0;
                let last = b == 0 && h == 0 && i == nq - 1;
                if last || (j + i + h) % 7 == 3 { f32::NEG_INFINITY } else { x }
            });
            let bias = TensorView::new("bias", &data, bdims, layout).unwrap();
            for mask in [Mask::Causal, Mask::None, Mask::Window { left: Some(40), right: Some(3) }]
            {
                let with = |p| with_bias(p, bias);
                let cases = [
                    with(AttnParams::with_mask(mask)),
                    with(mods(mask, Some(3.0), None, None)),
                    with(mods(mask, None, Some(Alibi::Slopes(&slopes)), None)),
                    with(mods(mask, None, None, Some(&sinks))),
                    with(mods(mask, Some(20.0), Some(Alibi::Default), Some(&sinks))),
                ];
                for (k, p) in cases.iter().enumerate() {
                    let dims = [bsz, hq, hkv, nq, nk, 32, 24];
                    check_prefill(dims, Layout::Bhnd, p, 2.0, (c * 10 + k) as u64);
                }
            }
        }
    }
    // the modifiers without a bias on the split-KV prefill path, and MQA
    for p in sets(Mask::Causal, &sinks, &slopes) {
        check_prefill([2, 4, 1, 5, 700, 64, 64], Layout::Bnhd, &p, 2.0, 9);
    }
}

#[test]
fn prefill_bias_every_key_minus_infinity() {
    // every row fully masked by the bias: output 0, LSE −inf (or the sink)
    let dims = [1, 2, 1, 4, 90, 16, 16];
    let data = vec![f32::NEG_INFINITY; 4 * 90];
    let bias = TensorView::new("bias", &data, [1, 1, 4, 90], Layout::Bhnd).unwrap();
    let sinks = [0.5, -3.0];
    for p in [
        AttnParams { bias: Some(bias), ..AttnParams::causal() },
        AttnParams { bias: Some(bias), ..mods(Mask::None, Some(2.0), Some(Alibi::Default), None) },
        AttnParams { bias: Some(bias), ..mods(Mask::Causal, None, None, Some(&sinks)) },
    ] {
        check_prefill(dims, Layout::Bhnd, &p, 1.0, 4);
    }
}

/// Runs a split-KV prefill call with a bias whose entry `(0, 0, row, key)`
/// is `bad`; returns the result.
fn with_bad_bias(
    bad: f32,
    (row, key): (usize, usize),
    check_finite: bool,
) -> (Result<(), attnlab::AttnError>, Vec<f32>) {
    let shape = shape_of([1, 2, 1, 3, 100, 16, 16]);
    let (q, k, v) = make_inputs(&shape, 1.0, 8);
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    let mut data = vec![0.25f32; 2 * 3 * 100];
    data[row * 100 + key] = bad;
    let bias = TensorView::new("bias", &data, [1, 2, 3, 100], Layout::Bhnd).unwrap();
    let p = AttnParams { bias: Some(bias), check_finite, ..AttnParams::causal() };
    let mut out = vec![f32::NAN; 2 * 3 * 16];
    let mut ov = TensorViewMut::new("out", &mut out, shape.out_dims(), Layout::Bhnd).unwrap();
    let r = Flash::default().forward(&inputs, &mut ov, None, &p, Par::Seq);
    (r, out)
}

#[test]
fn prefill_non_finite_bias_unread_or_propagated() {
    // causal, Nq = 3 over 100 keys: row 0 sees keys 0..=97; key 99 is
    // read by row 2 only. A NaN no row reads changes nothing.
    let (r, out) = with_bad_bias(f32::NAN, (0, 99), true);
    r.unwrap();
    let (r, clean) = with_bad_bias(0.25, (0, 99), true);
    r.unwrap();
    assert!(same_bits(&out, &clean));
    // check_finite off: the row that reads it is NaN, the others right
    // (recomputed exactly, so compared within f32 accuracy, not bits)
    for bad in [f32::NAN, f32::INFINITY] {
        let (r, out) = with_bad_bias(bad, (1, 40), false);
        r.unwrap();
        for (i, row) in out.chunks(16).enumerate() {
            if i == 1 {
                assert!(row.iter().all(|x| x.is_nan()), "{bad}: row 1 {row:?}");
                continue;
            }
            for (a, b) in row.iter().zip(&clean[i * 16..(i + 1) * 16]) {
                assert!((a - b).abs() <= 1e-5, "{bad}: row {i}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn prefill_bias_near_f32_max_is_exact() {
    // a bias of ±3e38 on key 40 of row (0, 1): finite, but ·log2 e
    // overflows f32 in the kernel's units; the f64 definition gives the
    // row to key 40 (+3e38), or with a softcap c gives key 40 the score
    // −c (−3e38), which still weighs e^−c: never a masked key
    let shape = shape_of([1, 2, 1, 3, 100, 16, 16]);
    let (q, k, v) = make_inputs(&shape, 1.0, 8);
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    for (x, softcap) in [(3e38f32, None), (3e38, Some(2.0)), (-3e38, Some(2.0)), (-3e38, None)] {
        let mut data = vec![0.25f32; 2 * 3 * 100];
        data[100 + 40] = x;
        let bias = TensorView::new("bias", &data, [1, 2, 3, 100], Layout::Bhnd).unwrap();
        let p = AttnParams { softcap, ..with_bias(AttnParams::causal(), bias) };
        let mut out = vec![f32::NAN; 2 * 3 * 16];
        let mut lse = vec![f32::NAN; 2 * 3];
        let mut ov = TensorViewMut::new("out", &mut out, shape.out_dims(), Layout::Bhnd).unwrap();
        Flash::default().forward(&inputs, &mut ov, Some(&mut lse), &p, Par::Seq).unwrap();
        let r = reference(&inputs, &p);
        for (i, (a, b)) in out.iter().zip(&r.out).enumerate() {
            assert!((*a as f64 - b).abs() < 1e-5, "{x} {softcap:?}: out[{i}] {a} vs {b}");
        }
        for (i, (a, b)) in lse.iter().zip(&r.lse).enumerate() {
            let tol = 1e-5 * (1.0 + b.abs());
            assert!((*a as f64 - b).abs() <= tol, "{x} {softcap:?}: lse[{i}] {a} vs {b}");
        }
        if softcap.is_none() && x > 0.0 {
            assert_eq!(&out[16..32], &v[40 * 16..41 * 16]);
        }
    }
}

#[test]
fn prefill_non_finite_bias_read_is_named() {
    for bad in [f32::NAN, f32::INFINITY] {
        let (r, _) = with_bad_bias(bad, (1, 40), true);
        let e = r.unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("bias: non-finite value {bad} at flat index 140")),
            "{e}"
        );
    }
}

/// Decode time of each modifier against the plain call, side by side in
/// one run (the machine is shared and noisy): L = 32768, Hq 32, Hkv 8,
/// d 128, f32 cache, 2 threads. Each round runs every variant once, in a
/// rotating order; reported: the median time of each, and the median over
/// rounds of its time over the plain call's in the same round (paired, so
/// slow phases of the machine cancel), and the ratio of the fastest calls. `ATTN_OVERHEAD_L` and
/// `ATTN_OVERHEAD_ROUNDS` (default 21) override L and the rounds.
#[test]
#[ignore = "timing: cargo test --release -p attnlab --test tests overhead -- --ignored --nocapture"]
fn overhead_of_each_modifier() {
    use attnlab::flash::{KvCache, decode::decode_in, decode::workspace};
    use std::time::Instant;
    let env =
        |name: &str, default: usize| std::env::var(name).map_or(default, |x| x.parse().unwrap());
    let (len, rounds) = (env("ATTN_OVERHEAD_L", 32768), env("ATTN_OVERHEAD_ROUNDS", 21));
    let (hq, hkv, d) = (32, 8, 128);
    let mut cache = KvCache::<f32>::new(1, hkv, len, d, d).unwrap();
    let mut g = rng(1);
    let kv = random(hkv * len * d, 1.0, &mut g);
    cache.append(0, &kv, &kv).unwrap();
    let qs = cache.query_shape(hq, 1).unwrap();
    let q = random(hq * d, 1.0, &mut g);
    let par = Par::rayon(2).unwrap();
    let mut ws = workspace(&qs, par).unwrap();
    let (mut out, mut lse) = (vec![0f32; hq * d], vec![0f32; hq]);
    let sinks = spread(hq, -1.0, 1.0);
    let variants = [
        ("plain", AttnParams::causal()),
        ("softcap 50", mods(Mask::Causal, Some(50.0), None, None)),
        ("alibi", mods(Mask::Causal, None, Some(Alibi::Default), None)),
        ("sinks", mods(Mask::Causal, None, None, Some(&sinks))),
        ("all three", mods(Mask::Causal, Some(50.0), Some(Alibi::Default), Some(&sinks))),
    ];
    let n = variants.len();
    let mut times = vec![vec![]; n];
    for round in 0..rounds + 2 {
        for i in 0..n {
            let v = (i + round) % n;
            let t = Instant::now();
            decode_in(&cache, &qs, &q, &mut out, Some(&mut lse), &variants[v].1, &mut ws).unwrap();
            if round >= 2 {
                times[v].push(t.elapsed().as_secs_f64());
            }
        }
    }
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    println!("decode L {len} Hq {hq} Hkv {hkv} d {d} f32 cache, 2 threads, {rounds} rounds");
    let min = |t: &[f64]| t.iter().copied().fold(f64::INFINITY, f64::min);
    for (v, (name, _)) in variants.iter().enumerate() {
        let paired = times[v].iter().zip(&times[0]).map(|(a, b)| a / b).collect();
        let (m, r) = (median(times[v].clone()), median(paired));
        let fastest = min(&times[v]) / min(&times[0]);
        println!(
            "{name:>10}: median {:7.3} ms, paired ratio {r:.3}, min {:7.3} ms, ratio of mins {fastest:.3}",
            m * 1e3,
            min(&times[v]) * 1e3
        );
    }
}
