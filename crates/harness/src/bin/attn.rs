//! `attn`: attnlab's command line (see [`harness::cli`]).

use std::process::ExitCode;

// `attn bench` and `attn decode` measure a call's extra heap bytes.
#[global_allocator]
static ALLOC: harness::alloc::CountingAlloc = harness::alloc::CountingAlloc;

fn main() -> ExitCode {
    harness::cli::main()
}
