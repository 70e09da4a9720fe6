//! `uplink bench --open-loop R`: latency, edge publish → cloud persist, with the publisher at a
//! fixed rate that never waits for an ack before the next send (no coordinated omission).
//! Message `i` is *due* at `t0 + i / R`; its latency is the cloud JetStream's store time minus
//! that due time, so a publisher or pipeline that falls behind shows up in the figures instead
//! of slowing the schedule down. `--runs` rounds, each running the gateway with adaptive linger
//! on and off (`--adaptive both`), alternating which goes first, every trial on fresh servers;
//! every trial ends with the plain bench's verdict (every id exactly once, intact).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::jetstream;
use bytes::Bytes;

use crate::testbed::pipeline::{Pipeline, PipelineOptions, delivery_budget};
use crate::testbed::verify::{self, Sent, Workload};
use uplink::config::GatewayConfig;
use uplink::telemetry::scrape_sum;
use uplink::wire::TIME_HEADER;

/// The header carrying a message's index in the schedule.
const INDEX_HEADER: &str = "Bench-Index";
/// Messages published (closed loop, not measured) before the clock starts, so connections and
/// streams are warm.
const WARMUP: usize = 200;
/// Subjects the load is spread over.
const SUBJECTS: usize = 8;

/// What `--open-loop` runs.
#[derive(Clone, Debug)]
pub struct LatencyOptions {
    /// Messages per second of the schedule.
    pub rate: f64,
    pub messages: usize,
    pub size: usize,
    pub runs: usize,
    /// `batch.adaptive` of each trial of a round, in the order of the first round.
    pub modes: Vec<bool>,
    pub nats_server: Option<PathBuf>,
    pub in_flight: Option<usize>,
    pub json: bool,
}

/// One trial.
#[derive(Debug, serde::Serialize)]
pub struct Trial {
    pub round: usize,
    pub adaptive: bool,
    pub messages: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub corrupted: usize,
    /// Due time → cloud persist (open loop).
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Edge persist → cloud persist (what the plain bench reports).
    pub edge_p50_ms: f64,
    pub edge_p99_ms: f64,
    /// Due time → edge persist, p99: how far the publisher (and the edge) lagged the schedule.
    pub publish_lag_p99_ms: f64,
    /// Messages over (last cloud persist − first due time).
    pub achieved_msgs_per_sec: f64,
    pub batches: f64,
    pub idle_flushes: f64,
    pub messages_per_batch: f64,
}

impl Trial {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.corrupted == 0
    }
}

/// Per mode, the range over the rounds.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub adaptive: bool,
    pub p50_ms: (f64, f64),
    pub p99_ms: (f64, f64),
    pub achieved_msgs_per_sec: (f64, f64),
    pub messages_per_batch: (f64, f64),
}

#[derive(Debug, serde::Serialize)]
pub struct LatencyResult {
    pub rate: f64,
    pub messages: usize,
    pub size: usize,
    pub trials: Vec<Trial>,
    pub summary: Vec<Summary>,
}

impl LatencyResult {
    pub fn ok(&self) -> bool {
        self.trials.iter().all(Trial::ok)
    }
}

/// Runs every trial; Ok(result) whatever the verdicts (the caller decides the exit code).
pub async fn run(o: &LatencyOptions) -> anyhow::Result<LatencyResult> {
    anyhow::ensure!(
        o.rate > 0.0 && o.rate.is_finite(),
        "--open-loop: the rate must be a positive number of messages per second"
    );
    let exe = std::env::current_exe()?;
    let nats_bin = crate::testbed::find_nats_server(o.nats_server.as_deref())?;
    let mut trials = Vec::new();
    for round in 0..o.runs {
        let mut modes = o.modes.clone();
        if round % 2 == 1 {
            modes.reverse();
        }
        for adaptive in modes {
            let t = trial(o, &exe, &nats_bin, round, adaptive).await?;
            if !o.json {
                eprintln!(
                    "round {round} adaptive {:<5}: p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms (edge→cloud p50 {:.2}, p99 {:.2}); {:.0} msgs/s, {:.1} msgs/batch; lost {}, duplicates {}, corrupted {}",
                    t.adaptive,
                    t.p50_ms,
                    t.p99_ms,
                    t.max_ms,
                    t.edge_p50_ms,
                    t.edge_p99_ms,
                    t.achieved_msgs_per_sec,
                    t.messages_per_batch,
                    t.lost,
                    t.duplicates,
                    t.corrupted
                );
            }
            trials.push(t);
        }
    }
    let mut by_mode: BTreeMap<bool, Vec<&Trial>> = BTreeMap::new();
    for t in &trials {
        by_mode.entry(t.adaptive).or_default().push(t);
    }
    let range = |ts: &[&Trial], f: fn(&Trial) -> f64| {
        ts.iter()
            .map(|t| f(t))
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)))
    };
    let summary = by_mode
        .iter()
        .rev()
        .map(|(adaptive, ts)| Summary {
            adaptive: *adaptive,
            p50_ms: range(ts, |t| t.p50_ms),
            p99_ms: range(ts, |t| t.p99_ms),
            achieved_msgs_per_sec: range(ts, |t| t.achieved_msgs_per_sec),
            messages_per_batch: range(ts, |t| t.messages_per_batch),
        })
        .collect();
    Ok(LatencyResult {
        rate: o.rate,
        messages: o.messages,
        size: o.size,
        trials,
        summary,
    })
}

