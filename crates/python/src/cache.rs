//! `KvCache`: attnlab's KV cache (f32, f16, bf16 or q8_0 storage, ragged
//! lengths) and decode over it.

use attnlab::flash::{self, KvElement, Q8_0};
use attnlab::{AttnError, Layout, bf16, error, f16};
use numpy::ndarray::Array4;
use numpy::{IntoPyArray, PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::call::{Ctx, Mods, RowOutputs, c_slice, dims4, mask, par, shape_str, value_error};

/// The cache, one variant per storage type.
enum Store {
    F32(flash::KvCache<f32>),
    F16(flash::KvCache<f16>),
    Bf16(flash::KvCache<bf16>),
    Q8(flash::KvCache<Q8_0>),
}

/// Runs `$body` with `$c` bound to the cache of whatever storage type.
macro_rules! with_cache {
    ($store:expr, $c:ident => $body:expr) => {
        match $store {
            Store::F32($c) => $body,
            Store::F16($c) => $body,
            Store::Bf16($c) => $body,
            Store::Q8($c) => $body,
        }
    };
}

/// The native `KvCache` (subclassed by `attnlab.KvCache`, which converts
/// its arguments and documents it).
#[pyclass(module = "attnlab._attnlab", subclass)]
pub(crate) struct KvCache {
    store: Store,
}

/// K and V of one `append`, with each batch entry's positions.
struct Append<'a> {
    k: &'a [f32],
    v: &'a [f32],
    /// Positions per entry in the arrays (`n` of `[B, Hkv, n, d]`).
    n: usize,
    /// Positions to append for each entry (`<= n`).
    lens: Vec<usize>,
}

#[pymethods]
impl KvCache {
    #[new]
    #[pyo3(signature = (batch, kv_heads, capacity, head_dim, v_dim=None, dtype="f32"))]
    fn new(
        py: Python<'_>,
        batch: usize,
        kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        v_dim: Option<usize>,
        dtype: &str,
    ) -> PyResult<Self> {
        let dv = v_dim.unwrap_or(head_dim);
        let ctx = Ctx { layout: Layout::Bhnd, kernel: None, tensors: Vec::new() };
        // Allocating (and zeroing) a large cache takes a while: without
        // the GIL.
        let store = py
            .detach(|| {
                Ok(match dtype {
                    "f32" => {
                        Store::F32(flash::KvCache::new(batch, kv_heads, capacity, head_dim, dv)?)
                    }
                    "f16" => {
                        Store::F16(flash::KvCache::new(batch, kv_heads, capacity, head_dim, dv)?)
                    }
                    "bf16" => {
                        Store::Bf16(flash::KvCache::new(batch, kv_heads, capacity, head_dim, dv)?)
                    }
                    "q8_0" => {
                        Store::Q8(flash::KvCache::new(batch, kv_heads, capacity, head_dim, dv)?)
                    }
                    _ => return Err(None),
                })
            })
            .map_err(|e: Option<AttnError>| match e {
                Some(e) => ctx.err(e),
                None => value_error(format!(
                    "dtype: unknown cache storage '{dtype}' (expected f32, f16, bf16 or q8_0)"
                )),
            })?;
        Ok(KvCache { store })
    }

