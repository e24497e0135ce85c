//! Score modifiers in the flash forward: each alone and combined against the oracle, extremes, identical bits.
//!
//! The tiled path is forced with tile overrides (`Under::FlashTiles`), and
//! the default `Flash` runs with `Nq` above the split-KV limit, so these
//! tests are about the tiled loop nest; `tests/modifiers_decode.rs` covers
//! the split-KV path.

use crate::common::*;
use attnlab::flash::TileConfig;
use attnlab::naive::reference;
use attnlab::{
    Alibi, AttentionKernel, AttnInputs, AttnParams, AttnShape, Flash, Layout, Mask, Par,
    TensorView, TensorViewMut,
};
use proptest::prelude::*;

/// Flash variants of the tiled path: default tiles and small odd ones.
fn tiled() -> Vec<Under> {
    vec![
        Under::Kernel(attnlab::Kernel::Flash),
        Under::FlashTiles(TileConfig { br: 32, bc: 8 }),
        Under::FlashTiles(TileConfig { br: 64, bc: 24 }),
    ]
}

/// The modifiers of one case, owning what `AttnParams` borrows.
#[derive(Debug, Clone, Default)]
struct Mods {
    softcap: Option<f32>,
    alibi: Option<Option<Vec<f32>>>, // Some(None): default slopes
    sinks: Option<Vec<f32>>,
    bias: Option<([usize; 4], Vec<f32>)>,
}

impl Mods {
    fn params(&self, mask: Mask) -> AttnParams<'_> {
        AttnParams {
            mask,
            softcap: self.softcap,
            alibi: self.alibi.as_ref().map(|a| match a {
                None => Alibi::Default,
                Some(s) => Alibi::Slopes(s),
            }),
            sinks: self.sinks.as_deref(),
            bias: self.bias.as_ref().map(|(dims, data)| {
                TensorView::new("bias", data, *dims, Layout::Bhnd).expect("bias dims")
            }),
            ..Default::default()
        }
    }

    /// The largest magnitude the modifiers add to a score, for the
    /// tolerance: a bias entry, a slope times the longest distance, and
    /// the softcap (its vector tanh errs by a few ulps of `c`).
    fn extra(&self, shape: &AttnShape) -> f64 {
        let bias = self.bias.as_ref().map_or(0.0, |(_, b)| {
            b.iter().filter(|x| x.is_finite()).fold(0f64, |a, x| a.max(x.abs() as f64))
        });
        // The default slopes are below 1.
        let slope = match &self.alibi {
            None => 0.0,
            Some(None) => 1.0,
            Some(Some(s)) => s.iter().fold(0f64, |a, x| a.max(x.abs() as f64)),
        };
        let alibi = slope * (shape.q_len() + shape.kv_len()) as f64;
        bias + alibi + self.softcap.map_or(0.0, |c| c as f64)
    }
}

/// Checks the flash variants against the oracle on one problem. The
/// tolerance is the plain one (`tests/common.rs`) widened by `32·ε` times
/// what the modifiers add to a score: each is one more f32 rounding of a
/// value of that size inside the exponent.
fn check(name: &str, dims: [usize; 7], mask: Mask, mods: &Mods, seed: u64, amp: f32) {
    let shape = shape_of(dims);
    let (q, k, v) = make_inputs(&shape, amp, seed);
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    let params = mods.params(mask);
    let r = reference(&inputs, &params);
    let mut tol = tolerance(&inputs, &params);
    let extra = 32.0 * f32::EPSILON as f64 * mods.extra(&shape);
    let vmax = v.iter().fold(0f64, |a, x| a.max(x.abs() as f64));
    tol.out += extra * vmax;
    tol.lse_abs += extra;
    for u in tiled() {
        let got = u.run(&inputs, Layout::Bhnd, &params, Par::Seq);
        let what = format!("{name} {dims:?} {mask:?} {u:?}");
        assert_matches(&what, &shape, Layout::Bhnd, (&got.0, &got.1), &r, &tol);
    }
}

fn bias_for(dims: [usize; 4], amp: f32, seed: u64) -> ([usize; 4], Vec<f32>) {
    (dims, random(dims.iter().product(), amp, &mut rng(seed)))
}

const SHAPES: [[usize; 7]; 4] = [
    [1, 4, 4, 70, 70, 64, 64],   // MHA
    [2, 6, 2, 45, 90, 32, 48],   // GQA, Nq < Nk, dv != d
    [1, 8, 1, 100, 37, 16, 16],  // MQA, Nq > Nk
    [1, 3, 3, 130, 200, 80, 24], // odd heads for the default slopes
];

fn masks() -> [Mask; 3] {
    [Mask::None, Mask::Causal, Mask::Window { left: Some(20), right: Some(5) }]
}

