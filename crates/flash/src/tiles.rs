//! Tile sizes and register blocking, in one place, with the reason for
//! each value: the prefill loop nest's here, split-KV decode's in
//! [`decode`]. The prefill tiles are chosen at run time from the caches of
//! the CPU that runs them ([`attn_simd::cpu::facts`], read once per
//! process); [`TileConfig::for_cpu`] has the rules and the measurements
//! behind them, `docs/design.md` the picture.
//!
//! Measured: AMD Zen 4 (32 KiB L1d, 1 MiB L2 per core, AVX-512 on 256-bit
//! halves) and AMD Zen 5 (EPYC family 26 model 2: 48 KiB L1d, 1 MiB L2,
//! two full 512-bit FMA pipes). Intel Xeon Sapphire/Emerald Rapids (48 KiB
//! L1d, 2 MiB L2, two 512-bit FMA ports) gets tiles reasoned from its
//! caches and is **not measured** by this code (see [`TileConfig::for_cpu`]).
use attn_core::AttnShape;
use attn_simd::cpu::CpuFacts;

/// Lanes of an `f32x16`.
pub(crate) use attn_simd::LANES;

/// Broadcast side of both micro-kernels: 8 keys per `Sᵀ` micro-tile and 8
/// queries per `O` micro-tile. With [`NV`] = 2 that is 16 accumulators + 2
/// loaded vectors + 1 broadcast = 19 of the 32 zmm registers, so nothing
/// spills; 8×32 measured 98–99% of peak in isolation on Zen 4 and 250–257
/// GFLOP/s (~93% of the 272 measured peak) on Zen 5
/// (`cargo bench --bench kernels -- micro/`).
///
/// This is the only register blocking compiled, so it is not chosen per
/// CPU. Where it is tight: with two 512-bit FMA ports (Intel Xeon, Zen 5)
/// its 16 FMAs per 8 broadcasts + 2 loads leave the load side busier than
/// the FMAs; blockings with more FMAs per load (14×32, 6×64) are the
/// candidates there, unmeasured. Without AVX-512 an `f32x16` is two ymm
/// registers and the 16 accumulators alone fill the 16 of AVX2.
pub(crate) const MR: usize = 8;

/// Vectors per micro-tile on the vector side (2 × 16 lanes = 32 columns).
pub(crate) const NV: usize = 2;

/// Columns of a micro-tile on the vector side: queries in `Sᵀ = K·Qᵀ`
/// (so `Br` is a multiple of this), `dv` columns in `O += P·V`.
pub(crate) const NR: usize = NV * LANES;

/// L1d assumed where the CPU reports none (a Zen 4 core's, the smallest
/// of the measured CPUs).
pub(crate) const ASSUMED_L1D: u64 = 32 << 10;

/// L2 per core assumed where the CPU reports none (Zen 4's and Zen 5's).
pub(crate) const ASSUMED_L2: u64 = 1 << 20;

