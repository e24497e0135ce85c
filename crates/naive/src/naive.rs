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
//! the point of this baseline); heads run in parallel on the threads of
//! the call's [`Par`].

use attn_core::{
    AttentionKernel, AttnError, AttnParams, AttnShape, CheckedCall, Element, HeadRowsMut, Par,
    RowFaults, TensorView, try_zeroed,
};
use attn_simd::{LOG2_E, all_finite, exp2_shift_sum, slice_max};
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

/// A view's buffer as f32: borrowed when it is f32, widened otherwise.
pub(crate) fn widened<'a, T: Element>(v: &TensorView<'a, T>) -> std::borrow::Cow<'a, [f32]> {
    match T::as_f32_slice(v.data()) {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(widen(v)),
    }
}

impl AttentionKernel for Naive {
    fn name(&self) -> &'static str {
        "naive"
    }

    /// The score matrix, `B·Hq·Nq·Nk·4` bytes, plus one `Nq×dv` product per
    /// worker and a row handle per head (f16/bf16 inputs add their f32
    /// copies, not counted here). Saturates instead of overflowing.
    fn workspace_bytes(&self, shape: &AttnShape, _: &AttnParams, par: Par) -> usize {
        let heads = shape.batch() * shape.q_heads();
        let scores = heads.saturating_mul(shape.q_len()).saturating_mul(shape.kv_len());
        let per_worker = shape.q_len() * shape.v_dim();
        let floats = scores.saturating_add(par.threads().min(heads).saturating_mul(per_worker));
        floats
            .saturating_mul(4)
            .saturating_add(heads.saturating_mul(std::mem::size_of::<HeadRowsMut<'_>>()))
    }

    fn run<T: Element>(&self, mut call: CheckedCall<'_, '_, T>) -> Result<(), AttnError> {
        let (inputs, params, par) = (call.inputs(), call.params(), call.par());
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
        let (out, lse) = call.outputs();
        let (nq, nk) = (shape.q_len(), shape.kv_len());
        if nq == 0 {
            return Ok(());
        }
        let heads = shape.batch() * shape.q_heads();
        let want_lse = lse.is_some();
        let mut lse_local;
        let lse = match lse {
            Some(l) => l,
            None => {
                lse_local = try_zeroed("lse", heads * nq)?;
                &mut lse_local[..]
            }
        };
        // The materialized score tensor (one element per head when Nk = 0,
        // so that chunking works).
        let chunk = (nq * nk).max(1);
        let mut scores = try_zeroed("scores", heads.saturating_mul(chunk))?;
        let faults = RowFaults::new();
        let out_heads = out.heads_mut();
        let head = |s: &mut [f32], l: &mut [f32], o: HeadRowsMut<'_>, tmp: &mut Vec<f32>| {
            head_forward(&shape, &views, params, s, l, o, tmp, &faults)
        };
        par.install(|| {
            if par.threads() == 1 {
                let mut tmp = Vec::new();
                for ((s, l), o) in scores.chunks_mut(chunk).zip(lse.chunks_mut(nq)).zip(out_heads) {
                    head(s, l, o, &mut tmp);
                }
            } else {
                scores
                    .par_chunks_mut(chunk)
                    .zip(lse.par_chunks_mut(nq))
                    .zip(out_heads)
                    .for_each_init(Vec::new, |tmp, ((s, l), o)| head(s, l, o, tmp));
            }
        })?;
        crate::exact::repair_rows(inputs, params, faults, out, want_lse.then_some(lse))
    }
}

/// One (batch, query head) `out` of `Nq` rows: the output rows and the LSE
/// of each row (into `lse`); `tmp` holds the `Nq×dv` product. Rows whose
/// result is not finite go to `faults`.
#[allow(clippy::too_many_arguments)]
fn head_forward(
    shape: &AttnShape,
    x: &F32Inputs<'_>,
    params: &AttnParams,
    s: &mut [f32],
    lse: &mut [f32],
    mut out: HeadRowsMut<'_>,
    tmp: &mut Vec<f32>,
    faults: &RowFaults,
) {
    let (nq, nk, d, dv) = (shape.q_len(), shape.kv_len(), shape.head_dim(), shape.v_dim());
    let (b, h) = (out.batch(), out.head());
    let g = shape.kv_head_of(h);
    tmp.clear();
    tmp.resize(nq * dv, 0.0);
    if nk == 0 {
        lse.fill(f32::NEG_INFINITY);
        (0..nq).for_each(|i| out.row_mut(i).fill(0.0));
        return;
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
        // A non-finite score (non-finite input, |q·k| beyond f32) would be
        // clamped into a finite weight by exp2: NaN marks the row for
        // exact recomputation.
        let finite = all_finite(vis);
        let m = slice_max(vis);
        let sum = exp2_shift_sum(vis, 1.0, m);
        let inv = 1.0 / sum;
        vis.iter_mut().for_each(|p| *p *= inv);
        lse[i] = if finite { (m + sum.log2()) * std::f32::consts::LN_2 } else { f32::NAN };
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
    for i in 0..nq {
        let row = &tmp[i * dv..(i + 1) * dv];
        out.row_mut(i).copy_from_slice(row);
        let visible = !params.mask.key_range(i, nq, nk).is_empty();
        if RowFaults::is_fault(visible, lse[i], row) {
            faults.report((b * shape.q_heads() + h) * nq + i);
        }
    }
}
