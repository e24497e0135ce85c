//! Call parameters: scale, mask, input checks and score modifiers.

use crate::error::AttnError;
use crate::mask::Mask;
use crate::modifiers::Alibi;
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
    /// Checks the parameters against the call's shape: [`Self::validate`]
    /// and the modifiers (softcap, per-head slopes and sinks, bias dims).
    pub fn validate_for(&self, shape: &AttnShape) -> Result<(), AttnError> {
        self.validate()?;
        crate::modifiers::validate(self, shape)
    }
    /// The same parameters without any score modifier.
    pub fn plain(&self) -> AttnParams<'static> {
        AttnParams {
            scale: self.scale,
            mask: self.mask,
            check_finite: self.check_finite,
            ..Default::default()
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
