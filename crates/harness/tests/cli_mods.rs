//! The score-modifier flags of `attn run`, `attn grad`, `attn bench` and
//! `attn decode`: each flag against the f64 oracle of `attnlab::naive`
//! given the same modifiers directly (`AttnParams`), every kernel and path
//! (flash tiled and split-KV), in both layouts (the bias file is C order
//! `[B|1, Hq|1, Nq, Nk]` whatever `--layout`); every bad input is exit 2
//! with one line naming the file or the flag, and leaves what was on disk
//! as it was.

use std::path::{Path, PathBuf};
use std::process::Output;

use attnlab::naive::{reference, reference_backward};
use attnlab::{
    Alibi, AttnInputs, AttnParams, AttnShape, BackwardInputs, Layout, Mask, TensorView, f16,
};
use npyz::Order;
use rand::{SeedableRng, rngs::StdRng};

mod support;
use support::*;

/// The modifiers of one case, as files and flags and as `AttnParams`.
#[derive(Clone, Default)]
struct Mods {
    softcap: Option<f32>,
    alibi: bool,
    slopes: Option<Vec<f32>>,
    sinks: Option<Vec<f32>>,
    /// `(dims, values)`, C order.
    bias: Option<([usize; 4], Vec<f32>)>,
}

impl Mods {
    fn params(&self, mask: Mask) -> AttnParams<'_> {
        AttnParams {
            mask,
            softcap: self.softcap,
            alibi: match (&self.slopes, self.alibi) {
                (Some(s), _) => Some(Alibi::Slopes(s)),
                (None, true) => Some(Alibi::Default),
                (None, false) => None,
            },
            sinks: self.sinks.as_deref(),
            bias: self
                .bias
                .as_ref()
                .map(|(dims, b)| TensorView::new("bias", b, *dims, Layout::Bhnd).unwrap()),
            ..Default::default()
        }
    }
}

/// A scratch directory with Q, K, V (and the modifiers' files once
/// written), and the flags that name them.
struct Case {
    files: Files,
    dir: PathBuf,
    shape: AttnShape,
    layout: Layout,
    qkv: [Vec<f32>; 3],
}

impl Case {
    fn new(shape: AttnShape, layout: Layout, seed: u64) -> Case {
        let files = Files::new();
        let qkv = files.write::<f32>(&shape, layout, seed);
        let dir = files.q.parent().unwrap().to_path_buf();
        Case { files, dir, shape, layout, qkv }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes the modifiers' files; returns their flags.
    fn flags(&self, m: &Mods) -> Vec<String> {
        let mut f = Vec::new();
        if let Some(c) = m.softcap {
            f.extend(["--softcap".into(), c.to_string()]);
        }
        if m.alibi {
            f.push("--alibi".into());
        }
        let mut file = |flag: &str, name: &str, shape: &[usize], v: &[f32]| {
            let p = self.path(name);
            write_npy(&p, shape, v, Order::C);
            f.extend([flag.to_string(), p.display().to_string()]);
        };
        if let Some(s) = &m.slopes {
            file("--alibi-slopes", "slopes.npy", &[s.len()], s);
        }
        if let Some(s) = &m.sinks {
            file("--sinks", "sinks.npy", &[s.len()], s);
        }
        if let Some((dims, b)) = &m.bias {
            file("--bias", "bias.npy", dims, b);
        }
        f
    }

    fn layout_flag(&self) -> &'static str {
        if self.layout == Layout::Bhnd { "bhnd" } else { "bnhd" }
    }

    /// `attn run` with `flags` (the layout added).
    fn run(&self, flags: &[String]) -> Output {
        let mut args: Vec<&str> = vec!["--layout", self.layout_flag()];
        args.extend(flags.iter().map(String::as_str));
        self.files.run(&args)
    }

