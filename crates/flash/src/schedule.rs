//! The work scheduler of the tiled forward and the backward: items
//! `0..n` handed out through one atomic counter to a fixed set of workers,
//! each with its own scratch.
//!
//! Which worker runs an item never changes what the item computes, and
//! items write disjoint outputs, so results are the same bits for any
//! number of workers.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `item(i, scratch)` for every `i < n` on `workers.len()` workers:
/// the calling thread for one, else tasks of the current rayon pool (the
/// caller has entered the call's [`attn_core::Par`]). Items are taken in
/// order, so callers number the heaviest first.
pub(crate) fn run_items<S: Send>(n: usize, workers: &mut [S], item: impl Fn(usize, &mut S) + Sync) {
    let next = AtomicUsize::new(0);
    let work = |s: &mut S| {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            item(i, s);
        }
    };
    match workers {
        [first] => work(first),
        [first, rest @ ..] => {
            let work = &work;
            rayon::scope(|sc| {
                for s in rest {
                    sc.spawn(move |_| work(s));
                }
                work(first);
            })
        }
        [] => unreachable!("at least one worker"),
    }
}
