//! Property tests: every kernel agrees with the f64 oracle on random
//! problems. Sizes are bounded (cost grows as Nq·Nk·d); the number of cases
//! follows PROPTEST_CASES (default 256).

use crate::common::*;
use attnlab::flash::TileConfig;
use attnlab::naive::reference;
use attnlab::{AttnInputs, AttnParams, Layout, Mask, Par};
use proptest::prelude::*;

fn mask_strategy() -> impl Strategy<Value = Mask> {
    let side = prop_oneof![Just(None), (0usize..40).prop_map(Some)];
    prop_oneof![
        Just(Mask::None),
        Just(Mask::Causal),
        (side.clone(), side).prop_map(|(left, right)| Mask::Window { left, right }),
    ]
}

#[derive(Debug, Clone)]
struct Problem {
    dims: [usize; 7],
    mask: Mask,
    layout: Layout,
    amp: f32,
    seed: u64,
    tiles: TileConfig,
}

fn problem() -> impl Strategy<Value = Problem> {
    (
        (1usize..=2, 1usize..=3, 1usize..=3, 0usize..=90, 0usize..=90),
        (prop::sample::select(vec![1usize, 3, 8, 16, 24, 32, 64, 80, 128]), 1usize..=70),
        mask_strategy(),
        prop_oneof![Just(Layout::Bhnd), Just(Layout::Bnhd)],
        prop_oneof![Just(1.0f32), Just(4.0f32), Just(0.05f32)],
        any::<u64>(),
        (1usize..=4, 1usize..=6),
    )
        .prop_map(|((b, hkv, grp, nq, nk), (d, dv), mask, layout, amp, seed, (br, bc))| {
            Problem {
                dims: [b, hkv * grp, hkv, nq, nk, d, dv],
                mask,
                layout,
                amp,
                seed,
                tiles: TileConfig { br: 32 * br, bc: 8 * bc },
            }
        })
}

proptest! {
    #[test]
    fn kernels_match_oracle(p in problem()) {
        let [b, hq, hkv, nq, nk, d, dv] = p.dims;
        let shape = shape_of([b, hq, hkv, nq, nk, d, dv]);
        let (q, k, v) = make_inputs(&shape, p.amp, p.seed);
        let inputs = AttnInputs::from_slices(shape, p.layout, &q, &k, &v).unwrap();
        let params = AttnParams::with_mask(p.mask);
        let r = reference(&inputs, &params);
        let tol = tolerance(&inputs, &params);
        for k in [Under::Kernel(attnlab::Kernel::Naive), Under::Kernel(attnlab::Kernel::Flash), Under::FlashTiles(p.tiles)] {
            let got = k.run(&inputs, p.layout, &params, Par::Seq);
            assert_matches(&format!("{p:?} {k:?}"), &shape, p.layout, (&got.0, &got.1), &r, &tol);
        }
    }
}