    /// `attn run --kernel kernel` with `m` against the oracle given `m`
    /// directly: O and LSE within `tol`.
    fn check(&self, m: &Mods, mask: Mask, mask_flags: &[&str], kernel: &str, tol: f64) {
        let mut flags: Vec<String> =
            ["--kernel", kernel, "--threads", "2"].iter().map(|s| s.to_string()).collect();
        flags.extend(mask_flags.iter().map(|s| s.to_string()));
        flags.extend(self.flags(m));
        let o = self.run(&flags);
        assert!(o.status.success(), "{flags:?}: {}", stderr(&o));
        let s = self.shape;
        let inputs =
            AttnInputs::from_slices(s, self.layout, &self.qkv[0], &self.qkv[1], &self.qkv[2])
                .unwrap();
        let want = reference(&inputs, &m.params(mask));
        let (oshape, out) = read_f32(&self.files.out);
        assert_eq!(oshape, self.layout.memory_dims(s.out_dims()));
        let (_, lse) = read_f32(&self.files.lse);
        let dims = s.out_dims();
        let st = self.layout.strides(dims);
        let [nb, nh, n, dv] = dims;
        let mut worst = (0f64, String::new());
        for b in 0..nb {
            for h in 0..nh {
                for i in 0..n {
                    let r = (b * nh + h) * n + i;
                    let l = (lse[r] as f64, want.lse[r]);
                    let e = if l.1 == f64::NEG_INFINITY {
                        if l.0 == f64::NEG_INFINITY { 0.0 } else { f64::INFINITY }
                    } else {
                        (l.0 - l.1).abs()
                    };
                    if e.is_nan() || e > worst.0 {
                        worst = (e, format!("lse ({b}, {h}, {i}): {} vs {}", l.0, l.1));
                    }
                    for c in 0..dv {
                        let g = out[b * st[0] + h * st[1] + i * st[2] + c] as f64;
                        let w = want.out[r * dv + c];
                        let e = (g - w).abs();
                        if e.is_nan() || e > worst.0 {
                            worst = (e, format!("out ({b}, {h}, {i}, {c}): {g} vs {w}"));
                        }
                    }
                }
            }
        }
        assert!(worst.0 <= tol, "{kernel} {flags:?}: max abs error {:e} at {}", worst.0, worst.1);
    }
}

