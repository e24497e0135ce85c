//! `attention_backward`: dQ, dK, dV (and dsinks) on numpy arrays.

use attnlab::{
    AttnError, AttnParams, AttnShape, BackwardInputs, Element, GradsMut, Kernel, Layout, Par,
    TensorView, TensorViewMut, error,
};
use numpy::ndarray::{Array1, Array4};
use numpy::{IntoPyArray, PyReadonlyArray3, PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::call::{
    Ctx, Mods, Qkv, QkvSlices, c_slice, dims4, inputs, mask, par, parse_kernel, parse_layout,
    shape_of, value_error,
};

/// The native `attention_backward` (the documented wrapper is
/// `attnlab.attention_backward`).
#[pyfunction]
#[pyo3(signature = (
    q, k, v, out, lse, d_out, *, causal=false, window=None, scale=None, kernel="flash",
    layout="bhnd", threads=None, check_finite=true, softcap=None, alibi=None, sinks=None,
    bias=None
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    out: PyReadonlyArray4<'py, f32>,
    lse: PyReadonlyArray3<'py, f32>,
    d_out: PyReadonlyArray4<'py, f32>,
    causal: bool,
    window: Option<(Option<usize>, Option<usize>)>,
    scale: Option<f32>,
    kernel: &str,
    layout: &str,
    threads: Option<usize>,
    check_finite: bool,
    softcap: Option<f32>,
    alibi: Option<&Bound<'py, PyAny>>,
    sinks: Option<&Bound<'py, PyAny>>,
    bias: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let (kernel, layout) = (parse_kernel(kernel)?, parse_layout(layout)?);
    let qkv = Qkv::extract(q, k, v)?;
    let mods = Mods::extract(softcap, alibi, sinks, bias)?;
    let mem = qkv.mem_shapes();
    let ctx = Ctx::new(layout, Some(kernel), mem)
        .with("out", Some(out.shape().to_vec()))
        .with("lse", Some(lse.shape().to_vec()))
        .with("d_out", Some(d_out.shape().to_vec()))
        .with("bias", mods.bias_shape());
    let (shape, dims) = shape_of(mem, layout).map_err(|e| ctx.err(e))?;
    let want_lse = [shape.batch(), shape.q_heads(), shape.q_len()];
    if lse.shape() != want_lse {
        return Err(value_error(format!(
            "lse: expected shape {want_lse:?} ([B, Hq, Nq] in any layout), got {:?}",
            lse.shape()
        )));
    }
    let params = mods.params(mask(causal, window)?, scale, check_finite)?;
    let par = par(threads)?;
    let slices = qkv.slices()?;
    let rest = Rest {
        out: (c_slice("out", &out)?, layout.logical_dims(dims4(out.shape()))),
        lse: c_slice("lse", &lse)?,
        d_out: (c_slice("d_out", &d_out)?, layout.logical_dims(dims4(d_out.shape()))),
    };

    let n = |d: [usize; 4]| d.iter().product::<usize>();
    let err = |e| ctx.err(e);
    let mut dq = error::try_zeroed::<f32>("dq", n(shape.q_dims())).map_err(err)?;
    let mut dk = error::try_zeroed::<f32>("dk", n(shape.k_dims())).map_err(err)?;
    let mut dv = error::try_zeroed::<f32>("dv", n(shape.v_dims())).map_err(err)?;
    let mut dsinks = mods.has_sinks().then(|| vec![0f32; shape.q_heads()]);

    let call = Backward { shape, dims, layout, kernel, params: &params, par };
    let grads = Grads { dq: &mut dq, dk: &mut dk, dv: &mut dv, dsinks: dsinks.as_deref_mut() };
    py.detach(|| match slices {
        QkvSlices::F32(s) => call.run(s, &rest, grads),
        QkvSlices::F16(s) => call.run(s, &rest, grads),
    })
    .map_err(err)?;

    let array = |v: Vec<f32>, d: [usize; 4]| {
        let mem = layout.memory_dims(d);
        Array4::from_shape_vec(mem, v).expect("the buffer has its size").into_pyarray(py).into_any()
    };
    let mut items =
        vec![array(dq, shape.q_dims()), array(dk, shape.k_dims()), array(dv, shape.v_dims())];
    if let Some(ds) = dsinks {
        items.push(Array1::from_vec(ds).into_pyarray(py).into_any());
    }
    PyTuple::new(py, items)
}

/// O, LSE and dO as slices, with the logical dims of O and dO.
struct Rest<'a> {
    out: (&'a [f32], [usize; 4]),
    lse: &'a [f32],
    d_out: (&'a [f32], [usize; 4]),
}

/// The gradient buffers.
struct Grads<'g> {
    dq: &'g mut [f32],
    dk: &'g mut [f32],
    dv: &'g mut [f32],
    dsinks: Option<&'g mut [f32]>,
}

/// One backward call, checked shapes aside.
struct Backward<'p, 'a> {
    shape: AttnShape,
    dims: [[usize; 4]; 3],
    layout: Layout,
    kernel: Kernel,
    params: &'p AttnParams<'a>,
    par: Par,
}

impl Backward<'_, '_> {
    /// What `attnlab::attention_backward_with` does, with `dsinks` too.
    fn run<T: Element>(
        &self,
        qkv: [&[T]; 3],
        rest: &Rest<'_>,
        g: Grads<'_>,
    ) -> Result<(), AttnError> {
        let fwd = inputs(self.shape, self.dims, self.layout, qkv)?;
        let inputs = BackwardInputs::new(
            fwd,
            TensorView::new("out", rest.out.0, rest.out.1, self.layout)?,
            rest.lse,
            TensorView::new("d_out", rest.d_out.0, rest.d_out.1, self.layout)?,
        )?;
        let (s, l) = (&self.shape, self.layout);
        let mut grads = GradsMut {
            dq: TensorViewMut::new("dq", g.dq, s.q_dims(), l)?,
            dk: TensorViewMut::new("dk", g.dk, s.k_dims(), l)?,
            dv: TensorViewMut::new("dv", g.dv, s.v_dims(), l)?,
            dsinks: g.dsinks,
        };
        self.kernel.backward(&inputs, &mut grads, self.params, self.par)
    }
}
