//! The f64 reference layer: the same function as the layer with every
//! step in f64 — projections, attention, output projection — and its exact
//! gradient, written to be obviously right rather than fast (plain loops).
//! The ground truth of the layer's tests.
//!
//! Why its own f64 attention rather than `attn_naive::reference`: the
//! oracle takes f32/f16/bf16 inputs, so `Q`, `K`, `V` would have to be
//! rounded to f32 on the way in. For comparing outputs that costs little
//! (a relative `6e-8` per element), but it makes the reference a step
//! function of its f64 inputs at the scale of an f32 ulp, and finite
//! differences of a step function are noise. So the row here takes f64
//! `q`, `k`, `v` and applies the modifiers with the same definition as the
//! oracle ([`ScoreMods::score_f64`]: bias, ALiBi, softcap, then the mask
//! and the sink); a test checks that it equals `attn_naive::reference` on
//! f32-representable inputs, modifiers included.
//!
//! Gradients through the attention (per query row, `s` the modified
//! scores of the visible keys, `p` their weights, `p_sink = e^(sink − lse)`):
//!
//! ```text
//! D = dO·o      dP_j = dO·v_j      dS_j = p_j·(dP_j − D)
//! dRaw_j = dS_j·(1 − (s_j/c)²)     (softcap c; 1 without it; bias and ALiBi add constants)
//! dq += scale·dRaw_j·k_j    dk_j += scale·dRaw_j·q    dv_j += p_j·dO
//! dsink_h −= p_sink·D
//! ```

use attn_core::{AttnParams, AttnShape, ScoreMods};

use crate::config::LayerConfig;
use crate::weights::MultiHeadAttention;

/// The layer's parameters in f64 (public: tests perturb them for finite
/// differences). Shapes as in [`crate::Weights`], row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceLayer {
    /// The sizes.
    pub config: LayerConfig,
    /// `W_Q`, `[d_model, Hq·d]`.
    pub w_q: Vec<f64>,
    /// `W_K`, `[d_model, Hkv·d]`.
    pub w_k: Vec<f64>,
    /// `W_V`, `[d_model, Hkv·dv]`.
    pub w_v: Vec<f64>,
    /// `W_O`, `[Hq·dv, d_model]`.
    pub w_o: Vec<f64>,
    /// `b_Q`.
    pub b_q: Option<Vec<f64>>,
    /// `b_K`.
    pub b_k: Option<Vec<f64>>,
    /// `b_V`.
    pub b_v: Option<Vec<f64>>,
    /// `b_O`.
    pub b_o: Option<Vec<f64>>,
}

/// The reference forward's output and activations, all f64, in the
/// layer's orders (`Q` `[B, Nq, Hq, d]`, …, LSE `[B, Hq, Nq]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceTrace {
    /// The attention problem.
    pub shape: AttnShape,
    /// `Y`, `[B, Nq, d_model]`.
    pub y: Vec<f64>,
    /// `Q`, `[B, Nq, Hq, d]`.
    pub q: Vec<f64>,
    /// `K`, `[B, Nk, Hkv, d]`.
    pub k: Vec<f64>,
    /// `V`, `[B, Nk, Hkv, dv]`.
    pub v: Vec<f64>,
    /// The attention output, `[B, Nq, Hq, dv]`.
    pub o: Vec<f64>,
    /// The attention's LSE, `[B, Hq, Nq]`.
    pub lse: Vec<f64>,
}

