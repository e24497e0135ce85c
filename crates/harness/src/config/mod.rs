//! What one measurement is: a [`Config`] (kind, kernel, shape, mask,
//! storage type, threads, score modifiers) and its id, built from one
//! [`Dtype`], one [`MaskSpec`] (with the one `--window` grammar), the
//! sweep's head [`Grouping`]s and the [`Mods`] it applies.

mod dtype;
mod grouping;
mod mask;
pub mod mods;

pub use dtype::Dtype;
pub use grouping::{Grouping, grouping_name};
pub use mask::MaskSpec;
pub use mods::{Bias, BiasSpec, ModData, Mods, Sinks, Slopes};

use attnlab::{AttnError, AttnParams, AttnShape, Kernel, Par};
use serde::{Deserialize, Serialize};

/// What a configuration times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One forward call over Q, K, V (`attnlab::Kernel::forward`).
    #[default]
    Prefill,
    /// One step of `attnlab::flash::decode`: `q_len` new queries against a KV
    /// cache of `kv_len` positions stored as `dtype` (queries are f32).
    Decode,
    /// One backward call (`attnlab::Kernel::backward`): dQ, dK, dV from Q,
    /// K, V, the forward's O and LSE (computed before, untimed) and dO.
    Backward,
    /// One forward of a whole attention layer (`attnlab::MultiHeadAttention`,
    /// self-attention, `d_model = Hq·d`): the Q, K, V and output
    /// projections and the flash kernel, each timed ([`Config::layer`]).
    Layer,
    /// The layer's backward (`dX`, every `dW`) from a forward run before,
    /// untimed.
    #[serde(rename = "layer_backward")]
    LayerBackward,
}

impl Kind {
    /// "prefill" or "decode": the first part of ids and criterion's group.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Prefill => "prefill",
            Kind::Decode => "decode",
            Kind::Backward => "backward",
            Kind::Layer => "layer",
            Kind::LayerBackward => "layer-backward",
        }
    }

    /// A whole layer, forward or backward.
    pub fn is_layer(self) -> bool {
        matches!(self, Kind::Layer | Kind::LayerBackward)
    }

    /// A backward pass (of the kernel or of the layer).
    pub fn is_backward(self) -> bool {
        matches!(self, Kind::Backward | Kind::LayerBackward)
    }
}

/// One point of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Prefill or decode (absent in schema-1 files: prefill).
    #[serde(default)]
    pub kind: Kind,
    /// "naive", "flash" or "oracle" (decode: "flash").
    pub kernel: String,
    /// B.
    pub batch: usize,
    /// Hq.
    pub q_heads: usize,
    /// Hkv.
    pub kv_heads: usize,
    /// Nq.
    pub q_len: usize,
    /// Nk.
    pub kv_len: usize,
    /// d.
    pub head_dim: usize,
    /// dv.
    pub v_dim: usize,
    /// Mask.
    pub mask: MaskSpec,
    /// Storage type (decode: of the K/V cache; queries are f32).
    pub dtype: Dtype,
    /// Threads (1 = `Par::Seq`).
    pub threads: usize,
    /// Score modifiers (absent in rows of the plain call, and in files
    /// from before they existed).
    #[serde(default, skip_serializing_if = "Mods::is_plain")]
    pub mods: Mods,
}

impl Config {
    /// A prefill configuration of the sweep: B = 1, Nq = Nk = n, dv = d.
    #[allow(clippy::too_many_arguments)]
    pub fn prefill(
        kernel: &str,
        g: Grouping,
        mask: MaskSpec,
        d: usize,
        dtype: Dtype,
        threads: usize,
        n: usize,
    ) -> Config {
        let (hq, hkv) = g.heads();
        Config {
            kind: Kind::Prefill,
            kernel: kernel.into(),
            batch: 1,
            q_heads: hq,
            kv_heads: hkv,
            q_len: n,
            kv_len: n,
            head_dim: d,
            v_dim: d,
            mask,
            dtype,
            threads,
            mods: Mods::default(),
        }
    }

