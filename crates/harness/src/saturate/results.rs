//! The saturation study's results file (`results/saturation.json`): the
//! machine and commit, the settings every number depends on, one
//! [`SinglePoint`] per one-layer point and one [`DepthRun`] per stack.
//! Written all or nothing ([`write()`]: a temporary file renamed over the
//! old one), read back by `attn saturate --report-only` ([`load`]).

use crate::machine::MachineInfo;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Version of the file format.
pub const SCHEMA: u32 = 1;

/// A row is "saturated" when its largest probability exceeds this.
pub const SATURATED_P: f64 = 0.9;

/// The one-layer experiment's settings (see `docs/saturation.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SingleSettings {
    /// Sequence lengths N (keys seen by the last query row).
    pub ns: Vec<usize>,
    /// Scale multipliers `t`: the scale is `t/√d`.
    pub temps: Vec<f32>,
    /// Attention heads (MHA: as many K/V heads).
    pub heads: usize,
    /// Head dimension `d` (= `dv`).
    pub head_dim: usize,
    /// Query rows per point, `B·H·Nq` (a multiple of `H·Nq`).
    pub rows: usize,
    /// Most query rows per sequence; `Nq = min(q_max, N/q_div)`.
    pub q_max: usize,
    /// `Nq ≤ N/q_div`: every row sees at least `(1 − 1/q_div)·N` keys.
    pub q_div: usize,
    /// The softcap `c` of the `softcap` calls.
    pub softcap: f32,
    /// The sink logit (every head) of the `sinks` calls.
    pub sink: f32,
    /// Keys aligned with the queries per sequence and head, "peaky" set.
    pub anchors: usize,
    /// Cosine between each "peaky" query and its head's shared direction.
    pub rho: f32,
    /// Noise added to each anchor key (standard deviation per component).
    pub anchor_noise: f32,
    /// Seed of every input.
    pub seed: u64,
}

/// The depth experiment's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepthSettings {
    /// Sequence length N (causal self-attention, one sequence).
    pub n: usize,
    /// Blocks in the stack.
    pub layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Heads (MHA).
    pub heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Scale multipliers `t` (scale `t/√head_dim`), one stack each.
    pub temps: Vec<f32>,
    /// LayerNorm's epsilon.
    pub ln_eps: f64,
    /// Seed of the input, the upstream gradient and (plus the block's
    /// index) each block's weights.
    pub seed: u64,
}

/// Everything a run depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// The one-layer experiment.
    pub single: SingleSettings,
    /// The depth experiment.
    pub depth: DepthSettings,
}

/// One point of the one-layer experiment: means over its `rows` query
/// rows (each row's statistics from the flash kernels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinglePoint {
    /// "iid" or "peaky".
    pub input: String,
    /// "plain", "softcap" or "sinks".
    pub modifier: String,
    /// Sequence length.
    pub n: usize,
    /// Scale multiplier.
    pub t: f32,
    /// Sequences `B`.
    pub batch: usize,
    /// Query rows per sequence and head `Nq` (the last `Nq` of `N`).
    pub q_rows: usize,
    /// Mean largest probability (the sink's included).
    pub max_p: f64,
    /// Fraction of rows with `max_p > SATURATED_P`.
    pub saturated: f64,
    /// Mean entropy, nats.
    pub entropy: f64,
    /// Mean effective support `exp(H)`.
    pub support: f64,
    /// Mean share of a row's score-gradient mass off its argmax key.
    pub off_share: f64,
    /// Mean score-gradient mass per row, `Σ_j |dS_ij|` (`Σ key_grad /
    /// rows`).
    pub grad_mass: f64,
    /// Share of all the key-gradient mass received by the anchor keys
    /// ("peaky" only).
    pub anchor_grad_share: Option<f64>,
    /// Mean probability of the sink, `exp(sink − lse)` ("sinks" only).
    pub sink_share: Option<f64>,
    /// Forward and backward time of the point, ms.
    pub ms: f64,
}

/// One block of a stack: its attention's statistics over the rows with at
/// least two outcomes (visible keys, plus the sink: the first causal row
/// of each head without a sink has one key and is left out), and the
/// gradients of the backward from the top.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepthLayer {
    /// Block index, 1 = nearest the input.
    pub layer: usize,
    /// Mean largest probability.
    pub max_p: f64,
    /// Fraction of rows with `max_p > SATURATED_P`.
    pub saturated: f64,
    /// Mean entropy, nats.
    pub entropy: f64,
    /// Mean of `H / ln(outcomes)`: 1 = uniform, 0 = one key.
    pub entropy_norm: f64,
    /// Mean share of a row's score-gradient mass off its argmax key.
    pub off_share: f64,
    /// Mean score-gradient mass per row.
    pub grad_mass: f64,
    /// Share of the key-gradient mass received by the 1% of keys (per
    /// head) that receive the most.
    pub key_top1: f64,
    /// RMS of the gradient the block receives from above, `dL/dY_l =
    /// dL/dX_(l+1)`.
    pub dy_rms: f64,
    /// RMS of `dL/dX` at the block's input (the residual stream below it).
    pub dx_rms: f64,
    /// RMS of the part of it that came through the block's attention
    /// (through its LayerNorm), i.e. without the residual path.
    pub dx_attn_rms: f64,
}

