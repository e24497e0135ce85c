//! The contract every kernel implements, and the one validation that runs
//! at the boundary of every call ([`CheckedCall`]).

use crate::element::Element;
use crate::error::AttnError;
use crate::par::Par;
use crate::params::AttnParams;
use crate::shape::AttnShape;
use crate::stats::StatsMut;
use crate::view::{Layout, TensorView, TensorViewMut};

/// Q, K and V of one problem, checked against its shape.
#[derive(Debug, Clone, Copy)]
pub struct AttnInputs<'a, T> {
    shape: AttnShape,
    /// Queries, logical `[B, Hq, Nq, d]`.
    pub q: TensorView<'a, T>,
    /// Keys, logical `[B, Hkv, Nk, d]`.
    pub k: TensorView<'a, T>,
    /// Values, logical `[B, Hkv, Nk, dv]`.
    pub v: TensorView<'a, T>,
}

pub(crate) const Q_DIMS: [&str; 4] =
    ["batch entries", "q heads", "query positions", "features (head_dim)"];
pub(crate) const K_DIMS: [&str; 4] =
    ["batch entries", "kv heads", "key positions", "features (head_dim)"];
pub(crate) const V_DIMS: [&str; 4] =
    ["batch entries", "kv heads", "key positions", "features (v_dim)"];
pub(crate) const O_DIMS: [&str; 4] =
    ["batch entries", "q heads", "query positions", "features (v_dim)"];

