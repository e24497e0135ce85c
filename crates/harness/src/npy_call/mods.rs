//! The score modifiers of `attn run` and `attn grad` ([`ModFiles`]): the
//! softcap and default ALiBi from flags, the ALiBi slopes, the sinks and
//! the bias from `.npy` files, read and checked against the call's shape
//! into a [`ModData`] that the call's `AttnParams` borrows.
//!
//! - `--alibi-slopes`, `--sinks`: float32 (or float16, widened exactly),
//!   shape `(Hq,)`, finite: one value per query head.
//! - `--bias`: float32 (or float16), 4-d `[B|1, Hq|1, Nq, Nk]` in C order
//!   whatever `--layout` says (size-1 batch and head dims broadcast). A
//!   NaN or `+inf` entry that a row reads is the kernel's error (naming
//!   the file and the index), a `−inf` one masks its key.

use std::path::{Path, PathBuf};

use attnlab::AttnShape;

use super::RunError;
use super::npy::{self, FileError, NpyData, shape_str};
use crate::config::{Bias, ModData, Slopes};

/// The score modifiers an `attn run` or `attn grad` call asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModFiles {
    /// Logit softcap `c > 0` (checked by the flags).
    pub softcap: Option<f32>,
    /// ALiBi with the paper's slopes.
    pub alibi: bool,
    /// ALiBi with the slopes of this file (one per query head).
    pub alibi_slopes: Option<PathBuf>,
    /// Sink logits (one per query head).
    pub sinks: Option<PathBuf>,
    /// Additive bias `[B|1, Hq|1, Nq, Nk]`, C order.
    pub bias: Option<PathBuf>,
}

/// What [`ModFiles::read`] read: the data, and the bias file's shape (for
/// naming an element of it in errors).
pub(super) struct ReadMods {
    pub data: ModData,
    pub bias_shape: Vec<usize>,
}

impl ModFiles {
    /// The input files with their flags (for the alias checks of the
    /// outputs).
    pub fn inputs(&self) -> Vec<(&'static str, &Path)> {
        let mut v = Vec::new();
        if let Some(p) = &self.alibi_slopes {
            v.push(("--alibi-slopes", p.as_path()));
        }
        if let Some(p) = &self.sinks {
            v.push(("--sinks", p.as_path()));
        }
        if let Some(p) = &self.bias {
            v.push(("--bias", p.as_path()));
        }
        v
    }

    /// Reads the files and checks them against `shape` (see the module
    /// docs); errors name the file and the flag.
    pub(super) fn read(&self, shape: &AttnShape) -> Result<ReadMods, RunError> {
        let hq = shape.q_heads();
        let alibi = match (&self.alibi_slopes, self.alibi) {
            (Some(p), _) => Some(Slopes::Values(read_per_head(p, "--alibi-slopes", hq)?)),
            (None, true) => Some(Slopes::Default),
            (None, false) => None,
        };
        let sinks = match &self.sinks {
            Some(p) => Some(read_per_head(p, "--sinks", hq)?),
            None => None,
        };
        let (bias, bias_shape) = match &self.bias {
            Some(p) => {
                let (b, s) = read_bias(p, shape)?;
                (Some(b), s)
            }
            None => (None, Vec::new()),
        };
        Ok(ReadMods { data: ModData { softcap: self.softcap, alibi, sinks, bias }, bias_shape })
    }
}

/// A float32 or float16 file as f32 values, with its shape.
fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), FileError> {
    let a = npy::read(path)?;
    let data = match a.data {
        NpyData::F32(x) => x,
        NpyData::F16(x) => x.iter().map(|h| h.to_f32()).collect(),
    };
    Ok((a.shape, data))
}

/// One finite value per query head, from a `(Hq,)` file.
fn read_per_head(path: &Path, flag: &str, hq: usize) -> Result<Vec<f32>, RunError> {
    let (shape, v) = read_f32(path)?;
    if shape != [hq] {
        let problem = format!(
            "{flag}: expected a 1-d array of {hq} values (one per query head), got shape {}",
            shape_str(&shape)
        );
        return Err(FileError::new(path, problem).into());
    }
    if let Some(h) = v.iter().position(|x| !x.is_finite()) {
        let problem =
            format!("{flag}: values must be finite, got {} for query head {h} (index {h})", v[h]);
        return Err(FileError::new(path, problem).into());
    }
    Ok(v)
}

/// The bias, `[B|1, Hq|1, Nq, Nk]` in C order.
fn read_bias(path: &Path, shape: &AttnShape) -> Result<(Bias, Vec<usize>), RunError> {
    let (dims, data) = read_f32(path)?;
    let (b, hq, nq, nk) = (shape.batch(), shape.q_heads(), shape.q_len(), shape.kv_len());
    let fits = dims.len() == 4
        && (dims[0] == b || dims[0] == 1)
        && (dims[1] == hq || dims[1] == 1)
        && dims[2] == nq
        && dims[3] == nk;
    if !fits {
        let problem = format!(
            "--bias: expected a 4-d array [B|1, Hq|1, Nq, Nk] = [{b}|1, {hq}|1, {nq}, {nk}] \
             (C order, whatever --layout), got shape {}",
            shape_str(&dims)
        );
        return Err(FileError::new(path, problem).into());
    }
    let bias = Bias { dims: [dims[0], dims[1], dims[2], dims[3]], data };
    Ok((bias, dims))
}