fn shape(b: usize, hq: usize, hkv: usize, nq: usize, nk: usize, d: usize, dv: usize) -> AttnShape {
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

/// Seeded values in (−2, 2).
fn values(n: usize, seed: u64) -> Vec<f32> {
    random(&mut StdRng::seed_from_u64(seed), n)
}

/// Tolerances (max abs, O and LSE) against the f64 oracle, inputs in
/// (−2, 2): as `tests/cli.rs`; the modifiers add one f32 rounding per
/// score (bias, ALiBi) and tanh's ~3e-7 relative error (softcap).
const ORACLE: (&str, f64) = ("oracle", 1e-6);
const NAIVE: (&str, f64) = ("naive", 2e-6);
const FLASH: (&str, f64) = ("flash", 2e-5);

/// The modifiers one at a time and together, broadcast biases, a −inf
/// bias entry: every kernel (flash on its tiled path, Nq > 16), both
/// layouts.
#[test]
fn run_flags_match_the_oracle() {
    // B = 2, GQA 4/2, Nq = 20 < Nk = 37, d = 16, dv = 8
    let s = shape(2, 4, 2, 20, 37, 16, 8);
    let full = |seed| ([2, 4, 20, 37], values(2 * 4 * 20 * 37, seed));
    let mut one_row = values(20 * 37, 3);
    // key 5 masked for every query by the bias; row 0 keeps key 4
    for i in 0..20 {
        one_row[i * 37 + 5] = f32::NEG_INFINITY;
    }
    let none: (Mask, &[&str]) = (Mask::None, &[]);
    let causal: (Mask, &[&str]) = (Mask::Causal, &["--causal", "1"]);
    let window: (Mask, &[&str]) =
        (Mask::Window { left: Some(6), right: Some(2) }, &["--window", "6,2"]);
    let cases: Vec<(Mods, (Mask, &[&str]))> = vec![
        (Mods { softcap: Some(2.5), ..Default::default() }, none),
        (Mods { alibi: true, ..Default::default() }, causal),
        (Mods { slopes: Some(vec![0.5, 0.25, -0.1, 1.0]), ..Default::default() }, window),
        (Mods { sinks: Some(vec![0.5, -1.0, 2.0, 0.0]), ..Default::default() }, causal),
        (Mods { bias: Some(full(1)), ..Default::default() }, none),
        (
            Mods { bias: Some(([1, 4, 20, 37], values(4 * 20 * 37, 2))), ..Default::default() },
            causal,
        ),
        (
            Mods { bias: Some(([2, 1, 20, 37], values(2 * 20 * 37, 4))), ..Default::default() },
            window,
        ),
        (Mods { bias: Some(([1, 1, 20, 37], one_row)), ..Default::default() }, none),
        (
            Mods {
                softcap: Some(3.0),
                alibi: true,
                sinks: Some(vec![1.0, 0.0, -0.5, 3.0]),
                bias: Some(full(5)),
                ..Default::default()
            },
            causal,
        ),
    ];
    for (layout, seed) in [(Layout::Bhnd, 10), (Layout::Bnhd, 11)] {
        let case = Case::new(s, layout, seed);
        for (m, (mask, flags)) in &cases {
            for (kernel, tol) in [ORACLE, NAIVE, FLASH] {
                case.check(m, *mask, flags, kernel, tol);
            }
        }
    }
}

/// f16 slopes, sinks and bias files are widened exactly.
#[test]
fn float16_modifier_files_are_widened() {
    let s = shape(1, 2, 2, 18, 18, 8, 8);
    let case = Case::new(s, Layout::Bhnd, 20);
    let h = |v: Vec<f32>| v.iter().map(|x| f16::from_f32(*x)).collect::<Vec<f16>>();
    let (sinks, bias) = (h(vec![0.75, -0.5]), h(values(18 * 18, 21)));
    write_npy(&case.path("sinks.npy"), &[2], &sinks, Order::C);
    write_npy(&case.path("bias.npy"), &[1, 1, 18, 18], &bias, Order::C);
    let m = Mods {
        sinks: Some(sinks.iter().map(|x| x.to_f32()).collect()),
        bias: Some(([1, 1, 18, 18], bias.iter().map(|x| x.to_f32()).collect())),
        ..Default::default()
    };
    let p = |n: &str| case.path(n).display().to_string();
    let flags: Vec<String> =
        ["--kernel", "oracle", "--sinks", &p("sinks.npy"), "--bias", &p("bias.npy")]
            .map(String::from)
            .to_vec();
    assert!(case.run(&flags).status.success());
    let inputs =
        AttnInputs::from_slices(s, Layout::Bhnd, &case.qkv[0], &case.qkv[1], &case.qkv[2]).unwrap();
    let want = reference(&inputs, &m.params(Mask::None));
    let (_, out) = read_f32(&case.files.out);
    let err = out.iter().zip(&want.out).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
    assert!(err <= 1e-6, "{err}");
}

// --- errors: exit 2, one line naming the file or the flag, nothing lost

/// Old contents in both outputs; runs `flags` and checks the failure: exit
/// 2, one line containing `needles`, the outputs as they were, no stray
/// file.
fn expect_refused(case: &Case, flags: &[String], needles: &[&str]) {
    std::fs::write(&case.files.out, "old out").unwrap();
    std::fs::write(&case.files.lse, "old lse").unwrap();
    let before = listing(&case.dir);
    let o = case.run(flags);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{flags:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{flags:?}: {n:?} not in {err:?}");
    }
    assert_eq!(std::fs::read_to_string(&case.files.out).unwrap(), "old out");
    assert_eq!(std::fs::read_to_string(&case.files.lse).unwrap(), "old lse");
    assert_eq!(listing(&case.dir), before, "{flags:?}: files appeared or vanished");
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn bad_softcap_names_the_flag() {
    let case = Case::new(shape(1, 4, 2, 5, 7, 8, 8), Layout::Bhnd, 30);
    for c in ["0", "-1", "nan", "inf"] {
        let flags = strings(&["--kernel", "oracle", "--softcap", c]);
        expect_refused(&case, &flags, &["--softcap", "must be finite and > 0"]);
    }
}

#[test]
fn bad_per_head_files_name_the_file_and_the_flag() {
    let case = Case::new(shape(1, 4, 2, 5, 7, 8, 8), Layout::Bhnd, 31);
    let p = case.path("x.npy");
    let x = p.display().to_string();
    for flag in ["--alibi-slopes", "--sinks"] {
        let flags = strings(&["--kernel", "oracle", flag, &x]);
        let _ = std::fs::remove_file(&p);
        expect_refused(&case, &flags, &[&x, "no such file"]);
        write_npy(&p, &[3], &[0.5f32; 3], Order::C);
        expect_refused(&case, &flags, &[&x, flag, "4 values (one per query head)", "(3,)"]);
        write_npy(&p, &[1, 4], &[0.5f32; 4], Order::C);
        expect_refused(&case, &flags, &[&x, flag, "1-d", "(1, 4)"]);
        write_npy(&p, &[4], &[0.5f32, 1.0, f32::INFINITY, 0.0], Order::C);
        expect_refused(&case, &flags, &[&x, flag, "finite", "inf", "query head 2"]);
        write_npy(&p, &[4], &[0.5f64; 4], Order::C);
        expect_refused(&case, &flags, &[&x, "float64", "not supported"]);
        std::fs::write(&p, "0.5 0.5 0.5 0.5\n").unwrap();
        expect_refused(&case, &flags, &[&x, "not a valid .npy"]);
    }
}

#[test]
fn bad_bias_files_name_the_file() {
    let case = Case::new(shape(2, 4, 2, 5, 7, 8, 8), Layout::Bnhd, 32);
    let p = case.path("b.npy");
    let b = p.display().to_string();
    let flags = strings(&["--kernel", "oracle", "--bias", &b]);
    for dims in [vec![5, 7], vec![2, 4, 5, 6], vec![3, 4, 5, 7], vec![2, 2, 5, 7], vec![2, 4, 7, 5]]
    {
        write_npy(&p, &dims, &vec![0.5f32; dims.iter().product()], Order::C);
        // a bnhd-shaped bias is not read as one: C order whatever --layout
        expect_refused(&case, &flags, &[&b, "--bias", "[2|1, 4|1, 5, 7]", "C order"]);
    }
    write_npy(&p, &[1, 1, 5, 7], &[1i32; 35], Order::C);
    expect_refused(&case, &flags, &[&b, "int32", "not supported"]);
    // a NaN that a row reads, named by its index in the bias file
    let at = |h: usize, i: usize, j: usize| (h * 5 + i) * 7 + j; // in [1, 4, 5, 7]
    let mut v = vec![0.25f32; 4 * 5 * 7];
    for kernel in ["oracle", "naive", "flash"] {
        let flags = strings(&["--kernel", kernel, "--bias", &b]);
        v[at(1, 2, 3)] = f32::NAN;
        write_npy(&p, &[1, 4, 5, 7], &v, Order::C);
        expect_refused(&case, &flags, &[&b, "NaN", "(0, 1, 2, 3)", "--no-check-finite"]);
        v[at(1, 2, 3)] = f32::INFINITY;
        write_npy(&p, &[1, 4, 5, 7], &v, Order::C);
        expect_refused(&case, &flags, &[&b, "inf", "(0, 1, 2, 3)"]);
    }
    // a NaN that no row reads (causal: row 0 sees keys ..= 2) is no error
    v[at(1, 2, 3)] = 0.25;
    v[at(1, 0, 6)] = f32::NAN;
    write_npy(&p, &[1, 4, 5, 7], &v, Order::C);
    let mut causal = flags.clone();
    causal.extend(strings(&["--causal", "1"]));
    let o = case.run(&causal);
    assert!(o.status.success(), "{}", stderr(&o));
    // without a mask and without the check, it reaches its row only (in
    // both batch entries: the bias broadcasts over the batch)
    let mut unchecked = flags.clone();
    unchecked.push("--no-check-finite".into());
    assert!(case.run(&unchecked).status.success());
    let (_, out) = read_f32(&case.files.out);
    // bnhd: O is [B, Nq, Hq, dv]
    let row = |b: usize, h: usize, i: usize| &out[((b * 5 + i) * 4 + h) * 8..][..8];
    assert!(row(0, 1, 0).iter().all(|x| x.is_nan()));
    assert!(row(1, 1, 0).iter().all(|x| x.is_nan()));
    assert!(row(0, 0, 0).iter().chain(row(0, 1, 1)).all(|x| x.is_finite()));
}

#[test]
fn modifier_files_cannot_be_outputs_and_alibi_flags_conflict() {
    let case = Case::new(shape(1, 4, 2, 5, 7, 8, 8), Layout::Bhnd, 33);
    write_npy(&case.path("sinks.npy"), &[4], &[0.5f32; 4], Order::C);
    let sinks = case.path("sinks.npy").display().to_string();
    let o = attn()
        .arg("run")
        .args(["--q".as_ref(), case.files.q.as_os_str()])
        .args(["--k".as_ref(), case.files.k.as_os_str()])
        .args(["--v".as_ref(), case.files.v.as_os_str()])
        .args(["--out", &sinks, "--sinks", &sinks])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("same file as the input --sinks"), "{}", stderr(&o));
    let (_, s) = read_f32(&case.path("sinks.npy"));
    assert_eq!(s, vec![0.5; 4], "the input survives");
    // --alibi and --alibi-slopes: clap's conflict, exit 2
    let o = case.run(&strings(&["--alibi", "--alibi-slopes", &sinks]));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
}

#[test]
fn help_documents_the_modifier_flags() {
    for (sub, extra) in [("run", &[][..]), ("grad", &["--dsinks"][..])] {
        let o = attn().args([sub, "--help"]).output().unwrap();
        let help = String::from_utf8(o.stdout).unwrap();
        for flag in ["--softcap", "--alibi", "--alibi-slopes", "--sinks", "--bias", "C order"]
            .iter()
            .chain(extra)
        {
            assert!(help.contains(flag), "attn {sub} --help lacks {flag}:\n{help}");
        }
    }
    for sub in ["bench", "decode"] {
        let o = attn().args([sub, "--help"]).output().unwrap();
        let help = String::from_utf8(o.stdout).unwrap();
        for flag in ["--softcap", "--alibi", "--alibi-slopes", "--sinks", "--bias", "random"] {
            assert!(help.contains(flag), "attn {sub} --help lacks {flag}:\n{help}");
        }
    }
}

// --- attn grad

/// `attn grad`'s files in `case`'s directory.
struct Grad<'a> {
    case: &'a Case,
    d_out: Vec<f32>,
}

