//! Score modifiers: an additive bias, ALiBi, a logit softcap and attention
//! sinks — their parameters, their validation and their f64 definition,
//! which every kernel's tests compare against.
//!
//! Order of operations for query row `i` of head `h` and key `j`
//! (`docs/semantics.md`), with `diag = i + Nk − Nq` (the bottom-right
//! aligned diagonal, as for masks):
//!
//! ```text
//! s  = scale · q·k
//! s += bias[b, h, i, j]                      (if given; broadcast over size-1 dims)
//! s −= slope_h · |diag − j|                  (ALiBi, if given)
//! s  = c · tanh(s / c)                       (softcap c > 0, if given; −inf stays −inf)
//! mask: invisible keys drop out              (a −inf score acts as a masked key)
//! lse = ln(exp(sink_h) + Σ_j exp(s_j))       (the sink only if given)
//! o   = Σ_j exp(s_j − lse) · v_j             (the sink has no value)
//! ```
//!
//! A sink changes a finished row only by a factor: with the row's LSE
//! without the sink `λ`, `lse = ln(eᵝ + e^λ)` and `o = o_λ · e^(λ − lse)`
//! ([`with_sink`]), so kernels apply it after the row is done.

use crate::error::AttnError;
use crate::shape::AttnShape;
use crate::view::TensorView;

/// ALiBi slopes: a per-head linear penalty on the distance from the
/// diagonal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alibi<'a> {
    /// The geometric sequence of the ALiBi paper for the call's `Hq`
    /// ([`default_alibi_slopes`]).
    Default,
    /// One slope per query head, each finite.
    Slopes(&'a [f32]),
}

/// The ALiBi paper's slopes for `heads` heads (Press et al. 2022, and
/// their reference code): for `n` a power of two, head `h` (0-based) gets
/// `2^(−8(h+1)/n)`; otherwise the slopes of the largest power of two
/// `m < n`, followed by every other slope of `2m`, `n − m` of them.
pub fn default_alibi_slopes(heads: usize) -> Vec<f32> {
    fn pow2(n: usize) -> Vec<f64> {
        (0..n).map(|h| 2f64.powf(-8.0 * (h + 1) as f64 / n as f64)).collect()
    }
    if heads == 0 {
        return Vec::new();
    }
    let m = 1usize << heads.ilog2();
    let mut s = pow2(m);
    if m < heads {
        s.extend(pow2(2 * m).into_iter().step_by(2).take(heads - m));
    }
    s.into_iter().map(|x| x as f32).collect()
}

/// The logit softcap in f64: `c·tanh(s/c)`, with `−inf` kept (a masked
/// key stays masked).
#[inline]
pub fn softcap_f64(s: f64, c: f64) -> f64 {
    if s == f64::NEG_INFINITY { s } else { c * (s / c).tanh() }
}

/// A sink logit `sink` added to a finished row whose LSE without it is
/// `lse`: returns the new LSE `ln(e^sink + e^lse)` and the factor
/// `e^(lse − new)` that scales the row's output. A fully masked row
/// (`lse = −inf`) gets the sink's LSE and factor 0.
#[inline]
pub fn with_sink(lse: f32, sink: f32) -> (f32, f32) {
    if lse == f32::NEG_INFINITY {
        return (sink, 0.0);
    }
    let (hi, lo) = if lse >= sink { (lse, sink) } else { (sink, lse) };
    let new = hi + (lo - hi).exp().ln_1p();
    (new, (lse - new).exp())
}

/// [`with_sink`] in f64.
#[inline]
pub fn with_sink_f64(lse: f64, sink: f64) -> (f64, f64) {
    if lse == f64::NEG_INFINITY {
        return (sink, 0.0);
    }
    let (hi, lo) = if lse >= sink { (lse, sink) } else { (sink, lse) };
    let new = hi + (lo - hi).exp().ln_1p();
    (new, (lse - new).exp())
}

/// The modifiers of one call, resolved against its number of query heads
/// (the slopes of every head, borrowed or computed once). Cheap to build;
/// kernels build one per call.
#[derive(Debug, Clone, Default)]
pub struct ScoreMods<'a> {
    /// The softcap `c`, if any.
    pub softcap: Option<f32>,
    /// One ALiBi slope per query head, if ALiBi is on.
    pub slopes: Option<Vec<f32>>,
    /// One sink logit per query head, if any.
    pub sinks: Option<&'a [f32]>,
    /// The additive bias, logical `[B|1, Hq|1, Nq, Nk]`, if any.
    pub bias: Option<TensorView<'a, f32>>,
}

impl<'a> ScoreMods<'a> {
    /// The modifiers of `params` for `q_heads` query heads (parameters
    /// already validated).
    pub fn new(params: &crate::params::AttnParams<'a>, q_heads: usize) -> ScoreMods<'a> {
        ScoreMods {
            softcap: params.softcap,
            slopes: params.alibi.map(|a| match a {
                Alibi::Default => default_alibi_slopes(q_heads),
                Alibi::Slopes(s) => s.to_vec(),
            }),
            sinks: params.sinks,
            bias: params.bias,
        }
    }

    /// Whether anything changes the scores (bias, ALiBi or softcap); sinks
    /// only rescale finished rows.
    #[inline]
    pub fn touches_scores(&self) -> bool {
        self.softcap.is_some() || self.slopes.is_some() || self.bias.is_some()
    }

    /// Whether the call is the plain attention (no modifier at all).
    #[inline]
    pub fn is_plain(&self) -> bool {
        !self.touches_scores() && self.sinks.is_none()
    }

    /// Head `h`'s ALiBi slope.
    #[inline]
    pub fn slope(&self, h: usize) -> Option<f32> {
        self.slopes.as_ref().map(|s| s[h])
    }

    /// Head `h`'s sink logit.
    #[inline]
    pub fn sink(&self, h: usize) -> Option<f32> {
        self.sinks.map(|s| s[h])
    }

    /// The bias row of query row `(b, h, i)`: `Nk` values (size-1 batch
    /// and head dims broadcast).
    #[inline]
    pub fn bias_row(&self, b: usize, h: usize, i: usize) -> Option<&'a [f32]> {
        self.bias.map(|x| {
            let [bb, hh, _, _] = x.dims();
            x.row(if bb == 1 { 0 } else { b }, if hh == 1 { 0 } else { h }, i)
        })
    }

