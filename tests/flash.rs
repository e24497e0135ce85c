//! Guarantees specific to the tiled kernel.

use crate::common::*;
use attnlab::cpu::{Caches, CpuFacts, Datapath, Vendor};
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

/// The CPUs the tile rules distinguish: Zen 4 and Zen 5 (measured), an
/// Intel Xeon with a 2 MiB L2 (reasoned), one reporting no caches, and a
/// small core (16 KiB L1d, 256 KiB L2).
fn cpus() -> Vec<CpuFacts> {
    let cpu = |vendor, family, model, l1d: Option<u64>, l2: Option<u64>, datapath| CpuFacts {
        vendor,
        family,
        model,
        brand: String::new(),
        caches: Caches { l1d, l2, l3: None, l3_shared_by: None },
        cache_source: "test",
        datapath,
        features: vec![],
    };
    let k = |n: u64| Some(n << 10);
    vec![
        cpu(Vendor::Amd, 25, 0x11, k(32), k(1024), Datapath::Avx512Halves),
        cpu(Vendor::Amd, 26, 2, k(48), k(1024), Datapath::Avx512TwoPorts),
        cpu(Vendor::Intel, 6, 207, k(48), k(2048), Datapath::Avx512TwoPorts),
        cpu(Vendor::Other, 0, 0, None, None, Datapath::Narrow),
        cpu(Vendor::Other, 0, 0, k(16), k(256), Datapath::Narrow),
    ]
}

#[test]
fn every_tile_choice_the_cpu_detection_can_make_matches_the_oracle() {
    let choices = TileConfig::cpu_choices();
    // What the rules pick stays inside `cpu_choices`, for every CPU above
    // and the shapes the harness runs (and some it does not).
    let mut picked = std::collections::BTreeSet::new();
    for cpu in cpus() {
        for nq in [1, 17, 32, 100, 128, 256, 481, 512, 4096, 1 << 17] {
            for (d, dv) in [(8, 8), (64, 64), (128, 128), (256, 256), (512, 512), (96, 40)] {
                let shape = shape_of([1, 8, 2, nq, nq, d, dv]);
                let t = TileConfig::for_cpu(&shape, &cpu);
                assert!(choices.contains(&t), "{t:?} for {cpu:?} {nq} {d}");
                t.validate().unwrap();
                picked.insert((t.br, t.bc));
            }
        }
        // Long sequences at d = 64 and 128: the measured best (Zen 4, Zen
        // 5), and what the rules give the Xeon and an unknown CPU.
        if cpu.caches.l1d.is_none_or(|l| l >= 32 << 10) {
            for d in [64, 128] {
                let t = TileConfig::for_cpu(&shape_of([1, 8, 8, 4096, 4096, d, d]), &cpu);
                assert_eq!((t.br, t.bc), (256, 64), "{cpu:?}");
            }
        }
    }
    // Any reported cache sizes, 4 KiB .. 64 MiB: still inside the list.
    let mut any = cpus().remove(0);
    for l1d in (2..=16).map(|p| 1u64 << p) {
        for l2 in (12..=26).map(|p| Some(1u64 << p)).chain([None]) {
            any.caches = Caches { l1d: Some(l1d << 10), l2, ..any.caches };
            for (nq, d) in [(1, 1), (300, 40), (4096, 128), (4096, 1000)] {
                let t = TileConfig::for_cpu(&shape_of([1, 4, 4, nq, nq, d, d]), &any);
                assert!(choices.contains(&t), "{t:?} for {:?}", any.caches);
            }
        }
    }
    // The small core's tiles and a large head dim's shorter query tile.
    assert!(picked.contains(&(256, 32)) && picked.contains(&(128, 64)), "{picked:?}");
    // Every choice, forced, against the oracle: partial query and key
    // tiles, GQA, causal and not.
    for (dims, mask) in
        [([1, 4, 2, 300, 200, 40, 24], Mask::Causal), ([1, 2, 1, 70, 150, 64, 64], Mask::None)]
    {
        let shape = shape_of(dims);
        let (q, k, v) = make_inputs(&shape, 1.0, 5);
        let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
        let params = AttnParams::with_mask(mask);
        let r = attnlab::naive::reference(&inputs, &params);
        let tol = tolerance(&inputs, &params);
        for &t in &choices {
            let got = Under::FlashTiles(t).run(&inputs, Layout::Bhnd, &params, Par::Seq);
            let what = format!("{dims:?} {mask:?} {t:?}");
            assert_matches(&what, &shape, Layout::Bhnd, (&got.0, &got.1), &r, &tol);
        }
    }
}
