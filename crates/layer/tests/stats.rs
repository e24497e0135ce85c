//! The layer's saturation statistics (`forward_train_with_stats`,
//! `backward_with_stats`): the same output and gradients as without them,
//! and statistics equal to the f64 oracle's on the attention problem the
//! layer solved (its own Q, K, V, O, LSE, and `dO = dY·W_Oᵀ`), for GQA,
//! cross-attention with a causal mask, a batch of two and each modifier
//! the saturation study uses (softcap, sinks).
//!
//! Tolerances. Forward: `max_p` and `entropy` within `1e-4·(1 + |ref|)`:
//! the flash statistics are within ~1e-5 relative of the oracle's on the
//! same inputs (`tests/stats.rs` of the workspace, scores `L ≲ 10` here);
//! 10× margin. Backward: `off_argmax` within 1e-3 and `key_grad` within
//! `1e-3·max(key_grad)`: `dS` is within ~1e-5 of its scale (the model of
//! `grads.rs`), and `dO` differs from the oracle's by one f32 rounding of
//! the sgemm result (~1e-7 relative), so a share or a key's mass moves by
//! ~1e-5; the inputs are continuous and seeded, so no row has a near-tie
//! of its argmax that could flip the share. A misrouted buffer (another
//! layout, head or batch entry) is off by O(1).

use crate::common::*;
use attn_core::{AttnError, AttnInputs, AttnParams, BackwardInputs, BackwardStatsMut, Layout};
use attn_core::{Mask, Par, StatsMut};
use attn_layer::{Init, LayerConfig, MultiHeadAttention, Tokens};
use attn_naive::{reference_backward, reference_stats};

/// A GQA layer (4 query heads over 2 K/V heads of dim 8), batch 2, 40
/// queries attending to 56 keys.
struct Problem {
    layer: MultiHeadAttention,
    xq: Vec<f32>,
    xkv: Vec<f32>,
    dy: Vec<f32>,
    dims: ([usize; 3], [usize; 3]),
}

impl Problem {
    fn new(seed: u64) -> Problem {
        let config = LayerConfig::new(24, 4, 2, 8);
        let layer = MultiHeadAttention::init(config, Init::XavierUniform, seed).unwrap();
        let (b, nq, nk) = (2, 40, 56);
        Problem {
            layer,
            xq: values(b * nq * 24, 1.5, seed + 1),
            xkv: values(b * nk * 24, 1.5, seed + 2),
            dy: values(b * nq * 24, 1.0, seed + 3),
            dims: ([b, nq, 24], [b, nk, 24]),
        }
    }

    fn tokens(&self) -> (Tokens<'_>, Tokens<'_>) {
        (
            Tokens::new("x_q", &self.xq, self.dims.0).unwrap(),
            Tokens::new("x_kv", &self.xkv, self.dims.1).unwrap(),
        )
    }

    /// `dO = dY·W_Oᵀ` in f64, rounded to f32, `[B, Nq, Hq, dv]`.
    fn d_out(&self) -> Vec<f32> {
        let w = &self.layer.weights().w_o;
        let (rows, dm, ow) = (self.dims.0[0] * self.dims.0[1], w.cols(), w.rows());
        let mut out = vec![0f32; rows * ow];
        for r in 0..rows {
            for c in 0..ow {
                let s: f64 =
                    (0..dm).map(|m| self.dy[r * dm + m] as f64 * w.data()[c * dm + m] as f64).sum();
                out[r * ow + c] = s as f32;
            }
        }
        out
    }
}

fn params_list(sinks: &[f32]) -> Vec<(&'static str, AttnParams<'_>)> {
    let causal = AttnParams { mask: Mask::Causal, scale: Some(0.9), ..AttnParams::default() };
    vec![
        ("plain", causal),
        ("softcap", AttnParams { softcap: Some(2.5), ..causal }),
        ("sinks", AttnParams { sinks: Some(sinks), ..causal }),
    ]
}

fn close(what: &str, got: &[f32], want: &[f64], tol: impl Fn(f64) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(err <= tol(*w), "{what}[{i}]: {g} vs {w} (err {err:.2e}, tol {:.2e})", tol(*w));
    }
}

