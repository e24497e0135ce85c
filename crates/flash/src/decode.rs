//! Decode: a few new queries against a [`KvCache`], split-KV across
//! threads (Flash-Decoding) with a fixed-order log-sum-exp merge.
//!
//! ```text
//! item = (batch b, kv head g, KV chunk c of CHUNK positions)
//!   rows = the G query heads of group g × the nq new queries (GQA-packed:
//!          every K/V element of the chunk is loaded once for all of them)
//!   for each block of 16 keys: widen K/V rows (f16/bf16) in registers' reach,
//!       s = q·k (visible keys only), online softmax per row, acc += p·v
//!   partial (out, lse) per row → slot (b, g, c)
//! then per (b, g, row): merge_partials over c = 0, 1, … in order
//! ```
//!
//! Chunking does not depend on the thread count and the merge order is
//! fixed, so the bits are the same for any number of threads.

use attn_core::simd::{LOG2_E, exp2, f32x16, load};
use attn_core::{AttnError, AttnParams, Element, Layout, Par, TensorView};
use rayon::prelude::*;

use crate::cache::KvCache;
use crate::merge::{Partial, merge_partials};

/// Smallest split-KV chunk: 512 positions of K+V at d = 128 are 512 KiB in
/// f32 — large enough to stream at full bandwidth, small enough that
/// L = 4096 already gives 8 chunks per head.
pub const CHUNK: usize = 512;

/// Most chunks per (batch, kv head): longer caches get longer chunks, so
/// the partial results take `O(B·Hq·nq·dv)` memory whatever the length.
pub const MAX_CHUNKS: usize = 64;

/// Chunks and chunk length for a cache of `len` positions (a function of
/// the length only, never of the thread count).
fn chunking(len: usize) -> (usize, usize) {
    let nc = len.div_ceil(CHUNK).clamp(1, MAX_CHUNKS);
    (nc, len.div_ceil(nc).next_multiple_of(KB).max(KB))
}

/// Where split-KV reads K and V: a [`KvCache`] or the K/V views of an
/// ordinary call.
pub(crate) trait KvSource<T: Element>: Sync {
    fn batch(&self) -> usize;
    fn kv_heads(&self) -> usize;
    fn head_dim(&self) -> usize;
    fn v_dim(&self) -> usize;
    /// Positions of batch entry `b`.
    fn len(&self, b: usize) -> usize;
    fn k_row(&self, b: usize, g: usize, j: usize) -> &[T];
    fn v_row(&self, b: usize, g: usize, j: usize) -> &[T];
    /// K rows `j..j+n` as one contiguous slice, if they are stored so.
    fn k_block(&self, _b: usize, _g: usize, _j: usize, _n: usize) -> Option<&[T]> {
        None
    }
    /// V rows `j..j+n` as one contiguous slice, if they are stored so.
    fn v_block(&self, _b: usize, _g: usize, _j: usize, _n: usize) -> Option<&[T]> {
        None
    }
}

impl<T: Element> KvSource<T> for KvCache<T> {
    fn batch(&self) -> usize {
        KvCache::batch(self)
    }
    fn kv_heads(&self) -> usize {
        KvCache::kv_heads(self)
    }
    fn head_dim(&self) -> usize {
        KvCache::head_dim(self)
    }
    fn v_dim(&self) -> usize {
        KvCache::v_dim(self)
    }
    fn len(&self, b: usize) -> usize {
        self.lens()[b]
    }
    fn k_row(&self, b: usize, g: usize, j: usize) -> &[T] {
        KvCache::k_row(self, b, g, j)
    }
    fn v_row(&self, b: usize, g: usize, j: usize) -> &[T] {
        KvCache::v_row(self, b, g, j)
    }
    fn k_block(&self, b: usize, g: usize, j: usize, n: usize) -> Option<&[T]> {
        // rows of one (b, g) are contiguous in the cache: [b][g][pos][d]
        Some(self.k_contiguous(b, g, j, n * KvCache::head_dim(self)))
    }
    fn v_block(&self, b: usize, g: usize, j: usize, n: usize) -> Option<&[T]> {
        Some(self.v_contiguous(b, g, j, n * KvCache::v_dim(self)))
    }
}

