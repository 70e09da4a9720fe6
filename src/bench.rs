//! `uplink bench`: the end-to-end proof a user can run. Starts a private pipeline (edge and
//! cloud nats-servers, ingest, gateway, dev PKI), publishes N messages over several subjects,
//! waits until the cloud stream holds them and the edge consumer is drained, then verifies every
//! id arrived exactly once with its payload intact.

mod anchor;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::config::{GatewayConfig, IngestConfig};
use crate::telemetry::scrape_sum;
use crate::testbed::nginx::NginxSite;
use crate::testbed::pipeline::{Pipeline, PipelineOptions, delivery_budget};
use crate::testbed::verify::{self, Workload};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub messages: usize,
    pub size: usize,
    pub mixed: bool,
    pub json: bool,
    pub nats_server: Option<PathBuf>,
    /// Ingest `http2.max_requests_per_connection`.
    pub ingest_max_requests: Option<u64>,
    /// Ingest `timeouts.idle`.
    pub ingest_idle_timeout: Option<Duration>,
    /// Gateway `forward.max_in_flight`.
    pub in_flight: Option<usize>,
    /// Put nginx (TLS terminator, nginx defaults: keepalive_requests 1000) in front of the ingest.
    pub via_nginx: bool,
    /// Also measure the in-process JetStream-to-JetStream relay on the same servers.
    pub anchor: bool,
}

/// The figures of a run.
#[derive(Debug, serde::Serialize)]
pub struct BenchResult {
    pub messages: usize,
    pub delivered: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub corrupted: usize,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub connections_opened: f64,
    pub retries: f64,
    pub server_goaways: f64,
    /// Messages per second of a direct in-process JetStream relay (`--anchor`), same run.
    pub anchor_msgs_per_sec: Option<f64>,
    /// `msgs_per_sec / anchor_msgs_per_sec`.
    pub ratio_to_anchor: Option<f64>,
}

/// Runs the bench; Ok(result) whatever the verdict (the caller decides the exit code).
pub async fn run(opts: &BenchOptions) -> anyhow::Result<BenchResult> {
    let exe = std::env::current_exe()?;
    let nats_bin = crate::testbed::find_nats_server(opts.nats_server.as_deref())?;
    let o = opts.clone();
    let tweak_ingest = move |c: &mut IngestConfig| {
        if let Some(n) = o.ingest_max_requests {
            c.http2.max_requests_per_connection = n;
        }
        if let Some(d) = o.ingest_idle_timeout {
            c.timeouts.idle = d;
        }
    };
    let o = opts.clone();
    let tweak_gateway = move |c: &mut GatewayConfig| {
        if let Some(n) = o.in_flight {
            c.forward.max_in_flight = n;
        }
    };
    let options = PipelineOptions {
        nginx: opts.via_nginx.then(NginxSite::default),
        ..Default::default()
    };
    let p = Pipeline::start_with(&exe, &nats_bin, options, tweak_ingest, tweak_gateway).await?;
    if !opts.json {
        eprintln!(
            "pipeline up: edge {} → gateway → {}ingest {} → cloud {} (logs in {})",
            p.edge.url(),
            match &p.nginx {
                Some(n) => format!("nginx {} → ", n.url()),
                None => String::new(),
            },
            p.ingest_url(),
            p.cloud_url(),
            p.dir.path().display()
        );
    }
    let edge = jetstream::new(async_nats::connect(p.edge.url()).await?);
    let cloud = jetstream::new(async_nats::connect(p.cloud_url()).await?);
    let w = Workload {
        count: opts.messages,
        size: opts.size,
        mixed: opts.mixed,
        ..Default::default()
    };
    let started = Instant::now();
    let sent = verify::publish(&edge, &w).await?;
    let budget = delivery_budget(opts.messages);
    verify::wait_count(&cloud, &p.ingest_cfg.nats.stream, sent.len() as u64, budget).await?;
    let seconds = started.elapsed().as_secs_f64();
    verify::wait_drained(
        &edge,
        &p.gateway_cfg.nats.stream,
        &p.gateway_cfg.nats.consumer,
        budget,
    )
    .await?;
    let got = verify::read_all(&cloud, &p.ingest_cfg.nats.stream).await?;
    let incarnation = verify::incarnation(&edge, &p.gateway_cfg.nats.stream).await?;
    let report = verify::check(
        &sent,
        &got,
        &p.platform,
        &p.gateway_cfg.nats.stream,
        incarnation,
        &p.ingest_cfg.nats.subject_prefix,
    );
    let gm = p.gateway_metrics().await.unwrap_or_default();
    let im = p.ingest_metrics().await.unwrap_or_default();
    for problem in &report.problems {
        eprintln!("problem: {problem}");
    }
    let msgs_per_sec = report.messages as f64 / seconds.max(1e-9);
    let anchor = if opts.anchor {
        let batch = p.gateway_cfg.batch.max_messages;
        Some(anchor::relay_rate(&edge, &cloud, &w, batch).await?)
    } else {
        None
    };
    Ok(BenchResult {
        messages: report.messages,
        delivered: report.delivered,
        lost: report.lost,
        duplicates: report.duplicates,
        corrupted: report.corrupted,
        seconds,
        msgs_per_sec,
        p50_ms: report.p50_ms,
        p99_ms: report.p99_ms,
        connections_opened: scrape_sum(&gm, "uplink_client_connections_opened_total"),
        retries: scrape_sum(&gm, "uplink_gateway_retries_total"),
        server_goaways: scrape_sum(&im, "uplink_ingest_goaway_sent_total"),
        anchor_msgs_per_sec: anchor,
        ratio_to_anchor: anchor.map(|a| msgs_per_sec / a),
    })
}

/// Prints the result as a human summary, or one JSON line.
pub fn print(r: &BenchResult, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("serializable"));
        return;
    }
    println!(
        "{} messages: delivered {}, lost {}, duplicates {}, corrupted {}",
        r.messages, r.delivered, r.lost, r.duplicates, r.corrupted
    );
    println!(
        "{:.2} s, {:.0} msgs/s end to end; latency edge→cloud p50 {:.1} ms, p99 {:.1} ms",
        r.seconds, r.msgs_per_sec, r.p50_ms, r.p99_ms
    );
    println!(
        "connections opened {}, retries {}, server GOAWAYs {}",
        r.connections_opened, r.retries, r.server_goaways
    );
    if let (Some(a), Some(ratio)) = (r.anchor_msgs_per_sec, r.ratio_to_anchor) {
        println!(
            "anchor (in-process JetStream→JetStream relay, same servers, same run): {a:.0} msgs/s; uplink = {ratio:.2}× of it"
        );
    }
}
