//! `results/ring.json`: what `attn ring-bench --json` measured, appended
//! one entry per run, and what `attn ring-report` turns into
//! `docs/ring.md`. Three kinds of entry, each with the machine it ran on
//! (CPU model, commit, date: [`MachineInfo`]) and the load at the time:
//!
//! - [`RingEntry`]: a whole ring timed (per rank: compute, exposed
//!   communication, the same transfers alone, overlap, GFLOP/s);
//! - [`SoloEntry`]: one rank's compute alone, at a ring's chunk sizes (the
//!   per-rank kernel throughput);
//! - [`PingPongEntry`]: MPI point-to-point latency and bandwidth between
//!   two ranks.
//!
//! The file is rewritten whole on each append (temporary file + rename), so
//! a failed write never loses the entries already there.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::problem::RingProblem;
use crate::machine::MachineInfo;

/// Version of the file's format.
pub const SCHEMA: u32 = 1;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RingResults {
    /// [`SCHEMA`] of the writer.
    pub schema: u32,
    /// Every measurement, oldest first.
    pub entries: Vec<Entry>,
}

impl Default for RingResults {
    fn default() -> Self {
        RingResults { schema: SCHEMA, entries: Vec::new() }
    }
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A whole ring.
    Ring(RingEntry),
    /// One rank alone.
    Solo(SoloEntry),
    /// MPI ping-pong.
    PingPong(PingPongEntry),
}

impl Entry {
    /// Where and when it ran.
    pub fn context(&self) -> &Context {
        match self {
            Entry::Ring(e) => &e.context,
            Entry::Solo(e) => &e.context,
            Entry::PingPong(e) => &e.context,
        }
    }
}

/// Where and how a measurement ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// CPU, caches, compiled ISA, rustc, commit, date (its
    /// `logical_cpus`: those this process could use; `mpirun` may bind a
    /// rank to fewer than the machine has).
    pub machine: MachineInfo,
    /// Logical CPUs of the machine, online.
    pub machine_cpus: usize,
    /// `/proc/loadavg`'s 1-, 5- and 15-minute load averages when the
    /// measurement started (the machine is shared).
    pub load_avg: String,
    /// The MPI library (`MPI_Get_library_version`'s first line) when the
    /// ranks were processes; `None` in one process.
    pub mpi_library: Option<String>,
    /// Processes of the job (1: the ranks were threads of one process).
    pub processes: usize,
    /// Ranks on this machine.
    pub ranks_here: usize,
}

impl Context {
    /// This machine now.
    pub fn collect(mpi_library: Option<String>, processes: usize, ranks_here: usize) -> Context {
        let load_avg = std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        Context {
            machine: MachineInfo::collect(),
            machine_cpus: super::launch::online_cpus(),
            load_avg,
            mpi_library,
            processes,
            ranks_here,
        }
    }
}

/// The problem of a measurement and the ring it ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemRecord {
    /// Batch entries.
    pub batch: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Query positions (the whole sequence).
    pub q_len: usize,
    /// Key positions.
    pub kv_len: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Value dimension.
    pub v_dim: usize,
    /// `full`, `causal`, `win{L}_{R}`.
    pub mask: String,
    /// `zigzag` or `contiguous`.
    pub layout: String,
    /// Ranks in the ring.
    pub ranks: usize,
    /// Threads per rank.
    pub threads: usize,
}

impl ProblemRecord {
    /// `problem` on `ranks` ranks of `threads` threads.
    pub fn new(problem: &RingProblem, ranks: usize, threads: usize) -> Self {
        let s = &problem.shape;
        ProblemRecord {
            batch: s.batch(),
            q_heads: s.q_heads(),
            kv_heads: s.kv_heads(),
            q_len: s.q_len(),
            kv_len: s.kv_len(),
            head_dim: s.head_dim(),
            v_dim: s.v_dim(),
            mask: problem.mask_name(),
            layout: problem.layout.name().to_string(),
            ranks,
            threads,
        }
    }

    /// FLOPs of one visible (query, key) pair over the batch and the query
    /// heads: `2·d` for `QKᵀ` and `2·dv` for `PV`, per head.
    pub fn flops_per_pair(&self) -> f64 {
        (self.batch * self.q_heads * 2 * (self.head_dim + self.v_dim)) as f64
    }

    /// Tokens per rank: `q_len / ranks`.
    pub fn chunk(&self) -> f64 {
        self.q_len as f64 / self.ranks.max(1) as f64
    }
}

/// One rank of a timed ring (the ring's median repetition).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankRecord {
    /// The rank.
    pub rank: usize,
    /// Its kernel calls and merges, seconds.
    pub compute_s: f64,
    /// Its shifts' time outside the compute: communication that did not
    /// hide (including any wait for a slower neighbour), seconds.
    pub exposed_comm_s: f64,
    /// The closing agreement (waiting for the slowest rank), seconds.
    pub agreement_s: f64,
    /// The whole rank, seconds.
    pub total_s: f64,
    /// The same `P − 1` shifts with nothing to compute, right after the
    /// ring (all ranks started together), seconds: the transfer time.
    pub transfer_alone_s: f64,
    /// Share of the transfer time hidden behind compute:
    /// `1 − exposed_comm / transfer_alone`, clamped to `[0, 1]`; `None`
    /// without transfers (one rank).
    pub overlap: Option<f64>,
    /// FLOPs of its visible (query, key) pairs.
    pub flops: f64,
    /// `flops / compute`, GFLOP/s.
    pub gflops: f64,
    /// Block calls computed.
    pub pairs_computed: usize,
    /// Block calls skipped as invisible.
    pub pairs_skipped: usize,
    /// Bytes it sent in the ring's shifts.
    pub bytes_sent: u64,
}

