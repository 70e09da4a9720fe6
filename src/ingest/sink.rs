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
    pub headers: Headers,
    pub payload: Bytes,
}

impl OutMessage {
    /// Bytes this message counts for against a NATS server's `max_payload`: the payload plus
    /// the header block as NATS writes it (`NATS/1.0\r\n`, each `name: value\r\n`, `\r\n`),
    /// including the `Nats-Msg-Id` header the publish adds.
    pub fn nats_size(&self) -> usize {
        self.headers.block_len(&self.id) + self.payload.len()
    }
}

/// A message's NATS headers, kept as the header block NATS writes (`NATS/1.0\r\n`, then
/// `name: value\r\n` each, in order; without `Nats-Msg-Id` and the closing blank line).
///
/// Our own type rather than `async_nats::HeaderMap` (a hash map of vectors of strings, built
/// per message and serialized again by the client): the fast-batch path writes this block as
/// it is ([`super::batch_conn`]), and in a drain's profile building and serializing the
/// header map was 13 % of the ingest's CPU. The other paths convert with [`Headers::to_nats`].
#[derive(Clone, PartialEq, Eq)]
pub struct Headers {
    block: String,
}

const STATUS_LINE: &str = "NATS/1.0\r\n";

/// A header name or value NATS cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadHeader {
    #[error("invalid header name {0:?}")]
    Name(String),
    #[error("invalid value of header {0:?}")]
    Value(String),
}

impl Default for Headers {
    fn default() -> Self {
        Headers::with_capacity(0)
    }
}

impl Headers {
    /// An empty block with room for `more` bytes of headers.
    pub fn with_capacity(more: usize) -> Self {
        let mut block = String::with_capacity(STATUS_LINE.len() + more);
        block.push_str(STATUS_LINE);
        Headers { block }
    }

    /// Adds a header after the ones before, checked as NATS (and async-nats) check them: a
    /// name of visible ASCII without `:`, a value without CR or LF.
    pub fn append(&mut self, name: &str, value: &str) -> Result<(), BadHeader> {
        if name.is_empty() || name.bytes().any(|b| !b.is_ascii_graphic() || b == b':') {
            return Err(BadHeader::Name(name.to_string()));
        }
        if value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(BadHeader::Value(name.to_string()));
        }
        self.push(name, value);
        Ok(())
    }

    /// Adds a header whose name and value are known to be valid (the ingest's own).
    pub(super) fn push(&mut self, name: &str, value: &str) {
        for part in [name, ": ", value, "\r\n"] {
            self.block.push_str(part);
        }
    }

    /// Every header, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.block[STATUS_LINE.len()..]
            .split_terminator("\r\n")
            .filter_map(|line| line.split_once(": "))
    }

    /// Adds one of the ingest's own headers whose value is `v` in decimal, written in place.
    pub(super) fn push_decimal(&mut self, name: &str, v: i64) {
        for part in [name, ": "] {
            self.block.push_str(part);
        }
        crate::wire::push_decimal(&mut self.block, v);
        self.block.push_str("\r\n");
    }

    /// The first value of `name` (exact name).
    #[cfg(test)]
    pub fn get<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        self.get_all(name).next()
    }

    /// Every value of `name`, in order.
    #[cfg(test)]
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter(move |(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The block without the closing blank line.
    pub(super) fn block(&self) -> &str {
        &self.block
    }

    /// Length of the whole header block NATS gets with `Nats-Msg-Id: id` added.
    pub fn block_len(&self, id: &str) -> usize {
        self.block.len() + MSG_ID_LINE.len() + id.len() + "\r\n\r\n".len()
    }

    /// The same headers for async-nats (the per-message and atomic paths).
    pub fn to_nats(&self) -> async_nats::HeaderMap {
        // The ingest's own two names are on every message: made once (a name parsed from a
        // `&str` is validated and allocated each time).
        static TIME: async_nats::HeaderName =
            async_nats::HeaderName::from_static(crate::wire::TIME_HEADER);
        static PLATFORM: async_nats::HeaderName =
            async_nats::HeaderName::from_static(crate::wire::PLATFORM_HEADER);
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in self.iter() {
            let name = match name {
                crate::wire::TIME_HEADER => Ok(TIME.clone()),
                crate::wire::PLATFORM_HEADER => Ok(PLATFORM.clone()),
                other => other.parse::<async_nats::HeaderName>(),
            };
            // Checked when appended: neither parse can fail.
            if let (Ok(n), Ok(v)) = (name, value.parse::<async_nats::HeaderValue>()) {
                map.append(n, v);
            }
        }
        map
    }
}

/// What precedes the message id in the header block.
pub(super) const MSG_ID_LINE: &str = "Nats-Msg-Id: ";

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_their_order_and_refuse_what_nats_cannot_carry() {
        let mut h = Headers::default();
        h.append("Tag", "x").unwrap();
        h.append("Tag", "y: z").unwrap();
        h.append("Empty", "").unwrap();
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [("Tag", "x"), ("Tag", "y: z"), ("Empty", "")]
        );
        assert_eq!(h.get_all("Tag").collect::<Vec<_>>(), ["x", "y: z"]);
        assert_eq!(h.get("Empty"), Some(""));
        assert_eq!(h.get("tag"), None);
        for bad in ["", "a b", "a:b", "abcé", "a\r"] {
            assert_eq!(
                h.append(bad, "v"),
                Err(BadHeader::Name(bad.into())),
                "{bad:?}"
            );
        }
        assert_eq!(h.append("A", "v\r\n"), Err(BadHeader::Value("A".into())));
        assert_eq!(h.append("A", "v\n"), Err(BadHeader::Value("A".into())));
        // Nothing refused was added.
        assert_eq!(h.iter().count(), 3);
        let nats = h.to_nats();
        let tags: Vec<&str> = nats.get_all("Tag").map(|v| v.as_str()).collect();
        assert_eq!(tags, ["x", "y: z"]);
        assert_eq!(nats.get("Empty").map(|v| v.as_str()), Some(""));
        // The ingest's own time header is written in place, negative or not.
        h.push_decimal("Uplink-Time", -12);
        h.push_decimal("Uplink-Time", 1_733_580_000_000_000_000);
        assert_eq!(
            h.get_all("Uplink-Time").collect::<Vec<_>>(),
            ["-12", "1733580000000000000"]
        );
    }

    #[test]
    fn nats_size_counts_the_block_as_nats_writes_it() {
        let mut headers = Headers::default();
        headers.append("Tag", "x").unwrap();
        let m = OutMessage {
            subject: "s".into(),
            id: "p.1".into(),
            headers,
            payload: Bytes::from_static(b"12345"),
        };
        let block = "NATS/1.0\r\nTag: x\r\nNats-Msg-Id: p.1\r\n\r\n";
        assert_eq!(m.nats_size(), block.len() + 5);
    }
}
