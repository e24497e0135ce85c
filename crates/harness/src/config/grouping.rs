//! Head groupings: MHA, GQA, MQA, by name and by the sweep's head counts.

/// "mha" (Hq = Hkv), "mqa" (Hkv = 1 < Hq), else "gqa".
pub fn grouping_name(hq: usize, hkv: usize) -> &'static str {
    if hq == hkv {
        "mha"
    } else if hkv == 1 {
        "mqa"
    } else {
        "gqa"
    }
}

/// The head groupings of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Grouping {
    /// Hq = Hkv = 8.
    Mha,
    /// Hq = 8, Hkv = 2.
    Gqa,
    /// Hq = 8, Hkv = 1.
    Mqa,
}

impl Grouping {
    /// All three.
    pub const ALL: [Grouping; 3] = [Grouping::Mha, Grouping::Gqa, Grouping::Mqa];
    /// (Hq, Hkv).
    pub fn heads(self) -> (usize, usize) {
        match self {
            Grouping::Mha => (8, 8),
            Grouping::Gqa => (8, 2),
            Grouping::Mqa => (8, 1),
        }
    }
    /// (Hq, Hkv) of the decode configurations: 32 query heads, as in
    /// 7-8B-parameter models, with 32, 8 or 1 K/V heads.
    pub fn decode_heads(self) -> (usize, usize) {
        match self {
            Grouping::Mha => (32, 32),
            Grouping::Gqa => (32, 8),
            Grouping::Mqa => (32, 1),
        }
    }
}
