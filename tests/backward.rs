//! Gradients: naive and flash backward against the f64 oracle backward
//! (named cases and random problems), GQA against MHA with repeated K/V,
//! fully masked rows, identical bits for any thread count, workspace size.

use crate::common::*;
use attnlab::naive::{ReferenceGrads, reference_backward};
use attnlab::{
    AttnInputs, AttnParams, AttnShape, BackwardInputs, BackwardKernel, Element, Flash, GradsMut,
    Kernel, Layout, Mask, Par, bf16, f16,
};
use proptest::prelude::*;

/// One problem's inputs in one layout: Q, K, V (any storage type), the
/// flash forward's O and LSE, and a seeded dO.
pub struct Problem<T> {
    pub shape: AttnShape,
    pub layout: Layout,
    pub q: Vec<T>,
    pub k: Vec<T>,
    pub v: Vec<T>,
    pub out: Vec<f32>,
    pub lse: Vec<f32>,
    pub d_out: Vec<f32>,
}

impl<T: Element> Problem<T> {
    pub fn new(shape: AttnShape, layout: Layout, amp: f32, seed: u64, params: &AttnParams) -> Self {
        let (q, k, v) = make_inputs(&shape, amp, seed);
        let round = |x: &[f32]| x.iter().map(|&a| T::from_f32(a)).collect::<Vec<T>>();
        let (q, k, v) = (round(&q), round(&k), round(&v));
        let d_out = random(shape.out_dims().iter().product(), 1.0, &mut rng(seed ^ 0xd0));
        let inputs = AttnInputs::from_slices(shape, layout, &q, &k, &v).unwrap();
        let (out, lse) = Under::Kernel(Kernel::Flash).run(&inputs, layout, params, Par::Seq);
        Problem { shape, layout, q, k, v, out, lse, d_out }
    }

    pub fn inputs(&self) -> BackwardInputs<'_, T> {
        let (s, l) = (self.shape, self.layout);
        BackwardInputs::from_slices(
            s,
            l,
            &self.q,
            &self.k,
            &self.v,
            &self.out,
            &self.lse,
            &self.d_out,
        )
        .unwrap()
    }

    /// dQ, dK, dV of `kernel` (in the problem's layout).
    pub fn grads(&self, kernel: Kernel, params: &AttnParams, par: Par) -> [Vec<f32>; 3] {
        let n = |d: [usize; 4]| d.iter().product::<usize>();
        let s = &self.shape;
        let mut g = [
            vec![f32::NAN; n(s.q_dims())],
            vec![f32::NAN; n(s.k_dims())],
            vec![f32::NAN; n(s.v_dims())],
        ];
        let [dq, dk, dv] = &mut g;
        let mut views = GradsMut::from_slices(s, self.layout, dq, dk, dv).unwrap();
        kernel
            .backward(&self.inputs(), &mut views, params, par)
            .unwrap_or_else(|e| panic!("{kernel}: {e}"));
        g
    }
}

