//! The machine a run measures on: what it is ([`facts`]), what it can do
//! ([`peak`]: FMA throughput, read bandwidth), how much memory a process
//! holds ([`procfs`]: peak RSS) and the clock ([`clock`]).

pub mod clock;
pub mod facts;
pub mod peak;
pub mod procfs;

pub use clock::{utc_now, utc_stamp};
pub use facts::{CacheInfo, MachineInfo, logical_cpus};
pub use peak::{Peak, PeakOptions, measure_peak};
pub use procfs::{meminfo, reset_hwm, vm_hwm, vm_rss};

/// Timings of an unoptimized build mean nothing: say so on stderr.
pub fn warn_if_unoptimized(what: &str) {
    if cfg!(debug_assertions) {
        eprintln!(
            "{what}: warning: this build has debug assertions (not --release); \
             times and peaks are not representative"
        );
    }
}
