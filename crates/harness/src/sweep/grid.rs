//! The grid: which configurations a sweep of each [`Profile`] runs,
//! prefill (N × grouping × mask × d × dtype × threads, naive and flash)
//! and decode (L × grouping × cache dtype × threads), the score modifiers
//! next to a plain call ([`sweep_mods`]), a whole attention layer
//! (projections and attention, forward and backward), with a description
//! of each part for the results file.

use crate::config::{BiasSpec, Config, Dtype, Grouping, Kind, MaskSpec, Mods, Sinks, Slopes};

/// Size of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Two tiny configurations (`cargo test --benches`): checks plumbing.
    Smoke,
    /// A few seconds: short N only.
    Quick,
    /// About 10 minutes on a 2-core Zen 4 (`cargo bench -p harness`), of
    /// which decode about 1.5.
    Default,
    /// Flash to N = 131072, every axis further out, the whole decode grid
    /// (hours).
    Full,
}

impl Profile {
    /// Name as in `ATTNLAB_PROFILE`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Smoke => "smoke",
            Profile::Quick => "quick",
            Profile::Default => "default",
            Profile::Full => "full",
        }
    }
    /// Parses a name.
    pub fn parse(s: &str) -> Result<Profile, String> {
        match s {
            "smoke" => Ok(Profile::Smoke),
            "quick" => Ok(Profile::Quick),
            "" | "default" => Ok(Profile::Default),
            "full" => Ok(Profile::Full),
            _ => Err(format!("ATTNLAB_PROFILE={s}: expected quick, default or full")),
        }
    }
}

/// Cache lengths L of the decode grid.
pub const DECODE_LENS: [usize; 6] = [1024, 4096, 16384, 32768, 65536, 131072];

/// The sweep's configurations for `profile` with `all` = every core:
/// prefill sorted by N (then by kernel, grouping, mask, d, dtype,
/// threads), then decode sorted by L (then grouping, dtype, threads); and
/// a description of the grid, one line per part.
pub fn grid(profile: Profile, all: usize) -> (Vec<Config>, Vec<String>) {
    let (mut v, mut desc) = prefill_grid(profile, all);
    let (b, bd) = backward_grid(profile, all);
    v.extend(b);
    desc.extend(bd);
    let (d, dd) = decode_grid(profile, all);
    v.extend(d);
    desc.extend(dd);
    let (m, md) = modifier_grid(profile, all);
    v.extend(m);
    desc.extend(md);
    let (l, ld) = layer_grid(profile, all);
    v.extend(l);
    desc.extend(ld);
    v.sort_by_key(|c| {
        let decode = c.kind == Kind::Decode;
        let dtype_key = if decode {
            Dtype::CACHES.iter().position(|d| *d == c.dtype).unwrap_or(Dtype::CACHES.len())
        } else {
            usize::from(c.dtype == Dtype::F32)
        };
        (
            decode,
            if decode { c.kv_len } else { c.q_len },
            c.kernel.clone(),
            ["mha", "gqa", "mqa"].iter().position(|g| *g == c.grouping()),
            c.mask.name(),
            c.head_dim,
            dtype_key,
            c.threads,
            c.mods.order_key(),
        )
    });
    // A configuration named twice (the plain calls of the modifier part)
    // runs once, where it came first.
    let mut seen = std::collections::HashSet::new();
    v.retain(|c| seen.insert(c.id()));
    (v, desc)
}

/// The modifiers the sweep measures, each alone, and (for prefill, where
/// a bias exists) all four together: a softcap of 50 (Gemma 2's), ALiBi
/// with the paper's slopes, seeded sinks, a seeded `[1, 1, N, N]` bias.
pub fn sweep_mods(prefill: bool) -> Vec<Mods> {
    let one = Mods::default();
    let mut v = vec![
        Mods { softcap: Some(50.0), ..one.clone() },
        Mods { alibi: Some(Slopes::Default), ..one.clone() },
        Mods { sinks: Some(Sinks::Random), ..one.clone() },
    ];
    if prefill {
        v.push(Mods { bias: Some(BiasSpec::Random), ..one });
        v.push(Mods {
            softcap: Some(50.0),
            alibi: Some(Slopes::Default),
            sinks: Some(Sinks::Random),
            bias: Some(BiasSpec::Random),
        });
    }
    v
}

