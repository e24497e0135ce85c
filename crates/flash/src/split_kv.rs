//! Split-KV attention (Flash-Decoding): few queries per head against many
//! keys, the keys split into chunks that workers attend independently,
//! then merged in a fixed order.
//!
//! ```text
//! item = (batch b, kv head g, KV chunk c)       chunking: see tiles::decode
//!   rows = the G query heads of group g × the nq queries (GQA-packed:
//!          every K/V element of the chunk is loaded once for all of them),
//!          in quads of 4 (`kv_block`)
//!   for each block of KB = 16 keys (prefetching the next block's rows):
//!       K/V read in place (f32; f16/bf16/q8_0 when one quad uses them),
//!       else widened once into f32 scratch; per quad: scores, [score
//!       modifiers], online softmax, acc = α·acc + P·V
//!   partial (out normalized, max, sum [, e]) per row → slot (b, g, c)
//! then per (b, g, row): merge the partials over c = 0, 1, … in order
//!   [and the row's sink logit, as one more term of the denominator]
//! ```
//!
//! Saturation statistics (`attn_core::stats`), when asked: each row also
//! keeps `e = Σ 2^(u − m)·(u − m)` beside its max `m` and sum `l`,
//! rescaled with `l` when `m` grows (`rescale_mean`), one FMA and one
//! horizontal sum per row and block of 16 keys — in a copy of the block
//! loop monomorphized on `STATS`, so a call without them runs the plain
//! loop; the merge combines the chunks' `(m, l, e)` with the same
//! rescaling (`RowStatsAcc::merge`), so the statistics are those of the
//! whole row, in O(1) extra state per row and chunk.
//!
//! Score modifiers (`docs/semantics.md`; log2-domain helpers in
//! `modify`): the bias (views only: decode over a cache refuses it),
//! ALiBi and the softcap transform each row's vector of 16 scores in
//! registers, in that order, before the mask — in a copy of the block
//! loop monomorphized on `MODS`, so a call without them runs the plain
//! loop unchanged; sinks only enter the merge.
//!
//! Used by [`crate::decode()`] over a [`KvCache`] and by [`crate::Flash`] for
//! calls with at most [`crate::SPLIT_KV_MAX_Q`] queries per head. Chunking depends
//! on the length only and the merge order is fixed, so the bits are the
//! same for any thread count. Every buffer lives in a [`SplitKvWorkspace`]
//! sized up front: a call on a caller's workspace allocates nothing.

use std::sync::Mutex;

use attn_core::stats::{RowStatsAcc, rescale_mean};
use attn_core::{AttnError, AttnParams, AttnShape, Element, Par, RowFaults, TensorView};
use attn_simd::{Ahead, LANES, LOG2_E, exp2, f32x16, hmax, load, tanh};
use rayon::prelude::*;

use crate::cache::KvCache;
use crate::kv_block::{QUAD, quad_pv, quad_scores};
use crate::kv_element::KvElement;
use crate::kv_element::sealed::Load16;
use crate::merge::{Base, merge_rows};
use crate::modify::{Mods2, distances};
use crate::tiles::decode::{CHUNK, KB, MAX_CHUNKS};

/// Chunks and chunk length for a cache of `len` positions (a function of
/// the length only, never of the thread count).
fn chunking(len: usize) -> (usize, usize) {
    let nc = len.div_ceil(CHUNK).clamp(1, MAX_CHUNKS);
    (nc, len.div_ceil(nc).next_multiple_of(KB).max(KB))
}

/// Where split-KV reads K and V: a [`KvCache`] or the K/V views of an
/// ordinary call.
pub(crate) trait KvSource<T: KvElement>: Sync {
    fn batch(&self) -> usize;
    fn kv_heads(&self) -> usize;
    fn head_dim(&self) -> usize;
    fn v_dim(&self) -> usize;
    /// Positions of batch entry `b`.
    fn len(&self, b: usize) -> usize;
    /// K rows from `j` on: storage from row `(b, g, j)` to the end, and
    /// the distance between rows (row `j + i` starts at `i · stride`).
    fn k_from(&self, b: usize, g: usize, j: usize) -> (&[T], usize);
    /// V rows from `j` on, as [`KvSource::k_from`].
    fn v_from(&self, b: usize, g: usize, j: usize) -> (&[T], usize);
}

