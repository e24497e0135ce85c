//! How K and V are stored for the split-KV kernel, and how it reads
//! sixteen of them at a time as f32.
//!
//! [`KvElement`] is implemented for every [`Element`] (f32, f16, bf16:
//! one value a unit) and for [`Q8_0`], ggml's 8-bit block format (32
//! values a unit). A [`crate::KvCache`] stores any of them; the kernel
//! widens 16 values to one `f32x16` right where it uses them
//! (the sealed `Load16`), with the hardware conversion for f16 and q8_0.

use attn_core::Element;
use attn_simd::{LANES, convert, f32x16, load};
use half::f16;

/// A storage type for the rows of a KV cache. Sealed: the kernels know
/// how to widen each.
pub trait KvElement:
    sealed::Load16 + Copy + Send + Sync + Default + std::fmt::Debug + 'static
{
    /// Name as used on the command line and in result rows.
    const NAME: &'static str;
    /// Units holding one row of `n` values.
    fn units(n: usize) -> usize;
    /// Stores the row `src` into `dst` (`units(src.len())` long), rounding
    /// to nearest. `Err(i)` names the first value that is not finite once
    /// stored (NaN or ±inf in `src`, or a value beyond the type's range);
    /// `dst` is then unspecified.
    fn store(src: &[f32], dst: &mut [Self]) -> Result<(), usize>;
    /// Widens a stored row: `dst.len()` values.
    fn widen(row: &[Self], dst: &mut [f32]);
}

pub(crate) mod sealed {
    use attn_simd::f32x16;

    /// The kernel's read of a stored row.
    pub trait Load16: Sized {
        /// Whether [`Load16::load16`] can read every vector of a row of
        /// `n` values in place: `n.div_ceil(16)` whole vectors, the
        /// padding (if any) zero.
        fn whole_vectors(n: usize) -> bool;
        /// Whether the stored values are f32 (reading them costs nothing
        /// beyond the load).
        fn is_f32() -> bool;
        /// Values `16·v .. 16·v + 16` of a stored row, as f32.
        fn load16(row: &[Self], v: usize) -> f32x16;
        /// The part of a row that holds its first `nv` vectors: a kernel
        /// trims its rows once, so that the loads of its loop over
        /// `v < nv` need no bounds checks.
        fn trim(row: &[Self], nv: usize) -> &[Self];
    }
}

impl<T: Element> KvElement for T {
    const NAME: &'static str = T::NAME;
    fn units(n: usize) -> usize {
        n
    }
    fn store(src: &[f32], dst: &mut [Self]) -> Result<(), usize> {
        for (i, (d, s)) in dst.iter_mut().zip(src).enumerate() {
            *d = T::from_f32(*s);
            if !d.to_f32().is_finite() {
                return Err(i);
            }
        }
        Ok(())
    }
    fn widen(row: &[Self], dst: &mut [f32]) {
        T::widen_slice(&row[..dst.len()], dst);
    }
}

impl<T: Element> sealed::Load16 for T {
    fn whole_vectors(n: usize) -> bool {
        n.is_multiple_of(LANES)
    }
    fn is_f32() -> bool {
        T::as_f32_slice(&[]).is_some()
    }
    #[inline(always)]
    fn trim(row: &[Self], nv: usize) -> &[Self] {
        &row[..nv * LANES]
    }
    #[inline(always)]
    fn load16(row: &[Self], v: usize) -> f32x16 {
        let at = v * LANES;
        if let Some(r) = T::as_f32_slice(row) {
            load(&r[at..])
        } else if let Some(r) = T::as_f16_slice(row) {
            convert::f16x16(r[at..at + LANES].try_into().unwrap())
        } else if let Some(r) = T::as_bf16_slice(row) {
            convert::bf16x16(r[at..at + LANES].try_into().unwrap())
        } else {
            f32x16::new(std::array::from_fn(|i| row[at + i].to_f32()))
        }
    }
}

/// Values per [`Q8_0`] block.
pub const Q8_0_BLOCK: usize = 32;

/// One block of ggml's `q8_0` format: 32 values as `qs[i]·scale`, the
/// `scale` an f16 (`max|x| / 127` of the block), the `qs` int8 rounded to
/// nearest (34 bytes, ggml's `block_q8_0` layout). A row of `n` values
/// takes `⌈n/32⌉` blocks, the last padded with zeros.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C)]
pub struct Q8_0 {
    /// The block's scale (ggml's `d`).
    pub scale: f16,
    /// The quantised values.
    pub qs: [i8; Q8_0_BLOCK],
}

impl Q8_0 {
    /// Quantises up to 32 values (the rest of the block is 0): `Err(i)`
    /// for the first value that is not finite, or the largest when its
    /// scale overflows f16 (|x| above about 8.3e6).
    pub fn quantize(x: &[f32]) -> Result<Q8_0, usize> {
        debug_assert!(x.len() <= Q8_0_BLOCK);
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(i);
        }
        let (imax, amax) = x
            .iter()
            .map(|v| v.abs())
            .enumerate()
            .fold((0, 0f32), |a, b| if b.1 > a.1 { b } else { a });
        let d = amax / 127.0;
        let scale = f16::from_f32(d);
        if !scale.is_finite() {
            return Err(imax);
        }
        let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
        let mut qs = [0i8; Q8_0_BLOCK];
        for (q, v) in qs.iter_mut().zip(x) {
            // |v·inv| <= 127 (up to rounding of inv): the cast saturates.
            *q = (v * inv).round() as i8;
        }
        Ok(Q8_0 { scale, qs })
    }
}