/// The reference gradients, f64, shaped like the tensors they belong to.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceGrads {
    /// `dX_q`.
    pub dx_q: Vec<f64>,
    /// `dX_kv`.
    pub dx_kv: Vec<f64>,
    /// `dW_Q`.
    pub w_q: Vec<f64>,
    /// `dW_K`.
    pub w_k: Vec<f64>,
    /// `dW_V`.
    pub w_v: Vec<f64>,
    /// `dW_O`.
    pub w_o: Vec<f64>,
    /// `db_Q` (when the layer has biases).
    pub b_q: Option<Vec<f64>>,
    /// `db_K`.
    pub b_k: Option<Vec<f64>>,
    /// `db_V`.
    pub b_v: Option<Vec<f64>>,
    /// `db_O`.
    pub b_o: Option<Vec<f64>>,
    /// The sink gradient, one per query head, when the call had sinks.
    pub dsinks: Option<Vec<f64>>,
    /// The gradient at `Q`, `[B, Nq, Hq, d]` (`db_Q` is its column sums).
    pub dq: Vec<f64>,
    /// The gradient at `K`, `[B, Nk, Hkv, d]`. Without softcap and sinks
    /// its column sums, `db_K`, are 0: a bias on every key adds `q·b_K` to
    /// a whole row of scores, which the softmax ignores (the softcap bends
    /// the shift, and a sink's logit does not move with it).
    pub dk: Vec<f64>,
    /// The gradient at `V`, `[B, Nk, Hkv, dv]`.
    pub dv: Vec<f64>,
}

impl ReferenceLayer {
    /// The layer's weights, widened (exactly) to f64.
    pub fn from_layer(layer: &MultiHeadAttention) -> Self {
        let w = layer.weights();
        let wide = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        ReferenceLayer {
            config: *layer.config(),
            w_q: wide(w.w_q.data()),
            w_k: wide(w.w_k.data()),
            w_v: wide(w.w_v.data()),
            w_o: wide(w.w_o.data()),
            b_q: w.b_q.as_deref().map(wide),
            b_k: w.b_k.as_deref().map(wide),
            b_v: w.b_v.as_deref().map(wide),
            b_o: w.b_o.as_deref().map(wide),
        }
    }

    /// The forward on `batch` sequences: `x_q` `[batch, Nq, d_model]`,
    /// `x_kv` `[batch, Nk, d_model]` (lengths from the buffers). Panics on
    /// sizes that do not fit: the reference trusts its caller.
    pub fn forward(
        &self,
        x_q: &[f64],
        x_kv: &[f64],
        batch: usize,
        params: &AttnParams,
    ) -> ReferenceTrace {
        let c = &self.config;
        let per = batch * c.d_model;
        assert!(x_q.len().is_multiple_of(per) && x_kv.len().is_multiple_of(per), "x sizes");
        let (nq, nk) = (x_q.len() / per, x_kv.len() / per);
        let shape = c.attn_shape(batch, nq, nk).expect("reference shape");
        let dm = c.d_model;
        let q = matmul(x_q, &self.w_q, dm, c.q_width(), self.b_q.as_deref());
        let k = matmul(x_kv, &self.w_k, dm, c.k_width(), self.b_k.as_deref());
        let v = matmul(x_kv, &self.w_v, dm, c.v_width(), self.b_v.as_deref());
        let (o, lse) = attention_f64(&shape, &q, &k, &v, params);
        let y = matmul(&o, &self.w_o, c.o_width(), dm, self.b_o.as_deref());
        ReferenceTrace { shape, y, q, k, v, o, lse }
    }

    /// The exact gradient of `Σ dy·Y` for the forward that made `trace`.
    pub fn backward(
        &self,
        trace: &ReferenceTrace,
        x_q: &[f64],
        x_kv: &[f64],
        dy: &[f64],
        params: &AttnParams,
    ) -> ReferenceGrads {
        let c = &self.config;
        let dm = c.d_model;
        assert_eq!(dy.len(), trace.y.len(), "dy size");
        let w_o = matmul_tn(&trace.o, dy, c.o_width(), dm);
        let d_o = matmul_nt(dy, &self.w_o, dm, c.o_width());
        let (dq, dk, dv, dsinks) =
            attention_backward_f64(&trace.shape, &trace.q, &trace.k, &trace.v, &d_o, params);
        let dx_q = matmul_nt(&dq, &self.w_q, c.q_width(), dm);
        let mut dx_kv = matmul_nt(&dk, &self.w_k, c.k_width(), dm);
        let dx_v = matmul_nt(&dv, &self.w_v, c.v_width(), dm);
        dx_kv.iter_mut().zip(&dx_v).for_each(|(a, b)| *a += b);
        let bias = |g: &[f64], w: usize| c.bias.then(|| column_sums(g, w));
        ReferenceGrads {
            dx_q,
            dx_kv,
            w_q: matmul_tn(x_q, &dq, dm, c.q_width()),
            w_k: matmul_tn(x_kv, &dk, dm, c.k_width()),
            w_v: matmul_tn(x_kv, &dv, dm, c.v_width()),
            w_o,
            b_q: bias(&dq, c.q_width()),
            b_k: bias(&dk, c.k_width()),
            b_v: bias(&dv, c.v_width()),
            b_o: bias(dy, dm),
            dsinks,
            dq,
            dk,
            dv,
        }
    }
}

