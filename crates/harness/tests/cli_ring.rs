//! `attn ring`, `attn ring-bench` and `attn ring-report` end to end, the
//! binary run as a process (no MPI: the ranks are threads; the MPI runs are
//! `scripts/ring-mpi-check.sh`, in CI).
//!
//! `attn ring`'s output must be the bits of the library's ring
//! (`attnlab::ring::ring_in_process`) on the same values — the files, the
//! flags, the cutting and the placing add nothing — and within the ring's
//! tolerance of the f64 oracle: flash's `2e-5` of `tests/cli.rs` (inputs in
//! [−2, 2]) for each partial, plus what merging `m` partials adds (see
//! `tests/ring.rs` of the workspace): the partials' LSE errors enter the
//! weights twice (`2·2e-5·max|V|`), and each merge rounds by a few ulps of
//! `1 + |lse|` (`4·m·ε·(1 + |lse|)`, times `max|V|` on O).

mod support;

use std::path::Path;
use std::time::Duration;

use attnlab::naive::reference;
use attnlab::ring::{RingLayout, RingSpec, ring_in_process};
use attnlab::{AttnInputs, AttnParams, AttnShape, Layout, Mask, f16};
use npyz::Order;
use support::*;

/// A problem and how `attn ring` runs it.
struct Case {
    name: &'static str,
    /// `(B, Hq, Hkv, Nq, Nk, d, dv)`.
    dims: [usize; 7],
    mask: Mask,
    /// The mask's flags.
    mask_flags: &'static [&'static str],
    scale: Option<f32>,
    layout: RingLayout,
    tensors: Layout,
    ranks: usize,
    threads: usize,
}

impl Case {
    fn shape(&self) -> AttnShape {
        let [b, hq, hkv, nq, nk, d, dv] = self.dims;
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
        AttnParams { scale: self.scale, mask: self.mask, ..Default::default() }
    }

    fn flags(&self) -> Vec<String> {
        let mut f: Vec<String> = self.mask_flags.iter().map(|s| s.to_string()).collect();
        f.extend(["--ranks".into(), self.ranks.to_string()]);
        f.extend(["--threads".into(), self.threads.to_string()]);
        f.extend(["--layout".into(), self.layout.name().into()]);
        if self.tensors == Layout::Bnhd {
            f.extend(["--tensor-layout".into(), "bnhd".into()]);
        }
        if let Some(s) = self.scale {
            f.extend(["--scale".into(), s.to_string()]);
        }
        f
    }
}

const CASES: [Case; 5] = [
    Case {
        name: "causal zigzag, N = 37 over 4 ranks",
        dims: [1, 2, 2, 37, 37, 16, 16],
        mask: Mask::Causal,
        mask_flags: &["--causal"],
        scale: None,
        layout: RingLayout::Zigzag,
        tensors: Layout::Bhnd,
        ranks: 4,
        threads: 1,
    },
    Case {
        name: "window 5,2 contiguous GQA, Nq 29 Nk 33 over 3 ranks",
        dims: [2, 4, 2, 29, 33, 8, 12],
        mask: Mask::Window { left: Some(5), right: Some(2) },
        mask_flags: &["--window", "5,2"],
        scale: None,
        layout: RingLayout::Contiguous,
        tensors: Layout::Bhnd,
        ranks: 3,
        threads: 1,
    },
    Case {
        name: "no mask, bnhd, scale 0.3, 2 threads a rank",
        dims: [1, 3, 3, 24, 24, 8, 8],
        mask: Mask::None,
        mask_flags: &[],
        scale: Some(0.3),
        layout: RingLayout::Zigzag,
        tensors: Layout::Bnhd,
        ranks: 2,
        threads: 2,
    },
    Case {
        name: "causal MQA contiguous, Nq 20 Nk 31 over 7 ranks",
        dims: [1, 4, 1, 20, 31, 16, 16],
        mask: Mask::Causal,
        mask_flags: &["--causal", "1"],
        scale: None,
        layout: RingLayout::Contiguous,
        tensors: Layout::Bhnd,
        ranks: 7,
        threads: 1,
    },
    Case {
        name: "causal zigzag GQA on one rank",
        dims: [1, 4, 2, 19, 19, 8, 8],
        mask: Mask::Causal,
        mask_flags: &["--causal"],
        scale: None,
        layout: RingLayout::Zigzag,
        tensors: Layout::Bhnd,
        ranks: 1,
        threads: 1,
    },
];

