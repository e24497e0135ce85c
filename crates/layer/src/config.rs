//! The layer's sizes ([`LayerConfig`]) and its seeded initialisations
//! ([`Init`]).

use attn_core::{AttnError, AttnShape};

/// Sizes of a [`crate::MultiHeadAttention`] layer.
///
/// `q_heads` query heads of dimension `head_dim` share `kv_heads` key/value
/// heads (`q_heads % kv_heads == 0`: MHA when equal, GQA, MQA when
/// `kv_heads = 1`); values and outputs have `v_dim` per head. The weights
/// are `W_Q [d_model, q_heads·head_dim]`, `W_K [d_model, kv_heads·head_dim]`,
/// `W_V [d_model, kv_heads·v_dim]`, `W_O [q_heads·v_dim, d_model]`, and,
/// when `bias` is set, one bias per projection (all four or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerConfig {
    /// Width of the tokens in and out.
    pub d_model: usize,
    /// Query heads `Hq`.
    pub q_heads: usize,
    /// Key/value heads `Hkv`.
    pub kv_heads: usize,
    /// Q/K dimension per head `d`.
    pub head_dim: usize,
    /// V/output dimension per head `dv`.
    pub v_dim: usize,
    /// Whether the four projections have biases.
    pub bias: bool,
}

impl LayerConfig {
    /// MHA/GQA/MQA sizes with `v_dim = head_dim` and no biases.
    pub fn new(d_model: usize, q_heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        LayerConfig { d_model, q_heads, kv_heads, head_dim, v_dim: head_dim, bias: false }
    }

    /// The same sizes with `v_dim = dv`.
    #[must_use]
    pub fn with_v_dim(self, dv: usize) -> Self {
        LayerConfig { v_dim: dv, ..self }
    }

    /// The same sizes with (`true`) or without biases.
    #[must_use]
    pub fn with_bias(self, bias: bool) -> Self {
        LayerConfig { bias, ..self }
    }

    /// Checks the sizes: each at least 1, heads divisible, every weight's
    /// element count within `usize`; the error names the size.
    pub fn validate(&self) -> Result<(), AttnError> {
        if self.d_model == 0 {
            return Err(AttnError::ZeroDim { dim: "d_model" });
        }
        // The head sizes get the attention shape's own checks.
        self.attn_shape(1, 1, 1)?;
        for (tensor, [rows, cols]) in self.weight_dims() {
            rows.checked_mul(cols)
                .and_then(|n| n.checked_mul(8))
                .ok_or(AttnError::Overflow { tensor })?;
        }
        Ok(())
    }

    /// `Hq·d`, the width of `Q`.
    pub fn q_width(&self) -> usize {
        self.q_heads * self.head_dim
    }
    /// `Hkv·d`, the width of `K`.
    pub fn k_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    /// `Hkv·dv`, the width of `V`.
    pub fn v_width(&self) -> usize {
        self.kv_heads * self.v_dim
    }
    /// `Hq·dv`, the width of the attention output (the rows of `W_O`).
    pub fn o_width(&self) -> usize {
        self.q_heads * self.v_dim
    }

