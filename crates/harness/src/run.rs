//! `attn run`: one attention call on `.npy` files, timed.
//!
//! Reads Q, K, V (float32 or float16, C order, all the same dtype), checks
//! everything, runs `--warmup` untimed and `--reps` timed calls of the chosen
//! kernel on a rayon pool of `--threads` workers, prints `time_ms=<float>`
//! per timed call (the protocol of `shared/peers`), and only then writes O
//! (float32, the input layout) and optionally the LSE (float32
//! `[B, Hq, Nq]`). Any error is one line on stderr naming the file and the
//! problem, exit status 2, and no output file is left behind.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use attnlab::{
    AttnError, AttnInputs, AttnParams, AttnShape, Element, Kernel, Layout, Mask, Par, TensorView,
    TensorViewMut, f16, kernel::validate_call,
};
use clap::builder::{PossibleValuesParser, TypedValueParser};

use crate::npy::{self, FileError, NpyArray, NpyData, shape_str};

/// Memory layout of the `.npy` tensors (`--layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LayoutArg {
    /// `[B, H, N, D]`: Q `[B, Hq, Nq, d]`, K/V `[B, Hkv, Nk, d|dv]`.
    #[default]
    Bhnd,
    /// `[B, N, H, D]`: Q `[B, Nq, Hq, d]`, K/V `[B, Nk, Hkv, d|dv]`.
    Bnhd,
}

impl LayoutArg {
    /// The attn-core layout.
    pub fn layout(self) -> Layout {
        match self {
            LayoutArg::Bhnd => Layout::Bhnd,
            LayoutArg::Bnhd => Layout::Bnhd,
        }
    }
    fn name(self) -> &'static str {
        match self {
            LayoutArg::Bhnd => "bhnd",
            LayoutArg::Bnhd => "bnhd",
        }
    }
}

/// A sliding window `--window LEFT,RIGHT`; `None` = unbounded side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Keys visible before the diagonal.
    pub left: Option<usize>,
    /// Keys visible after the diagonal.
    pub right: Option<usize>,
}

/// Parses `LEFT,RIGHT`, each side a count or `inf`/`-1` (unbounded).
pub fn parse_window(s: &str) -> Result<Window, String> {
    let (l, r) = s
        .split_once(',')
        .ok_or_else(|| format!("expected LEFT,RIGHT (e.g. 128,0 or inf,0), got '{s}'"))?;
    let side = |v: &str, which: &str| -> Result<Option<usize>, String> {
        match v.trim() {
            "inf" | "-1" => Ok(None),
            t => t.parse::<usize>().map(Some).map_err(|_| {
                format!("{which} side '{t}' of '{s}' is not a key count, 'inf' or -1")
            }),
        }
    };
    Ok(Window { left: side(l, "left")?, right: side(r, "right")? })
}

fn parse_01(s: &str) -> Result<bool, String> {
    match s {
        "0" | "false" => Ok(false),
        "1" | "true" => Ok(true),
        _ => Err(format!("expected 0 or 1, got '{s}'")),
    }
}

fn kernel_parser() -> impl TypedValueParser<Value = Kernel> {
    PossibleValuesParser::new(Kernel::ALL.map(|k| k.name()))
        .map(|s| s.parse::<Kernel>().expect("possible values are kernel names"))
}

