//! The narrow interface between the handler and where messages are persisted: [`Sink`], the
//! message it takes ([`OutMessage`]), what a publish achieved ([`Outcome`]) and why it failed
//! ([`SinkError`]). The JetStream implementation is [`super::publish`]; both it and the fast
//! batch path ([`super::fast_batch`]) build on these types without importing each other.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

/// One message ready for the cloud stream.
#[derive(Debug, Clone)]
pub struct OutMessage {
    pub subject: String,
    pub id: String,
    pub headers: async_nats::HeaderMap,
    pub payload: Bytes,
}

impl OutMessage {
    /// Bytes this message counts for against a NATS server's `max_payload`: the payload plus
    /// the header block as NATS writes it (`NATS/1.0\r\n`, each `name: value\r\n`, `\r\n`),
    /// including the `Nats-Msg-Id` header the publish adds.
    pub fn nats_size(&self) -> usize {
        const LINE: usize = ": ".len() + "\r\n".len();
        let mut len = "NATS/1.0\r\n".len() + "\r\n".len();
        for (name, values) in self.headers.iter() {
            let name: &str = name.as_ref();
            for v in values {
                let v: &str = v.as_ref();
                len += name.len() + v.len() + LINE;
            }
        }
        len += "Nats-Msg-Id".len() + self.id.len() + LINE;
        len + self.payload.len()
    }
}

/// A number unlikely to repeat across ingest processes (time and pid), for batch ids.
pub(super) fn batch_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()).rotate_left(40)
}

/// What a publish of a whole request achieved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub accepted: usize,
    pub duplicates: usize,
}

/// Why messages could not be persisted. Every variant maps to 503 + Retry-After: the request may
/// be retried as a whole, and the duplicate window drops what was persisted already.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    NotReady(String),
    #[error("JetStream did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("JetStream publish failed: {0}")]
    Publish(String),
    /// Nobody took the publish: the stream has no leader (or no longer exists).
    #[error("{0}")]
    NoLeader(String),
    /// The request's PubAcks were still awaited when the connection or the stream's leader
    /// was lost: they will not come, so the request gives up at once instead of waiting
    /// `timeouts.publish` for each.
    #[error("{0} while this request awaited its PubAcks; not known to be persisted, retry")]
    Lost(String),
}

/// Where the ingest persists messages. The real one is JetStream; unit tests use a fake.
pub trait Sink: Send + Sync + 'static {
    /// Persists every message, or fails; 2xx is answered only after `Ok`. `first_send`: the
    /// client says none of these messages was sent before (so none can be a duplicate), which
    /// lets the sink publish them as one batch whose acks do not tell duplicates apart.
    fn publish(
        &self,
        messages: Vec<OutMessage>,
        first_send: bool,
    ) -> BoxFuture<'_, Result<Outcome, SinkError>>;
    /// `Ok` when the sink can take messages now.
    fn ready(&self) -> Result<(), String>;
    /// The largest message (in [`OutMessage::nats_size`] bytes) the sink can ever store; a
    /// larger one is refused as content (413), not retried.
    fn max_message_bytes(&self) -> usize {
        usize::MAX
    }
}
