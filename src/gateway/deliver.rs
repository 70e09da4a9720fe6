//! Delivering one batch and settling its messages (docs/design.md §2): while the batch waits or
//! retries, its messages get `in_progress` every third of `ack_wait`; it ends acked (the ingest
//! confirmed every message), termed or kept (the ingest refused them, found by bisecting),
//! or nak'ed (shutdown) — each message settled once.
//!
//! Generic over how messages are settled ([`Settle`]: JetStream in production) and how a body
//! is sent ([`Post`]: the HTTP/2 client), so the ack policy is unit-tested with paused time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::Request;
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

use super::concurrency::Verdict;
use super::forward::{Delivery, send_with_retries};
use super::retry::Backoff;
use crate::config::RejectAction;
use crate::http2::client::FullResponse;
use crate::http2::{Client, ForwardError};
use crate::wire::{self, Encoding};

/// How long acks, naks and progress notes for one batch may take (they block while edge NATS
/// is disconnected; shutdown must not).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How messages are given back at shutdown: redelivered after a moment, so not into this
/// gateway's own pull that is still open while it exits, but long before `ack_wait`.
pub const SHUTDOWN_NAK: AckKind = AckKind::Nak(Some(Duration::from_secs(2)));

/// The messages of a batch, as the edge JetStream knows them.
pub trait Settle: Send + Sync + Sized + 'static {
    /// How many messages.
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Sends `kind` for every message, within [`SETTLE_TIMEOUT`].
    fn send(&self, kind: AckKind) -> BoxFuture<'_, ()>;
    /// Splits off the messages from `at` on (bisecting a rejected batch).
    fn split_off(&mut self, at: usize) -> Self;
    /// The edge stream sequence of the first message (for logs).
    fn first_sequence(&self) -> u64;
    /// Whether the edge delivers every message for the first time (none can have reached the
    /// cloud through an earlier delivery).
    fn first_delivery(&self) -> bool;
    /// Copies every message to the dead letters under `prefix` (`forward.dead_letter`) with
    /// why (`reason`, the ingest's `status`); Ok once every copy is stored.
    fn dead_letter<'a>(
        &'a self,
        prefix: &'a str,
        status: Option<u16>,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), DeadLetterError>>;
}

/// Why a dead letter was not stored.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The copy (the message plus why) exceeds the edge server's `max_payload`: it never will fit.
    #[error("the dead letter would exceed the edge server's max_payload: {0}")]
    TooLarge(String),
    /// Anything else (no stream for the subject, edge NATS away, a timeout): worth another try.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl DeadLetterError {
    /// Sorts a publish error: too large for the server is for good, the rest worth a retry.
    fn of(e: jetstream::context::PublishError) -> DeadLetterError {
        match e.kind() {
            jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                DeadLetterError::TooLarge(e.to_string())
            }
            _ => DeadLetterError::Failed(e.into()),
        }
    }
}

impl Settle for Vec<jetstream::Message> {
    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn send(&self, kind: AckKind) -> BoxFuture<'_, ()> {
        Box::pin(settle(self, kind))
    }

    fn split_off(&mut self, at: usize) -> Self {
        Vec::split_off(self, at)
    }

    fn first_delivery(&self) -> bool {
        self.iter()
            .all(|m| m.info().is_ok_and(|i| i.delivered == 1))
    }

    fn first_sequence(&self) -> u64 {
        self.first()
            .and_then(|m| m.info().ok().map(|i| i.stream_sequence))
            .unwrap_or(0)
    }

    fn dead_letter<'a>(
        &'a self,
        prefix: &'a str,
        status: Option<u16>,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), DeadLetterError>> {
        Box::pin(async move {
            for m in self {
                copy_to_dead_letter(m, prefix, status, reason).await?;
            }
            Ok(())
        })
    }
}

