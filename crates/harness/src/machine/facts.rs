//! What a run ran on and with: CPU model, logical CPUs, caches (sysfs),
//! physical memory, the ISA compiled in (`cfg!(target_feature)`) and the
//! one detected at run time, rustc version, git commit, date.

use super::{clock::utc_now, procfs::meminfo};
use crate::units::fmt_bytes;
use attnlab::cpu::{Vendor, core_name, cpu_list_len, parse_size};
use serde::{Deserialize, Serialize};
use std::process::Command;

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
    /// Vendor, family and model of /proc/cpuinfo, with the core's name
    /// where known (`AuthenticAMD family 26 model 2 (Zen 5)`): the model
    /// name alone ("AMD EPYC") does not say which core runs the kernels.
    #[serde(default)]
    pub cpu_id: String,
    /// What the kernels read of the CPU to choose their tiles
    /// ([`attnlab::cpu::CpuFacts::summary`]: caches, vector datapath);
    /// empty in files from before it was recorded.
    #[serde(default)]
    pub cpu_facts: String,
    /// Logical CPUs available to the process ("all cores" in the sweep).
    pub logical_cpus: usize,
    /// Caches of CPU 0.
    pub caches: Vec<CacheInfo>,
    /// Physical memory (MemTotal), bytes.
    pub mem_total_bytes: u64,
    /// What the kernels were compiled for (`attnlab::isa::compiled()`).
    #[serde(default)]
    pub compiled_isa: String,
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

/// `vendor family F model M (core)` from /proc/cpuinfo's first CPU.
pub fn cpu_id(cpuinfo: &str) -> String {
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let (vendor, family, model) = (field("vendor_id"), field("cpu family"), field("model"));
    let v = match vendor.as_str() {
        "AuthenticAMD" => Vendor::Amd,
        "GenuineIntel" => Vendor::Intel,
        _ => Vendor::Other,
    };
    let core = match (family.parse::<u32>(), model.parse::<u32>()) {
        (Ok(f), Ok(m)) => core_name(v, f, m),
        _ => None,
    };
    let mut s = format!("{vendor} family {family} model {model}");
    if let Some(c) = core {
        s.push_str(&format!(" ({c})"));
    }
    s
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
            cpu_id: cpu_id(&cpuinfo),
            cpu_facts: attnlab::cpu::facts().summary(),
            compiled_isa: attnlab::isa::compiled(),
            logical_cpus: logical_cpus(),
            caches: caches(),
            mem_total_bytes: meminfo("MemTotal").unwrap_or(0),
            compiled_avx512f: cfg!(target_feature = "avx512f"),
            compiled_fma: cfg!(target_feature = "fma"),
            compiled_avx2: cfg!(target_feature = "avx2"),
            cpu_features: attnlab::cpu::facts().features.iter().map(|f| f.to_string()).collect(),
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

pub(crate) fn caches() -> Vec<CacheInfo> {
    let mut out = Vec::new();
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok();
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
        else {
            break;
        };
        let bytes = parse_size(&size).unwrap_or(0);
        let shared_by = read("shared_cpu_list").and_then(|s| cpu_list_len(&s)).unwrap_or(1);
        out.push(CacheInfo {
            level: level.trim().parse().unwrap_or(0),
            kind: kind.trim().to_string(),
            size_bytes: bytes,
            shared_by,
        });
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ids_name_the_core() {
        let info = |v: &str, f: u32, m: u32| {
            format!("vendor_id\t: {v}\ncpu family\t: {f}\nmodel\t\t: {m}\nmodel name\t: X\n")
        };
        assert_eq!(cpu_id(&info("AuthenticAMD", 26, 2)), "AuthenticAMD family 26 model 2 (Zen 5)");
        assert_eq!(
            cpu_id(&info("GenuineIntel", 6, 207)),
            "GenuineIntel family 6 model 207 (Emerald Rapids)"
        );
        assert_eq!(cpu_id(&info("Other", 1, 2)), "Other family 1 model 2");
    }
}