/// `attn run` flags.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = RUN_AFTER_HELP)]
pub struct RunArgs {
    /// Queries: `[B, Hq, Nq, d]` (bhnd) or `[B, Nq, Hq, d]` (bnhd); float32 or
    /// float16, C order
    #[arg(long, value_name = "Q.npy")]
    pub q: PathBuf,
    /// Keys: `[B, Hkv, Nk, d]` (bhnd) or `[B, Nk, Hkv, d]` (bnhd); Hq must be a
    /// multiple of Hkv (MHA, GQA, MQA)
    #[arg(long, value_name = "K.npy")]
    pub k: PathBuf,
    /// Values: `[B, Hkv, Nk, dv]` (bhnd) or `[B, Nk, Hkv, dv]` (bnhd)
    #[arg(long, value_name = "V.npy")]
    pub v: PathBuf,
    /// Output O, written as float32 in the input layout: `[B, Hq, Nq, dv]`
    /// (bhnd) or `[B, Nq, Hq, dv]` (bnhd)
    #[arg(long, value_name = "O.npy")]
    pub out: PathBuf,
    /// Also write the natural-log log-sum-exp of each row's scaled scores,
    /// float32 `[B, Hq, Nq]` in any layout (-inf for fully masked rows)
    #[arg(long, value_name = "LSE.npy")]
    pub lse: Option<PathBuf>,
    /// Kernel: `oracle` (f64, scalar), `naive` (O(N²) two-GEMM) or `flash`
    /// (tiled online softmax)
    #[arg(long, default_value = "flash", value_parser = kernel_parser())]
    pub kernel: Kernel,
    /// Bottom-right causal mask: query i sees keys j <= i + Nk - Nq
    #[arg(long, value_name = "0|1", default_value = "0", value_parser = parse_01,
          action = clap::ArgAction::Set)]
    pub causal: bool,
    /// Sliding window around the bottom-right diagonal: query i sees keys
    /// i+Nk-Nq-LEFT ..= i+Nk-Nq+RIGHT. Each side is a key count or `inf` / -1
    /// for unbounded (FlashAttention's convention). Not with --causal 1,
    /// which is --window inf,0
    #[arg(long, value_name = "LEFT,RIGHT", value_parser = parse_window, allow_hyphen_values = true)]
    pub window: Option<Window>,
    /// Softmax scale [default: 1/sqrt(d)]
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub scale: Option<f32>,
    /// Memory layout of Q, K, V and O
    #[arg(long, value_enum, default_value_t = LayoutArg::Bhnd)]
    pub layout: LayoutArg,
    /// Worker threads: the kernel runs on a rayon pool of this size
    /// [default: all cores]
    #[arg(long, value_name = "N")]
    pub threads: Option<NonZeroUsize>,
    /// Untimed kernel calls before the timed ones
    #[arg(long, value_name = "W", default_value_t = 0)]
    pub warmup: u32,
    /// Timed kernel calls; each prints one line `time_ms=<float>`
    #[arg(long, value_name = "R", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: u32,
    /// Do not reject NaN/inf in Q, K, V (the check is an O(size) scan inside
    /// every kernel call; benchmarks may skip it)
    #[arg(long)]
    pub no_check_finite: bool,
}

const RUN_AFTER_HELP: &str = "\
Output: one line `time_ms=<float>` on stdout per timed call, timing the kernel
call alone (no file I/O, no output allocation). The files are written after
the last call.

Exit status: 0 on success; 2 on any error (bad flag, missing or unreadable
file, not a .npy, dtype other than float32/float16, Fortran order, rank other
than 4, mixed dtypes, shapes that do not fit together, non-finite input,
unsupported kernel, failed write). The error is one line on stderr naming the
file and the problem, and no output file is left behind.

Example:
  attn run --q q.npy --k k.npy --v v.npy --out o.npy --lse lse.npy \\
           --kernel naive --causal 1 --threads 2 --warmup 1 --reps 5";

