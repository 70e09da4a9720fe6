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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_quota_admits_everything_without_a_ticket() {
        let book = Arc::new(QuotaBook::new(Quotas::default()));
        assert!(book.admit("a", Instant::now()).unwrap().is_none());
    }

    #[test]
    fn a_platform_in_debt_waits_until_it_paid_it_back_and_others_are_not_affected() {
        let book = Arc::new(QuotaBook::new(Quotas {
            messages_per_second: 100.0,
            ..Default::default()
        }));
        let t0 = Instant::now();
        // One second's worth is there at once; a request may take more (debt).
        let t = book.admit("a", t0).unwrap().unwrap();
        t.charge(150, 0);
        drop(t);
        let e = book.admit("a", t0).err().unwrap();
        assert_eq!(e.what, "messages_per_second");
        // 50 in debt at 100/s: half a second.
        let wait = e.retry_after.as_secs_f64();
        assert!((0.45..=0.55).contains(&wait), "{wait}");
        // Another platform has its own bucket.
        assert!(book.admit("b", t0).is_ok());
        // Paid back: admitted again.
        assert!(book.admit("a", t0 + Duration::from_millis(600)).is_ok());
    }

    #[test]
    fn bytes_and_requests_in_flight_are_limited_too() {
        let book = Arc::new(QuotaBook::new(Quotas {
            bytes_per_second: 1000.0,
            requests_in_flight: 2,
            ..Default::default()
        }));
        let t0 = Instant::now();
        let a = book.admit("p", t0).unwrap().unwrap();
        let b = book.admit("p", t0).unwrap().unwrap();
        let e = book.admit("p", t0).err().unwrap();
        assert_eq!(e.what, "requests_in_flight");
        drop(a);
        b.charge(0, 3000);
        drop(b);
        let e = book.admit("p", t0).err().unwrap();
        assert_eq!(e.what, "bytes_per_second");
        assert!(e.retry_after >= Duration::from_millis(1900), "{e:?}");
    }
}
