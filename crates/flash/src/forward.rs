//! The FlashAttention-2 forward loop nest, its packing and online softmax,
//! and the scheduler that hands work items to workers.
//!
//! Work item = (query tile of `Br` rows, batch entry, K/V head, chunk of
//! that head's query heads). Per item:
//!
//! ```text
//! for each query head h of the chunk: pack Qᵀ(h)·scale·log2e  [Br/32][d][32]
//! for each K/V tile j (Bc keys) that some row of the tile can see:
//!     pack K_j  [Bc/8][d][8]   and V_j  [Bc][dv]       once for the chunk
//!     for each query head h:
//!         Sᵀ = K_j · Qᵀ(h)                 qk_micro, 8 keys × 32 queries
//!         mask Sᵀ in registers if the tile is partial (padding, diagonal)
//!         m' = max(m, colmax Sᵀ); α = 2^(m − m'); Pᵀ = 2^(Sᵀ − m')
//!         l = α·l + colsum Pᵀ;  O(h) = α·O(h) + P·V_j      pv_micro
//!                               (the item's first tile: O(h) = P·V_j)
//! O(h) /= l;  LSE = (m + log2 l)·ln 2        (l = 0: O = 0, LSE = −inf)
//! ```
//!
//! Scores are stored transposed (`Sᵀ`, keys × queries) so that the row
//! statistics of 16 queries live in one vector: max, exp and sum are all
//! vertical, with no horizontal reduction, and `Pᵀ` rows are exactly the
//! broadcast operand the `P·V` micro-kernel wants.
//!
//! Invariants: every tile's visible keys per query are a contiguous range
//! (`Mask::key_range_on` of the row's diagonal `i + diag`, which chunk
//! positions move), nondecreasing in the query index; an item writes
//! only its own output rows and LSE entries; an item's result does not
//! depend on which worker runs it, so any thread count gives the same bits.

use attn_core::modifiers::with_sink;
use attn_core::stats::RowStatsAcc;
use attn_core::{
    AttnError, AttnInputs, AttnParams, Element, Mask, RowFaults, TensorView, try_zeroed,
};
use attn_simd::{LOG2_E, exp2, tanh};
use wide::{bytemuck, f32x8, f32x16};

use crate::micro::{pv_micro, qk_micro};
use crate::modify::{Mods2, cap, distances};
use crate::rows::{LseWriter, RowWriter};
use crate::tiles::{BR_VECS, LANES, MR, NR, NV, Plan};

/// One worker's buffers, sized by a [`Plan`]; reused for every item.
#[derive(Debug)]
pub(crate) struct Scratch {
    /// Packed, pre-scaled `Qᵀ` per head: `[h][Br/32][d]` of 32 lanes.
    qp: Vec<[f32x16; NV]>,
    /// `O` accumulators per head: `[h][Br][dvv]`.
    acc: Vec<f32x16>,
    /// Running max per head (log2 domain): `[h][Br/16]`.
    m: Vec<f32x16>,
    /// Running sum per head: `[h][Br/16]`.
    l: Vec<f32x16>,
    /// Running `Σ 2^(u − m)·(u − m)` per head, for statistics:
    /// `[h][Br/16]`.
    es: Vec<f32x16>,
    /// `Sᵀ`, then `Pᵀ`: `[Bc][Br]` floats.
    st: Vec<f32x16>,
    /// K tile widened to f32, `[Bc][d]` (only for f16/bf16 inputs; f32
    /// K is read in place).
    kbuf: Vec<f32>,
    /// V tile widened/padded to f32, `[Bc][dvv·16]` (f16/bf16 inputs, or
    /// `dv` not a multiple of 16; otherwise V is read in place).
    vbuf: Vec<f32>,
    /// Per-query rescale of the current tile: `[Br]`.
    alpha: Vec<f32>,
    /// Visible key range of each query of the item: `[Br]` each.
    lo: Vec<usize>,
    hi: Vec<usize>,
    /// 8 query rows widened to f32 (f16/bf16 inputs), `[8][d]`.
    row: Vec<f32>,
}