#[test]
fn forward_statistics_match_the_oracle_and_leave_the_output_alone() {
    let p = Problem::new(11);
    let (xq, xkv) = p.tokens();
    let sinks = [0.5f32, -1.0, 2.0, 0.0];
    for (name, params) in params_list(&sinks) {
        let plain = p.layer.forward_train(&xq, &xkv, &params, Par::Seq).unwrap();
        let n = plain.shape().lse_len();
        let (mut max_p, mut entropy) = (vec![0f32; n], vec![0f32; n]);
        let st = StatsMut { max_p: &mut max_p, entropy: &mut entropy };
        let t = p.layer.forward_train_with_stats(&xq, &xkv, &params, Par::Pool, st).unwrap();
        assert_eq!(t.y, plain.y, "{name}: the output changed");
        assert_eq!(t.lse(), plain.lse(), "{name}: the LSE changed");
        let inputs =
            AttnInputs::from_slices(*t.shape(), Layout::Bnhd, t.q(), t.k(), t.v()).unwrap();
        let r = reference_stats(&inputs, &params);
        close(&format!("{name}: max_p"), &max_p, &r.max_p, |w| 1e-4 * (1.0 + w.abs()));
        close(&format!("{name}: entropy"), &entropy, &r.entropy, |w| 1e-4 * (1.0 + w.abs()));
        // not vacuous: the rows differ and are neither one-hot nor uniform
        assert!(r.entropy.iter().any(|h| *h > 0.5) && r.max_p.iter().any(|m| *m > 0.2));
    }
}

#[test]
fn backward_statistics_match_the_oracle_and_leave_the_gradients_alone() {
    let p = Problem::new(12);
    let (xq, xkv) = p.tokens();
    let sinks = [0.5f32, -1.0, 2.0, 0.0];
    let d_out = p.d_out();
    for (name, params) in params_list(&sinks) {
        let t = p.layer.forward_train(&xq, &xkv, &params, Par::Seq).unwrap();
        let plain = p.layer.backward(&t, &xq, &xkv, &p.dy, &params, Par::Seq).unwrap();
        let s = *t.shape();
        let keys = s.batch() * s.kv_heads() * s.kv_len();
        let (mut off, mut kg) = (vec![0f32; s.lse_len()], vec![0f32; keys]);
        let st = BackwardStatsMut { off_argmax: &mut off, key_grad: &mut kg };
        let g = p.layer.backward_with_stats(&t, &xq, &xkv, &p.dy, &params, Par::Pool, st).unwrap();
        assert_eq!(g, plain, "{name}: the gradients changed");
        let inputs = BackwardInputs::from_slices(
            s,
            Layout::Bnhd,
            t.q(),
            t.k(),
            t.v(),
            t.attention_out(),
            t.lse(),
            &d_out,
        )
        .unwrap();
        let r = reference_backward(&inputs, &params);
        close(&format!("{name}: off_argmax"), &off, &r.off_argmax, |_| 1e-3);
        let kmax = r.key_grad.iter().fold(0f64, |a, x| a.max(*x));
        assert!(kmax > 0.0, "{name}: no gradient reaches the keys");
        close(&format!("{name}: key_grad"), &kg, &r.key_grad, |_| 1e-3 * kmax);
    }
}

#[test]
fn statistics_buffers_of_the_wrong_length_are_named() {
    let p = Problem::new(13);
    let (xq, xkv) = p.tokens();
    let params = AttnParams::causal();
    let n = 2 * 4 * 40;
    let (mut max_p, mut entropy) = (vec![0f32; n - 1], vec![0f32; n]);
    let st = StatsMut { max_p: &mut max_p, entropy: &mut entropy };
    match p.layer.forward_train_with_stats(&xq, &xkv, &params, Par::Seq, st) {
        Err(AttnError::BufferLen { tensor: "max_p", expected, got }) => {
            assert_eq!((expected, got), (n, n - 1));
        }
        other => panic!("expected a max_p length error, got {other:?}"),
    }
    let t = p.layer.forward_train(&xq, &xkv, &params, Par::Seq).unwrap();
    let (mut off, mut kg) = (vec![0f32; n], vec![0f32; 2 * 2 * 56 + 1]);
    let st = BackwardStatsMut { off_argmax: &mut off, key_grad: &mut kg };
    match p.layer.backward_with_stats(&t, &xq, &xkv, &p.dy, &params, Par::Seq, st) {
        Err(AttnError::BufferLen { tensor: "key_grad", expected, got }) => {
            assert_eq!((expected, got), (2 * 2 * 56, 2 * 2 * 56 + 1));
        }
        other => panic!("expected a key_grad length error, got {other:?}"),
    }
}
