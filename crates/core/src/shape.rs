//! The problem shape, validated once at the boundary.

use crate::error::AttnError;
use crate::mask::Mask;

/// Sizes of one attention problem. Construct with [`AttnShape::new`], which
/// checks every invariant; the fields are read through getters so that a
/// shape in hand is always valid.
///
/// Invariants: `batch, q_heads, kv_heads, head_dim, v_dim >= 1`,
/// `q_heads % kv_heads == 0`, and every tensor's element count fits in
/// `usize` (also as bytes of f64). `q_len` and `kv_len` may be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttnShape {
    batch: usize,
    q_heads: usize,
    kv_heads: usize,
    q_len: usize,
    kv_len: usize,
    head_dim: usize,
    v_dim: usize,
}

impl AttnShape {
    /// Validates and builds a shape. `v_dim` may differ from `head_dim`.
    pub fn new(
        batch: usize,
        q_heads: usize,
        kv_heads: usize,
        q_len: usize,
        kv_len: usize,
        head_dim: usize,
        v_dim: usize,
    ) -> Result<Self, AttnError> {
        for (v, dim) in [
            (batch, "batch"),
            (q_heads, "q_heads"),
            (kv_heads, "kv_heads"),
            (head_dim, "head_dim"),
            (v_dim, "v_dim"),
        ] {
            if v == 0 {
                return Err(AttnError::ZeroDim { dim });
            }
        }
        if !q_heads.is_multiple_of(kv_heads) {
            return Err(AttnError::HeadsNotDivisible { q_heads, kv_heads });
        }
        let s = AttnShape { batch, q_heads, kv_heads, q_len, kv_len, head_dim, v_dim };
        // Every element count, times 8 bytes (f64 in the oracle), must fit.
        let checks = [
            ("q", [batch, q_heads, q_len, head_dim]),
            ("k", [batch, kv_heads, kv_len, head_dim]),
            ("v", [batch, kv_heads, kv_len, v_dim]),
            ("out", [batch, q_heads, q_len, v_dim]),
            ("scores", [batch, q_heads, q_len, kv_len]),
        ];
        for (tensor, dims) in checks {
            dims.iter()
                .try_fold(8usize, |acc, &d| acc.checked_mul(d))
                .ok_or(AttnError::Overflow { tensor })?;
        }
        Ok(s)
    }

    /// Batch size `B`.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Query heads `Hq`.
    pub fn q_heads(&self) -> usize {
        self.q_heads
    }
    /// Key/value heads `Hkv`.
    pub fn kv_heads(&self) -> usize {
        self.kv_heads
    }
    /// Query length `Nq`.
    pub fn q_len(&self) -> usize {
        self.q_len
    }
    /// Key/value length `Nk`.
    pub fn kv_len(&self) -> usize {
        self.kv_len
    }
    /// Q/K head dimension `d`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    /// V (and output) head dimension `dv`.
    pub fn v_dim(&self) -> usize {
        self.v_dim
    }
    /// Query heads per key/value head: 1 for MHA, `Hq` for MQA.
    pub fn group_size(&self) -> usize {
        self.q_heads / self.kv_heads
    }
    /// The key/value head that query head `h` reads (no K/V copies).
    pub fn kv_head_of(&self, h: usize) -> usize {
        h / self.group_size()
    }

    /// Logical dims `[B, Hq, Nq, d]` of Q.
    pub fn q_dims(&self) -> [usize; 4] {
        [self.batch, self.q_heads, self.q_len, self.head_dim]
    }
    /// Logical dims `[B, Hkv, Nk, d]` of K.
    pub fn k_dims(&self) -> [usize; 4] {
        [self.batch, self.kv_heads, self.kv_len, self.head_dim]
    }
    /// Logical dims `[B, Hkv, Nk, dv]` of V.
    pub fn v_dims(&self) -> [usize; 4] {
        [self.batch, self.kv_heads, self.kv_len, self.v_dim]
    }
    /// Logical dims `[B, Hq, Nq, dv]` of the output.
    pub fn out_dims(&self) -> [usize; 4] {
        [self.batch, self.q_heads, self.q_len, self.v_dim]
    }
    /// Number of LSE values, `B * Hq * Nq` (layout `[B, Hq, Nq]`).
    pub fn lse_len(&self) -> usize {
        self.batch * self.q_heads * self.q_len
    }