impl<'a> Grad<'a> {
    fn new(case: &'a Case) -> Self {
        let d_out = values(case.shape.out_dims().iter().product(), 40);
        write_npy(
            &case.path("do.npy"),
            &case.layout.memory_dims(case.shape.out_dims()),
            &d_out,
            Order::C,
        );
        Grad { case, d_out }
    }

    fn run(&self, flags: &[String]) -> Output {
        let c = self.case;
        let p = |n: &str| c.path(n).into_os_string();
        attn()
            .arg("grad")
            .args(["--q".as_ref(), c.files.q.as_os_str(), "--k".as_ref(), c.files.k.as_os_str()])
            .args(["--v".as_ref(), c.files.v.as_os_str()])
            .args(["--do".into(), p("do.npy"), "--dq".into(), p("dq.npy")])
            .args(["--dk".into(), p("dk.npy"), "--dv".into(), p("dv.npy")])
            .args(["--layout", c.layout_flag()])
            .args(flags)
            .output()
            .unwrap()
    }

    /// Runs `kernel` with `m` (and --dsinks when `m` has sinks) and checks
    /// dQ, dK, dV against the oracle's backward given `m` directly, and
    /// dsinks against `−Σ_{b,i} exp(sink_h − lse_i)·(dO_i·O_i)` over the
    /// oracle's forward (|err| ≤ tol·(1 + |want|)).
    fn check(&self, m: &Mods, mask: Mask, mask_flags: &[&str], kernel: &str, tol: f64) {
        let c = self.case;
        let s = c.shape;
        let mut flags = strings(&["--kernel", kernel, "--threads", "2"]);
        flags.extend(strings(mask_flags));
        flags.extend(c.flags(m));
        if m.sinks.is_some() {
            flags.extend(["--dsinks".into(), c.path("ds.npy").display().to_string()]);
        }
        let o = self.run(&flags);
        assert!(o.status.success(), "{flags:?}: {}", stderr(&o));
        let params = m.params(mask);
        let fwd = AttnInputs::from_slices(s, c.layout, &c.qkv[0], &c.qkv[1], &c.qkv[2]).unwrap();
        let r = reference(&fwd, &params);
        let (out, lse): (Vec<f32>, Vec<f32>) =
            (r.out.iter().map(|&x| x as f32).collect(), r.lse.iter().map(|&x| x as f32).collect());
        // `reference` returns O as [B, Hq, Nq, dv]: a bhnd view of it
        let inputs = BackwardInputs::new(
            fwd,
            TensorView::new("out", &out, s.out_dims(), Layout::Bhnd).unwrap(),
            &lse,
            TensorView::new("d_out", &self.d_out, s.out_dims(), c.layout).unwrap(),
        )
        .unwrap();
        let want = reference_backward(&inputs, &params);
        let close = |g: f64, w: f64| (g - w).abs() <= tol * (1.0 + w.abs());
        for (name, dims, w) in [
            ("dq.npy", s.q_dims(), &want.dq),
            ("dk.npy", s.k_dims(), &want.dk),
            ("dv.npy", s.v_dims(), &want.dv),
        ] {
            let (shape, got) = read_f32(&c.path(name));
            assert_eq!(shape, c.layout.memory_dims(dims).to_vec());
            let st = c.layout.strides(dims);
            let [nb, nh, n, d] = dims;
            for b in 0..nb {
                for h in 0..nh {
                    for i in 0..n {
                        for x in 0..d {
                            let g = got[b * st[0] + h * st[1] + i * st[2] + x] as f64;
                            let w = w[((b * nh + h) * n + i) * d + x];
                            assert!(close(g, w), "{kernel} {flags:?} {name}: {g} vs {w}");
                        }
                    }
                }
            }
        }
        if let Some(sinks) = &m.sinks {
            let (shape, got) = read_f32(&c.path("ds.npy"));
            assert_eq!(shape, vec![s.q_heads()]);
            let (nb, hq, nq, dv) = (s.batch(), s.q_heads(), s.q_len(), s.v_dim());
            let ost = c.layout.strides(s.out_dims());
            for h in 0..hq {
                let mut w = 0f64;
                for b in 0..nb {
                    for i in 0..nq {
                        let row = (b * hq + h) * nq + i;
                        let dd: f64 = (0..dv)
                            .map(|x| {
                                let o = r.out[row * dv + x];
                                let g = self.d_out[b * ost[0] + h * ost[1] + i * ost[2] + x];
                                o * g as f64
                            })
                            .sum();
                        w -= (sinks[h] as f64 - r.lse[row]).exp() * dd;
                    }
                }
                assert!(close(got[h] as f64, w), "{kernel} dsinks[{h}]: {} vs {w}", got[h]);
            }
        }
    }
}

