//! The MPI transport (cargo feature `mpi`, through the `mpi` crate, rsmpi):
//! [`MpiTransport`] implements [`Transport`] over `MPI_COMM_WORLD`, and
//! carries what `attn ring` needs besides the ring itself: an all-ranks
//! agreement on success ([`MpiTransport::agree`]), a broadcast of a small
//! header from rank 0, a scatter and a gather of per-rank `f32` blocks of any
//! lengths, and a ping-pong measurement of latency and bandwidth.
//!
//! # Who owns MPI
//! [`MpiTransport::init`] calls `MPI_Init_thread` (asking for
//! `MPI_THREAD_SERIALIZED`) and owns the resulting `Universe`: one transport
//! per process, created once and kept for the whole run. Dropping it calls
//! `MPI_Finalize`, which is collective: every rank must drop its transport
//! (after [`agree`](MpiTransport::agree) if anything failed). A transport
//! that gave up on a transfer (a timeout) is *poisoned*: it refuses any
//! further operation, and dropping it calls `MPI_Abort` instead, because a
//! rank that stopped answering may never reach `MPI_Finalize` (Open MPI's
//! finalize waits for every rank). A panic while the transport is alive
//! aborts the same way.
//!
//! # Overlap
//! Open MPI makes progress only inside MPI calls (no asynchronous progress
//! for point-to-point messages): a large block moves by rendezvous, and over
//! shared memory the receiver copies it (`process_vm_readv`) inside its next
//! `MPI_Test`. So while `work` runs on the calling thread, a helper thread
//! posts the transfer and keeps testing it (sleeping [`POLL`] between tests,
//! so it costs the compute almost nothing); the calling thread makes no MPI
//! call meanwhile, which is what `MPI_THREAD_SERIALIZED` allows. Where the
//! library provides less ([`Progress::Inline`]), the transfer is posted
//! before `work` and completed after it on the calling thread.
//!
//! # Failures and deadlines
//! Every wait polls with `MPI_Test`/`MPI_Improbe` for at most
//! [`MpiTransport::deadline`] (default [`DEFAULT_DEADLINE`]; in a shift,
//! counted from the end of `work`): a block that does not come is
//! [`TransportError::Timeout`], never a hang. Under `mpirun`, a rank that
//! dies (a crash, an exit without `MPI_Finalize`, `MPI_Abort`) or exits
//! non-zero makes `mpirun` kill every other rank, long before any deadline
//! (about 2 s here, `mpi_ring_check exit-rank0`); the deadline is for a
//! rank that is alive but elsewhere (a different step, a bug) or that
//! finalised and left. Blocks travel through buffers the
//! transport owns, so a transfer abandoned at the deadline leaks its buffer
//! instead of letting MPI write into memory the caller freed; the price is
//! two copies of each block (`outgoing` in, `incoming` out), made on the
//! helper thread, so they overlap the work as well. MPI's own
//! errors (e.g. `MPI_ERR_TRUNCATE`) keep the default handler,
//! `MPI_ERRORS_ARE_FATAL`: they abort the job.
//!
//! # Ending a run on an error
//! Print the error in one write (`mpirun` interleaves the ranks' output
//! write by write, and `eprintln!` writes each formatted piece separately),
//! then drop the transport, then exit non-zero. After
//! [`agree`](MpiTransport::agree) returned an error every rank does so and
//! MPI finalises normally; after a timeout the drop aborts the job (the
//! printed line reaches `mpirun` first: the drop waits half a second).

mod collective;
mod pingpong;
mod wait;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mpi::environment::{Threading, Universe};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

pub use self::collective::Header;
pub use self::pingpong::PingPong;
use self::wait::{Pace, Pending};
use crate::transport::{ShiftTiming, Transport, TransportError};

/// How long a transfer may take before it is a [`TransportError::Timeout`],
/// unless [`MpiTransport::set_deadline`] says otherwise: generous, since a
/// rank may wait for its neighbour's whole block computation.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// Sleep between two tests of a transfer while `work` runs (on the helper
/// thread); after `work`, the calling thread tests without sleeping.
pub const POLL: Duration = Duration::from_micros(50);

