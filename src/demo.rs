//! `uplink demo`: the pipeline of `uplink bench` on embedded defaults with a steady telemetry
//! trickle and a live one-line progress view, until Ctrl-C.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::telemetry::scrape_sum;
use crate::testbed::pipeline::Pipeline;
use crate::testbed::verify::{self, Workload};

/// Runs the demo until `shutdown`; `rate` messages per second; `duration` bounds it when set.
pub async fn run(
    nats_server: Option<&Path>,
    rate: f64,
    duration: Option<Duration>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let nats_bin = crate::testbed::find_nats_server(nats_server)?;
    eprintln!("starting: dev PKI, edge and cloud nats-server, uplink ingest, uplink gateway …");
    let p = Pipeline::start(&exe, &nats_bin, |_| {}, |_| {}).await?;
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
    let edge = jetstream::new(async_nats::connect(p.edge.url()).await?);
    let cloud = jetstream::new(async_nats::connect(p.cloud_url()).await?);
    // The trickle: a large bounded workload at `rate`, stopped by Ctrl-C or the duration.
    let w = Workload {
        count: (rate * duration.map(|d| d.as_secs_f64()).unwrap_or(86_400.0)) as usize,
        mixed: true,
        rate: Some(rate),
        ..Default::default()
    };
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
        let published = published_count(&edge, &p.gateway_cfg.nats.stream).await;
        let delivered = stream_count(&cloud, &p.ingest_cfg.nats.stream).await;
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
    // The summary: let what was published arrive (bounded), then say where everything stands.
    eprintln!();
    let published = published_count(&edge, &p.gateway_cfg.nats.stream).await;
    let drained = tokio::time::timeout(DRAIN_WAIT, async {
        while stream_count(&cloud, &p.ingest_cfg.nats.stream).await < published {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .is_ok();
    let delivered = stream_count(&cloud, &p.ingest_cfg.nats.stream).await;
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
    eprintln!("stopping; every process and temp dir is removed.");
    drop(p);
    Ok(())
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
