//! Saturation statistics on flash's split-KV path (at most
//! `SPLIT_KV_MAX_Q` queries per head): decode over a `KvCache` of every
//! storage type and calls over plain K/V, against the f64 oracle's, for
//! every grouping, mask and modifier, with fully masked and single-key
//! rows, bitwise identical for any thread count.
//!
//! Tolerance, per row, from the oracle's f64 scores `s_k` and
//! probabilities `p_k` (the sink one more outcome): the kernel's score of
//! key `k` is off by at most `δ_k = 32·ε·L_k`, with `L_k = |scale|·Σ_c
//! |q_c·k_c| + |bias_k| + slope·|diag − k|` the magnitude its f32 sum and
//! additions pass through (the softcap has slope ≤ 1: it never enlarges
//! an error; the sink's `δ = 32·ε·|sink|`), as in `common::tolerance`.
//! Since `∂H/∂s_k = −p_k·(s_k − E_p s)`, the entropy moves by at most
//! `Σ_k p_k·|s_k − E_p s|·δ_k`, and each `p_k` by at most
//! `p_k·(δ_k + Σ_j p_j·δ_j)`; twice these (second order, the rounding of
//! the row's `log2` and of the merge) plus `1e-5` relative for the f32
//! sums and the fast `exp2` (~3e-7 per weight) are the tolerances. Rows
//! with no key left are exact: `(max_p, H) = (0, 0)`, or `(1, 0)` with a
//! sink.

use crate::common::*;
use crate::decode::filled;
use attnlab::flash::{
    KvElement, Path, Q8_0, SPLIT_KV_MAX_Q, decode, decode_in_with_stats, decode_with_stats,
};
use attnlab::naive::oracle_stats::row_stats;
use attnlab::naive::{RowAt, reference_row};
use attnlab::{
    Alibi, AttentionKernel, AttnInputs, AttnParams, CheckedCall, Flash, Layout, Mask, Par,
    ScoreMods, StatsMut, TensorView, TensorViewMut, bf16, f16,
};
use proptest::prelude::*;

/// The sizes of a call: `(B, Hq, Hkv, nq, d, dv)`.
type Dims = (usize, usize, usize, usize, usize, usize);

/// Row access of a call's inputs as f32: `q(b, h, t)`, `k(b, g, j)`,
/// `v(b, g, j)`, and each batch entry's number of keys.
struct Rows<'a> {
    q: &'a dyn Fn(usize, usize, usize) -> Vec<f32>,
    k: &'a dyn Fn(usize, usize, usize) -> Vec<f32>,
    v: &'a dyn Fn(usize, usize, usize) -> Vec<f32>,
    lens: &'a [usize],
}

/// The oracle's statistics of every row (`[B, Hq, nq]`) with their
/// tolerances (module docs), and whether the row has no key left.
struct Want {
    max_p: Vec<f64>,
    entropy: Vec<f64>,
    tol_p: Vec<f64>,
    tol_h: Vec<f64>,
    empty: Vec<bool>,
}

