//! `uplink bench --cloud-cluster N`: the cloud on an N-node JetStream cluster (stream at
//! `min(N, 3)` replicas, the ingest given every node's URL), and two faults while the
//! messages flow: a third of the way in the stream leader is SIGKILLed (restarted once a new
//! leader is elected), two thirds in the follower the ingest is connected to. Measured on the
//! side: how long the election took (kill until the stream names a new leader) and how long
//! the pipeline stalled (the longest time without a PubAck at the ingest from the kill on),
//! next to `timeouts.publish` — what every batch in flight would otherwise wait.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;

use crate::testbed::cluster::Cluster;
use crate::testbed::pipeline::Pipeline;
use uplink::telemetry::scrape_sum;

/// The cluster run: its shape and what each fault cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterFigures {
    pub nodes: usize,
    pub replicas: usize,
    /// The ingest's `timeouts.publish`: what a batch in flight would wait without fast failure.
    pub publish_timeout_ms: f64,
    pub faults: Vec<NodeFault>,
}

/// One node killed and what it cost.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeFault {
    /// What was injected, in words.
    pub fault: String,
    /// Messages the ingest had persisted when the node was killed.
    pub killed_at_messages: u64,
    /// From the SIGKILL until the stream had a leader again (0 when it kept its leader).
    pub election_ms: f64,
    /// Longest time without a PubAck at the ingest, from the SIGKILL on.
    pub stall_ms: f64,
    /// Requests the ingest answered 503 (+ Retry-After) meanwhile.
    pub ingest_503: f64,
    /// The killed node was restarted and its replica caught up.
    pub rejoined: bool,
}

/// Which node to kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// The stream's leader: an election while publishing.
    Leader,
    /// The follower the ingest is connected to: the connection moves, the stream keeps its
    /// leader. Publishes in flight on the lost connection are what is measured.
    IngestsFollower,
}

/// Messages the ingest has persisted (accepted or recognized as duplicates).
async fn persisted(p: &Pipeline) -> Option<f64> {
    let m = p.ingest_metrics().await.ok()?;
    Some(scrape_sum(&m, "uplink_ingest_messages_total"))
}

/// A third of the way in, SIGKILLs the stream leader; two thirds in, the follower the ingest
/// is connected to. Each is restarted once the stream has a leader again.
pub async fn kill_nodes(
    p: &mut Pipeline,
    cloud: &jetstream::Context,
    total: u64,
) -> anyhow::Result<ClusterFigures> {
    let mut faults = Vec::new();
    for (at, target) in [
        (total / 3, Target::Leader),
        (total * 2 / 3, Target::IngestsFollower),
    ] {
        faults.push(kill_one(p, cloud, at, total, target).await?);
    }
    Ok(ClusterFigures {
        nodes: p.cluster.as_ref().map_or(0, |c| c.nodes.len()),
        replicas: p.ingest_cfg.nats.replicas,
        publish_timeout_ms: p.ingest_cfg.timeouts.publish.as_secs_f64() * 1000.0,
        faults,
    })
}

/// The node the ingest is connected to, made a follower (the leader steps down if it is it).
async fn ingests_follower(
    p: &Pipeline,
    cloud: &jetstream::Context,
    client: &async_nats::Client,
) -> anyhow::Result<usize> {
    let stream = &p.ingest_cfg.nats.stream;
    let c = p.cluster.as_ref().context("no cloud cluster")?;
    for _ in 0..5 {
        let leader = c
            .wait_stream_healthy(cloud, stream, Duration::from_secs(30))
            .await?;
        let node = c
            .node_of_client("uplink-ingest")
            .await
            .context("the ingest is not connected to any node")?;
        if node != leader {
            return Ok(node);
        }
        Cluster::step_down(client, stream).await?;
    }
    anyhow::bail!("the stream leader stayed on the ingest's node through 5 step-downs")
}

async fn kill_one(
    p: &mut Pipeline,
    cloud: &jetstream::Context,
    at: u64,
    total: u64,
    target: Target,
) -> anyhow::Result<NodeFault> {
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
    let victim = match target {
        Target::Leader => {
            p.cluster
                .as_ref()
                .context("no cloud cluster")?
                .wait_stream_healthy(cloud, &stream, Duration::from_secs(30))
                .await?
        }
        Target::IngestsFollower => ingests_follower(p, cloud, &cloud.client()).await?,
    };
    let c = p.cluster.as_mut().context("no cloud cluster")?;
    let killed = c.nodes[victim].name.clone();
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
                    samples.push((
                        Instant::now(),
                        scrape_sum(&m, "uplink_ingest_messages_total"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        }
    });

    let c = p.cluster.as_mut().context("no cloud cluster")?;
    let killed_at = Instant::now();
    c.kill(victim);
    let killed_at_messages = persisted(p).await.unwrap_or(0.0) as u64;
    let c = p.cluster.as_ref().context("no cloud cluster")?;
    // Asked with a short timeout: the stream does not answer while it has no leader.
    let election = loop {
        let h = c
            .stream_health(cloud, &stream, Duration::from_millis(250))
            .await;
        if matches!(h, Ok(ref h) if h.leader.is_some_and(|l| l != victim)) {
            break killed_at.elapsed();
        }
        anyhow::ensure!(
            killed_at.elapsed() < Duration::from_secs(60),
            "no leader of {stream} within 60 s of killing {killed}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let c = p.cluster.as_mut().context("no cloud cluster")?;
    c.restart(victim).await?;
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
    Ok(NodeFault {
        fault: match target {
            Target::Leader => format!(
                "SIGKILL of the stream leader {killed} (an election while publishing), restarted once a new leader was elected"
            ),
            Target::IngestsFollower => format!(
                "SIGKILL of {killed}, a follower the ingest was connected to (the connection moves), restarted"
            ),
        },
        killed_at_messages,
        election_ms: if target == Target::Leader {
            election.as_secs_f64() * 1000.0
        } else {
            0.0
        },
        stall_ms: longest_gap(&samples, killed_at).as_secs_f64() * 1000.0,
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
