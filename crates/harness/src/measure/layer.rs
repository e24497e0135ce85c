//! The layer runner: one forward (`Kind::Layer`) or backward
//! (`Kind::LayerBackward`) of `attnlab::MultiHeadAttention` over seeded
//! tokens, self-attention with the configuration's mask, each call
//! timed in two parts ([`attnlab::layer::PhaseTimes`]: the projections'
//! GEMMs and the flash kernel) for the row's [`crate::results::LayerSplit`].
//! The backward runs from a forward made while preparing (untimed).

use super::check::row_error;
use super::inputs::normal;
use super::runner::{Runner, in_pool, thread_pool};
use crate::config::{Config, Kind};
use attnlab::layer::{PhaseTimes, Trace};
use attnlab::naive::reference_rows;
use attnlab::{
    AttnError, AttnInputs, AttnParams, Init, LayerConfig, LayerGrads, Layout, MultiHeadAttention,
    Par, Tokens,
};

/// The layer, its tokens, the last call's results and the thread pool.
pub struct LayerRunner {
    backward: bool,
    layer: MultiHeadAttention,
    /// Tokens `[B, N, d_model]`.
    x: Vec<f32>,
    dims: [usize; 3],
    params: AttnParams<'static>,
    par: Par,
    /// The forward's activations: the last forward's, or (backward rows)
    /// the one the backward runs from.
    trace: Option<Trace>,
    /// dLoss/dY (backward rows).
    dy: Vec<f32>,
    grads: Option<LayerGrads>,
    last: Option<PhaseTimes>,
    pool: Option<rayon::ThreadPool>,
}

/// Builds the layer (Xavier-uniform weights seeded by `seed`), seeded
/// standard-normal tokens and, for backward rows, the forward and dY.
pub fn prepare(cfg: &Config, seed: u64) -> Result<Box<dyn Runner>, String> {
    Ok(Box::new(LayerRunner::new(cfg, seed)?))
}

impl LayerRunner {
    fn new(cfg: &Config, seed: u64) -> Result<Self, String> {
        let err = |e: AttnError| e.to_string();
        if cfg.q_len != cfg.kv_len {
            return Err("layer rows are self-attention: Nq = Nk".into());
        }
        let lc = LayerConfig::new(cfg.d_model(), cfg.q_heads, cfg.kv_heads, cfg.head_dim)
            .with_v_dim(cfg.v_dim);
        let layer = MultiHeadAttention::init(lc, Init::XavierUniform, seed).map_err(err)?;
        let dims = [cfg.batch, cfg.q_len, cfg.d_model()];
        let n = dims.iter().product();
        let x = normal::<f32>(n, seed, 0);
        let (params, par, pool) = (cfg.params(), cfg.par(), thread_pool(cfg.threads)?);
        let backward = cfg.kind == Kind::LayerBackward;
        let mut r = LayerRunner {
            backward,
            layer,
            x,
            dims,
            params,
            par,
            trace: None,
            dy: Vec::new(),
            grads: None,
            last: None,
            pool,
        };
        if backward {
            let t = r.forward().map_err(|e| format!("forward: {e}"))?;
            r.trace = Some(t.0);
            r.dy = normal::<f32>(n, seed, 3);
        }
        Ok(r)
    }

    fn forward(&self) -> Result<(Trace, PhaseTimes), AttnError> {
        let x = Tokens::new("x", &self.x, self.dims)?;
        let (layer, params, par) = (&self.layer, &self.params, self.par);
        in_pool(self.pool.as_ref(), || layer.forward_timed(&x, &x, params, par))
    }

