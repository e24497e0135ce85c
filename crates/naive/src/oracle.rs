//! The f64 oracle: the ground truth of every test.

use attn_core::{
    AttentionKernel, AttnError, AttnInputs, AttnParams, AttnShape, Element, Par, TensorViewMut,
    validate_call,
};
use rayon::prelude::*;

/// The oracle's result in f64: `out` is `[B, Hq, Nq, dv]` and `lse`
/// `[B, Hq, Nq]`, both contiguous (natural log; `-inf` for masked rows).
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// Output, `[B, Hq, Nq, dv]`, row-major.
    pub out: Vec<f64>,
    /// Log-sum-exp of each row's scaled scores, `[B, Hq, Nq]`.
    pub lse: Vec<f64>,
}

/// Computes attention in f64, one row at a time:
/// `s_j = scale·Σ_c q_c·k_jc` over the visible keys `j` of the row,
/// `lse = m + ln Σ_j exp(s_j − m)` with `m = max_j s_j`, and
/// `o = Σ_j exp(s_j − lse)·v_j`. No validation beyond the shape: use
/// [`Oracle`] through [`AttentionKernel`] for checked calls.
pub fn reference<T: Element>(inputs: &AttnInputs<'_, T>, params: &AttnParams) -> Reference {
    let s = *inputs.shape();
    let (nq, dv) = (s.q_len(), s.v_dim());
    let mut out = vec![0f64; s.batch() * s.q_heads() * nq * dv];
    let mut lse = vec![f64::NEG_INFINITY; s.batch() * s.q_heads() * nq];
    if nq == 0 {
        return Reference { out, lse };
    }
    out.par_chunks_mut(nq * dv).zip(lse.par_chunks_mut(nq)).enumerate().for_each(|(bh, (o, l))| {
        let (b, h) = (bh / s.q_heads(), bh % s.q_heads());
        reference_head(inputs, params, b, h, o, l);
    });
    Reference { out, lse }
}

fn reference_head<T: Element>(
    inputs: &AttnInputs<'_, T>,
    params: &AttnParams,
    b: usize,
    h: usize,
    out: &mut [f64],
    lse: &mut [f64],
) {
    let s = *inputs.shape();
    let (nq, nk, d, dv) = (s.q_len(), s.kv_len(), s.head_dim(), s.v_dim());
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (d as f64).sqrt());
    let g = s.kv_head_of(h);
    let mut scores = vec![0f64; nk];
    for i in 0..nq {
        let keys = params.mask.key_range(i, nq, nk);
        let o = &mut out[i * dv..(i + 1) * dv];
        if keys.is_empty() {
            o.fill(0.0);
            lse[i] = f64::NEG_INFINITY;
            continue;
        }
        let q = inputs.q.row(b, h, i);
        for j in keys.clone() {
            let k = inputs.k.row(b, g, j);
            let dot: f64 =
                q.iter().zip(k).map(|(a, c)| a.to_f32() as f64 * c.to_f32() as f64).sum();
            scores[j] = scale * dot;
        }
        let m = keys.clone().map(|j| scores[j]).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = keys.clone().map(|j| (scores[j] - m).exp()).sum();
        let l = m + sum.ln();
        lse[i] = l;
        o.fill(0.0);
        for j in keys {
            let p = (scores[j] - l).exp();
            for (oc, vc) in o.iter_mut().zip(inputs.v.row(b, g, j)) {
                *oc += p * vc.to_f32() as f64;
            }
        }
    }
}

/// The oracle as a kernel: f64 inside, rounded to f32 on output.
#[derive(Debug, Clone, Copy, Default)]
pub struct Oracle;

impl AttentionKernel for Oracle {
    fn name(&self) -> &'static str {
        "oracle"
    }

    fn workspace_bytes(&self, shape: &AttnShape, _: &AttnParams, _: Par) -> usize {
        // f64 copies of the output and LSE plus one f64 score row per head.
        let heads = shape.batch() * shape.q_heads();
        8 * (shape.out_dims().iter().product::<usize>() + shape.lse_len() + heads * shape.kv_len())
    }

    fn forward<T: Element>(
        &self,
        inputs: &AttnInputs<'_, T>,
        out: &mut TensorViewMut<'_>,
        lse: Option<&mut [f32]>,
        params: &AttnParams,
        _par: Par,
    ) -> Result<(), AttnError> {
        validate_call(inputs, out, lse.as_deref(), params)?;
        let r = reference(inputs, params);
        let s = inputs.shape();
        let (nq, dv) = (s.q_len(), s.v_dim());
        for b in 0..s.batch() {
            for h in 0..s.q_heads() {
                for i in 0..nq {
                    let src = &r.out[((b * s.q_heads() + h) * nq + i) * dv..][..dv];
                    for (o, x) in out.row_mut(b, h, i).iter_mut().zip(src) {
                        *o = *x as f32;
                    }
                }
            }
        }
        if let Some(lse) = lse {
            for (o, x) in lse.iter_mut().zip(&r.lse) {
                *o = *x as f32;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attn_core::{Layout, Mask};

    #[test]
    fn single_key_returns_its_value() {
        let shape = AttnShape::new(1, 1, 1, 2, 1, 2, 3).unwrap();
        let q = [1.0f32, 2.0, -3.0, 0.5];
        let k = [0.3f32, -0.7];
        let v = [4.0f32, 5.0, 6.0];
        let inp = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
        let r = reference(&inp, &AttnParams::default());
        assert_eq!(r.out, vec![4.0, 5.0, 6.0, 4.0, 5.0, 6.0]);
        // lse = the single scaled score
        let s0 = (1.0 * 0.3f32 as f64 + 2.0 * -0.7f32 as f64) / 2f64.sqrt();
        assert!((r.lse[0] - s0).abs() < 1e-12);
    }

    #[test]
    fn uniform_scores_average_values() {
        // q = 0: every visible key has weight 1/n.
        let shape = AttnShape::new(1, 1, 1, 3, 3, 1, 1).unwrap();
        let q = [0.0f32; 3];
        let k = [1.0f32, 2.0, 3.0];
        let v = [3.0f32, 6.0, 9.0];
        let inp = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
        let r = reference(&inp, &AttnParams::causal());
        assert_eq!(r.out, vec![3.0, 4.5, 6.0]);
        let want: Vec<f64> = (1..=3).map(|n| (n as f64).ln()).collect();
        for (a, b) in r.lse.iter().zip(&want) {
            assert!((a - b).abs() < 1e-12);
        }
    }

    #[test]
    fn fully_masked_rows_are_zero_with_neg_inf_lse() {
        // Nq = 3 > Nk = 1 with causal: the first two rows see nothing.
        let shape = AttnShape::new(1, 1, 1, 3, 1, 1, 1).unwrap();
        let inp =
            AttnInputs::from_slices(shape, Layout::Bhnd, &[1.0f32; 3], &[1.0], &[7.0]).unwrap();
        let r = reference(&inp, &AttnParams::with_mask(Mask::Causal));
        assert_eq!(r.out, vec![0.0, 0.0, 7.0]);
        assert_eq!(r.lse[..2], [f64::NEG_INFINITY; 2]);
    }
}
