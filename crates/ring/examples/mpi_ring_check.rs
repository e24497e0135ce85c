//! The MPI transport under `mpirun`: known blocks around the ring, the
//! agreement, header broadcast, scatter, gather and ping-pong, plus the
//! failure modes. Run by `crates/ring/examples/mpi_check.sh` (and CI):
//!
//! ```text
//! cargo build -p attn-ring --features mpi --release --example mpi_ring_check
//! mpirun --oversubscribe -np 4 target/release/examples/mpi_ring_check [MODE]
//! ```
//!
//! MODE:
//! - `check` (default): everything must match; exit 0, else every rank
//!   exits 1 with the mismatches.
//! - `fail-rank0`: rank 0 reports bad input to [`MpiTransport::agree`]; every
//!   rank must exit 1 printing `error: rank 0 failed: bad input ...`.
//! - `stall-rank0`: rank 0 never takes part in a shift; rank 1 must time out
//!   (deadline 2 s) and the job must end (the timed-out transport aborts it).
//! - `exit-rank0`: rank 0 exits (code 3) without finalising while the others
//!   wait in a shift; `mpirun` must end the job at once.
//! - `bench`: ping-pong latency/bandwidth between ranks 0 and 1, and the
//!   overlap of a shift with a dummy compute (both progress modes).
#![warn(missing_docs)]

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use attn_ring::Transport;
use attn_ring::TransportError;
use attn_ring::mpi::{Header, MpiTransport, PingPong, Progress};

/// Element `i` of the block that starts on rank `origin`: exact in f32
/// (integers below 2²⁴) and different for every (origin, i) in the test.
fn value(origin: usize, i: usize) -> f32 {
    ((origin * 1_000_003 + i) % (1 << 24)) as f32
}

fn block(origin: usize, len: usize) -> Vec<f32> {
    (0..len).map(|i| value(origin, i)).collect()
}

/// Busy arithmetic for `d` (a stand-in for the attention of one block);
/// returns something that depends on it so it is not optimised away.
fn dummy_compute(d: Duration) -> f32 {
    let start = Instant::now();
    let mut acc = [1.0f32; 64];
    while start.elapsed() < d {
        for _ in 0..1000 {
            for (j, a) in acc.iter_mut().enumerate() {
                *a = a.mul_add(0.999_999, j as f32 * 1e-9);
            }
        }
    }
    acc.iter().sum()
}

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "check".into());
    let mut t = match MpiTransport::init() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rank = t.rank();
    let outcome = match mode.as_str() {
        "check" => check(&mut t),
        "fail-rank0" => fail_rank0(&mut t),
        "stall-rank0" => stall_rank0(&mut t),
        "exit-rank0" => exit_rank0(&mut t),
        "bench" => bench(&mut t),
        other => Err(TransportError::Io(format!("unknown mode {other:?}"))),
    };
    // Print before the transport is dropped: a transport that gave up
    // aborts the whole job when dropped.
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One write: mpirun interleaves the ranks' output write by write,
            // and eprintln! writes each formatted piece separately.
            let line = format!("rank {rank}: error: {e}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            ExitCode::FAILURE
        }
    };
    drop(t);
    code
}

/// Collects mismatches instead of stopping at the first.
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }
}

