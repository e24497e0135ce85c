//! The layer's inputs and outputs: batches of token sequences.

use attn_core::AttnError;

/// A read-only batch of token sequences, `[batch, len, width]` row-major
/// f32 (token-major: the `width` features of one token are contiguous).
/// `name` ("x_q", "x_kv", "dy", …) appears in every error about it.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    name: &'static str,
    data: &'a [f32],
    dims: [usize; 3],
}

impl<'a> Tokens<'a> {
    /// `data` as `[batch, len, width]`; an error naming `name` if its
    /// length is not `batch·len·width`.
    pub fn new(name: &'static str, data: &'a [f32], dims: [usize; 3]) -> Result<Self, AttnError> {
        let expected = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or(AttnError::Overflow { tensor: name })?;
        if data.len() != expected {
            return Err(AttnError::BufferLen { tensor: name, expected, got: data.len() });
        }
        Ok(Tokens { name, data, dims })
    }

    /// The name in errors.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// The values, `[batch, len, width]` row-major.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }
    /// Sequences.
    pub fn batch(&self) -> usize {
        self.dims[0]
    }
    /// Tokens per sequence.
    pub fn len(&self) -> usize {
        self.dims[1]
    }
    /// Whether the sequences are empty.
    pub fn is_empty(&self) -> bool {
        self.dims[1] == 0
    }
    /// Features per token.
    pub fn width(&self) -> usize {
        self.dims[2]
    }
    /// `batch·len`, the rows of the matrix the projections multiply.
    pub fn rows(&self) -> usize {
        self.dims[0] * self.dims[1]
    }

    /// Checks the width against the layer's `d_model` and, given one, the
    /// batch against `batch`, naming this tensor and the dimension.
    pub(crate) fn expect(&self, d_model: usize, batch: Option<usize>) -> Result<(), AttnError> {
        if self.width() != d_model {
            return Err(AttnError::Dim {
                tensor: self.name,
                dim: "features (d_model)",
                expected: d_model,
                got: self.width(),
            });
        }
        match batch {
            Some(b) if b != self.batch() => Err(AttnError::Dim {
                tensor: self.name,
                dim: "batch entries",
                expected: b,
                got: self.batch(),
            }),
            _ => Ok(()),
        }
    }

    /// The first non-finite value, as an error naming this tensor.
    pub(crate) fn check_finite(&self) -> Result<(), AttnError> {
        match self.data.iter().position(|x| !x.is_finite()) {
            None => Ok(()),
            Some(index) => {
                Err(AttnError::NonFinite { tensor: self.name, index, value: self.data[index] })
            }
        }
    }
}
