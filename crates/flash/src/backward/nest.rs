//! The FlashAttention-2 backward loop nest: K/V tiles outer, query tiles
//! inner, `P` recomputed from the LSE.
//!
//! Work item = (batch entry b, K/V head g, chunk c of its K/V tiles). Per
//! item, with `Bc` = [`BC`] keys and `Br` = [`BR`] queries per tile:
//!
//! ```text
//! for each K/V tile j of the chunk:
//!     pack Kᵀ·scale·log2e, Vᵀ  [Bc/32][d|dv][32];  K·scale rows [Bc][dpad]
//!     dK_j = dV_j = 0                                       (scratch, L2)
//!     for each query head h of the group, each Q tile i that sees tile j:
//!         S  = Q_i·Kᵀ            qk_micro, 8 queries × 32 keys
//!         S += bias·log2e − slope·log2e·|diag − j|; S = cap(S)   (modifiers)
//!         P  = 2^(S − LSE·log2e), 0 where masked            (epilogue)
//!         dP = dO_i·Vᵀ           qk_micro
//!         dS = P∘(dP − D)  [∘ (1 − (S/c₂)²) with a softcap]  (epilogue)
//!         [stats: |dS| summed per row and key, P's argmax per row]  (8 rows)
//!         dV_j += Pᵀ·dO_i         pv_micro, 8 keys × 32 columns
//!         dK_j += dSᵀ·Q_i         pv_micro
//!         dQ_i += dS·(K_j·scale)  rows_micro, 8 queries × 32 columns
//!     write dK_j·scale, dV_j
//! ```
//!
//! The `dS` tile is in natural units (the gradient of the score
//! `q·k·scale`): the scale is folded into the K rows of the dQ product and
//! into dK's write-out, not into `dP` and `D`, so that the statistics read
//! `dS` itself, for any scale (0 included).
//!
//! `P` and `dS` are stored query-major (`[Br][Bc]`): the two products that
//! reduce over queries broadcast 8 consecutive keys of a row, the one that
//! reduces over keys broadcasts one key of 8 rows — no transposes.
//!
//! Score modifiers (`docs/semantics.md`): the bias and ALiBi are constants
//! added to the recomputed `S` (log2 units, see `crate::modify`); the
//! softcap caps `S` before `P`, and its slope `1 − (S/c₂)²` is kept in the
//! `dS` tile between the two epilogues, then multiplies `dS` (the chain
//! rule) before the three products use it. `pair` is monomorphized on
//! whether any modifier touches scores, so the plain call runs the same
//! code as before. Sinks change nothing here: the forward's LSE includes
//! them (their gradient is a per-row sum, in `mod.rs`).
//!
//! Statistics (`super::stats`), when asked: after the `dS` epilogue of
//! each block of 8 rows, one pass over those rows of `P` and `dS` while
//! they are in L1 (`O(Br·Bc)` a pair next to the products' `O(Br·Bc·d)`);
//! one branch a block when not asked.
//!
//! Invariants: every mask's visible keys per query are a contiguous range,
//! nondecreasing in the query; an item writes only the dK/dV rows of its
//! own keys and the dQ rows of its chunk's target (dQ itself for chunk 0,
//! a partial buffer for the others), adding to them in a fixed order (the
//! same for its statistics: its keys' `key_grad`, its chunk's row
//! partials); so
//! an item's result does not depend on which worker runs it, and the bits
//! do not depend on the thread count.

use attn_core::{AttnParams, BackwardInputs, Element, TensorView};
use attn_simd::exp2;
use wide::{bytemuck, f32x16};

use super::micro::rows_micro;
use super::plan::{BC, BR, BwdPlan, SROW, query_span};
use super::stats::{RowArg, StatsOut, add_rows as add_rows_stats};
use super::workspace::Scratch;
use crate::micro::{pv_micro, qk_micro};
use crate::modify::{Mods2, cap, cap_slope, distances};
use crate::rows::RowWriter;
use crate::tiles::{LANES, MR, NR, NV};

