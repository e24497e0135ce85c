//! How a sequence is cut into chunks and which rank holds which.
//!
//! A sequence of `n` positions is cut into `m` chunks as equal as possible:
//! chunk `c` is positions `⌊c·n/m⌋ .. ⌊(c+1)·n/m⌋` (lengths differ by at
//! most one; with `n < m` some chunks are empty). Then:
//!
//! - [`RingLayout::Contiguous`]: `m = P`, rank `r` holds chunk `r`;
//! - [`RingLayout::Zigzag`]: `m = 2P`, rank `r` holds chunks `r` and
//!   `2P − 1 − r`: one from each end, so under a causal mask every rank
//!   has (nearly) the same number of visible query–key pairs, where
//!   contiguous chunks give the last rank `2P − 1` times the first's.
//!
//! The queries, keys and values of a rank are its chunks of each sequence
//! (for `Nq ≠ Nk` the query and key sequences are cut separately, chunk
//! for chunk).

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Which chunks a rank holds (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RingLayout {
    /// `P` chunks, rank `r` holds chunk `r`.
    Contiguous,
    /// `2P` chunks, rank `r` holds chunks `r` and `2P − 1 − r`: balanced
    /// causal work. The default.
    #[default]
    Zigzag,
}

impl RingLayout {
    /// Both layouts.
    pub const ALL: [RingLayout; 2] = [RingLayout::Contiguous, RingLayout::Zigzag];

    /// Name as on the command line (`contiguous`, `zigzag`).
    pub fn name(self) -> &'static str {
        match self {
            RingLayout::Contiguous => "contiguous",
            RingLayout::Zigzag => "zigzag",
        }
    }

    /// Number of chunks a sequence is cut into on `ranks` ranks.
    pub fn chunks(self, ranks: usize) -> usize {
        match self {
            RingLayout::Contiguous => ranks,
            RingLayout::Zigzag => 2 * ranks,
        }
    }

    /// The chunks rank `rank` of `ranks` holds, in increasing order.
    pub fn chunks_of(self, rank: usize, ranks: usize) -> Vec<usize> {
        debug_assert!(rank < ranks);
        match self {
            RingLayout::Contiguous => vec![rank],
            RingLayout::Zigzag => vec![rank, 2 * ranks - 1 - rank],
        }
    }

    /// The rank that holds chunk `chunk` on `ranks` ranks.
    pub fn owner(self, chunk: usize, ranks: usize) -> usize {
        debug_assert!(chunk < self.chunks(ranks));
        match self {
            RingLayout::Contiguous => chunk,
            RingLayout::Zigzag => chunk.min(2 * ranks - 1 - chunk),
        }
    }
}

impl fmt::Display for RingLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RingLayout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "contiguous" => Ok(RingLayout::Contiguous),
            "zigzag" => Ok(RingLayout::Zigzag),
            _ => Err(format!("unknown ring layout {s:?} (expected contiguous or zigzag)")),
        }
    }
}

/// Positions `⌊c·n/m⌋ .. ⌊(c+1)·n/m⌋`: chunk `c` of `m` equal-as-possible
/// chunks of `n` positions.
pub fn chunk_range(n: usize, m: usize, c: usize) -> Range<usize> {
    debug_assert!(c < m);
    let at = |c: usize| (c as u128 * n as u128 / m as u128) as usize;
    at(c)..at(c + 1)
}

/// One sequence of `len` positions cut for `ranks` ranks in `layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Partition {
    /// Positions in the sequence.
    pub len: usize,
    /// Ranks in the ring (at least 1).
    pub ranks: usize,
    /// Which chunks each rank holds.
    pub layout: RingLayout,
}

impl Partition {
    /// Number of chunks.
    pub fn chunks(&self) -> usize {
        self.layout.chunks(self.ranks)
    }

    /// Positions of chunk `c`.
    pub fn chunk(&self, c: usize) -> Range<usize> {
        chunk_range(self.len, self.chunks(), c)
    }

