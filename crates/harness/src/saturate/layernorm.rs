//! LayerNorm without affine parameters (its `γ = 1`, `β = 0` at
//! initialisation), forward and backward, per row of `width` features:
//!
//! ```text
//! μ = mean(x)    σ² = mean((x − μ)²)    r = 1/√(σ² + ε)    y = (x − μ)·r
//! dx = r·(dy − mean(dy) − y·mean(dy∘y))
//! ```
//!
//! Accumulation in f64 whatever the storage (`f32` in the depth stack,
//! `f64` in the finite-difference test).

/// A storage type: `f32` or `f64`.
pub trait Real: Copy + Into<f64> {
    /// Rounds an f64 to this type.
    fn of(x: f64) -> Self;
}

impl Real for f32 {
    fn of(x: f64) -> Self {
        x as f32
    }
}

impl Real for f64 {
    fn of(x: f64) -> Self {
        x
    }
}

/// The forward's output and what the backward needs: `y` (rows of
/// `width`) and each row's `r = 1/√(σ² + ε)`.
#[derive(Debug, Clone)]
pub struct Normed<R> {
    /// `y`, shaped like `x`.
    pub y: Vec<R>,
    /// `1/√(σ² + ε)` per row.
    pub rstd: Vec<f64>,
}

/// LayerNorm of each row of `width` features of `x`.
pub fn forward<R: Real>(x: &[R], width: usize, eps: f64) -> Normed<R> {
    assert!(width > 0 && x.len().is_multiple_of(width), "layernorm: x is not rows of {width}");
    let mut y = Vec::with_capacity(x.len());
    let mut rstd = Vec::with_capacity(x.len() / width);
    for row in x.chunks(width) {
        let mean = row.iter().map(|v| (*v).into()).sum::<f64>() / width as f64;
        let var = row.iter().map(|v| ((*v).into() - mean).powi(2)).sum::<f64>() / width as f64;
        let r = 1.0 / (var + eps).sqrt();
        y.extend(row.iter().map(|v| R::of(((*v).into() - mean) * r)));
        rstd.push(r);
    }
    Normed { y, rstd }
}

/// `dx` for the upstream gradient `dy` of the forward that made `n`.
pub fn backward<R: Real>(n: &Normed<R>, dy: &[R], width: usize) -> Vec<R> {
    assert_eq!(dy.len(), n.y.len(), "layernorm: dy has {} values, y {}", dy.len(), n.y.len());
    let mut dx = Vec::with_capacity(dy.len());
    for ((y, g), r) in n.y.chunks(width).zip(dy.chunks(width)).zip(&n.rstd) {
        let w = width as f64;
        let mean_g = g.iter().map(|v| (*v).into()).sum::<f64>() / w;
        let mean_gy = g.iter().zip(y).map(|(a, b)| (*a).into() * (*b).into()).sum::<f64>() / w;
        dx.extend(
            g.iter().zip(y).map(|(a, b)| R::of(r * ((*a).into() - mean_g - (*b).into() * mean_gy))),
        );
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::inputs::normal;

    /// `L = Σ w∘y` and its gradient in `x` from [`backward`], against
    /// central differences of the f64 forward: error `O(h²)` ≈ 1e-8 of the
    /// gradient's scale for `h = 1e-4` (rounding adds ~1e-16/h = 1e-12).
    #[test]
    fn backward_equals_finite_differences() {
        let (rows, width, eps) = (3, 7, 1e-5);
        let x: Vec<f64> =
            normal::<f32>(rows * width, 1, 1).iter().map(|v| *v as f64 * 2.0 + 0.5).collect();
        let w: Vec<f64> = normal::<f32>(rows * width, 1, 2).iter().map(|v| *v as f64).collect();
        let loss = |x: &[f64]| -> f64 {
            forward(x, width, eps).y.iter().zip(&w).map(|(a, b)| a * b).sum()
        };
        let dx = backward(&forward(&x, width, eps), &w, width);
        let h = 1e-4;
        let scale = dx.iter().fold(0f64, |a, v| a.max(v.abs()));
        assert!(scale > 0.1, "the gradient is not trivially zero");
        for i in 0..x.len() {
            let (mut up, mut dn) = (x.clone(), x.clone());
            up[i] += h;
            dn[i] -= h;
            let fd = (loss(&up) - loss(&dn)) / (2.0 * h);
            assert!((fd - dx[i]).abs() < 1e-6 * scale, "dx[{i}] = {} vs {fd}", dx[i]);
        }
    }

    #[test]
    fn rows_are_normalised_and_f32_matches_f64() {
        let x32: Vec<f32> = normal(4 * 32, 5, 1).iter().map(|v: &f32| v * 3.0 - 1.0).collect();
        let n = forward(&x32, 32, 1e-5);
        for row in n.y.chunks(32) {
            let mean = row.iter().map(|v| *v as f64).sum::<f64>() / 32.0;
            let var = row.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / 32.0;
            assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-4, "{mean} {var}");
        }
        let x64: Vec<f64> = x32.iter().map(|v| *v as f64).collect();
        let dy32: Vec<f32> = normal(4 * 32, 5, 2);
        let dy64: Vec<f64> = dy32.iter().map(|v| *v as f64).collect();
        let (a, b) = (backward(&n, &dy32, 32), backward(&forward(&x64, 32, 1e-5), &dy64, 32));
        for (u, v) in a.iter().zip(&b) {
            assert!((*u as f64 - v).abs() < 1e-5 * (1.0 + v.abs()), "{u} vs {v}");
        }
    }
}