impl Scratch {
    /// Exactly [`Plan::worker_bytes`] of buffers, or an error naming the
    /// workspace (head dims come from the input, so this can be large).
    pub(crate) fn new(p: &Plan) -> Result<Scratch, AttnError> {
        let (br, bc, h) = (p.tiles.br, p.tiles.bc, p.heads_per_item);
        let z = |n: usize| try_zeroed::<f32x16>("workspace", n);
        let f = |n: usize| try_zeroed::<f32>("workspace", n);
        Ok(Scratch {
            qp: try_zeroed("workspace", h * (br / NR) * p.d)?,
            acc: z(h * br * p.dvv)?,
            m: z(h * br / LANES)?,
            l: z(h * br / LANES)?,
            es: z(h * br / LANES)?,
            st: z(bc * (br / LANES + 1))?,
            kbuf: f(bc * p.d)?,
            vbuf: f(bc * p.dvv * LANES)?,
            alpha: f(br)?,
            lo: try_zeroed("workspace", br)?,
            hi: try_zeroed("workspace", br)?,
            row: f(QT_ROWS * p.d)?,
        })
    }
}

/// What a run needs besides the scratch: inputs, parameters and outputs.
pub(crate) struct Job<'a, 'b, T> {
    pub inputs: &'b AttnInputs<'a, T>,
    pub params: &'b AttnParams<'b>,
    pub plan: Plan,
    pub out: RowWriter<'b>,
    pub lse: LseWriter<'b>,
    /// Rows whose f32 result is not finite (recomputed after the run).
    pub faults: &'b RowFaults,
    /// The score modifiers, in the log2 domain.
    pub mods: &'b Mods2<'b>,
    /// Where the saturation statistics go (`max_p`, `entropy`), when asked.
    pub stats: Option<(LseWriter<'b>, LseWriter<'b>)>,
    /// Query row `i` sits on key `i + diag` (`AttnParams::diagonal`:
    /// `Nk − Nq`, or the global diagonal of a chunk at positions).
    pub diag: i64,
}

impl<T: Element> Job<'_, '_, T> {
    fn q_tiles(&self) -> usize {
        self.inputs.shape().q_len().div_ceil(self.plan.tiles.br)
    }
    fn head_chunks(&self) -> usize {
        self.inputs.shape().group_size().div_ceil(self.plan.heads_per_item)
    }
    /// Number of work items.
    pub(crate) fn items(&self) -> usize {
        let s = self.inputs.shape();
        self.q_tiles() * s.batch() * s.kv_heads() * self.head_chunks()
    }

    /// Item `i` → (query tile, batch, kv head, head chunk), heaviest query
    /// tiles first so that dynamic scheduling balances causal work.
    fn item(&self, i: usize) -> (usize, usize, usize, usize) {
        let s = self.inputs.shape();
        let per_tile = s.batch() * s.kv_heads() * self.head_chunks();
        let (rank, rest) = (i / per_tile, i % per_tile);
        let qt = match self.params.mask.as_window() {
            // Later query rows see more keys: start from the last tile.
            (None, Some(_)) => self.q_tiles() - 1 - rank,
            _ => rank,
        };
        let hc = rest % self.head_chunks();
        let bg = rest / self.head_chunks();
        (qt, bg / s.kv_heads(), bg % s.kv_heads(), hc)
    }

    /// Runs every item on `workers.len()` workers: the calling thread for
    /// one, else tasks of the current rayon pool (the caller has entered
    /// the call's [`attn_core::Par`]).
    pub(crate) fn run(&self, workers: &mut [Scratch]) {
        crate::schedule::run_items(self.items(), workers, |i, s| self.process(self.item(i), s));
    }

