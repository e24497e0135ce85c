//! Merging attention results computed over disjoint key/value shards.

use attn_core::AttnError;

/// One shard's result: the normalized output `[rows, dv]` over the shard's
/// keys and the natural-log LSE `[rows]` (`-inf` where the shard has no
/// visible key for the row).
#[derive(Debug, Clone, Copy)]
pub struct Partial<'a> {
    /// Output over this shard, `[rows, dv]`.
    pub out: &'a [f32],
    /// LSE over this shard, `[rows]`.
    pub lse: &'a [f32],
}

/// Combines per-shard results into the result over the union of the
/// shards, in the given order (so the bits do not depend on scheduling):
///
/// `lse = m + ln Σ_s e^(lse_s − m)` with `m = max_s lse_s`, and
/// `out = Σ_s e^(lse_s − lse) · out_s`.
///
/// This is the building block of split-KV decode (Flash-Decoding) and of
/// sequence-parallel / ring attention: each worker attends its own KV
/// shard, and any grouping of shards merges to the unsplit result (up to
/// f32 rounding). A row that no shard sees gets output 0 and LSE `-inf`.
/// A NaN or `+inf` partial LSE is an error.
///
/// The weights `e^(lse_s − max lse)` are exact only while f32 holds the
/// LSEs' fractional parts: with logits beyond ~1e6 the shards weigh alike.
/// The kernels' own split-KV merge (the same code, `merge_rows`) keeps
/// each shard's max and sum instead.
pub fn merge_partials(
    parts: &[Partial<'_>],
    dv: usize,
    out: &mut [f32],
    lse: &mut [f32],
) -> Result<(), AttnError> {
    let rows = lse.len();
    let want = rows.checked_mul(dv).ok_or(AttnError::Overflow { tensor: "out" })?;
    if out.len() != want {
        return Err(AttnError::BufferLen { tensor: "out", expected: want, got: out.len() });
    }
    for p in parts {
        if p.out.len() != want {
            return Err(AttnError::BufferLen {
                tensor: "partial out",
                expected: want,
                got: p.out.len(),
            });
        }
        if p.lse.len() != rows {
            return Err(AttnError::BufferLen {
                tensor: "partial lse",
                expected: rows,
                got: p.lse.len(),
            });
        }
    }
    for (i, p) in parts.iter().map(|p| p.lse).enumerate() {
        if let Some(r) = p.iter().position(|x| x.is_nan() || *x == f32::INFINITY) {
            return Err(AttnError::Param {
                name: "partial lse",
                reason: format!(
                    "partial {i}, row {r}: {} (an LSE is finite, or -inf for a row that \
                     sees no key)",
                    p[r]
                ),
            });
        }
    }
    // An LSE is the statistic (m = lse, l = 1) in the natural-log domain.
    let stat = |s: usize, r: usize| {
        let l = parts[s].lse[r];
        (l, if l == f32::NEG_INFINITY { 0.0 } else { 1.0 })
    };
    merge_rows(parts.len(), |s| parts[s].out, stat, |_| None, Base::E, dv, out, lse);
    Ok(())
}

/// The log base of merge statistics: `e` for LSEs, 2 for the kernels'
/// running max (which live in the log2 domain, see `exp2`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Base {
    E,
    Two,
}

impl Base {
    fn pow(self, x: f32) -> f32 {
        match self {
            Base::E => x.exp(),
            Base::Two => x.exp2(),
        }
    }
    /// A natural-log logit in this base's units.
    fn of_ln(self, x: f32) -> f32 {
        match self {
            Base::E => x,
            Base::Two => x * attn_simd::LOG2_E,
        }
    }
    /// `log_base(x)` in natural-log units.
    fn ln_of_log(self, m: f32, total: f32) -> f32 {
        match self {
            Base::E => m + total.ln(),
            Base::Two => (m + total.log2()) * std::f32::consts::LN_2,
        }
    }
}

