//! The forward pass:
//!
//! ```text
//! Q = X_q·W_Q + b_Q    [B·Nq, Hq·d]   = [B, Nq, Hq, d]    (Layout::Bnhd)
//! K = X_kv·W_K + b_K   [B·Nk, Hkv·d]  = [B, Nk, Hkv, d]
//! V = X_kv·W_V + b_V   [B·Nk, Hkv·dv] = [B, Nk, Hkv, dv]
//! O = attention(Q, K, V; params)      [B·Nq, Hq·dv]       (flash, Bnhd)
//! Y = O·W_O + b_O      [B·Nq, d_model]
//! ```
//!
//! Token-major inputs make each projection one GEMM whose output is
//! already in the `[B, N, H, D]` order the kernels read (no transposes),
//! and the kernel's output in that order is the `[B·Nq, Hq·dv]` matrix the
//! output projection multiplies.
//!
//! [`MultiHeadAttention::forward_train_with_stats`] asks the flash kernel
//! for the rows' saturation statistics as well (same output bits).

use attn_core::{
    AttentionKernel, AttnError, AttnInputs, AttnParams, AttnShape, CheckedCall, Layout, Par,
    StatsMut, TensorViewMut, try_zeroed,
};
use attn_flash::Flash;

use std::time::{Duration, Instant};

use crate::gemm::{Mat, fill_rows, gemm};
use crate::tokens::Tokens;
use crate::weights::{Matrix, MultiHeadAttention};

/// What [`MultiHeadAttention::forward_train`] keeps for
/// [`MultiHeadAttention::backward`]: the output and the activations
/// (`Q`, `K`, `V`, the attention output `O` and its per-row LSE).
#[derive(Debug, Clone)]
pub struct Trace {
    /// The layer's output `Y`, `[B, Nq, d_model]`.
    pub y: Vec<f32>,
    pub(crate) shape: AttnShape,
    pub(crate) q: Vec<f32>,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    pub(crate) o: Vec<f32>,
    pub(crate) lse: Vec<f32>,
}

impl Trace {
    /// The attention problem the forward solved (`B`, heads, `Nq`, `Nk`).
    pub fn shape(&self) -> &AttnShape {
        &self.shape
    }
    /// `Q`, `[B, Nq, Hq, d]`.
    pub fn q(&self) -> &[f32] {
        &self.q
    }
    /// `K`, `[B, Nk, Hkv, d]`.
    pub fn k(&self) -> &[f32] {
        &self.k
    }
    /// `V`, `[B, Nk, Hkv, dv]`.
    pub fn v(&self) -> &[f32] {
        &self.v
    }
    /// The attention output `O`, `[B, Nq, Hq, dv]`.
    pub fn attention_out(&self) -> &[f32] {
        &self.o
    }
    /// The attention's LSE, `[B, Hq, Nq]` (natural log).
    pub fn lse(&self) -> &[f32] {
        &self.lse
    }
}

/// Where a call's wall-clock time went, for benchmarks
/// ([`MultiHeadAttention::forward_timed`],
/// [`MultiHeadAttention::backward_timed`]): the projections' GEMMs (with
/// their output buffers) and the attention kernel (with its output
/// buffers); the rest of the call (checks) is neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimes {
    /// Q, K, V and output projections (backward: their gradients).
    pub projections: Duration,
    /// The flash kernel (backward: the flash backward).
    pub attention: Duration,
}

impl PhaseTimes {
    /// Runs `f`, adding its time to `slot` when timing.
    pub(crate) fn time<R>(
        timing: &mut Option<&mut PhaseTimes>,
        slot: fn(&mut PhaseTimes) -> &mut Duration,
        f: impl FnOnce() -> R,
    ) -> R {
        let t = timing.is_some().then(Instant::now);
        let r = f();
        if let (Some(pt), Some(t)) = (timing.as_mut(), t) {
            *slot(pt) += t.elapsed();
        }
        r
    }
}

/// [`PhaseTimes::time`]'s slot of the projections.
pub(crate) fn proj(p: &mut PhaseTimes) -> &mut Duration {
    &mut p.projections
}

/// [`PhaseTimes::time`]'s slot of the attention.
pub(crate) fn attn(p: &mut PhaseTimes) -> &mut Duration {
    &mut p.attention
}

impl MultiHeadAttention {
    /// `Y` for queries from `x_q` (`[B, Nq, d_model]`) attending to keys
    /// and values from `x_kv` (`[B, Nk, d_model]`): self-attention when
    /// both are the same tokens, cross-attention otherwise (any `Nk`);
    /// causal, windows and score modifiers as `params` says (masks are
    /// bottom-right aligned, see `docs/semantics.md`); GQA/MQA by the
    /// config's head counts. Returns `Y`, `[B, Nq, d_model]`.
    ///
    /// Errors name the tensor and dimension: an `x` whose width is not
    /// `d_model` or whose batch differs, invalid `params`, and (with
    /// `params.check_finite`) a non-finite input.
    pub fn forward(
        &self,
        x_q: &Tokens<'_>,
        x_kv: &Tokens<'_>,
        params: &AttnParams,
        par: Par,
    ) -> Result<Vec<f32>, AttnError> {
        Ok(self.run_forward(x_q, x_kv, params, par, false, None, None)?.y)
    }

    /// [`MultiHeadAttention::forward`], keeping what the backward needs.
    pub fn forward_train(
        &self,
        x_q: &Tokens<'_>,
        x_kv: &Tokens<'_>,
        params: &AttnParams,
        par: Par,
    ) -> Result<Trace, AttnError> {
        self.run_forward(x_q, x_kv, params, par, true, None, None)
    }

