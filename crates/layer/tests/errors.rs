//! Bad input is an error naming the tensor and the dimension: widths and
//! batches of `x`, weight shapes, missing or extra biases, non-finite
//! weights and inputs, `dy` and traces that do not fit, caches made for
//! another layer.

use crate::common::*;
use attn_core::{AttnError, AttnParams, Par};
use attn_layer::{Init, LayerConfig, Matrix, MultiHeadAttention, Tokens, Weights};

fn config() -> LayerConfig {
    LayerConfig::new(32, 4, 2, 8).with_v_dim(6).with_bias(true)
}

fn layer() -> MultiHeadAttention {
    MultiHeadAttention::init(config(), Init::KaimingUniform, 1).unwrap()
}

#[test]
fn inputs_of_the_wrong_width_or_batch() {
    let l = layer();
    let p = AttnParams::causal();
    let a = values(2 * 5 * 32, 1.0, 1);
    let b = values(2 * 5 * 31, 1.0, 2);
    let x = Tokens::new("x_q", &a, [2, 5, 32]).unwrap();
    let narrow = Tokens::new("x_kv", &b, [2, 5, 31]).unwrap();
    let e = l.forward(&narrow, &x, &p, Par::Seq).unwrap_err();
    assert_eq!(e.to_string(), "x_kv: expected 32 features (d_model), got 31");
    let e = l.forward(&x, &narrow, &p, Par::Seq).unwrap_err();
    assert_eq!(
        e,
        AttnError::Dim { tensor: "x_kv", dim: "features (d_model)", expected: 32, got: 31 }
    );
    let one = Tokens::new("x_kv", &a[..5 * 32], [1, 5, 32]).unwrap();
    let e = l.forward(&x, &one, &p, Par::Seq).unwrap_err();
    assert_eq!(e.to_string(), "x_kv: expected 2 batch entries, got 1");
    let e = Tokens::new("x_q", &a, [2, 6, 32]).unwrap_err();
    assert_eq!(e.to_string(), "x_q: buffer has 320 elements, expected 384 from its dimensions");
    let mut c = a.clone();
    c[7] = f32::INFINITY;
    let bad = Tokens::new("x_kv", &c, [2, 5, 32]).unwrap();
    let e = l.forward(&x, &bad, &p, Par::Seq).unwrap_err();
    assert!(matches!(e, AttnError::NonFinite { tensor: "x_kv", index: 7, .. }), "{e}");
    // invalid parameters are named too, before any work
    let e = l.forward(&x, &x, &AttnParams { softcap: Some(0.0), ..p }, Par::Seq).unwrap_err();
    assert!(e.to_string().starts_with("softcap:"), "{e}");
}

#[test]
fn weights_of_the_wrong_shape() {
    let c = config();
    let good = layer().into_weights();
    let with = |f: &dyn Fn(&mut Weights)| {
        let mut w = good.clone();
        f(&mut w);
        MultiHeadAttention::new(c, w).unwrap_err().to_string()
    };
    assert_eq!(
        with(&|w| w.w_v = Matrix::zeros(32, 16)),
        "w_v: expected 12 columns (kv_heads·v_dim), got 16"
    );
    assert_eq!(
        with(&|w| w.w_o = Matrix::zeros(32, 32)),
        "w_o: expected 24 rows (q_heads·v_dim), got 32"
    );
    assert_eq!(with(&|w| w.w_q = Matrix::zeros(31, 32)), "w_q: expected 32 rows (d_model), got 31");
    assert_eq!(
        with(&|w| w.b_k = Some(vec![0.0; 8])),
        "b_k: expected 16 entries (kv_heads·head_dim), got 8"
    );
    assert!(with(&|w| w.b_o = None).starts_with("b_o: missing"));
    let e = MultiHeadAttention::new(c.with_bias(false), good.clone()).unwrap_err();
    assert!(e.to_string().starts_with("b_q: given, but"), "{e}");
    let e = Matrix::new("w_k", 32, 16, vec![0.0; 500]).unwrap_err();
    assert_eq!(e.to_string(), "w_k: buffer has 500 elements, expected 512 from its dimensions");
    let e = MultiHeadAttention::init(LayerConfig::new(32, 4, 2, 0), Init::XavierUniform, 0);
    assert_eq!(e.unwrap_err(), AttnError::ZeroDim { dim: "head_dim" });
}

