//! The backward pass's contract: what a gradient call reads and writes,
//! its one validation ([`CheckedBackward`]) and the trait every backward
//! kernel implements ([`BackwardKernel`]).
//!
//! Given Q, K, V, the forward's output O and its LSE, and the upstream
//! gradient dO (shape of O), a backward kernel writes dQ, dK, dV (shapes of
//! Q, K, V) of exactly the forward attnlab defines: with
//! `P = softmax(Q·Kᵀ·scale + mask)` and `D = rowsum(dO∘O)`,
//!
//! ```text
//! dV = Pᵀ·dO     dP = dO·Vᵀ     dS = P∘(dP − D)
//! dQ = dS·K·scale               dK = dSᵀ·Q·scale
//! ```
//!
//! For GQA/MQA, dK and dV of a K/V head sum over the query heads of its
//! group. Fully masked rows (LSE `-inf`) contribute nothing. Q, K, V may be
//! f32, f16 or bf16; O, LSE, dO and the gradients are f32.

use crate::element::Element;
use crate::error::AttnError;
use crate::kernel::{AttnInputs, K_DIMS, O_DIMS, Q_DIMS, V_DIMS, check_dims};
use crate::par::Par;
use crate::params::AttnParams;
use crate::shape::AttnShape;
use crate::stats::BackwardStatsMut;
use crate::view::{Layout, TensorView, TensorViewMut};

/// What a backward call reads: Q, K, V, the forward's O and LSE, and dO,
/// checked against one shape.
#[derive(Debug, Clone, Copy)]
pub struct BackwardInputs<'a, T> {
    /// Q, K and V.
    pub fwd: AttnInputs<'a, T>,
    /// The forward output O, logical `[B, Hq, Nq, dv]`.
    pub out: TensorView<'a, f32>,
    /// The forward LSE, `[B, Hq, Nq]` contiguous, natural log.
    pub lse: &'a [f32],
    /// The upstream gradient dO, logical `[B, Hq, Nq, dv]`.
    pub d_out: TensorView<'a, f32>,
}

impl<'a, T: Element> BackwardInputs<'a, T> {
    /// Checks O, LSE and dO against the shape of `fwd`, naming the first
    /// mismatch (`out`, `lse` or `d_out` and the dimension).
    pub fn new(
        fwd: AttnInputs<'a, T>,
        out: TensorView<'a, f32>,
        lse: &'a [f32],
        d_out: TensorView<'a, f32>,
    ) -> Result<Self, AttnError> {
        let shape = fwd.shape();
        check_dims(out.name(), O_DIMS, shape.out_dims(), out.dims())?;
        check_dims(d_out.name(), O_DIMS, shape.out_dims(), d_out.dims())?;
        if lse.len() != shape.lse_len() {
            return Err(AttnError::BufferLen {
                tensor: "lse",
                expected: shape.lse_len(),
                got: lse.len(),
            });
        }
        Ok(BackwardInputs { fwd, out, lse, d_out })
    }

    /// Views of flat buffers in one layout (named "q", "k", "v", "out",
    /// "lse", "d_out").
    #[allow(clippy::too_many_arguments)]
    pub fn from_slices(
        shape: AttnShape,
        layout: Layout,
        q: &'a [T],
        k: &'a [T],
        v: &'a [T],
        out: &'a [f32],
        lse: &'a [f32],
        d_out: &'a [f32],
    ) -> Result<Self, AttnError> {
        let fwd = AttnInputs::from_slices(shape, layout, q, k, v)?;
        Self::new(
            fwd,
            TensorView::new("out", out, shape.out_dims(), layout)?,
            lse,
            TensorView::new("d_out", d_out, shape.out_dims(), layout)?,
        )
    }

    /// The problem's shape.
    pub fn shape(&self) -> &AttnShape {
        self.fwd.shape()
    }

    /// The first non-finite element of Q, K, V, O or dO, or an LSE that
    /// is NaN or `+inf` (`-inf` marks a fully masked row), as an error
    /// naming the tensor and the flat index.
    pub fn check_finite(&self) -> Result<(), AttnError> {
        let fast = all_finite(self.fwd.q.data())
            && all_finite(self.fwd.k.data())
            && all_finite(self.fwd.v.data())
            && all_finite(self.out.data())
            && all_finite(self.d_out.data())
            && !self.lse.iter().any(|x| x.is_nan() || *x == f32::INFINITY);
        if fast {
            return Ok(());
        }
        // locate the first offender
        self.fwd.q.check_finite()?;
        self.fwd.k.check_finite()?;
        self.fwd.v.check_finite()?;
        self.out.check_finite()?;
        self.d_out.check_finite()?;
        match self.lse.iter().position(|x| x.is_nan() || *x == f32::INFINITY) {
            None => Ok(()),
            Some(index) => {
                Err(AttnError::NonFinite { tensor: "lse", index, value: self.lse[index] })
            }
        }
    }
}

