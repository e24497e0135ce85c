//! One rank of a `P`-rank ring, alone: a [`Transport`] that hands the rank
//! the other ranks' K/V blocks from memory, in the order the ring would
//! deliver them, so that `run_rank` makes exactly the block calls and
//! merges of that rank — at the ring's chunk sizes — with nothing else
//! running on the machine. `attn ring-bench --solo` times it: the
//! per-rank kernel throughput of `docs/ring.md`.

use std::time::Instant;

use attnlab::ring::{ShiftTiming, Transport, TransportError};

/// Rank `rank` of `size`, fed from `blocks` (see the module docs).
#[derive(Debug)]
pub struct Solo {
    rank: usize,
    size: usize,
    /// Each rank's packed K/V block ([`attnlab::ring::block`]), by rank.
    blocks: Vec<Vec<f32>>,
    /// Shifts done so far in this run (the blocks', then the tokens').
    shifts: usize,
}

impl Solo {
    /// Rank `rank` of a ring of `blocks.len()` ranks.
    ///
    /// # Panics
    /// If `rank >= blocks.len()`.
    pub fn new(rank: usize, blocks: Vec<Vec<f32>>) -> Self {
        assert!(rank < blocks.len(), "rank {rank} of {} ranks", blocks.len());
        Solo { rank, size: blocks.len(), blocks, shifts: 0 }
    }

    /// Starts a new run of the ring (the next shift delivers step 1's
    /// block again).
    pub fn restart(&mut self) {
        self.shifts = 0;
    }
}

impl Transport for Solo {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    /// Runs `work`, then fills `incoming`: at the `s`-th shift of a run,
    /// `s < P − 1`, with the block of rank `rank − s − 1` (what the ring
    /// delivers after step `s`); after those, with `outgoing` itself (the
    /// closing agreement's one-element tokens). The copy is the only
    /// "communication": it is never overlapped.
    fn shift_during<R>(
        &mut self,
        outgoing: &[f32],
        incoming: &mut [f32],
        work: impl FnOnce() -> R,
    ) -> Result<(R, ShiftTiming), TransportError> {
        let t0 = Instant::now();
        let r = work();
        let compute = t0.elapsed();
        let len_error =
            |got: usize| TransportError::Length { from: self.rank, expected: incoming.len(), got };
        if outgoing.len() != incoming.len() {
            return Err(len_error(outgoing.len()));
        }
        if self.shifts + 1 < self.size {
            // The s-th block shift delivers rank (rank − s − 1)'s block.
            let source = (self.rank + self.size - (self.shifts + 1)) % self.size;
            let block = &self.blocks[source];
            if block.len() != incoming.len() {
                return Err(len_error(block.len()));
            }
            incoming.copy_from_slice(block);
        } else {
            incoming.copy_from_slice(outgoing);
        }
        self.shifts += 1;
        let total = t0.elapsed();
        Ok((r, ShiftTiming { compute, exposed_comm: total.saturating_sub(compute), total }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_come_in_ring_order_then_tokens_echo() {
        let blocks: Vec<Vec<f32>> = (0..4).map(|r| vec![r as f32; 3]).collect();
        let mut s = Solo::new(1, blocks);
        let mut got = Vec::new();
        let mut inc = vec![0.0; 3];
        for _ in 0..3 {
            let (x, t) = s.shift_during(&[9.0; 3], &mut inc, || 5).unwrap();
            assert_eq!(x, 5);
            assert!(t.total >= t.compute);
            got.push(inc[0]);
        }
        // Rank 1 receives from rank 0, then 3, then 2.
        assert_eq!(got, [0.0, 3.0, 2.0]);
        let mut token = [0.0];
        s.shift_during(&[1.0], &mut token, || ()).unwrap();
        assert_eq!(token, [1.0]);
        s.restart();
        s.shift_during(&[9.0; 3], &mut inc, || ()).unwrap();
        assert_eq!(inc[0], 0.0);
        assert!(s.shift_during(&[1.0, 2.0], &mut token, || ()).is_err());
    }
}