/// The K and V views of an ordinary (validated) attention call.
pub(crate) struct ViewKv<'v, 'a, T> {
    pub k: &'v TensorView<'a, T>,
    pub v: &'v TensorView<'a, T>,
}

impl<T: Element> KvSource<T> for ViewKv<'_, '_, T> {
    fn batch(&self) -> usize {
        self.k.dims()[0]
    }
    fn kv_heads(&self) -> usize {
        self.k.dims()[1]
    }
    fn head_dim(&self) -> usize {
        self.k.dims()[3]
    }
    fn v_dim(&self) -> usize {
        self.v.dims()[3]
    }
    fn len(&self, _: usize) -> usize {
        self.k.dims()[2]
    }
    fn k_row(&self, b: usize, g: usize, j: usize) -> &[T] {
        self.k.row(b, g, j)
    }
    fn v_row(&self, b: usize, g: usize, j: usize) -> &[T] {
        self.v.row(b, g, j)
    }
}

/// Scratch bytes of one split-KV call: the per-chunk partial outputs and
/// LSEs, the merge buffer, and each worker's buffers. At most
/// [`MAX_CHUNKS`] chunks per K/V head, so this stays bounded however long
/// the cache is. `kv_len` is the longest sequence of the batch.
#[allow(clippy::too_many_arguments)]
pub fn split_kv_workspace_bytes(
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    q_len: usize,
    head_dim: usize,
    v_dim: usize,
    kv_len: usize,
    threads: usize,
) -> usize {
    let (nc, _) = chunking(kv_len);
    let rows = q_heads / kv_heads.max(1) * q_len; // rows of one (b, g) item
    let items = batch * kv_heads * nc;
    let dvp = v_dim.next_multiple_of(16);
    let partials = (items + 1) * rows * (v_dim + 1);
    let per_worker = rows * (head_dim + dvp + KB + 2) + KB * (head_dim + dvp);
    4 * (partials + threads.max(1) * per_worker)
}

/// [`split_kv_workspace_bytes`] for an ordinary call's shape.
pub(crate) fn split_kv_bytes(shape: &attn_core::AttnShape, threads: usize) -> usize {
    split_kv_workspace_bytes(
        shape.batch(),
        shape.q_heads(),
        shape.kv_heads(),
        shape.q_len(),
        shape.head_dim(),
        shape.v_dim(),
        shape.kv_len(),
        threads,
    )
}

const KB: usize = 16; // keys per block: one vector of scores per row

/// Attention of `q` (`[B, Hq, nq, d]`, f32, C order) — the last `nq`
/// positions of each sequence, whose K/V are already appended — over the
/// cache, with the usual bottom-right masks: query `t` of batch entry `b`
/// sees cache positions `j <= t + len_b − nq` (causal) or the window around
/// it. Writes `out` `[B, Hq, nq, dv]` and, if given, `lse` `[B, Hq, nq]`.
#[allow(clippy::too_many_arguments)]
pub fn decode<T: Element>(
    cache: &KvCache<T>,
    q: &[f32],
    q_heads: usize,
    q_len: usize,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
    params: &AttnParams,
    par: Par,
) -> Result<(), AttnError> {
    let (bsz, hkv, d, dv) = (cache.batch(), cache.kv_heads(), cache.head_dim(), cache.v_dim());
    if q_heads == 0 {
        return Err(AttnError::ZeroDim { dim: "q_heads" });
    }
    if !q_heads.is_multiple_of(hkv) {
        return Err(AttnError::HeadsNotDivisible { q_heads, kv_heads: hkv });
    }
    let rows_total = bsz * q_heads * q_len;
    if q.len() != rows_total * d {
        return Err(AttnError::BufferLen { tensor: "q", expected: rows_total * d, got: q.len() });
    }
    if out.len() != rows_total * dv {
        return Err(AttnError::BufferLen {
            tensor: "out",
            expected: rows_total * dv,
            got: out.len(),
        });
    }
    if let Some(l) = &lse
        && l.len() != rows_total
    {
        return Err(AttnError::BufferLen { tensor: "lse", expected: rows_total, got: l.len() });
    }
    params.validate()?;
    if params.check_finite
        && let Some(index) = q.iter().position(|x| !x.is_finite())
    {
        return Err(AttnError::NonFinite { tensor: "q", index, value: q[index] });
    }
    if q_len == 0 {
        return Ok(());
    }

    let qv = TensorView::new("q", q, [bsz, q_heads, q_len, d], Layout::Bhnd)?;
    let mut lse = lse;
    split_kv(cache, &qv, q_heads, q_len, params, par, |b, h, t, row, l| {
        let idx = (b * q_heads + h) * q_len + t;
        out[idx * dv..(idx + 1) * dv].copy_from_slice(row);
        if let Some(lse) = lse.as_deref_mut() {
            lse[idx] = l;
        }
    });
    Ok(())
}

