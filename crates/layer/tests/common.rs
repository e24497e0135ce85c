//! Helpers shared by the test modules.

use attn_core::{AttnParams, AttnShape};
use attn_layer::{Init, LayerConfig, MultiHeadAttention, ReferenceLayer, ReferenceTrace};
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// `n` seeded values, uniform in `[−amp, amp)`.
pub fn values(n: usize, amp: f32, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

/// Exact widening to f64.
pub fn wide(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// A seeded layer and its f64 twin.
pub fn layers(config: LayerConfig, init: Init, seed: u64) -> (MultiHeadAttention, ReferenceLayer) {
    let layer = MultiHeadAttention::init(config, init, seed).unwrap();
    let reference = ReferenceLayer::from_layer(&layer);
    (layer, reference)
}

/// The largest `scale·Σ_c |q_c·k_c|` over the visible (query, key) pairs
/// of a reference forward: how far an error in the scores can move the
/// softmax (see [`tol_y`]).
pub fn score_magnitude(t: &ReferenceTrace, params: &AttnParams) -> f64 {
    let s: &AttnShape = &t.shape;
    let (nq, nk, d, hq, hkv) = (s.q_len(), s.kv_len(), s.head_dim(), s.q_heads(), s.kv_heads());
    let scale = params.scale_for(d) as f64;
    let mut l = 0f64;
    for b in 0..s.batch() {
        for h in 0..hq {
            let g = s.kv_head_of(h);
            for i in 0..nq {
                let q = &t.q[((b * nq + i) * hq + h) * d..][..d];
                for j in params.mask.key_range(i, nq, nk) {
                    let k = &t.k[((b * nk + j) * hkv + g) * d..][..d];
                    let a: f64 = q.iter().zip(k).map(|(x, y)| (x * y).abs()).sum();
                    l = l.max(a * scale.abs());
                }
            }
        }
    }
    l
}

/// The tolerance of the layer's `Y` against the f64 reference:
///
/// `tol = (1e-5 + 32·eps·L + 2·u·(1 + L))·A`, where
/// - `A = max|V|·max_m Σ_c |W_O[c, m]|` bounds `|Y − b_O|` (each attention
///   row is a convex combination of `V` rows), so errors are measured
///   against the output's scale;
/// - `32·eps·L` is the f32 rounding of the scores (`L` from
///   [`score_magnitude`]; an error `δ` in a score moves the softmax by a
///   factor `e^δ`): the kernel's own dot products and the projections'
///   (`Q`, `K` are f32 GEMM results over `d_model ≤ 64` terms, typically
///   `sqrt(d_model)·eps` relative), as in the workspace's kernel tolerance;
/// - `1e-5` (~80 ulps of 1) covers the f32 sums of the three GEMMs and the
///   kernel's fast exp2 (3e-7 relative);
/// - `u` is the unit roundoff of the KV cache's storage (0 for f32 and
///   for the forward): `K` and `V` rounded to `u` relative move the scores
///   by `u·L` and the values by `u`.
pub fn tol_y(r: &ReferenceLayer, t: &ReferenceTrace, params: &AttnParams, u: f64) -> f64 {
    let l = score_magnitude(t, params);
    let vmax = t.v.iter().fold(0f64, |m, x| m.max(x.abs()));
    let dm = r.config.d_model;
    let col =
        (0..dm).map(|m| r.w_o.chunks(dm).map(|row| row[m].abs()).sum::<f64>()).fold(0f64, f64::max);
    let eps = f32::EPSILON as f64;
    (1e-5 + 32.0 * eps * l + 2.0 * u * (1.0 + l)) * vmax * col
}

/// Asserts `|got − want| ≤ tol` elementwise, reporting the worst element.
/// Returns the worst error over the tolerance (for reports).
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = (0f64, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let e = (*g as f64 - w).abs();
        let e = if e.is_nan() { f64::INFINITY } else { e };
        if e > worst.0 {
            worst = (e, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= tol,
        "{what}[{i}] = {} but reference {} (|err| {:.3e} > tol {tol:.3e})",
        got[i],
        want[i],
        worst.0
    );
    worst.0 / tol
}

/// The scale a gradient tensor's errors are measured against: its largest
/// element, except for `db_K`, a sum of `dK`'s rows that cancel (to 0
/// without softcap and sinks, see [`attn_layer::ReferenceGrads::dk`]):
/// its scale is the largest column sum of `|dK|`.
pub fn grad_scale(name: &str, g: &[f64], r: &attn_layer::ReferenceGrads) -> f64 {
    if name == "b_k" {
        let w = g.len();
        (0..w)
            .map(|c| r.dk.iter().skip(c).step_by(w).map(|x| x.abs()).sum::<f64>())
            .fold(0.0, f64::max)
    } else {
        g.iter().fold(0f64, |m, x| m.max(x.abs()))
    }
}

/// Every differentiable input of the reference layer, by name, in the
/// order of [`grads_of`]: `x_q`, `x_kv`, the weights, the biases.
pub fn parameters(r: &ReferenceLayer, x_q: &[f64], x_kv: &[f64]) -> Vec<(&'static str, Vec<f64>)> {
    let mut p = vec![
        ("x_q", x_q.to_vec()),
        ("x_kv", x_kv.to_vec()),
        ("w_q", r.w_q.clone()),
        ("w_k", r.w_k.clone()),
        ("w_v", r.w_v.clone()),
        ("w_o", r.w_o.clone()),
    ];
    for (n, b) in [("b_q", &r.b_q), ("b_k", &r.b_k), ("b_v", &r.b_v), ("b_o", &r.b_o)] {
        if let Some(b) = b {
            p.push((n, b.clone()));
        }
    }
    p
}

/// The reference layer and inputs that `parameters` lists.
pub fn rebuild(
    r: &ReferenceLayer,
    p: &[(&'static str, Vec<f64>)],
) -> (ReferenceLayer, Vec<f64>, Vec<f64>) {
    let mut r = r.clone();
    let (mut xq, mut xkv) = (Vec::new(), Vec::new());
    for (n, v) in p {
        let v = v.clone();
        match *n {
            "x_q" => xq = v,
            "x_kv" => xkv = v,
            "w_q" => r.w_q = v,
            "w_k" => r.w_k = v,
            "w_v" => r.w_v = v,
            "w_o" => r.w_o = v,
            "b_q" => r.b_q = Some(v),
            "b_k" => r.b_k = Some(v),
            "b_v" => r.b_v = Some(v),
            "b_o" => r.b_o = Some(v),
            _ => unreachable!(),
        }
    }
    (r, xq, xkv)
}

/// The reference gradients in the order of [`parameters`].
pub fn grads_of(g: &attn_layer::ReferenceGrads) -> Vec<(&'static str, Vec<f64>)> {
    let mut v = vec![
        ("x_q", g.dx_q.clone()),
        ("x_kv", g.dx_kv.clone()),
        ("w_q", g.w_q.clone()),
        ("w_k", g.w_k.clone()),
        ("w_v", g.w_v.clone()),
        ("w_o", g.w_o.clone()),
    ];
    for (n, b) in [("b_q", &g.b_q), ("b_k", &g.b_k), ("b_v", &g.b_v), ("b_o", &g.b_o)] {
        if let Some(b) = b {
            v.push((n, b.clone()));
        }
    }
    v
}

/// The layer's gradients in the order of [`parameters`].
pub fn layer_grads_of(g: &attn_layer::LayerGrads) -> Vec<(&'static str, Vec<f32>)> {
    let mut v = vec![("x_q", g.dx_q.clone()), ("x_kv", g.dx_kv.clone())];
    v.extend(g.weights.tensors().map(|(n, x)| (n, x.to_vec())));
    v
}

/// `Σ G·Y` of the reference layer: the loss the gradient tests differentiate.
pub fn loss(
    r: &ReferenceLayer,
    x_q: &[f64],
    x_kv: &[f64],
    batch: usize,
    params: &AttnParams,
    g: &[f64],
) -> f64 {
    r.forward(x_q, x_kv, batch, params).y.iter().zip(g).map(|(a, b)| a * b).sum()
}

/// Central finite differences of [`loss`] with respect to every element of
/// every parameter, step `h`: truncation `h²·|f'''|/6` and rounding
/// `~eps64·|loss|/h`, both below 1e-8 here for `h = 1e-6` and values of
/// order 1.
pub fn finite_differences(
    r: &ReferenceLayer,
    x_q: &[f64],
    x_kv: &[f64],
    batch: usize,
    params: &AttnParams,
    g: &[f64],
    h: f64,
) -> Vec<(&'static str, Vec<f64>)> {
    let p = parameters(r, x_q, x_kv);
    let mut out = Vec::new();
    for t in 0..p.len() {
        let mut grad = Vec::with_capacity(p[t].1.len());
        for i in 0..p[t].1.len() {
            let mut f = [0f64; 2];
            for (s, sign) in [1.0, -1.0].into_iter().enumerate() {
                let mut p2 = p.clone();
                p2[t].1[i] += sign * h;
                let (r2, xq, xkv) = rebuild(r, &p2);
                f[s] = loss(&r2, &xq, &xkv, batch, params, g);
            }
            grad.push((f[0] - f[1]) / (2.0 * h));
        }
        out.push((p[t].0, grad));
    }
    out
}

/// Asserts `max|got − want| ≤ rel·max|want|` (a gradient's elements may
/// cancel to near zero, so they are measured against the tensor's scale).
#[track_caller]
pub fn assert_close_rel(what: &str, got: &[f32], want: &[f64], rel: f64) -> f64 {
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "{what}: the reference is all zeros, the check would be empty");
    assert_close(what, got, want, rel * scale)
}