fn check(t: &mut MpiTransport) -> Result<(), TransportError> {
    let (rank, size) = (t.rank(), t.size());
    let mut f = Failures(Vec::new());
    if rank == 0 {
        println!(
            "{size} ranks, progress {:?}, deadline {:?}, {}",
            t.progress(),
            t.deadline(),
            MpiTransport::library_version().lines().next().unwrap_or("")
        );
    }

    // 1. Blocks around the ring, P steps, then the last step with an empty
    // block; both progress modes. At step s rank r holds the block that
    // started on rank r − s.
    for progress in [Progress::Thread, Progress::Inline] {
        t.set_progress(progress);
        let len = 1 << 18; // 1 MiB: a rendezvous transfer, not an eager one
        let mut current = block(rank, len);
        let mut next = vec![f32::NAN; len];
        for s in 0..size {
            let origin = (rank + size - s) % size;
            let work = Duration::from_millis(5);
            let (sum, timing) = t.shift_during(&current, &mut next, || {
                (dummy_compute(work), current.iter().sum::<f32>())
            })?;
            f.check(sum.1 == block(origin, len).iter().sum::<f32>(), || {
                format!("step {s}: work saw the wrong block")
            });
            let from = (rank + size - s - 1) % size;
            f.check(next == block(from, len), || {
                format!("{progress:?} step {s}: rank {rank} did not get rank {from}'s block")
            });
            f.check(
                timing.compute >= work
                    && timing.total >= timing.compute
                    && timing.exposed_comm == timing.total - timing.compute,
                || format!("step {s}: inconsistent timing {timing:?}"),
            );
            std::mem::swap(&mut current, &mut next);
        }
        f.check(current == block(rank, len), || {
            format!("{progress:?}: the block did not come home after {size} steps")
        });
        let (r, _) = t.shift_during(&[], &mut [], || 7)?;
        f.check(r == 7, || "empty shift: work's result lost".into());
    }

    t.set_progress(Progress::Thread);

    // The deadline counts from the end of the work: work longer than the
    // deadline is no timeout (inline progress only starts waiting then).
    t.set_deadline(Duration::from_millis(200));
    let out = block(rank, 1 << 18);
    for progress in [Progress::Inline, Progress::Thread] {
        t.set_progress(progress);
        let mut inc = vec![0.0; out.len()];
        let long = t.shift_during(&out, &mut inc, || dummy_compute(Duration::from_millis(300)));
        f.check(long.is_ok(), || {
            format!("{progress:?}: work longer than the deadline: {:?}", long.err())
        });
        f.check(inc == block((rank + size - 1) % size, out.len()), || {
            format!("{progress:?}: work longer than the deadline: wrong block")
        });
    }
    t.set_deadline(attn_ring::mpi::DEFAULT_DEADLINE);

    // 2. A wrong length is a Length error on both sides, and the transport
    // stays usable (nothing is left on the wire).
    let len = 1000;
    let out = block(rank, if rank == 0 { len + 1 } else { len });
    let mut inc = vec![0.0; len];
    let got = t.shift_during(&out, &mut inc, || ());
    let expected_err = match rank {
        // Rank 0 sent a longer block than it receives (a single rank
        // receives its own); rank 1 received it.
        0 | 1 => Some(TransportError::Length { from: 0, expected: len, got: len + 1 }),
        _ => None,
    };
    f.check(got.as_ref().err() == expected_err.as_ref(), || {
        format!("length mismatch: got {:?}, expected {expected_err:?}", got.as_ref().err())
    });

    // 3. Agreement: all Ok; then ranks 1 and 0 fail, everyone sees rank 0's.
    f.check(t.agree(Ok(())).is_ok(), || "agree(Ok) on every rank failed".into());
    let mine = if rank <= 1 { Err(format!("bad thing on rank {rank}")) } else { Ok(()) };
    let agreed = t.agree(mine);
    let want = TransportError::Peer { rank: 0, message: "bad thing on rank 0".into() };
    f.check(agreed.as_ref().err() == Some(&want), || format!("agree with failures: {agreed:?}"));

    // 4. Header from rank 0.
    let header = Header { shape: vec![65536, 8, 64, u64::MAX], flags: vec![1, 0, 2] };
    let got = t.broadcast_header((rank == 0).then(|| header.clone()))?;
    f.check(got == header, || format!("header: got {got:?}"));

    // 5. Scatter blocks of different lengths (the last rank's is empty).
    let len_of = |r: usize| if r == size - 1 && size > 1 { 0 } else { 1000 + 37 * r };
    let blocks = (rank == 0).then(|| (0..size).map(|r| block(r, len_of(r))).collect());
    let mine = t.scatter(blocks)?;
    f.check(mine == block(rank, len_of(rank)), || {
        format!("scatter: rank {rank} got {} elements", mine.len())
    });

    // 6. Gather them back, changed, to rank 0.
    let changed: Vec<f32> = mine.iter().map(|x| x + 1.0).collect();
    let all = t.gather(changed)?;
    match all {
        Some(all) => {
            f.check(all.len() == size, || format!("gather: {} blocks", all.len()));
            for (r, b) in all.iter().enumerate() {
                let want: Vec<f32> = block(r, len_of(r)).iter().map(|x| x + 1.0).collect();
                f.check(*b == want, || format!("gather: rank {r}'s block differs"));
            }
        }
        None => f.check(rank != 0, || "gather: rank 0 got nothing".into()),
    }

    // 7. A short ping-pong.
    let sizes = [8, 1 << 20];
    let points = t.ping_pong(&sizes, 10)?;
    if let Some(points) = points {
        f.check(
            size == 1
                || points.len() == 2
                    && points.iter().zip(sizes).all(|(p, b)| {
                        p.bytes == b && p.one_way >= p.best_one_way && p.one_way > Duration::ZERO
                    }),
            || format!("ping-pong: {points:?}"),
        );
    }

    // Every rank's verdict, agreed: all pass or all fail.
    let verdict =
        if f.0.is_empty() { Ok(()) } else { Err(format!("rank {rank}: {}", f.0.join("; "))) };
    t.agree(verdict)?;
    if rank == 0 {
        println!("mpi_ring_check: {size} ranks OK");
    }
    Ok(())
}

