//! Settling edge messages — the one place that acks, naks, terms, keeps alive (`in_progress`)
//! and copies to the dead letters (docs/design.md §2). Delivery (`deliver`) and consuming
//! (`consume`) decide *what* happens to a batch; they say it by calling the operations here,
//! never by sending an acknowledgement themselves.
//!
//! Generic over the messages ([`Settle`]: JetStream in production, a recording fake in the unit
//! tests), so every policy is tested with paused time.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures_util::future::BoxFuture;

use crate::wire;

/// How long acks, naks and progress notes for one batch may take (they block while edge NATS
/// is disconnected; shutdown must not).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How messages are given back at shutdown: redelivered after a moment, so not into this
/// gateway's own pull that is still open while it exits, but long before `ack_wait`.
pub const SHUTDOWN_NAK: AckKind = AckKind::Nak(Some(Duration::from_secs(2)));

/// A delivered edge message, whatever acks it: a JetStream message acked one by one, or a
/// cumulative-ack delivery acked by the frontier (`cumulative::Tracked`).
pub trait Edge: Send + Sync + 'static {
    /// The delivery as the edge server sent it.
    fn message(&self) -> &async_nats::Message;
    /// The message's edge stream sequence and publish time (Unix ns), from its JetStream
    /// metadata (the ack subject).
    fn meta(&self) -> Result<(u64, i64), String>;
    /// The message with the edge JetStream it came from (to copy it to a dead letter).
    fn with_context(&self) -> jetstream::Message;
    /// Whether what the client buffered is worth taking back at shutdown to give it back
    /// (explicit acks: else it waits out `ack_wait`); a cumulative-ack delivery not acked is
    /// redelivered by the next bind's reset anyway.
    const GIVEN_BACK: bool = true;
}

impl Edge for jetstream::Message {
    fn message(&self) -> &async_nats::Message {
        &self.message
    }
    fn meta(&self) -> Result<(u64, i64), String> {
        let info = self.info().map_err(|e| e.to_string())?;
        Ok((
            info.stream_sequence,
            info.published.unix_timestamp_nanos() as i64,
        ))
    }
    fn with_context(&self) -> jetstream::Message {
        self.clone()
    }
}

/// The messages of a batch, as the edge JetStream knows them.
pub trait Settle: Send + Sync + Sized + 'static {
    /// How many messages.
    fn len(&self) -> usize;
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
    #[error("{0}")]
    Failed(String),
}

impl DeadLetterError {
    /// Sorts a publish error: too large for the server is for good, the rest worth a retry.
    fn of(e: jetstream::context::PublishError, subject: &str) -> DeadLetterError {
        match e.kind() {
            jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                DeadLetterError::TooLarge(e.to_string())
            }
            _ => DeadLetterError::Failed(format!("storing the dead letter on {subject}: {e}")),
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
        Box::pin(dead_letter_each(self, prefix, status, reason))
    }
}

/// Copies each of `msgs` to the dead letters ([`copy_to_dead_letter`]), stopping at the first
/// copy not stored.
pub async fn dead_letter_each<H: Edge>(
    msgs: &[H],
    prefix: &str,
    status: Option<u16>,
    reason: &str,
) -> Result<(), DeadLetterError> {
    for m in msgs {
        copy_to_dead_letter(&m.with_context(), prefix, status, reason).await?;
    }
    Ok(())
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
        .map_err(|e| DeadLetterError::Failed(format!("reading the message's info: {e}")))?;
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
            .map_err(|e| DeadLetterError::of(e, &subject))?
            .await
            .map_err(|e| DeadLetterError::of(e, &subject))
    };
    match tokio::time::timeout(SETTLE_TIMEOUT, store).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(DeadLetterError::Failed(format!(
            "storing the dead letter on {subject}: no PubAck within {SETTLE_TIMEOUT:?}"
        ))),
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

/// The ingest confirmed every message: ack them.
pub async fn confirmed<S: Settle>(msgs: &S) {
    msgs.send(AckKind::Ack).await;
}

/// Gives the messages back to JetStream for redelivery soon (shutdown, abandoned, undispatched).
pub async fn give_back<S: Settle>(msgs: &S) {
    msgs.send(SHUTDOWN_NAK).await;
}

/// Gives the messages back for redelivery after JetStream's own delay (a batch that could not
/// even be encoded: nothing about it is worth waiting for).
pub async fn redeliver<S: Settle>(msgs: &S) {
    msgs.send(AckKind::Nak(None)).await;
}

/// Messages refused for good (by the ingest, or unforwardable at the edge): with `term`, copied
/// to the dead letters under `prefix` and termed ([`dead_letter_then`]); kept otherwise, and
/// whenever the copy failed — redelivered after `keep_for`.
pub async fn refused<S: Settle>(
    msgs: &S,
    term: bool,
    prefix: &str,
    status: Option<u16>,
    reason: &str,
    keep_for: Duration,
) {
    let keep = AckKind::Nak(Some(keep_for));
    let kind = if term {
        dead_letter_then(msgs, prefix, status, reason, keep).await
    } else {
        keep
    };
    msgs.send(kind).await;
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
                error = %e,
                edge_sequence = msgs.first_sequence(),
                "could not store the dead letter; keeping the message for another try"
            );
            otherwise
        }
    }
}

#[cfg(test)]
pub(crate) mod fake;