    /// The same configuration with the score modifiers `mods`.
    pub fn with_mods(self, mods: Mods) -> Config {
        Config { mods, ..self }
    }

    /// A backward configuration of the sweep: the prefill problem of the
    /// same arguments, timed as one gradient call.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        kernel: &str,
        g: Grouping,
        mask: MaskSpec,
        d: usize,
        dtype: Dtype,
        threads: usize,
        n: usize,
    ) -> Config {
        Config { kind: Kind::Backward, ..Config::prefill(kernel, g, mask, d, dtype, threads, n) }
    }

    /// A layer configuration of the sweep: self-attention over `n` tokens
    /// of `d_model = 1024` (B = 1), 16 query heads of `d = dv = 64` over
    /// `kv_heads` K/V heads (16: MHA, 4: GQA), causal, f32, flash, without
    /// biases; the forward or (`backward`) the backward pass.
    pub fn layer(kv_heads: usize, threads: usize, n: usize, backward: bool) -> Config {
        Config {
            kind: if backward { Kind::LayerBackward } else { Kind::Layer },
            kernel: Kernel::Flash.name().into(),
            batch: 1,
            q_heads: 16,
            kv_heads,
            q_len: n,
            kv_len: n,
            head_dim: 64,
            v_dim: 64,
            mask: MaskSpec::Causal,
            dtype: Dtype::F32,
            threads,
            mods: Mods::default(),
        }
    }

    /// Layer rows: the model width, `Hq·d`.
    pub fn d_model(&self) -> usize {
        self.q_heads * self.head_dim
    }

    /// Layer rows: FLOPs credited to `(projections, attention)`. The
    /// projections are four GEMMs, `2·B·N·d_model·(Hq·d + Hkv·d + Hkv·dv +
    /// Hq·dv)` (Q, K, V, output), and their backward twice that (`dW` and
    /// `dX` of each); the attention is the kernel's count
    /// ([`Config::flops`] of the same problem: causal halves it, the
    /// backward 2.5 ×). `None` for other rows.
    pub fn layer_flops(&self) -> Option<(f64, f64)> {
        if !self.kind.is_layer() {
            return None;
        }
        let (b, dm) = (self.batch as f64, self.d_model() as f64);
        let (hq, hkv) = (self.q_heads as f64, self.kv_heads as f64);
        let (d, dv) = (self.head_dim as f64, self.v_dim as f64);
        let (nq, nk) = (self.q_len as f64, self.kv_len as f64);
        let fwd = 2.0 * b * dm * (nq * hq * d + nk * hkv * (d + dv) + nq * hq * dv);
        let attn = Config { kind: Kind::Prefill, ..self.clone() }.flops();
        Some(if self.kind == Kind::LayerBackward { (2.0 * fwd, 2.5 * attn) } else { (fwd, attn) })
    }

    /// A decode configuration of the sweep: B = 1, Hq = 32, Hkv = 32, 8
    /// or 1 ([`Grouping::decode_heads`]), one new query (causal), d = dv =
    /// 128, a cache of `kv_len` positions stored as `dtype`.
    pub fn decode(g: Grouping, dtype: Dtype, threads: usize, kv_len: usize) -> Config {
        let (hq, hkv) = g.decode_heads();
        Config {
            kind: Kind::Decode,
            kernel: "flash".into(),
            batch: 1,
            q_heads: hq,
            kv_heads: hkv,
            q_len: 1,
            kv_len,
            head_dim: 128,
            v_dim: 128,
            mask: MaskSpec::Causal,
            dtype,
            threads,
            mods: Mods::default(),
        }
    }

    /// "mha", "gqa" or "mqa".
    pub fn grouping(&self) -> &'static str {
        grouping_name(self.q_heads, self.kv_heads)
    }

    /// Criterion function id: `flash/mha/causal/d64/f32/t2` (plus `/b{B}`,
    /// `/h{Hq}x{Hkv}` or `/dv{dv}` when they differ from the sweep's);
    /// decode: `flash/gqa/f16/t2` (plus `/b{B}`, `/h{Hq}x{Hkv}`, `/d{d}`,
    /// `/dv{dv}`, `/nq{nq}` or the mask when they differ from the sweep's);
    /// then the score modifiers, if any (`/softcap50+alibi`, [`Mods::name`]).
    pub fn function_id(&self) -> String {
        let mut s = if self.kind == Kind::Decode {
            self.decode_function_id()
        } else {
            self.prefill_function_id()
        };
        if !self.mods.is_plain() {
            s += &format!("/{}", self.mods.name());
        }
        s
    }

    fn prefill_function_id(&self) -> String {
        let mut s = format!(
            "{}/{}/{}/d{}/{}/t{}",
            self.kernel,
            self.grouping(),
            self.mask.name(),
            self.head_dim,
            self.dtype.name(),
            self.threads
        );
        if self.batch != 1 {
            s += &format!("/b{}", self.batch);
        }
        if self.q_heads != 8 || !(self.kv_heads == 8 || self.kv_heads == 2 || self.kv_heads == 1) {
            s += &format!("/h{}x{}", self.q_heads, self.kv_heads);
        }
        if self.v_dim != self.head_dim {
            s += &format!("/dv{}", self.v_dim);
        }
        s
    }

    fn decode_function_id(&self) -> String {
        let mut s =
            format!("{}/{}/{}/t{}", self.kernel, self.grouping(), self.dtype.name(), self.threads);
        if self.batch != 1 {
            s += &format!("/b{}", self.batch);
        }
        if self.q_heads != 32 || !matches!(self.kv_heads, 32 | 8 | 1) {
            s += &format!("/h{}x{}", self.q_heads, self.kv_heads);
        }
        if self.head_dim != 128 {
            s += &format!("/d{}", self.head_dim);
        }
        if self.v_dim != self.head_dim {
            s += &format!("/dv{}", self.v_dim);
        }
        if self.q_len != 1 {
            s += &format!("/nq{}", self.q_len);
        }
        if self.mask != MaskSpec::Causal {
            s += &format!("/{}", self.mask.name());
        }
        s
    }

    /// Criterion parameter: `N`, or `NqxNk` when they differ; decode: the
    /// cache length L.
    pub fn param_id(&self) -> String {
        if self.kind == Kind::Decode {
            self.kv_len.to_string()
        } else if self.q_len == self.kv_len {
            self.q_len.to_string()
        } else {
            format!("{}x{}", self.q_len, self.kv_len)
        }
    }

    /// Full id, `prefill/flash/mha/causal/d64/f32/t2/4096` or
    /// `decode/flash/gqa/f16/t2/32768`: criterion's group/function/parameter.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.kind.name(), self.function_id(), self.param_id())
    }

    /// The validated shape.
    pub fn shape(&self) -> Result<AttnShape, AttnError> {
        AttnShape::builder()
            .batch(self.batch)
            .q_heads(self.q_heads)
            .kv_heads(self.kv_heads)
            .q_len(self.q_len)
            .kv_len(self.kv_len)
            .head_dim(self.head_dim)
            .v_dim(self.v_dim)
            .build()
    }

    /// Call parameters: the mask, default scale, no finiteness scan (the
    /// inputs are generated finite; the scan is O(size), not the kernel's),
    /// and no score modifier: the runners add [`Config::mods`]' data
    /// ([`ModData::params`]).
    pub fn params(&self) -> AttnParams<'static> {
        AttnParams { mask: self.mask.mask(), check_finite: false, ..Default::default() }
    }

    /// `Par::Seq` for one thread, else `Par::Rayon(threads)` (run inside a
    /// pool of that size, so the kernel uses it as it is).
    pub fn par(&self) -> Par {
        match std::num::NonZeroUsize::new(self.threads) {
            Some(n) if n.get() > 1 => Par::Rayon(n),
            _ => Par::Seq,
        }
    }

    /// FLOPs credited: `4·B·Hq·Nq·Nk·d` (for dv = d), halved for causal
    /// with Nq = Nk ([`AttnShape::flops_conventional`]).
    /// Sliding windows are credited their visible pairs only
    /// ([`AttnShape::flops`]): the N² convention would overstate them.
    /// Backward rows: 2.5 × that (the FlashAttention-2 convention: five
    /// products of the forward's two sizes, with `P` recomputation not
    /// credited).
    pub fn flops(&self) -> f64 {
        if let Some((proj, attn)) = self.layer_flops() {
            return proj + attn;
        }
        let m = self.mask.mask();
        let fwd = match (self.shape(), self.mask) {
            (Ok(s), MaskSpec::Window(..)) => s.flops(&m),
            (Ok(s), _) => s.flops_conventional(&m),
            (Err(_), _) => 0.0,
        };
        if self.kind == Kind::Backward { 2.5 * fwd } else { fwd }
    }

    /// Bytes of inputs (Q, K, V, a bias) and outputs (O and LSE, f32);
    /// decode: the K/V cache, f32 queries, O and LSE; backward: also dO
    /// and the f32 gradients dQ, dK, dV; layer rows: the tokens, the
    /// weights, the activations (Q, K, V, O, LSE) and the output (backward:
    /// also dY, dX, the weights' gradients and those of the activations).
    pub fn io_bytes(&self) -> u64 {
        if self.kind.is_layer() {
            let (b, dm) = (self.batch as u64, self.d_model() as u64);
            let (hq, hkv) = (self.q_heads as u64, self.kv_heads as u64);
            let (d, dv) = (self.head_dim as u64, self.v_dim as u64);
            let (nq, nk) = (self.q_len as u64, self.kv_len as u64);
            let weights = dm * (hq * d + hkv * (d + dv) + hq * dv);
            let acts = b * (nq * hq * (d + dv + 1) + nk * hkv * (d + dv));
            let fwd = 4 * (b * dm * (nq + nk) + weights + acts + b * nq * dm);
            return if self.kind == Kind::LayerBackward { 2 * fwd } else { fwd };
        }
        let dt = self.dtype;
        let (b, hq, hkv) = (self.batch as u64, self.q_heads as u64, self.kv_heads as u64);
        let (nq, nk, d, dv) =
            (self.q_len as u64, self.kv_len as u64, self.head_dim as u64, self.v_dim as u64);
        let q_row = if self.kind == Kind::Decode { 4 * d } else { dt.row_bytes(d) };
        let fwd = q_row * b * hq * nq
            + b * hkv * nk * (dt.row_bytes(d) + dt.row_bytes(dv))
            + 4 * b * hq * nq * (dv + 1)
            + self.mods.bias_bytes(self.q_len, self.kv_len);
        if self.kind == Kind::Backward {
            fwd + 4 * b * hq * nq * (dv + d) + 4 * b * hkv * nk * (d + dv)
        } else {
            fwd
        }
    }

    /// The kernel's `workspace_bytes` for this configuration (decode: the
    /// split-KV partials, sized by
    /// [`attnlab::flash::decode::workspace_bytes`]).
    pub fn workspace_bytes(&self) -> u64 {
        if self.kind == Kind::Decode {
            return self.decode_workspace_bytes();
        }
        match (self.kernel.parse::<Kernel>(), self.shape()) {
            (Ok(k), Ok(s)) if self.kind.is_backward() => {
                k.backward_workspace_bytes(&s, &self.params(), self.par()) as u64
            }
            (Ok(k), Ok(s)) => k.workspace_bytes(&s, &self.params(), self.par()) as u64,
            _ => 0,
        }
    }

    /// Heap bytes one `attnlab::flash::decode` call of this configuration
    /// allocates, from the kernel's own sizing
    /// ([`attnlab::flash::decode::workspace_bytes`]): the split-KV
    /// partials, the merge buffer and each worker's scratch.
    fn decode_workspace_bytes(&self) -> u64 {
        match self.shape() {
            Ok(s) => attnlab::flash::decode::workspace_bytes(&s, self.par()) as u64,
            Err(_) => 0,
        }
    }

    /// Decode: bytes of K and V one step reads (the whole cache of
    /// `kv_len` positions per batch entry, every K/V head); `None` for
    /// prefill.
    pub fn kv_bytes(&self) -> Option<u64> {
        (self.kind == Kind::Decode).then(|| {
            let row = self.dtype.row_bytes(self.head_dim as u64)
                + self.dtype.row_bytes(self.v_dim as u64);
            (self.batch * self.kv_heads * self.kv_len) as u64 * row
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_the_axes() {
        let c = Config::prefill("flash", Grouping::Mha, MaskSpec::Causal, 64, Dtype::F32, 2, 4096);
        assert_eq!(c.id(), "prefill/flash/mha/causal/d64/f32/t2/4096");
        let c = Config::prefill("naive", Grouping::Mqa, MaskSpec::Full, 128, Dtype::Bf16, 1, 512);
        assert_eq!(c.id(), "prefill/naive/mqa/full/d128/bf16/t1/512");
        assert_eq!(c.grouping(), "mqa");
    }

    #[test]
    fn modifiers_name_themselves_in_ids_and_count_the_bias() {
        let c = Config::prefill("flash", Grouping::Gqa, MaskSpec::Causal, 64, Dtype::F32, 1, 4096);
        let m = Mods { softcap: Some(50.0), bias: Some(BiasSpec::Random), ..Default::default() };
        let b = c.clone().with_mods(m);
        assert_eq!(b.id(), "prefill/flash/gqa/causal/d64/f32/t1/softcap50+bias/4096");
        assert_eq!(b.io_bytes(), c.io_bytes() + 4 * 4096 * 4096);
        let d = Config::decode(Grouping::Gqa, Dtype::F32, 2, 32768)
            .with_mods(Mods { sinks: Some(Sinks::Random), ..Default::default() });
        assert_eq!(d.id(), "decode/flash/gqa/f32/t2/sinks/32768");
        // the child protocol and the results carry the modifiers
        let back: Config = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert_eq!(back, b);
        let plain = serde_json::to_value(&c).unwrap();
        assert!(plain.get("mods").is_none(), "{plain}");
    }

    #[test]
    fn decode_ids_and_bytes() {
        let c = Config::decode(Grouping::Gqa, Dtype::F16, 2, 32768);
        assert_eq!(c.id(), "decode/flash/gqa/f16/t2/32768");
        assert_eq!((c.q_heads, c.kv_heads, c.q_len, c.head_dim), (32, 8, 1, 128));
        assert_eq!(c.kv_bytes(), Some(8 * 32768 * 256 * 2));
        let c = Config::decode(Grouping::Mha, Dtype::F32, 1, 131072);
        assert_eq!(c.id(), "decode/flash/mha/f32/t1/131072");
        assert_eq!(c.kv_bytes(), Some(4 << 30));
        let c = Config { q_len: 4, batch: 2, ..c };
        assert_eq!(c.id(), "decode/flash/mha/f32/t1/b2/nq4/131072");
        assert_eq!(
            Config::prefill("flash", Grouping::Gqa, MaskSpec::Full, 64, Dtype::F32, 2, 64)
                .kv_bytes(),
            None
        );
    }

    #[test]
    fn flops_follow_the_convention() {
        let c = Config::prefill("flash", Grouping::Gqa, MaskSpec::Full, 64, Dtype::F32, 1, 1024);
        assert_eq!(c.flops(), 4.0 * 8.0 * 1024.0 * 1024.0 * 64.0);
        let c = Config { mask: MaskSpec::Causal, ..c };
        assert_eq!(c.flops(), 2.0 * 8.0 * 1024.0 * 1024.0 * 64.0);
        let b = Config::backward("flash", Grouping::Mha, MaskSpec::Causal, 64, Dtype::F32, 1, 1024);
        assert_eq!(b.id(), "backward/flash/mha/causal/d64/f32/t1/1024");
        assert_eq!(b.flops(), 2.5 * c.flops());
        assert!(b.io_bytes() > c.io_bytes());
    }
}
