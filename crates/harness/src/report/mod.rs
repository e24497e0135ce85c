//! `results/` -> `docs/results.md`, `docs/headline.md` and the plots in
//! `docs/img/`, and `attn report` (which regenerates them from a results
//! file without re-running anything).
//!
//! Everything here is a pure function of one [`RunFile`]: the tables are
//! per head grouping and mask, for the run's main combination (d = 64,
//! f32, all threads, when present) with every N, followed by the other
//! combinations of that grouping and mask; the plots are SVG (plotters,
//! SVG backend): time vs N and memory vs N on log-log axes with O(N²) and
//! O(N) references, and GFLOP/s vs N per grouping.
//!
//! Decode rows (schema 2) get their own section when the run has any:
//! tables per grouping and thread count (L rows × cache dtype columns: µs
//! per step, GB/s of K+V, % of the run's read bandwidth, f16/bf16 speedup
//! over f32) and `img/decode_gbs_vs_l.svg`. Everything else is computed
//! from the prefill rows only, so a prefill-only run renders as before.
//!
//! Backward rows get their own section too (tables per grouping, head dim
//! and thread count: naive and flash time, GFLOP/s at 2.5 × the forward's
//! FLOPs, % of peak, extra memory) and `img/backward_vs_n.svg`.
//!
//! Layer rows (schema 4) get their own section, "Attention layer" ([`layer`]):
//! a whole `MultiHeadAttention` forward and backward, time split between
//! the projections and the attention.
//!
//! Rows with score modifiers (schema 3) appear only in their own section,
//! "Score modifiers", next to the plain call of the same run ([`mods`]);
//! every other table and plot is made of plain calls.
//!
//! Files: [`select`] (which rows), [`cells`] (number formats, tables),
//! [`results_md`], [`headline`], [`chart`] (the drawing kit), [`plots`]
//! (prefill plots), [`decode`] (decode section and plot), [`backward`]
//! (backward section and plot), [`layer`] (the layer section), [`mods`]
//! (score modifiers), and [`console`]
//! (a row on the terminal, for `attn bench`, `attn decode` and the sweep's
//! progress). [`saturation`] is separate: `docs/saturation.md` and its
//! plots from a saturation study's results (`attn saturate`).

pub mod backward;
pub mod cells;
pub mod chart;
pub mod console;
pub mod decode;
pub mod headline;
pub mod layer;
pub mod mods;
pub mod plots;
pub mod results_md;
pub mod ring;
pub mod saturation;
pub mod select;

pub use backward::plot_backward_vs_n;
pub use decode::plot_decode_gbs_vs_l;
pub use headline::{headline_rows, render_headline_md};
pub use plots::{plot_gflops_vs_n, plot_memory_vs_n, plot_time_vs_n};
pub use results_md::render_results_md;

use crate::results::RunFile;
use select::decode_rows;
use std::path::{Path, PathBuf};

/// `path` relative to `root` when inside it, for the docs' "generated from".
pub fn source_name(path: &Path, root: &Path) -> String {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let (p, r) = (canon(path), canon(root));
    p.strip_prefix(&r).map(|x| x.display().to_string()).unwrap_or_else(|_| p.display().to_string())
}

/// Writes `results.md`, `headline.md` and `img/{time,memory,gflops}_vs_n.svg`
/// (and `img/decode_gbs_vs_l.svg` when the run has decode rows) into
/// `docs`, and the headline into the README beside `docs` (between its
/// markers, when it has them); `source` names the results file in the text.
pub fn generate(run: &RunFile, docs: &Path, source: &str) -> std::io::Result<Vec<PathBuf>> {
    let img = docs.join("img");
    std::fs::create_dir_all(&img)?;
    let mut written = Vec::new();
    let mut plots = vec![
        ("time_vs_n.svg", plot_time_vs_n(run)),
        ("memory_vs_n.svg", plot_memory_vs_n(run)),
        ("gflops_vs_n.svg", plot_gflops_vs_n(run)),
    ];
    if !decode_rows(run).is_empty() {
        plots.push(("decode_gbs_vs_l.svg", plot_decode_gbs_vs_l(run)));
    }
    if !backward::backward_rows(run).is_empty() {
        plots.push(("backward_vs_n.svg", plot_backward_vs_n(run)));
    }
    for (name, svg) in plots {
        let path = img.join(name);
        match svg {
            Ok(s) => {
                std::fs::write(&path, s)?;
                written.push(path);
            }
            Err(e) => eprintln!("report: no {name}: {e}"),
        }
    }
    let md = docs.join("results.md");
    std::fs::write(&md, render_results_md(run, source))?;
    written.push(md);
    let head = docs.join("headline.md");
    let headline = render_headline_md(run, source);
    std::fs::write(&head, &headline)?;
    written.push(head);
    // The README beside docs/ carries the headline between its markers.
    if let Some(readme) = docs.parent().map(|r| r.join("README.md"))
        && let Ok(text) = std::fs::read_to_string(&readme)
        && let Some(new) = with_headline(&text, &headline)
        && new != text
    {
        std::fs::write(&readme, new)?;
        written.push(readme);
    }
    Ok(written)
}

/// `readme` with the block between `<!-- headline:start … -->` and
/// `<!-- headline:end -->` replaced by `headline`; `None` without markers.
pub fn with_headline(readme: &str, headline: &str) -> Option<String> {
    let start = readme.find("<!-- headline:start")?;
    let start = start + readme[start..].find("-->")? + 3;
    let end = readme.find("<!-- headline:end -->")?;
    (start <= end).then(|| format!("{}\n{}\n{}", &readme[..start], headline.trim(), &readme[end..]))
}
