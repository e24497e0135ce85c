//! The plots (`docs/saturation-*.svg`).

use super::*;

/// Colours of the multipliers, cold to hot.
pub(super) const TEMP_COLORS: [RGBColor; 6] = [
    RGBColor(120, 170, 230),
    RGBColor(30, 90, 200),
    RGBColor(20, 160, 120),
    RGBColor(240, 140, 40),
    RGBColor(200, 40, 40),
    RGBColor(120, 30, 120),
];

pub(super) fn modifier_color(m: &str) -> RGBColor {
    match m {
        "plain" => RGBColor(30, 90, 200),
        "softcap" => RGBColor(20, 160, 120),
        _ => RGBColor(240, 140, 40),
    }
}

/// A lighter tint of a modifier's colour, for its dashed (lower `t`)
/// series: the legend tells them apart by colour.
pub(super) fn light(c: RGBColor) -> RGBColor {
    let up = |x: u8| x + (255 - x) / 2;
    RGBColor(up(c.0), up(c.1), up(c.2))
}

/// The three SVGs of [`PLOTS`], in that order.
pub fn plots(run: &SaturationFile) -> [Result<String, String>; 3] {
    let d = Data { run };
    [plot_single(&d), plot_modifiers(&d), plot_depth(&d)]
}

pub(super) type Metric = (&'static str, &'static str, fn(&SinglePoint) -> f64, bool);

pub(super) const SINGLE_METRICS: [Metric; 3] = [
    ("mean max-p", "max-p", |p| p.max_p, false),
    ("mean exp(H)", "keys (log)", |p| p.support, true),
    ("score-gradient mass per row", "Σ|dS| (log)", |p| p.grad_mass, true),
];

