//! The f64 reference layer itself: its attention equals the workspace's
//! oracle, and its gradient equals finite differences of its forward —
//! with every mask and score modifier — so the layer's tests rest on it.

use crate::common::*;
use attn_core::{Alibi, AttnInputs, AttnParams, Layout, Mask, TensorView};
use attn_layer::reference::attention_f64;
use attn_layer::{Init, LayerConfig, ReferenceLayer};

/// `[B, Hq, Hkv, Nq, Nk, d, dv]` problems of the tests below.
const SHAPES: [[usize; 7]; 4] =
    [[1, 2, 2, 5, 5, 4, 4], [2, 4, 2, 3, 7, 3, 5], [1, 3, 1, 6, 4, 8, 2], [2, 2, 1, 1, 9, 4, 4]];

#[test]
fn attention_equals_the_oracle_with_every_modifier() {
    for (n, [b, hq, hkv, nq, nk, d, dv]) in SHAPES.into_iter().enumerate() {
        let shape = LayerConfig::new(1, hq, hkv, d).with_v_dim(dv).attn_shape(b, nq, nk).unwrap();
        let seed = 10 + n as u64;
        let q = values(b * nq * hq * d, 2.0, seed);
        let k = values(b * nk * hkv * d, 2.0, seed + 100);
        let v = values(b * nk * hkv * dv, 1.0, seed + 200);
        let mut bias = values(hq * nq * nk, 1.0, seed + 300);
        bias[1] = f32::NEG_INFINITY; // a masked key
        let sinks = values(hq, 1.0, seed + 400);
        let bias_view = TensorView::new("bias", &bias, [1, hq, nq, nk], Layout::Bhnd).unwrap();
        let window = Mask::Window { left: Some(2), right: Some(1) };
        let all = AttnParams {
            mask: Mask::Causal,
            softcap: Some(1.5),
            alibi: Some(Alibi::Default),
            sinks: Some(&sinks),
            bias: Some(bias_view),
            ..Default::default()
        };
        for params in [
            AttnParams::default(),
            AttnParams::causal(),
            AttnParams::with_mask(window),
            AttnParams { softcap: Some(0.7), ..Default::default() },
            AttnParams { sinks: Some(&sinks), ..AttnParams::causal() },
            AttnParams { mask: window, ..all },
            all,
        ] {
            let inputs = AttnInputs::from_slices(shape, Layout::Bnhd, &q, &k, &v).unwrap();
            let want = attn_naive::reference(&inputs, &params);
            let (o, lse) = attention_f64(&shape, &wide(&q), &wide(&k), &wide(&v), &params);
            for bb in 0..b {
                for h in 0..hq {
                    for i in 0..nq {
                        let idx = (bb * hq + h) * nq + i;
                        let (l, lw) = (lse[idx], want.lse[idx]);
                        assert!(l == lw || (l - lw).abs() < 1e-12 * (1.0 + lw.abs()), "{l} {lw}");
                        for c in 0..dv {
                            let got = o[((bb * nq + i) * hq + h) * dv + c];
                            let w = want.out[idx * dv + c];
                            assert!((got - w).abs() < 1e-12, "{shape:?} {params:?}: {got} {w}");
                        }
                    }
                }
            }
        }
    }
}

/// The reference gradient against finite differences of the reference
/// forward, for every parameter and input (`h = 1e-6`; both are f64, so
/// they agree to ~1e-8 of the gradient's scale: the tolerance is 1e-6).
fn check_reference_grads(
    config: LayerConfig,
    batch: usize,
    nq: usize,
    nk: usize,
    params: &AttnParams,
    seed: u64,
) {
    let (_, r) = layers(config, Init::KaimingUniform, seed);
    let dm = config.d_model;
    let x_q = wide(&values(batch * nq * dm, 1.5, seed + 1));
    let x_kv = wide(&values(batch * nk * dm, 1.5, seed + 2));
    let t = r.forward(&x_q, &x_kv, batch, params);
    let g = wide(&values(t.y.len(), 1.0, seed + 3));
    let rg = r.backward(&t, &x_q, &x_kv, &g, params);
    let analytic = grads_of(&rg);
    let fd = finite_differences(&r, &x_q, &x_kv, batch, params, &g, 1e-6);
    for ((name, a), (_, f)) in analytic.iter().zip(&fd) {
        let scale = grad_scale(name, a, &rg);
        assert!(scale > 0.0, "{name}: all zero");
        if *name == "b_k" && params.softcap.is_none() && params.sinks.is_none() {
            // the softmax's invariance: exactly 0 up to rounding
            assert!(a.iter().all(|x| x.abs() <= 1e-12 * scale), "db_k = {a:?}");
        }
        for (i, (x, y)) in a.iter().zip(f).enumerate() {
            assert!(
                (x - y).abs() <= 1e-6 * scale,
                "{name}[{i}]: analytic {x}, fd {y} ({params:?})"
            );
        }
    }
}

