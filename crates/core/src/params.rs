//! Call parameters: scale, mask and input checks.

use crate::error::AttnError;
use crate::mask::Mask;

/// Parameters of one attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnParams {
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
}

impl Default for AttnParams {
    fn default() -> Self {
        AttnParams { scale: None, mask: Mask::None, check_finite: true }
    }
}

impl AttnParams {
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
    /// Checks the parameters themselves.
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
