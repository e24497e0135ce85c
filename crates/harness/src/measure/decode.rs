//! The decode runner: one `attnlab::flash::decode` step of `nq` f32
//! queries against a [`KvCache`] of the storage type filled beforehand
//! ([`fill_cache`]). `attn decode` and the sweep's decode rows both run it.

use super::check;
use super::inputs::{normal, uniform};
use super::runner::{Runner, in_pool, thread_pool};
use crate::config::{Config, Dtype};
use attnlab::flash::{KvCache, decode};
use attnlab::{AttnError, AttnParams, Element, Par, bf16, f16};

/// Positions appended at a time by [`fill_cache`].
const FILL_POSITIONS: usize = 1024;

/// Most query rows [`DecodeRunner`] checks against f64: each row reads
/// the whole cache.
pub const MAX_ERR_ROWS: usize = 8;

/// Fills every batch entry of `cache` up to its capacity with seeded K/V
/// ([`uniform`]), appending `FILL_POSITIONS` positions at a time (so the
/// f32 staging buffers stay small next to the cache).
pub fn fill_cache<T: Element>(cache: &mut KvCache<T>, seed: u64) -> Result<(), AttnError> {
    let (hkv, d, dv, cap) = (cache.kv_heads(), cache.head_dim(), cache.v_dim(), cache.capacity());
    let chunks = cap.div_ceil(FILL_POSITIONS) as u64;
    for b in 0..cache.batch() {
        while cache.lens()[b] < cap {
            let start = cache.lens()[b];
            let n = FILL_POSITIONS.min(cap - start);
            let stream = 2 * (b as u64 * chunks + (start / FILL_POSITIONS) as u64);
            let k = uniform(hkv * n * d, seed, stream + 1);
            let v = uniform(hkv * n * dv, seed, stream + 2);
            cache.append(b, &k, &v)?;
        }
    }
    Ok(())
}

/// A decode configuration ready to run: the filled cache, queries,
/// outputs and thread pool.
pub struct DecodeRunner<T> {
    cache: KvCache<T>,
    q: Vec<f32>,
    q_heads: usize,
    q_len: usize,
    out: Vec<f32>,
    lse: Vec<f32>,
    params: AttnParams,
    par: Par,
    pool: Option<rayon::ThreadPool>,
}

/// Builds the runner of a decode configuration: a cache of capacity
/// `kv_len` filled to it ([`fill_cache`] with `seed`), f32 standard-normal
/// queries, outputs touched before the first call.
pub fn prepare(cfg: &Config, seed: u64) -> Result<Box<dyn Runner>, String> {
    match cfg.dtype {
        Dtype::F32 => Ok(Box::new(DecodeRunner::<f32>::new(cfg, seed)?)),
        Dtype::F16 => Ok(Box::new(DecodeRunner::<f16>::new(cfg, seed)?)),
        Dtype::Bf16 => Ok(Box::new(DecodeRunner::<bf16>::new(cfg, seed)?)),
    }
}

impl<T: Element> DecodeRunner<T> {
    fn new(cfg: &Config, seed: u64) -> Result<Self, String> {
        let e = |e: AttnError| e.to_string();
        let mut cache =
            KvCache::<T>::new(cfg.batch, cfg.kv_heads, cfg.kv_len, cfg.head_dim, cfg.v_dim)
                .map_err(e)?;
        fill_cache(&mut cache, seed).map_err(e)?;
        let rows = cfg.batch * cfg.q_heads * cfg.q_len;
        let q = normal::<f32>(rows * cfg.head_dim, seed, 0);
        let out = vec![0.5f32; rows * cfg.v_dim];
        let lse = vec![0.5f32; rows];
        Ok(DecodeRunner {
            cache,
            q,
            q_heads: cfg.q_heads,
            q_len: cfg.q_len,
            out,
            lse,
            params: cfg.params(),
            par: cfg.par(),
            pool: thread_pool(cfg.threads)?,
        })
    }
}

impl<T: Element> Runner for DecodeRunner<T> {
    fn run(&mut self) -> Result<(), AttnError> {
        let DecodeRunner { cache, q, q_heads, q_len, out, lse, params, par, pool } = self;
        let call = || {
            let shape = cache.query_shape(*q_heads, *q_len)?;
            let lse = Some(std::hint::black_box(&mut lse[..]));
            decode(cache, &shape, q, out, lse, params, *par)
        };
        let r = in_pool(pool.as_ref(), call);
        std::hint::black_box(&self.out);
        r
    }

    /// At most [`MAX_ERR_ROWS`] query rows, see [`check::decode_error`].
    fn sampled_error(&self, rows: usize) -> (f64, usize) {
        let (cache, q, out) = (&self.cache, &self.q, &self.out);
        check::decode_error(
            cache,
            q,
            self.q_heads,
            self.q_len,
            &self.params,
            out,
            rows.min(MAX_ERR_ROWS),
        )
    }
}