/// Tolerances of dQ, dK, dV against the oracle, from the f32 error model:
///
/// - `P = 2^(S − LSE)` is off by a relative `δ = 16·eps·L + 2·eps·(1 +
///   max|LSE|) + 1e-6`: `L` bounds the score magnitude (see
///   [`tolerance`]); the score's f32 error enters once in the backward and
///   once through the forward's LSE (each ~`sqrt(d)·eps·L`, bounded by
///   `8·eps·L` up to d = 64 and in practice beyond); the LSE's own rounding
///   is `eps·|LSE|`; the fast exp2 is ~3e-7 relative.
/// - `dS = P∘(dP − D)` is then off by `P·(δ·A + E)`, where `A = max(|dP| +
///   |D|)` (an f64 pass over the problem) and `E = dv·eps·A + dv·max|dO|·
///   tol_out` covers the f32 sums of `dP` and the forward output's error in
///   `D`.
/// - `dQ_i = scale·Σ_j dS_ij·K_j` sums rows of `P` (which sum to 1), so
///   `tol_dq = scale·max|K|·(δ·A + E)`; `dK_j` and `dV_j` sum columns of
///   `P` over every query of the group (at most `C` = the largest column
///   sum): `tol_dk = scale·max|Q|·(δ·A + E)·C`, `tol_dv = δ·max|dO|·C`.
/// - Each gets `1e-6·(1 + max|grad|)` more (8 ulps of the largest
///   gradient) for the f32 accumulations.
///
/// Measured over ~1000 random problems (`PROPTEST_CASES=1000`): the worst
/// error was 0.06 of the tolerance for dV, 0.003 for dQ and 0.001 for dK
/// (the bounds on dQ and dK are worst-case sums); a 0.1% error in `D`
/// fails the named cases and the property test.
pub fn grad_tolerance<T: Element>(
    p: &BackwardInputs<'_, T>,
    params: &AttnParams,
    r: &ReferenceGrads,
) -> [f64; 3] {
    let s = *p.shape();
    let fwd_tol = tolerance(&p.fwd, params);
    let scale = params.scale_for(s.head_dim()) as f64;
    let amax = |x: &[f64]| x.iter().fold(0f64, |a, v| a.max(v.abs()));
    let emax = |x: &[T]| x.iter().fold(0f64, |a, v| a.max(v.to_f32().abs() as f64));
    let (qm, km) = (emax(p.fwd.q.data()), emax(p.fwd.k.data()));
    let gm = p.d_out.data().iter().fold(0f64, |a, v| a.max(v.abs() as f64));
    let lm = p.lse.iter().filter(|x| x.is_finite()).fold(0f64, |a, v| a.max(v.abs() as f64));
    let eps = f32::EPSILON as f64;
    let l = fwd_tol.lse_abs / (32.0 * eps);
    let delta = 16.0 * eps * l + 2.0 * eps * (1.0 + lm) + 1e-6;
    // A = max(|dP| + |D|) and the largest column sum of P, in f64.
    let (nq, nk, dv) = (s.q_len(), s.kv_len(), s.v_dim());
    let x = |e: &T| e.to_f32() as f64;
    let (mut a_max, mut colsum) = (0f64, vec![0f64; s.batch() * s.kv_heads() * nk]);
    for b in 0..s.batch() {
        for h in 0..s.q_heads() {
            let g = s.kv_head_of(h);
            for i in 0..nq {
                let keys = params.mask.key_range(i, nq, nk);
                if keys.is_empty() {
                    continue;
                }
                let qi = p.fwd.q.row(b, h, i);
                let sc: Vec<f64> = keys
                    .clone()
                    .map(|j| {
                        scale
                            * qi.iter()
                                .zip(p.fwd.k.row(b, g, j))
                                .map(|(a, c)| x(a) * x(c))
                                .sum::<f64>()
                    })
                    .collect();
                let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = sc.iter().map(|v| (v - m).exp()).sum();
                let doi = p.d_out.row(b, h, i);
                let mut o = vec![0f64; dv];
                let mut dps = Vec::new();
                for (j, sj) in keys.clone().zip(&sc) {
                    let pj = (sj - m).exp() / sum;
                    colsum[(b * s.kv_heads() + g) * nk + j] += pj;
                    let vj = p.fwd.v.row(b, g, j);
                    vj.iter().zip(&mut o).for_each(|(vc, oc)| *oc += pj * x(vc));
                    dps.push(doi.iter().zip(vj).map(|(a, c)| *a as f64 * x(c)).sum::<f64>());
                }
                let dd: f64 = doi.iter().zip(&o).map(|(a, c)| *a as f64 * c).sum();
                let dpm = dps.iter().fold(0f64, |a, v| a.max(v.abs()));
                a_max = a_max.max(dpm + dd.abs());
            }
        }
    }
    let cmax = colsum.iter().fold(0f64, |a, v| a.max(*v));
    let e = dv as f64 * eps * a_max + dv as f64 * gm * fwd_tol.out;
    let base = |g: &[f64]| 1e-6 * (1.0 + amax(g));
    [
        scale * km * (delta * a_max + e) + base(&r.dq),
        scale * qm * (delta * a_max + e) * cmax + base(&r.dk),
        delta * gm * cmax + base(&r.dv),
    ]
}

