//! Decode against a KV cache, and merge_partials.

use crate::common::*;
use attnlab::flash::{KvCache, KvElement, Partial, Q8_0, decode, merge_partials};
use attnlab::naive::reference;
use attnlab::{AttnInputs, AttnParams, Layout, Mask, Par, bf16, f16};
use proptest::prelude::*;

/// K and V of one batch entry as stored, widened to f32: `[Hkv, len, d]`.
pub(crate) type Stored = (Vec<f32>, Vec<f32>);

/// Fills a cache for `lens` (ragged), returns it with the stored values
/// read back as f32 per batch entry: `[Hkv, len, d]` K and V (rounded to
/// f16/bf16, or the q8_0 blocks dequantised: what the oracle must see).
pub(crate) fn filled<T: KvElement>(
    lens: &[usize],
    hkv: usize,
    d: usize,
    dv: usize,
    seed: u64,
) -> (KvCache<T>, Vec<Stored>) {
    let cap = lens.iter().copied().max().unwrap_or(0) + 3;
    let mut cache = KvCache::<T>::new(lens.len(), hkv, cap, d, dv).unwrap();
    let mut g = rng(seed);
    let mut stored = vec![];
    for (b, &len) in lens.iter().enumerate() {
        // append in two pieces to exercise appends at an offset
        let first = len / 3;
        let k = random(hkv * len * d, 1.0, &mut g);
        let v = random(hkv * len * dv, 1.0, &mut g);
        for (a, n) in [(0, first), (first, len - first)] {
            let pick = |x: &[f32], w: usize| -> Vec<f32> {
                (0..hkv)
                    .flat_map(|h| x[(h * len + a) * w..(h * len + a + n) * w].to_vec())
                    .collect()
            };
            cache.append(b, &pick(&k, d), &pick(&v, dv)).unwrap();
        }
        let read = |dim: usize, row: &dyn Fn(usize, usize) -> Vec<f32>| -> Vec<f32> {
            (0..hkv)
                .flat_map(|h| (0..len).flat_map(move |j| row(h, j)))
                .take(hkv * len * dim)
                .collect()
        };
        let widen = |r: &[T], dim: usize| {
            let mut x = vec![0f32; dim];
            T::widen(r, &mut x);
            x
        };
        let ks = read(d, &|h, j| widen(cache.k_row(b, h, j), d));
        let vs = read(dv, &|h, j| widen(cache.v_row(b, h, j), dv));
        stored.push((ks, vs));
    }
    (cache, stored)
}

#[allow(clippy::too_many_arguments)]
fn check_decode<T: KvElement>(
    lens: &[usize],
    hq: usize,
    hkv: usize,
    nq: usize,
    d: usize,
    dv: usize,
    mask: Mask,
    seed: u64,
) {
    let (cache, stored) = filled::<T>(lens, hkv, d, dv, seed);
    let bsz = lens.len();
    let q = random(bsz * hq * nq * d, 1.0, &mut rng(seed + 1));
    let params = AttnParams::with_mask(mask);
    let mut out = vec![f32::NAN; bsz * hq * nq * dv];
    let mut lse = vec![f32::NAN; bsz * hq * nq];
    let qs = cache.query_shape(hq, nq).unwrap();
    decode(&cache, &qs, &q, &mut out, Some(&mut lse), &params, Par::Seq).unwrap();
    // identical bits on 2 and 3 threads
    for t in [2, 3] {
        let mut out2 = vec![0f32; out.len()];
        let mut lse2 = vec![0f32; lse.len()];
        let par = Par::rayon(t).unwrap();
        decode(&cache, &qs, &q, &mut out2, Some(&mut lse2), &params, par).unwrap();
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same(&out, &out2) && same(&lse, &lse2), "{t} threads differ");
    }
    for (b, &len) in lens.iter().enumerate() {
        let shape = shape_of([1, hq, hkv, nq, len, d, dv]);
        let qb = &q[b * hq * nq * d..(b + 1) * hq * nq * d];
        let inputs =
            AttnInputs::from_slices(shape, Layout::Bhnd, qb, &stored[b].0, &stored[b].1).unwrap();
        let r = reference(&inputs, &params);
        let tol = tolerance(&inputs, &params);
        let ob = &out[b * hq * nq * dv..(b + 1) * hq * nq * dv];
        let lb = &lse[b * hq * nq..(b + 1) * hq * nq];
        let what = format!(
            "decode {} lens {lens:?} b {b} hq {hq} hkv {hkv} nq {nq} d {d} dv {dv} {mask:?}",
            T::NAME
        );
        assert_matches(&what, &shape, Layout::Bhnd, (ob, lb), &r, &tol);
    }
}