/// What a run needs besides the scratch.
pub(crate) struct BwdJob<'a, 'b, T> {
    pub inputs: &'b BackwardInputs<'a, T>,
    pub params: &'b AttnParams<'b>,
    /// The call's score modifiers in log2 units.
    pub mods: &'b Mods2<'b>,
    pub plan: BwdPlan,
    /// `D = rowsum(dO∘O)` and `LSE·log2 e` per query row, `[B·Hq·Nq]`.
    pub dd: &'b [f32],
    pub lse2: &'b [f32],
    /// dQ (chunk 0) and the partials `[(C − 1)·B, Hq, Nq, d]`.
    pub dq: RowWriter<'b>,
    pub partial: RowWriter<'b>,
    pub dk: RowWriter<'b>,
    pub dv: RowWriter<'b>,
    /// The statistics' outputs, when asked.
    pub stats: Option<StatsOut<'b>>,
}

/// Rows of one operand as f32: `data[base + r·stride ..]`.
#[derive(Clone, Copy)]
struct Rows<'x> {
    data: &'x [f32],
    base: usize,
    stride: usize,
}

impl<'x> Rows<'x> {
    #[inline(always)]
    fn at(&self, r: usize) -> &'x [f32] {
        &self.data[self.base + r * self.stride..]
    }
}

/// Rows `i0..i0+n` of head `(b, h)` of `x`: in place when they are f32 and
/// `w` (the padded width) is their length, else widened into `buf`
/// (`[n][w]`, zero past the row's length).
fn rows_of<'x, T: Element>(
    x: &TensorView<'x, T>,
    (b, h, i0, n): (usize, usize, usize, usize),
    w: usize,
    buf: &'x mut [f32],
) -> Rows<'x> {
    let len = x.dims()[3];
    if let (Some(data), true) = (T::as_f32_slice(x.data()), len == w) {
        return Rows { data, base: x.offset(b, h, i0), stride: x.row_stride() };
    }
    for (r, dst) in buf.chunks_exact_mut(w).take(n).enumerate() {
        T::widen_slice(x.row(b, h, i0 + r), &mut dst[..len]);
        dst[len..].fill(0.0);
    }
    Rows { data: buf, base: 0, stride: w }
}

impl<T: Element> BwdJob<'_, '_, T> {
    /// Item `i` → (batch, K/V head, chunk).
    fn item(&self, i: usize) -> (usize, usize, usize) {
        let s = self.inputs.shape();
        let (bg, c) = (i / self.plan.chunks, i % self.plan.chunks);
        (bg / s.kv_heads(), bg % s.kv_heads(), c)
    }

    /// Runs every item on `workers.len()` workers: the calling thread for
    /// one, else tasks of the current rayon pool.
    pub(crate) fn run(&self, workers: &mut [Scratch]) {
        let s = self.inputs.shape();
        let n = s.batch() * s.kv_heads() * self.plan.chunks;
        crate::schedule::run_items(n, workers, |i, sc| self.process(self.item(i), sc));
    }

