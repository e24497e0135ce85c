//! Ring (context-parallel) attention: the sequence is sharded over `P`
//! ranks, K/V blocks travel around the ring while every rank attends its
//! own queries to the block it holds, and the partial results are merged
//! by log-sum-exp (`attn_flash::merge_partials`) in a fixed order.
//!
//! Each block is one flash call on a query chunk and a key chunk at their
//! global positions (`attn_core::ChunkPositions`: the mask and ALiBi on
//! global positions), so no rank ever holds more than its own chunks, one
//! block in flight and one being computed. A rank's result is the same
//! bits on every run and for any thread count (a fixed merge order), and
//! equals the single-process kernel's up to the merge's rounding.
//!
//! - [`partition`]: chunks of a sequence and which rank holds which
//!   (contiguous, zigzag);
//! - [`spec`]: what all ranks agree on ([`RingSpec`]) and the sizes that
//!   follow;
//! - [`plan`]: each rank's steps, the source of each block and the
//!   relation (full, diagonal, invisible → skipped) of each chunk pair;
//! - [`block`]: the flat f32 layout of the K/V block that travels;
//! - [`scatter`]: a rank's share cut out of the whole tensors and its
//!   results put back ([`RankInputs`], [`cut`], [`place`]);
//! - [`driver`]: one rank over any transport ([`run_rank`]);
//! - [`transport`]: how a block moves to the next rank ([`Transport`]);
//!   the schedule never knows whether it is threads or MPI;
//! - [`channel`]: the in-process transport ([`InProcess`], threads and
//!   channels, a deadline on every receive);
//! - [`in_process`]: a whole ring in one process ([`ring_in_process`]);
//! - [`model`]: the scaling model behind `docs/ring.md` (time per layer,
//!   and whether each transfer hides behind compute);
//! - [`error`]: the ring's error type, [`RingError`].
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod block;
pub mod channel;
pub mod driver;
pub mod error;
pub mod in_process;
pub mod model;
pub mod partition;
pub mod plan;
pub mod scatter;
pub mod spec;
// The MPI transport abandons a timed-out request (one `unsafe` call, its
// SAFETY comment beside it); nothing else in the crate is unsafe.
#[cfg(feature = "mpi")]
#[allow(unsafe_code)]
pub mod mpi;
pub mod transport;

pub use channel::InProcess;
pub use driver::{RankOutput, RankTiming, run_rank};
pub use error::RingError;
pub use in_process::{RingResult, ring_in_process};
pub use partition::{Partition, RingLayout};
pub use plan::{Pair, Relation, Step, rank_plan, relation};
pub use scatter::{RankInputs, cut, place};
pub use spec::RingSpec;
pub use transport::{ShiftTiming, Transport, TransportError};
