//! `attn ring`: ring attention on `.npy` files, over `P` ranks — threads
//! of this process, or (feature `mpi`) the processes of `mpirun -np P`.
//! The flags; the work is [`crate::ring`].

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use attnlab::Mask;
use attnlab::ring::{RankTiming, RingLayout};
use clap::builder::{PossibleValuesParser, TypedValueParser};

use super::run::LayoutArg;
use crate::config::MaskSpec;
use crate::machine::logical_cpus;
use crate::ring::launch::{Launch, default_threads, online_cpus};
use crate::ring::run::{DEFAULT_DEADLINE, DEFAULT_RANKS, RingDone, RingRun, run_in_process};

pub(crate) fn ring_layout_parser() -> impl TypedValueParser<Value = RingLayout> {
    PossibleValuesParser::new(RingLayout::ALL.map(RingLayout::name))
        .map(|s| s.parse::<RingLayout>().expect("possible values are layout names"))
}

/// The flags `attn ring` and `attn ring-bench` share: the mask, the
/// scale, how the sequence is cut, the ranks, their threads and the
/// deadline.
#[derive(Debug, Clone, clap::Args)]
pub struct RingFlags {
    /// Bottom-right causal mask (`--causal` or `--causal 1`): query i sees
    /// keys j <= i + Nk - Nq
    #[arg(long, value_name = "0|1", num_args = 0..=1, default_value = "0",
          default_missing_value = "1", value_parser = super::run::parse_01,
          action = clap::ArgAction::Set)]
    pub causal: bool,
    /// Sliding window around the bottom-right diagonal: query i sees keys
    /// i+Nk-Nq-LEFT ..= i+Nk-Nq+RIGHT; each side a key count, or `inf`, -1,
    /// `-` or nothing for unbounded. Not with --causal
    #[arg(long, value_name = "LEFT,RIGHT", allow_hyphen_values = true)]
    pub window: Option<String>,
    /// Softmax scale [default: 1/sqrt(d)]
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub scale: Option<f32>,
    /// How the sequence is cut: `zigzag` (rank r holds chunks r and 2P-1-r of
    /// 2P: the same causal work on every rank) or `contiguous` (chunk r of P)
    #[arg(long, default_value = "zigzag", value_parser = ring_layout_parser())]
    pub layout: RingLayout,
    /// Ranks: without mpirun, P ranks as threads of this process [default:
    /// 2]; under mpirun, the job's size (-np), which --ranks must then equal
    #[arg(long, value_name = "P")]
    pub ranks: Option<NonZeroUsize>,
    /// Worker threads per rank [default: this machine's logical CPUs shared
    /// by the ranks on it, at least 1]
    #[arg(long, value_name = "T")]
    pub threads: Option<NonZeroUsize>,
    /// Longest wait for any message (a block, the agreement, the scatter or
    /// gather) before a rank gives up with an error, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_DEADLINE.as_secs_f64())]
    pub deadline: f64,
}

impl RingFlags {
    /// The mask of `--causal` and `--window`.
    pub fn mask(&self) -> Result<Mask, String> {
        Ok(MaskSpec::from_flags(self.causal, self.window.as_deref())?.mask())
    }

    /// The deadline, checked.
    pub fn deadline(&self) -> Result<Duration, String> {
        Duration::try_from_secs_f64(self.deadline).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
            format!("--deadline {}: expected a positive number of seconds", self.deadline)
        })
    }

    /// Threads per rank: `--threads`, or the machine's CPUs shared by the
    /// `ranks_here` ranks on it.
    pub fn threads_for(&self, ranks_here: usize) -> usize {
        self.threads.map_or_else(
            || default_threads(logical_cpus(), online_cpus(), ranks_here),
            NonZeroUsize::get,
        )
    }
}

/// `attn ring` flags.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = RING_AFTER_HELP)]
pub struct RingArgs {
    /// Queries: `[B, Hq, Nq, d]` (bhnd) or `[B, Nq, Hq, d]` (bnhd); float32 or
    /// float16, C order
    #[arg(long, value_name = "Q.npy")]
    pub q: PathBuf,
    /// Keys: `[B, Hkv, Nk, d]` (bhnd) or `[B, Nk, Hkv, d]`; Hq a multiple of Hkv
    #[arg(long, value_name = "K.npy")]
    pub k: PathBuf,
    /// Values: `[B, Hkv, Nk, dv]` (bhnd) or `[B, Nk, Hkv, dv]`
    #[arg(long, value_name = "V.npy")]
    pub v: PathBuf,
    /// Output O, float32 in the input layout
    #[arg(long, value_name = "O.npy")]
    pub out: PathBuf,
    /// Also write the natural-log LSE of each row, float32 `[B, Hq, Nq]`
    #[arg(long, value_name = "LSE.npy")]
    pub lse: Option<PathBuf>,
    /// Memory layout of Q, K, V and O
    #[arg(long, value_enum, default_value_t = LayoutArg::Bhnd)]
    pub tensor_layout: LayoutArg,
    /// Mask, scale, how the ring is cut, ranks, threads, deadline.
    #[command(flatten)]
    pub ring: RingFlags,
}

