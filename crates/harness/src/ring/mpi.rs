//! `attn ring` and `attn ring-bench` over MPI (feature `mpi`): one process
//! per rank, started by `mpirun`, over `attnlab::ring::mpi::MpiTransport`.
//!
//! Every step that can fail on one rank ends in an agreement
//! ([`MpiTransport::agree`]), so that all ranks go on or all stop with the
//! same error: bad input on rank 0 makes every rank exit non-zero with
//! rank 0's message, and nothing is written. The ring itself is all or
//! nothing on its own (`run_rank`), and every wait has the deadline.

use std::process::ExitCode;
use std::time::Duration;

use attnlab::ring::mpi::{Header, MpiTransport};
use attnlab::ring::{RankInputs, Transport, TransportError, cut, place, run_rank};

use super::bench::{BenchConfig, RankRuns, bench_rank, rank_inputs};
use super::problem::RingProblem;
use super::results::PingPongPoint;
use super::run::{Prepared, RingDone, RingRun, prepare, write_outputs};
use super::wire;

/// Runs `body` on this process's MPI transport (deadline `deadline`), then
/// `report` with this rank and the outcome — before the transport is
/// dropped, because a transport that gave up aborts the whole job when
/// dropped, and its output with it.
pub fn session<R>(
    deadline: Duration,
    body: impl FnOnce(&mut MpiTransport) -> Result<R, String>,
    report: impl FnOnce(usize, Result<R, String>) -> ExitCode,
) -> ExitCode {
    let mut t = match MpiTransport::init() {
        Ok(t) => t,
        Err(e) => return report(0, Err(format!("MPI: {e}"))),
    };
    t.set_deadline(deadline);
    let rank = t.rank();
    let outcome = body(&mut t);
    let code = report(rank, outcome);
    drop(t);
    code
}

/// The MPI library's name, for results.
pub fn library() -> String {
    MpiTransport::library_version().lines().next().unwrap_or("").trim().to_string()
}

/// A failed agreement as this rank reports it: its own message, or which
/// rank failed and why.
fn agreed_error(me: usize, e: TransportError) -> String {
    match e {
        TransportError::Peer { rank, message } if rank == me => message,
        e => e.to_string(),
    }
}

/// Every rank's `outcome` agreed: `Ok` on every rank only if all were.
fn agree(t: &mut MpiTransport, outcome: Result<(), String>) -> Result<(), String> {
    let me = t.rank();
    t.agree(outcome).map_err(|e| agreed_error(me, e))
}

/// `--ranks`, if given, must be the job's size.
fn check_ranks(given: Option<usize>, size: usize) -> Result<(), String> {
    match given {
        Some(p) if p != size => Err(format!(
            "--ranks {p}, but mpirun started {size} ranks: give mpirun -np {p}, or leave --ranks \
             out under mpirun"
        )),
        _ => Ok(()),
    }
}

