//! `attn grad`: the gradients dQ, dK, dV of attention on `.npy` files,
//! timed (the protocol of `shared/peers/bwd_peers.py`). The flags; the
//! work is [`crate::npy_call::grad`].

use std::io;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use attnlab::{AttnParams, Kernel};

use super::run::{LayoutArg, kernel_parser, parse_01};
use crate::config::MaskSpec;
use crate::machine::logical_cpus;
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
    /// Backward kernel: `oracle` (f64, scalar), `naive` (O(N²): materialises
    /// P, dP, dS) or `flash` (FlashAttention-2 backward, O(N) memory)
    #[arg(long, default_value = "flash", value_parser = kernel_parser())]
    pub kernel: Kernel,
    /// Bottom-right causal mask: query i sees keys j <= i + Nk - Nq
    #[arg(long, value_name = "0|1", default_value = "0", value_parser = parse_01,
          action = clap::ArgAction::Set)]
    pub causal: bool,
    /// Sliding window around the bottom-right diagonal (as `attn run`)
    #[arg(long, value_name = "LEFT,RIGHT", allow_hyphen_values = true)]
    pub window: Option<String>,
    /// Softmax scale [default: 1/sqrt(d)]
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub scale: Option<f32>,
    /// Memory layout of every tensor
    #[arg(long, value_enum, default_value_t = LayoutArg::Bhnd)]
    pub layout: LayoutArg,
    /// Worker threads [default: all cores]
    #[arg(long, value_name = "N")]
    pub threads: Option<NonZeroUsize>,
    /// Untimed backward calls before the timed ones
    #[arg(long, value_name = "W", default_value_t = 0)]
    pub warmup: u32,
    /// Timed backward calls; each prints one line `time_ms=<float>`
    #[arg(long, value_name = "R", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: u32,
    /// Do not reject NaN/inf in the inputs
    #[arg(long)]
    pub no_check_finite: bool,
}

const GRAD_AFTER_HELP: &str = "\
Runs the forward once, untimed, for O and the LSE (the flash kernel; the
oracle's own forward with --kernel oracle), then times the backward alone:
one line `time_ms=<float>` on stdout per timed call. dQ, dK, dV are written
after the last call, all or nothing.

Exit status: 0 on success; 2 on any error (as `attn run`, and a dO whose
shape is not O's). The error is one line on stderr naming the file and the
problem, and no output file is left behind.

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
    let mask = MaskSpec::from_flags(args.causal, args.window.as_deref())?.mask();
    let params = AttnParams { scale: args.scale, mask, check_finite: !args.no_check_finite };
    params.validate().map_err(|e| format!("--{e}"))?;
    Ok(GradSpec {
        q: args.q.clone(),
        k: args.k.clone(),
        v: args.v.clone(),
        d_out: args.d_out.clone(),
        dq: args.dq.clone(),
        dk: args.dk.clone(),
        dv: args.dv.clone(),
        kernel: args.kernel,
        params,
        layout: args.layout.layout(),
        threads: args.threads.map_or_else(logical_cpus, NonZeroUsize::get),
        warmup: args.warmup,
        reps: args.reps,
    })
}