/// Headers a dead letter carries besides the message's own: why it was refused, the ingest's
/// HTTP status (absent when the gateway itself could not forward it), and where it came from.
pub const DEAD_REASON: &str = "Uplink-Dead-Reason";
pub const DEAD_STATUS: &str = "Uplink-Dead-Status";
pub const DEAD_SUBJECT: &str = "Uplink-Dead-Subject";
pub const DEAD_STREAM: &str = "Uplink-Dead-Stream";
pub const DEAD_SEQUENCE: &str = "Uplink-Dead-Sequence";

/// Copies `m` to `<prefix>.<its subject>` on the edge JetStream: its payload, its headers
/// (without the edge JetStream's own `Nats-*` and the ingest's `Uplink-*`) and why; Ok once
/// the copy is stored (PubAck), within [`SETTLE_TIMEOUT`]. A copy retried after a restart is
/// stored once (`Nats-Msg-Id`: edge stream, sequence and publish time).
pub async fn copy_to_dead_letter(
    m: &jetstream::Message,
    prefix: &str,
    status: Option<u16>,
    reason: &str,
) -> Result<(), DeadLetterError> {
    let info = m
        .info()
        .map_err(|e| anyhow::anyhow!("reading the message's info: {e}"))?;
    let mut headers = async_nats::HeaderMap::new();
    if let Some(h) = &m.headers {
        for (name, values) in h.iter() {
            let n: &str = name.as_ref();
            if wire::is_reserved_header(n) {
                continue;
            }
            for v in values {
                headers.append(n, v.as_str());
            }
        }
    }
    let reason: String = reason.chars().take(200).collect();
    headers.insert(DEAD_REASON, reason.as_str());
    if let Some(s) = status {
        headers.insert(DEAD_STATUS, s.to_string().as_str());
    }
    headers.insert(DEAD_SUBJECT, m.subject.as_str());
    headers.insert(DEAD_STREAM, info.stream);
    headers.insert(DEAD_SEQUENCE, info.stream_sequence.to_string().as_str());
    let id = format!(
        "{}:{}:{}",
        info.stream,
        info.stream_sequence,
        info.published.unix_timestamp_nanos()
    );
    headers.insert("Nats-Msg-Id", id.as_str());
    let subject = format!("{prefix}.{}", m.subject);
    let store = async {
        m.context
            .publish_with_headers(subject.clone(), headers, m.payload.clone())
            .await
            .map_err(DeadLetterError::of)?
            .await
            .map_err(DeadLetterError::of)
    };
    match tokio::time::timeout(SETTLE_TIMEOUT, store).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(DeadLetterError::Failed(e))) => Err(e
            .context(format!("storing the dead letter on {subject}"))
            .into()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow::anyhow!(
            "storing the dead letter on {subject}: no PubAck within {SETTLE_TIMEOUT:?}"
        )
        .into()),
    }
}

/// Acks/naks/terms/progresses every message, giving up after [`SETTLE_TIMEOUT`] (what is not
/// acked is redelivered by JetStream and deduplicated by the cloud).
pub async fn settle(msgs: &[jetstream::Message], kind: AckKind) {
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

/// Sends an encoded batch body (in `encoding`); a 2xx that does not confirm every one of
/// `count` messages is an error (`Unconfirmed`), never a success. `first_send`: no message of
/// it was sent before (`wire::FIRST_SEND_HEADER`).
pub trait Post: Send + Sync + 'static {
    fn post(
        &self,
        body: Bytes,
        encoding: Encoding,
        count: usize,
        first_send: bool,
    ) -> BoxFuture<'_, Result<FullResponse, ForwardError>>;
}

/// [`Post`] over the HTTP/2 client to `POST /v1/batches`.
pub struct HttpPost {
    pub client: Client,
    pub url: http::Uri,
}

