//! What every call shares: Q, K, V borrowed from numpy as slices, the
//! parameters (mask, scale, score modifiers), the parallelism, and
//! attnlab's errors as Python exceptions.
//!
//! The Python layer (`python/attnlab/__init__.py`) has already checked
//! each array's rank and dtype and made a C-contiguous copy of any array
//! that was not; here a non-C-contiguous array is still refused (never
//! read in the wrong order), never copied.

use attnlab::{
    Alibi, AttnError, AttnInputs, AttnParams, AttnShape, Element, Kernel, Layout, Mask, Par,
    StatsMut, TensorView, f16,
};
use numpy::IntoPyArray;
use numpy::ndarray::Array3;
use numpy::{
    Element as NpElement, PyArray4, PyReadonlyArray, PyReadonlyArray1, PyReadonlyArray4,
    PyReadwriteArray4, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyTuple};

/// A new `ValueError`.
pub(crate) fn value_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

/// The array's shape as four dims (the Python layer checked the rank).
pub(crate) fn dims4(shape: &[usize]) -> [usize; 4] {
    [shape[0], shape[1], shape[2], shape[3]]
}

/// The memory of a C-contiguous array, borrowed.
pub(crate) fn c_slice<'a, T: NpElement, D: numpy::ndarray::Dimension>(
    name: &str,
    a: &'a PyReadonlyArray<'_, T, D>,
) -> PyResult<&'a [T]> {
    // `as_slice` also accepts Fortran order, which would be read wrongly.
    if !a.is_c_contiguous() {
        return Err(value_error(format!("{name}: not C-contiguous")));
    }
    a.as_slice().map_err(|e| value_error(format!("{name}: {e}")))
}

