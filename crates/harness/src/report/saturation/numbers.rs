//! Numbers of the page: formatting, trends, and the results indexed for it ([`Data`]).

use super::*;

pub(super) fn pct(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x != 0.0 && x.abs() < 0.001 {
        format!("{:.2}%", 100.0 * x)
    } else {
        format!("{:.1}%", 100.0 * x)
    }
}

/// Three significant digits for quantities that span decades.
pub(super) fn sig(x: f64) -> String {
    if !x.is_finite() {
        "–".into()
    } else if x == 0.0 {
        "0".into()
    } else if x.abs() >= 0.01 {
        fmt_num(x)
    } else {
        format!("{x:.2e}")
    }
}

pub(super) fn t_label(t: f32) -> String {
    format!("{t}")
}

/// "rises", "falls" or "stays about the same" from `a` to `b` (a change
/// within 5% of the larger is "about the same").
pub(super) fn trend(a: f64, b: f64) -> &'static str {
    let tol = 0.05 * a.abs().max(b.abs());
    if b > a + tol {
        "rises"
    } else if b < a - tol {
        "falls"
    } else {
        "stays about the same"
    }
}

/// "×12" or "×0.083" for `b/a`.
pub(super) fn ratio(a: f64, b: f64) -> String {
    if a == 0.0 { "–".into() } else { format!("×{}", sig(b / a)) }
}

pub(super) struct Data<'a> {
    pub(super) run: &'a SaturationFile,
}

impl<'a> Data<'a> {
    pub(super) fn point(&self, input: &str, m: &str, n: usize, t: f32) -> Option<&'a SinglePoint> {
        self.run.single.iter().find(|p| p.input == input && p.modifier == m && p.n == n && p.t == t)
    }
    pub(super) fn ns(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.run.single.iter().map(|p| p.n).collect();
        v.sort();
        v.dedup();
        v
    }
    pub(super) fn temps(&self) -> Vec<f32> {
        let mut v: Vec<f32> = self.run.single.iter().map(|p| p.t).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.dedup();
        v
    }
    pub(super) fn inputs(&self) -> Vec<&'a str> {
        let mut v: Vec<&str> = Vec::new();
        for p in &self.run.single {
            if !v.contains(&p.input.as_str()) {
                v.push(&p.input);
            }
        }
        v
    }
    pub(super) fn modifiers(&self) -> Vec<&'a str> {
        let mut v: Vec<&str> = Vec::new();
        for p in &self.run.single {
            if !v.contains(&p.modifier.as_str()) {
                v.push(&p.modifier);
            }
        }
        v
    }
    /// The multiplier nearest 1 (the plain `1/√d` scale).
    pub(super) fn t_one(&self) -> Option<f32> {
        self.temps().into_iter().min_by(|a, b| (a - 1.0).abs().total_cmp(&(b - 1.0).abs()))
    }
    /// The N nearest 4096 (the depth experiment's), else the middle one.
    pub(super) fn n_mid(&self) -> Option<usize> {
        let ns = self.ns();
        ns.iter().copied().min_by_key(|n| n.abs_diff(4096))
    }
    pub(super) fn stack(&self, m: &str, t: f32) -> Option<&'a DepthRun> {
        self.run.depth.iter().find(|r| r.modifier == m && r.t == t)
    }
    pub(super) fn depth_temps(&self) -> Vec<f32> {
        let mut v: Vec<f32> = self.run.depth.iter().map(|r| r.t).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v.dedup();
        v
    }
}
