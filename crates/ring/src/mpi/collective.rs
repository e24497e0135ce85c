//! What `attn ring` needs besides the ring: every rank agreeing on success
//! (all-or-nothing), a header broadcast from rank 0, the scatter of the
//! inputs from rank 0 and the gather of the outputs to it. Every wait has
//! the transport's deadline; buffers are owned, so a timed-out operation
//! leaks them (see the module docs of [`super`]).

use std::time::Instant;

use mpi::collective::SystemOperation;
use mpi::datatype::Equivalence;
use mpi::traits::*;

use super::wait::{Pending, complete, probe, stalled_send};
use super::{MpiTransport, count_fits, tag};
use crate::transport::TransportError;

/// A small header rank 0 sends to every rank before the data (the shapes
/// and flags of a run; their meaning is the caller's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// Shape numbers (sequence lengths, heads, head dimension, …).
    pub shape: Vec<u64>,
    /// Flags (causal, layout, …).
    pub flags: Vec<u8>,
}

impl MpiTransport {
    /// All-or-nothing: every rank passes its own outcome, and every rank
    /// gets `Ok` only if all were `Ok`; otherwise every rank gets the same
    /// [`TransportError::Peer`] with the lowest failing rank's message (the
    /// failing rank included). A collective: every rank must call it at the
    /// same point, e.g. rank 0 after reading its inputs (the others with
    /// `Ok`), so that bad input makes every rank exit with the error.
    ///
    /// A rank that never arrives is an error after the deadline.
    pub fn agree(&mut self, ok: Result<(), String>) -> Result<(), TransportError> {
        self.check_usable()?;
        let deadline = Instant::now() + self.deadline;
        let size = i32::try_from(self.size).expect("MPI size is an i32");
        let mine = vec![if ok.is_err() { self.rank as i32 } else { size }];
        let mut first = vec![size];
        let outcome = mpi::request::scope(|scope| {
            let req = self.world.immediate_all_reduce_into(
                scope,
                &mine[..],
                &mut first[..],
                SystemOperation::min(),
            );
            complete(req, deadline)
        });
        if let Err(waited) = outcome {
            let e = TransportError::Io(format!(
                "not every rank reached the agreement within {:.1} s",
                waited.as_secs_f64()
            ));
            std::mem::forget((mine, first));
            self.poison(&e);
            return Err(e);
        }
        let failed = first[0] as usize;
        if failed == self.size {
            return Ok(());
        }
        let message = match ok {
            Err(m) if failed == self.rank => m.into_bytes(),
            _ => Vec::new(),
        };
        let message = self.broadcast_vec(failed, message, deadline)?;
        Err(TransportError::Peer {
            rank: failed,
            message: String::from_utf8_lossy(&message).into_owned(),
        })
    }

    /// Rank 0's `header` on every rank: rank 0 passes `Some`, the others
    /// `None`.
    ///
    /// # Panics
    /// If rank 0 passes `None` or another rank `Some` (a bug in the caller;
    /// the panic aborts the job).
    pub fn broadcast_header(&mut self, header: Option<Header>) -> Result<Header, TransportError> {
        assert_eq!(
            header.is_some(),
            self.rank == 0,
            "broadcast_header: rank 0 and only rank 0 passes the header"
        );
        self.check_usable()?;
        let deadline = Instant::now() + self.deadline;
        let Header { shape, flags } = header.unwrap_or_default();
        let shape = self.broadcast_vec(0, shape, deadline)?;
        let flags = self.broadcast_vec(0, flags, deadline)?;
        Ok(Header { shape, flags })
    }

    /// `data` of rank `root` on every rank (the others' `data` is ignored):
    /// its length, then its contents.
    fn broadcast_vec<T: Equivalence + Clone + Default>(
        &mut self,
        root: usize,
        mut data: Vec<T>,
        deadline: Instant,
    ) -> Result<Vec<T>, TransportError> {
        count_fits(data.len(), "broadcast")?;
        let mut len = vec![data.len() as u64];
        self.broadcast_into(root, &mut len, deadline)?;
        data.resize(len[0] as usize, T::default());
        self.broadcast_into(root, &mut data, deadline)?;
        Ok(data)
    }

    /// One `MPI_Ibcast` of `buf` from `root`, completed by the deadline; on
    /// timeout `buf`'s allocation is leaked.
    fn broadcast_into<T: Equivalence>(
        &mut self,
        root: usize,
        buf: &mut Vec<T>,
        deadline: Instant,
    ) -> Result<(), TransportError> {
        let root_p = self.world.process_at_rank(root as i32);
        let outcome = mpi::request::scope(|scope| {
            complete(root_p.immediate_broadcast_into(scope, &mut buf[..]), deadline)
        });
        outcome.map_err(|waited| {
            let e = TransportError::Timeout { from: root, waited };
            std::mem::forget(std::mem::take(buf));
            self.poison(&e);
            e
        })
    }

