//! `f32x16` and `__m512` as one another, for the few operations `wide`
//! lacks (AVX-512 builds only; see `convert`, `transpose` and `hmax`).

use std::arch::x86_64::__m512;
use wide::f32x16;

/// `f32x16` as `__m512`.
#[inline(always)]
pub(crate) fn m512(x: f32x16) -> __m512 {
    // SAFETY: with avx512f (this module's cfg), `f32x16` is
    // `repr(C, align(64))` around safe_arch's `repr(transparent)` `m512`,
    // itself one `__m512`: the same 64 bytes, and any bit pattern is valid
    // for both types.
    unsafe { std::mem::transmute::<f32x16, __m512>(x) }
}

/// `__m512` as `f32x16` (see [`m512`]).
#[inline(always)]
pub(crate) fn f32x16(x: __m512) -> f32x16 {
    // SAFETY: as in `m512`, the other way.
    unsafe { std::mem::transmute::<__m512, f32x16>(x) }
}
