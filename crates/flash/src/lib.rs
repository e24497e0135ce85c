//! # attn-flash
//!
//! The tiled online-softmax kernel (FlashAttention-2 forward) — being built.

use attn_core::{
    AttentionKernel, AttnError, AttnInputs, AttnParams, AttnShape, Element, Par, TensorViewMut,
    validate_call,
};

/// The tiled kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flash;

impl AttentionKernel for Flash {
    fn name(&self) -> &'static str {
        "flash"
    }
    fn workspace_bytes(&self, _: &AttnShape, _: &AttnParams, _: Par) -> usize {
        0
    }
    fn forward<T: Element>(
        &self,
        inputs: &AttnInputs<'_, T>,
        out: &mut TensorViewMut<'_>,
        lse: Option<&mut [f32]>,
        params: &AttnParams,
        _par: Par,
    ) -> Result<(), AttnError> {
        validate_call(inputs, out, lse.as_deref(), params)?;
        Err(AttnError::Unsupported { what: "the flash kernel is not built yet".into() })
    }
}
