//! The problem shape, validated once at the boundary.

use crate::error::AttnError;
use crate::mask::Mask;

/// Sizes of one attention problem. Built with [`AttnShape::builder`], whose
/// [`ShapeBuilder::build`] checks every invariant; the fields are read
/// through getters so that a shape in hand is always valid.
///
/// Invariants: `batch, q_heads, kv_heads, head_dim, v_dim >= 1`,
/// `q_heads % kv_heads == 0`, and every tensor's element count fits in
/// `usize` (also as bytes of f64). `q_len` and `kv_len` may be zero.
///
/// ```
/// use attn_core::AttnShape;
/// // GQA: 8 query heads over 2 K/V heads, 512 tokens, head dim 64.
/// let s = AttnShape::builder().q_heads(8).kv_heads(2).seq_len(512).head_dim(64).build()?;
/// assert_eq!((s.batch(), s.kv_len(), s.v_dim()), (1, 512, 64));
/// # Ok::<(), attn_core::AttnError>(())
/// ```
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

/// Named sizes of an [`AttnShape`], validated by [`ShapeBuilder::build`].
///
/// Defaults: `batch` 1, `kv_heads` = `q_heads` (MHA), `kv_len` = `q_len`,
/// `v_dim` = `head_dim`. `q_heads`, `q_len` (or `seq_len`) and `head_dim`
/// have no default: a missing one is a zero-size error naming it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct ShapeBuilder {
    batch: Option<usize>,
    q_heads: Option<usize>,
    kv_heads: Option<usize>,
    q_len: Option<usize>,
    kv_len: Option<usize>,
    head_dim: Option<usize>,
    v_dim: Option<usize>,
}

impl ShapeBuilder {
    /// Batch entries `B` (default 1).
    pub fn batch(mut self, b: usize) -> Self {
        self.batch = Some(b);
        self
    }
    /// Query heads `Hq`.
    pub fn q_heads(mut self, h: usize) -> Self {
        self.q_heads = Some(h);
        self
    }
    /// Key/value heads `Hkv` (default `Hq`; 1 for MQA).
    pub fn kv_heads(mut self, h: usize) -> Self {
        self.kv_heads = Some(h);
        self
    }
    /// Query positions `Nq`.
    pub fn q_len(mut self, n: usize) -> Self {
        self.q_len = Some(n);
        self
    }
    /// Key/value positions `Nk` (default `Nq`).
    pub fn kv_len(mut self, n: usize) -> Self {
        self.kv_len = Some(n);
        self
    }
    /// `Nq = Nk = n` (self-attention).
    pub fn seq_len(self, n: usize) -> Self {
        self.q_len(n).kv_len(n)
    }
    /// Q/K head dimension `d`.
    pub fn head_dim(mut self, d: usize) -> Self {
        self.head_dim = Some(d);
        self
    }
    /// V (and output) head dimension `dv` (default `d`).
    pub fn v_dim(mut self, d: usize) -> Self {
        self.v_dim = Some(d);
        self
    }

    /// Validates and builds the shape.
    pub fn build(self) -> Result<AttnShape, AttnError> {
        let q_heads = self.q_heads.unwrap_or(0);
        let head_dim = self.head_dim.unwrap_or(0);
        let q_len = self.q_len.or(self.kv_len).unwrap_or(0);
        if self.q_len.is_none() && self.kv_len.is_none() {
            return Err(AttnError::Param {
                name: "q_len",
                reason: "not set (use q_len/kv_len or seq_len)".into(),
            });
        }
        AttnShape::checked(AttnShape {
            batch: self.batch.unwrap_or(1),
            q_heads,
            kv_heads: self.kv_heads.unwrap_or(q_heads),
            q_len,
            kv_len: self.kv_len.unwrap_or(q_len),
            head_dim,
            v_dim: self.v_dim.unwrap_or(head_dim),
        })
    }
}

impl AttnShape {
    /// A builder with named sizes (see [`ShapeBuilder`]).
    pub fn builder() -> ShapeBuilder {
        ShapeBuilder::default()
    }

    /// A builder preset with this shape's sizes, to derive a variant.
    pub fn to_builder(&self) -> ShapeBuilder {
        AttnShape::builder()
            .batch(self.batch)
            .q_heads(self.q_heads)
            .kv_heads(self.kv_heads)
            .q_len(self.q_len)
            .kv_len(self.kv_len)
            .head_dim(self.head_dim)
            .v_dim(self.v_dim)
    }