/// How long a rank that must abort the job waits first, so that the error
/// it printed reaches `mpirun`'s output.
const ABORT_GRACE: Duration = Duration::from_millis(500);

/// Message tags: ring shifts, scatter and gather use point-to-point messages
/// on `MPI_COMM_WORLD`; distinct tags keep one operation's messages out of
/// another's receives (collectives never match point-to-point messages).
mod tag {
    pub const SHIFT: i32 = 1;
    pub const SCATTER: i32 = 2;
    pub const GATHER: i32 = 3;
    pub const PING: i32 = 4;
}

/// Who drives a shift's transfer while `work` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A helper thread posts and tests the transfer during `work` (needs
    /// `MPI_THREAD_SERIALIZED`): the transfer overlaps the compute.
    Thread,
    /// The calling thread posts the transfer before `work` and completes it
    /// after: Open MPI moves a large block only at that point.
    Inline,
}

/// A ring over `MPI_COMM_WORLD`: rank `r` sends to `r + 1` and receives
/// from `r − 1` (mod size). Owns MPI itself (see the module docs).
pub struct MpiTransport {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    deadline: Duration,
    progress: Progress,
    /// The outgoing block's copy that MPI reads (see "Failures").
    send_buf: Vec<f32>,
    /// Where the incoming block lands before it is copied out.
    recv_buf: Vec<f32>,
    /// Why the transport gave up, once it has.
    poisoned: Option<String>,
    /// `None` only while dropping.
    universe: Option<Universe>,
}

impl MpiTransport {
    /// Initialises MPI and returns this process's endpoint of the ring over
    /// the world communicator, with [`Progress::Thread`] when the library
    /// grants `MPI_THREAD_SERIALIZED` (else [`Progress::Inline`]).
    ///
    /// An error if MPI is already initialised in this process (a second
    /// transport).
    pub fn init() -> Result<Self, TransportError> {
        let (universe, provided) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| {
                TransportError::Io(
                    "MPI is already initialised in this process (one MpiTransport per process)"
                        .into(),
                )
            })?;
        let progress = match provided {
            Threading::Serialized | Threading::Multiple => Progress::Thread,
            Threading::Single | Threading::Funneled => Progress::Inline,
        };
        let world = universe.world();
        let rank = usize::try_from(world.rank()).expect("MPI rank is non-negative");
        let size = usize::try_from(world.size()).expect("MPI size is positive");
        Ok(Self {
            world,
            rank,
            size,
            deadline: DEFAULT_DEADLINE,
            progress,
            send_buf: Vec::new(),
            recv_buf: Vec::new(),
            poisoned: None,
            universe: Some(universe),
        })
    }

    /// Sets the deadline of every later wait.
    pub fn set_deadline(&mut self, deadline: Duration) {
        self.deadline = deadline;
    }

    /// How long any single wait may take before it is an error.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Chooses who drives a shift's transfer during `work`; asking for
    /// [`Progress::Thread`] when MPI did not grant `MPI_THREAD_SERIALIZED`
    /// gets [`Progress::Inline`]. Returns the mode now in effect.
    pub fn set_progress(&mut self, progress: Progress) -> Progress {
        self.progress = match (progress, mpi::environment::threading_support()) {
            (Progress::Thread, Threading::Serialized | Threading::Multiple) => Progress::Thread,
            _ => Progress::Inline,
        };
        self.progress
    }

    /// Who drives a shift's transfer during `work`.
    pub fn progress(&self) -> Progress {
        self.progress
    }

    /// The MPI library's version string (for result notes).
    pub fn library_version() -> String {
        match mpi::environment::library_version() {
            // Open MPI's string ends in a NUL and a newline.
            Ok(v) => v.trim_end_matches(['\0', '\n', ' ']).to_string(),
            Err(_) => "unknown".into(),
        }
    }

    /// Refuses any operation once a transfer was abandoned.
    fn check_usable(&self) -> Result<(), TransportError> {
        match &self.poisoned {
            None => Ok(()),
            Some(why) => Err(TransportError::Io(format!(
                "the MPI transport gave up earlier ({why}); the job must abort"
            ))),
        }
    }

    /// Marks the transport unusable and leaks the buffers an abandoned
    /// request may still point into.
    fn poison(&mut self, why: &TransportError) {
        std::mem::forget(std::mem::take(&mut self.send_buf));
        std::mem::forget(std::mem::take(&mut self.recv_buf));
        self.poisoned = Some(why.to_string());
    }

    fn next(&self) -> usize {
        (self.rank + 1) % self.size
    }

    fn prev(&self) -> usize {
        (self.rank + self.size - 1) % self.size
    }
}

