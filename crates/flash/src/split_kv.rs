//! Split-KV attention (Flash-Decoding): few queries per head against many
//! keys, the keys split into chunks that workers attend independently,
//! then merged in a fixed order.
//!
//! ```text
//! item = (batch b, kv head g, KV chunk c)       chunking: see tiles::decode
//!   rows = the G query heads of group g × the nq queries (GQA-packed:
//!          every K/V element of the chunk is loaded once for all of them)
//!   for each block of KB keys: widen K/V rows (f16/bf16) once for all rows,
//!       s = q·k (visible keys only), online softmax per row, acc += p·v
//!   partial (out, lse) per row → slot (b, g, c)
//! then per (b, g, row): merge the partials over c = 0, 1, … in order
//! ```
//!
//! Used by [`crate::decode()`] over a [`KvCache`] and by [`crate::Flash`] for
//! calls with at most [`crate::SPLIT_KV_MAX_Q`] queries per head. Chunking depends
//! on the length only and the merge order is fixed, so the bits are the
//! same for any thread count. Every buffer lives in a [`SplitKvWorkspace`]
//! sized up front: a call on a caller's workspace allocates nothing.

use std::sync::Mutex;

use attn_core::{AttnError, AttnParams, AttnShape, Element, Par, RowFaults, TensorView};
use attn_simd::{LOG2_E, exp2, f32x16, hmax, load};
use rayon::prelude::*;

use crate::cache::KvCache;
use crate::merge::{Base, merge_rows};
use crate::tiles::decode::{CHUNK, KB, MAX_CHUNKS};

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

/// Buffer sizes of one split-KV call: a function of the shape (its
/// `kv_len` is the longest sequence) and the thread count, never of the
/// data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SplitKvPlan {
    /// Rows of one (b, g) item: `group × nq`.
    rows: usize,
    d: usize,
    dv: usize,
    /// Chunks per (b, g) and their length.
    nc: usize,
    clen: usize,
    /// `B·Hkv·nc` items.
    items: usize,
    threads: usize,
}

impl SplitKvPlan {
    pub(crate) fn new(shape: &AttnShape, threads: usize) -> SplitKvPlan {
        let (nc, clen) = chunking(shape.kv_len());
        SplitKvPlan {
            rows: shape.group_size() * shape.q_len(),
            d: shape.head_dim(),
            dv: shape.v_dim(),
            nc,
            clen,
            items: shape.batch() * shape.kv_heads() * nc,
            threads: threads.max(1),
        }
    }

    /// The plan of the longest sequence `shape`'s other sizes allow: the
    /// most chunks ([`MAX_CHUNKS`]), so its workspace fits any length.
    pub(crate) fn for_any_length(shape: &AttnShape, threads: usize) -> SplitKvPlan {
        let p = SplitKvPlan::new(shape, threads);
        SplitKvPlan { nc: MAX_CHUNKS, items: shape.batch() * shape.kv_heads() * MAX_CHUNKS, ..p }
    }

    fn dvp(&self) -> usize {
        self.dv.next_multiple_of(16)
    }

    /// Exactly the bytes [`SplitKvWorkspace::new`] allocates (saturating).
    pub(crate) fn bytes(&self) -> usize {
        let (rows, dv) = (self.rows, self.dv);
        let partials = self.items.saturating_mul(rows).saturating_mul(dv + 2);
        let merged = rows * (dv + 1);
        let floats = partials.saturating_add(merged);
        floats
            .saturating_mul(4)
            .saturating_add(self.threads.saturating_mul(DecodeScratch::bytes(self)))
    }

    /// Whether a workspace made for `self` can run a call planned as `need`.
    fn fits(&self, need: &SplitKvPlan) -> bool {
        (self.rows, self.d, self.dv) == (need.rows, need.d, need.dv)
            && need.items <= self.items
            && need.threads <= self.threads
    }
}

/// Scratch of split-KV calls: the per-chunk partial outputs and LSEs, the
/// merge buffers and one scratch per thread. Its size is bounded by
/// `tiles::decode::MAX_CHUNKS` (64) chunks per K/V head however long the
/// sequence is.
#[derive(Debug)]
pub struct SplitKvWorkspace {
    plan: SplitKvPlan,
    pout: Vec<f32>,
    /// `[m, l]` of each partial row: its max (log2 domain) and its sum.
    pml: Vec<f32>,
    mo: Vec<f32>,
    ml: Vec<f32>,
    scratch: Vec<Mutex<DecodeScratch>>,
}