/// `X·W (+ b)` for `X` `[·, k]`, `W` `[k, n]`.
fn matmul(x: &[f64], w: &[f64], k: usize, n: usize, b: Option<&[f64]>) -> Vec<f64> {
    let rows = x.len() / k;
    let mut out = vec![0f64; rows * n];
    for (xr, or) in x.chunks(k).zip(out.chunks_mut(n)) {
        if let Some(b) = b {
            or.copy_from_slice(b);
        }
        for (p, &xv) in xr.iter().enumerate() {
            or.iter_mut().zip(&w[p * n..(p + 1) * n]).for_each(|(o, wv)| *o += xv * wv);
        }
    }
    out
}

/// `Aᵀ·B` for `A` `[rows, m]`, `B` `[rows, n]`: `[m, n]`.
fn matmul_tn(a: &[f64], b: &[f64], m: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for (ar, br) in a.chunks(m).zip(b.chunks(n)) {
        for (i, &av) in ar.iter().enumerate() {
            out[i * n..(i + 1) * n].iter_mut().zip(br).for_each(|(o, bv)| *o += av * bv);
        }
    }
    out
}

/// `A·Wᵀ` for `A` `[rows, n]`, `W` `[m, n]`: `[rows, m]`.
fn matmul_nt(a: &[f64], w: &[f64], n: usize, m: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(a.len() / n * m);
    for ar in a.chunks(n) {
        out.extend(w.chunks(n).map(|wr| ar.iter().zip(wr).map(|(x, y)| x * y).sum::<f64>()));
    }
    out
}

fn column_sums(x: &[f64], n: usize) -> Vec<f64> {
    let mut s = vec![0f64; n];
    x.chunks(n).for_each(|r| s.iter_mut().zip(r).for_each(|(a, v)| *a += v));
    s
}

/// Offset of row `(b, h, t)` of a `[B, N, H, D]` buffer.
fn at(b: usize, t: usize, h: usize, n: usize, heads: usize, d: usize) -> usize {
    ((b * n + t) * heads + h) * d
}

/// One query row in f64: the visible keys that kept a finite score,
/// their modified scores `s` and weights `p`, the output and the LSE, and
/// the sink's weight.
struct Row {
    keys: Vec<usize>,
    s: Vec<f64>,
    p: Vec<f64>,
    o: Vec<f64>,
    lse: f64,
    p_sink: f64,
}

fn row_f64(
    shape: &AttnShape,
    (q, k, v): (&[f64], &[f64], &[f64]),
    params: &AttnParams,
    mods: &ScoreMods<'_>,
    (b, h, i): (usize, usize, usize),
) -> Row {
    let (nq, nk, d, dv) = (shape.q_len(), shape.kv_len(), shape.head_dim(), shape.v_dim());
    let (hq, hkv, g) = (shape.q_heads(), shape.kv_heads(), shape.kv_head_of(h));
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (d as f64).sqrt());
    let diag = i as i64 + nk as i64 - nq as i64;
    let qr = &q[at(b, i, h, nq, hq, d)..][..d];
    let (mut keys, mut s) = (Vec::new(), Vec::new());
    for j in params.mask.key_range(i, nq, nk) {
        let kr = &k[at(b, j, g, nk, hkv, d)..][..d];
        let dot: f64 = qr.iter().zip(kr).map(|(a, c)| a * c).sum();
        let sj = mods.score_f64(scale * dot, b, h, i, diag, j);
        if sj != f64::NEG_INFINITY {
            keys.push(j);
            s.push(sj);
        }
    }
    let sink = mods.sink(h).map(f64::from);
    let m = s.iter().copied().fold(sink.unwrap_or(f64::NEG_INFINITY), f64::max);
    let mut o = vec![0f64; dv];
    if m == f64::NEG_INFINITY {
        return Row { keys, s, p: Vec::new(), o, lse: m, p_sink: 0.0 };
    }
    let w: Vec<f64> = s.iter().map(|sj| (sj - m).exp()).collect();
    let w_sink = sink.map_or(0.0, |x| (x - m).exp());
    let z = w.iter().sum::<f64>() + w_sink;
    let p: Vec<f64> = w.iter().map(|x| x / z).collect();
    for (&j, pj) in keys.iter().zip(&p) {
        let vr = &v[at(b, j, g, nk, hkv, dv)..][..dv];
        o.iter_mut().zip(vr).for_each(|(oc, vc)| *oc += pj * vc);
    }
    Row { keys, s, p, o, lse: m + z.ln(), p_sink: w_sink / z }
}

