//! Rows whose fast f32 evaluation did not give a finite result.
//!
//! Kernels check each finished row — output and LSE — and whether every
//! score they computed was finite (`s·0` summed in registers), instead of
//! scanning the inputs before the call (no pass over Q, K, V). A row with
//! visible keys whose result is not finite is reported here; after the
//! kernel, the oracle recomputes each reported row exactly in f64
//! (`attn_naive::exact`), which either names the non-finite input element
//! the row read (when `check_finite` is on), or gives the exact result of
//! a finite input whose f32 evaluation overflowed (huge logits, huge V).

use std::sync::Mutex;

/// Flat indices `(b·Hq + h)·Nq + i` of the rows to recompute. Empty and
/// allocation-free on the normal path; shared by a call's workers.
#[derive(Debug, Default)]
pub struct RowFaults {
    rows: Mutex<Vec<usize>>,
}

impl RowFaults {
    /// No rows.
    pub const fn new() -> RowFaults {
        RowFaults { rows: Mutex::new(Vec::new()) }
    }

    /// Reports row `row` (any worker, any order).
    pub fn report(&self, row: usize) {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).push(row);
    }

    /// The reported rows in increasing order, each once (so errors and
    /// repairs do not depend on which worker reported first).
    pub fn into_sorted(self) -> Vec<usize> {
        let mut v = self.rows.into_inner().unwrap_or_else(|e| e.into_inner());
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether a finished row must be recomputed: it saw keys, yet its LSE
    /// or an output value is not finite.
    #[inline]
    pub fn is_fault(visible: bool, lse: f32, out: &[f32]) -> bool {
        visible && !(lse.is_finite() && out.iter().all(|x| x.is_finite()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_back_sorted_once() {
        let f = RowFaults::new();
        for r in [5, 1, 5, 3] {
            f.report(r);
        }
        assert_eq!(f.into_sorted(), vec![1, 3, 5]);
        assert!(RowFaults::is_fault(true, f32::NAN, &[0.0]));
        assert!(RowFaults::is_fault(true, 1.0, &[f32::INFINITY]));
        assert!(!RowFaults::is_fault(false, f32::NEG_INFINITY, &[0.0]));
        assert!(!RowFaults::is_fault(true, -3.0, &[1.0, 2.0]));
    }
}