/// The payload of message `i`, different per message.
fn payload(i: usize, size: usize) -> Bytes {
    Bytes::from(
        (0..size)
            .map(|k| b"0123456789abcdef"[(i + k) % 16])
            .collect::<Vec<u8>>(),
    )
}

fn unix_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default()
}

/// Publishes `count` messages on a fixed schedule; an ack is awaited by another task, never
/// before the next send. Returns what was sent and the schedule's start (unix ns).
async fn publish_open_loop(
    js: &jetstream::Context,
    rate: f64,
    count: usize,
    size: usize,
) -> anyhow::Result<(Vec<Sent>, i128)> {
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Sent, jetstream::context::PublishAckFuture)>();
    let acks = tokio::spawn(async move {
        let mut sent = Vec::new();
        while let Some((mut s, ack)) = rx.recv().await {
            s.sequence = ack.await.context("edge PubAck")?.sequence;
            sent.push(s);
        }
        anyhow::Ok(sent)
    });
    let t0 = tokio::time::Instant::now();
    let t0_unix = unix_nanos();
    for i in 0..count {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / rate)).await;
        let subject = format!("telemetry.s{}", i % SUBJECTS);
        let body = payload(i, size);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(INDEX_HEADER, i.to_string().as_str());
        let s = Sent {
            sequence: 0,
            subject: subject.clone(),
            hash: verify::payload_hash(&body),
            len: body.len(),
            headers: vec![(INDEX_HEADER.to_string(), i.to_string())],
        };
        let ack = js
            .send_publish(
                subject,
                jetstream::message::PublishMessage::build()
                    .payload(body)
                    .headers(headers),
            )
            .await
            .context("publish to the edge")?;
        tx.send((s, ack)).ok().context("ack task ended")?;
    }
    drop(tx);
    Ok((acks.await??, t0_unix))
}

/// The value at quantile `q` of sorted `v` (nearest rank), 0 when empty.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

/// What the cloud copy of one scheduled message says: (due→cloud, edge→cloud, due→edge), ms.
fn timings(g: &verify::Received, t0_unix: i128, rate: f64) -> Option<(f64, f64, f64)> {
    let index: f64 = g.headers.get(INDEX_HEADER)?.last()?.parse().ok()?;
    let edge: i128 = g.headers.get(TIME_HEADER)?.last()?.parse().ok()?;
    let edge_to_cloud = g.latency?.as_nanos() as i128;
    let due = t0_unix + (index * 1e9 / rate) as i128;
    let ms = |ns: i128| ns.max(0) as f64 / 1e6;
    Some((
        ms(edge + edge_to_cloud - due),
        ms(edge_to_cloud),
        ms(edge - due),
    ))
}

