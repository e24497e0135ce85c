//! The one-layer experiment: one attention call, forward and backward,
//! with the kernels' saturation statistics, per (inputs, N, modifier,
//! scale multiplier `t`).
//!
//! A row's statistics depend only on the row and the keys it sees, so a
//! point needs only a few query rows: the **last** `Nq` rows of a causal
//! sequence of `N` tokens (bottom-right aligned, they see `N − Nq + 1 … N`
//! keys) against all `N` keys — `O(Nq·N)` work instead of `O(N²)`, which
//! takes the study to long contexts. `B` sequences make up `rows =
//! B·H·Nq` rows per point at every N.

use super::inputs::{self, Problem};
use super::results::{SATURATED_P, SinglePoint, SingleSettings};
use super::{Input, Modifier};
use attnlab::{
    AttnError, AttnParams, BackwardInputs, BackwardKernel, BackwardStatsMut, CheckedBackward,
    Flash, GradsMut, Kernel, Layout, Mask, Options, Par, attention_with_stats,
};
use std::time::Instant;

/// `(B, Nq)` of a point at `n`: `Nq = min(q_max, n/q_div)` and `B` to
/// make `rows` rows. Errors when `Nq ≤ 16` (the flash kernel computes
/// statistics on its tiled path only) or `rows` is not a multiple of
/// `heads·Nq`.
pub fn layout_of(s: &SingleSettings, n: usize) -> Result<(usize, usize), String> {
    let nq = s.q_max.min(n / s.q_div.max(1));
    if nq <= 16 {
        return Err(format!(
            "N = {n}: {nq} query rows per sequence (min(q_max, N/{})); the statistics need \
             more than 16",
            s.q_div
        ));
    }
    let per = s.heads * nq;
    if s.rows == 0 || !s.rows.is_multiple_of(per) {
        return Err(format!("rows = {} is not a multiple of heads·Nq = {per} at N = {n}", s.rows));
    }
    Ok((s.rows / per, nq))
}

/// The problem of `input` at `n` (seeded by the settings' seed and `n`).
pub fn problem(s: &SingleSettings, input: Input, n: usize) -> Result<Problem, String> {
    let (b, nq) = layout_of(s, n)?;
    let shape = inputs::shape(b, s.heads, nq, n, s.head_dim).map_err(|e| e.to_string())?;
    let seed = s.seed ^ (n as u64).wrapping_mul(0x9E37_79B9);
    Ok(match input {
        Input::Iid => inputs::iid(&shape, seed),
        Input::Peaky => inputs::peaky(&shape, s.anchors, s.rho, s.anchor_noise, seed),
    })
}

/// The call parameters of a point: bottom-right causal, scale `t/√d`, and
/// the modifier (`sinks` holds one sink logit per head).
pub fn params<'a>(
    s: &SingleSettings,
    modifier: Modifier,
    t: f32,
    sinks: &'a [f32],
) -> AttnParams<'a> {
    let base = AttnParams {
        mask: Mask::Causal,
        scale: Some(t / (s.head_dim as f32).sqrt()),
        ..AttnParams::default()
    };
    match modifier {
        Modifier::Plain => base,
        Modifier::Softcap => AttnParams { softcap: Some(s.softcap), ..base },
        Modifier::Sinks => AttnParams { sinks: Some(sinks), ..base },
    }
}

/// Gradient buffers reused across the points of one problem.
struct Scratch {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    off: Vec<f32>,
    key_grad: Vec<f32>,
}

/// Every point of one problem: each modifier × each `t`, in that order.
pub fn points(
    s: &SingleSettings,
    input: Input,
    p: &Problem,
    par: Par,
) -> Result<Vec<SinglePoint>, AttnError> {
    let shape = p.shape;
    let n = |d: [usize; 4]| d.iter().product::<usize>();
    let keys = shape.batch() * shape.kv_heads() * shape.kv_len();
    let mut sc = Scratch {
        dq: vec![0.0; n(shape.q_dims())],
        dk: vec![0.0; n(shape.k_dims())],
        dv: vec![0.0; n(shape.v_dims())],
        off: vec![0.0; shape.lse_len()],
        key_grad: vec![0.0; keys],
    };
    let sinks = vec![s.sink; s.heads];
    let mut out = Vec::new();
    for modifier in Modifier::ALL {
        for &t in &s.temps {
            let params = params(s, modifier, t, &sinks);
            out.push(point(s, input, modifier, t, p, &params, par, &mut sc)?);
        }
    }
    Ok(out)
}

