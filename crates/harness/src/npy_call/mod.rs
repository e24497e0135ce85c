//! What `attn run` does: one attention call on `.npy` files, timed.
//!
//! Reads Q, K, V (float32 or float16, C order, all the same dtype;
//! [`npy`]), checks everything, runs `warmup` untimed and `reps` timed
//! calls of the chosen kernel on a rayon pool of `threads` workers, prints
//! `time_ms=<float>` per timed call (the protocol of `shared/peers`), and
//! only then writes O (float32, the input layout) and optionally the LSE
//! (float32 `[B, Hq, Nq]`) and the saturation statistics (an `.npz` of
//! `max_p`, `entropy`, `support`, float32 `[B, Hq, Nq]` each; [`npz`]).
//! Any error is one [`RunError`] naming the file and the problem, and no
//! output file is left behind. Score modifiers (softcap, ALiBi, sinks,
//! bias) come from flags and files ([`mods`]).

pub mod grad;
pub mod mods;
pub mod npy;
pub mod npz;
pub mod outputs;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use attnlab::{
    AttnError, AttnInputs, AttnParams, AttnShape, CheckedCall, Element, Kernel, Layout, Par,
    StatsMut, TensorView, TensorViewMut, f16, kernel::check_outputs,
};

use crate::config::ModData;
pub use mods::ModFiles;
use mods::ReadMods;
use npy::{FileError, NpyArray, NpyData, shape_str};

/// One `attn run`: the files, the kernel and how to call it.
#[derive(Debug, Clone)]
pub struct RunSpec {
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
    /// Output saturation statistics (`.npz`), if wanted.
    pub stats: Option<PathBuf>,
    /// The kernel.
    pub kernel: Kernel,
    /// Scale, mask, finiteness check (validated).
    pub params: AttnParams<'static>,
    /// Score modifiers (the softcap validated; files read by the run).
    pub mods: ModFiles,
    /// Memory layout of Q, K, V and O.
    pub layout: Layout,
    /// Workers of the rayon pool.
    pub threads: usize,
    /// Untimed calls first.
    pub warmup: u32,
    /// Timed calls.
    pub reps: u32,
}

/// "bhnd" or "bnhd", as `--layout` spells it.
pub fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Bhnd => "bhnd",
        Layout::Bnhd => "bnhd",
    }
}

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

/// The files of one run, for naming them in errors.
struct Files<'a> {
    /// Each tensor's name as attnlab's errors spell it ("q", "out",
    /// "d_out", …), and its file; "q" first.
    paths: Vec<(&'static str, &'a Path)>,
    layout: Layout,
    kernel: Kernel,
    /// Memory-order shapes of q, k, v (and d_out for `attn grad`), once read.
    shapes: Vec<Vec<usize>>,
    /// The bias file's shape, once read (empty without one).
    bias_shape: Vec<usize>,
}

impl<'a> Files<'a> {
    fn of_run(spec: &'a RunSpec, shapes: Vec<Vec<usize>>) -> Self {
        let mut paths = vec![("q", spec.q.as_path()), ("k", &spec.k), ("v", &spec.v)];
        paths.push(("out", &spec.out));
        paths.push(("lse", spec.lse.as_deref().unwrap_or(&spec.out)));
        if let Some(p) = &spec.stats {
            for name in ["max_p", "entropy"] {
                paths.push((name, p));
            }
        }
        Files::with_mods(paths, &spec.mods, spec.layout, spec.kernel, shapes)
    }

    /// `paths` and the modifiers' files (as "bias", "sinks", "alibi
    /// slopes", the names of attnlab's errors).
    fn with_mods(
        mut paths: Vec<(&'static str, &'a Path)>,
        mods: &'a ModFiles,
        layout: Layout,
        kernel: Kernel,
        shapes: Vec<Vec<usize>>,
    ) -> Self {
        for (name, p) in [("alibi slopes", &mods.alibi_slopes), ("sinks", &mods.sinks)] {
            if let Some(p) = p {
                paths.push((name, p));
            }
        }
        if let Some(p) = &mods.bias {
            paths.push(("bias", p));
        }
        Files { paths, layout, kernel, shapes, bias_shape: Vec::new() }
    }

    /// Reads the modifiers' files against `shape` (see [`mods`]).
    fn read_mods(&mut self, mods: &ModFiles, shape: &AttnShape) -> Result<ModData, RunError> {
        let ReadMods { data, bias_shape } = mods.read(shape)?;
        self.bias_shape = bias_shape;
        Ok(data)
    }

    fn path_of(&self, tensor: &str) -> &Path {
        let tensor = match tensor {
            "kv_heads" => "k",
            "v_dim" => "v",
            t => t,
        };
        // "q", "scores", and the dims that come from Q: the q file
        self.paths.iter().find(|(t, _)| *t == tensor).unwrap_or(&self.paths[0]).1
    }