    /// Flat index in the bias buffer of element `(b, h, i, j)` (after
    /// broadcasting), for error messages.
    pub fn bias_index(&self, b: usize, h: usize, i: usize, j: usize) -> Option<usize> {
        self.bias.map(|x| {
            let [bb, hh, _, _] = x.dims();
            x.offset(if bb == 1 { 0 } else { b }, if hh == 1 { 0 } else { h }, i) + j
        })
    }

    /// The modified score, in f64, of query row `(b, h, ·)` on the
    /// diagonal `diag` and key `j`, from `s = scale·q·k` (the definition in
    /// the module docs, before the mask and the sink).
    #[inline]
    pub fn score_f64(&self, s: f64, b: usize, h: usize, i: usize, diag: i64, j: usize) -> f64 {
        let mut s = s;
        if let Some(row) = self.bias_row(b, h, i) {
            s += row[j] as f64;
        }
        if let Some(slope) = self.slope(h) {
            s -= slope as f64 * (diag - j as i64).unsigned_abs() as f64;
        }
        match self.softcap {
            Some(c) => softcap_f64(s, c as f64),
            None => s,
        }
    }
}

/// Checks the modifiers of `params` against `shape`, naming the parameter:
/// softcap finite and `> 0`; slopes and sinks one finite value per query
/// head; bias dims `[B|1, Hq|1, Nq, Nk]`.
pub(crate) fn validate(
    params: &crate::params::AttnParams<'_>,
    shape: &AttnShape,
) -> Result<(), AttnError> {
    let param = |name, reason: String| Err(AttnError::Param { name, reason });
    if let Some(c) = params.softcap
        && !(c.is_finite() && c > 0.0)
    {
        return param("softcap", format!("must be finite and > 0, got {c}"));
    }
    let per_head = |name: &'static str, v: &[f32]| {
        if v.len() != shape.q_heads() {
            return param(
                name,
                format!("expected one value per q head ({}), got {}", shape.q_heads(), v.len()),
            );
        }
        match v.iter().position(|x| !x.is_finite()) {
            Some(i) => param(name, format!("must be finite, got {} for q head {i}", v[i])),
            None => Ok(()),
        }
    };
    if let Some(Alibi::Slopes(s)) = params.alibi {
        per_head("alibi slopes", s)?;
    }
    if let Some(s) = params.sinks {
        per_head("sinks", s)?;
    }
    if let Some(bias) = &params.bias {
        let got = bias.dims();
        let want = [shape.batch(), shape.q_heads(), shape.q_len(), shape.kv_len()];
        const NAMES: [&str; 4] =
            ["batch entries (or 1)", "q heads (or 1)", "query positions", "key positions"];
        for d in 0..4 {
            let broadcast = d < 2 && got[d] == 1;
            if got[d] != want[d] && !broadcast {
                return Err(AttnError::Dim {
                    tensor: bias.name(),
                    dim: NAMES[d],
                    expected: want[d],
                    got: got[d],
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_slopes_follow_the_paper() {
        let s8 = default_alibi_slopes(8);
        let want: Vec<f32> = (1..=8).map(|k| 0.5f32.powi(k)).collect();
        assert_eq!(s8, want);
        // 12 heads: the 8 slopes of 8, then slopes 1, 3, 5, 7 (0-based
        // 0, 2, 4, 6) of 16: 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
        let s12 = default_alibi_slopes(12);
        assert_eq!(&s12[..8], &want[..]);
        for (k, e) in [0.5f64, 1.5, 2.5, 3.5].iter().enumerate() {
            assert!((s12[8 + k] as f64 - 2f64.powf(-e)).abs() < 1e-7);
        }
        assert_eq!(default_alibi_slopes(1), vec![2f32.powi(-8)]);
        assert!(default_alibi_slopes(0).is_empty());
    }

    #[test]
    fn sink_rescales_a_finished_row() {
        // Row with lse λ = ln 3 and a sink of ln 1 = 0: denominator 4.
        let (lse, f) = with_sink(3f32.ln(), 0.0);
        assert!((lse - 4f32.ln()).abs() < 1e-6);
        assert!((f - 0.75).abs() < 1e-6);
        // Fully masked row: the sink's LSE, output 0.
        assert_eq!(with_sink(f32::NEG_INFINITY, 2.5), (2.5, 0.0));
        // Extreme sinks: no overflow either way.
        let (lse, f) = with_sink(1.0, 1e4);
        assert_eq!((lse, f), (1e4, 0.0));
        let (lse, f) = with_sink(1.0, -1e4);
        assert_eq!((lse, f), (1.0, 1.0));
    }

    #[test]
    fn softcap_keeps_minus_infinity() {
        assert_eq!(softcap_f64(f64::NEG_INFINITY, 5.0), f64::NEG_INFINITY);
        assert!((softcap_f64(1e9, 5.0) - 5.0).abs() < 1e-12);
        assert!((softcap_f64(0.1, 1e6) - 0.1).abs() < 1e-15);
    }
}
