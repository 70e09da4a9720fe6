//! Throughput and latency over the time of one run (`uplink bench --plot FILE.svg`), computed
//! after the run from what the verification reads anyway: every message's cloud store time
//! and its latency (cloud store − edge store). Nothing samples during the run, so plotting
//! costs the measurement nothing.

use std::path::Path;

use anyhow::Context as _;

use super::plot::{Figure, Panel, Point, Scale, Series, Unit};
use crate::testbed::verify::Received;

/// One time bin.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Start of the bin, seconds since the run started.
    pub t: f64,
    /// Length of the bin, seconds (the last one ends with the run).
    pub len: f64,
    /// Messages stored in the edge stream per second during the bin.
    pub published_per_s: f64,
    /// Messages stored in the cloud stream per second during the bin.
    pub delivered_per_s: f64,
    /// Latency of the messages the cloud stored during the bin (NaN: none did).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Bin widths (seconds) to pick from: about 80 bins across the run, 10 ms at the finest.
const WIDTHS: [f64; 14] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0,
];

/// The bin width for a run of `span` seconds.
pub fn bin_width(span: f64) -> f64 {
    WIDTHS
        .iter()
        .copied()
        .find(|&w| w * 80.0 >= span)
        .unwrap_or(WIDTHS[WIDTHS.len() - 1])
}

/// Bins the messages of a run that started at `start_ns` (Unix ns) by their store times.
pub fn rows(start_ns: i128, got: &[Received]) -> (f64, Vec<Row>) {
    // (edge store, cloud store, latency) in seconds since the start.
    let secs = |ns: i128| ((ns - start_ns) as f64 / 1e9).max(0.0);
    let times: Vec<(Option<f64>, f64, Option<f64>)> = got
        .iter()
        .map(|g| {
            let lat = g.latency.map(|l| l.as_secs_f64());
            let edge = g.latency.map(|l| secs(g.stored_ns - l.as_nanos() as i128));
            (edge, secs(g.stored_ns), lat)
        })
        .collect();
    let span = times
        .iter()
        .map(|t| t.1.max(t.0.unwrap_or(0.0)))
        .fold(0.0, f64::max);
    let width = bin_width(span);
    if times.is_empty() {
        return (width, Vec::new());
    }
    let n = ((span / width).floor() as usize + 1).min(100_000);
    let bin = |t: f64| ((t / width) as usize).min(n - 1);
    let mut published = vec![0usize; n];
    let mut delivered = vec![0usize; n];
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); n];
    for &(edge, cloud, lat) in &times {
        if let Some(e) = edge {
            published[bin(e)] += 1;
        }
        delivered[bin(cloud)] += 1;
        if let Some(l) = lat {
            latencies[bin(cloud)].push(l * 1000.0);
        }
    }
    let rows = (0..n)
        .map(|k| {
            let t = k as f64 * width;
            // The last bin ends with the run.
            let len = if k + 1 == n {
                (span - t).max(width / 10.0)
            } else {
                width
            };
            let l = &mut latencies[k];
            l.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                if l.is_empty() {
                    f64::NAN
                } else {
                    l[((l.len() - 1) as f64 * p).round() as usize]
                }
            };
            Row {
                t,
                len,
                published_per_s: published[k] as f64 / len,
                delivered_per_s: delivered[k] as f64 / len,
                p50_ms: pct(0.5),
                p99_ms: pct(0.99),
                max_ms: pct(1.0),
            }
        })
        .collect();
    (width, rows)
}

/// Two panels: throughput (edge, cloud) and latency (p50, p99, max) per bin (`width`: the
/// bins' usual length, seconds, for the axis label).
pub fn figure(title: &str, notes: Vec<String>, width: f64, rows: &[Row]) -> Figure {
    let series = |name: &str, f: fn(&Row) -> f64| Series {
        name: name.into(),
        // Each bin's value drawn at its middle.
        points: rows
            .iter()
            .map(|r| Point::new(r.t + r.len / 2.0, f(r)))
            .collect(),
    };
    let x_label = format!(
        "seconds since the publisher started ({} bins)",
        if width < 1.0 {
            format!("{:.0} ms", width * 1000.0)
        } else {
            format!("{width} s")
        }
    );
    Figure {
        title: title.into(),
        notes,
        panels: vec![
            Panel {
                title: "throughput".into(),
                x_label: x_label.clone(),
                y_label: "messages per second".into(),
                x_scale: Scale::Linear,
                x_unit: Unit::Number,
                series: vec![
                    series("stored in the edge stream (published)", |r| {
                        r.published_per_s
                    }),
                    series("stored in the cloud stream (delivered)", |r| {
                        r.delivered_per_s
                    }),
                ],
            },
            Panel {
                title: "latency, edge store → cloud store, of the messages the cloud stored in each bin"
                    .into(),
                x_label,
                y_label: "milliseconds".into(),
                x_scale: Scale::Linear,
                x_unit: Unit::Number,
                series: vec![
                    series("p50", |r| r.p50_ms),
                    series("p99", |r| r.p99_ms),
                    series("max", |r| r.max_ms),
                ],
            },
        ],
        columns: 1,
        panel_width: 960.0,
        panel_height: 300.0,
    }
}

/// Writes the timeline of a run to `path`.
pub fn write(
    path: &Path,
    title: &str,
    notes: Vec<String>,
    start_ns: i128,
    got: &[Received],
) -> anyhow::Result<()> {
    let (width, rows) = rows(start_ns, got);
    let svg = super::plot::render(&figure(title, notes, width, &rows));
    std::fs::write(path, svg).with_context(|| format!("writing the plot {}", path.display()))
}

/// Now, Unix nanoseconds (the clock the nats-servers stamp messages with).
pub fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Checks a `--plot` path before a run: an `.svg` file in a directory that exists.
pub fn check_path(path: &Path) -> Result<(), String> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        return Err(format!(
            "{}: the plot is SVG; name it *.svg",
            path.display()
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "{}: directory {} does not exist",
            path.display(),
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