impl SplitKvWorkspace {
    pub(crate) fn new(plan: SplitKvPlan) -> Result<SplitKvWorkspace, AttnError> {
        let (rows, dv) = (plan.rows, plan.dv);
        let n = plan.items.checked_mul(rows).ok_or(AttnError::Overflow { tensor: "workspace" })?;
        Ok(SplitKvWorkspace {
            plan,
            pout: attn_core::try_zeroed("workspace", n.saturating_mul(dv))?,
            pml: attn_core::try_zeroed("workspace", n.saturating_mul(2))?,
            mo: vec![0.0; rows * dv],
            ml: vec![0.0; rows],
            scratch: (0..plan.threads).map(|_| Mutex::new(DecodeScratch::new(&plan))).collect(),
        })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.plan.bytes()
    }

    /// An error unless this workspace can run a call planned as `need`.
    pub(crate) fn check_fits(&self, need: &SplitKvPlan) -> Result<(), AttnError> {
        if self.plan.fits(need) {
            return Ok(());
        }
        Err(AttnError::Param {
            name: "workspace",
            reason: format!("made for {:?}; this call needs {:?}", self.plan, need),
        })
    }
}

/// Split-KV attention of `nq` queries per head (`q`: `[B, Hq, nq, d]`
/// logical) against `kv`, bottom-right masks, on `ws` (which
/// [`SplitKvWorkspace::check_fits`] the call); `write(b, h, t, out_row,
/// lse)` receives every output row exactly once, in a fixed order.
/// Validation is the caller's; runs on `par`'s threads.
pub(crate) fn split_kv<T: Element, Tq: Element, S: KvSource<T>>(
    kv: &S,
    q: &TensorView<'_, Tq>,
    params: &AttnParams,
    par: Par,
    ws: &mut SplitKvWorkspace,
    mut write: impl FnMut(usize, usize, usize, &[f32], f32),
) -> Result<(), AttnError> {
    let (bsz, hkv, d, dv) = (kv.batch(), kv.kv_heads(), kv.head_dim(), kv.v_dim());
    let [_, q_heads, q_len, _] = q.dims();
    let group = q_heads / hkv;
    let p = ws.plan;
    let rows = group * q_len;
    debug_assert_eq!((rows, p.d, p.dv), (p.rows, d, dv));
    let max_len = (0..bsz).map(|b| kv.len(b)).max().unwrap_or(0);
    let (nc, clen) = chunking(max_len);
    let items = bsz * hkv * nc;
    let scale = params.scale_for(d) * LOG2_E;
    let SplitKvWorkspace { pout, pml, mo, ml, scratch, .. } = ws;
    let (pout, pml) = (&mut pout[..items * rows * dv], &mut pml[..items * rows * 2]);

    let run = |item: usize, po: &mut [f32], pl: &mut [f32]| {
        let (bg, c) = (item / nc, item % nc);
        let (b, g) = (bg / hkv, bg % hkv);
        // One scratch per pool thread (index < threads inside `par`).
        let slot = rayon::current_thread_index().unwrap_or(0) % scratch.len();
        let mut s = scratch[slot].lock().unwrap_or_else(|e| e.into_inner());
        let chunk = (c * clen, (c + 1) * clen);
        chunk_partial(kv, q, params, scale, (b, g), chunk, po, pl, &mut s);
    };
    par.install(|| {
        if par.threads() == 1 {
            for (i, (po, pl)) in
                pout.chunks_mut(rows * dv).zip(pml.chunks_mut(rows * 2)).enumerate()
            {
                run(i, po, pl);
            }
        } else {
            pout.par_chunks_mut(rows * dv)
                .zip(pml.par_chunks_mut(rows * 2))
                .enumerate()
                .for_each(|(i, (po, pl))| run(i, po, pl));
        }
    })?;

    // Merge each (b, g)'s chunks in order into the output rows.
    for bg in 0..bsz * hkv {
        // Chunks keep (max, sum) in the log2 domain rather than an LSE, so
        // the merge weights stay right when |LSE| is too large for f32 to
        // hold its fraction (logits ~1e7 and up).
        let out_of = |c: usize| &pout[(bg * nc + c) * rows * dv..][..rows * dv];
        let stat = |c: usize, r: usize| {
            let i = (bg * nc + c) * rows + r;
            (pml[2 * i], pml[2 * i + 1])
        };
        merge_rows(nc, out_of, stat, Base::Two, dv, mo, ml);
        let (b, g) = (bg / hkv, bg % hkv);
        for r in 0..rows {
            let (hg, t) = (r / q_len, r % q_len);
            write(b, g * group + hg, t, &mo[r * dv..(r + 1) * dv], ml[r]);
        }
    }
    Ok(())
}

