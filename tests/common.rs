//! Helpers shared by the test modules.

use attnlab::flash::TileConfig;
use attnlab::naive::{Reference, reference};
use attnlab::{
    AttentionKernel, AttnInputs, AttnParams, AttnShape, Element, Flash, Kernel, Layout, Par,
    TensorViewMut,
};
use rand::{RngExt, SeedableRng, rngs::StdRng};

/// A kernel under test: a named kernel, possibly flash with forced tiles.
#[derive(Debug, Clone, Copy)]
pub enum Under {
    Kernel(Kernel),
    FlashTiles(TileConfig),
}

impl Under {
    /// Every kernel, plus flash with small tiles so that short sequences
    /// still cross many tile edges.
    pub fn all() -> Vec<Under> {
        vec![
            Under::Kernel(Kernel::Naive),
            Under::Kernel(Kernel::Flash),
            Under::FlashTiles(TileConfig { br: 32, bc: 8 }),
            Under::FlashTiles(TileConfig { br: 64, bc: 24 }),
        ]
    }

    pub fn run<T: Element>(
        &self,
        inputs: &AttnInputs<'_, T>,
        layout: Layout,
        params: &AttnParams,
        par: Par,
    ) -> (Vec<f32>, Vec<f32>) {
        let shape = inputs.shape();
        let mut out = vec![f32::NAN; shape.out_dims().iter().product()];
        let mut lse = vec![f32::NAN; shape.lse_len()];
        let mut view = TensorViewMut::new("out", &mut out, shape.out_dims(), layout).unwrap();
        let r = self.try_forward(inputs, &mut view, Some(&mut lse), params, par);
        r.unwrap_or_else(|e| panic!("{self:?} failed: {e}"));
        (out, lse)
    }

    pub fn try_forward<T: Element>(
        &self,
        inputs: &AttnInputs<'_, T>,
        out: &mut TensorViewMut<'_>,
        lse: Option<&mut [f32]>,
        params: &AttnParams,
        par: Par,
    ) -> Result<(), attnlab::AttnError> {
        match self {
            Under::Kernel(k) => k.forward(inputs, out, lse, params, par),
            Under::FlashTiles(t) => Flash::with_tiles(*t)?.forward(inputs, out, lse, params, par),
        }
    }
}

/// The shape `[B, Hq, Hkv, Nq, Nk, d, dv]` of the tests' tables.
pub fn shape_of([batch, hq, hkv, nq, nk, d, dv]: [usize; 7]) -> AttnShape {
    AttnShape::builder()
        .batch(batch)
        .q_heads(hq)
        .kv_heads(hkv)
        .q_len(nq)
        .kv_len(nk)
        .head_dim(d)
        .v_dim(dv)
        .build()
        .unwrap()
}

/// Seeded inputs: standard-normal-ish values times `amp`.
pub fn random(n: usize, amp: f32, rng: &mut StdRng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            // sum of uniforms: cheap, bell-shaped, variance 1
            let s: f32 = (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum();
            s * 0.866 * amp
        })
        .collect()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Output element `(b, h, i, c)` of a buffer in `layout`.
pub fn out_at(
    out: &[f32],
    shape: &AttnShape,
    layout: Layout,
    b: usize,
    h: usize,
    i: usize,
    c: usize,
) -> f32 {
    let [sb, sh, sn] = layout.strides(shape.out_dims());
    out[b * sb + h * sh + i * sn + c]
}

/// The tolerance model, from the f32 error of a kernel against the f64
/// oracle on the same (rounded) inputs:
/// - a score `s = scale·q·k` in f32 is off by at most ~`d·eps·L` where
///   `L = scale·Σ_c |q_c·k_c|` (typically `sqrt(d)·eps·L`); an error `δ` in
///   an exponent changes a softmax weight by a factor `e^δ`, so the output
///   moves by up to `δ·max|v|` and the LSE by `δ`;
/// - the fast exp2 adds ~3e-7 relative, the f32 sums over up to a few
///   hundred keys a few ulps more.
///
/// So `tol_out = (1e-5 + 32·eps·L)·max|v|` and
/// `tol_lse = 1e-5·(1 + |lse|) + 32·eps·L`, with `L` the largest over the
/// visible (query, key) pairs.
/// `32·eps` covers the sqrt(d) growth up to d = 256 with room for
/// non-random data; the base 1e-5 is ~40 ulps of 1.
pub struct Tolerance {
    pub out: f64,
    pub lse_abs: f64,
}

