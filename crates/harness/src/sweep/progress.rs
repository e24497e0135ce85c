//! The sweep's progress on stderr: configuration i of n, elapsed time and
//! an estimate of what is left.

use crate::report::console;
use crate::results::Row;
use crate::units::fmt_duration;
use std::time::Instant;

/// Progress on stderr: configuration i of n, elapsed, estimate left.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    costs: Vec<f64>,
    done_cost: f64,
    done: usize,
}

impl Progress {
    /// Starts the clock for configurations with these estimated costs.
    pub fn new(costs: Vec<f64>) -> Progress {
        Progress { start: Instant::now(), costs, done_cost: 0.0, done: 0 }
    }

    /// Seconds since the start.
    pub fn elapsed_s(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Estimated seconds left: the remaining estimated cost scaled by
    /// (time taken / estimated cost) of what is done.
    pub fn left_s(&self) -> f64 {
        let rest: f64 = self.costs[self.done.min(self.costs.len())..].iter().sum();
        if self.done_cost <= 0.0 { rest } else { rest * self.elapsed_s() / self.done_cost }
    }

    /// Reports the start of configuration `i` (0-based).
    pub fn starting(&self, i: usize, id: &str) {
        eprintln!(
            "[{:>3}/{}] {id}  (elapsed {}, ~{} left)",
            i + 1,
            self.costs.len(),
            fmt_duration(self.elapsed_s()),
            fmt_duration(self.left_s())
        );
    }

    /// Reports the end of configuration `i` with its row.
    pub fn finished(&mut self, i: usize, row: &Row) {
        self.done = i + 1;
        self.done_cost += self.costs.get(i).copied().unwrap_or(0.0);
        eprintln!("          -> {}", console::outcome(row));
    }
}