/// Why `attn run` failed. Every variant prints as one line.
#[derive(Debug)]
pub enum RunError {
    /// A problem with one input or output file.
    File(FileError),
    /// A problem with the flags.
    Args(String),
    /// An error from the kernel that concerns no single file (e.g. a kernel
    /// that is not available).
    Kernel(Kernel, AttnError),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::File(e) => e.fmt(f),
            RunError::Args(s) => f.write_str(s),
            RunError::Kernel(k, e) => write!(f, "kernel {k}: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

impl From<FileError> for RunError {
    fn from(e: FileError) -> Self {
        RunError::File(e)
    }
}

/// Entry point of `attn run`: prints the error and returns exit status 2 on
/// failure.
pub fn run_main(args: &RunArgs) -> ExitCode {
    let mut stdout = io::stdout();
    match run(args, &mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attn run: {e}");
            ExitCode::from(2)
        }
    }
}

/// The parameters the flags ask for.
pub fn params_of(args: &RunArgs) -> Result<AttnParams, RunError> {
    let mask = match (args.causal, args.window) {
        (true, Some(_)) => {
            return Err(RunError::Args(
                "--causal 1 and --window cannot be combined (causal is --window inf,0)".into(),
            ));
        }
        (true, None) => Mask::Causal,
        (false, Some(w)) => Mask::Window { left: w.left, right: w.right },
        (false, None) => Mask::None,
    };
    let params = AttnParams { scale: args.scale, mask, check_finite: !args.no_check_finite };
    params.validate().map_err(|e| RunError::Args(format!("--{e}")))?;
    Ok(params)
}

/// The files of one run, for naming them in errors.
struct Files<'a> {
    args: &'a RunArgs,
    /// Memory-order shapes of q, k, v, once read.
    shapes: [Vec<usize>; 3],
}

impl Files<'_> {
    fn path_of(&self, tensor: &str) -> &Path {
        match tensor {
            "k" | "kv_heads" => &self.args.k,
            "v" | "v_dim" => &self.args.v,
            "out" => &self.args.out,
            "lse" => self.args.lse.as_deref().unwrap_or(&self.args.out),
            // "q", "scores", and the dims that come from Q
            _ => &self.args.q,
        }
    }

    fn shapes_note(&self) -> String {
        let [q, k, v] = &self.shapes;
        format!(
            "(q {}, k {}, v {}, layout {})",
            shape_str(q),
            shape_str(k),
            shape_str(v),
            self.args.layout.name()
        )
    }

    /// An attn-core error, prefixed with the file it is about.
    fn attn_error(&self, e: AttnError) -> RunError {
        let file = |tensor: &str, problem: String| {
            RunError::File(FileError::new(self.path_of(tensor), problem))
        };
        match e {
            AttnError::NonFinite { tensor, index, value } => {
                let shape = &self.shapes[match tensor {
                    "k" => 1,
                    "v" => 2,
                    _ => 0,
                }];
                file(
                    tensor,
                    format!(
                        "non-finite value {value} at index {} (flat index {index}); \
                         pass --no-check-finite to skip this check",
                        shape_str(&unravel(index, shape))
                    ),
                )
            }
            AttnError::Dim { tensor, .. } => file(tensor, format!("{e} {}", self.shapes_note())),
            AttnError::BufferLen { tensor, .. } | AttnError::Overflow { tensor } => {
                file(tensor, e.to_string())
            }
            AttnError::HeadsNotDivisible { .. } => file("k", format!("{e} {}", self.shapes_note())),
            AttnError::ZeroDim { dim } => file(dim, format!("{e} {}", self.shapes_note())),
            AttnError::Param { .. } | AttnError::Unsupported { .. } => {
                RunError::Kernel(self.args.kernel, e)
            }
        }
    }
}

/// The multi-index of flat `index` in a C-order array of `shape`.
fn unravel(mut index: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = index % d;
            index /= d;
        }
    }
    idx
}

/// The output directory of `path` must exist (checked before any work).
fn check_output_path(path: &Path) -> Result<(), RunError> {
    if path.file_name().is_none() {
        return Err(FileError::new(path, "output path does not name a file").into());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        let problem = format!("output directory {} does not exist", dir.display());
        return Err(FileError::new(path, problem).into());
    }
    if path.is_dir() {
        return Err(FileError::new(path, "output path is a directory").into());
    }
    Ok(())
}