/// Asserts each gradient matches the oracle's within its tolerance,
/// reporting the worst element when it does not.
pub fn assert_grads(
    what: &str,
    shape: &AttnShape,
    layout: Layout,
    got: &[Vec<f32>; 3],
    r: &ReferenceGrads,
    tol: [f64; 3],
) {
    let dims = [shape.q_dims(), shape.k_dims(), shape.v_dims()];
    let want = [&r.dq, &r.dk, &r.dv];
    for (t, name) in ["dq", "dk", "dv"].iter().enumerate() {
        let [nb, nh, n, d] = dims[t];
        let st = layout.strides(dims[t]);
        let mut worst = (0f64, [0usize; 4], 0f32, 0f64);
        for b in 0..nb {
            for h in 0..nh {
                for i in 0..n {
                    for c in 0..d {
                        let g = got[t][b * st[0] + h * st[1] + i * st[2] + c];
                        let w = want[t][((b * nh + h) * n + i) * d + c];
                        let err = (g as f64 - w).abs();
                        if err.is_nan() || err > worst.0 {
                            worst = (
                                if err.is_nan() { f64::INFINITY } else { err },
                                [b, h, i, c],
                                g,
                                w,
                            );
                        }
                    }
                }
            }
        }
        assert!(
            worst.0 <= tol[t],
            "{what}: {name}{:?} = {} but oracle {} (|err| {:.3e} > tol {:.3e})",
            worst.1,
            worst.2,
            worst.3,
            worst.0,
            tol[t]
        );
    }
}

/// Naive and flash against the oracle on one problem.
fn check<T: Element>(
    what: &str,
    dims: [usize; 7],
    mask: Mask,
    layout: Layout,
    amp: f32,
    seed: u64,
) {
    let params = AttnParams::with_mask(mask);
    let p = Problem::<T>::new(shape_of(dims), layout, amp, seed, &params);
    let inputs = p.inputs();
    let r = reference_backward(&inputs, &params);
    let tol = grad_tolerance(&inputs, &params, &r);
    for kernel in [Kernel::Naive, Kernel::Flash] {
        let g = p.grads(kernel, &params, Par::Seq);
        let what = format!("{what} {} {dims:?} {mask:?} {layout:?} amp {amp} / {kernel}", T::NAME);
        assert_grads(&what, &p.shape, layout, &g, &r, tol);
    }
}

#[test]
fn named_cases_match_the_oracle() {
    let w = |l, r| Mask::Window { left: l, right: r };
    let cases: [([usize; 7], Mask); 12] = [
        ([1, 1, 1, 1, 1, 1, 1], Mask::None),
        ([1, 2, 2, 64, 64, 64, 64], Mask::None),
        ([1, 2, 2, 65, 63, 32, 32], Mask::Causal),
        ([2, 4, 1, 130, 130, 16, 16], Mask::Causal), // MQA, 3 tiles
        ([1, 6, 2, 100, 200, 24, 40], Mask::None),   // GQA, dv != d, Nq < Nk
        ([1, 3, 3, 200, 70, 8, 8], Mask::Causal),    // Nq > Nk: masked rows
        ([1, 2, 1, 150, 150, 48, 8], w(Some(20), Some(5))),
        ([1, 2, 2, 97, 129, 3, 5], w(None, Some(0))),
        ([1, 1, 1, 70, 70, 256, 256], Mask::Causal),
        ([1, 2, 1, 40, 300, 128, 96], w(Some(0), None)),
        ([1, 1, 1, 33, 33, 80, 80], w(Some(0), Some(0))), // diagonal only
        ([1, 4, 2, 10, 1000, 64, 64], Mask::Causal),      // many K/V tiles, few queries
    ];
    for (i, (dims, mask)) in cases.into_iter().enumerate() {
        for layout in [Layout::Bhnd, Layout::Bnhd] {
            check::<f32>("named", dims, mask, layout, 1.0, i as u64);
        }
    }
}

#[test]
fn extreme_logits_and_half_inputs() {
    for (dims, mask) in
        [([1, 2, 1, 70, 90, 64, 64], Mask::Causal), ([1, 2, 2, 50, 50, 32, 16], Mask::None)]
    {
        for amp in [100.0, 0.05] {
            check::<f32>("amp", dims, mask, Layout::Bhnd, amp, 5);
        }
        check::<f16>("half", dims, mask, Layout::Bnhd, 1.0, 6);
        check::<bf16>("half", dims, mask, Layout::Bhnd, 4.0, 7);
    }
}

fn mask_strategy() -> impl Strategy<Value = Mask> {
    let side = prop_oneof![Just(None), (0usize..50).prop_map(Some)];
    prop_oneof![
        Just(Mask::None),
        Just(Mask::Causal),
        (side.clone(), side).prop_map(|(left, right)| Mask::Window { left, right }),
    ]
}