impl Post for HttpPost {
    fn post(
        &self,
        body: Bytes,
        encoding: Encoding,
        count: usize,
        first_send: bool,
    ) -> BoxFuture<'_, Result<FullResponse, ForwardError>> {
        let mut req = Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, wire::CONTENT_TYPE_PROTOBUF)
            .header(http::header::CONTENT_ENCODING, encoding.as_str());
        if first_send {
            req = req.header(wire::FIRST_SEND_HEADER, "1");
        }
        let req = req.body(Full::new(body)).expect("valid request");
        let send = self.client.send(req);
        Box::pin(async move {
            let resp = send.await?;
            if resp.status().is_success() && !confirms(resp.body(), count) {
                return Err(ForwardError::Unconfirmed {
                    status: resp.status().as_u16(),
                    detail: String::from_utf8_lossy(resp.body())
                        .chars()
                        .take(200)
                        .collect(),
                });
            }
            Ok(resp)
        })
    }
}

/// Whether a 2xx answer confirms every message of the batch (`{"accepted":N,"duplicates":M}`
/// with N + M = the batch size). Anything else — a catch-all proxy route, a stray server —
/// must not get messages acked.
pub fn confirms(body: &[u8], count: usize) -> bool {
    wire::Accepted::parse(body).is_some_and(|a| a.confirms(count))
}

/// What delivery does with a batch.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The consumer's `ack_wait`: progress notes go out every third of it.
    pub ack_wait: Duration,
    pub backoff: Backoff,
    pub on_rejected: RejectAction,
    /// `forward.dead_letter`: where refused messages are copied before they are termed ("" = not).
    pub dead_letter: String,
    pub compression: Encoding,
    pub zstd_level: i32,
}

/// Everything a delivery needs, shared by all batches.
pub struct Deliverer {
    pub policy: Policy,
    pub post: Arc<dyn Post>,
    /// What is logged about failed attempts, across batches.
    pub complaints: Arc<super::complaints::Complaints>,
    /// The send slots: each attempt's answer is reported to them (`forward.concurrency`).
    pub slots: Arc<super::concurrency::Slots>,
    /// Ends waiting in backoff (shutdown).
    pub soft_stop: CancellationToken,
    /// Also abandons attempts in progress (the shutdown grace ran out).
    pub hard_stop: CancellationToken,
}

/// Runs `work` while `msgs` get `in_progress` every `every`.
pub async fn keeping_alive<S: Settle, T>(
    msgs: &S,
    every: Duration,
    work: impl Future<Output = T>,
) -> T {
    let mut work = std::pin::pin!(work);
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = progress.tick() => {
                metrics::counter!("uplink_gateway_in_progress_total").increment(msgs.len() as u64);
                msgs.send(AckKind::Progress).await;
            }
        }
    }
}