/// `attn ring` on `files` with extra flags.
fn ring(files: &Files, extra: &[String]) -> std::process::Output {
    attn()
        .arg("ring")
        .args(["--q".as_ref(), files.q.as_os_str()])
        .args(["--k".as_ref(), files.k.as_os_str()])
        .args(["--v".as_ref(), files.v.as_os_str()])
        .args(["--out".as_ref(), files.out.as_os_str()])
        .args(["--lse".as_ref(), files.lse.as_os_str()])
        .args(extra)
        .output()
        .unwrap()
}

/// The output in `[B, Hq, Nq, dv]` order from its memory order.
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

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Checks `attn ring`'s files against the library's ring (bits) and the
/// oracle (the ring's tolerance, module docs), on the values `q`, `k`, `v`.
fn check(case: &Case, files: &Files, q: &[f32], k: &[f32], v: &[f32]) {
    let o = ring(files, &case.flags());
    assert!(o.status.success(), "{}: {}", case.name, stderr(&o));
    let out_line = String::from_utf8_lossy(&o.stdout);
    assert!(out_line.starts_with("time_ms="), "{}: {out_line}", case.name);
    assert!(stderr(&o).contains("no MPI"), "{}: {}", case.name, stderr(&o));

    let shape = case.shape();
    let (oshape, out) = read_f32(&files.out);
    assert_eq!(oshape, case.tensors.memory_dims(shape.out_dims()), "{}", case.name);
    let (lshape, lse) = read_f32(&files.lse);
    assert_eq!(lshape, [shape.batch(), shape.q_heads(), shape.q_len()], "{}", case.name);

    let spec = RingSpec::new(shape, case.layout, case.ranks, case.params()).unwrap();
    let lib = ring_in_process(&spec, case.tensors, q, k, v, Duration::from_secs(60)).unwrap();
    assert_eq!(bits(&out), bits(&lib.out), "{}: O differs from the library's ring", case.name);
    assert_eq!(bits(&lse), bits(&lib.lse), "{}: LSE differs from the library's ring", case.name);

    let inputs = AttnInputs::from_slices(shape, case.tensors, q, k, v).unwrap();
    let want = reference(&inputs, &case.params());
    let out = to_bhnd(&out, shape.out_dims(), case.tensors);
    let eps = f32::EPSILON as f64;
    let lse_max = want.lse.iter().filter(|x| x.is_finite()).fold(0f64, |a, x| a.max(x.abs()));
    let parts = case.layout.chunks(case.ranks) as f64;
    let merge = 4.0 * parts * eps * (1.0 + lse_max);
    let (tol_out, tol_lse) = (2e-5 + (2.0 * 2e-5 + merge) * 2.0, 2e-5 + merge);
    for (what, got, want, tol) in
        [("out", &out, &want.out, tol_out), ("lse", &lse, &want.lse, tol_lse)]
    {
        for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
            let ok = if w == f64::NEG_INFINITY {
                g == f32::NEG_INFINITY
            } else {
                (g as f64 - w).abs() <= tol
            };
            assert!(ok, "{} {what}[{i}] = {g}, oracle {w} (tolerance {tol:.1e})", case.name);
        }
    }
}

