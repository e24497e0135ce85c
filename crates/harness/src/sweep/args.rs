//! The sweep's command line (`cargo bench -p harness -- [FILTER] [criterion
//! flags]`): the filter, test mode (`cargo test --benches`) and `--list`.
//! Criterion parses the same arguments itself.

/// Criterion flags that take a value, so that the value is not taken for
/// the filter.
///
/// Criterion parses its arguments itself (`Criterion::configure_from_args`)
/// but keeps the filter it found private (criterion 0.8 has no accessor,
/// and the clap `Command` that knows which flags take a value is built
/// inside `configure_from_args`), and the sweep needs the filter before
/// criterion runs anything: each configuration first runs in a child
/// process. So the sweep finds the first positional argument itself, and
/// this list, the one copy of criterion's value flags, must follow
/// criterion's (`configure_from_args` in criterion's `src/lib.rs`).
const VALUE_FLAGS: [&str; 20] = [
    "-c",
    "--color",
    "--colour",
    "-s",
    "--save-baseline",
    "-b",
    "--baseline",
    "--baseline-lenient",
    "--load-baseline",
    "--profile-time",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--format",
    "--plotting-backend",
    "--output-format",
];

/// What the sweep takes from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepArgs {
    /// Keep the configurations whose id contains this (criterion applies
    /// it too, as a regex).
    pub filter: Option<String>,
    /// `cargo test --benches` (no `--bench`, or `--test`): the smoke
    /// profile, nothing written.
    pub test_mode: bool,
    /// `--list`: print the ids and stop.
    pub list: bool,
}

impl SweepArgs {
    /// This process's arguments.
    pub fn from_env() -> SweepArgs {
        SweepArgs::parse(&std::env::args().skip(1).collect::<Vec<_>>())
    }

    /// Parses the arguments after the program name.
    pub fn parse(args: &[String]) -> SweepArgs {
        let has = |f: &str| args.iter().any(|a| a == f);
        let mut filter: Option<String> = None;
        let mut skip_next = false;
        for a in args {
            if skip_next {
                skip_next = false;
            } else if VALUE_FLAGS.contains(&a.as_str()) {
                skip_next = true;
            } else if !a.starts_with('-') && filter.is_none() {
                filter = Some(a.clone());
            }
        }
        SweepArgs {
            filter,
            // `cargo bench` passes --bench; `cargo test --benches` does not.
            test_mode: !has("--bench") || has("--test"),
            list: has("--list"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> SweepArgs {
        SweepArgs::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_filter_is_the_first_positional_argument() {
        let a = parse(&["--bench", "--save-baseline", "x", "mqa/causal", "decode/"]);
        assert_eq!(a.filter.as_deref(), Some("mqa/causal"));
        assert!(!a.test_mode && !a.list);
        let a = parse(&["-s", "base", "--bench", "--sample-size=20", "decode/"]);
        assert_eq!(a.filter.as_deref(), Some("decode/"));
        let a = parse(&["--list"]);
        assert_eq!(a, SweepArgs { filter: None, test_mode: true, list: true });
        assert!(parse(&["--bench", "--test"]).test_mode);
    }
}
