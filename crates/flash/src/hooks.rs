//! Benchmark hooks: the two micro-kernels on self-owned, seeded buffers, so
//! the workspace's criterion benches (`cargo bench --bench kernels`) can
//! time them in isolation. Not an API for computing attention: the
//! micro-kernels themselves, their blocking constants and buffer formats
//! stay private to this crate.

use wide::f32x16;

use crate::micro::{pv_micro, qk_micro};
use crate::tiles::{LANES, MR, NR, NV};

/// `Sᵀ = K·Qᵀ` on one micro-tile: 8 keys × 32 queries over `d` features.
#[derive(Debug)]
pub struct QkMicro {
    k: Vec<Vec<f32>>,
    qp: Vec<[f32x16; NV]>,
}

impl QkMicro {
    /// Seeded buffers for head dim `d`.
    pub fn new(d: usize) -> QkMicro {
        let k =
            (0..MR).map(|r| (0..d).map(|c| ((c * 7 + r) % 13) as f32 * 0.1).collect()).collect();
        let qp = (0..d)
            .map(|c| std::array::from_fn(|t| f32x16::splat(((c + t) % 5) as f32 * 0.2)))
            .collect();
        QkMicro { k, qp }
    }
    /// Floating-point operations of one [`QkMicro::run`].
    pub fn flops(&self) -> f64 {
        2.0 * (MR * NR * self.qp.len()) as f64
    }
    /// One micro-tile; returns a checksum so the work is not optimised out.
    pub fn run(&self) -> f32 {
        let c = qk_micro(std::array::from_fn(|r| &self.k[r][..]), &self.qp);
        c.iter().flatten().map(|v| v.reduce_add()).sum()
    }
}

/// `O += P·V` on one micro-tile: 8 queries × 32 columns over `kn` keys.
#[derive(Debug)]
pub struct PvMicro {
    pt: Vec<f32>,
    v: Vec<f32>,
    kn: usize,
}

impl PvMicro {
    /// Seeded buffers for `kn` keys (a K/V tile's height).
    pub fn new(kn: usize) -> PvMicro {
        let pt = (0..kn * MR).map(|i| (i % 11) as f32 * 0.05).collect();
        let v = (0..kn * NR).map(|i| (i % 7) as f32 * 0.3).collect();
        PvMicro { pt, v, kn }
    }
    /// Floating-point operations of one [`PvMicro::run`].
    pub fn flops(&self) -> f64 {
        2.0 * (MR * NR * self.kn) as f64
    }
    /// One micro-tile; returns a checksum.
    pub fn run(&self) -> f32 {
        let mut c = [[f32x16::ZERO; NV]; MR];
        pv_micro::<NV>(&self.pt, MR, &self.v, NV * LANES, self.kn, &mut c);
        c.iter().flatten().map(|v| v.reduce_add()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_compute_what_they_claim() {
        let q = QkMicro::new(3);
        let want: f32 = (0..MR)
            .flat_map(|r| (0..NR).map(move |t| (r, t)))
            .map(|(r, t)| {
                (0..3).map(|c| q.k[r][c] * ((c + t / LANES) % 5) as f32 * 0.2).sum::<f32>()
            })
            .sum();
        assert!((q.run() - want).abs() < 1e-3 * want.abs().max(1.0));
        let p = PvMicro::new(5);
        let want: f32 = (0..MR)
            .flat_map(|r| (0..NR).map(move |t| (r, t)))
            .map(|(r, t)| (0..5).map(|k| p.pt[k * MR + r] * p.v[k * NR + t]).sum::<f32>())
            .sum();
        assert!((p.run() - want).abs() < 1e-3 * want.abs().max(1.0));
        assert_eq!(q.flops(), 2.0 * 8.0 * 32.0 * 3.0);
    }
}