impl Drop for MpiTransport {
    fn drop(&mut self) {
        if self.poisoned.is_some() || std::thread::panicking() {
            // A peer may never reach MPI_Finalize: end the whole job instead,
            // after a moment for mpirun to forward what this rank printed
            // (the abort kills every rank, and their pending output with them).
            std::thread::sleep(ABORT_GRACE);
            self.world.abort(1);
        }
        drop(self.universe.take()); // MPI_Finalize
    }
}

/// MPI counts are `i32`: a longer block cannot be one message.
fn count_fits(len: usize, what: &str) -> Result<(), TransportError> {
    if i32::try_from(len).is_ok() {
        Ok(())
    } else {
        Err(TransportError::Io(format!(
            "{what} of {len} elements exceeds MPI's per-message count limit ({})",
            i32::MAX
        )))
    }
}

impl Transport for MpiTransport {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    /// See [`Transport::shift_during`]. The received block's length is
    /// checked against `incoming.len()` before it is received
    /// (`MPI_Improbe`), so a wrong length is [`TransportError::Length`]
    /// with no truncation; an `outgoing` whose length differs from
    /// `incoming`'s is sent anyway (so the next rank reports it too) and
    /// then reported as a `Length` error from this rank. `exposed_comm` is
    /// `total − compute`: the wait after `work` plus the set-up before it
    /// (a thread spawn; with [`Progress::Inline`] also the copy of
    /// `outgoing`). `work` must not call MPI.
    fn shift_during<R>(
        &mut self,
        outgoing: &[f32],
        incoming: &mut [f32],
        work: impl FnOnce() -> R,
    ) -> Result<(R, ShiftTiming), TransportError> {
        self.check_usable()?;
        count_fits(outgoing.len(), "outgoing block")?;
        count_fits(incoming.len(), "incoming block")?;
        let start = Instant::now();
        let deadline = self.deadline;
        let (next, prev) = (self.next(), self.prev());
        let world = &self.world;
        let send_buf = &mut self.send_buf;
        let recv_buf = &mut self.recv_buf;
        let work_done = AtomicBool::new(false);

        let (result, compute, outcome) = match self.progress {
            Progress::Thread => std::thread::scope(|s| {
                // The helper makes every MPI call of this shift; this thread
                // makes none until it has joined it (MPI_THREAD_SERIALIZED).
                let helper = s.spawn(|| {
                    let world = SimpleCommunicator::world();
                    exchange(
                        &world, next, prev, outgoing, incoming, send_buf, recv_buf, deadline,
                        &work_done,
                    )
                });
                let t = Instant::now();
                let result = work();
                let compute = t.elapsed();
                work_done.store(true, Ordering::Release);
                let outcome = helper.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
                (result, compute, outcome)
            }),
            Progress::Inline => {
                // Post first (so eager messages and rendezvous requests go out
                // now), then run the work, then complete on this thread.
                work_done.store(true, Ordering::Release);
                let mut result = None;
                let mut compute = Duration::ZERO;
                let outcome = exchange_with(
                    world,
                    next,
                    prev,
                    outgoing,
                    incoming,
                    send_buf,
                    recv_buf,
                    deadline,
                    &work_done,
                    || {
                        let t = Instant::now();
                        result = Some(work());
                        compute = t.elapsed();
                    },
                );
                (result.expect("work ran once"), compute, outcome)
            }
        };
        let total = start.elapsed();
        let timing = ShiftTiming { compute, exposed_comm: total.saturating_sub(compute), total };
        match outcome {
            Ok(()) => {}
            Err(e) => {
                if matches!(e, TransportError::Timeout { .. } | TransportError::Io(_)) {
                    self.poison(&e);
                }
                return Err(e);
            }
        }
        if outgoing.len() != incoming.len() {
            return Err(TransportError::Length {
                from: self.rank,
                expected: incoming.len(),
                got: outgoing.len(),
            });
        }
        Ok((result, timing))
    }
}