#[test]
fn grad_writes_dsinks_all_or_nothing() {
    let s = shape(2, 4, 2, 20, 24, 8, 8);
    let case = Case::new(s, Layout::Bnhd, 50);
    let g = Grad::new(&case);
    let m = Mods { sinks: Some(vec![0.5, -1.0, 2.0, 0.0]), ..Default::default() };
    let mut flags = case.flags(&m);
    let ds = case.path("ds.npy").display().to_string();
    flags.extend(strings(&["--kernel", "oracle", "--dsinks", &ds]));
    let o = g.run(&flags);
    assert!(o.status.success(), "{}", stderr(&o));
    let (shape, _) = read_f32(&case.path("ds.npy"));
    assert_eq!(shape, vec![4], "one gradient per query head");

    // a failure leaves every output, dsinks included, as it was
    let outs = ["dq.npy", "dk.npy", "dv.npy", "ds.npy"];
    for n in outs {
        std::fs::write(case.path(n), format!("old {n}")).unwrap();
    }
    let sinks = case.path("sinks.npy").display().to_string();
    write_npy(&case.path("sinks.npy"), &[3], &[0.5f32; 3], Order::C);
    let bias = case.path("bias.npy");
    write_npy(&bias, &[2, 4, 20, 23], &vec![0f32; 2 * 4 * 20 * 23], Order::C);
    let b = bias.display().to_string();
    let before = listing(&case.dir);
    let refused = |flags: &[String], needles: &[&str]| {
        let o = g.run(flags);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        for n in needles {
            assert!(err.contains(n), "{n:?} not in {err:?}");
        }
        for n in outs {
            assert_eq!(std::fs::read_to_string(case.path(n)).unwrap(), format!("old {n}"));
        }
        assert_eq!(listing(&case.dir), before);
    };
    refused(&strings(&["--sinks", &sinks, "--dsinks", &ds]), &[&sinks, "--sinks", "(3,)"]);
    refused(&strings(&["--dsinks", &ds]), &["--dsinks needs --sinks"]);
    refused(&strings(&["--softcap", "-2", "--dsinks", &ds]), &["--softcap"]);
    refused(
        &strings(&["--sinks", &sinks, "--dsinks", &sinks]),
        &["same file as the input --sinks"],
    );
    refused(&strings(&["--bias", &b]), &[&b, "[2|1, 4|1, 20, 24]"]);
}

