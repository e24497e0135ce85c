//! # attn-layer
//!
//! A multi-head attention layer on attnlab's kernels:
//!
//! ```text
//! Y = attention(X_q·W_Q + b_Q, X_kv·W_K + b_K, X_kv·W_V + b_V; params)·W_O + b_O
//! ```
//!
//! with `Hq` query heads of dimension `d` over `Hkv` key/value heads
//! (MHA, GQA, MQA), value dimension `dv`, and any mask or score modifier
//! the kernels take ([`attn_core::AttnParams`]: causal, windows, softcap,
//! ALiBi, sinks, bias). Self-attention passes the same tokens as `X_q` and
//! `X_kv`; cross-attention passes sequences of different lengths.
//!
//! Data: tokens are `[B, N, d_model]` row-major f32 ([`Tokens`]); weights
//! are row-major `W_Q [d_model, Hq·d]`, `W_K [d_model, Hkv·d]`,
//! `W_V [d_model, Hkv·dv]`, `W_O [Hq·dv, d_model]` ([`Weights`]). A
//! projection's output `[B·N, H·d]` is `[B, N, H, d]`, the kernels'
//! `Layout::Bnhd`, so no activation is ever transposed on the way to the
//! kernel or back.
//!
//! - [`MultiHeadAttention::forward`]: projections (blocked sgemm, rows
//!   split across the call's threads), the flash kernel, the output
//!   projection. [`MultiHeadAttention::forward_train`] keeps the
//!   activations for [`MultiHeadAttention::backward`], which goes back
//!   through the flash backward to `dX_q`, `dX_kv`, every `dW` and `db`
//!   (and the sink gradient).
//!   [`MultiHeadAttention::forward_train_with_stats`] and
//!   [`MultiHeadAttention::backward_with_stats`] also return the
//!   attention's saturation statistics (`attn_core::stats`), computed by
//!   the flash kernels in O(1) extra state per row.
//! - [`MultiHeadAttention::prefill`] / [`MultiHeadAttention::step`]:
//!   incremental decoding over an [`attn_flash::KvCache`], equal to the
//!   causal forward over the whole sequence; all-or-nothing on the cache.
//! - [`reference`](mod@reference): the same layer in f64 with its exact gradient, the
//!   ground truth of the tests.
//!
//! Invariants: a [`MultiHeadAttention`] holds only weights that fit its
//! [`LayerConfig`] and are finite (checked when made); every bad input is
//! an [`AttnError`] naming the tensor and the dimension; results are
//! bitwise identical for any [`Par`].
//!
//! Modules: [`config`] (sizes, initialisations), [`weights`] (parameters
//! and the layer), [`tokens`], `gemm` (the projections' products),
//! [`forward`], [`backward`], [`decode`], [`reference`](mod@reference).
//!
//! ```
//! use attn_layer::{Init, LayerConfig, MultiHeadAttention, Tokens};
//! use attn_core::{AttnParams, Par};
//! // d_model 32, 4 query heads over 2 K/V heads of dimension 8, with biases.
//! let layer = MultiHeadAttention::init(LayerConfig::new(32, 4, 2, 8).with_bias(true), Init::XavierUniform, 42)?;
//! let x: Vec<f32> = (0..2 * 10 * 32).map(|i| (i as f32 * 0.37).sin()).collect();
//! let x = Tokens::new("x", &x, [2, 10, 32])?; // batch 2, 10 tokens
//! let y = layer.forward(&x, &x, &AttnParams::causal(), Par::Seq)?;
//! assert_eq!(y.len(), 2 * 10 * 32);
//! # Ok::<(), attn_core::AttnError>(())
//! ```
//!
//! [`AttnError`]: attn_core::AttnError
//! [`Par`]: attn_core::Par

#![warn(missing_docs)]

pub mod backward;
pub mod config;
pub mod decode;
pub mod forward;
mod gemm;
pub mod reference;
pub mod tokens;
pub mod weights;

pub use backward::LayerGrads;
pub use config::{Init, LayerConfig};
pub use forward::{PhaseTimes, Trace};
pub use reference::{ReferenceGrads, ReferenceLayer, ReferenceTrace};
pub use tokens::Tokens;
pub use weights::{Matrix, MultiHeadAttention, Weights};
