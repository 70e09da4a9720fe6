//! `uplink demo`: the pipeline of `uplink bench` on embedded defaults with a steady telemetry
//! trickle and a live one-line progress view, until Ctrl-C.

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::bench::timeline::Row;
use crate::testbed::pipeline::Pipeline;
use crate::testbed::verify::{self, Workload};
use uplink::telemetry::scrape_sum;
use uplink::wire::TIME_HEADER;

/// Runs the demo until `shutdown`; `rate` messages per second; `duration` bounds it when set;
/// `plot`: at the end, throughput and latency per second of the run as an SVG file.
pub async fn run(
    nats_server: Option<&Path>,
    rate: f64,
    duration: Option<Duration>,
    plot: Option<&Path>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    // Ctrl-C must stop the demo, not its servers under it: the summary reads them.
    crate::testbed::keep_children_apart();
    let nats_bin = crate::testbed::find_nats_server(nats_server)?;
    eprintln!("starting: dev PKI, edge and cloud nats-server, uplink ingest, uplink gateway …");
    let p = Pipeline::start(&exe, &nats_bin, |_| {}, |_| {}).await?;
    print_banner(&p);
    let edge = jetstream::new(async_nats::connect(p.edge.url()).await?);
    let cloud = jetstream::new(async_nats::connect(p.cloud_url()).await?);
    // The trickle: a large bounded workload at `rate`, stopped by Ctrl-C or the duration.
    let w = Workload {
        count: (rate * duration.map(|d| d.as_secs_f64()).unwrap_or(86_400.0)) as usize,
        mixed: true,
        rate: Some(rate),
        ..Default::default()
    };
    // --plot: every message's latency from a follower of the cloud stream (ordered, headers
    // only, acks nothing), per progress tick.
    let follower = match plot {
        Some(_) => Some(Follower::start(&cloud, &p.ingest_cfg.nats.stream).await?),
        None => None,
    };
    let started = tokio::time::Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    let mut last = (0.0f64, 0u64, 0u64);
    let publisher = tokio::spawn({
        let edge = edge.clone();
        async move { verify::publish(&edge, &w).await }
    });
    let stop = async {
        match duration {
            Some(d) => {
                tokio::select! { _ = tokio::time::sleep(d) => {}, _ = shutdown.cancelled() => {} }
            }
            None => shutdown.cancelled().await,
        }
    };
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        // Delivered first: read later, published can only be larger (never "delivered 4503
        // of 4501 published").
        let delivered = stream_count(&cloud, &p.ingest_cfg.nats.stream).await;
        let published = published_count(&edge, &p.gateway_cfg.nats.stream).await;
        if let Some(f) = &follower {
            // The interval's first tick is at once: no row for an instant.
            let t = started.elapsed().as_secs_f64();
            if t - last.0 >= 0.1 {
                rows.push(f.row(last, (t, published, delivered)));
            }
            last = (t, published, delivered);
        }
        let m = p.gateway_metrics().await.unwrap_or_default();
        eprint!(
            "\rpublished {published:>8} | delivered {delivered:>8} | in flight {:>6} | retries {:>4} | connections {:>2} open, {:>3} opened   ",
            published.saturating_sub(delivered),
            scrape_sum(&m, "uplink_gateway_retries_total"),
            scrape_sum(&m, "uplink_client_connections_open"),
            scrape_sum(&m, "uplink_client_connections_opened_total"),
        );
        let _ = std::io::stderr().flush();
    }
    publisher.abort();
    let _ = publisher.await;
    if let Some(f) = &follower {
        // The part of a second between the last tick and the stop.
        let t = started.elapsed().as_secs_f64();
        if t - last.0 >= 0.1 {
            let delivered = stream_count(&cloud, &p.ingest_cfg.nats.stream).await;
            let published = published_count(&edge, &p.gateway_cfg.nats.stream).await;
            rows.push(f.row(last, (t, published, delivered)));
        }
    }
    let (published, delivered, m) = summarize(&p, &edge, &cloud).await;
    if let (Some(path), Some(f)) = (plot, follower) {
        let counts = (published, delivered);
        write_plot(
            path,
            f,
            rate,
            started.elapsed().as_secs_f64(),
            counts,
            &m,
            &rows,
        )?;
    }
    eprintln!("stopping; every process and temp dir is removed.");
    drop(p);
    Ok(())
}

