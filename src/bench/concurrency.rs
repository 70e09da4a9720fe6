//! `uplink bench --concurrency adaptive,fixed[:N] [--inject-latency D]`: the gateway's
//! `forward.concurrency` modes side by side. Each trial is a backlog drain on fresh servers
//! (the edge stream filled with --messages first, then the gateway started and timed until the
//! cloud stream holds them all, every id verified exactly once and intact), --runs rounds with
//! the modes' order alternating. `--inject-latency D` makes the ingest slow: a fault proxy
//! between the ingest and cloud NATS adds D before every 16 KiB chunk it forwards (both ways),
//! so the ingest's publishes and PubAcks crawl and batches queue inside it; `--ingest-budget B`
//! gives the ingest a per-platform memory budget of B bytes, beyond which it answers 503 busy.
//!
//! Per trial: msgs/s, the batch delivery time (first send → confirmation, retries included;
//! p50/p99 from the gateway's histogram buckets, so bucket bounds), the ingest's 503 and 429
//! answers, the gateway's retries, and the concurrency limit and batches in flight sampled
//! every [`SAMPLE_EVERY`] (min / median / max), and the ingest's peak request memory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;

use crate::testbed::pipeline::{Pipeline, PipelineOptions, delivery_budget};
use crate::testbed::verify::{self, Workload};
use uplink::config::{Concurrency, GatewayConfig, IngestConfig};
use uplink::telemetry::{scrape_sum, scrape_value};

/// `--ingest-budget`'s request size limits: the body and decoded size the ingest accepts then
/// (a gateway batch is at most 1 MiB before compression), and the least budget they allow.
const BUDGET_BODY: usize = 1 << 20;
const BUDGET_DECODED: usize = 2 << 20;
pub const MIN_BUDGET: usize = BUDGET_BODY + 2 * BUDGET_DECODED;

/// How often the gateway's limit and the ingest's memory are sampled during a drain.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// A contender: a `forward.concurrency` mode with its `forward.max_in_flight`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mode {
    pub adaptive: bool,
    pub max_in_flight: usize,
}

impl Mode {
    pub fn name(&self) -> String {
        format!(
            "{}:{}",
            if self.adaptive { "adaptive" } else { "fixed" },
            self.max_in_flight
        )
    }
}

/// `adaptive,fixed,fixed:32`: each MODE[:MAX_IN_FLIGHT], MAX defaulting to `default_max`.
pub fn parse(list: &str, default_max: usize) -> Result<Vec<Mode>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        let (mode, max) = match item.split_once(':') {
            Some((m, n)) => (
                m,
                n.parse::<usize>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                    format!("{item:?}: the max in flight after ':' must be a number ≥ 1")
                })?,
            ),
            None => (item, default_max),
        };
        let adaptive = match mode {
            "adaptive" => true,
            "fixed" => false,
            other => {
                return Err(format!(
                    "{other:?} is not a mode: adaptive or fixed, each optionally :MAX_IN_FLIGHT (e.g. adaptive,fixed,fixed:32)"
                ));
            }
        };
        let m = Mode {
            adaptive,
            max_in_flight: max,
        };
        if out.contains(&m) {
            return Err(format!("{} is listed twice", m.name()));
        }
        out.push(m);
    }
    Ok(out)
}

/// What `--concurrency` runs.
#[derive(Clone, Debug)]
pub struct ConcurrencyOptions {
    pub modes: Vec<Mode>,
    pub messages: usize,
    pub size: usize,
    pub runs: usize,
    /// Added per chunk between the ingest and cloud NATS: a slow ingest.
    pub inject_latency: Option<Duration>,
    /// The ingest's per-platform memory budget (bytes): 503 busy beyond it.
    pub ingest_budget: Option<usize>,
    pub nats_server: Option<PathBuf>,
    pub json: bool,
}

/// min / median / max of samples.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        Spread {
            min: v[0],
            median: v[v.len() / 2],
            max: v[v.len() - 1],
        }
    }
}

/// One drain.
#[derive(Debug, serde::Serialize)]
pub struct Trial {
    pub round: usize,
    pub mode: String,
    pub messages: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub corrupted: usize,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    /// Batch delivery, first send → confirmation (bucket upper bounds), and its mean.
    pub delivery_p50_ms: f64,
    pub delivery_p99_ms: f64,
    pub delivery_mean_ms: f64,
    pub answers_503: u64,
    pub answers_429: u64,
    pub retries: u64,
    pub limit: Spread,
    pub in_flight: Spread,
    pub ingest_inflight_bytes_max: f64,
    /// The 1-minute load average when the trial ended.
    pub load_average: String,
}

