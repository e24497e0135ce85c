//! What `attn grad` does: the gradients of attention on `.npy` files,
//! timed.
//!
//! Reads Q, K, V (float32 or float16, one dtype) and dO (float32 or
//! float16, the shape of O) with the same checks as `attn run`, runs the
//! forward once, untimed, for O and the LSE (the flash kernel, or the
//! oracle when the oracle is asked for), then `warmup` untimed and `reps`
//! timed backward calls of the chosen kernel, printing `time_ms=<float>`
//! per timed call; only then writes dQ, dK, dV as float32 in the input
//! layout, and the sink logits' gradient (float32 `(Hq,)`) when asked
//! for, all or nothing (see [`super::outputs`]). The score modifiers are
//! `attn run`'s ([`super::mods`]).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use attnlab::{
    AttnInputs, AttnParams, AttnShape, BackwardInputs, Element, GradsMut, Kernel, Layout, Par,
    TensorView, TensorViewMut, f16,
};

use super::npy::NpyData;
use super::{Files, ModFiles, RunError, dims4, read_input, read_qkv, shape_of};
use crate::config::ModData;

/// One `attn grad`: the files, the kernel and how to call it.
#[derive(Debug, Clone)]
pub struct GradSpec {
    /// Queries, keys, values.
    pub q: PathBuf,
    /// Keys.
    pub k: PathBuf,
    /// Values.
    pub v: PathBuf,
    /// Upstream gradient dO (shape of O).
    pub d_out: PathBuf,
    /// Outputs dQ, dK, dV.
    pub dq: PathBuf,
    /// Output dK.
    pub dk: PathBuf,
    /// Output dV.
    pub dv: PathBuf,
    /// Output dsinks, the gradient of the sink logits (needs `mods.sinks`).
    pub dsinks: Option<PathBuf>,
    /// The backward kernel.
    pub kernel: Kernel,
    /// Scale, mask, finiteness check (validated).
    pub params: AttnParams<'static>,
    /// Score modifiers (the softcap validated; files read by the call).
    pub mods: ModFiles,
    /// Memory layout of every tensor.
    pub layout: Layout,
    /// Workers of the rayon pool.
    pub threads: usize,
    /// Untimed backward calls first.
    pub warmup: u32,
    /// Timed backward calls.
    pub reps: u32,
}

impl GradSpec {
    fn files(&self, shapes: Vec<Vec<usize>>) -> Files<'_> {
        let mut paths = vec![
            ("q", self.q.as_path()),
            ("k", &self.k),
            ("v", &self.v),
            ("d_out", &self.d_out),
            ("dq", &self.dq),
            ("dk", &self.dk),
            ("dv", &self.dv),
        ];
        if let Some(p) = &self.dsinks {
            paths.push(("dsinks", p));
        }
        Files::with_mods(paths, &self.mods, self.layout, self.kernel, shapes)
    }
}

