//! Point-to-point latency and bandwidth between ranks 0 and 1, measured by
//! ping-pong: the numbers the ring's scaling model needs for this machine's
//! link (shared memory between processes here).

use std::time::{Duration, Instant};

use mpi::traits::*;

use super::wait::complete_spinning;
use super::{MpiTransport, count_fits, tag};
use crate::transport::TransportError;

/// One message size of a ping-pong between ranks 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingPong {
    /// Message size in bytes.
    pub bytes: usize,
    /// Round trips timed (after two untimed ones).
    pub round_trips: usize,
    /// Median one-way time: half the median round trip.
    pub one_way: Duration,
    /// Fastest one-way time: half the fastest round trip.
    pub best_one_way: Duration,
}

impl PingPong {
    /// Bytes per second over the median one-way time.
    pub fn bandwidth(&self) -> f64 {
        self.bytes as f64 / self.one_way.as_secs_f64()
    }
}

impl MpiTransport {
    /// Ping-pong between ranks 0 and 1 for each message size in `sizes`
    /// (bytes), `round_trips` timed round trips each (each timed alone, so
    /// the median is robust to a descheduled rank). Rank 1 echoes every
    /// message back; ranks ≥ 2 return at once. Rank 0 gets `Some` (empty
    /// with a single rank), the others `None`. Waits spin (no sleeps) so
    /// small messages measure the library's latency, not the scheduler's.
    pub fn ping_pong(
        &mut self,
        sizes: &[usize],
        round_trips: usize,
    ) -> Result<Option<Vec<PingPong>>, TransportError> {
        self.check_usable()?;
        if self.size < 2 || self.rank >= 2 {
            return Ok((self.rank == 0).then(Vec::new));
        }
        let largest = sizes.iter().copied().max().unwrap_or(0);
        count_fits(largest, "ping-pong message")?;
        let send = vec![1u8; largest];
        let mut recv = vec![0u8; largest];
        let peer = 1 - self.rank;
        let mut points = Vec::with_capacity(sizes.len());
        for &bytes in sizes {
            let mut times = Vec::with_capacity(round_trips);
            for i in 0..round_trips + 2 {
                let deadline = Instant::now() + self.deadline;
                let start = Instant::now();
                if let Err(e) = self.round_trip(peer, &send[..bytes], &mut recv[..bytes], deadline)
                {
                    std::mem::forget((send, recv));
                    self.poison(&e);
                    return Err(e);
                }
                if i >= 2 {
                    times.push(start.elapsed());
                }
            }
            times.sort_unstable();
            points.push(PingPong {
                bytes,
                round_trips,
                one_way: times.get(times.len() / 2).copied().unwrap_or_default() / 2,
                best_one_way: times.first().copied().unwrap_or_default() / 2,
            });
        }
        Ok((self.rank == 0).then_some(points))
    }

    /// Rank 0 sends `send` and receives it back into `recv`; rank 1
    /// receives into `recv` and sends that back. Rank 0 posts its receive
    /// before its send, so the echo never waits in an unexpected queue.
    fn round_trip(
        &self,
        peer: usize,
        send: &[u8],
        recv: &mut [u8],
        deadline: Instant,
    ) -> Result<(), TransportError> {
        let peer_p = self.world.process_at_rank(peer as i32);
        let timeout = |waited| TransportError::Timeout { from: peer, waited };
        mpi::request::scope(|scope| {
            let r = peer_p.immediate_receive_into_with_tag(scope, recv, tag::PING);
            if self.rank == 0 {
                let s = peer_p.immediate_send_with_tag(scope, send, tag::PING);
                let sent = complete_spinning(s, deadline);
                let received = complete_spinning(r, deadline);
                sent.and(received).map_err(timeout)
            } else {
                complete_spinning(r, deadline).map_err(timeout)
            }
        })?;
        if self.rank == 1 {
            mpi::request::scope(|scope| {
                let s = peer_p.immediate_send_with_tag(scope, &recv[..], tag::PING);
                complete_spinning(s, deadline).map_err(timeout)
            })?;
        }
        Ok(())
    }
}