    /// Batch entries.
    #[getter]
    fn batch(&self) -> usize {
        with_cache!(&self.store, c => c.batch())
    }
    /// K/V heads.
    #[getter]
    fn kv_heads(&self) -> usize {
        with_cache!(&self.store, c => c.kv_heads())
    }
    /// Positions each batch entry can hold.
    #[getter]
    fn capacity(&self) -> usize {
        with_cache!(&self.store, c => c.capacity())
    }
    /// K head dim.
    #[getter]
    fn head_dim(&self) -> usize {
        with_cache!(&self.store, c => c.head_dim())
    }
    /// V head dim.
    #[getter]
    fn v_dim(&self) -> usize {
        with_cache!(&self.store, c => c.v_dim())
    }
    /// Storage type: "f32", "f16", "bf16" or "q8_0".
    #[getter]
    fn dtype(&self) -> &'static str {
        fn name<T: KvElement>(_: &flash::KvCache<T>) -> &'static str {
            T::NAME
        }
        with_cache!(&self.store, c => name(c))
    }
    /// Stored positions of each batch entry.
    #[getter]
    fn lengths(&self) -> Vec<usize> {
        with_cache!(&self.store, c => c.lens().to_vec())
    }
    /// Bytes of K and V that a decode step over the current lengths reads.
    #[getter]
    fn bytes_in_use(&self) -> usize {
        with_cache!(&self.store, c => c.bytes_in_use())
    }

    /// Forgets every stored position (keeps the memory).
    fn clear(&mut self) {
        with_cache!(&mut self.store, c => c.clear())
    }

    fn __repr__(&self) -> String {
        format!(
            "KvCache(batch={}, kv_heads={}, capacity={}, head_dim={}, v_dim={}, dtype='{}', \
             lengths={:?})",
            self.batch(),
            self.kv_heads(),
            self.capacity(),
            self.head_dim(),
            self.v_dim(),
            self.dtype(),
            self.lengths()
        )
    }

    /// Appends positions to every batch entry: `k` `[B, Hkv, n, d]`, `v`
    /// `[B, Hkv, n, dv]`, float32, C order; entry `b` gets the first
    /// `lengths[b]` of its `n` positions (all `n` by default). All or
    /// nothing: every entry is checked (capacity, finite values that fit
    /// the storage) before any is appended.
    #[pyo3(signature = (k, v, lengths=None))]
    fn append(
        &mut self,
        py: Python<'_>,
        k: PyReadonlyArray4<'_, f32>,
        v: PyReadonlyArray4<'_, f32>,
        lengths: Option<Vec<usize>>,
    ) -> PyResult<()> {
        let (ks, vs) = (dims4(k.shape()), dims4(v.shape()));
        let (b, hkv, d, dv) = (self.batch(), self.kv_heads(), self.head_dim(), self.v_dim());
        let n = ks[2];
        let dim = |tensor, dim, expected, got| {
            value_error(format!(
                "{} (k {}, v {}, cache [B={b}, Hkv={hkv}, d={d}, dv={dv}])",
                AttnError::Dim { tensor, dim, expected, got },
                shape_str(&ks),
                shape_str(&vs)
            ))
        };
        for (tensor, s, last, last_name) in [("k", ks, d, "head_dim"), ("v", vs, dv, "v_dim")] {
            let want =
                [(b, "batch entries"), (hkv, "kv heads"), (n, "positions"), (last, last_name)];
            for (i, (w, name)) in want.into_iter().enumerate() {
                if s[i] != w {
                    return Err(dim(tensor, name, w, s[i]));
                }
            }
        }
        let lens = match lengths {
            None => vec![n; b],
            Some(l) if l.len() != b => {
                return Err(value_error(format!(
                    "lengths: expected one length per batch entry ({b}), got {}",
                    l.len()
                )));
            }
            Some(l) => match l.iter().position(|&x| x > n) {
                Some(i) => {
                    return Err(value_error(format!(
                        "lengths: entry {i} asks for {} positions, but k and v hold {n}",
                        l[i]
                    )));
                }
                None => l,
            },
        };
        let a = Append { k: c_slice("k", &k)?, v: c_slice("v", &v)?, n, lens };
        let store = &mut self.store;
        py.detach(|| with_cache!(store, c => append_all(c, &a)))
    }

    /// Decode over the cache: `q` `[B, Hq, nq, d]` float32, C order, the
    /// last `nq` positions of each sequence (already appended).
    #[pyo3(signature = (
        q, *, causal=false, window=None, scale=None, threads=None, return_lse=false,
        check_finite=true, softcap=None, alibi=None, sinks=None, return_stats=false
    ))]
    #[allow(clippy::too_many_arguments)]
    fn decode<'py>(
        &self,
        py: Python<'py>,
        q: PyReadonlyArray4<'py, f32>,
        causal: bool,
        window: Option<(Option<usize>, Option<usize>)>,
        scale: Option<f32>,
        threads: Option<usize>,
        return_lse: bool,
        check_finite: bool,
        softcap: Option<f32>,
        alibi: Option<&Bound<'py, PyAny>>,
        sinks: Option<&Bound<'py, PyAny>>,
        return_stats: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let qs = dims4(q.shape());
        let ctx = Ctx { layout: Layout::Bhnd, kernel: None, tensors: vec![("q", qs.to_vec())] };
        let (b, d) = (self.batch(), self.head_dim());
        for (i, want, name) in
            [(0, b, "batch entries (the cache's)"), (3, d, "head dim (the cache's)")]
        {
            if qs[i] != want {
                let e = AttnError::Dim { tensor: "q", dim: name, expected: want, got: qs[i] };
                return Err(ctx.err(e));
            }
        }
        let shape =
            with_cache!(&self.store, c => c.query_shape(qs[1], qs[2])).map_err(|e| ctx.err(e))?;
        let mods = Mods::extract(softcap, alibi, sinks, None)?;
        let params = mods.params(mask(causal, window)?, scale, check_finite)?;
        let par = par(threads)?;
        let qv = c_slice("q", &q)?;
        let out_dims = shape.out_dims();
        let mut out =
            error::try_zeroed::<f32>("out", out_dims.iter().product()).map_err(|e| ctx.err(e))?;
        let mut rows = RowOutputs::new(&shape, return_lse, return_stats, &ctx)?;
        let (store, out_buf) = (&self.store, &mut out[..]);
        let (lse_buf, stats) = rows.buffers();
        py.detach(|| match stats {
            None => with_cache!(store, c => flash::decode(
                c, &shape, qv, out_buf, lse_buf, &params, par
            )),
            Some(st) => with_cache!(store, c => flash::decode_with_stats(
                c, &shape, qv, out_buf, lse_buf, st, &params, par
            )),
        })
        .map_err(|e| ctx.err(e))?;
        let out = Array4::from_shape_vec(out_dims, out).expect("sized").into_pyarray(py).into_any();
        rows.result(py, out)
    }
}

