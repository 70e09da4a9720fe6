//! Line charts as one self-contained SVG file (no scripts, fonts or links): panels with axes,
//! ticks and grid lines, polylines with point markers and min–max whiskers, a legend each.
//!
//! Written here instead of taken from a plotting crate: the bench needs a few hundred lines of
//! text output, while the plotting crates bring font, image and layout stacks (minutes of
//! compile time on the 2-core machine, more supply chain) for features nobody uses here.

use std::fmt::Write as _;

/// One measured value; `lo`/`hi` draw a whisker (e.g. min and max over runs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
}

impl Point {
    pub fn new(x: f64, y: f64) -> Self {
        Point {
            x,
            y,
            lo: None,
            hi: None,
        }
    }
}

/// A named line. Points with a non-finite `x` or `y` are skipped and break the line (a gap).
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

/// How the x axis maps values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    Linear,
    /// Powers of two evenly spaced (message sizes, batch sizes); values ≤ 0 are skipped.
    Log2,
}

/// How tick labels read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// 950, 12k, 1.5M.
    Number,
    /// 16 B, 1 KiB, 64 KiB.
    Bytes,
}

/// One chart.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub x_unit: Unit,
    pub series: Vec<Series>,
}

/// Panels on a grid, under a title and a few lines of notes.
#[derive(Clone, Debug)]
pub struct Figure {
    pub title: String,
    pub notes: Vec<String>,
    pub panels: Vec<Panel>,
    pub columns: usize,
    /// Size of one panel in pixels.
    pub panel_width: f64,
    pub panel_height: f64,
}

/// Line colours, in legend order (distinguishable, also in grey print).
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#555555",
];

// Plot area insets inside a panel.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 46.0;
const BOTTOM: f64 = 44.0;
const HEADER_LINE: f64 = 18.0;

/// The SVG text of a figure.
pub fn render(fig: &Figure) -> String {
    let columns = fig.columns.max(1);
    let rows = fig.panels.len().div_ceil(columns).max(1);
    let header = 16.0 + HEADER_LINE * (1 + fig.notes.len()) as f64;
    let width = fig.panel_width * columns as f64;
    let height = header + fig.panel_height * rows as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">"#,
        w = num(width),
        h = num(height)
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="12" y="{}" font-size="15" font-weight="bold">{}</text>"#,
        num(HEADER_LINE + 4.0),
        escape(&fig.title)
    );
    for (i, note) in fig.notes.iter().enumerate() {
        let _ = writeln!(
            s,
            r##"<text x="12" y="{}" fill="#444">{}</text>"##,
            num(HEADER_LINE * (i + 2) as f64 + 4.0),
            escape(note)
        );
    }
    for (i, panel) in fig.panels.iter().enumerate() {
        let x0 = fig.panel_width * (i % columns) as f64;
        let y0 = header + fig.panel_height * (i / columns) as f64;
        render_panel(&mut s, panel, x0, y0, fig.panel_width, fig.panel_height);
    }
    s.push_str("</svg>\n");
    s
}

/// The range and ticks of one axis.
#[derive(Clone, Debug, PartialEq)]
struct Axis {
    scale: Scale,
    /// In axis space (log2 of the value for [`Scale::Log2`]).
    min: f64,
    max: f64,
    /// Values (not axis space).
    ticks: Vec<f64>,
}

impl Axis {
    fn to_axis(scale: Scale, v: f64) -> Option<f64> {
        match scale {
            Scale::Linear if v.is_finite() => Some(v),
            Scale::Log2 if v.is_finite() && v > 0.0 => Some(v.log2()),
            _ => None,
        }
    }

    /// 0..1 across the axis, `None` for a value this axis cannot place.
    fn frac(&self, v: f64) -> Option<f64> {
        let a = Self::to_axis(self.scale, v)?;
        Some((a - self.min) / (self.max - self.min))
    }