/// The one merge of attention results over key shards, in shard order
/// (so the bits do not depend on scheduling). Shard `s` gives its
/// normalized output rows `out_of(s)` (`[rows, dv]`) and, per row `r`,
/// `stat(s, r) = (m, l)`: a max and the sum of weights relative to it in
/// `base`'s log domain (`l = 0` where the shard sees no key). The row's
/// weights are `l_s·base^(m_s − M)` with `M = max m_s`, so they stay right
/// however large `M` is when shards keep `(m, l)`; an LSE is `(lse, 1)`.
///
/// `sink(r)`, if any, is row `r`'s sink logit (natural log): one more
/// term of the denominator with no value, weighed like a shard's max and
/// sum (`M` includes it), so it is as exact as the shards at any
/// magnitude. A row no shard sees gets output 0 and LSE `-inf`, or
/// exactly its sink.
///
/// A NaN `m` (a faulty shard) makes the row NaN. Writes the natural-log
/// LSE of each row into `lse` (`rows = lse.len()`); sizes are the caller's
/// to check. Allocates nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn merge_rows<'p>(
    n: usize,
    out_of: impl Fn(usize) -> &'p [f32],
    stat: impl Fn(usize, usize) -> (f32, f32),
    sink: impl Fn(usize) -> Option<f32>,
    base: Base,
    dv: usize,
    out: &mut [f32],
    lse: &mut [f32],
) {
    for r in 0..lse.len() {
        let o = &mut out[r * dv..(r + 1) * dv];
        if (0..n).any(|s| stat(s, r).0.is_nan()) {
            o.fill(f32::NAN);
            lse[r] = f32::NAN;
            continue;
        }
        let mx = (0..n).map(|s| stat(s, r).0).fold(f32::NEG_INFINITY, f32::max);
        o.fill(0.0);
        let sink = sink(r);
        if mx == f32::NEG_INFINITY {
            lse[r] = sink.unwrap_or(f32::NEG_INFINITY);
            continue;
        }
        let sink = sink.map(|x| base.of_ln(x));
        let mx = sink.map_or(mx, |x| mx.max(x));
        let weight = |s: usize| match stat(s, r) {
            (m, _) if m == f32::NEG_INFINITY => 0.0,
            (m, l) => l * base.pow(m - mx),
        };
        let total: f32 = (0..n).map(weight).sum::<f32>() + sink.map_or(0.0, |x| base.pow(x - mx));
        for s in 0..n {
            let w = weight(s) / total;
            if w > 0.0 {
                for (a, x) in o.iter_mut().zip(&out_of(s)[r * dv..(r + 1) * dv]) {
                    *a += w * x;
                }
            }
        }
        lse[r] = base.ln_of_log(mx, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_equal_shards_averages() {
        let (a, b) = ([1.0, 2.0], [3.0, 6.0]);
        let mut out = [0.0; 2];
        let mut lse = [0.0; 1];
        let parts = [Partial { out: &a, lse: &[0.5] }, Partial { out: &b, lse: &[0.5] }];
        merge_partials(&parts, 2, &mut out, &mut lse).unwrap();
        assert_eq!(out, [2.0, 4.0]);
        assert!((lse[0] - (0.5 + 2f32.ln())).abs() < 1e-6);
    }

    #[test]
    fn empty_shards_are_ignored_and_all_empty_is_zero() {
        let mut out = [9.0; 2];
        let mut lse = [0.0; 1];
        let ninf = [f32::NEG_INFINITY];
        let parts =
            [Partial { out: &[0.0, 0.0], lse: &ninf }, Partial { out: &[5.0, 7.0], lse: &[1.0] }];
        merge_partials(&parts, 2, &mut out, &mut lse).unwrap();
        assert_eq!((out, lse), ([5.0, 7.0], [1.0]));
        merge_partials(&parts[..1], 2, &mut out, &mut lse).unwrap();
        assert_eq!((out, lse), ([0.0, 0.0], [f32::NEG_INFINITY]));
        merge_partials(&[], 2, &mut out, &mut lse).unwrap();
        assert_eq!(lse, [f32::NEG_INFINITY]);
    }

    #[test]
    fn a_sink_is_one_more_term_of_the_denominator() {
        let (a, b) = ([1.0f32, 2.0], [3.0f32, -6.0]);
        let out_of = |s: usize| if s == 0 { &a[..] } else { &b[..] };
        for base in [Base::E, Base::Two] {
            // two shards of LSE 0.5 and 1.5, as (max, sum) in `base`'s units
            let seen = |s: usize, _: usize| (base.of_ln([0.5, 1.5][s]), 1.0);
            let unseen = |_: usize, _: usize| (f32::NEG_INFINITY, 0.0);
            let (mut plain, mut plain_lse) = ([0f32; 2], [0f32; 1]);
            merge_rows(2, out_of, seen, |_| None, base, 2, &mut plain, &mut plain_lse);
            for sink in [-30.0f32, -1.0, 0.7, 2.0, 50.0] {
                let (mut out, mut lse) = ([0f32; 2], [0f32; 1]);
                merge_rows(2, out_of, seen, |_| Some(sink), base, 2, &mut out, &mut lse);
                let (want_lse, f) = attn_core::modifiers::with_sink(plain_lse[0], sink);
                assert!((lse[0] - want_lse).abs() <= 1e-6 * (1.0 + want_lse.abs()), "{sink}");
                for (o, p) in out.iter().zip(plain) {
                    assert!((o - p * f).abs() <= 1e-6, "{sink}: {o} vs {}", p * f);
                }
            }
            // a row no shard sees: output 0 and exactly the sink's LSE
            let (mut out, mut lse) = ([9f32; 2], [0f32; 1]);
            merge_rows(2, out_of, unseen, |_| Some(-2.5), base, 2, &mut out, &mut lse);
            assert_eq!((out, lse), ([0.0, 0.0], [-2.5]));
        }
    }

    #[test]
    fn length_errors_name_the_buffer() {
        let mut out = [0.0; 4];
        let mut lse = [0.0; 2];
        let e =
            merge_partials(&[Partial { out: &[0.0; 3], lse: &[0.0; 2] }], 2, &mut out, &mut lse)
                .unwrap_err();
        assert!(e.to_string().starts_with("partial out:"), "{e}");
        let e = merge_partials(&[], 3, &mut out, &mut lse).unwrap_err();
        assert!(e.to_string().starts_with("out:"), "{e}");
    }

    #[test]
    fn nan_or_plus_inf_partial_lse_is_an_error() {
        let (mut out, mut lse) = ([0f32; 2], [0f32; 1]);
        for bad in [f32::NAN, f32::INFINITY] {
            let parts = [
                Partial { out: &[1.0, 2.0], lse: &[0.5] },
                Partial { out: &[3.0, 4.0], lse: &[bad] },
            ];
            let e = merge_partials(&parts, 2, &mut out, &mut lse).unwrap_err();
            assert!(e.to_string().starts_with("partial lse: partial 1, row 0"), "{e}");
        }
        // -inf is a shard that sees no key: fine
        let parts = [
            Partial { out: &[1.0, 2.0], lse: &[0.5] },
            Partial { out: &[9.0, 9.0], lse: &[f32::NEG_INFINITY] },
        ];
        merge_partials(&parts, 2, &mut out, &mut lse).unwrap();
        assert_eq!((out, lse), ([1.0, 2.0], [0.5]));
    }
}