/// The score-modifier part of [`grid`] (unsorted): each modifier of
/// [`sweep_mods`] on a flash prefill call and a decode step, next to the
/// same call without it (in the grid already, or added here), so that the
/// report can divide one by the other (rows from the same run).
fn modifier_grid(profile: Profile, all: usize) -> (Vec<Config>, Vec<String>) {
    use Grouping::*;
    let all = all.max(1);
    let mut v = Vec::new();
    let mut desc = Vec::new();
    let mut with_plain = |plain: Config, prefill: bool| {
        for m in sweep_mods(prefill) {
            v.push(plain.clone().with_mods(m));
        }
        v.push(plain);
    };
    let what = "softcap 50, ALiBi (the paper's slopes), sinks (seeded), bias (seeded [1, 1, N, \
                N], f32)";
    match profile {
        Profile::Smoke => {
            let all4 = sweep_mods(true).pop().expect("the combined modifiers");
            v.push(
                Config::prefill("flash", Gqa, MaskSpec::Causal, 16, Dtype::F32, 1, 64)
                    .with_mods(all4),
            );
            desc.push("smoke: flash GQA causal d=16, N=64, 1 thread, all four modifiers".into());
        }
        Profile::Quick => {
            let plain = Config::prefill("flash", Mha, MaskSpec::Causal, 64, Dtype::F32, all, 1024);
            with_plain(plain, true);
            desc.push(format!(
                "score modifiers: flash MHA causal, N = 1024, d = 64, {all} threads: {what}, and \
                 all four"
            ));
        }
        Profile::Default | Profile::Full => {
            for g in [Mha, Gqa] {
                with_plain(
                    Config::prefill("flash", g, MaskSpec::Causal, 64, Dtype::F32, 1, 4096),
                    true,
                );
            }
            with_plain(Config::decode(Gqa, Dtype::F32, all, 32768), false);
            desc.push(format!(
                "score modifiers, next to the plain call: flash MHA and GQA causal, N = 4096, d = \
                 64, 1 thread: {what}, and all four; decode GQA, f32 cache, L = 32768, {all} \
                 threads: softcap, ALiBi, sinks (at most 3 timed calls where the child times)"
            ));
        }
    }
    (v, desc)
}

/// The layer part of [`grid`] (unsorted): `MultiHeadAttention` with
/// `d_model` 1024 and 16 query heads of 64 over 16 (MHA) or 4 (GQA) K/V
/// heads, causal self-attention, f32, on every core, forward and backward
/// ([`Config::layer`]).
fn layer_grid(profile: Profile, all: usize) -> (Vec<Config>, Vec<String>) {
    let all = all.max(1);
    let mut v = Vec::new();
    let mut at = |t: usize, ns: &[usize]| {
        for &n in ns {
            for kv in [16, 4] {
                for backward in [false, true] {
                    v.push(Config::layer(kv, t, n, backward));
                }
            }
        }
    };
    let head = "layer (MultiHeadAttention, d_model = 1024, Hq = 16, d = 64, MHA Hkv = 16 and GQA \
                Hkv = 4, causal self-attention, f32; forward and backward, each call split \
                between the Q/K/V/output projections and the attention)";
    let desc = match profile {
        Profile::Smoke => {
            at(1, &[64]);
            "smoke: layer MHA and GQA, N = 64, 1 thread, forward and backward".to_string()
        }
        Profile::Quick => {
            at(all, &[1024]);
            format!("{head}: N = 1024, {all} threads")
        }
        Profile::Default | Profile::Full => {
            at(all, &[1024, 4096]);
            format!("{head}: N = 1024 and 4096, {all} threads")
        }
    };
    (v, vec![desc])
}

