//! Consuming the edge stream: bind the durable pull consumer (creating stream and consumer
//! when allowed), pull messages into batches, hand each full batch to a delivery task once a
//! send slot is free (backpressure), and watch for a consumer that stalls.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Ctx;
use super::batch::Batcher;
use super::concurrency::Slots;
use super::deliver::deliver;
use super::settle::{self, Edge, SETTLE_TIMEOUT, Settle};
use crate::config::GatewayConfig;
use crate::wire;

/// Most messages asked for in one pull request: larger batches are made of several pulls
/// (bounds what one pull buffers in the client).
const MAX_PULL: usize = 1000;

/// Most bytes one pull request asks for: four batches (`batch.max_bytes`), and never less than
/// the largest message the edge server accepts plus room for its subject and headers (a pull
/// limited below one message's size would never deliver it). The client keeps at most 1.5
/// pulls outstanding, so this bounds what the gateway buffers ahead of its batches whatever
/// the message size: before, 1.5 × 500 messages, 48 MiB of 64 KiB messages (gateway peak RSS
/// 101–123 MiB in `bench --backlog 8000 --size 65536`, 40–55 MiB with this). One batch per
/// pull bounded it more, at 0.64–0.83× the drain rate (BENCHMARKS.md, "Memory").
pub(super) fn pull_max_bytes(batch_max_bytes: usize, max_payload: usize) -> usize {
    batch_max_bytes
        .saturating_mul(PULL_BATCHES)
        .max(max_payload.saturating_add(64 << 10))
}

/// Batches' worth of bytes one pull request asks for at most.
const PULL_BATCHES: usize = 4;

/// How often the pump checks that a consumer with pending messages is delivering them.
pub(super) const STALL_CHECK: Duration = Duration::from_secs(10);

