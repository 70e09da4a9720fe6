//! Each fault of the chaos bench injected and undone, by family: processes stopped and
//! started, the loopback proxy's faults, the cloud store full and certificates reissued.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;

use super::Fault;
use crate::testbed::pipeline::Pipeline;

/// Waits until a restarted node's replica of the cloud stream caught up, so the next fault
/// does not take a quorum that was never whole again.
async fn rejoin(
    c: &crate::testbed::cluster::Cluster,
    cloud: &jetstream::Context,
    stream: &str,
    problems: &mut Vec<String>,
) {
    if let Err(e) = c
        .wait_stream_healthy(cloud, stream, Duration::from_secs(60))
        .await
    {
        problems.push(format!("cloud cluster: {e}"));
    }
}

/// How long a fault is held (a process down, a proxy fault on).
fn hold(rng: &mut fastrand::Rng, from_ms: u64, to_ms: u64) -> Duration {
    Duration::from_millis(rng.u64(from_ms..to_ms))
}

fn fault_proxy(p: &Pipeline) -> anyhow::Result<&crate::testbed::fault::FaultProxy> {
    p.fault.as_ref().context("the pipeline has no fault proxy")
}

async fn metric(up: &Option<crate::testbed::Uplink>, series: &str) -> f64 {
    match up {
        Some(u) => uplink::telemetry::scrape_sum(&u.metrics().await.unwrap_or_default(), series),
        None => 0.0,
    }
}

/// Injects one fault and undoes it; returns its evidence figure. The fault's hold is a sleep:
/// the outage itself is what is being measured.
pub(super) async fn inject(
    f: Fault,
    p: &mut Pipeline,
    rng: &mut fastrand::Rng,
    cloud: &jetstream::Context,
    problems: &mut Vec<String>,
) -> anyhow::Result<f64> {
    use Fault::*;
    match f {
        KillGateway | TermGateway | KillIngest | TermIngest | RestartEdgeNats
        | RestartCloudNats | KillCloudNode => process_fault(f, p, rng, cloud, problems).await,
        Stall | Reset | Latency | Loss => proxy_fault(f, p, rng).await,
        DiskFullCloud | CertRotate => store_or_cert_fault(f, p, rng, cloud, problems).await,
    }
}

