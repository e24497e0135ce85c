//! What the running CPU is, read once per process ([`facts`]): vendor,
//! family and model, the brand string, the data-cache sizes of one core and
//! the vector datapath. The kernels choose their tiles from these
//! (`attn_flash::tiles`); the harness records them with every result.
//!
//! Caches come from `/sys/devices/system/cpu/cpu0/cache/index*/` (Linux),
//! else from `cpuid` (leaf 4 on Intel, `0x8000_001D` on AMD, the
//! deterministic cache parameters), else stay unknown and the callers
//! assume a Zen 4-sized core (32 KiB L1d, 1 MiB L2).

use std::path::Path;
use std::sync::OnceLock;

/// CPU vendor, from `cpuid` leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vendor {
    /// `GenuineIntel`.
    Intel,
    /// `AuthenticAMD`.
    Amd,
    /// Anything else, or not x86-64.
    Other,
}

/// How the core executes the 512-bit vectors the kernels are written in
/// (`wide::f32x16`): what one cycle of f32 FMA throughput looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datapath {
    /// No AVX-512 at run time (AVX2 or narrower, or not x86-64): an
    /// `f32x16` is two or more registers.
    Narrow,
    /// AVX-512 executed on 256-bit units, two halves per instruction: AMD
    /// Zen 4, and the Zen 5 mobile parts (Strix Point, Krackan Point).
    Avx512Halves,
    /// AVX-512 with one 512-bit FMA unit: Intel client cores (Ice Lake,
    /// Tiger Lake, Rocket Lake), and any AVX-512 CPU not recognised below.
    Avx512OnePort,
    /// AVX-512 with two full 512-bit FMA units: Intel Xeon from Skylake-SP
    /// to Granite Rapids (some low-bin Skylake/Cascade Lake Xeons have
    /// one), AMD Zen 5 desktop and server parts.
    Avx512TwoPorts,
}

impl Datapath {
    /// A short name for results: `avx512 2x512`, `avx512 on 256-bit halves`, ...
    pub fn name(&self) -> &'static str {
        match self {
            Datapath::Narrow => "no avx512",
            Datapath::Avx512Halves => "avx512 on 256-bit halves",
            Datapath::Avx512OnePort => "avx512 1x512 fma",
            Datapath::Avx512TwoPorts => "avx512 2x512 fma",
        }
    }
}

/// Data caches of one core (CPU 0), bytes per instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caches {
    /// L1 data cache.
    pub l1d: Option<u64>,
    /// L2 (unified).
    pub l2: Option<u64>,
    /// Last-level L3 (unified), one instance.
    pub l3: Option<u64>,
    /// Logical CPUs sharing one L3 instance.
    pub l3_shared_by: Option<u32>,
}

impl Caches {
    /// Whether any level is known.
    pub fn is_empty(&self) -> bool {
        self.l1d.is_none() && self.l2.is_none() && self.l3.is_none()
    }
}

/// Everything [`facts`] reads about the running CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuFacts {
    /// Vendor.
    pub vendor: Vendor,
    /// Display family (base + extended family), 0 off x86-64.
    pub family: u32,
    /// Display model (with the extended model), 0 off x86-64.
    pub model: u32,
    /// Brand string (`cpuid` 0x8000_0002..4), e.g. `AMD EPYC`; empty where unknown.
    pub brand: String,
    /// Data caches of one core.
    pub caches: Caches,
    /// Where the cache sizes came from: `sysfs`, `cpuid` or `none`.
    pub cache_source: &'static str,
    /// How 512-bit vectors execute.
    pub datapath: Datapath,
    /// Vector features detected at run time (`is_x86_feature_detected!`),
    /// those that matter to the kernels.
    pub features: Vec<&'static str>,
}

/// The facts of the running CPU, read on first use and cached for the
/// process (the kernels ask on every call).
pub fn facts() -> &'static CpuFacts {
    static FACTS: OnceLock<CpuFacts> = OnceLock::new();
    FACTS.get_or_init(CpuFacts::detect)
}

