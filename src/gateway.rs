//! `uplink gateway` (edge): JetStream durable pull consumer → batches → HTTP/2 mTLS POST →
//! ack only after the ingest's 2xx.
//!
//! `batch` groups messages, `forward` is the retry loop, `retry` the backoff policy; this file
//! binds the consumer and runs the pipeline with bounded in-flight batches.

pub mod batch;
pub mod forward;
pub mod lag;
pub mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures_util::StreamExt;
use http::Request;
use http_body_util::Full;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::batch::Batcher;
use self::forward::{Delivery, send_with_retries};
use self::retry::Backoff;
use crate::config::{GatewayConfig, RejectAction};
use crate::http2::{Client, ClientConfig};
use crate::wire;

/// Everything a batch delivery task needs.
struct Ctx {
    cfg: GatewayConfig,
    client: Client,
    batches_url: http::Uri,
    soft_stop: CancellationToken,
    hard_stop: CancellationToken,
    /// The edge consumer delivers nothing though messages are pending (see `PumpError`).
    stalled: Arc<AtomicBool>,
}

/// Runs the gateway until `shutdown`, then drains in-flight batches for at most
/// `timeouts.shutdown_grace` and naks what is left (never acks anything unsent).
pub async fn run(cfg: GatewayConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tls = crate::tls::client_config(&cfg.cloud.ca, &cfg.cloud.cert, &cfg.cloud.key)?;
    let platform = if cfg.platform.is_empty() {
        let certs = crate::tls::load_certs(&cfg.cloud.cert)?;
        crate::tls::identity(&certs[0]).with_context(|| {
            format!(
                "platform is empty and {} has no CN or DNS SAN to use",
                cfg.cloud.cert.display()
            )
        })?
    } else {
        cfg.platform.clone()
    };
    wire::validate_token(&platform).map_err(|e| anyhow::anyhow!("platform: {e}"))?;
    let base: http::Uri = cfg.cloud.url.parse().context("cloud.url")?;
    let batches_url = batches_url(&base).context("cloud.url")?;
    let client = Client::new(ClientConfig {
        url: base,
        server_name: cfg.cloud.server_name.clone(),
        tls,
        timeouts: cfg.timeouts.clone(),
        connections: cfg.forward.connections,
        max_requests_per_connection: cfg.forward.max_requests_per_connection,
        max_connection_age: cfg.forward.max_connection_age,
    })
    .map_err(|e| anyhow::anyhow!("cloud.url: {e}"))?;

    let admin = TcpListener::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("cannot listen on {} (admin.listen)", cfg.admin.listen))?;
    let conn = crate::nats::connect(&cfg.nats.connect, crate::nats::Role::Edge, "uplink-gateway")
        .await
        .map_err(crate::nats::NatsError::into_anyhow)?;
    let nats = conn.client.clone();
    let js = jetstream::new(nats.clone());
    lag::spawn(&js, &cfg, &shutdown);
    let bound = Arc::new(AtomicBool::new(false));
    let stalled_flag = Arc::new(AtomicBool::new(false));
    let ready_stalled = stalled_flag.clone();
    let ready_nats = conn.clone();
    let ready_bound = bound.clone();
    tracing::info!(
        platform,
        admin = %admin.local_addr()?,
        nats = %cfg.nats.connect.display_urls(),
        stream = %cfg.nats.stream,
        cloud = %cfg.cloud.url,
        "gateway started"
    );
    tokio::spawn(crate::admin::serve(
        admin,
        Arc::new(move || {
            ready_nats.ready()?;
            if ready_stalled.load(Ordering::Acquire) {
                return Err("edge consumer stalled: messages pending but none delivered".into());
            }
            if !ready_bound.load(Ordering::Acquire) {
                return Err("consumer not bound yet".into());
            }
            Ok(())
        }),
        shutdown.clone(),
    ));

    let ctx = Arc::new(Ctx {
        cfg: cfg.clone(),
        client,
        batches_url,
        soft_stop: shutdown.clone(),
        hard_stop: CancellationToken::new(),
        stalled: stalled_flag.clone(),
    });
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(cfg.forward.max_in_flight));
    let mut delay = Duration::from_millis(100);
    // When a bound stream disappears, someone is probably recreating it: give them time
    // before creating it ourselves (racing them leaves JetStream 2.9 with a consumer that
    // never delivers).
    let mut lost_at: Option<tokio::time::Instant> = None;
    while !shutdown.is_cancelled() {
        let may_create = lost_at.is_none_or(|t| t.elapsed() >= cfg.nats.recreate_grace);
        // Binding waits on JetStream requests, which wait while edge NATS is unreachable or
        // refuses us: shutdown must not wait for them.
        let bound_now = tokio::select! {
            b = bind(&js, &cfg, may_create) => b,
            _ = shutdown.cancelled() => break,
        };
        let (consumer, incarnation) = match bound_now {
            Ok(b) => b,
            Err(e) => {
                // The whole chain: the cause (e.g. JetStream's "insufficient storage resources"
                // for a nats.max_bytes larger than the server's store) is in the last link.
                tracing::warn!(
                    error = format!("{e:#}"),
                    "cannot bind the edge consumer yet; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => break,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        delay = Duration::from_millis(100);
        bound.store(true, Ordering::Release);
        tracing::info!(consumer = %cfg.nats.consumer, incarnation, "consumer bound");
        let ids = IdMaker {
            platform: platform.clone(),
            stream: cfg.nats.stream.clone(),
            incarnation,
        };
        lost_at = None;
        match pump(&consumer, &ids, &ctx, &slots, &tracker, &shutdown).await {
            Ok(()) => {}
            Err(e @ PumpError::Stalled { .. }) => {
                tracing::error!(error = %e, "edge consumer stalled; rebinding");
                metrics::counter!("uplink_gateway_consumer_stalls_total").increment(1);
                bound.store(false, Ordering::Release);
                stalled_flag.store(true, Ordering::Release);
            }
            Err(e) => {
                tracing::warn!(error = %e, "consuming stopped; rebinding");
                bound.store(false, Ordering::Release);
                lost_at = Some(tokio::time::Instant::now());
            }
        }
    }
    tracker.close();
    let grace = cfg.timeouts.shutdown_grace;
    tracing::info!(
        in_flight = tracker.len(),
        ?grace,
        "draining in-flight batches"
    );
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("shutdown grace expired: abandoning in-flight batches (nak)");
        ctx.hard_stop.cancel();
        if tokio::time::timeout(SETTLE_TIMEOUT * 2, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("in-flight batches did not stop; exiting (JetStream redelivers them)");
        }
    }
    // Acks are buffered in the client: make sure they reach the server before exit.
    let _ = tokio::time::timeout(Duration::from_secs(2), nats.flush()).await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// How often the pump checks that a consumer with pending messages is delivering them.
const STALL_CHECK: Duration = Duration::from_secs(10);

/// Why consuming stopped.
#[derive(Debug, thiserror::Error)]
enum PumpError {
    /// The server says messages are pending but delivers none. Seen with nats-server 2.9 after an
    /// edge stream was recreated while a gateway recreated it too (recreating the consumer does
    /// not cure it; the stream needs an operator). Reported loudly, and /readyz says so.
    #[error(
        "the edge consumer has {pending} messages pending but delivered none for {idle:?} (nats-server stuck after a stream recreate?); check the edge stream"
    )]
    Stalled { pending: u64, idle: Duration },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
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

/// Gets (or creates) the edge stream and the durable consumer; returns the consumer and the
/// stream incarnation (creation time, ns since the epoch).
async fn bind(
    js: &jetstream::Context,
    cfg: &GatewayConfig,
    may_create: bool,
) -> anyhow::Result<(PullConsumer, i128)> {
    let n = &cfg.nats;
    let mut stream = match js.get_stream(&n.stream).await {
        Ok(s) => s,
        Err(e) if n.create_stream && may_create => {
            tracing::debug!(error = %e, "edge stream lookup failed; creating it");
            let mut config = jetstream::stream::Config {
                name: n.stream.clone(),
                subjects: n.subjects.clone(),
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            };
            n.limits.apply(&mut config);
            js.get_or_create_stream(config)
                .await
                .with_context(|| format!("creating edge stream {}", n.stream))?
        }
        Err(e) => return Err(e).with_context(|| format!("edge stream {}", n.stream)),
    };
    let incarnation = stream.info().await?.created.unix_timestamp_nanos();
    let consumer: PullConsumer = stream
        .get_or_create_consumer(&n.consumer, consumer_config(cfg))
        .await
        .with_context(|| format!("consumer {} on {}", n.consumer, n.stream))?;
    // The stream may have been recreated between reading its incarnation and binding.
    let now = stream.get_info().await?.created.unix_timestamp_nanos();
    if now != incarnation {
        anyhow::bail!("edge stream {} was recreated while binding", n.stream);
    }
    Ok((consumer, incarnation))
}

/// Builds message ids (DESIGN.md §1).
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

/// Pulls messages into batches and dispatches each to a delivery task, at most
/// `forward.max_in_flight` at once (waiting for a slot stops the pulling: backpressure).
async fn pump(
    consumer: &PullConsumer,
    ids: &IdMaker,
    ctx: &Arc<Ctx>,
    slots: &Arc<Semaphore>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(), PumpError> {
    let cfg = &ctx.cfg;
    let mut watchdog =
        tokio::time::interval_at(tokio::time::Instant::now() + STALL_CHECK, STALL_CHECK);
    let mut received_since_check = false;
    let mut strikes = 0;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(cfg.batch.max_messages.min(1000))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(anyhow::Error::from)?;
    let mut batcher: Batcher<jetstream::Message> =
        Batcher::new(cfg.batch.max_messages, cfg.batch.max_bytes);
    loop {
        let deadline = batcher.deadline(cfg.batch.linger);
        let full = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = sleep_until_opt(deadline), if deadline.is_some() => true,
            _ = watchdog.tick() => {
                if std::mem::take(&mut received_since_check) {
                    strikes = 0;
                } else if let Some(pending) = stalled(consumer, cfg, slots).await {
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
                Some(Ok(m)) => match to_wire(ids, &m) {
                    Ok(w) => {
                        if !received_since_check {
                            received_since_check = true;
                            ctx.stalled.store(false, Ordering::Release);
                        }
                        batcher.push(m, w)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, subject = %m.subject, "message cannot be forwarded; terminating it (it stays in the edge stream)");
                        metrics::counter!("uplink_gateway_messages_total", "result" => "rejected").increment(1);
                        let _ = tokio::time::timeout(SETTLE_TIMEOUT, m.ack_with(AckKind::Term)).await;
                        false
                    }
                },
                Some(Err(e)) => {
                    use async_nats::jetstream::consumer::pull::MessagesErrorKind as K;
                    match e.kind() {
                        K::Pull => {
                            tracing::warn!(error = %e, "pull consumer hiccup; continuing");
                            false
                        }
                        _ => {
                            flush(&mut batcher, ctx, slots, tracker, shutdown).await;
                            return Err(anyhow::Error::from(e).into());
                        }
                    }
                }
                None => {
                    flush(&mut batcher, ctx, slots, tracker, shutdown).await;
                    return Err(anyhow::anyhow!("message stream ended").into());
                }
            },
        };
        if full {
            flush(&mut batcher, ctx, slots, tracker, shutdown).await;
        }
    }
    // Shutdown: what was pulled but not sent goes back at once — the batch being built and
    // what the pull already delivered into the client's buffer (left there it would wait out
    // ack_wait before JetStream redelivers it).
    let (mut left, _) = batcher.take();
    let drain = async {
        while let Ok(Some(Ok(m))) = tokio::time::timeout(PREFETCH_QUIET, messages.next()).await {
            left.push(m);
        }
    };
    let _ = tokio::time::timeout(SETTLE_TIMEOUT, drain).await;
    // Stop taking deliveries before giving messages back, or JetStream hands them straight
    // back to this subscription, which is about to go away.
    drop(messages);
    if !left.is_empty() {
        tracing::info!(
            messages = left.len(),
            "shutdown: returning undispatched messages to JetStream"
        );
    }
    settle(&left, SHUTDOWN_NAK).await;
    Ok(())
}

/// `Some(pending)` when the consumer has messages to deliver and room to deliver them (below
/// max_ack_pending, a send slot free) — called when it delivered nothing for a while.
async fn stalled(consumer: &PullConsumer, cfg: &GatewayConfig, slots: &Semaphore) -> Option<u64> {
    let info = tokio::time::timeout(Duration::from_secs(2), consumer.get_info())
        .await
        .ok()?
        .ok()?;
    let room =
        (info.num_ack_pending as i64) < cfg.nats.max_ack_pending && slots.available_permits() > 0;
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

/// How messages are given back at shutdown: redelivered after a moment, so not into this
/// gateway's own pull that is still open while it exits, but long before `ack_wait`.
const SHUTDOWN_NAK: AckKind = AckKind::Nak(Some(Duration::from_secs(2)));

/// How long acks, naks and progress notes for one batch may take (they block while edge NATS
/// is disconnected; shutdown must not).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Acks/naks/terms/progresses every message, giving up after [`SETTLE_TIMEOUT`] (what is not
/// acked is redelivered by JetStream and deduplicated by the cloud).
async fn settle(msgs: &[jetstream::Message], kind: AckKind) {
    let work = async {
        for m in msgs {
            let r = match kind {
                AckKind::Ack => m.ack().await,
                k => m.ack_with(k).await,
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, ?kind, "acknowledgement not sent; JetStream will redeliver");
                return;
            }
        }
    };
    if tokio::time::timeout(SETTLE_TIMEOUT, work).await.is_err() {
        tracing::warn!(
            ?kind,
            messages = msgs.len(),
            "edge NATS did not take the acknowledgements in time; JetStream will redeliver"
        );
    }
}

/// Sends the current batch (if any) to a delivery task once a slot is free. While it waits,
/// its messages get `in_progress` so JetStream does not redeliver them meanwhile.
async fn flush(
    batcher: &mut Batcher<jetstream::Message>,
    ctx: &Arc<Ctx>,
    slots: &Arc<Semaphore>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    if batcher.is_empty() {
        return;
    }
    let every = ctx.cfg.nats.ack_wait / 3;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let permit = loop {
        tokio::select! {
            p = slots.clone().acquire_owned() => break p.expect("semaphore never closed"),
            _ = progress.tick() => settle(batcher.handles(), AckKind::Progress).await,
            _ = shutdown.cancelled() => {
                let (left, _) = batcher.take();
                settle(&left, SHUTDOWN_NAK).await;
                return;
            }
        }
    };
    let (msgs, batch) = batcher.take();
    metrics::counter!("uplink_gateway_batches_total").increment(1);
    metrics::histogram!("uplink_gateway_batch_messages").record(msgs.len() as f64);
    let ctx = ctx.clone();
    tracker.spawn(async move {
        metrics::gauge!("uplink_gateway_in_flight_batches").increment(1.0);
        deliver(ctx, msgs, batch).await;
        metrics::gauge!("uplink_gateway_in_flight_batches").decrement(1.0);
        drop(permit);
    });
}

/// Where batches go: `cloud.url`'s path (an ingest behind a proxy route such as
/// `https://gw.example/ingest`) followed by [`wire::BATCHES_PATH`].
fn batches_url(base: &http::Uri) -> anyhow::Result<http::Uri> {
    let authority = base
        .authority()
        .context("has no host (expected https://host:port[/path])")?;
    if base.query().is_some() {
        anyhow::bail!("{base} has a query string; give scheme, host, port and an optional path");
    }
    let prefix = base.path().trim_end_matches('/');
    Ok(format!(
        "{}://{authority}{prefix}{}",
        base.scheme_str().unwrap_or("https"),
        wire::BATCHES_PATH
    )
    .parse()?)
}

/// Whether a 2xx answer confirms every message of the batch (`{"accepted":N,"duplicates":M}`
/// with N + M = the batch size). Anything else — a catch-all proxy route, a stray server —
/// must not get messages acked.
fn confirms(body: &[u8], count: usize) -> bool {
    wire::Accepted::parse(body).is_some_and(|a| a.confirms(count))
}

/// Delivers one batch, keeping its messages alive in JetStream (`in_progress`) while retries
/// run, then acks, terms or naks them by outcome. A rejected batch of several messages is split
/// in halves and each half delivered again, so only the messages the ingest refuses are
/// dead-lettered, not their batch-mates.
fn deliver(
    ctx: Arc<Ctx>,
    msgs: Vec<jetstream::Message>,
    batch: wire::Batch,
) -> futures_util::future::BoxFuture<'static, ()> {
    Box::pin(async move {
        let cfg = &ctx.cfg;
        let started = std::time::Instant::now();
        let body = match wire::encode_batch(&batch, cfg.batch.compression, cfg.batch.zstd_level) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "encoding a batch failed; naking it");
                settle(&msgs, AckKind::Nak(None)).await;
                return;
            }
        };
        let count = msgs.len();
        let attempt = || {
            let req = Request::post(ctx.batches_url.clone())
                .header(http::header::CONTENT_TYPE, wire::CONTENT_TYPE_PROTOBUF)
                .header(
                    http::header::CONTENT_ENCODING,
                    cfg.batch.compression.as_str(),
                )
                .body(Full::new(body.clone()))
                .expect("valid request");
            let send = ctx.client.send(req);
            async move {
                let resp = send.await?;
                if resp.status().is_success() && !confirms(resp.body(), count) {
                    return Err(crate::http2::ForwardError::Unconfirmed {
                        status: resp.status().as_u16(),
                        detail: String::from_utf8_lossy(resp.body())
                            .chars()
                            .take(200)
                            .collect(),
                    });
                }
                Ok(resp)
            }
        };
        let backoff = Backoff {
            initial: cfg.retry.initial_backoff,
            max: cfg.retry.max_backoff,
        };
        let work = send_with_retries(attempt, backoff, &ctx.soft_stop, &ctx.hard_stop);
        let mut work = std::pin::pin!(work);
        let every = cfg.nats.ack_wait / 3;
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let outcome = loop {
            tokio::select! {
                o = &mut work => break o,
                _ = progress.tick() => {
                    metrics::counter!("uplink_gateway_in_progress_total").increment(count as u64);
                    settle(&msgs, AckKind::Progress).await;
                }
            }
        };
        let n = count as u64;
        match outcome {
            Delivery::Delivered { attempts } => {
                settle(&msgs, AckKind::Ack).await;
                lag::delivered();
                metrics::counter!("uplink_gateway_messages_total", "result" => "acked")
                    .increment(n);
                metrics::histogram!("uplink_gateway_delivery_seconds")
                    .record(started.elapsed().as_secs_f64());
                tracing::trace!(messages = n, attempts, "batch delivered");
            }
            Delivery::Rejected { status, detail } if count > 1 => {
                tracing::warn!(status, %detail, messages = n, "ingest rejected a batch; splitting it to find the offending messages");
                let mut msgs = msgs;
                let mut batch = batch;
                let right_msgs = msgs.split_off(count / 2);
                let right = wire::Batch {
                    messages: batch.messages.split_off(count / 2),
                };
                {
                    // The right half waits its turn: keep it alive meanwhile, or JetStream
                    // redelivers it past ack_wait (sent twice, deduplicated, but wasted).
                    let every = cfg.nats.ack_wait / 3;
                    let keep_alive = async {
                        let mut tick =
                            tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                        loop {
                            tick.tick().await;
                            metrics::counter!("uplink_gateway_in_progress_total")
                                .increment(right_msgs.len() as u64);
                            settle(&right_msgs, AckKind::Progress).await;
                        }
                    };
                    tokio::select! {
                        _ = deliver(ctx.clone(), msgs, batch) => {}
                        _ = keep_alive => {}
                    }
                }
                deliver(ctx.clone(), right_msgs, right).await;
            }
            Delivery::Rejected { status, detail } => {
                let sequence = msgs
                    .first()
                    .and_then(|m| m.info().ok().map(|i| i.stream_sequence))
                    .unwrap_or(0);
                tracing::error!(
                    status,
                    %detail,
                    edge_sequence = sequence,
                    id = %batch.messages.first().map(|m| m.id.as_str()).unwrap_or(""),
                    action = ?cfg.forward.on_rejected,
                    "ingest rejected a message; not retrying it blindly"
                );
                metrics::counter!("uplink_gateway_messages_total", "result" => "rejected")
                    .increment(n);
                let kind = match cfg.forward.on_rejected {
                    RejectAction::Term => AckKind::Term,
                    RejectAction::Keep => AckKind::Nak(Some(cfg.retry.max_backoff)),
                };
                settle(&msgs, kind).await;
            }
            Delivery::Abandoned => {
                metrics::counter!("uplink_gateway_messages_total", "result" => "abandoned")
                    .increment(n);
                settle(&msgs, SHUTDOWN_NAK).await;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::{batches_url, confirms};

    #[test]
    fn the_path_of_cloud_url_is_honoured() {
        let url = |s: &str| batches_url(&s.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(url("https://h:8443").unwrap(), "https://h:8443/v1/batches");
        assert_eq!(url("https://h:8443/").unwrap(), "https://h:8443/v1/batches");
        assert_eq!(
            url("https://h/ingest/").unwrap(),
            "https://h/ingest/v1/batches"
        );
        assert!(
            url("https://h/x?y=1")
                .unwrap_err()
                .to_string()
                .contains("query")
        );
        assert!(url("/only/a/path").is_err());
    }

    #[test]
    fn only_a_full_confirmation_acks() {
        assert!(confirms(br#"{"accepted":3,"duplicates":2}"#, 5));
        assert!(!confirms(br#"{"accepted":3,"duplicates":1}"#, 5));
        assert!(!confirms(b"", 5));
        assert!(!confirms(b"<html>ok</html>", 5));
        assert!(!confirms(br#"{"status":"ok"}"#, 5));
    }
}
