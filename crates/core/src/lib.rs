//! # attn-core
//!
//! Types shared by every attnlab kernel; no kernels live here.
//!
//! The problem: `O = softmax(Q·Kᵀ·scale + mask)·V` for `B` batch entries,
//! `Hq` query heads and `Hkv` key/value heads, `Hq % Hkv == 0` (MHA when
//! equal, GQA otherwise, MQA when `Hkv = 1`). Query head `h` reads K/V head
//! `h / (Hq / Hkv)`; K/V are never copied per query head.
//!
//! Data: Q `[B, Hq, Nq, d]`, K `[B, Hkv, Nk, d]`, V `[B, Hkv, Nk, dv]`,
//! O `[B, Hq, Nq, dv]` as logical dims over flat slices, stored either
//! `[B, H, N, D]` or `[B, N, H, D]` ([`Layout`]); the last dim is always
//! contiguous. The LSE is `[B, Hq, Nq]`, contiguous.
//!
//! Invariants, fixed for the whole workspace (see `docs/semantics.md`):
//! bottom-right causal and windows ([`Mask`]); a fully masked row has
//! output 0 and LSE `-inf`; accumulation is f32 or wider for every storage
//! type; bad input is an [`AttnError`] naming tensor and dimension.
//!
//! Modules: [`shape`] (validated sizes), [`view`] (strided views),
//! [`mask`], [`params`] (scale, mask, finiteness checks, score
//! modifiers, chunk positions), [`positions`] (a chunk of a longer
//! problem: masks on global positions, for ring attention), [`modifiers`] (bias, ALiBi, softcap, sinks: their order
//! and f64 definition), [`par`]
//! ([`Par`]: how many threads a call runs on), [`element`]
//! (f32/f16/bf16), [`kernel`] (the [`AttentionKernel`] trait and
//! [`CheckedCall`], the one validation of a call), [`faults`] (rows a
//! kernel could not evaluate in f32, recomputed exactly), [`backward`]
//! (the gradient call: [`BackwardKernel`] and [`CheckedBackward`]),
//! [`error`].

#![warn(missing_docs)]

pub mod backward;
pub mod element;
pub mod error;
pub mod faults;
pub mod kernel;
pub mod mask;
pub mod modifiers;
pub mod par;
pub mod params;
pub mod positions;
pub mod shape;
pub mod stats;
pub mod view;

pub use backward::{BackwardInputs, BackwardKernel, CheckedBackward, GradsMut};
pub use element::Element;
pub use error::{AttnError, try_zeroed};
pub use faults::RowFaults;
pub use half::{bf16, f16};
pub use kernel::{AttentionKernel, AttnInputs, CheckedCall, check_outputs};
pub use mask::Mask;
pub use modifiers::{Alibi, ScoreMods};
pub use par::Par;
pub use params::AttnParams;
pub use positions::ChunkPositions;
pub use shape::{AttnShape, ShapeBuilder};
pub use stats::{BackwardStatsMut, StatsMut};
pub use view::{HeadRowsMut, Layout, TensorView, TensorViewMut};
