//! The ring's scaling model: how long one attention layer takes on `P`
//! ranks joined by links of a given speed, and whether the K/V transfer of
//! each step hides behind that step's compute.
//!
//! Assumptions (stated in `docs/ring.md` beside the table):
//! - self-attention, `N` tokens split over `P` ranks, each rank holding
//!   `c = N / P` queries and keys (zigzag for causal, so every step after
//!   the first costs each rank the same: half a `c × c` block);
//! - a step's compute is its FLOPs (`4·d` per visible query–key pair and
//!   head: `2·d` for `QKᵀ`, `2·dv` for `PV`, with `dv = d`) divided by a
//!   rank's sustained attention throughput `flops_per_s`;
//! - a step's transfer is one K/V block, `2·c·Hkv·d` f32 values, sent to the
//!   next rank while the step computes: `latency + bytes / bandwidth`; all
//!   links run at once (a ring uses each link in one direction);
//! - the layer takes the first (local) step's compute, then `P − 1` steps
//!   of `max(compute, transfer)` (double buffering: the slower of the two
//!   sets the pace); the final merge of `P` partials is `O(c·H·d)` per rank
//!   and left out.

/// One configuration of the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RingModel {
    /// Ranks in the ring.
    pub ranks: usize,
    /// Global sequence length (tokens).
    pub tokens: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dimension (`d = dv`).
    pub head_dim: usize,
    /// Causal (zigzag layout) or full attention.
    pub causal: bool,
    /// A rank's sustained attention throughput, FLOP/s.
    pub flops_per_s: f64,
    /// Link bandwidth between neighbouring ranks, bytes/s.
    pub bandwidth: f64,
    /// Per-message latency, seconds.
    pub latency: f64,
}

/// What the model predicts for one configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Tokens per rank, `N / P`.
    pub chunk: f64,
    /// Compute of one step after the first, seconds.
    pub step_compute_s: f64,
    /// Transfer of one K/V block, seconds.
    pub step_transfer_s: f64,
    /// Time of the whole layer, seconds.
    pub layer_s: f64,
    /// Communication left exposed over the layer, seconds.
    pub exposed_comm_s: f64,
    /// Whether each transfer hides behind its step's compute.
    pub hidden: bool,
}

impl RingModel {
    /// FLOPs one rank spends on the first step (its own block: the
    /// diagonal when causal) and on each later step.
    pub fn step_flops(&self) -> (f64, f64) {
        let c = self.tokens as f64 / self.ranks as f64;
        let full = 4.0 * self.head_dim as f64 * self.q_heads as f64 * c * c;
        if self.causal {
            // Zigzag: the own block is two diagonal sub-blocks plus one full
            // sub-block pair, half of `c × c` (plus the diagonal's c/2 rows,
            // left out); every later block is exactly half visible.
            (full / 2.0, full / 2.0)
        } else {
            (full, full)
        }
    }

    /// Bytes of one K/V block: `2·c·Hkv·d` f32 values.
    pub fn block_bytes(&self) -> f64 {
        let c = self.tokens as f64 / self.ranks as f64;
        2.0 * c * self.kv_heads as f64 * self.head_dim as f64 * 4.0
    }

    /// The prediction for this configuration.
    pub fn predict(&self) -> Prediction {
        let (first, later) = self.step_flops();
        let step_compute_s = later / self.flops_per_s;
        let step_transfer_s =
            if self.ranks > 1 { self.latency + self.block_bytes() / self.bandwidth } else { 0.0 };
        let steps = self.ranks.saturating_sub(1) as f64;
        let pace = step_compute_s.max(step_transfer_s);
        let exposed_comm_s = steps * (step_transfer_s - step_compute_s).max(0.0);
        Prediction {
            chunk: self.tokens as f64 / self.ranks as f64,
            step_compute_s,
            step_transfer_s,
            layer_s: first / self.flops_per_s + steps * pace,
            exposed_comm_s,
            hidden: step_transfer_s <= step_compute_s,
        }
    }

    /// The smallest chunk (tokens per rank) at which a transfer hides
    /// behind its step's compute, ignoring latency: compute grows as `c²`
    /// and the block as `c`, so `c* = 8·Hkv·F / (k·H·B)` with `k = 4`
    /// (full) or 2 (causal) FLOPs per pair and head-dimension unit.
    pub fn hiding_chunk(&self) -> f64 {
        let k = if self.causal { 2.0 } else { 4.0 };
        8.0 * self.kv_heads as f64 * self.flops_per_s / (k * self.q_heads as f64 * self.bandwidth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(ranks: usize, tokens: usize, bandwidth: f64) -> RingModel {
        RingModel {
            ranks,
            tokens,
            q_heads: 8,
            kv_heads: 8,
            head_dim: 64,
            causal: true,
            flops_per_s: 200e9,
            bandwidth,
            latency: 5e-6,
        }
    }

    #[test]
    fn one_rank_is_the_causal_flops_over_the_throughput() {
        let m = model(1, 4096, 1e9);
        let p = m.predict();
        // 4·d·H·N²/2 FLOPs.
        let flops = 4.0 * 64.0 * 8.0 * 4096.0 * 4096.0 / 2.0;
        assert!((p.layer_s - flops / 200e9).abs() < 1e-12);
        assert_eq!(p.step_transfer_s, 0.0);
        assert!(p.hidden);
    }

    #[test]
    fn total_flops_are_conserved_across_ranks() {
        // P ranks × (first + (P−1) later) steps = the causal FLOPs of the
        // whole sequence (up to the diagonal's c/2 rows, left out).
        for ranks in [2, 4, 8, 64] {
            let m = model(ranks, 1 << 20, 1e12);
            let (first, later) = m.step_flops();
            let total = ranks as f64 * (first + (ranks - 1) as f64 * later);
            let want = 4.0 * 64.0 * 8.0 * (1u64 << 40) as f64 / 2.0;
            assert!((total / want - 1.0).abs() < 1e-12, "P = {ranks}");
        }
    }

    #[test]
    fn hiding_chunk_separates_hidden_from_exposed() {
        let m = model(8, 1 << 16, 3.125e9);
        let c_star = m.hiding_chunk();
        // Just above c*, the transfer (without latency) hides; below, not.
        let above = RingModel { latency: 0.0, tokens: (c_star * 1.1 * 8.0) as usize, ..m };
        let below = RingModel { latency: 0.0, tokens: (c_star * 0.9 * 8.0) as usize, ..m };
        assert!(above.predict().hidden);
        assert!(!below.predict().hidden);
        assert!(below.predict().exposed_comm_s > 0.0);
        assert_eq!(above.predict().exposed_comm_s, 0.0);
    }

    #[test]
    fn slow_links_set_the_pace() {
        let fast = model(16, 1 << 18, 50e9).predict();
        let slow = model(16, 1 << 18, 1e6).predict();
        assert!(slow.layer_s > fast.layer_s);
        assert!(!slow.hidden);
        let steps = 15.0;
        let (first, _) = model(16, 1 << 18, 1e6).step_flops();
        let want = first / 200e9 + steps * slow.step_transfer_s;
        assert!((slow.layer_s - want).abs() < 1e-9 * want);
    }
}
