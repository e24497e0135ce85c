//! `cargo bench -p harness`: the long-context sweep, [`harness::sweep`].
//! This binary is also the child process that measures each configuration
//! ([`harness::measure::child`]), hence the counting allocator.

use std::process::ExitCode;

#[global_allocator]
static ALLOC: harness::alloc::CountingAlloc = harness::alloc::CountingAlloc;

fn main() -> ExitCode {
    harness::sweep::bench_main()
}
