//! The drawing kit of the plots (plotters, SVG backend): series, colours,
//! log axes, one panel with its legend, guide lines.

use super::cells::n_label;
use super::select::Main;
use crate::results::{Row, RunFile};
use plotters::coord::ranged1d::Ranged;
use plotters::prelude::*;

pub(super) type PlotResult = Result<String, String>;

pub(super) fn e2s<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

/// One line of a plot.
pub(super) struct Series {
    pub(super) label: String,
    pub(super) color: RGBColor,
    pub(super) dashed: bool,
    pub(super) hollow: bool,
    pub(super) points: Vec<(f64, f64)>,
}

pub(super) const NAIVE_FULL: RGBColor = RGBColor(200, 40, 40);
pub(super) const NAIVE_CAUSAL: RGBColor = RGBColor(240, 140, 40);
pub(super) const FLASH_FULL: RGBColor = RGBColor(30, 90, 200);
pub(super) const FLASH_CAUSAL: RGBColor = RGBColor(20, 160, 120);
pub(super) const GREY: RGBColor = RGBColor(120, 120, 120);

pub(super) fn color_of(kernel: &str, mask: &str) -> RGBColor {
    match (kernel, mask) {
        ("naive", "full") => NAIVE_FULL,
        ("naive", _) => NAIVE_CAUSAL,
        ("flash", "full") => FLASH_FULL,
        ("flash", _) => FLASH_CAUSAL,
        _ => GREY,
    }
}

fn fmt_n_axis(x: f64) -> String {
    n_label(x.round() as usize)
}

pub(super) fn fmt_axis(x: f64) -> String {
    if (1.0..1e6).contains(&x) {
        format!("{}", x.round() as u64)
    } else {
        let e = x.log10().round() as i32;
        if (x / 10f64.powi(e) - 1.0).abs() < 1e-6 { format!("1e{e}") } else { format!("{x:.1e}") }
    }
}

fn log_bounds(vals: impl Iterator<Item = f64>, pad: f64) -> Option<(f64, f64)> {
    let v: Vec<f64> = vals.filter(|x| x.is_finite() && *x > 0.0).collect();
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(0.0, f64::max);
    if v.is_empty() {
        None
    } else if hi / lo < 1.5 {
        Some((lo / 2.0, hi * 2.0))
    } else {
        Some((lo / pad, hi * pad))
    }
}

pub(super) const N_AXIS: &str = "N (sequence length)";

/// Draws one panel: log x, log or linear y (from 0 to `y_top`, default
/// 1.25 times the largest value).
#[allow(clippy::too_many_arguments)]
pub(super) fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    y_log: bool,
    y_fmt: &dyn Fn(f64) -> String,
    hline: Option<(f64, String)>,
    legend: SeriesLabelPosition,
    y_top: Option<f64>,
) -> Result<(), String> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x0, x1) = log_bounds(xs, 1.25).ok_or("no points")?;
    let ys =
        series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).chain(hline.iter().map(|h| h.0));
    let (y0, y1) = log_bounds(ys, 2.0).ok_or("no points")?;
    // Label the x axis at the N values of the run (powers of two).
    let mut keys: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    keys.sort_by(|a, b| a.total_cmp(b));
    keys.dedup();
    while keys.len() > 9 {
        keys = keys.iter().copied().step_by(2).collect();
    }
    let xr = || (x0..x1).log_scale().with_key_points(keys.clone());
    let mut b = ChartBuilder::on(area);
    b.caption(title, ("sans-serif", 17)).margin(12).x_label_area_size(40).y_label_area_size(70);
    if y_log {
        let mut chart = b.build_cartesian_2d(xr(), (y0..y1).log_scale()).map_err(e2s)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|x| fmt_n_axis(*x))
            .y_label_formatter(&|y| y_fmt(*y))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e2s)?;
        draw_all(&mut chart, series, &hline, (x0, x1), legend)
    } else {
        let mut chart = b.build_cartesian_2d(xr(), 0f64..y_top.unwrap_or(y1 / 1.6)).map_err(e2s)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|x| fmt_n_axis(*x))
            .y_label_formatter(&|y| y_fmt(*y))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(e2s)?;
        draw_all(&mut chart, series, &hline, (x0, x1), legend)
    }
}

fn draw_all<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    series: &[Series],
    hline: &Option<(f64, String)>,
    (x0, x1): (f64, f64),
    legend: SeriesLabelPosition,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for s in series {
        if s.points.is_empty() {
            continue;
        }
        let c = s.color;
        let style = c.stroke_width(2);
        let anno = if s.dashed {
            chart.draw_series(DashedLineSeries::new(s.points.clone(), 6, 4, style)).map_err(e2s)?
        } else {
            chart.draw_series(LineSeries::new(s.points.clone(), style)).map_err(e2s)?
        };
        anno.label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        let hollow = s.hollow;
        chart
            .draw_series(s.points.iter().map(|p| {
                let st = if hollow { c.stroke_width(1) } else { c.filled() };
                Circle::new(*p, 3, st)
            }))
            .map_err(e2s)?;
    }
    if let Some((y, label)) = hline {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x0, *y), (x1, *y)],
                3,
                3,
                BLACK.stroke_width(1),
            ))
            .map_err(e2s)?
            .label(label.clone())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(e2s)
}

/// Points (N, f(row)) of the main combination for one series.
pub(super) fn points(
    run: &RunFile,
    grouping: &str,
    kernel: &str,
    mask: &str,
    f: impl Fn(&Row) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let main = Main::of(run);
    let mut v: Vec<(f64, f64)> = run
        .rows
        .iter()
        .filter(|r| main.has(&r.config))
        .filter(|r| r.grouping == grouping && r.config.kernel == kernel)
        .filter(|r| r.config.mask.name() == mask)
        .filter_map(|r| f(r).map(|y| (r.config.q_len as f64, y)))
        .filter(|p| p.1 > 0.0 && p.1.is_finite())
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v.dedup_by(|a, b| a.0 == b.0);
    v
}

/// A reference line ∝ N^k through `factor` times the first point of
/// `anchor`, across the N range of `all`.
pub(super) fn slope(
    label: &str,
    k: i32,
    anchor: &[(f64, f64)],
    factor: f64,
    all: &[Series],
    color: RGBColor,
) -> Option<Series> {
    let &(xa, ya) = anchor.first()?;
    let ya = ya * factor;
    let xs = all.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (lo, hi) = xs.fold((f64::INFINITY, 0.0f64), |(l, h), x| (l.min(x), h.max(x)));
    let y = |x: f64| ya * (x / xa).powi(k);
    Some(Series {
        label: label.into(),
        color,
        dashed: true,
        hollow: false,
        points: vec![(lo, y(lo)), (hi, y(hi))],
    })
}
