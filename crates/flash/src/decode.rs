//! Decode: a few new queries per head against a [`KvCache`], on the
//! split-KV path (`split_kv`: the keys split into chunks across threads,
//! merged in a fixed order, so the bits are the same for any thread
//! count).
//!
//! The shape of a decode call is an [`AttnShape`] made by
//! [`KvCache::query_shape`]: the cache's batch, K/V heads and head dims,
//! the call's query heads and queries per head, and `kv_len` = the longest
//! cached sequence.

use attn_core::{
    AttnError, AttnParams, AttnShape, Layout, Par, RowFaults, ScoreMods, StatsMut, TensorView,
    TensorViewMut, check_outputs, try_zeroed,
};
use attn_naive::RowAt;
use attn_naive::exact::{Culprit, ExactRow};

use crate::cache::KvCache;
use crate::kv_element::KvElement;
use crate::split_kv::{SplitKvPlan, SplitKvWorkspace, split_kv};

/// Attention of `q` (`[B, Hq, nq, d]`, f32, C order) — the last `nq`
/// positions of each sequence, whose K/V are already appended — over the
/// cache, with the usual bottom-right masks: query `t` of batch entry `b`
/// sees cache positions `j <= t + len_b − nq` (causal) or the window around
/// it. Writes `out` `[B, Hq, nq, dv]` and, if given, `lse` `[B, Hq, nq]`.
/// `shape` comes from [`KvCache::query_shape`]. Allocates its workspace;
/// [`decode_in`] runs on a caller's.
///
/// Score modifiers: the softcap, ALiBi (`diag = t + len_b − nq`, with
/// each sequence's own length) and sinks, as in `docs/semantics.md`; a
/// bias is refused (prefill only: [`AttnError::Param`] naming `bias`).
pub fn decode<T: KvElement>(
    cache: &KvCache<T>,
    shape: &AttnShape,
    q: &[f32],
    out: &mut [f32],
    lse: Option<&mut [f32]>,
    params: &AttnParams,
    par: Par,
) -> Result<(), AttnError> {
    par.validate()?;
    let plan = SplitKvPlan::new(shape, par.threads());
    let mut ws = DecodeWorkspace { par, ws: SplitKvWorkspace::new(plan)? };
    decode_in(cache, shape, q, out, lse, params, &mut ws)
}

/// The workspace of a decode call on `shape` with `par` (valid for every
/// later step of the same cache and query heads with at most as many
/// threads: its size does not depend on the cache length).
pub fn workspace(shape: &AttnShape, par: Par) -> Result<DecodeWorkspace, AttnError> {
    // Sized for the most chunks any length can give, so the workspace
    // fits every step of a growing cache.
    par.validate()?;
    let plan = SplitKvPlan::for_any_length(shape, par.threads());
    Ok(DecodeWorkspace { par, ws: SplitKvWorkspace::new(plan)? })
}

/// Bytes one [`decode`] call on `shape` with `par` allocates (its
/// workspace, sized for the cache's current length; a reusable
/// [`workspace`] holds [`DecodeWorkspace::bytes`]).
pub fn workspace_bytes(shape: &AttnShape, par: Par) -> usize {
    SplitKvPlan::new(shape, par.threads()).bytes()
}

/// The split-KV chunking, for reports: `(smallest chunk, most chunks per
/// K/V head)` (see `tiles::decode`).
pub fn chunk_limits() -> (usize, usize) {
    (crate::tiles::decode::CHUNK, crate::tiles::decode::MAX_CHUNKS)
}

/// Scratch of [`decode_in`], with the parallelism it was made for.
#[derive(Debug)]
pub struct DecodeWorkspace {
    par: Par,
    ws: SplitKvWorkspace,
}

impl DecodeWorkspace {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.ws.bytes()
    }
    /// The parallelism calls on this workspace run with.
    pub fn par(&self) -> Par {
        self.par
    }
}

/// [`decode`] on a caller's workspace (from [`workspace`]); runs with the
/// workspace's [`Par`] and allocates nothing on the calling thread.
pub fn decode_in<T: KvElement>(
    cache: &KvCache<T>,
    shape: &AttnShape,
    q: &[f32],
    out: &mut [f32],
    lse: Option<&mut [f32]>,
    params: &AttnParams,
    ws: &mut DecodeWorkspace,
) -> Result<(), AttnError> {
    decode_impl(cache, shape, q, out, lse, None, params, ws)
}