pub fn tolerance<T: Element>(inputs: &AttnInputs<'_, T>, params: &AttnParams) -> Tolerance {
    let s = *inputs.shape();
    let scale = params.scale_for(s.head_dim()) as f64;
    let mut l_max = 0f64;
    for b in 0..s.batch() {
        for h in 0..s.q_heads() {
            let g = s.kv_head_of(h);
            for i in 0..s.q_len() {
                let q = inputs.q.row(b, h, i);
                for j in params.key_range(i, s.q_len(), s.kv_len()) {
                    let k = inputs.k.row(b, g, j);
                    let l: f64 = q
                        .iter()
                        .zip(k)
                        .map(|(a, c)| (a.to_f32() as f64 * c.to_f32() as f64).abs())
                        .sum();
                    l_max = l_max.max(l * scale.abs());
                }
            }
        }
    }
    let vmax = inputs.v.data().iter().map(|x| x.to_f32().abs() as f64).fold(0.0, f64::max);
    let eps = f32::EPSILON as f64;
    Tolerance { out: (1e-5 + 32.0 * eps * l_max) * vmax.max(1e-30), lse_abs: 32.0 * eps * l_max }
}

/// Asserts `out`/`lse` match the oracle within `tol`, reporting the worst
/// element, its index and the tolerance when they do not.
pub fn assert_matches(
    what: &str,
    shape: &AttnShape,
    layout: Layout,
    (out, lse): (&[f32], &[f32]),
    r: &Reference,
    tol: &Tolerance,
) {
    let (nq, dv) = (shape.q_len(), shape.v_dim());
    let mut worst = (0f64, [0usize; 4], 0f32, 0f64);
    for b in 0..shape.batch() {
        for h in 0..shape.q_heads() {
            for i in 0..nq {
                for c in 0..dv {
                    let got = out_at(out, shape, layout, b, h, i, c);
                    let want = r.out[((b * shape.q_heads() + h) * nq + i) * dv + c];
                    let err = (got as f64 - want).abs();
                    if err > worst.0 || err.is_nan() {
                        worst = (
                            if err.is_nan() { f64::INFINITY } else { err },
                            [b, h, i, c],
                            got,
                            want,
                        );
                    }
                }
            }
        }
    }
    assert!(
        worst.0 <= tol.out,
        "{what}: out{:?} = {} but oracle {} (|err| {:.3e} > tol {:.3e})",
        worst.1,
        worst.2,
        worst.3,
        worst.0,
        tol.out
    );
    for (idx, (got, want)) in lse.iter().zip(&r.lse).enumerate() {
        if want.is_infinite() {
            assert!(*got == f32::NEG_INFINITY, "{what}: lse[{idx}] = {got}, oracle -inf");
            continue;
        }
        let err = (*got as f64 - want).abs();
        let t = 1e-5 * (1.0 + want.abs()) + tol.lse_abs;
        assert!(
            err <= t,
            "{what}: lse[{idx}] = {got} but oracle {want} (|err| {err:.3e} > tol {t:.3e})"
        );
    }
}

/// Runs every kernel under `par` on one problem and checks it.
pub fn check_all<T: Element>(
    name: &str,
    inputs: &AttnInputs<'_, T>,
    layout: Layout,
    params: &AttnParams,
) {
    let r = reference(inputs, params);
    let tol = tolerance(inputs, params);
    let shape = inputs.shape();
    for k in Under::all() {
        let got = k.run(inputs, layout, params, Par::Seq);
        assert_matches(&format!("{name} / {k:?}"), shape, layout, (&got.0, &got.1), &r, &tol);
    }
}

/// Builds contiguous inputs in `layout` from logical-order generators.
pub fn make_inputs(shape: &AttnShape, amp_qk: f32, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut g = rng(seed);
    let q = random(shape.q_dims().iter().product(), amp_qk, &mut g);
    let k = random(shape.k_dims().iter().product(), amp_qk, &mut g);
    let v = random(shape.v_dims().iter().product(), 1.0, &mut g);
    (q, k, v)
}