#[test]
fn each_modifier_alone_matches_the_oracle() {
    for (n, dims) in SHAPES.iter().enumerate() {
        let [b, hq, _, nq, nk, ..] = *dims;
        let cases = [
            ("softcap", Mods { softcap: Some(5.0), ..Default::default() }),
            ("alibi default", Mods { alibi: Some(None), ..Default::default() }),
            (
                "alibi slopes",
                Mods {
                    alibi: Some(Some((0..hq).map(|h| 0.01 + 0.3 * h as f32).collect())),
                    ..Default::default()
                },
            ),
            (
                "sinks",
                Mods {
                    sinks: Some((0..hq).map(|h| h as f32 - 1.5).collect()),
                    ..Default::default()
                },
            ),
            (
                "bias full",
                Mods { bias: Some(bias_for([b, hq, nq, nk], 2.0, 7)), ..Default::default() },
            ),
            (
                "bias broadcast",
                Mods { bias: Some(bias_for([1, 1, nq, nk], 2.0, 8)), ..Default::default() },
            ),
            (
                "bias per head",
                Mods { bias: Some(bias_for([1, hq, nq, nk], 1.0, 9)), ..Default::default() },
            ),
        ];
        for (name, mods) in &cases {
            for mask in masks() {
                check(name, *dims, mask, mods, 100 + n as u64, 2.0);
            }
        }
    }
}

#[test]
fn all_modifiers_combined_match_the_oracle() {
    for (n, dims) in SHAPES.iter().enumerate() {
        let [b, hq, _, nq, nk, ..] = *dims;
        let mods = Mods {
            softcap: Some(3.0),
            alibi: Some(None),
            sinks: Some((0..hq).map(|h| 0.5 * h as f32).collect()),
            bias: Some(bias_for([b, 1, nq, nk], 1.0, 11)),
        };
        for mask in masks() {
            check("combined", *dims, mask, &mods, 200 + n as u64, 3.0);
        }
    }
}

#[test]
fn extreme_modifiers_stay_exact_and_never_nan() {
    let dims = [1, 4, 2, 60, 75, 32, 32];
    let hq = dims[1];
    let cases = [
        ("softcap 1e-3", Mods { softcap: Some(1e-3), ..Default::default() }),
        ("softcap 1e6", Mods { softcap: Some(1e6), ..Default::default() }),
        // Slopes that make every key but the nearest underflow.
        ("alibi 1e3", Mods { alibi: Some(Some(vec![1e3; hq])), ..Default::default() }),
        ("sink +1e4", Mods { sinks: Some(vec![1e4; hq]), ..Default::default() }),
        ("sink -1e4", Mods { sinks: Some(vec![-1e4; hq]), ..Default::default() }),
    ];
    for (name, mods) in &cases {
        for mask in masks() {
            check(name, dims, mask, mods, 300, 4.0);
        }
    }
}

/// A bias with `−inf` entries masks those keys; a row of `−inf` is fully
/// masked (output 0, LSE `−inf`, or the sink's LSE with sinks).
#[test]
fn minus_infinity_bias_acts_as_a_mask() {
    let dims = [1, 2, 2, 50, 50, 16, 16];
    let (_, mut bias) = bias_for([1, 1, 50, 50], 1.0, 12);
    for i in 0..50 {
        for j in 0..50 {
            if (i * 7 + j * 3) % 5 == 0 || i == 17 {
                bias[i * 50 + j] = f32::NEG_INFINITY;
            }
        }
    }
    let bias = Some(([1, 1, 50, 50], bias));
    for sinks in [None, Some(vec![0.25f32, -2.0])] {
        let mods = Mods {
            bias: bias.clone(),
            sinks: sinks.clone(),
            softcap: Some(4.0),
            ..Default::default()
        };
        for mask in masks() {
            check("-inf bias", dims, mask, &mods, 400, 1.0);
        }
        // Row 17 is fully masked.
        let shape = shape_of(dims);
        let (q, k, v) = make_inputs(&shape, 1.0, 401);
        let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
        for u in tiled() {
            let (out, lse) = u.run(&inputs, Layout::Bhnd, &mods.params(Mask::None), Par::Seq);
            assert!(out.iter().all(|x| x.is_finite()), "{u:?}: NaN in the output");
            for h in 0..2 {
                assert!(out[(h * 50 + 17) * 16..][..16].iter().all(|x| *x == 0.0));
                let want = sinks.as_ref().map_or(f32::NEG_INFINITY, |s| s[h]);
                assert_eq!(lse[h * 50 + 17], want, "{u:?}");
            }
        }
    }
}