/// Q, K and V, borrowed read-only for the whole call, of one dtype.
pub(crate) enum Qkv<'py> {
    F32([PyReadonlyArray4<'py, f32>; 3]),
    F16([PyReadonlyArray4<'py, f16>; 3]),
}

/// Q, K and V as slices: what the compute, without the GIL, reads.
#[derive(Clone, Copy)]
pub(crate) enum QkvSlices<'a> {
    F32([&'a [f32]; 3]),
    F16([&'a [f16]; 3]),
}

impl<'py> Qkv<'py> {
    /// Borrows three float32 or three float16 arrays.
    pub(crate) fn extract(
        q: &Bound<'py, PyAny>,
        k: &Bound<'py, PyAny>,
        v: &Bound<'py, PyAny>,
    ) -> PyResult<Self> {
        if q.cast::<PyArray4<f16>>().is_ok() {
            return Ok(Qkv::F16([q.extract()?, k.extract()?, v.extract()?]));
        }
        Ok(Qkv::F32([q.extract()?, k.extract()?, v.extract()?]))
    }

    /// Memory-order shapes of q, k, v.
    pub(crate) fn mem_shapes(&self) -> [[usize; 4]; 3] {
        match self {
            Qkv::F32(a) => a.each_ref().map(|x| dims4(x.shape())),
            Qkv::F16(a) => a.each_ref().map(|x| dims4(x.shape())),
        }
    }

    /// The slices, in the order q, k, v.
    pub(crate) fn slices(&self) -> PyResult<QkvSlices<'_>> {
        const NAMES: [&str; 3] = ["q", "k", "v"];
        Ok(match self {
            Qkv::F32([q, k, v]) => QkvSlices::F32([
                c_slice(NAMES[0], q)?,
                c_slice(NAMES[1], k)?,
                c_slice(NAMES[2], v)?,
            ]),
            Qkv::F16([q, k, v]) => QkvSlices::F16([
                c_slice(NAMES[0], q)?,
                c_slice(NAMES[1], k)?,
                c_slice(NAMES[2], v)?,
            ]),
        })
    }
}

/// The problem's shape from the memory shapes of Q, K, V (as `attn run`
/// derives it: B, Hq, Nq, d from Q; Hkv, Nk from K; dv from V), and the
/// logical dims of each.
pub(crate) fn shape_of(
    mem: [[usize; 4]; 3],
    layout: Layout,
) -> Result<(AttnShape, [[usize; 4]; 3]), AttnError> {
    let dims = mem.map(|m| layout.logical_dims(m));
    let [[b, hq, nq, d], [_, hkv, nk, _], [.., dv]] = dims;
    let shape = AttnShape::builder()
        .batch(b)
        .q_heads(hq)
        .kv_heads(hkv)
        .q_len(nq)
        .kv_len(nk)
        .head_dim(d)
        .v_dim(dv)
        .build()?;
    Ok((shape, dims))
}

/// Views of Q, K, V checked against `shape`, each named, so that a
/// mismatch names the tensor and the dimension.
pub(crate) fn inputs<'a, T: Element>(
    shape: AttnShape,
    dims: [[usize; 4]; 3],
    layout: Layout,
    [q, k, v]: [&'a [T]; 3],
) -> Result<AttnInputs<'a, T>, AttnError> {
    AttnInputs::new(
        shape,
        TensorView::new("q", q, dims[0], layout)?,
        TensorView::new("k", k, dims[1], layout)?,
        TensorView::new("v", v, dims[2], layout)?,
    )
}

/// `"bhnd"` or `"bnhd"`.
pub(crate) fn parse_layout(s: &str) -> PyResult<Layout> {
    match s {
        "bhnd" => Ok(Layout::Bhnd),
        "bnhd" => Ok(Layout::Bnhd),
        _ => Err(value_error(format!("unknown layout '{s}' (expected bhnd or bnhd)"))),
    }
}

/// `"flash"`, `"naive"` or `"oracle"`.
pub(crate) fn parse_kernel(s: &str) -> PyResult<Kernel> {
    s.parse::<Kernel>().map_err(value_error)
}

/// The mask of `causal` and `window` (`(left, right)`, `None` an unbounded
/// side; the Python layer turned `-1` into `None`).
pub(crate) fn mask(causal: bool, window: Option<(Option<usize>, Option<usize>)>) -> PyResult<Mask> {
    match (causal, window) {
        (true, Some(_)) => Err(value_error(
            "causal=True and window cannot be combined (causal is window=(None, 0))",
        )),
        (true, None) => Ok(Mask::Causal),
        (false, Some((left, right))) => Ok(Mask::Window { left, right }),
        (false, None) => Ok(Mask::None),
    }
}

/// `None`: every worker of the global rayon pool (all cores); `n`: a
/// pool of exactly `n` threads.
pub(crate) fn par(threads: Option<usize>) -> PyResult<Par> {
    match threads {
        None => Ok(Par::Pool),
        Some(n) => Par::rayon(n).map_err(|e| value_error(e.to_string())),
    }
}

/// The score modifiers of one call, borrowed for its whole duration.
pub(crate) struct Mods<'py> {
    softcap: Option<f32>,
    alibi: Option<Option<PyReadonlyArray1<'py, f32>>>,
    sinks: Option<PyReadonlyArray1<'py, f32>>,
    bias: Option<PyReadonlyArray4<'py, f32>>,
}

impl<'py> Mods<'py> {
    /// `alibi`: `True` (the default slopes) or a float32 array of slopes;
    /// `sinks`: a float32 array; `bias`: a 4-d float32 array.
    pub(crate) fn extract(
        softcap: Option<f32>,
        alibi: Option<&Bound<'py, PyAny>>,
        sinks: Option<&Bound<'py, PyAny>>,
        bias: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Self> {
        let alibi = match alibi {
            None => None,
            Some(a) if a.is_instance_of::<PyBool>() => a.extract::<bool>()?.then_some(None),
            Some(a) => Some(Some(a.extract()?)),
        };
        Ok(Mods {
            softcap,
            alibi,
            sinks: sinks.map(|s| s.extract()).transpose()?,
            bias: bias.map(|b| b.extract()).transpose()?,
        })
    }

    /// Whether the call has sinks (the backward then returns their
    /// gradient).
    pub(crate) fn has_sinks(&self) -> bool {
        self.sinks.is_some()
    }

    /// The bias's shape, for error messages.
    pub(crate) fn bias_shape(&self) -> Option<Vec<usize>> {
        self.bias.as_ref().map(|b| b.shape().to_vec())
    }

    /// The call's parameters, borrowing the modifiers' arrays.
    pub(crate) fn params(
        &self,
        mask: Mask,
        scale: Option<f32>,
        check_finite: bool,
    ) -> PyResult<AttnParams<'_>> {
        let alibi = match &self.alibi {
            None => None,
            Some(None) => Some(Alibi::Default),
            Some(Some(s)) => Some(Alibi::Slopes(c_slice("alibi", s)?)),
        };
        let bias = match &self.bias {
            None => None,
            Some(b) => Some(
                TensorView::new("bias", c_slice("bias", b)?, dims4(b.shape()), Layout::Bhnd)
                    .map_err(|e| value_error(e.to_string()))?,
            ),
        };
        let sinks = self.sinks.as_ref().map(|s| c_slice("sinks", s)).transpose()?;
        Ok(AttnParams {
            scale,
            mask,
            check_finite,
            softcap: self.softcap,
            alibi,
            sinks,
            bias,
            positions: None,
        })
    }
}

/// The caller's output buffer, borrowed writable: float32, C-contiguous,
/// of shape `want` (memory order). Borrowed after the inputs, so an
/// output that shares memory with one of them is refused.
pub(crate) fn borrow_out<'py>(
    out: &Bound<'py, PyAny>,
    want: [usize; 4],
) -> PyResult<PyReadwriteArray4<'py, f32>> {
    let a = out.cast::<PyArray4<f32>>().map_err(|_| {
        value_error(format!("out: expected a float32 array of shape {want:?}, C-contiguous"))
    })?;
    if a.shape() != want || !a.is_c_contiguous() {
        return Err(value_error(format!(
            "out: expected shape {want:?}, float32, C-contiguous; got shape {:?}{}",
            a.shape(),
            if a.is_c_contiguous() { "" } else { ", not C-contiguous" }
        )));
    }
    use numpy::PyArrayMethods;
    a.try_readwrite().map_err(|e| {
        value_error(format!(
            "out: cannot write to it ({e}): it must be writeable and share no memory with the \
             inputs"
        ))
    })
}

/// The tensors of a call, for error messages: their memory-order shapes by
/// name, the layout and the kernel.
pub(crate) struct Ctx {
    pub(crate) layout: Layout,
    pub(crate) kernel: Option<Kernel>,
    pub(crate) tensors: Vec<(&'static str, Vec<usize>)>,
}

impl Ctx {
    /// A context with q, k, v.
    pub(crate) fn new(layout: Layout, kernel: Option<Kernel>, mem: [[usize; 4]; 3]) -> Ctx {
        let tensors = ["q", "k", "v"].into_iter().zip(mem.map(|m| m.to_vec())).collect();
        Ctx { layout, kernel, tensors }
    }

    /// Adds a tensor (its memory-order shape).
    pub(crate) fn with(mut self, name: &'static str, shape: Option<Vec<usize>>) -> Ctx {
        if let Some(s) = shape {
            self.tensors.push((name, s));
        }
        self
    }

    /// `(q [1, 8, 128, 64], k [...], v [...], layout bhnd)`, like `attn run`.
    fn note(&self) -> String {
        let parts: Vec<String> =
            self.tensors.iter().map(|(n, s)| format!("{n} {}", shape_str(s))).collect();
        let layout = match self.layout {
            Layout::Bhnd => "bhnd",
            Layout::Bnhd => "bnhd",
        };
        format!("({}, layout {layout})", parts.join(", "))
    }

    /// attnlab's error as a Python exception: `MemoryError` for a buffer
    /// too large, `ValueError` otherwise, with the message `attn run`
    /// prints (without its file name): the attnlab error, the shapes of
    /// the inputs for a shape mismatch, the multi-index of a non-finite
    /// value.
    pub(crate) fn err(&self, e: AttnError) -> PyErr {
        match e {
            AttnError::OutOfMemory { .. } | AttnError::Overflow { .. } => {
                PyMemoryError::new_err(e.to_string())
            }
            AttnError::NonFinite { tensor, index, value } => {
                let at = match self.tensors.iter().find(|(n, _)| *n == tensor) {
                    Some((_, shape)) => format!("index {} (flat index {index})", {
                        shape_str(&unravel(index, shape))
                    }),
                    None => format!("flat index {index}"),
                };
                value_error(format!(
                    "{tensor}: non-finite value {value} at {at}; pass check_finite=False to let \
                     it propagate as IEEE arithmetic does"
                ))
            }
            AttnError::Dim { .. }
            | AttnError::HeadsNotDivisible { .. }
            | AttnError::ZeroDim { .. } => value_error(format!("{e} {}", self.note())),
            AttnError::Unsupported { .. } => match self.kernel {
                Some(k) => value_error(format!("kernel {k}: {e}")),
                None => value_error(e.to_string()),
            },
            _ => value_error(e.to_string()),
        }
    }
}

/// Per-row results of a call (`[B, Hq, Nq]` each, f32): the LSE and the
/// saturation statistics, when asked, allocated up front.
pub(crate) struct RowOutputs {
    /// `(B, Hq, Nq)`.
    pub(crate) dims: (usize, usize, usize),
    pub(crate) lse: Option<Vec<f32>>,
    /// `(max_p, entropy)`.
    pub(crate) stats: Option<(Vec<f32>, Vec<f32>)>,
}

impl RowOutputs {
    /// The buffers `return_lse` and `return_stats` ask for, for `shape`.
    pub(crate) fn new(
        shape: &AttnShape,
        return_lse: bool,
        return_stats: bool,
        ctx: &Ctx,
    ) -> PyResult<RowOutputs> {
        let n = shape.lse_len();
        let buf = |name| attnlab::error::try_zeroed::<f32>(name, n).map_err(|e| ctx.err(e));
        Ok(RowOutputs {
            dims: (shape.batch(), shape.q_heads(), shape.q_len()),
            lse: if return_lse { Some(buf("lse")?) } else { None },
            stats: if return_stats { Some((buf("max_p")?, buf("entropy")?)) } else { None },
        })
    }

    /// The LSE buffer and the statistics' [`StatsMut`], for the call.
    pub(crate) fn buffers(&mut self) -> (Option<&mut [f32]>, Option<StatsMut<'_>>) {
        let stats = self.stats.as_mut().map(|(p, h)| StatsMut { max_p: p, entropy: h });
        (self.lse.as_deref_mut(), stats)
    }

    /// What the call returns: `out` alone, or a tuple of `out`, the LSE
    /// array (when asked) and the statistics as a dict of arrays
    /// `max_p`, `entropy` and `support = exp(entropy)` (when asked).
    pub(crate) fn result<'py>(
        self,
        py: Python<'py>,
        out: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let array = |v: Vec<f32>| {
            Array3::from_shape_vec(self.dims, v).expect("sized").into_pyarray(py).into_any()
        };
        let mut items = vec![out];
        if let Some(l) = self.lse {
            items.push(array(l));
        }
        if let Some((p, h)) = self.stats {
            let d = PyDict::new(py);
            let support = h.iter().map(|x| x.exp()).collect();
            d.set_item("max_p", array(p))?;
            d.set_item("entropy", array(h))?;
            d.set_item("support", array(support))?;
            items.push(d.into_any());
        }
        match items.len() {
            1 => Ok(items.pop().expect("one item")),
            _ => Ok(PyTuple::new(py, items)?.into_any()),
        }
    }
}

/// `[1, 8, 128, 64]`.
pub(crate) fn shape_str(s: &[usize]) -> String {
    format!("{s:?}")
}

/// The multi-index of flat `index` in a C-order array of `shape`.
pub(crate) fn unravel(mut index: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = index % d;
            index /= d;
        }
    }
    idx
}
