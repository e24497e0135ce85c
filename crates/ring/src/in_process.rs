//! The whole ring in one process: `P` ranks as threads over the
//! in-process transport ([`InProcess`]), from whole tensors to whole
//! results — what `attn ring` runs without MPI, and what the tests check
//! against the single-process kernel.

use std::time::{Duration, Instant};

use attn_core::{AttnInputs, Layout};

use crate::channel::InProcess;
use crate::driver::{RankTiming, run_rank};
use crate::error::RingError;
use crate::scatter::{cut, place};
use crate::spec::RingSpec;

/// The result of a whole ring.
#[derive(Debug, Clone, PartialEq)]
pub struct RingResult {
    /// Output `[B, Hq, Nq, dv]`, in the layout of the inputs.
    pub out: Vec<f32>,
    /// LSE `[B, Hq, Nq]` (natural log; `−inf` for a row that sees no key,
    /// or its sink).
    pub lse: Vec<f32>,
    /// Each rank's timing, by rank.
    pub ranks: Vec<RankTiming>,
    /// Wall time of the ring (threads started to results placed).
    pub wall: Duration,
}

/// Runs `spec` on `spec.ranks` in-process ranks: checks the whole tensors
/// `q`, `k`, `v` (in `layout`, dims from `spec.shape`), cuts each rank's
/// share ([`cut`]), runs every rank ([`run_rank`]) on its own thread (and
/// its own pool of `spec.threads`), and puts the results back in global
/// order ([`place`]). Every receive waits at most `deadline`.
///
/// If any rank fails, every rank stops (see [`InProcess`]) and the error
/// is the original failure, tagged with its rank (not a neighbour's report
/// of it).
pub fn ring_in_process(
    spec: &RingSpec<'_>,
    layout: Layout,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    deadline: Duration,
) -> Result<RingResult, RingError> {
    spec.validate()?;
    AttnInputs::from_slices(spec.shape, layout, q, k, v)?;
    let t0 = Instant::now();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = InProcess::ring(spec.ranks, deadline)
            .into_iter()
            .map(|mut transport| {
                s.spawn(move || {
                    use crate::transport::Transport;
                    let rank = transport.rank();
                    let inputs = match cut(spec, rank, layout, q, k, v) {
                        Ok(i) => i,
                        Err(e) => {
                            transport.abort(&e.to_string());
                            return Err(e.on_rank(rank));
                        }
                    };
                    run_rank(&mut transport, spec, &inputs)
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(RingError::OnRank {
                        rank,
                        error: Box::new(RingError::Transport(
                            crate::transport::TransportError::Io(
                                "the rank's thread panicked".into(),
                            ),
                        )),
                    })
                })
            })
            .collect()
    });
    let mut outputs = Vec::with_capacity(results.len());
    let mut first_err: Option<RingError> = None;
    for r in results {
        match r {
            Ok(o) => outputs.push(o),
            // The original failure wins over the reports of it.
            Err(e) => match &first_err {
                Some(f) if !f.is_consequence() || e.is_consequence() => {}
                _ => first_err = Some(e),
            },
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let s = &spec.shape;
    let mut out = vec![0f32; s.out_dims().iter().product()];
    let mut lse = vec![0f32; s.lse_len()];
    for (rank, o) in outputs.iter().enumerate() {
        place(spec, rank, &o.out, &o.lse, layout, &mut out, &mut lse)?;
    }
    Ok(RingResult {
        out,
        lse,
        ranks: outputs.into_iter().map(|o| o.timing).collect(),
        wall: t0.elapsed(),
    })
}
