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
use crate::config::{AckMode, GatewayConfig};
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

/// Why the edge stream and its consumer could not be bound (the gateway retries).
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("creating edge stream {stream}: {source}")]
    CreateStream {
        stream: String,
        source: jetstream::context::CreateStreamError,
    },
    #[error("edge stream {stream}: {source}")]
    GetStream {
        stream: String,
        source: jetstream::context::GetStreamError,
    },
    #[error("edge stream {stream}: reading its info: {source}")]
    Info {
        stream: String,
        source: jetstream::stream::InfoError,
    },
    #[error("consumer {consumer} on {stream}: {source}")]
    Consumer {
        consumer: String,
        stream: String,
        source: jetstream::stream::ConsumerError,
    },
    #[error("edge stream {0} was recreated while binding")]
    Recreated(String),
    /// The durable exists with the other ack policy (`nats.ack`): JetStream does not change a
    /// consumer's ack policy, nor a pull consumer into a push one.
    #[error(
        "consumer {consumer} on {stream} acks {has} but nats.ack = \"{wants}\": a consumer keeps the policy it was created with; set nats.consumer to a new name, or delete the old consumer (on a work queue it holds no messages: what it had not acked is delivered to the new one)"
    )]
    AckPolicy {
        consumer: String,
        stream: String,
        has: &'static str,
        wants: &'static str,
    },
    /// A cumulative-ack consumer already has a reader (another gateway): cumulative acks
    /// are for one gateway per consumer.
    #[error(
        "consumer {consumer} on {stream} is already read by another subscriber; with nats.ack = \"cumulative\" each gateway needs its own consumer (or share one with nats.ack = \"explicit\")"
    )]
    Busy { consumer: String, stream: String },
    #[error("resetting consumer {consumer} to its ack floor: {source}")]
    Reset {
        consumer: String,
        source: jetstream::stream::ConsumerResetError,
    },
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
}

impl BindError {
    /// The JetStream API error code behind it, if the server answered with one.
    pub fn code(&self) -> Option<jetstream::ErrorCode> {
        use jetstream::context::CreateStreamErrorKind as C;
        use jetstream::context::GetStreamErrorKind as G;
        use jetstream::stream::ConsumerErrorKind as K;
        match self {
            BindError::CreateStream { source, .. } => match source.kind() {
                C::JetStream(e) => Some(e.error_code()),
                _ => None,
            },
            BindError::GetStream { source, .. } => match source.kind() {
                G::JetStream(e) => Some(e.error_code()),
                _ => None,
            },
            BindError::Consumer { source, .. } => match source.kind() {
                K::JetStream(e) => Some(e.error_code()),
                _ => None,
            },
            BindError::Info { .. }
            | BindError::Recreated(_)
            | BindError::AckPolicy { .. }
            | BindError::Busy { .. }
            | BindError::Reset { .. }
            | BindError::Subscribe { .. } => None,
        }
    }

    /// What the error most likely means for the operator, decided by the server's error code.
    pub fn hint(&self) -> Option<&'static str> {
        hint_for(self.code()?)
    }
}

/// The operator's hint for a JetStream error code met while binding.
pub(super) fn hint_for(code: jetstream::ErrorCode) -> Option<&'static str> {
    match code {
        // A work-queue stream allows one consumer without a filter, and another reads it.
        jetstream::ErrorCode::CONSUMER_WQ_MULTIPLE_UNFILTERED => Some(
            "the edge stream is a work queue (nats.retention = \"work_queue\"): one consumer reads \
             it and another one does already; give this gateway the other's nats.consumer (they \
             then share the work), or create the stream with nats.retention = \"limits\" for \
             several independent readers",
        ),
        jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED => Some(
            "nats.max_bytes is larger than the edge server's JetStream store allows (max_file_store)",
        ),
        _ => None,
    }
}