#[test]
fn gradients_equal_finite_differences() {
    let gqa = LayerConfig::new(6, 4, 2, 3).with_v_dim(2).with_bias(true);
    check_reference_grads(gqa, 2, 3, 5, &AttnParams::default(), 1);
    check_reference_grads(gqa, 1, 4, 4, &AttnParams::causal(), 2);
    let mha = LayerConfig::new(5, 2, 2, 3);
    check_reference_grads(mha, 2, 5, 3, &AttnParams::causal(), 3);
    let mqa = LayerConfig::new(4, 3, 1, 2).with_bias(true);
    let window = Mask::Window { left: Some(1), right: Some(0) };
    check_reference_grads(mqa, 1, 4, 6, &AttnParams::with_mask(window), 4);
}

#[test]
fn gradients_with_modifiers_equal_finite_differences() {
    let config = LayerConfig::new(6, 4, 2, 3).with_v_dim(2).with_bias(true);
    let (nq, nk) = (3, 5);
    let mut bias = values(4 * nq * nk, 1.0, 7);
    bias[2] = f32::NEG_INFINITY;
    let bias_view = TensorView::new("bias", &bias, [1, 4, nq, nk], Layout::Bhnd).unwrap();
    let sinks = [0.5f32, -0.25, 1.0, 0.0];
    let slopes = [0.3f32, 0.1, 0.2, 0.05];
    let all = AttnParams {
        mask: Mask::Causal,
        softcap: Some(1.0),
        alibi: Some(Alibi::Slopes(&slopes)),
        sinks: Some(&sinks),
        bias: Some(bias_view),
        ..Default::default()
    };
    check_reference_grads(
        config,
        2,
        nq,
        nk,
        &AttnParams { softcap: Some(0.8), ..Default::default() },
        5,
    );
    check_reference_grads(
        config,
        2,
        nq,
        nk,
        &AttnParams { sinks: Some(&sinks), ..Default::default() },
        6,
    );
    check_reference_grads(config, 2, nq, nk, &all, 7);
}

#[test]
fn sink_gradient_equals_finite_differences() {
    // The sinks are f32 parameters: steps of 2^-12 are exact, truncation
    // ~h²/6·|f'''| ≈ 1e-8 of the gradient's scale; tolerance 1e-5.
    let config = LayerConfig::new(6, 4, 2, 3).with_bias(true);
    let (_, r) = layers(config, Init::KaimingUniform, 9);
    let (batch, nq, nk) = (2, 3, 4);
    let x_q = wide(&values(batch * nq * 6, 1.5, 91));
    let x_kv = wide(&values(batch * nk * 6, 1.5, 92));
    let sinks = [0.5f32, -0.25, 1.0, 0.0];
    let params = AttnParams { sinks: Some(&sinks), softcap: Some(2.0), ..AttnParams::causal() };
    let t = r.forward(&x_q, &x_kv, batch, &params);
    let g = wide(&values(t.y.len(), 1.0, 93));
    let ds = r.backward(&t, &x_q, &x_kv, &g, &params).dsinks.unwrap();
    let h = 1.0 / 4096.0;
    for (i, d) in ds.iter().enumerate() {
        let mut f = [0f64; 2];
        for (s, sign) in [1f32, -1.0].into_iter().enumerate() {
            let mut s2 = sinks;
            s2[i] += sign * h;
            f[s] = loss(&r, &x_q, &x_kv, batch, &AttnParams { sinks: Some(&s2), ..params }, &g);
        }
        let fd = (f[0] - f[1]) / (2.0 * h as f64);
        let scale = ds.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!((fd - d).abs() <= 1e-5 * scale, "dsinks[{i}]: {d} vs fd {fd}");
    }
}

#[test]
fn the_reference_layer_widens_the_layer_exactly() {
    let (layer, r) = layers(LayerConfig::new(8, 2, 1, 4).with_bias(true), Init::KaimingUniform, 3);
    let w = layer.weights();
    assert_eq!(r.w_q, wide(w.w_q.data()));
    assert_eq!(r.b_o.as_deref(), Some(&wide(w.b_o.as_deref().unwrap())[..]));
    let _: &ReferenceLayer = &r;
}
