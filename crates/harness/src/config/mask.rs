//! The mask of a configuration and the one grammar of the `--window` flag
//! (`attn run`, `attn bench`, `attn decode`).

use attnlab::Mask;
use serde::{Deserialize, Serialize};

/// The mask of a configuration, by name: `full`, `causal`, `win{L}_{R}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MaskSpec {
    /// No mask.
    Full,
    /// Bottom-right causal.
    Causal,
    /// Sliding window (`None` = unbounded side).
    Window(Option<usize>, Option<usize>),
}

impl MaskSpec {
    /// The kernel-level mask.
    pub fn mask(self) -> Mask {
        match self {
            MaskSpec::Full => Mask::None,
            MaskSpec::Causal => Mask::Causal,
            MaskSpec::Window(left, right) => Mask::Window { left, right },
        }
    }
    /// Name used in ids and files.
    pub fn name(self) -> String {
        let side = |s: Option<usize>| s.map(|v| v.to_string()).unwrap_or_else(|| "inf".into());
        match self {
            MaskSpec::Full => "full".into(),
            MaskSpec::Causal => "causal".into(),
            MaskSpec::Window(l, r) => format!("win{}_{}", side(l), side(r)),
        }
    }
    /// Parses the `--window` flag, `LEFT,RIGHT`: each side a key count, or
    /// `inf`, `-1`, `-` or nothing for an unbounded side (so `128,0`,
    /// `inf,0`, `-1,0` and `128,` all parse). Errors name the flag and the
    /// side at fault.
    pub fn parse_window(s: &str) -> Result<MaskSpec, String> {
        let (l, r) = s
            .split_once(',')
            .ok_or_else(|| format!("--window '{s}': expected LEFT,RIGHT (e.g. 128,0 or inf,0)"))?;
        let side = |v: &str, which: &str| -> Result<Option<usize>, String> {
            match v.trim() {
                "" | "-" | "inf" | "-1" => Ok(None),
                t => t.parse().map(Some).map_err(|_| {
                    format!(
                        "--window '{s}': {which} side '{t}' is not a key count \
                         (or inf, -1, - or empty for unbounded)"
                    )
                }),
            }
        };
        Ok(MaskSpec::Window(side(l, "left")?, side(r, "right")?))
    }
    /// The mask of the `--causal` and `--window` flags: at most one of
    /// them; neither is no mask.
    pub fn from_flags(causal: bool, window: Option<&str>) -> Result<MaskSpec, String> {
        match (causal, window) {
            (true, Some(_)) => {
                Err("--causal 1 and --window cannot be combined (causal is --window inf,0)".into())
            }
            (true, None) => Ok(MaskSpec::Causal),
            (false, Some(w)) => MaskSpec::parse_window(w),
            (false, None) => Ok(MaskSpec::Full),
        }
    }
}

impl From<MaskSpec> for String {
    fn from(m: MaskSpec) -> String {
        m.name()
    }
}

impl TryFrom<String> for MaskSpec {
    type Error = String;
    fn try_from(s: String) -> Result<MaskSpec, String> {
        match s.as_str() {
            "full" => Ok(MaskSpec::Full),
            "causal" => Ok(MaskSpec::Causal),
            w => {
                let body = w.strip_prefix("win").ok_or_else(|| format!("unknown mask '{w}'"))?;
                MaskSpec::parse_window(&body.replace('_', ","))
                    .map_err(|e| format!("mask '{w}': {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_trip() {
        for m in [
            MaskSpec::Full,
            MaskSpec::Causal,
            MaskSpec::Window(Some(128), Some(0)),
            MaskSpec::Window(None, Some(3)),
        ] {
            assert_eq!(MaskSpec::try_from(m.name()).unwrap(), m);
        }
        assert_eq!(MaskSpec::parse_window("128,-").unwrap(), MaskSpec::Window(Some(128), None));
        assert!(MaskSpec::parse_window("12").is_err());
    }

    #[test]
    fn windows_parse() {
        let w = MaskSpec::Window;
        let parse = MaskSpec::parse_window;
        assert_eq!(parse("3,0"), Ok(w(Some(3), Some(0))));
        assert_eq!(parse("inf,2"), Ok(w(None, Some(2))));
        assert_eq!(parse("-1, -1"), Ok(w(None, None)));
        assert_eq!(parse("-,"), Ok(w(None, None)));
        assert!(parse("3").unwrap_err().contains("LEFT,RIGHT"));
        assert!(parse("3,x").unwrap_err().contains("right side 'x'"));
        assert!(parse("-2,0").unwrap_err().contains("left side '-2'"));
        assert!(parse("-2,0").unwrap_err().starts_with("--window '-2,0': "));
    }

    #[test]
    fn causal_or_window() {
        assert_eq!(MaskSpec::from_flags(false, None), Ok(MaskSpec::Full));
        assert_eq!(MaskSpec::from_flags(true, None), Ok(MaskSpec::Causal));
        assert_eq!(
            MaskSpec::from_flags(false, Some("4,0")),
            Ok(MaskSpec::Window(Some(4), Some(0)))
        );
        assert!(
            MaskSpec::from_flags(true, Some("4,0"))
                .unwrap_err()
                .contains("--causal 1 and --window")
        );
    }
}
