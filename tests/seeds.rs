//! Named seed cases, each run against every kernel (naive, flash with the
//! default and with small forced tiles) and checked against the oracle.

use crate::common::*;
use attnlab::{AttnInputs, AttnParams, Layout, Mask};

struct Case {
    name: &'static str,
    /// B, Hq, Hkv, Nq, Nk, d, dv
    dims: [usize; 7],
    mask: Mask,
    /// amplitude of Q and K (logits grow as amp² · sqrt(d))
    amp: f32,
    layout: Layout,
}

const fn case(name: &'static str, dims: [usize; 7], mask: Mask) -> Case {
    Case { name, dims, mask, amp: 1.0, layout: Layout::Bhnd }
}

const W: fn(Option<usize>, Option<usize>) -> Mask = |left, right| Mask::Window { left, right };

fn cases() -> Vec<Case> {
    let mut v = vec![
        case("mha", [1, 4, 4, 37, 37, 16, 16], Mask::None),
        case("mha_causal", [1, 4, 4, 37, 37, 16, 16], Mask::Causal),
        case("gqa_4to1_causal", [2, 8, 2, 130, 130, 64, 64], Mask::Causal),
        case("gqa_3to1", [1, 6, 2, 45, 70, 32, 32], Mask::None),
        case("mqa", [1, 6, 1, 65, 65, 32, 32], Mask::None),
        case("mqa_causal", [2, 5, 1, 33, 90, 24, 24], Mask::Causal),
        case("n1", [1, 2, 2, 1, 1, 8, 8], Mask::None),
        case("n1_causal", [1, 2, 1, 1, 1, 8, 8], Mask::Causal),
        case("decode_nq1", [1, 8, 2, 1, 300, 64, 64], Mask::Causal),
        case("decode_nq5", [1, 8, 2, 5, 300, 64, 64], Mask::Causal),
        // split-KV (q_len <= 16) over several chunks, and just past it
        case("split_kv_chunks", [2, 8, 2, 1, 1500, 64, 64], Mask::Causal),
        case("split_kv_nq16_window", [1, 4, 1, 16, 700, 32, 40], W(Some(200), Some(0))),
        case("tiled_nq17", [1, 4, 1, 17, 700, 32, 32], Mask::Causal),
        case("cross_nq_lt_nk", [1, 2, 2, 50, 200, 32, 32], Mask::None),
        case("causal_nq_lt_nk", [1, 2, 2, 50, 200, 32, 32], Mask::Causal),
        case("causal_nq_gt_nk_masked_rows", [1, 2, 2, 200, 50, 32, 32], Mask::Causal),
        case("cross_nq_gt_nk", [1, 3, 1, 100, 7, 16, 16], Mask::None),
        case("window_sym", [1, 2, 2, 150, 150, 32, 32], W(Some(8), Some(8))),
        case("window_left_only", [1, 2, 2, 150, 150, 32, 32], W(Some(16), Some(0))),
        case("window_right_unbounded", [1, 2, 2, 90, 150, 32, 32], W(Some(0), None)),
        case("window_left_unbounded", [1, 2, 2, 150, 90, 32, 32], W(None, Some(3))),
        case("window_diag_only", [1, 2, 2, 70, 70, 16, 16], W(Some(0), Some(0))),
        case("window_masks_rows", [1, 2, 2, 120, 40, 16, 16], W(Some(0), Some(0))),
        case("window_wide_cross", [1, 2, 1, 40, 300, 16, 16], W(Some(100), Some(50))),
        case("vdim_smaller", [1, 2, 2, 40, 60, 48, 24], Mask::Causal),
        case("vdim_larger_odd", [1, 2, 1, 40, 60, 8, 100], Mask::None),
        case("batch3_gqa_window", [3, 4, 2, 70, 70, 32, 40], W(Some(20), Some(5))),
        case("empty_q", [1, 2, 2, 0, 10, 8, 8], Mask::None),
        case("empty_kv", [1, 2, 2, 10, 0, 8, 8], Mask::None),
        case("empty_kv_causal", [1, 2, 1, 10, 0, 8, 8], Mask::Causal),
    ];
    // every head dim the issue lists, v_dim tied and untied
    for d in [1, 2, 3, 8, 16, 32, 64, 80, 96, 112, 128, 192, 256] {
        v.push(Case {
            name: "head_dim",
            dims: [1, 2, 1, 33, 41, d, d],
            mask: Mask::Causal,
            amp: 1.0,
            layout: Layout::Bhnd,
        });
        v.push(Case {
            name: "head_dim_dv17",
            dims: [1, 2, 2, 9, 20, d, 17],
            mask: Mask::None,
            amp: 1.0,
            layout: Layout::Bhnd,
        });
    }
    // lengths at tile edges (32 = Br step, 8 = key block, 64 = default Bc,
    // 128 and 256 = default Br for N = 256 and 512 up)
    for n in [7, 8, 9, 31, 32, 33, 127, 128, 129, 255, 257] {
        v.push(case("tile_edge", [1, 2, 1, n, n, 16, 16], Mask::Causal));
        v.push(case("tile_edge_cross", [1, 2, 1, n, 2 * n + 1, 16, 16], Mask::None));
    }
    // extreme logits: |scale·q·k| up to ~1e4
    v.push(Case {
        name: "logits_1e4",
        dims: [1, 2, 2, 40, 40, 16, 16],
        mask: Mask::None,
        amp: 60.0,
        layout: Layout::Bhnd,
    });
    v.push(Case {
        name: "logits_1e4_causal",
        dims: [1, 2, 1, 40, 70, 16, 16],
        mask: Mask::Causal,
        amp: 60.0,
        layout: Layout::Bhnd,
    });
    v.push(Case {
        name: "logits_1e2",
        dims: [1, 2, 2, 40, 40, 64, 64],
        mask: Mask::None,
        amp: 6.0,
        layout: Layout::Bhnd,
    });
    // the other layout
    v.push(Case {
        name: "bnhd_gqa_causal",
        dims: [2, 4, 2, 45, 60, 32, 32],
        mask: Mask::Causal,
        amp: 1.0,
        layout: Layout::Bnhd,
    });
    v.push(Case {
        name: "bnhd_window",
        dims: [1, 3, 3, 70, 50, 16, 24],
        mask: W(Some(5), Some(5)),
        amp: 1.0,
        layout: Layout::Bnhd,
    });
    v
}

