//! The in-process transport: `P` ranks as threads of one process, each
//! joined to the next by a channel (`std::sync::mpsc`). A shift sends a
//! copy of the block to the next rank (never blocks: the channel is
//! unbounded), runs the work, then waits for the previous rank's block
//! with a deadline.
//!
//! No hang: a rank that fails says so to the next rank
//! ([`Transport::abort`], a [`TransportError::Peer`] there); a rank that
//! ends or dies drops its channels, so the next rank's receive and the
//! previous rank's send fail at once; and every receive has a deadline
//! ([`TransportError::Timeout`]). Each rank that fails this way drops its
//! own channels in turn, so one failure reaches the whole ring within a
//! step of compute per rank.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use crate::transport::{ShiftTiming, Transport, TransportError};

/// What travels on a channel.
enum Msg {
    Block(Vec<f32>),
    Failed { rank: usize, message: String },
}

/// One rank's endpoint of an in-process ring ([`InProcess::ring`]).
#[derive(Debug)]
pub struct InProcess {
    rank: usize,
    size: usize,
    to_next: Sender<Msg>,
    from_prev: Receiver<Msg>,
    deadline: Duration,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Block(b) => write!(f, "Block({} elements)", b.len()),
            Msg::Failed { rank, message } => write!(f, "Failed({rank}: {message})"),
        }
    }
}

impl InProcess {
    /// The `size` endpoints of a ring (endpoint `r` is rank `r`), each
    /// waiting at most `deadline` for a block. Move each to its thread.
    pub fn ring(size: usize, deadline: Duration) -> Vec<InProcess> {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..size).map(|_| channel()).unzip();
        // Channel r carries blocks into rank r: rank r − 1 holds its sender.
        let mut senders: Vec<Option<Sender<Msg>>> = senders.into_iter().map(Some).collect();
        receivers
            .into_iter()
            .enumerate()
            .map(|(rank, from_prev)| InProcess {
                rank,
                size,
                to_next: senders[(rank + 1) % size].take().expect("one sender per channel"),
                from_prev,
                deadline,
            })
            .collect()
    }

    fn prev(&self) -> usize {
        (self.rank + self.size - 1) % self.size
    }
}

impl Transport for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    /// `compute` is the work's wall time; `exposed_comm` everything else
    /// (copying the block out, waiting for and copying in the next one).
    fn shift_during<R>(
        &mut self,
        outgoing: &[f32],
        incoming: &mut [f32],
        work: impl FnOnce() -> R,
    ) -> Result<(R, ShiftTiming), TransportError> {
        let t0 = Instant::now();
        let next = (self.rank + 1) % self.size;
        self.to_next
            .send(Msg::Block(outgoing.to_vec()))
            .map_err(|_| TransportError::Io(format!("rank {next} hung up")))?;
        let c0 = Instant::now();
        let r = work();
        let compute = c0.elapsed();
        let from = self.prev();
        match self.from_prev.recv_timeout(self.deadline) {
            Ok(Msg::Block(b)) if b.len() == incoming.len() => incoming.copy_from_slice(&b),
            Ok(Msg::Block(b)) => {
                return Err(TransportError::Length {
                    from,
                    expected: incoming.len(),
                    got: b.len(),
                });
            }
            Ok(Msg::Failed { rank, message }) => {
                return Err(TransportError::Peer { rank, message });
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(TransportError::Timeout { from, waited: self.deadline });
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(TransportError::Io(format!("rank {from} hung up")));
            }
        }
        let total = t0.elapsed();
        Ok((r, ShiftTiming { compute, exposed_comm: total.saturating_sub(compute), total }))
    }

    fn abort(&mut self, message: &str) {
        // The next rank may have gone already: nothing more to tell then.
        let _ = self.to_next.send(Msg::Failed { rank: self.rank, message: message.to_string() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_move_to_the_next_rank() {
        let ring = InProcess::ring(3, Duration::from_secs(10));
        let got: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = ring
                .into_iter()
                .map(|mut t| {
                    s.spawn(move || {
                        let mine = vec![t.rank() as f32; 4];
                        let mut inc = vec![0.0; 4];
                        let (x, _) = t.shift_during(&mine, &mut inc, || 7).unwrap();
                        assert_eq!(x, 7);
                        inc
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(got, [vec![2.0; 4], vec![0.0; 4], vec![1.0; 4]]);
    }

    #[test]
    fn a_failure_a_hang_up_and_silence_are_errors_not_hangs() {
        let mut ring = InProcess::ring(3, Duration::from_millis(50));
        let mut r2 = ring.pop().unwrap();
        let mut r1 = ring.pop().unwrap();
        let mut r0 = ring.pop().unwrap();
        // Rank 0 fails: rank 1 hears why.
        r0.abort("bad input");
        let e = r1.shift_during(&[1.0], &mut [0.0], || ()).unwrap_err();
        assert_eq!(e, TransportError::Peer { rank: 0, message: "bad input".into() });
        // Rank 1 sent its block before it heard, then went: rank 2 gets
        // the block, then its next receive fails at once.
        drop(r1);
        let (_, t) = r2.shift_during(&[1.0], &mut [0.0], || ()).unwrap();
        assert!(t.total >= t.compute && t.exposed_comm <= t.total);
        let t = Instant::now();
        let e = r2.shift_during(&[1.0], &mut [0.0], || ()).unwrap_err();
        assert_eq!(e, TransportError::Io("rank 1 hung up".into()));
        assert!(t.elapsed() < Duration::from_secs(5));
        // ... and rank 0's send to rank 1 fails.
        let e = r0.shift_during(&[1.0], &mut [0.0], || ()).unwrap_err();
        assert_eq!(e, TransportError::Io("rank 1 hung up".into()));
        // A block of the wrong length.
        let [mut a, mut b] = InProcess::ring(2, Duration::from_secs(10)).try_into().unwrap();
        let e = std::thread::scope(|s| {
            s.spawn(move || b.shift_during(&[1.0], &mut [0.0, 0.0], || ()));
            a.shift_during(&[1.0, 2.0], &mut [0.0, 0.0], || ()).unwrap_err()
        });
        assert_eq!(e, TransportError::Length { from: 1, expected: 2, got: 1 });
        // A neighbour alive but silent: a timeout after the deadline.
        let [mut a, _b] = InProcess::ring(2, Duration::from_millis(50)).try_into().unwrap();
        let t = Instant::now();
        let e = a.shift_during(&[1.0], &mut [0.0], || ()).unwrap_err();
        assert!(matches!(e, TransportError::Timeout { from: 1, .. }), "{e:?}");
        assert!(t.elapsed() >= Duration::from_millis(50));
    }
}