    /// One item: every K/V tile of chunk `c` of head `(b, g)`.
    fn process(&self, (b, g, c): (usize, usize, usize), s: &mut Scratch) {
        let shape = self.inputs.shape();
        let p = &self.plan;
        let (nq, nk) = (shape.q_len(), shape.kv_len());
        let mask = self.params.mask;
        let scale = self.params.scale_for(p.d);
        let (grp, hq) = (shape.group_size(), shape.q_heads());
        let modified = self.mods.touches_scores();
        // The item's statistics: the row partials of its chunk and group,
        // `[grp][Nq]`, and the `key_grad` of its keys, from `k0`.
        let k0 = (p.bounds[c] * BC).min(nk);
        let mut stats = self.stats.as_ref().map(|st| {
            let rows = ((c * shape.batch() + b) * hq + g * grp) * nq;
            let keys = (b * shape.kv_heads() + g) * nk + k0;
            let kend = (p.bounds[c + 1] * BC).min(nk);
            // SAFETY: the chunk's rows of the group's heads, and the
            // chunk's keys of head (b, g), belong to this item alone.
            let (r, k) = unsafe {
                (st.rows.range_mut(rows, grp * nq), st.key_grad.range_mut(keys, kend - k0))
            };
            r.fill(RowArg::default());
            k.fill(0.0);
            (r, k)
        });
        for t in p.bounds[c]..p.bounds[c + 1] {
            let j0 = t * BC;
            let kn = BC.min(nk - j0);
            let span = query_span(&mask, nq, nk, j0, j0 + kn);
            if span.is_empty() {
                continue; // dK, dV of these keys stay 0
            }
            self.pack_kv(s, b, g, j0, kn, scale);
            s.dk.fill(0.0);
            s.dv.fill(0.0);
            for h in g * grp..(g + 1) * grp {
                let mut i0 = span.start;
                while i0 < span.end {
                    let nqv = BR.min(span.end - i0);
                    let target = if c == 0 {
                        (self.dq, b)
                    } else {
                        (self.partial, (c - 1) * shape.batch() + b)
                    };
                    let rows = (b * hq + h) * nq + i0;
                    let at = ((b, h, i0, nqv), (j0, kn), rows, target);
                    let st = stats.as_mut().map(|(r, k)| {
                        (&mut r[(h - g * grp) * nq + i0..][..nqv], &mut k[j0 - k0..][..kn])
                    });
                    if modified {
                        self.pair::<true>(s, at, st);
                    } else {
                        self.pair::<false>(s, at, st);
                    }
                    i0 += nqv;
                }
            }
            for k in 0..kn {
                // SAFETY: rows (b, g, j0 + k) belong to this item alone
                // (chunks partition the K/V tiles of each head).
                let (dk, dv) =
                    unsafe { (self.dk.row_mut(b, g, j0 + k), self.dv.row_mut(b, g, j0 + k)) };
                dk.iter_mut().zip(&s.dk[k * p.dpad..][..p.d]).for_each(|(o, x)| *o = x * scale);
                dv.copy_from_slice(&s.dv[k * p.dvpad..][..p.dv]);
            }
        }
    }

    /// Packs K/V tile `j0..j0+kn` of head `(b, g)`: `Kᵀ·scale·log2 e` and
    /// `Vᵀ` in panels of 32 keys (zero past `kn`), `K·scale` rows padded.
    fn pack_kv(&self, s: &mut Scratch, b: usize, g: usize, j0: usize, kn: usize, scale: f32) {
        let p = &self.plan;
        let (k, v) = (&self.inputs.fwd.k, &self.inputs.fwd.v);
        let kscale = scale * attn_simd::LOG2_E;
        s.krow.fill(0.0);
        let ktp: &mut [f32] = bytemuck::cast_slice_mut(&mut s.ktp);
        let vtp: &mut [f32] = bytemuck::cast_slice_mut(&mut s.vtp);
        ktp.fill(0.0);
        vtp.fill(0.0);
        for j in 0..kn {
            let (pn, lane) = (j / NR, j % NR);
            let kr = &mut s.krow[j * p.dpad..][..p.d];
            T::widen_slice(k.row(b, g, j0 + j), kr);
            let panel = &mut ktp[pn * p.d * NR..][..p.d * NR];
            for (cc, x) in kr.iter_mut().enumerate() {
                panel[cc * NR + lane] = *x * kscale;
                *x *= scale;
            }
            // (the dO tile buffer, free between pairs, converts the V row)
            let vr = &mut s.dobuf[..p.dv];
            T::widen_slice(v.row(b, g, j0 + j), vr);
            let panel = &mut vtp[pn * p.dv * NR..][..p.dv * NR];
            for (cc, x) in vr.iter().enumerate() {
                panel[cc * NR + lane] = *x;
            }
        }
    }