impl KvElement for Q8_0 {
    const NAME: &'static str = "q8_0";
    fn units(n: usize) -> usize {
        n.div_ceil(Q8_0_BLOCK)
    }
    fn store(src: &[f32], dst: &mut [Self]) -> Result<(), usize> {
        for (b, (blk, x)) in dst.iter_mut().zip(src.chunks(Q8_0_BLOCK)).enumerate() {
            *blk = Q8_0::quantize(x).map_err(|i| b * Q8_0_BLOCK + i)?;
        }
        Ok(())
    }
    fn widen(row: &[Self], dst: &mut [f32]) {
        for (blk, out) in row.iter().zip(dst.chunks_mut(Q8_0_BLOCK)) {
            let s = blk.scale.to_f32();
            for (o, q) in out.iter_mut().zip(&blk.qs) {
                *o = *q as f32 * s;
            }
        }
    }
}

impl sealed::Load16 for Q8_0 {
    fn whole_vectors(_: usize) -> bool {
        true // blocks are 32 values, zero-padded
    }
    fn is_f32() -> bool {
        false
    }
    #[inline(always)]
    fn trim(row: &[Self], nv: usize) -> &[Self] {
        &row[..nv.div_ceil(2)]
    }
    #[inline(always)]
    fn load16(row: &[Self], v: usize) -> f32x16 {
        let blk = &row[v / 2];
        let half = (v % 2) * LANES;
        convert::i8x16_scaled(blk.qs[half..half + LANES].try_into().unwrap(), blk.scale.to_f32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    fn round_trip<T: KvElement>(x: &[f32]) -> Vec<f32> {
        let mut st = vec![T::default(); T::units(x.len())];
        T::store(x, &mut st).unwrap();
        let mut back = vec![0.0; x.len()];
        T::widen(&st, &mut back);
        // load16 reads the same values, zero past the end
        for v in 0..x.len().div_ceil(16) {
            if T::whole_vectors(x.len()) {
                let got = T::load16(&st, v).to_array();
                for (l, g) in got.iter().enumerate() {
                    assert_eq!(*g, back.get(16 * v + l).copied().unwrap_or(0.0), "{}", T::NAME);
                }
            }
        }
        back
    }

    #[test]
    fn q8_0_is_ggml_rounding_with_bounded_error() {
        let x: Vec<f32> = (0..75).map(|i| ((i * 37) % 101) as f32 * 0.173 - 8.0).collect();
        let back = round_trip::<Q8_0>(&x);
        for (blk, xs) in x.chunks(32).enumerate() {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            // half a step of the (f16-rounded) scale, plus the scale's own
            // rounding (2^-11 relative) times the largest |q| = 127
            let step = amax / 127.0;
            for (i, v) in xs.iter().enumerate() {
                let e = (back[blk * 32 + i] - v).abs();
                assert!(e <= 0.5 * step * (1.0 + 1e-3) + amax * 2f32.powi(-11), "{v} -> {e}");
            }
        }
        assert_eq!(Q8_0::units(75), 3);
        assert_eq!(std::mem::size_of::<Q8_0>(), 34);
        // the largest value of a block is stored as ±127 exactly
        let b = Q8_0::quantize(&[1.0, -3.0, 0.5]).unwrap();
        assert_eq!(&b.qs[..4], &[42, -127, 21, 0]);
        assert_eq!(Q8_0::quantize(&[0.0; 5]).unwrap(), Q8_0::default());
    }

    #[test]
    fn every_element_type_round_trips_and_loads() {
        let x: Vec<f32> = (0..48).map(|i| i as f32 * 0.25 - 5.0).collect();
        assert_eq!(round_trip::<f32>(&x), x);
        assert_eq!(round_trip::<f16>(&x), x); // exactly representable
        assert_eq!(round_trip::<bf16>(&x), x);
    }

    #[test]
    fn store_names_the_value_that_does_not_fit() {
        let mut blocks = [Q8_0::default(); 2];
        assert_eq!(Q8_0::store(&[0.0, 1.0, f32::NAN], &mut blocks), Err(2));
        let mut x = vec![1.0f32; 40];
        x[35] = 8e6; // scale 8e6/127 = 62992 fits f16 (max 65504)
        assert!(Q8_0::store(&x, &mut blocks).is_ok());
        x[36] = -2e7; // scale 1.6e5 does not: the largest value is named
        assert_eq!(Q8_0::store(&x, &mut blocks), Err(36));
        let mut h = [f16::ZERO; 3];
        assert_eq!(f16::store(&[0.0, 7e4, 1.0], &mut h), Err(1));
    }
}
