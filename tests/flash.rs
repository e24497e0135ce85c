//! Guarantees specific to the tiled kernel.

use crate::common::*;
use attnlab::flash::{TileConfig, Workspace};
use attnlab::naive::reference;
use attnlab::{
    AttentionKernel, AttnInputs, AttnParams, AttnShape, Element, Flash, Layout, Mask, Par,
    TensorViewMut, bf16, f16,
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
        let shape = AttnShape::new(b, hq, hkv, nq, nk, d, dv).unwrap();
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
                let par =
                    pool(t).install(|| under.run(&inputs, Layout::Bhnd, &params, Par::Rayon(t)));
                let same = seq.0.iter().zip(&par.0).all(|(a, b)| a.to_bits() == b.to_bits())
                    && seq.1.iter().zip(&par.1).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{dims:?} {mask:?} {tiles:?}: {t} threads differ from sequential");
            }
        }
    }
}

fn check_half<T: Element>(dims: [usize; 7], mask: Mask, seed: u64) {
    let [b, hq, hkv, nq, nk, d, dv] = dims;
    let shape = AttnShape::new(b, hq, hkv, nq, nk, d, dv).unwrap();
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
    let shape = AttnShape::new(1, 2, 1, 100, 30, 16, 16).unwrap();
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
        let s = AttnShape::new(1, 8, hkv, n, n, 64, 64).unwrap();
        flash.workspace_bytes(&s, &p, Par::Rayon(2))
    };
    for hkv in [8, 2, 1] {
        assert_eq!(ws(1024, hkv), ws(131072, hkv), "hkv {hkv}");
        assert!(ws(131072, hkv) < 8 << 20, "hkv {hkv}: {} bytes", ws(131072, hkv));
    }
    // and the naive kernel's grows as B·Hq·Nq·Nk·4
    let s = AttnShape::new(1, 8, 8, 4096, 4096, 64, 64).unwrap();
    let naive = attnlab::Naive.workspace_bytes(&s, &p, Par::Seq);
    let scores = 8 * 4096 * 4096 * 4;
    assert!((scores..scores + (8 << 20)).contains(&naive), "naive workspace {naive}");
}

/// Counts this thread's allocations: the test runs the kernel sequentially
/// on a caller-provided workspace and asserts it allocates nothing at all,
/// whatever N.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;
    thread_local! {
        pub static BYTES: Cell<usize> = const { Cell::new(0) };
    }
    // SAFETY: forwards to the system allocator; the counter is a plain
    // thread-local cell that never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let _ = BYTES.try_with(|b| b.set(b.get() + l.size()));
            // SAFETY: same contract as ours.
            unsafe { System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            // SAFETY: same contract as ours.
            unsafe { System.dealloc(p, l) }
        }
    }
    pub fn bytes() -> usize {
        BYTES.with(|b| b.get())
    }
}

#[global_allocator]
static ALLOC: counting::Counting = counting::Counting;

#[test]
fn no_allocation_on_a_caller_workspace() {
    let flash = Flash::default();
    for n in [256, 2048] {
        let shape = AttnShape::new(1, 4, 2, n, n, 64, 64).unwrap();
        let (q, k, v) = make_inputs(&shape, 1.0, 9);
        let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
        let mut out = vec![0f32; shape.out_dims().iter().product()];
        let mut lse = vec![0f32; shape.lse_len()];
        let mut ws: Workspace = flash.workspace(&shape, Par::Seq);
        let mut view = TensorViewMut::new("out", &mut out, shape.out_dims(), Layout::Bhnd).unwrap();
        let params = AttnParams::causal();
        let before = counting::bytes();
        flash.forward_in(&inputs, &mut view, Some(&mut lse), &params, Par::Seq, &mut ws).unwrap();
        let allocated = counting::bytes() - before;
        assert_eq!(allocated, 0, "N = {n}: the kernel allocated {allocated} bytes");
        // and the result is right (spot check against the oracle)
        let r = reference(&inputs, &params);
        let tol = tolerance(&inputs, &params);
        assert_matches("caller workspace", &shape, Layout::Bhnd, (&out, &lse), &r, &tol);
    }
}