    fn shapes_note(&self) -> String {
        let (q, k, v) = (&self.shapes[0], &self.shapes[1], &self.shapes[2]);
        let d_out = match self.shapes.get(3) {
            Some(s) => format!(", do {}", shape_str(s)),
            None => String::new(),
        };
        format!(
            "(q {}, k {}, v {}{d_out}, layout {})",
            shape_str(q),
            shape_str(k),
            shape_str(v),
            layout_name(self.layout)
        )
    }

    /// An attnlab error, prefixed with the file it is about.
    fn attn_error(&self, e: AttnError) -> RunError {
        let file = |tensor: &str, problem: String| {
            RunError::File(FileError::new(self.path_of(tensor), problem))
        };
        match e {
            AttnError::NonFinite { tensor, index, value } => {
                let shape = match tensor {
                    "bias" => &self.bias_shape,
                    "k" => &self.shapes[1],
                    "v" => &self.shapes[2],
                    "d_out" if self.shapes.len() > 3 => &self.shapes[3],
                    _ => &self.shapes[0],
                };
                file(
                    tensor,
                    format!(
                        "non-finite value {value} at index {} (flat index {index}); \
                         pass --no-check-finite to let it propagate as IEEE arithmetic does",
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
            AttnError::Param { .. }
            | AttnError::Unsupported { .. }
            | AttnError::OutOfMemory { .. }
            | AttnError::ScoreOverflow { .. } => RunError::Kernel(self.kernel, e),
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

/// Reads one input and checks that it is 4-d.
fn read_input(path: &Path, dims: &str, layout: Layout) -> Result<NpyArray, RunError> {
    let a = npy::read(path)?;
    if a.shape.len() != 4 {
        let problem = format!(
            "expected a 4-d array {dims} (layout {}), got {}-d shape {}",
            layout_name(layout),
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

/// Reads Q, K, V (`paths`, in that order) and checks that each is 4-d and
/// that they share one dtype.
fn read_qkv(paths: [&Path; 3], layout: Layout) -> Result<[NpyArray; 3], RunError> {
    let (qd, kd, vd) = match layout {
        Layout::Bhnd => ("[B, Hq, Nq, d]", "[B, Hkv, Nk, d]", "[B, Hkv, Nk, dv]"),
        Layout::Bnhd => ("[B, Nq, Hq, d]", "[B, Nk, Hkv, d]", "[B, Nk, Hkv, dv]"),
    };
    let q = read_input(paths[0], qd, layout)?;
    let k = read_input(paths[1], kd, layout)?;
    let v = read_input(paths[2], vd, layout)?;
    for (path, a) in [(paths[1], &k), (paths[2], &v)] {
        if a.dtype() != q.dtype() {
            let problem = format!(
                "dtype {} does not match q's {} (q, k and v must share one dtype)",
                a.dtype().numpy_name(),
                q.dtype().numpy_name()
            );
            return Err(FileError::new(path, problem).into());
        }
    }
    Ok([q, k, v])
}

/// The problem's shape from the arrays Q, K, V, and their logical dims.
fn shape_of(
    [q, k, v]: [&NpyArray; 3],
    layout: Layout,
    files: &Files<'_>,
) -> Result<(AttnShape, [[usize; 4]; 3]), RunError> {
    let dims = [q, k, v].map(|a| layout.logical_dims(dims4(&a.shape)));
    let [[b, hq, nq, d], [_, hkv, nk, _], [.., dv]] = dims;
    let shape = AttnShape::builder()
        .batch(b)
        .q_heads(hq)
        .kv_heads(hkv)
        .q_len(nq)
        .kv_len(nk)
        .head_dim(d)
        .v_dim(dv)
        .build()
        .map_err(|e| files.attn_error(e))?;
    Ok((shape, dims))
}

/// Everything `attn run` does; timings go to `timings`.
pub fn run(spec: &RunSpec, timings: &mut (dyn Write + Send)) -> Result<(), RunError> {
    // Outputs first: aliases refused and directories proven writable
    // before anything is read or computed (see `outputs`).
    let mut targets = vec![("--out", spec.out.as_path())];
    if let Some(lse) = &spec.lse {
        targets.push(("--lse", lse.as_path()));
    }
    let stats_at = targets.len();
    if let Some(stats) = &spec.stats {
        targets.push(("--stats", stats.as_path()));
    }
    let mut inputs =
        vec![("--q", spec.q.as_path()), ("--k", spec.k.as_path()), ("--v", spec.v.as_path())];
    inputs.extend(spec.mods.inputs());
    let outputs = outputs::Outputs::prepare(&targets, &inputs)?;

    let [q, k, v] = read_qkv([&spec.q, &spec.k, &spec.v], spec.layout)?;
    let mut files = Files::of_run(spec, vec![q.shape.clone(), k.shape.clone(), v.shape.clone()]);
    let layout = spec.layout;
    let (shape, dims) = shape_of([&q, &k, &v], layout, &files)?;
    let mods = files.read_mods(&spec.mods, &shape)?;

    let threads = spec.threads;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| RunError::Args(format!("cannot start {threads} threads: {e}")))?;

    let mut out = attnlab::error::try_zeroed::<f32>("out", shape.out_dims().iter().product())
        .map_err(|e| files.attn_error(e))?;
    let mut lse = match spec.lse {
        Some(_) => Some(
            attnlab::error::try_zeroed::<f32>("lse", shape.lse_len())
                .map_err(|e| files.attn_error(e))?,
        ),
        None => None,
    };
    let rows = shape.lse_len();
    let mut stats = match spec.stats {
        Some(_) => {
            let alloc = |name| attnlab::error::try_zeroed::<f32>(name, rows);
            let (p, h) = (alloc("max_p"), alloc("entropy"));
            Some((p.map_err(|e| files.attn_error(e))?, h.map_err(|e| files.attn_error(e))?))
        }
        None => None,
    };
    let call = Call {
        kernel: spec.kernel,
        shape,
        dims,
        layout,
        params: spec.params,
        mods,
        par: Par::rayon(threads).map_err(|e| RunError::Args(format!("--threads: {e}")))?,
        warmup: spec.warmup,
        reps: spec.reps,
    };
    let st = stats.as_mut().map(|(p, h)| StatsMut { max_p: p, entropy: h });
    let outs = (&mut out[..], lse.as_deref_mut(), st);
    pool.install(|| match (&q.data, &k.data, &v.data) {
        (NpyData::F32(q), NpyData::F32(k), NpyData::F32(v)) => {
            call.timed::<f32>(&files, q, k, v, outs, timings)
        }
        (NpyData::F16(q), NpyData::F16(k), NpyData::F16(v)) => {
            call.timed::<f16>(&files, q, k, v, outs, timings)
        }
        _ => unreachable!("dtypes were checked to match"),
    })?;
    // The inputs are no longer needed: free them before writing.
    drop((q, k, v, call));

    let out_shape = layout.memory_dims(shape.out_dims());
    let rows_shape = [shape.batch(), shape.q_heads(), shape.q_len()];
    outputs.write(0, &out_shape, &out)?;
    if let Some(lse) = &lse {
        outputs.write(1, &rows_shape, lse)?;
    }
    if let Some((max_p, entropy)) = &stats {
        let support: Vec<f32> = entropy.iter().map(|h| h.exp()).collect();
        let arrays: [(&str, &[usize], &[f32]); 3] = [
            ("max_p", &rows_shape, max_p),
            ("entropy", &rows_shape, entropy),
            ("support", &rows_shape, &support),
        ];
        outputs.write_npz(stats_at, &arrays)?;
    }
    Ok(outputs.commit()?)
}

/// One configured kernel call, repeated.
struct Call {
    kernel: Kernel,
    shape: AttnShape,
    /// Logical dims of q, k, v as read (checked against `shape`).
    dims: [[usize; 4]; 3],
    layout: Layout,
    /// Scale, mask, finiteness check; the modifiers are `mods`'.
    params: AttnParams<'static>,
    mods: ModData,
    par: Par,
    warmup: u32,
    reps: u32,
}

impl Call {
    /// Validates, then runs `warmup` untimed and `reps` timed calls
    /// (each with the statistics when `stats` is given), printing
    /// `time_ms=` per timed call.
    fn timed<T: Element>(
        &self,
        files: &Files<'_>,
        q: &[T],
        k: &[T],
        v: &[T],
        (out, mut lse, mut stats): (&mut [f32], Option<&mut [f32]>, Option<StatsMut<'_>>),
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
        // Sizes and parameters are checked before any timing; a non-finite
        // input a row reads fails the first (warm-up or timed) call, before
        // its `time_ms=` line.
        check_outputs(&self.shape, &view, lse.as_deref()).map_err(err)?;
        let params = self.mods.params(&self.params).map_err(err)?;
        params.validate_for(&self.shape).map_err(err)?;
        if let Some(st) = &stats {
            st.check(&self.shape).map_err(err)?;
        }
        for i in 0..self.warmup + self.reps {
            let start = Instant::now();
            match stats.as_mut() {
                None => {
                    self.kernel.forward(&inputs, &mut view, lse.as_deref_mut(), &params, self.par)
                }
                Some(st) => {
                    let st = StatsMut { max_p: &mut *st.max_p, entropy: &mut *st.entropy };
                    let call =
                        CheckedCall::new(&inputs, &mut view, lse.as_deref_mut(), &params, self.par);
                    call.and_then(|c| c.with_stats(st)).and_then(|c| self.kernel.run(c))
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unravel_is_c_order() {
        assert_eq!(unravel(0, &[2, 3, 4]), vec![0, 0, 0]);
        assert_eq!(unravel(23, &[2, 3, 4]), vec![1, 2, 3]);
        assert_eq!(unravel(13, &[2, 3, 4]), vec![1, 0, 1]);
    }
}
