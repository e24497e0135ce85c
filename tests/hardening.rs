//! Every finite input gives the right answer, every non-finite input that
//! reaches a result is an error naming it, and nothing panics: the row
//! checks of `attn_core::faults` and the exact recomputation of
//! `attn_naive::exact`, on every kernel and path.

use crate::common::*;
use attnlab::flash::{KvCache, KvElement, Q8_0, decode};
use attnlab::{AttnError, AttnInputs, AttnParams, AttnShape, Kernel, Layout, Mask, Par, f16};
use proptest::prelude::*;
use rand::RngExt;

/// Every kernel and flash path: naive, oracle, flash tiled (default and
/// small tiles), flash split-KV (chosen by the shape: `Nq <= 16`).
fn kernels() -> Vec<Under> {
    let mut v = Under::all();
    v.push(Under::Kernel(Kernel::Oracle));
    v
}

fn shape(hq: usize, hkv: usize, nq: usize, nk: usize, d: usize) -> AttnShape {
    AttnShape::builder().q_heads(hq).kv_heads(hkv).q_len(nq).kv_len(nk).head_dim(d).build().unwrap()
}

fn try_run(
    under: &Under,
    inputs: &AttnInputs<'_, f32>,
    params: &AttnParams,
    lse: bool,
) -> Result<(Vec<f32>, Vec<f32>), AttnError> {
    let s = inputs.shape();
    let mut out = vec![f32::NAN; s.out_dims().iter().product()];
    let mut l = vec![f32::NAN; s.lse_len()];
    let mut view =
        attnlab::TensorViewMut::new("out", &mut out, s.out_dims(), Layout::Bhnd).unwrap();
    let lse_arg = if lse { Some(&mut l[..]) } else { None };
    under.try_forward(inputs, &mut view, lse_arg, params, Par::Seq)?;
    Ok((out, l))
}

#[test]
fn a_non_finite_input_a_row_reads_is_named_on_every_path() {
    let mut g = rng(11);
    for (s, mask) in [
        (shape(4, 2, 70, 90, 16), Mask::Causal), // tiled
        (shape(8, 2, 3, 600, 16), Mask::Causal), // split-KV
        (shape(2, 1, 40, 40, 8), Mask::None),    // tiled, MQA
    ] {
        for tensor in ["q", "k", "v"] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let (mut q, mut k, mut v) = make_inputs(&s, 1.0, 5);
                let buf = match tensor {
                    "q" => &mut q,
                    "k" => &mut k,
                    _ => &mut v,
                };
                // Any element is visible to some row: causal bottom-right
                // with Nq <= Nk, or no mask.
                let index = g.random_range(0..buf.len());
                buf[index] = bad;
                let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
                let params = AttnParams::with_mask(mask);
                for under in kernels() {
                    match try_run(&under, &inputs, &params, true) {
                        Err(AttnError::NonFinite { tensor: t, index: i, .. }) => {
                            assert_eq!((t, i), (tensor, index), "{under:?} {s:?} {bad}");
                        }
                        Ok(_) => panic!("{under:?} {s:?}: {tensor}[{index}] = {bad}: no error"),
                        Err(e) => panic!("{under:?} {s:?} {tensor} {bad}: {e}"),
                    }
                }
            }
        }
    }
}

#[test]
fn a_non_finite_key_no_query_sees_changes_nothing() {
    // window (1, 0) with Nq = 4, Nk = 10: row i sees keys 5 + i ..= 6 + i,
    // so keys 0..5 are invisible to every row.
    let s = shape(2, 1, 4, 10, 8);
    let (q, mut k, mut v) = make_inputs(&s, 1.0, 3);
    let params = AttnParams::with_mask(Mask::Window { left: Some(1), right: Some(0) });
    let clean = {
        let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
        try_run(&Under::Kernel(Kernel::Oracle), &inputs, &params, true).unwrap()
    };
    k[3 * 8 + 2] = f32::NAN;
    v[4 * 8] = f32::INFINITY;
    let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
    for under in kernels() {
        let (out, lse) = try_run(&under, &inputs, &params, true).unwrap();
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
        assert!(close(&out, &clean.0) && close(&lse, &clean.1), "{under:?}");
    }
}

#[test]
fn unchecked_calls_propagate_nan_on_every_kernel() {
    let s = shape(2, 2, 20, 20, 8);
    let (mut q, k, v) = make_inputs(&s, 1.0, 4);
    q[5 * 8 + 1] = f32::NAN; // row 5 of head 0
    let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
    let params = AttnParams { check_finite: false, ..AttnParams::default() };
    for under in kernels() {
        let (out, lse) = try_run(&under, &inputs, &params, true).unwrap();
        assert!(lse[5].is_nan() && out[5 * 8..6 * 8].iter().all(|x| x.is_nan()), "{under:?}");
        // the other rows are untouched
        assert!(lse.iter().enumerate().all(|(i, x)| i == 5 || x.is_finite()), "{under:?}");
    }
}

