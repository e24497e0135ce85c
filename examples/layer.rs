//! The README's layer example: a GQA attention layer — causal forward,
//! a few gradient steps towards a teacher layer, then incremental decoding
//! over a KV cache that reproduces the causal forward.
//! `cargo run --release --example layer`
use attnlab::{AttnParams, Init, LayerConfig, MultiHeadAttention, Par, Tokens};

fn main() -> Result<(), attnlab::AttnError> {
    // d_model 64; 8 query heads of dim 16 share 2 K/V heads; with biases.
    let config = LayerConfig::new(64, 8, 2, 16).with_bias(true);
    let mut student = MultiHeadAttention::init(config, Init::XavierUniform, 1)?;
    let teacher = MultiHeadAttention::init(config, Init::KaimingUniform, 2)?;

    // batch 4, 32 tokens, token-major [B, N, d_model]
    let (batch, n) = (4, 32);
    let x: Vec<f32> = (0..batch * n * 64).map(|i| (i as f32 * 0.618).sin()).collect();
    let x = Tokens::new("x", &x, [batch, n, 64])?;
    let causal = AttnParams::causal();
    let target = teacher.forward(&x, &x, &causal, Par::Pool)?;

    // Plain gradient descent on ½‖Y − target‖² / (B·N): forward_train keeps
    // the activations, backward returns dW, db (and dX for the layer below).
    for step in 0..=40 {
        let trace = student.forward_train(&x, &x, &causal, Par::Pool)?;
        let scale = 1.0 / (batch * n) as f32;
        let dy: Vec<f32> = trace.y.iter().zip(&target).map(|(y, t)| (y - t) * scale).collect();
        let loss: f32 = dy.iter().map(|d| d * d).sum::<f32>() / (2.0 * scale);
        if step % 10 == 0 {
            println!("step {step:2}: loss {loss:.5}");
        }
        let grads = student.backward(&trace, &x, &x, &dy, &causal, Par::Pool)?;
        let mut w = student.weights().clone();
        for ((_, p), (_, g)) in w.tensors_mut().zip(grads.weights.tensors()) {
            p.iter_mut().zip(g).for_each(|(p, g)| *p -= 0.05 * g);
        }
        student.set_weights(w)?;
    }

    // Incremental decoding: prefill 24 tokens, then one token at a time.
    let full = student.forward(&x, &x, &causal, Par::Pool)?;
    let mut cache = student.kv_cache::<f32>(batch, n)?;
    let tokens = |from: usize, to: usize| -> Vec<f32> {
        (0..batch).flat_map(|b| x.data()[(b * n + from) * 64..(b * n + to) * 64].to_vec()).collect()
    };
    let prompt = tokens(0, 24);
    student.prefill(
        &mut cache,
        &Tokens::new("x", &prompt, [batch, 24, 64])?,
        &causal,
        Par::Pool,
    )?;
    let mut worst = 0f32;
    for t in 24..n {
        let next = tokens(t, t + 1);
        let y = student.step(
            &mut cache,
            &Tokens::new("x", &next, [batch, 1, 64])?,
            &causal,
            Par::Pool,
        )?;
        for b in 0..batch {
            let want = &full[(b * n + t) * 64..(b * n + t + 1) * 64];
            let got = &y[b * 64..(b + 1) * 64];
            worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
        }
    }
    println!(
        "decode: {} cached positions per sequence, max |step − forward| = {worst:.2e}",
        cache.lens()[0]
    );
    Ok(())
}
