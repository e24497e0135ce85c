//! The problem every rank of one ring agrees on ([`RingProblem`]): the
//! whole problem's shape, how the sequence is cut, the tensors' memory
//! layout, the mask and the scale; and its header, the few numbers rank 0
//! broadcasts once it has read the inputs (so that no other rank reads a
//! file, and all of them run the same problem).

use attnlab::ring::{RingError, RingLayout, RingSpec};
use attnlab::{AttnParams, AttnShape, Layout, Mask};

use crate::config::MaskSpec;

/// One ring attention problem, as `attn ring` and `attn ring-bench` run
/// it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RingProblem {
    /// The whole problem's shape.
    pub shape: AttnShape,
    /// How the sequence is cut over the ranks.
    pub layout: RingLayout,
    /// Memory layout of Q, K, V and O.
    pub tensors: Layout,
    /// The mask, on global positions.
    pub mask: Mask,
    /// Softmax scale; `None` = `1/sqrt(d)`.
    pub scale: Option<f32>,
}

/// First number of a header: tells a header of this format from anything
/// else (`"attnring"` in ASCII, then the format's version, 1).
const MAGIC: u64 = 0x6174_746e_7269_6e67;
const VERSION: u64 = 1;
/// A window side with no bound, in a header.
const UNBOUNDED: u64 = u64::MAX;
/// No scale given (use `1/sqrt(d)`), in a header.
const DEFAULT_SCALE: u64 = u64::MAX;

impl RingProblem {
    /// The attention parameters: scale and mask (inputs are checked for
    /// non-finite values, see [`AttnParams::check_finite`]).
    pub fn params(&self) -> AttnParams<'static> {
        AttnParams { scale: self.scale, mask: self.mask, ..Default::default() }
    }

    /// The ring of `ranks` ranks with `threads` threads each, checked.
    pub fn spec(&self, ranks: usize, threads: usize) -> Result<RingSpec<'static>, RingError> {
        RingSpec::new(self.shape, self.layout, ranks, self.params())?.with_threads(threads)
    }

    /// The mask's name: `full`, `causal`, `win{L}_{R}`.
    pub fn mask_name(&self) -> String {
        mask_spec(self.mask).name()
    }

    /// The header rank 0 broadcasts: `(numbers, flags)`, the shapes of
    /// `attn_ring::mpi::Header`.
    pub fn encode(&self) -> (Vec<u64>, Vec<u8>) {
        let s = &self.shape;
        let (left, right) = self.mask.as_window();
        let side = |x: Option<usize>| x.map_or(UNBOUNDED, |v| v as u64);
        let numbers = vec![
            MAGIC,
            VERSION,
            s.batch() as u64,
            s.q_heads() as u64,
            s.kv_heads() as u64,
            s.q_len() as u64,
            s.kv_len() as u64,
            s.head_dim() as u64,
            s.v_dim() as u64,
            side(left),
            side(right),
            self.scale.map_or(DEFAULT_SCALE, |x| x.to_bits() as u64),
        ];
        let mask = match self.mask {
            Mask::None => 0,
            Mask::Causal => 1,
            Mask::Window { .. } => 2,
        };
        let layout = match self.layout {
            RingLayout::Contiguous => 0,
            RingLayout::Zigzag => 1,
        };
        let tensors = match self.tensors {
            Layout::Bhnd => 0,
            Layout::Bnhd => 1,
        };
        (numbers, vec![layout, tensors, mask])
    }

    /// The problem of a header ([`RingProblem::encode`]); an error saying
    /// what is wrong with a header that is not one.
    pub fn decode(numbers: &[u64], flags: &[u8]) -> Result<RingProblem, String> {
        let bad = |what: &str| format!("not a ring header from this attn ({what})");
        let [magic, version, b, hq, hkv, nq, nk, d, dv, left, right, scale] = numbers else {
            return Err(bad(&format!("{} numbers", numbers.len())));
        };
        let [layout, tensors, mask] = flags else {
            return Err(bad(&format!("{} flags", flags.len())));
        };
        if (*magic, *version) != (MAGIC, VERSION) {
            return Err(bad("magic or version"));
        }
        let size = |x: u64| usize::try_from(x).map_err(|_| bad("a size beyond usize"));
        let shape = AttnShape::builder()
            .batch(size(*b)?)
            .q_heads(size(*hq)?)
            .kv_heads(size(*hkv)?)
            .q_len(size(*nq)?)
            .kv_len(size(*nk)?)
            .head_dim(size(*d)?)
            .v_dim(size(*dv)?)
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        let side = |x: u64| if x == UNBOUNDED { Ok(None) } else { size(x).map(Some) };
        let mask = match mask {
            0 => Mask::None,
            1 => Mask::Causal,
            2 => Mask::Window { left: side(*left)?, right: side(*right)? },
            m => return Err(bad(&format!("mask {m}"))),
        };
        let layout = match layout {
            0 => RingLayout::Contiguous,
            1 => RingLayout::Zigzag,
            l => return Err(bad(&format!("layout {l}"))),
        };
        let tensors = match tensors {
            0 => Layout::Bhnd,
            1 => Layout::Bnhd,
            t => return Err(bad(&format!("tensor layout {t}"))),
        };
        let scale = match *scale {
            DEFAULT_SCALE => None,
            bits => Some(f32::from_bits(u32::try_from(bits).map_err(|_| bad("scale"))?)),
        };
        Ok(RingProblem { shape, layout, tensors, mask, scale })
    }
}