    fn process(&self, (qt, b, g, hc): (usize, usize, usize, usize), s: &mut Scratch) {
        let shape = self.inputs.shape();
        let p = &self.plan;
        let (br, bc) = (p.tiles.br, p.tiles.bc);
        let (nq, nk, d) = (shape.q_len(), shape.kv_len(), p.d);
        let mask: Mask = self.params.mask;
        let i0 = qt * br;
        let nvalid = br.min(nq - i0);
        let h0 = g * shape.group_size() + hc * p.heads_per_item;
        let nh = p.heads_per_item.min((g + 1) * shape.group_size() - h0);

        for q in 0..nvalid {
            let r = mask.key_range_on((i0 + q) as i64 + self.diag, nk);
            (s.lo[q], s.hi[q]) = (r.start, r.end);
        }
        let (kv_lo, kv_hi) = (s.lo[0], s.hi[nvalid - 1]);
        let bq = br / LANES;
        let panels = nvalid.div_ceil(NR);
        // With a softcap applied in registers (no bias), Q is packed
        // divided by c₂ as well: the block's scores come out as u/c₂, ready
        // for tanh (`modify_block`).
        let scale = self.params.scale_for(d) * LOG2_E * self.mods.register_prescale();
        // Whether every score the item computed is finite (`tile` sums
        // `s·0` over them): if not — a non-finite Q or K element a visible
        // score reads, or |q·k| beyond f32 — the exp2 clamp could turn a NaN
        // score into a finite weight, so the item's rows are recomputed
        // exactly instead.
        let mut safe = true;
        for hi in 0..nh {
            let per = (br / NR) * d;
            let qp = &mut s.qp[hi * per..(hi + 1) * per];
            pack_qt(&self.inputs.q, b, h0 + hi, i0, nvalid, scale, d, &mut s.row, qp);
            // Filled as floats: a fill of `f32x16` elements compiled to
            // `vscatterdps` stores. `O` needs no zeroing: the item's first
            // K/V tile writes it without reading it (`fresh` below).
            fill(&mut s.m[hi * bq..(hi + 1) * bq], f32::NEG_INFINITY);
            fill(&mut s.l[hi * bq..(hi + 1) * bq], 0.0);
            if self.stats.is_some() {
                fill(&mut s.es[hi * bq..(hi + 1) * bq], 0.0);
            }
        }

        if kv_lo < kv_hi {
            let first_j0 = kv_lo / bc * bc;
            let mut j0 = first_j0;
            while j0 < kv_hi {
                let kn = bc.min(nk - j0);
                let kn8 = kn.next_multiple_of(MR);
                // Borrow the conversion buffers out of the scratch while
                // the K/V rows point into them (moving a Vec is free).
                let (mut kbuf, mut vbuf) =
                    (std::mem::take(&mut s.kbuf), std::mem::take(&mut s.vbuf));
                let kt = k_rows(&self.inputs.k, b, g, j0, kn, &mut kbuf);
                let vt = v_rows(&self.inputs.v, b, g, j0, kn, p.dvv * LANES, &mut vbuf);
                let full = s.lo[nvalid - 1] <= j0 && s.hi[0] >= j0 + kn;
                for hi in 0..nh {
                    let fresh = j0 == first_j0;
                    let at = (b, h0 + hi, i0);
                    let sent = if self.stats.is_some() {
                        self.tile::<true>(
                            s, &kt, &vt, hi, at, j0, kn, kn8, nvalid, panels, full, fresh,
                        )
                    } else {
                        self.tile::<false>(
                            s, &kt, &vt, hi, at, j0, kn, kn8, nvalid, panels, full, fresh,
                        )
                    };
                    safe &= sent == 0.0;
                }
                (s.kbuf, s.vbuf) = (kbuf, vbuf);
                j0 += bc;
            }
        }

        // Normalize and write out. A row that saw keys has l >= 1 and a
        // finite result unless an input was not finite or f32 overflowed;
        // `acc·0` summed over the item's accumulators is 0 exactly when
        // every one is finite (one FMA per vector; rows are told apart only
        // when something is wrong). Faulty rows are recomputed exactly after
        // the run (attn_naive::exact).
        let mut sentinel = f32x16::ZERO;
        let mut lse_ok = true;
        for hi in 0..nh {
            let h = h0 + hi;
            for q in 0..nvalid {
                let (mv, lv) = (s.m[hi * bq + q / LANES], s.l[hi * bq + q / LANES]);
                let (m, l) = (mv.to_array()[q % LANES], lv.to_array()[q % LANES]);
                let acc = &s.acc[(hi * br + q) * p.dvv..][..p.dvv];
                let accf: &[f32] = bytemuck::cast_slice(acc);
                // SAFETY: row (b, h, i0 + q) belongs to this item alone.
                let orow = unsafe { self.out.row_mut(b, h, i0 + q) };
                let idx = (b * shape.q_heads() + h) * nq + i0 + q;
                let sink = self.mods.mods.sink(h);
                let lse = if s.lo[q] < s.hi[q] {
                    let lse = (m + l.log2()) * std::f32::consts::LN_2;
                    // Checked before the sink, which makes the LSE of a
                    // row that lost every key (a −inf bias) finite.
                    lse_ok &= lse.is_finite();
                    // A sink rescales the finished row (`with_sink`).
                    let (lse, f) = match sink {
                        Some(sink) => with_sink(lse, sink),
                        None => (lse, 1.0),
                    };
                    let inv = f / l;
                    for (o, a) in orow.iter_mut().zip(accf) {
                        *o = a * inv;
                    }
                    for a in acc {
                        sentinel = a.mul_add(f32x16::ZERO, sentinel);
                    }
                    lse
                } else {
                    orow.fill(0.0);
                    sink.unwrap_or(f32::NEG_INFINITY)
                };
                // SAFETY: LSE entry of row (b, h, i0 + q): this item's.
                unsafe { self.lse.write(idx, lse) };
                if let Some((max_p, entropy)) = &self.stats {
                    let visible = s.lo[q] < s.hi[q];
                    let acc = RowStatsAcc {
                        m2: if visible { m } else { f32::NEG_INFINITY },
                        l: if visible { l } else { 0.0 },
                        e: s.es[hi * bq + q / LANES].to_array()[q % LANES],
                        sink2: sink.map(|x| x * LOG2_E),
                    };
                    let (p, h) = acc.finish();
                    // SAFETY: this item's entries, as for the LSE.
                    unsafe {
                        max_p.write(idx, p);
                        entropy.write(idx, h);
                    }
                }
            }
        }
        if !safe || !lse_ok || sentinel.reduce_add() != 0.0 {
            for hi in 0..nh {
                for q in (0..nvalid).filter(|&q| s.lo[q] < s.hi[q]) {
                    let (h, i) = (h0 + hi, i0 + q);
                    // SAFETY: as above; no other reference to the row lives.
                    let orow = unsafe { self.out.row_mut(b, h, i) };
                    let (mv, lv) = (s.m[hi * bq + q / LANES], s.l[hi * bq + q / LANES]);
                    let (m, l) = (mv.to_array()[q % LANES], lv.to_array()[q % LANES]);
                    let lse = (m + l.log2()) * std::f32::consts::LN_2;
                    let lse = self.mods.mods.sink(h).map_or(lse, |x| with_sink(lse, x).0);
                    if !safe || RowFaults::is_fault(true, lse, orow) {
                        self.faults.report((b * shape.q_heads() + h) * nq + i);
                    }
                }
            }
        }
    }