    /// Useful floating-point operations: `2·B·Hq·(visible pairs)·(d + dv)`,
    /// i.e. `4·B·Hq·Nq·Nk·d` without a mask when `dv = d`. Masked-out pairs
    /// are not credited, so causal with `Nq = Nk` counts (almost) half.
    pub fn flops(&self, mask: &Mask) -> f64 {
        let pairs = mask.visible_pairs(self.q_len, self.kv_len) as f64;
        2.0 * (self.batch * self.q_heads) as f64 * pairs * (self.head_dim + self.v_dim) as f64
    }

    /// The conventional FLOP count of the peers' tables: `4·B·Hq·Nq·Nk·d`,
    /// halved for a causal mask with `Nq = Nk`.
    pub fn flops_conventional(&self, mask: &Mask) -> f64 {
        let full = 2.0
            * (self.batch * self.q_heads) as f64
            * self.q_len as f64
            * self.kv_len as f64
            * (self.head_dim + self.v_dim) as f64;
        match mask {
            Mask::Causal if self.q_len == self.kv_len => full / 2.0,
            _ => full,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_shapes() {
        let s = AttnShape::new(2, 8, 2, 5, 7, 64, 32).unwrap();
        assert_eq!(s.group_size(), 4);
        assert_eq!(s.kv_head_of(5), 1);
        assert_eq!(s.q_dims(), [2, 8, 5, 64]);
        assert_eq!(s.v_dims(), [2, 2, 7, 32]);
        assert_eq!(s.out_dims(), [2, 8, 5, 32]);
        assert_eq!(s.lse_len(), 80);
        // empty sequences are valid
        AttnShape::new(1, 1, 1, 0, 0, 1, 1).unwrap();
    }

    #[test]
    fn zero_dims_are_named() {
        let cases = [
            (AttnShape::new(0, 1, 1, 1, 1, 1, 1), "batch"),
            (AttnShape::new(1, 0, 1, 1, 1, 1, 1), "q_heads"),
            (AttnShape::new(1, 1, 0, 1, 1, 1, 1), "kv_heads"),
            (AttnShape::new(1, 1, 1, 1, 1, 0, 1), "head_dim"),
            (AttnShape::new(1, 1, 1, 1, 1, 1, 0), "v_dim"),
        ];
        for (r, dim) in cases {
            let e = r.unwrap_err();
            assert_eq!(e, AttnError::ZeroDim { dim });
            assert!(e.to_string().starts_with(dim), "{e}");
        }
    }

    #[test]
    fn heads_must_divide() {
        let e = AttnShape::new(1, 8, 3, 4, 4, 8, 8).unwrap_err();
        assert_eq!(e, AttnError::HeadsNotDivisible { q_heads: 8, kv_heads: 3 });
        assert!(e.to_string().contains("multiple of kv heads (3)"));
    }

    #[test]
    fn overflow_is_caught() {
        let big = usize::MAX / 4;
        let e = AttnShape::new(1, 1, 1, big, big, 1, 1).unwrap_err();
        assert!(matches!(e, AttnError::Overflow { .. }), "{e}");
    }

    #[test]
    fn flops_conventions() {
        let s = AttnShape::new(1, 8, 8, 4096, 4096, 64, 64).unwrap();
        let full = 4.0 * 8.0 * 4096.0 * 4096.0 * 64.0;
        assert_eq!(s.flops(&Mask::None), full);
        assert_eq!(s.flops_conventional(&Mask::Causal), full / 2.0);
        // useful causal pairs: N(N+1)/2
        let pairs = 4096.0 * 4097.0 / 2.0;
        assert_eq!(s.flops(&Mask::Causal), 2.0 * 8.0 * pairs * 128.0);
    }
}
