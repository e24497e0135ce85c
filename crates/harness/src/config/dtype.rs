//! The storage type of Q, K and V (decode: of the K/V cache): the one
//! `Dtype` of the harness, for the sweep's configurations and for the
//! `.npy` files of `attn run`.

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
}

impl Dtype {
    /// "f32", "f16", "bf16".
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }
    /// numpy's name of the dtype: "float32", "float16", "bfloat16".
    pub fn numpy_name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
        }
    }
    /// Parses a name.
    pub fn parse(s: &str) -> Result<Dtype, String> {
        match s {
            "f32" => Ok(Dtype::F32),
            "f16" => Ok(Dtype::F16),
            "bf16" => Ok(Dtype::Bf16),
            _ => Err(format!("unknown dtype '{s}' (expected f32, f16 or bf16)")),
        }
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }
}
