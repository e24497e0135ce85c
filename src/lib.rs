//! # attnlab
//!
//! Memory-efficient scaled dot-product attention on CPUs,
//! `O = softmax(Q·Kᵀ·scale + mask)·V`, for MHA, GQA and MQA, with
//! bottom-right causal and sliding-window masks and the per-row
//! log-sum-exp. This crate re-exports the workspace:
//!
//! - `attn-core`, re-exported at the root: shapes, strided views, masks,
//!   errors, the [`AttentionKernel`] trait;
//! - [`naive`] (`attn-naive`): the f64 [`Oracle`] and the O(N²) [`Naive`]
//!   kernel;
//! - [`flash`] (`attn-flash`): the tiled [`Flash`] kernel;
//! - [`layer`] (`attn-layer`): the [`MultiHeadAttention`] layer
//!   (projections, backward, KV-cache decoding) and its f64 reference;
//! - [`ring`] (`attn-ring`): ring (context-parallel) attention over
//!   ranks joined by a transport (threads here, MPI behind a feature).
//!
//! [`Kernel`] names every kernel so that tools and tests can pick any of
//! them; [`attention`] is the one-call entry point, and
//! [`attention_backward`] its gradient (dQ, dK, dV from the forward's
//! output and LSE and the upstream gradient; see `docs/semantics.md`).
//!
//! ```
//! use attnlab::{AttnParams, AttnShape, attention};
//! let shape = AttnShape::builder().batch(1).q_heads(4).kv_heads(2).q_len(16).kv_len(16).head_dim(8).v_dim(8).build()?; // GQA, 2 q heads per kv head
//! let q = vec![0.5f32; 1 * 4 * 16 * 8];
//! let kv = vec![0.25f32; 1 * 2 * 16 * 8];
//! let r = attention(&shape, &q, &kv, &kv, &AttnParams::causal())?;
//! assert_eq!(r.out.len(), 1 * 4 * 16 * 8);
//! assert!((r.out[0] - 0.25).abs() < 1e-6);
//! # Ok::<(), attnlab::AttnError>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub use attn_flash as flash;
pub use attn_naive as naive;

pub use attn_core::{
    Alibi, AttentionKernel, AttnError, AttnInputs, AttnParams, AttnShape, CheckedCall,
    ChunkPositions, Element, HeadRowsMut, Layout, Mask, Par, ScoreMods, ShapeBuilder, StatsMut,
    TensorView, TensorViewMut, bf16, f16,
};
pub use attn_core::{
    BackwardInputs, BackwardKernel, BackwardStatsMut, CheckedBackward, GradsMut, backward,
};
pub use attn_core::{
    element, error, kernel, mask, modifiers, par, params, positions, shape, stats, view,
};
pub use attn_flash::BackwardWorkspace;
pub use attn_flash::Flash;
pub use attn_layer as layer;
pub use attn_layer::{Init, LayerConfig, LayerGrads, MultiHeadAttention, Tokens, Weights};
pub use attn_naive::{Naive, Oracle};
pub use attn_ring as ring;
pub use attn_simd as simd;
pub use attn_simd::{cpu, isa};

use std::fmt;
use std::str::FromStr;

/// Every kernel of the workspace, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Kernel {
    /// f64 accumulation, scalar: the ground truth.
    Oracle,
    /// O(N²): materializes the score matrix.
    Naive,
    /// Tiled online softmax, O(tile) extra memory. The default.
    #[default]
    Flash,
}

impl Kernel {
    /// All kernels, oracle first.
    pub const ALL: [Kernel; 3] = [Kernel::Oracle, Kernel::Naive, Kernel::Flash];

    /// Name as used on the command line and in results.
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Oracle => "oracle",
            Kernel::Naive => "naive",
            Kernel::Flash => "flash",
        }
    }

    /// Scratch bytes one call needs beyond inputs and outputs.
    pub fn workspace_bytes(&self, shape: &AttnShape, params: &AttnParams, par: Par) -> usize {
        match self {
            Kernel::Oracle => Oracle.workspace_bytes(shape, params, par),
            Kernel::Naive => Naive.workspace_bytes(shape, params, par),
            Kernel::Flash => Flash::default().workspace_bytes(shape, params, par),
        }
    }

    /// Runs this kernel (see [`AttentionKernel::forward`]).
    pub fn forward<T: Element>(
        &self,
        inputs: &AttnInputs<'_, T>,
        out: &mut TensorViewMut<'_>,
        lse: Option<&mut [f32]>,
        params: &AttnParams,
        par: Par,
    ) -> Result<(), AttnError> {
        match self {
            Kernel::Oracle => Oracle.forward(inputs, out, lse, params, par),
            Kernel::Naive => Naive.forward(inputs, out, lse, params, par),
            Kernel::Flash => Flash::default().forward(inputs, out, lse, params, par),
        }
    }

    /// Runs this kernel on a validated call (see [`AttentionKernel::run`]),
    /// e.g. one that asks for statistics ([`CheckedCall::with_stats`]).
    pub fn run<T: Element>(&self, call: CheckedCall<'_, '_, T>) -> Result<(), AttnError> {
        match self {
            Kernel::Oracle => Oracle.run(call),
            Kernel::Naive => Naive.run(call),
            Kernel::Flash => Flash::default().run(call),
        }
    }
}