async fn trial(
    o: &LatencyOptions,
    exe: &std::path::Path,
    nats_bin: &std::path::Path,
    round: usize,
    adaptive: bool,
) -> anyhow::Result<Trial> {
    let in_flight = o.in_flight;
    let tweak_gateway = move |c: &mut GatewayConfig| {
        c.batch.adaptive = adaptive;
        if let Some(n) = in_flight {
            c.forward.max_in_flight = n;
        }
    };
    let p = Pipeline::start_with(
        exe,
        nats_bin,
        PipelineOptions::default(),
        |_| {},
        tweak_gateway,
    )
    .await?;
    let edge = jetstream::new(async_nats::connect(p.edge.url()).await?);
    let cloud = jetstream::new(async_nats::connect(p.cloud_addrs()).await?);
    let stream = p.ingest_cfg.nats.stream.clone();
    let warm = Workload {
        count: WARMUP,
        subjects: SUBJECTS,
        size: o.size,
        ..Default::default()
    };
    let mut sent = verify::publish(&edge, &warm).await?;
    verify::wait_count(&cloud, &stream, WARMUP as u64, delivery_budget(WARMUP))
        .await
        .context("warm-up")?;
    let before = p.gateway_metrics().await.unwrap_or_default();
    let (measured, t0_unix) = publish_open_loop(&edge, o.rate, o.messages, o.size).await?;
    sent.extend(measured);
    let budget = delivery_budget(sent.len());
    verify::wait_count(&cloud, &stream, sent.len() as u64, budget).await?;
    verify::wait_drained(
        &edge,
        &p.gateway_cfg.nats.stream,
        &p.gateway_cfg.nats.consumer,
        budget,
    )
    .await?;
    let after = p.gateway_metrics().await.unwrap_or_default();
    let got = verify::read_all(&cloud, &stream).await?;
    let incarnation = verify::incarnation(&edge, &p.gateway_cfg.nats.stream).await?;
    let report = verify::check(
        &sent,
        &got,
        &p.platform,
        &p.gateway_cfg.nats.stream,
        incarnation,
        &p.ingest_cfg.nats.subject_prefix,
    );
    for problem in &report.problems {
        eprintln!("problem: {problem}");
    }
    let (mut total, mut edge_ms, mut lag) = (Vec::new(), Vec::new(), Vec::new());
    for g in &got {
        if let Some((a, b, c)) = timings(g, t0_unix, o.rate) {
            total.push(a);
            edge_ms.push(b);
            lag.push(c);
        }
    }
    anyhow::ensure!(
        total.len() == o.messages || !report.ok(),
        "{} of {} scheduled messages carry their timings in the cloud",
        total.len(),
        o.messages
    );
    // The last cloud persist, relative to the schedule's start.
    let last_ms = got
        .iter()
        .filter_map(|g| {
            let edge: i128 = g.headers.get(TIME_HEADER)?.last()?.parse().ok()?;
            g.headers.get(INDEX_HEADER)?;
            Some((edge + g.latency?.as_nanos() as i128 - t0_unix) as f64 / 1e6)
        })
        .fold(0.0, f64::max);
    for v in [&mut total, &mut edge_ms, &mut lag] {
        v.sort_by(f64::total_cmp);
    }
    let metric = |name: &str| scrape_sum(&after, name) - scrape_sum(&before, name);
    let batches = metric("uplink_gateway_batches_total");
    Ok(Trial {
        round,
        adaptive,
        messages: o.messages,
        lost: report.lost,
        duplicates: report.duplicates,
        corrupted: report.corrupted,
        p50_ms: quantile(&total, 0.50),
        p99_ms: quantile(&total, 0.99),
        max_ms: total.last().copied().unwrap_or_default(),
        edge_p50_ms: quantile(&edge_ms, 0.50),
        edge_p99_ms: quantile(&edge_ms, 0.99),
        publish_lag_p99_ms: quantile(&lag, 0.99),
        achieved_msgs_per_sec: o.messages as f64 / (last_ms / 1000.0).max(1e-9),
        batches,
        idle_flushes: metric("uplink_gateway_idle_flushes_total"),
        messages_per_batch: o.messages as f64 / batches.max(1.0),
    })
}

/// Prints the trials' summary, or one JSON line.
pub fn print(r: &LatencyResult, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("serializable"));
        return;
    }
    println!(
        "open loop: {} messages of {} B at {} msg/s per trial, {} trials; latency = cloud persist − scheduled send",
        r.messages,
        r.size,
        r.rate,
        r.trials.len()
    );
    for s in &r.summary {
        println!(
            "adaptive {:<5}: p50 {:.2}–{:.2} ms, p99 {:.2}–{:.2} ms, {:.0}–{:.0} msgs/s, {:.1}–{:.1} msgs/batch",
            s.adaptive,
            s.p50_ms.0,
            s.p50_ms.1,
            s.p99_ms.0,
            s.p99_ms.1,
            s.achieved_msgs_per_sec.0,
            s.achieved_msgs_per_sec.1,
            s.messages_per_batch.0,
            s.messages_per_batch.1
        );
    }
    let bad: Vec<_> = r.trials.iter().filter(|t| !t.ok()).collect();
    if !bad.is_empty() {
        println!(
            "{} trials lost, duplicated or corrupted messages",
            bad.len()
        );
    }
}

#[cfg(test)]
mod tests;
