//! Incremental decoding: the layer's keys and values in a
//! [`KvCache`], new tokens projected and appended, then attending over
//! everything cached.
//!
//! - [`MultiHeadAttention::prefill`] takes a prompt into an empty cache:
//!   its `K`, `V` are appended and its queries attend with the tiled flash
//!   kernel (on the f32 projections themselves).
//! - [`MultiHeadAttention::step`] takes the next token (or a few) of every
//!   sequence: appended, then attending over the cache with the split-KV
//!   decode kernel ([`attn_flash::decode()`]), masks bottom-right aligned to
//!   each sequence's cached length.
//!
//! With a causal mask, prefilling `P` tokens and stepping `S` more one at a
//! time gives the rows of the causal forward over all `P + S` tokens (to
//! f32 rounding; tested). An f16, bf16 or q8_0 cache rounds `K`, `V` as
//! stored, so steps read them rounded.
//!
//! A call is all-or-nothing on the cache: every check that can fail (the
//! cache's sizes, capacity, the values' storage, the parameters, the
//! queries' finiteness, the workspace) runs before the first append, so a
//! failing call leaves every sequence's length and contents as they were.

use attn_core::{AttnError, AttnParams, Par, try_zeroed};
use attn_flash::{KvCache, KvElement, decode};

use crate::forward::{attend, project};
use crate::tokens::Tokens;
use crate::weights::MultiHeadAttention;

impl MultiHeadAttention {
    /// An empty cache for this layer's keys and values: `batch` sequences
    /// of up to `capacity` positions, stored as `T` (f32, f16, bf16, q8_0).
    pub fn kv_cache<T: KvElement>(
        &self,
        batch: usize,
        capacity: usize,
    ) -> Result<KvCache<T>, AttnError> {
        let c = self.config();
        KvCache::new(batch, c.kv_heads, capacity, c.head_dim, c.v_dim)
    }

    /// Checks that `cache` was made for this layer: its K/V heads, head
    /// dim and value dim, each named in the error.
    pub fn check_cache<T: KvElement>(&self, cache: &KvCache<T>) -> Result<(), AttnError> {
        let c = self.config();
        for (dim, expected, got) in [
            ("kv heads (made for another layer)", c.kv_heads, cache.kv_heads()),
            ("features (head_dim; made for another layer)", c.head_dim, cache.head_dim()),
            ("features (v_dim; made for another layer)", c.v_dim, cache.v_dim()),
        ] {
            if expected != got {
                return Err(AttnError::Dim { tensor: "kv cache", dim, expected, got });
            }
        }
        Ok(())
    }

    /// Prefills an empty `cache` with the prompt `x` (`[B, P, d_model]`,
    /// `B` = the cache's batch) and returns the prompt's outputs `Y`
    /// (`[B, P, d_model]`), the forward's with `x_q = x_kv = x`. An error if
    /// the cache already holds positions (use [`MultiHeadAttention::step`]).
    pub fn prefill<T: KvElement>(
        &self,
        cache: &mut KvCache<T>,
        x: &Tokens<'_>,
        params: &AttnParams,
        par: Par,
    ) -> Result<Vec<f32>, AttnError> {
        if cache.lens().iter().any(|&l| l > 0) {
            return Err(AttnError::Param {
                name: "kv cache",
                reason: format!(
                    "prefill needs an empty cache, this one holds {:?} positions (use step)",
                    cache.lens()
                ),
            });
        }
        self.step(cache, x, params, par)
    }

