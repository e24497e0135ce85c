//! Guarantees specific to the tiled kernel.

use crate::common::*;
use attnlab::flash::TileConfig;
use attnlab::{
    AttentionKernel, AttnInputs, AttnParams, Element, Flash, Layout, Mask, Par, bf16, f16,
};

fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap()
}

#[test]
fn identical_bits_for_any_thread_count() {
    let shapes = [
        ([1, 8, 2, 300, 300, 64, 64], Mask::Causal),
        ([2, 4, 4, 130, 257, 32, 48], Mask::None),
        ([1, 6, 1, 200, 150, 16, 16], Mask::Window { left: Some(30), right: Some(2) }),
    ];
    for (dims, mask) in shapes {
        let [b, hq, hkv, nq, nk, d, dv] = dims;
        let shape = shape_of([b, hq, hkv, nq, nk, d, dv]);
        let (q, k, v) = make_inputs(&shape, 1.0, 42);
        let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
        let params = AttnParams::with_mask(mask);
        for tiles in [None, Some(TileConfig { br: 32, bc: 16 })] {
            let under = match tiles {
                None => Under::Kernel(attnlab::Kernel::Flash),
                Some(t) => Under::FlashTiles(t),
            };
            let seq = under.run(&inputs, Layout::Bhnd, &params, Par::Seq);
            for t in [1, 2, 3] {
                // from inside a pool of another size, and from the global pool
                let pt = Par::rayon(t).unwrap();
                let par = pool(t + 1).install(|| under.run(&inputs, Layout::Bhnd, &params, pt));
                assert_eq!(par, under.run(&inputs, Layout::Bhnd, &params, pt));
                let same = seq.0.iter().zip(&par.0).all(|(a, b)| a.to_bits() == b.to_bits())
                    && seq.1.iter().zip(&par.1).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{dims:?} {mask:?} {tiles:?}: {t} threads differ from sequential");
            }
        }
    }
}

fn check_half<T: Element>(dims: [usize; 7], mask: Mask, seed: u64) {
    let [b, hq, hkv, nq, nk, d, dv] = dims;
    let shape = shape_of([b, hq, hkv, nq, nk, d, dv]);
    let (q, k, v) = make_inputs(&shape, 1.0, seed);
    let round = |x: &[f32]| x.iter().map(|&v| T::from_f32(v)).collect::<Vec<T>>();
    let (q, k, v) = (round(&q), round(&k), round(&v));
    // The oracle runs on the same rounded values, so the tolerance is the
    // f32 one: the kernels widen exactly and accumulate in f32.
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        let inputs = AttnInputs::from_slices(shape, layout, &q, &k, &v).unwrap();
        let params = AttnParams::with_mask(mask);
        check_all(&format!("{} {dims:?} {mask:?} {layout:?}", T::NAME), &inputs, layout, &params);
    }
}

#[test]
fn f16_and_bf16_inputs_match_oracle_on_rounded_values() {
    for (i, (dims, mask)) in [
        ([1, 4, 2, 100, 140, 64, 64], Mask::Causal),
        ([1, 3, 3, 37, 70, 24, 40], Mask::None),
        ([2, 2, 1, 60, 60, 128, 128], Mask::Window { left: Some(9), right: Some(0) }),
    ]
    .into_iter()
    .enumerate()
    {
        check_half::<f16>(dims, mask, 7 + i as u64);
        check_half::<bf16>(dims, mask, 17 + i as u64);
    }
}

#[test]
fn fully_masked_rows_give_zero_and_neg_inf_never_nan() {
    // Nq > Nk causal: the first Nq - Nk rows see nothing.
    let shape = shape_of([1, 2, 1, 100, 30, 16, 16]);
    let (q, k, v) = make_inputs(&shape, 1.0, 3);
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    for under in Under::all() {
        let (out, lse) = under.run(&inputs, Layout::Bhnd, &AttnParams::causal(), Par::Seq);
        for h in 0..2 {
            for i in 0..100 {
                let row = &out[(h * 100 + i) * 16..][..16];
                assert!(row.iter().all(|x| !x.is_nan()), "{under:?} NaN in row {i}");
                if i < 70 {
                    assert!(row.iter().all(|&x| x == 0.0), "{under:?} row {i} not zero");
                    assert_eq!(lse[h * 100 + i], f32::NEG_INFINITY, "{under:?} lse row {i}");
                } else {
                    assert!(lse[h * 100 + i].is_finite());
                }
            }
        }
    }
}

#[test]
fn workspace_is_independent_of_sequence_length() {
    let flash = Flash::default();
    let p = AttnParams::causal();
    let ws = |n: usize, hkv: usize| {
        let s = shape_of([1, 8, hkv, n, n, 64, 64]);
        flash.workspace_bytes(&s, &p, Par::rayon(2).unwrap())
    };
    for hkv in [8, 2, 1] {
        assert_eq!(ws(1024, hkv), ws(131072, hkv), "hkv {hkv}");
        assert!(ws(131072, hkv) < 8 << 20, "hkv {hkv}: {} bytes", ws(131072, hkv));
    }
    // and the naive kernel's grows as B·Hq·Nq·Nk·4
    let s = shape_of([1, 8, 8, 4096, 4096, 64, 64]);
    let naive = attnlab::Naive.workspace_bytes(&s, &p, Par::Seq);
    let scores = 8 * 4096 * 4096 * 4;
    assert!((scores..scores + (8 << 20)).contains(&naive), "naive workspace {naive}");
}