impl CpuFacts {
    /// Reads this CPU's facts (`cpuid`, `is_x86_feature_detected!`, sysfs).
    /// Use [`facts`], which caches them.
    pub fn detect() -> CpuFacts {
        let id = x86::identify();
        let features = x86::features();
        let (caches, cache_source) =
            match sysfs_caches(Path::new("/sys/devices/system/cpu/cpu0/cache")) {
                Some(c) => (c, "sysfs"),
                None => match x86::cpuid_caches(id.vendor) {
                    Some(c) => (c, "cpuid"),
                    None => (Caches::default(), "none"),
                },
            };
        let avx512f = features.contains(&"avx512f");
        CpuFacts {
            vendor: id.vendor,
            family: id.family,
            model: id.model,
            brand: id.brand,
            caches,
            cache_source,
            datapath: datapath(id.vendor, id.family, id.model, avx512f),
            features,
        }
    }

    /// The core's microarchitecture where known (`Zen 5`, `Sapphire Rapids`).
    pub fn core(&self) -> Option<&'static str> {
        core_name(self.vendor, self.family, self.model)
    }

    /// `AuthenticAMD family 26 model 2 (Zen 5)`.
    pub fn id(&self) -> String {
        let vendor = match self.vendor {
            Vendor::Intel => "GenuineIntel",
            Vendor::Amd => "AuthenticAMD",
            Vendor::Other => std::env::consts::ARCH,
        };
        let mut s = format!("{vendor} family {} model {}", self.family, self.model);
        if let Some(c) = self.core() {
            s.push_str(&format!(" ({c})"));
        }
        s
    }

    /// One line for logs and results: brand, id, caches, datapath.
    pub fn summary(&self) -> String {
        let kib = |b: Option<u64>| match b {
            Some(b) if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
            Some(b) => format!("{} KiB", b >> 10),
            None => "?".into(),
        };
        let brand = if self.brand.is_empty() { "unknown CPU" } else { &self.brand };
        format!(
            "{brand}, {}; L1d {}, L2 {}, L3 {}; {}",
            self.id(),
            kib(self.caches.l1d),
            kib(self.caches.l2),
            kib(self.caches.l3),
            self.datapath.name()
        )
    }
}

/// The microarchitecture of a (vendor, family, model), for the CPUs this
/// project has met or names in its notes.
pub fn core_name(vendor: Vendor, family: u32, model: u32) -> Option<&'static str> {
    Some(match (vendor, family, model) {
        (Vendor::Amd, 25, 0x10..=0x1f | 0x60..=0x7f | 0xa0..=0xaf) => "Zen 4",
        (Vendor::Amd, 25, _) => "Zen 3",
        (Vendor::Amd, 26, _) => "Zen 5",
        (Vendor::Intel, 6, 85) => "Skylake-SP/Cascade Lake",
        (Vendor::Intel, 6, 106 | 108) => "Ice Lake-SP",
        (Vendor::Intel, 6, 143) => "Sapphire Rapids",
        (Vendor::Intel, 6, 207) => "Emerald Rapids",
        (Vendor::Intel, 6, 173 | 174) => "Granite Rapids",
        _ => return None,
    })
}

/// The datapath of a (vendor, family, model) with or without AVX-512 at
/// run time (see [`Datapath`] for which parts are which).
pub fn datapath(vendor: Vendor, family: u32, model: u32, avx512f: bool) -> Datapath {
    if !avx512f {
        return Datapath::Narrow;
    }
    match (vendor, family, model) {
        (Vendor::Amd, 25, _) => Datapath::Avx512Halves,
        (Vendor::Amd, 26, m) if (0x20..0x30).contains(&m) || (0x60..0x70).contains(&m) => {
            Datapath::Avx512Halves
        }
        (Vendor::Amd, 26, _) => Datapath::Avx512TwoPorts,
        (Vendor::Intel, 6, 85 | 106 | 108 | 143 | 207 | 173 | 174) => Datapath::Avx512TwoPorts,
        _ => Datapath::Avx512OnePort,
    }
}

