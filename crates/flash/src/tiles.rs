//! Tile sizes and register blocking, in one place, with the reason for
//! each value: the prefill loop nest's here, split-KV decode's in
//! [`decode`]. Measured on Zen 4 (32 KiB L1d and 1 MiB L2 per core, 32
//! zmm registers, one 512-bit FMA per cycle); see `docs/design.md`.

use attn_core::AttnShape;

/// Lanes of an `f32x16`.
pub(crate) use attn_simd::LANES;

/// Broadcast side of both micro-kernels: 8 keys per `Sᵀ` micro-tile and 8
/// queries per `O` micro-tile. With [`NV`] = 2 that is 16 accumulators + 2
/// loaded vectors + 1 broadcast = 19 of the 32 zmm registers, so nothing
/// spills; 8×32 measured 98–99% of peak in isolation on Zen 4
/// (`cargo bench --bench kernels -- micro/`).
pub(crate) const MR: usize = 8;

/// Vectors per micro-tile on the vector side (2 × 16 lanes = 32 columns).
pub(crate) const NV: usize = 2;

/// Columns of a micro-tile on the vector side: queries in `Sᵀ = K·Qᵀ`
/// (so `Br` is a multiple of this), `dv` columns in `O += P·V`.
pub(crate) const NR: usize = NV * LANES;

/// Budget for the per-head state a worker keeps for one group chunk
/// (packed `Qᵀ` + `O` accumulator): half the L2, so K/V tiles and `Sᵀ`
/// stay resident next to it.
pub(crate) const GROUP_STATE_BYTES: usize = 512 * 1024;

/// Largest `Br`: 256 query rows. The online-softmax statistics of one tile
/// live in `BR_MAX / LANES` = 16 vectors; a taller tile measured no faster
/// (`examples/tile_sweep.rs`) and would need more registers than exist.
pub const BR_MAX: usize = 256;

/// Vectors of 16 queries in the tallest tile (the size of the per-tile
/// statistics arrays in the loop nest).
pub(crate) const BR_VECS: usize = BR_MAX / LANES;

/// Largest `Bc`: 1024 keys. Past a few hundred keys the `Sᵀ` tile leaves
/// the L2 and a larger tile only costs memory; the bound keeps a tile
/// override from asking for absurd scratch.
pub const BC_MAX: usize = 1024;

/// Query rows (`Br`) and key rows (`Bc`) of one tile.
///
/// `br` must be a positive multiple of 32 (the query side of a
/// micro-tile) and at most [`BR_MAX`]; `bc` a positive multiple of 8 (the
/// key side) and at most [`BC_MAX`]. Larger `br` means fewer re-reads of
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
        let br = (shape.q_len() / 2).next_multiple_of(NR).clamp(NR, BR_MAX);
        TileConfig { br, bc: 64 }
    }

    /// Checks the constraints above.
    pub fn validate(&self) -> Result<(), attn_core::AttnError> {
        let err = |reason: String| attn_core::AttnError::Param { name: "tiles", reason };
        if self.br == 0 || !self.br.is_multiple_of(NR) || self.br > BR_MAX {
            return Err(err(format!(
                "br must be a multiple of {NR} in {NR}..={BR_MAX}, got {}",
                self.br
            )));
        }
        if self.bc == 0 || !self.bc.is_multiple_of(MR) || self.bc > BC_MAX {
            return Err(err(format!(
                "bc must be a multiple of {MR} in {MR}..={BC_MAX}, got {}",
                self.bc
            )));
        }
        Ok(())
    }
}

/// Everything the loop nest needs to size its buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Tile sizes.
    pub(crate) tiles: TileConfig,
    /// Q/K head dim.
    pub(crate) d: usize,
    /// V head dim.
    pub(crate) dv: usize,
    /// `dv` in vectors (rounded up).
    pub(crate) dvv: usize,
    /// Query heads of one GQA group processed together against one packed
    /// K/V tile (all of the group unless its state would outgrow
    /// `GROUP_STATE_BYTES`, half the L2).
    pub(crate) heads_per_item: usize,
}

impl Plan {
    /// The plan for `shape` with `tiles` (validated by the caller).
    pub(crate) fn new(shape: &AttnShape, tiles: TileConfig) -> Plan {
        let (d, dv) = (shape.head_dim(), shape.v_dim());
        let dvv = dv.div_ceil(LANES);
        let per_head = tiles.br * (d + dvv * LANES) * 4;
        let heads_per_item = (GROUP_STATE_BYTES / per_head).clamp(1, shape.group_size());
        Plan { tiles, d, dv, dvv, heads_per_item }
    }

    /// Tile sizes.
    pub fn tiles(&self) -> TileConfig {
        self.tiles
    }
    /// Query heads processed together against one packed K/V tile.
    pub fn heads_per_item(&self) -> usize {
        self.heads_per_item
    }

    /// Bytes of one worker's buffers (its slot in the workspace excluded).
    pub(crate) fn worker_bytes(&self) -> usize {
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

/// Split-KV decode (`crate::split_kv`): how keys are chunked over workers
/// and blocked inside a chunk.
pub mod decode {
    /// Calls with at most this many queries per head (decode-like) and no
    /// tile override run split-KV: the tiled loop nest would pad each
    /// query tile to 32 rows and stream K/V per tile, while split-KV reads
    /// each K/V element once for all query heads of its group and spreads
    /// the keys over the threads.
    pub const SPLIT_KV_MAX_Q: usize = 16;

    /// Smallest split-KV chunk: 512 positions of K+V at d = 128 are 512 KiB
    /// in f32 — large enough to stream at full bandwidth, small enough that
    /// L = 4096 already gives 8 chunks per head.
    pub(crate) const CHUNK: usize = 512;

    /// Most chunks per (batch, kv head): longer caches get longer chunks, so
    /// the partial results take `O(B·Hq·nq·dv)` memory whatever the length.
    pub(crate) const MAX_CHUNKS: usize = 64;

    /// Keys per block inside a chunk: one 16-lane vector of scores per row,
    /// so each block's max, exp and sum are one vector operation.
    pub(crate) const KB: usize = attn_simd::LANES;
}