/// A process stopped (killed, or terminated with a grace) and started again: the gateway, the
/// ingest, the edge nats-server, the cloud's (or one node of its cluster).
async fn process_fault(
    f: Fault,
    p: &mut Pipeline,
    rng: &mut fastrand::Rng,
    cloud: &jetstream::Context,
    problems: &mut Vec<String>,
) -> anyhow::Result<f64> {
    const GRACE: Duration = Duration::from_secs(30);
    let mut evidence = 1.0;
    match f {
        Fault::KillGateway => {
            if let Some(g) = p.gateway.as_mut() {
                g.proc.kill();
            }
            tokio::time::sleep(hold(rng, 200, 1_500)).await;
            p.start_gateway().await?;
        }
        Fault::TermGateway => {
            if let Some(g) = p.gateway.as_mut() {
                let code = g.proc.terminate(GRACE).await;
                if code != Some(0) {
                    problems.push(format!("term-gateway: exit {code:?}"));
                }
            }
            tokio::time::sleep(hold(rng, 200, 1_500)).await;
            p.start_gateway().await?;
        }
        Fault::KillIngest => {
            if let Some(i) = p.ingest.as_mut() {
                i.proc.kill();
            }
            tokio::time::sleep(hold(rng, 200, 1_500)).await;
            p.start_ingest().await?;
        }
        Fault::TermIngest => {
            if let Some(i) = p.ingest.as_mut() {
                let code = i.proc.terminate(GRACE).await;
                if code != Some(0) {
                    problems.push(format!("term-ingest: exit {code:?}"));
                }
            }
            tokio::time::sleep(hold(rng, 200, 1_500)).await;
            p.start_ingest().await?;
        }
        Fault::RestartEdgeNats => {
            let code = p.stop_edge(Duration::from_secs(10)).await;
            if code.is_none() {
                problems.push("restart-edge-nats: SIGTERM did not stop it within 10 s".into());
            }
            tokio::time::sleep(hold(rng, 200, 1_500)).await;
            p.start_edge().await?;
        }
        Fault::RestartCloudNats if p.cluster.is_some() => {
            let c = p.cluster.as_mut().expect("checked");
            let i = rng.usize(..c.nodes.len());
            if c.terminate(i, Duration::from_secs(10)).await.is_none() {
                problems.push(format!(
                    "restart-cloud-nats: SIGTERM did not stop {} within 10 s",
                    c.nodes[i].name
                ));
            }
            tokio::time::sleep(hold(rng, 200, 1_500)).await;
            c.restart(i).await?;
            rejoin(c, cloud, &p.ingest_cfg.nats.stream, problems).await;
        }
        Fault::KillCloudNode if p.cluster.is_some() => {
            // A real node of the cluster: any of them, the stream leader included.
            // Evidence: how many of the kills hit the stream leader.
            let stream = p.ingest_cfg.nats.stream.clone();
            let c = p.cluster.as_mut().expect("checked");
            let i = rng.usize(..c.nodes.len());
            let leader = c
                .stream_health(cloud, &stream, Duration::from_secs(1))
                .await
                .ok()
                .and_then(|h| h.leader);
            evidence = if leader == Some(i) { 1.0 } else { 0.0 };
            c.kill(i);
            tokio::time::sleep(hold(rng, 200, 1_500)).await;
            c.restart(i).await?;
            rejoin(c, cloud, &stream, problems).await;
        }
        Fault::RestartCloudNats => {
            let code = p.terminate_cloud(Duration::from_secs(10)).await;
            if code.is_none() {
                problems.push("restart-cloud-nats: SIGTERM did not stop it within 10 s".into());
            }
            tokio::time::sleep(hold(rng, 200, 1_500)).await;
            p.start_cloud().await?;
        }
        Fault::KillCloudNode => {
            p.stop_cloud();
            tokio::time::sleep(hold(rng, 200, 1_500)).await;
            p.start_cloud().await?;
        }
        _ => unreachable!("{f:?} is not a process fault"),
    }
    Ok(evidence)
}

/// A fault of the loopback proxy between the gateway and the ingest: stall, reset, latency, loss.
async fn proxy_fault(f: Fault, p: &mut Pipeline, rng: &mut fastrand::Rng) -> anyhow::Result<f64> {
    let mut evidence = 1.0;
    match f {
        Fault::Stall => {
            let proxy = fault_proxy(p)?;
            proxy.set_stalled(true);
            tokio::time::sleep(hold(rng, 1_000, 4_000)).await;
            proxy.set_stalled(false);
        }
        Fault::Reset => {
            let proxy = fault_proxy(p)?;
            let before = proxy
                .stats
                .resets
                .load(std::sync::atomic::Ordering::Relaxed);
            proxy.reset_existing();
            // The resets happen on the connections' own tasks: wait for them to be counted.
            let deadline = Instant::now() + Duration::from_secs(5);
            while proxy
                .stats
                .resets
                .load(std::sync::atomic::Ordering::Relaxed)
                == before
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            evidence = (proxy
                .stats
                .resets
                .load(std::sync::atomic::Ordering::Relaxed)
                - before) as f64;
        }
        Fault::Latency => {
            let proxy = fault_proxy(p)?;
            proxy.set_latency(Duration::from_millis(rng.u64(50..300)));
            tokio::time::sleep(hold(rng, 1_000, 4_000)).await;
            proxy.set_latency(Duration::ZERO);
        }
        Fault::Loss => {
            let proxy = fault_proxy(p)?;
            let before = proxy
                .stats
                .closes_after_budget
                .load(std::sync::atomic::Ordering::Relaxed);
            proxy.set_close_after(Some(rng.u64(1024..64 * 1024)));
            tokio::time::sleep(hold(rng, 1_000, 4_000)).await;
            // On until at least one connection was cut (a slow load may take a while to use
            // up the budget), at most 10 s more.
            let deadline = Instant::now() + Duration::from_secs(10);
            while proxy
                .stats
                .closes_after_budget
                .load(std::sync::atomic::Ordering::Relaxed)
                == before
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            proxy.set_close_after(None);
            evidence = (proxy
                .stats
                .closes_after_budget
                .load(std::sync::atomic::Ordering::Relaxed)
                - before) as f64;
        }
        _ => unreachable!("{f:?} is not a proxy fault"),
    }
    Ok(evidence)
}

