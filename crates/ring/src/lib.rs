//! Ring (context-parallel) attention: the sequence is sharded over `P`
//! ranks, K/V blocks travel around the ring while every rank attends its
//! own queries to the block it holds, and the partial results are merged
//! by log-sum-exp (`attn_flash::merge_partials`) in a fixed order.
//!
//! - [`transport`]: how a block moves to the next rank ([`Transport`]);
//!   the schedule never knows whether it is threads or MPI.
#![warn(missing_docs)]

#[cfg(feature = "mpi")]
pub mod mpi;
pub mod transport;

pub use transport::{ShiftTiming, Transport, TransportError};
