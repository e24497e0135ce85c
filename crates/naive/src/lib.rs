//! # attn-naive
//!
//! Two reference implementations of `O = softmax(Q·Kᵀ·scale + mask)·V`,
//! with the score modifiers of `attn_core::modifiers` (bias, ALiBi,
//! softcap, sinks) in every path, forward and backward (shapes, layouts
//! and conventions in `attn-core`):
//!
//! - [`oracle`]: scalar, f64 accumulation, one query row at a time, written
//!   to be obviously right. Every test in the workspace compares against it.
//! - [`naive`]: the standard O(N²) kernel in f32 that materializes the full
//!   score matrix `[B, Hq, Nq, Nk]` as framework math paths do: two blocked
//!   GEMMs per head (`matrixmultiply`, the same design as OpenBLAS's sgemm)
//!   and a vectorized softmax in between, parallel over (batch, head). A fair
//!   baseline, not a strawman; its workspace grows as `B·Hq·Nq·Nk·4` bytes.
//!
//! Gradients ([`attn_core::BackwardKernel`]): [`oracle_backward`] (f64,
//! the ground truth of every gradient test) and [`backward`] (the O(N²)
//! baseline that materialises `P`, `dP` and `dS`).
//!
//! [`oracle_stats`]: the saturation statistics (max probability,
//! entropy) of every row in f64.
//!
//! [`exact`] recomputes, with the oracle, the rows a fast kernel could not
//! evaluate in f32 (non-finite inputs or bias entries, logits or sums
//! beyond f32, rows a `−inf` bias masks entirely).

#![warn(missing_docs)]

pub mod backward;
pub mod exact;
pub mod naive;
pub mod oracle;
pub mod oracle_backward;
pub mod oracle_stats;

pub use naive::Naive;
pub use oracle::{Oracle, Reference, RowAt, reference, reference_row, reference_rows};
pub use oracle_backward::{ReferenceGrads, reference_backward, reference_dq_rows};
pub use oracle_stats::{ReferenceStats, reference_stats};