/// Delivers one batch, keeping its messages alive while retries run, then acks, terms or naks
/// them by outcome. A rejected batch of several messages is split in halves and each half
/// delivered again (the waiting half kept alive meanwhile), so only the messages the ingest
/// refuses are dead-lettered, not their batch-mates.
pub fn deliver<S: Settle>(
    d: Arc<Deliverer>,
    msgs: S,
    batch: wire::Batch,
) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let p = &d.policy;
        let started = std::time::Instant::now();
        let (body, encoding) = match wire::encode_for_wire(&batch, p.compression, p.zstd_level) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "encoding a batch failed; naking it");
                msgs.send(AckKind::Nak(None)).await;
                return;
            }
        };
        let count = msgs.len();
        // Only the first attempt, of messages the edge delivers for the first time, can say
        // that nothing of it reached the cloud before. (A half of a rejected batch was refused
        // before anything was published: still a first send.)
        let mut first_send = msgs.first_delivery();
        let attempt = || {
            let ticket = d.slots.attempt();
            let sent = tokio::time::Instant::now();
            let answer = d.post.post(body.clone(), encoding, count, first_send);
            first_send = false;
            let slots = d.slots.clone();
            async move {
                let r = answer.await;
                if let Some(t) = ticket {
                    slots.answered(t, Verdict::of(&r), sent.elapsed(), count);
                }
                r
            }
        };
        let work = send_with_retries(
            attempt,
            p.backoff,
            &d.complaints,
            &d.soft_stop,
            &d.hard_stop,
        );
        let every = p.ack_wait / 3;
        let outcome = keeping_alive(&msgs, every, work).await;
        let n = count as u64;
        match outcome {
            Delivery::Delivered { attempts } => {
                msgs.send(AckKind::Ack).await;
                super::lag::delivered();
                metrics::counter!("uplink_gateway_messages_total", "result" => "acked")
                    .increment(n);
                metrics::histogram!("uplink_gateway_delivery_seconds")
                    .record(started.elapsed().as_secs_f64());
                tracing::trace!(messages = n, attempts, "batch delivered");
            }
            Delivery::Rejected { status, detail } if count > 1 => {
                tracing::warn!(status, %detail, messages = n, "ingest rejected a batch; splitting it to find the offending messages");
                let mut left = msgs;
                let mut batch = batch;
                let right = left.split_off(count / 2);
                let right_batch = wire::Batch {
                    messages: batch.messages.split_off(count / 2),
                };
                // The right half waits its turn: keep it alive meanwhile, or JetStream
                // redelivers it past ack_wait (sent twice, deduplicated, but wasted).
                keeping_alive(&right, every, deliver(d.clone(), left, batch)).await;
                deliver(d.clone(), right, right_batch).await;
            }
            Delivery::Rejected { status, detail } => {
                tracing::error!(
                    status,
                    %detail,
                    edge_sequence = msgs.first_sequence(),
                    id = %batch.messages.first().map(|m| m.id.as_str()).unwrap_or(""),
                    action = ?p.on_rejected,
                    "ingest rejected a message; not retrying it blindly"
                );
                metrics::counter!("uplink_gateway_messages_total", "result" => "rejected")
                    .increment(n);
                let keep = AckKind::Nak(Some(p.backoff.max));
                let kind = match p.on_rejected {
                    RejectAction::Term => {
                        dead_letter_then(&msgs, &p.dead_letter, Some(status), &detail, keep).await
                    }
                    RejectAction::Keep => keep,
                };
                msgs.send(kind).await;
            }
            Delivery::Abandoned => {
                metrics::counter!("uplink_gateway_messages_total", "result" => "abandoned")
                    .increment(n);
                msgs.send(SHUTDOWN_NAK).await;
            }
        }
    })
}

/// What a message refused for good gets: `Term` once its dead letter is stored (or at once with
/// none configured), `otherwise` when the copy failed — it stays, nothing is lost. A message
/// too large for a copy (within a few hundred bytes of the edge's `max_payload`) could only
/// cycle between the ingest's refusal and a failed copy forever: it is termed without one,
/// logged as an error and counted (`result="too_large"`) — on a work-queue edge it is gone.
pub async fn dead_letter_then<S: Settle>(
    msgs: &S,
    prefix: &str,
    status: Option<u16>,
    reason: &str,
    otherwise: AckKind,
) -> AckKind {
    if prefix.is_empty() {
        return AckKind::Term;
    }
    match msgs.dead_letter(prefix, status, reason).await {
        Ok(()) => {
            metrics::counter!("uplink_gateway_dead_letters_total", "result" => "stored")
                .increment(msgs.len() as u64);
            AckKind::Term
        }
        Err(DeadLetterError::TooLarge(e)) => {
            metrics::counter!("uplink_gateway_dead_letters_total", "result" => "too_large")
                .increment(msgs.len() as u64);
            tracing::error!(error = %e, edge_sequence = msgs.first_sequence(), reason, "a refused message is too large to keep as a dead letter; terminating it without a copy");
            AckKind::Term
        }
        Err(DeadLetterError::Failed(e)) => {
            metrics::counter!("uplink_gateway_dead_letters_total", "result" => "failed")
                .increment(msgs.len() as u64);
            tracing::error!(
                error = format!("{e:#}"),
                edge_sequence = msgs.first_sequence(),
                "could not store the dead letter; keeping the message for another try"
            );
            otherwise
        }
    }
}

#[cfg(test)]
mod tests;
