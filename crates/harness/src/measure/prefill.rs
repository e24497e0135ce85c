//! The prefill runner: one `attnlab::Kernel::forward` call over seeded
//! `[B, H, N, d]` inputs of the storage type and the configuration's score
//! modifiers (seeded too), with its outputs and thread pool ready.

use super::check;
use super::inputs::normal;
use super::runner::{Runner, by_input_type, in_pool, thread_pool};
use crate::config::{Config, ModData};
use attnlab::TensorViewMut;
use attnlab::{AttnError, AttnInputs, AttnParams, AttnShape, Element, Kernel, Layout, Par};

/// Inputs, outputs and thread pool of one prefill configuration.
pub struct PrefillRunner<T> {
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
    pool: Option<rayon::ThreadPool>,
}

/// Builds inputs (seeded), outputs and the thread pool of `cfg`.
pub fn prepare(cfg: &Config, seed: u64) -> Result<Box<dyn Runner>, String> {
    by_input_type!(cfg.dtype, "prefill", T => Ok(Box::new(PrefillRunner::<T>::new(cfg, seed)?)))
}

impl<T: Element> PrefillRunner<T> {
    fn new(cfg: &Config, seed: u64) -> Result<Self, String> {
        let kernel: Kernel = cfg.kernel.parse()?;
        let shape = cfg.shape().map_err(|e| e.to_string())?;
        let len = |d: [usize; 4]| d.iter().product::<usize>();
        let q = normal::<T>(len(shape.q_dims()), seed, 0);
        let k = normal::<T>(len(shape.k_dims()), seed, 1);
        let v = normal::<T>(len(shape.v_dims()), seed, 2);
        // Non-zero fill: the pages are touched now, not inside the call.
        let out = vec![0.5f32; len(shape.out_dims())];
        let lse = vec![0.5f32; shape.lse_len()];
        let mods = super::mod_data(&cfg.mods, &shape, seed)?;
        Ok(PrefillRunner {
            kernel,
            shape,
            params: cfg.params(),
            mods,
            par: cfg.par(),
            q,
            k,
            v,
            out,
            lse,
            pool: thread_pool(cfg.threads)?,
        })
    }
}

impl<T: Element> Runner for PrefillRunner<T> {
    fn run(&mut self) -> Result<(), AttnError> {
        let PrefillRunner { kernel, shape, params, mods, par, q, k, v, out, lse, pool } = self;
        let params = &mods.params(params)?;
        let inputs = AttnInputs::from_slices(*shape, Layout::Bhnd, q, k, v)?;
        let mut view = TensorViewMut::new("out", out, shape.out_dims(), Layout::Bhnd)?;
        let call = || {
            kernel.forward(
                &inputs,
                &mut view,
                Some(std::hint::black_box(&mut lse[..])),
                params,
                *par,
            )
        };
        let r = in_pool(pool.as_ref(), call);
        std::hint::black_box(&self.out);
        r
    }

    fn sampled_error(&self, rows: usize) -> (f64, usize) {
        let Ok(params) = self.mods.params(&self.params) else {
            return (f64::INFINITY, 0); // not what the kernel ran with either
        };
        check::prefill_error(&self.shape, &params, &self.q, &self.k, &self.v, &self.out, rows)
    }

    fn bias(&self) -> Option<&[f32]> {
        self.mods.bias.as_ref().map(|b| &b.data[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dtype, Grouping, MaskSpec};

    #[test]
    fn a_nan_output_is_an_infinite_error() {
        let cfg = Config::prefill("flash", Grouping::Gqa, MaskSpec::Causal, 16, Dtype::F32, 1, 64);
        let mut r = PrefillRunner::<f32>::new(&cfg, 7).unwrap();
        r.run().unwrap();
        let (err, n) = r.sampled_error(8);
        assert!(err < 1e-5 && n == 8, "{err} over {n} rows");
        // row 0 of (b, h) = (0, 0) is always checked
        r.out[3] = f32::NAN;
        assert_eq!(r.sampled_error(8).0, f64::INFINITY);
        r.out[3] = f32::INFINITY;
        assert_eq!(r.sampled_error(8).0, f64::INFINITY);
    }

    #[test]
    fn modifiers_reach_the_kernel_and_the_check() {
        use crate::config::{BiasSpec, Mods, Sinks, Slopes};
        let plain =
            Config::prefill("flash", Grouping::Gqa, MaskSpec::Causal, 16, Dtype::F32, 1, 64);
        let mods = Mods {
            softcap: Some(2.0),
            alibi: Some(Slopes::Default),
            sinks: Some(Sinks::Values(vec![1.5])),
            bias: Some(BiasSpec::Random),
        };
        let mut r = PrefillRunner::<f32>::new(&plain.clone().with_mods(mods), 7).unwrap();
        r.run().unwrap();
        let (err, n) = r.sampled_error(8);
        assert!(err < 1e-5 && n == 8, "{err} over {n} rows");
        assert_eq!(r.bias().map(<[f32]>::len), Some(64 * 64));
        // the plain call's output is far from the modified reference: the
        // check does use the modifiers
        let mut p = PrefillRunner::<f32>::new(&plain, 7).unwrap();
        p.run().unwrap();
        r.out.copy_from_slice(&p.out);
        assert!(r.sampled_error(8).0 > 1e-2);
        assert!(p.bias().is_none());
    }
}