/// The summary: lets what was published arrive (bounded), then says where everything stands;
/// the counts and the gateway's metrics, for the plot.
async fn summarize(
    p: &Pipeline,
    edge: &jetstream::Context,
    cloud: &jetstream::Context,
) -> (u64, u64, String) {
    eprintln!();
    let published = published_count(edge, &p.gateway_cfg.nats.stream).await;
    let drained = tokio::time::timeout(DRAIN_WAIT, async {
        while stream_count(cloud, &p.ingest_cfg.nats.stream).await < published {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_ok();
    let delivered = stream_count(cloud, &p.ingest_cfg.nats.stream).await;
    let m = p.gateway_metrics().await.unwrap_or_default();
    eprintln!(
        "summary: {published} published at the edge, {delivered} in the cloud stream{}; {} retries, {} connections opened, {} rejected",
        if drained {
            String::new()
        } else {
            format!(
                " ({} still on their way after {DRAIN_WAIT:?})",
                published.saturating_sub(delivered)
            )
        },
        scrape_sum(&m, "uplink_gateway_retries_total"),
        scrape_sum(&m, "uplink_client_connections_opened_total"),
        scrape_sum(&m, "uplink_gateway_messages_total{result=\"rejected\"}"),
    );
    (published, delivered, m)
}

/// How to reach each part of the running pipeline, printed once at the start.
fn print_banner(p: &Pipeline) {
    eprintln!(
        "edge NATS   {}   (publish to telemetry.> here)\ningest      {}   (mTLS, HTTP/2)\ncloud NATS  {}   (stream {})\nadmin       gateway {}, ingest {}   (uplink status {} {})\nlogs        {}\nCtrl-C to stop.\n",
        p.edge.url(),
        p.ingest_url(),
        p.cloud_url(),
        p.ingest_cfg.nats.stream,
        p.gateway_cfg.admin.listen,
        p.ingest_cfg.admin.listen,
        p.gateway_cfg.admin.listen,
        p.ingest_cfg.admin.listen,
        p.dir.path().display()
    );
}

/// `--plot`: throughput and latency per progress tick of the run, as an SVG file at `path`.
fn write_plot(
    path: &Path,
    f: Follower,
    rate: f64,
    seconds: f64,
    (published, delivered): (u64, u64),
    m: &str,
    rows: &[Row],
) -> anyhow::Result<()> {
    f.task.abort();
    let title = format!(
        "uplink demo: {rate} msg/s of mixed telemetry (0 B … 64 KiB, headers) for {:.0} s",
        seconds
    );
    let notes = vec![
        format!(
            "{published} published at the edge, {delivered} in the cloud stream; {} retries, {} connections opened",
            scrape_sum(m, "uplink_gateway_retries_total"),
            scrape_sum(m, "uplink_client_connections_opened_total"),
        ),
        format!(
            "per progress tick (1 s); latency = cloud store − edge store, from a headers-only follower of the cloud stream; load average {}",
            crate::bench::load_average()
        ),
    ];
    let svg = crate::bench::plot::render(&crate::bench::timeline::figure(&title, notes, 1.0, rows));
    std::fs::write(path, svg).with_context(|| format!("writing the plot {}", path.display()))?;
    eprintln!("plot written to {}", path.display());
    Ok(())
}

/// Latencies of the messages the cloud stream stored, collected between progress ticks.
struct Follower {
    latencies: Arc<Mutex<Vec<f64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    async fn start(cloud: &jetstream::Context, stream: &str) -> anyhow::Result<Follower> {
        use futures_util::StreamExt as _;
        let consumer = cloud
            .get_stream(stream)
            .await?
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                headers_only: true,
                description: Some(
                    "uplink demo --plot (ordered, headers only, acks nothing)".into(),
                ),
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let sink = latencies.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(m)) = messages.next().await {
                let stored = match m.info() {
                    Ok(i) => i.published.unix_timestamp_nanos(),
                    Err(_) => continue,
                };
                let edge = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(TIME_HEADER))
                    .and_then(|v| v.as_str().parse::<i128>().ok());
                if let Some(edge) = edge {
                    let ms = (stored - edge) as f64 / 1e6;
                    sink.lock().expect("not poisoned").push(ms);
                }
            }
        });
        Ok(Follower { latencies, task })
    }

    /// The row of the tick from `last` to `now` (seconds, published, delivered).
    fn row(&self, last: (f64, u64, u64), now: (f64, u64, u64)) -> Row {
        let mut l = std::mem::take(&mut *self.latencies.lock().expect("not poisoned"));
        l.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if l.is_empty() {
                f64::NAN
            } else {
                l[((l.len() - 1) as f64 * p).round() as usize]
            }
        };
        let dt = (now.0 - last.0).max(1e-3);
        Row {
            t: last.0,
            len: dt,
            published_per_s: now.1.saturating_sub(last.1) as f64 / dt,
            delivered_per_s: now.2.saturating_sub(last.2) as f64 / dt,
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            max_ms: pct(1.0),
        }
    }
}

/// How long the demo waits at the end for what was published to arrive.
const DRAIN_WAIT: Duration = Duration::from_secs(15);

/// Messages ever stored in the edge stream (its last sequence): the work-queue stream itself
/// holds only what is not delivered yet.
async fn published_count(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.last_sequence).unwrap_or(0),
        Err(_) => 0,
    }
}

async fn stream_count(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}