#[test]
fn ring_matches_the_library_ring_and_the_oracle() {
    for (i, case) in CASES.iter().enumerate() {
        let files = Files::new();
        let [q, k, v] = files.write::<f32>(&case.shape(), case.tensors, 900 + i as u64);
        check(case, &files, &q, &k, &v);
    }
}

#[test]
fn float16_inputs_are_widened() {
    let case = &CASES[0];
    let files = Files::new();
    let data = files.write::<f16>(&case.shape(), case.tensors, 77);
    let [q, k, v] = data.map(|x| x.into_iter().map(f32::from).collect::<Vec<f32>>());
    check(case, &files, &q, &k, &v);
}

#[test]
fn ring_agrees_with_attn_run() {
    // The flash kernel on one process against the ring over 4 ranks: both
    // within flash's 2e-5 of the oracle, so within twice that of each other
    // plus the merges (module docs).
    let case = &CASES[0];
    let files = Files::new();
    files.write::<f32>(&case.shape(), case.tensors, 5);
    let o = ring(&files, &case.flags());
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, ring_out) = read_f32(&files.out);
    let (_, ring_lse) = read_f32(&files.lse);
    let o = files.run(&["--causal", "1", "--kernel", "flash"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, out) = read_f32(&files.out);
    let (_, lse) = read_f32(&files.lse);
    for (what, a, b) in [("out", &ring_out, &out), ("lse", &ring_lse, &lse)] {
        let worst = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= 2e-4, "{what}: ring and attn run differ by {worst:e}");
    }
}

/// `attn ring` must fail with exit status 2 and one line naming each of
/// `needles`, leave `files.out` as it was ("old") and write nothing else.
fn expect_ring_error(files: &Files, extra: &[String], needles: &[&str]) {
    std::fs::write(&files.out, "old").unwrap();
    let o = ring(files, extra);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
    assert_eq!(std::fs::read_to_string(&files.out).unwrap(), "old", "{err}");
    assert!(!files.lse.exists(), "{err}: lse written");
    for entry in std::fs::read_dir(files.out.parent().unwrap()).unwrap() {
        let name = entry.unwrap().file_name();
        let name = name.to_str().unwrap();
        assert!(["q.npy", "k.npy", "v.npy", "o.npy"].contains(&name), "stray {name:?}: {err}");
    }
}

fn write(path: &Path, shape: &[usize], fill: impl Fn(usize) -> f32) {
    let data: Vec<f32> = (0..shape.iter().product()).map(fill).collect();
    write_npy(path, shape, &data, Order::C);
}

#[test]
fn bad_inputs_name_the_tensor_and_change_nothing() {
    let files = Files::new();
    let flags: Vec<String> = ["--causal", "--ranks", "3"].map(String::from).to_vec();
    let ok = |i: usize| ((i * 7919) % 13) as f32 * 0.1 - 0.6;
    write(&files.q, &[1, 4, 10, 8], ok);
    write(&files.k, &[1, 2, 10, 8], ok);
    write(&files.v, &[1, 2, 10, 8], ok);

    // The wrong number of dimensions.
    write(&files.q, &[4, 10, 8], ok);
    expect_ring_error(&files, &flags, &["q.npy", "q must be a 4-d array", "(4, 10, 8)"]);
    // Heads that do not divide.
    write(&files.q, &[1, 4, 10, 8], ok);
    write(&files.k, &[1, 3, 10, 8], ok);
    write(&files.v, &[1, 3, 10, 8], ok);
    expect_ring_error(&files, &flags, &["k.npy", "q heads (4) must be a multiple of kv heads (3)"]);
    // Mismatched key positions.
    write(&files.k, &[1, 2, 10, 8], ok);
    write(&files.v, &[1, 2, 9, 8], ok);
    expect_ring_error(&files, &flags, &["v.npy", "v: expected 10 key positions, got 9"]);
    // A non-finite value.
    write(&files.v, &[1, 2, 10, 8], |i| if i == 21 { f32::INFINITY } else { ok(i) });
    expect_ring_error(&files, &flags, &["v.npy", "non-finite value inf at index (0, 0, 2, 5)"]);
    // A bad flag value and a window with causal.
    write(&files.v, &[1, 2, 10, 8], ok);
    let mut both = flags.clone();
    both.extend(["--window".into(), "3,0".into()]);
    expect_ring_error(&files, &both, &["--causal 1 and --window cannot be combined"]);
    let zero: Vec<String> = ["--deadline", "0"].map(String::from).to_vec();
    expect_ring_error(&files, &zero, &["--deadline 0"]);
    // And with good inputs it runs, replacing the old output.
    let o = ring(&files, &flags);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_f32(&files.out).0, [1, 4, 10, 8]);
}

