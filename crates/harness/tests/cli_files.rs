//! `attn run`'s files: outputs are all-or-nothing and never destroy what
//! was there, finite extremes are exact or a clear error, memory is checked
//! before it is taken, and the instruction-set warning.

mod support;

use std::process::{Command, Output};

use npyz::Order;
use support::*;

#[test]
fn missing_output_directory() {
    let files = valid_files();
    let out = files.out.parent().unwrap().join("nowhere/o.npy");
    let o = attn()
        .arg("run")
        .args(["--q".as_ref(), files.q.as_os_str()])
        .args(["--k".as_ref(), files.k.as_os_str()])
        .args(["--v".as_ref(), files.v.as_os_str()])
        .args(["--out".as_ref(), out.as_os_str()])
        .args(["--kernel", "oracle"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

#[test]
fn warns_when_the_build_leaves_vector_units_unused() {
    // Same RUSTFLAGS for this test and the binary: with target-cpu=native
    // nothing is missed and nothing is said; the baseline CI build
    // (target-cpu=x86-64) on an AVX-512 machine must warn.
    let o = Command::new(env!("CARGO_BIN_EXE_attn"))
        .args([
            "run",
            "--q",
            "/nonexistent/q.npy",
            "--k",
            "k.npy",
            "--v",
            "v.npy",
            "--out",
            "o.npy",
        ])
        .output()
        .unwrap();
    let err = stderr(&o);
    let warned = err.contains("attn: warning: attnlab was compiled for");
    assert_eq!(warned, !attnlab::isa::missed().is_empty(), "{err}");
    if warned {
        assert!(err.contains("target-cpu=native"), "{err}");
    }
}

/// `attn run` on `files`' inputs with explicit output flags.
fn run_with_outputs(files: &Files, outputs: &[&std::ffi::OsStr], extra: &[&str]) -> Output {
    attn()
        .arg("run")
        .args(["--q".as_ref(), files.q.as_os_str()])
        .args(["--k".as_ref(), files.k.as_os_str()])
        .args(["--v".as_ref(), files.v.as_os_str()])
        .args(outputs)
        .args(extra)
        .output()
        .unwrap()
}

/// Every file of the scratch directory with its contents.
fn snapshot(files: &Files) -> Vec<(std::ffi::OsString, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(files.out.parent().unwrap())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), std::fs::read(e.path()).unwrap_or_default())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn outputs_never_destroy_what_was_there() {
    let files = valid_files();
    std::fs::write(&files.out, b"precious o").unwrap();
    std::fs::write(&files.lse, b"precious lse").unwrap();
    let before = snapshot(&files);
    let dir = files.out.parent().unwrap();
    let o_alias = dir.join(".").join("o.npy");
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        // two spellings of one file
        (
            vec!["--out".as_ref(), files.out.as_os_str(), "--lse".as_ref(), o_alias.as_os_str()],
            "--lse names the same file as the output --out",
        ),
        // an output that is an input
        (vec!["--out".as_ref(), files.q.as_os_str()], "--out names the same file as the input --q"),
        // the LSE's directory does not exist: nothing computed, --out untouched
        (
            vec![
                "--out".as_ref(),
                files.out.as_os_str(),
                "--lse".as_ref(),
                "/nonexistent/l.npy".as_ref(),
            ],
            "does not exist",
        ),
    ];
    for (outs, needle) in cases {
        let o = run_with_outputs(&files, &outs, &["--kernel", "flash"]);
        assert_eq!(o.status.code(), Some(2), "{outs:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{outs:?}: {}", stderr(&o));
        assert_eq!(snapshot(&files), before, "{outs:?}: files changed");
    }
    // a hard link to q is the same file too
    let link = dir.join("q_link.npy");
    std::fs::hard_link(&files.q, &link).unwrap();
    let o = run_with_outputs(&files, &["--out".as_ref(), link.as_os_str()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("same file as the input --q"), "{}", stderr(&o));
    std::fs::remove_file(&link).unwrap();
    // a successful run replaces both, leaving no temporary file
    let o = files.run(&["--kernel", "flash"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<_> = snapshot(&files).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["k.npy", "lse.npy", "o.npy", "q.npy", "v.npy"].map(std::ffi::OsString::from)
    );
    assert_eq!(read_f32(&files.out).0, vec![1, 4, 5, 8]);
}

#[test]
fn finite_extremes_are_exact_or_a_clear_error() {
    let files = Files::new();
    // Q = K = 1e20 (finite f32), V = 1: the output is exactly 1; the LSE
    // (about 1e40) does not fit in f32, so asking for it is an error.
    write_npy(&files.q, &[1, 1, 4, 2], &[1e20f32; 8], Order::C);
    write_npy(&files.k, &[1, 1, 6, 2], &[1e20f32; 12], Order::C);
    write_npy(&files.v, &[1, 1, 6, 3], &[1.0f32; 18], Order::C);
    for kernel in ["oracle", "naive", "flash"] {
        let o = run_with_outputs(
            &files,
            &["--out".as_ref(), files.out.as_os_str()],
            &["--kernel", kernel],
        );
        assert!(o.status.success(), "{kernel}: {}", stderr(&o));
        let (_, out) = read_f32(&files.out);
        assert!(out.iter().all(|&x| (x - 1.0).abs() < 1e-6), "{kernel}: {out:?}");
        let o = files.run(&["--kernel", kernel]);
        assert_eq!(o.status.code(), Some(2), "{kernel}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("scores overflow f32 at batch 0 head 0 row 0"),
            "{}",
            stderr(&o)
        );
    }
    // --scale 1e38 on ordinary inputs: every kernel finite and in agreement
    let files = valid_files();
    let mut outs = vec![];
    for kernel in ["oracle", "naive", "flash"] {
        let o = run_with_outputs(
            &files,
            &["--out".as_ref(), files.out.as_os_str()],
            &["--kernel", kernel, "--scale", "1e38"],
        );
        assert!(o.status.success(), "{kernel}: {}", stderr(&o));
        let (_, out) = read_f32(&files.out);
        assert!(out.iter().all(|x| x.is_finite()), "{kernel}");
        outs.push(out);
    }
    for o in &outs[1..] {
        assert!(o.iter().zip(&outs[0]).all(|(a, b)| (a - b).abs() < 1e-4), "kernels disagree");
    }
}

#[test]
fn outputs_too_large_for_memory_are_an_error() {
    // 4 MB of input asking for a 400 GB output
    let files = Files::new();
    write_npy(&files.q, &[1, 1, 1_000_000, 1], &vec![0.5f32; 1_000_000], Order::C);
    write_npy(&files.k, &[1, 1, 1, 1], &[0.5f32], Order::C);
    write_npy(&files.v, &[1, 1, 1, 100_000], &vec![0.5f32; 100_000], Order::C);
    let o = run_with_outputs(&files, &["--out".as_ref(), files.out.as_os_str()], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("out: needs 372.53 GiB"), "{}", stderr(&o));
    assert!(!files.out.exists());
}

#[test]
fn bench_json_records_the_cpu_and_the_tiles() {
    // d = 64, N = 128: the tiled path with Br = Nq/2 = 64 on any CPU.
    let args = ["bench", "--q-len", "128", "--head-dim", "64", "--threads", "1", "--json"];
    let o = attn()
        .args(args)
        .args(["--reps", "2", "--err-rows", "2", "--peak-gflops", "100"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let row: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let tiles = attnlab::flash::TileConfig::for_shape(
        &attnlab::AttnShape::builder()
            .batch(1)
            .q_heads(8)
            .kv_heads(8)
            .q_len(128)
            .kv_len(128)
            .head_dim(64)
            .v_dim(64)
            .build()
            .unwrap(),
    );
    assert_eq!(tiles.br, 64);
    assert_eq!(row["tiles"], format!("{}x{}", tiles.br, tiles.bc), "{row}");
    assert_eq!(row["cpu"], attnlab::cpu::facts().summary(), "{row}");
    let naive = attn().args(args).args(["--kernel", "naive", "--reps", "1"]).output().unwrap();
    let row: serde_json::Value = serde_json::from_slice(&naive.stdout).unwrap();
    assert!(row["tiles"].is_null() && row["cpu"].is_string(), "{row}");
}