    /// An axis over `values` (non-finite ones, and for log the non-positive ones, skipped);
    /// `zero` includes 0; a linear axis takes the finer of two round steps when that makes at
    /// most `max_intervals` intervals (a tighter fit: 0–35 rather than 0–40 for 31).
    fn fit(scale: Scale, values: &[f64], zero: bool, max_intervals: usize) -> Option<Axis> {
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for v in values.iter().filter_map(|&v| Self::to_axis(scale, v)) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            return None;
        }
        match scale {
            Scale::Linear => {
                if zero {
                    lo = lo.min(0.0);
                    hi = hi.max(0.0);
                }
                if hi - lo < f64::EPSILON * hi.abs().max(1.0) {
                    // One value: a range around it.
                    let pad = if hi == 0.0 { 1.0 } else { hi.abs() * 0.5 };
                    (lo, hi) = (lo - pad, hi + pad);
                    if zero && lo < 0.0 && hi > 0.0 && values.iter().all(|&v| v >= 0.0) {
                        lo = 0.0;
                    }
                }
                let mut step = nice_step((hi - lo) / 5.0);
                let finer = finer_step(step);
                let intervals = |st: f64| ((hi / st).ceil() - (lo / st).floor()).round() as usize;
                if intervals(finer) <= max_intervals {
                    step = finer;
                }
                let first = (lo / step).floor() * step;
                let last = (hi / step).ceil() * step;
                let n = ((last - first) / step).round() as usize;
                let ticks = (0..=n).map(|k| first + k as f64 * step).collect();
                Some(Axis {
                    scale,
                    min: first,
                    max: last,
                    ticks,
                })
            }
            Scale::Log2 => {
                // A margin so the end points and their whiskers clear the frame.
                let (mut min, mut max) = (lo - 0.25, hi + 0.25);
                if hi - lo < 1e-9 {
                    (min, max) = (lo - 1.0, hi + 1.0);
                }
                let (first, last) = (min.ceil(), max.floor());
                let span = (last - first).max(0.0) as usize;
                let every = span.div_ceil(10).max(1);
                let ticks = (0..=span)
                    .step_by(every)
                    .map(|k| (first + k as f64).exp2())
                    .collect();
                Some(Axis {
                    scale,
                    min,
                    max,
                    ticks,
                })
            }
        }
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// The round step below `step` (10 → 5 → 2 → 1).
fn finer_step(step: f64) -> f64 {
    let mag = 10f64.powf(step.log10().floor());
    match (step / mag).round() as u32 {
        1 => mag / 2.0,
        2 => mag,
        _ => mag * 2.0,
    }
}

/// A tick label.
pub fn label(v: f64, unit: Unit) -> String {
    let trim = |x: f64| {
        let t = format!("{x:.2}");
        let t = t.trim_end_matches('0').trim_end_matches('.');
        if t == "-0" { "0".into() } else { t.to_string() }
    };
    match unit {
        Unit::Number => {
            let a = v.abs();
            if a >= 1e6 {
                format!("{}M", trim(v / 1e6))
            } else if a >= 1e4 {
                format!("{}k", trim(v / 1e3))
            } else {
                trim(v)
            }
        }
        Unit::Bytes => {
            let a = v.abs();
            if a >= (1u64 << 20) as f64 {
                format!("{} MiB", trim(v / (1u64 << 20) as f64))
            } else if a >= 1024.0 {
                format!("{} KiB", trim(v / 1024.0))
            } else {
                format!("{} B", trim(v))
            }
        }
    }
}

/// A panel's title, plot-area border and axis labels.
fn render_frame(s: &mut String, p: &Panel, x0: f64, y0: f64, area: (f64, f64, f64, f64)) {
    let (left, top, pw, ph) = area;
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        num(left),
        num(y0 + 18.0),
        escape(&p.title)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        num(left),
        num(top),
        num(pw),
        num(ph)
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        num(left + pw / 2.0),
        num(top + ph + 34.0),
        escape(&p.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate({} {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        num(x0 + 14.0),
        num(top + ph / 2.0),
        escape(&p.y_label)
    );
}

/// The x values of every finite point, and the y values (with their ranges) of every point the
/// x scale can place.
fn data_ranges(p: &Panel) -> (Vec<f64>, Vec<f64>) {
    let xs: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|q| q.y.is_finite())
        .map(|q| q.x)
        .collect();
    let ys: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|q| Axis::to_axis(p.x_scale, q.x).is_some())
        .flat_map(|q| [Some(q.y), q.lo, q.hi])
        .flatten()
        .filter(|v| v.is_finite())
        .collect();
    (xs, ys)
}

/// Each series' legend place, in rows between the title and the plot area.
fn legend_places(p: &Panel, left: f64, pw: f64, y0: f64) -> Vec<(f64, f64)> {
    // Legend places: text width estimated at 6 px a character (font-size 11, sans-serif).
    let mut legend_at = Vec::new();
    let (mut lx, mut ly) = (left, y0 + 33.0);
    for series in &p.series {
        let w = 23.0 + 6.0 * series.name.chars().count() as f64 + 14.0;
        if lx > left && lx + w > left + pw {
            (lx, ly) = (left, ly + 13.0);
        }
        legend_at.push((lx, ly));
        lx += w;
    }
    legend_at
}

fn render_panel(s: &mut String, p: &Panel, x0: f64, y0: f64, w: f64, h: f64) {
    let (left, top) = (x0 + LEFT, y0 + TOP);
    let (pw, ph) = (w - LEFT - RIGHT, h - TOP - BOTTOM);
    let _ = writeln!(s, r#"<g data-panel="{}">"#, escape(&p.title));
    render_frame(s, p, x0, y0, (left, top, pw, ph));
    let (xs, ys) = data_ranges(p);
    let (Some(xa), Some(ya)) = (
        Axis::fit(p.x_scale, &xs, false, 10),
        Axis::fit(Scale::Linear, &ys, true, 6),
    ) else {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#888">no data</text>"##,
            num(left + pw / 2.0),
            num(top + ph / 2.0)
        );
        s.push_str("</g>\n");
        return;
    };
    let px = |v: f64| xa.frac(v).map(|f| left + f * pw);
    let py = |v: f64| ya.frac(v).map(|f| top + ph - f * ph);
    for &t in &xa.ticks {
        let Some(x) = px(t) else { continue };
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            num(top),
            num(top + ph),
            num(top + ph + 15.0),
            escape(&label(t, p.x_unit)),
            x = num(x)
        );
    }
    for &t in &ya.ticks {
        let Some(y) = py(t) else { continue };
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            num(left),
            num(left + pw),
            num(left - 5.0),
            num(y + 4.0),
            escape(&label(t, Unit::Number)),
            y = num(y)
        );
    }
    let legend_at = legend_places(p, left, pw, y0);
    for (k, series) in p.series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let _ = writeln!(s, r#"<g data-series="{}">"#, escape(&series.name));
        // Runs of placeable points; anything else breaks the line.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        let mut placed: Vec<(f64, f64, &Point)> = Vec::new();
        for q in &series.points {
            match (px(q.x), py(q.y)) {
                (Some(x), Some(y)) => {
                    runs.last_mut().expect("one run").push((x, y));
                    placed.push((x, y, q));
                }
                _ => runs.push(Vec::new()),
            }
        }
        for run in runs.iter().filter(|r| r.len() > 1) {
            let pts: Vec<String> = run
                .iter()
                .map(|(x, y)| format!("{},{}", num(*x), num(*y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"#,
                pts.join(" ")
            );
        }
        // Markers (with their value as a tooltip) where points are few enough to tell apart.
        let markers = placed.len() <= 30;
        for (x, y, q) in &placed {
            if let (Some(lo), Some(hi)) = (q.lo.and_then(py), q.hi.and_then(py)) {
                let _ = writeln!(
                    s,
                    r#"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="{color}" stroke-width="1"/>"#,
                    num(lo),
                    num(hi),
                    x = num(*x)
                );
            }
            if markers {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{}" cy="{}" r="2.6" fill="{color}"><title>{}: {} at {}</title></circle>"#,
                    num(*x),
                    num(*y),
                    escape(&series.name),
                    escape(&label(q.y, Unit::Number)),
                    escape(&label(q.x, p.x_unit)),
                );
            }
        }
        // Legend entry, in a row between the title and the plot area (wrapping when full).
        let (lx, ly) = legend_at[k];
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            num(lx),
            num(lx + 18.0),
            num(lx + 23.0),
            num(ly + 4.0),
            escape(&series.name),
            ly = num(ly)
        );
        s.push_str("</g>\n");
    }
    s.push_str("</g>\n");
}

/// A coordinate with at most one decimal, never NaN.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "0".into();
    }
    let r = (v * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{}", r as i64)
    } else {
        format!("{r:.1}")
    }
}

/// Text safe inside an element or an attribute.
fn escape(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for c in t.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
