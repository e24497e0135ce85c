//! Exact recomputation, in f64, of the rows a fast kernel could not
//! evaluate in f32 (see `attn_core::faults`).
//!
//! A reported row is recomputed by the oracle's [`reference_row`]. With
//! `check_finite` on, a row that read a NaN or an infinity is an error
//! naming the first such element (Q, then each visible key's K and V row,
//! then the row's bias entries of its visible keys, where a NaN or `+inf`
//! counts and a `−inf`, which masks its key, does not); otherwise the
//! exact result is written — also for finite inputs whose
//! f32 evaluation overflowed (logits beyond f32, `Σ p·v` beyond f32). The
//! only finite input that still fails is an LSE that is asked for and
//! beyond f32's range ([`AttnError::ScoreOverflow`]).

use std::ops::Range;

use attn_core::{AttnError, AttnInputs, AttnParams, Element, RowFaults, ScoreMods, TensorViewMut};

use crate::oracle::{RowAt, reference_row};

/// The first non-finite input element a row reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    /// Element `c` of the query row.
    Q(usize),
    /// Element `c` of key `j`: `(j, c)`.
    K(usize, usize),
    /// Element `c` of value `j`: `(j, c)`.
    V(usize, usize),
}

/// The first non-finite element among the query row, then the K and V
/// rows of the visible keys, in order; `None` when all are finite.
pub fn find_culprit<'r, Tq: Element, Tk: Element + 'r, Tv: Element + 'r>(
    q: &[Tq],
    keys: Range<usize>,
    k_row: impl Fn(usize) -> &'r [Tk],
    v_row: impl Fn(usize) -> &'r [Tv],
) -> Option<Culprit> {
    if let Some(c) = q.iter().position(|x| !x.to_f32().is_finite()) {
        return Some(Culprit::Q(c));
    }
    for j in keys {
        if let Some(c) = k_row(j).iter().position(|x| !x.to_f32().is_finite()) {
            return Some(Culprit::K(j, c));
        }
        if let Some(c) = v_row(j).iter().position(|x| !x.to_f32().is_finite()) {
            return Some(Culprit::V(j, c));
        }
    }
    None
}

/// One reported row and where its inputs are: what [`ExactRow::recompute`]
/// needs, whatever stores K and V (views of a call, a KV cache).
pub struct ExactRow<'r, Tq, Tk, Tv> {
    /// The row's place `(b, h, i)` and diagonal, and the call's modifiers.
    pub row: RowAt<'r, 'r>,
    /// The query row.
    pub q: &'r [Tq],
    /// Its visible keys.
    pub keys: Range<usize>,
    /// K row `j` of the row's K/V head.
    pub k_row: &'r dyn Fn(usize) -> &'r [Tk],
    /// V row `j` of the row's K/V head.
    pub v_row: &'r dyn Fn(usize) -> &'r [Tv],
}

impl<Tq: Element, Tk: Element, Tv: Element> ExactRow<'_, Tq, Tk, Tv> {
    /// The row's exact output into `out` and its LSE (see the module
    /// docs): with `check_finite`, the first non-finite element the row
    /// reads is an error, `locate` giving the tensor and flat index of a Q,
    /// K or V element (a bias entry is named by the bias view's name and
    /// [`ScoreMods::bias_index`]); an LSE beyond f32 is an error when
    /// `want_lse`. A row whose every visible key has a `−inf` score is
    /// fully masked: output 0, LSE `−inf` (or its sink). `scores` is a
    /// reusable buffer.
    pub fn recompute(
        &self,
        scale: f64,
        check_finite: bool,
        want_lse: bool,
        locate: impl Fn(Culprit) -> (&'static str, usize),
        scores: &mut Vec<f64>,
        out: &mut [f64],
    ) -> Result<f32, AttnError> {
        let (kr, vr) = (self.k_row, self.v_row);
        if check_finite && let Some(c) = find_culprit(self.q, self.keys.clone(), kr, vr) {
            let value = match c {
                Culprit::Q(c) => self.q[c].to_f32(),
                Culprit::K(j, c) => kr(j)[c].to_f32(),
                Culprit::V(j, c) => vr(j)[c].to_f32(),
            };
            let (tensor, index) = locate(c);
            return Err(AttnError::NonFinite { tensor, index, value });
        }
        let RowAt { mods, b, h, i, .. } = self.row;
        if check_finite
            && let Some(j) = find_bias_culprit(mods.bias_row(b, h, i), self.keys.clone())
            && let (Some(bias), Some(index)) = (mods.bias, mods.bias_index(b, h, i, j))
        {
            let value = bias.data()[index];
            return Err(AttnError::NonFinite { tensor: bias.name(), index, value });
        }
        let l = reference_row(self.q, self.keys.clone(), scale, self.row, kr, vr, scores, out);
        if want_lse && l.is_finite() && (l as f32).is_infinite() {
            let RowAt { b: batch, h: head, i: row, .. } = self.row;
            return Err(AttnError::ScoreOverflow { batch, head, row, lse: l });
        }
        Ok(l as f32)
    }
}