/// Split-KV attention of `nq` queries per head (`q`: `[B, Hq, nq, d]`
/// logical) against `kv`, bottom-right masks; `write(b, h, t, out_row,
/// lse)` receives every output row exactly once, in a fixed order.
/// Validation is the caller's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn split_kv<T: Element, Tq: Element, S: KvSource<T>>(
    kv: &S,
    q: &TensorView<'_, Tq>,
    q_heads: usize,
    q_len: usize,
    params: &AttnParams,
    par: Par,
    mut write: impl FnMut(usize, usize, usize, &[f32], f32),
) {
    let (bsz, hkv, d, dv) = (kv.batch(), kv.kv_heads(), kv.head_dim(), kv.v_dim());
    let group = q_heads / hkv;
    let rows = group * q_len; // rows of one (b, g) item
    let max_len = (0..bsz).map(|b| kv.len(b)).max().unwrap_or(0);
    let (nc, _) = chunking(max_len);
    let scale = params.scale_for(d) * LOG2_E;
    let items = bsz * hkv * nc;
    let mut pout = vec![0f32; items * rows * dv];
    let mut plse = vec![0f32; items * rows];

    let run = |item: usize, po: &mut [f32], pl: &mut [f32], s: &mut DecodeScratch| {
        let (bg, c) = (item / nc, item % nc);
        let (b, g) = (bg / hkv, bg % hkv);
        chunk_partial(kv, q, q_heads, q_len, params, scale, b, g, c, po, pl, s);
    };
    match par {
        Par::Seq => {
            let mut s = DecodeScratch::default();
            for (i, (po, pl)) in pout.chunks_mut(rows * dv).zip(plse.chunks_mut(rows)).enumerate() {
                run(i, po, pl, &mut s);
            }
        }
        Par::Rayon(_) => {
            pout.par_chunks_mut(rows * dv)
                .zip(plse.par_chunks_mut(rows))
                .enumerate()
                .for_each_init(DecodeScratch::default, |s, (i, (po, pl))| run(i, po, pl, s));
        }
    }

    // Merge each (b, g)'s chunks in order into the output rows.
    let mut mo = vec![0f32; rows * dv];
    let mut ml = vec![0f32; rows];
    for bg in 0..bsz * hkv {
        let parts: Vec<Partial<'_>> = (0..nc)
            .map(|c| {
                let i = bg * nc + c;
                Partial { out: &pout[i * rows * dv..][..rows * dv], lse: &plse[i * rows..][..rows] }
            })
            .collect();
        merge_partials(&parts, dv, &mut mo, &mut ml)
            .expect("partial buffers are sized by construction");
        let (b, g) = (bg / hkv, bg % hkv);
        for r in 0..rows {
            let (hg, t) = (r / q_len, r % q_len);
            write(b, g * group + hg, t, &mo[r * dv..(r + 1) * dv], ml[r]);
        }
    }
}

/// Per-worker buffers of the decode kernel (a few KiB for typical shapes).
#[derive(Default)]
struct DecodeScratch {
    qs: Vec<f32>,                // rows × d, pre-scaled queries
    acc: Vec<f32>,               // rows × dvp
    m: Vec<f32>,                 // rows
    l: Vec<f32>,                 // rows
    kbuf: Vec<f32>,              // KB × d
    vbuf: Vec<f32>,              // KB × dvp
    ranges: Vec<(usize, usize)>, // visible keys of each row within the chunk
    sc: Vec<f32>,                // rows × KB scores of the current block
}

