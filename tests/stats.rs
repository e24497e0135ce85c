//! Saturation statistics (max probability, entropy) of the flash kernel's
//! tiled path (and split-KV for the short shapes; `stats_decode` has its
//! own tests) against the f64 oracle's, for every grouping, mask and
//! modifier, with fully masked and single-key rows.

use crate::common::*;
use attnlab::flash::TileConfig;
use attnlab::naive::reference_stats;
use attnlab::{
    Alibi, AttnInputs, AttnParams, Kernel, Layout, Mask, Options, Par, TensorView, attention_with,
    attention_with_stats,
};

/// Runs flash with statistics under forced tiles (the tiled path at any
/// Nq) and with the default kernel.
fn flash_stats(
    inputs: &AttnInputs<'_, f32>,
    params: &AttnParams,
    tiles: Option<TileConfig>,
) -> (Vec<f32>, Vec<f32>) {
    use attnlab::{AttentionKernel, CheckedCall, StatsMut, TensorViewMut};
    let shape = inputs.shape();
    let mut out = vec![0f32; shape.out_dims().iter().product()];
    let (mut p, mut h) = (vec![f32::NAN; shape.lse_len()], vec![f32::NAN; shape.lse_len()]);
    let mut view = TensorViewMut::new("out", &mut out, shape.out_dims(), Layout::Bhnd).unwrap();
    let stats = StatsMut { max_p: &mut p, entropy: &mut h };
    let call = CheckedCall::new(inputs, &mut view, None, params, Par::Seq)
        .unwrap()
        .with_stats(stats)
        .unwrap();
    match tiles {
        Some(t) => attnlab::Flash::with_tiles(t).unwrap().run(call).unwrap(),
        None => Kernel::Flash.run(call).unwrap(),
    }
    (p, h)
}

/// Compares against the oracle. The kernel's scores carry errors up to
/// `δ = tol.lse_abs` (the forward's model, `tests/common.rs`); they move
/// `H = lse − E_p[s]` by at most `δ·E_p|s − E_p s| ≤ 2·δ·L` (L the largest
/// |score|) and `ln max_p` by at most `2δ`. On top, 1e-5 relative for the
/// f32 sums.
fn check(what: &str, inputs: &AttnInputs<'_, f32>, params: &AttnParams) {
    let want = reference_stats(inputs, params);
    let tol = tolerance(inputs, params);
    let l = tol.lse_abs / (32.0 * f32::EPSILON as f64);
    // (the default kernel takes the split-KV path for Nq ≤ 16)
    for tiles in [None, Some(TileConfig { br: 32, bc: 8 }), Some(TileConfig { br: 64, bc: 24 })] {
        let (p, h) = flash_stats(inputs, params, tiles);
        for r in 0..p.len() {
            let (wp, wh) = (want.max_p[r], want.entropy[r]);
            let t = 1e-5 * (1.0 + wh) + tol.lse_abs * (1.0 + 2.0 * l);
            let tp = (1e-5 + 2.0 * tol.lse_abs) * wp;
            assert!(
                (p[r] as f64 - wp).abs() <= tp + 1e-7 && (h[r] as f64 - wh).abs() <= t,
                "{what} {tiles:?} row {r}: max_p {} vs {wp}, entropy {} vs {wh} (tol {t:.2e})",
                p[r],
                h[r]
            );
        }
    }
}

#[test]
fn stats_match_the_oracle_for_every_grouping_and_mask() {
    let shapes = [
        [1, 4, 4, 70, 70, 32, 32],
        [2, 6, 2, 45, 90, 16, 24],
        [1, 8, 1, 100, 37, 64, 64],
        [1, 2, 2, 5, 40, 8, 8],
    ];
    let masks = [Mask::None, Mask::Causal, Mask::Window { left: Some(10), right: Some(0) }];
    for (n, dims) in shapes.into_iter().enumerate() {
        let shape = shape_of(dims);
        for amp in [0.3f32, 3.0] {
            let (q, k, v) = make_inputs(&shape, amp, 10 + n as u64);
            let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
            for mask in masks {
                check(
                    &format!("{dims:?} {mask:?} amp {amp}"),
                    &inputs,
                    &AttnParams::with_mask(mask),
                );
            }
        }
    }
}

#[test]
fn stats_follow_the_modifiers() {
    let dims = [1, 4, 2, 60, 80, 32, 32];
    let shape = shape_of(dims);
    let (q, k, v) = make_inputs(&shape, 2.0, 21);
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    let sinks = [0.5f32, -1.0, 3.0, 1e4];
    let bias = random(60 * 80, 2.0, &mut rng(22));
    let bview = TensorView::new("bias", &bias, [1, 1, 60, 80], Layout::Bhnd).unwrap();
    let cases = [
        ("softcap", AttnParams { softcap: Some(2.0), ..AttnParams::causal() }),
        ("alibi", AttnParams { alibi: Some(Alibi::Default), ..AttnParams::causal() }),
        ("sinks", AttnParams { sinks: Some(&sinks), ..AttnParams::causal() }),
        ("bias", AttnParams { bias: Some(bview), ..AttnParams::causal() }),
    ];
    for (name, p) in cases {
        check(name, &inputs, &p);
    }
}

