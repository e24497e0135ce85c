//! The standard O(N²) kernel: materialize `S = Q·Kᵀ`, softmax its rows,
//! multiply by V. Per (batch, query head), in f32:
//!
//! ```text
//! S[Nq×Nk] = (scale·log2 e) · Q[Nq×d] · K[Nk×d]ᵀ     sgemm, strided views
//! S[i, j]  = 2^(S[i, j] − max_j S[i, ·])  over visible j, 0 elsewhere
//! O[Nq×dv] = diag(1/Σ_j S[i, j]) · S · V[Nk×dv]        sgemm
//! ```
//!
//! The whole score tensor `[B, Hq, Nq, Nk]` is allocated up front (that is
//! the point of this baseline); heads run in parallel under `Par::Rayon`.

use attn_core::simd::{LOG2_E, exp2_shift_sum, slice_max};
use attn_core::{
    AttentionKernel, AttnError, AttnInputs, AttnParams, AttnShape, Element, Par, TensorView,
    TensorViewMut, validate_call,
};
use rayon::prelude::*;

/// The O(N²) kernel. See the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Naive;

/// f32 views of the inputs: borrowed when they are f32, widened otherwise.
struct F32Inputs<'a> {
    q: TensorView<'a, f32>,
    k: TensorView<'a, f32>,
    v: TensorView<'a, f32>,
}

fn widen<T: Element>(v: &TensorView<'_, T>) -> Vec<f32> {
    let mut out = vec![0f32; v.data().len()];
    T::widen_slice(v.data(), &mut out);
    out
}

impl AttentionKernel for Naive {
    fn name(&self) -> &'static str {
        "naive"
    }

    /// The score matrix, `B·Hq·Nq·Nk·4` bytes, plus one `Nq×dv` product per
    /// worker (f16/bf16 inputs add their f32 copies, not counted here).
    fn workspace_bytes(&self, shape: &AttnShape, _: &AttnParams, par: Par) -> usize {
        let heads = shape.batch() * shape.q_heads();
        let scores = heads * shape.q_len() * shape.kv_len();
        let per_worker = shape.q_len() * shape.v_dim();
        4 * (scores + par.threads().min(heads) * per_worker)
    }

    fn forward<T: Element>(
        &self,
        inputs: &AttnInputs<'_, T>,
        out: &mut TensorViewMut<'_>,
        lse: Option<&mut [f32]>,
        params: &AttnParams,
        par: Par,
    ) -> Result<(), AttnError> {
        validate_call(inputs, out, lse.as_deref(), params)?;
        let shape = *inputs.shape();
        let owned;
        let views = match (
            T::as_f32_slice(inputs.q.data()),
            T::as_f32_slice(inputs.k.data()),
            T::as_f32_slice(inputs.v.data()),
        ) {
            (Some(q), Some(k), Some(v)) => F32Inputs {
                q: TensorView::new("q", q, inputs.q.dims(), inputs.q.layout())?,
                k: TensorView::new("k", k, inputs.k.dims(), inputs.k.layout())?,
                v: TensorView::new("v", v, inputs.v.dims(), inputs.v.layout())?,
            },
            _ => {
                owned = (widen(&inputs.q), widen(&inputs.k), widen(&inputs.v));
                F32Inputs {
                    q: TensorView::new("q", &owned.0, inputs.q.dims(), inputs.q.layout())?,
                    k: TensorView::new("k", &owned.1, inputs.k.dims(), inputs.k.layout())?,
                    v: TensorView::new("v", &owned.2, inputs.v.dims(), inputs.v.layout())?,
                }
            }
        };
        run(&shape, &views, out, lse, params, par);
        Ok(())
    }
}

