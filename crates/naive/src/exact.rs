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

use attn_core::{AttnError, AttnInputs, AttnParams, Element, RowFaults, TensorViewMut};

use crate::oracle::reference_row;

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
    for row in rows {
        let (bh, i) = (row / nq, row % nq);
        let (b, h) = (bh / s.q_heads(), bh % s.q_heads());
        let g = s.kv_head_of(h);
        let keys = params.mask.key_range(i, nq, nk);
        let (qr, kr, vr) = (q.row(b, h, i), |j| k.row(b, g, j), |j| v.row(b, g, j));
        if params.check_finite
            && let Some(c) = find_culprit(qr, keys.clone(), kr, vr)
        {
            let (tensor, index, x) = match c {
                Culprit::Q(c) => (q.name(), q.offset(b, h, i) + c, qr[c]),
                Culprit::K(j, c) => (k.name(), k.offset(b, g, j) + c, kr(j)[c]),
                Culprit::V(j, c) => (v.name(), v.offset(b, g, j) + c, vr(j)[c]),
            };
            return Err(AttnError::NonFinite { tensor, index, value: x.to_f32() });
        }
        let l = reference_row(qr, keys, scale, kr, vr, &mut scores, &mut o);
        if let Some(lse) = lse.as_deref_mut() {
            if l.is_finite() && (l as f32).is_infinite() {
                return Err(AttnError::ScoreOverflow { batch: b, head: h, row: i, lse: l });
            }
            lse[row] = l as f32;
        }
        for (dst, x) in out.row_mut(b, h, i).iter_mut().zip(&o) {
            *dst = *x as f32;
        }
    }
    Ok(())
}