/// Messages the cloud stream still takes once the disk-full fault set its limit: one full
/// gateway batch (`batch.max_messages`' default), what may land between reading the stream's
/// state and the limit taking effect.
const FULL_AFTER: i64 = 2000;

/// The cloud store full for a while, or every certificate reissued under load.
async fn store_or_cert_fault(
    f: Fault,
    p: &mut Pipeline,
    rng: &mut fastrand::Rng,
    cloud: &jetstream::Context,
    problems: &mut Vec<String>,
) -> anyhow::Result<f64> {
    let mut evidence;
    match f {
        Fault::DiskFullCloud => {
            let refused = "uplink_ingest_requests_total{status=\"503\"}";
            let before = metric(&p.ingest, refused).await;
            let name = p.ingest_cfg.nats.stream.clone();
            let mut stream = cloud.get_stream(&name).await?;
            let info = stream.info().await?.clone();
            let mut full = info.config.clone();
            // Room for a moment of load more (one full batch), then publishes are refused by the
            // store. Never a limit below what the stream holds by the time the update lands:
            // nats-server enforces a lowered limit by deleting the oldest messages, discard=new
            // or not (the first version of this fault, at +4 KiB, "lost" the run's first
            // messages that way). A message-count limit, not a byte one: before 2.10.5 a
            // discard=new stream admits a message by its payload and headers but counts its
            // whole record, so the message that fills a `max_bytes` stream tips it over and the
            // server deletes the oldest one to make room (v2.9.10 `server/filestore.go`
            // `storeRawMsg`; fixed by nats-server bf8ac377f, "Fix DiscardNew exceed bytes
            // calculation"). The message count is checked exactly on every version.
            full.max_messages = info.state.messages as i64 + FULL_AFTER;
            full.discard = jetstream::stream::DiscardPolicy::New;
            cloud.update_stream(full).await?;
            let after = stream.info().await?.state.first_sequence;
            if after != info.state.first_sequence {
                problems.push(format!(
                    "disk-full-cloud: the limit update deleted messages (first sequence {} → {after})",
                    info.state.first_sequence
                ));
            }
            // Full until the ingest said so (503), and a little longer.
            let deadline = Instant::now() + Duration::from_secs(10);
            while metric(&p.ingest, refused).await <= before && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(hold(rng, 500, 2_000)).await;
            cloud.update_stream(info.config).await?;
            evidence = metric(&p.ingest, refused).await - before;
        }
        Fault::CertRotate => {
            let reloaded = "uplink_tls_reloads_total{result=\"ok\"}";
            let before = metric(&p.gateway, reloaded).await + metric(&p.ingest, reloaded).await;
            uplink::tls::dev_reissue(&p.pki().dir, std::slice::from_ref(&p.platform))?;
            // Pairs are looked at on handshakes at most once per CHECK_EVERY: let that pass,
            // then make both sides handshake again with the new pairs.
            tokio::time::sleep(uplink::tls::RELOAD_CHECK_EVERY + Duration::from_millis(100)).await;
            fault_proxy(p)?.reset_existing();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let now = metric(&p.gateway, reloaded).await + metric(&p.ingest, reloaded).await;
                evidence = now - before;
                if evidence >= 2.0 || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        _ => unreachable!("{f:?} is not a store or certificate fault"),
    }
    Ok(evidence)
}
