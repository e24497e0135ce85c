//! `attn run` end to end: `.npy` files in, the binary run as a process,
//! `.npy` files out, compared with the f64 oracle computed here.

use std::fs::File;
use std::io::BufWriter;

use attnlab::naive::reference;
use attnlab::{AttnInputs, AttnParams, AttnShape, Element, Layout, Mask, f16};
use npyz::{Order, WriterBuilder};

mod support;
use support::*;

/// A problem: shape, layout, the flags that pick the mask, and that mask.
#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    layout: Layout,
    /// `(B, Hq, Hkv, Nq, Nk, d, dv)`
    dims: (usize, usize, usize, usize, usize, usize, usize),
    flags: &'static [&'static str],
    mask: Mask,
    scale: Option<f32>,
}

impl Case {
    fn shape(&self) -> AttnShape {
        let (b, hq, hkv, nq, nk, d, dv) = self.dims;
        AttnShape::builder()
            .batch(b)
            .q_heads(hq)
            .kv_heads(hkv)
            .q_len(nq)
            .kv_len(nk)
            .head_dim(d)
            .v_dim(dv)
            .build()
            .unwrap()
    }
    fn params(&self) -> AttnParams<'static> {
        AttnParams { scale: self.scale, mask: self.mask, check_finite: true, ..Default::default() }
    }
}

/// Largest |got - want| over all elements, with its index; `-inf` must
/// match `-inf` exactly.
fn max_abs_err(got: &[f32], want: &[f64]) -> (f64, usize) {
    assert_eq!(got.len(), want.len());
    let mut worst = (0.0, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = if w == f64::NEG_INFINITY {
            if g == f32::NEG_INFINITY { 0.0 } else { f64::INFINITY }
        } else {
            (g as f64 - w).abs()
        };
        if e.is_nan() || e > worst.0 {
            worst = (e, i);
        }
    }
    worst
}

/// The output in `[B, Hq, Nq, dv]` order from its memory order in `layout`.
fn to_bhnd(data: &[f32], dims: [usize; 4], layout: Layout) -> Vec<f32> {
    let [b, h, n, d] = dims;
    let st = layout.strides(dims);
    let mut out = Vec::with_capacity(data.len());
    for bi in 0..b {
        for hi in 0..h {
            for ni in 0..n {
                let o = bi * st[0] + hi * st[1] + ni * st[2];
                out.extend_from_slice(&data[o..o + d]);
            }
        }
    }
    out
}

/// Runs `kernel` on the case's files and checks O and LSE against the f64
/// oracle on the same (stored-type) values.
fn check_kernel<T: npyz::AutoSerialize + Element>(
    case: &Case,
    files: &Files,
    data: &[Vec<T>; 3],
    kernel: &str,
    tol: f64,
) {
    let shape = case.shape();
    let mut flags = vec!["--kernel", kernel, "--threads", "2"];
    flags.extend_from_slice(case.flags);
    let scale = case.scale.map(|s| s.to_string());
    if let Some(s) = &scale {
        flags.extend(["--scale", s]);
    }
    if case.layout == Layout::Bnhd {
        flags.extend(["--layout", "bnhd"]);
    }
    let o = files.run(&flags);
    assert!(o.status.success(), "{} {kernel}: {}", case.name, stderr(&o));

    let inputs = AttnInputs::from_slices(shape, case.layout, &data[0], &data[1], &data[2]).unwrap();
    let want = reference(&inputs, &case.params());
    let (oshape, out) = read_f32(&files.out);
    assert_eq!(oshape, case.layout.memory_dims(shape.out_dims()), "{} {kernel}", case.name);
    let out = to_bhnd(&out, shape.out_dims(), case.layout);
    let (lshape, lse) = read_f32(&files.lse);
    assert_eq!(lshape, vec![shape.batch(), shape.q_heads(), shape.q_len()]);
    for (what, got, want) in [("out", &out, &want.out), ("lse", &lse, &want.lse)] {
        let (err, i) = max_abs_err(got, want);
        assert!(
            err <= tol,
            "{} {kernel} {what}: max abs error {err:e} > {tol:e} at flat index {i} \
             (got {}, want {})",
            case.name,
            got[i],
            want[i]
        );
    }
}

/// Tolerances (max abs, O and LSE) against the f64 oracle, inputs in [-2, 2].
const KERNELS: [(&str, f64); 3] = [("oracle", 1e-6), ("naive", 2e-6), ("flash", 2e-5)];