    /// Appends the next `n` tokens `x` (`[B, n, d_model]`, usually `n = 1`)
    /// of every sequence to `cache` and returns their outputs `Y`
    /// (`[B, n, d_model]`): query `t` of sequence `b` attends over the
    /// cached positions as `params.mask` says, bottom-right aligned to the
    /// sequence's length after the append (causal: every earlier position
    /// and itself). On an empty cache this is [`MultiHeadAttention::prefill`].
    ///
    /// All-or-nothing (see the module docs). Errors name what is wrong: a
    /// cache made for another layer or batch, a full cache, a value the
    /// cache's type cannot store, a bias (prefill only), `x` as in
    /// [`MultiHeadAttention::forward`].
    pub fn step<T: KvElement>(
        &self,
        cache: &mut KvCache<T>,
        x: &Tokens<'_>,
        params: &AttnParams,
        par: Par,
    ) -> Result<Vec<f32>, AttnError> {
        par.validate()?;
        self.check_cache(cache)?;
        let c = *self.config();
        x.expect(c.d_model, Some(cache.batch()))?;
        if params.check_finite {
            x.check_finite()?;
        }
        let (nb, n) = (cache.batch(), x.len());
        let lens = cache.lens().to_vec();
        for (b, &len) in lens.iter().enumerate() {
            if len + n > cache.capacity() {
                return Err(AttnError::Param {
                    name: "kv cache",
                    reason: format!(
                        "batch entry {b} holds {len} of {} positions; appending {n} would \
                         exceed the capacity",
                        cache.capacity()
                    ),
                });
            }
        }
        let fresh = lens.iter().all(|&l| l == 0);
        let kv_len = lens.iter().max().map_or(n, |m| m + n);
        let shape = c.attn_shape(nb, n, kv_len)?;
        params.validate_for(&shape)?;
        if !fresh && params.bias.is_some() {
            return Err(AttnError::Unsupported {
                what: "a bias in a decode step over a non-empty KV cache (prefill only)".into(),
            });
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let w = self.weights();
        let q = project("q", x, &w.w_q, w.b_q.as_deref(), par)?;
        let k = project("k", x, &w.w_k, w.b_k.as_deref(), par)?;
        let v = project("v", x, &w.w_v, w.b_v.as_deref(), par)?;
        check_storable::<T>("k", &k, c.head_dim)?;
        check_storable::<T>("v", &v, c.v_dim)?;
        let mut o = try_zeroed("attention output", x.rows() * c.o_width())?;
        if fresh {
            // Every key is new: the tiled kernel on the projections, before
            // anything is appended.
            attend(&shape, [&q, &k, &v], &mut o, None, None, params, par)?;
            append_all(cache, &k, &v, n)?;
        } else {
            if params.check_finite
                && let Some(index) = q.iter().position(|x| !x.is_finite())
            {
                return Err(AttnError::NonFinite { tensor: "q", index, value: q[index] });
            }
            let mut ws = decode::workspace(&shape, par)?;
            par.install(|| ())?; // start the pool, if any, before appending
            let q = bnhd_to_bhnd(&q, nb, n, c.q_heads, c.head_dim)?;
            let mut ob = try_zeroed("attention output", o.len())?;
            append_all(cache, &k, &v, n)?;
            decode::decode_in(cache, &shape, &q, &mut ob, None, params, &mut ws)?;
            bhnd_to_bnhd(&ob, &mut o, nb, n, c.q_heads, c.v_dim);
        }
        self.output_projection(&o, x.rows(), par)
    }
}

/// Whether every row of `x` (`[·, dim]`) can be stored as `T`: the
/// cache's own check, run before any append; the error names `tensor`
/// (the projected `k` or `v`, `[B, n, Hkv, dim]`) and the flat index.
fn check_storable<T: KvElement>(
    tensor: &'static str,
    x: &[f32],
    dim: usize,
) -> Result<(), AttnError> {
    let mut row = vec![T::default(); T::units(dim)];
    for (r, src) in x.chunks(dim).enumerate() {
        if let Err(c) = T::store(src, &mut row) {
            let (index, value) = (r * dim + c, src[c]);
            if !value.is_finite() {
                return Err(AttnError::NonFinite { tensor, index, value });
            }
            return Err(AttnError::Param {
                name: tensor,
                reason: format!(
                    "value {value} at flat index {index} overflows the cache's {} storage",
                    T::NAME
                ),
            });
        }
    }
    Ok(())
}

/// Appends `n` tokens of every sequence (`k`, `v` are `[B, n, Hkv, ·]`;
/// the cache takes `[Hkv, n, ·]` per sequence). Every failure was checked
/// before, so the appends all succeed.
fn append_all<T: KvElement>(
    cache: &mut KvCache<T>,
    k: &[f32],
    v: &[f32],
    n: usize,
) -> Result<(), AttnError> {
    let (nb, h) = (cache.batch(), cache.kv_heads());
    let k = bnhd_to_bhnd(k, nb, n, h, cache.head_dim())?;
    let v = bnhd_to_bhnd(v, nb, n, h, cache.v_dim())?;
    let (sk, sv) = (n * h * cache.head_dim(), n * h * cache.v_dim());
    for b in 0..nb {
        cache.append(b, &k[b * sk..(b + 1) * sk], &v[b * sv..(b + 1) * sv])?;
    }
    Ok(())
}

/// `[B, N, H, D]` → `[B, H, N, D]`, in a new buffer.
fn bnhd_to_bhnd(x: &[f32], nb: usize, n: usize, h: usize, d: usize) -> Result<Vec<f32>, AttnError> {
    let mut out = try_zeroed("decode buffer", x.len())?;
    for b in 0..nb {
        for t in 0..n {
            for g in 0..h {
                let src = ((b * n + t) * h + g) * d;
                let dst = ((b * h + g) * n + t) * d;
                out[dst..dst + d].copy_from_slice(&x[src..src + d]);
            }
        }
    }
    Ok(out)
}

/// `[B, H, N, D]` → `[B, N, H, D]` into `out`.
fn bhnd_to_bnhd(x: &[f32], out: &mut [f32], nb: usize, n: usize, h: usize, d: usize) {
    for b in 0..nb {
        for g in 0..h {
            for t in 0..n {
                let src = ((b * h + g) * n + t) * d;
                let dst = ((b * n + t) * h + g) * d;
                out[dst..dst + d].copy_from_slice(&x[src..src + d]);
            }
        }
    }
}
