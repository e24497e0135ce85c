//! The quick loop: criterion micro-benchmarks of the building blocks at
//! small sizes, one group per axis. `cargo bench --bench kernels` runs them
//! all in about two minutes (`-- micro/` or `-- forward/` to pick a
//! group); `cargo bench -p harness` is the long sweep that writes
//! `docs/results.md`.
//!
//! - `micro/qk/d{64,128}`, `micro/pv/kn{64,128}`: the two register-blocked
//!   micro-kernels alone (throughput in elements = FLOPs);
//! - `exp2/n4096`: the vector `exp2` of the online softmax;
//! - `forward/flash/{full,causal}/n{256,1024}`: one tiled forward, MHA,
//!   8 heads, d = 64, one thread;
//! - `decode/flash/{f32,f16}/l4096`: one split-KV decode step, GQA 32/8,
//!   d = 128, one thread.

use std::hint::black_box;

use attnlab::flash::hooks::{PvMicro, QkMicro};
use attnlab::flash::{KvCache, decode};
use attnlab::{
    AttnInputs, AttnParams, AttnShape, Element, Flash, Layout, Mask, Par, TensorViewMut, f16,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn seeded(n: usize, salt: usize) -> Vec<f32> {
    (0..n).map(|i| (((i * 2654435761 + salt) % 1000) as f32 / 500.0) - 1.0).collect()
}

fn micro(c: &mut Criterion) {
    let mut g = c.benchmark_group("micro");
    for d in [64, 128] {
        let m = QkMicro::new(d);
        g.throughput(Throughput::Elements(m.flops() as u64));
        g.bench_function(BenchmarkId::new("qk", format!("d{d}")), |b| {
            b.iter(|| black_box(m.run()))
        });
    }
    for kn in [64, 128] {
        let m = PvMicro::new(kn);
        g.throughput(Throughput::Elements(m.flops() as u64));
        g.bench_function(BenchmarkId::new("pv", format!("kn{kn}")), |b| {
            b.iter(|| black_box(m.run()))
        });
    }
    g.finish();
}

fn exp2(c: &mut Criterion) {
    let mut g = c.benchmark_group("exp2");
    let x = seeded(4096, 1);
    g.throughput(Throughput::Elements(x.len() as u64));
    g.bench_function("n4096", |b| {
        let mut y = x.clone();
        b.iter(|| {
            y.copy_from_slice(&x);
            black_box(exp2_sum(&mut y))
        })
    });
    g.finish();
}

/// Sum of `2^x` over a slice through the kernels' vector `exp2`.
fn exp2_sum(y: &mut [f32]) -> f32 {
    attnlab::simd::exp2_shift_sum(y, 1.0, 0.0)
}

fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward");
    g.sample_size(20);
    for (mask, name) in [(Mask::None, "full"), (Mask::Causal, "causal")] {
        for n in [256, 1024] {
            let shape = AttnShape::builder().q_heads(8).seq_len(n).head_dim(64).build().unwrap();
            let len = 8 * n * 64;
            let (q, k, v) = (seeded(len, 1), seeded(len, 2), seeded(len, 3));
            let inputs = AttnInputs::from_slices(shape, Layout::Bhnd, &q, &k, &v).unwrap();
            let params = AttnParams { mask, check_finite: false, ..Default::default() };
            let flash = Flash::default();
            let mut ws = flash.workspace(&shape, Par::Seq).unwrap();
            let mut o = vec![0f32; len];
            g.throughput(Throughput::Elements(shape.flops(&mask) as u64));
            g.bench_function(BenchmarkId::new(format!("flash/{name}"), format!("n{n}")), |b| {
                b.iter(|| {
                    let mut out =
                        TensorViewMut::new("out", &mut o, shape.out_dims(), Layout::Bhnd).unwrap();
                    flash.forward_in(&inputs, &mut out, None, &params, Par::Seq, &mut ws).unwrap()
                })
            });
        }
    }
    g.finish();
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn decode_step<T: Element>(g: &mut Group<'_>) {
    let (hq, hkv, d, len) = (32, 8, 128, 4096);
    let mut cache = KvCache::<T>::new(1, hkv, len, d, d).unwrap();
    cache.append(0, &seeded(hkv * len * d, 4), &seeded(hkv * len * d, 5)).unwrap();
    let shape = cache.query_shape(hq, 1).unwrap();
    let q = seeded(hq * d, 6);
    let mut out = vec![0f32; hq * d];
    let params = AttnParams { mask: Mask::Causal, check_finite: false, ..Default::default() };
    g.throughput(Throughput::Bytes(cache.bytes_in_use() as u64));
    g.bench_function(BenchmarkId::new(format!("flash/{}", T::NAME), format!("l{len}")), |b| {
        b.iter(|| decode(&cache, &shape, &q, &mut out, None, &params, Par::Seq).unwrap())
    });
}

fn decode_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.sample_size(30);
    decode_step::<f32>(&mut g);
    decode_step::<f16>(&mut g);
    g.finish();
}

criterion_group!(benches, micro, exp2, forward, decode_bench);
criterion_main!(benches);
