//! The depth experiment: a seeded stack of pre-norm residual blocks,
//!
//! ```text
//! X_{l+1} = X_l + MHA_l(LN(X_l))        l = 0 … L−1 (no MLP)
//! ```
//!
//! causal self-attention over one sequence of `N` tokens; block `l` is
//! `attnlab::MultiHeadAttention` (MHA, no biases) with Xavier-uniform
//! weights seeded by `seed + l`, LayerNorm without affine parameters
//! ([`super::layernorm`]). `X_0` is standard normal; the loss is the random
//! linear `Σ G∘X_L` with `G` standard normal (so `dL/dX_L = G`).
//!
//! The forward records each block's attention statistics; the backward
//! goes from the top down, recomputing each block's forward from the
//! stored `X_l` (bitwise the same: the kernels are deterministic) so that
//! only the `L + 1` residual states are kept, and records the block's
//! backward statistics and the gradient norms (see [`DepthLayer`]).

use super::Modifier;
use super::layernorm;
use super::results::{DepthLayer, DepthRun, DepthSettings, SATURATED_P};
use crate::measure::inputs::normal;
use attnlab::{
    AttnError, AttnParams, BackwardStatsMut, Init, LayerConfig, Mask, MultiHeadAttention, Par,
    StatsMut, Tokens,
};
use std::time::Instant;

/// The stack's blocks, seeded.
pub fn blocks(s: &DepthSettings) -> Result<Vec<MultiHeadAttention>, AttnError> {
    let config = LayerConfig::new(s.d_model, s.heads, s.heads, s.head_dim);
    (0..s.layers)
        .map(|l| MultiHeadAttention::init(config, Init::XavierUniform, s.seed + l as u64))
        .collect()
}