/// The durable consumer's configuration.
fn consumer_config(cfg: &GatewayConfig) -> jetstream::consumer::pull::Config {
    let n = &cfg.nats;
    jetstream::consumer::pull::Config {
        durable_name: Some(n.consumer.clone()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: n.ack_wait,
        max_ack_pending: n.max_ack_pending,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

/// The cumulative-ack consumer's configuration: push, AckPolicy FlowControl with what the
/// server requires of it (flow control, a 1 s heartbeat, `max_ack_pending` > 0, no `ack_wait`,
/// `checkConsumerCfg`).
fn push_config(cfg: &GatewayConfig) -> jetstream::consumer::push::Config {
    let n = &cfg.nats;
    jetstream::consumer::push::Config {
        durable_name: Some(n.consumer.clone()),
        deliver_subject: format!("_uplink.deliver.{}.{}", n.stream, n.consumer),
        ack_policy: jetstream::consumer::AckPolicy::FlowControl,
        flow_control: true,
        idle_heartbeat: super::cumulative::HEARTBEAT,
        max_ack_pending: n.max_ack_pending,
        deliver_policy: jetstream::consumer::DeliverPolicy::All,
        ..Default::default()
    }
}

/// The first nats-server release with AckPolicy FlowControl (nats-server PR #7613).
const CUMULATIVE_SINCE: (u64, u64) = (2, 14);

/// The ack mode used with an edge server of `version`: `nats.ack`, except that cumulative acks
/// fall back to explicit ones on a server older than 2.14.
pub fn effective_ack(wanted: AckMode, version: &str) -> AckMode {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    match wanted {
        AckMode::Cumulative if (major, minor) < CUMULATIVE_SINCE => AckMode::Explicit,
        w => w,
    }
}

/// A bound edge consumer.
pub(super) enum Bound {
    Explicit(Box<PullConsumer>),
    Cumulative(super::cumulative::Bound),
}

/// The edge stream a gateway creates when it is missing (`nats.create_stream`).
pub fn stream_config(cfg: &GatewayConfig) -> jetstream::stream::Config {
    let n = &cfg.nats;
    let mut config = jetstream::stream::Config {
        name: n.stream.clone(),
        subjects: n.subjects.clone(),
        storage: jetstream::stream::StorageType::File,
        // Work-queue by default: a message leaves the edge stream once the gateway acked it
        // (the cloud has it), so the stream holds the backlog, not the history, and
        // `nats.max_bytes` with `discard = new` bounds an outage's backlog instead of refusing
        // publishes after the first GiB of ordinary traffic (limits retention keeps acked
        // messages until max_age).
        retention: match n.retention {
            crate::config::EdgeRetention::WorkQueue => {
                jetstream::stream::RetentionPolicy::WorkQueue
            }
            crate::config::EdgeRetention::Limits => jetstream::stream::RetentionPolicy::Limits,
        },
        ..Default::default()
    };
    n.limits.apply(&mut config);
    config
}

/// The dead-letter stream a gateway creates (`forward.dead_letter`, with `nats.create_stream`):
/// `<nats.stream>_DEAD` on `<prefix>.>`, file storage, limits retention, at most 1 GiB with the
/// oldest dropped first — refused messages wait there for an operator, bounded. It has as many
/// replicas as the edge stream (`edge_replicas`): a message is not less safe once refused.
pub fn dead_letter_stream_config(
    cfg: &GatewayConfig,
    edge_replicas: usize,
) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("{}_DEAD", cfg.nats.stream),
        num_replicas: edge_replicas.max(1),
        subjects: vec![format!("{}.>", cfg.forward.dead_letter)],
        storage: jetstream::stream::StorageType::File,
        retention: jetstream::stream::RetentionPolicy::Limits,
        max_bytes: 1 << 30,
        discard: jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

/// Creates the dead-letter stream (where refused messages go, `forward.dead_letter`) if missing,
/// with the edge stream's replicas; a failure is not fatal: the copy fails later and the
/// message is kept, with the error in the log. An existing stream keeps its own settings.
pub async fn create_dead_letter_stream(
    js: &jetstream::Context,
    cfg: &GatewayConfig,
    edge_replicas: usize,
) {
    let dead = dead_letter_stream_config(cfg, edge_replicas);
    if let Err(e) = js.get_or_create_stream(dead.clone()).await {
        tracing::warn!(error = %e, stream = %dead.name, subjects = ?dead.subjects, replicas = dead.num_replicas, "cannot create the dead-letter stream; refused messages will be kept in the edge stream instead");
    }
}

/// Gets (or creates) the edge stream and the durable consumer (acked as `nats.ack` says, where
/// the edge server can: [`effective_ack`]); returns the bound consumer and the stream
/// incarnation (creation time, ns since the epoch).
pub(super) async fn bind(
    js: &jetstream::Context,
    cfg: &GatewayConfig,
    may_create: bool,
) -> Result<(Bound, i128), BindError> {
    let n = &cfg.nats;
    let info_err = |source| BindError::Info {
        stream: n.stream.clone(),
        source,
    };
    let mut stream = match js.get_stream(&n.stream).await {
        Ok(s) => s,
        Err(e) if n.create_stream && may_create => {
            tracing::debug!(error = %e, "edge stream lookup failed; creating it");
            js.get_or_create_stream(stream_config(cfg))
                .await
                .map_err(|source| BindError::CreateStream {
                    stream: n.stream.clone(),
                    source,
                })?
        }
        Err(source) => {
            return Err(BindError::GetStream {
                stream: n.stream.clone(),
                source,
            });
        }
    };
    let info = stream.info().await.map_err(info_err)?.clone();
    if n.create_stream && may_create && !cfg.forward.dead_letter.is_empty() {
        create_dead_letter_stream(js, cfg, info.config.num_replicas).await;
    }
    let incarnation = info.created.unix_timestamp_nanos();
    // Known once the connection is up (the stream lookup above went through it).
    let mode = effective_ack(cfg.nats.ack, &js.client().server_info().version);
    check_ack_policy(&stream, cfg, mode).await?;
    let consumer_err = |source| BindError::Consumer {
        consumer: n.consumer.clone(),
        stream: n.stream.clone(),
        source,
    };
    let bound = match mode {
        AckMode::Explicit => Bound::Explicit(Box::new(
            stream
                .get_or_create_consumer(&n.consumer, consumer_config(cfg))
                .await
                .map_err(consumer_err)?,
        )),
        AckMode::Cumulative => {
            let consumer: jetstream::consumer::PushConsumer = stream
                .get_or_create_consumer(&n.consumer, push_config(cfg))
                .await
                .map_err(consumer_err)?;
            Bound::Cumulative(bind_cumulative(js, &stream, consumer, cfg).await?)
        }
    };
    // The stream may have been recreated between reading its incarnation and binding.
    let now = stream
        .get_info()
        .await
        .map_err(info_err)?
        .created
        .unix_timestamp_nanos();
    if now != incarnation {
        return Err(BindError::Recreated(n.stream.clone()));
    }
    Ok((bound, incarnation))
}

/// Refuses an existing durable whose ack policy is not `mode`'s.
async fn check_ack_policy(
    stream: &jetstream::stream::Stream,
    cfg: &GatewayConfig,
    mode: AckMode,
) -> Result<(), BindError> {
    use jetstream::consumer::AckPolicy as P;
    let Ok(info) = stream.consumer_info(&cfg.nats.consumer).await else {
        // Missing (created next) or unreadable (creating it reports why).
        return Ok(());
    };
    let (wanted, wants) = match mode {
        AckMode::Explicit => (P::Explicit, "explicit"),
        AckMode::Cumulative => (P::FlowControl, "cumulative"),
    };
    if info.config.ack_policy == wanted {
        return Ok(());
    }
    Err(BindError::AckPolicy {
        consumer: cfg.nats.consumer.clone(),
        stream: cfg.nats.stream.clone(),
        has: match info.config.ack_policy {
            P::Explicit => "explicitly (a pull consumer)",
            P::FlowControl => "cumulatively (flow control)",
            P::All => "cumulatively (AckAll)",
            P::None => "nothing (AckNone)",
        },
        wants,
    })
}

/// Readies a cumulative-ack consumer for this gateway: nobody else reads it, it is reset to
/// its ack floor (what an earlier run had not acked comes again: with `ack_wait` 0 nothing
/// else would redeliver it), and its deliver subject is subscribed — after the reset, so no
/// delivery numbered before it arrives.
async fn bind_cumulative(
    js: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    consumer: jetstream::consumer::PushConsumer,
    cfg: &GatewayConfig,
) -> Result<super::cumulative::Bound, BindError> {
    let n = &cfg.nats;
    let info = consumer.cached_info();
    if info.push_bound {
        return Err(BindError::Busy {
            consumer: n.consumer.clone(),
            stream: n.stream.clone(),
        });
    }
    let delivered_before = info.delivered.stream_sequence;
    let subject = info.config.deliver_subject.clone().unwrap_or_default();
    let reset = stream
        .reset_consumer(&n.consumer, None)
        .await
        .map_err(|source| BindError::Reset {
            consumer: n.consumer.clone(),
            source,
        })?;
    tracing::debug!(
        consumer = %n.consumer,
        delivered_before,
        reset_to = reset.reset_seq,
        "cumulative-ack consumer reset to its ack floor"
    );
    let subscription = js
        .client()
        .subscribe(subject.clone())
        .await
        .map_err(|source| BindError::Subscribe { subject, source })?;
    Ok(super::cumulative::Bound {
        subscription,
        delivered_before,
    })
}

/// Builds message ids (docs/design.md §2, "Stable ids").
pub struct IdMaker {
    pub platform: String,
    pub stream: String,
    pub incarnation: i128,
}

impl IdMaker {
    pub fn id(&self, sequence: u64) -> String {
        wire::message_id(&self.platform, &self.stream, self.incarnation, sequence)
    }
}

/// Converts an edge message for the wire. Headers in the ingest's namespaces
/// ([`wire::is_reserved_header`]) are not forwarded.
fn to_wire(ids: &IdMaker, m: &jetstream::Message) -> Result<wire::Message, String> {
    let info = m.info().map_err(|e| e.to_string())?;
    // The ingest refuses what it cannot map under the platform's prefix; find out here, for
    // this message alone.
    wire::validate_subject(&m.subject).map_err(|e| e.to_string())?;
    let mut out = wire::Message {
        id: ids.id(info.stream_sequence),
        subject: m.subject.to_string(),
        payload: m.payload.clone(),
        headers: Default::default(),
        time_unix_nano: info.published.unix_timestamp_nanos() as i64,
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
    loop {
        let deadline = batcher.deadline(cfg.batch.linger);
        // Adaptive linger: a partial batch leaves as soon as a send slot is free and no further
        // message is ready — the lowest-priority arm below, reached only when the stream (polled
        // first, then once more after a yield so the client's reader can hand over what already
        // arrived) had nothing. With every slot busy the batch keeps filling as before.
        let idle = cfg.batch.adaptive && batcher.send_when_idle(slots.available());
        let full = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = sleep_until_opt(deadline), if deadline.is_some() => true,
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
                Some(Ok(h)) => match to_wire(ids, h.message()) {
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

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
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