/// Appends `a` to every entry of `cache`, or nothing: first every row of
/// every entry is stored into a scratch row (the conversion `append`
/// does), so that a value that is not finite, or not once stored, is
/// found before the cache changes; then the entries are appended.
fn append_all<T: KvElement>(cache: &mut flash::KvCache<T>, a: &Append<'_>) -> PyResult<()> {
    let (hkv, n) = (cache.kv_heads(), a.n);
    for (tensor, x, dim) in [("k", a.k, cache.head_dim()), ("v", a.v, cache.v_dim())] {
        let mut scratch = vec![T::default(); T::units(dim)];
        for (b, &len) in a.lens.iter().enumerate() {
            for g in 0..hkv {
                for t in 0..len {
                    let at = ((b * hkv + g) * n + t) * dim;
                    let row = &x[at..at + dim];
                    if let Err(c) = T::store(row, &mut scratch) {
                        let index = format!("[{b}, {g}, {t}, {c}]");
                        return Err(value_error(if row[c].is_finite() {
                            format!(
                                "{tensor}: value {} at index {index} overflows the cache's {} \
                                 storage",
                                row[c],
                                T::NAME
                            )
                        } else {
                            format!("{tensor}: non-finite value {} at index {index}", row[c])
                        }));
                    }
                }
            }
        }
    }
    for (b, &len) in a.lens.iter().enumerate() {
        let free = cache.capacity() - cache.lens()[b];
        if len > free {
            return Err(value_error(format!(
                "kv cache: batch entry {b} holds {} of {} positions; appending {len} would exceed \
                 the capacity (nothing was appended)",
                cache.lens()[b],
                cache.capacity()
            )));
        }
    }
    for (b, &len) in a.lens.iter().enumerate() {
        let (k, v) = (
            entry(a.k, b, hkv, n, len, cache.head_dim()),
            entry(a.v, b, hkv, n, len, cache.v_dim()),
        );
        cache.append(b, &k, &v).map_err(|e| value_error(e.to_string()))?;
    }
    Ok(())
}

/// Entry `b`'s first `len` positions of `x` (`[B, Hkv, n, dim]`) as
/// `[Hkv, len, dim]`: borrowed when `len == n`, copied otherwise.
fn entry(
    x: &[f32],
    b: usize,
    hkv: usize,
    n: usize,
    len: usize,
    dim: usize,
) -> std::borrow::Cow<'_, [f32]> {
    let slab = &x[b * hkv * n * dim..(b + 1) * hkv * n * dim];
    if len == n {
        return slab.into();
    }
    let mut v = Vec::with_capacity(hkv * len * dim);
    for g in 0..hkv {
        v.extend_from_slice(&slab[g * n * dim..(g * n + len) * dim]);
    }
    v.into()
}
