//! # harness
//!
//! Benchmarks, the long-context sweep, the report generator and the `attn`
//! command line of attnlab.

// --- `attn run` on .npy files
pub mod npy;
pub mod run;

// --- `attn decode`: one KV-cache decode configuration
pub mod decode;

// --- sweep, machine facts, memory accounting, report
pub mod alloc;
pub mod machine;
pub mod report;
pub mod sweep;