const CASES: [Case; 6] = [
    Case {
        name: "mha bhnd",
        layout: Layout::Bhnd,
        dims: (1, 2, 2, 9, 9, 8, 8),
        flags: &[],
        mask: Mask::None,
        scale: None,
    },
    Case {
        name: "gqa bhnd causal nq<nk",
        layout: Layout::Bhnd,
        dims: (2, 4, 2, 5, 11, 16, 8),
        flags: &["--causal", "1"],
        mask: Mask::Causal,
        scale: None,
    },
    Case {
        name: "mqa bnhd window 3,1",
        layout: Layout::Bnhd,
        dims: (1, 4, 1, 7, 7, 8, 12),
        flags: &["--window", "3,1"],
        mask: Mask::Window { left: Some(3), right: Some(1) },
        scale: None,
    },
    Case {
        name: "gqa bnhd causal, scale",
        layout: Layout::Bnhd,
        dims: (2, 6, 3, 13, 13, 4, 4),
        flags: &["--causal", "1"],
        mask: Mask::Causal,
        scale: Some(0.3),
    },
    Case {
        // rows 0 and 1 see no key: O = 0, LSE = -inf
        name: "causal nq>nk (masked rows)",
        layout: Layout::Bhnd,
        dims: (1, 2, 2, 6, 4, 8, 8),
        flags: &["--causal", "1"],
        mask: Mask::Causal,
        scale: None,
    },
    Case {
        name: "window inf,2 bnhd",
        layout: Layout::Bnhd,
        dims: (1, 2, 1, 1, 17, 8, 8),
        flags: &["--window", "inf,2"],
        mask: Mask::Window { left: None, right: Some(2) },
        scale: None,
    },
];

#[test]
fn f32_round_trip_matches_oracle() {
    for (i, case) in CASES.iter().enumerate() {
        let files = Files::new();
        let data = files.write::<f32>(&case.shape(), case.layout, 100 + i as u64);
        for (kernel, tol) in KERNELS {
            check_kernel(case, &files, &data, kernel, tol);
        }
    }
}

#[test]
fn f16_inputs_match_oracle_on_the_same_values() {
    for (i, case) in [CASES[1], CASES[2]].iter().enumerate() {
        let files = Files::new();
        let data = files.write::<f16>(&case.shape(), case.layout, 200 + i as u64);
        for (kernel, tol) in KERNELS {
            check_kernel(case, &files, &data, kernel, tol);
        }
    }
}

#[test]
fn big_endian_f32_is_read() {
    let case = CASES[0];
    let files = Files::new();
    let data = files.write::<f32>(&case.shape(), case.layout, 300);
    // Rewrite Q as '>f4': the values are the same, only the bytes differ.
    let shape: Vec<u64> = case.shape().q_dims().iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::<f32>::new()
        .dtype(npyz::DType::Plain(">f4".parse().unwrap()))
        .shape(&shape)
        .writer(BufWriter::new(File::create(&files.q).unwrap()))
        .begin_nd()
        .unwrap();
    w.extend(data[0].iter().copied()).unwrap();
    w.finish().unwrap();
    check_kernel(&case, &files, &data, "oracle", 1e-6);
}

#[test]
fn window_minus_one_zero_is_causal() {
    let case = CASES[1];
    let files = Files::new();
    files.write::<f32>(&case.shape(), case.layout, 400);
    assert!(files.run(&["--kernel", "oracle", "--causal", "1"]).status.success());
    let causal = read_f32(&files.out).1;
    assert!(files.run(&["--kernel", "oracle", "--window", "-1,0"]).status.success());
    assert_eq!(read_f32(&files.out).1, causal);
}

#[test]
fn one_time_line_per_rep() {
    let files = Files::new();
    files.write::<f32>(&CASES[0].shape(), Layout::Bhnd, 500);
    for (warmup, reps) in [("0", 1), ("2", 3), ("1", 5)] {
        let reps_s = reps.to_string();
        let flags = ["--kernel", "naive", "--warmup", warmup, "--reps", &reps_s, "--threads", "1"];
        let o = files.run(&flags);
        assert!(o.status.success(), "{}", stderr(&o));
        let stdout = String::from_utf8(o.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), reps, "{stdout}");
        for l in lines {
            let ms: f64 = l.strip_prefix("time_ms=").expect(l).parse().expect(l);
            assert!(ms.is_finite() && ms >= 0.0, "{l}");
        }
    }
}