fn want(dims: Dims, rows: &Rows<'_>, params: &AttnParams) -> Want {
    let (bsz, hq, hkv, nq, d, dv) = dims;
    let group = hq / hkv;
    let mods = ScoreMods::new(params, hq);
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (d as f64).sqrt());
    let eps32 = 32.0 * f32::EPSILON as f64;
    let mut w =
        Want { max_p: vec![], entropy: vec![], tol_p: vec![], tol_h: vec![], empty: vec![] };
    let (mut scores, mut o) = (Vec::new(), vec![0f64; dv]);
    for b in 0..bsz {
        let len = rows.lens[b];
        for h in 0..hq {
            let g = h / group;
            let (ks, vs): (Vec<_>, Vec<_>) =
                (0..len).map(|j| ((rows.k)(b, g, j), (rows.v)(b, g, j))).unzip();
            for t in 0..nq {
                let keys = params.mask.key_range(t, nq, len);
                let at = RowAt::new(&mods, b, h, t, nq, len);
                let q = (rows.q)(b, h, t);
                let lse = reference_row(
                    &q,
                    keys.clone(),
                    scale,
                    at,
                    |j| &ks[j][..],
                    |j| &vs[j][..],
                    &mut scores,
                    &mut o,
                );
                let sink = mods.sink(h).map(f64::from);
                let (p, ent) = row_stats(&scores, lse, sink);
                // (p_k, s_k, δ_k) of every outcome, the sink included
                let mut terms: Vec<(f64, f64, f64)> =
                    sink.map(|s| ((s - lse).exp(), s, eps32 * s.abs())).into_iter().collect();
                for (j, &s) in keys.zip(&scores) {
                    if s == f64::NEG_INFINITY {
                        continue;
                    }
                    let qk: f64 =
                        q.iter().zip(&ks[j]).map(|(a, c)| (*a as f64 * *c as f64).abs()).sum();
                    let bias = mods.bias_row(b, h, t).map_or(0.0, |x| (x[j] as f64).abs());
                    let alibi =
                        mods.slope(h).map_or(0.0, |x| x as f64 * at.diag.abs_diff(j as i64) as f64);
                    terms.push(((s - lse).exp(), s, eps32 * (qk * scale.abs() + bias + alibi)));
                }
                let mean: f64 = terms.iter().map(|(p, s, _)| p * s).sum();
                let spread: f64 = terms.iter().map(|(p, s, d)| p * (s - mean).abs() * d).sum();
                let pd: f64 = terms.iter().map(|(p, _, d)| p * d).sum();
                let dp = terms.iter().map(|(p, _, d)| p * (d + pd)).fold(0.0, f64::max);
                w.max_p.push(p);
                w.entropy.push(ent);
                w.tol_p.push(1e-5 * p + 2.0 * dp);
                w.tol_h.push(1e-5 * (1.0 + ent) + 2.0 * spread);
                w.empty.push(scores.iter().all(|s| *s == f64::NEG_INFINITY));
            }
        }
    }
    w
}