#[test]
fn started_by_mpirun_it_refuses_without_mpi_and_runs_with_one_rank() {
    let files = Files::new();
    let case = &CASES[0];
    files.write::<f32>(&case.shape(), case.tensors, 3);
    let run = |size: &str| {
        attn()
            .env("OMPI_COMM_WORLD_SIZE", size)
            .arg("ring")
            .args(["--q".as_ref(), files.q.as_os_str()])
            .args(["--k".as_ref(), files.k.as_os_str()])
            .args(["--v".as_ref(), files.v.as_os_str()])
            .args(["--out".as_ref(), files.out.as_os_str()])
            .args(["--causal"])
            .output()
            .unwrap()
    };
    // One rank: the ranks run in this process.
    let o = run("1");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(files.out.exists());
    std::fs::remove_file(&files.out).unwrap();
    if cfg!(feature = "mpi") {
        // Several ranks would start MPI: that is scripts/ring-mpi-check.sh.
        return;
    }
    let o = run("4");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("one of 4 ranks") && err.contains("--features mpi"), "{err}");
    assert!(!files.out.exists(), "{err}");
    let o = attn()
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .args(["ring-bench", "--q-len", "16", "--ranks", "2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn ring_bench_appends_results_and_ring_report_renders_them() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("ring.json");
    let bench = |extra: &[&str]| {
        let mut c = attn();
        c.args(["ring-bench", "--q-len", "48", "--heads", "2", "--head-dim", "8", "--causal"]);
        c.args(["--json", "--results"]).arg(&results).args(extra);
        c.output().unwrap()
    };
    let o = bench(&["--ranks", "3", "--reps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("3 ranks (in-process)") && out.contains("median of 2 run(s)"), "{out}");
    assert_eq!(out.lines().filter(|l| l.trim_start().starts_with(char::is_numeric)).count(), 3);
    let o = bench(&["--ranks", "3", "--solo", "--rank", "2", "--threads", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("solo: rank 2 of 3 (chunk 16 tokens"));
    // No MPI here: ping-pong is refused.
    let o = bench(&["--ping-pong"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));

    let r = harness::ring::results::load(&results).unwrap();
    assert_eq!(r.entries.len(), 2);
    let harness::ring::results::Entry::Ring(e) = &r.entries[0] else { panic!("{r:?}") };
    assert_eq!((e.ranks.len(), e.walls_s.len(), e.transport.as_str()), (3, 2, "in-process"));
    let pairs: f64 = e.flops / e.problem.flops_per_pair();
    assert_eq!(pairs, (48 * 49 / 2) as f64, "every visible pair once");

    let docs = dir.path().join("docs");
    let o = attn()
        .args(["ring-report", "--input"])
        .arg(&results)
        .arg("--docs")
        .arg(&docs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(docs.join("ring.md")).unwrap();
    assert!(md.contains("3 threads of one process (in-process transport)"), "{md}");
    assert!(md.contains("| N = 48, H = 2, d = 8, causal zigzag | 3 | 2 | 16 | 8 | 1 |"), "{md}");
    assert!(md.contains("No measurement yet (`mpirun -np 2"), "{md}");
}
