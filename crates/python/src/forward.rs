//! `attention`: the forward pass on numpy arrays.

use attnlab::{
    AttnParams, AttnShape, CheckedCall, Element, Kernel, Layout, Par, StatsMut, TensorViewMut,
    error,
};
use numpy::IntoPyArray;
use numpy::ndarray::Array4;
use pyo3::prelude::*;

use crate::call::{
    Ctx, Mods, Qkv, QkvSlices, RowOutputs, borrow_out, inputs, mask, par, parse_kernel,
    parse_layout, shape_of,
};

/// The native `attention` (the documented wrapper is
/// `attnlab.attention`, which checks dtypes and ranks first).
#[pyfunction]
#[pyo3(signature = (
    q, k, v, *, causal=false, window=None, scale=None, kernel="flash", layout="bhnd",
    threads=None, return_lse=false, check_finite=true, softcap=None, alibi=None, sinks=None,
    bias=None, out=None, return_stats=false
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    causal: bool,
    window: Option<(Option<usize>, Option<usize>)>,
    scale: Option<f32>,
    kernel: &str,
    layout: &str,
    threads: Option<usize>,
    return_lse: bool,
    check_finite: bool,
    softcap: Option<f32>,
    alibi: Option<&Bound<'py, PyAny>>,
    sinks: Option<&Bound<'py, PyAny>>,
    bias: Option<&Bound<'py, PyAny>>,
    out: Option<&Bound<'py, PyAny>>,
    return_stats: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (kernel, layout) = (parse_kernel(kernel)?, parse_layout(layout)?);
    let qkv = Qkv::extract(q, k, v)?;
    let mods = Mods::extract(softcap, alibi, sinks, bias)?;
    let mem = qkv.mem_shapes();
    let ctx = Ctx::new(layout, Some(kernel), mem).with("bias", mods.bias_shape());
    let (shape, dims) = shape_of(mem, layout).map_err(|e| ctx.err(e))?;
    let params = mods.params(mask(causal, window)?, scale, check_finite)?;
    let par = par(threads)?;
    let slices = qkv.slices()?;

    // The output: the caller's buffer (borrowed after the inputs, so one
    // that overlaps them is refused) or a new one, as the facade's
    // `attention_with` allocates it.
    let out_mem = layout.memory_dims(shape.out_dims());
    let mut caller = out.map(|o| borrow_out(o, out_mem)).transpose()?;
    let mut owned = Vec::new();
    let out_buf: &mut [f32] = match caller.as_mut() {
        Some(rw) => rw.as_slice_mut().map_err(|e| crate::call::value_error(e.to_string()))?,
        None => {
            owned = error::try_zeroed("out", out_mem.iter().product()).map_err(|e| ctx.err(e))?;
            &mut owned
        }
    };
    let mut rows = RowOutputs::new(&shape, return_lse, return_stats, &ctx)?;

    let call = Forward { shape, dims, layout, kernel, params: &params, par };
    let (lse_buf, stats) = rows.buffers();
    py.detach(|| match slices {
        QkvSlices::F32(s) => call.run(s, out_buf, lse_buf, stats),
        QkvSlices::F16(s) => call.run(s, out_buf, lse_buf, stats),
    })
    .map_err(|e| ctx.err(e))?;
    drop(caller);

    let out = match out {
        Some(o) => o.clone(),
        None => Array4::from_shape_vec(out_mem, owned)
            .expect("the buffer has the output's size")
            .into_pyarray(py)
            .into_any(),
    };
    rows.result(py, out)
}

/// One forward call, checked shapes aside.
struct Forward<'p, 'a> {
    shape: AttnShape,
    dims: [[usize; 4]; 3],
    layout: Layout,
    kernel: Kernel,
    params: &'p AttnParams<'a>,
    par: Par,
}

impl Forward<'_, '_> {
    /// Runs the kernel: what `attnlab::attention_with` (or, with
    /// `stats`, `attention_with_stats`) does, on the caller's buffers.
    fn run<T: Element>(
        &self,
        qkv: [&[T]; 3],
        out: &mut [f32],
        lse: Option<&mut [f32]>,
        stats: Option<StatsMut<'_>>,
    ) -> Result<(), attnlab::AttnError> {
        let inputs = inputs(self.shape, self.dims, self.layout, qkv)?;
        let mut view = TensorViewMut::new("out", out, self.shape.out_dims(), self.layout)?;
        let call = CheckedCall::new(&inputs, &mut view, lse, self.params, self.par)?;
        match stats {
            Some(st) => self.kernel.run(call.with_stats(st)?),
            None => self.kernel.run(call),
        }
    }
}
