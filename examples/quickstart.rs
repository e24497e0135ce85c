//! The README's example: GQA causal attention with the default (flash) kernel.
//! `cargo run --release --example quickstart`
use attnlab::{AttnParams, AttnShape, attention};

fn main() -> Result<(), attnlab::AttnError> {
    // batch 1, 8 query heads sharing 2 K/V heads, 512 tokens, head dim 64
    let shape = AttnShape::builder().q_heads(8).kv_heads(2).seq_len(512).head_dim(64).build()?;
    let q: Vec<f32> = (0..8 * 512 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
    let kv: Vec<f32> = (0..2 * 512 * 64).map(|i| (i as f32 * 0.11).cos()).collect();
    let r = attention(&shape, &q, &kv, &kv, &AttnParams::causal())?; // [B, H, N, D] layout
    println!("out[0..4] = {:?}, lse[0] = {}", &r.out[..4], r.lse[0]);
    Ok(())
}
