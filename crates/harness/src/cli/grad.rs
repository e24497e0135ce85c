//! `attn grad`: the gradients dQ, dK, dV of attention on `.npy` files,
//! timed (the protocol of `shared/peers/bwd_peers.py`). The flags; the
//! work is [`crate::npy_call::grad`].

use std::io;
use std::path::PathBuf;
use std::process::ExitCode;

use attnlab::Kernel;

use super::run::{Call, CallArgs, kernel_parser};
use crate::npy_call::grad::{GradSpec, grad};

/// `attn grad` flags.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = GRAD_AFTER_HELP)]
pub struct GradArgs {
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
    /// Upstream gradient dO, the shape of the output O: `[B, Hq, Nq, dv]`
    /// (bhnd) or `[B, Nq, Hq, dv]` (bnhd); float32 or float16
    #[arg(long = "do", value_name = "DO.npy")]
    pub d_out: PathBuf,
    /// Output dQ, float32, the shape and layout of Q
    #[arg(long, value_name = "DQ.npy")]
    pub dq: PathBuf,
    /// Output dK, float32, the shape and layout of K (summed over each GQA
    /// group)
    #[arg(long, value_name = "DK.npy")]
    pub dk: PathBuf,
    /// Output dV, float32, the shape and layout of V (summed over each GQA
    /// group)
    #[arg(long, value_name = "DV.npy")]
    pub dv: PathBuf,
    /// Output dsinks, float32 (Hq,): the gradient of the --sinks logits
    /// (summed over batch and rows); only with --sinks
    #[arg(long, value_name = "DSINKS.npy")]
    pub dsinks: Option<PathBuf>,
    /// Backward kernel: `oracle` (f64, scalar), `naive` (O(N²): materialises
    /// P, dP, dS) or `flash` (FlashAttention-2 backward, O(N) memory)
    #[arg(long, default_value = "flash", value_parser = kernel_parser())]
    pub kernel: Kernel,
    /// Mask, scale, score modifiers, layout, threads and repetitions (as
    /// `attn run`; `--warmup`/`--reps` count backward calls).
    #[command(flatten)]
    pub call: CallArgs,
}

const GRAD_AFTER_HELP: &str = "\
Runs the forward once, untimed, for O and the LSE (the flash kernel; the
oracle's own forward with --kernel oracle), then times the backward alone:
one line `time_ms=<float>` on stdout per timed call. dQ, dK, dV are written
after the last call, all or nothing (with --dsinks, the sinks' gradient too).
The score modifiers are those of `attn run` (the forward and the backward both
use them); the ALiBi slopes and the bias get no gradient.

Exit status: 0 on success; 2 on any error (as `attn run`, a dO whose shape is
not O's, --dsinks without --sinks). The error is one line on stderr naming the
file and the problem, and no output file is left behind.

Example:
  attn grad --q q.npy --k k.npy --v v.npy --do do.npy \\
            --dq dq.npy --dk dk.npy --dv dv.npy --causal 1 --threads 2 --warmup 1 --reps 5";

/// Entry point of `attn grad`: prints the error and returns exit status 2
/// on failure.
pub fn main(args: &GradArgs) -> ExitCode {
    let result =
        spec_of(args).and_then(|spec| grad(&spec, &mut io::stdout()).map_err(|e| e.to_string()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attn grad: {e}");
            ExitCode::from(2)
        }
    }
}

/// The call the flags ask for (parameters validated).
pub fn spec_of(args: &GradArgs) -> Result<GradSpec, String> {
    let Call { params, mods, layout, threads, warmup, reps } = args.call.call()?;
    if args.dsinks.is_some() && mods.sinks.is_none() {
        return Err("--dsinks needs --sinks (the sink logits it is the gradient of)".into());
    }
    Ok(GradSpec {
        q: args.q.clone(),
        k: args.k.clone(),
        v: args.v.clone(),
        d_out: args.d_out.clone(),
        dq: args.dq.clone(),
        dk: args.dk.clone(),
        dv: args.dv.clone(),
        dsinks: args.dsinks.clone(),
        kernel: args.kernel,
        params,
        mods,
        layout,
        threads,
        warmup,
        reps,
    })
}
