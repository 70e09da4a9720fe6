//! Delivering one batch and deciding how its messages are settled (docs/design.md §2): while
//! the batch waits or retries, its messages are kept alive; it ends confirmed (the ingest
//! confirmed every message), refused (found by bisecting: dead-lettered and termed, or kept),
//! or given back (shutdown) — each message settled once, through [`super::settle`].
//!
//! Generic over how messages are settled ([`Settle`]: JetStream in production) and how a body
//! is sent ([`Post`]: the HTTP/2 client), so the ack policy is unit-tested with paused time.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::Request;
use http_body_util::Full;
use tokio_util::sync::CancellationToken;

use super::concurrency::Verdict;
use super::forward::{Delivery, send_with_retries};
use super::settle::{self, Settle};
use crate::backoff::Backoff;
use crate::config::RejectAction;
use crate::http2::client::FullResponse;
use crate::http2::{Client, ForwardError};
use crate::wire::{self, Encoding};

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

impl HttpPost {
    /// Sends one encoded body as the gateway does (`POST /v1/batches`, its content type and
    /// encoding, `wire::FIRST_SEND_HEADER` when `first_send`) and returns the answer unchecked:
    /// [`Post::post`] checks that it confirms the batch; ingest-alone's generator, that nginx
    /// answered 204.
    pub fn send(
        &self,
        body: Bytes,
        encoding: Encoding,
        first_send: bool,
    ) -> impl Future<Output = Result<FullResponse, ForwardError>> + Send + '_ {
        let mut req = Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, wire::CONTENT_TYPE_PROTOBUF)
            .header(http::header::CONTENT_ENCODING, encoding.as_str());
        if first_send {
            req = req.header(wire::FIRST_SEND_HEADER, "1");
        }
        let req = req.body(Full::new(body)).expect("valid request");
        self.client.send(req)
    }
}

impl Post for HttpPost {
    fn post(
        &self,
        body: Bytes,
        encoding: Encoding,
        count: usize,
        first_send: bool,
    ) -> BoxFuture<'_, Result<FullResponse, ForwardError>> {
        let send = self.send(body, encoding, first_send);
        Box::pin(async move {
            let resp = send.await?;
            if resp.status().is_success() && !confirms(resp.body(), count) {
                return Err(unconfirmed(&resp));
            }
            Ok(resp)
        })
    }
}

/// A 2xx answer that does not confirm what was sent, as the error it is: its status and the
/// start of its body.
pub fn unconfirmed(resp: &FullResponse) -> ForwardError {
    ForwardError::Unconfirmed {
        status: resp.status().as_u16(),
        detail: String::from_utf8_lossy(resp.body())
            .chars()
            .take(200)
            .collect(),
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
                settle::redeliver(&msgs).await;
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
        let outcome = settle::keeping_alive(&msgs, every, work).await;
        let n = count as u64;
        match outcome {
            Delivery::Delivered { attempts } => {
                settle::confirmed(&msgs).await;
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
                settle::keeping_alive(&right, every, deliver(d.clone(), left, batch)).await;
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
                let term = matches!(p.on_rejected, RejectAction::Term);
                settle::refused(
                    &msgs,
                    term,
                    &p.dead_letter,
                    Some(status),
                    &detail,
                    p.backoff.max,
                )
                .await;
            }
            Delivery::Abandoned => {
                metrics::counter!("uplink_gateway_messages_total", "result" => "abandoned")
                    .increment(n);
                settle::give_back(&msgs).await;
            }
        }
    })
}

#[cfg(test)]
mod tests;