/// One stack with `modifier` and scale multiplier `t` (see the module
/// docs). `sink` and `softcap` are the modifier's values.
pub fn run(
    s: &DepthSettings,
    blocks: &[MultiHeadAttention],
    (modifier, t): (Modifier, f32),
    (softcap, sink): (f32, f32),
    par: Par,
) -> Result<DepthRun, AttnError> {
    let start = Instant::now();
    let (n, dm) = (s.n, s.d_model);
    let sinks = vec![sink; s.heads];
    let mut params = AttnParams {
        mask: Mask::Causal,
        scale: Some(t / (s.head_dim as f32).sqrt()),
        ..AttnParams::default()
    };
    match modifier {
        Modifier::Plain => {}
        Modifier::Softcap => params.softcap = Some(softcap),
        Modifier::Sinks => params.sinks = Some(&sinks),
    }
    let rows = s.heads * n;
    let mut layers = Vec::with_capacity(blocks.len());

    // Row r is query i = r % n of its head: i + 1 keys, and the sink; the
    // means are over the rows with at least two outcomes.
    let outcomes = |r: usize| r % n + 1 + usize::from(params.sinks.is_some());
    let kept: Vec<usize> = (0..rows).filter(|r| outcomes(*r) >= 2).collect();
    let over = |f: &dyn Fn(usize) -> f64| {
        kept.iter().map(|r| f(*r)).sum::<f64>() / kept.len().max(1) as f64
    };

    // Forward: the residual states and each block's forward statistics.
    let mut xs: Vec<Vec<f32>> = vec![normal(n * dm, s.seed, 100)];
    let (mut max_p, mut entropy) = (vec![0f32; rows], vec![0f32; rows]);
    for (l, block) in blocks.iter().enumerate() {
        let x = &xs[l];
        let h = layernorm::forward(x, dm, s.ln_eps).y;
        let ht = Tokens::new("x", &h, [1, n, dm])?;
        let st = StatsMut { max_p: &mut max_p, entropy: &mut entropy };
        let trace = block.forward_train_with_stats(&ht, &ht, &params, par, st)?;
        let next: Vec<f32> = x.iter().zip(&trace.y).map(|(a, b)| a + b).collect();
        xs.push(next);
        layers.push(DepthLayer {
            layer: l + 1,
            max_p: over(&|r| max_p[r] as f64),
            saturated: over(&|r| f64::from(u8::from(max_p[r] as f64 > SATURATED_P))),
            entropy: over(&|r| entropy[r] as f64),
            entropy_norm: over(&|r| entropy[r] as f64 / (outcomes(r) as f64).ln()),
            off_share: 0.0,
            grad_mass: 0.0,
            key_top1: 0.0,
            dy_rms: 0.0,
            dx_rms: 0.0,
            dx_attn_rms: 0.0,
        });
    }

    // Backward from the top: g = dL/dX_{l+1} on entry, dL/dX_l on exit.
    let mut g: Vec<f32> = normal(n * dm, s.seed, 101);
    let (mut off, mut key_grad) = (vec![0f32; rows], vec![0f32; s.heads * n]);
    for (l, block) in blocks.iter().enumerate().rev() {
        let normed = layernorm::forward(&xs[l], dm, s.ln_eps);
        let ht = Tokens::new("x", &normed.y, [1, n, dm])?;
        let trace = block.forward_train(&ht, &ht, &params, par)?;
        let st = BackwardStatsMut { off_argmax: &mut off, key_grad: &mut key_grad };
        let grads = block.backward_with_stats(&trace, &ht, &ht, &g, &params, par, st)?;
        let dy_rms = rms(&g);
        let dh = grads.dx_self();
        let dx_attn = layernorm::backward(&normed, &dh, dm);
        g.iter_mut().zip(&dx_attn).for_each(|(a, b)| *a += b);
        let layer = &mut layers[l];
        layer.off_share = over(&|r| off[r] as f64);
        layer.grad_mass = key_grad.iter().map(|v| *v as f64).sum::<f64>() / rows as f64;
        layer.key_top1 = top_share(&key_grad, n, 0.01);
        layer.dy_rms = dy_rms;
        layer.dx_rms = rms(&g);
        layer.dx_attn_rms = rms(&dx_attn);
    }
    let ms = start.elapsed().as_secs_f64() * 1e3;
    Ok(DepthRun { modifier: modifier.name().into(), t, layers, ms })
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// The share of `Σ x` held by the largest `ceil(frac·n)` values of each
/// run of `n` (one head's keys), pooled over the runs; 0 when `Σ x = 0`.
pub fn top_share(x: &[f32], n: usize, frac: f64) -> f64 {
    let k = ((frac * n as f64).ceil() as usize).clamp(1, n.max(1));
    let (mut top, mut all) = (0f64, 0f64);
    for head in x.chunks(n.max(1)) {
        let mut v: Vec<f64> = head.iter().map(|x| *x as f64).collect();
        v.sort_by(|a, b| b.total_cmp(a));
        top += v.iter().take(k).sum::<f64>();
        all += v.iter().sum::<f64>();
    }
    if all > 0.0 { top / all } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saturate::Profile;

    #[test]
    fn top_share_takes_the_largest_percent_per_head() {
        // two heads of 100 keys: one key holds 10 of 19, the other 1 of 100
        let mut x = vec![0.1f32; 200];
        x[3] = 10.0;
        x[150] = 1.0;
        let want = (10.0 + 1.0) / (10.0 + 9.9 + 1.0 + 9.9);
        assert!((top_share(&x, 100, 0.01) - want).abs() < 1e-6);
        assert_eq!(top_share(&[0.0; 8], 4, 0.01), 0.0);
    }

    /// The stack runs, its numbers are defined, and the gradient that
    /// reaches each layer includes the one above it (the residual path).
    #[test]
    fn a_tiny_stack_runs_and_its_statistics_are_defined() {
        let s = Profile::Tiny.settings().depth;
        let b = blocks(&s).unwrap();
        for m in Modifier::ALL {
            let r = run(&s, &b, (m, 4.0), (10.0, 2.0), Par::Seq).unwrap();
            assert_eq!(r.layers.len(), s.layers);
            for l in &r.layers {
                assert!(l.entropy > 0.0 && l.entropy_norm > 0.0 && l.entropy_norm <= 1.0 + 1e-5);
                assert!(l.max_p > 0.0 && l.max_p <= 1.0 && (0.0..=1.0).contains(&l.saturated));
                assert!(l.grad_mass > 0.0 && l.key_top1 > 0.0 && l.dx_rms > 0.0, "{l:?}");
                assert!(l.dx_attn_rms > 0.0);
            }
            let again = run(&s, &b, (m, 4.0), (10.0, 2.0), Par::Pool).unwrap();
            let strip = |r: &DepthRun| {
                r.layers.iter().map(|l| (l.entropy, l.dx_rms, l.grad_mass)).collect::<Vec<_>>()
            };
            assert_eq!(strip(&r), strip(&again), "{m:?}: not the same for another Par");
        }
    }
}