    /// One (head, K/V tile) step: `Sᵀ`, mask, online softmax, `O += P·V`.
    /// Returns the sum of `s·0` over the scores computed: 0 when all are
    /// finite, NaN otherwise.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn tile<const STATS: bool>(
        &self,
        s: &mut Scratch,
        kt: &Rows<'_>,
        vt: &Rows<'_>,
        hi: usize,
        (b, h, i0): (usize, usize, usize),
        j0: usize,
        kn: usize,
        kn8: usize,
        nvalid: usize,
        panels: usize,
        full: bool,
        fresh: bool,
    ) -> f32 {
        let p = &self.plan;
        let (br, d, dvv) = (p.tiles.br, p.d, p.dvv);
        let bq = br / LANES;
        let mut sentinel = f32x16::ZERO;
        // Rows of Sᵀ are one vector longer than Br: a power-of-two row
        // stride would map a column of Pᵀ (read by pv_micro) onto a few L1
        // sets and thrash them.
        let sq = bq + 1;
        let qp = &s.qp[hi * (br / NR) * d..][..(br / NR) * d];

        // ALiBi and the softcap go on each 8×32 block in registers; with a
        // bias (read along its rows) all three go on the stored Sᵀ instead.
        let in_registers = self.mods.touches_scores() && self.mods.mods.bias.is_none();
        // Sᵀ = K·Qᵀ, one 32-query panel at a time (the panel, d×32×4
        // bytes, stays in L1 while the K blocks stream past it).
        {
            let st: &mut [f32] = bytemuck::cast_slice_mut(&mut s.st);
            let ninf = f32x16::splat(f32::NEG_INFINITY);
            for pn in 0..panels {
                let qpanel = &qp[pn * d..(pn + 1) * d];
                // Keys some query of this panel can see (on a partial tile,
                // e.g. the causal diagonal, whole 8×32 blocks are invisible).
                let (plo, phi) = (s.lo[pn * NR], s.hi[(pn * NR + NR - 1).min(nvalid - 1)]);
                for kb in 0..kn8 / MR {
                    let (ka, kz) = (j0 + kb * MR, j0 + kb * MR + MR);
                    let c = if full || (ka < phi && kz > plo) {
                        let c = qk_micro(std::array::from_fn(|r| kt.row(kb * MR + r)), qpanel);
                        // (Σ s)·0 is 0 when every score is finite, NaN
                        // otherwise (or when the sum overflows, ~1e37: a
                        // harmless false alarm). A tree of adds in registers.
                        let rows: [f32x16; MR] =
                            std::array::from_fn(|r| (1..NV).fold(c[r][0], |a, t| a + c[r][t]));
                        const { assert!(MR == 8, "the tree below sums 8 rows") };
                        let sum = ((rows[0] + rows[1]) + (rows[2] + rows[3]))
                            + ((rows[4] + rows[5]) + (rows[6] + rows[7]));
                        sentinel = sum.mul_add(f32x16::ZERO, sentinel);
                        let mut c = c;
                        if in_registers {
                            self.modify_block(&mut c, h, i0 + pn * NR, ka);
                        }
                        c
                    } else {
                        [[ninf; NV]; MR]
                    };
                    for (r, cr) in c.iter().enumerate() {
                        let row = &mut st[(kb * MR + r) * sq * LANES + pn * NR..][..NR];
                        for (t, v) in cr.iter().enumerate() {
                            row[t * LANES..(t + 1) * LANES].copy_from_slice(v.as_array());
                        }
                    }
                }
            }
        }
        let used = panels * NR / LANES; // query vectors actually computed
        let st = &mut s.st[..kn8 * sq];
        if self.mods.mods.bias.is_some() {
            let at = (b, h, i0, j0);
            sentinel += f32x16::splat(self.modify_scores(st, sq, at, kn, nvalid, used));
        }
        // Padding keys (kn..kn8) and, on partial tiles, masked pairs: −inf.
        let ninf = f32x16::splat(f32::NEG_INFINITY);
        for row in st[kn * sq..].chunks_mut(sq) {
            fill(&mut row[..used], f32::NEG_INFINITY);
        }
        if !full {
            let (mut qa, mut qb) = (0usize, 0usize);
            let iota = f32x16::new(std::array::from_fn(|l| l as f32));
            for (k, row) in st[..kn * sq].chunks_mut(sq).enumerate() {
                let j = j0 + k;
                while qa < nvalid && s.hi[qa] <= j {
                    qa += 1;
                }
                while qb < nvalid && s.lo[qb] <= j {
                    qb += 1;
                }
                // Visible queries of key j: qa..qb.
                let (fa, fb) = (f32x16::splat(qa as f32), f32x16::splat(qb as f32));
                for (v, x) in row[..used].iter_mut().enumerate() {
                    let qi = iota + f32x16::splat((v * LANES) as f32);
                    let vis = qi.simd_ge(fa) & qi.simd_lt(fb);
                    *x = vis.select(*x, ninf);
                }
            }
        }

        // Online softmax, 16 queries per vector.
        let m = &mut s.m[hi * bq..][..bq];
        let l = &mut s.l[hi * bq..][..bq];
        let es = &mut s.es[hi * bq..][..bq];
        let mut mt = [ninf; BR_VECS];
        for row in st.chunks(sq) {
            for (a, x) in mt.iter_mut().zip(&row[..used]) {
                *a = a.fast_max(*x);
            }
        }
        let mut msafe = [f32x16::ZERO; BR_VECS];
        for v in 0..used {
            let mnew = m[v].fast_max(mt[v]);
            msafe[v] = mnew.simd_eq(ninf).select(f32x16::ZERO, mnew);
            let alpha = exp2(m[v] - msafe[v]);
            s.alpha[v * LANES..(v + 1) * LANES].copy_from_slice(alpha.as_array());
            if STATS {
                // `attn_core::stats::rescale_mean`, 16 rows at a time.
                let rescaled = alpha * (es[v] - (msafe[v] - m[v]) * l[v]);
                es[v] = l[v].simd_eq(f32x16::ZERO).select(f32x16::ZERO, rescaled);
            }
            m[v] = mnew;
            l[v] *= alpha;
        }
        let mut lsum = [f32x16::ZERO; BR_VECS];
        let mut esum = [f32x16::ZERO; BR_VECS];
        for row in st.chunks_mut(sq) {
            for v in 0..used {
                let dev = row[v] - msafe[v];
                let e = exp2(dev);
                row[v] = e;
                lsum[v] += e;
                if STATS {
                    // Masked keys: e = 0 and dev = −inf; 0·(−1000) = 0.
                    esum[v] = e.mul_add(dev.fast_max(f32x16::splat(-1000.0)), esum[v]);
                }
            }
        }
        for v in 0..used {
            l[v] += lsum[v];
            if STATS {
                es[v] += esum[v];
            }
        }

        // O = α·O + P·V, 8 queries × 32 columns of dv at a time.
        let pt: &[f32] = bytemuck::cast_slice(&s.st[..kn8 * sq]);
        let acc = &mut s.acc[hi * br * dvv..][..br * dvv];
        // Column chunks outer: one chunk of V (kn × 32 floats, 8 KiB at
        // Bc = 64) stays in L1 while the 8-query blocks of Pᵀ stream by.
        let mut cv = 0;
        while cv < dvv {
            let w = if cv + NV <= dvv { NV } else { 1 };
            for q0 in (0..nvalid).step_by(MR) {
                let alpha: [f32; MR] = s.alpha[q0..q0 + MR].try_into().unwrap();
                // Keys visible to some of these 8 queries: P is 0 elsewhere.
                let keys = if full {
                    0..kn
                } else {
                    let (lo, hi) = (s.lo[q0], s.hi[(q0 + MR - 1).min(nvalid - 1)]);
                    lo.saturating_sub(j0).min(kn)..hi.saturating_sub(j0).min(kn)
                };
                if w == NV {
                    pv_block::<NV>(pt, sq * LANES, q0, vt, dvv, cv, keys, &alpha, fresh, acc);
                } else {
                    pv_block::<1>(pt, sq * LANES, q0, vt, dvv, cv, keys, &alpha, fresh, acc);
                }
            }
            cv += w;
        }
        sentinel.reduce_add()
    }

    /// ALiBi and the softcap on one 8×32 block of `Sᵀ` in registers:
    /// `c[r][t]` holds key `k0 + r` against queries `q0 + 16t + lane`.
    #[inline(always)]
    fn modify_block(&self, c: &mut [[f32x16; NV]; MR], h: usize, q0: usize, k0: usize) {
        // The scores here are u·prescale (Q was packed with it): ALiBi
        // follows, and the softcap is then c₂·tanh of them.
        let pre = self.mods.register_prescale();
        if let Some(slope2) = &self.mods.slope2 {
            let slope = f32x16::splat(-slope2[h] * pre);
            // Query q sits on the diagonal q + diag.
            let off = self.diag + q0 as i64 - k0 as i64;
            for (r, cr) in c.iter_mut().enumerate() {
                for (t, x) in cr.iter_mut().enumerate() {
                    let base = off + (t * LANES) as i64 - r as i64;
                    *x = distances(base, 1.0).mul_add(slope, *x);
                }
            }
        }
        if let Some(c2) = self.mods.cap2 {
            // Computed blocks hold finite scores (invisible blocks are
            // filled with −inf without coming here, non-finite inputs are
            // caught by the sentinel), so no −inf guard is needed.
            let c2 = f32x16::splat(c2);
            for x in c.iter_mut().flatten() {
                *x = tanh(*x) * c2;
            }
        }
    }

    /// Bias, ALiBi and softcap on the scores `Sᵀ` of one tile (rows
    /// `0..kn` are keys `j0..`, lanes are queries `i0..`), in place, in the
    /// log2 domain, before the mask; in the order of `docs/semantics.md`.
    /// Returns 0, or NaN when a bias entry the tile read is NaN or `+inf`
    /// (the item's rows are then recomputed exactly, which names it).
    ///
    /// The bias is read along its rows (contiguous keys) and added across
    /// the rows of `Sᵀ`; ALiBi and the softcap are vertical over 16
    /// queries.
    #[inline(never)]
    fn modify_scores(
        &self,
        st: &mut [f32x16],
        sq: usize,
        (b, h, i0, j0): (usize, usize, usize, usize),
        kn: usize,
        nvalid: usize,
        used: usize,
    ) -> f32 {
        let mut bad = false;
        if self.mods.mods.bias.is_some() {
            let stf: &mut [f32] = bytemuck::cast_slice_mut(st);
            for q in 0..nvalid {
                let row = self.mods.mods.bias_row(b, h, i0 + q).expect("bias is set");
                for (k, &x) in row[j0..j0 + kn].iter().enumerate() {
                    bad |= x.is_nan() || x == f32::INFINITY;
                    stf[k * sq * LANES + q] += x * LOG2_E;
                }
            }
        }
        if let Some(slope2) = &self.mods.slope2 {
            let slope = f32x16::splat(-slope2[h]);
            // Query i0 + 16v + t sits on the diagonal i + diag.
            let off = self.diag + i0 as i64;
            for (k, row) in st.chunks_mut(sq).take(kn).enumerate() {
                let j = (j0 + k) as i64;
                for (v, x) in row[..used].iter_mut().enumerate() {
                    *x = distances(off + (v * LANES) as i64 - j, 1.0).mul_add(slope, *x);
                }
            }
        }
        if let Some(c2) = self.mods.cap2 {
            for row in st.chunks_mut(sq).take(kn) {
                for x in &mut row[..used] {
                    *x = cap(*x, c2);
                }
            }
        }
        if bad { f32::NAN } else { 0.0 }
    }
}