    /// Max |O − O_f64| of the attention (the oracle over the trace's own
    /// Q, K, V) and |Y − O·W_O| (f64) over `rows` sampled tokens of batch
    /// entry 0, heads 0 and Hq − 1.
    fn forward_error(&self, rows: usize) -> (f64, usize) {
        let Some(t) = &self.trace else { return (f64::INFINITY, 0) };
        let s = *t.shape();
        let (n, hq, dv, dm) = (s.q_len(), s.q_heads(), s.v_dim(), self.dims[2]);
        let Ok(inputs) = AttnInputs::from_slices(s, Layout::Bnhd, t.q(), t.k(), t.v()) else {
            return (f64::INFINITY, 0);
        };
        let tokens = spread(rows.div_ceil(2), n);
        let picks: Vec<(usize, usize, usize)> =
            tokens.iter().flat_map(|&i| [(0, 0, i), (0, hq - 1, i)]).collect();
        let want = reference_rows(&inputs, &self.params, &picks);
        let o = t.attention_out();
        let mut err = picks
            .iter()
            .zip(&want)
            .map(|(&(_, h, i), (w, _))| row_error(w, &o[(i * hq + h) * dv..][..dv]))
            .fold(0.0, f64::max);
        let w_o = self.layer.weights().w_o.data();
        for &i in &tokens {
            let oi = &o[i * hq * dv..(i + 1) * hq * dv];
            let yi: Vec<f64> = (0..dm)
                .map(|c| {
                    oi.iter().enumerate().map(|(a, x)| *x as f64 * w_o[a * dm + c] as f64).sum()
                })
                .collect();
            err = err.max(row_error(&yi, &t.y[i * dm..(i + 1) * dm]));
        }
        (err, picks.len())
    }

    /// Max |dW_O − Oᵀ·dY (f64)| over `rows` sampled entries of dW_O (a
    /// column of `N` products each; the other gradients would need the
    /// whole attention backward in f64).
    fn backward_error(&self, rows: usize) -> (f64, usize) {
        let (Some(t), Some(g)) = (&self.trace, &self.grads) else { return (f64::INFINITY, 0) };
        let (n, dm) = (self.dims[0] * self.dims[1], self.dims[2]);
        let o = t.attention_out();
        let width = o.len() / n.max(1);
        let got = g.weights.w_o.data();
        let mut err = 0f64;
        let picks = spread(rows, width * dm);
        for &e in &picks {
            let (a, c) = (e / dm, e % dm);
            let want: f64 =
                (0..n).map(|r| o[r * width + a] as f64 * self.dy[r * dm + c] as f64).sum();
            err = err.max(row_error(&[want], &got[e..e + 1]));
        }
        (err, picks.len())
    }
}

/// `k` indices spread evenly over `0..n`, first and last included.
fn spread(k: usize, n: usize) -> Vec<usize> {
    let k = k.clamp(1, n.max(1));
    let mut v: Vec<usize> =
        (0..k).map(|r| if k == 1 { n.saturating_sub(1) } else { r * (n - 1) / (k - 1) }).collect();
    v.dedup();
    v
}

impl Runner for LayerRunner {
    fn run(&mut self) -> Result<(), AttnError> {
        if !self.backward {
            self.trace = None; // one call's activations live at a time
            let (t, p) = self.forward()?;
            self.trace = Some(t);
            self.last = Some(p);
            return Ok(());
        }
        self.grads = None;
        let x = Tokens::new("x", &self.x, self.dims)?;
        let trace = self.trace.as_ref().expect("prepared with the forward");
        let (layer, dy, params, par) = (&self.layer, &self.dy, &self.params, self.par);
        let (g, p) =
            in_pool(self.pool.as_ref(), || layer.backward_timed(trace, &x, &x, dy, params, par))?;
        self.grads = Some(std::hint::black_box(g));
        self.last = Some(p);
        Ok(())
    }

    fn sampled_error(&self, rows: usize) -> (f64, usize) {
        if self.backward { self.backward_error(rows) } else { self.forward_error(rows) }
    }

    fn phases_ms(&self) -> Option<(f64, f64)> {
        self.last.map(|p| (p.projections.as_secs_f64() * 1e3, p.attention.as_secs_f64() * 1e3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_rows_run_split_and_check_themselves() {
        for backward in [false, true] {
            let cfg = Config { head_dim: 16, v_dim: 16, ..Config::layer(4, 2, 40, backward) };
            let mut r = LayerRunner::new(&cfg, 7).unwrap();
            r.run().unwrap();
            let (p, a) = r.phases_ms().unwrap();
            assert!(p > 0.0 && a > 0.0, "{backward}: {p} {a}");
            let (err, n) = r.sampled_error(8);
            assert!(err < 1e-3 && n >= 4, "{backward}: {err} over {n}");
        }
        assert_eq!(spread(3, 10), vec![0, 4, 9]);
        assert_eq!(spread(1, 10), vec![9]);
    }
}
