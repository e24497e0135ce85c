//! The score-modifier flags of `attn bench` and `attn decode`, which
//! generate their inputs: values on the command line, or generated from
//! the seed (`attn run` and `attn grad` take files instead:
//! [`super::run::CallArgs`]).

use crate::config::{BiasSpec, Mods, Sinks, Slopes};

/// `--softcap`, `--alibi`, `--alibi-slopes`, `--sinks`, `--bias` of a
/// generated call.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GenModArgs {
    /// Logit softcap C > 0: each score s becomes C·tanh(s/C) (Gemma 2 uses 50)
    #[arg(long, value_name = "C", allow_negative_numbers = true)]
    pub softcap: Option<f32>,
    /// ALiBi with the paper's slopes for Hq query heads
    #[arg(long, conflicts_with = "alibi_slopes")]
    pub alibi: bool,
    /// ALiBi with these slopes: one number for every query head, or Hq
    /// comma-separated numbers
    #[arg(long, value_name = "S|S1,S2,..", allow_hyphen_values = true)]
    pub alibi_slopes: Option<String>,
    /// Attention sinks: `random` (one seeded standard-normal logit per query
    /// head), one number for every query head, or Hq comma-separated numbers
    #[arg(long, value_name = "random|X|X1,X2,..", allow_hyphen_values = true)]
    pub sinks: Option<String>,
    /// Additive bias: `random`, a seeded standard-normal [1, 1, Nq, Nk]
    /// (prefill only)
    #[arg(long, value_name = "random")]
    pub bias: Option<String>,
}

/// Comma-separated numbers; errors name `flag`.
fn numbers(flag: &str, s: &str) -> Result<Vec<f32>, String> {
    s.split(',')
        .map(|x| {
            x.trim().parse::<f32>().map_err(|_| format!("{flag}: '{x}' is not a number (in '{s}')"))
        })
        .collect()
}

impl GenModArgs {
    /// The modifiers asked for (checked as far as they can be without the
    /// shape: [`Mods::validate`]); errors name the flag.
    pub fn mods(&self) -> Result<Mods, String> {
        let alibi = match (&self.alibi_slopes, self.alibi) {
            (Some(s), _) => Some(Slopes::Values(numbers("--alibi-slopes", s)?)),
            (None, true) => Some(Slopes::Default),
            (None, false) => None,
        };
        let sinks = match self.sinks.as_deref() {
            None => None,
            Some("random") => Some(Sinks::Random),
            Some(s) => Some(Sinks::Values(numbers("--sinks", s)?)),
        };
        let bias = match self.bias.as_deref() {
            None => None,
            Some("random") => Some(BiasSpec::Random),
            Some(b) => {
                return Err(format!(
                    "--bias: expected `random` (a seeded [1, 1, Nq, Nk] bias), got '{b}'; \
                     `attn run` takes a bias file"
                ));
            }
        };
        let mods = Mods { softcap: self.softcap, alibi, sinks, bias };
        mods.validate()?;
        Ok(mods)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_make_mods_or_name_themselves() {
        let a = GenModArgs {
            softcap: Some(30.0),
            alibi: true,
            sinks: Some("0.5".into()),
            bias: Some("random".into()),
            ..Default::default()
        };
        let m = a.mods().unwrap();
        assert_eq!(m.name(), "softcap30+alibi+sinks0.5+bias");
        let a = GenModArgs {
            alibi_slopes: Some("0.5, -0.25".into()),
            sinks: Some("random".into()),
            ..Default::default()
        };
        let m = a.mods().unwrap();
        assert_eq!(m.alibi, Some(Slopes::Values(vec![0.5, -0.25])));
        assert_eq!(m.sinks, Some(Sinks::Random));
        assert!(GenModArgs::default().mods().unwrap().is_plain());
        let err = |a: GenModArgs, want: &str| {
            let e = a.mods().unwrap_err();
            assert!(e.starts_with(want), "{e}");
        };
        err(GenModArgs { sinks: Some("1,x".into()), ..Default::default() }, "--sinks: 'x'");
        err(GenModArgs { sinks: Some("inf".into()), ..Default::default() }, "--sinks: values");
        err(GenModArgs { bias: Some("b.npy".into()), ..Default::default() }, "--bias: expected");
        err(GenModArgs { softcap: Some(0.0), ..Default::default() }, "--softcap: must be");
        err(
            GenModArgs { alibi_slopes: Some("nan".into()), ..Default::default() },
            "--alibi-slopes: values must be finite",
        );
    }
}