/// The harness's name of a mask (`full`, `causal`, `win{L}_{R}`).
pub fn mask_spec(mask: Mask) -> MaskSpec {
    match mask {
        Mask::None => MaskSpec::Full,
        Mask::Causal => MaskSpec::Causal,
        Mask::Window { left, right } => MaskSpec::Window(left, right),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> AttnShape {
        AttnShape::builder()
            .batch(2)
            .q_heads(8)
            .kv_heads(2)
            .q_len(300)
            .kv_len(301)
            .head_dim(64)
            .v_dim(32)
            .build()
            .unwrap()
    }

    #[test]
    fn headers_round_trip() {
        for (mask, scale, layout, tensors) in [
            (Mask::Causal, None, RingLayout::Zigzag, Layout::Bhnd),
            (Mask::None, Some(0.25), RingLayout::Contiguous, Layout::Bnhd),
            (Mask::Window { left: Some(17), right: None }, Some(-1.5), RingLayout::Zigzag, {
                Layout::Bhnd
            }),
            (Mask::Window { left: None, right: Some(0) }, None, RingLayout::Contiguous, {
                Layout::Bhnd
            }),
        ] {
            let p = RingProblem { shape: shape(), layout, tensors, mask, scale };
            let (n, f) = p.encode();
            assert_eq!(RingProblem::decode(&n, &f), Ok(p));
        }
    }

    #[test]
    fn a_wrong_header_is_an_error() {
        let p = RingProblem {
            shape: shape(),
            layout: RingLayout::Zigzag,
            tensors: Layout::Bhnd,
            mask: Mask::Causal,
            scale: None,
        };
        let (n, f) = p.encode();
        assert!(RingProblem::decode(&n[1..], &f).unwrap_err().contains("11 numbers"));
        assert!(RingProblem::decode(&n, &f[..2]).unwrap_err().contains("2 flags"));
        let mut m = n.clone();
        m[0] ^= 1;
        assert!(RingProblem::decode(&m, &f).unwrap_err().contains("magic"));
        let mut z = n.clone();
        z[7] = 0;
        assert!(RingProblem::decode(&z, &f).unwrap_err().contains("head_dim"));
        assert!(RingProblem::decode(&n, &[1, 0, 9]).unwrap_err().contains("mask 9"));
    }

    #[test]
    fn specs_carry_the_ranks_and_threads() {
        let p = RingProblem {
            shape: shape(),
            layout: RingLayout::Zigzag,
            tensors: Layout::Bhnd,
            mask: Mask::Causal,
            scale: None,
        };
        let spec = p.spec(3, 2).unwrap();
        assert_eq!((spec.ranks, spec.threads), (3, 2));
        assert!(p.spec(0, 1).is_err());
        assert!(p.spec(2, 0).is_err());
        assert_eq!(p.mask_name(), "causal");
    }
}