fn run(
    shape: &AttnShape,
    x: &F32Inputs<'_>,
    out: &mut TensorViewMut<'_>,
    lse: Option<&mut [f32]>,
    params: &AttnParams,
    par: Par,
) {
    let (nq, nk, dv) = (shape.q_len(), shape.kv_len(), shape.v_dim());
    let heads = shape.batch() * shape.q_heads();
    if nq == 0 {
        return;
    }
    let mut lse_local;
    let lse = match lse {
        Some(l) => l,
        None => {
            lse_local = vec![0f32; heads * nq];
            &mut lse_local[..]
        }
    };
    // The materialized score tensor (one element per head when Nk = 0, so
    // that chunking works).
    let chunk = (nq * nk).max(1);
    let mut scores = vec![0f32; heads * chunk];
    let writer = out.row_writer();
    let head = |bh: usize, s: &mut [f32], l: &mut [f32], tmp: &mut Vec<f32>| {
        let (b, h) = (bh / shape.q_heads(), bh % shape.q_heads());
        let o = head_forward(shape, x, params, b, h, s, l, tmp);
        for i in 0..nq {
            // SAFETY: each (b, h) is handled by exactly one task, so the rows
            // (b, h, i) written here are disjoint from every other task's.
            let row = unsafe { writer.row_mut(b, h, i) };
            row.copy_from_slice(&o[i * dv..(i + 1) * dv]);
        }
    };
    match par {
        Par::Seq => {
            let mut tmp = Vec::new();
            for (bh, (s, l)) in scores.chunks_mut(chunk).zip(lse.chunks_mut(nq)).enumerate() {
                head(bh, s, l, &mut tmp);
            }
        }
        Par::Rayon(_) => {
            scores
                .par_chunks_mut(chunk)
                .zip(lse.par_chunks_mut(nq))
                .enumerate()
                .for_each_init(Vec::new, |tmp, (bh, (s, l))| head(bh, s, l, tmp));
        }
    }
}

/// One (batch, query head): returns `O` as a contiguous `Nq×dv` slice of
/// `tmp`, writes the LSE of each row into `lse`.
#[allow(clippy::too_many_arguments)]
fn head_forward<'t>(
    shape: &AttnShape,
    x: &F32Inputs<'_>,
    params: &AttnParams,
    b: usize,
    h: usize,
    s: &mut [f32],
    lse: &mut [f32],
    tmp: &'t mut Vec<f32>,
) -> &'t [f32] {
    let (nq, nk, d, dv) = (shape.q_len(), shape.kv_len(), shape.head_dim(), shape.v_dim());
    let g = shape.kv_head_of(h);
    tmp.clear();
    tmp.resize(nq * dv, 0.0);
    if nk == 0 {
        lse.fill(f32::NEG_INFINITY);
        return tmp;
    }
    let alpha = params.scale_for(d) * LOG2_E;
    let q = &x.q.data()[x.q.offset(b, h, 0)..];
    let k = &x.k.data()[x.k.offset(b, g, 0)..];
    let v = &x.v.data()[x.v.offset(b, g, 0)..];
    // SAFETY: the pointers and strides describe Nq×d (Q), d×Nk (Kᵀ) and
    // Nq×Nk (S) matrices that lie inside their slices: the views checked
    // the buffer lengths, and S is this head's Nq·Nk chunk.
    unsafe {
        matrixmultiply::sgemm(
            nq,
            d,
            nk,
            alpha,
            q.as_ptr(),
            x.q.row_stride() as isize,
            1,
            k.as_ptr(),
            1,
            x.k.row_stride() as isize,
            0.0,
            s.as_mut_ptr(),
            nk as isize,
            1,
        );
    }
    for i in 0..nq {
        let row = &mut s[i * nk..(i + 1) * nk];
        let keys = params.mask.key_range(i, nq, nk);
        if keys.is_empty() {
            row.fill(0.0);
            lse[i] = f32::NEG_INFINITY;
            continue;
        }
        row[..keys.start].fill(0.0);
        row[keys.end..].fill(0.0);
        let vis = &mut row[keys];
        let m = slice_max(vis);
        let sum = exp2_shift_sum(vis, 1.0, m);
        let inv = 1.0 / sum;
        vis.iter_mut().for_each(|p| *p *= inv);
        lse[i] = (m + sum.log2()) * std::f32::consts::LN_2;
    }
    // SAFETY: P is Nq×Nk inside `s`, V is Nk×dv inside its view's buffer
    // (row stride checked by the view), O is Nq×dv = tmp's length.
    unsafe {
        matrixmultiply::sgemm(
            nq,
            nk,
            dv,
            1.0,
            s.as_ptr(),
            nk as isize,
            1,
            v.as_ptr(),
            x.v.row_stride() as isize,
            1,
            0.0,
            tmp.as_mut_ptr(),
            dv as isize,
            1,
        );
    }
    tmp
}
