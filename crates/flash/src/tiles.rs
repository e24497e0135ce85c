//! Tile sizes and register blocking, in one place, with the reason for
//! each value. Measured on Zen 4 (32 KiB L1d and 1 MiB L2 per core, 32
//! zmm registers, one 512-bit FMA per cycle); see `docs/design.md`.

use attn_core::AttnShape;

/// Lanes of an `f32x16`.
pub const LANES: usize = 16;

/// Broadcast side of both micro-kernels: 8 keys per `Sᵀ` micro-tile and 8
/// queries per `O` micro-tile. With [`NV`] = 2 that is 16 accumulators + 2
/// loaded vectors + 1 broadcast = 19 of the 32 zmm registers, so nothing
/// spills; 8×32 measured 98–99% of peak in isolation (KERNEL-NOTES).
pub const MR: usize = 8;

/// Vectors per micro-tile on the vector side (2 × 16 lanes = 32 columns).
pub const NV: usize = 2;

/// Columns of a micro-tile on the vector side: queries in `Sᵀ = K·Qᵀ`
/// (so `Br` is a multiple of this), `dv` columns in `O += P·V`.
pub const NR: usize = NV * LANES;

/// Budget for the per-head state a worker keeps for one group chunk
/// (packed `Qᵀ` + `O` accumulator): half the L2, so K/V tiles and `Sᵀ`
/// stay resident next to it.
pub const GROUP_STATE_BYTES: usize = 512 * 1024;

/// Query rows (`Br`) and key rows (`Bc`) of one tile.
///
/// `br` must be a positive multiple of [`NR`] (32) and at most 256; `bc` a
/// positive multiple of [`MR`] (8). Larger `br` means fewer re-reads of
/// K/V per query; larger `bc` means fewer online-softmax rescales; the
/// `Sᵀ` tile (`br·bc·4` bytes) should stay near the L1/L2 boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TileConfig {
    /// Query rows per tile.
    pub br: usize,
    /// Key rows per tile.
    pub bc: usize,
}

impl TileConfig {
    /// The measured default for a shape (see `docs/design.md`).
    ///
    /// `Br = 256, Bc = 64`: on one core at N = 4096 (`examples/tile_sweep.rs`,
    /// all sizes side by side in one process) 256×64 and 256×128 were the
    /// fastest at d = 64 and d = 128, causal or not, 3–6% ahead of 128×128
    /// and 10–20% ahead of 64×128: a taller query tile re-reads K and V
    /// (from L3 once a head's K/V outgrow the L2) fewer times. Shorter
    /// query sequences get `Br` ≈ `Nq/2` (a multiple of 32): at least two
    /// query tiles per head keep both cores busy and no tile is mostly
    /// padding (N = 128, 2 threads: 64×64 measured 12% faster than 128×64).
    pub fn for_shape(shape: &AttnShape) -> TileConfig {
        let br = (shape.q_len() / 2).next_multiple_of(NR).clamp(NR, 256);
        TileConfig { br, bc: 64 }
    }

    /// Checks the constraints above.
    pub fn validate(&self) -> Result<(), String> {
        if self.br == 0 || !self.br.is_multiple_of(NR) || self.br > 256 {
            return Err(format!("br must be a multiple of {NR} in 32..=256, got {}", self.br));
        }
        if self.bc == 0 || !self.bc.is_multiple_of(MR) {
            return Err(format!("bc must be a positive multiple of {MR}, got {}", self.bc));
        }
        Ok(())
    }
}

/// Everything the loop nest needs to size its buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Tile sizes.
    pub tiles: TileConfig,
    /// Q/K head dim.
    pub d: usize,
    /// V head dim.
    pub dv: usize,
    /// `dv` in vectors (rounded up).
    pub dvv: usize,
    /// Query heads of one GQA group processed together against one packed
    /// K/V tile (all of the group unless its state would outgrow
    /// [`GROUP_STATE_BYTES`]).
    pub heads_per_item: usize,
}

impl Plan {
    /// The plan for `shape` with `tiles`.
    pub fn new(shape: &AttnShape, tiles: TileConfig) -> Plan {
        let (d, dv) = (shape.head_dim(), shape.v_dim());
        let dvv = dv.div_ceil(LANES);
        let per_head = tiles.br * (d + dvv * LANES) * 4;
        let heads_per_item = (GROUP_STATE_BYTES / per_head).clamp(1, shape.group_size());
        Plan { tiles, d, dv, dvv, heads_per_item }
    }

    /// Bytes of one worker's scratch.
    pub fn worker_bytes(&self) -> usize {
        let TileConfig { br, bc } = self.tiles;
        let h = self.heads_per_item;
        let floats = h * br * self.d      // packed Qᵀ per head
            + h * br * self.dvv * LANES   // O accumulators
            + 2 * h * br                  // running max and sum
            + bc * (br + LANES)          // Sᵀ / Pᵀ tile (padded rows)
            + bc * self.d                 // packed K tile
            + bc * self.dvv * LANES       // packed V tile
            + br                          // per-query rescale factors
            + self.d.max(self.dv); // one converted input row (f16/bf16)
        floats * 4 + 2 * br * std::mem::size_of::<usize>()
    }
}