#[derive(Debug, Clone)]
struct Random {
    dims: [usize; 7],
    mask: Mask,
    layout: Layout,
    amp: f32,
    dtype: usize,
    seed: u64,
}

fn random_problem() -> impl Strategy<Value = Random> {
    (
        (1usize..=2, 1usize..=2, 1usize..=3, 0usize..=140, 0usize..=140),
        (prop::sample::select(vec![1usize, 3, 8, 16, 24, 32, 64, 80, 128, 256]), 1usize..=70),
        mask_strategy(),
        prop_oneof![Just(Layout::Bhnd), Just(Layout::Bnhd)],
        prop_oneof![Just(1.0f32), Just(4.0f32), Just(0.05f32), Just(100.0f32)],
        0usize..3,
        any::<u64>(),
    )
        .prop_map(|((b, hkv, grp, nq, nk), (d, dv), mask, layout, amp, dtype, seed)| Random {
            dims: [b, hkv * grp, hkv, nq, nk, d, dv],
            mask,
            layout,
            amp,
            dtype,
            seed,
        })
}

proptest! {
    #[test]
    fn kernels_match_oracle_backward(p in random_problem()) {
        match p.dtype {
            0 => check::<f32>("prop", p.dims, p.mask, p.layout, p.amp, p.seed),
            1 => check::<f16>("prop", p.dims, p.mask, p.layout, p.amp.min(4.0), p.seed),
            _ => check::<bf16>("prop", p.dims, p.mask, p.layout, p.amp, p.seed),
        }
    }
}