/// Budget for the per-head state a worker keeps for one group chunk
/// (packed `Qᵀ` + `O` accumulator): half the core's L2, so K/V tiles and
/// `Sᵀ` stay resident next to it. 512 KiB on Zen 4/Zen 5 (measured there,
/// as the former fixed budget); 1 MiB on a 2 MiB-L2 Xeon (unmeasured).
pub(crate) fn group_state_bytes(cpu: &CpuFacts) -> usize {
    (cpu.caches.l2.unwrap_or(ASSUMED_L2) / 2) as usize
}

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
    /// The tiles for `shape` on the CPU running this process
    /// ([`TileConfig::for_cpu`] with [`attn_simd::cpu::facts`]).
    pub fn for_shape(shape: &AttnShape) -> TileConfig {
        TileConfig::for_cpu(shape, attn_simd::cpu::facts())
    }

    /// The tiles for `shape` on a CPU with `cpu`'s caches and datapath.
    ///
    /// **`Br`** (query rows): `Nq/2` rounded up to a multiple of 32, at most
    /// [`BR_MAX`] = 256, and at most what keeps one head's `Qᵀ` panel and
    /// `O` accumulators (`Br·(d + dv)·4` bytes) within half the L2.
    /// - Taller is better for long sequences: a taller query tile re-reads
    ///   K and V (from L3 once a head's K/V outgrow the L2) fewer times. On
    ///   one core at N = 4096 (`examples/tile_sweep.rs`, all sizes side by
    ///   side in one process) 256×64 and 256×128 were the fastest at d = 64
    ///   and 128, causal or not: on Zen 4 3–6% ahead of 128×128 and 10–20%
    ///   ahead of 64×128; on Zen 5 (d = 128) 256×64 205 GFLOP/s, 256×128
    ///   196, 192×128 188.
    /// - `Nq/2`: at least two query tiles per head keep both cores busy
    ///   and no tile is mostly padding (N = 128, 2 threads, Zen 4: 64×64
    ///   12% faster than 128×64).
    /// - Half the L2: every K/V tile of an item reads that head's `Qᵀ` and
    ///   reads and writes its `O`, so they must stay L2-resident. This binds
    ///   only for `d + dv` above 512 on a 1 MiB L2 (e.g. d = dv = 512 gets
    ///   `Br` = 128) and above 1024 on a 2 MiB L2 — a reasoned limit, not
    ///   a measured one: no measured shape reached it.
    ///
    /// **`Bc`** (key rows): 64, or 32 on a core with under 24 KiB of L1d.
    /// The `P·V` loop keeps one V column chunk (`Bc` keys × 32 floats =
    /// `Bc`·128 bytes) in L1 while the `Pᵀ` strips of 8 queries (one 64-byte
    /// line per key) stream past: `Bc`·192 bytes, which should take at most
    /// half the L1d — 12 KiB at `Bc` = 64. A 48 KiB L1d would hold
    /// `Bc` = 128 as well, but on Zen 5 (48 KiB) 256×64 measured ahead of
    /// 256×128 (205 vs 196 GFLOP/s, above) — likely because the larger `Sᵀ`
    /// tile (128 KiB) leaves the L2 less room, while the rescale of `O` is already only
    /// `1/(2·Bc)` of the work. No x86 core with AVX-512 has less than
    /// 32 KiB of L1d, so 32 is for unknown, small cores.
    ///
    /// **Datapath**: Zen 4 (AVX-512 on 256-bit halves) and Zen 5 (two
    /// full 512-bit FMA pipes, as on Intel Xeon) measured the same best
    /// tiles, so the tiles do not depend on it; what it changes — the
    /// register blocking — is discussed at `MR` in this module.
    ///
    /// **Intel Xeon Sapphire/Emerald Rapids** (48 KiB L1d, 2 MiB L2): the
    /// rules give 256×64, with up to 1 MiB of query-head state per item
    /// (more heads of a GQA group share each K/V tile). Not measured by this
    /// code; an earlier tile sweep on a family 6 model 207 Xeon, recorded in
    /// the project's kernel notes, found 256×64 the best of 64×128 …
    /// 256×128 (104–125 GFLOP/s at d = 128, 1 thread).
    pub fn for_cpu(shape: &AttnShape, cpu: &CpuFacts) -> TileConfig {
        let per_row = (shape.head_dim() + shape.v_dim().div_ceil(LANES) * LANES) * 4;
        let br_cap = (group_state_bytes(cpu) / per_row / NR * NR).clamp(NR, BR_MAX);
        let br = (shape.q_len() / 2).next_multiple_of(NR).clamp(NR, br_cap);
        let l1d = cpu.caches.l1d.unwrap_or(ASSUMED_L1D) as usize;
        let bc = if 64 * (NR * 4 + 64) <= l1d / 2 { 64 } else { 32 };
        TileConfig { br, bc }
    }

    /// Every tile size [`TileConfig::for_cpu`] can return, whatever the CPU
    /// and shape: `Br` in 32, 64, …, 256 and `Bc` in {32, 64}. Tests run
    /// each against the oracle.
    pub fn cpu_choices() -> Vec<TileConfig> {
        (NR..=BR_MAX).step_by(NR).flat_map(|br| [32, 64].map(|bc| TileConfig { br, bc })).collect()
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
    /// `group_state_bytes`, half the L2).
    pub(crate) heads_per_item: usize,
}

impl Plan {
    /// The plan for `shape` with `tiles` (validated by the caller) on the
    /// CPU running this process.
    pub(crate) fn new(shape: &AttnShape, tiles: TileConfig) -> Plan {
        Plan::for_cpu(shape, tiles, attn_simd::cpu::facts())
    }

    /// The plan for `shape` with `tiles` on a CPU with `cpu`'s L2.
    pub(crate) fn for_cpu(shape: &AttnShape, tiles: TileConfig, cpu: &CpuFacts) -> Plan {
        let (d, dv) = (shape.head_dim(), shape.v_dim());
        let dvv = dv.div_ceil(LANES);
        let per_head = tiles.br * (d + dvv * LANES) * 4;
        let heads_per_item = (group_state_bytes(cpu) / per_head).clamp(1, shape.group_size());
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
            + 3 * h * br                  // running max, sum and Σ p·(u − m)
            + bc * (br + LANES)          // Sᵀ / Pᵀ tile (padded rows)
            + bc * self.d                 // packed K tile
            + bc * self.dvv * LANES       // packed V tile
            + br                          // per-query rescale factors
            + crate::forward::QT_ROWS * self.d; // query rows widened (f16/bf16)
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
