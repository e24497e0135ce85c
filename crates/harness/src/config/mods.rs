//! Score modifiers (softcap, ALiBi, sinks, bias; `docs/semantics.md`) in
//! the harness: [`Mods`], what a measured configuration asks for (the
//! sweep's rows, `attn bench`, `attn decode`: values given or generated,
//! recorded in the results), and [`ModData`], the modifiers' owned data
//! (slopes, sinks, the bias buffer) that an `AttnParams<'_>` borrows at
//! call time ([`ModData::params`]). The runners generate theirs from a
//! [`Mods`] (`crate::measure::mod_data`); `attn run` and `attn grad` read
//! theirs from `.npy` files.

use attnlab::{Alibi, AttnError, AttnParams, Layout, TensorView};
use serde::{Deserialize, Serialize};

/// ALiBi slopes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slopes {
    /// The ALiBi paper's slopes for the call's `Hq` (`Alibi::Default`).
    Default,
    /// Given values: in a [`Mods`], one broadcast to every query head or
    /// one per query head; in a [`ModData`], one per query head.
    Values(Vec<f32>),
}

/// Sink logits of a generated call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sinks {
    /// One seeded standard-normal logit per query head.
    Random,
    /// One value broadcast to every query head, or one per query head.
    Values(Vec<f32>),
}

/// The bias of a generated call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BiasSpec {
    /// Seeded standard-normal values of shape `[1, 1, Nq, Nk]` (one
    /// `Nq × Nk` matrix broadcast over batch and heads, as a relative
    /// position bias is).
    Random,
}

/// The score modifiers of a measured configuration (all off by default):
/// part of its id (`…/t1/softcap50+alibi/4096`) and of its results row
/// (`"mods"`, absent for the plain call).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mods {
    /// Logit softcap `c > 0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub softcap: Option<f32>,
    /// ALiBi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alibi: Option<Slopes>,
    /// Attention sinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinks: Option<Sinks>,
    /// Additive bias.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bias: Option<BiasSpec>,
}

fn values_name(v: &[f32]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

impl Mods {
    /// Whether no modifier is on.
    pub fn is_plain(&self) -> bool {
        *self == Mods::default()
    }

    /// The part of the id: `softcap50`, `alibi`, `alibi0.5`, `sinks`,
    /// `sinks0.5`, `bias`, joined by `+` in that order; empty when plain.
    pub fn name(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.softcap {
            parts.push(format!("softcap{c}"));
        }
        match &self.alibi {
            Some(Slopes::Default) => parts.push("alibi".into()),
            Some(Slopes::Values(v)) => parts.push(format!("alibi{}", values_name(v))),
            None => {}
        }
        match &self.sinks {
            Some(Sinks::Random) => parts.push("sinks".into()),
            Some(Sinks::Values(v)) => parts.push(format!("sinks{}", values_name(v))),
            None => {}
        }
        if self.bias.is_some() {
            parts.push("bias".into());
        }
        parts.join("+")
    }

    /// Sort key: plain first, then by the number of modifiers, softcap
    /// before ALiBi before sinks before bias.
    pub fn order_key(&self) -> (usize, [bool; 4], String) {
        let on = [
            self.softcap.is_some(),
            self.alibi.is_some(),
            self.sinks.is_some(),
            self.bias.is_some(),
        ];
        (on.iter().filter(|x| **x).count(), on.map(|x| !x), self.name())
    }

    /// Bytes of the bias buffer for `nq` queries and `nk` keys (0 without
    /// a bias).
    pub fn bias_bytes(&self, nq: usize, nk: usize) -> u64 {
        if self.bias.is_some() { 4 * nq as u64 * nk as u64 } else { 0 }
    }

    /// Checks what does not depend on the shape: a finite softcap `> 0`,
    /// finite given values; errors name the flag (`--softcap`, …).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(c) = self.softcap
            && !(c.is_finite() && c > 0.0)
        {
            return Err(format!("--softcap: must be finite and > 0, got {c}"));
        }
        let values = |flag: &str, v: &[f32]| match v.iter().find(|x| !x.is_finite()) {
            _ if v.is_empty() => Err(format!("{flag}: no values given")),
            Some(x) => Err(format!("{flag}: values must be finite, got {x}")),
            None => Ok(()),
        };
        if let Some(Slopes::Values(v)) = &self.alibi {
            values("--alibi-slopes", v)?;
        }
        if let Some(Sinks::Values(v)) = &self.sinks {
            values("--sinks", v)?;
        }
        Ok(())
    }

    /// [`Mods::validate`], and that given values are one, or one per
    /// query head of `q_heads`.
    pub fn validate_for(&self, q_heads: usize) -> Result<(), String> {
        self.validate()?;
        let count = |flag: &str, v: &[f32]| match v.len() {
            n if n == 1 || n == q_heads => Ok(()),
            n => {
                Err(format!("{flag}: expected 1 value or one per query head ({q_heads}), got {n}"))
            }
        };
        if let Some(Slopes::Values(v)) = &self.alibi {
            count("--alibi-slopes", v)?;
        }
        if let Some(Sinks::Values(v)) = &self.sinks {
            count("--sinks", v)?;
        }
        Ok(())
    }
}

