//! The softmax-saturation study behind `attn saturate`: how
//! concentrated attention gets ("winner-take-all") and how much gradient
//! still reaches the keys that do not win, measured with the kernels'
//! streaming statistics (`attnlab::stats`: O(1) extra state per row, no
//! `N²` buffer) at contexts up to 64k (256k with `--full`).
//!
//! - [`single`]: one attention call (forward and backward) per inputs
//!   ([`Input`]) × N × scale multiplier `t` × modifier ([`Modifier`]);
//! - [`depth`]: a seeded stack of pre-norm residual blocks (LayerNorm →
//!   `MultiHeadAttention` → residual) at N = 4096, statistics and gradient
//!   norms per block;
//! - [`inputs`]: the iid and "peaky" inputs; [`layernorm`]: LayerNorm
//!   forward and backward; [`results`]: the results file.
//!
//! [`run`] runs a [`Profile`] and returns the [`results::SaturationFile`];
//! `crate::report::saturation` turns it into `docs/saturation.md`.

pub mod depth;
pub mod inputs;
pub mod layernorm;
pub mod results;
pub mod single;

use crate::machine::{MachineInfo, utc_now};
use attnlab::Par;
use results::{DepthSettings, SCHEMA, SaturationFile, Settings, SingleSettings};
use std::time::Instant;

/// The one-layer inputs (see [`inputs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Q, K, V standard normal.
    Iid,
    /// A few keys aligned with the queries.
    Peaky,
}

impl Input {
    /// Both, in table order.
    pub const ALL: [Input; 2] = [Input::Iid, Input::Peaky];

    /// Name in results and docs.
    pub fn name(&self) -> &'static str {
        match self {
            Input::Iid => "iid",
            Input::Peaky => "peaky",
        }
    }
}

/// The score modifier of a call: none, a softcap, or sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modifier {
    /// `softmax(scale·q·k)`.
    Plain,
    /// Scores `c·tanh(s/c)`.
    Softcap,
    /// One sink logit per head in each row's denominator.
    Sinks,
}

impl Modifier {
    /// All three, in table order.
    pub const ALL: [Modifier; 3] = [Modifier::Plain, Modifier::Softcap, Modifier::Sinks];

    /// Name in results and docs.
    pub fn name(&self) -> &'static str {
        match self {
            Modifier::Plain => "plain",
            Modifier::Softcap => "softcap",
            Modifier::Sinks => "sinks",
        }
    }
}

/// What a run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `attn saturate`: N = 256 … 64k, five multipliers, depth 32 at
    /// N = 4096 for t ∈ {1, 4}; about a minute on 2 cores.
    Default,
    /// `attn saturate --full`: N = 256 … 256k in powers of two, twice the
    /// rows, depth 32 at N = 4096 for every multiplier.
    Full,
    /// Seconds, for the tests: small N, tiny heads and stack.
    Tiny,
}

impl Profile {
    /// Name in results and docs.
    pub fn name(&self) -> &'static str {
        match self {
            Profile::Default => "default",
            Profile::Full => "full",
            Profile::Tiny => "tiny",
        }
    }

    /// The settings of this profile (the choices are explained in
    /// `docs/saturation.md`, generated from them).
    pub fn settings(&self) -> Settings {
        let temps = vec![0.5, 1.0, 2.0, 4.0, 8.0];
        let single = SingleSettings {
            ns: vec![256, 1024, 4096, 16384, 65536],
            temps: temps.clone(),
            heads: 4,
            head_dim: 64,
            rows: 1024,
            q_max: 256,
            q_div: 8,
            softcap: 10.0,
            sink: 6.0,
            anchors: 4,
            rho: 0.5,
            anchor_noise: 0.5,
            seed: 0x5A7_0001,
        };
        let depth = DepthSettings {
            n: 4096,
            layers: 32,
            d_model: 256,
            heads: 4,
            head_dim: 64,
            temps: vec![1.0, 4.0],
            ln_eps: 1e-5,
            seed: 0x5A7_0002,
        };
        match self {
            Profile::Default => Settings { single, depth },
            Profile::Full => Settings {
                single: SingleSettings {
                    ns: (8..=18).map(|e| 1usize << e).collect(),
                    rows: 2048,
                    q_max: 512,
                    ..single
                },
                depth: DepthSettings { temps, ..depth },
            },
            Profile::Tiny => Settings {
                single: SingleSettings {
                    ns: vec![256, 512],
                    temps: vec![1.0, 8.0],
                    heads: 2,
                    head_dim: 16,
                    rows: 128,
                    q_max: 32,
                    ..single
                },
                depth: DepthSettings {
                    n: 64,
                    layers: 3,
                    d_model: 16,
                    heads: 2,
                    head_dim: 8,
                    temps: vec![1.0, 4.0],
                    ..depth
                },
            },
        }
    }
}

/// Runs `profile` on the current rayon pool, printing one line per step
/// through `progress`; the results carry this machine's facts.
pub fn run(profile: Profile, mut progress: impl FnMut(&str)) -> Result<SaturationFile, String> {
    let start = Instant::now();
    let started_utc = utc_now();
    let settings = profile.settings();
    let (s, d) = (&settings.single, &settings.depth);
    let par = Par::Pool;
    let mut single = Vec::new();
    for input in Input::ALL {
        for &n in &s.ns {
            let t0 = Instant::now();
            let p = single::problem(s, input, n)?;
            let pts = single::points(s, input, &p, par).map_err(|e| e.to_string())?;
            progress(&format!(
                "one layer: {} N = {n}: {} points in {:.1} s",
                input.name(),
                pts.len(),
                t0.elapsed().as_secs_f64()
            ));
            single.extend(pts);
        }
    }
    let blocks = depth::blocks(d).map_err(|e| e.to_string())?;
    let mut stacks = Vec::new();
    for &t in &d.temps {
        for m in Modifier::ALL {
            let r = depth::run(d, &blocks, (m, t), (s.softcap, s.sink), par)
                .map_err(|e| e.to_string())?;
            progress(&format!(
                "depth: {} t = {t}: {} blocks at N = {} in {:.1} s",
                m.name(),
                d.layers,
                d.n,
                r.ms / 1e3
            ));
            stacks.push(r);
        }
    }
    Ok(SaturationFile {
        schema: SCHEMA,
        profile: profile.name().into(),
        machine: MachineInfo::collect(),
        threads: rayon::current_num_threads(),
        started_utc,
        duration_s: start.elapsed().as_secs_f64(),
        settings,
        single,
        depth: stacks,
    })
}