/// Reads one input and checks that it is 4-d.
fn read_input(path: &Path, dims: &str, layout: LayoutArg) -> Result<NpyArray, RunError> {
    let a = npy::read(path)?;
    if a.shape.len() != 4 {
        let problem = format!(
            "expected a 4-d array {dims} (layout {}), got {}-d shape {}",
            layout.name(),
            a.shape.len(),
            shape_str(&a.shape)
        );
        return Err(FileError::new(path, problem).into());
    }
    Ok(a)
}

fn dims4(shape: &[usize]) -> [usize; 4] {
    [shape[0], shape[1], shape[2], shape[3]]
}

/// Everything `attn run` does; timings go to `timings`.
pub fn run(args: &RunArgs, timings: &mut (dyn Write + Send)) -> Result<(), RunError> {
    let params = params_of(args)?;
    check_output_path(&args.out)?;
    if let Some(lse) = &args.lse {
        check_output_path(lse)?;
        if *lse == args.out {
            return Err(FileError::new(lse, "--lse and --out name the same file").into());
        }
    }

    let (qd, kd, vd) = match args.layout {
        LayoutArg::Bhnd => ("[B, Hq, Nq, d]", "[B, Hkv, Nk, d]", "[B, Hkv, Nk, dv]"),
        LayoutArg::Bnhd => ("[B, Nq, Hq, d]", "[B, Nk, Hkv, d]", "[B, Nk, Hkv, dv]"),
    };
    let q = read_input(&args.q, qd, args.layout)?;
    let k = read_input(&args.k, kd, args.layout)?;
    let v = read_input(&args.v, vd, args.layout)?;
    for (path, a) in [(&args.k, &k), (&args.v, &v)] {
        if a.dtype() != q.dtype() {
            let problem = format!(
                "dtype {} does not match q's {} (q, k and v must share one dtype)",
                a.dtype().numpy_name(),
                q.dtype().numpy_name()
            );
            return Err(FileError::new(path, problem).into());
        }
    }
    let files = Files { args, shapes: [q.shape.clone(), k.shape.clone(), v.shape.clone()] };

    let layout = args.layout.layout();
    let dims = [&q, &k, &v].map(|a| layout.logical_dims(dims4(&a.shape)));
    let [[b, hq, nq, d], [_, hkv, nk, _], [.., dv]] = dims;
    let shape = AttnShape::new(b, hq, hkv, nq, nk, d, dv).map_err(|e| files.attn_error(e))?;

    let threads = match args.threads {
        Some(n) => n.get(),
        None => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| RunError::Args(format!("cannot start {threads} threads: {e}")))?;

    let mut out = vec![0f32; shape.out_dims().iter().product()];
    let mut lse = args.lse.as_ref().map(|_| vec![0f32; shape.lse_len()]);
    let call = Call {
        kernel: args.kernel,
        shape,
        dims,
        layout,
        params,
        par: Par::Rayon(threads),
        warmup: args.warmup,
        reps: args.reps,
    };
    pool.install(|| match (&q.data, &k.data, &v.data) {
        (NpyData::F32(q), NpyData::F32(k), NpyData::F32(v)) => {
            call.timed::<f32>(&files, q, k, v, &mut out, lse.as_deref_mut(), timings)
        }
        (NpyData::F16(q), NpyData::F16(k), NpyData::F16(v)) => {
            call.timed::<f16>(&files, q, k, v, &mut out, lse.as_deref_mut(), timings)
        }
        _ => unreachable!("dtypes were checked to match"),
    })?;
    // The inputs are no longer needed: free them before writing.
    drop((q, k, v));

    let out_shape = layout.memory_dims(shape.out_dims());
    let lse_shape = [shape.batch(), shape.q_heads(), shape.q_len()];
    let mut writes: Vec<(&Path, &[usize], &[f32])> = vec![(&args.out, &out_shape, &out)];
    if let (Some(path), Some(lse)) = (&args.lse, &lse) {
        writes.push((path, &lse_shape, lse));
    }
    write_all_or_none(&writes)
}