#[test]
fn help_documents_subcommands_and_flags() {
    let o = attn().arg("--help").output().unwrap();
    assert!(o.status.success());
    let top = String::from_utf8(o.stdout).unwrap();
    for sub in ["run", "bench", "peak", "report"] {
        assert!(top.contains(&format!("  {sub} ")), "{sub} missing from:\n{top}");
    }
    let o = attn().args(["run", "--help"]).output().unwrap();
    assert!(o.status.success());
    let help = String::from_utf8(o.stdout).unwrap();
    for flag in [
        "--q",
        "--k",
        "--v",
        "--out",
        "--lse",
        "--kernel",
        "--causal",
        "--window",
        "--scale",
        "--layout",
        "--threads",
        "--warmup",
        "--reps",
        "--no-check-finite",
        "time_ms=",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

// --- errors: exit 2, one line naming the file and the problem, no output.

#[test]
fn missing_and_non_npy_files() {
    let files = valid_files();
    std::fs::remove_file(&files.k).unwrap();
    let k = files.k.display().to_string();
    expect_one_line_error(&files, &["--kernel", "oracle"], &[&k, "no such file"]);

    let files = valid_files();
    std::fs::write(&files.q, "q,k,v\n1,2,3\n").unwrap();
    expect_one_line_error(&files, &["--kernel", "oracle"], &[&q_name(&files), "not a valid .npy"]);
}

#[test]
fn wrong_dtypes() {
    let files = valid_files();
    write_npy(&files.q, &[1, 4, 5, 8], &[0.5f64; 160], Order::C);
    expect_one_line_error(
        &files,
        &["--kernel", "oracle"],
        &[&q_name(&files), "float64", "float32", "float16"],
    );

    let files = valid_files();
    write_npy(&files.v, &[1, 2, 7, 8], &[1i32; 112], Order::C);
    let v = files.v.display().to_string();
    expect_one_line_error(&files, &["--kernel", "oracle"], &[&v, "int32", "not supported"]);

    let files = valid_files();
    write_npy(&files.k, &[1, 2, 7, 8], &[f16::ONE; 112], Order::C);
    let k = files.k.display().to_string();
    expect_one_line_error(
        &files,
        &["--kernel", "oracle"],
        &[&k, "float16", "float32", "one dtype"],
    );
}

#[test]
fn fortran_order_and_wrong_rank() {
    let files = valid_files();
    write_npy(&files.q, &[1, 4, 5, 8], &[0.5f32; 160], Order::Fortran);
    expect_one_line_error(&files, &["--kernel", "oracle"], &[&q_name(&files), "Fortran order"]);

    let files = valid_files();
    write_npy(&files.q, &[4, 5, 8], &[0.5f32; 160], Order::C);
    expect_one_line_error(
        &files,
        &["--kernel", "oracle"],
        &[&q_name(&files), "4-d", "3-d shape (4, 5, 8)"],
    );
}

#[test]
fn shapes_that_do_not_fit() {
    // V with 3 kv heads where K has 2: named with attn-core's message.
    let files = valid_files();
    write_npy(&files.v, &[1, 3, 7, 8], &[0.5f32; 168], Order::C);
    let v = files.v.display().to_string();
    expect_one_line_error(&files, &["--kernel", "oracle"], &[&v, "v: expected 2 kv heads, got 3"]);

    // 4 q heads over 3 kv heads.
    let files = valid_files();
    write_npy(&files.k, &[1, 3, 7, 8], &[0.5f32; 168], Order::C);
    write_npy(&files.v, &[1, 3, 7, 8], &[0.5f32; 168], Order::C);
    let k = files.k.display().to_string();
    expect_one_line_error(&files, &["--kernel", "oracle"], &[&k, "multiple of kv heads (3)"]);

    // K's head_dim differs from Q's.
    let files = valid_files();
    write_npy(&files.k, &[1, 2, 7, 6], &[0.5f32; 84], Order::C);
    let k = files.k.display().to_string();
    expect_one_line_error(&files, &["--kernel", "oracle"], &[&k, "expected 8 features (head_dim)"]);
}

#[test]
fn non_finite_input() {
    let files = valid_files();
    let mut q = vec![0.5f32; 160];
    q[59] = f32::NAN; // (0, 1, 2, 3)
    write_npy(&files.q, &[1, 4, 5, 8], &q, Order::C);
    expect_one_line_error(
        &files,
        &["--kernel", "naive"],
        &[&q_name(&files), "NaN", "(0, 1, 2, 3)", "--no-check-finite"],
    );
}

#[test]
fn bad_flags() {
    let files = valid_files();
    expect_error(&files, &["--kernel", "oracle", "--window", "3"], &["--window", "LEFT,RIGHT"]);
    expect_error(&files, &["--kernel", "oracle", "--window", "x,0"], &["left side 'x'"]);
    expect_error(&files, &["--kernel", "oracle", "--window", "-2,0"], &["left side '-2'"]);
    expect_one_line_error(
        &files,
        &["--kernel", "oracle", "--causal", "1", "--window", "4,0"],
        &["--causal 1 and --window"],
    );
    expect_error(&files, &["--kernel", "fast"], &["fast", "oracle, naive, flash"]);
    expect_error(&files, &["--causal", "2"], &["expected 0 or 1"]);
    expect_error(&files, &["--reps", "0"], &["--reps"]);
    expect_one_line_error(&files, &["--scale", "inf"], &["scale", "finite"]);
}
