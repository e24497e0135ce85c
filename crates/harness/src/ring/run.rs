//! `attn ring` in one process: the inputs read and checked
//! ([`super::inputs`]), `P` ranks as threads ([`ring_in_process`]), the
//! outputs written all-or-nothing ([`Outputs`]: temporary files renamed
//! over the targets only once everything is written; on any error nothing
//! is written and what was on disk stays). The MPI run (`super::mpi`)
//! shares [`prepare`] and [`write_outputs`] on its rank 0.

use std::path::PathBuf;
use std::time::Duration;

use attnlab::ring::{RankTiming, RingLayout, ring_in_process};
use attnlab::{Layout, Mask};

use super::inputs::{WholeInputs, read_inputs};
use super::problem::RingProblem;
use crate::npy_call::outputs::Outputs;

/// In-process ranks when `--ranks` is not given.
pub const DEFAULT_RANKS: usize = 2;

/// How long a rank waits for a block (or any message) before it is an
/// error, unless `--deadline` says otherwise: a rank may wait for its
/// neighbour's whole step of compute.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

/// One `attn ring`: the files and how to run it.
#[derive(Debug, Clone)]
pub struct RingRun {
    /// Queries.
    pub q: PathBuf,
    /// Keys.
    pub k: PathBuf,
    /// Values.
    pub v: PathBuf,
    /// Output O.
    pub out: PathBuf,
    /// Output LSE, if wanted.
    pub lse: Option<PathBuf>,
    /// How the sequence is cut over the ranks.
    pub layout: RingLayout,
    /// Memory layout of Q, K, V and O.
    pub tensors: Layout,
    /// The mask (on global positions).
    pub mask: Mask,
    /// Softmax scale; `None` = `1/sqrt(d)`.
    pub scale: Option<f32>,
    /// Ranks (`--ranks`): in one process, how many; under MPI, it must be
    /// the job's size if given.
    pub ranks: Option<usize>,
    /// Threads per rank (the command line's default: the machine's CPUs
    /// shared by its ranks; here 1).
    pub threads: Option<usize>,
    /// The longest any rank waits for a message.
    pub deadline: Duration,
}

/// What a successful `attn ring` did.
#[derive(Debug, Clone)]
pub struct RingDone {
    /// Ranks in the ring.
    pub ranks: usize,
    /// Threads per rank.
    pub threads: usize,
    /// One process per rank (MPI) rather than threads of one process.
    pub over_mpi: bool,
    /// Wall time of the ring, without file I/O, scatter or gather: the
    /// slowest rank's total over MPI; in one process, from starting the
    /// ranks' threads to their results placed.
    pub wall: Duration,
    /// Each rank's timing.
    pub timings: Vec<RankTiming>,
}

/// Rank 0's side before any compute: the outputs proven writable (and not
/// aliasing an input or each other), the inputs read and checked, the
/// problem they make.
pub struct Prepared {
    /// The outputs' temporary files; dropping them removes them.
    pub outputs: Outputs,
    /// The whole inputs.
    pub inputs: WholeInputs,
    /// The problem every rank will run.
    pub problem: RingProblem,
}

/// Prepares `run` on the rank that reads the files (see [`Prepared`]).
/// Errors are one line naming the file or flag.
pub fn prepare(run: &RingRun) -> Result<Prepared, String> {
    let mut targets = vec![("--out", run.out.as_path())];
    if let Some(lse) = &run.lse {
        targets.push(("--lse", lse.as_path()));
    }
    let sources = [("--q", run.q.as_path()), ("--k", run.k.as_path()), ("--v", run.v.as_path())];
    let outputs = Outputs::prepare(&targets, &sources).map_err(|e| e.to_string())?;
    let inputs = read_inputs([&run.q, &run.k, &run.v], run.tensors).map_err(|e| e.to_string())?;
    let problem = RingProblem {
        shape: inputs.shape,
        layout: run.layout,
        tensors: run.tensors,
        mask: run.mask,
        scale: run.scale,
    };
    // Everything the ranks will check, checked here first (one rank).
    problem.spec(1, 1).map_err(|e| e.to_string())?;
    Ok(Prepared { outputs, inputs, problem })
}

/// Writes O (float32, `problem.tensors` layout) and, if `outputs` has it,
/// the LSE (float32 `[B, Hq, Nq]`), then puts both in place at once.
pub fn write_outputs(
    outputs: Outputs,
    problem: &RingProblem,
    out: &[f32],
    lse: Option<&[f32]>,
) -> Result<(), String> {
    let s = &problem.shape;
    outputs.write(0, &problem.tensors.memory_dims(s.out_dims()), out).map_err(|e| e.to_string())?;
    if let Some(lse) = lse {
        outputs.write(1, &[s.batch(), s.q_heads(), s.q_len()], lse).map_err(|e| e.to_string())?;
    }
    outputs.commit().map_err(|e| e.to_string())
}

/// `attn ring` with `run.ranks` (default [`DEFAULT_RANKS`]) ranks as
/// threads of this process, `run.threads` each (default 1).
pub fn run_in_process(run: &RingRun) -> Result<RingDone, String> {
    let ranks = run.ranks.unwrap_or(DEFAULT_RANKS);
    let threads = run.threads.unwrap_or(1);
    let Prepared { outputs, inputs, problem } = prepare(run)?;
    let spec = problem.spec(ranks, threads).map_err(|e| e.to_string())?;
    let r = ring_in_process(&spec, problem.tensors, &inputs.q, &inputs.k, &inputs.v, run.deadline)
        .map_err(|e| e.to_string())?;
    drop(inputs);
    write_outputs(outputs, &problem, &r.out, run.lse.as_ref().map(|_| &r.lse[..]))?;
    Ok(RingDone { ranks, threads, over_mpi: false, wall: r.wall, timings: r.ranks })
}
