//! Software prefetch spread over a loop: [`Ahead`] holds the memory the
//! next step will read, and each iteration asks for its share of it.
//!
//! Measured on Zen 5 (split-KV decode, L = 32k, f32): prefetching the next
//! block's 256 cache lines in one burst at the start of a block changed
//! nothing — the burst fills the L1's miss buffers and stalls on them —
//! while the same lines spread a few per inner iteration made a 1-thread
//! step 1.95× faster (23.6 → 12.1 ms) and a 2-thread step 1.7×.

use std::marker::PhantomData;

/// Bytes to prefetch, split into shares.
#[derive(Debug, Clone, Copy)]
pub struct Ahead<'a> {
    addr: usize,
    len: usize,
    /// Bytes per share: whole 64-byte lines.
    share: usize,
    _borrow: PhantomData<&'a [u8]>,
}

impl<'a> Ahead<'a> {
    /// Nothing to prefetch.
    pub const NONE: Ahead<'static> = Ahead { addr: 0, len: 0, share: 0, _borrow: PhantomData };

    /// The bytes of `s`, as one share.
    #[inline(always)]
    pub fn of<T>(s: &'a [T]) -> Ahead<'a> {
        let len = std::mem::size_of_val(s);
        Ahead { addr: s.as_ptr() as usize, len, share: len, _borrow: PhantomData }
    }

    /// The same bytes in `n` shares of whole lines (the last possibly
    /// shorter or empty): one division here, none per [`Ahead::step`].
    #[inline(always)]
    pub fn split(self, n: usize) -> Ahead<'a> {
        Ahead { share: self.len.div_ceil(n.max(1)).next_multiple_of(64), ..self }
    }

    /// Prefetches share `i` into L1: a hint that never faults and never
    /// changes a result. Nothing off x86-64.
    #[inline(always)]
    pub fn step(&self, i: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let (mut at, end) = (i * self.share, ((i + 1) * self.share).min(self.len));
            while at < end {
                // SAFETY: SSE is part of x86-64; a prefetch only hints the
                // cache and never dereferences (any address is allowed),
                // and this one lies inside the borrowed slice anyway.
                unsafe { _mm_prefetch::<_MM_HINT_T0>((self.addr + at) as *const i8) };
                at += 64;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_bytes_once() {
        // The shares' line ranges tile [0, len): checked through the
        // arithmetic `step` uses (a prefetch itself has no visible effect).
        let v = vec![0u32; 1000]; // 4000 bytes
        for of in [1, 3, 16, 32, 100] {
            let a = Ahead::of(&v[..]).split(of);
            assert_eq!(a.share % 64, 0);
            let covered: usize = (0..of)
                .map(|i| ((i + 1) * a.share).min(a.len).saturating_sub((i * a.share).min(a.len)))
                .sum();
            assert_eq!(covered, a.len, "{of}");
            (0..of).for_each(|i| a.step(i));
        }
        Ahead::NONE.split(7).step(3);
    }
}
