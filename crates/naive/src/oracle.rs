//! The f64 oracle: the ground truth of every test.

use attn_core::{
    AttentionKernel, AttnError, AttnInputs, AttnParams, AttnShape, CheckedCall, Element, Par,
    RowFaults, ScoreMods,
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

/// Computes attention in f64, one row at a time (see [`reference_row`]).
/// No validation beyond the shape: use [`Oracle`] through
/// [`AttentionKernel`] for checked calls.
pub fn reference<T: Element>(inputs: &AttnInputs<'_, T>, params: &AttnParams) -> Reference {
    reference_on(inputs, params, true)
}

/// [`reference`], over the heads in parallel (current rayon pool) or not.
fn reference_on<T: Element>(
    inputs: &AttnInputs<'_, T>,
    params: &AttnParams,
    parallel: bool,
) -> Reference {
    let s = *inputs.shape();
    let (nq, dv) = (s.q_len(), s.v_dim());
    let mut out = vec![0f64; s.batch() * s.q_heads() * nq * dv];
    let mut lse = vec![f64::NEG_INFINITY; s.batch() * s.q_heads() * nq];
    if nq == 0 {
        return Reference { out, lse };
    }
    let mods = ScoreMods::new(params, s.q_heads());
    let head = |bh: usize, o: &mut [f64], l: &mut [f64]| {
        let (b, h) = (bh / s.q_heads(), bh % s.q_heads());
        let mut scores = Vec::new();
        for i in 0..nq {
            l[i] =
                row_of(inputs, params, &mods, (b, h, i), &mut scores, &mut o[i * dv..(i + 1) * dv]);
        }
    };
    if parallel {
        out.par_chunks_mut(nq * dv)
            .zip(lse.par_chunks_mut(nq))
            .enumerate()
            .for_each(|(bh, (o, l))| head(bh, o, l));
    } else {
        for (bh, (o, l)) in out.chunks_mut(nq * dv).zip(lse.chunks_mut(nq)).enumerate() {
            head(bh, o, l);
        }
    }
    Reference { out, lse }
}

/// The f64 output row and LSE of query rows `(b, h, i)` only: what the
/// harness uses to check sampled rows of a large run without computing
/// the whole reference. Same arithmetic as [`reference()`].
pub fn reference_rows<T: Element>(
    inputs: &AttnInputs<'_, T>,
    params: &AttnParams,
    rows: &[(usize, usize, usize)],
) -> Vec<(Vec<f64>, f64)> {
    let mods = ScoreMods::new(params, inputs.shape().q_heads());
    rows.par_iter()
        .map(|&(b, h, i)| {
            let mut o = vec![0f64; inputs.shape().v_dim()];
            let l = row_of(inputs, params, &mods, (b, h, i), &mut Vec::new(), &mut o);
            (o, l)
        })
        .collect()
}

fn row_of<T: Element>(
    inputs: &AttnInputs<'_, T>,
    params: &AttnParams,
    mods: &ScoreMods<'_>,
    (b, h, i): (usize, usize, usize),
    scores: &mut Vec<f64>,
    out: &mut [f64],
) -> f64 {
    let s = inputs.shape();
    let g = s.kv_head_of(h);
    let keys = params.key_range(i, s.q_len(), s.kv_len());
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (s.head_dim() as f64).sqrt());
    let (k, v) = (&inputs.k, &inputs.v);
    reference_row(
        inputs.q.row(b, h, i),
        keys,
        scale,
        RowAt::in_call(mods, params, (b, h, i), s.q_len(), s.kv_len()),
        |j| k.row(b, g, j),
        |j| v.row(b, g, j),
        scores,
        out,
    )
}

/// Where a row sits, for its score modifiers: `(b, h, i)`, the diagonal
/// `diag = i + Nk − Nq` (with the row's own `Nk` for a ragged cache; the
/// global diagonal in local keys for a call with chunk positions) and the
/// call's modifiers ([`ScoreMods::default`] for none).
#[derive(Debug, Clone, Copy)]
pub struct RowAt<'m, 'a> {
    /// The call's modifiers.
    pub mods: &'m ScoreMods<'a>,
    /// Batch entry, query head and query row.
    pub b: usize,
    /// Query head.
    pub h: usize,
    /// Query row.
    pub i: usize,
    /// `i + Nk − Nq` (or `i + positions.diagonal()`): the key on the
    /// row's bottom-right aligned diagonal.
    pub diag: i64,
}