/// Constant Q = K = x and V = 1: every weight is equal, so the output is
/// exactly 1 whatever x is; the LSE is `x²·d·scale + ln Nk`.
#[test]
fn huge_logits_give_the_exact_output() {
    for x in [1e7f32, 1e8, 1e9, 1e20, 1e30, 3e38] {
        for s in [shape(2, 1, 40, 50, 4), shape(2, 1, 3, 700, 4)] {
            let q = vec![x; s.q_dims().iter().product()];
            let k = vec![x; s.k_dims().iter().product()];
            let v = vec![1.0f32; s.v_dims().iter().product()];
            let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
            let params = AttnParams::default();
            let lse_exact = (x as f64).powi(2) * 4.0 * 0.5 + (s.kv_len() as f64).ln();
            for under in kernels() {
                let (out, _) = try_run(&under, &inputs, &params, false)
                    .unwrap_or_else(|e| panic!("{under:?} x {x}: {e}"));
                // f32 kernels normalise rounded weights: 1 within ~80 ulps
                // (naive's P·V sums 700 rounded weights); the oracle's is exact.
                let ok = out.iter().all(|&o| (o - 1.0).abs() <= 1e-5);
                assert!(ok, "{under:?} x {x}: {:?}", &out[..4]);
                match try_run(&under, &inputs, &params, true) {
                    Ok((_, lse)) => {
                        assert!((lse_exact as f32).is_finite(), "{under:?} x {x}");
                        let rel = (lse[0] as f64 - lse_exact).abs() / lse_exact;
                        assert!(rel < 1e-6, "{under:?} x {x}: lse {} vs {lse_exact}", lse[0]);
                    }
                    Err(e @ AttnError::ScoreOverflow { .. }) => {
                        assert!((lse_exact as f32).is_infinite(), "{under:?} x {x}: {e}");
                        assert!(e.to_string().starts_with("scores overflow f32 at batch 0"));
                    }
                    Err(e) => panic!("{under:?} x {x}: {e}"),
                }
            }
        }
    }
}

