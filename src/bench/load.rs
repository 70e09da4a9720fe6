//! The steady publisher of the load runs (`--chaos`, the soak): a fixed rate into the edge
//! stream that rides out edge restarts, each message published until the edge acknowledged it
//! once (`Nats-Msg-Id`), so what was sent is known exactly.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::testbed::verify::{self, Sent, Workload};

/// Publishes `w` at its rate until `stop`, riding out edge restarts: every message carries a
/// `Nats-Msg-Id` (the edge stream's duplicate window makes a retried publish land once) and is
/// published again until the edge acknowledges it, so `Sent` holds each message's one edge
/// sequence. Acks are awaited concurrently and failures retried together, so an edge restart
/// costs one ack timeout for the whole window, not one per message.
pub async fn steady_load(
    js: jetstream::Context,
    w: Workload,
    stop: CancellationToken,
) -> anyhow::Result<Vec<Sent>> {
    use futures_util::StreamExt as _;
    use futures_util::stream::FuturesUnordered;
    /// Messages published and not yet acknowledged, at most.
    const WINDOW: usize = 4096;
    /// How long a message may go unacknowledged, retries included, before the run fails.
    const GIVE_UP: Duration = Duration::from_secs(120);
    let rate = w.rate.unwrap_or(1_000.0);
    let started = tokio::time::Instant::now();
    let mut sent = Vec::new();
    type Publish = futures_util::future::BoxFuture<
        'static,
        (usize, Instant, Option<jetstream::publish::PublishAck>),
    >;
    let mut acks: FuturesUnordered<Publish> = FuturesUnordered::new();
    // Messages whose publish or ack failed, with when they were first published.
    let mut retry: std::collections::VecDeque<(usize, Instant)> = Default::default();
    let mut retry_tick = tokio::time::interval(Duration::from_millis(100));
    let mut i = 0usize;
    let mut stopped = false;
    let publish = |i: usize, first: Instant| -> Publish {
        Box::pin(publish_one(js.clone(), w.clone(), i, first))
    };
    loop {
        if stopped && acks.is_empty() && retry.is_empty() {
            break;
        }
        let due = started + Duration::from_secs_f64(i as f64 / rate);
        tokio::select! {
            biased;
            Some((n, first, r)) = acks.next(), if !acks.is_empty() => match r {
                Some(a) => {
                    let (subject, payload, headers) = verify::message(&w, n);
                    sent.push(Sent {
                        sequence: a.sequence,
                        subject,
                        hash: verify::payload_hash(&payload),
                        len: payload.len(),
                        headers,
                    });
                }
                None => {
                    if first.elapsed() > GIVE_UP {
                        anyhow::bail!("the edge did not acknowledge message {n} within {GIVE_UP:?}");
                    }
                    retry.push_back((n, first));
                }
            },
            _ = stop.cancelled(), if !stopped => stopped = true,
            // The edge is back (or still restarting): publish the failed ones again together.
            _ = retry_tick.tick(), if !retry.is_empty() => {
                while acks.len() < WINDOW && let Some((n, first)) = retry.pop_front() {
                    acks.push(publish(n, first));
                }
            }
            _ = tokio::time::sleep_until(due), if !stopped && acks.len() + retry.len() < WINDOW => {
                acks.push(publish(i, Instant::now()));
                i += 1;
            }
        }
    }
    Ok(sent)
}

type AckFuture = jetstream::context::PublishAckFuture;

/// Publishes message `i` and waits for its ack: `None` if either failed.
async fn publish_one(
    js: jetstream::Context,
    w: Workload,
    i: usize,
    first: Instant,
) -> (usize, Instant, Option<jetstream::publish::PublishAck>) {
    let ack = match send(&js, &w, i).await {
        Some(ack) => ack.await.ok(),
        None => None,
    };
    (i, first, ack)
}

async fn send(js: &jetstream::Context, w: &Workload, i: usize) -> Option<AckFuture> {
    let (subject, payload, headers) = verify::message(w, i);
    let mut map = async_nats::HeaderMap::new();
    for (k, v) in &headers {
        map.append(k.as_str(), v.as_str());
    }
    js.send_publish(
        subject,
        jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(map)
            .message_id(format!("bench-{i}")),
    )
    .await
    .ok()
}