/// One point: the forward with statistics, the backward with statistics,
/// and their means (see [`SinglePoint`]).
#[allow(clippy::too_many_arguments)]
fn point(
    s: &SingleSettings,
    input: Input,
    modifier: Modifier,
    t: f32,
    p: &Problem,
    params: &AttnParams,
    par: Par,
    sc: &mut Scratch,
) -> Result<SinglePoint, AttnError> {
    let shape = p.shape;
    let start = Instant::now();
    let options = Options { kernel: Kernel::Flash, layout: Layout::Bhnd, par };
    let (fwd, stats) = attention_with_stats(&shape, &p.q, &p.k, &p.v, params, &options)?;
    {
        let inputs = BackwardInputs::from_slices(
            shape,
            Layout::Bhnd,
            &p.q,
            &p.k,
            &p.v,
            &fwd.out,
            &fwd.lse,
            &p.d_out,
        )?;
        let mut grads =
            GradsMut::from_slices(&shape, Layout::Bhnd, &mut sc.dq, &mut sc.dk, &mut sc.dv)?;
        let st = BackwardStatsMut { off_argmax: &mut sc.off, key_grad: &mut sc.key_grad };
        let call = CheckedBackward::new(&inputs, &mut grads, params, par)?.with_stats(st)?;
        Flash::default().run_backward(call)?;
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let rows = shape.lse_len() as f64;
    let mean = |x: &[f32]| x.iter().map(|v| *v as f64).sum::<f64>() / rows;
    let total_key: f64 = sc.key_grad.iter().map(|v| *v as f64).sum();
    let anchor_grad_share = (input == Input::Peaky && total_key > 0.0).then(|| {
        let (a, nk) = (s.anchors, shape.kv_len());
        let on: f64 = p
            .anchors
            .chunks(a.max(1))
            .enumerate()
            .map(|(bh, js)| js.iter().map(|j| sc.key_grad[bh * nk + j] as f64).sum::<f64>())
            .sum();
        on / total_key
    });
    let sink_share = params.sinks.map(|sk| {
        let nq = shape.q_len();
        let h = shape.q_heads();
        fwd.lse
            .iter()
            .enumerate()
            .map(|(r, lse)| (sk[r / nq % h] as f64 - *lse as f64).exp())
            .sum::<f64>()
            / rows
    });
    Ok(SinglePoint {
        input: input.name().into(),
        modifier: modifier.name().into(),
        n: shape.kv_len(),
        t,
        batch: shape.batch(),
        q_rows: shape.q_len(),
        max_p: mean(&stats.max_p),
        saturated: stats.max_p.iter().filter(|m| **m as f64 > SATURATED_P).count() as f64 / rows,
        entropy: mean(&stats.entropy),
        support: stats.entropy.iter().map(|h| (*h as f64).exp()).sum::<f64>() / rows,
        off_share: mean(&sc.off),
        grad_mass: total_key / rows,
        anchor_grad_share,
        sink_share,
        ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saturate::Profile;

    #[test]
    fn every_length_of_the_profiles_has_a_valid_layout() {
        for p in [Profile::Default, Profile::Full, Profile::Tiny] {
            let s = p.settings().single;
            for &n in &s.ns {
                let (b, nq) = layout_of(&s, n).unwrap();
                assert_eq!(b * s.heads * nq, s.rows, "{p:?} N = {n}");
                assert!(nq * s.q_div <= n, "{p:?} N = {n}: rows see fewer than 7/8 N keys");
            }
        }
        let mut s = Profile::Tiny.settings().single;
        s.q_max = 16;
        assert!(layout_of(&s, 4096).unwrap_err().contains("more than 16"));
    }

    /// A sharp point (large `t`) is more saturated than a flat one, and the
    /// sink's share is what its logit against the keys implies.
    #[test]
    fn statistics_respond_to_the_temperature() {
        let s = Profile::Tiny.settings().single;
        let p = problem(&s, Input::Iid, s.ns[0]).unwrap();
        let pts = points(&s, Input::Iid, &p, Par::Seq).unwrap();
        assert_eq!(pts.len(), 3 * s.temps.len());
        let at = |m: &str, t: f32| pts.iter().find(|x| x.modifier == m && x.t == t).unwrap();
        let (lo, hi) = (s.temps[0], *s.temps.last().unwrap());
        assert!(at("plain", hi).max_p > at("plain", lo).max_p + 0.2);
        assert!(at("plain", hi).entropy < at("plain", lo).entropy - 1.0);
        for x in &pts {
            assert!(x.off_share >= 0.0 && x.off_share <= 1.0 && x.grad_mass > 0.0, "{x:?}");
            assert_eq!(x.sink_share.is_some(), x.modifier == "sinks");
            assert!(x.anchor_grad_share.is_none());
        }
        // Plain rows: Σ_j dS_ij = 0, so the argmax holds at most half.
        assert!(pts.iter().filter(|x| x.modifier == "plain").all(|x| x.off_share >= 0.5 - 1e-4));
    }
}
