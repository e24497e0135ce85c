//! Machine facts and `attn peak`: what the sweep ran on, measured in the
//! same run.
//!
//! - [`MachineInfo::collect`]: CPU model, logical CPUs, caches (sysfs),
//!   physical memory, the ISA compiled in (`cfg!(target_feature)`) and the
//!   one detected at run time, rustc version, git commit, date.
//! - [`measure_peak`]: own microbenchmarks of the f32 FMA peak (16
//!   independent `vfmadd` chains per thread, AVX-512 when the CPU has it,
//!   else AVX2+FMA, an FMA = 2 flops) and of the read bandwidth (a
//!   vectorized sum over a 256 MiB array, 8x a 32 MiB L3), each for one
//!   thread and for all threads. Each figure is the best of several
//!   repetitions: noise on a shared machine can only lower it, and a low
//!   peak would inflate every "% of peak".
//! - `/proc` helpers for peak RSS: [`reset_hwm`], [`vm_hwm`], [`vm_rss`].

use serde::{Deserialize, Serialize};
use std::process::{Command, ExitCode};
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `attn peak` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct PeakArgs {
    /// Print one JSON object (`fma_gflops_1t`, `fma_gflops_all`,
    /// `read_gbs_1t`, `read_gbs_all`, ...) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Threads for the "all" figures (default: every logical CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Fewer, shorter repetitions (about 0.5 s instead of 2 s).
    #[arg(long)]
    pub quick: bool,
}

/// Entry point of `attn peak`.
pub fn peak_main(args: &PeakArgs) -> ExitCode {
    crate::sweep::warn_if_unoptimized("attn peak");
    let threads = args.threads.unwrap_or_else(logical_cpus).max(1);
    let opts = if args.quick { PeakOptions::quick(threads) } else { PeakOptions::new(threads) };
    let p = measure_peak(&opts);
    if args.json {
        match serde_json::to_string(&p) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("attn peak: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("FMA peak ({}):", p.fma_method);
        println!("  1 thread:    {:8.1} GFLOP/s", p.fma_gflops_1t);
        println!("  {} threads: {:8.1} GFLOP/s", p.threads_all, p.fma_gflops_all);
        println!("Read bandwidth ({}):", p.read_method);
        println!("  1 thread:    {:8.1} GB/s", p.read_gbs_1t);
        println!("  {} threads: {:8.1} GB/s", p.threads_all, p.read_gbs_all);
    }
    ExitCode::SUCCESS
}

/// Logical CPUs this process may use.
pub fn logical_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// One cache level as sysfs describes it for CPU 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheInfo {
    /// 1, 2, 3.
    pub level: u32,
    /// "Data", "Instruction" or "Unified".
    pub kind: String,
    /// Size of one instance in bytes.
    pub size_bytes: u64,
    /// Logical CPUs sharing one instance.
    pub shared_by: u32,
}

/// What the run ran on and with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineInfo {
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// Logical CPUs available to the process ("all cores" in the sweep).
    pub logical_cpus: usize,
    /// Caches of CPU 0.
    pub caches: Vec<CacheInfo>,
    /// Physical memory (MemTotal), bytes.
    pub mem_total_bytes: u64,
    /// Compiled with `target_feature = "avx512f"`.
    pub compiled_avx512f: bool,
    /// Compiled with `target_feature = "fma"`.
    pub compiled_fma: bool,
    /// Compiled with `target_feature = "avx2"`.
    pub compiled_avx2: bool,
    /// SIMD features the CPU reports at run time (subset of interest).
    pub cpu_features: Vec<String>,
    /// `rustc --version` of the toolchain on PATH (the one cargo used).
    pub rustc: String,
    /// `git rev-parse HEAD`, with `-dirty` when the tree has changes.
    pub git_commit: String,
    /// Kernel release.
    pub os: String,
    /// UTC time when collected, `YYYY-MM-DD HH:MM:SS UTC`.
    pub date_utc: String,
}

impl MachineInfo {
    /// Collects the facts of this machine (cheap: files and two commands).
    pub fn collect() -> MachineInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        MachineInfo {
            cpu_model,
            logical_cpus: logical_cpus(),
            caches: caches(),
            mem_total_bytes: meminfo("MemTotal").unwrap_or(0),
            compiled_avx512f: cfg!(target_feature = "avx512f"),
            compiled_fma: cfg!(target_feature = "fma"),
            compiled_avx2: cfg!(target_feature = "avx2"),
            cpu_features: cpu_features(),
            rustc: command_line("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
            git_commit: git_commit(),
            os: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| format!("Linux {}", s.trim()))
                .unwrap_or_else(|_| std::env::consts::OS.to_string()),
            date_utc: utc_now(),
        }
    }

    /// A short file-name-safe name of the machine, e.g. `amd-epyc-2c`.
    pub fn slug(&self) -> String {
        let mut s: String = self
            .cpu_model
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        while s.contains("--") {
            s = s.replace("--", "-");
        }
        format!("{}-{}c", s.trim_matches('-'), self.logical_cpus)
    }

    /// "L1d 32 KiB, L2 1 MiB, L3 32 MiB (shared by 2)".
    pub fn cache_summary(&self) -> String {
        let parts: Vec<String> = self
            .caches
            .iter()
            .filter(|c| c.kind != "Instruction")
            .map(|c| {
                let name = if c.kind == "Data" {
                    format!("L{}d", c.level)
                } else {
                    format!("L{}", c.level)
                };
                let shared = if c.shared_by > 1 {
                    format!(" (shared by {})", c.shared_by)
                } else {
                    "".into()
                };
                format!("{name} {}{shared}", fmt_bytes(c.size_bytes as f64))
            })
            .collect();
        parts.join(", ")
    }
}

