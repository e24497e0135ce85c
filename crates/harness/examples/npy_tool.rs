//! Two small `.npy` helpers for the ring's checks (`scripts/ring-check.sh`,
//! `.ci/run`), where numpy may be missing:
//!
//! ```text
//! npy_tool gen OUT.npy B,H,N,D [SEED]   standard-normal float32 (harness's seeded
//!                                       generator; SEED picks the stream, default 0)
//! npy_tool diff A.npy B.npy [TOL]       max |a − b| over two float32 arrays of one
//!                                       shape (−inf = −inf); exit 1 above TOL
//! ```
#![warn(missing_docs)]

use std::path::Path;
use std::process::ExitCode;

use harness::measure::inputs::{SEED, normal};
use harness::npy_call::npy::{self, NpyData, shape_str};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["gen", out, shape] => generate(out, shape, "0"),
        ["gen", out, shape, stream] => generate(out, shape, stream),
        ["diff", a, b] => diff(a, b, None),
        ["diff", a, b, tol] => tol
            .parse::<f64>()
            .map_err(|e| format!("TOL {tol:?}: {e}"))
            .and_then(|t| diff(a, b, Some(t))),
        _ => {
            Err("usage: npy_tool gen OUT.npy B,H,N,D [SEED] | npy_tool diff A.npy B.npy [TOL]"
                .into())
        }
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("npy_tool: {e}");
            ExitCode::from(2)
        }
    }
}

fn generate(out: &str, shape: &str, stream: &str) -> Result<bool, String> {
    let dims: Vec<usize> = shape
        .split(',')
        .map(|d| d.trim().parse().map_err(|e| format!("shape {shape:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let stream: u64 = stream.parse().map_err(|e| format!("SEED {stream:?}: {e}"))?;
    let data: Vec<f32> = normal(dims.iter().product(), SEED, stream);
    npy::write_f32(Path::new(out), &dims, &data).map_err(|e| format!("{out}: {e}"))?;
    Ok(true)
}

fn read_f32(path: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
    let a = npy::read(Path::new(path)).map_err(|e| e.to_string())?;
    match a.data {
        NpyData::F32(x) => Ok((a.shape, x)),
        NpyData::F16(x) => Ok((a.shape, x.into_iter().map(f32::from).collect())),
    }
}

fn diff(a: &str, b: &str, tol: Option<f64>) -> Result<bool, String> {
    let (sa, xa) = read_f32(a)?;
    let (sb, xb) = read_f32(b)?;
    if sa != sb {
        return Err(format!("shapes differ: {a} {} and {b} {}", shape_str(&sa), shape_str(&sb)));
    }
    let (mut worst, mut at) = (0f64, 0);
    for (i, (&x, &y)) in xa.iter().zip(&xb).enumerate() {
        let d = if x == y { 0.0 } else { (x as f64 - y as f64).abs() };
        let d = if d.is_nan() { f64::INFINITY } else { d };
        if d > worst {
            (worst, at) = (d, i);
        }
    }
    let within = tol.is_none_or(|t| worst <= t);
    println!(
        "max_abs_diff={worst:.3e} at flat index {at} ({} vs {}) over {} values{}",
        xa.get(at).copied().unwrap_or(0.0),
        xb.get(at).copied().unwrap_or(0.0),
        xa.len(),
        tol.map(|t| format!(", tolerance {t:.1e}: {}", if within { "ok" } else { "EXCEEDED" }))
            .unwrap_or_default()
    );
    Ok(within)
}
