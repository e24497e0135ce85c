//! `attnlab._attnlab`: the native part of the `attnlab` Python package.
//!
//! The package's `__init__.py` is what users call: it checks each array's
//! rank and dtype, makes a C-contiguous copy of an array that is not one,
//! and calls the functions here, which borrow the arrays' memory (no copy),
//! run attnlab with the GIL released, and return new numpy arrays that own
//! attnlab's output buffers (no copy either). attnlab's errors become
//! `ValueError`, or `MemoryError` for a buffer too large, with the messages
//! of the `attn` command line.
//!
//! | module | holds |
//! |---|---|
//! | `call` | Q, K, V as slices; mask, modifiers, threads; errors |
//! | `forward` | `attention` |
//! | `backward` | `attention_backward` |
//! | `cache` | `KvCache`: append and decode |

#![warn(missing_docs)]

mod backward;
mod cache;
mod call;
mod forward;

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The version of attnlab this module was built from.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The vector instruction sets the kernels were compiled for, e.g.
/// `"sse4.2 avx2 fma avx512f"`, or `"baseline"`.
#[pyfunction]
fn compiled_isa() -> String {
    attnlab::isa::compiled()
}

/// A warning when this build leaves vector units of the running CPU
/// unused (it was compiled without `-C target-cpu=native`), else `None`.
#[pyfunction]
fn isa_warning() -> Option<String> {
    attnlab::isa::warning()
}

/// This machine's measured limits, as `attn peak --json` prints them.
#[pyfunction]
#[pyo3(signature = (threads=None, quick=false))]
fn peak(py: Python<'_>, threads: Option<usize>, quick: bool) -> PyResult<Bound<'_, PyDict>> {
    use harness::machine::{PeakOptions, logical_cpus, measure_peak};
    let threads = threads.unwrap_or_else(logical_cpus).max(1);
    let opts = if quick { PeakOptions::quick(threads) } else { PeakOptions::new(threads) };
    let p = py.detach(|| measure_peak(&opts));
    let d = PyDict::new(py);
    d.set_item("fma_gflops_1t", p.fma_gflops_1t)?;
    d.set_item("fma_gflops_all", p.fma_gflops_all)?;
    d.set_item("read_gbs_1t", p.read_gbs_1t)?;
    d.set_item("read_gbs_all", p.read_gbs_all)?;
    d.set_item("threads_all", p.threads_all)?;
    d.set_item("fma_method", p.fma_method)?;
    d.set_item("read_method", p.read_method)?;
    Ok(d)
}

/// The module.
#[pymodule]
fn _attnlab(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(forward::attention, m)?)?;
    m.add_function(wrap_pyfunction!(backward::attention_backward, m)?)?;
    m.add_class::<cache::KvCache>()?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(compiled_isa, m)?)?;
    m.add_function(wrap_pyfunction!(isa_warning, m)?)?;
    m.add_function(wrap_pyfunction!(peak, m)?)?;
    Ok(())
}