/// The first bias entry that some row reads (its key is visible under the
/// mask) and that is NaN or `+inf`, as an error naming the bias and its
/// flat index; in row order `(b, h, i)` of the bias's own dims, then key.
/// `−inf` entries are legitimate (they mask their key). Rows are scanned
/// in parallel on the current pool when `parallel` (`find_first`: the same
/// entry is reported either way). Measured on a causal N = 4096 flash
/// backward, one thread: a lane-wise scan costs ~10% of the call (it
/// streams the bias from memory once more), a scalar one ~25%.
fn check_bias(params: &AttnParams<'_>, parallel: bool) -> Result<(), AttnError> {
    use rayon::prelude::*;
    let Some(bias) = &params.bias else { return Ok(()) };
    let [bb, bh, nq, nk] = bias.dims();
    let at = |r: usize| (r / (bh * nq), r / nq % bh, r % nq);
    let keys = |i: usize| params.mask.key_range(i, nq, nk);
    let bad = |r: usize| {
        let (b, h, i) = at(r);
        !below_inf(&bias.row(b, h, i)[keys(i)])
    };
    let rows = bb * bh * nq;
    let first = if parallel {
        (0..rows).into_par_iter().find_first(|&r| bad(r))
    } else {
        (0..rows).find(|&r| bad(r))
    };
    let Some(r) = first else { return Ok(()) };
    let (b, h, i) = at(r);
    let row = &bias.row(b, h, i)[keys(i)];
    let j = row.iter().position(|x| x.is_nan() || *x == f32::INFINITY).unwrap_or(0);
    let index = bias.offset(b, h, i) + keys(i).start + j;
    Err(AttnError::NonFinite { tensor: bias.name(), index, value: bias.data()[index] })
}

/// Whether every value is below `+inf` (finite or `−inf`; NaN is not),
/// 16 independent lanes at a time so that the loop vectorizes.
fn below_inf(x: &[f32]) -> bool {
    let (chunks, tail) = x.as_chunks::<16>();
    let mut ok = [true; 16];
    for c in chunks {
        for (o, v) in ok.iter_mut().zip(c) {
            *o &= *v < f32::INFINITY;
        }
    }
    ok.iter().all(|o| *o) && tail.iter().all(|v| *v < f32::INFINITY)
}

/// Whether every value is finite: `x·0` is 0 for a finite `x` and NaN
/// otherwise, summed in 16 independent lanes so that the loop vectorizes
/// (the scan costs ~1% of a backward call at N = 1024 instead of ~3%).
fn all_finite<T: Element>(x: &[T]) -> bool {
    let mut acc = [0f32; 16];
    let (chunks, tail) = x.as_chunks::<16>();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v.to_f32() * 0.0;
        }
    }
    acc.iter().all(|a| *a == 0.0) && tail.iter().all(|v| v.to_f32().is_finite())
}

/// The gradients a backward call writes: dQ `[B, Hq, Nq, d]`, dK
/// `[B, Hkv, Nk, d]`, dV `[B, Hkv, Nk, dv]` (logical dims, any layout).
#[derive(Debug)]
pub struct GradsMut<'g> {
    /// Gradient of Q.
    pub dq: TensorViewMut<'g>,
    /// Gradient of K (summed over each GQA group).
    pub dk: TensorViewMut<'g>,
    /// Gradient of V (summed over each GQA group).
    pub dv: TensorViewMut<'g>,
    /// Gradient of the sink logits, one per query head (summed over the
    /// batch and rows), when the call has sinks and the caller wants it.
    pub dsinks: Option<&'g mut [f32]>,
}

impl<'g> GradsMut<'g> {
    /// Mutable views of three flat buffers in one layout (named "dq",
    /// "dk", "dv").
    pub fn from_slices(
        shape: &AttnShape,
        layout: Layout,
        dq: &'g mut [f32],
        dk: &'g mut [f32],
        dv: &'g mut [f32],
    ) -> Result<Self, AttnError> {
        Ok(GradsMut {
            dq: TensorViewMut::new("dq", dq, shape.q_dims(), layout)?,
            dk: TensorViewMut::new("dk", dk, shape.k_dims(), layout)?,
            dv: TensorViewMut::new("dv", dv, shape.v_dims(), layout)?,
            dsinks: None,
        })
    }