/// Every modifier alone and all together (with the sinks' gradient)
/// through `attn grad`, against the oracle's backward: every kernel, both
/// layouts.
#[test]
fn grad_flags_match_the_oracle_backward() {
    grad_cases(&["oracle", "naive", "flash"]);
}

fn all_mods(hq: usize, nq: usize, nk: usize) -> Mods {
    Mods {
        softcap: Some(3.0),
        alibi: true,
        sinks: Some(values(hq, 60)),
        bias: Some(([1, hq, nq, nk], values(hq * nq * nk, 61))),
        ..Default::default()
    }
}

fn grad_cases(kernels: &[&str]) {
    for layout in [Layout::Bhnd, Layout::Bnhd] {
        let case = Case::new(shape(2, 4, 2, 20, 24, 8, 8), layout, 64);
        let g = Grad::new(&case);
        for kernel in kernels {
            for (m, mask, flags) in [
                (all_mods(4, 20, 24), Mask::Causal, &["--causal", "1"][..]),
                (Mods { softcap: Some(1.5), ..Default::default() }, Mask::None, &[][..]),
                (Mods { slopes: Some(values(4, 66)), ..Default::default() }, Mask::None, &[][..]),
                (Mods { sinks: Some(values(4, 65)), ..Default::default() }, Mask::None, &[][..]),
                (
                    Mods {
                        bias: Some(([2, 1, 20, 24], values(2 * 20 * 24, 67))),
                        ..Default::default()
                    },
                    Mask::Window { left: Some(4), right: Some(4) },
                    &["--window", "4,4"][..],
                ),
            ] {
                g.check(&m, mask, flags, kernel, 2e-4);
            }
        }
    }
}

