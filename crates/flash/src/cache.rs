//! A KV cache for decode: storage `[B, Hkv, capacity, d]` for K and
//! `[B, Hkv, capacity, dv]` for V in f32, f16, bf16 or q8_0 (any
//! [`KvElement`]), with a length per batch entry (ragged batches allowed).

use attn_core::{AttnError, AttnShape, try_zeroed};

use crate::kv_element::KvElement;

/// The KV cache. Appends convert from f32 (round to nearest even for the
/// half types; q8_0 quantises each block of 32 values of a row, scale
/// `max|x|/127`); reads widen back to f32 inside the decode kernel.
#[derive(Debug, Clone)]
pub struct KvCache<T> {
    batch: usize,
    kv_heads: usize,
    capacity: usize,
    head_dim: usize,
    v_dim: usize,
    k: Vec<T>,
    v: Vec<T>,
    lens: Vec<usize>,
}

impl<T: KvElement> KvCache<T> {
    /// An empty cache holding up to `capacity` positions per batch entry.
    pub fn new(
        batch: usize,
        kv_heads: usize,
        capacity: usize,
        head_dim: usize,
        v_dim: usize,
    ) -> Result<Self, AttnError> {
        for (v, dim) in
            [(batch, "batch"), (kv_heads, "kv_heads"), (head_dim, "head_dim"), (v_dim, "v_dim")]
        {
            if v == 0 {
                return Err(AttnError::ZeroDim { dim });
            }
        }
        let n = |d: usize| {
            [batch, kv_heads, capacity, T::units(d), std::mem::size_of::<T>()]
                .iter()
                .try_fold(1usize, |a, &x| a.checked_mul(x))
                .ok_or(AttnError::Overflow { tensor: "kv cache" })
        };
        let (nk, nv) =
            (n(head_dim)? / std::mem::size_of::<T>(), n(v_dim)? / std::mem::size_of::<T>());
        Ok(KvCache {
            batch,
            kv_heads,
            capacity,
            head_dim,
            v_dim,
            k: try_zeroed("kv cache k", nk)?,
            v: try_zeroed("kv cache v", nv)?,
            lens: vec![0; batch],
        })
    }

    /// The shape of a decode call of `q_heads` query heads with `q_len`
    /// queries per head over this cache as it is now (`kv_len` = the
    /// longest cached sequence); see [`crate::decode()`].
    pub fn query_shape(&self, q_heads: usize, q_len: usize) -> Result<AttnShape, AttnError> {
        AttnShape::builder()
            .batch(self.batch)
            .q_heads(q_heads)
            .kv_heads(self.kv_heads)
            .q_len(q_len)
            .kv_len(self.lens.iter().copied().max().unwrap_or(0))
            .head_dim(self.head_dim)
            .v_dim(self.v_dim)
            .build()
    }

