//! `uplink bench --sweep size,batch,in-flight,connections [--plot FILE.svg]`: the curve, not
//! one point. Runs the plain bench (a fresh pipeline each, every delivery verified) at each
//! value of each swept setting, the others at their defaults (or at what the command line set),
//! `--runs` rounds, and draws throughput against each setting: the median of the rounds with a
//! min–max whisker.
//!
//! Rounds alternate the order of the values (ascending, then descending, …) so a machine that
//! gets busier during the sweep does not tilt every curve the same way.

use std::path::PathBuf;

use anyhow::Context as _;

use super::plot::{Figure, Panel, Point, Scale, Series, Unit};
use super::{BenchOptions, BenchResult};

/// A setting to sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    /// Payload bytes per message (`--size`).
    Size,
    /// Gateway `batch.max_messages`.
    Batch,
    /// Gateway `forward.max_in_flight` (`--in-flight`).
    InFlight,
    /// Gateway `forward.connections`.
    Connections,
}

pub const ALL: [Dim; 4] = [Dim::Size, Dim::Batch, Dim::InFlight, Dim::Connections];

impl Dim {
    pub fn name(self) -> &'static str {
        match self {
            Dim::Size => "size",
            Dim::Batch => "batch",
            Dim::InFlight => "in-flight",
            Dim::Connections => "connections",
        }
    }

    /// The values swept.
    pub fn values(self) -> &'static [usize] {
        match self {
            Dim::Size => &[16, 64, 256, 1024, 4096, 16384, 65536],
            Dim::Batch => &[1, 8, 32, 128, 500, 2000],
            Dim::InFlight => &[1, 2, 4, 8, 16, 32],
            Dim::Connections => &[1, 2, 4, 8],
        }
    }

    /// What the setting is when not swept: the command line's, else the default.
    fn base(self, o: &BenchOptions) -> usize {
        let g = uplink::config::GatewayConfig::default();
        match self {
            Dim::Size => o.size,
            Dim::Batch => o.batch.unwrap_or(g.batch.max_messages),
            Dim::InFlight => o.in_flight.unwrap_or(g.forward.max_in_flight),
            Dim::Connections => o.connections.unwrap_or(g.forward.connections),
        }
    }

    fn apply(self, o: &mut BenchOptions, v: usize) {
        match self {
            Dim::Size => o.size = v,
            Dim::Batch => o.batch = Some(v),
            Dim::InFlight => o.in_flight = Some(v),
            Dim::Connections => o.connections = Some(v),
        }
    }

    fn axis(self) -> (&'static str, Unit) {
        match self {
            Dim::Size => ("payload bytes per message", Unit::Bytes),
            Dim::Batch => ("gateway batch.max_messages", Unit::Number),
            Dim::InFlight => ("gateway forward.max_in_flight (batches)", Unit::Number),
            Dim::Connections => ("gateway forward.connections (HTTP/2)", Unit::Number),
        }
    }
}

/// `size,batch` or `all` → the settings, in the order given; an error names the bad one.
pub fn parse(list: &str) -> Result<Vec<Dim>, String> {
    let mut dims = Vec::new();
    for word in list.split(',').map(str::trim) {
        let found: Vec<Dim> = match word {
            "all" => ALL.to_vec(),
            w => match ALL.iter().find(|d| d.name() == w) {
                Some(d) => vec![*d],
                None => {
                    return Err(format!(
                        "{w:?} is not a setting to sweep (size, batch, in-flight, connections or all)"
                    ));
                }
            },
        };
        for d in found {
            if !dims.contains(&d) {
                dims.push(d);
            }
        }
    }
    Ok(dims)
}

/// Most payload bytes one point publishes: bounds the large-message points.
const MAX_BYTES: usize = 128 << 20;
/// Messages per message of batch size at most: bounds the tiny-batch points (thousands of
/// requests per second at best).
const PER_BATCH: usize = 2_000;

/// How many messages the point publishes: `--messages`, bounded by [`MAX_BYTES`] and
/// [`PER_BATCH`], at least 1,000.
pub fn count(o: &BenchOptions) -> usize {
    let batch = o
        .batch
        .unwrap_or(uplink::config::GatewayConfig::default().batch.max_messages);
    o.messages
        .min(MAX_BYTES / o.size.max(1))
        .min(PER_BATCH.saturating_mul(batch))
        .max(1_000.min(o.messages))
}

pub struct SweepOptions {
    pub dims: Vec<Dim>,
    /// The bench every point starts from (`plot` is ignored: the sweep draws its own).
    pub base: BenchOptions,
    pub runs: usize,
    pub plot: Option<PathBuf>,
    pub json: bool,
}