/// The `jb` rows (`width` units each) of a block as `KB` slices, the rows
/// past `jb` repeating the last (masked by the caller): one base slice
/// and a stride, so building them costs no index arithmetic per row.
#[inline(always)]
fn block_rows<T>((base, stride): (&[T], usize), width: usize, jb: usize) -> [&[T]; KB] {
    let last = (jb - 1) * stride;
    let base = &base[..last + width];
    std::array::from_fn(|jj| {
        let o = (jj * stride).min(last);
        &base[o..o + width]
    })
}

impl<T: KvElement> KvSource<T> for KvCache<T> {
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
    fn k_from(&self, b: usize, g: usize, j: usize) -> (&[T], usize) {
        self.k_from(b, g, j)
    }
    fn v_from(&self, b: usize, g: usize, j: usize) -> (&[T], usize) {
        self.v_from(b, g, j)
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
    fn k_from(&self, b: usize, g: usize, j: usize) -> (&[T], usize) {
        (&self.k.data()[self.k.offset(b, g, j)..], self.k.row_stride())
    }
    fn v_from(&self, b: usize, g: usize, j: usize) -> (&[T], usize) {
        (&self.v.data()[self.v.offset(b, g, j)..], self.v.row_stride())
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
        let partials = self.items.saturating_mul(rows).saturating_mul(dv + 3);
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

/// Scratch of split-KV calls: the per-chunk partial outputs, their
/// `(max, sum)` and statistics accumulator, the merge buffers and one
/// scratch per thread. Its size is bounded by
/// `tiles::decode::MAX_CHUNKS` (64) chunks per K/V head however long the
/// sequence is.
#[derive(Debug)]
pub struct SplitKvWorkspace {
    plan: SplitKvPlan,
    pout: Vec<f32>,
    /// `[m, l]` of each partial row: its max (log2 domain) and its sum.
    pml: Vec<f32>,
    /// `e` of each partial row (written only by calls with statistics).
    pe: Vec<f32>,
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
            pe: attn_core::try_zeroed("workspace", n)?,
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
/// lse, stats)` receives every output row exactly once, in a fixed order,
/// with its `(max_p, entropy)` when `stats`. Validation is the caller's;
/// runs on `par`'s threads.
#[allow(clippy::too_many_arguments)]
pub(crate) fn split_kv<T: KvElement, Tq: Element, S: KvSource<T>>(
    kv: &S,
    q: &TensorView<'_, Tq>,
    params: &AttnParams,
    par: Par,
    ws: &mut SplitKvWorkspace,
    stats: bool,
    mut write: impl FnMut(usize, usize, usize, &[f32], f32, Option<(f32, f32)>),
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
    let mods = Mods2::new(params, q_heads);
    let SplitKvWorkspace { pout, pml, pe, mo, ml, scratch, .. } = ws;
    let (pout, pml) = (&mut pout[..items * rows * dv], &mut pml[..items * rows * 2]);
    let pe = &mut pe[..items * rows];

    let run = |item: usize, po: &mut [f32], pl: &mut [f32], e: &mut [f32]| {
        let (bg, c) = (item / nc, item % nc);
        let (b, g) = (bg / hkv, bg % hkv);
        // One scratch per pool thread (index < threads inside `par`).
        let slot = rayon::current_thread_index().unwrap_or(0) % scratch.len();
        let mut s = scratch[slot].lock().unwrap_or_else(|e| e.into_inner());
        let chunk = (c * clen, (c + 1) * clen);
        let e = stats.then_some(e);
        chunk_partial(kv, q, params, &mods, scale, (b, g), chunk, (po, pl, e), &mut s);
    };
    par.install(|| {
        if par.threads() == 1 {
            let parts = pout.chunks_mut(rows * dv).zip(pml.chunks_mut(rows * 2));
            for (i, ((po, pl), e)) in parts.zip(pe.chunks_mut(rows)).enumerate() {
                run(i, po, pl, e);
            }
        } else {
            pout.par_chunks_mut(rows * dv)
                .zip(pml.par_chunks_mut(rows * 2))
                .zip(pe.par_chunks_mut(rows))
                .enumerate()
                .for_each(|(i, ((po, pl), e))| run(i, po, pl, e));
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
        let (b, g) = (bg / hkv, bg % hkv);
        let sink = |r: usize| mods.mods.sink(g * group + r / q_len);
        merge_rows(nc, out_of, stat, sink, Base::Two, dv, mo, ml);
        for r in 0..rows {
            let (hg, t) = (r / q_len, r % q_len);
            // The chunks' (m, l, e) merged like their outputs.
            let row_stats = stats.then(|| {
                let part = |c: usize| {
                    let (m, l) = stat(c, r);
                    (m, l, pe[(bg * nc + c) * rows + r])
                };
                let sink2 = sink(r).map(|x| x * LOG2_E);
                RowStatsAcc::merge((0..nc).map(part), sink2).finish()
            });
            write(b, g * group + hg, t, &mo[r * dv..(r + 1) * dv], ml[r], row_stats);
        }
    }
    Ok(())
}

/// Per-worker buffers of the split-KV kernel, sized by a [`SplitKvPlan`]
/// up front (a few KiB for typical shapes); reused for every item. Rows
/// are padded to whole quads ([`QUAD`]), head dims to whole vectors; the
/// padding stays zero.
#[derive(Debug)]
pub(crate) struct DecodeScratch {
    qs: Vec<f32>,                // quad rows × dp, pre-scaled queries
    acc: Vec<f32>,               // quad rows × dvp
    m: Vec<f32>,                 // quad rows
    l: Vec<f32>,                 // quad rows
    e: Vec<f32>,                 // quad rows (statistics only)
    kbuf: Vec<f32>,              // KB × dp, a widened K block
    vbuf: Vec<f32>,              // KB × dvp, a widened V block
    ranges: Vec<(usize, usize)>, // visible keys of each row within the chunk
    rows: Vec<RowMods>,          // each row's score modifiers (when any)
}

/// Where one row sits for its score modifiers (quad padding: zeros).
#[derive(Debug, Clone, Copy, Default)]
struct RowMods {
    /// `t + len − nq`: the key on the row's bottom-right diagonal.
    diag: i64,
    /// The row's ALiBi slope times `log2 e` (0 without ALiBi).
    slope2: f32,
    /// Offset of the row's bias (key 0) in the bias buffer.
    bias: usize,
}

/// `(quad rows, dp, dvp)` of a plan.
fn padded(p: &SplitKvPlan) -> (usize, usize, usize) {
    (p.rows.next_multiple_of(QUAD), p.d.next_multiple_of(LANES), p.dvp())
}

impl DecodeScratch {
    fn new(p: &SplitKvPlan) -> DecodeScratch {
        let (rows, dp, dvp) = padded(p);
        DecodeScratch {
            qs: vec![0.0; rows * dp],
            acc: vec![0.0; rows * dvp],
            m: vec![0.0; rows],
            l: vec![0.0; rows],
            e: vec![0.0; rows],
            kbuf: vec![0.0; KB * dp],
            vbuf: vec![0.0; KB * dvp],
            ranges: Vec::with_capacity(rows),
            rows: Vec::with_capacity(rows),
        }
    }

    /// Bytes one scratch holds, with its slot in the workspace.
    fn bytes(p: &SplitKvPlan) -> usize {
        let (rows, dp, dvp) = padded(p);
        let floats = rows * (dp + dvp + 3) + KB * (dp + dvp);
        4 * floats
            + rows * std::mem::size_of::<(usize, usize)>()
            + rows * std::mem::size_of::<RowMods>()
            + std::mem::size_of::<Mutex<DecodeScratch>>()
    }
}

/// One item: rows of (b, g) against keys `c0..c1` (one chunk); writes the
/// normalized partial output, the (max, sum) of each row and, when `pe`
/// is given, its statistics accumulator `e`.
///
/// K and V rows are read in place when whole vectors of them can be
/// (f32, f16, bf16 with head dims a multiple of 16; q8_0 always) and
/// either they are f32 or one quad of rows uses them; otherwise each
/// block is widened once into f32 scratch, so a large group (MQA) does
/// not convert every value once per quad.
#[allow(clippy::too_many_arguments)]
fn chunk_partial<T: KvElement, Tq: Element, S: KvSource<T>>(
    cache: &S,
    q: &TensorView<'_, Tq>,
    params: &AttnParams,
    mods: &Mods2<'_>,
    scale: f32,
    (b, g): (usize, usize),
    (c0, c1): (usize, usize),
    (pout, pml, mut pe): (&mut [f32], &mut [f32], Option<&mut [f32]>),
    s: &mut DecodeScratch,
) {
    let (d, dv) = (cache.head_dim(), cache.v_dim());
    let (dp, dvp) = (d.next_multiple_of(LANES), dv.next_multiple_of(LANES));
    let [_, q_heads, q_len, _] = q.dims();
    let group = q_heads / cache.kv_heads();
    let rows = group * q_len;
    let quads = rows.div_ceil(QUAD);
    let len = cache.len(b);
    let (c0, c1) = (c0.min(len), c1.min(len));

    s.acc[..quads * QUAD * dvp].fill(0.0);
    s.m.fill(f32::NEG_INFINITY);
    s.l.fill(0.0);
    s.e.fill(0.0);
    s.ranges.clear();
    s.rows.clear();
    let modified = mods.touches_scores();
    for r in 0..quads * QUAD {
        let dst = &mut s.qs[r * dp..(r + 1) * dp];
        if r >= rows {
            dst.fill(0.0);
            s.ranges.push((c1, c1));
            s.rows.push(RowMods::default());
            continue;
        }
        let (hg, t) = (r / q_len, r % q_len);
        let h = g * group + hg;
        Tq::widen_slice(q.row(b, h, t), &mut dst[..d]);
        dst[..d].iter_mut().for_each(|x| *x *= scale);
        dst[d..].fill(0.0);
        let kr = params.mask.key_range(t, q_len, len);
        s.ranges.push((kr.start.max(c0), kr.end.min(c1)));
        if modified {
            s.rows.push(RowMods {
                diag: t as i64 + len as i64 - q_len as i64,
                slope2: mods.slope2.as_ref().map_or(0.0, |x| x[h]),
                bias: mods.mods.bias_index(b, h, t, 0).unwrap_or(0),
            });
        }
    }
    let lo = s.ranges.iter().map(|r| r.0).min().unwrap_or(c1);
    let hi = s.ranges.iter().map(|r| r.1).max().unwrap_or(c0);
    let k_in_place = T::whole_vectors(d) && (quads == 1 || T::is_f32());
    let v_in_place = T::whole_vectors(dv) && (quads == 1 || T::is_f32());

    // `s·0` summed over every score: 0 when all are finite. Otherwise (a
    // non-finite input, or |q·k| beyond f32) the exp2 clamp could turn a
    // NaN score into a finite weight: the chunk's rows are marked for
    // exact recomputation instead (and from the start when a modifier
    // cannot be evaluated in f32; `BlockMods::apply` adds its own).
    let mut sentinel = if overflows(mods) { f32x16::splat(f32::NAN) } else { f32x16::ZERO };
    let mut j = lo;
    while j < hi {
        let jb = KB.min(hi - j);
        // Rows past the block's end repeat its last row (masked below).
        let kt = block_rows(cache.k_from(b, g, j), T::units(d), jb);
        let vt = block_rows(cache.v_from(b, g, j), T::units(dv), jb);
        if !k_in_place {
            for (jj, k) in kt.iter().enumerate().take(jb) {
                T::widen(k, &mut s.kbuf[jj * dp..jj * dp + d]);
            }
        }
        if !v_in_place {
            for (jj, v) in vt.iter().enumerate().take(jb) {
                T::widen(v, &mut s.vbuf[jj * dvp..jj * dvp + dv]);
            }
        }
        let kf: [&[f32]; KB] = std::array::from_fn(|jj| &s.kbuf[jj.min(jb - 1) * dp..][..dp]);
        let vf: [&[f32]; KB] = std::array::from_fn(|jj| &s.vbuf[jj.min(jb - 1) * dvp..][..dvp]);
        // The next block's K and V rows, prefetched a little per inner
        // iteration of this one (attn_simd::Ahead has the measurement).
        let next = KB.min(hi - j - jb);
        let blk = Block {
            j,
            jb,
            dp,
            dvp,
            ranges: &s.ranges,
            ahead: [
                rows_ahead(cache.k_from(b, g, j), jb, next),
                rows_ahead(cache.v_from(b, g, j), jb, next),
            ],
            mods: BlockMods {
                bias: mods.mods.bias.as_ref().map(|x| x.data()),
                alibi: mods.slope2.is_some(),
                cap2: mods.cap2,
                rows: &s.rows,
            },
        };
        let st = State { qs: &s.qs, m: &mut s.m, l: &mut s.l, e: &mut s.e, acc: &mut s.acc };
        // Monomorphized on the modifiers and the statistics: the plain
        // loop stays as it was.
        let (kr, vr) = ((&kt, &kf), (&vt, &vf));
        let inp = (k_in_place, v_in_place);
        sentinel += match (modified, pe.is_some()) {
            (false, false) => blk.dispatch::<_, _, false, false>(kr, vr, inp, st),
            (true, false) => blk.dispatch::<_, _, true, false>(kr, vr, inp, st),
            (false, true) => blk.dispatch::<_, _, false, true>(kr, vr, inp, st),
            (true, true) => blk.dispatch::<_, _, true, true>(kr, vr, inp, st),
        };
        j += jb;
    }

    let sentinel = sentinel.reduce_add();
    for r in 0..rows {
        let o = &mut pout[r * dv..(r + 1) * dv];
        // A row whose every visible key has a −inf bias keeps m = −inf
        // (and l = 0) with finite inputs: no key in this chunk.
        let masked = s.m[r] == f32::NEG_INFINITY && sentinel == 0.0;
        let visible = s.ranges[r].0 < s.ranges[r].1 && !masked;
        if visible {
            let inv = 1.0 / s.l[r];
            for (x, a) in o.iter_mut().zip(&s.acc[r * dvp..]) {
                *x = a * inv;
            }
            (pml[2 * r], pml[2 * r + 1]) = (s.m[r], s.l[r]);
            if let Some(pe) = pe.as_deref_mut() {
                pe[r] = s.e[r];
            }
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
            if let Some(pe) = pe.as_deref_mut() {
                pe[r] = 0.0;
            }
        }
    }
}

/// Rows `jb .. jb + n` of `(base, stride)` (nothing when `n` is 0).
fn rows_ahead<T>((base, stride): (&[T], usize), jb: usize, n: usize) -> Ahead<'_> {
    if n == 0 {
        return Ahead::NONE;
    }
    // (strided rows: the last row's stride may run past the storage)
    Ahead::of(&base[stride * jb..(stride * (jb + n)).min(base.len())])
}

/// One block of keys `j .. j + jb` of a chunk.
struct Block<'a> {
    /// The next block's K and V rows (prefetched by the first quad).
    ahead: [Ahead<'a>; 2],
    j: usize,
    jb: usize,
    dp: usize,
    dvp: usize,
    ranges: &'a [(usize, usize)],
    /// The call's score modifiers (read only by `run::<_, _, true>`).
    mods: BlockMods<'a>,
}

/// The score modifiers of a block's rows, in the log2 domain.
struct BlockMods<'a> {
    /// The bias buffer (each row's keys contiguous from `RowMods::bias`).
    bias: Option<&'a [f32]>,
    /// Whether ALiBi is on (`RowMods::slope2`).
    alibi: bool,
    /// `c·log2 e` for a softcap `c`.
    cap2: Option<f32>,
    /// Per row (quad-padded): its diagonal, slope and bias offset.
    rows: &'a [RowMods],
}

impl BlockMods<'_> {
    /// Row `r`'s scores `x` (log2 domain) of keys `j .. j + 16` with its
    /// modifiers applied: `+ bias·log2 e`, `− slope₂·|diag − key|`, then
    /// `c₂·tanh(x/c₂)`. Only the bias of the row's visible keys `lo..hi`
    /// is read (`full`: all 16 are); lanes outside `lo..hi` are the
    /// caller's to mask.
    ///
    /// A `−inf` bias entry masks its key: it is set aside before the
    /// arithmetic and put back at the end, so that every other `±inf` or
    /// NaN is a fault. With a bias, a score that is not finite before the
    /// softcap (a NaN or `+inf` bias entry read, or f32 overflow of the
    /// sum) adds NaN to `sentinel`, so the chunk's rows are recomputed
    /// exactly — where, with `check_finite`, a non-finite bias entry is
    /// named. Without a bias the scores stay finite (finite `q·k`, which
    /// the caller's sentinel checks, minus a finite penalty; an overflow
    /// to `−inf` is capped to `−c₂` as the f64 definition caps its huge
    /// negative score); a slope or softcap whose `·log2 e` overflows
    /// sends the whole call to the exact path (`overflows`).
    #[inline(always)]
    fn apply(
        &self,
        mut x: f32x16,
        r: usize,
        j: usize,
        (lo, hi): (usize, usize),
        full: bool,
        sentinel: &mut f32x16,
    ) -> f32x16 {
        let rm = &self.rows[r];
        let ninf = f32x16::splat(f32::NEG_INFINITY);
        let mut masked = None;
        if let Some(bias) = self.bias {
            let row = &bias[rm.bias..];
            let bv = if full {
                load(&row[j..j + KB])
            } else {
                f32x16::new(std::array::from_fn(|jj| {
                    if (lo..hi).contains(&(j + jj)) { row[j + jj] } else { 0.0 }
                }))
            };
            let m = bv.simd_eq(ninf);
            x = m.select(f32x16::ZERO, bv).mul_add(f32x16::splat(LOG2_E), x);
            masked = Some(m);
        }
        if self.alibi {
            let dist = distances(rm.diag - j as i64, -1.0);
            x = dist.mul_add(f32x16::splat(-rm.slope2), x);
        }
        if masked.is_some() {
            // NaN or ±inf in a lane: NaN; 0 otherwise
            let finite = x.abs().simd_lt(f32x16::splat(f32::INFINITY));
            *sentinel += finite.select(f32x16::ZERO, f32x16::splat(f32::NAN));
        }
        if let Some(c2) = self.cap2 {
            x = tanh(x * f32x16::splat(1.0 / c2)) * f32x16::splat(c2);
        }
        match masked {
            Some(m) => m.select(ninf, x),
            None => x,
        }
    }
}

/// Whether a modifier's log2-domain constant overflows f32 (a softcap or
/// slope beyond ~2.4e38): the kernel cannot evaluate such a call, so all
/// its rows go to the exact path.
fn overflows(mods: &Mods2<'_>) -> bool {
    let inf = |x: &f32| !x.is_finite();
    mods.cap2.as_ref().is_some_and(inf) || mods.slope2.as_ref().is_some_and(|s| s.iter().any(inf))
}

/// The running state of an item's rows (quad-padded).
struct State<'a> {
    qs: &'a [f32],
    m: &'a mut [f32],
    l: &'a mut [f32],
    /// `Σ 2^(u − m)·(u − m)` per row (kept only by `run::<_, _, _, true>`).
    e: &'a mut [f32],
    acc: &'a mut [f32],
}

impl Block<'_> {
    /// [`Block::run`] on K and V read in place (`inp.0`, `inp.1`) or from
    /// the widened f32 scratch.
    #[inline(always)]
    fn dispatch<UK: Load16, UV: Load16, const MODS: bool, const STATS: bool>(
        &self,
        (kt, kf): (&[&[UK]; KB], &[&[f32]; KB]),
        (vt, vf): (&[&[UV]; KB], &[&[f32]; KB]),
        inp: (bool, bool),
        st: State<'_>,
    ) -> f32x16 {
        match inp {
            (true, true) => self.run::<_, _, MODS, STATS>(kt, vt, st),
            (true, false) => self.run::<_, _, MODS, STATS>(kt, vf, st),
            (false, true) => self.run::<_, _, MODS, STATS>(kf, vt, st),
            (false, false) => self.run::<_, _, MODS, STATS>(kf, vf, st),
        }
    }

    /// Scores, online softmax and `P·V` of every quad of rows that sees a
    /// key of the block; returns the sentinel `Σ s·0` of its scores (and
    /// NaN for a non-finite bias entry read). `MODS`: apply the score
    /// modifiers ([`BlockMods::apply`]); `STATS`: keep each row's `e`.
    #[inline(always)]
    fn run<UK: Load16, UV: Load16, const MODS: bool, const STATS: bool>(
        &self,
        k: &[&[UK]; KB],
        v: &[&[UV]; KB],
        st: State<'_>,
    ) -> f32x16 {
        let (j, jb, dp, dvp) = (self.j, self.jb, self.dp, self.dvp);
        let mut sentinel = f32x16::ZERO;
        let mut ahead_left = self.ahead;
        for (qd, ranges) in self.ranges.chunks_exact(QUAD).enumerate() {
            let r0 = qd * QUAD;
            let sees = |&(lo, hi): &(usize, usize)| lo < hi && lo < j + jb && hi > j;
            if !ranges.iter().any(sees) {
                continue;
            }
            // the first quad that runs prefetches the next block
            let ahead = std::mem::replace(&mut ahead_left, [Ahead::NONE; 2]);
            let sc = quad_scores(&st.qs[r0 * dp..], dp, k, ahead[0]);
            let mut p = [[0f32; KB]; QUAD];
            let (mut m_old, mut m_new) = ([0f32; LANES], [0f32; LANES]);
            let mut lsum = [0f32; QUAD];
            let mut esum = [0f32; QUAD];
            for r in 0..QUAD {
                sentinel = sc[r].mul_add(f32x16::ZERO, sentinel);
                let (lo, hi) = ranges[r];
                if !sees(&ranges[r]) {
                    continue; // p = 0, alpha = 2^0 = 1
                }
                let mut x = sc[r];
                let full = lo <= j && j + KB <= hi;
                if MODS {
                    x = self.mods.apply(x, r0 + r, j, (lo, hi), full, &mut sentinel);
                }
                if !full {
                    let mut a = x.to_array();
                    for (jj, s) in a.iter_mut().enumerate() {
                        if jj >= jb || j + jj < lo || j + jj >= hi {
                            *s = f32::NEG_INFINITY;
                        }
                    }
                    x = f32x16::new(a);
                }
                let m = st.m[r0 + r].max(hmax(x));
                if MODS && m == f32::NEG_INFINITY {
                    continue; // every key so far has a −inf bias: as above
                }
                (m_old[r], m_new[r]) = (st.m[r0 + r], m);
                let dev = x - f32x16::splat(m);
                let e = exp2(dev);
                lsum[r] = e.reduce_add();
                if STATS {
                    // Masked keys: e = 0 and dev = −inf; 0·(−1000) = 0.
                    esum[r] = (e * dev.fast_max(f32x16::splat(-1000.0))).reduce_add();
                }
                p[r] = e.to_array();
                st.m[r0 + r] = m;
            }
            // One vector exp2 for the 4 rescale factors (exp2(-inf) = 0
            // for a row's first visible block).
            let alpha = exp2(f32x16::new(m_old) - f32x16::new(m_new)).to_array();
            let alpha: [f32; QUAD] = std::array::from_fn(|r| alpha[r]);
            for r in 0..QUAD {
                if STATS {
                    let (e, l, delta) = (st.e[r0 + r], st.l[r0 + r], m_new[r] - m_old[r]);
                    st.e[r0 + r] = rescale_mean(e, l, delta, alpha[r]) + esum[r];
                }
                st.l[r0 + r] = st.l[r0 + r] * alpha[r] + lsum[r];
            }
            let acc = &mut st.acc[r0 * dvp..(r0 + QUAD) * dvp];
            quad_pv(&p, alpha, v, jb, acc, dvp, ahead[1]);
        }
        sentinel
    }
}