/// [`decode`] that also writes each row's saturation statistics
/// (`attn_core::stats`: `max_p` and `entropy`, `[B, Hq, nq]` each),
/// computed in the split-KV loop in O(1) extra state per row and chunk.
#[allow(clippy::too_many_arguments)]
pub fn decode_with_stats<T: KvElement>(
    cache: &KvCache<T>,
    shape: &AttnShape,
    q: &[f32],
    out: &mut [f32],
    lse: Option<&mut [f32]>,
    stats: StatsMut<'_>,
    params: &AttnParams,
    par: Par,
) -> Result<(), AttnError> {
    par.validate()?;
    let plan = SplitKvPlan::new(shape, par.threads());
    let mut ws = DecodeWorkspace { par, ws: SplitKvWorkspace::new(plan)? };
    decode_impl(cache, shape, q, out, lse, Some(stats), params, &mut ws)
}

/// [`decode_with_stats`] on a caller's workspace (from [`workspace`]):
/// allocates nothing on the calling thread, as [`decode_in`].
#[allow(clippy::too_many_arguments)]
pub fn decode_in_with_stats<T: KvElement>(
    cache: &KvCache<T>,
    shape: &AttnShape,
    q: &[f32],
    out: &mut [f32],
    lse: Option<&mut [f32]>,
    stats: StatsMut<'_>,
    params: &AttnParams,
    ws: &mut DecodeWorkspace,
) -> Result<(), AttnError> {
    decode_impl(cache, shape, q, out, lse, Some(stats), params, ws)
}

/// The decode call, with or without statistics.
#[allow(clippy::too_many_arguments)]
fn decode_impl<T: KvElement>(
    cache: &KvCache<T>,
    shape: &AttnShape,
    q: &[f32],
    out: &mut [f32],
    lse: Option<&mut [f32]>,
    mut stats: Option<StatsMut<'_>>,
    params: &AttnParams,
    ws: &mut DecodeWorkspace,
) -> Result<(), AttnError> {
    let want = cache.query_shape(shape.q_heads(), shape.q_len())?;
    if *shape != want {
        return Err(AttnError::Param {
            name: "shape",
            reason: format!("{shape:?} does not describe this cache now (expected {want:?})"),
        });
    }
    let qv = TensorView::new("q", q, shape.q_dims(), Layout::Bhnd)?;
    let ov = TensorViewMut::new("out", out, shape.out_dims(), Layout::Bhnd)?;
    check_outputs(shape, &ov, lse.as_deref())?;
    if let Some(st) = &stats {
        st.check(shape)?;
    }
    if params.bias.is_some() {
        return Err(AttnError::Param {
            name: "bias",
            reason: "prefill only: decode over a KV cache takes no bias (its length changes \
                     every step)"
                .into(),
        });
    }
    params.validate_for(shape)?;
    params.refuse_positions("decode over a KV cache")?;
    let par = ws.par;
    ws.ws.check_fits(&SplitKvPlan::new(shape, par.threads()))?;
    if shape.q_len() == 0 {
        return Ok(());
    }
    let (q_heads, q_len, dv) = (shape.q_heads(), shape.q_len(), shape.v_dim());
    let mut lse = lse;
    let faults = RowFaults::new();
    let want_stats = stats.is_some();
    split_kv(cache, &qv, params, par, &mut ws.ws, want_stats, |b, h, t, row, l, st| {
        let idx = (b * q_heads + h) * q_len + t;
        let o = &mut out[idx * dv..(idx + 1) * dv];
        o.copy_from_slice(row);
        if let Some(lse) = lse.as_deref_mut() {
            lse[idx] = l;
        }
        if let (Some(dst), Some((p, e))) = (stats.as_mut(), st) {
            (dst.max_p[idx], dst.entropy[idx]) = (p, e);
        }
        let visible = !params.mask.key_range(t, q_len, cache.lens()[b]).is_empty();
        if RowFaults::is_fault(visible, l, o) {
            faults.report(idx);
        }
    })?;
    repair(cache, &qv, params, faults, out, lse, stats)
}