/// One bench at one value.
#[derive(Debug, serde::Serialize)]
pub struct SweepPoint {
    pub setting: &'static str,
    pub value: usize,
    pub round: usize,
    pub size: usize,
    pub messages: usize,
    pub msgs_per_sec: f64,
    /// Payload MiB per second.
    pub mib_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub lost: usize,
    pub duplicates: usize,
    pub corrupted: usize,
    /// 1-minute load average when the point finished.
    pub load: String,
}

#[derive(Debug, serde::Serialize)]
pub struct SweepResult {
    pub runs: usize,
    pub nats_server: String,
    pub cores: usize,
    /// Defaults the swept settings had at the other settings' points.
    pub defaults: std::collections::BTreeMap<&'static str, usize>,
    pub points: Vec<SweepPoint>,
    pub seconds: f64,
}

impl SweepResult {
    pub fn ok(&self) -> bool {
        self.points
            .iter()
            .all(|p| p.lost == 0 && p.duplicates == 0 && p.corrupted == 0)
    }

    /// (value, median, min, max) of msgs/s (or MiB/s) per value of `setting`, in value order.
    pub fn curve(&self, setting: &str, mib: bool) -> Vec<(usize, f64, f64, f64)> {
        let mut values: Vec<usize> = self
            .points
            .iter()
            .filter(|p| p.setting == setting)
            .map(|p| p.value)
            .collect();
        values.sort_unstable();
        values.dedup();
        values
            .into_iter()
            .map(|v| {
                let mut ys: Vec<f64> = self
                    .points
                    .iter()
                    .filter(|p| p.setting == setting && p.value == v)
                    .map(|p| if mib { p.mib_per_sec } else { p.msgs_per_sec })
                    .collect();
                ys.sort_by(f64::total_cmp);
                let mid = ys.len() / 2;
                let median = if ys.len() % 2 == 1 {
                    ys[mid]
                } else {
                    (ys[mid - 1] + ys[mid]) / 2.0
                };
                (v, median, ys[0], ys[ys.len() - 1])
            })
            .collect()
    }
}

