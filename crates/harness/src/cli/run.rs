//! `attn run`: attention on `.npy` files, timed (the protocol of
//! `shared/peers`). The flags; the work is [`crate::npy_call`].

use std::io;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use attnlab::{AttnParams, Kernel, Layout};
use clap::builder::{PossibleValuesParser, TypedValueParser};

use crate::config::{MaskSpec, Mods};
use crate::machine::logical_cpus;
use crate::npy_call::{self, ModFiles, RunSpec};

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
    /// The attnlab layout.
    pub fn layout(self) -> Layout {
        match self {
            LayoutArg::Bhnd => Layout::Bhnd,
            LayoutArg::Bnhd => Layout::Bnhd,
        }
    }
}

pub(crate) fn parse_01(s: &str) -> Result<bool, String> {
    match s {
        "0" | "false" => Ok(false),
        "1" | "true" => Ok(true),
        _ => Err(format!("expected 0 or 1, got '{s}'")),
    }
}

pub(crate) fn kernel_parser() -> impl TypedValueParser<Value = Kernel> {
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
    /// Also write each row's saturation statistics (docs/semantics.md) as an
    /// .npz archive (numpy's np.savez format: np.load(FILE)["max_p"]) of
    /// three float32 arrays `[B, Hq, Nq]` in any layout: `max_p` (largest
    /// probability), `entropy` (nats) and `support` (exp(entropy)). Kernels
    /// flash and oracle; the timed calls compute them too
    #[arg(long, value_name = "STATS.npz")]
    pub stats: Option<PathBuf>,
    /// Kernel: `oracle` (f64, scalar), `naive` (O(N²) two-GEMM) or `flash`
    /// (tiled online softmax)
    #[arg(long, default_value = "flash", value_parser = kernel_parser())]
    pub kernel: Kernel,
    /// Mask, scale, score modifiers, layout, threads and repetitions.
    #[command(flatten)]
    pub call: CallArgs,
}

/// The flags `attn run` and `attn grad` share: the problem's mask, scale
/// and score modifiers, the layout of every tensor, the threads and the
/// timed calls.
#[derive(Debug, Clone, clap::Args)]
pub struct CallArgs {
    /// Bottom-right causal mask: query i sees keys j <= i + Nk - Nq
    #[arg(long, value_name = "0|1", default_value = "0", value_parser = parse_01,
          action = clap::ArgAction::Set)]
    pub causal: bool,
    /// Sliding window around the bottom-right diagonal: query i sees keys
    /// i+Nk-Nq-LEFT ..= i+Nk-Nq+RIGHT. Each side is a key count, or `inf`, -1
    /// (FlashAttention's convention), `-` or nothing for unbounded. Not with
    /// --causal 1, which is --window inf,0
    #[arg(long, value_name = "LEFT,RIGHT", allow_hyphen_values = true)]
    pub window: Option<String>,
    /// Softmax scale [default: 1/sqrt(d)]
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    pub scale: Option<f32>,
    /// Logit softcap C > 0: each score s becomes C·tanh(s/C), after the bias
    /// and ALiBi (Gemma 2 uses 50)
    #[arg(long, value_name = "C", allow_negative_numbers = true)]
    pub softcap: Option<f32>,
    /// ALiBi with the paper's slopes for Hq query heads: -slope_h·|i+Nk-Nq-j|
    /// added to the scores
    #[arg(long, conflicts_with = "alibi_slopes")]
    pub alibi: bool,
    /// ALiBi with these slopes: float32 .npy of shape (Hq,), one per query head
    #[arg(long, value_name = "SLOPES.npy")]
    pub alibi_slopes: Option<PathBuf>,
    /// Attention sinks: float32 .npy of shape (Hq,), one logit per query head
    /// that joins every row's softmax denominator (with no value)
    #[arg(long, value_name = "SINKS.npy")]
    pub sinks: Option<PathBuf>,
    /// Additive bias: float32 .npy of shape [B|1, Hq|1, Nq, Nk] in C order,
    /// whatever --layout (size-1 dims broadcast; -inf masks its key)
    #[arg(long, value_name = "BIAS.npy")]
    pub bias: Option<PathBuf>,
    /// Memory layout of every tensor (inputs and outputs)
    #[arg(long, value_enum, default_value_t = LayoutArg::Bhnd)]
    pub layout: LayoutArg,
    /// Worker threads: the kernel runs on a rayon pool of this size
    /// [default: all cores]
    #[arg(long, value_name = "N")]
    pub threads: Option<NonZeroUsize>,
    /// Untimed kernel calls (`attn grad`: backward calls) before the timed
    /// ones
    #[arg(long, value_name = "W", default_value_t = 0)]
    pub warmup: u32,
    /// Timed kernel calls (`attn grad`: backward calls); each prints one
    /// line `time_ms=<float>`
    #[arg(long, value_name = "R", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: u32,
    /// Do not reject NaN/inf in the inputs: rows that read one come out
    /// NaN instead of an error naming it (in `attn run` the check costs no
    /// pass over the inputs, finished rows are checked; `attn grad`'s
    /// backward scans them)
    #[arg(long)]
    pub no_check_finite: bool,
}