    /// [`MultiHeadAttention::forward_train`] that also writes the
    /// attention's saturation statistics (`attn_core::stats`: each row's
    /// largest probability and entropy, `[B, Hq, Nq]` each), computed
    /// inside the flash kernel in O(1) extra state per row. The kernel
    /// computes them on its tiled path only: a call with at most 16
    /// queries per sequence and head is refused
    /// ([`AttnError::Unsupported`]). Buffers of the wrong length are an
    /// error naming them.
    pub fn forward_train_with_stats(
        &self,
        x_q: &Tokens<'_>,
        x_kv: &Tokens<'_>,
        params: &AttnParams,
        par: Par,
        stats: StatsMut<'_>,
    ) -> Result<Trace, AttnError> {
        self.run_forward(x_q, x_kv, params, par, true, Some(stats), None)
    }

    /// [`MultiHeadAttention::forward_train`] that also says how long the
    /// projections and the attention took ([`PhaseTimes`]; the harness's
    /// layer benchmark). The same arithmetic: the same bits.
    pub fn forward_timed(
        &self,
        x_q: &Tokens<'_>,
        x_kv: &Tokens<'_>,
        params: &AttnParams,
        par: Par,
    ) -> Result<(Trace, PhaseTimes), AttnError> {
        let mut t = PhaseTimes::default();
        let trace = self.run_forward(x_q, x_kv, params, par, true, None, Some(&mut t))?;
        Ok((trace, t))
    }

    /// Checks `x_q` and `x_kv` against the layer and each other and
    /// returns the attention problem they make.
    pub(crate) fn check_inputs(
        &self,
        x_q: &Tokens<'_>,
        x_kv: &Tokens<'_>,
        params: &AttnParams,
    ) -> Result<AttnShape, AttnError> {
        let c = self.config();
        x_q.expect(c.d_model, None)?;
        x_kv.expect(c.d_model, Some(x_q.batch()))?;
        let shape = c.attn_shape(x_q.batch(), x_q.len(), x_kv.len())?;
        params.validate_for(&shape)?;
        if params.check_finite {
            x_q.check_finite()?;
            x_kv.check_finite()?;
        }
        Ok(shape)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_forward(
        &self,
        x_q: &Tokens<'_>,
        x_kv: &Tokens<'_>,
        params: &AttnParams,
        par: Par,
        keep: bool,
        stats: Option<StatsMut<'_>>,
        mut timing: Option<&mut PhaseTimes>,
    ) -> Result<Trace, AttnError> {
        par.validate()?;
        let shape = self.check_inputs(x_q, x_kv, params)?;
        if let Some(st) = &stats {
            st.check(&shape)?;
        }
        let w = self.weights();
        let (q, k, v) = PhaseTimes::time(&mut timing, proj, || {
            Ok::<_, AttnError>((
                project("q", x_q, &w.w_q, w.b_q.as_deref(), par)?,
                project("k", x_kv, &w.w_k, w.b_k.as_deref(), par)?,
                project("v", x_kv, &w.w_v, w.b_v.as_deref(), par)?,
            ))
        })?;
        let (o, lse) = PhaseTimes::time(&mut timing, attn, || {
            let mut o = try_zeroed("attention output", x_q.rows() * self.config().o_width())?;
            let mut lse = if keep { try_zeroed("lse", shape.lse_len())? } else { Vec::new() };
            let lse_out = keep.then_some(&mut lse[..]);
            attend(&shape, [&q, &k, &v], &mut o, lse_out, stats, params, par)?;
            Ok::<_, AttnError>((o, lse))
        })?;
        let y =
            PhaseTimes::time(&mut timing, proj, || self.output_projection(&o, x_q.rows(), par))?;
        Ok(Trace { y, shape, q, k, v, o, lse })
    }

    /// `Y = O·W_O + b_O` for `rows` rows of `O`.
    pub(crate) fn output_projection(
        &self,
        o: &[f32],
        rows: usize,
        par: Par,
    ) -> Result<Vec<f32>, AttnError> {
        let (w, c) = (self.weights(), self.config());
        let o = Tokens::new("attention output", o, [1, rows, c.o_width()])?;
        project("y", &o, &w.w_o, w.b_o.as_deref(), par)
    }
}

/// `X·W + b`, `[rows of x, cols of W]`, in a new buffer named `name`.
pub(crate) fn project(
    name: &'static str,
    x: &Tokens<'_>,
    w: &Matrix,
    b: Option<&[f32]>,
    par: Par,
) -> Result<Vec<f32>, AttnError> {
    let mut out = try_zeroed(name, x.rows() * w.cols())?;
    fill_rows(&mut out, b);
    let beta = if b.is_some() { 1.0 } else { 0.0 };
    gemm(
        par,
        Mat::new(x.data(), x.rows(), x.width()),
        Mat::new(w.data(), w.rows(), w.cols()),
        beta,
        &mut out,
    )?;
    Ok(out)
}

/// The flash kernel on `[B, N, H, D]` buffers `[q, k, v]`: `o` (and
/// `lse` and the statistics, if given).
pub(crate) fn attend(
    shape: &AttnShape,
    [q, k, v]: [&[f32]; 3],
    o: &mut [f32],
    lse: Option<&mut [f32]>,
    stats: Option<StatsMut<'_>>,
    params: &AttnParams,
    par: Par,
) -> Result<(), AttnError> {
    let inputs = AttnInputs::from_slices(*shape, Layout::Bnhd, q, k, v)?;
    let mut ov = TensorViewMut::new("attention output", o, shape.out_dims(), Layout::Bnhd)?;
    let call = CheckedCall::new(&inputs, &mut ov, lse, params, par)?;
    let call = match stats {
        Some(st) => call.with_stats(st)?,
        None => call,
    };
    Flash::default().run(call)
}