/// A whole ring, timed by `attn ring-bench`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RingEntry {
    /// Where and how it ran.
    pub context: Context,
    /// The problem and ring.
    pub problem: ProblemRecord,
    /// `mpi` (one process per rank) or `in-process` (threads).
    pub transport: String,
    /// Untimed runs first.
    pub warmup: u32,
    /// Timed runs.
    pub reps: u32,
    /// The slowest rank's total of each timed run, seconds.
    pub walls_s: Vec<f64>,
    /// The median of `walls_s`: the ring's time; the ranks' figures are
    /// from that run.
    pub wall_s: f64,
    /// All ranks' FLOPs.
    pub flops: f64,
    /// `flops / wall`, GFLOP/s.
    pub gflops: f64,
    /// Sum over ranks of `exposed_comm_s`.
    pub exposed_comm_s: f64,
    /// Sum over ranks of `transfer_alone_s`.
    pub transfer_alone_s: f64,
    /// The ring's overlap: `1 − exposed / transfer_alone` over all ranks,
    /// clamped to `[0, 1]`; `None` for one rank.
    pub overlap: Option<f64>,
    /// Each rank, by rank.
    pub ranks: Vec<RankRecord>,
}

/// One rank alone (`attn ring-bench --solo`): the block calls and merges
/// of rank `rank` of the ring `problem`, with nothing else running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoloEntry {
    /// Where it ran.
    pub context: Context,
    /// The ring it is a rank of (its `threads`: the rank's).
    pub problem: ProblemRecord,
    /// The rank.
    pub rank: usize,
    /// Untimed runs first.
    pub warmup: u32,
    /// Each timed run's compute, seconds.
    pub computes_s: Vec<f64>,
    /// Their median.
    pub compute_s: f64,
    /// FLOPs of the rank's visible pairs.
    pub flops: f64,
    /// `flops / compute_s`, GFLOP/s.
    pub gflops: f64,
    /// Its query positions (tokens of the rank).
    pub chunk: usize,
    /// The longest query chunk of a block call (zigzag: half the rank's).
    pub block_rows: usize,
}

/// One message size of a ping-pong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingPongPoint {
    /// Message size.
    pub bytes: usize,
    /// Round trips timed.
    pub round_trips: usize,
    /// Median one-way time (half the median round trip), seconds.
    pub one_way_s: f64,
    /// Fastest one-way time, seconds.
    pub best_one_way_s: f64,
}

impl PingPongPoint {
    /// Bytes per second over the median one-way time.
    pub fn bandwidth(&self) -> f64 {
        self.bytes as f64 / self.one_way_s
    }
}

/// MPI ping-pong between ranks 0 and 1 (`attn ring-bench --ping-pong`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingPongEntry {
    /// Where it ran (two ranks on one machine: shared memory).
    pub context: Context,
    /// Every message size, smallest first.
    pub points: Vec<PingPongPoint>,
}

impl PingPongEntry {
    /// Latency: the smallest message's median one-way time, seconds.
    pub fn latency_s(&self) -> Option<f64> {
        self.points.iter().min_by_key(|p| p.bytes).map(|p| p.one_way_s)
    }

    /// Bandwidth: the largest message's bytes over its median one-way
    /// time, bytes/s.
    pub fn bandwidth(&self) -> Option<f64> {
        self.points.iter().max_by_key(|p| p.bytes).map(PingPongPoint::bandwidth)
    }
}

/// Reads a results file; a missing file is an empty one.
pub fn load(path: &Path) -> Result<RingResults, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RingResults::default()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let r: RingResults = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a ring results file: {e}", path.display()))?;
    if r.schema > SCHEMA {
        return Err(format!(
            "{}: schema {} is newer than this attn's ({SCHEMA}): rebuild attn",
            path.display(),
            r.schema
        ));
    }
    Ok(r)
}

/// Appends `entry` to the results file at `path` (created with its
/// directory if missing), rewriting it through a temporary file renamed
/// over it.
pub fn append(path: &Path, entry: Entry) -> Result<(), String> {
    let mut all = load(path)?;
    all.schema = SCHEMA;
    all.entries.push(entry);
    let text = serde_json::to_string_pretty(&all).map_err(|e| e.to_string())? + "\n";
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.attn-partial-{}", std::process::id()));
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Context {
        Context::collect(None, 1, 2)
    }

    #[test]
    fn entries_append_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ring.json");
        assert_eq!(load(&path).unwrap().entries.len(), 0);
        let pp = Entry::PingPong(PingPongEntry {
            context: context(),
            points: vec![
                PingPongPoint { bytes: 8, round_trips: 10, one_way_s: 1e-6, best_one_way_s: 5e-7 },
                PingPongPoint {
                    bytes: 1 << 20,
                    round_trips: 10,
                    one_way_s: 1e-4,
                    best_one_way_s: 9e-5,
                },
            ],
        });
        append(&path, pp.clone()).unwrap();
        append(&path, pp.clone()).unwrap();
        let r = load(&path).unwrap();
        assert_eq!(r.entries, vec![pp.clone(), pp]);
        let Entry::PingPong(p) = &r.entries[0] else { panic!() };
        assert_eq!(p.latency_s(), Some(1e-6));
        assert!((p.bandwidth().unwrap() - (1 << 20) as f64 / 1e-4).abs() < 1.0);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
    }

    #[test]
    fn a_broken_file_is_an_error_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ring.json");
        std::fs::write(&path, "{ not json").unwrap();
        let e =
            append(&path, Entry::PingPong(PingPongEntry { context: context(), points: vec![] }));
        assert!(e.unwrap_err().contains("not a ring results file"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json");
    }
}