#[test]
fn huge_scale_and_huge_values_agree_with_the_oracle() {
    let s = shape(2, 2, 30, 30, 8);
    let (q, k, v) = make_inputs(&s, 1.0, 8);
    let big_v: Vec<f32> = v.iter().map(|x| x.signum() * 3e38).collect();
    for (params, v) in [
        (AttnParams { scale: Some(1e38), ..AttnParams::causal() }, &v),
        (AttnParams::causal(), &big_v),
    ] {
        let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, v).unwrap();
        let want = attnlab::naive::reference(&inputs, &params);
        for under in kernels() {
            let (out, _) = try_run(&under, &inputs, &params, false).unwrap();
            // the outputs are averages of V rows: error relative to max|V|
            let vmax = v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
            for (a, b) in out.iter().zip(&want.out) {
                assert!(a.is_finite(), "{under:?}");
                assert!((*a as f64 - b).abs() <= 1e-5 * vmax, "{under:?}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn decode_names_a_non_finite_query_and_survives_huge_logits() {
    let mut cache = KvCache::<f32>::new(1, 2, 800, 8, 8).unwrap();
    cache.append(0, &vec![1e20; 2 * 700 * 8], &vec![1.0; 2 * 700 * 8]).unwrap();
    let qs = cache.query_shape(4, 1).unwrap();
    let mut q = vec![1e20f32; 4 * 8];
    let mut out = vec![0f32; 4 * 8];
    let p = AttnParams::causal();
    decode(&cache, &qs, &q, &mut out, None, &p, Par::Seq).unwrap();
    assert!(out.iter().all(|&o| (o - 1.0).abs() <= 2.0 * f32::EPSILON), "{out:?}");
    q[9] = f32::NAN;
    let e = decode(&cache, &qs, &q, &mut out, None, &p, Par::Seq).unwrap_err();
    assert!(matches!(e, AttnError::NonFinite { tensor: "q", index: 9, .. }), "{e}");
}

/// Huge logits on f16 and q8_0 caches under a window: the overflowing
/// rows are recomputed exactly from the widened cache rows (keys starting
/// past 0), and a NaN query is still named.
#[test]
fn decode_repairs_rows_on_rounded_and_quantised_caches() {
    fn check<T: KvElement>(k: f32) {
        let mut cache = KvCache::<T>::new(1, 2, 800, 40, 40).unwrap();
        cache.append(0, &vec![k; 2 * 700 * 40], &vec![1.0; 2 * 700 * 40]).unwrap();
        let qs = cache.query_shape(4, 2).unwrap();
        let mut q = vec![1e30f32; 4 * 2 * 40];
        let mut out = vec![0f32; 4 * 2 * 40];
        let p = AttnParams::with_mask(Mask::Window { left: Some(100), right: Some(0) });
        decode(&cache, &qs, &q, &mut out, None, &p, Par::Seq).unwrap();
        // every V value is 1 as stored (q8_0: 127 · f16(1/127) = 0.99994)
        let mut one = [0f32; 40];
        T::widen(cache.v_row(0, 1, 0), &mut one);
        let want = one[0];
        let ok = out.iter().all(|&o| (o - want).abs() <= 4.0 * f32::EPSILON);
        assert!(ok, "{}: {out:?} vs {want}", T::NAME);
        q[41] = f32::NAN;
        let e = decode(&cache, &qs, &q, &mut out, None, &p, Par::Seq).unwrap_err();
        assert!(matches!(e, AttnError::NonFinite { tensor: "q", index: 41, .. }), "{e}");
    }
    check::<f16>(6e4);
    check::<Q8_0>(8e6);
}

/// A refused append (a value not finite once stored, in the second K/V
/// head, after the first head's rows were stored) changes nothing
/// visible: the next append and decode give the bits of a cache that
/// never saw it.
#[test]
fn a_refused_append_changes_nothing_visible() {
    let (hkv, d, n) = (2, 40, 5);
    let k: Vec<f32> = (0..hkv * n * d).map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6).collect();
    let v: Vec<f32> = (0..hkv * n * d).map(|i| ((i * 5) % 11) as f32 * 0.2 - 1.0).collect();
    let mut bad = k.clone();
    bad[n * d + 3] = 1e7; // head 1: the q8_0 scale would overflow f16
    let mut cache = KvCache::<Q8_0>::new(1, hkv, 16, d, d).unwrap();
    let mut clean = cache.clone();
    cache.append(0, &k, &v).unwrap();
    clean.append(0, &k, &v).unwrap();
    let e = cache.append(0, &bad, &v).unwrap_err();
    assert!(e.to_string().contains("overflows the cache's q8_0 storage"), "{e}");
    assert!(e.to_string().contains(&format!("flat index {}", n * d + 3)), "{e}");
    assert_eq!(cache.lens(), &[n]);
    let k2: Vec<f32> = k.iter().map(|x| -x).collect();
    cache.append(0, &k2, &v).unwrap();
    clean.append(0, &k2, &v).unwrap();
    let qs = cache.query_shape(4, 3).unwrap();
    let q: Vec<f32> = (0..4 * 3 * d).map(|i| ((i * 3) % 7) as f32 * 0.3 - 1.0).collect();
    let run = |c: &KvCache<Q8_0>| {
        let mut out = vec![0f32; 4 * 3 * d];
        decode(c, &qs, &q, &mut out, None, &AttnParams::causal(), Par::Seq).unwrap();
        out.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(run(&cache), run(&clean));
}

#[test]
fn half_caches_reject_values_that_round_to_infinity() {
    let mut cache = KvCache::<f16>::new(1, 1, 4, 2, 2).unwrap();
    let e = cache.append(0, &[1.0, 1e6], &[0.0, 0.0]).unwrap_err();
    assert!(e.to_string().contains("overflows the cache's f16 storage"), "{e}");
    assert_eq!(cache.lens(), &[0]);
}

/// Sizes that are ordinary, at tile edges, huge, or absurd.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..40,
        1 => Just(1usize << 20),
        1 => Just(1usize << 40),
        1 => Just(usize::MAX / 3),
        1 => Just(usize::MAX),
    ]
}

fn par() -> impl Strategy<Value = Par> {
    prop_oneof![
        Just(Par::Seq),
        Just(Par::Pool),
        (1usize..4).prop_map(|n| Par::rayon(n).unwrap()),
        Just(Par::Rayon(std::num::NonZeroUsize::MAX)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    /// Any shape, tile override and thread count: the public API answers
    /// Ok or an error, never a panic; small valid problems run on every
    /// kernel and agree with the oracle.
    #[test]
    fn any_shape_params_and_tiles_are_ok_or_an_error(
        dims in prop::array::uniform7(size()),
        br in prop_oneof![Just(0usize), Just(32), Just(64), Just(33), Just(1 << 40)],
        bc in prop_oneof![Just(0usize), Just(8), Just(24), Just(12), Just(1 << 40)],
        scale in prop_oneof![Just(None), Just(Some(f32::NAN)), Just(Some(1e-3f32)), Just(Some(1e38f32))],
        par in par(),
        causal in any::<bool>(),
    ) {
        let [b, hq, hkv, nq, nk, d, dv] = dims;
        let shape = AttnShape::builder()
            .batch(b).q_heads(hq).kv_heads(hkv).q_len(nq).kv_len(nk).head_dim(d).v_dim(dv)
            .build();
        let tiles = attnlab::Flash::with_tiles(attnlab::flash::TileConfig { br, bc });
        let params = AttnParams { scale, mask: if causal { Mask::Causal } else { Mask::None }, check_finite: true, ..Default::default() };
        let Ok(s) = shape else { return Ok(()) };
        use attnlab::AttentionKernel;
        let flash = tiles.unwrap_or_default();
        // sizing never panics, whatever the shape
        let _ = (flash.workspace_bytes(&s, &params, par), attnlab::Naive.workspace_bytes(&s, &params, par));
        let _ = attnlab::Oracle.workspace_bytes(&s, &params, par);
        let elems = [s.q_dims(), s.k_dims(), s.v_dims(), s.out_dims()]
            .iter()
            .map(|d| d.iter().product::<usize>())
            .max()
            .unwrap();
        let small = elems <= 20_000 && s.batch() * s.q_heads() * s.q_len() * s.kv_len() <= 50_000;
        if !small || matches!(par, Par::Rayon(n) if n.get() > 8) {
            let mut none: [f32; 0] = [];
            if let Ok(mut out) = attnlab::TensorViewMut::new("out", &mut none, [0, 0, 0, 0], Layout::Bhnd) {
                let q: [f32; 0] = [];
                if let Ok(inp) = AttnInputs::from_slices(s, Layout::Bhnd, &q, &q, &q) {
                    let _ = flash.forward(&inp, &mut out, None, &params, par);
                }
            }
            return Ok(());
        }
        let (q, k, v) = make_inputs(&s, 1.0, 1);
        let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
        let want = params.validate().ok().map(|_| attnlab::naive::reference(&inputs, &params));
        for under in kernels() {
            match try_run(&under, &inputs, &params, true) {
                Ok((out, lse)) => {
                    let want = want.as_ref().expect("an invalid scale was accepted");
                    let tol = tolerance(&inputs, &params);
                    assert_matches(&format!("{under:?}"), &s, Layout::Bhnd, (&out, &lse), want, &tol);
                }
                Err(e) => prop_assert!(want.is_none() || matches!(e, AttnError::ScoreOverflow { .. }), "{under:?}: {e}"),
            }
        }
    }

    /// Finite inputs of any magnitude from 1e-30 to 1e30, both signs: every
    /// kernel gives the oracle's answer (no NaN) or a named overflow.
    #[test]
    fn any_finite_magnitude_is_exact_or_a_named_overflow(
        exp_q in -30i32..=30, exp_v in -30i32..=30,
        nq in 1usize..20, nk in 1usize..40, d in 1usize..12,
        seed in any::<u64>(),
        causal in any::<bool>(),
    ) {
        let s = shape(2, 1, nq, nk, d);
        let (q, k, v) = make_inputs(&s, 1.0, seed);
        let (aq, av) = (10f32.powi(exp_q), 10f32.powi(exp_v));
        let q: Vec<f32> = q.iter().map(|x| x * aq).collect();
        let k: Vec<f32> = k.iter().map(|x| x * aq).collect();
        let v: Vec<f32> = v.iter().map(|x| x * av).collect();
        let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
        let params = if causal { AttnParams::causal() } else { AttnParams::default() };
        let want = attnlab::naive::reference(&inputs, &params);
        let vmax = v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        for under in kernels() {
            // no LSE asked for: the output is always representable
            let (out, _) = try_run(&under, &inputs, &params, false)
                .unwrap_or_else(|e| panic!("{under:?}: {e}"));
            for (a, b) in out.iter().zip(&want.out) {
                prop_assert!(a.is_finite(), "{under:?}: {a}");
                // outputs are averages of V rows: error relative to max|V|,
                // with the score error of f32 (relative to |q·k|) on top
                let tol = (1e-4 + 64.0 * f32::EPSILON as f64 * (aq as f64).powi(2) * d as f64).min(2.0) * vmax;
                prop_assert!((*a as f64 - b).abs() <= tol.max(1e-30), "{under:?}: {a} vs {b} (tol {tol})");
            }
            match try_run(&under, &inputs, &params, true) {
                Ok((_, lse)) => prop_assert!(lse.iter().all(|l| !l.is_nan())),
                Err(e) => prop_assert!(matches!(e, AttnError::ScoreOverflow { .. }), "{under:?}: {e}"),
            }
        }
    }
}