/// `attn ring` as one rank of the job (module docs); rank 0 returns what
/// was done, the others `None`.
pub fn ring(
    t: &mut MpiTransport,
    run: &RingRun,
    threads: usize,
) -> Result<Option<RingDone>, String> {
    let (rank, size) = (t.rank(), t.size());
    // 1. Rank 0 reads and checks everything; every rank hears the outcome.
    let mut root: Option<Prepared> = None;
    let mine = check_ranks(run.ranks, size).and_then(|()| {
        if rank == 0 {
            root = Some(prepare(run)?);
        }
        Ok(())
    });
    agree(t, mine)?;

    // 2. The problem, from rank 0's header; each rank's spec.
    let header = root.as_ref().map(|p| {
        let (shape, flags) = p.problem.encode();
        Header { shape, flags }
    });
    let header = t.broadcast_header(header).map_err(|e| e.to_string())?;
    let spec = RingProblem::decode(&header.shape, &header.flags)
        .and_then(|p| p.spec(size, threads).map(|s| (p, s)).map_err(|e| e.to_string()));
    agree(t, spec.as_ref().map(|_| ()).map_err(Clone::clone))?;
    let (problem, spec) = spec?;

    // 3. Rank 0 cuts each rank's chunks out of the whole inputs and
    //    scatters them (then frees the whole inputs).
    let (outputs, blocks) = match root.take() {
        Some(Prepared { outputs, inputs, .. }) => {
            let blocks: Result<Vec<Vec<f32>>, String> = (0..size)
                .map(|r| {
                    let c = cut(&spec, r, problem.tensors, &inputs.q, &inputs.k, &inputs.v)
                        .map_err(|e| e.to_string())?;
                    Ok([c.q, c.k, c.v].concat())
                })
                .collect();
            drop(inputs);
            let ok = blocks.as_ref().map(|_| ()).map_err(Clone::clone);
            agree(t, ok)?;
            (Some(outputs), Some(blocks?))
        }
        None => {
            agree(t, Ok(()))?;
            (None, None)
        }
    };
    let mine = t.scatter(blocks).map_err(|e| e.to_string())?;
    let (lq, lk, lv) = spec.rank_lens(rank);
    let split = if mine.len() == lq + lk + lv {
        Ok(RankInputs {
            rank,
            q: mine[..lq].to_vec(),
            k: mine[lq..lq + lk].to_vec(),
            v: mine[lq + lk..].to_vec(),
        })
    } else {
        Err(format!("received {} input values, expected {}", mine.len(), lq + lk + lv))
    };
    drop(mine);
    agree(t, split.as_ref().map(|_| ()).map_err(Clone::clone))?;
    let inputs = split?;

    // 4. The ring (all or nothing by itself).
    let result = run_rank(t, &spec, &inputs).map_err(|e| e.to_string())?;
    drop(inputs);

    // 5. Rank 0 gathers every rank's rows (and timing), puts them in place
    //    and writes the outputs; every rank hears whether it could.
    let mut block = result.out;
    block.extend_from_slice(&result.lse);
    block.extend(wire::encode_timing(&result.timing));
    let all = t.gather(block).map_err(|e| e.to_string())?;
    let done = match (all, outputs) {
        (Some(all), Some(outputs)) => {
            let s = &problem.shape;
            let mut out = vec![0f32; s.out_dims().iter().product()];
            let mut lse = vec![0f32; s.lse_len()];
            let mut timings = Vec::with_capacity(size);
            let placed: Result<(), String> = all.iter().enumerate().try_for_each(|(r, b)| {
                let (rows, timing) = wire::split_timing(b)?;
                let (o, l) = spec.rank_out_lens(r);
                if rows.len() != o + l {
                    return Err(format!("rank {r} sent {} values, expected {}", rows.len(), o + l));
                }
                timings.push(timing);
                place(&spec, r, &rows[..o], &rows[o..], problem.tensors, &mut out, &mut lse)
                    .map_err(|e| e.to_string())
            });
            let written = placed.and_then(|()| {
                write_outputs(outputs, &problem, &out, run.lse.as_ref().map(|_| &lse[..]))
            });
            agree(t, written)?;
            let wall = timings.iter().map(|t| t.total).max().unwrap_or_default();
            Some(RingDone { ranks: size, threads, over_mpi: true, wall, timings })
        }
        _ => {
            agree(t, Ok(()))?;
            None
        }
    };
    Ok(done)
}

/// `attn ring-bench` as one rank of the job: rank 0 returns every rank's
/// runs (by rank), the others `None`. `cfg.ranks` must be the job's size.
pub fn bench(t: &mut MpiTransport, cfg: &BenchConfig) -> Result<Option<Vec<RankRuns>>, String> {
    let (rank, size) = (t.rank(), t.size());
    let spec =
        check_ranks(Some(cfg.ranks), size).and_then(|()| cfg.spec().map_err(|e| e.to_string()));
    agree(t, spec.as_ref().map(|_| ()).map_err(Clone::clone))?;
    let spec = spec?;
    let inputs = rank_inputs(&spec, rank);
    let runs = bench_rank(t, &spec, &inputs, cfg.warmup, cfg.reps).map_err(|e| e.to_string())?;
    let all = t.gather(wire::encode_runs(&runs)).map_err(|e| e.to_string())?;
    let decoded = all.map(|all| all.iter().map(|b| wire::decode_runs(b)).collect());
    let ok = match &decoded {
        Some(Err(e)) => Err(e.clone()),
        _ => Ok(()),
    };
    agree(t, ok)?;
    decoded.transpose()
}

/// Ping-pong between ranks 0 and 1: messages of 8 B to 128 MiB (×8; the
/// largest is the block of a 2-rank ring at N = 65536, H = 8, d = 64), 1000
/// round trips up to 32 KiB and 20 above. Rank 0 returns the points.
pub fn ping_pong(t: &mut MpiTransport) -> Result<Option<Vec<PingPongPoint>>, String> {
    if t.size() < 2 {
        return Err("--ping-pong needs two ranks: mpirun -np 2".into());
    }
    let sizes: Vec<usize> = (0..9).map(|i| 8usize << (3 * i)).collect();
    let (small, large): (Vec<usize>, Vec<usize>) = sizes.iter().partition(|&&b| b <= 32 << 10);
    let mut points = Vec::new();
    for (sizes, trips) in [(small, 1000), (large, 20)] {
        if let Some(p) = t.ping_pong(&sizes, trips).map_err(|e| e.to_string())? {
            points.extend(p.into_iter().map(|p| PingPongPoint {
                bytes: p.bytes,
                round_trips: p.round_trips,
                one_way_s: p.one_way.as_secs_f64(),
                best_one_way_s: p.best_one_way.as_secs_f64(),
            }));
        }
    }
    agree(t, Ok(()))?;
    Ok((t.rank() == 0).then_some(points))
}
