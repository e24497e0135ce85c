//! The backward pass: from `dY` back through the output projection, the
//! attention (the flash backward, on the `[B, N, H, D]` buffers the
//! forward kept) and the three input projections.
//!
//! ```text
//! dW_O = Oᵀ·dY         db_O = colsum(dY)        dO = dY·W_Oᵀ
//! dQ, dK, dV (, dsinks) = flash backward(Q, K, V, O, LSE, dO)
//! dW_Q = X_qᵀ·dQ       db_Q = colsum(dQ)        dX_q  = dQ·W_Qᵀ
//! dW_K = X_kvᵀ·dK      db_K = colsum(dK)        dX_kv = dK·W_Kᵀ + dV·W_Vᵀ
//! dW_V = X_kvᵀ·dV      db_V = colsum(dV)
//! ```
//!
//! For self-attention (`X_q = X_kv = X`), `dX = dX_q + dX_kv`
//! ([`LayerGrads::dx_self`]). [`MultiHeadAttention::backward_with_stats`]
//! also writes the flash backward's saturation statistics
//! (`attn_core::stats`: each row's off-argmax share of its score-gradient
//! mass, each key's received mass), for the same gradients.

use attn_core::try_zeroed;
use attn_core::{
    AttnError, AttnParams, BackwardInputs, BackwardKernel, BackwardStatsMut, CheckedBackward,
    GradsMut, Layout, Par,
};
use attn_flash::Flash;

use crate::forward::{PhaseTimes, Trace, attn, proj};
use crate::gemm::{Mat, column_sums, gemm};
use crate::tokens::Tokens;
use crate::weights::{Matrix, MultiHeadAttention, Weights};

/// The gradients of a loss with respect to the layer's inputs and
/// parameters, from [`MultiHeadAttention::backward`].
#[derive(Debug, Clone, PartialEq)]
pub struct LayerGrads {
    /// `dX_q`, `[B, Nq, d_model]`.
    pub dx_q: Vec<f32>,
    /// `dX_kv`, `[B, Nk, d_model]`.
    pub dx_kv: Vec<f32>,
    /// `dW_Q`, `dW_K`, `dW_V`, `dW_O` and the bias gradients (when the
    /// layer has biases), with the weights' shapes.
    pub weights: Weights,
    /// The gradient of the sink logits, one per query head, when the call
    /// had sinks.
    pub dsinks: Option<Vec<f32>>,
}

impl LayerGrads {
    /// `dX = dX_q + dX_kv`: the input gradient of self-attention, where
    /// the same tokens gave the queries and the keys/values.
    pub fn dx_self(&self) -> Vec<f32> {
        assert_eq!(self.dx_q.len(), self.dx_kv.len(), "not self-attention: Nq != Nk");
        self.dx_q.iter().zip(&self.dx_kv).map(|(a, b)| a + b).collect()
    }
}

impl MultiHeadAttention {
    /// The gradients of a loss given `dy = dLoss/dY` (`[B, Nq, d_model]`)
    /// for the forward that made `trace` on `x_q`, `x_kv` with `params`
    /// (pass the same ones: the backward recomputes the attention weights
    /// from them). Errors name the tensor: `dy` of the wrong length,
    /// inputs that do not match the trace, non-finite `dy`.
    pub fn backward(
        &self,
        trace: &Trace,
        x_q: &Tokens<'_>,
        x_kv: &Tokens<'_>,
        dy: &[f32],
        params: &AttnParams,
        par: Par,
    ) -> Result<LayerGrads, AttnError> {
        self.run_backward(trace, [x_q, x_kv], dy, params, par, None, None)
    }