/// The exact recomputation of [`attn_naive::exact`] for rows of a decode
/// call: the cache holds only finite values (checked on append), so a
/// culprit is a query element, named without touching the cache. A row
/// that overflowed f32 with finite inputs is recomputed from its visible
/// K and V rows widened to f32 (exact for every storage type: the values
/// the kernel read), which takes `O(keys · (d + dv))` memory on this rare
/// path. The row's statistics, if asked, are recomputed with it (from
/// its f64 scores).
fn repair<T: KvElement>(
    cache: &KvCache<T>,
    q: &TensorView<'_, f32>,
    params: &AttnParams,
    faults: RowFaults,
    out: &mut [f32],
    mut lse: Option<&mut [f32]>,
    mut stats: Option<StatsMut<'_>>,
) -> Result<(), AttnError> {
    let rows = faults.into_sorted();
    if rows.is_empty() {
        return Ok(());
    }
    let [_, hq, nq, d] = q.dims();
    let (dv, group) = (cache.v_dim(), hq / cache.kv_heads());
    let scale = params.scale.map(f64::from).unwrap_or(1.0 / (d as f64).sqrt());
    let (mut scores, mut o) = (Vec::new(), vec![0f64; dv]);
    let mods = ScoreMods::new(params, hq);
    for idx in rows {
        let (b, h, t) = (idx / (hq * nq), (idx / nq) % hq, idx % nq);
        let g = h / group;
        let keys = params.mask.key_range(t, nq, cache.lens()[b]);
        // The cache holds finite values only, so a non-finite input is in
        // the query: name it before widening any cache rows.
        let qr = q.row(b, h, t);
        if params.check_finite
            && !keys.is_empty()
            && let Some(c) = qr.iter().position(|x| !x.is_finite())
        {
            let (tensor, index, value) = ("q", q.offset(b, h, t) + c, qr[c]);
            return Err(AttnError::NonFinite { tensor, index, value });
        }
        let (kw, vw) =
            (widen_rows(cache, b, g, &keys, d, true)?, widen_rows(cache, b, g, &keys, dv, false)?);
        let k0 = keys.start;
        let kr = |j: usize| &kw[(j - k0) * d..][..d];
        let vr = |j: usize| &vw[(j - k0) * dv..][..dv];
        let row = RowAt::new(&mods, b, h, t, nq, cache.lens()[b]);
        let exact = ExactRow { row, q: q.row(b, h, t), keys, k_row: &kr, v_row: &vr };
        let locate = |c| match c {
            Culprit::Q(c) => ("q", q.offset(b, h, t) + c),
            Culprit::K(j, c) => ("kv cache k", j * d + c),
            Culprit::V(j, c) => ("kv cache v", j * dv + c),
        };
        let want_lse = lse.is_some();
        let l =
            exact.recompute(scale, params.check_finite, want_lse, locate, &mut scores, &mut o)?;
        if let Some(lse) = lse.as_deref_mut() {
            lse[idx] = l;
        }
        for (dst, x) in out[idx * dv..(idx + 1) * dv].iter_mut().zip(&o) {
            *dst = *x as f32;
        }
        if let Some(st) = stats.as_mut() {
            // `scores` holds the row's f64 scores (`reference_row`).
            let (p, e) =
                attn_naive::oracle_stats::scores_stats(&scores, mods.sink(h).map(f64::from));
            (st.max_p[idx], st.entropy[idx]) = (p as f32, e as f32);
        }
    }
    Ok(())
}

/// K (`keys == true`) or V rows `range` of `(b, g)`, widened to f32.
fn widen_rows<T: KvElement>(
    cache: &KvCache<T>,
    b: usize,
    g: usize,
    range: &std::ops::Range<usize>,
    dim: usize,
    keys: bool,
) -> Result<Vec<f32>, AttnError> {
    let mut out = try_zeroed("repair rows", range.len().saturating_mul(dim))?;
    for (j, dst) in range.clone().zip(out.chunks_mut(dim)) {
        let row = if keys { cache.k_row(b, g, j) } else { cache.v_row(b, g, j) };
        T::widen(row, dst);
    }
    Ok(out)
}