/// The decode part of [`grid`] (unsorted).
fn decode_grid(profile: Profile, all: usize) -> (Vec<Config>, Vec<String>) {
    use Grouping::*;
    let all = all.max(1);
    let dtypes = Dtype::CACHES;
    let mut v: Vec<Config> = Vec::new();
    let mut desc: Vec<String> = Vec::new();
    let mut at = |gs: &[Grouping], dts: &[Dtype], ts: &[usize], ls: &[usize]| {
        for &g in gs {
            for &dt in dts {
                for &t in ts {
                    for &l in ls {
                        v.push(Config::decode(g, dt, t, l));
                    }
                }
            }
        }
    };
    let threads: Vec<usize> = if all > 1 { vec![1, all] } else { vec![1] };
    let head = "decode (B = 1, Hq = 32, d = 128, one new query, causal; MHA Hkv = 32, GQA 8, \
                MQA 1)";
    match profile {
        Profile::Smoke => {
            at(&[Gqa], &[Dtype::F16], &[1], &[1024]);
            desc.push("smoke: decode GQA, f16 cache, L = 1024, 1 thread".into());
        }
        Profile::Quick => {
            at(&[Gqa], &dtypes, &[all], &[1024, 4096]);
            desc.push(format!(
                "{head}: GQA x f32/f16/bf16/q8_0 cache, L = 1024, 4096, {all} threads"
            ));
        }
        Profile::Default => {
            at(&[Gqa, Mqa], &dtypes, &[all], &DECODE_LENS);
            at(&[Mha], &dtypes, &[all], &DECODE_LENS[..5]);
            desc.push(format!(
                "{head}: GQA and MQA x f32/f16/bf16/q8_0 cache x L = 1k ... 128k, MHA x the same \
                 dtypes x L = 1k ... 64k (2 GiB of f32 cache), {all} threads"
            ));
            if all > 1 {
                at(&[Gqa], &dtypes, &[1], &[1024, 4096, 32768, 131072]);
                desc.push(
                    "decode: GQA x f32/f16/bf16/q8_0 cache x L = 1k, 4k, 32k, 128k on 1 thread"
                        .into(),
                );
            }
        }
        Profile::Full => {
            at(&Grouping::ALL, &dtypes, &threads, &DECODE_LENS);
            let ts = threads.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" and ");
            desc.push(format!(
                "{head}: MHA/GQA/MQA x f32/f16/bf16/q8_0 cache x L = 1k ... 128k x threads {ts}"
            ));
        }
    }
    (v, desc)
}

/// The backward part of [`grid`] (unsorted): gradients of the prefill
/// problem, naive and flash.
fn backward_grid(profile: Profile, all: usize) -> (Vec<Config>, Vec<String>) {
    use Grouping::*;
    use MaskSpec::{Causal, Full};
    let all = all.max(1);
    let (mut v, mut desc) = (Vec::new(), Vec::new());
    let masks = [Full, Causal];
    let mut at = |k: &str, gs: &[Grouping], d: usize, t: usize, ns: &[usize]| {
        for &n in ns {
            for &g in gs {
                for m in masks {
                    v.push(Config::backward(k, g, m, d, Dtype::F32, t, n));
                }
            }
        }
    };
    let head = "backward (dQ, dK, dV; the prefill problem)";
    match profile {
        Profile::Smoke => {
            at("flash", &[Gqa], 16, 1, &[64]);
            desc.push("smoke: backward flash, GQA full/causal d=16, N=64, 1 thread".into());
        }
        Profile::Quick => {
            at("naive", &Grouping::ALL, 64, all, &[256, 1024]);
            at("flash", &Grouping::ALL, 64, all, &[256, 1024]);
            desc.push(format!(
                "{head}: N = 256, 1024, naive and flash x MHA/GQA/MQA x full/causal, d = 64, {all} threads"
            ));
        }
        Profile::Default => {
            // About 1.5 minutes on the 2-core Zen 5: naive GQA/MQA stop at
            // 1024 and naive MHA at 4096 (1.5 GiB of P, dP, dS), the
            // larger N being flash's; naive at 16384 is recorded as "needs".
            at("flash", &Grouping::ALL, 64, all, &[256, 1024, 4096]);
            at("flash", &[Mha], 64, all, &[16384]);
            at("naive", &Grouping::ALL, 64, all, &[256, 1024, 16384]);
            at("naive", &[Mha], 64, all, &[4096]);
            desc.push(format!(
                "{head}: N = 256, 1024, 4096: flash x MHA/GQA/MQA x full/causal, d = 64, {all} \
                 threads, and at 16384 MHA full/causal and GQA/MQA causal (GQA/MQA without a \
                 mask left out for time); naive the same at 256 and 1024, MHA at 4096, and \
                 recorded with the memory it would need at 16384 (3 N² tensors per head)"
            ));
            at("flash", &[Mha], 128, all, &[4096]);
            if all > 1 {
                at("flash", &[Mha], 64, 1, &[1024, 4096]);
            }
            for g in [Gqa, Mqa] {
                v.push(Config::backward("flash", g, Causal, 64, Dtype::F32, all, 16384));
            }
            desc.push(format!(
                "{head}: also flash MHA full/causal at N = 4096 with d = 128 ({all} threads), and \
                 with d = 64 on 1 thread at N = 1024 and 4096"
            ));
        }
        Profile::Full => {
            let threads: Vec<usize> = if all > 1 { vec![1, all] } else { vec![1] };
            for &t in &threads {
                for d in [64, 128] {
                    at("flash", &Grouping::ALL, d, t, &[256, 1024, 4096, 16384]);
                    at("naive", &Grouping::ALL, d, t, &[256, 1024, 4096, 16384]);
                }
            }
            desc.push(format!(
                "{head}: N = 256 ... 16384, naive and flash x MHA/GQA/MQA x full/causal x d = 64, \
                 128 x threads 1 and {all}"
            ));
        }
    }
    (v, desc)
}