    /// [`MultiHeadAttention::backward`] that also writes the attention's
    /// backward statistics (`attn_core::stats`): `off_argmax`
    /// `[B, Hq, Nq]`, the share of each row's score-gradient mass
    /// `Σ_j |dS_ij|` off its argmax key, and `key_grad` `[B, Hkv, Nk]`,
    /// the mass each key receives, where `dS` is the gradient of the
    /// attention scores for this `dy`. The gradients are the same bits as
    /// without statistics. Buffers of the wrong length are an error naming
    /// them.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_with_stats(
        &self,
        trace: &Trace,
        x_q: &Tokens<'_>,
        x_kv: &Tokens<'_>,
        dy: &[f32],
        params: &AttnParams,
        par: Par,
        stats: BackwardStatsMut<'_>,
    ) -> Result<LayerGrads, AttnError> {
        self.run_backward(trace, [x_q, x_kv], dy, params, par, Some(stats), None)
    }

    /// [`MultiHeadAttention::backward`] that also says how long the
    /// projections' gradients and the flash backward took
    /// ([`PhaseTimes`]; the harness's layer benchmark).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_timed(
        &self,
        trace: &Trace,
        x_q: &Tokens<'_>,
        x_kv: &Tokens<'_>,
        dy: &[f32],
        params: &AttnParams,
        par: Par,
    ) -> Result<(LayerGrads, PhaseTimes), AttnError> {
        let mut t = PhaseTimes::default();
        let g = self.run_backward(trace, [x_q, x_kv], dy, params, par, None, Some(&mut t))?;
        Ok((g, t))
    }

    #[allow(clippy::too_many_arguments)]
    fn run_backward(
        &self,
        trace: &Trace,
        [x_q, x_kv]: [&Tokens<'_>; 2],
        dy: &[f32],
        params: &AttnParams,
        par: Par,
        stats: Option<BackwardStatsMut<'_>>,
        mut timing: Option<&mut PhaseTimes>,
    ) -> Result<LayerGrads, AttnError> {
        par.validate()?;
        let shape = self.check_inputs(x_q, x_kv, params)?;
        if shape != trace.shape {
            return Err(AttnError::Param {
                name: "trace",
                reason: format!(
                    "made by a forward on {:?}, but these inputs make {shape:?}",
                    trace.shape
                ),
            });
        }
        if let Some(st) = &stats {
            st.check(&shape)?;
        }
        let (c, w) = (self.config(), self.weights());
        let (tq, tk) = (x_q.rows(), x_kv.rows());
        let dy = Tokens::new("dy", dy, [x_q.batch(), x_q.len(), c.d_model])?;
        if params.check_finite {
            dy.check_finite()?;
        }
        let mut g = Weights::zeros(c);

        // Output projection.
        let o = Mat::new(&trace.o, tq, c.o_width());
        let dym = Mat::new(dy.data(), tq, c.d_model);
        let d_o = PhaseTimes::time(&mut timing, proj, || {
            gemm(par, o.t(), dym, 0.0, g.w_o.data_mut())?;
            let mut d_o = try_zeroed("d_out", tq * c.o_width())?;
            gemm(par, dym, mat(&w.w_o).t(), 0.0, &mut d_o)?;
            Ok::<_, AttnError>(d_o)
        })?;

        // Attention.
        let mut dsinks = params.sinks.map(|s| vec![0f32; s.len()]);
        let (dq, dk, dv) = PhaseTimes::time(&mut timing, attn, || {
            let mut dq = try_zeroed("dq", tq * c.q_width())?;
            let mut dk = try_zeroed("dk", tk * c.k_width())?;
            let mut dv = try_zeroed("dv", tk * c.v_width())?;
            let (q, k, v) = (&trace.q, &trace.k, &trace.v);
            let l = Layout::Bnhd;
            let inputs =
                BackwardInputs::from_slices(shape, l, q, k, v, &trace.o, &trace.lse, &d_o)?;
            let mut grads = GradsMut::from_slices(&shape, l, &mut dq, &mut dk, &mut dv)?;
            grads.dsinks = dsinks.as_deref_mut();
            let call = CheckedBackward::new(&inputs, &mut grads, params, par)?;
            let call = match stats {
                Some(st) => call.with_stats(st)?,
                None => call,
            };
            Flash::default().run_backward(call)?;
            Ok::<_, AttnError>((dq, dk, dv))
        })?;

        // Input projections.
        let start = timing.is_some().then(std::time::Instant::now);
        let xq = Mat::new(x_q.data(), tq, c.d_model);
        let xkv = Mat::new(x_kv.data(), tk, c.d_model);
        let (dqm, dkm, dvm) = (
            Mat::new(&dq, tq, c.q_width()),
            Mat::new(&dk, tk, c.k_width()),
            Mat::new(&dv, tk, c.v_width()),
        );
        gemm(par, xq.t(), dqm, 0.0, g.w_q.data_mut())?;
        gemm(par, xkv.t(), dkm, 0.0, g.w_k.data_mut())?;
        gemm(par, xkv.t(), dvm, 0.0, g.w_v.data_mut())?;
        let mut dx_q = try_zeroed("dx_q", tq * c.d_model)?;
        gemm(par, dqm, mat(&w.w_q).t(), 0.0, &mut dx_q)?;
        let mut dx_kv = try_zeroed("dx_kv", tk * c.d_model)?;
        gemm(par, dkm, mat(&w.w_k).t(), 0.0, &mut dx_kv)?;
        gemm(par, dvm, mat(&w.w_v).t(), 1.0, &mut dx_kv)?;
        if let (Some(t), Some(s)) = (timing, start) {
            t.projections += s.elapsed();
        }

        if c.bias {
            g.b_q = Some(column_sums(&dq, c.q_width()));
            g.b_k = Some(column_sums(&dk, c.k_width()));
            g.b_v = Some(column_sums(&dv, c.v_width()));
            g.b_o = Some(column_sums(dy.data(), c.d_model));
        }
        Ok(LayerGrads { dx_q, dx_kv, weights: g, dsinks })
    }
}

fn mat(m: &Matrix) -> Mat<'_> {
    Mat::new(m.data(), m.rows(), m.cols())
}