/// `acc[q0..q0+8][cv..cv+W] = α·acc + Pᵀ[keys, q0..q0+8]ᵀ · V[keys, cv..cv+W]`
/// (`keys`: the tile rows that can be nonzero for these queries); with
/// `fresh` (the item's first K/V tile, where α is 0 and `acc` was never
/// written) `acc` is not read: `acc = Pᵀᵀ·V`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pv_block<const W: usize>(
    pt: &[f32],
    pstride: usize,
    q0: usize,
    vt: &Rows<'_>,
    dvv: usize,
    cv: usize,
    keys: std::ops::Range<usize>,
    alpha: &[f32; MR],
    fresh: bool,
    acc: &mut [f32x16],
) {
    let mut c = [[f32x16::ZERO; W]; MR];
    if !fresh {
        for r in 0..MR {
            let a = f32x16::splat(alpha[r]);
            let row = &acc[(q0 + r) * dvv + cv..][..W];
            for t in 0..W {
                c[r][t] = row[t] * a;
            }
        }
    }
    if !keys.is_empty() {
        let (k0, n) = (keys.start, keys.len());
        let v = &vt.data[vt.base + k0 * vt.stride + cv * LANES..];
        pv_micro::<W>(&pt[k0 * pstride + q0..], pstride, v, vt.stride, n, &mut c);
    }
    for r in 0..MR {
        acc[(q0 + r) * dvv + cv..][..W].copy_from_slice(&c[r]);
    }
}