/// One stack: a modifier and a scale multiplier, every block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DepthRun {
    /// "plain", "softcap" or "sinks".
    pub modifier: String,
    /// Scale multiplier.
    pub t: f32,
    /// Blocks, input first.
    pub layers: Vec<DepthLayer>,
    /// Forward, recomputation and backward time of the stack, ms.
    pub ms: f64,
}

/// One run of the study: `results/saturation.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaturationFile {
    /// [`SCHEMA`].
    pub schema: u32,
    /// "default", "full", "tiny".
    pub profile: String,
    /// The machine, commit and date.
    pub machine: MachineInfo,
    /// Threads the kernels ran on.
    pub threads: usize,
    /// UTC start time.
    pub started_utc: String,
    /// Wall time of the whole run, s.
    pub duration_s: f64,
    /// The settings.
    pub settings: Settings,
    /// The one-layer points.
    pub single: Vec<SinglePoint>,
    /// The stacks.
    pub depth: Vec<DepthRun>,
}

/// Writes `text` to `path` all or nothing: a temporary file beside it,
/// then a rename (the old file stays whole if anything fails).
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let res = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Writes `run` as pretty JSON to `path` (all or nothing).
pub fn write(run: &SaturationFile, path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(run).map_err(std::io::Error::other)? + "\n";
    write_atomic(path, &text)
}

/// Reads a saturation results file.
pub fn load(path: &Path) -> Result<SaturationFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let run: SaturationFile = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a saturation results file: {e}", path.display()))?;
    if run.schema > SCHEMA {
        return Err(format!(
            "{}: schema {} is newer than this attn's ({SCHEMA}): rebuild attn",
            path.display(),
            run.schema
        ));
    }
    Ok(run)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small synthetic results file with distinct, recognisable numbers
    /// (also the docs generator's test input).
    pub(crate) fn synthetic() -> SaturationFile {
        let single_settings = SingleSettings {
            ns: vec![256, 1024],
            temps: vec![1.0, 8.0],
            heads: 2,
            head_dim: 16,
            rows: 64,
            q_max: 32,
            q_div: 8,
            softcap: 10.0,
            sink: 6.0,
            anchors: 4,
            rho: 0.5,
            anchor_noise: 0.5,
            seed: 7,
        };
        let mut single = Vec::new();
        for input in ["iid", "peaky"] {
            for modifier in ["plain", "softcap", "sinks"] {
                for (a, &n) in single_settings.ns.iter().enumerate() {
                    for (b, &t) in single_settings.temps.iter().enumerate() {
                        let k = (a * 2 + b) as f64;
                        single.push(SinglePoint {
                            input: input.into(),
                            modifier: modifier.into(),
                            n,
                            t,
                            batch: 1,
                            q_rows: 32,
                            max_p: 0.1234 + 0.2 * k,
                            saturated: 0.05 * k,
                            entropy: 4.321 - k,
                            support: 75.3 - 10.0 * k,
                            off_share: 0.9876 - 0.1 * k,
                            grad_mass: 0.5432 / (1.0 + k),
                            anchor_grad_share: (input == "peaky").then_some(0.3 + 0.1 * k),
                            sink_share: (modifier == "sinks").then_some(0.01 * (k + 1.0)),
                            ms: 1.5,
                        });
                    }
                }
            }
        }
        let depth = ["plain", "softcap", "sinks"]
            .iter()
            .flat_map(|m| {
                [1.0f32, 4.0].map(|t| DepthRun {
                    modifier: m.to_string(),
                    t,
                    layers: (1..=3)
                        .map(|l| DepthLayer {
                            layer: l,
                            max_p: 0.2 * l as f64,
                            saturated: 0.1 * l as f64,
                            entropy: 3.5 - l as f64 * t as f64 * 0.25,
                            entropy_norm: 0.8 - 0.1 * l as f64,
                            off_share: 0.75,
                            grad_mass: 0.01 * l as f64,
                            key_top1: 0.05,
                            dy_rms: 2.5 - 0.5 * l as f64,
                            dx_rms: 2.0 - 0.5 * l as f64,
                            dx_attn_rms: 0.3,
                        })
                        .collect(),
                    ms: 12.0,
                })
            })
            .collect();
        SaturationFile {
            schema: SCHEMA,
            profile: "tiny".into(),
            machine: MachineInfo::collect(),
            threads: 2,
            started_utc: "2026-01-02 03:04:05 UTC".into(),
            duration_s: 1.25,
            settings: Settings {
                single: single_settings,
                depth: DepthSettings {
                    n: 64,
                    layers: 3,
                    d_model: 16,
                    heads: 2,
                    head_dim: 8,
                    temps: vec![1.0, 4.0],
                    ln_eps: 1e-5,
                    seed: 9,
                },
            },
            single,
            depth,
        }
    }

    #[test]
    fn a_results_file_round_trips_through_disk() {
        let run = synthetic();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/saturation.json");
        write(&run, &path).unwrap();
        assert_eq!(load(&path).unwrap(), run);
        // no temporary file is left beside it
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_newer_schema_or_another_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut run = synthetic();
        run.schema = SCHEMA + 1;
        write(&run, &path).unwrap();
        assert!(load(&path).unwrap_err().contains("newer"));
        std::fs::write(&path, "{\"rows\": []}").unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.contains("s.json") && e.contains("not a saturation results file"), "{e}");
    }
}
