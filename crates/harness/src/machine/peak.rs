//! The machine's measured limits, with our own microbenchmarks: the f32
//! FMA peak (16 independent `vfmadd` chains per thread, AVX-512 when the
//! CPU has it, else AVX2+FMA, an FMA = 2 flops) and the read bandwidth (a
//! vectorized sum over an array at least four times the last-level cache,
//! STREAM's rule, and at least 256 MiB; 64 MiB for the quick figure of
//! `attn bench`/`attn decode`, when that is still 4x the LLC), each for one
//! thread and for all threads. Each figure is the best of several
//! repetitions: noise on a shared machine can only lower it, and a low
//! peak would inflate every "% of peak".

use crate::units::fmt_bytes;
use serde::{Deserialize, Serialize};
use std::sync::Barrier;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// f32 FMA peak of one thread, GFLOP/s.
    pub fma_gflops_1t: f64,
    /// f32 FMA peak of `threads_all` threads, GFLOP/s.
    pub fma_gflops_all: f64,
    /// Read bandwidth of one thread, GB/s (1e9 bytes).
    pub read_gbs_1t: f64,
    /// Read bandwidth of `threads_all` threads, GB/s.
    pub read_gbs_all: f64,
    /// Thread count of the "all" figures.
    pub threads_all: usize,
    /// How the FMA peak was measured.
    pub fma_method: String,
    /// How the bandwidth was measured.
    pub read_method: String,
    /// Every repetition, `[fma 1t, fma all, read 1t, read all]`.
    pub reps: [Vec<f64>; 4],
}

impl Peak {
    /// The better of two measurements, figure by figure (noise only lowers
    /// a peak), with the repetitions of both.
    pub fn best_of(&self, other: &Peak) -> Peak {
        let cat = |a: &Vec<f64>, b: &Vec<f64>| a.iter().chain(b).copied().collect::<Vec<f64>>();
        Peak {
            fma_gflops_1t: self.fma_gflops_1t.max(other.fma_gflops_1t),
            fma_gflops_all: self.fma_gflops_all.max(other.fma_gflops_all),
            read_gbs_1t: self.read_gbs_1t.max(other.read_gbs_1t),
            read_gbs_all: self.read_gbs_all.max(other.read_gbs_all),
            threads_all: self.threads_all,
            fma_method: self.fma_method.clone(),
            read_method: self.read_method.clone(),
            reps: [
                cat(&self.reps[0], &other.reps[0]),
                cat(&self.reps[1], &other.reps[1]),
                cat(&self.reps[2], &other.reps[2]),
                cat(&self.reps[3], &other.reps[3]),
            ],
        }
    }

    /// Read bandwidth for `threads` threads, GB/s: the 1-thread figure for
    /// 1, the all-threads one for `threads_all`, linear in between.
    pub fn read_gbs(&self, threads: usize) -> f64 {
        if threads <= 1 || self.threads_all <= 1 {
            self.read_gbs_1t
        } else if threads >= self.threads_all {
            self.read_gbs_all
        } else {
            let f = (threads - 1) as f64 / (self.threads_all - 1) as f64;
            self.read_gbs_1t + f * (self.read_gbs_all - self.read_gbs_1t)
        }
    }

    /// FMA peak for `threads` threads: the 1-thread figure for 1, the
    /// all-threads one for `threads_all`, linear in between.
    pub fn fma_gflops(&self, threads: usize) -> f64 {
        if threads <= 1 || self.threads_all <= 1 {
            self.fma_gflops_1t
        } else if threads >= self.threads_all {
            self.fma_gflops_all
        } else {
            let f = (threads - 1) as f64 / (self.threads_all - 1) as f64;
            self.fma_gflops_1t + f * (self.fma_gflops_all - self.fma_gflops_1t)
        }
    }
}

