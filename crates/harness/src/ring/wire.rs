//! Integers through the `f32` messages of the ring's transports (the MPI
//! gather carries `f32` blocks): each `u64` as three `f32` holding 22 bits
//! each, integers below 2²⁴ and so exact — no bit patterns that could be
//! NaNs, nothing rounded. Used for the ranks' timings on their way to
//! rank 0.

use std::time::Duration;

use attnlab::ring::RankTiming;

use super::bench::RankRuns;

const BITS: u32 = 22;
const MASK: u64 = (1 << BITS) - 1;

/// `words` as `3 · words.len()` exact `f32` integers.
pub fn encode(words: &[u64]) -> Vec<f32> {
    words
        .iter()
        .flat_map(|&w| [w & MASK, (w >> BITS) & MASK, w >> (2 * BITS)].map(|x| x as f32))
        .collect()
}

/// The words of [`encode`]; an error if `x` is not such an encoding.
pub fn decode(x: &[f32]) -> Result<Vec<u64>, String> {
    if !x.len().is_multiple_of(3) {
        return Err(format!("{} values do not encode whole words", x.len()));
    }
    x.chunks_exact(3)
        .map(|c| {
            let part = |v: f32, limit: u64| {
                let i = v as u64;
                if i as f32 == v && i <= limit {
                    Ok(i)
                } else {
                    Err(format!("{v} is not a 22-bit part of a word"))
                }
            };
            Ok(part(c[0], MASK)?
                | part(c[1], MASK)? << BITS
                | part(c[2], (1 << 20) - 1)? << (2 * BITS))
        })
        .collect()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Words of a rank's timing.
fn timing_words(t: &RankTiming) -> [u64; 8] {
    [
        nanos(t.compute),
        nanos(t.exposed_comm),
        nanos(t.agreement),
        nanos(t.total),
        t.pairs_computed as u64,
        t.pairs_skipped as u64,
        t.visible_pairs,
        t.bytes_sent,
    ]
}

fn timing_of(w: &[u64]) -> RankTiming {
    RankTiming {
        compute: Duration::from_nanos(w[0]),
        exposed_comm: Duration::from_nanos(w[1]),
        agreement: Duration::from_nanos(w[2]),
        total: Duration::from_nanos(w[3]),
        pairs_computed: w[4] as usize,
        pairs_skipped: w[5] as usize,
        visible_pairs: w[6],
        bytes_sent: w[7],
    }
}

/// A rank's timing as `f32` values.
pub fn encode_timing(t: &RankTiming) -> Vec<f32> {
    encode(&timing_words(t))
}

/// Values of [`encode_timing`] at the end of a block: the timing and the
/// rest of the block.
pub fn split_timing(block: &[f32]) -> Result<(&[f32], RankTiming), String> {
    let n = 8 * 3;
    if block.len() < n {
        return Err(format!("a rank's result of {} values has no timing", block.len()));
    }
    let (rest, t) = block.split_at(block.len() - n);
    Ok((rest, timing_of(&decode(t)?)))
}

/// A rank's bench runs as `f32` values.
pub fn encode_runs(r: &RankRuns) -> Vec<f32> {
    let mut w = vec![r.rank as u64, r.runs.len() as u64];
    for (t, alone) in r.runs.iter().zip(&r.transfer_alone) {
        w.extend(timing_words(t));
        w.push(nanos(*alone));
    }
    encode(&w)
}

/// The runs of [`encode_runs`].
pub fn decode_runs(x: &[f32]) -> Result<RankRuns, String> {
    let w = decode(x)?;
    let bad = || format!("a rank's runs of {} words are malformed", w.len());
    let [rank, n, rest @ ..] = &w[..] else { return Err(bad()) };
    if rest.len() != *n as usize * 9 {
        return Err(bad());
    }
    let runs = rest.chunks_exact(9).map(|c| timing_of(&c[..8])).collect();
    let transfer_alone = rest.chunks_exact(9).map(|c| Duration::from_nanos(c[8])).collect();
    Ok(RankRuns { rank: *rank as usize, runs, transfer_alone })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_survive_f32() {
        let w = [0, 1, MASK, MASK + 1, u64::MAX, 123_456_789_012_345, 1 << 63];
        assert_eq!(decode(&encode(&w)).unwrap(), w);
        assert!(decode(&[1.0, 2.0]).is_err());
        assert!(decode(&[0.5, 0.0, 0.0]).is_err());
        assert!(decode(&[f32::NAN, 0.0, 0.0]).is_err());
    }

    #[test]
    fn timings_and_runs_survive_f32() {
        let t = RankTiming {
            compute: Duration::from_nanos(12_345_678_901),
            exposed_comm: Duration::from_micros(17),
            agreement: Duration::from_millis(3),
            total: Duration::from_secs(13),
            pairs_computed: 7,
            pairs_skipped: 3,
            visible_pairs: 1 << 40,
            bytes_sent: 5 << 30,
        };
        let mut block = vec![0.5, 2.5];
        block.extend(encode_timing(&t));
        let (rest, got) = split_timing(&block).unwrap();
        assert_eq!((rest, got), (&[0.5, 2.5][..], t));
        let r = RankRuns {
            rank: 3,
            runs: vec![t, t],
            transfer_alone: vec![Duration::from_nanos(9); 2],
        };
        assert_eq!(decode_runs(&encode_runs(&r)).unwrap(), r);
        assert!(decode_runs(&encode(&[3, 2, 1])).is_err());
    }
}
