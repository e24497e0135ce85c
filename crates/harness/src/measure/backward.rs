//! The backward runner: one `attnlab::Kernel::backward` call over seeded
//! `[B, H, N, d]` inputs of the storage type, a seeded dO and the
//! configuration's score modifiers (seeded too), with O and
//! the LSE from one flash forward run while preparing (untimed), the
//! gradient buffers and the thread pool ready.

use super::check::row_error;
use super::inputs::normal;
use super::runner::{Runner, by_input_type, in_pool, thread_pool};
use crate::config::{Config, ModData};
use attnlab::naive::reference_dq_rows;
use attnlab::{
    AttnError, AttnInputs, AttnParams, AttnShape, BackwardInputs, Element, GradsMut, Kernel,
    Layout, Par, TensorViewMut,
};

/// Inputs, forward results, gradients and thread pool of one backward
/// configuration.
pub struct BackwardRunner<T> {
    kernel: Kernel,
    shape: AttnShape,
    /// Scale and mask; the modifiers are `mods`'.
    params: AttnParams<'static>,
    mods: ModData,
    par: Par,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
    out: Vec<f32>,
    lse: Vec<f32>,
    d_out: Vec<f32>,
    grads: [Vec<f32>; 3],
    pool: Option<rayon::ThreadPool>,
}

/// Builds inputs (seeded), runs the forward, allocates the gradients.
pub fn prepare(cfg: &Config, seed: u64) -> Result<Box<dyn Runner>, String> {
    by_input_type!(cfg.dtype, "backward", T => Ok(Box::new(BackwardRunner::<T>::new(cfg, seed)?)))
}

impl<T: Element> BackwardRunner<T> {
    fn new(cfg: &Config, seed: u64) -> Result<Self, String> {
        let kernel: Kernel = cfg.kernel.parse()?;
        let shape = cfg.shape().map_err(|e| e.to_string())?;
        let len = |d: [usize; 4]| d.iter().product::<usize>();
        let q = normal::<T>(len(shape.q_dims()), seed, 0);
        let k = normal::<T>(len(shape.k_dims()), seed, 1);
        let v = normal::<T>(len(shape.v_dims()), seed, 2);
        let d_out = normal::<f32>(len(shape.out_dims()), seed, 3);
        let mut out = vec![0f32; len(shape.out_dims())];
        let mut lse = vec![0f32; shape.lse_len()];
        let (params, par, pool) = (cfg.params(), cfg.par(), thread_pool(cfg.threads)?);
        let mods = super::mod_data(&cfg.mods, &shape, seed)?;
        {
            let params = mods.params(&params).map_err(|e| e.to_string())?;
            let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v)
                .map_err(|e| e.to_string())?;
            let mut view = TensorViewMut::new("out", &mut out, shape.out_dims(), Layout::Bhnd)
                .map_err(|e| e.to_string())?;
            in_pool(pool.as_ref(), || {
                Kernel::Flash.forward(&inputs, &mut view, Some(&mut lse), &params, par)
            })
            .map_err(|e| format!("forward: {e}"))?;
        }
        // Non-zero fill: the pages are touched now, not inside the call.
        let grads = [shape.q_dims(), shape.k_dims(), shape.v_dims()].map(|d| vec![0.5f32; len(d)]);
        Ok(BackwardRunner {
            kernel,
            shape,
            params,
            mods,
            par,
            q,
            k,
            v,
            out,
            lse,
            d_out,
            grads,
            pool,
        })
    }

    fn inputs(&self) -> Result<BackwardInputs<'_, T>, AttnError> {
        let (s, l) = (self.shape, Layout::Bhnd);
        BackwardInputs::from_slices(
            s,
            l,
            &self.q,
            &self.k,
            &self.v,
            &self.out,
            &self.lse,
            &self.d_out,
        )
    }
}

impl<T: Element> Runner for BackwardRunner<T> {
    fn run(&mut self) -> Result<(), AttnError> {
        let (s, l) = (self.shape, Layout::Bhnd);
        let inputs = BackwardInputs::from_slices(
            s,
            l,
            &self.q,
            &self.k,
            &self.v,
            &self.out,
            &self.lse,
            &self.d_out,
        )?;
        let [dq, dk, dv] = &mut self.grads;
        let mut g = GradsMut::from_slices(&s, l, dq, dk, dv)?;
        let params = &self.mods.params(&self.params)?;
        let (kernel, par) = (self.kernel, self.par);
        let r = in_pool(self.pool.as_ref(), || kernel.backward(&inputs, &mut g, params, par));
        std::hint::black_box(&self.grads);
        r
    }

    /// Max |dQ − dQ_f64| over `rows` sampled query rows, half of (b, h) =
    /// (0, 0) and half of (B−1, Hq−1), first and last rows included (dK
    /// and dV rows would each need every query's softmax: O(N²·d)).
    fn sampled_error(&self, rows: usize) -> (f64, usize) {
        let s = &self.shape;
        let (nb, hq, nq, d) = (s.batch(), s.q_heads(), s.q_len(), s.head_dim());
        if nq == 0 || rows == 0 {
            return (0.0, 0);
        }
        let Ok(inputs) = self.inputs() else {
            return (f64::INFINITY, 0);
        };
        let mut heads = vec![(0, 0), (nb - 1, hq - 1)];
        heads.dedup();
        let per = rows.div_ceil(heads.len()).clamp(1, nq);
        let mut picks = Vec::new();
        for &(b, h) in &heads {
            for r in 0..per {
                let i = if per == 1 { nq - 1 } else { r * (nq - 1) / (per - 1) };
                picks.push((b, h, i));
            }
        }
        picks.dedup();
        let Ok(params) = self.mods.params(&self.params) else {
            return (f64::INFINITY, 0);
        };
        let want = reference_dq_rows(&inputs, &params, &picks);
        let err = picks
            .iter()
            .zip(&want)
            .map(|(&(b, h, i), w)| row_error(w, &self.grads[0][((b * hq + h) * nq + i) * d..][..d]))
            .fold(0.0, f64::max);
        (err, picks.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dtype, Grouping, MaskSpec};

    #[test]
    fn one_backward_row_runs_and_checks_itself() {
        for kernel in ["flash", "naive"] {
            let cfg =
                Config::backward(kernel, Grouping::Gqa, MaskSpec::Causal, 16, Dtype::F32, 2, 96);
            let mut r = BackwardRunner::<f32>::new(&cfg, 7).unwrap();
            r.run().unwrap();
            let (err, n) = r.sampled_error(8);
            assert!(err < 1e-4 && n == 8, "{kernel}: {err} over {n} rows");
            r.grads[0][5] = f32::NAN;
            assert_eq!(r.sampled_error(8).0, f64::INFINITY);
        }
    }
}
