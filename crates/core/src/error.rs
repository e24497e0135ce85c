//! The one error type of attnlab. Every message names the tensor and the
//! dimension (or the parameter) so that a user can act on it.

use std::fmt;

/// Everything that can be wrong with an attention call. (Field names are
/// self-describing: the tensor, the dimension, expected and actual sizes.)
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq)]
pub enum AttnError {
    /// A size that must be positive is zero, e.g. `head_dim`.
    ZeroDim { dim: &'static str },
    /// `q_heads` is not a multiple of `kv_heads`.
    HeadsNotDivisible { q_heads: usize, kv_heads: usize },
    /// An element count or byte count does not fit in `usize`.
    Overflow { tensor: &'static str },
    /// A buffer has the wrong number of elements for its dimensions.
    BufferLen { tensor: &'static str, expected: usize, got: usize },
    /// A tensor's dimension disagrees with the problem's shape.
    Dim { tensor: &'static str, dim: &'static str, expected: usize, got: usize },
    /// A tensor holds NaN or an infinity (checked unless opted out).
    NonFinite { tensor: &'static str, index: usize, value: f32 },
    /// A parameter is out of its domain, e.g. a non-finite scale.
    Param { name: &'static str, reason: String },
    /// A capability that the chosen kernel does not offer.
    Unsupported { what: String },
    /// A buffer sized by the input could not be allocated.
    OutOfMemory { tensor: &'static str, bytes: usize },
    /// A row's log-sum-exp, asked for, is beyond the f32 range (logits
    /// near ±3.4e38 after scaling); its output is still exact.
    ScoreOverflow { batch: usize, head: usize, row: usize, lse: f64 },
}

impl fmt::Display for AttnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttnError::ZeroDim { dim } => write!(f, "{dim} must be at least 1, got 0"),
            AttnError::HeadsNotDivisible { q_heads, kv_heads } => write!(
                f,
                "q heads ({q_heads}) must be a multiple of kv heads ({kv_heads}) for MHA/GQA/MQA"
            ),
            AttnError::Overflow { tensor } => {
                write!(f, "{tensor}: element count overflows usize")
            }
            AttnError::BufferLen { tensor, expected, got } => write!(
                f,
                "{tensor}: buffer has {got} elements, expected {expected} from its dimensions"
            ),
            AttnError::Dim { tensor, dim, expected, got } => {
                write!(f, "{tensor}: expected {expected} {dim}, got {got}")
            }
            AttnError::NonFinite { tensor, index, value } => write!(
                f,
                "{tensor}: non-finite value {value} at flat index {index} \
                 (pass check_finite = false to let it propagate instead)"
            ),
            AttnError::Param { name, reason } => write!(f, "{name}: {reason}"),
            AttnError::Unsupported { what } => write!(f, "unsupported: {what}"),
            AttnError::ScoreOverflow { batch, head, row, lse } => write!(
                f,
                "scores overflow f32 at batch {batch} head {head} row {row}: its log-sum-exp is \
                 {lse:e}, beyond f32's range (scale Q or K down, or lower the scale)"
            ),
            AttnError::OutOfMemory { tensor, bytes } => write!(
                f,
                "{tensor}: needs {:.2} GiB, which could not be allocated",
                *bytes as f64 / (1u64 << 30) as f64
            ),
        }
    }
}

impl std::error::Error for AttnError {}

/// A zeroed `Vec` of `len` elements, or [`AttnError::OutOfMemory`] naming
/// `tensor` (never an abort): for every buffer whose size comes from input.
pub fn try_zeroed<T: Clone + Default>(
    tensor: &'static str,
    len: usize,
) -> Result<Vec<T>, AttnError> {
    let bytes = len.saturating_mul(std::mem::size_of::<T>());
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| AttnError::OutOfMemory { tensor, bytes })?;
    v.resize(len, T::default());
    Ok(v)
}