pub(super) fn single_series(
    d: &Data,
    input: &str,
    f: fn(&SinglePoint) -> f64,
    pick: &[(&str, f32)],
    style: &dyn Fn(usize, &str, f32) -> (RGBColor, bool),
) -> Vec<Series> {
    pick.iter()
        .enumerate()
        .map(|(i, (m, t))| {
            let mut pts: Vec<(f64, f64)> = d
                .run
                .single
                .iter()
                .filter(|p| p.input == input && p.modifier == *m && p.t == *t)
                .map(|p| (p.n as f64, f(p)))
                .filter(|p| p.1.is_finite() && p.1 > 0.0)
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (color, dashed) = style(i, m, *t);
            Series {
                label: if pick.iter().all(|x| x.0 == pick[0].0) {
                    format!("t = {}", t_label(*t))
                } else {
                    format!("{m}, t = {}", t_label(*t))
                },
                color,
                dashed,
                hollow: false,
                points: pts,
            }
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// A grid: one row per input, one column per metric of
/// [`SINGLE_METRICS`].
pub(super) fn single_grid(
    d: &Data,
    title: &str,
    pick: &[(&str, f32)],
    style: &dyn Fn(usize, &str, f32) -> (RGBColor, bool),
) -> PlotResult {
    let inputs = d.inputs();
    if inputs.is_empty() || pick.is_empty() {
        return Err("no one-layer points".into());
    }
    let mut svg = String::new();
    {
        let (w, h) = (1380u32, 400 * inputs.len() as u32);
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(e2s)?;
        let areas = root.split_evenly((inputs.len(), SINGLE_METRICS.len()));
        for (r, input) in inputs.iter().enumerate() {
            for (c, (name, y_desc, f, log)) in SINGLE_METRICS.iter().enumerate() {
                let mut series = single_series(d, input, *f, pick, style);
                if *name == "mean exp(H)" {
                    let anchor: Vec<(f64, f64)> =
                        d.ns().first().map(|n| vec![(*n as f64, *n as f64)]).unwrap_or_default();
                    if let Some(g) = slope(
                        "exp(H) = N (uniform)",
                        1,
                        &anchor,
                        1.0,
                        &series,
                        RGBColor(120, 120, 120),
                    ) {
                        series.push(g);
                    }
                }
                panel(
                    &areas[r * SINGLE_METRICS.len() + c],
                    &format!("{input}: {name}{title}"),
                    N_AXIS,
                    y_desc,
                    &series,
                    *log,
                    &|y| if *log { fmt_axis(y) } else { format!("{y:.1}") },
                    None,
                    if *log && *name != "mean exp(H)" {
                        SeriesLabelPosition::LowerLeft
                    } else {
                        SeriesLabelPosition::UpperLeft
                    },
                    (!*log).then_some(1.05),
                )?;
            }
        }
        root.present().map_err(e2s)?;
    }
    Ok(svg)
}

pub(super) fn plot_single(d: &Data) -> PlotResult {
    let pick: Vec<(&str, f32)> = d.temps().into_iter().map(|t| ("plain", t)).collect();
    single_grid(d, " (plain)", &pick, &|i, _, _| (TEMP_COLORS[i % TEMP_COLORS.len()], false))
}

pub(super) fn plot_modifiers(d: &Data) -> PlotResult {
    let (Some(t1), Some(&th)) = (d.t_one(), d.temps().last()) else {
        return Err("no one-layer points".into());
    };
    let ts: Vec<f32> = if t1 == th { vec![th] } else { vec![t1, th] };
    let mods = d.modifiers();
    let pick: Vec<(&str, f32)> =
        ts.iter().flat_map(|t| mods.iter().map(move |m| (*m, *t))).collect();
    let color =
        |m: &str, t: f32| if t == th { modifier_color(m) } else { light(modifier_color(m)) };
    single_grid(d, "", &pick, &|_, m, t| (color(m, t), t != th))
}

pub(super) type DepthMetric = (&'static str, &'static str, fn(&DepthLayer) -> f64, bool);

pub(super) const DEPTH_METRICS: [DepthMetric; 4] = [
    ("H / ln n (1 = uniform)", "H / ln n", |l| l.entropy_norm, false),
    ("saturated rows (max-p > 0.9)", "fraction", |l| l.saturated, false),
    ("score-gradient mass per row / ‖dY‖", "Σ|dS| / RMS (log)", unit_mass, true),
    ("‖dL/dX‖ at the block's input", "RMS (log)", |l| l.dx_rms, true),
];

pub(super) fn plot_depth(d: &Data) -> PlotResult {
    if d.run.depth.is_empty() {
        return Err("no stacks".into());
    }
    let th = *d.depth_temps().last().unwrap_or(&1.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 820)).into_drawing_area();
        root.fill(&WHITE).map_err(e2s)?;
        let areas = root.split_evenly((2, 2));
        for (area, (title, y_desc, f, log)) in areas.iter().zip(DEPTH_METRICS.iter()) {
            let series: Vec<Series> = d
                .run
                .depth
                .iter()
                .map(|r| Series {
                    label: format!("{}, t = {}", r.modifier, t_label(r.t)),
                    color: if r.t == th {
                        modifier_color(&r.modifier)
                    } else {
                        light(modifier_color(&r.modifier))
                    },
                    dashed: r.t != th,
                    hollow: false,
                    points: r
                        .layers
                        .iter()
                        .map(|l| (l.layer as f64, f(l)))
                        .filter(|p| p.1.is_finite() && (!*log || p.1 > 0.0))
                        .collect(),
                })
                .collect();
            linear_x_panel(area, title, y_desc, &series, *log)?;
        }
        root.present().map_err(e2s)?;
    }
    Ok(svg)
}

/// One panel with a linear x axis (the block index) and a linear (0 to
/// 1.05 × max) or log y axis.
pub(super) fn linear_x_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    series: &[Series],
    y_log: bool,
) -> Result<(), String> {
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let x1 = pts().map(|p| p.0).fold(1.0, f64::max);
    let top = pts().map(|p| p.1).fold(0.0, f64::max);
    // linear labels: enough decimals that a small range's ticks differ
    let digits = if top < 0.05 { 3 } else { 2 };
    let mut b = ChartBuilder::on(area);
    b.caption(title, ("sans-serif", 17)).margin(12).x_label_area_size(40).y_label_area_size(70);
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("block (1 = input side)")
                .y_desc(y_desc)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| {
                    if y_log { fmt_axis(*y) } else { format!("{y:.*}", digits) }
                })
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(e2s)?;
            for s in series.iter().filter(|s| !s.points.is_empty()) {
                let c = s.color;
                let style = c.stroke_width(2);
                let anno = if s.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(s.points.clone(), 6, 4, style))
                        .map_err(e2s)?
                } else {
                    chart.draw_series(LineSeries::new(s.points.clone(), style)).map_err(e2s)?
                };
                let dashed = s.dashed;
                anno.label(s.label.clone()).legend(move |(x, y)| {
                    // a dashed series gets a dashed key: two strokes
                    let ends = if dashed { [(0, 7), (11, 18)] } else { [(0, 18), (0, 18)] };
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(ends[0].0, 0), (ends[0].1, 0)], c.stroke_width(2))
                        + PathElement::new(vec![(ends[1].0, 0), (ends[1].1, 0)], c.stroke_width(2))
                });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 12))
                .draw()
                .map_err(e2s)
        }};
    }
    if y_log {
        let ys: Vec<f64> = pts().map(|p| p.1).filter(|y| *y > 0.0).collect();
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().copied().fold(0.0, f64::max);
        if ys.is_empty() {
            return Err("no points".into());
        }
        let (lo, hi) = if hi / lo < 4.0 { (lo / 2.0, hi * 2.0) } else { (lo / 1.5, hi * 1.5) };
        draw!(b.build_cartesian_2d(0.5f64..x1 + 0.5, (lo..hi).log_scale()).map_err(e2s)?)
    } else {
        let hi = top.max(1e-3) * 1.05;
        draw!(b.build_cartesian_2d(0.5f64..x1 + 0.5, 0f64..hi).map_err(e2s)?)
    }
}
