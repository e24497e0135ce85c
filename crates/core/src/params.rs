//! Call parameters: scale, mask, input checks and score modifiers.

use crate::error::AttnError;
use crate::mask::Mask;
use crate::modifiers::Alibi;
use crate::positions::ChunkPositions;
use crate::shape::AttnShape;
use crate::view::TensorView;

/// Parameters of one attention call. The score modifiers (`softcap`,
/// `alibi`, `sinks`, `bias`) are off by default; their order of operations
/// is in [`crate::modifiers`].
#[derive(Debug, Clone, Copy)]
pub struct AttnParams<'a> {
    /// Softmax scale; `None` = `1/sqrt(head_dim)`.
    pub scale: Option<f32>,
    /// Which keys each query sees.
    pub mask: Mask,
    /// Reject NaN/inf in Q, K, V that reach a result (default `true`): an
    /// error naming the tensor and index. In the forward kernels it costs
    /// no pass over the inputs (finished rows are checked, see
    /// `docs/semantics.md`); the backward scans its inputs first. Off,
    /// kernels propagate non-finite values as IEEE arithmetic does.
    pub check_finite: bool,
    /// Logit softcap `c > 0`: scores become `c·tanh(s/c)` (Gemma 2).
    pub softcap: Option<f32>,
    /// ALiBi: `−slope_h·|i + Nk − Nq − j|` added to the scores.
    pub alibi: Option<Alibi<'a>>,
    /// One sink logit per query head: enters each row's softmax
    /// denominator, with no value (gpt-oss).
    pub sinks: Option<&'a [f32]>,
    /// An additive bias, logical `[B|1, Hq|1, Nq, Nk]` (size-1 dims
    /// broadcast), f32; `−inf` entries mask their key. Prefill only.
    pub bias: Option<TensorView<'a, f32>>,
    /// Where the call's queries and keys sit in a longer sequence (a block
    /// of ring attention): the mask and ALiBi then apply to the global
    /// positions ([`crate::positions`]). `None` (the default): the call is
    /// the whole problem. Honoured by the oracle and flash's tiled forward;
    /// the other kernels and paths refuse it ([`Self::refuse_positions`]).
    pub positions: Option<ChunkPositions>,
}

impl Default for AttnParams<'_> {
    fn default() -> Self {
        AttnParams {
            scale: None,
            mask: Mask::None,
            check_finite: true,
            softcap: None,
            alibi: None,
            sinks: None,
            bias: None,
            positions: None,
        }
    }
}

impl<'a> AttnParams<'a> {
    /// Parameters with this mask and the defaults otherwise.
    pub fn with_mask(mask: Mask) -> Self {
        AttnParams { mask, ..Default::default() }
    }
    /// Bottom-right causal.
    pub fn causal() -> Self {
        Self::with_mask(Mask::Causal)
    }
    /// The scale in effect for `head_dim`.
    pub fn scale_for(&self, head_dim: usize) -> f32 {
        self.scale.unwrap_or(1.0 / (head_dim as f32).sqrt())
    }
    /// Checks the parameters against the call's shape: [`Self::validate`],
    /// the modifiers (softcap, per-head slopes and sinks, bias dims) and
    /// the chunk positions ([`ChunkPositions::validate`]).
    pub fn validate_for(&self, shape: &AttnShape) -> Result<(), AttnError> {
        self.validate()?;
        if let Some(p) = &self.positions {
            p.validate(shape)?;
        }
        crate::modifiers::validate(self, shape)
    }
    /// The same parameters without any score modifier (the mask and the
    /// chunk positions stay).
    pub fn plain(&self) -> AttnParams<'static> {
        AttnParams {
            scale: self.scale,
            mask: self.mask,
            check_finite: self.check_finite,
            positions: self.positions,
            ..Default::default()
        }
    }
    /// The diagonal offset of a call with `nq` queries over `nk` keys:
    /// query row `i` sits on key `i + diagonal` — `nk − nq` (bottom-right)
    /// without positions, the global diagonal in local keys with them
    /// ([`ChunkPositions::diagonal`]). What masks and ALiBi measure from.
    #[inline]
    pub fn diagonal(&self, nq: usize, nk: usize) -> i64 {
        match &self.positions {
            None => nk as i64 - nq as i64,
            Some(p) => p.diagonal(),
        }
    }
    /// Visible keys of query row `i` of a call with `nq` queries over `nk`
    /// keys, positions included: `mask.key_range_on(i + diagonal, nk)`.
    #[inline]
    pub fn key_range(&self, i: usize, nq: usize, nk: usize) -> std::ops::Range<usize> {
        self.mask.key_range_on(i as i64 + self.diagonal(nq, nk), nk)
    }
    /// An [`AttnError::Unsupported`] naming `who` when the call has chunk
    /// positions: for the kernels and paths that do not implement them,
    /// which must refuse rather than compute the wrong mask.
    pub fn refuse_positions(&self, who: &str) -> Result<(), AttnError> {
        match self.positions {
            Some(_) => Err(AttnError::Unsupported {
                what: format!(
                    "chunk positions (AttnParams::positions) in {who}: only the oracle and \
                     flash's forward compute a chunk at global positions"
                ),
            }),
            None => Ok(()),
        }
    }
    /// Checks the parameters that do not depend on the shape.
    pub fn validate(&self) -> Result<(), AttnError> {
        if let Some(s) = self.scale
            && !s.is_finite()
        {
            return Err(AttnError::Param {
                name: "scale",
                reason: format!("must be finite, got {s}"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_move_the_diagonal_of_masks() {
        // Without positions: bottom-right, 3 queries over 5 keys.
        let p = AttnParams::causal();
        assert_eq!(p.diagonal(3, 5), 2);
        assert_eq!(p.key_range(0, 3, 5), 0..3);
        // Queries 4..7 of 8 against keys 2..6 of 8: global query 4 sees
        // global keys 0..=4, i.e. local keys 0..=2.
        let pos = ChunkPositions { q_start: 4, kv_start: 2, q_total: 8, kv_total: 8 };
        let p = AttnParams { positions: Some(pos), ..AttnParams::causal() };
        assert_eq!(p.diagonal(3, 4), 2);
        assert_eq!(p.key_range(0, 3, 4), 0..3);
        assert_eq!(p.key_range(2, 3, 4), 0..4);
        // The same queries against keys 6..8: only global query 6 sees
        // (key 6).
        let pos = ChunkPositions { kv_start: 6, ..pos };
        let p = AttnParams { positions: Some(pos), ..p };
        assert!(p.key_range(0, 3, 2).is_empty() && p.key_range(1, 3, 2).is_empty());
        assert_eq!(p.key_range(2, 3, 2), 0..1);
    }

    #[test]
    fn positions_are_validated_and_refused_by_name() {
        let shape = crate::shape::tests::shape(1, 1, 1, 4, 4, 2, 2).unwrap();
        let pos = ChunkPositions { q_start: 2, kv_start: 0, q_total: 5, kv_total: 8 };
        let p = AttnParams { positions: Some(pos), ..Default::default() };
        let e = p.validate_for(&shape).unwrap_err();
        assert!(e.to_string().starts_with("positions: the 4 query positions"), "{e}");
        let e = p.refuse_positions("the naive kernel").unwrap_err();
        assert!(matches!(e, AttnError::Unsupported { .. }));
        assert!(e.to_string().contains("in the naive kernel"), "{e}");
        AttnParams::default().refuse_positions("x").unwrap();
        assert_eq!(p.plain().positions, Some(pos));
    }
}
