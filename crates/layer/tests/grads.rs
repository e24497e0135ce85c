//! The layer's gradients (`dX_q`, `dX_kv`, every `dW` and `db`) against
//! finite differences of the f64 layer on tiny shapes, and against the
//! f64 reference gradient on larger ones (the tiled paths).
//!
//! Tolerance: `max|g − g_ref| ≤ 1e-4·max|g_ref|` per tensor. Elements of a
//! gradient cancel to near zero, so they are measured against the
//! tensor's scale. The f32 error is the flash backward's (`dS` off by
//! `P·(δ·A + E)`, `δ ≈ 16·eps·L + 1e-6`: ~1e-5 of the scale for the
//! score magnitudes `L ≲ 10` here) plus the f32 GEMMs' (`sqrt(K)·eps`,
//! K ≤ 200 rows or 64 features: ~2e-6), so 1e-4 leaves a ~10× margin;
//! finite differences of the f64 layer add ~1e-8.

use crate::common::*;
use attn_core::{Alibi, AttnParams, Layout, Mask, Par, TensorView};
use attn_layer::{Init, LayerConfig, LayerGrads, MultiHeadAttention, ReferenceGrads, Tokens};

const REL: f64 = 1e-4;

struct Problem {
    layer: MultiHeadAttention,
    r: attn_layer::ReferenceLayer,
    batch: usize,
    xq: Vec<f32>,
    xkv: Vec<f32>,
    dims: ([usize; 3], [usize; 3]),
    dy: Vec<f32>,
}

impl Problem {
    fn new(config: LayerConfig, batch: usize, nq: usize, nk: Option<usize>, seed: u64) -> Self {
        let (layer, r) = layers(config, Init::KaimingUniform, seed);
        let dm = config.d_model;
        let xq = values(batch * nq * dm, 1.5, seed + 1);
        let xkv = match nk {
            Some(nk) => values(batch * nk * dm, 1.5, seed + 2),
            None => xq.clone(),
        };
        let nk = nk.unwrap_or(nq);
        let dy = values(batch * nq * dm, 1.0, seed + 3);
        Problem { layer, r, batch, xq, xkv, dims: ([batch, nq, dm], [batch, nk, dm]), dy }
    }

    fn grads(&self, params: &AttnParams, par: Par) -> LayerGrads {
        let x_q = Tokens::new("x_q", &self.xq, self.dims.0).unwrap();
        let x_kv = Tokens::new("x_kv", &self.xkv, self.dims.1).unwrap();
        let t = self.layer.forward_train(&x_q, &x_kv, params, par).unwrap();
        self.layer.backward(&t, &x_q, &x_kv, &self.dy, params, par).unwrap()
    }

    /// The reference gradients of this problem.
    fn reference(&self, params: &AttnParams) -> ReferenceGrads {
        let (xq, xkv) = (wide(&self.xq), wide(&self.xkv));
        let t = self.r.forward(&xq, &xkv, self.batch, params);
        self.r.backward(&t, &xq, &xkv, &wide(&self.dy), params)
    }