#[test]
fn gqa_group_sums_equal_mha_with_repeated_kv() {
    // Hq = 6 over Hkv = 2 (and MQA, Hkv = 1): repeat each K/V head for its
    // group, run MHA, sum dK/dV over the group's copies.
    for (hkv, mask) in [(2, Mask::Causal), (1, Mask::Window { left: Some(30), right: Some(3) })] {
        let (hq, nq, nk, d, dv) = (6, 150, 140, 32, 24);
        let params = AttnParams::with_mask(mask);
        let gqa = Problem::<f32>::new(
            shape_of([1, hq, hkv, nq, nk, d, dv]),
            Layout::Bhnd,
            1.0,
            3,
            &params,
        );
        let grp = hq / hkv;
        let rep = |x: &[f32], w: usize| -> Vec<f32> {
            (0..hq).flat_map(|h| x[(h / grp) * nk * w..][..nk * w].to_vec()).collect()
        };
        let mha = Problem::<f32> {
            shape: shape_of([1, hq, hq, nq, nk, d, dv]),
            k: rep(&gqa.k, d),
            v: rep(&gqa.v, dv),
            q: gqa.q.clone(),
            out: gqa.out.clone(),
            lse: gqa.lse.clone(),
            d_out: gqa.d_out.clone(),
            layout: Layout::Bhnd,
        };
        for kernel in [Kernel::Oracle, Kernel::Naive, Kernel::Flash] {
            let [gq, gk, gv] = gqa.grads(kernel, &params, Par::Seq);
            let [mq, mk, mv] = mha.grads(kernel, &params, Par::Seq);
            // dQ: the same sums (flash may cut the keys into other chunks)
            for (e, (a, b)) in gq.iter().zip(&mq).enumerate() {
                let ok = (a - b).abs() <= 1e-5 * (1.0 + b.abs());
                assert!(ok, "{kernel} {mask:?}: dq[{e}] {a} vs {b}");
            }
            for (g_, m_, w) in [(&gk, &mk, d), (&gv, &mv, dv)] {
                for g in 0..hkv {
                    for e in 0..nk * w {
                        let sum: f32 = (0..grp).map(|i| m_[(g * grp + i) * nk * w + e]).sum();
                        let got = g_[g * nk * w + e];
                        let tol = 1e-5 * (1.0 + sum.abs());
                        assert!(
                            (got - sum).abs() <= tol,
                            "{kernel} {mask:?}: kv head {g} [{e}] {got} vs {sum}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn fully_masked_rows_give_zero_gradients_and_no_nan() {
    // Nq > Nk with causal: the first Nq - Nk rows see nothing (LSE -inf);
    // a zero-width window masks every row.
    let cases = [
        ([1, 2, 1, 100, 40, 16, 16], Mask::Causal, 60),
        ([1, 2, 2, 30, 30, 8, 8], Mask::Window { left: Some(0), right: Some(0) }, 0),
    ];
    for (dims, mask, masked) in cases {
        let params = AttnParams::with_mask(mask);
        let p = Problem::<f32>::new(shape_of(dims), Layout::Bhnd, 1.0, 11, &params);
        let [_, hq, _, nq, _, d, _] = dims;
        for kernel in [Kernel::Oracle, Kernel::Naive, Kernel::Flash] {
            let g = p.grads(kernel, &params, Par::Seq);
            assert!(
                g.iter().flatten().all(|x| x.is_finite()),
                "{kernel} {mask:?}: non-finite gradient"
            );
            for h in 0..hq {
                for i in 0..masked {
                    let row = &g[0][(h * nq + i) * d..][..d];
                    assert!(row.iter().all(|x| *x == 0.0), "{kernel}: dq row {h},{i} = {row:?}");
                }
            }
        }
    }
}

#[test]
fn identical_bits_for_1_2_and_3_threads() {
    let cases = [
        ([1, 8, 8, 200, 200, 64, 64], Mask::Causal), // MHA: one chunk per head
        ([1, 8, 2, 300, 300, 32, 48], Mask::None),   // GQA: 4 chunks, dQ partials
        ([2, 4, 1, 130, 257, 16, 16], Mask::Window { left: Some(40), right: Some(2) }),
    ];
    for (dims, mask) in cases {
        let params = AttnParams::with_mask(mask);
        let p = Problem::<f32>::new(shape_of(dims), Layout::Bnhd, 1.0, 21, &params);
        let seq = p.grads(Kernel::Flash, &params, Par::Seq);
        for t in [1, 2, 3] {
            let par = Par::rayon(t).unwrap();
            let got = p.grads(Kernel::Flash, &params, par);
            for (a, b) in seq.iter().zip(&got) {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{dims:?} {mask:?}: {t} threads differ from sequential");
            }
            assert_eq!(attnlab::par::last_install_threads(), Some(t));
        }
        // naive too (parallel over K/V heads)
        let seq = p.grads(Kernel::Naive, &params, Par::Seq);
        assert_eq!(seq, p.grads(Kernel::Naive, &params, Par::rayon(3).unwrap()));
    }
}

#[test]
fn workspace_is_linear_in_n_never_quadratic() {
    let flash = Flash::default();
    for (hkv, mask) in [(8, Mask::Causal), (8, Mask::None), (2, Mask::Causal), (1, Mask::None)] {
        let s = |n: usize| {
            AttnShape::builder().q_heads(8).kv_heads(hkv).seq_len(n).head_dim(64).build().unwrap()
        };
        let p = AttnParams::with_mask(mask);
        let par = Par::rayon(2).unwrap();
        // Per query row: D and LSE·log2e (2 floats) and at most
        // MAX_CHUNKS − 1 = 7 dQ partial rows of d floats; plus the
        // per-worker tiles, whatever N (under 1 MiB for two workers).
        let bound = |n: usize| n * 8 * (2 + 7 * 64) * 4 + (1 << 20);
        for n in [256, 16384] {
            let bytes = flash.backward_workspace_bytes(&s(n), &p, par);
            assert!(bytes <= bound(n), "Hkv {hkv} {mask:?} N {n}: {bytes} bytes > {}", bound(n));
        }
        let (small, big) = (
            flash.backward_workspace_bytes(&s(256), &p, par),
            flash.backward_workspace_bytes(&s(16384), &p, par),
        );
        // one score matrix alone would be N²·Hq·4 = 8 GiB
        assert!(big < (8usize << 30) / 32, "Hkv {hkv} {mask:?}: {big}");
        if hkv == 8 {
            // MHA: no partials, so 64x the length is at most 64x the bytes
            // (quadratic would be 4096x), and under the 16 MiB.
            assert!(big <= 64 * small, "{mask:?}: {small} -> {big} bytes");
            assert!(big < 16 << 20, "{mask:?}: {big} bytes");
        }
        // the O(N²) baseline, for contrast: 3 score-sized tensors
        let naive = Kernel::Naive.backward_workspace_bytes(&s(16384), &p, par);
        assert!(naive > 3 * 8 * 16384 * 16384 * 4 - 1);
    }
}
