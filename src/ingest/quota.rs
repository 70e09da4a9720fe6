//! Per-platform quotas (`limits.max_messages_per_second_per_platform`,
//! `…_bytes_per_second_…`, `limits.max_requests_in_flight_per_platform`): one platform cannot
//! take more than its share of a shared ingest. Refused requests get 429 `rate_limited` with a
//! Retry-After that says when the platform's bucket has room again; the gateway keeps the
//! messages and retries after it (never a verdict on content).
//!
//! Rates are token buckets holding one second of the rate. The size of a request is known only
//! once it is read and decoded, so a request is admitted while its platform's buckets are not
//! in debt and charged afterwards — a bucket may go below zero by one request, and the next
//! requests wait until it has paid that back. Refusing costs nothing: it happens before the
//! body is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The configured quotas; 0 = no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Quotas {
    pub messages_per_second: f64,
    pub bytes_per_second: f64,
    pub requests_in_flight: usize,
}

impl Quotas {
    fn any(&self) -> bool {
        self.messages_per_second > 0.0 || self.bytes_per_second > 0.0 || self.requests_in_flight > 0
    }
}

/// Every quota's label, for metrics exported from the start.
pub const QUOTAS: [&str; 3] = [
    "messages_per_second",
    "bytes_per_second",
    "requests_in_flight",
];

/// Why a platform's request is refused now, and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub struct OverQuota {
    /// Which quota (also the metric label): `messages_per_second`, `bytes_per_second`,
    /// `requests_in_flight`.
    pub what: &'static str,
    pub retry_after: Duration,
}

#[derive(Debug)]
struct Bucket {
    messages: f64,
    bytes: f64,
    at: Instant,
    in_flight: usize,
}

/// The quota state of every platform seen (as many entries as the PKI has platforms).
#[derive(Debug, Default)]
pub struct QuotaBook {
    quotas: Quotas,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Held while a platform's request runs; charges its size and frees its slot.
pub struct Ticket {
    book: Arc<QuotaBook>,
    platform: String,
}

impl QuotaBook {
    pub fn new(quotas: Quotas) -> Self {
        QuotaBook {
            quotas,
            buckets: Mutex::default(),
        }
    }

    /// Admits a request of `platform` now, or says when it may come back.
    pub fn admit(
        self: &Arc<Self>,
        platform: &str,
        now: Instant,
    ) -> Result<Option<Ticket>, OverQuota> {
        let q = self.quotas;
        if !q.any() {
            return Ok(None);
        }
        let mut all = self.buckets.lock().unwrap();
        let b = all.entry(platform.to_string()).or_insert(Bucket {
            messages: q.messages_per_second,
            bytes: q.bytes_per_second,
            at: now,
            in_flight: 0,
        });
        refill(b, &q, now);
        let wait = |debt: f64, rate: f64| Duration::from_secs_f64((-debt / rate).max(0.0));
        if q.messages_per_second > 0.0 && b.messages < 0.0 {
            return Err(OverQuota {
                what: "messages_per_second",
                retry_after: wait(b.messages, q.messages_per_second),
            });
        }
        if q.bytes_per_second > 0.0 && b.bytes < 0.0 {
            return Err(OverQuota {
                what: "bytes_per_second",
                retry_after: wait(b.bytes, q.bytes_per_second),
            });
        }
        if q.requests_in_flight > 0 && b.in_flight >= q.requests_in_flight {
            return Err(OverQuota {
                what: "requests_in_flight",
                retry_after: Duration::from_secs(1),
            });
        }
        b.in_flight += 1;
        Ok(Some(Ticket {
            book: self.clone(),
            platform: platform.to_string(),
        }))
    }

    fn charge(&self, platform: &str, messages: usize, bytes: usize) {
        let q = self.quotas;
        if let Some(b) = self.buckets.lock().unwrap().get_mut(platform) {
            refill(b, &q, Instant::now());
            if q.messages_per_second > 0.0 {
                b.messages -= messages as f64;
            }
            if q.bytes_per_second > 0.0 {
                b.bytes -= bytes as f64;
            }
        }
    }
}

impl Ticket {
    /// Charges the request's size once it is known (bytes as received, messages decoded).
    pub fn charge(&self, messages: usize, bytes: usize) {
        self.book.charge(&self.platform, messages, bytes);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(b) = self.book.buckets.lock().unwrap().get_mut(&self.platform) {
            b.in_flight = b.in_flight.saturating_sub(1);
        }
    }
}

/// Adds what the time since the last look earned, up to one second's worth.
fn refill(b: &mut Bucket, q: &Quotas, now: Instant) {
    let secs = now.saturating_duration_since(b.at).as_secs_f64();
    b.at = now;
    b.messages = (b.messages + secs * q.messages_per_second).min(q.messages_per_second);
    b.bytes = (b.bytes + secs * q.bytes_per_second).min(q.bytes_per_second);
}

/// Each platform's share of the messages being persisted at once
/// (`limits.max_pending_acks_per_platform`): JetStream stores a stream's messages in the order
/// they arrive, so without a share one platform draining a backlog (eight batches of 500 in
/// flight from a default gateway) keeps thousands of messages queued at the cloud server ahead
/// of every other platform's few. With it, a platform's requests beyond its share wait for room
/// in order (a FIFO semaphore per platform), and the others find at most one share per busy
/// platform ahead of them. A lone platform loses little: a share of 1024 still keeps several
/// PubAck round trips in flight.
#[derive(Debug, Default)]
pub struct PublishShares {
    per_platform: usize,
    shares: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// Room held in a platform's share until its messages are persisted (or the request ends).
pub type Share = Option<tokio::sync::OwnedSemaphorePermit>;

impl PublishShares {
    /// `per_platform` messages each; 0 = no shares.
    pub fn new(per_platform: usize) -> Self {
        PublishShares {
            per_platform,
            shares: Mutex::default(),
        }
    }

    /// Waits for room for `messages` in `platform`'s share (a request larger than the whole
    /// share takes all of it: the sink publishes it in chunks that fit).
    pub async fn acquire(&self, platform: &str, messages: usize) -> Share {
        if self.per_platform == 0 || messages == 0 {
            return None;
        }
        let sem = self
            .shares
            .lock()
            .unwrap()
            .entry(platform.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_platform)))
            .clone();
        let n = messages.min(self.per_platform) as u32;
        if let Ok(room) = sem.clone().try_acquire_many_owned(n) {
            return Some(room);
        }
        metrics::counter!("uplink_ingest_share_waits_total", "platform" => platform.to_string())
            .increment(1);
        Some(sem.acquire_many_owned(n).await.expect("never closed"))
    }
}

#[cfg(test)]
mod tests;