/// Sizes of the peak microbenchmarks.
#[derive(Debug, Clone)]
pub struct PeakOptions {
    /// Thread count of the "all" figures.
    pub threads: usize,
    /// Repetitions per figure (the best is kept).
    pub reps: usize,
    /// FMA loop iterations per repetition (16 FMAs each).
    pub fma_iters: u64,
    /// Elements of the bandwidth array (f32).
    pub read_len: usize,
}

impl PeakOptions {
    /// About 2 s in all on a 2-core Zen 4.
    pub fn new(threads: usize) -> Self {
        PeakOptions { threads, reps: 5, fma_iters: 20_000_000, read_len: read_len(256 << 20) }
    }
    /// About 0.5 s: for `attn bench` and tests.
    pub fn quick(threads: usize) -> Self {
        PeakOptions { threads, reps: 3, fma_iters: 4_000_000, read_len: read_len(64 << 20) }
    }
}

/// f32 elements of a bandwidth array of at least `min_bytes` and at least
/// four times the largest cache the CPU reports (STREAM's rule: a smaller
/// array is partly served from cache and inflates the figure).
fn read_len(min_bytes: u64) -> usize {
    let llc = super::facts::caches().iter().map(|c| c.size_bytes).max().unwrap_or(0);
    (min_bytes.max(4 * llc) / 4) as usize
}

/// Measures the FMA peak and the read bandwidth (see the module docs).
pub fn measure_peak(opts: &PeakOptions) -> Peak {
    let all = opts.threads.max(1);
    let method = fma_method();
    let flops_per_call = opts.fma_iters as f64 * FMAS_PER_ITER as f64 * method.lanes() as f64 * 2.0;
    let fma = |threads: usize| -> Vec<f64> {
        parallel_time(threads, |_| {
            std::hint::black_box(fma_chains(method, opts.fma_iters / 4));
        }); // warm-up, clock ramp
        (0..opts.reps)
            .map(|_| {
                let t = parallel_time(threads, |_| {
                    std::hint::black_box(fma_chains(method, opts.fma_iters));
                });
                threads as f64 * flops_per_call / t.as_secs_f64() * 1e-9
            })
            .collect()
    };
    let fma1 = fma(1);
    let fma_all = if all > 1 { fma(all) } else { fma1.clone() };

    // Bandwidth: one array, first touched by all threads, each thread
    // summing its own contiguous part.
    let n = opts.read_len;
    let data: Vec<f32> = vec![1.0f32; n];
    let read = |threads: usize| -> Vec<f64> {
        let chunk = n.div_ceil(threads);
        let run = |t: usize| {
            let lo = (t * chunk).min(n);
            let hi = ((t + 1) * chunk).min(n);
            std::hint::black_box(sum(&data[lo..hi]));
        };
        parallel_time(threads, run); // warm-up
        (0..opts.reps)
            .map(|_| (n * 4) as f64 / parallel_time(threads, run).as_secs_f64() * 1e-9)
            .collect()
    };
    let read1 = read(1);
    let read_all = if all > 1 { read(all) } else { read1.clone() };
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    Peak {
        fma_gflops_1t: best(&fma1),
        fma_gflops_all: best(&fma_all),
        read_gbs_1t: best(&read1),
        read_gbs_all: best(&read_all),
        threads_all: all,
        fma_method: format!(
            "{} f32, {FMAS_PER_ITER} independent chains per thread, FMA = 2 flops, best of {}",
            method.name(),
            opts.reps
        ),
        read_method: format!(
            "vectorized sum over a {} f32 array, best of {}",
            fmt_bytes((n * 4) as f64),
            opts.reps
        ),
        reps: [fma1, fma_all, read1, read_all],
    }
}

/// Wall time from a common start (barrier) to the last thread's finish.
fn parallel_time(threads: usize, f: impl Fn(usize) + Sync) -> Duration {
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (b, f) = (&barrier, &f);
                s.spawn(move || {
                    b.wait();
                    let t0 = Instant::now();
                    f(t);
                    (t0, Instant::now())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("peak thread panicked")).collect()
    });
    let start = spans.iter().map(|s| s.0).min().expect("at least one thread");
    let end = spans.iter().map(|s| s.1).max().expect("at least one thread");
    end - start
}