/// One shift's traffic, all MPI calls on the current thread: copies
/// `outgoing` into `send_buf`, sends it to `next`, receives `prev`'s block
/// into `recv_buf` once its length is known to match, copies it into
/// `incoming`. Polls with [`POLL`] sleeps until `work_done`, then without,
/// for at most `deadline` after `work_done`.
#[allow(clippy::too_many_arguments)]
fn exchange(
    world: &SimpleCommunicator,
    next: usize,
    prev: usize,
    outgoing: &[f32],
    incoming: &mut [f32],
    send_buf: &mut Vec<f32>,
    recv_buf: &mut Vec<f32>,
    deadline: Duration,
    work_done: &AtomicBool,
) -> Result<(), TransportError> {
    exchange_with(
        world,
        next,
        prev,
        outgoing,
        incoming,
        send_buf,
        recv_buf,
        deadline,
        work_done,
        || {},
    )
}

/// [`exchange`], running `between` once the send is posted and before the
/// first test (the inline progress mode's work).
#[allow(clippy::too_many_arguments)]
fn exchange_with(
    world: &SimpleCommunicator,
    next: usize,
    prev: usize,
    outgoing: &[f32],
    incoming: &mut [f32],
    send_buf: &mut Vec<f32>,
    recv_buf: &mut Vec<f32>,
    deadline: Duration,
    work_done: &AtomicBool,
    between: impl FnOnce(),
) -> Result<(), TransportError> {
    send_buf.clear();
    send_buf.extend_from_slice(outgoing);
    recv_buf.clear();
    recv_buf.resize(incoming.len(), 0.0);
    let next_p = world.process_at_rank(next as i32);
    let prev_p = world.process_at_rank(prev as i32);
    let mut wrong_length = None;
    let outcome = mpi::request::scope(|scope| {
        let mut send =
            Pending::new(next_p.immediate_send_with_tag(scope, &send_buf[..], tag::SHIFT));
        let mut recv = Pending::Idle;
        let mut recv_buf = Some(&mut recv_buf[..]);
        between();
        let mut pace = Pace::new();
        let mut waiting_since: Option<Instant> = None;
        loop {
            send = send.test();
            if let Some(buf) = recv_buf.take_if(|_| recv.is_idle()) {
                match prev_p.immediate_matched_probe_with_tag(tag::SHIFT) {
                    None => recv_buf = Some(buf),
                    Some((msg, status)) => {
                        let got = status.count(f32::equivalent_datatype()) as usize;
                        if got == buf.len() {
                            recv = Pending::new(msg.immediate_matched_receive_into(scope, buf));
                        } else {
                            // Take it off the wire so nothing is left behind.
                            let mut scratch = vec![0f32; got];
                            msg.matched_receive_into(&mut scratch[..]);
                            wrong_length = Some(got);
                            recv = Pending::Done;
                        }
                    }
                }
            } else {
                recv = recv.test();
            }
            if send.is_done() && recv.is_done() {
                return Ok(());
            }
            // The deadline runs from the end of the work: while it runs, a
            // neighbour may still be computing its previous block.
            let waited = match waiting_since {
                Some(t) => t.elapsed(),
                None => {
                    if work_done.load(Ordering::Acquire) {
                        waiting_since = Some(Instant::now());
                    }
                    Duration::ZERO
                }
            };
            if waited >= deadline {
                let recv_missing = !recv.is_done();
                send.abandon();
                recv.abandon();
                return Err(if recv_missing {
                    TransportError::Timeout { from: prev, waited }
                } else {
                    wait::stalled_send(next, "block", waited)
                });
            }
            pace.pause(work_done.load(Ordering::Acquire));
        }
    });
    outcome?;
    if let Some(got) = wrong_length {
        return Err(TransportError::Length { from: prev, expected: incoming.len(), got });
    }
    incoming.copy_from_slice(recv_buf);
    Ok(())
}
