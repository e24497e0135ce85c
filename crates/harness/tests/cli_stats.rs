//! `attn run --stats FILE`: the saturation statistics as an `.npz` of
//! `max_p`, `entropy` and `support` (`[B, Hq, Nq]` float32 each) against
//! the f64 oracle's, on flash's tiled and split-KV paths and the oracle
//! kernel, in either layout; written all-or-nothing with the other
//! outputs, and a clear error where the kernel computes none.

mod support;

use std::path::Path;

use attnlab::naive::reference_stats;
use attnlab::{AttnInputs, AttnParams, AttnShape, Layout};
use harness::npy_call::npz;
use support::*;

fn shape(hq: usize, hkv: usize, nq: usize, nk: usize) -> AttnShape {
    let b = AttnShape::builder().batch(2).q_heads(hq).kv_heads(hkv).q_len(nq).kv_len(nk);
    b.head_dim(16).v_dim(8).build().unwrap()
}

/// The `.npz`'s three arrays, checked for names and shape.
fn read_stats(path: &Path, shape: &AttnShape) -> [Vec<f32>; 3] {
    let arrays = npz::read_f32(path).unwrap();
    let names: Vec<_> = arrays.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["max_p", "entropy", "support"]);
    let want = vec![shape.batch(), shape.q_heads(), shape.q_len()];
    for a in &arrays {
        assert_eq!(a.shape, want, "{}", a.name);
    }
    let mut it = arrays.into_iter().map(|a| a.data);
    [it.next().unwrap(), it.next().unwrap(), it.next().unwrap()]
}

#[test]
fn stats_match_the_oracle_on_every_path_and_layout() {
    // Nq = 40: flash's tiled path; Nq = 3: split-KV; row 0 of the causal
    // Nq = 40 > Nk = 30 call sees nothing
    for (s, causal) in
        [(shape(4, 2, 40, 30), "1"), (shape(6, 3, 3, 700), "1"), (shape(4, 1, 3, 9), "0")]
    {
        for layout in [Layout::Bhnd, Layout::Bnhd] {
            let files = Files::new();
            let [q, k, v] = files.write::<f32>(&s, layout, 7);
            let inputs = AttnInputs::from_slices(s, layout, &q, &k, &v).unwrap();
            let params = if causal == "1" { AttnParams::causal() } else { AttnParams::default() };
            let want = reference_stats(&inputs, &params);
            let stats = files.out.with_file_name("stats.npz");
            let lname = if layout == Layout::Bhnd { "bhnd" } else { "bnhd" };
            for kernel in ["flash", "oracle"] {
                let o = files.run(&[
                    "--kernel",
                    kernel,
                    "--causal",
                    causal,
                    "--layout",
                    lname,
                    "--stats",
                    stats.to_str().unwrap(),
                ]);
                assert!(o.status.success(), "{}", stderr(&o));
                let [p, h, sup] = read_stats(&stats, &s);
                // |logits| < 2·2·16/4 = 16: the flash statistics are within
                // ~1e-5 of the f64 ones (tests/stats.rs has the model);
                // the oracle's are the f64 ones rounded to f32
                let tol = if kernel == "flash" { 1e-4 } else { 1e-6 };
                for r in 0..p.len() {
                    let (wp, wh) = (want.max_p[r], want.entropy[r]);
                    assert!((p[r] as f64 - wp).abs() <= tol * wp.max(1e-3), "{kernel} {r}");
                    assert!((h[r] as f64 - wh).abs() <= tol * (1.0 + wh), "{kernel} {r}");
                    assert_eq!(sup[r], h[r].exp(), "support = exp(entropy)");
                }
                if s.q_len() > s.kv_len() {
                    assert_eq!((p[0], h[0], sup[0]), (0.0, 0.0, 1.0), "a row with no key");
                }
            }
        }
    }
}