/// Why consuming stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum PumpError {
    /// The server says messages are pending but delivers none. Seen with nats-server 2.9 after an
    /// edge stream was recreated while a gateway recreated it too (recreating the consumer does
    /// not cure it; the stream needs an operator). Reported loudly, and /readyz says so.
    #[error(
        "the edge consumer has {pending} messages pending but delivered none for {idle:?} (nats-server stuck after a stream recreate?); check the edge stream"
    )]
    Stalled { pending: u64, idle: Duration },
    /// The pull subscription could not be opened.
    #[error("opening the pull subscription: {0}")]
    Subscribe(#[from] jetstream::consumer::StreamError),
    /// The pull subscription failed (other than a passing pull hiccup).
    #[error("pulling from the edge consumer: {0}")]
    Pull(#[from] jetstream::consumer::pull::MessagesError),
    /// The client ended the subscription.
    #[error("message stream ended")]
    Ended,
    /// A cumulative-ack consumer's reader stopped (`cumulative`): a missed delivery (the
    /// frontier must not pass it, so the bind ends and the next one resets the consumer to its
    /// ack floor) or the end of its subscription.
    #[error(transparent)]
    Reader(#[from] super::cumulative::Stop),
}

mod binding;
#[cfg(test)]
pub(super) use binding::BindError;
pub(super) use binding::{Bound, bind};
pub use binding::{create_dead_letter_stream, stream_config};

/// Builds message ids (docs/design.md §2, "Stable ids"): `wire::message_id`'s format, with
/// everything but the sequence written once per bind rather than per message.
pub struct IdMaker {
    /// `<platform>.<stream>.<incarnation>.`
    prefix: String,
}

impl IdMaker {
    pub fn new(platform: &str, stream: &str, incarnation: i128) -> IdMaker {
        let mut prefix = wire::message_id(platform, stream, incarnation, 0);
        prefix.truncate(prefix.len() - 1);
        IdMaker { prefix }
    }

    pub fn id(&self, sequence: u64) -> String {
        let mut id = String::with_capacity(self.prefix.len() + 20);
        id.push_str(&self.prefix);
        wire::push_unsigned(&mut id, sequence);
        id
    }
}

/// Converts an edge message for the wire. Headers in the ingest's namespaces
/// ([`wire::is_reserved_header`]) are not forwarded.
fn to_wire<H: Edge>(ids: &IdMaker, h: &H) -> Result<wire::Message, String> {
    let m = h.message();
    let (stream_sequence, published) = h.meta()?;
    // The ingest refuses what it cannot map under the platform's prefix; find out here, for
    // this message alone.
    wire::validate_subject(&m.subject).map_err(|e| e.to_string())?;
    let mut out = wire::Message {
        id: ids.id(stream_sequence),
        subject: m.subject.to_string(),
        payload: m.payload.clone(),
        headers: Default::default(),
        time_unix_nano: published,
        multi_headers: Vec::new(),
    };
    if let Some(h) = &m.headers {
        out.set_headers(
            h.iter()
                .map(|(name, values)| {
                    let name: &str = name.as_ref();
                    (name, values.iter().map(|v| v.as_str()).collect())
                })
                // Edge `Nats-*` are the edge JetStream's own control headers; `Uplink-*` are
                // stamped by the ingest (an edge copy of them would only be refused there).
                .filter(|(name, _)| !wire::is_reserved_header(name)),
        );
    }
    Ok(out)
}

/// The explicit-ack consumer's deliveries: pulled, a passing pull hiccup logged and skipped.
pub(super) async fn pulled(
    consumer: &PullConsumer,
    ctx: &Ctx,
) -> Result<
    impl futures_util::Stream<Item = Result<jetstream::Message, PumpError>> + Unpin,
    PumpError,
> {
    let cfg = &ctx.cfg;
    let messages = consumer
        .stream()
        .max_messages_per_batch(cfg.batch.max_messages.min(MAX_PULL))
        .max_bytes_per_batch(pull_max_bytes(
            cfg.batch.max_bytes,
            ctx.edge.server_info().max_payload,
        ))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    Ok(Box::pin(messages.filter_map(|next| async move {
        use async_nats::jetstream::consumer::pull::MessagesErrorKind as K;
        match next {
            Ok(m) => Some(Ok(m)),
            Err(e) if e.kind() == K::Pull => {
                tracing::warn!(error = %e, "pull consumer hiccup; continuing");
                None
            }
            Err(e) => Some(Err(e.into())),
        }
    })))
}

/// Takes delivered messages into batches and dispatches each to a delivery task, at most
/// `forward.max_in_flight` at once, or fewer (`forward.concurrency`: the adaptive limit);
/// waiting for a slot stops the taking: backpressure. `watchdog`: the pull consumer to ask
/// when nothing arrives for a while (nats-server 2.9's stuck consumer).
#[allow(clippy::too_many_arguments)]
pub(super) async fn pump<H: Edge>(
    mut messages: impl futures_util::Stream<Item = Result<H, PumpError>> + Unpin,
    watchdog: Option<&PullConsumer>,
    ids: &IdMaker,
    ctx: &Arc<Ctx>,
    slots: &Arc<Slots>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), PumpError>
where
    Vec<H>: Settle,
{
    let cfg = &ctx.cfg;
    let mut check =
        tokio::time::interval_at(tokio::time::Instant::now() + STALL_CHECK, STALL_CHECK);
    let mut received_since_check = false;
    let mut strikes = 0;
    let mut batcher: Batcher<H> = Batcher::new(cfg.batch.max_messages, cfg.batch.max_bytes);
    // One timer for the linger, moved only when the deadline moves: a new `sleep_until` per
    // message registered and removed a timer per message (5 % of the gateway in a drain).
    let linger = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(linger);
    let mut armed = None;
    loop {
        let deadline = batcher.deadline(cfg.batch.linger);
        if deadline != armed {
            if let Some(d) = deadline {
                linger.as_mut().reset(d);
            }
            armed = deadline;
        }
        // Adaptive linger: a partial batch leaves as soon as a send slot is free and no further
        // message is ready — the lowest-priority arm below, reached only when the stream (polled
        // first, then once more after a yield so the client's reader can hand over what already
        // arrived) had nothing. With every slot busy the batch keeps filling as before.
        let idle = cfg.batch.adaptive && batcher.send_when_idle(slots.available());
        let full = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            () = &mut linger, if deadline.is_some() => true,
            _ = check.tick(), if watchdog.is_some() => {
                if std::mem::take(&mut received_since_check) {
                    strikes = 0;
                } else if let Some(pending) = stalled(watchdog.expect("checked"), cfg, slots).await {
                    strikes += 1;
                    if strikes >= 2 {
                        flush(&mut batcher, ctx, slots, tracker, shutdown).await;
                        return Err(PumpError::Stalled { pending, idle: STALL_CHECK * 2 });
                    }
                } else {
                    strikes = 0;
                }
                false
            }
            next = messages.next() => match next {
                Some(Ok(h)) => match to_wire(ids, &h) {
                    Ok(w) => {
                        if !received_since_check {
                            received_since_check = true;
                            ctx.stalled.store(false, Ordering::Release);
                        }
                        batcher.push(h, w)
                    }
                    Err(e) => {
                        let m = h.message();
                        tracing::error!(error = %e, subject = %m.subject, dead_letter = %cfg.forward.dead_letter, "message cannot be forwarded; terminating it");
                        metrics::counter!("uplink_gateway_messages_total", "result" => "rejected").increment(1);
                        settle::refused(&vec![h], true, &cfg.forward.dead_letter, None, &e, cfg.retry.max_backoff).await;
                        false
                    }
                },
                Some(Err(e)) => {
                    flush(&mut batcher, ctx, slots, tracker, shutdown).await;
                    return Err(e);
                }
                None => {
                    flush(&mut batcher, ctx, slots, tracker, shutdown).await;
                    return Err(PumpError::Ended);
                }
            },
            _ = tokio::task::yield_now(), if idle => {
                metrics::counter!("uplink_gateway_idle_flushes_total").increment(1);
                true
            }
        };
        if full {
            flush(&mut batcher, ctx, slots, tracker, shutdown).await;
        }
    }
    // Shutdown: what was taken but not sent goes back at once — the batch being built and
    // what the pull already delivered into the client's buffer (left there it would wait out
    // ack_wait before JetStream redelivers it).
    let (mut left, _) = batcher.take();
    if H::GIVEN_BACK {
        let drain = async {
            while let Ok(Some(Ok(m))) = tokio::time::timeout(PREFETCH_QUIET, messages.next()).await
            {
                left.push(m);
            }
        };
        let _ = tokio::time::timeout(SETTLE_TIMEOUT, drain).await;
    }
    // Stop taking deliveries before giving messages back, or JetStream hands them straight
    // back to this subscription, which is about to go away.
    drop(messages);
    if !left.is_empty() {
        tracing::info!(
            messages = left.len(),
            "shutdown: returning undispatched messages to JetStream"
        );
    }
    settle::give_back(&left).await;
    Ok(())
}

/// `Some(pending)` when the consumer has messages to deliver and room to deliver them (below
/// max_ack_pending, a send slot free) — called when it delivered nothing for a while.
async fn stalled(consumer: &PullConsumer, cfg: &GatewayConfig, slots: &Slots) -> Option<u64> {
    let info = tokio::time::timeout(Duration::from_secs(2), consumer.get_info())
        .await
        .ok()?
        .ok()?;
    let room = (info.num_ack_pending as i64) < cfg.nats.max_ack_pending && slots.available() > 0;
    (info.num_pending > 0 && room).then_some(info.num_pending)
}

/// At shutdown, the client's buffer of pulled messages counts as drained once nothing more
/// arrived for this long.
const PREFETCH_QUIET: Duration = Duration::from_millis(50);

/// Sends the current batch (if any) to a delivery task once a slot is free. While it waits,
/// its messages are kept alive so JetStream does not redeliver them meanwhile; at shutdown
/// they are given back.
async fn flush<H: Edge>(
    batcher: &mut Batcher<H>,
    ctx: &Arc<Ctx>,
    slots: &Arc<Slots>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) where
    Vec<H>: Settle,
{
    if batcher.is_empty() {
        return;
    }
    let (msgs, batch) = batcher.take();
    let every = ctx.cfg.nats.ack_wait / 3;
    let Some(permit) = wait_for_slot(&msgs, every, slots.acquire(), shutdown).await else {
        return;
    };
    metrics::counter!("uplink_gateway_batches_total").increment(1);
    metrics::histogram!("uplink_gateway_batch_messages").record(msgs.len() as f64);
    let ctx = ctx.clone();
    tracker.spawn(async move {
        metrics::gauge!("uplink_gateway_in_flight_batches").increment(1.0);
        deliver(ctx.deliverer.clone(), msgs, batch).await;
        metrics::gauge!("uplink_gateway_in_flight_batches").decrement(1.0);
        drop(permit);
    });
}

/// Waits for `slot` while `msgs` are kept alive every `every`; `None` once `shutdown` came
/// first, the messages given back.
async fn wait_for_slot<S: Settle, P>(
    msgs: &S,
    every: Duration,
    slot: impl Future<Output = P>,
    shutdown: &CancellationToken,
) -> Option<P> {
    tokio::select! {
        biased;
        p = settle::keeping_alive(msgs, every, slot) => Some(p),
        _ = shutdown.cancelled() => {
            settle::give_back(msgs).await;
            None
        }
    }
}

#[cfg(test)]
mod tests;