/// The whole run.
#[derive(Debug, serde::Serialize)]
pub struct ConcurrencyResult {
    pub inject_latency_ms: Option<f64>,
    pub ingest_budget: Option<usize>,
    pub messages: usize,
    pub size: usize,
    pub trials: Vec<Trial>,
}

impl ConcurrencyResult {
    /// Every trial delivered every message exactly once, intact.
    pub fn ok(&self) -> bool {
        self.trials
            .iter()
            .all(|t| t.lost == 0 && t.duplicates == 0 && t.corrupted == 0)
    }
}

/// `uplink bench --concurrency …`: checks the flags (each mistake names its flag), runs, prints;
/// exit 1 when any trial lost or duplicated a message. `alone`: no other kind of bench asked.
pub fn cli(
    modes: Option<String>,
    (inject_latency, ingest_budget): (Option<Duration>, Option<usize>),
    opts: super::BenchOptions,
    runs: usize,
    alone: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let bad =
        |key: &'static str, reason: String| uplink::config::ConfigError::Invalid { key, reason };
    let Some(list) = modes else {
        let key = if inject_latency.is_some() {
            "--inject-latency"
        } else {
            "--ingest-budget"
        };
        return Err(bad(key, "applies to --concurrency only".into()).into());
    };
    if let Some(b) = ingest_budget
        && b < MIN_BUDGET
    {
        return Err(bad(
            "--ingest-budget",
            format!(
                "{b} bytes: must be at least {MIN_BUDGET} (one largest request while it decodes)"
            ),
        )
        .into());
    }
    if !alone
        || opts.mixed
        || opts.via_nginx
        || opts.duration.is_some()
        || opts.cloud_cluster.is_some()
    {
        return Err(bad(
            "--concurrency",
            "runs alone (with --messages, --size, --in-flight, --runs, --inject-latency, --json, --nats-server)".into(),
        )
        .into());
    }
    let default_max = opts
        .in_flight
        .unwrap_or(GatewayConfig::default().forward.max_in_flight);
    let modes = parse(&list, default_max).map_err(|r| bad("--concurrency", r))?;
    if runs == 0 || opts.messages == 0 {
        return Err(bad(
            "--concurrency",
            "needs at least 1 message (--messages) and 1 run (--runs)".into(),
        )
        .into());
    }
    if inject_latency.is_some_and(|d| d.is_zero()) {
        return Err(bad(
            "--inject-latency",
            "must be above 0 (leave it out for a fast ingest)".into(),
        )
        .into());
    }
    let o = ConcurrencyOptions {
        modes,
        messages: opts.messages,
        size: opts.size,
        runs,
        inject_latency,
        ingest_budget,
        nats_server: opts.nats_server,
        json: opts.json,
    };
    let result = super::harness::until_interrupted(run(&o))?;
    print(&result, o.json);
    Ok(if result.ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// Runs `--runs` rounds of one drain per mode, alternating the order.
pub async fn run(o: &ConcurrencyOptions) -> anyhow::Result<ConcurrencyResult> {
    let exe = std::env::current_exe()?;
    let nats_bin = crate::testbed::find_nats_server(o.nats_server.as_deref())?;
    let mut trials = Vec::new();
    for round in 0..o.runs {
        let mut order = o.modes.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for mode in order {
            let t = trial(o, &exe, &nats_bin, round, mode).await?;
            if !o.json {
                eprintln!(
                    "round {} {}: {:.0} msgs/s, delivery p50 {:.0} ms p99 {:.0} ms, 503 {}, 429 {}, retries {}, limit {}/{}/{}, lost {} dup {}, load {}",
                    t.round,
                    t.mode,
                    t.msgs_per_sec,
                    t.delivery_p50_ms,
                    t.delivery_p99_ms,
                    t.answers_503,
                    t.answers_429,
                    t.retries,
                    t.limit.min,
                    t.limit.median,
                    t.limit.max,
                    t.lost,
                    t.duplicates,
                    t.load_average
                );
            }
            trials.push(t);
        }
    }
    Ok(ConcurrencyResult {
        inject_latency_ms: o.inject_latency.map(|d| d.as_secs_f64() * 1e3),
        ingest_budget: o.ingest_budget,
        messages: o.messages,
        size: o.size,
        trials,
    })
}

async fn trial(
    o: &ConcurrencyOptions,
    exe: &std::path::Path,
    nats_bin: &std::path::Path,
    round: usize,
    mode: Mode,
) -> anyhow::Result<Trial> {
    let options = PipelineOptions {
        defer_gateway: true,
        cloud_fault_proxy: o.inject_latency.is_some(),
        ..Default::default()
    };
    let budget = o.ingest_budget;
    let mut p = Pipeline::start_with(
        exe,
        nats_bin,
        options,
        move |c: &mut IngestConfig| {
            if let Some(b) = budget {
                c.limits.max_body_bytes = BUDGET_BODY;
                c.limits.max_decoded_bytes = BUDGET_DECODED;
                c.limits.max_inflight_bytes_per_platform = b;
                c.limits.max_inflight_bytes_per_connection = b;
            }
        },
        move |c: &mut GatewayConfig| {
            c.forward.max_in_flight = mode.max_in_flight;
            c.forward.concurrency = if mode.adaptive {
                Concurrency::Adaptive
            } else {
                Concurrency::Fixed
            };
        },
    )
    .await?;
    let edge = jetstream::new(async_nats::connect(p.edge.url()).await?);
    let cloud = jetstream::new(async_nats::connect(p.cloud_url()).await?);
    edge.create_stream(uplink::gateway::stream_config(&p.gateway_cfg))
        .await
        .context("creating the edge stream")?;
    let w = Workload {
        count: o.messages,
        size: o.size,
        ..Default::default()
    };
    let sent = verify::publish(&edge, &w).await?;
    if let (Some(d), Some(f)) = (o.inject_latency, &p.cloud_fault) {
        f.set_latency(d);
    }
    let started = Instant::now();
    p.start_gateway().await?;
    let gateway = p.gateway.as_ref().context("gateway started")?.admin;
    let ingest = p.ingest.as_ref().context("ingest running")?.admin;
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn(sample(gateway, ingest, stop.clone()));
    let stream = p.ingest_cfg.nats.stream.clone();
    let budget = delivery_budget(o.messages) * if o.inject_latency.is_some() { 4 } else { 1 };
    let waited = verify::wait_count(&cloud, &stream, sent.len() as u64, budget).await;
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let (limits, in_flight, ingest_bytes) = sampler.await?;
    if let Err(e) = waited {
        p.dir.keep();
        eprintln!("logs kept in {}", p.dir.path().display());
        return Err(e);
    }
    if let Some(f) = &p.cloud_fault {
        f.heal();
    }
    verify::wait_drained(
        &edge,
        &p.gateway_cfg.nats.stream,
        &p.gateway_cfg.nats.consumer,
        budget,
    )
    .await?;
    let gm = p.gateway_metrics().await.unwrap_or_default();
    let im = p.ingest_metrics().await.unwrap_or_default();
    let report = p.check_delivery(&edge, &cloud, &sent).await?;
    for problem in &report.problems {
        eprintln!("problem: {problem}");
    }
    let count = scrape_value(&gm, "uplink_gateway_delivery_seconds_count").unwrap_or(0.0);
    let sum = scrape_value(&gm, "uplink_gateway_delivery_seconds_sum").unwrap_or(0.0);
    Ok(Trial {
        round: round + 1,
        mode: mode.name(),
        messages: report.messages,
        lost: report.lost,
        duplicates: report.duplicates,
        corrupted: report.corrupted,
        seconds,
        msgs_per_sec: report.messages as f64 / seconds.max(1e-9),
        delivery_p50_ms: bucket_quantile(&gm, "uplink_gateway_delivery_seconds", 0.5) * 1e3,
        delivery_p99_ms: bucket_quantile(&gm, "uplink_gateway_delivery_seconds", 0.99) * 1e3,
        delivery_mean_ms: sum / count.max(1.0) * 1e3,
        answers_503: status_count(&im, "503"),
        answers_429: status_count(&im, "429"),
        retries: scrape_sum(&gm, "uplink_gateway_retries_total") as u64,
        limit: Spread::of(limits),
        in_flight: Spread::of(in_flight),
        ingest_inflight_bytes_max: ingest_bytes.into_iter().fold(0.0, f64::max),
        load_average: super::load_average(),
    })
}

/// Samples the gateway's limit and batches in flight and the ingest's request memory until
/// `stop`.
async fn sample(
    gateway: std::net::SocketAddr,
    ingest: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut limits, mut in_flight, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        if let Ok((_, m)) = crate::testbed::http_get(gateway, "/metrics").await {
            if let Some(v) = scrape_value(&m, "uplink_gateway_concurrency_limit") {
                limits.push(v);
            }
            if let Some(v) = scrape_value(&m, "uplink_gateway_in_flight_batches") {
                in_flight.push(v);
            }
        }
        if let Ok((_, m)) = crate::testbed::http_get(ingest, "/metrics").await
            && let Some(v) = scrape_value(&m, "uplink_ingest_inflight_bytes")
        {
            bytes.push(v);
        }
    }
    (limits, in_flight, bytes)
}

/// Answers of the ingest with this status, over every route.
fn status_count(metrics: &str, status: &str) -> u64 {
    let needle = format!("status=\"{status}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("uplink_ingest_requests_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The upper bound of the histogram bucket holding quantile `q` (0 when empty).
pub fn bucket_quantile(metrics: &str, family: &str, q: f64) -> f64 {
    let prefix = format!("{family}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(_, total)) = buckets.last() else {
        return 0.0;
    };
    if total == 0.0 {
        return 0.0;
    }
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(0.0, |(le, _)| *le)
}

/// The table: one row per trial, then per mode the median of its rounds.
pub fn print(r: &ConcurrencyResult, json: bool) {
    println!(
        "{} messages of {} B per drain{}",
        r.messages,
        r.size,
        match r.inject_latency_ms {
            Some(ms) => format!(", slow ingest: {ms} ms per 16 KiB chunk ingest ↔ cloud NATS"),
            None => ", fast ingest (no latency injected)".into(),
        }
    );
    if let Some(b) = r.ingest_budget {
        println!(
            "ingest memory budget per platform: {:.1} MiB (503 busy beyond)",
            b as f64 / (1 << 20) as f64
        );
    }
    println!(
        "| round | mode | msgs/s | delivery p50 / p99 / mean ms | 503 | 429 | retries | limit min/med/max | in flight min/med/max | ingest bytes max | lost | dup | load |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for t in &r.trials {
        println!(
            "| {} | {} | {:.0} | {:.0} / {:.0} / {:.1} | {} | {} | {} | {}/{}/{} | {}/{}/{} | {:.1} MiB | {} | {} | {} |",
            t.round,
            t.mode,
            t.msgs_per_sec,
            t.delivery_p50_ms,
            t.delivery_p99_ms,
            t.delivery_mean_ms,
            t.answers_503,
            t.answers_429,
            t.retries,
            t.limit.min,
            t.limit.median,
            t.limit.max,
            t.in_flight.min,
            t.in_flight.median,
            t.in_flight.max,
            t.ingest_inflight_bytes_max / (1 << 20) as f64,
            t.lost,
            t.duplicates,
            t.load_average
        );
    }
    let mut modes: Vec<&str> = r.trials.iter().map(|t| t.mode.as_str()).collect();
    modes.dedup();
    let mut seen = Vec::new();
    for m in modes {
        if seen.contains(&m) {
            continue;
        }
        seen.push(m);
        let rates = Spread::of(
            r.trials
                .iter()
                .filter(|t| t.mode == m)
                .map(|t| t.msgs_per_sec)
                .collect(),
        );
        println!(
            "{m}: {:.0} msgs/s median ({:.0}–{:.0})",
            rates.median, rates.min, rates.max
        );
    }
    println!(
        "verdict: {}",
        if r.ok() {
            "every trial delivered every message exactly once"
        } else {
            "LOST OR DUPLICATED MESSAGES"
        }
    );
    if json && let Ok(s) = serde_json::to_string(r) {
        println!("{s}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_with_their_max() {
        let m = parse("adaptive, fixed,fixed:32", 8).unwrap();
        assert_eq!(
            m.iter().map(Mode::name).collect::<Vec<_>>(),
            ["adaptive:8", "fixed:8", "fixed:32"]
        );
        assert!(parse("fast", 8).unwrap_err().contains("\"fast\""));
        assert!(parse("fixed:0", 8).unwrap_err().contains("≥ 1"));
        assert!(parse("fixed,fixed:8", 8).unwrap_err().contains("twice"));
    }

    #[test]
    fn a_bucket_quantile_is_the_bound_of_its_bucket() {
        let m = "x_bucket{le=\"0.01\"} 50\nx_bucket{le=\"0.1\"} 99\nx_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(bucket_quantile(m, "x", 0.5), 0.01);
        assert_eq!(bucket_quantile(m, "x", 0.99), 0.1);
        assert_eq!(bucket_quantile(m, "x", 1.0), f64::INFINITY);
        assert_eq!(bucket_quantile("", "x", 0.5), 0.0);
    }
}
