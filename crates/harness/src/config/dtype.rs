//! The storage type of Q, K and V (decode: of the K/V cache): the one
//! `Dtype` of the harness, for the sweep's configurations and for the
//! `.npy` files of `attn run`. `q8_0` is a KV-cache format only.

use serde::{Deserialize, Serialize};

/// Storage type of Q, K and V.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// f32 (numpy `float32`, `<f4`).
    F32,
    /// IEEE half (numpy `float16`, `<f2`).
    F16,
    /// bfloat16.
    Bf16,
    /// ggml's q8_0 blocks (32 int8 values and an f16 scale): KV caches
    /// only.
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl Dtype {
    /// The storage types of Q, K and V (prefill).
    pub const INPUTS: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];
    /// The storage types of a KV cache (decode).
    pub const CACHES: [Dtype; 4] = [Dtype::F32, Dtype::F16, Dtype::Bf16, Dtype::Q8_0];

    /// "f32", "f16", "bf16", "q8_0".
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
            Dtype::Q8_0 => "q8_0",
        }
    }
    /// numpy's name of the dtype: "float32", "float16", "bfloat16" (q8_0
    /// has none: "q8_0").
    pub fn numpy_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
            Dtype::Q8_0 => "q8_0",
        }
    }
    /// Parses a name.
    pub fn parse(s: &str) -> Result<Dtype, String> {
        match s {
            "f32" => Ok(Dtype::F32),
            "f16" => Ok(Dtype::F16),
            "bf16" => Ok(Dtype::Bf16),
            "q8_0" => Ok(Dtype::Q8_0),
            _ => Err(format!("unknown dtype '{s}' (expected f32, f16, bf16 or q8_0)")),
        }
    }
    /// Bytes of a row of `n` values (q8_0: ⌈n/32⌉ blocks of 34 bytes).
    pub fn row_bytes(self, n: u64) -> u64 {
        match self {
            Dtype::F32 => 4 * n,
            Dtype::F16 | Dtype::Bf16 => 2 * n,
            Dtype::Q8_0 => 34 * n.div_ceil(32),
        }
    }
}