/// The flash kernel's split-KV path (Nq ≤ 16, decode-like calls) with the
/// modifiers, next to the oracle and naive kernels.
#[test]
fn split_kv_path_matches_the_oracle() {
    for nq in [8, 1] {
        let case = Case::new(shape(2, 4, 2, nq, 24, 16, 8), Layout::Bhnd, 62);
        for (kernel, tol) in [ORACLE, NAIVE, FLASH] {
            case.check(&all_mods(4, nq, 24), Mask::Causal, &["--causal", "1"], kernel, tol);
            let sinks = Mods { sinks: Some(values(4, 63)), ..Default::default() };
            case.check(&sinks, Mask::None, &[], kernel, tol);
        }
    }
}

// --- attn bench and attn decode: generated modifiers

#[test]
fn bench_records_its_modifiers_and_checks_against_them() {
    let o = attn()
        .args(["bench", "--q-len", "64", "--head-dim", "16", "--q-heads", "4", "--kv-heads", "2"])
        .args(["--causal", "1", "--threads", "1", "--reps", "2", "--err-rows", "8"])
        .args(["--peak-gflops", "100", "--json"])
        .args(["--softcap", "30", "--alibi", "--sinks", "0.5", "--bias", "random"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let row: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        row["id"],
        "prefill/flash/gqa/causal/d16/f32/t1/h4x2/softcap30+alibi+sinks0.5+bias/64"
    );
    assert_eq!(
        row["mods"],
        serde_json::json!({"softcap": 30.0, "alibi": "default", "sinks": {"values": [0.5]},
                           "bias": "random"})
    );
    let err = row["max_abs_err"].as_f64().unwrap();
    assert!(err < 1e-5, "{row}");
    assert!(row["bias_read_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{row}");
    // a plain bench row has neither field
    let o = attn()
        .args(["bench", "--q-len", "32", "--head-dim", "16", "--threads", "1", "--reps", "1"])
        .args(["--peak-gflops", "100", "--json"])
        .output()
        .unwrap();
    let row: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(row.get("mods").is_none() && row.get("bias_read_ms").is_none(), "{row}");
}

#[test]
fn bench_and_decode_refuse_bad_modifiers_in_one_line() {
    let bench = ["bench", "--q-len", "32", "--head-dim", "16", "--threads", "1"];
    let decode =
        ["decode", "--kv-len", "64", "--q-heads", "4", "--kv-heads", "2", "--threads", "1"];
    for (base, flags, needle) in [
        (&bench[..], &["--softcap", "-1"][..], "--softcap: must be finite and > 0"),
        (&bench[..], &["--bias", "b.npy"][..], "--bias: expected `random`"),
        (
            &bench[..],
            &["--sinks", "1,2,3"][..],
            "--sinks: expected 1 value or one per query head (8), got 3",
        ),
        (&bench[..], &["--alibi-slopes", "0.5,x"][..], "--alibi-slopes: 'x' is not a number"),
        (&decode[..], &["--bias", "random"][..], "--bias: decode takes no bias"),
        (&decode[..], &["--sinks", "nan"][..], "--sinks: values must be finite"),
        (&decode[..], &["--alibi-slopes", "1,2"][..], "one per query head (4), got 2"),
    ] {
        let o = attn().args(base).args(flags).output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        // (a debug build's warning comes first, on a line of its own)
        let lines = err.lines().filter(|l| !l.contains(": warning: ")).count();
        assert_eq!(lines, 1, "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
}

#[test]
fn decode_records_its_modifiers() {
    let o = attn()
        .args([
            "decode",
            "--kv-len",
            "256",
            "--q-heads",
            "4",
            "--kv-heads",
            "2",
            "--head-dim",
            "16",
        ])
        .args(["--threads", "1", "--warmup", "1", "--reps", "1", "--json"])
        .args(["--softcap", "20", "--alibi-slopes", "0.5", "--sinks", "random"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let row: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(row["id"], "decode/flash/gqa/f32/t1/h4x2/d16/softcap20+alibi0.5+sinks/256");
    assert_eq!(
        row["mods"],
        serde_json::json!({"softcap": 20.0, "alibi": {"values": [0.5]}, "sinks": "random"})
    );
    // checked against the oracle with the same modifiers (the plain step's
    // output would be off by ~1 with these slopes)
    let err = row["max_abs_err"].as_f64().unwrap();
    assert!(err < 1e-5, "{row}");
}
