//! Chunks at global positions (`AttnParams::positions`) and ring attention
//! (`attn-ring`) over the in-process transport.
//!
//! Tolerances. A flash call at positions is checked against the oracle at
//! the same positions with the model of `common::tolerance` (`T`). A ring
//! result merges `m` partials per row (`m` = the number of K/V chunks),
//! each within `T` of its own oracle: the merge is a weighted average of
//! the partial outputs (error ≤ `T.out`), with weights `e^(lse_s − lse)`
//! whose exponents carry each partial's LSE error `δ` twice (≤ `2δ·max|V|`
//! on the output, `δ = 1e-5·(1 + |lse|) + T.lse_abs`), plus the merge's own
//! f32 rounding, a few ulps of `1 + |lse|` per merge (`4·m·ε·(1 + |lse|)`,
//! times `max|V|` on the output). So the ring is held to
//! `T.out + (2δ + 4mε(1 + |lse|))·max|V|` and `T.lse_abs + 4mε(1 + |lse|)`
//! against the oracle, and the flash kernel to `T`: ring and flash are then
//! within the sum of both of each other. All are ~1e-5 where the actual
//! errors are ~1e-7; a wrong mask or position is an O(1) error.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;
use attnlab::flash::TileConfig;
use attnlab::naive::{Reference, reference};
use attnlab::ring::{
    InProcess, Relation, RingError, RingLayout, RingSpec, ShiftTiming, Transport, TransportError,
    cut, place, rank_plan, ring_in_process, run_rank,
};
use attnlab::{
    Alibi, AttentionKernel, AttnError, AttnInputs, AttnParams, AttnShape, ChunkPositions, Flash,
    Kernel, Layout, Mask, Par, TensorView, TensorViewMut,
};
use proptest::prelude::*;

const DEADLINE: Duration = Duration::from_secs(60);

/// The tolerance of a ring result against the oracle (module docs).
fn ring_tolerance(
    inputs: &AttnInputs<'_, f32>,
    params: &AttnParams,
    r: &Reference,
    parts: usize,
) -> Tolerance {
    let t = tolerance(inputs, params);
    let eps = f32::EPSILON as f64;
    let lse_max = r.lse.iter().filter(|x| x.is_finite()).fold(0f64, |a, x| a.max(x.abs()));
    let vmax = inputs.v.data().iter().fold(0f64, |a, x| a.max(x.abs() as f64)).max(1e-30);
    let merge = 4.0 * parts as f64 * eps * (1.0 + lse_max);
    let delta = 1e-5 * (1.0 + lse_max) + t.lse_abs;
    Tolerance { out: t.out + (2.0 * delta + merge) * vmax, lse_abs: t.lse_abs + merge }
}

