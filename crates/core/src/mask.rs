//! Masks. Every mask attnlab supports leaves each query row a *contiguous*
//! range of visible keys, which is what lets the tiled kernel skip whole
//! tiles: [`Mask::key_range`] is the single definition all kernels share.
//!
//! Alignment is **bottom-right** (FlashAttention >= 2.1): with
//! `offset = Nk - Nq`, query `i` sits on the diagonal at key `i + offset`.
//! - causal: keys `j <= i + offset`;
//! - window `(left, right)`: keys `i + offset - left <= j <= i + offset + right`,
//!   either side `None` for unbounded. Causal is the window `(None, Some(0))`.
//!
//! A chunk of a longer problem ([`crate::positions`]) has its diagonal
//! elsewhere: [`Mask::key_range_on`] takes the diagonal itself.

use std::ops::Range;

/// Which keys each query may attend to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mask {
    /// Every query sees every key.
    #[default]
    None,
    /// Bottom-right causal: query `i` sees keys `j <= i + Nk - Nq`.
    Causal,
    /// Sliding window around the bottom-right diagonal; `None` = unbounded.
    Window {
        /// Keys visible before the diagonal; `None` = all of them.
        left: Option<usize>,
        /// Keys visible after the diagonal; `None` = all of them.
        right: Option<usize>,
    },
}

impl Mask {
    /// The window `(left, right)` this mask is, `None` = unbounded.
    pub fn as_window(&self) -> (Option<usize>, Option<usize>) {
        match *self {
            Mask::None => (None, None),
            Mask::Causal => (None, Some(0)),
            Mask::Window { left, right } => (left, right),
        }
    }

    /// Visible keys of query row `i` for lengths `nq`, `nk`; empty when the
    /// row is fully masked. The row's diagonal is key `i + nk − nq`
    /// ([`Mask::key_range_on`]).
    #[inline]
    pub fn key_range(&self, i: usize, nq: usize, nk: usize) -> Range<usize> {
        self.key_range_on(i as i64 + nk as i64 - nq as i64, nk)
    }

    /// Visible keys, among `0..nk`, of a query whose diagonal sits on key
    /// `diag` (any integer: a chunk of a longer problem may have its
    /// diagonal before its first key or past its last, see
    /// [`crate::positions`]); empty when the row is fully masked. The one
    /// definition of every mask: causal keeps `j <= diag`, a window
    /// `diag − left <= j <= diag + right`.
    #[inline]
    pub fn key_range_on(&self, diag: i64, nk: usize) -> Range<usize> {
        let (left, right) = self.as_window();
        let diag = diag as i128;
        let lo = match left {
            None => 0,
            Some(l) => (diag - l as i128).max(0),
        };
        let hi = match right {
            None => nk as i128,
            Some(r) => (diag + r as i128 + 1).min(nk as i128),
        };
        if lo >= hi {
            let lo = (lo.min(nk as i128)) as usize;
            lo..lo
        } else {
            lo as usize..hi as usize
        }
    }

    /// Number of visible (query, key) pairs over one head.
    pub fn visible_pairs(&self, nq: usize, nk: usize) -> u64 {
        (0..nq).map(|i| self.key_range(i, nq, nk).len() as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_is_bottom_right() {
        // Nq = 2, Nk = 4: query 0 sees keys 0..=2, query 1 sees 0..=3.
        assert_eq!(Mask::Causal.key_range(0, 2, 4), 0..3);
        assert_eq!(Mask::Causal.key_range(1, 2, 4), 0..4);
        // Nq = 4, Nk = 2: the first two queries see nothing.
        assert!(Mask::Causal.key_range(0, 4, 2).is_empty());
        assert!(Mask::Causal.key_range(1, 4, 2).is_empty());
        assert_eq!(Mask::Causal.key_range(2, 4, 2), 0..1);
        assert_eq!(Mask::Causal.key_range(3, 4, 2), 0..2);
        // square: the usual lower triangle
        for i in 0..5 {
            assert_eq!(Mask::Causal.key_range(i, 5, 5), 0..i + 1);
        }
    }

    #[test]
    fn causal_equals_window_inf_0() {
        let w = Mask::Window { left: None, right: Some(0) };
        for (nq, nk) in [(3, 7), (7, 3), (5, 5), (1, 9), (0, 4), (4, 0)] {
            for i in 0..nq {
                assert_eq!(w.key_range(i, nq, nk), Mask::Causal.key_range(i, nq, nk));
            }
        }
    }

    #[test]
    fn windows() {
        let w = Mask::Window { left: Some(1), right: Some(1) };
        assert_eq!(w.key_range(0, 5, 5), 0..2);
        assert_eq!(w.key_range(2, 5, 5), 1..4);
        assert_eq!(w.key_range(4, 5, 5), 3..5);
        let right_only = Mask::Window { left: Some(0), right: None };
        assert_eq!(right_only.key_range(2, 5, 5), 2..5);
        // a window entirely outside the keys is empty, never inverted
        let w = Mask::Window { left: Some(0), right: Some(0) };
        assert!(w.key_range(0, 6, 2).is_empty());
        assert_eq!(Mask::None.key_range(3, 4, 0), 0..0);
    }

    #[test]
    fn diagonals_outside_the_keys() {
        // A chunk whose diagonal lies before its first key: causal sees
        // nothing, an unbounded right side sees from the start.
        assert!(Mask::Causal.key_range_on(-1, 8).is_empty());
        assert_eq!(Mask::Causal.key_range_on(0, 8), 0..1);
        assert_eq!(Mask::Window { left: Some(2), right: None }.key_range_on(-50, 8), 0..8);
        assert!(Mask::Window { left: None, right: Some(3) }.key_range_on(-4, 8).is_empty());
        assert_eq!(Mask::Window { left: None, right: Some(3) }.key_range_on(-3, 8), 0..1);
        // ... or past its last key: causal sees every key, a bounded left
        // side nothing once the window has passed.
        assert_eq!(Mask::Causal.key_range_on(1 << 40, 8), 0..8);
        assert!(Mask::Window { left: Some(2), right: Some(0) }.key_range_on(10, 8).is_empty());
        assert_eq!(Mask::Window { left: Some(2), right: Some(0) }.key_range_on(9, 8), 7..8);
        assert_eq!(Mask::None.key_range_on(i64::MIN, 3), 0..3);
        assert_eq!(Mask::None.key_range_on(i64::MAX, 3), 0..3);
    }

    #[test]
    fn ranges_are_monotone() {
        // lo and hi never decrease with i: the tiled kernel relies on it.
        let masks = [
            Mask::None,
            Mask::Causal,
            Mask::Window { left: Some(3), right: Some(2) },
            Mask::Window { left: None, right: Some(5) },
            Mask::Window { left: Some(0), right: None },
        ];
        for m in masks {
            for (nq, nk) in [(9, 4), (4, 9), (6, 6)] {
                for i in 1..nq {
                    let a = m.key_range(i - 1, nq, nk);
                    let b = m.key_range(i, nq, nk);
                    assert!(a.start <= b.start && a.end <= b.end, "{m:?} {a:?} {b:?}");
                }
            }
        }
    }

    #[test]
    fn visible_pairs_counts() {
        assert_eq!(Mask::None.visible_pairs(3, 4), 12);
        assert_eq!(Mask::Causal.visible_pairs(4, 4), 10);
    }
}