/// One item: rows of (b, g) against cache chunk `c`; writes the normalized
/// partial output and LSE of each row.
#[allow(clippy::too_many_arguments)]
fn chunk_partial<T: Element, Tq: Element, S: KvSource<T>>(
    cache: &S,
    q: &TensorView<'_, Tq>,
    q_heads: usize,
    q_len: usize,
    params: &AttnParams,
    scale: f32,
    b: usize,
    g: usize,
    c: usize,
    pout: &mut [f32],
    plse: &mut [f32],
    s: &mut DecodeScratch,
) {
    let (d, dv) = (cache.head_dim(), cache.v_dim());
    let dvp = dv.next_multiple_of(16);
    let group = q_heads / cache.kv_heads();
    let rows = group * q_len;
    let len = cache.len(b);
    let (_, clen) = chunking((0..cache.batch()).map(|b| cache.len(b)).max().unwrap_or(0));
    let (c0, c1) = ((c * clen).min(len), ((c + 1) * clen).min(len));

    s.qs.resize(rows * d, 0.0);
    s.acc.clear();
    s.acc.resize(rows * dvp, 0.0);
    s.m.clear();
    s.m.resize(rows, f32::NEG_INFINITY);
    s.l.clear();
    s.l.resize(rows, 0.0);
    s.kbuf.resize(KB * d, 0.0);
    s.vbuf.clear();
    s.vbuf.resize(KB * dvp, 0.0);

    s.ranges.clear();
    for r in 0..rows {
        let (hg, t) = (r / q_len, r % q_len);
        let h = g * group + hg;
        let dst = &mut s.qs[r * d..(r + 1) * d];
        Tq::widen_slice(q.row(b, h, t), dst);
        dst.iter_mut().for_each(|x| *x *= scale);
        let kr = params.mask.key_range(t, q_len, len);
        s.ranges.push((kr.start.max(c0), kr.end.min(c1)));
    }
    let lo = s.ranges.iter().map(|r| r.0).min().unwrap_or(c1);
    let hi = s.ranges.iter().map(|r| r.1).max().unwrap_or(c0);

    let mut j = lo;
    while j < hi {
        let jb = KB.min(hi - j);
        // Widen the block's K/V rows when the cache is f16/bf16 (f32 rows,
        // and V rows of a multiple of 16, are read in place).
        let k_in_place = T::as_f32_slice(cache.k_row(b, g, j)).is_some();
        let v_in_place = T::as_f32_slice(cache.v_row(b, g, j)).is_some() && dv == dvp;
        if !k_in_place {
            match cache.k_block(b, g, j, jb) {
                // one conversion call for the whole block when rows are contiguous
                Some(blk) => T::widen_slice(blk, &mut s.kbuf[..jb * d]),
                None => {
                    for jj in 0..jb {
                        T::widen_slice(
                            cache.k_row(b, g, j + jj),
                            &mut s.kbuf[jj * d..(jj + 1) * d],
                        );
                    }
                }
            }
        }
        if !v_in_place {
            match cache.v_block(b, g, j, jb) {
                Some(blk) if dv == dvp => T::widen_slice(blk, &mut s.vbuf[..jb * dvp]),
                _ => {
                    for jj in 0..jb {
                        let dst = &mut s.vbuf[jj * dvp..jj * dvp + dv];
                        T::widen_slice(cache.v_row(b, g, j + jj), dst);
                    }
                }
            }
        }
        let krow = |jj: usize| -> &[f32] {
            match T::as_f32_slice(cache.k_row(b, g, j + jj)) {
                Some(r) => r,
                None => &s.kbuf[jj * d..(jj + 1) * d],
            }
        };
        let vrows: [&[f32]; KB] = std::array::from_fn(|jj| {
            let jj = jj.min(jb - 1);
            match T::as_f32_slice(cache.v_row(b, g, j + jj)) {
                Some(r) if v_in_place => r,
                _ => &s.vbuf[jj * dvp..(jj + 1) * dvp],
            }
        });
        // Scores of every row against every key of the block: each K row
        // is loaded once for 4 rows at a time (4 independent FMA chains).
        s.sc.clear();
        s.sc.resize(rows * KB, f32::NEG_INFINITY);
        for jj in 0..jb {
            let kr = &krow(jj)[..d];
            for r0 in (0..rows).step_by(4) {
                let q4: [&[f32]; 4] = std::array::from_fn(|t| {
                    let r = (r0 + t).min(rows - 1);
                    &s.qs[r * d..(r + 1) * d]
                });
                let d4 = dot4(q4, kr);
                for (t, x) in d4.into_iter().enumerate().take(rows - r0) {
                    s.sc[(r0 + t) * KB + jj] = x;
                }
            }
        }
        for r in 0..rows {
            let (rlo, rhi) = s.ranges[r];
            if !(rlo < rhi && rlo < j + jb && rhi > j) {
                continue; // no visible key of this block
            }
            // Mask, then the online-softmax update.
            let sc = &mut s.sc[r * KB..(r + 1) * KB];
            if !(rlo <= j && j + KB <= rhi) {
                for (jj, x) in sc.iter_mut().enumerate() {
                    let key = j + jj;
                    if jj >= jb || key < rlo || key >= rhi {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
            let scv = f32x16::new(sc[..KB].try_into().unwrap());
            let mblk = attn_core::simd::hmax(scv);
            let mnew = s.m[r].max(mblk);
            let alpha = (s.m[r] - mnew).exp2();
            let p = exp2(scv - f32x16::splat(mnew));
            s.l[r] = s.l[r] * alpha + p.reduce_add();
            s.m[r] = mnew;
            // acc = alpha·acc + Σ_jj p[jj]·V[jj], 4 vectors of dv at a time
            // kept in registers across the block.
            let pa = p.to_array();
            let acc = &mut s.acc[r * dvp..(r + 1) * dvp];
            pv_rows(&pa[..jb], &vrows[..jb], alpha, acc);
        }
        j += jb;
    }

    for r in 0..rows {
        let o = &mut pout[r * dv..(r + 1) * dv];
        if s.l[r] > 0.0 {
            let inv = 1.0 / s.l[r];
            for (x, a) in o.iter_mut().zip(&s.acc[r * dvp..]) {
                *x = a * inv;
            }
            plse[r] = (s.m[r] + s.l[r].log2()) * std::f32::consts::LN_2;
        } else {
            o.fill(0.0);
            plse[r] = f32::NEG_INFINITY;
        }
    }
}

/// Four dot products against one key row, sharing its loads.
#[inline]
fn dot4(q: [&[f32]; 4], k: &[f32]) -> [f32; 4] {
    let (kc, kt) = k.as_chunks::<16>();
    let qc = q.map(|r| r.as_chunks::<16>());
    let mut acc = [f32x16::ZERO; 4];
    for (i, kv) in kc.iter().enumerate() {
        let kv = f32x16::new(*kv);
        for t in 0..4 {
            acc[t] = f32x16::new(qc[t].0[i]).mul_add(kv, acc[t]);
        }
    }
    std::array::from_fn(|t| {
        acc[t].reduce_add() + qc[t].1.iter().zip(kt).map(|(x, y)| x * y).sum::<f32>()
    })
}

/// `acc = alpha·acc + Σ_j p[j]·v[j]` over `acc.len()` (a multiple of 16)
/// columns: 4 vectors of accumulators at a time stay in registers while
/// the block's rows stream past (4 independent FMA chains).
#[inline]
fn pv_rows(p: &[f32], v: &[&[f32]], alpha: f32, acc: &mut [f32]) {
    let a = f32x16::splat(alpha);
    let (chunks, _) = acc.as_chunks_mut::<64>();
    let mut c0 = 0;
    for ch in chunks {
        let mut x: [f32x16; 4] =
            std::array::from_fn(|t| f32x16::new(ch[t * 16..(t + 1) * 16].try_into().unwrap()) * a);
        for (pj, vj) in p.iter().zip(v) {
            let vj = &vj[c0..c0 + 64];
            let pv = f32x16::splat(*pj);
            for t in 0..4 {
                x[t] = pv.mul_add(load(&vj[t * 16..]), x[t]);
            }
        }
        for t in 0..4 {
            ch[t * 16..(t + 1) * 16].copy_from_slice(x[t].as_array());
        }
        c0 += 64;
    }
    let (tail, _) = acc[c0..].as_chunks_mut::<16>();
    for ch in tail {
        let mut x = f32x16::new(*ch) * a;
        for (pj, vj) in p.iter().zip(v) {
            x = f32x16::splat(*pj).mul_add(load(&vj[c0..]), x);
        }
        *ch = x.to_array();
        c0 += 16;
    }
}
