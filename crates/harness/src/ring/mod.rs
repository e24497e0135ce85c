//! What `attn ring` and `attn ring-bench` do: ring attention
//! ([`attnlab::ring`]) from `.npy` files or on generated inputs, over
//! `P` in-process ranks or, with the cargo feature `mpi` under `mpirun`,
//! over `P` processes; and the results behind `docs/ring.md`.
//!
//! ```text
//! attn ring       rank 0: read + validate q, k, v ──(agree: all ranks get the error)──►
//!                 header (shape, mask, layout) ─► scatter (cut) ─► every rank: run_rank
//!                 ─► gather (place) ─► rank 0 writes O, LSE (temp + rename) ─► agree
//! attn ring-bench every rank: its own generated chunks ─► run_rank × reps ─► the same
//!                 shifts alone (transfer time) ─► gather the timings ─► results/ring.json
//! ```
//!
//! - [`launch`]: how the process was started (plain, or one of `P` ranks of
//!   `mpirun`), and the refusal to run every rank alone;
//! - [`problem`]: the problem every rank agrees on ([`RingProblem`]) and the
//!   header that carries it from rank 0;
//! - [`inputs`]: reading and validating the `.npy` inputs (errors name the
//!   file, the tensor and the dimension);
//! - [`run`]: `attn ring`'s in-process run and its all-or-nothing outputs;
//! - [`mod@bench`]: `attn ring-bench`'s generated inputs, the bench over any
//!   transport, the overlap figure, and one rank alone ([`solo`]);
//! - [`solo`]: a transport that hands one rank the other ranks' blocks, so
//!   its compute can be timed with nothing else running;
//! - [`results`]: `results/ring.json` (ring runs, solo ranks, ping-pong);
//! - [`wire`]: timings through the transports' `f32` messages;
//! - `mpi` (feature `mpi`): the same over `MpiTransport`, one process per
//!   rank.

pub mod bench;
pub mod inputs;
pub mod launch;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod problem;
pub mod results;
pub mod run;
pub mod solo;
pub mod wire;

pub use launch::Launch;
pub use problem::RingProblem;