/// A sysfs cache size such as `48K`, `1024K`, `32768K`, `2M` or `512`
/// (bytes); `None` for anything else.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(1 << shift)
}

/// Number of CPUs in a sysfs list such as `0-3,8` (`None` if malformed).
pub fn cpu_list_len(s: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let k = match part.split_once('-') {
            Some((a, b)) => b.parse::<u32>().ok()?.checked_sub(a.parse().ok()?)?.checked_add(1)?,
            None => part.parse::<u32>().map(|_| 1).ok()?,
        };
        n = n.checked_add(k)?;
    }
    (n > 0).then_some(n)
}

/// The data caches described under `dir` (sysfs's `cpuN/cache`: one
/// `index*` folder per cache with `level`, `type`, `size` and
/// `shared_cpu_list`); `None` when no data or unified cache is readable.
pub fn sysfs_caches(dir: &Path) -> Option<Caches> {
    let mut c = Caches::default();
    for i in 0..16 {
        let sub = dir.join(format!("index{i}"));
        let read = |f: &str| std::fs::read_to_string(sub.join(f)).ok();
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
        else {
            continue;
        };
        let (Ok(level), Some(size)) = (level.trim().parse::<u32>(), parse_size(&size)) else {
            continue;
        };
        match (level, kind.trim()) {
            (1, "Data") => c.l1d = Some(size),
            (2, "Unified" | "Data") => c.l2 = Some(size),
            (3, "Unified" | "Data") => {
                c.l3 = Some(size);
                c.l3_shared_by = read("shared_cpu_list").and_then(|s| cpu_list_len(&s));
            }
            _ => {}
        }
    }
    (!c.is_empty()).then_some(c)
}