    /// Rank 0 hands `blocks[r]` to rank `r` (lengths may differ, a rank's
    /// block may be empty); every rank returns its own block. Rank 0 passes
    /// `Some` with one block per rank and keeps `blocks[0]` without a copy;
    /// the others pass `None`. Point-to-point messages, so the total is not
    /// limited by MPI's `i32` counts (each block is).
    ///
    /// # Panics
    /// If rank 0 passes `None` or a number of blocks other than
    /// [`size`](crate::Transport::size), or another rank passes `Some`.
    pub fn scatter(&mut self, blocks: Option<Vec<Vec<f32>>>) -> Result<Vec<f32>, TransportError> {
        assert_eq!(
            blocks.is_some(),
            self.rank == 0,
            "scatter: rank 0 and only rank 0 passes the blocks"
        );
        self.check_usable()?;
        let deadline = Instant::now() + self.deadline;
        let Some(mut blocks) = blocks else {
            let root = self.world.process_at_rank(0);
            let (msg, len) = match probe::<f32>(&root, tag::SCATTER, deadline) {
                Ok(m) => m,
                Err(waited) => return Err(self.timed_out(0, waited)),
            };
            let mut block = vec![0f32; len];
            let outcome = mpi::request::scope(|scope| {
                complete(msg.immediate_matched_receive_into(scope, &mut block[..]), deadline)
            });
            return match outcome {
                Ok(()) => Ok(block),
                Err(waited) => {
                    std::mem::forget(block);
                    Err(self.timed_out(0, waited))
                }
            };
        };
        assert_eq!(blocks.len(), self.size, "scatter: one block per rank");
        for b in &blocks {
            count_fits(b.len(), "scattered block")?;
        }
        let mine = std::mem::take(&mut blocks[0]);
        let world = &self.world;
        let outcome = mpi::request::scope(|scope| {
            let requests: Vec<_> = (1..self.size)
                .map(|r| {
                    world.process_at_rank(r as i32).immediate_send_with_tag(
                        scope,
                        &blocks[r][..],
                        tag::SCATTER,
                    )
                })
                .collect();
            let mut failure = None;
            for (r, req) in (1..self.size).zip(requests) {
                if failure.is_some() {
                    Pending::new(req).abandon();
                } else if let Err(waited) = complete(req, deadline) {
                    failure = Some(stalled_send(r, "scattered block", waited));
                }
            }
            failure
        });
        match outcome {
            None => Ok(mine),
            Some(e) => {
                std::mem::forget(blocks);
                self.poison(&e);
                Err(e)
            }
        }
    }

    /// Every rank's `block` on rank 0, in rank order (lengths may differ):
    /// `Some` there, `None` elsewhere. Rank 0's own block is moved, not
    /// copied.
    pub fn gather(&mut self, block: Vec<f32>) -> Result<Option<Vec<Vec<f32>>>, TransportError> {
        self.check_usable()?;
        count_fits(block.len(), "gathered block")?;
        let deadline = Instant::now() + self.deadline;
        if self.rank != 0 {
            let root = self.world.process_at_rank(0);
            let outcome = mpi::request::scope(|scope| {
                complete(root.immediate_send_with_tag(scope, &block[..], tag::GATHER), deadline)
            });
            return match outcome {
                Ok(()) => Ok(None),
                Err(waited) => {
                    std::mem::forget(block);
                    let e = stalled_send(0, "gathered block", waited);
                    self.poison(&e);
                    Err(e)
                }
            };
        }
        let mut all = Vec::with_capacity(self.size);
        all.push(block);
        for r in 1..self.size {
            let source = self.world.process_at_rank(r as i32);
            let (msg, len) = match probe::<f32>(&source, tag::GATHER, deadline) {
                Ok(m) => m,
                Err(waited) => return Err(self.timed_out(r, waited)),
            };
            let mut b = vec![0f32; len];
            let outcome = mpi::request::scope(|scope| {
                complete(msg.immediate_matched_receive_into(scope, &mut b[..]), deadline)
            });
            if let Err(waited) = outcome {
                std::mem::forget(b);
                return Err(self.timed_out(r, waited));
            }
            all.push(b);
        }
        Ok(Some(all))
    }

    /// A receive from `from` that did not complete: poisons the transport.
    fn timed_out(&mut self, from: usize, waited: std::time::Duration) -> TransportError {
        let e = TransportError::Timeout { from, waited };
        self.poison(&e);
        e
    }
}