/// Runs every point of every round.
pub async fn run(o: &SweepOptions) -> anyhow::Result<SweepResult> {
    let started = std::time::Instant::now();
    let total: usize = o.dims.iter().map(|d| d.values().len()).sum::<usize>() * o.runs;
    let mut points = Vec::new();
    let mut nats_server = String::new();
    let mut k = 0;
    for round in 0..o.runs {
        for &dim in &o.dims {
            let mut values = dim.values().to_vec();
            if round % 2 == 1 {
                values.reverse();
            }
            for v in values {
                k += 1;
                let mut b = o.base.clone();
                b.plot = None;
                b.json = true;
                dim.apply(&mut b, v);
                b.messages = count(&b);
                let r: BenchResult = super::run(&b).await.with_context(|| {
                    format!("sweep point {}={v}, round {}", dim.name(), round + 1)
                })?;
                nats_server = r.options.nats_server.clone();
                let p = SweepPoint {
                    setting: dim.name(),
                    value: v,
                    round: round + 1,
                    size: b.size,
                    messages: r.messages,
                    msgs_per_sec: r.msgs_per_sec,
                    mib_per_sec: r.msgs_per_sec * b.size as f64 / (1u64 << 20) as f64,
                    p50_ms: r.p50_ms,
                    p99_ms: r.p99_ms,
                    lost: r.lost,
                    duplicates: r.duplicates,
                    corrupted: r.corrupted,
                    load: super::load_average(),
                };
                eprintln!(
                    "[{k:>3}/{total}] round {} {}={v:<6} {:>7} msgs: {:>7.0} msgs/s {:>7.1} MiB/s, p50 {:.1} ms, p99 {:.1} ms{} (load {})",
                    round + 1,
                    dim.name(),
                    p.messages,
                    p.msgs_per_sec,
                    p.mib_per_sec,
                    p.p50_ms,
                    p.p99_ms,
                    if r.lost + r.duplicates + r.corrupted > 0 {
                        format!(
                            " — LOST {} DUPLICATED {} CORRUPTED {}",
                            r.lost, r.duplicates, r.corrupted
                        )
                    } else {
                        String::new()
                    },
                    p.load
                );
                points.push(p);
            }
        }
    }
    let result = SweepResult {
        runs: o.runs,
        nats_server,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        defaults: ALL.iter().map(|d| (d.name(), d.base(&o.base))).collect(),
        points,
        seconds: started.elapsed().as_secs_f64(),
    };
    if let Some(path) = &o.plot {
        let svg = super::plot::render(&figure(&result));
        std::fs::write(path, svg)
            .with_context(|| format!("writing the plot {}", path.display()))?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(result)
}

/// One panel per swept setting (and MiB/s beside msgs/s for the size).
pub fn figure(r: &SweepResult) -> Figure {
    let mut settings: Vec<&str> = Vec::new();
    for p in &r.points {
        if !settings.contains(&p.setting) {
            settings.push(p.setting);
        }
    }
    let mut panels = Vec::new();
    for s in settings {
        let Some(dim) = ALL.iter().copied().find(|d| d.name() == s) else {
            continue;
        };
        let (x_label, x_unit) = dim.axis();
        let fixed = ALL
            .iter()
            .filter(|d| **d != dim)
            .map(|d| {
                let v = r.defaults.get(d.name()).copied().unwrap_or(0);
                match d {
                    Dim::Size => super::plot::label(v as f64, Unit::Bytes),
                    _ => format!("{} {v}", d.name()),
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let series = |mib: bool| Series {
            name: format!(
                "median of {} round{} (whisker: min–max)",
                r.runs,
                if r.runs == 1 { "" } else { "s" }
            ),
            points: r
                .curve(s, mib)
                .into_iter()
                .map(|(v, y, lo, hi)| Point {
                    x: v as f64,
                    y,
                    lo: Some(lo),
                    hi: Some(hi),
                })
                .collect(),
        };
        panels.push(Panel {
            title: format!("msgs/s vs {s} ({fixed})"),
            x_label: x_label.into(),
            y_label: "messages per second".into(),
            x_scale: Scale::Log2,
            x_unit,
            series: vec![series(false)],
        });
        if dim == Dim::Size {
            panels.push(Panel {
                title: format!("payload MiB/s vs size ({fixed})"),
                x_label: x_label.into(),
                y_label: "payload MiB per second".into(),
                x_scale: Scale::Log2,
                x_unit,
                series: vec![series(true)],
            });
        }
    }
    let loads: Vec<f64> = r
        .points
        .iter()
        .filter_map(|p| p.load.parse().ok())
        .collect();
    let (lmin, lmax) = loads
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &l| {
            (a.min(l), b.max(l))
        });
    Figure {
        title: "uplink bench --sweep: msgs/s end to end, edge JetStream → HTTP/2 mTLS → cloud JetStream, verified".into(),
        notes: vec![
            format!(
                "{} points, {} round{}, {:.0} s; {}; {} cores shared by the 5 processes and the publisher; load average {}",
                r.points.len(),
                r.runs,
                if r.runs == 1 { "" } else { "s" },
                r.seconds,
                r.nats_server,
                r.cores,
                if loads.is_empty() {
                    "unknown".to_string()
                } else {
                    format!("{lmin:.1}–{lmax:.1}")
                }
            ),
            format!(
                "closed-loop publisher; per point min(--messages, 128 MiB / size, 2,000 × batch) messages; {}",
                if r.ok() {
                    "0 lost, 0 duplicated, 0 corrupted at every point"
                } else {
                    "SOME POINTS LOST OR DUPLICATED MESSAGES (see the JSON)"
                }
            ),
            "a noisy shared machine: read the shape and the ratios between points, not the absolute numbers".into(),
        ],
        panels,
        columns: 2,
        panel_width: 520.0,
        panel_height: 300.0,
    }
}

/// A table per setting, or the whole result as one JSON line.
pub fn print(r: &SweepResult, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("serializable"));
        return;
    }
    let mut settings: Vec<&str> = Vec::new();
    for p in &r.points {
        if !settings.contains(&p.setting) {
            settings.push(p.setting);
        }
    }
    for s in settings {
        println!("{s:>12}  msgs/s median (min–max)     MiB/s median");
        let mib = r.curve(s, true);
        for ((v, y, lo, hi), (_, m, _, _)) in r.curve(s, false).into_iter().zip(mib) {
            println!("{v:>12}  {y:>7.0} ({lo:>7.0}–{hi:>7.0})   {m:>8.1}");
        }
    }
    println!(
        "{} points in {:.0} s; {}",
        r.points.len(),
        r.seconds,
        if r.ok() {
            "0 lost, 0 duplicated, 0 corrupted at every point"
        } else {
            "SOME POINTS LOST OR DUPLICATED MESSAGES"
        }
    );
}

#[cfg(test)]
mod tests;