impl Kernel {
    /// Scratch bytes one backward call needs beyond its inputs and the
    /// gradients.
    pub fn backward_workspace_bytes(
        &self,
        shape: &AttnShape,
        params: &AttnParams,
        par: Par,
    ) -> usize {
        match self {
            Kernel::Oracle => Oracle.backward_workspace_bytes(shape, params, par),
            Kernel::Naive => Naive.backward_workspace_bytes(shape, params, par),
            Kernel::Flash => Flash::default().backward_workspace_bytes(shape, params, par),
        }
    }

    /// Runs this kernel's backward pass (see [`BackwardKernel::backward`]).
    pub fn backward<T: Element>(
        &self,
        inputs: &BackwardInputs<'_, T>,
        grads: &mut GradsMut<'_>,
        params: &AttnParams,
        par: Par,
    ) -> Result<(), AttnError> {
        match self {
            Kernel::Oracle => Oracle.backward(inputs, grads, params, par),
            Kernel::Naive => Naive.backward(inputs, grads, params, par),
            Kernel::Flash => Flash::default().backward(inputs, grads, params, par),
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kernel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown kernel '{s}' (expected oracle, naive or flash)"))
    }
}

/// Output and per-row log-sum-exp of one call.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// `[B, Hq, Nq, dv]`, in the layout of the call.
    pub out: Vec<f32>,
    /// `[B, Hq, Nq]`, natural log, `-inf` for fully masked rows.
    pub lse: Vec<f32>,
}

/// Attention over contiguous `[B, H, N, D]` f32 buffers with the default
/// kernel ([`Kernel::Flash`]) on the current rayon pool.
pub fn attention(
    shape: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    params: &AttnParams,
) -> Result<Output, AttnError> {
    attention_with(shape, q, k, v, params, &Options::default())
}

/// How [`attention_with`] runs: which kernel, the buffers' layout, and the
/// parallelism. The default is the flash kernel, `[B, H, N, D]` and every
/// worker of the current rayon pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// The kernel.
    pub kernel: Kernel,
    /// Memory order of Q, K, V and the output.
    pub layout: Layout,
    /// Threads.
    pub par: Par,
}

/// Attention with an explicit kernel, layout and parallelism ([`Options`]),
/// on f32, f16 or bf16 inputs. The output and LSE buffers are allocated
/// here (an error, not an abort, if they do not fit in memory).
pub fn attention_with<T: Element>(
    shape: &AttnShape,
    q: &[T],
    k: &[T],
    v: &[T],
    params: &AttnParams,
    options: &Options,
) -> Result<Output, AttnError> {
    forward_allocating(shape, [q, k, v], params, options, false).map(|(o, _)| o)
}

/// One forward call on buffers allocated here: the output, the LSE and,
/// when `stats`, the statistics.
fn forward_allocating<T: Element>(
    shape: &AttnShape,
    [q, k, v]: [&[T]; 3],
    params: &AttnParams,
    options: &Options,
    stats: bool,
) -> Result<(Output, Option<Stats>), AttnError> {
    let Options { kernel, layout, par } = *options;
    let inputs = AttnInputs::from_slices(*shape, layout, q, k, v)?;
    let mut out = error::try_zeroed("out", shape.out_dims().iter().product())?;
    let mut lse = error::try_zeroed("lse", shape.lse_len())?;
    let mut view = TensorViewMut::new("out", &mut out, shape.out_dims(), layout)?;
    let call = CheckedCall::new(&inputs, &mut view, Some(&mut lse), params, par)?;
    if !stats {
        kernel.run(call)?;
        return Ok((Output { out, lse }, None));
    }
    let mut max_p = error::try_zeroed("max_p", shape.lse_len())?;
    let mut entropy = error::try_zeroed("entropy", shape.lse_len())?;
    kernel.run(call.with_stats(StatsMut { max_p: &mut max_p, entropy: &mut entropy })?)?;
    Ok((Output { out, lse }, Some(Stats { max_p, entropy })))
}

/// The saturation statistics of every row (`attn_core::stats`),
/// `[B, Hq, Nq]` each.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Largest probability of each row (sink included; 0 for a row with
    /// no key and no sink).
    pub max_p: Vec<f32>,
    /// Entropy of each row in nats (sink included; 0 for a row with no
    /// distribution).
    pub entropy: Vec<f32>,
}

