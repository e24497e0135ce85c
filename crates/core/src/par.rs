//! Parallelism of a call: never implicit, and the same meaning on every
//! path of every kernel.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::AttnError;

/// Most threads a call may ask for (a sanity bound: larger requests are an
/// error, not an attempt to start millions of threads).
pub const MAX_THREADS: usize = 4096;

/// How many threads one call runs on.
///
/// Every kernel path (naive, flash tiled, flash split-KV, KV-cache decode)
/// enters parallel work through [`Par::install`], so the three variants
/// mean the same everywhere. Results are bitwise identical for any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Par {
    /// The calling thread only.
    Seq,
    /// Every worker of the current rayon pool: the global one, or the one a
    /// caller `install`ed. The default.
    #[default]
    Pool,
    /// Exactly this many threads: the current rayon pool when it has this
    /// many, otherwise a pool of this size that attnlab keeps for reuse
    /// (created on first use). At most [`MAX_THREADS`].
    Rayon(NonZeroUsize),
}

impl Par {
    /// `Par::Rayon(n)`, or an error naming `threads` when `n` is 0 or above
    /// [`MAX_THREADS`].
    pub fn rayon(n: usize) -> Result<Par, AttnError> {
        let p = Par::Rayon(NonZeroUsize::new(n).ok_or(AttnError::ZeroDim { dim: "threads" })?);
        p.validate()?;
        Ok(p)
    }

    /// Checks the thread count (see [`MAX_THREADS`]).
    pub fn validate(&self) -> Result<(), AttnError> {
        match *self {
            Par::Rayon(n) if n.get() > MAX_THREADS => Err(AttnError::Param {
                name: "threads",
                reason: format!("at most {MAX_THREADS}, got {n}"),
            }),
            _ => Ok(()),
        }
    }

    /// Number of threads the call runs on (for [`Par::Pool`], the size of
    /// the pool current where this is called).
    pub fn threads(&self) -> usize {
        match *self {
            Par::Seq => 1,
            Par::Pool => rayon::current_num_threads().max(1),
            Par::Rayon(n) => n.get(),
        }
    }

    /// Runs `f` where this parallelism holds: on the calling thread for
    /// [`Par::Seq`] and [`Par::Pool`]; for [`Par::Rayon`]`(n)`, inside a rayon
    /// pool of exactly `n` threads (the current one if it has `n`). Kernels
    /// run their parallel loops inside `f` and size them by [`Par::threads`].
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, AttnError> {
        self.validate()?;
        let (threads, r) = match *self {
            Par::Seq => (1, f()),
            Par::Pool => (rayon::current_num_threads(), f()),
            Par::Rayon(n) => {
                let inside = || (rayon::current_num_threads(), f());
                if rayon::current_num_threads() == n.get() {
                    inside()
                } else {
                    pool(n.get())?.install(inside)
                }
            }
        };
        LAST_INSTALL.with(|c| c.set(Some(threads)));
        Ok(r)
    }
}

thread_local! {
    static LAST_INSTALL: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Test hook: the number of threads the work of the last [`Par::install`]
/// made from this thread ran on (1 for [`Par::Seq`], the pool's size
/// otherwise, read inside the pool). Lets tests check that every kernel
/// path honours its `Par`.
pub fn last_install_threads() -> Option<usize> {
    LAST_INSTALL.with(|c| c.get())
}

/// The pool of `n` threads kept for [`Par::Rayon`]`(n)`.
fn pool(n: usize) -> Result<Arc<rayon::ThreadPool>, AttnError> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&n) {
        return Ok(p.clone());
    }
    let p = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(move |i| format!("attnlab-{n}-{i}"))
        .build()
        .map_err(|e| AttnError::Param {
            name: "threads",
            reason: format!("cannot start a pool of {n} threads: {e}"),
        })?;
    let p = Arc::new(p);
    pools.insert(n, p.clone());
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rayon_n_runs_on_n_threads_wherever_it_is_called() {
        for n in 1..=3 {
            let par = Par::rayon(n).unwrap();
            assert_eq!(par.threads(), n);
            assert_eq!(par.install(rayon::current_num_threads).unwrap(), n);
            assert_eq!(last_install_threads(), Some(n));
            // from inside a pool of another size, too
            let other = rayon::ThreadPoolBuilder::new().num_threads(n + 1).build().unwrap();
            assert_eq!(other.install(|| par.install(rayon::current_num_threads)).unwrap(), n);
            assert_eq!(other.install(|| Par::Pool.threads()), n + 1);
        }
        assert_eq!(Par::Seq.install(|| 7).unwrap(), 7);
    }

    #[test]
    fn zero_or_absurd_thread_counts_are_errors() {
        assert_eq!(Par::rayon(0).unwrap_err(), AttnError::ZeroDim { dim: "threads" });
        let e = Par::rayon(usize::MAX).unwrap_err();
        assert!(e.to_string().starts_with("threads: at most"), "{e}");
        let p = Par::Rayon(NonZeroUsize::new(MAX_THREADS + 1).unwrap());
        assert!(p.install(|| ()).is_err());
    }
}
