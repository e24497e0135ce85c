//! A counting global allocator: live heap bytes and their high-water mark.
//!
//! The library only defines [`CountingAlloc`] and its counters; each
//! binary, bench or test target that measures memory installs it itself:
//!
//! ```
//! #[global_allocator]
//! static ALLOC: harness::alloc::CountingAlloc = harness::alloc::CountingAlloc;
//!
//! fn main() {
//!     let (_buf, extra) = harness::alloc::measure(|| vec![1u8; 1 << 20]);
//!     assert!(extra.expect("installed above") >= 1 << 20);
//! }
//! ```
//!
//! (`attn`, the sweep's bench binary and `tests/memory.rs` do.) Where it is
//! not installed the counters never move: [`installed`] is false and
//! [`measure`] returns `None` rather than 0 bytes. Each allocation costs
//! two relaxed atomic adds and, only when a new maximum is reached, one
//! `fetch_max`: cheap enough to leave on while timing.
//!
//! The sweep measures a kernel's *extra* bytes as `peak - current` around
//! one call ([`measure`]): inputs and outputs were allocated before the
//! call, so they cancel out, and what remains is the kernel's scratch
//! (score matrices, tiles, packed panels, per-thread buffers). Memory
//! obtained without the allocator (thread stacks, `mmap` by hand) is not
//! seen; peak RSS covers that.
//!
//! The counters are process-wide: measure in a process (or behind a lock)
//! where nothing else allocates at the same time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

/// The system allocator plus two counters.
pub struct CountingAlloc;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Set by the first allocation through [`CountingAlloc`].
static INSTALLED: AtomicBool = AtomicBool::new(false);

#[inline(always)]
fn grow(bytes: usize) {
    if !INSTALLED.load(Relaxed) {
        INSTALLED.store(true, Relaxed);
    }
    let now = CURRENT.fetch_add(bytes, Relaxed) + bytes;
    if now > PEAK.load(Relaxed) {
        PEAK.fetch_max(now, Relaxed);
    }
}

#[inline(always)]
fn shrink(bytes: usize) {
    CURRENT.fetch_sub(bytes, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees hold; the counters only observe.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours (non-zero size layout).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through us with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr`/`layout` come from us (hence `System`), the caller
        // guarantees `new_size` is valid for `layout`'s alignment.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grow(new_size - layout.size());
            } else {
                shrink(layout.size() - new_size);
            }
        }
        p
    }
}

/// Whether [`CountingAlloc`] is this process's global allocator (it has
/// served an allocation). Every program allocates before `main`, so false
/// means the binary did not install it.
pub fn installed() -> bool {
    INSTALLED.load(Relaxed)
}

/// Bytes currently allocated on the heap by this process.
pub fn current() -> usize {
    CURRENT.load(Relaxed)
}

/// Highest [`current`] since the start or the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Relaxed)
}

/// Restarts the high-water mark from the current allocation.
pub fn reset_peak() {
    PEAK.store(CURRENT.load(Relaxed), Relaxed);
}

/// Runs `f` and returns its result with the peak bytes allocated *during*
/// the call beyond what was live before it (0 if it allocated nothing);
/// `None` when [`CountingAlloc`] is not installed (see [`installed`]).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, Option<usize>) {
    reset_peak();
    let base = current();
    let r = f();
    (r, installed().then(|| peak().saturating_sub(base)))
}