/// The first visible key `j` whose bias entry is NaN or `+inf` (a `−inf`
/// entry is legitimate: it masks the key); `None` without a bias.
pub fn find_bias_culprit(bias_row: Option<&[f32]>, keys: Range<usize>) -> Option<usize> {
    let row = bias_row?;
    keys.into_iter().find(|&j| row[j].is_nan() || row[j] == f32::INFINITY)
}

/// Recomputes the rows in `faults` of a call on `inputs` exactly and
/// writes them into `out` and `lse` (see the module docs).
pub fn repair_rows<T: Element>(
    inputs: &AttnInputs<'_, T>,
    params: &AttnParams,
    faults: RowFaults,
    out: &mut TensorViewMut<'_>,
    mut lse: Option<&mut [f32]>,
) -> Result<(), AttnError> {
    let rows = faults.into_sorted();
    if rows.is_empty() {
        return Ok(());
    }
    let s = inputs.shape();
    let (nq, nk) = (s.q_len(), s.kv_len());
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (s.head_dim() as f64).sqrt());
    let (q, k, v) = (&inputs.q, &inputs.k, &inputs.v);
    let (mut scores, mut o) = (Vec::new(), vec![0f64; s.v_dim()]);
    let mods = ScoreMods::new(params, s.q_heads());
    for row in rows {
        let (bh, i) = (row / nq, row % nq);
        let (b, h) = (bh / s.q_heads(), bh % s.q_heads());
        let g = s.kv_head_of(h);
        let (kr, vr) = (|j| k.row(b, g, j), |j| v.row(b, g, j));
        let exact = ExactRow {
            row: RowAt::in_call(&mods, params, (b, h, i), nq, nk),
            q: q.row(b, h, i),
            keys: params.key_range(i, nq, nk),
            k_row: &kr,
            v_row: &vr,
        };
        let locate = |c| match c {
            Culprit::Q(c) => (q.name(), q.offset(b, h, i) + c),
            Culprit::K(j, c) => (k.name(), k.offset(b, g, j) + c),
            Culprit::V(j, c) => (v.name(), v.offset(b, g, j) + c),
        };
        let want_lse = lse.is_some();
        let l =
            exact.recompute(scale, params.check_finite, want_lse, locate, &mut scores, &mut o)?;
        if let Some(lse) = lse.as_deref_mut() {
            lse[row] = l;
        }
        for (dst, x) in out.row_mut(b, h, i).iter_mut().zip(&o) {
            *dst = *x as f32;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Oracle;
    use attn_core::{AttentionKernel, AttnShape, Layout, Par, TensorView};

    const NQ: usize = 3;
    const NK: usize = 4;

    fn shape() -> AttnShape {
        let b = AttnShape::builder().batch(2).q_heads(2).kv_heads(1);
        b.q_len(NQ).kv_len(NK).head_dim(2).v_dim(2).build().unwrap()
    }

    /// Every row of a call recomputed by [`repair_rows`] (what a fast
    /// kernel's reported rows go through), and the same call through the
    /// oracle kernel; both must agree, bit for bit.
    fn both(
        bias: &[f32],
        name: &'static str,
        p: AttnParams,
    ) -> Result<(Vec<f32>, Vec<f32>), AttnError> {
        let s = shape();
        let n = |d: [usize; 4]| d.iter().product::<usize>();
        let val = |k: usize, i: usize| ((i * 7 + k) % 5) as f32 * 0.25 - 0.5;
        let (q, k, v): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            (0..n(s.q_dims())).map(|i| val(1, i)).collect(),
            (0..n(s.k_dims())).map(|i| val(2, i)).collect(),
            (0..n(s.v_dims())).map(|i| val(3, i)).collect(),
        );
        let inp = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
        let bv = TensorView::new(name, bias, [2, 1, NQ, NK], Layout::Bhnd).unwrap();
        let p = AttnParams { bias: Some(bv), ..p };
        p.validate_for(&s).unwrap();
        let mut out = vec![f32::NAN; n(s.out_dims())];
        let mut lse = vec![f32::NAN; s.lse_len()];
        let mut ov = TensorViewMut::new("out", &mut out, s.out_dims(), Layout::Bhnd).unwrap();
        let faults = RowFaults::new();
        (0..s.lse_len()).for_each(|r| faults.report(r));
        let repaired = repair_rows(&inp, &p, faults, &mut ov, Some(&mut lse)).map(|_| ());
        let mut out2 = vec![f32::NAN; n(s.out_dims())];
        let mut lse2 = vec![f32::NAN; s.lse_len()];
        let mut ov2 = TensorViewMut::new("out", &mut out2, s.out_dims(), Layout::Bhnd).unwrap();
        let oracle = Oracle.forward(&inp, &mut ov2, Some(&mut lse2), &p, Par::Seq);
        assert_eq!(format!("{repaired:?}"), format!("{oracle:?}"));
        repaired?;
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!((bits(&out), bits(&lse)), (bits(&out2), bits(&lse2)));
        Ok((out, lse))
    }

    /// Flat index of bias element (b, 0, i, j) in the [2, 1, Nq, Nk] view.
    fn at(b: usize, i: usize, j: usize) -> usize {
        (b * NQ + i) * NK + j
    }

    #[test]
    fn minus_infinity_bias_masks_keys_and_whole_rows() {
        let mut bias = vec![0.5f32; 2 * NQ * NK];
        bias[at(0, 0, 1)] = f32::NEG_INFINITY;
        bias[at(1, 2, 0)..=at(1, 2, NK - 1)].fill(f32::NEG_INFINITY); // row 2 of batch 1
        let (out, lse) = both(&bias, "bias", AttnParams::default()).unwrap();
        for h in 0..2 {
            let r = (2 + h) * NQ + 2; // (b = 1, h, i = 2)
            assert_eq!(lse[r], f32::NEG_INFINITY);
            assert_eq!(&out[r * 2..][..2], &[0.0, 0.0]);
        }
        assert!(out.iter().all(|x| x.is_finite()));
        assert_eq!(lse.iter().filter(|x| x.is_finite()).count(), 10);
        // Key 1 of row (0, h, 0) is masked: the same result as a finite
        // bias low enough that exp underflows to 0 in f64.
        let mut low = bias.clone();
        low[at(0, 0, 1)] = -1e30;
        let (out_low, lse_low) = both(&low, "bias", AttnParams::default()).unwrap();
        assert_eq!((&out[..2 * NQ * 2], &lse[..2 * NQ]), (&out_low[..12], &lse_low[..6]));
        let sinks = [1.5f32, -2.0];
        let p = AttnParams { sinks: Some(&sinks), softcap: Some(2.0), ..Default::default() };
        let (out, lse) = both(&bias, "bias", p).unwrap();
        for (h, sink) in sinks.iter().enumerate() {
            let r = (2 + h) * NQ + 2;
            assert_eq!(lse[r], *sink, "a fully masked row with a sink has the sink's LSE");
            assert_eq!(&out[r * 2..][..2], &[0.0, 0.0]);
        }
        assert!(out.iter().chain(&lse).all(|x| x.is_finite()));
    }

    #[test]
    fn nan_or_plus_infinity_bias_is_named_where_read() {
        for bad in [f32::NAN, f32::INFINITY] {
            let mut bias = vec![0.25f32; 2 * NQ * NK];
            bias[at(1, 0, 3)] = bad;
            // Read by row (1, h, 0) without a mask: named, by the view's name.
            for p in
                [AttnParams::default(), AttnParams { softcap: Some(3.0), ..Default::default() }]
            {
                let e = both(&bias, "my_bias", p).unwrap_err();
                assert!(
                    matches!(e, AttnError::NonFinite { tensor: "my_bias", index, .. }
                        if index == at(1, 0, 3)),
                    "{e}"
                );
            }
            // Causal: row 0 sees keys 0..=1 only, so nothing reads it.
            both(&bias, "bias", AttnParams::causal()).unwrap();
            // Unchecked: the rows that read it are NaN (or, +inf without a
            // softcap, NaN too: inf − inf), the others exact.
            let p = AttnParams { check_finite: false, ..Default::default() };
            let (out, _) = both(&bias, "bias", p).unwrap();
            for (r, o) in out.chunks(2).enumerate() {
                let reads = r == 2 * NQ || r == 3 * NQ; // (1, 0, 0) and (1, 1, 0)
                assert_eq!(o.iter().all(|x| x.is_nan()), reads, "row {r}: {o:?}");
                assert!(reads || o.iter().all(|x| x.is_finite()));
            }
        }
        // A bias culprit comes after Q, K and V.
        assert_eq!(find_bias_culprit(Some(&[0.0, f32::NEG_INFINITY, f32::NAN]), 0..3), Some(2));
        assert_eq!(find_bias_culprit(Some(&[0.0, f32::NEG_INFINITY, f32::NAN]), 0..2), None);
        assert_eq!(find_bias_culprit(None, 0..2), None);
    }
}