impl<'m, 'a> RowAt<'m, 'a> {
    /// Row `(b, h, i)` of a call with `nq` queries over `nk` keys.
    pub fn new(
        mods: &'m ScoreMods<'a>,
        b: usize,
        h: usize,
        i: usize,
        nq: usize,
        nk: usize,
    ) -> Self {
        RowAt { mods, b, h, i, diag: i as i64 + nk as i64 - nq as i64 }
    }

    /// Row `(b, h, i)` of a call with `nq` queries over `nk` keys and
    /// `params` (its chunk positions, if any, place the diagonal:
    /// [`AttnParams::diagonal`]).
    pub fn in_call(
        mods: &'m ScoreMods<'a>,
        params: &AttnParams,
        (b, h, i): (usize, usize, usize),
        nq: usize,
        nk: usize,
    ) -> Self {
        RowAt { mods, b, h, i, diag: i as i64 + params.diagonal(nq, nk) }
    }
}

/// One row of attention in f64, the single definition every reference in
/// the workspace uses (prefill, decode over a cache, sampled checks).
///
/// Over the visible keys `j ∈ keys`, `s_j` is `scale·Σ_c q_c·k_jc` with the
/// row's modifiers applied ([`ScoreMods::score_f64`]: bias, ALiBi,
/// softcap); keys whose score is `−inf` (a `−inf` bias) drop out like
/// masked ones. With `m = max(max s_j, sink)` (the sink only if given),
/// `o = Σ_j exp(s_j − m)·v_j / (Σ_j exp(s_j − m) + exp(sink − m))` and
/// `lse = m + ln(…)` of the same denominator. Normalising by the row max
/// (not by `exp(s_j − lse)`) keeps the output exact whatever the
/// magnitude of `m`: `lse` may round away the small terms when `|m|` is
/// large, the weights `exp(s_j − m)` never do. A row with no key left
/// returns a zero output and LSE `-inf`, or the sink's logit when there is
/// one. `scores` is a reusable buffer.
#[allow(clippy::too_many_arguments)]
pub fn reference_row<'r, Tq, Tk, Tv>(
    q: &[Tq],
    keys: std::ops::Range<usize>,
    scale: f64,
    at: RowAt<'_, '_>,
    k_row: impl Fn(usize) -> &'r [Tk],
    v_row: impl Fn(usize) -> &'r [Tv],
    scores: &mut Vec<f64>,
    out: &mut [f64],
) -> f64
where
    Tq: Element,
    Tk: Element + 'r,
    Tv: Element + 'r,
{
    out.fill(0.0);
    let sink = at.mods.sink(at.h).map(f64::from);
    scores.clear();
    scores.extend(keys.clone().map(|j| {
        let dot: f64 =
            q.iter().zip(k_row(j)).map(|(a, c)| a.to_f32() as f64 * c.to_f32() as f64).sum();
        at.mods.score_f64(scale * dot, at.b, at.h, at.i, at.diag, j)
    }));
    if scores.iter().all(|s| *s == f64::NEG_INFINITY) {
        // No key, or every key's score is −inf (masked by the bias). Not
        // a NaN score: that propagates below, as IEEE arithmetic does.
        return sink.unwrap_or(f64::NEG_INFINITY);
    }
    let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let m = sink.map_or(m, |s| m.max(s));
    let mut sum = sink.map_or(0.0, |s| (s - m).exp());
    for (j, sj) in keys.zip(scores.iter()) {
        let p = (sj - m).exp();
        if p == 0.0 {
            continue;
        }
        sum += p;
        for (oc, vc) in out.iter_mut().zip(v_row(j)) {
            *oc += p * vc.to_f32() as f64;
        }
    }
    out.iter_mut().for_each(|x| *x /= sum);
    m + sum.ln()
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

    /// Runs on the call's threads ([`Par`]); f64 throughout.
    fn run<T: Element>(&self, mut call: CheckedCall<'_, '_, T>) -> Result<(), AttnError> {
        let (inputs, params) = (call.inputs(), call.params());
        let par = call.par();
        let r = par.install(|| reference_on(inputs, params, par.threads() > 1))?;
        if call.wants_stats() {
            let st = par.install(|| crate::oracle_stats::reference_stats(inputs, params))?;
            let (_, _, stats) = call.outputs_and_stats();
            let stats = stats.expect("asked for");
            for (dst, x) in stats.max_p.iter_mut().zip(&st.max_p) {
                *dst = *x as f32;
            }
            for (dst, x) in stats.entropy.iter_mut().zip(&st.entropy) {
                *dst = *x as f32;
            }
        }
        let (out, mut lse) = call.outputs();
        let s = inputs.shape();
        let (nq, nk, dv) = (s.q_len(), s.kv_len(), s.v_dim());
        let faults = RowFaults::new();
        // f64 turns a −inf score into weight 0 silently, and the softcap
        // turns a +inf one into c: so that every kernel names a non-finite
        // Q or K element, or a NaN or +inf bias entry, that any row reads,
        // rows are checked one by one (by the repair) whenever Q, K or the
        // bias has one (a −inf bias entry is legitimate: it masks its key).
        let bad_bias = |b: &attn_core::TensorView<'_, f32>| {
            b.data().iter().any(|x| x.is_nan() || *x == f32::INFINITY)
        };
        let suspect = params.check_finite
            && (inputs.q.check_finite().is_err()
                || inputs.k.check_finite().is_err()
                || params.bias.as_ref().is_some_and(bad_bias));
        for b in 0..s.batch() {
            for h in 0..s.q_heads() {
                for i in 0..nq {
                    let idx = (b * s.q_heads() + h) * nq + i;
                    let row = out.row_mut(b, h, i);
                    for (o, x) in row.iter_mut().zip(&r.out[idx * dv..][..dv]) {
                        *o = *x as f32;
                    }
                    let l = r.lse[idx] as f32;
                    if let Some(lse) = lse.as_deref_mut() {
                        lse[idx] = l;
                    }
                    // non-finite inputs, or an LSE beyond f32: named by repair
                    let visible = !params.key_range(i, nq, nk).is_empty();
                    if visible && suspect || RowFaults::is_fault(visible, l, row) {
                        faults.report(idx);
                    }
                }
            }
        }
        crate::exact::repair_rows(inputs, params, faults, out, lse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attn_core::{Layout, Mask};

    #[test]
    fn single_key_returns_its_value() {
        let shape = AttnShape::builder()
            .batch(1)
            .q_heads(1)
            .kv_heads(1)
            .q_len(2)
            .kv_len(1)
            .head_dim(2)
            .v_dim(3)
            .build()
            .unwrap();
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
        let shape = AttnShape::builder()
            .batch(1)
            .q_heads(1)
            .kv_heads(1)
            .q_len(3)
            .kv_len(3)
            .head_dim(1)
            .v_dim(1)
            .build()
            .unwrap();
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
    fn exact_at_any_logit_magnitude() {
        // Constant Q = K = x, V = 1: every weight is equal, so the output
        // is exactly 1 however large the logits are.
        for x in [1e3f32, 1e7, 1e8, 1e9, 1e15, 1e18, 1e30] {
            let shape = AttnShape::builder()
                .batch(1)
                .q_heads(1)
                .kv_heads(1)
                .q_len(2)
                .kv_len(5)
                .head_dim(2)
                .v_dim(1)
                .build()
                .unwrap();
            let (q, k, v) = ([x; 4], [x; 10], [1.0f32; 5]);
            let inp = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
            let r = reference(&inp, &AttnParams::default());
            assert_eq!(r.out, vec![1.0, 1.0], "x = {x}");
            let rows = reference_rows(&inp, &AttnParams::default(), &[(0, 0, 1)]);
            assert_eq!(rows[0].0, vec![1.0]);
            assert_eq!(rows[0].1, r.lse[1]);
        }
    }

    #[test]
    fn fully_masked_rows_are_zero_with_neg_inf_lse() {
        // Nq = 3 > Nk = 1 with causal: the first two rows see nothing.
        let shape = AttnShape::builder()
            .batch(1)
            .q_heads(1)
            .kv_heads(1)
            .q_len(3)
            .kv_len(1)
            .head_dim(1)
            .v_dim(1)
            .build()
            .unwrap();
        let inp =
            AttnInputs::from_slices(shape, Layout::Bhnd, &[1.0f32; 3], &[1.0], &[7.0]).unwrap();
        let r = reference(&inp, &AttnParams::with_mask(Mask::Causal));
        assert_eq!(r.out, vec![0.0, 0.0, 7.0]);
        assert_eq!(r.lse[..2], [f64::NEG_INFINITY; 2]);
    }
}