#[test]
fn stats_follow_the_modifiers() {
    let s = shape(4, 2, 2, 600);
    let files = Files::new();
    let [q, k, v] = files.write::<f32>(&s, Layout::Bhnd, 8);
    let sinks = [0.5f32, -1.0, 2.0, 30.0];
    let sinks_path = files.out.with_file_name("sinks.npy");
    write_npy(&sinks_path, &[4], &sinks, npyz::Order::C);
    let stats = files.out.with_file_name("stats.npz");
    let o = files.run(&[
        "--softcap",
        "3",
        "--alibi",
        "--sinks",
        sinks_path.to_str().unwrap(),
        "--stats",
        stats.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let inputs = AttnInputs::from_slices(s, Layout::Bhnd, &q, &k, &v).unwrap();
    let params = AttnParams {
        softcap: Some(3.0),
        alibi: Some(attnlab::Alibi::Default),
        sinks: Some(&sinks),
        ..Default::default()
    };
    let want = reference_stats(&inputs, &params);
    let [p, h, _] = read_stats(&stats, &s);
    for r in 0..p.len() {
        assert!((p[r] as f64 - want.max_p[r]).abs() <= 1e-4 * want.max_p[r], "{r}");
        assert!((h[r] as f64 - want.entropy[r]).abs() <= 1e-4 * (1.0 + want.entropy[r]), "{r}");
    }
    // head 3's sink (30) takes nearly all the mass
    assert!(p[3 * 2] > 0.99 && p[3 * 2 + 1] > 0.99, "{p:?}");
}

#[test]
fn the_naive_kernel_is_a_clear_error_and_nothing_is_touched() {
    let files = valid_files();
    let stats = files.out.with_file_name("stats.npz");
    std::fs::write(&stats, b"precious").unwrap();
    std::fs::write(&files.out, b"precious o").unwrap();
    let o = files.run(&["--kernel", "naive", "--stats", stats.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("--stats: kernel naive computes no statistics"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(std::fs::read(&stats).unwrap(), b"precious");
    assert_eq!(std::fs::read(&files.out).unwrap(), b"precious o");
}

#[test]
fn stats_are_all_or_nothing_with_the_other_outputs() {
    let files = valid_files();
    let dir = files.out.parent().unwrap().to_path_buf();
    let stats = dir.join("stats.npz");
    std::fs::write(&stats, b"precious stats").unwrap();
    std::fs::write(&files.out, b"precious o").unwrap();
    let names = || {
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let before = names();
    let s = stats.to_str().unwrap();
    // the same file as --out, as an input, or in a missing directory:
    // refused before any compute
    for (extra, needle) in [
        (
            vec!["--stats", files.out.to_str().unwrap()],
            "--stats names the same file as the output --out",
        ),
        (
            vec!["--stats", files.q.to_str().unwrap()],
            "--stats names the same file as the input --q",
        ),
        (vec!["--stats", "/nonexistent/s.npz"], "does not exist"),
    ] {
        let o = files.run(&extra);
        assert_eq!(o.status.code(), Some(2), "{extra:?}");
        assert!(stderr(&o).contains(needle), "{extra:?}: {}", stderr(&o));
        assert_eq!(names(), before, "{extra:?}");
    }
    // a failing run (a non-finite input) leaves every output as it was
    let shape = [1, 4, 5, 8];
    let mut q: Vec<f32> = vec![0.5; 4 * 5 * 8];
    q[9] = f32::NAN;
    write_npy(&files.q, &shape, &q, npyz::Order::C);
    let o = files.run(&["--stats", s]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("non-finite"), "{}", stderr(&o));
    assert_eq!(names(), before);
    assert_eq!(std::fs::read(&stats).unwrap(), b"precious stats");
    assert_eq!(std::fs::read(&files.out).unwrap(), b"precious o");
    // with --no-check-finite the NaN row's statistics are NaN, the rest defined
    let o = files.run(&["--stats", s, "--no-check-finite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let arrays = npz::read_f32(&stats).unwrap();
    let h = &arrays[1].data;
    assert!(h[1].is_nan() && h.iter().filter(|x| x.is_nan()).count() == 1, "{h:?}");
}