/// Measured limits of the machine.
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
        PeakOptions { threads, reps: 5, fma_iters: 20_000_000, read_len: 64 << 20 }
    }
    /// About 0.5 s: for `attn bench` and tests.
    pub fn quick(threads: usize) -> Self {
        PeakOptions { threads, reps: 3, fma_iters: 4_000_000, read_len: 16 << 20 }
    }
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

fn caches() -> Vec<CacheInfo> {
    let mut out = Vec::new();
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok();
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
        else {
            break;
        };
        let size = size.trim();
        let bytes = if let Some(k) = size.strip_suffix('K') {
            k.parse::<u64>().unwrap_or(0) << 10
        } else if let Some(m) = size.strip_suffix('M') {
            m.parse::<u64>().unwrap_or(0) << 20
        } else {
            size.parse().unwrap_or(0)
        };
        let shared_by = read("shared_cpu_list").map(|s| cpu_list_len(s.trim())).unwrap_or(1);
        out.push(CacheInfo {
            level: level.trim().parse().unwrap_or(0),
            kind: kind.trim().to_string(),
            size_bytes: bytes,
            shared_by,
        });
    }
    out
}

/// Number of CPUs in a sysfs list such as `0-3,8`.
fn cpu_list_len(s: &str) -> u32 {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('-') {
            Some((a, b)) => {
                b.parse::<u32>().unwrap_or(0).saturating_sub(a.parse().unwrap_or(0)) + 1
            }
            None => 1,
        })
        .sum::<u32>()
        .max(1)
}

fn cpu_features() -> Vec<String> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($f) {
                    v.push($f.to_string());
                }
            )*};
        }
        probe!(
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512bf16",
            "avx512fp16"
        );
    }
    v
}

/// A field of /proc/meminfo in bytes.
pub fn meminfo(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    proc_kib(&s, field)
}

fn proc_kib(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.split(':').next() == Some(field))?;
    let kib: u64 = line.split(':').nth(1)?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Resident-set high-water mark of this process (VmHWM), bytes.
pub fn vm_hwm() -> Option<u64> {
    proc_kib(&std::fs::read_to_string("/proc/self/status").ok()?, "VmHWM")
}

/// Resident set of this process now (VmRSS), bytes.
pub fn vm_rss() -> Option<u64> {
    proc_kib(&std::fs::read_to_string("/proc/self/status").ok()?, "VmRSS")
}

/// Resets VmHWM to the current RSS (writes "5" to /proc/self/clear_refs).
/// Returns false where the kernel does not allow it.
pub fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let Some(head) = command_line("git", &["-C", dir, "rev-parse", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = command_line("git", &["-C", dir, "status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    if dirty { format!("{head}-dirty") } else { head }
}

/// Current UTC time, `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// Current UTC time for file names, `YYYYMMDDTHHMMSSZ`.
pub fn utc_stamp() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// Unix seconds to (year, month, day, hour, minute, second), UTC
/// (H. Hinnant's days-to-civil algorithm).
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, (rem / 3600) as u32, (rem % 3600 / 60) as u32, (rem % 60) as u32)
}

/// Bytes in binary units: "512 B", "1.5 KiB", "8.00 GiB".
pub fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else if v.abs() >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else if v.abs() >= 10.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        // 2024-02-29 12:34:56 UTC
        assert_eq!(civil(1_709_210_096), (2024, 2, 29, 12, 34, 56));
    }

    #[test]
    fn cpu_lists_and_bytes() {
        assert_eq!(cpu_list_len("0-1"), 2);
        assert_eq!(cpu_list_len("0"), 1);
        assert_eq!(cpu_list_len("0-3,8"), 5);
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(8.0 * (1u64 << 30) as f64), "8.00 GiB");
        assert_eq!(fmt_bytes(1.5 * 1024.0), "1.50 KiB");
    }

    #[test]
    fn proc_fields_parse() {
        let s = "Name:\tx\nVmHWM:\t  1024 kB\nVmRSS:\t 512 kB\n";
        assert_eq!(proc_kib(s, "VmHWM"), Some(1 << 20));
        assert_eq!(proc_kib(s, "VmRSS"), Some(512 << 10));
        assert_eq!(proc_kib(s, "Vm"), None);
    }

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