#[test]
fn masked_and_single_key_rows_have_defined_stats() {
    // Nq = 6 > Nk = 3, causal: rows 0..3 see nothing, row 3 one key.
    let shape = shape_of([1, 2, 1, 6, 3, 8, 8]);
    let (q, k, v) = make_inputs(&shape, 1.0, 30);
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    let t = Some(TileConfig { br: 32, bc: 8 });
    let (p, h) = flash_stats(&inputs, &AttnParams::causal(), t);
    for head in 0..2 {
        for i in 0..3 {
            assert_eq!((p[head * 6 + i], h[head * 6 + i]), (0.0, 0.0), "masked row {i}");
        }
        assert_eq!((p[head * 6 + 3], h[head * 6 + 3]), (1.0, 0.0), "single-key row");
    }
    // With sinks, a masked row puts all mass on its sink.
    let sinks = [0.0f32, 2.0];
    let (p, h) =
        flash_stats(&inputs, &AttnParams { sinks: Some(&sinks), ..AttnParams::causal() }, t);
    assert_eq!((p[0], h[0]), (1.0, 0.0));
    check(
        "sinks, masked rows",
        &inputs,
        &AttnParams { sinks: Some(&sinks), ..AttnParams::causal() },
    );
}

#[test]
fn the_facade_returns_output_and_stats_and_leaves_the_output_unchanged() {
    let shape = shape_of([1, 2, 2, 64, 64, 16, 16]);
    let (q, k, v) = make_inputs(&shape, 1.0, 40);
    let p = AttnParams::causal();
    let opts = Options { par: Par::Seq, ..Default::default() };
    let (o, stats) = attention_with_stats(&shape, &q, &k, &v, &p, &opts).unwrap();
    let plain = attention_with(&shape, &q, &k, &v, &p, &opts).unwrap();
    assert_eq!(o, plain, "statistics change the output");
    // Row 0 sees one key: support 1; the last row sees 64.
    let support = stats.support();
    assert!((support[0] - 1.0).abs() < 1e-6);
    assert!(support[63] > 1.0 && support[63] <= 64.0 + 1e-3);
}

/// The backward statistics of the oracle on rows whose values can be
/// worked out by hand: with two keys, `dS_1 = p_1·p_2·(dP_1 − dP_2) =
/// −dS_2`, so each row sends exactly half its mass off its argmax and both
/// keys receive the same; with one key `dS = p·(dP − D) = 0`.
#[test]
fn oracle_backward_stats_on_two_and_one_key_rows() {
    use attnlab::{
        BackwardInputs, BackwardKernel, BackwardStatsMut, CheckedBackward, GradsMut, Oracle,
    };
    for nk in [1usize, 2] {
        let shape = shape_of([1, 2, 1, 5, nk, 4, 4]);
        let (q, k, v) = make_inputs(&shape, 1.0, 50 + nk as u64);
        let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
        let fwd = attnlab::attention_with(
            &shape,
            &q,
            &k,
            &v,
            &AttnParams::default(),
            &Options { kernel: Kernel::Oracle, ..Default::default() },
        )
        .unwrap();
        let d_out = random(fwd.out.len(), 1.0, &mut rng(60));
        let o = TensorView::new("out", &fwd.out, shape.out_dims(), Layout::Bhnd).unwrap();
        let dov = TensorView::new("d_out", &d_out, shape.out_dims(), Layout::Bhnd).unwrap();
        let bi = BackwardInputs::new(inputs, o, &fwd.lse, dov).unwrap();
        let n = |d: [usize; 4]| d.iter().product::<usize>();
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; n(shape.q_dims())],
            vec![0f32; n(shape.k_dims())],
            vec![0f32; n(shape.v_dims())],
        );
        let mut grads =
            GradsMut::from_slices(&shape, Layout::Bhnd, &mut dq, &mut dk, &mut dv).unwrap();
        let (mut off, mut kg) = (vec![f32::NAN; shape.lse_len()], vec![f32::NAN; nk]);
        let params = AttnParams::default();
        let call = CheckedBackward::new(&bi, &mut grads, &params, Par::Seq)
            .unwrap()
            .with_stats(BackwardStatsMut { off_argmax: &mut off, key_grad: &mut kg })
            .unwrap();
        Oracle.run_backward(call).unwrap();
        if nk == 1 {
            assert!(off.iter().all(|x| *x == 0.0) && kg[0].abs() < 1e-7, "{off:?} {kg:?}");
        } else {
            assert!(off.iter().all(|x| (x - 0.5).abs() < 1e-6), "{off:?}");
            assert!((kg[0] - kg[1]).abs() <= 1e-6 * kg[0].abs() && kg[0] > 0.0, "{kg:?}");
        }
    }
}

/// The cost of the forward statistics (#14's target: at most 10% over the
/// plain flash forward at N = 4096, d = 64): causal, one thread, MHA with 8
/// heads; calls alternate without and with statistics, 21 pairs: the
/// medians of each and of the pairs' ratios. `cargo test --release -p
/// attnlab --test tests stats_forward_overhead -- --ignored --nocapture`.
#[test]
#[ignore]
fn stats_forward_overhead() {
    use attnlab::{CheckedCall, StatsMut, TensorViewMut};
    let shape = shape_of([1, 8, 8, 4096, 4096, 64, 64]);
    let (q, k, v) = make_inputs(&shape, 1.0, 1);
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    let params = AttnParams::causal();
    let mut out = vec![0f32; shape.out_dims().iter().product()];
    let (mut p, mut h) = (vec![0f32; shape.lse_len()], vec![0f32; shape.lse_len()]);
    let mut time = |stats: bool| {
        let mut view = TensorViewMut::new("out", &mut out, shape.out_dims(), Layout::Bhnd).unwrap();
        let call = CheckedCall::new(&inputs, &mut view, None, &params, Par::Seq).unwrap();
        let call = if stats {
            call.with_stats(StatsMut { max_p: &mut p, entropy: &mut h }).unwrap()
        } else {
            call
        };
        let t = std::time::Instant::now();
        Kernel::Flash.run(call).unwrap();
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
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b, r) = (median(a), median(b), median(r));
    println!(
        "without {:.1} ms, with statistics {:.1} ms (medians), median of the pairs' ratios {r:.3}",
        a * 1e3,
        b * 1e3
    );
}