#[test]
fn a_nan_or_infinite_bias_entry_is_named() {
    let dims = [1, 2, 1, 40, 40, 16, 16];
    let shape = shape_of(dims);
    let (q, k, v) = make_inputs(&shape, 1.0, 500);
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    for bad in [f32::NAN, f32::INFINITY] {
        let (_, mut bias) = bias_for([1, 2, 40, 40], 1.0, 13);
        let at = (40 + 21) * 40 + 5; // head 1, row 21, key 5
        bias[at] = bad;
        let mods = Mods { bias: Some(([1, 2, 40, 40], bias)), ..Default::default() };
        for u in tiled() {
            let mut out = vec![0f32; shape.out_dims().iter().product()];
            let mut view =
                TensorViewMut::new("out", &mut out, shape.out_dims(), Layout::Bhnd).unwrap();
            let e = u
                .try_forward(&inputs, &mut view, None, &mods.params(Mask::Causal), Par::Seq)
                .unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("bias: non-finite value {bad} at flat index {at}")),
                "{u:?}: {e}"
            );
        }
    }
}

#[test]
fn invalid_modifiers_are_named() {
    let shape = shape_of([1, 4, 2, 20, 20, 8, 8]);
    let (q, k, v) = make_inputs(&shape, 1.0, 1);
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    let mut out = vec![0f32; shape.out_dims().iter().product()];
    let run = |p: &AttnParams, out: &mut Vec<f32>| {
        let mut view = TensorViewMut::new("out", out, shape.out_dims(), Layout::Bhnd).unwrap();
        Flash::default().forward(&inputs, &mut view, None, p, Par::Seq).unwrap_err().to_string()
    };
    let sinks = [0.0f32; 3];
    let slopes = [0.1, 0.2, f32::NAN, 0.3];
    let bias_data = vec![0f32; 2 * 20 * 20];
    let cases: Vec<(AttnParams, &str)> = vec![
        (
            AttnParams { softcap: Some(0.0), ..Default::default() },
            "softcap: must be finite and > 0",
        ),
        (
            AttnParams { softcap: Some(-1.0), ..Default::default() },
            "softcap: must be finite and > 0",
        ),
        (
            AttnParams { sinks: Some(&sinks), ..Default::default() },
            "sinks: expected one value per q head (4), got 3",
        ),
        (
            AttnParams { alibi: Some(Alibi::Slopes(&slopes)), ..Default::default() },
            "alibi slopes: must be finite, got NaN for q head 2",
        ),
        (
            AttnParams {
                bias: Some(
                    TensorView::new("bias", &bias_data, [1, 2, 20, 20], Layout::Bhnd).unwrap(),
                ),
                ..Default::default()
            },
            "bias: expected 4 q heads (or 1), got 2",
        ),
    ];
    for (p, want) in cases {
        let e = run(&p, &mut out);
        assert!(e.starts_with(want), "{e}");
    }
}

#[test]
fn modified_calls_give_identical_bits_for_any_thread_count() {
    let dims = [2, 4, 2, 150, 170, 32, 32];
    let [b, hq, _, nq, nk, ..] = dims;
    let shape = shape_of(dims);
    let (q, k, v) = make_inputs(&shape, 1.0, 600);
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    let mods = Mods {
        softcap: Some(2.0),
        alibi: Some(None),
        sinks: Some(vec![0.5; hq]),
        bias: Some(bias_for([b, hq, nq, nk], 1.0, 14)),
    };
    let params = mods.params(Mask::Causal);
    for u in tiled() {
        let seq = u.run(&inputs, Layout::Bhnd, &params, Par::Seq);
        for t in [2, 3] {
            let par = u.run(&inputs, Layout::Bhnd, &params, Par::rayon(t).unwrap());
            let same = seq.0.iter().zip(&par.0).all(|(a, b)| a.to_bits() == b.to_bits())
                && seq.1.iter().zip(&par.1).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{u:?}: {t} threads differ");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn random_modifiers_match_the_oracle(
        (b, hkv, grp, nq, nk) in (1usize..=2, 1usize..=2, 1usize..=3, 17usize..=80, 0usize..=80),
        d in prop::sample::select(vec![1usize, 8, 24, 64]),
        mask_kind in 0usize..3,
        which in 1u8..16,
        cap in prop_oneof![Just(0.5f32), Just(8.0f32), Just(50.0f32)],
        seed in any::<u64>(),
    ) {
        let hq = hkv * grp;
        let mods = Mods {
            softcap: (which & 1 != 0).then_some(cap),
            alibi: (which & 2 != 0).then(|| (seed % 2 == 0).then(|| (0..hq).map(|h| 0.05 * (h + 1) as f32).collect())),
            sinks: (which & 4 != 0).then(|| (0..hq).map(|h| (h as f32 - 1.0) * 1.5).collect()),
            bias: (which & 8 != 0).then(|| bias_for([1, hq, nq, nk], 2.0, seed)),
        };
        let mask = [Mask::None, Mask::Causal, Mask::Window { left: Some(9), right: Some(3) }][mask_kind];
        check("prop", [b, hq, hkv, nq, nk, d, d], mask, &mods, seed, 2.0);
    }
}