/// Attention in f64 on `[B, N, H, D]` buffers: the output `[B, Nq, Hq, dv]`
/// and the LSE `[B, Hq, Nq]` (see the module docs for the definition).
pub fn attention_f64(
    shape: &AttnShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    params: &AttnParams,
) -> (Vec<f64>, Vec<f64>) {
    let (nb, hq, nq, dv) = (shape.batch(), shape.q_heads(), shape.q_len(), shape.v_dim());
    let mods = ScoreMods::new(params, hq);
    let mut o = vec![0f64; nb * nq * hq * dv];
    let mut lse = vec![0f64; nb * hq * nq];
    for b in 0..nb {
        for h in 0..hq {
            for i in 0..nq {
                let r = row_f64(shape, (q, k, v), params, &mods, (b, h, i));
                o[at(b, i, h, nq, hq, dv)..][..dv].copy_from_slice(&r.o);
                lse[(b * hq + h) * nq + i] = r.lse;
            }
        }
    }
    (o, lse)
}

/// The gradient of `Σ dO·O` through [`attention_f64`]: `dQ`, `dK`, `dV`
/// (`[B, N, H, D]`) and, with sinks, the sink gradient per query head.
#[allow(clippy::type_complexity)]
pub fn attention_backward_f64(
    shape: &AttnShape,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    d_o: &[f64],
    params: &AttnParams,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Option<Vec<f64>>) {
    let (nb, hq, hkv) = (shape.batch(), shape.q_heads(), shape.kv_heads());
    let (nq, nk, d, dvn) = (shape.q_len(), shape.kv_len(), shape.head_dim(), shape.v_dim());
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (d as f64).sqrt());
    let mods = ScoreMods::new(params, hq);
    let (mut dq, mut dk, mut dv) = (vec![0f64; q.len()], vec![0f64; k.len()], vec![0f64; v.len()]);
    let mut dsinks = params.sinks.map(|s| vec![0f64; s.len()]);
    for b in 0..nb {
        for h in 0..hq {
            let g = shape.kv_head_of(h);
            for i in 0..nq {
                let r = row_f64(shape, (q, k, v), params, &mods, (b, h, i));
                let go = &d_o[at(b, i, h, nq, hq, dvn)..][..dvn];
                let dd: f64 = go.iter().zip(&r.o).map(|(a, c)| a * c).sum();
                if let Some(ds) = dsinks.as_mut() {
                    ds[h] -= r.p_sink * dd;
                }
                let qo = at(b, i, h, nq, hq, d);
                for ((&j, pj), sj) in r.keys.iter().zip(&r.p).zip(&r.s) {
                    let (ko, vo) = (at(b, j, g, nk, hkv, d), at(b, j, g, nk, hkv, dvn));
                    let dp: f64 = go.iter().zip(&v[vo..vo + dvn]).map(|(a, c)| a * c).sum();
                    let cap = mods.softcap.map_or(1.0, |c| 1.0 - (sj / c as f64).powi(2));
                    let ds = scale * pj * (dp - dd) * cap;
                    for c in 0..d {
                        dq[qo + c] += ds * k[ko + c];
                        dk[ko + c] += ds * q[qo + c];
                    }
                    for c in 0..dvn {
                        dv[vo + c] += pj * go[c];
                    }
                }
            }
        }
    }
    (dq, dk, dv, dsinks)
}
