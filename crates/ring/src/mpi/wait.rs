//! Waiting on MPI requests without blocking: a request is tested
//! (`MPI_Test`) until it completes or a deadline passes, so no wait can hang.

use std::time::{Duration, Instant};

use mpi::point_to_point::Message;
use mpi::request::{Request, Scope};
use mpi::topology::Process;
use mpi::traits::*;

use super::POLL;
use crate::transport::TransportError;

/// A request that may not have been posted yet, may be in flight, or is
/// complete.
pub(super) enum Pending<'a, D: ?Sized, S: Scope<'a>> {
    /// Not posted yet (a receive waiting for its message to be probed).
    Idle,
    /// In flight.
    Active(Request<'a, D, S>),
    /// Complete.
    Done,
}

impl<'a, D: ?Sized, S: Scope<'a>> Pending<'a, D, S> {
    /// A posted request.
    pub(super) fn new(request: Request<'a, D, S>) -> Self {
        Pending::Active(request)
    }

    /// Tests an active request once (`MPI_Test`, which also makes progress).
    pub(super) fn test(self) -> Self {
        match self {
            Pending::Active(r) => match r.test() {
                Ok(_) => Pending::Done,
                Err(r) => Pending::Active(r),
            },
            other => other,
        }
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(self, Pending::Done)
    }

    pub(super) fn is_idle(&self) -> bool {
        matches!(self, Pending::Idle)
    }

    /// Gives up on an unfinished request at its deadline: it leaves its
    /// scope without being completed (so the scope's end does not abort the
    /// process), and MPI keeps it. Every caller then poisons the transport,
    /// which leaks the buffers the request points into (they are the
    /// transport's own, or owned copies), and never completes it.
    pub(super) fn abandon(self) {
        if let Pending::Active(r) = self {
            // SAFETY: `into_raw` asks that the request complete within the
            // scope's lifetime because MPI may still read or write its
            // buffers. It never will here, so its buffers must live forever
            // instead: the caller leaks them (`MpiTransport::poison`,
            // `mem::forget` of owned buffers) and makes no further MPI call
            // that could complete or reuse the request (the transport is
            // poisoned; dropping it aborts the job).
            let _ = unsafe { r.into_raw() };
        }
    }
}

/// Tests `request` until it completes or `deadline` passes; on timeout the
/// request is abandoned ([`Pending::abandon`]: the caller must leak its
/// buffers and poison the transport) and the time waited is the error.
pub(super) fn complete<'a, D: ?Sized, S: Scope<'a>>(
    request: Request<'a, D, S>,
    deadline: Instant,
) -> Result<(), Duration> {
    complete_paced(request, deadline, true)
}

/// [`complete`] testing back to back, for latency measurements.
pub(super) fn complete_spinning<'a, D: ?Sized, S: Scope<'a>>(
    request: Request<'a, D, S>,
    deadline: Instant,
) -> Result<(), Duration> {
    complete_paced(request, deadline, false)
}

fn complete_paced<'a, D: ?Sized, S: Scope<'a>>(
    request: Request<'a, D, S>,
    deadline: Instant,
    pause: bool,
) -> Result<(), Duration> {
    let mut pending = Pending::new(request);
    let mut pace = Pace::new();
    loop {
        pending = pending.test();
        if pending.is_done() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            pending.abandon();
            return Err(pace.waited());
        }
        if pause {
            pace.pause(true);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Probes (`MPI_Improbe`) for a message from `source` with `tag` until one
/// is there or `deadline` passes: the matched message and its length in
/// `T`s, or the time waited.
pub(super) fn probe<T: Equivalence>(
    source: &Process<'_>,
    tag: i32,
    deadline: Instant,
) -> Result<(Message, usize), Duration> {
    let mut pace = Pace::new();
    loop {
        if let Some((msg, status)) = source.immediate_matched_probe_with_tag(tag) {
            let count = usize::try_from(status.count(T::equivalent_datatype()))
                .expect("MPI counts are non-negative");
            return Ok((msg, count));
        }
        if Instant::now() >= deadline {
            return Err(pace.waited());
        }
        pace.pause(true);
    }
}

/// The error for a send nobody received before the deadline.
pub(super) fn stalled_send(to: usize, what: &str, waited: Duration) -> TransportError {
    TransportError::Io(format!(
        "rank {to} did not take the {what} within {:.1} s",
        waited.as_secs_f64()
    ))
}

/// The rhythm of a polling loop.
pub(super) struct Pace {
    start: Instant,
    /// When the first urgent pause came.
    urgent_since: Option<Instant>,
}

/// How long to keep yielding between tests once nobody else needs the core
/// before settling to [`POLL`] sleeps: a neighbour about to answer is
/// answered within microseconds, a long wait gives its core away.
const EAGER: Duration = Duration::from_millis(1);

impl Pace {
    pub(super) fn new() -> Self {
        Self { start: Instant::now(), urgent_since: None }
    }

    /// Time since the loop started.
    pub(super) fn waited(&self) -> Duration {
        self.start.elapsed()
    }

    /// Between two tests. While `work` runs (`!urgent`, on the helper
    /// thread) sleep [`POLL`], so the helper takes almost no time from the
    /// compute; once urgent, yield for [`EAGER`], then sleep.
    pub(super) fn pause(&mut self, urgent: bool) {
        if urgent && self.urgent_since.get_or_insert_with(Instant::now).elapsed() < EAGER {
            std::thread::yield_now();
        } else {
            std::thread::sleep(POLL);
        }
    }
}