impl Stats {
    /// The effective support `exp(H)` of each row: 1 for one dominant key,
    /// `n` for `n` equal keys.
    pub fn support(&self) -> Vec<f32> {
        self.entropy.iter().map(|h| h.exp()).collect()
    }
}

/// [`attention_with`] that also returns each row's saturation statistics,
/// computed inside the kernel in O(1) extra state per row (no `N²`
/// buffer). The flash kernel computes them on both its paths (tiled and
/// split-KV) and the oracle everywhere; the naive kernel refuses the call.
/// Decode over a KV cache: `flash::decode_with_stats`.
pub fn attention_with_stats<T: Element>(
    shape: &AttnShape,
    q: &[T],
    k: &[T],
    v: &[T],
    params: &AttnParams,
    options: &Options,
) -> Result<(Output, Stats), AttnError> {
    let (out, stats) = forward_allocating(shape, [q, k, v], params, options, true)?;
    Ok((out, stats.expect("asked for")))
}

/// The gradients of one backward call, in the layout of the call.
#[derive(Debug, Clone, PartialEq)]
pub struct Grads {
    /// `dQ`, `[B, Hq, Nq, d]`.
    pub dq: Vec<f32>,
    /// `dK`, `[B, Hkv, Nk, d]` (summed over each GQA group).
    pub dk: Vec<f32>,
    /// `dV`, `[B, Hkv, Nk, dv]` (summed over each GQA group).
    pub dv: Vec<f32>,
    /// The sink gradient, one per query head, when the call has sinks.
    pub dsinks: Option<Vec<f32>>,
}

/// Gradients of [`attention`] over contiguous `[B, H, N, D]` f32 buffers
/// with the flash kernel on the current rayon pool: given Q, K, V, the
/// forward's `out` and `lse` ([`Output`]) and the upstream gradient
/// `d_out` (shape of `out`), returns dQ, dK, dV (and the sink gradient
/// when `params` has sinks).
///
/// ```
/// use attnlab::{AttnParams, AttnShape, attention, attention_backward};
/// let shape = AttnShape::builder().q_heads(4).kv_heads(2).seq_len(16).head_dim(8).build()?;
/// let (q, kv) = (vec![0.5f32; 4 * 16 * 8], vec![0.25f32; 2 * 16 * 8]);
/// let p = AttnParams::causal();
/// let fwd = attention(&shape, &q, &kv, &kv, &p)?;
/// let d_out = vec![1.0f32; fwd.out.len()];
/// let g = attention_backward(&shape, &q, &kv, &kv, &fwd.out, &fwd.lse, &d_out, &p)?;
/// assert_eq!((g.dq.len(), g.dk.len(), g.dv.len()), (q.len(), kv.len(), kv.len()));
/// // Constant keys: row i weighs its i + 1 visible keys equally, so dS = 0
/// // (dQ = dK = 0), and dV of the last key is 1/16 from each of the two
/// // query heads of its group (only row 15 sees it).
/// assert!(g.dq.iter().chain(&g.dk).all(|x| x.abs() < 1e-6));
/// assert!((g.dv[15 * 8] - 2.0 / 16.0).abs() < 1e-6);
/// # Ok::<(), attnlab::AttnError>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    shape: &AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    params: &AttnParams,
) -> Result<Grads, AttnError> {
    attention_backward_with(shape, q, k, v, out, lse, d_out, params, &Options::default())
}

/// [`attention_backward`] with an explicit kernel, layout and parallelism
/// ([`Options`]), on f32, f16 or bf16 Q, K, V (O, LSE, dO and the
/// gradients are f32). The gradient buffers are allocated here. Errors
/// name the tensor and dimension (`out`, `lse`, `d_out` mismatches too).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_with<T: Element>(
    shape: &AttnShape,
    q: &[T],
    k: &[T],
    v: &[T],
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    params: &AttnParams,
    options: &Options,
) -> Result<Grads, AttnError> {
    let Options { kernel, layout, par } = *options;
    let inputs = BackwardInputs::from_slices(*shape, layout, q, k, v, out, lse, d_out)?;
    let n = |dims: [usize; 4]| dims.iter().product::<usize>();
    let mut dq = error::try_zeroed("dq", n(shape.q_dims()))?;
    let mut dk = error::try_zeroed("dk", n(shape.k_dims()))?;
    let mut dv = error::try_zeroed("dv", n(shape.v_dims()))?;
    let mut dsinks = params.sinks.map(|s| vec![0f32; s.len()]);
    let mut grads = GradsMut::from_slices(shape, layout, &mut dq, &mut dk, &mut dv)?;
    grads.dsinks = dsinks.as_deref_mut();
    kernel.backward(&inputs, &mut grads, params, par)?;
    Ok(Grads { dq, dk, dv, dsinks })
}
