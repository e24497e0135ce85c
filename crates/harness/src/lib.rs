//! # harness
//!
//! Benchmarks, the long-context sweep, the report generator and the `attn`
//! command line of attnlab. It reaches the kernels through the `attnlab`
//! facade only.
//!
//! | module | holds |
//! |---|---|
//! | [`config`] | what one measurement is: [`config::Config`] and its id, the one [`config::Dtype`], the one mask spec and `--window` grammar, head groupings, score modifiers ([`config::Mods`], [`config::ModData`]) |
//! | [`units`] | human-readable bytes and durations |
//! | [`alloc`] | the counting allocator (installed by each binary) |
//! | [`machine`] | machine facts, measured peaks, `/proc` memory, the clock |
//! | [`results`] | the results data model ([`results::Row`], [`results::RunFile`]) and its files |
//! | [`measure`] | the prefill, decode and backward runners (seeded inputs and modifiers), one measurement, the f64 error check, the child-process protocol |
//! | [`npy_call`] | `attn run`'s and `attn grad`'s work: `.npy` files in (modifiers' files too), one timed kernel call, `.npy` files out |
//! | [`ring`] | `attn ring`'s and `attn ring-bench`'s work: ring attention from `.npy` files or generated inputs, in one process or over MPI (feature `mpi`), the bench's timings and overlap, `results/ring.json` |
//! | [`saturate`] | the softmax-saturation study of `attn saturate` (one layer and a deep stack, with the kernels' statistics) and its results file |
//! | [`report`] | results → `docs/`: markdown tables, headline, plots, decode, backward and score-modifier sections; a row on the terminal |
//! | [`sweep`] | the grid and the sweep driver behind `cargo bench -p harness` |
//! | [`cli`] | the `attn` subcommands: flags and a `main` each |
//!
//! Dependencies point one way, down this list (no cycles, nothing
//! imports a module above it):
//!
//! ```text
//! config, units, alloc            (leaves: attnlab only)
//!   ← machine                     (units)
//!   ← results                     (config, machine)
//!   ← measure                     (config, machine, results, alloc)
//!   ← npy_call                    (config)
//!   ← ring                        (config, machine, measure, npy_call)
//!   ← saturate                    (machine, measure::inputs)
//!   ← report                      (config, results, units, ring, saturate::results)
//!   ← sweep                       (measure, report, results, machine, config)
//!   ← cli                         (everything)
//! ```
//!
//! A new experiment is a runner in [`measure`] (and a [`config::Kind`]),
//! its rows in [`mod@sweep::grid`], its section in [`report`], and, if it has
//! a command, one file in [`cli`].

pub mod alloc;
pub mod cli;
pub mod config;
pub mod machine;
pub mod measure;
pub mod npy_call;
pub mod report;
pub mod results;
pub mod ring;
pub mod saturate;
pub mod sweep;
pub mod units;
