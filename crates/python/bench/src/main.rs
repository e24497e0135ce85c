//! `attnlab-python-bench B HQ HKV N D CAUSAL THREADS WARMUP REPS`: times
//! `attnlab::attention_with` (the facade call, output allocated as
//! `attnlab.attention` allocates it) on seeded f32 `[B, H, N, D]` inputs and
//! prints one `time_ms=` line per timed call, for `bench/compare.py`.

use std::time::Instant;

use attnlab::{AttnParams, AttnShape, Mask, Options, Par, attention_with};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse()).collect::<Result<_, _>>()?;
    let [b, hq, hkv, n, d, causal, threads, warmup, reps] = a[..] else {
        return Err("usage: B HQ HKV N D CAUSAL THREADS WARMUP REPS".into());
    };
    let shape =
        AttnShape::builder().batch(b).q_heads(hq).kv_heads(hkv).seq_len(n).head_dim(d).build()?;
    // A cheap deterministic fill in [-1, 1): timing does not depend on it.
    let fill = |len: usize, seed: u64| -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    };
    let q = fill(b * hq * n * d, 1);
    let (k, v) = (fill(b * hkv * n * d, 2), fill(b * hkv * n * d, 3));
    let mask = if causal == 1 { Mask::Causal } else { Mask::None };
    let params = AttnParams::with_mask(mask);
    let options = Options { par: Par::rayon(threads)?, ..Default::default() };
    for i in 0..warmup + reps {
        let t = Instant::now();
        let r = attention_with(&shape, &q, &k, &v, &params, &options)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        std::hint::black_box(&r);
        if i >= warmup {
            println!("time_ms={ms:.4}");
        }
    }
    Ok(())
}