/// What [`CallArgs`] ask for, validated.
pub(crate) struct Call {
    pub params: AttnParams<'static>,
    pub mods: ModFiles,
    pub layout: Layout,
    pub threads: usize,
    pub warmup: u32,
    pub reps: u32,
}

impl CallArgs {
    /// The parameters, modifiers, layout, threads and repetitions (mask,
    /// scale and softcap validated; the modifiers' files are read by the
    /// call).
    pub(crate) fn call(&self) -> Result<Call, String> {
        let mask = MaskSpec::from_flags(self.causal, self.window.as_deref())?.mask();
        let params = AttnParams {
            scale: self.scale,
            mask,
            check_finite: !self.no_check_finite,
            ..Default::default()
        };
        params.validate().map_err(|e| format!("--{e}"))?;
        Mods { softcap: self.softcap, ..Default::default() }.validate()?;
        let mods = ModFiles {
            softcap: self.softcap,
            alibi: self.alibi,
            alibi_slopes: self.alibi_slopes.clone(),
            sinks: self.sinks.clone(),
            bias: self.bias.clone(),
        };
        Ok(Call {
            params,
            mods,
            layout: self.layout.layout(),
            threads: self.threads.map_or_else(logical_cpus, NonZeroUsize::get),
            warmup: self.warmup,
            reps: self.reps,
        })
    }
}

const RUN_AFTER_HELP: &str = "\
Output: one line `time_ms=<float>` on stdout per timed call, timing the kernel
call alone (no file I/O, no output allocation). The files are written after
the last call.

Score modifiers (docs/semantics.md), in this order on each score: --bias, then
ALiBi (--alibi or --alibi-slopes), then --softcap; the mask; --sinks join the
softmax denominator (the LSE includes them). The bias file is read as stored,
C order [B|1, Hq|1, Nq, Nk], whatever --layout says.

Exit status: 0 on success; 2 on any error (bad flag, missing or unreadable
file, not a .npy, dtype other than float32/float16, Fortran order, rank other
than 4, mixed dtypes, shapes that do not fit together, non-finite input,
a softcap <= 0, slopes or sinks not one finite value per query head, a bias
not [B|1, Hq|1, Nq, Nk], unsupported kernel, --stats with the naive kernel,
failed write). The error is one
line on stderr naming the file (or flag) and the problem, and no output file
is left behind.

Example:
  attn run --q q.npy --k k.npy --v v.npy --out o.npy --lse lse.npy \\
           --kernel naive --causal 1 --threads 2 --warmup 1 --reps 5
  attn run --q q.npy --k k.npy --v v.npy --out o.npy --causal 1 \\
           --softcap 50 --alibi --sinks sinks.npy --bias bias.npy
  attn run --q q.npy --k k.npy --v v.npy --out o.npy --causal 1 --stats stats.npz";
/// Entry point of `attn run`: prints the error and returns exit status 2 on
/// failure.
pub fn main(args: &RunArgs) -> ExitCode {
    let result = spec_of(args)
        .and_then(|spec| npy_call::run(&spec, &mut io::stdout()).map_err(|e| e.to_string()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attn run: {e}");
            ExitCode::from(2)
        }
    }
}

/// The run the flags ask for (parameters validated).
pub fn spec_of(args: &RunArgs) -> Result<RunSpec, String> {
    let Call { params, mods, layout, threads, warmup, reps } = args.call.call()?;
    if args.stats.is_some() && args.kernel == Kernel::Naive {
        return Err("--stats: kernel naive computes no statistics (its O(N²) softmax is \
                    framework math); use --kernel flash or oracle"
            .into());
    }
    Ok(RunSpec {
        q: args.q.clone(),
        k: args.k.clone(),
        v: args.v.clone(),
        out: args.out.clone(),
        lse: args.lse.clone(),
        stats: args.stats.clone(),
        kernel: args.kernel,
        params,
        mods,
        layout,
        threads,
        warmup,
        reps,
    })
}