/// One configured kernel call, repeated.
struct Call {
    kernel: Kernel,
    shape: AttnShape,
    /// Logical dims of q, k, v as read (checked against `shape`).
    dims: [[usize; 4]; 3],
    layout: Layout,
    params: AttnParams,
    par: Par,
    warmup: u32,
    reps: u32,
}

impl Call {
    /// Validates, then runs `warmup` untimed and `reps` timed calls,
    /// printing `time_ms=` per timed call.
    #[allow(clippy::too_many_arguments)]
    fn timed<T: Element>(
        &self,
        files: &Files<'_>,
        q: &[T],
        k: &[T],
        v: &[T],
        out: &mut [f32],
        mut lse: Option<&mut [f32]>,
        timings: &mut (dyn Write + Send),
    ) -> Result<(), RunError> {
        let err = |e| files.attn_error(e);
        let [qd, kd, vd] = self.dims;
        let inputs = AttnInputs::new(
            self.shape,
            TensorView::new("q", q, qd, self.layout).map_err(err)?,
            TensorView::new("k", k, kd, self.layout).map_err(err)?,
            TensorView::new("v", v, vd, self.layout).map_err(err)?,
        )
        .map_err(err)?;
        let mut view =
            TensorViewMut::new("out", out, self.shape.out_dims(), self.layout).map_err(err)?;
        // Everything about the call is checked once before any timing, so a
        // bad input fails before the first `time_ms=` line.
        validate_call(&inputs, &view, lse.as_deref(), &self.params).map_err(err)?;
        for i in 0..self.warmup + self.reps {
            let start = Instant::now();
            self.kernel
                .forward(&inputs, &mut view, lse.as_deref_mut(), &self.params, self.par)
                .map_err(err)?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            if i >= self.warmup {
                writeln!(timings, "time_ms={ms:.6}")
                    .and_then(|()| timings.flush())
                    .map_err(|e| RunError::Args(format!("cannot write to stdout: {e}")))?;
            }
        }
        Ok(())
    }
}

/// A temporary name beside `path` for writing it.
fn partial_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// Writes every file or, on any failure, none: each goes to a temporary
/// name first and is renamed once all are written.
fn write_all_or_none(writes: &[(&Path, &[usize], &[f32])]) -> Result<(), RunError> {
    let temps: Vec<PathBuf> = writes.iter().map(|(p, _, _)| partial_path(p)).collect();
    let cleanup = |renamed: &[&Path]| {
        for t in &temps {
            let _ = fs::remove_file(t);
        }
        for p in renamed {
            let _ = fs::remove_file(p);
        }
    };
    for ((path, shape, data), tmp) in writes.iter().zip(&temps) {
        if let Err(e) = npy::write_f32(tmp, shape, data) {
            cleanup(&[]);
            return Err(FileError::new(path, format!("cannot write: {e}")).into());
        }
    }
    let mut renamed = Vec::with_capacity(writes.len());
    for ((path, _, _), tmp) in writes.iter().zip(&temps) {
        if let Err(e) = fs::rename(tmp, path) {
            cleanup(&renamed);
            return Err(FileError::new(path, format!("cannot write: {e}")).into());
        }
        renamed.push(*path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        let w = |l, r| Window { left: l, right: r };
        assert_eq!(parse_window("3,0"), Ok(w(Some(3), Some(0))));
        assert_eq!(parse_window("inf,2"), Ok(w(None, Some(2))));
        assert_eq!(parse_window("-1, -1"), Ok(w(None, None)));
        assert!(parse_window("3").unwrap_err().contains("LEFT,RIGHT"));
        assert!(parse_window("3,x").unwrap_err().contains("right side 'x'"));
        assert!(parse_window("-2,0").unwrap_err().contains("left side '-2'"));
    }

    #[test]
    fn unravel_is_c_order() {
        assert_eq!(unravel(0, &[2, 3, 4]), vec![0, 0, 0]);
        assert_eq!(unravel(23, &[2, 3, 4]), vec![1, 2, 3]);
        assert_eq!(unravel(13, &[2, 3, 4]), vec![1, 0, 1]);
    }
}
