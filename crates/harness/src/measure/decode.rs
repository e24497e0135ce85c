//! The decode runner: one `attnlab::flash::decode` step of `nq` f32
//! queries against a [`KvCache`] of the storage type filled beforehand
//! ([`fill_cache`]). `attn decode` and the sweep's decode rows both run it.

use super::check;
use super::inputs::{normal, uniform};
use super::runner::{Runner, in_pool, thread_pool};
use crate::config::{Config, Dtype, ModData};
use attnlab::flash::{KvCache, KvElement, Q8_0, decode};
use attnlab::{AttnError, AttnParams, Par, bf16, f16};

/// Positions appended at a time by [`fill_cache`].
const FILL_POSITIONS: usize = 1024;

/// Most query rows [`DecodeRunner`] checks against f64: each row reads
/// the whole cache.
pub const MAX_ERR_ROWS: usize = 8;

/// Fills every batch entry of `cache` up to its capacity with seeded K/V
/// (`fill_values`), appending `FILL_POSITIONS` positions at a time (so
/// the f32 staging buffers stay small next to the cache).
pub fn fill_cache<T: KvElement>(cache: &mut KvCache<T>, seed: u64) -> Result<(), AttnError> {
    let cap = cache.capacity();
    for b in 0..cache.batch() {
        while cache.lens()[b] < cap {
            let start = cache.lens()[b];
            let (k, v) = fill_values(cache, seed, b, start);
            cache.append(b, &k, &v)?;
        }
    }
    Ok(())
}

/// The f32 K and V ([`uniform`]) that [`fill_cache`] appends to batch entry
/// `b` at position `start` (a multiple of `FILL_POSITIONS`): `[Hkv, n, d]`
/// and `[Hkv, n, dv]`, before any rounding to the cache's storage.
fn fill_values<T: KvElement>(
    cache: &KvCache<T>,
    seed: u64,
    b: usize,
    start: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (hkv, d, dv, cap) = (cache.kv_heads(), cache.head_dim(), cache.v_dim(), cache.capacity());
    let chunks = cap.div_ceil(FILL_POSITIONS) as u64;
    let n = FILL_POSITIONS.min(cap - start);
    let stream = 2 * (b as u64 * chunks + (start / FILL_POSITIONS) as u64);
    (uniform(hkv * n * d, seed, stream + 1), uniform(hkv * n * dv, seed, stream + 2))
}

/// K and V rows of K/V head `g` of batch entry `b` as [`fill_cache`]
/// generated them, in f32 (`[len, d]`, `[len, dv]`): what a cache that
/// stores f32 would hold.
fn f32_rows<T: KvElement>(
    cache: &KvCache<T>,
    seed: u64,
    b: usize,
    g: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (hkv, d, dv, len) = (cache.kv_heads(), cache.head_dim(), cache.v_dim(), cache.lens()[b]);
    let (mut ks, mut vs) = (Vec::with_capacity(len * d), Vec::with_capacity(len * dv));
    for start in (0..len).step_by(FILL_POSITIONS) {
        let (k, v) = fill_values(cache, seed, b, start);
        let n = k.len() / (hkv * d);
        ks.extend_from_slice(&k[g * n * d..(g + 1) * n * d]);
        vs.extend_from_slice(&v[g * n * dv..(g + 1) * n * dv]);
    }
    (ks, vs)
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
    /// Scale and mask; the modifiers are `mods`'.
    params: AttnParams<'static>,
    mods: ModData,
    par: Par,
    pool: Option<rayon::ThreadPool>,
    seed: u64,
}

/// Builds the runner of a decode configuration: a cache of capacity
/// `kv_len` filled to it ([`fill_cache`] with `seed`), f32 standard-normal
/// queries, outputs touched before the first call.
pub fn prepare(cfg: &Config, seed: u64) -> Result<Box<dyn Runner>, String> {
    match cfg.dtype {
        Dtype::F32 => Ok(Box::new(DecodeRunner::<f32>::new(cfg, seed)?)),
        Dtype::F16 => Ok(Box::new(DecodeRunner::<f16>::new(cfg, seed)?)),
        Dtype::Bf16 => Ok(Box::new(DecodeRunner::<bf16>::new(cfg, seed)?)),
        Dtype::Q8_0 => Ok(Box::new(DecodeRunner::<Q8_0>::new(cfg, seed)?)),
    }
}

impl<T: KvElement> DecodeRunner<T> {
    fn new(cfg: &Config, seed: u64) -> Result<Self, String> {
        let e = |e: AttnError| e.to_string();
        let mut cache =
            KvCache::<T>::new(cfg.batch, cfg.kv_heads, cfg.kv_len, cfg.head_dim, cfg.v_dim)
                .map_err(e)?;
        let shape = cache.query_shape(cfg.q_heads, cfg.q_len).map_err(e)?;
        let mods = super::mod_data(&cfg.mods, &shape, seed)?;
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
            mods,
            par: cfg.par(),
            pool: thread_pool(cfg.threads)?,
            seed,
        })
    }
}

impl<T: KvElement> DecodeRunner<T> {
    fn error(&self, kv: &check::KvRows<'_>, rows: usize) -> (f64, usize) {
        let (cache, q, out) = (&self.cache, &self.q, &self.out);
        let shape = (cache.batch(), self.q_heads, cache.kv_heads(), self.q_len);
        let lens = cache.lens();
        let dims = (cache.head_dim(), cache.v_dim());
        let Ok(params) = self.mods.params(&self.params) else {
            return (f64::INFINITY, 0); // not what the kernel ran with either
        };
        check::decode_error(kv, shape, lens, dims, q, &params, out, rows.min(MAX_ERR_ROWS))
    }
}

impl<T: KvElement> Runner for DecodeRunner<T> {
    fn run(&mut self) -> Result<(), AttnError> {
        let DecodeRunner { cache, q, q_heads, q_len, out, lse, params, mods, par, pool, .. } = self;
        let params = &mods.params(params)?;
        let call = || {
            let shape = cache.query_shape(*q_heads, *q_len)?;
            let lse = Some(std::hint::black_box(&mut lse[..]));
            decode(cache, &shape, q, out, lse, params, *par)
        };
        let r = in_pool(pool.as_ref(), call);
        std::hint::black_box(&self.out);
        r
    }

    /// At most [`MAX_ERR_ROWS`] query rows, see [`check::decode_error`],
    /// against the values as the cache stores them.
    fn sampled_error(&self, rows: usize) -> (f64, usize) {
        let cache = &self.cache;
        let kv = |b, g| check::stored_rows(cache, b, g);
        self.error(&kv, rows)
    }

    /// The same rows against the f32 values before the cache rounded (or
    /// quantised) them: the error of storing K/V as `T`.
    fn storage_error(&self, rows: usize) -> Option<f64> {
        if T::NAME == "f32" {
            return None;
        }
        let kv = |b, g| f32_rows(&self.cache, self.seed, b, g);
        Some(self.error(&kv, rows).0)
    }
}
