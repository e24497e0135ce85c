//! What instruction set the kernels were compiled for, and what the running
//! CPU supports.
//!
//! `wide` (and so every kernel) chooses its instructions when the crate is
//! compiled: a dependent project that builds attnlab without
//! `-C target-cpu=native` (or `x86-64-v3`/`-v4`) gets SSE2 multiply-then-add
//! and no FMA, about 4–8× slower, with no error. [`compiled`] says what the
//! build uses; [`missed`] lists what the running CPU offers beyond it, so
//! tools can warn.

/// The vector instruction-set levels the kernels can use, widest last.
const LEVELS: [(&str, bool); 4] = [
    ("sse4.2", cfg!(target_feature = "sse4.2")),
    ("avx2", cfg!(target_feature = "avx2")),
    ("fma", cfg!(target_feature = "fma")),
    ("avx512f", cfg!(target_feature = "avx512f")),
];

/// Target features of this build that matter to the kernels, e.g.
/// `"sse4.2 avx2 fma avx512f"`, or `"baseline"` when none is enabled.
pub fn compiled() -> String {
    let on: Vec<&str> = LEVELS.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect();
    if on.is_empty() { "baseline".to_string() } else { on.join(" ") }
}

/// Features the running CPU supports but this build does not use (empty when
/// the build matches the CPU, or off x86-64).
pub fn missed() -> Vec<&'static str> {
    LEVELS.iter().filter(|(name, on)| !on && detected(name)).map(|(n, _)| *n).collect()
}

/// A one-line warning when the build leaves vector units of this CPU
/// unused (see [`missed`]), with the fix; `None` otherwise.
pub fn warning() -> Option<String> {
    let missed = missed();
    if missed.is_empty() {
        return None;
    }
    Some(format!(
        "attnlab was compiled for [{}] but this CPU also supports [{}]: the kernels run several \
         times slower than they could. Build with RUSTFLAGS=\"-C target-cpu=native\" (or put \
         `rustflags = [\"-C\", \"target-cpu=native\"]` under [build] in .cargo/config.toml).",
        compiled(),
        missed.join(" ")
    ))
}

#[cfg(target_arch = "x86_64")]
fn detected(name: &str) -> bool {
    match name {
        "sse4.2" => std::arch::is_x86_feature_detected!("sse4.2"),
        "avx2" => std::arch::is_x86_feature_detected!("avx2"),
        "fma" => std::arch::is_x86_feature_detected!("fma"),
        "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
        _ => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detected(_: &str) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_features_are_detected() {
        // Whatever the build enabled, the CPU running the tests has it, so
        // nothing compiled in is reported missing and the list is stable.
        let c = compiled();
        for (name, on) in LEVELS {
            assert_eq!(c.split(' ').any(|f| f == name), on, "{c}");
            if on {
                assert!(detected(name) || !cfg!(target_arch = "x86_64"), "{name}");
            }
        }
        assert!(!missed().iter().any(|m| c.contains(m)));
        assert_eq!(warning().is_some(), !missed().is_empty());
    }
}
