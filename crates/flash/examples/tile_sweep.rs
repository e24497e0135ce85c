//! Times the flash kernel for several tile sizes on one shape, side by side
//! in one process (the machine is noisy: compare ratios, not absolutes).
//!
//! `cargo run --release -p attn-flash --example tile_sweep -- N D [causal] [threads]`

use attn_core::{
    AttentionKernel, AttnInputs, AttnParams, AttnShape, Layout, Mask, Par, TensorViewMut,
};
use attn_flash::{Flash, TileConfig};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4096);
    let d: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(128);
    let causal = args.get(3).is_some_and(|s| s == "1" || s == "causal");
    let threads: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1);
    let h = 8;
    let shape = AttnShape::builder()
        .batch(1)
        .q_heads(h)
        .kv_heads(h)
        .q_len(n)
        .kv_len(n)
        .head_dim(d)
        .v_dim(d)
        .build()
        .unwrap();
    let len = h * n * d;
    let q: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let k: Vec<f32> = (0..len).map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0).collect();
    let v: Vec<f32> = (0..len).map(|i| ((i * 15485863) % 1000) as f32 / 500.0 - 1.0).collect();
    let inp = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
    let params = AttnParams {
        mask: if causal { Mask::Causal } else { Mask::None },
        check_finite: false,
        ..Default::default()
    };
    let mut o = vec![0f32; len];
    let flops = shape.flops_conventional(&params.mask);
    let par = if threads == 1 { Par::Seq } else { Par::rayon(threads).unwrap() };
    let configs: Vec<Option<TileConfig>> = std::iter::once(None)
        .chain(
            [(64, 128), (128, 64), (128, 128), (128, 256), (192, 128), (256, 64), (256, 128)]
                .map(|(br, bc)| Some(TileConfig { br, bc })),
        )
        .collect();
    {
        for round in 0..3 {
            for t in &configs {
                let f = match t {
                    Some(t) => Flash::with_tiles(*t).unwrap(),
                    None => Flash::default(),
                };
                let mut times = vec![];
                for _ in 0..3 {
                    let mut ov =
                        TensorViewMut::new("out", &mut o, shape.out_dims(), Layout::Bhnd).unwrap();
                    let t0 = Instant::now();
                    f.forward(&inp, &mut ov, None, &params, par).unwrap();
                    times.push(t0.elapsed().as_secs_f64());
                }
                times.sort_by(f64::total_cmp);
                let s = times[1];
                println!(
                    "round {round} tiles {:>12} N={n} d={d} causal={causal} T={threads}: {:8.2} ms {:6.1} GFLOP/s",
                    t.map(|t| format!("{}x{}", t.br, t.bc)).unwrap_or("default".into()),
                    s * 1e3,
                    flops / s / 1e9
                );
            }
        }
    }
}