const RING_AFTER_HELP: &str = "\
Ranks. Under `mpirun -np P` (a build with `--features mpi`), rank 0 reads and
checks the inputs, sends every rank its chunks, all ranks compute, and rank 0
gathers the rows and writes the outputs. Without mpirun, or with one rank,
--ranks P ranks run as threads of this process. A build without the `mpi`
feature started by mpirun with several ranks refuses (every rank would write).

Output: `time_ms=<float>` on stdout (rank 0): the ring's time, without file
I/O, scatter or gather; a summary of the ranks on stderr.

Exit status: 0 on success; 2 on any error (bad flag, unreadable or invalid
input, shapes that do not fit together, non-finite input, a rank that failed
or timed out, failed write). Under mpirun every rank exits with the error
(rank 0's message on each) and no file is written; an existing output is left
as it was.

Example:
  mpirun -np 4 attn ring --q q.npy --k k.npy --v v.npy --out o.npy \\
         --lse lse.npy --causal
  attn ring --q q.npy --k k.npy --v v.npy --out o.npy --causal --ranks 4";

/// The run the flags ask for (mask and deadline checked).
pub fn run_of(args: &RingArgs) -> Result<RingRun, String> {
    Ok(RingRun {
        q: args.q.clone(),
        k: args.k.clone(),
        v: args.v.clone(),
        out: args.out.clone(),
        lse: args.lse.clone(),
        layout: args.ring.layout,
        tensors: args.tensor_layout.layout(),
        mask: args.ring.mask()?,
        scale: args.ring.scale,
        ranks: args.ring.ranks.map(NonZeroUsize::get),
        threads: args.ring.threads.map(NonZeroUsize::get),
        deadline: args.ring.deadline()?,
    })
}

/// "1.2–3.4 s" over the ranks.
fn spread(timings: &[RankTiming], f: impl Fn(&RankTiming) -> Duration) -> String {
    let s: Vec<f64> = timings.iter().map(|t| f(t).as_secs_f64()).collect();
    let (lo, hi) = s.iter().fold((f64::INFINITY, 0f64), |(a, b), &x| (a.min(x), b.max(x)));
    if s.is_empty() { "-".into() } else { format!("{lo:.3}–{hi:.3} s") }
}

/// Prints the outcome of this rank: `time_ms=` and a summary (rank 0), or
/// the error as one line (every rank, under MPI naming it).
fn report(over_mpi: bool, rank: usize, outcome: Result<Option<RingDone>, String>) -> ExitCode {
    match outcome {
        Ok(Some(d)) => {
            println!("time_ms={:.3}", d.wall.as_secs_f64() * 1e3);
            let how =
                if d.over_mpi { "processes (MPI)" } else { "threads of this process (no MPI)" };
            eprintln!(
                "attn ring: {} ranks as {how}, {} thread(s) each; per rank: compute {}, \
                 exposed communication {}",
                d.ranks,
                d.threads,
                spread(&d.timings, |t| t.compute),
                spread(&d.timings, |t| t.exposed_comm),
            );
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write;
            // One write: mpirun interleaves the ranks' output write by write.
            let line = if over_mpi {
                format!("attn ring: rank {rank}: {e}\n")
            } else {
                format!("attn ring: {e}\n")
            };
            let _ = std::io::stderr().write_all(line.as_bytes());
            ExitCode::from(2)
        }
    }
}

/// Entry point of `attn ring`.
pub fn main(args: &RingArgs) -> ExitCode {
    let launch = Launch::detect();
    let run = match run_of(args).and_then(|r| launch.check_supported("ring").map(|()| r)) {
        Ok(r) => r,
        Err(e) => return report(false, 0, Err(e)),
    };
    match launch {
        #[cfg(feature = "mpi")]
        Launch::Mpi { .. } => {
            let threads = args.ring.threads_for(launch.ranks_on_this_machine(1));
            crate::ring::mpi::session(
                run.deadline,
                |t| crate::ring::mpi::ring(t, &run, threads),
                |rank, r| report(true, rank, r),
            )
        }
        _ => {
            let threads = args.ring.threads_for(run.ranks.unwrap_or(DEFAULT_RANKS));
            report(false, 0, run_in_process(&RingRun { threads: Some(threads), ..run }).map(Some))
        }
    }
}