/// A bias buffer: logical `[B|1, Hq|1, Nq, Nk]`, contiguous in that order.
#[derive(Debug, Clone, PartialEq)]
pub struct Bias {
    /// `[B|1, Hq|1, Nq, Nk]`.
    pub dims: [usize; 4],
    /// The values, C order.
    pub data: Vec<f32>,
}

/// The modifiers of one call with their data owned: what
/// [`ModData::params`] lends an `AttnParams<'_>`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModData {
    /// Logit softcap.
    pub softcap: Option<f32>,
    /// ALiBi: default slopes, or one per query head.
    pub alibi: Option<Slopes>,
    /// One sink logit per query head.
    pub sinks: Option<Vec<f32>>,
    /// The bias.
    pub bias: Option<Bias>,
}

impl ModData {
    /// `base`'s scale, mask and finiteness check with these modifiers,
    /// borrowing their data. Fails only on a bias buffer whose length
    /// does not match its dims (named `bias`).
    pub fn params<'a>(&'a self, base: &AttnParams<'_>) -> Result<AttnParams<'a>, AttnError> {
        let bias = match &self.bias {
            Some(b) => Some(TensorView::new("bias", &b.data, b.dims, Layout::Bhnd)?),
            None => None,
        };
        Ok(AttnParams {
            softcap: self.softcap,
            alibi: self.alibi.as_ref().map(|a| match a {
                Slopes::Default => Alibi::Default,
                Slopes::Values(v) => Alibi::Slopes(v),
            }),
            sinks: self.sinks.as_deref(),
            bias,
            ..base.plain()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_order() {
        assert_eq!(Mods::default().name(), "");
        let all = Mods {
            softcap: Some(50.0),
            alibi: Some(Slopes::Default),
            sinks: Some(Sinks::Random),
            bias: Some(BiasSpec::Random),
        };
        assert_eq!(all.name(), "softcap50+alibi+sinks+bias");
        let s = Mods { sinks: Some(Sinks::Values(vec![0.5])), ..Default::default() };
        assert_eq!(s.name(), "sinks0.5");
        let a = Mods { alibi: Some(Slopes::Values(vec![0.25, 1.0])), ..Default::default() };
        assert_eq!(a.name(), "alibi0.25,1");
        let singles = [
            Mods::default(),
            Mods { softcap: Some(30.0), ..Default::default() },
            a.clone(),
            s.clone(),
            Mods { bias: Some(BiasSpec::Random), ..Default::default() },
            all.clone(),
        ];
        let keys: Vec<_> = singles.iter().map(Mods::order_key).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        // plain rows serialize without the field; modified ones round-trip
        assert_eq!(serde_json::to_string(&Mods::default()).unwrap(), "{}");
        let text = serde_json::to_string(&all).unwrap();
        assert_eq!(text, r#"{"softcap":50.0,"alibi":"default","sinks":"random","bias":"random"}"#);
        assert_eq!(serde_json::from_str::<Mods>(&text).unwrap(), all);
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Mods>(&text).unwrap(), a);
    }

    #[test]
    fn invalid_values_name_the_flag() {
        let bad = |m: Mods, want: &str| {
            let e = m.validate().unwrap_err();
            assert!(e.starts_with(want), "{e}");
        };
        for c in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            bad(Mods { softcap: Some(c), ..Default::default() }, "--softcap: must be finite");
        }
        bad(
            Mods { alibi: Some(Slopes::Values(vec![1.0, f32::NAN])), ..Default::default() },
            "--alibi-slopes: values must be finite, got NaN",
        );
        bad(
            Mods { sinks: Some(Sinks::Values(vec![f32::NEG_INFINITY])), ..Default::default() },
            "--sinks: values must be finite",
        );
        bad(
            Mods { sinks: Some(Sinks::Values(vec![])), ..Default::default() },
            "--sinks: no values",
        );
    }
}