/// Sum with 64 independent lanes, which LLVM vectorizes (no reassociation
/// needed): the loop is load-bound.
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 64];
    let (chunks, rest) = x.as_chunks::<64>();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += *v;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

const FMAS_PER_ITER: usize = 16;

#[derive(Debug, Clone, Copy)]
enum FmaMethod {
    Avx512,
    Avx2,
    Scalar,
}

impl FmaMethod {
    fn name(self) -> &'static str {
        match self {
            FmaMethod::Avx512 => "AVX-512 vfmadd (zmm)",
            FmaMethod::Avx2 => "AVX2 vfmadd (ymm)",
            FmaMethod::Scalar => "scalar mul_add",
        }
    }
    fn lanes(self) -> usize {
        match self {
            FmaMethod::Avx512 => 16,
            FmaMethod::Avx2 => 8,
            FmaMethod::Scalar => 1,
        }
    }
}

fn fma_method() -> FmaMethod {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return FmaMethod::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return FmaMethod::Avx2;
        }
    }
    FmaMethod::Scalar
}

fn fma_chains(method: FmaMethod, iters: u64) -> f32 {
    match method {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is chosen only when the CPU reports avx512f.
        FmaMethod::Avx512 => unsafe { x86::fma512(iters) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is chosen only when the CPU reports avx2 and fma.
        FmaMethod::Avx2 => unsafe { x86::fma256(iters) },
        _ => {
            let mut x = [0f32; FMAS_PER_ITER];
            for (i, v) in x.iter_mut().enumerate() {
                *v = i as f32;
            }
            let m = std::hint::black_box(0.999_999f32);
            let a = std::hint::black_box(1e-7f32);
            for _ in 0..iters {
                for v in x.iter_mut() {
                    *v = v.mul_add(m, a);
                }
            }
            std::hint::black_box(x.iter().sum())
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    macro_rules! chains {
        ($set1:ident, $fmadd:ident, $add:ident, $store:ident, $ty:ty, $lanes:expr, $iters:expr) => {{
            let m = $set1(std::hint::black_box(0.999_999f32));
            let a = $set1(std::hint::black_box(1e-7f32));
            let mut x: [$ty; super::FMAS_PER_ITER] =
                std::array::from_fn(|i| $set1(std::hint::black_box(i as f32)));
            for _ in 0..$iters {
                // 16 independent dependency chains: with a 4-cycle latency
                // and 2 FMA pipes, 8 would do; 16 leaves no doubt.
                for v in x.iter_mut() {
                    *v = $fmadd(*v, m, a);
                }
            }
            let mut s = x[0];
            for v in &x[1..] {
                s = $add(s, *v);
            }
            let mut out = [0f32; $lanes];
            // SAFETY: `out` holds exactly one vector of f32.
            unsafe { $store(out.as_mut_ptr(), s) };
            std::hint::black_box(out.iter().sum::<f32>())
        }};
    }

    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma512(iters: u64) -> f32 {
        chains!(_mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, _mm512_storeu_ps, __m512, 16, iters)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn fma256(iters: u64) -> f32 {
        chains!(_mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, _mm256_storeu_ps, __m256, 8, iters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_interpolates_threads() {
        let p = Peak {
            fma_gflops_1t: 100.0,
            fma_gflops_all: 300.0,
            read_gbs_1t: 1.0,
            read_gbs_all: 2.0,
            threads_all: 3,
            fma_method: String::new(),
            read_method: String::new(),
            reps: Default::default(),
        };
        assert_eq!(p.fma_gflops(1), 100.0);
        assert_eq!(p.fma_gflops(2), 200.0);
        assert_eq!(p.fma_gflops(8), 300.0);
    }
}