fn flash_run(
    inputs: &AttnInputs<'_, f32>,
    layout: Layout,
    params: &AttnParams,
) -> (Vec<f32>, Vec<f32>) {
    Under::Kernel(Kernel::Flash).run(inputs, layout, params, Par::Seq)
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

// ---------------------------------------------------------------------------
// The kernels at global positions.

/// A chunk call and the whole problem it is part of.
#[derive(Debug, Clone)]
struct Chunk {
    dims: [usize; 7],
    pos: ChunkPositions,
    mask: Mask,
    alibi: bool,
    softcap: bool,
    sinks: bool,
    /// A bias over the call's own block (`[B, 1, Nq, Nk]`, local indices).
    bias: bool,
    tiles: Option<TileConfig>,
    layout: Layout,
    seed: u64,
}

fn mask_strategy() -> impl Strategy<Value = Mask> {
    let side = prop_oneof![Just(None), (0usize..30).prop_map(Some)];
    prop_oneof![
        Just(Mask::None),
        Just(Mask::Causal),
        (side.clone(), side).prop_map(|(left, right)| Mask::Window { left, right }),
    ]
}

fn chunk_problem() -> impl Strategy<Value = Chunk> {
    (
        (1usize..=2, 1usize..=2, 1usize..=3, 1usize..=150, 1usize..=150),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
        (prop::sample::select(vec![8usize, 16, 24, 64]), 1usize..=40),
        mask_strategy(),
        (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        prop_oneof![
            Just(None),
            (1usize..=2, 1usize..=4).prop_map(|(r, c)| Some(TileConfig { br: 32 * r, bc: 8 * c }))
        ],
        prop_oneof![Just(Layout::Bhnd), Just(Layout::Bnhd)],
        any::<u64>(),
    )
        .prop_map(
            |(
                (b, hkv, grp, q_total, kv_total),
                (a, c, e, f),
                (d, dv),
                mask,
                (alibi, softcap, sinks, bias),
                tiles,
                layout,
                seed,
            )| {
                let q_start = a as usize % (q_total + 1);
                let nq = c as usize % (q_total - q_start + 1);
                let kv_start = e as usize % (kv_total + 1);
                let nk = f as usize % (kv_total - kv_start + 1);
                Chunk {
                    dims: [b, hkv * grp, hkv, nq, nk, d, dv],
                    pos: ChunkPositions { q_start, kv_start, q_total, kv_total },
                    mask,
                    alibi,
                    softcap,
                    sinks,
                    bias,
                    tiles,
                    layout,
                    seed,
                }
            },
        )
}

fn check_chunk(c: &Chunk) {
    let shape = shape_of(c.dims);
    let (q, k, v) = make_inputs(&shape, 1.0, c.seed);
    let inputs = AttnInputs::from_slices(shape, c.layout, &q, &k, &v).unwrap();
    let sinks: Vec<f32> = (0..shape.q_heads()).map(|h| 0.5 - h as f32 * 0.3).collect();
    let bias_dims = [shape.batch(), 1, shape.q_len(), shape.kv_len()];
    let bias = random(bias_dims.iter().product(), 1.0, &mut rng(c.seed ^ 1));
    let bias = TensorView::new("bias", &bias, bias_dims, Layout::Bhnd).unwrap();
    let params = AttnParams {
        positions: Some(c.pos),
        bias: c.bias.then_some(bias),
        alibi: c.alibi.then_some(Alibi::Default),
        softcap: c.softcap.then_some(3.0),
        sinks: c.sinks.then_some(&sinks[..]),
        ..AttnParams::with_mask(c.mask)
    };
    let r = reference(&inputs, &params);
    let under = match c.tiles {
        None => Under::Kernel(Kernel::Flash),
        Some(t) => Under::FlashTiles(t),
    };
    let got = under.run(&inputs, c.layout, &params, Par::Seq);
    let tol = tolerance(&inputs, &params);
    assert_matches(&format!("{c:?}"), &shape, c.layout, (&got.0, &got.1), &r, &tol);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Flash on any chunk pair of any problem (GQA, every mask, ALiBi,
    /// softcap, sinks, a bias over the block, forced tiles) agrees with the
    /// oracle at the same positions.
    #[test]
    fn flash_at_positions_matches_the_oracle(c in chunk_problem()) {
        check_chunk(&c);
    }
}

#[test]
fn flash_at_positions_named_cases() {
    let base = Chunk {
        dims: [1, 4, 2, 40, 50, 16, 16],
        pos: ChunkPositions { q_start: 0, kv_start: 0, q_total: 40, kv_total: 50 },
        mask: Mask::Causal,
        alibi: false,
        softcap: false,
        sinks: false,
        bias: false,
        tiles: None,
        layout: Layout::Bhnd,
        seed: 1,
    };
    let pos = |q_start, kv_start, q_total, kv_total| ChunkPositions {
        q_start,
        kv_start,
        q_total,
        kv_total,
    };
    for c in [
        // the diagonal crosses the block; the block right of it; left of it
        Chunk { pos: pos(100, 80, 300, 300), ..base.clone() },
        Chunk { pos: pos(100, 200, 300, 300), ..base.clone() },
        Chunk { pos: pos(200, 10, 300, 300), alibi: true, ..base.clone() },
        // few queries (flash's split-KV sizes take the tiled path)
        Chunk { dims: [1, 4, 2, 3, 50, 16, 16], pos: pos(97, 60, 300, 300), ..base.clone() },
        Chunk { dims: [2, 2, 1, 1, 9, 8, 8], pos: pos(5, 0, 9, 9), sinks: true, ..base.clone() },
        // windows whose band misses the block, or crosses it
        Chunk {
            pos: pos(100, 20, 300, 300),
            mask: Mask::Window { left: Some(8), right: Some(3) },
            ..base.clone()
        },
        Chunk {
            pos: pos(100, 90, 300, 300),
            mask: Mask::Window { left: Some(8), right: Some(3) },
            softcap: true,
            alibi: true,
            ..base.clone()
        },
        Chunk { pos: pos(100, 80, 300, 300), alibi: true, bias: true, ..base.clone() },
        // Nq ≠ Nk overall (bottom-right on the globals)
        Chunk { pos: pos(10, 150, 60, 250), tiles: Some(TileConfig { br: 32, bc: 8 }), ..base },
    ] {
        check_chunk(&c);
    }
}

#[test]
fn oracle_rows_at_positions_are_the_whole_problems_rows() {
    // A query chunk against all the keys is exactly those rows of the
    // whole problem, in f64, every modifier included.
    let whole = shape_of([1, 4, 2, 70, 90, 16, 12]);
    let (q, k, v) = make_inputs(&whole, 1.0, 9);
    let sinks = [0.3f32, -1.0, 2.0, 0.0];
    for mask in [Mask::Causal, Mask::None, Mask::Window { left: Some(5), right: Some(2) }] {
        let params = AttnParams {
            alibi: Some(Alibi::Default),
            softcap: Some(4.0),
            sinks: Some(&sinks),
            ..AttnParams::with_mask(mask)
        };
        let all = AttnInputs::from_slices(whole, Layout::Bhnd, &q, &k, &v).unwrap();
        let r = reference(&all, &params);
        let (i0, n) = (23, 31);
        let chunk = shape_of([1, 4, 2, n, 90, 16, 12]);
        let mut qc = Vec::new();
        for h in 0..4 {
            qc.extend_from_slice(&q[(h * 70 + i0) * 16..(h * 70 + i0 + n) * 16]);
        }
        let part = AttnInputs::from_slices(chunk, Layout::Bhnd, &qc, &k, &v).unwrap();
        let pos = ChunkPositions { q_start: i0, kv_start: 0, q_total: 70, kv_total: 90 };
        let rc = reference(&part, &AttnParams { positions: Some(pos), ..params });
        for h in 0..4 {
            for i in 0..n {
                let (a, b) = ((h * 70 + i0 + i), (h * n + i));
                assert_eq!(r.lse[a], rc.lse[b], "{mask:?} h {h} i {i}");
                assert_eq!(r.out[a * 12..(a + 1) * 12], rc.out[b * 12..(b + 1) * 12]);
            }
        }
    }
}

#[test]
fn kernels_without_positions_refuse_them() {
    let shape = shape_of([1, 2, 1, 20, 20, 8, 8]);
    let (q, k, v) = make_inputs(&shape, 1.0, 2);
    let pos = ChunkPositions { q_start: 10, kv_start: 0, q_total: 40, kv_total: 40 };
    let params = AttnParams { positions: Some(pos), ..AttnParams::causal() };
    let unsupported = |e: AttnError, who: &str| {
        assert!(matches!(e, AttnError::Unsupported { .. }), "{e}");
        assert!(e.to_string().contains("chunk positions") && e.to_string().contains(who), "{e}");
    };
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    let mut o = vec![0f32; 20 * 2 * 8];
    let mut ov = TensorViewMut::new("out", &mut o, shape.out_dims(), Layout::Bhnd).unwrap();
    let e = Kernel::Naive.forward(&inputs, &mut ov, None, &params, Par::Seq).unwrap_err();
    unsupported(e, "naive");
    let r = attnlab::attention(&shape, &q, &k, &v, &AttnParams::causal()).unwrap();
    let e = attnlab::attention_backward(&shape, &q, &k, &v, &r.out, &r.lse, &r.out, &params)
        .unwrap_err();
    unsupported(e, "backward");
    let mut cache = attnlab::flash::KvCache::<f32>::new(1, 1, 32, 8, 8).unwrap();
    cache.append(0, &k[..20 * 8], &v[..20 * 8]).unwrap();
    let qs = cache.query_shape(2, 1).unwrap();
    let pos1 = ChunkPositions { q_start: 0, kv_start: 0, q_total: 1, kv_total: 20 };
    let p1 = AttnParams { positions: Some(pos1), ..AttnParams::causal() };
    let mut o1 = vec![0f32; 16];
    let e =
        attnlab::flash::decode(&cache, &qs, &q[..16], &mut o1, None, &p1, Par::Seq).unwrap_err();
    unsupported(e, "decode");
    // Positions that do not fit the call are a named parameter error.
    let bad = ChunkPositions { q_start: 30, ..pos };
    let e = Flash::default()
        .forward(&inputs, &mut ov, None, &AttnParams { positions: Some(bad), ..params }, Par::Seq)
        .unwrap_err();
    assert!(e.to_string().starts_with("positions: the 20 query positions from q_start 30"), "{e}");
}

// ---------------------------------------------------------------------------
// The plan.

fn plan_problem() -> impl Strategy<Value = (usize, RingLayout, usize, usize, Mask)> {
    (
        1usize..=9,
        prop_oneof![Just(RingLayout::Contiguous), Just(RingLayout::Zigzag)],
        0usize..=60,
        0usize..=60,
        mask_strategy(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Each rank meets every K/V chunk exactly once, from the rank the
    /// schedule says, and skips exactly the pairs with no visible
    /// (query, key) pair (brute force over the masks' one definition).
    #[test]
    fn the_plan_skips_exactly_the_invisible_blocks(
        (ranks, layout, nq, nk, mask) in plan_problem()
    ) {
        let shape = AttnShape::builder().batch(1).q_heads(1).kv_heads(1).q_len(nq).kv_len(nk)
            .head_dim(4).v_dim(4).build().unwrap();
        let spec = RingSpec::new(shape, layout, ranks, AttnParams::with_mask(mask)).unwrap();
        let (qp, kp) = (spec.q_partition(), spec.kv_partition());
        for rank in 0..ranks {
            let plan = rank_plan(&spec, rank);
            prop_assert_eq!(plan.len(), ranks);
            let mut met = vec![0usize; kp.chunks()];
            for (s, step) in plan.iter().enumerate() {
                prop_assert_eq!(step.step, s);
                prop_assert_eq!(step.source, (rank + ranks - s) % ranks);
                for pair in &step.pairs {
                    prop_assert_eq!(layout.owner(pair.q_chunk, ranks), rank);
                    prop_assert_eq!(layout.owner(pair.kv_chunk, ranks), step.source);
                    prop_assert_eq!(&pair.q, &qp.chunk(pair.q_chunk));
                    prop_assert_eq!(&pair.kv, &kp.chunk(pair.kv_chunk));
                    met[pair.kv_chunk] += 1;
                    let visible: usize = pair.q.clone().map(|i| {
                        let r = mask.key_range(i, nq, nk);
                        (r.start.max(pair.kv.start)..r.end.min(pair.kv.end)).len()
                    }).sum();
                    let want = if visible == 0 {
                        Relation::Invisible
                    } else if visible == pair.q.len() * pair.kv.len() {
                        Relation::Full
                    } else {
                        Relation::Diagonal
                    };
                    prop_assert_eq!(pair.relation, want, "{:?}", pair);
                }
            }
            // every K/V chunk once per local query chunk
            let local = layout.chunks_of(rank, ranks).len();
            prop_assert!(met.iter().all(|&m| m == local), "{:?}", met);
        }
    }
}

// ---------------------------------------------------------------------------
// The ring against the single-process kernel and the oracle.

struct Case {
    name: &'static str,
    dims: [usize; 7],
    mask: Mask,
    mods: bool,
    layout: Layout,
}

fn check_ring(c: &Case, ranks: &[usize]) {
    let shape = shape_of(c.dims);
    let (q, k, v) = make_inputs(&shape, 1.0, 11);
    let inputs = AttnInputs::from_slices(shape, c.layout, &q, &k, &v).unwrap();
    let sinks: Vec<f32> = (0..shape.q_heads()).map(|h| 1.0 - h as f32 * 0.5).collect();
    let params = if c.mods {
        AttnParams {
            alibi: Some(Alibi::Default),
            softcap: Some(5.0),
            sinks: Some(&sinks),
            ..AttnParams::with_mask(c.mask)
        }
    } else {
        AttnParams::with_mask(c.mask)
    };
    let r = reference(&inputs, &params);
    let flash = flash_run(&inputs, c.layout, &params);
    let ftol = tolerance(&inputs, &params);
    assert_matches(c.name, &shape, c.layout, (&flash.0, &flash.1), &r, &ftol);
    for layout in RingLayout::ALL {
        for &p in ranks {
            let spec = RingSpec::new(shape, layout, p, params).unwrap();
            let got = ring_in_process(&spec, c.layout, &q, &k, &v, DEADLINE)
                .unwrap_or_else(|e| panic!("{} {layout} P = {p}: {e}", c.name));
            let what = format!("{} {layout} P = {p}", c.name);
            let parts = layout.chunks(p) + usize::from(c.mods);
            let rtol = ring_tolerance(&inputs, &params, &r, parts);
            assert_matches(&what, &shape, c.layout, (&got.out, &got.lse), &r, &rtol);
            // ... so within the two tolerances of the single-process result
            let both = Tolerance { out: rtol.out + ftol.out, lse_abs: rtol.lse_abs + ftol.lse_abs };
            let worst = got.out.iter().zip(&flash.0).map(|(a, b)| (a - b).abs() as f64);
            let worst = worst.fold(0f64, f64::max);
            assert!(worst <= both.out, "{what}: ring vs flash {worst:e} > {:e}", both.out);
            for (a, b) in got.lse.iter().zip(&flash.1) {
                assert!(
                    a == b
                        || ((a - b).abs() as f64) <= 2e-5 * (1.0 + b.abs() as f64) + both.lse_abs,
                    "{what}: lse {a} vs flash {b}"
                );
            }
            assert_eq!(got.ranks.len(), p);
        }
    }
}

#[test]
fn ring_matches_flash_and_the_oracle() {
    let w = |left, right| Mask::Window { left, right };
    let cases = [
        Case {
            name: "GQA causal N = 61",
            dims: [1, 4, 2, 61, 61, 16, 16],
            mask: Mask::Causal,
            mods: false,
            layout: Layout::Bhnd,
        },
        Case {
            name: "batch 2, full, dv != d, [B, N, H, D]",
            dims: [2, 2, 2, 45, 45, 8, 12],
            mask: Mask::None,
            mods: false,
            layout: Layout::Bnhd,
        },
        Case {
            name: "MQA window (7, 2)",
            dims: [1, 3, 1, 50, 50, 16, 16],
            mask: w(Some(7), Some(2)),
            mods: false,
            layout: Layout::Bhnd,
        },
        Case {
            name: "window (inf, 3)",
            dims: [1, 2, 2, 37, 37, 8, 8],
            mask: w(None, Some(3)),
            mods: false,
            layout: Layout::Bhnd,
        },
        Case {
            name: "causal Nq < Nk",
            dims: [1, 2, 1, 40, 57, 8, 8],
            mask: Mask::Causal,
            mods: false,
            layout: Layout::Bhnd,
        },
        Case {
            name: "causal Nq > Nk (masked rows)",
            dims: [1, 2, 2, 57, 40, 8, 8],
            mask: Mask::Causal,
            mods: false,
            layout: Layout::Bhnd,
        },
        Case {
            name: "N < 2P (empty chunks)",
            dims: [1, 2, 2, 5, 5, 8, 8],
            mask: Mask::Causal,
            mods: false,
            layout: Layout::Bhnd,
        },
        Case {
            name: "ALiBi + softcap + sinks, causal GQA",
            dims: [1, 4, 2, 48, 48, 16, 16],
            mask: Mask::Causal,
            mods: true,
            layout: Layout::Bhnd,
        },
        Case {
            name: "ALiBi + softcap + sinks, window",
            dims: [1, 2, 1, 33, 33, 8, 8],
            mask: w(Some(4), Some(4)),
            mods: true,
            layout: Layout::Bnhd,
        },
    ];
    for c in &cases {
        check_ring(c, &[1, 2, 3, 4, 7]);
    }
}

#[test]
fn one_contiguous_rank_is_the_kernel_bit_for_bit() {
    // One rank, one chunk, one partial: the flash call at whole positions,
    // which is the plain call.
    let shape = shape_of([1, 4, 2, 90, 90, 16, 16]);
    let (q, k, v) = make_inputs(&shape, 1.0, 4);
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    for mask in [Mask::Causal, Mask::None] {
        let params = AttnParams::with_mask(mask);
        let flash = flash_run(&inputs, Layout::Bhnd, &params);
        let spec = RingSpec::new(shape, RingLayout::Contiguous, 1, params).unwrap();
        let got = ring_in_process(&spec, Layout::Bhnd, &q, &k, &v, DEADLINE).unwrap();
        assert_eq!(bits(&got.out), bits(&flash.0));
        assert_eq!(bits(&got.lse), bits(&flash.1));
    }
}

#[test]
fn ring_bits_are_the_same_on_every_run_and_for_any_thread_count() {
    // Big enough for several tiles per block, so threads share real work.
    let shape = shape_of([1, 4, 2, 300, 300, 32, 32]);
    let (q, k, v) = make_inputs(&shape, 1.0, 5);
    for (layout, p, mask) in [
        (RingLayout::Zigzag, 3, Mask::Causal),
        (RingLayout::Contiguous, 2, Mask::None),
        (RingLayout::Zigzag, 4, Mask::Window { left: Some(40), right: Some(5) }),
    ] {
        let spec = RingSpec::new(shape, layout, p, AttnParams::with_mask(mask)).unwrap();
        let first = ring_in_process(&spec, Layout::Bhnd, &q, &k, &v, DEADLINE).unwrap();
        for threads in [1, 2, 3] {
            let spec = spec.with_threads(threads).unwrap();
            let again = ring_in_process(&spec, Layout::Bhnd, &q, &k, &v, DEADLINE).unwrap();
            assert_eq!(bits(&again.out), bits(&first.out), "{layout} P {p} threads {threads}");
            assert_eq!(bits(&again.lse), bits(&first.lse), "{layout} P {p} threads {threads}");
        }
    }
}

#[test]
fn zigzag_gives_every_rank_the_same_causal_work() {
    let shape = shape_of([1, 1, 1, 96, 96, 8, 8]);
    let (q, k, v) = make_inputs(&shape, 1.0, 6);
    let work = |layout| {
        let spec = RingSpec::new(shape, layout, 4, AttnParams::causal()).unwrap();
        let r = ring_in_process(&spec, Layout::Bhnd, &q, &k, &v, DEADLINE).unwrap();
        let pairs: Vec<u64> = r.ranks.iter().map(|t| t.visible_pairs).collect();
        assert_eq!(pairs.iter().sum::<u64>(), 96 * 97 / 2);
        for t in &r.ranks {
            assert_eq!(t.pairs_computed + t.pairs_skipped, layout.chunks(4) / 4 * layout.chunks(4));
            assert_eq!(t.bytes_sent, 3 * 4 * spec.block_len() as u64);
            assert!(t.total >= t.compute);
        }
        pairs
    };
    let z = work(RingLayout::Zigzag);
    assert!(z.iter().all(|&x| x == z[0]), "{z:?}");
    let c = work(RingLayout::Contiguous);
    assert_eq!(c, [300, 876, 1452, 2028]);
}

// ---------------------------------------------------------------------------
// Validation, scatter and gather.

#[test]
fn bad_input_is_named_before_any_rank_runs() {
    let shape = shape_of([1, 2, 1, 10, 10, 8, 8]);
    let (q, k, v) = make_inputs(&shape, 1.0, 7);
    let spec = RingSpec::new(shape, RingLayout::Zigzag, 3, AttnParams::causal()).unwrap();
    let e = ring_in_process(&spec, Layout::Bhnd, &q, &k[1..], &v, DEADLINE).unwrap_err();
    assert_eq!(e.to_string(), "k: buffer has 79 elements, expected 80 from its dimensions");
    let e = RingSpec::new(shape, RingLayout::Zigzag, 0, AttnParams::causal()).unwrap_err();
    assert_eq!(e.to_string(), "ranks must be at least 1, got 0");
    let e = spec.with_threads(0).unwrap_err();
    assert_eq!(e.to_string(), "threads must be at least 1, got 0");
    let bias = vec![0f32; 100];
    let bv = TensorView::new("bias", &bias, [1, 1, 10, 10], Layout::Bhnd).unwrap();
    let e =
        RingSpec::new(shape, RingLayout::Zigzag, 2, AttnParams { bias: Some(bv), ..spec.params })
            .unwrap_err();
    assert!(e.to_string().starts_with("unsupported: a bias (bias) in ring attention"), "{e}");
    let pos = ChunkPositions::whole(10, 10);
    let p = AttnParams { positions: Some(pos), ..AttnParams::causal() };
    let e = RingSpec::new(shape, RingLayout::Zigzag, 2, p).unwrap_err();
    assert!(e.to_string().starts_with("positions: ring attention places every block"), "{e}");
    let e = RingSpec::new(shape, RingLayout::Zigzag, 2, AttnParams { softcap: Some(-1.0), ..p })
        .unwrap_err();
    assert!(e.to_string().starts_with("softcap"), "{e}");
}

#[test]
fn cut_and_place_round_trip_in_both_layouts() {
    let shape = shape_of([2, 3, 1, 13, 13, 4, 5]);
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        for (ring, p) in [(RingLayout::Zigzag, 3), (RingLayout::Contiguous, 4)] {
            let spec = RingSpec::new(shape, ring, p, AttnParams::default()).unwrap();
            let n = |d: [usize; 4]| d.iter().product::<usize>();
            let q: Vec<f32> = (0..n(shape.q_dims())).map(|i| i as f32).collect();
            let k: Vec<f32> = (0..n(shape.k_dims())).map(|i| -(i as f32)).collect();
            let v: Vec<f32> = (0..n(shape.v_dims())).map(|i| i as f32 * 0.5).collect();
            // Put each rank's q rows (with d = 4 features, dv = 5: pad) back as
            // "outputs": the whole tensor must come back.
            let mut out = vec![f32::NAN; n(shape.out_dims())];
            let mut lse = vec![f32::NAN; shape.lse_len()];
            let qv = TensorView::new("q", &q, shape.q_dims(), layout).unwrap();
            for rank in 0..p {
                let ri = cut(&spec, rank, layout, &q, &k, &v).unwrap();
                assert_eq!(ri.rank, rank);
                ri.check(&spec).unwrap();
                let rows = ri.q.len() / 4;
                let ro: Vec<f32> =
                    ri.q.chunks(4).flat_map(|r| [r[0], r[1], r[2], r[3], 7.0]).collect();
                let rl: Vec<f32> = ri.q.chunks(4).map(|r| r[0]).collect();
                assert_eq!(rl.len(), rows);
                place(&spec, rank, &ro, &rl, layout, &mut out, &mut lse).unwrap();
            }
            let ov = TensorView::new("out", &out, shape.out_dims(), layout).unwrap();
            for b in 0..2 {
                for h in 0..3 {
                    for i in 0..13 {
                        assert_eq!(&ov.row(b, h, i)[..4], qv.row(b, h, i));
                        assert_eq!(lse[(b * 3 + h) * 13 + i], qv.row(b, h, i)[0]);
                    }
                }
            }
            let e = place(&spec, 0, &[0.0; 3], &[], layout, &mut out, &mut lse).unwrap_err();
            assert!(e.to_string().starts_with("rank out: buffer has 3 elements"), "{e}");
            let e = cut(&spec, p, layout, &q, &k, &v).unwrap_err();
            assert!(e.to_string().starts_with("rank: rank"), "{e}");
        }
    }
}

// ---------------------------------------------------------------------------
// Failures: every rank returns an error, promptly, and nothing hangs.

/// A transport that fails its `fail_at`-th shift (a test double of a link
/// or a peer going down mid-ring).
struct Failing {
    inner: InProcess,
    fail_at: usize,
    shifts: usize,
}

impl Transport for Failing {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn shift_during<R>(
        &mut self,
        outgoing: &[f32],
        incoming: &mut [f32],
        work: impl FnOnce() -> R,
    ) -> Result<(R, ShiftTiming), TransportError> {
        self.shifts += 1;
        if self.shifts == self.fail_at {
            return Err(TransportError::Io("link down (test double)".into()));
        }
        self.inner.shift_during(outgoing, incoming, work)
    }
    fn abort(&mut self, message: &str) {
        self.inner.abort(message)
    }
}

/// Runs every rank of `spec` on its own thread, rank `bad` through
/// `make_bad`; returns each rank's result and how long the slowest took.
fn run_ranks(
    spec: &RingSpec<'_>,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    deadline: Duration,
    bad: usize,
    how: &str,
) -> (Vec<Result<(), RingError>>, Duration) {
    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for t in InProcess::ring(spec.ranks, deadline) {
            let tx = tx.clone();
            s.spawn(move || {
                let rank = t.rank();
                let mut inputs = cut(spec, rank, Layout::Bhnd, q, k, v).unwrap();
                let r = match (rank == bad, how) {
                    (true, "link") => {
                        let mut f = Failing { inner: t, fail_at: 2, shifts: 0 };
                        run_rank(&mut f, spec, &inputs)
                    }
                    (true, "input") => {
                        inputs.q.pop();
                        let mut t = t;
                        run_rank(&mut t, spec, &inputs)
                    }
                    (true, "vanish") => {
                        drop(t);
                        Err(RingError::Transport(TransportError::Io("gone".into())))
                    }
                    _ => {
                        let mut t = t;
                        run_rank(&mut t, spec, &inputs)
                    }
                };
                tx.send((rank, r.map(|_| ()))).unwrap();
            });
        }
    });
    drop(tx);
    let mut all: Vec<_> = rx.iter().collect();
    all.sort_by_key(|(r, _)| *r);
    (all.into_iter().map(|(_, r)| r).collect(), t0.elapsed())
}

#[test]
fn a_failing_rank_makes_every_rank_fail_promptly() {
    let shape = shape_of([1, 2, 1, 120, 120, 16, 16]);
    let (q, k, v) = make_inputs(&shape, 1.0, 8);
    let spec = RingSpec::new(shape, RingLayout::Zigzag, 4, AttnParams::causal()).unwrap();
    // The deadline is long: only the failure's propagation can end this
    // quickly.
    for how in ["link", "input", "vanish"] {
        for bad in [0, 2] {
            let (results, took) = run_ranks(&spec, &q, &k, &v, DEADLINE, bad, how);
            assert!(took < Duration::from_secs(20), "{how} on rank {bad}: {took:?}");
            for (rank, r) in results.iter().enumerate() {
                let e = r.as_ref().expect_err("every rank fails");
                if rank == bad && how != "vanish" {
                    assert!(e.to_string().starts_with(&format!("rank {rank}: ")), "{e}");
                    assert_eq!(e.is_consequence(), how == "link", "{e}");
                    if how == "input" {
                        assert!(e.to_string().contains("q: buffer has"), "{e}");
                    }
                } else if rank != bad {
                    assert!(e.is_consequence(), "{how} rank {rank}: {e}");
                }
            }
        }
    }
}

#[test]
fn a_silent_rank_is_a_timeout_not_a_hang() {
    let shape = shape_of([1, 1, 1, 40, 40, 8, 8]);
    let (q, k, v) = make_inputs(&shape, 1.0, 9);
    let spec = RingSpec::new(shape, RingLayout::Contiguous, 2, AttnParams::causal()).unwrap();
    let mut ring = InProcess::ring(2, Duration::from_millis(200));
    let _silent = ring.pop().unwrap(); // rank 1: alive, never shifts
    let mut t0 = ring.pop().unwrap();
    let inputs = cut(&spec, 0, Layout::Bhnd, &q, &k, &v).unwrap();
    let start = Instant::now();
    let e = run_rank(&mut t0, &spec, &inputs).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(e.to_string().starts_with("rank 0: no block from rank 1 within 0.2 s"), "{e}");
    // A ring whose own ranks disagree on the ring's size is refused.
    let [mut a] = InProcess::ring(1, DEADLINE).try_into().unwrap();
    let e = run_rank(&mut a, &spec, &inputs).unwrap_err();
    assert!(e.to_string().contains("the transport is rank 0 of 1, the ring spec has 2"), "{e}");
}
