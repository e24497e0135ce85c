//! The standard O(N²) kernel: materialize `S = Q·Kᵀ`, softmax its rows,
//! multiply by V. Per (batch, query head), in f32:
//!
//! ```text
//! S[Nq×Nk] = (scale·log2 e) · Q[Nq×d] · K[Nk×d]ᵀ     sgemm, strided views
//! S[i, j]  = 2^(S[i, j] − max_j S[i, ·])  over visible j, 0 elsewhere
//! O[Nq×dv] = diag(1/Σ_j S[i, j]) · S · V[Nk×dv]        sgemm
//! ```
//!
//! With score modifiers (`docs/semantics.md`), the first product is taken
//! with `scale` alone and each visible row is modified in place before the
//! softmax (`modify_row`: bias, ALiBi, softcap, then `·log2 e`); a sink
//! rescales the finished row ([`with_sink`]). A row whose every visible
//! key scores `−inf` (a `−inf` bias) is fully masked: output 0, LSE `−inf`
//! or the sink's.
//!
//! The whole score tensor `[B, Hq, Nq, Nk]` is allocated up front (that is
//! the point of this baseline); heads run in parallel on the threads of
//! the call's [`Par`].

use attn_core::modifiers::with_sink;
use attn_core::{
    AttentionKernel, AttnError, AttnParams, AttnShape, CheckedCall, Element, HeadRowsMut, Par,
    RowFaults, ScoreMods, TensorView, try_zeroed,
};
use attn_simd::{LANES, LOG2_E, all_finite, exp2_shift_sum, f32x16, slice_max, tanh};
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

    /// The score matrix, `B·Hq·Nq·Nk·4` bytes, plus one `Nq×dv` product and
    /// `Nq` row flags per worker and a row handle per head (f16/bf16 inputs
    /// add their f32 copies, not counted here). Saturates instead of
    /// overflowing.
    fn workspace_bytes(&self, shape: &AttnShape, _: &AttnParams, par: Par) -> usize {
        let heads = shape.batch() * shape.q_heads();
        let scores = heads.saturating_mul(shape.q_len()).saturating_mul(shape.kv_len());
        let workers = par.threads().min(heads);
        let per_worker = shape.q_len() * shape.v_dim();
        let floats = scores.saturating_add(workers.saturating_mul(per_worker));
        floats
            .saturating_mul(4)
            .saturating_add(workers.saturating_mul(shape.q_len()))
            .saturating_add(heads.saturating_mul(std::mem::size_of::<HeadRowsMut<'_>>()))
    }

    fn run<T: Element>(&self, mut call: CheckedCall<'_, '_, T>) -> Result<(), AttnError> {
        if call.wants_stats() {
            return Err(AttnError::Unsupported {
                what: "saturation statistics in the naive kernel (use flash or the oracle)".into(),
            });
        }
        let (inputs, params, par) = (call.inputs(), call.params(), call.par());
        params.refuse_positions("the naive kernel")?;
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
        let mods = ScoreMods::new(params, shape.q_heads());
        let out_heads = out.heads_mut();
        let head = |s: &mut [f32], l: &mut [f32], o: HeadRowsMut<'_>, tmp: &mut Scratch| {
            head_forward(&shape, &views, params, &mods, s, l, o, tmp, &faults)
        };
        par.install(|| {
            if par.threads() == 1 {
                let mut tmp = Scratch::default();
                for ((s, l), o) in scores.chunks_mut(chunk).zip(lse.chunks_mut(nq)).zip(out_heads) {
                    head(s, l, o, &mut tmp);
                }
            } else {
                scores
                    .par_chunks_mut(chunk)
                    .zip(lse.par_chunks_mut(nq))
                    .zip(out_heads)
                    .for_each_init(Scratch::default, |tmp, ((s, l), o)| head(s, l, o, tmp));
            }
        })?;
        crate::exact::repair_rows(inputs, params, faults, out, want_lse.then_some(lse))
    }
}

/// A worker's buffers: the `Nq×dv` product and which rows a `−inf` bias
/// masked entirely.
#[derive(Default)]
struct Scratch {
    o: Vec<f32>,
    dead: Vec<bool>,
}