fn fail_rank0(t: &mut MpiTransport) -> Result<(), TransportError> {
    let mine = if t.rank() == 0 {
        Err("bad input: q.npy has 3 dimensions, expected 4".to_string())
    } else {
        Ok(())
    };
    t.agree(mine)?;
    Err(TransportError::Io("the agreement should have failed".into()))
}

fn stall_rank0(t: &mut MpiTransport) -> Result<(), TransportError> {
    t.set_deadline(Duration::from_secs(2));
    let len = 1 << 18;
    let out = block(t.rank(), len);
    let mut inc = vec![0.0; len];
    if t.rank() == 0 {
        // Never shifts: waits for an agreement nobody else reaches.
        t.agree(Ok(()))?;
    } else {
        t.shift_during(&out, &mut inc, || ())?;
        t.agree(Ok(()))?;
    }
    Err(TransportError::Io("rank 1 should have timed out".into()))
}

fn exit_rank0(t: &mut MpiTransport) -> Result<(), TransportError> {
    if t.rank() == 0 {
        std::thread::sleep(Duration::from_millis(200));
        std::process::exit(3);
    }
    let len = 1 << 18;
    let out = block(t.rank(), len);
    let mut inc = vec![0.0; len];
    // Rank 1 waits for rank 0's block, the others for rank 0 in the
    // agreement, each with the default deadline (60 s): mpirun must end
    // the job long before.
    t.shift_during(&out, &mut inc, || ())?;
    t.agree(Ok(()))?;
    Err(TransportError::Io("mpirun should have ended the job".into()))
}

fn bench(t: &mut MpiTransport) -> Result<(), TransportError> {
    let rank = t.rank();
    let sizes: Vec<usize> = (0..=26).step_by(2).map(|e| 1usize << e).collect();
    let small: Vec<usize> = sizes.iter().copied().filter(|&b| b <= 1 << 16).collect();
    let large: Vec<usize> = sizes.iter().copied().filter(|&b| b > 1 << 16).collect();
    let mut points: Vec<PingPong> = Vec::new();
    if let Some(p) = t.ping_pong(&small, 1000)? {
        points.extend(p);
    }
    if let Some(p) = t.ping_pong(&large, 20)? {
        points.extend(p);
    }
    if rank == 0 && !points.is_empty() {
        println!("ping-pong between ranks 0 and 1 (one way = half a round trip)");
        println!("{:>10} {:>12} {:>12} {:>12}", "bytes", "median µs", "best µs", "GB/s");
        for p in &points {
            println!(
                "{:>10} {:>12.2} {:>12.2} {:>12.3}",
                p.bytes,
                p.one_way.as_secs_f64() * 1e6,
                p.best_one_way.as_secs_f64() * 1e6,
                p.bandwidth() / 1e9
            );
        }
    }

    // Overlap: a 16 MiB block shifted alone, then during a dummy compute
    // longer than the transfer, with each progress mode.
    let len = 4 << 20;
    let out = block(rank, len);
    let mut inc = vec![0.0; len];
    let reps = 5;
    let median = |mut v: Vec<Duration>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    for progress in [Progress::Thread, Progress::Inline] {
        t.set_progress(progress);
        let mut alone = Vec::new();
        let mut exposed = Vec::new();
        let mut compute = Vec::new();
        for _ in 0..reps {
            t.agree(Ok(()))?;
            alone.push(t.shift_during(&out, &mut inc, || ())?.1.total);
            t.agree(Ok(()))?;
            let (_, timing) =
                t.shift_during(&out, &mut inc, || dummy_compute(Duration::from_millis(30)))?;
            exposed.push(timing.exposed_comm);
            compute.push(timing.compute);
        }
        let (alone, exposed, compute) = (median(alone), median(exposed), median(compute));
        if rank == 0 {
            println!(
                "shift of {} MiB, progress {progress:?}: alone {:.2} ms; during {:.1} ms of \
                 compute, exposed {:.2} ms ({:.0}% of the lone transfer hidden)",
                (len * 4) >> 20,
                alone.as_secs_f64() * 1e3,
                compute.as_secs_f64() * 1e3,
                exposed.as_secs_f64() * 1e3,
                100.0 * (1.0 - exposed.as_secs_f64() / alone.as_secs_f64()).max(0.0)
            );
        }
    }
    Ok(())
}
