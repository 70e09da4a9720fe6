//! The in-run anchor of `uplink bench --anchor`: the same JetStream work as the pipeline — publish
//! into an edge stream, pull + ack from it, publish into a cloud stream with `Nats-Msg-Id` and
//! await the PubAcks — done by one in-process relay with no HTTP, TLS, protobuf or compression.
//! It runs on the same two nats-servers in the same bench run, so `msgs_per_sec / anchor` says
//! how close the whole gateway → ingest path comes to moving the data JetStream-to-JetStream.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer, message::PublishMessage};
use futures_util::StreamExt;

use crate::testbed::verify::{self, Workload};

const EDGE_STREAM: &str = "ANCHOR_EDGE";
const CLOUD_STREAM: &str = "ANCHOR_CLOUD";
/// Batches in flight, as the gateway's default `forward.max_in_flight`.
const IN_FLIGHT: usize = 8;

/// Messages per second of the relay for `w` (publisher concurrent with the relay, clock stopped
/// when the cloud stream holds everything — the same method as the pipeline figure).
pub async fn relay_rate(
    edge: &jetstream::Context,
    cloud: &jetstream::Context,
    w: &Workload,
    batch: usize,
) -> anyhow::Result<f64> {
    let w = Workload {
        subject_prefix: "anchor".into(),
        ..w.clone()
    };
    for (js, name) in [(edge, EDGE_STREAM), (cloud, CLOUD_STREAM)] {
        let _ = js.delete_stream(name).await;
        js.create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec!["anchor.>".into()],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("anchor stream {name}"))?;
    }
    let consumer: consumer::PullConsumer = edge
        .get_stream(EDGE_STREAM)
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("anchor".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?;
    let count = w.count;
    let cloud_js = cloud.clone();
    let relay = tokio::spawn(async move {
        let mut msgs = consumer
            .stream()
            .max_messages_per_batch(batch)
            .messages()
            .await?;
        let mut moved = 0;
        // Up to IN_FLIGHT batches awaiting their cloud PubAcks, like the gateway's in-flight
        // requests: the relay is pipelined, not one batch at a time.
        let mut in_flight = std::collections::VecDeque::new();
        let mut received = 0;
        while moved < count {
            if received < count {
                // A batch: whatever arrives within 20 ms, up to `batch` (the gateway's linger).
                let first = msgs.next().await.context("edge ended")??;
                let mut pending = vec![first];
                let until = tokio::time::Instant::now() + Duration::from_millis(20);
                while pending.len() < batch && received + pending.len() < count {
                    match tokio::time::timeout_at(until, msgs.next()).await {
                        Ok(Some(m)) => pending.push(m?),
                        _ => break,
                    }
                }
                received += pending.len();
                let mut acks = Vec::with_capacity(pending.len());
                for m in &pending {
                    let seq = m
                        .info()
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                        .stream_sequence;
                    let mut p = PublishMessage::build().payload(m.payload.clone());
                    if let Some(h) = &m.headers {
                        p = p.headers(h.clone());
                    }
                    acks.push(
                        cloud_js
                            .send_publish(m.subject.clone(), p.message_id(format!("anchor.{seq}")))
                            .await?,
                    );
                }
                in_flight.push_back((pending, acks));
            }
            if in_flight.len() >= IN_FLIGHT || received >= count {
                let Some((pending, acks)) = in_flight.pop_front() else {
                    break;
                };
                for a in acks {
                    a.await?;
                }
                for m in pending {
                    m.ack_with(AckKind::Ack)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    moved += 1;
                }
            }
        }
        anyhow::Ok(())
    });
    let started = Instant::now();
    verify::publish(edge, &w).await?;
    verify::wait_count(
        cloud,
        CLOUD_STREAM,
        count as u64,
        crate::testbed::pipeline::delivery_budget(count),
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    relay.abort();
    for (js, name) in [(edge, EDGE_STREAM), (cloud, CLOUD_STREAM)] {
        let _ = js.delete_stream(name).await;
    }
    Ok(count as f64 / secs.max(1e-9))
}