/// Sets every lane of `v` to `x`, as a fill of floats (a memset for 0).
fn fill(v: &mut [f32x16], x: f32) {
    bytemuck::cast_slice_mut::<f32x16, f32>(v).fill(x);
}

/// The f32 values of row `(b, h, n)`: borrowed for f32, widened otherwise.
#[inline]
fn row_f32<'r, T: Element>(
    x: &'r TensorView<'_, T>,
    b: usize,
    h: usize,
    n: usize,
    buf: &'r mut [f32],
) -> &'r [f32] {
    let row = x.row(b, h, n);
    match T::as_f32_slice(row) {
        Some(r) => r,
        None => {
            let buf = &mut buf[..row.len()];
            T::widen_slice(row, buf);
            buf
        }
    }
}

/// Query rows `pack_qt` transposes at a time: one 8×8 `f32x8` transpose
/// per 8 columns.
pub(crate) const QT_ROWS: usize = 8;

/// `qp[p][c][t] = scale · Q[b, h, i0 + 32p + t, c]`, zero past `nvalid`.
///
/// Groups of 8 query rows are transposed 8×8 in registers (`f32x8::
/// transpose`: unpacks and shuffles) and stored as contiguous 8-float runs
/// of the panel. Writing each row's elements 32 floats apart instead
/// compiled to `vscatterqps`, ~13% of a forward call at N = 256 on Zen 5.
#[allow(clippy::too_many_arguments)]
fn pack_qt<T: Element>(
    q: &TensorView<'_, T>,
    b: usize,
    h: usize,
    i0: usize,
    nvalid: usize,
    scale: f32,
    d: usize,
    buf: &mut [f32],
    qp: &mut [[f32x16; NV]],
) {
    let qpf: &mut [f32] = bytemuck::cast_slice_mut(qp);
    let panels = qpf.len() / (d * NR);
    let vscale = f32x8::splat(scale);
    for pn in 0..panels {
        let panel = &mut qpf[pn * d * NR..(pn + 1) * d * NR];
        for t0 in (0..NR).step_by(QT_ROWS) {
            // Rows of this group that exist; the others read as zeros.
            let first = pn * NR + t0;
            let n = nvalid.saturating_sub(first).min(QT_ROWS);
            let mut bufs = buf.chunks_exact_mut(d);
            let rows: [&[f32]; QT_ROWS] = std::array::from_fn(|j| {
                let buf = bufs.next().expect("QT_ROWS rows of d");
                if j < n {
                    &row_f32(q, b, h, i0 + first + j, buf)[..d]
                } else {
                    buf.fill(0.0);
                    buf
                }
            });
            let blocks = d / QT_ROWS;
            for cb in 0..blocks {
                let c0 = cb * QT_ROWS;
                let m = rows.map(|r| f32x8::new(r[c0..c0 + QT_ROWS].try_into().unwrap()));
                for (k, col) in f32x8::transpose(m).into_iter().enumerate() {
                    let dst = &mut panel[(c0 + k) * NR + t0..][..QT_ROWS];
                    dst.copy_from_slice((col * vscale).as_array());
                }
            }
            for c in blocks * QT_ROWS..d {
                let dst = &mut panel[c * NR + t0..][..QT_ROWS];
                for (x, r) in dst.iter_mut().zip(&rows) {
                    *x = r[c] * scale;
                }
            }
        }
    }
}