/// The prefill part of [`grid`] (unsorted).
fn prefill_grid(profile: Profile, all: usize) -> (Vec<Config>, Vec<String>) {
    use Grouping::*;
    use MaskSpec::{Causal, Full};
    let all = all.max(1);
    let mut v: Vec<Config> = Vec::new();
    let mut desc: Vec<String> = Vec::new();
    let kernels = ["naive", "flash"];
    let masks = [Full, Causal];
    let threads: Vec<usize> = if all > 1 { vec![1, all] } else { vec![1] };
    let every = |v: &mut Vec<Config>, ns: &[usize], ds: &[usize], ts: &[usize], gs: &[Grouping]| {
        for &n in ns {
            for k in kernels {
                for &g in gs {
                    for m in masks {
                        for &d in ds {
                            for &t in ts {
                                v.push(Config::prefill(k, g, m, d, Dtype::F32, t, n));
                            }
                        }
                    }
                }
            }
        }
    };
    let flash_at = |v: &mut Vec<Config>, n: usize, gs: &[Grouping], ms: &[MaskSpec]| {
        for &g in gs {
            for &m in ms {
                v.push(Config::prefill("flash", g, m, 64, Dtype::F32, all, n));
            }
        }
    };
    // naive rows at long N: recorded as "needs X GiB" when over budget.
    let naive_at = |v: &mut Vec<Config>, n: usize, gs: &[Grouping], ms: &[MaskSpec]| {
        for &g in gs {
            for &m in ms {
                v.push(Config::prefill("naive", g, m, 64, Dtype::F32, all, n));
            }
        }
    };
    let halves = |v: &mut Vec<Config>, ns: &[usize], ms: &[MaskSpec]| {
        for &n in ns {
            for dt in [Dtype::F16, Dtype::Bf16] {
                for &m in ms {
                    v.push(Config::prefill("flash", Mha, m, 64, dt, all, n));
                }
            }
        }
    };
    match profile {
        Profile::Smoke => {
            for k in kernels {
                v.push(Config::prefill(k, Gqa, Causal, 16, Dtype::F32, 1, 64));
            }
            desc.push("smoke: naive and flash, GQA causal d=16, N=64, 1 thread".into());
        }
        Profile::Quick => {
            every(&mut v, &[256, 512, 1024], &[64], &[all], &Grouping::ALL);
            desc.push(format!(
                "N = 256, 512, 1024: naive and flash x MHA/GQA/MQA x full/causal, d = 64, f32, {all} threads"
            ));
        }
        Profile::Default => {
            let main_ns = [256, 512, 1024, 2048, 4096, 8192, 16384];
            every(&mut v, &main_ns, &[64], &[all], &Grouping::ALL);
            desc.push(format!(
                "N = 256 ... 16384: naive and flash x MHA/GQA/MQA x full/causal, d = 64, f32, \
                 {all} threads (the main tables; naive needs ~8.5 GiB at 16384)"
            ));
            every(&mut v, &[1024], &[64, 128], &threads, &Grouping::ALL);
            let ts = threads.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" and ");
            desc.push(format!(
                "N = 1024: d = 64 and 128 x threads {ts}, naive and flash x MHA/GQA/MQA x full/causal"
            ));
            every(&mut v, &[4096], &[64, 128], &threads, &Grouping::ALL);
            desc.push("N = 4096: the same d x threads".into());
            for (d, t) in [(64, 1), (128, all)] {
                if (d, t) != (64, all) {
                    for m in masks {
                        v.push(Config::prefill("flash", Mha, m, d, Dtype::F32, t, 16384));
                    }
                }
            }
            desc.push(format!(
                "N = 16384: also flash MHA full/causal with d = 64 on 1 thread and d = 128 on {all}"
            ));
            flash_at(&mut v, 32768, &Grouping::ALL, &masks);
            naive_at(&mut v, 32768, &Grouping::ALL, &masks);
            desc.push(format!(
                "N = 32768: flash x MHA/GQA/MQA x full/causal, d = 64, {all} threads, one timed \
                 call; naive recorded with the memory it would need"
            ));
            flash_at(&mut v, 65536, &Grouping::ALL, &[Causal]);
            flash_at(&mut v, 65536, &[Mha], &[Full]);
            naive_at(&mut v, 65536, &Grouping::ALL, &masks);
            desc.push(format!(
                "N = 65536: flash causal x MHA/GQA/MQA and MHA without mask, d = 64, {all} \
                 threads, one timed call; naive recorded with the memory it would need"
            ));
            halves(&mut v, &[4096], &masks);
            desc.push(format!(
                "N = 4096: flash with f16 and bf16 inputs (f32 accumulation), MHA \
                 full/causal, d = 64, {all} threads"
            ));
        }
        Profile::Full => {
            every(&mut v, &[256, 512, 1024, 2048, 4096], &[64, 128], &threads, &Grouping::ALL);
            desc.push(
                "N = 256 ... 4096: naive and flash x MHA/GQA/MQA x full/causal x d = 64, 128 x threads 1 and all"
                    .into(),
            );
            every(&mut v, &[8192, 16384], &[64, 128], &[all], &Grouping::ALL);
            desc.push(format!(
                "N = 8192, 16384: the same with {all} threads (naive over budget recorded as needs)"
            ));
            for n in [32768, 65536, 131072] {
                flash_at(&mut v, n, &Grouping::ALL, &masks);
                naive_at(&mut v, n, &Grouping::ALL, &masks);
            }
            desc.push(format!(
                "N = 32768, 65536, 131072: flash x MHA/GQA/MQA x full/causal, d = 64, {all} threads"
            ));
            halves(&mut v, &[1024, 4096, 16384], &masks);
            desc.push("N = 1024, 4096, 16384: flash f16 and bf16, MHA full/causal".into());
        }
    }
    (v, desc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_sorted_and_unique() {
        for p in [Profile::Smoke, Profile::Quick, Profile::Default, Profile::Full] {
            let (g, desc) = grid(p, 2);
            assert!(!g.is_empty() && !desc.is_empty());
            let ids: Vec<String> = g.iter().map(Config::id).collect();
            let mut sorted = ids.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), ids.len(), "{p:?} has duplicate ids");
            // prefill by N, then decode by L
            let len = |c: &Config| (c.kind == Kind::Decode, c.q_len.max(c.kv_len));
            assert!(g.windows(2).all(|w| len(&w[0]) <= len(&w[1])), "{p:?} is not sorted");
            assert!(g.iter().any(|c| c.kind == Kind::Decode), "{p:?} has no decode rows");
            assert!(g.iter().any(|c| !c.mods.is_plain()), "{p:?} has no modifier rows");
            assert!(g.iter().any(|c| c.kind == Kind::LayerBackward), "{p:?} has no layer rows");
        }
    }

    #[test]
    fn the_layer_rows_are_forward_and_backward_at_1k_and_4k() {
        let (g, _) = grid(Profile::Default, 2);
        let ids: Vec<String> = g.iter().filter(|c| c.kind.is_layer()).map(Config::id).collect();
        assert_eq!(ids.len(), 8, "{ids:?}");
        for want in [
            "layer/flash/mha/causal/d64/f32/t2/h16x16/1024",
            "layer-backward/flash/gqa/causal/d64/f32/t2/h16x4/4096",
        ] {
            assert!(ids.iter().any(|i| i == want), "no {want} in {ids:?}");
        }
        // the sweep's filter `layer` keeps exactly these
        assert_eq!(g.iter().filter(|c| c.id().contains("layer")).count(), 8);
    }

    #[test]
    fn every_modifier_row_has_its_plain_call() {
        for p in [Profile::Quick, Profile::Default, Profile::Full] {
            for all in [1, 2, 16] {
                let (g, _) = grid(p, all);
                let mods: Vec<&Config> = g.iter().filter(|c| !c.mods.is_plain()).collect();
                assert!(mods.len() >= 5, "{p:?}");
                for c in mods {
                    let plain = c.clone().with_mods(Mods::default());
                    assert!(g.contains(&plain), "{p:?}, {all} threads: no {}", plain.id());
                }
            }
        }
        let (g, _) = grid(Profile::Default, 2);
        let ids: Vec<String> = g.iter().filter(|c| !c.mods.is_plain()).map(Config::id).collect();
        for want in [
            "prefill/flash/mha/causal/d64/f32/t1/softcap50/4096",
            "prefill/flash/gqa/causal/d64/f32/t1/bias/4096",
            "prefill/flash/gqa/causal/d64/f32/t1/softcap50+alibi+sinks+bias/4096",
            "decode/flash/gqa/f32/t2/sinks/32768",
        ] {
            assert!(ids.iter().any(|i| i == want), "no {want} in {ids:?}");
        }
        assert!(!ids.iter().any(|i| i.starts_with("decode/") && i.contains("bias")), "{ids:?}");
    }
}