    /// The chunks of rank `rank`, in increasing order: `(chunk, positions)`.
    pub fn rank_chunks(&self, rank: usize) -> Vec<(usize, Range<usize>)> {
        self.layout.chunks_of(rank, self.ranks).into_iter().map(|c| (c, self.chunk(c))).collect()
    }

    /// Positions rank `rank` holds, over all its chunks.
    pub fn rank_len(&self, rank: usize) -> usize {
        self.rank_chunks(rank).iter().map(|(_, r)| r.len()).sum()
    }

    /// The most positions any rank holds.
    pub fn max_rank_len(&self) -> usize {
        (0..self.ranks).map(|r| self.rank_len(r)).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_sequence_in_order_and_differ_by_at_most_one() {
        for n in [0, 1, 5, 7, 16, 100, 1001] {
            for m in [1, 2, 3, 4, 7, 8, 14] {
                let mut next = 0;
                let lens: Vec<usize> = (0..m)
                    .map(|c| {
                        let r = chunk_range(n, m, c);
                        assert_eq!(r.start, next, "n {n} m {m} c {c}");
                        next = r.end;
                        r.len()
                    })
                    .collect();
                assert_eq!(next, n);
                let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(hi - lo <= 1, "n {n} m {m}: {lens:?}");
            }
        }
        assert_eq!(chunk_range(usize::MAX, 3, 2).end, usize::MAX);
    }

    #[test]
    fn every_chunk_has_exactly_one_owner() {
        for layout in RingLayout::ALL {
            for ranks in 1..=9 {
                let mut seen = vec![0; layout.chunks(ranks)];
                for r in 0..ranks {
                    for c in layout.chunks_of(r, ranks) {
                        seen[c] += 1;
                        assert_eq!(layout.owner(c, ranks), r);
                    }
                }
                assert!(seen.iter().all(|&s| s == 1), "{layout} {ranks}: {seen:?}");
            }
        }
        assert_eq!(RingLayout::Zigzag.chunks_of(1, 4), [1, 6]);
        assert_eq!(RingLayout::Contiguous.chunks_of(3, 4), [3]);
    }

    #[test]
    fn zigzag_balances_the_causal_triangle() {
        // Visible causal pairs per rank (self-attention, n divisible by 2P):
        // zigzag gives every rank the same count, contiguous does not.
        let pairs = |p: &Partition, r: usize| -> usize {
            p.rank_chunks(r).iter().flat_map(|(_, q)| q.clone()).map(|i| i + 1).sum()
        };
        for ranks in [2, 3, 4, 7] {
            let n = 2 * ranks * 10;
            let z = Partition { len: n, ranks, layout: RingLayout::Zigzag };
            let w: Vec<usize> = (0..ranks).map(|r| pairs(&z, r)).collect();
            assert!(w.iter().all(|&x| x == w[0]), "{w:?}");
            assert_eq!(w.iter().sum::<usize>(), n * (n + 1) / 2);
            let c = Partition { layout: RingLayout::Contiguous, ..z };
            assert!(pairs(&c, ranks - 1) > 2 * pairs(&c, 0));
        }
    }

    #[test]
    fn rank_lengths_with_remainders() {
        let p = Partition { len: 10, ranks: 3, layout: RingLayout::Zigzag };
        // 6 chunks of 10: 1, 2, 2, 1, 2, 2 positions (boundaries 0 1 3 5 6 8 10).
        let lens: Vec<usize> = (0..3).map(|r| p.rank_len(r)).collect();
        assert_eq!(lens, [1 + 2, 2 + 2, 2 + 1]);
        assert_eq!(p.max_rank_len(), 4);
        assert_eq!(p.rank_chunks(1), vec![(1, 1..3), (4, 6..8)]);
        let tiny = Partition { len: 3, ranks: 4, layout: RingLayout::Zigzag };
        assert_eq!((0..4).map(|r| tiny.rank_len(r)).sum::<usize>(), 3);
        assert_eq!("zigzag".parse::<RingLayout>(), Ok(RingLayout::Zigzag));
        assert!("ring".parse::<RingLayout>().unwrap_err().contains("contiguous or zigzag"));
    }
}