    /// Batch entries.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// K/V heads.
    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }
    /// Positions each batch entry can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// K head dim.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// V head dim.
    pub fn v_dim(&self) -> usize {
        self.v_dim
    }
    /// Stored positions of each batch entry.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }
    /// Bytes of K and V that a decode step over the current lengths reads.
    pub fn bytes_in_use(&self) -> usize {
        let rows: usize = self.lens.iter().sum::<usize>() * self.kv_heads;
        rows * (T::units(self.head_dim) + T::units(self.v_dim)) * std::mem::size_of::<T>()
    }

    /// K row `(b, g, j)` as stored (`T::units(head_dim)` units).
    #[inline]
    pub fn k_row(&self, b: usize, g: usize, j: usize) -> &[T] {
        let u = T::units(self.head_dim);
        let o = ((b * self.kv_heads + g) * self.capacity + j) * u;
        &self.k[o..o + u]
    }
    /// V row `(b, g, j)` as stored (`T::units(v_dim)` units).
    #[inline]
    pub fn v_row(&self, b: usize, g: usize, j: usize) -> &[T] {
        let u = T::units(self.v_dim);
        let o = ((b * self.kv_heads + g) * self.capacity + j) * u;
        &self.v[o..o + u]
    }

    /// K storage from row `(b, g, j)` to the end, and the units per row.
    pub(crate) fn k_from(&self, b: usize, g: usize, j: usize) -> (&[T], usize) {
        let u = T::units(self.head_dim);
        (&self.k[((b * self.kv_heads + g) * self.capacity + j) * u..], u)
    }
    /// V storage from row `(b, g, j)` to the end, and the units per row.
    pub(crate) fn v_from(&self, b: usize, g: usize, j: usize) -> (&[T], usize) {
        let u = T::units(self.v_dim);
        (&self.v[((b * self.kv_heads + g) * self.capacity + j) * u..], u)
    }

    /// Appends `n` positions to batch entry `b`: `k` is `[Hkv, n, d]` and
    /// `v` `[Hkv, n, dv]`, f32, C order. Checks shapes and capacity first; values are stored
    /// straight into the positions past the entry's length, so on error
    /// (also a value not finite once stored) the lengths are unchanged and
    /// nothing visible changed, though those free positions may have been
    /// overwritten. On error
    /// nothing is written.
    pub fn append(&mut self, b: usize, k: &[f32], v: &[f32]) -> Result<(), AttnError> {
        if b >= self.batch {
            return Err(AttnError::Dim {
                tensor: "kv cache",
                dim: "batch entries (index out of range)",
                expected: self.batch,
                got: b + 1,
            });
        }
        let per_k = self.kv_heads * self.head_dim;
        if !k.len().is_multiple_of(per_k) {
            return Err(AttnError::Param {
                name: "k",
                reason: format!(
                    "append needs [kv_heads={}, n, head_dim={}]: {} elements is not a multiple of {per_k}",
                    self.kv_heads,
                    self.head_dim,
                    k.len()
                ),
            });
        }
        let n = k.len() / per_k;
        let want_v = n * self.kv_heads * self.v_dim;
        if v.len() != want_v {
            return Err(AttnError::BufferLen { tensor: "v", expected: want_v, got: v.len() });
        }
        if self.lens[b] + n > self.capacity {
            return Err(AttnError::Param {
                name: "kv cache",
                reason: format!(
                    "batch entry {b} holds {} of {} positions; appending {n} would exceed the capacity",
                    self.lens[b], self.capacity
                ),
            });
        }
        // Stored straight into the free positions past the entry's length:
        // a value that is not finite once stored (NaN, or 1e6 into f16) is
        // an error before the length moves, so nothing visible changes.
        let (ku, vu) = (T::units(self.head_dim), T::units(self.v_dim));
        let start = self.lens[b];
        for g in 0..self.kv_heads {
            for (tensor, x, dim, units, store) in
                [("k", k, self.head_dim, ku, &mut self.k), ("v", v, self.v_dim, vu, &mut self.v)]
            {
                let o = ((b * self.kv_heads + g) * self.capacity + start) * units;
                let dst = store[o..o + n * units].chunks_mut(units);
                for (t, (src, row)) in
                    x[g * n * dim..(g + 1) * n * dim].chunks(dim).zip(dst).enumerate()
                {
                    if let Err(c) = T::store(src, row) {
                        let index = (g * n + t) * dim + c;
                        if !x[index].is_finite() {
                            return Err(AttnError::NonFinite { tensor, index, value: x[index] });
                        }
                        return Err(AttnError::Param {
                            name: tensor,
                            reason: format!(
                                "value {} at flat index {index} overflows the cache's {} storage",
                                x[index],
                                T::NAME
                            ),
                        });
                    }
                }
            }
        }
        self.lens[b] += n;
        Ok(())
    }

    /// Forgets every stored position (keeps the memory).
    pub fn clear(&mut self) {
        self.lens.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn append_and_read_back() {
        let mut c = KvCache::<f16>::new(2, 2, 4, 3, 2).unwrap();
        let k: Vec<f32> = (0..2 * 2 * 3).map(|i| i as f32).collect();
        let v: Vec<f32> = (0..2 * 2 * 2).map(|i| -(i as f32)).collect();
        c.append(1, &k, &v).unwrap();
        assert_eq!(c.lens(), &[0, 2]);
        // head 1, position 1 of entry 1 = k[(1*2+1)*3..]
        let row: Vec<f32> = c.k_row(1, 1, 1).iter().map(|x| x.to_f32()).collect();
        assert_eq!(row, vec![9.0, 10.0, 11.0]);
        let row: Vec<f32> = c.v_row(1, 0, 1).iter().map(|x| x.to_f32()).collect();
        assert_eq!(row, vec![-2.0, -3.0]);
        assert_eq!(c.bytes_in_use(), 2 * 2 * 5 * 2);
    }

    #[test]
    fn a_cache_too_large_for_memory_is_an_error() {
        let e = KvCache::<f32>::new(1, 8, 1 << 40, 128, 128).unwrap_err();
        assert!(e.to_string().starts_with("kv cache k: needs"), "{e}");
        let e = KvCache::<f32>::new(usize::MAX, 8, 1 << 40, 128, 128).unwrap_err();
        assert!(matches!(e, AttnError::Overflow { .. }), "{e}");
    }

    #[test]
    fn errors_write_nothing() {
        let mut c = KvCache::<f32>::new(1, 1, 2, 2, 2).unwrap();
        let e = c.append(0, &[0.0; 6], &[0.0; 6]).unwrap_err();
        assert!(e.to_string().contains("exceed the capacity"), "{e}");
        let e = c.append(0, &[0.0; 3], &[0.0; 2]).unwrap_err();
        assert!(e.to_string().contains("not a multiple of 2"), "{e}");
        let e = c.append(0, &[0.0; 2], &[0.0; 3]).unwrap_err();
        assert_eq!(e, AttnError::BufferLen { tensor: "v", expected: 2, got: 3 });
        let e = c.append(0, &[0.0, f32::NAN], &[0.0; 2]).unwrap_err();
        assert!(matches!(e, AttnError::NonFinite { tensor: "k", index: 1, .. }));
        let e = c.append(3, &[0.0; 2], &[0.0; 2]).unwrap_err();
        assert!(e.to_string().starts_with("kv cache:"), "{e}");
        assert_eq!(c.lens(), &[0]);
        assert!(KvCache::<f32>::new(1, 0, 2, 2, 2).is_err());
    }
}