    /// Checks the three views against `shape`, naming the first mismatch.
    pub fn check(&self, shape: &AttnShape) -> Result<(), AttnError> {
        check_dims(self.dq.name(), Q_DIMS, shape.q_dims(), self.dq.dims())?;
        check_dims(self.dk.name(), K_DIMS, shape.k_dims(), self.dk.dims())?;
        check_dims(self.dv.name(), V_DIMS, shape.v_dims(), self.dv.dims())?;
        match &self.dsinks {
            Some(d) if d.len() != shape.q_heads() => Err(AttnError::BufferLen {
                tensor: "dsinks",
                expected: shape.q_heads(),
                got: d.len(),
            }),
            _ => Ok(()),
        }
    }
}

/// One backward call whose every argument has been checked, once: the
/// gradient views' dims, the parameters, the thread count and, when
/// `check_finite` is on, the finiteness of every input (an O(input) scan,
/// small next to the O(N²) work). Made only by [`CheckedBackward::new`],
/// so a kernel's [`BackwardKernel::run_backward`] never validates again.
#[derive(Debug)]
pub struct CheckedBackward<'c, 'g, T> {
    inputs: &'c BackwardInputs<'c, T>,
    grads: &'c mut GradsMut<'g>,
    params: &'c AttnParams<'c>,
    par: Par,
    stats: Option<BackwardStatsMut<'c>>,
}

impl<'c, 'g, T: Element> CheckedBackward<'c, 'g, T> {
    /// Validates a call (see the type's docs).
    pub fn new(
        inputs: &'c BackwardInputs<'c, T>,
        grads: &'c mut GradsMut<'g>,
        params: &'c AttnParams<'c>,
        par: Par,
    ) -> Result<Self, AttnError> {
        grads.check(inputs.shape())?;
        params.validate_for(inputs.shape())?;
        params.refuse_positions("the backward")?;
        if grads.dsinks.is_some() && params.sinks.is_none() {
            return Err(AttnError::Param {
                name: "dsinks",
                reason: "a sink gradient was asked for, but the call has no sinks".into(),
            });
        }
        par.validate()?;
        if params.check_finite {
            inputs.check_finite()?;
            par.install(|| check_bias(params, par.threads() > 1))??;
        }
        Ok(CheckedBackward { inputs, grads, params, par, stats: None })
    }

    /// Asks the kernel for the backward's saturation statistics too
    /// (`crate::stats`), after checking the buffers' lengths. A kernel that
    /// cannot compute them refuses the call ([`AttnError::Unsupported`]).
    pub fn with_stats(mut self, stats: BackwardStatsMut<'c>) -> Result<Self, AttnError> {
        stats.check(self.shape())?;
        self.stats = Some(stats);
        Ok(self)
    }

    /// The statistics buffers, when the caller asked for them.
    pub fn stats(&mut self) -> Option<&mut BackwardStatsMut<'c>> {
        self.stats.as_mut()
    }

    /// The inputs.
    pub fn inputs(&self) -> &'c BackwardInputs<'c, T> {
        self.inputs
    }
    /// The problem's shape.
    pub fn shape(&self) -> &'c AttnShape {
        self.inputs.shape()
    }
    /// Scale, mask and checks.
    pub fn params(&self) -> &'c AttnParams<'c> {
        self.params
    }
    /// Parallelism.
    pub fn par(&self) -> Par {
        self.par
    }
    /// The gradient views, to write.
    pub fn grads(&mut self) -> &mut GradsMut<'g> {
        self.grads
    }
}

/// What every backward kernel offers (see the module docs for the
/// formulas). [`backward`](BackwardKernel::backward) validates once and
/// calls [`run_backward`](BackwardKernel::run_backward), which overwrites
/// all three gradients.
pub trait BackwardKernel: Sync {
    /// Bytes of scratch memory one backward call needs beyond its inputs
    /// and the gradients.
    fn backward_workspace_bytes(&self, shape: &AttnShape, params: &AttnParams, par: Par) -> usize;

    /// Validates the call ([`CheckedBackward::new`]), then runs the kernel.
    fn backward<T: Element>(
        &self,
        inputs: &BackwardInputs<'_, T>,
        grads: &mut GradsMut<'_>,
        params: &AttnParams,
        par: Par,
    ) -> Result<(), AttnError> {
        self.run_backward(CheckedBackward::new(inputs, grads, params, par)?)
    }

