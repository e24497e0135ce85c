//! Incremental decoding: a prompt prefilled into a KV cache and the
//! following tokens stepped one (or a few) at a time give the causal
//! forward over the whole sequence; a failing step changes nothing in the
//! cache.

use crate::common::*;
use attn_core::{AttnError, AttnParams, Layout, Par, TensorView, f16};
use attn_flash::{KvCache, KvElement};
use attn_layer::{Init, LayerConfig, MultiHeadAttention, Tokens};

/// Tokens `from..to` of every sequence of `x` (`[B, N, dm]`).
fn slice(x: &[f32], batch: usize, n: usize, dm: usize, from: usize, to: usize) -> Vec<f32> {
    (0..batch).flat_map(|b| x[(b * n + from) * dm..(b * n + to) * dm].to_vec()).collect()
}

/// Prefills `prompt` tokens, then steps the rest in `chunks`, and checks
/// the outputs against the f32 causal forward and the f64 reference, with
/// `u` the cache's unit roundoff (see `common::tol_y`).
fn prefill_then_step<T: KvElement>(
    config: LayerConfig,
    batch: usize,
    prompt: usize,
    chunks: &[usize],
    u: f64,
    seed: u64,
) {
    let (layer, r) = layers(config, Init::KaimingUniform, seed);
    let dm = config.d_model;
    let n = prompt + chunks.iter().sum::<usize>();
    let x = values(batch * n * dm, 2.0, seed + 1);
    let p = AttnParams::causal();
    let mut cache = layer.kv_cache::<T>(batch, n + 3).unwrap();
    let mut y = vec![f32::NAN; batch * n * dm];
    let mut at = 0;
    for (i, len) in std::iter::once(prompt).chain(chunks.iter().copied()).enumerate() {
        let xs = slice(&x, batch, n, dm, at, at + len);
        let xs = Tokens::new("x", &xs, [batch, len, dm]).unwrap();
        let ys = if i == 0 {
            layer.prefill(&mut cache, &xs, &p, Par::Seq).unwrap()
        } else {
            layer.step(&mut cache, &xs, &p, Par::rayon(2).unwrap()).unwrap()
        };
        for b in 0..batch {
            let dst = &mut y[(b * n + at) * dm..(b * n + at + len) * dm];
            dst.copy_from_slice(&ys[b * len * dm..(b + 1) * len * dm]);
        }
        at += len;
        assert_eq!(cache.lens(), vec![at; batch]);
    }
    let t = r.forward(&wide(&x), &wide(&x), batch, &p);
    let tol = tol_y(&r, &t, &p, u);
    let what = format!("{config:?} {} cache, prompt {prompt}, steps {chunks:?}", T::NAME);
    assert_close(&what, &y, &t.y, tol);
    // and the f32 layer's own causal forward, within the same tolerance
    let xt = Tokens::new("x", &x, [batch, n, dm]).unwrap();
    let full = layer.forward(&xt, &xt, &p, Par::Seq).unwrap();
    let diff: Vec<f64> = full.iter().zip(&y).map(|(a, b)| (a - b) as f64).collect();
    assert_close(&format!("{what} vs forward"), &vec![0f32; diff.len()], &diff, tol);
}

#[test]
fn prefill_and_single_steps_equal_the_causal_forward() {
    let gqa = LayerConfig::new(32, 4, 2, 8).with_bias(true);
    prefill_then_step::<f32>(gqa, 2, 20, &[1; 6], 0.0, 1);
    let mqa = LayerConfig::new(24, 6, 1, 4).with_v_dim(6);
    prefill_then_step::<f32>(mqa, 3, 5, &[1; 4], 0.0, 2);
    let mha = LayerConfig::new(16, 2, 2, 8).with_bias(true);
    prefill_then_step::<f32>(mha, 1, 1, &[1; 8], 0.0, 3);
}

#[test]
fn chunked_steps_and_half_precision_caches() {
    let gqa = LayerConfig::new(32, 4, 2, 8).with_bias(true);
    prefill_then_step::<f32>(gqa, 2, 7, &[3, 1, 4, 2], 0.0, 4);
    // f16 stores K, V rounded: unit roundoff 2^-11.
    prefill_then_step::<f16>(gqa, 2, 18, &[1, 1, 2], 2f64.powi(-11), 5);
    // a prompt long enough for the tiled kernel, then steps over it
    prefill_then_step::<f32>(gqa, 1, 40, &[1, 1], 0.0, 6);
}

/// The cache's visible state: lengths and every stored row, widened.
fn state<T: KvElement>(c: &KvCache<T>) -> (Vec<usize>, Vec<f32>) {
    let mut rows = Vec::new();
    for b in 0..c.batch() {
        for g in 0..c.kv_heads() {
            for j in 0..c.lens()[b] {
                let mut k = vec![0f32; c.head_dim()];
                T::widen(c.k_row(b, g, j), &mut k);
                let mut v = vec![0f32; c.v_dim()];
                T::widen(c.v_row(b, g, j), &mut v);
                rows.extend(k.into_iter().chain(v));
            }
        }
    }
    (c.lens().to_vec(), rows)
}