/// Applies the modifiers of query row `(b, h, i)` on the diagonal `diag`
/// to its scaled scores `s[t] = scale·q·k_j`, `j = j0 + t`, in place and
/// in f32, in the order of `docs/semantics.md`: `+ bias`, `− slope·|diag −
/// j|`, `c·tanh(s/c)` (`−inf` kept, so a `−inf` bias masks its key).
/// Returns `false` when a bias entry it read is NaN or `+inf`: the row's
/// result is then not the f32 one, and the caller has it recomputed (the
/// repair names the entry).
pub(crate) fn modify_row(
    s: &mut [f32],
    mods: &ScoreMods<'_>,
    (b, h, i): (usize, usize, usize),
    diag: i64,
    j0: usize,
) -> bool {
    let mut ok = true;
    if let Some(row) = mods.bias_row(b, h, i) {
        let row = &row[j0..j0 + s.len()];
        s.iter_mut().zip(row).for_each(|(x, y)| *x += y);
        ok = !row.iter().any(|y| y.is_nan() || *y == f32::INFINITY);
    }
    if let Some(slope) = mods.slope(h) {
        // distances exact in f32 up to 2²⁴ keys
        for (t, x) in s.iter_mut().enumerate() {
            *x -= slope * (diag - (j0 + t) as i64).unsigned_abs() as f32;
        }
    }
    if let Some(c) = mods.softcap {
        let cap = |x: f32x16| {
            let t = tanh(x / f32x16::splat(c)) * f32x16::splat(c);
            x.simd_eq(f32x16::splat(f32::NEG_INFINITY)).select(x, t)
        };
        let (chunks, tail) = s.as_chunks_mut::<LANES>();
        for ch in chunks {
            *ch = cap(f32x16::new(*ch)).to_array();
        }
        if !tail.is_empty() {
            let mut a = [0f32; LANES];
            a[..tail.len()].copy_from_slice(tail);
            let n = tail.len();
            tail.copy_from_slice(&cap(f32x16::new(a)).to_array()[..n]);
        }
    }
    ok
}

/// One (batch, query head) `out` of `Nq` rows: the output rows and the LSE
/// of each row (into `lse`); `tmp` holds the `Nq×dv` product. Rows whose
/// result is not finite go to `faults`.
#[allow(clippy::too_many_arguments)]
fn head_forward(
    shape: &AttnShape,
    x: &F32Inputs<'_>,
    params: &AttnParams,
    mods: &ScoreMods<'_>,
    s: &mut [f32],
    lse: &mut [f32],
    mut out: HeadRowsMut<'_>,
    tmp: &mut Scratch,
    faults: &RowFaults,
) {
    let (nq, nk, d, dv) = (shape.q_len(), shape.kv_len(), shape.head_dim(), shape.v_dim());
    let (b, h) = (out.batch(), out.head());
    let g = shape.kv_head_of(h);
    tmp.o.clear();
    tmp.o.resize(nq * dv, 0.0);
    tmp.dead.clear();
    tmp.dead.resize(nq, false);
    // A row with no key left: LSE −inf, or the sink's logit.
    let sink = mods.sink(h);
    let empty_lse = sink.unwrap_or(f32::NEG_INFINITY);
    if nk == 0 {
        lse.fill(empty_lse);
        (0..nq).for_each(|i| out.row_mut(i).fill(0.0));
        return;
    }
    // Modified scores are formed in natural units, then taken to log2.
    let touches = mods.touches_scores();
    let alpha = params.scale_for(d) * if touches { 1.0 } else { LOG2_E };
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
            lse[i] = empty_lse;
            continue;
        }
        row[..keys.start].fill(0.0);
        row[keys.end..].fill(0.0);
        let j0 = keys.start;
        let masked_by_bias = || {
            let bias = mods.bias_row(b, h, i);
            bias.is_some_and(|r| r[keys.clone()].iter().all(|y| *y == f32::NEG_INFINITY))
        };
        let vis = &mut row[keys.clone()];
        // A non-finite score (non-finite input, |q·k| beyond f32) would be
        // clamped into a finite weight by exp2: NaN marks the row for
        // exact recomputation. Checked before the modifiers, whose −inf
        // (a −inf bias) is legitimate.
        let mut finite = all_finite(vis);
        if touches {
            let diag = i as i64 + nk as i64 - nq as i64;
            finite &= modify_row(vis, mods, (b, h, i), diag, j0);
            vis.iter_mut().for_each(|u| *u *= LOG2_E);
        }
        let m = slice_max(vis);
        if m == f32::NEG_INFINITY && finite && masked_by_bias() {
            // every visible key masked by a −inf bias: no weight at all
            // (−inf scores from a sum beyond f32 are left to the repair)
            vis.fill(0.0);
            lse[i] = empty_lse;
            tmp.dead[i] = true;
            continue;
        }
        let sum = exp2_shift_sum(vis, 1.0, m);
        let mut l = (m + sum.log2()) * std::f32::consts::LN_2;
        let mut inv = 1.0 / sum;
        if let Some(sink) = sink {
            let (with, factor) = with_sink(l, sink);
            (l, inv) = (with, inv * factor);
        }
        vis.iter_mut().for_each(|p| *p *= inv);
        lse[i] = if finite { l } else { f32::NAN };
    }
    // SAFETY: P is Nq×Nk inside `s`, V is Nk×dv inside its view's buffer
    // (row stride checked by the view), O is Nq×dv = tmp.o's length.
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
            tmp.o.as_mut_ptr(),
            dv as isize,
            1,
        );
    }
    for (i, (&l, &dead)) in lse.iter().zip(&tmp.dead).enumerate() {
        let row = &tmp.o[i * dv..(i + 1) * dv];
        out.row_mut(i).copy_from_slice(row);
        let visible = !params.mask.key_range(i, nq, nk).is_empty() && !dead;
        if RowFaults::is_fault(visible, l, row) {
            faults.report((b * shape.q_heads() + h) * nq + i);
        }
    }
}