    /// One (query tile, K/V tile) pair of head `h`: `P`, `dS`, then the
    /// three products. `rows` is the flat index of query row `i0` in the
    /// per-row vectors; `target` the dQ writer and its batch index; `stats`
    /// the pair's rows' partials and its keys' `key_grad`, when asked. `M`:
    /// whether a modifier touches scores (bias, ALiBi, softcap).
    #[inline(never)]
    #[allow(clippy::type_complexity)]
    fn pair<const M: bool>(
        &self,
        s: &mut Scratch,
        ((b, h, i0, nqv), (j0, kn), rows, (dq, tb)): (
            (usize, usize, usize, usize),
            (usize, usize),
            usize,
            (RowWriter<'_>, usize),
        ),
        mut stats: Option<(&mut [RowArg], &mut [f32])>,
    ) {
        let p = &self.plan;
        let shape = self.inputs.shape();
        let (nq, nk) = (shape.q_len(), shape.kv_len());
        let mask = self.params.mask;
        let nb = nqv.div_ceil(MR); // query blocks of 8
        for r in 0..nb * MR {
            (s.lo[r], s.hi[r]) = if r < nqv {
                let k = mask.key_range(i0 + r, nq, nk);
                (k.start, k.end)
            } else {
                (0, 0)
            };
        }
        // Borrow the conversion buffers out of the scratch while the rows
        // point into them (moving a Vec is free).
        let (mut qbuf, mut dobuf) = (std::mem::take(&mut s.qbuf), std::mem::take(&mut s.dobuf));
        let qr = rows_of(&self.inputs.fwd.q, (b, h, i0, nqv), p.dpad, &mut qbuf);
        let dor = rows_of(&self.inputs.d_out, (b, h, i0, nqv), p.dvpad, &mut dobuf);
        let lse2 = &self.lse2[rows..rows + nqv];
        let dd = &self.dd[rows..rows + nqv];

        // P and dS, 8 queries × 32 keys at a time.
        let panels = kn.div_ceil(NR);
        let iota = f32x16::new(std::array::from_fn(|l| l as f32));
        // The modifiers of head h (constants of the pair).
        let slope2 = if M { self.mods.slope2.as_ref().map(|s| s[h]) } else { None };
        let cap2 = if M { self.mods.cap2 } else { None };
        let diag0 = (i0 + nk) as i64 - nq as i64; // the diagonal of row i0
        for qb in 0..nb {
            let q0 = qb * MR;
            let last = (nqv - 1).min(q0 + MR - 1);
            let arow = |r: usize| (q0 + r).min(nqv - 1);
            let bias: [Option<&[f32]>; MR] = std::array::from_fn(|r| {
                if M { self.mods.mods.bias_row(b, h, i0 + arow(r)) } else { None }
            });
            // The next 8 rows' bias on these keys (the next block, or the
            // next query tile's first, which the next pair reads), fetched
            // while this block computes: rows are Nk floats apart, a stride
            // the hardware prefetchers do not follow. Measured at N = 4096
            // (causal, one thread, shared machine, noisy): the bias's cost
            // over the plain call went from ~1.21× to ~1.15×.
            let ahead: [Option<&[f32]>; MR] = std::array::from_fn(|r| {
                let i = i0 + q0 + MR + r;
                if M && i < nq { self.mods.mods.bias_row(b, h, i) } else { None }
            });
            for pn in 0..panels {
                let (ka, kz) = (j0 + pn * NR, j0 + (pn * NR + NR).min(kn));
                let seen = (0..MR).any(|r| s.lo[q0 + r] < kz && s.hi[q0 + r] > ka);
                let at = |r: usize| (q0 + r) * SROW + pn * NR;
                if !seen {
                    for r in 0..MR {
                        s.p[at(r)..at(r) + NR].fill(0.0);
                        s.ds[at(r)..at(r) + NR].fill(0.0);
                    }
                    continue;
                }
                let full = kz == ka + NR
                    && last == q0 + MR - 1
                    && (0..MR).all(|r| s.lo[q0 + r] <= ka && s.hi[q0 + r] >= kz);
                for row in ahead.iter().flatten() {
                    attn_simd::Ahead::of(&row[ka..kz]).step(0);
                }
                let sc =
                    qk_micro(std::array::from_fn(|r| qr.at(arow(r))), &s.ktp[pn * p.d..][..p.d]);
                for (r, cr) in sc.iter().enumerate() {
                    let l2 = f32x16::splat(lse2[(q0 + r).min(nqv - 1)]);
                    let (lo, hi) =
                        (s.lo[q0 + r] as f32 - ka as f32, s.hi[q0 + r] as f32 - ka as f32);
                    let u = if M {
                        let diag = diag0 + arow(r) as i64;
                        modify(*cr, bias[r], slope2, cap2, diag, ka, nk)
                    } else {
                        *cr
                    };
                    for (t, x) in u.iter().enumerate() {
                        let z = *x - l2;
                        let mut e = exp2(z);
                        if M {
                            // a NaN or +inf bias (check_finite off)
                            // propagates, as IEEE exp would: exp2 clamps
                            let fin = z.simd_lt(f32x16::splat(f32::INFINITY));
                            e = fin.select(e, z);
                        }
                        let vis = if full {
                            None
                        } else {
                            let kk = iota + f32x16::splat((t * LANES) as f32);
                            Some(kk.simd_ge(f32x16::splat(lo)) & kk.simd_lt(f32x16::splat(hi)))
                        };
                        if let Some(vis) = vis {
                            e = vis.select(e, f32x16::ZERO);
                        }
                        let o = at(r) + t * LANES;
                        s.p[o..o + LANES].copy_from_slice(e.as_array());
                        if let Some(c2) = cap2 {
                            // the cap's slope, for dS below: 0 at a −inf
                            // score (|tanh| = 1) and where masked
                            let mut sl = cap_slope(x.max(f32x16::splat(-c2)), c2);
                            if let Some(vis) = vis {
                                sl = vis.select(sl, f32x16::ZERO);
                            }
                            s.ds[o..o + LANES].copy_from_slice(sl.as_array());
                        }
                    }
                }
                let dpc =
                    qk_micro(std::array::from_fn(|r| dor.at(arow(r))), &s.vtp[pn * p.dv..][..p.dv]);
                for (r, cr) in dpc.iter().enumerate() {
                    let d = f32x16::splat(dd[(q0 + r).min(nqv - 1)]);
                    for (t, x) in cr.iter().enumerate() {
                        let o = at(r) + t * LANES;
                        let pv = attn_simd::load(&s.p[o..]);
                        let mut v = pv * (*x - d);
                        if cap2.is_some() {
                            v *= attn_simd::load(&s.ds[o..]);
                        }
                        s.ds[o..o + LANES].copy_from_slice(v.as_array());
                    }
                }
            }
            // the block's 8 rows of P and dS are complete, and in L1 (read
            // after the whole tile, they came from L2: 3× the cost)
            if let Some((rows, kg)) = stats.as_mut() {
                let (o, nr) = (q0 * SROW, MR.min(nqv - q0));
                add_rows_stats(&s.p[o..], &s.ds[o..], panels * NR, &mut rows[q0..q0 + nr], kg);
            }
        }

        // dV += Pᵀ·dO and dK += dSᵀ·Q: 8 keys × 32 columns, over the
        // queries that see some of the 8 keys.
        for kb in 0..kn.div_ceil(MR) {
            let (ka, kz) = (j0 + kb * MR, j0 + (kb * MR + MR).min(kn));
            let qa = (0..nqv).find(|&r| s.hi[r] > ka).unwrap_or(nqv);
            let qz = (qa..nqv).rev().find(|&r| s.lo[r] < kz && s.hi[r] > ka).map_or(qa, |r| r + 1);
            if qa >= qz {
                continue;
            }
            let pt = &s.p[qa * SROW + kb * MR..];
            let dst = &s.ds[qa * SROW + kb * MR..];
            acc_cols(&mut s.dv[kb * MR * p.dvpad..], p.dvpad, pt, dor, qa, qz - qa);
            acc_cols(&mut s.dk[kb * MR * p.dpad..], p.dpad, dst, qr, qa, qz - qa);
        }

        // dQ += dS·(K·scale): 8 queries × 32 columns, over the keys those
        // rows see.
        for qb in 0..nb {
            let q0 = qb * MR;
            let nr = MR.min(nqv - q0);
            let lo = (0..nr).map(|r| s.lo[q0 + r]).min().unwrap_or(0).max(j0);
            let hi = (0..nr).map(|r| s.hi[q0 + r]).max().unwrap_or(0).min(j0 + kn);
            if lo >= hi {
                continue;
            }
            let (ka, kz) = (lo - j0, hi - j0);
            let a: [&[f32]; MR] = std::array::from_fn(|r| &s.ds[(q0 + r) * SROW + ka..][..kz - ka]);
            let mut cv = 0;
            while cv < p.dpad {
                let kr = &s.krow[ka * p.dpad + cv..];
                if cv + NR <= p.dpad {
                    let c = rows_micro::<NV>(a, kr, p.dpad, [[f32x16::ZERO; NV]; MR]);
                    add_rows(&c, dq, (tb, h, i0 + q0), nr, cv, p.d);
                    cv += NR;
                } else {
                    let c = rows_micro::<1>(a, kr, p.dpad, [[f32x16::ZERO; 1]; MR]);
                    add_rows(&c, dq, (tb, h, i0 + q0), nr, cv, p.d);
                    cv += LANES;
                }
            }
        }
        (s.qbuf, s.dobuf) = (qbuf, dobuf);
    }
}

/// The modified scores of one query row on 32 keys `ka..ka + 32` (log2
/// units): `u += bias·log2 e`, `u −= slope₂·|diag − j|`, `u = cap(u)`, each
/// when given. Bias entries past `nk` read as 0 (those lanes are masked).
#[inline(always)]
fn modify(
    mut u: [f32x16; NV],
    bias: Option<&[f32]>,
    slope2: Option<f32>,
    cap2: Option<f32>,
    diag: i64,
    ka: usize,
    nk: usize,
) -> [f32x16; NV] {
    for (t, x) in u.iter_mut().enumerate() {
        let k0 = ka + t * LANES;
        if let Some(row) = bias {
            let bv = if k0 + LANES <= nk {
                attn_simd::load(&row[k0..])
            } else {
                let mut a = [0f32; LANES];
                if k0 < nk {
                    a[..nk - k0].copy_from_slice(&row[k0..nk]);
                }
                f32x16::new(a)
            };
            *x = bv.mul_add(f32x16::splat(attn_simd::LOG2_E), *x);
        }
        if let Some(s2) = slope2 {
            *x = distances(diag - k0 as i64, -1.0).mul_add(f32x16::splat(-s2), *x);
        }
        if let Some(c2) = cap2 {
            *x = cap(*x, c2);
        }
    }
    u
}

/// `acc[k][..] += Σ_q pt[q·SROW + k] · x[qa + q][..]` for the 8 keys of a
/// block and every column of the padded width `w` (32 at a time, then 16),
/// over `n` queries.
fn acc_cols(acc: &mut [f32], w: usize, pt: &[f32], x: Rows<'_>, qa: usize, n: usize) {
    let mut cv = 0;
    while cv < w {
        let xs = &x.data[x.base + qa * x.stride + cv..];
        if cv + NR <= w {
            acc_block::<NV>(acc, w, cv, pt, xs, x.stride, n);
            cv += NR;
        } else {
            acc_block::<1>(acc, w, cv, pt, xs, x.stride, n);
            cv += LANES;
        }
    }
}

/// One `8 × 16W` block of [`acc_cols`]: load, `pv_micro`, store.
#[inline(always)]
fn acc_block<const W: usize>(
    acc: &mut [f32],
    w: usize,
    cv: usize,
    pt: &[f32],
    xs: &[f32],
    xstride: usize,
    n: usize,
) {
    let mut c: [[f32x16; W]; MR] = std::array::from_fn(|r| {
        std::array::from_fn(|t| attn_simd::load(&acc[r * w + cv + t * LANES..]))
    });
    pv_micro::<W>(pt, SROW, xs, xstride, n, &mut c);
    for (r, cr) in c.iter().enumerate() {
        for (t, x) in cr.iter().enumerate() {
            acc[r * w + cv + t * LANES..][..LANES].copy_from_slice(x.as_array());
        }
    }
}

/// Adds the first `nr` rows of a `8 × 16W` block to rows `(b, h, i..)` of
/// `dq`, columns `cv..` (those below `d`).
fn add_rows<const W: usize>(
    c: &[[f32x16; W]; MR],
    dq: RowWriter<'_>,
    (b, h, i): (usize, usize, usize),
    nr: usize,
    cv: usize,
    d: usize,
) {
    let n = (W * LANES).min(d - cv);
    for (r, cr) in c.iter().enumerate().take(nr) {
        // SAFETY: row (b, h, i + r) of this item's dQ target is written by
        // this item alone (see the module docs), one row at a time.
        let row = unsafe { dq.row_mut(b, h, i + r) };
        let vals: &[f32] = bytemuck::cast_slice(&cr[..]);
        for (o, x) in row[cv..cv + n].iter_mut().zip(&vals[..n]) {
            *o += x;
        }
    }
}