/// Everything `attn grad` does; timings go to `timings`.
pub fn grad(spec: &GradSpec, timings: &mut (dyn Write + Send)) -> Result<(), RunError> {
    if spec.dsinks.is_some() && spec.mods.sinks.is_none() {
        return Err(RunError::Args(
            "--dsinks needs --sinks (the sink logits it is the gradient of)".into(),
        ));
    }
    let mut targets = vec![("--dq", spec.dq.as_path()), ("--dk", &spec.dk), ("--dv", &spec.dv)];
    if let Some(p) = &spec.dsinks {
        targets.push(("--dsinks", p));
    }
    let mut inputs =
        vec![("--q", spec.q.as_path()), ("--k", &spec.k), ("--v", &spec.v), ("--do", &spec.d_out)];
    inputs.extend(spec.mods.inputs());
    let outputs = super::outputs::Outputs::prepare(&targets, &inputs)?;

    let layout = spec.layout;
    let [q, k, v] = read_qkv([&spec.q, &spec.k, &spec.v], layout)?;
    let do_dims = match layout {
        Layout::Bhnd => "[B, Hq, Nq, dv]",
        Layout::Bnhd => "[B, Nq, Hq, dv]",
    };
    let d_out = read_input(&spec.d_out, do_dims, layout)?;
    let shapes = vec![q.shape.clone(), k.shape.clone(), v.shape.clone(), d_out.shape.clone()];
    let mut files = spec.files(shapes);
    let (shape, dims) = shape_of([&q, &k, &v], layout, &files)?;
    let mods = files.read_mods(&spec.mods, &shape)?;
    let do_logical = layout.logical_dims(dims4(&d_out.shape));
    let d_out: Vec<f32> = match d_out.data {
        NpyData::F32(x) => x,
        NpyData::F16(x) => x.iter().map(|h| h.to_f32()).collect(),
    };

    let threads = spec.threads;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| RunError::Args(format!("cannot start {threads} threads: {e}")))?;
    let err = |e| files.attn_error(e);
    let n = |d: [usize; 4]| d.iter().product::<usize>();
    let zeros = |t, len| attnlab::error::try_zeroed::<f32>(t, len).map_err(err);
    let mut out = zeros("out", n(shape.out_dims()))?;
    let mut lse = zeros("lse", shape.lse_len())?;
    let mut g = [
        zeros("dq", n(shape.q_dims()))?,
        zeros("dk", n(shape.k_dims()))?,
        zeros("dv", n(shape.v_dims()))?,
    ];
    let mut dsinks = match spec.dsinks {
        Some(_) => Some(zeros("dsinks", shape.q_heads())?),
        None => None,
    };
    let call = GradCall {
        kernel: spec.kernel,
        shape,
        dims,
        do_dims: do_logical,
        layout,
        params: spec.params,
        mods,
        par: Par::rayon(threads).map_err(|e| RunError::Args(format!("--threads: {e}")))?,
        warmup: spec.warmup,
        reps: spec.reps,
    };
    let ds = dsinks.as_deref_mut();
    pool.install(|| match (&q.data, &k.data, &v.data) {
        (NpyData::F32(q), NpyData::F32(k), NpyData::F32(v)) => call.timed::<f32>(
            &files,
            [q, k, v],
            &d_out,
            (&mut out, &mut lse),
            (&mut g, ds),
            timings,
        ),
        (NpyData::F16(q), NpyData::F16(k), NpyData::F16(v)) => call.timed::<f16>(
            &files,
            [q, k, v],
            &d_out,
            (&mut out, &mut lse),
            (&mut g, ds),
            timings,
        ),
        _ => unreachable!("dtypes were checked to match"),
    })?;
    drop((q, k, v, d_out, out, lse, call));

    let mem = [shape.q_dims(), shape.k_dims(), shape.v_dims()].map(|d| layout.memory_dims(d));
    for (i, (dims, data)) in mem.iter().zip(&g).enumerate() {
        outputs.write(i, dims, data)?;
    }
    if let Some(ds) = &dsinks {
        outputs.write(3, &[shape.q_heads()], ds)?;
    }
    Ok(outputs.commit()?)
}

/// One configured backward call, repeated.
struct GradCall {
    kernel: Kernel,
    shape: AttnShape,
    /// Logical dims of q, k, v and of dO as read.
    dims: [[usize; 4]; 3],
    do_dims: [usize; 4],
    layout: Layout,
    /// Scale, mask, finiteness check; the modifiers are `mods`'.
    params: AttnParams<'static>,
    mods: ModData,
    par: Par,
    warmup: u32,
    reps: u32,
}

impl GradCall {
    /// The forward once (untimed), then `warmup` untimed and `reps` timed
    /// backward calls, printing `time_ms=` per timed call; `dsinks`, when
    /// given, receives the sinks' gradient.
    #[allow(clippy::too_many_arguments)]
    fn timed<T: Element>(
        &self,
        files: &Files<'_>,
        [q, k, v]: [&[T]; 3],
        d_out: &[f32],
        (out, lse): (&mut [f32], &mut [f32]),
        ([dq, dk, dv], dsinks): (&mut [Vec<f32>; 3], Option<&mut [f32]>),
        timings: &mut (dyn Write + Send),
    ) -> Result<(), RunError> {
        let err = |e| files.attn_error(e);
        let params = self.mods.params(&self.params).map_err(err)?;
        let [qd, kd, vd] = self.dims;
        let l = self.layout;
        let inputs = AttnInputs::new(
            self.shape,
            TensorView::new("q", q, qd, l).map_err(err)?,
            TensorView::new("k", k, kd, l).map_err(err)?,
            TensorView::new("v", v, vd, l).map_err(err)?,
        )
        .map_err(err)?;
        let shape = *inputs.shape();
        let fwd = if self.kernel == Kernel::Oracle { Kernel::Oracle } else { Kernel::Flash };
        let mut view = TensorViewMut::new("out", out, shape.out_dims(), l).map_err(err)?;
        fwd.forward(&inputs, &mut view, Some(lse), &params, self.par).map_err(err)?;
        let bwd = BackwardInputs::new(
            inputs,
            TensorView::new("out", out, shape.out_dims(), l).map_err(err)?,
            lse,
            TensorView::new("d_out", d_out, self.do_dims, l).map_err(err)?,
        )
        .map_err(err)?;
        let mut grads = GradsMut::from_slices(&shape, l, dq, dk, dv).map_err(err)?;
        grads.dsinks = dsinks;
        for i in 0..self.warmup + self.reps {
            let start = Instant::now();
            self.kernel.backward(&bwd, &mut grads, &params, self.par).map_err(err)?;
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
