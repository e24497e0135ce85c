//! Seeded inputs: SplitMix64 streams, standard-normal values for Q, K, V
//! and queries ([`normal`]) and cheap unit-variance values for large K/V
//! caches ([`uniform`]); both independent of the thread count. The score
//! modifiers' data of a configuration ([`mod_data`]).

use attnlab::{AttnShape, Element};
use rayon::prelude::*;

use crate::config::{Bias, BiasSpec, ModData, Mods, Sinks, Slopes};

/// Seed of every input tensor (SplitMix64 streams derived from it).
pub const SEED: u64 = 0x5EED_A77E;

/// SplitMix64: a tiny, well-mixed generator with independent streams.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    #[inline]
    pub fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// `len` standard-normal values (Box-Muller), generated in parallel in
/// fixed 64 Ki-element chunks, each chunk its own SplitMix64 stream: the
/// values depend only on (seed, stream, index), not on the thread count.
pub fn normal<T: Element>(len: usize, seed: u64, stream: u64) -> Vec<T> {
    const CHUNK: usize = 1 << 16;
    let mut out = vec![T::default(); len];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut rng = SplitMix64(
            seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03) ^ (c as u64).wrapping_mul(0x9E37),
        );
        rng.next_u64();
        for pair in chunk.chunks_mut(2) {
            let (u1, u2) = (rng.next_unit(), rng.next_unit());
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f64::consts::TAU * u2;
            pair[0] = T::from_f32((r * t.cos()) as f32);
            if pair.len() > 1 {
                pair[1] = T::from_f32((r * t.sin()) as f32);
            }
        }
    });
    out
}

/// `len` values uniform on (−√3, √3) (mean 0, variance 1, like the
/// standard-normal prefill inputs, at a fraction of Box-Muller's cost:
/// filling a 4 GiB cache stays a matter of seconds), generated in parallel
/// in fixed 64 Ki-element chunks, each its own SplitMix64 stream: the
/// values depend only on (seed, stream, index).
pub fn uniform(len: usize, seed: u64, stream: u64) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut out = vec![0f32; len];
    let half_width = 3f32.sqrt();
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let mut rng = SplitMix64(
            seed ^ stream.wrapping_mul(0xA24B_AED4_963E_E407)
                ^ (c as u64).wrapping_mul(0x9FB2_1C65),
        );
        rng.next_u64();
        for pair in chunk.chunks_mut(2) {
            let x = rng.next_u64();
            for (i, o) in pair.iter_mut().enumerate() {
                let bits = (x >> (8 + 32 * i)) & 0xFF_FFFF; // 24 bits each
                let u = (bits as f32 + 0.5) * (1.0 / (1u32 << 24) as f32);
                *o = (2.0 * u - 1.0) * half_width;
            }
        }
    });
    out
}

/// Input streams of the generated sinks and bias (Q, K, V, dO use 0..=3).
const SINK_STREAM: u64 = 4;
const BIAS_STREAM: u64 = 5;

/// The data of `mods` for a call of `shape`: given values broadcast to
/// every query head (or taken as one per head), random sinks (one
/// standard-normal logit per head) and bias (standard-normal `[1, 1, Nq,
/// Nk]`) seeded by `seed`. Errors name the flag ([`Mods::validate_for`]).
pub fn mod_data(mods: &Mods, shape: &AttnShape, seed: u64) -> Result<ModData, String> {
    let hq = shape.q_heads();
    mods.validate_for(hq)?;
    let per_head = |v: &[f32]| if v.len() == 1 { vec![v[0]; hq] } else { v.to_vec() };
    let alibi = match &mods.alibi {
        None => None,
        Some(Slopes::Default) => Some(Slopes::Default),
        Some(Slopes::Values(v)) => Some(Slopes::Values(per_head(v))),
    };
    let sinks = match &mods.sinks {
        None => None,
        Some(Sinks::Random) => Some(normal::<f32>(hq, seed, SINK_STREAM)),
        Some(Sinks::Values(v)) => Some(per_head(v)),
    };
    let bias = mods.bias.map(|BiasSpec::Random| {
        let dims = [1, 1, shape.q_len(), shape.kv_len()];
        Bias { dims, data: normal::<f32>(dims.iter().product(), seed, BIAS_STREAM) }
    });
    Ok(ModData { softcap: mods.softcap, alibi, sinks, bias })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mod_data_broadcasts_values_and_seeds_random_ones() {
        let shape = |hq| {
            AttnShape::builder()
                .batch(1)
                .q_heads(hq)
                .kv_heads(1)
                .q_len(3)
                .kv_len(5)
                .head_dim(4)
                .v_dim(4)
                .build()
                .unwrap()
        };
        let m = Mods {
            softcap: Some(20.0),
            alibi: Some(Slopes::Values(vec![0.5])),
            sinks: Some(Sinks::Random),
            bias: Some(BiasSpec::Random),
        };
        let d = mod_data(&m, &shape(4), 7).unwrap();
        assert_eq!(d.alibi, Some(Slopes::Values(vec![0.5; 4])));
        assert_eq!(d.sinks.as_ref().unwrap().len(), 4);
        assert_eq!(d.sinks, mod_data(&m, &shape(4), 7).unwrap().sinks, "seeded");
        assert_ne!(d.sinks, mod_data(&m, &shape(4), 8).unwrap().sinks);
        let b = d.bias.as_ref().unwrap();
        assert_eq!((b.dims, b.data.len()), ([1, 1, 3, 5], 15));
        let p = d.params(&attnlab::AttnParams::causal()).unwrap();
        p.validate_for(&shape(4)).unwrap();
        assert_eq!(p.mask, attnlab::Mask::Causal);
        assert_eq!((p.softcap, p.sinks.map(<[f32]>::len)), (Some(20.0), Some(4)));
        assert_eq!(p.bias.unwrap().dims(), [1, 1, 3, 5]);
        assert_eq!(m.bias_bytes(3, 5), 60);
        // one per head is taken as is; any other count names the flag
        let two = Mods { sinks: Some(Sinks::Values(vec![1.0, 2.0])), ..Default::default() };
        assert_eq!(mod_data(&two, &shape(2), 1).unwrap().sinks, Some(vec![1.0, 2.0]));
        let e = mod_data(&two, &shape(4), 1).unwrap_err();
        assert!(e.starts_with("--sinks: expected 1 value or one per query head (4)"), "{e}");
    }

    #[test]
    fn normal_is_deterministic_and_standard() {
        let a = normal::<f32>(200_001, 7, 1);
        let b = normal::<f32>(200_001, 7, 1);
        assert_eq!(a, b);
        let c = normal::<f32>(1000, 7, 2);
        assert_ne!(&a[..1000], &c[..]);
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0).abs() < 0.02, "{var}");
    }
}