/// Rows of one K or V tile, as f32: `row(j)` for `j < n`; rows past `n`
/// (padding up to a multiple of 8 keys) repeat row `n - 1`, whose scores
/// the loop nest then masks to −inf.
pub(crate) struct Rows<'x> {
    data: &'x [f32],
    base: usize,
    stride: usize,
    n: usize,
}

impl Rows<'_> {
    #[inline(always)]
    fn row(&self, j: usize) -> &[f32] {
        &self.data[self.base + j.min(self.n - 1) * self.stride..]
    }
}

/// K rows `j0..j0+kn` of head `(b, g)`: in place for f32, else widened
/// into `buf` (`[kn][d]`).
fn k_rows<'x, T: Element>(
    k: &TensorView<'x, T>,
    b: usize,
    g: usize,
    j0: usize,
    kn: usize,
    buf: &'x mut [f32],
) -> Rows<'x> {
    if let Some(data) = T::as_f32_slice(k.data()) {
        return Rows { data, base: k.offset(b, g, j0), stride: k.row_stride(), n: kn };
    }
    let d = k.dims()[3];
    for (j, dst) in buf.chunks_exact_mut(d).take(kn).enumerate() {
        T::widen_slice(k.row(b, g, j0 + j), dst);
    }
    Rows { data: buf, base: 0, stride: d, n: kn }
}

/// V rows `j0..j0+kn` of head `(b, g)`: in place for f32 when `dv` is a
/// multiple of 16, else widened into `buf` with rows of `w` floats, the
/// columns past `dv` zero.
fn v_rows<'x, T: Element>(
    v: &TensorView<'x, T>,
    b: usize,
    g: usize,
    j0: usize,
    kn: usize,
    w: usize,
    buf: &'x mut [f32],
) -> Rows<'x> {
    let dv = v.dims()[3];
    if let (Some(data), true) = (T::as_f32_slice(v.data()), dv == w) {
        return Rows { data, base: v.offset(b, g, j0), stride: v.row_stride(), n: kn };
    }
    for (j, dst) in buf.chunks_exact_mut(w).take(kn).enumerate() {
        T::widen_slice(v.row(b, g, j0 + j), &mut dst[..dv]);
        dst[dv..].fill(0.0);
    }
    Rows { data: buf, base: 0, stride: w, n: kn }
}
