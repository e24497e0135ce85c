//! The layer's parameters ([`Weights`], [`Matrix`]) and the layer itself
//! ([`MultiHeadAttention`]): made only from weights that fit its
//! [`LayerConfig`] and are finite, so every later call can trust them.

use attn_core::AttnError;

use crate::config::{Init, LayerConfig, SplitMix64};

/// A row-major `rows × cols` f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    /// `data` as a `rows × cols` matrix; `tensor` names it in the error if
    /// the length is not `rows·cols`.
    pub fn new(
        tensor: &'static str,
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    ) -> Result<Self, AttnError> {
        let expected = rows.checked_mul(cols).ok_or(AttnError::Overflow { tensor })?;
        if data.len() != expected {
            return Err(AttnError::BufferLen { tensor, expected, got: data.len() });
        }
        Ok(Matrix { rows, cols, data })
    }

    /// A `rows × cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix { rows, cols, data: vec![0.0; rows * cols] }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    /// The values, row-major, mutable (the dims stay).
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    /// The values.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
}

/// The parameters of a layer (or their gradients, with the same shapes):
/// `Y = attention(X_q·W_Q + b_Q, X_kv·W_K + b_K, X_kv·W_V + b_V)·W_O + b_O`,
/// with the dims of [`LayerConfig`]. Biases are all present or all absent,
/// as the config says.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// `W_Q`, `[d_model, Hq·d]`.
    pub w_q: Matrix,
    /// `W_K`, `[d_model, Hkv·d]`.
    pub w_k: Matrix,
    /// `W_V`, `[d_model, Hkv·dv]`.
    pub w_v: Matrix,
    /// `W_O`, `[Hq·dv, d_model]`.
    pub w_o: Matrix,
    /// `b_Q`, `Hq·d` values.
    pub b_q: Option<Vec<f32>>,
    /// `b_K`, `Hkv·d` values.
    pub b_k: Option<Vec<f32>>,
    /// `b_V`, `Hkv·dv` values.
    pub b_v: Option<Vec<f32>>,
    /// `b_O`, `d_model` values.
    pub b_o: Option<Vec<f32>>,
}

impl Weights {
    /// Zero weights (and zero biases if the config has them) for `config`.
    pub fn zeros(config: &LayerConfig) -> Self {
        let [q, k, v, o] = config.weight_dims().map(|(_, [r, c])| Matrix::zeros(r, c));
        let bias = |n: usize| config.bias.then(|| vec![0.0; n]);
        Weights {
            w_q: q,
            w_k: k,
            w_v: v,
            w_o: o,
            b_q: bias(config.q_width()),
            b_k: bias(config.k_width()),
            b_v: bias(config.v_width()),
            b_o: bias(config.d_model),
        }
    }

