//! Exact recomputation, in f64, of the rows a fast kernel could not
//! evaluate in f32 (see `attn_core::faults`).
//!
//! A reported row is recomputed by the oracle's [`reference_row`]. With
//! `check_finite` on, a row that read a NaN or an infinity is an error
//! naming the first such element (Q, then each visible key's K and V row);
//! otherwise the exact result is written — also for finite inputs whose
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
    /// reads is an error, `locate` giving its tensor and flat index; an LSE
    /// beyond f32 is an error when `want_lse`. `scores` is a reusable
    /// buffer.
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
        let l = reference_row(self.q, self.keys.clone(), scale, self.row, kr, vr, scores, out);
        if want_lse && l.is_finite() && (l as f32).is_infinite() {
            let RowAt { b: batch, h: head, i: row, .. } = self.row;
            return Err(AttnError::ScoreOverflow { batch, head, row, lse: l });
        }
        Ok(l as f32)
    }
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
            row: RowAt::new(&mods, b, h, i, nq, nk),
            q: q.row(b, h, i),
            keys: params.mask.key_range(i, nq, nk),
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