/// One `cpuid` deterministic-cache-parameters subleaf (Intel leaf 4, AMD
/// leaf `0x8000_001D`: the same layout), decoded: `(level, type, bytes,
/// logical CPUs sharing it)`; type 1 data, 2 instruction, 3 unified, 0
/// ends the list.
pub fn decode_cache_leaf(eax: u32, ebx: u32, ecx: u32) -> (u32, u32, u64, u32) {
    let kind = eax & 0x1f;
    let level = (eax >> 5) & 0x7;
    let sharing = ((eax >> 14) & 0xfff) + 1;
    let ways = u64::from((ebx >> 22) & 0x3ff) + 1;
    let partitions = u64::from((ebx >> 12) & 0x3ff) + 1;
    let line = u64::from(ebx & 0xfff) + 1;
    let sets = u64::from(ecx) + 1;
    (level, kind, ways * partitions * line * sets, sharing)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Caches, Vendor, decode_cache_leaf};
    use std::arch::x86_64::{__cpuid, __cpuid_count, CpuidResult};

    pub(super) struct Id {
        pub vendor: Vendor,
        pub family: u32,
        pub model: u32,
        pub brand: String,
    }

    fn cpuid(leaf: u32, sub: u32) -> CpuidResult {
        // `__cpuid_count` is a safe function from Rust 1.91 on; the block
        // keeps older compilers (rust-version 1.89) building.
        #[allow(unused_unsafe)]
        // SAFETY: `cpuid` exists on every x86-64 CPU and only reads.
        unsafe {
            if sub == 0 { __cpuid(leaf) } else { __cpuid_count(leaf, sub) }
        }
    }

    pub(super) fn identify() -> Id {
        let r0 = cpuid(0, 0);
        let mut v = [0u8; 12];
        v[..4].copy_from_slice(&r0.ebx.to_le_bytes());
        v[4..8].copy_from_slice(&r0.edx.to_le_bytes());
        v[8..].copy_from_slice(&r0.ecx.to_le_bytes());
        let vendor = match &v {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" => Vendor::Amd,
            _ => Vendor::Other,
        };
        let eax = cpuid(1, 0).eax;
        let (base_family, base_model) = ((eax >> 8) & 0xf, (eax >> 4) & 0xf);
        let family =
            if base_family == 0xf { base_family + ((eax >> 20) & 0xff) } else { base_family };
        let model = if base_family == 0x6 || base_family == 0xf {
            (((eax >> 16) & 0xf) << 4) | base_model
        } else {
            base_model
        };
        let mut brand = Vec::with_capacity(48);
        if cpuid(0x8000_0000, 0).eax >= 0x8000_0004 {
            for leaf in 0x8000_0002..=0x8000_0004 {
                let r = cpuid(leaf, 0);
                for x in [r.eax, r.ebx, r.ecx, r.edx] {
                    brand.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        let brand = String::from_utf8_lossy(&brand).trim_matches(['\0', ' ']).to_string();
        Id { vendor, family, model, brand }
    }

    pub(super) fn cpuid_caches(vendor: Vendor) -> Option<Caches> {
        let leaf = match vendor {
            Vendor::Intel if cpuid(0, 0).eax >= 4 => 4,
            Vendor::Amd if cpuid(0x8000_0000, 0).eax >= 0x8000_001d => 0x8000_001d,
            _ => return None,
        };
        let mut c = Caches::default();
        for sub in 0..16 {
            let r = cpuid(leaf, sub);
            let (level, kind, bytes, sharing) = decode_cache_leaf(r.eax, r.ebx, r.ecx);
            match (level, kind) {
                (_, 0) => break,
                (1, 1) => c.l1d = Some(bytes),
                (2, 1 | 3) => c.l2 = Some(bytes),
                (3, 1 | 3) => (c.l3, c.l3_shared_by) = (Some(bytes), Some(sharing)),
                _ => {}
            }
        }
        (!c.is_empty()).then_some(c)
    }

    pub(super) fn features() -> Vec<&'static str> {
        let mut v = Vec::new();
        macro_rules! probe {
            ($($f:tt),*) => {$(
                if std::arch::is_x86_feature_detected!($f) {
                    v.push($f);
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
        v
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    use super::{Caches, Vendor};

    pub(super) struct Id {
        pub vendor: Vendor,
        pub family: u32,
        pub model: u32,
        pub brand: String,
    }
    pub(super) fn identify() -> Id {
        Id { vendor: Vendor::Other, family: 0, model: 0, brand: String::new() }
    }
    pub(super) fn cpuid_caches(_: Vendor) -> Option<Caches> {
        None
    }
    pub(super) fn features() -> Vec<&'static str> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("48K"), Some(48 << 10));
        assert_eq!(parse_size("1024K\n"), Some(1 << 20));
        assert_eq!(parse_size("32768K"), Some(32 << 20));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("512"), Some(512));
        for bad in ["", "K", "x48K", "4.5M", "-1K", "99999999999999999999K"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
        assert_eq!(cpu_list_len("0-1\n"), Some(2));
        assert_eq!(cpu_list_len("0-3,8"), Some(5));
        assert_eq!(cpu_list_len("3-1"), None);
        assert_eq!(cpu_list_len("0-4294967295"), None); // overflows, no panic
        assert_eq!(cpu_list_len("0-4294967294,5"), None);
        assert_eq!(cpu_list_len(""), None);
    }

    fn write_index(dir: &Path, i: usize, files: &[(&str, &str)]) {
        let sub = dir.join(format!("index{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        for (f, s) in files {
            std::fs::write(sub.join(f), format!("{s}\n")).unwrap();
        }
    }

    #[test]
    fn sysfs_trees_parse() {
        let root = std::env::temp_dir().join(format!("attn-cpu-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        // Zen 5 as this project's machine reports it.
        let zen5 = root.join("zen5");
        for (i, (level, kind, size, shared)) in [
            ("1", "Data", "48K", "0"),
            ("1", "Instruction", "32K", "0"),
            ("2", "Unified", "1024K", "0"),
            ("3", "Unified", "32768K", "0-1"),
        ]
        .into_iter()
        .enumerate()
        {
            let files =
                [("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)];
            write_index(&zen5, i, &files);
        }
        let c = sysfs_caches(&zen5).unwrap();
        assert_eq!(
            c,
            Caches {
                l1d: Some(48 << 10),
                l2: Some(1 << 20),
                l3: Some(32 << 20),
                l3_shared_by: Some(2)
            }
        );
        // A tree with gaps: index0 lacks its size, index2 is missing, L3
        // has no shared_cpu_list; the rest is still read.
        let gaps = root.join("gaps");
        write_index(&gaps, 0, &[("level", "1"), ("type", "Data")]);
        write_index(&gaps, 1, &[("level", "2"), ("type", "Unified"), ("size", "2048K")]);
        write_index(&gaps, 3, &[("level", "3"), ("type", "Unified"), ("size", "garbage")]);
        let c = sysfs_caches(&gaps).unwrap();
        assert_eq!(c, Caches { l2: Some(2 << 20), ..Caches::default() });
        // No tree at all, or one with only an instruction cache: None.
        assert_eq!(sysfs_caches(&root.join("absent")), None);
        let icache = root.join("icache");
        write_index(&icache, 0, &[("level", "1"), ("type", "Instruction"), ("size", "32K")]);
        assert_eq!(sysfs_caches(&icache), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn cpuid_cache_leaves_decode() {
        // Intel leaf 4 for a 48 KiB, 12-way L1d (64 sets, 64-byte lines)
        // shared by 2 threads, and a 2 MiB 16-way L2 (2048 sets).
        let l1 = decode_cache_leaf((1 << 14) | (1 << 5) | 1, (11 << 22) | 63, 63);
        assert_eq!(l1, (1, 1, 48 << 10, 2));
        let l2 = decode_cache_leaf((2 << 5) | 3, (15 << 22) | 63, 2047);
        assert_eq!(l2, (2, 3, 2 << 20, 1));
        assert_eq!(decode_cache_leaf(0, 0, 0).1, 0);
    }

    #[test]
    fn cpuid_caches_agree_with_sysfs() {
        // Linux fills sysfs from the same cpuid leaves: where both answer,
        // the fallback reads what sysfs says.
        let sys = sysfs_caches(Path::new("/sys/devices/system/cpu/cpu0/cache"));
        let id = x86::cpuid_caches(facts().vendor);
        if let (Some(s), Some(c)) = (sys, id) {
            assert_eq!((s.l1d, s.l2, s.l3), (c.l1d, c.l2, c.l3), "sysfs vs cpuid");
        }
    }

    #[test]
    fn cores_and_datapaths() {
        use Datapath::*;
        assert_eq!(datapath(Vendor::Amd, 25, 0x11, true), Avx512Halves); // Zen 4 Genoa
        assert_eq!(datapath(Vendor::Amd, 26, 2, true), Avx512TwoPorts); // Zen 5 Turin
        assert_eq!(datapath(Vendor::Amd, 26, 0x24, true), Avx512Halves); // Strix Point
        assert_eq!(datapath(Vendor::Intel, 6, 207, true), Avx512TwoPorts);
        assert_eq!(datapath(Vendor::Intel, 6, 140, true), Avx512OnePort); // Tiger Lake
        assert_eq!(datapath(Vendor::Intel, 6, 207, false), Narrow);
        assert_eq!(core_name(Vendor::Amd, 26, 2), Some("Zen 5"));
        assert_eq!(core_name(Vendor::Amd, 25, 0x11), Some("Zen 4"));
        assert_eq!(core_name(Vendor::Intel, 6, 143), Some("Sapphire Rapids"));
        assert_eq!(core_name(Vendor::Intel, 6, 1), None);
    }

    #[test]
    fn this_cpu_is_read_once_and_consistently() {
        let f = facts();
        assert!(std::ptr::eq(f, facts()));
        assert_eq!(f.datapath == Datapath::Narrow, !f.features.contains(&"avx512f"));
        // What the build uses, the CPU running it has.
        if cfg!(all(target_arch = "x86_64", target_feature = "avx512f")) {
            assert_ne!(f.datapath, Datapath::Narrow);
        }
        if cfg!(target_arch = "x86_64") {
            assert!(f.family > 0, "{f:?}");
            assert!(f.summary().contains(&f.id()));
        }
    }
}
