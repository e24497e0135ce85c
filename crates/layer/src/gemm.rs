//! The projections' matrix products: `C = A·B + β·C` in f32 on
//! `matrixmultiply`'s blocked sgemm, with `C`'s rows split into blocks
//! across the call's threads.
//!
//! Operands are strided views ([`Mat`]), so a transposed operand (`Xᵀ` in
//! `dW = Xᵀ·dY`, `Wᵀ` in `dX = dY·Wᵀ`) is the same buffer with its strides
//! swapped: no copies. `C` is always row-major and contiguous.
//!
//! Threads: the rows of `C` go in `threads` contiguous blocks of at least
//! [`MIN_ROWS`] rows, one sgemm call each. Every element of `C` is the same
//! sum in the same order whichever block computes it (sgemm's `k` blocking
//! does not depend on `m`), so the result is bitwise identical for any
//! thread count (tested).

use attn_core::{AttnError, Par};
use rayon::prelude::*;

/// Fewest rows of `C` per block: each block repacks `B` (`k·n` values), so
/// a block of `r` rows adds `1/r` to the packing cost per flop. Measured on
/// Zen 5 (2048×1024×1024, one thread, one call per block): blocks of 128
/// rows ran ~15% slower than blocks of 256 or more; 64-row blocks would
/// pack twice as often again.
pub(crate) const MIN_ROWS: usize = 128;

/// A read-only `rows × cols` matrix inside `data`: element `(i, j)` at
/// `i·rs + j·cs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// The row-major `rows × cols` matrix `data` (its length checked).
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix buffer length");
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose: the same buffer, strides swapped.
    pub(crate) fn t(self) -> Self {
        Mat { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    /// Rows `r0..r0 + n` as a matrix whose slice starts at row `r0`.
    fn rows_from(&self, r0: usize, n: usize) -> Mat<'a> {
        let start = (r0 * self.rs).min(self.data.len());
        Mat { data: &self.data[start..], rows: n, ..*self }
    }

    /// Whether every element lies inside the slice.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `C = A·B + β·C` for `A` `m×k`, `B` `k×n` and `C` `m×n` row-major, on
/// `par`'s threads (see the module docs). With `β = 0`, `C`'s old values
/// are not read.
pub(crate) fn gemm(
    par: Par,
    a: Mat<'_>,
    b: Mat<'_>,
    beta: f32,
    c: &mut [f32],
) -> Result<(), AttnError> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions");
    assert_eq!(c.len(), m * n, "C buffer length");
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        c.iter_mut().for_each(|x| *x = if beta == 0.0 { 0.0 } else { beta * *x });
        return Ok(());
    }
    let threads = par.threads();
    let block = m.div_ceil(threads).max(MIN_ROWS);
    if block >= m {
        block_gemm(a, b, beta, c);
        return Ok(());
    }
    par.install(|| {
        c.par_chunks_mut(block * n).enumerate().for_each(|(i, cb)| {
            block_gemm(a.rows_from(i * block, cb.len() / n), b, beta, cb);
        })
    })
}

/// One sgemm call: `C = A·B + β·C` with `C` contiguous, `A.rows × B.cols`.
fn block_gemm(a: Mat<'_>, b: Mat<'_>, beta: f32, c: &mut [f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(a.in_bounds() && b.in_bounds() && c.len() == m * n, "operands out of bounds");
    // SAFETY: A (m×k), B (k×n) and C (m×n, row-major) lie inside their
    // slices (asserted just above); C is borrowed mutably, so it aliases
    // neither input.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

/// `C` rows `= bias` (for a following `gemm` with `β = 1`), or zeros.
pub(crate) fn fill_rows(c: &mut [f32], bias: Option<&[f32]>) {
    match bias {
        Some(b) => c.chunks_mut(b.len()).for_each(|row| row.copy_from_slice(b)),
        None => c.fill(0.0),
    }
}

/// Column sums of the row-major `rows × cols` matrix `x`, in f64 then
/// rounded (the bias gradients).
pub(crate) fn column_sums(x: &[f32], cols: usize) -> Vec<f32> {
    let mut acc = vec![0f64; cols];
    for row in x.chunks(cols) {
        acc.iter_mut().zip(row).for_each(|(a, v)| *a += *v as f64);
    }
    acc.into_iter().map(|a| a as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &Mat<'_>, b: &Mat<'_>) -> Vec<f64> {
        let mut c = vec![0f64; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                for p in 0..a.cols {
                    c[i * b.cols + j] +=
                        a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.rs + j * b.cs] as f64;
                }
            }
        }
        c
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn products_with_transposes_and_blocks() {
        // m = 300 rows: blocks of 150 on 2 threads, of 128 on 3, one on 1.
        let (m, k, n) = (300, 37, 19);
        let x = values(m * k, 1); // m×k
        let xt = values(k * m, 2); // k×m, used transposed
        let w = values(k * n, 3); // k×n
        let wt = values(n * k, 4); // n×k, used transposed
        for (a, b) in [
            (Mat::new(&x, m, k), Mat::new(&w, k, n)),
            (Mat::new(&xt, k, m).t(), Mat::new(&w, k, n)),
            (Mat::new(&x, m, k), Mat::new(&wt, n, k).t()),
            (Mat::new(&xt, k, m).t(), Mat::new(&wt, n, k).t()),
        ] {
            let want = naive(&a, &b);
            let mut bits = None;
            for par in [Par::Seq, Par::rayon(2).unwrap(), Par::rayon(3).unwrap()] {
                let mut c = vec![f32::NAN; m * n];
                gemm(par, a, b, 0.0, &mut c).unwrap();
                for (g, w) in c.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() < 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
                }
                let b: Vec<u32> = c.iter().map(|x| x.to_bits()).collect();
                assert_eq!(*bits.get_or_insert(b.clone()), b, "{par:?}");
            }
        }
    }

    #[test]
    fn beta_one_accumulates_and_k_zero_scales() {
        let a = [1.0, 2.0];
        let b = [3.0, 4.0];
        let mut c = [10.0, 20.0, 30.0, 40.0];
        gemm(Par::Seq, Mat::new(&a, 2, 1), Mat::new(&b, 1, 2), 1.0, &mut c).unwrap();
        assert_eq!(c, [13.0, 24.0, 36.0, 48.0]);
        gemm(Par::Seq, Mat::new(&[], 2, 0), Mat::new(&[], 0, 2), 0.0, &mut c).unwrap();
        assert_eq!(c, [0.0; 4]);
        assert_eq!(column_sums(&[1.0, 2.0, 3.0, 4.0], 2), [4.0, 6.0]);
        let mut r = [0f32; 4];
        fill_rows(&mut r, Some(&[5.0, 6.0]));
        assert_eq!(r, [5.0, 6.0, 5.0, 6.0]);
    }
}