#[test]
fn non_finite_weights() {
    let good = layer().into_weights();
    let mut w = good.clone();
    w.w_k.data_mut()[5] = f32::NAN;
    let e = MultiHeadAttention::new(config(), w.clone()).unwrap_err();
    assert!(matches!(e, AttnError::NonFinite { tensor: "w_k", index: 5, .. }), "{e}");
    let mut w2 = good.clone();
    w2.b_o.as_mut().unwrap()[3] = f32::NEG_INFINITY;
    let e = MultiHeadAttention::new(config(), w2).unwrap_err();
    assert!(matches!(e, AttnError::NonFinite { tensor: "b_o", index: 3, .. }), "{e}");
    // set_weights keeps the old weights on error
    let mut l = layer();
    assert!(l.set_weights(w).is_err());
    assert_eq!(l.weights(), &good);
}

#[test]
fn backward_inputs_that_do_not_fit() {
    let l = layer();
    let p = AttnParams::causal();
    let a = values(2 * 5 * 32, 1.0, 1);
    let x = Tokens::new("x", &a, [2, 5, 32]).unwrap();
    let t = l.forward_train(&x, &x, &p, Par::Seq).unwrap();
    let dy = values(2 * 5 * 32, 1.0, 2);
    let e = l.backward(&t, &x, &x, &dy[1..], &p, Par::Seq).unwrap_err();
    assert_eq!(e.to_string(), "dy: buffer has 319 elements, expected 320 from its dimensions");
    let shorter = Tokens::new("x", &a[..2 * 4 * 32], [2, 4, 32]).unwrap();
    let e = l.backward(&t, &shorter, &shorter, &dy[..256], &p, Par::Seq).unwrap_err();
    assert!(e.to_string().starts_with("trace: made by a forward on"), "{e}");
    let mut bad = dy.clone();
    bad[9] = f32::NAN;
    let e = l.backward(&t, &x, &x, &bad, &p, Par::Seq).unwrap_err();
    assert!(matches!(e, AttnError::NonFinite { tensor: "dy", index: 9, .. }), "{e}");
    l.backward(&t, &x, &x, &dy, &p, Par::Seq).unwrap();
}

#[test]
fn a_cache_made_for_another_layer() {
    let l = layer();
    let p = AttnParams::causal();
    let a = values(2 * 32, 1.0, 1);
    let x = Tokens::new("x", &a, [2, 1, 32]).unwrap();
    let other = |c: LayerConfig| MultiHeadAttention::init(c, Init::XavierUniform, 2).unwrap();
    for (c, msg) in [
        (
            LayerConfig::new(32, 4, 4, 8).with_v_dim(6),
            "kv cache: expected 2 kv heads (made for another layer), got 4",
        ),
        (
            LayerConfig::new(32, 4, 2, 4).with_v_dim(6),
            "kv cache: expected 8 features (head_dim; made for another layer), got 4",
        ),
        (
            LayerConfig::new(32, 4, 2, 8),
            "kv cache: expected 6 features (v_dim; made for another layer), got 8",
        ),
    ] {
        let mut cache = other(c).kv_cache::<f32>(2, 8).unwrap();
        let e = l.step(&mut cache, &x, &p, Par::Seq).unwrap_err();
        assert_eq!(e.to_string(), msg);
        assert_eq!(cache.lens(), [0, 0]);
    }
    let mut cache = l.kv_cache::<f32>(3, 8).unwrap();
    let e = l.step(&mut cache, &x, &p, Par::Seq).unwrap_err();
    assert_eq!(e.to_string(), "x: expected 3 batch entries, got 2");
    let narrow = Tokens::new("x", &a[..62], [2, 1, 31]).unwrap();
    let e = l.step(&mut cache, &narrow, &p, Par::Seq).unwrap_err();
    assert_eq!(e.to_string(), "x: expected 32 features (d_model), got 31");
    assert_eq!(cache.lens(), [0, 0, 0]);
}
