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
    /// A buffer sized by the input could not be allocated (`available`:
    /// the memory the system reported free, when it did).
    OutOfMemory { tensor: &'static str, bytes: usize, available: Option<u64> },
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
            AttnError::OutOfMemory { tensor, bytes, available } => {
                let gib = |b: f64| b / (1u64 << 30) as f64;
                write!(f, "{tensor}: needs {:.2} GiB", gib(*bytes as f64))?;
                match available {
                    Some(a) => write!(f, ", {:.2} GiB available", gib(*a as f64)),
                    None => write!(f, ", which could not be allocated"),
                }
            }
        }
    }
}

impl std::error::Error for AttnError {}

/// A zeroed `Vec` of `len` elements, or [`AttnError::OutOfMemory`] naming
/// `tensor` (never an abort): for every buffer whose size comes from input.
/// Buffers of 64 MiB and more are first checked against the memory the
/// system reports available (Linux: `MemAvailable`, and the cgroup's
/// limit), because with overcommit a reservation can succeed and the
/// process be killed when it touches the pages.
pub fn try_zeroed<T: Clone + Default>(
    tensor: &'static str,
    len: usize,
) -> Result<Vec<T>, AttnError> {
    let bytes = len.saturating_mul(std::mem::size_of::<T>());
    if bytes >= 64 << 20
        && let Some(avail) = available_memory()
        && bytes as u64 > avail
    {
        return Err(AttnError::OutOfMemory { tensor, bytes, available: Some(avail) });
    }
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| AttnError::OutOfMemory {
        tensor,
        bytes,
        available: available_memory(),
    })?;
    v.resize(len, T::default());
    Ok(v)
}

/// Bytes the system can still give this process, where it says so.
pub fn available_memory() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib = meminfo
            .lines()
            .find(|l| l.starts_with("MemAvailable:"))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()?;
        let mut avail = kib * 1024;
        let cg = |f: &str| {
            std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        if let (Some(max), Some(cur)) = (cg("memory.max"), cg("memory.current")) {
            avail = avail.min(max.saturating_sub(cur));
        }
        Some(avail)
    }
    #[cfg(not(target_os = "linux"))]
    None
}
