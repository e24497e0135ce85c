//! The one operation a ring needs from its transport: pass my block to the
//! next rank and receive the previous rank's block, **while** the current
//! block is being computed (double buffering), so communication overlaps
//! compute.

use std::fmt;
use std::time::Duration;

/// Why a shift failed. Every receive has a deadline, so a rank whose
/// neighbour died reports an error instead of hanging.
#[derive(Debug, Clone, PartialEq)]
pub enum TransportError {
    /// No block arrived from `from` within `waited`.
    Timeout {
        /// The rank we were receiving from.
        from: usize,
        /// How long we waited.
        waited: Duration,
    },
    /// A block of the wrong length arrived.
    Length {
        /// The rank it came from.
        from: usize,
        /// Elements expected.
        expected: usize,
        /// Elements received.
        got: usize,
    },
    /// Another rank failed and told us so; its message.
    Peer {
        /// The failing rank.
        rank: usize,
        /// What it reported.
        message: String,
    },
    /// The transport itself failed (a closed channel, an MPI error).
    Io(String),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Timeout { from, waited } => {
                write!(f, "no block from rank {from} within {:.1} s", waited.as_secs_f64())
            }
            TransportError::Length { from, expected, got } => {
                write!(f, "rank {from} sent {got} elements, expected {expected}")
            }
            TransportError::Peer { rank, message } => write!(f, "rank {rank} failed: {message}"),
            TransportError::Io(m) => write!(f, "transport: {m}"),
        }
    }
}

impl std::error::Error for TransportError {}

/// Where a shift's time went, for `attn ring-bench`'s overlap figure.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShiftTiming {
    /// Wall time of the overlapped work (the closure).
    pub compute: Duration,
    /// Wall time spent waiting for the transfer after the work finished
    /// (the communication that did *not* hide behind compute).
    pub exposed_comm: Duration,
    /// Wall time of the whole shift (start of transfer to both done).
    pub total: Duration,
}

/// A ring of `size()` ranks; this endpoint is rank `rank()`. The next rank
/// is `(rank + 1) % size`, the previous `(rank + size - 1) % size`.
pub trait Transport {
    /// This endpoint's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of ranks in the ring.
    fn size(&self) -> usize;
    /// Sends `outgoing` to the next rank and receives the previous rank's
    /// block into `incoming` (same length on every rank for a given step,
    /// else [`TransportError::Length`]), running `work` while the transfer
    /// is in flight; returns `work`'s result once both are complete.
    /// A receive that takes longer than the transport's deadline is a
    /// [`TransportError::Timeout`].
    fn shift_during<R>(
        &mut self,
        outgoing: &[f32],
        incoming: &mut [f32],
        work: impl FnOnce() -> R,
    ) -> Result<(R, ShiftTiming), TransportError>;

    /// Tells the ring that this rank failed with `message` and will shift
    /// no more blocks, so that its neighbours stop waiting for it and
    /// report [`TransportError::Peer`] instead of a timeout. Best effort,
    /// never blocks; the default does nothing (the neighbours then time
    /// out, or see the rank hang up). The ring driver calls it on every
    /// error.
    fn abort(&mut self, message: &str) {
        let _ = message;
    }
}
