//! Atomic batch publish (nats-server 2.12+, a stream with `allow_atomic`; `Nats-Msg-Id` inside a
//! batch since 2.12.1): a request's messages land in the cloud stream all together or not at all
//! (`nats.batch_publish = "atomic"`).
//!
//! The protocol (nats-server `server/stream.go` `processJetStreamBatchMsg`, ADR-50): every
//! message carries `Nats-Batch-Id` (≤ 64 characters) and `Nats-Batch-Sequence` (1, 2, …); the
//! last one also `Nats-Batch-Commit: 1` and a reply subject. The server stages the messages and,
//! at the commit, checks and stores them all, answering one PubAck `{"stream", "seq", "batch",
//! "count"}`, or an error for the whole batch: nothing of it is stored. A message whose id the
//! duplicate window holds refuses the whole batch (10201): the ingest then publishes that
//! request message by message, so `accepted` / `duplicates` stay exact per message. No crate
//! implements this client side (async-nats 0.51 has only the stream flag), hence our own, on
//! plain publishes and one request.

use std::time::{Duration, Instant};

use async_nats::HeaderName;
use async_nats::header::NATS_MESSAGE_ID;
use serde::Deserialize;

use super::leader::Loss;
use super::sink::{OutMessage, SinkError};

/// The most messages the server takes in one atomic batch by default
/// (`streamDefaultMaxAtomicBatchSize`; `jetstream.limits.max_batch_size` changes it).
pub(super) const MAX_MESSAGES: usize = 1000;

static BATCH_ID: HeaderName = HeaderName::from_static("Nats-Batch-Id");
static BATCH_SEQUENCE: HeaderName = HeaderName::from_static("Nats-Batch-Sequence");
static BATCH_COMMIT: HeaderName = HeaderName::from_static("Nats-Batch-Commit");

/// JetStream errors that say something about the batch rather than the moment.
const CONTAINS_DUPLICATE: u64 = 10201;
const DISABLED: u64 = 10174;
const TOO_LARGE: u64 = 10199;
const UNSUPPORTED_HEADER: u64 = 10177;

/// Why an atomic batch did not commit. Nothing of it was stored in any case.
#[derive(Debug)]
pub(super) enum AtomicError {
    /// The connection, a timeout or another passing failure: 503, retried.
    Sink(SinkError),
    /// A message was stored before (the duplicate window holds its id): publish the request
    /// message by message instead.
    Duplicate,
    /// The stream or the server does not take this batch (atomic publish disabled, the batch
    /// larger than the server allows, …): publish message by message, and say so.
    Refused(String),
}

#[derive(Debug, Deserialize)]
struct Reply {
    count: Option<u64>,
    error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// Publishes `messages` (at least 1) as one atomic batch `id`; `Ok(n)` once the commit's PubAck
/// says all n are stored. The wait is bounded by `timeout`; a `lost` connection or leader
/// (after `sent_at`) ends it at once.
pub(super) async fn publish(
    client: &async_nats::Client,
    id: &str,
    messages: Vec<OutMessage>,
    timeout: Duration,
    lost: &mut tokio::sync::watch::Receiver<Loss>,
    sent_at: Instant,
) -> Result<usize, AtomicError> {
    let n = messages.len();
    let failed = |e: String| AtomicError::Sink(SinkError::Publish(e));
    let mut commit = None;
    for (i, m) in messages.into_iter().enumerate() {
        let mut headers = m.headers.to_nats();
        headers.insert(NATS_MESSAGE_ID, m.id);
        headers.insert(BATCH_ID.clone(), id);
        let mut seq = String::with_capacity(20);
        crate::wire::push_unsigned(&mut seq, i as u64 + 1);
        headers.insert(BATCH_SEQUENCE.clone(), seq);
        if i + 1 < n {
            client
                .publish_with_headers(m.subject, headers, m.payload)
                .await
                .map_err(|e| failed(e.to_string()))?;
        } else {
            headers.insert(BATCH_COMMIT.clone(), "1");
            commit = Some(client.request_with_headers(m.subject, headers, m.payload));
        }
    }
    let Some(commit) = commit else {
        return Ok(0);
    };
    tokio::pin!(commit);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut watching = true;
    let answer = loop {
        tokio::select! {
            answer = &mut commit => break answer,
            changed = lost.changed(), if watching => {
                let loss = lost.borrow_and_update().clone();
                watching = changed.is_ok();
                if watching && loss.condemns(sent_at) {
                    return Err(AtomicError::Sink(SinkError::Lost(loss.reason)));
                }
            }
            () = &mut deadline => return Err(AtomicError::Sink(SinkError::Timeout(timeout))),
        }
    };
    let answer = answer.map_err(|e| failed(format!("atomic batch {id}: {e}")))?;
    let reply: Reply = serde_json::from_slice(&answer.payload)
        .map_err(|e| failed(format!("atomic batch {id}: unreadable PubAck: {e}")))?;
    match reply {
        Reply { error: Some(e), .. } => Err(match e.err_code {
            CONTAINS_DUPLICATE => AtomicError::Duplicate,
            DISABLED | TOO_LARGE | UNSUPPORTED_HEADER => AtomicError::Refused(format!(
                "atomic batch of {n}: {} ({})",
                e.description, e.err_code
            )),
            _ => failed(format!(
                "atomic batch {id} of {n}: {} ({})",
                e.description, e.err_code
            )),
        }),
        Reply {
            count: Some(count), ..
        } if count == n as u64 => Ok(n),
        Reply { count, .. } => Err(failed(format!(
            "atomic batch {id}: the server committed {count:?} of {n} messages"
        ))),
    }
}
