//! The ring's error: a bad argument or a kernel error ([`AttnError`],
//! naming the tensor and dimension), a failed transfer
//! ([`TransportError`]), and on which rank it happened.

use std::fmt;

use attn_core::AttnError;

use crate::transport::TransportError;

/// Why a ring run failed.
#[derive(Debug, Clone, PartialEq)]
pub enum RingError {
    /// Bad input or a kernel error, naming the tensor or parameter.
    Attn(AttnError),
    /// A block could not be moved (a neighbour failed, hung up or timed
    /// out).
    Transport(TransportError),
    /// The error `error` happened on rank `rank`.
    OnRank {
        /// The rank that reported it.
        rank: usize,
        /// What it reported.
        error: Box<RingError>,
    },
}

impl RingError {
    /// The error without its rank.
    pub fn root(&self) -> &RingError {
        match self {
            RingError::OnRank { error, .. } => error.root(),
            e => e,
        }
    }

    /// Whether the error only reports another rank's failure (a transport
    /// error: a peer's message, a hang-up, a timeout), rather than being
    /// the original failure.
    pub fn is_consequence(&self) -> bool {
        matches!(self.root(), RingError::Transport(_))
    }

    pub(crate) fn on_rank(self, rank: usize) -> RingError {
        match self {
            e @ RingError::OnRank { .. } => e,
            e => RingError::OnRank { rank, error: Box::new(e) },
        }
    }
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::Attn(e) => e.fmt(f),
            RingError::Transport(e) => e.fmt(f),
            RingError::OnRank { rank, error } => write!(f, "rank {rank}: {error}"),
        }
    }
}

impl std::error::Error for RingError {}

impl From<AttnError> for RingError {
    fn from(e: AttnError) -> Self {
        RingError::Attn(e)
    }
}

impl From<TransportError> for RingError {
    fn from(e: TransportError) -> Self {
        RingError::Transport(e)
    }
}