#[test]
fn seed_cases_match_oracle() {
    for (idx, c) in cases().into_iter().enumerate() {
        let [b, hq, hkv, nq, nk, d, dv] = c.dims;
        let shape = shape_of([b, hq, hkv, nq, nk, d, dv]);
        let (q, k, v) = make_inputs(&shape, c.amp, 1000 + idx as u64);
        let inputs = AttnInputs::from_slices(shape, c.layout, &q, &k, &v).unwrap();
        let params = AttnParams::with_mask(c.mask);
        check_all(&format!("{} {:?} {:?}", c.name, c.dims, c.mask), &inputs, c.layout, &params);
    }
}

#[test]
fn extreme_logits_actually_reach_1e4() {
    // guards the case table above: amp 60 at d = 16 must produce |logits| ~ 1e4
    let shape = shape_of([1, 2, 2, 40, 40, 16, 16]);
    let (q, k, _) = make_inputs(&shape, 60.0, 1);
    let scale = 0.25f32;
    let mut max = 0f32;
    for i in 0..40 {
        for j in 0..40 {
            let s: f32 = (0..16).map(|c| q[i * 16 + c] * k[j * 16 + c]).sum::<f32>() * scale;
            max = max.max(s.abs());
        }
    }
    assert!(max > 5e3, "max |logit| {max}");
}

#[test]
fn custom_scale_is_used() {
    let shape = shape_of([1, 2, 1, 20, 30, 8, 8]);
    let (q, k, v) = make_inputs(&shape, 1.0, 5);
    let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    for scale in [0.0, 1.7, -0.3] {
        let params = AttnParams { scale: Some(scale), ..AttnParams::causal() };
        check_all(&format!("scale {scale}"), &inputs, Layout::Bhnd, &params);
    }
}