/// Asserts the statistics (`[B, Hq, nq]`) match `w`, naming the worst row
/// relative to its tolerance.
fn assert_stats(what: &str, (p, h): (&[f32], &[f32]), w: &Want, sinks: bool) {
    let mut worst = (0f64, String::new());
    for r in 0..w.max_p.len() {
        if w.empty[r] {
            let exact = if sinks { (1.0, 0.0) } else { (0.0, 0.0) };
            assert_eq!((p[r], h[r]), exact, "{what}: row {r} has no key");
            continue;
        }
        for (got, want, tol, name) in
            [(p[r], w.max_p[r], w.tol_p[r], "max_p"), (h[r], w.entropy[r], w.tol_h[r], "entropy")]
        {
            let err = (got as f64 - want).abs();
            let ratio = if err.is_nan() { f64::INFINITY } else { err / tol };
            if ratio > worst.0 || ratio.is_infinite() && worst.0.is_finite() {
                let at =
                    format!("{name}[{r}] = {got}, oracle {want}: |err| {err:.3e}, tol {tol:.3e}");
                worst = (ratio, at);
            }
        }
    }
    assert!(worst.0 <= 1.0, "{what}: {}", worst.1);
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Decode with statistics over a ragged cache of `T`, on 1 and 2 threads
/// (identical bits, and the output of a plain decode), against the oracle
/// over the stored values.
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
    let n = bsz * hq * nq;
    let run = |par| {
        let (mut out, mut lse) = (vec![f32::NAN; n * dv], vec![f32::NAN; n]);
        let (mut p, mut h) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        let st = StatsMut { max_p: &mut p, entropy: &mut h };
        decode_with_stats(&cache, &qs, &q, &mut out, Some(&mut lse), st, params, par).unwrap();
        (out, lse, p, h)
    };
    let (out, lse, p, h) = run(Par::Seq);
    let two = run(Par::rayon(2).unwrap());
    let what = format!(
        "decode {} lens {lens:?} hq {hq} hkv {hkv} nq {nq} d {d} dv {dv} amp {amp} {:?} \
         softcap {:?} alibi {:?} sinks {:?}",
        T::NAME,
        params.mask,
        params.softcap,
        params.alibi,
        params.sinks.map(|s| s[0]),
    );
    assert!(same_bits(&p, &two.2) && same_bits(&h, &two.3), "{what}: 1 and 2 threads differ");
    let (mut plain, mut plain_lse) = (vec![f32::NAN; n * dv], vec![f32::NAN; n]);
    decode(&cache, &qs, &q, &mut plain, Some(&mut plain_lse), params, Par::Seq).unwrap();
    assert!(same_bits(&out, &plain) && same_bits(&lse, &plain_lse), "{what}: stats change out");
    let qr = |b: usize, h: usize, t: usize| q[((b * hq + h) * nq + t) * d..][..d].to_vec();
    let kr = |b: usize, g: usize, j: usize| stored[b].0[(g * lens[b] + j) * d..][..d].to_vec();
    let vr = |b: usize, g: usize, j: usize| stored[b].1[(g * lens[b] + j) * dv..][..dv].to_vec();
    let rows = Rows { q: &qr, k: &kr, v: &vr, lens };
    let w = want((bsz, hq, hkv, nq, d, dv), &rows, params);
    assert_stats(&what, (&p, &h), &w, params.sinks.is_some());
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

/// No modifier, each alone, then combined (`sinks` and `slopes` one per
/// query head).
fn sets<'a>(mask: Mask, sinks: &'a [f32], slopes: &'a [f32]) -> Vec<AttnParams<'a>> {
    vec![
        mods(mask, None, None, None),
        mods(mask, Some(5.0), None, None),
        mods(mask, None, Some(Alibi::Default), None),
        mods(mask, None, Some(Alibi::Slopes(slopes)), None),
        mods(mask, None, None, Some(sinks)),
        mods(mask, Some(30.0), Some(Alibi::Default), Some(sinks)),
    ]
}

#[test]
fn decode_stats_every_grouping_dtype_mask_and_modifier() {
    let masks = [Mask::Causal, Mask::None, Mask::Window { left: Some(100), right: Some(0) }];
    for (i, (hq, hkv)) in [(4, 4), (8, 2), (6, 1)].into_iter().enumerate() {
        let sinks = spread(hq, -1.0, 3.0);
        let slopes = spread(hq, 0.5, 0.002);
        for (m, mask) in masks.into_iter().enumerate() {
            for (k, p) in sets(mask, &sinks, &slopes).iter().enumerate() {
                let seed = (100 * i + 10 * m + k) as u64;
                // logits of a few units, several chunks (CHUNK = 512)
                check_decode::<f32>(&[1100], (hq, hkv, 1), (64, 64), p, 3.0, seed);
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
fn decode_stats_ragged_up_to_16_queries_with_masked_and_single_key_rows() {
    let (hq, hkv) = (4, 2);
    let sinks = spread(hq, 2.0, -2.0);
    let slopes = spread(hq, 0.3, 0.01);
    for nq in [1, 2, 5, SPLIT_KV_MAX_Q] {
        for (k, p) in sets(Mask::Causal, &sinks, &slopes).iter().enumerate() {
            let seed = (nq * 10 + k) as u64;
            let lens = [0, 1, 17, 513, 1030];
            check_decode::<f32>(&lens, (hq, hkv, nq), (16, 24), p, 2.0, seed);
            // peaked rows: logits of tens of units
            check_decode::<f16>(&lens, (hq, hkv, nq), (32, 32), p, 12.0, seed);
        }
    }
    // more queries than positions: the first rows see nothing
    for mask in [Mask::Causal, Mask::Window { left: Some(2), right: Some(1) }] {
        for p in sets(mask, &sinks, &slopes) {
            check_decode::<f32>(&[3, 0, 9], (hq, hkv, 12), (8, 8), &p, 2.0, 5);
            check_decode::<Q8_0>(&[40, 6], (hq, hkv, 16), (32, 16), &p, 2.0, 6);
        }
    }
}

#[test]
fn decode_stats_of_empty_and_single_key_rows_are_exact() {
    // batch entry 0 holds no key, entry 1 one key; one query per head
    let (cache, _) = filled::<f32>(&[0, 1], 2, 16, 16, 9);
    let qs = cache.query_shape(4, 1).unwrap();
    let q = random(2 * 4 * 16, 3.0, &mut rng(10));
    let sinks = [0.5f32, -2.0, 1e4, -1e4];
    for (params, empty, single) in [
        (AttnParams::causal(), (0.0, 0.0), [(1.0, 0.0); 4]),
        (AttnParams { softcap: Some(1.0), ..AttnParams::causal() }, (0.0, 0.0), [(1.0, 0.0); 4]),
        (AttnParams { sinks: Some(&sinks), ..AttnParams::causal() }, (1.0, 0.0), [(0.0, 0.0); 4]),
    ] {
        let (mut out, mut p, mut h) = (vec![f32::NAN; 8 * 16], vec![f32::NAN; 8], vec![0f32; 8]);
        let st = StatsMut { max_p: &mut p, entropy: &mut h };
        decode_with_stats(&cache, &qs, &q, &mut out, None, st, &params, Par::Seq).unwrap();
        for head in 0..4 {
            assert_eq!((p[head], h[head]), empty, "{params:?}: empty row {head}");
            if params.sinks.is_none() {
                assert_eq!((p[4 + head], h[4 + head]), single[head], "single-key row {head}");
            } else {
                // a key and a sink: two outcomes, H ≤ ln 2, no NaN
                assert!(p[4 + head] >= 0.5 && p[4 + head] <= 1.0, "{}", p[4 + head]);
                assert!(h[4 + head] >= 0.0 && h[4 + head] <= 2f32.ln() + 1e-6);
            }
        }
    }
}

#[test]
fn decode_stats_buffers_are_checked() {
    let (cache, _) = filled::<f32>(&[5], 1, 4, 4, 3);
    let qs = cache.query_shape(2, 1).unwrap();
    let (q, mut out) = (vec![0.5; 8], vec![0.0; 8]);
    let (mut p, mut h) = (vec![0f32; 1], vec![0f32; 2]);
    let st = StatsMut { max_p: &mut p, entropy: &mut h };
    let e = decode_with_stats(&cache, &qs, &q, &mut out, None, st, &AttnParams::causal(), Par::Seq)
        .unwrap_err();
    assert!(e.to_string().starts_with("max_p: "), "{e}");
    // on a caller's workspace, across appends: n equal keys, H = ln n
    let mut cache = attnlab::flash::KvCache::<f32>::new(1, 1, 1000, 4, 4).unwrap();
    let mut ws = attnlab::flash::decode::workspace(&qs, Par::Seq).unwrap();
    for step in 0..3 {
        cache.append(0, &vec![0.5; 300 * 4], &vec![1.0; 300 * 4]).unwrap();
        let qs = cache.query_shape(2, 1).unwrap();
        let (mut p, mut h) = (vec![0f32; 2], vec![0f32; 2]);
        let st = StatsMut { max_p: &mut p, entropy: &mut h };
        let pc = AttnParams::causal();
        decode_in_with_stats(&cache, &qs, &q, &mut out, None, st, &pc, &mut ws).unwrap();
        let n = 300.0 * (step + 1) as f64;
        for r in 0..2 {
            assert!((p[r] as f64 - 1.0 / n).abs() < 1e-5 / n, "{step}: {p:?}");
            assert!((h[r] as f64 - n.ln()).abs() < 1e-5 * n.ln(), "{step}: {h:?}");
        }
    }
}

#[test]
fn rows_recomputed_exactly_get_exact_stats() {
    // |q·k·scale| = 2e40 overflows f32: every row is recomputed in f64,
    // its statistics with it. 600 equal keys: max_p = 1/600, H = ln 600.
    let (n, d) = (600, 4);
    let big = vec![1e20f32; n * d];
    let (p_want, h_want) = (1.0 / n as f64, (n as f64).ln());
    let close = |p: &[f32], h: &[f32], what: &str| {
        for (p, h) in p.iter().zip(h) {
            let ok = (*p as f64 - p_want).abs() <= 1e-6 * p_want
                && (*h as f64 - h_want).abs() <= 1e-6 * h_want;
            assert!(ok, "{what}: max_p {p}, entropy {h}");
        }
    };
    let mut cache = attnlab::flash::KvCache::<f32>::new(1, 1, n, d, d).unwrap();
    cache.append(0, &big, &vec![1.0; n * d]).unwrap();
    let qs = cache.query_shape(2, 1).unwrap();
    let q = vec![1e20f32; 2 * d];
    let (mut out, mut p, mut h) = (vec![0f32; 2 * d], vec![0f32; 2], vec![0f32; 2]);
    let st = StatsMut { max_p: &mut p, entropy: &mut h };
    decode_with_stats(&cache, &qs, &q, &mut out, None, st, &AttnParams::causal(), Par::Seq)
        .unwrap();
    assert!(out.iter().all(|x| *x == 1.0), "{out:?}");
    close(&p, &h, "decode");
    // plain K/V: split-KV (nq = 2) and the tiled path (forced tiles)
    let shape = shape_of([1, 2, 1, 2, n, d, d]);
    let q = vec![1e20f32; 2 * 2 * d];
    let v = vec![1.0f32; n * d];
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &big, &v).unwrap();
    let (p, h) = views_stats(&inputs, &AttnParams::default(), Par::Seq);
    close(&p, &h, "split-KV");
    let tiled = Flash::with_tiles(attnlab::flash::TileConfig { br: 32, bc: 8 }).unwrap();
    let mut out = vec![0f32; 2 * 2 * d];
    let (mut p, mut h) = (vec![0f32; 4], vec![0f32; 4]);
    let mut view = TensorViewMut::new("out", &mut out, shape.out_dims(), Layout::Bhnd).unwrap();
    let params = AttnParams::default();
    let call = CheckedCall::new(&inputs, &mut view, None, &params, Par::Seq)
        .unwrap()
        .with_stats(StatsMut { max_p: &mut p, entropy: &mut h })
        .unwrap();
    tiled.run(call).unwrap();
    close(&p, &h, "tiled");
}

/// Statistics of a call over plain K/V on flash's default kernel, which
/// takes the split-KV path for at most `SPLIT_KV_MAX_Q` queries per head.
fn views_stats(
    inputs: &AttnInputs<'_, f32>,
    params: &AttnParams,
    par: Par,
) -> (Vec<f32>, Vec<f32>) {
    let shape = inputs.shape();
    assert_eq!(Flash::default().path(shape), Path::SplitKv);
    let mut out = vec![0f32; shape.out_dims().iter().product()];
    let (mut p, mut h) = (vec![f32::NAN; shape.lse_len()], vec![f32::NAN; shape.lse_len()]);
    let layout = inputs.q.layout();
    let mut view = TensorViewMut::new("out", &mut out, shape.out_dims(), layout).unwrap();
    let call = CheckedCall::new(inputs, &mut view, None, params, par)
        .unwrap()
        .with_stats(StatsMut { max_p: &mut p, entropy: &mut h })
        .unwrap();
    Flash::default().run(call).unwrap();
    (p, h)
}

/// Views-path statistics against the oracle, 1 and 2 threads.
fn check_views(what: &str, inputs: &AttnInputs<'_, f32>, params: &AttnParams) {
    let s = inputs.shape();
    let dims = (s.batch(), s.q_heads(), s.kv_heads(), s.q_len(), s.head_dim(), s.v_dim());
    let (p, h) = views_stats(inputs, params, Par::Seq);
    let two = views_stats(inputs, params, Par::rayon(2).unwrap());
    assert!(same_bits(&p, &two.0) && same_bits(&h, &two.1), "{what}: 1 and 2 threads differ");
    let (q, k, v) = (&inputs.q, &inputs.k, &inputs.v);
    let lens = vec![s.kv_len(); s.batch()];
    let qr = |b, h, t| q.row(b, h, t).to_vec();
    let kr = |b, g, j| k.row(b, g, j).to_vec();
    let vr = |b, g, j| v.row(b, g, j).to_vec();
    let rows = Rows { q: &qr, k: &kr, v: &vr, lens: &lens };
    let w = want(dims, &rows, params);
    assert_stats(what, (&p, &h), &w, params.sinks.is_some());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    /// Calls over plain K/V with at most 16 queries per head: any
    /// grouping, length (across chunk edges), mask, layout and modifier,
    /// the bias included.
    #[test]
    fn views_split_kv_stats_match_the_oracle(
        (b, hkv, grp, nq, nk) in (1usize..=2, 1usize..=2, 1usize..=4, 1usize..=SPLIT_KV_MAX_Q, 0usize..=1200),
        (d, dv) in (prop::sample::select(vec![8usize, 20, 64]), prop::sample::select(vec![8usize, 33, 64])),
        mask_kind in 0usize..3,
        which in 0u8..16,
        amp in prop_oneof![Just(0.3f32), Just(3.0f32), Just(12.0f32)],
        layout in prop_oneof![Just(Layout::Bhnd), Just(Layout::Bnhd)],
        seed in any::<u64>(),
    ) {
        let hq = hkv * grp;
        let shape = shape_of([b, hq, hkv, nq, nk, d, dv]);
        let (q, k, v) = make_inputs(&shape, amp, seed);
        let inputs = AttnInputs::from_slices(shape, layout, &q, &k, &v).unwrap();
        let mask = [Mask::None, Mask::Causal, Mask::Window { left: Some(300), right: Some(2) }][mask_kind];
        let sinks = spread(hq, -1.0, 2.5);
        let slopes = spread(hq, 0.2, 0.005);
        // a bias with a few −inf entries (keys it masks)
        let mut g = rng(seed ^ 1);
        let mut bias = random(nq * nk, 2.0, &mut g);
        bias.iter_mut().step_by(7).for_each(|x| *x = f32::NEG_INFINITY);
        let bview = TensorView::new("bias", &bias, [1, 1, nq, nk], Layout::Bhnd).unwrap();
        let params = AttnParams {
            softcap: (which & 1 != 0).then_some(4.0),
            alibi: (which & 2 != 0).then_some(if seed % 2 == 0 { Alibi::Default } else { Alibi::Slopes(&slopes) }),
            sinks: (which & 4 != 0).then_some(&sinks[..]),
            bias: (which & 8 != 0).then_some(bview),
            ..AttnParams::with_mask(mask)
        };
        check_views(&format!("{:?} {mask:?} which {which} amp {amp} {layout:?}", [b, hq, hkv, nq, nk, d, dv]), &inputs, &params);
    }
}

/// The cost of the statistics on the split-KV path: one decode step
/// (nq = 1) of 32 query heads over 8 K/V heads (GQA), d = 64, over an f32
/// and a q8_0 cache of 8192 positions, on 1 and 2 threads; calls on one
/// workspace alternate without and with statistics, 41 pairs: the medians
/// of each and of the pairs' ratios. `cargo test --release -p attnlab
/// --test tests stats_decode_overhead -- --ignored --nocapture`.
#[test]
#[ignore]
fn stats_decode_overhead() {
    fn case<T: KvElement>(par: Par) {
        let (hq, hkv, d, len) = (32, 8, 64, 8192);
        let mut cache = attnlab::flash::KvCache::<T>::new(1, hkv, len, d, d).unwrap();
        let kv = random(hkv * len * d, 1.0, &mut rng(1));
        cache.append(0, &kv, &kv).unwrap();
        let qs = cache.query_shape(hq, 1).unwrap();
        let q = random(hq * d, 1.0, &mut rng(2));
        let mut ws = attnlab::flash::decode::workspace(&qs, par).unwrap();
        let (mut out, mut p, mut h) = (vec![0f32; hq * d], vec![0f32; hq], vec![0f32; hq]);
        let params = AttnParams::causal();
        let mut time = |stats: bool| {
            let t = std::time::Instant::now();
            if stats {
                let st = StatsMut { max_p: &mut p, entropy: &mut h };
                decode_in_with_stats(&cache, &qs, &q, &mut out, None, st, &params, &mut ws)
            } else {
                attnlab::flash::decode_in(&cache, &qs, &q, &mut out, None, &params, &mut ws)
            }
            .unwrap();
            t.elapsed().as_secs_f64()
        };
        time(true);
        time(false);
        let (mut a, mut b, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..41 {
            let (x, y) = (time(false), time(true));
            a.push(x);
            b.push(y);
            r.push(y / x);
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{} cache, {} thread(s): without {:.3} ms, with statistics {:.3} ms (medians), \
             median of the pairs' ratios {:.3}",
            T::NAME,
            par.threads(),
            median(a) * 1e3,
            median(b) * 1e3,
            median(r)
        );
    }
    for par in [Par::Seq, Par::rayon(2).unwrap()] {
        case::<f32>(par);
        case::<Q8_0>(par);
    }
}