/// Per-worker buffers of the split-KV kernel, sized by a [`SplitKvPlan`]
/// up front (a few KiB for typical shapes); reused for every item.
#[derive(Debug)]
pub(crate) struct DecodeScratch {
    qs: Vec<f32>,                // rows × d, pre-scaled queries
    acc: Vec<f32>,               // rows × dvp
    m: Vec<f32>,                 // rows
    l: Vec<f32>,                 // rows
    kbuf: Vec<f32>,              // KB × d
    vbuf: Vec<f32>,              // KB × dvp
    ranges: Vec<(usize, usize)>, // visible keys of each row within the chunk
    sc: Vec<f32>,                // rows × KB scores of the current block
}

impl DecodeScratch {
    fn new(p: &SplitKvPlan) -> DecodeScratch {
        let (rows, d, dvp) = (p.rows, p.d, p.dvp());
        DecodeScratch {
            qs: vec![0.0; rows * d],
            acc: vec![0.0; rows * dvp],
            m: vec![0.0; rows],
            l: vec![0.0; rows],
            kbuf: vec![0.0; KB * d],
            vbuf: vec![0.0; KB * dvp],
            ranges: Vec::with_capacity(rows),
            sc: vec![0.0; rows * KB],
        }
    }

    /// Bytes one scratch holds, with its slot in the workspace.
    fn bytes(p: &SplitKvPlan) -> usize {
        let (rows, d, dvp) = (p.rows, p.d, p.dvp());
        let floats = rows * (d + dvp + 2 + KB) + KB * (d + dvp);
        4 * floats
            + rows * std::mem::size_of::<(usize, usize)>()
            + std::mem::size_of::<Mutex<DecodeScratch>>()
    }
}

/// One item: rows of (b, g) against keys `c0..c1` (one chunk); writes the normalized
/// partial output and LSE of each row.
#[allow(clippy::too_many_arguments)]
fn chunk_partial<T: Element, Tq: Element, S: KvSource<T>>(
    cache: &S,
    q: &TensorView<'_, Tq>,
    params: &AttnParams,
    scale: f32,
    (b, g): (usize, usize),
    (c0, c1): (usize, usize),
    pout: &mut [f32],
    pml: &mut [f32],
    s: &mut DecodeScratch,
) {
    let (d, dv) = (cache.head_dim(), cache.v_dim());
    let dvp = dv.next_multiple_of(16);
    let [_, q_heads, q_len, _] = q.dims();
    let group = q_heads / cache.kv_heads();
    let rows = group * q_len;
    let len = cache.len(b);
    let (c0, c1) = (c0.min(len), c1.min(len));

    s.acc.fill(0.0);
    s.m.fill(f32::NEG_INFINITY);
    s.l.fill(0.0);
    s.vbuf.fill(0.0);

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
    // `s·0` summed over every score: 0 when all are finite. Otherwise (a
    // non-finite input, or |q·k| beyond f32) the exp2 clamp could turn a
    // NaN score into a finite weight: the chunk's rows are marked for
    // exact recomputation instead.
    let mut sentinel = 0f32;
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
        s.sc.fill(f32::NEG_INFINITY);
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
                    sentinel += x * 0.0;
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
            let mblk = hmax(scv);
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
        let visible = s.ranges[r].0 < s.ranges[r].1;
        if visible {
            let inv = 1.0 / s.l[r];
            for (x, a) in o.iter_mut().zip(&s.acc[r * dvp..]) {
                *x = a * inv;
            }
            (pml[2 * r], pml[2 * r + 1]) = (s.m[r], s.l[r]);
            // Not finite (a non-finite input, or f32 overflow): NaN marks
            // the partial so the merge cannot hide it; the row is then
            // recomputed exactly.
            let lse = (s.m[r] + s.l[r].log2()) * std::f32::consts::LN_2;
            if sentinel != 0.0 || RowFaults::is_fault(true, lse, o) {
                pml[2 * r] = f32::NAN;
            }
        } else {
            o.fill(0.0);
            (pml[2 * r], pml[2 * r + 1]) = (f32::NEG_INFINITY, 0.0);
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