    fn checked(s: AttnShape) -> Result<Self, AttnError> {
        let AttnShape { batch, q_heads, kv_heads, q_len, kv_len, head_dim, v_dim } = s;
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
        // Every element count, times 8 bytes (f64 in the oracle), must fit;
        // and so must every size a kernel derives (tiles of up to 1024 rows
        // of d + 16 floats, up to 1024 split-KV partial rows per head), even
        // for empty sequences: [.., max(N, 1024), max(d, dv) + 16].
        let dpad =
            head_dim.max(v_dim).checked_add(16).ok_or(AttnError::Overflow { tensor: "q" })?;
        let checks = [
            ("q", [batch, q_heads, q_len, head_dim]),
            ("k", [batch, kv_heads, kv_len, head_dim]),
            ("v", [batch, kv_heads, kv_len, v_dim]),
            ("out", [batch, q_heads, q_len, v_dim]),
            ("scores", [batch, q_heads, q_len, kv_len]),
            ("q", [batch, q_heads, q_len.max(1024), dpad]),
            ("k", [batch, kv_heads, kv_len.max(1024), dpad]),
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

    /// The conventional FLOP count of the peers' tables: `4·B·Hq·Nq·Nk·d`
    /// without a mask, half that for causal with `Nq = Nk`; every other
    /// mask (causal with `Nq != Nk`, windows) is credited its visible pairs
    /// ([`AttnShape::flops`]), so no figure counts work that is skipped.
    pub fn flops_conventional(&self, mask: &Mask) -> f64 {
        let full = 2.0
            * (self.batch * self.q_heads) as f64
            * self.q_len as f64
            * self.kv_len as f64
            * (self.head_dim + self.v_dim) as f64;
        match mask {
            Mask::None => full,
            Mask::Causal if self.q_len == self.kv_len => full / 2.0,
            _ => self.flops(mask),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `[B, Hq, Hkv, Nq, Nk, d, dv]` of the unit tests' tables.
    pub(crate) fn shape(
        b: usize,
        hq: usize,
        hkv: usize,
        nq: usize,
        nk: usize,
        d: usize,
        dv: usize,
    ) -> Result<AttnShape, AttnError> {
        AttnShape::builder()
            .batch(b)
            .q_heads(hq)
            .kv_heads(hkv)
            .q_len(nq)
            .kv_len(nk)
            .head_dim(d)
            .v_dim(dv)
            .build()
    }

    #[test]
    fn valid_shapes() {
        let s = shape(2, 8, 2, 5, 7, 64, 32).unwrap();
        assert_eq!(s.group_size(), 4);
        assert_eq!(s.kv_head_of(5), 1);
        assert_eq!(s.q_dims(), [2, 8, 5, 64]);
        assert_eq!(s.v_dims(), [2, 2, 7, 32]);
        assert_eq!(s.out_dims(), [2, 8, 5, 32]);
        assert_eq!(s.lse_len(), 80);
        // empty sequences are valid
        shape(1, 1, 1, 0, 0, 1, 1).unwrap();
    }

    #[test]
    fn builder_defaults_and_missing_sizes() {
        let s = AttnShape::builder().q_heads(4).seq_len(9).head_dim(8).build().unwrap();
        assert_eq!(s, shape(1, 4, 4, 9, 9, 8, 8).unwrap());
        let s = AttnShape::builder().q_heads(4).q_len(3).head_dim(8).build().unwrap();
        assert_eq!(s.kv_len(), 3);
        assert_eq!(s.to_builder().kv_len(5).build().unwrap().kv_len(), 5);
        let e = AttnShape::builder().seq_len(9).head_dim(8).build().unwrap_err();
        assert_eq!(e, AttnError::ZeroDim { dim: "q_heads" });
        let e = AttnShape::builder().q_heads(2).seq_len(9).build().unwrap_err();
        assert_eq!(e, AttnError::ZeroDim { dim: "head_dim" });
        let e = AttnShape::builder().q_heads(2).head_dim(9).build().unwrap_err();
        assert!(e.to_string().starts_with("q_len: not set"), "{e}");
    }

    #[test]
    fn zero_dims_are_named() {
        let cases = [
            (shape(0, 1, 1, 1, 1, 1, 1), "batch"),
            (shape(1, 0, 1, 1, 1, 1, 1), "q_heads"),
            (shape(1, 1, 0, 1, 1, 1, 1), "kv_heads"),
            (shape(1, 1, 1, 1, 1, 0, 1), "head_dim"),
            (shape(1, 1, 1, 1, 1, 1, 0), "v_dim"),
        ];
        for (r, dim) in cases {
            let e = r.unwrap_err();
            assert_eq!(e, AttnError::ZeroDim { dim });
            assert!(e.to_string().starts_with(dim), "{e}");
        }
    }

    #[test]
    fn heads_must_divide() {
        let e = shape(1, 8, 3, 4, 4, 8, 8).unwrap_err();
        assert_eq!(e, AttnError::HeadsNotDivisible { q_heads: 8, kv_heads: 3 });
        assert!(e.to_string().contains("multiple of kv heads (3)"));
    }

    #[test]
    fn overflow_is_caught() {
        let big = usize::MAX / 4;
        let e = shape(1, 1, 1, big, big, 1, 1).unwrap_err();
        assert!(matches!(e, AttnError::Overflow { .. }), "{e}");
        // also when the sequences are empty: kernels size tiles by d
        for (hq, d) in [(1, usize::MAX), (1 << 40, 1 << 20), (1, usize::MAX / 64)] {
            let e = shape(1, hq, 1, 0, 0, d, 1).unwrap_err();
            assert!(matches!(e, AttnError::Overflow { .. }), "{e}");
        }
    }

    #[test]
    fn flops_conventions() {
        let s = shape(1, 8, 8, 4096, 4096, 64, 64).unwrap();
        let full = 4.0 * 8.0 * 4096.0 * 4096.0 * 64.0;
        assert_eq!(s.flops(&Mask::None), full);
        assert_eq!(s.flops_conventional(&Mask::Causal), full / 2.0);
        // useful causal pairs: N(N+1)/2
        let pairs = 4096.0 * 4097.0 / 2.0;
        assert_eq!(s.flops(&Mask::Causal), 2.0 * 8.0 * pairs * 128.0);
        // causal with Nq != Nk: the visible pairs, not Nq·Nk
        let s = shape(1, 1, 1, 4, 10, 8, 8).unwrap();
        let pairs = (7 + 8 + 9 + 10) as f64;
        assert_eq!(s.flops_conventional(&Mask::Causal), 2.0 * pairs * 16.0);
    }
}
