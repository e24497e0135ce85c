//! The layer's forward against the f64 reference layer (tolerance:
//! `common::tol_y`): self-attention with and without the causal mask,
//! cross-attention of different lengths, GQA and MQA, `dv ≠ d`, biases,
//! both initialisations, a window, score modifiers on the tiled path, and
//! identical bits for any thread count.

use crate::common::*;
use attn_core::{Alibi, AttnParams, Mask, Par};
use attn_layer::{Init, LayerConfig, Tokens};

/// Runs the layer and the reference on one problem (`nk = None`:
/// self-attention on the same tokens) and checks `Y`; returns the worst
/// error over the tolerance.
pub fn check(
    config: LayerConfig,
    init: Init,
    batch: usize,
    nq: usize,
    nk: Option<usize>,
    params: &AttnParams,
    seed: u64,
) -> f64 {
    let (layer, r) = layers(config, init, seed);
    let dm = config.d_model;
    let xq = values(batch * nq * dm, 2.0, seed + 1);
    let xkv = match nk {
        Some(nk) => values(batch * nk * dm, 2.0, seed + 2),
        None => xq.clone(),
    };
    let nk = nk.unwrap_or(nq);
    let x_q = Tokens::new("x_q", &xq, [batch, nq, dm]).unwrap();
    let x_kv = Tokens::new("x_kv", &xkv, [batch, nk, dm]).unwrap();
    let y = layer.forward(&x_q, &x_kv, params, Par::Seq).unwrap();
    let t = r.forward(&wide(&xq), &wide(&xkv), batch, params);
    let tol = tol_y(&r, &t, params, 0.0);
    let ymax = t.y.iter().fold(0f64, |m, x| m.max(x.abs()));
    // A worst-case bound on rounding (the observed errors are ~1e-3 of it),
    // still a small fraction of Y.
    assert!(tol < 2e-3 * ymax, "tolerance {tol:e} against |Y| {ymax:e}");
    let what = format!("{config:?} B={batch} Nq={nq} Nk={nk} {params:?}");
    let worst = assert_close(&what, &y, &t.y, tol);
    eprintln!("{what}: worst/tol {worst:.3e}, tol/|Y| {:.3e}", tol / ymax);
    // forward_train's Y is the same computation.
    let tr = layer.forward_train(&x_q, &x_kv, params, Par::Seq).unwrap();
    assert_eq!(tr.y, y);
    worst
}

#[test]
fn self_attention_mha() {
    let c = LayerConfig::new(32, 4, 4, 8);
    check(c, Init::XavierUniform, 2, 20, None, &AttnParams::default(), 1);
    check(c.with_bias(true), Init::KaimingUniform, 1, 33, None, &AttnParams::default(), 2);
}

#[test]
fn causal_self_attention() {
    let c = LayerConfig::new(32, 4, 4, 8).with_bias(true);
    check(c, Init::KaimingUniform, 2, 33, None, &AttnParams::causal(), 3);
    check(c, Init::XavierUniform, 1, 7, None, &AttnParams::causal(), 4);
}

#[test]
fn cross_attention_of_different_lengths() {
    let c = LayerConfig::new(32, 4, 2, 8).with_v_dim(12).with_bias(true);
    check(c, Init::KaimingUniform, 2, 7, Some(29), &AttnParams::default(), 5);
    check(c, Init::KaimingUniform, 2, 40, Some(19), &AttnParams::default(), 6);
    // bottom-right causal with Nq != Nk: the last query sees every key
    check(c, Init::XavierUniform, 1, 21, Some(35), &AttnParams::causal(), 7);
}

#[test]
fn gqa_and_mqa() {
    let gqa = LayerConfig::new(48, 6, 2, 8).with_bias(true);
    check(gqa, Init::KaimingUniform, 2, 40, None, &AttnParams::causal(), 8);
    let mqa = LayerConfig::new(24, 6, 1, 4).with_v_dim(6);
    check(mqa, Init::XavierUniform, 2, 18, None, &AttnParams::causal(), 9);
    // one query row per sequence (the split-KV path)
    check(mqa, Init::KaimingUniform, 3, 1, Some(50), &AttnParams::causal(), 10);
}

#[test]
fn a_window() {
    let c = LayerConfig::new(16, 2, 1, 8);
    let w = Mask::Window { left: Some(4), right: Some(0) };
    check(c, Init::KaimingUniform, 2, 30, None, &AttnParams::with_mask(w), 11);
}

#[test]
fn score_modifiers_on_the_tiled_path() {
    // Nq = 24 > SPLIT_KV_MAX_Q: the tiled kernel.
    let c = LayerConfig::new(32, 4, 2, 8).with_bias(true);
    let sinks = [0.5f32, -1.0, 0.25, 2.0];
    let p = AttnParams { softcap: Some(2.0), sinks: Some(&sinks), ..AttnParams::causal() };
    check(c, Init::KaimingUniform, 2, 24, None, &p, 12);
    let p = AttnParams { alibi: Some(Alibi::Default), ..p };
    check(c, Init::KaimingUniform, 1, 24, Some(30), &p, 13);
}

#[test]
fn identical_bits_for_any_thread_count() {
    // 2·150 = 300 rows: the projections split into blocks of 128+ rows.
    let c = LayerConfig::new(64, 4, 2, 16).with_bias(true);
    let layer = attn_layer::MultiHeadAttention::init(c, Init::KaimingUniform, 5).unwrap();
    let x = values(2 * 150 * 64, 1.0, 6);
    let x = Tokens::new("x", &x, [2, 150, 64]).unwrap();
    let p = AttnParams::causal();
    let want = layer.forward(&x, &x, &p, Par::Seq).unwrap();
    for par in [Par::rayon(2).unwrap(), Par::rayon(3).unwrap(), Par::Pool] {
        let y = layer.forward(&x, &x, &p, par).unwrap();
        assert!(y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{par:?}");
    }
}

#[test]
fn timed_calls_give_the_same_bits_and_split_their_time() {
    let c = LayerConfig::new(64, 8, 2, 8).with_bias(true);
    let (layer, _) = layers(c, Init::XavierUniform, 9);
    let x = values(2 * 40 * 64, 1.0, 10);
    let x = Tokens::new("x", &x, [2, 40, 64]).unwrap();
    let p = AttnParams::causal();
    for par in [Par::Seq, Par::rayon(2).unwrap()] {
        let wall = std::time::Instant::now();
        let (tr, t) = layer.forward_timed(&x, &x, &p, par).unwrap();
        let wall = wall.elapsed();
        assert_eq!(tr.y, layer.forward(&x, &x, &p, par).unwrap());
        assert!(
            t.projections > std::time::Duration::ZERO && t.attention > std::time::Duration::ZERO
        );
        assert!(t.projections + t.attention <= wall, "{t:?} > {wall:?}");
        let dy = values(tr.y.len(), 1.0, 11);
        let plain = layer.backward(&tr, &x, &x, &dy, &p, par).unwrap();
        let wall = std::time::Instant::now();
        let (g, t) = layer.backward_timed(&tr, &x, &x, &dy, &p, par).unwrap();
        let wall = wall.elapsed();
        assert_eq!(layer_grads_of(&g), layer_grads_of(&plain));
        assert!(
            t.projections > std::time::Duration::ZERO && t.attention > std::time::Duration::ZERO
        );
        assert!(t.projections + t.attention <= wall, "{t:?} > {wall:?}");
    }
}