/// A layer and a ragged cache: entry 0 holds 8 of 10 positions, entry 1
/// holds 2 (so a 3-token step fits entry 1 but not entry 0), with seeded
/// K/V rows appended directly.
fn ragged<T: KvElement>() -> (MultiHeadAttention, KvCache<T>) {
    let c = LayerConfig::new(16, 4, 2, 4).with_bias(true);
    let layer = MultiHeadAttention::init(c, Init::KaimingUniform, 7).unwrap();
    let mut cache = layer.kv_cache::<T>(2, 10).unwrap();
    for (b, n) in [(0, 8), (1, 2)] {
        let k = values(2 * n * 4, 1.0, 70 + b as u64);
        let v = values(2 * n * 4, 1.0, 80 + b as u64);
        cache.append(b, &k, &v).unwrap();
    }
    (layer, cache)
}

/// A failing step leaves `cache` as it was, and the next good step gives
/// the same bits as on an untouched copy.
fn fails_atomically<T: KvElement>(
    layer: &MultiHeadAttention,
    cache: &mut KvCache<T>,
    x: &[f32],
    n: usize,
    params: &AttnParams,
) -> AttnError {
    let before = cache.clone();
    let xt = Tokens::new("x", x, [2, n, 16]).unwrap();
    let e = layer.step(cache, &xt, params, Par::Seq).unwrap_err();
    assert_eq!(state(cache), state(&before), "{e}");
    let good = values(2 * 16, 1.0, 99);
    let good = Tokens::new("x", &good, [2, 1, 16]).unwrap();
    let (mut after, mut untouched) = (cache.clone(), before);
    let a = layer.step(&mut after, &good, &AttnParams::causal(), Par::Seq).unwrap();
    let b = layer.step(&mut untouched, &good, &AttnParams::causal(), Par::Seq).unwrap();
    assert_eq!(a, b);
    assert_eq!(state(&after), state(&untouched));
    e
}

#[test]
fn a_failing_step_changes_nothing() {
    let (layer, mut cache) = ragged::<f32>();
    let causal = AttnParams::causal();
    // entry 0 is full for 3 more tokens; entry 1 is not
    let x = values(2 * 3 * 16, 1.0, 1);
    let e = fails_atomically(&layer, &mut cache, &x, 3, &causal);
    assert!(e.to_string().contains("batch entry 0 holds 8 of 10"), "{e}");

    // a NaN in entry 1's token, not checked at the input: its K is named
    let mut x = values(2 * 16, 1.0, 2);
    x[16 + 3] = f32::NAN;
    let unchecked = AttnParams { check_finite: false, ..causal };
    let e = fails_atomically(&layer, &mut cache, &x, 1, &unchecked);
    assert!(matches!(e, AttnError::NonFinite { tensor: "k", .. }), "{e}");
    // ... and checked at the input: x is named
    let e = fails_atomically(&layer, &mut cache, &x, 1, &causal);
    assert!(matches!(e, AttnError::NonFinite { tensor: "x", index: 19, .. }), "{e}");

    // invalid parameters, and a bias (prefill only)
    let x = values(2 * 16, 1.0, 3);
    let bad = AttnParams { softcap: Some(-1.0), ..causal };
    let e = fails_atomically(&layer, &mut cache, &x, 1, &bad);
    assert!(e.to_string().starts_with("softcap:"), "{e}");
    let bias = vec![0f32; 2 * 4 * 9];
    let bias = TensorView::new("bias", &bias, [2, 4, 1, 9], Layout::Bhnd).unwrap();
    let e = fails_atomically(&layer, &mut cache, &x, 1, &AttnParams { bias: Some(bias), ..causal });
    assert!(matches!(e, AttnError::Unsupported { .. }), "{e}");
}

#[test]
fn a_value_the_cache_cannot_store_changes_nothing() {
    // f16 holds up to 65504: entry 1's huge token overflows its K or V
    // after entry 0's (fine) token would have been appended.
    let (layer, mut cache) = ragged::<f16>();
    let mut x = values(2 * 16, 1.0, 4);
    x[16..].iter_mut().for_each(|v| *v *= 1e6);
    let e = fails_atomically(&layer, &mut cache, &x, 1, &AttnParams::causal());
    assert!(e.to_string().contains("overflows the cache's f16 storage"), "{e}");
}

#[test]
fn prefill_needs_an_empty_cache() {
    let (layer, mut cache) = ragged::<f32>();
    let x = values(2 * 16, 1.0, 5);
    let x = Tokens::new("x", &x, [2, 1, 16]).unwrap();
    let e = layer.prefill(&mut cache, &x, &AttnParams::causal(), Par::Seq).unwrap_err();
    assert!(e.to_string().contains("prefill needs an empty cache"), "{e}");
    assert_eq!(cache.lens(), [8, 2]);
}