    /// The four weights with their names.
    pub fn matrices(&self) -> [(&'static str, &Matrix); 4] {
        [("w_q", &self.w_q), ("w_k", &self.w_k), ("w_v", &self.w_v), ("w_o", &self.w_o)]
    }

    /// The four biases with their names.
    pub fn biases(&self) -> [(&'static str, Option<&[f32]>); 4] {
        [
            ("b_q", self.b_q.as_deref()),
            ("b_k", self.b_k.as_deref()),
            ("b_v", self.b_v.as_deref()),
            ("b_o", self.b_o.as_deref()),
        ]
    }

    /// Every tensor, weights then biases, as `(name, values)`.
    pub fn tensors(&self) -> impl Iterator<Item = (&'static str, &[f32])> {
        let m = self.matrices().map(|(n, w)| (n, w.data()));
        let b = self.biases();
        m.into_iter().chain(b.into_iter().filter_map(|(n, b)| b.map(|b| (n, b))))
    }

    /// Every tensor, weights then biases, mutable (for an optimiser step).
    pub fn tensors_mut(&mut self) -> impl Iterator<Item = (&'static str, &mut [f32])> {
        let Weights { w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o } = self;
        let m = [("w_q", w_q), ("w_k", w_k), ("w_v", w_v), ("w_o", w_o)]
            .map(|(n, w)| (n, w.data_mut()));
        let b = [("b_q", b_q), ("b_k", b_k), ("b_v", b_v), ("b_o", b_o)];
        m.into_iter().chain(b.into_iter().filter_map(|(n, b)| b.as_deref_mut().map(|b| (n, b))))
    }

    /// Checks every tensor against `config`, naming the tensor and the
    /// dimension (`w_v: expected 16 columns (kv_heads·v_dim), got 12`), and
    /// that every value is finite (the first offender, by tensor and flat
    /// index).
    pub fn check(&self, config: &LayerConfig) -> Result<(), AttnError> {
        const COLS: [&str; 4] = [
            "columns (q_heads·head_dim)",
            "columns (kv_heads·head_dim)",
            "columns (kv_heads·v_dim)",
            "columns (d_model)",
        ];
        const ROWS: [&str; 4] =
            ["rows (d_model)", "rows (d_model)", "rows (d_model)", "rows (q_heads·v_dim)"];
        for (i, ((tensor, w), (_, [rows, cols]))) in
            self.matrices().into_iter().zip(config.weight_dims()).enumerate()
        {
            if w.rows() != rows {
                return Err(AttnError::Dim { tensor, dim: ROWS[i], expected: rows, got: w.rows() });
            }
            if w.cols() != cols {
                return Err(AttnError::Dim { tensor, dim: COLS[i], expected: cols, got: w.cols() });
            }
        }
        let widths = [config.q_width(), config.k_width(), config.v_width(), config.d_model];
        const ENTRIES: [&str; 4] = [
            "entries (q_heads·head_dim)",
            "entries (kv_heads·head_dim)",
            "entries (kv_heads·v_dim)",
            "entries (d_model)",
        ];
        for (i, ((tensor, b), n)) in self.biases().into_iter().zip(widths).enumerate() {
            match (b, config.bias) {
                (Some(b), true) if b.len() != n => {
                    return Err(AttnError::Dim {
                        tensor,
                        dim: ENTRIES[i],
                        expected: n,
                        got: b.len(),
                    });
                }
                (None, true) => {
                    return Err(AttnError::Param {
                        name: tensor,
                        reason: "missing: the layer's config has biases (bias = true)".into(),
                    });
                }
                (Some(_), false) => {
                    return Err(AttnError::Param {
                        name: tensor,
                        reason: "given, but the layer's config has no biases (bias = false)".into(),
                    });
                }
                _ => {}
            }
        }
        for (tensor, x) in self.tensors() {
            if let Some(index) = x.iter().position(|v| !v.is_finite()) {
                return Err(AttnError::NonFinite { tensor, index, value: x[index] });
            }
        }
        Ok(())
    }
}

/// A multi-head attention layer: projections, attention with the flash
/// kernel, output projection; its gradient; incremental decoding over a KV
/// cache. Made by [`MultiHeadAttention::new`] (given weights) or
/// [`MultiHeadAttention::init`] (seeded), both checked, so the weights
/// always fit the config and are finite.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiHeadAttention {
    config: LayerConfig,
    weights: Weights,
}

impl MultiHeadAttention {
    /// A layer with these weights, checked against `config` (see
    /// [`Weights::check`]).
    pub fn new(config: LayerConfig, weights: Weights) -> Result<Self, AttnError> {
        config.validate()?;
        weights.check(&config)?;
        Ok(MultiHeadAttention { config, weights })
    }

    /// A layer with weights drawn by `init` from `seed` (see [`Init`]).
    pub fn init(config: LayerConfig, init: Init, seed: u64) -> Result<Self, AttnError> {
        config.validate()?;
        let mut w = Weights::zeros(&config);
        let mut rng = SplitMix64::new(seed);
        for m in [&mut w.w_q, &mut w.w_k, &mut w.w_v, &mut w.w_o] {
            let a = init.weight_bound(m.rows(), m.cols());
            m.data_mut().iter_mut().for_each(|x| *x = rng.uniform(a));
        }
        let fan_in = [config.d_model, config.d_model, config.d_model, config.o_width()];
        for (b, fan_in) in [&mut w.b_q, &mut w.b_k, &mut w.b_v, &mut w.b_o].into_iter().zip(fan_in)
        {
            let a = init.bias_bound(fan_in);
            if let Some(b) = b {
                b.iter_mut().for_each(|x| *x = if a == 0.0 { 0.0 } else { rng.uniform(a) });
            }
        }
        Self::new(config, w)
    }

    /// The sizes.
    pub fn config(&self) -> &LayerConfig {
        &self.config
    }

    /// The weights.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Replaces the weights (after an optimiser step, say), checked like
    /// [`MultiHeadAttention::new`]; on error the layer keeps its old ones.
    pub fn set_weights(&mut self, weights: Weights) -> Result<(), AttnError> {
        weights.check(&self.config)?;
        self.weights = weights;
        Ok(())
    }

    /// The weights, giving up the layer.
    pub fn into_weights(self) -> Weights {
        self.weights
    }
}