    /// The layer's gradients against `want` (in `common::parameters`
    /// order), each within `REL` of its scale (`common::grad_scale`).
    fn check(
        &self,
        got: &LayerGrads,
        want: &[(&'static str, Vec<f64>)],
        r: &ReferenceGrads,
        what: &str,
    ) -> f64 {
        let got = layer_grads_of(got);
        assert_eq!(got.len(), want.len());
        let mut worst = 0f64;
        for ((name, g), (wname, w)) in got.iter().zip(want) {
            assert_eq!(name, wname);
            let scale = grad_scale(name, w, r);
            assert!(scale > 0.0, "{what}: d{name} is all zeros, the check would be empty");
            worst = worst.max(assert_close(&format!("{what}: d{name}"), g, w, REL * scale));
        }
        eprintln!("{what}: worst/tol {worst:.3e}");
        worst
    }

    fn against_finite_differences(&self, params: &AttnParams, what: &str) -> f64 {
        let (xq, xkv) = (wide(&self.xq), wide(&self.xkv));
        let fd = finite_differences(&self.r, &xq, &xkv, self.batch, params, &wide(&self.dy), 1e-6);
        self.check(&self.grads(params, Par::Seq), &fd, &self.reference(params), what)
    }

    fn against_reference(&self, params: &AttnParams, what: &str) -> (f64, LayerGrads) {
        let want = self.reference(params);
        let got = self.grads(params, Par::Seq);
        let w = self.check(&got, &grads_of(&want), &want, what);
        if let Some(ds) = &want.dsinks {
            assert_close_rel(&format!("{what}: dsinks"), got.dsinks.as_ref().unwrap(), ds, REL);
        }
        (w, got)
    }
}

#[test]
fn tiny_layers_against_finite_differences() {
    let gqa = LayerConfig::new(8, 4, 2, 3).with_v_dim(2).with_bias(true);
    Problem::new(gqa, 2, 4, None, 1).against_finite_differences(&AttnParams::default(), "self");
    Problem::new(gqa, 2, 5, None, 2).against_finite_differences(&AttnParams::causal(), "causal");
    let mqa = LayerConfig::new(6, 3, 1, 4).with_bias(true);
    Problem::new(mqa, 1, 3, Some(7), 3).against_finite_differences(&AttnParams::default(), "cross");
    let mha = LayerConfig::new(6, 2, 2, 3);
    Problem::new(mha, 2, 6, Some(4), 4)
        .against_finite_differences(&AttnParams::causal(), "cross causal");
}

#[test]
fn tiled_paths_against_the_reference_gradient() {
    let gqa = LayerConfig::new(32, 4, 2, 8).with_bias(true);
    Problem::new(gqa, 2, 40, None, 5).against_reference(&AttnParams::causal(), "causal gqa");
    let mqa = LayerConfig::new(24, 6, 1, 4).with_v_dim(6);
    Problem::new(mqa, 1, 33, Some(50), 6).against_reference(&AttnParams::default(), "cross mqa");
    let w = Mask::Window { left: Some(5), right: Some(2) };
    let mha = LayerConfig::new(16, 2, 2, 8).with_bias(true);
    Problem::new(mha, 2, 30, None, 7).against_reference(&AttnParams::with_mask(w), "window");
}

#[test]
fn modifiers_against_the_reference_gradient() {
    let c = LayerConfig::new(32, 4, 2, 8).with_bias(true);
    let sinks = [0.5f32, -1.0, 0.25, 2.0];
    let p = AttnParams {
        softcap: Some(2.0),
        sinks: Some(&sinks),
        alibi: Some(Alibi::Default),
        ..AttnParams::causal()
    };
    let (_, g) = Problem::new(c, 2, 24, None, 8).against_reference(&p, "modifiers");
    assert!(g.dsinks.is_some());
    // an additive bias (broadcast over the batch) with a window, cross-attention
    let (nq, nk) = (20, 28);
    let mut bias = values(4 * nq * nk, 1.0, 9);
    bias[5] = f32::NEG_INFINITY;
    let bias = TensorView::new("bias", &bias, [1, 4, nq, nk], Layout::Bhnd).unwrap();
    let w = Mask::Window { left: Some(6), right: Some(3) };
    let p = AttnParams { bias: Some(bias), softcap: Some(3.0), ..AttnParams::with_mask(w) };
    Problem::new(c, 2, nq, Some(nk), 10).against_reference(&p, "bias");
}

#[test]
fn identical_bits_for_any_thread_count() {
    let c = LayerConfig::new(64, 4, 2, 16).with_bias(true);
    // 2·140 = 280 rows: the projections and dX split into row blocks; the
    // dW products (64 rows) do not.
    let p = Problem::new(c, 2, 140, None, 9);
    let want = p.grads(&AttnParams::causal(), Par::Seq);
    for par in [Par::rayon(2).unwrap(), Par::rayon(3).unwrap()] {
        let g = p.grads(&AttnParams::causal(), par);
        for ((n, a), (_, b)) in layer_grads_of(&g).iter().zip(layer_grads_of(&want)) {
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{n} {par:?}");
        }
    }
}

#[test]
fn self_attention_input_gradient_against_finite_differences() {
    // X feeds both the queries and the keys/values: dX = dX_q + dX_kv.
    let c = LayerConfig::new(8, 2, 1, 4).with_bias(true);
    let p = Problem::new(c, 2, 5, None, 10);
    let params = AttnParams::causal();
    let dx = p.grads(&params, Par::Seq).dx_self();
    let (x, dy) = (wide(&p.xq), wide(&p.dy));
    let h = 1e-6;
    let fd: Vec<f64> = (0..x.len())
        .map(|i| {
            let f = |s: f64| {
                let mut x2 = x.clone();
                x2[i] += s * h;
                loss(&p.r, &x2, &x2, p.batch, &params, &dy)
            };
            (f(1.0) - f(-1.0)) / (2.0 * h)
        })
        .collect();
    assert_close_rel("dx (self)", &dx, &fd, REL);
}
