//! `uplink bench --cloud-cluster N`: the cloud on an N-node JetStream cluster (stream at
//! `min(N, 3)` replicas, the ingest given every node's URL), and one fault while the messages
//! flow: the stream leader is SIGKILLed once a third of them reached the cloud, and restarted
//! once a new leader is elected. Measured on the side: how long the election took (kill until
//! the stream names a new leader) and how long the pipeline stalled (the longest time without
//! a PubAck at the ingest from the kill on), next to `timeouts.publish` — what every batch in
//! flight would otherwise wait.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;

use crate::telemetry::scrape_sum;
use crate::testbed::pipeline::Pipeline;

/// What the cluster fault did and cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterFigures {
    pub nodes: usize,
    pub replicas: usize,
    /// What was injected, in words.
    pub fault: String,
    /// Messages the ingest had persisted when the leader was killed.
    pub killed_at_messages: u64,
    /// From the SIGKILL until the stream named a new leader.
    pub election_ms: f64,
    /// Longest time without a PubAck at the ingest, from the SIGKILL on.
    pub stall_ms: f64,
    /// The ingest's `timeouts.publish`, for comparison with the stall.
    pub publish_timeout_ms: f64,
    /// Requests the ingest answered 503 (+ Retry-After) meanwhile.
    pub ingest_503: f64,
    /// The killed node was restarted and its replica caught up.
    pub rejoined: bool,
}

/// Messages the ingest has persisted (accepted or recognized as duplicates).
async fn persisted(p: &Pipeline) -> Option<f64> {
    let m = p.ingest_metrics().await.ok()?;
    Some(scrape_sum(&m, "uplink_ingest_messages_total"))
}

/// Waits until `at` messages are persisted, kills the stream leader, measures, restarts it.
pub async fn kill_the_leader(
    p: &mut Pipeline,
    cloud: &jetstream::Context,
    at: u64,
    total: u64,
) -> anyhow::Result<ClusterFigures> {
    let stream = p.ingest_cfg.nats.stream.clone();
    let admin = p.ingest.as_ref().context("ingest not running")?.admin;
    let deadline = Instant::now() + Duration::from_secs(120);
    while persisted(p).await.unwrap_or(0.0) < at as f64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the ingest did not persist {at} messages within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = p.cluster.as_mut().context("no cloud cluster")?;
    let leader = c
        .wait_stream_healthy(cloud, &stream, Duration::from_secs(30))
        .await?;
    let killed = c.nodes[leader].name.clone();
    let before_503 = scrape_sum(
        &p.ingest_metrics().await?,
        "uplink_ingest_requests_total{status=\"503\"}",
    );

    // Samples of the ingest's persisted count, every 20 ms, until told to stop.
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut samples = Vec::new();
            while !stop.is_cancelled() {
                if let Ok((200, m)) = crate::testbed::http_get(admin, "/metrics").await {
                    samples.push((Instant::now(), scrape_sum(&m, "uplink_ingest_messages_total")));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        }
    });

    let c = p.cluster.as_mut().context("no cloud cluster")?;
    let killed_at = Instant::now();
    c.kill(leader);
    let killed_at_messages = persisted(p).await.unwrap_or(0.0) as u64;
    let c = p.cluster.as_ref().context("no cloud cluster")?;
    // Asked with a short timeout: the stream does not answer while it has no leader.
    let election = loop {
        let h = c
            .stream_health(cloud, &stream, Duration::from_millis(250))
            .await;
        if matches!(h, Ok(ref h) if h.leader.is_some_and(|l| l != leader)) {
            break killed_at.elapsed();
        }
        anyhow::ensure!(
            killed_at.elapsed() < Duration::from_secs(60),
            "no new leader of {stream} within 60 s of killing {killed}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let c = p.cluster.as_mut().context("no cloud cluster")?;
    c.restart(leader).await?;
    let rejoined = c
        .wait_stream_healthy(cloud, &stream, Duration::from_secs(60))
        .await
        .is_ok();
    // Long enough after the restart to see deliveries flowing, unless all is there.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle && persisted(p).await.unwrap_or(0.0) < total as f64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let samples = sampler.await.context("the sampler")?;
    let after_503 = scrape_sum(
        &p.ingest_metrics().await?,
        "uplink_ingest_requests_total{status=\"503\"}",
    );
    Ok(ClusterFigures {
        nodes: p.cluster.as_ref().map_or(0, |c| c.nodes.len()),
        replicas: p.ingest_cfg.nats.replicas,
        fault: format!(
            "SIGKILL of the stream leader {killed} once {at} messages were in the cloud, restarted once a new leader was elected"
        ),
        killed_at_messages,
        election_ms: election.as_secs_f64() * 1000.0,
        stall_ms: longest_gap(&samples, killed_at).as_secs_f64() * 1000.0,
        publish_timeout_ms: p.ingest_cfg.timeouts.publish.as_secs_f64() * 1000.0,
        ingest_503: after_503 - before_503,
        rejoined,
    })
}

/// The longest time between two increases of a sampled count, from `from` on (a gap still
/// open at the end counts only if the count never grew again: nothing was left to do).
fn longest_gap(samples: &[(Instant, f64)], from: Instant) -> Duration {
    let mut last_value = samples
        .iter()
        .take_while(|(t, _)| *t <= from)
        .last()
        .map_or(0.0, |s| s.1);
    let mut last_growth = from;
    let mut longest = Duration::ZERO;
    for &(t, v) in samples.iter().filter(|(t, _)| *t > from) {
        if v > last_value {
            longest = longest.max(t - last_growth);
            last_growth = t;
            last_value = v;
        }
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_is_between_two_increases_after_the_start() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let samples = [
            (at(0), 1.0),
            (at(100), 5.0),
            (at(200), 5.0),
            (at(900), 6.0),
            (at(1000), 7.0),
            (at(5000), 7.0),
        ];
        // From 100 ms: the count stood still until 900 ms; the quiet end is not a stall.
        assert_eq!(longest_gap(&samples, at(100)), Duration::from_millis(800));
        assert_eq!(longest_gap(&samples, at(950)), Duration::from_millis(50));
    }
}