    /// `[rows, cols]` of `W_Q`, `W_K`, `W_V`, `W_O`, by name.
    pub fn weight_dims(&self) -> [(&'static str, [usize; 2]); 4] {
        [
            ("w_q", [self.d_model, self.q_width()]),
            ("w_k", [self.d_model, self.k_width()]),
            ("w_v", [self.d_model, self.v_width()]),
            ("w_o", [self.o_width(), self.d_model]),
        ]
    }

    /// The attention problem of `batch` sequences of `q_len` queries over
    /// `kv_len` keys with this layer's heads.
    pub fn attn_shape(
        &self,
        batch: usize,
        q_len: usize,
        kv_len: usize,
    ) -> Result<AttnShape, AttnError> {
        AttnShape::builder()
            .batch(batch)
            .q_heads(self.q_heads)
            .kv_heads(self.kv_heads)
            .q_len(q_len)
            .kv_len(kv_len)
            .head_dim(self.head_dim)
            .v_dim(self.v_dim)
            .build()
    }
}

/// A named, seeded initialisation of the weights. Values come from
/// SplitMix64 seeded with the given seed (a fixed generator, so a seed
/// gives the same weights on every platform and version), drawn in the
/// order `W_Q, W_K, W_V, W_O, b_Q, b_K, b_V, b_O`, each row-major.
/// `fan_in`/`fan_out` are the rows/columns of each weight
/// (`W_Q`: `d_model` in, `Hq·d` out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Init {
    /// Glorot & Bengio (2010): `U(−a, a)`, `a = sqrt(6 / (fan_in +
    /// fan_out))`; biases 0. What PyTorch's `nn.MultiheadAttention` uses
    /// (it applies it to the stacked `[3·d_model, d_model]` input
    /// projection; here each projection has its own fans). The default.
    #[default]
    XavierUniform,
    /// He et al. (2015) uniform with PyTorch `nn.Linear`'s defaults
    /// (`kaiming_uniform_(a = √5)`): `U(−b, b)`, `b = 1/sqrt(fan_in)`, for
    /// the weights and the biases alike.
    KaimingUniform,
}

impl Init {
    /// The name, as in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Init::XavierUniform => "xavier_uniform",
            Init::KaimingUniform => "kaiming_uniform",
        }
    }

    /// The bound `a` of `U(−a, a)` for a weight with these fans.
    pub fn weight_bound(&self, fan_in: usize, fan_out: usize) -> f64 {
        match self {
            Init::XavierUniform => (6.0 / (fan_in + fan_out) as f64).sqrt(),
            Init::KaimingUniform => 1.0 / (fan_in as f64).sqrt(),
        }
    }

    /// The bound of a bias whose weight has `fan_in` inputs (0: zeros).
    pub fn bias_bound(&self, fan_in: usize) -> f64 {
        match self {
            Init::XavierUniform => 0.0,
            Init::KaimingUniform => 1.0 / (fan_in as f64).sqrt(),
        }
    }
}

/// SplitMix64 (Steele, Lea & Flood 2014): the generator of [`Init`].
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[−a, a)`: 53 random bits scaled in f64, rounded to f32.
    pub(crate) fn uniform(&mut self, a: f64) -> f32 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((2.0 * u - 1.0) * a) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_published_sequence() {
        // First outputs for seed 0 (the reference C implementation).
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(g.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        let mut g = SplitMix64::new(7);
        let x: Vec<f32> = (0..10_000).map(|_| g.uniform(0.5)).collect();
        assert!(x.iter().all(|v| (-0.5..0.5).contains(v)));
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        assert!(mean.abs() < 0.02, "{mean}");
    }

    #[test]
    fn sizes_are_checked_and_named() {
        LayerConfig::new(16, 4, 2, 8).validate().unwrap();
        let e = LayerConfig::new(0, 4, 2, 8).validate().unwrap_err();
        assert_eq!(e, AttnError::ZeroDim { dim: "d_model" });
        let e = LayerConfig::new(16, 4, 3, 8).validate().unwrap_err();
        assert_eq!(e, AttnError::HeadsNotDivisible { q_heads: 4, kv_heads: 3 });
        let e = LayerConfig::new(16, 4, 2, 8).with_v_dim(0).validate().unwrap_err();
        assert_eq!(e, AttnError::ZeroDim { dim: "v_dim" });
        let e = LayerConfig::new(usize::MAX / 2, 4, 2, 8).validate().unwrap_err();
        assert_eq!(e, AttnError::Overflow { tensor: "w_q" });
        let c = LayerConfig::new(16, 4, 2, 8).with_v_dim(6);
        assert_eq!((c.q_width(), c.k_width(), c.v_width(), c.o_width()), (32, 16, 12, 24));
    }

    #[test]
    fn init_bounds() {
        assert_eq!(Init::XavierUniform.weight_bound(2, 4), 1.0);
        assert_eq!(Init::KaimingUniform.weight_bound(4, 100), 0.5);
        assert_eq!(Init::XavierUniform.bias_bound(4), 0.0);
        assert_eq!(Init::KaimingUniform.bias_bound(4), 0.5);
    }
}
