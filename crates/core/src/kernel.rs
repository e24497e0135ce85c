//! The contract every kernel implements, and the one validation routine
//! that runs at the boundary of every call.

use crate::element::Element;
use crate::error::AttnError;
use crate::params::{AttnParams, Par};
use crate::shape::AttnShape;
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

const Q_DIMS: [&str; 4] = ["batch entries", "q heads", "query positions", "features (head_dim)"];
const K_DIMS: [&str; 4] = ["batch entries", "kv heads", "key positions", "features (head_dim)"];
const V_DIMS: [&str; 4] = ["batch entries", "kv heads", "key positions", "features (v_dim)"];
const O_DIMS: [&str; 4] = ["batch entries", "q heads", "query positions", "features (v_dim)"];

fn check_dims(
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

/// Checks everything about a call once, before any kernel work: output and
/// LSE sizes, parameters, and (unless opted out) finiteness of Q, K, V.
pub fn validate_call<T: Element>(
    inputs: &AttnInputs<'_, T>,
    out: &TensorViewMut<'_>,
    lse: Option<&[f32]>,
    params: &AttnParams,
) -> Result<(), AttnError> {
    let shape = inputs.shape();
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
    params.validate()?;
    if params.check_finite {
        inputs.q.check_finite()?;
        inputs.k.check_finite()?;
        inputs.v.check_finite()?;
    }
    Ok(())
}

/// What every attention kernel offers.
///
/// `forward` computes `O = softmax(Q·Kᵀ·scale + mask)·V` into `out`
/// (logical `[B, Hq, Nq, dv]`, any layout) and, if given, the natural-log
/// LSE of each row into `lse` (`[B, Hq, Nq]`, `-inf` for a fully masked row,
/// whose output is 0). Inputs may be f32, f16 or bf16; accumulation is f32
/// or wider.
pub trait AttentionKernel: Sync {
    /// Short name used on the command line and in results ("naive").
    fn name(&self) -> &'static str;

    /// Bytes of scratch memory one call needs beyond inputs and outputs.
    fn workspace_bytes(&self, shape: &AttnShape, params: &AttnParams, par: Par) -> usize;

    /// Runs the kernel; validates first (see [`validate_call`]).
    fn forward<T: Element>(
        &self,
        inputs: &AttnInputs<'_, T>,
        out: &mut TensorViewMut<'_>,
        lse: Option<&mut [f32]>,
        params: &AttnParams,
        par: Par,
    ) -> Result<(), AttnError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dim_mismatch_names_tensor_and_dim() {
        let shape = AttnShape::new(1, 4, 4, 2, 3, 2, 2).unwrap();
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
        let shape = AttnShape::new(1, 2, 1, 3, 4, 8, 4).unwrap();
        let q = vec![0f32; 48];
        let k = vec![0f32; 32];
        let v = vec![0f32; 15];
        let e = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap_err();
        assert_eq!(e, AttnError::BufferLen { tensor: "v", expected: 16, got: 15 });
    }

    #[test]
    fn validate_checks_out_lse_scale_and_finiteness() {
        let shape = AttnShape::new(1, 1, 1, 2, 2, 2, 2).unwrap();
        let (q, k, mut v) = (vec![0f32; 4], vec![0f32; 4], vec![0f32; 4]);
        let mut o = vec![0f32; 4];
        let p = AttnParams::default();
        {
            let inp = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
            let mut o3 = vec![0f32; 6];
            let out = TensorViewMut::new("out", &mut o3, [1, 1, 3, 2], Layout::Bhnd).unwrap();
            let e = validate_call(&inp, &out, None, &p).unwrap_err();
            assert_eq!(e.to_string(), "out: expected 2 query positions, got 3");
            let out = TensorViewMut::new("out", &mut o, [1, 1, 2, 2], Layout::Bhnd).unwrap();
            let e = validate_call(&inp, &out, Some(&[0.0; 3]), &p).unwrap_err();
            assert!(e.to_string().starts_with("lse: buffer has 3 elements, expected 2"));
            let bad = AttnParams { scale: Some(f32::NAN), ..p };
            let e = validate_call(&inp, &out, None, &bad).unwrap_err();
            assert!(e.to_string().starts_with("scale: must be finite"));
        }
        v[3] = f32::INFINITY;
        let inp = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
        let out = TensorViewMut::new("out", &mut o, [1, 1, 2, 2], Layout::Bhnd).unwrap();
        let e = validate_call(&inp, &out, None, &p).unwrap_err();
        assert_eq!(e, AttnError::NonFinite { tensor: "v", index: 3, value: f32::INFINITY });
        let off = AttnParams { check_finite: false, ..p };
        validate_call(&inp, &out, None, &off).unwrap();
    }
}
