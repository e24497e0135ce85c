//! Chunks at global positions: a call that computes one block of a longer
//! attention problem — a chunk of the queries against a chunk of the keys,
//! as a rank of ring (context-parallel) attention does — with the mask
//! (and ALiBi's distances) defined on the **global** positions.
//!
//! The call's `Nq` queries are global query positions `q_start..q_start +
//! Nq` of a problem with `q_total` queries; its `Nk` keys are global key
//! positions `kv_start..kv_start + Nk` of `kv_total` keys. Bottom-right
//! alignment is global: global query `Q` sits on global key `Q + kv_total
//! − q_total`, so local query `i` sits on local key
//!
//! ```text
//! i + diagonal,   diagonal = q_start + kv_total − q_total − kv_start
//! ```
//!
//! (without positions `diagonal = Nk − Nq`, the call is its own whole
//! problem). [`crate::Mask::key_range_on`] turns that diagonal into the
//! row's visible local keys: the single definition every kernel uses.

use crate::error::AttnError;
use crate::shape::AttnShape;

/// Where a call's query and key chunks sit in a longer sequence (see the
/// module docs). `ChunkPositions::whole(nq, nk)` is the plain call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkPositions {
    /// Global position of the call's first query.
    pub q_start: usize,
    /// Global position of the call's first key.
    pub kv_start: usize,
    /// Queries in the whole problem (`Nq` of the unsplit call).
    pub q_total: usize,
    /// Keys in the whole problem (`Nk` of the unsplit call).
    pub kv_total: usize,
}

/// The largest total length positions may describe: every diagonal and
/// window bound then fits an `i64` with room to spare.
pub const MAX_TOTAL: usize = 1 << 60;

impl ChunkPositions {
    /// The call is the whole problem: `q_len` queries and `kv_len` keys
    /// from position 0 (the same as no positions).
    pub fn whole(q_len: usize, kv_len: usize) -> Self {
        ChunkPositions { q_start: 0, kv_start: 0, q_total: q_len, kv_total: kv_len }
    }

    /// The local diagonal offset: local query `i` sits on local key
    /// `i + diagonal()` (may be negative, or beyond the chunk's keys).
    #[inline]
    pub fn diagonal(&self) -> i64 {
        self.q_start as i64 + self.kv_total as i64 - self.q_total as i64 - self.kv_start as i64
    }

    /// Checks that the call's chunks lie inside the whole problem:
    /// `q_start + Nq <= q_total`, `kv_start + Nk <= kv_total`, totals at
    /// most [`MAX_TOTAL`]; an error naming `positions` otherwise.
    pub fn validate(&self, shape: &AttnShape) -> Result<(), AttnError> {
        let bad = |reason: String| Err(AttnError::Param { name: "positions", reason });
        for (what, total) in [("q_total", self.q_total), ("kv_total", self.kv_total)] {
            if total > MAX_TOTAL {
                return bad(format!("{what} must be at most 2^60, got {total}"));
            }
        }
        let (nq, nk) = (shape.q_len(), shape.kv_len());
        if self.q_start.checked_add(nq).is_none_or(|end| end > self.q_total) {
            return bad(format!(
                "the {nq} query positions from q_start {} run past q_total {}",
                self.q_start, self.q_total
            ));
        }
        if self.kv_start.checked_add(nk).is_none_or(|end| end > self.kv_total) {
            return bad(format!(
                "the {nk} key positions from kv_start {} run past kv_total {}",
                self.kv_start, self.kv_total
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(nq: usize, nk: usize) -> AttnShape {
        crate::shape::tests::shape(1, 1, 1, nq, nk, 4, 4).unwrap()
    }

    #[test]
    fn whole_is_the_plain_diagonal() {
        for (nq, nk) in [(3, 7), (7, 3), (5, 5), (0, 4)] {
            assert_eq!(ChunkPositions::whole(nq, nk).diagonal(), nk as i64 - nq as i64);
            ChunkPositions::whole(nq, nk).validate(&shape(nq, nk)).unwrap();
        }
    }

    #[test]
    fn diagonal_is_the_global_one_in_local_keys() {
        // Self-attention over 100 positions; queries 40..50 against keys
        // 20..30: global query 40 sits on global key 40 = local key 20.
        let p = ChunkPositions { q_start: 40, kv_start: 20, q_total: 100, kv_total: 100 };
        assert_eq!(p.diagonal(), 20);
        // Queries 10..20 against keys 60..70: local key −50.
        let p = ChunkPositions { q_start: 10, kv_start: 60, q_total: 100, kv_total: 100 };
        assert_eq!(p.diagonal(), -50);
        // 4 queries over 10 keys (bottom-right): query 0 sits on key 6.
        let p = ChunkPositions { q_start: 0, kv_start: 5, q_total: 4, kv_total: 10 };
        assert_eq!(p.diagonal(), 1);
    }

    #[test]
    fn chunks_past_the_totals_are_refused() {
        let p = ChunkPositions { q_start: 95, kv_start: 0, q_total: 100, kv_total: 100 };
        let e = p.validate(&shape(10, 10)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "positions: the 10 query positions from q_start 95 run past q_total 100"
        );
        let p = ChunkPositions { q_start: 0, kv_start: 91, q_total: 100, kv_total: 100 };
        let e = p.validate(&shape(10, 10)).unwrap_err();
        assert!(e.to_string().contains("key positions from kv_start 91 run past kv_total 100"));
        let p = ChunkPositions { q_start: usize::MAX, kv_start: 0, q_total: 1, kv_total: 10 };
        assert!(p.validate(&shape(1, 1)).is_err());
        let p = ChunkPositions { q_start: 0, kv_start: 0, q_total: usize::MAX, kv_total: 10 };
        assert!(p.validate(&shape(1, 1)).unwrap_err().to_string().contains("q_total"));
    }
}