pub(crate) fn check_dims(
    tensor: &'static str,
    names: [&'static str; 4],
    expected: [usize; 4],
    got: [usize; 4],
) -> Result<(), AttnError> {
    for i in 0..4 {
        if expected[i] != got[i] {
            return Err(AttnError::Dim {
                tensor,
                dim: names[i],
                expected: expected[i],
                got: got[i],
            });
        }
    }
    Ok(())
}

impl<'a, T: Element> AttnInputs<'a, T> {
    /// Checks that the views fit `shape`, naming the first mismatch.
    pub fn new(
        shape: AttnShape,
        q: TensorView<'a, T>,
        k: TensorView<'a, T>,
        v: TensorView<'a, T>,
    ) -> Result<Self, AttnError> {
        check_dims(q.name(), Q_DIMS, shape.q_dims(), q.dims())?;
        check_dims(k.name(), K_DIMS, shape.k_dims(), k.dims())?;
        check_dims(v.name(), V_DIMS, shape.v_dims(), v.dims())?;
        Ok(AttnInputs { shape, q, k, v })
    }

    /// Views of three flat buffers in one layout (named "q", "k", "v").
    pub fn from_slices(
        shape: AttnShape,
        layout: Layout,
        q: &'a [T],
        k: &'a [T],
        v: &'a [T],
    ) -> Result<Self, AttnError> {
        Self::new(
            shape,
            TensorView::new("q", q, shape.q_dims(), layout)?,
            TensorView::new("k", k, shape.k_dims(), layout)?,
            TensorView::new("v", v, shape.v_dims(), layout)?,
        )
    }

    /// The problem's shape.
    pub fn shape(&self) -> &AttnShape {
        &self.shape
    }
}

/// Checks the output view and LSE buffer against `shape`: `out` must be
/// `[B, Hq, Nq, dv]` and `lse`, if given, hold `B·Hq·Nq` values.
pub fn check_outputs(
    shape: &AttnShape,
    out: &TensorViewMut<'_>,
    lse: Option<&[f32]>,
) -> Result<(), AttnError> {
    check_dims(out.name(), O_DIMS, shape.out_dims(), out.dims())?;
    if let Some(lse) = lse
        && lse.len() != shape.lse_len()
    {
        return Err(AttnError::BufferLen {
            tensor: "lse",
            expected: shape.lse_len(),
            got: lse.len(),
        });
    }
    Ok(())
}

/// One attention call whose every argument has been checked, once: output
/// and LSE sizes ([`check_outputs`]), parameters and the thread count. The
/// only way to make one is [`CheckedCall::new`], so a kernel's
/// [`AttentionKernel::run`] never validates again. Finiteness of Q, K and V
/// is not scanned here: kernels check each finished row instead (see
/// [`crate::faults`]), which costs O(output) rather than O(input).
#[derive(Debug)]
pub struct CheckedCall<'c, 'o, T> {
    inputs: &'c AttnInputs<'c, T>,
    out: &'c mut TensorViewMut<'o>,
    lse: Option<&'c mut [f32]>,
    params: &'c AttnParams<'c>,
    par: Par,
    stats: Option<StatsMut<'c>>,
}

impl<'c, 'o, T: Element> CheckedCall<'c, 'o, T> {
    /// Validates a call (see the type's docs).
    pub fn new(
        inputs: &'c AttnInputs<'c, T>,
        out: &'c mut TensorViewMut<'o>,
        lse: Option<&'c mut [f32]>,
        params: &'c AttnParams<'c>,
        par: Par,
    ) -> Result<Self, AttnError> {
        check_outputs(inputs.shape(), out, lse.as_deref())?;
        params.validate_for(inputs.shape())?;
        par.validate()?;
        Ok(CheckedCall { inputs, out, lse, params, par, stats: None })
    }

    /// Asks the kernel for the saturation statistics of every row too
    /// (`crate::stats`), after checking the buffers' lengths. A kernel that
    /// cannot compute them refuses the call ([`AttnError::Unsupported`]).
    pub fn with_stats(mut self, stats: StatsMut<'c>) -> Result<Self, AttnError> {
        stats.check(self.shape())?;
        self.stats = Some(stats);
        Ok(self)
    }

    /// Whether the caller asked for statistics.
    pub fn wants_stats(&self) -> bool {
        self.stats.is_some()
    }

    /// Q, K and V.
    pub fn inputs(&self) -> &'c AttnInputs<'c, T> {
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
    /// The output view and the LSE buffer, to write.
    pub fn outputs(&mut self) -> (&mut TensorViewMut<'o>, Option<&mut [f32]>) {
        (self.out, self.lse.as_deref_mut())
    }
    /// The output view, the LSE buffer and the statistics, to write.
    #[allow(clippy::type_complexity)]
    pub fn outputs_and_stats(
        &mut self,
    ) -> (&mut TensorViewMut<'o>, Option<&mut [f32]>, Option<&mut StatsMut<'c>>) {
        (self.out, self.lse.as_deref_mut(), self.stats.as_mut())
    }
}

/// What every attention kernel offers.
///
/// [`forward`](AttentionKernel::forward) computes
/// `O = softmax(Q·Kᵀ·scale + mask)·V` into `out` (logical `[B, Hq, Nq, dv]`, any layout) and, if
/// given, the natural-log LSE of each row into `lse` (`[B, Hq, Nq]`,
/// `-inf` for a fully masked row, whose output is 0). Inputs may be f32,
/// f16 or bf16; accumulation is f32 or wider.
///
/// A kernel implements [`run`](AttentionKernel::run) on a [`CheckedCall`];
/// `forward` validates once and calls it.
pub trait AttentionKernel: Sync {
    /// Short name used on the command line and in results ("naive").
    fn name(&self) -> &'static str;

    /// Bytes of scratch memory one call needs beyond inputs and outputs.
    fn workspace_bytes(&self, shape: &AttnShape, params: &AttnParams, par: Par) -> usize;

    /// Validates the call ([`CheckedCall::new`]), then runs the kernel.
    fn forward<T: Element>(
        &self,
        inputs: &AttnInputs<'_, T>,
        out: &mut TensorViewMut<'_>,
        lse: Option<&mut [f32]>,
        params: &AttnParams,
        par: Par,
    ) -> Result<(), AttnError> {
        self.run(CheckedCall::new(inputs, out, lse, params, par)?)
    }

    /// Runs the kernel on a validated call.
    fn run<T: Element>(&self, call: CheckedCall<'_, '_, T>) -> Result<(), AttnError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(
        b: usize,
        hq: usize,
        hkv: usize,
        nq: usize,
        nk: usize,
        d: usize,
        dv: usize,
    ) -> AttnShape {
        crate::shape::tests::shape(b, hq, hkv, nq, nk, d, dv).unwrap()
    }

    fn validate(
        inp: &AttnInputs<'_, f32>,
        out: &mut TensorViewMut<'_>,
        lse: Option<&mut [f32]>,
        p: &AttnParams,
    ) -> Result<(), AttnError> {
        CheckedCall::new(inp, out, lse, p, Par::Seq).map(|_| ())
    }

    #[test]
    fn dim_mismatch_names_tensor_and_dim() {
        let shape = shape(1, 4, 4, 2, 3, 2, 2);
        let q = vec![0f32; 16];
        let k = vec![0f32; 18]; // 3 kv heads instead of 4
        let v = vec![0f32; 24];
        let qv = TensorView::new("q", &q, [1, 4, 2, 2], Layout::Bhnd).unwrap();
        let kv = TensorView::new("k", &k, [1, 3, 3, 2], Layout::Bhnd).unwrap();
        let vv = TensorView::new("v", &v, [1, 4, 3, 2], Layout::Bhnd).unwrap();
        let e = AttnInputs::new(shape, qv, kv, vv).unwrap_err();
        assert_eq!(e.to_string(), "k: expected 4 kv heads, got 3");
    }

    #[test]
    fn from_slices_checks_lengths() {
        let shape = shape(1, 2, 1, 3, 4, 8, 4);
        let q = vec![0f32; 48];
        let k = vec![0f32; 32];
        let v = vec![0f32; 15];
        let e = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap_err();
        assert_eq!(e, AttnError::BufferLen { tensor: "v", expected: 16, got: 15 });
    }

    #[test]
    fn validate_checks_out_lse_scale_and_finiteness() {
        let shape = shape(1, 1, 1, 2, 2, 2, 2);
        let (q, k, mut v) = (vec![0f32; 4], vec![0f32; 4], vec![0f32; 4]);
        let mut o = vec![0f32; 4];
        let p = AttnParams::default();
        {
            let inp = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
            let mut o3 = vec![0f32; 6];
            let mut out = TensorViewMut::new("out", &mut o3, [1, 1, 3, 2], Layout::Bhnd).unwrap();
            let e = validate(&inp, &mut out, None, &p).unwrap_err();
            assert_eq!(e.to_string(), "out: expected 2 query positions, got 3");
            let mut out = TensorViewMut::new("out", &mut o, [1, 1, 2, 2], Layout::Bhnd).unwrap();
            let e = validate(&inp, &mut out, Some(&mut [0.0; 3]), &p).unwrap_err();
            assert!(e.to_string().starts_with("lse: buffer has 3 elements, expected 2"));
            let bad = AttnParams { scale: Some(f32::NAN), ..p };
            let e = validate(&inp, &mut out, None, &bad).unwrap_err();
            assert!(e.to_string().starts_with("scale: must be finite"));
        }
        // Finiteness is the kernels' to detect, on the rows it reaches
        // (tests/hardening.rs): validation does not scan the inputs.
        v[3] = f32::INFINITY;
        let inp = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
        let mut out = TensorViewMut::new("out", &mut o, [1, 1, 2, 2], Layout::Bhnd).unwrap();
        validate(&inp, &mut out, None, &p).unwrap();
        let bad_par =
            CheckedCall::new(&inp, &mut out, None, &p, Par::Rayon(usize::MAX.try_into().unwrap()));
        assert!(bad_par.unwrap_err().to_string().starts_with("threads: at most"));
    }
}