    /// Runs the kernel on a validated call.
    fn run_backward<T: Element>(&self, call: CheckedBackward<'_, '_, T>) -> Result<(), AttnError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatches_name_tensor_and_dimension() {
        let shape = crate::shape::tests::shape(1, 2, 1, 3, 4, 8, 4).unwrap();
        let (q, k, v) = (vec![0f32; 48], vec![0f32; 32], vec![0f32; 16]);
        let (o, lse, d_o) = (vec![0f32; 24], vec![0f32; 6], vec![0f32; 24]);
        let l = Layout::Bhnd;
        BackwardInputs::from_slices(shape, l, &q, &k, &v, &o, &lse, &d_o).unwrap();
        let e = BackwardInputs::from_slices(shape, l, &q, &k, &v, &o, &lse[..5], &d_o);
        assert_eq!(
            e.unwrap_err().to_string(),
            "lse: buffer has 5 elements, expected 6 from its dimensions"
        );
        let e = BackwardInputs::from_slices(shape, l, &q, &k, &v, &o, &lse, &d_o[..20]);
        assert!(e.unwrap_err().to_string().starts_with("d_out: buffer has 20"));
        let fwd = AttnInputs::from_slices(shape, l, &q, &k, &v).unwrap();
        let out = TensorView::new("out", &o, [1, 2, 3, 4], l).unwrap();
        let wrong = TensorView::new("d_out", &d_o, [1, 2, 4, 3], l).unwrap();
        let e = BackwardInputs::new(fwd, out, &lse, wrong).unwrap_err();
        assert_eq!(e.to_string(), "d_out: expected 3 query positions, got 4");
        let e = BackwardInputs::new(fwd, wrong, &lse, out).unwrap_err();
        assert!(e.to_string().starts_with("d_out: expected 3 query positions"), "{e}");

        let (mut dq, mut dk, mut dv) = (vec![0f32; 48], vec![0f32; 32], vec![0f32; 16]);
        let g = GradsMut::from_slices(&shape, l, &mut dq, &mut dk, &mut dv).unwrap();
        let other = crate::shape::tests::shape(1, 2, 1, 3, 4, 8, 8).unwrap();
        let e = g.check(&other).unwrap_err();
        assert_eq!(e.to_string(), "dv: expected 8 features (v_dim), got 4");
        g.check(&shape).unwrap();
    }

    #[test]
    fn finiteness_names_the_tensor() {
        let shape = crate::shape::tests::shape(1, 1, 1, 2, 2, 2, 2).unwrap();
        let (q, k, v) = (vec![0f32; 4], vec![0f32; 4], vec![0f32; 4]);
        let (o, mut lse, mut d_o) = (vec![0f32; 4], vec![0f32, f32::NEG_INFINITY], vec![0f32; 4]);
        let l = Layout::Bhnd;
        let (mut dq, mut dk, mut dv) = (vec![0f32; 4], vec![0f32; 4], vec![0f32; 4]);
        let p = AttnParams::default();
        {
            let inp = BackwardInputs::from_slices(shape, l, &q, &k, &v, &o, &lse, &d_o).unwrap();
            let mut g = GradsMut::from_slices(&shape, l, &mut dq, &mut dk, &mut dv).unwrap();
            CheckedBackward::new(&inp, &mut g, &p, Par::Seq).unwrap();
        }
        d_o[3] = f32::NAN;
        {
            let inp = BackwardInputs::from_slices(shape, l, &q, &k, &v, &o, &lse, &d_o).unwrap();
            let mut g = GradsMut::from_slices(&shape, l, &mut dq, &mut dk, &mut dv).unwrap();
            let e = CheckedBackward::new(&inp, &mut g, &p, Par::Seq).unwrap_err();
            assert!(matches!(e, AttnError::NonFinite { tensor: "d_out", index: 3, .. }), "{e}");
            let off = AttnParams { check_finite: false, ..p };
            CheckedBackward::new(&inp, &mut g, &off, Par::Seq).unwrap();
        }
        d_o[3] = 0.0;
        lse[0] = f32::INFINITY;
        let inp = BackwardInputs::from_slices(shape, l, &q, &k, &v, &o, &lse, &d_o).unwrap();
        let mut g = GradsMut::from_slices(&shape, l, &mut dq, &mut dk, &mut dv).unwrap();
        let e = CheckedBackward::new(&inp, &mut g, &p, Par::Seq).unwrap_err();
        assert!(matches!(e, AttnError::NonFinite { tensor: "lse", index: 0, .. }), "{e}");
    }
}