#[test]
fn decode_matches_oracle_every_grouping_and_dtype() {
    let masks = [Mask::Causal, Mask::None, Mask::Window { left: Some(100), right: Some(0) }];
    for (i, (hq, hkv)) in [(4, 4), (8, 2), (6, 1)].into_iter().enumerate() {
        for (m, mask) in masks.into_iter().enumerate() {
            let seed = (i * 10 + m) as u64;
            check_decode::<f32>(&[1100], hq, hkv, 1, 64, 64, mask, seed);
            check_decode::<f16>(&[700], hq, hkv, 3, 32, 48, mask, seed);
            check_decode::<bf16>(&[530], hq, hkv, 2, 128, 128, mask, seed);
            check_decode::<Q8_0>(&[610], hq, hkv, 2, 128, 128, mask, seed);
            // head dims off the 32-value block: the last block zero-padded
            check_decode::<Q8_0>(&[77], hq, hkv, 1, 20, 40, mask, seed + 1);
        }
    }
}

#[test]
fn decode_nq_1_to_16_ragged_and_edge_lengths() {
    for nq in [1, 2, 5, 16] {
        check_decode::<f32>(&[0, 1, 17, 513, 1030], 4, 2, nq, 16, 24, Mask::Causal, nq as u64);
    }
    check_decode::<Q8_0>(&[0, 5, 530, 64], 8, 2, 3, 64, 33, Mask::Causal, 9);
    // more new queries than cached positions: the first rows see nothing
    check_decode::<f32>(&[3], 2, 1, 8, 8, 8, Mask::Causal, 3);
    check_decode::<f16>(
        &[600, 40],
        2,
        2,
        4,
        8,
        17,
        Mask::Window { left: Some(5), right: Some(1) },
        4,
    );
}

#[test]
fn decode_errors() {
    let mut cache = KvCache::<f32>::new(1, 2, 8, 4, 4).unwrap();
    let p = AttnParams::default();
    let e = cache.query_shape(3, 1).unwrap_err();
    assert!(e.to_string().contains("multiple of kv heads (2)"), "{e}");
    let qs = cache.query_shape(4, 1).unwrap();
    let mut out = vec![0.0; 4 * 4];
    let e = decode(&cache, &qs, &[0.0; 15], &mut out, None, &p, Par::Seq).unwrap_err();
    assert!(e.to_string().starts_with("q: buffer has 15"), "{e}");
    let mut q = vec![0.0; 16];
    q[5] = f32::NAN;
    // an empty cache: the NaN query reads nothing, so nothing to report
    decode(&cache, &qs, &q, &mut out, None, &p, Par::Seq).unwrap();
    assert!(out.iter().all(|&x| x == 0.0));
    cache.append(0, &[0.5; 2 * 2 * 4], &[1.0; 2 * 2 * 4]).unwrap();
    let qs = cache.query_shape(4, 1).unwrap();
    let e = decode(&cache, &qs, &q, &mut out, None, &p, Par::Seq).unwrap_err();
    assert!(e.to_string().starts_with("q: non-finite"), "{e}");
    // a shape made for another cache (or before an append) is named
    let other = KvCache::<f32>::new(1, 2, 8, 8, 4).unwrap().query_shape(4, 1).unwrap();
    let e = decode(&cache, &other, &q, &mut out, None, &p, Par::Seq).unwrap_err();
    assert!(e.to_string().starts_with("shape: "), "{e}");
}

proptest! {
    /// Splitting the keys anywhere, into any number of shards, and merging
    /// gives the unsplit result.
    #[test]
    fn merge_of_any_split_is_the_unsplit_result(
        nk in 1usize..120,
        cuts in prop::collection::vec(0usize..120, 0..6),
        nq in 1usize..20,
        d in 1usize..40,
        dv in 1usize..40,
        seed in any::<u64>(),
    ) {
        let shape = shape_of([1, 1, 1, nq, nk, d, dv]);
        let (q, k, v) = make_inputs(&shape, 1.0, seed);
        let params = AttnParams::default();
        let whole = reference(&AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap(), &params);
        let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c % (nk + 1)).collect();
        bounds.extend([0, nk]);
        bounds.sort();
        let mut shards = vec![];
        for w in bounds.windows(2) {
            let (a, b) = (w[0], w[1]);
            let s = shape_of([1, 1, 1, nq, b - a, d, dv]);
            let inp = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k[a * d..b * d], &v[a * dv..b * dv]).unwrap();
            let opts = attnlab::Options { par: Par::Seq, ..Default::default() };
            let r = attnlab::attention_with(&s, inp.q.data(), inp.k.data(), inp.v.data(), &params, &opts).unwrap();
            shards.push(r);
        }
        let parts: Vec<Partial<'_>> = shards.iter().map(|r| Partial { out: &r.out, lse: &r.lse }).collect();
        let mut out = vec![0f32; nq * dv];
        let mut lse = vec![0f32; nq];
        merge_partials(&parts, dv, &mut out, &mut lse).unwrap();
        for (i, (a, b)) in out.iter().zip(&whole.out).enumerate() {
            prop_assert!((*a as f64 - b).abs() < 2e-5, "out[{}] {} vs {}", i, a, b);
        }
        for (a, b) in lse.iter().zip(&whole.lse) {
            prop_assert!((*a as f64 - b).abs() < 2e-5 * (1.0 + b.abs()), "lse {} vs {}", a, b);
        }
    }
}
