//! `attn grad`: gradients on `.npy` files against the f64 oracle backward,
//! both layouts, f16 inputs, masks; input errors name the file, and no
//! output is written on failure.

use std::path::{Path, PathBuf};
use std::process::Output;

use attnlab::naive::{reference, reference_backward};
use attnlab::{AttnInputs, AttnParams, AttnShape, BackwardInputs, Element, Layout, Mask, f16};
use npyz::Order;
use rand::{SeedableRng, rngs::StdRng};

mod support;
use support::*;

struct GradFiles {
    base: Files,
    d_out: PathBuf,
    dq: PathBuf,
    dk: PathBuf,
    dv: PathBuf,
}

impl GradFiles {
    fn new() -> Self {
        let base = Files::new();
        let dir = base.q.parent().unwrap().to_path_buf();
        GradFiles {
            d_out: dir.join("do.npy"),
            dq: dir.join("dq.npy"),
            dk: dir.join("dk.npy"),
            dv: dir.join("dv.npy"),
            base,
        }
    }

    fn run(&self, extra: &[&str]) -> Output {
        let p = |x: &Path| x.as_os_str().to_owned();
        attn()
            .arg("grad")
            .args(["--q".into(), p(&self.base.q), "--k".into(), p(&self.base.k)])
            .args(["--v".into(), p(&self.base.v), "--do".into(), p(&self.d_out)])
            .args(["--dq".into(), p(&self.dq), "--dk".into(), p(&self.dk)])
            .args(["--dv".into(), p(&self.dv)])
            .args(extra)
            .output()
            .unwrap()
    }
}

fn shape(hq: usize, hkv: usize, nq: usize, nk: usize, d: usize, dv: usize) -> AttnShape {
    AttnShape::builder()
        .batch(2)
        .q_heads(hq)
        .kv_heads(hkv)
        .q_len(nq)
        .kv_len(nk)
        .head_dim(d)
        .v_dim(dv)
        .build()
        .unwrap()
}

/// Writes inputs, runs `attn grad`, and compares every gradient with the
/// oracle (|err| ≤ 2e-4·(1 + |want|): inputs in (−2, 2), sums over < 100
/// terms in f32).
fn check<T: npyz::AutoSerialize + Element>(
    s: AttnShape,
    layout: Layout,
    mask: Mask,
    flags: &[&str],
) {
    let f = GradFiles::new();
    let [q, k, v] = f.base.write::<T>(&s, layout, 31);
    let d_out = random(&mut StdRng::seed_from_u64(32), s.out_dims().iter().product());
    write_npy(&f.d_out, &layout.memory_dims(s.out_dims()), &d_out, Order::C);
    let lname = if layout == Layout::Bhnd { "bhnd" } else { "bnhd" };
    let mut args = vec!["--layout", lname, "--threads", "2", "--reps", "2"];
    args.extend_from_slice(flags);
    let o = f.run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.lines().filter(|l| l.starts_with("time_ms=")).count(), 2, "{stdout}");

    let p = AttnParams::with_mask(mask);
    let fwd = AttnInputs::from_slices(s, layout, &q, &k, &v).unwrap();
    let r = reference(&fwd, &p);
    let (out, lse): (Vec<f32>, Vec<f32>) =
        (r.out.iter().map(|&x| x as f32).collect(), r.lse.iter().map(|&x| x as f32).collect());
    // (the oracle reads O and the LSE only for their sizes)
    let inputs = BackwardInputs::from_slices(s, layout, &q, &k, &v, &out, &lse, &d_out).unwrap();
    let want = reference_backward(&inputs, &p);
    for (path, dims, w) in [
        (&f.dq, s.q_dims(), &want.dq),
        (&f.dk, s.k_dims(), &want.dk),
        (&f.dv, s.v_dims(), &want.dv),
    ] {
        let (got_shape, got) = read_f32(path);
        assert_eq!(got_shape, layout.memory_dims(dims).to_vec());
        let st = layout.strides(dims);
        let [nb, nh, n, d] = dims;
        for b in 0..nb {
            for h in 0..nh {
                for i in 0..n {
                    for c in 0..d {
                        let g = got[b * st[0] + h * st[1] + i * st[2] + c] as f64;
                        let x = w[((b * nh + h) * n + i) * d + c];
                        assert!(
                            (g - x).abs() <= 2e-4 * (1.0 + x.abs()),
                            "{}: {g} vs {x}",
                            path.display()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn gradients_match_the_oracle() {
    check::<f32>(shape(4, 2, 37, 90, 16, 24), Layout::Bhnd, Mask::Causal, &["--causal", "1"]);
    check::<f32>(shape(3, 3, 50, 50, 8, 8), Layout::Bnhd, Mask::None, &["--kernel", "naive"]);
    let w = Mask::Window { left: Some(5), right: Some(2) };
    check::<f16>(shape(2, 1, 70, 70, 32, 32), Layout::Bhnd, w, &["--window", "5,2"]);
    check::<f32>(shape(2, 2, 9, 12, 4, 4), Layout::Bhnd, Mask::None, &["--kernel", "oracle"]);
}

#[test]
fn a_do_of_the_wrong_shape_is_named_and_nothing_is_written() {
    let f = GradFiles::new();
    let s = shape(4, 2, 5, 7, 8, 8);
    f.base.write::<f32>(&s, Layout::Bhnd, 3);
    write_npy(&f.d_out, &[2, 4, 5, 6], &vec![0f32; 240], Order::C);
    let o = f.run(&[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("do.npy") && err.contains("d_out: expected 8 features (v_dim), got 6"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for p in [&f.dq, &f.dk, &f.dv] {
        assert!(!p.exists(), "{} written", p.display());
    }
    // an output naming an input is refused before anything is computed
    let o = attn()
        .arg("grad")
        .args(["--q".as_ref(), f.base.q.as_os_str(), "--k".as_ref(), f.base.k.as_os_str()])
        .args(["--v".as_ref(), f.base.v.as_os_str(), "--do".as_ref(), f.base.q.as_os_str()])
        .args(["--dq".as_ref(), f.base.k.as_os_str(), "--dk".as_ref(), f.dk.as_os_str()])
        .args(["--dv".as_ref(), f.dv.as_os_str()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--dq"), "{}", stderr(&o));
}
